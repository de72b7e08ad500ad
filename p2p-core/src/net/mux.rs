//! One UDP socket for QUIC, STUN and connectivity checks, with the peer behind a fixed
//! address that this module routes: directly, or through a TURN relay.
//!
//! QUIC (quinn) sees a [`MuxSocket`] as its UDP socket. Three things make it more than
//! one:
//!
//! - **Demultiplexing** (RFC 7983 §7): a datagram whose first byte is 0–3 is STUN (the
//!   rendezvous' answers, the peer's connectivity checks); it goes to the
//!   [`StunInbox`], never to QUIC. QUIC long and short headers start at 64 or above.
//! - **A virtual peer address** ([`VIRTUAL_PEER`]): QUIC talks to one address that is
//!   never on any network. Sending to it takes the current [`Route`] — straight to an
//!   address the connectivity checks proved, or through this side's TURN allocation;
//!   datagrams from any address the checks proved, and everything the TURN allocation
//!   delivers, arrive from [`VIRTUAL_PEER`]. A change of route is therefore invisible
//!   to QUIC: no migration, no new handshake, nothing sent again — the congestion
//!   controller just sees a new round-trip time. QUIC's own encryption and integrity
//!   still cover every packet; the routing only decides where packets go.
//! - **Low-TTL sends** ([`MuxSocket::send_stun_with_ttl`]) for priming the local NAT's
//!   mapping without reaching the far NAT (see [`super::ice`]).

use std::collections::HashSet;
use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use bytes::Bytes;
use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, Runtime, UdpPoller};
use tokio::sync::mpsc;

use crate::nat::turn::TurnSender;

/// The address QUIC uses for the peer: 240.0.0.1 is reserved (RFC 1112 class E) and
/// never routed; nothing is ever sent to it.
pub const VIRTUAL_PEER: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(240, 0, 0, 1)), 1);

/// STUN datagrams received (at most this many wait; more are dropped, as UDP would).
const STUN_QUEUE: usize = 1024;

/// Where datagrams for [`VIRTUAL_PEER`] go.
#[derive(Debug, Clone)]
pub enum Route {
    /// Nowhere yet: they are dropped (QUIC retransmits once there is a route).
    None,
    /// From this socket to this address (a checked direct path, or the peer's relayed
    /// address).
    Direct(SocketAddr),
    /// From one of the extra sockets a side behind a symmetric NAT opened
    /// ([`super::ice`]'s port spray), to this address.
    Spray(Arc<tokio::net::UdpSocket>, SocketAddr),
    /// Through this side's TURN allocation, to this address.
    Turn(SocketAddr),
}

impl Route {
    /// The address datagrams go to, if any.
    pub fn addr(&self) -> Option<SocketAddr> {
        match self {
            Route::None => None,
            Route::Direct(a) | Route::Spray(_, a) | Route::Turn(a) => Some(*a),
        }
    }
}

/// A STUN datagram taken out of the QUIC stream: who sent it, and the bytes.
pub type StunDatagram = (SocketAddr, Bytes);

/// Where STUN datagrams arrive.
pub type StunInbox = mpsc::Receiver<StunDatagram>;

struct State {
    route: Route,
    /// Addresses whose datagrams are the peer's: shown to QUIC as [`VIRTUAL_PEER`].
    peer_addrs: HashSet<SocketAddr>,
    turn_tx: Option<TurnSender>,
    /// Datagrams that arrived elsewhere — the TURN allocation, the spray sockets — and
    /// are the peer's (QUIC only: STUN went to the inbox).
    side: Vec<mpsc::Receiver<(SocketAddr, Bytes)>>,
    /// The task polling for datagrams (quinn's endpoint driver): woken when a side
    /// channel is added, which it has not polled yet.
    reader: Option<std::task::Waker>,
}

/// The UDP socket QUIC, STUN and the connectivity checks share (see the module
/// documentation).
pub struct MuxSocket {
    primary: Arc<dyn AsyncUdpSocket>,
    /// The same socket, for socket options (TTL).
    raw: std::net::UdpSocket,
    ipv6: bool,
    state: Mutex<State>,
    stun_tx: mpsc::Sender<StunDatagram>,
}

impl fmt::Debug for MuxSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MuxSocket")
            .field("local", &self.primary.local_addr().ok())
            .field("route", &self.state().route)
            .finish_non_exhaustive()
    }
}

impl MuxSocket {
    /// Wraps `socket` (already bound); STUN datagrams arrive in the returned inbox.
    pub fn new(socket: std::net::UdpSocket) -> io::Result<(Arc<Self>, StunInbox)> {
        socket.set_nonblocking(true)?;
        let raw = socket.try_clone()?;
        let ipv6 = socket.local_addr()?.is_ipv6();
        let primary = quinn::TokioRuntime.wrap_udp_socket(socket)?;
        let (stun_tx, stun_rx) = mpsc::channel(STUN_QUEUE);
        let mux = MuxSocket {
            primary,
            raw,
            ipv6,
            state: Mutex::new(State {
                route: Route::None,
                peer_addrs: HashSet::new(),
                turn_tx: None,
                side: Vec::new(),
                reader: None,
            }),
            stun_tx,
        };
        Ok((Arc::new(mux), stun_rx))
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The route datagrams for the peer take from now on.
    pub fn set_route(&self, route: Route) {
        let mut state = self.state();
        if let Route::Direct(addr) | Route::Spray(_, addr) = &route {
            state.peer_addrs.insert(canonical(*addr));
        }
        state.route = route;
    }

    /// The current route.
    pub fn route(&self) -> Route {
        self.state().route.clone()
    }

    /// Datagrams from `addr` are the peer's from now on (a checked path).
    pub fn accept_from(&self, addr: SocketAddr) {
        self.state().peer_addrs.insert(canonical(addr));
    }

    /// Hands the mux this side's TURN allocation: what it delivers is the peer's, and
    /// [`Route::Turn`] sends through it.
    pub fn attach_turn(&self, tx: TurnSender, rx: mpsc::Receiver<(SocketAddr, Bytes)>) {
        let mut state = self.state();
        state.turn_tx = Some(tx);
        state.side.push(rx);
        if let Some(reader) = state.reader.take() {
            reader.wake();
        }
    }

    /// Datagrams for QUIC that arrive on other sockets (the spray sockets).
    pub fn attach_side(&self, rx: mpsc::Receiver<(SocketAddr, Bytes)>) {
        let mut state = self.state();
        state.side.push(rx);
        if let Some(reader) = state.reader.take() {
            reader.wake();
        }
    }

    /// Hands a STUN datagram that arrived on another socket to the inbox.
    pub fn stun_sender(&self) -> mpsc::Sender<StunDatagram> {
        self.stun_tx.clone()
    }

    /// The address this socket is bound to.
    pub fn local_port(&self) -> io::Result<u16> {
        Ok(self.primary.local_addr()?.port())
    }

    /// Sends one datagram (STUN) from this socket; best effort, as UDP.
    pub fn send_to(&self, to: SocketAddr, bytes: &[u8]) -> io::Result<()> {
        let transmit = Transmit {
            destination: self.outward(to),
            ecn: None,
            contents: bytes,
            segment_size: None,
            src_ip: None,
        };
        self.primary.try_send(&transmit)
    }

    /// Sends one datagram with the IP time-to-live `ttl`, then restores the default:
    /// it opens this side's NAT mapping towards `to` and expires on the way, before the
    /// far NAT (whose conntrack it would otherwise disturb).
    pub fn send_stun_with_ttl(&self, to: SocketAddr, bytes: &[u8], ttl: u32) -> io::Result<()> {
        let socket = socket2::SockRef::from(&self.raw);
        let v6 = self.ipv6
            && !matches!(self.outward(to), SocketAddr::V6(a) if a.ip().to_ipv4_mapped().is_some());
        let restore = if v6 {
            socket.unicast_hops_v6()?
        } else {
            socket.ttl_v4()?
        };
        let set = |t| {
            if v6 {
                socket.set_unicast_hops_v6(t)
            } else {
                socket.set_ttl_v4(t)
            }
        };
        set(ttl)?;
        // The primary socket may be busy (would block): send on the raw one, which is
        // the same socket.
        let sent = self.raw.send_to(bytes, self.outward(to));
        set(restore)?;
        sent.map(|_| ())
    }

    /// `to` as this socket's family can address it (IPv4 as mapped IPv6 on a
    /// dual-stack socket).
    fn outward(&self, to: SocketAddr) -> SocketAddr {
        match (self.ipv6, to) {
            (true, SocketAddr::V4(v4)) => {
                SocketAddr::new(IpAddr::V6(v4.ip().to_ipv6_mapped()), v4.port())
            }
            _ => to,
        }
    }
}

/// `addr` with an IPv4-mapped IPv6 address turned into IPv4.
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

/// Whether a datagram is STUN by its first byte (RFC 7983: 0–3).
pub fn is_stun(datagram: &[u8]) -> bool {
    matches!(datagram.first(), Some(0..=3))
}

impl AsyncUdpSocket for MuxSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.primary.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        if canonical(transmit.destination) != VIRTUAL_PEER {
            // Nothing else is ever reached from this socket by QUIC.
            return Ok(());
        }
        let (route, turn) = {
            let state = self.state();
            (state.route.clone(), state.turn_tx.clone())
        };
        match route {
            // No route yet: drop, as a lost datagram (QUIC retransmits).
            Route::None => Ok(()),
            Route::Direct(addr) => {
                let routed = Transmit {
                    destination: self.outward(addr),
                    ecn: transmit.ecn,
                    contents: transmit.contents,
                    segment_size: transmit.segment_size,
                    src_ip: None,
                };
                self.primary.try_send(&routed)
            }
            Route::Spray(socket, addr) => {
                let size = transmit.segment_size.unwrap_or(transmit.contents.len());
                for segment in transmit.contents.chunks(size.max(1)) {
                    match socket.try_send_to(segment, addr) {
                        Ok(_) => {}
                        // A full socket buffer drops the rest, as a full link would.
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) => return Err(e),
                    }
                }
                Ok(())
            }
            Route::Turn(peer) => {
                if let Some(turn) = turn {
                    let size = transmit.segment_size.unwrap_or(transmit.contents.len());
                    for segment in transmit.contents.chunks(size.max(1)) {
                        // A full queue drops the datagram, as a full link would.
                        let _ = turn.send(peer, Bytes::copy_from_slice(segment));
                    }
                }
                Ok(())
            }
        }
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        // What arrived elsewhere first (the TURN allocation, a spray socket): it is
        // all the peer's.
        {
            let mut state = self.state();
            if !state
                .reader
                .as_ref()
                .is_some_and(|w| w.will_wake(cx.waker()))
            {
                state.reader = Some(cx.waker().clone());
            }
            for rx in state.side.iter_mut() {
                let (Poll::Ready(Some((from, data))), Some(buf), Some(m)) =
                    (rx.poll_recv(cx), bufs.first_mut(), meta.first_mut())
                else {
                    continue;
                };
                if is_stun(&data) {
                    let _ = self.stun_tx.try_send((canonical(from), data));
                    // Nothing for QUIC in this one; ask again.
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                let len = data.len().min(buf.len());
                buf[..len].copy_from_slice(&data[..len]);
                *m = RecvMeta {
                    addr: VIRTUAL_PEER,
                    len,
                    stride: len,
                    ecn: None,
                    dst_ip: None,
                };
                return Poll::Ready(Ok(1));
            }
        }
        let count = match self.primary.poll_recv(cx, bufs, meta) {
            Poll::Ready(Ok(count)) => count,
            other => return other,
        };
        let state = self.state();
        for (m, buf) in meta.iter_mut().zip(bufs.iter()).take(count) {
            let from = canonical(m.addr);
            let data = &buf[..m.len.min(buf.len())];
            if m.stride >= m.len && is_stun(data) {
                let _ = self.stun_tx.try_send((from, Bytes::copy_from_slice(data)));
                // An empty datagram: QUIC skips it.
                m.len = 0;
                m.stride = 0;
                continue;
            }
            if state.peer_addrs.contains(&from) {
                m.addr = VIRTUAL_PEER;
            } else {
                // This endpoint has one peer; datagrams from anywhere else (a stranger,
                // or the peer from an address no check proved yet) are dropped, so
                // that QUIC never sees the peer under two addresses.
                m.len = 0;
                m.stride = 0;
            }
        }
        Poll::Ready(Ok(count))
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.primary.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.primary.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.primary.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.primary.may_fragment()
    }
}
