//! The `p2p-transfer` command line: parses flags, establishes a session through
//! `p2p-core`, and renders its [`TransferEvent`](p2p_core::TransferEvent)s. No protocol or
//! file logic lives here.
//!
//! Exit codes: see `EXIT_CODES_HELP` in `exit.rs` (also in `p2p-transfer --help` and README.md,
//! which says what falls under each).

mod commands;
mod countdown;
mod exit;
mod json;
mod record;
mod render;
mod size;

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

pub use exit::exit_code;

/// Send files and folders straight from one device to another: end-to-end encrypted
/// (TLS 1.3), paired with a one-time code or as trusted devices, verified (SHA-256),
/// resumable after any interruption. No cloud, no account.
#[derive(Debug, Parser)]
#[command(
    name = "p2p-transfer",
    version,
    about = "Send files and folders straight to another device: encrypted, verified, resumable",
    long_about = None,
    before_help = None,
    after_help = TOP_EXAMPLES,
)]
pub struct Cli {
    /// More log output (-v info, -vv debug, -vvv trace). RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

const TOP_EXAMPLES: &str = "\
Examples:
  p2p-transfer send photos/ notes.txt      # prints a code, e.g. 7-guitar-orbit
  p2p-transfer receive 7-guitar-orbit      # on the other device (same network)
  p2p-transfer receive                     # or wait here: prints a code and a send command

Run `p2p-transfer help COMMAND` for a command's options and examples.";

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Send files or folders (or a text, or standard input) to another device.
    #[command(after_help = "\
Examples:
  p2p-transfer send photos/ notes.txt              # wait, print a code for the receiver
  p2p-transfer send big.iso --peer 192.168.1.20    # to a receiver that waits (port 14567)
  p2p-transfer send big.iso --peer 192.168.1.20:5000 --code 42-apple-tree
  p2p-transfer send photos/ --discover             # the one receiver on this network
  p2p-transfer send --text \"the wifi password is …\"
  tar c project/ | p2p-transfer send -             # standard input, as a file named stdin
  p2p-transfer send video.mkv --max-speed 5M --qr  # limit the rate; show the code as QR")]
    Send(commands::send::SendArgs),
    /// Run a rendezvous server: codes work across the internet through it (see
    /// docs/deploy.md; it keeps nothing on disk).
    #[command(after_help = "\
Examples:
  p2p-transfer rendezvous --listen 0.0.0.0:4000
  p2p-transfer rendezvous --listen 0.0.0.0:4000 --turn turn.example.net:3478 \\
      --turn-secret-file /etc/p2p-transfer/turn-secret
Then, on two machines anywhere:
  p2p-transfer send photos/ --rendezvous rdv.example.net:4000
  p2p-transfer receive 7-guitar-orbit --rendezvous rdv.example.net:4000")]
    Rendezvous(commands::rendezvous::RendezvousArgs),
    /// Receive files or folders from another device.
    #[command(after_help = "\
Examples:
  p2p-transfer receive 7-guitar-orbit              # the code a waiting sender printed
  p2p-transfer receive 7-guitar-orbit --peer 203.0.113.5   # that sender, at an address
  p2p-transfer receive -o ~/Downloads              # wait: prints a code and a send command
  p2p-transfer receive -o ~/Downloads --ask        # show each offer, answer y/N
  p2p-transfer receive -o in/ --keep-listening     # serve senders until Ctrl+C
  p2p-transfer receive 7-guitar-orbit --stdout | tar x    # to standard output")]
    Receive(commands::receive::ReceiveArgs),
    /// Resume an interrupted send: only what the receiver does not have yet is sent.
    #[command(after_help = "\
Examples (an interrupted transfer prints its own resume command):
  p2p-transfer resume 1f0c2a9e-… --peer 192.168.1.20              # the paths from history
  p2p-transfer resume 1f0c2a9e-… --peer 192.168.1.20 photos/ notes.txt
  p2p-transfer resume 1f0c2a9e-… --role server --port 14567 --code 48-stairs-plunge")]
    Resume(commands::send::ResumeArgs),
    /// Show past transfers (kept in $P2P_TRANSFER_DATA_DIR or the user's data folder).
    #[command(after_help = "\
Examples:
  p2p-transfer history                     # the latest transfers, with their ids
  p2p-transfer history --failed --interrupted -n 5
  p2p-transfer history --json | jq .       # one JSON object per record")]
    History(commands::history::HistoryArgs),
    /// List receivers announcing themselves on the local network.
    #[command(after_help = "\
Examples:
  p2p-transfer peers
  p2p-transfer peers --timeout 5")]
    Peers(commands::peers::PeersArgs),
    /// Ask STUN servers for the public address and the NAT's mapping behaviour.
    #[command(after_help = "\
Examples:
  p2p-transfer nat-test --stun-server stun.example.org          # port 3478
  p2p-transfer nat-test --stun-server 192.0.2.1:3478 --stun-server 198.51.100.7")]
    NatTest(commands::nat_test::NatTestArgs),
    /// Show this device's id (what peers see and pin; created on first use).
    #[command(after_help = "\
Example:
  p2p-transfer id        # e.g. 7K3QD-M2XWA-0B9ZT-4RHCE-P1VNF")]
    Id,
    /// List, add or remove trusted devices (peers let in without a code).
    #[command(after_help = "\
Examples:
  p2p-transfer trust list
  p2p-transfer trust add 7K3QD-M2XWA-0B9ZT-4RHCE-P1VNF --name laptop
  p2p-transfer trust rename 7K3QD-M2XWA-0B9ZT-4RHCE-P1VNF work-laptop
  p2p-transfer trust remove 7K3QD-M2XWA-0B9ZT-4RHCE-P1VNF")]
    Trust(commands::trust::TrustArgs),
    /// Share files or folders with anyone who has the ticket: writes NAME.p2p, prints a
    /// ticket, and serves the content (from the background daemon, or --foreground).
    #[command(after_help = "\
Examples:
  p2p-transfer share album/ --rendezvous rdv.example.net:4000   # writes album.p2p, prints a ticket
  p2p-transfer share big.iso --foreground --max-upload 10M      # serve from this terminal
Others then run `p2p-transfer get album.p2p` or `p2p-transfer get p2p1…`.")]
    Share(commands::swarm::ShareArgs),
    /// Download a share (a NAME.p2p file or a ticket) from every peer that has it.
    #[command(after_help = "\
Examples:
  p2p-transfer get album.p2p -o ~/Downloads
  p2p-transfer get p2p1AbC… --peers 16 --max-download 20M
  p2p-transfer get album.p2p --seed          # keep serving it after the download")]
    Get(commands::swarm::GetArgs),
    /// Run the background daemon in this terminal: keeps shares served, answers
    /// `shares` and `unshare` (started on demand otherwise; SIGTERM stops it).
    #[command(after_help = "\
Examples:
  p2p-transfer daemon                      # in the foreground; Ctrl+C or kill -TERM stops it
  p2p-transfer daemon -v 2>>daemon.log     # with its log in a file")]
    Daemon(commands::daemon::DaemonArgs),
    /// List what the daemon shares: name, root hash, peers, uploaded, state.
    #[command(after_help = "\
Examples:
  p2p-transfer shares
  p2p-transfer shares --json | jq .stats   # one JSON object per share")]
    Shares(commands::daemon::SharesArgs),
    /// Stop sharing: the daemon stops serving the share and forgets it.
    #[command(after_help = "\
Examples:
  p2p-transfer unshare 3fa9c2e1b0d4        # a prefix of the root hash (see `shares`)
  p2p-transfer unshare holiday-photos      # or the share's name")]
    Unshare(commands::daemon::UnshareArgs),
}

/// Which side opens the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RoleArg {
    /// Connect to `--peer`.
    Client,
    /// Listen on `--port` and wait for the peer.
    Server,
}

/// How to reach the peer.
#[derive(Debug, Clone, Args)]
pub struct SessionArgs {
    /// Peer address to connect to: `host:port`, or `host` for port 14567.
    #[arg(long, value_name = "HOST[:PORT]")]
    pub peer: Option<String>,
    /// Port to listen on in server role (0 picks a free port).
    #[arg(long, default_value_t = p2p_core::net::tcp::DEFAULT_PORT)]
    pub port: u16,
    /// Address to listen on in server role.
    #[arg(long, default_value = "0.0.0.0")]
    pub bind: String,
    /// Name shown to the peer (default: host name).
    #[arg(long)]
    pub name: Option<String>,
    /// Use this one-time code (e.g. 7-guitar-orbit) instead of a generated one: both
    /// sides give the same code, the peer must prove it knows it.
    #[arg(long, value_name = "CODE")]
    pub code: Option<p2p_core::net::Code>,
    /// Refuse the connection unless the peer proves this device id (see `p2p-transfer id`).
    #[arg(long, value_name = "DEVICE-ID")]
    pub peer_id: Option<p2p_core::net::DeviceId>,
    /// After a session with a code (or one you accepted with --ask), trust the peer:
    /// later transfers between the two need no code.
    #[arg(long)]
    pub remember: bool,
    /// Reconnect and resume after a connection problem (reset, timeout, the peer
    /// restarted or was interrupted): the default, kept for older scripts.
    #[arg(long, hide = true, overrides_with = "no_auto_reconnect")]
    pub auto_reconnect: bool,
    /// Fail at the first connection problem instead of reconnecting and resuming (by
    /// default a lost connection is retried, with a countdown, up to --max-retries
    /// times in a row; disk full, refusals and corrupted data always stop at once).
    #[arg(long)]
    pub no_auto_reconnect: bool,
    /// Reconnection attempts in a row before giving up (0 = no limit).
    #[arg(long, default_value_t = 10)]
    pub max_retries: u32,
    /// What to connect over: `quic` (UDP, its own congestion control: fast on long or
    /// lossy links), `tcp` (for networks that block UDP), or `auto`: both, keeping QUIC
    /// when both connect (TCP to this same machine). A listener accepts what it allows
    /// on one port number (TCP and UDP).
    #[arg(long, value_name = "auto|quic|tcp", default_value = "auto")]
    pub transport: p2p_core::net::TransportChoice,
    /// A rendezvous server (HOST:PORT) that makes codes work across the internet: the
    /// side without a code opens a mailbox there and prints a code; the side with the
    /// code joins it; both punch through their NATs (or use the server's TURN relay).
    /// Also from the environment variable P2P_RENDEZVOUS or the settings file's
    /// `rendezvous`. Without one, codes find the peer on this network only.
    #[arg(long, value_name = "HOST:PORT")]
    pub rendezvous: Option<String>,
    /// Print one JSON object per line on stdout for each event (started, progress,
    /// file_done, done, error, …; see docs/json-events.md); other output goes to stderr.
    #[arg(long)]
    pub json: bool,
}

/// How to move the bytes (both sides: a receiver's sizes are ceilings on the sender's).
#[derive(Debug, Clone, Args)]
pub struct TransferArgs {
    /// Raw bytes per chunk, e.g. 64K, 1M, 4M (K/M/G are powers of 1024) [default: 1M
    /// when sending; when receiving, whatever the sender asks, up to this].
    #[arg(long, value_parser = size::parse_size)]
    pub chunk_size: Option<u64>,
    /// Chunks in flight at once, 1 = wait for each acknowledgement [default: 16 when
    /// sending; when receiving, whatever the sender asks, up to this].
    #[arg(long)]
    pub window_size: Option<u32>,
    /// Most chunk data one transfer may make this side hold in memory (chunk size ×
    /// window, whatever the peer asks): 64M by default, at most 1G.
    #[arg(long, value_name = "SIZE", default_value = "64M", value_parser = size::parse_size)]
    pub memory_budget: u64,
}

/// How the sender treats the bytes it sends (not offered on `receive`).
#[derive(Debug, Clone, Args)]
pub struct SendTuning {
    /// Compress chunks with zstd (default).
    #[arg(long, overrides_with = "no_compress")]
    pub compress: bool,
    /// Never compress.
    #[arg(long)]
    pub no_compress: bool,
    /// zstd level, -7 (fastest) to 22 (smallest).
    #[arg(long, default_value_t = p2p_core::config::DEFAULT_COMPRESS_LEVEL,
          allow_negative_numbers = true,
          value_parser = clap::value_parser!(i8).range(-7..=22))]
    pub compress_level: i8,
    /// Stop compressing data that does not shrink (default).
    #[arg(long, overrides_with = "no_adaptive")]
    pub adaptive: bool,
    /// Compress every chunk, even when it does not pay.
    #[arg(long)]
    pub no_adaptive: bool,
    /// Limit the sending rate: 10M, 512K, 1.5M, 1G (bytes per second; K/M/G are powers
    /// of 1024), or unlimited.
    #[arg(long, value_name = "RATE", default_value = "unlimited", value_parser = size::parse_rate)]
    pub max_speed: size::Rate,
}

impl Default for SendTuning {
    /// What a side that does not send uses: compression allowed (the sender decides),
    /// no rate limit.
    fn default() -> Self {
        Self {
            compress: true,
            no_compress: false,
            compress_level: p2p_core::config::DEFAULT_COMPRESS_LEVEL,
            adaptive: true,
            no_adaptive: false,
            max_speed: size::Rate(None),
        }
    }
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    // `--help` adds the exit codes to the examples.
    let command = <Cli as clap::CommandFactory>::command()
        .after_long_help(format!("{TOP_EXAMPLES}\n\n{}", exit::EXIT_CODES_HELP));
    let parsed = command
        .try_get_matches()
        .and_then(|m| <Cli as clap::FromArgMatches>::from_arg_matches(&m));
    let cli = match parsed {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            let code = if e.use_stderr() { 2 } else { 0 };
            // A script that asked for JSON gets its `error` line even for a bad command line.
            if code != 0 && std::env::args_os().any(|a| a == "--json") {
                let message = e.kind().to_string();
                json::print(&json::Event::Error {
                    exit_code: code,
                    message: &message,
                });
            }
            return ExitCode::from(code);
        }
    };
    let output = match &cli.command {
        Command::Send(args) if args.session.json => render::Output::Json,
        Command::Receive(args) if args.session.json => render::Output::Json,
        Command::Resume(args) if args.session.json => render::Output::Json,
        Command::Get(args) if args.json => render::Output::Json,
        _ => render::Output::Human,
    };
    init_logging(cli.verbose);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let recorder = record::Recorder::new(
        p2p_core::history::History::default_location(),
        render::Renderer::with_output(output),
    );
    // The daemon stops on SIGINT/SIGTERM itself, cleanly, with exit code 0.
    let own_signals = matches!(cli.command, Command::Daemon(_));
    let result = runtime.block_on(async {
        let command = commands::run(cli.command, &recorder);
        if own_signals {
            return command.await;
        }
        let mut command = std::pin::pin!(command);
        // Biased, Ctrl+C first: its handler is installed on the first poll, before the
        // command can print anything (a test sends SIGINT right after "listening on").
        tokio::select! {
            biased;
            _ = tokio::signal::ctrl_c() => {}
            result = &mut command => return result,
        }
        // Stop on purpose: a running transfer tells the peer it was interrupted (so the
        // peer keeps what arrived and waits for a resume) before it ends; waits end at
        // once. A second Ctrl+C, or the grace period, cuts that short.
        interrupt().trigger();
        tokio::select! {
            biased;
            _ = tokio::signal::ctrl_c() => {}
            _ = tokio::time::timeout(INTERRUPT_GRACE, &mut command) => {}
        }
        recorder.interrupted();
        Err(anyhow::Error::new(exit::Interrupted))
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let code = exit_code(&e);
            recorder.renderer().error(code, &exit::describe(&e));
            if code != 130 {
                recorder.failed(&e);
            }
            ExitCode::from(code)
        }
    }
}

/// How long Ctrl+C waits for a running transfer to tell the peer it stops.
const INTERRUPT_GRACE: std::time::Duration = std::time::Duration::from_secs(3);

/// The process's stop switch: Ctrl+C triggers it, every session of the command observes
/// it (one command per process, so one switch).
pub(crate) fn interrupt() -> p2p_core::Interrupt {
    static INTERRUPT: std::sync::OnceLock<p2p_core::Interrupt> = std::sync::OnceLock::new();
    INTERRUPT.get_or_init(p2p_core::Interrupt::new).clone()
}

/// How to run this program again in a printed command: `p2p-transfer` when that name
/// on PATH is this very program, otherwise the path it was started with (after the
/// quick start it is `./target/release/p2p-transfer`, not on PATH).
pub(crate) fn program() -> &'static str {
    static PROGRAM: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    PROGRAM.get_or_init(|| {
        const NAME: &str = "p2p-transfer";
        let started_as = std::env::args_os().next().map(std::path::PathBuf::from);
        let this = std::env::current_exe().and_then(std::fs::canonicalize).ok();
        let on_path = std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join(NAME))
                .find(|candidate| candidate.is_file())
        });
        let same = |p: &std::path::Path| std::fs::canonicalize(p).ok() == this;
        match (on_path, started_as) {
            (Some(found), _) if this.is_some() && same(&found) => NAME.to_owned(),
            (_, Some(path)) if path.components().count() > 1 => {
                commands::shell_quote(&path.display().to_string())
            }
            _ => match &this {
                Some(exe) => commands::shell_quote(&exe.display().to_string()),
                None => NAME.to_owned(),
            },
        }
    })
}

/// Whether log lines may use colour: on a terminal, unless `NO_COLOR` is set to
/// anything but an empty string (<https://no-color.org>).
fn colour(no_color: Option<&std::ffi::OsStr>, terminal: bool) -> bool {
    no_color.is_none_or(|v| v.is_empty()) && terminal
}

fn init_logging(verbose: u8) {
    use tracing_subscriber::EnvFilter;
    let level = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour(
            std::env::var_os("NO_COLOR").as_deref(),
            std::io::IsTerminal::is_terminal(&std::io::stderr()),
        ))
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_colour_only_on_a_terminal_and_never_with_no_color_set() {
        use std::ffi::OsStr;
        assert!(colour(None, true));
        assert!(!colour(None, false));
        assert!(!colour(Some(OsStr::new("1")), true));
        // https://no-color.org: set "to any value but an empty string".
        assert!(colour(Some(OsStr::new("")), true));
    }
}
