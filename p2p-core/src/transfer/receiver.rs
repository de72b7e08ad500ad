//! The receiving half of a transfer, as a sans-IO state machine.
//!
//! The receiver checks every chunk against the offer (file index, chunk index, exact
//! length, flags, CRC-32), decompresses it into a buffer of exactly the expected size,
//! and asks the driver to write it ([`IoRequest::Write`]). Once the write is done
//! ([`Receiver::handle_written`]) it acknowledges the chunk. Each file is hashed in order
//! while its data streams: a chunk that arrives ahead of a gap (after a retransmission)
//! is held until the gap fills, never more than a window's worth. When a file has all
//! its chunks and its `FileEnd`, the digests are compared; only a match asks the driver
//! to finalise the file ([`IoRequest::Finalize`]).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use uuid::Uuid;

use crate::chunk::{ChunkSet, Layout, ResumeInfo};
use crate::compress::decompress_exact;
use crate::error::{Error, Result, TransferError};
use crate::event::TransferEvent;
use crate::verify::{crc32, FileHasher};
use crate::wire::{
    Accept, Chunk, ChunkFlags, ChunkRange, ChunkRef, Entry, Message, Offer, SessionConfig,
};

/// Disk work the receiver needs done.
#[derive(Debug, PartialEq, Eq)]
pub enum IoRequest {
    /// Write `data` at `offset` of the file's `.part` file, then call `handle_written`.
    Write {
        at: ChunkRef,
        offset: u64,
        data: Bytes,
    },
    /// Read chunk `at` back from the `.part` file (left there by an earlier attempt), then
    /// call `handle_read_back` with its bytes.
    ReadBack {
        at: ChunkRef,
        offset: u64,
        len: usize,
    },
    /// The file is verified: move it into place, then call `handle_finalized`.
    Finalize { file: u32 },
    /// Every file is in place: apply directory metadata, then call `handle_finished`.
    Finish,
}

/// A file with data in progress. Created when its first chunk or `FileEnd` arrives and
/// dropped when it is finalised, so memory follows the files in flight, not the size of
/// the offer. A chunk has arrived iff it is below `hashed` or held in `ahead`.
#[derive(Debug, Default)]
struct FileState {
    /// Chunks whose write completed (this attempt or an earlier one).
    written: ChunkSet,
    /// Chunks that an earlier attempt left durably in the `.part` file; hashed by
    /// reading them back.
    had: ChunkSet,
    /// A read-back of chunk `hashed` is in progress.
    reading_back: bool,
    hashed: u64,
    hasher: FileHasher,
    /// Chunks that arrived ahead of `hashed`, kept until the gap fills.
    ahead: BTreeMap<u64, Bytes>,
    /// Written chunks at or beyond `hashed`: acknowledged only once hashed, so that the
    /// sender's window also bounds `ahead`.
    unacked: BTreeSet<u64>,
    expected: Option<[u8; 32]>,
    finalizing: bool,
}

impl FileState {
    fn arrived(&self, index: u64) -> bool {
        index < self.hashed || self.ahead.contains_key(&index) || self.had.contains(index)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Receiving,
    Finishing,
    Finished,
    Failed,
}

/// Receiving state machine. See the module documentation.
pub struct Receiver {
    transfer_id: Uuid,
    /// Shared with the output folder: an offer of a million entries is held once.
    entries: Arc<[Entry]>,
    layout: Layout,
    /// Files with data in progress.
    files: HashMap<u32, FileState>,
    /// Per entry: finalised.
    done: Vec<bool>,
    compressed_allowed: bool,
    /// Raw bytes of chunks taken and not yet acknowledged — held ahead of a gap,
    /// queued for the disk, being written — and the most allowed: the agreed window.
    /// An honest sender never has more unacknowledged; anything beyond is refused.
    held_bytes: u64,
    held_limit: u64,
    remaining: usize,
    phase: Phase,
    outbox: VecDeque<Message>,
    io: VecDeque<IoRequest>,
    events: VecDeque<TransferEvent>,
    done_bytes: u64,
    resumed_bytes: u64,
    current_file: Option<u32>,
}

impl Receiver {
    /// A receiver for an offer whose paths the caller has already validated; queues the
    /// `Accept`.
    pub fn new(offer: Offer, config: &SessionConfig) -> Self {
        Self::resume(offer, config, ResumeInfo::default())
    }

    /// Like [`Receiver::new`], continuing from what an earlier attempt left: the `Accept`
    /// tells the sender which chunks and files not to send again.
    pub fn resume(offer: Offer, config: &SessionConfig, resume: ResumeInfo) -> Self {
        Self::for_entries(offer.transfer_id, offer.entries.into(), config, resume)
    }

    /// Like [`Receiver::resume`], for an offer's entries already shared with others
    /// (the output folder).
    pub fn for_entries(
        transfer_id: Uuid,
        entries: Arc<[Entry]>,
        config: &SessionConfig,
        resume: ResumeInfo,
    ) -> Self {
        let layout = Layout::new(&entries, config.chunk_size);
        let mut done = vec![false; entries.len()];
        let mut complete = Vec::new();
        for file in resume.complete {
            if layout.size(file).is_some() && !done[file as usize] {
                done[file as usize] = true;
                complete.push(file);
            }
        }
        let mut files = HashMap::new();
        let mut have = Vec::new();
        for (file, chunks) in resume.have {
            let Some(n) = layout.chunks(file) else {
                continue;
            };
            if done[file as usize] {
                continue;
            }
            let mut kept = ChunkSet::new();
            for (start, end) in chunks.ranges() {
                let end = end.min(n);
                if start < end {
                    kept.insert_range(start, end);
                    have.push(ChunkRange { file, start, end });
                }
            }
            if !kept.is_empty() {
                files.insert(
                    file,
                    FileState {
                        written: kept.clone(),
                        had: kept,
                        ..FileState::default()
                    },
                );
            }
        }
        let remaining = layout.files().count() - complete.len();
        let resumed_bytes = complete
            .iter()
            .map(|f| layout.size(*f).unwrap_or(0))
            .chain(have.iter().map(|r| {
                (r.start..r.end)
                    .map(|index| {
                        layout
                            .chunk_len(ChunkRef {
                                file: r.file,
                                index,
                            })
                            .unwrap_or(0) as u64
                    })
                    .sum::<u64>()
            }))
            .sum();
        let mut outbox = VecDeque::new();
        outbox.push_back(Message::Accept(Accept {
            transfer_id,
            have,
            complete,
        }));
        let mut receiver = Self {
            transfer_id,
            entries,
            held_limit: u64::from(config.window_size.max(1)) * layout.chunk_size(),
            layout,
            files: HashMap::new(),
            done,
            compressed_allowed: config.compress,
            held_bytes: 0,
            remaining,
            phase: Phase::Receiving,
            outbox,
            io: VecDeque::new(),
            events: VecDeque::new(),
            done_bytes: resumed_bytes,
            resumed_bytes,
            current_file: None,
        };
        let starts: Vec<u32> = files.keys().copied().collect();
        receiver.files = files;
        for file in starts {
            receiver.advance(file);
        }
        receiver.check_all_done();
        receiver
    }

    /// Bytes that an earlier attempt had already delivered.
    pub fn resumed_bytes(&self) -> u64 {
        self.resumed_bytes
    }

    /// What a later attempt could resume from, counting every chunk written so far. The
    /// caller persists it only after making those writes durable.
    pub fn resume_snapshot(&self) -> ResumeInfo {
        ResumeInfo {
            have: self
                .files
                .iter()
                .filter(|(_, s)| !s.written.is_empty())
                .map(|(f, s)| (*f, s.written.clone()))
                .collect(),
            complete: (0..self.done.len() as u32)
                .filter(|f| self.done[*f as usize])
                .collect(),
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

    /// Bytes written so far.
    pub fn done_bytes(&self) -> u64 {
        self.done_bytes
    }

    /// The file most recently written to: (path, bytes written, size).
    pub fn current_file(&self) -> Option<(String, u64, u64)> {
        let f = self.current_file?;
        let size = self.layout.size(f).unwrap_or(0);
        let done = match self.files.get(&f) {
            Some(state) => (state.written.len() * self.layout.chunk_size()).min(size),
            None => size,
        };
        Some((self.entries[f as usize].path.clone(), done, size))
    }

    /// Whether more chunks may be read from the peer now: false while the window's
    /// worth of data is held unacknowledged (the disk is behind), so that the socket,
    /// not memory, holds what the sender sends next.
    pub fn wants_input(&self) -> bool {
        self.held_bytes < self.held_limit
    }

    /// True once every file is in place and `Done` is queued.
    pub fn is_finished(&self) -> bool {
        self.phase == Phase::Finished
    }

    // ---- input ---------------------------------------------------------------------

    /// Handles a message from the sender.
    pub fn handle_message(&mut self, msg: Message, now: Instant) -> Result<()> {
        let _ = now;
        let result = match msg {
            Message::Ping(v) => {
                self.outbox.push_back(Message::Pong(v));
                Ok(())
            }
            Message::Pong(_) => Ok(()),
            Message::Error { code, message, .. } => {
                Err(TransferError::PeerAborted { code, message }.into())
            }
            Message::Chunk(chunk) if self.phase != Phase::Failed => self.on_chunk(chunk),
            Message::FileEnd { file, sha256 } if self.phase == Phase::Receiving => {
                self.on_file_end(file, sha256)
            }
            other => Err(Error::protocol(format!(
                "unexpected {} while {:?}",
                other.kind(),
                self.phase
            ))),
        };
        if result.is_err() {
            self.phase = Phase::Failed;
        }
        result
    }

    /// The in-progress state of file `file`, created on first use. Errors for entries
    /// that are not files and for files already finalised.
    fn file_state(&mut self, file: u32) -> Result<&mut FileState> {
        if self.layout.size(file).is_none() {
            return Err(Error::protocol(format!(
                "entry {file} is not a file of the offer"
            )));
        }
        if self.done[file as usize] {
            return Err(Error::protocol(format!("entry {file} is already complete")));
        }
        Ok(self.files.entry(file).or_default())
    }

    fn on_chunk(&mut self, chunk: Chunk) -> Result<()> {
        let at = chunk.at;
        let expected_len = self
            .layout
            .chunk_len(at)
            .ok_or_else(|| Error::protocol(format!("chunk {at:?} is outside its file")))?;
        if !(ChunkFlags::all().contains(chunk.flags)) {
            return Err(Error::protocol("chunk carries unknown flags"));
        }
        let compressed = chunk.flags.contains(ChunkFlags::COMPRESSED);
        if compressed && !self.compressed_allowed {
            return Err(Error::protocol("compressed chunk, but compression is off"));
        }
        if self.done[at.file as usize] {
            // A retransmission crossed our ack of a finished file: acknowledge again.
            self.outbox.push_back(Message::Ack(at));
            return Ok(());
        }
        let state = self.file_state(at.file)?;
        if state.arrived(at.index) {
            // A retransmission crossed our ack: acknowledge again (if it was acknowledged
            // before; otherwise the ack comes once it is hashed), write nothing.
            if at.index < state.hashed && !state.unacked.contains(&at.index) {
                self.outbox.push_back(Message::Ack(at));
            }
            return Ok(());
        }
        if crc32(&chunk.data) != chunk.crc32 {
            self.outbox.push_back(Message::Nack(at));
            return Ok(());
        }
        let data = if compressed {
            decompress_exact(&chunk.data, expected_len)
                .map_err(|e| TransferError::Decompress {
                    path: self.entries[at.file as usize].path.clone(),
                    index: at.index,
                    reason: e.to_string(),
                })?
                .into()
        } else if chunk.data.len() != expected_len {
            return Err(Error::protocol(format!(
                "chunk {at:?} has {} bytes, expected {expected_len}",
                chunk.data.len()
            )));
        } else {
            chunk.data
        };
        self.held_bytes = self.held_bytes.saturating_add(data.len() as u64);
        if self.held_bytes > self.held_limit {
            return Err(Error::protocol(
                "the sender has more chunks unacknowledged than the agreed window",
            ));
        }
        let state = self.file_state(at.file)?;
        state.ahead.insert(at.index, data.clone());
        self.advance(at.file);
        self.io.push_back(IoRequest::Write {
            at,
            offset: self.layout.offset(at),
            data,
        });
        Ok(())
    }

    /// Moves file `file`'s hash cursor as far as the data at hand allows: chunks held
    /// ahead are hashed (and acknowledged if already written); a chunk an earlier
    /// attempt left on disk is requested back from the driver.
    fn advance(&mut self, file: u32) {
        let Some(state) = self.files.get_mut(&file) else {
            return;
        };
        while !state.reading_back {
            let index = state.hashed;
            if let Some(next) = state.ahead.remove(&index) {
                state.hasher.update(&next);
                if state.unacked.remove(&index) {
                    self.held_bytes = self.held_bytes.saturating_sub(next.len() as u64);
                    self.outbox
                        .push_back(Message::Ack(ChunkRef { file, index }));
                }
                state.hashed += 1;
            } else if state.had.contains(index) {
                let at = ChunkRef { file, index };
                state.reading_back = true;
                self.io.push_back(IoRequest::ReadBack {
                    at,
                    offset: self.layout.offset(at),
                    len: self.layout.chunk_len(at).unwrap_or(0),
                });
            } else {
                break;
            }
        }
    }

    /// The bytes of a chunk read back for hashing (see [`IoRequest::ReadBack`]).
    pub fn handle_read_back(&mut self, at: ChunkRef, data: &[u8]) -> Result<()> {
        let state = self.file_state(at.file)?;
        if !state.reading_back || state.hashed != at.index {
            return Err(Error::protocol(
                "read-back of a chunk that was not requested",
            ));
        }
        state.hasher.update(data);
        state.hashed += 1;
        state.reading_back = false;
        self.advance(at.file);
        self.check_file(at.file)
    }

    fn on_file_end(&mut self, file: u32, sha256: [u8; 32]) -> Result<()> {
        let state = self.file_state(file)?;
        if state.expected.is_some() {
            return Err(Error::protocol(format!("second FileEnd for entry {file}")));
        }
        state.expected = Some(sha256);
        self.check_file(file)
    }

    /// The write of `at` reached the file: acknowledge it (once it is also hashed).
    pub fn handle_written(&mut self, at: ChunkRef) -> Result<()> {
        let len = self.layout.chunk_len(at).unwrap_or(0) as u64;
        let state = self.file_state(at.file)?;
        state.written.insert(at.index);
        if at.index < state.hashed {
            self.held_bytes = self.held_bytes.saturating_sub(len);
            self.outbox.push_back(Message::Ack(at));
        } else {
            state.unacked.insert(at.index);
        }
        self.done_bytes += len;
        self.current_file = Some(at.file);
        self.check_file(at.file)
    }

    fn check_file(&mut self, file: u32) -> Result<()> {
        let chunks = self.layout.chunks(file).unwrap_or(0);
        let state = self.file_state(file)?;
        if state.finalizing || state.written.len() < chunks || state.hashed < chunks {
            return Ok(());
        }
        let Some(expected) = state.expected else {
            return Ok(());
        };
        let actual = std::mem::take(&mut state.hasher).finish();
        if actual != expected {
            self.phase = Phase::Failed;
            return Err(TransferError::VerificationFailed {
                path: self.entries[file as usize].path.clone(),
            }
            .into());
        }
        state.finalizing = true;
        self.io.push_back(IoRequest::Finalize { file });
        Ok(())
    }

    /// The file is in place: confirm it to the sender.
    pub fn handle_finalized(&mut self, file: u32) -> Result<()> {
        if self.files.remove(&file).is_none() {
            return Err(Error::protocol(format!(
                "entry {file} was not being finalised"
            )));
        }
        self.done[file as usize] = true;
        self.remaining -= 1;
        self.outbox.push_back(Message::FileDone { file });
        self.events.push_back(TransferEvent::FileDone {
            transfer_id: self.transfer_id,
            path: self.entries[file as usize].path.clone(),
            size: self.layout.size(file).unwrap_or(0),
        });
        self.check_all_done();
        Ok(())
    }

    fn check_all_done(&mut self) {
        if self.remaining == 0 && self.phase == Phase::Receiving {
            self.phase = Phase::Finishing;
            self.io.push_back(IoRequest::Finish);
        }
    }

    /// Directory metadata is applied: the transfer is complete.
    pub fn handle_finished(&mut self) {
        if self.phase == Phase::Finishing {
            self.phase = Phase::Finished;
            self.outbox.push_back(Message::Done {
                transfer_id: self.transfer_id,
            });
        }
    }

    // ---- output --------------------------------------------------------------------

    /// The next disk operation to perform.
    pub fn poll_io(&mut self) -> Option<IoRequest> {
        self.io.pop_front()
    }

    /// The next message for the sender.
    pub fn poll_transmit(&mut self) -> Option<Message> {
        self.outbox.pop_front()
    }

    /// The receiver keeps no timers of its own; the driver's keepalive covers silence.
    pub fn poll_timeout(&self) -> Option<Instant> {
        None
    }

    /// The next event for the front end.
    pub fn poll_event(&mut self) -> Option<TransferEvent> {
        self.events.pop_front()
    }
}
