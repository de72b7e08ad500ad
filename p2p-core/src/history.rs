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
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::{Result, StorageError};
use crate::event::{Direction, TransferEvent};
use crate::transfer::IncomingOffer;

/// Environment variable that overrides where history (and later resume state) lives.
pub const DATA_DIR_ENV: &str = "P2P_TRANSFER_DATA_DIR";

/// How a transfer ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Completed,
    Interrupted,
    Failed,
    /// An incoming offer the receiver said no to: nothing was written.
    Declined,
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
    // Fields added later: `#[serde(default)]`, so that older lines still load (as
    // `None` or empty: not known then).
    /// Size of the whole transfer, what was already there included.
    #[serde(default)]
    pub total_bytes: Option<u64>,
    /// Bytes this attempt actually moved over the connection (a resumed transfer does
    /// not move what the receiver already held).
    #[serde(default)]
    pub moved_bytes: Option<u64>,
    /// Bytes the receiver already held from an earlier attempt (0 when not resumed).
    #[serde(default)]
    pub skipped_bytes: Option<u64>,
    /// The peer's socket address, when connected over TCP.
    #[serde(default)]
    pub peer_address: Option<String>,
    /// The peer's device id as proven by the connection (not what it announced).
    #[serde(default)]
    pub peer_device_id: Option<String>,
    /// Absolute paths on this machine: what was sent, or where each received top-level
    /// entry was written.
    #[serde(default)]
    pub local_paths: Vec<String>,
    /// The receiving side's output folder, absolute.
    #[serde(default)]
    pub output_dir: Option<String>,
    /// What the transfer ran on (`tcp`, `quic`), in order: more than one when it was
    /// resumed over another transport after a reconnection.
    #[serde(default)]
    pub transports: Vec<crate::net::Transport>,
    /// The paths a connection made through a rendezvous took (`relay`, `direct`,
    /// `lan`), in order: `[relay, direct]` when it moved to a punched path mid-transfer.
    /// Empty for a connection to a given address.
    #[serde(default)]
    pub paths: Vec<crate::net::ice::PathKind>,
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
            total_bytes: None,
            moved_bytes: None,
            skipped_bytes: None,
            peer_address: None,
            peer_device_id: None,
            local_paths: Vec::new(),
            output_dir: None,
            transports: Vec::new(),
            paths: Vec::new(),
        }
    }
}

impl Record {
    /// The record of an incoming offer that was declined: who offered what, and why not
    /// (nothing was moved, so no files or bytes are counted).
    pub fn declined(offer: &IncomingOffer, reason: &str) -> Self {
        Self::now(
            offer.transfer_id,
            Direction::Receive,
            offer.peer.clone(),
            offer.roots(),
            0,
            0,
            Duration::ZERO,
            Status::Declined,
            Some(reason.to_owned()),
        )
    }

    /// When the transfer ended, as `YYYY-MM-DD HH:MM:SS` in UTC.
    pub fn finished_utc(&self) -> String {
        utc(self.finished_at)
    }
}

/// `YYYY-MM-DD HH:MM:SS` in UTC from Unix seconds (civil-from-days, no time zone crate).
pub fn utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Follows the events of one transfer at a time and makes its history [`Record`] when
/// it ends, so that every front end records transfers alike. Front ends write the
/// records where they like (usually [`History::append`]).
///
/// What the events do not say — the peer's address and proven id, the local paths —
/// the front end tells it beforehand ([`Tracker::set_peer_details`],
/// [`Tracker::set_sent_paths`], [`Tracker::set_output_dir`]); records name them when
/// known.
#[derive(Debug, Default)]
pub struct Tracker {
    current: Option<InFlight>,
    peer: String,
    peer_address: Option<String>,
    peer_device_id: Option<String>,
    sent_paths: Vec<String>,
    output_dir: Option<PathBuf>,
    transports: Vec<crate::net::Transport>,
    paths: Vec<crate::net::ice::PathKind>,
    /// The transfer `transports` belongs to (a new one starts from the current
    /// transport only).
    transports_of: Option<Uuid>,
}

#[derive(Debug)]
struct InFlight {
    transfer_id: Uuid,
    direction: Direction,
    peer: String,
    roots: Vec<String>,
    files_done: u64,
    done_bytes: u64,
    total_bytes: u64,
    skipped_bytes: u64,
    started: Instant,
}

/// `path` made absolute (against the current directory; symlinks are not resolved), as
/// text.
fn absolute(path: &Path) -> String {
    std::path::absolute(path)
        .unwrap_or_else(|_| path.to_path_buf())
        .display()
        .to_string()
}

impl Tracker {
    /// The peer to name in a record of an incoming transfer refused before it started
    /// (no `Started` event says who sent it).
    pub fn set_peer(&mut self, peer: impl Into<String>) {
        self.peer = peer.into();
    }

    /// The peer of the session: its socket address and the device id the connection
    /// proved, when known. Records of the transfers that follow name them.
    pub fn set_peer_details(&mut self, address: Option<String>, device_id: Option<String>) {
        self.peer_address = address;
        self.peer_device_id = device_id;
    }

    /// The transport of the session now under way: records list each transport their
    /// transfer ran on, in order.
    pub fn set_transport(&mut self, transport: crate::net::Transport) {
        if self.transports.last() != Some(&transport) {
            self.transports.push(transport);
        }
    }

    /// The path the connection takes now (a rendezvous connection): records list each
    /// one their transfer ran on, in order.
    pub fn set_path(&mut self, path: crate::net::ice::PathKind) {
        if self.paths.last() != Some(&path) {
            self.paths.push(path);
        }
    }

    /// What this side sends (made absolute): the local paths of send records.
    pub fn set_sent_paths(&mut self, paths: &[PathBuf]) {
        self.sent_paths = paths.iter().map(|p| absolute(p)).collect();
    }

    /// Where this side receives into (made absolute): receive records name it, and
    /// each received top-level entry in it as a local path.
    pub fn set_output_dir(&mut self, dir: &Path) {
        self.output_dir = Some(std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf()));
    }

    /// The transfer under way, if any.
    pub fn current(&self) -> Option<(Uuid, Direction)> {
        self.current.as_ref().map(|t| (t.transfer_id, t.direction))
    }

    /// Adds what this tracker knows about the session — the peer's address and proven
    /// id, the local paths — to a record made elsewhere (e.g. [`Record::declined`]).
    pub fn annotate(&self, mut record: Record) -> Record {
        record.peer_address = self.peer_address.clone();
        record.peer_device_id = self.peer_device_id.clone();
        record.transports = self.transports.clone();
        record.paths = self.paths.clone();
        match record.direction {
            Direction::Send => record.local_paths = self.sent_paths.clone(),
            Direction::Receive => {
                if let Some(dir) = &self.output_dir {
                    record.output_dir = Some(dir.display().to_string());
                    // A declined offer wrote nothing: it has no local paths.
                    if record.status != Status::Declined {
                        record.local_paths = record
                            .files
                            .iter()
                            .map(|root| dir.join(root).display().to_string())
                            .collect();
                    }
                }
            }
        }
        record
    }

    /// Takes one event; returns the record when the event ends a transfer (`Finished`,
    /// or `Failed`, also for an incoming offer refused before it started).
    pub fn observe(&mut self, event: &TransferEvent) -> Option<Record> {
        match event {
            TransferEvent::Started {
                transfer_id,
                direction,
                peer,
                roots,
                total_bytes,
                ..
            } => {
                if self.transports_of != Some(*transfer_id) {
                    // Another transfer (a long-lived front end): only the session's
                    // current transport is its own; a resume of the same one keeps
                    // the list.
                    self.transports = self.transports.last().copied().into_iter().collect();
                    self.paths = self.paths.last().copied().into_iter().collect();
                    self.transports_of = Some(*transfer_id);
                }
                self.current = Some(InFlight {
                    transfer_id: *transfer_id,
                    direction: *direction,
                    peer: peer.clone(),
                    roots: roots.clone(),
                    files_done: 0,
                    done_bytes: 0,
                    total_bytes: *total_bytes,
                    skipped_bytes: 0,
                    started: Instant::now(),
                });
                None
            }
            TransferEvent::Resumed {
                transfer_id,
                skipped_bytes,
            } => {
                if let Some(t) = self
                    .current
                    .as_mut()
                    .filter(|t| t.transfer_id == *transfer_id)
                {
                    t.skipped_bytes = *skipped_bytes;
                }
                None
            }
            TransferEvent::Progress { done_bytes, .. } => {
                if let Some(t) = &mut self.current {
                    t.done_bytes = *done_bytes;
                }
                None
            }
            TransferEvent::FileDone { .. } => {
                if let Some(t) = &mut self.current {
                    t.files_done += 1;
                }
                None
            }
            TransferEvent::Finished { files, bytes, .. } => {
                let mut t = self.current.take()?;
                t.files_done = *files;
                t.done_bytes = *bytes;
                Some(self.record(t, Status::Completed, None))
            }
            TransferEvent::Failed { transfer_id, error } => {
                match self.current.take_if(|t| t.transfer_id == *transfer_id) {
                    Some(t) => Some(self.record(t, Status::Failed, Some(error.clone()))),
                    None => {
                        let mut record = Record::now(
                            *transfer_id,
                            Direction::Receive,
                            self.peer.clone(),
                            Vec::new(),
                            0,
                            0,
                            Duration::ZERO,
                            Status::Failed,
                            Some(error.clone()),
                        );
                        record.moved_bytes = Some(0);
                        Some(self.annotate(record))
                    }
                }
            }
            _ => None,
        }
    }

    /// Ends the transfer under way, if any, without an event of its own (Ctrl+C, a
    /// cancel, a dropped connection): its record, with what had been done by then.
    pub fn end(&mut self, status: Status, error: impl Into<String>) -> Option<Record> {
        let t = self.current.take()?;
        Some(self.record(t, status, Some(error.into())))
    }

    fn record(&self, t: InFlight, status: Status, error: Option<String>) -> Record {
        let mut record = Record::now(
            t.transfer_id,
            t.direction,
            t.peer,
            t.roots,
            t.files_done,
            t.done_bytes,
            t.started.elapsed(),
            status,
            error,
        );
        record.total_bytes = Some(t.total_bytes);
        record.skipped_bytes = Some(t.skipped_bytes);
        // A sender counts what the receiver already held as it skips over it, so its
        // count can trail the skipped total for a moment.
        record.moved_bytes = Some(t.done_bytes.saturating_sub(t.skipped_bytes));
        self.annotate(record)
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

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00:00");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00:00");
        assert_eq!(utc(1_795_000_000), "2026-11-18 11:06:40");
    }

    fn started(id: Uuid) -> TransferEvent {
        TransferEvent::Started {
            transfer_id: id,
            direction: Direction::Send,
            files: 3,
            total_bytes: 300,
            peer: "box".into(),
            roots: vec!["photos".into()],
        }
    }

    #[test]
    fn the_tracker_records_completed_failed_interrupted_and_refused_transfers() {
        let mut tracker = Tracker::default();
        tracker.set_peer("desk");
        let id = Uuid::new_v4();
        assert_eq!(tracker.observe(&started(id)), None);
        assert_eq!(tracker.current(), Some((id, Direction::Send)));
        let done = tracker
            .observe(&TransferEvent::Finished {
                transfer_id: id,
                files: 3,
                bytes: 300,
                elapsed: Duration::from_secs(1),
            })
            .expect("finished makes a record");
        assert_eq!(
            (done.status, done.file_count, done.bytes, done.files.clone()),
            (Status::Completed, 3, 300, vec!["photos".to_owned()])
        );
        assert_eq!(tracker.current(), None);

        // Interrupted half-way: what was done by then.
        tracker.observe(&started(id));
        tracker.observe(&TransferEvent::FileDone {
            transfer_id: id,
            path: "photos/a".into(),
            size: 100,
        });
        tracker.observe(&TransferEvent::Progress {
            transfer_id: id,
            done_bytes: 150,
            total_bytes: 300,
            current_file: None,
        });
        let cut = tracker
            .end(Status::Interrupted, "Ctrl+C")
            .expect("under way");
        assert_eq!(
            (cut.status, cut.file_count, cut.bytes, cut.error.as_deref()),
            (Status::Interrupted, 1, 150, Some("Ctrl+C"))
        );
        assert_eq!(tracker.end(Status::Interrupted, "again"), None);

        // Refused before it started: a receive record naming the known peer.
        let refused = tracker
            .observe(&TransferEvent::Failed {
                transfer_id: id,
                error: "exists".into(),
            })
            .expect("a failure is recorded");
        assert_eq!(
            (refused.direction, refused.peer.as_str(), refused.status),
            (Direction::Receive, "desk", Status::Failed)
        );
    }

    #[test]
    fn a_line_written_before_the_new_fields_still_loads() {
        let tmp = tempfile::tempdir().unwrap();
        let history = History::in_dir(tmp.path());
        let old = r#"{"transfer_id":"6c4cf4a2-3a43-4f6e-9a0e-0a8d1b9f3c11","direction":"Send","peer":"box","files":["a"],"file_count":1,"bytes":10,"finished_at":1,"duration_secs":0.5,"status":"completed","error":null}"#;
        fs::write(history.path(), format!("{old}\n")).unwrap();
        let loaded = history.load().unwrap();
        assert!(loaded.skipped.is_empty(), "{:?}", loaded.skipped);
        let r = &loaded.records[0];
        assert_eq!((r.bytes, r.moved_bytes, r.total_bytes), (10, None, None));
        assert!(r.local_paths.is_empty() && r.peer_address.is_none());
    }

    #[test]
    fn a_record_lists_the_transports_of_its_own_transfer_only() {
        use crate::net::Transport;
        let finished = |id| TransferEvent::Finished {
            transfer_id: id,
            files: 1,
            bytes: 10,
            elapsed: Duration::from_secs(1),
        };
        let mut tracker = Tracker::default();
        // One transfer, resumed over another transport after a reconnection.
        let (first, second) = (Uuid::new_v4(), Uuid::new_v4());
        tracker.set_transport(Transport::Quic);
        tracker.observe(&started(first));
        tracker.set_transport(Transport::Tcp);
        tracker.observe(&started(first));
        let record = tracker.observe(&finished(first)).unwrap();
        assert_eq!(record.transports, [Transport::Quic, Transport::Tcp]);
        // The next transfer of a long-lived front end, on the same TCP session.
        tracker.observe(&started(second));
        let record = tracker.observe(&finished(second)).unwrap();
        assert_eq!(record.transports, [Transport::Tcp]);
        // And one over a new QUIC session.
        let third = Uuid::new_v4();
        tracker.set_transport(Transport::Quic);
        tracker.observe(&started(third));
        assert_eq!(
            tracker.observe(&finished(third)).unwrap().transports,
            [Transport::Quic]
        );
    }

    #[test]
    fn records_name_the_peer_the_local_paths_and_the_bytes_this_attempt_moved() {
        let mut tracker = Tracker::default();
        tracker.set_peer_details(Some("10.0.0.5:14567".into()), Some("ABCD-EFGH".into()));
        tracker.set_sent_paths(&[PathBuf::from("photos")]);
        tracker.set_output_dir(Path::new("/srv/in"));
        let id = Uuid::new_v4();
        tracker.observe(&started(id));
        tracker.observe(&TransferEvent::Resumed {
            transfer_id: id,
            skipped_bytes: 200,
        });
        let done = tracker
            .observe(&TransferEvent::Finished {
                transfer_id: id,
                files: 3,
                bytes: 300,
                elapsed: Duration::from_secs(1),
            })
            .unwrap();
        assert_eq!(
            (
                done.bytes,
                done.total_bytes,
                done.moved_bytes,
                done.skipped_bytes
            ),
            (300, Some(300), Some(100), Some(200))
        );
        assert_eq!(done.peer_address.as_deref(), Some("10.0.0.5:14567"));
        assert_eq!(done.peer_device_id.as_deref(), Some("ABCD-EFGH"));
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(
            done.local_paths,
            vec![cwd.join("photos").display().to_string()]
        );
        assert_eq!(done.output_dir, None, "a send has no output folder");

        // A receive names the output folder and each root in it; a sender still
        // skipping over held data has moved nothing yet (not a negative count).
        let mut received = started(id);
        if let TransferEvent::Started { direction, .. } = &mut received {
            *direction = Direction::Receive;
        }
        tracker.observe(&received);
        tracker.observe(&TransferEvent::Resumed {
            transfer_id: id,
            skipped_bytes: 200,
        });
        tracker.observe(&TransferEvent::Progress {
            transfer_id: id,
            done_bytes: 150,
            total_bytes: 300,
            current_file: None,
        });
        let cut = tracker.end(Status::Interrupted, "Ctrl+C").unwrap();
        assert_eq!((cut.bytes, cut.moved_bytes), (150, Some(0)));
        assert_eq!(cut.output_dir.as_deref(), Some("/srv/in"));
        assert_eq!(cut.local_paths, vec!["/srv/in/photos".to_owned()]);

        // The file format keeps every field.
        let line = serde_json::to_string(&cut).unwrap();
        assert_eq!(serde_json::from_str::<Record>(&line).unwrap(), cut);
    }
}
