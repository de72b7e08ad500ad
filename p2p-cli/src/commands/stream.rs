//! Text and streams, as croc does them: `send --text`, `send -` (standard input),
//! `receive --stdout`, and `send --qr`.
//!
//! - A text travels as the protocol's `Text` message (docs/protocol.md, section 5.5):
//!   the receiver shows it, writes nothing, and both sides record it in the history.
//! - `send -` keeps standard input in a private temporary file first (its length must
//!   be known for the offer), then sends it as one file named `stdin`. Standard input
//!   cannot be read twice, so such a send cannot be resumed later (within one run,
//!   reconnections still resume from the temporary file).
//! - `receive --stdout` points file descriptor 1 at standard error for the rest of the
//!   run, so that every line the program prints goes there, and keeps a duplicate of
//!   the real standard output for the content alone: a single file, received into a
//!   private temporary folder and copied out, or a text.

use std::fs::File;
use std::io::{IsTerminal, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use clap::Args;
use p2p_core::fs::source::SourceManifest;
use p2p_core::history::{History, Record, Status};
use p2p_core::net::{Admitted, Code, PeerIdentity, PeerStream};
use p2p_core::session::{IncomingText, ReceivedText};
use p2p_core::text::{printable, printable_lines};
use p2p_core::wire::MAX_TEXT_LEN;
use p2p_core::{Decision, Direction, IncomingOffer, P2PSession, TransferSummary};
use uuid::Uuid;

use crate::exit::Usage;
use crate::record::Recorder;

/// The name a stream from standard input gets at the receiver.
pub const STDIN_NAME: &str = "stdin";

/// What a text is called in the history's list of files.
pub const TEXT_LABEL: &str = "(text)";

/// `send` flags for text and QR codes.
#[derive(Debug, Clone, Default, Args)]
pub struct SendStreamArgs {
    /// Send this text instead of files: the receiver prints it, nothing is saved. At
    /// most 64 KiB; longer text goes as a stream: `… | p2p-transfer send -`.
    #[arg(long, value_name = "TEXT", conflicts_with = "paths")]
    pub text: Option<String>,
    /// Also show the code as a QR code (on standard error): scanning it gives the
    /// receiving command, `p2p-transfer receive CODE`.
    #[arg(long)]
    pub qr: bool,
}

/// `receive` flags for streams.
#[derive(Debug, Clone, Default, Args)]
pub struct ReceiveStreamArgs {
    /// Write what arrives to standard output instead of a folder: one file (e.g. a
    /// `send -` stream) or a text. Progress and messages go to standard error; nothing
    /// is left on disk. Folders and several files are declined (the sender is told why).
    #[arg(long, conflicts_with_all = ["output", "keep_listening", "overwrite"])]
    pub stdout: bool,
}

// ---------------------------------------------------------------------------------
// Sending

/// What a `send` moves: files and folders (perhaps standard input, kept in a temporary
/// file), or a text.
pub enum Payload {
    Files {
        manifest: SourceManifest,
        /// The private folder holding standard input, removed when the send ends.
        _spool: Option<tempfile::TempDir>,
    },
    Text(String),
}

impl Payload {
    /// The text (checked against the protocol's limit), or standard input for the
    /// single path `-`, or the paths scanned. `resuming` refuses `-`: what it read
    /// the first time is gone.
    pub async fn prepare(
        paths: &[PathBuf],
        text: Option<&str>,
        resuming: bool,
        recorder: &Recorder,
    ) -> anyhow::Result<Self> {
        if let Some(text) = text {
            check_text(text)?;
            recorder.set_no_resume(
                "a text arrives whole or not at all: run the command again to send it",
            );
            return Ok(Payload::Text(text.to_owned()));
        }
        let stdin = Path::new("-");
        if !paths.iter().any(|p| p == stdin) {
            let manifest = SourceManifest::scan(paths)?;
            return Ok(Payload::Files {
                manifest,
                _spool: None,
            });
        }
        if resuming {
            return Err(Usage(
                "standard input (`-`) cannot be resumed: what it carried was read once; \
                 send it again with `p2p-transfer send -`"
                    .into(),
            )
            .into());
        }
        if paths.len() > 1 {
            return Err(Usage(
                "`-` (standard input) is sent on its own: give no other paths with it".into(),
            )
            .into());
        }
        let (spool, path) = spool_stdin().await?;
        let manifest = SourceManifest::scan(&[path])?;
        recorder.set_no_resume(
            "this send read standard input, which cannot be read again, so it cannot be \
             resumed: run the command again with the same input",
        );
        Ok(Payload::Files {
            manifest,
            _spool: Some(spool),
        })
    }

    /// Sends it over `session`, under `transfer_id`.
    pub async fn deliver(
        &self,
        session: &mut P2PSession<PeerStream>,
        transfer_id: Uuid,
        recorder: &Recorder,
    ) -> p2p_core::Result<()> {
        match self {
            Payload::Files { manifest, .. } => session
                .send_manifest_as(manifest, transfer_id, recorder)
                .await
                .map(drop),
            Payload::Text(text) => {
                let started = Instant::now();
                let peer = session.peer().device_name.clone();
                let result = session.send_text(text, transfer_id).await;
                let (status, error) = match &result {
                    Ok(()) => (Status::Completed, None),
                    Err(e) => (Status::Failed, Some(e.to_string())),
                };
                record_text(
                    transfer_id,
                    Direction::Send,
                    &peer,
                    text.len(),
                    started.elapsed(),
                    status,
                    error,
                );
                if result.is_ok() {
                    recorder.renderer().line(&format!(
                        "sent the text ({}) to {}",
                        indicatif::HumanBytes(text.len() as u64),
                        printable(&peer)
                    ));
                }
                result
            }
        }
    }
}

/// A text `send --text` can carry, or a command-line error that says what to do.
fn check_text(text: &str) -> anyhow::Result<()> {
    if text.len() > MAX_TEXT_LEN {
        return Err(Usage(format!(
            "--text takes at most {MAX_TEXT_LEN} bytes (this one has {}): send longer \
             text as a stream, e.g. `p2p-transfer send - < notes.txt` or \
             `printf '%s' \"$TEXT\" | p2p-transfer send -`",
            text.len()
        ))
        .into());
    }
    Ok(())
}

/// Appends a text's record to the history (best effort, as for transfers).
fn record_text(
    transfer_id: Uuid,
    direction: Direction,
    peer: &str,
    len: usize,
    elapsed: Duration,
    status: Status,
    error: Option<String>,
) {
    let Some(history) = History::default_location() else {
        return;
    };
    let bytes = if status == Status::Completed {
        len as u64
    } else {
        0
    };
    let record = Record::now(
        transfer_id,
        direction,
        peer.to_owned(),
        vec![TEXT_LABEL.to_owned()],
        0,
        bytes,
        elapsed,
        status,
        error,
    );
    if let Err(e) = history.append(&record) {
        tracing::warn!("{e}");
    }
}

/// Reads standard input to its end into `stdin` in a new private folder (mode 0700,
/// file 0600) under the temporary directory. Reading happens on a thread of its own:
/// Ctrl+C stops the program at once even while a terminal or a pipe keeps it waiting,
/// and the folder (owned here) is removed when this future is dropped.
async fn spool_stdin() -> anyhow::Result<(tempfile::TempDir, PathBuf)> {
    let temp = std::env::temp_dir();
    let spool = tempfile::Builder::new()
        .prefix("p2p-transfer-stdin-")
        .tempdir()
        .map_err(|e| storage("cannot create a temporary folder in", &temp, e))?;
    let path = spool.path().join(STDIN_NAME);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| storage("cannot create", &path, e))?;
    if std::io::stdin().is_terminal() {
        eprintln!(
            "reading what to send from the terminal: end it with Ctrl+D on a line of its own"
        );
    }
    let copied = off_thread(move || copy_stdin(file)).await?;
    match copied {
        Ok(bytes) => {
            eprintln!("read {} from standard input", indicatif::HumanBytes(bytes));
            Ok((spool, path))
        }
        Err(Spool::Read(e)) => Err(anyhow::anyhow!("cannot read standard input: {e}")),
        Err(Spool::Write(e)) => {
            let full = matches!(
                e.kind(),
                std::io::ErrorKind::StorageFull
                    | std::io::ErrorKind::FileTooLarge
                    | std::io::ErrorKind::QuotaExceeded
            );
            let error = anyhow::Error::new(storage("cannot keep standard input in", &path, e));
            Err(if full {
                error.context(format!(
                    "standard input is kept in a temporary file until it is sent, and {} \
                     has no room for more: free space there, or set TMPDIR to a folder \
                     with room",
                    temp.display()
                ))
            } else {
                error
            })
        }
    }
}

enum Spool {
    Read(std::io::Error),
    Write(std::io::Error),
}

fn copy_stdin(mut file: File) -> Result<u64, Spool> {
    let mut stdin = std::io::stdin().lock();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = match stdin.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Spool::Read(e)),
        };
        file.write_all(&buf[..n]).map_err(Spool::Write)?;
        total += n as u64;
    }
    // A full disk may only show when the data is flushed.
    file.sync_all().map_err(Spool::Write)?;
    Ok(total)
}

fn storage(action: &'static str, path: &Path, e: std::io::Error) -> p2p_core::Error {
    p2p_core::Error::Storage(p2p_core::error::StorageError::new(action, path, e))
}

/// Runs blocking `work` on a thread of its own (not the runtime's blocking pool, which
/// the runtime waits for when it shuts down: Ctrl+C must not wait for standard input).
async fn off_thread<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> anyhow::Result<T> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("p2p-stream".into())
        .spawn(move || {
            let _ = tx.send(work());
        })?;
    rx.await
        .map_err(|_| anyhow::anyhow!("the standard stream thread stopped"))
}

/// `--qr`: the command that receives with `code`, as a QR code on standard error (the
/// code's own line is on standard output; a QR code never is).
pub fn print_qr(code: Option<&Code>) {
    let Some(code) = code else {
        eprintln!("--qr: there is no code to show (trusted devices and --peer-id need none)");
        return;
    };
    let command = format!("p2p-transfer receive {code}");
    match qr_text(&command) {
        Ok(qr) => eprintln!("{qr}\nscan to get: {command}"),
        Err(e) => eprintln!("warning: cannot draw the QR code: {e}"),
    }
}

/// `payload` as a QR code in text: two rows of modules per line, in half blocks, light
/// modules drawn (for terminals with a dark background) and a quiet zone around it.
pub fn qr_text(payload: &str) -> Result<String, qrcode::types::QrError> {
    use qrcode::render::unicode::Dense1x2;
    let code = qrcode::QrCode::with_error_correction_level(payload, qrcode::EcLevel::M)?;
    Ok(code
        .render::<Dense1x2>()
        .dark_color(Dense1x2::Light)
        .light_color(Dense1x2::Dark)
        .quiet_zone(true)
        .build())
}

// ---------------------------------------------------------------------------------
// Receiving

/// Where a `receive` puts what arrives: the output folder as usual, or (`--stdout`)
/// standard output. Also shows texts, in either case.
pub struct Output {
    to_stdout: Option<StdoutSink>,
    /// Texts shown and files written to standard output.
    delivered: AtomicUsize,
}

struct StdoutSink {
    /// The real standard output (file descriptor 1 now goes to standard error).
    out: File,
    /// Private folder the file is received into before it is copied out.
    dir: tempfile::TempDir,
}

impl Output {
    /// For `--stdout`: takes standard output for the content alone and makes the
    /// private folder. Call it before anything is printed.
    pub fn new(args: &ReceiveStreamArgs, recorder: &Recorder) -> anyhow::Result<Self> {
        let to_stdout = if args.stdout {
            let out = take_stdout()?;
            let dir = tempfile::Builder::new()
                .prefix("p2p-transfer-stdout-")
                .tempdir()
                .map_err(|e| {
                    storage(
                        "cannot create a temporary folder in",
                        &std::env::temp_dir(),
                        e,
                    )
                })?;
            recorder.set_no_resume(
                "nothing was kept: `receive --stdout` receives into a temporary folder, \
                 removed now, so this transfer cannot be resumed; run both commands again",
            );
            Some(StdoutSink { out, dir })
        } else {
            None
        };
        Ok(Self {
            to_stdout,
            delivered: AtomicUsize::new(0),
        })
    }

    /// The folder the transfer is received into: the user's, or the private one.
    pub fn output_dir(&self, asked: &Path) -> PathBuf {
        match &self.to_stdout {
            Some(sink) => sink.dir.path().to_owned(),
            None => asked.to_owned(),
        }
    }

    /// Whether anything went to standard output (a text, a file for `--stdout`).
    pub fn delivered_any(&self) -> bool {
        self.delivered.load(Ordering::Relaxed) > 0
    }

    /// With `--stdout`, an offer of anything but one file is declined (and recorded as
    /// declined), with a reason the sender is shown.
    pub fn refusal(&self, offer: &IncomingOffer, recorder: &Recorder) -> Option<Decision> {
        self.to_stdout.as_ref()?;
        let what = match offer.entries.as_slice() {
            [one] if one.size.is_some() => return None,
            entries if entries.iter().any(|e| e.size.is_none()) => "a folder".to_owned(),
            _ => format!("{} files", offer.files()),
        };
        let reason = format!(
            "the receiver writes to its standard output (receive --stdout), which takes \
             one file or a text, not {what}: send a single file, or a stream such as \
             `tar c DIR | p2p-transfer send -`"
        );
        recorder.declined(offer, &reason);
        Some(Decision::Decline(reason))
    }

    /// With `--stdout`, copies the received file to standard output and removes it:
    /// `None` then, otherwise the summary back (the file is where it was saved).
    pub async fn deliver(
        &self,
        summary: TransferSummary,
    ) -> p2p_core::Result<Option<TransferSummary>> {
        let Some(sink) = &self.to_stdout else {
            return Ok(Some(summary));
        };
        for root in &summary.roots {
            let path = sink.dir.path().join(root);
            let out = sink
                .out
                .try_clone()
                .map_err(|e| storage("cannot write to", Path::new("standard output"), e))?;
            let from = path.clone();
            let copied = off_thread(move || copy_out(&from, out))
                .await
                .map_err(|e| p2p_core::Error::InvalidInput(e.to_string()))?;
            copied?;
            let _ = std::fs::remove_file(&path);
            eprintln!(
                "wrote {} ({}) to standard output",
                printable(root),
                indicatif::HumanBytes(summary.bytes)
            );
        }
        self.delivered.fetch_add(1, Ordering::Relaxed);
        Ok(None)
    }

    /// Accepts a text at once, or (`--ask`) asks on the terminal first, like an offer.
    pub async fn decide_text(
        &self,
        text: IncomingText,
        ask: bool,
        identity: Option<&PeerIdentity>,
        recorder: &Recorder,
    ) -> Decision {
        if !ask {
            return Decision::Accept;
        }
        let who = identity.map_or_else(String::new, |id| {
            let how = match &id.admitted {
                Admitted::Unknown => "NOT trusted, no code".to_owned(),
                Admitted::Code => "proved the code".to_owned(),
                Admitted::Trusted { name } => format!("trusted as {}", printable(name)),
                Admitted::SameDevice => "this device".to_owned(),
                Admitted::Pinned => "the pinned id".to_owned(),
            };
            format!(" (device {}, {how})", id.device_id)
        });
        recorder.renderer().line(&format!(
            "{}{who} wants to show a text of {}",
            printable(&text.peer),
            indicatif::HumanBytes(text.len as u64)
        ));
        eprint!("accept? [y/N] ");
        let answer = off_thread(|| {
            let mut line = String::new();
            std::io::stdin().read_line(&mut line).map(|_| line)
        })
        .await;
        match answer {
            Ok(Ok(line)) if matches!(line.trim().to_lowercase().as_str(), "y" | "yes") => {
                Decision::Accept
            }
            _ => {
                let reason = "the receiver declined the text".to_owned();
                record_text(
                    text.transfer_id,
                    Direction::Receive,
                    &text.peer,
                    text.len,
                    Duration::ZERO,
                    Status::Declined,
                    Some(reason.clone()),
                );
                Decision::Decline(reason)
            }
        }
    }

    /// Shows a text on standard output: its exact bytes where no terminal interprets
    /// them (a pipe, a file), escaped on a terminal so that nothing the peer sent can
    /// act on it. Records it in the history.
    pub async fn show_text(&self, text: &ReceivedText) -> p2p_core::Result<()> {
        eprintln!(
            "text from {} ({}):",
            printable(&text.peer),
            indicatif::HumanBytes(text.text.len() as u64)
        );
        let written = match &self.to_stdout {
            Some(sink) => write_text(&mut &sink.out, &text.text),
            None => write_text(&mut std::io::stdout().lock(), &text.text),
        };
        written.map_err(|e| storage("cannot write to", Path::new("standard output"), e))?;
        record_text(
            text.transfer_id,
            Direction::Receive,
            &text.peer,
            text.text.len(),
            Duration::ZERO,
            Status::Completed,
            None,
        );
        self.delivered.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// Writes `text` exactly, or, to a terminal, [`printable_lines`] of it ending in a
/// line feed.
fn write_text<W: Write + AsFd>(out: &mut W, text: &str) -> std::io::Result<()> {
    if out.as_fd().is_terminal() {
        let shown = printable_lines(text);
        out.write_all(shown.as_bytes())?;
        if !shown.ends_with('\n') {
            out.write_all(b"\n")?;
        }
    } else {
        out.write_all(text.as_bytes())?;
    }
    out.flush()
}

fn copy_out(path: &Path, mut out: File) -> p2p_core::Result<()> {
    let mut file = File::open(path).map_err(|e| storage("cannot read", path, e))?;
    std::io::copy(&mut file, &mut out)
        .and_then(|_| out.flush())
        .map_err(|e| storage("cannot write to", Path::new("standard output"), e))?;
    Ok(())
}

/// Duplicates standard output for the content, then points file descriptor 1 at
/// standard error: from here on, whatever prints "to standard output" (progress, the
/// renderer's lines, a library) reaches standard error instead.
fn take_stdout() -> anyhow::Result<File> {
    let stdout = std::io::stdout();
    let mut lock = stdout.lock();
    lock.flush()?;
    let real = lock.as_fd().try_clone_to_owned()?;
    rustix::stdio::dup2_stdout(std::io::stderr())?;
    Ok(File::from(real))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_on_a_pipe_is_exact() {
        let (mut reader, mut writer) = std::io::pipe().unwrap();
        let text = "a\u{1b}[2J\r\nb";
        write_text(&mut writer, text).unwrap();
        drop(writer);
        let mut got = String::new();
        reader.read_to_string(&mut got).unwrap();
        assert_eq!(got, text);
    }

    #[test]
    fn too_long_a_text_names_the_stream_instead() {
        assert!(check_text(&"x".repeat(MAX_TEXT_LEN)).is_ok());
        let err = check_text(&"x".repeat(MAX_TEXT_LEN + 1)).unwrap_err();
        assert!(err.to_string().contains("send -"), "{err}");
        assert!(err.downcast_ref::<Usage>().is_some());
    }
}
