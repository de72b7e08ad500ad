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
    ///
    /// An acknowledgement also proves that the path delivers: the chunks still in
    /// flight get a full timeout from now (RFC 6298, 5.3: restart the timer when new
    /// data is acknowledged). Chunks queued behind others on a slow link are thus not
    /// sent again merely because the queue takes longer than one timeout to drain.
    pub fn ack(&mut self, at: ChunkRef, now: Instant) -> bool {
        if self.in_flight.remove(&at).is_none() {
            return false;
        }
        let deadline = now + self.rto;
        for flight in self.in_flight.values_mut() {
            flight.deadline = flight.deadline.max(deadline);
        }
        true
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

/// How much data in flight a slow path is given: this long at its measured rate. Long
/// enough to fill any path whose round trip is shorter (a path fills once the data in
/// flight covers rate × round trip), short enough that a ping or an acknowledgement
/// queued behind it is not held up for minutes on a slow link.
pub const IN_FLIGHT_TIME: Duration = Duration::from_secs(2);
/// Chunks allowed in flight however slow the path: one crossing, one queued behind it.
pub const MIN_IN_FLIGHT: usize = 2;
/// Shortest interval one delivery-rate sample spans.
const SAMPLE_TIME: Duration = Duration::from_millis(500);

/// The rate at which the peer acknowledges data, from samples of at least
/// [`SAMPLE_TIME`], smoothed. Used to size the window to the path: a 3 Mbit/s link
/// gets a few chunks in flight, not sixteen megabytes.
#[derive(Debug, Clone, Default)]
pub struct DeliveryRate {
    sample_start: Option<Instant>,
    sample_bytes: u64,
    /// Bytes per second, once measured.
    rate: Option<f64>,
}

impl DeliveryRate {
    /// `bytes` were acknowledged at `now`.
    pub fn on_ack(&mut self, bytes: u64, now: Instant) {
        let Some(start) = self.sample_start else {
            // The first acknowledgement starts the clock; its bytes crossed before it.
            self.sample_start = Some(now);
            return;
        };
        self.sample_bytes = self.sample_bytes.saturating_add(bytes);
        let elapsed = now.saturating_duration_since(start);
        if elapsed >= SAMPLE_TIME {
            let sample = self.sample_bytes as f64 / elapsed.as_secs_f64();
            self.rate = Some(self.rate.map_or(sample, |old| (old + sample) / 2.0));
            self.sample_start = Some(now);
            self.sample_bytes = 0;
        }
    }

    /// Chunks of `chunk_size` to keep in flight: [`IN_FLIGHT_TIME`] at the measured
    /// rate, at least [`MIN_IN_FLIGHT`], at most `capacity` (all of it before the first
    /// measurement).
    pub fn window(&self, capacity: usize, chunk_size: u64) -> usize {
        let Some(rate) = self.rate else {
            return capacity;
        };
        let wanted = (rate * IN_FLIGHT_TIME.as_secs_f64() / chunk_size.max(1) as f64).ceil();
        (wanted as usize).clamp(MIN_IN_FLIGHT.min(capacity), capacity)
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
        assert!(w.ack(c(1), t0));
        assert!(!w.ack(c(1), t0), "duplicate ack");
        assert!(w.has_room());
        assert_eq!(w.next_deadline(), Some(t0 + Duration::from_secs(1)));
        assert!(w.expire(t0).is_empty());
        assert_eq!(w.expire(t0 + Duration::from_secs(1)), vec![c(0)]);
        assert_eq!(w.sent(c(0), t0 + Duration::from_secs(1)), 2);
    }

    /// A slow link: the last chunk of a window waits behind the others longer than one
    /// timeout, but acknowledgements keep arriving — nothing is sent again.
    #[test]
    fn acknowledgements_restart_the_timer_of_chunks_still_in_flight() {
        let t0 = Instant::now();
        let rto = Duration::from_secs(10);
        let mut w = Window::new(4, rto);
        for i in 0..4 {
            w.sent(c(i), t0);
        }
        for i in 0..3 {
            let now = t0 + Duration::from_secs(8 * (i + 1));
            assert!(w.expire(now).is_empty(), "chunk expired at {now:?}");
            assert!(w.ack(c(i), now));
        }
        assert!(w.expire(t0 + Duration::from_secs(30)).is_empty());
        assert_eq!(w.expire(t0 + Duration::from_secs(34)), vec![c(3)]);
    }

    #[test]
    fn the_window_follows_the_measured_rate() {
        let t0 = Instant::now();
        let mut rate = DeliveryRate::default();
        assert_eq!(
            rate.window(16, 1 << 20),
            16,
            "full window before any measurement"
        );
        // 375 KiB/s (3 Mbit/s): two seconds of it is under one 1 MiB chunk.
        for i in 0..=10 {
            rate.on_ack(375 << 10, t0 + Duration::from_secs(i));
        }
        assert_eq!(rate.window(16, 1 << 20), MIN_IN_FLIGHT);
        // 100 MiB/s: the whole window.
        let mut fast = DeliveryRate::default();
        for i in 0..=10 {
            fast.on_ack(50 << 20, t0 + Duration::from_millis(500 * i));
        }
        assert_eq!(fast.window(16, 1 << 20), 16);
        assert_eq!(fast.window(1, 1 << 20), 1, "never beyond the agreed window");
    }
}
