//! Share once, download from many: content-addressed shares fetched from a swarm of
//! peers at once.
//!
//! ```text
//! share PATH ─▶ content::hash_share ─▶ Manifest (+ piece hashes) ─▶ root hash ─▶ .p2p / ticket
//!                                                                        │
//! tracker (the rendezvous server): swarm id = H(root) ─▶ announcing peers  │
//!        Lookup ─▶ peer ids; Introduce(peer, mailbox) ─▶ the peer claims it │
//!        ─▶ net::traversal exchange with code = (mailbox, secret from root) ┘
//!        ─▶ QUIC + TLS, admitted by SPAKE2 over the code: only root-hash holders connect
//! node: one task pair per peer (wire::PeerMessage), picker (rarest first, windows,
//!       endgame), store (verified pieces ─▶ OutputDir, same resume state as a transfer)
//! ```
//!
//! [`content`] names a share by its root hash; [`ticket`] carries it between people;
//! [`wire`] is the peer protocol; [`picker`] schedules requests; [`store`] keeps pieces;
//! [`node`] runs one share's swarm; [`host`] runs a process's shares on one tracker
//! connection (the CLI's `get`/`share`, the daemon).

pub mod content;
pub mod host;
pub mod node;
pub mod picker;
pub mod service;
pub mod status;
pub mod store;
pub mod ticket;
pub mod wire;

use std::time::Duration;

pub use content::{hash_share, Hash, LocalShare, Manifest};
pub use host::Host;

pub use node::Swarm;
pub use status::{PeerStatus, SwarmEvent, SwarmState, SwarmStatus};
pub use ticket::{ShareFile, Ticket};

/// Why a swarm operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SwarmError {
    /// Bad input from a person: a damaged ticket or `.p2p` file, an unusable path.
    #[error("{0}")]
    Input(String),
    /// A manifest that is malformed, unsafe, or not the share's.
    #[error("share manifest refused: {0}")]
    Manifest(String),
    /// A peer broke the swarm protocol (the peer is dropped).
    #[error("protocol violation by a swarm peer: {0}")]
    Protocol(String),
    /// Reading shared files failed.
    #[error("{0}")]
    Io(String),
    /// The output folder refused the download (exists already, unsafe, full, …).
    #[error("{0}")]
    Output(String),
    /// The tracker could not be used.
    #[error("tracker: {0}")]
    Tracker(String),
    /// No peer could be reached, or none has the share any more.
    #[error("{0}")]
    NoPeers(String),
    /// Stopped by the user.
    #[error("stopped")]
    Stopped,
}

impl SwarmError {
    /// Whether trying again later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, SwarmError::Tracker(_) | SwarmError::NoPeers(_))
    }
}

/// How a swarm behaves.
#[derive(Debug, Clone)]
pub struct SwarmConfig {
    /// Most peers a download connects to itself (others may connect to it).
    pub max_peers: usize,
    /// Most peers connected at once, either way.
    pub max_connections: usize,
    /// Upload limit, bytes per second (shared by every peer and share of a host).
    pub max_upload: Option<u64>,
    /// Download limit, bytes per second.
    pub max_download: Option<u64>,
    /// A request unanswered this long is asked of another peer.
    pub request_timeout: Duration,
    /// How long one connection set-up (introduction, exchange, QUIC) may take.
    pub connect_timeout: Duration,
    /// How often a download asks the tracker for more peers while it has fewer than
    /// `max_peers`.
    pub lookup_every: Duration,
    /// How long a download waits without any peer before giving up.
    pub no_peer_timeout: Duration,
}

impl Default for SwarmConfig {
    fn default() -> Self {
        SwarmConfig {
            max_peers: 8,
            max_connections: 64,
            max_upload: None,
            max_download: None,
            request_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(20),
            lookup_every: Duration::from_secs(3),
            no_peer_timeout: Duration::from_secs(60),
        }
    }
}
