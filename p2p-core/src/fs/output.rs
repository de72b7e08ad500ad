//! The receiver's output folder.
//!
//! Every operation goes through a [`cap_std::fs::Dir`] opened on the chosen folder, so no
//! path — however it was built, and whatever symlinks already sit in the folder — can
//! reach outside it. Before any data moves, [`OutputDir::prepare`] validates the offer's
//! paths, refuses to overwrite existing files (unless asked to), checks free space and
//! that the folder is writable. File data goes to a hidden `.part` file beside the final
//! path; [`OutputDir::finalize`] applies permissions and modification time and renames it
//! into place only after the caller has verified its SHA-256. Without `overwrite`, the
//! rename cannot replace a file that appeared in the meantime.

use std::collections::HashMap;
use std::fs::{File, FileTimes, Permissions};
use std::io;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cap_std::ambient_authority;
use cap_std::fs::{Dir, OpenOptions};

use crate::error::{Error, Result, StorageError, TransferError};
use crate::fs::safe_path::validate_entries;
use crate::wire::{Entry, EntryKind, Offer, Timestamp};

/// Files kept open at once while receiving (a window spans only a few files).
const MAX_OPEN_FILES: usize = 64;

/// The receiver's view of one transfer's destination.
pub struct OutputDir {
    root: PathBuf,
    dir: Dir,
    tag: String,
    overwrite: bool,
    entries: Vec<Entry>,
    /// `.part` path (relative to root) of each file entry.
    parts: HashMap<u32, String>,
    open: HashMap<u32, File>,
    finalized: Vec<bool>,
}

impl OutputDir {
    /// Opens (creating if needed) the output folder for `offer` and runs every pre-flight
    /// check. Nothing is written unless all checks pass.
    pub fn prepare(root: &Path, offer: &Offer, overwrite: bool) -> Result<Self> {
        validate_entries(&offer.entries)?;
        std::fs::create_dir_all(root)
            .map_err(|e| StorageError::new("cannot create output folder", root, e))?;
        let dir = Dir::open_ambient_dir(root, ambient_authority())
            .map_err(|e| StorageError::new("cannot open output folder", root, e))?;
        let tag: String = offer.transfer_id.simple().to_string()[..8].to_owned();
        let mut out = OutputDir {
            root: root.to_path_buf(),
            dir,
            tag,
            overwrite,
            entries: offer.entries.clone(),
            parts: HashMap::new(),
            open: HashMap::new(),
            finalized: vec![false; offer.entries.len()],
        };
        out.check_conflicts()?;
        out.check_space()?;
        out.check_writable()?;
        out.create_dirs()?;
        Ok(out)
    }

    fn storage(&self, action: &'static str, rel: &str, e: io::Error) -> Error {
        StorageError::new(action, self.root.join(rel), e).into()
    }

    fn check_conflicts(&self) -> Result<()> {
        let mut conflicts = Vec::new();
        for entry in &self.entries {
            let existing = match self.dir.symlink_metadata(&entry.path) {
                Ok(m) => m,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                // A parent that is a file, or a symlink leading outside: not writable here.
                Err(e) if e.kind() == io::ErrorKind::NotADirectory => {
                    conflicts.push(entry.path.clone());
                    continue;
                }
                Err(e) => return Err(self.storage("cannot inspect", &entry.path, e)),
            };
            let clash = match entry.kind {
                EntryKind::Dir => !existing.is_dir(),
                EntryKind::File { .. } => existing.is_dir() || !self.overwrite,
            };
            if clash {
                conflicts.push(entry.path.clone());
            }
        }
        match conflicts.first() {
            None => Ok(()),
            Some(first) => Err(TransferError::AlreadyExists {
                first: first.clone(),
                count: conflicts.len(),
            }
            .into()),
        }
    }

    fn check_space(&self) -> Result<()> {
        let needed: u64 = self.entries.iter().map(entry_size).sum();
        let stat = rustix::fs::statvfs(&self.root)
            .map_err(|e| StorageError::new("cannot query free space of", &self.root, e.into()))?;
        let available = stat.f_bavail.saturating_mul(stat.f_frsize);
        if needed > available {
            return Err(TransferError::InsufficientSpace { needed, available }.into());
        }
        Ok(())
    }

    fn check_writable(&self) -> Result<()> {
        let probe = format!(".p2p-{}.probe", self.tag);
        self.dir
            .open_with(&probe, OpenOptions::new().write(true).create_new(true))
            .map_err(|e| self.storage("output folder is not writable:", "", e))?;
        let _ = self.dir.remove_file(&probe);
        Ok(())
    }

    fn create_dirs(&mut self) -> Result<()> {
        for (index, entry) in self.entries.iter().enumerate() {
            let parent = match entry.kind {
                EntryKind::Dir => entry.path.as_str(),
                EntryKind::File { .. } => {
                    let parent = entry.path.rsplit_once('/').map_or("", |(p, _)| p);
                    let name = format!(".{}-{}.p2p.part", self.tag, index);
                    let part = if parent.is_empty() {
                        name
                    } else {
                        format!("{parent}/{name}")
                    };
                    self.parts.insert(index as u32, part);
                    parent
                }
            };
            if !parent.is_empty() {
                self.dir
                    .create_dir_all(parent)
                    .map_err(|e| StorageError::new("cannot create", self.root.join(parent), e))?;
            }
        }
        Ok(())
    }

    fn part_of(&self, file: u32) -> Result<&str> {
        self.parts
            .get(&file)
            .map(String::as_str)
            .ok_or_else(|| Error::protocol(format!("entry {file} is not a file")))
    }

    fn handle(&mut self, file: u32) -> Result<&File> {
        if !self.open.contains_key(&file) {
            if self.open.len() >= MAX_OPEN_FILES {
                self.open.clear();
            }
            let part = self.part_of(file)?.to_owned();
            let handle = self
                .dir
                .open_with(&part, OpenOptions::new().write(true).create(true))
                .map_err(|e| self.storage("cannot create", &part, e))?
                .into_std();
            self.open.insert(file, handle);
        }
        Ok(&self.open[&file])
    }

    /// Writes `data` at `offset` of file `file`'s `.part` file.
    pub fn write(&mut self, file: u32, offset: u64, data: &[u8]) -> Result<()> {
        let handle = self.handle(file)?;
        if let Err(e) = handle.write_all_at(data, offset) {
            let part = self.part_of(file)?.to_owned();
            return Err(self.storage("cannot write", &part, e));
        }
        Ok(())
    }

    /// Applies metadata to a verified file and moves it to its final path.
    pub fn finalize(&mut self, file: u32) -> Result<()> {
        let entry = self
            .entries
            .get(file as usize)
            .cloned()
            .ok_or_else(|| Error::protocol(format!("no entry {file}")))?;
        let part = self.part_of(file)?.to_owned();
        // Empty files never had a write; make sure the .part exists (and is truncated).
        let handle = match self.open.remove(&file) {
            Some(h) => h,
            None if entry_size(&entry) == 0 => self
                .dir
                .open_with(
                    &part,
                    OpenOptions::new().write(true).create(true).truncate(true),
                )
                .map_err(|e| self.storage("cannot create", &part, e))?
                .into_std(),
            None => self
                .dir
                .open_with(&part, OpenOptions::new().write(true))
                .map_err(|e| self.storage("cannot open", &part, e))?
                .into_std(),
        };
        apply_metadata(&handle, &entry)
            .map_err(|e| self.storage("cannot set metadata of", &part, e))?;
        drop(handle);
        self.place(&part, &entry.path)?;
        self.finalized[file as usize] = true;
        Ok(())
    }

    fn place(&self, part: &str, target: &str) -> Result<()> {
        if self.overwrite {
            return self
                .dir
                .rename(part, &self.dir, target)
                .map_err(|e| self.storage("cannot move into place", target, e));
        }
        // No-replace rename: a hard link fails if the target exists.
        match self.dir.hard_link(part, &self.dir, target) {
            Ok(()) => {
                let _ = self.dir.remove_file(part);
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                let _ = self.dir.remove_file(part);
                Err(TransferError::AlreadyExists {
                    first: target.to_owned(),
                    count: 1,
                }
                .into())
            }
            // File systems without hard links: check, then rename.
            Err(_) => {
                if self.dir.symlink_metadata(target).is_ok() {
                    let _ = self.dir.remove_file(part);
                    return Err(TransferError::AlreadyExists {
                        first: target.to_owned(),
                        count: 1,
                    }
                    .into());
                }
                self.dir
                    .rename(part, &self.dir, target)
                    .map_err(|e| self.storage("cannot move into place", target, e))
            }
        }
    }

    /// Applies directory metadata, deepest first (after all files are in place, so that
    /// creating files does not disturb modification times or read-only modes).
    pub fn finish(&mut self) -> Result<()> {
        let mut dirs: Vec<&Entry> = self
            .entries
            .iter()
            .filter(|e| matches!(e.kind, EntryKind::Dir))
            .collect();
        dirs.sort_by_key(|e| std::cmp::Reverse(e.path.matches('/').count()));
        for entry in dirs {
            // A read-only descriptor of the directory itself (not O_PATH) so that
            // fchmod and futimens work on it.
            let handle = self
                .dir
                .open_with(&entry.path, OpenOptions::new().read(true))
                .map_err(|e| self.storage("cannot open", &entry.path, e))?
                .into_std();
            apply_metadata(&handle, entry)
                .map_err(|e| self.storage("cannot set metadata of", &entry.path, e))?;
        }
        Ok(())
    }

    /// Removes every `.part` file that was not finalised. Called when a transfer fails.
    pub fn discard_partials(&mut self) {
        self.open.clear();
        for (file, part) in &self.parts {
            if !self.finalized[*file as usize] {
                let _ = self.dir.remove_file(part);
            }
        }
    }

    /// The folder everything goes into.
    pub fn root(&self) -> &Path {
        &self.root
    }
}

fn entry_size(entry: &Entry) -> u64 {
    match entry.kind {
        EntryKind::File { size } => size,
        EntryKind::Dir => 0,
    }
}

fn to_system_time(t: Timestamp) -> Option<SystemTime> {
    let nanos = Duration::from_nanos(u64::from(t.nanos.min(999_999_999)));
    if t.secs >= 0 {
        UNIX_EPOCH.checked_add(Duration::from_secs(t.secs as u64) + nanos)
    } else {
        UNIX_EPOCH
            .checked_sub(Duration::from_secs(t.secs.unsigned_abs()))
            .and_then(|t| t.checked_add(nanos))
    }
}

fn apply_metadata(handle: &File, entry: &Entry) -> io::Result<()> {
    // Only permission bits: never setuid, setgid or sticky from a peer.
    handle.set_permissions(Permissions::from_mode(entry.mode & 0o777))?;
    if let Some(mtime) = to_system_time(entry.mtime) {
        handle.set_times(FileTimes::new().set_modified(mtime))?;
    }
    Ok(())
}
