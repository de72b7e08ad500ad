//! `p2p-transfer rendezvous`: the server that pairs two peers by a code's number and
//! passes their sealed candidates (`p2p_core::rendezvous`); optionally hands out
//! per-session credentials for a coturn relay that shares its secret.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use p2p_core::rendezvous::server::{Limits, Server, ServerConfig, TurnSecret};

#[derive(Debug, Args)]
pub struct RendezvousArgs {
    /// Address and port to listen on (TCP for the mailboxes, UDP for STUN, one port).
    #[arg(long, value_name = "ADDR:PORT", default_value = "0.0.0.0:4000")]
    pub listen: SocketAddr,
    /// A TURN server (coturn with `use-auth-secret`) whose credentials this server
    /// hands out, per session; repeat for several.
    #[arg(long, value_name = "HOST:PORT", requires = "turn_secret_file")]
    pub turn: Vec<String>,
    /// File holding the TURN server's `static-auth-secret` (first line).
    #[arg(long, value_name = "PATH", requires = "turn")]
    pub turn_secret_file: Option<PathBuf>,
    /// Most connections one client address may hold open at once.
    #[arg(long, value_name = "N")]
    pub max_per_ip: Option<usize>,
}

pub async fn run(args: RendezvousArgs) -> anyhow::Result<()> {
    let turn = match &args.turn_secret_file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the TURN secret from {}", path.display()))?;
            let secret = text.lines().next().unwrap_or("").trim().to_owned();
            if secret.is_empty() {
                return Err(crate::exit::Usage(format!(
                    "the TURN secret file {} is empty",
                    path.display()
                ))
                .into());
            }
            Some(TurnSecret {
                servers: args.turn.clone(),
                secret,
                lifetime: Duration::from_secs(3600),
            })
        }
        None => None,
    };
    let mut limits = Limits::default();
    if let Some(n) = args.max_per_ip {
        limits.per_ip = n;
    }
    let server = Server::bind(ServerConfig {
        listen: args.listen,
        turn,
        limits,
    })
    .await
    .map_err(|source| p2p_core::Error::Connect {
        action: "listen on",
        addr: args.listen.to_string(),
        source,
    })?;
    eprintln!(
        "rendezvous listening on {} (TCP mailboxes, UDP STUN){}",
        server.local_addr(),
        if args.turn.is_empty() {
            String::new()
        } else {
            format!("; TURN: {}", args.turn.join(", "))
        }
    );
    tokio::select! {
        result = server.run() => result.context("the rendezvous server stopped"),
        _ = tokio::signal::ctrl_c() => Ok(()),
    }
}
