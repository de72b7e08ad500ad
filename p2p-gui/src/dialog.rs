//! File dialogs that say when they cannot open.
//!
//! `rfd` answers "nothing picked" both when the person cancels and when no dialog can
//! be shown (no xdg-desktop-portal and no zenity); the reason only goes to its log. The
//! [`DialogErrors`] layer keeps the errors `rfd` logs, so a dialog that could not open
//! is reported in the window with what to do instead (drop files, or type a path).

use std::path::PathBuf;
use std::sync::Mutex;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::Context;

/// Errors `rfd` logged since the last dialog started.
static ERRORS: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// A tracing layer that keeps the errors `rfd` logs (its log records reach tracing
/// through `tracing-log`). Install it with the program's subscriber.
pub struct DialogErrors;

impl<S: Subscriber> tracing_subscriber::Layer<S> for DialogErrors {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let meta = event.metadata();
        let from_rfd = meta.target().starts_with("rfd")
            || meta.module_path().is_some_and(|m| m.starts_with("rfd"));
        if from_rfd && *meta.level() == Level::ERROR {
            let mut message = Message(String::new());
            event.record(&mut message);
            note_error(message.0);
        }
    }
}

struct Message(String);

impl Visit for Message {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0 = format!("{value:?}");
        }
    }
}

/// Records a dialog error (what the layer does with `rfd`'s).
pub fn note_error(error: String) {
    if let Ok(mut errors) = ERRORS.lock() {
        errors.push(error);
    }
}

fn take_errors() -> Vec<String> {
    ERRORS
        .lock()
        .map(|mut e| std::mem::take(&mut *e))
        .unwrap_or_default()
}

/// What a dialog's "nothing" means: cancelled (`Ok(None)`) or could not open (`Err`,
/// in words for the window).
fn outcome<T>(picked: Option<T>) -> Result<Option<T>, String> {
    let errors = take_errors();
    match picked {
        Some(picked) => Ok(Some(picked)),
        None if errors.is_empty() => Ok(None),
        None => Err(format!(
            "The file dialog could not open ({}). Drop files or folders onto this window, \
             or type or paste a path into the field instead.",
            errors.join("; ")
        )),
    }
}

/// Which dialog to show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pick {
    /// Files to send.
    Files,
    /// A folder to send.
    Folder,
    /// Where received files go.
    OutputFolder,
    /// A `.p2p` share file to download.
    ShareFile,
}

/// Shows the dialog; `Ok(empty)` when the person cancelled.
pub async fn pick(kind: Pick) -> Result<Vec<PathBuf>, String> {
    take_errors();
    let dialog = rfd::AsyncFileDialog::new();
    let picked: Option<Vec<PathBuf>> = match kind {
        Pick::Files => dialog
            .set_title("Choose files to send")
            .pick_files()
            .await
            .map(|files| files.iter().map(|f| f.path().to_path_buf()).collect()),
        Pick::Folder => dialog
            .set_title("Choose a folder to send")
            .pick_folder()
            .await
            .map(|f| vec![f.path().to_path_buf()]),
        Pick::OutputFolder => dialog
            .set_title("Choose where received files go")
            .pick_folder()
            .await
            .map(|f| vec![f.path().to_path_buf()]),
        Pick::ShareFile => dialog
            .set_title("Open a shared-files (.p2p) file")
            .add_filter("Shared files", &["p2p"])
            .pick_file()
            .await
            .map(|f| vec![f.path().to_path_buf()]),
    };
    outcome(picked).map(Option::unwrap_or_default)
}

/// Paths from what a person typed or pasted: one per line, `file://` URIs (what file
/// managers put on the clipboard) decoded, surrounding quotes removed, `~/` expanded.
pub fn typed_paths(typed: &str) -> Vec<PathBuf> {
    typed
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .map(|line| {
            let line = line
                .strip_prefix('"')
                .and_then(|l| l.strip_suffix('"'))
                .or_else(|| line.strip_prefix('\'').and_then(|l| l.strip_suffix('\'')))
                .unwrap_or(line);
            if let Some(uri) = line.strip_prefix("file://") {
                // file:///home/a%20b → /home/a b (a host part, if any, is dropped).
                let path = uri.find('/').map_or(uri, |i| &uri[i..]);
                return PathBuf::from(percent_decode(path));
            }
            match line.strip_prefix("~/") {
                Some(rest) => std::env::var_os("HOME")
                    .map(|home| PathBuf::from(home).join(rest))
                    .unwrap_or_else(|| PathBuf::from(line)),
                None => PathBuf::from(line),
            }
        })
        .collect()
}

fn percent_decode(text: &str) -> std::ffi::OsString {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStringExt;
        std::ffi::OsString::from_vec(out)
    }
    #[cfg(not(unix))]
    {
        String::from_utf8_lossy(&out).into_owned().into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tests share the one list of errors.
    static SERIAL: Mutex<()> = Mutex::new(());

    #[test]
    fn pasted_paths_uris_and_quotes_become_paths() {
        let paths = typed_paths(
            "  /tmp/a b.txt \nfile:///home/ada/My%20Photos\n\"/tmp/quoted\"\n\n'/tmp/single'\nfile://host/x%zz",
        );
        assert_eq!(
            paths,
            [
                PathBuf::from("/tmp/a b.txt"),
                PathBuf::from("/home/ada/My Photos"),
                PathBuf::from("/tmp/quoted"),
                PathBuf::from("/tmp/single"),
                PathBuf::from("/x%zz"),
            ]
        );
    }

    #[test]
    fn a_dialog_that_could_not_open_says_so_and_a_cancel_does_not() {
        let _serial = SERIAL.lock();
        take_errors();
        assert_eq!(outcome::<()>(None), Ok(None));
        note_error("OpenFile failed: org.freedesktop.DBus.Error.ServiceUnknown".into());
        let error = outcome::<()>(None).unwrap_err();
        assert!(error.contains("could not open"), "{error}");
        assert!(error.contains("ServiceUnknown"), "{error}");
        assert!(error.contains("Drop files"), "{error}");
        // Said once: the next cancel is a cancel.
        assert_eq!(outcome::<()>(None), Ok(None));
    }

    #[test]
    fn the_layer_keeps_what_rfd_logs_as_errors() {
        use tracing_subscriber::layer::SubscriberExt;
        let _serial = SERIAL.lock();
        take_errors();
        let subscriber = tracing_subscriber::registry().with(DialogErrors);
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(target: "rfd::backend", "Using zenity fallback");
            tracing::error!(target: "other", "not a dialog");
            tracing::error!(target: "rfd::backend::xdg_desktop_portal", "OpenFile failed: no bus");
        });
        assert_eq!(take_errors(), ["OpenFile failed: no bus"]);
    }
}
