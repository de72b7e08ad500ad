//! The Settings tab's editing state: the text the user is typing, checked before it
//! reaches [`Settings`]. A value that does not parse or is out of range stays in the
//! field with a note under it and is not saved.

use p2p_core::config::{COMPRESS_LEVELS, MAX_WINDOW_SIZE};
use p2p_core::net::traversal::DEFAULT_RENDEZVOUS_PORT;
use p2p_core::net::TransportChoice;
use p2p_core::settings::Settings;

use crate::format;

/// Chunk sizes offered in the list.
pub const CHUNK_SIZES: [u32; 5] = [64 << 10, 256 << 10, 1 << 20, 4 << 20, 16 << 20];

/// The transports offered, each with its label and one line of help, in the order
/// shown.
pub const TRANSPORTS: [(TransportChoice, &str, &str); 3] = [
    (
        TransportChoice::Auto,
        "Automatic (recommended)",
        "QUIC where it connects, TCP otherwise — and TCP to this same machine, where it \
         is faster.",
    ),
    (
        TransportChoice::Quic,
        "QUIC",
        "Fast on long or lossy links (its own congestion control); needs UDP to get \
         through.",
    ),
    (
        TransportChoice::Tcp,
        "TCP",
        "For networks that block UDP; the operating system's congestion control.",
    ),
];

/// A chunk size as the list shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkSize(pub u32);

impl std::fmt::Display for ChunkSize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&format::bytes(u64::from(self.0)))
    }
}

/// An edit on the Settings tab.
#[derive(Debug, Clone)]
pub enum SettingsMessage {
    ChunkSize(ChunkSize),
    Window(String),
    Compress(bool),
    /// The level slider moved (saved when it is released).
    Level(i16),
    LevelReleased,
    Adaptive(bool),
    /// MiB/s; empty or 0 means unlimited.
    BandwidthLimit(String),
    AutoReconnect(bool),
    Retries(String),
    /// Which transports to connect (and listen) with.
    Transport(TransportChoice),
    /// The rendezvous server, `host:port`; empty: codes work on this network only.
    Rendezvous(String),
}

/// One line of help under the rendezvous field.
pub const RENDEZVOUS_HELP: &str = "Codes work across the internet through this server; \
                                   empty: this network only.";

/// The rendezvous server typed (`host:port`, or a host: the default port is added),
/// checked: `Ok(None)` when empty (off), the words to show when it is no address.
pub fn rendezvous_server(typed: &str) -> Result<Option<String>, String> {
    let typed = typed.trim();
    if typed.is_empty() {
        return Ok(None);
    }
    let bad = || {
        Err(format!(
            "{typed:?} is not a server address: type HOST:PORT, for example \
             rendezvous.example.net:{port} or 203.0.113.7:{port} (empty: this network only).",
            port = DEFAULT_RENDEZVOUS_PORT
        ))
    };
    if typed.parse::<std::net::SocketAddr>().is_ok() {
        return Ok(Some(typed.to_owned()));
    }
    // An IPv6 address needs brackets to take a port.
    if let Ok(ip) = typed.parse::<std::net::IpAddr>() {
        return Ok(Some(
            std::net::SocketAddr::new(ip, DEFAULT_RENDEZVOUS_PORT).to_string(),
        ));
    }
    let (host, port) = match typed.rsplit_once(':') {
        Some((host, port)) => match port.parse::<u16>() {
            Ok(port) if port > 0 => (host, port),
            _ => {
                return Err(format!(
                    "{port:?} is not a port: a number from 1 to 65535, as in \
                     {host}:{DEFAULT_RENDEZVOUS_PORT}."
                ))
            }
        },
        None => (typed, DEFAULT_RENDEZVOUS_PORT),
    };
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.len() > 253 || !host.split('.').all(label_ok) {
        return bad();
    }
    Ok(Some(format!("{host}:{port}")))
}

/// Text of the typed fields and what is wrong with them.
#[derive(Debug, Clone, Default)]
pub struct SettingsForm {
    pub window: String,
    pub window_error: Option<String>,
    pub bandwidth: String,
    pub bandwidth_error: Option<String>,
    pub retries: String,
    pub retries_error: Option<String>,
    pub rendezvous: String,
    pub rendezvous_error: Option<String>,
}

impl SettingsForm {
    pub fn new(settings: &Settings) -> Self {
        Self {
            window: settings.window_size.to_string(),
            bandwidth: mib_per_s(settings.bandwidth_limit),
            retries: settings.max_retries.to_string(),
            rendezvous: settings.rendezvous.clone().unwrap_or_default(),
            ..Self::default()
        }
    }

    /// The chunk sizes to offer: the standard ones plus the saved one if it is unusual.
    pub fn chunk_sizes(settings: &Settings) -> Vec<ChunkSize> {
        let mut sizes: Vec<ChunkSize> = CHUNK_SIZES.iter().copied().map(ChunkSize).collect();
        if !CHUNK_SIZES.contains(&settings.chunk_size) {
            sizes.push(ChunkSize(settings.chunk_size));
            sizes.sort_by_key(|c| c.0);
        }
        sizes
    }

    /// Applies an edit. Returns whether `settings` changed and should be saved.
    pub fn apply(&mut self, message: SettingsMessage, settings: &mut Settings) -> bool {
        match message {
            SettingsMessage::ChunkSize(size) => settings.chunk_size = size.0,
            SettingsMessage::Window(text) => {
                let parsed = text
                    .trim()
                    .parse::<u32>()
                    .ok()
                    .filter(|w| (1..=MAX_WINDOW_SIZE).contains(w));
                self.window = text;
                self.window_error = match parsed {
                    Some(window) => {
                        settings.window_size = window;
                        None
                    }
                    None => Some(format!("A whole number from 1 to {MAX_WINDOW_SIZE}.")),
                };
                if self.window_error.is_some() {
                    return false;
                }
            }
            SettingsMessage::Compress(on) => settings.compress = on,
            SettingsMessage::Level(level) => {
                settings.compress_level = level
                    .clamp(
                        i16::from(*COMPRESS_LEVELS.start()),
                        i16::from(*COMPRESS_LEVELS.end()),
                    )
                    .try_into()
                    .unwrap_or(settings.compress_level);
                return false;
            }
            SettingsMessage::LevelReleased => {}
            SettingsMessage::Adaptive(on) => settings.adaptive = on,
            SettingsMessage::BandwidthLimit(text) => {
                let trimmed = text.trim();
                let parsed = if trimmed.is_empty() {
                    Some(0.0)
                } else {
                    trimmed
                        .parse::<f64>()
                        .ok()
                        .filter(|v| v.is_finite() && *v >= 0.0 && *v < 1e9)
                };
                self.bandwidth = text;
                self.bandwidth_error = match parsed {
                    Some(mib) => {
                        settings.bandwidth_limit = (mib * 1024.0 * 1024.0).round() as u64;
                        None
                    }
                    None => Some("MiB per second, for example 2.5; 0 for unlimited.".to_owned()),
                };
                if self.bandwidth_error.is_some() {
                    return false;
                }
            }
            SettingsMessage::AutoReconnect(on) => settings.auto_reconnect = on,
            SettingsMessage::Transport(choice) => settings.transport = choice,
            SettingsMessage::Rendezvous(text) => {
                let checked = rendezvous_server(&text);
                self.rendezvous = text;
                match checked {
                    Ok(server) => {
                        self.rendezvous_error = None;
                        // Saved as typed (a host alone gets the default port when used).
                        settings.rendezvous = server.map(|_| self.rendezvous.trim().to_owned());
                    }
                    Err(error) => {
                        self.rendezvous_error = Some(error);
                        return false;
                    }
                }
            }
            SettingsMessage::Retries(text) => {
                let parsed = text.trim().parse::<u32>().ok();
                self.retries = text;
                self.retries_error = match parsed {
                    Some(retries) => {
                        settings.max_retries = retries;
                        None
                    }
                    None => Some("A whole number; 0 for no limit.".to_owned()),
                };
                if self.retries_error.is_some() {
                    return false;
                }
            }
        }
        true
    }
}

/// Bytes per second as MiB/s text, `0` for unlimited.
fn mib_per_s(bytes: u64) -> String {
    if bytes == 0 {
        return "0".to_owned();
    }
    let text = format!("{:.2}", bytes as f64 / (1024.0 * 1024.0));
    text.trim_end_matches('0').trim_end_matches('.').to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_values_are_checked_before_they_reach_the_settings() {
        let mut settings = Settings::default();
        let mut form = SettingsForm::new(&settings);
        assert!(!form.apply(SettingsMessage::Window("0".into()), &mut settings));
        assert!(form.window_error.is_some());
        assert_eq!(settings.window_size, Settings::default().window_size);
        assert!(form.apply(SettingsMessage::Window("32".into()), &mut settings));
        assert_eq!(
            (settings.window_size, form.window_error.clone()),
            (32, None)
        );

        assert!(form.apply(SettingsMessage::BandwidthLimit("2.5".into()), &mut settings));
        assert_eq!(settings.bandwidth_limit, 2_621_440);
        assert_eq!(SettingsForm::new(&settings).bandwidth, "2.5");
        assert!(!form.apply(SettingsMessage::BandwidthLimit("-1".into()), &mut settings));
        assert!(form.apply(
            SettingsMessage::BandwidthLimit(String::new()),
            &mut settings
        ));
        assert_eq!(settings.bandwidth_limit, 0);

        assert!(!form.apply(SettingsMessage::Retries("many".into()), &mut settings));
        assert!(!form.apply(SettingsMessage::Level(40), &mut settings));
        assert_eq!(settings.compress_level, 22);
        assert!(form.apply(SettingsMessage::LevelReleased, &mut settings));
    }

    #[test]
    fn the_transport_choice_reaches_the_settings_and_every_choice_is_offered() {
        let mut settings = Settings::default();
        let mut form = SettingsForm::new(&settings);
        assert_eq!(settings.transport, TransportChoice::Auto);
        for choice in [
            TransportChoice::Quic,
            TransportChoice::Tcp,
            TransportChoice::Auto,
        ] {
            assert!(form.apply(SettingsMessage::Transport(choice), &mut settings));
            assert_eq!(settings.transport, choice);
        }
        let offered: Vec<TransportChoice> = TRANSPORTS.iter().map(|(c, ..)| *c).collect();
        assert_eq!(
            offered,
            [
                TransportChoice::Auto,
                TransportChoice::Quic,
                TransportChoice::Tcp
            ]
        );
        assert!(TRANSPORTS.iter().all(|(_, label, help)| !label.is_empty()
            && help.ends_with('.')
            && !help.contains('\n')));
    }

    #[test]
    fn a_rendezvous_server_is_checked_before_it_is_saved() {
        let mut settings = Settings::default();
        let mut form = SettingsForm::new(&settings);
        assert!(form.apply(
            SettingsMessage::Rendezvous(" rdv.example.net:4100 ".into()),
            &mut settings
        ));
        assert_eq!(settings.rendezvous.as_deref(), Some("rdv.example.net:4100"));
        assert_eq!(
            SettingsForm::new(&settings).rendezvous,
            "rdv.example.net:4100"
        );
        for bad in [
            "rdv.example.net:",
            "rdv.example.net:99999",
            "no spaces.net",
            "a:b:c",
            "-x.net",
        ] {
            assert!(
                !form.apply(SettingsMessage::Rendezvous(bad.into()), &mut settings),
                "{bad}"
            );
            let error = form.rendezvous_error.clone().unwrap_or_default();
            assert!(
                error.contains("HOST:PORT") || error.contains("port"),
                "{bad}: {error}"
            );
            assert_eq!(settings.rendezvous.as_deref(), Some("rdv.example.net:4100"));
        }
        assert!(form.apply(SettingsMessage::Rendezvous(String::new()), &mut settings));
        assert_eq!(
            (settings.rendezvous.clone(), form.rendezvous_error.clone()),
            (None, None)
        );
        assert_eq!(
            rendezvous_server("203.0.113.7"),
            Ok(Some("203.0.113.7:4000".into()))
        );
        assert_eq!(rendezvous_server("::1"), Ok(Some("[::1]:4000".into())));
        assert_eq!(rendezvous_server("[::1]:5"), Ok(Some("[::1]:5".into())));
        assert_eq!(
            rendezvous_server("rdv.example"),
            Ok(Some("rdv.example:4000".into()))
        );
        assert!(RENDEZVOUS_HELP.ends_with('.') && !RENDEZVOUS_HELP.contains("  "));
    }

    #[test]
    fn an_unusual_saved_chunk_size_is_offered_too() {
        let settings = Settings {
            chunk_size: 3 << 20,
            ..Settings::default()
        };
        let sizes = SettingsForm::chunk_sizes(&settings);
        assert_eq!(sizes.len(), 6);
        assert!(sizes.contains(&ChunkSize(3 << 20)));
    }
}
