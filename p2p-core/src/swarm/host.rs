//! A process's shares on one tracker: announcing them, answering introductions, and —
//! for downloads — finding and connecting peers.
//!
//! Connecting two peers of a swarm is the NAT-traversal connection of a direct transfer
//! with the code made from the share instead of a person:
//!
//! 1. the downloader asks the tracker who has the swarm id ([`Hash::swarm_id`]) and
//!    picks peers it has not tried;
//! 2. it opens a mailbox on the rendezvous server and *introduces* itself to the peer
//!    through the tracker, naming the mailbox;
//! 3. the peer claims the mailbox; both run `net::traversal`'s exchange with the code
//!    `NAMEPLATE-SECRET`, where the secret is derived from the root hash
//!    ([`Hash::swarm_secret`]) — SPAKE2 over it, sealed candidates, punching, the relay
//!    if punching fails;
//! 4. QUIC + TLS, admitted by the same code bound to the TLS exporter: a peer that
//!    does not know the root hash cannot connect, and the tracker (which knows only the
//!    swarm id) can neither read the candidates nor join.
//!
//! A share with trusted device ids connects to those devices only.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::content::{Hash, LocalShare, Manifest};
use super::node::{PeerInfo, Swarm};
use super::{SwarmConfig, SwarmError};
use crate::net::traversal::Rendezvous;
use crate::net::{Admission, Code, Connection, DeviceId, Identity, PeerStream, Security};
use crate::rendezvous::tracker::{Introduction, Tracker};
use crate::throttle::TokenBucket;

/// How long a peer that could not be reached is left alone before it is tried again.
const RETRY_AFTER: Duration = Duration::from_secs(20);

struct Entry {
    swarm: Swarm,
    trusted: Vec<DeviceId>,
}

struct Inner {
    tracker: Tracker,
    identity: Arc<Identity>,
    config: SwarmConfig,
    upload: Option<Arc<Mutex<TokenBucket>>>,
    swarms: Mutex<HashMap<[u8; 32], Entry>>,
}

/// Shares and downloads on one tracker (see the module documentation). Cloning shares it.
#[derive(Clone)]
pub struct Host {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Host")
            .field("tracker", &self.inner.tracker.server())
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn tracker_error(e: impl std::fmt::Display) -> SwarmError {
    SwarmError::Tracker(e.to_string())
}

impl Host {
    /// Connects to the tracker (the rendezvous server at `server`, `host:port`). The
    /// upload limit in `config` is shared by every share of this host.
    pub async fn connect(
        server: &str,
        identity: Arc<Identity>,
        config: SwarmConfig,
    ) -> Result<Host, SwarmError> {
        let (tracker, introductions) = Tracker::connect(server).await.map_err(tracker_error)?;
        let upload = config
            .max_upload
            .map(|rate| Arc::new(Mutex::new(TokenBucket::new(rate, Instant::now()))));
        let host = Host {
            inner: Arc::new(Inner {
                tracker,
                identity,
                config,
                upload,
                swarms: Mutex::new(HashMap::new()),
            }),
        };
        tokio::spawn(answer_introductions(
            Arc::downgrade(&host.inner),
            introductions,
        ));
        Ok(host)
    }

    /// The tracker, as given.
    pub fn tracker(&self) -> &str {
        self.inner.tracker.server()
    }

    /// This device.
    pub fn device_id(&self) -> DeviceId {
        self.inner.identity.device_id()
    }

    /// Serves `share` and announces it.
    pub async fn share(
        &self,
        share: &LocalShare,
        trusted: Vec<DeviceId>,
    ) -> Result<Swarm, SwarmError> {
        self.share_limited(share, trusted, None).await
    }

    /// Serves `share` with an upload limit of its own (else the host's) and announces it.
    pub async fn share_limited(
        &self,
        share: &LocalShare,
        trusted: Vec<DeviceId>,
        max_upload: Option<u64>,
    ) -> Result<Swarm, SwarmError> {
        let (config, upload) = match max_upload {
            Some(rate) => (
                SwarmConfig {
                    max_upload: Some(rate),
                    ..self.inner.config.clone()
                },
                None,
            ),
            None => (self.inner.config.clone(), self.inner.upload.clone()),
        };
        let swarm = Swarm::seed(share, self.device_id(), config, upload)?;
        self.register(&swarm, trusted).await?;
        Ok(swarm)
    }

    /// Starts downloading share `root` into `out_dir` (see [`Swarm::download`]); peers
    /// are found and connected in the background until it is complete. Wait with
    /// [`Swarm::wait`]; it keeps serving until [`Host::remove`].
    pub async fn get(
        &self,
        root: Hash,
        manifest: Option<Manifest>,
        trusted: Vec<DeviceId>,
        out_dir: &Path,
    ) -> Result<Swarm, SwarmError> {
        let swarm = Swarm::download(
            root,
            manifest,
            out_dir,
            self.device_id(),
            self.inner.config.clone(),
            self.inner.upload.clone(),
        )
        .await?;
        self.register(&swarm, trusted.clone()).await?;
        if !swarm.is_complete() {
            tokio::spawn(find_peers(self.inner.clone(), swarm.clone(), trusted));
        }
        Ok(swarm)
    }

    async fn register(&self, swarm: &Swarm, trusted: Vec<DeviceId>) -> Result<(), SwarmError> {
        let id = swarm.root().swarm_id();
        let old = lock(&self.inner.swarms).insert(
            id,
            Entry {
                swarm: swarm.clone(),
                trusted,
            },
        );
        if let Some(old) = old {
            old.swarm.stop().await;
        }
        self.inner.tracker.announce(id).await.map_err(tracker_error)
    }

    /// Stops serving share `root` (closing its connections) and withdraws it.
    pub async fn remove(&self, root: &Hash) {
        let id = root.swarm_id();
        let entry = lock(&self.inner.swarms).remove(&id);
        let _ = self.inner.tracker.withdraw(id).await;
        if let Some(entry) = entry {
            entry.swarm.stop().await;
        }
    }

    /// Stops everything.
    pub async fn shut_down(&self) {
        let all: Vec<Swarm> = lock(&self.inner.swarms)
            .drain()
            .map(|(_, e)| e.swarm)
            .collect();
        for swarm in all {
            let _ = self.inner.tracker.withdraw(swarm.root().swarm_id()).await;
            swarm.stop().await;
        }
    }
}

fn security(inner: &Inner, code: Code) -> Result<Security, SwarmError> {
    Security::new(inner.identity.clone(), Admission::default().with_code(code))
        .map_err(|e| SwarmError::NoPeers(e.to_string()))
}

fn code_for(root: &Hash, nameplate: u32) -> Result<Code, SwarmError> {
    let nameplate = u16::try_from(nameplate).map_err(|_| {
        SwarmError::Tracker(format!(
            "mailbox number {nameplate} is too large for a code"
        ))
    })?;
    Ok(Code::for_swarm(nameplate, &root.swarm_secret()))
}

fn peer_info(conn: &Connection<PeerStream>, incoming: bool) -> PeerInfo {
    let path = conn.path.as_ref().map(|p| *p.borrow());
    PeerInfo {
        device: conn.peer.device_id,
        addr: path.map(|p| p.addr).or(conn.remote_addr),
        path: path.map_or("direct", |p| p.kind.label()).to_owned(),
        incoming,
    }
}

/// Runs an established connection in `swarm` (if the device is welcome).
async fn run(
    swarm: Swarm,
    trusted: &[DeviceId],
    rendezvous: Rendezvous,
    conn: Connection<PeerStream>,
    incoming: bool,
) -> Result<(), SwarmError> {
    let info = peer_info(&conn, incoming);
    let result = if !trusted.is_empty() && !trusted.contains(&info.device) {
        Err(SwarmError::NoPeers(format!(
            "device {} is not one the share trusts",
            info.device
        )))
    } else {
        swarm.run_peer(conn.stream, info).await
    };
    rendezvous.shut_down().await;
    result
}

/// Answers the tracker's introductions: claims the mailbox, connects, serves.
async fn answer_introductions(
    host: std::sync::Weak<Inner>,
    mut introductions: mpsc::Receiver<Introduction>,
) {
    while let Some(intro) = introductions.recv().await {
        let Some(inner) = host.upgrade() else { return };
        let entry = lock(&inner.swarms)
            .get(&intro.swarm)
            .map(|e| (e.swarm.clone(), e.trusted.clone()));
        let Some((swarm, trusted)) = entry else {
            continue;
        };
        tokio::spawn(async move {
            if let Err(e) = accept(&inner, swarm, trusted, intro.nameplate).await {
                tracing::info!("introduced peer not connected: {e}");
            }
        });
    }
}

async fn accept(
    inner: &Inner,
    swarm: Swarm,
    trusted: Vec<DeviceId>,
    nameplate: u32,
) -> Result<(), SwarmError> {
    let code = code_for(&swarm.root(), nameplate)?;
    let security = security(inner, code.clone())?;
    let server = inner.tracker.server().to_owned();
    let connect = async {
        let rendezvous = Rendezvous::claim(&server, &code).await?;
        let conn = rendezvous.connect(&security).await?;
        Ok::<_, crate::Error>((rendezvous, conn))
    };
    let (rendezvous, conn) = tokio::time::timeout(inner.config.connect_timeout, connect)
        .await
        .map_err(|_| SwarmError::NoPeers("connecting to an introduced peer timed out".into()))?
        .map_err(|e| SwarmError::NoPeers(e.to_string()))?;
    run(swarm, &trusted, rendezvous, conn, true).await
}

/// Connects a download to peers until it is complete: asks the tracker, tries peers it
/// has not tried (or not lately), keeps up to `max_peers` of its own connections.
async fn find_peers(inner: Arc<Inner>, swarm: Swarm, trusted: Vec<DeviceId>) {
    let id = swarm.root().swarm_id();
    let tried: Arc<Mutex<HashMap<u64, Instant>>> = Arc::default();
    let connecting: Arc<Mutex<HashSet<u64>>> = Arc::default();
    let mut last_error = String::from("no peer has announced this share on the tracker");
    loop {
        if swarm.is_complete() || !lock(&inner.swarms).contains_key(&id) {
            return;
        }
        if swarm.wants_peers() {
            match inner.tracker.lookup(id).await {
                Ok(peers) => {
                    let now = Instant::now();
                    for token in peers {
                        let fresh = lock(&tried)
                            .get(&token)
                            .is_none_or(|t| now.duration_since(*t) >= RETRY_AFTER);
                        let busy = lock(&connecting).len();
                        if !fresh || busy >= inner.config.max_peers || !swarm.wants_peers() {
                            continue;
                        }
                        if !lock(&connecting).insert(token) {
                            continue;
                        }
                        lock(&tried).insert(token, now);
                        let (inner, swarm, trusted, connecting) = (
                            inner.clone(),
                            swarm.clone(),
                            trusted.clone(),
                            connecting.clone(),
                        );
                        tokio::spawn(async move {
                            if let Err(e) = dial(&inner, swarm, &trusted, token).await {
                                tracing::info!("swarm peer {token:x}: {e}");
                            }
                            lock(&connecting).remove(&token);
                        });
                    }
                }
                Err(e) => last_error = format!("the tracker did not answer: {e}"),
            }
        }
        if swarm
            .alone_for()
            .is_some_and(|t| t >= inner.config.no_peer_timeout)
            && lock(&connecting).is_empty()
        {
            swarm.fail(SwarmError::NoPeers(format!(
                "no peer could be reached in {} s ({last_error}); the download is kept: \
                 run the same command again to resume",
                inner.config.no_peer_timeout.as_secs()
            )));
            return;
        }
        tokio::time::sleep(inner.config.lookup_every).await;
    }
}

async fn dial(
    inner: &Inner,
    swarm: Swarm,
    trusted: &[DeviceId],
    peer: u64,
) -> Result<(), SwarmError> {
    let server = inner.tracker.server().to_owned();
    let id = swarm.root().swarm_id();
    let connect = async {
        let rendezvous = Rendezvous::allocate(&server)
            .await
            .map_err(|e| SwarmError::NoPeers(e.to_string()))?;
        let code = code_for(&swarm.root(), rendezvous.nameplate())?;
        let delivered = inner
            .tracker
            .introduce(id, peer, rendezvous.nameplate())
            .await
            .map_err(tracker_error)?;
        if !delivered {
            return Err(SwarmError::NoPeers(
                "the peer is gone from the tracker".into(),
            ));
        }
        rendezvous.set_code(code.clone()).await;
        let conn = rendezvous
            .connect(&security(inner, code)?)
            .await
            .map_err(|e| SwarmError::NoPeers(e.to_string()))?;
        Ok((rendezvous, conn))
    };
    let (rendezvous, conn) = tokio::time::timeout(inner.config.connect_timeout, connect)
        .await
        .map_err(|_| SwarmError::NoPeers("connecting timed out".into()))??;
    run(swarm, trusted, rendezvous, conn, false).await
}
