//! Talking to the daemon: [`Client`] for one connection, [`ensure_running`] to start
//! the daemon on demand.

use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;

use super::protocol::{self, Line, Listed, Pong, Request, Response};
use super::{DaemonError, ShareRecord};

/// How long a request waits for its answer (an `add` may wait for shares starting).
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long [`ensure_running`] waits for a daemon it started to answer.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How often [`ensure_running`] knocks while it waits.
const START_POLL: Duration = Duration::from_millis(50);

/// A connection to the daemon of one data folder.
#[derive(Debug)]
pub struct Client {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    socket: PathBuf,
}

impl Client {
    /// Connects to the daemon of the data folder `dir` (its socket `dir/daemon.sock`).
    /// Nothing there, or a stale socket: [`DaemonError::NotRunning`]. A socket owned by
    /// another user is refused.
    pub async fn connect(dir: &Path) -> Result<Self, DaemonError> {
        let socket = super::socket_path(dir);
        let stream = match UnixStream::connect(&socket).await {
            Ok(stream) => stream,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                ) =>
            {
                return Err(DaemonError::NotRunning {
                    dir: dir.to_owned(),
                    socket,
                })
            }
            Err(e) => return Err(DaemonError::io("cannot connect to", &socket, e)),
        };
        let euid = rustix::process::geteuid().as_raw();
        let owner = stream
            .peer_cred()
            .map_err(|e| DaemonError::io("cannot tell who listens on", &socket, e))?
            .uid();
        if owner != euid {
            return Err(DaemonError::io(
                "refusing a daemon of another user (uid differs) on",
                &socket,
                std::io::Error::from(std::io::ErrorKind::PermissionDenied),
            ));
        }
        let (read, writer) = stream.into_split();
        Ok(Self {
            reader: BufReader::new(read),
            writer,
            socket,
        })
    }

    /// The socket this client talks to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Sends one request and reads its response (an `ok: false` one included).
    pub async fn request(&mut self, request: &Request) -> Result<Response, DaemonError> {
        let mut line =
            serde_json::to_vec(request).map_err(|e| DaemonError::Protocol(e.to_string()))?;
        line.push(b'\n');
        let exchange = async {
            self.writer
                .write_all(&line)
                .await
                .map_err(|e| DaemonError::io("cannot write to", &self.socket, e))?;
            match protocol::read_line(&mut self.reader, protocol::MAX_RESPONSE).await {
                Ok(Line::Line(line)) => serde_json::from_slice::<Response>(&line)
                    .map_err(|e| DaemonError::Protocol(e.to_string())),
                Ok(Line::Closed) => Err(DaemonError::Protocol(
                    "it closed the connection without answering".into(),
                )),
                Ok(Line::TooLong) => Err(DaemonError::Protocol(format!(
                    "an answer longer than {} bytes",
                    protocol::MAX_RESPONSE
                ))),
                Err(e) => Err(DaemonError::io("cannot read from", &self.socket, e)),
            }
        };
        tokio::time::timeout(RESPONSE_TIMEOUT, exchange)
            .await
            .map_err(|_| DaemonError::Timeout(RESPONSE_TIMEOUT))?
    }

    /// Sends `request`; an `ok: false` answer becomes [`DaemonError::Refused`].
    async fn ask(&mut self, request: &Request) -> Result<Response, DaemonError> {
        let response = self.request(request).await?;
        if response.ok {
            Ok(response)
        } else {
            Err(DaemonError::Refused(
                response
                    .error
                    .unwrap_or_else(|| "it refused without saying why".into()),
            ))
        }
    }

    /// Whether the daemon answers: its pid and version.
    pub async fn ping(&mut self) -> Result<Pong, DaemonError> {
        let response = self.ask(&Request::Ping).await?;
        match (response.pid, response.version) {
            (Some(pid), Some(version)) => Ok(Pong { pid, version }),
            _ => Err(DaemonError::Protocol(
                "the ping answer has no pid or version".into(),
            )),
        }
    }

    /// Serves `record` (and persists it): `true` when it replaced a share with the same
    /// root, `false` when it was added.
    pub async fn add(&mut self, record: &ShareRecord) -> Result<bool, DaemonError> {
        let response = self
            .ask(&Request::Add {
                record: record.clone(),
            })
            .await?;
        Ok(response.replaced.unwrap_or(false))
    }

    /// The shares served, with their stats.
    pub async fn list(&mut self) -> Result<Vec<Listed>, DaemonError> {
        let response = self.ask(&Request::List).await?;
        response
            .shares
            .ok_or_else(|| DaemonError::Protocol("the list answer has no shares".into()))
    }

    /// Stops serving the share `which` names (a root hash prefix or its name) and
    /// forgets it: the record removed.
    pub async fn remove(&mut self, which: &str) -> Result<ShareRecord, DaemonError> {
        let response = self
            .ask(&Request::Remove {
                which: which.to_owned(),
            })
            .await?;
        response
            .removed
            .ok_or_else(|| DaemonError::Protocol("the remove answer names no share".into()))
    }

    /// Asks the daemon to stop (as SIGTERM does); returns once it acknowledged. It
    /// then shuts its shares down and removes its socket.
    pub async fn stop(&mut self) -> Result<(), DaemonError> {
        self.ask(&Request::Stop).await.map(|_| ())
    }
}

/// A client of the daemon of `dir`: the running one, or one started now as
/// `exe daemon` (its own process group, standard input empty, output appended to
/// `dir/daemon.log`, this environment with `P2P_TRANSFER_DATA_DIR=dir`), waited for
/// until it answers a ping (at most [`START_TIMEOUT`]).
pub async fn ensure_running(dir: &Path, exe: &Path) -> Result<Client, DaemonError> {
    if let Some(client) = answering(dir).await? {
        return Ok(client);
    }
    std::fs::create_dir_all(dir).map_err(|e| DaemonError::io("cannot create", dir, e))?;
    let log = dir.join(super::LOG_FILE);
    let failed = |reason: String| DaemonError::StartFailed {
        reason,
        log: log.clone(),
    };
    let out = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&log)
        .map_err(|e| DaemonError::io("cannot open the daemon's log", &log, e))?;
    let err = out
        .try_clone()
        .map_err(|e| DaemonError::io("cannot open the daemon's log", &log, e))?;
    let mut child = std::process::Command::new(exe)
        .arg("daemon")
        .env(crate::history::DATA_DIR_ENV, dir)
        .stdin(std::process::Stdio::null())
        .stdout(out)
        .stderr(err)
        // Out of the terminal's process group: Ctrl+C in it does not reach the daemon.
        .process_group(0)
        .spawn()
        .map_err(|e| failed(format!("cannot run {}: {e}", exe.display())))?;
    tracing::info!(
        "started the daemon (pid {}), log: {}",
        child.id(),
        log.display()
    );
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Some(client) = answering(dir).await? {
            return Ok(client);
        }
        if let Ok(Some(status)) = child.try_wait() {
            // Another daemon may have won a race to start: then it answers.
            if let Some(client) = answering(dir).await? {
                return Ok(client);
            }
            return Err(failed(format!("it exited at once, {status}")));
        }
        if Instant::now() >= deadline {
            return Err(failed(format!(
                "pid {} did not answer within {START_TIMEOUT:?}",
                child.id()
            )));
        }
        tokio::time::sleep(START_POLL).await;
    }
}

/// A client that answered a ping; `None` when no daemon runs.
async fn answering(dir: &Path) -> Result<Option<Client>, DaemonError> {
    match Client::connect(dir).await {
        Ok(mut client) => {
            client.ping().await?;
            Ok(Some(client))
        }
        Err(DaemonError::NotRunning { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}
