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
pub mod dialog;
pub mod display;
mod format;
pub mod get;
mod get_view;
pub mod get_worker;
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

/// The window's class (X11 `WM_CLASS`) and app id (Wayland): what docks and window
/// managers group it by, and the base name of a `.desktop` file.
pub const APP_ID: &str = "p2p-transfer";

/// Environment variable naming the rendezvous server for one run, over the saved
/// setting (the CLI's too; empty turns it off).
pub const RENDEZVOUS_ENV: &str = "P2P_RENDEZVOUS";

/// The smallest window in which every tab's actions (an offer's Accept and Decline, a
/// send's Start sending) stay on screen.
pub const MIN_SIZE: iced::Size = iced::Size::new(720.0, 480.0);

/// The size the window opens with.
pub const DEFAULT_SIZE: iced::Size = iced::Size::new(900.0, 720.0);

/// The window's settings: size, minimum size, icon and class name.
pub fn window_settings() -> iced::window::Settings {
    iced::window::Settings {
        size: DEFAULT_SIZE,
        min_size: Some(MIN_SIZE),
        icon: icon(),
        #[cfg(all(unix, not(target_os = "macos")))]
        platform_specific: iced::window::settings::PlatformSpecific {
            application_id: APP_ID.to_owned(),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// The window icon, drawn here (no image files to ship): a blue disc with two white
/// arrows passing each other, one each way.
pub fn icon() -> Option<iced::window::Icon> {
    const SIZE: u32 = 64;
    let mut rgba = Vec::with_capacity((SIZE * SIZE * 4) as usize);
    let c = (SIZE as f32 - 1.0) / 2.0;
    for y in 0..SIZE {
        for x in 0..SIZE {
            let (fx, fy) = (x as f32, y as f32);
            let d = ((fx - c).powi(2) + (fy - c).powi(2)).sqrt();
            // Anti-aliased edge of the disc.
            let alpha = (c + 0.5 - d).clamp(0.0, 1.0);
            // Upper arrow to the right, lower arrow to the left.
            let arrow = |row: f32, right: bool| {
                let along = if right { fx } else { SIZE as f32 - 1.0 - fx };
                let off = (fy - row).abs();
                let shaft = (14.0..=40.0).contains(&along) && off <= 3.0;
                let head = (38.0..=50.0).contains(&along) && off <= 50.0 - along;
                shaft || head
            };
            let white = arrow(22.0, true) || arrow(41.0, false);
            let (r, g, b) = if white {
                (255, 255, 255)
            } else {
                (0x25, 0x63, 0xeb)
            };
            rgba.extend_from_slice(&[r, g, b, (alpha * 255.0) as u8]);
        }
    }
    iced::window::icon::from_rgba(rgba, SIZE, SIZE).ok()
}
