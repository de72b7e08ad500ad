//! The tracker client: one long-lived connection to the rendezvous server that announces
//! the swarms this peer has, looks up who else has one, and introduces this peer to an
//! announcer (which then claims a mailbox this peer allocated; the two run the sealed
//! exchange of `net::traversal` as for a code).
//!
//! A [`Tracker`] is a cheap, clonable handle over one connection and a background task.
//! The task re-announces every remembered swarm every third of the announce TTL (with
//! none, it sends a keep-alive instead, so that the server does not close the connection
//! as idle), and when
//! the connection drops it reconnects (backoff 1 s doubling to 30 s) and announces them
//! all again. Requests made while it is down fail at once with
//! [`RendezvousError::Reconnecting`]; every request is bounded by [`CONNECT_TIMEOUT`].
//! Dropping the last handle closes the connection.
//!
//! The server answers requests in order, so the task matches answers first in, first out;
//! [`Introduction`]s are unsolicited and come out of the receiver [`Tracker::connect`]
//! returns.
//!
//! ```no_run
//! # async fn demo() -> Result<(), p2p_core::rendezvous::RendezvousError> {
//! use p2p_core::rendezvous::{tracker::Tracker, Mailbox};
//!
//! let swarm = [7u8; 32];
//! // The seeder announces, and claims every mailbox it is introduced to.
//! let (seeder, mut introductions) = Tracker::connect("rendezvous.example.net:4000").await?;
//! seeder.announce(swarm).await?;
//! // A downloader looks the swarm up and introduces itself to one of its peers.
//! let (downloader, _) = Tracker::connect("rendezvous.example.net:4000").await?;
//! let peers = downloader.lookup(swarm).await?;
//! let (mut mailbox, nameplate) = Mailbox::allocate(downloader.server()).await?;
//! if let Some(&peer) = peers.first() {
//!     downloader.introduce(swarm, peer, nameplate).await?;
//! }
//! if let Some(introduction) = introductions.recv().await {
//!     let mut theirs = Mailbox::claim(seeder.server(), introduction.nameplate).await?;
//!     theirs.send(b"hello").await?;
//!     let _ = mailbox.recv().await?;
//! }
//! # Ok(()) }
//! ```

use std::collections::{BTreeSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::client::{unexpected, Connection, RendezvousError, CONNECT_TIMEOUT};
use super::protocol::{ClientMessage, ServerMessage};

pub use super::protocol::SwarmId;

/// The announce TTL the client assumes unless told otherwise ([`Tracker::with_refresh`]):
/// the server's default `Limits::announce_ttl`.
pub const DEFAULT_ANNOUNCE_TTL: Duration = Duration::from_secs(600);
/// Swarms one connection may announce (the server's default `Limits::max_announces`).
pub const MAX_ANNOUNCES: usize = 1024;
/// Introductions waiting in the receiver; more are dropped (the introducer times out and
/// tries another peer).
pub const INTRODUCTIONS_QUEUED: usize = 64;
/// What a client with nothing announced sends as a keep-alive: `Withdraw` of the
/// all-zero swarm id (a no-op for the server, and no answer).
pub const KEEP_ALIVE: SwarmId = [0; 32];
/// The first wait before reconnecting; it doubles up to [`BACKOFF_MAX`].
pub const BACKOFF_FIRST: Duration = Duration::from_secs(1);
/// The longest wait between reconnection attempts.
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// A peer that wants a swarm this connection announced waits on a mailbox: claim
/// `nameplate` to meet it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Introduction {
    /// The swarm it wants.
    pub swarm: SwarmId,
    /// The mailbox it allocated and waits on.
    pub nameplate: u32,
}

/// A handle on one tracker connection (clones share it).
#[derive(Debug, Clone)]
pub struct Tracker {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    requests: mpsc::Sender<Request>,
    server: String,
    /// The announce TTL the task assumes, in milliseconds.
    ttl_ms: Arc<AtomicU64>,
}

type Reply<T> = oneshot::Sender<Result<T, RendezvousError>>;

#[derive(Debug)]
enum Request {
    Announce(SwarmId, Reply<()>),
    Withdraw(SwarmId, Reply<()>),
    Lookup(SwarmId, Reply<Vec<u64>>),
    Introduce {
        swarm: SwarmId,
        peer: u64,
        nameplate: u32,
        reply: Reply<bool>,
    },
}

impl Tracker {
    /// Connects to `server` (`host:port`); returns the handle and the receiver of the
    /// [`Introduction`]s addressed to this connection.
    pub async fn connect(
        server: &str,
    ) -> Result<(Tracker, mpsc::Receiver<Introduction>), RendezvousError> {
        let conn = Connection::open(server).await?;
        let (requests, requests_rx) = mpsc::channel(64);
        let (introductions, introductions_rx) = mpsc::channel(INTRODUCTIONS_QUEUED);
        let ttl_ms = Arc::new(AtomicU64::new(millis(DEFAULT_ANNOUNCE_TTL)));
        let task = Task {
            server: server.to_owned(),
            requests: requests_rx,
            introductions,
            ttl_ms: Arc::clone(&ttl_ms),
            remembered: BTreeSet::new(),
        };
        tokio::spawn(task.run(conn));
        let tracker = Tracker {
            inner: Arc::new(Inner {
                requests,
                server: server.to_owned(),
                ttl_ms,
            }),
        };
        Ok((tracker, introductions_rx))
    }

    /// Sets the announce TTL the client assumes (it re-announces every third of it):
    /// for a server whose `Limits::announce_ttl` is not the default, and for tests.
    pub fn with_refresh(self, ttl: Duration) -> Self {
        self.inner
            .ttl_ms
            .store(millis(ttl).max(3), Ordering::Relaxed);
        self
    }

    /// Announces that this peer has (part of) `swarm`, and waits for the server to
    /// confirm. The swarm is remembered (re-announced on every refresh and reconnection)
    /// until [`withdraw`](Self::withdraw) — even when this call fails because the
    /// connection is down.
    pub async fn announce(&self, swarm: SwarmId) -> Result<(), RendezvousError> {
        self.call(|reply| Request::Announce(swarm, reply)).await
    }

    /// Forgets `swarm` and tells the server (no answer to wait for).
    pub async fn withdraw(&self, swarm: SwarmId) -> Result<(), RendezvousError> {
        self.call(|reply| Request::Withdraw(swarm, reply)).await
    }

    /// Up to 50 random peers that announced `swarm` (never this connection); empty when
    /// there are none.
    pub async fn lookup(&self, swarm: SwarmId) -> Result<Vec<u64>, RendezvousError> {
        self.call(|reply| Request::Lookup(swarm, reply)).await
    }

    /// Asks `peer` (from [`lookup`](Self::lookup)) to claim the mailbox on `nameplate`
    /// (allocated by this peer, on its own connection). `Ok(false)`: not delivered — the
    /// peer is gone or no longer announces `swarm`, the mailbox is not waiting, the peer
    /// has too many introductions queued, or this connection introduces too fast.
    pub async fn introduce(
        &self,
        swarm: SwarmId,
        peer: u64,
        nameplate: u32,
    ) -> Result<bool, RendezvousError> {
        self.call(|reply| Request::Introduce {
            swarm,
            peer,
            nameplate,
            reply,
        })
        .await
    }

    /// The server as given to [`connect`](Self::connect).
    pub fn server(&self) -> &str {
        &self.inner.server
    }

    async fn call<T>(
        &self,
        request: impl FnOnce(Reply<T>) -> Request,
    ) -> Result<T, RendezvousError> {
        let (reply, answer) = oneshot::channel();
        let exchange = async {
            self.inner
                .requests
                .send(request(reply))
                .await
                .map_err(|_| RendezvousError::Closed)?;
            answer.await.map_err(|_| RendezvousError::Closed)?
        };
        tokio::time::timeout(CONNECT_TIMEOUT, exchange)
            .await
            .map_err(|_| RendezvousError::Timeout)?
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// An answer the task waits for, in request order.
enum Awaiting {
    /// `None` for the task's own refreshes.
    Announced(SwarmId, Option<Reply<()>>),
    Peers(SwarmId, Reply<Vec<u64>>),
    Introduced(u64, Reply<bool>),
}

impl Awaiting {
    fn fail(self, error: RendezvousError) {
        match self {
            Awaiting::Announced(_, Some(reply)) => {
                let _ = reply.send(Err(error));
            }
            Awaiting::Announced(_, None) => {}
            Awaiting::Peers(_, reply) => {
                let _ = reply.send(Err(error));
            }
            Awaiting::Introduced(_, reply) => {
                let _ = reply.send(Err(error));
            }
        }
    }
}

/// Why [`Task::serve`] returned.
enum Ended {
    /// Every handle is gone.
    Stop,
    /// The connection is lost, for this reason.
    Lost(String),
}

/// The background task behind the handles.
struct Task {
    server: String,
    requests: mpsc::Receiver<Request>,
    introductions: mpsc::Sender<Introduction>,
    ttl_ms: Arc<AtomicU64>,
    /// The swarms announced and not withdrawn.
    remembered: BTreeSet<SwarmId>,
}

impl Task {
    async fn run(mut self, mut conn: Connection) {
        loop {
            let mut why = match self.serve(&mut conn).await {
                Ended::Stop => return,
                Ended::Lost(why) => why,
            };
            tracing::debug!(server = %self.server, "tracker connection lost: {why}");
            let mut backoff = BACKOFF_FIRST;
            conn = loop {
                // Wait, then try again, answering requests meanwhile.
                let wake = Instant::now() + backoff;
                loop {
                    tokio::select! {
                        () = tokio::time::sleep_until(wake) => break,
                        request = self.requests.recv() => match request {
                            None => return,
                            Some(request) => self.reject(request, &why),
                        },
                    }
                }
                let server = self.server.clone();
                let open = async move { Connection::open(&server).await };
                tokio::pin!(open);
                let opened = loop {
                    tokio::select! {
                        opened = &mut open => break opened,
                        request = self.requests.recv() => match request {
                            None => return,
                            Some(request) => self.reject(request, &why),
                        },
                    }
                };
                match opened {
                    Ok(c) => break c,
                    Err(e) => {
                        why = e.to_string();
                        backoff = (backoff * 2).min(BACKOFF_MAX);
                    }
                }
            };
        }
    }

    /// Answers a request while the connection is down.
    fn reject(&mut self, request: Request, why: &str) {
        let server = self.server.clone();
        let down = move || RendezvousError::Reconnecting {
            server: server.clone(),
            why: why.to_owned(),
        };
        match request {
            Request::Announce(swarm, reply) => {
                let result = self.remember(swarm).and_then(|()| Err(down()));
                let _ = reply.send(result);
            }
            // The server dropped every entry with the connection: forgetting is enough.
            Request::Withdraw(swarm, reply) => {
                self.remembered.remove(&swarm);
                let _ = reply.send(Ok(()));
            }
            Request::Lookup(_, reply) => {
                let _ = reply.send(Err(down()));
            }
            Request::Introduce { reply, .. } => {
                let _ = reply.send(Err(down()));
            }
        }
    }

    fn remember(&mut self, swarm: SwarmId) -> Result<(), RendezvousError> {
        if !self.remembered.contains(&swarm) && self.remembered.len() >= MAX_ANNOUNCES {
            return Err(RendezvousError::Protocol(format!(
                "a tracker connection may announce at most {MAX_ANNOUNCES} swarms"
            )));
        }
        self.remembered.insert(swarm);
        Ok(())
    }

    fn refresh_every(&self) -> Duration {
        Duration::from_millis(self.ttl_ms.load(Ordering::Relaxed) / 3)
    }

    /// Announces everything remembered, then serves requests and answers until the
    /// connection is lost or every handle is gone.
    async fn serve(&mut self, conn: &mut Connection) -> Ended {
        let mut awaiting: VecDeque<Awaiting> = VecDeque::new();
        let lost = |awaiting: &mut VecDeque<Awaiting>, server: &str, why: String| {
            for pending in awaiting.drain(..) {
                pending.fail(RendezvousError::Reconnecting {
                    server: server.to_owned(),
                    why: why.clone(),
                });
            }
            Ended::Lost(why)
        };
        let mut last_refresh = Instant::now();
        if let Err(e) = self.announce_all(conn, &mut awaiting).await {
            return lost(&mut awaiting, &self.server, e.to_string());
        }
        loop {
            let refresh_at = last_refresh + self.refresh_every();
            tokio::select! {
                request = self.requests.recv() => {
                    let Some(request) = request else {
                        return Ended::Stop;
                    };
                    if let Err(e) = self.send(conn, request, &mut awaiting).await {
                        return lost(&mut awaiting, &self.server, e);
                    }
                }
                message = conn.read() => {
                    let message = match message {
                        Ok(message) => message,
                        Err(e) => {
                            let why = e.to_string();
                            // The server's reason is about the oldest request (the one
                            // it could not take); the others just lost the connection.
                            if matches!(e, RendezvousError::Refused(_)) {
                                if let Some(first) = awaiting.pop_front() {
                                    first.fail(e);
                                }
                            }
                            return lost(&mut awaiting, &self.server, why);
                        }
                    };
                    if let Err(e) = self.receive(message, &mut awaiting) {
                        return lost(&mut awaiting, &self.server, e.to_string());
                    }
                }
                () = tokio::time::sleep_until(refresh_at) => {
                    last_refresh = Instant::now();
                    if let Err(e) = self.refresh(conn, &mut awaiting).await {
                        return lost(&mut awaiting, &self.server, e.to_string());
                    }
                }
            }
        }
    }

    async fn announce_all(
        &self,
        conn: &mut Connection,
        awaiting: &mut VecDeque<Awaiting>,
    ) -> Result<(), RendezvousError> {
        for &swarm in &self.remembered {
            conn.write(&ClientMessage::Announce { swarm }).await?;
            awaiting.push_back(Awaiting::Announced(swarm, None));
        }
        Ok(())
    }

    /// What the task sends every third of the TTL: every remembered announce, or, with
    /// none, a keep-alive ([`KEEP_ALIVE`]) so that the server does not close the
    /// connection as idle.
    async fn refresh(
        &self,
        conn: &mut Connection,
        awaiting: &mut VecDeque<Awaiting>,
    ) -> Result<(), RendezvousError> {
        if self.remembered.is_empty() {
            conn.write(&ClientMessage::Withdraw { swarm: KEEP_ALIVE })
                .await
        } else {
            self.announce_all(conn, awaiting).await
        }
    }

    /// Writes one request; `Err` (the connection failed, and why) fails it too.
    async fn send(
        &mut self,
        conn: &mut Connection,
        request: Request,
        awaiting: &mut VecDeque<Awaiting>,
    ) -> Result<(), String> {
        let (message, pending) = match request {
            Request::Announce(swarm, reply) => {
                if let Err(e) = self.remember(swarm) {
                    let _ = reply.send(Err(e));
                    return Ok(());
                }
                (
                    ClientMessage::Announce { swarm },
                    Some(Awaiting::Announced(swarm, Some(reply))),
                )
            }
            Request::Withdraw(swarm, reply) => {
                self.remembered.remove(&swarm);
                let written = conn.write(&ClientMessage::Withdraw { swarm }).await;
                let why = written.as_ref().err().map(|e| e.to_string());
                // Withdrawn either way: a lost connection takes its entries with it.
                let _ = reply.send(Ok(()));
                return why.map_or(Ok(()), Err);
            }
            Request::Lookup(swarm, reply) => (
                ClientMessage::Lookup { swarm },
                Some(Awaiting::Peers(swarm, reply)),
            ),
            Request::Introduce {
                swarm,
                peer,
                nameplate,
                reply,
            } => (
                ClientMessage::Introduce {
                    swarm,
                    peer,
                    nameplate,
                },
                Some(Awaiting::Introduced(peer, reply)),
            ),
        };
        match conn.write(&message).await {
            Ok(()) => {
                awaiting.extend(pending);
                Ok(())
            }
            Err(e) => {
                let why = e.to_string();
                if let Some(pending) = pending {
                    pending.fail(e);
                }
                Err(why)
            }
        }
    }

    /// Hands one server message to whoever waits for it.
    fn receive(
        &mut self,
        message: ServerMessage,
        awaiting: &mut VecDeque<Awaiting>,
    ) -> Result<(), RendezvousError> {
        if let ServerMessage::Introduction { swarm, nameplate } = message {
            // Only for what this connection announces; a full receiver drops it (the
            // introducer tries another peer).
            if self.remembered.contains(&swarm) {
                let _ = self
                    .introductions
                    .try_send(Introduction { swarm, nameplate });
            }
            return Ok(());
        }
        let Some(pending) = awaiting.pop_front() else {
            return Err(unexpected("no answer", &message));
        };
        match (pending, message) {
            (Awaiting::Announced(wanted, reply), ServerMessage::Announced { swarm })
                if swarm == wanted =>
            {
                if let Some(reply) = reply {
                    let _ = reply.send(Ok(()));
                }
                Ok(())
            }
            (Awaiting::Peers(wanted, reply), ServerMessage::Peers { swarm, peers })
                if swarm == wanted =>
            {
                let _ = reply.send(Ok(peers));
                Ok(())
            }
            (
                Awaiting::Introduced(wanted, reply),
                ServerMessage::Introduced { peer, delivered },
            ) if peer == wanted => {
                let _ = reply.send(Ok(delivered));
                Ok(())
            }
            (pending, message) => {
                let wanted = match &pending {
                    Awaiting::Announced(..) => "Announced for that swarm",
                    Awaiting::Peers(..) => "Peers for that swarm",
                    Awaiting::Introduced(..) => "Introduced for that peer",
                };
                let error = unexpected(wanted, &message);
                pending.fail(RendezvousError::Protocol(error.to_string()));
                Err(error)
            }
        }
    }
}
