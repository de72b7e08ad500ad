//! The daemon over its real socket, with a fake [`Shares`] that records every call.

use std::collections::HashSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use p2p_core::daemon::{
    registry, socket_path, Client, Daemon, DaemonError, ShareRecord, ShareStats, Shares,
};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot};

const WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Call {
    Start(String),
    Stop(String),
    Shutdown,
}

/// Records calls (and sends each on a channel, to wait for), fails `start` for the
/// roots in `failing`.
#[derive(Clone)]
struct Fake {
    calls: Arc<Mutex<Vec<Call>>>,
    events: mpsc::UnboundedSender<Call>,
    failing: Arc<HashSet<String>>,
}

impl Fake {
    fn new(failing: &[&str]) -> (Self, mpsc::UnboundedReceiver<Call>) {
        let (events, rx) = mpsc::unbounded_channel();
        let fake = Self {
            calls: Arc::default(),
            events,
            failing: Arc::new(failing.iter().map(|s| s.to_string()).collect()),
        };
        (fake, rx)
    }

    fn record(&self, call: Call) {
        self.calls.lock().unwrap().push(call.clone());
        let _ = self.events.send(call);
    }

    fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }
}

impl Shares for Fake {
    async fn start(&self, record: ShareRecord) -> Result<(), String> {
        let root = record.root.clone();
        self.record(Call::Start(root.clone()));
        if self.failing.contains(&root) {
            Err("the tracker is unreachable".into())
        } else {
            Ok(())
        }
    }

    async fn stop(&self, root: &str) {
        self.record(Call::Stop(root.to_owned()));
    }

    fn stats(&self, root: &str) -> ShareStats {
        ShareStats {
            peers: 2,
            uploaded: root.len() as u64,
            state: "serving".into(),
        }
    }

    async fn shutdown(&self) {
        self.record(Call::Shutdown);
    }
}

fn record(hex: char, name: &str) -> ShareRecord {
    ShareRecord {
        root: std::iter::repeat_n(hex, 64).collect(),
        name: name.into(),
        share_file: PathBuf::from(format!("/tmp/{name}.p2p")),
        sources: vec![PathBuf::from(format!("/home/u/{name}"))],
        rendezvous: "tracker.example:4000".into(),
        added_unix: 1_700_000_000,
        max_upload: Some(10 << 20),
    }
}

/// A daemon serving in a task, and the switch that stops it as SIGTERM would.
struct Running {
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), DaemonError>>,
}

async fn spawn(dir: &Path, fake: Fake) -> Running {
    let daemon = Daemon::start(dir, fake).await.expect("daemon starts");
    assert_eq!(daemon.socket(), socket_path(dir));
    let (stop, stopped) = oneshot::channel();
    let task = tokio::spawn(daemon.serve(async {
        let _ = stopped.await;
    }));
    Running {
        stop: Some(stop),
        task,
    }
}

impl Running {
    async fn terminate(mut self) -> Result<(), DaemonError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.finished().await
    }

    async fn finished(self) -> Result<(), DaemonError> {
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("the daemon stops in time")
            .expect("the daemon task does not panic")
    }
}

async fn client(dir: &Path) -> Client {
    Client::connect(dir).await.expect("the daemon answers")
}

async fn next(events: &mut mpsc::UnboundedReceiver<Call>) -> Call {
    tokio::time::timeout(WAIT, events.recv())
        .await
        .expect("a call in time")
        .expect("the fake lives")
}

#[tokio::test]
async fn add_list_remove_round_trip_persists_every_change() {
    let dir = tempfile::tempdir().unwrap();
    let (fake, _events) = Fake::new(&[]);
    let daemon = spawn(dir.path(), fake.clone()).await;
    let mut c = client(dir.path()).await;

    let pong = c.ping().await.unwrap();
    assert_eq!(pong.pid, std::process::id());
    assert_eq!(pong.version, env!("CARGO_PKG_VERSION"));
    assert!(c.list().await.unwrap().is_empty());

    let a = record('a', "photos");
    let b = record('b', "notes");
    assert!(!c.add(&a).await.unwrap(), "a new root is added");
    assert!(!c.add(&b).await.unwrap());
    let listed = c.list().await.unwrap();
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0].record, a);
    assert_eq!(listed[1].record, b);
    assert_eq!(listed[0].stats.state, "serving");
    assert_eq!(listed[0].stats.peers, 2);

    // The same root again: replaced, not duplicated.
    let renamed = ShareRecord {
        name: "holiday photos".into(),
        ..a.clone()
    };
    assert!(c.add(&renamed).await.unwrap(), "the same root replaces");
    let listed = c.list().await.unwrap();
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0].record.name, "holiday photos");
    let on_disk = registry::load(dir.path()).unwrap();
    assert_eq!(on_disk.records, vec![renamed.clone(), b.clone()]);

    // An invalid record is refused with the reason.
    let bad = ShareRecord {
        root: "ABC".into(),
        ..b.clone()
    };
    match c.add(&bad).await {
        Err(DaemonError::Refused(e)) => assert!(e.contains("64 lowercase hex"), "{e}"),
        other => panic!("expected a refusal, got {other:?}"),
    }

    // Remove by name, then by root prefix (any case).
    assert_eq!(c.remove("notes").await.unwrap(), b);
    assert_eq!(c.remove("AAAA").await.unwrap(), renamed);
    assert!(c.list().await.unwrap().is_empty());
    assert!(registry::load(dir.path()).unwrap().records.is_empty());
    match c.remove("notes").await {
        Err(DaemonError::Refused(e)) => assert!(e.contains("no share is named"), "{e}"),
        other => panic!("expected no match, got {other:?}"),
    }

    let a = Call::Start("a".repeat(64));
    let b = Call::Start("b".repeat(64));
    assert_eq!(
        fake.calls(),
        vec![
            a.clone(),
            b,
            Call::Stop("a".repeat(64)),
            a,
            Call::Stop("b".repeat(64)),
            Call::Stop("a".repeat(64)),
        ]
    );
    daemon.terminate().await.unwrap();
}

#[tokio::test]
async fn an_ambiguous_prefix_names_the_candidates() {
    let dir = tempfile::tempdir().unwrap();
    let (fake, _events) = Fake::new(&[]);
    let daemon = spawn(dir.path(), fake).await;
    let mut c = client(dir.path()).await;
    let mut one = record('a', "one");
    one.root.replace_range(63.., "0");
    let two = record('a', "two");
    c.add(&one).await.unwrap();
    c.add(&two).await.unwrap();
    match c.remove("aaaa").await {
        Err(DaemonError::Refused(e)) => {
            assert!(e.contains("matches 2 shares"), "{e}");
            assert!(e.contains("one (aaaaaaaaaaaa)") && e.contains("two"), "{e}");
        }
        other => panic!("expected ambiguity, got {other:?}"),
    }
    // The whole root is never ambiguous.
    assert_eq!(c.remove(&two.root).await.unwrap(), two);
    assert_eq!(c.list().await.unwrap().len(), 1);
    daemon.terminate().await.unwrap();
}

#[tokio::test]
async fn a_restart_starts_every_persisted_share_and_a_failing_one_shows_its_error() {
    let dir = tempfile::tempdir().unwrap();
    let (fake, _events) = Fake::new(&[]);
    let daemon = spawn(dir.path(), fake).await;
    let mut c = client(dir.path()).await;
    let (a, b) = (record('a', "photos"), record('b', "notes"));
    c.add(&a).await.unwrap();
    c.add(&b).await.unwrap();
    c.stop().await.unwrap();
    daemon.finished().await.unwrap();

    // Again on the same folder; the tracker of `b` is unreachable now.
    let (fake, mut events) = Fake::new(&["b".repeat(64).as_str()]);
    let daemon = spawn(dir.path(), fake.clone()).await;
    assert_eq!(next(&mut events).await, Call::Start(a.root.clone()));
    assert_eq!(next(&mut events).await, Call::Start(b.root.clone()));
    let mut c = client(dir.path()).await;
    let listed = c.list().await.unwrap();
    assert_eq!(listed.len(), 2, "the failing share keeps its record");
    assert_eq!(listed[0].record, a);
    assert_eq!(listed[0].stats.state, "serving");
    assert_eq!(listed[1].record, b);
    assert_eq!(listed[1].stats.state, "the tracker is unreachable");
    assert_eq!(registry::load(dir.path()).unwrap().records.len(), 2);
    daemon.terminate().await.unwrap();
}

#[tokio::test]
async fn the_socket_is_the_owners_only_and_a_second_daemon_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let (fake, _events) = Fake::new(&[]);
    let daemon = spawn(dir.path(), fake.clone()).await;
    let mode = std::fs::metadata(socket_path(dir.path()))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "socket mode {mode:o}");
    // The private folder it was bound in is gone.
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".daemon"))
        .collect();
    assert!(names.is_empty(), "{names:?}");

    let (second, _) = Fake::new(&[]);
    match Daemon::start(dir.path(), second).await {
        Err(e @ DaemonError::AlreadyRunning { .. }) => {
            let text = e.to_string();
            let expected = format!("a daemon already runs (pid {})", std::process::id());
            assert!(text.contains(&expected), "{text}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    // The first one still serves.
    client(dir.path()).await.ping().await.unwrap();
    daemon.terminate().await.unwrap();
}

#[tokio::test]
async fn a_stale_socket_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let socket = socket_path(dir.path());
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    assert!(socket.exists(), "a socket file nobody listens on");
    match Client::connect(dir.path()).await {
        Err(DaemonError::NotRunning { .. }) => {}
        other => panic!("a stale socket is no daemon: {other:?}"),
    }
    let (fake, _events) = Fake::new(&[]);
    let daemon = spawn(dir.path(), fake).await;
    client(dir.path()).await.ping().await.unwrap();
    daemon.terminate().await.unwrap();
}

/// Sends `line` raw and reads one response line (`None`: closed without one).
async fn raw(stream: &mut BufReader<UnixStream>, line: &[u8]) -> Option<serde_json::Value> {
    stream.get_mut().write_all(line).await.unwrap();
    let mut answer = String::new();
    let read = tokio::time::timeout(WAIT, stream.read_line(&mut answer))
        .await
        .expect("an answer in time")
        .unwrap();
    (read > 0).then(|| serde_json::from_str(&answer).unwrap())
}

#[tokio::test]
async fn bad_requests_get_errors_and_an_oversized_line_closes_only_its_connection() {
    let dir = tempfile::tempdir().unwrap();
    let (fake, _events) = Fake::new(&[]);
    let daemon = spawn(dir.path(), fake).await;
    let socket = socket_path(dir.path());
    let mut conn = BufReader::new(UnixStream::connect(&socket).await.unwrap());

    // Malformed JSON and an unknown op: an error each, the connection stays usable.
    let answer = raw(&mut conn, b"{nope\n").await.unwrap();
    assert_eq!(answer["ok"], false);
    assert!(answer["error"].as_str().unwrap().contains("not JSON"));
    let answer = raw(&mut conn, b"{\"op\":\"fly\"}\n").await.unwrap();
    assert!(answer["error"].as_str().unwrap().contains("unknown op"));
    let answer = raw(&mut conn, b"{\"op\":\"ping\"}\n").await.unwrap();
    assert_eq!(answer["ok"], true);
    assert_eq!(answer["pid"], std::process::id());

    // 64 KiB and more without a newline: an error, then the connection closes.
    let mut big = vec![b' '; 64 * 1024 + 1];
    big.push(b'\n');
    let answer = raw(&mut conn, &big).await.unwrap();
    assert!(answer["error"]
        .as_str()
        .unwrap()
        .contains("longer than 65536"));
    let mut rest = String::new();
    let closed = tokio::time::timeout(WAIT, conn.read_line(&mut rest)).await;
    assert!(matches!(closed, Ok(Ok(0)) | Ok(Err(_))), "{closed:?}");

    // Others are served as before.
    client(dir.path()).await.ping().await.unwrap();
    daemon.terminate().await.unwrap();
}

#[tokio::test]
async fn connections_over_the_limit_are_told_so() {
    let dir = tempfile::tempdir().unwrap();
    let (fake, _events) = Fake::new(&[]);
    let daemon = spawn(dir.path(), fake).await;
    let mut held = Vec::new();
    for _ in 0..p2p_core::daemon::server::MAX_CONNECTIONS {
        let mut c = client(dir.path()).await;
        c.ping().await.unwrap();
        held.push(c);
    }
    let mut extra = BufReader::new(UnixStream::connect(socket_path(dir.path())).await.unwrap());
    let mut line = String::new();
    tokio::time::timeout(WAIT, extra.read_line(&mut line))
        .await
        .unwrap()
        .unwrap();
    assert!(line.contains("control connections already"), "{line}");
    drop(held.pop());
    // A freed place is taken again (the daemon notices the close on its own time).
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let mut c = client(dir.path()).await;
        if c.ping().await.is_ok() {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no place freed");
        tokio::task::yield_now().await;
    }
    daemon.terminate().await.unwrap();
}

#[tokio::test]
async fn a_corrupt_registry_is_kept_aside_and_the_daemon_starts_empty() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(registry::REGISTRY_FILE);
    std::fs::write(&path, b"{\"version\":1,\"shares\":[{\"root\":").unwrap();
    let (fake, _events) = Fake::new(&[]);
    let daemon = spawn(dir.path(), fake).await;
    let mut c = client(dir.path()).await;
    assert!(c.list().await.unwrap().is_empty());
    assert!(!path.exists());
    assert_eq!(
        std::fs::read(dir.path().join(registry::CORRUPT_FILE)).unwrap(),
        b"{\"version\":1,\"shares\":[{\"root\":"
    );
    // It works as usual from there.
    c.add(&record('c', "c")).await.unwrap();
    assert_eq!(registry::load(dir.path()).unwrap().records.len(), 1);
    daemon.terminate().await.unwrap();
}

#[tokio::test]
async fn an_invalid_record_in_the_registry_counts_as_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let mut bad = record('d', "d");
    bad.share_file = PathBuf::from("relative.p2p");
    registry::save(dir.path(), &[bad]).unwrap();
    let loaded = registry::load(dir.path()).unwrap();
    assert!(loaded.records.is_empty());
    let (reason, aside) = loaded.corrupt.unwrap();
    assert!(reason.contains("not an absolute path"), "{reason}");
    assert!(aside.exists());
}

#[tokio::test]
async fn stopping_shuts_the_shares_down_and_removes_the_socket() {
    // As SIGTERM does: the stop future completes.
    let dir = tempfile::tempdir().unwrap();
    let (fake, _events) = Fake::new(&[]);
    let daemon = spawn(dir.path(), fake.clone()).await;
    client(dir.path())
        .await
        .add(&record('e', "e"))
        .await
        .unwrap();
    daemon.terminate().await.unwrap();
    assert!(!socket_path(dir.path()).exists());
    assert_eq!(fake.calls().last(), Some(&Call::Shutdown));
    match Client::connect(dir.path()).await {
        Err(e @ DaemonError::NotRunning { .. }) => {
            assert!(e.to_string().contains("p2p-transfer daemon"), "{e}")
        }
        other => panic!("expected no daemon, got {other:?}"),
    }

    // The `stop` request does the same, after answering.
    let (fake, mut events) = Fake::new(&[]);
    let daemon = spawn(dir.path(), fake.clone()).await;
    assert_eq!(next(&mut events).await, Call::Start("e".repeat(64)));
    client(dir.path()).await.stop().await.unwrap();
    daemon.finished().await.unwrap();
    assert!(!socket_path(dir.path()).exists());
    assert_eq!(
        fake.calls(),
        vec![Call::Start("e".repeat(64)), Call::Shutdown]
    );
}
