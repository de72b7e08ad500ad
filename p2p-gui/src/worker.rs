//! The session worker: the one place where the window meets p2p-core's session API.
//!
//! [`run`] returns a stream of [`WorkerEvent`]s. The application turns it into an
//! abortable iced `Task`, so the session runs on the iced executor (a tokio runtime)
//! and the window only ever receives messages: it never blocks on the network or the
//! disk. Aborting the task drops the listener and the session, which closes the
//! connection.
//!
//! Once a peer is connected the worker hands out a [`SessionHandle`]. Between commands
//! it waits for the peer's next transfer (`P2PSession::receive`), so incoming transfers
//! are received as they come (auto-accept); a send command is taken only while no
//! incoming transfer is under way. Cancelling a transfer drops the session: the
//! protocol has no message that abandons one transfer and keeps the connection.

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use iced::futures::stream::{self, Stream, StreamExt};
use p2p_core::discovery::{Announcer, Beacon, BeaconTargets, DiscoveryConfig};
use p2p_core::transport::Stream as ByteStream;
use p2p_core::{EventSink, P2PSession, ReceiveOptions, SessionOptions, TransferEvent};
use tokio::sync::{mpsc, Notify};

/// How to reach the peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Listen on `bind` (`host:port`) and serve one peer at a time until stopped.
    Listen { bind: String },
    /// Connect to `addr` (`host:port`) and serve that one session.
    Connect { addr: String },
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
    /// The worker has ended: it could not listen or connect (`Some(error)`), or its one
    /// session is over.
    Stopped { error: Option<String> },
}

/// The window's grip on an established session.
#[derive(Debug, Clone)]
pub struct SessionHandle {
    commands: mpsc::UnboundedSender<Command>,
    cancel: Arc<Notify>,
}

#[derive(Debug)]
enum Command {
    Send(Vec<PathBuf>),
    SetReceiveOptions(ReceiveOptions),
}

impl SessionHandle {
    /// Asks the worker to send `paths`. Returns `false` when the session is gone.
    pub fn send(&self, paths: Vec<PathBuf>) -> bool {
        self.commands.send(Command::Send(paths)).is_ok()
    }

    /// Where (and how) the next incoming transfer is saved.
    pub fn set_receive_options(&self, options: ReceiveOptions) {
        let _ = self.commands.send(Command::SetReceiveOptions(options));
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
    receive: ReceiveOptions,
    discovery: Option<DiscoveryConfig>,
) -> impl Stream<Item = WorkerEvent> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let out = Output(tx);
    let work = async move {
        let error = match plan {
            Plan::Listen { bind } => listen(&bind, &options, receive, discovery, &out).await,
            Plan::Connect { addr } => match P2PSession::connect(&addr, &options).await {
                Ok(session) => {
                    serve(session, receive, &out).await;
                    None
                }
                Err(e) => Some(e.to_string()),
            },
        };
        out.send(WorkerEvent::Stopped { error });
    };
    let events = stream::poll_fn(move |cx| rx.poll_recv(cx));
    // The work runs while the stream is polled; its events come out in order, and the
    // stream ends once the work is done and its events are drained.
    stream::select(events, stream::once(work).filter_map(|()| async { None }))
}

/// Accepts peers one after another until the task is aborted. Returns an error only
/// when the listener cannot be set up.
async fn listen(
    bind: &str,
    options: &SessionOptions,
    mut receive: ReceiveOptions,
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
            Ok(session) => receive = serve(session, receive, out).await,
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

/// Announces a listener on the local network. A listener on a loopback address is
/// reachable from this host only, so it is announced on the loopback network only
/// (unless the configuration names its own targets): nothing leaves the machine.
fn announce(
    mut config: DiscoveryConfig,
    options: &SessionOptions,
    addr: SocketAddr,
    out: &Output,
) -> Option<Announcer> {
    if addr.ip().is_loopback() && config.targets == BeaconTargets::AllInterfaces {
        config.targets = BeaconTargets::Only(vec![Ipv4Addr::new(127, 255, 255, 255).into()]);
    }
    let beacon = Beacon::new(options.device_id, &options.device_name, addr.port());
    match Announcer::start(beacon, &config) {
        Ok(announcer) => Some(announcer),
        Err(e) => {
            out.send(WorkerEvent::Note(format!(
                "Not announcing on the local network: {e}"
            )));
            None
        }
    }
}

/// Serves one session until it ends; returns the receive options in force by then.
async fn serve<S: ByteStream>(
    mut session: P2PSession<S>,
    mut receive: ReceiveOptions,
    out: &Output,
) -> ReceiveOptions {
    let (commands, mut command_rx) = mpsc::unbounded_channel();
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
            cancel: cancel.clone(),
        },
    });
    let reason = loop {
        in_transfer.store(false, Ordering::Release);
        tokio::select! {
            biased;
            () = cancel.notified() => {
                if in_transfer.load(Ordering::Acquire) {
                    out.send(WorkerEvent::Cancelled);
                    break None;
                }
            }
            result = session.receive(&receive, &sink) => match result {
                // The `Finished` event has told the window.
                Ok(Some(_)) => {}
                Ok(None) => break None,
                Err(e) => break Some(e.to_string()),
            },
            command = next_command(&mut command_rx, &in_transfer) => match command {
                // The window dropped every handle: it is closing.
                None => break None,
                Some(Command::SetReceiveOptions(options)) => receive = options,
                Some(Command::Send(paths)) => {
                    let result = tokio::select! {
                        result = session.send(&paths, &sink) => result,
                        () = cancel.notified() => {
                            out.send(WorkerEvent::Cancelled);
                            break None;
                        }
                    };
                    match result {
                        Ok(_) => {}
                        Err(e) => {
                            out.send(WorkerEvent::SendFailed(e.to_string()));
                            // A failure before the transfer started (nothing to send, an
                            // unreadable path) left the stream clean; after it, the
                            // stream's state is unknown and the session must go.
                            if in_transfer.load(Ordering::Acquire) {
                                break Some(e.to_string());
                            }
                        }
                    }
                }
            },
        }
    };
    out.send(WorkerEvent::Disconnected { reason });
    receive
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
