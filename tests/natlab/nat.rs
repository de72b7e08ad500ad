//! `nat-test` behind each kind of router. The lab's STUN server is coturn on 10.200.0.2
//! and 10.200.0.3 (port 3478); host h1 sits behind router rt1, whose public (WAN)
//! address is 10.200.0.11.

use std::net::SocketAddr;
use std::process::Output;
use std::time::{Duration, Instant};

use crate::lab::{run, Lab};

const STUN: &str = "10.200.0.2:3478";
const ROUTER_WAN: &str = "10.200.0.11";

/// What one `nat-test` run printed.
struct NatTest {
    output: Output,
    stdout: String,
    took: Duration,
}

impl NatTest {
    fn field(&self, name: &str) -> &str {
        self.stdout
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
            .unwrap_or_else(|| panic!("no {name:?} line in:\n{}", self.stdout))
    }

    fn public(&self) -> SocketAddr {
        self.field("public address")
            .parse()
            .expect("public address")
    }

    fn mapping(&self) -> &str {
        self.field("mapping")
    }

    fn code(&self) -> Option<i32> {
        self.output.status.code()
    }
}

fn nat_test(lab: &Lab, node: &str, servers: &[&str]) -> NatTest {
    let mut command = lab.p2p(node);
    command.arg("nat-test");
    for server in servers {
        command.args(["--stun-server", server]);
    }
    let started = Instant::now();
    let output = run(&mut command, Duration::from_secs(30));
    let took = started.elapsed();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    eprintln!(
        "[{}] nat-test {servers:?} in {node}: exit {:?} after {took:.2?}\n{stdout}{}",
        lab.prefix(),
        output.status.code(),
        String::from_utf8_lossy(&output.stderr)
    );
    NatTest {
        output,
        stdout,
        took,
    }
}

#[test]
fn behind_a_masquerading_router_the_mapping_is_endpoint_independent() {
    let Some(lab) = Lab::up(&["nat", "cone"]) else {
        return;
    };
    let result = nat_test(&lab, "h1", &[STUN]);
    assert_eq!(result.code(), Some(0));
    assert_eq!(result.public().ip().to_string(), ROUTER_WAN);
    assert!(
        result.mapping().starts_with("endpoint-independent"),
        "{}",
        result.mapping()
    );
    eprintln!("answered in {:.0?} (target: 1 s)", result.took);
}

#[test]
fn behind_a_fully_random_router_the_mapping_is_symmetric() {
    let Some(lab) = Lab::up(&["nat", "symmetric"]) else {
        return;
    };
    let result = nat_test(&lab, "h1", &[STUN]);
    assert_eq!(result.code(), Some(0));
    assert_eq!(result.public().ip().to_string(), ROUTER_WAN);
    assert!(
        result.mapping().starts_with("endpoint-dependent"),
        "{}",
        result.mapping()
    );
}

#[test]
fn behind_a_port_randomising_router_the_mapping_is_symmetric() {
    // `masquerade random`: the port is a hash that includes the destination.
    let Some(lab) = Lab::up(&["nat", "random"]) else {
        return;
    };
    let result = nat_test(&lab, "h1", &[STUN]);
    assert_eq!(result.code(), Some(0));
    assert!(
        result.mapping().starts_with("endpoint-dependent"),
        "{}",
        result.mapping()
    );
}

#[test]
fn with_udp_dropped_nat_test_reports_blocked_and_fails() {
    let Some(lab) = Lab::up(&["nat", "blocked"]) else {
        return;
    };
    let result = nat_test(&lab, "h1", &[STUN]);
    assert_eq!(result.code(), Some(3), "exit code 3: could not connect");
    assert!(
        result.mapping().starts_with("UDP blocked"),
        "{}",
        result.mapping()
    );
    assert_eq!(result.field("public address"), "unknown");
}

#[test]
fn a_routed_path_without_nat_is_reported_as_no_nat() {
    let Some(lab) = Lab::up(&["nat", "open"]) else {
        return;
    };
    let result = nat_test(&lab, "h1", &[STUN]);
    assert_eq!(result.code(), Some(0));
    assert_eq!(result.public().ip().to_string(), "10.200.1.2");
    assert_eq!(result.mapping(), "no NAT");
}

#[test]
fn a_dead_first_server_falls_back_to_the_next() {
    let Some(lab) = Lab::up(&["nat", "cone"]) else {
        return;
    };
    // Nothing listens on port 3400: the first server stays silent.
    let result = nat_test(&lab, "h1", &["10.200.0.2:3400", STUN]);
    assert_eq!(result.code(), Some(0));
    assert!(
        result.stdout.contains("10.200.0.2:3400: no answer"),
        "{}",
        result.stdout
    );
    assert_eq!(result.public().ip().to_string(), ROUTER_WAN);
    assert!(result.mapping().starts_with("endpoint-independent"));
    eprintln!(
        "answered after fallback in {:.2?} (target: 5 s)",
        result.took
    );
}

#[test]
fn two_hosts_behind_two_different_nats_see_their_own_router() {
    // The topology hole punching will be tested on.
    let Some(lab) = Lab::up(&["pair", "cone", "symmetric"]) else {
        return;
    };
    let h1 = nat_test(&lab, "h1", &[STUN]);
    let h2 = nat_test(&lab, "h2", &[STUN]);
    assert_eq!(h1.public().ip().to_string(), "10.200.0.11");
    assert_eq!(h2.public().ip().to_string(), "10.200.0.12");
    assert!(h1.mapping().starts_with("endpoint-independent"));
    assert!(h2.mapping().starts_with("endpoint-dependent"));
}
