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
    resume_hint: Mutex<Option<String>>,
    receive_hint: Mutex<Option<ReceiveHint>>,
    /// The follow-up code of the last session let in by a code (its code is used up).
    resume_code: Mutex<Option<String>>,
    /// Why the current transfer cannot be resumed, when it cannot (`commands::stream`).
    no_resume: Mutex<Option<String>>,
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
    pub fn new(history: Option<History>) -> Self {
        Self {
            renderer: Renderer::new(),
            history,
            tracker: Mutex::new(Tracker::default()),
            resume_hint: Mutex::new(None),
            receive_hint: Mutex::new(None),
            resume_code: Mutex::new(None),
            no_resume: Mutex::new(None),
        }
    }

    pub fn renderer(&self) -> &Renderer {
        &self.renderer
    }

    /// The command that resumes the current send, printed if it is interrupted.
    pub fn set_resume_hint(&self, command: String) {
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

    /// Records the transfer in progress, if any, as interrupted, and tells the user how
    /// to resume it.
    pub fn interrupted(&self) {
        let record = self
            .tracker()
            .end(Status::Interrupted, "interrupted by the user");
        let Some(record) = record else {
            return;
        };
        if let Some(why) = self
            .no_resume
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        {
            eprintln!("interrupted; {why}");
            self.write(&record);
            return;
        }
        let hint = self
            .resume_hint
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let receive_hint = self
            .receive_hint
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        // The code that let the peer in is used up: both sides continue with the code
        // they derived from it (the same on both), given on both command lines.
        let code = self
            .resume_code
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .map_or_else(String::new, |c| format!(" --code {c}"));
        let receive_hint = receive_hint.map(|mut h| {
            h.again.push_str(&code);
            h
        });
        match (record.direction, hint, receive_hint) {
            (Direction::Send, Some(command), _) => {
                let receiver = if code.is_empty() {
                    String::new()
                } else {
                    format!("\n(the receiver, if it stopped too, runs `p2p-transfer receive --output <its folder>{code}` with the same code)")
                };
                eprintln!(
                    "interrupted; the receiver keeps what arrived. Resume with:\n  {command}{code}{receiver}"
                );
            }
            (Direction::Receive, _, Some(hint)) => {
                let default = p2p_core::config::DEFAULT_CHUNK_SIZE;
                let chunk = match hint.chunk_size {
                    Some(c) if c != default => format!(" --chunk-size {c}"),
                    _ => String::new(),
                };
                eprintln!(
                    "interrupted; what arrived is kept. To continue, start this receiver \
                     again:\n  {}\nand on the sending side:\n  \
                     p2p-transfer resume {} {}{chunk}{code} --path <what was sent>",
                    hint.again, record.transfer_id, hint.sender_reaches_us
                )
            }
            _ => eprintln!(
                "interrupted; what arrived is kept. On the sending side, resume with:\n  \
                 p2p-transfer resume {} --peer <this receiver's address> --path <what was sent>",
                record.transfer_id
            ),
        }
        self.write(&record);
    }

    /// Records an incoming offer that was declined.
    pub fn declined(&self, offer: &IncomingOffer, reason: &str) {
        self.write(&Record::declined(offer, reason));
    }

    fn tracker(&self) -> std::sync::MutexGuard<'_, Tracker> {
        self.tracker.lock().unwrap_or_else(|p| p.into_inner())
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

impl EventSink for Recorder {
    fn emit(&self, event: TransferEvent) {
        let record = self.tracker().observe(&event);
        if let Some(record) = record {
            self.write(&record);
        }
        self.renderer.emit(event);
    }
}
