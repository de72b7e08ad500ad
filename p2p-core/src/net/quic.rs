//! QUIC (RFC 9000) with quinn: the same device certificates, TLS 1.3 configuration, ALPN
//! and admission as the TCP path, over UDP, with a congestion controller of our choosing
//! instead of the operating system's TCP.
//!
//! One QUIC connection carries one session on one bidirectional stream, which the
//! connecting side opens; its first bytes are the admission `Intro` (admission has both
//! sides write before they read, so the listener learns of the stream from that very
//! message). What the stream carries is byte for byte what a TLS stream carries over
//! TCP (docs/protocol.md §0.2).
//!
//! Closing: a QUIC connection that is closed drops whatever is not yet acknowledged,
//! where a TCP close delivers it. [`QuicStream`] therefore finishes its send side and
//! waits (boundedly) for the peer to acknowledge everything before the connection is
//! closed — on `shutdown`, and in the background when it is dropped. A side whose peer
//! has finished already (it read the end of the stream) closes at once: the peer is
//! waiting for exactly that, and a listener that exits right after flushes the close
//! with [`QuicListener::wait_idle`].

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::identity::Fingerprint;
use super::tls::{Channel, EXPORTER_LABEL};
use super::{Security, SecurityError};

/// Flow control per stream: the bytes a sender may have in flight unread. Sized for
/// the paths the issue names (100 Mbit/s × 150 ms is 1.9 MB, 1 Gbit/s × 50 ms 6.25 MB)
/// with room for BBR's probing above the bandwidth-delay product.
pub const STREAM_WINDOW: u32 = 12 << 20;
/// Flow control per connection (one stream is used; a little headroom for the others).
pub const CONNECTION_WINDOW: u32 = 16 << 20;
/// Unacknowledged bytes a sender keeps for retransmission.
pub const SEND_WINDOW: u64 = 16 << 20;
/// A connection that hears nothing from the peer this long is gone. Keep-alives keep a
/// quiet but living connection open (a person deciding on an offer).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// How often an otherwise quiet connection proves it is alive.
pub const KEEP_ALIVE: Duration = Duration::from_secs(5);
/// Kernel buffers asked for the UDP socket (the kernel caps them at
/// `net.core.rmem_max` / `wmem_max`): a burst that overflows the receive buffer is loss.
pub const SOCKET_BUFFER: usize = 8 << 20;
/// How long a closing stream waits for the peer to acknowledge the last bytes.
pub const CLOSE_LINGER: Duration = Duration::from_secs(5);
/// The server name the client asks for; not sent (SNI is off), not checked.
const SERVER_NAME: &str = "p2p-transfer";

/// Which congestion controller QUIC connections use: ours by default (see
/// [`super::congestion`]); quinn's BBR, Cubic and NewReno are there to measure against
/// (`P2P_QUIC_CONGESTION=bbr`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Congestion {
    /// Ours ([`super::congestion::SteadyBbr`]): BBR's model, random loss ignored.
    Steady,
    /// quinn's BBR (an experimental BBRv1).
    Bbr,
    Cubic,
    NewReno,
}

impl Congestion {
    /// From `P2P_QUIC_CONGESTION` (`steady`, `bbr`, `cubic`, `newreno`); ours
    /// (`steady`) when unset or unknown.
    pub fn from_env() -> Self {
        match std::env::var("P2P_QUIC_CONGESTION").as_deref() {
            Ok("bbr") => Congestion::Bbr,
            Ok("cubic") => Congestion::Cubic,
            Ok("newreno") => Congestion::NewReno,
            _ => Congestion::Steady,
        }
    }
}

/// The transport parameters of every connection.
pub fn transport_config(congestion: Congestion) -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.stream_receive_window(STREAM_WINDOW.into())
        .receive_window(CONNECTION_WINDOW.into())
        .send_window(SEND_WINDOW)
        .max_concurrent_uni_streams(0u8.into())
        .max_concurrent_bidi_streams(4u8.into())
        .keep_alive_interval(Some(KEEP_ALIVE));
    // 30 s fits a QUIC varint in milliseconds: the conversion cannot fail.
    if let Ok(idle) = quinn::IdleTimeout::try_from(IDLE_TIMEOUT) {
        t.max_idle_timeout(Some(idle));
    }
    match congestion {
        Congestion::Steady => {
            t.congestion_controller_factory(Arc::new(super::congestion::SteadyBbrConfig))
        }
        Congestion::Bbr => {
            t.congestion_controller_factory(Arc::new(quinn::congestion::BbrConfig::default()))
        }
        Congestion::Cubic => {
            t.congestion_controller_factory(Arc::new(quinn::congestion::CubicConfig::default()))
        }
        Congestion::NewReno => {
            t.congestion_controller_factory(Arc::new(quinn::congestion::NewRenoConfig::default()))
        }
    };
    Arc::new(t)
}

pub(crate) fn server_config(security: &Security) -> Result<quinn::ServerConfig, SecurityError> {
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(security.tls.server.clone())
        .map_err(|e| SecurityError::Tls(e.to_string()))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(transport_config(Congestion::from_env()));
    // Validate clients' addresses only when many connections arrive at once (quinn's
    // default): a handshake costs the listener no more than a TCP+TLS one.
    Ok(config)
}

fn client_config(security: &Security) -> Result<quinn::ClientConfig, SecurityError> {
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(security.tls.client.clone())
        .map_err(|e| SecurityError::Tls(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(transport_config(Congestion::from_env()));
    Ok(config)
}

/// A UDP socket with large kernel buffers, bound to `addr`.
pub(crate) fn udp_socket(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        // Like the TCP listener: `[::]` takes IPv4 too where the system allows it.
        let _ = socket.set_only_v6(false);
    }
    // Best effort: the kernel's limit applies, and a smaller buffer only costs speed.
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER);
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

fn endpoint_on(
    socket: std::net::UdpSocket,
    server: Option<quinn::ServerConfig>,
) -> io::Result<quinn::Endpoint> {
    quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        server,
        socket,
        Arc::new(quinn::TokioRuntime),
    )
}

/// A QUIC listener: a UDP socket (on the TCP listener's port) that accepts connections
/// for whichever identity the caller secures them with.
///
/// quinn refuses a connection at once when its endpoint has no server configuration,
/// where a TCP listener's kernel keeps it in the backlog until it is accepted: a peer
/// that found the listener by its beacon could be refused before the program got to
/// accepting. The endpoint therefore has a configuration from the start (this
/// process's in-memory identity, never used for a handshake), so that attempts wait
/// in quinn's queue like TCP's; each is then accepted with the identity of the caller
/// of [`accept`].
#[derive(Debug)]
pub struct QuicListener {
    endpoint: quinn::Endpoint,
}

impl QuicListener {
    /// Binds a UDP socket on `addr`; connection attempts queue until accepted.
    pub fn bind(addr: SocketAddr) -> io::Result<Self> {
        let queueing = server_config(&Security::default()).map_err(io::Error::other)?;
        Ok(QuicListener {
            endpoint: endpoint_on(udp_socket(addr)?, Some(queueing))?,
        })
    }

    /// The next connection attempt (`None` once the endpoint is closed).
    pub async fn accept(&self) -> Option<quinn::Incoming> {
        self.endpoint.accept().await
    }

    /// The UDP address this listener is bound to.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// Waits (at most `limit`) until every connection of this listener is closed and
    /// its `CONNECTION_CLOSE` sent: what a process does before it exits, so that its
    /// peers learn at once that it went.
    pub async fn wait_idle(&self, limit: Duration) {
        let _ = tokio::time::timeout(limit, self.endpoint.wait_idle()).await;
    }
}

/// Turns a failed QUIC handshake into what the user should hear.
fn handshake_error(e: quinn::ConnectionError) -> SecurityError {
    use quinn::ConnectionError as E;
    match e {
        E::TimedOut => SecurityError::NoQuicAnswer { addr: None },
        E::TransportError(t) if u64::from(t.code) == 0x100 + 120 => SecurityError::NotAPeer(
            "the peer speaks QUIC but not this protocol version (ALPN)".into(),
        ),
        E::TransportError(t) => SecurityError::Tls(format!("QUIC handshake failed: {t}")),
        E::ConnectionClosed(c) if (0x100..0x200).contains(&u64::from(c.error_code)) => {
            SecurityError::Tls(format!("the peer refused the QUIC handshake ({c})"))
        }
        E::ConnectionClosed(_) | E::ApplicationClosed(_) | E::Reset | E::LocallyClosed => {
            SecurityError::Closed
        }
        E::VersionMismatch => SecurityError::NotAPeer("no common QUIC version".into()),
        E::CidsExhausted => SecurityError::Tls("QUIC connection ids exhausted".into()),
    }
}

/// What the handshake proved, from a finished QUIC connection.
fn channel(
    connection: &quinn::Connection,
    local: Fingerprint,
    is_client: bool,
) -> Result<Channel, SecurityError> {
    let peer = connection
        .peer_identity()
        .and_then(|any| {
            any.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
                .ok()
        })
        .and_then(|certs| certs.first().and_then(Fingerprint::of_certificate))
        .ok_or_else(|| SecurityError::Tls("the peer presented no usable certificate".into()))?;
    let mut exporter = [0u8; 32];
    connection
        .export_keying_material(&mut exporter, EXPORTER_LABEL, b"")
        .map_err(|_| SecurityError::Tls("no TLS exporter on the QUIC connection".into()))?;
    Ok(Channel {
        peer,
        local,
        exporter,
        is_client,
    })
}

/// Dials `addr` over QUIC from a fresh UDP socket and opens the session's stream.
pub async fn connect(
    addr: SocketAddr,
    security: &Security,
) -> Result<(QuicStream, Channel), SecurityError> {
    let bind: SocketAddr = if addr.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let endpoint = udp_socket(bind)
        .and_then(|socket| endpoint_on(socket, None))
        .map_err(SecurityError::Io)?;
    let connecting = endpoint
        .connect_with(client_config(security)?, addr, SERVER_NAME)
        .map_err(|e| SecurityError::Tls(format!("cannot dial {addr} over QUIC: {e}")))?;
    let connection = connecting.await.map_err(handshake_error)?;
    let channel = channel(&connection, security.identity.fingerprint(), true)?;
    let (send, recv) = connection
        .open_bi()
        .await
        .map_err(|_| SecurityError::Closed)?;
    Ok((
        QuicStream::new(send, recv, connection, Some(endpoint)),
        channel,
    ))
}

/// Dials `addr` over QUIC from an existing endpoint (the rendezvous' mux socket) and
/// opens the session's stream.
pub(crate) async fn connect_on(
    endpoint: &quinn::Endpoint,
    addr: SocketAddr,
    security: &Security,
) -> Result<(QuicStream, Channel), SecurityError> {
    let connecting = endpoint
        .connect_with(client_config(security)?, addr, SERVER_NAME)
        .map_err(|e| SecurityError::Tls(format!("cannot dial {addr} over QUIC: {e}")))?;
    let connection = connecting.await.map_err(handshake_error)?;
    let channel = channel(&connection, security.identity.fingerprint(), true)?;
    let (send, recv) = connection
        .open_bi()
        .await
        .map_err(|_| SecurityError::Closed)?;
    Ok((
        QuicStream::new(send, recv, connection, Some(endpoint.clone())),
        channel,
    ))
}

/// Completes an incoming QUIC connection as the listening side and takes the stream the
/// client opens.
pub async fn accept(
    incoming: quinn::Incoming,
    security: &Security,
) -> Result<(QuicStream, Channel), SecurityError> {
    let connection = incoming
        .accept_with(Arc::new(server_config(security)?))
        .map_err(handshake_error)?
        .await
        .map_err(handshake_error)?;
    let channel = channel(&connection, security.identity.fingerprint(), false)?;
    let (send, recv) = connection
        .accept_bi()
        .await
        .map_err(|_| SecurityError::Closed)?;
    Ok((QuicStream::new(send, recv, connection, None), channel))
}

type Closing = Pin<Box<dyn Future<Output = ()> + Send + Sync>>;

/// One bidirectional QUIC stream as a byte stream, owning its connection (and, on the
/// connecting side, the UDP endpoint it was dialed from).
pub struct QuicStream {
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    connection: quinn::Connection,
    endpoint: Option<quinn::Endpoint>,
    /// Set by `poll_shutdown`: waits until the peer has acknowledged everything sent.
    closing: Option<Closing>,
    closed: bool,
    /// The peer finished its side (a read returned the end of the stream).
    peer_finished: bool,
}

impl std::fmt::Debug for QuicStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuicStream")
            .field("remote", &self.connection.remote_address())
            .finish_non_exhaustive()
    }
}

impl QuicStream {
    fn new(
        send: quinn::SendStream,
        recv: quinn::RecvStream,
        connection: quinn::Connection,
        endpoint: Option<quinn::Endpoint>,
    ) -> Self {
        QuicStream {
            send,
            recv,
            connection,
            endpoint,
            closing: None,
            closed: false,
            peer_finished: false,
        }
    }

    /// The peer's UDP address.
    pub fn remote_addr(&self) -> SocketAddr {
        self.connection.remote_address()
    }

    /// The connection's statistics (round-trip time, congestion window, loss).
    pub fn stats(&self) -> quinn::ConnectionStats {
        self.connection.stats()
    }

    /// Finishes the send side and closes the connection once the peer has
    /// acknowledged everything (at most [`CLOSE_LINGER`]); at once when the peer has
    /// finished already.
    fn close(&mut self) -> Closing {
        // Finishing twice, or after the peer stopped the stream, is not an error here.
        let _ = self.send.finish();
        let stopped = (!self.peer_finished).then(|| self.send.stopped());
        let connection = self.connection.clone();
        Box::pin(async move {
            if let Some(stopped) = stopped {
                let _ = tokio::time::timeout(CLOSE_LINGER, stopped).await;
            }
            connection.close(0u32.into(), b"done");
        })
    }
}

impl AsyncRead for QuicStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let read = AsyncRead::poll_read(Pin::new(&mut this.recv), cx, buf);
        if matches!(read, Poll::Ready(Ok(())))
            && buf.filled().len() == before
            && buf.remaining() > 0
        {
            this.peer_finished = true;
        }
        read
    }
}

impl AsyncWrite for QuicStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        AsyncWrite::poll_write(Pin::new(&mut self.get_mut().send), cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        AsyncWrite::poll_flush(Pin::new(&mut self.get_mut().send), cx)
    }

    /// Finishes the send side and returns once the peer has acknowledged all of it (or
    /// after [`CLOSE_LINGER`]), like a TCP close whose data is delivered.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.closed {
            return Poll::Ready(Ok(()));
        }
        if this.closing.is_none() {
            this.closing = Some(this.close());
        }
        match this.closing.as_mut().map(|c| c.as_mut().poll(cx)) {
            Some(Poll::Pending) => Poll::Pending,
            _ => {
                this.closed = true;
                Poll::Ready(Ok(()))
            }
        }
    }
}

impl Drop for QuicStream {
    /// Closes the connection once the peer has what was sent: at once when the stream
    /// was shut down or the peer finished, else in the background (when a runtime is
    /// there to run it).
    fn drop(&mut self) {
        let endpoint = self.endpoint.take();
        let close = (!self.closed).then(|| self.close());
        let connection = self.connection.clone();
        let close = async move {
            if let Some(close) = close {
                close.await;
            }
            connection.close(0u32.into(), b"done");
            if let Some(endpoint) = endpoint {
                // Lets the CONNECTION_CLOSE leave before the socket goes.
                let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(close);
            }
            Err(_) => self.connection.close(0u32.into(), b"done"),
        }
    }
}
