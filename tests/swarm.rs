//! Shares and swarm downloads with the real binary on 127.0.0.1 (issue 14): a rendezvous
//! server as the tracker, `share --foreground` seeds, `get` downloads; kill -9 and
//! resume; bad input. Peers behind NATs: tests/natlab/swarm.rs.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Output, Stdio};
use std::time::Duration;

use common::*;

/// A child process killed when the test ends, however it ends.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The first line of `reader` that contains `needle`.
fn line_with(reader: impl std::io::Read, needle: &str) -> String {
    for line in BufReader::new(reader).lines() {
        let line = line.expect("line");
        if line.contains(needle) {
            return line;
        }
    }
    panic!("ended without a line containing {needle:?}");
}

fn tracker() -> (Guard, String) {
    let mut child = Command::new(binary())
        .args([
            "rendezvous",
            "--listen",
            "127.0.0.1:0",
            "--max-per-ip",
            "1000",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start rendezvous");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    let line = lines
        .by_ref()
        .map(|l| l.expect("line"))
        .find(|l| l.contains("rendezvous listening on "))
        .expect("listening line");
    std::thread::spawn(move || for _ in lines {});
    let addr = line
        .split("listening on ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .expect("address")
        .to_owned();
    (Guard(child), addr)
}

/// A command of the binary with its own data folder (its own device key).
fn p2p(data: &Path) -> Command {
    std::fs::create_dir_all(data).expect("data dir");
    let mut cmd = Command::new(binary());
    cmd.env("P2P_TRANSFER_DATA_DIR", data)
        .env("P2P_NO_PORTMAP", "1")
        .env_remove("P2P_RENDEZVOUS");
    cmd
}

/// A seed: `share --foreground`; returns it, the .p2p file and the ticket.
fn seed(
    root: &Path,
    name: &str,
    tracker: &str,
    what: &Path,
    extra: &[&str],
) -> (Guard, PathBuf, String) {
    let file = root.join(format!("{name}.p2p"));
    let mut child = p2p(&root.join(name))
        .arg("share")
        .arg(what)
        .args(["--foreground", "--rendezvous", tracker, "--output-file"])
        .arg(&file)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start share");
    let stdout = child.stdout.take().expect("stdout");
    let ticket = line_with(stdout, "ticket: ")
        .trim_start_matches("ticket: ")
        .to_owned();
    // Serving once it says so (announced to the tracker before this line).
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    lines
        .by_ref()
        .map(|l| l.expect("line"))
        .find(|l| l.contains("serving "))
        .expect("serving line");
    std::thread::spawn(move || for _ in lines {});
    (Guard(child), file, ticket)
}

fn share_tree(root: &Path, size: usize) -> PathBuf {
    let dir = root.join("album");
    std::fs::create_dir_all(dir.join("sub")).expect("mkdir");
    random_file(&dir.join("big.bin"), size, 1);
    random_file(&dir.join("sub/small.bin"), 1000, 2);
    std::fs::write(dir.join("empty"), b"").expect("write");
    dir
}

fn get(data: &Path, source: &str, out: &Path, tracker: Option<&str>) -> Command {
    let mut cmd = p2p(data);
    cmd.arg("get").arg(source).arg("-o").arg(out).arg("--json");
    if let Some(t) = tracker {
        cmd.args(["--rendezvous", t]);
    }
    cmd
}

/// `get` without `--rendezvous` (the share names its tracker): it must succeed and
/// deliver exactly `source` under `out/album`.
fn get_ok(data: &Path, what: &str, out: &Path, source: &Path) -> Output {
    let got = run(&mut get(data, what, out, None));
    assert!(
        got.status.success(),
        "{}",
        String::from_utf8_lossy(&got.stderr)
    );
    assert_eq!(tree_digest(&out.join("album")), tree_digest(source));
    got
}

fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null()).output().expect("run")
}

fn json_lines(out: &[u8]) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(out)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn event<'a>(events: &'a [serde_json::Value], name: &str) -> Option<&'a serde_json::Value> {
    events.iter().find(|e| e["event"] == name)
}

#[test]
fn a_share_file_and_a_ticket_both_fetch_the_same_bytes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let (_tracker, addr) = tracker();
    let source = share_tree(root, 3 * 1024 * 1024 + 5);
    let (_seed, file, ticket) = seed(root, "seed", &addr, &source, &[]);
    assert!(ticket.starts_with("p2p1"), "{ticket}");

    // The .p2p file names the tracker: no --rendezvous needed.
    let out1 = root.join("out1");
    let got = get_ok(
        &root.join("d1"),
        file.to_str().expect("utf-8"),
        &out1,
        &source,
    );
    let events = json_lines(&got.stdout);
    let done = event(&events, "done").expect("done event");
    assert_eq!(done["bytes"], 3 * 1024 * 1024 + 5 + 1000);

    // The ticket: the manifest comes from the peer, checked against the root hash.
    let out2 = root.join("out2");
    get_ok(&root.join("d2"), &ticket, &out2, &source);
    assert!(partial_files(&out2).is_empty());

    // Again into the same folder: the files exist; nothing is overwritten.
    std::fs::write(out2.join("album/big.bin"), b"mine").expect("write");
    let again = run(&mut get(&root.join("d2"), &ticket, &out2, None));
    assert_eq!(
        again.status.code(),
        Some(5),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    let said = String::from_utf8_lossy(&again.stdout).to_string()
        + &String::from_utf8_lossy(&again.stderr);
    assert!(said.contains("exist"), "{said}");
    assert_eq!(
        std::fs::read(out2.join("album/big.bin")).expect("read"),
        b"mine"
    );
}

/// The download's JSON lines, read as they come.
fn json_reader(stdout: ChildStdout) -> impl Iterator<Item = serde_json::Value> {
    BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .filter_map(|l| serde_json::from_str(&l).ok())
}

#[test]
fn a_killed_download_resumes_with_only_the_missing_pieces() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let (_tracker, addr) = tracker();
    let size = 12 * 1024 * 1024;
    let source = share_tree(root, size);
    // Many one-piece files: each is finalized the moment its piece arrives, so the kill
    // lands soon after some file reached its final place (the resume state must say so,
    // or the next attempt refuses it as "already exists").
    std::fs::create_dir_all(source.join("many")).expect("mkdir");
    for i in 0..40u64 {
        random_file(
            &source.join(format!("many/f{i:02}.bin")),
            64 * 1024,
            100 + i,
        );
    }
    // Slow enough to be killed part way.
    let (seed_guard, file, _) = seed(root, "seed", &addr, &source, &["--max-upload", "3M"]);
    let out = root.join("out");
    let data = root.join("d");
    let mut child = get(&data, file.to_str().expect("utf-8"), &out, None)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("get");
    let mut events = json_reader(child.stdout.take().expect("stdout"));
    let have = events
        .find(|e| {
            e["event"] == "progress" && e["have_bytes"].as_u64().unwrap_or(0) >= 3 * 1024 * 1024
        })
        .expect("progress");
    let before = have["have_bytes"].as_u64().expect("bytes");
    assert!(
        before < size as u64 + 1000 + 40 * 64 * 1024,
        "finished before the kill: {have}"
    );
    // kill -9: no chance to save anything on the way out.
    child.kill().expect("kill -9");
    let _ = child.wait();
    // No partial file at a final path.
    assert!(!out.join("album/big.bin").exists());
    drop(seed_guard);

    // A fresh seed, unthrottled; the same command again.
    let (_seed, _, _) = seed(root, "seed2", &addr, &source, &[]);
    let got = get_ok(&data, file.to_str().expect("utf-8"), &out, &source);
    let events = json_lines(&got.stdout);
    let manifest = event(&events, "manifest").expect("manifest event");
    let resumed = manifest["resumed_pieces"].as_u64().expect("resumed");
    assert!(resumed >= 8, "only {resumed} pieces resumed: {manifest}");
    let done = event(&events, "done").expect("done");
    let moved = done["downloaded"].as_u64().expect("downloaded");
    let total = size as u64 + 1000 + 40 * 64 * 1024;
    assert!(moved < total, "fetched all {moved} bytes again");
    assert!(
        moved <= total - 8 * 64 * 1024,
        "fetched {moved} of {total} bytes again, {resumed} pieces were there"
    );
    eprintln!("killed at {before} bytes; resumed {resumed} pieces; fetched {moved} bytes after");
}

#[test]
fn bad_input_gets_a_clear_error_and_touches_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let out = root.join("out");
    let cases: [(&str, Option<&str>, &str); 3] = [
        ("p2p1garbage!", Some("127.0.0.1:9"), "not a share ticket"),
        (
            "missing.p2p",
            Some("127.0.0.1:9"),
            "neither a .p2p file nor a ticket",
        ),
        ("p2p1", None, "not a share ticket"),
    ];
    for (source, tracker, expected) in cases {
        let got = run(&mut get(&root.join("d"), source, &out, tracker));
        assert_eq!(got.status.code(), Some(2), "{source}");
        let said = String::from_utf8_lossy(&got.stderr).to_string()
            + &String::from_utf8_lossy(&got.stdout);
        assert!(said.contains(expected), "{source}: {said}");
    }
    // A file that is not a share file.
    let fake = root.join("fake.p2p");
    std::fs::write(&fake, b"hello").expect("write");
    let got = run(&mut get(
        &root.join("d"),
        fake.to_str().expect("utf-8"),
        &out,
        Some("127.0.0.1:9"),
    ));
    assert_eq!(got.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&got.stderr).contains("not a .p2p share file"));
    // Sharing without any tracker says how to give one.
    let got = run(p2p(&root.join("s"))
        .args(["share", "--foreground"])
        .arg(&fake));
    assert_eq!(got.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&got.stderr).contains("--rendezvous"));
    assert!(!out.exists(), "the output folder was created for nothing");
    // A tracker that does not answer: exit 3, said.
    let share_file = root.join("x.p2p");
    let (_t, addr) = tracker();
    let source = share_tree(root, 1000);
    let (seed_guard, file, _) = seed(root, "seed", &addr, &source, &[]);
    std::fs::copy(&file, &share_file).expect("copy");
    drop(seed_guard);
    let got = run(&mut get(
        &root.join("d"),
        share_file.to_str().expect("utf-8"),
        &out,
        Some("127.0.0.1:9"),
    ));
    assert_eq!(
        got.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&got.stderr)
    );
    let _ = Duration::ZERO;
}

/// The daemon's pid, from its lock file.
fn daemon_pid(data: &Path) -> i32 {
    std::fs::read_to_string(data.join("daemon.lock"))
        .expect("daemon.lock")
        .trim()
        .parse()
        .expect("pid")
}

/// Waits (bounded) until process `pid` is gone.
fn wait_gone(pid: i32) {
    for _ in 0..200 {
        if !Path::new(&format!("/proc/{pid}")).exists()
            || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|s| s.contains(") Z "))
                .unwrap_or(true)
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("process {pid} did not exit");
}

#[test]
fn the_daemon_serves_a_share_across_a_restart_until_unshared() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let (_tracker, addr) = tracker();
    let source = share_tree(root, 2 * 1024 * 1024 + 3);
    let data = root.join("sharer");
    let file = root.join("album.p2p");
    // `share` without --foreground starts the daemon on demand and hands it the share.
    let shared = run(p2p(&data)
        .arg("share")
        .arg(&source)
        .args(["--rendezvous", &addr, "--output-file"])
        .arg(&file));
    assert!(
        shared.status.success(),
        "{}",
        String::from_utf8_lossy(&shared.stderr)
    );
    assert!(String::from_utf8_lossy(&shared.stderr).contains("through the background daemon"));
    let pid = daemon_pid(&data);
    let listed = run(p2p(&data).arg("shares"));
    let listed = String::from_utf8_lossy(&listed.stdout).to_string();
    assert!(
        listed.contains("album") && listed.contains("serving"),
        "{listed}"
    );

    let out1 = root.join("out1");
    get_ok(
        &root.join("d1"),
        file.to_str().expect("utf-8"),
        &out1,
        &source,
    );

    // SIGTERM: a clean stop, the socket removed.
    let killed = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    wait_gone(pid);
    assert!(
        !data.join("daemon.sock").exists(),
        "the socket was left behind"
    );
    let none = run(p2p(&data).arg("shares"));
    let said =
        String::from_utf8_lossy(&none.stdout).to_string() + &String::from_utf8_lossy(&none.stderr);
    assert!(said.contains("no daemon runs"), "{said}");

    // Started again, it serves the same share without being told.
    let mut daemon = p2p(&data)
        .arg("daemon")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("daemon");
    line_with(daemon.stderr.take().expect("stderr"), "daemon listening on");
    let _daemon = Guard(daemon);
    let out2 = root.join("out2");
    get_ok(
        &root.join("d2"),
        file.to_str().expect("utf-8"),
        &out2,
        &source,
    );

    // Unshared: gone from the list.
    let un = run(p2p(&data).args(["unshare", "album"]));
    assert!(
        un.status.success(),
        "{}",
        String::from_utf8_lossy(&un.stderr)
    );
    let listed = run(p2p(&data).arg("shares"));
    let said = String::from_utf8_lossy(&listed.stdout).to_string()
        + &String::from_utf8_lossy(&listed.stderr);
    assert!(said.contains("no shares"), "{said}");
}
