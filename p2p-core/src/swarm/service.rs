//! The daemon's shares, served by swarms (`daemon::Shares` on top of [`Host`]).
//!
//! A record names the `.p2p` file and the shared paths. Starting it does not hash the
//! files again: it walks the shared paths and requires exactly the entries the manifest
//! lists (paths, sizes, modes, modification times) — a file changed since it was shared
//! is reported, and share it again to serve the new content. Every piece is still
//! checked against its hash before it is served.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::content::{Hash, LocalShare};
use super::host::Host;
use super::node::Swarm;
use super::ticket::ShareFile;
use super::{SwarmConfig, SwarmError};
use crate::daemon::{ShareRecord, ShareStats, Shares};
use crate::fs::source::SourceManifest;
use crate::net::Identity;

/// Serves the daemon's shares (see the module documentation).
pub struct SwarmService {
    identity: Arc<Identity>,
    config: SwarmConfig,
    /// One tracker connection per tracker address.
    hosts: tokio::sync::Mutex<HashMap<String, Host>>,
    running: Mutex<HashMap<String, (Host, Swarm)>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl SwarmService {
    /// Shares as device `identity`, each with `config` (its upload limit is overridden
    /// by a record's own).
    pub fn new(identity: Arc<Identity>, config: SwarmConfig) -> Self {
        SwarmService {
            identity,
            config,
            hosts: tokio::sync::Mutex::new(HashMap::new()),
            running: Mutex::new(HashMap::new()),
        }
    }

    async fn host(&self, tracker: &str) -> Result<Host, SwarmError> {
        let mut hosts = self.hosts.lock().await;
        if let Some(host) = hosts.get(tracker) {
            return Ok(host.clone());
        }
        let host = Host::connect(tracker, self.identity.clone(), self.config.clone()).await?;
        hosts.insert(tracker.to_owned(), host.clone());
        Ok(host)
    }

    async fn start_share(&self, record: &ShareRecord) -> Result<(), SwarmError> {
        let root: Hash = record.root.parse()?;
        let path = record.share_file.clone();
        let sources = record.sources.clone();
        let (local, file_trusted) =
            tokio::task::spawn_blocking(move || local_share(&path, &sources, &root))
                .await
                .map_err(|e| SwarmError::Io(e.to_string()))??;
        let host = self.host(&record.rendezvous).await?;
        let swarm = host
            .share_limited(&local, file_trusted, record.max_upload)
            .await?;
        lock(&self.running).insert(record.root.clone(), (host, swarm));
        Ok(())
    }
}

/// The share a record describes, its files checked against the manifest, and the
/// devices its `.p2p` file trusts.
fn local_share(
    file: &std::path::Path,
    sources: &[std::path::PathBuf],
    root: &Hash,
) -> Result<(LocalShare, Vec<crate::net::DeviceId>), SwarmError> {
    let share = ShareFile::read(file)?;
    if share.ticket.root != *root {
        return Err(SwarmError::Input(format!(
            "{} is the share file of another share",
            file.display()
        )));
    }
    let manifest = share
        .manifest
        .ok_or_else(|| SwarmError::Input(format!("{} holds no manifest", file.display())))?;
    let scan = SourceManifest::scan(sources)
        .map_err(|e| SwarmError::Io(format!("the shared files cannot be read any more: {e}")))?;
    if scan.entries != manifest.entries {
        return Err(SwarmError::Io(
            "the shared files changed since they were shared (sizes, names or times \
             differ): share them again"
                .into(),
        ));
    }
    Ok((
        LocalShare {
            manifest,
            root: *root,
            local_paths: scan.local_paths,
        },
        share.ticket.trusted,
    ))
}

impl Shares for SwarmService {
    async fn start(&self, record: ShareRecord) -> Result<(), String> {
        self.start_share(&record).await.map_err(|e| e.to_string())
    }

    async fn stop(&self, root: &str) {
        let running = lock(&self.running).remove(root);
        if let (Some((host, swarm)), Ok(hash)) = (running, root.parse::<Hash>()) {
            host.remove(&hash).await;
            swarm.stop().await;
        }
    }

    fn stats(&self, root: &str) -> ShareStats {
        match lock(&self.running).get(root) {
            Some((_, swarm)) => {
                let status = swarm.status_now();
                ShareStats {
                    peers: status.peers.len(),
                    uploaded: status.uploaded,
                    state: "serving".into(),
                }
            }
            None => ShareStats {
                peers: 0,
                uploaded: 0,
                state: "not served".into(),
            },
        }
    }

    async fn shutdown(&self) {
        let hosts: Vec<Host> = self.hosts.lock().await.drain().map(|(_, h)| h).collect();
        lock(&self.running).clear();
        for host in hosts {
            host.shut_down().await;
        }
    }
}
