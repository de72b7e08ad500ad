//! The History tab's model: one record per finished, failed or cancelled transfer.
//!
//! p2p-core does not keep a transfer history yet, so records live only as long as the
//! window. The record carries what the CLI's `history` command is meant to show
//! (direction, peer, names, files, bytes, duration, outcome), so that loading records
//! from the core's history, once it exists, only has to fill the same list.

use std::time::Duration;

use p2p_core::Direction;

/// How a transfer ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Completed,
    Failed(String),
    Cancelled,
}

/// One past transfer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryRecord {
    pub direction: Direction,
    /// Device name of the peer.
    pub peer: String,
    /// Top-level names of what was moved, when known.
    pub names: Vec<String>,
    pub files: u64,
    pub bytes: u64,
    pub duration: Duration,
    pub outcome: Outcome,
}

/// Which directions the list shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DirectionFilter {
    #[default]
    All,
    Sent,
    Received,
}

/// Which outcomes the list shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OutcomeFilter {
    #[default]
    All,
    Completed,
    /// Failed or cancelled.
    Unfinished,
}

impl DirectionFilter {
    pub const ALL: [Self; 3] = [Self::All, Self::Sent, Self::Received];

    fn admits(self, direction: Direction) -> bool {
        match self {
            Self::All => true,
            Self::Sent => direction == Direction::Send,
            Self::Received => direction == Direction::Receive,
        }
    }
}

impl OutcomeFilter {
    pub const ALL: [Self; 3] = [Self::All, Self::Completed, Self::Unfinished];

    fn admits(self, outcome: &Outcome) -> bool {
        match self {
            Self::All => true,
            Self::Completed => *outcome == Outcome::Completed,
            Self::Unfinished => *outcome != Outcome::Completed,
        }
    }
}

impl std::fmt::Display for DirectionFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::All => "Sent and received",
            Self::Sent => "Sent",
            Self::Received => "Received",
        })
    }
}

impl std::fmt::Display for OutcomeFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::All => "Any outcome",
            Self::Completed => "Completed",
            Self::Unfinished => "Failed or cancelled",
        })
    }
}

/// Records, newest first, and the active filters.
#[derive(Debug, Clone, Default)]
pub struct History {
    records: Vec<HistoryRecord>,
    pub direction: DirectionFilter,
    pub outcome: OutcomeFilter,
}

impl History {
    pub fn push(&mut self, record: HistoryRecord) {
        self.records.insert(0, record);
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// The records the filters let through, newest first.
    pub fn visible(&self) -> impl Iterator<Item = &HistoryRecord> {
        self.records
            .iter()
            .filter(|r| self.direction.admits(r.direction) && self.outcome.admits(&r.outcome))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(direction: Direction, outcome: Outcome) -> HistoryRecord {
        HistoryRecord {
            direction,
            peer: "peer".into(),
            names: vec!["a".into()],
            files: 1,
            bytes: 10,
            duration: Duration::from_secs(1),
            outcome,
        }
    }

    #[test]
    fn filters_combine_and_newest_comes_first() {
        let mut history = History::default();
        history.push(record(Direction::Send, Outcome::Completed));
        history.push(record(Direction::Receive, Outcome::Cancelled));
        history.push(record(Direction::Send, Outcome::Failed("x".into())));
        assert_eq!(history.visible().count(), 3);
        assert_eq!(
            history.visible().next().map(|r| &r.outcome),
            Some(&Outcome::Failed("x".into()))
        );
        history.direction = DirectionFilter::Sent;
        assert_eq!(history.visible().count(), 2);
        history.outcome = OutcomeFilter::Unfinished;
        assert_eq!(history.visible().count(), 1);
        history.direction = DirectionFilter::Received;
        history.outcome = OutcomeFilter::Completed;
        assert_eq!(history.visible().count(), 0);
    }
}
