//! The window's view and update, driven through `iced_test`'s headless simulator:
//! clicks and typing go through the real widgets, the resulting messages through
//! `App::update`, and the tasks `update` returns (the session worker, measuring files)
//! run here on a tokio runtime against real p2p-core peers on 127.0.0.1.

use std::path::{Path, PathBuf};
use std::time::Duration;

use iced::futures::stream::{SelectAll, StreamExt};
use iced::Task;
use iced_test::futures::BoxStream;
use iced_test::runtime::{task, Action};
use iced_test::{selector, Simulator};
use p2p_core::history::Status;
use p2p_core::net::{
    Admission, Admitted, Code, Endpoint, Identity, Security, Transport, TransportChoice, TrustStore,
};
use p2p_core::{Direction, NoEvents, P2PSession, ReceiveOptions, SessionOptions, TransferEvent};
use p2p_gui::progress::TransferState;
use p2p_gui::worker::WorkerEvent;
use p2p_gui::{App, Launch, Message, Tab};

mod common;
use common::{data, sha256};

const WAIT: Duration = Duration::from_secs(30);

/// The app plus the tasks its `update` started, run by polling them here.
struct Harness {
    app: App,
    tasks: SelectAll<BoxStream<Action<Message>>>,
    /// The simulated window's size.
    size: iced::Size,
}

impl Harness {
    fn new(launch: Launch) -> Self {
        let (app, boot) = App::new(launch);
        let mut harness = Self {
            app,
            tasks: SelectAll::new(),
            size: iced::window::Settings::default().size,
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

    fn ui(&self) -> Simulator<'_, Message> {
        Simulator::with_size(
            iced::Settings {
                default_font: p2p_gui::FONT,
                ..iced::Settings::default()
            },
            self.size,
            self.app.view(),
        )
    }

    /// Clicks the widget showing `label` and feeds the resulting messages to `update`.
    fn click(&mut self, label: &str) {
        let messages: Vec<Message> = {
            let mut ui = self.ui();
            if let Err(e) = ui.click(label) {
                panic!("cannot click {label:?}: {e}");
            }
            ui.into_messages().collect()
        };
        assert!(!messages.is_empty(), "clicking {label:?} did nothing");
        for message in messages {
            self.update(message);
        }
    }

    /// Clicks the text input with `id` and types `text` into it.
    fn type_into(&mut self, id: &'static str, text: &str) {
        let messages: Vec<Message> = {
            let mut ui = self.ui();
            if let Err(e) = ui.click(selector::id(id)) {
                panic!("cannot click input {id:?}: {e}");
            }
            let _ = ui.typewrite(text);
            ui.into_messages().collect()
        };
        for message in messages {
            self.update(message);
        }
    }

    /// Whether the window shows exactly this text (a label or an input's value).
    fn shows(&self, text: &str) -> bool {
        self.ui().find(text).is_ok()
    }

    /// Whether the window shows a text that contains `part`.
    fn shows_part(&self, part: &str) -> bool {
        let selector = |candidate: selector::Candidate<'_>| match candidate {
            selector::Candidate::Text { content, .. } if content.contains(part) => Some(()),
            _ => None,
        };
        self.ui().find(selector).is_ok()
    }

    fn handle(&mut self, action: Action<Message>) {
        if let Action::Output(message) = action {
            self.update(message);
        }
    }

    /// Runs the started tasks, feeding their messages to `update`, until `done` holds.
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

    /// Runs the started tasks until every one has ended (an aborted worker ends at its
    /// next poll, as it would on the iced executor).
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

    fn worker_id(&self) -> u64 {
        self.app.worker.as_ref().expect("a worker is running").id
    }

    fn inject(&mut self, event: TransferEvent) {
        let id = self.worker_id();
        self.update(Message::Worker(id, WorkerEvent::Transfer(event)));
    }
}

/// A window with its settings and data under `config`, holding this process's key: the
/// peers these tests start with `SessionOptions::default()` let it in (and it them) as
/// the same device.
/// Runs the tasks of two windows side by side until `done` holds for both.
async fn run_both_until(
    a: &mut Harness,
    b: &mut Harness,
    what: &str,
    done: impl Fn(&App, &App) -> bool,
) {
    let run = async {
        while !done(&a.app, &b.app) {
            let (first, action) = tokio::select! {
                Some(action) = a.tasks.next() => (true, action),
                Some(action) = b.tasks.next() => (false, action),
                else => panic!("no task is left to run while waiting for {what}"),
            };
            if first {
                a.handle(action);
            } else {
                b.handle(action);
            }
        }
    };
    if tokio::time::timeout(WAIT, run).await.is_err() {
        panic!("timed out waiting for {what}");
    }
}

fn launch(config: &Path) -> Launch {
    Launch {
        identity: Some(Security::default().identity),
        ..own_key(config)
    }
}

/// A window with its settings and data under `config` and the device key of its data
/// folder (created there on first use), as the real program has.
fn own_key(config: &Path) -> Launch {
    Launch {
        config_dir: Some(config.to_path_buf()),
        data_dir: Some(config.join("data")),
        ..Launch::default()
    }
}

/// Saves `settings`, opens a window that sends `file` to `addr`, clicks Cancel once
/// `acknowledged` bytes are acknowledged and waits for the worker to stop.
async fn send_and_cancel(
    config: &std::path::Path,
    settings: p2p_core::settings::Settings,
    addr: String,
    file: &std::path::Path,
    acknowledged: u64,
) -> Harness {
    settings.save(config).unwrap();
    let mut h = Harness::new(Launch {
        connect: Some(addr),
        send: vec![file.to_path_buf()],
        ..launch(config)
    });
    h.run_until("enough acknowledged", |app| {
        app.transfer
            .as_ref()
            .is_some_and(|t| t.done_bytes >= acknowledged)
    })
    .await;
    h.click("Cancel");
    h.run_until("the worker to stop", |app| app.worker.is_none())
        .await;
    h
}

/// Settings with small chunks and a small window: many steps per transfer, so a click
/// or a cut lands mid-transfer.
fn small_steps() -> p2p_core::settings::Settings {
    p2p_core::settings::Settings {
        chunk_size: 64 << 10,
        window_size: 4,
        ..Default::default()
    }
}

/// A p2p-core receiver on 127.0.0.1:0 that receives until the peer closes.
async fn loopback_receiver(
    output: PathBuf,
) -> (
    String,
    tokio::task::JoinHandle<p2p_core::Result<Vec<p2p_core::TransferSummary>>>,
) {
    let listener = p2p_core::net::tcp::listen("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let receiver = tokio::spawn(async move {
        let mut session = P2PSession::accept(&listener, &SessionOptions::default()).await?;
        let options = ReceiveOptions {
            output_dir: output,
            overwrite: false,
        };
        session.run_event_loop(&options, &NoEvents).await
    });
    (addr, receiver)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_selected_file_and_send_clicked_transfers_it_to_a_real_peer() {
    let dir = tempfile::tempdir().unwrap();
    let (inbox, config) = (dir.path().join("inbox"), dir.path().join("config"));
    let file = dir.path().join("report.bin");
    std::fs::write(&file, data(3 << 20, 7)).unwrap();
    let (addr, receiver) = loopback_receiver(inbox.clone()).await;

    let mut h = Harness::new(launch(&config));
    assert!(h.shows("Not connected"));
    h.type_into("peer-address", &addr);
    assert_eq!(h.app.peer_address, addr);
    h.click("Connect");
    h.run_until("the connection", |app| app.peer().is_some())
        .await;
    assert!(h.app.peer().unwrap().addr.is_some());

    h.click("Send");
    assert_eq!(h.app.tab, Tab::Send);
    assert!(h.shows_part("Nothing selected yet"));
    // What the file dialog hands back when the user picks the file.
    h.update(Message::Picked(vec![file.clone()]));
    h.run_until("the file to be measured", |app| {
        app.send_blocker().is_none()
    })
    .await;
    assert!(h.shows("report.bin"));
    assert!(h.shows("Total: 1 file · 3.0 MiB"));

    h.click("Start sending");
    assert!(h.app.is_busy());
    h.run_until("the transfer to start", |app| app.transfer.is_some())
        .await;
    let transfer = h.app.transfer.as_ref().unwrap();
    assert_eq!(transfer.direction, Direction::Send);
    assert_eq!(transfer.total_bytes, 3 << 20);
    h.run_until("the transfer to finish", |app| {
        app.history.visible().next().is_some()
    })
    .await;
    let transfer = h.app.transfer.as_ref().unwrap();
    assert!(matches!(transfer.state, TransferState::Finished { .. }));
    assert_eq!(transfer.done_bytes, 3 << 20);
    assert!(h.shows("100%"));
    assert!(
        h.shows_part("3.0 MiB of 3.0 MiB · "),
        "bytes of total, then the speed"
    );
    let record = h.app.history.visible().next().unwrap();
    assert_eq!(record.status, Status::Completed);
    assert_eq!(record.files, ["report.bin"]);
    // The local path sent (absolute), as the CLI records it: `resume ID` can find it.
    assert_eq!(
        record.local_paths,
        [file.display().to_string()],
        "{record:?}"
    );
    assert_eq!(
        record.peer_address.as_deref(),
        Some(addr.as_str()),
        "{record:?}"
    );
    assert_eq!(sha256(&inbox.join("report.bin")), sha256(&file));

    // Disconnecting closes the session cleanly: the peer's event loop ends without error.
    h.click("Connection");
    h.click("Disconnect");
    assert!(h.app.worker.is_none());
    assert!(h.shows("Not connected"));
    h.settle().await;
    let received = receiver.await.unwrap().expect("the receiver ends cleanly");
    assert_eq!(received.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listening_receives_what_a_peer_sends_into_the_output_folder() {
    let dir = tempfile::tempdir().unwrap();
    let (inbox, config) = (dir.path().join("inbox"), dir.path().join("config"));
    let folder = dir.path().join("photos");
    std::fs::create_dir_all(folder.join("2024")).unwrap();
    std::fs::write(folder.join("a.jpg"), data(100_000, 1)).unwrap();
    std::fs::write(folder.join("2024/b.jpg"), data(1 << 20, 2)).unwrap();

    let mut h = Harness::new(Launch {
        output: Some(inbox.clone()),
        auto_accept: true,
        ..launch(&config)
    });
    h.update(Message::ListenPortChanged("0".into()));
    h.click("Listen");
    h.run_until("the listener", |app| {
        app.worker
            .as_ref()
            .is_some_and(|w| w.listening_on.is_some())
    })
    .await;
    let port = h.app.worker.as_ref().unwrap().listening_on.unwrap().port();
    assert!(h.shows("Stop listening"));

    let sender = tokio::spawn(async move {
        let options = SessionOptions {
            device_name: "laptop".into(),
            ..SessionOptions::default()
        };
        let mut session = P2PSession::connect(&format!("127.0.0.1:{port}"), &options).await?;
        session.send(&[folder], &NoEvents).await?;
        session.close().await
    });
    h.run_until("the received folder", |app| {
        app.history.visible().next().is_some()
    })
    .await;
    sender.await.unwrap().unwrap();
    let record = h.app.history.visible().next().unwrap();
    assert_eq!(record.direction, Direction::Receive);
    assert_eq!(record.peer, "laptop");
    assert_eq!(record.status, Status::Completed);
    assert_eq!(record.file_count, 2);
    // Like the CLI's: the peer's address and proven id, where the files went.
    assert!(
        record
            .peer_address
            .as_deref()
            .is_some_and(|a| a.starts_with("127.0.0.1:")),
        "{record:?}"
    );
    assert!(record.peer_device_id.is_some(), "{record:?}");
    assert!(
        record
            .local_paths
            .iter()
            .any(|p| p.ends_with("inbox/photos")),
        "{record:?}"
    );
    assert!(inbox.join("photos/2024/b.jpg").is_file());
    assert_eq!(
        sha256(&inbox.join("photos/a.jpg")),
        sha256(&dir.path().join("photos/a.jpg"))
    );
    h.click("History");
    assert!(h.shows("From laptop over TCP: photos"));

    // The peer closed its session; the window keeps listening for the next one.
    h.run_until("the peer to leave", |app| app.peer().is_none())
        .await;
    assert!(h.app.worker.as_ref().unwrap().listening_on.is_some());
    h.run_until("the record to be written", |app| app.history_writes == 0)
        .await;
    drop(h);

    // The record is in the history file the CLI reads, and the next window shows it.
    let file = p2p_core::history::History::in_dir(&config.join("data"));
    let saved = file.load().unwrap().records;
    assert_eq!(saved.len(), 1);
    assert_eq!(saved[0].files, ["photos"]);
    let mut h = Harness::new(launch(&config));
    h.run_until("the history to load", |app| !app.history.is_empty())
        .await;
    h.click("History");
    assert!(h.shows("From laptop over TCP: photos"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_progress_event_moves_the_bar() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = Harness::new(launch(dir.path()));
    h.update(Message::ListenPortChanged("0".into()));
    h.click("Listen");
    let id = uuid::Uuid::new_v4();
    h.inject(TransferEvent::Started {
        transfer_id: id,
        direction: Direction::Receive,
        files: 1,
        total_bytes: 256 << 20,
        peer: "desk".into(),
        roots: vec!["movie.mkv".into()],
    });
    assert!(h.shows("Receiving 1 file from desk"));
    assert!(h.shows("0%"));
    let before = dir.path().join("bar.png");
    let snapshot = |h: &Harness| h.ui().snapshot(&iced::Theme::Light).unwrap();
    assert!(snapshot(&h).matches_image(&before).unwrap());

    h.inject(TransferEvent::Progress {
        transfer_id: id,
        done_bytes: 64 << 20,
        total_bytes: 256 << 20,
        current_file: Some(("movie.mkv".into(), 64 << 20, 256 << 20)),
    });
    assert_eq!(h.app.transfer.as_ref().unwrap().fraction(), 0.25);
    assert!(h.shows("25%"));
    // Issue 15: per-file progress.
    assert!(h.shows("File 1 of 1: movie.mkv · 64.0 MiB of 256.0 MiB"));
    assert!(!h.shows("0%"));
    // The drawn window changed (the saved image is the 0% frame).
    assert!(!snapshot(&h).matches_image(&before).unwrap());
    assert!(h.app.title().starts_with("25%"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_event_shows_its_message() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = Harness::new(launch(dir.path()));
    h.update(Message::ListenPortChanged("0".into()));
    h.click("Listen");
    let id = uuid::Uuid::new_v4();
    h.inject(TransferEvent::Started {
        transfer_id: id,
        direction: Direction::Send,
        files: 3,
        total_bytes: 1000,
        peer: "desk".into(),
        roots: vec!["movie.mkv".into()],
    });
    let error = "not enough free space: the transfer needs 1000 bytes, 10 are free";
    h.inject(TransferEvent::Failed {
        transfer_id: id,
        error: error.into(),
    });
    assert!(h.shows(error));
    assert!(h.shows("Transfer to desk failed"));
    // Issue 15: said once, in the panel — not repeated in the status bar.
    assert!(!h.shows(&format!("Transfer failed: {error}")));
    // A later send refused before it starts: the old panel goes, the status bar says
    // why.
    h.inject(TransferEvent::Failed {
        transfer_id: uuid::Uuid::new_v4(),
        error: "the peer refused or aborted the transfer: declined".into(),
    });
    assert!(h.app.transfer.is_none(), "no stale Failed panel");
    assert!(h.shows("Transfer failed: the peer refused or aborted the transfer: declined"));
    assert!(!h.app.is_busy());
    h.click("History");
    assert!(h.shows(&format!("failed: {error}")));
}

/// Issue "What a peer can make you see": a peer's name, the paths it offers and its
/// error message are drawn with control, bidi and invisible characters escaped, as the
/// command line prints them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peers_name_paths_and_error_are_shown_escaped() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = Harness::new(launch(dir.path()));
    h.update(Message::ListenPortChanged("0".into()));
    h.click("Listen");
    let raw_shown = |h: &Harness| {
        ['\u{1b}', '\u{7}', '\r', '\n', '\u{202e}']
            .into_iter()
            .find(|c| h.shows_part(&c.to_string()))
    };
    let peer = "desk\u{202e}gpj.exe";
    let id = h.worker_id();
    h.update(Message::Worker(
        id,
        WorkerEvent::Offer(p2p_core::IncomingOffer {
            transfer_id: uuid::Uuid::new_v4(),
            peer: peer.into(),
            entries: vec![p2p_core::transfer::OfferedEntry {
                path: "invoice\u{202e}fdp.exe".into(),
                size: Some(1000),
            }],
        }),
    ));
    assert_eq!(h.app.tab, Tab::Receive);
    assert!(h.shows(r"invoice\u{202e}fdp.exe"));
    assert!(h.shows_part(r"desk\u{202e}gpj.exe wants to send 1 file"));
    assert_eq!(raw_shown(&h), None);

    let transfer = uuid::Uuid::new_v4();
    h.inject(TransferEvent::Started {
        transfer_id: transfer,
        direction: Direction::Receive,
        files: 1,
        total_bytes: 1000,
        peer: peer.into(),
        roots: vec!["a\u{2066}b".into()],
    });
    h.inject(TransferEvent::Failed {
        transfer_id: transfer,
        error: "\u{1b}]0;pwned\u{7}\r\ntransfer complete, all files verified".into(),
    });
    let forged = r"\u{1b}]0;pwned\u{7}\r\ntransfer complete, all files verified";
    assert!(h.shows(forged));
    assert!(h.shows(r"Transfer from desk\u{202e}gpj.exe failed"));
    assert_eq!(raw_shown(&h), None);
    h.click("History");
    assert!(h.shows(r"From desk\u{202e}gpj.exe: a\u{2066}b"));
    assert!(h.shows(&format!("failed: {forged}")));
    assert_eq!(raw_shown(&h), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_a_running_send_and_no_file_appears() {
    let dir = tempfile::tempdir().unwrap();
    let (inbox, config) = (dir.path().join("inbox"), dir.path().join("config"));
    let file = dir.path().join("big.bin");
    std::fs::write(&file, data(64 << 20, 3)).unwrap();
    let (addr, receiver) = loopback_receiver(inbox.clone()).await;
    // Limited, so the Cancel reaches the worker before the 64 MiB are through.
    p2p_core::settings::Settings {
        bandwidth_limit: 16 << 20,
        ..small_steps()
    }
    .save(&config)
    .unwrap();

    let mut h = Harness::new(Launch {
        connect: Some(addr),
        send: vec![file],
        ..launch(&config)
    });
    h.run_until("the transfer to start", |app| {
        app.transfer.as_ref().is_some_and(|t| t.is_running())
    })
    .await;
    h.click("Cancel");
    h.run_until("the worker to stop", |app| app.worker.is_none())
        .await;
    let transfer = h.app.transfer.as_ref().unwrap();
    assert_eq!(transfer.state, TransferState::Cancelled);
    assert!(transfer.done_bytes < 64 << 20);
    assert_eq!(
        h.app.history.visible().next().map(|r| r.status),
        Some(Status::Interrupted)
    );
    assert!(h.shows("Transfer cancelled; the connection was closed."));
    // The peer was told the transfer was interrupted (not a lost connection), and the
    // file did not appear (what arrived is kept in hidden `.part` and resume-state
    // files, for a resumed send).
    let told = receiver
        .await
        .unwrap()
        .expect_err("the peer's transfer stopped");
    assert!(told.peer_interrupted(), "{told}");
    assert!(!inbox.join("big.bin").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config");
    {
        let mut h = Harness::new(launch(&config));
        h.click("Settings");
        assert!(h.shows("5"), "retries field shows the default");
        h.click("Adaptive: stop compressing data that does not shrink");
        h.type_into("retries", "0");
        assert_eq!(h.app.settings.max_retries, 50);
        h.update(Message::Settings(
            p2p_gui::settings_form::SettingsMessage::Window("0".into()),
        ));
        assert!(h.shows("A whole number from 1 to 1024."));
    }
    assert!(config.join("settings.json").is_file());

    let mut h = Harness::new(launch(&config));
    assert!(!h.app.settings.adaptive);
    assert_eq!(h.app.settings.max_retries, 50);
    assert_eq!(
        h.app.settings.window_size,
        p2p_core::config::DEFAULT_WINDOW_SIZE,
        "an invalid value is not saved"
    );
    h.click("Settings");
    assert!(h.shows("50"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_settings_file_is_reported_and_defaults_are_used() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("settings.json"), "{\"window_size\": [").unwrap();
    let mut h = Harness::new(launch(dir.path()));
    assert_eq!(h.app.settings, p2p_core::settings::Settings::default());
    h.click("Settings");
    let status = format!("{:?}", h.app.settings_status);
    assert!(status.contains("is not a valid settings file"), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connecting_to_nobody_says_so_in_plain_words() {
    let dir = tempfile::tempdir().unwrap();
    // A port that was free a moment ago: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut h = Harness::new(launch(dir.path()));
    h.update(Message::PeerAddressChanged(format!("127.0.0.1:{port}")));
    h.click("Connect");
    assert!(h.shows(&format!("Connecting to 127.0.0.1:{port}…")));
    h.run_until("the connect error", |app| app.worker.is_none())
        .await;
    // Issue 15: in a person's words, not "Connection refused (os error 111)".
    let text = format!(
        "nothing is listening at 127.0.0.1:{port}: check the address and port, and that \
         the other side is waiting (Listen, or `p2p-transfer receive`)"
    );
    assert!(h.shows(&text), "{:?}", h.app.notice);
    assert!(!h.shows_part("os error"));
    assert!(h.shows("Not connected"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_history_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = Harness::new(launch(dir.path()));
    h.click("History");
    assert!(h.shows("No transfers yet"));
    h.click("Connection");
    assert!(h.shows("Peers on this network"));
}

/// Discovery on the loopback network only, on a port of its own.
fn loopback_discovery() -> p2p_core::discovery::DiscoveryConfig {
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    p2p_core::discovery::DiscoveryConfig {
        port,
        interval: Duration::from_millis(200),
        peer_ttl: Duration::from_secs(5),
        targets: p2p_core::discovery::BeaconTargets::Only(vec!["127.255.255.255".parse().unwrap()]),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_found_on_the_network_is_one_click_away() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config");
    let discovery = loopback_discovery();
    // A receiver with a key of its own that lets in the window (this process's key),
    // and that the window trusts: a device paired earlier.
    let key = Identity::generate_shared();
    let mut trust = TrustStore::load(&config.join("data")).unwrap();
    trust.add(key.device_id(), "living-room", Some(key.fingerprint()));
    trust.save().unwrap();
    let listener = p2p_core::net::tcp::listen("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let receiver = tokio::spawn({
        let options = SessionOptions {
            security: Security::new(
                key.clone(),
                Admission::default().with_pin(Security::default().device_id()),
            )
            .unwrap(),
            ..SessionOptions::default()
        };
        let inbox = dir.path().join("inbox");
        async move {
            let mut session = P2PSession::accept(&listener, &options).await?;
            let receive = ReceiveOptions {
                output_dir: inbox,
                overwrite: false,
            };
            session.run_event_loop(&receive, &NoEvents).await
        }
    });
    let beacon = p2p_core::discovery::Beacon::new(key.device_id(), "living-room", addr.port());
    let _announcer = p2p_core::discovery::Announcer::start(beacon, &discovery).unwrap();

    let mut h = Harness::new(Launch {
        discovery: Some(discovery),
        ..launch(&config)
    });
    h.click("Find peers");
    assert!(h.app.is_browsing());
    h.run_until("the receiver's beacon", |app| !app.found_peers.is_empty())
        .await;
    assert!(h.shows_part(&format!("living-room at {addr}")));
    h.click("Connect to this peer");
    assert!(
        h.app.is_browsing(),
        "issue 15: looking goes on while connected"
    );
    h.run_until("the connection", |app| app.peer().is_some())
        .await;
    assert_eq!(h.app.peer_address, addr.to_string());
    let identity = h.app.peer().unwrap().identity.clone().unwrap();
    assert_eq!(identity.device_id, key.device_id());
    assert_eq!(
        identity.admitted,
        p2p_core::net::Admitted::Trusted {
            name: "living-room".into()
        }
    );
    h.click("Disconnect");
    h.click("Stop looking");
    h.settle().await;
    receiver.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listening_window_announces_itself() {
    let dir = tempfile::tempdir().unwrap();
    let discovery = loopback_discovery();
    let mut h = Harness::new(Launch {
        discovery: Some(discovery.clone()),
        ..launch(&dir.path().join("config"))
    });
    h.update(Message::ListenPortChanged("0".into()));
    h.click("Listen");
    h.run_until("the listener", |app| {
        app.worker
            .as_ref()
            .is_some_and(|w| w.listening_on.is_some())
    })
    .await;
    let port = h.app.worker.as_ref().unwrap().listening_on.unwrap().port();
    let peer = p2p_core::discovery::find_with(&discovery, None, Duration::from_secs(5))
        .await
        .expect("the window's beacon");
    assert_eq!(peer.addr.port(), port);
    assert_eq!(peer.name, p2p_core::session::default_device_name());
}

/// Listens on 127.0.0.1:0 with the window and returns the port.
async fn listen(h: &mut Harness) -> u16 {
    h.update(Message::ListenPortChanged("0".into()));
    h.click("Listen");
    h.run_until("the listener", |app| {
        app.worker
            .as_ref()
            .is_some_and(|w| w.listening_on.is_some())
    })
    .await;
    h.app.worker.as_ref().unwrap().listening_on.unwrap().port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_incoming_transfer_waits_for_accept_or_decline() {
    let dir = tempfile::tempdir().unwrap();
    let (inbox, config) = (dir.path().join("inbox"), dir.path().join("config"));
    let folder = dir.path().join("album");
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::write(folder.join("a.jpg"), data(300_000, 1)).unwrap();
    std::fs::write(folder.join("b.jpg"), data(2 << 20, 2)).unwrap();

    let mut h = Harness::new(Launch {
        output: Some(inbox.clone()),
        ..launch(&config)
    });
    assert!(!h.app.auto_accept, "asking is the default");
    let port = listen(&mut h).await;
    // One session, the same folder offered twice: declined, then accepted.
    let sender = tokio::spawn({
        let folder = folder.clone();
        async move {
            let options = SessionOptions {
                device_name: "laptop".into(),
                ..SessionOptions::default()
            };
            let mut session = P2PSession::connect(&format!("127.0.0.1:{port}"), &options).await?;
            let declined = session.send(&[&folder], &NoEvents).await;
            let accepted = session.send(&[&folder], &NoEvents).await;
            session.close().await?;
            Ok::<_, p2p_core::Error>((declined, accepted))
        }
    });

    h.run_until("the first offer", |app| app.offer.is_some())
        .await;
    assert_eq!(
        h.app.tab,
        Tab::Receive,
        "the offer is shown where it is answered"
    );
    assert!(h.shows("Incoming transfer"));
    assert!(h.shows("laptop wants to send 2 files · 2.3 MiB"));
    assert!(h.shows("album/b.jpg"));
    assert!(h.shows("2.0 MiB"));
    h.click("Decline");
    assert!(h.app.offer.is_none());
    assert!(h.shows("Declined album from laptop."));
    let declined = h
        .app
        .history
        .visible()
        .next()
        .expect("the decline is remembered");
    assert_eq!(
        (declined.status, declined.direction, declined.files.clone()),
        (
            Status::Declined,
            Direction::Receive,
            vec!["album".to_owned()]
        )
    );

    h.run_until("the second offer", |app| app.offer.is_some())
        .await;
    assert!(
        !inbox.join("album").exists(),
        "nothing was written for the declined offer"
    );
    h.click("Accept");
    h.run_until("the received folder", |app| {
        app.history.visible().any(|r| r.status == Status::Completed)
    })
    .await;
    let (declined, accepted) = sender.await.unwrap().unwrap();
    let declined = declined.unwrap_err().to_string();
    assert!(
        declined.contains("the receiver declined the transfer"),
        "{declined}"
    );
    assert_eq!(accepted.unwrap().files, 2);
    for name in ["a.jpg", "b.jpg"] {
        assert_eq!(
            sha256(&inbox.join("album").join(name)),
            sha256(&folder.join(name))
        );
    }
    // Turning auto-accept on is saved with the settings.
    h.click("Accept incoming transfers without asking");
    assert!(h.app.auto_accept);
    assert!(
        p2p_core::settings::Settings::load(&config)
            .unwrap()
            .auto_accept
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_send_is_offered_for_resume_and_resumes_where_it_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let (inbox, config) = (dir.path().join("inbox"), dir.path().join("config"));
    let file = dir.path().join("big.bin");
    std::fs::write(&file, data(48 << 20, 5)).unwrap();
    let (addr, receiver) = loopback_receiver(inbox.clone()).await;
    // Limited to 16 MiB/s, so that the Cancel clicked once the window has seen 8 MiB
    // acknowledged reaches the worker well before the 48 MiB are through (unlimited, a
    // fast machine could finish first: the window learns of progress after the fact).
    let settings = p2p_core::settings::Settings {
        bandwidth_limit: 16 << 20,
        ..small_steps()
    };
    // Cancel once a good part has been acknowledged.
    let mut h = send_and_cancel(&config, settings, addr, &file, 8 << 20).await;
    assert!(receiver.await.unwrap().is_err());
    let (paths, id) = h.app.resumable.clone().expect("offered for resume");
    assert_eq!(paths, std::slice::from_ref(&file));
    assert_eq!(h.app.transfer.as_ref().unwrap().transfer_id, id);
    assert!(h.shows_part("stopped before the end"));

    // A new session with a receiver on the same folder: Resume sends only the rest.
    let (addr, receiver) = loopback_receiver(inbox.clone()).await;
    h.click("Connection");
    h.update(Message::PeerAddressChanged(addr));
    h.click("Connect");
    h.run_until("the connection", |app| app.peer().is_some())
        .await;
    h.click("Send");
    h.click("Resume");
    h.run_until("the resumed send to finish", |app| {
        app.transfer
            .as_ref()
            .is_some_and(|t| matches!(t.state, TransferState::Finished { .. }))
    })
    .await;
    let t = h.app.transfer.as_ref().unwrap();
    assert_eq!(t.transfer_id, id, "the same transfer, resumed");
    assert!(
        t.resumed_bytes >= 4 << 20,
        "resumed {} bytes",
        t.resumed_bytes
    );
    assert!(h.app.resumable.is_none());
    assert_eq!(sha256(&inbox.join("big.bin")), sha256(&file));
    h.click("Connection");
    h.click("Disconnect");
    h.settle().await;
    receiver.await.unwrap().unwrap();
}

/// A TCP relay on 127.0.0.1 to `target` that cuts its first connection once `cut_after`
/// bytes have gone from the client to the server; later connections pass untouched.
async fn cutting_proxy(target: String, cut_after: usize) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        let mut first = true;
        while let Ok((mut client, _)) = listener.accept().await {
            let Ok(mut server) = tokio::net::TcpStream::connect(&target).await else {
                continue;
            };
            if !first {
                tokio::spawn(async move {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                });
                continue;
            }
            first = false;
            tokio::spawn(async move {
                let (mut client_rx, mut client_tx) = client.split();
                let (mut server_rx, mut server_tx) = server.split();
                let up = async {
                    let mut buf = vec![0u8; 64 << 10];
                    let mut passed = 0;
                    while passed < cut_after {
                        let n = client_rx.read(&mut buf).await?;
                        if n == 0 {
                            break;
                        }
                        let n = n.min(cut_after - passed);
                        server_tx.write_all(&buf[..n]).await?;
                        passed += n;
                    }
                    std::io::Result::Ok(())
                };
                let down = tokio::io::copy(&mut server_rx, &mut client_tx);
                // Whichever ends first, both sockets are dropped: the cut.
                tokio::select! {
                    _ = up => {}
                    _ = down => {}
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_connection_reconnects_and_resumes_by_itself() {
    let dir = tempfile::tempdir().unwrap();
    let (inbox, config) = (dir.path().join("inbox"), dir.path().join("config"));
    let file = dir.path().join("video.bin");
    std::fs::write(&file, data(24 << 20, 9)).unwrap();
    // A receiver that takes sessions one after another (the sender comes back).
    let listener = p2p_core::net::tcp::listen("127.0.0.1:0").await.unwrap();
    let target = listener.local_addr().unwrap().to_string();
    let receiver = tokio::spawn({
        let inbox = inbox.clone();
        async move {
            let options = ReceiveOptions {
                output_dir: inbox,
                overwrite: false,
            };
            let mut outcomes = Vec::new();
            for _ in 0..2 {
                let mut session = P2PSession::accept(&listener, &SessionOptions::default())
                    .await
                    .unwrap();
                outcomes.push(session.run_event_loop(&options, &NoEvents).await.is_ok());
            }
            outcomes
        }
    });
    let proxy = cutting_proxy(target, 6 << 20).await;
    p2p_core::settings::Settings {
        auto_reconnect: true,
        max_retries: 3,
        ..small_steps()
    }
    .save(&config)
    .unwrap();
    let mut h = Harness::new(Launch {
        connect: Some(proxy),
        send: vec![file.clone()],
        ..launch(&config)
    });
    h.run_until("the reconnection", |app| {
        matches!(&app.notice, Some(p2p_gui::app::Notice::Info(n)) if n.starts_with("Connection lost"))
    })
    .await;
    h.run_until("the resumed send to finish", |app| {
        app.transfer
            .as_ref()
            .is_some_and(|t| matches!(t.state, TransferState::Finished { .. }))
    })
    .await;
    let t = h.app.transfer.as_ref().unwrap();
    assert!(
        t.resumed_bytes > 0,
        "the second session resumed the transfer"
    );
    assert_eq!(sha256(&inbox.join("video.bin")), sha256(&file));
    let statuses: Vec<Status> = h.app.history.visible().map(|r| r.status).collect();
    assert_eq!(
        statuses,
        [Status::Completed, Status::Failed],
        "newest first"
    );
    h.click("Connection");
    h.click("Disconnect");
    h.settle().await;
    assert_eq!(receiver.await.unwrap(), [false, true]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnection_that_fails_for_good_says_why() {
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().unwrap();
    let (inbox, config) = (dir.path().join("inbox"), dir.path().join("config"));
    let file = dir.path().join("video.bin");
    std::fs::write(&file, data(24 << 20, 11)).unwrap();
    // A real receiver for the first session; what answers the reconnection is not a
    // p2p-transfer peer at all.
    let listener = p2p_core::net::tcp::listen("127.0.0.1:0").await.unwrap();
    let target = listener.local_addr().unwrap().to_string();
    let receiver = tokio::spawn(async move {
        let options = ReceiveOptions {
            output_dir: inbox,
            overwrite: false,
        };
        let mut session = P2PSession::accept(&listener, &SessionOptions::default())
            .await
            .unwrap();
        let _ = session.run_event_loop(&options, &NoEvents).await;
        let (mut stranger, _) = listener.accept().await.unwrap();
        let _ = stranger
            .write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
            .await;
        let _ = stranger.shutdown().await;
    });
    let proxy = cutting_proxy(target, 6 << 20).await;
    p2p_core::settings::Settings {
        auto_reconnect: true,
        max_retries: 3,
        ..small_steps()
    }
    .save(&config)
    .unwrap();
    let mut h = Harness::new(Launch {
        connect: Some(proxy),
        send: vec![file],
        ..launch(&config)
    });
    h.run_until("the worker to stop", |app| app.worker.is_none())
        .await;
    receiver.await.unwrap();
    // Not the first session's "connection closed", and not silence: the reason the
    // reconnection failed.
    match &h.app.notice {
        Some(p2p_gui::app::Notice::Error(text)) => {
            // The HTTP reply where a TLS handshake was expected.
            assert!(
                text.ends_with("answered, but not as p2p-transfer: it looks like an HTTP server"),
                "{text}"
            )
        }
        other => panic!("expected an error notice, got {other:?}"),
    }
}

/// Files directly in `dir` (none when it does not exist).
fn entries(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

fn listening(app: &App) -> bool {
    app.worker
        .as_ref()
        .is_some_and(|w| w.listening_on.is_some())
}

/// Issue 11, item 5: the window's device key comes from the data folder, its id is shown
/// (selectable, with a Copy button) and stays the same across restarts; a damaged key
/// file is reported, left alone, and the window runs with a key of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn this_devices_id_is_shown_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config");
    let mut h = Harness::new(own_key(&config));
    let id = Identity::load_or_create(&config.join("data"))
        .unwrap()
        .device_id()
        .to_string();
    assert_eq!(id.len(), 29, "five groups of five: {id}");
    assert_eq!(h.app.tab, Tab::Connection);
    assert!(h.shows("This device"));
    assert!(h.shows(&id), "the id is in the Connection tab");
    assert!(h.shows_part("device-key.pem"), "where the key lives");
    assert_eq!(h.app.notice, None);
    let copied: Vec<Message> = {
        let mut ui = h.ui();
        ui.click("Copy id").unwrap();
        ui.into_messages().collect()
    };
    assert!(matches!(&copied[..], [Message::Copy(text)] if *text == id));
    h.click("Copy id");
    drop(h);

    let h = Harness::new(own_key(&config));
    assert!(h.shows(&id), "the same key after a restart");

    // A damaged key: said in the status bar, the file kept, a key for this run used.
    let broken = dir.path().join("broken");
    let key_file = broken.join("data").join(p2p_core::net::identity::KEY_FILE);
    std::fs::create_dir_all(key_file.parent().unwrap()).unwrap();
    std::fs::write(&key_file, "-----BEGIN PRIVATE KEY-----\nnot a key\n").unwrap();
    let h = Harness::new(Launch {
        listen: Some("127.0.0.1:0".into()),
        ..own_key(&broken)
    });
    match &h.app.notice {
        Some(p2p_gui::app::Notice::Error(text)) => {
            assert!(text.contains("is damaged"), "{text}");
            assert!(text.contains("a key of its own for this run"), "{text}");
        }
        other => panic!("expected the key error in the status bar, got {other:?}"),
    }
    assert!(h.shows_part("is damaged"));
    let fallback = h.app.device_id().to_string();
    assert_ne!(fallback, id);
    assert!(h.shows(&fallback));
    assert_eq!(
        std::fs::read_to_string(&key_file).unwrap(),
        "-----BEGIN PRIVATE KEY-----\nnot a key\n"
    );
}

/// Two windows, each with its own key: the sender waits for a receiver with a new
/// one-time code (found on the loopback network by its nameplate), the receiver types
/// it, and the file arrives byte-identical; each side saw the other prove the code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_windows_pair_with_a_one_time_code_and_transfer_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let inbox = dir.path().join("inbox");
    let file = dir.path().join("contract.pdf");
    std::fs::write(&file, data(2 << 20, 21)).unwrap();
    let discovery = loopback_discovery();
    let mut sender = Harness::new(Launch {
        discovery: Some(discovery.clone()),
        ..own_key(&dir.path().join("sender"))
    });
    let mut receiver = Harness::new(Launch {
        discovery: Some(discovery),
        output: Some(inbox.clone()),
        ..own_key(&dir.path().join("receiver"))
    });
    let (sender_id, receiver_id) = (sender.app.device_id(), receiver.app.device_id());
    assert_ne!(sender_id, receiver_id);

    // The sender: a file, then "Wait for the receiver" with the code field left empty.
    sender.update(Message::ListenPortChanged("0".into()));
    sender.click("Send");
    sender.update(Message::Picked(vec![file.clone()]));
    assert!(sender.shows("Send to a new device with a one-time code"));
    sender.click("Wait for the receiver");
    let code = sender.app.waiting_code.clone().expect("a new code");
    assert!(sender.shows(&code.to_string()), "the code, large");
    assert!(sender.shows("One-time code for the receiver:"));
    sender.run_until("the listener", listening).await;
    assert!(sender.shows_part(&format!(
        "Waiting for the peer with code {}-…",
        code.nameplate()
    )));
    // The Connection tab shows it too, under this device's id.
    sender.click("Connection");
    assert!(sender.shows(&code.to_string()));
    assert!(sender.shows(&sender_id.to_string()));
    sender.click("Send");

    // The receiver types the code and connects: found by the code's nameplate.
    receiver.click("Receive");
    assert!(receiver.shows("Receive from a new device with a one-time code"));
    receiver.type_into("code", &code.to_string());
    assert_eq!(receiver.app.code_input, code.to_string());
    receiver.click("Connect to the sender");
    run_both_until(
        &mut sender,
        &mut receiver,
        "both windows connected",
        |a, b| a.peer().is_some() && b.peer().is_some(),
    )
    .await;
    let seen_by_sender = sender.app.peer().unwrap().identity.clone().unwrap();
    let seen_by_receiver = receiver.app.peer().unwrap().identity.clone().unwrap();
    assert_eq!(
        (seen_by_sender.device_id, seen_by_sender.admitted),
        (receiver_id, Admitted::Code)
    );
    assert_eq!(
        (seen_by_receiver.device_id, seen_by_receiver.admitted),
        (sender_id, Admitted::Code)
    );
    assert_eq!(sender.app.waiting_code, None, "a code works once");
    assert!(sender.shows_part("proved the one-time code"), "status bar");

    sender
        .run_until("the file to be measured", |app| {
            app.send_blocker().is_none()
        })
        .await;
    sender.click("Start sending");
    run_both_until(&mut sender, &mut receiver, "the offer", |_, b| {
        b.offer.is_some()
    })
    .await;
    assert!(receiver.shows_part("wants to send 1 file · 2.0 MiB"));
    assert!(receiver.shows(&format!("Device {sender_id} · proved the one-time code")));
    receiver.click("Accept");
    run_both_until(&mut sender, &mut receiver, "the transfer", |a, b| {
        [a, b].iter().all(|app| {
            app.transfer
                .as_ref()
                .is_some_and(|t| matches!(t.state, TransferState::Finished { .. }))
        })
    })
    .await;
    assert_eq!(sha256(&inbox.join("contract.pdf")), sha256(&file));
    // "Remember this device" was off: nothing became trusted.
    let trust = TrustStore::load(&dir.path().join("receiver/data")).unwrap();
    assert!(trust.devices().is_empty());
}

/// A mistyped code is refused next to the field; a wrong one fails on both sides with
/// the core's plain words (the code is burnt) and nothing is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_code_fails_plainly_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let (inbox, config) = (dir.path().join("inbox"), dir.path().join("config"));
    let file = dir.path().join("secret.txt");
    std::fs::write(&file, b"for the right receiver only").unwrap();
    // A p2p-core sender that waits with its code.
    let code = Code::generate();
    let wrong: Code = format!("{}-wrong-words", code.nameplate()).parse().unwrap();
    let endpoint = Endpoint::listen("127.0.0.1:0").await.unwrap();
    let addr = endpoint.local_addr().unwrap().to_string();
    let sender = tokio::spawn(async move {
        let options = SessionOptions {
            security: Security::new(
                Identity::generate_shared(),
                Admission::default().with_code(code),
            )
            .unwrap(),
            ..SessionOptions::default()
        };
        let mut session = P2PSession::open(&endpoint, &options).await?;
        session.send(&[file], &NoEvents).await
    });

    let mut h = Harness::new(Launch {
        output: Some(inbox.clone()),
        auto_accept: true,
        ..own_key(&config)
    });
    h.click("Receive");
    h.click("Connect to the sender");
    assert!(h.shows("Type the code the other side shows, for example 7-guitar-orbit."));
    h.type_into("code", "guitar orbit");
    assert!(h.app.code_error.is_none(), "typing clears the note");
    h.click("Connect to the sender");
    assert!(h.shows("a code starts with its number, then '-' and the words, e.g. 7-guitar-orbit."));
    assert!(h.app.worker.is_none(), "nothing was started");
    h.update(Message::CodeChanged("7-a;b".into()));
    h.click("Connect to the sender");
    assert!(h.shows("a code may contain letters, digits and '-' only."));

    h.update(Message::CodeChanged(wrong.to_string()));
    h.type_into("code-address", &addr);
    h.click("Connect to the sender");
    assert!(h.shows(&format!("Connecting to {addr}…")));
    h.run_until("the worker to stop", |app| app.worker.is_none())
        .await;
    let shown = format!("{:?}", h.app.notice);
    assert!(
        shown.contains("wrong code: the peer does not know the same code"),
        "{shown}"
    );
    assert!(shown.contains("Nothing was sent"), "{shown}");
    assert!(h.shows_part("wrong code: the peer does not know the same code"));
    assert!(h.shows("Not connected"));
    let refused = sender.await.unwrap().unwrap_err().to_string();
    assert!(refused.starts_with("wrong code"), "{refused}");
    assert!(entries(&inbox).is_empty(), "{:?}", entries(&inbox));
}

/// "Remember this device" after a session with a code adds the peer to the trust file;
/// the Settings tab lists it (id, name, date), renames it and removes it, each written
/// to the file. A damaged trust file is reported and never written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_paired_with_a_code_is_remembered_listed_renamed_and_removed() {
    let dir = tempfile::tempdir().unwrap();
    let (inbox, config) = (dir.path().join("inbox"), dir.path().join("config"));
    let data_dir = config.join("data");
    let file = dir.path().join("notes.txt");
    std::fs::write(&file, data(10_000, 3)).unwrap();
    let mut h = Harness::new(Launch {
        output: Some(inbox.clone()),
        auto_accept: true,
        ..own_key(&config)
    });
    h.click("Settings");
    assert!(h.shows("No trusted devices yet."));
    h.update(Message::ListenPortChanged("0".into()));
    h.click("Receive");
    h.click("Remember this device: no code next time");
    assert!(h.app.remember);
    h.click("Wait for the sender");
    let code = h.app.waiting_code.clone().expect("a new code");
    h.run_until("the listener", listening).await;
    let port = h.app.worker.as_ref().unwrap().listening_on.unwrap().port();

    let key = Identity::generate_shared();
    let sender = tokio::spawn({
        let key = key.clone();
        async move {
            let options = SessionOptions {
                device_name: "laptop".into(),
                security: Security::new(key, Admission::default().with_code(code)).unwrap(),
                ..SessionOptions::default()
            };
            let mut session = P2PSession::connect(&format!("127.0.0.1:{port}"), &options).await?;
            session.send(&[file], &NoEvents).await?;
            session.close().await
        }
    });
    h.run_until("the transfer and the trust entry", |app| {
        app.history.visible().any(|r| r.status == Status::Completed)
            && app.trusted.devices.as_ref().is_ok_and(|d| d.len() == 1)
    })
    .await;
    sender.await.unwrap().unwrap();
    assert!(
        inbox.join("notes.txt").is_file(),
        "auto-accept applies to a code"
    );
    let id = key.device_id();
    let store = TrustStore::load(&data_dir).unwrap();
    assert_eq!(store.devices().len(), 1);
    assert_eq!(store.devices()[0].id, id);
    assert_eq!(store.devices()[0].name, "laptop");
    assert!(
        store.find(&key.fingerprint()).is_some(),
        "bound to the full key"
    );

    // A window tall enough to show the whole Settings tab, the list at its end.
    h.size = iced::Size::new(1024.0, 1600.0);
    h.click("Settings");
    assert!(h.shows("Trusted devices"));
    assert!(h.shows_part(&format!(
        "Remembered laptop ({id}): it connects without a code from now on."
    )));
    assert!(h.shows("laptop"));
    let added = p2p_gui::trust::added(store.devices()[0].added);
    assert!(h.shows(&format!("{id} · {added}")), "id and date");

    h.click("Rename");
    assert!(h.shows("laptop"), "the name, in its field");
    h.update(Message::Trust(p2p_gui::trust::TrustMessage::NameChanged(
        "desk\u{1b}[2J".into(),
    )));
    h.click("Save name");
    h.run_until("the rename", |app| app.trusted.writes == 0)
        .await;
    assert_eq!(
        TrustStore::load(&data_dir).unwrap().devices()[0].name,
        r"desk\u{1b}[2J",
        "stored escaped, like every peer text"
    );
    assert!(h.shows(r"desk\u{1b}[2J"));

    h.click("Remove");
    h.run_until("the removal", |app| app.trusted.writes == 0)
        .await;
    assert!(TrustStore::load(&data_dir).unwrap().devices().is_empty());
    assert!(h.shows("No trusted devices yet."));
    assert!(h.shows(&format!(
        "{id} is no longer trusted: it needs a code again."
    )));
    drop(h);

    // A damaged file: shown on the Settings tab, never overwritten by an edit.
    let trust_file = data_dir.join(p2p_core::net::trust::TRUST_FILE);
    std::fs::write(&trust_file, "{\"version\":1,\"devices\":[{").unwrap();
    let mut h = Harness::new(own_key(&config));
    h.size = iced::Size::new(1024.0, 1600.0);
    h.click("Settings");
    assert!(h.shows_part("is damaged"));
    h.update(Message::Trust(p2p_gui::trust::TrustMessage::Remove(id)));
    h.run_until("the failed edit", |app| app.trusted.writes == 0)
        .await;
    assert!(h.shows_part("Could not change the trusted devices"));
    assert_eq!(
        std::fs::read_to_string(&trust_file).unwrap(),
        "{\"version\":1,\"devices\":[{"
    );
}

/// A device that used no code and is not trusted gets into a listening window only as
/// "NOT trusted": its offer shows its verified id and waits for the person even with
/// auto-accept on; nothing can be sent to it until the person accepts; accepting with
/// "Remember this device" trusts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_devices_offer_says_not_trusted_and_is_never_auto_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let (inbox, config) = (dir.path().join("inbox"), dir.path().join("config"));
    let file = dir.path().join("flyer.png");
    std::fs::write(&file, data(500_000, 8)).unwrap();
    let mut h = Harness::new(Launch {
        output: Some(inbox.clone()),
        auto_accept: true,
        ..own_key(&config)
    });
    assert!(h.app.auto_accept);
    let port = listen(&mut h).await;
    let window = h.app.device_id();
    // A stranger: its own key, no code; it lets in exactly this window's key.
    let key = Identity::generate_shared();
    let sender = tokio::spawn({
        let (key, file) = (key.clone(), file.clone());
        async move {
            let options = SessionOptions {
                device_name: "stranger".into(),
                security: Security::new(key, Admission::default().with_pin(window)).unwrap(),
                ..SessionOptions::default()
            };
            let mut session = P2PSession::connect(&format!("127.0.0.1:{port}"), &options).await?;
            session.send(&[file], &NoEvents).await?;
            session.close().await
        }
    });
    h.run_until("the offer", |app| app.offer.is_some()).await;
    assert_eq!(h.app.tab, Tab::Receive);
    let peer = h.app.peer().unwrap();
    assert_eq!(
        peer.identity
            .as_ref()
            .map(|i| (i.device_id, i.admitted.clone())),
        Some((key.device_id(), Admitted::Unknown))
    );
    assert!(h.shows_part("stranger wants to send 1 file"));
    assert!(h.shows(&format!(
        "Device {} · NOT trusted: no code, not one of your trusted devices",
        key.device_id()
    )));
    assert!(h.shows_part("stranger (NOT trusted) wants to send you 1 file"));
    assert!(h.shows_part("· NOT trusted"), "status bar");
    assert!(entries(&inbox).is_empty(), "auto-accept did not apply");
    let blocker = h.app.send_blocker().unwrap();
    assert!(blocker.contains("NOT trusted"), "{blocker}");

    h.click("Remember this device when I accept: no code next time");
    h.click("Accept");
    h.run_until("the file and the trust entry", |app| {
        app.history.visible().any(|r| r.status == Status::Completed)
            && app.trusted.devices.as_ref().is_ok_and(|d| d.len() == 1)
    })
    .await;
    sender.await.unwrap().unwrap();
    assert_eq!(sha256(&inbox.join("flyer.png")), sha256(&file));
    let store = TrustStore::load(&config.join("data")).unwrap();
    assert_eq!(store.devices()[0].id, key.device_id());
    assert_eq!(store.devices()[0].name, "stranger");
}

/// Connecting by address without a code lets in trusted devices only: an unknown one is
/// refused in the window's words (not the command line's), and the other side is told.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connecting_to_an_unknown_device_without_a_code_is_refused_plainly() {
    let dir = tempfile::tempdir().unwrap();
    let key = Identity::generate_shared();
    let endpoint = Endpoint::listen("127.0.0.1:0").await.unwrap();
    let addr = endpoint.local_addr().unwrap().to_string();
    // A listener that would let anyone in: the window's own rules must refuse it.
    let listener = tokio::spawn({
        let key = key.clone();
        async move {
            let options = SessionOptions {
                security: Security::new(key, Admission::default().accepting_unknown(true)).unwrap(),
                ..SessionOptions::default()
            };
            P2PSession::open(&endpoint, &options).await.map(|_| ())
        }
    });
    let mut h = Harness::new(own_key(&dir.path().join("config")));
    h.update(Message::PeerAddressChanged(addr));
    h.click("Connect");
    h.run_until("the refusal", |app| app.worker.is_none()).await;
    let text = format!(
        "refused unknown device {}: it is not one of your trusted devices. Pair with a \
         one-time code (Send or Receive tab), or add it to the trusted devices",
        key.device_id()
    );
    assert!(h.shows(&text), "{:?}", h.app.notice);
    listener.abort();
}

/// A code whose peer is not on the network: said plainly once the search gives up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_code_nobody_waits_for_is_said_plainly() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = Harness::new(Launch {
        discovery: Some(loopback_discovery()),
        ..own_key(&dir.path().join("config"))
    });
    h.click("Receive");
    h.type_into("code", "42-quiet-harbor");
    h.click("Connect to the sender");
    assert!(h.shows("Looking for the peer of code 42-… on this network…"));
    h.run_until("the search to give up", |app| app.worker.is_none())
        .await;
    let shown = format!("{:?}", h.app.notice);
    assert!(
        shown.contains("Nobody waiting for code 42-… was found on this network within 5 s"),
        "{shown}"
    );
}

/// Closing the window (or `--exit-after-transfer`) between transfers closes the session
/// cleanly first: with TLS, a connection that just drops is an error for the peer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_the_window_ends_the_session_cleanly_for_the_peer() {
    let dir = tempfile::tempdir().unwrap();
    let (addr, receiver) = loopback_receiver(dir.path().join("inbox")).await;
    let mut h = Harness::new(launch(&dir.path().join("config")));
    h.update(Message::PeerAddressChanged(addr));
    h.click("Connect");
    h.run_until("the connection", |app| app.peer().is_some())
        .await;
    h.update(Message::Quit);
    let exited = async {
        while let Some(action) = h.tasks.next().await {
            match action {
                Action::Exit => return,
                other => h.handle(other),
            }
        }
        panic!("the tasks ended without exiting");
    };
    tokio::time::timeout(WAIT, exited)
        .await
        .expect("the window exits");
    let received = receiver.await.unwrap().expect("the peer ends cleanly");
    assert!(received.is_empty());
}

/// Issue 15: picking works without a file dialog — a drop onto the window, and a typed
/// or pasted path (a `file://` URI as file managers copy it); a missing path is said
/// next to the field; a dialog that could not open is said in the window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_are_added_by_dropping_or_pasting_a_path_and_dialog_errors_are_shown() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config");
    let file = dir.path().join("notes.txt");
    std::fs::write(&file, b"minutes").unwrap();
    let folder = dir.path().join("my photos");
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::write(folder.join("a.jpg"), data(1000, 3)).unwrap();

    let mut h = Harness::new(launch(&config));
    assert_eq!(h.app.tab, Tab::Connection);
    // What the window subscription turns a drop into.
    let dropped = p2p_gui::app::window_event(
        iced::Event::Window(iced::window::Event::FileDropped(file.clone())),
        iced::event::Status::Ignored,
        iced::window::Id::unique(),
    );
    let Some(message @ Message::Dropped(_)) = dropped else {
        panic!("a drop is not turned into Dropped: {dropped:?}");
    };
    h.update(message);
    assert_eq!(h.app.tab, Tab::Send, "the drop is shown where it is sent");
    h.run_until("the dropped file measured", |app| {
        app.selection.iter().all(|s| s.measure.is_some())
    })
    .await;
    assert!(h.shows("notes.txt"));

    // A path that does not exist is refused next to the field.
    h.type_into("path", "/no/such/place");
    h.click("Add path");
    assert!(h.shows("No such file or folder: /no/such/place"));
    assert_eq!(h.app.selection.len(), 1);
    // A pasted file:// URI with an escaped space.
    h.update(Message::PathInputChanged(String::new()));
    let uri = format!("file://{}", folder.display()).replace(' ', "%20");
    h.type_into("path", &uri);
    h.click("Add path");
    assert!(
        h.app.path_input.is_empty(),
        "the field is emptied once added"
    );
    h.run_until("the pasted folder measured", |app| {
        app.selection.len() == 2 && app.selection.iter().all(|s| s.measure.is_some())
    })
    .await;
    assert!(h.shows("my photos"));
    assert_eq!(h.app.selection[1].path, folder);

    // A file dialog that could not open (no portal, no zenity) says so in the window.
    h.update(Message::PickFailed(
        "The file dialog could not open (OpenFile failed: no portal).".into(),
    ));
    assert!(h.shows_part("could not open (OpenFile failed: no portal)"));
    h.click("Receive");
    assert!(
        h.shows_part("could not open (OpenFile failed: no portal)"),
        "said where the folder is chosen too"
    );
    // The output folder can be typed as well.
    let other = dir.path().join("elsewhere");
    h.update(Message::OutputInputChanged(other.display().to_string()));
    h.update(Message::UseTypedOutput);
    assert_eq!(h.app.output_dir, other);
    assert_eq!(
        p2p_core::settings::Settings::load(&config)
            .unwrap()
            .output_dir,
        Some(other)
    );
}

/// Issue 15: without a saved folder, received files go to the Downloads folder — a
/// full path, shown in the field — never ".".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_output_folder_is_a_full_path_never_dot() {
    let dir = tempfile::tempdir().unwrap();
    let h = Harness::new(launch(&dir.path().join("config")));
    assert!(h.app.output_dir.is_absolute(), "{:?}", h.app.output_dir);
    assert_ne!(h.app.output_dir, Path::new("."));
    assert_eq!(h.app.output_input, h.app.output_dir.display().to_string());
}

/// A core sender on its own session: offers `paths` once per entry of `rounds`, then
/// closes; returns each send's result.
fn send_rounds(
    port: u16,
    rounds: Vec<Vec<PathBuf>>,
) -> tokio::task::JoinHandle<p2p_core::Result<Vec<p2p_core::Result<p2p_core::TransferSummary>>>> {
    tokio::spawn(async move {
        let options = SessionOptions {
            device_name: "laptop".into(),
            ..SessionOptions::default()
        };
        let mut session = P2PSession::connect(&format!("127.0.0.1:{port}"), &options).await?;
        let mut results = Vec::new();
        for paths in rounds {
            results.push(session.send(&paths, &NoEvents).await);
        }
        session.close().await?;
        Ok(results)
    })
}

/// Issue 15: a name clash is settled inside the offer — Replace, another folder, or
/// Decline — before anything is accepted, never reported afterwards in CLI words; once
/// received, "Open folder" opens it, and a failure to open is said in the window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_clash_is_settled_in_the_offer_and_the_folder_opens_after() {
    let dir = tempfile::tempdir().unwrap();
    let (inbox, config) = (dir.path().join("inbox"), dir.path().join("config"));
    let other = dir.path().join("other");
    let file = dir.path().join("report.pdf");
    std::fs::write(&file, data(200_000, 9)).unwrap();
    std::fs::create_dir_all(&inbox).unwrap();
    std::fs::write(inbox.join("report.pdf"), b"an older report").unwrap();

    let mut h = Harness::new(Launch {
        output: Some(inbox.clone()),
        ..launch(&config)
    });
    let port = listen(&mut h).await;
    let sender = send_rounds(port, vec![vec![file.clone()], vec![file.clone()]]);

    // First offer: the file exists; the offer asks before any Accept.
    h.run_until("the clash to be found", |app| app.clashes.is_some())
        .await;
    assert!(h.shows_part("1 of these files is already in"));
    assert!(h.shows("Replace it and accept"));
    assert!(h.shows("Choose another folder…"));
    assert!(
        !h.shows("Accept"),
        "no plain Accept while a choice is pending"
    );
    // Enter does not take it past the question.
    h.update(Message::Key(p2p_gui::app::KeyPress::Enter));
    assert!(h.app.offer.is_some());
    h.click("Replace it and accept");
    h.run_until("the replaced file", |app| {
        app.history.visible().any(|r| r.status == Status::Completed)
    })
    .await;
    assert_eq!(sha256(&inbox.join("report.pdf")), sha256(&file));
    assert!(
        !h.app.settings.overwrite,
        "replacing was for that transfer only"
    );
    assert!(!h.shows_part("--overwrite"));

    // Open folder: the opener is run on the folder; one that is missing is said.
    assert!(h.shows("Open folder"));
    h.app.opener = "/nonexistent/xdg-open".into();
    h.click("Open folder");
    h.run_until("the opener to fail", |app| app.open_error.is_some())
        .await;
    assert!(h.shows_part("is not installed"), "{:?}", h.app.open_error);
    h.app.opener = "true".into();
    h.click("Open folder");
    h.run_until("the opener to succeed", |app| app.open_error.is_none())
        .await;

    // Second offer: the same clash; another folder (typed) lifts it, then Enter accepts.
    h.run_until("the second clash", |app| app.clashes.is_some())
        .await;
    h.type_into("output-dir", "");
    h.update(Message::OutputInputChanged(other.display().to_string()));
    h.update(Message::UseTypedOutput);
    h.run_until("the clash to be looked at again", |app| {
        app.clashes.is_some()
    })
    .await;
    assert!(!h.app.offer_needs_choice());
    assert!(h.shows("Accept"));
    h.update(Message::Key(p2p_gui::app::KeyPress::Enter));
    h.run_until("the second file", |app| {
        app.history
            .visible()
            .filter(|r| r.status == Status::Completed)
            .count()
            == 2
    })
    .await;
    assert_eq!(sha256(&other.join("report.pdf")), sha256(&file));
    let results = sender.await.unwrap().unwrap();
    assert!(results.iter().all(Result::is_ok), "{results:?}");
}

/// Issue 15: Esc declines an offer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escape_declines_an_offer() {
    let dir = tempfile::tempdir().unwrap();
    let (inbox, config) = (dir.path().join("inbox"), dir.path().join("config"));
    let file = dir.path().join("a.bin");
    std::fs::write(&file, data(1000, 1)).unwrap();
    let mut h = Harness::new(Launch {
        output: Some(inbox.clone()),
        ..launch(&config)
    });
    let port = listen(&mut h).await;
    let sender = send_rounds(port, vec![vec![file]]);
    h.run_until("the offer", |app| app.offer.is_some()).await;
    assert!(h.shows("Enter accepts, Esc declines."));
    let escape = p2p_gui::app::window_event(
        iced::Event::Keyboard(iced::keyboard::Event::KeyPressed {
            key: iced::keyboard::Key::Named(iced::keyboard::key::Named::Escape),
            modified_key: iced::keyboard::Key::Named(iced::keyboard::key::Named::Escape),
            physical_key: iced::keyboard::key::Physical::Unidentified(
                iced::keyboard::key::NativeCode::Unidentified,
            ),
            location: iced::keyboard::Location::Standard,
            modifiers: iced::keyboard::Modifiers::default(),
            text: None,
            repeat: false,
        }),
        iced::event::Status::Ignored,
        iced::window::Id::unique(),
    )
    .expect("Esc is handled");
    h.update(escape);
    assert!(h.app.offer.is_none());
    h.run_until("the sender to end", |_| sender.is_finished())
        .await;
    let results = sender.await.unwrap().unwrap();
    let declined = results[0].as_ref().unwrap_err().to_string();
    assert!(declined.contains("declined"), "{declined}");
    assert!(!inbox.join("a.bin").exists());
}

/// Issue 15: closing the window during a receive asks first; closing anyway records the
/// transfer as interrupted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_mid_receive_asks_and_records_it_as_interrupted() {
    let dir = tempfile::tempdir().unwrap();
    let (inbox, config) = (dir.path().join("inbox"), dir.path().join("config"));
    let file = dir.path().join("film.bin");
    std::fs::write(&file, data(32 << 20, 4)).unwrap();
    let mut h = Harness::new(Launch {
        output: Some(inbox.clone()),
        auto_accept: true,
        ..launch(&config)
    });
    let port = listen(&mut h).await;
    let sender = tokio::spawn(async move {
        let options = SessionOptions {
            max_speed: Some(4 << 20),
            ..SessionOptions::default()
        };
        let mut session = P2PSession::connect(&format!("127.0.0.1:{port}"), &options).await?;
        session.send(&[&file], &NoEvents).await
    });
    h.run_until("some bytes received", |app| {
        app.transfer.as_ref().is_some_and(|t| t.done_bytes > 0)
    })
    .await;
    h.update(Message::CloseRequested);
    assert!(h.app.confirm_close, "asks instead of closing");
    assert!(h.shows("Close and stop"));
    h.click("Keep the window open");
    assert!(!h.app.confirm_close);
    assert!(h.app.transfer.as_ref().unwrap().is_running());
    h.update(Message::CloseRequested);
    h.click("Close and stop");
    h.run_until("the interrupted record", |app| {
        app.history
            .visible()
            .any(|r| r.status == Status::Interrupted)
    })
    .await;
    let record = h.app.history.visible().next().unwrap();
    assert_eq!(record.direction, Direction::Receive);
    assert_eq!(
        record.error.as_deref(),
        Some("the window was closed during the transfer")
    );
    // And it is in the file, for the next window and the CLI.
    let exited = async {
        while let Some(action) = h.tasks.next().await {
            match action {
                Action::Exit => return,
                other => h.handle(other),
            }
        }
    };
    tokio::time::timeout(WAIT, exited)
        .await
        .expect("the window exits");
    let loaded = p2p_core::history::History::in_dir(&config.join("data"))
        .load()
        .unwrap();
    assert!(loaded
        .records
        .iter()
        .any(|r| r.status == Status::Interrupted && r.direction == Direction::Receive));
    assert!(sender.await.unwrap().is_err());
}

/// Issue 15: a refused send is not offered for resume; Clear forgets an interrupted one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_send_is_not_offered_for_resume() {
    let dir = tempfile::tempdir().unwrap();
    let (inbox, config) = (dir.path().join("inbox"), dir.path().join("config"));
    let file = dir.path().join("taken.bin");
    std::fs::write(&file, data(100_000, 2)).unwrap();
    std::fs::create_dir_all(&inbox).unwrap();
    std::fs::write(inbox.join("taken.bin"), b"already here").unwrap();
    let (addr, _receiver) = loopback_receiver(inbox.clone()).await;
    let mut h = Harness::new(Launch {
        connect: Some(addr),
        send: vec![file.clone()],
        ..launch(&config)
    });
    h.run_until("the refusal", |app| {
        app.history.visible().any(|r| r.status == Status::Failed)
    })
    .await;
    // The worker's last word on the send (`SendFailed`) takes the resume offer back.
    h.run_until("the resume offer to go", |app| app.resumable.is_none())
        .await;
    assert!(!h.app.is_busy());
    assert!(!h.shows_part("stopped before the end"));

    // Clear forgets an interrupted send too (it is not what will be sent next).
    h.update(Message::Picked(vec![file.clone()]));
    h.update(Message::ClearSelection);
    assert!(h.app.resumable.is_none());
}

/// Issue 15: the History tab is live — a record the CLI appends shows up without a
/// restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_history_tab_shows_records_written_by_the_cli_while_open() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config");
    let mut h = Harness::new(Launch {
        tab: Some(Tab::History),
        ..launch(&config)
    });
    h.run_until("the history read", |app| app.history_status.is_none())
        .await;
    h.settle().await;
    assert!(h.shows("No transfers yet"));
    // What `p2p-transfer send` appends when it ends.
    let record = p2p_core::history::Record::now(
        uuid::Uuid::new_v4(),
        Direction::Send,
        "desk".into(),
        vec!["from-the-cli.txt".into()],
        1,
        10,
        Duration::from_secs(1),
        Status::Completed,
        None,
    );
    p2p_core::history::History::in_dir(&config.join("data"))
        .append(&record)
        .unwrap();
    // The timer's tick (every HISTORY_POLL in the window).
    h.update(Message::HistoryTick);
    h.run_until("the record to show", |app| {
        app.history.visible().count() == 1
    })
    .await;
    assert!(h.shows("To desk: from-the-cli.txt"));
}

/// Issue 15: auto-accept does not take an offer whose files exist (and may not be
/// replaced): it waits for the person's choice instead of failing with CLI words.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_accept_asks_when_files_would_clash() {
    let dir = tempfile::tempdir().unwrap();
    let (inbox, config) = (dir.path().join("inbox"), dir.path().join("config"));
    let file = dir.path().join("a.bin");
    std::fs::write(&file, data(1000, 1)).unwrap();
    std::fs::create_dir_all(&inbox).unwrap();
    std::fs::write(inbox.join("a.bin"), b"mine").unwrap();
    let mut h = Harness::new(Launch {
        output: Some(inbox.clone()),
        auto_accept: true,
        ..launch(&config)
    });
    let port = listen(&mut h).await;
    let sender = send_rounds(port, vec![vec![file.clone()]]);
    h.run_until("the clash to be shown", |app| app.offer_needs_choice())
        .await;
    assert!(h.shows("Replace it and accept"));
    h.click("Decline");
    h.run_until("the sender to end", |_| sender.is_finished())
        .await;
    assert_eq!(std::fs::read(inbox.join("a.bin")).unwrap(), b"mine");
}

/// Issue 15: one screen, one click — files picked on the Send tab, a trusted receiver
/// found on the network, "Send here" connects and sends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_click_on_a_found_device_sends_the_selection() {
    let dir = tempfile::tempdir().unwrap();
    let (inbox, config) = (dir.path().join("inbox"), dir.path().join("config"));
    let file = dir.path().join("slides.pdf");
    std::fs::write(&file, data(500_000, 8)).unwrap();
    let discovery = loopback_discovery();
    let key = Identity::generate_shared();
    let mut trust = TrustStore::load(&config.join("data")).unwrap();
    trust.add(key.device_id(), "desk", Some(key.fingerprint()));
    trust.save().unwrap();
    let listener = p2p_core::net::tcp::listen("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let receiver = tokio::spawn({
        let options = SessionOptions {
            security: Security::new(
                key.clone(),
                Admission::default().with_pin(Security::default().device_id()),
            )
            .unwrap(),
            ..SessionOptions::default()
        };
        let inbox = inbox.clone();
        async move {
            let mut session = P2PSession::accept(&listener, &options).await?;
            let receive = ReceiveOptions {
                output_dir: inbox,
                overwrite: false,
            };
            session.run_event_loop(&receive, &NoEvents).await
        }
    });
    let beacon = p2p_core::discovery::Beacon::new(key.device_id(), "desk", addr.port());
    let _announcer = p2p_core::discovery::Announcer::start(beacon, &discovery).unwrap();

    let mut h = Harness::new(Launch {
        discovery: Some(discovery),
        find_peers: true,
        tab: Some(Tab::Send),
        ..launch(&config)
    });
    assert!(h.app.is_browsing(), "looking from the start");
    h.update(Message::Picked(vec![file.clone()]));
    // (Not connected yet, so `send_blocker` names that first: wait for the measure
    // itself, which enables "Send here".)
    h.run_until("the beacon and the measure", |app| {
        !app.found_peers.is_empty()
            && !app.selection.is_empty()
            && app
                .selection
                .iter()
                .all(|s| matches!(s.measure, Some(Ok(_))))
    })
    .await;
    assert!(h.shows("Send to a device on this network"));
    assert!(h.shows_part(&format!("desk at {addr}")));
    h.click("Send here");
    h.run_until("the send to finish", |app| {
        app.history.visible().any(|r| r.status == Status::Completed)
    })
    .await;
    assert_eq!(sha256(&inbox.join("slides.pdf")), sha256(&file));
    h.click("Connection");
    h.click("Disconnect");
    h.click("Stop looking");
    h.settle().await;
    receiver.await.unwrap().unwrap();
}

/// Issue 15: waiting shows this machine's name and its addresses, not 0.0.0.0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_shows_this_computers_name_and_addresses() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = Harness::new(launch(&dir.path().join("config")));
    let port = listen(&mut h).await;
    h.run_until("the addresses", |app| !app.addresses.is_empty())
        .await;
    let name = p2p_core::session::default_device_name();
    assert!(
        h.shows_part(&format!("this computer is {name} at ")),
        "{:?}",
        h.app.addresses
    );
    assert!(
        h.shows_part(&format!("127.0.0.1:{port}")),
        "loopback is listed too"
    );
    assert!(!h.shows_part("0.0.0.0"));
}

/// A p2p-core listener on 127.0.0.1:0 that accepts only `transport` and receives until
/// the peer closes. Its task returns what the session ran on and the transfers received.
async fn loopback_listener(
    output: PathBuf,
    transport: TransportChoice,
    name: &str,
) -> (
    String,
    tokio::task::JoinHandle<p2p_core::Result<(Option<Transport>, usize)>>,
) {
    let endpoint = Endpoint::listen_with("127.0.0.1:0", transport)
        .await
        .unwrap();
    assert_eq!(
        endpoint.transports(),
        match transport {
            TransportChoice::Quic => vec![Transport::Quic],
            TransportChoice::Tcp => vec![Transport::Tcp],
            TransportChoice::Auto => vec![Transport::Quic, Transport::Tcp],
        }
    );
    let addr = endpoint.local_addr().unwrap().to_string();
    let options = SessionOptions {
        device_name: name.into(),
        ..SessionOptions::default()
    };
    let receiver = tokio::spawn(async move {
        let mut session = P2PSession::open(&endpoint, &options).await?;
        let on = session.transport();
        let options = ReceiveOptions {
            output_dir: output,
            overwrite: false,
        };
        let received = session.run_event_loop(&options, &NoEvents).await?;
        // A QUIC close leaves from this process: let it go before the endpoint does.
        endpoint.shut_down().await;
        Ok((on, received.len()))
    });
    (addr, receiver)
}

/// Picks `file` on the Send tab, sends it to the connected peer and waits for its
/// record; checks the headline names `peer` and `over` (the transport) while it runs
/// and once it is done.
async fn send_one(h: &mut Harness, file: &Path, peer: &str, over: &str) {
    let records = h.app.history.visible().count();
    h.click("Send");
    h.update(Message::ClearSelection);
    h.update(Message::Picked(vec![file.to_path_buf()]));
    h.run_until("the file to be measured", |app| {
        app.send_blocker().is_none()
    })
    .await;
    h.click("Start sending");
    h.run_until("the transfer to start", |app| {
        app.transfer.as_ref().is_some_and(|t| t.is_running())
    })
    .await;
    let running = format!("Sending 1 file to {peer}{over}");
    assert!(h.shows(&running), "{running}: {:?}", h.app.transfer);
    h.run_until("the transfer's record", |app| {
        app.history.visible().count() > records
    })
    .await;
    assert!(
        matches!(
            h.app.transfer.as_ref().unwrap().state,
            TransferState::Finished { .. }
        ),
        "{:?}",
        h.app.transfer
    );
    let done = format!("Done: 1 file to {peer}{over} in ");
    assert!(h.shows_part(&done), "{done}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_transport_setting_is_saved_and_offered_with_help() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config");
    {
        let mut h = Harness::new(launch(&config));
        assert_eq!(h.app.settings.transport, TransportChoice::Auto);
        h.click("Settings");
        for label in ["Transport", "Automatic (recommended)", "QUIC", "TCP"] {
            assert!(h.shows(label), "{label}");
        }
        for help in [
            "QUIC where it connects, TCP otherwise — and TCP to this same machine",
            "Fast on long or lossy links",
            "needs UDP",
            "For networks that block UDP",
        ] {
            assert!(h.shows_part(help), "{help}");
        }
        h.click("QUIC");
        assert_eq!(h.app.settings.transport, TransportChoice::Quic);
        let saved = std::fs::read_to_string(config.join("settings.json")).unwrap();
        assert!(saved.contains("\"transport\": \"quic\""), "{saved}");
        h.click("TCP");
        assert_eq!(h.app.settings.transport, TransportChoice::Tcp);
    }
    // Saved like the other settings, in the file the CLI reads too.
    let loaded = p2p_core::settings::Settings::load(&config).unwrap();
    assert_eq!(loaded.transport, TransportChoice::Tcp);
    let mut h = Harness::new(launch(&config));
    assert_eq!(h.app.settings.transport, TransportChoice::Tcp);
    h.click("Settings");
    h.click("Automatic (recommended)");
    drop(h);
    let h = Harness::new(launch(&config));
    assert_eq!(h.app.settings.transport, TransportChoice::Auto);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_transport_setting_reaches_the_dialer_and_each_transfer_names_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let (inbox, config) = (dir.path().join("inbox"), dir.path().join("config"));
    std::fs::create_dir_all(&inbox).unwrap();
    let (first, second) = (dir.path().join("report.bin"), dir.path().join("notes.bin"));
    std::fs::write(&first, data(3 << 20, 11)).unwrap();
    std::fs::write(&second, data(1 << 20, 12)).unwrap();
    let (addr, listener) = loopback_listener(inbox.clone(), TransportChoice::Quic, "far").await;

    // Automatic dials a peer on this machine over TCP only: the QUIC-only peer is not
    // reached, so what follows is the setting's doing.
    let mut h = Harness::new(launch(&config));
    h.type_into("peer-address", &addr);
    h.click("Connect");
    h.run_until("the connect error", |app| app.worker.is_none())
        .await;
    assert!(
        h.shows_part(&format!("nothing is listening at {addr}")),
        "{:?}",
        h.app.notice
    );

    h.click("Settings");
    h.click("QUIC");
    h.click("Connection");
    h.click("Connect");
    h.run_until("the connection", |app| app.peer().is_some())
        .await;
    assert_eq!(h.app.peer().unwrap().transport, Some(Transport::Quic));
    assert!(
        h.shows_part(&format!("Connected to far ({addr}) over QUIC · ")),
        "the status bar names the transport"
    );
    send_one(&mut h, &first, "far", " over QUIC").await;
    let record = h.app.history.visible().next().unwrap().clone();
    assert_eq!(record.status, Status::Completed);
    assert_eq!(record.transports, [Transport::Quic], "{record:?}");
    assert_eq!(sha256(&inbox.join("report.bin")), sha256(&first));
    h.click("History");
    assert!(h.shows("To far over QUIC: report.bin"));

    h.click("Connection");
    h.click("Disconnect");
    h.settle().await;
    let (on, received) = listener.await.unwrap().expect("the listener ends cleanly");
    assert_eq!((on, received), (Some(Transport::Quic), 1));

    // The next connection, over TCP: its record names TCP only, not the QUIC of the
    // session before.
    let (addr, listener) = loopback_listener(inbox.clone(), TransportChoice::Tcp, "near").await;
    h.click("Settings");
    h.click("TCP");
    h.click("Connection");
    h.update(Message::PeerAddressChanged(addr.clone()));
    h.click("Connect");
    h.run_until("the connection", |app| app.peer().is_some())
        .await;
    assert_eq!(h.app.peer().unwrap().transport, Some(Transport::Tcp));
    send_one(&mut h, &second, "near", " over TCP").await;
    let record = h.app.history.visible().next().unwrap().clone();
    assert_eq!(record.transports, [Transport::Tcp], "{record:?}");
    assert_eq!(sha256(&inbox.join("notes.bin")), sha256(&second));
    h.click("History");
    assert!(h.shows("To near over TCP: notes.bin"));
    assert!(h.shows("To far over QUIC: report.bin"));
    h.click("Connection");
    h.click("Disconnect");
    h.run_until("the records to be written", |app| app.history_writes == 0)
        .await;
    h.settle().await;
    assert_eq!(
        listener.await.unwrap().expect("the listener ends cleanly"),
        (Some(Transport::Tcp), 1)
    );

    // In the file the CLI's `history` reads, in the same order.
    let saved = p2p_core::history::History::in_dir(&config.join("data"))
        .load()
        .unwrap()
        .records;
    let transports: Vec<_> = saved.iter().map(|r| r.transports.clone()).collect();
    assert_eq!(
        transports,
        [vec![Transport::Quic], vec![Transport::Tcp]],
        "{saved:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listening_window_takes_only_the_chosen_transport() {
    let dir = tempfile::tempdir().unwrap();
    let (inbox, config) = (dir.path().join("inbox"), dir.path().join("config"));
    let file = dir.path().join("clip.bin");
    std::fs::write(&file, data(2 << 20, 13)).unwrap();
    let mut h = Harness::new(Launch {
        output: Some(inbox.clone()),
        auto_accept: true,
        ..launch(&config)
    });
    h.click("Settings");
    h.click("QUIC");
    h.click("Connection");
    let port = listen(&mut h).await;
    let addr = format!("127.0.0.1:{port}");
    let options = SessionOptions {
        device_name: "laptop".into(),
        ..SessionOptions::default()
    };

    // Nothing takes TCP on that port.
    let refused = P2PSession::open(&Endpoint::dial_with(&addr, TransportChoice::Tcp), &options)
        .await
        .err()
        .expect("a QUIC-only window refuses TCP");
    assert!(
        matches!(&refused, p2p_core::Error::Connect { source, .. }
            if source.kind() == std::io::ErrorKind::ConnectionRefused),
        "{refused:?}"
    );

    let sender = {
        let (addr, file) = (addr.clone(), file.clone());
        tokio::spawn(async move {
            let mut session =
                P2PSession::open(&Endpoint::dial_with(&addr, TransportChoice::Quic), &options)
                    .await?;
            let on = session.transport();
            session.send(&[file], &NoEvents).await?;
            session.close().await?;
            Ok::<_, p2p_core::Error>(on)
        })
    };
    h.run_until("the connection", |app| app.peer().is_some())
        .await;
    assert!(h.shows_part(" over QUIC · "), "the status bar names QUIC");
    h.run_until("the received file's record", |app| {
        app.history.visible().next().is_some()
    })
    .await;
    assert_eq!(sender.await.unwrap().unwrap(), Some(Transport::Quic));
    let record = h.app.history.visible().next().unwrap().clone();
    assert_eq!(
        (record.status, record.direction),
        (Status::Completed, Direction::Receive)
    );
    assert_eq!(record.transports, [Transport::Quic], "{record:?}");
    assert!(h.shows_part("Done: 1 file from laptop over QUIC in "));
    assert_eq!(sha256(&inbox.join("clip.bin")), sha256(&file));
    h.click("History");
    assert!(h.shows("From laptop over QUIC: clip.bin"));

    // The peer closed its session; the window waits for the next one.
    h.run_until("the peer to leave", |app| app.peer().is_none())
        .await;
    assert!(listening(&h.app));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_cancelled_over_quic_resumes_over_tcp_and_its_record_names_both() {
    let dir = tempfile::tempdir().unwrap();
    let (inbox, config) = (dir.path().join("inbox"), dir.path().join("config"));
    std::fs::create_dir_all(&inbox).unwrap();
    let file = dir.path().join("big.bin");
    std::fs::write(&file, data(24 << 20, 14)).unwrap();
    let (addr, listener) = loopback_listener(inbox.clone(), TransportChoice::Quic, "far").await;
    // Limited, so that a Cancel clicked at 4 MiB lands well before the end (see
    // `a_cancelled_send_is_offered_for_resume_and_resumes_where_it_stopped`).
    let settings = p2p_core::settings::Settings {
        bandwidth_limit: 16 << 20,
        transport: TransportChoice::Quic,
        ..small_steps()
    };
    let mut h = send_and_cancel(&config, settings, addr, &file, 4 << 20).await;
    assert!(listener.await.unwrap().is_err(), "the peer saw it stop");
    let (_, id) = h.app.resumable.clone().expect("offered for resume");
    let record = h.app.history.visible().next().unwrap().clone();
    assert_eq!(
        (record.status, record.transports.clone()),
        (Status::Interrupted, vec![Transport::Quic]),
        "{record:?}"
    );

    // The same device again, now over TCP: Resume sends the rest of the same transfer.
    let (addr, listener) = loopback_listener(inbox.clone(), TransportChoice::Tcp, "far").await;
    h.click("Settings");
    h.click("TCP");
    h.click("Connection");
    h.update(Message::PeerAddressChanged(addr));
    h.click("Connect");
    h.run_until("the connection", |app| app.peer().is_some())
        .await;
    h.click("Send");
    h.click("Resume");
    h.run_until("the resumed send to finish", |app| {
        app.transfer
            .as_ref()
            .is_some_and(|t| matches!(t.state, TransferState::Finished { .. }))
    })
    .await;
    let t = h.app.transfer.as_ref().unwrap();
    assert_eq!(t.transfer_id, id, "the same transfer, resumed");
    assert!(t.resumed_bytes > 0, "resumed {} bytes", t.resumed_bytes);
    assert!(h.shows_part("Done: 1 file to far over TCP in "));
    let record = h.app.history.visible().next().unwrap().clone();
    assert_eq!(
        (record.status, record.transports.clone()),
        (Status::Completed, vec![Transport::Quic, Transport::Tcp]),
        "{record:?}"
    );
    assert_eq!(sha256(&inbox.join("big.bin")), sha256(&file));
    h.click("History");
    assert!(h.shows("To far over QUIC, then TCP: big.bin"));
    assert!(h.shows("To far over QUIC: big.bin"));
    h.click("Connection");
    h.click("Disconnect");
    h.settle().await;
    assert_eq!(
        listener.await.unwrap().expect("the listener ends cleanly"),
        (Some(Transport::Tcp), 1)
    );
}

/// A rendezvous server (p2p-core's, the one `p2p-transfer rendezvous` runs) on
/// 127.0.0.1, in this process; its `host:port`.
async fn rendezvous_server() -> String {
    use p2p_core::rendezvous::server::{Limits, Server, ServerConfig};
    let server = Server::bind(ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        turn: None,
        limits: Limits::default(),
    })
    .await
    .unwrap();
    let addr = server.local_addr().to_string();
    tokio::spawn(server.run());
    addr
}

/// A p2p-core receiver (a device of its own) that joins the mailbox of `code` on the
/// rendezvous `server` and receives into `output` until the peer closes.
fn rendezvous_receiver(
    server: String,
    code: Code,
    output: PathBuf,
) -> tokio::task::JoinHandle<p2p_core::Result<Vec<p2p_core::TransferSummary>>> {
    tokio::spawn(async move {
        let rendezvous = p2p_core::net::traversal::Rendezvous::claim(&server, &code).await?;
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
            output_dir: output,
            overwrite: false,
        };
        let received = session.run_event_loop(&options, &NoEvents).await;
        endpoint.shut_down().await;
        received
    })
}

/// With a rendezvous server set, "Wait for the receiver" opens a mailbox there and
/// shows the code made from its number; a p2p-core receiver that joins it gets the
/// file byte-identical, and the window says the path (lan or direct) next to the
/// transport, in the status line, the progress headline and the record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_code_through_a_rendezvous_sends_to_a_core_receiver_and_the_path_is_shown() {
    let dir = tempfile::tempdir().unwrap();
    let (inbox, config) = (dir.path().join("inbox"), dir.path().join("config"));
    let file = dir.path().join("far-away.bin");
    std::fs::write(&file, data(3 << 20, 41)).unwrap();
    let server = rendezvous_server().await;

    let mut h = Harness::new(Launch {
        rendezvous: Some(server.clone()),
        ..own_key(&config)
    });
    h.click("Send");
    h.update(Message::Picked(vec![file.clone()]));
    assert!(h.shows_part(&format!("Codes go through the rendezvous {server}")));
    h.click("Wait for the receiver");
    assert!(
        h.shows(&format!("Opening a mailbox on the rendezvous {server}…")),
        "status bar"
    );
    h.run_until("the code", |app| app.waiting_code.is_some())
        .await;
    let code = h.app.waiting_code.clone().unwrap();
    assert!(h.shows(&code.to_string()), "the code, large");
    assert!(h.shows(&format!(
        "Waiting for the peer with code {}-… through the rendezvous {server}",
        code.nameplate()
    )));
    // No local listener: the peer comes through the rendezvous.
    assert!(h.app.worker.as_ref().unwrap().listening_on.is_none());

    let receiver = rendezvous_receiver(server.clone(), code.clone(), inbox.clone());
    h.run_until("the connection", |app| app.peer().is_some())
        .await;
    let peer = h.app.peer().unwrap();
    assert_eq!(
        peer.identity.as_ref().map(|i| i.admitted.clone()),
        Some(Admitted::Code)
    );
    assert_eq!(peer.transport, Some(Transport::Quic));
    let path = peer.path.expect("a rendezvous connection has a path");
    let label = path.kind.label();
    assert!(
        label == "lan" || label == "direct",
        "two processes on one machine, no relay configured: {path:?}"
    );
    assert_eq!(peer.addr, Some(path.addr));
    assert!(
        h.shows_part(&format!("over QUIC · {label} · device")),
        "status line"
    );

    h.run_until("the file to be measured", |app| {
        app.send_blocker().is_none()
    })
    .await;
    h.click("Start sending");
    h.run_until("the transfer to start", |app| app.transfer.is_some())
        .await;
    assert_eq!(h.app.transfer.as_ref().unwrap().path, Some(path.kind));
    assert!(
        h.shows_part("Sending 1 file to ") && h.shows_part(&format!("QUIC · {label}")),
        "progress headline"
    );
    h.run_until("the record", |app| app.history.visible().next().is_some())
        .await;
    assert!(
        h.shows_part(&format!("over QUIC · {label} in ")),
        "done headline"
    );
    let record = h.app.history.visible().next().unwrap().clone();
    assert_eq!(record.status, Status::Completed);
    assert_eq!(record.paths, [path.kind], "{record:?}");
    assert_eq!(sha256(&inbox.join("far-away.bin")), sha256(&file));
    // History says it as `p2p-transfer history` does.
    h.click("History");
    assert!(
        h.shows_part(&format!(" over QUIC ({label}): ")),
        "history line"
    );
    // In the history file too, for the CLI to read.
    h.run_until("the record written", |app| app.history_writes == 0)
        .await;
    let written = p2p_core::history::History::in_dir(&config.join("data"))
        .load()
        .unwrap();
    assert_eq!(
        written.records.last().map(|r| r.paths.clone()),
        Some(vec![path.kind])
    );

    h.click("Connection");
    h.click("Disconnect");
    h.settle().await;
    let received = receiver.await.unwrap().expect("the receiver ends cleanly");
    assert_eq!(received.len(), 1);
}

/// The side given a code joins its mailbox on the rendezvous; a code nobody waits
/// for, and a rendezvous that does not answer, are said in words.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rendezvous_failures_are_said_in_words() {
    let dir = tempfile::tempdir().unwrap();
    let server = rendezvous_server().await;
    let mut h = Harness::new(Launch {
        rendezvous: Some(server.clone()),
        ..own_key(&dir.path().join("config"))
    });
    h.click("Receive");
    h.type_into("code", "42-guitar-orbit");
    h.click("Connect to the sender");
    h.run_until("the worker to stop", |app| app.worker.is_none())
        .await;
    let shown = format!("{:?}", h.app.notice);
    assert!(
        shown.contains("no one is waiting on nameplate 42: check the code"),
        "{shown}"
    );

    // Nothing listens on this port (bound, then closed).
    let closed = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().to_string()
    };
    let mut h = Harness::new(Launch {
        rendezvous: Some(closed.clone()),
        ..own_key(&dir.path().join("config2"))
    });
    h.click("Send");
    h.click("Wait for the receiver");
    h.run_until("the worker to stop", |app| app.worker.is_none())
        .await;
    let shown = format!("{:?}", h.app.notice);
    assert!(
        shown.contains(&format!(
            "cannot reach the rendezvous server {closed} (nothing answers there)"
        )),
        "{shown}"
    );
    assert!(
        shown.contains("Rendezvous server under Settings"),
        "{shown}"
    );
    assert!(h.shows_part("cannot reach the rendezvous server"));
    assert_eq!(h.app.waiting_code, None);
}

/// The Settings tab's rendezvous field: a bad value is said under it and not saved; a
/// good one is saved in settings.json and used by the next code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rendezvous_setting_is_checked_saved_and_used() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config");
    let mut h = Harness::new(own_key(&config));
    // Tall enough for the whole Settings tab (the field is near its end).
    h.size = iced::Size::new(900.0, 1400.0);
    h.click("Settings");
    assert!(h.shows("Rendezvous server"));
    assert!(
        h.shows("Codes work across the internet through this server; empty: this network only.")
    );
    h.type_into("rendezvous", "rdv.example.net:");
    assert!(
        h.shows_part("is not a port"),
        "{:?}",
        h.app.form.rendezvous_error
    );
    // What was typed before the ':' was a host (the default port); the rest is not kept.
    assert_eq!(
        h.app.rendezvous_server().as_deref(),
        Some("rdv.example.net:4000")
    );
    h.type_into("rendezvous", "4100");
    assert_eq!(h.app.form.rendezvous_error, None);
    assert_eq!(
        h.app.rendezvous_server().as_deref(),
        Some("rdv.example.net:4100")
    );
    let saved = p2p_core::settings::Settings::load(&config).unwrap();
    assert_eq!(saved.rendezvous.as_deref(), Some("rdv.example.net:4100"));
    // After a restart the field shows it, and the code panels say where codes go.
    let mut h = Harness::new(own_key(&config));
    h.size = iced::Size::new(900.0, 1400.0);
    h.click("Settings");
    assert!(h.shows("rdv.example.net:4100"));
    h.click("Receive");
    assert!(h.shows_part("Codes go through the rendezvous rdv.example.net:4100"));
    // P2P_RENDEZVOUS (empty) turns it off for one run.
    let h = Harness::new(Launch {
        rendezvous: Some(String::new()),
        ..own_key(&config)
    });
    assert_eq!(h.app.rendezvous_server(), None);
}
