//! The History tab's model: the records of `p2p_core::history` (the same file the CLI's
//! `p2p-transfer history` reads), newest first, and the tab's filters.

use p2p_core::history::{Record, Status};
use p2p_core::net::ice::PathKind;
use p2p_core::net::Transport;
use p2p_core::Direction;

/// The transports a transfer ran on, as `p2p-transfer history` says them: ` over QUIC`,
/// ` over QUIC, then TCP`; empty when the record names none (older records).
pub fn over(transports: &[Transport]) -> String {
    if transports.is_empty() {
        return String::new();
    }
    let all: Vec<String> = transports.iter().map(ToString::to_string).collect();
    format!(" over {}", all.join(", then "))
}

/// The transport and the path the connection takes now, as the status line and the
/// progress headline say them: ` over QUIC · relay`; [`over`] alone without a path.
pub fn over_path(transports: &[Transport], path: Option<PathKind>) -> String {
    let over = over(transports);
    match path {
        Some(path) if over.is_empty() => format!(" · {}", path.label()),
        Some(path) => format!("{over} · {}", path.label()),
        None => over,
    }
}

/// The paths a transfer ran on, as `p2p-transfer history` says them: ` (relay →
/// direct)`; empty when the record names none (not through a rendezvous, or older).
pub fn paths(paths: &[PathKind]) -> String {
    if paths.is_empty() {
        return String::new();
    }
    let all: Vec<&str> = paths.iter().map(|p| p.label()).collect();
    format!(" ({})", all.join(" → "))
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
    /// Failed or interrupted.
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

    fn admits(self, status: Status) -> bool {
        match self {
            Self::All => true,
            Self::Completed => status == Status::Completed,
            Self::Unfinished => status != Status::Completed,
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
            Self::Unfinished => "Failed or interrupted",
        })
    }
}

/// Records (oldest first, as the file holds them) and the active filters.
#[derive(Debug, Clone, Default)]
pub struct History {
    records: Vec<Record>,
    pub direction: DirectionFilter,
    pub outcome: OutcomeFilter,
}

impl History {
    /// Adds records loaded from the file before the ones of this run.
    pub fn prepend(&mut self, mut older: Vec<Record>) {
        older.append(&mut self.records);
        self.records = older;
    }

    /// Shows the records as the file holds them now (read again after it changed).
    pub fn replace(&mut self, records: Vec<Record>) {
        self.records = records;
    }

    pub fn push(&mut self, record: Record) {
        self.records.push(record);
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// The records the filters let through, newest first.
    pub fn visible(&self) -> impl Iterator<Item = &Record> {
        self.records
            .iter()
            .rev()
            .filter(|r| self.direction.admits(r.direction) && self.outcome.admits(r.status))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn record(direction: Direction, status: Status) -> Record {
        Record::now(
            uuid::Uuid::new_v4(),
            direction,
            "peer".into(),
            vec!["a".into()],
            1,
            10,
            Duration::from_secs(1),
            status,
            None,
        )
    }

    #[test]
    fn transports_are_said_as_the_cli_says_them() {
        assert_eq!(over(&[]), "");
        assert_eq!(over(&[Transport::Quic]), " over QUIC");
        assert_eq!(
            over(&[Transport::Quic, Transport::Tcp]),
            " over QUIC, then TCP"
        );
    }

    #[test]
    fn paths_are_said_as_the_cli_says_them() {
        assert_eq!(paths(&[]), "");
        assert_eq!(paths(&[PathKind::Relay]), " (relay)");
        assert_eq!(
            paths(&[PathKind::Relay, PathKind::Direct]),
            " (relay → direct)"
        );
        assert_eq!(
            over_path(&[Transport::Quic], Some(PathKind::Relay)),
            " over QUIC · relay"
        );
        assert_eq!(over_path(&[Transport::Quic], None), " over QUIC");
        assert_eq!(over_path(&[], Some(PathKind::Lan)), " · lan");
    }

    #[test]
    fn filters_combine_and_newest_comes_first() {
        let mut history = History::default();
        history.push(record(Direction::Send, Status::Completed));
        history.push(record(Direction::Receive, Status::Interrupted));
        history.push(record(Direction::Send, Status::Failed));
        history.prepend(vec![record(Direction::Receive, Status::Completed)]);
        assert_eq!(history.visible().count(), 4);
        assert_eq!(
            history.visible().next().map(|r| r.status),
            Some(Status::Failed)
        );
        assert_eq!(
            history.visible().last().map(|r| r.direction),
            Some(Direction::Receive)
        );
        history.direction = DirectionFilter::Sent;
        assert_eq!(history.visible().count(), 2);
        history.outcome = OutcomeFilter::Unfinished;
        assert_eq!(history.visible().count(), 1);
        history.direction = DirectionFilter::Received;
        history.outcome = OutcomeFilter::Completed;
        assert_eq!(history.visible().count(), 1);
    }
}
