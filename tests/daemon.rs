//! The `daemon`, `shares` and `unshare` commands of the real binary, on a temporary
//! data folder.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use p2p_core::daemon::{self, ShareRecord};

const WAIT: Duration = Duration::from_secs(20);

fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_p2p-transfer"))
}

fn command(dir: &Path, args: &[&str]) -> Output {
    Command::new(binary())
        .args(args)
        .env("P2P_TRANSFER_DATA_DIR", dir)
        .env_remove("RUST_LOG")
        .output()
        .expect("the binary runs")
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Starts `daemon` and waits for its "listening" line; its stderr keeps draining.
fn start_daemon(dir: &Path) -> (Child, String) {
    let mut child = Command::new(binary())
        .arg("daemon")
        .env("P2P_TRANSFER_DATA_DIR", dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the daemon starts");
    let stderr = child.stderr.take().expect("piped stderr");
    let (lines, listening) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = lines.send(line);
        }
    });
    loop {
        match listening.recv_timeout(WAIT) {
            Ok(line) if line.starts_with("daemon listening on ") => return (child, line),
            Ok(_) => {}
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the daemon did not say it listens: {e}");
            }
        }
    }
}

/// Waits (bounded) for `child` to exit.
fn exited(mut child: Child) -> std::process::ExitStatus {
    let (done, status) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(child.wait());
    });
    status
        .recv_timeout(WAIT)
        .expect("the daemon exits in time")
        .expect("waiting works")
}

#[test]
fn shares_without_a_daemon_says_nothing_is_shared() {
    let dir = tempfile::tempdir().unwrap();
    let out = command(dir.path(), &["shares"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("no daemon runs: nothing is shared"),
        "{}",
        text(&out)
    );
    assert!(out.stdout.is_empty());
    assert!(
        !dir.path().join(daemon::SOCKET_FILE).exists(),
        "no daemon was started"
    );

    let out = command(dir.path(), &["unshare", "abc"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("nothing to unshare"), "{}", text(&out));
}

#[test]
fn the_daemon_lists_nothing_then_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let (child, line) = start_daemon(dir.path());
    let socket = dir.path().join(daemon::SOCKET_FILE);
    assert_eq!(line, format!("daemon listening on {}", socket.display()));

    let out = command(dir.path(), &["shares"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("no shares"), "{}", text(&out));

    // A second one on the same folder refuses, naming the first.
    let out = command(dir.path(), &["daemon"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let expected = format!("a daemon already runs (pid {})", child.id());
    assert!(text(&out).contains(&expected), "{}", text(&out));

    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(kill.success());
    let status = exited(child);
    assert_eq!(status.code(), Some(0), "{status:?}");
    assert!(!socket.exists(), "the socket is removed");
}

/// A rendezvous server (the tracker) on 127.0.0.1, killed on drop.
struct Tracker(Child, String);

impl Drop for Tracker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn tracker() -> Tracker {
    let mut child = Command::new(binary())
        .args(["rendezvous", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("rendezvous starts");
    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let line = lines
        .by_ref()
        .map_while(Result::ok)
        .find(|l| l.contains("listening on "))
        .expect("the rendezvous says where it listens");
    std::thread::spawn(move || for _ in lines {});
    let addr = line
        .split("listening on ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .expect("address")
        .to_owned();
    Tracker(child, addr)
}

/// A real share of a small folder in `dir`: its `.p2p` file and root (hex).
fn real_share(dir: &Path, tracker: &str) -> (PathBuf, PathBuf, String) {
    use p2p_core::swarm::{hash_share, ShareFile, Ticket};
    let folder = dir.join("holiday");
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::write(folder.join("beach.jpg"), vec![7u8; 300_000]).unwrap();
    let share = hash_share(&[&folder], &mut |_, _| {}).unwrap();
    let file = dir.join("holiday.p2p");
    ShareFile {
        ticket: Ticket {
            root: share.root,
            tracker: Some(tracker.to_owned()),
            trusted: vec![],
        },
        manifest: Some(share.manifest.clone()),
    }
    .write_new(&file)
    .unwrap();
    (file, folder, share.root.to_hex())
}

#[test]
fn a_daemon_started_on_demand_serves_shares_and_unshare_removes_one() {
    let dir = tempfile::tempdir().unwrap();
    let tracker = tracker();
    let (share_file, folder, root) = real_share(dir.path(), &tracker.1);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let mut client = daemon::ensure_running(dir.path(), &binary())
            .await
            .expect("the daemon starts on demand");
        let pid = client.ping().await.unwrap().pid;
        assert_ne!(pid, std::process::id());
        // A record whose files are not there is refused, and not kept.
        let missing = ShareRecord {
            root: format!("3fa9c2e1b0d4{}", "0".repeat(52)),
            name: "gone".into(),
            share_file: dir.path().join("gone.p2p"),
            sources: vec![dir.path().join("gone")],
            rendezvous: tracker.1.clone(),
            added_unix: 1_700_000_000,
            max_upload: None,
        };
        let refused = client.add(&missing).await.unwrap_err().to_string();
        assert!(refused.contains("cannot serve gone"), "{refused}");
        assert!(client.list().await.unwrap().is_empty());
        let record = ShareRecord {
            root: root.clone(),
            name: "holiday\u{1b}[2J".into(),
            share_file: share_file.clone(),
            sources: vec![folder.clone()],
            rendezvous: tracker.1.clone(),
            added_unix: 1_700_000_000,
            max_upload: None,
        };
        assert!(!client.add(&record).await.unwrap());

        // Once running, ensure_running finds it instead of starting another.
        let mut again = daemon::ensure_running(dir.path(), &binary()).await.unwrap();
        assert_eq!(again.ping().await.unwrap().pid, pid);

        let out = command(dir.path(), &["shares"]);
        assert!(out.status.success(), "{}", text(&out));
        let table = String::from_utf8_lossy(&out.stdout);
        assert!(table.contains("holiday\\u{1b}[2J"), "{table}");
        assert!(table.contains(&format!("{} ", &root[..12])), "{table}");
        assert!(table.contains("serving"), "{table}");

        let out = command(dir.path(), &["shares", "--json"]);
        let line = String::from_utf8_lossy(&out.stdout);
        let listed: serde_json::Value = serde_json::from_str(line.trim()).unwrap();
        assert_eq!(listed["record"]["root"], record.root.as_str());
        assert_eq!(listed["stats"]["state"], "serving");

        let out = command(dir.path(), &["unshare", "nothing-like-it"]);
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        assert!(text(&out).contains("no share is named"), "{}", text(&out));
        let out = command(dir.path(), &["unshare", &root[..4].to_uppercase()]);
        assert!(out.status.success(), "{}", text(&out));
        assert!(
            text(&out).contains("stopped sharing holiday"),
            "{}",
            text(&out)
        );
        assert!(client.list().await.unwrap().is_empty());

        client.stop().await.unwrap();
    });
    // The stopped daemon removes its socket; wait for it (bounded) by connecting.
    let socket = dir.path().join(daemon::SOCKET_FILE);
    let deadline = std::time::Instant::now() + WAIT;
    while socket.exists() {
        assert!(std::time::Instant::now() < deadline, "the socket stays");
        std::thread::yield_now();
    }
    let log = std::fs::read_to_string(dir.path().join(daemon::LOG_FILE)).unwrap();
    assert!(log.contains("daemon listening on"), "{log}");
}

#[test]
fn sigint_stops_the_daemon_with_exit_code_zero() {
    let dir = tempfile::tempdir().unwrap();
    let (child, _) = start_daemon(dir.path());
    let kill = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(kill.success());
    let status = exited(child);
    assert_eq!(status.code(), Some(0), "{status:?}");
    assert!(!dir.path().join(daemon::SOCKET_FILE).exists());
}
