//! The `p2p-gui` binary: parses a few flags, then opens the window.
//!
//! The flags preselect what a person would click, so the window can be started
//! ready to receive (`--listen 0.0.0.0:14567 --output ~/Downloads`) or ready to send
//! (`--connect host:port --send FILE`), or paired with a one-time code (`--listen ADDR
//! --code CODE`, `--code CODE`). Notable events are also written to stderr, one line each
//! (`listening on ADDR`, `code: CODE`, `connected to …`, `offer from …`, `finished: …`,
//! `failed: …`), so scripts and tests can follow the window without scraping pixels.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use clap::Parser;
use p2p_core::settings::Settings;
use p2p_core::TransferEvent;
use p2p_gui::worker::WorkerEvent;
use p2p_gui::{App, Launch, Message, Tab};

/// Desktop window for peer-to-peer file and folder transfer.
#[derive(Debug, Parser)]
#[command(name = "p2p-gui", version, about)]
struct Args {
    /// Start listening on this address (e.g. 0.0.0.0:14567; port 0 picks a free port).
    #[arg(long, value_name = "HOST:PORT", conflicts_with = "connect")]
    listen: Option<String>,
    /// Connect to a peer at this address.
    #[arg(long, value_name = "HOST:PORT")]
    connect: Option<String>,
    /// A one-time code (e.g. 7-guitar-orbit): with --listen, wait for the peer that
    /// knows it; with --connect, connect there with it; alone, find the peer waiting for
    /// it on the local network and connect. As if typed in the window: a malformed code
    /// is shown there.
    #[arg(long, value_name = "CODE")]
    code: Option<String>,
    /// Save received files in this folder (this run only; the saved setting is kept).
    #[arg(long, short, value_name = "DIR")]
    output: Option<PathBuf>,
    /// Accept incoming transfers without asking (this run only; the saved setting is
    /// kept). Without it, the saved setting decides (by default: ask).
    #[arg(long)]
    auto_accept: bool,
    /// Select these files or folders, and send them once connected.
    #[arg(long, value_name = "PATH", num_args = 1..)]
    send: Vec<PathBuf>,
    /// Close the window after the first transfer ends (exit code 1 if it failed).
    #[arg(long)]
    exit_after_transfer: bool,
    /// Start looking for peers on the local network at once.
    #[arg(long)]
    find_peers: bool,
    /// Open on this tab: connection, send, receive, settings or history.
    #[arg(long, value_parser = parse_tab)]
    tab: Option<Tab>,
}

fn parse_tab(name: &str) -> Result<Tab, String> {
    Tab::from_name(name).ok_or_else(|| {
        format!("{name:?} is not a tab (connection, send, receive, settings, history)")
    })
}

fn main() -> ExitCode {
    let args = Args::parse();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                // winit warns about harmless display quirks (Xvfb has no XSETTINGS).
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,winit=error")),
        )
        .with_writer(std::io::stderr)
        .try_init();

    let launch = Launch {
        config_dir: Settings::dir(),
        listen: args.listen,
        connect: args.connect,
        output: args.output,
        send: args.send,
        tab: args.tab,
        data_dir: p2p_core::history::data_dir(),
        find_peers: args.find_peers,
        auto_accept: args.auto_accept,
        identity: None,
        code: args.code,
        discovery: match p2p_core::discovery::DiscoveryConfig::from_env() {
            Ok(config) => Some(config),
            Err(e) => {
                eprintln!("warning: finding peers is off: {e}");
                None
            }
        },
    };
    let exit_after_transfer = args.exit_after_transfer;
    let failed = Arc::new(AtomicBool::new(false));
    let failed_in_update = failed.clone();

    let result = iced::application(
        move || App::new(launch.clone()),
        move |app: &mut App, message: Message| {
            let ended = report(&message);
            if let Some(ok) = ended {
                failed_in_update.store(!ok, Ordering::Relaxed);
            }
            let listening = matches!(message, Message::Worker(_, WorkerEvent::Listening(_)));
            let task = app.update(message);
            if let Some(code) = app.waiting_code.as_ref().filter(|_| listening) {
                // What the person reads to the peer; the CLI prints it the same way.
                eprintln!("code: {code}");
            }
            match ended {
                // Closes the session cleanly first, so the peer ends without an error.
                Some(_) if exit_after_transfer => {
                    iced::Task::batch([task, app.update(Message::Quit)])
                }
                _ => task,
            }
        },
        App::view,
    )
    // Closing the window closes an idle session cleanly before the program ends.
    .exit_on_close_request(false)
    .subscription(|_: &App| iced::window::close_requests().map(|_| Message::Quit))
    .title(App::title)
    .theme(p2p_gui::theme)
    .default_font(p2p_gui::FONT)
    .window_size((760.0, 720.0))
    .run();

    match result {
        Err(e) => {
            eprintln!("error: cannot open the window: {e}");
            ExitCode::from(1)
        }
        Ok(()) if failed.load(Ordering::Relaxed) => ExitCode::from(1),
        Ok(()) => ExitCode::SUCCESS,
    }
}

/// Writes one stderr line for the notable worker events. Returns `Some(succeeded)` when
/// a transfer ended.
fn report(message: &Message) -> Option<bool> {
    let Message::Worker(_, event) = message else {
        return None;
    };
    match event {
        WorkerEvent::Listening(addr) => eprintln!("listening on {addr}"),
        WorkerEvent::Connected {
            peer,
            addr,
            identity,
            ..
        } => {
            let peer = p2p_core::text::printable(peer);
            let addr = addr.map(|a| format!(" ({a})")).unwrap_or_default();
            let device = identity
                .as_ref()
                .map(|i| {
                    format!(
                        ", device {}: {}",
                        i.device_id,
                        p2p_gui::admitted(&i.admitted)
                    )
                })
                .unwrap_or_default();
            eprintln!("connected to {peer}{addr}{device}");
        }
        WorkerEvent::Offer(offer) => eprintln!(
            "offer from {}: {} file(s), {} bytes; waiting for Accept or Decline",
            p2p_core::text::printable(&offer.peer),
            offer.files(),
            offer.total_bytes()
        ),
        WorkerEvent::Reconnecting { error, attempt, .. } => {
            eprintln!("connection lost ({error}); reconnecting (attempt {attempt})")
        }
        WorkerEvent::Transfer(TransferEvent::Finished {
            files,
            bytes,
            elapsed,
            ..
        }) => {
            let secs = elapsed.as_secs_f64();
            eprintln!(
                "finished: {files} file(s), {bytes} bytes in {secs:.3} s ({:.1} MiB/s)",
                *bytes as f64 / secs.max(1e-6) / 1048576.0
            );
            return Some(true);
        }
        WorkerEvent::Transfer(TransferEvent::Failed { error, .. })
        | WorkerEvent::SendFailed(error) => {
            eprintln!("failed: {error}");
            return Some(false);
        }
        WorkerEvent::Cancelled => {
            eprintln!("cancelled");
            return Some(false);
        }
        WorkerEvent::Stopped { error: Some(error) } => {
            eprintln!("error: {error}");
            return Some(false);
        }
        _ => {}
    }
    None
}
