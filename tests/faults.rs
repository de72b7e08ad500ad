//! Fault injection with the real binary: `kill -9` of either side at random points,
//! again and again, each time restarting it. The random seed is printed (set
//! `FAULT_SEED` to replay a run); the final file must be byte-identical.
//!
//! The random pause before each kill is the fault's timing, not synchronisation: every
//! wait for a process to be ready reads its output.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const KILLS: usize = 10;

fn seed() -> u64 {
    let seed = std::env::var("FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    println!("FAULT_SEED={seed}");
    seed
}

fn p2p(data: &Path) -> Command {
    let mut cmd = Command::new(binary());
    cmd.env("P2P_TRANSFER_DATA_DIR", data);
    cmd
}

type Lines = std::io::Lines<BufReader<std::process::ChildStdout>>;

/// Starts a receiver on `port` (0: any) and returns it with its address once it listens,
/// and its output lines. (The caller waits for or kills the child.)
#[allow(clippy::zombie_processes)]
fn receiver(data: &Path, out: &Path, port: u16) -> (Child, String, Lines) {
    let mut child = p2p(data)
        .args([
            "receive",
            "--output",
            out.to_str().unwrap(),
            "--auto-reconnect",
        ])
        .args([
            "--max-retries",
            "0",
            "--bind",
            "127.0.0.1",
            "--port",
            &port.to_string(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    loop {
        let mut line = String::new();
        if stderr.read_line(&mut line).unwrap_or(0) == 0 {
            let status = child.wait();
            panic!("receiver exited before listening: {status:?}");
        }
        if let Some(addr) = line.trim().strip_prefix("listening on ") {
            let addr = addr.to_owned();
            std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
            return (child, addr, lines);
        }
    }
}

/// A forwarder on 127.0.0.1 that counts the bytes going from senders to the receiver
/// (what was sent over the wire, across every attempt). Connections the receiver
/// refuses (it is being restarted) are dropped, like a real network would.
fn counting_proxy(target: String) -> (String, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let counted = Arc::new(AtomicU64::new(0));
    let total = counted.clone();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { continue };
            let Ok(server) = TcpStream::connect(&target) else {
                continue;
            };
            let total = total.clone();
            std::thread::spawn(move || {
                let (mut s_read, mut c_write) =
                    (server.try_clone().unwrap(), client.try_clone().unwrap());
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut s_read, &mut c_write);
                    let _ = c_write.shutdown(Shutdown::Both);
                });
                let (mut c_read, mut s_write) = (client, server);
                let mut buf = vec![0u8; 64 * 1024];
                while let Ok(n) = c_read.read(&mut buf) {
                    if n == 0 || s_write.write_all(&buf[..n]).is_err() {
                        break;
                    }
                    total.fetch_add(n as u64, Ordering::Relaxed);
                }
                let _ = s_write.shutdown(Shutdown::Both);
            });
        }
    });
    (addr, counted)
}

fn kill9(child: &mut Child) {
    let _ = child.kill(); // SIGKILL
    let _ = child.wait();
}

/// Waits until the receiver reports that a transfer (re)started: data is about to flow.
fn wait_started(lines: &mut Lines) {
    for line in lines.by_ref() {
        if line.unwrap_or_default().starts_with("Receiving") {
            return;
        }
    }
    panic!("the receiver ended before a transfer started");
}

#[test]
fn kill_9_of_the_receiver_ten_times_loses_nothing() {
    let mut rng = StdRng::seed_from_u64(seed());
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let src = tmp.path().join("disk.img");
    let len = 64 << 20;
    random_file(&src, len, 64);
    let out = tmp.path().join("out");

    let (mut rx, addr, mut lines) = receiver(&data, &out, 0);
    let port: u16 = addr.rsplit(':').next().unwrap().parse().unwrap();
    let (proxy, wire_bytes) = counting_proxy(addr);
    let mut sender = p2p(&data)
        .args([
            "send",
            src.to_str().unwrap(),
            "--peer",
            &proxy,
            "--auto-reconnect",
        ])
        .args([
            "--max-retries",
            "0",
            "--max-speed",
            "48M",
            "--chunk-size",
            "1M",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    for kill in 0..KILLS {
        wait_started(&mut lines);
        let pause = rng.random_range(20..400);
        std::thread::sleep(Duration::from_millis(pause)); // the fault's timing
        println!("kill {kill}: receiver killed {pause} ms into an attempt");
        kill9(&mut rx);
        (rx, _, lines) = receiver(&data, &out, port);
    }
    let status = sender.wait().unwrap();
    let mut sender_out = String::new();
    sender
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut sender_out)
        .unwrap();
    assert!(status.success(), "{sender_out}");
    let rx_status = rx.wait().unwrap();
    assert!(rx_status.success());
    assert_eq!(sha256_file(&out.join("disk.img")), sha256_file(&src));
    assert!(partial_files(&out).is_empty());
    let wire = wire_bytes.load(Ordering::Relaxed);
    let resent = wire.saturating_sub(len as u64);
    println!(
        "receiver killed {KILLS} times: {wire} bytes on the wire for {len}, \
         {resent} bytes ({:.1} MiB) re-sent",
        resent as f64 / (1 << 20) as f64
    );
    assert!(sender_out.contains("resuming:"), "{sender_out}");
}

#[test]
fn kill_9_of_the_sender_ten_times_loses_nothing() {
    let mut rng = StdRng::seed_from_u64(seed());
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let src = tmp.path().join("archive.zip");
    let len = 64 << 20;
    random_file(&src, len, 65);
    let out = tmp.path().join("out");
    let (mut rx, addr, mut lines) = receiver(&data, &out, 0);
    let (proxy, wire_bytes) = counting_proxy(addr);
    // `resume` with a fresh id is a first send under a known id: every restart resumes it.
    let id = uuid::Uuid::new_v4().to_string();
    let start_sender = || {
        p2p(&data)
            .args([
                "resume",
                &id,
                "--path",
                src.to_str().unwrap(),
                "--peer",
                &proxy,
            ])
            .args(["--max-speed", "48M", "--chunk-size", "1M"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    for kill in 0..KILLS {
        let mut sender = start_sender();
        wait_started(&mut lines);
        let pause = rng.random_range(20..400);
        std::thread::sleep(Duration::from_millis(pause)); // the fault's timing
        println!("kill {kill}: sender killed {pause} ms into an attempt");
        kill9(&mut sender);
    }
    let last = start_sender().wait_with_output().unwrap();
    assert!(
        last.status.success(),
        "{}",
        String::from_utf8_lossy(&last.stderr)
    );
    // The last session ended cleanly: the receiver is done too.
    for _ in lines.by_ref() {}
    assert!(rx.wait().unwrap().success());
    assert_eq!(sha256_file(&out.join("archive.zip")), sha256_file(&src));
    assert!(partial_files(&out).is_empty());
    let wire = wire_bytes.load(Ordering::Relaxed);
    let resent = wire.saturating_sub(len as u64);
    println!(
        "sender killed {KILLS} times: {wire} bytes on the wire for {len}, \
         {resent} bytes ({:.1} MiB) re-sent",
        resent as f64 / (1 << 20) as f64
    );
}
