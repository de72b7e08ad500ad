//! Records every transfer in the history, whatever its ending: completed, failed, or
//! interrupted by Ctrl+C. Wraps the renderer so that the commands pass one sink.

use std::sync::Mutex;
use std::time::Instant;

use p2p_core::history::{History, Record, Status};
use p2p_core::{Direction, EventSink, TransferEvent};
use uuid::Uuid;

use crate::render::Renderer;

struct InFlight {
    transfer_id: Uuid,
    direction: Direction,
    peer: String,
    roots: Vec<String>,
    files: u64,
    bytes: u64,
    started: Instant,
}

/// Renders events and writes history records.
pub struct Recorder {
    renderer: Renderer,
    history: Option<History>,
    current: Mutex<Option<InFlight>>,
    resume_hint: Mutex<Option<String>>,
}

impl Recorder {
    pub fn new(history: Option<History>) -> Self {
        Self {
            renderer: Renderer::new(),
            history,
            current: Mutex::new(None),
            resume_hint: Mutex::new(None),
        }
    }

    pub fn renderer(&self) -> &Renderer {
        &self.renderer
    }

    /// The command that resumes the current send, printed if it is interrupted.
    pub fn set_resume_hint(&self, command: String) {
        *self.resume_hint.lock().unwrap_or_else(|p| p.into_inner()) = Some(command);
    }

    /// Records the transfer in progress, if any, as interrupted, and tells the user how
    /// to resume it.
    pub fn interrupted(&self) {
        let current = self.lock().take();
        let Some(t) = current else {
            return;
        };
        let hint = self
            .resume_hint
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        match (t.direction, hint) {
            (Direction::Send, Some(command)) => {
                eprintln!(
                    "interrupted; the receiver keeps what arrived. Resume with:\n  {command}"
                );
            }
            _ => eprintln!(
                "interrupted; what arrived is kept. The sender resumes with \
                 `p2p-transfer resume {} --peer ... --path ...`",
                t.transfer_id
            ),
        }
        self.write(
            t,
            Status::Interrupted,
            Some("interrupted by the user".into()),
        );
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<InFlight>> {
        self.current.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self, t: InFlight, status: Status, error: Option<String>) {
        let Some(history) = &self.history else {
            return;
        };
        let record = Record::now(
            t.transfer_id,
            t.direction,
            t.peer,
            t.roots,
            t.files,
            t.bytes,
            t.started.elapsed(),
            status,
            error,
        );
        // History is best effort: a failure to record never fails a transfer.
        if let Err(e) = history.append(&record) {
            tracing::warn!("{e}");
        }
    }
}

impl EventSink for Recorder {
    fn emit(&self, event: TransferEvent) {
        match &event {
            TransferEvent::Started {
                transfer_id,
                direction,
                files,
                total_bytes,
                peer,
                roots,
            } => {
                *self.lock() = Some(InFlight {
                    transfer_id: *transfer_id,
                    direction: *direction,
                    peer: peer.clone(),
                    roots: roots.clone(),
                    files: *files,
                    bytes: *total_bytes,
                    started: Instant::now(),
                });
            }
            TransferEvent::Finished { .. } => {
                let current = self.lock().take();
                if let Some(t) = current {
                    self.write(t, Status::Completed, None);
                }
            }
            TransferEvent::Failed { error, .. } => {
                let current = self.lock().take();
                if let Some(t) = current {
                    self.write(t, Status::Failed, Some(error.clone()));
                }
            }
            _ => {}
        }
        self.renderer.emit(event);
    }
}
