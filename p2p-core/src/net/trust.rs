//! Trusted devices: peers accepted without a code.
//!
//! The store is a JSON file, [`TRUST_FILE`] in the data folder, written atomically
//! (temporary file, fsync, rename) with owner-only permissions. A device is remembered
//! by its [`DeviceId`] and, when it was learned from a connection (after a code, or
//! with `--ask`), by its full 256-bit [`Fingerprint`]; one added by hand (`trust add
//! ID`) is matched on the 120 bits of its id. A file that does not parse is reported,
//! never overwritten: fix or move it.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::identity::{DeviceId, Fingerprint};

/// The trust store's file name in the data folder.
pub const TRUST_FILE: &str = "trusted-devices.json";
/// The file format's version.
const FORMAT: u32 = 1;
/// Longest name kept for a device, in bytes.
pub const MAX_TRUSTED_NAME: usize = 64;
/// Most devices a store holds.
pub const MAX_TRUSTED: usize = 10_000;

/// One trusted device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrustedDevice {
    pub id: DeviceId,
    /// A name for people (the peer's device name when it was remembered, or what the
    /// user chose). Shown escaped like any peer text.
    pub name: String,
    /// The full key fingerprint (hex), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    /// When it was added, seconds since the Unix epoch.
    #[serde(default)]
    pub added: u64,
}

impl TrustedDevice {
    /// Whether the key with `fingerprint` is this device.
    pub fn matches(&self, fingerprint: &Fingerprint) -> bool {
        match self.fingerprint.as_deref().and_then(Fingerprint::from_hex) {
            Some(known) => known == *fingerprint,
            None => self.id.matches(fingerprint),
        }
    }
}

#[derive(Serialize, Deserialize)]
struct File {
    version: u32,
    devices: Vec<TrustedDevice>,
}

/// Problems with the trust store.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("cannot read the trusted devices {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write the trusted devices {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the trusted devices file {} is damaged ({reason}); it was left as it is: fix or \
         move it",
        path.display()
    )]
    Corrupt { path: PathBuf, reason: String },
}

/// The trusted devices, as loaded from (and saved to) one file.
#[derive(Debug, Clone)]
pub struct TrustStore {
    path: PathBuf,
    devices: Vec<TrustedDevice>,
}

impl TrustStore {
    /// The store in data folder `dir`. A missing file is an empty store.
    pub fn load(dir: &Path) -> Result<Self, TrustError> {
        let path = dir.join(TRUST_FILE);
        let devices = match std::fs::read(&path) {
            Ok(bytes) => {
                let corrupt = |reason: String| TrustError::Corrupt {
                    path: path.clone(),
                    reason,
                };
                let file: File =
                    serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
                if file.version != FORMAT {
                    return Err(corrupt(format!("format version {}", file.version)));
                }
                if file.devices.len() > MAX_TRUSTED {
                    return Err(corrupt(format!("more than {MAX_TRUSTED} devices")));
                }
                file.devices
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(source) => return Err(TrustError::Read { path, source }),
        };
        Ok(TrustStore { path, devices })
    }

    /// An empty store that is never saved (tests and embedders).
    pub fn in_memory(devices: Vec<TrustedDevice>) -> Self {
        TrustStore {
            path: PathBuf::new(),
            devices,
        }
    }

    /// The file behind the store.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The devices, in the order they were added.
    pub fn devices(&self) -> &[TrustedDevice] {
        &self.devices
    }

    /// The trusted device with this key, if any.
    pub fn find(&self, fingerprint: &Fingerprint) -> Option<&TrustedDevice> {
        self.devices.iter().find(|d| d.matches(fingerprint))
    }

    /// The trusted device with this id, if any.
    pub fn get(&self, id: &DeviceId) -> Option<&TrustedDevice> {
        self.devices.iter().find(|d| d.id == *id)
    }

    /// Adds a device, or updates its name and fingerprint when it is there already.
    pub fn add(&mut self, id: DeviceId, name: &str, fingerprint: Option<Fingerprint>) {
        let name = clean_name(name);
        let fingerprint = fingerprint.map(|f| f.to_hex());
        if let Some(known) = self.devices.iter_mut().find(|d| d.id == id) {
            known.name = name;
            if fingerprint.is_some() {
                known.fingerprint = fingerprint;
            }
            return;
        }
        let added = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.devices.push(TrustedDevice {
            id,
            name,
            fingerprint,
            added,
        });
    }

    /// Renames a device; `false` when it is not in the store.
    pub fn rename(&mut self, id: &DeviceId, name: &str) -> bool {
        match self.devices.iter_mut().find(|d| d.id == *id) {
            Some(d) => {
                d.name = clean_name(name);
                true
            }
            None => false,
        }
    }

    /// Removes a device; `false` when it was not in the store.
    pub fn remove(&mut self, id: &DeviceId) -> bool {
        let before = self.devices.len();
        self.devices.retain(|d| d.id != *id);
        self.devices.len() != before
    }

    /// Writes the store: temporary file, fsync, rename, owner-only permissions.
    pub fn save(&self) -> Result<(), TrustError> {
        let write = |source| TrustError::Write {
            path: self.path.clone(),
            source,
        };
        let dir = self
            .path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .ok_or_else(|| write(std::io::ErrorKind::InvalidInput.into()))?;
        std::fs::create_dir_all(dir).map_err(write)?;
        let file = File {
            version: FORMAT,
            devices: self.devices.clone(),
        };
        let mut json =
            serde_json::to_vec_pretty(&file).map_err(|e| write(std::io::Error::other(e)))?;
        json.push(b'\n');
        let temp = dir.join(format!(".{TRUST_FILE}.{}.tmp", std::process::id()));
        let result = (|| {
            use std::io::Write;
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create(true).truncate(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let mut f = options.open(&temp)?;
            f.write_all(&json)?;
            f.sync_all()?;
            std::fs::rename(&temp, &self.path)?;
            if let Ok(d) = std::fs::File::open(dir) {
                let _ = d.sync_all();
            }
            Ok(())
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&temp);
        }
        result.map_err(write)
    }
}

/// A name as stored: peer text made printable and cut to [`MAX_TRUSTED_NAME`] bytes.
fn clean_name(name: &str) -> String {
    let name = crate::text::printable_truncated(name.trim(), MAX_TRUSTED_NAME).into_owned();
    if name.is_empty() {
        "unnamed device".to_owned()
    } else {
        name
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::identity::Identity;

    #[test]
    fn remember_list_rename_remove_and_reload() {
        let dir = tempfile::tempdir().unwrap();
        let peer = Identity::generate().unwrap();
        let other = Identity::generate().unwrap();
        let mut store = TrustStore::load(dir.path()).unwrap();
        assert!(store.devices().is_empty());
        store.add(
            peer.device_id(),
            "laptop\u{1b}[2J",
            Some(peer.fingerprint()),
        );
        store.add(other.device_id(), "phone", None);
        store.save().unwrap();

        let mut store = TrustStore::load(dir.path()).unwrap();
        assert_eq!(store.devices().len(), 2);
        assert_eq!(store.devices()[0].name, r"laptop\u{1b}[2J");
        assert!(store.find(&peer.fingerprint()).is_some());
        assert!(
            store.find(&other.fingerprint()).is_some(),
            "matched on the id"
        );
        assert!(store.rename(&other.device_id(), "tablet"));
        assert!(store.remove(&peer.device_id()));
        assert!(!store.remove(&peer.device_id()));
        store.save().unwrap();

        let store = TrustStore::load(dir.path()).unwrap();
        assert!(store.find(&peer.fingerprint()).is_none());
        assert_eq!(store.devices()[0].name, "tablet");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(store.path())
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn a_known_fingerprint_is_not_fooled_by_a_key_with_the_same_id_prefix() {
        let peer = Identity::generate().unwrap();
        let mut store = TrustStore::in_memory(Vec::new());
        store.add(peer.device_id(), "laptop", Some(peer.fingerprint()));
        let mut forged = peer.fingerprint();
        forged.0[31] ^= 1; // same 120-bit id, different key
        assert!(store.find(&forged).is_none());
    }

    #[test]
    fn a_damaged_file_is_reported_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(TRUST_FILE),
            b"{\"version\":1,\"devices\":[{",
        )
        .unwrap();
        let err = TrustStore::load(dir.path()).unwrap_err();
        assert!(matches!(err, TrustError::Corrupt { .. }), "{err}");
        assert_eq!(
            std::fs::read(dir.path().join(TRUST_FILE)).unwrap(),
            b"{\"version\":1,\"devices\":[{"
        );
    }
}
