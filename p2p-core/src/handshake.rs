//! Establishing a session: `Hello`/`HelloAck`, then `Config`/`ConfigAck`.
//!
//! ```text
//! initiator                          responder
//!   Hello {magic, version, id, caps} ─▶
//!                                    ◀─ HelloAck {…}     (or Error{VersionMismatch})
//!   Config {proposal}                ─▶
//!                                    ◀─ ConfigAck {agreed}
//! ```
//!
//! The agreed capabilities are the intersection of both `Hello`s. A version mismatch is
//! detected by the responder, which answers with `Error { code: VersionMismatch,
//! version }` — `Hello`, `HelloAck` and `Error` keep their layout across versions — so
//! both sides report both version numbers.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::codec::Framed;
use uuid::Uuid;

use crate::config::{
    apply_capabilities, fit_budget, negotiate, validate, MAX_IN_FLIGHT_BYTES, MIN_CHUNK_SIZE,
};
use crate::error::{Error, HandshakeError, Result, TransferError};
use crate::wire::{
    Capabilities, ErrorCode, FrameCodec, Hello, Message, SessionConfig, MAGIC, MAX_NAME_LEN,
    PROTOCOL_VERSION,
};

/// How long each handshake step may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Who we are and what we want, for establishing a session.
#[derive(Debug, Clone)]
pub struct LocalPeer {
    pub device_id: Uuid,
    pub device_name: String,
    pub capabilities: Capabilities,
    /// Initiator: the proposal. Responder: ceilings for chunk and window size, and
    /// whether compression is allowed.
    pub config: SessionConfig,
    /// Most `window × chunk` this side agrees to (see [`crate::config::fit_budget`]).
    pub memory_budget: u64,
}

/// What we learned about the peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemotePeer {
    /// What the peer put in `Hello.device_id`: informational, unauthenticated. Who the
    /// peer is comes from the connection ([`crate::P2PSession::peer_identity`]).
    pub device_id: Uuid,
    /// The peer's name made [`printable`](crate::text::printable) (control, bidi and
    /// invisible characters escaped) and cut to [`MAX_NAME_LEN`] bytes: for display only.
    pub device_name: String,
    pub version: u32,
    pub capabilities: Capabilities,
}

/// The outcome of a handshake.
#[derive(Debug, Clone)]
pub struct Established {
    pub peer: RemotePeer,
    /// Intersection of both sides' capabilities.
    pub capabilities: Capabilities,
    pub config: SessionConfig,
}

fn hello(local: &LocalPeer) -> Hello {
    let mut name = local.device_name.clone();
    while name.len() > MAX_NAME_LEN {
        name.pop();
    }
    Hello {
        magic: MAGIC,
        version: PROTOCOL_VERSION,
        device_id: local.device_id,
        device_name: name,
        capabilities: local.capabilities,
    }
}

fn remote(hello: Hello) -> RemotePeer {
    RemotePeer {
        device_id: hello.device_id,
        // Escaped, not filtered: a name with hidden characters looks different from the
        // name it imitates. At most MAX_NAME_LEN bytes once escaped.
        device_name: crate::text::printable_truncated(&hello.device_name, MAX_NAME_LEN)
            .into_owned(),
        version: hello.version,
        capabilities: hello.capabilities,
    }
}

async fn next<S>(framed: &mut Framed<S, FrameCodec>, expected: &'static str) -> Result<Message>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, framed.next()).await {
        Err(_) => Err(HandshakeError::Timeout(HANDSHAKE_TIMEOUT.as_secs()).into()),
        Ok(None) => Err(HandshakeError::Closed.into()),
        Ok(Some(Err(e))) => Err(e.into()),
        Ok(Some(Ok(Message::Error {
            code,
            message,
            version,
        }))) => {
            if code == ErrorCode::VersionMismatch {
                Err(HandshakeError::VersionMismatch {
                    local: PROTOCOL_VERSION,
                    remote: version,
                }
                .into())
            } else {
                Err(TransferError::PeerAborted { code, message }.into())
            }
        }
        Ok(Some(Ok(msg))) => {
            let _ = expected;
            Ok(msg)
        }
    }
}

fn unexpected(expected: &'static str, got: &Message) -> Error {
    HandshakeError::Unexpected {
        expected,
        got: got.kind(),
    }
    .into()
}

async fn refuse<S>(framed: &mut Framed<S, FrameCodec>, error: Error) -> Error
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let _ = tokio::time::timeout(Duration::from_secs(2), framed.send(error.to_message())).await;
    error
}

/// Runs the initiator's side of the handshake.
pub async fn initiate<S>(
    framed: &mut Framed<S, FrameCodec>,
    local: &LocalPeer,
) -> Result<Established>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    validate(&local.config)?;
    framed.send(Message::Hello(hello(local))).await?;
    let theirs = match next(framed, "HelloAck").await? {
        Message::HelloAck(h) => h,
        other => return Err(unexpected("HelloAck", &other)),
    };
    if theirs.magic != MAGIC {
        return Err(HandshakeError::NotAPeer.into());
    }
    if theirs.version != PROTOCOL_VERSION {
        return Err(HandshakeError::VersionMismatch {
            local: PROTOCOL_VERSION,
            remote: theirs.version,
        }
        .into());
    }
    let capabilities = local.capabilities & theirs.capabilities;
    let mut proposal = local.config;
    apply_capabilities(&mut proposal, capabilities);
    fit_budget(&mut proposal, local.memory_budget);
    framed.send(Message::Config(proposal)).await?;
    let agreed = match next(framed, "ConfigAck").await? {
        Message::ConfigAck(c) => c,
        other => return Err(unexpected("ConfigAck", &other)),
    };
    validate(&agreed)?;
    if u64::from(agreed.window_size) * u64::from(agreed.chunk_size)
        > local
            .memory_budget
            .clamp(u64::from(MIN_CHUNK_SIZE), MAX_IN_FLIGHT_BYTES)
        || agreed.chunk_size > proposal.chunk_size
        || agreed.window_size > proposal.window_size
        || (agreed.compress && !proposal.compress)
    {
        return Err(HandshakeError::BadConfig(
            "the peer answered with a configuration beyond our proposal".into(),
        )
        .into());
    }
    Ok(Established {
        peer: remote(theirs),
        capabilities,
        config: agreed,
    })
}

/// Runs the responder's side of the handshake.
pub async fn respond<S>(
    framed: &mut Framed<S, FrameCodec>,
    local: &LocalPeer,
) -> Result<Established>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let theirs = match next(framed, "Hello").await {
        Ok(Message::Hello(h)) => h,
        Ok(other) => return Err(refuse(framed, unexpected("Hello", &other)).await),
        // Garbage instead of a Hello: not one of us.
        Err(Error::Wire(_)) => return Err(HandshakeError::NotAPeer.into()),
        Err(e) => return Err(e),
    };
    if theirs.magic != MAGIC {
        return Err(HandshakeError::NotAPeer.into());
    }
    if theirs.version != PROTOCOL_VERSION {
        let error = HandshakeError::VersionMismatch {
            local: PROTOCOL_VERSION,
            remote: theirs.version,
        };
        return Err(refuse(framed, error.into()).await);
    }
    framed.send(Message::HelloAck(hello(local))).await?;
    let capabilities = local.capabilities & theirs.capabilities;
    let proposal = match next(framed, "Config").await? {
        Message::Config(c) => c,
        other => return Err(refuse(framed, unexpected("Config", &other)).await),
    };
    let agreed = match negotiate(&proposal, &local.config, capabilities, local.memory_budget) {
        Ok(c) => c,
        Err(e) => return Err(refuse(framed, e.into()).await),
    };
    framed.send(Message::ConfigAck(agreed)).await?;
    Ok(Established {
        peer: remote(theirs),
        capabilities,
        config: agreed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello_named(device_name: &str) -> Hello {
        Hello {
            magic: MAGIC,
            version: PROTOCOL_VERSION,
            device_id: Uuid::nil(),
            device_name: device_name.to_owned(),
            capabilities: Capabilities::all(),
        }
    }

    #[test]
    fn a_long_multi_byte_name_is_cut_to_the_byte_limit() {
        // 150 two-byte characters: 300 bytes, but only 150 characters.
        let name = "é".repeat(150);
        let peer = remote(hello_named(&name));
        assert!(
            peer.device_name.len() <= MAX_NAME_LEN,
            "{} bytes",
            peer.device_name.len()
        );
        assert!(name.starts_with(&peer.device_name));
        assert_eq!(peer.device_name.len(), MAX_NAME_LEN);
    }

    #[test]
    fn control_and_bidi_characters_in_a_name_are_shown_escaped() {
        let peer = remote(hello_named("desk\u{1b}[2J\r\u{202e}gpj.exe"));
        assert_eq!(peer.device_name, r"desk\u{1b}[2J\r\u{202e}gpj.exe");
        // Escapes count against the limit too, and are never cut in half.
        let peer = remote(hello_named(&"\u{202e}".repeat(100)));
        assert!(peer.device_name.len() <= MAX_NAME_LEN);
        assert_eq!(peer.device_name, r"\u{202e}".repeat(MAX_NAME_LEN / 8));
    }
}
