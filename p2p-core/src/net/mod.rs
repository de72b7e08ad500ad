//! The connectivity layer: everything that hands out connections to peers.
//!
//! `net` listens and dials ([`Endpoint`]), secures every connection with TLS 1.3
//! ([`tls`]), decides who may connect ([`admission`]: one-time [`code`]s through
//! SPAKE2, [`trust`]ed devices, pinned ids), and returns a [`Connection`]: a byte
//! stream plus the peer's verified [`PeerIdentity`]. What the bytes mean is the
//! session's business (`crate::session`), which runs on any stream.
//!
//! ```text
//! TCP connect/accept ─▶ TLS 1.3 (mutual, ALPN p2p-transfer/2) ─┐
//!                                                             ├─▶ admission ─▶ Connection
//! QUIC connect/accept (TLS 1.3 inside, same ALPN) ─▶ stream ──┘
//! ```
//!
//! The two transports ([`Transport`]) carry the same admission and the same session
//! bytes; [`Endpoint`] listens on both (one port number, TCP and UDP) and dials the one
//! the caller chooses ([`TransportChoice`], both by default). There is no plaintext
//! mode and no fallback to one. Hole punching and relays (later) plug in here and hand
//! out the same `Connection`.

pub mod admission;
pub mod code;
pub mod congestion;
pub mod endpoint;
pub mod ice;
pub mod identity;
pub mod mux;
pub mod portmap;
pub mod quic;
pub mod stream;
pub mod tcp;
pub mod tls;
pub mod traversal;
pub mod trust;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub use admission::{Admission, Admitted, PeerIdentity};
pub use code::{Code, CodeError};
pub use endpoint::Endpoint;
pub use identity::{DeviceId, DeviceIdError, Fingerprint, Identity, IdentityError};
pub use quic::QuicStream;
pub use stream::{PeerStream, Transport, TransportChoice};
pub use tls::{TlsConfigs, TlsStream};
pub use trust::{TrustError, TrustStore, TrustedDevice};

/// How long TLS and admission together may take on one connection.
pub const SECURE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a connection could not be secured, or the peer was not let in.
#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    /// The other end does not speak TLS with this protocol's ALPN.
    #[error("not a p2p-transfer peer, or an old version: {0}")]
    NotAPeer(String),
    /// The dialed address answered with something that is not TLS at all: another
    /// program listens there (judged by the first bytes it sent).
    #[error("{} answered, but not as p2p-transfer: {what}", Shown(addr))]
    Stranger {
        /// The address dialed, when known.
        addr: Option<String>,
        /// What it seems to be.
        what: Stranger,
    },
    /// The dialed address accepted the connection and then sent nothing for
    /// [`SECURE_TIMEOUT`].
    #[error(
        "{} accepted the connection but did not answer within {} s: is p2p-transfer \
         listening there?",
        Shown(addr),
        SECURE_TIMEOUT.as_secs()
    )]
    Silent {
        /// The address dialed, when known.
        addr: Option<String>,
    },
    /// The dialed address closed the connection without sending a byte.
    #[error(
        "{} closed the connection without answering: is p2p-transfer listening there?",
        Shown(addr)
    )]
    HungUp {
        /// The address dialed, when known.
        addr: Option<String>,
    },
    /// Nothing answered over QUIC: no listener on the UDP port, or UDP blocked on the way.
    #[error(
        "{} did not answer over QUIC (UDP) within {} s: is p2p-transfer listening there, or \
         does the network block UDP? (--transport tcp uses TCP only)",
        Shown(addr),
        SECURE_TIMEOUT.as_secs()
    )]
    NoQuicAnswer {
        /// The address dialed, when known.
        addr: Option<String>,
    },
    /// The TLS layer failed (a tampered record, a refused handshake, …).
    #[error("secure connection failed: {0}")]
    Tls(String),
    /// The network failed during TLS or admission.
    #[error("connection error while securing the connection: {0}")]
    Io(#[source] std::io::Error),
    /// The peer closed the connection before admission ended (it refused us, or went).
    #[error("the peer closed the connection while checking who it is")]
    Closed,
    /// Both sides used a code and they differ — or someone in the middle.
    #[error(
        "wrong code: the peer does not know the same code (a typo, a code from another \
         transfer, or someone in between). Nothing was sent. The code is burnt: start \
         again for a new one"
    )]
    WrongCode,
    /// A failed attempt burnt this side's code.
    #[error("the code was burnt by a failed attempt: start again for a new code")]
    CodeBurnt,
    /// The code was used by a successful session already.
    #[error(
        "this code was used already: a code works for one transfer; start again for a new one"
    )]
    CodeUsed,
    /// One side has a code, the other none.
    #[error("{}", if *here {
        "the peer connected with a code, but none was given here: use the code the peer printed (--code)"
    } else {
        "no one-time code came with the connection: give the code printed on the other \
         device (--code CODE), or pair the devices once (--remember)"
    })]
    CodeMissing { here: bool },
    /// Nobody vouches for the peer's key.
    #[error(
        "refused unknown device {0}: pair with a one-time code first (if the other side \
         printed one, give it here with --code; `p2p-transfer send PATH` prints one, \
         `p2p-transfer receive CODE` uses it; add --remember to skip codes next time), trust \
         it with `p2p-transfer trust add {0}`, or receive with --ask"
    )]
    UnknownDevice(DeviceId),
    /// The peer's key is not the pinned (or announced) one.
    #[error("the peer is device {proven}, not the expected {expected}: refused")]
    NotPinned {
        expected: DeviceId,
        proven: DeviceId,
    },
    /// The peer refused us, with its reason (shown escaped).
    #[error("the peer refused the connection: {0}")]
    RefusedByPeer(String),
    /// The peer broke the admission protocol.
    #[error("admission failed: {0}")]
    Protocol(String),
    /// TLS and admission took longer than [`SECURE_TIMEOUT`].
    #[error("the peer did not complete the secure handshake within {} s", SECURE_TIMEOUT.as_secs())]
    Timeout,
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error(transparent)]
    Trust(#[from] TrustError),
}

impl SecurityError {
    /// Whether trying again can help (a network problem), as opposed to a refusal.
    pub fn is_transient(&self) -> bool {
        match self {
            SecurityError::Io(e) => !matches!(
                e.kind(),
                std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::InvalidInput
            ),
            SecurityError::Closed
            | SecurityError::Timeout
            | SecurityError::Silent { .. }
            | SecurityError::NoQuicAnswer { .. }
            | SecurityError::HungUp { .. } => true,
            _ => false,
        }
    }

    /// The same error naming the address dialed (`host:port` as the user gave it), for
    /// the errors that are about what answered there.
    pub fn at(mut self, dialed: &str) -> Self {
        if let SecurityError::Stranger { addr, .. }
        | SecurityError::Silent { addr }
        | SecurityError::NoQuicAnswer { addr }
        | SecurityError::HungUp { addr } = &mut self
        {
            *addr = Some(dialed.to_owned());
        }
        self
    }
}

/// What answered at a dialed address instead of p2p-transfer, judged by the first bytes
/// it sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stranger {
    /// It answered `HTTP/…`: a web server.
    Http,
    /// It greeted with `SSH-…`: an SSH server.
    Ssh,
    /// It sent a plaintext p2p-transfer frame: an older version, from before every
    /// connection was TLS (with the version it names, if it did).
    OldVersion(Option<u32>),
    /// Something else: the start of what it sent, escaped for a terminal.
    Other(String),
}

impl Stranger {
    /// Judges the first bytes a peer sent, which are not a TLS record.
    pub fn from_first_bytes(first: &[u8]) -> Self {
        if first.starts_with(b"HTTP/") {
            return Stranger::Http;
        }
        if first.starts_with(b"SSH-") {
            return Stranger::Ssh;
        }
        if let Some(header) = first.first_chunk::<{ crate::wire::FRAME_HEADER_LEN }>() {
            let len = u32::from_be_bytes(*header) as usize;
            let payload = first
                .get(crate::wire::FRAME_HEADER_LEN..)
                .and_then(|rest| rest.get(..len));
            match payload.map(crate::wire::decode_payload) {
                Some(Ok(crate::wire::Message::Error { version, .. })) => {
                    return Stranger::OldVersion(Some(version))
                }
                Some(Ok(_)) => return Stranger::OldVersion(None),
                _ => {}
            }
        }
        // The text it starts with, up to the end of the line or the first byte that is
        // not printable ASCII (a banner, a greeting), if there is enough to read.
        let text = first
            .iter()
            .take_while(|b| (0x20..0x7f).contains(*b))
            .count();
        let line = &first[..text.min(40)];
        if line.len() >= 3 {
            // Printable ASCII only: nothing to escape.
            Stranger::Other(format!("\"{}\"", String::from_utf8_lossy(line)))
        } else {
            let hex: Vec<String> = first.iter().take(8).map(|b| format!("{b:02x}")).collect();
            Stranger::Other(format!("bytes {}", hex.join(" ")))
        }
    }
}

impl std::fmt::Display for Stranger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stranger::Http => f.write_str("it looks like an HTTP server"),
            Stranger::Ssh => f.write_str("it looks like an SSH server"),
            Stranger::OldVersion(version) => {
                f.write_str("it speaks the unencrypted protocol of an older p2p-transfer")?;
                if let Some(version) = version {
                    write!(f, " (version {version})")?;
                }
                f.write_str(": update p2p-transfer there")
            }
            Stranger::Other(start) => write!(f, "it sent {start} instead of a TLS handshake"),
        }
    }
}

/// An address in a message, or "the peer" when it is not known.
struct Shown<'a>(&'a Option<String>);

impl std::fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(addr) => f.write_str(&crate::text::printable(addr)),
            None => f.write_str("the peer"),
        }
    }
}

/// Who this side is and whom it lets in: what every connection is secured with.
/// Clones share the identity and the admission state (a used or burnt code).
#[derive(Debug, Clone)]
pub struct Security {
    pub identity: Arc<Identity>,
    pub admission: Admission,
    tls: TlsConfigs,
}

impl Security {
    /// Connections secured with `identity`, letting in whom `admission` allows.
    pub fn new(identity: Arc<Identity>, admission: Admission) -> Result<Self, SecurityError> {
        let tls = TlsConfigs::new(&identity)?;
        Ok(Security {
            identity,
            admission,
            tls,
        })
    }

    /// A fresh in-memory identity that lets nobody in yet.
    pub fn ephemeral() -> Self {
        Self::new(Identity::generate_shared(), Admission::default())
            // Building a TLS configuration for a key generated here cannot fail.
            .expect("TLS configuration for a generated key")
    }

    /// The same identity with other admission rules.
    pub fn with_admission(&self, admission: Admission) -> Self {
        Security {
            identity: self.identity.clone(),
            admission,
            tls: self.tls.clone(),
        }
    }

    /// This device's id.
    pub fn device_id(&self) -> DeviceId {
        self.identity.device_id()
    }
}

impl Default for Security {
    /// This process's in-memory identity (one key for the whole process, made on first
    /// use) with fresh admission rules that let nobody in but the process itself: two
    /// sessions of one program can talk, anybody else needs a code, a trust entry or a
    /// pin.
    fn default() -> Self {
        static PROCESS: std::sync::OnceLock<Security> = std::sync::OnceLock::new();
        PROCESS
            .get_or_init(Self::ephemeral)
            .with_admission(Admission::default())
    }
}

/// An authenticated connection: the stream a session runs on, and who is at the other
/// end.
#[derive(Debug)]
pub struct Connection<S> {
    pub stream: S,
    pub peer: PeerIdentity,
    /// The peer's address, when the transport has one.
    pub remote_addr: Option<SocketAddr>,
    /// Whether this side opened the connection (TLS client, session initiator).
    pub is_client: bool,
    /// What the connection runs on.
    pub transport: Transport,
    /// The path (lan, direct, relay) and its changes, for connections made through a
    /// rendezvous ([`traversal`]); `None` for a dialed or accepted address.
    pub path: Option<tokio::sync::watch::Receiver<ice::Path>>,
}

/// A TLS-secured TCP connection.
pub type SecureTcp = TlsStream<tokio::net::TcpStream>;

/// Secures an opened stream as the connecting side: TLS client, then admission. When
/// what answered is not p2p-transfer (another program, silence, a hang-up), the error
/// says so ([`SecurityError::Stranger`], [`Silent`](SecurityError::Silent),
/// [`HungUp`](SecurityError::HungUp)); [`SecurityError::at`] adds the address.
pub async fn secure_client<S>(
    stream: S,
    security: &Security,
) -> Result<(TlsStream<S>, PeerIdentity), SecurityError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let until = tokio::time::Instant::now() + SECURE_TIMEOUT;
    let local = security.identity.fingerprint();
    secure(
        tls::client_until(stream, &security.tls, local, until),
        security,
        until,
    )
    .await
}

/// Secures an accepted TCP connection as the listening side; a plaintext client is told
/// to update and refused.
pub async fn secure_server(
    stream: tokio::net::TcpStream,
    security: &Security,
) -> Result<(SecureTcp, PeerIdentity), SecurityError> {
    let until = tokio::time::Instant::now() + SECURE_TIMEOUT;
    let local = security.identity.fingerprint();
    let handshake = deadline(until, tls::server(stream, &security.tls, local));
    secure(handshake, security, until).await
}

/// Secures any accepted stream as the listening side (no plaintext check).
pub async fn secure_server_stream<S>(
    stream: S,
    security: &Security,
) -> Result<(TlsStream<S>, PeerIdentity), SecurityError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let until = tokio::time::Instant::now() + SECURE_TIMEOUT;
    let local = security.identity.fingerprint();
    let handshake = deadline(until, tls::server_tls(stream, &security.tls, local));
    secure(handshake, security, until).await
}

/// Runs a TLS handshake (which keeps the deadline `until` itself), then admission,
/// together within [`SECURE_TIMEOUT`].
async fn secure<S>(
    handshake: impl std::future::Future<Output = Result<(TlsStream<S>, tls::Channel), SecurityError>>,
    security: &Security,
    until: tokio::time::Instant,
) -> Result<(TlsStream<S>, PeerIdentity), SecurityError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (tls, channel) = handshake.await?;
    admit(tls, &channel, security, until).await
}

/// Admission on a stream whose handshake (TLS over TCP, or QUIC) proved `channel`,
/// until `until` at the latest.
async fn admit<S>(
    mut stream: S,
    channel: &tls::Channel,
    security: &Security,
    until: tokio::time::Instant,
) -> Result<(S, PeerIdentity), SecurityError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let peer = deadline(
        until,
        admission::admit(&mut stream, channel, &security.admission),
    )
    .await?;
    Ok((stream, peer))
}

async fn deadline<T>(
    until: tokio::time::Instant,
    work: impl std::future::Future<Output = Result<T, SecurityError>>,
) -> Result<T, SecurityError> {
    tokio::time::timeout_at(until, work)
        .await
        .unwrap_or(Err(SecurityError::Timeout))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_answered_is_judged_by_its_first_bytes() {
        let judged = |bytes: &[u8]| Stranger::from_first_bytes(bytes).to_string();
        assert_eq!(
            judged(b"HTTP/1.1 400 Bad Request\r\n"),
            "it looks like an HTTP server"
        );
        assert_eq!(
            judged(b"SSH-2.0-OpenSSH_9.6\r\n"),
            "it looks like an SSH server"
        );
        assert_eq!(
            judged(b"220 mail ESMTP\x1b[2J\r\n"),
            "it sent \"220 mail ESMTP\" instead of a TLS handshake"
        );
        let old = crate::wire::Message::Error {
            code: crate::wire::ErrorCode::Protocol,
            message: "expected a Hello".into(),
            version: 1,
        };
        let mut frame = bytes::BytesMut::new();
        crate::wire::encode_frame(&old, &mut frame).unwrap();
        assert_eq!(
            judged(&frame),
            "it speaks the unencrypted protocol of an older p2p-transfer (version 1): update \
             p2p-transfer there"
        );
        assert_eq!(
            judged(&[0, 0, 0, 9, 0xff, 0x1b, 1, 2, 3, 4]),
            "it sent bytes 00 00 00 09 ff 1b 01 02 instead of a TLS handshake"
        );
    }

    #[test]
    fn the_address_dialed_is_named_in_what_answered_there() {
        let stranger = SecurityError::Stranger {
            addr: None,
            what: Stranger::Http,
        };
        assert_eq!(
            stranger.to_string(),
            "the peer answered, but not as p2p-transfer: it looks like an HTTP server"
        );
        assert_eq!(
            stranger.at("10.0.0.5:14567").to_string(),
            "10.0.0.5:14567 answered, but not as p2p-transfer: it looks like an HTTP server"
        );
        let hung_up = SecurityError::HungUp { addr: None }.at("laptop.local:14567");
        assert!(hung_up
            .to_string()
            .starts_with("laptop.local:14567 closed the connection"));
        assert!(hung_up.is_transient());
        // Other errors are about the peer, not the address: unchanged.
        assert!(matches!(
            SecurityError::WrongCode.at("10.0.0.5:14567"),
            SecurityError::WrongCode
        ));
    }
}
