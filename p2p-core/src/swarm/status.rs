//! What a running swarm shows the person: a status snapshot (for progress bars, the
//! GUI's per-peer table and chunk map) and the events worth a line of their own.

use std::net::SocketAddr;

use super::content::Hash;

/// Where a swarm is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SwarmState {
    /// Looking for peers, or fetching the manifest from one (a ticket without it).
    Starting,
    /// Fetching pieces (and serving those it has).
    Downloading,
    /// Has every piece; serving.
    Seeding,
    /// The download finished: every file verified and in place.
    Done,
    /// Stopped on an error (the sentence, already safe to show).
    Failed(String),
}

/// One connected peer.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerStatus {
    /// Its device id (as text).
    pub device: String,
    /// Its address on the path in use.
    pub addr: Option<SocketAddr>,
    /// `lan`, `direct` or `relay`.
    pub path: String,
    /// It connected to us (through the tracker).
    pub incoming: bool,
    /// Pieces it has.
    pub has: u32,
    /// Bytes of verified pieces it sent us.
    pub downloaded: u64,
    /// Bytes of pieces we sent it.
    pub uploaded: u64,
    /// Its recent rate to us, bytes per second.
    pub rate: f64,
    /// Requests in flight with it.
    pub in_flight: usize,
}

/// A snapshot of one share's swarm.
#[derive(Debug, Clone, PartialEq)]
pub struct SwarmStatus {
    /// The share's root hash.
    pub root: Hash,
    /// Its name (safe to show).
    pub name: String,
    /// Where it is.
    pub state: SwarmState,
    /// Pieces in the share (0 until the manifest is known).
    pub pieces: u32,
    /// Bytes in the share.
    pub total_bytes: u64,
    /// Pieces here, as a bitfield (most significant bit first): the chunk map.
    pub have: Vec<u8>,
    /// Pieces here.
    pub have_count: u32,
    /// Bytes here.
    pub have_bytes: u64,
    /// Bytes downloaded this run (verified).
    pub downloaded: u64,
    /// Bytes uploaded this run.
    pub uploaded: u64,
    /// Bytes that arrived and failed their hash.
    pub discarded: u64,
    /// Connected peers.
    pub peers: Vec<PeerStatus>,
}

impl SwarmStatus {
    /// The empty status of a share about to start.
    pub fn new(root: Hash) -> Self {
        SwarmStatus {
            root,
            name: root.short(),
            state: SwarmState::Starting,
            pieces: 0,
            total_bytes: 0,
            have: Vec::new(),
            have_count: 0,
            have_bytes: 0,
            downloaded: 0,
            uploaded: 0,
            discarded: 0,
            peers: Vec::new(),
        }
    }

    /// Whether piece `i` is here.
    pub fn has(&self, i: u32) -> bool {
        i < self.pieces
            && self
                .have
                .get((i / 8) as usize)
                .is_some_and(|b| b & (0x80 >> (i % 8)) != 0)
    }
}

/// Something that happened in a swarm, worth a line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SwarmEvent {
    /// The manifest is known (from the `.p2p` file, or fetched and verified).
    Manifest {
        /// Files in the share.
        files: usize,
        /// Bytes in the share.
        bytes: u64,
        /// Pieces already here (resumed).
        resumed: u32,
    },
    /// A peer connected.
    PeerConnected {
        /// Its device id.
        device: String,
        /// `lan`, `direct` or `relay`.
        path: String,
        /// It connected to us.
        incoming: bool,
    },
    /// A peer left or was dropped.
    PeerGone {
        /// Its device id.
        device: String,
        /// Why (safe to show).
        reason: String,
    },
    /// A peer sent a piece that failed its hash: dropped and not connected again.
    BadPeer {
        /// Its device id.
        device: String,
        /// The piece.
        piece: u32,
    },
    /// A notice about resuming (a state file that was ignored, and why).
    Note(String),
    /// Every file is verified and in place.
    Finished,
}
