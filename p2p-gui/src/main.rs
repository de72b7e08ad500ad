//! The `p2p-gui` binary: parses a few flags, then opens the window.
//!
//! The flags preselect what a person would click, and have the CLI's names: the window
//! can be started ready to receive (`--port 14567 --output ~/Downloads`) or ready to send
//! (`--peer host:port --send FILE`), or paired with a one-time code (`--port 0 --code
//! CODE`, `--code CODE`). Notable events are also written to stderr, one line each
//! (`listening on ADDR`, `code: CODE`, `connected to …`, `offer from …`, `finished: …`,
//! `failed: …`), so scripts and tests can follow the window without scraping pixels.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use clap::Parser;
use p2p_core::settings::Settings;
use p2p_core::TransferEvent;
use p2p_gui::get_worker::{GetEnd, GetEvent};
use p2p_gui::worker::WorkerEvent;
use p2p_gui::{App, Launch, Message, Tab};

/// Desktop window for peer-to-peer file and folder transfer.
#[derive(Debug, Parser)]
#[command(name = "p2p-gui", version, about)]
struct Args {
    /// Connect to the peer at this address: `host:port`, or `host` for port 14567 (as
    /// `p2p-transfer send --peer`).
    #[arg(long, value_name = "HOST[:PORT]", alias = "connect", conflicts_with_all = ["port", "bind"])]
    peer: Option<String>,
    /// Wait for a peer: listen on this port (0 picks a free port; with --bind, 14567 when
    /// not given).
    #[arg(long)]
    port: Option<u16>,
    /// Wait for a peer: listen on this address (default 0.0.0.0, every interface).
    #[arg(long, value_name = "ADDR")]
    bind: Option<String>,
    /// A one-time code (e.g. 7-guitar-orbit): with --port/--bind, wait for the peer that
    /// knows it (an empty one makes a new code); with --peer, connect there with it;
    /// alone, find the peer waiting for it on the local network and connect. As if typed
    /// in the window: a malformed code is shown there.
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
    /// Close the window after the first transfer or download ends (exit code 1 if it
    /// failed or was cancelled).
    #[arg(long)]
    exit_after_transfer: bool,
    /// Start looking for peers on the local network at once (the default).
    #[arg(long, hide = true, overrides_with = "no_find_peers")]
    find_peers: bool,
    /// Do not look for peers on the local network when the window opens.
    #[arg(long)]
    no_find_peers: bool,
    /// Download shared files: a share ticket (p2p1…) or the path of a .p2p file. Opens
    /// the "Get shared files" tab and starts at once, into the output folder.
    #[arg(long, value_name = "TICKET_OR_FILE")]
    get: Option<String>,
    /// Open on this tab: connection, send, receive, get, settings or history.
    #[arg(long, value_parser = parse_tab)]
    tab: Option<Tab>,
    /// Light or dark window; by default it follows the desktop's setting.
    #[arg(long, value_enum, default_value_t = ThemeArg::System)]
    theme: ThemeArg,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ThemeArg {
    System,
    Light,
    Dark,
}

fn parse_tab(name: &str) -> Result<Tab, String> {
    Tab::from_name(name).ok_or_else(|| {
        format!("{name:?} is not a tab (connection, send, receive, get, settings, history)")
    })
}

/// Where to listen, from `--bind` and `--port` (`None` when neither is given).
fn listen_address(bind: Option<&str>, port: Option<u16>) -> Option<String> {
    if bind.is_none() && port.is_none() {
        return None;
    }
    let port = port.unwrap_or(p2p_core::net::tcp::DEFAULT_PORT);
    let host = bind.unwrap_or("0.0.0.0");
    Some(match host.parse::<std::net::IpAddr>() {
        Ok(ip) => std::net::SocketAddr::new(ip, port).to_string(),
        Err(_) => format!("{host}:{port}"),
    })
}

/// Exit code when the window cannot be shown (the README's "any other error").
const NO_WINDOW: u8 = 1;

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(problem) = p2p_gui::display::missing() {
        eprintln!("error: {problem}");
        return ExitCode::from(NO_WINDOW);
    }
    {
        use tracing_subscriber::layer::SubscriberExt;
        use tracing_subscriber::util::SubscriberInitExt;
        use tracing_subscriber::Layer;
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            // winit warns about harmless display quirks (Xvfb has no XSETTINGS).
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,winit=error"));
        let _ = tracing_subscriber::registry()
            // A file dialog that cannot open is said in the window, not only here.
            .with(p2p_gui::dialog::DialogErrors)
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_filter(filter),
            )
            .try_init();
    }

    let launch = Launch {
        config_dir: Settings::dir(),
        listen: listen_address(args.bind.as_deref(), args.port),
        connect: args.peer,
        output: args.output,
        send: args.send,
        tab: args.tab,
        data_dir: p2p_core::history::data_dir(),
        find_peers: !args.no_find_peers,
        auto_accept: args.auto_accept,
        identity: None,
        code: args.code,
        // As the CLI: the environment names the rendezvous server for this run.
        rendezvous: std::env::var(p2p_gui::RENDEZVOUS_ENV).ok(),
        get: args.get,
        theme: match args.theme {
            ThemeArg::System => None,
            ThemeArg::Light => Some(iced::Theme::Light),
            ThemeArg::Dark => Some(iced::Theme::Dark),
        },
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

    let application = iced::application(
        move || App::new(launch.clone()),
        move |app: &mut App, message: Message| {
            let ended = report(&message);
            if let Some(ok) = ended {
                failed_in_update.store(!ok, Ordering::Relaxed);
            }
            let listening = matches!(
                message,
                Message::Worker(_, WorkerEvent::Listening(_) | WorkerEvent::Code(_))
            );
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
        view,
    )
    .window(p2p_gui::window_settings())
    // Closing the window closes an idle session cleanly before the program ends.
    .exit_on_close_request(false)
    .subscription(App::subscription)
    .title(App::title)
    .theme(App::theme)
    .default_font(p2p_gui::FONT);
    let result = p2p_gui::display::run_guarded(move || application.run());

    match result {
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(NO_WINDOW)
        }
        Ok(()) if failed.load(Ordering::Relaxed) => ExitCode::from(1),
        Ok(()) => ExitCode::SUCCESS,
    }
}

/// Draws the window; the first call means the window is up (so a later panic is a
/// bug, reported as such, not "cannot open the window").
fn view(app: &App) -> iced::Element<'_, Message> {
    p2p_gui::display::shown();
    app.view()
}

/// Writes one stderr line for the notable worker events. Returns `Some(succeeded)` when
/// a transfer ended.
fn report(message: &Message) -> Option<bool> {
    let event = match message {
        Message::Worker(_, event) => event,
        Message::GetWorker(_, event) => return report_get(event),
        Message::GetSource(Err(error)) => {
            eprintln!("get: {error}");
            return None;
        }
        _ => return None,
    };
    match event {
        WorkerEvent::Listening(addr) => eprintln!("listening on {addr}"),
        WorkerEvent::Connected {
            peer,
            addr,
            identity,
            transport,
            path,
            ..
        } => {
            let peer = p2p_core::text::printable(peer);
            let addr = addr.map(|a| format!(" ({a})")).unwrap_or_default();
            let over = p2p_gui::history::over_path(transport.as_slice(), path.map(|p| p.kind));
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
            eprintln!("connected to {peer}{addr}{over}{device}");
        }
        WorkerEvent::Path(path) => eprintln!("path: now {} ({})", path.kind, path.addr),
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
        | WorkerEvent::SendFailed { error, .. } => {
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

/// The stderr lines of a swarm download: each peer and event, and how it ended
/// (`Some(succeeded)`).
fn report_get(event: &GetEvent) -> Option<bool> {
    match event {
        GetEvent::Connected => eprintln!("get: connected to the tracker"),
        GetEvent::Status(_) => {}
        GetEvent::Swarm(event) => eprintln!("get: {}", p2p_gui::get::event_line(event)),
        GetEvent::Ended(GetEnd::Done) => {
            eprintln!("get: done");
            return Some(true);
        }
        GetEvent::Ended(GetEnd::Failed(error)) => {
            eprintln!("get failed: {}", p2p_core::text::printable(error));
            return Some(false);
        }
        GetEvent::Ended(GetEnd::Cancelled) => {
            eprintln!("get: cancelled");
            return Some(false);
        }
    }
    None
}
