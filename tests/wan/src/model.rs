//! The link model of one direction, pure: no sockets, no clock. Time is a number of
//! nanoseconds that the caller supplies, so the tests drive it exactly.
//!
//! On arrival a frame is dropped with probability `loss`; otherwise, if the bottleneck
//! queue (the bytes not yet serialised onto the link) would exceed its limit, it is
//! tail-dropped; otherwise it leaves the bottleneck at
//! `departure = max(now, last_departure) + len·8 / rate` and is delivered at
//! `departure + delay`, in order.

use std::collections::VecDeque;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Nanoseconds on the caller's clock.
pub type Nanos = u64;

/// What one direction of the link does.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LinkParams {
    /// Bottleneck rate in bits per second (> 0).
    pub rate_bps: u64,
    /// One-way propagation delay added after the bottleneck.
    pub delay_ns: Nanos,
    /// Probability in [0, 1) that a frame is lost on arrival.
    pub loss: f64,
    /// Tail-drop limit of the bottleneck queue, in bytes.
    pub queue_bytes: u64,
}

/// What happened to an arriving frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Accepted: leaves the bottleneck at `departure`, delivered at `delivery`.
    Queued { departure: Nanos, delivery: Nanos },
    /// Lost at random.
    DroppedLoss,
    /// The queue was full.
    DroppedQueue,
}

/// Counters of one direction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkStats {
    pub forwarded_frames: u64,
    pub forwarded_bytes: u64,
    pub dropped_loss_frames: u64,
    pub dropped_loss_bytes: u64,
    pub dropped_queue_frames: u64,
    pub dropped_queue_bytes: u64,
    /// The largest bottleneck queue seen, in bytes (including the frame being serialised).
    pub max_queue_bytes: u64,
    /// The bottleneck queue after the last event, in bytes.
    pub queue_bytes: u64,
}

struct InFlight<P> {
    delivery: Nanos,
    len: usize,
    payload: P,
}

/// One direction of the emulated link, holding the frames it has accepted until they are
/// due. Memory is bounded: the bottleneck queue by `queue_bytes`, the delay line by
/// `rate × delay`.
pub struct Link<P> {
    params: LinkParams,
    rng: StdRng,
    last_departure: Nanos,
    /// Remainder of `bits × 10⁹ / rate` not yet turned into whole nanoseconds, so that
    /// a backlogged link runs at exactly `rate` however the frame sizes divide.
    carry: u128,
    /// Departure time and length of each frame still in the bottleneck (departure > now).
    bottleneck: VecDeque<(Nanos, u64)>,
    queued: u64,
    line: VecDeque<InFlight<P>>,
    stats: LinkStats,
}

impl<P> Link<P> {
    pub fn new(params: LinkParams, seed: u64) -> Link<P> {
        assert!(params.rate_bps > 0, "rate must be positive");
        Link {
            params,
            rng: StdRng::seed_from_u64(seed),
            last_departure: 0,
            carry: 0,
            bottleneck: VecDeque::new(),
            queued: 0,
            line: VecDeque::new(),
            stats: LinkStats::default(),
        }
    }

    pub fn params(&self) -> &LinkParams {
        &self.params
    }

    /// Frames whose departure is at or before `now` have left the bottleneck queue.
    fn drain_bottleneck(&mut self, now: Nanos) {
        while let Some(&(departure, len)) = self.bottleneck.front() {
            if departure > now {
                break;
            }
            self.bottleneck.pop_front();
            self.queued -= len;
        }
        self.stats.queue_bytes = self.queued;
    }

    /// A frame of `len` bytes arrives at `now` (never earlier than a previous arrival).
    pub fn arrive(&mut self, now: Nanos, len: usize, payload: P) -> Verdict {
        let bytes = len as u64;
        if self.params.loss > 0.0 && self.rng.random::<f64>() < self.params.loss {
            self.stats.dropped_loss_frames += 1;
            self.stats.dropped_loss_bytes += bytes;
            return Verdict::DroppedLoss;
        }
        self.drain_bottleneck(now);
        if self.queued + bytes > self.params.queue_bytes {
            self.stats.dropped_queue_frames += 1;
            self.stats.dropped_queue_bytes += bytes;
            return Verdict::DroppedQueue;
        }
        let start = if now >= self.last_departure {
            // The link was idle: nothing left over from earlier frames.
            self.carry = 0;
            now
        } else {
            self.last_departure
        };
        let bit_ns = u128::from(bytes) * 8 * 1_000_000_000 + self.carry;
        let rate = u128::from(self.params.rate_bps);
        let serialise = (bit_ns / rate) as u64;
        self.carry = bit_ns % rate;
        let departure = start + serialise;
        self.last_departure = departure;
        let delivery = departure + self.params.delay_ns;
        self.bottleneck.push_back((departure, bytes));
        self.queued += bytes;
        self.stats.queue_bytes = self.queued;
        self.stats.max_queue_bytes = self.stats.max_queue_bytes.max(self.queued);
        self.line.push_back(InFlight {
            delivery,
            len,
            payload,
        });
        Verdict::Queued {
            departure,
            delivery,
        }
    }

    /// When the next frame is due, if any is in flight.
    pub fn next_delivery(&self) -> Option<Nanos> {
        self.line.front().map(|f| f.delivery)
    }

    /// The next frame if it is due at `now` (in arrival order).
    pub fn pop_due(&mut self, now: Nanos) -> Option<P> {
        if self.line.front()?.delivery > now {
            return None;
        }
        let frame = self.line.pop_front()?;
        self.stats.forwarded_frames += 1;
        self.stats.forwarded_bytes += frame.len as u64;
        self.drain_bottleneck(now);
        Some(frame.payload)
    }

    /// Frames accepted and not yet delivered.
    pub fn in_flight(&self) -> usize {
        self.line.len()
    }

    pub fn stats(&self) -> LinkStats {
        self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Nanos = 1_000_000;

    fn params(rate_bps: u64, delay_ns: Nanos, loss: f64, queue_bytes: u64) -> LinkParams {
        LinkParams {
            rate_bps,
            delay_ns,
            loss,
            queue_bytes,
        }
    }

    #[test]
    fn backlogged_frames_leave_at_exactly_the_rate() {
        // 8 Mbit/s: a 1000-byte frame takes exactly 1 ms on the link.
        let mut link = Link::new(params(8_000_000, 5 * MS, 0.0, 1 << 20), 1);
        for i in 0..100u64 {
            let verdict = link.arrive(0, 1000, i);
            assert_eq!(
                verdict,
                Verdict::Queued {
                    departure: (i + 1) * MS,
                    delivery: (i + 1) * MS + 5 * MS
                }
            );
        }
        // A rate that does not divide the frame: 3 Mbit/s, 8000 bits = 2.666… ms. The
        // remainder is carried, so 300 frames take exactly 800 ms.
        let mut link = Link::new(params(3_000_000, 0, 0.0, 1 << 20), 1);
        let mut last = 0;
        for i in 0..300u64 {
            match link.arrive(0, 1000, i) {
                Verdict::Queued { departure, .. } => {
                    // Every departure is the exact time rounded down.
                    assert_eq!(departure, (i + 1) * 8_000 * 1_000_000_000 / 3_000_000);
                    last = departure;
                }
                other => panic!("frame {i}: {other:?}"),
            }
        }
        assert_eq!(last, 800 * MS);
    }

    #[test]
    fn an_idle_link_starts_at_the_arrival_and_adds_the_delay() {
        let mut link = Link::new(params(8_000_000, 20 * MS, 0.0, 1 << 20), 1);
        assert_eq!(
            link.arrive(1000 * MS, 500, ()),
            Verdict::Queued {
                departure: 1000 * MS + MS / 2,
                delivery: 1000 * MS + MS / 2 + 20 * MS
            }
        );
        // Long after the first one left: no queueing, only serialisation and delay.
        assert_eq!(
            link.arrive(2000 * MS, 1000, ()),
            Verdict::Queued {
                departure: 2001 * MS,
                delivery: 2021 * MS
            }
        );
        // Arriving while the previous one is still on the link: waits for it.
        assert_eq!(
            link.arrive(2000 * MS + MS / 2, 1000, ()),
            Verdict::Queued {
                departure: 2002 * MS,
                delivery: 2022 * MS
            }
        );
    }

    #[test]
    fn frames_are_delivered_at_their_time_and_not_before() {
        let mut link = Link::new(params(8_000_000, 10 * MS, 0.0, 1 << 20), 1);
        link.arrive(0, 1000, "a");
        link.arrive(0, 1000, "b");
        assert_eq!(link.next_delivery(), Some(11 * MS));
        assert_eq!(link.pop_due(11 * MS - 1), None);
        assert_eq!(link.pop_due(11 * MS), Some("a"));
        assert_eq!(link.pop_due(11 * MS), None);
        assert_eq!(link.next_delivery(), Some(12 * MS));
        assert_eq!(link.pop_due(50 * MS), Some("b"));
        assert_eq!(link.next_delivery(), None);
        let stats = link.stats();
        assert_eq!((stats.forwarded_frames, stats.forwarded_bytes), (2, 2000));
    }

    #[test]
    fn a_full_queue_drops_the_tail() {
        // Queue of 3000 bytes: three 1000-byte frames fit, the fourth does not.
        let mut link = Link::new(params(8_000_000, 0, 0.0, 3000), 1);
        for i in 0..3 {
            assert!(matches!(link.arrive(0, 1000, i), Verdict::Queued { .. }));
        }
        assert_eq!(link.arrive(0, 1000, 3), Verdict::DroppedQueue);
        assert_eq!(link.arrive(0, 1, 4), Verdict::DroppedQueue);
        // After 1 ms the first has left the bottleneck: room for exactly one more, and it
        // leaves after the third.
        assert_eq!(
            link.arrive(MS, 1000, 5),
            Verdict::Queued {
                departure: 4 * MS,
                delivery: 4 * MS
            }
        );
        assert_eq!(link.arrive(MS, 1000, 6), Verdict::DroppedQueue);
        let stats = link.stats();
        assert_eq!(stats.dropped_queue_frames, 3);
        assert_eq!(stats.dropped_queue_bytes, 2001);
        assert_eq!(stats.max_queue_bytes, 3000);
        assert_eq!(stats.dropped_loss_frames, 0);
        // Frames in the delay line do not count against the queue: with a long delay the
        // queue still empties at the rate.
        let mut link = Link::new(params(8_000_000, 1000 * MS, 0.0, 2000), 1);
        for t in 0..50 {
            assert!(matches!(
                link.arrive(t * MS, 1000, ()),
                Verdict::Queued { .. }
            ));
        }
        assert_eq!(link.in_flight(), 50);
    }

    #[test]
    fn random_loss_is_close_to_its_probability() {
        for (p, seed) in [(0.02, 7), (0.005, 8), (0.001, 9)] {
            let mut link = Link::new(params(1_000_000_000_000, 0, p, u64::MAX), seed);
            let n = 100_000u64;
            for i in 0..n {
                // Spaced out so that the queue never fills.
                link.arrive(i * MS, 100, ());
                while link.pop_due(i * MS).is_some() {}
            }
            let stats = link.stats();
            assert_eq!(stats.dropped_queue_frames, 0);
            assert_eq!(stats.dropped_loss_frames + stats.forwarded_frames, n);
            let expected = p * n as f64;
            let sigma = (n as f64 * p * (1.0 - p)).sqrt();
            let lost = stats.dropped_loss_frames as f64;
            assert!(
                (lost - expected).abs() < 4.0 * sigma,
                "p={p}: lost {lost} of {n}, expected {expected} ± {}",
                4.0 * sigma
            );
        }
        // No loss configured: nothing lost.
        let mut link = Link::new(params(1_000_000_000, 0, 0.0, u64::MAX), 1);
        for i in 0..10_000 {
            link.arrive(i, 100, ());
        }
        assert_eq!(link.stats().dropped_loss_frames, 0);
    }

    #[test]
    fn the_same_seed_loses_the_same_frames() {
        let run = |seed| {
            let mut link = Link::new(params(1_000_000_000, 0, 0.1, u64::MAX), seed);
            (0..1000u64)
                .map(|i| link.arrive(i * MS, 100, ()) == Verdict::DroppedLoss)
                .collect::<Vec<_>>()
        };
        assert_eq!(run(42), run(42));
        assert_ne!(run(42), run(43));
    }

    #[test]
    fn delivery_is_in_order_whatever_the_sizes() {
        let mut link = Link::new(params(10_000_000, 3 * MS, 0.01, 64 * 1024), 3);
        let mut rng = StdRng::seed_from_u64(5);
        let mut now = 0;
        let mut accepted = Vec::new();
        let mut delivered = Vec::new();
        let mut last_delivery = 0;
        for i in 0..20_000u64 {
            now += rng.random_range(0..200_000);
            let len = rng.random_range(60..1515);
            if let Verdict::Queued { delivery, .. } = link.arrive(now, len, i) {
                assert!(delivery >= last_delivery);
                last_delivery = delivery;
                accepted.push(i);
            }
            while let Some(i) = link.pop_due(now) {
                delivered.push(i);
            }
        }
        while let Some(i) = link.pop_due(u64::MAX) {
            delivered.push(i);
        }
        assert_eq!(accepted, delivered);
        let stats = link.stats();
        assert!(
            stats.dropped_queue_frames > 0,
            "the test should fill the queue"
        );
        assert!(stats.max_queue_bytes <= 64 * 1024);
    }
}
