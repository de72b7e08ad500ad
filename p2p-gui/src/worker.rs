//! The session worker: the one place where the window meets p2p-core's session API.
//!
//! [`run`] returns a stream of [`WorkerEvent`]s. The application turns it into an
//! abortable iced `Task`, so the session runs on the iced executor (a tokio runtime)
//! and the window only ever receives messages: it never blocks on the network or the
//! disk. Aborting the task drops the listener and the session, which closes the
//! connection.
//!
//! Listening, dialing and announcing go through [`p2p_core::net::Endpoint`], as in the
//! CLI: every connection is TLS 1.3 with this device's key, and the peer is let in by
//! the [`SessionOptions::security`] the window built (a one-time code, a trusted
//! device, this device's own key, or — for a listener — an unknown device that a person
//! then judges at its offer). The peer's verified identity comes with
//! [`WorkerEvent::Connected`]. An unknown device's offers are always shown, whatever
//! auto-accept says.
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
//!
//! With a rendezvous server (Settings, or `P2P_RENDEZVOUS`), a code reaches a peer on
//! any network: the waiting side opens a mailbox there ([`Plan::Allocate`]) and makes
//! its code from the mailbox' number, the side given the code joins it
//! ([`Plan::Claim`]). The [`Endpoint::Rendezvous`] that results is served like any
//! other connecting endpoint (reconnections included). Its path (lan, direct, relay)
//! comes with [`WorkerEvent::Connected`] and each change of it as
//! [`WorkerEvent::Path`]: it moves from the relay to a direct path mid-transfer.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use iced::futures::stream::{self, Stream, StreamExt};
use p2p_core::discovery::{Beacon, DiscoveryConfig, PeerInfo};
use p2p_core::fs::source::SourceManifest;
use p2p_core::net::ice::Path;
use p2p_core::net::traversal::Rendezvous;
use p2p_core::net::{
    Admitted, Code, Endpoint, PeerIdentity, SecurityError, Transport, TransportChoice,
};
use p2p_core::reconnect::Reconnect;
use p2p_core::rendezvous::client::RendezvousError;
use p2p_core::transport::Stream as ByteStream;
use p2p_core::{
    Decision, EventSink, IncomingOffer, P2PSession, ReceiveOptions, SessionOptions, TransferEvent,
};
use tokio::sync::{mpsc, Notify};
use uuid::Uuid;

/// How long looking for the peer of a code on the local network may take: two beacon
/// intervals and a margin (the CLI's `receive CODE` waits as long).
pub const FIND_TIMEOUT: Duration = Duration::from_secs(5);

/// How to reach the peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Listen on `bind` (`host:port`) and serve one peer at a time until stopped. The
    /// beacon carries `nameplate`, the public part of the code this side waits for.
    Listen {
        bind: String,
        nameplate: Option<u16>,
    },
    /// Connect to `addr` (`host:port`) and serve that one session (reconnecting after a
    /// transient failure when [`Policy::auto_reconnect`] is on).
    Connect { addr: String },
    /// Find the peer that waits for a code with this nameplate on the local network,
    /// then connect to it as [`Plan::Connect`] does. The connection must prove the id
    /// its beacon announced.
    FindCode { nameplate: u16 },
    /// Open a mailbox on the rendezvous `server` (`host:port`), make the code from its
    /// number ([`WorkerEvent::Code`]) and wait there for the peer that knows it; then
    /// serve the session as [`Plan::Connect`] does (this side accepts the connection).
    Allocate { server: String },
    /// Join the mailbox of `code` on the rendezvous `server` and connect to the peer
    /// waiting there; then as [`Plan::Connect`].
    Claim { server: String, code: Code },
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
    /// The transports to dial, or listen, with (the Settings tab's choice).
    pub transport: TransportChoice,
}

/// What the worker reports to the window.
#[derive(Debug, Clone)]
pub enum WorkerEvent {
    /// The listener is bound.
    Listening(SocketAddr),
    /// Something worth a line in the status bar that changes nothing (announcing on
    /// the local network failed, …).
    Note(String),
    /// The peer of a code was found on the local network; connecting to it.
    Found(PeerInfo),
    /// The rendezvous opened a mailbox: this code (its first part the mailbox' number)
    /// lets the peer in, from any network.
    Code(Code),
    /// The connection's path changed (a rendezvous connection: relay → direct).
    Path(Path),
    /// A session is established with the device `identity` proved to be, over
    /// `transport`.
    Connected {
        peer: String,
        addr: Option<SocketAddr>,
        identity: Option<PeerIdentity>,
        transport: Option<Transport>,
        /// The path it takes (lan, direct, relay), for a connection made through a
        /// rendezvous; its changes follow as [`WorkerEvent::Path`].
        path: Option<Path>,
        handle: SessionHandle,
    },
    /// The peer offers a transfer and waits for [`SessionHandle::decide`].
    Offer(IncomingOffer),
    /// Progress and outcome of the running transfer, straight from the core.
    Transfer(TransferEvent),
    /// A send command failed. When the transfer had started, a `Failed` event with the
    /// same error came first; otherwise (nothing to send, unreadable file) this is the
    /// only report. `resumable`: the failure was transient (the connection), so
    /// sending the same again resumes it; a refusal (files exist, declined, no space)
    /// or a local problem is not.
    SendFailed { error: String, resumable: bool },
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
    decisions: mpsc::UnboundedSender<(Uuid, Decision)>,
    cancel: Arc<Notify>,
    /// The worker's: set once the window closes it.
    closing: Arc<AtomicBool>,
}

#[derive(Debug)]
enum Command {
    /// Send these paths, as a new transfer or (with an id) resuming an interrupted one.
    Send(Vec<PathBuf>, Option<Uuid>),
    SetReceive(ReceiveOptions, bool),
    /// Close the session cleanly and end the worker.
    Close,
}

/// How long a clean close may take before the connection is simply dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

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
        let decision = if accept {
            Decision::Accept
        } else {
            Decision::Decline("the receiver declined the transfer".to_owned())
        };
        let _ = self.decisions.send((transfer_id, decision));
    }

    /// Accepts the offered transfer `transfer_id` with other options than the
    /// session's, for this transfer only: another folder, or replacing files that exist.
    pub fn accept_with(&self, transfer_id: Uuid, options: ReceiveOptions) {
        let _ = self
            .decisions
            .send((transfer_id, Decision::AcceptWith(options)));
    }

    /// Closes the session cleanly between transfers (TLS `close_notify`, so the peer
    /// sees the end of the session, not a broken connection) and ends the worker, which
    /// then reports [`WorkerEvent::Stopped`]. An offer arriving meanwhile is declined.
    /// Taken only while no incoming transfer is running; abort the worker's task to
    /// stop at once. Returns `false` when the session is gone already (abort then).
    pub fn close(&self) -> bool {
        self.closing.store(true, Ordering::Release);
        self.commands.send(Command::Close).is_ok()
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
/// `discovery` (as `p2p-transfer receive` does), unless it is `None`; a
/// [`Plan::FindCode`] looks for its peer with it.
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
            closing: Arc::new(AtomicBool::new(false)),
        }));
        let error = match plan {
            Plan::Listen { bind, nameplate } => {
                listen(&bind, nameplate, &options, &state, discovery, &out).await
            }
            Plan::Connect { addr } => dial(&addr, &options, &state, &out).await,
            Plan::FindCode { nameplate } => match find(nameplate, discovery, &options).await {
                Ok(peer) => {
                    let addr = peer.addr.to_string();
                    out.send(WorkerEvent::Found(peer));
                    dial(&addr, &options, &state, &out).await
                }
                Err(error) => Some(error),
            },
            Plan::Allocate { server } => match allocate(&server).await {
                Ok((rendezvous, code)) => {
                    // Clones of an admission share their state: the session's options
                    // now let in the peer that proves this code.
                    let _ = options.security.admission.clone().with_code(code.clone());
                    out.send(WorkerEvent::Code(code));
                    let endpoint = Endpoint::Rendezvous(Box::new(rendezvous));
                    connect(&endpoint, &options, &state, &out).await
                }
                Err(error) => Some(error),
            },
            Plan::Claim { server, code } => match Rendezvous::claim(&server, &code).await {
                Ok(rendezvous) => {
                    let endpoint = Endpoint::Rendezvous(Box::new(rendezvous));
                    connect(&endpoint, &options, &state, &out).await
                }
                Err(e) => Some(describe(&e)),
            },
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
    /// The window closed the session: the worker ends.
    closing: Arc<AtomicBool>,
}

type Shared = Arc<Mutex<State>>;

fn lock(state: &Shared) -> std::sync::MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

/// Finds the peer waiting for a code with `nameplate`, and requires the connection to
/// prove the id it announced (anyone can announce anything; the code still decides).
async fn find(
    nameplate: u16,
    discovery: Option<DiscoveryConfig>,
    options: &SessionOptions,
) -> Result<PeerInfo, String> {
    let Some(config) = discovery else {
        return Err(format!(
            "Cannot look for the peer of code {nameplate}-… on this network: finding \
             peers is switched off. Type its address next to the code."
        ));
    };
    match p2p_core::discovery::find_nameplate(&config, nameplate, FIND_TIMEOUT).await {
        Ok(peer) => {
            options.security.admission.expect(Some(peer.device_id));
            Ok(peer)
        }
        // The core's words name CLI flags; say it for the window.
        Err(
            p2p_core::discovery::DiscoveryError::NoSender { timeout, .. }
            | p2p_core::discovery::DiscoveryError::NotFound { timeout, .. },
        ) => Err(format!(
            "Nobody waiting for code {nameplate}-… was found on this network within {} s. \
             Check that the other side waits with this code and is on the same network (a \
             firewall may block UDP broadcast), or type its address next to the code.",
            timeout.as_secs()
        )),
        Err(p2p_core::discovery::DiscoveryError::Ambiguous { candidates, .. }) => {
            // `PeerInfo`'s Display shows the announced name escaped.
            let seen: Vec<String> = candidates.iter().map(ToString::to_string).collect();
            Err(format!(
                "{} devices wait for a code {nameplate}-… on this network ({}): type the \
                 address of yours next to the code.",
                candidates.len(),
                seen.join("; ")
            ))
        }
        Err(e) => Err(format!(
            "{e}. Check that the other side waits with this code, or type its address \
             next to the code."
        )),
    }
}

/// Opens a mailbox on the rendezvous `server` and makes the code for it.
async fn allocate(server: &str) -> Result<(Rendezvous, Code), String> {
    let rendezvous = Rendezvous::allocate(server)
        .await
        .map_err(|e| describe(&e))?;
    let nameplate = u16::try_from(rendezvous.nameplate()).map_err(|_| {
        format!(
            "the rendezvous server {server} gave mailbox number {}, too large for a code",
            rendezvous.nameplate()
        )
    })?;
    let code = Code::generate_on(nameplate);
    rendezvous.set_code(code.clone()).await;
    Ok((rendezvous, code))
}

/// [`connect`] to `addr` with the transports the Settings tab chose.
async fn dial(
    addr: &str,
    options: &SessionOptions,
    state: &Shared,
    out: &Output,
) -> Option<String> {
    let transport = lock(state).policy.transport;
    connect(&Endpoint::dial_with(addr, transport), options, state, out).await
}

/// Connects through `endpoint`, serves the session, and — with auto-reconnect —
/// connects again after a transient failure. The first connection is not retried: a
/// wrong address is reported at once. Returns the error that ended it, if any.
async fn connect(
    endpoint: &Endpoint,
    options: &SessionOptions,
    state: &Shared,
    out: &Output,
) -> Option<String> {
    let mut first = match P2PSession::open(endpoint, options).await {
        Ok(session) => Some(session),
        Err(e) => return Some(describe(&e)),
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
                        None => P2PSession::open(endpoint, options).await?,
                    };
                    progress.connected();
                    let result = serve(session, state, out).await;
                    reported.store(result.is_err(), Ordering::Relaxed);
                    result
                }
            },
            |retry| {
                out.send(WorkerEvent::Reconnecting {
                    error: describe(retry.error),
                    delay: retry.delay,
                    attempt: retry.attempt,
                })
            },
        )
        .await;
    // A QUIC close is sent by this process: let it leave before the endpoint goes.
    endpoint.shut_down().await;
    match result {
        Ok(()) => None,
        Err(e) if reconnect.gave_up() => Some(format!(
            "gave up after {} reconnection attempts: {}",
            reconnect.retries(),
            describe(&e)
        )),
        Err(_) if reported.load(Ordering::Relaxed) => None,
        Err(e) => Some(describe(&e)),
    }
}

/// Accepts peers one after another until the task is aborted. Returns an error when
/// the listener cannot be set up, or when a wrong code burnt the code it waits for.
async fn listen(
    bind: &str,
    nameplate: Option<u16>,
    options: &SessionOptions,
    state: &Shared,
    discovery: Option<DiscoveryConfig>,
    out: &Output,
) -> Option<String> {
    let transport = lock(state).policy.transport;
    let mut endpoint = match Endpoint::listen_with(bind, transport).await {
        Ok(endpoint) => endpoint,
        Err(e) => return Some(describe(&e)),
    };
    let Some(addr) = endpoint.local_addr() else {
        return Some("cannot read the listening address".to_owned());
    };
    out.send(WorkerEvent::Listening(addr));
    // Announces until the endpoint is dropped (a loopback listener on the loopback
    // network only; see `Announcer::for_listener`).
    if let Some(config) = discovery {
        let beacon = Beacon::new(
            options.security.device_id(),
            &options.device_name,
            addr.port(),
        )
        .with_nameplate(nameplate);
        if let Err(e) = endpoint.announce(beacon, &config) {
            out.send(WorkerEvent::Note(format!(
                "Not announcing on the local network: {e}"
            )));
        }
    }
    loop {
        match P2PSession::open(&endpoint, options).await {
            // A listener does not resend: the peer that connected sends, or not.
            Ok(session) => {
                let _ = serve(session, state, out).await;
                let closing = {
                    let mut state = lock(state);
                    state.resend = None;
                    state.closing.load(Ordering::Acquire)
                };
                if closing {
                    // A QUIC close is sent by this process, not the kernel: let it
                    // leave before the listener goes (bounded).
                    endpoint.shut_down().await;
                    return None;
                }
            }
            // The code is burnt: the person has to start again with a new one.
            Err(
                e @ p2p_core::Error::Security(SecurityError::WrongCode | SecurityError::CodeBurnt),
            ) => return Some(describe(&e)),
            Err(e) => {
                out.send(WorkerEvent::Disconnected {
                    reason: Some(format!(
                        "a peer tried to connect but failed: {}",
                        describe(&e)
                    )),
                });
                // Keep a persistent accept failure (out of file handles) from spinning.
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// An error in the window's words: the core's refusals name CLI commands and flags,
/// which mean nothing here.
pub fn describe(error: &p2p_core::Error) -> String {
    match error {
        p2p_core::Error::Security(SecurityError::UnknownDevice(id)) => format!(
            "refused unknown device {id}: it is not one of your trusted devices. Pair with \
             a one-time code (Send or Receive tab), or add it to the trusted devices"
        ),
        p2p_core::Error::Security(SecurityError::CodeMissing { here: true }) => {
            "the peer connected with a one-time code, but none was given here: type the \
             code the peer shows"
                .to_owned()
        }
        p2p_core::Error::Security(SecurityError::CodeMissing { here: false }) => {
            "the peer did not use the one-time code: give it the code shown here".to_owned()
        }
        p2p_core::Error::Connect {
            action,
            addr,
            source,
        } => connect_words(action, addr, source),
        p2p_core::Error::Rendezvous(e) => rendezvous_words(e),
        p2p_core::Error::Security(SecurityError::NoQuicAnswer { addr }) => format!(
            "{} did not answer over QUIC (UDP): check that the other side is waiting, and \
             that this network lets UDP through — if it does not, choose TCP or Automatic \
             under Transport in Settings",
            addr.as_deref().unwrap_or("the peer")
        ),
        other => other.to_string(),
    }
}

/// A rendezvous failure, as a person would say it, with what to do about it.
fn rendezvous_words(error: &RendezvousError) -> String {
    match error {
        RendezvousError::Unreachable { server, why: cause } => {
            let why = match cause.kind() {
                std::io::ErrorKind::ConnectionRefused => "nothing answers there".to_owned(),
                _ if cause.to_string().contains("failed to lookup address") => {
                    "no such host".to_owned()
                }
                _ => p2p_core::error::os_words(cause),
            };
            format!(
                "cannot reach the rendezvous server {server} ({why}): check the Rendezvous \
                 server under Settings, or empty it to use codes on this network only"
            )
        }
        RendezvousError::Timeout => format!(
            "{error}: check the Rendezvous server under Settings, or empty it to use codes \
             on this network only"
        ),
        RendezvousError::PeerLeft => "the other side left the rendezvous before the transfer \
                                      could start: start again with a new code"
            .to_owned(),
        // The server's reason is escaped already ("no one is waiting on nameplate 7:
        // check the code…").
        other => other.to_string(),
    }
}

/// A failure to connect or listen, as a person would say it (not "os error 111").
fn connect_words(action: &str, addr: &str, error: &std::io::Error) -> String {
    use std::io::ErrorKind::*;
    let listening = action != "connect to";
    match error.kind() {
        ConnectionRefused => format!(
            "nothing is listening at {addr}: check the address and port, and that the \
             other side is waiting (Listen, or `p2p-transfer receive`)"
        ),
        TimedOut => {
            format!("{addr} did not answer: check the address, and that no firewall is in the way")
        }
        HostUnreachable | NetworkUnreachable => {
            format!("{addr} cannot be reached from this network: check the address")
        }
        AddrInUse if listening => {
            format!("another program already uses {addr}: choose another port (0 picks a free one)")
        }
        AddrNotAvailable if listening => {
            format!("{addr} is not an address of this computer")
        }
        PermissionDenied if listening => format!(
            "not allowed to listen on {addr}: ports below 1024 need administrator rights, \
             choose a higher one"
        ),
        _ if error.to_string().contains("failed to lookup address") => {
            format!("cannot find {addr}: check the name (or type its IP address)")
        }
        _ => format!("cannot {action} {addr}: {error}"),
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
    // Cancel stops a running transfer through the session's own interrupt: the peer is
    // told (`Error{Interrupted}`), keeps what arrived and may wait for a resume.
    let interrupt = p2p_core::Interrupt::new();
    session.set_interrupt(interrupt.clone());
    let closing = lock(state).closing.clone();
    let in_transfer = Arc::new(AtomicBool::new(false));
    let cancelling = Arc::new(AtomicBool::new(false));
    let sink = Sink {
        out: out.clone(),
        in_transfer: in_transfer.clone(),
        cancelling: cancelling.clone(),
    };
    let identity = session.peer_identity().cloned();
    // A rendezvous connection's path, and each change of it while the session lasts.
    let mut path = session.path();
    let now = path.as_mut().map(|p| *p.borrow_and_update());
    let _following = path.map(|path| follow_path(path, out.clone()));
    // Nobody vouches for an unknown device: a person decides on each of its offers.
    let unknown = identity
        .as_ref()
        .is_some_and(|i| i.admitted == Admitted::Unknown);
    out.send(WorkerEvent::Connected {
        peer: session.peer().device_name.clone(),
        addr: session.peer_addr(),
        identity,
        transport: session.transport(),
        path: now,
        handle: SessionHandle {
            commands,
            decisions,
            cancel: cancel.clone(),
            closing: closing.clone(),
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
            (
                state.policy.receive.clone(),
                state.policy.auto_accept && !unknown,
            )
        };
        let command = match pending.take() {
            Some(command) => command,
            None => {
                let (held, decisions, closing) = (&*in_transfer, &mut decision_rx, &*closing);
                // Hold commands back while an offer awaits its answer.
                let receiving = &receive;
                let decide = once(move |offer| {
                    held.store(true, Ordering::Release);
                    answer_offer(offer, auto_accept, receiving, decisions, closing, out)
                });
                let receiving = session.receive_with(&receive, &sink, decide);
                tokio::pin!(receiving);
                tokio::select! {
                    biased;
                    () = cancel.notified() => {
                        if in_transfer.load(Ordering::Acquire) {
                            cancelling.store(true, Ordering::Release);
                            interrupt.trigger();
                            let _ = tokio::time::timeout(TELL_PEER, &mut receiving).await;
                            out.send(WorkerEvent::Cancelled);
                            break Ok(());
                        }
                        continue;
                    }
                    result = &mut receiving => match result {
                        // The `Finished` event (or the window's own decline) has told
                        // the window.
                        Ok(Some(_)) => continue,
                        Ok(None) => break Ok(()),
                        Err(e) => break Err(e),
                    },
                    command = next_command(&mut command_rx, &in_transfer) => match command {
                        // The window dropped every handle: it is closing.
                        None => {
                            closing.store(true, Ordering::Release);
                            break Ok(());
                        }
                        Some(command) => command,
                    },
                }
            }
        };
        match command {
            Command::Close => break Ok(()),
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
                        out.send(WorkerEvent::SendFailed {
                            error: e.to_string(),
                            resumable: false,
                        });
                        continue;
                    }
                };
                lock(state).resend = Some((paths, transfer_id));
                let sending = session.send_manifest_as(&manifest, transfer_id, &sink);
                tokio::pin!(sending);
                let result = tokio::select! {
                    result = &mut sending => result,
                    () = cancel.notified() => {
                        lock(state).resend = None;
                        cancelling.store(true, Ordering::Release);
                        interrupt.trigger();
                        let _ = tokio::time::timeout(TELL_PEER, &mut sending).await;
                        out.send(WorkerEvent::Cancelled);
                        break Ok(());
                    }
                };
                if !matches!(&result, Err(e) if e.is_transient()) {
                    lock(state).resend = None;
                }
                if let Err(e) = result {
                    out.send(WorkerEvent::SendFailed {
                        error: e.to_string(),
                        resumable: e.is_transient(),
                    });
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
    if result.is_ok() && closing.load(Ordering::Acquire) {
        // The peer's session loop ends cleanly on a TLS close_notify; a dropped
        // connection would be an error there.
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, session.close()).await;
    }
    out.send(WorkerEvent::Disconnected {
        reason: result.as_ref().err().map(describe),
    });
    result
}

/// Aborts the task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Tells the window each change of the connection's path, until the session ends (the
/// guard is dropped) or the connection goes.
fn follow_path(mut path: tokio::sync::watch::Receiver<Path>, out: Output) -> AbortOnDrop {
    AbortOnDrop(tokio::spawn(async move {
        while path.changed().await.is_ok() {
            let now = *path.borrow_and_update();
            out.send(WorkerEvent::Path(now));
        }
    }))
}

/// How long a Cancel lets the running transfer tell the peer it stops (it sends
/// `Error{Interrupted}` and waits at most 2 s for the peer to read it).
const TELL_PEER: std::time::Duration = std::time::Duration::from_secs(3);

/// Makes the compiler see a closure as `FnOnce` (it moves a `&mut` into the future it
/// returns, so it can run only once); a closure bound to a `let` is otherwise inferred
/// from its body alone.
fn once<F: FnOnce(IncomingOffer) -> R, R>(f: F) -> F {
    f
}

/// The answer to an incoming offer: at once with auto-accept, else the window's. A
/// window that went away, or is closing the session, declines.
async fn answer_offer(
    offer: IncomingOffer,
    auto_accept: bool,
    receive: &ReceiveOptions,
    decisions: &mut mpsc::UnboundedReceiver<(Uuid, Decision)>,
    closing: &AtomicBool,
    out: &Output,
) -> Decision {
    if closing.load(Ordering::Acquire) {
        return Decision::Decline("the receiver disconnected".to_owned());
    }
    // Auto-accept takes what needs no choice: files that exist (and may not be
    // replaced) are shown to the person, who replaces, picks another folder or declines.
    if auto_accept && (receive.overwrite || !clashes(&offer, &receive.output_dir).await) {
        return Decision::Accept;
    }
    let id = offer.transfer_id;
    out.send(WorkerEvent::Offer(offer));
    loop {
        match decisions.recv().await {
            Some((answered, decision)) if answered == id => return decision,
            Some(_) => continue,
            None => return Decision::Decline("the receiver closed its window".to_owned()),
        }
    }
}

/// Whether a file of `offer` exists in `dir` already.
async fn clashes(offer: &IncomingOffer, dir: &std::path::Path) -> bool {
    let dir = dir.to_path_buf();
    let files: Vec<String> = offer
        .entries
        .iter()
        .filter(|e| e.size.is_some())
        .map(|e| e.path.clone())
        .collect();
    tokio::task::spawn_blocking(move || {
        files
            .iter()
            .any(|f| std::fs::symlink_metadata(dir.join(f)).is_ok())
    })
    .await
    .unwrap_or(false)
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
    /// A Cancel is stopping the transfer: its `Failed` event is the cancel itself,
    /// which the worker reports as `Cancelled`.
    cancelling: Arc<AtomicBool>,
}

impl EventSink for Sink {
    fn emit(&self, event: TransferEvent) {
        match event {
            TransferEvent::Started { .. } => self.in_transfer.store(true, Ordering::Release),
            TransferEvent::Failed { .. } if self.cancelling.load(Ordering::Acquire) => return,
            _ => {}
        }
        self.out.send(WorkerEvent::Transfer(event));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quic_peer_that_does_not_answer_is_said_in_the_windows_words() {
        let error = p2p_core::Error::Security(SecurityError::NoQuicAnswer {
            addr: Some("10.0.0.5:14567".into()),
        });
        let said = describe(&error);
        assert!(
            said.starts_with("10.0.0.5:14567 did not answer over QUIC (UDP)"),
            "{said}"
        );
        assert!(said.contains("under Transport in Settings"), "{said}");
        assert!(!said.contains("--transport"), "no CLI flag: {said}");
    }
}
