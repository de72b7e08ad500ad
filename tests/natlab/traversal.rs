//! The reduced NAT matrix (issue 13): `p2p-transfer send` in h1 and `receive CODE` in h2,
//! meeting through `p2p-transfer rendezvous` on the public side, with coturn as the
//! relay. Each cell checks the received bytes (SHA-256), the path the receiver reported
//! first and last, and prints the time from the later side's start to its `done`.
//! The full matrix (every pair, 0/1/3 s skew, repeats) is `tests/natlab/matrix.py`.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::common::{random_file, sha256_file};
use crate::lab::{run, start_rendezvous, Lab, Spawned, RENDEZVOUS_IP};

/// Which side starts its punching late, and by how much.
#[derive(Clone, Copy)]
enum Late {
    Nobody,
    Sender(u64),
    Receiver(u64),
}

struct Cell {
    paths: Vec<String>,
    elapsed: Duration,
}

/// Runs one transfer across `lab` and returns what the receiver reported.
fn cell(lab: &Lab, late: Late) -> Cell {
    let dir = lab.state_dir().join("traversal");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("out")).expect("dirs");
    let rendezvous_addr = format!("{RENDEZVOUS_IP}:4000");
    let _rendezvous = start_rendezvous(lab, &dir);

    let file = dir.join("payload.bin");
    random_file(&file, 4 << 20, 99);
    let delay = |side_is_late: bool, ms: u64| {
        if side_is_late {
            ms.to_string()
        } else {
            "0".into()
        }
    };
    let (sender_delay, receiver_delay) = match late {
        Late::Nobody => ("0".to_owned(), "0".to_owned()),
        Late::Sender(ms) => (delay(true, ms), delay(false, ms)),
        Late::Receiver(ms) => (delay(false, ms), delay(true, ms)),
    };
    let mut sender = lab
        .p2p("h1")
        .env("P2P_TRANSFER_DATA_DIR", dir.join("a"))
        .env("P2P_PUNCH_DELAY_MS", &sender_delay)
        .arg("send")
        .arg(&file)
        .args(["--rendezvous", &rendezvous_addr, "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("sender");
    let mut first = String::new();
    BufReader::new(sender.stdout.take().expect("stdout"))
        .read_line(&mut first)
        .expect("code line");
    let sender = Spawned::new(sender);
    let code: serde_json::Value = serde_json::from_str(&first).expect("JSON code event");
    let code = code["code"].as_str().expect("code").to_owned();
    let started = Instant::now();
    let receiver = run(
        lab.p2p("h2")
            .env("P2P_TRANSFER_DATA_DIR", dir.join("b"))
            .env("P2P_PUNCH_DELAY_MS", &receiver_delay)
            .args(["receive", &code, "--rendezvous", &rendezvous_addr, "--json"])
            .arg("--output")
            .arg(dir.join("out")),
        Duration::from_secs(90),
    );
    let elapsed = started.elapsed();
    let sent = sender.wait(Duration::from_secs(30));
    assert!(
        receiver.status.success() && sent.success(),
        "receiver: {}",
        String::from_utf8_lossy(&receiver.stderr)
    );
    assert_eq!(
        sha256_file(&dir.join("out/payload.bin")),
        sha256_file(&file),
        "received bytes differ"
    );
    let paths = String::from_utf8_lossy(&receiver.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["event"] == "path")
        .filter_map(|e| e["path"].as_str().map(str::to_owned))
        .collect();
    Cell { paths, elapsed }
}

fn report(name: &str, cell: &Cell) {
    eprintln!(
        "natlab cell {name}: paths {:?}, {:.2} s to done (4 MiB)",
        cell.paths,
        cell.elapsed.as_secs_f64()
    );
}

#[test]
fn cone_nats_with_open_input_punch_through_the_conntrack_collision_with_either_side_late() {
    let Some(lab) = Lab::up(&["pair", "cone", "cone"]) else {
        return;
    };
    for late in [Late::Receiver(1000), Late::Sender(3000), Late::Nobody] {
        let cell = cell(&lab, late);
        report("cone x cone", &cell);
        assert_eq!(
            cell.paths.first().map(String::as_str),
            Some("direct"),
            "{:?}",
            cell.paths
        );
    }
}

#[test]
fn a_symmetric_nat_facing_a_cone_nat_gets_a_direct_path_by_port_spray() {
    let Some(lab) = Lab::up(&["pair", "symmetric", "cone"]) else {
        return;
    };
    let cell = cell(&lab, Late::Receiver(1000));
    report("symmetric x cone", &cell);
    assert!(
        cell.paths.iter().any(|p| p == "direct"),
        "no direct path: {:?}",
        cell.paths
    );
}

#[test]
fn two_symmetric_nats_complete_over_the_relay() {
    let Some(lab) = Lab::up(&["pair", "symmetric", "symmetric"]) else {
        return;
    };
    let cell = cell(&lab, Late::Nobody);
    report("symmetric x symmetric", &cell);
    assert_eq!(
        cell.paths.first().map(String::as_str),
        Some("relay"),
        "{:?}",
        cell.paths
    );
}

#[test]
fn a_network_that_blocks_udp_completes_over_turn_on_tcp() {
    let Some(lab) = Lab::up(&["pair", "blocked", "cone"]) else {
        return;
    };
    let cell = cell(&lab, Late::Nobody);
    report("blocked x cone", &cell);
    assert_eq!(cell.paths, ["relay"]);
}

#[test]
fn two_hosts_behind_one_nat_without_hairpin_connect_over_the_lan() {
    let Some(lab) = Lab::up(&["same", "cone"]) else {
        return;
    };
    let cell = cell(&lab, Late::Receiver(1000));
    report("same NAT", &cell);
    assert_eq!(
        cell.paths.first().map(String::as_str),
        Some("lan"),
        "{:?}",
        cell.paths
    );
}
