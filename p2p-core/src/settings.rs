//! The user's saved settings: transfer parameters and receive defaults, kept as JSON in
//! the user's configuration folder so that every front end starts from the same values.
//!
//! This module owns where the file lives ([`Settings::dir`]), its format, tolerant
//! loading (a missing file means defaults, unknown keys are ignored so an older build can
//! read a newer file, out-of-range values are reported) and atomic saving (temp file,
//! fsync, rename). When to load and save, and how to show the values, is the front
//! end's business.
//!
//! [`Settings::auto_reconnect`] and [`Settings::max_retries`] configure
//! [`crate::reconnect::Reconnect`]; [`Settings::auto_accept`] whether a front end asks
//! before taking an incoming transfer ([`crate::P2PSession::receive_with`]).
//!
//! ```
//! # fn demo() -> Result<(), p2p_core::settings::SettingsError> {
//! use p2p_core::settings::Settings;
//! let dir = std::env::temp_dir().join("p2p-settings-doc");
//! let mut settings = Settings::load(&dir)?; // defaults when there is no file yet
//! settings.window_size = 32;
//! settings.save(&dir)?;
//! assert_eq!(Settings::load(&dir)?.window_size, 32);
//! # Ok(()) }
//! ```

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config;
use crate::error::StorageError;
use crate::wire::SessionConfig;

/// Environment variable naming the folder that holds the settings file; it overrides the
/// platform's configuration folder (tests point it at a temporary folder).
pub const CONFIG_DIR_ENV: &str = "P2P_TRANSFER_CONFIG_DIR";
/// Name of the settings file inside [`Settings::dir`].
pub const SETTINGS_FILE: &str = "settings.json";
/// Port a listening side uses unless told otherwise.
pub const DEFAULT_LISTEN_PORT: u16 = crate::net::tcp::DEFAULT_PORT;

/// Everything a user can set once and keep.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    /// Raw bytes per chunk.
    pub chunk_size: u32,
    /// Chunks in flight at once.
    pub window_size: u32,
    /// Whether chunks may be compressed.
    pub compress: bool,
    /// zstd level, -7 (fastest) to 22 (smallest).
    pub compress_level: i8,
    /// Stop compressing data that does not shrink.
    pub adaptive: bool,
    /// Most bytes per second to send; 0 means unlimited ([`Settings::max_speed`]).
    pub bandwidth_limit: u64,
    /// Reconnect and resume after a dropped connection.
    pub auto_reconnect: bool,
    /// How many times to reconnect before giving up (0 = no limit).
    pub max_retries: u32,
    /// Port to listen on when waiting for a peer.
    pub listen_port: u16,
    /// Folder received files go to; `None` means [`Settings::output_dir_or_default`].
    pub output_dir: Option<PathBuf>,
    /// Replace existing files instead of refusing the transfer.
    pub overwrite: bool,
    /// Take incoming transfers without asking (off: show each offer's files and size,
    /// and wait for Accept or Decline).
    pub auto_accept: bool,
    /// What to connect over and listen on: `auto` (QUIC where it connects, TCP
    /// otherwise), `quic` or `tcp` ([`crate::net::TransportChoice`]).
    pub transport: crate::net::TransportChoice,
    /// The rendezvous server (`host:port`) that codes go through to reach a peer on
    /// any network; `None`: codes work on this network only (LAN discovery).
    pub rendezvous: Option<String>,
}

impl Default for Settings {
    fn default() -> Self {
        let config = config::default_config();
        Self {
            chunk_size: config.chunk_size,
            window_size: config.window_size,
            compress: config.compress,
            compress_level: config.compress_level,
            adaptive: config.adaptive,
            bandwidth_limit: 0,
            auto_reconnect: true,
            max_retries: 5,
            listen_port: DEFAULT_LISTEN_PORT,
            output_dir: None,
            overwrite: false,
            auto_accept: false,
            transport: crate::net::TransportChoice::Auto,
            rendezvous: None,
        }
    }
}

/// Why settings could not be loaded or saved.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// The file or its folder could not be read or written.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The file is not JSON, or a value has the wrong type.
    #[error("{path:?} is not a valid settings file: {message}")]
    Format { path: PathBuf, message: String },
    /// A value is outside what the protocol accepts.
    #[error("{path:?} holds an invalid setting: {message}")]
    Invalid { path: PathBuf, message: String },
}

impl Settings {
    /// The send-rate limit for [`crate::SessionOptions::max_speed`].
    pub fn max_speed(&self) -> Option<u64> {
        (self.bandwidth_limit > 0).then_some(self.bandwidth_limit)
    }

    /// The folder holding the settings file: `$P2P_TRANSFER_CONFIG_DIR` when set, else
    /// `p2p-transfer` inside the platform's configuration folder (`~/.config` on Linux).
    /// `None` when neither is known.
    pub fn dir() -> Option<PathBuf> {
        match std::env::var_os(CONFIG_DIR_ENV) {
            Some(dir) if !dir.is_empty() => Some(PathBuf::from(dir)),
            _ => dirs::config_dir().map(|d| d.join("p2p-transfer")),
        }
    }

    /// Reads `dir/settings.json`. A missing file gives the defaults; keys this build does
    /// not know are ignored; missing keys take their defaults.
    pub fn load(dir: &Path) -> Result<Self, SettingsError> {
        let path = dir.join(SETTINGS_FILE);
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => return Err(StorageError::new("cannot read", &path, e).into()),
        };
        let settings: Self = serde_json::from_str(&text).map_err(|e| SettingsError::Format {
            path: path.clone(),
            message: e.to_string(),
        })?;
        settings
            .validate()
            .map_err(|message| SettingsError::Invalid {
                path: path.clone(),
                message,
            })?;
        Ok(settings)
    }

    /// Writes `dir/settings.json` atomically (temp file, fsync, rename), creating `dir`.
    pub fn save(&self, dir: &Path) -> Result<(), SettingsError> {
        let path = dir.join(SETTINGS_FILE);
        let text = serde_json::to_string_pretty(self).map_err(|e| SettingsError::Format {
            path: path.clone(),
            message: e.to_string(),
        })?;
        fs::create_dir_all(dir).map_err(|e| StorageError::new("cannot create", dir, e))?;
        let temp = dir.join(format!(".{SETTINGS_FILE}.tmp"));
        let write = || -> io::Result<()> {
            let mut file = fs::File::create(&temp)?;
            file.write_all(text.as_bytes())?;
            file.sync_all()
        };
        if let Err(e) = write() {
            let _ = fs::remove_file(&temp);
            return Err(StorageError::new("cannot write", &temp, e).into());
        }
        fs::rename(&temp, &path).map_err(|e| StorageError::new("cannot replace", &path, e))?;
        Ok(())
    }

    /// Checks the transfer parameters against the protocol's limits.
    pub fn validate(&self) -> Result<(), String> {
        config::validate(&self.session_config()).map_err(|e| e.to_string())
    }

    /// The transfer parameters to propose when connecting.
    pub fn session_config(&self) -> SessionConfig {
        SessionConfig {
            chunk_size: self.chunk_size,
            window_size: self.window_size,
            compress: self.compress,
            compress_level: self.compress_level,
            adaptive: self.adaptive,
        }
    }

    /// The transfer parameters to offer when accepting. The accepting side's values are
    /// ceilings ([`config::negotiate`] takes the smaller of both sides), so chunk and
    /// window sizes left at their defaults are raised to the protocol maxima: the
    /// connecting side's choices then apply, unless the user asked for less here.
    pub fn responder_config(&self) -> SessionConfig {
        let mut config = self.session_config();
        let defaults = config::default_config();
        let ceilings = config::ceilings(config.compress);
        if config.chunk_size == defaults.chunk_size {
            config.chunk_size = ceilings.chunk_size;
        }
        if config.window_size == defaults.window_size {
            config.window_size = ceilings.window_size;
        }
        config
    }

    /// The folder to receive into: the saved one, else [`downloads_dir`].
    pub fn output_dir_or_default(&self) -> PathBuf {
        self.output_dir
            .clone()
            .unwrap_or_else(|| downloads_dir(dirs::download_dir(), dirs::home_dir()))
    }
}

/// Where received files go by default: the desktop's Downloads folder, else
/// `~/Downloads` (created when the first transfer arrives) — a full path a person can
/// find, never the working directory of whatever started the program. Only without a
/// home folder: the current directory, as a full path when it can be read.
pub fn downloads_dir(xdg_download: Option<PathBuf>, home: Option<PathBuf>) -> PathBuf {
    xdg_download
        .or_else(|| home.map(|home| home.join("Downloads")))
        .or_else(|| std::env::current_dir().ok())
        .unwrap_or_else(|| PathBuf::from("."))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn received_files_go_to_downloads_in_home_when_the_desktop_names_none() {
        let home = PathBuf::from("/home/ada");
        assert_eq!(
            downloads_dir(None, Some(home.clone())),
            home.join("Downloads")
        );
        let xdg = PathBuf::from("/home/ada/Téléchargements");
        assert_eq!(downloads_dir(Some(xdg.clone()), Some(home)), xdg);
        assert!(downloads_dir(None, None).is_absolute());
    }

    #[test]
    fn missing_file_gives_defaults_and_saving_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let nested = dir.path().join("a/b");
        assert_eq!(Settings::load(&nested).unwrap(), Settings::default());
        let settings = Settings {
            chunk_size: 256 * 1024,
            window_size: 64,
            compress: false,
            compress_level: -3,
            adaptive: false,
            bandwidth_limit: 10 << 20,
            auto_reconnect: false,
            max_retries: 9,
            listen_port: 4000,
            output_dir: Some("/tmp/in".into()),
            overwrite: true,
            auto_accept: true,
            transport: crate::net::TransportChoice::Quic,
            rendezvous: Some("rdv.example.net:4000".into()),
        };
        settings.save(&nested).unwrap();
        let saved = std::fs::read_to_string(nested.join(SETTINGS_FILE)).unwrap();
        assert!(saved.contains("\"transport\": \"quic\""), "{saved}");
        assert_eq!(Settings::load(&nested).unwrap(), settings);
        assert!(!nested.join(format!(".{SETTINGS_FILE}.tmp")).exists());
    }

    #[test]
    fn unknown_keys_are_ignored_and_missing_keys_default() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join(SETTINGS_FILE),
            r#"{"window_size": 8, "future_knob": "yes"}"#,
        )
        .unwrap();
        let loaded = Settings::load(dir.path()).unwrap();
        assert_eq!(loaded.window_size, 8);
        assert_eq!(loaded.chunk_size, Settings::default().chunk_size);
    }

    #[test]
    fn broken_and_out_of_range_files_are_reported_not_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(SETTINGS_FILE);
        fs::write(&file, r#"{"window_size": "many"}"#).unwrap();
        assert!(matches!(
            Settings::load(dir.path()),
            Err(SettingsError::Format { .. })
        ));
        fs::write(&file, r#"{"chunk_size": 3}"#).unwrap();
        let err = Settings::load(dir.path()).unwrap_err();
        assert!(matches!(err, SettingsError::Invalid { .. }), "{err}");
        assert!(err.to_string().contains("chunk size 3"), "{err}");
    }

    #[test]
    fn responder_raises_untouched_sizes_to_the_ceilings() {
        let defaults = Settings::default().responder_config();
        assert_eq!(defaults.chunk_size, config::MAX_CHUNK_SIZE);
        assert_eq!(defaults.window_size, config::MAX_WINDOW_SIZE);
        let chosen = Settings {
            window_size: 4,
            ..Settings::default()
        };
        assert_eq!(chosen.responder_config().window_size, 4);
    }
}
