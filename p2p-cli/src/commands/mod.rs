//! One module per subcommand; [`run`] dispatches.

pub mod daemon;
pub mod history;
pub mod nat_test;
pub mod peers;
pub mod receive;
pub mod rendezvous;
pub mod send;
pub mod stream;
pub mod swarm;
pub mod trust;

use p2p_core::net::traversal::Rendezvous;
use p2p_core::net::{
    Admission, Admitted, Code, Endpoint, Identity, PeerStream, Security, SecurityError, TrustStore,
};
use p2p_core::{P2PSession, SessionConfig, SessionOptions};

use crate::record::Recorder;
use crate::{Command, SendTuning, SessionArgs, TransferArgs};

/// Runs a parsed command; transfers report to `recorder`.
pub async fn run(command: Command, recorder: &Recorder) -> anyhow::Result<()> {
    match command {
        Command::Send(args) => send::run(args, recorder).await,
        Command::Rendezvous(args) => rendezvous::run(args).await,
        Command::Resume(args) => send::resume(args, recorder).await,
        Command::Receive(args) => receive::run(args, recorder).await,
        Command::History(args) => history::run(args),
        Command::Peers(args) => peers::run(args).await,
        Command::NatTest(args) => nat_test::run(args).await,
        Command::Id => trust::show_id(),
        Command::Trust(args) => trust::run(args),
        Command::Share(args) => swarm::share(args).await,
        Command::Get(args) => swarm::get(args, recorder).await,
        Command::Daemon(args) => daemon::run(args).await,
        Command::Shares(args) => daemon::shares(args).await,
        Command::Unshare(args) => daemon::unshare(args).await,
    }
}

/// Session options from the common flags. Sizes the user did not give come from
/// `defaults`: the core defaults for a sender, the protocol maxima for a receiver
/// (negotiation takes the smaller value of both sides, so the sender's settings apply
/// unless the receiver asked for less).
pub fn session_options(
    session: &SessionArgs,
    transfer: &TransferArgs,
    tuning: &SendTuning,
    defaults: &SessionConfig,
    security: Security,
) -> anyhow::Result<SessionOptions> {
    crate::size::check_transfer_flags(transfer)?;
    let chunk_size = match transfer.chunk_size {
        Some(size) => {
            u32::try_from(size).map_err(|_| anyhow::anyhow!("--chunk-size {size} is too large"))?
        }
        None => defaults.chunk_size,
    };
    let config = SessionConfig {
        chunk_size,
        window_size: transfer.window_size.unwrap_or(defaults.window_size),
        compress: !tuning.no_compress,
        compress_level: tuning.compress_level,
        adaptive: !tuning.no_adaptive,
    };
    p2p_core::config::validate(&config).map_err(p2p_core::Error::from)?;
    let mut options = SessionOptions {
        security,
        config,
        max_speed: tuning.max_speed.0,
        memory_budget: transfer.memory_budget,
        interrupt: crate::interrupt(),
        ..SessionOptions::default()
    };
    if let Some(name) = &session.name {
        options.device_name = name.clone();
    }
    Ok(options)
}

/// This device's identity (created on first use in the data folder).
pub fn identity() -> anyhow::Result<std::sync::Arc<Identity>> {
    let dir = data_dir()?;
    let identity = Identity::load_or_create(&dir).map_err(core_error)?;
    Ok(std::sync::Arc::new(identity))
}

/// The data folder, or a clear error when there is none.
pub fn data_dir() -> anyhow::Result<std::path::PathBuf> {
    p2p_core::history::data_dir().ok_or_else(|| {
        anyhow::anyhow!(
            "no data folder for the device key: set {}",
            p2p_core::history::DATA_DIR_ENV
        )
    })
}

/// The trust store in the data folder.
pub fn trust_store() -> anyhow::Result<TrustStore> {
    TrustStore::load(&data_dir()?).map_err(core_error)
}

fn core_error(e: impl Into<SecurityError>) -> anyhow::Error {
    p2p_core::Error::Security(e.into()).into()
}

/// Who this side is and whom it lets in: the device key, the trusted devices, the
/// code (`code`) and the pinned id (`--peer-id`); `accept_unknown` lets unknown devices
/// in for a person to decide (`receive --ask`).
pub fn security(
    session: &SessionArgs,
    code: Option<Code>,
    accept_unknown: bool,
) -> anyhow::Result<Security> {
    let trusted = trust_store()?;
    let mut admission = Admission::default()
        .with_trusted(trusted.devices())
        .accepting_unknown(accept_unknown);
    if let Some(code) = code {
        admission = admission.with_code(code);
    }
    if let Some(pin) = session.peer_id {
        admission = admission.with_pin(pin);
    }
    Security::new(identity()?, admission).map_err(core_error)
}

/// Opens an endpoint: dials `--peer` (client role), or binds `--bind:--port` and
/// prints `listening on ADDR` (server role), announcing it on the LAN when `announce`
/// is given (with the nameplate of the code this side waits for, if any).
pub async fn endpoint(
    role: crate::RoleArg,
    session: &SessionArgs,
    options: &SessionOptions,
    announce: Option<Option<u16>>,
) -> anyhow::Result<Endpoint> {
    match role {
        crate::RoleArg::Client => {
            let peer = session.peer.as_deref().ok_or_else(|| {
                crate::exit::Usage(
                    "connecting needs the peer's address: add --peer HOST[:PORT] (or give \
                     the code the other side printed)"
                        .into(),
                )
            })?;
            let addr = p2p_core::net::tcp::with_default_port(peer);
            // Said at once: an unreachable address otherwise means seconds of silence.
            eprintln!("connecting to {addr}…");
            Ok(Endpoint::dial_with(addr, session.transport))
        }
        crate::RoleArg::Server => {
            let bind = format!("{}:{}", session.bind, session.port);
            let mut endpoint = Endpoint::listen_with(&bind, session.transport).await?;
            if let Some(local) = endpoint.local_addr() {
                eprintln!("listening on {local}");
            }
            if let Some(nameplate) = announce {
                peers::announce(&mut endpoint, options, nameplate);
            }
            Ok(endpoint)
        }
    }
}

/// Environment variable naming the rendezvous server.
pub const RENDEZVOUS_ENV: &str = "P2P_RENDEZVOUS";

/// The rendezvous server: `--rendezvous`, else `P2P_RENDEZVOUS`, else the settings
/// file's `rendezvous`; `None` when none is set (or it is empty).
pub fn rendezvous_server(session: &SessionArgs) -> Option<String> {
    rendezvous_from(session.rendezvous.as_deref())
}

/// The rendezvous server: `flag` (a `--rendezvous` value), else `P2P_RENDEZVOUS`, else
/// the settings file's `rendezvous`; `None` when none is set (or it is empty).
pub fn rendezvous_from(flag: Option<&str>) -> Option<String> {
    let from_settings = || {
        p2p_core::settings::Settings::dir()
            .and_then(|dir| p2p_core::settings::Settings::load(&dir).ok())
            .and_then(|s| s.rendezvous)
    };
    flag.map(str::to_owned)
        .or_else(|| std::env::var(RENDEZVOUS_ENV).ok())
        .or_else(from_settings)
        .filter(|s| !s.trim().is_empty())
        .map(|s| with_default_rendezvous_port(s.trim()))
}

/// `host` with the default rendezvous port when none is given.
fn with_default_rendezvous_port(server: &str) -> String {
    if server.parse::<std::net::SocketAddr>().is_ok()
        || server
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.contains(':') && p.parse::<u16>().is_ok())
    {
        server.to_owned()
    } else {
        format!(
            "{server}:{}",
            p2p_core::net::traversal::DEFAULT_RENDEZVOUS_PORT
        )
    }
}

/// Meets the peer through the rendezvous server (when one is set and no address was
/// given): joins the mailbox of `code`, or, without a code, opens a mailbox and makes
/// the code for it (returned second, to print).
pub async fn rendezvous(
    session: &SessionArgs,
    code: Option<&Code>,
) -> anyhow::Result<Option<(Rendezvous, Option<Code>)>> {
    let Some(server) = rendezvous_server(session) else {
        return Ok(None);
    };
    if session.peer.is_some() {
        return Ok(None);
    }
    Ok(Some(match code {
        Some(code) => {
            eprintln!("joining the code's mailbox on {server}…");
            (Rendezvous::claim(&server, code).await?, None)
        }
        None => {
            let rendezvous = Rendezvous::allocate(&server).await?;
            let nameplate = u16::try_from(rendezvous.nameplate()).map_err(|_| {
                anyhow::anyhow!(
                    "the rendezvous {server} gave mailbox number {}, too large for a code",
                    rendezvous.nameplate()
                )
            })?;
            let code = Code::generate_on(nameplate);
            rendezvous.set_code(code.clone()).await;
            (rendezvous, Some(code))
        }
    }))
}

/// Pins the id a discovered peer announced: the connection fails unless the peer proves
/// it (a beacon is only a hint). With `--peer-id` as well, both must agree.
pub fn pin_discovered(
    options: &SessionOptions,
    found: &p2p_core::discovery::PeerInfo,
) -> anyhow::Result<()> {
    let admission = &options.security.admission;
    if let Some(pinned) = admission.pinned() {
        anyhow::ensure!(
            pinned == found.device_id,
            "the peer found announces device {}, not the --peer-id {pinned}",
            found.device_id
        );
    }
    admission.expect(Some(found.device_id));
    Ok(())
}

/// Opens one session through `endpoint`; after a session with a code (or an unknown
/// device a person accepted) and `--remember`, the peer is added to the trust store.
pub async fn open_session(
    endpoint: &Endpoint,
    options: &SessionOptions,
) -> p2p_core::Result<P2PSession<PeerStream>> {
    let session = P2PSession::open(endpoint, options).await?;
    if let (Some(addr), Some(peer)) = (session.peer_addr(), session.peer_identity()) {
        tracing::info!("peer {addr} connected: device {}", peer.device_id);
    }
    Ok(session)
}

/// Adds the session's peer to the trust store (`--remember`), once per device.
pub fn remember(session: &P2PSession<PeerStream>, renderer: &crate::render::Renderer) {
    let Some(peer) = session.peer_identity() else {
        return;
    };
    if matches!(
        peer.admitted,
        Admitted::Trusted { .. } | Admitted::SameDevice
    ) {
        return;
    }
    let result = trust_store().and_then(|mut store| {
        store.add(
            peer.device_id,
            &session.peer().device_name,
            Some(peer.fingerprint),
        );
        store.save().map_err(core_error)
    });
    match result {
        Ok(()) => renderer.line(&format!(
            "remembered {} ({}): later transfers need no code",
            p2p_core::text::printable(&session.peer().device_name),
            peer.device_id
        )),
        Err(e) => renderer.line(&format!("warning: could not remember the peer: {e:#}")),
    }
}

/// `--role server` waits for the peer: an address to connect to contradicts it.
pub fn check_role(role: crate::RoleArg, session: &SessionArgs) -> anyhow::Result<()> {
    if role == crate::RoleArg::Server {
        if let Some(peer) = &session.peer {
            return Err(crate::exit::Usage(format!(
                "--role server waits for the peer to connect, so --peer {peer} has no use: \
                 drop one of them"
            ))
            .into());
        }
    }
    Ok(())
}

/// Runs `attempt` until it succeeds, retrying transient failures with backoff unless
/// `--no-auto-reconnect` (the loop is p2p-core's, shared with the GUI). The budget
/// counts consecutive failures: an attempt that got as far as a session resets it.
/// `peer` names the other side in messages ("sender", "receiver").
pub async fn with_reconnect<F, Fut>(
    session: &SessionArgs,
    endpoint: &Endpoint,
    recorder: &Recorder,
    peer: &str,
    attempt: F,
) -> anyhow::Result<()>
where
    F: FnMut(p2p_core::reconnect::Progress) -> Fut,
    Fut: std::future::Future<Output = p2p_core::Result<()>>,
{
    // A listener has nothing to back off from: the peer dials again when it can, and
    // must find us accepting at once.
    let listening = endpoint.is_listening();
    let backoff = if listening {
        let now = std::time::Duration::ZERO;
        p2p_core::reconnect::Backoff::with_delays(session.max_retries, now, now)
    } else {
        p2p_core::reconnect::Backoff::new(session.max_retries)
    };
    let mut reconnect =
        p2p_core::reconnect::Reconnect::with_backoff(!session.no_auto_reconnect, backoff)
            .interruptible(crate::interrupt())
            .once_connected();
    let budget = session.max_retries;
    let result = reconnect
        .run(attempt, |retry| {
            let interrupted = retry.error.peer_interrupted();
            let what = if interrupted {
                format!("the {peer} stopped the transfer; what arrived is kept")
            } else {
                format!("connection lost ({})", retry.error)
            };
            if listening {
                let until = if interrupted {
                    "waiting for it to resume"
                } else {
                    "waiting for it to connect again"
                };
                recorder
                    .renderer()
                    .eprintln(&format!("{what} — {until} (Ctrl+C to stop)"));
            } else {
                crate::countdown::show(&what, retry.delay, retry.attempt, budget);
            }
            if interrupted {
                recorder.print_continue_later();
            }
        })
        .await;
    // A QUIC close needs this process alive until it has left (TCP's kernel sends its
    // FIN alone): bounded, and only for connections this side accepted.
    endpoint.shut_down().await;
    match result {
        Ok(()) => Ok(()),
        Err(e) if reconnect.gave_up() => Err(anyhow::Error::new(e).context(format!(
            "giving up after {} reconnection attempts",
            reconnect.retries()
        ))),
        Err(e) => Err(e.into()),
    }
}

/// Quotes a path for a shell command line when it needs it.
pub(crate) fn shell_quote(text: &str) -> String {
    if !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:@+,".contains(c))
    {
        text.to_owned()
    } else {
        format!("'{}'", text.replace('\'', "'\\''"))
    }
}
