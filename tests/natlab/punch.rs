//! The lab models what hole punching has to beat: `punch_probe.py` (a minimal UDP
//! puncher: STUN, then probes to the peer's public address) inside h1 and h2 shows the
//! Linux conntrack collision behind routers whose own input is open, that probes with
//! IP TTL 2 die between the NATs, that two hosts behind one router get no hairpin, and
//! coturn relays with the lab's shared secret. These are tests of the lab, not of
//! p2p-transfer: if one fails, the lab no longer models the case the matrix depends on.

use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::lab::{in_ci, punch_probe, run, Lab, Spawned, RENDEZVOUS_IP, STUN, TURN_SECRET};

fn have(program: &str) -> bool {
    Command::new(program)
        .arg("--help")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok()
}

/// The lab, or `None` (after saying why) when python3 is missing too.
fn lab_with_python(args: &[&str]) -> Option<Lab> {
    if !have("python3") {
        assert!(!in_ci(), "CI=true but python3 is missing");
        eprintln!("SKIPPED (NAT lab): python3 is not installed");
        return None;
    }
    Lab::up(args)
}

/// Runs the puncher in h1 and h2 at once (extra arguments per side) and returns their
/// JSON reports.
fn punch(lab: &Lab, h1: &[&str], h2: &[&str]) -> (Value, Value) {
    let dir = lab.state_dir().join("punch");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("punch dir");
    let side = |me: &str, peer: &str, extra: &[&str]| {
        let mut command = lab.command(me, "python3");
        command
            .arg(punch_probe())
            .args([
                "--name",
                me,
                "--peer",
                peer,
                "--stun",
                STUN,
                "--timeout",
                "3",
            ])
            .arg("--dir")
            .arg(&dir)
            .args(extra);
        command
    };
    let (mut first, mut second) = (side("h1", "h2", h1), side("h2", "h1", h2));
    let (a, b) = std::thread::scope(|scope| {
        let a = scope.spawn(|| run(&mut first, Duration::from_secs(30)));
        let b = scope.spawn(|| run(&mut second, Duration::from_secs(30)));
        (a.join().expect("h1"), b.join().expect("h2"))
    });
    let parse = |output: &std::process::Output| -> Value {
        let stdout = String::from_utf8_lossy(&output.stdout);
        eprintln!("{stdout}{}", String::from_utf8_lossy(&output.stderr));
        serde_json::from_str(stdout.trim())
            .unwrap_or_else(|e| panic!("punch_probe printed no JSON ({e}): {stdout}"))
    };
    (parse(&a), parse(&b))
}

fn ok(report: &Value) -> bool {
    report["ok"] == Value::Bool(true)
}

#[test]
fn a_naive_punch_through_two_open_cone_routers_collides_when_one_side_is_late() {
    let Some(lab) = lab_with_python(&["pair", "cone", "cone"]) else {
        return;
    };
    // h1's probes reach rt2 before h2 sends: rt2 keeps an unreplied entry for them and
    // maps h2's own flow to another port, which rt1 does not let in.
    let (h1, h2) = punch(&lab, &[], &["--delay", "1"]);
    assert!(!ok(&h1) && !ok(&h2), "expected the collision: {h1} {h2}");
    // Priming first but then probing at once does not help the early side's probes.
    let (h1, h2) = punch(
        &lab,
        &["--prime-ttl", "2"],
        &["--delay", "1", "--prime-ttl", "2"],
    );
    assert!(!ok(&h1) && !ok(&h2), "expected the collision: {h1} {h2}");
}

#[test]
fn ttl_2_probes_until_both_sides_primed_beat_the_collision() {
    let Some(lab) = lab_with_python(&["pair", "cone", "cone"]) else {
        return;
    };
    // h2 late, then h1 late.
    let delays: [(&[&str], &[&str]); 2] = [(&[], &["--delay", "1"]), (&["--delay", "1"], &[])];
    for (h1_delay, h2_delay) in delays {
        let primed = ["--prime-ttl", "2", "--wait-peer"];
        let h1: Vec<&str> = h1_delay.iter().chain(primed.iter()).copied().collect();
        let h2: Vec<&str> = h2_delay.iter().chain(primed.iter()).copied().collect();
        let (h1, h2) = punch(&lab, &h1, &h2);
        assert!(ok(&h1) && ok(&h2), "{h1} {h2}");
        // The probes arrived from the peer's STUN-learned address: no remapping.
        assert_eq!(h1["first_from"], h2["public"]);
        assert_eq!(h2["first_from"], h1["public"]);
        assert!(h1["sent_primed"].as_u64() >= Some(3));
    }
}

#[test]
fn a_router_with_its_input_dropped_keeps_no_entry_for_early_probes() {
    let Some(lab) = lab_with_python(&["pair", "cone", "cone-dropped"]) else {
        return;
    };
    // The late side (h2) is behind the router that drops what is sent to itself.
    let (h1, h2) = punch(&lab, &[], &["--delay", "1"]);
    assert!(ok(&h1) && ok(&h2), "{h1} {h2}");
}

#[test]
fn two_hosts_behind_one_router_meet_only_on_their_private_addresses() {
    let Some(lab) = lab_with_python(&["same", "cone"]) else {
        return;
    };
    let (h1, h2) = punch(&lab, &["--to", "public"], &["--to", "public"]);
    assert_eq!(
        h1["public"].as_str().map(|a| a.starts_with("10.200.0.11:")),
        Some(true)
    );
    assert_eq!(
        h2["public"].as_str().map(|a| a.starts_with("10.200.0.11:")),
        Some(true)
    );
    assert!(!ok(&h1) && !ok(&h2), "no hairpin expected: {h1} {h2}");
    let (h1, h2) = punch(&lab, &["--to", "local"], &["--to", "local"]);
    assert!(ok(&h1) && ok(&h2), "{h1} {h2}");
    assert_eq!(h1["first_from"], h2["local"]);
}

#[test]
fn coturn_relays_over_udp_and_tcp_with_the_shared_secret_only() {
    if !have("turnutils_uclient") {
        assert!(
            !in_ci(),
            "CI=true but turnutils_uclient (coturn) is missing"
        );
        eprintln!("SKIPPED (NAT lab): turnutils_uclient is not installed");
        return;
    }
    let Some(lab) = Lab::up(&["pair", "cone", "symmetric"]) else {
        return;
    };
    // An echo peer on the public side; the client in h2 (behind the symmetric NAT)
    // allocates a relay on coturn and sends 5 messages through it.
    let mut peer = lab.command("inet", "turnutils_peer");
    peer.args(["-L", RENDEZVOUS_IP, "-p", "3480"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let _peer = Spawned::new(peer.spawn().expect("turnutils_peer"));
    let relay = |secret: &str, tcp: bool| {
        let mut client = lab.command("h2", "turnutils_uclient");
        if tcp {
            client.arg("-t");
        }
        client.args([
            "-W", secret, "-u", "natlab", "-n", "5", "-m", "1", "-l", "100",
        ]);
        client.args(["-e", RENDEZVOUS_IP, "-r", "3480", "-X", "10.200.0.2"]);
        let output = run(&mut client, Duration::from_secs(30));
        let text = String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr);
        eprintln!("{text}");
        text
    };
    for tcp in [false, true] {
        // The peer may not be bound yet on the first try: give it a few.
        let mut text = String::new();
        for _ in 0..5 {
            text = relay(TURN_SECRET, tcp);
            if text.contains("tot_recv_msgs=5") {
                break;
            }
        }
        assert!(text.contains("tot_recv_msgs=5"), "tcp={tcp}: {text}");
    }
    let text = relay("not-the-secret", false);
    assert!(text.contains("Cannot complete Allocation"), "{text}");
}
