//! Bandwidth limit: a token bucket, pure and clock-free (time comes in as an argument).
//!
//! The bucket refills at `rate` bytes per second up to `burst` bytes. Sending `n` bytes
//! takes `n` tokens; when there are not enough, the bucket goes into debt and
//! [`TokenBucket::reserve`] says how long to wait before sending. The bucket starts
//! empty, so the limit holds from the first byte: over any interval of length `T` at
//! most `rate × T + burst` bytes leave. The driver applies it to every chunk it sends,
//! first sends and retransmissions alike.

use std::time::{Duration, Instant};

/// A token bucket limiting bytes per second.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A bucket for `rate` bytes per second. The burst is a quarter of a second of
    /// data, but at least 64 KiB.
    pub fn new(rate: u64, now: Instant) -> Self {
        let rate = rate.max(1) as f64;
        Self {
            rate,
            burst: (rate / 4.0).max(64.0 * 1024.0),
            tokens: 0.0,
            last: now,
        }
    }

    /// The configured rate, bytes per second.
    pub fn rate(&self) -> u64 {
        self.rate as u64
    }

    /// Takes `bytes` tokens and returns how long to wait before sending them
    /// (zero when the bucket had enough).
    pub fn reserve(&mut self, bytes: usize, now: Instant) -> Duration {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = self.last.max(now);
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.tokens -= bytes as f64;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sends 1 MiB chunks as fast as the bucket allows for 10 virtual seconds.
    fn bytes_in_ten_seconds(rate: u64, chunk: usize) -> f64 {
        let start = Instant::now();
        let mut now = start;
        let mut bucket = TokenBucket::new(rate, now);
        let mut sent = 0u64;
        let end = start + Duration::from_secs(10);
        loop {
            let wait = bucket.reserve(chunk, now);
            now += wait;
            if now > end {
                break;
            }
            sent += chunk as u64;
        }
        sent as f64
    }

    #[test]
    fn holds_the_rate_within_five_percent_over_ten_seconds() {
        for (rate, chunk) in [
            (5 << 20, 1 << 20),
            (20 << 20, 1 << 20),
            (50 << 20, 64 << 10),
            (512 << 10, 16 << 10),
        ] {
            let sent = bytes_in_ten_seconds(rate, chunk);
            let expected = rate as f64 * 10.0;
            let error = (sent - expected).abs() / expected;
            assert!(
                error <= 0.05,
                "rate {rate}: sent {sent}, {:.1}% off",
                error * 100.0
            );
        }
    }

    #[test]
    fn an_idle_sender_gets_at_most_the_burst_at_once() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(1 << 20, t0);
        // After a long pause only the burst (256 KiB) is available without waiting.
        let later = t0 + Duration::from_secs(60);
        assert_eq!(bucket.reserve(256 << 10, later), Duration::ZERO);
        let wait = bucket.reserve(512 << 10, later);
        assert!((wait.as_secs_f64() - 0.5).abs() < 1e-6, "{wait:?}");
    }
}
