//! A Rust handle on `natlab.sh`: brings a lab up under a prefix unique to this test,
//! builds commands that run inside its nodes, and tears everything down on drop — also
//! when the test panics. Later work (hole punching, relays) reuses it as is:
//! `Lab::up(&["pair", "cone", "symmetric"])` gives two hosts behind two NATs,
//! `Lab::up(&["same", "cone"])` two hosts behind one.
//!
//! Addresses (see `natlab.sh`): the public side `inet` holds coturn (STUN and TURN) on
//! [`STUN`] and 10.200.0.3, a free [`RENDEZVOUS_IP`], and routes between the routers'
//! WAN addresses 10.200.0.11 (rt1) and 10.200.0.12 (rt2).

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The lab script next to this file.
pub fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/natlab/natlab.sh")
}

/// The minimal UDP hole puncher (`punch_probe.py`) next to this file.
pub fn punch_probe() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/natlab/punch_probe.py")
}

/// coturn's primary STUN/TURN address on the public side.
pub const STUN: &str = "10.200.0.2:3478";
/// A public address nothing uses, kept for a rendezvous server.
pub const RENDEZVOUS_IP: &str = "10.200.0.4";
/// coturn's TURN REST API secret (`--static-auth-secret`); also in `STATE/turn-secret`.
pub const TURN_SECRET: &str = "natlab-secret";

/// True when running under CI (`CI=true`): missing prerequisites fail instead of skip.
pub use p2p_wan::in_ci;

fn runs(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// What this machine lacks to host a lab, if anything. `needs_coturn` for the
/// topologies with a STUN server.
pub fn missing_prerequisite(needs_coturn: bool) -> Option<String> {
    if !p2p_wan::running_as_root() {
        return Some("not running as root (network namespaces need it)".into());
    }
    if !runs("ip", &["netns", "list"]) {
        return Some("`ip netns` is not available (install iproute2)".into());
    }
    if !runs("nft", &["--version"]) {
        return Some("nft is not installed (install nftables)".into());
    }
    if needs_coturn && !runs("turnserver", &["--version"]) {
        return Some("turnserver is not installed (install coturn)".into());
    }
    None
}

/// One lab, torn down on drop.
pub struct Lab {
    prefix: String,
}

static LABS: AtomicUsize = AtomicUsize::new(0);

impl Lab {
    /// Brings up `natlab.sh up PREFIX ARGS…`. Returns `None` after printing why when the
    /// machine cannot host a lab; under CI that is a test failure instead.
    pub fn up(args: &[&str]) -> Option<Lab> {
        let needs_coturn = args.first() != Some(&"lan");
        if let Some(missing) = missing_prerequisite(needs_coturn) {
            assert!(!in_ci(), "CI=true but the NAT lab cannot run: {missing}");
            eprintln!("SKIPPED (NAT lab): {missing}");
            return None;
        }
        let prefix = format!(
            "nl{}x{}",
            std::process::id(),
            LABS.fetch_add(1, Ordering::SeqCst)
        );
        let output = Command::new("bash")
            .arg(script())
            .arg("up")
            .arg(&prefix)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run natlab.sh");
        // From here on the lab exists (even half-built): Drop removes it.
        let lab = Lab { prefix };
        assert!(
            output.status.success(),
            "natlab.sh up {args:?} failed:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        Some(lab)
    }

    /// The namespace name prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The lab's state directory (coturn's log, `turn-secret`); removed by `down`, so a
    /// good place for files that processes in different nodes share.
    pub fn state_dir(&self) -> PathBuf {
        let root = std::env::var_os("NATLAB_STATE").unwrap_or_else(|| "/tmp/natlab".into());
        PathBuf::from(root).join(&self.prefix)
    }

    /// A command that runs `program` inside `node` (`h1`, `rt1`, `inet`, …).
    pub fn command(&self, node: &str, program: impl AsRef<OsStr>) -> Command {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec"])
            .arg(format!("{}-{node}", self.prefix))
            .arg(program)
            .stdin(Stdio::null());
        command
    }

    /// The real `p2p-transfer` binary inside `node`.
    pub fn p2p(&self, node: &str) -> Command {
        self.command(node, env!("CARGO_BIN_EXE_p2p-transfer"))
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let status = Command::new("bash")
            .arg(script())
            .arg("down")
            .arg(&self.prefix)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status();
        if !status.is_ok_and(|s| s.success()) {
            eprintln!("warning: natlab.sh down {} failed", self.prefix);
        }
    }
}

/// A child process that is killed if the test ends before it does.
pub struct Spawned {
    child: Option<Child>,
}

impl Spawned {
    pub fn new(child: Child) -> Spawned {
        Spawned { child: Some(child) }
    }

    /// Waits up to `limit` for the exit status; kills it and panics after that.
    pub fn wait(mut self, limit: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("waited twice");
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                return status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("process did not finish within {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs a command to completion within `limit`, capturing its output (read on threads,
/// so a chatty child cannot block on a full pipe).
pub fn run(command: &mut Command, limit: Duration) -> Output {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let read = |mut pipe: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            bytes
        })
    };
    let stdout = read(Box::new(child.stdout.take().expect("piped")));
    let stderr = read(Box::new(child.stderr.take().expect("piped")));
    let status = Spawned::new(child).wait(limit);
    Output {
        status,
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
    }
}

/// Polls `path` until it contains `needle`, for at most `limit`.
pub fn wait_for_text(path: &Path, needle: &str, limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.contains(needle) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{needle:?} did not appear in {} within {limit:?}:\n{text}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `p2p-transfer rendezvous` on the public side (RENDEZVOUS_IP:4000), handing out the
/// lab coturn's credentials; returns once it listens (the secret file goes in `dir`).
pub fn start_rendezvous(lab: &Lab, dir: &Path) -> Spawned {
    start_rendezvous_with(lab, dir, &[])
}

/// [`start_rendezvous`] with more flags (e.g. `--max-per-ip`).
pub fn start_rendezvous_with(lab: &Lab, dir: &Path, extra: &[&str]) -> Spawned {
    use std::io::{BufRead, BufReader};
    let secret = dir.join("turn-secret");
    std::fs::write(&secret, TURN_SECRET).expect("secret");
    let mut rendezvous = lab
        .p2p("inet")
        .args(["rendezvous", "--listen", &format!("{RENDEZVOUS_IP}:4000")])
        .args(["--turn", STUN])
        .args(extra)
        .arg("--turn-secret-file")
        .arg(&secret)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("rendezvous");
    let stderr = rendezvous.stderr.take().expect("stderr");
    let spawned = Spawned::new(rendezvous);
    let mut lines = BufReader::new(stderr).lines();
    assert!(
        lines
            .by_ref()
            .map_while(Result::ok)
            .any(|l| l.contains("rendezvous listening on")),
        "the rendezvous did not start"
    );
    std::thread::spawn(move || for _ in lines {});
    spawned
}
