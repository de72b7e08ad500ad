//! The async driver: runs a [`Sender`] or [`Receiver`] over a framed stream and the disk.
//!
//! One loop per transfer: serve the machine's disk requests, write what it wants sent,
//! report its events (progress coalesced to one every [`PROGRESS_INTERVAL`]), then wait
//! for the next frame, the machine's timer, or the keepalive timer — whichever comes
//! first. The driver makes no protocol decisions.
//!
//! A sender reads inline with positional reads: reads are short and page-cache sized.
//! A receiver hands its disk work to a [`DiskThread`](super::disk) — creating, writing
//! and renaming many small files is the larger half of its work — and applies the
//! completions as they come back; a chunk is still acknowledged only once written.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::collections::VecDeque;
use std::future::Future;
use std::task::Poll;

use futures::{FutureExt, SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Notify;
use tokio_util::codec::Framed;
use uuid::Uuid;

use crate::error::{Error, Result, TransferError};
use crate::event::{Direction, EventSink, TransferEvent, PROGRESS_INTERVAL};
use crate::fs::output::OutputDir;
use crate::fs::source::{SourceManifest, SourceReader};
use crate::throttle::TokenBucket;
use crate::transfer::disk::{self, DiskThread};
use crate::transfer::receiver::{IoRequest, Receiver};
use crate::transfer::sender::Sender;
use crate::transfer::window::{DEFAULT_MAX_ATTEMPTS, DEFAULT_RTO};
use crate::wire::{FrameCodec, Message, Offer, SessionConfig, WireError};

/// Default for giving up when the peer has sent nothing for this long during a transfer
/// (a dead peer, a half-open connection). A `Ping` goes out after a sixth of it without
/// sending anything, so a live but idle peer always has something to answer.
pub const IDLE_LIMIT: Duration = Duration::from_secs(30);

/// Where and how to receive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiveOptions {
    /// Folder everything is written into (created if missing).
    pub output_dir: PathBuf,
    /// Replace existing files instead of refusing the transfer.
    pub overwrite: bool,
}

/// What a finished transfer did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransferSummary {
    pub transfer_id: Uuid,
    pub direction: Direction,
    /// Files (not directories) moved.
    pub files: u64,
    pub bytes: u64,
    pub elapsed: Duration,
    /// Top-level names of what was moved.
    pub roots: Vec<String>,
}

/// What the generic loop needs from a state machine.
trait Machine {
    fn handle_message(&mut self, msg: Message, now: Instant) -> Result<()>;
    fn handle_timeout(&mut self, now: Instant) -> Result<()>;
    fn poll_transmit(&mut self) -> Option<Message>;
    fn poll_timeout(&self) -> Option<Instant>;
    fn poll_event(&mut self) -> Option<TransferEvent>;
    fn is_finished(&self) -> bool;
    /// Whether the machine takes more frames now (a receiver whose disk is behind
    /// does not: the socket is left unread until it catches up).
    fn wants_input(&self) -> bool;
    fn progress(&self) -> (u64, Option<(String, u64, u64)>);
    fn total(&self) -> u64;
}

impl Machine for Sender {
    fn handle_message(&mut self, msg: Message, now: Instant) -> Result<()> {
        Sender::handle_message(self, msg, now)
    }
    fn handle_timeout(&mut self, now: Instant) -> Result<()> {
        Sender::handle_timeout(self, now)
    }
    fn poll_transmit(&mut self) -> Option<Message> {
        Sender::poll_transmit(self)
    }
    fn poll_timeout(&self) -> Option<Instant> {
        Sender::poll_timeout(self)
    }
    fn poll_event(&mut self) -> Option<TransferEvent> {
        Sender::poll_event(self)
    }
    fn is_finished(&self) -> bool {
        Sender::is_finished(self)
    }
    fn wants_input(&self) -> bool {
        true
    }
    fn progress(&self) -> (u64, Option<(String, u64, u64)>) {
        (self.done_bytes(), self.current_file())
    }
    fn total(&self) -> u64 {
        self.layout().total_bytes()
    }
}

impl Machine for Receiver {
    fn handle_message(&mut self, msg: Message, now: Instant) -> Result<()> {
        Receiver::handle_message(self, msg, now)
    }
    fn handle_timeout(&mut self, _now: Instant) -> Result<()> {
        Ok(())
    }
    fn poll_transmit(&mut self) -> Option<Message> {
        Receiver::poll_transmit(self)
    }
    fn poll_timeout(&self) -> Option<Instant> {
        Receiver::poll_timeout(self)
    }
    fn poll_event(&mut self) -> Option<TransferEvent> {
        Receiver::poll_event(self)
    }
    fn is_finished(&self) -> bool {
        Receiver::is_finished(self)
    }
    fn wants_input(&self) -> bool {
        Receiver::wants_input(self)
    }
    fn progress(&self) -> (u64, Option<(String, u64, u64)>) {
        (self.done_bytes(), self.current_file())
    }
    fn total(&self) -> u64 {
        self.layout().total_bytes()
    }
}

/// How one send runs, beyond the session's agreed configuration.
#[derive(Debug, Clone)]
pub struct SendOptions {
    /// Reusing the id of an interrupted attempt lets the receiver resume it.
    pub transfer_id: Uuid,
    /// Bytes per second for every chunk sent, retransmissions included.
    pub max_speed: Option<u64>,
    /// Give up on a peer silent for this long.
    pub idle_limit: Duration,
    /// Stop on purpose, telling the peer the transfer was interrupted.
    pub interrupt: crate::Interrupt,
}

/// What ends a running transfer besides its own protocol: a silent peer, or this side's
/// user.
#[derive(Debug, Clone)]
pub struct Watch {
    /// Give up on a peer silent for this long.
    pub idle_limit: Duration,
    /// Stop on purpose, telling the peer the transfer was interrupted.
    pub interrupt: crate::Interrupt,
}

/// Sends `manifest` over an established session stream.
pub async fn send_manifest<S>(
    framed: &mut Framed<S, FrameCodec>,
    manifest: &SourceManifest,
    config: &SessionConfig,
    peer: &str,
    events: &dyn EventSink,
    send: SendOptions,
) -> Result<TransferSummary>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let SendOptions {
        transfer_id,
        max_speed,
        idle_limit,
        interrupt,
    } = send;
    let watch = Watch {
        idle_limit,
        interrupt,
    };
    for (path, reason) in &manifest.skipped {
        events.emit(TransferEvent::Skipped {
            path: path.display().to_string(),
            reason: (*reason).to_owned(),
        });
    }
    let mut sender = Sender::new(
        transfer_id,
        manifest.entries.clone(),
        config,
        DEFAULT_RTO,
        DEFAULT_MAX_ATTEMPTS,
    );
    let mut reader = SourceReader::new(manifest);
    let total = sender.layout().total_bytes();
    let files = sender.layout().files().count() as u64;
    let start = Instant::now();
    events.emit(TransferEvent::Started {
        transfer_id,
        direction: Direction::Send,
        files,
        total_bytes: total,
        peer: peer.to_owned(),
        roots: roots(&manifest.entries),
    });
    let mut throttle = max_speed.map(|rate| TokenBucket::new(rate, Instant::now()));
    let result = drive(
        framed,
        &mut sender,
        transfer_id,
        events,
        throttle.as_mut(),
        &watch,
        DiskIo::inline(|s: &mut Sender| {
            let Some(req) = s.poll_read() else {
                return Ok(false);
            };
            let data = reader.read(req.at.file, req.offset, req.len)?;
            s.handle_read(req, data, Instant::now());
            Ok(true)
        }),
    )
    .await;
    finish(
        transfer_id,
        Direction::Send,
        &manifest.entries,
        files,
        total,
        start,
        result,
        events,
    )
}

/// Receives the transfer `offer` (already read from the stream) into `options.output_dir`.
pub async fn receive_offer<S>(
    framed: &mut Framed<S, FrameCodec>,
    offer: Offer,
    config: &SessionConfig,
    options: &ReceiveOptions,
    peer: &str,
    events: &dyn EventSink,
    watch: Watch,
) -> Result<TransferSummary>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let transfer_id = offer.transfer_id;
    let start = Instant::now();
    // Held once, shared by the output folder and the machine.
    let entries: Arc<[crate::wire::Entry]> = offer.entries.into();
    let prepared = OutputDir::prepare(
        &options.output_dir,
        transfer_id,
        &entries,
        options.overwrite,
        config.chunk_size,
    );
    let output = match prepared {
        Ok(out) => out,
        Err(e) => {
            tell_peer(framed, &e).await;
            events.emit(TransferEvent::Failed {
                transfer_id,
                error: e.to_string(),
            });
            return Err(e);
        }
    };
    for note in output.notes() {
        events.emit(TransferEvent::Warning {
            message: note.clone(),
        });
    }
    let mut receiver = Receiver::for_entries(
        transfer_id,
        Arc::clone(&entries),
        config,
        output.resume_info().clone(),
    );
    let total = receiver.layout().total_bytes();
    let files = receiver.layout().files().count() as u64;
    events.emit(TransferEvent::Started {
        transfer_id,
        direction: Direction::Receive,
        files,
        total_bytes: total,
        peer: peer.to_owned(),
        roots: roots(&entries),
    });
    if receiver.resumed_bytes() > 0 {
        events.emit(TransferEvent::Resumed {
            transfer_id,
            skipped_bytes: receiver.resumed_bytes(),
        });
    }
    // (`&mut` methods, so that this future needs the thread's handle to be `Send` only.)
    let mut disk = DiskThread::spawn(output)?;
    let wake = disk.wake();
    let busy = disk.busy();
    let serve = |r: &mut Receiver| {
        // Completions first: they release acknowledgements and further requests.
        let mut progressed = false;
        while let Some(done) = disk.try_done() {
            done.apply(r)?;
            progressed = true;
        }
        let batch: Vec<IoRequest> = std::iter::from_fn(|| r.poll_io()).collect();
        if !batch.is_empty() {
            disk.submit(batch);
        }
        Ok(progressed)
    };
    let result = drive(
        framed,
        &mut receiver,
        transfer_id,
        events,
        None,
        &watch,
        DiskIo {
            serve,
            background: Some(Background {
                wake,
                busy,
                hold: (config.window_size as usize / 4).max(1),
            }),
        },
    )
    .await;
    let result = match disk.finish(result.is_err()) {
        Some(mut output) => {
            match &result {
                Ok(()) => output.complete(),
                // Nothing worth resuming from: data that failed verification, a peer
                // that broke the protocol.
                Err(e) if e.discards_partial_data() => output.abandon(),
                // Anything else — a lost connection, Ctrl+C, a full disk — keeps what
                // arrived: dropping `output` saves the state for a resume.
                Err(_) => {}
            }
            result
        }
        None => Err(disk::thread_lost()),
    };
    finish(
        transfer_id,
        Direction::Receive,
        &entries,
        files,
        total,
        start,
        result,
        events,
    )
}

/// Most frames handled per wake-up before the driver serves the disk and writes.
const MAX_FRAMES_PER_WAKE: usize = 64;

/// Top-level names of an offer's entries.
fn roots(entries: &[crate::wire::Entry]) -> Vec<String> {
    entries
        .iter()
        .filter(|e| !e.path.contains('/'))
        .map(|e| e.path.clone())
        .collect()
}

#[allow(clippy::too_many_arguments)]
fn finish(
    transfer_id: Uuid,
    direction: Direction,
    entries: &[crate::wire::Entry],
    files: u64,
    bytes: u64,
    start: Instant,
    result: Result<()>,
    events: &dyn EventSink,
) -> Result<TransferSummary> {
    match result {
        Ok(()) => {
            let elapsed = start.elapsed();
            events.emit(TransferEvent::Finished {
                transfer_id,
                files,
                bytes,
                elapsed,
            });
            Ok(TransferSummary {
                transfer_id,
                direction,
                files,
                bytes,
                elapsed,
                roots: roots(entries),
            })
        }
        Err(e) => {
            events.emit(TransferEvent::Failed {
                transfer_id,
                error: e.to_string(),
            });
            Err(e)
        }
    }
}

/// Best effort: tell the peer why we stop, unless the peer itself stopped us or the
/// connection is gone.
async fn tell_peer<S>(framed: &mut Framed<S, FrameCodec>, error: &Error)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let pointless = matches!(
        error,
        Error::Transfer(TransferError::PeerAborted { .. } | TransferError::ConnectionClosed)
            | Error::Wire(WireError::Io(_) | WireError::Truncated { .. } | WireError::Tampered(_))
    );
    if pointless {
        return;
    }
    // Send the reason, close our side, then keep reading until the peer closes too:
    // closing at once with its data unread would reset the connection, and the peer
    // could lose the reason and take a permanent error (a full disk) for a network blip.
    let _ = tokio::time::timeout(LINGER, async {
        framed.send(error.to_message()).await?;
        SinkExt::<Message>::close(framed).await?;
        while let Some(Ok(_)) = framed.next().await {}
        Ok::<(), WireError>(())
    })
    .await;
}

/// How long a side that stops with an error waits for the peer to read why.
const LINGER: Duration = Duration::from_secs(2);

/// After a connection failure, looks for an `Error` the peer sent just before it
/// closed: that, not the broken connection, is why the transfer stopped.
async fn peer_reason<S>(framed: &mut Framed<S, FrameCodec>) -> Option<Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let read = tokio::time::timeout(Duration::from_millis(500), async {
        while let Some(Ok(msg)) = framed.next().await {
            if let Message::Error { code, message, .. } = msg {
                return Some(Error::from(TransferError::PeerAborted { code, message }));
            }
        }
        None
    });
    read.await.ok().flatten()
}

/// How the loop reaches the disk.
struct DiskIo<F> {
    /// Does (or hands over) the machine's disk work and applies what completed; says
    /// whether anything progressed.
    serve: F,
    /// Work handed to another thread, if any.
    background: Option<Background>,
}

/// Disk work running on another thread.
struct Background {
    /// Fires when some of it completes.
    wake: Arc<Notify>,
    /// Requests handed over and not yet reported back.
    busy: Arc<AtomicUsize>,
    /// Messages (acknowledgements, mostly) that may wait in the write buffer while the
    /// thread is busy, since its next completions will add to them.
    hold: usize,
}

impl<F> DiskIo<F> {
    /// Disk work done inline by `serve` itself.
    fn inline(serve: F) -> Self {
        Self {
            serve,
            background: None,
        }
    }
}

impl Background {
    /// Whether `unflushed` messages can wait for the next disk completion: it saves a
    /// socket write (and a wake-up of the peer) per completion, which with many small
    /// files is most of both ends' system calls.
    fn may_hold(&self, unflushed: usize) -> bool {
        unflushed < self.hold && self.busy.load(Ordering::Acquire) > 0
    }
}

/// Resolves when background disk work reports a completion; never without such work.
async fn io_done(wake: Option<&Notify>) {
    match wake {
        Some(n) => n.notified().await,
        None => std::future::pending().await,
    }
}

async fn drive<S, M>(
    framed: &mut Framed<S, FrameCodec>,
    machine: &mut M,
    transfer_id: Uuid,
    events: &dyn EventSink,
    throttle: Option<&mut TokenBucket>,
    watch: &Watch,
    mut io: DiskIo<impl FnMut(&mut M) -> Result<bool>>,
) -> Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
    M: Machine,
{
    let result = drive_inner(
        framed,
        machine,
        transfer_id,
        events,
        throttle,
        watch,
        &mut io,
    )
    .await;
    match result {
        Err(e) if e.is_transient() => Err(peer_reason(framed).await.unwrap_or(e)),
        Err(e) => {
            tell_peer(framed, &e).await;
            Err(e)
        }
        Ok(()) => Ok(()),
    }
}

async fn drive_inner<S, M>(
    framed: &mut Framed<S, FrameCodec>,
    machine: &mut M,
    transfer_id: Uuid,
    events: &dyn EventSink,
    mut throttle: Option<&mut TokenBucket>,
    watch: &Watch,
    io: &mut DiskIo<impl FnMut(&mut M) -> Result<bool>>,
) -> Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
    M: Machine,
{
    let idle_limit = watch.idle_limit;
    let mut link = Link::new(Instant::now());
    let mut last_progress: Option<Instant> = None;
    let mut ping_seq = 0u64;
    loop {
        // Disk work, and what it lets the machine send. The sender reads ahead only
        // while little is queued for the socket, so its memory stays a chunk or two
        // beyond what the socket holds.
        loop {
            if io.background.is_none() && link.queue.len() >= SEND_AHEAD {
                break;
            }
            let served = (io.serve)(machine)?;
            while let Some(msg) = machine.poll_transmit() {
                link.queue.push_back(msg);
            }
            if !served {
                break;
            }
        }
        while let Some(event) = machine.poll_event() {
            events.emit(event);
        }
        let now = Instant::now();
        let finished = machine.is_finished();
        if finished || last_progress.is_none_or(|t| now - t >= PROGRESS_INTERVAL) {
            let (done_bytes, current_file) = machine.progress();
            events.emit(TransferEvent::Progress {
                transfer_id,
                done_bytes,
                total_bytes: machine.total(),
                current_file,
            });
            last_progress = Some(now);
        }
        if finished {
            // The last words (`Done`, pongs) leave before the transfer returns.
            while let Some(msg) = link.queue.pop_front() {
                framed.feed(msg).await?;
            }
            framed.flush().await?;
            return Ok(());
        }
        let reading = machine.wants_input();
        if !reading {
            // Not reading is our choice (the disk is behind), not the peer's silence.
            link.last_rx = now;
        }

        let ping_at = link.last_tx + idle_limit / 6;
        let idle_at = link.last_rx + idle_limit;
        let progress_at = last_progress.map_or(now, |t| t + PROGRESS_INTERVAL);
        let deadline = [machine.poll_timeout(), link.release_at, Some(progress_at)]
            .into_iter()
            .flatten()
            .fold(ping_at.min(idle_at), Instant::min);
        // `turn` only ever hands whole frames to the stream, so stopping it midway
        // leaves nothing half-written before the `Error` that tells the peer why.
        let turn = link.turn(
            framed,
            throttle.as_deref_mut(),
            reading,
            io.background.as_ref(),
            deadline,
        );
        let wake = tokio::select! {
            biased;
            () = watch.interrupt.triggered() => return Err(TransferError::Cancelled.into()),
            wake = turn => wake?,
        };
        match wake {
            Wake::Frame(frame) => {
                let now = Instant::now();
                link.last_rx = now;
                match frame {
                    Some(Ok(msg)) => machine.handle_message(msg, now)?,
                    Some(Err(e)) => return Err(e.into()),
                    None => return Err(TransferError::ConnectionClosed.into()),
                }
                // Frames that arrived with it, already whole in the read buffer, are
                // taken too before anything is written back, so that acknowledgements
                // (and the chunks they release) leave in one write instead of one per
                // frame: with many small files that is most of the syscalls. Nothing
                // more is read from the socket for this, so the buffer (and memory)
                // stays as small as it was.
                for _ in 1..MAX_FRAMES_PER_WAKE {
                    if !machine.wants_input() || !FrameCodec::holds_frame(framed.read_buffer()) {
                        break;
                    }
                    match framed.next().now_or_never() {
                        Some(Some(Ok(msg))) => machine.handle_message(msg, now)?,
                        Some(Some(Err(e))) => return Err(e.into()),
                        Some(None) => return Err(TransferError::ConnectionClosed.into()),
                        None => break,
                    }
                }
            }
            // Background disk work finished, or the socket took what was queued: loop
            // round to apply it and to queue more.
            Wake::Disk | Wake::Wrote => {}
            Wake::Timer => {
                let now = Instant::now();
                if now >= link.last_rx + idle_limit {
                    return Err(TransferError::PeerSilent(idle_limit).into());
                }
                if now >= link.last_tx + idle_limit / 6 {
                    // Ahead of queued chunks (a ping is small and not throttled).
                    ping_seq += 1;
                    link.queue.push_front(Message::Ping(ping_seq));
                    link.last_tx = now;
                }
                machine.handle_timeout(now)?;
            }
        }
    }
}

/// Messages the sender side of the loop may queue ahead of the socket before it stops
/// asking the machine for more (the machine's window still bounds what is in flight).
/// One: the next chunk is read while the previous one drains from the stream's write
/// buffer, and only one chunk buffer is alive at a time. (Two made the allocator give
/// memory back to the system and fault it in again for every chunk: 389 `brk` calls
/// instead of 23 for 256 MiB, `pread` into fresh pages 4× slower, sender CPU +45 %.)
const SEND_AHEAD: usize = 1;

/// Why [`Link::turn`] returned.
enum Wake {
    /// A frame arrived (or the stream ended or failed).
    Frame(Option<std::result::Result<Message, WireError>>),
    /// Background disk work completed.
    Disk,
    /// The socket took queued messages: there is room for more.
    Wrote,
    /// The deadline passed.
    Timer,
}

/// The connection as the loop sees it: what waits to be written, when the peer was
/// last heard, when we last said anything. Reading, writing, the throttle and the
/// timers make progress together in [`Link::turn`]: a write that waits for the socket
/// or for tokens never keeps a frame from being read, so liveness depends on the peer
/// alone, never on how fast our own writes drain.
struct Link {
    /// Messages the machine produced that the socket has not taken yet.
    queue: VecDeque<Message>,
    /// When the throttle lets the chunk at the head of `queue` go (tokens reserved).
    release_at: Option<Instant>,
    /// Messages handed to the framed stream and not yet flushed.
    unflushed: usize,
    /// Last time the peer was heard: a whole frame, or bytes of one.
    last_rx: Instant,
    /// Last time we queued something for the peer.
    last_tx: Instant,
    /// Bytes in the read buffer when last looked at: growth means the peer is sending.
    buffered: usize,
}

impl Link {
    fn new(now: Instant) -> Self {
        Self {
            queue: VecDeque::new(),
            release_at: None,
            unflushed: 0,
            last_rx: now,
            last_tx: now,
            buffered: 0,
        }
    }

    /// Moves bytes both ways until something happens that the loop must act on.
    async fn turn<S>(
        &mut self,
        framed: &mut Framed<S, FrameCodec>,
        mut throttle: Option<&mut TokenBucket>,
        reading: bool,
        background: Option<&Background>,
        deadline: Instant,
    ) -> Result<Wake>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let mut sleep = std::pin::pin!(tokio::time::sleep_until(deadline.into()));
        let mut sleep_until = deadline;
        let mut disk = std::pin::pin!(io_done(background.map(|b| &*b.wake)));
        std::future::poll_fn(|cx| {
            let now = Instant::now();
            let mut wrote = false;
            // Writes: hand queued messages to the framed stream while it has room and
            // the throttle allows, then push them towards the socket.
            while let Some(head) = self.queue.front() {
                if let (Some(bucket), Message::Chunk(chunk)) = (throttle.as_deref_mut(), head) {
                    let at = *self
                        .release_at
                        .get_or_insert_with(|| now + bucket.reserve(chunk.data.len(), now));
                    if at > now {
                        if at < sleep_until {
                            sleep_until = at;
                            sleep.as_mut().reset(at.into());
                        }
                        break;
                    }
                }
                match framed.poll_ready_unpin(cx) {
                    Poll::Ready(Ok(())) => {}
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(Error::from(e))),
                    Poll::Pending => break,
                }
                let Some(msg) = self.queue.pop_front() else {
                    break;
                };
                if matches!(msg, Message::Chunk(_)) {
                    self.release_at = None;
                }
                framed.start_send_unpin(msg)?;
                self.unflushed += 1;
                self.last_tx = now;
                wrote = true;
            }
            if self.unflushed > 0 && !background.is_some_and(|b| b.may_hold(self.unflushed)) {
                match framed.poll_flush_unpin(cx) {
                    Poll::Ready(Ok(())) => {
                        self.unflushed = 0;
                        wrote = true;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(Error::from(e))),
                    Poll::Pending => {}
                }
            }
            // Reads: a whole frame ends the turn; bytes of one still prove the peer
            // is alive (one chunk may take longer than the idle limit to arrive).
            if reading {
                if let Poll::Ready(frame) = framed.poll_next_unpin(cx) {
                    self.buffered = framed.read_buffer().len();
                    return Poll::Ready(Ok(Wake::Frame(frame)));
                }
                let buffered = framed.read_buffer().len();
                if buffered > self.buffered {
                    self.last_rx = now;
                }
                self.buffered = buffered;
            }
            if disk.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Ok(Wake::Disk));
            }
            if wrote && self.queue.len() < SEND_AHEAD {
                return Poll::Ready(Ok(Wake::Wrote));
            }
            if sleep.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Ok(Wake::Timer));
            }
            Poll::Pending
        })
        .await
    }
}
