//! The rendezvous server: mailboxes in memory, STUN Binding answers on the same port
//! over UDP, TURN credentials per session.
//!
//! One task per TCP connection. All mailboxes live in one map behind a short-held mutex;
//! a side's messages reach the other side through a bounded channel whose only sender
//! is kept in the mailbox, so destroying the mailbox is what tells the other side
//! [`PeerLeft`](ServerMessage::PeerLeft). Everything a connection holds (its per-address
//! count, its mailbox) is released by `Drop` guards, so a task that ends in any way —
//! error, panic, or the server being dropped — frees it.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use futures::StreamExt;
use hmac::{Hmac, Mac};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream, UdpSocket};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::codec::FramedRead;

use super::protocol::{
    self, ClientMessage, ServerMessage, TurnGrant, MAX_BODY, MAX_FRAME, PROTOCOL_VERSION,
};
use crate::nat::stun::{self, attr, Class, Message, MessageBuilder, METHOD_BINDING};

/// How long TURN credentials stay valid by default.
pub const DEFAULT_TURN_LIFETIME: Duration = Duration::from_secs(3600);

/// What the server allows. [`Limits::default`] is what a public server should run with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// A mailbox is destroyed this long after its allocation, paired or not; both sides
    /// get `Error` ("expired") and are closed. Default 10 min.
    pub mailbox_lifetime: Duration,
    /// Open connections per client address (IPv4 address, or IPv6 /64); the next one
    /// gets `Error` at once and is closed. Default 32.
    pub per_ip: usize,
    /// Mailboxes open at once, over all clients; `Allocate` beyond it gets `Error`.
    /// Default 100,000.
    pub max_mailboxes: usize,
    /// `Hello` must arrive within this long of the connection. Default 10 s.
    pub handshake_timeout: Duration,
    /// Messages waiting for a side that has not joined yet; one more is an `Error` for
    /// the side that adds it. Also the size of each side's inbox once joined: a side that
    /// reads slowly slows the sender down (the server stops reading from it) instead of
    /// making the server buffer. Default 16.
    pub max_queued: usize,
    /// A frame the client does not take within this long ends the connection (a client
    /// that stops reading cannot hold a task forever). Default 10 s.
    pub write_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            mailbox_lifetime: Duration::from_secs(600),
            per_ip: 32,
            max_mailboxes: 100_000,
            handshake_timeout: Duration::from_secs(10),
            max_queued: 16,
            write_timeout: Duration::from_secs(10),
        }
    }
}

/// The coturn `static-auth-secret` and where that coturn listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TurnSecret {
    /// `host:port` of each TURN server, handed to clients as they are.
    pub servers: Vec<String>,
    /// The shared secret (coturn's `static-auth-secret`).
    pub secret: String,
    /// How long each grant is valid. Default [`DEFAULT_TURN_LIFETIME`] (1 h).
    pub lifetime: Duration,
}

impl TurnSecret {
    /// A secret with the default lifetime.
    pub fn new(servers: Vec<String>, secret: String) -> Self {
        TurnSecret {
            servers,
            secret,
            lifetime: DEFAULT_TURN_LIFETIME,
        }
    }
}

/// Everything [`Server::bind`] needs.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// TCP and UDP address (one port for both; port 0 picks one free for both).
    pub listen: SocketAddr,
    /// TURN credentials to hand out, if a coturn is configured.
    pub turn: Option<TurnSecret>,
    /// Limits.
    pub limits: Limits,
}

/// The TURN REST API credentials for `secret`, valid for `lifetime` from `now_unix`:
/// `("{now_unix + lifetime}:p2p", base64(HMAC-SHA1(secret, username)))`.
pub fn turn_credentials(secret: &str, lifetime: Duration, now_unix: u64) -> (String, String) {
    let username = format!("{}:p2p", now_unix.saturating_add(lifetime.as_secs()));
    let mut mac = <Hmac<sha1::Sha1> as Mac>::new_from_slice(secret.as_bytes())
        .expect("HMAC takes keys of any length");
    mac.update(username.as_bytes());
    let password = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    (username, password)
}

/// Counters a running server keeps, for tests, logs and the load tool.
#[derive(Debug, Default)]
pub struct ServerStats {
    connections: AtomicUsize,
    mailboxes: AtomicUsize,
    panics: AtomicUsize,
    stun_answers: AtomicU64,
}

impl ServerStats {
    /// TCP connections open now.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }
    /// Mailboxes open now.
    pub fn mailboxes(&self) -> usize {
        self.mailboxes.load(Ordering::Relaxed)
    }
    /// Connection tasks that panicked (a bug; the server goes on).
    pub fn panics(&self) -> usize {
        self.panics.load(Ordering::Relaxed)
    }
    /// STUN Binding requests answered.
    pub fn stun_answers(&self) -> u64 {
        self.stun_answers.load(Ordering::Relaxed)
    }
}

/// A bound rendezvous server; [`Server::run`] serves.
pub struct Server {
    tcp: TcpListener,
    udp: UdpSocket,
    local: SocketAddr,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("local", &self.local)
            .finish()
    }
}

/// Binds `config.listen` and serves until the future is dropped.
pub async fn serve(config: ServerConfig) -> io::Result<()> {
    let server = Server::bind(config).await?;
    tracing::info!("rendezvous listening on {}", server.local_addr());
    server.run().await
}

const BIND_ATTEMPTS: usize = 32;
const LISTEN_BACKLOG: u32 = 4096;

impl Server {
    /// Binds TCP and UDP on one port. With port 0, picks a port free for both (retrying
    /// when the UDP side of the TCP port is taken).
    pub async fn bind(config: ServerConfig) -> io::Result<Server> {
        let any_port = config.listen.port() == 0;
        let attempts = if any_port { BIND_ATTEMPTS } else { 1 };
        let mut last = None;
        for _ in 0..attempts {
            let tcp = tcp_listener(config.listen)?;
            let local = tcp.local_addr()?;
            match UdpSocket::bind(local).await {
                Ok(udp) => {
                    return Ok(Server {
                        tcp,
                        udp,
                        local,
                        shared: Arc::new(Shared::new(config.turn, config.limits)),
                    })
                }
                Err(e) if any_port && e.kind() == io::ErrorKind::AddrInUse => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| io::Error::from(io::ErrorKind::AddrInUse)))
    }

    /// The address bound (TCP and UDP).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Live counters.
    pub fn stats(&self) -> Arc<ServerStats> {
        Arc::clone(&self.shared.stats)
    }

    /// Serves until the future is dropped (which ends every connection too). Returns only
    /// on a failure of the UDP socket.
    pub async fn run(self) -> io::Result<()> {
        let Server {
            tcp, udp, shared, ..
        } = self;
        let mut tasks = JoinSet::new();
        let mut stun_buf = vec![0u8; stun::MAX_MESSAGE_LEN + 1];
        loop {
            tokio::select! {
                accepted = tcp.accept() => match accepted {
                    Ok((stream, peer)) => {
                        tasks.spawn(connection(Arc::clone(&shared), stream, peer));
                    }
                    Err(e) => {
                        // EMFILE and friends: wait a little rather than spin; established
                        // connections are unaffected.
                        tracing::warn!("rendezvous accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                received = udp.recv_from(&mut stun_buf) => match received {
                    Ok((len, from)) => {
                        if let Some(answer) = stun_answer(&stun_buf[..len], from) {
                            if udp.send_to(&answer, from).await.is_ok() {
                                shared.stats.stun_answers.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                    // ICMP errors of earlier answers surface here on Linux: not ours to fix.
                    Err(e) if matches!(
                        e.kind(),
                        io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionReset
                    ) => {}
                    Err(e) => {
                        tracing::warn!("rendezvous UDP socket failed: {e}");
                        return Err(e);
                    }
                },
                Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                    if let Err(e) = done {
                        if e.is_panic() {
                            shared.stats.panics.fetch_add(1, Ordering::Relaxed);
                            tracing::error!("rendezvous connection task panicked: {e}");
                        }
                    }
                }
            }
        }
    }
}

fn tcp_listener(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// The answer to a datagram: a Binding success response with the sender's address when
/// it is a well-formed Binding request, a 420 when it asks for attributes we do not know,
/// nothing otherwise.
pub(crate) fn stun_answer(datagram: &[u8], from: SocketAddr) -> Option<Vec<u8>> {
    let request = Message::decode(datagram).ok()?;
    if request.class != Class::Request || request.method != METHOD_BINDING {
        return None;
    }
    let software = concat!("p2p-transfer rendezvous ", env!("CARGO_PKG_VERSION"));
    let unknown: Vec<u8> = request
        .attributes()
        .iter()
        .filter(|a| {
            // CHANGE-REQUEST (RFC 5780) asks for an answer from another address, which
            // this server does not have: refused, so that a mapping test is not misled.
            a.is_comprehension_required()
                && (!attr::KNOWN_REQUIRED.contains(&a.typ) || a.typ == attr::CHANGE_REQUEST)
        })
        .flat_map(|a| a.typ.to_be_bytes())
        .collect();
    if !unknown.is_empty() {
        return Some(
            MessageBuilder::new(Class::ErrorResponse, METHOD_BINDING, request.transaction_id)
                .error_code(420, "Unknown Attribute")
                .attribute(attr::UNKNOWN_ATTRIBUTES, &unknown)
                .software(software)
                .finish_with_fingerprint(),
        );
    }
    let from = SocketAddr::new(from.ip().to_canonical(), from.port());
    Some(
        MessageBuilder::new(
            Class::SuccessResponse,
            METHOD_BINDING,
            request.transaction_id,
        )
        .xor_mapped_address(from)
        .software(software)
        .finish_with_fingerprint(),
    )
}

// ---------------------------------------------------------------------------------------
// Shared state

struct Shared {
    state: Mutex<State>,
    stats: Arc<ServerStats>,
    turn: Option<TurnSecret>,
    limits: Limits,
    next_id: AtomicU64,
}

#[derive(Default)]
struct State {
    mailboxes: HashMap<u32, Slot>,
    /// Nameplates below `high` that are free again.
    free: BTreeSet<u32>,
    /// One above the highest nameplate ever handed out (and not given back).
    high: u32,
    per_ip: HashMap<IpKey, usize>,
}

type Outbox = mpsc::Sender<ServerMessage>;

struct Slot {
    id: u64,
    expires: Instant,
    sides: [Option<Outbox>; 2],
    /// Bodies side 0 added before side 1 joined.
    pending: VecDeque<Vec<u8>>,
}

/// Addresses counted together for [`Limits::per_ip`]: an IPv4 address, or an IPv6 /64
/// (one subscriber usually gets a whole /64).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum IpKey {
    V4([u8; 4]),
    V6([u8; 8]),
}

impl IpKey {
    fn of(ip: IpAddr) -> IpKey {
        match ip.to_canonical() {
            IpAddr::V4(v4) => IpKey::V4(v4.octets()),
            IpAddr::V6(v6) => {
                let mut prefix = [0u8; 8];
                prefix.copy_from_slice(&Ipv6Addr::octets(&v6)[..8]);
                IpKey::V6(prefix)
            }
        }
    }
}

impl Shared {
    fn new(turn: Option<TurnSecret>, limits: Limits) -> Self {
        Shared {
            state: Mutex::new(State {
                high: 1,
                ..State::default()
            }),
            stats: Arc::default(),
            turn,
            limits,
            next_id: AtomicU64::new(1),
        }
    }

    /// The state, even after a panic elsewhere (every update leaves it consistent).
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn grant(&self) -> Option<TurnGrant> {
        let turn = self.turn.as_ref()?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let (username, password) = turn_credentials(&turn.secret, turn.lifetime, now);
        Some(TurnGrant {
            servers: turn.servers.clone(),
            username,
            password,
            expires_unix: now.saturating_add(turn.lifetime.as_secs()),
        })
    }
}

/// Holds one of an address's connection slots, and one of the open-connection count.
struct ConnGuard {
    shared: Arc<Shared>,
    key: IpKey,
}

impl ConnGuard {
    /// `None` when the address already has [`Limits::per_ip`] connections.
    fn new(shared: &Arc<Shared>, ip: IpAddr) -> Option<ConnGuard> {
        let key = IpKey::of(ip);
        let mut state = shared.lock();
        let count = state.per_ip.entry(key).or_insert(0);
        if *count >= shared.limits.per_ip {
            if *count == 0 {
                state.per_ip.remove(&key);
            }
            return None;
        }
        *count += 1;
        shared.stats.connections.fetch_add(1, Ordering::Relaxed);
        Some(ConnGuard {
            shared: Arc::clone(shared),
            key,
        })
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        if let Some(count) = state.per_ip.get_mut(&self.key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                state.per_ip.remove(&self.key);
            }
        }
        self.shared
            .stats
            .connections
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// One side's membership of a mailbox; dropping it destroys the mailbox (and with it the
/// other side's channel, which tells that side `PeerLeft`).
struct Member {
    shared: Arc<Shared>,
    nameplate: u32,
    id: u64,
    side: usize,
    inbox: mpsc::Receiver<ServerMessage>,
    expires: Instant,
}

impl Drop for Member {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        if state.mailboxes.get(&self.nameplate).map(|s| s.id) == Some(self.id) {
            state.mailboxes.remove(&self.nameplate);
            release_nameplate(&mut state, self.nameplate);
            self.shared.stats.mailboxes.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// The smallest free nameplate (from 1), now taken.
fn take_nameplate(state: &mut State) -> Option<u32> {
    match state.free.pop_first() {
        Some(n) => Some(n),
        None => {
            let n = state.high;
            state.high = n.checked_add(1)?;
            Some(n)
        }
    }
}

/// Gives `nameplate` back; the highest free numbers shrink `high` again.
fn release_nameplate(state: &mut State, nameplate: u32) {
    if nameplate + 1 == state.high {
        state.high = nameplate;
        while let Some(&top) = state.free.last() {
            if top + 1 != state.high {
                break;
            }
            state.free.remove(&top);
            state.high = top;
        }
    } else {
        state.free.insert(nameplate);
    }
}

// ---------------------------------------------------------------------------------------
// One connection

/// How a connection ends.
enum End {
    /// Nothing more to say (the client left, or cannot be written to).
    Quiet,
    /// Send `Error { reason }`, then close.
    Error(String),
}

async fn connection(shared: Arc<Shared>, mut stream: TcpStream, peer: SocketAddr) {
    let _ = stream.set_nodelay(true);
    let write_timeout = shared.limits.write_timeout;
    let Some(_guard) = ConnGuard::new(&shared, peer.ip()) else {
        let reason = format!(
            "too many connections from your address (the limit is {})",
            shared.limits.per_ip
        );
        refuse(&mut stream, reason, write_timeout).await;
        return;
    };
    let (read, mut write) = stream.split();
    let mut reader = FramedRead::with_capacity(read, protocol::codec(), 64);
    let end = session(&shared, &mut reader, &mut write, peer).await;
    if let End::Error(reason) = end {
        tracing::debug!(%peer, "rendezvous: closing with error: {reason}");
        let _ = write_message(&mut write, &ServerMessage::Error { reason }, write_timeout).await;
        linger(&mut write, reader.get_mut()).await;
    }
}

/// Sends `Error { reason }` on a connection that never got a session, and closes it.
async fn refuse(stream: &mut TcpStream, reason: String, write_timeout: Duration) {
    let (mut read, mut write) = stream.split();
    if write_message(&mut write, &ServerMessage::Error { reason }, write_timeout)
        .await
        .is_ok()
    {
        linger(&mut write, &mut read).await;
    }
}

/// Half-closes and reads what the client still sends (bounded in time and bytes), so
/// that closing with unread input does not turn into a reset that destroys the `Error`
/// frame before the client reads it.
async fn linger(write: &mut (impl AsyncWrite + Unpin), read: &mut (impl AsyncRead + Unpin)) {
    const LINGER: Duration = Duration::from_secs(2);
    const LINGER_BYTES: usize = 64 * 1024;
    let _ = tokio::time::timeout(LINGER, async {
        let _ = write.shutdown().await;
        let mut buf = [0u8; 1024];
        let mut total = 0;
        while total < LINGER_BYTES {
            match read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
    })
    .await;
}

async fn write_message(
    write: &mut (impl AsyncWrite + Unpin),
    message: &ServerMessage,
    timeout: Duration,
) -> io::Result<()> {
    let frame = protocol::encode_frame(message)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "message exceeds a frame"))?;
    match tokio::time::timeout(timeout, write.write_all(&frame)).await {
        Ok(result) => result,
        Err(_) => Err(io::ErrorKind::TimedOut.into()),
    }
}

type Reader<'a> =
    FramedRead<tokio::net::tcp::ReadHalf<'a>, tokio_util::codec::LengthDelimitedCodec>;

/// Reads the next client message; `Err` is how the connection ends.
async fn next_message(reader: &mut Reader<'_>) -> Result<ClientMessage, End> {
    match reader.next().await {
        None => Err(End::Quiet),
        Some(Err(e)) if e.kind() == io::ErrorKind::InvalidData => {
            Err(End::Error(format!("frame longer than {MAX_FRAME} bytes")))
        }
        Some(Err(_)) => Err(End::Quiet),
        Some(Ok(payload)) => protocol::decode::<ClientMessage>(&payload)
            .map_err(|e| End::Error(format!("{e}: this is not a p2p-transfer rendezvous client"))),
    }
}

async fn session(
    shared: &Arc<Shared>,
    reader: &mut Reader<'_>,
    write: &mut tokio::net::tcp::WriteHalf<'_>,
    peer: SocketAddr,
) -> End {
    let limits = &shared.limits;
    // Hello, in time.
    let hello = match tokio::time::timeout(limits.handshake_timeout, next_message(reader)).await {
        Err(_) => return End::Error(format!("no Hello within {:?}", limits.handshake_timeout)),
        Ok(Err(end)) => return end,
        Ok(Ok(message)) => message,
    };
    match hello {
        ClientMessage::Hello {
            version: PROTOCOL_VERSION,
        } => {}
        ClientMessage::Hello { version } => {
            return End::Error(format!(
                "unsupported rendezvous protocol version {version} (this server speaks \
                 {PROTOCOL_VERSION}); update p2p-transfer"
            ))
        }
        _ => return End::Error("the first message must be Hello".to_owned()),
    }
    let welcome = ServerMessage::Welcome {
        version: PROTOCOL_VERSION,
        turn: shared.grant(),
    };
    if write_message(write, &welcome, limits.write_timeout)
        .await
        .is_err()
    {
        return End::Quiet;
    }

    // A connection without a mailbox lives as long as a mailbox would.
    let expiry = tokio::time::sleep(limits.mailbox_lifetime);
    tokio::pin!(expiry);
    let mut member: Option<Member> = None;
    // A message on its way into the other side's inbox. While it waits (the other side
    // reads slowly), this connection reads nothing more from its client, but still
    // delivers its own inbox — so two sides that both send bursts cannot block each other.
    let mut forward: Option<Forward> = None;
    loop {
        tokio::select! {
            biased;
            () = &mut expiry => return End::Error(expired_reason(member.as_ref(), limits)),
            delivered = recv_inbox(&mut member), if member.is_some() => match delivered {
                Some(message) => {
                    if write_message(write, &message, limits.write_timeout).await.is_err() {
                        return End::Quiet;
                    }
                }
                None => {
                    // The mailbox is gone: the other side left, or it expired first.
                    if Instant::now() >= member.as_ref().map_or_else(Instant::now, |m| m.expires) {
                        return End::Error(expired_reason(member.as_ref(), limits));
                    }
                    drop(member.take());
                    let _ = write_message(write, &ServerMessage::PeerLeft, limits.write_timeout)
                        .await;
                    tracing::debug!(%peer, "rendezvous: peer left");
                    return End::Quiet;
                }
            },
            // If the other side is gone, its leaving closes our inbox: nothing to do here.
            _ = async { forward.as_mut()?.await.ok() }, if forward.is_some() => forward = None,
            message = next_message(reader), if forward.is_none() => {
                let message = match message {
                    Ok(message) => message,
                    Err(end) => return end,
                };
                let step = match handle(shared, &mut member, message) {
                    Ok(step) => step,
                    Err(reason) => return End::Error(reason),
                };
                if let Some(m) = &member {
                    expiry.as_mut().reset(m.expires);
                }
                forward = step.forward.map(|(outbox, message)| -> Forward {
                    Box::pin(async move { outbox.send(message).await.map_err(drop) })
                });
                for reply in step.replies {
                    if write_message(write, &reply, limits.write_timeout).await.is_err() {
                        return End::Quiet;
                    }
                }
            }
        }
    }
}

type Forward = std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), ()>> + Send>>;

/// What one client message leads to.
#[derive(Default)]
struct Step {
    /// Frames for this client, in order.
    replies: Vec<ServerMessage>,
    /// A message for the other side's inbox.
    forward: Option<(Outbox, ServerMessage)>,
}

async fn recv_inbox(member: &mut Option<Member>) -> Option<ServerMessage> {
    match member {
        Some(m) => m.inbox.recv().await,
        None => std::future::pending().await,
    }
}

fn expired_reason(member: Option<&Member>, limits: &Limits) -> String {
    match member {
        Some(m) => format!(
            "the mailbox on nameplate {} expired ({:?} after it was opened); start again \
             with a new code",
            m.nameplate, limits.mailbox_lifetime
        ),
        None => format!(
            "expired: no mailbox opened within {:?}",
            limits.mailbox_lifetime
        ),
    }
}

/// Applies one message to the shared state. `Ok` carries what to write back to this
/// client and what to forward to the other side; `Err` a reason to close with.
fn handle(
    shared: &Arc<Shared>,
    member: &mut Option<Member>,
    message: ClientMessage,
) -> Result<Step, String> {
    let limits = &shared.limits;
    match message {
        ClientMessage::Hello { .. } => Err("Hello was already received".to_owned()),
        ClientMessage::Allocate | ClientMessage::Claim { .. } if member.is_some() => {
            Err("this connection already has a mailbox".to_owned())
        }
        ClientMessage::Allocate => {
            let (outbox, inbox) = mpsc::channel(limits.max_queued + 1);
            let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
            let expires = Instant::now() + limits.mailbox_lifetime;
            let mut state = shared.lock();
            if state.mailboxes.len() >= limits.max_mailboxes {
                return Err(format!(
                    "the rendezvous server is full ({} mailboxes open); try again later",
                    state.mailboxes.len()
                ));
            }
            let nameplate =
                take_nameplate(&mut state).ok_or_else(|| "no nameplate left".to_owned())?;
            state.mailboxes.insert(
                nameplate,
                Slot {
                    id,
                    expires,
                    sides: [Some(outbox), None],
                    pending: VecDeque::new(),
                },
            );
            shared.stats.mailboxes.fetch_add(1, Ordering::Relaxed);
            drop(state);
            *member = Some(Member {
                shared: Arc::clone(shared),
                nameplate,
                id,
                side: 0,
                inbox,
                expires,
            });
            Ok(Step {
                replies: vec![ServerMessage::Allocated { nameplate }],
                forward: None,
            })
        }
        ClientMessage::Claim { nameplate } => {
            let (outbox, inbox) = mpsc::channel(limits.max_queued + 1);
            let mut state = shared.lock();
            let Some(slot) = state.mailboxes.get_mut(&nameplate) else {
                return Err(format!(
                    "no one is waiting on nameplate {nameplate}: check the code, or the \
                     sender stopped"
                ));
            };
            if slot.sides[1].is_some() {
                return Err(format!(
                    "nameplate {nameplate} is taken by another transfer"
                ));
            }
            slot.sides[1] = Some(outbox);
            if let Some(side0) = &slot.sides[0] {
                // Capacity is max_queued + 1 and side 1 could not add anything yet.
                let _ = side0.try_send(ServerMessage::PeerJoined);
            }
            let pending = std::mem::take(&mut slot.pending);
            let (id, expires) = (slot.id, slot.expires);
            drop(state);
            *member = Some(Member {
                shared: Arc::clone(shared),
                nameplate,
                id,
                side: 1,
                inbox,
                expires,
            });
            let mut replies = Vec::with_capacity(1 + pending.len());
            replies.push(ServerMessage::Claimed);
            replies.extend(
                pending
                    .into_iter()
                    .map(|body| ServerMessage::Message { body }),
            );
            Ok(Step {
                replies,
                forward: None,
            })
        }
        ClientMessage::Add { body } => {
            if body.len() > MAX_BODY {
                return Err(format!("message body longer than {MAX_BODY} bytes"));
            }
            let Some(m) = member.as_ref() else {
                return Err(
                    "no mailbox on this connection: send Allocate or Claim first".to_owned(),
                );
            };
            let mut state = shared.lock();
            let Some(slot) = state
                .mailboxes
                .get_mut(&m.nameplate)
                .filter(|s| s.id == m.id)
            else {
                // Destroyed an instant ago; the inbox will say PeerLeft.
                return Ok(Step::default());
            };
            match &slot.sides[1 - m.side] {
                Some(other) => Ok(Step {
                    replies: Vec::new(),
                    forward: Some((other.clone(), ServerMessage::Message { body })),
                }),
                None if slot.pending.len() >= limits.max_queued => Err(format!(
                    "too many messages waiting for the other side (the limit is {})",
                    limits.max_queued
                )),
                None => {
                    slot.pending.push_back(body);
                    Ok(Step::default())
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nameplates_are_the_smallest_free_number() {
        let mut state = State {
            high: 1,
            ..State::default()
        };
        let take = |state: &mut State| take_nameplate(state).unwrap();
        assert_eq!(
            (take(&mut state), take(&mut state), take(&mut state)),
            (1, 2, 3)
        );
        release_nameplate(&mut state, 2);
        assert_eq!(take(&mut state), 2);
        release_nameplate(&mut state, 1);
        release_nameplate(&mut state, 2);
        release_nameplate(&mut state, 3);
        assert_eq!(state.high, 1);
        assert!(state.free.is_empty());
        assert_eq!(take(&mut state), 1);
    }

    #[test]
    fn stun_answers_only_binding_requests() {
        let from: SocketAddr = "[::ffff:192.0.2.7]:4000".parse().unwrap();
        let id = stun::TransactionId::random();
        let answer = stun_answer(&stun::binding_request(id), from).unwrap();
        let parsed = stun::parse_binding_response(&answer, id).unwrap();
        assert_eq!(parsed.mapped, "192.0.2.7:4000".parse().unwrap());
        assert!(parsed.xor_mapped);
        let m = Message::decode(&answer).unwrap();
        assert_eq!(
            m.attributes().last().map(|a| a.typ),
            Some(attr::FINGERPRINT)
        );

        // Not a request, not Binding, not STUN: no answer.
        let response = MessageBuilder::new(Class::SuccessResponse, METHOD_BINDING, id).finish();
        assert!(stun_answer(&response, from).is_none());
        let allocate = MessageBuilder::new(Class::Request, 0x003, id).finish();
        assert!(stun_answer(&allocate, from).is_none());
        assert!(stun_answer(b"hello", from).is_none());

        // An unknown comprehension-required attribute: 420.
        let odd = MessageBuilder::new(Class::Request, METHOD_BINDING, id)
            .attribute(0x7777, b"?")
            .finish();
        let answer = stun_answer(&odd, from).unwrap();
        let m = Message::decode(&answer).unwrap();
        assert_eq!(m.class, Class::ErrorResponse);
        assert_eq!(m.error_code().unwrap().unwrap().0, 420);
        assert_eq!(
            m.attribute(attr::UNKNOWN_ATTRIBUTES),
            Some(&[0x77, 0x77][..])
        );
    }

    #[test]
    fn ipv6_clients_are_counted_per_64() {
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(IpKey::of(a), IpKey::of(b));
        assert_ne!(IpKey::of(a), IpKey::of(c));
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(IpKey::of(mapped), IpKey::V4([10, 0, 0, 1]));
    }
}
