//! The transports a session can run on, and the one stream type that hides which.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::quic::QuicStream;
use super::SecureTcp;

/// The transport a connection runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// TLS 1.3 over TCP: the operating system's congestion control.
    Tcp,
    /// QUIC over UDP: TLS 1.3 inside, our own congestion control (BBR).
    Quic,
}

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Transport::Tcp => "TCP",
            Transport::Quic => "QUIC",
        })
    }
}

/// Which transports to try when connecting (and accept when listening).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TransportChoice {
    /// Both; QUIC when both connect, except to this same machine (loopback), where
    /// the kernel's TCP is faster. TCP is what remains where a network blocks UDP.
    #[default]
    Auto,
    /// QUIC only.
    Quic,
    /// TCP only.
    Tcp,
}

impl TransportChoice {
    /// Whether TCP is tried (or accepted).
    pub fn tcp(self) -> bool {
        self != TransportChoice::Quic
    }

    /// Whether QUIC is tried (or accepted).
    pub fn quic(self) -> bool {
        self != TransportChoice::Tcp
    }

    /// The word on the command line and in the settings file.
    pub fn as_str(self) -> &'static str {
        match self {
            TransportChoice::Auto => "auto",
            TransportChoice::Quic => "quic",
            TransportChoice::Tcp => "tcp",
        }
    }
}

impl std::str::FromStr for TransportChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(TransportChoice::Auto),
            "quic" => Ok(TransportChoice::Quic),
            "tcp" => Ok(TransportChoice::Tcp),
            _ => Err(format!(
                "unknown transport {:?}: auto, quic or tcp",
                crate::text::printable(s)
            )),
        }
    }
}

/// A secured stream to a peer, over either transport.
#[derive(Debug)]
pub enum PeerStream {
    Tcp(Box<SecureTcp>),
    Quic(Box<QuicStream>),
}

impl PeerStream {
    /// The transport under this stream.
    pub fn transport(&self) -> Transport {
        match self {
            PeerStream::Tcp(_) => Transport::Tcp,
            PeerStream::Quic(_) => Transport::Quic,
        }
    }
}

impl AsyncRead for PeerStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            PeerStream::Tcp(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            PeerStream::Quic(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for PeerStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            PeerStream::Tcp(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            PeerStream::Quic(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            PeerStream::Tcp(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
            PeerStream::Quic(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            PeerStream::Tcp(s) => s.is_write_vectored(),
            PeerStream::Quic(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            PeerStream::Tcp(s) => Pin::new(s.as_mut()).poll_flush(cx),
            PeerStream::Quic(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            PeerStream::Tcp(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            PeerStream::Quic(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_transport_choice_is_read_as_typed_and_bad_input_is_named() {
        assert_eq!("QUIC".parse::<TransportChoice>(), Ok(TransportChoice::Quic));
        assert_eq!(" tcp ".parse::<TransportChoice>(), Ok(TransportChoice::Tcp));
        assert_eq!("auto".parse::<TransportChoice>(), Ok(TransportChoice::Auto));
        let bad = "udp\x1b[2J".parse::<TransportChoice>().unwrap_err();
        assert!(
            bad.contains("auto, quic or tcp") && !bad.contains('\x1b'),
            "{bad}"
        );
        assert!(TransportChoice::Auto.tcp() && TransportChoice::Auto.quic());
        assert!(!TransportChoice::Quic.tcp() && !TransportChoice::Tcp.quic());
    }
}
