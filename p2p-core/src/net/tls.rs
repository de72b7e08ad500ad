//! TLS 1.3 on every connection (rustls, aws-lc-rs provider): both sides present their device
//! certificate, ALPN names the protocol version, and what comes out is a stream plus
//! the facts the admission step needs — the peer's key [`Fingerprint`] and an exporter
//! value that binds the code's key confirmation to this very TLS session.
//!
//! Certificates are self-signed and verified for what they prove, nothing more: the
//! peer's `CertificateVerify` signature is checked against the key in its certificate
//! (so the peer holds that key), and the key's fingerprint is handed up. Whether that
//! key is welcome is [`super::admission`]'s decision, made before a byte of the session
//! moves. Names, dates and issuers in the certificate are ignored; SNI is not sent;
//! session resumption is off (every connection proves its key afresh).
//!
//! A client that does not start with a TLS record (an older, plaintext p2p-transfer,
//! or anything else) is answered with one frame of the version-1 protocol,
//! `Error { VersionMismatch, version: 2 }`, so an old peer tells its user to update,
//! and the connection is closed; an HTTP client gets an HTTP 400 that says what the
//! port is. The other way round, a client keeps the first bytes the server sends
//! during the handshake: when they are not TLS, the error says what answered instead
//! ("it looks like an HTTP server").

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

use super::identity::{Fingerprint, Identity};
use super::SecurityError;

/// The ALPN protocol id: the session protocol this build speaks over TLS.
pub const ALPN: &[u8] = b"p2p-transfer/2";
/// Label of the TLS exporter (RFC 8446 §7.5) bound into the code's key confirmation.
pub const EXPORTER_LABEL: &[u8] = b"EXPORTER-p2p-transfer-admission";
/// The server name the client asks for; not sent (SNI off), not checked.
const SERVER_NAME: &str = "p2p-transfer";
/// The first byte of every TLS record carrying a handshake message.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// TLS configurations for one identity, built once and shared by every connection.
#[derive(Debug, Clone)]
pub struct TlsConfigs {
    pub client: Arc<rustls::ClientConfig>,
    pub server: Arc<rustls::ServerConfig>,
}

/// The aws-lc-rs provider: X25519MLKEM768 (post-quantum hybrid) key exchange first,
/// X25519 and the NIST curves after it (see docs/architecture.md for the choice).
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

impl TlsConfigs {
    /// Client and server configurations presenting `identity`.
    pub fn new(identity: &Identity) -> Result<Self, SecurityError> {
        let tls = |e: rustls::Error| SecurityError::Tls(e.to_string());
        let provider = provider();
        let verifier = Arc::new(PeerKeyVerifier(provider.clone()));

        let mut client = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls)?
            .dangerous()
            .with_custom_certificate_verifier(verifier.clone())
            .with_client_auth_cert(vec![identity.certificate()], identity.private_key())
            .map_err(tls)?;
        client.alpn_protocols = vec![ALPN.to_vec()];
        client.enable_sni = false;
        client.resumption = rustls::client::Resumption::disabled();

        let mut server = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(vec![identity.certificate()], identity.private_key())
            .map_err(tls)?;
        server.alpn_protocols = vec![ALPN.to_vec()];
        server.send_tls13_tickets = 0;
        server.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});

        Ok(TlsConfigs {
            client: Arc::new(client),
            server: Arc::new(server),
        })
    }
}

/// Accepts any well-formed certificate whose key signed the handshake; the key's
/// fingerprint is judged after the handshake.
#[derive(Debug)]
struct PeerKeyVerifier(Arc<CryptoProvider>);

impl PeerKeyVerifier {
    fn parse(cert: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        Fingerprint::of_certificate(cert)
            .map(|_| ())
            .ok_or(rustls::Error::InvalidCertificate(
                rustls::CertificateError::BadEncoding,
            ))
    }
}

impl ServerCertVerifier for PeerKeyVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Self::parse(end_entity).map(|()| ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls13RequiredForQuic,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

impl ClientCertVerifier for PeerKeyVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Self::parse(end_entity).map(|()| ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        ServerCertVerifier::verify_tls12_signature(self, message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        ServerCertVerifier::verify_tls13_signature(self, message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// What the TLS handshake established, for the admission step.
#[derive(Debug, Clone)]
pub struct Channel {
    /// The key the peer proved it holds.
    pub peer: Fingerprint,
    /// Our own key.
    pub local: Fingerprint,
    /// 32 bytes of the TLS exporter ([`EXPORTER_LABEL`], no context): equal on both
    /// ends of one TLS session, different on the two legs of a man in the middle.
    pub exporter: [u8; 32],
    /// Whether this side is the TLS client.
    pub is_client: bool,
}

/// The TLS stream a session runs on.
pub type TlsStream<S> = tokio_rustls::TlsStream<S>;

fn channel(
    common: &rustls::CommonState,
    export: impl FnOnce(&mut [u8; 32]) -> Result<(), rustls::Error>,
    local: Fingerprint,
    is_client: bool,
) -> Result<Channel, SecurityError> {
    if common.alpn_protocol() != Some(ALPN) {
        return Err(SecurityError::NotAPeer(
            "the peer speaks TLS but not this protocol version (ALPN)".into(),
        ));
    }
    let peer = common
        .peer_certificates()
        .and_then(|certs| certs.first())
        .and_then(Fingerprint::of_certificate)
        .ok_or_else(|| SecurityError::Tls("the peer presented no usable certificate".into()))?;
    let mut exporter = [0u8; 32];
    export(&mut exporter).map_err(|e| SecurityError::Tls(e.to_string()))?;
    Ok(Channel {
        peer,
        local,
        exporter,
        is_client,
    })
}

/// Turns an I/O error of a TLS handshake into what the user should hear.
fn handshake_error(e: std::io::Error) -> SecurityError {
    match e.kind() {
        std::io::ErrorKind::InvalidData => {
            let detail = e.to_string();
            if detail.contains("NoApplicationProtocol") || detail.contains("no_application") {
                SecurityError::NotAPeer(
                    "the peer speaks TLS but not this protocol version (ALPN)".into(),
                )
            } else if detail.contains("AlertReceived") {
                SecurityError::Tls(format!("the peer refused the TLS handshake ({detail})"))
            } else {
                SecurityError::NotAPeer(format!("no TLS handshake ({detail})"))
            }
        }
        std::io::ErrorKind::UnexpectedEof => {
            SecurityError::NotAPeer("the connection was closed during the TLS handshake".into())
        }
        _ => SecurityError::Io(e),
    }
}

/// Runs the client side of the TLS handshake on `stream`, within [`super::SECURE_TIMEOUT`].
pub async fn client<S>(
    stream: S,
    configs: &TlsConfigs,
    local: Fingerprint,
) -> Result<(TlsStream<S>, Channel), SecurityError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let until = tokio::time::Instant::now() + super::SECURE_TIMEOUT;
    client_until(stream, configs, local, until).await
}

/// Runs the client side of the TLS handshake on `stream`, until `until` at the latest.
///
/// The server speaks first after our ClientHello, so its first bytes tell what it is:
/// the handshake reads through a [`Tap`] that keeps a copy of them. When they are not a
/// TLS record, the error is [`SecurityError::Stranger`] (an HTTP or SSH server, or what
/// it sent); a peer that sends nothing until the deadline is
/// [`SecurityError::Silent`], one that hangs up without a byte
/// [`SecurityError::HungUp`]. Once the handshake is done the tap is gone: the
/// connection continues on the bare stream.
pub(super) async fn client_until<S>(
    stream: S,
    configs: &TlsConfigs,
    local: Fingerprint,
    until: tokio::time::Instant,
) -> Result<(TlsStream<S>, Channel), SecurityError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let connector = tokio_rustls::TlsConnector::from(configs.client.clone());
    let name = ServerName::try_from(SERVER_NAME).map_err(|e| SecurityError::Tls(e.to_string()))?;
    let tap = Tap::new(stream);
    let first = tap.first.clone();
    let handshake = tokio::time::timeout_at(until, connector.connect(name.clone(), tap)).await;
    let first_bytes = || first.lock().map(|b| b.clone()).unwrap_or_default();
    let tapped = match handshake {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => return Err(client_handshake_error(e, &first_bytes())),
        Err(_elapsed) if first_bytes().is_empty() => {
            return Err(SecurityError::Silent { addr: None })
        }
        Err(_elapsed) => return Err(SecurityError::Timeout),
    };
    // Hand the finished connection to a TLS stream over the bare stream: the fresh
    // connection `connect_with` makes is replaced before it sends anything, and the
    // future only flushes what the finished one still has to write.
    let (tap, finished) = tapped.into_inner();
    let tls = connector
        .connect_with(name, tap.inner, move |fresh| *fresh = finished)
        .await
        .map_err(handshake_error)?;
    let (_, conn) = tls.get_ref();
    let channel = channel(
        conn,
        |out| {
            conn.export_keying_material(out, EXPORTER_LABEL, None)
                .map(|_| ())
        },
        local,
        true,
    )?;
    Ok((tls.into(), channel))
}

/// Runs the server side of the TLS handshake on `stream`. A client whose first byte is
/// not a TLS handshake record is refused and the connection ends: an HTTP client (a
/// browser, curl) gets an HTTP answer saying what this port is, anything else the
/// version-1 refusal frame (so an old p2p-transfer tells its user to update).
pub async fn server(
    mut stream: tokio::net::TcpStream,
    configs: &TlsConfigs,
    local: Fingerprint,
) -> Result<(TlsStream<tokio::net::TcpStream>, Channel), SecurityError> {
    let mut first = [0u8; 8];
    let n = stream.peek(&mut first).await.map_err(SecurityError::Io)?;
    if n == 0 {
        return Err(SecurityError::NotAPeer(
            "the connection was closed before the TLS handshake".into(),
        ));
    }
    if first[0] != TLS_HANDSHAKE_RECORD {
        let http = looks_like_http_request(&first[..n]);
        let refusal = if http {
            HTTP_REFUSAL.to_vec()
        } else {
            plaintext_refusal()
        };
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            stream.write_all(&refusal).await?;
            stream.shutdown().await
        })
        .await;
        return Err(SecurityError::NotAPeer(if http {
            "it sent an HTTP request (a web browser or another HTTP client), not a TLS \
             handshake"
                .into()
        } else {
            "it sent no TLS handshake: an older p2p-transfer (which got told to update) or \
             another program"
                .into()
        }));
    }
    server_tls(stream, configs, local).await
}

/// What an HTTP client that knocks on a listening port is told.
const HTTP_REFUSAL: &[u8] = b"HTTP/1.0 400 Bad Request\r\n\
Content-Type: text/plain; charset=utf-8\r\n\
Connection: close\r\n\
\r\n\
This port belongs to p2p-transfer, which speaks TLS 1.3 only; it is not a web server.\n";

/// Whether a client's first bytes start an HTTP/1 request line (`GET /`, `POST /`, …).
fn looks_like_http_request(first: &[u8]) -> bool {
    const METHODS: [&[u8]; 9] = [
        b"GET ",
        b"HEAD ",
        b"POST ",
        b"PUT ",
        b"DELETE ",
        b"OPTIONS ",
        b"PATCH ",
        b"CONNECT ",
        b"TRACE ",
    ];
    METHODS
        .iter()
        .any(|m| first.starts_with(m) || (first.len() < m.len() && m.starts_with(first)))
}

/// Turns a failed client handshake into what the user should hear, judging the server
/// by `first`, the first bytes it sent (possibly none).
fn client_handshake_error(e: std::io::Error, first: &[u8]) -> SecurityError {
    use std::io::ErrorKind;
    match first.first() {
        // Not a TLS record (change_cipher_spec, alert, handshake, application_data):
        // another program answered.
        Some(&byte) if !(0x14..=0x17).contains(&byte) => SecurityError::Stranger {
            addr: None,
            what: super::Stranger::from_first_bytes(first),
        },
        None if matches!(
            e.kind(),
            ErrorKind::UnexpectedEof
                | ErrorKind::ConnectionReset
                | ErrorKind::ConnectionAborted
                | ErrorKind::BrokenPipe
                | ErrorKind::NotConnected
        ) =>
        {
            SecurityError::HungUp { addr: None }
        }
        _ => handshake_error(e),
    }
}

/// A stream that keeps a copy of the first [`Tap::KEEP`] bytes read through it (shared,
/// so they can be looked at after the handshake future is gone).
struct Tap<S> {
    inner: S,
    first: Arc<std::sync::Mutex<Vec<u8>>>,
}

impl<S> Tap<S> {
    /// Enough for a banner, or a whole refusal frame of the plaintext protocol.
    const KEEP: usize = 512;

    fn new(inner: S) -> Self {
        Tap {
            inner,
            first: Arc::default(),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Tap<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        std::task::ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        let read = &buf.filled()[before..];
        if !read.is_empty() {
            if let Ok(mut first) = this.first.lock() {
                let room = Self::KEEP.saturating_sub(first.len());
                first.extend_from_slice(&read[..read.len().min(room)]);
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tap<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The server side of the TLS handshake on any stream (no plaintext check).
pub async fn server_tls<S>(
    stream: S,
    configs: &TlsConfigs,
    local: Fingerprint,
) -> Result<(TlsStream<S>, Channel), SecurityError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let acceptor = tokio_rustls::TlsAcceptor::from(configs.server.clone());
    let tls = acceptor.accept(stream).await.map_err(handshake_error)?;
    let (_, conn) = tls.get_ref();
    let channel = channel(
        conn,
        |out| {
            conn.export_keying_material(out, EXPORTER_LABEL, None)
                .map(|_| ())
        },
        local,
        false,
    )?;
    Ok((tls.into(), channel))
}

/// The version-1 frame that tells a plaintext peer of the old protocol to update:
/// `Error { code: VersionMismatch, message, version: PROTOCOL_VERSION }`.
pub fn plaintext_refusal() -> Vec<u8> {
    let message = crate::wire::Message::Error {
        code: crate::wire::ErrorCode::VersionMismatch,
        message: "this peer only speaks TLS (p2p-transfer/2): update p2p-transfer".into(),
        version: crate::wire::PROTOCOL_VERSION,
    };
    let mut out = bytes::BytesMut::new();
    // Encoding a short, fixed message cannot exceed the frame limit.
    let _ = crate::wire::encode_frame(&message, &mut out);
    out.to_vec()
}
