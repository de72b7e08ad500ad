//! `p2p-wan`: brings an emulated WAN up for benchmarks and tears it down.
//!
//!   p2p-wan up --prefix P --profile NAME|SPEC [--seed N] [--stats-every SECS]
//!   p2p-wan down --prefix P
//!   p2p-wan profiles

use std::io::Write;
use std::process::ExitCode;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use p2p_wan::{DirectionStats, Profile, Wan};

#[derive(Parser)]
#[command(
    name = "p2p-wan",
    about = "User-space WAN emulator between two network namespaces"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build PREFIX-h1, PREFIX-h2 and PREFIX-wire, run the forwarder in the foreground
    /// until SIGINT/SIGTERM, then tear everything down.
    Up {
        #[arg(long)]
        prefix: String,
        /// dsl, intercontinental, lossy, satellite, lan, or a spec such as
        /// rate=50mbit,rtt=30ms,loss=2%,queue=256k (a name may come first: lossy,queue=1m)
        #[arg(long, value_parser = parse_profile)]
        profile: Profile,
        /// Seed of the random loss decisions.
        #[arg(long, default_value_t = p2p_wan::DEFAULT_SEED)]
        seed: u64,
        /// Print a JSON line of stats per direction every SECS seconds (0: only at exit).
        #[arg(long, default_value_t = 0.0)]
        stats_every: f64,
    },
    /// Kill what runs in PREFIX's namespaces and delete them.
    Down {
        #[arg(long)]
        prefix: String,
    },
    /// List the named profiles.
    Profiles,
}

fn parse_profile(spec: &str) -> Result<Profile, String> {
    Profile::parse(spec).map_err(|e| e.to_string())
}

static SIGNAL: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(signal: libc::c_int) {
    SIGNAL.store(signal, Ordering::SeqCst);
}

fn install_signal_handlers() {
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores into an atomic (async-signal-safe).
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal, &action, std::ptr::null_mut());
        }
    }
}

fn print_stats(stats: &[DirectionStats; 2], elapsed: Duration, last: bool) {
    let mut out = std::io::stdout().lock();
    for direction in stats {
        let mut line = direction.to_json();
        line["elapsed_s"] = serde_json::json!((elapsed.as_secs_f64() * 1000.0).round() / 1000.0);
        line["final"] = serde_json::json!(last);
        let _ = writeln!(out, "{line}");
    }
    let _ = out.flush();
}

fn up(prefix: &str, profile: Profile, seed: u64, stats_every: f64) -> Result<()> {
    if !(stats_every.is_finite() && stats_every >= 0.0) {
        anyhow::bail!("--stats-every must be a number of seconds ≥ 0");
    }
    install_signal_handlers();
    eprintln!("p2p-wan: {profile}, seed {seed}");
    let wan = Wan::up_with_seed(prefix, profile, seed)?;
    let started = Instant::now();
    {
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "ready h1={} h2={} netns1={} netns2={}",
            wan.host_ip(1),
            wan.host_ip(2),
            wan.netns(1),
            wan.netns(2)
        )?;
        out.flush()?;
    }
    let every = (stats_every > 0.0).then(|| Duration::from_secs_f64(stats_every));
    let mut next = every.map(|e| started + e);
    while SIGNAL.load(Ordering::SeqCst) == 0 {
        std::thread::sleep(Duration::from_millis(20));
        if let (Some(at), Some(every)) = (next, every) {
            if Instant::now() >= at {
                print_stats(&wan.stats(), started.elapsed(), false);
                next = Some(at + every);
            }
        }
    }
    let mut wan = wan;
    let stats = wan.stop();
    print_stats(&stats, started.elapsed(), true);
    wan.down().context("teardown")?;
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Up {
            prefix,
            profile,
            seed,
            stats_every,
        } => up(&prefix, profile, seed, stats_every),
        Cmd::Down { prefix } => p2p_wan::teardown(&prefix).map(|removed| {
            if removed.is_empty() {
                eprintln!("p2p-wan: nothing to remove under {prefix}");
            } else {
                eprintln!("p2p-wan: removed {}", removed.join(", "));
            }
        }),
        Cmd::Profiles => {
            for (name, ..) in p2p_wan::profile::NAMED {
                if let Some(profile) = Profile::named(name) {
                    println!("{profile}");
                }
            }
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("p2p-wan: {e:#}");
            ExitCode::FAILURE
        }
    }
}
