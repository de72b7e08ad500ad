//! The real `p2p-transfer` binary, run as two processes on 127.0.0.1.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::thread::JoinHandle;

use common::*;

/// A process that is listening: its address, the child, and its stderr, read as it
/// comes.
struct Listening {
    addr: String,
    child: Child,
    stderr: Lines,
}

impl Listening {
    /// Waits for the process and returns (exit code, stdout, stderr).
    fn finish(mut self) -> (i32, String, String) {
        let mut stdout = String::new();
        if let Some(mut out) = self.child.stdout.take() {
            out.read_to_string(&mut stdout).unwrap();
        }
        let status = self.child.wait().unwrap();
        (status.code().unwrap_or(-1), stdout, self.stderr.rest())
    }
}

/// Starts `p2p-transfer ARGS --port 0 --bind 127.0.0.1` and reads the address it
/// announces on stderr (no sleeping: the line is printed before it accepts).
fn start_listening(data: &Path, args: &[&str]) -> Listening {
    let mut child = p2p(data)
        .args(args)
        .args(["--port", "0", "--bind", "127.0.0.1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = Lines::new(child.stderr.take().unwrap());
    let seen = stderr.until("listening on ");
    let addr = seen
        .lines()
        .find_map(|l| l.trim().strip_prefix("listening on "))
        .unwrap()
        .to_owned();
    Listening {
        addr,
        child,
        stderr,
    }
}

/// The binary, with its history kept in `data` (never the user's own data folder).
fn p2p(data: &Path) -> Command {
    let mut cmd = Command::new(binary());
    cmd.env("P2P_TRANSFER_DATA_DIR", data);
    cmd
}

fn run(data: &Path, args: &[&str]) -> Output {
    p2p(data).args(args).output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// An error line is one readable sentence: no panic, no Debug dump.
fn assert_readable_error(stderr: &str) {
    assert!(stderr.contains("error: "), "{stderr}");
    for bad in ["panicked", "Os {", "kind:", "RUST_BACKTRACE"] {
        assert!(!stderr.contains(bad), "{bad:?} in {stderr}");
    }
}

#[test]
fn send_a_folder_between_two_processes() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("photos");
    random_file(&src.join("a.jpg"), 2_500_000, 1);
    random_file(&src.join("sub/b.txt"), 10, 2);
    random_file(&src.join("sub/empty.bin"), 0, 3);
    std::fs::create_dir_all(src.join("empty-dir")).unwrap();
    let out = tmp.path().join("out");

    let receiver = start_listening(
        &tmp.path().join("data"),
        &["receive", "--output", path(&out)],
    );
    let send = run(
        &tmp.path().join("data"),
        &[
            "send",
            path(&src),
            "--peer",
            &receiver.addr,
            "--chunk-size",
            "256K",
        ],
    );
    let (code, stdout, stderr) = receiver.finish();
    assert!(send.status.success(), "{}", text(&send.stderr));
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(tree_digest(&out.join("photos")), tree_digest(&src));
    // Not a terminal: plain progress lines, and a summary on both sides.
    assert!(
        text(&send.stdout).contains("done: 3 file(s)"),
        "{}",
        text(&send.stdout)
    );
    assert!(stdout.contains("done: 3 file(s)"), "{stdout}");
}

#[test]
fn roles_can_be_swapped_sender_listens_receiver_connects() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("report.pdf");
    random_file(&src, 1_000_003, 7);
    let out = tmp.path().join("out");

    let sender = start_listening(
        &tmp.path().join("data"),
        &["send", path(&src), "--role", "server", "--window-size", "4"],
    );
    let receive = run(
        &tmp.path().join("data"),
        &[
            "receive",
            "--output",
            path(&out),
            "--role",
            "client",
            "--peer",
            &sender.addr,
        ],
    );
    let (code, _, stderr) = sender.finish();
    assert_eq!(code, 0, "{stderr}");
    assert!(receive.status.success(), "{}", text(&receive.stderr));
    assert_eq!(sha256_file(&out.join("report.pdf")), sha256_file(&src));
}

#[test]
fn an_existing_file_is_refused_on_both_sides_with_exit_code_5() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("notes.txt");
    random_file(&src, 5000, 1);
    let out = tmp.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("notes.txt"), b"mine").unwrap();

    let receiver = start_listening(
        &tmp.path().join("data"),
        &["receive", "--output", path(&out)],
    );
    let send = run(
        &tmp.path().join("data"),
        &["send", path(&src), "--peer", &receiver.addr],
    );
    let (code, _, stderr) = receiver.finish();
    assert_eq!(code, 5, "{stderr}");
    assert_eq!(send.status.code(), Some(5), "{}", text(&send.stderr));
    assert_readable_error(&stderr);
    assert_readable_error(&text(&send.stderr));
    assert!(stderr.contains("--overwrite"), "{stderr}");
    assert_eq!(std::fs::read(out.join("notes.txt")).unwrap(), b"mine");
}

#[test]
fn connection_refused_is_exit_code_3_with_one_readable_line() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("x");
    random_file(&src, 10, 1);
    let out = run(
        &tmp.path().join("data"),
        &["send", path(&src), "--peer", &format!("127.0.0.1:{port}")],
    );
    assert_eq!(out.status.code(), Some(3));
    let stderr = text(&out.stderr);
    assert_readable_error(&stderr);
    // Said at once, then what happened in words (not "os error 111"), and no retrying:
    // nothing was ever connected.
    assert!(
        stderr.starts_with(&format!("connecting to 127.0.0.1:{port}…\n")),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("nothing is listening at 127.0.0.1:{port}")),
        "{stderr}"
    );
    assert!(
        !stderr.contains("os error") && !stderr.contains("retrying"),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 2, "{stderr}");
}

#[test]
fn a_missing_path_is_reported_before_connecting() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("does-not-exist");
    let out = run(
        &tmp.path().join("data"),
        &["send", path(&missing), "--peer", "127.0.0.1:9"],
    );
    assert_eq!(out.status.code(), Some(7));
    let stderr = text(&out.stderr);
    assert_readable_error(&stderr);
    assert!(stderr.contains("does-not-exist"), "{stderr}");
}

#[test]
fn bad_flags_are_usage_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let out = run(
        &tmp.path().join("data"),
        &["send", "x", "--window-size", "lots"],
    );
    assert_eq!(out.status.code(), Some(2));
    let out = run(
        &tmp.path().join("data"),
        &["send", "x", "--peer", "127.0.0.1:1", "--chunk-size", "64G"],
    );
    // A size out of range is a command-line error, said before anything else happens.
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert_readable_error(&text(&out.stderr));
    // Finding a receiver to connect to, while waiting for one: contradictory, exit 2.
    let src = tmp.path().join("file.txt");
    std::fs::write(&src, "x").unwrap();
    let out = run(
        &tmp.path().join("data"),
        &["send", path(&src), "--discover", "--role", "server"],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert_readable_error(&text(&out.stderr));
    let help = run(&tmp.path().join("data"), &["--help"]);
    assert!(help.status.success());
    assert!(text(&help.stdout).contains("Exit codes"));
    // Waiting for the peer and connecting to it at once: a usage error, before anything
    // is read, bound or dialled (port 1 would refuse).
    for command in ["send", "receive"] {
        let args = match command {
            "send" => vec!["send", "x", "--role", "server", "--peer", "127.0.0.1:1"],
            _ => vec!["receive", "--role", "server", "--peer", "127.0.0.1:1"],
        };
        let out = run(&tmp.path().join("data"), &args);
        assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
        assert!(
            text(&out.stderr).contains("--role server waits for the peer"),
            "{}",
            text(&out.stderr)
        );
    }
}

#[test]
fn ctrl_c_exits_with_130() {
    let tmp = tempfile::tempdir().unwrap();
    let receiver = start_listening(
        &tmp.path().join("data"),
        &["receive", "--output", path(tmp.path())],
    );
    let pid = receiver.child.id().to_string();
    let kill = Command::new("kill").args(["-INT", &pid]).status().unwrap();
    assert!(kill.success());
    let (code, _, stderr) = receiver.finish();
    assert_eq!(code, 130, "{stderr}");
    assert!(stderr.contains("error: interrupted"), "{stderr}");
}

#[test]
fn max_speed_limits_the_sender() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("one-mib.bin");
    random_file(&src, 1 << 20, 3);
    let out = tmp.path().join("out");
    let receiver = start_listening(
        &tmp.path().join("data"),
        &["receive", "--output", path(&out)],
    );
    let start = std::time::Instant::now();
    let send = run(
        &tmp.path().join("data"),
        &[
            "send",
            path(&src),
            "--peer",
            &receiver.addr,
            "--chunk-size",
            "64K",
            "--max-speed",
            "2M",
        ],
    );
    let elapsed = start.elapsed();
    let (code, _, stderr) = receiver.finish();
    assert!(send.status.success(), "{}", text(&send.stderr));
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(sha256_file(&out.join("one-mib.bin")), sha256_file(&src));
    // 1 MiB at 2 MiB/s from an empty bucket cannot take less than ~0.5 s (a lower
    // bound only: a slow machine cannot make this fail).
    assert!(elapsed.as_secs_f64() >= 0.45, "{elapsed:?}");
}

#[test]
fn history_records_completed_and_failed_transfers_and_filters_them() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let src = tmp.path().join("song.flac");
    random_file(&src, 50_000, 9);
    let out = tmp.path().join("out");
    // One that completes, then one refused because the file now exists.
    for expected in [0, 5] {
        let receiver = start_listening(&data, &["receive", "--output", path(&out)]);
        let send = run(&data, &["send", path(&src), "--peer", &receiver.addr]);
        let (code, _, stderr) = receiver.finish();
        assert_eq!(code, expected, "{stderr}");
        assert_eq!(send.status.code(), Some(expected));
    }
    // A corrupt line must not stop history from working.
    let file = data.join("history.jsonl");
    let mut text_now = std::fs::read_to_string(&file).unwrap();
    text_now.push_str("{not json\n");
    std::fs::write(&file, text_now).unwrap();

    let all = run(&data, &["history"]);
    assert!(all.status.success());
    let table = text(&all.stdout);
    // Two sides × (one completed + one failed).
    assert_eq!(table.matches("completed").count(), 2, "{table}");
    assert!(table.contains("song.flac"), "{table}");
    assert!(
        text(&all.stderr).contains("skipped unreadable line"),
        "{}",
        text(&all.stderr)
    );

    let failed = text(&run(&data, &["history", "--failed", "--direction", "send"]).stdout);
    assert_eq!(failed.lines().count(), 2, "header + one row: {failed}");
    assert!(
        failed.contains("failed") && failed.contains("send"),
        "{failed}"
    );
    assert!(failed.contains("already exists"), "{failed}");
    let last = text(&run(&data, &["history", "-n", "1"]).stdout);
    assert_eq!(last.lines().count(), 2, "{last}");
}

/// The command printed on the line after the one that contains `intro`, exactly as a
/// person would copy it.
fn printed_command(output: &str, intro: &str) -> String {
    let mut lines = output.lines();
    lines
        .find(|l| l.contains(intro))
        .unwrap_or_else(|| panic!("no {intro:?} in:\n{output}"));
    let command = lines
        .next()
        .unwrap_or_else(|| panic!("nothing after {intro:?} in:\n{output}"))
        .trim()
        .to_owned();
    // Not `p2p-transfer`: that is not on PATH here. The program as it was started.
    let program = binary();
    assert!(
        command.starts_with(&format!("{} ", program.display())),
        "the printed command names the program as started ({}): {command}",
        program.display()
    );
    command
}

/// A printed command, run the way a person pastes it into a shell (history kept in
/// `data`).
fn follow(data: &Path, command: &str) -> Command {
    let mut sh = Command::new("sh");
    sh.args(["-c", &format!("exec {command}")])
        .env("P2P_TRANSFER_DATA_DIR", data);
    sh
}

/// Reads a child's stream line by line on a thread, so a test can wait for a line and
/// still get everything at the end.
struct Lines {
    rx: std::sync::mpsc::Receiver<String>,
    seen: String,
}

impl Lines {
    fn new(stream: impl Read + Send + 'static) -> Self {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            rx,
            seen: String::new(),
        }
    }

    /// Waits for a line containing `needle` (the stream ending first fails the test);
    /// returns everything read so far.
    fn until(&mut self, needle: &str) -> &str {
        loop {
            let line = self
                .rx
                .recv()
                .unwrap_or_else(|_| panic!("ended before {needle:?}:\n{}", self.seen));
            self.seen.push_str(&line);
            self.seen.push('\n');
            if line.contains(needle) {
                return &self.seen;
            }
        }
    }

    /// Everything, once the stream has ended.
    fn rest(mut self) -> String {
        while let Ok(line) = self.rx.recv() {
            self.seen.push_str(&line);
            self.seen.push('\n');
        }
        self.seen
    }
}

/// Starts `send SRC --peer (receiver) EXTRA…` throttled (4M/s, 256 KiB chunks, stderr
/// piped), waits (by reading, not sleeping) until the receiver reports data arriving,
/// then Ctrl+C's the receiver. Returns the sender, still running or ending, and the
/// receiver's stderr; the receiver exited with 130.
fn interrupted_receive(
    data: &Path,
    mut receiver: Listening,
    src: &Path,
    extra: &[&str],
) -> (Child, String) {
    let sender = p2p(data)
        .args(["send", path(src), "--peer", &receiver.addr])
        .args(extra)
        .args(["--max-speed", "4M", "--chunk-size", "256K"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(receiver.child.stdout.take().unwrap()).lines();
    while !lines
        .next()
        .expect("receiver output")
        .unwrap()
        .starts_with("progress")
    {}
    let pid = receiver.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap()
        .success());
    let (code, _, stderr) = receiver.finish();
    assert_eq!(code, 130, "{stderr}");
    (sender, stderr)
}

#[test]
fn ctrl_c_on_the_receiver_the_sender_waits_and_the_printed_command_finishes_it() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let src = tmp.path().join("photos.tar");
    random_file(&src, 12 << 20, 78);
    let out = tmp.path().join("out");
    let receiver = start_listening(&data, &["receive", "--output", path(&out)]);
    // Auto-reconnect is on by default: the sender is not told to.
    let (mut sender, stderr) = interrupted_receive(&data, receiver, &src, &[]);
    let mut sender_err = Lines::new(sender.stderr.take().unwrap());
    assert!(!out.join("photos.tar").exists());

    // The sender heard why (not a lost connection), keeps trying, and says how to
    // resume should it be stopped too.
    let seen = sender_err.until("Resume with:").to_owned();
    assert!(seen.contains("the receiver stopped the transfer"), "{seen}");
    let resume = printed_command(sender_err.until(" resume "), "Resume with:");
    assert!(
        resume.contains(path(&src)) && resume.contains("--chunk-size 262144"),
        "{resume}"
    );

    // The receiver's own words, followed literally: it starts again on the port it
    // had, and the sender (still retrying) finishes the transfer by itself.
    let again = printed_command(&stderr, "start this receiver again:");
    assert!(
        again.contains("--port ") && again.contains(path(&out)),
        "{again}"
    );
    let restarted = follow(&data, &again)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(restarted.status.success(), "{}", text(&restarted.stderr));
    assert!(
        text(&restarted.stdout).contains("resuming:"),
        "{}",
        text(&restarted.stdout)
    );
    let status = sender.wait().unwrap();
    let sender_seen = sender_err.rest();
    assert!(status.success(), "{sender_seen}");
    assert!(sender_seen.contains("retrying in"), "{sender_seen}");
    assert_eq!(sha256_file(&out.join("photos.tar")), sha256_file(&src));
    assert!(partial_files(&out).is_empty());
}

#[test]
fn ctrl_c_on_the_sender_the_receiver_waits_and_the_printed_resume_finishes_it() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let src = tmp.path().join("backup.tar");
    random_file(&src, 12 << 20, 77);
    let out = tmp.path().join("out");

    let mut receiver = start_listening(&data, &["receive", "--output", path(&out)]);
    let addr = receiver.addr.clone();
    let stderr = interrupted_send(&data, &mut receiver, &["send", path(&src), "--peer", &addr]);
    assert!(!out.join("backup.tar").exists());

    // Followed literally, against the receiver that is still waiting.
    let command = printed_command(&stderr, "Resume with:");
    assert!(
        command.contains("--chunk-size 262144") && command.contains(path(&src)),
        "{command}"
    );
    let id = command
        .split_whitespace()
        .nth(2)
        .expect("resume ID …")
        .to_owned();
    let resumed = follow(&data, &command).output().unwrap();
    assert!(resumed.status.success(), "{}", text(&resumed.stderr));
    assert!(
        text(&resumed.stdout).contains("resuming:"),
        "{}",
        text(&resumed.stdout)
    );
    let (code, _, receiver_err) = receiver.finish();
    assert_eq!(code, 0, "{receiver_err}");
    assert!(
        receiver_err.contains("the sender stopped the transfer")
            && receiver_err.contains("waiting for it to resume"),
        "{receiver_err}"
    );
    assert_eq!(sha256_file(&out.join("backup.tar")), sha256_file(&src));
    assert!(partial_files(&out).is_empty());
    let history = text(&run(&data, &["history", "--interrupted"]).stdout);
    assert!(history.contains(&id), "{history}");
}

#[test]
fn with_no_auto_reconnect_a_stopped_receiver_ends_the_send_with_a_resume_command() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let src = tmp.path().join("clip.mov");
    random_file(&src, 12 << 20, 79);
    let out = tmp.path().join("out");
    let receiver = start_listening(&data, &["receive", "--output", path(&out)]);
    let (sender, _) = interrupted_receive(&data, receiver, &src, &["--no-auto-reconnect"]);
    let sent = sender.wait_with_output().unwrap();
    let stderr = text(&sent.stderr);
    assert_eq!(sent.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("the peer stopped the transfer"), "{stderr}");
    assert!(!stderr.contains("retrying"), "{stderr}");
    let command = printed_command(&stderr, "Resume with:");
    assert!(command.contains(path(&src)), "{command}");
}

/// Starts a printed receiver command and waits until it listens.
fn follow_listening(data: &Path, command: &str) -> (Child, Lines) {
    let mut child = follow(data, command)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = Lines::new(child.stderr.take().unwrap());
    stderr.until("listening on ");
    (child, stderr)
}

#[test]
fn both_sides_stopped_each_follows_the_receivers_printed_commands() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let src = tmp.path().join("photos.tar");
    random_file(&src, 12 << 20, 82);
    let out = tmp.path().join("out");
    let receiver = start_listening(&data, &["receive", "--output", path(&out)]);
    let (sender, stderr) = interrupted_receive(&data, receiver, &src, &["--no-auto-reconnect"]);
    assert_eq!(sender.wait_with_output().unwrap().status.code(), Some(3));

    // Both stopped. The receiver's two commands, literally: itself again, and the
    // sender's resume (which finds its paths in the sender's history).
    let again = printed_command(&stderr, "start this receiver again:");
    let resume = printed_command(&stderr, "and on the sending side");
    assert!(!resume.contains('<'), "nothing to fill in: {resume}");
    let (mut restarted, restarted_err) = follow_listening(&data, &again);
    let resumed = follow(&data, &resume).output().unwrap();
    assert!(
        resumed.status.success(),
        "{resume}: {}",
        text(&resumed.stderr)
    );
    assert!(
        restarted.wait().unwrap().success(),
        "{}",
        restarted_err.rest()
    );
    assert_eq!(sha256_file(&out.join("photos.tar")), sha256_file(&src));
    assert!(partial_files(&out).is_empty());
}

#[test]
fn resuming_with_only_some_of_the_paths_is_refused_and_loses_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let (a, b) = (tmp.path().join("a.bin"), tmp.path().join("b.bin"));
    random_file(&a, 6 << 20, 83);
    random_file(&b, 6 << 20, 84);
    let out = tmp.path().join("out");
    let mut receiver = start_listening(&data, &["receive", "--output", path(&out)]);
    let addr = receiver.addr.clone();
    let stderr = interrupted_send(
        &data,
        &mut receiver,
        &["send", path(&a), path(&b), "--peer", &addr],
    );
    let command = printed_command(&stderr, "Resume with:");
    assert!(
        command.ends_with(&format!(" {} {}", path(&a), path(&b))),
        "{command}"
    );

    // Only a.bin: refused on both sides, with the real reason.
    let partial = command.replace(&format!(" {}", path(&b)), "");
    let refused = follow(&data, &partial).output().unwrap();
    let refused_err = text(&refused.stderr);
    assert_eq!(refused.status.code(), Some(5), "{refused_err}");
    assert!(
        refused_err.contains("not with the same files"),
        "{refused_err}"
    );
    assert!(
        !refused_err.contains("the files changed);"),
        "{refused_err}"
    );
    let (code, _, receiver_err) = receiver.finish();
    assert_eq!(code, 5, "{receiver_err}");

    // What arrived is still there: the receiver's command and the full resume finish
    // it, and only the missing part moves.
    let again = printed_command(&receiver_err, "start this receiver again:");
    let (mut restarted, restarted_err) = follow_listening(&data, &again);
    let resumed = follow(&data, &command).output().unwrap();
    assert!(resumed.status.success(), "{}", text(&resumed.stderr));
    assert!(
        text(&resumed.stdout).contains("resuming:"),
        "{}",
        text(&resumed.stdout)
    );
    assert!(
        restarted.wait().unwrap().success(),
        "{}",
        restarted_err.rest()
    );
    assert_eq!(sha256_file(&out.join("a.bin")), sha256_file(&a));
    assert_eq!(sha256_file(&out.join("b.bin")), sha256_file(&b));
}

#[test]
fn the_receiver_checks_its_folder_at_start_and_prints_a_send_command_that_works() {
    let tmp = tempfile::tempdir().unwrap();
    let (sender_data, receiver_data) = (tmp.path().join("s"), tmp.path().join("r"));
    // A folder it cannot write into: said at once, exit 7, and nothing listens.
    let not_a_folder = tmp.path().join("notes.txt");
    std::fs::write(&not_a_folder, "x").unwrap();
    let refused = run(
        &receiver_data,
        &["receive", "--output", path(&not_a_folder), "--port", "0"],
    );
    let stderr = text(&refused.stderr);
    assert_eq!(refused.status.code(), Some(7), "{stderr}");
    assert_readable_error(&stderr);
    assert!(
        stderr.contains("notes.txt") && !stderr.contains("listening on"),
        "{stderr}"
    );

    // A good one: the addresses and a ready-to-copy command with a fresh code; the
    // sender (another device: its own data folder) types it with its files.
    let src = tmp.path().join("report.pdf");
    random_file(&src, 300_000, 80);
    let out = tmp.path().join("in");
    let mut receiver = start_listening(&receiver_data, &["receive", "--output", path(&out)]);
    let seen = receiver
        .stderr
        .until("on the sending machine, run:")
        .to_owned();
    assert!(seen.contains("this machine: 127.0.0.1"), "{seen}");
    let line = seen.lines().last().unwrap();
    let command = line
        .split_once("run:")
        .map(|(_, c)| c.trim().to_owned())
        .unwrap();
    assert!(command.contains("--code "), "{command}");
    let command = command.replace("<files or folders>", path(&src));
    let sent = follow(&sender_data, &command).output().unwrap();
    assert!(sent.status.success(), "{command}: {}", text(&sent.stderr));
    let (code, _, _) = receiver.finish();
    assert_eq!(code, 0);
    assert_eq!(sha256_file(&out.join("report.pdf")), sha256_file(&src));
}

/// Runs `args` throttled (4M/s, 256 KiB chunks) so that it is still sending when
/// interrupted; sends SIGINT once `receiver` reports data arriving (by reading its
/// output, not sleeping); checks exit code 130 and returns the sender's stderr.
fn interrupted_send(data: &Path, receiver: &mut Listening, args: &[&str]) -> String {
    let mut sender = p2p(data)
        .args(args)
        .args(["--max-speed", "4M", "--chunk-size", "256K"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(receiver.child.stdout.take().unwrap()).lines();
    loop {
        let line = lines.next().expect("receiver output").unwrap();
        if line.starts_with("progress") {
            break;
        }
    }
    // The receiver goes on (it waits for the resume): keep reading what it prints.
    std::thread::spawn(move || lines.for_each(drop));
    let kill = Command::new("kill")
        .args(["-INT", &sender.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = sender.wait().unwrap();
    let mut stderr = String::new();
    sender
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert_eq!(status.code(), Some(130), "{stderr}");
    stderr
}

/// A TCP proxy on 127.0.0.1 that cuts each of its first `cuts` connections once
/// `cut_after` bytes have gone from client to server, then forwards normally.
fn flaky_proxy(target: String, cuts: usize, cut_after: usize) -> (String, JoinHandle<usize>) {
    use std::net::{Shutdown, TcpListener, TcpStream};
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let handle = std::thread::spawn(move || {
        let mut connections = 0;
        for round in 0..=cuts {
            let (client, _) = listener.accept().unwrap();
            connections += 1;
            let server = TcpStream::connect(&target).unwrap();
            let (mut c_read, mut s_write) =
                (client.try_clone().unwrap(), server.try_clone().unwrap());
            let (mut s_read, mut c_write) =
                (server.try_clone().unwrap(), client.try_clone().unwrap());
            let back = std::thread::spawn(move || {
                let _ = std::io::copy(&mut s_read, &mut c_write);
                let _ = c_write.shutdown(Shutdown::Write);
            });
            let limit = if round < cuts { cut_after } else { usize::MAX };
            let mut forwarded = 0usize;
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = match c_read.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                let n = n.min(limit - forwarded);
                if std::io::Write::write_all(&mut s_write, &buf[..n]).is_err() {
                    break;
                }
                forwarded += n;
                if forwarded >= limit {
                    break; // cut, in the middle of a chunk
                }
            }
            let _ = client.shutdown(Shutdown::Both);
            let _ = server.shutdown(Shutdown::Both);
            let _ = back.join();
        }
        connections
    });
    (addr, handle)
}

#[test]
fn a_connection_cut_mid_chunk_several_times_completes_with_no_user_action() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let src = tmp.path().join("dataset.bin");
    let len = 6 << 20;
    random_file(&src, len, 31);
    let out = tmp.path().join("out");
    // Reconnecting is the default: neither side is told to.
    let receiver = start_listening(&data, &["receive", "--output", path(&out)]);
    // Cut every 1.3 MiB of sender traffic (256 KiB chunks: always mid-chunk), 3 times.
    let (proxy, proxy_thread) = flaky_proxy(receiver.addr.clone(), 3, 1_300_000 + 1234);
    let send = run(
        &data,
        &["send", path(&src), "--peer", &proxy, "--chunk-size", "256K"],
    );
    let (code, receiver_out, receiver_err) = receiver.finish();
    let sender_out = text(&send.stdout);
    assert!(
        send.status.success(),
        "{sender_out}\n{}",
        text(&send.stderr)
    );
    assert_eq!(code, 0, "{receiver_err}");
    assert_eq!(
        proxy_thread.join().unwrap(),
        4,
        "three cut connections and a good one"
    );
    assert_eq!(sha256_file(&out.join("dataset.bin")), sha256_file(&src));
    let sender_err = text(&send.stderr);
    assert_eq!(
        sender_err.matches("retrying in").count(),
        3,
        "one countdown per cut: {sender_err}"
    );
    assert!(
        receiver_out.matches("resuming:").count() >= 2,
        "later attempts continue from what arrived: {receiver_out}"
    );
    assert!(partial_files(&out).is_empty());
}

#[test]
fn receive_ask_shows_the_offer_and_a_no_declines_with_nothing_written() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let src = tmp.path().join("report.pdf");
    random_file(&src, 300_000, 4);
    let out = tmp.path().join("out");
    for (answer, accepted) in [("n\n", false), ("yes\n", true)] {
        let mut receiver = start_listening(&data, &["receive", "--ask", "--output", path(&out)]);
        // Read when the offer arrives; until then it waits in the pipe.
        use std::io::Write;
        let mut stdin = receiver.child.stdin.take().unwrap();
        stdin.write_all(answer.as_bytes()).unwrap();
        drop(stdin);
        let send = run(&data, &["send", path(&src), "--peer", &receiver.addr]);
        let (code, stdout, stderr) = receiver.finish();
        assert_eq!(code, 0, "{stderr}");
        assert!(
            stdout.contains("wants to send 1 file(s), 292.97 KiB:")
                && stdout.contains("report.pdf"),
            "{stdout}"
        );
        assert!(stderr.contains("accept? [y/N]"), "{stderr}");
        if accepted {
            assert!(send.status.success(), "{}", text(&send.stderr));
            assert_eq!(sha256_file(&out.join("report.pdf")), sha256_file(&src));
        } else {
            assert_eq!(send.status.code(), Some(5), "{}", text(&send.stderr));
            assert!(text(&send.stderr).contains("the receiver declined the transfer"));
            assert!(stdout.contains("declined; nothing was written"), "{stdout}");
            assert!(!out.join("report.pdf").exists());
            assert!(!out.exists() || partial_files(&out).is_empty());
        }
    }
    // The receiver remembers what it said no to (and only that).
    let declined = text(&run(&data, &["history", "--declined"]).stdout);
    let rows: Vec<&str> = declined.lines().skip(1).collect();
    assert_eq!(rows.len(), 1, "{declined}");
    assert!(
        rows[0].contains("receive")
            && rows[0].contains("declined")
            && rows[0].contains("report.pdf (the receiver declined the transfer)"),
        "{declined}"
    );
}

/// Issue 10, item 7: strangers knock first — a port scan (connect and close), an HTTP
/// request, a TLS ClientHello and a peer that sends one byte of a `Hello` and then
/// nothing — and `receive` still serves the real sender at once, then ends after its
/// transfer (junk never counts as the transfer).
#[test]
fn strangers_do_not_knock_the_receiver_over() {
    use std::io::Write;
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("real.bin");
    random_file(&src, 300_000, 7);
    let out = tmp.path().join("out");
    let data = tmp.path().join("data");
    let receiver = start_listening(&data, &["receive", "--output", path(&out)]);
    drop(std::net::TcpStream::connect(&receiver.addr).unwrap());
    let mut http = std::net::TcpStream::connect(&receiver.addr).unwrap();
    http.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut tls = std::net::TcpStream::connect(&receiver.addr).unwrap();
    tls.write_all(&[
        0x16, 0x03, 0x01, 0x00, 0xa5, 0x01, 0x00, 0x00, 0xa1, 0x03, 0x03,
    ])
    .unwrap();
    let mut trickle = std::net::TcpStream::connect(&receiver.addr).unwrap();
    trickle.write_all(&[0]).unwrap();
    let send = run(&data, &["send", path(&src), "--peer", &receiver.addr]);
    let (code, _, stderr) = receiver.finish();
    assert!(send.status.success(), "{}", text(&send.stderr));
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(sha256_file(&out.join("real.bin")), sha256_file(&src));
    drop((http, tls, trickle));
}

/// What a hostile peer wrote into its `Error`: a window title (OSC 0, ended by BEL), then
/// CR LF and a line of its choosing.
const FORGED: &str = "\u{1b}]0;pwned\u{7}\r\ntransfer complete, all files verified";

/// Text a terminal acts on or a reader cannot see: none of it may be printed raw.
fn assert_shown_safely(output: &str) {
    for bad in ['\u{1b}', '\u{7}', '\r', '\u{202e}'] {
        assert!(!output.contains(bad), "raw {bad:?} in {output:?}");
    }
    for line in output.lines() {
        assert!(
            !line.starts_with("transfer complete"),
            "forged line {line:?} in {output:?}"
        );
    }
}

/// A hostile sender, written with raw frames: greets `addr` as `device_name`, offers one
/// small file, and once it is accepted sends `last` instead of any data; then waits for
/// the receiver to close.
fn hostile_sender(data: &Path, addr: &str, device_name: &str, last: p2p_core::Message) {
    use futures::{SinkExt, StreamExt};
    use p2p_core::wire::{Entry, EntryKind, FrameCodec, Hello, Offer, Timestamp, MAGIC};
    use p2p_core::{Capabilities, Message, PROTOCOL_VERSION};
    use tokio_util::codec::Framed;

    type Stream = Framed<p2p_core::net::SecureTcp, FrameCodec>;
    /// The next message that is not a keepalive.
    async fn next(framed: &mut Stream) -> Message {
        loop {
            match framed.next().await {
                Some(Ok(Message::Ping(_))) => continue,
                Some(Ok(message)) => return message,
                other => panic!("the receiver went away: {other:?}"),
            }
        }
    }

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        // It holds the receiver's own key (same data folder): let in as the same device.
        let identity = p2p_core::net::Identity::load_or_create(data).unwrap();
        let security = p2p_core::net::Security::new(
            std::sync::Arc::new(identity),
            p2p_core::net::Admission::default(),
        )
        .unwrap();
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (stream, _) = p2p_core::net::secure_client(tcp, &security).await.unwrap();
        let mut framed = Framed::new(stream, FrameCodec);
        framed
            .send(Message::Hello(Hello {
                magic: MAGIC,
                version: PROTOCOL_VERSION,
                device_id: uuid::Uuid::new_v4(),
                device_name: device_name.to_owned(),
                capabilities: Capabilities::all(),
            }))
            .await
            .unwrap();
        let ack = next(&mut framed).await;
        assert!(matches!(ack, Message::HelloAck(_)), "{ack:?}");
        let config = p2p_core::config::default_config();
        framed.send(Message::Config(config)).await.unwrap();
        let ack = next(&mut framed).await;
        assert!(matches!(ack, Message::ConfigAck(_)), "{ack:?}");
        framed
            .send(Message::Offer(Offer {
                transfer_id: uuid::Uuid::new_v4(),
                entries: vec![Entry {
                    path: "notes.txt".into(),
                    kind: EntryKind::File { size: 10 },
                    mode: 0o644,
                    mtime: Timestamp::default(),
                }],
            }))
            .await
            .unwrap();
        let accept = next(&mut framed).await;
        assert!(matches!(accept, Message::Accept(_)), "{accept:?}");
        framed.send(last).await.unwrap();
        // The receiver ends the session: wait for it to close.
        while let Some(Ok(_)) = framed.next().await {}
    });
}

/// Issue "What a peer can make you see": a peer's `Error` message and device name were
/// printed raw (an OSC window title, CR LF forging a line), stored, and replayed raw by
/// `history`.
#[test]
fn a_peers_error_message_and_name_are_shown_escaped_live_and_in_history() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let out = tmp.path().join("out");
    let receiver = start_listening(&data, &["receive", "--output", path(&out)]);
    hostile_sender(
        &data,
        &receiver.addr,
        "desk\u{1b}[2J\u{202e}gpj.exe",
        p2p_core::Message::Error {
            code: p2p_core::wire::ErrorCode::Other,
            message: FORGED.into(),
            version: p2p_core::PROTOCOL_VERSION,
        },
    );
    let (code, stdout, stderr) = receiver.finish();
    assert_eq!(code, 5, "{stderr}");
    assert_shown_safely(&stdout);
    assert_shown_safely(&stderr);
    assert!(
        stderr.contains(r"\u{1b}]0;pwned\u{7}\r\ntransfer complete, all files verified"),
        "{stderr}"
    );
    assert!(stdout.contains(r"desk\u{1b}[2J\u{202e}gpj.exe"), "{stdout}");

    // A record written raw (by a build before this fix) is shown escaped all the same.
    let history = p2p_core::history::History::in_dir(&data);
    history
        .append(&p2p_core::history::Record::now(
            uuid::Uuid::new_v4(),
            p2p_core::Direction::Receive,
            "old\u{202e}peer".into(),
            vec!["a\u{2066}b".into()],
            1,
            10,
            std::time::Duration::ZERO,
            p2p_core::history::Status::Failed,
            Some(FORGED.into()),
        ))
        .unwrap();
    let shown = run(&data, &["history"]);
    assert!(shown.status.success());
    let table = text(&shown.stdout);
    assert_shown_safely(&table);
    assert_eq!(
        table
            .matches(r"\u{1b}]0;pwned\u{7}\r\ntransfer complete, all files verified")
            .count(),
        2,
        "{table}"
    );
    assert!(table.contains(r"desk\u{1b}[2J\u{202e}gpj.exe"), "{table}");
    assert!(
        table.contains(r"old\u{202e}peer") && table.contains(r"a\u{2066}b"),
        "{table}"
    );
}

/// Issue "What a peer can make you see": a right-to-left override made
/// `invoice\u{202E}fdp.exe` look like `invoiceexe.pdf` in the `--ask` listing.
#[test]
fn receive_ask_shows_a_bidi_file_name_escaped_and_a_no_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let name = "invoice\u{202e}fdp.exe";
    let src = tmp.path().join(name);
    random_file(&src, 1_000, 5);
    let out = tmp.path().join("out");
    let mut receiver = start_listening(&data, &["receive", "--ask", "--output", path(&out)]);
    {
        use std::io::Write;
        let mut stdin = receiver.child.stdin.take().unwrap();
        stdin.write_all(b"n\n").unwrap();
    }
    let send = run(&data, &["send", path(&src), "--peer", &receiver.addr]);
    let (code, stdout, stderr) = receiver.finish();
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(send.status.code(), Some(5), "{}", text(&send.stderr));
    assert_shown_safely(&stdout);
    assert_shown_safely(&stderr);
    assert!(
        stdout.contains(r"invoice\u{202e}fdp.exe (1000 B)"),
        "{stdout}"
    );
    assert!(!out.join(name).exists());
    assert!(!out.exists() || partial_files(&out).is_empty());

    let declined = text(&run(&data, &["history", "--declined"]).stdout);
    assert_shown_safely(&declined);
    assert!(declined.contains(r"invoice\u{202e}fdp.exe"), "{declined}");
}

/// Issue "What a peer can make you see": beacon names may hold bidi controls (they have
/// no control characters); `peers` lists them escaped.
#[test]
fn peers_lists_a_bidi_beacon_name_escaped() {
    use p2p_core::discovery::{self, Announcer, Beacon, BeaconTargets, DiscoveryConfig};
    let tmp = tempfile::tempdir().unwrap();
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = DiscoveryConfig {
        port,
        interval: std::time::Duration::from_millis(200),
        targets: BeaconTargets::Only(vec!["127.255.255.255".parse().unwrap()]),
        ..DiscoveryConfig::default()
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let beacon = Beacon::new(
        p2p_core::net::DeviceId::random(),
        "living\u{202e}moor",
        14567,
    );
    let _announcer = runtime.block_on(async { Announcer::start(beacon, &config).unwrap() });
    let listed = p2p(tmp.path())
        .env(discovery::PORT_ENV, port.to_string())
        .env(discovery::TARGETS_ENV, "127.255.255.255")
        .args(["peers", "--timeout", "2"])
        .output()
        .unwrap();
    let stdout = text(&listed.stdout);
    assert!(listed.status.success(), "{}", text(&listed.stderr));
    assert_shown_safely(&stdout);
    assert!(stdout.contains(r"living\u{202e}moor"), "{stdout}");
}

/// Trust on first use: a device nobody vouches for gets in only with `receive --ask`, for
/// a person to decide; the question shows its verified id and says it is not trusted.
/// Accepted with `--remember`, it is trusted from then on: the next transfer needs
/// neither a code nor a question. (The sender pins the receiver's id: a script that
/// knows it.)
#[test]
fn receive_ask_shows_an_unknown_devices_verified_id_and_remember_trusts_it() {
    let tmp = tempfile::tempdir().unwrap();
    let (sender_data, receiver_data) = (tmp.path().join("s"), tmp.path().join("r"));
    let id = |data: &Path| {
        let shown = run(data, &["id"]);
        assert!(shown.status.success(), "{}", text(&shown.stderr));
        text(&shown.stdout).trim().to_owned()
    };
    let (sender_id, receiver_id) = (id(&sender_data), id(&receiver_data));
    let src = tmp.path().join("hello.bin");
    random_file(&src, 200_000, 31);

    // Without --ask the stranger is refused, and told how to pair.
    let out = tmp.path().join("refused");
    let mut receiver = start_listening(&receiver_data, &["receive", "--output", path(&out)]);
    let send = run(
        &sender_data,
        &[
            "send",
            path(&src),
            "--peer",
            &receiver.addr,
            "--peer-id",
            &receiver_id,
        ],
    );
    assert_eq!(send.status.code(), Some(8), "{}", text(&send.stderr));
    assert!(
        text(&send.stderr).contains("no one-time code came with the connection"),
        "{}",
        text(&send.stderr)
    );
    // It keeps listening for someone it may let in: stop it.
    receiver.child.kill().unwrap();
    receiver.child.wait().unwrap();
    assert!(!out.join("hello.bin").exists());

    // With --ask: the person sees who it is and says yes; --remember keeps it.
    let out = tmp.path().join("asked");
    let mut receiver = start_listening(
        &receiver_data,
        &["receive", "--ask", "--remember", "--output", path(&out)],
    );
    {
        use std::io::Write;
        let mut stdin = receiver.child.stdin.take().unwrap();
        stdin.write_all(b"y\n").unwrap();
    }
    let send = run(
        &sender_data,
        &[
            "send",
            path(&src),
            "--peer",
            &receiver.addr,
            "--peer-id",
            &receiver_id,
        ],
    );
    assert!(send.status.success(), "{}", text(&send.stderr));
    let (code, stdout, stderr) = receiver.finish();
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains(&format!("(device {sender_id}, NOT trusted, no code)")),
        "the question must show the verified id: {stdout}"
    );
    assert_eq!(sha256_file(&out.join("hello.bin")), sha256_file(&src));
    let listed = run(&receiver_data, &["trust", "list"]);
    assert!(
        text(&listed.stdout).contains(&sender_id),
        "{}",
        text(&listed.stdout)
    );

    // Now trusted: no --ask, no code.
    let out = tmp.path().join("trusted");
    let receiver = start_listening(&receiver_data, &["receive", "--output", path(&out)]);
    let send = run(
        &sender_data,
        &[
            "send",
            path(&src),
            "--peer",
            &receiver.addr,
            "--peer-id",
            &receiver_id,
        ],
    );
    assert!(send.status.success(), "{}", text(&send.stderr));
    let (code, _, stderr) = receiver.finish();
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(sha256_file(&out.join("hello.bin")), sha256_file(&src));
}

/// Two devices paired by a one-time code: Ctrl+C on the sender prints a resume command
/// with the follow-up code both sides derived (the first code is used up), and that
/// command — with the receiver started on the same code — finishes the transfer.
#[test]
fn ctrl_c_after_a_code_session_prints_a_resume_command_with_a_code_that_works() {
    let tmp = tempfile::tempdir().unwrap();
    let (sender_data, receiver_data) = (tmp.path().join("s"), tmp.path().join("r"));
    let src = tmp.path().join("backup.tar");
    random_file(&src, 12 << 20, 78);
    let out = tmp.path().join("out");
    let code = "9-first-try";

    let mut receiver = start_listening(
        &receiver_data,
        &["receive", "--code", code, "--output", path(&out)],
    );
    let addr = receiver.addr.clone();
    let stderr = interrupted_send(
        &sender_data,
        &mut receiver,
        &["send", path(&src), "--peer", &addr, "--code", code],
    );
    let command = printed_command(&stderr, "Resume with:");
    let args: Vec<&str> = command.split_whitespace().collect();
    let follow_up = args
        .windows(2)
        .find(|w| w[0] == "--code")
        .map(|w| w[1])
        .unwrap_or_else(|| panic!("no --code in the resume command: {command}"));
    assert_ne!(follow_up, code, "the used code cannot work again");
    follow_up
        .parse::<p2p_core::net::Code>()
        .unwrap_or_else(|e| panic!("{follow_up}: {e}"));

    // Meanwhile a third device tries the used code: told so, and it burns nothing (the
    // follow-up code is offered only to the key that proved the first one).
    let stranger = run(
        &tmp.path().join("stranger"),
        &["send", path(&src), "--peer", &addr, "--code", code],
    );
    assert_eq!(stranger.status.code(), Some(8));
    assert!(
        text(&stranger.stderr).contains("used already"),
        "{}",
        text(&stranger.stderr)
    );

    // Followed literally (a new process: it proves the follow-up code to the receiver
    // still waiting, which derived the same one).
    let resumed = follow(&sender_data, &command).output().unwrap();
    assert!(resumed.status.success(), "{}", text(&resumed.stderr));
    let (code_exit, _, receiver_err) = receiver.finish();
    assert_eq!(code_exit, 0, "{receiver_err}");
    assert_eq!(sha256_file(&out.join("backup.tar")), sha256_file(&src));
}

#[test]
fn a_waiting_sender_stopped_mid_transfer_resumes_as_printed_and_the_receiver_reconnects() {
    let tmp = tempfile::tempdir().unwrap();
    let (sender_data, receiver_data) = (tmp.path().join("s"), tmp.path().join("r"));
    let src = tmp.path().join("video.mkv");
    random_file(&src, 12 << 20, 81);
    let out = tmp.path().join("out");
    // The sender waits and prints a code; the receiver dials it with that code.
    let mut sender = start_listening(
        &sender_data,
        &[
            "send",
            path(&src),
            "--max-speed",
            "4M",
            "--chunk-size",
            "256K",
        ],
    );
    let seen = sender.stderr.until("receive ").to_owned();
    let code = seen
        .split_whitespace()
        .find(|w| w.parse::<p2p_core::net::Code>().is_ok() && w.contains('-'))
        .unwrap_or_else(|| panic!("no code in: {seen}"))
        .to_owned();
    let mut receiver = p2p(&receiver_data)
        .args([
            "receive",
            &code,
            "--peer",
            &sender.addr,
            "--output",
            path(&out),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut receiver_out = Lines::new(receiver.stdout.take().unwrap());
    let receiver_err = Lines::new(receiver.stderr.take().unwrap());
    receiver_out.until("progress");
    let pid = sender.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap()
        .success());
    let (exit, _, stderr) = sender.finish();
    assert_eq!(exit, 130, "{stderr}");

    // The sender's command, literally: it waits on the same port with the follow-up
    // code; the receiver, retrying meanwhile, gets back in with the same one.
    let command = printed_command(&stderr, "Resume with:");
    assert!(
        command.contains("--role server --port ") && command.contains("--code "),
        "{command}"
    );
    let resumed = follow(&sender_data, &command).output().unwrap();
    assert!(
        resumed.status.success(),
        "{command}: {}",
        text(&resumed.stderr)
    );
    let status = receiver.wait().unwrap();
    let receiver_seen = receiver_err.rest();
    assert!(status.success(), "{receiver_seen}");
    assert!(
        receiver_seen.contains("the sender stopped the transfer"),
        "{receiver_seen}"
    );
    assert_eq!(sha256_file(&out.join("video.mkv")), sha256_file(&src));
    assert!(partial_files(&out).is_empty());
}

#[test]
fn help_describes_the_tool_every_command_has_examples_and_receive_lists_no_send_flags() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let top = text(&run(&data, &["--help"]).stdout);
    assert!(
        top.contains("Send files and folders straight to another device"),
        "{top}"
    );
    assert!(
        !top.contains("front end") && top.contains("Exit codes:"),
        "{top}"
    );
    for command in [
        "send", "receive", "resume", "history", "peers", "nat-test", "id", "trust",
    ] {
        let help = run(&data, &[command, "--help"]);
        assert!(help.status.success(), "{command}");
        let help = text(&help.stdout);
        assert!(
            help.contains("Example") && help.contains(&format!("p2p-transfer {command}")),
            "{command} --help has no examples:\n{help}"
        );
    }
    let receive = text(&run(&data, &["receive", "--help"]).stdout);
    for send_only in [
        "--compress",
        "--no-compress",
        "--compress-level",
        "--adaptive",
        "--max-speed",
    ] {
        assert!(
            !receive.contains(send_only),
            "{send_only} under receive:\n{receive}"
        );
    }
    let refused = run(&data, &["receive", "--max-speed", "1M"]);
    assert_eq!(refused.status.code(), Some(2));
    // `resume` takes paths as `send` does: positionally.
    let resume = text(&run(&data, &["resume", "--help"]).stdout);
    assert!(resume.contains("<TRANSFER_ID> [PATH]..."), "{resume}");
}

#[test]
fn transport_quic_carries_a_folder_and_history_and_the_header_say_so() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("photos");
    random_file(&src.join("a.jpg"), 3_000_000, 11);
    random_file(&src.join("sub/b.txt"), 10, 12);
    let out = tmp.path().join("out");
    let data = tmp.path().join("data");
    // The receiver listens on TCP and UDP (auto); the sender asks for QUIC.
    let receiver = start_listening(&data, &["receive", "--output", path(&out)]);
    let addr = receiver.addr.clone();
    let send = run(
        &data,
        &["send", path(&src), "--peer", &addr, "--transport", "quic"],
    );
    let (code, _, receiver_err) = receiver.finish();
    let sender_err = text(&send.stderr);
    assert!(send.status.success(), "{sender_err}");
    assert_eq!(code, 0, "{receiver_err}");
    assert_eq!(tree_digest(&out.join("photos")), tree_digest(&src));
    assert!(
        sender_err.contains(&format!("connected to {addr} over QUIC")),
        "{sender_err}"
    );
    assert!(receiver_err.contains("over QUIC"), "{receiver_err}");
    let history = text(&run(&data, &["history"]).stdout);
    assert_eq!(history.matches("over QUIC").count(), 2, "{history}");
    let json = text(&run(&data, &["history", "--json"]).stdout);
    assert!(json.contains("\"transports\":[\"quic\"]"), "{json}");

    // To this same machine, auto picks TCP (faster here than QUIC).
    let again = tmp.path().join("again");
    let receiver = start_listening(&data, &["receive", "--output", path(&again)]);
    let send = run(&data, &["send", path(&src), "--peer", &receiver.addr]);
    let (code, _, receiver_err) = receiver.finish();
    assert!(send.status.success(), "{}", text(&send.stderr));
    assert_eq!(code, 0, "{receiver_err}");
    assert!(
        text(&send.stderr).contains("over TCP"),
        "{}",
        text(&send.stderr)
    );
    assert_eq!(tree_digest(&again.join("photos")), tree_digest(&src));
}

#[test]
fn an_unknown_transport_is_a_usage_error() {
    let tmp = tempfile::tempdir().unwrap();
    let out = run(
        tmp.path(),
        &["send", "x", "--peer", "127.0.0.1:9", "--transport", "udp"],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("auto, quic or tcp"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn quic_to_a_listener_that_only_takes_tcp_is_a_connection_problem_in_words() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("note.txt");
    random_file(&src, 1000, 21);
    let data = tmp.path().join("data");
    let receiver = start_listening(
        &data,
        &[
            "receive",
            "--output",
            path(&tmp.path().join("out")),
            "--transport",
            "tcp",
        ],
    );
    let addr = receiver.addr.clone();
    let send = run(
        &data,
        &["send", path(&src), "--peer", &addr, "--transport", "quic"],
    );
    let mut receiver = receiver;
    let _ = receiver.child.kill();
    let said = text(&send.stderr);
    assert_eq!(send.status.code(), Some(3), "{said}");
    assert_readable_error(&said);
    assert!(
        said.contains(&format!("{addr} did not answer over QUIC"))
            && said.contains("--transport tcp"),
        "{said}"
    );
}
