//! Issue 11's security requirements on real sockets (127.0.0.1, port 0): a man in the
//! middle, a tampered stream, one-time codes, old and foreign peers, beacons that lie,
//! and the trust store — through p2p-core's `net` layer and through the real binary.
//!
//! Every CLI side has a data folder of its own (its own device key: two folders are two
//! devices), and every test a discovery port of its own (beacons stay on the loopback
//! network and never reach another test). Nothing sleeps to synchronise: tests wait on
//! process output lines, channels and tasks, each wait bounded.

mod common;

use std::fmt;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use futures::{SinkExt, StreamExt};
use p2p_core::discovery::{self, Announcer, Beacon, BeaconTargets, DiscoveryConfig};
use p2p_core::net::{
    self, tls, Admission, Admitted, Code, DeviceId, Identity, PeerIdentity, Security,
    SecurityError, TlsConfigs, TrustStore,
};
use p2p_core::wire::{ErrorCode, FrameCodec, Hello, Message, MAGIC};
use p2p_core::{Capabilities, PROTOCOL_VERSION};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::Framed;

/// The longest any process, task or expected output line may take.
const LIMIT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pipe {
    Stdout,
    Stderr,
}

/// A running `p2p-transfer`, its output read line by line as it comes. Killed if the
/// test ends without waiting for it.
struct Proc {
    label: String,
    child: Child,
    lines: mpsc::Receiver<(Pipe, String)>,
    /// Lines read but not yet looked at by [`Proc::wait_line`] (it waits on one pipe
    /// while the other may run ahead).
    pending: std::collections::VecDeque<(Pipe, String)>,
    stdout: String,
    stderr: String,
}

/// How a process ended.
struct Finished {
    label: String,
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl fmt::Display for Finished {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "`{}` exited with {:?}\n--- stdout:\n{}--- stderr:\n{}---",
            self.label, self.code, self.stdout, self.stderr
        )
    }
}

impl Finished {
    fn assert_code(&self, code: i32, why: &str) {
        assert_eq!(self.code, Some(code), "{why}: {self}");
    }

    fn assert_failed(&self, why: &str) {
        assert!(
            self.code.is_some_and(|c| c != 0),
            "{why}: expected a failure: {self}"
        );
    }

    /// One readable `error:` line on stderr containing `needle` (case-insensitive), no
    /// panic and no Debug dump.
    fn assert_error_says(&self, needle: &str) {
        assert!(self.stderr.contains("error: "), "no error line: {self}");
        for bad in ["panicked", "Os {", "kind:", "RUST_BACKTRACE"] {
            assert!(!self.stderr.contains(bad), "{bad:?} on stderr: {self}");
        }
        assert!(
            self.stderr.to_lowercase().contains(&needle.to_lowercase()),
            "stderr does not say {needle:?}: {self}"
        );
    }
}

fn forward(pipe: Pipe, reader: impl Read + Send + 'static, lines: mpsc::Sender<(Pipe, String)>) {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(reader);
        let mut line = Vec::new();
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let text = String::from_utf8_lossy(&line).into_owned();
                    if lines.send((pipe, text)).is_err() {
                        break;
                    }
                }
            }
        }
    });
}

impl Proc {
    fn keep(&mut self, pipe: Pipe, line: &str) {
        match pipe {
            Pipe::Stdout => self.stdout.push_str(line),
            Pipe::Stderr => self.stderr.push_str(line),
        }
    }

    fn so_far(&self) -> String {
        format!(
            "--- stdout so far:\n{}--- stderr so far:\n{}---",
            self.stdout, self.stderr
        )
    }

    /// Waits for a line on `pipe` that satisfies `wanted`; returns it without its line
    /// feed. Fails the test if the process ends first or nothing comes within [`LIMIT`].
    fn wait_line(&mut self, pipe: Pipe, what: &str, wanted: impl Fn(&str) -> bool) -> String {
        // Lines of this pipe are looked at once, in order; the other pipe's wait.
        let mut i = 0;
        while i < self.pending.len() {
            if self.pending[i].0 != pipe {
                i += 1;
                continue;
            }
            let (_, line) = self.pending.remove(i).unwrap();
            if wanted(line.trim_end()) {
                return line.trim_end().to_owned();
            }
        }
        let deadline = Instant::now() + LIMIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok((from, line)) => {
                    self.keep(from, &line);
                    if from != pipe {
                        self.pending.push_back((from, line));
                    } else if wanted(line.trim_end()) {
                        return line.trim_end().to_owned();
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => panic!(
                    "`{}` printed no {what} within {LIMIT:?}\n{}",
                    self.label,
                    self.so_far()
                ),
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait();
                    panic!(
                        "`{}` ended ({status:?}) before printing {what}\n{}",
                        self.label,
                        self.so_far()
                    )
                }
            }
        }
    }

    /// Ctrl+C, by process id.
    fn interrupt(&self) {
        let pid = self.child.id().to_string();
        let kill = Command::new("kill").args(["-INT", &pid]).status().unwrap();
        assert!(kill.success(), "kill -INT {pid} failed");
    }

    /// Reads the rest of the output and waits for the exit (at most [`LIMIT`]).
    fn finish(mut self) -> Finished {
        let deadline = Instant::now() + LIMIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok((from, line)) => self.keep(from, &line),
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let _ = self.child.kill();
                    panic!(
                        "`{}` still running after {LIMIT:?} (killed)\n{}",
                        self.label,
                        self.so_far()
                    );
                }
            }
        }
        let status = self.child.wait().unwrap();
        Finished {
            label: std::mem::take(&mut self.label),
            code: status.code(),
            stdout: std::mem::take(&mut self.stdout),
            stderr: std::mem::take(&mut self.stderr),
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // A no-op once the child was waited for.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One test's surroundings: a temp folder and a discovery port of its own.
struct Lab {
    tmp: tempfile::TempDir,
    discovery_port: u16,
}

impl Lab {
    fn new() -> Lab {
        // A free UDP port: bound and released (discovery sockets share ports anyway).
        let discovery_port = std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        Lab {
            tmp: tempfile::tempdir().unwrap(),
            discovery_port,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    /// A data folder: one device (its key, its trust store, its history).
    fn device(&self, name: &str) -> PathBuf {
        self.path(&format!("{name}-data"))
    }

    /// A random file of `len` bytes.
    fn file(&self, name: &str, len: usize, seed: u64) -> PathBuf {
        let file = self.path(name);
        random_file(&file, len, seed);
        file
    }

    fn discovery_config(&self) -> DiscoveryConfig {
        DiscoveryConfig {
            port: self.discovery_port,
            interval: Duration::from_millis(200),
            targets: BeaconTargets::Only(vec!["127.255.255.255".parse().unwrap()]),
            ..DiscoveryConfig::default()
        }
    }

    fn spawn(&self, data: &Path, args: &[&str]) -> Proc {
        let mut child = Command::new(binary())
            .env("P2P_TRANSFER_DATA_DIR", data)
            .env(discovery::PORT_ENV, self.discovery_port.to_string())
            .env(discovery::TARGETS_ENV, "127.255.255.255")
            .env_remove("RUST_LOG")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, lines) = mpsc::channel();
        forward(Pipe::Stdout, child.stdout.take().unwrap(), tx.clone());
        forward(Pipe::Stderr, child.stderr.take().unwrap(), tx);
        let device = data.file_name().unwrap().to_string_lossy();
        Proc {
            label: format!("[{device}] p2p-transfer {}", args.join(" ")),
            child,
            lines,
            pending: Default::default(),
            stdout: String::new(),
            stderr: String::new(),
        }
    }

    fn run(&self, data: &Path, args: &[&str]) -> Finished {
        self.spawn(data, args).finish()
    }

    /// Starts `p2p-transfer ARGS --port 0 --bind 127.0.0.1` and waits for the address
    /// it listens on.
    fn listen(&self, data: &Path, args: &[&str]) -> (Proc, String) {
        let mut all = args.to_vec();
        all.extend(["--port", "0", "--bind", "127.0.0.1"]);
        let mut proc = self.spawn(data, &all);
        let line = proc.wait_line(Pipe::Stderr, "\"listening on ADDR\"", |l| {
            l.starts_with("listening on ")
        });
        let addr = line["listening on ".len()..].to_owned();
        (proc, addr)
    }

    /// `send FILE` waiting for a receiver: the process, its address and the one-time
    /// code it printed on stdout.
    fn send_waiting(&self, data: &Path, file: &Path, extra: &[&str]) -> (Proc, String, String) {
        let mut args = vec!["send", path(file)];
        args.extend(extra);
        let (mut proc, addr) = self.listen(data, &args);
        let line = proc.wait_line(Pipe::Stdout, "\"code: CODE\"", |l| l.starts_with("code: "));
        let code = line["code: ".len()..].trim().to_owned();
        (proc, addr, code)
    }

    /// `p2p-transfer id` of a data folder (creating its key).
    fn device_id(&self, data: &Path) -> String {
        let shown = self.run(data, &["id"]);
        shown.assert_code(0, "p2p-transfer id");
        let id = shown.stdout.trim().to_owned();
        assert!(id.parse::<DeviceId>().is_ok(), "not a device id: {shown}");
        id
    }
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Nothing at all in `out`: no file, no `.part`, no resume state.
fn assert_nothing_written(out: &Path, why: &str) {
    if out.exists() {
        let found = tree_digest(out);
        assert!(found.is_empty(), "{why}: the output folder holds {found:?}");
    }
}

/// Checks the shape of a generated code: `N-word-word`, N in 1..=99.
fn assert_generated_code(code: &str) {
    let parts: Vec<&str> = code.split('-').collect();
    assert_eq!(parts.len(), 3, "a generated code is N-word-word: {code:?}");
    let nameplate: u16 = parts[0]
        .parse()
        .unwrap_or_else(|_| panic!("no nameplate in {code:?}"));
    assert!((1..=99).contains(&nameplate), "{code:?}");
    assert!(
        parts[1..]
            .iter()
            .all(|w| !w.is_empty() && w.chars().all(|c| c.is_ascii_lowercase())),
        "{code:?}"
    );
    assert!(code.parse::<Code>().is_ok(), "{code:?}");
}

/// Another code with the same nameplate (so discovery finds the sender) and other words.
fn wrong_code_for(code: &str) -> String {
    let nameplate = code.split('-').next().unwrap();
    let wrong = format!("{nameplate}-wrong-guess");
    assert_ne!(wrong, code);
    wrong
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Waits for a spawned task, at most [`LIMIT`].
async fn joined<T>(what: &str, task: tokio::task::JoinHandle<T>) -> T {
    tokio::time::timeout(LIMIT, task)
        .await
        .unwrap_or_else(|_| panic!("{what} did not end within {LIMIT:?}"))
        .unwrap_or_else(|e| panic!("{what} failed: {e}"))
}

// ---------------------------------------------------------------------------------------
// A man in the middle
// ---------------------------------------------------------------------------------------

/// What the man in the middle achieved.
#[derive(Debug, Default, Clone, Copy)]
struct MitmReport {
    /// The connecting victim completed TLS with the MITM's key.
    client_leg: bool,
    /// The dialed victim completed TLS with the MITM's key.
    server_leg: bool,
    /// Decrypted bytes relayed from the connecting victim to the dialed one.
    to_server: u64,
    /// And back.
    to_client: u64,
}

impl MitmReport {
    /// The attack got as far as admission: TLS on both legs, messages relayed both ways.
    fn assert_reached_admission(&self) {
        assert!(
            self.client_leg && self.server_leg && self.to_server > 0 && self.to_client > 0,
            "the MITM must complete TLS on both legs and relay admission messages both \
             ways, or the test proves nothing: {self:?}"
        );
    }
}

struct Mitm {
    addr: String,
    id: DeviceId,
    task: tokio::task::JoinHandle<MitmReport>,
}

/// A man in the middle on 127.0.0.1 for one connection: terminates the connecting
/// victim's TLS with a key of its own (`tls::server_tls`), dials `target` as a TLS
/// client with the same key (`tls::client`), then copies the decrypted bytes both ways
/// unchanged — the admission messages included.
async fn start_mitm(target: String) -> Mitm {
    let identity = Identity::generate_shared();
    let id = identity.device_id();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let task = tokio::spawn(async move {
        let configs = TlsConfigs::new(&identity).unwrap();
        let mut report = MitmReport::default();
        let Ok((tcp, _)) = listener.accept().await else {
            return report;
        };
        let Ok((victim, _)) = tls::server_tls(tcp, &configs, identity.fingerprint()).await else {
            return report;
        };
        report.client_leg = true;
        let Ok(tcp) = TcpStream::connect(&target).await else {
            return report;
        };
        let Ok((real, _)) = tls::client(tcp, &configs, identity.fingerprint()).await else {
            return report;
        };
        report.server_leg = true;
        let (victim_read, victim_write) = tokio::io::split(victim);
        let (real_read, real_write) = tokio::io::split(real);
        let relay =
            async { tokio::join!(pump(victim_read, real_write), pump(real_read, victim_write)) };
        if let Ok((to_server, to_client)) = tokio::time::timeout(LIMIT, relay).await {
            report.to_server = to_server;
            report.to_client = to_client;
        }
        report
    });
    Mitm { addr, id, task }
}

/// Copies until either end stops; returns the bytes copied.
async fn pump(mut from: impl AsyncRead + Unpin, mut to: impl AsyncWrite + Unpin) -> u64 {
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if to.write_all(&buf[..n]).await.is_err() || to.flush().await.is_err() {
            break;
        }
        total += n as u64;
    }
    let _ = to.shutdown().await;
    total
}

/// Both ends of one secured connection.
struct Admissions {
    client: Result<PeerIdentity, SecurityError>,
    server: Result<PeerIdentity, SecurityError>,
    mitm: Option<(DeviceId, MitmReport)>,
}

/// `client` connects to `server` (through a man in the middle when `through_mitm`):
/// TLS and admission exactly as sessions run them (`net::secure_client` /
/// `net::secure_server`).
async fn admit(client: &Security, server: &Security, through_mitm: bool) -> Admissions {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server_addr = listener.local_addr().unwrap().to_string();
    let server = server.clone();
    let server_side = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        net::secure_server(tcp, &server)
            .await
            .map(|(_stream, peer)| peer)
    });
    let mitm = match through_mitm {
        true => Some(start_mitm(server_addr.clone()).await),
        false => None,
    };
    let dial = mitm.as_ref().map_or(&server_addr, |m| &m.addr);
    let tcp = TcpStream::connect(dial).await.unwrap();
    let client = tokio::time::timeout(LIMIT, net::secure_client(tcp, client))
        .await
        .expect("the client side hung")
        .map(|(_stream, peer)| peer);
    let server = joined("the server side", server_side).await;
    let mitm = match mitm {
        Some(m) => Some((m.id, joined("the MITM", m.task).await)),
        None => None,
    };
    Admissions {
        client,
        server,
        mitm,
    }
}

fn security(identity: &std::sync::Arc<Identity>, admission: Admission) -> Security {
    Security::new(identity.clone(), admission).unwrap()
}

fn code() -> Code {
    Code::generate()
}

/// Issue 11, 1(a): both victims use the right code, but a MITM terminates TLS on both
/// sides and relays the SPAKE2 messages unchanged. Both derive the same SPAKE2 key, yet
/// the key confirmation binds each TLS session's exporter and keys, so it fails on both
/// ends: `WrongCode`, and the code is burnt for everyone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_a_mitm_the_right_code_on_both_sides_fails_as_a_wrong_code() {
    let (a, b) = (Identity::generate_shared(), Identity::generate_shared());

    // Control: the same set-up without the MITM is let in.
    let shared = code();
    let direct = admit(
        &security(&a, Admission::default().with_code(shared.clone())),
        &security(&b, Admission::default().with_code(shared)),
        false,
    )
    .await;
    let client = direct.client.expect("control: the code lets the server in");
    let server = direct.server.expect("control: the code lets the client in");
    assert_eq!(
        (client.admitted, client.device_id),
        (Admitted::Code, b.device_id())
    );
    assert_eq!(
        (server.admitted, server.device_id),
        (Admitted::Code, a.device_id())
    );

    let shared = code();
    let client = security(&a, Admission::default().with_code(shared.clone()));
    let server = security(&b, Admission::default().with_code(shared));
    let attacked = admit(&client, &server, true).await;
    attacked.mitm.unwrap().1.assert_reached_admission();
    assert!(
        matches!(attacked.client, Err(SecurityError::WrongCode)),
        "the connecting victim must see WrongCode, got {:?}",
        attacked.client
    );
    assert!(
        matches!(attacked.server, Err(SecurityError::WrongCode)),
        "the dialed victim must see WrongCode, got {:?}",
        attacked.server
    );
    assert!(!client.admission.has_code() && !server.admission.has_code());

    // Burnt: the very same code no longer opens anything, even without the MITM.
    let again = admit(&client, &server, false).await;
    assert!(
        again.client.is_err() && again.server.is_err(),
        "a code burnt by a MITM must stay burnt: {:?} / {:?}",
        again.client,
        again.server
    );
}

/// Issue 11, 1(b): each side pins the other's real device id; the MITM shows its own
/// key, so both refuse with `NotPinned`, naming the key they were shown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_a_mitm_pinned_ids_fail_as_not_pinned_on_both_sides() {
    let (a, b) = (Identity::generate_shared(), Identity::generate_shared());
    let pin_b = || security(&a, Admission::default().with_pin(b.device_id()));
    let pin_a = || security(&b, Admission::default().with_pin(a.device_id()));

    let direct = admit(&pin_b(), &pin_a(), false).await;
    assert_eq!(direct.client.expect("control").admitted, Admitted::Pinned);
    assert_eq!(direct.server.expect("control").admitted, Admitted::Pinned);

    let attacked = admit(&pin_b(), &pin_a(), true).await;
    let (mitm, report) = attacked.mitm.unwrap();
    report.assert_reached_admission();
    match attacked.client {
        Err(SecurityError::NotPinned { expected, proven }) => {
            assert_eq!((expected, proven), (b.device_id(), mitm))
        }
        other => panic!("the connecting victim must see NotPinned, got {other:?}"),
    }
    match attacked.server {
        Err(SecurityError::NotPinned { expected, proven }) => {
            assert_eq!((expected, proven), (a.device_id(), mitm))
        }
        other => panic!("the dialed victim must see NotPinned, got {other:?}"),
    }

    // A pin and a code: the pin speaks on the pinning side, the code on the other.
    let shared = code();
    let attacked = admit(
        &security(
            &a,
            Admission::default()
                .with_pin(b.device_id())
                .with_code(shared.clone()),
        ),
        &security(&b, Admission::default().with_code(shared)),
        true,
    )
    .await;
    attacked.mitm.unwrap().1.assert_reached_admission();
    assert!(
        matches!(attacked.client, Err(SecurityError::NotPinned { .. })),
        "{:?}",
        attacked.client
    );
    assert!(
        matches!(attacked.server, Err(SecurityError::WrongCode)),
        "{:?}",
        attacked.server
    );
}

/// Issue 11, 1(c): each side trusts the other's real key (by fingerprint, as
/// `--remember` stores it, and by id alone, as `trust add` does); the MITM's key is
/// nobody's: `UnknownDevice` on both sides, naming the MITM's id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_a_mitm_trusted_devices_fail_as_unknown_devices() {
    let (a, b) = (Identity::generate_shared(), Identity::generate_shared());
    for with_fingerprint in [true, false] {
        let trusting = |me: &std::sync::Arc<Identity>, other: &std::sync::Arc<Identity>| {
            let mut store = TrustStore::in_memory(Vec::new());
            let fingerprint = with_fingerprint.then(|| other.fingerprint());
            store.add(other.device_id(), "the other one", fingerprint);
            security(me, Admission::default().with_trusted(store.devices()))
        };
        let direct = admit(&trusting(&a, &b), &trusting(&b, &a), false).await;
        let expected = Admitted::Trusted {
            name: "the other one".into(),
        };
        assert_eq!(direct.client.expect("control").admitted, expected);
        assert_eq!(direct.server.expect("control").admitted, expected);

        let attacked = admit(&trusting(&a, &b), &trusting(&b, &a), true).await;
        let (mitm, report) = attacked.mitm.unwrap();
        report.assert_reached_admission();
        for (side, result) in [("connecting", attacked.client), ("dialed", attacked.server)] {
            match result {
                Err(SecurityError::UnknownDevice(id)) => assert_eq!(id, mitm, "{side}"),
                other => panic!(
                    "the {side} victim (trust by fingerprint: {with_fingerprint}) must see \
                     UnknownDevice, got {other:?}"
                ),
            }
        }
    }
}

/// 1(a) with the binary: `send` prints a code, `receive CODE` goes through the MITM.
/// Both exit 8 saying "wrong code"; nothing is written.
#[test]
fn cli_through_a_mitm_the_right_code_fails_on_both_sides_with_exit_8() {
    let lab = Lab::new();
    let (sender_data, receiver_data) = (lab.device("sender"), lab.device("receiver"));
    let src = lab.file("secret.bin", 200_000, 1);
    let out = lab.path("out");
    let rt = runtime();

    let (sender, sender_addr, code) = lab.send_waiting(&sender_data, &src, &[]);
    assert_generated_code(&code);
    let mitm = rt.block_on(start_mitm(sender_addr));
    let receiver = lab.run(
        &receiver_data,
        &["receive", &code, "--peer", &mitm.addr, "-o", path(&out)],
    );
    let sender = sender.finish();
    rt.block_on(joined("the MITM", mitm.task))
        .assert_reached_admission();

    receiver.assert_code(8, "the receiver must refuse the MITM");
    receiver.assert_error_says("wrong code");
    sender.assert_code(
        8,
        "the sender must refuse the MITM and stop (its code is burnt)",
    );
    sender.assert_error_says("wrong code");
    assert_nothing_written(&out, "a MITM with the right code relayed");
}

/// 1(b) with the binary: both sides pin the other's id (`--peer-id`). The sender exits
/// 8 naming the MITM's id; the receiver drops the connection, logs why, and still
/// serves the real sender afterwards.
#[test]
fn cli_through_a_mitm_pinned_ids_fail_with_exit_8_and_the_receiver_stays_usable() {
    let lab = Lab::new();
    let (sender_data, receiver_data) = (lab.device("sender"), lab.device("receiver"));
    let (sender_id, receiver_id) = (lab.device_id(&sender_data), lab.device_id(&receiver_data));
    let src = lab.file("pinned.bin", 300_000, 2);
    let out = lab.path("out");
    let rt = runtime();

    let (mut receiver, addr) = lab.listen(
        &receiver_data,
        &["receive", "-v", "--peer-id", &sender_id, "-o", path(&out)],
    );
    let mitm = rt.block_on(start_mitm(addr.clone()));
    let mitm_id = mitm.id.to_string();
    let sender = lab.run(
        &sender_data,
        &[
            "send",
            path(&src),
            "--peer",
            &mitm.addr,
            "--peer-id",
            &receiver_id,
        ],
    );
    sender.assert_code(8, "the sender must refuse a key that is not the pinned one");
    sender.assert_error_says(&format!(
        "the peer is device {mitm_id}, not the expected {receiver_id}"
    ));
    let refusal = receiver.wait_line(Pipe::Stderr, "the refusal of the MITM", |l| {
        l.contains("dropped a connection")
    });
    assert!(
        refusal.contains(&format!("device {mitm_id}, not the expected {sender_id}")),
        "the receiver must refuse the MITM as not pinned: {refusal}"
    );
    rt.block_on(joined("the MITM", mitm.task))
        .assert_reached_admission();
    assert_nothing_written(&out, "after the MITM attempt");

    // Control: the real sender, straight to the receiver, with the same pins.
    let direct = lab.run(
        &sender_data,
        &[
            "send",
            path(&src),
            "--peer",
            &addr,
            "--peer-id",
            &receiver_id,
        ],
    );
    direct.assert_code(0, "the pinned devices, without the MITM");
    receiver
        .finish()
        .assert_code(0, "the receiver after the transfer");
    assert_eq!(sha256_file(&out.join("pinned.bin")), sha256_file(&src));
}

/// 1(c) with the binary: each side trusts the other's id (`trust add`). Through the
/// MITM the sender exits 8 refusing an unknown device (the MITM's id); the receiver
/// drops it and still serves the real sender.
#[test]
fn cli_through_a_mitm_trusted_devices_fail_with_exit_8_and_the_receiver_stays_usable() {
    let lab = Lab::new();
    let (sender_data, receiver_data) = (lab.device("sender"), lab.device("receiver"));
    let (sender_id, receiver_id) = (lab.device_id(&sender_data), lab.device_id(&receiver_data));
    lab.run(&sender_data, &["trust", "add", &receiver_id])
        .assert_code(0, "trust add on the sender");
    lab.run(&receiver_data, &["trust", "add", &sender_id])
        .assert_code(0, "trust add on the receiver");
    let src = lab.file("trusted.bin", 300_000, 3);
    let out = lab.path("out");
    let rt = runtime();

    let (mut receiver, addr) = lab.listen(&receiver_data, &["receive", "-v", "-o", path(&out)]);
    let mitm = rt.block_on(start_mitm(addr.clone()));
    let mitm_id = mitm.id.to_string();
    let sender = lab.run(&sender_data, &["send", path(&src), "--peer", &mitm.addr]);
    sender.assert_code(8, "the sender must refuse the MITM's key");
    sender.assert_error_says(&format!("refused unknown device {mitm_id}"));
    let refusal = receiver.wait_line(Pipe::Stderr, "the refusal of the MITM", |l| {
        l.contains("dropped a connection")
    });
    assert!(
        refusal.contains(&format!("refused unknown device {mitm_id}")),
        "the receiver must refuse the MITM as unknown: {refusal}"
    );
    rt.block_on(joined("the MITM", mitm.task))
        .assert_reached_admission();
    assert_nothing_written(&out, "after the MITM attempt");

    let direct = lab.run(&sender_data, &["send", path(&src), "--peer", &addr]);
    direct.assert_code(0, "the trusted devices, without the MITM");
    receiver
        .finish()
        .assert_code(0, "the receiver after the transfer");
    assert_eq!(sha256_file(&out.join("trusted.bin")), sha256_file(&src));
}

// ---------------------------------------------------------------------------------------
// A tampered stream
// ---------------------------------------------------------------------------------------

/// A raw TCP proxy for one connection that flips the lowest bit of byte `flip_at`
/// (0-based) of what the client sends; the task returns whether it got that far.
async fn start_flipper(target: String, flip_at: u64) -> (String, tokio::task::JoinHandle<bool>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let task = tokio::spawn(async move {
        let (client, _) = listener.accept().await.unwrap();
        let server = TcpStream::connect(&target).await.unwrap();
        let (mut client_read, client_write) = client.into_split();
        let (server_read, mut server_write) = server.into_split();
        let up = async move {
            let mut buf = vec![0u8; 64 * 1024];
            let (mut seen, mut flipped) = (0u64, false);
            loop {
                let n = match client_read.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                if (seen..seen + n as u64).contains(&flip_at) {
                    buf[(flip_at - seen) as usize] ^= 1;
                    flipped = true;
                }
                seen += n as u64;
                if server_write.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
            let _ = server_write.shutdown().await;
            flipped
        };
        let down = pump(server_read, client_write);
        match tokio::time::timeout(LIMIT, async { tokio::join!(up, down) }).await {
            Ok((flipped, _)) => flipped,
            Err(_) => false,
        }
    });
    (addr, task)
}

/// Issue 11, 2: one flipped bit of the encrypted stream (in the first records after TLS
/// and admission, and in the middle of the data) fails the transfer on both sides with a readable
/// error; nothing lands at the final path, at most a `.part` and resume state.
#[test]
fn a_flipped_bit_in_the_encrypted_stream_fails_the_transfer_and_writes_no_wrong_file() {
    let lab = Lab::new();
    let (sender_data, receiver_data) = (lab.device("sender"), lab.device("receiver"));
    let src = lab.file("big.bin", 1 << 20, 4);
    let rt = runtime();
    // Past the TLS handshake: with the post-quantum key share the client's handshake
    // flight alone is ~2.5 KB (a flip there only fails the handshake, and the listener
    // rightly keeps waiting).
    for flip_at in [8_000u64, 300_000] {
        let out = lab.path(&format!("out-{flip_at}"));
        let code = "12-flip-test";
        let (receiver, addr) = lab.listen(
            &receiver_data,
            &["receive", "--code", code, "-o", path(&out)],
        );
        let (proxy, flipped) = rt.block_on(start_flipper(addr, flip_at));
        let sender = lab.run(
            &sender_data,
            &[
                "send",
                path(&src),
                "--peer",
                &proxy,
                "--code",
                code,
                "--chunk-size",
                "64K",
            ],
        );
        let receiver = receiver.finish();
        assert!(
            rt.block_on(joined("the proxy", flipped)),
            "the proxy never saw byte {flip_at}: {sender}\n{receiver}"
        );
        for side in [&sender, &receiver] {
            side.assert_failed(&format!("byte {flip_at} was flipped"));
            assert!(side.stderr.contains("error: "), "no error line: {side}");
            assert!(!side.stderr.contains("panicked"), "{side}");
        }
        // rustls: "cannot decrypt peer's message" / "received fatal alert: BadRecordMac".
        let said = receiver.stderr.to_lowercase();
        assert!(
            ["decrypt", "tamper", "corrupt", "authentic", "badrecordmac"]
                .iter()
                .any(|w| said.contains(w)),
            "the receiver must say the data did not authenticate: {receiver}"
        );
        assert!(
            !out.join("big.bin").exists(),
            "a tampered transfer left a file at the final path ({flip_at})"
        );
        if out.exists() {
            let left: Vec<String> = tree_digest(&out).into_keys().collect();
            let own = receiver_files(&out);
            assert!(
                left.iter().all(|f| own.contains(f)),
                "after a flip at {flip_at} the output holds more than partial state: {left:?}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// One-time codes with the binary
// ---------------------------------------------------------------------------------------

/// Issue 11, 3 (happy path): `send FILE` prints `code: N-word-word`; `receive CODE`
/// finds it on the LAN by the nameplate and gets the file.
#[test]
fn cli_a_printed_code_finds_the_sender_through_discovery_and_the_file_arrives() {
    let lab = Lab::new();
    let src = lab.file("holiday.jpg", 700_000, 5);
    let out = lab.path("out");
    let (sender, _, code) = lab.send_waiting(&lab.device("sender"), &src, &[]);
    assert_generated_code(&code);
    let receiver = lab.run(
        &lab.device("receiver"),
        &["receive", &code, "-o", path(&out)],
    );
    let sender = sender.finish();
    receiver.assert_code(0, "receive CODE");
    sender.assert_code(0, "send");
    assert!(
        receiver.stderr.contains("found "),
        "the receiver says whom it found: {receiver}"
    );
    assert_eq!(sha256_file(&out.join("holiday.jpg")), sha256_file(&src));
    assert!(partial_files(&out).is_empty());
}

/// Issue 11, 3: the right nameplate with the wrong words: discovery finds the sender,
/// admission refuses. Both exit 8 and say "wrong code"; nothing is written.
#[test]
fn cli_a_wrong_code_is_refused_on_both_sides_with_exit_8() {
    let lab = Lab::new();
    let src = lab.file("private.txt", 50_000, 6);
    let out = lab.path("out");
    let (sender, _, code) = lab.send_waiting(&lab.device("sender"), &src, &[]);
    let wrong = wrong_code_for(&code);
    let receiver = lab.run(
        &lab.device("receiver"),
        &["receive", &wrong, "-o", path(&out)],
    );
    let sender = sender.finish();
    receiver.assert_code(8, "a wrong code");
    receiver.assert_error_says("wrong code");
    sender.assert_code(8, "a wrong code burns the sender's code and ends it");
    sender.assert_error_says("wrong code");
    assert_nothing_written(&out, "a wrong code");
}

/// The same over QUIC: admission and its code run on the QUIC stream exactly as on the
/// TLS stream (protocol.md §0.4), so a wrong code burns both sides and writes nothing.
#[test]
fn cli_a_wrong_code_over_quic_is_refused_on_both_sides_with_exit_8() {
    let lab = Lab::new();
    let src = lab.file("private.txt", 50_000, 16);
    let out = lab.path("out");
    let (sender, _, code) = lab.send_waiting(&lab.device("sender"), &src, &[]);
    let wrong = wrong_code_for(&code);
    let receiver = lab.run(
        &lab.device("receiver"),
        &["receive", &wrong, "-o", path(&out), "--transport", "quic"],
    );
    let sender = sender.finish();
    receiver.assert_code(8, "a wrong code over QUIC");
    receiver.assert_error_says("wrong code");
    sender.assert_code(
        8,
        "a wrong code over QUIC burns the sender's code and ends it",
    );
    sender.assert_error_says("wrong code");
    assert_nothing_written(&out, "a wrong code over QUIC");
}

/// Issue 11, 3: a code used by a successful session is refused for the next device
/// (the listener keeps going with --keep-listening; the late device exits 8, nothing of
/// it is written).
#[test]
fn cli_a_code_used_by_a_successful_session_is_refused_for_another_device() {
    let lab = Lab::new();
    let first = lab.file("first.bin", 100_000, 7);
    let second = lab.file("second.bin", 100_000, 8);
    let out = lab.path("out");
    let code = "31-used-once";
    let (mut receiver, addr) = lab.listen(
        &lab.device("receiver"),
        &[
            "receive",
            "-v",
            "--keep-listening",
            "--code",
            code,
            "-o",
            path(&out),
        ],
    );
    lab.run(
        &lab.device("first"),
        &["send", path(&first), "--peer", &addr, "--code", code],
    )
    .assert_code(0, "the first device with the code");
    let late = lab.run(
        &lab.device("second"),
        &["send", path(&second), "--peer", &addr, "--code", code],
    );
    late.assert_code(8, "a second device with a used code");
    late.assert_error_says("code");
    let refusal = receiver.wait_line(Pipe::Stderr, "the refusal of the used code", |l| {
        l.contains("dropped a connection")
    });
    assert!(
        refusal.contains("this code was used already"),
        "the receiver must refuse the used code: {refusal}"
    );
    receiver.interrupt();
    receiver.finish().assert_code(130, "Ctrl+C on the listener");
    assert_eq!(sha256_file(&out.join("first.bin")), sha256_file(&first));
    assert!(!out.join("second.bin").exists(), "the late device got in");
    assert!(partial_files(&out).is_empty());
}

/// The device that comes with a code already used should hear that, not that it "did
/// not use the code".
#[test]
fn cli_a_device_with_a_used_code_is_told_the_code_was_used() {
    let lab = Lab::new();
    let first = lab.file("first.bin", 10_000, 9);
    let out = lab.path("out");
    let code = "32-used-once";
    let (receiver, addr) = lab.listen(
        &lab.device("receiver"),
        &[
            "receive",
            "--keep-listening",
            "--code",
            code,
            "-o",
            path(&out),
        ],
    );
    lab.run(
        &lab.device("first"),
        &["send", path(&first), "--peer", &addr, "--code", code],
    )
    .assert_code(0, "the first device with the code");
    let late = lab.run(
        &lab.device("second"),
        &["send", path(&first), "--peer", &addr, "--code", code],
    );
    receiver.interrupt();
    let _ = receiver.finish();
    late.assert_code(8, "a used code");
    late.assert_error_says("used already");
}

/// Issue 11, 3: two senders wait with different codes; a receiver gives sender A's
/// code to sender B. B refuses it (wrong code, exit 8, its code burnt), the receiver
/// exits 8; A is untouched and serves its real receiver.
#[test]
fn cli_a_code_from_another_session_is_refused() {
    let lab = Lab::new();
    let (src_a, src_b) = (lab.file("a.bin", 40_000, 10), lab.file("b.bin", 40_000, 11));
    let out = lab.path("out");
    let (sender_a, addr_a, code_a) = lab.send_waiting(&lab.device("sender-a"), &src_a, &[]);
    let (sender_b, addr_b, code_b) = lab.send_waiting(&lab.device("sender-b"), &src_b, &[]);
    assert_ne!(code_a, code_b);
    let receiver = lab.device("receiver");
    let mixed = lab.run(
        &receiver,
        &["receive", &code_a, "--peer", &addr_b, "-o", path(&out)],
    );
    mixed.assert_code(8, "A's code at B");
    mixed.assert_error_says("wrong code");
    let sender_b = sender_b.finish();
    sender_b.assert_code(8, "B got another session's code");
    sender_b.assert_error_says("wrong code");
    assert_nothing_written(&out, "another session's code");

    let right = lab.run(
        &receiver,
        &["receive", &code_a, "--peer", &addr_a, "-o", path(&out)],
    );
    right.assert_code(0, "A's code at A");
    sender_a.finish().assert_code(0, "sender A");
    assert_eq!(sha256_file(&out.join("a.bin")), sha256_file(&src_a));
    assert!(!out.join("b.bin").exists());
}

/// Issue 11, 3: the sender of a code has gone: `receive CODE` finds nobody on the LAN
/// and says so (nonzero exit, nothing written).
#[test]
fn cli_an_expired_code_finds_nobody() {
    let lab = Lab::new();
    let src = lab.file("gone.bin", 1_000, 12);
    let out = lab.path("out");
    let (sender, _, code) = lab.send_waiting(&lab.device("sender"), &src, &[]);
    sender.interrupt();
    sender.finish().assert_code(130, "the sender, interrupted");
    let nameplate = code.split('-').next().unwrap();
    let receiver = lab.run(
        &lab.device("receiver"),
        &["receive", &code, "-o", path(&out)],
    );
    receiver.assert_failed("nobody waits for this code any more");
    receiver.assert_error_says(&format!("code {nameplate}-"));
    assert!(
        receiver.stderr.contains("discovery failed"),
        "the receiver must say it found nobody: {receiver}"
    );
    assert_nothing_written(&out, "an expired code");
}

/// What a receiver whose code finds nobody is told should be about the sender.
#[test]
fn cli_an_expired_code_is_reported_as_no_sender() {
    let lab = Lab::new();
    let out = lab.path("out");
    let receiver = lab.run(
        &lab.device("receiver"),
        &["receive", "77-nobody-here", "-o", path(&out)],
    );
    receiver.assert_failed("nobody waits for this code");
    assert!(
        !receiver.stderr.contains("no receiver") && !receiver.stderr.contains("receive` running"),
        "a receiver looking for a sender is told about receivers: {receiver}"
    );
    receiver.assert_error_says("sender");
}

// ---------------------------------------------------------------------------------------
// Old and foreign peers
// ---------------------------------------------------------------------------------------

/// Issue 11, 4: a plaintext peer of the previous protocol sends its `Hello` in clear to
/// `receive`: it gets one v1 `Error { VersionMismatch, version: 2 }` frame and the
/// connection ends; the receiver carries on (no error printed) and serves a real sender.
#[test]
fn a_plaintext_v1_peer_is_told_to_update_and_the_receiver_carries_on() {
    let lab = Lab::new();
    let src = lab.file("after.bin", 100_000, 13);
    let out = lab.path("out");
    let code = "41-after-old";
    let (receiver, addr) = lab.listen(
        &lab.device("receiver"),
        &["receive", "--code", code, "-o", path(&out)],
    );
    let rt = runtime();
    let (answer, after) = rt.block_on(async {
        let tcp = TcpStream::connect(&addr).await.unwrap();
        let mut old = Framed::new(tcp, FrameCodec);
        old.send(Message::Hello(Hello {
            magic: MAGIC,
            version: 1,
            device_id: uuid::Uuid::new_v4(),
            device_name: "old laptop".into(),
            capabilities: Capabilities::empty(),
        }))
        .await
        .unwrap();
        tokio::time::timeout(LIMIT, async {
            let answer = old.next().await;
            let after = old.next().await;
            (answer, after)
        })
        .await
        .expect("the receiver neither answered nor closed")
    });
    match answer {
        Some(Ok(Message::Error {
            code,
            version,
            message,
        })) => {
            assert_eq!(code, ErrorCode::VersionMismatch, "{message}");
            assert_eq!(version, PROTOCOL_VERSION);
            assert_eq!(version, 2);
            assert!(message.contains("update"), "{message}");
        }
        other => panic!("the old peer must get a v1 Error frame, got {other:?}"),
    }
    assert!(
        !matches!(after, Some(Ok(_))),
        "the connection must end after the refusal, got {after:?}"
    );

    let sender = lab.run(
        &lab.device("sender"),
        &["send", path(&src), "--peer", &addr, "--code", code],
    );
    sender.assert_code(0, "a real sender after the old peer");
    let receiver = receiver.finish();
    receiver.assert_code(0, "the receiver after the old peer and a real sender");
    let lower = receiver.stderr.to_lowercase();
    assert!(
        !lower.contains("error") && !lower.contains("panicked"),
        "an old peer knocking must not look like a failure: {receiver}"
    );
    assert_eq!(sha256_file(&out.join("after.bin")), sha256_file(&src));
}

/// Issue 11, 4: `send` dialing a plaintext server (an old version, which reads the
/// ClientHello as junk and answers with a v1 frame) fails with exit 4, "the
/// unencrypted protocol of an older p2p-transfer".
#[test]
fn the_client_refuses_a_plaintext_server_with_exit_4() {
    let lab = Lab::new();
    let src = lab.file("x.bin", 1_000, 14);
    let rt = runtime();
    let listener = rt.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let old_server = rt.spawn(async move {
        let (mut tcp, _) = listener.accept().await.unwrap();
        let mut first = vec![0u8; 4096];
        let n = tcp.read(&mut first).await.unwrap();
        let mut framed = Framed::new(tcp, FrameCodec);
        framed
            .send(Message::Error {
                code: ErrorCode::Protocol,
                message: "expected a Hello".into(),
                version: 1,
            })
            .await
            .unwrap();
        // Until the client hangs up.
        while let Some(Ok(_)) = framed.next().await {}
        first[..n].to_vec()
    });
    let sender = lab.run(
        &lab.device("sender"),
        &["send", path(&src), "--peer", &addr],
    );
    let received = rt.block_on(joined("the plaintext server", old_server));
    assert_eq!(
        received.first(),
        Some(&0x16),
        "the client must open with a TLS handshake record"
    );
    sender.assert_code(4, "a plaintext server");
    sender.assert_error_says("the unencrypted protocol of an older p2p-transfer (version 1)");
}

/// A copy of `base` offering (client) or accepting (server) `alpn` instead.
fn configs_with_alpn(base: &TlsConfigs, alpn: &[u8]) -> TlsConfigs {
    let mut client = (*base.client).clone();
    client.alpn_protocols = vec![alpn.to_vec()];
    let mut server = (*base.server).clone();
    server.alpn_protocols = vec![alpn.to_vec()];
    TlsConfigs {
        client: std::sync::Arc::new(client),
        server: std::sync::Arc::new(server),
    }
}

/// Issue 11, 4: TLS with another ALPN (`p2p-transfer/1`) is refused both ways: a client
/// offering it is refused by `receive` (which carries on), and `send` refuses a server
/// that only speaks it (exit 4).
#[test]
fn a_tls_peer_with_another_alpn_is_refused_both_ways() {
    let lab = Lab::new();
    let src = lab.file("alpn.bin", 20_000, 15);
    let out = lab.path("out");
    let code = "43-alpn-check";
    let rt = runtime();
    let identity = Identity::generate_shared();
    let foreign = configs_with_alpn(&TlsConfigs::new(&identity).unwrap(), b"p2p-transfer/1");

    // A client speaking p2p-transfer/1 over TLS, to a receiver.
    let (receiver, addr) = lab.listen(
        &lab.device("receiver"),
        &["receive", "--code", code, "-o", path(&out)],
    );
    let refused = rt.block_on(async {
        let tcp = TcpStream::connect(&addr).await.unwrap();
        tokio::time::timeout(LIMIT, tls::client(tcp, &foreign, identity.fingerprint()))
            .await
            .expect("the TLS handshake hung")
            .map(|_| ())
    });
    match refused {
        Err(SecurityError::NotAPeer(why)) => assert!(why.contains("ALPN"), "{why}"),
        other => panic!("a p2p-transfer/1 client must be refused (NotAPeer), got {other:?}"),
    }
    let sender = lab.run(
        &lab.device("sender"),
        &["send", path(&src), "--peer", &addr, "--code", code],
    );
    sender.assert_code(0, "a real sender after the foreign TLS client");
    receiver
        .finish()
        .assert_code(0, "the receiver after the foreign client and a real sender");
    assert_eq!(sha256_file(&out.join("alpn.bin")), sha256_file(&src));

    // A server speaking p2p-transfer/1 over TLS, dialed by a sender.
    let listener = rt.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
    let foreign_addr = listener.local_addr().unwrap().to_string();
    let fingerprint = identity.fingerprint();
    let server = rt.spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        tls::server_tls(tcp, &foreign, fingerprint)
            .await
            .map(|_| ())
    });
    let sender = lab.run(
        &lab.device("sender"),
        &["send", path(&src), "--peer", &foreign_addr, "--code", code],
    );
    let server = rt.block_on(joined("the foreign TLS server", server));
    assert!(
        server.is_err(),
        "the foreign server must not complete a handshake"
    );
    sender.assert_code(4, "a server speaking p2p-transfer/1");
    sender.assert_error_says("not a p2p-transfer peer, or an old version");
    sender.assert_error_says("ALPN");
}

/// Issue 11, 4: a beacon announces nameplate N and somebody else's device id; the
/// listener behind it knows the code but holds another key. `receive N-…` pins the
/// announced id, refuses the key it is shown (exit 8, NotPinned) and writes nothing.
#[test]
fn a_peer_whose_key_does_not_match_its_beacon_is_refused() {
    let lab = Lab::new();
    let out = lab.path("out");
    let rt = runtime();
    let code = code();
    let impostor = Identity::generate_shared();
    let announced = Identity::generate_shared().device_id();
    let listener = rt.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
    let port = listener.local_addr().unwrap().port();
    let security = security(&impostor, Admission::default().with_code(code.clone()));
    let beacon = Beacon::new(announced, "impostor", port).with_nameplate(Some(code.nameplate()));
    let config = lab.discovery_config();
    let announcer = rt.block_on(async { Announcer::start(beacon, &config).unwrap() });
    let server = rt.spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        net::secure_server(tcp, &security)
            .await
            .map(|(_, peer)| peer)
    });

    let receiver = lab.run(
        &lab.device("receiver"),
        &["receive", &code.to_string(), "-o", path(&out)],
    );
    let server = rt.block_on(joined("the impostor", server));
    drop(announcer);
    receiver.assert_code(8, "a key that is not the announced one");
    receiver.assert_error_says(&format!(
        "the peer is device {}, not the expected {announced}",
        impostor.device_id()
    ));
    assert!(
        matches!(server, Err(SecurityError::RefusedByPeer(_))),
        "the impostor must be refused by the receiver, got {server:?}"
    );
    assert_nothing_written(&out, "an impostor behind a beacon");
}

// ---------------------------------------------------------------------------------------
// Trusted devices
// ---------------------------------------------------------------------------------------

/// Issue 11, 5: a session with a code and `--remember` on both sides makes each trust
/// the other (`trust list` shows the id `p2p-transfer id` prints on the other side);
/// later transfers need no code, in both roles; after `trust remove` a transfer without
/// a code fails with exit 8 and says how to pair.
#[test]
fn cli_remember_then_transfer_without_a_code_then_remove() {
    let lab = Lab::new();
    let (sender_data, receiver_data) = (lab.device("sender"), lab.device("receiver"));
    let (sender_id, receiver_id) = (lab.device_id(&sender_data), lab.device_id(&receiver_data));
    let list = |data: &Path| {
        let listed = lab.run(data, &["trust", "list"]);
        listed.assert_code(0, "trust list");
        listed
    };
    assert!(!list(&sender_data).stdout.contains(&receiver_id));
    assert!(!list(&receiver_data).stdout.contains(&sender_id));

    // Pairing.
    let code = "51-pair-remember";
    let first = lab.file("first.bin", 100_000, 16);
    let out = lab.path("out-1");
    let (receiver, addr) = lab.listen(
        &receiver_data,
        &["receive", "--code", code, "--remember", "-o", path(&out)],
    );
    let sender = lab.run(
        &sender_data,
        &[
            "send",
            path(&first),
            "--peer",
            &addr,
            "--code",
            code,
            "--remember",
        ],
    );
    let receiver = receiver.finish();
    sender.assert_code(0, "send --code --remember");
    receiver.assert_code(0, "receive --code --remember");
    for side in [&sender, &receiver] {
        assert!(side.stdout.contains("remembered"), "{side}");
    }
    assert_eq!(sha256_file(&out.join("first.bin")), sha256_file(&first));
    let listed = list(&sender_data);
    assert!(
        listed.stdout.contains(&receiver_id),
        "the sender trusts the receiver: {listed}"
    );
    let listed = list(&receiver_data);
    assert!(
        listed.stdout.contains(&sender_id),
        "the receiver trusts the sender: {listed}"
    );

    // No code: the receiver listens, the sender dials.
    let second = lab.file("second.bin", 100_000, 17);
    let out = lab.path("out-2");
    let (receiver, addr) = lab.listen(&receiver_data, &["receive", "-o", path(&out)]);
    let sender = lab.run(&sender_data, &["send", path(&second), "--peer", &addr]);
    sender.assert_code(0, "a trusted sender without a code");
    receiver
        .finish()
        .assert_code(0, "a trusting receiver without a code");
    assert_eq!(sha256_file(&out.join("second.bin")), sha256_file(&second));

    // No code, the other way round: the sender waits (printing a code nobody needs).
    let third = lab.file("third.bin", 100_000, 18);
    let out = lab.path("out-3");
    let (sender, addr, _) = lab.send_waiting(&sender_data, &third, &[]);
    let receiver = lab.run(
        &receiver_data,
        &["receive", "--peer", &addr, "-o", path(&out)],
    );
    receiver.assert_code(0, "a trusting receiver dialing without a code");
    sender
        .finish()
        .assert_code(0, "a trusted sender waiting with a code");
    assert_eq!(sha256_file(&out.join("third.bin")), sha256_file(&third));

    // Removed: no way in without a code.
    let removed = lab.run(&receiver_data, &["trust", "remove", &sender_id]);
    removed.assert_code(0, "trust remove");
    assert!(
        !list(&receiver_data).stdout.contains(&sender_id),
        "removed, yet listed"
    );
    let fourth = lab.file("fourth.bin", 100_000, 19);
    let out = lab.path("out-4");
    let (mut receiver, addr) = lab.listen(&receiver_data, &["receive", "-v", "-o", path(&out)]);
    let sender = lab.run(&sender_data, &["send", path(&fourth), "--peer", &addr]);
    sender.assert_code(8, "a device no longer trusted, without a code");
    // (A waiting receiver prints a code for new senders: the refusal names it.)
    sender.assert_error_says("no one-time code came with the connection");
    let refusal = receiver.wait_line(Pipe::Stderr, "the refusal of the removed device", |l| {
        l.contains("dropped a connection")
    });
    assert!(
        refusal.contains("no one-time code came with the connection"),
        "{refusal}"
    );
    receiver.interrupt();
    receiver
        .finish()
        .assert_code(130, "the receiver, interrupted");
    assert_nothing_written(&out, "a device no longer trusted");
}

/// Issue 11, 5: a damaged trusted-devices.json is reported by every command that reads
/// it (nonzero exit, "damaged"), and left exactly as it was — `trust add` included.
#[test]
fn cli_a_damaged_trust_store_is_reported_and_left_alone() {
    let lab = Lab::new();
    let data = lab.device("damaged");
    let other = lab.device_id(&lab.device("other"));
    let src = lab.file("x.bin", 1_000, 20);
    let out = lab.path("out");
    let file = data.join(p2p_core::net::trust::TRUST_FILE);
    for damage in [
        &b"{\"version\":1,\"devices\":[{"[..],
        &b"{\"version\":99,\"devices\":[]}"[..],
        &b"\x00\xff not json"[..],
    ] {
        std::fs::create_dir_all(&data).unwrap();
        std::fs::write(&file, damage).unwrap();
        let commands: [&[&str]; 6] = [
            &["trust", "list"],
            &["trust", "add", &other],
            &["trust", "remove", &other],
            &["trust", "rename", &other, "x"],
            &["send", path(&src), "--peer", "127.0.0.1:9"],
            &[
                "receive",
                "-o",
                path(&out),
                "--port",
                "0",
                "--bind",
                "127.0.0.1",
            ],
        ];
        for args in commands {
            let ran = lab.run(&data, args);
            ran.assert_failed("a damaged trust store");
            ran.assert_error_says("damaged");
            assert!(
                !ran.stderr.contains("listening on"),
                "it must not start without its trust store: {ran}"
            );
            assert_eq!(
                std::fs::read(&file).unwrap(),
                damage,
                "the damaged trust store was changed by {ran}"
            );
        }
    }
    assert_nothing_written(&out, "no command ran");
}

/// Issue 11, 5: a damaged device-key.pem is reported (nonzero exit, "damaged") and
/// never replaced by a new key.
#[test]
fn cli_a_damaged_device_key_is_reported_and_left_alone() {
    let lab = Lab::new();
    let data = lab.device("damaged");
    let src = lab.file("x.bin", 1_000, 21);
    let out = lab.path("out");
    let file = data.join(p2p_core::net::identity::KEY_FILE);
    for damage in [
        &b"-----BEGIN PRIVATE KEY-----\ngarbage\n"[..],
        &b"not a key at all"[..],
        &b""[..],
    ] {
        std::fs::create_dir_all(&data).unwrap();
        std::fs::write(&file, damage).unwrap();
        let commands: [&[&str]; 3] = [
            &["id"],
            &["send", path(&src), "--peer", "127.0.0.1:9"],
            &[
                "receive",
                "-o",
                path(&out),
                "--port",
                "0",
                "--bind",
                "127.0.0.1",
            ],
        ];
        for args in commands {
            let ran = lab.run(&data, args);
            ran.assert_failed("a damaged device key");
            ran.assert_error_says("damaged");
            assert_eq!(
                std::fs::read(&file).unwrap(),
                damage,
                "the damaged device key was changed by {ran}"
            );
        }
    }
    assert_nothing_written(&out, "no command ran");
}

// ---------------------------------------------------------------------------------------
// Codes in-process: used, reused by the same key, refused to another
// ---------------------------------------------------------------------------------------

/// A listener's code, once used, lets the device that used it reconnect without a code
/// and refuses any other device (`CodeUsed` on the listener).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_used_code_readmits_its_device_and_refuses_others() {
    let listener_id = Identity::generate_shared();
    let (first, second) = (Identity::generate_shared(), Identity::generate_shared());
    let shared = code();
    let listener = security(&listener_id, Admission::default().with_code(shared.clone()));

    let first = security(&first, Admission::default().with_code(shared.clone()));
    let used = admit(&first, &listener, false).await;
    assert_eq!(
        used.client.expect("the first device").admitted,
        Admitted::Code
    );
    assert_eq!(used.server.expect("the listener").admitted, Admitted::Code);
    assert!(!listener.admission.has_code());

    // The same device again, its code used too (a reconnection).
    assert!(!first.admission.has_code());
    let back = admit(&first, &listener, false).await;
    assert!(back.client.is_ok(), "{:?}", back.client);
    assert_eq!(
        back.server.expect("the reconnection").admitted,
        Admitted::Code
    );

    // Another key with the same code.
    let other = admit(
        &security(&second, Admission::default().with_code(shared)),
        &listener,
        false,
    )
    .await;
    assert!(
        matches!(other.server, Err(SecurityError::CodeUsed)),
        "the listener must refuse a used code, got {:?}",
        other.server
    );
    assert!(
        other.client.is_err(),
        "the second device must not get in: {:?}",
        other.client
    );
}
