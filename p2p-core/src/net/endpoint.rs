//! [`Endpoint`]: where connections come from — a peer to dial, or a listening socket
//! that stays open across reconnections and may announce itself on the LAN.

use std::net::SocketAddr;

use futures::StreamExt;
use tokio::net::TcpListener;

use super::{secure_client, secure_server, Connection, SecureTcp, Security, SecurityError};
use crate::discovery::{Announcer, Beacon, DiscoveryConfig, DiscoveryError};
use crate::error::{Error, Result};

/// Connections a listener secures at once; further ones wait in the kernel's backlog.
pub const MAX_PENDING: usize = 16;

/// A peer to dial, or a listener to accept from.
#[derive(Debug)]
pub enum Endpoint {
    Dial {
        addr: String,
    },
    Listen {
        listener: TcpListener,
        announcer: Option<Announcer>,
        /// Connections being secured, kept across calls of [`Endpoint::connect`]: when
        /// one completes, the others go on instead of being dropped.
        pending: Pending,
    },
}

type Securing = std::pin::Pin<
    Box<
        dyn std::future::Future<
                Output = (
                    SocketAddr,
                    std::result::Result<(SecureTcp, super::PeerIdentity), SecurityError>,
                ),
            > + Send,
    >,
>;

/// The connections a listener is securing.
#[derive(Default)]
pub struct Pending(tokio::sync::Mutex<futures::stream::FuturesUnordered<Securing>>);

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pending")
    }
}

impl Endpoint {
    /// Dials `addr` (`host:port`) for every connection.
    pub fn dial(addr: impl Into<String>) -> Self {
        Endpoint::Dial { addr: addr.into() }
    }

    /// Binds a listener on `bind` (`host:port`; port 0 picks one).
    pub async fn listen(bind: &str) -> Result<Self> {
        Ok(Endpoint::Listen {
            listener: super::tcp::listen(bind).await?,
            announcer: None,
            pending: Pending::default(),
        })
    }

    /// Wraps a bound listener.
    pub fn from_listener(listener: TcpListener) -> Self {
        Endpoint::Listen {
            listener,
            announcer: None,
            pending: Pending::default(),
        }
    }

    /// Starts announcing a listener on the LAN (until the endpoint is dropped). The
    /// beacon's port is the listener's. Does nothing for a dialing endpoint.
    pub fn announce(
        &mut self,
        mut beacon: Beacon,
        config: &DiscoveryConfig,
    ) -> std::result::Result<(), DiscoveryError> {
        if let Endpoint::Listen {
            listener,
            announcer,
            ..
        } = self
        {
            let local = listener
                .local_addr()
                .map_err(|e| DiscoveryError::Config(e.to_string()))?;
            beacon.listen_port = local.port();
            *announcer = Some(Announcer::for_listener(beacon, local, config)?);
        }
        Ok(())
    }

    /// The address a listening endpoint is bound to.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        match self {
            Endpoint::Dial { .. } => None,
            Endpoint::Listen { listener, .. } => listener.local_addr().ok(),
        }
    }

    /// Whether this endpoint waits for peers.
    pub fn is_listening(&self) -> bool {
        matches!(self, Endpoint::Listen { .. })
    }

    /// Dials, or accepts, one peer and secures the connection.
    ///
    /// A listener faces strangers: connections are secured concurrently (at most
    /// [`MAX_PENDING`] at once, each within [`super::SECURE_TIMEOUT`]), and one that
    /// fails — a port scan, an HTTP request, an old plaintext peer, an unknown device —
    /// is logged and dropped without ending the listener. A wrong code ends it: the code
    /// is burnt, and the person must start again.
    pub async fn connect(&self, security: &Security) -> Result<Connection<SecureTcp>> {
        match self {
            Endpoint::Dial { addr } => {
                let tcp = super::tcp::connect(addr).await?;
                let remote_addr = tcp.peer_addr().ok();
                let (stream, peer) = secure_client(tcp, security).await.map_err(|e| e.at(addr))?;
                Ok(Connection {
                    stream,
                    peer,
                    remote_addr,
                    is_client: true,
                })
            }
            Endpoint::Listen {
                listener, pending, ..
            } => {
                let mut pending = pending.0.lock().await;
                accept_into(listener, security, &mut pending).await
            }
        }
    }
}

/// Accepts on `listener` until one connection is secured and admitted. Connections still
/// being secured when one completes are dropped: a listener that serves several peers
/// should be an [`Endpoint`], which keeps them.
pub async fn accept(listener: &TcpListener, security: &Security) -> Result<Connection<SecureTcp>> {
    let mut pending = futures::stream::FuturesUnordered::new();
    accept_into(listener, security, &mut pending).await
}

async fn accept_into(
    listener: &TcpListener,
    security: &Security,
    pending: &mut futures::stream::FuturesUnordered<Securing>,
) -> Result<Connection<SecureTcp>> {
    loop {
        tokio::select! {
            accepted = super::tcp::accept(listener), if pending.len() < MAX_PENDING => {
                let (tcp, remote) = match accepted {
                    Ok(a) => a,
                    // A connection that died between SYN and accept is its own problem.
                    Err(Error::Connect { source, .. })
                        if matches!(
                            source.kind(),
                            std::io::ErrorKind::ConnectionAborted
                                | std::io::ErrorKind::ConnectionReset
                                | std::io::ErrorKind::InvalidInput
                        ) => continue,
                    Err(e) => return Err(e),
                };
                let security = security.clone();
                pending.push(Box::pin(async move { (remote, secure_server(tcp, &security).await) }));
            }
            Some((remote, result)) = pending.next(), if !pending.is_empty() => match result {
                Ok((stream, peer)) => {
                    return Ok(Connection { stream, peer, remote_addr: Some(remote), is_client: false });
                }
                Err(e @ (SecurityError::WrongCode | SecurityError::CodeBurnt)) => {
                    return Err(e.into());
                }
                Err(e @ SecurityError::NotAPeer(_)) => tracing::warn!("{remote}: {e}"),
                Err(e) => tracing::info!("dropped a connection from {remote}: {e}"),
            },
        }
    }
}
