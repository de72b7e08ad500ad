//! The session worker: the one place where the window meets p2p-core's session API.
//!
//! [`run`] returns a stream of [`WorkerEvent`]s. The application turns it into an
//! abortable iced `Task`, so the session runs on the iced executor (a tokio runtime)
//! and the window only ever receives messages: it never blocks on the network or the
//! disk. Aborting the task drops the listener and the session, which closes the
//! connection.
//!
//! Once a peer is connected the worker hands out a [`SessionHandle`]. Between commands
//! it waits for the peer's next transfer (`P2PSession::receive_with`): with auto-accept
//! it is received at once, otherwise the window is shown the offer
//! ([`WorkerEvent::Offer`]) and the worker waits for [`SessionHandle::decide`],
//! answering the sender's keepalives meanwhile. A send command is taken only while no
//! incoming transfer is under way or awaiting an answer. Cancelling a transfer drops
//! the session: the protocol has no message that abandons one transfer and keeps the
//! connection.
//!
//! A connecting worker with auto-reconnect on runs p2p-core's reconnect loop
//! ([`p2p_core::reconnect::Reconnect`], the CLI's too): after a transient failure it
//! connects again with backoff and sends the unfinished selection again under the same
//! transfer id, so the receiver resumes it and only what is missing moves.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use iced::futures::stream::{self, Stream, StreamExt};
use p2p_core::discovery::{Announcer, Beacon, DiscoveryConfig};
use p2p_core::fs::source::SourceManifest;
use p2p_core::reconnect::Reconnect;
use p2p_core::transport::Stream as ByteStream;
use p2p_core::{
    Decision, EventSink, IncomingOffer, P2PSession, ReceiveOptions, SessionOptions, TransferEvent,
};
use tokio::sync::{mpsc, Notify};
use uuid::Uuid;

/// How to reach the peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Listen on `bind` (`host:port`) and serve one peer at a time until stopped.
    Listen { bind: String },
    /// Connect to `addr` (`host:port`) and serve that one session (reconnecting after a
    /// transient failure when [`Policy::auto_reconnect`] is on).
    Connect { addr: String },
}

/// How the worker receives and reconnects. The receive half can change while it runs
/// ([`SessionHandle::set_receive`]).
#[derive(Debug, Clone)]
pub struct Policy {
    pub receive: ReceiveOptions,
    /// Take incoming transfers without asking.
    pub auto_accept: bool,
    /// After a transient failure of a connecting worker, connect again and resume.
    pub auto_reconnect: bool,
    /// Reconnection attempts in a row before giving up (0 = no limit).
    pub max_retries: u32,
}

/// What the worker reports to the window.
#[derive(Debug, Clone)]
pub enum WorkerEvent {
    /// The listener is bound.
    Listening(SocketAddr),
    /// Something worth a line in the status bar that changes nothing (announcing on
    /// the local network failed, …).
    Note(String),
    /// A session is established.
    Connected {
        peer: String,
        addr: Option<SocketAddr>,
        handle: SessionHandle,
    },
    /// The peer offers a transfer and waits for [`SessionHandle::decide`].
    Offer(IncomingOffer),
    /// Progress and outcome of the running transfer, straight from the core.
    Transfer(TransferEvent),
    /// A send command failed. When the transfer had started, a `Failed` event with the
    /// same error came first; otherwise (nothing to send, unreadable file) this is the
    /// only report.
    SendFailed(String),
    /// The user cancelled the running transfer; the session is being dropped.
    Cancelled,
    /// The session ended: closed on purpose by either side (`None`: the peer closed it,
    /// or a cancel dropped it) or broken (`Some(reason)`).
    Disconnected { reason: Option<String> },
    /// The broken session is about to be replaced: connecting again after `delay`.
    Reconnecting {
        error: String,
        delay: Duration,
        attempt: u32,
    },
    /// The worker has ended: it could not listen or connect (`Some(error)`), or its one
    /// session is over.
    Stopped { error: Option<String> },
}

/// The window's grip on an established session.
#[derive(Debug, Clone)]
pub struct SessionHandle {
    commands: mpsc::UnboundedSender<Command>,
    decisions: mpsc::UnboundedSender<(Uuid, bool)>,
    cancel: Arc<Notify>,
}

#[derive(Debug)]
enum Command {
    /// Send these paths, as a new transfer or (with an id) resuming an interrupted one.
    Send(Vec<PathBuf>, Option<Uuid>),
    SetReceive(ReceiveOptions, bool),
}

impl SessionHandle {
    /// Asks the worker to send `paths` as a new transfer. Returns `false` when the
    /// session is gone.
    pub fn send(&self, paths: Vec<PathBuf>) -> bool {
        self.commands.send(Command::Send(paths, None)).is_ok()
    }

    /// Asks the worker to send `paths` again under the id of an interrupted transfer:
    /// the receiver keeps what it has and only the rest moves.
    pub fn resume(&self, paths: Vec<PathBuf>, transfer_id: Uuid) -> bool {
        self.commands
            .send(Command::Send(paths, Some(transfer_id)))
            .is_ok()
    }

    /// Where and how the next incoming transfer is saved, and whether to ask first.
    pub fn set_receive(&self, options: ReceiveOptions, auto_accept: bool) {
        let _ = self
            .commands
            .send(Command::SetReceive(options, auto_accept));
    }

    /// Accepts or declines the offered transfer `transfer_id` (a stale answer, for an
    /// offer no longer waiting, is ignored).
    pub fn decide(&self, transfer_id: Uuid, accept: bool) {
        let _ = self.decisions.send((transfer_id, accept));
    }

    /// Stops the running transfer and drops the session. Does nothing between
    /// transfers.
    pub fn cancel(&self) {
        self.cancel.notify_waiters();
    }
}

/// Starts a worker. The stream ends after [`WorkerEvent::Stopped`].
///
/// While listening, the worker announces itself on the local network with
/// `discovery` (as `p2p-transfer receive` does), unless it is `None`.
pub fn run(
    plan: Plan,
    options: SessionOptions,
    policy: Policy,
    discovery: Option<DiscoveryConfig>,
) -> impl Stream<Item = WorkerEvent> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let out = Output(tx);
    let work = async move {
        let state = Arc::new(Mutex::new(State {
            policy,
            resend: None,
        }));
        let error = match plan {
            Plan::Listen { bind } => listen(&bind, &options, &state, discovery, &out).await,
            Plan::Connect { addr } => connect(&addr, &options, &state, &out).await,
        };
        out.send(WorkerEvent::Stopped { error });
    };
    let events = stream::poll_fn(move |cx| rx.poll_recv(cx));
    // The work runs while the stream is polled; its events come out in order, and the
    // stream ends once the work is done and its events are drained.
    stream::select(events, stream::once(work).filter_map(|()| async { None }))
}

/// What outlives one session of a worker.
#[derive(Debug)]
struct State {
    policy: Policy,
    /// The send under way, to start again after a reconnection.
    resend: Option<(Vec<PathBuf>, Uuid)>,
}

type Shared = Arc<Mutex<State>>;

fn lock(state: &Shared) -> std::sync::MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

/// Connects, serves the session, and — with auto-reconnect — connects again after a
/// transient failure. The first connection is not retried: a wrong address is
/// reported at once. Returns the error that ended it, if any.
async fn connect(
    addr: &str,
    options: &SessionOptions,
    state: &Shared,
    out: &Output,
) -> Option<String> {
    let mut first = match P2PSession::connect(addr, options).await {
        Ok(session) => Some(session),
        Err(e) => return Some(e.to_string()),
    };
    let (auto_reconnect, max_retries) = {
        let state = lock(state);
        (state.policy.auto_reconnect, state.policy.max_retries)
    };
    let mut reconnect = Reconnect::new(auto_reconnect, max_retries);
    // Whether the last attempt's error ended a session, which `serve` has reported
    // (`Disconnected`); a reconnection that failed to connect has not been.
    let reported = &AtomicBool::new(false);
    let result = reconnect
        .run(
            |progress| {
                let first = first.take();
                async move {
                    reported.store(false, Ordering::Relaxed);
                    let session = match first {
                        Some(session) => session,
                        None => P2PSession::connect(addr, options).await?,
                    };
                    progress.connected();
                    let result = serve(session, state, out).await;
                    reported.store(result.is_err(), Ordering::Relaxed);
                    result
                }
            },
            |retry| {
                out.send(WorkerEvent::Reconnecting {
                    error: retry.error.to_string(),
                    delay: retry.delay,
                    attempt: retry.attempt,
                })
            },
        )
        .await;
    match result {
        Ok(()) => None,
        Err(e) if reconnect.gave_up() => Some(format!(
            "gave up after {} reconnection attempts: {e}",
            reconnect.retries()
        )),
        Err(_) if reported.load(Ordering::Relaxed) => None,
        Err(e) => Some(e.to_string()),
    }
}

/// Accepts peers one after another until the task is aborted. Returns an error only
/// when the listener cannot be set up.
async fn listen(
    bind: &str,
    options: &SessionOptions,
    state: &Shared,
    discovery: Option<DiscoveryConfig>,
    out: &Output,
) -> Option<String> {
    let listener = match p2p_core::transport::listen(bind).await {
        Ok(listener) => listener,
        Err(e) => return Some(e.to_string()),
    };
    let addr = match listener.local_addr() {
        Ok(addr) => addr,
        Err(e) => return Some(format!("cannot read the listening address: {e}")),
    };
    out.send(WorkerEvent::Listening(addr));
    // Stops announcing when dropped, with the listener.
    let _announcer = discovery.and_then(|config| announce(config, options, addr, out));
    loop {
        match P2PSession::accept(&listener, options).await {
            // A listener does not resend: the peer that connected sends, or not.
            Ok(session) => {
                let _ = serve(session, state, out).await;
                lock(state).resend = None;
            }
            Err(e) => {
                out.send(WorkerEvent::Disconnected {
                    reason: Some(format!("a peer tried to connect but failed: {e}")),
                });
                // Keep a persistent accept failure (out of file handles) from spinning.
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// Announces a listener on the local network (a loopback listener on the loopback
/// network only; see `Announcer::for_listener`).
fn announce(
    config: DiscoveryConfig,
    options: &SessionOptions,
    addr: SocketAddr,
    out: &Output,
) -> Option<Announcer> {
    let beacon = Beacon::new(options.device_id, &options.device_name, addr.port());
    match Announcer::for_listener(beacon, addr, &config) {
        Ok(announcer) => Some(announcer),
        Err(e) => {
            out.send(WorkerEvent::Note(format!(
                "Not announcing on the local network: {e}"
            )));
            None
        }
    }
}

/// Serves one session until it ends: `Ok` when it was closed on purpose (by either
/// side, or a cancel), the error when it broke. A send left unfinished by a transient
/// failure stays in `state.resend`, and is started first by the next session.
async fn serve<S: ByteStream>(
    mut session: P2PSession<S>,
    state: &Shared,
    out: &Output,
) -> p2p_core::Result<()> {
    let (commands, mut command_rx) = mpsc::unbounded_channel();
    let (decisions, mut decision_rx) = mpsc::unbounded_channel();
    let cancel = Arc::new(Notify::new());
    let in_transfer = Arc::new(AtomicBool::new(false));
    let sink = Sink {
        out: out.clone(),
        in_transfer: in_transfer.clone(),
    };
    out.send(WorkerEvent::Connected {
        peer: session.peer().device_name.clone(),
        addr: session.peer_addr(),
        handle: SessionHandle {
            commands,
            decisions,
            cancel: cancel.clone(),
        },
    });
    let mut pending = lock(state)
        .resend
        .clone()
        .map(|(paths, id)| Command::Send(paths, Some(id)));
    let result = loop {
        in_transfer.store(false, Ordering::Release);
        let (receive, auto_accept) = {
            let state = lock(state);
            (state.policy.receive.clone(), state.policy.auto_accept)
        };
        let command = match pending.take() {
            Some(command) => command,
            None => {
                let (held, decisions) = (&*in_transfer, &mut decision_rx);
                // Hold commands back while an offer awaits its answer.
                let decide = once(move |offer| {
                    held.store(true, Ordering::Release);
                    answer_offer(offer, auto_accept, decisions, out)
                });
                tokio::select! {
                    biased;
                    () = cancel.notified() => {
                        if in_transfer.load(Ordering::Acquire) {
                            out.send(WorkerEvent::Cancelled);
                            break Ok(());
                        }
                        continue;
                    }
                    result = session.receive_with(&receive, &sink, decide) => match result {
                        // The `Finished` event (or the window's own decline) has told
                        // the window.
                        Ok(Some(_)) => continue,
                        Ok(None) => break Ok(()),
                        Err(e) => break Err(e),
                    },
                    command = next_command(&mut command_rx, &in_transfer) => match command {
                        // The window dropped every handle: it is closing.
                        None => break Ok(()),
                        Some(command) => command,
                    },
                }
            }
        };
        match command {
            Command::SetReceive(options, auto_accept) => {
                let mut state = lock(state);
                state.policy.receive = options;
                state.policy.auto_accept = auto_accept;
            }
            Command::Send(paths, transfer_id) => {
                let transfer_id = transfer_id.unwrap_or_else(Uuid::new_v4);
                let manifest = match SourceManifest::scan(&paths) {
                    Ok(manifest) => manifest,
                    Err(e) => {
                        lock(state).resend = None;
                        out.send(WorkerEvent::SendFailed(e.to_string()));
                        continue;
                    }
                };
                lock(state).resend = Some((paths, transfer_id));
                let result = tokio::select! {
                    result = session.send_manifest_as(&manifest, transfer_id, &sink) => result,
                    () = cancel.notified() => {
                        lock(state).resend = None;
                        out.send(WorkerEvent::Cancelled);
                        break Ok(());
                    }
                };
                if !matches!(&result, Err(e) if e.is_transient()) {
                    lock(state).resend = None;
                }
                if let Err(e) = result {
                    out.send(WorkerEvent::SendFailed(e.to_string()));
                    // A failure before the transfer started (nothing to send, an
                    // unreadable path) left the stream clean; after it, the
                    // stream's state is unknown and the session must go.
                    if in_transfer.load(Ordering::Acquire) {
                        break Err(e);
                    }
                }
            }
        }
    };
    out.send(WorkerEvent::Disconnected {
        reason: result.as_ref().err().map(ToString::to_string),
    });
    result
}

/// Makes the compiler see a closure as `FnOnce` (it moves a `&mut` into the future it
/// returns, so it can run only once); a closure bound to a `let` is otherwise inferred
/// from its body alone.
fn once<F: FnOnce(IncomingOffer) -> R, R>(f: F) -> F {
    f
}

/// The answer to an incoming offer: at once with auto-accept, else the window's. A
/// window that went away declines.
async fn answer_offer(
    offer: IncomingOffer,
    auto_accept: bool,
    decisions: &mut mpsc::UnboundedReceiver<(Uuid, bool)>,
    out: &Output,
) -> Decision {
    if auto_accept {
        return Decision::Accept;
    }
    let id = offer.transfer_id;
    out.send(WorkerEvent::Offer(offer));
    loop {
        match decisions.recv().await {
            Some((answered, true)) if answered == id => return Decision::Accept,
            Some((answered, false)) if answered == id => {
                return Decision::Decline("the receiver declined the transfer".to_owned())
            }
            Some(_) => continue,
            None => return Decision::Decline("the receiver closed its window".to_owned()),
        }
    }
}

/// The next command, but only while no incoming transfer is under way: taking one then
/// would abandon the transfer half-way. The receive branch wakes the loop when it ends.
fn next_command<'a>(
    commands: &'a mut mpsc::UnboundedReceiver<Command>,
    in_transfer: &'a AtomicBool,
) -> impl Future<Output = Option<Command>> + 'a {
    std::future::poll_fn(move |cx| {
        if in_transfer.load(Ordering::Acquire) {
            Poll::Pending
        } else {
            commands.poll_recv(cx)
        }
    })
}

/// Sends worker events to the window; a window that went away is not an error.
#[derive(Debug, Clone)]
struct Output(mpsc::UnboundedSender<WorkerEvent>);

impl Output {
    fn send(&self, event: WorkerEvent) {
        let _ = self.0.send(event);
    }
}

/// Forwards core events, and notes when a transfer has started.
struct Sink {
    out: Output,
    in_transfer: Arc<AtomicBool>,
}

impl EventSink for Sink {
    fn emit(&self, event: TransferEvent) {
        if let TransferEvent::Started { .. } = event {
            self.in_transfer.store(true, Ordering::Release);
        }
        self.out.send(WorkerEvent::Transfer(event));
    }
}
