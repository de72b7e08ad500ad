//! End to end in a real window: the `p2p-gui` binary runs as a receiver on an Xvfb
//! display, the real `p2p-transfer` CLI sends it a file, and the file must arrive
//! byte-identical.
//!
//! Without `Xvfb` the test is skipped with a note, except under CI (`CI=true`), where
//! that is a failure: `.ci/run` installs it.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

mod common;
use common::{data, sha256};

const WAIT: Duration = Duration::from_secs(60);

/// Kills the child when the test ends, however it ends.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn on_path(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| Path::new(dir).join(program))
        .find(|p| p.is_file())
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Starts Xvfb on a free display; returns it and the display name (`:N`). Xvfb writes
/// the display number to `-displayfd` once it accepts clients, so nothing sleeps.
fn start_xvfb(xvfb: &Path) -> (Running, String) {
    let mut child = Command::new(xvfb)
        .args([
            "-displayfd",
            "1",
            "-screen",
            "0",
            "1024x768x24",
            "-nolisten",
            "tcp",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start Xvfb");
    let stdout = child.stdout.take().expect("Xvfb stdout");
    let xvfb = Running(child);
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read the display number from Xvfb");
    let number = line.trim();
    assert!(
        !number.is_empty() && number.bytes().all(|b| b.is_ascii_digit()),
        "Xvfb did not report a display (got {line:?})"
    );
    (xvfb, format!(":{number}"))
}

/// The newest modification time of the files under `dir`.
fn newest(dir: &Path) -> Option<std::time::SystemTime> {
    let mut latest = None;
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        let time = if path.is_dir() {
            newest(&path)
        } else {
            entry.metadata().and_then(|m| m.modified()).ok()
        };
        latest = latest.max(time);
    }
    latest
}

/// The `p2p-transfer` CLI built beside `p2p-gui`; (re)built when it is missing or older
/// than the CLI's or the core's sources (only this package was built, or a stale
/// binary would speak an older protocol).
fn cli_binary() -> PathBuf {
    let gui = Path::new(env!("CARGO_BIN_EXE_p2p-gui"));
    let cli = gui.with_file_name("p2p-transfer");
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let built = std::fs::metadata(&cli).and_then(|m| m.modified()).ok();
    let sources = ["p2p-core/src", "p2p-cli/src", "src"]
        .iter()
        .filter_map(|dir| newest(&workspace.join(dir)))
        .max();
    if built.is_none() || built < sources {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut build = Command::new(cargo);
        build
            .current_dir(&workspace)
            .args(["build", "--bin", "p2p-transfer"]);
        if gui.parent().and_then(Path::file_name) == Some("release".as_ref()) {
            build.arg("--release");
        }
        let status = build.status().expect("run cargo build");
        assert!(status.success(), "cargo build --bin p2p-transfer failed");
    }
    assert!(cli.is_file(), "{} is missing", cli.display());
    cli
}

fn wait_with_timeout(child: &mut Child, what: &str) -> ExitStatus {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(status) = child.try_wait().expect("wait for child") {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "{what} did not finish within {WAIT:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn the_gui_receives_a_file_sent_by_the_cli_under_xvfb() {
    let Some(xvfb) = on_path("Xvfb") else {
        assert!(
            !in_ci(),
            "CI=true but Xvfb is not installed: .ci/run must install xvfb"
        );
        eprintln!("skipping: Xvfb is not installed (apt-get install xvfb to run this test)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (inbox, config) = (dir.path().join("inbox"), dir.path().join("config"));
    let file = dir.path().join("holiday.bin");
    std::fs::write(&file, data(8 << 20, 11)).unwrap();
    let cli = cli_binary();

    let (_xvfb, display) = start_xvfb(&xvfb);
    let mut gui = Command::new(env!("CARGO_BIN_EXE_p2p-gui"))
        .args([
            "--bind",
            "127.0.0.1",
            "--port",
            "0",
            "--auto-accept",
            "--exit-after-transfer",
        ])
        .arg("--output")
        .arg(&inbox)
        .env("DISPLAY", &display)
        .env_remove("WAYLAND_DISPLAY")
        .env("P2P_TRANSFER_CONFIG_DIR", &config)
        .env("P2P_TRANSFER_DATA_DIR", dir.path().join("data"))
        .stderr(Stdio::piped())
        .spawn()
        .expect("start p2p-gui");
    let stderr = gui.stderr.take().expect("p2p-gui stderr");
    let mut gui = Running(gui);

    // Follow the window's stderr lines; the listening address comes first.
    let (lines_tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let addr = loop {
        match lines.recv_timeout(WAIT) {
            Ok(line) => {
                if let Some(addr) = line.strip_prefix("listening on ") {
                    break addr.to_owned();
                }
                seen.push(line);
            }
            Err(e) => panic!("p2p-gui never said where it listens ({e}); it said: {seen:#?}"),
        }
    };

    let mut send = Command::new(&cli)
        .arg("send")
        .arg(&file)
        .args(["--peer", &addr])
        .env("P2P_TRANSFER_DATA_DIR", dir.path().join("data"))
        .stdout(Stdio::null())
        .spawn()
        .expect("start p2p-transfer send");
    let sent = wait_with_timeout(&mut send, "p2p-transfer send");
    assert!(sent.success(), "p2p-transfer send failed: {sent}");

    let closed = wait_with_timeout(&mut gui.0, "p2p-gui");
    seen.extend(lines.try_iter());
    assert!(
        closed.success(),
        "p2p-gui exited with {closed}; it said: {seen:#?}"
    );
    assert!(
        seen.iter()
            .any(|l| l.starts_with("finished: 1 file(s), 8388608 bytes")),
        "p2p-gui did not report the transfer: {seen:#?}"
    );
    assert_eq!(sha256(&inbox.join("holiday.bin")), sha256(&file));
}
