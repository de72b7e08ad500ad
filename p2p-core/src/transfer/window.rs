//! The sliding window: which chunks are in flight, since when, and how often they were
//! sent. Acknowledgements may arrive in any order.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::wire::ChunkRef;

/// How long an unacknowledged chunk waits before it is sent again. Over TCP a chunk is
/// never lost while the connection lives, so this is a backstop for transports without
/// retransmission; a dead connection is caught by the keepalive first.
pub const DEFAULT_RTO: Duration = Duration::from_secs(30);
/// Sends of one chunk (first send included) before the transfer fails.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 4;

#[derive(Debug, Clone, Copy)]
struct Flight {
    deadline: Instant,
    attempts: u32,
}

/// Chunks sent and not yet acknowledged.
#[derive(Debug, Clone)]
pub struct Window {
    capacity: usize,
    rto: Duration,
    in_flight: BTreeMap<ChunkRef, Flight>,
}

impl Window {
    pub fn new(capacity: usize, rto: Duration) -> Self {
        Self {
            capacity: capacity.max(1),
            rto,
            in_flight: BTreeMap::new(),
        }
    }

    /// Whether one more new chunk may be sent.
    pub fn has_room(&self) -> bool {
        self.in_flight.len() < self.capacity
    }

    /// Most chunks in flight at once.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn len(&self) -> usize {
        self.in_flight.len()
    }

    pub fn is_empty(&self) -> bool {
        self.in_flight.is_empty()
    }

    pub fn contains(&self, at: ChunkRef) -> bool {
        self.in_flight.contains_key(&at)
    }

    /// Records a (re)transmission; returns how many times the chunk has now been sent.
    pub fn sent(&mut self, at: ChunkRef, now: Instant) -> u32 {
        let flight = self.in_flight.entry(at).or_insert(Flight {
            deadline: now,
            attempts: 0,
        });
        flight.attempts += 1;
        flight.deadline = now + self.rto;
        flight.attempts
    }

    /// How many times a chunk in flight has been sent.
    pub fn attempts(&self, at: ChunkRef) -> u32 {
        self.in_flight.get(&at).map_or(0, |f| f.attempts)
    }

    /// Removes an acknowledged chunk; false if it was not in flight (duplicate ack).
    pub fn ack(&mut self, at: ChunkRef) -> bool {
        self.in_flight.remove(&at).is_some()
    }

    /// Earliest retransmission deadline.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.in_flight.values().map(|f| f.deadline).min()
    }

    /// Chunks whose deadline has passed; their deadlines are pushed out so that each is
    /// reported once per timeout.
    pub fn expire(&mut self, now: Instant) -> Vec<ChunkRef> {
        let mut expired = Vec::new();
        for (at, flight) in &mut self.in_flight {
            if flight.deadline <= now {
                flight.deadline = now + self.rto;
                expired.push(*at);
            }
        }
        expired
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(index: u64) -> ChunkRef {
        ChunkRef { file: 0, index }
    }

    #[test]
    fn out_of_order_acks_free_the_window() {
        let t0 = Instant::now();
        let mut w = Window::new(2, Duration::from_secs(1));
        assert_eq!(w.sent(c(0), t0), 1);
        w.sent(c(1), t0);
        assert!(!w.has_room());
        assert!(w.ack(c(1)));
        assert!(!w.ack(c(1)), "duplicate ack");
        assert!(w.has_room());
        assert_eq!(w.next_deadline(), Some(t0 + Duration::from_secs(1)));
        assert!(w.expire(t0).is_empty());
        assert_eq!(w.expire(t0 + Duration::from_secs(1)), vec![c(0)]);
        assert_eq!(w.sent(c(0), t0 + Duration::from_secs(1)), 2);
    }
}
