//! Hashing speed of a swarm share, on one thread: the piece hash the swarm uses
//! (`p2p_core::swarm::content::piece_hash`, BLAKE3) against SHA-256 (`sha2::Sha256`, the
//! alternative the issue allowed) over the same pieces, in memory; and optionally
//! `p2p_core::swarm::hash_share` over a file or folder on disk (what `p2p-transfer share`
//! runs before it writes the `.p2p` file).
//!
//! ```text
//! cargo build --release -p p2p-core --example hash_speed
//! taskset -c 0 target/release/examples/hash_speed [--mib N] [--piece-kib K] [--rounds R] [PATH...]
//! ```
//!
//! `--mib` (default 1024) is how much random data is hashed in memory, in pieces of
//! `--piece-kib` KiB (default 256, the swarm's smallest chunk size); each hash runs
//! `--rounds` times (default 3) and the best round is printed. PATHs are hashed with
//! `hash_share` once per round (read them once first to have them in the page cache).
//! Pin it to one core with `taskset -c 0` to measure one core.
//!
//! Each figure is given twice: by the wall clock, and per second of CPU time this thread
//! got (Linux `/proc/thread-self/schedstat`), which stays right on a machine that other
//! work shares — the wall-clock rate is then lower by the share of the core it lost.

use std::hint::black_box;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use p2p_core::swarm::content::piece_hash;
use p2p_core::swarm::hash_share;
use sha2::{Digest, Sha256};

const GIB: f64 = (1u64 << 30) as f64;

struct Options {
    mib: usize,
    piece_kib: usize,
    rounds: usize,
    paths: Vec<PathBuf>,
}

fn usage(problem: &str) -> ! {
    eprintln!(
        "hash_speed: {problem}\nusage: hash_speed [--mib N] [--piece-kib K] [--rounds R] [PATH...]"
    );
    std::process::exit(2)
}

fn number(args: &mut impl Iterator<Item = String>, flag: &str) -> usize {
    let value = args
        .next()
        .unwrap_or_else(|| usage(&format!("{flag} needs a number")));
    match value.parse::<usize>() {
        Ok(n) if n > 0 => n,
        _ => usage(&format!("{flag}: not a positive number: {value:?}")),
    }
}

fn options() -> Options {
    let mut options = Options {
        mib: 1024,
        piece_kib: 256,
        rounds: 3,
        paths: Vec::new(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--mib" => options.mib = number(&mut args, "--mib"),
            "--piece-kib" => options.piece_kib = number(&mut args, "--piece-kib"),
            "--rounds" => options.rounds = number(&mut args, "--rounds"),
            "-h" | "--help" => usage("hashing speed, one thread"),
            flag if flag.starts_with("--") => usage(&format!("unknown option {flag}")),
            path => options.paths.push(PathBuf::from(path)),
        }
    }
    options
}

/// Fills `buf` with pseudo-random bytes (xorshift; what matters is that it is not zeros).
fn fill(buf: &mut [u8]) {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    for chunk in buf.chunks_mut(8) {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let bytes = state.to_le_bytes();
        chunk.copy_from_slice(&bytes[..chunk.len()]);
    }
}

/// Nanoseconds this thread has run on a CPU (`None` where the kernel does not say).
fn cpu_time() -> Option<Duration> {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let ns = text.split_whitespace().next()?.parse::<u64>().ok()?;
    Some(Duration::from_nanos(ns))
}

/// One measurement: the best wall time and the best CPU time over the rounds.
struct Timing {
    wall: Duration,
    cpu: Option<Duration>,
}

impl Timing {
    fn line(&self, label: &str, bytes: u64) {
        let rate = |d: Duration| bytes as f64 / GIB / d.as_secs_f64().max(1e-9);
        let cpu = match self.cpu {
            Some(cpu) => format!(
                "{:>7.3} s CPU  {:>6.2} GiB/s per CPU-second",
                cpu.as_secs_f64(),
                rate(cpu)
            ),
            None => "CPU time not available".to_owned(),
        };
        println!(
            "  {label:<38} {:>7.3} s  {:>6.2} GiB/s (wall);  {cpu}",
            self.wall.as_secs_f64(),
            rate(self.wall)
        );
    }
}

/// The best of `rounds` runs of `hash`.
fn best(rounds: usize, mut hash: impl FnMut()) -> Timing {
    let mut wall = Duration::MAX;
    let mut cpu: Option<Duration> = None;
    for _ in 0..rounds {
        let cpu_before = cpu_time();
        let started = Instant::now();
        hash();
        wall = wall.min(started.elapsed());
        if let (Some(before), Some(after)) = (cpu_before, cpu_time()) {
            let used = after.saturating_sub(before);
            cpu = Some(cpu.map_or(used, |c| c.min(used)));
        }
    }
    Timing { wall, cpu }
}

fn main() {
    let options = options();
    let bytes = options.mib << 20;
    let piece = options.piece_kib << 10;
    let mut data = vec![0u8; bytes];
    fill(&mut data);
    let pieces = bytes.div_ceil(piece);
    println!(
        "in memory: {} MiB in {pieces} pieces of {} KiB, one thread, best of {} rounds",
        options.mib, options.piece_kib, options.rounds
    );

    best(options.rounds, || {
        for chunk in data.chunks(piece) {
            black_box(piece_hash(black_box(chunk)));
        }
    })
    .line("BLAKE3  (swarm::content::piece_hash):", bytes as u64);
    best(options.rounds, || {
        for chunk in data.chunks(piece) {
            black_box(Sha256::digest(black_box(chunk)));
        }
    })
    .line("SHA-256 (sha2::Sha256):", bytes as u64);
    drop(data);

    if options.paths.is_empty() {
        return;
    }
    let mut total = 0u64;
    let mut pieces = 0usize;
    let mut failed = None;
    let timing = best(options.rounds, || {
        match hash_share(&options.paths, &mut |_, all| total = all) {
            Ok(share) => pieces = share.manifest.pieces.len(),
            Err(e) => failed = Some(e.to_string()),
        }
    });
    if let Some(e) = failed {
        eprintln!("hash_speed: {e}");
        std::process::exit(1);
    }
    println!(
        "from disk: {total} bytes in {pieces} pieces (hash_share), best of {} rounds",
        options.rounds
    );
    timing.line("BLAKE3  (swarm::hash_share):", total);
}
