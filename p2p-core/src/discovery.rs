//! LAN discovery: receivers announce themselves with UDP broadcast beacons, senders
//! listen and pick one, so nobody has to type an address on the local network.
//!
//! This module owns the beacon datagram format, the [`Announcer`] a receiver runs while
//! it waits, the [`Browser`] and its [`PeerTable`] (expiry, own-beacon filtering), and
//! [`find`]'s rules for choosing one receiver. It does not connect to anyone: it hands
//! back a [`PeerInfo`] and the caller opens a session to [`PeerInfo::addr`] as with a
//! typed address. **A beacon is a hint, never an identity**: anyone on the LAN can send
//! one with any name, so whatever authenticates a peer must happen in the session.
//!
//! ## Wire format
//!
//! One UDP datagram of at most [`MAX_DATAGRAM_LEN`] bytes: the five bytes of
//! [`DATAGRAM_MAGIC`] (`P2PD` and a format version), then a postcard-encoded
//! [`DiscoveryMessage`], with nothing after it. Beacons go to every IPv4 interface's
//! broadcast address, the loopback broadcast address and `255.255.255.255`, port
//! [`DEFAULT_DISCOVERY_PORT`], every [`DEFAULT_ANNOUNCE_INTERVAL`]. A browser starts by
//! broadcasting a [`DiscoveryMessage::Probe`]; announcers answer it with an early beacon
//! (at most one per [`PROBE_ANSWER_GAP`]), so a sender usually finds a receiver in well
//! under a second instead of waiting for the next periodic beacon. The peer's address is
//! the beacon's *source* IP with the announced TCP port.
//!
//! ```no_run
//! # async fn demo() -> Result<(), p2p_core::discovery::DiscoveryError> {
//! use std::time::Duration;
//! use p2p_core::discovery::{self, Announcer, Beacon, DiscoveryConfig};
//!
//! let config = DiscoveryConfig::from_env()?;
//! // Receiver: announce while waiting for connections on TCP port 14567.
//! let beacon = Beacon::new(p2p_core::net::DeviceId::random(), "living-room", 14567);
//! let _announcer = Announcer::start(beacon, &config)?; // stops when dropped
//!
//! // Sender: find the one receiver called "living-room".
//! let peer = discovery::find_with(&config, Some("living-room"), Duration::from_secs(3)).await?;
//! println!("connecting to {} at {}", peer.name, peer.addr);
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::net::DeviceId;
use serde::{Deserialize, Serialize};
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::wire::PROTOCOL_VERSION;

/// UDP port beacons are sent to and listened on.
pub const DEFAULT_DISCOVERY_PORT: u16 = 14566;
/// Time between two beacons of one announcer.
pub const DEFAULT_ANNOUNCE_INTERVAL: Duration = Duration::from_secs(2);
/// A peer not heard from for this long is forgotten.
pub const DEFAULT_PEER_TTL: Duration = Duration::from_secs(10);
/// Environment variable that overrides the discovery port (tests use it to run side by
/// side; a user can move discovery off a port that is taken).
pub const PORT_ENV: &str = "P2P_DISCOVERY_PORT";
/// Environment variable with a comma-separated list of IPv4 addresses to send beacons
/// and probes to instead of every interface's broadcast address (e.g.
/// `127.255.255.255` to keep discovery on this host).
pub const TARGETS_ENV: &str = "P2P_DISCOVERY_TARGETS";
/// First bytes of every discovery datagram: `P2PD` and the format version.
pub const DATAGRAM_MAGIC: [u8; 5] = *b"P2PD\x02";
/// Largest datagram sent or accepted; anything longer is dropped unread.
pub const MAX_DATAGRAM_LEN: usize = 512;
/// Longest device name, in bytes.
pub const MAX_NAME_LEN: usize = 64;
/// Most peers remembered at once: a flood of forged beacons cannot grow the table past
/// this.
pub const MAX_PEERS: usize = 256;
/// An announcer answers probes at most this often.
pub const PROBE_ANSWER_GAP: Duration = Duration::from_millis(250);
/// After the first matching receiver shows up, [`find`] waits this long for others, so
/// that an ambiguous choice is noticed rather than guessed.
pub const FIND_SETTLE: Duration = Duration::from_millis(500);
/// The loopback network's broadcast address: peers on the same host.
const LOOPBACK_BROADCAST: Ipv4Addr = Ipv4Addr::new(127, 255, 255, 255);

/// What a receiver says about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Beacon {
    /// The announcing device's id (its key; see [`crate::net::identity`]). A claim:
    /// the connection fails unless the peer proves this key.
    pub device_id: DeviceId,
    /// Human-readable name, at most [`MAX_NAME_LEN`] bytes, no control characters.
    pub name: String,
    /// TCP port the receiver accepts sessions on.
    pub listen_port: u16,
    /// The session protocol version it speaks ([`PROTOCOL_VERSION`]).
    pub protocol_version: u32,
    /// The nameplate (public number) of the one-time code this peer waits for, if any:
    /// `receive 7-guitar-orbit` looks for nameplate 7.
    pub nameplate: Option<u16>,
}

impl Beacon {
    /// A beacon for this build's protocol version. The name is cleaned the way a
    /// browser would insist on: control characters become `?`, and it is cut to
    /// [`MAX_NAME_LEN`] bytes on a character boundary.
    pub fn new(device_id: DeviceId, name: &str, listen_port: u16) -> Self {
        let mut clean = String::with_capacity(name.len().min(MAX_NAME_LEN));
        for c in name.chars().map(|c| if c.is_control() { '?' } else { c }) {
            if clean.len() + c.len_utf8() > MAX_NAME_LEN {
                break;
            }
            clean.push(c);
        }
        if clean.is_empty() {
            clean.push_str("p2p-transfer");
        }
        Beacon {
            device_id,
            name: clean,
            listen_port,
            protocol_version: PROTOCOL_VERSION,
            nameplate: None,
        }
    }

    /// The same beacon, announcing that a code with this nameplate is waiting.
    pub fn with_nameplate(mut self, nameplate: Option<u16>) -> Self {
        self.nameplate = nameplate;
        self
    }

    fn validate(&self) -> Result<(), BeaconError> {
        if self.name.is_empty() || self.name.len() > MAX_NAME_LEN {
            return Err(BeaconError::BadName("empty or longer than 64 bytes"));
        }
        if self.name.chars().any(char::is_control) {
            return Err(BeaconError::BadName("contains control characters"));
        }
        if self.listen_port == 0 {
            return Err(BeaconError::ZeroPort);
        }
        Ok(())
    }
}

/// Everything that travels on the discovery port. The variant order is wire format.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DiscoveryMessage {
    /// "I am a receiver, here is how to reach me."
    Beacon(Beacon),
    /// "Receivers, announce yourselves now."
    Probe,
}

/// Why a datagram on the discovery port was dropped. Never fatal: the listener logs it
/// and reads the next one.
#[derive(Debug, thiserror::Error)]
pub enum BeaconError {
    /// Larger than [`MAX_DATAGRAM_LEN`].
    #[error("datagram of {0} bytes is larger than any beacon")]
    Oversized(usize),
    /// Does not start with [`DATAGRAM_MAGIC`]: another program, or another format version.
    #[error("not a p2p-transfer discovery datagram (or another format version)")]
    BadMagic,
    /// The body is not a valid message.
    #[error("malformed discovery message: {0}")]
    Decode(#[source] postcard::Error),
    /// Bytes after the message.
    #[error("{0} stray bytes after the discovery message")]
    TrailingBytes(usize),
    /// Unacceptable device name.
    #[error("beacon with an unacceptable name: {0}")]
    BadName(&'static str),
    /// Port 0 cannot be connected to.
    #[error("beacon announces port 0")]
    ZeroPort,
}

/// Encodes a message as one datagram.
pub fn encode_datagram(message: &DiscoveryMessage) -> Result<Vec<u8>, BeaconError> {
    let mut out = DATAGRAM_MAGIC.to_vec();
    let body = postcard::to_stdvec(message).map_err(BeaconError::Decode)?;
    out.extend_from_slice(&body);
    if out.len() > MAX_DATAGRAM_LEN {
        return Err(BeaconError::Oversized(out.len()));
    }
    Ok(out)
}

/// Decodes and checks one datagram. Safe on any input: the size is checked first, and
/// postcard never allocates more than the bytes it was given.
pub fn decode_datagram(bytes: &[u8]) -> Result<DiscoveryMessage, BeaconError> {
    if bytes.len() > MAX_DATAGRAM_LEN {
        return Err(BeaconError::Oversized(bytes.len()));
    }
    let body = bytes
        .strip_prefix(&DATAGRAM_MAGIC[..])
        .ok_or(BeaconError::BadMagic)?;
    let (message, rest) =
        postcard::take_from_bytes::<DiscoveryMessage>(body).map_err(BeaconError::Decode)?;
    if !rest.is_empty() {
        return Err(BeaconError::TrailingBytes(rest.len()));
    }
    if let DiscoveryMessage::Beacon(beacon) = &message {
        beacon.validate()?;
    }
    Ok(message)
}

/// A receiver seen on the LAN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    /// The id it announced (a hint: anyone can claim any id; connecting through
    /// discovery pins it, so a peer that cannot prove it is refused).
    pub device_id: DeviceId,
    /// The nameplate of the code it waits for, if any.
    pub nameplate: Option<u16>,
    /// The name it announced: no control characters, but bidi and other invisible
    /// characters may be there; show it through [`crate::text::printable`] (the
    /// `Display` of a `PeerInfo` does).
    pub name: String,
    /// Where to connect: the beacon's source IP and the announced port.
    pub addr: SocketAddr,
    /// The session protocol version it announced.
    pub protocol_version: u32,
    /// When its last beacon arrived.
    pub last_seen: Instant,
}

impl PeerInfo {
    /// Whether it speaks this build's protocol version.
    pub fn is_compatible(&self) -> bool {
        self.protocol_version == PROTOCOL_VERSION
    }

    /// The first group of the id: enough to tell peers apart on one LAN, and accepted
    /// by [`find`].
    pub fn short_id(&self) -> String {
        self.device_id.short()
    }

    /// Whether `query` names this peer: its name (case-insensitive), its full id, or a
    /// prefix of at least five characters of its id (dashes ignored).
    pub fn matches(&self, query: &str) -> bool {
        let query = query.trim();
        if query.eq_ignore_ascii_case(&self.name) {
            return true;
        }
        let id: String = self.device_id.to_string().replace('-', "");
        let wanted: String = query
            .chars()
            .filter(|c| *c != '-')
            .map(|c| c.to_ascii_uppercase())
            .collect();
        wanted.len() >= 5 && wanted.len() <= 25 && id.starts_with(&wanted)
    }
}

impl fmt::Display for PeerInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = crate::text::printable(&self.name);
        write!(f, "{name} [{}] at {}", self.short_id(), self.addr)?;
        if !self.is_compatible() {
            write!(
                f,
                " (protocol v{}, this build speaks v{PROTOCOL_VERSION})",
                self.protocol_version
            )?;
        }
        Ok(())
    }
}

/// What a datagram did to the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observation {
    /// A peer not in the table before.
    NewPeer(DeviceId),
    /// A known peer's beacon: its last-seen time (and address) were refreshed.
    Refreshed(DeviceId),
    /// Someone asked announcers to speak up.
    Probe,
    /// Our own beacon (same device id): ignored.
    Own,
    /// The table is full of live peers: a new id was dropped.
    TableFull,
    /// Not a valid discovery datagram: dropped.
    Malformed(String),
}

/// The peers heard from recently, keyed by device id and listening port (one device may
/// run several listeners: two `receive`s, or a sender waiting with a code beside a
/// receiver). Sans-IO: datagrams and the time come in as arguments, so expiry is tested
/// without sleeping.
#[derive(Debug, Clone)]
pub struct PeerTable {
    own_id: Option<DeviceId>,
    ttl: Duration,
    peers: HashMap<(DeviceId, u16), PeerInfo>,
}

impl PeerTable {
    /// An empty table that ignores beacons carrying `own_id` and forgets peers after
    /// `ttl` of silence.
    pub fn new(own_id: Option<DeviceId>, ttl: Duration) -> Self {
        PeerTable {
            own_id,
            ttl,
            peers: HashMap::new(),
        }
    }

    /// Feeds one datagram received from `from` at `now`.
    pub fn handle_datagram(&mut self, from: SocketAddr, bytes: &[u8], now: Instant) -> Observation {
        let beacon = match decode_datagram(bytes) {
            Ok(DiscoveryMessage::Beacon(beacon)) => beacon,
            Ok(DiscoveryMessage::Probe) => return Observation::Probe,
            Err(e) => return Observation::Malformed(e.to_string()),
        };
        if Some(beacon.device_id) == self.own_id {
            return Observation::Own;
        }
        let addr = SocketAddr::new(from.ip(), beacon.listen_port);
        let key = (beacon.device_id, beacon.listen_port);
        if let Some(peer) = self.peers.get_mut(&key) {
            peer.name = beacon.name;
            peer.addr = addr;
            peer.protocol_version = beacon.protocol_version;
            peer.nameplate = beacon.nameplate;
            peer.last_seen = now;
            return Observation::Refreshed(beacon.device_id);
        }
        self.handle_timeout(now);
        if self.peers.len() >= MAX_PEERS {
            return Observation::TableFull;
        }
        let id = beacon.device_id;
        self.peers.insert(
            key,
            PeerInfo {
                device_id: id,
                nameplate: beacon.nameplate,
                name: beacon.name,
                addr,
                protocol_version: beacon.protocol_version,
                last_seen: now,
            },
        );
        Observation::NewPeer(id)
    }

    /// Forgets peers silent for longer than the TTL.
    pub fn handle_timeout(&mut self, now: Instant) {
        let ttl = self.ttl;
        self.peers
            .retain(|_, peer| now.saturating_duration_since(peer.last_seen) < ttl);
    }

    /// The live peers at `now`, sorted by name then id.
    pub fn peers(&self, now: Instant) -> Vec<PeerInfo> {
        let mut live: Vec<PeerInfo> = self
            .peers
            .values()
            .filter(|peer| now.saturating_duration_since(peer.last_seen) < self.ttl)
            .cloned()
            .collect();
        live.sort_by(|a, b| {
            (&a.name, a.device_id, a.addr.port()).cmp(&(&b.name, b.device_id, b.addr.port()))
        });
        live
    }
}

/// Where beacons and probes are sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BeaconTargets {
    /// Every up IPv4 interface's broadcast address, the loopback broadcast address and
    /// `255.255.255.255`, looked up again before every send (interfaces come and go).
    AllInterfaces,
    /// Exactly these addresses (tests; hosts where broadcasting everywhere is unwanted).
    Only(Vec<IpAddr>),
}

impl BeaconTargets {
    fn addresses(&self, port: u16) -> Vec<SocketAddr> {
        let mut ips: Vec<IpAddr> = match self {
            BeaconTargets::Only(ips) => ips.clone(),
            BeaconTargets::AllInterfaces => {
                let mut ips = Vec::new();
                match if_addrs::get_if_addrs() {
                    Ok(interfaces) => {
                        for interface in interfaces {
                            if let if_addrs::IfAddr::V4(v4) = &interface.addr {
                                if let Some(broadcast) = directed_broadcast(&interface, v4) {
                                    ips.push(IpAddr::V4(broadcast));
                                }
                            }
                        }
                    }
                    Err(e) => tracing::debug!("cannot list interfaces: {e}"),
                }
                ips.push(IpAddr::V4(LOOPBACK_BROADCAST));
                ips.push(IpAddr::V4(Ipv4Addr::BROADCAST));
                ips
            }
        };
        let mut seen = Vec::with_capacity(ips.len());
        ips.retain(|ip| {
            let fresh = !seen.contains(ip);
            seen.push(*ip);
            fresh
        });
        ips.into_iter()
            .map(|ip| SocketAddr::new(ip, port))
            .collect()
    }
}

/// The broadcast address of an IPv4 interface: the configured one, or — when the
/// address was added without one, as `ip addr add` does unless told `brd +` — the one
/// its netmask implies. None for loopback (handled apart), point-to-point links and /31
/// or /32 networks, which have no broadcast address.
fn directed_broadcast(
    interface: &if_addrs::Interface,
    v4: &if_addrs::Ifv4Addr,
) -> Option<Ipv4Addr> {
    if interface.is_loopback() || interface.is_p2p() || v4.prefixlen >= 31 {
        return None;
    }
    // Without a configured broadcast address, getifaddrs reports the interface's own
    // address (or 0.0.0.0) in its place.
    v4.broadcast
        .filter(|b| !b.is_unspecified() && *b != v4.ip)
        .or_else(|| Some(Ipv4Addr::from(u32::from(v4.ip) | !u32::from(v4.netmask))))
}

/// Ports, timings and targets of discovery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoveryConfig {
    /// UDP port beacons are sent to and listened on.
    pub port: u16,
    /// Time between two beacons.
    pub interval: Duration,
    /// A peer silent for this long is forgotten.
    pub peer_ttl: Duration,
    /// Where beacons and probes go.
    pub targets: BeaconTargets,
}

impl Default for DiscoveryConfig {
    fn default() -> Self {
        DiscoveryConfig {
            port: DEFAULT_DISCOVERY_PORT,
            interval: DEFAULT_ANNOUNCE_INTERVAL,
            peer_ttl: DEFAULT_PEER_TTL,
            targets: BeaconTargets::AllInterfaces,
        }
    }
}

impl DiscoveryConfig {
    /// This configuration as it applies to a receiver listening on `listening` (see
    /// [`Announcer::for_listener`]).
    pub fn for_listener(&self, listening: SocketAddr) -> DiscoveryConfig {
        let mut config = self.clone();
        if listening.ip().is_loopback() && config.targets == BeaconTargets::AllInterfaces {
            config.targets = BeaconTargets::Only(vec![IpAddr::V4(LOOPBACK_BROADCAST)]);
        }
        config
    }

    /// The defaults, with [`PORT_ENV`] and [`TARGETS_ENV`] applied when set.
    pub fn from_env() -> Result<Self, DiscoveryError> {
        let mut config = DiscoveryConfig::default();
        if let Ok(port) = std::env::var(PORT_ENV) {
            config.port = port
                .trim()
                .parse()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| {
                    DiscoveryError::Config(format!("{PORT_ENV}={port:?} is not a port number"))
                })?;
        }
        if let Ok(targets) = std::env::var(TARGETS_ENV) {
            let ips = targets
                .split(',')
                .filter(|s| !s.trim().is_empty())
                .map(|s| s.trim().parse::<IpAddr>())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| DiscoveryError::Config(format!("{TARGETS_ENV}={targets:?}: {e}")))?;
            if ips.iter().any(IpAddr::is_ipv6) {
                return Err(DiscoveryError::Config(format!(
                    "{TARGETS_ENV}: discovery broadcasts over IPv4 only"
                )));
            }
            config.targets = BeaconTargets::Only(ips);
        }
        Ok(config)
    }
}

/// Why discovery could not give an answer.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    /// The discovery port could not be bound.
    #[error(
        "cannot use UDP port {port} for discovery: {source} \
         (set {PORT_ENV} to use another port)"
    )]
    Bind {
        /// The port.
        port: u16,
        /// The OS error.
        source: io::Error,
    },
    /// A bad environment value.
    #[error("bad discovery setting: {0}")]
    Config(String),
    /// Called outside a tokio runtime.
    #[error("discovery needs a tokio runtime")]
    NoRuntime,
    /// Nobody (matching) answered in time.
    #[error("{}", not_found_message(query.as_deref(), *timeout, seen))]
    NotFound {
        /// The name or id asked for.
        query: Option<String>,
        /// How long we listened.
        timeout: Duration,
        /// Receivers that were visible but did not match.
        seen: Vec<PeerInfo>,
    },
    /// Nobody announced a code with this nameplate in time (`receive CODE`).
    #[error(
        "no sender waiting for code {nameplate}-… was found on the local network within \
         {timeout:.1?}: is the `p2p-transfer send` that printed the code still running, on \
         the same network (and does the firewall let UDP broadcast through)? Across \
         networks, add --peer HOST:PORT"
    )]
    NoSender {
        /// The code's number.
        nameplate: u16,
        /// How long we listened.
        timeout: Duration,
    },
    /// Several receivers match: the user has to choose.
    #[error("{}", ambiguous_message(query.as_deref(), candidates))]
    Ambiguous {
        /// The name asked for, if any.
        query: Option<String>,
        /// The receivers that match.
        candidates: Vec<PeerInfo>,
    },
    /// The only match speaks another protocol version.
    #[error(
        "{peer} speaks protocol v{}, this build speaks v{PROTOCOL_VERSION}: update the older side",
        peer.protocol_version
    )]
    Incompatible {
        /// The receiver found.
        peer: PeerInfo,
    },
}

fn not_found_message(query: Option<&str>, timeout: Duration, seen: &[PeerInfo]) -> String {
    let mut message = match query {
        Some(q) => format!("no receiver named {q:?} answered within {timeout:.1?}"),
        None => format!("no receiver answered on the local network within {timeout:.1?}"),
    };
    if seen.is_empty() {
        message.push_str(
            "; is `p2p-transfer receive` running on the same network, and does the \
             firewall let UDP broadcast through?",
        );
    } else {
        message.push_str("; visible receivers:");
        for peer in seen {
            message.push_str(&format!("\n  {peer}"));
        }
    }
    message
}

fn ambiguous_message(query: Option<&str>, candidates: &[PeerInfo]) -> String {
    let mut message = match query {
        Some(q) => format!(
            "{} receivers match {q:?}; name one by id:",
            candidates.len()
        ),
        None => format!(
            "{} receivers are on the network; name one (--discover NAME or id):",
            candidates.len()
        ),
    };
    for peer in candidates {
        message.push_str(&format!("\n  {peer}"));
    }
    message
}

/// Opens a UDP socket on the discovery port that other discovery sockets on this host
/// can share (`SO_REUSEADDR`: every one of them gets each broadcast) and that may send
/// broadcasts.
fn discovery_socket(port: u16) -> Result<UdpSocket, DiscoveryError> {
    use socket2::{Domain, Protocol, Socket, Type};
    let bind_err = |source| DiscoveryError::Bind { port, source };
    if tokio::runtime::Handle::try_current().is_err() {
        return Err(DiscoveryError::NoRuntime);
    }
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).map_err(bind_err)?;
    socket.set_reuse_address(true).map_err(bind_err)?;
    // The BSDs (macOS included) share a UDP port between sockets only with SO_REUSEPORT.
    #[cfg(all(unix, not(any(target_os = "linux", target_os = "android"))))]
    socket.set_reuse_port(true).map_err(bind_err)?;
    socket.set_broadcast(true).map_err(bind_err)?;
    socket.set_nonblocking(true).map_err(bind_err)?;
    let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port);
    socket.bind(&addr.into()).map_err(bind_err)?;
    UdpSocket::from_std(socket.into()).map_err(bind_err)
}

/// Sends one datagram to every target; failures (no route for the limited broadcast in
/// a network without a default route, an interface going down) only get logged.
async fn send_to_targets(socket: &UdpSocket, datagram: &[u8], targets: &BeaconTargets, port: u16) {
    for target in targets.addresses(port) {
        match socket.send_to(datagram, target).await {
            Ok(_) => tracing::trace!(%target, "discovery datagram sent"),
            Err(e) => tracing::debug!(%target, "discovery send failed: {e}"),
        }
    }
}

/// Whether a receive result is a probe. A failed receive (which on some platforms
/// reports an ICMP error from an earlier send) is logged and paced, never fatal.
async fn is_probe(received: io::Result<(usize, SocketAddr)>, buf: &[u8]) -> bool {
    match received {
        Ok((len, _)) => matches!(
            buf.get(..len).map(decode_datagram),
            Some(Ok(DiscoveryMessage::Probe))
        ),
        Err(e) => {
            tracing::debug!("discovery receive failed: {e}");
            tokio::time::sleep(Duration::from_millis(100)).await;
            false
        }
    }
}

/// A receiver's beacon sender. Runs on the tokio runtime until dropped.
#[derive(Debug)]
pub struct Announcer {
    task: tokio::task::JoinHandle<()>,
}

impl Announcer {
    /// Binds the discovery port and starts announcing `beacon` every
    /// `config.interval`, answering probes early.
    pub fn start(beacon: Beacon, config: &DiscoveryConfig) -> Result<Announcer, DiscoveryError> {
        let socket = discovery_socket(config.port)?;
        let datagram = encode_datagram(&DiscoveryMessage::Beacon(beacon.clone()))
            .map_err(|e| DiscoveryError::Config(e.to_string()))?;
        let config = config.clone();
        let task = tokio::spawn(async move {
            let period = config.interval.max(Duration::from_millis(10));
            let mut ticker = tokio::time::interval(period);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut last_sent: Option<Instant> = None;
            let mut buf = [0u8; MAX_DATAGRAM_LEN + 1];
            loop {
                let due = tokio::select! {
                    _ = ticker.tick() => true,
                    received = socket.recv_from(&mut buf) => {
                        let answered_recently =
                            last_sent.is_some_and(|t| t.elapsed() < PROBE_ANSWER_GAP);
                        is_probe(received, &buf).await && !answered_recently
                    }
                };
                if due {
                    send_to_targets(&socket, &datagram, &config.targets, config.port).await;
                    last_sent = Some(Instant::now());
                }
            }
        });
        tracing::debug!(port = config.port, name = %beacon.name, "announcing");
        Ok(Announcer { task })
    }

    /// Announces a receiver whose TCP listener is bound to `listening`. A listener on a
    /// loopback address is reachable from this host only, so unless `config` names its
    /// own targets it is announced on the loopback network only: nothing leaves the
    /// machine.
    pub fn for_listener(
        beacon: Beacon,
        listening: SocketAddr,
        config: &DiscoveryConfig,
    ) -> Result<Announcer, DiscoveryError> {
        Announcer::start(beacon, &config.for_listener(listening))
    }
}

impl Drop for Announcer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Listens for beacons in the background and keeps a [`PeerTable`]. Stops when dropped.
#[derive(Debug)]
pub struct Browser {
    table: Arc<Mutex<PeerTable>>,
    changes: watch::Receiver<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl Browser {
    /// Binds the discovery port, broadcasts a probe (twice, 250 ms apart, in case one is
    /// lost) and starts collecting beacons. Beacons carrying `own_id` are ignored.
    pub fn start(
        config: &DiscoveryConfig,
        own_id: Option<DeviceId>,
    ) -> Result<Browser, DiscoveryError> {
        let socket = discovery_socket(config.port)?;
        let probe = encode_datagram(&DiscoveryMessage::Probe)
            .map_err(|e| DiscoveryError::Config(e.to_string()))?;
        let table = Arc::new(Mutex::new(PeerTable::new(own_id, config.peer_ttl)));
        let (notify, changes) = watch::channel(0u64);
        let config = config.clone();
        let shared = Arc::clone(&table);
        let task = tokio::spawn(async move {
            let mut buf = [0u8; MAX_DATAGRAM_LEN + 1];
            let mut probes_left = 2u32;
            let mut next_probe = Instant::now();
            loop {
                let probe_due = probes_left > 0;
                tokio::select! {
                    _ = tokio::time::sleep_until(next_probe), if probe_due => {
                        send_to_targets(&socket, &probe, &config.targets, config.port).await;
                        probes_left -= 1;
                        next_probe = Instant::now() + Duration::from_millis(250);
                    }
                    received = socket.recv_from(&mut buf) => match received {
                        Ok((len, from)) => {
                            let observation = shared
                                .lock()
                                .unwrap_or_else(PoisonError::into_inner)
                                .handle_datagram(from, &buf[..len], Instant::now());
                            match observation {
                                Observation::NewPeer(_) | Observation::Refreshed(_) => {
                                    notify.send_modify(|n| *n += 1);
                                }
                                Observation::Malformed(why) => {
                                    tracing::debug!(%from, "dropped discovery datagram: {why}");
                                }
                                Observation::Probe | Observation::Own | Observation::TableFull => {}
                            }
                        }
                        Err(e) => {
                            tracing::debug!("discovery receive failed: {e}");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    },
                }
            }
        });
        Ok(Browser {
            table,
            changes,
            task,
        })
    }

    /// The live peers now.
    pub fn peers(&self) -> Vec<PeerInfo> {
        self.table
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .peers(Instant::now())
    }

    /// Waits until a beacon adds or refreshes a peer.
    pub async fn changed(&mut self) {
        if self.changes.changed().await.is_err() {
            // The listener task ended: nothing will change any more.
            std::future::pending::<()>().await;
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Lists the receivers heard within `timeout`, with the configuration from the
/// environment ([`DiscoveryConfig::from_env`]).
pub async fn browse(timeout: Duration) -> Result<Vec<PeerInfo>, DiscoveryError> {
    browse_with(&DiscoveryConfig::from_env()?, timeout).await
}

/// Lists the receivers heard within `timeout`.
pub async fn browse_with(
    config: &DiscoveryConfig,
    timeout: Duration,
) -> Result<Vec<PeerInfo>, DiscoveryError> {
    let browser = Browser::start(config, None)?;
    tokio::time::sleep(timeout).await;
    Ok(browser.peers())
}

/// Finds the one receiver matching `query` (a name, an id or an id prefix; `None`:
/// whoever is there), with the configuration from the environment.
pub async fn find(query: Option<&str>, timeout: Duration) -> Result<PeerInfo, DiscoveryError> {
    find_with(&DiscoveryConfig::from_env()?, query, timeout).await
}

/// Finds the one receiver matching `query`. Returns [`FIND_SETTLE`] after the first
/// match (at once for a full device id), so that a second match makes the choice
/// [`Ambiguous`](DiscoveryError::Ambiguous) instead of a coin toss; gives up with
/// [`NotFound`](DiscoveryError::NotFound) after `timeout`.
pub async fn find_with(
    config: &DiscoveryConfig,
    query: Option<&str>,
    timeout: Duration,
) -> Result<PeerInfo, DiscoveryError> {
    let exact_id = query.and_then(|q| q.trim().parse::<DeviceId>().ok());
    let wanted = |p: &PeerInfo| query.is_none_or(|q| p.matches(q));
    find_matching(config, query, wanted, exact_id, timeout).await
}

/// Finds the one peer waiting for a code with `nameplate` (`receive 7-guitar-orbit`
/// looks for 7), with the same rules as [`find_with`].
pub async fn find_nameplate(
    config: &DiscoveryConfig,
    nameplate: u16,
    timeout: Duration,
) -> Result<PeerInfo, DiscoveryError> {
    let query = format!("code {nameplate}-…");
    let wanted = |p: &PeerInfo| p.nameplate == Some(nameplate);
    match find_matching(config, Some(&query), wanted, None, timeout).await {
        Err(DiscoveryError::NotFound { .. }) => {
            Err(DiscoveryError::NoSender { nameplate, timeout })
        }
        other => other,
    }
}

async fn find_matching(
    config: &DiscoveryConfig,
    query: Option<&str>,
    wanted: impl Fn(&PeerInfo) -> bool,
    exact_id: Option<DeviceId>,
    timeout: Duration,
) -> Result<PeerInfo, DiscoveryError> {
    let mut browser = Browser::start(config, None)?;
    let deadline = Instant::now() + timeout;
    let matching = |peers: &[PeerInfo]| -> Vec<PeerInfo> {
        peers.iter().filter(|p| wanted(p)).cloned().collect()
    };
    let mut settle_at: Option<Instant> = None;
    loop {
        let found = matching(&browser.peers());
        if exact_id.is_some_and(|id| found.iter().any(|p| p.device_id == id)) {
            break;
        }
        if !found.is_empty() && settle_at.is_none() {
            settle_at = Some((Instant::now() + FIND_SETTLE).min(deadline));
        }
        let wake = settle_at.unwrap_or(deadline);
        if Instant::now() >= wake {
            break;
        }
        tokio::select! {
            _ = browser.changed() => {}
            _ = tokio::time::sleep_until(wake) => {}
        }
    }
    let seen = browser.peers();
    let mut found = matching(&seen);
    if let Some(id) = exact_id {
        found.retain(|p| p.device_id == id);
    }
    let query_owned = query.map(str::to_owned);
    let mut compatible: Vec<PeerInfo> = found
        .iter()
        .filter(|p| p.is_compatible())
        .cloned()
        .collect();
    if compatible.len() == 1 {
        return Ok(compatible.remove(0));
    }
    if !compatible.is_empty() {
        return Err(DiscoveryError::Ambiguous {
            query: query_owned,
            candidates: compatible,
        });
    }
    match found.len() {
        0 => Err(DiscoveryError::NotFound {
            query: query_owned,
            timeout,
            seen,
        }),
        1 => Err(DiscoveryError::Incompatible {
            peer: found.remove(0),
        }),
        _ => Err(DiscoveryError::Ambiguous {
            query: query_owned,
            candidates: found,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn beacon(name: &str, port: u16) -> Beacon {
        Beacon::new(DeviceId::random(), name, port)
    }

    fn datagram(beacon: &Beacon) -> Vec<u8> {
        encode_datagram(&DiscoveryMessage::Beacon(beacon.clone())).unwrap()
    }

    const FROM: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 200, 2, 3)), 14566);

    #[test]
    fn a_loopback_listener_is_announced_on_loopback_only_unless_targets_are_given() {
        let everywhere = DiscoveryConfig::default();
        let loopback: SocketAddr = "127.0.0.1:14567".parse().unwrap();
        assert_eq!(
            everywhere.for_listener(loopback).targets,
            BeaconTargets::Only(vec![IpAddr::V4(LOOPBACK_BROADCAST)])
        );
        let any: SocketAddr = "0.0.0.0:14567".parse().unwrap();
        assert_eq!(everywhere.for_listener(any), everywhere);
        let chosen = DiscoveryConfig {
            targets: BeaconTargets::Only(vec![FROM.ip()]),
            ..DiscoveryConfig::default()
        };
        assert_eq!(chosen.for_listener(loopback), chosen);
    }

    /// One installation (one device key) may run two listeners: both are listed. (The
    /// table was keyed by device id alone, and the NAT lab's two receivers on one host
    /// collapsed into one.)
    #[test]
    fn two_listeners_of_one_device_are_two_peers() {
        let alpha = beacon("alpha", 15001);
        let mut beta = beacon("beta", 15002);
        beta.device_id = alpha.device_id;
        let mut table = PeerTable::new(None, DEFAULT_PEER_TTL);
        let now = Instant::now();
        table.handle_datagram(FROM, &datagram(&alpha), now);
        table.handle_datagram(FROM, &datagram(&beta), now);
        let names: Vec<String> = table.peers(now).into_iter().map(|p| p.name).collect();
        assert_eq!(names, ["alpha", "beta"]);
        // The same listener again only refreshes.
        assert_eq!(
            table.handle_datagram(FROM, &datagram(&beta), now),
            Observation::Refreshed(beta.device_id)
        );
        assert_eq!(table.peers(now).len(), 2);
    }

    #[test]
    fn beacons_round_trip_and_the_address_is_the_source_ip() {
        let b = beacon("office", 14567);
        assert_eq!(
            decode_datagram(&datagram(&b)).unwrap(),
            DiscoveryMessage::Beacon(b.clone())
        );
        let mut table = PeerTable::new(None, DEFAULT_PEER_TTL);
        let now = Instant::now();
        assert_eq!(
            table.handle_datagram(FROM, &datagram(&b), now),
            Observation::NewPeer(b.device_id)
        );
        let peers = table.peers(now);
        assert_eq!(peers.len(), 1);
        assert_eq!(peers[0].addr, "10.200.2.3:14567".parse().unwrap());
        assert_eq!(peers[0].name, "office");
    }

    #[test]
    fn peers_expire_after_the_ttl_unless_refreshed() {
        let (a, b) = (beacon("a", 1), beacon("b", 2));
        let mut table = PeerTable::new(None, Duration::from_secs(10));
        let t0 = Instant::now();
        table.handle_datagram(FROM, &datagram(&a), t0);
        table.handle_datagram(FROM, &datagram(&b), t0);
        let t8 = t0 + Duration::from_secs(8);
        assert_eq!(
            table.handle_datagram(FROM, &datagram(&a), t8),
            Observation::Refreshed(a.device_id)
        );
        let t11 = t0 + Duration::from_secs(11);
        let names: Vec<String> = table.peers(t11).into_iter().map(|p| p.name).collect();
        assert_eq!(names, ["a"]);
        table.handle_timeout(t0 + Duration::from_secs(19));
        assert_eq!(table.peers(t0 + Duration::from_secs(19)).len(), 0);
    }

    #[test]
    fn own_beacons_probes_and_garbage_do_not_enter_the_table() {
        let own = beacon("me", 1);
        let mut table = PeerTable::new(Some(own.device_id), DEFAULT_PEER_TTL);
        let now = Instant::now();
        assert_eq!(
            table.handle_datagram(FROM, &datagram(&own), now),
            Observation::Own
        );
        let probe = encode_datagram(&DiscoveryMessage::Probe).unwrap();
        assert_eq!(table.handle_datagram(FROM, &probe, now), Observation::Probe);
        for junk in [
            &b""[..],
            b"P2PD",
            b"P2PD\x01\xff\xff\xff",
            b"hello world",
            &[0u8; 600],
        ] {
            assert!(matches!(
                table.handle_datagram(FROM, junk, now),
                Observation::Malformed(_)
            ));
        }
        let mut trailing = datagram(&beacon("x", 1));
        trailing.push(0);
        assert!(matches!(
            decode_datagram(&trailing),
            Err(BeaconError::TrailingBytes(1))
        ));
        assert!(table.peers(now).is_empty());
    }

    #[test]
    fn hostile_names_and_ports_are_refused() {
        let mut evil = beacon("x", 1);
        evil.name = "\u{1b}[2Jgotcha".into();
        assert!(matches!(
            decode_datagram(&datagram(&evil)),
            Err(BeaconError::BadName(_))
        ));
        evil.name = "y".repeat(MAX_NAME_LEN + 1);
        assert!(matches!(
            decode_datagram(&datagram(&evil)),
            Err(BeaconError::BadName(_))
        ));
        evil.name = "ok".into();
        evil.listen_port = 0;
        assert!(matches!(
            decode_datagram(&datagram(&evil)),
            Err(BeaconError::ZeroPort)
        ));
        // The constructor cleans what it is given instead.
        let cleaned = Beacon::new(DeviceId([0; 15]), &format!("a\u{7}{}", "é".repeat(40)), 9);
        assert!(cleaned.name.starts_with("a?é") && cleaned.name.len() <= MAX_NAME_LEN);
    }

    #[test]
    fn a_bidi_name_is_accepted_but_shown_escaped() {
        let mut table = PeerTable::new(None, DEFAULT_PEER_TTL);
        let now = Instant::now();
        let spoof = beacon("living\u{202e}moor", 1);
        table.handle_datagram(FROM, &datagram(&spoof), now);
        let peer = &table.peers(now)[0];
        assert_eq!(
            peer.name, "living\u{202e}moor",
            "kept as announced, for matching"
        );
        let shown = peer.to_string();
        assert!(shown.starts_with(r"living\u{202e}moor ["), "{shown}");
    }

    #[test]
    fn a_flood_of_ids_cannot_grow_the_table_without_bound() {
        let mut table = PeerTable::new(None, DEFAULT_PEER_TTL);
        let now = Instant::now();
        for i in 0..MAX_PEERS + 10 {
            table.handle_datagram(FROM, &datagram(&beacon(&format!("p{i}"), 1)), now);
        }
        assert_eq!(table.peers(now).len(), MAX_PEERS);
    }

    #[test]
    fn queries_match_names_and_id_prefixes() {
        let b = beacon("Office-PC", 1);
        let mut table = PeerTable::new(None, DEFAULT_PEER_TTL);
        let now = Instant::now();
        table.handle_datagram(FROM, &datagram(&b), now);
        let peer = &table.peers(now)[0];
        assert!(peer.matches("office-pc"));
        assert!(peer.matches(&b.device_id.to_string()));
        assert!(peer.matches(&peer.short_id()));
        assert!(!peer.matches(&peer.short_id()[..4]));
        assert!(!peer.matches("office"));
    }

    #[test]
    fn the_broadcast_address_comes_from_the_interface_or_its_netmask() {
        let interface = |ip: [u8; 4], prefixlen: u8, broadcast: Option<[u8; 4]>| {
            let netmask =
                Ipv4Addr::from(u32::MAX.checked_shl(32 - u32::from(prefixlen)).unwrap_or(0));
            let v4 = if_addrs::Ifv4Addr {
                ip: ip.into(),
                netmask,
                prefixlen,
                broadcast: broadcast.map(Into::into),
            };
            let interface = if_addrs::Interface {
                name: "eth0".into(),
                addr: if_addrs::IfAddr::V4(v4.clone()),
                index: Some(2),
                oper_status: if_addrs::IfOperStatus::Up,
                is_p2p: false,
            };
            directed_broadcast(&interface, &v4)
        };
        assert_eq!(
            interface([192, 168, 1, 7], 24, Some([192, 168, 1, 255])),
            Some(Ipv4Addr::new(192, 168, 1, 255))
        );
        assert_eq!(
            interface([10, 200, 100, 2], 24, None),
            Some(Ipv4Addr::new(10, 200, 100, 255))
        );
        assert_eq!(
            interface([10, 200, 100, 2], 24, Some([10, 200, 100, 2])),
            Some(Ipv4Addr::new(10, 200, 100, 255))
        );
        assert_eq!(
            interface([10, 1, 2, 3], 20, Some([0, 0, 0, 0])),
            Some(Ipv4Addr::new(10, 1, 15, 255))
        );
        assert_eq!(interface([10, 1, 2, 3], 32, None), None);
        assert_eq!(interface([127, 0, 0, 1], 8, None), None);
    }

    #[test]
    fn env_overrides_are_parsed() {
        // Only the parser: the variables are not set in this process.
        assert_eq!(
            BeaconTargets::Only(vec!["127.255.255.255".parse().unwrap()]).addresses(9),
            vec!["127.255.255.255:9".parse::<SocketAddr>().unwrap()]
        );
        let all = BeaconTargets::AllInterfaces.addresses(9);
        assert!(all.contains(&"255.255.255.255:9".parse().unwrap()));
        assert!(all.contains(&"127.255.255.255:9".parse().unwrap()));
    }
}
