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

/// A process's output lines, read on a thread so that waits can time out.
type Lines = std::sync::mpsc::Receiver<String>;

fn lines_of(stdout: std::process::ChildStdout) -> Lines {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line.unwrap_or_default()).is_err() {
                break;
            }
        }
    });
    rx
}

/// Longest wait for a process to say something; a hang fails the test instead of CI.
const PATIENCE: Duration = Duration::from_secs(90);

/// Kills every process it was given when the test ends, passed or failed, so that no
/// listening receiver outlives a failed test.
#[derive(Default)]
struct Reaper(std::sync::Mutex<Vec<u32>>);

impl Reaper {
    fn watch(&self, child: &Child) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(child.id());
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        for pid in self.0.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
    }
}

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
    let lines = lines_of(child.stdout.take().unwrap());
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    loop {
        let mut line = String::new();
        if stderr.read_line(&mut line).unwrap_or(0) == 0 {
            let status = child.wait();
            panic!("receiver exited before listening: {status:?}");
        }
        if let Some(addr) = line.trim().strip_prefix("listening on ") {
            let addr = addr.to_owned();
            // Shown with the test's output when it fails.
            std::thread::spawn(move || {
                for line in stderr.lines() {
                    eprintln!("receiver: {}", line.unwrap_or_default());
                }
            });
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
    wait_for_line(lines, "Receiving");
}

/// Waits for an output line starting with `prefix`.
fn wait_for_line(lines: &mut Lines, prefix: &str) {
    loop {
        match lines.recv_timeout(PATIENCE) {
            Ok(line) if line.starts_with(prefix) => return,
            Ok(_) => {}
            Err(e) => panic!("no line starting with {prefix:?}: {e}"),
        }
    }
}

#[test]
fn kill_9_of_the_receiver_ten_times_loses_nothing() {
    let mut rng = StdRng::seed_from_u64(seed());
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let src = tmp.path().join("disk.img");
    // Big and slow enough that ten attempts of at most 800 ms cannot finish it.
    let len = 160 << 20;
    random_file(&src, len, 64);
    let out = tmp.path().join("out");

    let reaper = Reaper::default();
    let (mut rx, addr, mut lines) = receiver(&data, &out, 0);
    reaper.watch(&rx);
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
            "16M",
            "--chunk-size",
            "1M",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    reaper.watch(&sender);
    for kill in 0..KILLS {
        wait_started(&mut lines);
        // Long enough, mostly, for a state save (every 250 ms) to land first.
        let pause = rng.random_range(300..800);
        std::thread::sleep(Duration::from_millis(pause)); // the fault's timing
        println!("kill {kill}: receiver killed {pause} ms into an attempt");
        kill9(&mut rx);
        (rx, _, lines) = receiver(&data, &out, port);
        reaper.watch(&rx);
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
    let reaper = Reaper::default();
    let (mut rx, addr, mut lines) = receiver(&data, &out, 0);
    reaper.watch(&rx);
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
            .args(["--max-speed", "12M", "--chunk-size", "1M"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    for kill in 0..KILLS {
        let mut sender = start_sender();
        reaper.watch(&sender);
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

/// A tmpfs mounted for one test, unmounted on drop. `None` (with the reason printed)
/// where mounting is impossible — except under CI, where the test must run.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, options: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs", dir.to_str().unwrap()])
            .status();
        match status {
            Ok(s) if s.success() => Some(Tmpfs(dir.to_path_buf())),
            other => {
                let why = format!("cannot mount a tmpfs (needs root): {other:?}");
                assert!(std::env::var_os("CI").is_none(), "{why}");
                println!("SKIPPED: {why}");
                None
            }
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn an_unwritable_output_folder_is_a_clear_error_before_any_data_moves() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let out = tmp.path().join("readonly");
    let Some(_mount) = Tmpfs::mount(&out, "size=4m,ro") else {
        return;
    };
    // Said by the receiver at start, before it listens: the folder is its problem, not
    // a sender's (which used to get exit 7, "local file system error", for it).
    let receive = p2p(&data)
        .args(["receive", "--output", out.to_str().unwrap()])
        .args(["--port", "0", "--bind", "127.0.0.1"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&receive.stderr);
    assert_eq!(receive.status.code(), Some(7), "{stderr}");
    assert!(
        stderr.contains("cannot write into output folder") && stderr.contains("readonly"),
        "{stderr}"
    );
    assert!(!stderr.contains("listening on"), "{stderr}");
    assert!(
        std::fs::read_dir(&out).unwrap().next().is_none(),
        "nothing written"
    );
}

#[test]
fn a_full_disk_stops_with_a_clear_error_keeps_state_and_resumes_after_space_is_freed() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let out = tmp.path().join("small-disk");
    let Some(_mount) = Tmpfs::mount(&out, "size=20m") else {
        return;
    };
    let src = tmp.path().join("movie.mp4");
    let len = 16 << 20;
    random_file(&src, len, 8);
    let id = uuid::Uuid::new_v4().to_string();
    let send = |addr: &str| {
        p2p(&data)
            .args([
                "resume",
                &id,
                "--path",
                src.to_str().unwrap(),
                "--peer",
                addr,
            ])
            .args([
                "--max-speed",
                "8M",
                "--chunk-size",
                "1M",
                "--auto-reconnect",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };

    let (mut rx, addr, mut lines, rx_err) = p2p_receiver_once(&data, &out);
    let sender = send(&addr);
    // Once about a second of data has arrived (and been saved), something else fills
    // the disk.
    wait_for_line(&mut lines, "progress");
    wait_for_line(&mut lines, "progress");
    let filler = out.join("someone-elses-file");
    let mut f = std::fs::File::create(&filler).unwrap();
    let block = vec![0u8; 1 << 20];
    while f.write_all(&block).is_ok() {}
    drop(f);
    let sent = sender.wait_with_output().unwrap();
    let status = rx.wait().unwrap();
    let receiver_err = rx_err.join().unwrap();
    assert_eq!(status.code(), Some(7), "{receiver_err}");
    assert!(receiver_err.contains("No space left"), "{receiver_err}");
    let sender_err = String::from_utf8_lossy(&sent.stderr);
    assert_eq!(
        sent.status.code(),
        Some(7),
        "a full disk is not retried: {sender_err}"
    );
    assert!(!sender_err.contains("reconnecting"), "{sender_err}");
    let kept: Vec<_> = tree_digest(&out)
        .into_keys()
        .filter(|k| k.ends_with(".resume"))
        .collect();
    assert_eq!(kept.len(), 1, "the resume state is kept");

    // Space is freed; the same command resumes and completes.
    std::fs::remove_file(&filler).unwrap();
    let (mut rx, addr, _lines, _) = p2p_receiver_once(&data, &out);
    let sent = send(&addr).wait_with_output().unwrap();
    assert!(
        sent.status.success(),
        "{}",
        String::from_utf8_lossy(&sent.stderr)
    );
    assert!(rx.wait().unwrap().success());
    assert!(String::from_utf8_lossy(&sent.stdout).contains("resuming:"));
    assert_eq!(sha256_file(&out.join("movie.mp4")), sha256_file(&src));
}

/// A receiver without auto-reconnect (it exits after one session); the last element
/// collects the rest of its stderr.
#[allow(clippy::zombie_processes)]
fn p2p_receiver_once(
    data: &Path,
    out: &Path,
) -> (Child, String, Lines, std::thread::JoinHandle<String>) {
    let mut child = p2p(data)
        .args(["receive", "--output", out.to_str().unwrap()])
        .args(["--bind", "127.0.0.1", "--port", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = lines_of(child.stdout.take().unwrap());
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    while stderr.read_line(&mut line).unwrap_or(0) > 0 {
        if let Some(addr) = line.trim().strip_prefix("listening on ") {
            let addr = addr.to_owned();
            let rest = std::thread::spawn(move || {
                let mut rest = String::new();
                let _ = stderr.read_to_string(&mut rest);
                rest
            });
            return (child, addr, lines, rest);
        }
        line.clear();
    }
    let status = child.wait();
    panic!("receiver exited before listening: {status:?}");
}
