//! Typed errors, one enum per phase, gathered in [`Error`].
//!
//! Each error knows whose fault it is ([`Error::is_transient`] tells a retry loop whether
//! trying again can help) and which [`ErrorCode`] to send the peer when it aborts a
//! transfer. Messages are written for the person running the program: they say what
//! happened and, where it helps, what to do.

use std::io;
use std::path::PathBuf;

// `WireError` is defined in `wire`, which depends on nothing here (issue 11); it is
// re-exported so that every phase's error is found in this module.
pub use crate::wire::WireError;
use crate::wire::{ErrorCode, PROTOCOL_VERSION};

/// Result alias for p2p-core.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a session could not be established.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// Both sides speak different protocol versions.
    #[error(
        "incompatible protocol version: this side speaks v{local}, the peer speaks v{remote}; \
         update the older side"
    )]
    VersionMismatch { local: u32, remote: u32 },
    /// The other end is not a p2p-transfer peer.
    #[error("the peer is not a p2p-transfer peer (bad greeting)")]
    NotAPeer,
    /// The peer sent a message that does not belong in the handshake.
    #[error("handshake failed: expected {expected}, got {got}")]
    Unexpected {
        expected: &'static str,
        got: &'static str,
    },
    /// The peer's proposed configuration is unusable.
    #[error("handshake failed: {0}")]
    BadConfig(String),
    /// The peer closed the connection during the handshake.
    #[error("the peer closed the connection during the handshake")]
    Closed,
    /// The peer did not answer in time.
    #[error("the peer did not answer the handshake within {0} s")]
    Timeout(u64),
}

/// Problems with the contents of a transfer: the manifest or a file's data.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    /// The peer sent something the protocol does not allow.
    #[error("protocol violation by the peer: {0}")]
    Protocol(String),
    /// A path in an offer was refused.
    #[error("refused unsafe path {path:?}: {reason}")]
    UnsafePath { path: String, reason: &'static str },
    /// A destination file exists and overwriting was not allowed.
    #[error("{}", already_exists(first, *count))]
    AlreadyExists { first: String, count: usize },
    /// An offer resumes a transfer id whose earlier attempt had other entries.
    #[error(
        "this resumes an interrupted transfer, but not with the same files: some paths were \
         left out or added, or the files changed since; the receiver keeps what arrived — \
         resume with all the original paths, unchanged, or send them as a new transfer"
    )]
    ResumeMismatch,
    /// The declared sizes do not fit on the receiver's disk.
    #[error("not enough free space: the transfer needs {needed} bytes, {available} are free")]
    InsufficientSpace { needed: u64, available: u64 },
    /// A chunk kept failing its CRC.
    #[error("chunk {index} of {path:?} failed its checksum {attempts} times; giving up")]
    ChunkRetriesExhausted {
        path: String,
        index: u64,
        attempts: u32,
    },
    /// A chunk was not acknowledged in time, repeatedly.
    #[error("chunk {index} of {path:?} was not acknowledged after {attempts} attempts")]
    AckTimeout {
        path: String,
        index: u64,
        attempts: u32,
    },
    /// A file's SHA-256 differed after all chunks arrived. Nothing was written to its
    /// final path.
    #[error("{path:?} failed verification: its SHA-256 does not match what the sender hashed")]
    VerificationFailed { path: String },
    /// A compressed chunk was malformed or decompressed to the wrong size.
    #[error("chunk {index} of {path:?} could not be decompressed: {reason}")]
    Decompress {
        path: String,
        index: u64,
        reason: String,
    },
    /// The peer aborted with a reason. `message` is the peer's own words, kept as they
    /// arrived; the error shows them [`printable`](crate::text::printable).
    #[error("{}", peer_aborted(*code, message))]
    PeerAborted { code: ErrorCode, message: String },
    /// The connection closed before the transfer finished.
    #[error("the connection closed before the transfer finished")]
    ConnectionClosed,
    /// The peer stopped answering.
    #[error("the peer stopped answering for {:.1} s", .0.as_secs_f64())]
    PeerSilent(std::time::Duration),
    /// The local user stopped (Ctrl+C, Cancel: see [`crate::Interrupt`]).
    #[error("interrupted by the user")]
    Cancelled,
}

fn peer_aborted(code: ErrorCode, message: &str) -> String {
    let message = crate::text::printable(message);
    match code {
        ErrorCode::Interrupted => format!("the peer stopped the transfer ({message})"),
        _ => format!("the peer refused or aborted the transfer: {message}"),
    }
}

fn already_exists(first: &str, count: usize) -> String {
    if count <= 1 {
        format!(
            "{first:?} already exists in the output folder; allow overwriting \
             (--overwrite) to replace it"
        )
    } else {
        format!(
            "{count} files already exist in the output folder (first: {first:?}); \
             allow overwriting (--overwrite) to replace them"
        )
    }
}

/// Local file-system failures, with the path involved.
#[derive(Debug, thiserror::Error)]
#[error("{action} {path:?}: {source}")]
pub struct StorageError {
    pub action: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

impl StorageError {
    /// Wraps an I/O error with what we were doing and where.
    pub fn new(action: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Self {
            action,
            path: path.into(),
            source,
        }
    }
}

/// Any p2p-core failure.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error(transparent)]
    Handshake(#[from] HandshakeError),
    #[error(transparent)]
    Transfer(#[from] TransferError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// TLS, identity, or admission (codes, trusted devices) failed.
    #[error(transparent)]
    Security(#[from] crate::net::SecurityError),
    /// Connecting, accepting or binding failed. Shown in words a person uses
    /// ("nothing is listening at 10.0.0.5:14567"), not the OS's.
    #[error("{}", connect_failure(action, addr, source))]
    Connect {
        action: &'static str,
        addr: String,
        #[source]
        source: io::Error,
    },
    /// The caller passed something unusable (bad path to send, bad option).
    #[error("{0}")]
    InvalidInput(String),
    /// The rendezvous server could not be reached, refused, or the peer left it.
    #[error(transparent)]
    Rendezvous(#[from] crate::rendezvous::client::RendezvousError),
    /// A swarm download or share failed.
    #[error(transparent)]
    Swarm(#[from] crate::swarm::SwarmError),
}

impl Error {
    /// Whether retrying (reconnecting) can help: true for network trouble, false for
    /// anything that would fail the same way again (disk full, refused paths, version
    /// mismatch, corrupted data after retries).
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Wire(WireError::Io(e)) => io_is_transient(e),
            Error::Wire(WireError::Truncated { .. }) => true,
            Error::Wire(_) => false,
            Error::Handshake(HandshakeError::Closed | HandshakeError::Timeout(_)) => true,
            Error::Handshake(_) => false,
            Error::Transfer(
                TransferError::ConnectionClosed
                | TransferError::PeerSilent(_)
                | TransferError::AckTimeout { .. },
            ) => true,
            // The peer's user stopped it and may resume it: worth waiting for.
            Error::Transfer(TransferError::PeerAborted {
                code: ErrorCode::Interrupted,
                ..
            }) => true,
            Error::Transfer(_) => false,
            Error::Storage(_) => false,
            Error::Security(e) => e.is_transient(),
            Error::Connect { source, .. } => io_is_transient(source),
            Error::InvalidInput(_) => false,
            Error::Rendezvous(_) => false,
            Error::Swarm(e) => e.is_transient(),
        }
    }

    /// Whether the peer's user stopped the transfer (`Error { code: Interrupted }`):
    /// it may come back to resume it.
    pub fn peer_interrupted(&self) -> bool {
        matches!(
            self,
            Error::Transfer(TransferError::PeerAborted {
                code: ErrorCode::Interrupted,
                ..
            })
        )
    }

    /// Whether data received before this error is untrustworthy and must not be resumed
    /// from: a verification failure, or a peer that broke the protocol. Other errors —
    /// transient ones, and permanent ones like a full disk — keep it for a resume.
    pub fn discards_partial_data(&self) -> bool {
        match self {
            Error::Transfer(
                TransferError::VerificationFailed { .. }
                | TransferError::Protocol(_)
                | TransferError::Decompress { .. }
                | TransferError::ChunkRetriesExhausted { .. },
            ) => true,
            Error::Transfer(TransferError::PeerAborted { code, .. }) => {
                matches!(code, ErrorCode::VerificationFailed | ErrorCode::Protocol)
            }
            Error::Wire(
                WireError::Decode(_) | WireError::TrailingBytes(_) | WireError::Oversized { .. },
            ) => true,
            _ => false,
        }
    }

    /// The code to send the peer when this error aborts a transfer.
    pub fn code(&self) -> ErrorCode {
        match self {
            Error::Handshake(HandshakeError::VersionMismatch { .. }) => ErrorCode::VersionMismatch,
            Error::Transfer(t) => match t {
                TransferError::UnsafePath { .. } => ErrorCode::UnsafePath,
                TransferError::AlreadyExists { .. } | TransferError::ResumeMismatch => {
                    ErrorCode::AlreadyExists
                }
                TransferError::InsufficientSpace { .. } => ErrorCode::InsufficientSpace,
                TransferError::VerificationFailed { .. } => ErrorCode::VerificationFailed,
                TransferError::Cancelled => ErrorCode::Interrupted,
                TransferError::Protocol(_) | TransferError::Decompress { .. } => {
                    ErrorCode::Protocol
                }
                TransferError::PeerAborted { code, .. } => *code,
                _ => ErrorCode::Other,
            },
            Error::Storage(_) => ErrorCode::Storage,
            Error::Wire(WireError::Decode(_) | WireError::TrailingBytes(_)) => ErrorCode::Protocol,
            _ => ErrorCode::Other,
        }
    }

    /// Shorthand for a protocol violation.
    pub fn protocol(msg: impl Into<String>) -> Self {
        Error::Transfer(TransferError::Protocol(msg.into()))
    }

    /// The `Message::Error` that tells the peer why we stop.
    pub fn to_message(&self) -> crate::wire::Message {
        crate::wire::Message::Error {
            code: self.code(),
            message: self.to_string(),
            version: PROTOCOL_VERSION,
        }
    }
}

/// What a failed connect, accept or bind means, in plain words.
fn connect_failure(action: &str, addr: &str, e: &io::Error) -> String {
    use io::ErrorKind::*;
    match (action, e.kind()) {
        ("connect to", ConnectionRefused) => {
            format!(
                "nothing is listening at {addr} (is the other side started, and the port right?)"
            )
        }
        ("connect to", TimedOut) => {
            format!("no answer from {addr} (a firewall, or the wrong address?)")
        }
        ("connect to", HostUnreachable | NetworkUnreachable) => {
            format!("{addr} cannot be reached from this network")
        }
        (_, AddrInUse) => format!("cannot {action} {addr}: the port is already in use"),
        (_, AddrNotAvailable) => {
            format!("cannot {action} {addr}: that address is not one of this machine's")
        }
        (_, PermissionDenied) => format!("cannot {action} {addr}: permission denied"),
        _ => format!("cannot {action} {addr}: {}", os_words(e)),
    }
}

/// An I/O error's text without the "(os error N)" tail.
pub fn os_words(e: &io::Error) -> String {
    let text = e.to_string();
    match text.rfind(" (os error ") {
        Some(at) if text.ends_with(')') => text[..at].to_owned(),
        _ => text,
    }
}

fn io_is_transient(e: &io::Error) -> bool {
    use io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionReset
            | ConnectionAborted
            | ConnectionRefused
            | BrokenPipe
            | TimedOut
            | UnexpectedEof
            | NotConnected
            | Interrupted
            | HostUnreachable
            | NetworkUnreachable
            | NetworkDown
            | AddrNotAvailable
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_trouble_is_transient_and_refusals_are_not() {
        let reset = Error::Wire(WireError::Io(io::Error::from(
            io::ErrorKind::ConnectionReset,
        )));
        assert!(reset.is_transient());
        assert!(Error::Transfer(TransferError::ConnectionClosed).is_transient());
        let mismatch = Error::Handshake(HandshakeError::VersionMismatch {
            local: 1,
            remote: 2,
        });
        assert!(!mismatch.is_transient());
        assert_eq!(mismatch.code(), ErrorCode::VersionMismatch);
        let full = Error::Storage(StorageError::new(
            "write",
            "/x",
            io::Error::from(io::ErrorKind::StorageFull),
        ));
        assert!(!full.is_transient());
        let unsafe_path = Error::Transfer(TransferError::UnsafePath {
            path: "../x".into(),
            reason: "parent",
        });
        assert!(!unsafe_path.is_transient());
        assert_eq!(unsafe_path.code(), ErrorCode::UnsafePath);
    }

    #[test]
    fn a_peer_message_is_shown_escaped() {
        let aborted = Error::Transfer(TransferError::PeerAborted {
            code: ErrorCode::Other,
            message: "\u{1b}]0;pwned\u{7}\r\ntransfer complete, all files verified".into(),
        });
        assert_eq!(
            aborted.to_string(),
            concat!(
                r"the peer refused or aborted the transfer: \u{1b}]0;pwned\u{7}\r\n",
                "transfer complete, all files verified"
            )
        );
        let path = Error::Transfer(TransferError::VerificationFailed {
            path: "invoice\u{202e}fdp.exe".into(),
        });
        assert!(
            path.to_string().contains(r"invoice\u{202e}fdp.exe"),
            "{path}"
        );
    }
}
