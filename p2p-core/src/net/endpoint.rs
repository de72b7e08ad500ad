//! [`Endpoint`]: where connections come from — a peer to dial, or a listening socket
//! (TCP and UDP on one port number) that stays open across reconnections and may
//! announce itself on the LAN.

use std::net::SocketAddr;
use std::time::Duration;

use futures::StreamExt;
use tokio::net::TcpListener;
use tokio::time::Instant;

use super::quic::{self, QuicListener};
use super::stream::{PeerStream, Transport, TransportChoice};
use super::{tls, Connection, PeerIdentity, Security, SecurityError, SECURE_TIMEOUT};
use crate::discovery::{Announcer, Beacon, DiscoveryConfig, DiscoveryError};
use crate::error::{Error, Result};

/// Connections a listener secures at once; further ones wait in the kernel's backlog.
pub const MAX_PENDING: usize = 16;

/// When TCP has its TLS handshake done first, how long `auto` still waits for QUIC
/// (at least; longer on a slow path: as long again as TCP took). QUIC's handshake is one
/// round trip shorter than TCP's plus TLS, so where UDP passes it is usually first.
pub const QUIC_GRACE: Duration = Duration::from_millis(100);

/// How long [`Endpoint::shut_down`] keeps a listening process alive for its QUIC
/// closes to leave: they are sent at once; this covers a busy machine's scheduling.
pub const CLOSE_FLUSH: Duration = Duration::from_millis(100);

/// A peer to dial, or a listener to accept from.
#[derive(Debug)]
pub enum Endpoint {
    Dial {
        addr: String,
        transport: TransportChoice,
    },
    Listen {
        /// The TCP listener (absent when only QUIC is accepted).
        listener: Option<TcpListener>,
        /// The QUIC listener on the same port number (absent when only TCP is accepted,
        /// or UDP could not be bound).
        quic: Option<QuicListener>,
        announcer: Option<Announcer>,
        /// Connections being secured, kept across calls of [`Endpoint::connect`]: when
        /// one completes, the others go on instead of being dropped.
        pending: Pending,
    },
    /// A peer met through a rendezvous server by a one-time code: punched, or relayed
    /// ([`super::traversal`]).
    Rendezvous(Box<super::traversal::Rendezvous>),
}

type Securing = std::pin::Pin<
    Box<
        dyn std::future::Future<
                Output = (
                    SocketAddr,
                    std::result::Result<(PeerStream, PeerIdentity), SecurityError>,
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
    /// Dials `addr` (`host:port`) for every connection, over TCP or QUIC
    /// ([`TransportChoice::Auto`]).
    pub fn dial(addr: impl Into<String>) -> Self {
        Self::dial_with(addr, TransportChoice::Auto)
    }

    /// Dials `addr` (`host:port`) for every connection over the transports `transport`
    /// allows.
    pub fn dial_with(addr: impl Into<String>, transport: TransportChoice) -> Self {
        Endpoint::Dial {
            addr: addr.into(),
            transport,
        }
    }

    /// Binds a listener on `bind` (`host:port`; port 0 picks one) for TCP and QUIC.
    pub async fn listen(bind: &str) -> Result<Self> {
        Self::listen_with(bind, TransportChoice::Auto).await
    }

    /// Binds a listener on `bind` for the transports `transport` allows: TCP and UDP on
    /// the same port number (with port 0, one free for both). When UDP cannot be bound
    /// beside TCP, `auto` listens on TCP only and says so in the log.
    pub async fn listen_with(bind: &str, transport: TransportChoice) -> Result<Self> {
        let udp_error = |addr: SocketAddr, source| Error::Connect {
            action: "listen (UDP, for QUIC) on",
            addr: addr.to_string(),
            source,
        };
        let (listener, quic) = match transport {
            TransportChoice::Tcp => (Some(super::tcp::listen(bind).await?), None),
            TransportChoice::Quic => {
                let addr = resolve(bind).await?;
                let quic = QuicListener::bind(addr).map_err(|e| udp_error(addr, e))?;
                (None, Some(quic))
            }
            TransportChoice::Auto => {
                // With port 0 the kernel picks TCP's port; UDP's same number is almost
                // always free too, and another pick fixes the rare clash.
                let mut tries = 0;
                loop {
                    let listener = super::tcp::listen(bind).await?;
                    let addr = listener.local_addr().map_err(|e| Error::Connect {
                        action: "listen on",
                        addr: bind.to_owned(),
                        source: e,
                    })?;
                    match QuicListener::bind(addr) {
                        Ok(quic) => break (Some(listener), Some(quic)),
                        Err(e)
                            if e.kind() == std::io::ErrorKind::AddrInUse
                                && resolve(bind).await?.port() == 0
                                && tries < 8 =>
                        {
                            tries += 1;
                        }
                        Err(e) => {
                            tracing::warn!(
                                "QUIC is not available on {addr} ({e}): listening on TCP only"
                            );
                            break (Some(listener), None);
                        }
                    }
                }
            }
        };
        Ok(Endpoint::Listen {
            listener,
            quic,
            announcer: None,
            pending: Pending::default(),
        })
    }

    /// Wraps a bound TCP listener (TCP only).
    pub fn from_listener(listener: TcpListener) -> Self {
        Endpoint::Listen {
            listener: Some(listener),
            quic: None,
            announcer: None,
            pending: Pending::default(),
        }
    }

    /// Before the process exits: gives the connections this listener accepted over
    /// QUIC [`CLOSE_FLUSH`] to send their `CONNECTION_CLOSE` (and the acknowledgement
    /// of the peer's last bytes), which a QUIC close needs the process alive for (TCP's
    /// kernel does it alone). It does not wait out the draining period (three probe
    /// timeouts, most of a second on a long path): nothing the peer sends then matters.
    pub async fn shut_down(&self) {
        if let Endpoint::Listen {
            quic: Some(quic), ..
        } = self
        {
            quic.wait_idle(CLOSE_FLUSH).await;
        }
        if let Endpoint::Rendezvous(rendezvous) = self {
            rendezvous.shut_down().await;
        }
    }

    /// The transports this endpoint dials or accepts.
    pub fn transports(&self) -> Vec<Transport> {
        match self {
            Endpoint::Dial { transport, .. } => {
                let mut all = Vec::new();
                if transport.quic() {
                    all.push(Transport::Quic);
                }
                if transport.tcp() {
                    all.push(Transport::Tcp);
                }
                all
            }
            Endpoint::Listen { listener, quic, .. } => {
                let mut all = Vec::new();
                if quic.is_some() {
                    all.push(Transport::Quic);
                }
                if listener.is_some() {
                    all.push(Transport::Tcp);
                }
                all
            }
            Endpoint::Rendezvous(_) => vec![Transport::Quic],
        }
    }

    /// Starts announcing a listener on the LAN (until the endpoint is dropped). The
    /// beacon's port is the listener's. Does nothing for a dialing endpoint.
    pub fn announce(
        &mut self,
        mut beacon: Beacon,
        config: &DiscoveryConfig,
    ) -> std::result::Result<(), DiscoveryError> {
        if !self.is_listening() {
            return Ok(());
        }
        let local = self
            .local_addr()
            .ok_or_else(|| DiscoveryError::Config("the listener has no address".into()))?;
        beacon.listen_port = local.port();
        if let Endpoint::Listen { announcer, .. } = self {
            *announcer = Some(Announcer::for_listener(beacon, local, config)?);
        }
        Ok(())
    }

    /// The address a listening endpoint is bound to.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        match self {
            Endpoint::Dial { .. } | Endpoint::Rendezvous(_) => None,
            Endpoint::Listen { listener, quic, .. } => match (listener, quic) {
                (Some(listener), _) => listener.local_addr().ok(),
                (None, Some(quic)) => quic.local_addr().ok(),
                (None, None) => None,
            },
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
    pub async fn connect(&self, security: &Security) -> Result<Connection<PeerStream>> {
        match self {
            Endpoint::Dial { addr, transport } => dial(addr, *transport, security).await,
            Endpoint::Listen {
                listener,
                quic,
                pending,
                ..
            } => {
                let mut pending = pending.0.lock().await;
                accept_into(listener.as_ref(), quic.as_ref(), security, &mut pending).await
            }
            Endpoint::Rendezvous(rendezvous) => rendezvous.connect(security).await,
        }
    }
}

/// The first address `addr` (`host:port`) resolves to.
async fn resolve(addr: &str) -> Result<SocketAddr> {
    let err = |source| Error::Connect {
        action: "resolve",
        addr: addr.to_owned(),
        source,
    };
    tokio::net::lookup_host(addr)
        .await
        .map_err(err)?
        .next()
        .ok_or_else(|| err(std::io::ErrorKind::NotFound.into()))
}

/// A connection whose TLS or QUIC handshake is done, waiting for admission.
struct Handshaken {
    stream: PeerStream,
    channel: tls::Channel,
    remote_addr: Option<SocketAddr>,
    until: Instant,
}

async fn handshake_tcp(addr: &str, security: &Security) -> Result<Handshaken> {
    let tcp = super::tcp::connect(addr).await?;
    let remote_addr = tcp.peer_addr().ok();
    let until = Instant::now() + SECURE_TIMEOUT;
    let local = security.identity.fingerprint();
    let (stream, channel) = tls::client_until(tcp, &security.tls, local, until)
        .await
        .map_err(|e| e.at(addr))?;
    Ok(Handshaken {
        stream: PeerStream::Tcp(Box::new(stream)),
        channel,
        remote_addr,
        until,
    })
}

async fn handshake_quic(addr: &str, target: SocketAddr, security: &Security) -> Result<Handshaken> {
    let until = Instant::now() + SECURE_TIMEOUT;
    let (stream, channel) = tokio::time::timeout_at(until, quic::connect(target, security))
        .await
        .unwrap_or(Err(SecurityError::NoQuicAnswer { addr: None }))
        .map_err(|e| e.at(addr))?;
    Ok(Handshaken {
        stream: PeerStream::Quic(Box::new(stream)),
        channel,
        remote_addr: Some(target),
        until,
    })
}

/// Admission on the connection the dialer keeps.
async fn admit(chosen: Handshaken, security: &Security) -> Result<Connection<PeerStream>> {
    let transport = chosen.stream.transport();
    let (stream, peer) =
        super::admit(chosen.stream, &chosen.channel, security, chosen.until).await?;
    Ok(Connection {
        stream,
        peer,
        remote_addr: chosen.remote_addr,
        is_client: true,
        transport,
        path: None,
    })
}

/// Dials `addr` over the transports `choice` allows. With both (`auto`), TCP and QUIC
/// handshakes run at once and admission — which may spend a one-time code — runs on
/// the one kept only: QUIC when it completes first or within [`QUIC_GRACE`] (or as long
/// again as TCP took) after TCP; TCP when QUIC fails or is late. A peer on this very
/// machine (a loopback address) is dialed over TCP only: there the kernel's TCP is
/// faster than QUIC (docs/benchmarks-wan.md). When both fail, TCP's error is the one
/// reported (it says best what answered, or that nothing did).
async fn dial(
    addr: &str,
    choice: TransportChoice,
    security: &Security,
) -> Result<Connection<PeerStream>> {
    let started = Instant::now();
    let target = match choice {
        TransportChoice::Tcp => None,
        TransportChoice::Quic => Some(resolve(addr).await?),
        TransportChoice::Auto => match resolve(addr).await {
            Ok(target) if !target.ip().is_loopback() => Some(target),
            // Loopback, or unresolvable: TCP says best what is wrong.
            _ => None,
        },
    };
    let Some(target) = target else {
        let chosen = handshake_tcp(addr, security).await?;
        return admit(chosen, security).await;
    };
    if choice == TransportChoice::Quic {
        let chosen = handshake_quic(addr, target, security).await?;
        return admit(chosen, security).await;
    }
    let tcp = handshake_tcp(addr, security);
    let quic = handshake_quic(addr, target, security);
    tokio::pin!(tcp, quic);
    let (mut tcp_done, mut quic_failed) = (None::<Result<Handshaken>>, false);
    let mut grace: Option<Instant> = None;
    loop {
        tokio::select! {
            quic_result = &mut quic, if !quic_failed => match quic_result {
                Ok(chosen) => return admit(chosen, security).await,
                Err(e) => {
                    tracing::info!("QUIC to {addr} failed: {e}");
                    quic_failed = true;
                    match tcp_done.take() {
                        Some(Ok(chosen)) => return admit(chosen, security).await,
                        Some(Err(tcp_error)) => return Err(tcp_error),
                        None => {}
                    }
                }
            },
            tcp_result = &mut tcp, if tcp_done.is_none() => {
                match (tcp_result, quic_failed) {
                    (Ok(chosen), true) => return admit(chosen, security).await,
                    (Err(e), true) => return Err(e),
                    (Ok(chosen), false) => {
                        grace = Some(Instant::now() + QUIC_GRACE.max(started.elapsed()));
                        tcp_done = Some(Ok(chosen));
                    }
                    (Err(e), false) => {
                        tracing::info!("TCP to {addr} failed: {e}");
                        tcp_done = Some(Err(e));
                    }
                }
            },
            _ = sleep_until(grace), if grace.is_some() => {
                tracing::info!("QUIC to {addr} was slower than TCP: using TCP");
                if let Some(Ok(chosen)) = tcp_done.take() {
                    return admit(chosen, security).await;
                }
                grace = None;
            },
        }
    }
}

async fn sleep_until(when: Option<Instant>) {
    match when {
        Some(when) => tokio::time::sleep_until(when).await,
        None => std::future::pending().await,
    }
}

/// Accepts on `listener` until one connection is secured and admitted. Connections still
/// being secured when one completes are dropped: a listener that serves several peers
/// should be an [`Endpoint`], which keeps them.
pub async fn accept(listener: &TcpListener, security: &Security) -> Result<Connection<PeerStream>> {
    let mut pending = futures::stream::FuturesUnordered::new();
    accept_into(Some(listener), None, security, &mut pending).await
}

async fn accept_tcp(listener: Option<&TcpListener>) -> Result<(tokio::net::TcpStream, SocketAddr)> {
    match listener {
        Some(listener) => super::tcp::accept(listener).await,
        None => std::future::pending().await,
    }
}

async fn accept_quic(quic: Option<&QuicListener>) -> quinn::Incoming {
    match quic {
        Some(quic) => match quic.accept().await {
            Some(incoming) => incoming,
            // Closed: only when the endpoint goes, which is not while it is used here.
            None => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}

async fn accept_into(
    listener: Option<&TcpListener>,
    quic: Option<&QuicListener>,
    security: &Security,
    pending: &mut futures::stream::FuturesUnordered<Securing>,
) -> Result<Connection<PeerStream>> {
    loop {
        tokio::select! {
            accepted = accept_tcp(listener), if pending.len() < MAX_PENDING => {
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
                pending.push(Box::pin(async move {
                    let secured = super::secure_server(tcp, &security)
                        .await
                        .map(|(stream, peer)| (PeerStream::Tcp(Box::new(stream)), peer));
                    (remote, secured)
                }));
            }
            incoming = accept_quic(quic), if pending.len() < MAX_PENDING => {
                let remote = incoming.remote_address();
                let security = security.clone();
                pending.push(Box::pin(async move {
                    let until = Instant::now() + SECURE_TIMEOUT;
                    let secured = async {
                        let (stream, channel) = tokio::time::timeout_at(until, quic::accept(incoming, &security))
                            .await
                            .unwrap_or(Err(SecurityError::Timeout))?;
                        super::admit(PeerStream::Quic(Box::new(stream)), &channel, &security, until).await
                    };
                    (remote, secured.await)
                }));
            }
            Some((remote, result)) = pending.next(), if !pending.is_empty() => match result {
                Ok((stream, peer)) => {
                    let transport = stream.transport();
                    return Ok(Connection { stream, peer, remote_addr: Some(remote), is_client: false, transport, path: None });
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
