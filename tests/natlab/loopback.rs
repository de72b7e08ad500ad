//! `send --discover` on this host alone: discovery restricted to the loopback broadcast
//! address (`P2P_DISCOVERY_TARGETS`) on a port of its own (`P2P_DISCOVERY_PORT`), so it
//! needs no privileges and sends nothing beyond loopback.

use std::fs::File;
use std::process::Command;
use std::time::Duration;

use crate::common::{binary, random_file, sha256_file};
use crate::lab::{run, wait_for_text, Spawned};

fn discovery_env(command: &mut Command, port: u16) -> &mut Command {
    command
        .env("P2P_DISCOVERY_PORT", port.to_string())
        .env("P2P_DISCOVERY_TARGETS", "127.255.255.255")
}

#[test]
fn send_discover_finds_a_receiver_on_this_host() {
    let port = loop {
        let port: u16 = rand::random_range(20_000..60_000);
        if std::net::UdpSocket::bind(("0.0.0.0", port)).is_ok() {
            break port;
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let (out, log) = (dir.path().join("out"), dir.path().join("receiver.log"));
    let file = dir.path().join("data.bin");
    random_file(&file, 1 << 20, 7);

    let mut receive = Command::new(binary());
    discovery_env(&mut receive, port)
        .args([
            "receive",
            "--name",
            "loopback-receiver",
            "--bind",
            "127.0.0.1",
            "--port",
            "0",
        ])
        .arg("--output")
        .arg(&out)
        .stdout(File::create(dir.path().join("receiver.out")).unwrap())
        .stderr(File::create(&log).unwrap());
    let receiver = Spawned::new(receive.spawn().unwrap());
    wait_for_text(&log, "announcing", Duration::from_secs(10));

    let mut send = Command::new(binary());
    discovery_env(&mut send, port)
        .arg("send")
        .arg(&file)
        .args(["--discover", "loopback-receiver"]);
    let sent = run(&mut send, Duration::from_secs(30));
    let stderr = String::from_utf8_lossy(&sent.stderr);
    assert!(sent.status.success(), "{stderr}");
    assert!(stderr.contains("found loopback-receiver"), "{stderr}");
    assert!(receiver.wait(Duration::from_secs(20)).success());
    assert_eq!(sha256_file(&out.join("data.bin")), sha256_file(&file));
}
