//! The "Get shared files" tab: what it shows of a swarm download (built from
//! constructed statuses), the errors a person can cause, and a real download from a
//! seed through a tracker (a rendezvous server in this process), byte-identical.

use std::path::Path;
use std::time::Duration;

use iced::futures::stream::{SelectAll, StreamExt};
use iced::Task;
use iced_test::futures::BoxStream;
use iced_test::runtime::{task, Action};
use iced_test::{selector, Simulator};
use p2p_core::net::Identity;
use p2p_core::rendezvous::server::{Limits, Server, ServerConfig};
use p2p_core::swarm::{
    hash_share, Hash, Host, PeerStatus, ShareFile, SwarmConfig, SwarmEvent, SwarmState,
    SwarmStatus, Ticket,
};
use p2p_core::text::printable;
use p2p_gui::get::{Download, Phase, Source};
use p2p_gui::{App, Launch, Message, Tab};

mod common;
use common::{data, sha256};

const WAIT: Duration = Duration::from_secs(90);

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

    fn ui(&self) -> Simulator<'_, Message> {
        Simulator::with_size(
            iced::Settings {
                default_font: p2p_gui::FONT,
                ..iced::Settings::default()
            },
            iced::window::Settings::default().size,
            self.app.view(),
        )
    }

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

    /// Whether the window shows a text that contains `part`.
    fn shows_part(&self, part: &str) -> bool {
        let selector = |candidate: selector::Candidate<'_>| match candidate {
            selector::Candidate::Text { content, .. } if content.contains(part) => Some(()),
            _ => None,
        };
        self.ui().find(selector).is_ok()
    }

    /// Every text the window shows (for failure messages and "nothing raw" checks).
    fn texts(&self) -> Vec<String> {
        let mut all = Vec::new();
        // Selects nothing, so every text is visited.
        let selector = |candidate: selector::Candidate<'_>| {
            if let selector::Candidate::Text { content, .. } = candidate {
                all.push(content.to_owned());
            }
            None::<()>
        };
        let _ = self.ui().find(selector);
        all
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

/// A window with its settings under `dir`, no discovery, this process' key.
fn launch(dir: &Path) -> Launch {
    Launch {
        config_dir: Some(dir.join("config")),
        data_dir: None,
        identity: Some(Identity::generate_shared()),
        output: Some(dir.join("inbox")),
        rendezvous: Some(String::new()),
        ..Launch::default()
    }
}

fn ticket(tracker: Option<&str>) -> Ticket {
    Ticket {
        root: Hash([9; 32]),
        tracker: tracker.map(str::to_owned),
        trusted: vec![],
    }
}

/// A status of `pieces` pieces, the first `have` of them here.
fn status(name: &str, pieces: u32, have: u32, peers: Vec<PeerStatus>) -> SwarmStatus {
    let mut s = SwarmStatus::new(Hash([9; 32]));
    s.name = name.to_owned();
    s.state = SwarmState::Downloading;
    s.pieces = pieces;
    s.total_bytes = u64::from(pieces) << 18;
    s.have = vec![0; (pieces as usize).div_ceil(8)];
    for i in 0..have {
        s.have[(i / 8) as usize] |= 0x80 >> (i % 8);
    }
    s.have_count = have;
    s.have_bytes = u64::from(have) << 18;
    s.downloaded = s.have_bytes;
    s.peers = peers;
    s
}

fn peer(device: &str, path: &str, has: u32) -> PeerStatus {
    PeerStatus {
        device: device.to_owned(),
        addr: None,
        path: path.to_owned(),
        incoming: false,
        has,
        downloaded: 3 << 20,
        uploaded: 1 << 20,
        rate: 2.0 * 1048576.0,
        in_flight: 4,
    }
}

/// Shows a download of a constructed status on the Get tab.
fn showing(h: &mut Harness, status: SwarmStatus) {
    let source = Source::Ticket(ticket(Some("tracker.example:4000")));
    let mut download = Download::new(&source, "tracker.example:4000".into(), "/tmp/in".into());
    download.apply_status(status);
    h.app.get.download = Some(download);
    h.click("Get shared files");
    assert_eq!(h.app.tab, Tab::Get);
}

#[tokio::test]
async fn a_download_shows_its_share_progress_and_peers() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = Harness::new(launch(dir.path()));
    showing(
        &mut h,
        status(
            "holiday",
            40,
            10,
            vec![
                peer("ABCDE-FGHIJ-KLMNO-PQRST-UVWXY", "lan", 40),
                peer("ZZZZZ-YYYYY-XXXXX-WWWWW-VVVVV", "relay", 20),
            ],
        ),
    );
    assert!(h.shows_part("holiday · 10.0 MiB"), "{:#?}", h.texts());
    assert!(h.shows_part("25%"));
    assert!(h.shows_part("2.5 MiB of 10.0 MiB · 10 of 40 pieces · 4.0 MiB/s"));
    assert!(h.shows_part("Downloading from 2 peers"));
    assert!(h.shows_part("each cell is one of the 40 pieces"));
    // The table: short ids, paths, who called, share of the pieces, bytes, rate.
    for cell in [
        "ABCDE…", "ZZZZZ…", "lan", "relay", "we (out)", "100%", "50%", "3.0 MiB",
    ] {
        assert!(h.shows_part(cell), "{cell} missing: {:#?}", h.texts());
    }
    assert!(h.shows_part("2.0 MiB/s"));
    assert!(h.app.title().starts_with("25%"), "{}", h.app.title());

    // Events become lines; a bad peer says what happened to it.
    let download = h.app.get.download.as_mut().unwrap();
    download.apply_event(&SwarmEvent::BadPeer {
        device: "ZZZZZ-YYYYY-XXXXX-WWWWW-VVVVV".into(),
        piece: 7,
    });
    download.apply_event(&SwarmEvent::Note(
        "the resume state was for another share: ignored".into(),
    ));
    assert!(h.shows_part("Peer ZZZZZ… sent a damaged piece (7)"));
    assert!(h.shows_part("the resume state was for another share"));
    h.click("Cancel");

    // A share of many pieces: cells stand for runs of them.
    let mut h = Harness::new(launch(dir.path()));
    showing(&mut h, status("big", 100_000, 50_000, vec![]));
    assert!(h.shows_part("each cell stands for about 25 of the 100000 pieces"));
    assert_eq!(h.app.get.download.as_ref().unwrap().map.cells.len(), 4096);
    assert!(h.shows_part("Peers: none connected yet"));
    assert!(h.shows_part("Looking for peers on the tracker"));

    // Done: the folder and the file count.
    let download = h.app.get.download.as_mut().unwrap();
    download.files = Some(3);
    download.phase = Phase::Done;
    assert!(
        h.shows_part("Done — 3 files in /tmp/in"),
        "{:#?}",
        h.texts()
    );
    assert!(h.shows_part("Open folder"));
}

#[tokio::test]
async fn a_hostile_share_name_and_peer_strings_are_escaped() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = Harness::new(launch(dir.path()));
    let name = "invoice\u{202e}fdp.exe\n\u{1b}[2Jgone";
    let mut hostile = peer("EVIL\u{202e}-X", "lan\u{7}", 1);
    hostile.rate = f64::NAN;
    showing(&mut h, status(name, 4, 1, vec![hostile]));
    h.app
        .get
        .download
        .as_mut()
        .unwrap()
        .apply_event(&SwarmEvent::PeerGone {
            device: "EVIL\u{202e}-X".into(),
            reason: "bye\u{202e}\r\nfake line".into(),
        });
    let texts = h.texts();
    let escaped = printable(name).into_owned();
    assert_ne!(escaped, name);
    assert!(texts.iter().any(|t| t.contains(&escaped)), "{texts:#?}");
    for t in &texts {
        assert!(
            !t.chars()
                .any(|c| c == '\u{202e}' || c == '\u{1b}' || c == '\u{7}' || c == '\r'),
            "raw control or bidi character drawn: {t:?}"
        );
    }
    // A rate that is not a number shows as zero, not NaN.
    assert!(!texts.iter().any(|t| t.contains("NaN")), "{texts:#?}");
}

#[tokio::test]
async fn bad_input_is_said_in_the_tab() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = Harness::new(launch(dir.path()));
    h.click("Get shared files");
    h.update(Message::GetInputChanged("p2p1garbage!".into()));
    h.click("Get");
    h.run_until("the input to be read", |app| !app.get.reading)
        .await;
    assert!(h.shows_part("Not a share ticket"), "{:#?}", h.texts());
    assert!(h.app.get.download.is_none());

    // A ticket without a tracker, and no rendezvous server set.
    h.update(Message::GetInputChanged(ticket(None).to_string()));
    assert!(
        !h.shows_part("Not a share ticket"),
        "typing clears the error"
    );
    h.click("Get");
    h.run_until("the input to be read", |app| !app.get.reading)
        .await;
    assert!(
        h.shows_part("This ticket names no tracker; set a rendezvous server in Settings"),
        "{:#?}",
        h.texts()
    );

    // A .p2p file that is not one.
    let junk = dir.path().join("photos.p2p");
    std::fs::write(&junk, b"P2PSHARE\x01garbage").unwrap();
    h.update(Message::ShareFilePicked(Some(junk.clone())));
    assert_eq!(h.app.get.input, junk.display().to_string());
    h.click("Get");
    h.run_until("the input to be read", |app| !app.get.reading)
        .await;
    assert!(
        h.shows_part("Not a .p2p share file: damaged"),
        "{:#?}",
        h.texts()
    );

    // From the command line: the tab opens with the error.
    let h = Harness::new(Launch {
        get: Some("hello".into()),
        ..launch(dir.path())
    });
    let mut h = h;
    assert_eq!(h.app.tab, Tab::Get);
    h.run_until("the input to be read", |app| !app.get.reading)
        .await;
    assert!(h.shows_part("neither a ticket"), "{:#?}", h.texts());
}

#[tokio::test]
async fn a_tracker_that_does_not_answer_is_said_plainly() {
    let dir = tempfile::tempdir().unwrap();
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let tracker = format!("127.0.0.1:{port}");
    let mut h = Harness::new(Launch {
        get: Some(ticket(Some(&tracker)).to_string()),
        ..launch(dir.path())
    });
    h.run_until("the download to end", |app| {
        app.get.download.as_ref().is_some_and(|d| !d.is_running())
    })
    .await;
    let phase = h.app.get.download.as_ref().unwrap().phase.clone();
    assert!(matches!(phase, Phase::Failed(_)), "{phase:?}");
    assert!(
        h.shows_part(&format!("Failed: cannot use the tracker {tracker}")),
        "{:#?}",
        h.texts()
    );
    assert!(!h.shows_part("Cancel"));
}

/// A real swarm download: a seed (a `Host` in this process) shares two files on a
/// tracker on 127.0.0.1; the window gets them — once from a ticket (the manifest
/// fetched from the seed), once from the `.p2p` file — and they are byte-identical.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_window_gets_a_share_from_a_seed_through_a_tracker() {
    let server = Server::bind(ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        turn: None,
        limits: Limits {
            // Every peer here is 127.0.0.1.
            per_ip: 1000,
            ..Limits::default()
        },
    })
    .await
    .unwrap();
    let tracker = server.local_addr().to_string();
    tokio::spawn(server.run());

    let dir = tempfile::tempdir().unwrap();
    let shared = dir.path().join("album");
    std::fs::create_dir_all(shared.join("disc 2")).unwrap();
    std::fs::write(shared.join("one.bin"), data(3 << 20, 21)).unwrap();
    std::fs::write(shared.join("disc 2/two.bin"), data((1 << 20) + 12_345, 22)).unwrap();
    let share = {
        let shared = shared.clone();
        tokio::task::spawn_blocking(move || hash_share(&[shared], &mut |_, _| {}))
            .await
            .unwrap()
            .unwrap()
    };
    let seed = Host::connect(
        &tracker,
        Identity::generate_shared(),
        SwarmConfig::default(),
    )
    .await
    .unwrap();
    let _seeding = seed.share(&share, vec![]).await.unwrap();
    let ticket = Ticket {
        root: share.root,
        tracker: Some(tracker.clone()),
        trusted: vec![],
    };

    // From the ticket, as if pasted (--get).
    let mut h = Harness::new(Launch {
        get: Some(ticket.to_string()),
        ..launch(dir.path())
    });
    assert_eq!(h.app.tab, Tab::Get);
    h.run_until("the download to end", |app| {
        app.get.download.as_ref().is_some_and(|d| !d.is_running())
    })
    .await;
    let download = h.app.get.download.as_ref().unwrap();
    assert_eq!(download.phase, Phase::Done, "{:#?}", h.texts());
    assert!(download.map.is_full());
    let inbox = dir.path().join("inbox");
    assert!(
        h.shows_part(&format!("Done — 2 files in {}", inbox.display())),
        "{:#?}",
        h.texts()
    );
    assert!(h.shows_part("100%"));
    assert!(h.shows_part("The share holds 2 files"));
    assert!(
        h.shows_part("connected (lan, we called it)")
            || h.shows_part("connected (direct, we called it)")
    );
    for file in ["one.bin", "disc 2/two.bin"] {
        assert_eq!(
            sha256(&inbox.join("album").join(file)),
            sha256(&shared.join(file)),
            "{file}"
        );
    }

    // From the .p2p file, into another folder.
    let file = dir.path().join("album.p2p");
    ShareFile {
        ticket: ticket.clone(),
        manifest: Some(share.manifest.clone()),
    }
    .write_new(&file)
    .unwrap();
    let other = dir.path().join("other");
    let mut h = Harness::new(Launch {
        output: Some(other.clone()),
        ..launch(dir.path())
    });
    h.click("Get shared files");
    h.update(Message::ShareFilePicked(Some(file)));
    h.click("Get");
    h.run_until("the download to end", |app| {
        app.get.download.as_ref().is_some_and(|d| !d.is_running())
    })
    .await;
    assert_eq!(h.app.get.download.as_ref().unwrap().phase, Phase::Done);
    assert!(h.shows_part(&format!("Done — 2 files in {}", other.display())));
    assert_eq!(
        sha256(&other.join("album/disc 2/two.bin")),
        sha256(&shared.join("disc 2/two.bin"))
    );
    seed.shut_down().await;
}

/// Cancel keeps what arrived: a download from a slow seed is cancelled part-way (the
/// swarm saves its resume state), and *Get* again into the same folder resumes it —
/// the pieces already there are not fetched again — and ends byte-identical.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_download_resumes_where_it_stopped() {
    let server = Server::bind(ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        turn: None,
        limits: Limits {
            per_ip: 1000,
            ..Limits::default()
        },
    })
    .await
    .unwrap();
    let tracker = server.local_addr().to_string();
    tokio::spawn(server.run());

    let dir = tempfile::tempdir().unwrap();
    let shared = dir.path().join("film.bin");
    std::fs::write(&shared, data(6 << 20, 23)).unwrap();
    let share = {
        let shared = shared.clone();
        tokio::task::spawn_blocking(move || hash_share(&[shared], &mut |_, _| {}))
            .await
            .unwrap()
            .unwrap()
    };
    // 1 MiB/s: the download takes about six seconds.
    let config = SwarmConfig {
        max_upload: Some(1 << 20),
        ..SwarmConfig::default()
    };
    let seed = Host::connect(&tracker, Identity::generate_shared(), config)
        .await
        .unwrap();
    let seeding = seed.share(&share, vec![]).await.unwrap();
    let ticket = Ticket {
        root: share.root,
        tracker: Some(tracker.clone()),
        trusted: vec![],
    };

    let mut h = Harness::new(Launch {
        get: Some(ticket.to_string()),
        ..launch(dir.path())
    });
    h.run_until("a few pieces", |app| {
        let status = app.get.download.as_ref().and_then(|d| d.status.as_ref());
        status.is_some_and(|s| s.have_count >= 3)
    })
    .await;
    h.click("Cancel");
    h.run_until("the download to stop", |app| {
        app.get.download.as_ref().is_some_and(|d| !d.is_running())
    })
    .await;
    let download = h.app.get.download.as_ref().unwrap();
    assert_eq!(download.phase, Phase::Cancelled);
    let pieces = download.status.as_ref().unwrap().pieces;
    assert!(
        h.shows_part("Cancelled. What arrived is kept"),
        "{:#?}",
        h.texts()
    );
    let inbox = dir.path().join("inbox");
    assert!(
        !inbox.join("film.bin").exists(),
        "a cancelled file is not in place"
    );

    // The seed has seen the connection close (a connection of the same device that
    // arrives while the old one is still up is refused, and retried only 20 s later).
    let mut seed_status = seeding.status();
    tokio::time::timeout(WAIT, seed_status.wait_for(|s| s.peers.is_empty()))
        .await
        .expect("the seed sees the downloader leave")
        .unwrap();

    // The same share again, into the same folder.
    h.click("Get");
    h.run_until("the second download to start", |app| {
        app.get.download.as_ref().is_some_and(|d| d.is_running())
    })
    .await;
    h.run_until("the download to end", |app| {
        app.get.download.as_ref().is_some_and(|d| !d.is_running())
    })
    .await;
    let download = h.app.get.download.as_ref().unwrap();
    assert_eq!(download.phase, Phase::Done, "{:#?}", h.texts());
    let resumed = download
        .log
        .iter()
        .find(|l| l.contains("Resuming: "))
        .unwrap_or_else(|| panic!("no resume line: {:#?}", download.log));
    assert!(resumed.contains("piece(s) were already here"), "{resumed}");
    let last = download.status.as_ref().unwrap();
    assert!(
        last.downloaded < u64::from(pieces) << 18,
        "fetched {} bytes again: everything",
        last.downloaded
    );
    assert_eq!(sha256(&inbox.join("film.bin")), sha256(&shared));
    seed.shut_down().await;
}
