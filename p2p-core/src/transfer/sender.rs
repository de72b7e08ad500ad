//! The sending half of a transfer, as a sans-IO state machine.
//!
//! Lifecycle: `new` queues the `Offer`; the peer's `Accept` starts streaming. The machine
//! asks for file data with [`Sender::poll_read`] (new chunks in file order while the
//! window has room, then chunks to send again), hashes each file while its chunks are
//! read for the first time, compresses and checksums each chunk, and queues it for
//! [`Sender::poll_transmit`]. After the last chunk of a file it queues `FileEnd` with the
//! file's SHA-256. It finishes when the receiver reports `Done` after confirming every
//! file with `FileDone`.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use uuid::Uuid;

use crate::chunk::{ChunkSet, Layout};
use crate::compress::AdaptiveCompressor;
use crate::error::{Error, Result, TransferError};
use crate::event::TransferEvent;
use crate::transfer::window::{DeliveryRate, Window};
use crate::verify::{crc32, FileHasher};
use crate::wire::{Chunk, ChunkFlags, ChunkRange, ChunkRef, Entry, Message, Offer, SessionConfig};

/// File data the sender needs from disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadRequest {
    pub at: ChunkRef,
    pub offset: u64,
    pub len: usize,
    pub purpose: ReadPurpose,
}

/// Why the sender needs a chunk's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadPurpose {
    /// First send (the bytes are hashed too).
    Send,
    /// A retransmission.
    Resend,
    /// The receiver already has this chunk (resume): only the file's hash needs it.
    HashOnly,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Offer sent, waiting for Accept.
    Offered,
    Streaming,
    Finished,
    Failed,
}

/// Sending state machine. See the module documentation.
pub struct Sender {
    transfer_id: Uuid,
    entries: Vec<Entry>,
    layout: Layout,
    window: Window,
    /// How fast the receiver acknowledges: sizes the window to the path.
    delivery: DeliveryRate,
    /// The length of the chunks being sent (a moving average): the window holds
    /// [`crate::transfer::window::IN_FLIGHT_TIME`] of data in chunks of this length,
    /// not of the chunk size — small files make chunks far shorter than it.
    chunk_len: u64,
    max_attempts: u32,
    phase: Phase,
    /// Next file (position in `files`) and chunk to read for the first time.
    files: Vec<u32>,
    next_file: usize,
    next_chunk: u64,
    /// Hash of the file being read for the first time.
    hasher: FileHasher,
    /// Chunks to read again for a retransmission.
    resend: VecDeque<ChunkRef>,
    /// Chunks the receiver already holds (resume), per file.
    skip: HashMap<u32, ChunkSet>,
    /// Chunks handed out by `poll_read` and not yet given back.
    reading: usize,
    compressor: AdaptiveCompressor,
    outbox: VecDeque<Message>,
    events: VecDeque<TransferEvent>,
    /// Per entry: bytes acknowledged and whether the receiver confirmed the file.
    acked_bytes: Vec<u64>,
    confirmed: Vec<bool>,
    unconfirmed: usize,
    done_bytes: u64,
    current_file: Option<u32>,
}

impl Sender {
    /// A sender for `entries` with the session's agreed `config`. `rto` is the
    /// retransmission timeout and `max_attempts` the sends per chunk before giving up.
    pub fn new(
        transfer_id: Uuid,
        entries: Vec<Entry>,
        config: &SessionConfig,
        rto: Duration,
        max_attempts: u32,
    ) -> Self {
        let layout = Layout::new(&entries, config.chunk_size);
        let files: Vec<u32> = layout.files().collect();
        let mut outbox = VecDeque::new();
        outbox.push_back(Message::Offer(Offer {
            transfer_id,
            entries: entries.clone(),
        }));
        Self {
            transfer_id,
            window: Window::new(config.window_size as usize, rto),
            delivery: DeliveryRate::default(),
            chunk_len: layout.chunk_size(),
            max_attempts: max_attempts.max(1),
            phase: Phase::Offered,
            unconfirmed: files.len(),
            files,
            next_file: 0,
            next_chunk: 0,
            hasher: FileHasher::new(),
            resend: VecDeque::new(),
            skip: HashMap::new(),
            reading: 0,
            compressor: AdaptiveCompressor::new(
                config.compress,
                i32::from(config.compress_level),
                config.adaptive,
            ),
            outbox,
            events: VecDeque::new(),
            acked_bytes: vec![0; entries.len()],
            confirmed: vec![false; entries.len()],
            done_bytes: 0,
            current_file: None,
            layout,
            entries,
        }
    }

    // ---- getters -------------------------------------------------------------------

    pub fn transfer_id(&self) -> Uuid {
        self.transfer_id
    }

    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Bytes the receiver has acknowledged.
    pub fn done_bytes(&self) -> u64 {
        self.done_bytes
    }

    /// The file most recently acknowledged: (path, bytes acknowledged, size).
    pub fn current_file(&self) -> Option<(String, u64, u64)> {
        let f = self.current_file?;
        let e = &self.entries[f as usize];
        Some((
            e.path.clone(),
            self.acked_bytes[f as usize],
            self.layout.size(f).unwrap_or(0),
        ))
    }

    /// True once the receiver confirmed every file and the whole transfer.
    pub fn is_finished(&self) -> bool {
        self.phase == Phase::Finished
    }

    // ---- input ---------------------------------------------------------------------

    /// Handles a message from the receiver.
    pub fn handle_message(&mut self, msg: Message, now: Instant) -> Result<()> {
        let result = self.dispatch(msg, now);
        if result.is_err() {
            self.phase = Phase::Failed;
        }
        result
    }

    fn dispatch(&mut self, msg: Message, now: Instant) -> Result<()> {
        match (self.phase, msg) {
            (_, Message::Ping(v)) => self.outbox.push_back(Message::Pong(v)),
            (_, Message::Pong(_)) => {}
            (_, Message::Error { code, message, .. }) => {
                return Err(TransferError::PeerAborted { code, message }.into())
            }
            (Phase::Offered, Message::Accept(accept)) => {
                if accept.transfer_id != self.transfer_id {
                    return Err(Error::protocol("Accept names another transfer"));
                }
                self.on_resume(&accept.have, &accept.complete)?;
                self.phase = Phase::Streaming;
            }
            (Phase::Streaming, Message::Ack(at)) => self.on_ack(at, now)?,
            (Phase::Streaming, Message::Nack(at)) => self.on_nack(at)?,
            (Phase::Streaming, Message::FileDone { file }) => self.on_file_done(file, now)?,
            (Phase::Streaming, Message::Done { transfer_id }) => {
                if transfer_id != self.transfer_id || self.unconfirmed > 0 {
                    return Err(Error::protocol(
                        "the receiver reported Done before confirming every file",
                    ));
                }
                self.phase = Phase::Finished;
            }
            (phase, msg) => {
                return Err(Error::protocol(format!(
                    "unexpected {} while {phase:?}",
                    msg.kind()
                )))
            }
        }
        Ok(())
    }

    /// Takes note of what the receiver already holds from an earlier attempt.
    fn on_resume(&mut self, have: &[ChunkRange], complete: &[u32]) -> Result<()> {
        for &file in complete {
            let size = self.layout.size(file).ok_or_else(|| {
                Error::protocol(format!("Accept lists non-file entry {file} as complete"))
            })?;
            if std::mem::replace(&mut self.confirmed[file as usize], true) {
                return Err(Error::protocol(format!("Accept lists entry {file} twice")));
            }
            self.unconfirmed -= 1;
            self.acked_bytes[file as usize] = size;
            self.done_bytes += size;
        }
        for range in have {
            let chunks = self.layout.chunks(range.file).ok_or_else(|| {
                Error::protocol(format!(
                    "Accept lists chunks of non-file entry {}",
                    range.file
                ))
            })?;
            if range.start >= range.end || range.end > chunks {
                return Err(Error::protocol(format!("Accept lists bad range {range:?}")));
            }
            self.skip
                .entry(range.file)
                .or_default()
                .insert_range(range.start, range.end);
        }
        if self.done_bytes > 0 || !self.skip.is_empty() {
            let skipped: u64 = self
                .skip
                .iter()
                .flat_map(|(file, set)| {
                    set.ranges().flat_map(move |(s, e)| {
                        (s..e).map(move |index| ChunkRef { file: *file, index })
                    })
                })
                .map(|at| self.layout.chunk_len(at).unwrap_or(0) as u64)
                .sum();
            self.events.push_back(TransferEvent::Resumed {
                transfer_id: self.transfer_id,
                skipped_bytes: self.done_bytes + skipped,
            });
        }
        Ok(())
    }

    fn on_ack(&mut self, at: ChunkRef, now: Instant) -> Result<()> {
        let len = self
            .layout
            .chunk_len(at)
            .ok_or_else(|| Error::protocol(format!("Ack for unknown chunk {at:?}")))?;
        if self.window.ack(at, now) {
            self.delivery.on_ack(len as u64, now);
            self.done_bytes += len as u64;
            self.acked_bytes[at.file as usize] += len as u64;
            self.current_file = Some(at.file);
        }
        Ok(())
    }

    fn on_nack(&mut self, at: ChunkRef) -> Result<()> {
        if !self.window.contains(at) {
            return Ok(()); // already resent and acknowledged
        }
        self.schedule_resend(at)
    }

    fn schedule_resend(&mut self, at: ChunkRef) -> Result<()> {
        let attempts = self.window.attempts(at);
        let path = self.entries[at.file as usize].path.clone();
        if attempts >= self.max_attempts {
            return Err(TransferError::ChunkRetriesExhausted {
                path,
                index: at.index,
                attempts,
            }
            .into());
        }
        if !self.resend.contains(&at) {
            self.resend.push_back(at);
            self.events.push_back(TransferEvent::Retrying {
                transfer_id: self.transfer_id,
                path,
                chunk: at.index,
                attempt: attempts + 1,
            });
        }
        Ok(())
    }

    fn on_file_done(&mut self, file: u32, now: Instant) -> Result<()> {
        let size = self
            .layout
            .size(file)
            .ok_or_else(|| Error::protocol(format!("FileDone for non-file entry {file}")))?;
        if self.confirmed[file as usize] {
            return Err(Error::protocol(format!("FileDone for entry {file} twice")));
        }
        // A confirmed file implies all its chunks arrived, even if an Ack was lost.
        for index in 0..self.layout.chunks(file).unwrap_or(0) {
            self.on_ack(ChunkRef { file, index }, now)?;
        }
        if self.acked_bytes[file as usize] != size {
            return Err(Error::protocol(format!(
                "FileDone for entry {file} before all its chunks were acknowledged"
            )));
        }
        self.confirmed[file as usize] = true;
        self.unconfirmed -= 1;
        self.events.push_back(TransferEvent::FileDone {
            transfer_id: self.transfer_id,
            path: self.entries[file as usize].path.clone(),
            size,
        });
        Ok(())
    }

    /// Handles the data of a [`ReadRequest`].
    pub fn handle_read(&mut self, req: ReadRequest, data: Vec<u8>, now: Instant) {
        self.reading = self.reading.saturating_sub(1);
        let first_send = req.purpose != ReadPurpose::Resend;
        if first_send {
            self.hasher.update(&data);
        } else if !self.window.contains(req.at) {
            return; // acknowledged while it was being read again
        }
        let last = Some(req.at.index + 1) == self.layout.chunks(req.at.file);
        if req.purpose == ReadPurpose::HashOnly {
            self.done_bytes += data.len() as u64;
            self.acked_bytes[req.at.file as usize] += data.len() as u64;
            if last {
                self.end_file(req.at.file);
            }
            return;
        }
        let (flags, payload) = match self.compressor.compress(&data) {
            Some(packed) => (ChunkFlags::COMPRESSED, packed),
            None => (ChunkFlags::empty(), data),
        };
        self.window.sent(req.at, now);
        self.outbox.push_back(Message::Chunk(Chunk {
            at: req.at,
            flags,
            crc32: crc32(&payload),
            data: payload.into(),
        }));
        if first_send && last {
            self.end_file(req.at.file);
        }
    }

    fn end_file(&mut self, file: u32) {
        let sha256 = std::mem::take(&mut self.hasher).finish();
        self.outbox.push_back(Message::FileEnd { file, sha256 });
    }

    /// Handles the passage of time: chunks unacknowledged past their deadline are sent
    /// again, or fail the transfer after `max_attempts` sends.
    pub fn handle_timeout(&mut self, now: Instant) -> Result<()> {
        for at in self.window.expire(now) {
            let attempts = self.window.attempts(at);
            if attempts >= self.max_attempts {
                self.phase = Phase::Failed;
                return Err(TransferError::AckTimeout {
                    path: self.entries[at.file as usize].path.clone(),
                    index: at.index,
                    attempts,
                }
                .into());
            }
            self.schedule_resend(at)?;
        }
        Ok(())
    }

    // ---- output --------------------------------------------------------------------

    /// The next file data needed, if any. Every request must be answered with
    /// [`Sender::handle_read`] before the next `poll_read` that should see its effect.
    pub fn poll_read(&mut self) -> Option<ReadRequest> {
        if self.phase != Phase::Streaming {
            return None;
        }
        if let Some(at) = self.resend.pop_front() {
            self.reading += 1;
            return Some(self.request(at, ReadPurpose::Resend));
        }
        loop {
            let file = *self.files.get(self.next_file)?;
            let chunks = self.layout.chunks(file).unwrap_or(0);
            if self.confirmed[file as usize] || self.next_chunk >= chunks {
                if chunks == 0 && !self.confirmed[file as usize] {
                    self.end_file(file); // empty file: nothing to read
                }
                self.next_file += 1;
                self.next_chunk = 0;
                continue;
            }
            let at = ChunkRef {
                file,
                index: self.next_chunk,
            };
            let purpose = if self.skip.get(&file).is_some_and(|s| s.contains(at.index)) {
                ReadPurpose::HashOnly
            } else if self.window.len() + self.reading
                < self.delivery.window(self.window.capacity(), self.chunk_len)
            {
                let len = self.layout.chunk_len(at).unwrap_or(0) as u64;
                self.chunk_len = (self.chunk_len * 7 + len.max(1)) / 8;
                ReadPurpose::Send
            } else {
                return None;
            };
            self.next_chunk += 1;
            self.reading += 1;
            return Some(self.request(at, purpose));
        }
    }

    fn request(&self, at: ChunkRef, purpose: ReadPurpose) -> ReadRequest {
        ReadRequest {
            at,
            purpose,
            offset: self.layout.offset(at),
            len: self.layout.chunk_len(at).unwrap_or(0),
        }
    }

    /// The next message for the receiver.
    pub fn poll_transmit(&mut self) -> Option<Message> {
        self.outbox.pop_front()
    }

    /// When [`Sender::handle_timeout`] should next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.phase == Phase::Streaming {
            self.window.next_deadline()
        } else {
            None
        }
    }

    /// The next event for the front end.
    pub fn poll_event(&mut self) -> Option<TransferEvent> {
        self.events.pop_front()
    }
}
