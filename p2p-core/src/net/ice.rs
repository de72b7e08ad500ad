//! Candidates and connectivity checks (RFC 8445 vocabulary), on the [`MuxSocket`].
//!
//! A side **gathers** its candidates — host addresses of every interface, the
//! server-reflexive address a STUN server sees for the very socket QUIC will use, and
//! a relayed address from a TURN allocation — and the two sides exchange them through
//! the rendezvous, encrypted (`super::traversal`). Then both **check** every pair:
//! STUN Binding requests from the mux socket to each of the peer's candidates, each
//! carrying MESSAGE-INTEGRITY-SHA256 under a key only the two sides hold; a side answers
//! only requests that carry a valid one (nobody else can make it answer), and a pair is
//! *valid* when a request got its authenticated answer: packets crossed both ways.
//!
//! **The conntrack collision.** A Linux NAT router that receives a probe for a port
//! before its own host has sent anything to that peer records the probe's flow
//! (UNREPLIED); when the host then sends to the peer, that flow's reply tuple is taken,
//! so the router maps the host's packets to *another* port, which the peer's NAT
//! drops: the naive punch fails whenever one side starts late. Checks therefore start
//! with **priming**: each side first sends its requests with a small IP TTL
//! ([`PRIME_TTL`]): they open its own NAT's mapping towards the peer and expire on the
//! way, before the far NAT. A side sends full checks only after both sides said, through
//! the rendezvous, that they primed — so the first packet to reach either NAT finds the
//! mapping its host opened, however late one side started.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use tokio::sync::{mpsc, oneshot};

use super::mux::{canonical, MuxSocket, StunInbox};
use crate::nat::stun::{self, attr, Class, Message, MessageBuilder, TransactionId};

/// IP TTL of the priming probes: past this side's own router (and one more NAT in
/// front of it), short of the far one in any real path (and of the lab's).
pub const PRIME_TTL: u32 = 2;
/// Time between two rounds of checks.
pub const CHECK_INTERVAL: Duration = Duration::from_millis(50);
/// Check events waiting to be handled (more are dropped).
const EVENT_QUEUE: usize = 1024;
/// Candidates of the peer that are checked (more are ignored).
pub const MAX_REMOTE_CANDIDATES: usize = 32;

/// What a candidate is (RFC 8445 §5.1.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CandidateKind {
    /// 0 — an address of one of the host's interfaces.
    Host,
    /// 1 — the address a STUN server saw: the host's NAT's mapping.
    ServerReflexive,
    /// 2 — an address allocated on a TURN server.
    Relayed,
    /// 3 — a port the host's router forwards to it (PCP, NAT-PMP or UPnP IGD:
    /// [`super::portmap`]); reachable from anywhere.
    PortMapped,
}

/// One address the peer may reach this side at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Candidate {
    pub kind: CandidateKind,
    pub addr: SocketAddr,
}

/// How the path the connection takes is made, for people and history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PathKind {
    /// Straight between the two hosts' own addresses (one network).
    Lan,
    /// Straight, through NATs (a punched hole or a public address).
    Direct,
    /// Through the TURN relay.
    Relay,
}

impl PathKind {
    /// The word shown for it.
    pub fn label(self) -> &'static str {
        match self {
            PathKind::Lan => "lan",
            PathKind::Direct => "direct",
            PathKind::Relay => "relay",
        }
    }
}

impl std::fmt::Display for PathKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}

/// The path a connection runs on now: its kind and the address packets go to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Path {
    pub kind: PathKind,
    pub addr: SocketAddr,
}

/// Host candidates: every non-loopback interface address, with `port`.
pub fn host_candidates(port: u16, ipv6: bool) -> Vec<Candidate> {
    let mut out = Vec::new();
    if let Ok(interfaces) = if_addrs::get_if_addrs() {
        for interface in interfaces {
            let ip = interface.ip();
            let usable = match ip {
                IpAddr::V4(v4) => !v4.is_loopback() && !v4.is_link_local(),
                // Link-local IPv6 needs a scope id the peer cannot use.
                IpAddr::V6(v6) => {
                    ipv6 && !v6.is_loopback() && (v6.segments()[0] & 0xffc0) != 0xfe80
                }
            };
            if usable {
                out.push(Candidate {
                    kind: CandidateKind::Host,
                    addr: SocketAddr::new(ip, port),
                });
            }
        }
    }
    out
}

type HmacSha256 = Hmac<Sha256>;

/// Length of a MESSAGE-INTEGRITY-SHA256 attribute with its header.
const MI_LEN: usize = 4 + 32;

/// Appends MESSAGE-INTEGRITY-SHA256 (RFC 8489 §14.6) under `key` to a finished message
/// without FINGERPRINT.
fn sign(mut message: Vec<u8>, key: &[u8; 32]) -> Vec<u8> {
    let len = message.len() - stun::HEADER_LEN + MI_LEN;
    message[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    let mut mac = <HmacSha256 as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(&message);
    message.extend_from_slice(&attr::MESSAGE_INTEGRITY_SHA256.to_be_bytes());
    message.extend_from_slice(&32u16.to_be_bytes());
    message.extend_from_slice(&mac.finalize().into_bytes());
    message
}

/// Whether `bytes` ends with a MESSAGE-INTEGRITY-SHA256 valid under `key` (this
/// protocol puts it last).
fn verify(bytes: &[u8], key: &[u8; 32]) -> bool {
    let Some(body_len) = bytes.len().checked_sub(MI_LEN) else {
        return false;
    };
    if body_len < stun::HEADER_LEN
        || bytes[body_len..body_len + 2] != attr::MESSAGE_INTEGRITY_SHA256.to_be_bytes()
        || bytes[body_len + 2..body_len + 4] != 32u16.to_be_bytes()
    {
        return false;
    }
    let mut mac = <HmacSha256 as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(&bytes[..body_len]);
    mac.verify_slice(&bytes[body_len + 4..]).is_ok()
}

/// A connectivity check request (a Binding request) under `key`.
fn check_request(id: TransactionId, key: &[u8; 32]) -> Vec<u8> {
    sign(
        MessageBuilder::new(Class::Request, stun::METHOD_BINDING, id).finish(),
        key,
    )
}

/// Which local socket a check leaves from (and its answer arrives on).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Via {
    /// The mux socket QUIC runs on.
    Primary,
    /// Spray socket number `n` (a side behind a symmetric NAT: see [`Stun::spray`]).
    Spray(usize),
}

/// What the STUN service reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckEvent {
    /// The peer's authenticated check arrived on this socket from this address
    /// (answered).
    Request(Via, SocketAddr),
    /// Our check from this socket to this address got its authenticated answer: a
    /// valid pair.
    Valid(Via, SocketAddr),
}

/// Spray sockets a side behind a symmetric NAT opens: each gets its own mapping, so
/// that a spread of probes from the peer finds one (the birthday paradox: 256 sockets
/// and 2,048 probes over 64,512 ports miss with probability e^-8).
pub const SPRAY_SOCKETS: usize = 256;
/// Probes the side facing a symmetric NAT sends to random ports of its address.
pub const SPRAY_PROBES: usize = 2048;

struct Shared {
    mux: Arc<MuxSocket>,
    /// Transactions waiting for an answer: plain STUN (to a server) or a check.
    waiting: Mutex<HashMap<[u8; 12], Waiter>>,
    key: Mutex<Option<[u8; 32]>>,
    events: mpsc::Sender<CheckEvent>,
    sprays: Mutex<Vec<Arc<tokio::net::UdpSocket>>>,
    /// Datagrams for QUIC that arrive on a spray socket.
    spray_quic: Mutex<Option<mpsc::Sender<(SocketAddr, bytes::Bytes)>>>,
    spray_stun: mpsc::Sender<(usize, SocketAddr, bytes::Bytes)>,
}

enum Waiter {
    Binding(oneshot::Sender<SocketAddr>),
    Check(Via, SocketAddr),
}

/// The STUN side of the mux socket: server-reflexive lookups and connectivity checks.
#[derive(Clone)]
pub struct Stun(Arc<Shared>);

impl Stun {
    /// Starts answering and dispatching the STUN datagrams of `inbox`; check events
    /// arrive on the returned receiver.
    pub fn start(mux: Arc<MuxSocket>, mut inbox: StunInbox) -> (Stun, mpsc::Receiver<CheckEvent>) {
        // Bounded: a peer that floods checks loses events, not our memory.
        let (events, rx) = mpsc::channel(EVENT_QUEUE);
        let (spray_stun, mut sprayed) = mpsc::channel(1024);
        let shared = Arc::new(Shared {
            mux,
            waiting: Mutex::new(HashMap::new()),
            key: Mutex::new(None),
            events,
            sprays: Mutex::new(Vec::new()),
            spray_quic: Mutex::new(None),
            spray_stun,
        });
        let weak = Arc::downgrade(&shared);
        tokio::spawn(async move {
            loop {
                let (via, from, bytes) = tokio::select! {
                    got = inbox.recv() => match got {
                        Some((from, bytes)) => (Via::Primary, from, bytes),
                        None => break,
                    },
                    Some((n, from, bytes)) = sprayed.recv() => (Via::Spray(n), from, bytes),
                };
                let Some(shared) = weak.upgrade() else { break };
                shared.handle(via, from, &bytes);
            }
        });
        (Stun(shared), rx)
    }

    /// The key checks are signed and verified with (from the rendezvous' PAKE).
    pub fn set_key(&self, key: [u8; 32]) {
        *self.0.key.lock().unwrap_or_else(PoisonError::into_inner) = Some(key);
    }

    /// The server-reflexive address `server` sees for the mux socket (a few tries
    /// within `limit`), or `None`.
    pub async fn reflexive(&self, server: SocketAddr, limit: Duration) -> Option<SocketAddr> {
        let id = TransactionId::random();
        let (tx, mut rx) = oneshot::channel();
        self.0.waiting().insert(id.0, Waiter::Binding(tx));
        let request =
            MessageBuilder::new(Class::Request, stun::METHOD_BINDING, id).finish_with_fingerprint();
        let deadline = tokio::time::Instant::now() + limit;
        let mut wait = Duration::from_millis(100);
        let answer = loop {
            let _ = self.0.mux.send_to(server, &request);
            let next = (tokio::time::Instant::now() + wait).min(deadline);
            match tokio::time::timeout_at(next, &mut rx).await {
                Ok(Ok(addr)) => break Some(addr),
                Ok(Err(_)) => break None,
                Err(_) if next >= deadline => break None,
                Err(_) => wait = (wait * 2).min(Duration::from_millis(800)),
            }
        };
        self.0.waiting().remove(&id.0);
        answer
    }

    /// Opens `count` spray sockets (see [`SPRAY_SOCKETS`]); returns how many opened.
    /// Their STUN goes to this service, anything else to the mux as the peer's.
    pub fn spray(&self, count: usize) -> usize {
        let (quic_tx, quic_rx) = mpsc::channel(4096);
        let mut opened = 0;
        for _ in 0..count {
            let Ok(socket) = std::net::UdpSocket::bind((std::net::Ipv4Addr::UNSPECIFIED, 0))
                .and_then(|s| s.set_nonblocking(true).map(|()| s))
                .and_then(tokio::net::UdpSocket::from_std)
            else {
                break;
            };
            let socket = Arc::new(socket);
            let n = {
                let mut sprays = self.0.sprays.lock().unwrap_or_else(PoisonError::into_inner);
                sprays.push(socket.clone());
                sprays.len() - 1
            };
            let (stun, quic) = (self.0.spray_stun.clone(), quic_tx.clone());
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                while let Ok((len, from)) = socket.recv_from(&mut buf).await {
                    let data = bytes::Bytes::copy_from_slice(&buf[..len]);
                    let from = canonical(from);
                    if super::mux::is_stun(&data) {
                        // Checks end after a while; a late check must not end this
                        // socket's QUIC (it used to: the reader stopped for good, and a
                        // punched path through a spray socket went deaf one way).
                        let _ = stun.try_send((n, from, data));
                    } else if let Err(mpsc::error::TrySendError::Closed(_)) =
                        quic.try_send((from, data))
                    {
                        break;
                    }
                }
            });
            opened += 1;
        }
        *self
            .0
            .spray_quic
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(quic_tx);
        self.0.mux.attach_side(quic_rx);
        opened
    }

    /// Spray socket `n`.
    pub fn spray_socket(&self, n: usize) -> Option<Arc<tokio::net::UdpSocket>> {
        self.0
            .sprays
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(n)
            .cloned()
    }

    /// Sends one check to `to` (with `ttl` when priming).
    pub fn check(&self, to: SocketAddr, ttl: Option<u32>) {
        self.check_via(Via::Primary, to, ttl);
    }

    /// Sends one check from `via` to `to` (with `ttl` when priming).
    pub fn check_via(&self, via: Via, to: SocketAddr, ttl: Option<u32>) {
        let Some(key) = *self.0.key.lock().unwrap_or_else(PoisonError::into_inner) else {
            return;
        };
        let id = TransactionId::random();
        let request = check_request(id, &key);
        {
            let mut waiting = self.0.waiting();
            // Old checks are forgotten once many are out (their answers are late).
            if waiting.len() > 4096 {
                waiting.retain(|_, w| matches!(w, Waiter::Binding(_)));
            }
            waiting.insert(id.0, Waiter::Check(via, canonical(to)));
        }
        self.0.send(via, to, &request, ttl);
    }
}

impl Shared {
    fn waiting(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 12], Waiter>> {
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sends from `via` (best effort, as UDP).
    fn send(&self, via: Via, to: SocketAddr, bytes: &[u8], ttl: Option<u32>) {
        match via {
            Via::Primary => {
                let _ = match ttl {
                    Some(ttl) => self.mux.send_stun_with_ttl(to, bytes, ttl),
                    None => self.mux.send_to(to, bytes),
                };
            }
            Via::Spray(n) => {
                let socket = self
                    .sprays
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .get(n)
                    .cloned();
                if let Some(socket) = socket {
                    let sock = socket2::SockRef::from(&*socket);
                    if let Some(ttl) = ttl {
                        let _ = sock.set_ttl_v4(ttl);
                    }
                    let _ = socket.try_send_to(bytes, to);
                    if ttl.is_some() {
                        let _ = sock.set_ttl_v4(64);
                    }
                }
            }
        }
    }

    fn handle(&self, via: Via, from: SocketAddr, bytes: &[u8]) {
        let Ok(message) = Message::decode(bytes) else {
            return;
        };
        if message.method != stun::METHOD_BINDING {
            return;
        }
        let key = *self.key.lock().unwrap_or_else(PoisonError::into_inner);
        match message.class {
            Class::Request => {
                // Only the peer holds the key: nobody else gets an answer.
                let Some(key) = key.filter(|k| verify(bytes, k)) else {
                    return;
                };
                let answer = sign(
                    MessageBuilder::new(
                        Class::SuccessResponse,
                        stun::METHOD_BINDING,
                        message.transaction_id,
                    )
                    .xor_mapped_address(from)
                    .finish(),
                    &key,
                );
                self.send(via, from, &answer, None);
                // It proved the key from there: its packets from there are the peer's.
                if via == Via::Primary {
                    self.mux.accept_from(from);
                }
                let _ = self.events.try_send(CheckEvent::Request(via, from));
            }
            Class::SuccessResponse => {
                let id = message.transaction_id.0;
                let mut waiting = self.waiting();
                match waiting.get(&id) {
                    Some(Waiter::Binding(_)) => {
                        if let (Some(Waiter::Binding(tx)), Ok(Some(addr))) = (
                            waiting.remove(&id),
                            message.address(attr::XOR_MAPPED_ADDRESS),
                        ) {
                            let _ = tx.send(canonical(addr));
                        }
                    }
                    // Only an answer that proves the key, from where the check went, on
                    // the socket it left from: a forgery neither counts nor uses up the
                    // transaction.
                    Some(&Waiter::Check(sent_via, to))
                        if key.is_some_and(|k| verify(bytes, &k))
                            && to == from
                            && sent_via == via =>
                    {
                        waiting.remove(&id);
                        drop(waiting);
                        let _ = self.events.try_send(CheckEvent::Valid(via, from));
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }
}

/// The peer's candidates this side checks: at most [`MAX_REMOTE_CANDIDATES`], of an
/// address family the socket can reach, not relayed (the relay is the fallback, not a
/// check target), each once.
pub fn check_targets(remote: &[Candidate], ipv6: bool) -> Vec<SocketAddr> {
    let mut seen = HashSet::new();
    remote
        .iter()
        .filter(|c| c.kind != CandidateKind::Relayed)
        .map(|c| canonical(c.addr))
        .filter(|a| (ipv6 || a.is_ipv4()) && a.port() != 0 && !a.ip().is_unspecified())
        .filter(|a| seen.insert(*a))
        .take(MAX_REMOTE_CANDIDATES)
        .collect()
}

/// The kind of path a valid pair to `addr` is: `lan` when `addr` is one of the
/// peer's host candidates, else `direct`.
pub fn path_kind(addr: SocketAddr, remote: &[Candidate]) -> PathKind {
    if remote
        .iter()
        .any(|c| c.kind == CandidateKind::Host && canonical(c.addr) == addr)
    {
        PathKind::Lan
    } else {
        PathKind::Direct
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_check_verifies_under_its_key_only() {
        let key = [7u8; 32];
        let request = check_request(TransactionId::random(), &key);
        assert!(verify(&request, &key));
        assert!(!verify(&request, &[8u8; 32]));
        let mut flipped = request.clone();
        flipped[8] ^= 1;
        assert!(!verify(&flipped, &key));
        // Still a well-formed STUN message with the attribute last.
        let decoded = Message::decode(&request).expect("decodes");
        assert!(decoded.attribute(attr::MESSAGE_INTEGRITY_SHA256).is_some());
        assert!(!verify(&request[..10], &key));
    }

    #[test]
    fn targets_skip_relayed_duplicates_and_unusable_addresses() {
        let c = |kind, a: &str| Candidate {
            kind,
            addr: a.parse().expect("address"),
        };
        let remote = [
            c(CandidateKind::Host, "10.0.0.2:5000"),
            c(CandidateKind::Host, "10.0.0.2:5000"),
            c(CandidateKind::Relayed, "198.51.100.1:49152"),
            c(CandidateKind::ServerReflexive, "203.0.113.9:5000"),
            c(CandidateKind::Host, "[2001:db8::1]:5000"),
            c(CandidateKind::Host, "0.0.0.0:5000"),
        ];
        let targets = check_targets(&remote, false);
        assert_eq!(
            targets,
            vec![
                "10.0.0.2:5000".parse().expect("address"),
                "203.0.113.9:5000".parse().expect("address")
            ]
        );
        assert_eq!(check_targets(&remote, true).len(), 3);
        assert_eq!(path_kind(targets[0], &remote), PathKind::Lan);
        assert_eq!(path_kind(targets[1], &remote), PathKind::Direct);
    }
}
