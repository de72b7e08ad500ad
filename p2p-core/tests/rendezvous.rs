//! The rendezvous server and its client over real sockets on loopback: pairing, the
//! messages both ways, the refusals and their reasons, every limit, hostile input, STUN
//! on the same port over UDP, the TURN credentials, and the tracker (announce, lookup,
//! introduce, expiry, its limits, and the client's reconnection).

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use p2p_core::nat::client::{binding, RetransmitSchedule};
use p2p_core::rendezvous::protocol::{self, ClientMessage, ServerMessage, MAX_BODY, MAX_FRAME};
use p2p_core::rendezvous::{
    turn_credentials, Introduction, Limits, Mailbox, RendezvousError, Server, ServerConfig,
    ServerStats, SwarmId, Tracker, TurnSecret,
};
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::task::JoinHandle;

/// A server on 127.0.0.1:0, stopped when dropped.
struct Running {
    addr: SocketAddr,
    server: String,
    stats: Arc<ServerStats>,
    task: JoinHandle<std::io::Result<()>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn start_with(limits: Limits, turn: Option<TurnSecret>) -> Running {
    let server = Server::bind(ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        turn,
        limits,
    })
    .await
    .unwrap();
    let addr = server.local_addr();
    let stats = server.stats();
    Running {
        addr,
        server: addr.to_string(),
        stats,
        task: tokio::spawn(server.run()),
    }
}

async fn start() -> Running {
    start_with(Limits::default(), None).await
}

/// Pairs two clients and checks that a message goes each way.
async fn assert_pair_works(server: &str) {
    let (mut a, nameplate) = Mailbox::allocate(server).await.unwrap();
    let mut b = Mailbox::claim(server, nameplate).await.unwrap();
    a.send(b"ping").await.unwrap();
    assert_eq!(b.recv().await.unwrap(), b"ping");
    b.send(b"pong").await.unwrap();
    assert_eq!(a.recv().await.unwrap(), b"pong");
}

fn refused(result: Result<impl std::fmt::Debug, RendezvousError>) -> String {
    match result {
        Err(RendezvousError::Refused(reason)) => reason,
        other => panic!("expected Refused, got {other:?}"),
    }
}

// Raw connections, for what the client would never send.

async fn raw(server: &Running) -> TcpStream {
    TcpStream::connect(server.addr).await.unwrap()
}

async fn send_message(stream: &mut TcpStream, message: &ClientMessage) {
    let frame = protocol::encode_frame(message).unwrap();
    stream.write_all(&frame).await.unwrap();
}

/// The next frame from the server, `None` at EOF (or a reset).
async fn read_frame(stream: &mut TcpStream) -> Option<ServerMessage> {
    let read = async {
        let mut head = [0u8; 2];
        stream.read_exact(&mut head).await.ok()?;
        let mut payload = vec![0u8; usize::from(u16::from_be_bytes(head))];
        assert!(payload.len() <= MAX_FRAME);
        stream.read_exact(&mut payload).await.ok()?;
        Some(protocol::decode::<ServerMessage>(&payload).unwrap())
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("the server neither answered nor closed within 10 s")
}

/// Reads frames up to the server's `Error`, returns its reason, and checks that the
/// server closes after it.
async fn expect_error(stream: &mut TcpStream) -> String {
    loop {
        match read_frame(stream).await {
            Some(ServerMessage::Error { reason }) => {
                assert_eq!(read_frame(stream).await, None, "nothing after Error");
                return reason;
            }
            Some(_) => continue,
            None => panic!("closed without Error"),
        }
    }
}

async fn hello(stream: &mut TcpStream) {
    send_message(stream, &ClientMessage::Hello { version: 1 }).await;
    assert!(matches!(
        read_frame(stream).await,
        Some(ServerMessage::Welcome {
            version: 1,
            turn: None
        })
    ));
}

#[tokio::test]
async fn two_clients_pair_and_exchange_messages_both_ways() {
    let server = start().await;
    let (mut a, nameplate) = Mailbox::allocate(&server.server).await.unwrap();
    assert_eq!(nameplate, 1, "the first nameplate is 1");
    assert_eq!(a.server_addr(), server.addr);
    assert!(a.turn().is_none());
    // Sent before the other side is there: queued.
    a.send(b"first").await.unwrap();
    a.send(b"second").await.unwrap();

    let mut b = Mailbox::claim(&server.server, nameplate).await.unwrap();
    assert_eq!(b.recv().await.unwrap(), b"first");
    assert_eq!(b.recv().await.unwrap(), b"second");
    a.send(b"third").await.unwrap();
    assert_eq!(b.recv().await.unwrap(), b"third");

    // The other way (a skips PeerJoined), with every byte value and the largest body.
    let all: Vec<u8> = (0..=255u8).cycle().take(MAX_BODY).collect();
    b.send(&all).await.unwrap();
    b.send(b"").await.unwrap();
    assert_eq!(a.recv().await.unwrap(), all);
    assert_eq!(a.recv().await.unwrap(), b"");

    // A second pair gets the next nameplate and does not see the first pair's traffic.
    let (mut c, second) = Mailbox::allocate(&server.server).await.unwrap();
    assert_eq!(second, 2);
    let mut d = Mailbox::claim(&server.server, second).await.unwrap();
    c.send(b"other pair").await.unwrap();
    assert_eq!(d.recv().await.unwrap(), b"other pair");
    a.send(b"still first").await.unwrap();
    assert_eq!(b.recv().await.unwrap(), b"still first");
    assert_eq!(server.stats.mailboxes(), 2);
    assert_eq!(server.stats.panics(), 0);
}

#[tokio::test]
async fn claiming_an_unknown_nameplate_says_no_one_is_waiting() {
    let server = start().await;
    let reason = refused(Mailbox::claim(&server.server, 12).await);
    assert_eq!(
        reason,
        "no one is waiting on nameplate 12: check the code, or the sender stopped"
    );
    assert_pair_works(&server.server).await;
}

#[tokio::test]
async fn claiming_a_nameplate_that_has_two_sides_says_it_is_taken() {
    let server = start().await;
    let (mut a, nameplate) = Mailbox::allocate(&server.server).await.unwrap();
    let mut b = Mailbox::claim(&server.server, nameplate).await.unwrap();
    let reason = refused(Mailbox::claim(&server.server, nameplate).await);
    assert_eq!(reason, "nameplate 1 is taken by another transfer");
    // The pair is untouched.
    a.send(b"ok").await.unwrap();
    assert_eq!(b.recv().await.unwrap(), b"ok");
}

#[tokio::test]
async fn when_one_side_leaves_the_other_gets_peer_left_and_the_nameplate_is_free_again() {
    let server = start().await;
    let (_one, first) = Mailbox::allocate(&server.server).await.unwrap();
    let (mut a, nameplate) = Mailbox::allocate(&server.server).await.unwrap();
    let (_three, _) = Mailbox::allocate(&server.server).await.unwrap();
    assert_eq!((first, nameplate), (1, 2));

    let mut b = Mailbox::claim(&server.server, nameplate).await.unwrap();
    b.send(b"bye").await.unwrap();
    drop(b);
    // What b sent before leaving still arrives, then PeerLeft.
    assert_eq!(a.recv().await.unwrap(), b"bye");
    assert!(matches!(a.recv().await, Err(RendezvousError::PeerLeft)));
    // The mailbox is gone: 2 is the smallest free nameplate again.
    let (mut c, again) = Mailbox::allocate(&server.server).await.unwrap();
    assert_eq!(again, 2);

    // The other direction: side 0 leaves, side 1 is told.
    let mut d = Mailbox::claim(&server.server, again).await.unwrap();
    drop(a);
    c.send(b"x").await.unwrap();
    assert_eq!(d.recv().await.unwrap(), b"x");
    drop(c);
    assert!(matches!(d.recv().await, Err(RendezvousError::PeerLeft)));
}

#[tokio::test]
async fn recv_is_cancel_safe() {
    let server = start().await;
    let (mut a, nameplate) = Mailbox::allocate(&server.server).await.unwrap();
    let mut b = Mailbox::claim(&server.server, nameplate).await.unwrap();
    let sender = tokio::spawn(async move {
        for i in 0..200u32 {
            b.send(&i.to_be_bytes()).await.unwrap();
        }
        b
    });
    // recv is dropped whenever the yield wins, often in the middle of a frame.
    let mut got = Vec::new();
    let mut cancelled = 0;
    while got.len() < 200 {
        tokio::select! {
            biased;
            () = tokio::task::yield_now() => cancelled += 1,
            body = a.recv() => got.push(u32::from_be_bytes(body.unwrap().try_into().unwrap())),
        }
    }
    assert_eq!(got, (0..200).collect::<Vec<_>>());
    assert!(cancelled > 0, "the test must really cancel recv");
    drop(sender.await.unwrap());
}

#[tokio::test]
async fn bursts_in_both_directions_arrive_whole_and_in_order() {
    // Far more than an inbox holds: a side that reads late slows the sender down, it is
    // not an error (only messages for a side that has not joined are capped).
    let server = start().await;
    let (mut a, nameplate) = Mailbox::allocate(&server.server).await.unwrap();
    let mut b = Mailbox::claim(&server.server, nameplate).await.unwrap();
    let n = 20 * Limits::default().max_queued as u32;
    for i in 0..n {
        a.send(&i.to_be_bytes()).await.unwrap();
        b.send(&(i + n).to_be_bytes()).await.unwrap();
    }
    for i in 0..n {
        assert_eq!(b.recv().await.unwrap(), i.to_be_bytes());
        assert_eq!(a.recv().await.unwrap(), (i + n).to_be_bytes());
    }
}

#[tokio::test]
async fn a_side_that_stops_reading_is_dropped_after_the_write_timeout() {
    let server = start_with(
        Limits {
            write_timeout: Duration::from_millis(200),
            ..Limits::default()
        },
        None,
    )
    .await;
    assert_eq!(Limits::default().write_timeout, Duration::from_secs(10));
    let (mut a, nameplate) = Mailbox::allocate(&server.server).await.unwrap();
    let _b = Mailbox::claim(&server.server, nameplate).await.unwrap();
    // b never reads. Once the socket buffers between the server and b are full, the
    // server gives up on b within the write timeout, and a is told (or cut off, if the
    // server closed with a's unread bytes still queued). Without the timeout a would
    // block in send for ever: the overall timeout turns that into a failure.
    let body = vec![7u8; MAX_BODY];
    let outcome = tokio::time::timeout(Duration::from_secs(60), async {
        for _ in 0..100_000 {
            if let Err(e) = a.send(&body).await {
                return e;
            }
        }
        panic!("100,000 messages went to a side that does not read");
    })
    .await
    .expect("the server must drop a side that stops reading");
    assert!(matches!(outcome, RendezvousError::Io(_)), "{outcome:?}");
    let ended = a.recv().await;
    assert!(
        matches!(
            ended,
            Err(RendezvousError::PeerLeft | RendezvousError::Closed)
        ),
        "{ended:?}"
    );
    assert_pair_works(&server.server).await;
}

#[tokio::test]
async fn the_per_address_limit_refuses_the_next_connection_at_once() {
    let server = start_with(
        Limits {
            per_ip: 3,
            ..Limits::default()
        },
        None,
    )
    .await;
    let (mut a, nameplate) = Mailbox::allocate(&server.server).await.unwrap();
    let mut b = Mailbox::claim(&server.server, nameplate).await.unwrap();
    let _c = raw(&server).await;
    let reason = refused(Mailbox::allocate(&server.server).await);
    assert_eq!(
        reason,
        "too many connections from your address (the limit is 3)"
    );
    // A raw connection is refused before it says anything.
    let mut e = raw(&server).await;
    assert!(expect_error(&mut e)
        .await
        .starts_with("too many connections"));
    // The three that are in still work.
    a.send(b"in").await.unwrap();
    assert_eq!(b.recv().await.unwrap(), b"in");
    assert_eq!(server.stats.connections(), 3);
    assert_eq!(Limits::default().per_ip, 32);
}

#[tokio::test]
async fn the_server_refuses_mailboxes_beyond_its_limit() {
    let server = start_with(
        Limits {
            max_mailboxes: 2,
            ..Limits::default()
        },
        None,
    )
    .await;
    let (_a, _) = Mailbox::allocate(&server.server).await.unwrap();
    let (_b, _) = Mailbox::allocate(&server.server).await.unwrap();
    let reason = refused(Mailbox::allocate(&server.server).await);
    assert_eq!(
        reason,
        "the rendezvous server is full (2 mailboxes open); try again later"
    );
    assert_eq!(Limits::default().max_mailboxes, 100_000);
}

#[tokio::test]
async fn a_side_may_queue_only_so_many_messages_for_an_absent_peer() {
    let server = start().await;
    let limit = Limits::default().max_queued;
    assert_eq!(limit, 16);
    let (mut a, _) = Mailbox::allocate(&server.server).await.unwrap();
    for i in 0..=limit {
        a.send(&[i as u8]).await.unwrap();
    }
    let reason = refused(a.recv().await);
    assert_eq!(
        reason,
        "too many messages waiting for the other side (the limit is 16)"
    );

    // Exactly the limit is fine, and all of it arrives.
    let (mut a, nameplate) = Mailbox::allocate(&server.server).await.unwrap();
    for i in 0..limit {
        a.send(&[i as u8]).await.unwrap();
    }
    let mut b = Mailbox::claim(&server.server, nameplate).await.unwrap();
    for i in 0..limit {
        assert_eq!(b.recv().await.unwrap(), [i as u8]);
    }
}

#[tokio::test]
async fn a_mailbox_expires_after_its_lifetime() {
    let server = start_with(
        Limits {
            mailbox_lifetime: Duration::from_millis(300),
            ..Limits::default()
        },
        None,
    )
    .await;
    // Waiting alone.
    let (mut alone, _) = Mailbox::allocate(&server.server).await.unwrap();
    // And paired.
    let (mut a, nameplate) = Mailbox::allocate(&server.server).await.unwrap();
    let mut b = Mailbox::claim(&server.server, nameplate).await.unwrap();
    for side in [&mut alone, &mut a, &mut b] {
        let reason = refused(side.recv().await);
        assert!(
            reason.starts_with("the mailbox on nameplate") && reason.contains("expired"),
            "{reason}"
        );
    }
    assert_eq!(Limits::default().mailbox_lifetime, Duration::from_secs(600));
    assert_pair_works(&server.server).await;
}

#[tokio::test]
async fn hello_must_arrive_within_the_handshake_timeout() {
    let server = start_with(
        Limits {
            handshake_timeout: Duration::from_millis(200),
            ..Limits::default()
        },
        None,
    )
    .await;
    let mut silent = raw(&server).await;
    assert_eq!(expect_error(&mut silent).await, "no Hello within 200ms");
    // A half frame does not count as Hello either.
    let mut half = raw(&server).await;
    half.write_all(&[0x00, 0x02, 0x00]).await.unwrap();
    assert_eq!(expect_error(&mut half).await, "no Hello within 200ms");
    assert_eq!(Limits::default().handshake_timeout, Duration::from_secs(10));
    assert_pair_works(&server.server).await;
}

#[tokio::test]
async fn bad_frames_get_an_error_and_the_server_serves_on() {
    let server = start().await;

    // A frame longer than MAX_FRAME, announced by its header alone.
    let mut oversize = raw(&server).await;
    oversize.write_all(&[0x10, 0x01]).await.unwrap();
    assert_eq!(
        expect_error(&mut oversize).await,
        "frame longer than 4096 bytes"
    );
    // The same after Hello, with the bytes really sent.
    let mut oversize = raw(&server).await;
    hello(&mut oversize).await;
    let mut frame = vec![0xFF, 0xFF];
    frame.extend(std::iter::repeat_n(0x03, 0xFFFF));
    oversize.write_all(&frame).await.unwrap();
    assert_eq!(
        expect_error(&mut oversize).await,
        "frame longer than 4096 bytes"
    );

    // Not postcard, or a message with bytes after it.
    for payload in [&[0x09][..], &[0x01, 0x00], &[], &[0x03, 0x05, 1]] {
        let mut bad = raw(&server).await;
        hello(&mut bad).await;
        let mut frame = (payload.len() as u16).to_be_bytes().to_vec();
        frame.extend_from_slice(payload);
        bad.write_all(&frame).await.unwrap();
        let reason = expect_error(&mut bad).await;
        assert!(
            reason.ends_with("this is not a p2p-transfer rendezvous client"),
            "{reason}"
        );
    }

    // Not Hello first; an unknown version; Hello twice; Add without a mailbox; a body
    // over MAX_BODY; a second mailbox on one connection.
    let cases: [(&[ClientMessage], &str); 6] = [
        (
            &[ClientMessage::Allocate],
            "the first message must be Hello",
        ),
        (
            &[ClientMessage::Hello { version: 2 }],
            "unsupported rendezvous protocol version 2 (this server speaks 1); update \
             p2p-transfer",
        ),
        (
            &[
                ClientMessage::Hello { version: 1 },
                ClientMessage::Hello { version: 1 },
            ],
            "Hello was already received",
        ),
        (
            &[
                ClientMessage::Hello { version: 1 },
                ClientMessage::Add { body: vec![1] },
            ],
            "no mailbox on this connection: send Allocate or Claim first",
        ),
        (
            &[
                ClientMessage::Hello { version: 1 },
                ClientMessage::Allocate,
                ClientMessage::Add {
                    body: vec![0; MAX_BODY + 1],
                },
            ],
            "message body longer than 2048 bytes",
        ),
        (
            &[
                ClientMessage::Hello { version: 1 },
                ClientMessage::Allocate,
                ClientMessage::Claim { nameplate: 1 },
            ],
            "this connection already has a mailbox",
        ),
    ];
    for (messages, expected) in cases {
        let mut stream = raw(&server).await;
        for message in messages {
            send_message(&mut stream, message).await;
        }
        assert_eq!(expect_error(&mut stream).await, expected);
    }

    // The client refuses to send an oversize body at all.
    let (mut a, _) = Mailbox::allocate(&server.server).await.unwrap();
    assert!(matches!(
        a.send(&[0; MAX_BODY + 1]).await,
        Err(RendezvousError::Protocol(_))
    ));

    assert_pair_works(&server.server).await;
    assert_eq!(server.stats.panics(), 0);
}

#[tokio::test]
async fn random_bytes_never_break_the_server() {
    let server = start_with(
        Limits {
            handshake_timeout: Duration::from_millis(300),
            per_ip: 1000,
            ..Limits::default()
        },
        None,
    )
    .await;
    let seed: u64 = rand::rng().random();
    println!("seed {seed}");
    let mut rng = StdRng::seed_from_u64(seed);

    // Keep a pair waiting through it all: it must be untouched.
    let (mut a, nameplate) = Mailbox::allocate(&server.server).await.unwrap();
    let mut b = Mailbox::claim(&server.server, nameplate).await.unwrap();

    for round in 0..300 {
        let mut stream = raw(&server).await;
        if round % 2 == 1 {
            // Past the handshake, into the mailbox logic: valid headers, random payloads.
            hello(&mut stream).await;
            for _ in 0..rng.random_range(1..8) {
                let mut payload = vec![0u8; rng.random_range(0..64)];
                rng.fill_bytes(&mut payload);
                if let Some(tag) = payload.first_mut() {
                    // Mailbox and tracker messages alike.
                    *tag %= 8;
                }
                let mut frame = (payload.len() as u16).to_be_bytes().to_vec();
                frame.extend_from_slice(&payload);
                if stream.write_all(&frame).await.is_err() {
                    break;
                }
            }
        } else {
            let mut junk = vec![0u8; rng.random_range(0..600)];
            rng.fill_bytes(&mut junk);
            let _ = stream.write_all(&junk).await;
        }
        let _ = stream.shutdown().await;
        // Whatever the server answers, it ends the connection (EOF, Error or timeout).
        let mut sink = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut sink))
            .await
            .expect("the server closes every connection it cannot use")
            .ok();
    }

    a.send(b"survived").await.unwrap();
    assert_eq!(b.recv().await.unwrap(), b"survived");
    assert_pair_works(&server.server).await;
    assert_eq!(server.stats.panics(), 0);
}

#[tokio::test]
async fn stun_binding_over_udp_answers_with_the_clients_address() {
    let server = start().await;
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let response = binding(&socket, server.addr, &RetransmitSchedule::default())
        .await
        .unwrap();
    assert_eq!(response.mapped, socket.local_addr().unwrap());
    assert!(response.xor_mapped);
    assert!(response
        .software
        .unwrap()
        .starts_with("p2p-transfer rendezvous"));
    assert_eq!(server.stats.stun_answers(), 1);

    // Garbage on the UDP port is ignored, and STUN still answers after it.
    socket
        .send_to(b"not stun at all", server.addr)
        .await
        .unwrap();
    let response = binding(&socket, server.addr, &RetransmitSchedule::default())
        .await
        .unwrap();
    assert_eq!(response.mapped, socket.local_addr().unwrap());
}

#[test]
fn turn_credentials_match_a_known_hmac_sha1_vector() {
    // python3 -c "import hmac,hashlib,base64; print(base64.b64encode(hmac.new(
    //   b'north-sea-secret', b'1700003600:p2p', hashlib.sha1).digest()).decode())"
    // echo -n 1700003600:p2p | openssl dgst -sha1 -hmac north-sea-secret -binary | base64
    let (username, password) =
        turn_credentials("north-sea-secret", Duration::from_secs(3600), 1_700_000_000);
    assert_eq!(username, "1700003600:p2p");
    assert_eq!(password, "gyJ5sF7fU4pRybYu0y3rubPesyU=");
}

#[tokio::test]
async fn welcome_carries_turn_credentials_when_configured() {
    let secret = TurnSecret::new(
        vec!["turn.example.net:3478".into(), "[2001:db8::1]:3478".into()],
        "s3cret".into(),
    );
    assert_eq!(secret.lifetime, Duration::from_secs(3600));
    let server = start_with(Limits::default(), Some(secret.clone())).await;
    let before = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let (a, _) = Mailbox::allocate(&server.server).await.unwrap();
    let after = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let grant = a.turn().expect("a grant").clone();
    assert_eq!(grant.servers, secret.servers);
    assert!((before + 3600..=after + 3600).contains(&grant.expires_unix));
    assert_eq!(grant.username, format!("{}:p2p", grant.expires_unix));
    let (username, password) =
        turn_credentials("s3cret", secret.lifetime, grant.expires_unix - 3600);
    assert_eq!((grant.username, grant.password), (username, password));
}

/// The path of `turnutils_uclient` (coturn's test client), if installed.
fn turnutils_uclient() -> Option<std::path::PathBuf> {
    support::turnserver()
        .map(|t| t.with_file_name("turnutils_uclient"))
        .filter(|p| p.is_file())
}

/// Runs coturn's test client against `port` with these credentials; true when it
/// completed a TURN allocation and relayed its test packets.
fn uclient_allocates(port: u16, username: &str, password: &str) -> bool {
    let output = std::process::Command::new(turnutils_uclient().unwrap())
        .args(["-y", "-n", "1", "-m", "1", "-l", "100", "-p"])
        .arg(port.to_string())
        .args(["-u", username, "-w", password, "127.0.0.1"])
        .output()
        .expect("run turnutils_uclient");
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    !text.contains("Cannot complete Allocation") && text.contains("Total lost packets 0")
}

#[tokio::test]
async fn coturn_with_use_auth_secret_accepts_the_credentials_the_rendezvous_hands_out() {
    let tools = support::turnserver().is_some() && turnutils_uclient().is_some();
    if !support::require(
        tools,
        "coturn (turnserver, turnutils_uclient) is not installed",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // A free port for coturn (UDP and TCP), and a relay range next to nothing else.
    let port = {
        let probe = Server::bind(ServerConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            turn: None,
            limits: Limits::default(),
        })
        .await
        .unwrap();
        probe.local_addr().port()
    };
    let mut coturn = std::process::Command::new(support::turnserver().unwrap())
        .args([
            "-n",
            "--listening-ip",
            "127.0.0.1",
            "--relay-ip",
            "127.0.0.1",
            "--listening-port",
            &port.to_string(),
            "--min-port",
            "49152",
            "--max-port",
            "65535",
            "--use-auth-secret",
            "--static-auth-secret",
            "north-sea-secret",
            "--realm",
            "p2p.test",
            "--allow-loopback-peers",
            "--no-cli",
            "--no-tls",
            "--no-dtls",
            "--simple-log",
            "--log-file",
            "stdout",
        ])
        .arg("--pidfile")
        .arg(dir.path().join("turnserver.pid"))
        .current_dir(dir.path())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn turnserver");
    // Ready when it answers STUN (it retransmits, so no sleep is needed).
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let coturn_addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let ready = binding(&socket, coturn_addr, &RetransmitSchedule::default()).await;

    let server = start_with(
        Limits::default(),
        Some(TurnSecret::new(
            vec![coturn_addr.to_string()],
            "north-sea-secret".into(),
        )),
    )
    .await;
    let (a, _) = Mailbox::allocate(&server.server).await.unwrap();
    let grant = a.turn().unwrap().clone();
    let (good, wrong) = tokio::task::spawn_blocking(move || {
        (
            uclient_allocates(port, &grant.username, &grant.password),
            uclient_allocates(port, &grant.username, "d3JvbmcgcGFzc3dvcmQ="),
        )
    })
    .await
    .unwrap();
    let _ = coturn.kill();
    let _ = coturn.wait();
    assert!(ready.is_ok(), "coturn did not answer STUN: {ready:?}");
    assert!(good, "coturn refused the rendezvous's credentials");
    assert!(
        !wrong,
        "coturn accepted a wrong password: the check proves nothing"
    );
}

// ---------------------------------------------------------------------------------------
// The tracker

/// Polls `condition` until it holds (bounded: 10 s). For state the server changes on its
/// own (an expiry, a closed connection), where there is no answer to wait for.
async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not within 10 s: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn swarm(n: u8) -> SwarmId {
    [n; 32]
}

#[tokio::test]
async fn an_announce_is_seen_by_other_connections_and_not_by_its_own() {
    let server = start().await;
    let (seeder, _intros) = Tracker::connect(&server.server).await.unwrap();
    assert_eq!(seeder.server(), server.server);
    let (other, _) = Tracker::connect(&server.server).await.unwrap();
    let (downloader, _) = Tracker::connect(&server.server).await.unwrap();
    assert_eq!(
        downloader.lookup(swarm(1)).await.unwrap(),
        Vec::<u64>::new()
    );

    seeder.announce(swarm(1)).await.unwrap();
    // Announcing again only refreshes it.
    seeder.announce(swarm(1)).await.unwrap();
    let peers = downloader.lookup(swarm(1)).await.unwrap();
    assert_eq!(peers.len(), 1);
    assert_ne!(peers[0], 0);
    assert_eq!(seeder.lookup(swarm(1)).await.unwrap(), Vec::<u64>::new());
    // Other swarms are unaffected.
    assert_eq!(
        downloader.lookup(swarm(2)).await.unwrap(),
        Vec::<u64>::new()
    );

    other.announce(swarm(1)).await.unwrap();
    let mut both = downloader.lookup(swarm(1)).await.unwrap();
    both.sort_unstable();
    assert_eq!(both.len(), 2);
    assert!(both.contains(&peers[0]));
    // Each announcer sees only the other one.
    assert_eq!(seeder.lookup(swarm(1)).await.unwrap().len(), 1);
    assert_eq!(server.stats.swarms(), 1);
    assert_eq!(server.stats.entries(), 2);
    assert_eq!(server.stats.announces(), 3);
}

#[tokio::test]
async fn a_lookup_names_at_most_fifty_random_peers() {
    let server = start_with(
        Limits {
            per_ip: 100,
            ..Limits::default()
        },
        None,
    )
    .await;
    let mut seeders = Vec::new();
    for _ in 0..60 {
        let (seeder, _) = Tracker::connect(&server.server).await.unwrap();
        seeder.announce(swarm(9)).await.unwrap();
        seeders.push(seeder);
    }
    let (downloader, _) = Tracker::connect(&server.server).await.unwrap();
    let first = downloader.lookup(swarm(9)).await.unwrap();
    assert_eq!(first.len(), 50);
    let mut distinct = first.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(distinct.len(), 50, "no peer twice");
    // Random: ten more lookups name more than the first fifty.
    let mut seen: std::collections::HashSet<u64> = first.into_iter().collect();
    for _ in 0..10 {
        seen.extend(downloader.lookup(swarm(9)).await.unwrap());
    }
    assert_eq!(seen.len(), 60);
}

#[tokio::test]
async fn withdraw_and_closing_the_connection_remove_the_entries() {
    let server = start().await;
    let (seeder, _) = Tracker::connect(&server.server).await.unwrap();
    let (downloader, _) = Tracker::connect(&server.server).await.unwrap();
    seeder.announce(swarm(1)).await.unwrap();
    seeder.announce(swarm(2)).await.unwrap();
    assert_eq!(server.stats.entries(), 2);

    seeder.withdraw(swarm(1)).await.unwrap();
    // Withdrawing what was never announced is nothing.
    seeder.withdraw(swarm(3)).await.unwrap();
    // Answers come in order: once this one is here, the withdraw was applied.
    seeder.lookup(swarm(1)).await.unwrap();
    assert_eq!(
        downloader.lookup(swarm(1)).await.unwrap(),
        Vec::<u64>::new()
    );
    assert_eq!(downloader.lookup(swarm(2)).await.unwrap().len(), 1);
    assert_eq!((server.stats.swarms(), server.stats.entries()), (1, 1));

    // Dropping every handle closes the connection, and its entries go with it.
    let clone = seeder.clone();
    drop(seeder);
    assert_eq!(downloader.lookup(swarm(2)).await.unwrap().len(), 1);
    drop(clone);
    let stats = Arc::clone(&server.stats);
    eventually("the closed connection's entries are gone", || {
        stats.entries() == 0 && stats.connections() == 1
    })
    .await;
    assert_eq!(server.stats.swarms(), 0);
    assert_eq!(
        downloader.lookup(swarm(2)).await.unwrap(),
        Vec::<u64>::new()
    );
}

#[tokio::test]
async fn an_announce_expires_unless_it_is_refreshed() {
    // Long enough that a loaded machine still refreshes in time (every 333 ms).
    let ttl = Duration::from_secs(1);
    let server = start_with(
        Limits {
            announce_ttl: ttl,
            ..Limits::default()
        },
        None,
    )
    .await;
    assert_eq!(Limits::default().announce_ttl, Duration::from_secs(600));
    // One client assumes the default TTL (it would refresh in 200 s), one the server's.
    let (stale, _) = Tracker::connect(&server.server).await.unwrap();
    let (fresh, _) = Tracker::connect(&server.server).await.unwrap();
    let fresh = fresh.with_refresh(ttl);
    let (downloader, _) = Tracker::connect(&server.server).await.unwrap();
    stale.announce(swarm(1)).await.unwrap();
    fresh.announce(swarm(1)).await.unwrap();
    assert_eq!(downloader.lookup(swarm(1)).await.unwrap().len(), 2);

    let stats = Arc::clone(&server.stats);
    eventually("the stale entry expires", || stats.entries() == 1).await;
    // The fresh one is re-announced every third of the TTL: wait for four more, well past
    // the TTL.
    let announces = server.stats.announces();
    eventually("four refreshes", || stats.announces() >= announces + 4).await;
    assert_eq!(server.stats.entries(), 1);
    assert_eq!(downloader.lookup(swarm(1)).await.unwrap().len(), 1);
    // The expired one can announce again.
    stale.announce(swarm(1)).await.unwrap();
    assert_eq!(downloader.lookup(swarm(1)).await.unwrap().len(), 2);
}

#[tokio::test]
async fn an_introduction_reaches_the_announcer_and_the_mailbox_pairs_them() {
    let server = start().await;
    let (seeder, mut introductions) = Tracker::connect(&server.server).await.unwrap();
    seeder.announce(swarm(5)).await.unwrap();

    let (downloader, _) = Tracker::connect(&server.server).await.unwrap();
    let peers = downloader.lookup(swarm(5)).await.unwrap();
    assert_eq!(peers.len(), 1);
    let (mut mine, nameplate) = Mailbox::allocate(&server.server).await.unwrap();
    assert!(downloader
        .introduce(swarm(5), peers[0], nameplate)
        .await
        .unwrap());
    let introduction = tokio::time::timeout(Duration::from_secs(10), introductions.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        introduction,
        Introduction {
            swarm: swarm(5),
            nameplate
        }
    );

    let mut theirs = Mailbox::claim(&server.server, introduction.nameplate)
        .await
        .unwrap();
    mine.send(b"which chunks?").await.unwrap();
    assert_eq!(theirs.recv().await.unwrap(), b"which chunks?");
    theirs.send(b"all of them").await.unwrap();
    assert_eq!(mine.recv().await.unwrap(), b"all of them");
    assert_eq!(server.stats.introductions(), 1);

    // The tracker connection is still usable.
    assert_eq!(seeder.lookup(swarm(5)).await.unwrap(), Vec::<u64>::new());
}

#[tokio::test]
async fn an_introduction_that_cannot_be_delivered_says_so() {
    let server = start().await;
    let (seeder, mut introductions) = Tracker::connect(&server.server).await.unwrap();
    seeder.announce(swarm(5)).await.unwrap();
    let (downloader, _) = Tracker::connect(&server.server).await.unwrap();
    let peer = downloader.lookup(swarm(5)).await.unwrap()[0];
    let (_waiting, nameplate) = Mailbox::allocate(&server.server).await.unwrap();
    let (_paired, claimed) = Mailbox::allocate(&server.server).await.unwrap();
    let _side1 = Mailbox::claim(&server.server, claimed).await.unwrap();

    // An unknown peer; a swarm the peer did not announce; no such mailbox; a mailbox
    // that is already paired.
    let unknown = peer.wrapping_add(1);
    assert!(!downloader
        .introduce(swarm(5), unknown, nameplate)
        .await
        .unwrap());
    assert!(!downloader
        .introduce(swarm(6), peer, nameplate)
        .await
        .unwrap());
    assert!(!downloader.introduce(swarm(5), peer, 999).await.unwrap());
    assert!(!downloader.introduce(swarm(5), peer, claimed).await.unwrap());
    // After a withdraw, the peer is not an announcer any more.
    seeder.withdraw(swarm(5)).await.unwrap();
    seeder.lookup(swarm(5)).await.unwrap();
    assert!(!downloader
        .introduce(swarm(5), peer, nameplate)
        .await
        .unwrap());
    assert_eq!(server.stats.introductions(), 0);
    assert!(introductions.try_recv().is_err());
}

#[tokio::test]
async fn mailbox_and_tracker_messages_do_not_mix_on_one_connection() {
    let server = start().await;
    let cases: [(&[ClientMessage], &str); 3] = [
        (
            &[
                ClientMessage::Hello { version: 1 },
                ClientMessage::Allocate,
                ClientMessage::Announce { swarm: swarm(1) },
            ],
            "this is a mailbox connection (it sent Allocate, Claim or Add): tracker messages \
             need a connection of their own",
        ),
        (
            &[
                ClientMessage::Hello { version: 1 },
                ClientMessage::Lookup { swarm: swarm(1) },
                ClientMessage::Allocate,
            ],
            "this is a tracker connection (it sent Announce, Withdraw, Lookup or Introduce): \
             mailbox messages need a connection of their own",
        ),
        (
            &[
                ClientMessage::Hello { version: 1 },
                ClientMessage::Withdraw { swarm: swarm(1) },
                ClientMessage::Hello { version: 1 },
            ],
            "Hello was already received",
        ),
    ];
    for (messages, expected) in cases {
        let mut stream = raw(&server).await;
        for message in messages {
            send_message(&mut stream, message).await;
        }
        assert_eq!(expect_error(&mut stream).await, expected);
    }
    // Tracker messages before Hello are refused like anything else.
    let mut early = raw(&server).await;
    send_message(&mut early, &ClientMessage::Announce { swarm: swarm(1) }).await;
    assert_eq!(
        expect_error(&mut early).await,
        "the first message must be Hello"
    );
    assert_pair_works(&server.server).await;
    assert_eq!(server.stats.entries(), 0);
}

#[tokio::test]
async fn a_connection_may_announce_only_so_many_swarms() {
    let server = start().await;
    let limit = Limits::default().max_announces;
    assert_eq!(limit, 1024);
    let mut stream = raw(&server).await;
    hello(&mut stream).await;
    for i in 0..=limit {
        let mut id = [0u8; 32];
        id[..8].copy_from_slice(&(i as u64).to_be_bytes());
        send_message(&mut stream, &ClientMessage::Announce { swarm: id }).await;
    }
    let mut announced = 0;
    let reason = loop {
        match read_frame(&mut stream).await {
            Some(ServerMessage::Announced { .. }) => announced += 1,
            Some(ServerMessage::Error { reason }) => break reason,
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(announced, limit);
    assert_eq!(
        reason,
        "too many swarms announced on one connection (the limit is 1024)"
    );
    assert_eq!(read_frame(&mut stream).await, None);
    let stats = Arc::clone(&server.stats);
    eventually("its entries are gone", || stats.entries() == 0).await;
    assert_eq!(server.stats.swarms(), 0);

    // The client refuses the 1025th itself.
    let (tracker, _) = Tracker::connect(&server.server).await.unwrap();
    for i in 0..limit {
        let mut id = [0u8; 32];
        id[..8].copy_from_slice(&(i as u64).to_be_bytes());
        tracker.announce(id).await.unwrap();
    }
    assert!(matches!(
        tracker.announce(swarm(0xFF)).await,
        Err(RendezvousError::Protocol(_))
    ));
    assert_eq!(server.stats.entries(), limit);
}

#[tokio::test]
async fn the_tracker_refuses_announces_beyond_its_size() {
    let server = start_with(
        Limits {
            max_entries: 3,
            ..Limits::default()
        },
        None,
    )
    .await;
    assert_eq!(Limits::default().max_entries, 200_000);
    let (a, _) = Tracker::connect(&server.server).await.unwrap();
    let (b, _) = Tracker::connect(&server.server).await.unwrap();
    a.announce(swarm(1)).await.unwrap();
    a.announce(swarm(2)).await.unwrap();
    b.announce(swarm(1)).await.unwrap();
    // Refreshing is fine when full; a new entry is not.
    a.announce(swarm(1)).await.unwrap();
    let reason = refused(b.announce(swarm(3)).await);
    assert_eq!(reason, "the tracker is full (3 announces); try again later");
}

#[tokio::test]
async fn a_flood_of_introductions_is_rate_limited() {
    // A queue that holds the whole flood, so that only the rate limits (the queue's own
    // bound is `server::tests::an_announcers_introduction_queue_is_bounded`).
    let server = start_with(
        Limits {
            max_introductions_queued: 200,
            ..Limits::default()
        },
        None,
    )
    .await;
    let rate = Limits::default().introductions;
    assert_eq!((rate.burst, rate.per_second), (20, 5));
    let (seeder, mut introductions) = Tracker::connect(&server.server).await.unwrap();
    seeder.announce(swarm(5)).await.unwrap();
    let (downloader, _) = Tracker::connect(&server.server).await.unwrap();
    let peer = downloader.lookup(swarm(5)).await.unwrap()[0];
    let (_mailbox, nameplate) = Mailbox::allocate(&server.server).await.unwrap();

    let mut flood = raw(&server).await;
    hello(&mut flood).await;
    let started = std::time::Instant::now();
    let introduce = ClientMessage::Introduce {
        swarm: swarm(5),
        peer,
        nameplate,
    };
    let mut frames = Vec::new();
    for _ in 0..200 {
        frames.extend_from_slice(&protocol::encode_frame(&introduce).unwrap());
    }
    flood.write_all(&frames).await.unwrap();
    let mut delivered = 0u64;
    for _ in 0..200 {
        match read_frame(&mut flood).await {
            Some(ServerMessage::Introduced {
                peer: p,
                delivered: d,
            }) => {
                assert_eq!(p, peer);
                delivered += u64::from(d);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let allowed = 20 + (elapsed * 5.0).ceil() as u64;
    assert!(
        (20..=allowed).contains(&delivered),
        "{delivered} delivered in {elapsed:.2} s"
    );
    assert_eq!(server.stats.introductions(), delivered);
    // Each one the server delivered reaches the announcer.
    for _ in 0..delivered {
        let got = tokio::time::timeout(Duration::from_secs(10), introductions.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got.nameplate, nameplate);
    }
    // Not a reason to close: the flooding connection still works.
    send_message(&mut flood, &ClientMessage::Lookup { swarm: swarm(5) }).await;
    assert_eq!(
        read_frame(&mut flood).await,
        Some(ServerMessage::Peers {
            swarm: swarm(5),
            peers: vec![peer]
        })
    );
}

#[tokio::test]
async fn a_tracker_connection_outlives_the_mailbox_lifetime_but_not_idleness() {
    let server = start_with(
        Limits {
            mailbox_lifetime: Duration::from_millis(200),
            tracker_idle: Duration::from_millis(600),
            ..Limits::default()
        },
        None,
    )
    .await;
    assert_eq!(Limits::default().tracker_idle, Duration::from_secs(1800));
    // A client with nothing announced sends keep-alives (every 200 ms here).
    let (quiet, _) = Tracker::connect(&server.server).await.unwrap();
    let quiet = quiet.with_refresh(Duration::from_millis(600));
    quiet.lookup(swarm(1)).await.unwrap();
    let mut stream = raw(&server).await;
    hello(&mut stream).await;
    let announce = ClientMessage::Announce { swarm: swarm(1) };
    // Keeps talking past the mailbox lifetime (each answer is waited for).
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_millis(500) {
        send_message(&mut stream, &announce).await;
        assert_eq!(
            read_frame(&mut stream).await,
            Some(ServerMessage::Announced { swarm: swarm(1) })
        );
    }
    // Then falls silent.
    assert_eq!(
        expect_error(&mut stream).await,
        "idle: nothing received for 600ms on this tracker connection"
    );
    // The client's connection, older and without a request since its first lookup, is
    // still the same (a closed one would be waiting 1 s to reconnect, and say so).
    assert_eq!(quiet.lookup(swarm(1)).await.unwrap(), Vec::<u64>::new());
}

#[tokio::test]
async fn the_client_reconnects_and_announces_again() {
    let first = start().await;
    let addr = first.addr;
    let (tracker, _) = Tracker::connect(&first.server).await.unwrap();
    tracker.announce(swarm(1)).await.unwrap();
    tracker.announce(swarm(2)).await.unwrap();
    drop(first);
    // The server is gone: requests fail (they do not hang).
    let lookup = tracker.lookup(swarm(1)).await;
    assert!(
        matches!(lookup, Err(RendezvousError::Reconnecting { .. })),
        "{lookup:?}"
    );
    // Withdrawn while down: not announced again.
    tracker.withdraw(swarm(2)).await.unwrap();

    // A server on the same port again.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let second = loop {
        match Server::bind(ServerConfig {
            listen: addr,
            turn: None,
            limits: Limits::default(),
        })
        .await
        {
            Ok(server) => break server,
            Err(e) => {
                assert!(tokio::time::Instant::now() < deadline, "rebind: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    let stats = second.stats();
    let _second = Running {
        addr,
        server: addr.to_string(),
        stats: Arc::clone(&stats),
        task: tokio::spawn(second.run()),
    };
    eventually("the client reconnects and announces", || {
        stats.entries() == 1
    })
    .await;
    let (downloader, _) = Tracker::connect(&addr.to_string()).await.unwrap();
    assert_eq!(downloader.lookup(swarm(1)).await.unwrap().len(), 1);
    assert_eq!(
        downloader.lookup(swarm(2)).await.unwrap(),
        Vec::<u64>::new()
    );
    assert_eq!(tracker.lookup(swarm(1)).await.unwrap(), Vec::<u64>::new());
}
