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

use bytes::Bytes;
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
use crate::net::{Connection, Endpoint, PeerIdentity, PeerStream, Security, Transport};
use crate::transfer::{self, Decision, IncomingOffer, ReceiveOptions, Received, TransferSummary};
use crate::transport::Stream;
use crate::wire::{
    Capabilities, ErrorCode, FrameCodec, Message, SessionConfig, WireError, MAX_TEXT_LEN,
};

/// A text the peer offers, as a receiver decides on it ([`P2PSession::receive_any_with`]).
/// The text itself has arrived, been checked (UTF-8, at most [`MAX_TEXT_LEN`] bytes) and
/// is held; it is shown only once taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncomingText {
    pub transfer_id: Uuid,
    /// Device name of the sender, as it announced itself (not authenticated).
    pub peer: String,
    /// Length of the text in bytes.
    pub len: usize,
}

/// A text that was taken: the peer's words, to be shown (escaped, on a terminal: see
/// [`crate::text::printable_lines`]), never saved by the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedText {
    pub transfer_id: Uuid,
    /// Device name of the sender, as it announced itself (not authenticated).
    pub peer: String,
    /// Valid UTF-8 of at most [`MAX_TEXT_LEN`] bytes, exactly as sent.
    pub text: String,
}

/// Why [`P2PSession::receive_with`] declines a text (its caller shows none).
pub const TEXT_NOT_SHOWN: &str = "this receiver does not show text; send it as a file";

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
    transport: Option<Transport>,
    path: Option<tokio::sync::watch::Receiver<crate::net::ice::Path>>,
}

impl P2PSession<PeerStream> {
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
        let accepted = crate::net::endpoint::accept(listener, &options.security);
        let connection = options.interrupt.guard(accepted).await?;
        Self::establish(connection, options).await
    }

    /// Dials or accepts one peer through `endpoint` and establishes the session.
    pub async fn open(endpoint: &Endpoint, options: &SessionOptions) -> Result<Self> {
        let connected = endpoint.connect(&options.security);
        let connection = options.interrupt.guard(connected).await?;
        Self::establish(connection, options).await
    }
}

/// How long closing this side may take once the peer has closed the session.
const CLOSE_AFTER_PEER: std::time::Duration = std::time::Duration::from_secs(1);

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
            transport,
            path,
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
        session.transport = Some(transport);
        session.path = path;
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
            transport: None,
            path: None,
        }
    }

    /// Stops this session on purpose when `interrupt` is triggered (instead of the one in
    /// the options it was opened with): a front end with a Cancel per session (the GUI)
    /// gives each session its own, so that cancelling one leaves the next untouched.
    pub fn set_interrupt(&mut self, interrupt: crate::Interrupt) {
        self.interrupt = interrupt;
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

    /// The peer's socket address (TCP or UDP), for sessions opened through
    /// [`crate::net`].
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.peer_addr
    }

    /// What the session runs on (TCP or QUIC), for sessions opened through
    /// [`crate::net`].
    pub fn transport(&self) -> Option<Transport> {
        self.transport
    }

    /// The path the connection takes (lan, direct, relay) and its later changes, for
    /// sessions opened through a rendezvous (`crate::net::traversal`).
    pub fn path(&self) -> Option<tokio::sync::watch::Receiver<crate::net::ice::Path>> {
        self.path.clone()
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

    /// Sends a short text for the peer to show (protocol section 5.5): at most
    /// [`MAX_TEXT_LEN`] bytes, checked before anything is sent. Returns once the peer
    /// took it (`Done`), or with the peer's refusal. Emits no transfer events: a front end
    /// that keeps history records the text itself.
    pub async fn send_text(&mut self, text: &str, transfer_id: Uuid) -> Result<()> {
        if text.len() > MAX_TEXT_LEN {
            return Err(Error::InvalidInput(format!(
                "the text is {} bytes, more than the {MAX_TEXT_LEN} bytes a text may have: \
                 send it as a file, or as a stream (`send -` reads standard input)",
                text.len()
            )));
        }
        if !self.capabilities().contains(Capabilities::TEXT) {
            return Err(Error::InvalidInput(
                "the peer cannot receive text (its p2p-transfer predates it): update it, \
                 or send the text as a file"
                    .into(),
            ));
        }
        self.framed
            .send(Message::Text {
                transfer_id,
                text: Bytes::copy_from_slice(text.as_bytes()),
            })
            .await?;
        loop {
            match self.next_between_transfers().await? {
                None => return Err(TransferError::ConnectionClosed.into()),
                Some(Err(e)) => return Err(e.into()),
                Some(Ok(Message::Ping(v))) => self.framed.send(Message::Pong(v)).await?,
                Some(Ok(
                    Message::Pong(_) | Message::Chunk(_) | Message::Ack(_) | Message::Nack(_),
                )) => {}
                Some(Ok(Message::Done { transfer_id: done })) if done == transfer_id => {
                    return Ok(())
                }
                Some(Ok(Message::Error { code, message, .. })) => {
                    return Err(TransferError::PeerAborted { code, message }.into())
                }
                Some(Ok(other)) => {
                    let error = Error::protocol(format!(
                        "expected Done or Error for the text, got {}",
                        other.kind()
                    ));
                    let _ = self.framed.send(error.to_message()).await;
                    return Err(error);
                }
            }
        }
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
                Some(Received::Declined { .. } | Received::Text(_)) => {}
            }
        }
    }

    /// Waits for the peer's next transfer and asks `decide` whether to take it. An offer
    /// whose paths are unsafe is refused before `decide` is asked. While `decide` runs,
    /// the session answers the sender's pings, so it may wait for a person. A declined
    /// offer leaves the session usable. Returns `Ok(None)` when the peer closed the
    /// session cleanly instead of offering anything.
    ///
    /// A text the peer sends instead is declined ([`TEXT_NOT_SHOWN`]): a front end that
    /// shows text calls [`Self::receive_any_with`].
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
        let no_text = |_| std::future::ready(Decision::Decline(TEXT_NOT_SHOWN.into()));
        self.receive_any_with(options, events, decide, no_text)
            .await
    }

    /// Like [`Self::receive_with`], but the peer may also send a text (protocol section
    /// 5.5): `decide_text` is asked about it once it has arrived and passed its checks
    /// (the TEXT capability agreed, at most [`MAX_TEXT_LEN`] bytes, valid UTF-8; a text
    /// that fails one is a protocol error), and a text taken is returned as
    /// [`Received::Text`] for the caller to show. Nothing is written.
    pub async fn receive_any_with<D, F, T, G>(
        &mut self,
        options: &ReceiveOptions,
        events: &dyn EventSink,
        decide: D,
        decide_text: T,
    ) -> Result<Option<Received>>
    where
        D: FnOnce(IncomingOffer) -> F,
        F: Future<Output = Decision>,
        T: FnOnce(IncomingText) -> G,
        G: Future<Output = Decision>,
    {
        let offer = loop {
            let interrupt = self.interrupt.clone();
            match interrupt.guard(self.next_between_transfers()).await? {
                None => {
                    // The peer closed the session: close this side too. Its close may
                    // be waiting for that (over QUIC, for this side to acknowledge).
                    let closing = SinkExt::<Message>::close(&mut self.framed);
                    let _ = tokio::time::timeout(CLOSE_AFTER_PEER, closing).await;
                    return Ok(None);
                }
                Some(Err(e)) => {
                    if let WireError::TextTooLong { .. } = e {
                        let refusal = Error::protocol(e.to_string());
                        let _ = self.framed.send(refusal.to_message()).await;
                    }
                    return Err(e.into());
                }
                Some(Ok(Message::Text { transfer_id, text })) => {
                    return self
                        .receive_text(transfer_id, text, decide_text)
                        .await
                        .map(Some);
                }
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

    /// Checks a `Text`, asks `decide`, answers `Done` or `Error`.
    async fn receive_text<T, G>(
        &mut self,
        transfer_id: Uuid,
        text: Bytes,
        decide: T,
    ) -> Result<Received>
    where
        T: FnOnce(IncomingText) -> G,
        G: Future<Output = Decision>,
    {
        let checked = if !self.capabilities().contains(Capabilities::TEXT) {
            Err("a Text message, but the TEXT capability was not agreed".to_owned())
        } else if text.len() > MAX_TEXT_LEN {
            Err(format!(
                "a text of {} bytes; a text has at most {MAX_TEXT_LEN}",
                text.len()
            ))
        } else {
            std::str::from_utf8(&text)
                .map(str::to_owned)
                .map_err(|e| format!("a text that is not valid UTF-8 ({e})"))
        };
        let text = match checked {
            Ok(text) => text,
            Err(why) => {
                let error = Error::protocol(format!("the peer sent {why}"));
                let _ = self.framed.send(error.to_message()).await;
                return Err(error);
            }
        };
        let peer = self.established.peer.device_name.clone();
        let incoming = IncomingText {
            transfer_id,
            peer: peer.clone(),
            len: text.len(),
        };
        if let Decision::Decline(reason) = self.await_decision(decide(incoming)).await? {
            self.framed
                .send(Message::Error {
                    code: ErrorCode::Cancelled,
                    message: reason,
                    version: crate::wire::PROTOCOL_VERSION,
                })
                .await?;
            return Ok(Received::Declined { transfer_id });
        }
        self.framed.send(Message::Done { transfer_id }).await?;
        Ok(Received::Text(ReceivedText {
            transfer_id,
            peer,
            text,
        }))
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

#[cfg(test)]
mod tests {
    //! `Text` (protocol section 5.5) between two sessions over an in-memory stream, and
    //! against a hand-driven peer that breaks the rules.
    use super::*;
    use crate::event::NoEvents;
    use crate::wire::MAX_TEXT_FRAME_LEN;
    use tokio::io::{AsyncWriteExt, DuplexStream};

    type Session = P2PSession<DuplexStream>;

    fn options(capabilities: Capabilities) -> SessionOptions {
        SessionOptions {
            device_name: "peer".into(),
            capabilities,
            ..SessionOptions::default()
        }
    }

    async fn pair(a: Capabilities, b: Capabilities) -> (Session, Session) {
        let (x, y) = tokio::io::duplex(1 << 20);
        let (a, b) = (options(a), options(b));
        let (a, b) = tokio::join!(P2PSession::initiate(x, &a), P2PSession::respond(y, &b));
        (a.unwrap(), b.unwrap())
    }

    fn receive_options() -> ReceiveOptions {
        ReceiveOptions {
            output_dir: "/nonexistent/never-written".into(),
            overwrite: false,
        }
    }

    async fn take_text(b: &mut Session, seen: &std::sync::Mutex<Vec<IncomingText>>) -> Received {
        let offer = |_| std::future::ready(Decision::Decline("no files".into()));
        let text = |incoming| {
            seen.lock().unwrap().push(incoming);
            std::future::ready(Decision::Accept)
        };
        b.receive_any_with(&receive_options(), &NoEvents, offer, text)
            .await
            .unwrap()
            .expect("a text")
    }

    #[tokio::test]
    async fn a_text_arrives_exactly_and_the_session_goes_on() {
        let all = Capabilities::supported();
        let (mut a, mut b) = pair(all, all).await;
        assert!(a.capabilities().contains(Capabilities::TEXT));
        let text = "héllo 日本\n\u{1b}]0;title\u{7}\r\nend";
        let id = Uuid::from_u128(7);
        let seen = std::sync::Mutex::new(Vec::new());
        let (sent, received) = tokio::join!(a.send_text(text, id), take_text(&mut b, &seen));
        sent.unwrap();
        let Received::Text(got) = received else {
            panic!("expected a text, got {received:?}");
        };
        assert_eq!(got.text, text, "exactly the bytes sent");
        assert_eq!((got.transfer_id, got.peer.as_str()), (id, "peer"));
        let asked = seen.lock().unwrap().pop().unwrap();
        assert_eq!((asked.transfer_id, asked.len), (id, text.len()));

        // The longest text, then the session still carries another one.
        let longest = "x".repeat(MAX_TEXT_LEN);
        let (sent, received) = tokio::join!(
            a.send_text(&longest, Uuid::from_u128(8)),
            take_text(&mut b, &seen)
        );
        sent.unwrap();
        assert!(matches!(received, Received::Text(t) if t.text == longest));
    }

    #[tokio::test]
    async fn a_receiver_that_shows_no_text_declines_it_and_stays_usable() {
        let all = Capabilities::supported();
        let (mut a, mut b) = pair(all, all).await;
        let accept = |_| std::future::ready(Decision::Accept);
        let id = Uuid::from_u128(9);
        let receive = receive_options();
        let (sent, received) = tokio::join!(
            a.send_text("hi", id),
            b.receive_with(&receive, &NoEvents, accept)
        );
        let err = sent.unwrap_err();
        assert!(
            matches!(&err, Error::Transfer(TransferError::PeerAborted {
                code: ErrorCode::Cancelled, message }) if message == TEXT_NOT_SHOWN),
            "{err}"
        );
        assert_eq!(
            received.unwrap(),
            Some(Received::Declined { transfer_id: id })
        );
        let seen = std::sync::Mutex::new(Vec::new());
        let (sent, received) = tokio::join!(
            a.send_text("again", Uuid::from_u128(10)),
            take_text(&mut b, &seen)
        );
        sent.unwrap();
        assert!(matches!(received, Received::Text(t) if t.text == "again"));
    }

    #[tokio::test]
    async fn a_peer_without_the_capability_is_never_sent_text() {
        let (mut a, mut b) = pair(
            Capabilities::supported(),
            Capabilities::supported() - Capabilities::TEXT,
        )
        .await;
        let err = a.send_text("hi", Uuid::nil()).await.unwrap_err();
        assert!(matches!(err, Error::InvalidInput(_)), "{err}");
        assert!(err.to_string().contains("cannot receive text"), "{err}");
        // Nothing crossed: the receiver sees the session end cleanly.
        a.close().await.unwrap();
        let got = b.receive(&receive_options(), &NoEvents).await.unwrap();
        assert_eq!(got, None);
    }

    #[tokio::test]
    async fn a_text_longer_than_the_limit_is_refused_before_sending() {
        let all = Capabilities::supported();
        let (mut a, mut b) = pair(all, all).await;
        let err = a
            .send_text(&"x".repeat(MAX_TEXT_LEN + 1), Uuid::nil())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("send -"), "{err}");
        a.close().await.unwrap();
        assert_eq!(
            b.receive(&receive_options(), &NoEvents).await.unwrap(),
            None
        );
    }

    /// A hand-driven initiator: the handshake by the book, then whatever the test sends.
    async fn raw_peer(capabilities: Capabilities) -> (Framed<DuplexStream, FrameCodec>, Session) {
        let (x, y) = tokio::io::duplex(1 << 20);
        let mut framed = Framed::new(x, FrameCodec);
        let (raw, b) = (
            local(&options(capabilities)),
            options(Capabilities::supported()),
        );
        let (established, b) = tokio::join!(
            handshake::initiate(&mut framed, &raw),
            P2PSession::respond(y, &b)
        );
        established.unwrap();
        (framed, b.unwrap())
    }

    async fn refusal(framed: &mut Framed<DuplexStream, FrameCodec>) -> (ErrorCode, String) {
        loop {
            match framed.next().await {
                Some(Ok(Message::Error { code, message, .. })) => return (code, message),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                other => panic!("expected an Error, got {other:?}"),
            }
        }
    }

    async fn hostile_text(capabilities: Capabilities, text: &'static [u8]) -> (Error, String) {
        let (mut framed, mut b) = raw_peer(capabilities).await;
        framed
            .send(Message::Text {
                transfer_id: Uuid::nil(),
                text: Bytes::from_static(text),
            })
            .await
            .unwrap();
        let seen = std::sync::Mutex::new(Vec::new());
        let offer = |_| std::future::ready(Decision::Accept);
        let text = |incoming| {
            seen.lock().unwrap().push(incoming);
            std::future::ready(Decision::Accept)
        };
        let err = b
            .receive_any_with(&receive_options(), &NoEvents, offer, text)
            .await
            .unwrap_err();
        assert!(seen.lock().unwrap().is_empty(), "nobody is asked");
        let (code, message) = refusal(&mut framed).await;
        assert_eq!(code, ErrorCode::Protocol);
        (err, message)
    }

    #[tokio::test]
    async fn text_that_is_not_utf8_is_a_protocol_error_the_peer_is_told() {
        let (err, told) = hostile_text(Capabilities::supported(), b"ok \xff\xfe").await;
        assert!(err.to_string().contains("not valid UTF-8"), "{err}");
        assert!(told.contains("not valid UTF-8"), "{told}");
    }

    #[tokio::test]
    async fn text_without_the_agreed_capability_is_a_protocol_error() {
        let caps = Capabilities::supported() - Capabilities::TEXT;
        let (err, told) = hostile_text(caps, b"hi").await;
        assert!(err.to_string().contains("TEXT capability"), "{err}");
        assert!(told.contains("TEXT capability"), "{told}");
    }

    #[tokio::test]
    async fn an_oversized_text_frame_is_refused_from_its_header() {
        let (mut framed, mut b) = raw_peer(Capabilities::supported()).await;
        // Only the header and the variant byte: the receiver must not wait for (or make
        // room for) the rest.
        let len = (MAX_TEXT_FRAME_LEN + 1) as u32;
        let stream = framed.get_mut();
        stream.write_all(&len.to_be_bytes()).await.unwrap();
        stream.write_all(&[15]).await.unwrap();
        stream.flush().await.unwrap();
        let offer = |_| std::future::ready(Decision::Accept);
        let text = |_| std::future::ready(Decision::Accept);
        let err = b
            .receive_any_with(&receive_options(), &NoEvents, offer, text)
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::Wire(WireError::TextTooLong { .. })),
            "{err}"
        );
        let (code, message) = refusal(&mut framed).await;
        assert_eq!(code, ErrorCode::Protocol);
        assert!(message.contains("text frame"), "{message}");
    }
}
