//! Records every transfer in the history, whatever its ending: completed, failed,
//! interrupted by Ctrl+C, or declined. Wraps the renderer so that the commands pass one sink; which
//! record a transfer gets is p2p-core's [`Tracker`], shared with the GUI.

use std::sync::Mutex;

use p2p_core::history::{History, Record, Status, Tracker};
use p2p_core::{Direction, EventSink, IncomingOffer, TransferEvent};

use crate::render::Renderer;

/// Renders events and writes history records.
pub struct Recorder {
    renderer: Renderer,
    history: Option<History>,
    tracker: Mutex<Tracker>,
    resume_hint: Mutex<Option<ResumeHint>>,
    receive_hint: Mutex<Option<ReceiveHint>>,
    /// The follow-up code of the last session let in by a code (its code is used up).
    resume_code: Mutex<Option<String>>,
    /// The path last reported (a rendezvous connection's), so that each is told once.
    path: Mutex<Option<p2p_core::net::ice::Path>>,
    /// Why the current transfer cannot be resumed, when it cannot (`commands::stream`).
    no_resume: Mutex<Option<String>>,
    /// The transfer that started and has not finished (it may be between attempts).
    unfinished: Mutex<Option<(uuid::Uuid, Direction)>>,
}

/// The command that resumes the current send: `command`, then the code (if any), then
/// `paths` (after the flags, so that a path cannot be taken for one).
#[derive(Debug, Clone)]
pub struct ResumeHint {
    pub command: String,
    pub paths: String,
}

/// How an interrupted receive continues: this receiver started again, and the sender's
/// `resume` pointed at it.
#[derive(Debug, Clone)]
pub struct ReceiveHint {
    /// The receiver's own command, to run again.
    pub again: String,
    /// The sender's arguments that reach this receiver (`--peer …` or `--role server …`).
    pub sender_reaches_us: String,
    /// The chunk size of the session, once one is established.
    pub chunk_size: Option<u32>,
}

impl Recorder {
    /// Renders through `renderer` (bars or plain lines, or JSON lines for `--json`).
    pub fn new(history: Option<History>, renderer: Renderer) -> Self {
        Self {
            renderer,
            history,
            tracker: Mutex::new(Tracker::default()),
            resume_hint: Mutex::new(None),
            receive_hint: Mutex::new(None),
            resume_code: Mutex::new(None),
            unfinished: Mutex::new(None),
            no_resume: Mutex::new(None),
            path: Mutex::new(None),
        }
    }

    pub fn renderer(&self) -> &Renderer {
        &self.renderer
    }

    /// The command that resumes the current send, printed if it is interrupted.
    pub fn set_resume_hint(&self, command: ResumeHint) {
        *self.resume_hint.lock().unwrap_or_else(|p| p.into_inner()) = Some(command);
    }

    /// The current transfer cannot be resumed (standard input sent, standard output
    /// received): an interruption says `why` instead of printing a resume command.
    pub fn set_no_resume(&self, why: &str) {
        *self.no_resume.lock().unwrap_or_else(|p| p.into_inner()) = Some(why.to_owned());
    }

    /// How the current receive continues if it is interrupted.
    /// After a session let in by a one-time code: the code both sides derived for
    /// continuing (see `PeerIdentity::resume_code`); the hints name it.
    pub fn set_resume_code(&self, code: &p2p_core::net::Code) {
        *self.resume_code.lock().unwrap_or_else(|p| p.into_inner()) = Some(code.to_string());
    }

    pub fn set_receive_hint(&self, hint: ReceiveHint) {
        *self.receive_hint.lock().unwrap_or_else(|p| p.into_inner()) = Some(hint);
    }

    /// The chunk size the current session agreed on: a resume must use it again, so
    /// the receive hint names it when it is not the default.
    pub fn set_receive_chunk_size(&self, chunk_size: u32) {
        if let Some(hint) = self
            .receive_hint
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_mut()
        {
            hint.chunk_size = Some(chunk_size);
        }
    }

    /// The peer of the current session, named in the record of an incoming transfer
    /// that is refused before it starts.
    pub fn set_peer(&self, peer: &str) {
        self.tracker().set_peer(peer);
    }

    /// The session just opened: says what it runs on (`connected to ADDR over QUIC`),
    /// and records name its address, the device id the connection proved and the
    /// transport.
    pub fn connected(&self, session: &p2p_core::P2PSession<p2p_core::net::PeerStream>) {
        let address = session.peer_addr().map(|a| a.to_string());
        let device_id = session.peer_identity().map(|p| p.device_id.to_string());
        let path = session.path();
        if let Some(transport) = session.transport() {
            let peer = address.as_deref().unwrap_or("the peer");
            let via = match &path {
                Some(path) => format!(" ({})", path.borrow().kind),
                None => String::new(),
            };
            self.renderer()
                .eprintln(&format!("connected to {peer} over {transport}{via}"));
            self.tracker().set_transport(transport);
        }
        self.tracker().set_peer_details(address, device_id);
        if let Some(path) = path {
            let now = *path.borrow();
            self.report_path(now, false);
        }
    }

    /// Tells a path once: on stderr when it `changed` (the first is in the
    /// `connected` line), as a `path` event in JSON mode, and in the record.
    fn report_path(&self, now: p2p_core::net::ice::Path, changed: bool) {
        let mut last = lock(&self.path);
        if *last == Some(now) {
            return;
        }
        *last = Some(now);
        drop(last);
        self.renderer().path(&now, changed);
        self.tracker().set_path(now.kind);
    }

    /// Runs `work` (the transfer), telling each change of the session's path (relay →
    /// direct) as it happens: on stderr or as a `path` event, and in the record.
    pub async fn following_path<T>(
        &self,
        path: Option<tokio::sync::watch::Receiver<p2p_core::net::ice::Path>>,
        work: impl std::future::Future<Output = T>,
    ) -> T {
        let Some(mut path) = path else {
            return work.await;
        };
        tokio::pin!(work);
        loop {
            tokio::select! {
                out = &mut work => return out,
                changed = path.changed() => {
                    if changed.is_err() {
                        return work.await;
                    }
                    let now = *path.borrow_and_update();
                    self.report_path(now, true);
                }
            }
        }
    }

    /// What this side sends: records keep the absolute paths.
    pub fn set_sent_paths(&self, paths: &[std::path::PathBuf]) {
        self.tracker().set_sent_paths(paths);
    }

    /// Where this side receives into: records keep it (absolute) and the paths written.
    pub fn set_output_dir(&self, dir: &std::path::Path) {
        self.tracker().set_output_dir(dir);
    }

    /// Records the transfer in progress, if any, as interrupted, and tells the user how
    /// to continue it — also when it is between two attempts (the connection was lost
    /// and this side was waiting to reconnect).
    pub fn interrupted(&self) {
        let record = self
            .tracker()
            .end(Status::Interrupted, "interrupted by the user");
        if let Some(record) = &record {
            self.write(record);
        }
        self.print_continue("interrupted; what arrived is kept");
    }

    /// The command failed for good: if a transfer it started can be resumed (the
    /// connection was lost, the peer stopped it — not corrupted data or a protocol
    /// violation), says how.
    pub fn failed(&self, error: &anyhow::Error) {
        let core = error
            .chain()
            .find_map(|c| c.downcast_ref::<p2p_core::Error>());
        if core.is_some_and(|e| e.discards_partial_data()) {
            return;
        }
        self.print_continue("stopped; what arrived is kept");
    }

    /// The peer stopped the transfer and this side waits for it: how to continue later
    /// if this side is stopped too.
    pub fn print_continue_later(&self) {
        self.print_continue("if you stop here too (Ctrl+C), nothing is lost");
    }

    /// Prints how the unfinished transfer, if any, continues, under `headline`.
    fn print_continue(&self, headline: &str) {
        let Some((transfer_id, direction)) = *lock(&self.unfinished) else {
            return;
        };
        if let Some(why) = lock(&self.no_resume).clone() {
            let first = headline.split(';').next().unwrap_or(headline);
            self.renderer.eprintln(&format!("{first}; {why}"));
            return;
        }
        let program = crate::program();
        let hint = lock(&self.resume_hint).clone();
        let receive_hint = lock(&self.receive_hint).clone();
        // The code that let the peer in is used up: both sides continue with the code
        // they derived from it (the same on both), given on both command lines.
        let code = lock(&self.resume_code)
            .clone()
            .map_or_else(String::new, |c| format!(" --code {c}"));
        let text = match (direction, hint, receive_hint) {
            (Direction::Send, Some(ResumeHint { command, paths }), _) => {
                let receiver = if code.is_empty() {
                    String::new()
                } else {
                    format!(
                        "\n(if the receiver stopped too, it continues with the same code: \
                         {program} receive --output <its folder>{code} --peer <this machine's address>)"
                    )
                };
                format!("{headline}. Resume with:\n  {command}{code} {paths}{receiver}")
            }
            (Direction::Receive, _, Some(mut hint)) => {
                hint.again.push_str(&code);
                let default = p2p_core::config::DEFAULT_CHUNK_SIZE;
                let chunk = match hint.chunk_size {
                    Some(c) if c != default => format!(" --chunk-size {c}"),
                    _ => String::new(),
                };
                format!(
                    "{headline}. To continue, start this receiver again:\n  {}\n\
                     and on the sending side (if it stopped too):\n  \
                     {program} resume {transfer_id} {}{chunk}{code}",
                    hint.again, hint.sender_reaches_us
                )
            }
            _ => format!(
                "{headline}. On the sending side, resume with:\n  \
                 {program} resume {transfer_id} --peer <this receiver's address>"
            ),
        };
        // On stderr, with what went wrong: stdout carries the transfer's own output.
        self.renderer.eprintln(&text);
    }

    /// Records an incoming offer that was declined.
    pub fn declined(&self, offer: &IncomingOffer, reason: &str) {
        let record = self.tracker().annotate(Record::declined(offer, reason));
        self.write(&record);
    }

    fn tracker(&self) -> std::sync::MutexGuard<'_, Tracker> {
        lock(&self.tracker)
    }

    fn write(&self, record: &Record) {
        let Some(history) = &self.history else {
            return;
        };
        // History is best effort: a failure to record never fails a transfer.
        if let Err(e) = history.append(record) {
            tracing::warn!("{e}");
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl EventSink for Recorder {
    fn emit(&self, event: TransferEvent) {
        match &event {
            TransferEvent::Started {
                transfer_id,
                direction,
                ..
            } => *lock(&self.unfinished) = Some((*transfer_id, *direction)),
            TransferEvent::Finished { .. } => *lock(&self.unfinished) = None,
            _ => {}
        }
        // A transfer that stops because this side's user pressed Ctrl+C was interrupted,
        // not failed (and can be resumed).
        let record = match &event {
            TransferEvent::Failed { .. } if crate::interrupt().is_triggered() => self
                .tracker()
                .end(Status::Interrupted, "interrupted by the user"),
            _ => self.tracker().observe(&event),
        };
        if let Some(record) = record {
            self.write(&record);
        }
        self.renderer.emit(event);
    }
}
