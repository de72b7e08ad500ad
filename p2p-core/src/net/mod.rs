//! The connectivity layer: everything that hands out connections to peers.
//!
//! `net` listens and dials ([`Endpoint`]), secures every connection with TLS 1.3
//! ([`tls`]), decides who may connect ([`admission`]: one-time [`code`]s through
//! SPAKE2, [`trust`]ed devices, pinned ids), and returns a [`Connection`]: a byte
//! stream plus the peer's verified [`PeerIdentity`]. What the bytes mean is the
//! session's business (`crate::session`), which runs on any stream.
//!
//! ```text
//! TCP connect/accept ─▶ TLS 1.3 (mutual, ALPN p2p-transfer/2) ─▶ admission ─▶ Connection
//! ```
//!
//! There is no plaintext mode and no fallback to one. QUIC, hole punching and relays
//! (later) plug in here and hand out the same `Connection`.

pub mod admission;
pub mod code;
pub mod endpoint;
pub mod identity;
pub mod tcp;
pub mod tls;
pub mod trust;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub use admission::{Admission, Admitted, PeerIdentity};
pub use code::{Code, CodeError};
pub use endpoint::Endpoint;
pub use identity::{DeviceId, DeviceIdError, Fingerprint, Identity, IdentityError};
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
            SecurityError::Closed | SecurityError::Timeout => true,
            _ => false,
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
}

/// A TLS-secured TCP connection.
pub type SecureTcp = TlsStream<tokio::net::TcpStream>;

/// Secures an opened stream as the connecting side: TLS client, then admission.
pub async fn secure_client<S>(
    stream: S,
    security: &Security,
) -> Result<(TlsStream<S>, PeerIdentity), SecurityError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let local = security.identity.fingerprint();
    secure(tls::client(stream, &security.tls, local), security).await
}

/// Secures an accepted TCP connection as the listening side; a plaintext client is told
/// to update and refused.
pub async fn secure_server(
    stream: tokio::net::TcpStream,
    security: &Security,
) -> Result<(SecureTcp, PeerIdentity), SecurityError> {
    let local = security.identity.fingerprint();
    secure(tls::server(stream, &security.tls, local), security).await
}

/// Secures any accepted stream as the listening side (no plaintext check).
pub async fn secure_server_stream<S>(
    stream: S,
    security: &Security,
) -> Result<(TlsStream<S>, PeerIdentity), SecurityError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let local = security.identity.fingerprint();
    secure(tls::server_tls(stream, &security.tls, local), security).await
}

/// Runs a TLS handshake, then admission, within [`SECURE_TIMEOUT`] together.
async fn secure<S>(
    handshake: impl std::future::Future<Output = Result<(TlsStream<S>, tls::Channel), SecurityError>>,
    security: &Security,
) -> Result<(TlsStream<S>, PeerIdentity), SecurityError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    deadline(async {
        let (mut tls, channel) = handshake.await?;
        let peer = admission::admit(&mut tls, &channel, &security.admission).await?;
        Ok((tls, peer))
    })
    .await
}

async fn deadline<T>(
    work: impl std::future::Future<Output = Result<T, SecurityError>>,
) -> Result<T, SecurityError> {
    tokio::time::timeout(SECURE_TIMEOUT, work)
        .await
        .unwrap_or(Err(SecurityError::Timeout))
}
