//! TCP: dialing and listening, with timeouts and `TCP_NODELAY`.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

use crate::error::{Error, Result};

/// The port p2p-transfer listens on unless told otherwise.
pub const DEFAULT_PORT: u16 = 14567;

/// `addr` as `host:port`, with [`DEFAULT_PORT`] when it names no port: `192.168.1.20`,
/// `laptop.local`, `::1` and `[::1]` get it; `host:port` and `[v6]:port` are kept.
pub fn with_default_port(addr: &str) -> String {
    let addr = addr.trim();
    if addr.parse::<std::net::SocketAddr>().is_ok() {
        return addr.to_owned();
    }
    if let Ok(v6) = addr.parse::<std::net::Ipv6Addr>() {
        return format!("[{v6}]:{DEFAULT_PORT}");
    }
    if addr.starts_with('[') && addr.ends_with(']') {
        return format!("{addr}:{DEFAULT_PORT}");
    }
    match addr.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => addr.to_owned(),
        _ => format!("{addr}:{DEFAULT_PORT}"),
    }
}

/// How long a TCP connect may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Connects to `addr` (`host:port`), with a timeout and `TCP_NODELAY`.
pub async fn connect(addr: &str) -> Result<TcpStream> {
    let err = |source| Error::Connect {
        action: "connect to",
        addr: addr.to_owned(),
        source,
    };
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| err(std::io::ErrorKind::TimedOut.into()))?
        .map_err(err)?;
    stream.set_nodelay(true).map_err(err)?;
    Ok(stream)
}

/// Binds a listener on `addr` (`0.0.0.0:14567`, `127.0.0.1:0`, …).
pub async fn listen(addr: &str) -> Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Connect {
            action: "listen on",
            addr: addr.to_owned(),
            source,
        })
}

/// Accepts one connection, with `TCP_NODELAY`.
pub async fn accept(listener: &TcpListener) -> Result<(TcpStream, SocketAddr)> {
    let err = |source| Error::Connect {
        action: "accept on",
        addr: listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default(),
        source,
    };
    let (stream, peer) = listener.accept().await.map_err(err)?;
    stream.set_nodelay(true).map_err(err)?;
    Ok((stream, peer))
}

/// This machine's addresses, one per interface, for a person to give a peer: the ones
/// a peer can reach first (IPv4 before IPv6), loopback last; link-local IPv6 left out
/// (it needs a scope a person cannot type). Blocking: it asks the OS.
pub fn local_addresses() -> Vec<std::net::IpAddr> {
    use std::net::IpAddr;
    let found = if_addrs::get_if_addrs().unwrap_or_default();
    let mut addresses: Vec<IpAddr> = found
        .iter()
        .map(|i| i.ip())
        .filter(|ip| !matches!(ip, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80))
        .collect();
    addresses.sort_by_key(|ip| (ip.is_loopback(), ip.is_ipv6()));
    addresses.dedup();
    addresses
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_without_a_port_gets_the_default_one() {
        assert_eq!(with_default_port("192.168.1.20"), "192.168.1.20:14567");
        assert_eq!(with_default_port(" laptop.local "), "laptop.local:14567");
        assert_eq!(with_default_port("::1"), "[::1]:14567");
        assert_eq!(with_default_port("[fe80::1]"), "[fe80::1]:14567");
        assert_eq!(with_default_port("192.168.1.20:9000"), "192.168.1.20:9000");
        assert_eq!(with_default_port("laptop.local:9000"), "laptop.local:9000");
        assert_eq!(with_default_port("[::1]:9000"), "[::1]:9000");
    }
}
