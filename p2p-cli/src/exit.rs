//! Errors at the edge: one readable line, and a documented exit code.

use p2p_core::discovery::DiscoveryError;
use p2p_core::error::{HandshakeError, TransferError, WireError};
use p2p_core::nat::NatError;
use p2p_core::net::SecurityError;
use p2p_core::swarm::SwarmError;
use p2p_core::Error;

pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0    success
  1    any other error
  2    bad command line (also: --discover finds several receivers; name one)
  3    could not connect, or the connection was lost (also: discovery found
       nobody; nat-test got no answer from any STUN server)
  4    the peer is incompatible or broke the protocol (also: what answered is
       not p2p-transfer; a STUN server answered, but not usably)
  5    the transfer was refused (unsafe path, file exists, no space, peer declined)
  6    data failed verification
  7    local file system error (read, write, permission, disk full)
  8    the peer was not let in, or did not let us in (wrong or used code,
       unknown device, not the pinned device), or the connection was tampered with
  130  interrupted (Ctrl+C)";

/// The command line asks for something contradictory (clap cannot tell): exit code 2,
/// like any other command-line error.
#[derive(Debug)]
pub struct Usage(pub String);

impl std::error::Error for Usage {}

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Something answered, but not in a way this program can use (a STUN server's bad
/// reply): exit code 4, like an incompatible peer.
#[derive(Debug)]
pub struct Incompatible(pub String);

impl std::error::Error for Incompatible {}

impl std::fmt::Display for Incompatible {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The user pressed Ctrl+C.
#[derive(Debug)]
pub struct Interrupted;

impl std::error::Error for Interrupted {}

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("interrupted")
    }
}

/// The error and its causes as one line, without repeating a cause that the message
/// above it already quotes. Causes may quote a peer: whatever p2p-core did not already
/// escape is escaped here, except the line feeds our own messages use to list
/// receivers ([`printable_lines`](p2p_core::text::printable_lines)).
pub fn describe(error: &anyhow::Error) -> String {
    let mut line = String::new();
    let mut explained = false;
    for cause in error.chain() {
        // A connect failure already says what its OS error means, in words.
        if std::mem::take(&mut explained) && cause.is::<std::io::Error>() {
            continue;
        }
        explained = matches!(cause.downcast_ref::<Error>(), Some(Error::Connect { .. }));
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    match p2p_core::text::printable_lines(&line) {
        std::borrow::Cow::Borrowed(_) => line,
        std::borrow::Cow::Owned(shown) => shown,
    }
}

/// Maps an error to the exit-code table above.
pub fn exit_code(error: &anyhow::Error) -> u8 {
    if error.downcast_ref::<Interrupted>().is_some() {
        return 130;
    }
    if error.downcast_ref::<Usage>().is_some() {
        return 2;
    }
    if error.downcast_ref::<Incompatible>().is_some() {
        return 4;
    }
    if let Some(discovery) = error
        .chain()
        .find_map(|c| c.downcast_ref::<DiscoveryError>())
    {
        return match discovery {
            // Nobody (matching) there: could not connect.
            DiscoveryError::NotFound { .. } | DiscoveryError::NoSender { .. } => 3,
            // Several match: the command line has to say which.
            DiscoveryError::Ambiguous { .. } => 2,
            DiscoveryError::Incompatible { .. } => 4,
            _ => 1,
        };
    }
    if let Some(nat) = error.chain().find_map(|c| c.downcast_ref::<NatError>()) {
        return match nat {
            // No server could be asked: names that do not resolve, no route.
            NatError::NoServerUsable { .. } => 3,
            _ => 1,
        };
    }
    if let Some(swarm) = error.chain().find_map(|c| c.downcast_ref::<SwarmError>()) {
        return swarm_exit_code(swarm);
    }
    let Some(core) = error.chain().find_map(|c| c.downcast_ref::<Error>()) else {
        return 1;
    };
    match core {
        Error::Connect { .. } => 3,
        // The rendezvous could not be reached, refused the code's number, or the peer
        // left it: nothing connected.
        Error::Rendezvous(_) => 3,
        Error::Wire(WireError::Io(_) | WireError::Truncated { .. }) => 3,
        Error::Wire(WireError::Tampered(_)) => 8,
        Error::Wire(_) => 4,
        Error::Handshake(HandshakeError::Closed | HandshakeError::Timeout(_)) => 3,
        Error::Handshake(_) => 4,
        Error::Transfer(t) => match t {
            TransferError::ConnectionClosed | TransferError::PeerSilent(_) => 3,
            TransferError::AckTimeout { .. } => 3,
            TransferError::Protocol(_) | TransferError::Decompress { .. } => 4,
            TransferError::UnsafePath { .. }
            | TransferError::AlreadyExists { .. }
            | TransferError::ResumeMismatch
            | TransferError::InsufficientSpace { .. }
            | TransferError::PeerAborted { .. } => match core.code() {
                p2p_core::wire::ErrorCode::VerificationFailed => 6,
                // The peer's user stopped it: like a lost connection, it can resume.
                p2p_core::wire::ErrorCode::Interrupted => 3,
                p2p_core::wire::ErrorCode::Storage => 7,
                p2p_core::wire::ErrorCode::Protocol
                | p2p_core::wire::ErrorCode::VersionMismatch => 4,
                _ => 5,
            },
            TransferError::ChunkRetriesExhausted { .. }
            | TransferError::VerificationFailed { .. } => 6,
            TransferError::Cancelled => 130,
        },
        Error::Storage(_) => 7,
        Error::Security(s) => match s {
            SecurityError::Io(_)
            | SecurityError::Closed
            | SecurityError::Timeout
            | SecurityError::Silent { .. }
            | SecurityError::NoQuicAnswer { .. }
            | SecurityError::HungUp { .. } => 3,
            SecurityError::NotAPeer(_)
            | SecurityError::Stranger { .. }
            | SecurityError::Tls(_)
            | SecurityError::Protocol(_) => 4,
            SecurityError::Identity(_) | SecurityError::Trust(_) => 7,
            _ => 8,
        },
        Error::InvalidInput(_) => 1,
        Error::Swarm(s) => swarm_exit_code(s),
    }
}

fn swarm_exit_code(error: &SwarmError) -> u8 {
    match error {
        SwarmError::Input(_) => 2,
        SwarmError::Manifest(_) | SwarmError::Protocol(_) => 4,
        SwarmError::Io(_) => 7,
        SwarmError::Output(_) => 5,
        SwarmError::Tracker(_) | SwarmError::NoPeers(_) => 3,
        SwarmError::Stopped => 130,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_described_chain_keeps_our_line_feeds_and_escapes_the_rest() {
        let error = anyhow::anyhow!("2 receivers match:\n  desk\u{202e}gpj.exe\r\n  x\u{1b}[2J")
            .context("discovery failed");
        assert_eq!(
            describe(&error),
            "discovery failed: 2 receivers match:\n  desk\\u{202e}gpj.exe\\r\n  x\\u{1b}[2J"
        );
    }
}
