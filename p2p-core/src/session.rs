//! [`P2PSession`]: one established connection on which either side sends or receives,
//! as many times as it likes.
//!
//! Establishing is asymmetric (one side connects, the other accepts; see
//! [`crate::handshake`]); afterwards both sides are equal. Operations run one at a time:
//! the side that sends calls [`P2PSession::send`], the other [`P2PSession::receive`]
//! (or [`P2PSession::run_event_loop`], which receives until the peer closes).

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;

use futures::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio_util::codec::Framed;
use uuid::Uuid;

use crate::config::default_config;
use crate::error::{Error, HandshakeError, Result, TransferError};
use crate::event::EventSink;
use crate::fs::safe_path::validate_entries;
use crate::fs::source::SourceManifest;
use crate::handshake::{self, Established, LocalPeer, RemotePeer};
use crate::net::{Connection, Endpoint, PeerIdentity, SecureTcp, Security};
use crate::transfer::{self, Decision, IncomingOffer, ReceiveOptions, Received, TransferSummary};
use crate::transport::Stream;
use crate::wire::{Capabilities, ErrorCode, FrameCodec, Message, SessionConfig, WireError};

/// Which side opened the connection. Informational only: it does not restrict what the
/// session can do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Initiator,
    Responder,
}

/// Who we are, what we support, what we propose.
#[derive(Debug, Clone)]
pub struct SessionOptions {
    /// This device's key and whom it lets in (codes, trusted devices, pins). Clones
    /// share both, including a code's state.
    pub security: Security,
    pub device_name: String,
    pub capabilities: Capabilities,
    /// As initiator: the proposal. As responder: ceilings (see [`crate::config::negotiate`]).
    pub config: SessionConfig,
    /// Local limit on what this side sends, bytes per second (`None`: unlimited).
    pub max_speed: Option<u64>,
    /// During a transfer, give up on a peer silent for this long (dead, or a half-open
    /// connection). Pings keep a live peer talking.
    pub idle_timeout: std::time::Duration,
    /// Most chunk data (`window × chunk`) a transfer may make this side hold; the
    /// negotiated configuration never exceeds it, whatever the peer asks.
    pub memory_budget: u64,
    /// Stops the session on purpose (Ctrl+C, Cancel): waits end at once, and a running
    /// transfer tells the peer it was interrupted (so it can be resumed) before it ends.
    pub interrupt: crate::Interrupt,
}

impl Default for SessionOptions {
    fn default() -> Self {
        Self {
            security: Security::default(),
            device_name: default_device_name(),
            capabilities: Capabilities::supported(),
            config: default_config(),
            max_speed: None,
            idle_timeout: crate::transfer::IDLE_LIMIT,
            memory_budget: crate::config::DEFAULT_MEMORY_BUDGET,
            interrupt: crate::Interrupt::default(),
        }
    }
}

/// The host name, or "p2p-transfer" when it cannot be read.
pub fn default_device_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "p2p-transfer".to_owned())
}

/// An established session over a stream `S`.
///
/// ```no_run
/// # async fn demo() -> p2p_core::Result<()> {
/// use p2p_core::{P2PSession, SessionOptions, NoEvents};
/// let mut session = P2PSession::connect("127.0.0.1:14567", &SessionOptions::default()).await?;
/// let summary = session.send(&["photos"], &NoEvents).await?;
/// println!("sent {} files, {} bytes", summary.files, summary.bytes);
/// # Ok(()) }
/// ```
pub struct P2PSession<S> {
    framed: Framed<S, FrameCodec>,
    role: Role,
    established: Established,
    peer_addr: Option<SocketAddr>,
    identity: Option<PeerIdentity>,
    max_speed: Option<u64>,
    idle_timeout: std::time::Duration,
    interrupt: crate::Interrupt,
}

impl P2PSession<SecureTcp> {
    /// Connects to `addr` (`host:port`): TLS, admission by `options.security`, then the
    /// handshake as initiator.
    pub async fn connect(addr: &str, options: &SessionOptions) -> Result<Self> {
        Self::open(&Endpoint::dial(addr), options).await
    }

    /// Accepts connections on `listener` until one is secured, admitted and completes
    /// the handshake as responder (see [`crate::net::endpoint::accept`] for how strangers
    /// are dropped without ending the listener). For a listener that serves several
    /// peers, possibly at once, use an [`Endpoint`] and [`Self::open`].
    pub async fn accept(listener: &TcpListener, options: &SessionOptions) -> Result<Self> {
        let accepted =
            async { Ok(crate::net::endpoint::accept(listener, &options.security).await?) };
        let connection = options.interrupt.guard(accepted).await?;
        Self::establish(connection, options).await
    }

    /// Dials or accepts one peer through `endpoint` and establishes the session.
    pub async fn open(endpoint: &Endpoint, options: &SessionOptions) -> Result<Self> {
        let connected = async { Ok(endpoint.connect(&options.security).await?) };
        let connection = options.interrupt.guard(connected).await?;
        Self::establish(connection, options).await
    }
}

/// Handshakes a listener secures at once (see [`crate::net::endpoint::MAX_PENDING`]).
pub const MAX_PENDING_HANDSHAKES: usize = crate::net::endpoint::MAX_PENDING;

/// How long the session handshake (`Hello`/`Config`) may take once the connection is
/// secured; TLS and admission have [`crate::net::SECURE_TIMEOUT`] of their own.
pub const HANDSHAKE_DEADLINE: std::time::Duration = handshake::HANDSHAKE_TIMEOUT;

/// The stream's read buffer, and the bytes of frames gathered before a write to the
/// socket is forced (the transfer driver writes once per turn of its loop anyway).
/// tokio-util's default, 8 KiB, made every small file's chunk a write and one or two
/// reads of its own (and a wake-up of the peer each).
const IO_BUFFER: usize = 256 * 1024;

impl<S: Stream> P2PSession<S> {
    /// Runs the handshake over an authenticated connection, as initiator when this side
    /// opened it. The peer's identity is the connection's, not what its `Hello` claims.
    pub async fn establish(connection: Connection<S>, options: &SessionOptions) -> Result<Self> {
        let Connection {
            stream,
            peer,
            remote_addr,
            is_client,
        } = connection;
        let handshake = async {
            if is_client {
                Self::initiate(stream, options).await
            } else {
                Self::respond(stream, options).await
            }
        };
        let deadline = async {
            tokio::time::timeout(HANDSHAKE_DEADLINE, handshake)
                .await
                .map_err(|_| HandshakeError::Timeout(HANDSHAKE_DEADLINE.as_secs()))?
        };
        let mut session = options.interrupt.guard(deadline).await?;
        session.identity = Some(peer);
        session.peer_addr = remote_addr;
        Ok(session)
    }

    /// Runs the handshake as initiator over any stream. The stream is taken as it is:
    /// securing it is the caller's business ([`crate::net`] does it for TCP).
    pub async fn initiate(stream: S, options: &SessionOptions) -> Result<Self> {
        let mut framed = Framed::with_capacity(stream, FrameCodec, IO_BUFFER);
        let established = handshake::initiate(&mut framed, &local(options)).await?;
        Ok(Self::new(framed, Role::Initiator, established, options))
    }

    /// Runs the handshake as responder over any stream (see [`Self::initiate`]).
    pub async fn respond(stream: S, options: &SessionOptions) -> Result<Self> {
        let mut framed = Framed::with_capacity(stream, FrameCodec, IO_BUFFER);
        let established = handshake::respond(&mut framed, &local(options)).await?;
        Ok(Self::new(framed, Role::Responder, established, options))
    }

    fn new(
        framed: Framed<S, FrameCodec>,
        role: Role,
        established: Established,
        options: &SessionOptions,
    ) -> Self {
        Self {
            framed,
            role,
            established,
            peer_addr: None,
            identity: None,
            max_speed: options.max_speed,
            idle_timeout: options.idle_timeout,
            interrupt: options.interrupt.clone(),
        }
    }

    /// Changes the local send-rate limit for the following transfers.
    pub fn set_max_speed(&mut self, max_speed: Option<u64>) {
        self.max_speed = max_speed;
    }

    /// Which side opened the connection.
    pub fn role(&self) -> Role {
        self.role
    }

    /// What the peer announced in its `Hello`: name, version, capabilities. Its name is
    /// for display only; who the peer *is* comes from [`Self::peer_identity`].
    pub fn peer(&self) -> &RemotePeer {
        &self.established.peer
    }

    /// The peer's verified identity, for sessions established over a secured
    /// connection ([`Self::establish`], [`P2PSession::connect`], [`P2PSession::accept`]);
    /// `None` over a stream handed to [`Self::initiate`]/[`Self::respond`].
    pub fn peer_identity(&self) -> Option<&PeerIdentity> {
        self.identity.as_ref()
    }

    /// The peer's socket address, for TCP sessions.
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.peer_addr
    }

    /// The agreed transfer parameters.
    pub fn config(&self) -> &SessionConfig {
        &self.established.config
    }

    /// The agreed capabilities (intersection of both sides).
    pub fn capabilities(&self) -> Capabilities {
        self.established.capabilities
    }

    /// Sends files and folders; returns when the peer has verified and placed every file.
    pub async fn send<P: AsRef<Path>>(
        &mut self,
        paths: &[P],
        events: &dyn EventSink,
    ) -> Result<TransferSummary> {
        let manifest = SourceManifest::scan(paths)?;
        self.send_manifest(&manifest, events).await
    }

    /// Sends an already scanned manifest as a new transfer.
    pub async fn send_manifest(
        &mut self,
        manifest: &SourceManifest,
        events: &dyn EventSink,
    ) -> Result<TransferSummary> {
        self.send_manifest_as(manifest, Uuid::new_v4(), events)
            .await
    }

    /// Sends a manifest under a given transfer id. With the id of an interrupted
    /// transfer, the receiver sends back what it already holds and only the rest moves.
    pub async fn send_manifest_as(
        &mut self,
        manifest: &SourceManifest,
        transfer_id: Uuid,
        events: &dyn EventSink,
    ) -> Result<TransferSummary> {
        let folder = manifest.entries.len() > 1
            || manifest
                .entries
                .iter()
                .any(|e| matches!(e.kind, crate::wire::EntryKind::Dir));
        if folder && !self.capabilities().contains(Capabilities::FOLDER) {
            return Err(Error::InvalidInput(
                "the peer cannot receive folders or several files".into(),
            ));
        }
        let peer = self.established.peer.device_name.clone();
        let config = self.established.config;
        transfer::send_manifest(
            &mut self.framed,
            manifest,
            &config,
            &peer,
            events,
            transfer::SendOptions {
                transfer_id,
                max_speed: self.max_speed,
                idle_limit: self.idle_timeout,
                interrupt: self.interrupt.clone(),
            },
        )
        .await
    }

    /// Waits for the peer's next transfer and receives it. Returns `Ok(None)` when the
    /// peer closed the session cleanly instead.
    pub async fn receive(
        &mut self,
        options: &ReceiveOptions,
        events: &dyn EventSink,
    ) -> Result<Option<TransferSummary>> {
        loop {
            let accept = |_: IncomingOffer| std::future::ready(Decision::Accept);
            match self.receive_with(options, events, accept).await? {
                None => return Ok(None),
                Some(Received::Completed(summary)) => return Ok(Some(summary)),
                Some(Received::Declined { .. }) => {}
            }
        }
    }

    /// Waits for the peer's next transfer and asks `decide` whether to take it. An offer
    /// whose paths are unsafe is refused before `decide` is asked. While `decide` runs,
    /// the session answers the sender's pings, so it may wait for a person. A declined
    /// offer leaves the session usable. Returns `Ok(None)` when the peer closed the
    /// session cleanly instead of offering anything.
    pub async fn receive_with<D, F>(
        &mut self,
        options: &ReceiveOptions,
        events: &dyn EventSink,
        decide: D,
    ) -> Result<Option<Received>>
    where
        D: FnOnce(IncomingOffer) -> F,
        F: Future<Output = Decision>,
    {
        let offer = loop {
            let interrupt = self.interrupt.clone();
            match interrupt.guard(self.next_between_transfers()).await? {
                None => return Ok(None),
                Some(Err(e)) => return Err(e.into()),
                Some(Ok(Message::Ping(v))) => self.framed.send(Message::Pong(v)).await?,
                // Late duplicates from the previous transfer (a retransmission that
                // crossed its acknowledgement) carry nothing new.
                Some(Ok(
                    Message::Pong(_) | Message::Chunk(_) | Message::Ack(_) | Message::Nack(_),
                )) => {}
                Some(Ok(Message::Offer(offer))) => break offer,
                Some(Ok(other)) => {
                    let error = Error::protocol(format!(
                        "expected an Offer between transfers, got {}",
                        other.kind()
                    ));
                    let _ = self.framed.send(error.to_message()).await;
                    return Err(error);
                }
            }
        };
        let peer = self.established.peer.device_name.clone();
        let mut chosen_options = None;
        // Unsafe paths are refused by `receive_offer` without asking anybody.
        if validate_entries(&offer.entries).is_ok() {
            let incoming = IncomingOffer::new(&offer, &peer);
            let interrupt = self.interrupt.clone();
            let decision = interrupt.guard(self.await_decision(decide(incoming)));
            match decision.await? {
                Decision::Decline(reason) => {
                    let transfer_id = offer.transfer_id;
                    self.framed
                        .send(Message::Error {
                            code: ErrorCode::Cancelled,
                            message: reason,
                            version: crate::wire::PROTOCOL_VERSION,
                        })
                        .await?;
                    return Ok(Some(Received::Declined { transfer_id }));
                }
                Decision::AcceptWith(chosen) => chosen_options = Some(chosen),
                Decision::Accept => {}
            }
        }
        let options = chosen_options.as_ref().unwrap_or(options);
        let config = self.established.config;
        let summary = transfer::receive_offer(
            &mut self.framed,
            offer,
            &config,
            options,
            &peer,
            events,
            transfer::Watch {
                idle_limit: self.idle_timeout,
                interrupt: self.interrupt.clone(),
            },
        )
        .await?;
        Ok(Some(Received::Completed(summary)))
    }

    /// The peer's next message while no transfer runs. A live peer answers the `Ping`
    /// sent after a sixth of the idle limit of silence; one silent for the whole limit
    /// (gone, or a stranger that completed the handshake and idles) is given up on, so
    /// it cannot hold a listener.
    async fn next_between_transfers(
        &mut self,
    ) -> Result<Option<std::result::Result<Message, WireError>>> {
        let idle = self.idle_timeout;
        let started = tokio::time::Instant::now();
        let mut ping_at = started + idle / 6;
        let mut seq = 0u64;
        loop {
            tokio::select! {
                frame = self.framed.next() => return Ok(match frame {
                    // A peer that closed its TLS connection without close_notify (a
                    // process that exited) between two frames has simply gone, as a TCP
                    // close would say; in the middle of a frame it cut it short.
                    Some(Err(WireError::Io(e)))
                        if e.kind() == std::io::ErrorKind::UnexpectedEof =>
                    {
                        match self.framed.read_buffer().len() {
                            0 => None,
                            buffered => Some(Err(WireError::Truncated { buffered })),
                        }
                    }
                    other => other,
                }),
                () = tokio::time::sleep_until(ping_at) => {
                    if started.elapsed() >= idle {
                        return Err(TransferError::PeerSilent(idle).into());
                    }
                    seq += 1;
                    self.framed.send(Message::Ping(seq)).await?;
                    ping_at = (ping_at + idle / 6).min(started + idle);
                }
            }
        }
    }

    /// Waits for `decision`, answering pings meanwhile. The sender may give up first
    /// (an `Error` message, or closing the connection).
    async fn await_decision<F: Future<Output = Decision>>(
        &mut self,
        decision: F,
    ) -> Result<Decision> {
        let mut decision = std::pin::pin!(decision);
        loop {
            tokio::select! {
                decided = &mut decision => return Ok(decided),
                message = self.framed.next() => match message {
                    None => return Err(TransferError::ConnectionClosed.into()),
                    Some(Err(e)) => return Err(e.into()),
                    Some(Ok(Message::Ping(v))) => self.framed.send(Message::Pong(v)).await?,
                    Some(Ok(Message::Pong(_))) => {}
                    Some(Ok(Message::Error { code, message, .. })) => {
                        return Err(TransferError::PeerAborted { code, message }.into())
                    }
                    Some(Ok(other)) => {
                        let error = Error::protocol(format!(
                            "expected nothing but pings while the offer awaits an answer, \
                             got {}",
                            other.kind()
                        ));
                        let _ = self.framed.send(error.to_message()).await;
                        return Err(error);
                    }
                },
            }
        }
    }

    /// Receives transfers until the peer closes the session.
    pub async fn run_event_loop(
        &mut self,
        options: &ReceiveOptions,
        events: &dyn EventSink,
    ) -> Result<Vec<TransferSummary>> {
        let mut done = Vec::new();
        while let Some(summary) = self.receive(options, events).await? {
            done.push(summary);
        }
        Ok(done)
    }

    /// Closes the session: flushes and shuts the stream down, so the peer's event loop
    /// ends cleanly.
    pub async fn close(mut self) -> Result<()> {
        SinkExt::<Message>::close(&mut self.framed)
            .await
            .map_err(Error::from)
    }
}

fn local(options: &SessionOptions) -> LocalPeer {
    LocalPeer {
        device_id: Uuid::from_slice(&options.security.identity.fingerprint().0[..16])
            .unwrap_or_default(),
        device_name: options.device_name.clone(),
        capabilities: options.capabilities,
        config: options.config,
        memory_budget: options.memory_budget,
    }
}
