//! The background daemon (`p2p-transfer daemon`): keeps shares served while no command
//! runs, and answers the CLI and the GUI over a local control socket.
//!
//! | part | owns |
//! |---|---|
//! | this module | [`ShareRecord`], [`ShareStats`], the [`Shares`] trait the swarm engine implements, [`RecordOnly`], [`DaemonError`] |
//! | [`registry`] | the persisted share list, `DIR/shares.json` (temp file, fsync, rename) |
//! | [`protocol`] | the control protocol: one JSON line per request, one per response |
//! | [`server`] | [`Daemon`]: the lock, the owner-only socket, the request loop, signals |
//! | [`client`] | [`Client`] and [`ensure_running`] (start the daemon on demand) |
//!
//! `DIR` is the data folder ([`crate::history::data_dir`]). docs/daemon.md describes the
//! socket, the protocol and the files for people.

pub mod client;
pub mod protocol;
pub mod registry;
pub mod server;

use std::path::{Path, PathBuf};

pub use client::{ensure_running, Client};
pub use protocol::{Listed, Pong};
pub use server::{run, termination, Daemon};

/// The control socket's file name in the data folder.
pub const SOCKET_FILE: &str = "daemon.sock";
/// The lock file a running daemon holds (and its pid, for people).
pub const LOCK_FILE: &str = "daemon.lock";
/// Where a daemon started on demand writes its log.
pub const LOG_FILE: &str = "daemon.log";
/// Where [`ensure_running`] looks for the daemon: `dir/daemon.sock`.
pub fn socket_path(dir: &Path) -> PathBuf {
    dir.join(SOCKET_FILE)
}

/// One share the daemon serves, as persisted.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ShareRecord {
    /// The share's root hash, 64 lowercase hex characters.
    pub root: String,
    /// What the share is called (for people; escape it when shown).
    pub name: String,
    /// The `NAME.p2p` file (absolute).
    pub share_file: PathBuf,
    /// The paths that were shared (absolute).
    pub sources: Vec<PathBuf>,
    /// The tracker, `host:port`.
    pub rendezvous: String,
    /// When the share was added, seconds since the Unix epoch.
    pub added_unix: u64,
    /// Upload limit in bytes per second, if any.
    pub max_upload: Option<u64>,
}

/// Longest share name and tracker address a record may carry, in bytes.
pub const MAX_TEXT: usize = 1024;
/// Most source paths one record may list.
pub const MAX_SOURCES: usize = 4096;

impl ShareRecord {
    /// Checks what the daemon relies on: the root is 64 lowercase hex characters, the
    /// paths are absolute, the texts are present and of bounded length.
    pub fn validate(&self) -> Result<(), String> {
        if !is_root(&self.root) {
            return Err(format!(
                "the root hash must be 64 lowercase hex characters, not {:?}",
                crate::text::printable_truncated(&self.root, 80)
            ));
        }
        if self.name.trim().is_empty() {
            return Err("the share has no name".into());
        }
        if self.name.len() > MAX_TEXT {
            return Err(format!("the share's name is longer than {MAX_TEXT} bytes"));
        }
        if self.rendezvous.trim().is_empty() || self.rendezvous.len() > MAX_TEXT {
            return Err(format!(
                "the tracker address must be HOST:PORT of at most {MAX_TEXT} bytes"
            ));
        }
        if !self.share_file.is_absolute() {
            return Err(format!(
                "the share file {} is not an absolute path",
                self.share_file.display()
            ));
        }
        if self.sources.len() > MAX_SOURCES {
            return Err(format!("more than {MAX_SOURCES} source paths"));
        }
        if let Some(relative) = self.sources.iter().find(|p| !p.is_absolute()) {
            return Err(format!(
                "the shared path {} is not an absolute path",
                relative.display()
            ));
        }
        Ok(())
    }

    /// The first 12 hex characters of the root: enough to tell shares apart.
    pub fn short_root(&self) -> &str {
        self.root.get(..12).unwrap_or(&self.root)
    }
}

/// Whether `text` is a root hash: exactly 64 lowercase hex characters.
pub fn is_root(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// How one share is doing.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ShareStats {
    /// Peers connected for this share now.
    pub peers: usize,
    /// Bytes uploaded since the daemon started serving it.
    pub uploaded: u64,
    /// `"serving"`, or what went wrong.
    pub state: String,
}

/// What actually serves shares (the swarm engine implements it; tests use a fake).
pub trait Shares: Send + Sync + 'static {
    /// Starts serving `record` (announce it, answer peers). An error is shown as the
    /// share's state; the daemon keeps the record.
    fn start(
        &self,
        record: ShareRecord,
    ) -> impl std::future::Future<Output = Result<(), String>> + Send;
    /// Stops serving the share with this root (nothing if it is not served).
    fn stop(&self, root: &str) -> impl std::future::Future<Output = ()> + Send;
    /// How the share with this root is doing now.
    fn stats(&self, root: &str) -> ShareStats;
    /// Stops everything: the daemon is about to exit.
    fn shutdown(&self) -> impl std::future::Future<Output = ()> + Send;
}

/// A [`Shares`] that accepts every record and serves nothing (state `"recorded"`): the
/// daemon's bookkeeping without a swarm engine behind it.
#[derive(Debug, Clone, Copy, Default)]
pub struct RecordOnly;

impl Shares for RecordOnly {
    async fn start(&self, _record: ShareRecord) -> Result<(), String> {
        Ok(())
    }

    async fn stop(&self, _root: &str) {}

    fn stats(&self, _root: &str) -> ShareStats {
        ShareStats {
            peers: 0,
            uploaded: 0,
            state: "recorded".into(),
        }
    }

    async fn shutdown(&self) {}
}

/// What can go wrong running or reaching the daemon. Each message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// Another daemon serves this data folder.
    #[error("a daemon already runs ({}) for {}: stop it first (`kill -TERM` it, or send `{{\"op\":\"stop\"}}` to its socket)",
        .pid.map_or_else(|| "pid unknown".to_owned(), |p| format!("pid {p}")), .dir.display())]
    AlreadyRunning {
        /// Its process id, when it said.
        pid: Option<u32>,
        /// The data folder.
        dir: PathBuf,
    },
    /// Nothing answers on the socket.
    #[error("no daemon runs for {} (nothing answers on {}): start one with `p2p-transfer daemon`", .dir.display(), .socket.display())]
    NotRunning {
        /// The data folder.
        dir: PathBuf,
        /// The socket that did not answer.
        socket: PathBuf,
    },
    /// The daemon could not be started on demand.
    #[error("could not start the daemon ({reason}); see {} or run `p2p-transfer daemon` to see why", .log.display())]
    StartFailed {
        /// What went wrong.
        reason: String,
        /// Its log file.
        log: PathBuf,
    },
    /// The daemon answered with an error.
    #[error("the daemon says: {0}")]
    Refused(String),
    /// The daemon answered something that is not this protocol, or too much.
    #[error("the daemon's answer is not understood ({0}); is it the same version? Restart it")]
    Protocol(String),
    /// The daemon did not answer in time.
    #[error("the daemon did not answer within {0:?}; it may be stuck: restart it")]
    Timeout(std::time::Duration),
    /// A file or socket operation failed.
    #[error("{what} {}: {source}", .path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// On which path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

impl DaemonError {
    pub(crate) fn io(what: &'static str, path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            what,
            path: path.to_owned(),
            source,
        }
    }
}
