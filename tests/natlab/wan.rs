//! The WAN smoke test: the real binary on both sides of the project's WAN emulator
//! (`tests/wan`, profile `lossy`: 50 Mbit/s, 30 ms round trip, 2% random loss each way),
//! over QUIC and over TCP, each file checked byte for byte and its rate reported. The
//! full runs are benchmarks (`benchmark.py --wan`), not timed tests: nothing here
//! asserts a speed. Needs root, iproute2 and ethtool: without them it prints `SKIPPED`
//! and passes, except under CI, where it fails.

use std::io::{BufRead, BufReader, Read};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use p2p_wan::{Profile, Wan};

use crate::common::{binary, random_file, sha256_file};

/// The emulator, or why it cannot run here.
fn wan_up(prefix: &str) -> Option<Wan> {
    if let Some(why) = p2p_wan::missing_prerequisite() {
        assert!(
            !p2p_wan::in_ci(),
            "the WAN emulator cannot run under CI: {why}"
        );
        eprintln!("SKIPPED: {why}");
        return None;
    }
    let profile = Profile::named("lossy").expect("the lossy profile");
    Some(
        Wan::up(
            &format!("{prefix}{}", std::process::id() % 100_000),
            profile,
        )
        .expect("WAN up"),
    )
}

fn text(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned() + &String::from_utf8_lossy(&output.stdout)
}

/// Sends `file` from host 1 to host 2 with `--transport transport` on both sides and
/// returns the sender's output and the seconds it took.
fn transfer(wan: &Wan, dir: &std::path::Path, transport: &str, code: &str) -> (Output, f64) {
    let out = dir.join(format!("out-{transport}"));
    let mut receiver = wan
        .command(2, binary())
        .args([
            "receive",
            "--port",
            "14567",
            "--code",
            code,
            "--transport",
            transport,
        ])
        .arg("--output")
        .arg(&out)
        .env("P2P_TRANSFER_DATA_DIR", dir.join("receiver"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("receiver");
    // The sender starts once the receiver says it listens (no sleeping to synchronise).
    let mut lines = BufReader::new(receiver.stderr.take().expect("stderr"));
    let mut seen = String::new();
    while !seen.contains("listening on") {
        let before = seen.len();
        lines.read_line(&mut seen).expect("receiver's stderr");
        assert!(
            seen.len() > before,
            "the receiver ended before listening: {seen}"
        );
    }
    let rest = std::thread::spawn(move || {
        let mut rest = String::new();
        let _ = lines.read_to_string(&mut rest);
        rest
    });
    let started = Instant::now();
    let sender = wan
        .command(1, binary())
        .arg("send")
        .arg(dir.join("payload.bin"))
        .args(["--peer", &wan.host_ip(2).to_string(), "--code", code])
        .args(["--transport", transport])
        .env("P2P_TRANSFER_DATA_DIR", dir.join("sender"))
        .output()
        .expect("sender");
    let seconds = started.elapsed().as_secs_f64();
    let received = receiver.wait_with_output().expect("receiver output");
    let receiver_said = seen + &rest.join().unwrap_or_default();
    assert!(
        sender.status.success(),
        "sender over {transport}: {}",
        text(&sender)
    );
    assert!(
        received.status.success(),
        "receiver over {transport}: {receiver_said}"
    );
    assert_eq!(
        sha256_file(&out.join("payload.bin")),
        sha256_file(&dir.join("payload.bin")),
        "over {transport}"
    );
    (sender, seconds)
}

#[test]
fn a_file_crosses_a_lossy_wan_over_quic_and_tcp_byte_for_byte() {
    let Some(wan) = wan_up("ws") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    const SIZE: usize = 6 << 20;
    random_file(&dir.path().join("payload.bin"), SIZE, 12);
    let deadline = Instant::now() + Duration::from_secs(120);
    for (transport, code) in [
        ("auto", "3-amber-crane"),
        ("quic", "4-amber-crane"),
        ("tcp", "5-amber-crane"),
    ] {
        let (sender, seconds) = transfer(&wan, dir.path(), transport, code);
        let said = text(&sender);
        // Across a WAN (not loopback) auto keeps QUIC.
        let expected = if transport == "tcp" {
            "over TCP"
        } else {
            "over QUIC"
        };
        assert!(said.contains(expected), "--transport {transport}: {said}");
        eprintln!(
            "lossy (50 Mbit/s, 30 ms, 2% loss), --transport {transport}: {} MiB in {seconds:.1} s = {:.2} MiB/s (link: 5.96 MiB/s)",
            SIZE >> 20,
            SIZE as f64 / (1 << 20) as f64 / seconds
        );
        assert!(Instant::now() < deadline, "the smoke test is bounded");
    }
    let [out, back] = wan.stats();
    eprintln!("emulator: {}\nemulator: {}", out.to_json(), back.to_json());
    assert!(
        out.link.dropped_loss_frames > 0,
        "the link dropped frames: {:?}",
        out.to_json()
    );
}
