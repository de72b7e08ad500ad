//! Port mapping: asking the home router to forward a UDP port to this host, through
//! PCP (RFC 6887), NAT-PMP (RFC 6886) or UPnP IGD, where the router offers one of them.
//!
//! A forwarded port makes this side reachable from anywhere, whatever its NAT does to
//! other flows: two symmetric NATs, which otherwise meet only over the relay, get a
//! direct path when one of them maps a port. The address the router reports becomes a
//! *port-mapped* candidate ([`super::ice::CandidateKind::PortMapped`]).
//!
//! The protocols come from kept crates: `crab_nat` (PCP, falling back to NAT-PMP when
//! the router names that version) and `igd-next` (SSDP discovery and the SOAP calls of
//! UPnP IGD). [`map_udp`] asks PCP/NAT-PMP at the default gateway (from the routing
//! table) and searches for an IGD at the same time; the first that works wins, and
//! UPnP is only asked for a mapping when PCP/NAT-PMP did not give one, so the router
//! never holds two. All of it is bounded by [`MAP_WAIT`]: a network without any of them
//! costs at most that, and nothing at all with [`NO_PORTMAP_ENV`] set.
//!
//! The [`Mapping`] is renewed at half its lifetime while it is held, and removed from
//! the router when it is dropped (best effort: if the process ends first, the router
//! drops it when its lifetime runs out).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroU16;
use std::time::Duration;

use crab_nat::{InternetProtocol, PortMappingOptions, PortMappingType, TimeoutConfig};
use igd_next::aio::tokio::Tokio;
use igd_next::{PortMappingProtocol, SearchOptions};
use tokio::sync::oneshot;

/// Environment variable: `1` turns port mapping off (tests that must not touch the
/// host's router, or a person who does not want it).
pub const NO_PORTMAP_ENV: &str = "P2P_NO_PORTMAP";
/// How long [`map_udp`] may take in all.
pub const MAP_WAIT: Duration = Duration::from_millis(1000);
/// The first PCP/NAT-PMP request waits this long for an answer, the retry twice that.
const PMP_FIRST_WAIT: Duration = Duration::from_millis(250);
/// How long a removal may take when a mapping is dropped.
const REMOVE_WAIT: Duration = Duration::from_secs(2);
/// After a failed renewal, the next try comes this much later.
const RENEW_RETRY: Duration = Duration::from_secs(15);
/// Where SSDP searches go (UPnP's multicast group).
const SSDP: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(239, 255, 255, 250)), 1900);
/// The description a UPnP mapping carries on the router.
const DESCRIPTION: &str = "p2p-transfer";

/// Which protocol made a mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// UPnP IGD (WANIPConnection's AddPortMapping).
    Upnp,
    /// NAT-PMP (RFC 6886).
    NatPmp,
    /// PCP (RFC 6887), a MAP request.
    Pcp,
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Protocol::Upnp => "UPnP IGD",
            Protocol::NatPmp => "NAT-PMP",
            Protocol::Pcp => "PCP",
        })
    }
}

/// A UDP port the router forwards to this host: renewed while held, removed on drop.
#[derive(Debug)]
pub struct Mapping {
    /// The router's public address and the forwarded port.
    pub external: SocketAddr,
    /// How it was made.
    pub protocol: Protocol,
    /// Dropped with the mapping: tells the keeper to remove it.
    release: Option<oneshot::Sender<()>>,
    keeper: Option<tokio::task::JoinHandle<()>>,
}

impl Mapping {
    /// Removes the mapping from the router now, waiting for that (bounded). Dropping a
    /// mapping removes it too, but in the background: a process about to end calls this.
    pub async fn release(mut self) {
        drop(self.release.take());
        if let Some(keeper) = self.keeper.take() {
            let _ = tokio::time::timeout(REMOVE_WAIT, keeper).await;
        }
    }
}

/// Whether [`NO_PORTMAP_ENV`] turns port mapping off.
pub fn disabled() -> bool {
    off(std::env::var(NO_PORTMAP_ENV).ok().as_deref())
}

/// Whether a value of [`NO_PORTMAP_ENV`] turns port mapping off: any but unset, empty
/// or `0`.
fn off(value: Option<&str>) -> bool {
    value.is_some_and(|v| !v.is_empty() && v != "0")
}

/// Asks the router to forward UDP `local_port` (on this host's address towards it) for
/// `lifetime`, renewed while the [`Mapping`] lives. `None` within [`MAP_WAIT`] when no
/// router answers, refuses, or [`NO_PORTMAP_ENV`] is set. Needs a tokio runtime.
pub async fn map_udp(local_port: u16, lifetime: Duration) -> Option<Mapping> {
    if disabled() {
        return None;
    }
    let target = Target {
        gateway: default_gateway(),
        ssdp: SSDP,
    };
    map_udp_at(&target, local_port, lifetime).await
}

/// Where to ask: the PCP/NAT-PMP server (port 5351 of the gateway) and where SSDP
/// searches go.
struct Target {
    gateway: Option<Ipv4Addr>,
    ssdp: SocketAddr,
}

async fn map_udp_at(target: &Target, local_port: u16, lifetime: Duration) -> Option<Mapping> {
    let port = NonZeroU16::new(local_port)?;
    let lifetime_s = u32::try_from(lifetime.as_secs())
        .unwrap_or(u32::MAX)
        .max(60);
    let work = async {
        let pmp = async {
            match target.gateway {
                Some(gateway) => pmp_map(gateway, port, lifetime_s).await,
                None => None,
            }
        };
        let igd = search_igd(target);
        tokio::pin!(pmp, igd);
        let (mut pmp_done, mut found) = (false, None);
        loop {
            tokio::select! {
                held = &mut pmp, if !pmp_done => match held {
                    Some(held) => return Some(held),
                    None if found.is_some() => break,
                    None => pmp_done = true,
                },
                gateway = &mut igd, if found.is_none() => match gateway {
                    Some(gateway) if pmp_done => {
                        found = Some(gateway);
                        break;
                    }
                    Some(gateway) => found = Some(gateway),
                    // Neither answered.
                    None if pmp_done => return None,
                    // No IGD: only PCP/NAT-PMP can still give one.
                    None => return pmp.await,
                },
            }
        }
        upnp_map(found?, port, lifetime_s).await
    };
    let (external, protocol, held) = tokio::time::timeout(MAP_WAIT, work).await.ok()??;
    tracing::info!("port mapped through {protocol}: {external} -> local port {local_port}");
    let (release, released) = oneshot::channel();
    let keeper = tokio::spawn(keep(held, released));
    Some(Mapping {
        external,
        protocol,
        release: Some(release),
        keeper: Some(keeper),
    })
}

/// A mapping as the crate that made it holds it.
enum Held {
    Pmp(crab_nat::PortMapping),
    Upnp {
        gateway: Box<igd_next::aio::Gateway<Tokio>>,
        external_port: u16,
        local: SocketAddr,
        lifetime_s: u32,
    },
}

type Made = (SocketAddr, Protocol, Held);

/// PCP, or NAT-PMP when the router answers PCP with NAT-PMP's version.
async fn pmp_map(gateway: Ipv4Addr, port: NonZeroU16, lifetime_s: u32) -> Option<Made> {
    let client = local_ip_towards(IpAddr::V4(gateway))?;
    let timeouts = TimeoutConfig {
        initial_timeout: PMP_FIRST_WAIT,
        max_retries: 1,
        max_retry_timeout: None,
    };
    let options = PortMappingOptions {
        external_port: Some(port),
        lifetime_seconds: Some(lifetime_s),
        timeout_config: Some(timeouts),
    };
    let mapping =
        crab_nat::PortMapping::new(gateway.into(), client, InternetProtocol::Udp, port, options)
            .await
            .map_err(|e| tracing::debug!("no PCP/NAT-PMP mapping at {gateway}: {e}"))
            .ok()?;
    let (ip, protocol) = match mapping.mapping_type() {
        PortMappingType::Pcp { external_ip, .. } => (external_ip, Protocol::Pcp),
        PortMappingType::NatPmp => {
            match crab_nat::natpmp::external_address(gateway.into(), Some(timeouts)).await {
                Ok(ip) => (IpAddr::V4(ip), Protocol::NatPmp),
                Err(e) => {
                    tracing::debug!("NAT-PMP mapped a port but gave no address: {e}");
                    remove(Held::Pmp(mapping)).await;
                    return None;
                }
            }
        }
    };
    let external = SocketAddr::new(ip.to_canonical(), mapping.external_port().get());
    if !usable(external.ip()) {
        tracing::debug!("{protocol} reported an unusable address {external}");
        remove(Held::Pmp(mapping)).await;
        return None;
    }
    Some((external, protocol, Held::Pmp(mapping)))
}

/// An IGD found by SSDP (nothing is mapped yet).
async fn search_igd(target: &Target) -> Option<igd_next::aio::Gateway<Tokio>> {
    let bind_ip = target
        .gateway
        .and_then(|g| local_ip_towards(IpAddr::V4(g)))
        .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    let mut options = SearchOptions::default();
    options.bind_addr = SocketAddr::new(bind_ip, 0);
    options.broadcast_address = target.ssdp;
    options.timeout = Some(MAP_WAIT);
    options.single_search_timeout = Some(MAP_WAIT);
    igd_next::aio::tokio::search_gateway(options)
        .await
        .map_err(|e| tracing::debug!("no UPnP IGD: {e}"))
        .ok()
}

/// AddPortMapping on the IGD: the same external port as the local one if free, else
/// any. Routers that only take permanent leases are not used (a crash would leave the
/// port open for good).
async fn upnp_map(
    gateway: igd_next::aio::Gateway<Tokio>,
    port: NonZeroU16,
    lifetime_s: u32,
) -> Option<Made> {
    let ip = gateway
        .get_external_ip()
        .await
        .map_err(|e| tracing::debug!("UPnP IGD gave no external address: {e}"))
        .ok()?
        .to_canonical();
    if !usable(ip) {
        tracing::debug!("UPnP IGD reported an unusable address {ip}");
        return None;
    }
    let local = SocketAddr::new(local_ip_towards(gateway.addr.ip())?, port.get());
    let udp = PortMappingProtocol::UDP;
    let external_port = match gateway
        .add_port(udp, port.get(), local, lifetime_s, DESCRIPTION)
        .await
    {
        Ok(()) => port.get(),
        Err(e) => {
            tracing::debug!("UPnP AddPortMapping of {port} failed ({e}); asking for any port");
            gateway
                .add_any_port(udp, local, lifetime_s, DESCRIPTION)
                .await
                .map_err(|e| tracing::debug!("UPnP mapping failed: {e}"))
                .ok()?
        }
    };
    Some((
        SocketAddr::new(ip, external_port),
        Protocol::Upnp,
        Held::Upnp {
            gateway: Box::new(gateway),
            external_port,
            local,
            lifetime_s,
        },
    ))
}

/// An address a peer elsewhere could send to.
fn usable(ip: IpAddr) -> bool {
    !(ip.is_unspecified() || ip.is_loopback() || ip.is_multicast())
}

/// Renews `held` at half its lifetime until the [`Mapping`] is dropped, then removes it.
async fn keep(mut held: Held, mut released: oneshot::Receiver<()>) {
    let mut wait = renew_after(&held);
    loop {
        tokio::select! {
            _ = &mut released => break,
            _ = tokio::time::sleep(wait) => {
                wait = match renew(&mut held).await {
                    Ok(()) => renew_after(&held),
                    Err(e) => {
                        tracing::debug!("renewing the port mapping failed: {e}");
                        RENEW_RETRY
                    }
                };
            }
        }
    }
    remove(held).await;
}

fn renew_after(held: &Held) -> Duration {
    let lifetime_s = match held {
        Held::Pmp(m) => m.lifetime(),
        Held::Upnp { lifetime_s, .. } => *lifetime_s,
    };
    Duration::from_secs(u64::from(lifetime_s / 2).max(30))
}

async fn renew(held: &mut Held) -> Result<(), String> {
    match held {
        Held::Pmp(mapping) => mapping.renew().await.map_err(|e| e.to_string()),
        Held::Upnp {
            gateway,
            external_port,
            local,
            lifetime_s,
        } => gateway
            .add_port(
                PortMappingProtocol::UDP,
                *external_port,
                *local,
                *lifetime_s,
                DESCRIPTION,
            )
            .await
            .map_err(|e| e.to_string()),
    }
}

/// Removes a mapping from the router, within [`REMOVE_WAIT`], best effort.
async fn remove(held: Held) {
    let work = async {
        match held {
            Held::Pmp(mapping) => mapping.try_drop().await.map_err(|(e, _)| e.to_string()),
            Held::Upnp {
                gateway,
                external_port,
                ..
            } => gateway
                .remove_port(PortMappingProtocol::UDP, external_port)
                .await
                .map_err(|e| e.to_string()),
        }
    };
    match tokio::time::timeout(REMOVE_WAIT, work).await {
        Ok(Ok(())) => tracing::debug!("port mapping removed"),
        Ok(Err(e)) => tracing::debug!("removing the port mapping failed: {e}"),
        Err(_) => tracing::debug!("removing the port mapping: no answer"),
    }
}

/// This host's address on the way to `peer` (no packet is sent).
fn local_ip_towards(peer: IpAddr) -> Option<IpAddr> {
    let any: SocketAddr = match peer {
        IpAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        IpAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = std::net::UdpSocket::bind(any).ok()?;
    socket.connect((peer, crab_nat::GATEWAY_PORT)).ok()?;
    Some(socket.local_addr().ok()?.ip())
}

/// The IPv4 default gateway from the routing table (Linux: `/proc/net/route`); `None`
/// elsewhere or without a default route.
fn default_gateway() -> Option<Ipv4Addr> {
    let table = std::fs::read_to_string("/proc/net/route").ok()?;
    gateway_from_route_table(&table)
}

/// The gateway of the default route with the lowest metric in a `/proc/net/route`
/// table (hex fields in the host's byte order).
fn gateway_from_route_table(table: &str) -> Option<Ipv4Addr> {
    const RTF_UP: u32 = 0x1;
    const RTF_GATEWAY: u32 = 0x2;
    let hex = |s: &str| u32::from_str_radix(s, 16).ok();
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (destination, gateway, flags) = (
                hex(fields.get(1)?)?,
                hex(fields.get(2)?)?,
                hex(fields.get(3)?)?,
            );
            let metric: u32 = fields.get(6)?.parse().ok()?;
            let mask = hex(fields.get(7)?)?;
            let default = destination == 0 && mask == 0;
            let up = flags & (RTF_UP | RTF_GATEWAY) == RTF_UP | RTF_GATEWAY;
            (default && up && gateway != 0).then(|| (metric, Ipv4Addr::from(gateway.to_ne_bytes())))
        })
        .min_by_key(|(metric, _)| *metric)
        .map(|(_, gateway)| gateway)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_gateway_comes_from_the_route_table() {
        let g = |ip: [u8; 4]| format!("{:08X}", u32::from_ne_bytes(ip));
        let table = format!(
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
             eth0\t00000000\t{}\t0003\t0\t0\t600\t00000000\t0\t0\t0\n\
             eth0\t{}\t00000000\t0001\t0\t0\t0\t{}\t0\t0\t0\n\
             wlan0\t00000000\t{}\t0003\t0\t0\t100\t00000000\t0\t0\t0\n",
            g([192, 168, 1, 1]),
            g([192, 168, 1, 0]),
            g([255, 255, 255, 0]),
            g([10, 200, 1, 1]),
        );
        assert_eq!(
            gateway_from_route_table(&table),
            Some(Ipv4Addr::new(10, 200, 1, 1))
        );
        // A down route, or none to a gateway: no gateway.
        let down = format!(
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\n\
             eth0\t00000000\t{}\t0002\t0\t0\t0\t00000000\n",
            g([192, 168, 1, 1])
        );
        assert_eq!(gateway_from_route_table(&down), None);
        assert_eq!(gateway_from_route_table("Iface\tDestination\n"), None);
        assert_eq!(gateway_from_route_table("garbage\nx y z\n"), None);
    }

    /// A "router" on a loopback address that takes PCP/NAT-PMP and SSDP packets and
    /// never answers: `map_udp` gives up within its bound. Only loopback is touched.
    #[tokio::test]
    async fn a_silent_gateway_gives_none_within_the_bound() {
        let ip = Ipv4Addr::new(127, 77, 0, 1);
        // Held open so the requests are swallowed (no ICMP refusal to end them early);
        // if the port is taken, the requests are refused instead, and must end too.
        let _pmp = std::net::UdpSocket::bind((ip, crab_nat::GATEWAY_PORT));
        let ssdp = std::net::UdpSocket::bind((ip, 0)).expect("bind a loopback socket");
        let target = Target {
            gateway: Some(ip),
            ssdp: ssdp.local_addr().expect("address"),
        };
        let started = std::time::Instant::now();
        let mapping = map_udp_at(&target, 40000, Duration::from_secs(120)).await;
        let took = started.elapsed();
        assert!(mapping.is_none());
        assert!(took < Duration::from_millis(1500), "took {took:?}");
        // It did ask: the SSDP search reached the "router".
        ssdp.set_nonblocking(true).expect("nonblocking");
        let mut buf = [0u8; 1500];
        let (n, _) = ssdp.recv_from(&mut buf).expect("an SSDP search arrived");
        assert!(buf[..n].starts_with(b"M-SEARCH"));
    }

    #[test]
    fn the_environment_variable_turns_it_off() {
        assert!(off(Some("1")) && off(Some("yes")));
        assert!(!off(None) && !off(Some("")) && !off(Some("0")));
        // Set for the whole test process (only ever turned on here): `map_udp` then
        // returns before it touches the network.
        std::env::set_var(NO_PORTMAP_ENV, "1");
        assert!(disabled());
    }
}
