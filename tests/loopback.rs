//! Real sessions over real TCP sockets on 127.0.0.1 (port 0), each test in its own temp
//! dirs. Every received file is compared with the sent one by SHA-256.

mod common;

use std::fs;
use std::path::Path;
use std::sync::{Arc, Mutex};

use common::*;
use futures::{SinkExt, StreamExt};
use p2p_core::error::{Error, HandshakeError, TransferError, WireError};
use p2p_core::handshake::{self, LocalPeer};
use p2p_core::wire::{
    Chunk, ChunkFlags, ChunkRef, Entry, EntryKind, ErrorCode, FrameCodec, Hello, Message, Offer,
    Timestamp, MAGIC, PROTOCOL_VERSION,
};
use p2p_core::{
    Capabilities, NoEvents, P2PSession, ReceiveOptions, SessionConfig, SessionOptions,
    TransferEvent,
};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;
use uuid::Uuid;

type Session = P2PSession<TcpStream>;
type SecureSession = P2PSession<PeerStream>;
use p2p_core::net::{PeerStream, SecureTcp, Security, Transport, TransportChoice};

fn options(chunk_size: u32, window_size: u32) -> SessionOptions {
    SessionOptions {
        config: SessionConfig {
            chunk_size,
            window_size,
            ..p2p_core::config::default_config()
        },
        ..SessionOptions::default()
    }
}

/// A connected pair: (initiator, responder).
async fn pair(opts: &SessionOptions) -> (SecureSession, SecureSession) {
    let listener = p2p_core::transport::listen("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let responder_opts = SessionOptions {
        config: p2p_core::config::ceilings(true),
        ..SessionOptions::default()
    };
    let accept = tokio::spawn(async move { P2PSession::accept(&listener, &responder_opts).await });
    let initiator = P2PSession::connect(&addr, opts).await.unwrap();
    let responder = accept.await.unwrap().unwrap();
    (initiator, responder)
}

/// A connected pair over `transport`: an endpoint listening on 127.0.0.1 (TCP and UDP on
/// one port as `transport` allows) and one dialing it.
async fn pair_over(
    opts: &SessionOptions,
    transport: TransportChoice,
) -> (SecureSession, SecureSession) {
    use p2p_core::net::Endpoint;
    let listening = Endpoint::listen_with("127.0.0.1:0", transport)
        .await
        .unwrap();
    let addr = listening.local_addr().unwrap().to_string();
    let responder_opts = SessionOptions {
        config: p2p_core::config::ceilings(true),
        ..SessionOptions::default()
    };
    let accept = tokio::spawn(async move { P2PSession::open(&listening, &responder_opts).await });
    let initiator = P2PSession::open(&Endpoint::dial_with(addr, transport), opts)
        .await
        .unwrap();
    let responder = accept.await.unwrap().unwrap();
    (initiator, responder)
}

fn recv_opts(dir: &Path) -> ReceiveOptions {
    ReceiveOptions {
        output_dir: dir.to_path_buf(),
        overwrite: false,
    }
}

/// Sends `paths` from `a` to `b` and returns both results.
async fn transfer<S: p2p_core::transport::Stream>(
    a: &mut P2PSession<S>,
    b: &mut P2PSession<S>,
    paths: &[&Path],
    out: &Path,
) -> (
    p2p_core::Result<p2p_core::TransferSummary>,
    p2p_core::Result<Option<p2p_core::TransferSummary>>,
) {
    let opts = recv_opts(out);
    tokio::join!(a.send(paths, &NoEvents), b.receive(&opts, &NoEvents))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_files_of_edge_sizes_arrive_identical() {
    let tmp = tempfile::tempdir().unwrap();
    let chunk = 64 * 1024;
    let cases = [
        ("empty", 0usize),
        ("one-byte", 1),
        ("exact-multiple", chunk * 10),
        ("one-under", chunk * 3 - 1),
        ("one-over", chunk * 3 + 1),
    ];
    let (mut a, mut b) = pair(&options(chunk as u32, 4)).await;
    for (i, (name, len)) in cases.iter().enumerate() {
        let src = tmp.path().join("src").join(name);
        random_file(&src, *len, i as u64);
        let out = tmp.path().join("out");
        let (sent, received) = transfer(&mut a, &mut b, &[&src], &out).await;
        let sent = sent.unwrap();
        let received = received.unwrap().unwrap();
        assert_eq!((sent.files, sent.bytes), (1, *len as u64));
        assert_eq!(received.bytes, *len as u64);
        assert_eq!(sha256_file(&out.join(name)), sha256_file(&src), "{name}");
    }
    assert!(partial_files(&tmp.path().join("out")).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_256_mib_random_file_arrives_identical_with_monotonic_progress() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("big.bin");
    let len = 256 << 20;
    random_file(&src, len, 256);
    let out = tmp.path().join("out");
    let (mut a, mut b) = pair(&options(1 << 20, 16)).await;
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = {
        let events = events.clone();
        move |e: TransferEvent| events.lock().unwrap().push(e)
    };
    let opts = recv_opts(&out);
    let paths = [&src];
    let (sent, received) = tokio::join!(a.send(&paths, &sink), b.receive(&opts, &NoEvents));
    assert_eq!(sent.unwrap().bytes, len as u64);
    assert_eq!(received.unwrap().unwrap().bytes, len as u64);
    assert_eq!(sha256_file(&out.join("big.bin")), sha256_file(&src));

    let events = events.lock().unwrap();
    let progress: Vec<u64> = events
        .iter()
        .filter_map(|e| match e {
            TransferEvent::Progress { done_bytes, .. } => Some(*done_bytes),
            _ => None,
        })
        .collect();
    assert!(
        progress.windows(2).all(|w| w[0] <= w[1]),
        "progress never goes back"
    );
    assert_eq!(progress.last(), Some(&(len as u64)));
    assert!(matches!(
        events.first(),
        Some(TransferEvent::Started { .. })
    ));
    assert!(
        matches!(events.last(), Some(TransferEvent::Finished { bytes, .. }) if *bytes == len as u64)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_folder_of_1000_small_files_arrives_identical() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("many");
    for i in 0..1000u64 {
        let len = (i * 7919 % 9000) as usize; // 0..9000 bytes, some empty
        random_file(&root.join(format!("d{}/f{i:04}.bin", i % 10)), len, i);
    }
    let out = tmp.path().join("out");
    let (mut a, mut b) = pair(&options(4096, 16)).await;
    let (sent, received) = transfer(&mut a, &mut b, &[&root], &out).await;
    assert_eq!(sent.unwrap().files, 1000);
    assert_eq!(received.unwrap().unwrap().files, 1000);
    assert_eq!(tree_digest(&out.join("many")), tree_digest(&root));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_big_file_and_a_folder_of_small_files_cross_over_quic_identical() {
    let tmp = tempfile::tempdir().unwrap();
    let big = tmp.path().join("big.bin");
    random_file(&big, 48 << 20, 7);
    let root = tmp.path().join("many");
    for i in 0..300u64 {
        random_file(
            &root.join(format!("d{}/f{i:03}.bin", i % 7)),
            (i * 7919 % 9000) as usize,
            i,
        );
    }
    let out = tmp.path().join("out");
    let (mut a, mut b) = pair_over(&options(1 << 20, 16), TransportChoice::Quic).await;
    assert_eq!(
        (a.transport(), b.transport()),
        (Some(Transport::Quic), Some(Transport::Quic))
    );
    let (sent, received) = transfer(&mut a, &mut b, &[&big, &root], &out).await;
    assert_eq!(sent.unwrap().files, 301);
    assert_eq!(received.unwrap().unwrap().files, 301);
    assert_eq!(sha256_file(&out.join("big.bin")), sha256_file(&big));
    assert_eq!(tree_digest(&out.join("many")), tree_digest(&root));
    // The other way on the same QUIC connection, then a clean close ends the peer's loop.
    let back = tmp.path().join("back");
    let (sent, received) = transfer(&mut b, &mut a, &[&big], &back).await;
    assert_eq!(sent.unwrap().bytes, 48 << 20);
    assert_eq!(received.unwrap().unwrap().bytes, 48 << 20);
    assert_eq!(sha256_file(&back.join("big.bin")), sha256_file(&big));
    let more = recv_opts(&back);
    let (closed, ended) = tokio::join!(a.close(), b.receive(&more, &NoEvents));
    closed.unwrap();
    assert!(
        ended.unwrap().is_none(),
        "the peer's close ends the event loop"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_dials_this_machine_over_tcp_and_a_listener_takes_either() {
    let (a, b) = pair_over(&options(1 << 20, 16), TransportChoice::Auto).await;
    assert_eq!(
        (a.transport(), b.transport()),
        (Some(Transport::Tcp), Some(Transport::Tcp))
    );
    // One `auto` listener accepts QUIC as well, on the same port number.
    use p2p_core::net::Endpoint;
    let listening = Endpoint::listen("127.0.0.1:0").await.unwrap();
    let addr = listening.local_addr().unwrap().to_string();
    let accept =
        tokio::spawn(async move { P2PSession::open(&listening, &SessionOptions::default()).await });
    let dialer = P2PSession::open(
        &Endpoint::dial_with(addr, TransportChoice::Quic),
        &SessionOptions::default(),
    )
    .await
    .unwrap();
    let listener_side = accept.await.unwrap().unwrap();
    assert_eq!(dialer.transport(), Some(Transport::Quic));
    assert_eq!(listener_side.transport(), Some(Transport::Quic));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quic_peer_that_arrives_before_the_listener_accepts_waits_as_over_tcp() {
    // A peer finds a listener by its beacon and dials while the program is still busy
    // (printing its code, say): a TCP connection waits in the kernel's backlog, and a
    // QUIC one must wait in quinn's queue — not be refused because no identity was
    // configured yet (CI caught this under load). The delay is the scenario, not a
    // synchronisation: the dialer's handshake is under way before anyone accepts.
    use p2p_core::net::Endpoint;
    let listening = Endpoint::listen_with("127.0.0.1:0", TransportChoice::Quic)
        .await
        .unwrap();
    let addr = listening.local_addr().unwrap().to_string();
    let dialing = tokio::spawn(async move {
        P2PSession::open(
            &Endpoint::dial_with(addr, TransportChoice::Quic),
            &SessionOptions::default(),
        )
        .await
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let accepted = P2PSession::open(&listening, &SessionOptions::default())
        .await
        .unwrap();
    let dialer = dialing.await.unwrap().unwrap();
    assert_eq!(dialer.transport(), Some(Transport::Quic));
    assert_eq!(accepted.transport(), Some(Transport::Quic));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nested_tree_keeps_structure_names_modes_and_times_and_skips_symlinks() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("tree");
    random_file(&root.join("ünïcødé/日本語/файл.txt"), 3000, 1);
    random_file(&root.join("a/b/c/d/e/deep.bin"), 70_000, 2);
    random_file(&root.join("script.sh"), 10, 3);
    random_file(&root.join("secret"), 10, 4);
    // Modes arrive as sent, less what the receiver's umask takes away (issue 10, item
    // 9): a sender cannot make files or folders world-writable on the receiver.
    random_file(&root.join("readonly.txt"), 10, 5);
    random_file(&root.join("shared.txt"), 10, 6);
    fs::create_dir_all(root.join("empty/nested-empty")).unwrap();
    fs::create_dir_all(root.join("open-dir")).unwrap();
    set_mode(&root.join("open-dir"), 0o777);
    std::os::unix::fs::symlink("/etc/hostname", root.join("link-out")).unwrap();
    set_mode(&root.join("script.sh"), 0o755);
    set_mode(&root.join("secret"), 0o600);
    set_mode(&root.join("a/b"), 0o700);
    set_mode(&root.join("readonly.txt"), 0o444);
    set_mode(&root.join("shared.txt"), 0o666);
    let old =
        std::time::SystemTime::UNIX_EPOCH + std::time::Duration::new(1_000_000_000, 123_456_789);
    fs::File::options()
        .write(true)
        .open(root.join("a/b/c/d/e/deep.bin"))
        .unwrap()
        .set_modified(old)
        .unwrap();

    let out = tmp.path().join("out");
    let (mut a, mut b) = pair(&options(16 * 1024, 8)).await;
    let (sent, received) = transfer(&mut a, &mut b, &[&root], &out).await;
    sent.unwrap();
    received.unwrap().unwrap();

    let umask = p2p_core::fs::unnamed::umask().expect("umask readable");
    let mut expected = tree_digest(&root);
    expected.remove("link-out");
    assert_eq!(
        tree_digest(&out.join("tree")),
        expected,
        "symlink skipped, rest identical"
    );
    for rel in [
        "script.sh",
        "secret",
        "readonly.txt",
        "shared.txt",
        "a/b",
        "a/b/c/d/e/deep.bin",
        "empty/nested-empty",
        "open-dir",
    ] {
        let (mode, secs, nanos) = mode_and_mtime(&root.join(rel));
        assert_eq!(
            mode_and_mtime(&out.join("tree").join(rel)),
            (mode & !umask, secs, nanos),
            "{rel}: mode (umask {umask:o}) and mtime"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_directions_work_on_one_session_and_close_ends_the_event_loop() {
    let tmp = tempfile::tempdir().unwrap();
    let one = tmp.path().join("from-a.bin");
    let two = tmp.path().join("from-b.bin");
    random_file(&one, 300_000, 1);
    random_file(&two, 500_000, 2);
    let (mut a, mut b) = pair(&options(64 * 1024, 4)).await;
    let out_b = tmp.path().join("at-b");
    let out_a = tmp.path().join("at-a");
    let (s, r) = transfer(&mut a, &mut b, &[&one], &out_b).await;
    s.unwrap();
    r.unwrap().unwrap();
    let (s, r) = transfer(&mut b, &mut a, &[&two], &out_a).await;
    s.unwrap();
    r.unwrap().unwrap();
    assert_eq!(sha256_file(&out_b.join("from-a.bin")), sha256_file(&one));
    assert_eq!(sha256_file(&out_a.join("from-b.bin")), sha256_file(&two));

    let opts = recv_opts(&out_b);
    let (closed, rest) = tokio::join!(a.close(), b.run_event_loop(&opts, &NoEvents));
    closed.unwrap();
    assert!(
        rest.unwrap().is_empty(),
        "clean close ends the loop with nothing received"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_concurrent_senders_to_one_receiver() {
    let tmp = tempfile::tempdir().unwrap();
    let listener = p2p_core::transport::listen("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let out = tmp.path().join("out");
    let server_out = out.clone();
    let server = tokio::spawn(async move {
        // An endpoint keeps the connections it is securing while one session starts.
        let endpoint = p2p_core::net::Endpoint::from_listener(listener);
        let mut tasks = Vec::new();
        for _ in 0..3 {
            let mut session = P2PSession::open(&endpoint, &SessionOptions::default()).await?;
            let opts = recv_opts(&server_out);
            tasks.push(tokio::spawn(async move {
                session.run_event_loop(&opts, &NoEvents).await
            }));
        }
        let mut files = 0;
        for t in tasks {
            files += t.await.expect("join")?.iter().map(|s| s.files).sum::<u64>();
        }
        Ok::<u64, Error>(files)
    });
    let mut senders = Vec::new();
    for i in 0..3u64 {
        let src = tmp.path().join(format!("sender{i}"));
        random_file(&src.join("data.bin"), 3_000_000 + i as usize, i);
        random_file(&src.join("small.txt"), 100, 10 + i);
        let addr = addr.clone();
        senders.push(tokio::spawn(async move {
            let mut s = P2PSession::connect(&addr, &options(256 * 1024, 8)).await?;
            s.send(&[&src], &NoEvents).await?;
            s.close().await
        }));
    }
    for s in senders {
        s.await.unwrap().unwrap();
    }
    assert_eq!(server.await.unwrap().unwrap(), 6);
    for i in 0..3 {
        let name = format!("sender{i}");
        assert_eq!(
            tree_digest(&out.join(&name)),
            tree_digest(&tmp.path().join(&name)),
            "{name}"
        );
    }
}

// ---- a scripted peer, for what a real peer would never send ------------------------

fn local_peer() -> LocalPeer {
    LocalPeer {
        device_id: Uuid::new_v4(),
        device_name: "scripted".into(),
        capabilities: Capabilities::supported(),
        config: p2p_core::config::default_config(),
        memory_budget: p2p_core::config::DEFAULT_MEMORY_BUDGET,
    }
}

/// The responder's side of one handshake on the next connection (what a listener does
/// with each connection; `Session::accept` drops failed ones and keeps listening).
async fn respond_once(
    listener: &tokio::net::TcpListener,
    options: &SessionOptions,
) -> p2p_core::Result<Session> {
    let (stream, _) = p2p_core::transport::accept(listener).await?;
    Session::respond(stream, options).await
}

/// Starts a receiving session on a listener; returns its address and the join handle of
/// `receive` into `out`.
async fn receiver(
    out: &Path,
    overwrite: bool,
) -> (
    String,
    tokio::task::JoinHandle<p2p_core::Result<Option<p2p_core::TransferSummary>>>,
) {
    let listener = p2p_core::transport::listen("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let opts = ReceiveOptions {
        output_dir: out.to_path_buf(),
        overwrite,
    };
    let task = tokio::spawn(async move {
        let mut s = P2PSession::accept(&listener, &SessionOptions::default()).await?;
        s.receive(&opts, &NoEvents).await
    });
    (addr, task)
}

/// A sender that speaks raw frames inside a real secured connection (it holds this
/// process's key, so the receiver lets it in as the same device).
async fn scripted_sender(addr: &str) -> Framed<SecureTcp, FrameCodec> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (stream, _) = p2p_core::net::secure_client(tcp, &Security::default())
        .await
        .unwrap();
    let mut framed = Framed::new(stream, FrameCodec);
    handshake::initiate(&mut framed, &local_peer())
        .await
        .unwrap();
    framed
}

fn file_entry(path: &str, size: u64) -> Entry {
    Entry {
        path: path.into(),
        kind: EntryKind::File { size },
        mode: 0o644,
        mtime: Timestamp::default(),
    }
}

async fn offer(framed: &mut Framed<SecureTcp, FrameCodec>, entries: Vec<Entry>) -> Message {
    framed
        .send(Message::Offer(Offer {
            transfer_id: Uuid::new_v4(),
            entries,
        }))
        .await
        .unwrap();
    framed.next().await.unwrap().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_paths_are_refused_and_nothing_is_written() {
    let cases = [
        "../escape.txt",
        "a/../../escape.txt",
        "/etc/passwd-copy",
        "C:/Windows/evil.dll",
        "\\\\server\\share\\x",
        "nul\0byte",
        "bell\u{7}",
        "CON",
        "dir/aux.txt",
    ];
    for path in cases {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("out");
        fs::create_dir(&out).unwrap();
        let (addr, task) = receiver(&out, false).await;
        let mut framed = scripted_sender(&addr).await;
        let reply = offer(&mut framed, vec![file_entry(path, 5)]).await;
        assert!(
            matches!(
                &reply,
                Message::Error {
                    code: ErrorCode::UnsafePath,
                    ..
                }
            ),
            "{path:?}: {reply:?}"
        );
        let err = task.await.unwrap().unwrap_err();
        assert!(
            matches!(err, Error::Transfer(TransferError::UnsafePath { .. })),
            "{path:?}: {err}"
        );
        assert!(err.to_string().contains("unsafe path"), "{err}");
        assert!(tree_digest(tmp.path()) == [("out".to_string(), "dir".to_string())].into());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_entries_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let (addr, task) = receiver(&out, false).await;
    let mut framed = scripted_sender(&addr).await;
    let reply = offer(&mut framed, vec![file_entry("x", 1), file_entry("x", 2)]).await;
    assert!(
        matches!(
            reply,
            Message::Error {
                code: ErrorCode::UnsafePath,
                ..
            }
        ),
        "{reply:?}"
    );
    assert!(task
        .await
        .unwrap()
        .unwrap_err()
        .to_string()
        .contains("duplicate"));
    assert!(!out.join("x").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_symlink_in_the_output_folder_cannot_lead_outside() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let elsewhere = tmp.path().join("elsewhere");
    fs::create_dir_all(&out).unwrap();
    fs::create_dir_all(&elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, out.join("link")).unwrap();
    let (addr, task) = receiver(&out, true).await;
    let mut framed = scripted_sender(&addr).await;
    let reply = offer(&mut framed, vec![file_entry("link/planted.txt", 5)]).await;
    assert!(matches!(reply, Message::Error { .. }), "{reply:?}");
    assert!(task.await.unwrap().is_err());
    assert!(
        fs::read_dir(&elsewhere).unwrap().next().is_none(),
        "nothing planted outside"
    );
    assert_eq!(
        receiver_files(&out),
        Vec::<String>::new(),
        "nothing written"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declared_sizes_beyond_free_space_are_refused_up_front() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let (addr, task) = receiver(&out, false).await;
    let mut framed = scripted_sender(&addr).await;
    let reply = offer(&mut framed, vec![file_entry("huge.iso", 1 << 60)]).await;
    assert!(
        matches!(
            reply,
            Message::Error {
                code: ErrorCode::InsufficientSpace,
                ..
            }
        ),
        "{reply:?}"
    );
    let err = task.await.unwrap().unwrap_err();
    assert!(err.to_string().contains("not enough free space"), "{err}");
    // Issue 10, item 5: a refusal writes nothing, not even a resume state.
    assert_eq!(receiver_files(tmp.path()), Vec::<String>::new());
    assert!(!out.join("huge.iso").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn existing_files_are_not_overwritten_unless_asked() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src/report.txt");
    random_file(&src, 1000, 1);
    let out = tmp.path().join("out");
    fs::create_dir_all(&out).unwrap();
    fs::write(out.join("report.txt"), b"precious").unwrap();

    let (mut a, mut b) = pair(&options(4096, 4)).await;
    let (sent, received) = transfer(&mut a, &mut b, &[&src], &out).await;
    let err = received.unwrap_err();
    assert!(err.to_string().contains("--overwrite"), "{err}");
    let err = sent.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Transfer(TransferError::PeerAborted {
                code: ErrorCode::AlreadyExists,
                ..
            })
        ),
        "{err}"
    );
    assert_eq!(fs::read(out.join("report.txt")).unwrap(), b"precious");
    assert_eq!(
        receiver_files(&out),
        Vec::<String>::new(),
        "nothing written"
    );

    let (mut a, mut b) = pair(&options(4096, 4)).await;
    let opts = ReceiveOptions {
        output_dir: out.clone(),
        overwrite: true,
    };
    let paths = [&src];
    let (sent, received) = tokio::join!(a.send(&paths, &NoEvents), b.receive(&opts, &NoEvents));
    sent.unwrap();
    received.unwrap().unwrap();
    assert_eq!(sha256_file(&out.join("report.txt")), sha256_file(&src));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupted_chunks_are_resent_and_a_bad_digest_leaves_nothing_behind() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let (addr, task) = receiver(&out, false).await;
    let mut framed = scripted_sender(&addr).await;
    let reply = offer(&mut framed, vec![file_entry("data.bin", 4)]).await;
    assert!(matches!(reply, Message::Accept(_)), "{reply:?}");
    let at = ChunkRef { file: 0, index: 0 };
    let data = vec![1, 2, 3, 4];
    let crc = p2p_core::verify::crc32(&data);
    // Corrupted in flight: CRC mismatch, the receiver asks again.
    let mut bad = data.clone();
    bad[0] ^= 0xff;
    let chunk = |data: Vec<u8>| {
        Message::Chunk(Chunk {
            at,
            flags: ChunkFlags::empty(),
            crc32: crc,
            data: data.into(),
        })
    };
    framed.send(chunk(bad)).await.unwrap();
    assert_eq!(framed.next().await.unwrap().unwrap(), Message::Nack(at));
    framed.send(chunk(data)).await.unwrap();
    assert_eq!(framed.next().await.unwrap().unwrap(), Message::Ack(at));
    // A digest that does not match what arrived.
    framed
        .send(Message::FileEnd {
            file: 0,
            sha256: [0; 32],
        })
        .await
        .unwrap();
    let reply = framed.next().await.unwrap().unwrap();
    assert!(
        matches!(
            reply,
            Message::Error {
                code: ErrorCode::VerificationFailed,
                ..
            }
        ),
        "{reply:?}"
    );
    let err = task.await.unwrap().unwrap_err();
    assert!(err.to_string().contains("failed verification"), "{err}");
    assert!(!out.join("data.bin").exists(), "nothing at the final path");
    assert!(partial_files(&out).is_empty(), "no .part left behind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_frame_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let (addr, task) = receiver(tmp.path(), false).await;
    let framed = scripted_sender(&addr).await;
    let mut stream = framed.into_inner();
    tokio::io::AsyncWriteExt::write_all(&mut stream, &u32::MAX.to_be_bytes())
        .await
        .unwrap();
    let err = task.await.unwrap().unwrap_err();
    assert!(
        matches!(err, Error::Wire(WireError::Oversized { .. })),
        "{err}"
    );
    assert!(err.to_string().contains("too large"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_cut_short_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let (addr, task) = receiver(tmp.path(), false).await;
    let framed = scripted_sender(&addr).await;
    let mut stream = framed.into_inner();
    tokio::io::AsyncWriteExt::write_all(&mut stream, &[0, 0, 1, 0, 5, 1, 2])
        .await
        .unwrap();
    // Flushed, then an abrupt close (no TLS close_notify): a process that died.
    tokio::io::AsyncWriteExt::flush(&mut stream).await.unwrap();
    drop(stream);
    let err = task.await.unwrap().unwrap_err();
    assert!(
        matches!(err, Error::Wire(WireError::Truncated { .. })),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_mismatch_names_both_versions_on_both_sides() {
    // A newer peer connects to us.
    let listener = p2p_core::transport::listen("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let server =
        tokio::spawn(async move { respond_once(&listener, &SessionOptions::default()).await });
    let mut framed = Framed::new(TcpStream::connect(&addr).await.unwrap(), FrameCodec);
    framed
        .send(Message::Hello(Hello {
            magic: MAGIC,
            version: 99,
            device_id: Uuid::new_v4(),
            device_name: "future".into(),
            capabilities: Capabilities::all(),
        }))
        .await
        .unwrap();
    let reply = framed.next().await.unwrap().unwrap();
    assert!(
        matches!(
            reply,
            Message::Error {
                code: ErrorCode::VersionMismatch,
                version: PROTOCOL_VERSION,
                ..
            }
        ),
        "{reply:?}"
    );
    let err = server.await.unwrap().err().expect("refused");
    let text = err.to_string();
    assert!(text.contains("v2") && text.contains("v99"), "{text}");

    // We connect to a newer peer that refuses us the same way.
    let listener = p2p_core::transport::listen("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let fake = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let mut framed = Framed::new(stream, FrameCodec);
        let _hello = framed.next().await;
        framed
            .send(Message::Error {
                code: ErrorCode::VersionMismatch,
                message: "speak v7".into(),
                version: 7,
            })
            .await
            .unwrap();
    });
    // The session layer over a plain stream (inside TLS in real use).
    let stream = TcpStream::connect(&addr).await.unwrap();
    let err = Session::initiate(stream, &SessionOptions::default())
        .await
        .err()
        .expect("refused");
    assert!(
        matches!(
            err,
            Error::Handshake(HandshakeError::VersionMismatch {
                local: PROTOCOL_VERSION,
                remote: 7
            })
        ),
        "{err}"
    );
    assert!(err.to_string().contains("v2") && err.to_string().contains("v7"));
    fake.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn something_that_is_not_a_peer_is_refused() {
    let listener = p2p_core::transport::listen("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let server =
        tokio::spawn(async move { respond_once(&listener, &SessionOptions::default()).await });
    let mut stream = TcpStream::connect(&addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut stream, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let err = server.await.unwrap().err().expect("refused");
    assert!(
        matches!(err, Error::Handshake(HandshakeError::NotAPeer)),
        "{err}"
    );
}

/// A file of several chunks is received into a `.part` file, kept for a resume; a file
/// of one chunk into an unnamed file (where the file system has them), which leaves
/// nothing behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_receive_saves_resume_state_and_leaves_nothing_at_the_final_path() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let (addr, task) = receiver(&out, false).await;
    let mut framed = scripted_sender(&addr).await;
    let chunk = p2p_core::config::DEFAULT_CHUNK_SIZE as usize;
    let entries = vec![
        file_entry("movie.mkv", 2 * chunk as u64 + 5),
        file_entry("note.txt", 8),
    ];
    let reply = offer(&mut framed, entries).await;
    assert!(matches!(reply, Message::Accept(_)), "{reply:?}");
    for (at, len) in [
        (ChunkRef { file: 0, index: 0 }, chunk),
        (ChunkRef { file: 1, index: 0 }, 8),
    ] {
        let data = vec![7u8; len];
        framed
            .send(Message::Chunk(Chunk {
                at,
                flags: ChunkFlags::empty(),
                crc32: p2p_core::verify::crc32(&data),
                data: data.into(),
            }))
            .await
            .unwrap();
        assert_eq!(framed.next().await.unwrap().unwrap(), Message::Ack(at));
    }
    // The receiving future is dropped mid-transfer (what Ctrl+C does).
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());
    assert!(!out.join("movie.mkv").exists(), "nothing at the final path");
    assert!(!out.join("note.txt").exists(), "nothing at the final path");
    // The movie's data is kept for a resume; the note's is gone with its unnamed file.
    let unnamed = p2p_core::fs::unnamed::Unnamed::supported_in(&out);
    let partials = partial_files(&out);
    assert_eq!(partials.len(), if unnamed { 1 } else { 2 }, "{partials:?}");
    let states: Vec<_> = tree_digest(&out)
        .into_keys()
        .filter(|k| k.ends_with(".resume"))
        .collect();
    assert_eq!(states.len(), 1, "a resume state is saved: {states:?}");
    let state =
        p2p_core::fs::resume_state::StateBody::decode(&fs::read(out.join(&states[0])).unwrap())
            .unwrap();
    let (claim, _) = state.believable(p2p_core::fs::resume_state::boot_id());
    assert_eq!(
        claim.have.keys().copied().collect::<Vec<_>>(),
        vec![0],
        "only the movie's chunk is claimed"
    );
}

/// Interrupts a transfer at about a quarter (the sender's task is dropped, as on Ctrl+C
/// or a crash), then sends again under the same transfer id: only the rest moves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_transfer_resumes_where_it_stopped() {
    interrupted_at_a_quarter_then_resumed(256 * 1024, TransportChoice::Tcp, TransportChoice::Tcp)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_interrupted_over_quic_resumes_over_tcp() {
    interrupted_at_a_quarter_then_resumed(256 * 1024, TransportChoice::Quic, TransportChoice::Tcp)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_interrupted_over_tcp_resumes_over_quic() {
    interrupted_at_a_quarter_then_resumed(256 * 1024, TransportChoice::Tcp, TransportChoice::Quic)
        .await;
}

/// The second attempt agrees on another chunk size (the sender restarted with other
/// options): the chunks held are re-expressed in it rather than thrown away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_with_another_chunk_size_keeps_what_arrived() {
    interrupted_at_a_quarter_then_resumed(1024 * 1024, TransportChoice::Tcp, TransportChoice::Tcp)
        .await;
}

/// Sends `manifest` under `transfer_id` over a new session to a receiver writing into
/// `out`; both ends must succeed. Returns what the sender was told to skip (its
/// `Resumed` event), if anything.
async fn send_again(
    manifest: &p2p_core::fs::source::SourceManifest,
    transfer_id: Uuid,
    out: &Path,
    opts: &SessionOptions,
    transport: TransportChoice,
) -> Option<u64> {
    let (mut a, mut b) = pair_over(opts, transport).await;
    let skipped = Arc::new(Mutex::new(None));
    let sink = {
        let skipped = skipped.clone();
        move |e: TransferEvent| {
            if let TransferEvent::Resumed { skipped_bytes, .. } = e {
                *skipped.lock().unwrap() = Some(skipped_bytes);
            }
        }
    };
    let receive = recv_opts(out);
    let (sent, received) = tokio::join!(
        a.send_manifest_as(manifest, transfer_id, &sink),
        b.receive(&receive, &NoEvents)
    );
    sent.unwrap();
    received.unwrap().unwrap();
    let skipped = *skipped.lock().unwrap();
    skipped
}

/// Interrupts a transfer (256 KiB chunks, over `first`) at about a quarter, then sends
/// again under the same transfer id with `second_chunk` (over `second`): only the rest
/// moves.
async fn interrupted_at_a_quarter_then_resumed(
    second_chunk: u32,
    first: TransportChoice,
    second: TransportChoice,
) {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("video.mkv");
    let len = 24 << 20;
    random_file(&src, len, 42);
    let out = tmp.path().join("out");
    let manifest = p2p_core::fs::source::SourceManifest::scan(&[&src]).unwrap();
    let transfer_id = Uuid::new_v4();
    let throttled = SessionOptions {
        max_speed: Some(16 << 20), // 1.5 s for the whole file: time to interrupt it
        ..options(256 * 1024, 8)
    };

    // First attempt, stopped once the receiver reports a quarter written.
    let (mut a, mut b) = pair_over(&throttled, first).await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let opts = recv_opts(&out);
    let receiving = tokio::spawn(async move { b.receive(&opts, &tx).await });
    let m = manifest.clone();
    let sending = tokio::spawn(async move { a.send_manifest_as(&m, transfer_id, &NoEvents).await });
    while let Some(event) = rx.recv().await {
        if let TransferEvent::Progress { done_bytes, .. } = event {
            if done_bytes >= len as u64 / 4 {
                break;
            }
        }
    }
    sending.abort();
    let _ = sending.await;
    let err = receiving.await.unwrap().unwrap_err();
    assert!(err.is_transient(), "a lost connection is transient: {err}");
    assert!(
        !out.join("video.mkv").exists(),
        "nothing at the final path yet"
    );
    assert!(!partial_files(&out).is_empty(), "the partial data is kept");

    // Second attempt with the same transfer id.
    let skipped = send_again(
        &manifest,
        transfer_id,
        &out,
        &options(second_chunk, 8),
        second,
    )
    .await
    .expect("the sender was told what to skip");
    assert_eq!(sha256_file(&out.join("video.mkv")), sha256_file(&src));
    assert!(partial_files(&out).is_empty(), "{:?}", partial_files(&out));
    // What was reported written, less one window, and less what only partly covers a
    // chunk of the second attempt's size, is not sent again.
    let window = 8 * 256 * 1024;
    assert!(
        skipped >= len as u64 / 4 - window - u64::from(second_chunk),
        "{skipped}"
    );
}

/// The resume state claims some chunks as flushed to disk and more as only written (in
/// the page cache). Written-only chunks are believed in the same boot of the kernel (a
/// killed receiver), not after a reboot (they may never have reached the disk).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_reboot_only_what_was_flushed_is_resumed() {
    use p2p_core::fs::resume_state::{boot_id, manifest_digest, StateBody};
    use p2p_core::transfer::{ChunkSet, ResumeInfo};
    const CHUNK: usize = 64 * 1024;
    for (boot, expected_chunks) in [(Uuid::new_v4(), 2), (boot_id().unwrap(), 6)] {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("notes.tar");
        random_file(&src, 10 * CHUNK + 123, 77);
        let data = fs::read(&src).unwrap();
        let out = tmp.path().join("out");
        fs::create_dir_all(&out).unwrap();
        let manifest = p2p_core::fs::source::SourceManifest::scan(&[&src]).unwrap();
        let transfer_id = Uuid::new_v4();
        // What an earlier attempt left: six chunks in the `.part` file, two of them
        // flushed before its last state save.
        let tag = &transfer_id.simple().to_string()[..8];
        fs::write(out.join(format!(".{tag}-0.p2p.part")), &data[..6 * CHUNK]).unwrap();
        let claim = |chunks: u64| {
            let mut set = ChunkSet::new();
            set.insert_range(0, chunks);
            ResumeInfo {
                have: [(0, set)].into(),
                complete: vec![],
            }
        };
        let digest = manifest_digest(&manifest.entries);
        let mut state = StateBody::new(transfer_id, digest, CHUNK as u32, &claim(2), &claim(6));
        state.boot_id = Some(boot);
        fs::write(
            out.join(format!(".p2p-{}.resume", transfer_id.simple())),
            state.encode(),
        )
        .unwrap();

        let skipped = send_again(
            &manifest,
            transfer_id,
            &out,
            &options(CHUNK as u32, 4),
            TransportChoice::Tcp,
        )
        .await;
        assert_eq!(sha256_file(&out.join("notes.tar")), sha256_file(&src));
        assert_eq!(
            skipped,
            Some(expected_chunks * CHUNK as u64),
            "state from boot {boot}"
        );
        assert!(partial_files(&out).is_empty(), "{:?}", partial_files(&out));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_resume_state_is_reported_and_the_transfer_starts_afresh() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("doc.pdf");
    random_file(&src, 300_000, 5);
    let out = tmp.path().join("out");
    fs::create_dir_all(&out).unwrap();
    let transfer_id = Uuid::new_v4();
    fs::write(
        out.join(format!(".p2p-{}.resume", transfer_id.simple())),
        b"P2PR\x01garbage",
    )
    .unwrap();
    let manifest = p2p_core::fs::source::SourceManifest::scan(&[&src]).unwrap();
    let (mut a, mut b) = pair(&options(64 * 1024, 4)).await;
    let warnings = Arc::new(Mutex::new(Vec::new()));
    let sink = {
        let warnings = warnings.clone();
        move |e: TransferEvent| {
            if let TransferEvent::Warning { message } = e {
                warnings.lock().unwrap().push(message);
            }
        }
    };
    let opts = recv_opts(&out);
    let (sent, received) = tokio::join!(
        a.send_manifest_as(&manifest, transfer_id, &NoEvents),
        b.receive(&opts, &sink)
    );
    sent.unwrap();
    received.unwrap().unwrap();
    assert_eq!(sha256_file(&out.join("doc.pdf")), sha256_file(&src));
    let warnings = warnings.lock().unwrap();
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("ignored") && w.contains("checksum")),
        "{warnings:?}"
    );
    assert!(
        tree_digest(&out).keys().all(|k| k == "doc.pdf"),
        "state removed after success"
    );
}

/// A receiver that accepts and then goes silent without closing (a dead host, a
/// half-open connection): the sender notices within its idle timeout, and says the
/// failure is worth a reconnection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_peer_is_detected_within_the_idle_timeout() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("f.bin");
    random_file(&src, 4 << 20, 1);
    let listener = p2p_core::transport::listen("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let silent = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let (stream, _) = p2p_core::net::secure_server(tcp, &Security::default())
            .await
            .unwrap();
        let mut framed = Framed::new(stream, FrameCodec);
        handshake::respond(&mut framed, &local_peer())
            .await
            .unwrap();
        let Some(Ok(Message::Offer(offer))) = framed.next().await else {
            panic!("expected an offer");
        };
        framed
            .send(Message::Accept(p2p_core::wire::Accept {
                transfer_id: offer.transfer_id,
                have: vec![],
                complete: vec![],
            }))
            .await
            .unwrap();
        // Read everything, answer nothing, never close.
        while let Some(Ok(_)) = framed.next().await {}
    });
    let opts = SessionOptions {
        idle_timeout: std::time::Duration::from_millis(1500),
        ..options(64 * 1024, 4)
    };
    let mut session = P2PSession::connect(&addr, &opts).await.unwrap();
    let started = std::time::Instant::now();
    let err = session.send(&[&src], &NoEvents).await.unwrap_err();
    assert!(
        matches!(err, Error::Transfer(TransferError::PeerSilent(_))),
        "{err}"
    );
    assert_eq!(err.to_string(), "the peer stopped answering for 1.5 s");
    assert!(err.is_transient());
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
    silent.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_can_see_an_offer_and_decline_or_accept_it_at_its_own_pace() {
    let tmp = tempfile::tempdir().unwrap();
    let folder = tmp.path().join("album");
    fs::create_dir_all(folder.join("empty")).unwrap();
    random_file(&folder.join("a.jpg"), 70_000, 1);
    random_file(&folder.join("b.jpg"), 30_000, 2);
    let out = tmp.path().join("out");
    // A sender that gives up on a peer silent for 600 ms.
    let opts = SessionOptions {
        idle_timeout: std::time::Duration::from_millis(600),
        device_name: "laptop".into(),
        ..options(64 * 1024, 4)
    };
    let (mut a, mut b) = pair(&opts).await;
    let recv = recv_opts(&out);
    let paths = [folder.as_path()];
    let seen = Arc::new(Mutex::new(Vec::new()));

    // Declined: the sender is told why, nothing is written, the session lives on.
    let decline = |offer: p2p_core::IncomingOffer| {
        seen.lock().unwrap().push(offer);
        std::future::ready(p2p_core::Decision::Decline("not now".into()))
    };
    let (sent, received) = tokio::join!(
        a.send(&paths, &NoEvents),
        b.receive_with(&recv, &NoEvents, decline)
    );
    let err = sent.unwrap_err();
    assert!(
        matches!(
            &err,
            Error::Transfer(TransferError::PeerAborted { code: ErrorCode::Cancelled, message })
                if message == "not now"
        ),
        "{err}"
    );
    assert!(!err.is_transient(), "a refusal is not retried");
    let Some(p2p_core::Received::Declined { transfer_id }) = received.unwrap() else {
        panic!("expected a declined offer");
    };
    let offer = seen.lock().unwrap().pop().expect("the offer was shown");
    assert_eq!(offer.transfer_id, transfer_id);
    assert_eq!(offer.peer, "laptop");
    assert_eq!((offer.files(), offer.total_bytes()), (2, 100_000));
    assert_eq!(offer.roots(), ["album"]);
    assert!(offer
        .entries
        .iter()
        .any(|e| e.path == "album/empty" && e.size.is_none()));
    assert!(!out.exists() || fs::read_dir(&out).unwrap().next().is_none());

    // Accepted after 3 × the sender's idle limit (a person reading the list): the
    // receiver answered the sender's pings meanwhile, so it is still there.
    let slow_accept = |_| async {
        tokio::time::sleep(std::time::Duration::from_millis(1800)).await;
        p2p_core::Decision::Accept
    };
    let (sent, received) = tokio::join!(
        a.send(&paths, &NoEvents),
        b.receive_with(&recv, &NoEvents, slow_accept)
    );
    sent.unwrap();
    assert!(matches!(
        received.unwrap(),
        Some(p2p_core::Received::Completed(_))
    ));
    assert_eq!(tree_digest(&out.join("album")), tree_digest(&folder));
}

/// Issue 10, item 7: a stranger that completes the handshake and then says nothing
/// used to hold a receiver forever; it is given up on after the idle limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_idles_after_the_handshake_is_given_up_on() {
    let tmp = tempfile::tempdir().unwrap();
    let listener = p2p_core::transport::listen("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let opts = recv_opts(tmp.path());
    let receiving = tokio::spawn(async move {
        let options = SessionOptions {
            idle_timeout: std::time::Duration::from_secs(1),
            ..SessionOptions::default()
        };
        let mut s = P2PSession::accept(&listener, &options).await?;
        s.receive(&opts, &NoEvents).await
    });
    let mut idle = scripted_sender(&addr).await;
    let result = tokio::time::timeout(std::time::Duration::from_secs(20), receiving)
        .await
        .expect("the receiver gave up on its own")
        .unwrap();
    assert!(
        matches!(result, Err(Error::Transfer(TransferError::PeerSilent(_)))),
        "{result:?}"
    );
    // It was pinged before being given up on.
    assert!(matches!(idle.next().await, Some(Ok(Message::Ping(_)))));
}
