//! What the real `p2p-transfer` binary prints: `--json` events for scripts, honest
//! plain progress after a resume, and a history you can use (issue 15, items 5, 7, 8).
//! Two processes on 127.0.0.1, ports picked by the system, output read line by line
//! (never sleeping to synchronise).

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Output, Stdio};
use std::thread::JoinHandle;

use common::*;
use serde_json::Value;

/// The binary, with its data (history, device key) in `data`.
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

/// A running process: its stdout read line by line here; its stderr collected aside,
/// and passed on line by line for [`Running::wait_stderr`].
struct Running {
    child: Child,
    stdout: std::io::Lines<BufReader<ChildStdout>>,
    stderr_lines: std::sync::mpsc::Receiver<String>,
    stderr: JoinHandle<String>,
}

impl Running {
    fn start(data: &Path, args: &[&str]) -> Self {
        let mut child = p2p(data)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        let err = BufReader::new(child.stderr.take().unwrap());
        let (tx, stderr_lines) = std::sync::mpsc::channel();
        let stderr = std::thread::spawn(move || {
            let mut text = String::new();
            for line in err.lines() {
                let Ok(line) = line else { break };
                text.push_str(&line);
                text.push('\n');
                let _ = tx.send(line);
            }
            text
        });
        Self {
            child,
            stdout,
            stderr_lines,
            stderr,
        }
    }

    /// Waits for a stderr line starting with `prefix` and returns the rest of it.
    fn wait_stderr(&mut self, prefix: &str) -> String {
        loop {
            match self.stderr_lines.recv() {
                Ok(line) => {
                    if let Some(rest) = line.strip_prefix(prefix) {
                        return rest.trim().to_owned();
                    }
                }
                Err(_) => panic!("stderr ended before {prefix:?}"),
            }
        }
    }

    /// The next stdout line; panics at the end of output.
    fn line(&mut self) -> String {
        match self.stdout.next() {
            Some(line) => line.unwrap(),
            None => panic!("output ended early"),
        }
    }

    fn interrupt(&self) {
        let kill = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(kill.success());
    }

    /// Waits for the process: (exit code, the rest of stdout by line, stderr).
    fn finish(mut self) -> (i32, Vec<String>, String) {
        let rest: Vec<String> = self.stdout.by_ref().map(|l| l.unwrap()).collect();
        let status = self.child.wait().unwrap();
        let stderr = self.stderr.join().unwrap();
        (status.code().unwrap_or(-1), rest, stderr)
    }
}

/// Parses one stdout line of `--json`: an object with a string `event`.
fn event(line: &str) -> Value {
    let value: Value =
        serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}"));
    assert!(value["event"].is_string(), "no event: {line}");
    value
}

fn kinds(events: &[Value]) -> Vec<&str> {
    events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect()
}

/// The kinds in order with repeated `progress` lines folded into one.
fn folded<'a>(kinds: &[&'a str]) -> Vec<&'a str> {
    let mut out: Vec<&str> = Vec::new();
    for k in kinds {
        if !(*k == "progress" && out.last() == Some(&"progress")) {
            out.push(k);
        }
    }
    out
}

/// Starts `receive --json` on a free port and returns it with the address from its
/// `listening` event (the first line it prints on stdout).
fn json_receiver(data: &Path, out: &Path) -> (Running, String) {
    let mut receiver = Running::start(
        data,
        &[
            "receive",
            "--json",
            "--output",
            path(out),
            "--port",
            "0",
            "--bind",
            "127.0.0.1",
        ],
    );
    let listening = event(&receiver.line());
    assert_eq!(listening["event"], "listening", "{listening}");
    let addr = listening["address"].as_str().unwrap().to_owned();
    (receiver, addr)
}

#[test]
fn json_send_and_receive_print_one_event_per_line_and_nothing_else_on_stdout() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    // A name with quotes, braces and non-ASCII: carried exactly, escaped by JSON and
    // not otherwise.
    let name = "r\u{e9}sum\u{e9} \"final\" {v2} \u{1f600}.bin";
    let src = tmp.path().join(name);
    let len = 3_000_017;
    random_file(&src, len, 21);
    let out = tmp.path().join("out");

    let (receiver, addr) = json_receiver(&data, &out);
    let send = run(
        &data,
        &[
            "send",
            "--json",
            path(&src),
            "--peer",
            &addr,
            "--chunk-size",
            "256K",
        ],
    );
    let (code, receiver_lines, receiver_err) = receiver.finish();
    assert_eq!(code, 0, "{receiver_err}");
    assert!(send.status.success(), "{}", text(&send.stderr));
    assert_eq!(sha256_file(&out.join(name)), sha256_file(&src));

    let sender_out = text(&send.stdout);
    let sent: Vec<Value> = sender_out.lines().map(event).collect();
    let mut received: Vec<Value> = receiver_lines.iter().map(|l| event(l)).collect();
    // A waiting receiver prints a code for new senders first (this sender, of the same
    // device, needs none).
    assert_eq!(received[0]["event"], "code", "{receiver_lines:?}");
    assert!(received[0]["code"]
        .as_str()
        .is_some_and(|c| c.contains('-')));
    received.remove(0);
    for (side, events) in [("send", &sent), ("receive", &received)] {
        // started, progress…, file_done, progress…, done.
        let kinds = kinds(events);
        let folded = folded(&kinds);
        let expected: &[&[&str]] = &[
            &["started", "file_done", "done"],
            &["started", "progress", "file_done", "done"],
            &["started", "file_done", "progress", "done"],
            &["started", "progress", "file_done", "progress", "done"],
        ];
        assert!(expected.contains(&folded.as_slice()), "{side}: {kinds:?}");
        let started = &events[0];
        assert_eq!(started["direction"], side);
        assert_eq!(started["total_bytes"], len as u64);
        assert_eq!(started["files"], 1);
        assert_eq!(started["roots"][0], name, "{started}");
        let id = started["transfer_id"].as_str().unwrap();
        let file_done = events.iter().find(|e| e["event"] == "file_done").unwrap();
        assert_eq!(file_done["path"], name);
        assert_eq!(file_done["size"], len as u64);
        let done = events.last().unwrap();
        assert_eq!(done["event"], "done");
        assert_eq!(done["transfer_id"], id);
        assert_eq!(done["bytes"], len as u64, "{done}");
        assert_eq!(done["moved_bytes"], len as u64, "{done}");
        assert_eq!(done["skipped_bytes"], 0);
        assert!(done["bytes_per_second"].as_u64().unwrap() > 0, "{done}");
        for p in events.iter().filter(|e| e["event"] == "progress") {
            assert_eq!(p["transfer_id"], id);
            assert!(p["done_bytes"].as_u64().unwrap() <= len as u64, "{p}");
            assert_eq!(p["total_bytes"], len as u64);
        }
    }
    // Both sides name the same transfer.
    assert_eq!(sent[0]["transfer_id"], received[0]["transfer_id"]);
    // Human lines went to stderr.
    assert!(receiver_err.contains("listening on"), "{receiver_err}");
    assert!(
        receiver_err.contains("saved"),
        "the receiver's summary is on stderr: {receiver_err}"
    );
    assert!(!receiver_err.contains("{\""), "{receiver_err}");
}

#[test]
fn json_progress_is_a_few_lines_per_second_at_most() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let src = tmp.path().join("slow.bin");
    random_file(&src, 2 << 20, 5);
    let (receiver, addr) = json_receiver(&data, &tmp.path().join("out"));
    let started = std::time::Instant::now();
    let send = run(
        &data,
        &[
            "send",
            "--json",
            path(&src),
            "--peer",
            &addr,
            "--chunk-size",
            "64K",
            "--max-speed",
            "2M",
        ],
    );
    let elapsed = started.elapsed().as_secs_f64();
    let (code, _, stderr) = receiver.finish();
    assert_eq!(code, 0, "{stderr}");
    assert!(send.status.success(), "{}", text(&send.stderr));
    let progress = text(&send.stdout)
        .lines()
        .map(event)
        .filter(|e| e["event"] == "progress")
        .count();
    // The core emits up to 10 a second; JSON passes at most 4 (and the first).
    assert!(progress >= 2, "{progress} progress lines in {elapsed:.1} s");
    assert!(
        (progress as f64) <= 4.0 * elapsed + 2.0,
        "{progress} progress lines in {elapsed:.1} s"
    );
}

#[test]
fn json_error_when_nothing_listens_is_an_error_event_with_exit_code_3() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("x");
    random_file(&src, 10, 1);
    let out = run(
        &tmp.path().join("data"),
        &[
            "send",
            path(&src),
            "--json",
            "--peer",
            &format!("127.0.0.1:{port}"),
        ],
    );
    assert_eq!(out.status.code(), Some(3));
    let stdout = text(&out.stdout);
    let events: Vec<Value> = stdout.lines().map(event).collect();
    assert_eq!(events.len(), 1, "{stdout}");
    assert_eq!(events[0]["event"], "error");
    assert_eq!(events[0]["exit_code"], 3);
    let message = events[0]["message"].as_str().unwrap();
    assert!(
        message.contains("nothing is listening at 127.0.0.1"),
        "{message}"
    );
    // People still read it on stderr.
    let stderr = text(&out.stderr);
    assert!(stderr.contains(&format!("error: {message}")), "{stderr}");

    // A bad command line with --json: an error event too, exit code 2.
    let out = run(
        &tmp.path().join("data"),
        &["send", path(&src), "--json", "--window-size", "lots"],
    );
    assert_eq!(out.status.code(), Some(2));
    let stdout = text(&out.stdout);
    let events: Vec<Value> = stdout.lines().map(event).collect();
    assert_eq!(
        (events.len(), &events[0]["event"], &events[0]["exit_code"]),
        (1, &Value::from("error"), &Value::from(2)),
        "{stdout}"
    );
}

#[test]
fn json_a_waiting_sender_prints_listening_and_code_events_and_ctrl_c_is_an_error_130() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let src = tmp.path().join("notes.txt");
    random_file(&src, 70_000, 3);
    let out = tmp.path().join("out");

    // With its code, over --peer (no discovery needed).
    let mut sender = Running::start(
        &data,
        &[
            "send",
            "--json",
            path(&src),
            "--port",
            "0",
            "--bind",
            "127.0.0.1",
        ],
    );
    let listening = event(&sender.line());
    assert_eq!(listening["event"], "listening", "{listening}");
    let code = event(&sender.line());
    assert_eq!(code["event"], "code", "{code}");
    let receive = run(
        &data,
        &[
            "receive",
            "--json",
            code["code"].as_str().unwrap(),
            "--peer",
            listening["address"].as_str().unwrap(),
            "--output",
            path(&out),
        ],
    );
    let (status, rest, stderr) = sender.finish();
    assert_eq!(status, 0, "{stderr}");
    assert!(receive.status.success(), "{}", text(&receive.stderr));
    assert_eq!(sha256_file(&out.join("notes.txt")), sha256_file(&src));
    let rest: Vec<Value> = rest.iter().map(|l| event(l)).collect();
    assert_eq!(rest.first().unwrap()["event"], "started");
    assert_eq!(rest.last().unwrap()["event"], "done");
    assert!(
        stderr.contains("on the receiving machine, run:"),
        "the hint for people is on stderr: {stderr}"
    );

    // Ctrl+C while waiting: the last line is an error event with exit code 130.
    let mut sender = Running::start(
        &data,
        &[
            "send",
            "--json",
            path(&src),
            "--port",
            "0",
            "--bind",
            "127.0.0.1",
        ],
    );
    assert_eq!(event(&sender.line())["event"], "listening");
    assert_eq!(event(&sender.line())["event"], "code");
    sender.interrupt();
    let (status, rest, stderr) = sender.finish();
    assert_eq!(status, 130, "{stderr}");
    assert_eq!(rest.len(), 1, "{rest:?}");
    let error = event(&rest[0]);
    assert_eq!(
        (&error["event"], &error["exit_code"]),
        (&"error".into(), &130.into())
    );
}

/// `1.50 MiB/s` (indicatif's HumanBytes) → bytes per second; `None` for `?/s`.
fn parse_rate(rate: &str) -> Option<f64> {
    let rate = rate.strip_suffix("/s")?;
    let (number, unit) = rate.split_once(' ')?;
    let number: f64 = number.parse().ok()?;
    let scale = match unit {
        "B" => 1.0,
        "KiB" => 1024.0,
        "MiB" => 1024.0 * 1024.0,
        "GiB" => 1024.0 * 1024.0 * 1024.0,
        "TiB" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        other => panic!("unit {other:?} in {rate:?}"),
    };
    Some(number * scale)
}

/// Speeds in plain progress lines: `progress  50.0% D/T bytes RATE ETA E FILE`.
fn progress_rates(lines: &[String]) -> Vec<f64> {
    lines
        .iter()
        .filter(|l| l.starts_with("progress"))
        .filter_map(|l| {
            let bytes = l.find(" bytes ")? + " bytes ".len();
            let rest = &l[bytes..];
            let rate = &rest[..rest.find(" ETA ")?];
            assert!(rest.contains(" ETA "), "{l}");
            parse_rate(rate)
        })
        .collect()
}

/// Issue 15, item 5: after a resume the speed said `23.44 GiB/s`, counting what the
/// receiver already held as if it had just been sent.
#[test]
fn after_a_resume_speed_and_summary_count_only_this_attempts_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let src = tmp.path().join("video.mkv");
    let len: u64 = 12 << 20;
    random_file(&src, len as usize, 44);
    let out = tmp.path().join("out");

    // First attempt at 4 MiB/s, interrupted once more than half has arrived.
    let listen = ["--port", "0", "--bind", "127.0.0.1"];
    let mut receiver = Running::start(
        &data,
        &[&["receive", "--output", path(&out)][..], &listen].concat(),
    );
    let addr = wait_listening(&mut receiver);
    let sender = Running::start(
        &data,
        &[
            "send",
            path(&src),
            "--peer",
            &addr,
            "--max-speed",
            "4M",
            "--chunk-size",
            "256K",
        ],
    );
    loop {
        let line = receiver.line();
        let Some(rest) = line.strip_prefix("progress") else {
            continue;
        };
        let pct: f64 = rest
            .trim_start()
            .split('%')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        if pct >= 50.0 {
            break;
        }
    }
    sender.interrupt();
    let (code, _, stderr) = sender.finish();
    assert_eq!(code, 130, "{stderr}");
    // The receiver keeps what arrived and waits for the sender: stop it too, so that
    // the resume's figures come from a receiver of their own.
    receiver.interrupt();
    let (code, _, stderr) = receiver.finish();
    assert_eq!(code, 130, "{stderr}");

    // The interrupted send is in history, with its id and what it moved.
    let interrupted = run(
        &data,
        &["history", "--json", "--interrupted", "--direction", "send"],
    );
    let records: Vec<Value> = text(&interrupted.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), 1, "{}", text(&interrupted.stdout));
    let id = records[0]["transfer_id"].as_str().unwrap().to_owned();
    assert_eq!(records[0]["total_bytes"], len);

    // The resume at 1 MiB/s: more than 6 MiB were already there.
    let mut receiver = Running::start(
        &data,
        &[&["receive", "--output", path(&out)][..], &listen].concat(),
    );
    let addr = wait_listening(&mut receiver);
    let resumed = run(
        &data,
        &[
            "resume",
            &id,
            "--peer",
            &addr,
            "--path",
            path(&src),
            "--chunk-size",
            "256K",
            "--max-speed",
            "1M",
        ],
    );
    let (code, receiver_lines, stderr) = receiver.finish();
    assert_eq!(code, 0, "{stderr}");
    assert!(resumed.status.success(), "{}", text(&resumed.stderr));
    assert_eq!(sha256_file(&out.join("video.mkv")), sha256_file(&src));

    let sender_lines: Vec<String> = text(&resumed.stdout).lines().map(String::from).collect();
    for (side, lines) in [("sender", &sender_lines), ("receiver", &receiver_lines)] {
        // 1 MiB/s, plus at most a chunk and the bucket's quarter second early on; the
        // old count (6 MiB and more already there, over a few seconds) is far above.
        let limit = 2.0 * 1024.0 * 1024.0;
        let rates = progress_rates(lines);
        assert!(!rates.is_empty(), "{side}: no speed shown: {lines:#?}");
        assert!(
            rates.iter().all(|r| *r <= limit),
            "{side}: {rates:?} in {lines:#?}"
        );
        let summary = lines
            .iter()
            .find(|l| l.starts_with("done: "))
            .unwrap_or_else(|| panic!("{side}: no summary in {lines:#?}"));
        let already: u64 = summary
            .split("; ")
            .nth(1)
            .and_then(|s| s.strip_suffix(" bytes were already there"))
            .unwrap_or_else(|| panic!("{side}: {summary}"))
            .parse()
            .unwrap();
        assert!(already >= len / 2 && already < len, "{side}: {summary}");
        let rate = summary
            .split_once(" (")
            .and_then(|(_, r)| r.split_once(')'))
            .map(|(r, _)| r)
            .unwrap();
        let rate = parse_rate(rate).unwrap();
        assert!(rate <= limit, "{side}: {summary}");
    }

    // History keeps both attempts' bytes: the resumed records moved only the rest.
    let completed = run(&data, &["history", "--json", "--completed"]);
    let records: Vec<Value> = text(&completed.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), 2, "{}", text(&completed.stdout));
    for r in &records {
        assert_eq!(r["transfer_id"], id.as_str());
        let (moved, skipped) = (
            r["moved_bytes"].as_u64().unwrap(),
            r["skipped_bytes"].as_u64().unwrap(),
        );
        assert_eq!(
            (r["bytes"].as_u64(), moved + skipped),
            (Some(len), len),
            "{r}"
        );
        assert!(skipped >= len / 2, "{r}");
    }
}

/// The address a plain (not `--json`) process announces on stderr.
fn wait_listening(process: &mut Running) -> String {
    process.wait_stderr("listening on ")
}

/// Issue 15, item 7: records name the transfer id (what `resume` takes), the peer's
/// address and proven id, the local paths and the bytes moved; status filters combine;
/// an empty answer says why.
#[test]
fn history_shows_ids_peers_and_paths_filters_combine_and_says_when_nothing_matches() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let empty = run(&data, &["history"]);
    assert!(empty.status.success());
    assert!(
        text(&empty.stdout).contains("no transfers recorded yet"),
        "{}",
        text(&empty.stdout)
    );
    let empty = run(&data, &["history", "--json"]);
    assert_eq!(text(&empty.stdout), "", "JSON output stays parseable");
    assert!(text(&empty.stderr).contains("no transfers recorded yet"));

    let src = tmp.path().join("song.flac");
    let len = 50_000u64;
    random_file(&src, len as usize, 9);
    let out = tmp.path().join("out");
    // One that completes, then one refused because the file now exists.
    for expected in [0, 5] {
        let mut receiver = Running::start(
            &data,
            &[
                "receive",
                "--output",
                path(&out),
                "--port",
                "0",
                "--bind",
                "127.0.0.1",
            ],
        );
        let addr = wait_listening(&mut receiver);
        let send = run(&data, &["send", path(&src), "--peer", &addr]);
        let (code, _, stderr) = receiver.finish();
        assert_eq!(code, expected, "{stderr}");
        assert_eq!(send.status.code(), Some(expected));
    }
    // A line from a build before the new fields.
    let old_id = "6c4cf4a2-3a43-4f6e-9a0e-0a8d1b9f3c11";
    let file = data.join("history.jsonl");
    let mut lines = std::fs::read_to_string(&file).unwrap();
    lines.push_str(&format!(
        "{{\"transfer_id\":\"{old_id}\",\"direction\":\"Send\",\"peer\":\"old box\",\
         \"files\":[\"a\"],\"file_count\":0,\"bytes\":10,\"finished_at\":1,\
         \"duration_secs\":0.5,\"status\":\"interrupted\",\"error\":\"interrupted by the user\"}}\n"
    ));
    std::fs::write(&file, lines).unwrap();

    let all = run(&data, &["history", "--json"]);
    assert!(all.status.success(), "{}", text(&all.stderr));
    assert_eq!(text(&all.stderr), "", "every line loads");
    let records: Vec<Value> = text(&all.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), 5, "{}", text(&all.stdout));
    let device = text(&run(&data, &["id"]).stdout).trim().to_owned();
    let completed = |direction: &str| {
        records
            .iter()
            .find(|r| r["status"] == "completed" && r["direction"] == direction)
            .unwrap()
    };
    let (sent, received) = (completed("send"), completed("receive"));
    assert_eq!(sent["transfer_id"], received["transfer_id"]);
    let id = sent["transfer_id"].as_str().unwrap().to_owned();
    for r in [sent, received] {
        // Both sides share the data folder here, so the peer's proven id is ours.
        assert_eq!(r["peer_device_id"], device.as_str(), "{r}");
        assert!(
            r["peer_address"]
                .as_str()
                .is_some_and(|a| a.starts_with("127.0.0.1:")),
            "{r}"
        );
        assert_eq!(
            (r["bytes"].as_u64(), r["moved_bytes"].as_u64()),
            (Some(len), Some(len))
        );
        assert_eq!(r["total_bytes"], len);
        assert_eq!(r["roots"][0], "song.flac");
    }
    assert_eq!(sent["local_paths"][0], path(&src));
    assert_eq!(sent["output_dir"], Value::Null);
    assert_eq!(received["output_dir"], path(&out));
    assert_eq!(received["local_paths"][0], path(&out.join("song.flac")));
    let old = records.last().unwrap();
    assert_eq!(
        (&old["transfer_id"], &old["moved_bytes"], &old["direction"]),
        (&Value::from(old_id), &Value::Null, &Value::from("send"))
    );

    // The table shows the id `resume` takes, the peer's address, and where it is.
    let table = text(&run(&data, &["history"]).stdout);
    let row = table
        .lines()
        .find(|l| l.contains(&id) && l.contains(" send "))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(
        row.contains("127.0.0.1:") && row.contains(path(&src)),
        "{row}"
    );
    assert!(table.contains(path(&out.join("song.flac"))), "{table}");

    // Filters: either status, and the direction too.
    let either = text(&run(&data, &["history", "--failed", "--interrupted"]).stdout);
    assert_eq!(
        either.lines().count(),
        1 + 3,
        "header + 2 failed + 1 interrupted: {either}"
    );
    assert!(!either.contains("completed"), "{either}");
    let sends = text(
        &run(
            &data,
            &[
                "history",
                "--failed",
                "--interrupted",
                "--direction",
                "send",
            ],
        )
        .stdout,
    );
    assert_eq!(sends.lines().count(), 1 + 2, "{sends}");
    assert!(sends.contains(old_id), "{sends}");
    let none = run(&data, &["history", "--declined"]);
    assert!(none.status.success());
    let none = text(&none.stdout);
    assert!(none.contains("no transfer matches (5 recorded"), "{none}");
}
