//! The TURN client against a real coturn on loopback: allocation over UDP and TCP,
//! data both ways through the relay (byte-compared, more than 1 MiB each way), wrong
//! credentials, permissions, refreshes across a short allocation lifetime and stale
//! nonces, close. Without coturn the tests print SKIPPED (and fail under CI=true).
//!
//! The throughput benchmark is ignored by default:
//! `cargo test -p p2p-core --test turn throughput -- --ignored --nocapture` (the dev
//! profile of this workspace is optimized).

mod support;

use std::net::{IpAddr, SocketAddr, TcpListener, UdpSocket as StdUdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use hmac::{Hmac, Mac};
use p2p_core::nat::client::{binding, RetransmitSchedule};
use p2p_core::nat::turn::{TurnClient, TurnCredentials, TurnError, TurnTransport};
use support::{require, turnserver};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

const SECRET: &str = "north-by-northwest";
const REALM: &str = "p2p.test";

/// A coturn TURN server on 127.0.0.1 with REST-API (shared secret) credentials, killed
/// on drop.
struct Coturn {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
    log: PathBuf,
}

impl Coturn {
    /// Starts coturn with `extra` flags; `None` (after printing SKIPPED) when it is not
    /// installed and not under CI.
    async fn start(extra: &[&str]) -> Option<Coturn> {
        let found = turnserver();
        if !require(found.is_some(), "turnserver not installed") {
            return None;
        }
        let exe = found?;
        for attempt in 0..5 {
            let port = free_port();
            let relay_base: u16 = rand::random_range(20_000..59_000);
            let dir = tempfile::tempdir().expect("temp dir");
            let log = dir.path().join("turnserver.log");
            let mut command = Command::new(&exe);
            command
                .args([
                    "-n",
                    "--no-cli",
                    "--no-tls",
                    "--no-dtls",
                    "--no-rfc5780",
                    "--listening-ip",
                    "127.0.0.1",
                    "--relay-ip",
                    "127.0.0.1",
                    "--allow-loopback-peers",
                    "--use-auth-secret",
                    "--static-auth-secret",
                    SECRET,
                    "--realm",
                    REALM,
                    "--fingerprint",
                    "--log-file",
                    "stdout",
                    "--simple-log",
                ])
                .arg("--listening-port")
                .arg(port.to_string())
                .arg(format!("--min-port={relay_base}"))
                .arg(format!("--max-port={}", relay_base + 500))
                .arg("--pidfile")
                .arg(dir.path().join("turnserver.pid"))
                .arg("--userdb")
                .arg(dir.path().join("turndb"))
                .args(extra);
            let child = command
                .current_dir(dir.path())
                .stdin(Stdio::null())
                .stdout(std::fs::File::create(&log).expect("log file"))
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn turnserver");
            let server = Coturn {
                child,
                addr: SocketAddr::from(([127, 0, 0, 1], port)),
                _dir: dir,
                log,
            };
            if server.wait_ready().await {
                return Some(server);
            }
            eprintln!(
                "coturn on port {port} did not answer (attempt {attempt}); log:\n{}",
                server.log_tail()
            );
        }
        panic!("coturn never became ready");
    }

    /// Polls with STUN Binding requests (UDP) and a TCP connect until both answer.
    async fn wait_ready(&self) -> bool {
        let schedule = RetransmitSchedule {
            initial_rto: Duration::from_millis(50),
            timeout: Duration::from_millis(200),
            ..RetransmitSchedule::default()
        };
        for _ in 0..40 {
            let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
            if binding(&socket, self.addr, &schedule).await.is_ok()
                && tokio::net::TcpStream::connect(self.addr).await.is_ok()
            {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for Coturn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port free for UDP and TCP on 127.0.0.1 (bound, then released; coturn's start is
/// retried on a clash).
fn free_port() -> u16 {
    loop {
        let Ok(udp) = StdUdpSocket::bind("127.0.0.1:0") else {
            continue;
        };
        let Ok(addr) = udp.local_addr() else { continue };
        if TcpListener::bind(addr).is_ok() {
            return addr.port();
        }
    }
}

/// coturn's TURN REST API credentials: username `expiry:name`, password
/// base64(HMAC-SHA1(secret, username)).
fn rest_credentials(secret: &str, valid_for: Duration) -> TurnCredentials {
    let expiry = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
        + valid_for.as_secs();
    let username = format!("{expiry}:test");
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(secret.as_bytes()).expect("any key");
    mac.update(username.as_bytes());
    let password = base64(&mac.finalize().into_bytes());
    TurnCredentials { username, password }
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[test]
fn base64_matches_rfc4648() {
    assert_eq!(base64(b""), "");
    assert_eq!(base64(b"f"), "Zg==");
    assert_eq!(base64(b"fo"), "Zm8=");
    assert_eq!(base64(b"foo"), "Zm9v");
    assert_eq!(base64(b"foobar"), "Zm9vYmFy");
}

fn creds() -> TurnCredentials {
    rest_credentials(SECRET, Duration::from_secs(3600))
}

/// Datagram `seq` of `len` bytes: the sequence number, then a pattern derived from it.
fn datagram(seq: u32, len: usize) -> Bytes {
    let mut d = Vec::with_capacity(len);
    d.extend_from_slice(&seq.to_be_bytes());
    d.extend((4..len).map(|i| (seq as usize * 31 + i * 7) as u8));
    Bytes::from(d)
}

fn check(d: &[u8], len: usize) -> Option<u32> {
    let seq = u32::from_be_bytes(d.get(..4)?.try_into().ok()?);
    (d.len() == len && d == datagram(seq, len)).then_some(seq)
}

const DATAGRAM: usize = 1200;
/// 1,000 datagrams of 1,200 bytes: 1.14 MiB each way.
const COUNT: u32 = 1000;
/// Datagrams in flight before the sender waits for them to arrive (the tests pace
/// like a transport with flow control would; loopback then loses nothing).
const BATCH: u32 = 50;
/// The same towards a client on TCP: coturn drops relayed UDP data for a TCP client
/// once 32 KiB wait in its output buffer for that connection
/// (`BUFFEREVENT_MAX_UDP_TO_TCP_WRITE`, 64<<9), which a burst of 50 × 1,204 bytes
/// from the peer exceeds (about 42 of 50 arrive). A burst of 25 (30 KB) fits.
const BATCH_TO_TCP_CLIENT: u32 = 25;
const WAIT: Duration = Duration::from_secs(3);

/// Sends `COUNT` datagrams from the client to `peer` and back, in batches, and
/// checks every byte; returns the losses (client→peer, peer→client).
async fn relay_both_ways(
    client: &mut TurnClient,
    rx: &mut mpsc::Receiver<(SocketAddr, Bytes)>,
    peer: &UdpSocket,
) -> (u32, u32) {
    let relayed = client.relayed_addr();
    let peer_addr = peer.local_addr().expect("peer addr");
    let sender = client.sender();
    let mut buf = vec![0u8; 65_536];

    // Client → peer.
    let mut seen = vec![false; COUNT as usize];
    let mut lost_out = 0;
    for start in (0..COUNT).step_by(BATCH as usize) {
        let end = (start + BATCH).min(COUNT);
        for seq in start..end {
            assert!(
                sender.send(peer_addr, datagram(seq, DATAGRAM)),
                "queue full"
            );
        }
        let mut got = 0;
        while got < end - start {
            match tokio::time::timeout(WAIT, peer.recv_from(&mut buf)).await {
                Ok(Ok((n, from))) => {
                    assert_eq!(from, relayed, "data comes from the relayed address");
                    let seq = check(&buf[..n], DATAGRAM).expect("datagram arrives intact");
                    assert!(!seen[seq as usize], "datagram {seq} duplicated");
                    seen[seq as usize] = true;
                    got += 1;
                }
                Ok(Err(e)) => panic!("peer socket: {e}"),
                Err(_) => {
                    lost_out += end - start - got;
                    break;
                }
            }
        }
    }

    // Peer → client.
    let batch = match client.transport() {
        TurnTransport::Udp => BATCH,
        TurnTransport::Tcp => BATCH_TO_TCP_CLIENT,
    };
    let mut seen = vec![false; COUNT as usize];
    let mut lost_in = 0;
    for start in (0..COUNT).step_by(batch as usize) {
        let end = (start + batch).min(COUNT);
        for seq in start..end {
            peer.send_to(&datagram(seq, DATAGRAM), relayed)
                .await
                .expect("peer send");
        }
        let mut got = 0;
        while got < end - start {
            match tokio::time::timeout(WAIT, rx.recv()).await {
                Ok(Some((from, data))) => {
                    assert_eq!(from, peer_addr, "data is labelled with the peer");
                    let seq = check(&data, DATAGRAM).expect("datagram arrives intact");
                    assert!(!seen[seq as usize], "datagram {seq} duplicated");
                    seen[seq as usize] = true;
                    got += 1;
                }
                Ok(None) => panic!("the TURN client's receiver closed"),
                Err(_) => {
                    lost_in += end - start - got;
                    break;
                }
            }
        }
    }
    (lost_out, lost_in)
}

async fn allocation_relays_both_ways(transport: TurnTransport) {
    let Some(coturn) = Coturn::start(&[]).await else {
        return;
    };
    let started = Instant::now();
    let mut client = TurnClient::allocate(coturn.addr, transport, &creds())
        .await
        .unwrap_or_else(|e| panic!("allocate over {transport}: {e}\n{}", coturn.log_tail()));
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(client.transport(), transport);
    assert_eq!(client.relayed_addr().ip(), IpAddr::from([127, 0, 0, 1]));
    let mapped = client
        .mapped_addr()
        .expect("coturn sends XOR-MAPPED-ADDRESS");
    assert_eq!(mapped.ip(), IpAddr::from([127, 0, 0, 1]));

    let peer = UdpSocket::bind("127.0.0.1:0").await.expect("peer");
    client
        .permit(peer.local_addr().expect("addr").ip())
        .await
        .expect("permission");
    let mut rx = client.take_receiver().expect("receiver");
    assert!(client.take_receiver().is_none());

    let (lost_out, lost_in) = relay_both_ways(&mut client, &mut rx, &peer).await;
    assert_eq!(
        (lost_out, lost_in),
        (0, 0),
        "datagrams lost on loopback (out, in)"
    );

    let sender = client.sender();
    let closing = Instant::now();
    client.close().await;
    assert!(closing.elapsed() < Duration::from_millis(1500));
    // The task is gone: nothing can be queued any more, and the receiver ends.
    assert!(!sender.send(
        peer.local_addr().expect("addr"),
        Bytes::from_static(b"late")
    ));
    assert!(tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("receiver ends")
        .is_none());
}

#[tokio::test]
async fn udp_allocation_relays_both_ways() {
    allocation_relays_both_ways(TurnTransport::Udp).await;
}

#[tokio::test]
async fn tcp_allocation_relays_both_ways() {
    allocation_relays_both_ways(TurnTransport::Tcp).await;
}

#[tokio::test]
async fn wrong_password_is_an_auth_error() {
    let Some(coturn) = Coturn::start(&[]).await else {
        return;
    };
    for transport in [TurnTransport::Udp, TurnTransport::Tcp] {
        let mut wrong = creds();
        wrong.password = rest_credentials("another secret", Duration::from_secs(3600)).password;
        let e = TurnClient::allocate(coturn.addr, transport, &wrong)
            .await
            .expect_err("a wrong password is refused");
        let TurnError::Auth(message) = &e else {
            panic!("expected TurnError::Auth, got {e:?}")
        };
        assert!(message.contains("401"), "{message}");
        assert!(message.contains(REALM), "{message}");
        assert!(message.contains("wrong password"), "{message}");

        // Expired REST credentials are refused the same way.
        let mut expired = rest_credentials(SECRET, Duration::ZERO);
        expired.username = "1000000000:test".into();
        let e = TurnClient::allocate(coturn.addr, transport, &expired)
            .await
            .expect_err("expired credentials are refused");
        assert!(matches!(e, TurnError::Auth(_)), "{e:?}");
    }
}

#[tokio::test]
async fn nothing_passes_without_a_permission() {
    let Some(coturn) = Coturn::start(&[]).await else {
        return;
    };
    for transport in [TurnTransport::Udp, TurnTransport::Tcp] {
        let mut client = TurnClient::allocate(coturn.addr, transport, &creds())
            .await
            .expect("allocate");
        let relayed = client.relayed_addr();
        let mut rx = client.take_receiver().expect("receiver");
        let stranger = UdpSocket::bind("127.0.0.1:0").await.expect("stranger");
        let friend = UdpSocket::bind("127.0.0.2:0")
            .await
            .expect("friend on 127.0.0.2");
        let (stranger_addr, friend_addr) = (
            stranger.local_addr().expect("addr"),
            friend.local_addr().expect("addr"),
        );
        client.permit(friend_addr.ip()).await.expect("permission");
        let sender = client.sender();

        // In: the stranger writes first, then the friend; only the friend's arrive.
        for i in 0..10u32 {
            stranger
                .send_to(&datagram(i, 100), relayed)
                .await
                .expect("send");
        }
        friend
            .send_to(&datagram(99, 100), relayed)
            .await
            .expect("send");
        let (from, data) = tokio::time::timeout(WAIT, rx.recv())
            .await
            .expect("friend's datagram arrives")
            .expect("receiver open");
        assert_eq!((from, check(&data, 100)), (friend_addr, Some(99)));
        assert!(rx.try_recv().is_err(), "nothing from the stranger");

        // Out: to the stranger first, then to the friend; only the friend gets data.
        for i in 0..10u32 {
            assert!(sender.send(stranger_addr, datagram(i, 100)));
        }
        assert!(sender.send(friend_addr, datagram(7, 100)));
        let mut buf = [0u8; 2048];
        let (n, from) = tokio::time::timeout(WAIT, friend.recv_from(&mut buf))
            .await
            .expect("friend gets its datagram")
            .expect("recv");
        assert_eq!((from, check(&buf[..n], 100)), (relayed, Some(7)));
        // The stranger's datagrams were queued before the friend's, on the same path.
        let mut probe = [0u8; 2048];
        let nothing =
            tokio::time::timeout(Duration::from_millis(300), stranger.recv_from(&mut probe)).await;
        assert!(nothing.is_err(), "the stranger received data: {nothing:?}");

        // Once permitted, the stranger gets through both ways.
        client.permit(stranger_addr.ip()).await.expect("permission");
        assert!(sender.send(stranger_addr, datagram(8, 100)));
        let (n, _) = tokio::time::timeout(WAIT, stranger.recv_from(&mut buf))
            .await
            .expect("permitted stranger gets data")
            .expect("recv");
        assert_eq!(check(&buf[..n], 100), Some(8));
        client.close().await;
    }
}

/// coturn grants a 3 s allocation (`--max-allocate-lifetime`) and expires nonces after
/// 2 s (`--stale-nonce`). Without the refresh at half the lifetime the relay would stop
/// after 3 s (coturn then grants its default 600 s to the Refresh). A permission asked
/// for after the nonce expired meets 438 Stale Nonce and must be retried with the new
/// nonce.
#[tokio::test]
async fn refreshes_keep_a_short_allocation_alive_through_stale_nonces() {
    let Some(coturn) = Coturn::start(&["--max-allocate-lifetime=3", "--stale-nonce=2"]).await
    else {
        return;
    };
    for transport in [TurnTransport::Udp, TurnTransport::Tcp] {
        let mut client = TurnClient::allocate(coturn.addr, transport, &creds())
            .await
            .expect("allocate");
        let relayed = client.relayed_addr();
        let peer = UdpSocket::bind("127.0.0.1:0").await.expect("peer");
        let peer_addr = peer.local_addr().expect("addr");
        client.permit(peer_addr.ip()).await.expect("permission");
        let mut rx = client.take_receiver().expect("receiver");
        let sender = client.sender();
        let mut buf = [0u8; 2048];
        // One exchange per second for 4.5 s (1.5 lifetimes), across the refresh at 1.5 s
        // and 3 s and the nonce expiring at 2 s and 4 s.
        let start = tokio::time::Instant::now();
        for round in 0..=4u32 {
            tokio::time::sleep_until(start + Duration::from_millis(1125) * round).await;
            assert!(sender.send(peer_addr, datagram(round, 64)));
            let (n, from) = tokio::time::timeout(WAIT, peer.recv_from(&mut buf))
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "{transport}: round {round}: relay stopped\n{}",
                        coturn.log_tail()
                    )
                })
                .expect("recv");
            assert_eq!((from, check(&buf[..n], 64)), (relayed, Some(round)));
            peer.send_to(&datagram(round, 64), relayed)
                .await
                .expect("send");
            let (from, data) = tokio::time::timeout(WAIT, rx.recv())
                .await
                .expect("data from the peer")
                .expect("receiver open");
            assert_eq!((from, check(&data, 64)), (peer_addr, Some(round)));
        }
        // A permission asked for now goes out with a nonce coturn has expired: it is
        // answered 438 and retried with the new one.
        let second = UdpSocket::bind("127.0.0.2:0")
            .await
            .expect("peer on 127.0.0.2");
        let second_addr = second.local_addr().expect("addr");
        client
            .permit(second_addr.ip())
            .await
            .expect("permission despite a stale nonce");
        assert!(sender.send(second_addr, datagram(5, 64)));
        let (n, _) = tokio::time::timeout(WAIT, second.recv_from(&mut buf))
            .await
            .expect("second peer gets data")
            .expect("recv");
        assert_eq!(check(&buf[..n], 64), Some(5));
        client.close().await;
    }
}

#[tokio::test]
async fn dropping_the_client_ends_its_task() {
    let Some(coturn) = Coturn::start(&[]).await else {
        return;
    };
    for transport in [TurnTransport::Udp, TurnTransport::Tcp] {
        let mut client = TurnClient::allocate(coturn.addr, transport, &creds())
            .await
            .expect("allocate");
        let mut rx = client.take_receiver().expect("receiver");
        let sender = client.sender();
        drop(client);
        // The task deallocates (best effort), ends, and with it the reader: the
        // receiver closes and the sender refuses.
        let end = tokio::time::timeout(WAIT, rx.recv()).await;
        assert!(matches!(end, Ok(None)), "{transport}: {end:?}");
        assert!(!sender.send("127.0.0.1:9".parse().expect("addr"), Bytes::new()));
    }
}

#[tokio::test]
async fn an_unreachable_server_is_reported() {
    // Nothing listens on a port we just released.
    let port = free_port();
    let server = SocketAddr::from(([127, 0, 0, 1], port));
    let e = TurnClient::allocate(server, TurnTransport::Tcp, &creds())
        .await
        .expect_err("nothing listens");
    assert!(matches!(e, TurnError::Unreachable(_)), "{e:?}");
    let started = Instant::now();
    let e = TurnClient::allocate(server, TurnTransport::Udp, &creds())
        .await
        .expect_err("nothing answers");
    assert!(matches!(e, TurnError::Timeout), "{e:?}");
    assert!(started.elapsed() < Duration::from_millis(5500));
}

/// Throughput of 100 MiB in 1,200-byte datagrams, client → peer, through coturn over
/// UDP and TCP, and directly between two UDP sockets for comparison. Paced with a
/// window of datagrams in flight (as a congestion-controlled sender would be).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark"]
async fn throughput_through_coturn() {
    let Some(coturn) = Coturn::start(&[]).await else {
        return;
    };
    const TOTAL: u64 = 100 * 1024 * 1024;
    let count = TOTAL.div_ceil(DATAGRAM as u64);

    // Direct baseline.
    let a = UdpSocket::bind("127.0.0.1:0").await.expect("a");
    let b = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("b"));
    let b_addr = b.local_addr().expect("addr");
    let direct = {
        let received = Arc::new(AtomicU64::new(0));
        let counter = received.clone();
        let rx = b.clone();
        let task = tokio::spawn(async move {
            let mut last = Instant::now();
            let mut buf = vec![0u8; 2048];
            while let Ok(Ok(_)) = tokio::time::timeout(WAIT, rx.recv_from(&mut buf)).await {
                last = Instant::now();
                if counter.fetch_add(1, Ordering::Relaxed) + 1 == count {
                    break;
                }
            }
            last
        });
        let payload = datagram(1, DATAGRAM);
        let start = Instant::now();
        let mut window = Window::new(count);
        while let Some(go) = window.next(&received).await {
            if go {
                window.sent(a.send_to(&payload, b_addr).await.is_ok());
            }
        }
        let last = task.await.expect("receiver task");
        (received.load(Ordering::Relaxed), last - start)
    };
    report("direct UDP", direct, count);

    for transport in [TurnTransport::Udp, TurnTransport::Tcp] {
        let client = TurnClient::allocate(coturn.addr, transport, &creds())
            .await
            .expect("allocate");
        let peer = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("peer"));
        let peer_addr = peer.local_addr().expect("addr");
        client.permit(peer_addr.ip()).await.expect("permission");
        let sender = client.sender();
        // Bind the channel first, so that the measurement is ChannelData.
        assert!(sender.send(peer_addr, datagram(0, DATAGRAM)));
        let mut buf = vec![0u8; 2048];
        tokio::time::timeout(WAIT, peer.recv_from(&mut buf))
            .await
            .expect("first datagram")
            .expect("recv");
        let received = Arc::new(AtomicU64::new(0));
        let counter = received.clone();
        let rx = peer.clone();
        let task = tokio::spawn(async move {
            let mut last = Instant::now();
            let mut buf = vec![0u8; 2048];
            while let Ok(Ok(_)) = tokio::time::timeout(WAIT, rx.recv_from(&mut buf)).await {
                last = Instant::now();
                if counter.fetch_add(1, Ordering::Relaxed) + 1 == count {
                    break;
                }
            }
            last
        });
        let payload = datagram(1, DATAGRAM);
        let start = Instant::now();
        let mut window = Window::new(count);
        while let Some(go) = window.next(&received).await {
            if go {
                window.sent(sender.send(peer_addr, payload.clone()));
            }
        }
        let last = task.await.expect("receiver task");
        report(
            &format!("coturn, {transport} to the server, client -> peer"),
            (received.load(Ordering::Relaxed), last - start),
            count,
        );

        // Peer -> client.
        let mut client = client;
        let mut data_rx = client.take_receiver().expect("receiver");
        let relayed = client.relayed_addr();
        let received = Arc::new(AtomicU64::new(0));
        let counter = received.clone();
        let task = tokio::spawn(async move {
            let mut last = Instant::now();
            while let Ok(Some(_)) = tokio::time::timeout(WAIT, data_rx.recv()).await {
                last = Instant::now();
                if counter.fetch_add(1, Ordering::Relaxed) + 1 == count {
                    break;
                }
            }
            last
        });
        let start = Instant::now();
        let mut window = Window::new(count);
        while let Some(go) = window.next(&received).await {
            if go {
                window.sent(peer.send_to(&payload, relayed).await.is_ok());
            }
        }
        let last = task.await.expect("receiver task");
        report(
            &format!("coturn, {transport} to the server, peer -> client"),
            (received.load(Ordering::Relaxed), last - start),
            count,
        );
        client.close().await;
    }
}

fn report(what: &str, (received, elapsed): (u64, Duration), count: u64) {
    // Timed from the first send to the last datagram received.
    let bytes = received * DATAGRAM as u64;
    let secs = elapsed.as_secs_f64();
    println!(
        "{what}: {received}/{count} datagrams, {:.1} MiB in {secs:.2} s = {:.0} Mbit/s ({:.1} MiB/s), loss {:.3}%",
        bytes as f64 / 1048576.0,
        bytes as f64 * 8.0 / secs / 1e6,
        bytes as f64 / 1048576.0 / secs,
        (count - received) as f64 * 100.0 / count as f64,
    );
}

/// Paces a benchmark sender: at most `IN_FLIGHT` datagrams sent and not yet received;
/// when nothing arrives for 200 ms the missing ones count as lost and the window
/// opens again (so a loss cannot stall the run).
struct Window {
    count: u64,
    sent: u64,
    written_off: u64,
    last_received: u64,
    last_progress: Instant,
}

impl Window {
    const IN_FLIGHT: u64 = 128;

    fn new(count: u64) -> Self {
        Window {
            count,
            sent: 0,
            written_off: 0,
            last_received: 0,
            last_progress: Instant::now(),
        }
    }

    /// `None` when done; `Some(true)` to send one more, `Some(false)` after waiting.
    async fn next(&mut self, received: &AtomicU64) -> Option<bool> {
        if self.sent >= self.count {
            return None;
        }
        let got = received.load(Ordering::Relaxed);
        if got != self.last_received {
            self.last_received = got;
            self.last_progress = Instant::now();
        }
        if self.sent - got - self.written_off < Self::IN_FLIGHT {
            return Some(true);
        }
        if self.last_progress.elapsed() > Duration::from_millis(200) {
            self.written_off = self.sent - got;
            self.last_progress = Instant::now();
            return Some(true);
        }
        tokio::task::yield_now().await;
        Some(false)
    }

    fn sent(&mut self, ok: bool) {
        if ok {
            self.sent += 1;
        }
    }
}
