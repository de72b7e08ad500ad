//! Files that get their name only once they are complete (Linux `O_TMPFILE`).
//!
//! A small file is received into an unnamed file in its destination folder and linked
//! under its final name once verified. Compared with a named `.part` file that is renamed
//! into place, that is one directory update instead of three (create, and a rename that
//! removes one name and adds another), which is most of what a folder of many small
//! files costs the receiver; and an interrupted transfer leaves no stray file behind,
//! since an unnamed file disappears with its last descriptor. The link cannot replace a
//! file that appeared meanwhile (`linkat` never replaces), as the no-replace rename of a
//! `.part` file cannot.
//!
//! Linking a descriptor needs either `/proc` (`/proc/self/fd/N` with
//! `AT_SYMLINK_FOLLOW`) or, without it, `AT_EMPTY_PATH` (which older kernels allow only
//! to privileged processes). [`Unnamed::probe`] finds out once per output folder which
//! works; where neither does, or the file system has no `O_TMPFILE`, the caller keeps
//! using `.part` files.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd};

use cap_std::fs::Dir;
use rustix::fs::{AtFlags, Mode, OFlags, CWD};

/// How a descriptor is given a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    /// `linkat(AT_FDCWD, "/proc/self/fd/N", dir, name, AT_SYMLINK_FOLLOW)`.
    ProcFd,
    /// `linkat(fd, "", dir, name, AT_EMPTY_PATH)`.
    EmptyPath,
}

/// Creating and naming unnamed files, as this system allows. See the module docs.
#[derive(Debug, Clone, Copy)]
pub struct Unnamed {
    link: Link,
}

impl Unnamed {
    /// Tries the whole cycle in `dir` under the scratch name `probe` (removed again).
    /// `None` if unnamed files cannot be used there.
    pub fn probe(dir: &Dir, probe: &str) -> Option<Self> {
        if !cfg!(target_os = "linux") {
            return None;
        }
        // (A probe left by a receiver killed at just this point would block the link.)
        let _ = dir.remove_file(probe);
        for link in [Link::ProcFd, Link::EmptyPath] {
            let method = Self { link };
            let Ok(file) = method.create(dir, 0o600) else {
                return None; // no O_TMPFILE here: no method will do
            };
            let linked = method.link(&file, dir, probe);
            let _ = dir.remove_file(probe);
            if linked.is_ok() {
                return Some(method);
            }
        }
        None
    }

    /// Whether the folder at `path` supports unnamed files (probing as the receiver
    /// does).
    pub fn supported_in(path: &std::path::Path) -> bool {
        Dir::open_ambient_dir(path, cap_std::ambient_authority())
            .ok()
            .and_then(|dir| Self::probe(&dir, ".p2p-unnamed.probe"))
            .is_some()
    }

    /// A new unnamed file in `dir`, open for writing, with permission bits `mode` (less
    /// the process umask).
    pub fn create(&self, dir: &Dir, mode: u32) -> io::Result<File> {
        let fd = rustix::fs::openat(
            dir.as_fd(),
            ".",
            OFlags::TMPFILE | OFlags::WRONLY | OFlags::CLOEXEC,
            Mode::from_raw_mode(mode & 0o777),
        )?;
        Ok(File::from(fd))
    }

    /// Gives `file` the name `name` in `dir`. Fails with `AlreadyExists` if the name is
    /// taken.
    pub fn link(&self, file: &File, dir: &Dir, name: &str) -> io::Result<()> {
        let linked = match self.link {
            Link::ProcFd => rustix::fs::linkat(
                CWD,
                format!("/proc/self/fd/{}", file.as_raw_fd()),
                dir.as_fd(),
                name,
                AtFlags::SYMLINK_FOLLOW,
            ),
            Link::EmptyPath => rustix::fs::linkat(file, "", dir.as_fd(), name, AtFlags::EMPTY_PATH),
        };
        linked.map_err(io::Error::from)
    }
}

/// This process's umask (Linux, from `/proc/self/status`; read once). `None` if it
/// cannot be read without changing it.
pub fn umask() -> Option<u32> {
    static UMASK: std::sync::OnceLock<Option<u32>> = std::sync::OnceLock::new();
    *UMASK.get_or_init(|| {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let line = status.lines().find_map(|l| l.strip_prefix("Umask:"))?;
        u32::from_str_radix(line.trim(), 8).ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use cap_std::ambient_authority;
    use std::io::Write;

    #[test]
    fn an_unnamed_file_appears_only_when_linked_and_never_replaces() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = Dir::open_ambient_dir(tmp.path(), ambient_authority()).unwrap();
        let Some(unnamed) = Unnamed::probe(&dir, ".probe") else {
            eprintln!("no O_TMPFILE on this file system; nothing to test");
            return;
        };
        assert_eq!(
            std::fs::read_dir(tmp.path()).unwrap().count(),
            0,
            "probe left nothing"
        );
        let mut file = unnamed.create(&dir, 0o640).unwrap();
        file.write_all(b"hello").unwrap();
        assert_eq!(
            std::fs::read_dir(tmp.path()).unwrap().count(),
            0,
            "no name yet"
        );
        std::fs::write(tmp.path().join("taken"), b"mine").unwrap();
        let err = unnamed.link(&file, &dir, "taken").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(tmp.path().join("taken")).unwrap(), b"mine");
        unnamed.link(&file, &dir, "greeting.txt").unwrap();
        assert_eq!(
            std::fs::read(tmp.path().join("greeting.txt")).unwrap(),
            b"hello"
        );
        // An unnamed file whose descriptor is closed is gone.
        drop(unnamed.create(&dir, 0o600).unwrap());
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 2);
    }

    #[test]
    fn the_umask_is_the_one_file_creation_applies() {
        let Some(mask) = umask() else {
            eprintln!("no /proc/self/status; nothing to test");
            return;
        };
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("f");
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o777)
            .open(&path)
            .unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o777 & !mask, "umask {mask:o}");
    }
}
