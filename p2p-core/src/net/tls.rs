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
//! and the connection is closed.

use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

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

/// Runs the client side of the TLS handshake on `stream`.
pub async fn client<S>(
    stream: S,
    configs: &TlsConfigs,
    local: Fingerprint,
) -> Result<(TlsStream<S>, Channel), SecurityError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let connector = tokio_rustls::TlsConnector::from(configs.client.clone());
    let name = ServerName::try_from(SERVER_NAME).map_err(|e| SecurityError::Tls(e.to_string()))?;
    let tls = connector
        .connect(name, stream)
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
/// not a TLS handshake record gets the version-1 refusal frame and the connection ends.
pub async fn server(
    mut stream: tokio::net::TcpStream,
    configs: &TlsConfigs,
    local: Fingerprint,
) -> Result<(TlsStream<tokio::net::TcpStream>, Channel), SecurityError> {
    let mut first = [0u8; 1];
    let n = stream.peek(&mut first).await.map_err(SecurityError::Io)?;
    if n == 0 {
        return Err(SecurityError::NotAPeer(
            "the connection was closed before the TLS handshake".into(),
        ));
    }
    if first[0] != TLS_HANDSHAKE_RECORD {
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            stream.write_all(&plaintext_refusal()).await?;
            stream.shutdown().await
        })
        .await;
        return Err(SecurityError::NotAPeer(
            "it sent no TLS handshake: an older p2p-transfer (which got told to update) or \
             another program"
                .into(),
        ));
    }
    server_tls(stream, configs, local).await
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
