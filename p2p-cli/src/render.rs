//! Renders transfer events: two progress bars (overall and current file, with bytes,
//! speed and ETA) on a terminal, plain lines otherwise, or JSON lines (`--json`, see
//! [`crate::json`]).
//!
//! Peer names and paths in events come from the peer: every one is shown through
//! [`printable`], and every line through [`printable_lines`], so that nothing a peer
//! chose can move the cursor, retitle the window, forge a line or reorder text. (JSON
//! lines carry them as they are, JSON-escaped: they are for programs.)
//!
//! Speed and ETA count only the bytes this attempt moved: after a resume, what the
//! receiver already held is neither sent again nor counted as sent.

use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{
    HumanBytes, HumanDuration, MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle,
};
use p2p_core::text::{printable, printable_lines};
use p2p_core::{Direction, EventSink, TransferEvent};

use crate::json::{self, Event};

/// Plain mode prints at most one progress line this often.
const PLAIN_INTERVAL: Duration = Duration::from_secs(1);
/// JSON mode writes at most one `progress` line this often.
const JSON_INTERVAL: Duration = Duration::from_millis(250);
/// No speed (nor ETA) is given before an attempt has run this long: a chunk or two
/// over a few milliseconds says nothing about the speed.
const MIN_RATE_ELAPSED: Duration = Duration::from_millis(500);

/// How the output looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// Progress bars when stdout is a terminal, plain lines otherwise.
    Human,
    /// One JSON object per line on stdout; every human line goes to stderr.
    Json,
}

/// An [`EventSink`] that draws for a person, or writes JSON lines for a program.
pub struct Renderer {
    inner: Mutex<Inner>,
}

enum Inner {
    Bars {
        multi: MultiProgress,
        overall: Option<ProgressBar>,
        file: Option<ProgressBar>,
        current: String,
        attempt: Option<Attempt>,
    },
    Plain {
        last: Option<Instant>,
        attempt: Option<Attempt>,
    },
    Json {
        last: Option<Instant>,
        attempt: Option<Attempt>,
    },
}

/// One attempt at a transfer: when it started and what was already there, so that the
/// speed counts only what it moved.
#[derive(Debug, Clone, Copy)]
struct Attempt {
    started: Instant,
    skipped: u64,
}

impl Attempt {
    fn new() -> Self {
        Self {
            started: Instant::now(),
            skipped: 0,
        }
    }

    /// Bytes this attempt moved, of `done` in place. (A sender counts held data as it
    /// skips over it, so `done` can trail `skipped` for a moment.)
    fn moved(&self, done: u64) -> u64 {
        done.saturating_sub(self.skipped)
    }

    /// Bytes per second this attempt moved; `None` until it has run long enough to say.
    fn rate(&self, done: u64, now: Instant) -> Option<f64> {
        let elapsed = now.saturating_duration_since(self.started);
        (elapsed >= MIN_RATE_ELAPSED).then(|| self.moved(done) as f64 / elapsed.as_secs_f64())
    }

    /// Time left at this attempt's speed; `None` while the speed is unknown or zero.
    fn eta(&self, done: u64, total: u64, now: Instant) -> Option<Duration> {
        let rate = self.rate(done, now).filter(|r| *r > 0.0)?;
        // Rounded up: "0s" only when nothing is left.
        Some(Duration::from_secs_f64(
            (total.saturating_sub(done) as f64 / rate).ceil().min(1e9),
        ))
    }
}

fn attempt(slot: &Option<Attempt>) -> Attempt {
    slot.unwrap_or_else(Attempt::new)
}

impl Renderer {
    /// [`Output::Human`]: bars when stdout is a terminal, plain lines otherwise.
    pub fn with_output(output: Output) -> Self {
        let inner = match output {
            Output::Json => Inner::Json {
                last: None,
                attempt: None,
            },
            Output::Human if std::io::stdout().is_terminal() => Inner::Bars {
                multi: MultiProgress::with_draw_target(ProgressDrawTarget::stdout()),
                overall: None,
                file: None,
                current: String::new(),
                attempt: None,
            },
            Output::Human => Inner::Plain {
                last: None,
                attempt: None,
            },
        };
        Self {
            inner: Mutex::new(inner),
        }
    }

    /// Whether this renderer writes JSON lines.
    pub fn is_json(&self) -> bool {
        matches!(&*self.lock(), Inner::Json { .. })
    }

    /// Prints a line without breaking the bars. Line feeds in `text` start new lines;
    /// any other control, bidi or invisible character is shown escaped
    /// ([`printable_lines`]), so a peer-supplied part that was not escaped before it was
    /// composed in cannot act on the terminal (it can still break the line: escape such
    /// parts with [`printable`] first). In JSON mode the line goes to stderr.
    pub fn line(&self, text: &str) {
        let text = printable_lines(text);
        match &*self.lock() {
            Inner::Bars { multi, .. } => {
                let _ = multi.println(text);
            }
            Inner::Plain { .. } => println!("{text}"),
            Inner::Json { .. } => eprintln!("{text}"),
        }
    }

    /// Prints an error or a hint on stderr, on a line of its own, never after a bar.
    /// Meant for last words (the final error, what to do after Ctrl+C): bars still
    /// drawn are left as they are, frozen, and the text starts below them (below the
    /// `^C` the terminal echoed, too, which the bars cannot know about); the next
    /// transfer draws new ones. Escaped like [`Self::line`].
    pub fn eprintln(&self, text: &str) {
        let text = printable_lines(text);
        let mut inner = self.lock();
        match &mut *inner {
            Inner::Bars {
                multi,
                overall,
                file,
                current,
                ..
            } if overall.is_some() || file.is_some() => {
                // Dropped out of sight: nothing redraws (or clears) them any more.
                multi.set_draw_target(ProgressDrawTarget::hidden());
                drop([file.take(), overall.take()]);
                current.clear();
                multi.set_draw_target(ProgressDrawTarget::stdout());
                // The cursor is at the end of the last bar, or after an echoed `^C`.
                eprintln!("\n{text}");
            }
            // Any line above (a summary, "stopped at") filled its row: the text
            // starts on the next one.
            _ => eprintln!("{text}"),
        }
    }

    /// The command's final error: `error: …` on stderr and, in JSON mode, an `error`
    /// event with the exit code on stdout (its last line).
    pub fn error(&self, exit_code: u8, message: &str) {
        if self.is_json() {
            json::print(&Event::Error { exit_code, message });
        }
        self.eprintln(&format!("error: {message}"));
    }

    /// The one-time code a waiting sender shows: `code: …` on stdout, or a `code` event.
    pub fn code(&self, code: &str) {
        if self.is_json() {
            json::print(&Event::Code { code });
        } else {
            self.line(&format!("code: {code}"));
        }
    }

    /// The path of a rendezvous connection (`lan`, `direct`, `relay`), first and on
    /// every change: a `path` event in JSON mode, a line on stderr otherwise.
    pub fn path(&self, path: &p2p_core::net::ice::Path, changed: bool) {
        if self.is_json() {
            json::print(&Event::Path {
                path: path.kind.label(),
                address: path.addr.to_string(),
            });
        } else if changed {
            self.eprintln(&format!("path: now {} ({})", path.kind, path.addr));
        }
    }

    /// Where this side waits for the peer: a `listening` event in JSON mode (people
    /// read `listening on …` on stderr, printed when the port opens).
    pub fn listening(&self, address: Option<std::net::SocketAddr>) {
        if let (true, Some(address)) = (self.is_json(), address) {
            json::print(&Event::Listening {
                address: address.to_string(),
            });
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn bar_style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

fn verb(direction: Direction) -> &'static str {
    match direction {
        Direction::Send => "Sending",
        Direction::Receive => "Receiving",
    }
}

fn to_from(direction: Direction) -> &'static str {
    match direction {
        Direction::Send => "to",
        Direction::Receive => "from",
    }
}

/// `1.50 MiB/s`, or `?/s` while unknown.
fn speed(rate: Option<f64>) -> String {
    match rate {
        Some(r) => format!("{}/s", HumanBytes(r as u64)),
        None => "?/s".to_owned(),
    }
}

/// `45s`, `3m 05s`, `2h 07m`, or `?` while unknown.
fn short_duration(d: Option<Duration>) -> String {
    let Some(d) = d else {
        return "?".to_owned();
    };
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {:02}s", s / 60, s % 60),
        _ => format!("{}h {:02}m", s / 3600, s % 3600 / 60),
    }
}

/// The average speed of a finished attempt: what it moved over how long it took.
fn final_rate(moved: u64, elapsed: Duration) -> f64 {
    moved as f64 / elapsed.as_secs_f64().max(1e-3)
}

impl EventSink for Renderer {
    fn emit(&self, event: TransferEvent) {
        let mut inner = self.lock();
        match &mut *inner {
            Inner::Bars {
                multi,
                overall,
                file,
                current,
                attempt,
            } => bars(multi, overall, file, current, attempt, event),
            Inner::Plain { last, attempt } => plain(last, attempt, event),
            Inner::Json { last, attempt } => json_event(last, attempt, event),
        }
    }
}

fn bars(
    multi: &MultiProgress,
    overall: &mut Option<ProgressBar>,
    file: &mut Option<ProgressBar>,
    current: &mut String,
    slot: &mut Option<Attempt>,
    event: TransferEvent,
) {
    match event {
        TransferEvent::Started {
            direction,
            files,
            total_bytes,
            peer,
            ..
        } => {
            *slot = Some(Attempt::new());
            let _ = multi.println(format!(
                "{} {files} file(s), {} {} {}",
                verb(direction),
                HumanBytes(total_bytes),
                to_from(direction),
                printable(&peer),
            ));
            for bar in [file.take(), overall.take()].into_iter().flatten() {
                bar.finish_and_clear();
            }
            let o = multi.add(ProgressBar::new(total_bytes));
            o.set_style(bar_style(
                "{prefix:>8} [{bar:40}] {bytes}/{total_bytes} {msg}",
            ));
            o.set_prefix("total");
            *overall = Some(o);
            // The file bar appears with the first file's progress: no empty bar before.
            current.clear();
        }
        TransferEvent::Progress {
            done_bytes,
            total_bytes,
            current_file,
            ..
        } => {
            let a = attempt(slot);
            let now = Instant::now();
            if let Some(o) = overall {
                o.set_message(format!(
                    "{} ETA {}",
                    speed(a.rate(done_bytes, now)),
                    short_duration(a.eta(done_bytes, total_bytes, now))
                ));
                o.set_position(done_bytes);
            }
            if let Some((path, done, size)) = current_file {
                let f = file.get_or_insert_with(|| {
                    let f = multi.add(ProgressBar::new(size));
                    f.set_style(bar_style(
                        "{prefix:>8} [{bar:40}] {bytes}/{total_bytes} {wide_msg}",
                    ));
                    f.set_prefix("file");
                    f
                });
                if *current != path {
                    f.set_length(size);
                    f.set_message(printable(&path).into_owned());
                    *current = path;
                }
                f.set_position(done);
            }
        }
        TransferEvent::Resumed { skipped_bytes, .. } => {
            slot.get_or_insert_with(Attempt::new).skipped = skipped_bytes;
            let _ = multi.println(format!(
                "resuming: {} already there",
                HumanBytes(skipped_bytes)
            ));
        }
        TransferEvent::Warning { message } => {
            let _ = multi.println(format!("warning: {}", printable(&message)));
        }
        TransferEvent::Skipped { path, reason } => {
            let _ = multi.println(format!(
                "skipped {}: {}",
                printable(&path),
                printable(&reason)
            ));
        }
        TransferEvent::Retrying {
            path,
            chunk,
            attempt,
            ..
        } => {
            let _ = multi.println(format!(
                "resending chunk {chunk} of {} (attempt {attempt})",
                printable(&path)
            ));
        }
        TransferEvent::Finished {
            files,
            bytes,
            elapsed,
            ..
        } => {
            for bar in [file.take(), overall.take()].into_iter().flatten() {
                bar.finish_and_clear();
            }
            let skipped = slot.take().map_or(0, |a| a.skipped);
            let moved = bytes.saturating_sub(skipped);
            let mut summary = format!(
                "Done: {files} file(s), {} in {} ({})",
                HumanBytes(bytes),
                HumanDuration(elapsed),
                speed(Some(final_rate(moved, elapsed)))
            );
            if skipped > 0 {
                summary.push_str(&format!("; {} were already there", HumanBytes(skipped)));
            }
            let _ = multi.println(summary);
        }
        TransferEvent::Failed { .. } => {
            // The bars give way to one line saying where the transfer stopped; the
            // error that follows comes on a line of its own ([`Renderer::eprintln`]).
            let at = overall.as_ref().map(|o| (o.position(), o.length()));
            for bar in [file.take(), overall.take()].into_iter().flatten() {
                bar.finish_and_clear();
            }
            if let Some((done, Some(total))) = at {
                let _ = multi.println(format!(
                    "stopped at {} of {}",
                    HumanBytes(done),
                    HumanBytes(total)
                ));
            }
            *slot = None;
        }
        TransferEvent::FileDone { .. } => {}
    }
}

fn plain(last: &mut Option<Instant>, slot: &mut Option<Attempt>, event: TransferEvent) {
    match event {
        TransferEvent::Started {
            direction,
            files,
            total_bytes,
            peer,
            ..
        } => {
            *slot = Some(Attempt::new());
            *last = None;
            println!(
                "{} {files} file(s), {} bytes {} {}",
                verb(direction),
                total_bytes,
                to_from(direction),
                printable(&peer),
            );
        }
        TransferEvent::Progress {
            done_bytes,
            total_bytes,
            current_file,
            ..
        } => {
            let now = Instant::now();
            if last.is_some_and(|t| now - t < PLAIN_INTERVAL)
                || done_bytes == 0
                || done_bytes == total_bytes
            {
                return;
            }
            *last = Some(now);
            let a = attempt(slot);
            let pct = if total_bytes == 0 {
                100.0
            } else {
                done_bytes as f64 * 100.0 / total_bytes as f64
            };
            let file = current_file.map(|(p, _, _)| p).unwrap_or_default();
            println!(
                "progress {pct:5.1}% {done_bytes}/{total_bytes} bytes {} ETA {} {}",
                speed(a.rate(done_bytes, now)),
                short_duration(a.eta(done_bytes, total_bytes, now)),
                printable(&file)
            );
        }
        TransferEvent::Resumed { skipped_bytes, .. } => {
            slot.get_or_insert_with(Attempt::new).skipped = skipped_bytes;
            println!("resuming: {skipped_bytes} bytes already there");
        }
        TransferEvent::Warning { message } => {
            println!("warning: {}", printable(&message));
        }
        TransferEvent::Skipped { path, reason } => {
            println!("skipped {}: {}", printable(&path), printable(&reason));
        }
        TransferEvent::Retrying {
            path,
            chunk,
            attempt,
            ..
        } => {
            println!(
                "resending chunk {chunk} of {} (attempt {attempt})",
                printable(&path)
            );
        }
        TransferEvent::FileDone { path, size, .. } => {
            tracing::info!("verified {} ({size} bytes)", printable(&path));
        }
        TransferEvent::Finished {
            files,
            bytes,
            elapsed,
            ..
        } => {
            let skipped = slot.take().map_or(0, |a| a.skipped);
            let moved = bytes.saturating_sub(skipped);
            let already = if skipped > 0 {
                format!("; {skipped} bytes were already there")
            } else {
                String::new()
            };
            println!(
                "done: {files} file(s), {bytes} bytes in {:.2} s ({}){already}",
                elapsed.as_secs_f64(),
                speed(Some(final_rate(moved, elapsed)))
            );
        }
        TransferEvent::Failed { .. } => *slot = None,
    }
}

fn json_event(last: &mut Option<Instant>, slot: &mut Option<Attempt>, event: TransferEvent) {
    match event {
        TransferEvent::Started {
            transfer_id,
            direction,
            files,
            total_bytes,
            peer,
            roots,
        } => {
            *slot = Some(Attempt::new());
            *last = None;
            json::print(&Event::Started {
                transfer_id,
                direction: direction.into(),
                files,
                total_bytes,
                peer: &peer,
                roots: &roots,
            });
        }
        TransferEvent::Resumed {
            transfer_id,
            skipped_bytes,
        } => {
            slot.get_or_insert_with(Attempt::new).skipped = skipped_bytes;
            json::print(&Event::Resumed {
                transfer_id,
                skipped_bytes,
            });
        }
        TransferEvent::Progress {
            transfer_id,
            done_bytes,
            total_bytes,
            current_file,
        } => {
            let now = Instant::now();
            if last.is_some_and(|t| now - t < JSON_INTERVAL) {
                return;
            }
            *last = Some(now);
            let a = attempt(slot);
            let (file, file_done_bytes, file_bytes) = match &current_file {
                Some((path, done, size)) => (Some(path.as_str()), Some(*done), Some(*size)),
                None => (None, None, None),
            };
            json::print(&Event::Progress {
                transfer_id,
                done_bytes,
                total_bytes,
                moved_bytes: a.moved(done_bytes),
                bytes_per_second: a.rate(done_bytes, now).map(|r| r as u64),
                eta_seconds: a.eta(done_bytes, total_bytes, now).map(|d| d.as_secs()),
                file,
                file_done_bytes,
                file_bytes,
            });
        }
        TransferEvent::FileDone {
            transfer_id,
            path,
            size,
        } => json::print(&Event::FileDone {
            transfer_id,
            path: &path,
            size,
        }),
        TransferEvent::Retrying {
            transfer_id,
            path,
            chunk,
            attempt,
        } => json::print(&Event::Retrying {
            transfer_id,
            path: &path,
            chunk,
            attempt,
        }),
        TransferEvent::Warning { message } => json::print(&Event::Warning { message: &message }),
        TransferEvent::Skipped { path, reason } => json::print(&Event::Skipped {
            path: &path,
            reason: &reason,
        }),
        TransferEvent::Finished {
            transfer_id,
            files,
            bytes,
            elapsed,
        } => {
            let skipped = slot.take().map_or(0, |a| a.skipped);
            let moved = bytes.saturating_sub(skipped);
            json::print(&Event::Done {
                transfer_id,
                files,
                bytes,
                moved_bytes: moved,
                skipped_bytes: skipped,
                elapsed_seconds: elapsed.as_secs_f64(),
                bytes_per_second: final_rate(moved, elapsed) as u64,
            });
        }
        TransferEvent::Failed { transfer_id, error } => {
            *slot = None;
            json::print(&Event::Failed {
                transfer_id,
                message: &error,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn after_a_resume_speed_and_eta_count_only_this_attempts_bytes() {
        let start = Instant::now();
        let a = Attempt {
            started: start,
            skipped: 900,
        };
        let later = start + Duration::from_secs(2);
        assert_eq!(a.moved(1000), 100);
        assert_eq!(a.rate(1000, later), Some(50.0));
        assert_eq!(a.eta(1000, 1100, later), Some(Duration::from_secs(2)));
        // A sender still skipping over held data has moved nothing yet.
        assert_eq!(a.moved(400), 0);
        assert_eq!(a.eta(400, 1100, later), None);
        // Too early to tell.
        assert_eq!(a.rate(1000, start + Duration::from_millis(10)), None);
    }

    #[test]
    fn durations_are_short() {
        assert_eq!(short_duration(None), "?");
        assert_eq!(short_duration(Some(Duration::from_secs(45))), "45s");
        assert_eq!(short_duration(Some(Duration::from_secs(185))), "3m 05s");
        assert_eq!(short_duration(Some(Duration::from_secs(7620))), "2h 07m");
    }
}
