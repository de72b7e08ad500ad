//! What the progress panel shows about one transfer, folded from the core's
//! [`TransferEvent`]s: bytes of total, speed, time left, the current file, and how it
//! ended.
//!
//! Time comes in as an argument (`now`), so the speed and ETA arithmetic is tested
//! without a clock.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use p2p_core::{Direction, TransferEvent};
use uuid::Uuid;

/// Speed is measured over this much recent history.
const SPEED_WINDOW: Duration = Duration::from_secs(3);

/// How a transfer stands.
#[derive(Debug, Clone, PartialEq)]
pub enum TransferState {
    Running,
    Finished { elapsed: Duration },
    Failed { error: String },
    Cancelled,
}

/// One transfer as the window shows it.
#[derive(Debug, Clone)]
pub struct TransferProgress {
    pub transfer_id: Uuid,
    pub direction: Direction,
    pub peer: String,
    /// Top-level names of what is being moved.
    pub roots: Vec<String>,
    pub files: u64,
    pub files_done: u64,
    pub total_bytes: u64,
    pub done_bytes: u64,
    /// Relative path of the file being worked on.
    pub current_file: Option<String>,
    /// Bytes of the current file done, and its size.
    pub current_file_bytes: Option<(u64, u64)>,
    /// Chunks sent again so far.
    pub retries: u64,
    /// Bytes the receiver already held from an interrupted attempt (not sent again).
    pub resumed_bytes: u64,
    pub state: TransferState,
    /// What the session runs on, when known (set by the app from the session's).
    pub transport: Option<p2p_core::net::Transport>,
    /// The path it takes now (lan, direct, relay), for a connection made through a
    /// rendezvous: set by the app, and again on each change while it runs.
    pub path: Option<p2p_core::net::ice::PathKind>,
    started: Instant,
    /// Recent `(time, done_bytes)` samples for the speed.
    samples: VecDeque<(Instant, u64)>,
}

impl TransferProgress {
    /// A transfer that has just started (the core's `Started` event).
    #[allow(clippy::too_many_arguments)]
    pub fn started(
        transfer_id: Uuid,
        direction: Direction,
        files: u64,
        total_bytes: u64,
        peer: String,
        roots: Vec<String>,
        now: Instant,
    ) -> Self {
        Self {
            transfer_id,
            direction,
            peer,
            roots,
            files,
            files_done: 0,
            total_bytes,
            done_bytes: 0,
            current_file: None,
            current_file_bytes: None,
            retries: 0,
            resumed_bytes: 0,
            state: TransferState::Running,
            transport: None,
            path: None,
            started: now,
            samples: VecDeque::from([(now, 0)]),
        }
    }

    /// Folds one event of this transfer in. Events of other transfers are ignored.
    pub fn apply(&mut self, event: &TransferEvent, now: Instant) {
        match event {
            TransferEvent::Progress {
                transfer_id,
                done_bytes,
                total_bytes,
                current_file,
            } if *transfer_id == self.transfer_id => {
                self.done_bytes = *done_bytes;
                self.total_bytes = *total_bytes;
                if let Some((path, done, size)) = current_file {
                    self.current_file = Some(path.clone());
                    self.current_file_bytes = Some((*done, *size));
                }
                self.samples.push_back((now, *done_bytes));
                while self
                    .samples
                    .front()
                    .is_some_and(|(t, _)| now.duration_since(*t) > SPEED_WINDOW)
                    && self.samples.len() > 2
                {
                    self.samples.pop_front();
                }
            }
            TransferEvent::FileDone { transfer_id, .. } if *transfer_id == self.transfer_id => {
                self.files_done += 1;
            }
            TransferEvent::Resumed {
                transfer_id,
                skipped_bytes,
            } if *transfer_id == self.transfer_id => {
                self.resumed_bytes = *skipped_bytes;
            }
            TransferEvent::Retrying { transfer_id, .. } if *transfer_id == self.transfer_id => {
                self.retries += 1;
            }
            TransferEvent::Finished {
                transfer_id,
                bytes,
                elapsed,
                files,
            } if *transfer_id == self.transfer_id => {
                self.done_bytes = *bytes;
                self.files_done = *files;
                self.state = TransferState::Finished { elapsed: *elapsed };
            }
            TransferEvent::Failed { transfer_id, error } if *transfer_id == self.transfer_id => {
                self.state = TransferState::Failed {
                    error: error.clone(),
                };
            }
            _ => {}
        }
    }

    /// The user stopped it.
    pub fn cancel(&mut self) {
        if self.is_running() {
            self.state = TransferState::Cancelled;
        }
    }

    /// The connection went away without the core reporting an end.
    pub fn fail(&mut self, error: String) {
        if self.is_running() {
            self.state = TransferState::Failed { error };
        }
    }

    pub fn is_running(&self) -> bool {
        self.state == TransferState::Running
    }

    /// Done share in `0.0..=1.0`; an empty transfer counts as done once it finished.
    pub fn fraction(&self) -> f32 {
        if self.total_bytes == 0 {
            return if self.is_running() { 0.0 } else { 1.0 };
        }
        (self.done_bytes as f64 / self.total_bytes as f64).clamp(0.0, 1.0) as f32
    }

    /// Bytes per second over the last few seconds; the average since the start when
    /// there is too little history. `None` before any progress.
    pub fn speed(&self, now: Instant) -> Option<f64> {
        match &self.state {
            TransferState::Finished { elapsed } => {
                return (!elapsed.is_zero())
                    .then(|| self.done_bytes as f64 / elapsed.as_secs_f64());
            }
            TransferState::Running => {}
            _ => return None,
        }
        let (t0, b0) = *self.samples.front()?;
        let (t1, b1) = *self.samples.back()?;
        let span = t1.duration_since(t0);
        if span >= Duration::from_millis(500) && b1 > b0 {
            return Some((b1 - b0) as f64 / span.as_secs_f64());
        }
        let since_start = now.duration_since(self.started);
        (self.done_bytes > 0 && !since_start.is_zero())
            .then(|| self.done_bytes as f64 / since_start.as_secs_f64())
    }

    /// Time left at the current speed, while running.
    pub fn eta(&self, now: Instant) -> Option<Duration> {
        if !self.is_running() {
            return None;
        }
        let speed = self.speed(now)?;
        let left = self.total_bytes.saturating_sub(self.done_bytes) as f64;
        (speed > 0.0).then(|| Duration::from_secs_f64(left / speed))
    }

    /// Time since the start (or the whole duration once finished).
    pub fn elapsed(&self, now: Instant) -> Duration {
        match self.state {
            TransferState::Finished { elapsed } => elapsed,
            _ => now.duration_since(self.started),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn progress(id: Uuid, done: u64) -> TransferEvent {
        TransferEvent::Progress {
            transfer_id: id,
            done_bytes: done,
            total_bytes: 1000,
            current_file: Some(("a/b.bin".into(), done, 1000)),
        }
    }

    #[test]
    fn speed_and_eta_follow_recent_progress() {
        let id = Uuid::new_v4();
        let t0 = Instant::now();
        let mut p =
            TransferProgress::started(id, Direction::Send, 1, 1000, "peer".into(), vec![], t0);
        assert_eq!(p.speed(t0), None);
        assert_eq!(p.fraction(), 0.0);
        for i in 1..=10u64 {
            p.apply(&progress(id, i * 50), t0 + Duration::from_millis(100 * i));
        }
        let now = t0 + Duration::from_secs(1);
        assert_eq!(p.done_bytes, 500);
        assert_eq!(p.fraction(), 0.5);
        assert_eq!(p.current_file.as_deref(), Some("a/b.bin"));
        assert_eq!(p.current_file_bytes, Some((500, 1000)), "per-file progress");
        let speed = p.speed(now).unwrap();
        assert!((speed - 500.0).abs() < 1.0, "{speed}");
        let eta = p.eta(now).unwrap();
        assert!((eta.as_secs_f64() - 1.0).abs() < 0.01, "{eta:?}");
        // Events of another transfer change nothing.
        p.apply(&progress(Uuid::new_v4(), 900), now);
        assert_eq!(p.done_bytes, 500);
    }

    #[test]
    fn old_samples_age_out_so_a_stall_shows_a_lower_speed() {
        let id = Uuid::new_v4();
        let t0 = Instant::now();
        let mut p =
            TransferProgress::started(id, Direction::Receive, 1, 1000, "peer".into(), vec![], t0);
        p.apply(&progress(id, 600), t0 + Duration::from_secs(1));
        p.apply(&progress(id, 610), t0 + Duration::from_secs(5));
        p.apply(&progress(id, 620), t0 + Duration::from_secs(6));
        let speed = p.speed(t0 + Duration::from_secs(6)).unwrap();
        assert!(speed < 20.0, "{speed}");
    }

    #[test]
    fn end_states() {
        let id = Uuid::new_v4();
        let t0 = Instant::now();
        let mut p =
            TransferProgress::started(id, Direction::Send, 2, 1000, "peer".into(), vec![], t0);
        p.apply(
            &TransferEvent::Failed {
                transfer_id: id,
                error: "disk full".into(),
            },
            t0,
        );
        assert_eq!(
            p.state,
            TransferState::Failed {
                error: "disk full".into()
            }
        );
        p.cancel();
        assert!(matches!(p.state, TransferState::Failed { .. }));

        let mut p =
            TransferProgress::started(id, Direction::Send, 2, 1000, "peer".into(), vec![], t0);
        p.apply(
            &TransferEvent::Finished {
                transfer_id: id,
                files: 2,
                bytes: 1000,
                elapsed: Duration::from_secs(2),
            },
            t0,
        );
        assert_eq!(p.fraction(), 1.0);
        assert_eq!(p.speed(t0), Some(500.0));
        assert_eq!(p.eta(t0), None);
        assert_eq!(p.files_done, 2);
    }
}
