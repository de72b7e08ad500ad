//! Slow links: a transfer whose window takes several idle limits to cross must neither
//! time out nor freeze its progress. Real sessions over real TCP on 127.0.0.1 (port 0);
//! the slowness comes from the sender's own throttle or from a rate-limiting TCP proxy
//! between the peers. Every received file is compared by SHA-256.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use p2p_core::throttle::TokenBucket;
use p2p_core::{NoEvents, P2PSession, ReceiveOptions, SessionConfig, SessionOptions};
use p2p_core::{TransferEvent, TransferSummary};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// A deliberately short idle limit: a peer silent this long is given up on.
const IDLE: Duration = Duration::from_secs(1);

fn options(chunk_size: u32, window_size: u32, max_speed: Option<u64>) -> SessionOptions {
    SessionOptions {
        config: SessionConfig {
            chunk_size,
            window_size,
            compress: false,
            ..p2p_core::config::default_config()
        },
        max_speed,
        idle_timeout: IDLE,
        ..SessionOptions::default()
    }
}

/// A stream with small kernel buffers, so that a slow path pushes back at once instead
/// of disappearing into megabytes of loopback buffering.
async fn small_buffered(addr: std::net::SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_send_buffer_size(32 * 1024).unwrap();
    socket.set_recv_buffer_size(32 * 1024).unwrap();
    socket.connect(addr).await.unwrap()
}

async fn small_listener() -> TcpListener {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_send_buffer_size(32 * 1024).unwrap();
    socket.set_recv_buffer_size(32 * 1024).unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    socket.listen(8).unwrap()
}

/// Forwards bytes from `from` to `to` at most `rate` bytes per second.
async fn pace(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    rate: u64,
) {
    let mut bucket = TokenBucket::new(rate, Instant::now());
    let mut buf = vec![0u8; 8 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let wait = bucket.reserve(n, Instant::now());
        tokio::time::sleep(wait).await;
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

/// A TCP proxy on loopback that limits each direction to `rate` bytes per second;
/// returns the address to connect to.
async fn rate_limiting_proxy(target: std::net::SocketAddr, rate: u64) -> std::net::SocketAddr {
    let listener = small_listener().await;
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let Ok((inbound, _)) = listener.accept().await else {
            return;
        };
        let outbound = small_buffered(target).await;
        let (in_r, in_w) = inbound.into_split();
        let (out_r, out_w) = outbound.into_split();
        tokio::join!(pace(in_r, out_w, rate), pace(out_r, in_w, rate));
    });
    addr
}

/// Collects the times of progress events.
#[derive(Clone, Default)]
struct ProgressTimes(Arc<Mutex<Vec<Instant>>>);

impl p2p_core::EventSink for ProgressTimes {
    fn emit(&self, event: TransferEvent) {
        if matches!(event, TransferEvent::Progress { .. }) {
            self.0.lock().unwrap().push(Instant::now());
        }
    }
}

impl ProgressTimes {
    fn longest_gap(&self) -> Duration {
        let times = self.0.lock().unwrap();
        times
            .windows(2)
            .map(|w| w[1] - w[0])
            .max()
            .unwrap_or_default()
    }
}

/// Sends a random file of `len` bytes from a session connecting to `connect_to` to a
/// receiver accepting on `listener`, and checks that both sides complete, the bytes
/// arrive identical, and the sender's progress never froze.
async fn transfer_completes(
    listener: TcpListener,
    connect_to: std::net::SocketAddr,
    sender_options: SessionOptions,
    len: usize,
) {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("slow.bin");
    random_file(&src, len, len as u64);
    let out = tmp.path().join("out");
    let receiver_options = SessionOptions {
        config: p2p_core::config::ceilings(false),
        idle_timeout: IDLE,
        ..SessionOptions::default()
    };
    let receive_into = out.clone();
    let receiving = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let mut session = P2PSession::respond(stream, &receiver_options).await?;
        let options = ReceiveOptions {
            output_dir: receive_into,
            overwrite: false,
        };
        session.receive(&options, &NoEvents).await
    });
    let stream = small_buffered(connect_to).await;
    let mut session = P2PSession::initiate(stream, &sender_options).await.unwrap();
    let progress = ProgressTimes::default();
    let sent = session.send(&[&src], &progress).await;
    let received = receiving.await.unwrap();
    let sent: TransferSummary = sent.expect("the sender completes");
    let received = received
        .expect("the receiver completes")
        .expect("a transfer");
    assert_eq!((sent.bytes, received.bytes), (len as u64, len as u64));
    assert_eq!(sha256_file(&out.join("slow.bin")), sha256_file(&src));
    let gap = progress.longest_gap();
    assert!(
        gap < Duration::from_millis(700),
        "progress froze for {gap:?} (interval {:?})",
        p2p_core::event::PROGRESS_INTERVAL
    );
}

/// The sender's own limit makes one window (16 × 128 KiB at 512 KiB/s) take four idle
/// limits to leave: reads, pings and progress must go on while it waits for tokens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttled_sender_whose_window_takes_several_idle_limits_completes() {
    let listener = small_listener().await;
    let addr = listener.local_addr().unwrap();
    let options = options(128 * 1024, 16, Some(512 * 1024));
    transfer_completes(listener, addr, options, 3 << 20).await;
}

/// A link of 256 KiB/s between the peers: one 512 KiB chunk takes two idle limits to
/// arrive (the receiver sees bytes, not whole frames) and the window (all 1.5 MiB) six
/// (the sender's writes block on a full socket while acknowledgements wait to be read).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_slower_than_a_chunk_per_idle_limit_completes() {
    let listener = small_listener().await;
    let proxy = rate_limiting_proxy(listener.local_addr().unwrap(), 256 * 1024).await;
    let options = options(512 * 1024, 8, None);
    transfer_completes(listener, proxy, options, 3 << 19).await;
}
