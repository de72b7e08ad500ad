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

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs::{File, FileTimes, Permissions};
use std::io;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cap_std::ambient_authority;
use cap_std::fs::{Dir, OpenOptions};
use rustix::fs::{renameat_with, RenameFlags};
use uuid::Uuid;

use crate::chunk::{ChunkSet, Layout, ResumeInfo};
use crate::error::{Error, Result, StorageError, TransferError};
use crate::fs::resume_state::{boot_id, manifest_digest, rechunk, StateBody};
use crate::fs::safe_path::validate_entries;
use crate::fs::unnamed::{umask, Unnamed};
use crate::wire::{ChunkRef, Entry, EntryKind, Timestamp};

/// Files kept open at once while receiving (a window spans only a few files).
const MAX_OPEN_FILES: usize = 64;
/// Unnamed files open at once: they cannot be closed before they are linked, so past
/// this (a window of thousands of tiny files) further files use `.part` files.
const MAX_UNNAMED: usize = 256;

/// Where one file goes.
struct Placement {
    parent: String,
    name: String,
    part: String,
}

/// Splits `a/b/c` into (`a/b`, `c`) and `c` into (``, `c`).
fn split_parent(path: &str) -> (&str, &str) {
    path.rsplit_once('/').unwrap_or(("", path))
}

/// The receiver's view of one transfer's destination.
pub struct OutputDir {
    root: PathBuf,
    dir: Dir,
    tag: String,
    overwrite: bool,
    /// The offer's entries, shared with the receiving machine.
    entries: Arc<[Entry]>,
    /// Files whose `.part` file this attempt may have created (placements are
    /// computed when needed, not kept for every file of the offer).
    touched: BTreeSet<u32>,
    /// Open handles of parent folders, so per-file operations are single-component
    /// lookups instead of walks from the root.
    dirs: HashMap<String, Dir>,
    open: HashMap<u32, File>,
    /// Unnamed files being received (see `fs::unnamed`), if this folder supports them
    /// and `overwrite` is off: file index → (descriptor, permission bits already set).
    unnamed: Option<Unnamed>,
    anon: HashMap<u32, (File, bool)>,
    finalized: Vec<bool>,
    completed: bool,
    transfer_id: Uuid,
    digest: [u8; 32],
    chunk_size: u32,
    /// Chunks written per unfinished file (this attempt and resumed ones): what the next
    /// state file may claim once synced.
    written: HashMap<u32, ChunkSet>,
    /// What the loaded state vouches for.
    resume: ResumeInfo,
    /// What the last flushing save made durable (see `fs::resume_state`).
    durable: ResumeInfo,
    /// Why a state file was ignored, for the user.
    notes: Vec<String>,
    /// A state file of this attempt exists: interruption keeps `.part` files.
    saved_once: bool,
}

impl Drop for OutputDir {
    /// A transfer that ends any other way than [`OutputDir::complete`] or
    /// [`OutputDir::abandon`] — an error that may pass, a cancelled future, Ctrl+C —
    /// saves its resume state, so a new attempt continues where this one stopped.
    fn drop(&mut self) {
        if self.completed {
            return;
        }
        // Interrupted (an error that may pass, a cancelled future, Ctrl+C): keep what
        // arrived, durably, for a resume.
        if let Err(e) = self.save_job(true).and_then(SaveJob::run) {
            tracing::warn!("could not save resume state: {e}");
        }
    }
}

/// Checks, before anyone connects, that files can be written into `root` (created if
/// missing): a receiver reports an unusable folder at start, not to a sender later.
/// Writes and removes one empty, uniquely named file.
pub fn check_writable(root: &Path) -> Result<()> {
    std::fs::create_dir_all(root)
        .map_err(|e| StorageError::new("cannot create output folder", root, e))?;
    let meta = std::fs::metadata(root)
        .map_err(|e| StorageError::new("cannot open output folder", root, e))?;
    if !meta.is_dir() {
        let e = io::Error::new(io::ErrorKind::NotADirectory, "it is not a folder");
        return Err(StorageError::new("cannot write into output folder", root, e).into());
    }
    let probe = root.join(format!(".p2p-write-check-{}", Uuid::new_v4().simple()));
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
        .map_err(|e| StorageError::new("cannot write into output folder", root, e))?;
    // Written: the check passed. Removing it can only fail if someone else did.
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

impl OutputDir {
    /// Opens (creating if needed) the output folder for `offer` and runs every pre-flight
    /// check. Nothing is written unless all checks pass.
    ///
    /// If an earlier attempt of the same transfer left a resume state that still matches
    /// (same manifest and chunk size, `.part` files present and long enough, finished
    /// files still in place), [`OutputDir::resume_info`] says what can be skipped;
    /// otherwise the state is ignored and [`OutputDir::notes`] says why.
    pub fn prepare(
        root: &Path,
        transfer_id: Uuid,
        entries: &Arc<[Entry]>,
        overwrite: bool,
        chunk_size: u32,
    ) -> Result<Self> {
        validate_entries(entries)?;
        std::fs::create_dir_all(root)
            .map_err(|e| StorageError::new("cannot create output folder", root, e))?;
        let dir = Dir::open_ambient_dir(root, ambient_authority())
            .map_err(|e| StorageError::new("cannot open output folder", root, e))?;
        let tag: String = transfer_id.simple().to_string()[..8].to_owned();
        let mut out = OutputDir {
            root: root.to_path_buf(),
            dir,
            tag,
            overwrite,
            entries: Arc::clone(entries),
            touched: BTreeSet::new(),
            dirs: HashMap::new(),
            open: HashMap::new(),
            unnamed: None,
            anon: HashMap::new(),
            finalized: vec![false; entries.len()],
            completed: false,
            digest: manifest_digest(entries),
            transfer_id,
            chunk_size,
            written: HashMap::new(),
            resume: ResumeInfo::default(),
            durable: ResumeInfo::default(),
            notes: Vec::new(),
            saved_once: false,
        };
        let checked = out
            .load_resume()
            .and_then(|()| out.check_conflicts())
            .and_then(|()| out.check_space())
            .and_then(|()| out.check_writable());
        if let Err(e) = checked {
            // Refused: nothing of this attempt may be left behind — no state file
            // (dropping `out` would save one); an earlier attempt's stays as it was.
            out.completed = true;
            return Err(e);
        }
        if !overwrite {
            // (`linkat` cannot replace: with `overwrite`, `.part` files and a rename.)
            out.unnamed = Unnamed::probe(&out.dir, &format!(".p2p-{}.unnamed.probe", out.tag));
        }
        if let Err(e) = out.create_dirs() {
            out.completed = true;
            return Err(e);
        }
        Ok(out)
    }

    fn storage(&self, action: &'static str, rel: &str, e: io::Error) -> Error {
        StorageError::new(action, self.root.join(rel), e).into()
    }

    fn check_conflicts(&mut self) -> Result<()> {
        let mut conflicts = Vec::new();
        // Parent folders that do not exist yet hold no conflicts.
        let mut missing: HashSet<String> = HashSet::new();
        for index in 0..self.entries.len() {
            if self.resume.complete.contains(&(index as u32)) {
                continue; // ours, from an earlier attempt
            }
            let (parent, name) = split_parent(&self.entries[index].path);
            let (parent, name) = (parent.to_owned(), name.to_owned());
            if missing.contains(&parent) {
                continue;
            }
            let path = self.entries[index].path.clone();
            let kind = self.entries[index].kind;
            let existing = match self.dir_for(&parent) {
                Ok(dir) => dir.symlink_metadata(&name),
                Err(e) => Err(e),
            };
            let existing = match existing {
                Ok(m) => m,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    if !parent.is_empty() && !self.dirs.contains_key(&parent) {
                        missing.insert(parent);
                    }
                    continue;
                }
                // A parent that is a file: this entry cannot be written.
                Err(e) if e.kind() == io::ErrorKind::NotADirectory => {
                    conflicts.push(path);
                    continue;
                }
                Err(e) => return Err(self.storage("cannot inspect", &path, e)),
            };
            let clash = match kind {
                EntryKind::Dir => !existing.is_dir(),
                EntryKind::File { .. } => existing.is_dir() || !self.overwrite,
            };
            if clash {
                conflicts.push(path);
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

    /// The handle of folder `parent` (relative to the root), opened once.
    fn dir_for(&mut self, parent: &str) -> io::Result<&Dir> {
        if !self.dirs.contains_key(parent) {
            let dir = if parent.is_empty() {
                self.dir.try_clone()?
            } else {
                self.dir.open_dir(parent)?
            };
            self.dirs.insert(parent.to_owned(), dir);
        }
        Ok(&self.dirs[parent])
    }

    /// Free space must hold what is still missing: files not already complete, less
    /// the chunks a resumed attempt already has in its `.part` files.
    fn check_space(&self) -> Result<()> {
        let layout = Layout::new(&self.entries, self.chunk_size);
        let held: u64 = self
            .resume
            .have
            .iter()
            .flat_map(|(file, set)| {
                set.ranges().flat_map(move |(s, e)| {
                    (s..e).map(move |index| ChunkRef { file: *file, index })
                })
            })
            .map(|at| layout.chunk_len(at).unwrap_or(0) as u64)
            .fold(0u64, u64::saturating_add);
        let needed: u64 = self
            .entries
            .iter()
            .enumerate()
            .filter(|(i, _)| !self.resume.complete.contains(&(*i as u32)))
            .try_fold(0u64, |t, (_, e)| t.checked_add(entry_size(e)))
            .ok_or_else(|| Error::protocol("the offer's sizes overflow"))?
            .saturating_sub(held);
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
        let mut folders = BTreeSet::new();
        for entry in self.entries.iter() {
            match entry.kind {
                EntryKind::Dir => {
                    folders.insert(entry.path.as_str());
                }
                EntryKind::File { .. } => {
                    let (parent, _) = split_parent(&entry.path);
                    if !parent.is_empty() {
                        folders.insert(parent);
                    }
                }
            }
        }
        // Sorted, so each folder's parents exist before it: one mkdir per folder.
        for folder in folders {
            match self.dir.create_dir(folder) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    if !self.dir.metadata(folder).is_ok_and(|m| m.is_dir()) {
                        return Err(
                            StorageError::new("not a folder:", self.root.join(folder), e).into(),
                        );
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => self
                    .dir
                    .create_dir_all(folder)
                    .map_err(|e| StorageError::new("cannot create", self.root.join(folder), e))?,
                Err(e) => {
                    return Err(
                        StorageError::new("cannot create", self.root.join(folder), e).into(),
                    )
                }
            }
        }
        Ok(())
    }

    /// Where file `file` goes: its folder, final name and `.part` name.
    fn placement(&self, file: u32) -> Result<Placement> {
        match self.entries.get(file as usize) {
            Some(entry) if matches!(entry.kind, EntryKind::File { .. }) => {
                let (parent, name) = split_parent(&entry.path);
                Ok(Placement {
                    parent: parent.to_owned(),
                    name: name.to_owned(),
                    part: part_name(&self.tag, file),
                })
            }
            _ => Err(Error::protocol(format!("entry {file} is not a file"))),
        }
    }

    /// Opens a file's `.part` through its folder's handle.
    fn open_part(&mut self, file: u32, options: &OpenOptions) -> Result<File> {
        let Placement { parent, part, .. } = self.placement(file)?;
        self.touched.insert(file);
        let opened = self
            .dir_for(&parent)
            .and_then(|dir| dir.open_with(&part, options));
        match opened {
            Ok(f) => Ok(f.into_std()),
            Err(e) => Err(self.storage("cannot create", &join(&parent, &part), e)),
        }
    }

    fn handle(&mut self, file: u32) -> Result<&File> {
        if !self.open.contains_key(&file) {
            if self.open.len() >= MAX_OPEN_FILES {
                self.open.clear();
            }
            // A file with nothing written yet starts from an empty `.part`, even if a
            // crashed attempt left one behind.
            let fresh = !self.written.contains_key(&file);
            let handle = self.open_part(
                file,
                OpenOptions::new().write(true).create(true).truncate(fresh),
            )?;
            self.open.insert(file, handle);
        }
        Ok(&self.open[&file])
    }

    /// Writes `data` at `offset` of file `file`'s `.part` file.
    pub fn write(&mut self, file: u32, offset: u64, data: &[u8]) -> Result<()> {
        if let Some((handle, _)) = self.unnamed_file(file)? {
            // Not recorded in `written`: an unnamed file vanishes if the transfer stops,
            // so no resume state may claim it.
            return handle
                .write_all_at(data, offset)
                .map_err(|e| self.storage("cannot write", &self.entries[file as usize].path, e));
        }
        let chunk_size = u64::from(self.chunk_size.max(1));
        let handle = self.handle(file)?;
        if let Err(e) = handle.write_all_at(data, offset) {
            let p = self.placement(file)?;
            return Err(self.storage("cannot write", &join(&p.parent, &p.part), e));
        }
        let index = offset / chunk_size;
        self.written.entry(file).or_default().insert(index);
        Ok(())
    }

    /// Another handle of file `file`'s open `.part` file, if it is open.
    pub fn clone_handle(&self, file: u32) -> Option<File> {
        self.open.get(&file).and_then(|f| f.try_clone().ok())
    }

    /// Reads `len` bytes at `offset` of file `file`'s `.part` file (a chunk an earlier
    /// attempt left, for hashing).
    pub fn read_part(&mut self, file: u32, offset: u64, len: usize) -> Result<Vec<u8>> {
        let Placement { parent, part, .. } = self.placement(file)?;
        let mut buf = vec![0u8; len];
        let read = self
            .dir_for(&parent)
            .and_then(|dir| dir.open_with(&part, OpenOptions::new().read(true)))
            .and_then(|f| f.into_std().read_exact_at(&mut buf, offset));
        match read {
            Ok(()) => Ok(buf),
            Err(e) => Err(self.storage("cannot read back", &join(&parent, &part), e)),
        }
    }

    /// Reads `len` bytes at `offset` of file `file` at its final path (a file this
    /// attempt finalized, served to swarm peers).
    pub fn read_final(&mut self, file: u32, offset: u64, len: usize) -> Result<Vec<u8>> {
        let Placement { parent, name, .. } = self.placement(file)?;
        let mut buf = vec![0u8; len];
        let read = self
            .dir_for(&parent)
            .and_then(|dir| dir.open_with(&name, OpenOptions::new().read(true)))
            .and_then(|f| f.into_std().read_exact_at(&mut buf, offset));
        match read {
            Ok(()) => Ok(buf),
            Err(e) => Err(self.storage("cannot read back", &join(&parent, &name), e)),
        }
    }

    /// Applies metadata to a verified file and moves it to its final path.
    pub fn finalize(&mut self, file: u32) -> Result<()> {
        let entry = self
            .entries
            .get(file as usize)
            .cloned()
            .ok_or_else(|| Error::protocol(format!("no entry {file}")))?;
        // (An empty file has had no write: its unnamed file is made here.)
        let unnamed = match self.unnamed_file(file)? {
            Some(_) => self.anon.remove(&file),
            None => None,
        };
        if let Some((handle, mode_set)) = unnamed {
            apply_metadata(&handle, &entry, !mode_set)
                .map_err(|e| self.storage("cannot set metadata of", &entry.path, e))?;
            self.name_unnamed(file, &handle, &entry.path)?;
            self.finalized[file as usize] = true;
            return Ok(());
        }
        // Empty files never had a write; make sure the .part exists (and is truncated).
        let handle = match self.open.remove(&file) {
            Some(h) => h,
            None => self.open_part(file, OpenOptions::new().write(true).create(true))?,
        };
        if let Err(e) = apply_metadata(&handle, &entry, true) {
            return Err(self.storage("cannot set metadata of", &entry.path, e));
        }
        drop(handle);
        self.place(file, &entry.path)?;
        self.finalized[file as usize] = true;
        self.written.remove(&file);
        Ok(())
    }

    /// The unnamed file receiving file `file`, created on first use, if it is one: a
    /// file of at most one chunk (received in one write, finalised right after), not
    /// resumed from a `.part` file, while fewer than [`MAX_UNNAMED`] are open. Anything
    /// else, or a folder without unnamed files, uses a `.part` file.
    fn unnamed_file(&mut self, file: u32) -> Result<Option<&(File, bool)>> {
        if !self.anon.contains_key(&file) {
            let Some(unnamed) = self.unnamed else {
                return Ok(None);
            };
            let Some(entry) = self.entries.get(file as usize) else {
                return Ok(None);
            };
            let small = matches!(entry.kind, EntryKind::File { size } if size <= u64::from(self.chunk_size));
            if !small
                || self.written.contains_key(&file)
                || self.open.contains_key(&file)
                || self.anon.len() >= MAX_UNNAMED
            {
                return Ok(None);
            }
            let mode = received_mode(entry.mode);
            // Created with its final permission bits (the umask already applied), so
            // `finalize` need not set them again.
            let mode_set = umask().is_some();
            let parent = self.placement(file)?.parent.clone();
            let created = self
                .dir_for(&parent)
                .and_then(|dir| unnamed.create(dir, mode));
            let handle = match created {
                Ok(h) => h,
                Err(e) => return Err(self.storage("cannot create a file in", &parent, e)),
            };
            self.anon.insert(file, (handle, mode_set));
        }
        Ok(self.anon.get(&file))
    }

    /// Links a verified unnamed file under its final name (never replacing).
    fn name_unnamed(&mut self, file: u32, handle: &File, target: &str) -> Result<()> {
        let (Some(unnamed), Ok(p)) = (self.unnamed, self.placement(file)) else {
            return Err(Error::protocol(format!(
                "entry {file} is not an unnamed file"
            )));
        };
        let (parent, name) = (p.parent.clone(), p.name.clone());
        let linked = self
            .dir_for(&parent)
            .and_then(|dir| unnamed.link(handle, dir, &name));
        match linked {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                Err(TransferError::AlreadyExists {
                    first: target.to_owned(),
                    count: 1,
                }
                .into())
            }
            Err(e) => Err(self.storage("cannot move into place", target, e)),
        }
    }

    fn place(&mut self, file: u32, target: &str) -> Result<()> {
        let p = self.placement(file)?;
        let (parent, part, name) = (p.parent.clone(), p.part.clone(), p.name.clone());
        let overwrite = self.overwrite;
        let parent_path = self.root.join(&parent);
        let dir = self
            .dir_for(&parent)
            .map_err(|e| StorageError::new("cannot open", parent_path, e))?;
        let flags = if overwrite {
            RenameFlags::empty()
        } else {
            RenameFlags::NOREPLACE
        };
        let result = match renameat_with(dir, part.as_str(), dir, name.as_str(), flags) {
            // File systems without RENAME_NOREPLACE: a hard link cannot replace either.
            Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOSYS) if !overwrite => {
                dir.hard_link(&part, dir, &name).map(|()| {
                    let _ = dir.remove_file(&part);
                })
            }
            other => other.map_err(io::Error::from),
        };
        match result {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                let _ = dir.remove_file(&part);
                Err(TransferError::AlreadyExists {
                    first: target.to_owned(),
                    count: 1,
                }
                .into())
            }
            Err(e) => Err(self.storage("cannot move into place", target, e)),
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
            apply_metadata(&handle, entry, true)
                .map_err(|e| self.storage("cannot set metadata of", &entry.path, e))?;
        }
        Ok(())
    }

    /// Removes every `.part` file that was not finalised. Called when a transfer fails.
    pub fn discard_partials(&mut self) {
        self.open.clear();
        self.anon.clear(); // unnamed files vanish with their descriptors
        let pending: Vec<(String, String)> = self
            .touched
            .iter()
            .chain(self.written.keys())
            .filter(|file| !self.finalized[**file as usize])
            .filter_map(|file| self.placement(*file).ok())
            .map(|p| (p.parent, p.part))
            .collect();
        for (parent, part) in pending {
            if let Ok(dir) = self.dir_for(&parent) {
                let _ = dir.remove_file(&part);
            }
        }
    }

    /// Marks the transfer complete and removes its resume state.
    pub fn complete(&mut self) {
        self.completed = true;
        let _ = self.dir.remove_file(self.state_name());
    }

    /// Gives the transfer up for good (the data can never verify, or the peer was
    /// refused): removes `.part` files and the resume state.
    pub fn abandon(&mut self) {
        self.discard_partials();
        self.completed = true;
        let _ = self.dir.remove_file(self.state_name());
    }

    /// What an earlier attempt left that this one can skip.
    pub fn resume_info(&self) -> &ResumeInfo {
        &self.resume
    }

    /// Why an earlier state was not used (for the user), if it was not.
    pub fn notes(&self) -> &[String] {
        &self.notes
    }

    fn state_name(&self) -> String {
        format!(".p2p-{}.resume", self.transfer_id.simple())
    }

    /// Loads, checks and adopts a resume state left by an earlier attempt. An offer under
    /// the same id with other entries (paths left out or added, files changed since) is
    /// refused: taking it would throw away what arrived.
    fn load_resume(&mut self) -> Result<()> {
        let name = self.state_name();
        let bytes = match self.dir.read(&name) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => {
                self.notes
                    .push(format!("cannot read resume state {name}: {e}"));
                return Ok(());
            }
        };
        let body = match StateBody::decode(&bytes) {
            Ok(b) => b,
            Err(why) => {
                self.notes
                    .push(format!("resume state {name} ignored: {why}"));
                return Ok(());
            }
        };
        if body.transfer_id != self.transfer_id || body.manifest_digest != self.digest {
            return Err(TransferError::ResumeMismatch.into());
        }
        let (mut info, flushed) = body.believable(boot_id());
        let layout = Layout::new(&self.entries, self.chunk_size);
        if body.chunk_size != self.chunk_size {
            // This attempt agreed on another chunk size: keep whatever whole chunks of
            // the new size the earlier attempt left.
            info = rechunk(&info, body.chunk_size, self.chunk_size, |f| layout.size(f));
        }
        // Finished files must still be in place with their size.
        info.complete.retain(|&file| {
            let Some(size) = layout.size(file) else {
                return false;
            };
            let path = &self.entries[file as usize].path;
            self.dir
                .symlink_metadata(path)
                .is_ok_and(|m| m.is_file() && m.len() == size)
        });
        // `.part` files must still be there and cover what the state claims.
        let tag = &self.tag;
        let mut dropped = 0;
        info.have.retain(|&file, set| {
            let Some(entry) = self.entries.get(file as usize) else {
                return false;
            };
            let (parent, _) = split_parent(&entry.path);
            let part = join(parent, &part_name(tag, file));
            let needed = set.ranges().last().map_or(0, |(_, end)| {
                end.saturating_mul(u64::from(self.chunk_size))
                    .min(layout.size(file).unwrap_or(0))
            });
            let ok = self
                .dir
                .metadata(&part)
                .is_ok_and(|m| m.is_file() && m.len() >= needed);
            dropped += usize::from(!ok);
            ok
        });
        if dropped > 0 {
            self.notes.push(format!(
                "{dropped} partial file(s) no longer match the resume state; they are received again"
            ));
        }
        self.written = info.have.iter().map(|(f, set)| (*f, set.clone())).collect();
        if flushed {
            self.durable = info.clone();
        }
        self.resume = info;
        self.saved_once = true;
        Ok(())
    }

    /// Collects what a state save needs (the encoded state and a handle of the folder),
    /// so that the slow part can run on another thread while the transfer goes on. With
    /// `flush`, the job makes everything written so far durable before it claims it as
    /// such; otherwise it repeats the last durable claim and adds what was written since
    /// (believed only in this boot of the kernel).
    pub fn save_job(&mut self, flush: bool) -> Result<SaveJob> {
        let written = ResumeInfo {
            have: self.written.iter().map(|(f, s)| (*f, s.clone())).collect(),
            complete: (0..self.finalized.len() as u32)
                .filter(|f| self.finalized[*f as usize])
                .collect(),
        };
        let durable = if flush {
            written.clone()
        } else {
            // A `.part` that has since become a finished file claims nothing any more.
            let mut durable = self.durable.clone();
            durable.have.retain(|f, _| self.written.contains_key(f));
            durable
        };
        let state = StateBody::new(
            self.transfer_id,
            self.digest,
            self.chunk_size,
            &durable,
            &written,
        )
        .encode();
        let dir = self
            .dir
            .try_clone()
            .map_err(|e| self.storage("cannot save resume state in", "", e))?;
        self.saved_once = true;
        Ok(SaveJob {
            dir,
            name: self.state_name(),
            state,
            flushed: flush.then_some(durable),
        })
    }

    /// A flushing [`SaveJob`] succeeded: what it flushed is the durable claim of later
    /// saves.
    pub fn flushed(&mut self, durable: ResumeInfo) {
        self.durable = durable;
    }

    /// The folder everything goes into.
    pub fn root(&self) -> &Path {
        &self.root
    }
}

/// A resume-state save, built by [`OutputDir::save_job`]; [`SaveJob::run`] may run on
/// any thread. A flushing save syncs the data, then writes the state: temp file, fsync,
/// rename, fsync of the folder. A quick save only writes the temp file and renames it.
///
/// The data is flushed with one `syncfs` of the output file system rather than an
/// `fdatasync` per file: a folder of thousands of small files would otherwise pay one
/// synchronous flush per file on every save.
pub struct SaveJob {
    dir: Dir,
    name: String,
    state: Vec<u8>,
    /// For a flushing save: the claim it makes durable.
    flushed: Option<ResumeInfo>,
}

impl SaveJob {
    /// Runs the save; returns what it made durable (a flushing save) for
    /// [`OutputDir::flushed`].
    pub fn run(self) -> Result<Option<ResumeInfo>> {
        let err = |e| StorageError::new("cannot save resume state", &self.name, e);
        let flush = self.flushed.is_some();
        if flush {
            // Everything written before this job was built is flushed by this.
            // (Through a plain descriptor: cap-std's directory handles are O_PATH.)
            let folder = self.dir.open(".").map_err(err)?;
            rustix::fs::syncfs(&folder).map_err(|e| err(e.into()))?;
        }
        let tmp = format!("{}.tmp", self.name);
        let mut file = self
            .dir
            .open_with(
                &tmp,
                OpenOptions::new().write(true).create(true).truncate(true),
            )
            .map_err(err)?;
        std::io::Write::write_all(&mut file, &self.state).map_err(err)?;
        if flush {
            file.sync_all().map_err(err)?;
        }
        drop(file);
        self.dir.rename(&tmp, &self.dir, &self.name).map_err(err)?;
        if flush {
            self.dir.open(".").and_then(|d| d.sync_all()).map_err(err)?;
        }
        Ok(self.flushed)
    }
}

/// The `.part` name of file `file` of the transfer tagged `tag`, in its folder.
fn part_name(tag: &str, file: u32) -> String {
    format!(".{tag}-{file}.p2p.part")
}

fn join(parent: &str, name: &str) -> String {
    if parent.is_empty() {
        name.to_owned()
    } else {
        format!("{parent}/{name}")
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

/// The permission bits a received entry gets: the peer's, only `0o777` of them (never
/// setuid, setgid or sticky), less what this process's umask takes away — a sender
/// cannot make files world-writable on a receiver whose umask forbids it.
fn received_mode(mode: u32) -> u32 {
    mode & 0o777 & !umask().unwrap_or(0o022)
}

/// Sets the entry's modification time and, with `mode`, its permission bits.
fn apply_metadata(handle: &File, entry: &Entry, mode: bool) -> io::Result<()> {
    if mode {
        handle.set_permissions(Permissions::from_mode(received_mode(entry.mode)))?;
    }
    if let Some(mtime) = to_system_time(entry.mtime) {
        handle.set_times(FileTimes::new().set_modified(mtime))?;
    }
    Ok(())
}
