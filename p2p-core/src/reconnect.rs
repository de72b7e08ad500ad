//! When and how often to try again after a transient failure.
//!
//! [`Backoff`] is the policy — exponential delays (1 s, 2 s, 4 s … capped at 30 s) and a
//! retry budget — and [`Reconnect::run`] the loop that applies it to any attempt (connect
//! and send, accept and receive), so that the CLI and the GUI reconnect alike. Whether an
//! error is worth retrying is [`crate::Error::is_transient`]: network trouble is, disk
//! full, refused paths, failed verification and version mismatches are not.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::error::{Error, Result};

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

/// Handed to each attempt, which calls [`Progress::connected`] once it has an
/// established session: the budget counts consecutive failures, so it starts over.
#[derive(Debug, Clone, Default)]
pub struct Progress(Arc<AtomicBool>);

impl Progress {
    /// The attempt got as far as an established session.
    pub fn connected(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    fn was_connected(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// A retry that is about to happen, for the front end to show.
#[derive(Debug)]
pub struct Retrying<'a> {
    /// Why the last attempt failed.
    pub error: &'a Error,
    /// How long the loop waits before the next attempt.
    pub delay: Duration,
    /// Which retry this is (1 for the first).
    pub attempt: u32,
}

/// Runs an attempt again after transient failures, with [`Backoff`].
#[derive(Debug, Clone)]
pub struct Reconnect {
    enabled: bool,
    backoff: Backoff,
    gave_up: bool,
    interrupt: crate::Interrupt,
    /// Retry only once an attempt has got as far as a session: a first connection
    /// that fails (a typo in the address, nothing listening) is reported at once.
    once_connected: bool,
}

impl Reconnect {
    /// `enabled`: whether to retry at all (`--auto-reconnect`); `max_retries`: failures
    /// in a row before giving up (0 = no limit).
    pub fn new(enabled: bool, max_retries: u32) -> Self {
        Self::with_backoff(enabled, Backoff::new(max_retries))
    }

    /// Same with another policy (tests use short delays).
    pub fn with_backoff(enabled: bool, backoff: Backoff) -> Self {
        Self {
            enabled,
            backoff,
            gave_up: false,
            interrupt: crate::Interrupt::default(),
            once_connected: false,
        }
    }

    /// Retries only after some attempt has established a session: reconnecting, not
    /// connecting (the CLI's default, where a wrong address should fail at once).
    pub fn once_connected(mut self) -> Self {
        self.once_connected = true;
        self
    }

    /// Ends the wait between two attempts as soon as `interrupt` is triggered, with
    /// [`TransferError::Cancelled`](crate::error::TransferError::Cancelled).
    pub fn interruptible(mut self, interrupt: crate::Interrupt) -> Self {
        self.interrupt = interrupt;
        self
    }

    /// Runs `attempt` until it succeeds, with the whole budget. A permanent error, or any error when retrying
    /// is off, is returned at once; a transient one is retried after the next delay,
    /// with `on_retry` told first. When the budget is spent the last error is returned
    /// and [`Reconnect::gave_up`] says so.
    pub async fn run<T, A, F>(
        &mut self,
        mut attempt: A,
        mut on_retry: impl FnMut(Retrying<'_>),
    ) -> Result<T>
    where
        A: FnMut(Progress) -> F,
        F: Future<Output = Result<T>>,
    {
        self.gave_up = false;
        self.backoff.reset();
        let mut connected_once = false;
        loop {
            let progress = Progress::default();
            let error = match attempt(progress.clone()).await {
                Ok(value) => return Ok(value),
                Err(e) => e,
            };
            if progress.was_connected() {
                connected_once = true;
                self.backoff.reset();
            }
            if !self.enabled || !error.is_transient() || (self.once_connected && !connected_once) {
                return Err(error);
            }
            let Some(delay) = self.backoff.next_delay() else {
                self.gave_up = true;
                return Err(error);
            };
            on_retry(Retrying {
                error: &error,
                delay,
                attempt: self.backoff.retries(),
            });
            let wait = async {
                tokio::time::sleep(delay).await;
                Ok(())
            };
            self.interrupt.guard(wait).await?;
        }
    }

    /// The last [`Reconnect::run`] stopped because the retry budget was spent.
    pub fn gave_up(&self) -> bool {
        self.gave_up
    }

    /// Retries in a row so far.
    pub fn retries(&self) -> u32 {
        self.backoff.retries()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::TransferError;

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

    fn lost() -> Error {
        TransferError::ConnectionClosed.into()
    }

    #[tokio::test(start_paused = true)]
    async fn retries_transient_failures_with_growing_delays_then_succeeds() {
        let mut reconnect = Reconnect::new(true, 5);
        let mut calls = 0;
        let mut delays = Vec::new();
        let value = reconnect
            .run(
                |_| {
                    calls += 1;
                    let n = calls;
                    async move {
                        if n < 3 {
                            Err(lost())
                        } else {
                            Ok(n)
                        }
                    }
                },
                |r| delays.push((r.delay.as_secs(), r.attempt)),
            )
            .await
            .expect("third attempt succeeds");
        assert_eq!(value, 3);
        assert_eq!(delays, [(1, 1), (2, 2)]);
    }

    #[tokio::test(start_paused = true)]
    async fn permanent_errors_and_disabled_retries_stop_at_once() {
        let refused = || -> Error {
            TransferError::UnsafePath {
                path: "../x".into(),
                reason: "parent",
            }
            .into()
        };
        let mut calls = 0;
        let mut reconnect = Reconnect::new(true, 0);
        let result: Result<()> = reconnect
            .run(
                |_| {
                    calls += 1;
                    std::future::ready(Err(refused()))
                },
                |_| panic!("a permanent error is not retried"),
            )
            .await;
        assert!(matches!(
            result,
            Err(Error::Transfer(TransferError::UnsafePath { .. }))
        ));
        assert_eq!(calls, 1);
        let mut off = Reconnect::new(false, 0);
        let result: Result<()> = off
            .run(
                |_| std::future::ready(Err(lost())),
                |_| panic!("retrying is off"),
            )
            .await;
        assert!(result.is_err() && !off.gave_up());
    }

    #[tokio::test(start_paused = true)]
    async fn once_connected_reports_a_first_failure_at_once_and_retries_after_a_session() {
        // Nothing ever connected: no retry, whatever the budget.
        let mut reconnect = Reconnect::new(true, 5).once_connected();
        let mut calls = 0;
        let result: Result<()> = reconnect
            .run(
                |_| {
                    calls += 1;
                    std::future::ready(Err(lost()))
                },
                |_| panic!("a first connection that fails is not retried"),
            )
            .await;
        assert!(result.is_err() && calls == 1);
        // Connected once, then lost, then refused twice: retried until it works.
        let mut calls = 0;
        let mut retries = Vec::new();
        let result = reconnect
            .run(
                |progress| {
                    calls += 1;
                    let n = calls;
                    async move {
                        match n {
                            1 => {
                                progress.connected();
                                Err(lost())
                            }
                            2 | 3 => Err(lost()),
                            _ => Ok(n),
                        }
                    }
                },
                |r| retries.push(r.attempt),
            )
            .await;
        assert_eq!(result.ok(), Some(4));
        assert_eq!(retries, [1, 2, 3]);
    }

    #[tokio::test(start_paused = true)]
    async fn an_interrupt_ends_the_wait_between_attempts() {
        let interrupt = crate::Interrupt::new();
        let mut reconnect = Reconnect::new(true, 0).interruptible(interrupt.clone());
        let result: Result<()> = reconnect
            .run(|_| std::future::ready(Err(lost())), |_| interrupt.trigger())
            .await;
        assert!(matches!(
            result,
            Err(Error::Transfer(TransferError::Cancelled))
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn the_budget_counts_failures_in_a_row_only() {
        // Each attempt connects, then loses the connection: never gives up on its own.
        let mut reconnect = Reconnect::new(true, 2);
        let mut calls = 0;
        let result = reconnect
            .run(
                |progress| {
                    calls += 1;
                    let n = calls;
                    async move {
                        progress.connected();
                        if n < 10 {
                            Err(lost())
                        } else {
                            Ok(())
                        }
                    }
                },
                |r| assert_eq!(r.attempt, 1, "connected attempts reset the budget"),
            )
            .await;
        assert!(result.is_ok());
        // Failing before a session is established spends the budget.
        let mut calls = 0;
        let result: Result<()> = reconnect
            .run(
                |_| {
                    calls += 1;
                    std::future::ready(Err(lost()))
                },
                |_| {},
            )
            .await;
        assert!(result.is_err());
        assert!(reconnect.gave_up());
        assert_eq!((calls, reconnect.retries()), (3, 2));
    }
}
