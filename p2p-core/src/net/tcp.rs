//! TCP: dialing and listening, with timeouts and `TCP_NODELAY`.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

use crate::error::{Error, Result};

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
