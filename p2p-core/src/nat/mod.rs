//! What the network between us and the internet allows: the public address a NAT gives
//! us and how it maps ports, learned from STUN servers (RFC 8489, RFC 4787 vocabulary,
//! the RFC 5780 mapping test).
//!
//! This module owns the *meaning* of STUN answers — [`NatBehaviour`], the advice a user
//! gets, [`NatReport`] and the typed errors. The byte codec is [`stun`], the
//! retransmitting client and the probe that walks a server list are in [`client`].
//! Rendezvous, hole punching and TURN relaying are later work that will build on these;
//! the transfer layer never sees any of it.
//!
//! ```no_run
//! # async fn demo() -> Result<(), p2p_core::nat::NatError> {
//! use p2p_core::nat::{probe_nat, NatProbeConfig};
//!
//! let report = probe_nat(&NatProbeConfig::with_servers(["stun.example.net:3478"])).await?;
//! if let Some(public) = report.public {
//!     println!("public address {public}: {}", report.behaviour);
//! }
//! println!("{}", report.behaviour.advice());
//! # Ok(()) }
//! ```

pub mod client;
pub mod stun;
pub mod turn;

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

pub use client::{probe_nat, NatProbeConfig, RetransmitSchedule};
pub use stun::{BindingResponse, BindingResponseError, StunParseError};

/// The port STUN servers listen on (RFC 8489 §9), used when a server is named without
/// one.
pub const STUN_PORT: u16 = 3478;

/// `server` as `host:port`, with [`STUN_PORT`] when it names no port: `1.2.3.4`,
/// `stun.example.org`, `::1` and `[::1]` get it; `host:port` and `[v6]:port` are kept.
pub fn with_default_stun_port(server: &str) -> String {
    let server = server.trim();
    if server.parse::<SocketAddr>().is_ok() {
        return server.to_owned();
    }
    if let Ok(v6) = server.parse::<std::net::Ipv6Addr>() {
        return format!("[{v6}]:{STUN_PORT}");
    }
    if server.starts_with('[') && server.ends_with(']') {
        return format!("{server}:{STUN_PORT}");
    }
    match server.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => server.to_owned(),
        _ => format!("{server}:{STUN_PORT}"),
    }
}

/// Public STUN servers asked when the user names none. Two operators, and within
/// Google's pool two hosts on different IPs, so that the mapping test has a second
/// address even without RFC 5780 support. Tests never use these: they run their own
/// coturn.
pub const DEFAULT_STUN_SERVERS: &[&str] = &[
    "stun.l.google.com:19302",
    "stun1.l.google.com:19302",
    "stun.cloudflare.com:3478",
];

/// How the NAT (if any) between this host and the STUN servers maps our UDP socket, in
/// RFC 4787 terms, and so how well UDP hole punching can work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NatBehaviour {
    /// The server saw our own address and port: no translation on the path.
    NoNat,
    /// Two server addresses saw the same public address and port (a "cone" NAT).
    EndpointIndependent,
    /// Two server addresses saw different public ports or addresses ("symmetric" NAT).
    EndpointDependent,
    /// The public address is known, but no second server address answered, so the
    /// mapping could not be compared.
    Undetermined,
    /// No server answered at all: UDP is blocked (or every server is down).
    UdpBlocked,
}

impl NatBehaviour {
    /// Short name, as `nat-test` prints it.
    pub fn label(self) -> &'static str {
        match self {
            NatBehaviour::NoNat => "no NAT",
            NatBehaviour::EndpointIndependent => "endpoint-independent mapping (cone NAT)",
            NatBehaviour::EndpointDependent => "endpoint-dependent mapping (symmetric NAT)",
            NatBehaviour::Undetermined => "undetermined (only one server address answered)",
            NatBehaviour::UdpBlocked => "UDP blocked (no STUN server answered)",
        }
    }

    /// What this means for connecting two peers, in one or two sentences.
    pub fn advice(self) -> &'static str {
        match self {
            NatBehaviour::NoNat => {
                "Nothing translates your address: peers can connect to you directly, as long \
                 as no firewall drops incoming connections."
            }
            NatBehaviour::EndpointIndependent => {
                "Your NAT keeps the same public port whoever you talk to, so UDP hole \
                 punching should work with most peers."
            }
            NatBehaviour::EndpointDependent => {
                "Your NAT picks a new public port for every destination, so hole punching \
                 only works if the other peer's NAT is endpoint-independent; otherwise a \
                 relay (TURN) is needed."
            }
            NatBehaviour::Undetermined => {
                "Only one STUN server address answered, so the port mapping could not be \
                 compared; pass two --stun-server addresses on different IPs to find out."
            }
            NatBehaviour::UdpBlocked => {
                "No STUN server answered over UDP: a firewall probably blocks UDP, or the \
                 servers are unreachable. Direct TCP on the local network still works; \
                 across the internet a relay will be needed."
            }
        }
    }

    /// Whether direct UDP hole punching is worth trying from here.
    pub fn hole_punching_likely(self) -> bool {
        matches!(
            self,
            NatBehaviour::NoNat | NatBehaviour::EndpointIndependent
        )
    }
}

impl fmt::Display for NatBehaviour {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// Why one server did not give us a mapping.
#[derive(Debug, thiserror::Error)]
pub enum StunError {
    /// The host name did not resolve.
    #[error("cannot resolve {server}: {reason}")]
    Resolve {
        /// The `host:port` as given.
        server: String,
        /// Resolver message.
        reason: String,
    },
    /// No valid answer before the per-server timeout.
    #[error("{}", timeout_message(*after, *sends, *ignored))]
    Timeout {
        /// Time spent on this server.
        after: Duration,
        /// Requests sent (first one and retransmissions).
        sends: u32,
        /// Datagrams that came from the server but were no answer to our request (not
        /// STUN, another transaction, not a Binding response): it answers, badly.
        ignored: u32,
    },
    /// The server answered, but not with a usable mapping.
    #[error(transparent)]
    Response(BindingResponseError),
    /// The request could not be sent (no route, address family not supported, …).
    #[error("cannot send: {0}")]
    Send(#[source] io::Error),
    /// The socket failed while waiting.
    #[error("cannot receive: {0}")]
    Receive(#[source] io::Error),
}

impl StunError {
    /// Whether the next server is worth trying: true for all but local socket failures.
    pub fn is_transient(&self) -> bool {
        !matches!(self, StunError::Receive(_))
    }
}

/// Why a probe could not run at all.
#[derive(Debug, thiserror::Error)]
pub enum NatError {
    /// The server list was empty.
    #[error("no STUN server given")]
    NoServers,
    /// No request could be sent to any server (names did not resolve, no route).
    #[error("no STUN server could be asked: {}", summarise(attempts))]
    NoServerUsable {
        /// What happened with each server.
        attempts: Vec<ServerAttempt>,
    },
    /// The local UDP socket could not be opened.
    #[error("cannot open a UDP socket on {addr}: {source}")]
    Bind {
        /// The address we tried to bind.
        addr: SocketAddr,
        /// The OS error.
        source: io::Error,
    },
}

fn timeout_message(after: Duration, sends: u32, ignored: u32) -> String {
    match ignored {
        0 => format!("no answer within {after:.1?} ({} sent)", requests(sends)),
        n => format!(
            "no usable answer within {after:.1?} ({} sent; {n} {} that {} not a STUN answer \
             to it)",
            requests(sends),
            if n == 1 { "reply" } else { "replies" },
            if n == 1 { "was" } else { "were" },
        ),
    }
}

fn requests(n: u32) -> String {
    if n == 1 {
        "1 request".to_owned()
    } else {
        format!("{n} requests")
    }
}

fn summarise(attempts: &[ServerAttempt]) -> String {
    attempts
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// One server address asked during a probe, and what came of it.
#[derive(Debug)]
pub struct ServerAttempt {
    /// The server as configured (`host:port`).
    pub server: String,
    /// The resolved address asked, if resolution worked.
    pub addr: Option<SocketAddr>,
    /// Our mapped address as this server saw it, or why there is none.
    pub outcome: Result<SocketAddr, StunError>,
    /// Time spent on this address.
    pub elapsed: Duration,
}

impl ServerAttempt {
    fn answered(server: &str, addr: SocketAddr, mapped: SocketAddr, elapsed: Duration) -> Self {
        ServerAttempt {
            server: server.to_owned(),
            addr: Some(addr),
            outcome: Ok(mapped),
            elapsed,
        }
    }

    fn failed(server: &str, addr: Option<SocketAddr>, e: StunError, elapsed: Duration) -> Self {
        ServerAttempt {
            server: server.to_owned(),
            addr,
            outcome: Err(e),
            elapsed,
        }
    }

    /// Whether a request reached the wire (so silence means something).
    pub fn sent_request(&self) -> bool {
        match &self.outcome {
            Ok(_) => true,
            Err(StunError::Timeout { sends, .. }) => *sends > 0,
            Err(StunError::Response(_)) => true,
            Err(_) => false,
        }
    }
}

impl fmt::Display for ServerAttempt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.server)?;
        if let Some(addr) = self.addr {
            if addr.to_string() != self.server {
                write!(f, " ({addr})")?;
            }
        }
        match &self.outcome {
            Ok(mapped) => write!(f, ": saw us as {mapped} in {:.0?}", self.elapsed),
            Err(e) => write!(f, ": {e}"),
        }
    }
}

/// Everything a probe learned.
#[derive(Debug)]
pub struct NatReport {
    /// The verdict.
    pub behaviour: NatBehaviour,
    /// Our public (server-reflexive) address, from the first server that answered.
    pub public: Option<SocketAddr>,
    /// Our local address towards that server.
    pub local: Option<SocketAddr>,
    /// The server address that answered first.
    pub server: Option<SocketAddr>,
    /// The second server address and the mapping it saw, if the comparison ran.
    pub second: Option<(SocketAddr, SocketAddr)>,
    /// Every server address asked, in order.
    pub attempts: Vec<ServerAttempt>,
    /// Wall time of the whole probe.
    pub elapsed: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_without_a_port_gets_the_stun_port() {
        assert_eq!(with_default_stun_port("1.2.3.4"), "1.2.3.4:3478");
        assert_eq!(
            with_default_stun_port(" stun.example.org "),
            "stun.example.org:3478"
        );
        assert_eq!(with_default_stun_port("::1"), "[::1]:3478");
        assert_eq!(with_default_stun_port("[::1]"), "[::1]:3478");
        assert_eq!(with_default_stun_port("1.2.3.4:19302"), "1.2.3.4:19302");
        assert_eq!(
            with_default_stun_port("stun.example.org:5349"),
            "stun.example.org:5349"
        );
        assert_eq!(with_default_stun_port("[::1]:19302"), "[::1]:19302");
    }

    #[test]
    fn a_timeout_says_when_the_server_answered_badly() {
        let silent = StunError::Timeout {
            after: Duration::from_secs(2),
            sends: 3,
            ignored: 0,
        };
        assert_eq!(
            silent.to_string(),
            "no answer within 2.0s (3 requests sent)"
        );
        let garbled = StunError::Timeout {
            after: Duration::from_secs(2),
            sends: 3,
            ignored: 2,
        };
        assert_eq!(
            garbled.to_string(),
            "no usable answer within 2.0s (3 requests sent; 2 replies that were not a STUN \
             answer to it)"
        );
    }
}
