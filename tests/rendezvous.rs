//! Codes through a rendezvous server (issue 13): the real binary as the rendezvous, the
//! sender and the receiver on 127.0.0.1, and a real coturn as the relay. The NAT
//! matrix (kernel NAT in namespaces) is in tests/natlab/traversal.rs.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use common::*;

/// A child process killed when the test ends, however it ends.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Reads `child`'s stderr until a line contains `needle`; returns that line.
fn stderr_line(child: &mut Child, needle: &str) -> String {
    let stderr = child.stderr.take().expect("stderr piped");
    let mut lines = BufReader::new(stderr).lines();
    for line in lines.by_ref() {
        let line = line.expect("stderr line");
        if line.contains(needle) {
            // Keep draining so the child never blocks on a full pipe.
            std::thread::spawn(move || for _ in lines {});
            return line;
        }
    }
    panic!("the process ended without printing {needle:?}");
}

/// coturn on 127.0.0.1 with the `use-auth-secret` scheme, relaying to loopback peers.
struct Coturn {
    _child: Guard,
    addr: String,
    _dir: tempfile::TempDir,
}

const TURN_SECRET: &str = "rendezvous-test-secret";

fn coturn() -> Option<Coturn> {
    let found = Command::new("turnserver")
        .arg("--help")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "turnserver (coturn) is missing: .ci/run installs it"
        );
        eprintln!("SKIPPED: turnserver (coturn) not installed");
        return None;
    }
    for _ in 0..10 {
        let port = {
            let probe = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
            probe.local_addr().expect("addr").port()
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let mut child = Command::new("turnserver")
            .args(["-n", "--no-cli", "--no-tls", "--no-dtls", "--simple-log"])
            .args(["--listening-ip", "127.0.0.1", "--relay-ip", "127.0.0.1"])
            .args(["--listening-port", &port.to_string()])
            .args(["--min-port", "40000", "--max-port", "60000"])
            .args(["--use-auth-secret", "--static-auth-secret", TURN_SECRET])
            .args(["--realm", "p2p.test", "--allow-loopback-peers"])
            .args(["--no-multicast-peers", "--log-file", "stdout"])
            .arg("--pidfile")
            .arg(dir.path().join("turn.pid"))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start turnserver");
        let stdout = child.stdout.take().expect("stdout");
        let mut ready = false;
        let mut lines = BufReader::new(stdout).lines();
        for line in lines.by_ref() {
            let line = line.unwrap_or_default();
            if line.contains("Total General servers")
                || line.contains("IPv4. TCP listener opened on") && line.contains(&port.to_string())
            {
                ready = true;
                break;
            }
            if line.contains("Cannot bind") || line.contains("cannot bind") {
                break;
            }
        }
        std::thread::spawn(move || for _ in lines {});
        if ready {
            return Some(Coturn {
                _child: Guard(child),
                addr: format!("127.0.0.1:{port}"),
                _dir: dir,
            });
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    panic!("coturn did not start on a free port in 10 tries");
}

/// The rendezvous server, with coturn's credentials when given.
fn rendezvous(dir: &Path, turn: Option<&Coturn>) -> (Guard, String) {
    let mut cmd = Command::new(binary());
    cmd.args(["rendezvous", "--listen", "127.0.0.1:0"]);
    if let Some(turn) = turn {
        let secret = dir.join("turn-secret");
        std::fs::write(&secret, TURN_SECRET).expect("write secret");
        cmd.args(["--turn", &turn.addr])
            .arg("--turn-secret-file")
            .arg(secret);
    }
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start rendezvous");
    let line = stderr_line(&mut child, "rendezvous listening on ");
    let addr = line
        .split("listening on ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .expect("address")
        .to_owned();
    (Guard(child), addr)
}

struct Side {
    data: PathBuf,
}

fn side(root: &Path, name: &str) -> Side {
    let data = root.join(name);
    std::fs::create_dir_all(&data).expect("mkdir");
    Side { data }
}

impl Side {
    fn command(&self, env: &[(&str, &str)]) -> Command {
        let mut cmd = Command::new(binary());
        cmd.env("P2P_TRANSFER_DATA_DIR", &self.data)
            .env_remove("P2P_RENDEZVOUS");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd
    }
}

/// JSON lines of a finished process' stdout.
fn events(stdout: &[u8]) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn paths_of(events: &[serde_json::Value]) -> Vec<String> {
    events
        .iter()
        .filter(|e| e["event"] == "path")
        .map(|e| e["path"].as_str().unwrap_or("?").to_owned())
        .collect()
}

/// Sends `file` with a code through `server` and receives it into `out`; returns both
/// sides' outputs (sender, receiver).
fn transfer(
    root: &Path,
    server: &str,
    file: &Path,
    out: &Path,
    env: &[(&str, &str)],
    sender_args: &[&str],
) -> (std::process::Output, std::process::Output) {
    let (a, b) = (side(root, "a"), side(root, "b"));
    let mut sender = a
        .command(env)
        .arg("send")
        .arg(file)
        .args(["--rendezvous", server, "--json"])
        .args(sender_args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start sender");
    // The first stdout line is the code event.
    let stdout = sender.stdout.take().expect("stdout");
    let mut reader = BufReader::new(stdout);
    let mut first = String::new();
    reader.read_line(&mut first).expect("code line");
    let code_event: serde_json::Value = serde_json::from_str(&first).expect("JSON code event");
    assert_eq!(code_event["event"], "code", "{first}");
    let code = code_event["code"].as_str().expect("code").to_owned();
    let rest = std::thread::spawn(move || {
        let mut rest = Vec::new();
        std::io::Read::read_to_end(&mut reader, &mut rest).expect("read");
        rest
    });
    let receiver = b
        .command(env)
        .args([
            "receive",
            &code,
            "--rendezvous",
            server,
            "--json",
            "--output",
        ])
        .arg(out)
        .output()
        .expect("run receiver");
    let status = sender.wait().expect("sender exit");
    let mut stderr = String::new();
    if let Some(mut e) = sender.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut stderr);
    }
    let mut stdout = first.into_bytes();
    stdout.extend(rest.join().expect("reader"));
    (
        std::process::Output {
            status,
            stdout,
            stderr: stderr.into_bytes(),
        },
        receiver,
    )
}

#[test]
fn a_code_through_a_rendezvous_delivers_the_file_byte_for_byte() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_server, addr) = rendezvous(dir.path(), None);
    let file = dir.path().join("payload.bin");
    random_file(&file, 3 << 20, 13);
    let out = dir.path().join("out");
    std::fs::create_dir_all(&out).expect("mkdir");
    let (sender, receiver) = transfer(dir.path(), &addr, &file, &out, &[], &[]);
    assert!(
        sender.status.success() && receiver.status.success(),
        "sender: {}\nreceiver: {}",
        String::from_utf8_lossy(&sender.stderr),
        String::from_utf8_lossy(&receiver.stderr)
    );
    assert_eq!(sha256_file(&out.join("payload.bin")), sha256_file(&file));
    // Without a relay, the path is a direct one (both ends on this machine).
    let paths = paths_of(&events(&receiver.stdout));
    assert!(
        matches!(paths.first().map(String::as_str), Some("direct" | "lan")),
        "{paths:?}"
    );
    assert!(String::from_utf8_lossy(&receiver.stderr).contains("over QUIC"));
}

#[test]
fn a_wrong_code_through_a_rendezvous_is_refused_and_nothing_is_written() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_server, addr) = rendezvous(dir.path(), None);
    let file = dir.path().join("secret.txt");
    std::fs::write(&file, b"not for strangers").expect("write");
    let out = dir.path().join("out");
    std::fs::create_dir_all(&out).expect("mkdir");
    let (a, b) = (side(dir.path(), "a"), side(dir.path(), "b"));
    let mut sender = a
        .command(&[])
        .arg("send")
        .arg(&file)
        .args(["--rendezvous", &addr, "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("sender");
    let mut first = String::new();
    BufReader::new(sender.stdout.take().expect("stdout"))
        .read_line(&mut first)
        .expect("code line");
    let code: serde_json::Value = serde_json::from_str(&first).expect("JSON");
    let code = code["code"].as_str().expect("code");
    // The right mailbox, another secret.
    let nameplate = code.split('-').next().expect("nameplate");
    let wrong = format!("{nameplate}-zoo-zoo");
    let receiver = b
        .command(&[])
        .args(["receive", &wrong, "--rendezvous", &addr, "--output"])
        .arg(&out)
        .output()
        .expect("receiver");
    let sender = sender.wait_with_output().expect("sender exit");
    assert_eq!(
        receiver.status.code(),
        Some(8),
        "{}",
        String::from_utf8_lossy(&receiver.stderr)
    );
    assert!(String::from_utf8_lossy(&receiver.stderr).contains("wrong code"));
    assert_eq!(sender.status.code(), Some(8));
    assert!(
        receiver_files(&out).is_empty(),
        "{:?}",
        receiver_files(&out)
    );
}

#[test]
fn a_transfer_that_starts_on_the_relay_moves_to_a_direct_path_without_resending() {
    let Some(turn) = coturn() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let (_server, addr) = rendezvous(dir.path(), Some(&turn));
    let file = dir.path().join("movie.bin");
    let size = 6usize << 20;
    random_file(&file, size, 31);
    let out = dir.path().join("out");
    std::fs::create_dir_all(&out).expect("mkdir");
    // Both sides hold the checks back for 1 s: the transfer starts on the relay, and
    // at 2 MiB/s it is still running when the direct path comes up.
    let (sender, receiver) = transfer(
        dir.path(),
        &addr,
        &file,
        &out,
        &[("P2P_DIRECT_AFTER_MS", "1000")],
        &["--max-speed", "2M"],
    );
    assert!(
        sender.status.success() && receiver.status.success(),
        "sender: {}\nreceiver: {}",
        String::from_utf8_lossy(&sender.stderr),
        String::from_utf8_lossy(&receiver.stderr)
    );
    assert_eq!(sha256_file(&out.join("movie.bin")), sha256_file(&file));
    let received = events(&receiver.stdout);
    let paths = paths_of(&received);
    assert_eq!(
        paths.first().map(String::as_str),
        Some("relay"),
        "{paths:?}"
    );
    assert!(
        paths.iter().any(|p| p == "direct" || p == "lan"),
        "never left the relay: {paths:?}"
    );
    // One connection, nothing sent twice: no resume, and this attempt moved it all.
    assert!(!received.iter().any(|e| e["event"] == "resumed"));
    let done = received
        .iter()
        .find(|e| e["event"] == "done")
        .expect("done event");
    assert_eq!(done["moved_bytes"].as_u64(), Some(size as u64));
    // Progress said so, and history keeps both paths.
    let history = side(dir.path(), "b")
        .command(&[])
        .args(["history", "--json"])
        .output()
        .expect("history");
    let record: serde_json::Value = serde_json::from_str(
        String::from_utf8_lossy(&history.stdout)
            .lines()
            .next()
            .expect("a record"),
    )
    .expect("JSON record");
    let recorded: Vec<&str> = record["paths"]
        .as_array()
        .expect("paths")
        .iter()
        .filter_map(|p| p.as_str())
        .collect();
    assert_eq!(recorded.first(), Some(&"relay"), "{record}");
    assert!(recorded.len() >= 2, "{record}");
}

#[test]
fn the_relay_carries_the_whole_transfer_when_no_direct_path_is_allowed() {
    let Some(turn) = coturn() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let (_server, addr) = rendezvous(dir.path(), Some(&turn));
    let file = dir.path().join("data.bin");
    random_file(&file, 4 << 20, 7);
    let out = dir.path().join("out");
    std::fs::create_dir_all(&out).expect("mkdir");
    let (sender, receiver) = transfer(
        dir.path(),
        &addr,
        &file,
        &out,
        &[("P2P_PATH", "relay")],
        &[],
    );
    assert!(
        sender.status.success() && receiver.status.success(),
        "sender: {}\nreceiver: {}",
        String::from_utf8_lossy(&sender.stderr),
        String::from_utf8_lossy(&receiver.stderr)
    );
    assert_eq!(sha256_file(&out.join("data.bin")), sha256_file(&file));
    assert_eq!(paths_of(&events(&receiver.stdout)), ["relay"]);
}

#[test]
fn bad_flags_fail_before_the_rendezvous_is_contacted_and_an_unreachable_one_is_said_in_words() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = side(dir.path(), "a");
    let file = dir.path().join("f.txt");
    std::fs::write(&file, b"x").expect("write");
    // Nothing listens on port 1: a size out of range is still a usage error (exit 2),
    // and a missing file a file error (exit 7), both before any connection.
    let out = a
        .command(&[])
        .arg("send")
        .arg(&file)
        .args(["--rendezvous", "127.0.0.1:1", "--chunk-size", "64G"])
        .output()
        .expect("run");
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = a
        .command(&[])
        .args(["send", "does-not-exist", "--rendezvous", "127.0.0.1:1"])
        .output()
        .expect("run");
    assert_eq!(
        out.status.code(),
        Some(7),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A rendezvous nobody runs: exit 3, naming it.
    let out = a
        .command(&[])
        .args([
            "receive",
            "7-guitar-orbit",
            "--rendezvous",
            "127.0.0.1:1",
            "--output",
        ])
        .arg(dir.path())
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("rendezvous server 127.0.0.1:1: nothing is listening there"),
        "{stderr}"
    );
    assert!(!stderr.contains("os error"), "{stderr}");
    // And the environment variable works like the flag.
    let out = a
        .command(&[("P2P_RENDEZVOUS", "127.0.0.1:1")])
        .args(["receive", "7-guitar-orbit", "--output"])
        .arg(dir.path())
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("127.0.0.1:1"));
    // So does the settings file (the GUI's), when neither is given.
    let config = dir.path().join("config");
    std::fs::create_dir_all(&config).expect("mkdir");
    std::fs::write(
        config.join("settings.json"),
        r#"{"rendezvous": "127.0.0.1:2"}"#,
    )
    .expect("settings");
    let out = a
        .command(&[("P2P_TRANSFER_CONFIG_DIR", config.to_str().expect("utf-8"))])
        .args(["receive", "7-guitar-orbit", "--output"])
        .arg(dir.path())
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("127.0.0.1:2"));
}
