//! quinn 0.11 and noq side by side: one QUIC connection, one bidirectional stream, N bytes
//! from the client to the server, the same TLS 1.3 (rustls, aws-lc-rs) and the same flow
//! control windows, with each crate's congestion controllers. Run the server in one
//! network namespace of the WAN emulator (tests/wan) and the client in the other, so both
//! crates cross exactly the same link; docs/architecture.md keeps the figures.
//!
//! ```text
//! quic-compare server --listen 0.0.0.0:4433
//! quic-compare client --connect 10.201.0.2:4433 --crate noq --cc bbr --bytes 200M
//! ```
//!
//! The client prints one JSON line: crate, controller, bytes, seconds, MiB/s, lost
//! packets, congestion events. The server answers every stream with the byte count it
//! received (u64, big endian), so the time ends when the last byte has arrived.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Accept connections of both crates (one port each: PORT for quinn, PORT+1 for noq).
    Server {
        #[arg(long, default_value = "0.0.0.0:4433")]
        listen: SocketAddr,
        /// Congestion controller of the server side (it only sends the reply).
        #[arg(long, default_value = "cubic")]
        cc: String,
    },
    /// Send --bytes over one stream and time it.
    Client {
        /// The server's quinn port (noq: the port after it).
        #[arg(long)]
        connect: SocketAddr,
        /// quinn or noq.
        #[arg(long = "crate")]
        krate: String,
        /// bbr, cubic or newreno (bbr is quinn's BBRv1, noq's BBRv3).
        #[arg(long, default_value = "bbr")]
        cc: String,
        /// Bytes to send: 200M, 1G, …
        #[arg(long, default_value = "200M")]
        bytes: String,
        /// Give up after this many seconds (reports what arrived by then).
        #[arg(long, default_value_t = 300)]
        timeout: u64,
    },
}

/// Flow control: enough for 1 Gbit/s × 64 ms per stream, twice that per connection.
const STREAM_WINDOW: u32 = 8 << 20;
const CONNECTION_WINDOW: u32 = 16 << 20;
const BLOCK: usize = 1 << 20;

fn parse_bytes(text: &str) -> Result<u64> {
    let text = text.trim();
    let (digits, unit) =
        text.split_at(text.find(|c: char| c.is_alphabetic()).unwrap_or(text.len()));
    let n: u64 = digits.parse().context("not a byte count")?;
    let scale = match unit.to_ascii_uppercase().as_str() {
        "" => 1,
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        other => bail!("unknown unit {other}"),
    };
    Ok(n * scale)
}

fn certificate() -> Result<(
    rustls::pki_types::CertificateDer<'static>,
    rustls::pki_types::PrivateKeyDer<'static>,
)> {
    let key = rcgen::KeyPair::generate()?;
    let cert = rcgen::CertificateParams::new(vec!["bench".into()])?.self_signed(&key)?;
    Ok((
        cert.der().clone(),
        rustls::pki_types::PrivatePkcs8KeyDer::from(key.serialize_der()).into(),
    ))
}

#[derive(Debug)]
struct AnyCert(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("TLS 1.3 only".into()))
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn rustls_server() -> Result<rustls::ServerConfig> {
    let (cert, key) = certificate()?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)?;
    config.alpn_protocols = vec![b"quic-compare".to_vec()];
    Ok(config)
}

fn rustls_client() -> Result<rustls::ClientConfig> {
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert(provider())))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"quic-compare".to_vec()];
    Ok(config)
}

/// The same benchmark for two crates with (nearly) the same API.
macro_rules! bench_for {
    ($name:ident, $q:ident, $bbr:ty, $lost:expr, $events:expr) => {
        mod $name {
            use super::*;
            use $q as q;

            fn transport(cc: &str) -> Result<Arc<q::TransportConfig>> {
                let mut t = q::TransportConfig::default();
                t.stream_receive_window(STREAM_WINDOW.into());
                t.receive_window(CONNECTION_WINDOW.into());
                t.send_window(u64::from(CONNECTION_WINDOW));
                t.max_idle_timeout(Some(Duration::from_secs(30).try_into()?));
                match cc {
                    "bbr" => t.congestion_controller_factory(Arc::new(<$bbr>::default())),
                    "cubic" => t.congestion_controller_factory(Arc::new(q::congestion::CubicConfig::default())),
                    "newreno" => t.congestion_controller_factory(Arc::new(q::congestion::NewRenoConfig::default())),
                    other => bail!("unknown controller {other}"),
                };
                Ok(Arc::new(t))
            }

            pub async fn serve(addr: SocketAddr, cc: String) -> Result<()> {
                let crypto = q::crypto::rustls::QuicServerConfig::try_from(rustls_server()?)?;
                let mut config = q::ServerConfig::with_crypto(Arc::new(crypto));
                config.transport_config(transport(&cc)?);
                let endpoint = q::Endpoint::server(config, addr)?;
                eprintln!("{} listening on {}", stringify!($q), endpoint.local_addr()?);
                while let Some(incoming) = endpoint.accept().await {
                    tokio::spawn(async move {
                        let result: Result<()> = async {
                            let conn = incoming.await?;
                            while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                                let mut total = 0u64;
                                let mut buf = vec![0u8; BLOCK];
                                while let Some(n) = recv.read(&mut buf).await? {
                                    total += n as u64;
                                }
                                send.write_all(&total.to_be_bytes()).await?;
                                send.finish()?;
                                let _ = send.stopped().await;
                            }
                            Ok(())
                        }
                        .await;
                        if let Err(e) = result {
                            eprintln!("connection: {e:#}");
                        }
                    });
                }
                Ok(())
            }

            pub async fn send(addr: SocketAddr, cc: &str, bytes: u64, limit: Duration) -> Result<()> {
                let crypto = q::crypto::rustls::QuicClientConfig::try_from(rustls_client()?)?;
                let mut config = q::ClientConfig::new(Arc::new(crypto));
                config.transport_config(transport(cc)?);
                let bind: SocketAddr = if addr.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse()?;
                let mut endpoint = q::Endpoint::client(bind)?;
                endpoint.set_default_client_config(config);
                let conn = endpoint.connect(addr, "bench")?.await?;
                let started = Instant::now();
                let (mut send, mut recv) = conn.open_bi().await?;
                let block = vec![0x5au8; BLOCK];
                let work = async {
                    let mut left = bytes;
                    while left > 0 {
                        let n = left.min(BLOCK as u64) as usize;
                        send.write_all(&block[..n]).await?;
                        left -= n as u64;
                    }
                    send.finish()?;
                    let mut reply = [0u8; 8];
                    recv.read_exact(&mut reply).await?;
                    anyhow::Ok(u64::from_be_bytes(reply))
                };
                let outcome = tokio::time::timeout(limit, work).await;
                let seconds = started.elapsed().as_secs_f64();
                let stats = conn.stats();
                let (received, done) = match outcome {
                    Ok(Ok(n)) => (n, true),
                    Ok(Err(e)) => return Err(e),
                    Err(_) => (0, false),
                };
                let lost: u64 = $lost(&stats);
                let events: u64 = $events(&stats);
                println!(
                    "{{\"crate\":\"{}\",\"cc\":\"{}\",\"bytes\":{},\"received\":{},\"done\":{},\"seconds\":{:.3},\"mib_per_s\":{:.2},\"lost_packets\":{},\"congestion_events\":{}}}",
                    stringify!($q), cc, bytes, received, done, seconds,
                    received as f64 / (1024.0 * 1024.0) / seconds, lost, events
                );
                conn.close(0u32.into(), b"done");
                endpoint.wait_idle().await;
                Ok(())
            }
        }
    };
}

bench_for!(
    with_quinn,
    quinn,
    quinn::congestion::BbrConfig,
    |s: &quinn::ConnectionStats| s.path.lost_packets,
    |s: &quinn::ConnectionStats| s.path.congestion_events
);
bench_for!(
    with_noq,
    noq,
    noq::congestion::Bbr3Config,
    |s: &noq::ConnectionStats| s.lost_packets,
    |_s: &noq::ConnectionStats| 0
);

#[tokio::main]
async fn main() -> Result<()> {
    match Args::parse().command {
        Command::Server { listen, cc } => {
            let mut noq_addr = listen;
            noq_addr.set_port(listen.port() + 1);
            tokio::try_join!(
                with_quinn::serve(listen, cc.clone()),
                with_noq::serve(noq_addr, cc)
            )?;
        }
        Command::Client {
            connect,
            krate,
            cc,
            bytes,
            timeout,
        } => {
            let bytes = parse_bytes(&bytes)?;
            let limit = Duration::from_secs(timeout);
            match krate.as_str() {
                "quinn" => with_quinn::send(connect, &cc, bytes, limit).await?,
                "noq" => {
                    let mut addr = connect;
                    addr.set_port(connect.port() + 1);
                    with_noq::send(addr, &cc, bytes, limit).await?
                }
                other => bail!("unknown crate {other} (quinn or noq)"),
            }
        }
    }
    Ok(())
}
