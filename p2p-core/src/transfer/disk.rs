//! The receiver's disk thread.
//!
//! Creating, writing, stamping and renaming files is most of a receiver's work when a
//! folder holds many small files (on ext4, about three fifths of it); hashing, checking
//! and acknowledging is the rest. [`DiskThread`] moves the first part onto a thread of
//! its own, so the two halves run on two cores at once: the driver hands over the
//! receiver's [`IoRequest`]s in batches and applies the [`Done`] reports as they come
//! back, woken by a [`Notify`].
//!
//! Nothing about the protocol changes. Requests are served in the order they were made
//! (a file's writes before its finalisation), and a chunk is still acknowledged only
//! after its write completed, so the sender's window also bounds the data queued here.
//!
//! The thread owns the [`OutputDir`] (and the background resume-state saves) for the
//! transfer's lifetime and hands it back in [`DiskThread::finish`]. After a failure the
//! remaining requests are skipped, never half-done.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::chunk::ResumeInfo;
use crate::error::{Error, Result, StorageError};
use crate::fs::output::OutputDir;
use crate::transfer::receiver::{IoRequest, Receiver};
use crate::wire::ChunkRef;

/// A disk operation that completed (or why it could not).
#[derive(Debug)]
pub(crate) enum Done {
    Written(ChunkRef),
    ReadBack(ChunkRef, Vec<u8>),
    Finalized(u32),
    Finished,
    Failed(Error),
}

impl Done {
    /// Reports the completion to the receiver.
    pub(crate) fn apply(self, receiver: &mut Receiver) -> Result<()> {
        match self {
            Done::Written(at) => receiver.handle_written(at),
            Done::ReadBack(at, data) => receiver.handle_read_back(at, &data),
            Done::Finalized(file) => receiver.handle_finalized(file),
            Done::Finished => {
                receiver.handle_finished();
                Ok(())
            }
            Done::Failed(e) => Err(e),
        }
    }
}

/// The error for a disk thread that ended while it still had work (it panicked).
pub(crate) fn thread_lost() -> Error {
    StorageError::new(
        "lost the disk thread writing into",
        "the output folder",
        std::io::Error::other("it stopped unexpectedly"),
    )
    .into()
}

/// A thread serving one transfer's disk requests. See the module documentation.
pub(crate) struct DiskThread {
    requests: Option<mpsc::Sender<Vec<IoRequest>>>,
    done: mpsc::Receiver<Done>,
    wake: Arc<Notify>,
    busy: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<OutputDir>>,
}

impl DiskThread {
    /// Starts the thread; it owns `output` until [`DiskThread::finish`].
    pub(crate) fn spawn(output: OutputDir) -> Result<Self> {
        let (requests, inbox) = mpsc::channel::<Vec<IoRequest>>();
        let (report, done) = mpsc::channel();
        let wake = Arc::new(Notify::new());
        let stop = Arc::new(AtomicBool::new(false));
        let busy = Arc::new(AtomicUsize::new(0));
        let worker = Worker {
            busy: busy.clone(),
            output,
            saver: StateSaver::default(),
            behind: WriteBehind::default(),
            report,
            wake: wake.clone(),
            stop: stop.clone(),
            failed: false,
        };
        let thread = std::thread::Builder::new()
            .name("p2p-disk".into())
            .spawn(move || worker.run(inbox))
            .map_err(|e| {
                StorageError::new("cannot start the disk thread for", "the output folder", e)
            })?;
        Ok(Self {
            requests: Some(requests),
            done,
            wake,
            busy,
            stop,
            thread: Some(thread),
        })
    }

    /// Queues a batch of requests (served in order).
    pub(crate) fn submit(&mut self, batch: Vec<IoRequest>) {
        if let Some(tx) = &self.requests {
            self.busy.fetch_add(batch.len(), Ordering::AcqRel);
            // A send fails only if the thread is gone; its `Failed` report (or a
            // panic, seen in `finish`) says why.
            let _ = tx.send(batch);
        }
    }

    /// The next completion, if one is ready.
    pub(crate) fn try_done(&mut self) -> Option<Done> {
        match self.done.try_recv() {
            Ok(done) => Some(done),
            Err(mpsc::TryRecvError::Empty) => None,
            // Only a panic ends the thread while the driver still holds its requests.
            Err(mpsc::TryRecvError::Disconnected) => Some(Done::Failed(thread_lost())),
        }
    }

    /// Woken whenever a completion has been reported since the last wake-up.
    pub(crate) fn wake(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    /// How many requests were handed over and not yet reported back (a completion is
    /// reported before the count drops, and the wake-up follows the drop).
    pub(crate) fn busy(&self) -> Arc<AtomicUsize> {
        self.busy.clone()
    }

    /// Stops the thread and hands back the output folder. With `abandon_queue`, requests
    /// still queued are skipped; otherwise they are served first. `None` if the thread
    /// panicked (its output folder was dropped there, which saves the resume state).
    pub(crate) fn finish(mut self, abandon_queue: bool) -> Option<OutputDir> {
        self.join(abandon_queue)
    }

    fn join(&mut self, abandon_queue: bool) -> Option<OutputDir> {
        if abandon_queue {
            self.stop.store(true, Ordering::SeqCst);
        }
        self.requests = None;
        self.thread.take().and_then(|t| t.join().ok())
    }
}

impl Drop for DiskThread {
    /// A receive that is dropped mid-way (a cancelled future) still waits for the
    /// thread, so the output folder's resume state is saved before this returns.
    fn drop(&mut self) {
        self.join(true);
    }
}

/// Completions reported before the driver is woken in the middle of a long batch.
const WAKE_EVERY: usize = 16;

struct Worker {
    busy: Arc<AtomicUsize>,
    output: OutputDir,
    saver: StateSaver,
    behind: WriteBehind,
    report: mpsc::Sender<Done>,
    wake: Arc<Notify>,
    stop: Arc<AtomicBool>,
    failed: bool,
}

impl Worker {
    fn run(mut self, inbox: mpsc::Receiver<Vec<IoRequest>>) -> OutputDir {
        while let Ok(batch) = inbox.recv() {
            let mut unannounced = 0;
            for request in batch {
                if self.failed || self.stop.load(Ordering::Relaxed) {
                    break;
                }
                let done = self.serve(request).unwrap_or_else(|e| {
                    self.failed = true;
                    Done::Failed(e)
                });
                let slow = matches!(done, Done::Failed(_));
                if self.report.send(done).is_err() {
                    self.failed = true;
                }
                self.busy.fetch_sub(1, Ordering::AcqRel);
                // The driver is woken once per batch (or every few completions of a
                // long one), not per completion: it then acknowledges a batch of
                // chunks and files in one write. Waking it per completion cost two
                // socket writes and two wake-ups per small file.
                unannounced += 1;
                if slow || unannounced == WAKE_EVERY {
                    self.wake.notify_one();
                    unannounced = 0;
                }
            }
            if unannounced > 0 {
                self.wake.notify_one();
            }
        }
        self.saver.wait(&mut self.output);
        self.behind.wait();
        self.output
    }

    fn serve(&mut self, request: IoRequest) -> Result<Done> {
        let output = &mut self.output;
        Ok(match request {
            IoRequest::Write { at, offset, data } => {
                output.write(at.file, offset, &data)?;
                self.saver.written(data.len(), output)?;
                self.behind.written(at.file, data.len(), output);
                Done::Written(at)
            }
            IoRequest::ReadBack { at, offset, len } => {
                Done::ReadBack(at, output.read_part(at.file, offset, len)?)
            }
            IoRequest::Finalize { file } => {
                output.finalize(file)?;
                Done::Finalized(file)
            }
            IoRequest::Finish => {
                output.finish()?;
                Done::Finished
            }
        })
    }
}

/// Bytes of one file after which the disk is asked to write them out.
const WRITE_BEHIND_BYTES: u64 = 64 * 1024 * 1024;

/// Gets a big file's data to the disk while the rest of it streams in: after every
/// [`WRITE_BEHIND_BYTES`] of a file, an `fdatasync` of it runs on another thread (at most
/// one at a time). Without this, nothing of a 1 GiB file is written to the disk before
/// the kernel's own writeback starts (at 10 % of memory dirty, or after 30 s), and the
/// disk does all its work after the transfer; with it a file is on disk about when the
/// transfer ends. Small files are left alone: flushing thousands of them stalls file
/// creation behind the journal commit (measured: the receive rate of 5,000 small files
/// halved), and the kernel writes them soon after anyway.
#[derive(Default)]
struct WriteBehind {
    file: Option<u32>,
    bytes: u64,
    pending: Option<JoinHandle<()>>,
}

impl WriteBehind {
    fn written(&mut self, file: u32, bytes: usize, output: &OutputDir) {
        if self.file != Some(file) {
            self.file = Some(file);
            self.bytes = 0;
        }
        self.bytes += bytes as u64;
        if self.bytes < WRITE_BEHIND_BYTES
            || self.pending.as_ref().is_some_and(|p| !p.is_finished())
        {
            return;
        }
        self.bytes = 0;
        if let Some(handle) = output.clone_handle(file) {
            self.pending = Some(std::thread::spawn(move || {
                // Best effort: only a later save makes claims about durability.
                let _ = handle.sync_data();
            }));
        }
    }

    fn wait(&mut self) {
        if let Some(p) = self.pending.take() {
            let _ = p.join();
        }
    }
}

/// Save resume state at least this often while data arrives…
const SAVE_INTERVAL: Duration = Duration::from_millis(250);
/// …or after this many bytes, whichever comes first. These saves do not flush: they
/// cover a killed or crashed receiver, not a machine that goes down.
const SAVE_BYTES: u64 = 16 * 1024 * 1024;
/// A save that first flushes everything written to disk (`syncfs`), so that a power cut
/// costs at most this much of the transfer. Flushing is what saving costs: done every
/// 250 ms it halved the rate of a folder of 5,000 small files on this project's test
/// machine (docs/benchmarks.md).
const FLUSH_INTERVAL: Duration = Duration::from_secs(5);

/// Saves the receiver's resume state in the background: the state is written (and,
/// every [`FLUSH_INTERVAL`], the data flushed first) on another thread while chunks keep
/// arriving; at most one save runs at a time.
#[derive(Default)]
struct StateSaver {
    since_bytes: u64,
    last: Option<Instant>,
    last_flush: Option<Instant>,
    pending: Option<JoinHandle<Result<Option<ResumeInfo>>>>,
}

impl StateSaver {
    fn written(&mut self, bytes: usize, output: &mut OutputDir) -> Result<()> {
        self.since_bytes += bytes as u64;
        let now = Instant::now();
        let last = *self.last.get_or_insert(now);
        let last_flush = *self.last_flush.get_or_insert(now);
        if self.since_bytes < SAVE_BYTES && now - last < SAVE_INTERVAL {
            return Ok(());
        }
        if self.pending.as_ref().is_some_and(|p| !p.is_finished()) {
            return Ok(());
        }
        if let Some(done) = self.pending.take() {
            if let Some(flushed) = done.join().unwrap_or(Ok(None))? {
                output.flushed(flushed);
            }
        }
        let flush = now - last_flush >= FLUSH_INTERVAL;
        let job = output.save_job(flush)?;
        self.pending = Some(std::thread::spawn(move || job.run()));
        self.since_bytes = 0;
        self.last = Some(now);
        if flush {
            self.last_flush = Some(now);
        }
        Ok(())
    }

    /// Waits for the save in progress; the output folder's own last save follows.
    fn wait(&mut self, output: &mut OutputDir) {
        if let Some(p) = self.pending.take() {
            match p.join() {
                Ok(Ok(Some(flushed))) => output.flushed(flushed),
                Ok(Ok(None)) | Err(_) => {}
                Ok(Err(e)) => tracing::warn!("{e}"),
            }
        }
    }
}
