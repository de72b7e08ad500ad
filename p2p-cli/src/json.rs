//! `--json`: one JSON object per line on stdout, for scripts. The format is stable and
//! documented in docs/json-events.md: fields are never renamed or removed, new events
//! and fields may be added (readers ignore what they do not know).
//!
//! Strings a peer chose (its name, paths, messages) are written as they arrived;
//! JSON escaping (serde_json) keeps them from breaking the line or the terminal.

use std::io::Write;

use serde::Serialize;
use uuid::Uuid;

use p2p_core::history::{Record, Status};
use p2p_core::Direction;

/// One line of `send/receive/resume --json`. The `event` field names the kind.
#[derive(Debug, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event<'a> {
    /// The one-time code the receiver must give (a sender waiting without `--code`).
    Code { code: &'a str },
    /// The path of a rendezvous connection, and each change of it.
    Path { path: &'a str, address: String },
    /// This side waits for the peer at this address.
    Listening { address: String },
    /// A transfer's offer was accepted; bytes are about to move.
    Started {
        transfer_id: Uuid,
        direction: DirectionJson,
        files: u64,
        total_bytes: u64,
        peer: &'a str,
        roots: &'a [String],
    },
    /// The receiver already held `skipped_bytes` from an earlier attempt.
    Resumed {
        transfer_id: Uuid,
        skipped_bytes: u64,
    },
    /// Where the transfer is (at most a few per second).
    Progress {
        transfer_id: Uuid,
        done_bytes: u64,
        total_bytes: u64,
        moved_bytes: u64,
        bytes_per_second: Option<u64>,
        eta_seconds: Option<u64>,
        file: Option<&'a str>,
        file_done_bytes: Option<u64>,
        file_bytes: Option<u64>,
    },
    /// One file is verified and in place.
    FileDone {
        transfer_id: Uuid,
        path: &'a str,
        size: u64,
    },
    /// A chunk is sent again (checksum failure or timeout).
    Retrying {
        transfer_id: Uuid,
        path: &'a str,
        chunk: u64,
        attempt: u32,
    },
    /// Something the sender does not send.
    Skipped { path: &'a str, reason: &'a str },
    /// Something worth knowing that does not stop the transfer.
    Warning { message: &'a str },
    /// Every file is verified and in place.
    Done {
        transfer_id: Uuid,
        files: u64,
        bytes: u64,
        moved_bytes: u64,
        skipped_bytes: u64,
        elapsed_seconds: f64,
        bytes_per_second: u64,
    },
    /// This transfer stopped; an `error` follows unless the command reconnects.
    Failed { transfer_id: Uuid, message: &'a str },
    /// The command ends with an error: the last line, with the process's exit code.
    Error { exit_code: u8, message: &'a str },
}

/// `"send"` or `"receive"`.
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DirectionJson {
    Send,
    Receive,
}

impl From<Direction> for DirectionJson {
    fn from(direction: Direction) -> Self {
        match direction {
            Direction::Send => Self::Send,
            Direction::Receive => Self::Receive,
        }
    }
}

/// Writes `value` as one line on stdout, at once (scripts read line by line).
pub fn print(value: &impl Serialize) {
    let Ok(mut line) = serde_json::to_vec(value) else {
        return;
    };
    line.push(b'\n');
    let mut out = std::io::stdout().lock();
    // A reader that went away (a closed pipe) does not stop the transfer.
    let _ = out.write_all(&line).and_then(|()| out.flush());
}

/// One line of `history --json`: a record, with stable names of its own (the history
/// file's format may change; this does not).
#[derive(Debug, Serialize)]
pub struct HistoryRecord<'a> {
    pub transfer_id: Uuid,
    pub direction: DirectionJson,
    /// `completed`, `failed`, `interrupted` or `declined`.
    pub status: &'static str,
    /// Unix seconds, and the same as `YYYY-MM-DD HH:MM:SS` in UTC.
    pub finished_at: u64,
    pub finished_utc: String,
    pub duration_seconds: f64,
    pub peer: &'a str,
    pub peer_address: Option<&'a str>,
    pub peer_device_id: Option<&'a str>,
    /// Top-level names of what was moved.
    pub roots: &'a [String],
    pub local_paths: &'a [String],
    pub output_dir: Option<&'a str>,
    pub files: u64,
    /// Bytes in place at the end (what was already there included).
    pub bytes: u64,
    pub total_bytes: Option<u64>,
    pub moved_bytes: Option<u64>,
    pub skipped_bytes: Option<u64>,
    pub error: Option<&'a str>,
    pub transports: &'a [p2p_core::net::Transport],
    pub paths: &'a [p2p_core::net::ice::PathKind],
}

pub fn status_name(status: Status) -> &'static str {
    match status {
        Status::Completed => "completed",
        Status::Failed => "failed",
        Status::Interrupted => "interrupted",
        Status::Declined => "declined",
    }
}

impl<'a> From<&'a Record> for HistoryRecord<'a> {
    fn from(r: &'a Record) -> Self {
        Self {
            transfer_id: r.transfer_id,
            direction: r.direction.into(),
            status: status_name(r.status),
            finished_at: r.finished_at,
            finished_utc: r.finished_utc(),
            duration_seconds: r.duration_secs,
            peer: &r.peer,
            peer_address: r.peer_address.as_deref(),
            peer_device_id: r.peer_device_id.as_deref(),
            roots: &r.files,
            local_paths: &r.local_paths,
            output_dir: r.output_dir.as_deref(),
            files: r.file_count,
            bytes: r.bytes,
            total_bytes: r.total_bytes,
            moved_bytes: r.moved_bytes,
            skipped_bytes: r.skipped_bytes,
            error: r.error.as_deref(),
            transports: &r.transports,
            paths: &r.paths,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_tagged_snake_case_and_peer_text_is_escaped_not_mangled() {
        let line = serde_json::to_string(&Event::Warning {
            message: "a\u{1b}]0;x\u{7}\r\nb\u{202e}c",
        })
        .unwrap();
        assert_eq!(
            line,
            "{\"event\":\"warning\",\"message\":\"a\\u001b]0;x\\u0007\\r\\nb\u{202e}c\"}"
        );
        let line = serde_json::to_string(&Event::FileDone {
            transfer_id: Uuid::nil(),
            path: "d/f",
            size: 3,
        })
        .unwrap();
        assert!(line.starts_with("{\"event\":\"file_done\","), "{line}");
    }
}
