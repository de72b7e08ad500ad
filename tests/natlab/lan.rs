//! LAN discovery with the real binary: receivers in h1 (10.200.100.2) announce
//! themselves, a sender in h2 (10.200.100.3) finds them through the bridge with
//! `send --discover`, and the file arrives byte for byte.

use std::fs::File;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::common::{random_file, sha256_file};
use crate::lab::{run, wait_for_text, Lab, Spawned};

/// Starts `receive` in `node` and waits until it announces itself.
fn start_receiver(lab: &Lab, node: &str, name: &str, port: u16, out: &Path, log: &Path) -> Spawned {
    let child = lab
        .p2p(node)
        .args([
            "receive",
            "--name",
            name,
            "--port",
            &port.to_string(),
            "--output",
        ])
        .arg(out)
        .stdout(File::create(log.with_extension("out")).unwrap())
        .stderr(File::create(log).unwrap())
        .spawn()
        .expect("spawn receiver");
    let receiver = Spawned::new(child);
    wait_for_text(log, "announcing", Duration::from_secs(10));
    receiver
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn send_discover_finds_the_receiver_and_the_file_arrives_intact() {
    let Some(lab) = Lab::up(&["lan"]) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (out, log) = (dir.path().join("out"), dir.path().join("receiver.log"));
    let file = dir.path().join("payload.bin");
    random_file(&file, 4 << 20, 4);
    let receiver = start_receiver(&lab, "h1", "h1-receiver", 14567, &out, &log);

    let started = Instant::now();
    let sent = run(
        lab.p2p("h2").arg("send").arg(&file).arg("--discover"),
        Duration::from_secs(60),
    );
    let took = started.elapsed();
    eprintln!(
        "send --discover: {took:.2?} (target: connected within 3 s)\n{}",
        text(&sent.stderr)
    );
    assert!(sent.status.success(), "{}", text(&sent.stderr));
    assert!(
        text(&sent.stderr).contains("found h1-receiver"),
        "{}",
        text(&sent.stderr)
    );
    assert!(
        text(&sent.stderr).contains("10.200.100.2:14567"),
        "{}",
        text(&sent.stderr)
    );

    let status = receiver.wait(Duration::from_secs(30));
    assert!(
        status.success(),
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert_eq!(sha256_file(&out.join("payload.bin")), sha256_file(&file));
}

#[test]
fn with_two_receivers_the_sender_is_told_to_choose_and_can_choose_by_name() {
    let Some(lab) = Lab::up(&["lan"]) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("note.txt");
    std::fs::write(&file, b"for beta only\n").unwrap();
    let (out_a, out_b) = (dir.path().join("alpha"), dir.path().join("beta"));
    let _alpha = start_receiver(
        &lab,
        "h1",
        "alpha",
        15001,
        &out_a,
        &dir.path().join("a.log"),
    );
    let beta = start_receiver(&lab, "h1", "beta", 15002, &out_b, &dir.path().join("b.log"));

    // `peers` lists both, with the address they can be reached at.
    let peers = run(lab.p2p("h2").arg("peers"), Duration::from_secs(20));
    let listing = text(&peers.stdout);
    assert!(peers.status.success(), "{}", text(&peers.stderr));
    assert!(
        listing.contains("alpha") && listing.contains("10.200.100.2:15001"),
        "{listing}"
    );
    assert!(
        listing.contains("beta") && listing.contains("10.200.100.2:15002"),
        "{listing}"
    );

    // No name: refused, and both are listed.
    let ambiguous = run(
        lab.p2p("h2").arg("send").arg(&file).arg("--discover"),
        Duration::from_secs(20),
    );
    let stderr = text(&ambiguous.stderr);
    assert!(!ambiguous.status.success());
    assert!(
        stderr.contains("alpha") && stderr.contains("beta"),
        "{stderr}"
    );

    // By name: the right one gets the file.
    let sent = run(
        lab.p2p("h2")
            .arg("send")
            .arg(&file)
            .args(["--discover", "beta"]),
        Duration::from_secs(20),
    );
    assert!(sent.status.success(), "{}", text(&sent.stderr));
    assert!(beta.wait(Duration::from_secs(20)).success());
    assert_eq!(
        std::fs::read(out_b.join("note.txt")).unwrap(),
        b"for beta only\n"
    );
    assert!(!out_a.join("note.txt").exists());
}

#[test]
fn peers_reports_an_empty_lan_without_failing() {
    let Some(lab) = Lab::up(&["lan"]) else {
        return;
    };
    let peers = run(
        lab.p2p("h2")
            .args(["peers", "--timeout", "0.5"])
            .stdout(Stdio::piped()),
        Duration::from_secs(20),
    );
    assert!(peers.status.success());
    assert!(
        text(&peers.stderr).contains("no receivers found"),
        "{}",
        text(&peers.stderr)
    );
}
