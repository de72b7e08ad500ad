//! Byte streams between peers. Everything above this module takes any
//! `AsyncRead + AsyncWrite` stream ([`Stream`]); [`crate::net`] hands out the secured
//! ones (TLS over TCP today; QUIC streams and relayed streams later), so transports can
//! be added without touching the transfer logic.

pub use crate::net::tcp::{accept, connect, listen, CONNECT_TIMEOUT};

/// A stream a session can run on.
pub trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Stream for T {}
