//! `p2p-transfer peers`, and the two discovery hooks of the transfer commands: the
//! beacon a waiting `receive` sends, and the receiver lookup behind `send --discover`.
//!
//! Beacons, probes and the choice among receivers are `p2p_core::discovery`; this file
//! reads flags and the environment (`P2P_DISCOVERY_PORT`, `P2P_DISCOVERY_TARGETS`, and
//! [`TIMEOUT_ENV`] for how long `send --discover` and `receive CODE` look) and prints.
//! Finding nobody is exit code 3 (could not connect), several matching receivers 2
//! (name one), see `crate::exit`. A beacon's name is whatever its sender chose: it is shown escaped
//! (`p2p_core::text`), here and in `PeerInfo`'s `Display`.

use std::time::Duration;

use anyhow::Context;
use clap::Args;
use p2p_core::discovery::{self, Beacon, DiscoveryConfig, PeerInfo};
use p2p_core::net::Endpoint;
use p2p_core::SessionOptions;

/// How long `send --discover` listens before it gives up: two beacon intervals and a
/// margin, although a receiver normally answers the opening probe within milliseconds.
pub const DISCOVER_TIMEOUT: Duration = Duration::from_secs(5);

/// Seconds `send --discover` and `receive CODE` look before giving up, instead of
/// [`DISCOVER_TIMEOUT`] (a fraction such as `0.5` is fine; tests use short ones).
pub const TIMEOUT_ENV: &str = "P2P_DISCOVERY_TIMEOUT";

/// How long to look for a receiver or sender: [`TIMEOUT_ENV`], or the default.
fn discover_timeout() -> anyhow::Result<Duration> {
    match std::env::var(TIMEOUT_ENV) {
        Err(std::env::VarError::NotPresent) => Ok(DISCOVER_TIMEOUT),
        Ok(text) => parse_seconds(&text)
            .map(Duration::from_secs_f64)
            .map_err(|e| crate::exit::Usage(format!("{TIMEOUT_ENV}={text:?}: {e}")).into()),
        Err(e) => Err(crate::exit::Usage(format!("{TIMEOUT_ENV}: {e}")).into()),
    }
}

#[derive(Debug, Args)]
pub struct PeersArgs {
    /// Seconds to listen for receivers.
    #[arg(long, default_value_t = 2.5, value_name = "SECONDS",
          value_parser = parse_seconds)]
    pub timeout: f64,
}

fn parse_seconds(s: &str) -> Result<f64, String> {
    let seconds: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if seconds.is_finite() && (0.0..=3600.0).contains(&seconds) {
        Ok(seconds)
    } else {
        Err("must be between 0 and 3600 seconds".to_owned())
    }
}

pub async fn run(args: PeersArgs) -> anyhow::Result<()> {
    let config = DiscoveryConfig::from_env()?;
    let peers = discovery::browse_with(&config, Duration::from_secs_f64(args.timeout)).await?;
    if peers.is_empty() {
        eprintln!(
            "no receivers found within {} s (UDP port {})",
            args.timeout, config.port
        );
        return Ok(());
    }
    println!(
        "{:<24} {:<10} {:<22} {:<8} PROTOCOL",
        "NAME", "ID", "ADDRESS", "CODE"
    );
    for peer in peers {
        let compatible = if peer.is_compatible() {
            ""
        } else {
            " (incompatible)"
        };
        let code = peer
            .nameplate
            .map_or_else(|| "-".to_owned(), |n| format!("{n}-…"));
        println!(
            "{:<24} {:<10} {:<22} {:<8} v{}{compatible}",
            p2p_core::text::Printable(&peer.name),
            peer.short_id(),
            peer.addr.to_string(),
            code,
            peer.protocol_version
        );
    }
    Ok(())
}

/// Starts announcing a listening endpoint on the LAN, with this device's id and the
/// nameplate of the code it waits for. Discovery is a convenience: when it cannot start,
/// the program says so and waits anyway. A loopback listener announces on the loopback
/// network only (see `Announcer::for_listener`).
pub fn announce(endpoint: &mut Endpoint, options: &SessionOptions, nameplate: Option<u16>) {
    let beacon = Beacon::new(options.security.device_id(), &options.device_name, 1)
        .with_nameplate(nameplate);
    let name = beacon.name.clone();
    let started = DiscoveryConfig::from_env()
        .and_then(|config| endpoint.announce(beacon, &config).map(|()| config.port));
    match started {
        Ok(discovery_port) => {
            eprintln!("announcing \"{name}\" on the local network (UDP port {discovery_port})")
        }
        Err(e) => eprintln!("warning: not announcing on the local network: {e}"),
    }
}

/// Finds the receiver `query` names (`None` or empty: the only one there).
pub async fn discover(query: Option<&str>) -> anyhow::Result<PeerInfo> {
    let query = query.map(str::trim).filter(|q| !q.is_empty());
    eprintln!(
        "looking for {} on the local network …",
        query.map_or("a receiver".to_owned(), |q| format!("receiver {q:?}"))
    );
    let config = DiscoveryConfig::from_env()?;
    let peer = discovery::find_with(&config, query, discover_timeout()?)
        .await
        .context("discovery failed")?;
    eprintln!("found {peer}");
    Ok(peer)
}

/// Finds the peer waiting for a code with this nameplate.
pub async fn discover_code(nameplate: u16) -> anyhow::Result<PeerInfo> {
    eprintln!("looking for the sender of code {nameplate}-… on the local network …");
    let config = DiscoveryConfig::from_env()?;
    let peer = discovery::find_nameplate(&config, nameplate, discover_timeout()?)
        .await
        .context("discovery failed")?;
    eprintln!("found {peer}");
    Ok(peer)
}
