//! Transfer history: one JSON line per finished, failed or interrupted transfer, in the
//! user's data directory (`$XDG_DATA_HOME/p2p-transfer/history.jsonl` on Linux), or in
//! the directory named by the `P2P_TRANSFER_DATA_DIR` environment variable.
//!
//! JSON lines make the file append-only and robust: a corrupt or truncated line (a crash
//! mid-write, a hand edit) is reported and skipped, and never blocks a transfer — writing
//! history is best effort.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::{Result, StorageError};
use crate::event::Direction;

/// Environment variable that overrides where history (and later resume state) lives.
pub const DATA_DIR_ENV: &str = "P2P_TRANSFER_DATA_DIR";

/// How a transfer ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Completed,
    Interrupted,
    Failed,
}

/// One transfer, as remembered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub transfer_id: Uuid,
    pub direction: Direction,
    /// The peer's address and name, as shown to the user.
    pub peer: String,
    /// Top-level names of what was sent or received.
    pub files: Vec<String>,
    pub file_count: u64,
    pub bytes: u64,
    /// Seconds since the Unix epoch when the transfer ended.
    pub finished_at: u64,
    pub duration_secs: f64,
    pub status: Status,
    /// The error, for failed and interrupted transfers.
    pub error: Option<String>,
}

impl Record {
    /// A record stamped with the current time.
    #[allow(clippy::too_many_arguments)]
    pub fn now(
        transfer_id: Uuid,
        direction: Direction,
        peer: String,
        files: Vec<String>,
        file_count: u64,
        bytes: u64,
        duration: Duration,
        status: Status,
        error: Option<String>,
    ) -> Self {
        Self {
            transfer_id,
            direction,
            peer,
            files,
            file_count,
            bytes,
            finished_at: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            duration_secs: duration.as_secs_f64(),
            status,
            error,
        }
    }
}

/// The directory for p2p-transfer's data: `$P2P_TRANSFER_DATA_DIR`, else the platform's
/// data directory + `p2p-transfer`.
pub fn data_dir() -> Option<PathBuf> {
    std::env::var_os(DATA_DIR_ENV)
        .map(PathBuf::from)
        .or_else(|| dirs::data_dir().map(|d| d.join("p2p-transfer")))
}

/// What [`History::load`] found.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Records, oldest first.
    pub records: Vec<Record>,
    /// Line numbers (1-based) that could not be read, with the reason.
    pub skipped: Vec<(usize, String)>,
}

/// The history file.
#[derive(Debug, Clone)]
pub struct History {
    path: PathBuf,
}

impl History {
    /// The history in `dir` (created on first append).
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            path: dir.join("history.jsonl"),
        }
    }

    /// The user's history (see [`data_dir`]); `None` if no data directory is known.
    pub fn default_location() -> Option<Self> {
        data_dir().map(|d| Self::in_dir(&d))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one record as one line, written with a single `write` call.
    pub fn append(&self, record: &Record) -> Result<()> {
        let err = |e| StorageError::new("cannot write history", &self.path, e);
        if let Some(dir) = self.path.parent() {
            fs::create_dir_all(dir).map_err(err)?;
        }
        let mut line = serde_json::to_vec(record).map_err(|e| err(std::io::Error::other(e)))?;
        line.push(b'\n');
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(err)?;
        file.write_all(&line).map_err(err)?;
        Ok(())
    }

    /// Reads every record; unreadable lines are reported in [`Loaded::skipped`]. A
    /// missing file is an empty history.
    pub fn load(&self) -> Result<Loaded> {
        let text = match fs::read(&self.path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Loaded::default()),
            Err(e) => return Err(StorageError::new("cannot read history", &self.path, e).into()),
        };
        let mut loaded = Loaded::default();
        for (i, line) in text.split(|b| *b == b'\n').enumerate() {
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            match serde_json::from_slice::<Record>(line) {
                Ok(record) => loaded.records.push(record),
                Err(e) => loaded.skipped.push((i + 1, e.to_string())),
            }
        }
        Ok(loaded)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(status: Status) -> Record {
        Record::now(
            Uuid::new_v4(),
            Direction::Send,
            "127.0.0.1:1 (box)".into(),
            vec!["photos".into()],
            3,
            1234,
            Duration::from_millis(1500),
            status,
            None,
        )
    }

    #[test]
    fn records_round_trip_and_corrupt_lines_are_skipped_not_fatal() {
        let tmp = tempfile::tempdir().unwrap();
        let history = History::in_dir(&tmp.path().join("nested"));
        assert!(
            history.load().unwrap().records.is_empty(),
            "missing file = empty"
        );
        let a = record(Status::Completed);
        history.append(&a).unwrap();
        // A crash in the middle of a write, then more history.
        let mut f = OpenOptions::new()
            .append(true)
            .open(history.path())
            .unwrap();
        f.write_all(b"{\"transfer_id\": \"trunc").unwrap();
        f.write_all(b"\n\xff\xfe garbage\n").unwrap();
        let b = record(Status::Failed);
        history.append(&b).unwrap();
        let loaded = history.load().unwrap();
        assert_eq!(loaded.records, vec![a, b]);
        assert_eq!(loaded.skipped.len(), 2);
        assert_eq!(loaded.skipped[0].0, 2);
    }
}
