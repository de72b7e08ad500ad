//! The sender's side of the file system: turning the paths a user names into a manifest,
//! and reading chunks of those files.
//!
//! Symlinks: a path the user names explicitly is followed (they asked for it); a symlink
//! met *inside* a folder is skipped and reported, never followed — following it could
//! send files from outside the folder the user chose, or loop forever. Sockets, FIFOs and
//! devices are skipped the same way.

use std::fs::{self, File};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use rustix::buffer::spare_capacity;

use crate::error::{Error, Result, StorageError};
use crate::wire::{Entry, EntryKind, Timestamp};

/// What the sender will send: the manifest entries and where each file lives.
#[derive(Debug, Clone)]
pub struct SourceManifest {
    /// Entries in send order; parents come before their children.
    pub entries: Vec<Entry>,
    /// For each entry, its path on the local disk.
    pub local_paths: Vec<PathBuf>,
    /// Things that were not sent (symlinks, special files), with the reason.
    pub skipped: Vec<(PathBuf, &'static str)>,
}

impl SourceManifest {
    /// Walks `paths` (files or folders). Each becomes a top-level entry named after its
    /// last component.
    pub fn scan<P: AsRef<Path>>(paths: &[P]) -> Result<Self> {
        let mut manifest = SourceManifest {
            entries: Vec::new(),
            local_paths: Vec::new(),
            skipped: Vec::new(),
        };
        if paths.is_empty() {
            return Err(Error::InvalidInput("nothing to send".into()));
        }
        for path in paths {
            let path = path.as_ref();
            let meta = fs::metadata(path).map_err(|e| StorageError::new("cannot read", path, e))?;
            let name = top_level_name(path)?;
            if manifest.entries.iter().any(|e| e.path == name) {
                return Err(Error::InvalidInput(format!(
                    "two of the paths to send are both named {name:?}"
                )));
            }
            manifest.push(name.clone(), path, &meta);
            if meta.is_dir() {
                manifest.walk(path, &name)?;
            } else if !meta.is_file() {
                return Err(Error::InvalidInput(format!(
                    "{} is not a regular file or folder",
                    path.display()
                )));
            }
        }
        Ok(manifest)
    }

    fn push(&mut self, rel: String, local: &Path, meta: &fs::Metadata) {
        let kind = if meta.is_dir() {
            EntryKind::Dir
        } else {
            EntryKind::File { size: meta.len() }
        };
        let mtime = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| Timestamp {
                secs: d.as_secs() as i64,
                nanos: d.subsec_nanos(),
            })
            .unwrap_or_else(|| Timestamp {
                secs: meta.mtime(),
                nanos: meta.mtime_nsec() as u32,
            });
        self.entries.push(Entry {
            path: rel,
            kind,
            mode: meta.permissions().mode() & 0o777,
            mtime,
        });
        self.local_paths.push(local.to_path_buf());
    }

    fn walk(&mut self, dir: &Path, rel: &str) -> Result<()> {
        let mut children: Vec<_> = fs::read_dir(dir)
            .map_err(|e| StorageError::new("cannot list", dir, e))?
            .collect::<std::io::Result<_>>()
            .map_err(|e| StorageError::new("cannot list", dir, e))?;
        children.sort_by_key(|c| c.file_name());
        for child in children {
            let local = child.path();
            let name = child.file_name().into_string().map_err(|raw| {
                Error::InvalidInput(format!(
                    "{} has a name that is not valid UTF-8 ({raw:?}); rename it to send it",
                    local.display()
                ))
            })?;
            let meta = fs::symlink_metadata(&local)
                .map_err(|e| StorageError::new("cannot read", &local, e))?;
            let child_rel = format!("{rel}/{name}");
            if meta.file_type().is_symlink() {
                self.skipped.push((local, "symbolic link (not followed)"));
            } else if meta.is_dir() {
                self.push(child_rel.clone(), &local, &meta);
                self.walk(&local, &child_rel)?;
            } else if meta.is_file() {
                self.push(child_rel, &local, &meta);
            } else {
                self.skipped.push((local, "not a regular file"));
            }
        }
        Ok(())
    }

    /// Sum of all file sizes.
    pub fn total_bytes(&self) -> u64 {
        self.entries
            .iter()
            .map(|e| match e.kind {
                EntryKind::File { size } => size,
                EntryKind::Dir => 0,
            })
            .sum()
    }
}

fn top_level_name(path: &Path) -> Result<String> {
    let canonical;
    let named = match path.file_name() {
        Some(n) => n,
        None => {
            // `.` or `..` or `/`: use the real name of the folder.
            canonical =
                fs::canonicalize(path).map_err(|e| StorageError::new("cannot resolve", path, e))?;
            canonical.file_name().ok_or_else(|| {
                Error::InvalidInput(format!("cannot send {} as a whole", path.display()))
            })?
        }
    };
    named.to_str().map(str::to_owned).ok_or_else(|| {
        Error::InvalidInput(format!(
            "{} has a name that is not valid UTF-8; rename it to send it",
            path.display()
        ))
    })
}

/// Reads chunks of the manifest's files, keeping the current file open.
pub struct SourceReader {
    local_paths: Vec<PathBuf>,
    sizes: Vec<u64>,
    open: Option<(u32, File)>,
}

impl SourceReader {
    pub fn new(manifest: &SourceManifest) -> Self {
        Self {
            local_paths: manifest.local_paths.clone(),
            sizes: manifest
                .entries
                .iter()
                .map(|e| match e.kind {
                    EntryKind::File { size } => size,
                    EntryKind::Dir => 0,
                })
                .collect(),
            open: None,
        }
    }

    /// Reads `len` bytes of file `file` at `offset`. A file that shrank since the scan is
    /// an error (the receiver would fail verification anyway).
    pub fn read(&mut self, file: u32, offset: u64, len: usize) -> Result<Vec<u8>> {
        let path = &self.local_paths[file as usize];
        if self.open.as_ref().map(|(f, _)| *f) != Some(file) {
            let handle = File::open(path).map_err(|e| StorageError::new("cannot open", path, e))?;
            self.open = Some((file, handle));
        }
        let Some((_, handle)) = &self.open else {
            unreachable!("opened above")
        };
        // Read straight into spare capacity: no zero-filling of a buffer that is about
        // to be overwritten.
        let mut buf = Vec::with_capacity(len);
        while buf.len() < len {
            let at = offset + buf.len() as u64;
            match rustix::io::pread(handle, spare_capacity(&mut buf), at) {
                Ok(0) => {
                    return Err(Error::InvalidInput(format!(
                        "{} changed while it was being sent (it was {} bytes)",
                        path.display(),
                        self.sizes[file as usize]
                    )));
                }
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(StorageError::new("cannot read", path, e.into()).into()),
            }
        }
        // The allocator may have given more capacity than asked; keep only the chunk.
        buf.truncate(len);
        Ok(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scan_keeps_structure_skips_inner_symlinks_and_sorts() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        fs::create_dir_all(root.join("b/empty")).unwrap();
        fs::write(root.join("b/x.txt"), b"hello").unwrap();
        fs::write(root.join("a.txt"), b"").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", root.join("link")).unwrap();
        let m = SourceManifest::scan(&[&root]).unwrap();
        let paths: Vec<_> = m.entries.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "root",
                "root/a.txt",
                "root/b",
                "root/b/empty",
                "root/b/x.txt"
            ]
        );
        assert_eq!(m.total_bytes(), 5);
        assert_eq!(m.skipped.len(), 1);
        let mut r = SourceReader::new(&m);
        assert_eq!(r.read(4, 1, 3).unwrap(), b"ell");
        assert!(r.read(4, 3, 5).is_err(), "reading past the end is an error");
    }

    #[test]
    fn same_name_twice_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        for d in ["a", "b"] {
            fs::create_dir(tmp.path().join(d)).unwrap();
            fs::write(tmp.path().join(d).join("f"), b"1").unwrap();
        }
        let err =
            SourceManifest::scan(&[tmp.path().join("a/f"), tmp.path().join("b/f")]).unwrap_err();
        assert!(err.to_string().contains("both named"), "{err}");
    }
}
