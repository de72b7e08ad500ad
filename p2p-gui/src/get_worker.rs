//! The swarm download worker: the one place where the "Get shared files" tab meets
//! p2p-core's swarm API ([`p2p_core::swarm::Host`]).
//!
//! [`run`] returns a stream of [`GetEvent`]s, turned into an abortable iced `Task` by
//! the application (as the session worker is): it connects to the tracker, starts the
//! download, and passes on every status snapshot (at most four a second, the swarm
//! coalesces them) and every event, then how it ended. [`GetHandle::cancel`] stops it
//! cleanly: the swarm saves its resume state and closes its connections, so getting the
//! same share into the same folder again resumes it.

use std::path::PathBuf;
use std::sync::Arc;

use iced::futures::stream::{self, Stream, StreamExt};
use p2p_core::net::Identity;
use p2p_core::swarm::{Host, Manifest, SwarmConfig, SwarmEvent, SwarmStatus, Ticket};
use tokio::sync::{mpsc, Notify};

/// What one download needs.
#[derive(Debug, Clone)]
pub struct GetPlan {
    /// The tracker (`host:port`).
    pub tracker: String,
    /// Root hash and trusted devices.
    pub ticket: Ticket,
    /// The manifest, from a `.p2p` file.
    pub manifest: Option<Manifest>,
    /// Where the files go.
    pub out_dir: PathBuf,
    /// This device's key.
    pub identity: Arc<Identity>,
    /// Peers, limits, timeouts.
    pub config: SwarmConfig,
}

/// What the worker reports.
#[derive(Debug, Clone)]
pub enum GetEvent {
    /// Connected to the tracker; the download is starting.
    Connected,
    /// A status snapshot.
    Status(Box<SwarmStatus>),
    /// An event worth a line.
    Swarm(SwarmEvent),
    /// It ended: `Ok` when every file is in place; the stream ends after this.
    Ended(GetEnd),
}

/// How a download ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GetEnd {
    /// Every file verified and in place.
    Done,
    /// Stopped on an error (the sentence).
    Failed(String),
    /// Stopped by the person.
    Cancelled,
}

/// Stops a running download.
#[derive(Debug, Clone, Default)]
pub struct GetHandle {
    cancel: Arc<Notify>,
}

impl GetHandle {
    /// Stops the download cleanly (resume state saved); the worker then reports
    /// [`GetEnd::Cancelled`].
    pub fn cancel(&self) {
        self.cancel.notify_one();
    }
}

/// Starts a download; the stream ends after [`GetEvent::Ended`].
pub fn run(plan: GetPlan, handle: GetHandle) -> impl Stream<Item = GetEvent> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let work = async move {
        let end = download(plan, &handle.cancel, &tx).await;
        let _ = tx.send(GetEvent::Ended(end));
    };
    let events = stream::poll_fn(move |cx| rx.poll_recv(cx));
    // As the session worker: the work runs while the stream is polled, and the stream
    // ends once the work is done and its events are drained.
    stream::select(events, stream::once(work).filter_map(|()| async { None }))
}

/// Connects, downloads and reports; stops the host (saving the resume state) however
/// it ends, a cancel included.
async fn download(plan: GetPlan, cancel: &Notify, tx: &mpsc::UnboundedSender<GetEvent>) -> GetEnd {
    let connect = Host::connect(&plan.tracker, plan.identity.clone(), plan.config.clone());
    let connected = tokio::select! {
        connected = connect => connected,
        () = cancel.notified() => return GetEnd::Cancelled,
    };
    let host = match connected {
        Ok(host) => host,
        Err(e) => {
            return GetEnd::Failed(format!(
                "cannot use the tracker {}: {e}",
                p2p_core::text::printable(&plan.tracker)
            ))
        }
    };
    let _ = tx.send(GetEvent::Connected);
    let mut stop = StopHost(Some(host.clone()));
    let get = host.get(
        plan.ticket.root,
        plan.manifest,
        plan.ticket.trusted.clone(),
        &plan.out_dir,
    );
    let started = tokio::select! {
        started = get => started,
        () = cancel.notified() => return GetEnd::Cancelled,
    };
    let swarm = match started {
        Ok(swarm) => swarm,
        Err(e) => return GetEnd::Failed(e.to_string()),
    };
    let mut events = swarm.events();
    let mut status = swarm.status();
    let _ = tx.send(GetEvent::Status(Box::new(
        status.borrow_and_update().clone(),
    )));
    let wait = swarm.wait();
    tokio::pin!(wait);
    let result = loop {
        tokio::select! {
            result = &mut wait => break result,
            () = cancel.notified() => {
                stop.0 = None;
                host.shut_down().await;
                return GetEnd::Cancelled;
            }
            Some(event) = async {
                match events.as_mut() {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                }
            } => {
                let _ = tx.send(GetEvent::Swarm(event));
            }
            changed = status.changed() => {
                if changed.is_err() {
                    // The swarm is gone: `wait` says how it ended.
                    break (&mut wait).await;
                }
                let _ = tx.send(GetEvent::Status(Box::new(status.borrow_and_update().clone())));
            }
        }
    };
    if let Some(rx) = events.as_mut() {
        while let Ok(event) = rx.try_recv() {
            let _ = tx.send(GetEvent::Swarm(event));
        }
    }
    let _ = tx.send(GetEvent::Status(Box::new(swarm.status().borrow().clone())));
    stop.0 = None;
    host.shut_down().await;
    match result {
        Ok(()) => GetEnd::Done,
        Err(p2p_core::swarm::SwarmError::Stopped) => GetEnd::Cancelled,
        Err(e) => GetEnd::Failed(e.to_string()),
    }
}

/// Shuts the host down when the download is abandoned half-way (its task aborted: the
/// window closed, or an early cancel): its swarm saves the resume state and says
/// goodbye to its peers.
struct StopHost(Option<Host>);

impl Drop for StopHost {
    fn drop(&mut self) {
        if let Some(host) = self.0.take() {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move { host.shut_down().await });
            }
        }
    }
}
