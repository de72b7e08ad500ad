//! Shared helpers for the integration tests: temp trees, digests, the real binary.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use sha2::{Digest, Sha256};

/// Path of the built `p2p-transfer` binary.
pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_p2p-transfer"))
}

/// Writes `len` pseudo-random bytes (seeded, so failures reproduce) to `path`.
pub fn random_file(path: &Path, len: usize, seed: u64) {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).unwrap();
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let mut file = fs::File::create(path).unwrap();
    let mut left = len;
    let mut buf = vec![0u8; 1 << 20];
    while left > 0 {
        let n = left.min(buf.len());
        rng.fill_bytes(&mut buf[..n]);
        std::io::Write::write_all(&mut file, &buf[..n]).unwrap();
        left -= n;
    }
}

pub fn sha256_file(path: &Path) -> String {
    let mut hasher = Sha256::new();
    let mut file = fs::File::open(path).unwrap();
    std::io::copy(&mut file, &mut hasher).unwrap();
    format!("{:x}", hasher.finalize())
}

/// What a tree holds, relative path → description ("dir", "file <sha256>", "link").
pub fn tree_digest(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
    for entry in fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let path = entry.path();
        let rel = path
            .strip_prefix(root)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let meta = fs::symlink_metadata(&path).unwrap();
        if meta.file_type().is_symlink() {
            out.insert(rel, "link".into());
        } else if meta.is_dir() {
            out.insert(rel, "dir".into());
            walk(root, &path, out);
        } else {
            out.insert(rel, format!("file {}", sha256_file(&path)));
        }
    }
}

/// Unix permission bits and mtime (seconds, nanoseconds) of a path.
pub fn mode_and_mtime(path: &Path) -> (u32, i64, i64) {
    use std::os::unix::fs::MetadataExt;
    let m = fs::metadata(path).unwrap();
    (m.permissions().mode() & 0o777, m.mtime(), m.mtime_nsec())
}

pub fn set_mode(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// Names of files left in `dir` (recursively) that look like partial downloads.
pub fn partial_files(dir: &Path) -> Vec<String> {
    tree_digest(dir)
        .into_keys()
        .filter(|k| k.ends_with(".part") || k.ends_with(".probe"))
        .collect()
}

/// Names of every file the receiver keeps for itself left in `dir` (recursively):
/// partial files, probes, resume states and their temporary files.
pub fn receiver_files(dir: &Path) -> Vec<String> {
    if !dir.exists() {
        return Vec::new();
    }
    tree_digest(dir)
        .into_keys()
        .filter(|k| {
            let name = k.rsplit('/').next().unwrap_or(k);
            name.starts_with(".p2p-") || name.ends_with(".p2p.part")
        })
        .collect()
}
