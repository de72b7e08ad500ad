//! Connecting across NATs with a code: rendezvous, PAKE, candidates, punching, relay,
//! and moving from the relay to a direct path mid-transfer.
//!
//! ```text
//!  sender                         rendezvous                        receiver
//!  Allocate ─────────────────────▶ nameplate 7 ◀──────────────────── Claim 7
//!  PAKE msg ─────────── mailbox ──────────────────── mailbox ─────── PAKE msg   (SPAKE2, the code)
//!  gather: host, STUN on the QUIC socket, TURN allocation            gather
//!  Offer{device id, candidates} ═══ sealed under the PAKE key ═══ Offer{…}
//!  prime (TTL 2) ─ Primed ═════════════════════════════════════ Primed ─ prime
//!  checks ◀═══════════════ STUN Binding + MESSAGE-INTEGRITY-SHA256 ═══════▶ checks
//!  QUIC server ◀════ direct pair, or the TURN relay after DIRECT_WAIT ════ QUIC client
//!  TLS 1.3 + admission: the same code again (SPAKE2 bound to the TLS exporter) and the
//!  device id from the sealed Offer must match the certificate's key
//! ```
//!
//! The rendezvous sees the nameplate, two SPAKE2 messages (which reveal nothing about
//! the code but allow one guess) and sealed bytes; it never learns the code or any
//! candidate. The TLS connection that follows is pinned to the device id the peer sent
//! sealed under the PAKE key, and admission proves the code again over TLS; a wrong code
//! fails at the first sealed message and the rendezvous closes.
//!
//! QUIC runs on the [`MuxSocket`]; checks go on in the background for
//! [`PUNCH_FOR`] after the connection started over the relay, and when a pair becomes
//! valid, the mux routes the peer's packets straight to it. QUIC does not see the
//! change (see [`super::mux`]); nothing is sent again; the [`Path`] watch tells the
//! front end.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use spake2::{Ed25519Group, Identity as SpakeIdentity, Password, Spake2};
use tokio::sync::{watch, Mutex};

use super::ice::{self, Candidate, CandidateKind, CheckEvent, Path, PathKind, Stun, Via};
use super::mux::{MuxSocket, Route, VIRTUAL_PEER};
use super::portmap::{self, Mapping};
use super::quic::{self, QuicStream};
use super::{Code, Connection, DeviceId, PeerStream, Security, SecurityError, Transport};
use crate::error::{Error, Result};
use crate::nat::turn::{TurnClient, TurnCredentials, TurnTransport};
use crate::rendezvous::client::{Mailbox, RendezvousError};

/// The rendezvous port when a server is named without one.
pub const DEFAULT_RENDEZVOUS_PORT: u16 = 4000;
/// How long the first checks may take before the transfer starts over the relay.
pub const DIRECT_WAIT: Duration = Duration::from_millis(1500);
/// [`DIRECT_WAIT`] when only a shared network could give a direct path.
pub const LAN_WAIT: Duration = Duration::from_millis(300);
/// How long checks go on in the background while the transfer runs over the relay.
pub const PUNCH_FOR: Duration = Duration::from_secs(60);
/// How long a side waits for the peer's sealed messages once both joined.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a STUN lookup while gathering may take (retransmitted from 100 ms on).
const GATHER_TIMEOUT: Duration = Duration::from_millis(1500);
/// How long a TURN allocation over UDP may take before TCP is tried.
const TURN_UDP_WAIT: Duration = Duration::from_millis(1500);
/// How long a port mapping asked for while gathering lives (renewed while held).
const PORTMAP_LIFETIME: Duration = Duration::from_secs(600);
/// How much longer than STUN and TURN the port mapping may take while gathering (never
/// more than [`portmap::MAP_WAIT`] in all): a router that maps answers within
/// milliseconds, and a network without one must not slow the connection down.
const PORTMAP_GRACE: Duration = Duration::from_millis(250);
/// SPAKE2 identity of the rendezvous exchange (differs from admission's).
const SPAKE2_IDENTITY: &[u8] = b"p2p-transfer/2 rendezvous";
/// Environment variable: delays this side's first probe (the lab's skew), in ms.
pub const PUNCH_DELAY_ENV: &str = "P2P_PUNCH_DELAY_MS";
/// Environment variable: `relay` forces the relay (no checks), `direct` never relays.
pub const PATH_ENV: &str = "P2P_PATH";
/// Environment variable (tests, the lab): start over the relay and begin the checks
/// only this many ms later — the relay-to-direct move, on demand.
pub const DIRECT_AFTER_ENV: &str = "P2P_DIRECT_AFTER_MS";

/// Mailbox message kinds (first byte).
const KIND_PAKE: u8 = 0;
const KIND_SEALED: u8 = 1;

/// What the sides tell each other, sealed under the PAKE key.
#[derive(Debug, Clone, Serialize, Deserialize)]
enum Sealed {
    /// 0 — who this side is and where it may be reached.
    Offer {
        device_id: String,
        candidates: Vec<Candidate>,
        /// This side's NAT maps each destination to another port (symmetric): the
        /// peer then sprays probes over its ports ([`ice::SPRAY_PROBES`]).
        symmetric: bool,
    },
    /// 1 — this side primed its NAT towards the peer's candidates.
    Primed,
}

/// Keys derived from the SPAKE2 key.
struct Keys {
    seal: LessSafeKey,
    open: LessSafeKey,
    check: [u8; 32],
    sent: u64,
    received: u64,
}

fn derive(key: &[u8], label: &[u8]) -> [u8; 32] {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(label);
    mac.finalize().into_bytes().into()
}

impl Keys {
    fn new(key: &[u8], allocator: bool) -> Self {
        let (mine, theirs): (&[u8], &[u8]) = if allocator {
            (b"p2p-transfer/2 mailbox 0", b"p2p-transfer/2 mailbox 1")
        } else {
            (b"p2p-transfer/2 mailbox 1", b"p2p-transfer/2 mailbox 0")
        };
        let aead = |label| {
            LessSafeKey::new(
                UnboundKey::new(&CHACHA20_POLY1305, &derive(key, label))
                    .expect("32-byte key for ChaCha20-Poly1305"),
            )
        };
        Keys {
            seal: aead(mine),
            open: aead(theirs),
            check: derive(key, b"p2p-transfer/2 checks"),
            sent: 0,
            received: 0,
        }
    }

    fn nonce(counter: u64) -> Nonce {
        let mut n = [0u8; 12];
        n[4..].copy_from_slice(&counter.to_be_bytes());
        Nonce::assume_unique_for_key(n)
    }

    fn seal(&mut self, message: &Sealed) -> Vec<u8> {
        let mut body = postcard::to_allocvec(message).expect("postcard encodes a Sealed");
        let nonce = Self::nonce(self.sent);
        self.sent += 1;
        self.seal
            .seal_in_place_append_tag(nonce, Aad::empty(), &mut body)
            .expect("ChaCha20-Poly1305 seals any length here");
        let mut out = vec![KIND_SEALED];
        out.extend_from_slice(&body);
        out
    }

    /// The peer's next sealed message; `None` when it does not open (another code).
    fn open(&mut self, bytes: &[u8]) -> Option<Sealed> {
        let (&kind, rest) = bytes.split_first()?;
        if kind != KIND_SEALED {
            return None;
        }
        let mut body = rest.to_vec();
        let nonce = Self::nonce(self.received);
        let plain = self
            .open
            .open_in_place(nonce, Aad::empty(), &mut body)
            .ok()?;
        self.received += 1;
        postcard::from_bytes(plain).ok()
    }
}

fn rendezvous_error(e: RendezvousError) -> Error {
    Error::Rendezvous(e)
}

/// A connection to a peer found through a rendezvous server by a code (see the module
/// documentation): the state an [`super::Endpoint::Rendezvous`] keeps.
pub struct Rendezvous {
    state: Mutex<State>,
    nameplate: u32,
    allocator: bool,
    server: String,
}

impl std::fmt::Debug for Rendezvous {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rendezvous")
            .field("server", &self.server)
            .field("nameplate", &self.nameplate)
            .finish_non_exhaustive()
    }
}

enum State {
    /// Before the first connection: the mailbox, and the code once known.
    Waiting {
        mailbox: Box<Mailbox>,
        code: Option<Code>,
    },
    /// After it: QUIC on the mux socket, reused by reconnections.
    Connected(Arc<Established>),
    /// The exchange failed; nothing more can be done with this code.
    Spent,
}

struct Established {
    endpoint: quinn::Endpoint,
    path: watch::Receiver<Path>,
    _punching: tokio::task::JoinHandle<()>,
    _turn: Option<TurnClient>,
    /// The port the router forwards, removed at [`Rendezvous::shut_down`] (or on drop).
    portmap: std::sync::Mutex<Option<Mapping>>,
}

impl Rendezvous {
    /// Opens a mailbox on `server` (`host:port`) and waits there for the peer: its
    /// number is the code's nameplate ([`Self::nameplate`]); give the code with
    /// [`Self::set_code`] before connecting.
    pub async fn allocate(server: &str) -> Result<Self> {
        let (mailbox, nameplate) = Mailbox::allocate(server).await.map_err(rendezvous_error)?;
        Ok(Rendezvous {
            state: Mutex::new(State::Waiting {
                mailbox: Box::new(mailbox),
                code: None,
            }),
            nameplate,
            allocator: true,
            server: server.to_owned(),
        })
    }

    /// Joins the mailbox that `code`'s nameplate names on `server`.
    pub async fn claim(server: &str, code: &Code) -> Result<Self> {
        let nameplate = u32::from(code.nameplate());
        let mailbox = Mailbox::claim(server, nameplate)
            .await
            .map_err(rendezvous_error)?;
        Ok(Rendezvous {
            state: Mutex::new(State::Waiting {
                mailbox: Box::new(mailbox),
                code: Some(code.clone()),
            }),
            nameplate,
            allocator: false,
            server: server.to_owned(),
        })
    }

    /// The mailbox' number: the first part of the code.
    pub fn nameplate(&self) -> u32 {
        self.nameplate
    }

    /// The rendezvous server, as given.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// Sets the one-time code (the allocating side, after [`Self::allocate`]).
    pub async fn set_code(&self, new: Code) {
        if let State::Waiting { code, .. } = &mut *self.state.lock().await {
            *code = Some(new);
        }
    }

    /// The first call runs the whole exchange and opens the QUIC connection; later
    /// calls (reconnections) open a new one over the same path.
    pub async fn connect(&self, security: &Security) -> Result<Connection<PeerStream>> {
        let established = {
            let mut state = self.state.lock().await;
            match std::mem::replace(&mut *state, State::Spent) {
                State::Waiting { mailbox, code } => {
                    let code = code.ok_or_else(|| {
                        Error::InvalidInput("a rendezvous needs the one-time code".into())
                    })?;
                    let established =
                        Arc::new(exchange(*mailbox, &code, self.allocator, security).await?);
                    *state = State::Connected(established.clone());
                    established
                }
                State::Connected(established) => {
                    *state = State::Connected(established.clone());
                    established
                }
                State::Spent => {
                    return Err(SecurityError::CodeBurnt.into());
                }
            }
        };
        open_quic(&established, self.allocator, security).await
    }

    /// Closes the QUIC endpoint, giving its last packets a moment to leave, and removes
    /// the port mapping from the router meanwhile.
    pub async fn shut_down(&self) {
        if let State::Connected(established) = &*self.state.lock().await {
            let mapping = established
                .portmap
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take();
            let release = async {
                if let Some(mapping) = mapping {
                    mapping.release().await;
                }
            };
            let flush = tokio::time::timeout(
                super::endpoint::CLOSE_FLUSH,
                established.endpoint.wait_idle(),
            );
            let _ = tokio::join!(flush, release);
        }
    }
}

/// Opens (client) or accepts (server) the QUIC connection over the mux, and admits it.
async fn open_quic(
    established: &Established,
    allocator: bool,
    security: &Security,
) -> Result<Connection<PeerStream>> {
    // The waiting side waits for the peer's connection as a listener does (a
    // reconnecting peer may take a while); the handshake itself is bounded.
    let incoming = match allocator {
        true => Some(
            established
                .endpoint
                .accept()
                .await
                .ok_or(SecurityError::Closed)?,
        ),
        false => None,
    };
    let until = tokio::time::Instant::now() + super::SECURE_TIMEOUT;
    let handshake = async {
        match incoming {
            Some(incoming) => quic::accept(incoming, security).await,
            None => quic::connect_on(&established.endpoint, VIRTUAL_PEER, security).await,
        }
    };
    let (stream, channel): (QuicStream, _) = tokio::time::timeout_at(until, handshake)
        .await
        .unwrap_or(Err(SecurityError::NoQuicAnswer { addr: None }))?;
    let (stream, peer) = super::admit(
        PeerStream::Quic(Box::new(stream)),
        &channel,
        security,
        until,
    )
    .await?;
    let path = *established.path.borrow();
    Ok(Connection {
        stream,
        peer,
        remote_addr: Some(path.addr),
        is_client: !allocator,
        transport: Transport::Quic,
        path: Some(established.path.clone()),
    })
}

async fn send(mailbox: &mut Mailbox, bytes: &[u8]) -> Result<()> {
    mailbox.send(bytes).await.map_err(rendezvous_error)
}

async fn recv(mailbox: &mut Mailbox, limit: Option<Duration>) -> Result<Vec<u8>> {
    match limit {
        None => mailbox.recv().await.map_err(rendezvous_error),
        Some(limit) => tokio::time::timeout(limit, mailbox.recv())
            .await
            .map_err(|_| rendezvous_error(RendezvousError::Timeout))?
            .map_err(rendezvous_error),
    }
}

/// What the environment asks of the path (tests and the NAT lab).
#[derive(Debug, Default)]
struct Overrides {
    /// `P2P_PATH=relay`: the relay only, no checks.
    relay_only: bool,
    /// `P2P_PATH=direct`: never the relay.
    direct_only: bool,
    /// `P2P_PUNCH_DELAY_MS`: this side primes that much later (the lab's skew).
    punch_delay: Option<Duration>,
    /// `P2P_DIRECT_AFTER_MS`: start on the relay, check only after that long.
    direct_after: Option<Duration>,
}

impl Overrides {
    fn from_env() -> Self {
        let ms = |name: &str, cap: u64| {
            std::env::var(name)
                .ok()
                .and_then(|v| v.parse::<u64>().ok())
                .map(|ms| Duration::from_millis(ms.min(cap)))
        };
        let path = std::env::var(PATH_ENV).unwrap_or_default();
        Overrides {
            relay_only: path == "relay",
            direct_only: path == "direct",
            punch_delay: ms(PUNCH_DELAY_ENV, 60_000),
            direct_after: ms(DIRECT_AFTER_ENV, 600_000),
        }
    }
}

/// The whole exchange (protocol.md §8), up to a QUIC endpoint on a chosen path.
async fn exchange(
    mut mailbox: Mailbox,
    code: &Code,
    allocator: bool,
    security: &Security,
) -> Result<Established> {
    let overrides = Overrides::from_env();
    let mut keys = pake(&mut mailbox, code, allocator).await?;

    // The socket QUIC will use, and QUIC's endpoint on it from the start: its driver
    // is what reads the socket (and hands STUN to the inbox).
    let local = |e| Error::Connect {
        action: "open a UDP socket on",
        addr: "0.0.0.0:0".into(),
        source: e,
    };
    let socket = quic::udp_socket((std::net::Ipv4Addr::UNSPECIFIED, 0).into()).map_err(local)?;
    let (mux, inbox) = MuxSocket::new(socket).map_err(local)?;
    let (stun, mut events) = Stun::start(mux.clone(), inbox);
    let endpoint = quinn::Endpoint::new_with_abstract_socket(
        quinn::EndpointConfig::default(),
        if allocator {
            Some(quic::server_config(security)?)
        } else {
            None
        },
        mux.clone(),
        Arc::new(quinn::TokioRuntime),
    )
    .map_err(local)?;
    let port = mux.local_port().map_err(local)?;
    let Gathered {
        candidates,
        symmetric,
        mut turn,
        portmap,
    } = gather(&stun, port, mailbox.server_addr(), mailbox.turn().cloned()).await;

    let offer = Sealed::Offer {
        device_id: security.device_id().to_string(),
        candidates: candidates.clone(),
        symmetric,
    };
    let peer = swap_offers(&mut mailbox, &mut keys, &offer).await?;
    // The TLS connection must come from the device that proved the code here.
    security.admission.expect(Some(peer.device_id));
    stun.set_key(keys.check);
    if let Some(turn) = turn.as_mut() {
        attach_relay(turn, &peer.candidates, &mux).await;
    }

    // Prime, tell the peer, wait for its word (protocol.md §8.3).
    let (targets, spray_to) = plan_checks(&stun, symmetric, &peer, &overrides);
    if let Some(delay) = overrides.punch_delay {
        tokio::time::sleep(delay).await;
    }
    if !overrides.relay_only {
        for (via, target) in &targets {
            for _ in 0..2 {
                stun.check_via(*via, *target, Some(ice::PRIME_TTL));
            }
        }
    }
    send(&mut mailbox, &keys.seal(&Sealed::Primed)).await?;
    match keys.open(&recv(&mut mailbox, Some(EXCHANGE_TIMEOUT)).await?) {
        Some(Sealed::Primed) => {}
        _ => return Err(Error::protocol("the rendezvous peer broke the exchange")),
    }
    drop(mailbox);

    // A direct path within DIRECT_WAIT, else the relay while checks go on.
    let relay = relay_route(&candidates, &peer.candidates, turn.is_some());
    let (path_tx, path_rx) = watch::channel(Path {
        kind: PathKind::Relay,
        addr: relay.as_ref().map(|(_, a)| *a).unwrap_or(VIRTUAL_PEER),
    });
    let mut punch = Punch {
        stun: stun.clone(),
        mux: mux.clone(),
        targets,
        remote: peer.candidates.clone(),
        path: path_tx,
        spray_to,
        sprayed: 0,
        reached: Default::default(),
    };
    let direct = if overrides.relay_only || overrides.direct_after.is_some() {
        None
    } else {
        let wait = match hopeless(&candidates, &peer.candidates, symmetric, peer.symmetric) {
            true => LAN_WAIT,
            false => DIRECT_WAIT,
        };
        tokio::time::timeout(wait, punch.until_valid(&mut events))
            .await
            .ok()
            .flatten()
    };
    let punching = match direct {
        Some((via, addr)) => {
            punch.go_direct(via, addr);
            // The peer may still be checking: keep answering (the STUN service does)
            // and re-checking for a while.
            tokio::spawn(async move {
                punch
                    .keep_checking(&mut events, Duration::from_secs(5))
                    .await
            })
        }
        None => {
            let Some((route, addr)) = relay.filter(|_| !overrides.direct_only) else {
                return Err(Error::Security(SecurityError::NoQuicAnswer {
                    addr: Some(format!(
                        "the peer (no direct path within {} ms, and no relay{})",
                        DIRECT_WAIT.as_millis(),
                        if turn.is_none() {
                            ": the rendezvous offers none, or it failed"
                        } else {
                            ""
                        }
                    )),
                }));
            };
            mux.set_route(route);
            tracing::info!("no direct path yet: starting over the relay ({addr})");
            tokio::spawn(async move {
                if overrides.relay_only {
                    return;
                }
                if let Some(delay) = overrides.direct_after {
                    tokio::time::sleep(delay).await;
                    // Checks the peer sent meanwhile were answered; start afresh.
                    while events.try_recv().is_ok() {}
                }
                if let Some((via, addr)) = punch.until_valid_for(&mut events, PUNCH_FOR).await {
                    punch.go_direct(via, addr);
                    punch
                        .keep_checking(&mut events, Duration::from_secs(5))
                        .await;
                }
            })
        }
    };

    Ok(Established {
        endpoint,
        path: path_rx,
        _punching: punching,
        _turn: turn,
        portmap: std::sync::Mutex::new(portmap),
    })
}

/// SPAKE2 through the mailbox (protocol.md §8.1): the keys of this exchange.
async fn pake(mailbox: &mut Mailbox, code: &Code, allocator: bool) -> Result<Keys> {
    let (spake, message) = Spake2::<Ed25519Group>::start_symmetric(
        &Password::new(code.password()),
        &SpakeIdentity::new(SPAKE2_IDENTITY),
    );
    let mut first = vec![KIND_PAKE];
    first.extend_from_slice(&message);
    send(mailbox, &first).await?;
    // The allocating side waits here for the person on the other side to type the code.
    let theirs = recv(mailbox, None).await?;
    let key = match theirs.split_first() {
        Some((&KIND_PAKE, msg)) => spake.finish(msg).map_err(|_| SecurityError::WrongCode)?,
        _ => {
            return Err(Error::protocol(
                "the rendezvous peer did not start with SPAKE2",
            ))
        }
    };
    Ok(Keys::new(&key, allocator))
}

/// This side's candidates, and what gathering them left to keep.
struct Gathered {
    candidates: Vec<Candidate>,
    /// Two servers saw the mux socket at different ports.
    symmetric: bool,
    turn: Option<TurnClient>,
    portmap: Option<portmap::Mapping>,
}

/// Gathers on the mux socket (bound to `port`): host addresses, the reflexive address
/// from the rendezvous' STUN (and the TURN server's, to tell a symmetric NAT), a TURN
/// allocation (UDP, else TCP), a port the router maps — all at once.
async fn gather(
    stun: &Stun,
    port: u16,
    stun_server: SocketAddr,
    turn_grant: Option<crate::rendezvous::protocol::TurnGrant>,
) -> Gathered {
    let mut candidates = ice::host_candidates(port, false);
    let turn_server = match turn_grant.as_ref().and_then(|g| g.servers.first()) {
        Some(s) => tokio::net::lookup_host(s.as_str())
            .await
            .ok()
            .and_then(|mut a| a.find(SocketAddr::is_ipv4)),
        None => None,
    };
    // The mapping seen by two servers: different ports mean a symmetric NAT.
    let reflexive = async {
        let second = async {
            match turn_server {
                Some(server) => stun.reflexive(server, GATHER_TIMEOUT).await,
                None => None,
            }
        };
        tokio::join!(stun.reflexive(stun_server, GATHER_TIMEOUT), second)
    };
    let relay = async {
        let (server, grant) = (turn_server?, turn_grant.as_ref()?);
        let creds = TurnCredentials {
            username: grant.username.clone(),
            password: grant.password.clone(),
        };
        // UDP first; TCP when it fails or has not answered within TURN_UDP_WAIT (a
        // network that drops UDP says nothing).
        let udp = tokio::time::timeout(
            TURN_UDP_WAIT,
            TurnClient::allocate(server, TurnTransport::Udp, &creds),
        )
        .await
        .map_err(|_| "no answer".to_owned())
        .and_then(|r| r.map_err(|e| e.to_string()));
        match udp {
            Ok(client) => Some(client),
            Err(e) => {
                tracing::debug!("TURN over UDP failed ({e}); trying TCP");
                TurnClient::allocate(server, TurnTransport::Tcp, &creds)
                    .await
                    .map_err(|e| tracing::info!("no relay: TURN over TCP failed too: {e}"))
                    .ok()
            }
        }
    };
    // A port the router forwards (PCP, NAT-PMP, UPnP IGD), not when the rendezvous is on
    // this host (a peer that meets us there shares it; and tests must not touch the
    // host's router) or with P2P_NO_PORTMAP=1; at most PORTMAP_GRACE past the rest.
    let (gathered, gathered_rx) = tokio::sync::oneshot::channel::<()>();
    let stun_and_turn = async {
        let done = tokio::join!(reflexive, relay);
        let _ = gathered.send(());
        done
    };
    let mapped = async {
        if stun_server.ip().is_loopback() {
            return None;
        }
        let map = portmap::map_udp(port, PORTMAP_LIFETIME);
        tokio::pin!(map);
        tokio::select! {
            mapping = &mut map => mapping,
            _ = async {
                let _ = gathered_rx.await;
                tokio::time::sleep(PORTMAP_GRACE).await;
            } => None,
        }
    };
    let (((reflexive, second), turn), portmap) = tokio::join!(stun_and_turn, mapped);
    let symmetric = matches!((reflexive, second), (Some(a), Some(b)) if a != b);
    if symmetric {
        tracing::info!("this side's NAT is symmetric ({reflexive:?} vs {second:?})");
    }
    let mut add = |kind, addr| candidates.push(Candidate { kind, addr });
    if let Some(addr) = reflexive {
        add(CandidateKind::ServerReflexive, addr);
    }
    if let Some(mapping) = &portmap {
        add(CandidateKind::PortMapped, mapping.external);
    }
    if let Some(turn) = &turn {
        add(CandidateKind::Relayed, turn.relayed_addr());
    }
    tracing::debug!("candidates: {candidates:?}");
    Gathered {
        candidates,
        symmetric,
        turn,
        portmap,
    }
}

/// What the peer's sealed offer said.
struct PeerOffer {
    device_id: DeviceId,
    candidates: Vec<Candidate>,
    symmetric: bool,
}

/// Sends this side's sealed offer and opens the peer's; one that does not open was
/// sealed under another code.
async fn swap_offers(mailbox: &mut Mailbox, keys: &mut Keys, offer: &Sealed) -> Result<PeerOffer> {
    send(mailbox, &keys.seal(offer)).await?;
    let sealed = recv(mailbox, Some(EXCHANGE_TIMEOUT)).await?;
    let Some(Sealed::Offer {
        device_id,
        candidates,
        symmetric,
    }) = keys.open(&sealed)
    else {
        return Err(SecurityError::WrongCode.into());
    };
    let device_id = device_id
        .parse()
        .map_err(|_| Error::protocol("the peer's device id does not parse"))?;
    Ok(PeerOffer {
        device_id,
        candidates,
        symmetric,
    })
}

/// Gives the mux this side's allocation, permitting every address the peer may send
/// from.
async fn attach_relay(turn: &mut TurnClient, remote: &[Candidate], mux: &MuxSocket) {
    let ips: std::collections::HashSet<IpAddr> =
        remote.iter().map(|c| c.addr.ip().to_canonical()).collect();
    for ip in ips {
        if let Err(e) = turn.permit(ip).await {
            tracing::debug!("TURN permission for {ip} failed: {e}");
        }
    }
    if let Some(rx) = turn.take_receiver() {
        mux.attach_turn(turn.sender(), rx);
    }
}

/// What to check, and from where: the peer's candidates from the mux socket; behind a
/// symmetric NAT facing one that is not, also from 256 spray sockets towards the peer's
/// reflexive address (primed only: a full probe would reach the peer's router before
/// the peer sent anything and spoil its conntrack); facing a symmetric NAT, the IP
/// whose random ports to probe.
fn plan_checks(
    stun: &Stun,
    symmetric: bool,
    peer: &PeerOffer,
    overrides: &Overrides,
) -> (Vec<(Via, SocketAddr)>, Option<IpAddr>) {
    let mut targets: Vec<(Via, SocketAddr)> = ice::check_targets(&peer.candidates, false)
        .into_iter()
        .map(|t| (Via::Primary, t))
        .collect();
    let peer_reflexive = peer
        .candidates
        .iter()
        .find(|c| c.kind == CandidateKind::ServerReflexive)
        .map(|c| c.addr);
    let mut spray_to = None;
    if !overrides.relay_only {
        match (symmetric, peer.symmetric, peer_reflexive) {
            (true, false, Some(reflexive)) => {
                let opened = stun.spray(ice::SPRAY_SOCKETS);
                tracing::info!("symmetric NAT: {opened} extra sockets towards {reflexive}");
                targets.extend((0..opened).map(|n| (Via::Spray(n), reflexive)));
            }
            (false, true, Some(reflexive)) => spray_to = Some(reflexive.ip()),
            _ => {}
        }
    }
    (targets, spray_to)
}

/// Whether only a shared network could still give a direct path (it answers within
/// milliseconds): no reflexive address on one side (UDP blocked) or two symmetric
/// NATs, and no port mapped on either side.
fn hopeless(
    local: &[Candidate],
    remote: &[Candidate],
    symmetric: bool,
    peer_symmetric: bool,
) -> bool {
    let has = |list: &[Candidate], kind| list.iter().any(|c| c.kind == kind);
    let mapped = has(local, CandidateKind::PortMapped) || has(remote, CandidateKind::PortMapped);
    !mapped
        && (!has(local, CandidateKind::ServerReflexive)
            || !has(remote, CandidateKind::ServerReflexive)
            || (symmetric && peer_symmetric))
}

/// The relay route: to the peer's relayed address from this socket when this side has
/// UDP (it found its reflexive address), else through this side's own allocation.
fn relay_route(
    local: &[Candidate],
    remote: &[Candidate],
    have_turn: bool,
) -> Option<(Route, SocketAddr)> {
    let has = |list: &[Candidate], kind| list.iter().find(|c| c.kind == kind).map(|c| c.addr);
    let udp_ok = has(local, CandidateKind::ServerReflexive).is_some();
    let peer_relay = has(remote, CandidateKind::Relayed);
    match (udp_ok, peer_relay, have_turn) {
        (true, Some(addr), _) => Some((Route::Direct(addr), addr)),
        (_, Some(addr), true) => Some((Route::Turn(addr), addr)),
        (_, None, true) => {
            let addr = has(remote, CandidateKind::ServerReflexive)?;
            Some((Route::Turn(addr), addr))
        }
        _ => None,
    }
}

/// The background side of the checks.
struct Punch {
    stun: Stun,
    mux: Arc<MuxSocket>,
    targets: Vec<(Via, SocketAddr)>,
    remote: Vec<Candidate>,
    path: watch::Sender<Path>,
    /// The peer is behind a symmetric NAT at this address: probe random ports of it.
    spray_to: Option<IpAddr>,
    sprayed: usize,
    /// Spray targets the peer's probes reached: full checks from now on.
    reached: std::collections::HashSet<(Via, SocketAddr)>,
}

type Events = tokio::sync::mpsc::Receiver<CheckEvent>;

impl Punch {
    /// Checks every target each [`ice::CHECK_INTERVAL`] until one is valid.
    async fn until_valid(&mut self, events: &mut Events) -> Option<(Via, SocketAddr)> {
        let mut tick = tokio::time::interval(ice::CHECK_INTERVAL);
        let mut spray = tokio::time::interval(SPRAY_INTERVAL);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    for (via, target) in &self.targets {
                        // A spray socket never sends a full probe before the peer's
                        // reached it (see `exchange`); it re-primes instead.
                        let primed_only = matches!(via, Via::Spray(_))
                            && !self.reached.contains(&(*via, *target));
                        let ttl = primed_only.then_some(ice::PRIME_TTL);
                        self.stun.check_via(*via, *target, ttl);
                    }
                }
                _ = spray.tick(), if self.spray_to.is_some() && self.sprayed < ice::SPRAY_PROBES => {
                    self.spray_batch();
                }
                event = events.recv() => match event? {
                    CheckEvent::Valid(via, addr) => return Some((via, addr)),
                    // A triggered check (RFC 8445 §7.3.1.4): the peer reached us from
                    // an address we may not know (peer-reflexive).
                    CheckEvent::Request(via, from) => {
                        // Checked at once when new (then with the others, each tick);
                        // a bounded set, so a peer cannot make us probe without end.
                        if !self.targets.contains(&(via, from))
                            && self.targets.len() < ice::MAX_REMOTE_CANDIDATES * 2 + ice::SPRAY_SOCKETS
                        {
                            self.targets.push((via, from));
                        }
                        if self.targets.contains(&(via, from)) && self.reached.insert((via, from)) {
                            self.stun.check_via(via, from, None);
                        }
                    }
                }
            }
        }
    }

    /// Probes [`SPRAY_BATCH`] random ports of the symmetric peer's address.
    fn spray_batch(&mut self) {
        let Some(ip) = self.spray_to else { return };
        for _ in 0..SPRAY_BATCH {
            let port = rand::random_range(1024..=u16::MAX);
            self.stun.check(SocketAddr::new(ip, port), None);
            self.sprayed += 1;
        }
    }

    async fn until_valid_for(
        &mut self,
        events: &mut Events,
        limit: Duration,
    ) -> Option<(Via, SocketAddr)> {
        tokio::time::timeout(limit, self.until_valid(events))
            .await
            .ok()
            .flatten()
    }

    fn go_direct(&self, via: Via, addr: SocketAddr) {
        let route = match via {
            Via::Primary => Route::Direct(addr),
            Via::Spray(n) => match self.stun.spray_socket(n) {
                Some(socket) => Route::Spray(socket, addr),
                None => return,
            },
        };
        self.mux.set_route(route);
        let kind = ice::path_kind(addr, &self.remote);
        tracing::info!("{kind} path to {addr} ({via:?})");
        let _ = self.path.send(Path { kind, addr });
    }

    /// Answers and re-checks for `limit` more (the peer may not have its pair yet).
    async fn keep_checking(&mut self, events: &mut Events, limit: Duration) {
        let _ = tokio::time::timeout(limit, async {
            while let Some(event) = events.recv().await {
                if let CheckEvent::Request(via, from) = event {
                    self.stun.check_via(via, from, None);
                }
            }
        })
        .await;
    }
}

/// Time between two batches of spray probes.
const SPRAY_INTERVAL: Duration = Duration::from_millis(5);
/// Probes per batch: 2,048 probes take 0.64 s.
const SPRAY_BATCH: usize = 16;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_offer_matches_the_spec() {
        let offer = Sealed::Offer {
            device_id: "ABCDE-FGHIJ".into(),
            candidates: vec![Candidate {
                kind: CandidateKind::Host,
                addr: "10.0.0.2:4000".parse().expect("address"),
            }],
            symmetric: false,
        };
        let bytes = postcard::to_allocvec(&offer).expect("encodes");
        assert_eq!(
            bytes,
            [
                0x00, 0x0b, b'A', b'B', b'C', b'D', b'E', b'-', b'F', b'G', b'H', b'I', b'J', 0x01,
                0x00, 0x00, 0x0a, 0x00, 0x00, 0x02, 0xa0, 0x1f, 0x00
            ]
        );
        assert_eq!(
            postcard::to_allocvec(&Sealed::Primed).expect("encodes"),
            [0x01]
        );
    }

    #[test]
    fn sealed_messages_open_only_under_the_same_code_and_in_order() {
        let key = [9u8; 32];
        let (mut a, mut b) = (Keys::new(&key, true), Keys::new(&key, false));
        let first = a.seal(&Sealed::Primed);
        let second = a.seal(&Sealed::Primed);
        // Out of order (a replay of the second as the first) does not open.
        assert!(b.open(&second).is_none());
        assert!(matches!(b.open(&first), Some(Sealed::Primed)));
        assert!(matches!(b.open(&second), Some(Sealed::Primed)));
        // Another key (another code), or a side's own message reflected back, does not.
        let mut stranger = Keys::new(&[8u8; 32], false);
        assert!(stranger.open(&a.seal(&Sealed::Primed)).is_none());
        let mut a2 = Keys::new(&key, true);
        assert!(a2
            .open(&Keys::new(&key, true).seal(&Sealed::Primed))
            .is_none());
        assert_eq!(a.check, b.check);
    }

    #[test]
    fn the_relay_is_taken_early_only_where_no_punch_can_work() {
        let c = |kind, a: &str| Candidate {
            kind,
            addr: a.parse().expect("address"),
        };
        let srflx = [c(CandidateKind::ServerReflexive, "198.51.100.2:5000")];
        let mapped = [c(CandidateKind::PortMapped, "198.51.100.3:5000")];
        assert!(
            !hopeless(&srflx, &srflx, false, true),
            "symmetric x cone: spray"
        );
        assert!(hopeless(&srflx, &srflx, true, true), "two symmetric NATs");
        assert!(hopeless(&[], &srflx, false, false), "UDP blocked here");
        assert!(hopeless(&srflx, &[], false, false), "UDP blocked there");
        assert!(
            !hopeless(&srflx, &mapped, true, true),
            "a mapped port beats both"
        );
    }

    #[test]
    fn the_relay_route_prefers_sending_to_the_peers_allocation_when_udp_works() {
        let c = |kind, a: &str| Candidate {
            kind,
            addr: a.parse().expect("address"),
        };
        let mine_udp = [c(CandidateKind::ServerReflexive, "198.51.100.2:5000")];
        let theirs = [
            c(CandidateKind::ServerReflexive, "203.0.113.7:6000"),
            c(CandidateKind::Relayed, "192.0.2.10:50000"),
        ];
        let relay: SocketAddr = "192.0.2.10:50000".parse().expect("address");
        assert!(matches!(
            relay_route(&mine_udp, &theirs, true),
            Some((Route::Direct(a), _)) if a == relay
        ));
        // UDP blocked here (no reflexive address): through our own (TCP) allocation.
        assert!(matches!(
            relay_route(&[], &theirs, true),
            Some((Route::Turn(a), _)) if a == relay
        ));
        // The peer has no allocation: ours, to its reflexive address.
        let srflx: SocketAddr = "203.0.113.7:6000".parse().expect("address");
        assert!(matches!(
            relay_route(&[], &theirs[..1], true),
            Some((Route::Turn(a), _)) if a == srflx
        ));
        assert!(relay_route(&[], &theirs[..1], false).is_none());
    }
}
