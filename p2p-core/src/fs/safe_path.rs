//! Validation of the relative paths an offer names.
//!
//! A path is accepted only when every component is an ordinary file name on every
//! platform we target: relative, `/`-separated, no empty, `.` or `..` components, no
//! backslash or colon (drive letters, UNC prefixes, alternate data streams), no NUL or
//! control characters, no Windows reserved device names, no trailing dot or space, and
//! bounded lengths. The whole offer is then checked for duplicates and for a file that
//! another entry uses as a directory. Only then is anything written.

use std::collections::HashMap;

use crate::error::TransferError;
use crate::wire::{Entry, EntryKind};

/// Most entries an offer may hold.
pub const MAX_ENTRIES: usize = 1_000_000;
/// Longest accepted relative path, in bytes.
pub const MAX_PATH_LEN: usize = 4096;
/// Longest accepted path component, in bytes.
pub const MAX_COMPONENT_LEN: usize = 255;

const RESERVED: [&str; 22] = [
    "CON", "PRN", "AUX", "NUL", "COM1", "COM2", "COM3", "COM4", "COM5", "COM6", "COM7", "COM8",
    "COM9", "LPT1", "LPT2", "LPT3", "LPT4", "LPT5", "LPT6", "LPT7", "LPT8", "LPT9",
];

fn unsafe_path(path: &str, reason: &'static str) -> TransferError {
    TransferError::UnsafePath {
        path: path.escape_debug().to_string(),
        reason,
    }
}

/// Checks one relative path; returns its components.
pub fn validate_path(path: &str) -> Result<Vec<&str>, TransferError> {
    if path.is_empty() {
        return Err(unsafe_path(path, "empty path"));
    }
    if path.len() > MAX_PATH_LEN {
        return Err(unsafe_path(path, "path too long"));
    }
    if path.starts_with('/') {
        return Err(unsafe_path(path, "absolute path"));
    }
    let mut parts = Vec::new();
    for part in path.split('/') {
        validate_component(path, part)?;
        parts.push(part);
    }
    Ok(parts)
}

fn validate_component(path: &str, part: &str) -> Result<(), TransferError> {
    match part {
        "" => return Err(unsafe_path(path, "empty component (`//` or trailing `/`)")),
        "." => return Err(unsafe_path(path, "`.` component")),
        ".." => {
            return Err(unsafe_path(
                path,
                "`..` component escapes the output folder",
            ))
        }
        _ => {}
    }
    if part.len() > MAX_COMPONENT_LEN {
        return Err(unsafe_path(path, "file name too long"));
    }
    if part.chars().any(|c| c == '\0') {
        return Err(unsafe_path(path, "NUL character"));
    }
    if part.chars().any(char::is_control) {
        return Err(unsafe_path(path, "control character"));
    }
    if is_reserved_name(part) {
        return Err(unsafe_path(
            path,
            "name reserved for the receiver's temporary files (`.p2p-*`, `*.p2p.part`)",
        ));
    }
    if part.contains('\\') {
        return Err(unsafe_path(
            path,
            "backslash (Windows separator or UNC prefix)",
        ));
    }
    if part.contains(':') {
        return Err(unsafe_path(path, "colon (drive letter or stream name)"));
    }
    if part.ends_with('.') || part.ends_with(' ') {
        return Err(unsafe_path(path, "trailing dot or space"));
    }
    let stem = part.split('.').next().unwrap_or(part).trim_end();
    if RESERVED.iter().any(|r| r.eq_ignore_ascii_case(stem)) {
        return Err(unsafe_path(path, "Windows reserved device name"));
    }
    Ok(())
}

/// Most bytes one offer may hold in all (and so any one file): the largest offset
/// `pwrite` takes.
pub const MAX_OFFER_BYTES: u64 = i64::MAX as u64;

/// Names the receiver keeps for its own files beside the peer's: temporary files
/// (`.{tag}-{n}.p2p.part`), the resume state (`.p2p-{id}.resume` and its `.tmp`) and
/// probes (`.p2p-{tag}.probe`). An entry named like one of them could change what
/// lands in a final file or be deleted by the receiver's clean-up, so it is refused.
fn is_reserved_name(part: &str) -> bool {
    part.starts_with(".p2p-") || part.ends_with(".p2p.part")
}

/// Checks every entry of an offer and the offer as a whole.
pub fn validate_entries(entries: &[Entry]) -> Result<(), TransferError> {
    if entries.len() > MAX_ENTRIES {
        return Err(TransferError::Protocol(format!(
            "offer has {} entries, the limit is {MAX_ENTRIES}",
            entries.len()
        )));
    }
    // Sizes: every offset within a file, and the whole offer, must fit the file API's
    // signed 64-bit offsets — checked, never wrapping, so that a sum cannot come out
    // small and pass the free-space check.
    let mut total: u64 = 0;
    for entry in entries {
        if let EntryKind::File { size } = entry.kind {
            total = total
                .checked_add(size)
                .filter(|t| *t <= MAX_OFFER_BYTES)
                .ok_or_else(|| {
                    TransferError::Protocol(format!(
                        "the offer's sizes add up to more than {MAX_OFFER_BYTES} bytes"
                    ))
                })?;
        }
    }
    // path -> is_dir, for every entry and every implied parent directory.
    let mut seen: HashMap<&str, bool> = HashMap::with_capacity(entries.len());
    for entry in entries {
        validate_path(&entry.path)?;
        let is_dir = matches!(entry.kind, EntryKind::Dir);
        if seen.insert(entry.path.as_str(), is_dir).is_some() {
            return Err(unsafe_path(&entry.path, "duplicate entry"));
        }
    }
    // A file may not also serve as the parent of another entry.
    for entry in entries {
        let mut end = 0;
        while let Some(pos) = entry.path[end..].find('/') {
            let parent = &entry.path[..end + pos];
            if seen.get(parent) == Some(&false) {
                return Err(unsafe_path(
                    &entry.path,
                    "a file of the offer is used as a directory",
                ));
            }
            end += pos + 1;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Timestamp;

    fn file(path: &str) -> Entry {
        Entry {
            path: path.into(),
            kind: EntryKind::File { size: 1 },
            mode: 0o644,
            mtime: Timestamp::default(),
        }
    }

    fn dir(path: &str) -> Entry {
        Entry {
            kind: EntryKind::Dir,
            ..file(path)
        }
    }

    fn sized(path: &str, size: u64) -> Entry {
        Entry {
            kind: EntryKind::File { size },
            ..file(path)
        }
    }

    /// Issue 10, item 4: `[2^64-1, 2]` summed with wrapping addition is 1 and passed
    /// the free-space check.
    #[test]
    fn sizes_that_overflow_are_refused() {
        let offer = [sized("a", u64::MAX), sized("b", 2)];
        assert!(matches!(
            validate_entries(&offer),
            Err(TransferError::Protocol(_))
        ));
        let offer = [sized("a", MAX_OFFER_BYTES), sized("b", 1)];
        assert!(validate_entries(&offer).is_err());
        validate_entries(&[sized("a", MAX_OFFER_BYTES - 1), sized("b", 1)]).unwrap();
    }

    proptest::proptest! {
        /// Any offer with extreme sizes is either refused or sums without overflow
        /// within the limit; nothing panics (debug builds check arithmetic).
        #[test]
        fn extreme_sizes_never_wrap(sizes in proptest::collection::vec(
            proptest::prop_oneof![
                proptest::prelude::Just(u64::MAX),
                proptest::prelude::Just(u64::MAX / 2 + 1),
                proptest::prelude::Just(MAX_OFFER_BYTES),
                proptest::prelude::Just(0u64),
                proptest::prelude::any::<u64>(),
                0u64..1 << 40,
            ], 1..8)) {
            let entries: Vec<Entry> = sizes
                .iter()
                .enumerate()
                .map(|(i, size)| sized(&format!("f{}", i), *size))
                .collect();
            let exact: u128 = sizes.iter().map(|s| u128::from(*s)).sum();
            let accepted = validate_entries(&entries).is_ok();
            proptest::prop_assert_eq!(accepted, exact <= u128::from(MAX_OFFER_BYTES));
            if accepted {
                let layout = crate::chunk::Layout::new(&entries, 1024);
                proptest::prop_assert_eq!(u128::from(layout.total_bytes()), exact);
                for f in layout.files() {
                    let chunks = layout.chunks(f).unwrap_or(0);
                    if chunks > 0 {
                        let last = crate::wire::ChunkRef { file: f, index: chunks - 1 };
                        let beyond = crate::wire::ChunkRef { file: f, index: chunks };
                        proptest::prop_assert!(layout.chunk_len(last).is_some());
                        proptest::prop_assert!(layout.chunk_len(beyond).is_none());
                    }
                }
            }
        }
    }

    #[test]
    fn reserved_names_are_refused() {
        for p in [
            ".p2p-0123abcd.resume",
            "sub/.p2p-0123456789abcdef0123456789abcdef.resume.tmp",
            ".0123abcd-1.p2p.part",
            "x/.p2p-0123abcd.probe",
        ] {
            let e = validate_path(p).expect_err(p).to_string();
            assert!(e.contains("reserved"), "{p}: {e}");
        }
    }

    #[test]
    fn ordinary_paths_pass() {
        for p in [
            "a",
            "a/b/c.txt",
            "ünïcødé/日本語.txt",
            ".hidden",
            "a..b",
            "CONSOLE",
            "com10",
        ] {
            validate_path(p).unwrap_or_else(|e| panic!("{p}: {e}"));
        }
    }

    #[test]
    fn hostile_paths_are_rejected_with_a_reason() {
        let cases = [
            ("../etc/passwd", "`..`"),
            ("a/../../b", "`..`"),
            ("/etc/passwd", "absolute"),
            ("C:/Windows", "colon"),
            ("c:evil", "colon"),
            ("\\\\server\\share\\x", "backslash"),
            ("a\\..\\b", "backslash"),
            ("a\0b", "NUL"),
            ("a\nb", "control"),
            ("a\u{1b}[31m", "control"),
            ("CON", "reserved"),
            ("dir/nul.txt", "reserved"),
            ("Lpt1.tar.gz", "reserved"),
            ("a//b", "empty component"),
            ("a/", "empty component"),
            ("", "empty path"),
            ("./a", "`.`"),
            ("a.", "trailing"),
            ("a ", "trailing"),
        ];
        for (path, reason) in cases {
            let err = validate_path(path).expect_err(path).to_string();
            assert!(err.contains(reason), "{path:?}: {err}");
        }
        let long = "x".repeat(256);
        assert!(validate_path(&long).is_err());
        let deep = "a/".repeat(2100) + "b";
        assert!(validate_path(&deep).is_err());
    }

    #[test]
    fn duplicates_and_file_used_as_directory_are_rejected() {
        let err = validate_entries(&[file("a"), file("a")]).unwrap_err();
        assert!(err.to_string().contains("duplicate"));
        let err = validate_entries(&[dir("a"), dir("a")]).unwrap_err();
        assert!(err.to_string().contains("duplicate"));
        let err = validate_entries(&[file("a"), file("a/b")]).unwrap_err();
        assert!(err.to_string().contains("used as a directory"), "{err}");
        let err = validate_entries(&[file("x/a"), dir("x"), file("x/a/b/c")]).unwrap_err();
        assert!(err.to_string().contains("used as a directory"), "{err}");
        validate_entries(&[dir("a"), file("a/b"), dir("a/c"), file("a/c/d")]).unwrap();
    }
}
