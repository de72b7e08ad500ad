//! A TURN client (RFC 8656) for a standard relay such as coturn: one UDP allocation,
//! reached over UDP or — for networks that block UDP — over one TCP stream (RFC 8656
//! §3.1; the relayed address is UDP either way).
//!
//! [`TurnClient::allocate`] authenticates with the long-term credential mechanism (the
//! first Allocate is answered 401 with REALM and NONCE, the second is signed with
//! MESSAGE-INTEGRITY; 438 Stale Nonce is retried with the new nonce) and then hands
//! the allocation to a background task that refreshes it at half its lifetime, keeps
//! the permissions asked for with [`permit`](TurnClient::permit) refreshed every 4 min,
//! binds a channel for every peer on its first datagram (refreshed every 9 min) and
//! reads everything the server sends. Datagrams go out through a [`TurnSender`]: as
//! Send indications until the peer's channel is bound, then as ChannelData. Datagrams
//! from peers (ChannelData or Data indications) come out of the receiver taken with
//! [`take_receiver`](TurnClient::take_receiver). Both directions are bounded queues
//! that drop when full, as UDP would.
//!
//! Only peers whose IP was permitted get data: a datagram for any other peer is
//! dropped by the task (the server would drop it too), and the server does not relay
//! data from peers without a permission.
//!
//! The byte format lives in [`proto`]; it is sans-IO and unit-tested on its own.
//!
//! ```no_run
//! # async fn demo() -> Result<(), p2p_core::nat::turn::TurnError> {
//! use p2p_core::nat::turn::{TurnClient, TurnCredentials, TurnTransport};
//!
//! let creds = TurnCredentials { username: "1700000000:alice".into(), password: "…".into() };
//! let mut turn = TurnClient::allocate("192.0.2.1:3478".parse().unwrap(), TurnTransport::Udp, &creds).await?;
//! println!("relayed at {}", turn.relayed_addr());
//! let peer: std::net::SocketAddr = "198.51.100.7:4000".parse().unwrap();
//! turn.permit(peer.ip()).await?;
//! turn.sender().send(peer, bytes::Bytes::from_static(b"hello"));
//! let mut rx = turn.take_receiver().unwrap();
//! if let Some((from, data)) = rx.recv().await { println!("{from}: {} bytes", data.len()); }
//! turn.close().await;
//! # Ok(()) }
//! ```

pub mod proto;

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::{sleep_until, timeout_at, Instant};

use crate::nat::stun::{Message, TransactionId};
use crate::text::printable;
use proto::{Answer, AnswerError, Auth, Frame, Request, Retransmit, Success};

/// How long [`TurnClient::allocate`] may take in all.
pub const ALLOCATE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a request made by the background task (refresh, permission, channel bind)
/// may take before it counts as failed.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long [`TurnClient::close`] waits for the server to confirm the deallocation.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
/// Datagrams queued in each direction before new ones are dropped.
pub const QUEUE_DATAGRAMS: usize = 4096;
/// Allocate requests sent in all before giving up on a server that keeps
/// challenging (401 then 438s).
const MAX_CHALLENGES: u32 = 4;
/// After a failed ChannelBind or Refresh, when to try again.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(5);

/// How we reach the TURN server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TurnTransport {
    /// One UDP socket of our own, requests retransmitted (RFC 8489 schedule).
    Udp,
    /// One TCP connection carrying STUN messages and ChannelData.
    Tcp,
}

impl fmt::Display for TurnTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TurnTransport::Udp => "UDP",
            TurnTransport::Tcp => "TCP",
        })
    }
}

/// Long-term credentials; with coturn's `use-auth-secret` the username is
/// `expiry:name` and the password base64(HMAC-SHA1(secret, username)).
#[derive(Clone)]
pub struct TurnCredentials {
    /// USERNAME.
    pub username: String,
    /// The password (used as given; SASLprep is not applied).
    pub password: String,
}

impl fmt::Debug for TurnCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TurnCredentials")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// Why a TURN operation failed.
#[derive(Debug, thiserror::Error)]
pub enum TurnError {
    /// The server could not be reached (TCP connect failed, the connection closed, or
    /// the UDP socket could not be opened).
    #[error("TURN server unreachable: {0}")]
    Unreachable(String),
    /// The server refused the credentials.
    #[error("TURN authentication failed: {0}")]
    Auth(String),
    /// The server answered with an error.
    #[error("TURN server refused with {code}: {}", printable(reason))]
    Refused {
        /// STUN error code.
        code: u16,
        /// The server's reason phrase as it arrived.
        reason: String,
    },
    /// No answer in time.
    #[error("TURN server did not answer in time")]
    Timeout,
    /// The server's answers made no sense.
    #[error("TURN protocol error: {0}")]
    Protocol(String),
    /// A local socket error.
    #[error("TURN socket error: {0}")]
    Io(#[from] io::Error),
}

/// What a [`TurnSender`] queues: a peer and its datagram.
type Outgoing = (SocketAddr, Bytes);
/// Channel number → peer, shared by the task (which binds) and the reader (which
/// decodes ChannelData).
type ChannelMap = Arc<RwLock<HashMap<u16, SocketAddr>>>;

/// Queues datagrams for peers through the relay. Cheap to clone.
#[derive(Debug, Clone)]
pub struct TurnSender {
    tx: mpsc::Sender<Outgoing>,
}

impl TurnSender {
    /// Never blocks: queues the datagram for `peer` (binding a channel for it on first
    /// use, Send indications until the bind is done). Returns false if the queue is
    /// full or the client is closed (the datagram is dropped, as UDP would). Datagrams
    /// for a peer whose IP was not [`permit`](TurnClient::permit)ted are dropped by the
    /// client's task.
    pub fn send(&self, peer: SocketAddr, data: Bytes) -> bool {
        self.tx.try_send((peer, data)).is_ok()
    }
}

enum Command {
    Permit(IpAddr, oneshot::Sender<Result<(), TurnError>>),
    Close(oneshot::Sender<()>),
}

/// One allocation on a TURN server, kept alive by a background task until
/// [`close`](Self::close) or drop.
pub struct TurnClient {
    relayed: SocketAddr,
    mapped: Option<SocketAddr>,
    transport: TurnTransport,
    cmd: mpsc::Sender<Command>,
    out: mpsc::Sender<Outgoing>,
    receiver: Option<mpsc::Receiver<Outgoing>>,
    task: Option<JoinHandle<()>>,
}

impl fmt::Debug for TurnClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TurnClient")
            .field("relayed", &self.relayed)
            .field("mapped", &self.mapped)
            .field("transport", &self.transport)
            .finish_non_exhaustive()
    }
}

impl TurnClient {
    /// Allocates a UDP relayed address on `server`, reached over `transport`, within
    /// [`ALLOCATE_TIMEOUT`].
    pub async fn allocate(
        server: SocketAddr,
        transport: TurnTransport,
        creds: &TurnCredentials,
    ) -> Result<TurnClient, TurnError> {
        let deadline = Instant::now() + ALLOCATE_TIMEOUT;
        let (data_tx, data_rx) = mpsc::channel(QUEUE_DATAGRAMS);
        let (stun_tx, stun_rx) = mpsc::channel(64);
        let channels: ChannelMap = Arc::default();
        let inbound = Inbound {
            data: data_tx,
            stun: stun_tx,
            channels: channels.clone(),
            pool: BytesMut::new(),
        };
        let (writer, reader) = match transport {
            TurnTransport::Udp => {
                let local: SocketAddr = match server {
                    SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
                    SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
                };
                let socket = UdpSocket::bind(local).await?;
                socket.connect(server).await.map_err(|e| {
                    TurnError::Unreachable(format!("cannot reach {server} over UDP: {e}"))
                })?;
                let socket = Arc::new(socket);
                let reader = tokio::spawn(read_udp(socket.clone(), inbound));
                (Writer::Udp(socket), reader)
            }
            TurnTransport::Tcp => {
                let stream = match timeout_at(deadline, TcpStream::connect(server)).await {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(e)) => {
                        return Err(TurnError::Unreachable(format!(
                            "cannot connect to {server} over TCP: {e}"
                        )))
                    }
                    Err(_) => return Err(TurnError::Timeout),
                };
                let _ = stream.set_nodelay(true);
                let (read, write) = stream.into_split();
                let reader = tokio::spawn(read_tcp(read, inbound));
                (
                    Writer::Tcp(BufWriter::with_capacity(256 * 1024, write)),
                    reader,
                )
            }
        };
        let mut control = Control {
            transport,
            writer,
            auth: None,
            stun_rx,
            channels,
            reader: Some(reader),
            scratch: Vec::with_capacity(2048),
            refresh_at: Instant::now(),
            refresh_pending: false,
            lifetime: proto::DEFAULT_LIFETIME,
            perms: HashMap::new(),
            peers: HashMap::new(),
            next_channel: proto::CHANNEL_MIN,
            pending: HashMap::new(),
        };
        let granted = control.allocate(server, creds, deadline).await?;
        let relayed = granted.relayed.ok_or_else(|| {
            TurnError::Protocol("the Allocate answer has no XOR-RELAYED-ADDRESS".into())
        })?;
        control.lifetime = granted.lifetime.unwrap_or(proto::DEFAULT_LIFETIME);
        control.refresh_at = Instant::now() + proto::refresh_after(control.lifetime);
        tracing::debug!(%server, %transport, %relayed, lifetime = ?control.lifetime, "TURN allocation");

        let (cmd_tx, cmd_rx) = mpsc::channel(16);
        let (out_tx, out_rx) = mpsc::channel(QUEUE_DATAGRAMS);
        let task = tokio::spawn(control.run(cmd_rx, out_rx));
        Ok(TurnClient {
            relayed,
            mapped: granted.mapped,
            transport,
            cmd: cmd_tx,
            out: out_tx,
            receiver: Some(data_rx),
            task: Some(task),
        })
    }

    /// The relayed transport address (UDP) that peers send to.
    pub fn relayed_addr(&self) -> SocketAddr {
        self.relayed
    }

    /// Our address as the TURN server sees it (server-reflexive), if it said.
    pub fn mapped_addr(&self) -> Option<SocketAddr> {
        self.mapped
    }

    /// How the server is reached.
    pub fn transport(&self) -> TurnTransport {
        self.transport
    }

    /// Installs a permission for `peer` (CreatePermission) and keeps it refreshed:
    /// from then on datagrams to and from that IP pass the relay.
    pub async fn permit(&self, peer: IpAddr) -> Result<(), TurnError> {
        let (tx, rx) = oneshot::channel();
        self.cmd
            .send(Command::Permit(peer, tx))
            .await
            .map_err(|_| closed())?;
        match rx.await {
            Ok(result) => result,
            Err(_) => Err(closed()),
        }
    }

    /// A handle that queues datagrams for peers.
    pub fn sender(&self) -> TurnSender {
        TurnSender {
            tx: self.out.clone(),
        }
    }

    /// The datagrams from peers: `(peer address, payload)`. Bounded
    /// ([`QUEUE_DATAGRAMS`]); datagrams arriving when it is full are dropped. Ends when
    /// the allocation ends (closed, or the server connection lost). `None` after the
    /// first call.
    pub fn take_receiver(&mut self) -> Option<mpsc::Receiver<(SocketAddr, Bytes)>> {
        self.receiver.take()
    }

    /// Deletes the allocation (Refresh with LIFETIME 0, best effort, at most
    /// [`CLOSE_TIMEOUT`]) and stops the task.
    pub async fn close(mut self) {
        let (tx, rx) = oneshot::channel();
        if self.cmd.send(Command::Close(tx)).await.is_ok() {
            let _ = tokio::time::timeout(CLOSE_TIMEOUT + Duration::from_millis(200), rx).await;
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

impl Drop for TurnClient {
    fn drop(&mut self) {
        // The task sees the command channel close, sends a best-effort deallocation
        // without waiting for it, and ends; TurnSenders then report `false`.
        if let Some(task) = self.task.take() {
            drop(task);
        }
    }
}

fn closed() -> TurnError {
    TurnError::Unreachable("the TURN allocation is closed".into())
}

/// The write side of the server connection.
enum Writer {
    Udp(Arc<UdpSocket>),
    Tcp(BufWriter<OwnedWriteHalf>),
}

impl Writer {
    /// Sends one STUN message now.
    async fn message(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Writer::Udp(socket) => socket.send(bytes).await.map(drop),
            Writer::Tcp(w) => {
                w.write_all(bytes).await?;
                w.flush().await
            }
        }
    }

    /// Queues one ChannelData message (TCP: buffered, padded; call `flush`).
    async fn channel_data(
        &mut self,
        channel: u16,
        payload: &[u8],
        scratch: &mut Vec<u8>,
    ) -> io::Result<()> {
        let header = proto::channel_data_header(channel, payload.len());
        match self {
            Writer::Udp(socket) => {
                scratch.clear();
                scratch.extend_from_slice(&header);
                scratch.extend_from_slice(payload);
                socket.send(scratch).await.map(drop)
            }
            Writer::Tcp(w) => {
                w.write_all(&header).await?;
                w.write_all(payload).await?;
                let pad = proto::tcp_padding(payload.len());
                w.write_all(&[0u8; 3][..pad]).await
            }
        }
    }

    /// Queues one STUN message without flushing (TCP).
    async fn buffered(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Writer::Udp(socket) => socket.send(bytes).await.map(drop),
            Writer::Tcp(w) => w.write_all(bytes).await,
        }
    }

    async fn flush(&mut self) -> io::Result<()> {
        match self {
            Writer::Udp(_) => Ok(()),
            Writer::Tcp(w) => w.flush().await,
        }
    }
}

/// What the reader does with what it reads: peer data straight to the receiver,
/// STUN answers to the control task.
struct Inbound {
    data: mpsc::Sender<Outgoing>,
    stun: mpsc::Sender<Bytes>,
    channels: ChannelMap,
    /// Payloads are copied out of the read buffer into slices of this, so that a
    /// datagram costs no allocation of its own.
    pool: BytesMut,
}

impl Inbound {
    fn deliver(&mut self, peer: SocketAddr, payload: &[u8]) {
        if self.pool.capacity() < payload.len() {
            self.pool.reserve(payload.len().max(256 * 1024));
        }
        self.pool.extend_from_slice(payload);
        let data = self.pool.split().freeze();
        // Full: dropped, as a UDP socket buffer would.
        let _ = self.data.try_send((peer, data));
    }

    /// Handles one frame; `false` when the control task is gone.
    fn frame(&mut self, bytes: &[u8]) -> bool {
        match proto::classify(bytes) {
            Ok(Frame::ChannelData { channel, payload }) => {
                let peer = match self.channels.read() {
                    Ok(map) => map.get(&channel).copied(),
                    Err(poisoned) => poisoned.into_inner().get(&channel).copied(),
                };
                match peer {
                    Some(peer) => self.deliver(peer, payload),
                    None => tracing::trace!(channel, "ChannelData on an unbound channel"),
                }
                true
            }
            Ok(Frame::Stun(bytes)) => {
                let Ok(message) = Message::decode(bytes) else {
                    tracing::trace!("malformed STUN message from the TURN server");
                    return true;
                };
                if let Some((peer, data)) = proto::data_indication(&message) {
                    self.deliver(peer, data);
                    return true;
                }
                if proto::response_id(bytes).is_some() {
                    match self.stun.try_send(Bytes::copy_from_slice(bytes)) {
                        Err(mpsc::error::TrySendError::Closed(_)) => return false,
                        Ok(()) | Err(mpsc::error::TrySendError::Full(_)) => {}
                    }
                }
                true
            }
            Err(e) => {
                tracing::trace!("dropped a frame from the TURN server: {e}");
                true
            }
        }
    }
}

async fn read_udp(socket: Arc<UdpSocket>, mut inbound: Inbound) {
    let mut buf = vec![0u8; 65_536];
    loop {
        match socket.recv(&mut buf).await {
            Ok(n) => {
                if !inbound.frame(&buf[..n]) {
                    return;
                }
            }
            // An ICMP error for an earlier datagram (connection refused, unreachable):
            // the server may come back; requests time out on their own.
            Err(e) if is_transient_udp_error(&e) => continue,
            Err(e) => {
                tracing::debug!("TURN UDP socket failed: {e}");
                return;
            }
        }
    }
}

fn is_transient_udp_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::HostUnreachable
            | io::ErrorKind::NetworkUnreachable
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}

async fn read_tcp(read: OwnedReadHalf, mut inbound: Inbound) {
    let mut reader = BufReader::with_capacity(256 * 1024, read);
    let mut buf = vec![0u8; proto::MAX_TCP_FRAME];
    loop {
        let mut head = [0u8; 4];
        if let Err(e) = reader.read_exact(&mut head).await {
            tracing::debug!("TURN TCP connection ended: {e}");
            return;
        }
        let len = match proto::tcp_frame_len(head) {
            Ok(len) => len,
            Err(e) => {
                // The stream is out of step: nothing after this can be trusted.
                tracing::debug!("TURN TCP stream broken: {e}");
                return;
            }
        };
        let Some(frame) = buf.get_mut(..len) else {
            return;
        };
        frame[..4].copy_from_slice(&head);
        if let Err(e) = reader.read_exact(&mut frame[4..]).await {
            tracing::debug!("TURN TCP connection ended mid-frame: {e}");
            return;
        }
        if !inbound.frame(frame) {
            return;
        }
    }
}

/// What a request made by the task was for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Refresh,
    Permission(IpAddr),
    ChannelBind(SocketAddr, u16),
}

impl Op {
    fn request(self) -> Request {
        match self {
            // The server's default lifetime (capped by its maximum).
            Op::Refresh => Request::Refresh { lifetime: None },
            Op::Permission(ip) => Request::CreatePermission(ip),
            Op::ChannelBind(peer, channel) => Request::ChannelBind { channel, peer },
        }
    }
}

struct Pending {
    op: Op,
    method: u16,
    bytes: Vec<u8>,
    retransmit: Retransmit,
    next_send: Option<Instant>,
    deadline: Instant,
    renewals: u32,
}

struct Permission {
    installed: bool,
    pending: bool,
    refresh_at: Instant,
    waiters: Vec<oneshot::Sender<Result<(), TurnError>>>,
}

struct Peer {
    channel: u16,
    bound: bool,
    pending: bool,
    /// When to send the next ChannelBind (refresh, or retry after a failure).
    bind_at: Instant,
}

/// The task that owns the allocation.
struct Control {
    transport: TurnTransport,
    writer: Writer,
    auth: Option<Auth>,
    stun_rx: mpsc::Receiver<Bytes>,
    channels: ChannelMap,
    reader: Option<JoinHandle<()>>,
    scratch: Vec<u8>,
    refresh_at: Instant,
    refresh_pending: bool,
    lifetime: Duration,
    perms: HashMap<IpAddr, Permission>,
    peers: HashMap<SocketAddr, Peer>,
    next_channel: u16,
    pending: HashMap<TransactionId, Pending>,
}

impl Drop for Control {
    fn drop(&mut self) {
        if let Some(reader) = self.reader.take() {
            reader.abort();
        }
    }
}

/// A far-away instant for "no timer".
fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400)
}

impl Control {
    fn key(&self) -> Option<[u8; 16]> {
        self.auth.as_ref().map(|a| *a.key())
    }

    /// Sends `request` and waits for its answer until `deadline`, retransmitting over
    /// UDP. Answers that fail the integrity check are dropped.
    async fn exchange(
        &mut self,
        request: Request,
        deadline: Instant,
    ) -> Result<Result<Answer, AnswerError>, TurnError> {
        let id = TransactionId::random();
        let bytes = request.encode(id, self.auth.as_ref());
        let key = self.key();
        self.writer
            .message(&bytes)
            .await
            .map_err(|e| TurnError::Unreachable(format!("cannot send to the TURN server: {e}")))?;
        let mut retransmit = Retransmit::new();
        let mut next_send = match self.transport {
            TurnTransport::Udp => retransmit.next_after_send().map(|d| Instant::now() + d),
            TurnTransport::Tcp => None,
        };
        loop {
            let wake = next_send.unwrap_or(deadline).min(deadline);
            tokio::select! {
                answer = self.stun_rx.recv() => {
                    let Some(answer) = answer else {
                        return Err(TurnError::Unreachable(
                            "the TURN server closed the connection".into(),
                        ));
                    };
                    match proto::parse_answer(&answer, id, request.method(), key.as_ref().map(|k| &k[..])) {
                        Err(AnswerError::Unrelated) => continue,
                        Err(AnswerError::Integrity(e)) => {
                            tracing::debug!("dropped a TURN answer: {e}");
                            continue;
                        }
                        other => return Ok(other),
                    }
                }
                _ = sleep_until(wake) => {
                    if Instant::now() >= deadline {
                        return Err(TurnError::Timeout);
                    }
                    let _ = self.writer.message(&bytes).await;
                    next_send = retransmit.next_after_send().map(|d| Instant::now() + d);
                }
            }
        }
    }

    /// The Allocate exchange with its challenge round trips.
    async fn allocate(
        &mut self,
        server: SocketAddr,
        creds: &TurnCredentials,
        deadline: Instant,
    ) -> Result<Success, TurnError> {
        for _ in 0..MAX_CHALLENGES {
            let answer = self.exchange(Request::Allocate, deadline).await?;
            match answer {
                Ok(Answer::Success(success)) => return Ok(success),
                Ok(Answer::Error {
                    code: 401,
                    challenge: Some(challenge),
                    ..
                }) if self.auth.is_none() => {
                    self.auth = Some(Auth::new(
                        &creds.username,
                        &creds.password,
                        &challenge.realm,
                        &challenge.nonce,
                    ));
                }
                Ok(Answer::Error {
                    code: 438,
                    challenge: Some(challenge),
                    ..
                }) if self.auth.is_some() => {
                    if let Some(auth) = self.auth.as_mut() {
                        auth.renew(&challenge);
                    }
                }
                Ok(Answer::Error {
                    code: 401, reason, ..
                }) => {
                    let realm = self
                        .auth
                        .as_ref()
                        .map(|a| String::from_utf8_lossy(&a.realm).into_owned())
                        .unwrap_or_default();
                    return Err(TurnError::Auth(format!(
                        "{server} rejected user \"{}\" in realm \"{}\" (401 {}): wrong \
                         password, or expired TURN credentials",
                        printable(&creds.username),
                        printable(&realm),
                        printable(&reason),
                    )));
                }
                Ok(Answer::Error { code, reason, .. }) => {
                    return Err(TurnError::Refused { code, reason })
                }
                Err(e) => return Err(TurnError::Protocol(e.to_string())),
            }
        }
        Err(TurnError::Protocol(format!(
            "{server} kept challenging after {MAX_CHALLENGES} Allocate requests"
        )))
    }

    async fn run(
        mut self,
        mut cmd_rx: mpsc::Receiver<Command>,
        mut out_rx: mpsc::Receiver<Outgoing>,
    ) {
        loop {
            let wake = self.next_wake();
            tokio::select! {
                biased;
                cmd = cmd_rx.recv() => match cmd {
                    Some(Command::Permit(ip, reply)) => self.permit(ip, reply).await,
                    Some(Command::Close(reply)) => {
                        self.deallocate(true).await;
                        let _ = reply.send(());
                        return;
                    }
                    None => {
                        self.deallocate(false).await;
                        return;
                    }
                },
                answer = self.stun_rx.recv() => match answer {
                    Some(answer) => {
                        if !self.on_answer(&answer).await {
                            return;
                        }
                    }
                    None => {
                        tracing::debug!("TURN server connection lost");
                        return;
                    }
                },
                _ = sleep_until(wake) => {
                    if !self.on_timer().await {
                        return;
                    }
                }
                out = out_rx.recv() => {
                    // The client holds a sender as long as it lives: None only after
                    // the command channel closed, handled above.
                    let Some((peer, data)) = out else { continue };
                    let mut ok = self.send_data(peer, &data).await;
                    let mut burst = 0;
                    while ok && burst < 256 {
                        let Ok((peer, data)) = out_rx.try_recv() else { break };
                        ok = self.send_data(peer, &data).await;
                        burst += 1;
                    }
                    if ok {
                        ok = self.writer.flush().await.is_ok();
                    }
                    if !ok {
                        tracing::debug!("TURN server connection failed while sending");
                        return;
                    }
                }
            }
        }
    }

    fn next_wake(&self) -> Instant {
        let mut wake = if self.refresh_pending {
            far_future()
        } else {
            self.refresh_at
        };
        for p in self.pending.values() {
            wake = wake.min(p.next_send.unwrap_or(p.deadline).min(p.deadline));
        }
        for perm in self.perms.values() {
            if perm.installed && !perm.pending {
                wake = wake.min(perm.refresh_at);
            }
        }
        for peer in self.peers.values() {
            if !peer.pending {
                wake = wake.min(peer.bind_at);
            }
        }
        wake
    }

    /// Sends a request for `op` and records it as pending.
    async fn start(&mut self, op: Op, renewals: u32) -> bool {
        let request = op.request();
        let id = TransactionId::random();
        let bytes = request.encode(id, self.auth.as_ref());
        let sent = self.writer.message(&bytes).await;
        if let (Err(e), TurnTransport::Tcp) = (&sent, self.transport) {
            tracing::debug!("TURN TCP send failed: {e}");
            return false;
        }
        let mut retransmit = Retransmit::new();
        let now = Instant::now();
        let next_send = match self.transport {
            TurnTransport::Udp => retransmit.next_after_send().map(|d| now + d),
            TurnTransport::Tcp => None,
        };
        self.pending.insert(
            id,
            Pending {
                op,
                method: request.method(),
                bytes,
                retransmit,
                next_send,
                deadline: now + REQUEST_TIMEOUT,
                renewals,
            },
        );
        match op {
            Op::Refresh => self.refresh_pending = true,
            Op::Permission(ip) => {
                if let Some(p) = self.perms.get_mut(&ip) {
                    p.pending = true;
                }
            }
            Op::ChannelBind(peer, _) => {
                if let Some(p) = self.peers.get_mut(&peer) {
                    p.pending = true;
                }
            }
        }
        true
    }

    async fn permit(&mut self, ip: IpAddr, reply: oneshot::Sender<Result<(), TurnError>>) {
        if let Some(perm) = self.perms.get_mut(&ip) {
            if perm.installed {
                let _ = reply.send(Ok(()));
            } else {
                perm.waiters.push(reply);
            }
            return;
        }
        self.perms.insert(
            ip,
            Permission {
                installed: false,
                pending: false,
                refresh_at: far_future(),
                waiters: vec![reply],
            },
        );
        if !self.start(Op::Permission(ip), 0).await {
            self.finish(Op::Permission(ip), Err(closed()));
        }
    }

    /// Sends one datagram to `peer`; `false` only when the connection to the server
    /// failed (TCP).
    async fn send_data(&mut self, peer: SocketAddr, data: &[u8]) -> bool {
        if data.len() > proto::MAX_PAYLOAD {
            tracing::trace!(len = data.len(), "datagram too large for TURN, dropped");
            return true;
        }
        if !self.perms.get(&peer.ip()).is_some_and(|p| p.installed) {
            tracing::trace!(%peer, "datagram for a peer without permission, dropped");
            return true;
        }
        let (bound, channel) = match self.peers.get(&peer) {
            Some(p) => (p.bound, Some(p.channel)),
            None => (false, self.bind_channel(peer).await),
        };
        let result = match (bound, channel) {
            (true, Some(channel)) => {
                self.writer
                    .channel_data(channel, data, &mut self.scratch)
                    .await
            }
            _ => {
                let indication = proto::send_indication(peer, data);
                self.writer.buffered(&indication).await
            }
        };
        match (result, self.transport) {
            (Err(e), TurnTransport::Tcp) => {
                tracing::debug!("TURN TCP send failed: {e}");
                false
            }
            _ => true,
        }
    }

    /// Picks a channel for a new peer and sends the ChannelBind; `None` when all 4096
    /// channels are taken (the peer then gets Send indications).
    async fn bind_channel(&mut self, peer: SocketAddr) -> Option<u16> {
        if self.next_channel > proto::CHANNEL_MAX {
            return None;
        }
        let channel = self.next_channel;
        self.next_channel += 1;
        // Known to the reader before the server can use it.
        match self.channels.write() {
            Ok(mut map) => map.insert(channel, peer),
            Err(poisoned) => poisoned.into_inner().insert(channel, peer),
        };
        self.peers.insert(
            peer,
            Peer {
                channel,
                bound: false,
                pending: false,
                bind_at: far_future(),
            },
        );
        self.start(Op::ChannelBind(peer, channel), 0).await;
        Some(channel)
    }

    /// Handles a STUN answer from the reader; `false` when the allocation is over.
    async fn on_answer(&mut self, bytes: &[u8]) -> bool {
        let Some(id) = proto::response_id(bytes) else {
            return true;
        };
        let Some(pending) = self.pending.get(&id) else {
            return true;
        };
        let key = self.key();
        let answer =
            match proto::parse_answer(bytes, id, pending.method, key.as_ref().map(|k| &k[..])) {
                Ok(answer) => Ok(answer),
                Err(AnswerError::Unrelated) => return true,
                Err(AnswerError::Integrity(e)) => {
                    tracing::debug!("dropped a TURN answer: {e}");
                    return true;
                }
                Err(e @ AnswerError::UnknownRequired(_)) => Err(e),
            };
        let Some(pending) = self.pending.remove(&id) else {
            return true;
        };
        match answer {
            Ok(Answer::Success(success)) => self.succeed(pending.op, success),
            Ok(Answer::Error {
                code: 401 | 438,
                challenge: Some(challenge),
                ..
            }) if pending.renewals < 2 => {
                if let Some(auth) = self.auth.as_mut() {
                    auth.renew(&challenge);
                }
                self.clear_pending_flag(pending.op);
                if !self.start(pending.op, pending.renewals + 1).await {
                    return false;
                }
            }
            Ok(Answer::Error { code, reason, .. }) => {
                if pending.op == Op::Refresh && code == 437 {
                    tracing::debug!("TURN allocation gone (437)");
                    return false;
                }
                self.finish(pending.op, Err(TurnError::Refused { code, reason }));
            }
            Err(e) => self.finish(pending.op, Err(TurnError::Protocol(e.to_string()))),
        }
        true
    }

    fn clear_pending_flag(&mut self, op: Op) {
        match op {
            Op::Refresh => self.refresh_pending = false,
            Op::Permission(ip) => {
                if let Some(p) = self.perms.get_mut(&ip) {
                    p.pending = false;
                }
            }
            Op::ChannelBind(peer, _) => {
                if let Some(p) = self.peers.get_mut(&peer) {
                    p.pending = false;
                }
            }
        }
    }

    fn succeed(&mut self, op: Op, success: Success) {
        if op == Op::Refresh {
            if let Some(lifetime) = success.lifetime {
                self.lifetime = lifetime;
            }
        }
        self.finish(op, Ok(()));
    }

    /// Records the outcome of a request.
    fn finish(&mut self, op: Op, result: Result<(), TurnError>) {
        self.clear_pending_flag(op);
        let now = Instant::now();
        match op {
            Op::Refresh => {
                self.refresh_at = match &result {
                    Ok(()) => {
                        tracing::trace!(lifetime = ?self.lifetime, "TURN allocation refreshed");
                        now + proto::refresh_after(self.lifetime)
                    }
                    Err(e) => {
                        tracing::debug!("TURN refresh failed: {e}");
                        now + RETRY_AFTER_FAILURE
                    }
                };
            }
            Op::Permission(ip) => {
                let Some(perm) = self.perms.get_mut(&ip) else {
                    return;
                };
                match result {
                    Ok(()) => {
                        perm.installed = true;
                        perm.refresh_at = now + proto::PERMISSION_REFRESH;
                        for w in perm.waiters.drain(..) {
                            let _ = w.send(Ok(()));
                        }
                    }
                    Err(e) => {
                        let message = e.to_string();
                        let mut first = Some(e);
                        for w in perm.waiters.drain(..) {
                            let e = first.take().unwrap_or_else(|| {
                                TurnError::Protocol(format!("permission failed: {message}"))
                            });
                            let _ = w.send(Err(e));
                        }
                        if perm.installed {
                            // Keep what the server may still have; try again soon.
                            perm.refresh_at = now + RETRY_AFTER_FAILURE;
                        } else {
                            self.perms.remove(&ip);
                        }
                    }
                }
            }
            Op::ChannelBind(peer, _) => {
                let Some(p) = self.peers.get_mut(&peer) else {
                    return;
                };
                match result {
                    Ok(()) => {
                        p.bound = true;
                        p.bind_at = now + proto::CHANNEL_REFRESH;
                    }
                    Err(e) => {
                        tracing::debug!(%peer, "TURN ChannelBind failed: {e}");
                        p.bind_at = now + RETRY_AFTER_FAILURE;
                    }
                }
            }
        }
    }

    /// Retransmissions, timeouts and refreshes that are due; `false` when the
    /// connection failed.
    async fn on_timer(&mut self) -> bool {
        let now = Instant::now();
        // Requests: retransmit (UDP) or give up.
        let mut expired = Vec::new();
        let mut resend = Vec::new();
        for (id, p) in self.pending.iter_mut() {
            if now >= p.deadline {
                expired.push(*id);
            } else if p.next_send.is_some_and(|t| now >= t) {
                resend.push(p.bytes.clone());
                p.next_send = p.retransmit.next_after_send().map(|d| now + d);
            }
        }
        for bytes in resend {
            let _ = self.writer.message(&bytes).await;
        }
        for id in expired {
            if let Some(p) = self.pending.remove(&id) {
                self.finish(p.op, Err(TurnError::Timeout));
            }
        }
        // Refreshes.
        let mut due = Vec::new();
        if !self.refresh_pending && now >= self.refresh_at {
            due.push(Op::Refresh);
        }
        for (ip, perm) in &self.perms {
            if perm.installed && !perm.pending && now >= perm.refresh_at {
                due.push(Op::Permission(*ip));
            }
        }
        for (peer, p) in &self.peers {
            if !p.pending && now >= p.bind_at {
                due.push(Op::ChannelBind(*peer, p.channel));
            }
        }
        for op in due {
            if !self.start(op, 0).await {
                return false;
            }
        }
        true
    }

    /// Refresh with LIFETIME 0; with `wait`, waits up to [`CLOSE_TIMEOUT`] for the
    /// answer (retrying once on a stale nonce).
    async fn deallocate(&mut self, wait: bool) {
        let request = Request::Refresh { lifetime: Some(0) };
        if !wait {
            let bytes = request.encode(TransactionId::random(), self.auth.as_ref());
            let _ = self.writer.message(&bytes).await;
            return;
        }
        let deadline = Instant::now() + CLOSE_TIMEOUT;
        for _ in 0..2 {
            match self.exchange(request, deadline).await {
                Ok(Ok(Answer::Error {
                    code: 438,
                    challenge: Some(challenge),
                    ..
                })) => {
                    if let Some(auth) = self.auth.as_mut() {
                        auth.renew(&challenge);
                    }
                }
                Ok(Ok(Answer::Success(_))) => {
                    tracing::debug!("TURN allocation deleted");
                    return;
                }
                other => {
                    tracing::debug!("TURN deallocation: {other:?}");
                    return;
                }
            }
        }
    }
}
