//! Starting without a display: a clear message and an exit code instead of a panic.
//!
//! iced (through winit) panics when it cannot reach a display server ("Create event
//! loop") or create the window ("Create window"). [`missing`] catches the common case
//! before anything starts — no `DISPLAY`, `WAYLAND_DISPLAY` or `WAYLAND_SOCKET` — and
//! [`run_guarded`] turns a panic before the first frame into an error with the
//! display's own words (e.g. an X server that does not answer).

use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// Set once the first frame is drawn: from then on a panic is a bug, not a missing
/// display, and is reported as the panic it is.
static SHOWN: AtomicBool = AtomicBool::new(false);

/// What to do without a window, in the words of [`missing`] and [`run_guarded`].
const HINT: &str = "p2p-gui needs a graphical desktop (X11 or Wayland). On a server or \
                    over SSH use the command line instead: `p2p-transfer send` / \
                    `p2p-transfer receive`";

/// Why no window can be opened, judged from the environment alone: `None` when a
/// display is named (or on a platform that needs none named).
pub fn missing() -> Option<String> {
    missing_in(|name| std::env::var_os(name))
}

/// [`missing`] with the environment given (tests).
pub fn missing_in(var: impl Fn(&str) -> Option<std::ffi::OsString>) -> Option<String> {
    if !cfg!(all(
        unix,
        not(target_os = "macos"),
        not(target_os = "android")
    )) {
        return None;
    }
    let named = ["DISPLAY", "WAYLAND_DISPLAY", "WAYLAND_SOCKET"]
        .iter()
        .any(|name| var(name).is_some_and(|v| !v.is_empty()));
    (!named).then(|| {
        format!(
            "cannot open the window: there is no display (neither DISPLAY nor \
             WAYLAND_DISPLAY is set). {HINT}."
        )
    })
}

/// Notes that the window is up (call it from `view`).
pub fn shown() {
    SHOWN.store(true, Ordering::Relaxed);
}

/// Runs the event loop; a panic before the first frame (the display refused, the window
/// could not be created) becomes an `Err` with a message for a person, printed
/// without a backtrace. Errors iced returns are worded the same way.
pub fn run_guarded<E: std::fmt::Display>(
    run: impl FnOnce() -> Result<(), E>,
) -> Result<(), String> {
    let said: Arc<Mutex<Option<String>>> = Arc::default();
    let default_hook = Arc::new(panic::take_hook());
    {
        let said = said.clone();
        let default_hook = default_hook.clone();
        panic::set_hook(Box::new(move |info| {
            if SHOWN.load(Ordering::Relaxed) {
                default_hook(info);
            } else if let Ok(mut said) = said.lock() {
                *said = Some(panic_text(info.payload()));
            }
        }));
    }
    let result = panic::catch_unwind(AssertUnwindSafe(run));
    match result {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("cannot open the window: {e}. {HINT}.")),
        Err(payload) => {
            let why = said
                .lock()
                .ok()
                .and_then(|mut s| s.take())
                .unwrap_or_else(|| panic_text(payload.as_ref()));
            if SHOWN.load(Ordering::Relaxed) {
                // A bug after the window was up: let it be the panic it is.
                panic::resume_unwind(payload);
            }
            Err(format!(
                "cannot open the window ({}). {HINT}.",
                display_words(&why)
            ))
        }
    }
}

fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no reason given".to_owned())
}

/// The gist of winit's panic text: "Create event loop: Os(OsError { …, error:
/// Misc(\"neither WAYLAND_DISPLAY …\") })" says little to a person.
fn display_words(panic: &str) -> String {
    if panic.contains("XOpenDisplayFailed") {
        let display = std::env::var("DISPLAY").unwrap_or_default();
        return format!("the X display {display:?} does not answer");
    }
    if let Some(start) = panic.find("error: ") {
        let inner = &panic[start + "error: ".len()..];
        // Misc("…") or XError(…): the quoted part when there is one.
        if let Some(open) = inner.find('"') {
            if let Some(len) = inner[open + 1..].find('"') {
                return inner[open + 1..open + 1 + len].to_owned();
            }
        }
        return inner.strip_suffix(" })").unwrap_or(inner).to_owned();
    }
    panic.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_display_named_is_said_plainly() {
        let none = missing_in(|_| None);
        if cfg!(all(unix, not(target_os = "macos"))) {
            let message = none.expect("no display is a problem");
            assert!(message.contains("no display"), "{message}");
            assert!(message.contains("p2p-transfer send"), "{message}");
            // An empty variable names nothing either.
            assert!(missing_in(|_| Some("".into())).is_some());
        }
        assert_eq!(
            missing_in(|name| (name == "WAYLAND_DISPLAY").then(|| "wayland-0".into())),
            None
        );
        assert_eq!(
            missing_in(|name| (name == "DISPLAY").then(|| ":0".into())),
            None
        );
    }

    #[test]
    fn winits_panic_text_is_boiled_down() {
        let text = "Create event loop: Os(OsError { line: 765, file: \"/x/linux/mod.rs\", \
                    error: Misc(\"neither WAYLAND_DISPLAY nor WAYLAND_SOCKET nor DISPLAY is set.\") })";
        assert_eq!(
            display_words(text),
            "neither WAYLAND_DISPLAY nor WAYLAND_SOCKET nor DISPLAY is set."
        );
        assert_eq!(display_words("Create window"), "Create window");
        assert_eq!(
            display_words(
                "Create event loop: Os(OsError { line: 1, error: XNotSupported(Other) })"
            ),
            "XNotSupported(Other)"
        );
    }
}
