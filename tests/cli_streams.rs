//! Text and streams (issue 15, item 10): `send --text`, `send -`, `receive --stdout` and
//! `send --qr`, with the real binary as two processes on 127.0.0.1.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, ChildStderr, Command, Output, Stdio};
use std::thread::JoinHandle;

use common::*;
use sha2::{Digest, Sha256};

/// One test's folders: each side's data folder (history, device key), a private
/// temporary directory (TMPDIR: spools and `--stdout` folders must not outlive a run)
/// and a working directory (nothing may appear in it).
struct Dirs {
    root: tempfile::TempDir,
}

impl Dirs {
    fn new() -> Self {
        let dirs = Self {
            root: tempfile::tempdir().unwrap(),
        };
        for d in ["tmp", "cwd"] {
            std::fs::create_dir_all(dirs.path(d)).unwrap();
        }
        dirs
    }

    fn path(&self, name: &str) -> PathBuf {
        self.root.path().join(name)
    }

    /// The binary as side `side` ("a" or "b"), with its own data folder.
    fn p2p(&self, side: &str) -> Command {
        let mut cmd = Command::new(binary());
        cmd.env("P2P_TRANSFER_DATA_DIR", self.path(side))
            .env("TMPDIR", self.path("tmp"))
            .current_dir(self.path("cwd"));
        cmd
    }

    /// What is left in TMPDIR and the working directory.
    fn leftovers(&self) -> Vec<String> {
        let mut left = Vec::new();
        for d in ["tmp", "cwd"] {
            for entry in std::fs::read_dir(self.path(d)).unwrap() {
                left.push(entry.unwrap().path().display().to_string());
            }
        }
        left
    }

    /// `history` of side `side`.
    fn history(&self, side: &str) -> String {
        let out = self.p2p(side).arg("history").output().unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        text(&out.stdout)
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn sha256(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

/// A listening process: its address, the child (stdout piped, unread), and its stderr
/// lines after "listening on".
struct Listening {
    addr: String,
    child: Child,
    stderr: BufReader<ChildStderr>,
    seen: String,
}

impl Listening {
    /// Starts `cmd ARGS --port 0 --bind 127.0.0.1` and waits for "listening on ADDR".
    fn start(mut cmd: Command, args: &[&str], stdin: Stdio) -> Self {
        let mut child = cmd
            .args(args)
            .args(["--port", "0", "--bind", "127.0.0.1"])
            .stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let mut seen = String::new();
        let addr = loop {
            let mut line = String::new();
            if stderr.read_line(&mut line).unwrap() == 0 {
                panic!("exited before listening: {seen}");
            }
            seen.push_str(&line);
            if let Some(addr) = line.trim().strip_prefix("listening on ") {
                break addr.to_owned();
            }
        };
        Self {
            addr,
            child,
            stderr,
            seen,
        }
    }

    /// Reads stderr until a line starts with `prefix`; returns that line.
    fn wait_for(&mut self, prefix: &str) -> String {
        loop {
            let mut line = String::new();
            if self.stderr.read_line(&mut line).unwrap() == 0 {
                panic!("no line starting with {prefix:?} in: {}", self.seen);
            }
            self.seen.push_str(&line);
            if line.starts_with(prefix) {
                return line;
            }
        }
    }

    /// Collects stdout (bytes, exactly) and stderr while the process runs to its end.
    fn finish(mut self) -> (i32, Vec<u8>, String) {
        let stdout = self.child.stdout.take();
        let reader: JoinHandle<Vec<u8>> = std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut stdout) = stdout {
                stdout.read_to_end(&mut bytes).unwrap();
            }
            bytes
        });
        let mut rest = String::new();
        self.stderr.read_to_string(&mut rest).unwrap();
        let status = self.child.wait().unwrap();
        (
            status.code().unwrap_or(-1),
            reader.join().unwrap(),
            self.seen + &rest,
        )
    }
}

/// `receive --stdout` (listening, with `code`) started in `dirs` as side "b".
fn stdout_receiver(dirs: &Dirs, code: &str) -> Listening {
    Listening::start(
        dirs.p2p("b"),
        &["receive", "--stdout", "--code", code],
        Stdio::null(),
    )
}

/// `p2p-transfer ARGS` as side "a", standard input from `input`.
fn send(dirs: &Dirs, args: &[&str], input: Stdio) -> Output {
    dirs.p2p("a").args(args).stdin(input).output().unwrap()
}

#[test]
fn stdin_piped_to_receive_stdout_arrives_byte_identical_and_leaves_nothing() {
    let dirs = Dirs::new();
    let input = dirs.path("input.bin");
    random_file(&input, 3 << 20, 10);
    let receiver = stdout_receiver(&dirs, "3-stream-test");
    let file = std::fs::File::open(&input).unwrap();
    let sent = send(
        &dirs,
        &[
            "send",
            "-",
            "--peer",
            &receiver.addr,
            "--code",
            "3-stream-test",
        ],
        Stdio::from(file),
    );
    let (code, stdout, stderr) = receiver.finish();
    assert!(sent.status.success(), "{}", text(&sent.stderr));
    assert_eq!(code, 0, "{stderr}");
    // Standard output holds the stream and nothing else: progress went to stderr.
    assert_eq!(stdout.len(), 3 << 20, "{stderr}");
    assert_eq!(sha256(&stdout), sha256_file(&input));
    assert!(stderr.contains("done: 1 file(s)"), "{stderr}");
    assert!(stderr.contains("wrote stdin"), "{stderr}");
    assert!(
        !stderr.contains("without sending anything"),
        "a delivered stream is something: {stderr}"
    );
    assert!(
        text(&sent.stderr).contains("read 3.00 MiB from standard input"),
        "{}",
        text(&sent.stderr)
    );
    // No spool on the sending side, no temporary folder on the receiving side, nothing
    // in the receiver's working directory (the default output folder).
    assert_eq!(dirs.leftovers(), Vec::<String>::new());
    // Recorded like any transfer, as a file named stdin.
    let history = dirs.history("b");
    assert!(
        history.contains("receive  completed") && history.contains("stdin"),
        "{history}"
    );
}

#[test]
fn a_text_arrives_exactly_on_a_pipe_and_is_recorded_on_both_sides() {
    // Escape sequences, a carriage return, bidi and non-ASCII, no final line feed: on a
    // pipe the receiver writes the bytes as sent (on a terminal they would be escaped).
    let message = "héllo 日本\r\n\u{1b}[2J\u{202e}txt.exe\tend";
    for extra in [&[][..], &["--stdout"][..]] {
        let dirs = Dirs::new();
        let mut args = vec!["receive", "--code", "4-text-test"];
        args.extend_from_slice(extra);
        let receiver = Listening::start(dirs.p2p("b"), &args, Stdio::null());
        let sent = send(
            &dirs,
            &[
                "send",
                "--text",
                message,
                "--peer",
                &receiver.addr,
                "--code",
                "4-text-test",
            ],
            Stdio::null(),
        );
        let (code, stdout, stderr) = receiver.finish();
        assert!(sent.status.success(), "{}", text(&sent.stderr));
        assert!(
            text(&sent.stdout).contains(&format!("sent the text ({} B)", message.len())),
            "{}",
            text(&sent.stdout)
        );
        assert_eq!(code, 0, "{stderr}");
        assert_eq!(stdout, message.as_bytes(), "{extra:?}: {stderr}");
        assert!(stderr.contains("text from "), "{stderr}");
        assert!(!stderr.contains("without sending anything"), "{stderr}");
        assert_eq!(dirs.leftovers(), Vec::<String>::new());
        for (side, dir) in [("a", "send"), ("b", "receive")] {
            let history = dirs.history(side);
            assert!(
                history.contains(&format!("{dir:<8} completed")) && history.contains("(text)"),
                "{side}: {history}"
            );
        }
    }
}

#[test]
fn receive_stdout_declines_a_folder_and_the_sender_is_told_why() {
    let dirs = Dirs::new();
    let folder = dirs.path("album");
    random_file(&folder.join("a.jpg"), 1000, 1);
    random_file(&folder.join("b.jpg"), 1000, 2);
    let receiver = stdout_receiver(&dirs, "5-folder-test");
    let sent = send(
        &dirs,
        &[
            "send",
            folder.to_str().unwrap(),
            "--peer",
            &receiver.addr,
            "--code",
            "5-folder-test",
        ],
        Stdio::null(),
    );
    let (_, stdout, stderr) = receiver.finish();
    let sender_err = text(&sent.stderr);
    assert_eq!(sent.status.code(), Some(5), "{sender_err}");
    assert!(
        sender_err.contains("standard output") && sender_err.contains("not a folder"),
        "{sender_err}"
    );
    assert!(stdout.is_empty(), "{}", text(&stdout));
    assert!(stderr.contains("declined"), "{stderr}");
    assert_eq!(dirs.leftovers(), Vec::<String>::new());
}

#[test]
fn too_long_a_text_points_to_send_dash_before_connecting() {
    let dirs = Dirs::new();
    let long = "x".repeat(64 * 1024 + 1);
    // Port 1 on loopback: connecting would fail with exit 3, so exit 2 shows it never
    // tried.
    let sent = send(
        &dirs,
        &["send", "--text", &long, "--peer", "127.0.0.1:1"],
        Stdio::null(),
    );
    let stderr = text(&sent.stderr);
    assert_eq!(sent.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("at most 65536 bytes") && stderr.contains("send -"),
        "{stderr}"
    );
}

#[test]
fn stdin_goes_alone_and_is_never_resumed() {
    let dirs = Dirs::new();
    let other = dirs.path("other.txt");
    std::fs::write(&other, "x").unwrap();
    let mixed = send(
        &dirs,
        &[
            "send",
            "-",
            other.to_str().unwrap(),
            "--peer",
            "127.0.0.1:1",
        ],
        Stdio::null(),
    );
    assert_eq!(mixed.status.code(), Some(2), "{}", text(&mixed.stderr));
    assert!(text(&mixed.stderr).contains("on its own"));
    let resumed = send(
        &dirs,
        &[
            "resume",
            "00000000-0000-0000-0000-000000000001",
            "--path",
            "-",
            "--peer",
            "127.0.0.1:1",
        ],
        Stdio::null(),
    );
    assert_eq!(resumed.status.code(), Some(2), "{}", text(&resumed.stderr));
    assert!(text(&resumed.stderr).contains("cannot be resumed"));
    // --text and paths exclude each other; --stdout and --output too.
    let both = send(&dirs, &["send", "x", "--text", "hi"], Stdio::null());
    assert_eq!(both.status.code(), Some(2));
    let both = send(
        &dirs,
        &["receive", "--stdout", "--output", "x"],
        Stdio::null(),
    );
    assert_eq!(both.status.code(), Some(2));
}

/// Sends SIGINT to `child`.
fn interrupt(child: &Child) {
    let kill = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
}

#[test]
fn an_interrupted_stdin_send_says_it_cannot_be_resumed() {
    let dirs = Dirs::new();
    let out = dirs.path("out");
    let mut receiver = Listening::start(
        dirs.p2p("b"),
        &[
            "receive",
            "--code",
            "6-stop-test",
            "--output",
            out.to_str().unwrap(),
        ],
        Stdio::null(),
    );
    let input = dirs.path("input.bin");
    random_file(&input, 8 << 20, 11);
    let mut sender = dirs
        .p2p("a")
        .args([
            "send",
            "-",
            "--peer",
            &receiver.addr,
            "--code",
            "6-stop-test",
            "--max-speed",
            "1M",
            "--chunk-size",
            "64K",
        ])
        .stdin(Stdio::from(std::fs::File::open(&input).unwrap()))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Once the receiver reports bytes arriving, stop the sender.
    let mut lines = BufReader::new(receiver.child.stdout.take().unwrap()).lines();
    loop {
        let line = lines.next().expect("receiver output").unwrap();
        if line.starts_with("progress") {
            break;
        }
    }
    interrupt(&sender);
    let status = sender.wait().unwrap();
    let mut stderr = String::new();
    sender
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert_eq!(status.code(), Some(130), "{stderr}");
    assert!(
        stderr.contains("standard input, which cannot be read again"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("Resume with"),
        "no resume command: {stderr}"
    );
    // The spool went with the sender.
    interrupt(&receiver.child);
    let _ = receiver.child.wait();
    assert_eq!(dirs.leftovers(), Vec::<String>::new());
}

#[test]
fn an_interrupted_receive_stdout_keeps_nothing_and_says_so() {
    let dirs = Dirs::new();
    let mut receiver = stdout_receiver(&dirs, "7-stop-test");
    let input = dirs.path("input.bin");
    random_file(&input, 8 << 20, 12);
    let mut sender = dirs
        .p2p("a")
        .args([
            "send",
            "-",
            "--peer",
            &receiver.addr,
            "--code",
            "7-stop-test",
            "--max-speed",
            "1M",
            "--chunk-size",
            "64K",
        ])
        .stdin(Stdio::from(std::fs::File::open(&input).unwrap()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // With --stdout the progress lines are on stderr.
    receiver.wait_for("progress");
    interrupt(&receiver.child);
    let (code, stdout, stderr) = receiver.finish();
    // The sender, stopped the same way, removes its spool too.
    interrupt(&sender);
    let _ = sender.wait();
    assert_eq!(code, 130, "{stderr}");
    assert!(stdout.is_empty(), "nothing half-written to stdout");
    assert!(stderr.contains("nothing was kept"), "{stderr}");
    assert!(!stderr.contains("p2p-transfer resume"), "{stderr}");
    assert_eq!(dirs.leftovers(), Vec::<String>::new());
}

#[test]
fn a_full_spool_disk_is_a_clear_local_error() {
    // RLIMIT_FSIZE stands in for a full disk: writes past 1 MiB fail (EFBIG) once
    // SIGXFSZ is ignored, as a full disk's fail with ENOSPC.
    let dirs = Dirs::new();
    let input = dirs.path("input.bin");
    random_file(&input, 3 << 20, 13);
    let mut shell = Command::new("sh");
    shell
        .env("P2P_TRANSFER_DATA_DIR", dirs.path("a"))
        .env("TMPDIR", dirs.path("tmp"))
        .current_dir(dirs.path("cwd"))
        .arg("-c")
        .arg(format!(
            "ulimit -f 1024; trap '' XFSZ; exec '{}' send - --peer 127.0.0.1:1",
            binary().display()
        ))
        .stdin(Stdio::from(std::fs::File::open(&input).unwrap()));
    let out = shell.output().unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(7), "{stderr}");
    assert!(
        stderr.contains("no room for more") && stderr.contains("TMPDIR"),
        "{stderr}"
    );
    assert_eq!(dirs.leftovers(), Vec::<String>::new());
}

/// The QR code on stderr, as a grid of modules (true = dark), from the half-block
/// characters `send --qr` draws (light modules drawn, dark ones blank).
fn qr_modules(stderr: &str) -> Vec<Vec<bool>> {
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.is_empty() && l.chars().all(|c| " ▀▄█".contains(c)))
        .collect();
    assert!(lines.len() > 10, "no QR code in: {stderr}");
    let mut rows = Vec::new();
    for line in lines {
        let (mut top, mut bottom) = (Vec::new(), Vec::new());
        for c in line.chars() {
            // Drawn = light.
            top.push(!matches!(c, '▀' | '█'));
            bottom.push(!matches!(c, '▄' | '█'));
        }
        rows.push(top);
        rows.push(bottom);
    }
    rows
}

/// Decodes a module grid with rqrr, at 4 pixels per module.
fn decode_qr(modules: &[Vec<bool>]) -> String {
    const SCALE: usize = 4;
    let (h, w) = (modules.len(), modules[0].len());
    let mut image = rqrr::PreparedImage::prepare_from_greyscale(w * SCALE, h * SCALE, |x, y| {
        if modules[y / SCALE].get(x / SCALE).copied().unwrap_or(false) {
            0
        } else {
            255
        }
    });
    let grids = image.detect_grids();
    assert_eq!(grids.len(), 1, "one QR code");
    grids[0].decode().expect("a readable QR code").1
}

#[test]
fn qr_shows_the_receive_command_and_the_code_in_it_works() {
    let dirs = Dirs::new();
    let mut sender = Listening::start(
        dirs.p2p("a"),
        &["send", "--text", "scanned", "--qr"],
        Stdio::null(),
    );
    let scan = sender.wait_for("scan to get: ");
    let mut stdout = BufReader::new(sender.child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let code = line
        .trim()
        .strip_prefix("code: ")
        .expect("a code line")
        .to_owned();
    let command = format!("p2p-transfer receive {code}");
    assert_eq!(scan.trim(), format!("scan to get: {command}"));
    assert_eq!(decode_qr(&qr_modules(&sender.seen)), command);

    // The command works (with the sender's address: discovery is not the point here).
    let received = dirs
        .p2p("b")
        .args(["receive", &code, "--peer", &sender.addr])
        .output()
        .unwrap();
    assert!(received.status.success(), "{}", text(&received.stderr));
    assert_eq!(received.stdout, b"scanned");
    let (code, _, stderr) = sender.finish();
    assert_eq!(code, 0, "{stderr}");
}

#[test]
fn the_qr_decoder_tells_a_wrong_payload() {
    // The test above cannot pass by accident: another payload decodes to another text.
    let qr = p2p_qr("p2p-transfer receive 1-abandon-ability");
    assert_eq!(
        decode_qr(&qr_modules(&qr)),
        "p2p-transfer receive 1-abandon-ability"
    );
}

/// What `send --qr` draws for a payload other than a real code: `send --qr --code`.
fn p2p_qr(command: &str) -> String {
    let code = command.rsplit(' ').next().unwrap();
    let dirs = Dirs::new();
    let mut sender = Listening::start(
        dirs.p2p("a"),
        &["send", "--text", "x", "--qr", "--code", code],
        Stdio::null(),
    );
    sender.wait_for("scan to get: ");
    let seen = sender.seen.clone();
    let _ = sender.child.kill();
    let _ = sender.child.wait();
    seen
}

#[test]
fn on_a_terminal_a_text_cannot_act_on_it() {
    // The receiver's standard output is a terminal (a pseudo-terminal from `script`,
    // util-linux): the text is shown escaped, not as the bytes that would clear the
    // screen or reorder what follows.
    let dirs = Dirs::new();
    let message = "before\u{1b}[2J\u{1b}]0;title\u{7}\u{202e}after";
    let sender = Listening::start(
        dirs.p2p("a"),
        &["send", "--text", message, "--code", "8-tty-test"],
        Stdio::null(),
    );
    let receive = format!(
        "'{}' receive --code 8-tty-test --peer {}",
        binary().display(),
        sender.addr
    );
    let shown = Command::new("script")
        .args(["-qec", &receive, "/dev/null"])
        .env("P2P_TRANSFER_DATA_DIR", dirs.path("b"))
        .env("TMPDIR", dirs.path("tmp"))
        .current_dir(dirs.path("cwd"))
        .stdin(Stdio::null())
        .output()
        .expect("`script` (util-linux) runs the receiver on a terminal");
    let terminal = text(&shown.stdout);
    assert!(shown.status.success(), "{terminal}");
    assert!(
        terminal.contains(r"before\u{1b}[2J\u{1b}]0;title\u{7}\u{202e}after"),
        "{terminal:?}"
    );
    assert!(!terminal.contains('\u{1b}'), "{terminal:?}");
    assert!(!terminal.contains('\u{202e}'), "{terminal:?}");
    let (code, _, stderr) = sender.finish();
    assert_eq!(code, 0, "{stderr}");
}
