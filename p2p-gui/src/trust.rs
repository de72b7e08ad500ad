//! The trusted devices: p2p-core's trust store (`trusted-devices.json` in the data
//! folder, the file `p2p-transfer trust` edits), listed on the Settings tab, and where
//! "Remember this device" adds a peer.
//!
//! Every edit reads the file afresh, changes it and saves it (temporary file, fsync,
//! rename: `TrustStore::save`) off the UI thread, one edit at a time, so a change made
//! meanwhile by the command line is kept. A file that does not parse is reported and
//! never written: the edit fails with the core's message, and the list shows it.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use p2p_core::net::{DeviceId, Fingerprint, TrustStore, TrustedDevice};

/// An edit on the Settings tab's list, or its outcome.
#[derive(Debug, Clone)]
pub enum TrustMessage {
    /// Start renaming this device (its name goes into the field).
    Rename(DeviceId),
    /// The new name being typed.
    NameChanged(String),
    SaveName,
    CancelRename,
    Remove(DeviceId),
    /// An edit was saved (the devices now in the file, and what to say), or failed.
    Saved(Result<(Vec<TrustedDevice>, String), String>),
}

/// A change to the trust store.
#[derive(Debug, Clone)]
pub enum Edit {
    /// Trust a device (or update its name and key) — "Remember this device".
    Add {
        id: DeviceId,
        name: String,
        fingerprint: Option<Fingerprint>,
    },
    Rename {
        id: DeviceId,
        name: String,
    },
    Remove {
        id: DeviceId,
    },
}

/// The Settings tab's view of the trust store.
#[derive(Debug)]
pub struct Trusted {
    /// The data folder holding the file; `None`: there is none, nothing can be trusted.
    dir: Option<PathBuf>,
    /// The devices as last read or written, or why the file cannot be used.
    pub devices: Result<Vec<TrustedDevice>, String>,
    /// The device being renamed, and the name typed so far.
    pub renaming: Option<(DeviceId, String)>,
    /// What the last edit did, or why it failed.
    pub status: Option<Result<String, String>>,
    /// Edits being saved right now.
    pub writes: usize,
}

impl Trusted {
    /// Reads the trust store in `dir`.
    pub fn load(dir: Option<PathBuf>) -> Self {
        let mut trusted = Self {
            dir,
            devices: Ok(Vec::new()),
            renaming: None,
            status: None,
            writes: 0,
        };
        trusted.reload();
        trusted
    }

    /// Reads the file again (the command line may have changed it). Returns the
    /// devices to let in: none when the file cannot be used.
    pub fn reload(&mut self) -> Vec<TrustedDevice> {
        self.devices = match &self.dir {
            None => Err(
                "Trusted devices cannot be kept: there is no data folder (set \
                 P2P_TRANSFER_DATA_DIR)."
                    .to_owned(),
            ),
            Some(dir) => TrustStore::load(dir)
                .map(|store| store.devices().to_vec())
                .map_err(|e| e.to_string()),
        };
        self.devices.clone().unwrap_or_default()
    }

    /// The data folder, if there is one.
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// The trusted device with this id, if the list has it.
    pub fn get(&self, id: &DeviceId) -> Option<&TrustedDevice> {
        self.devices.as_ref().ok()?.iter().find(|d| d.id == *id)
    }
}

/// One edit at a time, across windows of this process.
static EDITING: Mutex<()> = Mutex::new(());

/// Applies `edit` to the trust store in `dir` off the UI thread: read, change, save.
/// Returns the devices now in the file and a sentence saying what happened.
pub async fn apply(dir: PathBuf, edit: Edit) -> Result<(Vec<TrustedDevice>, String), String> {
    tokio::task::spawn_blocking(move || {
        let _one_at_a_time = EDITING.lock().unwrap_or_else(|p| p.into_inner());
        let mut store = TrustStore::load(&dir).map_err(|e| e.to_string())?;
        let said = match &edit {
            Edit::Add {
                id,
                name,
                fingerprint,
            } => {
                store.add(*id, name, *fingerprint);
                let name = store.get(id).map_or(name.as_str(), |d| d.name.as_str());
                format!("Remembered {name} ({id}): it connects without a code from now on.")
            }
            Edit::Rename { id, name } => {
                if !store.rename(id, name) {
                    return Err(format!("{id} is no longer a trusted device."));
                }
                format!("Renamed {id}.")
            }
            Edit::Remove { id } => {
                if !store.remove(id) {
                    return Err(format!("{id} is no longer a trusted device."));
                }
                format!("{id} is no longer trusted: it needs a code again.")
            }
        };
        store.save().map_err(|e| e.to_string())?;
        Ok((store.devices().to_vec(), said))
    })
    .await
    .unwrap_or_else(|e| Err(format!("saving the trusted devices failed: {e}")))
}

/// `YYYY-MM-DD` (UTC) of a trust entry's Unix time; entries added by hand without a
/// date say so.
pub fn added(secs: u64) -> String {
    if secs == 0 {
        return "date unknown".to_owned();
    }
    let utc = p2p_core::history::utc(secs);
    format!("added {}", utc.get(..10).unwrap_or(&utc))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_of_trust_entries() {
        assert_eq!(added(0), "date unknown");
        assert_eq!(added(1_795_000_000), "added 2026-11-18");
    }
}
