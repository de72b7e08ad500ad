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
        ..SessionOptions::default()
    };
    if let Some(name) = &session.name {
        options.device_name = name.clone();
    }
    Ok(options)
}

/// Connects (client role) or listens and accepts one peer (server role), announcing
/// itself on the LAN while it waits when `announce` is set.
pub async fn establish(
    role: crate::RoleArg,
    session: &SessionArgs,
    options: &SessionOptions,
    announce: bool,
) -> anyhow::Result<p2p_core::P2PSession<tokio::net::TcpStream>> {
    use anyhow::Context;
    match role {
        crate::RoleArg::Client => {
            let peer = session
                .peer
                .as_deref()
                .context("--peer HOST:PORT is required to connect")?;
            tracing::info!("connecting to {peer}");
            Ok(p2p_core::P2PSession::connect(peer, options).await?)
        }
        crate::RoleArg::Server => {
            let bind = format!("{}:{}", session.bind, session.port);
            let listener = p2p_core::transport::listen(&bind).await?;
            let local = listener.local_addr()?;
            eprintln!("listening on {local}");
            let _announcer = announce.then(|| peers::announce(options, local));
            let session = p2p_core::P2PSession::accept(&listener, options).await?;
            if let Some(addr) = session.peer_addr() {
                tracing::info!("peer {addr} connected");
            }
            Ok(session)
        }
    }
}
