//! Port mapping in the lab (issue 13): miniupnpd on h1's router answers PCP, NAT-PMP
//! and UPnP IGD. Both routers are symmetric NATs — a pair that otherwise meets only
//! over the relay (`traversal::two_symmetric_nats_complete_over_the_relay`) — yet the
//! port h1's router forwards gives h2 an address that reaches h1, so the transfer runs
//! on a direct path from the start.
//!
//! miniupnpd refuses to forward when its WAN address is private (all of 10.200.0.0/16
//! is), so the test gives rt1 one more address, [`PUBLIC_IP`], routed to it by inet, and
//! tells miniupnpd it is the public one (`-o`). Like everything in the lab it exists
//! only inside the lab's namespaces, which have no link to the host's network.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::{random_file, sha256_file};
use crate::lab::{in_ci, run, start_rendezvous, wait_for_text, Lab, Spawned, RENDEZVOUS_IP};

/// rt1's "public" address for miniupnpd (not in its list of reserved ranges).
const PUBLIC_IP: &str = "192.0.3.11";
const MINIUPNPD: &str = "/usr/sbin/miniupnpd";

/// The nftables table, chains and jumps miniupnpd fills (its `nft_init.sh`, with the
/// forward policy left open: the lab's routers forward everything).
const NFT_INIT: &str = r#"
table inet p2p_upnp {
    chain forward {
        type filter hook forward priority 0; policy accept;
        jump upnp_forward
    }
    chain upnp_forward {
    }
    chain prerouting {
        type nat hook prerouting priority -100; policy accept;
        jump upnp_prerouting
    }
    chain postrouting {
        type nat hook postrouting priority 100; policy accept;
        jump upnp_postrouting
    }
    chain upnp_prerouting {
    }
    chain upnp_postrouting {
    }
}
"#;

/// What the router offers.
#[derive(Clone, Copy, PartialEq)]
enum Offers {
    /// PCP, NAT-PMP and UPnP IGD (the client's PCP request wins the race).
    All,
    /// UPnP IGD only.
    UpnpOnly,
}

fn miniupnpd_config(dir: &Path, offers: Offers) -> String {
    format!(
        "ext_ifname=wan\n\
         listening_ip=lan\n\
         http_port=0\n\
         enable_natpmp={}\n\
         enable_upnp=yes\n\
         secure_mode=yes\n\
         system_uptime=yes\n\
         lease_file={}\n\
         upnp_table_name=p2p_upnp\n\
         upnp_nat_table_name=p2p_upnp\n\
         upnp_forward_chain=upnp_forward\n\
         upnp_nat_chain=upnp_prerouting\n\
         upnp_nat_postrouting_chain=upnp_postrouting\n\
         uuid=8d0a7bde-3f53-4c9e-a5a1-6e2d1c1b7f10\n\
         allow 1024-65535 10.200.1.0/24 1024-65535\n\
         deny 0-65535 0.0.0.0/0 0-65535\n",
        if offers == Offers::All { "yes" } else { "no" },
        dir.join("upnp.leases").display()
    )
}

fn ok(command: &mut Command) {
    let output = run(command, Duration::from_secs(10));
    assert!(
        output.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Starts miniupnpd in rt1 (NAT-PMP/PCP and UPnP on the LAN side, nftables backend).
fn start_miniupnpd(lab: &Lab, dir: &Path, offers: Offers) -> Spawned {
    ok(lab
        .command("rt1", "ip")
        .args(["addr", "add", &format!("{PUBLIC_IP}/32"), "dev", "wan"]));
    ok(lab.command("inet", "ip").args([
        "route",
        "add",
        &format!("{PUBLIC_IP}/32"),
        "via",
        "10.200.0.11",
    ]));
    let init = dir.join("upnp-init.nft");
    std::fs::write(&init, NFT_INIT).expect("nft file");
    ok(lab.command("rt1", "nft").arg("-f").arg(&init));
    let config = dir.join("miniupnpd.conf");
    std::fs::write(&config, miniupnpd_config(dir, offers)).expect("config");
    let log = dir.join("miniupnpd.log");
    let child = lab
        .command("rt1", MINIUPNPD)
        .arg("-f")
        .arg(&config)
        .args(["-o", PUBLIC_IP, "-d", "-P"])
        .arg(dir.join("miniupnpd.pid"))
        .stdout(std::fs::File::create(&log).expect("log"))
        .stderr(std::fs::File::create(dir.join("miniupnpd.err")).expect("log"))
        .spawn()
        .expect("miniupnpd");
    let daemon = Spawned::new(child);
    // -d logs to stderr.
    wait_for_text(
        &dir.join("miniupnpd.err"),
        "HTTP listening on port",
        Duration::from_secs(10),
    );
    daemon
}

/// The port forwardings miniupnpd holds in rt1 (its DNAT rules).
fn forwardings(lab: &Lab) -> Vec<String> {
    let output = run(
        lab.command("rt1", "nft")
            .args(["list", "chain", "inet", "p2p_upnp", "upnp_prerouting"]),
        Duration::from_secs(10),
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|l| l.contains("dnat"))
        .map(|l| l.trim().to_owned())
        .collect()
}

#[test]
fn a_port_mapped_by_the_router_gives_two_symmetric_nats_a_direct_path() {
    transfer_through_a_mapping(Offers::All, "PCP");
}

#[test]
fn a_upnp_igd_mapping_gives_two_symmetric_nats_a_direct_path() {
    transfer_through_a_mapping(Offers::UpnpOnly, "UPnP IGD");
}

fn transfer_through_a_mapping(offers: Offers, protocol: &str) {
    if !Path::new(MINIUPNPD).exists() {
        assert!(
            !in_ci(),
            "CI=true but miniupnpd is not installed (apt-get install miniupnpd-nftables)"
        );
        eprintln!("SKIPPED: miniupnpd not installed (apt-get install miniupnpd-nftables)");
        return;
    }
    let Some(lab) = Lab::up(&["pair", "symmetric", "symmetric"]) else {
        return;
    };
    let dir = lab.state_dir().join("portmap");
    std::fs::create_dir_all(dir.join("out")).expect("dirs");
    let _miniupnpd = start_miniupnpd(&lab, &dir, offers);
    let _rendezvous = start_rendezvous(&lab, &dir);
    let server = format!("{RENDEZVOUS_IP}:4000");

    let file = dir.join("payload.bin");
    random_file(&file, 4 << 20, 31);
    let sender_log = dir.join("sender.log");
    let mut sender = lab
        .p2p("h1")
        .env("P2P_TRANSFER_DATA_DIR", dir.join("a"))
        .env("RUST_LOG", "p2p_core=debug")
        .arg("send")
        .arg(&file)
        .args(["--rendezvous", &server, "--json"])
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&sender_log).expect("log"))
        .spawn()
        .expect("sender");
    let mut first = String::new();
    BufReader::new(sender.stdout.take().expect("stdout"))
        .read_line(&mut first)
        .expect("code line");
    let sender = Spawned::new(sender);
    let code: serde_json::Value = serde_json::from_str(&first).expect("JSON code event");
    let code = code["code"].as_str().expect("code").to_owned();
    let receiver = run(
        lab.p2p("h2")
            .env("P2P_TRANSFER_DATA_DIR", dir.join("b"))
            .args(["receive", &code, "--rendezvous", &server, "--json"])
            .arg("--output")
            .arg(dir.join("out")),
        Duration::from_secs(90),
    );
    let sent = sender.wait(Duration::from_secs(30));
    let sender_text = std::fs::read_to_string(&sender_log).unwrap_or_default();
    assert!(
        receiver.status.success() && sent.success(),
        "receiver: {}\nsender: {sender_text}",
        String::from_utf8_lossy(&receiver.stderr)
    );
    assert_eq!(
        sha256_file(&dir.join("out/payload.bin")),
        sha256_file(&file),
        "received bytes differ"
    );
    let paths: Vec<String> = String::from_utf8_lossy(&receiver.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["event"] == "path")
        .filter_map(|e| e["path"].as_str().map(str::to_owned))
        .collect();
    let mapped = sender_text
        .lines()
        .find(|l| l.contains("port mapped through"))
        .unwrap_or("(no mapping)");
    let left = forwardings(&lab);
    eprintln!("natlab portmap: {mapped}; receiver's paths {paths:?}; left on rt1: {left:?}");
    assert!(
        mapped.contains(&format!("through {protocol}: {PUBLIC_IP}:")),
        "h1 got no port mapping from miniupnpd:\n{sender_text}"
    );
    assert_eq!(
        paths.first().map(String::as_str),
        Some("direct"),
        "{paths:?}\nsender: {sender_text}"
    );
    // The sender removed its mapping before it ended.
    assert_eq!(left, Vec::<String>::new(), "sender: {sender_text}");
}
