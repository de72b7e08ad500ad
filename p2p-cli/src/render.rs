//! Renders transfer events: two progress bars (overall and current file, with bytes,
//! speed and ETA) on a terminal, plain lines otherwise.
//!
//! Peer names and paths in events come from the peer: every one is shown through
//! [`printable`], and every line through [`printable_lines`], so that nothing a peer
//! chose can move the cursor, retitle the window, forge a line or reorder text.

use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{
    HumanBytes, HumanDuration, MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle,
};
use p2p_core::text::{printable, printable_lines};
use p2p_core::{Direction, EventSink, TransferEvent};

/// Plain mode prints at most one progress line this often.
const PLAIN_INTERVAL: Duration = Duration::from_secs(1);

/// An [`EventSink`] that draws for a person.
pub struct Renderer {
    inner: Mutex<Inner>,
}

enum Inner {
    Bars {
        multi: MultiProgress,
        overall: Option<ProgressBar>,
        file: Option<ProgressBar>,
        current: String,
    },
    Plain {
        last: Option<Instant>,
        started: Option<Instant>,
    },
}

impl Renderer {
    /// Bars when stdout is a terminal, plain lines otherwise.
    pub fn new() -> Self {
        let inner = if std::io::stdout().is_terminal() {
            Inner::Bars {
                multi: MultiProgress::with_draw_target(ProgressDrawTarget::stdout()),
                overall: None,
                file: None,
                current: String::new(),
            }
        } else {
            Inner::Plain {
                last: None,
                started: None,
            }
        };
        Self {
            inner: Mutex::new(inner),
        }
    }

    /// Prints a line without breaking the bars. Line feeds in `text` start new lines;
    /// any other control, bidi or invisible character is shown escaped
    /// ([`printable_lines`]), so a peer-supplied part that was not escaped before it was
    /// composed in cannot act on the terminal (it can still break the line: escape such
    /// parts with [`printable`] first).
    pub fn line(&self, text: &str) {
        let text = printable_lines(text);
        match &*self.lock() {
            Inner::Bars { multi, .. } => {
                let _ = multi.println(text);
            }
            Inner::Plain { .. } => println!("{text}"),
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

fn rate(bytes: u64, elapsed: Duration) -> String {
    let secs = elapsed.as_secs_f64().max(1e-3);
    format!("{}/s", HumanBytes((bytes as f64 / secs) as u64))
}

impl EventSink for Renderer {
    fn emit(&self, event: TransferEvent) {
        let mut inner = self.lock();
        match (&mut *inner, event) {
            (
                Inner::Bars {
                    multi,
                    overall,
                    file,
                    current,
                },
                TransferEvent::Started {
                    direction,
                    files,
                    total_bytes,
                    peer,
                    ..
                },
            ) => {
                let _ = multi.println(format!(
                    "{} {files} file(s), {} {} {}",
                    verb(direction),
                    HumanBytes(total_bytes),
                    if direction == Direction::Send {
                        "to"
                    } else {
                        "from"
                    },
                    printable(&peer),
                ));
                let o = multi.add(ProgressBar::new(total_bytes));
                o.set_style(bar_style(
                    "{prefix:>8} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
                ));
                o.set_prefix("total");
                let f = multi.add(ProgressBar::new(0));
                f.set_style(bar_style(
                    "{prefix:>8} [{bar:40}] {bytes}/{total_bytes} {wide_msg}",
                ));
                f.set_prefix("file");
                *overall = Some(o);
                *file = Some(f);
                current.clear();
            }
            (
                Inner::Bars {
                    overall,
                    file,
                    current,
                    ..
                },
                TransferEvent::Progress {
                    done_bytes,
                    current_file,
                    ..
                },
            ) => {
                if let Some(o) = overall {
                    o.set_position(done_bytes);
                }
                if let (Some(f), Some((path, done, size))) = (file, current_file) {
                    if *current != path {
                        f.set_length(size);
                        f.set_message(printable(&path).into_owned());
                        *current = path;
                    }
                    f.set_position(done);
                }
            }
            (Inner::Bars { multi, .. }, TransferEvent::Resumed { skipped_bytes, .. }) => {
                let _ = multi.println(format!(
                    "resuming: {} already there",
                    HumanBytes(skipped_bytes)
                ));
            }
            (Inner::Bars { multi, .. }, TransferEvent::Warning { message }) => {
                let _ = multi.println(format!("warning: {}", printable(&message)));
            }
            (Inner::Plain { .. }, TransferEvent::Resumed { skipped_bytes, .. }) => {
                println!("resuming: {skipped_bytes} bytes already there");
            }
            (Inner::Plain { .. }, TransferEvent::Warning { message }) => {
                println!("warning: {}", printable(&message));
            }
            (Inner::Bars { multi, .. }, TransferEvent::Skipped { path, reason }) => {
                let _ = multi.println(format!(
                    "skipped {}: {}",
                    printable(&path),
                    printable(&reason)
                ));
            }
            (
                Inner::Bars { multi, .. },
                TransferEvent::Retrying {
                    path,
                    chunk,
                    attempt,
                    ..
                },
            ) => {
                let _ = multi.println(format!(
                    "resending chunk {chunk} of {} (attempt {attempt})",
                    printable(&path)
                ));
            }
            (
                Inner::Bars {
                    multi,
                    overall,
                    file,
                    ..
                },
                TransferEvent::Finished {
                    files,
                    bytes,
                    elapsed,
                    ..
                },
            ) => {
                if let Some(f) = file.take() {
                    f.finish_and_clear();
                }
                if let Some(o) = overall.take() {
                    o.finish_and_clear();
                }
                let _ = multi.println(format!(
                    "Done: {files} file(s), {} in {} ({})",
                    HumanBytes(bytes),
                    HumanDuration(elapsed),
                    rate(bytes, elapsed)
                ));
            }
            (Inner::Bars { overall, file, .. }, TransferEvent::Failed { .. }) => {
                if let Some(f) = file.take() {
                    f.abandon();
                }
                if let Some(o) = overall.take() {
                    o.abandon();
                }
            }
            (Inner::Bars { .. }, TransferEvent::FileDone { .. }) => {}

            (
                Inner::Plain { started, last },
                TransferEvent::Started {
                    direction,
                    files,
                    total_bytes,
                    peer,
                    ..
                },
            ) => {
                *started = Some(Instant::now());
                *last = None;
                println!(
                    "{} {files} file(s), {} bytes {} {}",
                    verb(direction),
                    total_bytes,
                    if direction == Direction::Send {
                        "to"
                    } else {
                        "from"
                    },
                    printable(&peer),
                );
            }
            (
                Inner::Plain { started, last },
                TransferEvent::Progress {
                    done_bytes,
                    total_bytes,
                    current_file,
                    ..
                },
            ) => {
                let now = Instant::now();
                if last.is_some_and(|t| now - t < PLAIN_INTERVAL)
                    || done_bytes == 0
                    || done_bytes == total_bytes
                {
                    return;
                }
                *last = Some(now);
                let elapsed = started.map_or(Duration::ZERO, |s| now - s);
                let pct = if total_bytes == 0 {
                    100.0
                } else {
                    done_bytes as f64 * 100.0 / total_bytes as f64
                };
                let file = current_file.map(|(p, _, _)| p).unwrap_or_default();
                println!(
                    "progress {pct:5.1}% {done_bytes}/{total_bytes} bytes {} {}",
                    rate(done_bytes, elapsed),
                    printable(&file)
                );
            }
            (Inner::Plain { .. }, TransferEvent::Skipped { path, reason }) => {
                println!("skipped {}: {}", printable(&path), printable(&reason));
            }
            (
                Inner::Plain { .. },
                TransferEvent::Retrying {
                    path,
                    chunk,
                    attempt,
                    ..
                },
            ) => {
                println!(
                    "resending chunk {chunk} of {} (attempt {attempt})",
                    printable(&path)
                );
            }
            (Inner::Plain { .. }, TransferEvent::FileDone { path, size, .. }) => {
                tracing::info!("verified {} ({size} bytes)", printable(&path));
            }
            (
                Inner::Plain { .. },
                TransferEvent::Finished {
                    files,
                    bytes,
                    elapsed,
                    ..
                },
            ) => {
                println!(
                    "done: {files} file(s), {bytes} bytes in {:.2} s ({})",
                    elapsed.as_secs_f64(),
                    rate(bytes, elapsed)
                );
            }
            (Inner::Plain { .. }, TransferEvent::Failed { .. }) => {}
        }
    }
}
