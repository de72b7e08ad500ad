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
    self, ClientMessage, ServerMessage, SwarmId, TurnGrant, MAX_BODY, MAX_FRAME, MAX_PEERS,
    PROTOCOL_VERSION,
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
    /// Tracker: swarms one connection may have announced at once; one more `Announce`
    /// is an `Error` and close. Default 1024.
    pub max_announces: usize,
    /// Tracker: (swarm, connection) entries over all clients; an `Announce` that would
    /// add one more is an `Error` ("the tracker is full") and close. Default 200,000.
    pub max_entries: usize,
    /// Tracker: an entry expires this long after its last `Announce` (clients re-announce
    /// well within it). Default 10 min.
    pub announce_ttl: Duration,
    /// Tracker: `Introduce` per connection; beyond it the answer is
    /// `Introduced { delivered: false }` (not an error). Default 20 at once, 5/s.
    pub introductions: Rate,
    /// Tracker: `Lookup` per connection; beyond it the server waits for the bucket to
    /// refill before it answers (and reads nothing else from that connection meanwhile).
    /// Default 20 at once, 5/s.
    pub lookups: Rate,
    /// Tracker: introductions waiting to be written to one announcer; one more is not
    /// delivered (`Introduced { delivered: false }` to the introducer). Default 16.
    pub max_introductions_queued: usize,
    /// Tracker: a tracker connection that sends nothing for this long is closed (`Error`,
    /// "idle"); a client with announces re-sends them every third of `announce_ttl`.
    /// Default 30 min.
    pub tracker_idle: Duration,
}

/// A token bucket: `burst` at once, then `per_second`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Tokens when full (the bucket starts full).
    pub burst: u32,
    /// Tokens added per second.
    pub per_second: u32,
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
            max_announces: 1024,
            max_entries: 200_000,
            announce_ttl: Duration::from_secs(600),
            introductions: Rate {
                burst: 20,
                per_second: 5,
            },
            lookups: Rate {
                burst: 20,
                per_second: 5,
            },
            max_introductions_queued: 16,
            tracker_idle: Duration::from_secs(1800),
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
    swarms: AtomicUsize,
    entries: AtomicUsize,
    announces: AtomicU64,
    introductions: AtomicU64,
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
    /// Tracker: swarms with at least one entry now.
    pub fn swarms(&self) -> usize {
        self.swarms.load(Ordering::Relaxed)
    }
    /// Tracker: (swarm, connection) entries now.
    pub fn entries(&self) -> usize {
        self.entries.load(Ordering::Relaxed)
    }
    /// Tracker: `Announce` messages accepted so far (first ones and refreshes).
    pub fn announces(&self) -> u64 {
        self.announces.load(Ordering::Relaxed)
    }
    /// Tracker: introductions delivered so far.
    pub fn introductions(&self) -> u64 {
        self.introductions.load(Ordering::Relaxed)
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
    /// Tracker: who announced each swarm.
    swarms: HashMap<SwarmId, Swarm>,
    /// Tracker: every tracker connection, by peer id.
    trackers: HashMap<u64, Tracked>,
    /// Tracker: (swarm, connection) entries, the sum of every `Tracked::swarms` length.
    entries: usize,
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

    // A connection that says nothing after Hello lives as long as a mailbox would.
    let expiry = tokio::time::sleep(limits.mailbox_lifetime);
    tokio::pin!(expiry);
    // The first message decides: a tracker connection, or a mailbox connection.
    let first = tokio::select! {
        () = &mut expiry => return End::Error(expired_reason(None, limits)),
        message = next_message(reader) => match message {
            Ok(message) => message,
            Err(end) => return end,
        },
    };
    if first.is_tracker() {
        return tracker_session(shared, reader, write, first).await;
    }
    let mut first = Some(first);
    let mut member: Option<Member> = None;
    // A message on its way into the other side's inbox. While it waits (the other side
    // reads slowly), this connection reads nothing more from its client, but still
    // delivers its own inbox — so two sides that both send bursts cannot block each other.
    let mut forward: Option<Forward> = None;
    loop {
        let message = match first.take() {
            Some(message) => message,
            None => tokio::select! {
            biased;
            () = &mut expiry => return End::Error(expired_reason(member.as_ref(), limits)),
            delivered = recv_inbox(&mut member), if member.is_some() => match delivered {
                Some(message) => {
                    if write_message(write, &message, limits.write_timeout).await.is_err() {
                        return End::Quiet;
                    }
                    continue;
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
            _ = async { forward.as_mut()?.await.ok() }, if forward.is_some() => {
                forward = None;
                continue;
            }
            message = next_message(reader), if forward.is_none() => match message {
                Ok(message) => message,
                Err(end) => return end,
            },
            },
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
            if write_message(write, &reply, limits.write_timeout)
                .await
                .is_err()
            {
                return End::Quiet;
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
        ClientMessage::Announce { .. }
        | ClientMessage::Withdraw { .. }
        | ClientMessage::Lookup { .. }
        | ClientMessage::Introduce { .. } => Err(
            "this is a mailbox connection (it sent Allocate, Claim or Add): tracker messages \
             need a connection of their own"
                .to_owned(),
        ),
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

// ---------------------------------------------------------------------------------------
// The tracker
//
// A tracker connection registers a peer id (random, never 0) with a bounded queue for the
// introductions addressed to it. Its entries live in two places kept in step under the
// state lock: `Tracked::swarms` (swarm → expiry, per connection) and `Swarm` (the
// announcers of one swarm, in a vector for O(1) random sampling). The connection's task
// removes its own entries when they expire; its `TrackerGuard` removes them all when the
// task ends in any way.

/// The announcers of one swarm: a vector to sample from, and where each one is in it.
#[derive(Default)]
struct Swarm {
    members: Vec<u64>,
    index: HashMap<u64, usize>,
}

impl Swarm {
    fn insert(&mut self, peer: u64) {
        if let std::collections::hash_map::Entry::Vacant(slot) = self.index.entry(peer) {
            slot.insert(self.members.len());
            self.members.push(peer);
        }
    }

    fn remove(&mut self, peer: u64) {
        let Some(at) = self.index.remove(&peer) else {
            return;
        };
        self.members.swap_remove(at);
        if let Some(&moved) = self.members.get(at) {
            self.index.insert(moved, at);
        }
    }
}

/// One tracker connection, as the state knows it.
struct Tracked {
    /// Where introductions for this connection go (bounded by
    /// [`Limits::max_introductions_queued`]).
    introductions: mpsc::Sender<ServerMessage>,
    /// What it announced, and when each entry expires.
    swarms: HashMap<SwarmId, Instant>,
}

impl State {
    fn remove_entry(&mut self, peer: u64, swarm: &SwarmId) {
        let Some(tracked) = self.trackers.get_mut(&peer) else {
            return;
        };
        if tracked.swarms.remove(swarm).is_none() {
            return;
        }
        self.entries = self.entries.saturating_sub(1);
        if let Some(members) = self.swarms.get_mut(swarm) {
            members.remove(peer);
            if members.members.is_empty() {
                self.swarms.remove(swarm);
            }
        }
    }

    /// Whether `peer` announced `swarm` and the entry has not expired.
    fn is_live(&self, peer: u64, swarm: &SwarmId, now: Instant) -> bool {
        self.trackers
            .get(&peer)
            .and_then(|t| t.swarms.get(swarm))
            .is_some_and(|&expires| expires > now)
    }

    fn update_tracker_stats(&self, stats: &ServerStats) {
        stats.swarms.store(self.swarms.len(), Ordering::Relaxed);
        stats.entries.store(self.entries, Ordering::Relaxed);
    }
}

/// A tracker connection's registration; dropping it removes every entry it has.
struct TrackerGuard {
    shared: Arc<Shared>,
    peer: u64,
}

impl TrackerGuard {
    /// Registers a new tracker connection under a fresh random peer id.
    fn register(shared: &Arc<Shared>, introductions: mpsc::Sender<ServerMessage>) -> Self {
        let mut state = shared.lock();
        let peer = loop {
            let candidate: u64 = rand::random();
            if candidate != 0 && !state.trackers.contains_key(&candidate) {
                break candidate;
            }
        };
        state.trackers.insert(
            peer,
            Tracked {
                introductions,
                swarms: HashMap::new(),
            },
        );
        TrackerGuard {
            shared: Arc::clone(shared),
            peer,
        }
    }

    fn announce(&self, swarm: SwarmId) -> Result<(), String> {
        let limits = &self.shared.limits;
        let expires = Instant::now() + limits.announce_ttl;
        let mut state = self.shared.lock();
        let entries = state.entries;
        let Some(tracked) = state.trackers.get_mut(&self.peer) else {
            return Err("this tracker connection is no longer registered".to_owned());
        };
        if let Some(entry) = tracked.swarms.get_mut(&swarm) {
            *entry = expires;
        } else {
            if tracked.swarms.len() >= limits.max_announces {
                return Err(format!(
                    "too many swarms announced on one connection (the limit is {})",
                    limits.max_announces
                ));
            }
            if entries >= limits.max_entries {
                return Err(format!(
                    "the tracker is full ({entries} announces); try again later"
                ));
            }
            tracked.swarms.insert(swarm, expires);
            state.entries = entries.saturating_add(1);
            state.swarms.entry(swarm).or_default().insert(self.peer);
            state.update_tracker_stats(&self.shared.stats);
        }
        self.shared.stats.announces.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn withdraw(&self, swarm: &SwarmId) {
        let mut state = self.shared.lock();
        state.remove_entry(self.peer, swarm);
        state.update_tracker_stats(&self.shared.stats);
    }

    /// Removes the entries that expired; returns when the next one expires.
    fn expire(&self) -> Option<Instant> {
        let now = Instant::now();
        let mut state = self.shared.lock();
        let expired: Vec<SwarmId> = state
            .trackers
            .get(&self.peer)?
            .swarms
            .iter()
            .filter(|(_, &expires)| expires <= now)
            .map(|(swarm, _)| *swarm)
            .collect();
        for swarm in &expired {
            state.remove_entry(self.peer, swarm);
        }
        if !expired.is_empty() {
            state.update_tracker_stats(&self.shared.stats);
        }
        state
            .trackers
            .get(&self.peer)?
            .swarms
            .values()
            .min()
            .copied()
    }

    /// Up to [`MAX_PEERS`] random live announcers of `swarm`, not this connection.
    fn lookup(&self, swarm: &SwarmId) -> Vec<u64> {
        let now = Instant::now();
        let state = self.shared.lock();
        let Some(members) = state.swarms.get(swarm) else {
            return Vec::new();
        };
        let n = members.members.len();
        let amount = n.min(MAX_PEERS + 1);
        let mut rng = rand::rng();
        rand::seq::index::sample(&mut rng, n, amount)
            .into_iter()
            .filter_map(|i| members.members.get(i).copied())
            .filter(|&peer| peer != self.peer && state.is_live(peer, swarm, now))
            .take(MAX_PEERS)
            .collect()
    }

    /// Queues an `Introduction` for `peer` when it is a live announcer of `swarm`,
    /// `nameplate` is an allocated mailbox nobody claimed yet, and `peer`'s queue has room.
    fn introduce(&self, swarm: SwarmId, peer: u64, nameplate: u32) -> bool {
        let now = Instant::now();
        let state = self.shared.lock();
        if !state.is_live(peer, &swarm, now) {
            return false;
        }
        let waiting = state.mailboxes.get(&nameplate).is_some_and(|slot| {
            slot.sides[0].is_some() && slot.sides[1].is_none() && slot.expires > now
        });
        if !waiting {
            return false;
        }
        let Some(tracked) = state.trackers.get(&peer) else {
            return false;
        };
        let queued = tracked
            .introductions
            .try_send(ServerMessage::Introduction { swarm, nameplate })
            .is_ok();
        if queued {
            self.shared
                .stats
                .introductions
                .fetch_add(1, Ordering::Relaxed);
        }
        queued
    }
}

impl Drop for TrackerGuard {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        let swarms: Vec<SwarmId> = state
            .trackers
            .get(&self.peer)
            .map(|t| t.swarms.keys().copied().collect())
            .unwrap_or_default();
        for swarm in &swarms {
            state.remove_entry(self.peer, swarm);
        }
        state.trackers.remove(&self.peer);
        state.update_tracker_stats(&self.shared.stats);
    }
}

/// A token bucket for one connection (see [`Rate`]).
struct Bucket {
    rate: Rate,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn new(rate: Rate) -> Self {
        Bucket {
            rate,
            tokens: f64::from(rate.burst),
            last: Instant::now(),
        }
    }

    fn refill(&mut self) {
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * f64::from(self.rate.per_second))
            .min(f64::from(self.rate.burst));
    }

    /// Takes a token if there is one.
    fn try_take(&mut self) -> bool {
        self.refill();
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Waits for a token and takes it.
    async fn take(&mut self) {
        while !self.try_take() {
            let wait = if self.rate.per_second == 0 {
                // Never refills: the connection waits until it is closed (idle, or the
                // client gives up).
                Duration::from_secs(3600)
            } else {
                Duration::from_secs_f64((1.0 - self.tokens) / f64::from(self.rate.per_second))
                    .max(Duration::from_millis(1))
            };
            tokio::time::sleep(wait).await;
        }
    }
}

/// Far enough in the future to stand for "never" in a `sleep_until`.
fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365)
}

/// Serves a tracker connection from its first tracker message on. It lives until the
/// client closes it, is idle for [`Limits::tracker_idle`], errs, or stops reading.
async fn tracker_session(
    shared: &Arc<Shared>,
    reader: &mut Reader<'_>,
    write: &mut tokio::net::tcp::WriteHalf<'_>,
    first: ClientMessage,
) -> End {
    let limits = &shared.limits;
    let (introductions, mut inbox) = mpsc::channel(limits.max_introductions_queued.max(1));
    let guard = TrackerGuard::register(shared, introductions);
    let mut introduce_bucket = Bucket::new(limits.introductions);
    let mut lookup_bucket = Bucket::new(limits.lookups);
    let idle = tokio::time::sleep(limits.tracker_idle);
    tokio::pin!(idle);
    let mut next_expiry: Option<Instant> = None;
    let mut first = Some(first);
    loop {
        let message = match first.take() {
            Some(message) => message,
            None => tokio::select! {
                biased;
                Some(introduction) = inbox.recv() => {
                    if write_message(write, &introduction, limits.write_timeout).await.is_err() {
                        return End::Quiet;
                    }
                    continue;
                }
                () = tokio::time::sleep_until(next_expiry.unwrap_or_else(far_future)),
                    if next_expiry.is_some() =>
                {
                    next_expiry = guard.expire();
                    continue;
                }
                () = &mut idle => {
                    return End::Error(format!(
                        "idle: nothing received for {:?} on this tracker connection",
                        limits.tracker_idle
                    ));
                }
                message = next_message(reader) => match message {
                    Ok(message) => message,
                    Err(end) => return end,
                },
            },
        };
        idle.as_mut().reset(Instant::now() + limits.tracker_idle);
        let reply = match message {
            ClientMessage::Hello { .. } => {
                return End::Error("Hello was already received".to_owned())
            }
            ClientMessage::Allocate | ClientMessage::Claim { .. } | ClientMessage::Add { .. } => {
                return End::Error(
                    "this is a tracker connection (it sent Announce, Withdraw, Lookup or \
                     Introduce): mailbox messages need a connection of their own"
                        .to_owned(),
                )
            }
            ClientMessage::Announce { swarm } => {
                if let Err(reason) = guard.announce(swarm) {
                    return End::Error(reason);
                }
                next_expiry = guard.expire();
                Some(ServerMessage::Announced { swarm })
            }
            ClientMessage::Withdraw { swarm } => {
                guard.withdraw(&swarm);
                next_expiry = guard.expire();
                None
            }
            ClientMessage::Lookup { swarm } => {
                lookup_bucket.take().await;
                Some(ServerMessage::Peers {
                    peers: guard.lookup(&swarm),
                    swarm,
                })
            }
            ClientMessage::Introduce {
                swarm,
                peer,
                nameplate,
            } => {
                let delivered =
                    introduce_bucket.try_take() && guard.introduce(swarm, peer, nameplate);
                Some(ServerMessage::Introduced { peer, delivered })
            }
        };
        if let Some(reply) = reply {
            if write_message(write, &reply, limits.write_timeout)
                .await
                .is_err()
            {
                return End::Quiet;
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
    fn an_announcers_introduction_queue_is_bounded() {
        let limits = Limits {
            introductions: Rate {
                burst: 1000,
                per_second: 0,
            },
            ..Limits::default()
        };
        let queued = limits.max_introductions_queued;
        assert_eq!(queued, 16);
        let shared = Arc::new(Shared::new(None, limits));
        // An announcer that never reads its queue.
        let (tx, mut rx) = mpsc::channel(queued);
        let announcer = TrackerGuard::register(&shared, tx);
        announcer.announce([1; 32]).unwrap();
        let mut member = None;
        handle(&shared, &mut member, ClientMessage::Allocate).unwrap();
        let (tx, _rx) = mpsc::channel(queued);
        let introducer = TrackerGuard::register(&shared, tx);
        let delivered = (0..1000)
            .filter(|_| introducer.introduce([1; 32], announcer.peer, 1))
            .count();
        assert_eq!(delivered, queued);
        let mut waiting = 0;
        while let Ok(message) = rx.try_recv() {
            assert_eq!(
                message,
                ServerMessage::Introduction {
                    swarm: [1; 32],
                    nameplate: 1
                }
            );
            waiting += 1;
        }
        assert_eq!(waiting, queued);
        // Read: room again.
        assert!(introducer.introduce([1; 32], announcer.peer, 1));

        // Leaving removes everything.
        drop(announcer);
        drop(introducer);
        let state = shared.lock();
        assert!(state.trackers.is_empty() && state.swarms.is_empty());
        assert_eq!(state.entries, 0);
    }

    #[test]
    fn a_swarm_removes_members_in_any_order() {
        let mut swarm = Swarm::default();
        for peer in 1..=5 {
            swarm.insert(peer);
        }
        swarm.insert(3);
        assert_eq!(swarm.members.len(), 5);
        for peer in [1, 5, 3, 9, 2, 4] {
            swarm.remove(peer);
            for (i, member) in swarm.members.iter().enumerate() {
                assert_eq!(swarm.index.get(member), Some(&i));
            }
            assert_eq!(swarm.index.len(), swarm.members.len());
        }
        assert!(swarm.members.is_empty());
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
