//! Issue 15, items 4 and 6: errors say what happened, with the README's exit codes, and
//! the command line takes input as people type it. Everything runs the real binary
//! against servers on loopback (nothing leaves the machine).
//!
//! - A port answered by something that is not p2p-transfer (an HTTP server, an SSH
//!   server, a silent one, one that hangs up) is named in one line, exit 4 or 3; an
//!   HTTP client knocking on a `receive` is told what the port is and disturbs nothing.
//! - Sizes and windows out of range are refused before connecting (exit 2), sizes take
//!   the usual forms (`1.5M`, `500KB`, `2 GiB`).
//! - Discovery finding nobody is exit 3, several matching receivers exit 2.
//! - `nat-test`: a server without a port is asked on 3478 (IPv4 and `[::1]`); no answer
//!   is exit 3, a bad reply exit 4.

mod common;
#[path = "../p2p-core/tests/support/mod.rs"]
mod stun_support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::*;
use stun_support::{FakeServer, Reply};

fn p2p(data: &Path) -> Command {
    let mut cmd = Command::new(binary());
    cmd.env("P2P_TRANSFER_DATA_DIR", data);
    // Discovery never leaves loopback, and never meets another test's beacons.
    cmd.env(p2p_core::discovery::PORT_ENV, free_udp_port().to_string())
        .env(p2p_core::discovery::TARGETS_ENV, "127.255.255.255");
    cmd
}

fn run(data: &Path, args: &[&str]) -> Output {
    p2p(data).args(args).output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The one `error:` line of a failed run: a sentence, no panic, no Debug dump.
fn the_error_line(stderr: &str) -> String {
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("error: "))
        .collect();
    assert_eq!(errors.len(), 1, "one error line expected: {stderr}");
    for bad in ["panicked", "Os {", "kind:", "RUST_BACKTRACE", "os error"] {
        assert!(!stderr.contains(bad), "{bad:?} in {stderr}");
    }
    errors[0].to_owned()
}

/// A TCP server on 127.0.0.1 that plays `script` with every connection, on a thread.
fn fake_tcp_server(script: fn(TcpStream)) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || script(stream));
        }
    });
    addr
}

/// Reads until the peer closes (so that closing here sends FIN, not RST).
fn drain(mut stream: TcpStream) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let mut buf = [0u8; 4096];
    while matches!(stream.read(&mut buf), Ok(n) if n > 0) {}
}

/// Sends a file to `addr` with a code and returns (exit code, error line, seconds).
fn send_to(addr: SocketAddr) -> (Option<i32>, String, f64) {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("f.txt");
    std::fs::write(&src, "hello").unwrap();
    let started = Instant::now();
    let send = run(
        &tmp.path().join("data"),
        &[
            "send",
            path(&src),
            "--peer",
            &addr.to_string(),
            "--code",
            "1-a-b",
        ],
    );
    let stderr = text(&send.stderr);
    (
        send.status.code(),
        the_error_line(&stderr),
        started.elapsed().as_secs_f64(),
    )
}

#[test]
fn a_port_answered_by_an_http_server_says_so_and_is_incompatible() {
    let addr = fake_tcp_server(|mut stream| {
        let mut buf = [0u8; 4096];
        if matches!(stream.read(&mut buf), Ok(n) if n > 0) {
            let _ = stream.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n");
        }
        let _ = stream.shutdown(Shutdown::Write);
        drain(stream);
    });
    let (code, error, _) = send_to(addr);
    assert_eq!(
        error,
        format!("error: {addr} answered, but not as p2p-transfer: it looks like an HTTP server")
    );
    assert_eq!(code, Some(4), "{error}");
}

#[test]
fn a_port_answered_by_an_ssh_server_says_so_and_is_incompatible() {
    let addr = fake_tcp_server(|mut stream| {
        let _ = stream.write_all(b"SSH-2.0-OpenSSH_9.6\r\n");
        drain(stream);
    });
    let (code, error, _) = send_to(addr);
    assert_eq!(
        error,
        format!("error: {addr} answered, but not as p2p-transfer: it looks like an SSH server")
    );
    assert_eq!(code, Some(4), "{error}");
}

#[test]
fn another_program_is_quoted_when_it_is_neither_http_nor_ssh() {
    let addr = fake_tcp_server(|mut stream| {
        let _ = stream.write_all(b"220 mail.example ESMTP\x1b[2J\r\n");
        drain(stream);
    });
    let (code, error, _) = send_to(addr);
    assert_eq!(
        error,
        format!(
            "error: {addr} answered, but not as p2p-transfer: it sent \"220 mail.example \
             ESMTP\" instead of a TLS handshake"
        )
    );
    assert_eq!(code, Some(4), "{error}");
    let addr = fake_tcp_server(|mut stream| {
        let _ = stream.write_all(&[0, 0, 0, 9, 0xff, 0x1b, 1]);
        drain(stream);
    });
    let (code, error, _) = send_to(addr);
    assert!(
        error.ends_with("it sent bytes 00 00 00 09 ff 1b 01 instead of a TLS handshake"),
        "{error}"
    );
    assert_eq!(code, Some(4), "{error}");
}

/// Accepts and says nothing: a clear message after 10 s, not a hang.
#[test]
fn a_port_that_accepts_and_says_nothing_times_out_in_words() {
    let addr = fake_tcp_server(drain);
    let (code, error, seconds) = send_to(addr);
    assert_eq!(
        error,
        format!(
            "error: {addr} accepted the connection but did not answer within 10 s: is \
             p2p-transfer listening there?"
        )
    );
    assert_eq!(code, Some(3), "{error}");
    assert!(seconds < 20.0, "took {seconds} s");
}

#[test]
fn a_port_that_hangs_up_at_once_could_not_be_connected() {
    let addr = fake_tcp_server(drop);
    let (code, error, _) = send_to(addr);
    assert_eq!(
        error,
        format!(
            "error: {addr} closed the connection without answering: is p2p-transfer \
             listening there?"
        )
    );
    assert_eq!(code, Some(3), "{error}");
}

/// The other way round: `curl http://receiver:port/` gets an HTTP answer that says what
/// the port is, and the receiver serves the real sender after it.
#[test]
fn an_http_client_is_told_what_the_port_is_and_the_transfer_still_completes() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let src = tmp.path().join("real.bin");
    random_file(&src, 300_000, 15);
    let out = tmp.path().join("out");
    let mut receiver = p2p(&data)
        .args(["receive", "--output", path(&out), "--code", "9-http-knock"])
        .args(["--port", "0", "--bind", "127.0.0.1"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (addr, stderr) = listening_address(&mut receiver);

    let mut http = TcpStream::connect(&addr).unwrap();
    http.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    http.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    http.read_to_string(&mut answer).unwrap();
    assert!(
        answer.starts_with("HTTP/1.0 400 Bad Request\r\n"),
        "{answer}"
    );
    assert!(answer.contains("p2p-transfer"), "{answer}");

    let send = run(
        &data,
        &[
            "send",
            path(&src),
            "--peer",
            &addr,
            "--code",
            "9-http-knock",
        ],
    );
    assert!(send.status.success(), "{}", text(&send.stderr));
    let status = receiver.wait().unwrap();
    let stderr = stderr.join().unwrap();
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("it sent an HTTP request"), "{stderr}");
    assert_eq!(sha256_file(&out.join("real.bin")), sha256_file(&src));
}

/// Reads a listening process's stderr up to "listening on ADDR"; the rest is collected
/// on a thread.
fn listening_address(child: &mut Child) -> (String, JoinHandle<String>) {
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    let addr = loop {
        let mut line = String::new();
        if stderr.read_line(&mut line).unwrap() == 0 {
            panic!("exited before listening: {seen}");
        }
        seen.push_str(&line);
        if let Some(addr) = line.trim().strip_prefix("listening on ") {
            break addr.to_owned();
        }
    };
    let rest = std::thread::spawn(move || {
        let mut rest = String::new();
        let _ = stderr.read_to_string(&mut rest);
        seen + &rest
    });
    (addr, rest)
}

/// Sizes and windows outside the protocol's limits are command-line errors that name
/// the flag and the range; nothing connects.
#[test]
fn sizes_and_windows_out_of_range_are_refused_before_connecting() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let src = tmp.path().join("f.txt");
    std::fs::write(&src, "hello").unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let peer = listener.local_addr().unwrap().to_string();
    let cases: [(&[&str], &str); 6] = [
        (
            &["--chunk-size", "0"],
            "--chunk-size 0 is out of range: give 1K to 16M",
        ),
        (
            &["--chunk-size", "32M"],
            "--chunk-size 32M is out of range: give 1K to 16M",
        ),
        (
            &["--window-size", "0"],
            "--window-size 0 is out of range: give 1 to 1024",
        ),
        (
            &["--window-size", "2000"],
            "--window-size 2000 is out of range: give 1 to 1024",
        ),
        (
            &["--memory-budget", "2G"],
            "--memory-budget 2G is out of range: give 1K to 1G",
        ),
        (&["--chunk-size", "1.5.5M"], "\"1.5.5M\" is not a size"),
    ];
    for (flags, expected) in cases {
        let mut args = vec!["send", path(&src), "--peer", &peer, "--code", "1-a-b"];
        args.extend_from_slice(flags);
        let send = run(&data, &args);
        let stderr = text(&send.stderr);
        assert_eq!(send.status.code(), Some(2), "{flags:?}: {stderr}");
        assert!(stderr.contains(expected), "{flags:?}: {stderr}");
        assert!(!stderr.contains("handshake"), "{flags:?}: {stderr}");
        assert!(!stderr.contains("connecting to"), "{flags:?}: {stderr}");
    }
    // The receiver refuses too, before it listens.
    let receive = run(
        &data,
        &[
            "receive",
            "--chunk-size",
            "0",
            "--port",
            "0",
            "--bind",
            "127.0.0.1",
        ],
    );
    let stderr = text(&receive.stderr);
    assert_eq!(receive.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--chunk-size 0 is out of range"),
        "{stderr}"
    );
    assert!(!stderr.contains("listening on"), "{stderr}");
    assert!(
        matches!(listener.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "a refused command line connected"
    );
}

/// Sizes as people type them: fractions, KB, "2 GiB" with a space.
#[test]
fn sizes_people_type_work_end_to_end() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let src = tmp.path().join("sized.bin");
    random_file(&src, 3_000_000, 16);
    let out = tmp.path().join("out");
    let mut receiver = p2p(&data)
        .args(["receive", "--output", path(&out), "--code", "4-size-forms"])
        .args(["--chunk-size", "2 MiB", "--memory-budget", "500KB"])
        .args(["--port", "0", "--bind", "127.0.0.1"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (addr, stderr) = listening_address(&mut receiver);
    let send = run(
        &data,
        &[
            "send",
            path(&src),
            "--peer",
            &addr,
            "--code",
            "4-size-forms",
            "--chunk-size",
            "1.5M",
            "--max-speed",
            "2 GiB",
            "--memory-budget",
            "64M",
        ],
    );
    assert!(send.status.success(), "{}", text(&send.stderr));
    assert_eq!(receiver.wait().unwrap().code(), Some(0));
    drop(stderr.join());
    assert_eq!(sha256_file(&out.join("sized.bin")), sha256_file(&src));
}

#[test]
fn send_discover_with_nobody_there_could_not_connect() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("f.txt");
    std::fs::write(&src, "hello").unwrap();
    let started = Instant::now();
    let send = p2p(&tmp.path().join("data"))
        .env("P2P_DISCOVERY_TIMEOUT", "0.3")
        .args(["send", path(&src), "--discover"])
        .output()
        .unwrap();
    let stderr = text(&send.stderr);
    let error = the_error_line(&stderr);
    assert!(error.contains("no receiver answered"), "{stderr}");
    assert_eq!(send.status.code(), Some(3), "{stderr}");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "the short timeout was ignored"
    );
}

#[test]
fn receive_code_with_no_sender_found_could_not_connect() {
    let tmp = tempfile::tempdir().unwrap();
    let receive = p2p(&tmp.path().join("data"))
        .env("P2P_DISCOVERY_TIMEOUT", "0.3")
        .args([
            "receive",
            "12-quiet-room",
            "--output",
            path(&tmp.path().join("o")),
        ])
        .output()
        .unwrap();
    let stderr = text(&receive.stderr);
    let error = the_error_line(&stderr);
    assert!(
        error.contains("no sender waiting for code 12-… was found"),
        "{stderr}"
    );
    assert_eq!(receive.status.code(), Some(3), "{stderr}");
}

/// Two receivers announce themselves: `--discover` without a name cannot choose, and the
/// command line has to (exit 2).
#[test]
fn send_discover_with_two_receivers_asks_for_a_name() {
    use p2p_core::discovery::{Announcer, Beacon, BeaconTargets, DiscoveryConfig};
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("f.txt");
    std::fs::write(&src, "hello").unwrap();
    let port = free_udp_port();
    let config = DiscoveryConfig {
        port,
        interval: Duration::from_millis(100),
        targets: BeaconTargets::Only(vec!["127.255.255.255".parse().unwrap()]),
        ..DiscoveryConfig::default()
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let _announcers: Vec<Announcer> = ["desk", "laptop"]
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let beacon = Beacon::new(p2p_core::net::DeviceId::random(), name, 40_000 + i as u16);
            runtime.block_on(async { Announcer::start(beacon, &config).unwrap() })
        })
        .collect();
    let send = p2p(&tmp.path().join("data"))
        .env(p2p_core::discovery::PORT_ENV, port.to_string())
        .env("P2P_DISCOVERY_TIMEOUT", "3")
        .args(["send", path(&src), "--discover"])
        .output()
        .unwrap();
    let stderr = text(&send.stderr);
    assert!(
        stderr.contains("desk") && stderr.contains("laptop"),
        "{stderr}"
    );
    assert_eq!(send.status.code(), Some(2), "{stderr}");
}

/// A STUN server on `addr` answering every request with `reply`, on its own runtime.
fn stun_server(addr: SocketAddr, reply: Reply) -> (tokio::runtime::Runtime, FakeServer) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let server = runtime.block_on(FakeServer::start_on(addr, vec![reply]));
    (runtime, server)
}

fn nat_test(server: &str) -> Output {
    let tmp = tempfile::tempdir().unwrap();
    run(
        &tmp.path().join("data"),
        &["nat-test", "--stun-server", server, "--timeout", "1"],
    )
}

/// `--stun-server HOST` asks HOST:3478. The server listens on a random 127.x address
/// (all of 127/8 is loopback), so that nothing else on port 3478 can be in the way.
#[test]
fn nat_test_without_a_port_asks_port_3478() {
    let ip = format!(
        "127.{}.{}.{}",
        rand::random_range(1..255),
        rand::random_range(0..255),
        rand::random_range(1..255)
    );
    let public: SocketAddr = "203.0.113.7:40000".parse().unwrap();
    let (_runtime, server) = stun_server(format!("{ip}:3478").parse().unwrap(), Reply::Xor(public));
    let out = nat_test(&ip);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(stderr.contains(&format!("asking {ip}:3478")), "{stderr}");
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    assert!(
        stdout.contains("public address   203.0.113.7:40000"),
        "{stdout}"
    );
    assert!(server.requests() >= 1);
}

#[test]
fn nat_test_without_a_port_asks_port_3478_on_ipv6_too() {
    let free = UdpSocket::bind("[::1]:3478").is_ok();
    if !stun_support::require(free, "UDP [::1]:3478 (IPv6 loopback, port free)") {
        return;
    }
    let public: SocketAddr = "203.0.113.8:40000".parse().unwrap();
    let (_runtime, server) = stun_server("[::1]:3478".parse().unwrap(), Reply::Xor(public));
    let out = nat_test("[::1]");
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(stderr.contains("asking [::1]:3478"), "{stderr}");
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    assert!(
        stdout.contains("public address   203.0.113.8:40000"),
        "{stdout}"
    );
    assert!(server.requests() >= 1);
}

/// Nobody answers: could not connect (3), in words.
#[test]
fn nat_test_with_a_silent_server_could_not_connect() {
    let (_runtime, server) = stun_server("127.0.0.1:0".parse().unwrap(), Reply::Silence);
    let out = nat_test(&server.addr.to_string());
    let stderr = text(&out.stderr);
    let error = the_error_line(&stderr);
    assert!(
        error.contains("cannot get an answer from any STUN server"),
        "{stderr}"
    );
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(server.requests() >= 1);
}

/// The server answers with a STUN error: it answered, but not usably (4).
#[test]
fn nat_test_with_an_error_reply_is_incompatible() {
    let (_runtime, server) = stun_server("127.0.0.1:0".parse().unwrap(), Reply::Error(420));
    let out = nat_test(&server.addr.to_string());
    let stderr = text(&out.stderr);
    let error = the_error_line(&stderr);
    assert_eq!(
        error,
        format!(
            "error: the STUN server {} answered, but not with this host's address: the \
             server answered with error 420: scripted failure",
            server.addr
        )
    );
    assert_eq!(out.status.code(), Some(4), "{stderr}");
}

/// The server answers every request with bytes that are not STUN: 4, and the message
/// says it answered.
#[test]
fn nat_test_with_a_garbage_reply_is_incompatible() {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = socket.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while let Ok((_, from)) = socket.recv_from(&mut buf) {
            let _ = socket.send_to(b"HTTP/1.1 400 Bad Request\r\n\r\n", from);
        }
    });
    let out = nat_test(&addr.to_string());
    let stderr = text(&out.stderr);
    let error = the_error_line(&stderr);
    assert!(
        error.contains(&format!(
            "the STUN server {addr} answered, but not with this host's address"
        )),
        "{stderr}"
    );
    assert!(error.contains("not a STUN answer"), "{stderr}");
    assert_eq!(out.status.code(), Some(4), "{stderr}");
}
