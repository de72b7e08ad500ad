//! Plain (no cargo-afl, no nightly) driver for the fuzz targets: replays files through a
//! target, then runs a bounded number of mutated inputs derived from them. Used by
//! `ci.sh`, and to reproduce a crash AFL++ found (`replay TARGET out/TARGET/default/crashes/id*`).
//!
//! ```text
//! replay [--mutations N] [--seed S] TARGET|all [FILE|DIR ...]
//! ```
//!
//! Without files it replays `corpus/TARGET/` and `regressions/TARGET/` (if present).
//! Mutations are deterministic for a given seed: bit flips, interesting values, inserted,
//! deleted and duplicated ranges, splices of two corpus files. On a panic it prints the
//! input in hex, saves it to `artifacts/TARGET/`, and exits with status 1.

use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use p2p_fuzz::{target, Target, TARGETS};

const USAGE: &str = "usage: replay [--mutations N] [--seed S] TARGET|all [FILE|DIR ...]";

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let mut mutations: u64 = 0;
    let mut seed: u64 = 0x5eed;
    let mut which = None;
    let mut paths = Vec::new();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--mutations" => mutations = parse(args.next()),
            "--seed" => seed = parse(args.next()),
            "-h" | "--help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            _ if which.is_none() => which = Some(arg),
            _ => paths.push(PathBuf::from(arg)),
        }
    }
    let Some(which) = which else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    let targets: Vec<&Target> = if which == "all" {
        TARGETS.iter().collect()
    } else {
        match target(&which) {
            Some(t) => vec![t],
            None => {
                let names: Vec<_> = TARGETS.iter().map(|t| t.name).collect();
                eprintln!("unknown target {which}; targets: {}", names.join(", "));
                return ExitCode::from(2);
            }
        }
    };
    for t in targets {
        if let Err(()) = replay(t, &paths, mutations, seed) {
            return ExitCode::from(1);
        }
    }
    ExitCode::SUCCESS
}

fn parse(value: Option<String>) -> u64 {
    value.and_then(|v| v.parse().ok()).unwrap_or_else(|| {
        eprintln!("{USAGE}");
        std::process::exit(2)
    })
}

fn fuzz_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn replay(t: &Target, paths: &[PathBuf], mutations: u64, seed: u64) -> Result<(), ()> {
    let default_paths;
    let paths = if paths.is_empty() {
        default_paths = vec![
            fuzz_dir().join("corpus").join(t.name),
            fuzz_dir().join("regressions").join(t.name),
        ];
        &default_paths[..]
    } else {
        paths
    };
    let mut inputs = Vec::new();
    for path in paths {
        collect(path, &mut inputs);
    }
    if inputs.is_empty() {
        eprintln!("{}: no input files", t.name);
        return Err(());
    }
    let started = Instant::now();
    for (path, data) in &inputs {
        one(t, data, &path.display().to_string())?;
    }
    let mut rng = SplitMix(seed ^ fnv(t.name.as_bytes()));
    let corpus: Vec<&[u8]> = inputs.iter().map(|(_, d)| d.as_slice()).collect();
    for i in 0..mutations {
        let input = mutate(&corpus, &mut rng);
        one(t, &input, &format!("mutation {i} (seed {seed})"))?;
    }
    println!(
        "{}: {} files and {} mutated inputs, 0 crashes, {:.1} s",
        t.name,
        inputs.len(),
        mutations,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn collect(path: &Path, out: &mut Vec<(PathBuf, Vec<u8>)>) {
    if path.is_dir() {
        let mut entries: Vec<_> = std::fs::read_dir(path)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .collect();
        entries.sort();
        for entry in entries {
            if entry.is_file() {
                collect(&entry, out);
            }
        }
    } else if let Ok(data) = std::fs::read(path) {
        out.push((path.to_owned(), data));
    }
}

fn one(t: &Target, data: &[u8], what: &str) -> Result<(), ()> {
    let outcome = panic::catch_unwind(AssertUnwindSafe(|| (t.run)(data)));
    if outcome.is_ok() {
        return Ok(());
    }
    let dir = fuzz_dir().join("artifacts").join(t.name);
    let file = dir.join(format!("crash-{:016x}", fnv(data)));
    let saved = std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&file, data));
    eprintln!(
        "CRASH in target {} on {what} ({} bytes)",
        t.name,
        data.len()
    );
    eprintln!("input (hex): {}", hex(data));
    match saved {
        Ok(()) => eprintln!(
            "saved to {}; reproduce: cargo run --release --bin replay -- {} {}",
            file.display(),
            t.name,
            file.display()
        ),
        Err(e) => eprintln!("could not save it to {}: {e}", file.display()),
    }
    Err(())
}

fn hex(data: &[u8]) -> String {
    data.iter().map(|b| format!("{b:02x}")).collect()
}

fn fnv(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// SplitMix64: small, deterministic, good enough to pick mutations.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform-ish in `0..n` (`n > 0`).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

const INTERESTING: [u64; 12] = [
    0,
    1,
    0x7f,
    0x80,
    0xff,
    0x100,
    0x7fff,
    0xffff,
    0x0200_0000,
    0x0200_0001,
    0xffff_ffff,
    u64::MAX,
];

/// A corpus file with 1 to 8 stacked mutations, or now and then plain random bytes.
fn mutate(corpus: &[&[u8]], rng: &mut SplitMix) -> Vec<u8> {
    if rng.below(32) == 0 {
        let len = rng.below(64);
        return (0..len).map(|_| rng.next() as u8).collect();
    }
    let mut data = corpus[rng.below(corpus.len())].to_vec();
    for _ in 0..=rng.below(8) {
        let len = data.len();
        match rng.below(10) {
            0 | 1 if len > 0 => {
                let at = rng.below(len);
                data[at] ^= 1 << rng.below(8);
            }
            2 if len > 0 => {
                let at = rng.below(len);
                data[at] = rng.next() as u8;
            }
            3 if len > 0 => {
                // An interesting value, 1, 2, 4 or 8 bytes wide, either byte order.
                let width = 1 << rng.below(4);
                let value = INTERESTING[rng.below(INTERESTING.len())];
                let bytes = if rng.below(2) == 0 {
                    value.to_be_bytes()
                } else {
                    value.to_le_bytes()
                };
                let bytes = if rng.below(2) == 0 {
                    &bytes[8 - width..]
                } else {
                    &bytes[..width]
                };
                let at = rng.below(len);
                let end = (at + width).min(len);
                data[at..end].copy_from_slice(&bytes[..end - at]);
            }
            4 => {
                let at = rng.below(len + 1);
                let n = 1 + rng.below(16);
                let fill: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                data.splice(at..at, fill);
            }
            5 if len > 0 => {
                let at = rng.below(len);
                let n = 1 + rng.below((len - at).min(32));
                data.drain(at..at + n);
            }
            6 if len > 0 => {
                let at = rng.below(len);
                let n = 1 + rng.below((len - at).min(64));
                let copy = data[at..at + n].to_vec();
                let to = rng.below(len + 1);
                data.splice(to..to, copy);
            }
            7 => {
                let other = corpus[rng.below(corpus.len())];
                let cut = rng.below(data.len() + 1);
                let from = rng.below(other.len() + 1);
                data.truncate(cut);
                data.extend_from_slice(&other[from..]);
            }
            8 if len > 0 => data.truncate(rng.below(len)),
            _ => {
                let at = rng.below(len + 1);
                data.insert(at, INTERESTING[rng.below(INTERESTING.len())] as u8);
            }
        }
    }
    data
}
