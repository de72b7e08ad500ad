//! The STUN Binding client: one transaction as a sans-IO machine with the RFC 8489
//! retransmission schedule, a small async driver that runs it on a tokio UDP socket, and
//! the probe that walks a list of servers and measures the NAT's mapping behaviour.
//!
//! [`BindingTransaction`] holds no socket and reads no clock: datagrams come in through
//! [`handle_datagram`](BindingTransaction::handle_datagram), time through
//! [`handle_timeout`](BindingTransaction::handle_timeout), and what to send and when to
//! wake come out of [`poll_transmit`](BindingTransaction::poll_transmit) and
//! [`poll_timeout`](BindingTransaction::poll_timeout); its outcome is taken with
//! [`poll_outcome`](BindingTransaction::poll_outcome). Call them in that order after
//! every input. [`binding`] is the driver; [`probe_nat`] is what `nat-test` runs. The
//! byte format is [`stun`]'s business, the meaning of the results
//! [`nat`](super)'s.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::time::Instant;

use super::stun::{self, BindingResponse, TransactionId};
use super::{NatBehaviour, NatError, NatReport, ServerAttempt, StunError};

/// RFC 8489 §6.2.1 default initial retransmission timeout.
pub const DEFAULT_INITIAL_RTO: Duration = Duration::from_millis(500);
/// RFC 8489 `Rc`: requests sent in all, the first included.
pub const DEFAULT_MAX_SENDS: u32 = 7;
/// RFC 8489 `Rm`: after the last request, wait this many RTOs for an answer.
pub const DEFAULT_LAST_WAIT_FACTOR: u32 = 16;
/// How long one server gets before the next one is tried. With the 500 ms RTO this
/// sends at 0, 0.5 and 1.5 s, so a lossy path gets three chances, and a fallback to a
/// second server still answers within the 5 s target.
pub const DEFAULT_PER_SERVER_TIMEOUT: Duration = Duration::from_secs(2);

/// When to (re)send a request and when to give up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetransmitSchedule {
    /// First retransmission timeout; doubles after every retransmission.
    pub initial_rto: Duration,
    /// Requests sent in all (`Rc`).
    pub max_sends: u32,
    /// Wait after the last request, in RTOs (`Rm`).
    pub last_wait_factor: u32,
    /// Hard cap on the whole transaction: the per-server timeout.
    pub timeout: Duration,
}

impl Default for RetransmitSchedule {
    fn default() -> Self {
        RetransmitSchedule {
            initial_rto: DEFAULT_INITIAL_RTO,
            max_sends: DEFAULT_MAX_SENDS,
            last_wait_factor: DEFAULT_LAST_WAIT_FACTOR,
            timeout: DEFAULT_PER_SERVER_TIMEOUT,
        }
    }
}

impl RetransmitSchedule {
    /// How long the full RFC schedule lasts, before the [`timeout`](Self::timeout) cap:
    /// with the defaults 39.5 s (sends at 0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5 s, then 8 s).
    pub fn full_duration(&self) -> Duration {
        let sends = self.max_sends.clamp(1, 31);
        let last_send = self.initial_rto.saturating_mul((1u32 << (sends - 1)) - 1);
        last_send.saturating_add(self.initial_rto.saturating_mul(self.last_wait_factor))
    }
}

/// A datagram the machine wants sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transmit<'a> {
    /// Where to send it.
    pub destination: SocketAddr,
    /// The request bytes.
    pub payload: &'a [u8],
}

/// One Binding request/response exchange with one server address.
///
/// ```
/// use std::time::{Duration, Instant};
/// use p2p_core::nat::client::{BindingTransaction, RetransmitSchedule};
///
/// let server = "192.0.2.1:3478".parse().unwrap();
/// let start = Instant::now();
/// let mut tx = BindingTransaction::new(server, &RetransmitSchedule::default(), start);
/// assert!(tx.poll_transmit(start).is_some()); // the first request goes out at once
/// assert!(tx.poll_transmit(start).is_none()); // …and is not repeated before the RTO
/// assert_eq!(tx.poll_timeout(), Some(start + Duration::from_millis(500)));
/// ```
#[derive(Debug)]
pub struct BindingTransaction<I = std::time::Instant> {
    server: SocketAddr,
    id: TransactionId,
    request: Vec<u8>,
    rto: Duration,
    sends: u32,
    max_sends: u32,
    next_send: Option<I>,
    deadline: I,
    started: I,
    finished: bool,
    ignored: u32,
    outcome: Option<Result<BindingResponse, StunError>>,
}

/// The clock types a [`BindingTransaction`] can run on (std's, and tokio's, which can be
/// paused in tests).
pub trait Clock: Copy + Ord + std::ops::Add<Duration, Output = Self> + std::fmt::Debug {
    /// `self - earlier`, saturating at zero.
    fn since(self, earlier: Self) -> Duration;
}

impl Clock for std::time::Instant {
    fn since(self, earlier: Self) -> Duration {
        self.saturating_duration_since(earlier)
    }
}

impl Clock for Instant {
    fn since(self, earlier: Self) -> Duration {
        self.saturating_duration_since(earlier)
    }
}

impl<I: Clock> BindingTransaction<I> {
    /// A transaction with a fresh random id, whose first request is due at `now`.
    pub fn new(server: SocketAddr, schedule: &RetransmitSchedule, now: I) -> Self {
        Self::with_id(server, TransactionId::random(), schedule, now)
    }

    /// Same, with a chosen id (tests).
    pub fn with_id(
        server: SocketAddr,
        id: TransactionId,
        schedule: &RetransmitSchedule,
        now: I,
    ) -> Self {
        let budget = schedule.full_duration().min(schedule.timeout);
        BindingTransaction {
            server,
            id,
            request: stun::binding_request(id),
            rto: schedule.initial_rto,
            sends: 0,
            max_sends: schedule.max_sends.max(1),
            next_send: Some(now),
            deadline: now + budget,
            started: now,
            finished: false,
            ignored: 0,
            outcome: None,
        }
    }

    /// The server address this transaction talks to.
    pub fn server(&self) -> SocketAddr {
        self.server
    }

    /// The transaction id.
    pub fn id(&self) -> TransactionId {
        self.id
    }

    /// Requests sent so far.
    pub fn sends(&self) -> u32 {
        self.sends
    }

    /// The request to send now, if one is due. Schedules the next retransmission one
    /// RTO later and doubles the RTO.
    pub fn poll_transmit(&mut self, now: I) -> Option<Transmit<'_>> {
        if self.finished || now >= self.deadline {
            return None;
        }
        let due = self.next_send?;
        if now < due {
            return None;
        }
        self.sends += 1;
        self.next_send = (self.sends < self.max_sends).then(|| now + self.rto);
        self.rto = self.rto.saturating_mul(2);
        Some(Transmit {
            destination: self.server,
            payload: &self.request,
        })
    }

    /// When the machine next needs [`handle_timeout`](Self::handle_timeout) (and
    /// [`poll_transmit`](Self::poll_transmit)); `None` once it has an outcome.
    pub fn poll_timeout(&self) -> Option<I> {
        if self.finished {
            return None;
        }
        Some(match self.next_send {
            Some(send) => send.min(self.deadline),
            None => self.deadline,
        })
    }

    /// Gives up when the deadline has passed.
    pub fn handle_timeout(&mut self, now: I) {
        if !self.finished && now >= self.deadline {
            self.finish(Err(StunError::Timeout {
                after: now.since(self.started),
                sends: self.sends,
                ignored: self.ignored,
            }));
        }
    }

    /// Feeds a received datagram. Datagrams from another address, for another
    /// transaction, or that are not STUN at all are dropped; a matching success or
    /// error response ends the transaction.
    pub fn handle_datagram(&mut self, from: SocketAddr, bytes: &[u8]) {
        if self.finished || from != self.server {
            return;
        }
        match stun::parse_binding_response(bytes, self.id) {
            Ok(response) => self.finish(Ok(response)),
            Err(e) if e.is_ignorable() => {
                tracing::debug!(server = %self.server, "ignoring datagram: {e}");
                self.ignored = self.ignored.saturating_add(1);
            }
            Err(e) => self.finish(Err(StunError::Response(e))),
        }
    }

    fn finish(&mut self, outcome: Result<BindingResponse, StunError>) {
        self.finished = true;
        self.outcome = Some(outcome);
    }

    /// The result, once there is one (taken: later calls return `None`).
    pub fn poll_outcome(&mut self) -> Option<Result<BindingResponse, StunError>> {
        self.outcome.take()
    }
}

/// Runs one Binding transaction on `socket` (unconnected, so that the same socket can
/// ask several servers: that is what makes the mapping comparable).
pub async fn binding(
    socket: &UdpSocket,
    server: SocketAddr,
    schedule: &RetransmitSchedule,
) -> Result<BindingResponse, StunError> {
    let mut tx = BindingTransaction::new(server, schedule, Instant::now());
    let mut buf = vec![0u8; stun::MAX_MESSAGE_LEN + 1];
    loop {
        let now = Instant::now();
        tx.handle_timeout(now);
        while let Some(transmit) = tx.poll_transmit(now) {
            socket
                .send_to(transmit.payload, transmit.destination)
                .await
                .map_err(StunError::Send)?;
        }
        if let Some(outcome) = tx.poll_outcome() {
            return outcome;
        }
        let Some(wake) = tx.poll_timeout() else {
            continue;
        };
        tokio::select! {
            received = socket.recv_from(&mut buf) => match received {
                Ok((len, from)) => tx.handle_datagram(from, &buf[..len]),
                // An ICMP error from an earlier datagram can surface here on some
                // platforms; it says nothing certain about this server, so wait on.
                Err(e) if is_icmp_echo(&e) => {
                    tracing::debug!(%server, "ignoring socket error: {e}");
                }
                Err(e) => return Err(StunError::Receive(e)),
            },
            _ = tokio::time::sleep_until(wake) => {}
        }
    }
}

fn is_icmp_echo(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionReset
    )
}

/// What [`probe_nat`] needs to know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatProbeConfig {
    /// `host:port` of STUN servers, tried in order until one answers.
    pub servers: Vec<String>,
    /// Retransmission schedule and per-server timeout.
    pub schedule: RetransmitSchedule,
    /// Where to bind the local socket (port 0: any).
    pub bind_v4: SocketAddr,
    /// Same, for IPv6 servers.
    pub bind_v6: SocketAddr,
}

impl Default for NatProbeConfig {
    fn default() -> Self {
        NatProbeConfig {
            servers: super::DEFAULT_STUN_SERVERS
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
            schedule: RetransmitSchedule::default(),
            bind_v4: SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
            bind_v6: SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0),
        }
    }
}

impl NatProbeConfig {
    /// The defaults with another server list; a server named without a port gets
    /// [`STUN_PORT`](super::STUN_PORT).
    pub fn with_servers<S: Into<String>>(servers: impl IntoIterator<Item = S>) -> Self {
        NatProbeConfig {
            servers: servers
                .into_iter()
                .map(|s| super::with_default_stun_port(&s.into()))
                .collect(),
            ..Self::default()
        }
    }
}

/// The sockets of one probe: one per address family, bound on first use and then
/// reused, so that every server of a family sees the same local port.
struct ProbeSockets {
    bind_v4: SocketAddr,
    bind_v6: SocketAddr,
    v4: Option<UdpSocket>,
    v6: Option<UdpSocket>,
}

impl ProbeSockets {
    async fn for_server(&mut self, server: SocketAddr) -> Result<&UdpSocket, NatError> {
        let (slot, bind) = if server.is_ipv4() {
            (&mut self.v4, self.bind_v4)
        } else {
            (&mut self.v6, self.bind_v6)
        };
        if slot.is_none() {
            let socket = UdpSocket::bind(bind)
                .await
                .map_err(|source| NatError::Bind { addr: bind, source })?;
            *slot = Some(socket);
        }
        slot.as_ref().ok_or_else(|| NatError::Bind {
            addr: bind,
            source: io::ErrorKind::NotConnected.into(),
        })
    }
}

/// Resolves `host:port` within `limit`, IPv4 addresses first.
async fn resolve(server: &str, limit: Duration) -> Result<Vec<SocketAddr>, StunError> {
    let lookup = tokio::net::lookup_host(server);
    let resolved = tokio::time::timeout(limit, lookup)
        .await
        .map_err(|_| StunError::Resolve {
            server: server.to_owned(),
            reason: format!("no answer within {limit:?}"),
        })?
        .map_err(|e| StunError::Resolve {
            server: server.to_owned(),
            reason: e.to_string(),
        })?;
    let mut addrs: Vec<SocketAddr> = Vec::new();
    for addr in resolved {
        if !addrs.contains(&addr) {
            addrs.push(addr);
        }
    }
    addrs.sort_by_key(|a| a.is_ipv6());
    if addrs.is_empty() {
        return Err(StunError::Resolve {
            server: server.to_owned(),
            reason: "no addresses".to_owned(),
        });
    }
    Ok(addrs)
}

/// The local address the kernel would use to reach `server`, paired with `port`.
/// Connecting a throwaway UDP socket sends nothing; it only consults the routing table.
fn local_endpoint_towards(server: SocketAddr, port: u16) -> Option<SocketAddr> {
    let unspecified: IpAddr = if server.is_ipv4() {
        Ipv4Addr::UNSPECIFIED.into()
    } else {
        Ipv6Addr::UNSPECIFIED.into()
    };
    let probe = std::net::UdpSocket::bind(SocketAddr::new(unspecified, 0)).ok()?;
    probe.connect(server).ok()?;
    Some(SocketAddr::new(probe.local_addr().ok()?.ip(), port))
}

/// Finds the public address through the first server that answers, then asks a
/// second server address from the same socket and compares the two mappings.
///
/// The second address is, in order: the first server's RFC 5780 OTHER-ADDRESS IP with
/// the primary port (RFC 5780 §4.3 test II), then the next servers in the list whose IP
/// differs from the first one's. Fails only when nothing could be tried at all (no
/// servers, none resolvable, no socket); a probe where every server stayed silent is a
/// report with [`NatBehaviour::UdpBlocked`].
pub async fn probe_nat(config: &NatProbeConfig) -> Result<NatReport, NatError> {
    if config.servers.is_empty() {
        return Err(NatError::NoServers);
    }
    let started = Instant::now();
    let schedule = &config.schedule;
    let mut sockets = ProbeSockets {
        bind_v4: config.bind_v4,
        bind_v6: config.bind_v6,
        v4: None,
        v6: None,
    };
    let mut attempts: Vec<ServerAttempt> = Vec::new();
    let mut remaining = config.servers.iter().enumerate();
    let mut primary: Option<(usize, SocketAddr, BindingResponse)> = None;

    // Phase 1: the first server that answers.
    'servers: for (index, server) in remaining.by_ref() {
        let addrs = match resolve(server, schedule.timeout).await {
            Ok(addrs) => addrs,
            Err(e) => {
                attempts.push(ServerAttempt::failed(server, None, e, Duration::ZERO));
                continue;
            }
        };
        for addr in addrs {
            let socket = sockets.for_server(addr).await?;
            let asked = Instant::now();
            let outcome = binding(socket, addr, schedule).await;
            let elapsed = asked.elapsed();
            match outcome {
                Ok(response) => {
                    attempts.push(ServerAttempt::answered(
                        server,
                        addr,
                        response.mapped,
                        elapsed,
                    ));
                    primary = Some((index, addr, response));
                    break 'servers;
                }
                Err(e) => attempts.push(ServerAttempt::failed(server, Some(addr), e, elapsed)),
            }
        }
    }

    let Some((primary_index, primary_addr, response)) = primary else {
        let sent_any = attempts.iter().any(ServerAttempt::sent_request);
        if !sent_any {
            return Err(NatError::NoServerUsable { attempts });
        }
        return Ok(NatReport {
            behaviour: NatBehaviour::UdpBlocked,
            public: None,
            local: None,
            server: None,
            second: None,
            attempts,
            elapsed: started.elapsed(),
        });
    };

    let socket = sockets.for_server(primary_addr).await?;
    let local_port = socket
        .local_addr()
        .map_err(|source| NatError::Bind {
            addr: config.bind_v4,
            source,
        })?
        .port();
    let local = local_endpoint_towards(primary_addr, local_port);
    let public = response.mapped;

    // No translation on the path: nothing to compare.
    if local == Some(public) {
        return Ok(NatReport {
            behaviour: NatBehaviour::NoNat,
            public: Some(public),
            local,
            server: Some(primary_addr),
            second: None,
            attempts,
            elapsed: started.elapsed(),
        });
    }

    // Phase 2: a second server address, same socket, different IP.
    let mut candidates: Vec<(String, SocketAddr)> = Vec::new();
    if let Some(other) = response.other_address {
        if other.ip() != primary_addr.ip() && other.is_ipv4() == primary_addr.is_ipv4() {
            let test_two = SocketAddr::new(other.ip(), primary_addr.port());
            let label = format!("OTHER-ADDRESS of {}", config.servers[primary_index]);
            candidates.push((label, test_two));
        }
    }
    let mut second = None;
    let mut tried = 0usize;
    let mut later = remaining.map(|(_, s)| s);
    loop {
        if tried >= 2 {
            break;
        }
        let (label, addr) = match candidates.pop() {
            Some(candidate) => candidate,
            None => {
                let Some(server) = later.next() else { break };
                match resolve(server, schedule.timeout).await {
                    Ok(addrs) => {
                        for addr in addrs.into_iter().rev() {
                            if addr.ip() != primary_addr.ip()
                                && addr.is_ipv4() == primary_addr.is_ipv4()
                            {
                                candidates.push((server.clone(), addr));
                            }
                        }
                    }
                    Err(e) => attempts.push(ServerAttempt::failed(server, None, e, Duration::ZERO)),
                }
                continue;
            }
        };
        tried += 1;
        let asked = Instant::now();
        let outcome = binding(socket, addr, schedule).await;
        let elapsed = asked.elapsed();
        match outcome {
            Ok(r) => {
                attempts.push(ServerAttempt::answered(&label, addr, r.mapped, elapsed));
                second = Some((addr, r.mapped));
                break;
            }
            Err(e) => attempts.push(ServerAttempt::failed(&label, Some(addr), e, elapsed)),
        }
    }

    let behaviour = match second {
        Some((_, mapped)) if mapped == public => NatBehaviour::EndpointIndependent,
        Some(_) => NatBehaviour::EndpointDependent,
        None => NatBehaviour::Undetermined,
    };
    Ok(NatReport {
        behaviour,
        public: Some(public),
        local,
        server: Some(primary_addr),
        second,
        attempts,
        elapsed: started.elapsed(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nat::stun::{attr, BindingResponseError, Class, MessageBuilder, METHOD_BINDING};
    use std::time::Instant as StdInstant;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn requests_follow_the_doubling_rto_until_the_per_server_timeout() {
        let schedule = RetransmitSchedule {
            timeout: Duration::from_secs(60),
            ..RetransmitSchedule::default()
        };
        let t0 = StdInstant::now();
        let mut tx = BindingTransaction::new("192.0.2.1:3478".parse().unwrap(), &schedule, t0);
        let mut sent_at = Vec::new();
        let mut now = t0;
        loop {
            tx.handle_timeout(now);
            while tx.poll_transmit(now).is_some() {
                sent_at.push(now.duration_since(t0).as_millis());
            }
            if let Some(outcome) = tx.poll_outcome() {
                let Err(StunError::Timeout { after, sends, .. }) = outcome else {
                    panic!("expected a timeout, got {outcome:?}");
                };
                assert_eq!((after, sends), (ms(39_500), 7));
                break;
            }
            now = tx.poll_timeout().unwrap();
        }
        assert_eq!(sent_at, [0, 500, 1500, 3500, 7500, 15500, 31500]);
    }

    #[test]
    fn the_per_server_timeout_caps_the_schedule() {
        let t0 = StdInstant::now();
        let mut tx = BindingTransaction::new(
            "192.0.2.1:3478".parse().unwrap(),
            &RetransmitSchedule::default(),
            t0,
        );
        let mut now = t0;
        let mut sends = 0;
        while tx.poll_outcome().is_none() {
            tx.handle_timeout(now);
            while tx.poll_transmit(now).is_some() {
                sends += 1;
            }
            match tx.poll_timeout() {
                Some(next) => now = next,
                None => break,
            }
        }
        assert_eq!(sends, 3);
        assert_eq!(now.duration_since(t0), ms(2000));
    }

    #[test]
    fn only_the_matching_answer_from_the_asked_server_completes_it() {
        let server: SocketAddr = "192.0.2.1:3478".parse().unwrap();
        let t0 = StdInstant::now();
        let mut tx = BindingTransaction::new(server, &RetransmitSchedule::default(), t0);
        assert!(tx.poll_transmit(t0).is_some());
        let mapped: SocketAddr = "203.0.113.9:5000".parse().unwrap();
        let answer = |id| {
            MessageBuilder::new(Class::SuccessResponse, METHOD_BINDING, id)
                .xor_mapped_address(mapped)
                .finish()
        };
        // Wrong transaction id, wrong source, garbage: all ignored.
        tx.handle_datagram(server, &answer(TransactionId([7; 12])));
        tx.handle_datagram("192.0.2.99:3478".parse().unwrap(), &answer(tx.id()));
        tx.handle_datagram(server, b"hello");
        assert!(tx.poll_outcome().is_none());
        tx.handle_datagram(server, &answer(tx.id()));
        assert_eq!(tx.poll_outcome().unwrap().unwrap().mapped, mapped);
        assert!(tx.poll_timeout().is_none());
    }

    #[test]
    fn an_error_response_ends_the_transaction() {
        let server: SocketAddr = "192.0.2.1:3478".parse().unwrap();
        let t0 = StdInstant::now();
        let mut tx = BindingTransaction::new(server, &RetransmitSchedule::default(), t0);
        let _ = tx.poll_transmit(t0);
        let error = MessageBuilder::new(Class::ErrorResponse, METHOD_BINDING, tx.id())
            .error_code(400, "Bad Request")
            .attribute(attr::SOFTWARE, b"x")
            .finish();
        tx.handle_datagram(server, &error);
        assert!(matches!(
            tx.poll_outcome(),
            Some(Err(StunError::Response(
                BindingResponseError::ErrorResponse { code: 400, .. }
            )))
        ));
    }
}
