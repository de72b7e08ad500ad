//! When and how often to try again after a transient failure.
//!
//! [`Backoff`] is the policy only — exponential delays (1 s, 2 s, 4 s … capped at
//! 30 s) and a retry budget — so that the CLI, the GUI and tests share it. Whether an
//! error is worth retrying is [`crate::Error::is_transient`]: network trouble is,
//! disk full, refused paths, failed verification and version mismatches are not.

use std::time::Duration;

/// First delay.
pub const FIRST_DELAY: Duration = Duration::from_secs(1);
/// Longest delay.
pub const MAX_DELAY: Duration = Duration::from_secs(30);

/// Exponential backoff with a retry budget.
#[derive(Debug, Clone)]
pub struct Backoff {
    /// Retries allowed; 0 means no limit.
    max_retries: u32,
    retries: u32,
    first: Duration,
    max: Duration,
}

impl Backoff {
    /// A policy allowing `max_retries` retries (0 = unlimited).
    pub fn new(max_retries: u32) -> Self {
        Self::with_delays(max_retries, FIRST_DELAY, MAX_DELAY)
    }

    /// Same with other delays (tests use short ones).
    pub fn with_delays(max_retries: u32, first: Duration, max: Duration) -> Self {
        Self {
            max_retries,
            retries: 0,
            first,
            max,
        }
    }

    /// The delay before the next retry, or `None` when the budget is spent.
    pub fn next_delay(&mut self) -> Option<Duration> {
        if self.max_retries != 0 && self.retries >= self.max_retries {
            return None;
        }
        let exp = self.retries.min(16);
        self.retries += 1;
        Some((self.first * 2u32.pow(exp)).min(self.max))
    }

    /// Retries used so far.
    pub fn retries(&self) -> u32 {
        self.retries
    }

    /// Progress was made: the next failure starts from the first delay again (the
    /// budget counts consecutive failures).
    pub fn reset(&mut self) {
        self.retries = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_and_respects_the_budget() {
        let mut b = Backoff::new(7);
        let delays: Vec<u64> = std::iter::from_fn(|| b.next_delay())
            .map(|d| d.as_secs())
            .collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 30, 30]);
        b.reset();
        assert_eq!(b.next_delay(), Some(FIRST_DELAY));
        let mut unlimited = Backoff::new(0);
        assert!((0..1000).all(|_| unlimited.next_delay().is_some()));
    }
}
