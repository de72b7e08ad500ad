//! Which piece to ask which peer for: the swarm's sans-IO scheduler.
//!
//! - **Rarest first**: a peer is asked for the pieces it has that the fewest connected
//!   peers have (ties broken by a per-downloader random order, so downloaders that
//!   start together fetch different pieces and can trade them at once).
//! - **A window per peer, sized to its rate**: about [`WINDOW_SECONDS`] of that peer's
//!   measured rate in flight, between [`MIN_WINDOW`] and [`MAX_WINDOW`] pieces.
//! - **Timeouts**: a request unanswered for the request timeout goes back to the pool
//!   and is asked of another peer; the slow peer's window shrinks to the minimum.
//! - **Endgame**: once every missing piece is requested, idle peers are asked for
//!   pieces in flight elsewhere too (at most [`ENDGAME_COPIES`] askers per piece); the
//!   first copy wins and the others are cancelled.
//!
//! Time comes in as an argument; nothing here does I/O.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use super::wire::Bitfield;

/// A connected peer, as the picker knows it.
pub type PeerKey = u64;

/// Fewest requests a peer has in flight (when it has pieces we need).
pub const MIN_WINDOW: usize = 4;
/// Most requests a peer has in flight (below what it may queue: `MAX_PEER_REQUESTS`).
pub const MAX_WINDOW: usize = 48;
/// Seconds of a peer's rate the window holds.
pub const WINDOW_SECONDS: f64 = 0.5;
/// Most peers asked for one piece in endgame.
pub const ENDGAME_COPIES: usize = 3;

struct Peer {
    has: Bitfield,
    in_flight: HashMap<u32, Instant>,
    /// Bytes per second, smoothed.
    rate: f64,
    sample_start: Option<Instant>,
    sample_bytes: u64,
    /// Timed out lately: keep the minimum window until it delivers again.
    slow: bool,
}

/// What the picker decided when a piece arrived.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Arrived {
    /// Other peers asked for the same piece (endgame): cancel there.
    pub cancel: Vec<PeerKey>,
    /// The piece was new to us (false: a duplicate in endgame, or unknown).
    pub new: bool,
}

/// The scheduler (see the module documentation).
pub struct Picker {
    have: Bitfield,
    availability: Vec<u16>,
    /// Piece → peers it is requested from.
    requested: HashMap<u32, Vec<PeerKey>>,
    peers: HashMap<PeerKey, Peer>,
    chunk_size: u32,
    timeout: Duration,
    salt: u32,
}

impl Picker {
    /// A picker for a share of which `have` is on disk already.
    pub fn new(have: Bitfield, chunk_size: u32, timeout: Duration) -> Self {
        let len = have.len() as usize;
        Picker {
            have,
            availability: vec![0; len],
            requested: HashMap::new(),
            peers: HashMap::new(),
            chunk_size: chunk_size.max(1),
            timeout,
            salt: rand::random::<u32>() | 1,
        }
    }

    /// Pieces we have.
    pub fn have(&self) -> &Bitfield {
        &self.have
    }

    /// Every piece is here.
    pub fn is_complete(&self) -> bool {
        self.have.is_full()
    }

    /// A peer connected with the pieces in `has`.
    pub fn add_peer(&mut self, key: PeerKey, has: Bitfield) {
        for piece in has.iter() {
            if let Some(a) = self.availability.get_mut(piece as usize) {
                *a = a.saturating_add(1);
            }
        }
        self.peers.insert(
            key,
            Peer {
                has,
                in_flight: HashMap::new(),
                rate: 0.0,
                sample_start: None,
                sample_bytes: 0,
                slow: false,
            },
        );
    }

    /// A peer announced another piece.
    pub fn peer_has(&mut self, key: PeerKey, piece: u32) {
        if let Some(peer) = self.peers.get_mut(&key) {
            if peer.has.set(piece) {
                if let Some(a) = self.availability.get_mut(piece as usize) {
                    *a = a.saturating_add(1);
                }
            }
        }
    }

    /// A peer went: its requests return to the pool.
    pub fn remove_peer(&mut self, key: PeerKey) {
        if let Some(peer) = self.peers.remove(&key) {
            for piece in peer.has.iter() {
                if let Some(a) = self.availability.get_mut(piece as usize) {
                    *a = a.saturating_sub(1);
                }
            }
            for piece in peer.in_flight.keys() {
                self.unrequest(*piece, key);
            }
        }
    }

    fn unrequest(&mut self, piece: u32, key: PeerKey) {
        if let Some(askers) = self.requested.get_mut(&piece) {
            askers.retain(|&k| k != key);
            if askers.is_empty() {
                self.requested.remove(&piece);
            }
        }
    }

    /// How many requests `key` should have in flight.
    pub fn window(&self, key: PeerKey) -> usize {
        let Some(peer) = self.peers.get(&key) else {
            return 0;
        };
        if peer.slow || peer.rate <= 0.0 {
            return MIN_WINDOW;
        }
        let pieces = (peer.rate * WINDOW_SECONDS / f64::from(self.chunk_size)).ceil() as usize;
        pieces.clamp(MIN_WINDOW, MAX_WINDOW)
    }

    /// The requests to send `key` now (already counted as in flight).
    pub fn next_requests(&mut self, key: PeerKey, now: Instant) -> Vec<u32> {
        let window = self.window(key);
        let Some(peer) = self.peers.get(&key) else {
            return Vec::new();
        };
        let room = window.saturating_sub(peer.in_flight.len());
        if room == 0 {
            return Vec::new();
        }
        // Rarest first among what this peer has, we lack, and nobody is asked for.
        let salt = self.salt;
        let mut fresh: Vec<(u16, u32, u32)> = peer
            .has
            .iter()
            .filter(|&p| !self.have.has(p) && !self.requested.contains_key(&p))
            .map(|p| {
                (
                    self.availability[p as usize],
                    p.wrapping_mul(salt) ^ salt,
                    p,
                )
            })
            .collect();
        let mut picked: Vec<u32> = if fresh.len() > room {
            fresh.select_nth_unstable(room - 1);
            fresh.truncate(room);
            fresh.sort_unstable();
            fresh.iter().map(|&(_, _, p)| p).collect()
        } else {
            fresh.sort_unstable();
            fresh.iter().map(|&(_, _, p)| p).collect()
        };
        // Endgame: nothing left that nobody is asked for; help with what is in flight.
        if picked.len() < room && self.all_missing_requested() {
            let mut extra: Vec<(usize, u32)> = self
                .requested
                .iter()
                .filter(|(p, askers)| {
                    peer.has.has(**p) && !askers.contains(&key) && askers.len() < ENDGAME_COPIES
                })
                .map(|(p, askers)| (askers.len(), *p))
                .collect();
            extra.sort_unstable();
            picked.extend(extra.into_iter().take(room - picked.len()).map(|(_, p)| p));
        }
        for &piece in &picked {
            self.requested.entry(piece).or_default().push(key);
        }
        if let Some(peer) = self.peers.get_mut(&key) {
            for &piece in &picked {
                peer.in_flight.insert(piece, now);
            }
        }
        picked
    }

    fn all_missing_requested(&self) -> bool {
        let missing = self.have.len() - self.have.count();
        self.requested.len() as u32 >= missing
    }

    /// Whether `key` was asked for `piece` (and has not answered).
    pub fn asked(&self, key: PeerKey, piece: u32) -> bool {
        self.peers
            .get(&key)
            .is_some_and(|p| p.in_flight.contains_key(&piece))
    }

    /// `piece` (`len` bytes) arrived from `key` and passed its hash.
    pub fn arrived(&mut self, key: PeerKey, piece: u32, len: usize, now: Instant) -> Arrived {
        if let Some(peer) = self.peers.get_mut(&key) {
            peer.in_flight.remove(&piece);
            peer.slow = false;
            let start = *peer.sample_start.get_or_insert(now);
            peer.sample_bytes += len as u64;
            let elapsed = now.duration_since(start).as_secs_f64();
            if elapsed >= 0.25 {
                let sample = peer.sample_bytes as f64 / elapsed;
                peer.rate = if peer.rate == 0.0 {
                    sample
                } else {
                    0.7 * peer.rate + 0.3 * sample
                };
                peer.sample_start = Some(now);
                peer.sample_bytes = 0;
            }
        }
        let askers = self.requested.remove(&piece).unwrap_or_default();
        let cancel: Vec<PeerKey> = askers.into_iter().filter(|&k| k != key).collect();
        for k in &cancel {
            if let Some(peer) = self.peers.get_mut(k) {
                peer.in_flight.remove(&piece);
            }
        }
        let new = self.have.set(piece);
        Arrived { cancel, new }
    }

    /// `key` will not send `piece` (it refused, or sent a bad copy): ask elsewhere.
    pub fn failed(&mut self, key: PeerKey, piece: u32) {
        if let Some(peer) = self.peers.get_mut(&key) {
            peer.in_flight.remove(&piece);
        }
        self.unrequest(piece, key);
    }

    /// Requests older than the timeout: taken back (ask elsewhere) and returned, so the
    /// caller can cancel them with their peers.
    pub fn expire(&mut self, now: Instant) -> Vec<(PeerKey, u32)> {
        let mut expired = Vec::new();
        for (&key, peer) in &mut self.peers {
            let before = peer.in_flight.len();
            peer.in_flight.retain(|&piece, sent| {
                let late = now.duration_since(*sent) >= self.timeout;
                if late {
                    expired.push((key, piece));
                }
                !late
            });
            if peer.in_flight.len() < before {
                peer.slow = true;
            }
        }
        for &(key, piece) in &expired {
            self.unrequest(piece, key);
        }
        expired
    }

    /// The peer's smoothed rate (bytes per second).
    pub fn rate(&self, key: PeerKey) -> f64 {
        self.peers.get(&key).map_or(0.0, |p| p.rate)
    }

    /// Requests in flight with `key`.
    pub fn in_flight(&self, key: PeerKey) -> usize {
        self.peers.get(&key).map_or(0, |p| p.in_flight.len())
    }

    /// Peers known.
    pub fn peers(&self) -> HashSet<PeerKey> {
        self.peers.keys().copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bits(len: u32, set: &[u32]) -> Bitfield {
        let mut b = Bitfield::new(len);
        for &i in set {
            b.set(i);
        }
        b
    }

    const T: Duration = Duration::from_secs(5);

    #[test]
    fn the_rarest_piece_is_asked_first() {
        let now = Instant::now();
        let mut picker = Picker::new(Bitfield::new(4), 1024, T);
        picker.add_peer(1, Bitfield::full(4));
        picker.add_peer(2, bits(4, &[0, 1, 2]));
        picker.add_peer(3, bits(4, &[0, 1]));
        // Piece 3 only peer 1 has, piece 2 two peers: those first.
        let asked = picker.next_requests(1, now);
        assert_eq!(asked.len(), MIN_WINDOW);
        assert_eq!(&asked[..2], &[3, 2], "{asked:?}");
    }

    #[test]
    fn a_piece_is_asked_of_one_peer_until_endgame() {
        let now = Instant::now();
        let mut picker = Picker::new(Bitfield::new(8), 1024, T);
        picker.add_peer(1, Bitfield::full(8));
        picker.add_peer(2, Bitfield::full(8));
        let a = picker.next_requests(1, now);
        let b = picker.next_requests(2, now);
        assert_eq!(a.len() + b.len(), 8);
        assert!(a.iter().all(|p| !b.contains(p)), "{a:?} {b:?}");
        // All requested: a piece from peer 1 frees a slot there; in endgame peer 1 helps
        // with peer 2's pieces.
        let got = a[0];
        assert!(picker.arrived(1, got, 1024, now).new);
        let extra = picker.next_requests(1, now);
        assert_eq!(extra.len(), 1);
        assert!(b.contains(&extra[0]), "{extra:?} {b:?}");
        // Whichever copy comes first wins; the other asker is told to cancel.
        let arrived = picker.arrived(2, extra[0], 1024, now);
        assert_eq!(arrived.cancel, vec![1]);
        assert!(!picker.arrived(1, extra[0], 1024, now).new);
    }

    #[test]
    fn a_timed_out_request_goes_to_another_peer() {
        let start = Instant::now();
        let mut picker = Picker::new(Bitfield::new(1), 1024, T);
        picker.add_peer(1, Bitfield::full(1));
        assert_eq!(picker.next_requests(1, start), vec![0]);
        picker.add_peer(2, Bitfield::full(1));
        // Endgame lets peer 2 take a copy at once; without it, only after the timeout.
        assert_eq!(picker.next_requests(2, start), vec![0]);
        picker.failed(2, 0);
        assert!(picker.expire(start + T / 2).is_empty());
        assert_eq!(picker.expire(start + T), vec![(1, 0)]);
        assert_eq!(picker.window(1), MIN_WINDOW);
        assert_eq!(picker.next_requests(2, start + T), vec![0]);
        assert!(picker.asked(2, 0) && !picker.asked(1, 0));
    }

    #[test]
    fn the_window_follows_the_rate() {
        let start = Instant::now();
        let chunk = 256 * 1024;
        let mut picker = Picker::new(Bitfield::new(1000), chunk, T);
        picker.add_peer(1, Bitfield::full(1000));
        let first = picker.next_requests(1, start);
        assert_eq!(first.len(), MIN_WINDOW);
        // 40 pieces in one second: 10 MiB/s → half a second = 20 pieces.
        let asked = first.clone();
        let mut pending = asked;
        for i in 1..=40u64 {
            let now = start + Duration::from_millis(25 * i);
            let piece = pending.remove(0);
            picker.arrived(1, piece, chunk as usize, now);
            pending.extend(picker.next_requests(1, now));
        }
        let w = picker.window(1);
        assert!((15..=25).contains(&w), "window {w}");
    }

    #[test]
    fn a_departed_peer_returns_its_requests() {
        let now = Instant::now();
        let mut picker = Picker::new(Bitfield::new(2), 1024, T);
        picker.add_peer(1, Bitfield::full(2));
        assert_eq!(picker.next_requests(1, now).len(), 2);
        picker.remove_peer(1);
        picker.add_peer(2, bits(2, &[1]));
        assert_eq!(picker.next_requests(2, now), vec![1]);
    }
}
