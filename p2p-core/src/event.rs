//! Progress events: what the CLI and the GUI render.
//!
//! The transfer drivers emit [`TransferEvent`]s through an [`EventSink`]. `Progress` is
//! coalesced by the driver (at most one every [`PROGRESS_INTERVAL`], plus one at each file
//! boundary), so a front end never floods itself. Front ends never see frames or sockets.

use std::time::Duration;

use uuid::Uuid;

/// Minimum time between two `Progress` events of one transfer.
pub const PROGRESS_INTERVAL: Duration = Duration::from_millis(100);

/// Which way the bytes go, seen from this side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Direction {
    Send,
    Receive,
}

/// One thing that happened during a transfer.
#[derive(Debug, Clone, PartialEq)]
pub enum TransferEvent {
    /// The offer was accepted; bytes are about to move.
    Started {
        transfer_id: Uuid,
        direction: Direction,
        files: u64,
        total_bytes: u64,
        /// Device name of the peer.
        peer: String,
        /// Top-level names of what is being moved.
        roots: Vec<String>,
    },
    /// The receiver already held `skipped_bytes` from an earlier attempt; they are not
    /// sent again.
    Resumed {
        transfer_id: Uuid,
        skipped_bytes: u64,
    },
    /// Bytes confirmed so far (acknowledged by the receiver, or written by us).
    Progress {
        transfer_id: Uuid,
        done_bytes: u64,
        total_bytes: u64,
        /// The file most recently worked on: relative path, bytes done, size.
        current_file: Option<(String, u64, u64)>,
    },
    /// A file was verified and is in place.
    FileDone {
        transfer_id: Uuid,
        path: String,
        size: u64,
    },
    /// A chunk is sent again (checksum failure or timeout).
    Retrying {
        transfer_id: Uuid,
        path: String,
        chunk: u64,
        attempt: u32,
    },
    /// Something the user should know that does not stop the transfer (a resume state
    /// that could not be used, …).
    Warning { message: String },
    /// Something the sender will not send (a symlink inside a folder, a FIFO…).
    Skipped { path: String, reason: String },
    /// Every file is verified and in place.
    Finished {
        transfer_id: Uuid,
        files: u64,
        bytes: u64,
        elapsed: Duration,
    },
    /// The transfer stopped with an error.
    Failed { transfer_id: Uuid, error: String },
}

/// Receives events. Implemented for closures and for tokio channels.
pub trait EventSink: Send + Sync {
    fn emit(&self, event: TransferEvent);
}

impl<F: Fn(TransferEvent) + Send + Sync> EventSink for F {
    fn emit(&self, event: TransferEvent) {
        self(event)
    }
}

impl EventSink for tokio::sync::mpsc::UnboundedSender<TransferEvent> {
    fn emit(&self, event: TransferEvent) {
        // A front end that went away does not stop the transfer.
        let _ = self.send(event);
    }
}

/// Discards every event.
pub struct NoEvents;

impl EventSink for NoEvents {
    fn emit(&self, _: TransferEvent) {}
}
