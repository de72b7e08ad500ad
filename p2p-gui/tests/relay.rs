//! The relay-to-direct move as the window shows it: a send through a rendezvous (in
//! this process) with a real coturn as the relay starts on the relay and moves to a
//! direct path mid-transfer; the status line and the progress headline follow, and
//! the record lists both paths. Its own test binary: the checks are held back by an
//! environment variable (`P2P_DIRECT_AFTER_MS`, read by p2p-core), which would reach
//! every rendezvous test of a shared binary.
//!
//! Without coturn (`turnserver`) the test is skipped with a note, except under CI
//! (`CI=true`), where that is a failure: `.ci/run` installs it.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use iced::futures::stream::{SelectAll, StreamExt};
use iced::Task;
use iced_test::futures::BoxStream;
use iced_test::runtime::{task, Action};
use iced_test::Simulator;
use p2p_core::history::Status;
use p2p_core::net::ice::PathKind;
use p2p_core::net::traversal::{Rendezvous, DIRECT_AFTER_ENV};
use p2p_core::net::{Admission, Code, Endpoint, Identity, Security};
use p2p_core::rendezvous::server::{Limits, Server, ServerConfig, TurnSecret};
use p2p_core::{NoEvents, P2PSession, ReceiveOptions, SessionOptions};
use p2p_gui::progress::TransferState;
use p2p_gui::{App, Launch, Message};

mod common;
use common::{data, sha256};

const WAIT: Duration = Duration::from_secs(60);
const TURN_SECRET: &str = "gui-relay-test-secret";

/// Kills the child when the test ends, however it ends.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// coturn on 127.0.0.1 with the `use-auth-secret` scheme, relaying to loopback peers
/// (as tests/rendezvous.rs starts it); its `host:port`. `None` when not installed.
fn coturn() -> Option<(Running, String)> {
    let found = Command::new("turnserver")
        .arg("--help")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !found {
        assert!(
            std::env::var("CI").map_or(true, |v| v != "true"),
            "CI=true but turnserver (coturn) is missing: .ci/run installs it"
        );
        eprintln!("skipping: turnserver (coturn) is not installed");
        return None;
    }
    for _ in 0..10 {
        let port = {
            let probe = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
            probe.local_addr().expect("addr").port()
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let mut child = Command::new("turnserver")
            .args(["-n", "--no-cli", "--no-tls", "--no-dtls", "--simple-log"])
            .args(["--listening-ip", "127.0.0.1", "--relay-ip", "127.0.0.1"])
            .args(["--listening-port", &port.to_string()])
            .args(["--min-port", "40000", "--max-port", "60000"])
            .args(["--use-auth-secret", "--static-auth-secret", TURN_SECRET])
            .args(["--realm", "p2p.test", "--allow-loopback-peers"])
            .args(["--no-multicast-peers", "--log-file", "stdout"])
            .arg("--pidfile")
            .arg(dir.path().join("turn.pid"))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start turnserver");
        let stdout = child.stdout.take().expect("stdout");
        let mut ready = false;
        let mut lines = BufReader::new(stdout).lines();
        for line in lines.by_ref() {
            let line = line.unwrap_or_default();
            if line.contains("Total General servers")
                || line.contains("IPv4. TCP listener opened on") && line.contains(&port.to_string())
            {
                ready = true;
                break;
            }
            if line.contains("Cannot bind") || line.contains("cannot bind") {
                break;
            }
        }
        std::thread::spawn(move || for _ in lines {});
        if ready {
            return Some((Running(child), format!("127.0.0.1:{port}")));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    panic!("coturn did not start on a free port in 10 tries");
}

/// The app plus the tasks its `update` started (tests/gui.rs has the full harness).
struct Harness {
    app: App,
    tasks: SelectAll<BoxStream<Action<Message>>>,
}

impl Harness {
    fn new(launch: Launch) -> Self {
        let (app, boot) = App::new(launch);
        let mut harness = Self {
            app,
            tasks: SelectAll::new(),
        };
        harness.spawn(boot);
        harness
    }

    fn spawn(&mut self, task: Task<Message>) {
        if let Some(stream) = task::into_stream(task) {
            self.tasks.push(stream);
        }
    }

    fn update(&mut self, message: Message) {
        let task = self.app.update(message);
        self.spawn(task);
    }

    fn click(&mut self, label: &str) {
        let messages: Vec<Message> = {
            let mut ui = Simulator::with_size(
                iced::Settings {
                    default_font: p2p_gui::FONT,
                    ..iced::Settings::default()
                },
                iced::window::Settings::default().size,
                self.app.view(),
            );
            if let Err(e) = ui.click(label) {
                panic!("cannot click {label:?}: {e}");
            }
            ui.into_messages().collect()
        };
        for message in messages {
            self.update(message);
        }
    }

    /// Whether the window shows a text that contains `part`.
    fn shows_part(&self, part: &str) -> bool {
        let mut ui = Simulator::with_size(
            iced::Settings {
                default_font: p2p_gui::FONT,
                ..iced::Settings::default()
            },
            iced::window::Settings::default().size,
            self.app.view(),
        );
        let selector = |candidate: iced_test::selector::Candidate<'_>| match candidate {
            iced_test::selector::Candidate::Text { content, .. } if content.contains(part) => {
                Some(())
            }
            _ => None,
        };
        ui.find(selector).is_ok()
    }

    /// Runs the started tasks until every one has ended.
    async fn settle(&mut self) {
        let run = async {
            while let Some(action) = self.tasks.next().await {
                if let Action::Output(message) = action {
                    self.update(message);
                }
            }
        };
        if tokio::time::timeout(WAIT, run).await.is_err() {
            panic!("tasks still running after {WAIT:?}");
        }
    }

    async fn run_until(&mut self, what: &str, done: impl Fn(&App) -> bool) {
        let run = async {
            while !done(&self.app) {
                match self.tasks.next().await {
                    Some(Action::Output(message)) => self.update(message),
                    Some(_) => {}
                    None => panic!("no task is left to run while waiting for {what}"),
                }
            }
        };
        if tokio::time::timeout(WAIT, run).await.is_err() {
            panic!("timed out waiting for {what}");
        }
    }
}

fn path_now(app: &App) -> Option<PathKind> {
    app.peer().and_then(|p| p.path).map(|p| p.kind)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_that_starts_on_the_relay_shows_its_move_to_a_direct_path() {
    let Some((_turn, turn)) = coturn() else {
        return;
    };
    // Both sides (both in this process) start on the relay and begin the checks 1 s
    // later: at 2 MiB/s the transfer still runs when the direct path comes up.
    std::env::set_var(DIRECT_AFTER_ENV, "1000");
    let server = Server::bind(ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        turn: Some(TurnSecret::new(vec![turn], TURN_SECRET.to_owned())),
        limits: Limits::default(),
    })
    .await
    .unwrap();
    let server_addr = server.local_addr().to_string();
    tokio::spawn(server.run());

    let dir = tempfile::tempdir().unwrap();
    let (inbox, config) = (dir.path().join("inbox"), dir.path().join("config"));
    let file = dir.path().join("movie.bin");
    std::fs::write(&file, data(6 << 20, 31)).unwrap();
    p2p_core::settings::Settings {
        bandwidth_limit: 2 << 20,
        ..Default::default()
    }
    .save(&config)
    .unwrap();
    let mut h = Harness::new(Launch {
        config_dir: Some(config.clone()),
        data_dir: Some(config.join("data")),
        rendezvous: Some(server_addr.clone()),
        ..Launch::default()
    });
    h.click("Send");
    h.update(Message::Picked(vec![file.clone()]));
    h.click("Wait for the receiver");
    h.run_until("the code", |app| app.waiting_code.is_some())
        .await;
    let code: Code = h.app.waiting_code.clone().unwrap();

    let receiver = tokio::spawn(async move {
        let rendezvous = Rendezvous::claim(&server_addr, &code).await?;
        let endpoint = Endpoint::Rendezvous(Box::new(rendezvous));
        let options = SessionOptions {
            security: Security::new(
                Identity::generate_shared(),
                Admission::default().with_code(code),
            )
            .unwrap(),
            ..SessionOptions::default()
        };
        let mut session = P2PSession::open(&endpoint, &options).await?;
        let options = ReceiveOptions {
            output_dir: inbox,
            overwrite: false,
        };
        let received = session.run_event_loop(&options, &NoEvents).await;
        endpoint.shut_down().await;
        received.map(|summaries| (summaries, options.output_dir))
    });

    h.run_until("the connection", |app| app.peer().is_some())
        .await;
    assert_eq!(path_now(&h.app), Some(PathKind::Relay));
    assert!(h.shows_part("over QUIC · relay · device"), "status line");
    h.run_until("the file to be measured", |app| {
        app.send_blocker().is_none()
    })
    .await;
    h.click("Start sending");
    h.run_until("the transfer to start", |app| app.transfer.is_some())
        .await;
    assert!(h.shows_part("Sending 1 file to "));
    assert!(h.shows_part("over QUIC · relay"), "progress headline");

    // The worker watches the path and tells the window when it changes.
    h.run_until("the direct path", |app| {
        path_now(app).is_some_and(|p| p != PathKind::Relay)
    })
    .await;
    let direct = path_now(&h.app).unwrap();
    let running = h.app.transfer.as_ref().is_some_and(|t| t.is_running());
    assert!(running, "the move came after the transfer ended");
    assert_eq!(h.app.transfer.as_ref().unwrap().path, Some(direct));
    assert!(
        h.shows_part(&format!("over QUIC · {} · device", direct.label())),
        "status line after the move"
    );
    assert!(!h.shows_part("over QUIC · relay"), "nothing says relay now");

    h.run_until("the record", |app| app.history.visible().next().is_some())
        .await;
    let transfer = h.app.transfer.as_ref().unwrap();
    assert!(matches!(transfer.state, TransferState::Finished { .. }));
    let record = h.app.history.visible().next().unwrap().clone();
    assert_eq!(record.status, Status::Completed);
    assert_eq!(record.paths, [PathKind::Relay, direct], "{record:?}");
    h.click("History");
    assert!(
        h.shows_part(&format!("over QUIC (relay → {}): ", direct.label())),
        "history line"
    );

    h.click("Connection");
    h.click("Disconnect");
    h.settle().await;
    let (received, inbox): (_, PathBuf) = tokio::time::timeout(WAIT, receiver)
        .await
        .expect("the receiver ends")
        .unwrap()
        .expect("the receiver ends cleanly");
    assert_eq!(received.len(), 1);
    assert_eq!(sha256(&inbox.join("movie.bin")), sha256(&file));
}
