//! One module per subcommand; [`run`] dispatches.

pub mod history;
pub mod nat_test;
pub mod peers;
pub mod receive;
pub mod send;

use p2p_core::{SessionConfig, SessionOptions};

use crate::record::Recorder;
use crate::{Command, SessionArgs, TransferArgs};

/// Runs a parsed command; transfers report to `recorder`.
pub async fn run(command: Command, recorder: &Recorder) -> anyhow::Result<()> {
    match command {
        Command::Send(args) => send::run(args, recorder).await,
        Command::Resume(args) => send::resume(args, recorder).await,
        Command::Receive(args) => receive::run(args, recorder).await,
        Command::History(args) => history::run(args),
        Command::Peers(args) => peers::run(args).await,
        Command::NatTest(args) => nat_test::run(args).await,
    }
}

/// Session options from the common flags. Sizes the user did not give come from
/// `defaults`: the core defaults for a sender, the protocol maxima for a receiver
/// (negotiation takes the smaller value of both sides, so the sender's settings apply
/// unless the receiver asked for less).
pub fn session_options(
    session: &SessionArgs,
    transfer: &TransferArgs,
    defaults: &SessionConfig,
) -> anyhow::Result<SessionOptions> {
    let chunk_size = match transfer.chunk_size {
        Some(size) => {
            u32::try_from(size).map_err(|_| anyhow::anyhow!("--chunk-size {size} is too large"))?
        }
        None => defaults.chunk_size,
    };
    let config = SessionConfig {
        chunk_size,
        window_size: transfer.window_size.unwrap_or(defaults.window_size),
        compress: !transfer.no_compress,
        compress_level: transfer.compress_level,
        adaptive: !transfer.no_adaptive,
    };
    p2p_core::config::validate(&config).map_err(p2p_core::Error::from)?;
    let mut options = SessionOptions {
        config,
        max_speed: transfer.max_speed.0,
        memory_budget: transfer.memory_budget,
        ..SessionOptions::default()
    };
    if let Some(name) = &session.name {
        options.device_name = name.clone();
    }
    Ok(options)
}

/// Where sessions come from: a peer to connect to (client role), or a listening socket
/// (server role) that stays open across reconnections and announces itself on the LAN
/// while it lives when asked to.
pub enum Endpoint {
    Client(String),
    Server {
        listener: tokio::net::TcpListener,
        _announcer: Option<p2p_core::discovery::Announcer>,
    },
}

impl Endpoint {
    /// Binds (server role, printing `listening on ADDR`) or checks `--peer` (client).
    pub async fn new(
        role: crate::RoleArg,
        session: &SessionArgs,
        options: &SessionOptions,
        announce: bool,
    ) -> anyhow::Result<Self> {
        use anyhow::Context;
        match role {
            crate::RoleArg::Client => Ok(Endpoint::Client(
                session
                    .peer
                    .clone()
                    .context("--peer HOST:PORT is required to connect")?,
            )),
            crate::RoleArg::Server => {
                let bind = format!("{}:{}", session.bind, session.port);
                let listener = p2p_core::transport::listen(&bind).await?;
                let local = listener.local_addr()?;
                eprintln!("listening on {local}");
                let _announcer = if announce {
                    peers::announce(options, local)
                } else {
                    None
                };
                Ok(Endpoint::Server {
                    listener,
                    _announcer,
                })
            }
        }
    }

    /// The address a server endpoint listens on.
    pub fn local_addr(&self) -> Option<std::net::SocketAddr> {
        match self {
            Endpoint::Client(_) => None,
            Endpoint::Server { listener, .. } => listener.local_addr().ok(),
        }
    }

    /// Connects or accepts one peer and runs the handshake.
    pub async fn session(
        &self,
        options: &SessionOptions,
    ) -> p2p_core::Result<p2p_core::P2PSession<tokio::net::TcpStream>> {
        match self {
            Endpoint::Client(peer) => {
                tracing::info!("connecting to {peer}");
                p2p_core::P2PSession::connect(peer, options).await
            }
            Endpoint::Server { listener, .. } => {
                let session = p2p_core::P2PSession::accept(listener, options).await?;
                if let Some(addr) = session.peer_addr() {
                    tracing::info!("peer {addr} connected");
                }
                Ok(session)
            }
        }
    }
}

/// Runs `attempt` until it succeeds, retrying transient failures with backoff when
/// `--auto-reconnect` is on (the loop is p2p-core's, shared with the GUI). The budget
/// counts consecutive failures: an attempt that got as far as a session resets it.
pub async fn with_reconnect<F, Fut>(
    session: &SessionArgs,
    endpoint: &Endpoint,
    recorder: &Recorder,
    attempt: F,
) -> anyhow::Result<()>
where
    F: FnMut(p2p_core::reconnect::Progress) -> Fut,
    Fut: std::future::Future<Output = p2p_core::Result<()>>,
{
    // A listener has nothing to back off from: the peer dials again when it can, and
    // must find us accepting at once.
    let listening = matches!(endpoint, Endpoint::Server { .. });
    let backoff = if listening {
        let now = std::time::Duration::ZERO;
        p2p_core::reconnect::Backoff::with_delays(session.max_retries, now, now)
    } else {
        p2p_core::reconnect::Backoff::new(session.max_retries)
    };
    let mut reconnect =
        p2p_core::reconnect::Reconnect::with_backoff(session.auto_reconnect, backoff);
    let result = reconnect
        .run(attempt, |retry| {
            let line = if listening {
                format!(
                    "connection problem: {}; waiting for the peer to connect again (attempt {})",
                    retry.error, retry.attempt
                )
            } else {
                format!(
                    "connection problem: {}; reconnecting in {} s (attempt {})",
                    retry.error,
                    retry.delay.as_secs(),
                    retry.attempt
                )
            };
            recorder.renderer().line(&line);
        })
        .await;
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
