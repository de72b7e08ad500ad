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

/// A code through a rendezvous, in a real window: `p2p-gui --code CODE` with
/// `P2P_RENDEZVOUS` set joins the mailbox of a p2p-core sender (this process, as is the
/// rendezvous server), receives its file byte-identical, and says the path next to the
/// transport. The screen is saved as `CARGO_TARGET_TMPDIR/gui-rendezvous-path.png`
/// while the session is still up, for a person to look at the status line.
#[test]
fn the_window_receives_through_a_rendezvous_and_shows_the_path_under_xvfb() {
    use p2p_core::net::traversal::Rendezvous;
    use p2p_core::net::{Admission, Code, Endpoint, Identity, Security};
    use p2p_core::rendezvous::server::{Limits, Server, ServerConfig};
    use p2p_core::{NoEvents, P2PSession, SessionOptions};

    let Some(xvfb) = on_path("Xvfb") else {
        assert!(
            !in_ci(),
            "CI=true but Xvfb is not installed: .ci/run must install xvfb"
        );
        eprintln!("skipping: Xvfb is not installed (apt-get install xvfb to run this test)");
        return;
    };
    let import = on_path("import");
    let dir = tempfile::tempdir().unwrap();
    let (inbox, config) = (dir.path().join("inbox"), dir.path().join("config"));
    let file = dir.path().join("from-afar.bin");
    std::fs::write(&file, data(4 << 20, 13)).unwrap();

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let server = runtime
        .block_on(Server::bind(ServerConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            turn: None,
            limits: Limits::default(),
        }))
        .unwrap();
    let server_addr = server.local_addr().to_string();
    runtime.spawn(server.run());
    // The sender opens a mailbox and waits there with the code made from its number;
    // it keeps the session open until `done` (the screenshot is taken).
    let (rendezvous, code) = runtime.block_on(async {
        let rendezvous = Rendezvous::allocate(&server_addr).await.unwrap();
        let code = Code::generate_on(u16::try_from(rendezvous.nameplate()).unwrap());
        rendezvous.set_code(code.clone()).await;
        (rendezvous, code)
    });
    let (done, until_done) = tokio::sync::oneshot::channel::<()>();
    let sender = {
        let (code, file) = (code.clone(), file.clone());
        runtime.spawn(async move {
            let endpoint: Endpoint = Endpoint::Rendezvous(Box::new(rendezvous));
            let options = SessionOptions {
                security: Security::new(
                    Identity::generate_shared(),
                    Admission::default().with_code(code),
                )
                .unwrap(),
                ..SessionOptions::default()
            };
            let mut session = P2PSession::open(&endpoint, &options).await?;
            session.send(&[file], &NoEvents).await?;
            let _ = until_done.await;
            let closed: p2p_core::Result<()> = session.close().await;
            closed?;
            endpoint.shut_down().await;
            Ok::<(), p2p_core::Error>(())
        })
    };

    let (_xvfb, display) = start_xvfb(&xvfb);
    let mut gui = Command::new(env!("CARGO_BIN_EXE_p2p-gui"))
        .args([
            "--code",
            &code.to_string(),
            "--auto-accept",
            "--tab",
            "receive",
        ])
        .args(["--theme", "light", "--no-find-peers"])
        .arg("--output")
        .arg(&inbox)
        .env("DISPLAY", &display)
        .env_remove("WAYLAND_DISPLAY")
        .env("P2P_RENDEZVOUS", &server_addr)
        .env("P2P_TRANSFER_CONFIG_DIR", &config)
        .env("P2P_TRANSFER_DATA_DIR", dir.path().join("data"))
        .stderr(Stdio::piped())
        .spawn()
        .expect("start p2p-gui");
    let stderr = gui.stderr.take().expect("p2p-gui stderr");
    let _gui = Running(gui);
    let (lines_tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let mut wait_for = |prefix: &str| loop {
        match lines.recv_timeout(WAIT) {
            Ok(line) => {
                seen.push(line.clone());
                if line.starts_with(prefix) {
                    break line;
                }
            }
            Err(e) => panic!("p2p-gui never said {prefix:?} ({e}); it said: {seen:#?}"),
        }
    };
    let connected = wait_for("connected to ");
    // Two processes on one machine, no relay configured: a host pair.
    assert!(
        connected.contains(" over QUIC · lan") || connected.contains(" over QUIC · direct"),
        "{connected}"
    );
    let finished = wait_for("finished: 1 file(s), 4194304 bytes");
    assert_eq!(sha256(&inbox.join("from-afar.bin")), sha256(&file));

    // The screen while the session is up: the status line names the path.
    let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("gui-rendezvous-path.png");
    match import {
        Some(import) => {
            // A moment for the window to draw the last frame (as scripts/screenshots.sh).
            std::thread::sleep(Duration::from_secs(1));
            let status = Command::new(import)
                .args(["-window", "root"])
                .arg(&shot)
                .env("DISPLAY", &display)
                .status()
                .expect("run import");
            assert!(status.success(), "import failed: {status}");
            let png = std::fs::read(&shot).unwrap();
            assert!(
                png.starts_with(b"\x89PNG") && png.len() > 10_000,
                "{}",
                png.len()
            );
            eprintln!("screenshot: {} ({finished})", shot.display());
        }
        None => eprintln!("no screenshot: ImageMagick's import is not installed"),
    }
    let _ = done.send(());
    runtime
        .block_on(sender)
        .unwrap()
        .expect("the sender ends cleanly");
}

/// A swarm download in a real window: two seeds (this process, each limited to
/// 1.5 MiB/s so the download takes a while) share a folder on a tracker (a rendezvous
/// server, this process); `p2p-gui --get TICKET` gets it byte-identical. The screen is
/// saved mid-download as `CARGO_TARGET_TMPDIR/gui-get.png`, for a person to look at
/// the chunk map and the peers' table.
#[test]
fn the_window_gets_a_share_under_xvfb() {
    use p2p_core::net::Identity;
    use p2p_core::rendezvous::server::{Limits, Server, ServerConfig};
    use p2p_core::swarm::{hash_share, Host, SwarmConfig, Ticket};

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
    let shared = dir.path().join("holiday photos");
    std::fs::create_dir_all(shared.join("day 2")).unwrap();
    std::fs::write(shared.join("beach.raw"), data(24 << 20, 41)).unwrap();
    std::fs::write(shared.join("day 2/harbour.raw"), data(16 << 20, 42)).unwrap();

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let server = runtime
        .block_on(Server::bind(ServerConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            turn: None,
            limits: Limits {
                per_ip: 1000,
                ..Limits::default()
            },
        }))
        .unwrap();
    let tracker = server.local_addr().to_string();
    runtime.spawn(server.run());
    let share = hash_share(&[&shared], &mut |_, _| {}).unwrap();
    let seeds: Vec<Host> = runtime.block_on(async {
        let mut seeds = Vec::new();
        for _ in 0..2 {
            let config = SwarmConfig {
                max_upload: Some(3 << 19),
                ..SwarmConfig::default()
            };
            let host = Host::connect(&tracker, Identity::generate_shared(), config)
                .await
                .unwrap();
            host.share(&share, vec![]).await.unwrap();
            seeds.push(host);
        }
        seeds
    });
    let ticket = Ticket {
        root: share.root,
        tracker: Some(tracker.clone()),
        trusted: vec![],
    };

    let (_xvfb, display) = start_xvfb(&xvfb);
    let mut gui = Command::new(env!("CARGO_BIN_EXE_p2p-gui"))
        .args(["--get", &ticket.to_string(), "--exit-after-transfer"])
        .args(["--theme", "light", "--no-find-peers"])
        .arg("--output")
        .arg(&inbox)
        .env("DISPLAY", &display)
        .env_remove("WAYLAND_DISPLAY")
        .env_remove("P2P_RENDEZVOUS")
        .env("P2P_TRANSFER_CONFIG_DIR", &config)
        .env("P2P_TRANSFER_DATA_DIR", dir.path().join("data"))
        .stderr(Stdio::piped())
        .spawn()
        .expect("start p2p-gui");
    let stderr = gui.stderr.take().expect("p2p-gui stderr");
    let mut gui = Running(gui);
    let (lines_tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen: Vec<String> = Vec::new();
    // Reads lines until `done` holds for the lines seen so far.
    let mut wait_until = |what: &str, done: &dyn Fn(&[String]) -> bool| {
        while !done(&seen) {
            match lines.recv_timeout(WAIT) {
                Ok(line) => seen.push(line),
                Err(e) => panic!("p2p-gui never said {what} ({e}); it said: {seen:#?}"),
            }
        }
    };
    // Both seeds connected and the manifest fetched from one of them, in any order.
    wait_until("two peers and the manifest", &|seen| {
        seen.iter().filter(|l| l.starts_with("get: Peer ")).count() >= 2
            && seen
                .iter()
                .any(|l| l.starts_with("get: The share holds 2 files"))
    });

    // Mid-download (40 MiB at 3 MiB/s): the chunk map part full, both peers listed.
    let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("gui-get.png");
    match on_path("import") {
        Some(import) => {
            // A few seconds of progress to look at (as scripts/screenshots.sh waits).
            std::thread::sleep(Duration::from_secs(4));
            let window = on_path("xdotool").and_then(|xdotool| {
                let out = Command::new(xdotool)
                    .args(["search", "--onlyvisible", "--name", "p2p-transfer"])
                    .env("DISPLAY", &display)
                    .output()
                    .ok()?;
                let id = String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .next()?
                    .to_owned();
                (!id.is_empty()).then_some(id)
            });
            let status = Command::new(import)
                .args(["-window", window.as_deref().unwrap_or("root")])
                .arg(&shot)
                .env("DISPLAY", &display)
                .status()
                .expect("run import");
            assert!(status.success(), "import failed: {status}");
            let png = std::fs::read(&shot).unwrap();
            assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000);
            eprintln!("screenshot: {}", shot.display());
        }
        None => eprintln!("no screenshot: ImageMagick's import is not installed"),
    }

    wait_until("get: done", &|seen| seen.iter().any(|l| l == "get: done"));
    let closed = wait_with_timeout(&mut gui.0, "p2p-gui");
    assert!(
        closed.success(),
        "p2p-gui exited with {closed}; it said: {seen:#?}"
    );
    for file in ["beach.raw", "day 2/harbour.raw"] {
        assert_eq!(
            sha256(&inbox.join("holiday photos").join(file)),
            sha256(&shared.join(file)),
            "{file}"
        );
    }
    runtime.block_on(async {
        for seed in seeds {
            seed.shut_down().await;
        }
    });
}
