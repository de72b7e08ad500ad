//! The congestion controller of QUIC sessions: BBR's model (bottleneck bandwidth ×
//! minimum round trip = what the path holds), without reading random loss as congestion.
//!
//! Why our own: on the project's WAN emulator (docs/architecture.md), quinn's BBR (an
//! experimental BBRv1) overflowed a one-BDP bottleneck queue so hard that a third of its
//! packets were dropped there (0.5% were random loss); noq's BBRv3 aborted the connection
//! on the same link ("too many gaps in stream buffer"); Cubic and NewReno, like the
//! operating system's Cubic TCP, collapse on random loss (0.5% at 150 ms: < 1% of the
//! link). This one keeps a window of [`CWND_GAIN`] × the estimated bandwidth-delay
//! product — enough to keep the bottleneck busy, with a standing queue of half a BDP at
//! most — and quinn paces it at 1.25 × window / RTT.
//!
//! - **Bandwidth**: the delivery rate (bytes acknowledged per round of one minimum RTT),
//!   max-filtered over the last [`BW_ROUNDS`] rounds; rounds the application left idle
//!   only count when they raise it.
//! - **Startup**: the window doubles each round trip (slow start) until the bandwidth
//!   stops growing by 25% for three rounds the application kept busy, eight round
//!   trips in a row are an eighth longer than the path's (a queue is building:
//!   HyStart++'s signal, RFC 9406), or a round loses more than [`HIGH_LOSS`] — then
//!   the window drops to the model's at once, which drains the queue startup built.
//! - **Loss**: ignored up to [`HIGH_LOSS`] per round (random loss on a long path); a round
//!   above it is the bottleneck's queue overflowing — the next round's window is one
//!   BDP, which empties the queue; persistent congestion (RFC 9002 §7.6) starts over.
//! - **Probing**: a window above one BDP lets the delivery rate rise by up to half per
//!   round when the path gives more, so the estimate follows it without gain cycles; a
//!   competing flow that takes its share lowers the samples, and the max filter forgets
//!   the old rate after [`BW_ROUNDS`] rounds.

use std::any::Any;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quinn::congestion::{Controller, ControllerFactory, ControllerMetrics};

/// Window over the bandwidth-delay product in steady state.
pub const CWND_GAIN: f64 = 1.5;
/// Rounds the bandwidth's max filter remembers.
pub const BW_ROUNDS: usize = 10;
/// Loss per round above which loss is congestion, not noise (the lossiest
/// profile has 2% random loss).
pub const HIGH_LOSS: f64 = 0.10;
/// The round trip the window is sized for at least (see [`Model::set_window`]).
const MIN_WINDOW_RTT: Duration = Duration::from_millis(4);
/// Shortest round, so that a sub-millisecond path (loopback) still samples over a
/// stretch long enough to average its bursts.
const MIN_ROUND: Duration = Duration::from_millis(2);
/// Startup's exit on delay (HyStart++, RFC 9406 §4.2): round trips above the path's by
/// an eighth of it (at least 4, at most 16 ms) mean the bottleneck's queue is building.
const RTT_THRESH_MIN: Duration = Duration::from_millis(4);
const RTT_THRESH_MAX: Duration = Duration::from_millis(16);
/// The first round trip's window, in datagrams. RFC 9002 suggests 10 (14,720 bytes);
/// a bulk transfer on a long path spends its first round trips far below the link's
/// rate, and 32 paced datagrams (38 KB at the minimum datagram size) are less than a
/// millisecond of a 100 Mbit/s link's queue. Measured: 0.2 s sooner for 200 MiB at
/// 150 ms (docs/benchmarks-wan.md).
pub const INITIAL_WINDOW_PACKETS: u64 = 32;
/// Delayed round trips in a row that end startup (one alone may be jitter).
const DELAYED_IN_A_ROW: u32 = 8;

/// The controller's state, independent of quinn (unit-tested on a simulated link).
#[derive(Debug, Clone)]
pub struct Model {
    mtu: u64,
    window: u64,
    startup: bool,
    /// Startup rounds in a row without 25% more bandwidth.
    plateau_rounds: u32,
    plateau_bw: f64,
    round_start: Option<Instant>,
    round_acked: u64,
    round_lost: u64,
    round_app_limited: bool,
    /// The shortest round trip acknowledged in this round (for the trace).
    round_min_rtt: Option<Duration>,
    /// Round trips in a row that saw a queue (startup's exit signal).
    delayed_in_a_row: u32,
    /// The last rounds' delivery rates (bytes/s).
    samples: VecDeque<f64>,
    /// The round after a high-loss round drains to one BDP.
    draining: bool,
}

impl Model {
    /// A fresh connection: [`INITIAL_WINDOW_PACKETS`] datagrams.
    pub fn new(mtu: u16) -> Self {
        let mtu = u64::from(mtu);
        Model {
            mtu,
            window: Self::initial_window_for(mtu),
            startup: true,
            plateau_rounds: 0,
            plateau_bw: 0.0,
            round_start: None,
            round_acked: 0,
            round_lost: 0,
            round_app_limited: false,
            round_min_rtt: None,
            delayed_in_a_row: 0,
            samples: VecDeque::with_capacity(BW_ROUNDS),
            draining: false,
        }
    }

    fn initial_window_for(mtu: u64) -> u64 {
        INITIAL_WINDOW_PACKETS * mtu
    }

    fn min_window(&self) -> u64 {
        4 * self.mtu
    }

    /// The congestion window (bytes in flight allowed).
    pub fn window(&self) -> u64 {
        self.window
    }

    /// Whether the model is still in startup.
    pub fn in_startup(&self) -> bool {
        self.startup
    }

    /// The bottleneck bandwidth estimate, bytes/s.
    pub fn bandwidth(&self) -> f64 {
        self.samples.iter().copied().fold(0.0, f64::max)
    }

    /// `bytes` sent at `sent` were acknowledged; `min_rtt` is the path's shortest round
    /// trip so far.
    pub fn on_ack(
        &mut self,
        now: Instant,
        sent: Instant,
        bytes: u64,
        app_limited: bool,
        min_rtt: Duration,
    ) {
        let start = *self.round_start.get_or_insert(now);
        let rtt = now.saturating_duration_since(sent);
        self.round_min_rtt = Some(self.round_min_rtt.map_or(rtt, |r| r.min(rtt)));
        self.round_acked += bytes;
        self.round_app_limited |= app_limited;
        if !self.startup {
            return;
        }
        self.window += bytes;
        // Leaving at once, not at the round's end, keeps slow start's last doubling out
        // of the queue.
        let threshold = (min_rtt / 8).clamp(RTT_THRESH_MIN, RTT_THRESH_MAX);
        if rtt > min_rtt + threshold {
            self.delayed_in_a_row += 1;
        } else {
            self.delayed_in_a_row = 0;
        }
        if self.delayed_in_a_row >= DELAYED_IN_A_ROW {
            let elapsed = now.saturating_duration_since(start).as_secs_f64();
            if elapsed > 0.0 {
                // This round's delivery so far: the bottleneck's rate, as the queue builds.
                self.push_sample(self.round_acked as f64 / elapsed);
            }
            self.leave_startup(min_rtt);
        }
    }

    /// `bytes` were declared lost.
    pub fn on_loss(&mut self, bytes: u64) {
        self.round_lost += bytes;
    }

    /// Persistent congestion: nothing got through for several round trips.
    pub fn on_persistent_congestion(&mut self) {
        self.window = self.min_window();
        self.samples.clear();
        self.startup = true;
        self.plateau_rounds = 0;
        self.plateau_bw = 0.0;
        self.delayed_in_a_row = 0;
    }

    fn push_sample(&mut self, rate: f64) {
        if self.samples.len() == BW_ROUNDS {
            self.samples.pop_front();
        }
        self.samples.push_back(rate);
    }

    fn leave_startup(&mut self, min_rtt: Duration) {
        self.startup = false;
        self.set_window(min_rtt, CWND_GAIN);
    }

    fn set_window(&mut self, min_rtt: Duration, gain: f64) {
        // Below a few milliseconds the round trip is the hosts' own scheduling and
        // acknowledgement batching, not the path: a window of bandwidth × min RTT would
        // starve a LAN or loopback path between two bursts of acknowledgements.
        let bdp = self.bandwidth() * min_rtt.max(MIN_WINDOW_RTT).as_secs_f64();
        self.window = ((bdp * gain) as u64).max(self.min_window());
    }

    /// After a batch of acknowledgements: closes the round when one minimum RTT has
    /// passed, and sets the window from the model.
    pub fn on_end_acks(&mut self, now: Instant, min_rtt: Duration) {
        let Some(start) = self.round_start else {
            return;
        };
        let elapsed = now.saturating_duration_since(start);
        if elapsed < min_rtt.max(MIN_ROUND) {
            return;
        }
        let rate = self.round_acked as f64 / elapsed.as_secs_f64();
        let loss = self.round_lost as f64 / (self.round_acked + self.round_lost).max(1) as f64;
        let app_limited = self.round_app_limited;
        if !app_limited || rate > self.bandwidth() {
            self.push_sample(rate);
        }
        let round_rtt = self.round_min_rtt.take().unwrap_or(min_rtt);
        self.round_start = Some(now);
        self.round_acked = 0;
        self.round_lost = 0;
        self.round_app_limited = false;
        tracing::trace!(
            target: "p2p_core::net::congestion",
            rate,
            bw = self.bandwidth(),
            loss,
            window = self.window,
            startup = self.startup,
            min_rtt_ms = min_rtt.as_secs_f64() * 1e3,
            round_rtt_ms = round_rtt.as_secs_f64() * 1e3,
            "round"
        );
        if self.startup {
            // A round the application left idle says nothing about the path.
            let bw = self.bandwidth();
            if bw >= self.plateau_bw * 1.25 {
                self.plateau_bw = bw;
                self.plateau_rounds = 0;
            } else if !app_limited {
                self.plateau_rounds += 1;
            }
            if self.plateau_rounds >= 3 || loss > HIGH_LOSS {
                self.leave_startup(min_rtt);
            }
            return;
        }
        let gain = if self.draining { 1.0 } else { CWND_GAIN };
        self.draining = loss > HIGH_LOSS;
        self.set_window(min_rtt, gain);
    }

    /// The path's datagram size changed.
    pub fn on_mtu(&mut self, mtu: u16) {
        self.mtu = u64::from(mtu);
        self.window = self.window.max(self.min_window());
    }
}

/// The controller quinn runs: [`Model`] behind quinn's trait.
#[derive(Debug, Clone)]
pub struct SteadyBbr {
    model: Model,
    /// The path's minimum round trip as of the last acknowledgement.
    min_rtt: Duration,
}

impl Controller for SteadyBbr {
    fn on_ack(
        &mut self,
        now: Instant,
        sent: Instant,
        bytes: u64,
        app_limited: bool,
        rtt: &quinn_proto::RttEstimator,
    ) {
        self.min_rtt = rtt.min();
        self.model
            .on_ack(now, sent, bytes, app_limited, self.min_rtt);
    }

    fn on_end_acks(
        &mut self,
        now: Instant,
        _in_flight: u64,
        _app_limited: bool,
        _largest_packet_num_acked: Option<u64>,
    ) {
        self.model.on_end_acks(now, self.min_rtt);
    }

    fn on_congestion_event(
        &mut self,
        _now: Instant,
        _sent: Instant,
        is_persistent_congestion: bool,
        lost_bytes: u64,
    ) {
        if is_persistent_congestion {
            self.model.on_persistent_congestion();
        } else {
            self.model.on_loss(lost_bytes);
        }
    }

    fn on_mtu_update(&mut self, new_mtu: u16) {
        self.model.on_mtu(new_mtu);
    }

    fn window(&self) -> u64 {
        self.model.window()
    }

    fn metrics(&self) -> ControllerMetrics {
        let mut metrics = ControllerMetrics::default();
        metrics.congestion_window = self.model.window();
        metrics
    }

    fn clone_box(&self) -> Box<dyn Controller> {
        Box::new(self.clone())
    }

    fn initial_window(&self) -> u64 {
        Model::initial_window_for(self.model.mtu)
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}

/// Builds a [`SteadyBbr`] per connection.
#[derive(Debug, Clone, Copy, Default)]
pub struct SteadyBbrConfig;

impl ControllerFactory for SteadyBbrConfig {
    fn build(self: Arc<Self>, _now: Instant, current_mtu: u16) -> Box<dyn Controller> {
        Box::new(SteadyBbr {
            model: Model::new(current_mtu),
            min_rtt: Duration::ZERO,
        })
    }
}

#[cfg(test)]
mod tests {
    //! [`Model`] on a simulated link: a bottleneck of `rate` with a tail-drop queue of
    //! one bandwidth-delay product, a one-way delay each way, random loss on the way
    //! out; the sender is window-limited and paced like quinn (1.25 × window / RTT).
    use super::*;
    use rand::{Rng, SeedableRng};

    const MTU: u64 = 1200;

    struct Link {
        rate: f64,
        delay: Duration,
        queue: u64,
        loss: f64,
    }

    #[derive(Default, Debug)]
    struct Outcome {
        /// Bytes delivered in each second.
        per_second: Vec<u64>,
        queue_drops: u64,
        sent: u64,
    }

    impl Outcome {
        /// Link utilisation from second `from` to the end.
        fn utilisation(&self, link_rate: f64, from: usize) -> f64 {
            let tail = &self.per_second[from..];
            tail.iter().sum::<u64>() as f64 / tail.len() as f64 / link_rate
        }
    }

    /// Runs `seconds` of a backlogged sender; `rate_at(t)` may change the bottleneck.
    fn simulate(link: &Link, seconds: usize, rate_at: impl Fn(f64) -> f64) -> Outcome {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let start = Instant::now();
        let mut model = Model::new(MTU as u16);
        let step = Duration::from_micros(50);
        let mut now = start;
        let end = start + Duration::from_secs(seconds as u64);
        let mut bottleneck_free = start;
        // Packets queued at or crossing the bottleneck: (leaves it at, sent at).
        let mut queued: VecDeque<(Instant, Instant)> = VecDeque::new();
        let mut acks: VecDeque<(Instant, Instant)> = VecDeque::new(); // (arrives, sent)
        let mut losses: VecDeque<Instant> = VecDeque::new(); // detected at
        let (mut in_flight, mut next_send) = (0u64, start);
        let (mut min_rtt, mut srtt) = (Duration::MAX, link.delay * 2);
        let mut out = Outcome {
            per_second: vec![0; seconds],
            ..Outcome::default()
        };
        while now < end {
            let t = now.duration_since(start).as_secs_f64();
            while queued.front().is_some_and(|(leaves, _)| *leaves <= now) {
                let (leaves, sent) = queued.pop_front().unwrap();
                let delivered = leaves + link.delay;
                let second = (delivered.duration_since(start).as_secs() as usize).min(seconds - 1);
                out.per_second[second] += MTU;
                acks.push_back((delivered + link.delay, sent));
            }
            let mut acked = false;
            while acks.front().is_some_and(|(at, _)| *at <= now) {
                let (_, sent) = acks.pop_front().unwrap();
                let rtt = now - sent;
                min_rtt = min_rtt.min(rtt);
                srtt = (srtt * 7 + rtt) / 8;
                in_flight -= MTU;
                model.on_ack(now, sent, MTU, false, min_rtt);
                acked = true;
            }
            while losses.front().is_some_and(|at| *at <= now) {
                losses.pop_front();
                in_flight -= MTU;
                model.on_loss(MTU);
                acked = true;
            }
            if acked {
                model.on_end_acks(now, min_rtt);
            }
            // Paced, window-limited sending.
            while in_flight + MTU <= model.window() && next_send <= now {
                let pace = 1.25 * model.window() as f64 / srtt.as_secs_f64();
                next_send = now + Duration::from_secs_f64(MTU as f64 / pace);
                in_flight += MTU;
                out.sent += MTU;
                let full = queued.len() as u64 * MTU + MTU > link.queue;
                if full || rng.random::<f64>() < link.loss {
                    if full {
                        out.queue_drops += MTU;
                    }
                    losses.push_back(now + srtt * 9 / 8 + Duration::from_millis(1));
                    continue;
                }
                let service = Duration::from_secs_f64(MTU as f64 / rate_at(t));
                bottleneck_free = bottleneck_free.max(now) + service;
                queued.push_back((bottleneck_free, now));
            }
            now += step;
        }
        out
    }

    fn link(mbit: f64, rtt_ms: u64, loss: f64) -> Link {
        let rate = mbit * 1e6 / 8.0;
        let delay = Duration::from_millis(rtt_ms / 2);
        Link {
            rate,
            delay,
            queue: ((rate * 2.0 * delay.as_secs_f64()) as u64).max(64 * 1024),
            loss,
        }
    }

    #[test]
    fn random_loss_does_not_collapse_the_rate() {
        for (name, l, settle) in [
            ("lossy 50 Mbit/s 30 ms 2%", link(50.0, 30, 0.02), 3),
            (
                "intercontinental 100 Mbit/s 150 ms 0.5%",
                link(100.0, 150, 0.005),
                6,
            ),
            (
                "satellite 50 Mbit/s 600 ms 0.5%",
                link(50.0, 600, 0.005),
                12,
            ),
        ] {
            let out = simulate(&l, 30, |_| l.rate);
            let used = out.utilisation(l.rate, settle);
            assert!(
                used >= 0.9,
                "{name}: {:.1}% of the link after {settle} s: {out:?}",
                used * 100.0
            );
        }
    }

    #[test]
    fn the_bottleneck_queue_is_not_kept_overflowing() {
        let l = link(100.0, 150, 0.0);
        let out = simulate(&l, 30, |_| l.rate);
        assert!(out.utilisation(l.rate, 5) >= 0.95, "{out:?}");
        // Startup may overshoot a little; after that the window stays below what
        // overflows a one-BDP queue.
        assert!(
            (out.queue_drops as f64) < out.sent as f64 * 0.005,
            "{} of {} bytes dropped at the queue",
            out.queue_drops,
            out.sent
        );
    }

    #[test]
    fn a_narrower_bottleneck_is_followed_down_and_a_wider_one_up() {
        let l = link(50.0, 40, 0.001);
        // 50 Mbit/s, then 20 (another flow took the rest), then 50 again.
        let rate_at = |t: f64| {
            if (10.0..20.0).contains(&t) {
                l.rate * 0.4
            } else {
                l.rate
            }
        };
        let out = simulate(&l, 30, rate_at);
        let second = |s: usize| out.per_second[s] as f64;
        let narrow: f64 = (14..20).map(second).sum::<f64>() / 6.0;
        let wide_again: f64 = (24..30).map(second).sum::<f64>() / 6.0;
        assert!(narrow >= l.rate * 0.4 * 0.9, "narrow: {narrow} {out:?}");
        assert!(
            wide_again >= l.rate * 0.9,
            "wide again: {wide_again} {out:?}"
        );
    }
}
