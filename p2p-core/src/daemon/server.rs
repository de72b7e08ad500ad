//! The daemon itself: holds `DIR/daemon.lock`, listens on the owner-only socket
//! `DIR/daemon.sock`, starts the persisted shares and answers control requests until
//! SIGTERM, SIGINT or a `stop` request.

use std::fs::OpenOptions;
use std::future::Future;
use std::io::{Read, Seek, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;

use super::protocol::{self, Line, Listed, Request, Response};
use super::{registry, DaemonError, ShareRecord, ShareStats, Shares, LOCK_FILE};

/// Most control connections served at once; one more gets an error line and is closed.
pub const MAX_CONNECTIONS: usize = 16;
/// A control connection that sends no request for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// A response the client does not read within this long closes the connection.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long shutting down waits for a running `add` or `remove` to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// Longest socket path the OS takes (`sun_path` holds 108 bytes with its NUL).
const MAX_SOCKET_PATH: usize = 107;

/// Runs the daemon for the data folder `dir` until SIGTERM, SIGINT or a `stop`
/// request: then stops accepting, calls [`Shares::shutdown`], removes the socket and
/// returns `Ok`.
pub async fn run<S: Shares>(dir: &Path, shares: S) -> Result<(), DaemonError> {
    let stop = termination()?;
    let daemon = Daemon::start(dir, shares).await?;
    tracing::info!("daemon listening on {}", daemon.socket().display());
    daemon.serve(stop).await
}

/// A future that completes on the first SIGTERM or SIGINT. The handlers are installed
/// when this is called (so a signal right after it is not lost).
pub fn termination() -> Result<impl Future<Output = ()> + Send + 'static, DaemonError> {
    use tokio::signal::unix::{signal, SignalKind};
    let here = Path::new("SIGTERM/SIGINT");
    let mut term =
        signal(SignalKind::terminate()).map_err(|e| DaemonError::io("cannot handle", here, e))?;
    let mut int =
        signal(SignalKind::interrupt()).map_err(|e| DaemonError::io("cannot handle", here, e))?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: stopping"),
            _ = int.recv() => tracing::info!("SIGINT: stopping"),
        }
    })
}

/// A daemon that holds its lock and its socket, ready to [`serve`](Self::serve).
pub struct Daemon<S: Shares> {
    socket: PathBuf,
    listener: UnixListener,
    _lock: std::fs::File,
    inner: Arc<Inner<S>>,
}

impl<S: Shares> std::fmt::Debug for Daemon<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Daemon")
            .field("socket", &self.socket)
            .finish_non_exhaustive()
    }
}

struct Inner<S> {
    dir: PathBuf,
    shares: S,
    /// The shares, in the order they were added (what is persisted).
    entries: Mutex<Vec<Entry>>,
    /// Serialises what starts or stops shares and writes the registry.
    ops: tokio::sync::Mutex<()>,
    /// A `stop` request.
    stop: Notify,
}

struct Entry {
    record: ShareRecord,
    status: Status,
}

enum Status {
    /// Loaded from the registry; `start` has not finished yet.
    Starting,
    Started,
    /// `start` failed: the state shown.
    Failed(String),
}

impl<S: Shares> Daemon<S> {
    /// Takes the data folder `dir` (created if missing): its lock (another daemon there
    /// is [`DaemonError::AlreadyRunning`]), the socket (a stale one is replaced; the new
    /// one is mode 0600 from the start) and the registry (a corrupt one is moved aside and
    /// logged; the daemon starts empty). Shares are started by [`serve`](Self::serve).
    pub async fn start(dir: &Path, shares: S) -> Result<Self, DaemonError> {
        std::fs::create_dir_all(dir).map_err(|e| DaemonError::io("cannot create", dir, e))?;
        let lock = take_lock(dir).await?;
        let socket = super::socket_path(dir);
        if let Some(pid) = answering_pid(dir).await {
            // A daemon that does not use the lock (another build) still answers here.
            return Err(DaemonError::AlreadyRunning {
                pid: Some(pid),
                dir: dir.to_owned(),
            });
        }
        let listener = bind_private(dir, &socket)?;
        let loaded = registry::load(dir)?;
        if let Some((reason, aside)) = &loaded.corrupt {
            tracing::error!(
                "the share list {} does not read ({reason}): moved to {}; starting with no shares",
                dir.join(registry::REGISTRY_FILE).display(),
                aside.display()
            );
        }
        let entries = loaded
            .records
            .into_iter()
            .map(|record| Entry {
                record,
                status: Status::Starting,
            })
            .collect();
        Ok(Self {
            socket,
            listener,
            _lock: lock,
            inner: Arc::new(Inner {
                dir: dir.to_owned(),
                shares,
                entries: Mutex::new(entries),
                ops: tokio::sync::Mutex::new(()),
                stop: Notify::new(),
            }),
        })
    }

    /// The control socket's path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Starts the persisted shares (in the background: requests are answered at once)
    /// and answers requests until `stop` completes or a `stop` request comes; then stops
    /// accepting, calls [`Shares::shutdown`] and removes the socket.
    pub async fn serve(self, stop: impl Future<Output = ()>) -> Result<(), DaemonError> {
        let Self {
            socket,
            listener,
            _lock,
            inner,
        } = self;
        let euid = rustix::process::geteuid().as_raw();
        let startup = tokio::spawn(start_persisted(inner.clone()));
        let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        let mut connections = JoinSet::new();
        let mut stop = std::pin::pin!(stop);
        loop {
            let accepted = tokio::select! {
                biased;
                () = &mut stop => break,
                () = inner.stop.notified() => {
                    tracing::info!("stop requested over the socket: stopping");
                    break;
                }
                accepted = listener.accept() => accepted,
                Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            };
            let stream = match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // EMFILE and the like: passing; do not spin.
                    tracing::warn!("accepting a control connection failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            match stream.peer_cred() {
                Ok(cred) if cred.uid() == euid => {}
                Ok(cred) => {
                    tracing::warn!(
                        "refused a control connection from uid {} (only uid {euid} may use it)",
                        cred.uid()
                    );
                    continue;
                }
                Err(e) => {
                    tracing::warn!("refused a control connection: its owner is unknown ({e})");
                    continue;
                }
            }
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                connections.spawn(busy(stream));
                continue;
            };
            let inner = inner.clone();
            connections.spawn(async move {
                connection(&inner, stream).await;
                drop(permit);
            });
        }
        drop(listener);
        startup.abort();
        connections.abort_all();
        match tokio::time::timeout(SHUTDOWN_GRACE, inner.ops.lock()).await {
            Ok(_guard) => inner.shares.shutdown().await,
            Err(_) => {
                tracing::warn!("a share operation did not finish in {SHUTDOWN_GRACE:?}");
                inner.shares.shutdown().await;
            }
        }
        match std::fs::remove_file(&socket) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(DaemonError::io("cannot remove the socket", &socket, e)),
        }
        tracing::info!("daemon stopped");
        Ok(())
    }
}

/// Takes `dir/daemon.lock` (flock, held while the daemon runs) and writes our pid in it.
async fn take_lock(dir: &Path) -> Result<std::fs::File, DaemonError> {
    let path = dir.join(LOCK_FILE);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(|e| DaemonError::io("cannot open", &path, e))?;
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => {}
        Err(rustix::io::Errno::WOULDBLOCK) => {
            let mut text = String::new();
            let written = file
                .read_to_string(&mut text)
                .ok()
                .and_then(|_| text.trim().parse().ok());
            let pid = answering_pid(dir).await.or(written);
            return Err(DaemonError::AlreadyRunning {
                pid,
                dir: dir.to_owned(),
            });
        }
        Err(e) => return Err(DaemonError::io("cannot lock", &path, e.into())),
    }
    let write = |file: &mut std::fs::File| -> std::io::Result<()> {
        file.set_len(0)?;
        file.rewind()?;
        writeln!(file, "{}", std::process::id())
    };
    write(&mut file).map_err(|e| DaemonError::io("cannot write", &path, e))?;
    Ok(file)
}

/// The pid of a daemon answering on `dir`'s socket, if one does (quickly).
async fn answering_pid(dir: &Path) -> Option<u32> {
    let ask = async {
        let mut client = super::Client::connect(dir).await.ok()?;
        client.ping().await.ok().map(|pong| pong.pid)
    };
    tokio::time::timeout(Duration::from_secs(2), ask)
        .await
        .ok()
        .flatten()
}

/// Binds the socket inside a fresh 0700 folder, makes it 0600, then renames it over
/// `socket` (replacing a stale one): no moment where others could reach it.
fn bind_private(dir: &Path, socket: &Path) -> Result<UnixListener, DaemonError> {
    let private = dir.join(format!(".daemon-{}", std::process::id()));
    let staged = private.join(super::SOCKET_FILE);
    let longest = staged.as_os_str().len().max(socket.as_os_str().len());
    if longest > MAX_SOCKET_PATH {
        return Err(DaemonError::io(
            "the socket path is too long for the OS (set P2P_TRANSFER_DATA_DIR to a shorter folder)",
            socket,
            std::io::Error::from(std::io::ErrorKind::InvalidInput),
        ));
    }
    // Left over by a daemon with our pid that died: ours now.
    let _ = std::fs::remove_dir_all(&private);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&private)
        .map_err(|e| DaemonError::io("cannot create", &private, e))?;
    let result = (|| {
        let listener = UnixListener::bind(&staged)
            .map_err(|e| DaemonError::io("cannot listen on", &staged, e))?;
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| DaemonError::io("cannot restrict", &staged, e))?;
        std::fs::rename(&staged, socket).map_err(|e| DaemonError::io("cannot place", socket, e))?;
        Ok(listener)
    })();
    let _ = std::fs::remove_dir_all(&private);
    result
}

/// Starts the shares loaded from the registry, one after the other; a failure is logged
/// and becomes the share's state.
async fn start_persisted<S: Shares>(inner: Arc<Inner<S>>) {
    let pending: Vec<ShareRecord> = inner
        .lock_entries()
        .iter()
        .filter(|e| matches!(e.status, Status::Starting))
        .map(|e| e.record.clone())
        .collect();
    for record in pending {
        let _guard = inner.ops.lock().await;
        // An `add` or `remove` may have dealt with it meanwhile.
        let still_pending = inner
            .lock_entries()
            .iter()
            .any(|e| e.record == record && matches!(e.status, Status::Starting));
        if !still_pending {
            continue;
        }
        let root = record.root.clone();
        let name = record.name.clone();
        let status = match inner.shares.start(record).await {
            Ok(()) => {
                tracing::info!("serving {} ({root})", crate::text::printable(&name));
                Status::Started
            }
            Err(e) => {
                tracing::warn!(
                    "cannot serve {} ({root}): {}",
                    crate::text::printable(&name),
                    crate::text::printable(&e)
                );
                Status::Failed(e)
            }
        };
        if let Some(entry) = inner
            .lock_entries()
            .iter_mut()
            .find(|e| e.record.root == root)
        {
            entry.status = status;
        }
    }
}

/// The answer to a connection over the limit.
async fn busy(mut stream: UnixStream) {
    let line = Response::error(format!(
        "the daemon serves {MAX_CONNECTIONS} control connections already: try again"
    ))
    .to_line();
    let _ = tokio::time::timeout(WRITE_TIMEOUT, stream.write_all(&line)).await;
}

/// One control connection: request line, response line, until it closes, idles, sends
/// a line over the limit (answered with an error, then closed) or asks to stop.
async fn connection<S: Shares>(inner: &Inner<S>, stream: UnixStream) {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    loop {
        let line = match tokio::time::timeout(
            IDLE_TIMEOUT,
            protocol::read_line(&mut reader, protocol::MAX_REQUEST),
        )
        .await
        {
            Err(_) => {
                tracing::debug!("control connection idle for {IDLE_TIMEOUT:?}: closed");
                return;
            }
            Ok(Err(_) | Ok(Line::Closed)) => return,
            Ok(Ok(Line::TooLong)) => {
                let error = Response::error(format!(
                    "the request is longer than {} bytes: closing the connection",
                    protocol::MAX_REQUEST
                ));
                let _ =
                    tokio::time::timeout(WRITE_TIMEOUT, write.write_all(&error.to_line())).await;
                return;
            }
            Ok(Ok(Line::Line(line))) => line,
        };
        let request = protocol::parse_request(&line);
        let stopping = matches!(request, Ok(Request::Stop));
        let response = match request {
            Ok(request) => inner.handle(request).await,
            Err(e) => Response::error(e),
        };
        let sent = tokio::time::timeout(WRITE_TIMEOUT, write.write_all(&response.to_line())).await;
        if stopping {
            inner.stop.notify_one();
            return;
        }
        if !matches!(sent, Ok(Ok(()))) {
            return;
        }
    }
}

impl<S: Shares> Inner<S> {
    fn lock_entries(&self) -> std::sync::MutexGuard<'_, Vec<Entry>> {
        // A panic elsewhere must not take the daemon down with it.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn handle(&self, request: Request) -> Response {
        match request {
            Request::Ping => Response {
                ok: true,
                pid: Some(std::process::id()),
                version: Some(protocol::VERSION.into()),
                ..Response::default()
            },
            Request::List => Response {
                shares: Some(self.list()),
                ..Response::ok()
            },
            Request::Add { record } => match self.add(record).await {
                Ok(replaced) => Response {
                    replaced: Some(replaced),
                    ..Response::ok()
                },
                Err(e) => Response::error(e),
            },
            Request::Remove { which } => match self.remove(&which).await {
                Ok(removed) => Response {
                    removed: Some(removed),
                    ..Response::ok()
                },
                Err(e) => Response::error(e),
            },
            Request::Stop => Response::ok(),
        }
    }

    fn list(&self) -> Vec<Listed> {
        self.lock_entries()
            .iter()
            .map(|entry| Listed {
                record: entry.record.clone(),
                stats: match &entry.status {
                    Status::Starting => ShareStats {
                        state: "starting".into(),
                        ..ShareStats::default()
                    },
                    Status::Started => self.shares.stats(&entry.record.root),
                    Status::Failed(e) => ShareStats {
                        state: e.clone(),
                        ..ShareStats::default()
                    },
                },
            })
            .collect()
    }

    /// Serves `record` (replacing the share with its root: `Ok(true)`) and persists.
    async fn add(&self, record: ShareRecord) -> Result<bool, String> {
        record.validate()?;
        let _guard = self.ops.lock().await;
        let root = record.root.clone();
        let name = crate::text::printable(&record.name).into_owned();
        let previous = self
            .lock_entries()
            .iter()
            .find(|e| e.record.root == root)
            .map(|e| e.record.clone());
        if previous.is_some() {
            self.shares.stop(&root).await;
        }
        if let Err(e) = self.shares.start(record.clone()).await {
            let Some(previous) = previous else {
                return Err(format!("cannot serve {name}: {e}"));
            };
            // Back to what was served before.
            let status = match self.shares.start(previous).await {
                Ok(()) => Status::Started,
                Err(again) => Status::Failed(again),
            };
            if let Some(entry) = self
                .lock_entries()
                .iter_mut()
                .find(|e| e.record.root == root)
            {
                entry.status = status;
            }
            return Err(format!(
                "cannot serve the new version of {name}: {e} (the previous one is kept)"
            ));
        }
        let replaced = {
            let mut entries = self.lock_entries();
            match entries.iter_mut().find(|e| e.record.root == root) {
                Some(entry) => {
                    entry.record = record;
                    entry.status = Status::Started;
                    true
                }
                None => {
                    entries.push(Entry {
                        record,
                        status: Status::Started,
                    });
                    false
                }
            }
        };
        tracing::info!(
            "{} {name} ({root})",
            if replaced { "updated" } else { "added" }
        );
        self.persist()
            .await
            .map_err(|e| format!("serving {name}, but the share list was not saved: {e}"))?;
        Ok(replaced)
    }

    /// Stops and forgets the one share `which` names, and persists.
    async fn remove(&self, which: &str) -> Result<ShareRecord, String> {
        let _guard = self.ops.lock().await;
        let record = {
            let entries = self.lock_entries();
            let records: Vec<&ShareRecord> = entries.iter().map(|e| &e.record).collect();
            resolve(&records, which)?.clone()
        };
        self.shares.stop(&record.root).await;
        self.lock_entries().retain(|e| e.record.root != record.root);
        tracing::info!(
            "removed {} ({})",
            crate::text::printable(&record.name),
            record.root
        );
        self.persist().await.map_err(|e| {
            format!(
                "stopped {}, but the share list was not saved (it comes back after a restart): {e}",
                crate::text::printable(&record.name)
            )
        })?;
        Ok(record)
    }

    async fn persist(&self) -> Result<(), DaemonError> {
        let records: Vec<ShareRecord> = self
            .lock_entries()
            .iter()
            .map(|e| e.record.clone())
            .collect();
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || registry::save(&dir, &records))
            .await
            .map_err(|e| DaemonError::io("cannot save", &self.dir, std::io::Error::other(e)))?
    }
}

/// The one share `which` names: its exact name, its root, or a unique root prefix (hex,
/// any case).
pub fn resolve<'a>(records: &[&'a ShareRecord], which: &str) -> Result<&'a ShareRecord, String> {
    let which = which.trim();
    let shown = crate::text::printable_truncated(which, 80);
    if which.is_empty() {
        return Err(
            "say which share: a root hash prefix or a name (see `p2p-transfer shares`)".into(),
        );
    }
    let prefix = which.to_ascii_lowercase();
    let hex = prefix.bytes().all(|b| b.is_ascii_hexdigit());
    if let Some(exact) = records.iter().find(|r| r.root == prefix) {
        return Ok(exact);
    }
    let matches: Vec<&'a ShareRecord> = records
        .iter()
        .filter(|r| r.name == which || (hex && r.root.starts_with(&prefix)))
        .copied()
        .collect();
    match matches.as_slice() {
        [] => Err(format!(
            "no share is named {shown:?} or has a root starting with it (see `p2p-transfer shares`)"
        )),
        [one] => Ok(one),
        several => {
            let listed: Vec<String> = several
                .iter()
                .take(10)
                .map(|r| format!("{} ({})", crate::text::printable(&r.name), r.short_root()))
                .collect();
            Err(format!(
                "{shown:?} matches {} shares: {}{}; give more of the root hash",
                several.len(),
                listed.join(", "),
                if several.len() > 10 { ", …" } else { "" }
            ))
        }
    }
}
