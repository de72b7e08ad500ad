//! `p2p-transfer nat-test`: asks STUN servers for this host's public address and the
//! NAT's port-mapping behaviour, and says what that means for connecting to peers.
//!
//! The probing (retransmission, server fallback, the mapping comparison) is
//! `p2p_core::nat`; this file only turns flags into a [`NatProbeConfig`] and a
//! [`NatReport`](p2p_core::nat::NatReport) into lines on stdout.

use std::time::Duration;

use clap::Args;
use p2p_core::nat::{
    probe_nat, NatBehaviour, NatProbeConfig, RetransmitSchedule, ServerAttempt, StunError,
};

#[derive(Debug, Args)]
pub struct NatTestArgs {
    /// STUN server to ask (`host`, or `host:port`; the port defaults to 3478); repeat
    /// to give fallbacks (and a second address for the mapping test). Default:
    /// well-known public servers.
    #[arg(long = "stun-server", value_name = "HOST[:PORT]")]
    pub stun_servers: Vec<String>,
    /// Seconds to wait for each server before trying the next.
    #[arg(long, default_value_t = 2.0, value_name = "SECONDS",
          value_parser = parse_timeout)]
    pub timeout: f64,
}

fn parse_timeout(s: &str) -> Result<f64, String> {
    let seconds: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if seconds.is_finite() && (0.05..=60.0).contains(&seconds) {
        Ok(seconds)
    } else {
        Err("must be between 0.05 and 60 seconds".to_owned())
    }
}

pub async fn run(args: NatTestArgs) -> anyhow::Result<()> {
    let mut config = if args.stun_servers.is_empty() {
        NatProbeConfig::default()
    } else {
        NatProbeConfig::with_servers(args.stun_servers.iter().cloned())
    };
    config.schedule = RetransmitSchedule {
        timeout: Duration::from_secs_f64(args.timeout),
        ..RetransmitSchedule::default()
    };
    eprintln!("asking {} …", config.servers.join(", "));
    let report = probe_nat(&config).await?;

    for attempt in &report.attempts {
        println!("server           {attempt}");
    }
    match report.public {
        Some(public) => println!("public address   {public}"),
        None => println!("public address   unknown"),
    }
    if let Some(local) = report.local {
        println!("local address    {local}");
    }
    println!("mapping          {}", report.behaviour);
    println!("advice           {}", report.behaviour.advice());
    println!("answered in      {} ms", report.elapsed.as_millis());

    if report.behaviour == NatBehaviour::UdpBlocked {
        // Exit code 4: a server answered, but nothing usable came of it.
        if let Some(attempt) = report.attempts.iter().find(|a| answered_badly(a)) {
            let server = attempt
                .addr
                .map_or_else(|| attempt.server.clone(), |a| a.to_string());
            let why = match &attempt.outcome {
                Err(e) => e.to_string(),
                Ok(_) => String::new(),
            };
            return Err(crate::exit::Incompatible(format!(
                "the STUN server {server} answered, but not with this host's address: {why}"
            ))
            .into());
        }
        // Exit code 3 ("could not connect"): nobody answered.
        return Err(p2p_core::Error::Connect {
            action: "get an answer from",
            addr: "any STUN server".to_owned(),
            source: std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "UDP seems blocked, or every server is down",
            ),
        }
        .into());
    }
    Ok(())
}

/// Whether a server answered, but not usably: an error response, an answer without an
/// address, or only datagrams that were no answer to the request.
fn answered_badly(attempt: &ServerAttempt) -> bool {
    matches!(
        attempt.outcome,
        Err(StunError::Response(_)) | Err(StunError::Timeout { ignored: 1.., .. })
    )
}
