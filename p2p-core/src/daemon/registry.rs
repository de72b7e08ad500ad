//! The persisted share list, `DIR/shares.json`: `{"version":1,"shares":[ShareRecord…]}`.
//!
//! Written whole on every change: temporary file (mode 0600), fsync, rename, fsync of
//! the folder, so a crash leaves the old list or the new one, never half of one. A file
//! that does not read (bad JSON, an invalid record) is moved aside to
//! `shares.json.corrupt` and the daemon starts with no shares.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{DaemonError, ShareRecord};

/// The registry's file name in the data folder.
pub const REGISTRY_FILE: &str = "shares.json";
/// Where a registry that does not read is moved.
pub const CORRUPT_FILE: &str = "shares.json.corrupt";
/// The format version written.
pub const VERSION: u32 = 1;
/// Largest registry file read (a hand-edited giant is treated as corrupt).
pub const MAX_REGISTRY_BYTES: u64 = 64 * 1024 * 1024;

#[derive(Debug, Serialize, Deserialize)]
struct File {
    version: u32,
    shares: Vec<ShareRecord>,
}

/// What [`load`] found.
#[derive(Debug, Default)]
pub struct Loaded {
    /// The records, in the order they were added.
    pub records: Vec<ShareRecord>,
    /// The file did not read: why, and where it was moved.
    pub corrupt: Option<(String, PathBuf)>,
}

/// Reads `dir/shares.json` (none: no shares). A file that does not read is moved to
/// `dir/shares.json.corrupt` and reported in [`Loaded::corrupt`].
pub fn load(dir: &Path) -> Result<Loaded, DaemonError> {
    let path = dir.join(REGISTRY_FILE);
    let bytes = match read_bounded(&path) {
        Ok(Some(bytes)) => bytes,
        Ok(None) => return Ok(Loaded::default()),
        Err(e) => return Err(DaemonError::io("cannot read", &path, e)),
    };
    match parse(&bytes) {
        Ok(records) => Ok(Loaded {
            records,
            corrupt: None,
        }),
        Err(reason) => {
            let aside = dir.join(CORRUPT_FILE);
            fs::rename(&path, &aside)
                .map_err(|e| DaemonError::io("cannot move aside the corrupt", &path, e))?;
            Ok(Loaded {
                records: Vec::new(),
                corrupt: Some((reason, aside)),
            })
        }
    }
}

fn read_bounded(path: &Path) -> std::io::Result<Option<Vec<u8>>> {
    use std::io::Read;
    let file = match fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut bytes = Vec::new();
    file.take(MAX_REGISTRY_BYTES + 1).read_to_end(&mut bytes)?;
    Ok(Some(bytes))
}

fn parse(bytes: &[u8]) -> Result<Vec<ShareRecord>, String> {
    if bytes.len() as u64 > MAX_REGISTRY_BYTES {
        return Err(format!("larger than {MAX_REGISTRY_BYTES} bytes"));
    }
    let file: File = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    if file.version != VERSION {
        return Err(format!(
            "format version {} (this build reads {VERSION})",
            file.version
        ));
    }
    let mut seen = std::collections::HashSet::new();
    for record in &file.shares {
        record
            .validate()
            .map_err(|e| format!("share {}: {e}", record.short_root()))?;
        if !seen.insert(record.root.as_str()) {
            return Err(format!("share {} is listed twice", record.short_root()));
        }
    }
    Ok(file.shares)
}

/// Writes `records` to `dir/shares.json` atomically (temp file, fsync, rename, fsync of
/// `dir`), owner-only.
pub fn save(dir: &Path, records: &[ShareRecord]) -> Result<(), DaemonError> {
    let path = dir.join(REGISTRY_FILE);
    let temp = dir.join(format!("{REGISTRY_FILE}.tmp"));
    let file = File {
        version: VERSION,
        shares: records.to_vec(),
    };
    let mut json = serde_json::to_vec_pretty(&file)
        .map_err(|e| DaemonError::io("cannot encode", &path, std::io::Error::other(e)))?;
    json.push(b'\n');
    let write = || -> std::io::Result<()> {
        let mut out = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&temp)?;
        out.write_all(&json)?;
        out.sync_all()
    };
    write().map_err(|e| DaemonError::io("cannot write", &temp, e))?;
    fs::rename(&temp, &path).map_err(|e| DaemonError::io("cannot replace", &path, e))?;
    // The rename itself survives a crash once the folder is synced.
    if let Ok(folder) = fs::File::open(dir) {
        let _ = folder.sync_all();
    }
    Ok(())
}
