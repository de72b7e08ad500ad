//! A resume state file is the receiver's own, but it lies in the output folder and may
//! be damaged or planted: whatever it claims, preparing a transfer must not panic and
//! must not believe it.

use std::sync::Arc;

use p2p_core::fs::output::OutputDir;
use p2p_core::fs::resume_state::{manifest_digest, StateBody};
use p2p_core::transfer::{ChunkSet, ResumeInfo};
use p2p_core::wire::{Entry, EntryKind, Timestamp};

/// Found by the `resume_state` fuzz target's author: a range ending near 2^64 made the
/// `.part` length check multiply past `u64::MAX` (a panic in debug builds, a wrong
/// length in release builds).
#[test]
fn a_state_claiming_chunks_up_to_u64_max_is_ignored_not_a_panic() {
    let tmp = tempfile::tempdir().unwrap();
    let id = uuid::Uuid::from_u128(0x0123_4567_89ab_cdef_fedc_ba98_7654_3210);
    let entries: Arc<[Entry]> = vec![Entry {
        path: "a".into(),
        kind: EntryKind::File { size: 10 },
        mode: 0o644,
        mtime: Timestamp::default(),
    }]
    .into();
    let mut chunks = ChunkSet::new();
    chunks.insert_range(0, u64::MAX);
    let claim = ResumeInfo {
        have: [(0, chunks)].into_iter().collect(),
        complete: vec![],
    };
    let state = StateBody::new(id, manifest_digest(&entries), 4096, &claim, &claim).encode();
    std::fs::write(
        tmp.path().join(format!(".p2p-{}.resume", id.simple())),
        state,
    )
    .unwrap();
    let output = OutputDir::prepare(tmp.path(), id, &entries, false, 4096).unwrap();
    assert_eq!(
        output.resume_info(),
        &ResumeInfo::default(),
        "nothing believed"
    );
    assert!(!output.notes().is_empty(), "the user is told why");
}
