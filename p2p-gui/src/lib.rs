//! Desktop front end of p2p-transfer, built with [iced](https://iced.rs).
//!
//! The window has five tabs — Connection, Send, Receive, Settings, History — and under
//! them, whatever the tab, the progress of the running transfer and the connection
//! status. It renders the same [`p2p_core::TransferEvent`]s the CLI renders and holds no
//! protocol or file logic: sessions, manifests, settings files and errors all come from
//! `p2p-core`.
//!
//! ## Layout
//!
//! | module | owns |
//! |---|---|
//! | [`app`] | the state, the [`Message`]s and `update` |
//! | `view` | drawing the state (tabs, transfer panel, status bar) |
//! | [`worker`] | the task that runs a p2p-core session and reports [`worker::WorkerEvent`]s |
//! | [`progress`] | a transfer's bytes, speed and time left, folded from core events |
//! | [`settings_form`] | the Settings tab's typed fields, checked before they are saved |
//! | [`history`] | the History tab's records (p2p-core's history file) and filters |
//! | [`peers`] | finding receivers on the local network (p2p-core discovery) |
//! | [`trust`] | the trusted devices (p2p-core's trust store) and remembering a peer |
//!
//! The window never waits on the network or the disk: the worker runs in an iced task on
//! the tokio executor and only sends messages back. Progress arrives at most ten times
//! a second (the core coalesces it), so rendering cannot slow a transfer down.

pub mod app;
mod format;
pub mod history;
pub mod peers;
pub mod progress;
pub mod settings_form;
pub mod trust;
mod view;
pub mod worker;

pub use app::{App, Launch, Message, Tab};

/// The font every label uses; it is built in, so the window looks the same everywhere
/// (and under Xvfb, where no system fonts may be installed).
pub const FONT: iced::Font = iced::Font::with_name("Fira Sans");

/// How a peer got in, in words (offers, the status bar, stderr): the one line a person
/// reads before accepting anything from it. A trusted device's name is shown escaped.
pub fn admitted(admitted: &p2p_core::net::Admitted) -> String {
    use p2p_core::net::Admitted;
    match admitted {
        Admitted::Code => "proved the one-time code".to_owned(),
        Admitted::Trusted { name } => {
            format!("trusted as {}", p2p_core::text::printable(name))
        }
        Admitted::SameDevice => "this device (the same key)".to_owned(),
        Admitted::Pinned => "the pinned device".to_owned(),
        Admitted::Unknown => "NOT trusted: no code, not one of your trusted devices".to_owned(),
    }
}

/// How a peer got in, in a word or two (the status bar).
pub fn admitted_short(admitted: &p2p_core::net::Admitted) -> &'static str {
    use p2p_core::net::Admitted;
    match admitted {
        Admitted::Code => "proved the one-time code",
        Admitted::Trusted { .. } => "trusted",
        Admitted::SameDevice => "this device",
        Admitted::Pinned => "the pinned device",
        Admitted::Unknown => "NOT trusted",
    }
}

/// The theme of the window.
pub fn theme(_app: &App) -> iced::Theme {
    iced::Theme::Light
}
