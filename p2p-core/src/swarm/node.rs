//! One share's swarm: the connected peers, what each has, what is asked of whom, and
//! the pieces on disk.
//!
//! Each peer connection is two tasks: a reader that handles the peer's messages (and
//! so never stops reading while our own writes wait — two peers uploading to each other
//! cannot deadlock on flow control) and a writer that sends our control messages first
//! and serves the peer's requests in order, through the upload limit. Decisions are
//! taken under one lock by the [`Picker`]; disk work runs on blocking threads.
//!
//! Anything a peer sends is checked: the first message must be `Hello` with our
//! version; a bitfield must have the exact length; piece numbers must exist; a request
//! must be for a piece we announced, and at most [`MAX_PEER_REQUESTS`] may wait; a piece
//! must have been asked of that peer, have the right length and hash. A violation ends
//! the connection with a `Goodbye` saying why; a bad piece also bars the device from
//! this swarm.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, watch, Notify};
use tokio_util::codec::{FramedRead, FramedWrite};
use tokio_util::sync::CancellationToken;

use super::content::{piece_hash, Hash, LocalShare, Manifest, PieceMap, MAX_MANIFEST_BYTES};
use super::picker::{PeerKey, Picker};
use super::status::{PeerStatus, SwarmEvent, SwarmState, SwarmStatus};
use super::store::Store;
use super::wire::{
    codec, max_frame, Bitfield, PeerMessage, MAX_CONTROL_FRAME, MAX_PEER_REQUESTS, SWARM_VERSION,
};
use super::{SwarmConfig, SwarmError};
use crate::net::DeviceId;
use crate::text::Printable;
use crate::throttle::TokenBucket;

/// Events kept for a slow reader before new ones are dropped.
const EVENT_QUEUE: usize = 256;
/// How often timeouts are checked, the status published and the resume state saved.
const TICK: Duration = Duration::from_millis(250);
/// Longest `Goodbye` reason sent or shown.
const MAX_REASON: usize = 256;

/// Who a connection is with.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    /// The peer's proven device id.
    pub device: DeviceId,
    /// Its address.
    pub addr: Option<SocketAddr>,
    /// `lan`, `direct` or `relay`.
    pub path: String,
    /// It connected to us.
    pub incoming: bool,
}

/// The manifest and where its pieces lie, once known.
struct Known {
    manifest: Manifest,
    map: PieceMap,
    encoded: Bytes,
}

struct PeerEntry {
    info: PeerInfo,
    tx: mpsc::UnboundedSender<Ctl>,
    /// Our `Bitfield` is queued to it: from then on it is told each new piece (`Have`);
    /// before, a `Have` would break the protocol (the bitfield will carry the piece).
    bitfield_sent: bool,
    /// Ends this connection (replaced by a newer one with the same device).
    ended: CancellationToken,
    has: u32,
    downloaded: u64,
    uploaded: u64,
}

enum Ctl {
    Send(PeerMessage),
    Close(String),
}

struct Inner {
    known: Option<Arc<Known>>,
    have: Bitfield,
    picker: Option<Picker>,
    peers: HashMap<PeerKey, PeerEntry>,
    bad: HashSet<DeviceId>,
    next_key: PeerKey,
    state: SwarmState,
    downloaded: u64,
    uploaded: u64,
    discarded: u64,
    /// A manifest request is out (to this peer).
    fetching: Option<PeerKey>,
    /// When the swarm last had no peer (for the no-peer timeout).
    alone_since: Option<Instant>,
    /// Verified bytes received per device, this run (peers that left included).
    from: HashMap<DeviceId, u64>,
}

struct Shared {
    root: Hash,
    local: DeviceId,
    config: SwarmConfig,
    inner: Mutex<Inner>,
    store: Arc<Mutex<Option<Store>>>,
    /// Where a download writes (set while the manifest is unknown).
    out_dir: Option<std::path::PathBuf>,
    status: watch::Sender<SwarmStatus>,
    manifest_ready: watch::Sender<bool>,
    events: mpsc::Sender<SwarmEvent>,
    events_rx: Mutex<Option<mpsc::Receiver<SwarmEvent>>>,
    upload: Option<Arc<Mutex<TokenBucket>>>,
    download: Option<Arc<Mutex<TokenBucket>>>,
    stop: CancellationToken,
    done: watch::Sender<Option<Result<(), SwarmError>>>,
}

/// What a swarm starts from.
struct Parts {
    known: Option<Arc<Known>>,
    have: Bitfield,
    store: Option<Store>,
    out_dir: Option<std::path::PathBuf>,
    upload: Option<Arc<Mutex<TokenBucket>>>,
}

/// A running swarm for one share (see the module documentation). Cloning shares it.
#[derive(Clone)]
pub struct Swarm {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Swarm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Swarm")
            .field("root", &self.shared.root)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn bucket(
    rate: Option<u64>,
    shared: Option<Arc<Mutex<TokenBucket>>>,
) -> Option<Arc<Mutex<TokenBucket>>> {
    shared.or_else(|| rate.map(|r| Arc::new(Mutex::new(TokenBucket::new(r, Instant::now())))))
}

impl Swarm {
    fn start(root: Hash, local: DeviceId, config: SwarmConfig, parts: Parts) -> Swarm {
        let Parts {
            known,
            have,
            store,
            out_dir,
            upload,
        } = parts;
        let complete = known.is_some() && have.is_full();
        let picker = match (&known, complete) {
            (Some(k), false) => Some(Picker::new(
                have.clone(),
                k.manifest.chunk_size,
                config.request_timeout,
            )),
            _ => None,
        };
        let (events, events_rx) = mpsc::channel(EVENT_QUEUE);
        let state = if complete {
            SwarmState::Seeding
        } else if known.is_some() {
            SwarmState::Downloading
        } else {
            SwarmState::Starting
        };
        let shared = Arc::new(Shared {
            root,
            local,
            upload: bucket(config.max_upload, upload),
            download: bucket(config.max_download, None),
            inner: Mutex::new(Inner {
                known: known.clone(),
                have,
                picker,
                peers: HashMap::new(),
                bad: HashSet::new(),
                next_key: 1,
                state,
                downloaded: 0,
                uploaded: 0,
                discarded: 0,
                fetching: None,
                alone_since: Some(Instant::now()),
                from: HashMap::new(),
            }),
            config,
            store: Arc::new(Mutex::new(store)),
            out_dir,
            status: watch::Sender::new(SwarmStatus::new(root)),
            manifest_ready: watch::Sender::new(known.is_some()),
            events,
            events_rx: Mutex::new(Some(events_rx)),
            stop: CancellationToken::new(),
            done: watch::Sender::new(None),
        });
        let swarm = Swarm { shared };
        swarm.publish();
        if complete {
            swarm.shared.done.send_replace(Some(Ok(())));
        }
        tokio::spawn(ticker(swarm.shared.clone()));
        swarm
    }

    /// Serves a share from the files that were shared. `upload` is a limit shared with
    /// other shares (else `config.max_upload` applies to this one).
    pub fn seed(
        share: &LocalShare,
        local: DeviceId,
        config: SwarmConfig,
        upload: Option<Arc<Mutex<TokenBucket>>>,
    ) -> Result<Swarm, SwarmError> {
        let map = share.manifest.validate()?;
        let known = Arc::new(Known {
            encoded: Bytes::from(share.manifest.encode()),
            manifest: share.manifest.clone(),
            map,
        });
        let have = Bitfield::full(known.map.count());
        Ok(Self::start(
            share.root,
            local,
            config,
            Parts {
                known: Some(known),
                have,
                store: Some(Store::seed(share)),
                out_dir: None,
                upload,
            },
        ))
    }

    /// Downloads share `root` into `out_dir`: with its manifest (from a `.p2p` file), or
    /// without (a ticket: fetched from the first peer that has it). Pieces an earlier
    /// attempt left there are kept (after hashing them again).
    pub async fn download(
        root: Hash,
        manifest: Option<Manifest>,
        out_dir: &Path,
        local: DeviceId,
        config: SwarmConfig,
        upload: Option<Arc<Mutex<TokenBucket>>>,
    ) -> Result<Swarm, SwarmError> {
        let Some(manifest) = manifest else {
            crate::fs::output::check_writable(out_dir)
                .map_err(|e| SwarmError::Output(e.to_string()))?;
            return Ok(Self::start(
                root,
                local,
                config,
                Parts {
                    known: None,
                    have: Bitfield::new(0),
                    store: None,
                    out_dir: Some(out_dir.to_path_buf()),
                    upload,
                },
            ));
        };
        let (known, store, have, notes) =
            open_download(root, manifest, out_dir.to_path_buf()).await?;
        let swarm = Self::start(
            root,
            local,
            config,
            Parts {
                known: Some(known.clone()),
                have: have.clone(),
                store: Some(store),
                out_dir: Some(out_dir.to_path_buf()),
                upload,
            },
        );
        swarm.manifest_event(&known, &have, notes);
        if have.is_full() {
            swarm.finish().await;
        }
        Ok(swarm)
    }

    fn manifest_event(&self, known: &Known, have: &Bitfield, notes: Vec<String>) {
        for note in notes {
            self.event(SwarmEvent::Note(note));
        }
        self.event(SwarmEvent::Manifest {
            files: known
                .manifest
                .entries
                .iter()
                .filter(|e| matches!(e.kind, crate::wire::EntryKind::File { .. }))
                .count(),
            bytes: known.manifest.total_bytes(),
            resumed: have.count(),
        });
    }

    /// The share's root hash.
    pub fn root(&self) -> Hash {
        self.shared.root
    }

    /// The latest status; changes at least every 250 ms while something happens.
    pub fn status(&self) -> watch::Receiver<SwarmStatus> {
        self.shared.status.subscribe()
    }

    /// The status as it is now (not up to 250 ms old).
    pub fn status_now(&self) -> SwarmStatus {
        self.publish();
        self.shared.status.borrow().clone()
    }

    /// The events (once: later calls get `None`).
    pub fn events(&self) -> Option<mpsc::Receiver<SwarmEvent>> {
        lock(&self.shared.events_rx).take()
    }

    /// Every piece is here.
    pub fn is_complete(&self) -> bool {
        let inner = lock(&self.shared.inner);
        inner.known.is_some() && inner.have.is_full()
    }

    /// Whether it still wants more peers (a download short of `max_peers`).
    pub fn wants_peers(&self) -> bool {
        let inner = lock(&self.shared.inner);
        !(inner.known.is_some() && inner.have.is_full())
            && inner.peers.values().filter(|p| !p.info.incoming).count()
                < self.shared.config.max_peers
            && !self.shared.stop.is_cancelled()
    }

    /// Devices connected now, and devices barred for bad pieces.
    pub fn devices(&self) -> (Vec<DeviceId>, Vec<DeviceId>) {
        let inner = lock(&self.shared.inner);
        (
            inner.peers.values().map(|p| p.info.device).collect(),
            inner.bad.iter().copied().collect(),
        )
    }

    /// Verified bytes received from each device this run (peers that left included),
    /// most first.
    pub fn received_from(&self) -> Vec<(DeviceId, u64)> {
        let mut from: Vec<(DeviceId, u64)> = lock(&self.shared.inner)
            .from
            .iter()
            .map(|(d, b)| (*d, *b))
            .collect();
        from.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        from
    }

    /// Waits until the download is done (or it failed, or was stopped). A seed is done
    /// from the start.
    pub async fn wait(&self) -> Result<(), SwarmError> {
        let mut done = self.shared.done.subscribe();
        loop {
            if let Some(result) = done.borrow_and_update().clone() {
                return result;
            }
            if done.changed().await.is_err() {
                return Err(SwarmError::Stopped);
            }
        }
    }

    /// Stops: every connection closes (saying so), the resume state is saved.
    pub async fn stop(&self) {
        self.shared.stop.cancel();
        let peers: Vec<_> = {
            let inner = lock(&self.shared.inner);
            inner.peers.values().map(|p| p.tx.clone()).collect()
        };
        for tx in peers {
            let _ = tx.send(Ctl::Close("the peer stopped sharing".into()));
        }
        save_state(&self.shared).await;
        self.shared.done.send_if_modified(|d| {
            if d.is_none() {
                *d = Some(Err(SwarmError::Stopped));
                true
            } else {
                false
            }
        });
    }

    /// Fails the download with `error` (e.g. no peer could be found).
    pub fn fail(&self, error: SwarmError) {
        let message = Printable(&error.to_string()).to_string();
        lock(&self.shared.inner).state = SwarmState::Failed(message);
        self.publish();
        self.shared.done.send_if_modified(|d| {
            if d.is_none() {
                *d = Some(Err(error));
                true
            } else {
                false
            }
        });
    }

    /// How long the swarm has had no peer (`None`: it has one).
    pub fn alone_for(&self) -> Option<Duration> {
        lock(&self.shared.inner).alone_since.map(|t| t.elapsed())
    }

    /// Runs a connection with a peer until it ends. Refused (returns at once) when the
    /// device is barred, is this device, or the swarm is full; a second connection with
    /// the same device keeps the one the smaller device id opened.
    pub async fn run_peer<S>(&self, stream: S, info: PeerInfo) -> Result<(), SwarmError>
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let (tx, rx) = mpsc::unbounded_channel();
        let ended = self.shared.stop.child_token();
        let key = {
            let mut inner = lock(&self.shared.inner);
            if info.device == self.shared.local {
                return Err(SwarmError::NoPeers("connected to itself".into()));
            }
            if inner.bad.contains(&info.device) {
                return Err(SwarmError::Protocol("device barred for bad pieces".into()));
            }
            if inner.peers.len() >= self.shared.config.max_connections {
                return Err(SwarmError::NoPeers("too many peers".into()));
            }
            if let Some((&old, existing)) = inner
                .peers
                .iter()
                .find(|(_, p)| p.info.device == info.device)
            {
                // The same side dialled again: it thinks the old connection is dead (it
                // may know before we do), so the new one replaces it. Both sides dialled
                // at once: keep the one the smaller device id opened (both ends agree).
                let opener = |incoming: bool| {
                    if incoming {
                        info.device
                    } else {
                        self.shared.local
                    }
                };
                let (new_opener, old_opener) =
                    (opener(info.incoming), opener(existing.info.incoming));
                if new_opener != old_opener && new_opener > old_opener {
                    return Err(SwarmError::NoPeers(
                        "already connected to that device (the connection it opened is kept)"
                            .into(),
                    ));
                }
                let _ = existing.tx.send(Ctl::Close(
                    "a new connection from the same device replaces this one".into(),
                ));
                existing.ended.cancel();
                // Its requests go to the others now, not when its reader notices.
                inner.peers.remove(&old);
                if let Some(picker) = inner.picker.as_mut() {
                    picker.remove_peer(old);
                }
            }
            let key = inner.next_key;
            inner.next_key += 1;
            inner.alone_since = None;
            inner.peers.insert(
                key,
                PeerEntry {
                    info: info.clone(),
                    tx: tx.clone(),
                    bitfield_sent: false,
                    ended: ended.clone(),
                    has: 0,
                    downloaded: 0,
                    uploaded: 0,
                },
            );
            key
        };
        self.event(SwarmEvent::PeerConnected {
            device: info.device.to_string(),
            path: info.path.clone(),
            incoming: info.incoming,
        });
        let result = run_connection(self, key, stream, tx, rx, ended).await;
        let reason = match &result {
            Ok(reason) => reason.clone(),
            Err(e) => e.to_string(),
        };
        self.remove_peer(key, &reason);
        result.map(|_| ())
    }

    fn remove_peer(&self, key: PeerKey, reason: &str) {
        let removed = {
            let mut inner = lock(&self.shared.inner);
            if let Some(picker) = inner.picker.as_mut() {
                picker.remove_peer(key);
            }
            let was_fetching = inner.fetching == Some(key);
            if was_fetching {
                inner.fetching = None;
            }
            let removed = inner.peers.remove(&key);
            if inner.peers.is_empty() {
                inner.alone_since = Some(Instant::now());
            }
            (removed, was_fetching)
        };
        let (removed, was_fetching) = removed;
        if was_fetching {
            // Another peer that has the manifest is asked for it.
            self.shared.manifest_ready.send_modify(|_| {});
        }
        if let Some(entry) = removed {
            self.event(SwarmEvent::PeerGone {
                device: entry.info.device.to_string(),
                reason: Printable(&truncate(reason)).to_string(),
            });
        }
        // Its requests go to the others.
        self.fill_all();
        self.publish();
    }

    fn event(&self, event: SwarmEvent) {
        let _ = self.shared.events.try_send(event);
    }

    /// Sends every peer the requests its window has room for.
    fn fill_all(&self) {
        let mut inner = lock(&self.shared.inner);
        let keys: Vec<PeerKey> = inner.peers.keys().copied().collect();
        for key in keys {
            fill(&mut inner, key);
        }
    }

    fn publish(&self) {
        publish(&self.shared);
    }

    async fn finish(&self) {
        let (known, store) = {
            let inner = lock(&self.shared.inner);
            (inner.known.clone(), self.shared.store.clone())
        };
        let Some(known) = known else { return };
        let result = tokio::task::spawn_blocking(move || {
            lock(&store)
                .as_mut()
                .map_or(Ok(()), |s| s.finish(&known.manifest))
        })
        .await
        .unwrap_or_else(|e| Err(SwarmError::Io(format!("finishing failed: {e}"))));
        match result {
            Ok(()) => {
                {
                    let mut inner = lock(&self.shared.inner);
                    inner.state = SwarmState::Seeding;
                    inner.picker = None;
                }
                self.event(SwarmEvent::Finished);
                self.publish();
                self.shared.done.send_replace(Some(Ok(())));
            }
            Err(e) => self.fail(e),
        }
    }
}

fn truncate(reason: &str) -> String {
    let mut end = reason.len().min(MAX_REASON);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    reason[..end].to_owned()
}

async fn open_download(
    root: Hash,
    manifest: Manifest,
    out_dir: std::path::PathBuf,
) -> Result<(Arc<Known>, Store, Bitfield, Vec<String>), SwarmError> {
    tokio::task::spawn_blocking(move || {
        let map = manifest.validate()?;
        if manifest.root() != root {
            return Err(SwarmError::Manifest("it is not the share's".into()));
        }
        let (store, have, notes) = Store::download(&out_dir, &root, &manifest, &map)?;
        let known = Arc::new(Known {
            encoded: Bytes::from(manifest.encode()),
            manifest,
            map,
        });
        Ok((known, store, have, notes))
    })
    .await
    .unwrap_or_else(|e| Err(SwarmError::Io(format!("opening the output failed: {e}"))))
}

/// Sends `key` the requests its window has room for.
fn fill(inner: &mut Inner, key: PeerKey) {
    let Some(picker) = inner.picker.as_mut() else {
        return;
    };
    let pieces = picker.next_requests(key, Instant::now());
    if let Some(peer) = inner.peers.get(&key) {
        for piece in pieces {
            let _ = peer.tx.send(Ctl::Send(PeerMessage::Request { piece }));
        }
    }
}

fn publish(shared: &Shared) {
    let inner = lock(&shared.inner);
    let picker = inner.picker.as_ref();
    let (name, pieces, total, have_bytes) = match &inner.known {
        Some(k) => {
            let have_bytes = if inner.have.is_full() {
                k.manifest.total_bytes()
            } else {
                inner
                    .have
                    .iter()
                    .filter_map(|p| k.map.piece_len(p))
                    .map(|l| l as u64)
                    .sum()
            };
            (
                Printable(&k.manifest.name).to_string(),
                k.map.count(),
                k.manifest.total_bytes(),
                have_bytes,
            )
        }
        None => (shared.root.short(), 0, 0, 0),
    };
    let mut peers: Vec<PeerStatus> = inner
        .peers
        .iter()
        .map(|(&key, p)| PeerStatus {
            device: p.info.device.to_string(),
            addr: p.info.addr,
            path: p.info.path.clone(),
            incoming: p.info.incoming,
            has: p.has,
            downloaded: p.downloaded,
            uploaded: p.uploaded,
            rate: picker.map_or(0.0, |pk| pk.rate(key)),
            in_flight: picker.map_or(0, |pk| pk.in_flight(key)),
        })
        .collect();
    peers.sort_by(|a, b| a.device.cmp(&b.device));
    let status = SwarmStatus {
        root: shared.root,
        name,
        state: inner.state.clone(),
        pieces,
        total_bytes: total,
        have: inner.have.to_bytes().to_vec(),
        have_count: inner.have.count(),
        have_bytes,
        downloaded: inner.downloaded,
        uploaded: inner.uploaded,
        discarded: inner.discarded,
        peers,
    };
    drop(inner);
    shared.status.send_if_modified(|s| {
        if *s != status {
            *s = status;
            true
        } else {
            false
        }
    });
}

async fn save_state(shared: &Arc<Shared>) {
    let store = shared.store.clone();
    let job = tokio::task::spawn_blocking(move || lock(&store).as_mut().and_then(Store::save_job))
        .await
        .ok()
        .flatten();
    if let Some(job) = job {
        let _ = tokio::task::spawn_blocking(move || job.run()).await;
    }
}

/// Timeouts, status, resume state — until the swarm stops.
async fn ticker(shared: Arc<Shared>) {
    let mut interval = tokio::time::interval(TICK);
    let mut ticks = 0u32;
    loop {
        tokio::select! {
            _ = shared.stop.cancelled() => return,
            _ = interval.tick() => {}
        }
        ticks = ticks.wrapping_add(1);
        {
            let mut inner = lock(&shared.inner);
            let expired = inner
                .picker
                .as_mut()
                .map(|p| p.expire(Instant::now()))
                .unwrap_or_default();
            for (key, piece) in &expired {
                if let Some(peer) = inner.peers.get(key) {
                    let _ = peer
                        .tx
                        .send(Ctl::Send(PeerMessage::Cancel { piece: *piece }));
                }
            }
            if !expired.is_empty() {
                let keys: Vec<PeerKey> = inner.peers.keys().copied().collect();
                for key in keys {
                    fill(&mut inner, key);
                }
            }
        }
        publish(&shared);
        if ticks.is_multiple_of(4) {
            save_state(&shared).await;
        }
    }
}

/// The serve queue a reader fills and the writer drains.
#[derive(Default)]
struct ServeQueue {
    pieces: Mutex<VecDeque<u32>>,
    ready: Notify,
}

/// Runs one connection: returns the reason it ended normally.
async fn run_connection<S>(
    swarm: &Swarm,
    key: PeerKey,
    stream: S,
    tx: mpsc::UnboundedSender<Ctl>,
    rx: mpsc::UnboundedReceiver<Ctl>,
    ended: CancellationToken,
) -> Result<String, SwarmError>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (read, write) = tokio::io::split(stream);
    let queue = Arc::new(ServeQueue::default());
    let writer = tokio::spawn(write_loop(
        swarm.shared.clone(),
        key,
        FramedWrite::new(write, codec(usize::MAX >> 1)),
        rx,
        queue.clone(),
    ));
    let have_manifest = lock(&swarm.shared.inner).known.is_some();
    let _ = tx.send(Ctl::Send(PeerMessage::Hello {
        version: SWARM_VERSION,
        manifest: have_manifest,
    }));
    let mut reader = Reader {
        swarm,
        key,
        tx: tx.clone(),
        frames: FramedRead::new(read, codec(MAX_CONTROL_FRAME)),
        queue,
        peer_manifest: false,
        sent_bitfield: false,
        got_bitfield: false,
        asked_manifest: false,
        sent_manifest: false,
    };
    let result = tokio::select! {
        r = reader.run() => r,
        _ = ended.cancelled() => Ok("stopped, or replaced by a new connection".into()),
    };
    match &result {
        Err(e) => {
            let _ = tx.send(Ctl::Close(truncate(&e.to_string())));
        }
        Ok(reason) => {
            let _ = tx.send(Ctl::Close(reason.clone()));
        }
    }
    drop(tx);
    // The writer says goodbye and ends; bounded, in case the peer stopped reading.
    let _ = tokio::time::timeout(Duration::from_secs(2), writer).await;
    result
}

struct Reader<'a, R> {
    swarm: &'a Swarm,
    key: PeerKey,
    tx: mpsc::UnboundedSender<Ctl>,
    frames: FramedRead<R, tokio_util::codec::LengthDelimitedCodec>,
    queue: Arc<ServeQueue>,
    peer_manifest: bool,
    sent_bitfield: bool,
    got_bitfield: bool,
    asked_manifest: bool,
    sent_manifest: bool,
}

fn violation(msg: impl Into<String>) -> SwarmError {
    SwarmError::Protocol(msg.into())
}

impl<R: AsyncRead + Unpin> Reader<'_, R> {
    fn shared(&self) -> &Shared {
        &self.swarm.shared
    }

    fn send(&self, message: PeerMessage) {
        let _ = self.tx.send(Ctl::Send(message));
    }

    fn known(&self) -> Option<Arc<Known>> {
        lock(&self.shared().inner).known.clone()
    }

    async fn next(&mut self) -> Result<Option<PeerMessage>, SwarmError> {
        match self.frames.next().await {
            None => Ok(None),
            Some(Ok(frame)) => PeerMessage::decode(&frame).map(Some),
            Some(Err(e)) => Err(if e.kind() == std::io::ErrorKind::InvalidData {
                violation(format!("a frame longer than allowed ({e})"))
            } else {
                SwarmError::NoPeers(format!("connection lost: {e}"))
            }),
        }
    }

    /// Our bitfield, once we have the manifest and the peer does too.
    fn send_bitfield(&mut self) {
        if self.sent_bitfield {
            return;
        }
        // Snapshot, queue and mark under one lock: a piece verified meanwhile is either
        // in the bitfield or announced by a `Have` queued after it.
        let shared = self.swarm.shared.clone();
        let mut inner = lock(&shared.inner);
        if inner.known.is_none() {
            return;
        }
        let bits = inner.have.to_bytes();
        let _ = self.tx.send(Ctl::Send(PeerMessage::Bitfield { bits }));
        if let Some(peer) = inner.peers.get_mut(&self.key) {
            peer.bitfield_sent = true;
        }
        drop(inner);
        self.sent_bitfield = true;
    }

    fn set_frame_limit(&mut self, known: &Known) {
        self.frames
            .decoder_mut()
            .set_max_frame_length(max_frame(known.manifest.chunk_size, known.map.count()));
    }

    async fn run(&mut self) -> Result<String, SwarmError> {
        // Hello first.
        match self.next().await? {
            Some(PeerMessage::Hello { version, manifest }) => {
                if version != SWARM_VERSION {
                    return Err(violation(format!(
                        "swarm protocol version {version}, this side speaks {SWARM_VERSION}"
                    )));
                }
                self.peer_manifest = manifest;
            }
            Some(other) => return Err(violation(format!("{} before Hello", other.kind()))),
            None => return Ok("the peer closed the connection".into()),
        }
        if let Some(known) = self.known() {
            self.set_frame_limit(&known);
            if self.peer_manifest {
                self.send_bitfield();
            }
        } else if self.peer_manifest {
            self.ask_manifest();
        }
        let mut ready = self.shared().manifest_ready.subscribe();
        loop {
            let message = tokio::select! {
                m = self.next() => m?,
                changed = ready.changed(), if !*ready.borrow() => {
                    if changed.is_ok() && *ready.borrow() {
                        // The manifest came from another peer.
                        if let Some(known) = self.known() {
                            self.set_frame_limit(&known);
                            self.send_bitfield();
                        }
                    } else if changed.is_ok() && self.peer_manifest && !self.asked_manifest {
                        // The peer asked for it left without answering: ask this one.
                        self.ask_manifest();
                    }
                    continue;
                }
            };
            let Some(message) = message else {
                return Ok("the peer closed the connection".into());
            };
            self.handle(message).await?;
        }
    }

    fn ask_manifest(&mut self) {
        let mut inner = lock(&self.shared().inner);
        if inner.known.is_some() || inner.fetching.is_some() {
            return;
        }
        inner.fetching = Some(self.key);
        drop(inner);
        self.asked_manifest = true;
        self.frames
            .decoder_mut()
            .set_max_frame_length(MAX_MANIFEST_BYTES + 64);
        self.send(PeerMessage::GetManifest);
    }

    async fn handle(&mut self, message: PeerMessage) -> Result<(), SwarmError> {
        let kind = message.kind();
        match message {
            PeerMessage::Hello { .. } => Err(violation("a second Hello")),
            PeerMessage::Goodbye { reason } => Err(SwarmError::NoPeers(format!(
                "the peer closed the connection: {}",
                Printable(&truncate(&reason))
            ))),
            PeerMessage::GetManifest => {
                let known = self
                    .known()
                    .ok_or_else(|| violation("GetManifest, but we said we have no manifest"))?;
                if self.sent_manifest || self.peer_manifest {
                    return Err(violation("GetManifest twice, or from a peer that has it"));
                }
                self.sent_manifest = true;
                self.peer_manifest = true;
                self.send(PeerMessage::Manifest {
                    bytes: known.encoded.clone(),
                });
                self.send_bitfield();
                Ok(())
            }
            PeerMessage::Manifest { bytes } => {
                if !self.asked_manifest {
                    return Err(violation("a Manifest nobody asked for"));
                }
                self.asked_manifest = false;
                self.received_manifest(&bytes).await
            }
            _ if self.known().is_none() => Err(violation(format!(
                "{kind} before this side has the manifest"
            ))),
            PeerMessage::Bitfield { bits } => {
                if self.got_bitfield {
                    return Err(violation("a second Bitfield"));
                }
                self.got_bitfield = true;
                self.peer_manifest = true;
                let count = lock(&self.shared().inner).have.len();
                let field = Bitfield::from_peer(&bits, count)?;
                self.send_bitfield();
                let mut inner = lock(&self.shared().inner);
                if let Some(peer) = inner.peers.get_mut(&self.key) {
                    peer.has = field.count();
                }
                if let Some(picker) = inner.picker.as_mut() {
                    picker.add_peer(self.key, field);
                }
                fill(&mut inner, self.key);
                Ok(())
            }
            _ if !self.got_bitfield => Err(violation(format!("{kind} before Bitfield"))),
            PeerMessage::Have { piece } => {
                let mut inner = lock(&self.shared().inner);
                if piece >= inner.have.len() {
                    return Err(violation(format!("Have for piece {piece}, past the end")));
                }
                let len = inner.have.len();
                if let Some(peer) = inner.peers.get_mut(&self.key) {
                    peer.has = peer.has.saturating_add(1).min(len);
                }
                if let Some(picker) = inner.picker.as_mut() {
                    picker.peer_has(self.key, piece);
                }
                fill(&mut inner, self.key);
                Ok(())
            }
            PeerMessage::Request { piece } => {
                {
                    let inner = lock(&self.shared().inner);
                    if piece >= inner.have.len() {
                        return Err(violation(format!(
                            "Request for piece {piece}, past the end ({} pieces)",
                            inner.have.len()
                        )));
                    }
                    if !inner.have.has(piece) {
                        return Err(violation(format!(
                            "Request for piece {piece}, which this side never offered"
                        )));
                    }
                }
                let mut pieces = lock(&self.queue.pieces);
                if pieces.len() >= MAX_PEER_REQUESTS {
                    return Err(violation(format!(
                        "more than {MAX_PEER_REQUESTS} requests waiting (a flood)"
                    )));
                }
                pieces.push_back(piece);
                drop(pieces);
                self.queue.ready.notify_one();
                Ok(())
            }
            PeerMessage::Cancel { piece } => {
                lock(&self.queue.pieces).retain(|&p| p != piece);
                Ok(())
            }
            PeerMessage::Reject { piece } => {
                let mut inner = lock(&self.shared().inner);
                if let Some(picker) = inner.picker.as_mut() {
                    picker.failed(self.key, piece);
                }
                fill(&mut inner, self.key);
                Ok(())
            }
            PeerMessage::Piece { piece, data } => self.received_piece(piece, data).await,
        }
    }

    async fn received_manifest(&mut self, bytes: &[u8]) -> Result<(), SwarmError> {
        let root = self.shared().root;
        let (manifest, _) = Manifest::decode(bytes, &root).map_err(|e| violation(e.to_string()))?;
        let out_dir = self
            .shared()
            .out_dir
            .clone()
            .ok_or_else(|| violation("a manifest for a share this side serves"))?;
        let (known, store, have, notes) = open_download(root, manifest, out_dir)
            .await
            .inspect_err(|e| {
                self.swarm.fail(e.clone());
            })?;
        {
            let mut inner = lock(&self.shared().inner);
            inner.fetching = None;
            if inner.known.is_some() {
                return Ok(());
            }
            inner.picker = Some(Picker::new(
                have.clone(),
                known.manifest.chunk_size,
                self.shared().config.request_timeout,
            ));
            inner.have = have.clone();
            inner.known = Some(known.clone());
            inner.state = SwarmState::Downloading;
            *lock(&self.shared().store) = Some(store);
        }
        self.swarm.manifest_event(&known, &have, notes);
        self.set_frame_limit(&known);
        self.shared().manifest_ready.send_replace(true);
        self.send_bitfield();
        if have.is_full() {
            self.swarm.finish().await;
        }
        Ok(())
    }

    async fn received_piece(&mut self, piece: u32, data: Bytes) -> Result<(), SwarmError> {
        let known = self
            .known()
            .ok_or_else(|| violation("Piece before the manifest"))?;
        {
            let inner = lock(&self.shared().inner);
            let asked = inner
                .picker
                .as_ref()
                .is_some_and(|p| p.asked(self.key, piece));
            if !asked {
                // A piece that crossed our Cancel, or one we never asked for: the first is
                // normal in endgame, the second a peer's mistake we can afford to ignore.
                if piece >= inner.have.len() {
                    return Err(violation(format!("Piece {piece}, past the end")));
                }
                return Ok(());
            }
        }
        let expected = known.map.piece_len(piece).unwrap_or(0);
        let good =
            data.len() == expected && piece_hash(&data) == known.manifest.pieces[piece as usize];
        if !good {
            let device = {
                let mut inner = lock(&self.shared().inner);
                inner.discarded = inner.discarded.saturating_add(data.len() as u64);
                let device = inner.peers.get(&self.key).map(|p| p.info.device);
                if let Some(d) = device {
                    inner.bad.insert(d);
                }
                device
            };
            if let Some(device) = device {
                self.swarm.event(SwarmEvent::BadPeer {
                    device: device.to_string(),
                    piece,
                });
            }
            return Err(violation(format!(
                "piece {piece} failed its hash: the peer is dropped and not asked again"
            )));
        }
        if let Some(bucket) = &self.shared().download {
            let wait = lock(bucket).reserve(data.len(), Instant::now());
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
        }
        // Written before it counts: a Have goes out only for data on disk.
        let store = self.shared().store.clone();
        let map_known = known.clone();
        let len = data.len();
        let completed = tokio::task::spawn_blocking(move || {
            let mut store = lock(&store);
            let store = store
                .as_mut()
                .ok_or_else(|| SwarmError::Io("no store".into()))?;
            let file = store.write(&map_known.map, piece, &data)?;
            if let Some(file) = file {
                store.finalize(file)?;
                // Recorded at once: a file in its final place that the resume state does
                // not list would refuse the next attempt ("already exists") if this
                // process were killed now.
                if let Some(job) = store.save_job() {
                    job.run().map_err(|e| SwarmError::Output(e.to_string()))?;
                }
            }
            Ok::<_, SwarmError>(file)
        })
        .await
        .unwrap_or_else(|e| Err(SwarmError::Io(format!("writing failed: {e}"))));
        if let Err(e) = completed {
            self.swarm.fail(e.clone());
            return Err(e);
        }
        let complete = {
            let mut inner = lock(&self.shared().inner);
            let Some(picker) = inner.picker.as_mut() else {
                return Ok(());
            };
            let arrived = picker.arrived(self.key, piece, len, Instant::now());
            if arrived.new {
                inner.have.set(piece);
                inner.downloaded = inner.downloaded.saturating_add(len as u64);
                if let Some(peer) = inner.peers.get_mut(&self.key) {
                    peer.downloaded = peer.downloaded.saturating_add(len as u64);
                    let device = peer.info.device;
                    let from = inner.from.entry(device).or_default();
                    *from = from.saturating_add(len as u64);
                }
                for peer in inner.peers.values().filter(|p| p.bitfield_sent) {
                    let _ = peer.tx.send(Ctl::Send(PeerMessage::Have { piece }));
                }
            }
            for other in arrived.cancel {
                if let Some(peer) = inner.peers.get(&other) {
                    let _ = peer.tx.send(Ctl::Send(PeerMessage::Cancel { piece }));
                }
            }
            let complete = inner.have.is_full();
            if !complete {
                fill(&mut inner, self.key);
            }
            complete
        };
        if complete {
            self.swarm.finish().await;
        }
        Ok(())
    }
}

/// Sends control messages as they come, and serves queued requests in order.
async fn write_loop<W: AsyncWrite + Unpin>(
    shared: Arc<Shared>,
    key: PeerKey,
    mut frames: FramedWrite<W, tokio_util::codec::LengthDelimitedCodec>,
    mut rx: mpsc::UnboundedReceiver<Ctl>,
    queue: Arc<ServeQueue>,
) {
    loop {
        let next_piece = lock(&queue.pieces).pop_front();
        let message = if let Some(piece) = next_piece {
            // Control messages waiting go first.
            match rx.try_recv() {
                Ok(ctl) => {
                    lock(&queue.pieces).push_front(piece);
                    Some(ctl)
                }
                Err(mpsc::error::TryRecvError::Empty) => match serve(&shared, key, piece).await {
                    Ok(message) => Some(Ctl::Send(message)),
                    Err(e) => Some(Ctl::Close(e.to_string())),
                },
                Err(mpsc::error::TryRecvError::Disconnected) => None,
            }
        } else {
            tokio::select! {
                ctl = rx.recv() => ctl,
                _ = queue.ready.notified() => continue,
            }
        };
        match message {
            Some(Ctl::Send(message)) => {
                if frames.send(message.encode()).await.is_err() {
                    return;
                }
            }
            Some(Ctl::Close(reason)) => {
                let _ = frames
                    .send(
                        PeerMessage::Goodbye {
                            reason: truncate(&reason),
                        }
                        .encode(),
                    )
                    .await;
                let _ = SinkExt::<Bytes>::close(&mut frames).await;
                return;
            }
            None => {
                let _ = SinkExt::<Bytes>::close(&mut frames).await;
                return;
            }
        }
    }
}

/// Reads a piece to serve (checking it against its hash) through the upload limit.
async fn serve(shared: &Arc<Shared>, key: PeerKey, piece: u32) -> Result<PeerMessage, SwarmError> {
    let known = lock(&shared.inner)
        .known
        .clone()
        .ok_or_else(|| SwarmError::Io("no manifest".into()))?;
    let store = shared.store.clone();
    let k = known.clone();
    let data = tokio::task::spawn_blocking(move || {
        let data = lock(&store)
            .as_mut()
            .ok_or_else(|| SwarmError::Io("no store".into()))?
            .read(&k.map, piece)?;
        if piece_hash(&data) != k.manifest.pieces[piece as usize] {
            return Err(SwarmError::Io(format!(
                "piece {piece} on this disk no longer matches the share (was a shared file \
                 changed?): not served"
            )));
        }
        Ok(data)
    })
    .await
    .unwrap_or_else(|e| Err(SwarmError::Io(format!("reading failed: {e}"))))?;
    if let Some(bucket) = &shared.upload {
        let wait = lock(bucket).reserve(data.len(), Instant::now());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
    {
        let mut inner = lock(&shared.inner);
        inner.uploaded = inner.uploaded.saturating_add(data.len() as u64);
        if let Some(peer) = inner.peers.get_mut(&key) {
            peer.uploaded = peer.uploaded.saturating_add(data.len() as u64);
        }
    }
    Ok(PeerMessage::Piece {
        piece,
        data: Bytes::from(data),
    })
}
