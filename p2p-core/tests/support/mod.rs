//! Test fixtures for the STUN and discovery tests: a real coturn on loopback, and
//! scriptable fake STUN servers for the cases coturn cannot produce (other mappings,
//! lost requests, forged answers). Everything binds loopback addresses only.

#![allow(dead_code)]

use std::net::{IpAddr, SocketAddr, TcpListener, UdpSocket as StdUdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use p2p_core::nat::client::{binding, RetransmitSchedule};
use p2p_core::nat::stun::{self, attr, Class, MessageBuilder, METHOD_BINDING};
use tokio::net::UdpSocket;

/// True when running under CI (`CI=true`), where a missing prerequisite is a failure,
/// not a skip.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Skips the calling test (prints why and returns `false`) unless `ok`; under CI a
/// missing prerequisite fails the test instead.
pub fn require(ok: bool, what: &str) -> bool {
    if ok {
        return true;
    }
    if in_ci() {
        panic!("CI=true but {what}");
    }
    eprintln!("SKIPPED: {what} (install coturn, or run .ci/run, to run this test)");
    false
}

/// The path of `turnserver`, if coturn is installed.
pub fn turnserver() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin")])
        .map(|dir| dir.join("turnserver"))
        .find(|p| p.is_file())
}

/// A coturn STUN server on loopback, killed on drop.
pub struct Coturn {
    child: Child,
    /// Primary port on every listening IP.
    pub port: u16,
    /// Listening IPs.
    pub ips: Vec<IpAddr>,
    _dir: tempfile::TempDir,
    log: PathBuf,
}

impl Coturn {
    /// Starts `turnserver` in STUN-only mode on `ips` (loopback addresses), on a free
    /// port pair, and waits until it answers. `None` when coturn is not installed.
    pub async fn start(ips: &[&str]) -> Option<Coturn> {
        let exe = turnserver()?;
        let ips: Vec<IpAddr> = ips.iter().map(|ip| ip.parse().unwrap()).collect();
        for attempt in 0..5 {
            let port = free_port_pair(&ips);
            let dir = tempfile::tempdir().unwrap();
            let log = dir.path().join("turnserver.log");
            let mut command = Command::new(&exe);
            command.args([
                "-n",
                "--stun-only",
                "--no-cli",
                "--no-tls",
                "--no-dtls",
                "--simple-log",
                "--log-file",
                "stdout",
            ]);
            command
                .arg("--pidfile")
                .arg(dir.path().join("turnserver.pid"));
            for ip in &ips {
                command.arg("--listening-ip").arg(ip.to_string());
            }
            command.args([
                "--listening-port",
                &port.to_string(),
                "--alt-listening-port",
                &(port + 1).to_string(),
            ]);
            let child = command
                .current_dir(dir.path())
                .stdin(Stdio::null())
                .stdout(std::fs::File::create(&log).unwrap())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn turnserver");
            let server = Coturn {
                child,
                port,
                ips: ips.clone(),
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

    /// `ip:port` of the primary listener on `ips[i]`.
    pub fn addr(&self, i: usize) -> SocketAddr {
        SocketAddr::new(self.ips[i], self.port)
    }

    async fn wait_ready(&self) -> bool {
        let schedule = RetransmitSchedule {
            initial_rto: Duration::from_millis(50),
            timeout: Duration::from_millis(200),
            ..RetransmitSchedule::default()
        };
        for _ in 0..40 {
            let mut all = true;
            for i in 0..self.ips.len() {
                let bind = if self.ips[i].is_ipv4() {
                    "127.0.0.1:0"
                } else {
                    "[::1]:0"
                };
                let socket = UdpSocket::bind(bind).await.unwrap();
                all &= binding(&socket, self.addr(i), &schedule).await.is_ok();
            }
            if all {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    /// The last lines coturn logged.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Coturn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port `p` such that `p` and `p + 1` are free for UDP and TCP on every `ip`.
fn free_port_pair(ips: &[IpAddr]) -> u16 {
    loop {
        let port: u16 = rand::random_range(20_000..60_000);
        let free = ips.iter().all(|ip| {
            [port, port + 1].iter().all(|p| {
                let addr = SocketAddr::new(*ip, *p);
                StdUdpSocket::bind(addr).is_ok() && TcpListener::bind(addr).is_ok()
            })
        });
        if free {
            return port;
        }
    }
}

/// How a fake server answers one request.
#[derive(Debug, Clone)]
pub enum Reply {
    /// XOR-MAPPED-ADDRESS with this address.
    Xor(SocketAddr),
    /// XOR-MAPPED-ADDRESS and an RFC 5780 OTHER-ADDRESS.
    XorWithOther(SocketAddr, SocketAddr),
    /// Only MAPPED-ADDRESS (a pre-RFC 5389 server).
    Plain(SocketAddr),
    /// An error response.
    Error(u16),
    /// No answer at all (a lost request).
    Silence,
    /// First a forged answer (wrong transaction id), then the real one.
    ForgedThen(SocketAddr),
}

/// A scripted STUN server on a loopback address; answers the n-th request with
/// `script[n]` (the last entry repeats). Counts the requests it saw.
pub struct FakeServer {
    pub addr: SocketAddr,
    pub requests: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeServer {
    pub async fn start(ip: &str, script: Vec<Reply>) -> FakeServer {
        Self::start_on(SocketAddr::new(ip.parse().unwrap(), 0), script).await
    }

    pub async fn start_on(addr: SocketAddr, script: Vec<Reply>) -> FakeServer {
        let socket = UdpSocket::bind(addr).await.unwrap();
        let addr = socket.local_addr().unwrap();
        let requests = Arc::new(AtomicUsize::new(0));
        let seen = Arc::clone(&requests);
        let task = tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            loop {
                let Ok((len, from)) = socket.recv_from(&mut buf).await else {
                    return;
                };
                let Ok(request) = stun::Message::decode(&buf[..len]) else {
                    continue;
                };
                let n = seen.fetch_add(1, Ordering::SeqCst);
                let reply = script[n.min(script.len() - 1)].clone();
                let id = request.transaction_id;
                let success = MessageBuilder::new(Class::SuccessResponse, METHOD_BINDING, id);
                let bytes = match reply {
                    Reply::Xor(mapped) => success.xor_mapped_address(mapped).finish(),
                    Reply::XorWithOther(mapped, other) => success
                        .xor_mapped_address(mapped)
                        .address(attr::OTHER_ADDRESS, other)
                        .finish_with_fingerprint(),
                    Reply::Plain(mapped) => success.address(attr::MAPPED_ADDRESS, mapped).finish(),
                    Reply::Error(code) => {
                        MessageBuilder::new(Class::ErrorResponse, METHOD_BINDING, id)
                            .error_code(code, "scripted failure")
                            .finish()
                    }
                    Reply::Silence => continue,
                    Reply::ForgedThen(mapped) => {
                        let forged = MessageBuilder::new(
                            Class::SuccessResponse,
                            METHOD_BINDING,
                            stun::TransactionId([0xAB; 12]),
                        )
                        .xor_mapped_address("192.0.2.66:6666".parse().unwrap())
                        .finish();
                        let _ = socket.send_to(&forged, from).await;
                        let _ = socket.send_to(b"not stun at all", from).await;
                        success.xor_mapped_address(mapped).finish()
                    }
                };
                let _ = socket.send_to(&bytes, from).await;
            }
        });
        FakeServer {
            addr,
            requests,
            task,
        }
    }

    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
