//! `resume_state`: the receiver's resume state file (`.p2p-<id>.resume` in the output
//! folder), which anyone who can write there can shape, through `StateBody::decode` and
//! what the receiver then does with it (`believable`, `Claim::info`, `rechunk`).
//!
//! Input: the file without its trailing CRC-32. The target decodes the input as it is
//! (so the length, checksum, magic and version checks are fuzzed too) and then with the
//! right CRC appended, as someone who edits the file would, so that the fuzzer reaches
//! the postcard body instead of stopping at the checksum. Checks:
//!
//! - `decode` never panics; what it accepts re-encodes to no more bytes and decodes to
//!   the same state (round trip), with the checksum that `encode` writes.
//! - `believable` returns the `written` claim exactly in the same boot and the `durable`
//!   one otherwise, and `Claim::info` keeps exactly the claimed chunks (a `ChunkSet` of
//!   sorted, disjoint, non-touching, non-empty ranges covering the same indices).
//! - `rechunk` to another chunk size never claims a byte that was not held (its
//!   documented promise), whatever sizes and chunk sizes the file names.

use std::collections::BTreeMap;

use p2p_core::fs::resume_state::{rechunk, Claim, StateBody};
use p2p_core::transfer::{ChunkSet, ResumeInfo};
use uuid::Uuid;

pub fn run(data: &[u8]) {
    check(data);
    let mut file = data.to_vec();
    file.extend_from_slice(&crc32fast::hash(data).to_le_bytes());
    check(&file);
}

fn check(file: &[u8]) {
    let body = match StateBody::decode(file) {
        Ok(body) => body,
        Err(why) => {
            assert!(!why.is_empty());
            return;
        }
    };
    let encoded = body.encode();
    assert!(encoded.len() <= file.len(), "re-encoding grew the state");
    assert_eq!(
        StateBody::decode(&encoded).as_ref(),
        Ok(&body),
        "round trip changed the state"
    );

    let durable = checked_info(&body.durable);
    let written = checked_info(&body.written);
    let other_boot = Some(Uuid::from_u128(body.boot_id.map_or(1, |b| b.as_u128() ^ 1)));
    assert_eq!(body.believable(None), (durable.clone(), true));
    assert_eq!(body.believable(other_boot), (durable.clone(), true));
    if body.boot_id.is_some() {
        assert_eq!(body.believable(body.boot_id), (written.clone(), false));
    }

    // Sizes for the files the state names, taken from the state itself (so the fuzzer
    // steers them), with some files unknown to the offer.
    let seed = body.transfer_id.as_u128();
    let sizes = move |file: u32| -> Option<u64> {
        let bits = (seed >> (file % 64)) as u64;
        (file % 5 != 4).then_some(bits >> (bits % 61))
    };
    let from = body.chunk_size;
    let digest = body.manifest_digest;
    let targets = [
        1,
        from.wrapping_mul(2),
        from / 2,
        from.wrapping_add(1),
        u32::from_le_bytes([digest[0], digest[1], digest[2], digest[3]]),
        u32::MAX,
    ];
    for info in [&durable, &written] {
        for to in targets {
            check_rechunk(info, from, to, sizes);
        }
    }
}

/// `Claim::info`, checked against the claim's own list of ranges.
fn checked_info(claim: &Claim) -> ResumeInfo {
    let info = claim.info();
    assert_eq!(info.complete, claim.complete);
    // Later entries for the same file replace earlier ones (a map is built).
    let mut expected: BTreeMap<u32, &[(u64, u64)]> = BTreeMap::new();
    for (file, ranges) in &claim.have {
        expected.insert(*file, ranges);
    }
    assert_eq!(
        info.have.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>()
    );
    for (file, ranges) in expected {
        let set = &info.have[&file];
        check_set(set);
        // Same indices: merge the claimed ranges by hand and compare.
        let mut claimed: Vec<(u64, u64)> = ranges.iter().copied().filter(|(s, e)| s < e).collect();
        claimed.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::new();
        for (s, e) in claimed {
            match merged.last_mut() {
                Some(last) if s <= last.1 => last.1 = last.1.max(e),
                _ => merged.push((s, e)),
            }
        }
        assert_eq!(set.ranges().collect::<Vec<_>>(), merged);
    }
    // Claim::new is the inverse on what info produced.
    assert_eq!(Claim::new(&info).info(), info);
    info
}

fn check_set(set: &ChunkSet) {
    let ranges: Vec<_> = set.ranges().collect();
    for (s, e) in &ranges {
        assert!(s < e, "empty range in a ChunkSet: {ranges:?}");
    }
    for pair in ranges.windows(2) {
        assert!(pair[0].1 < pair[1].0, "ranges overlap or touch: {ranges:?}");
    }
    assert_eq!(set.is_empty(), ranges.is_empty());
}

/// `rechunk` claims no byte that was not held: every byte of every new chunk lies in a
/// range of old chunks that was held (bytes past the end of the file do not exist).
fn check_rechunk(info: &ResumeInfo, from: u32, to: u32, sizes: impl Fn(u32) -> Option<u64>) {
    let out = rechunk(info, from, to, &sizes);
    assert_eq!(out.complete, info.complete);
    let (from, to) = (u128::from(from.max(1)), u128::from(to.max(1)));
    for (file, set) in &out.have {
        check_set(set);
        assert!(!set.is_empty(), "rechunk kept an empty set for file {file}");
        let size = u128::from(sizes(*file).expect("rechunk kept a file of unknown size"));
        let held = info.have.get(file).expect("rechunk invented a file");
        // Held bytes, as merged intervals.
        let mut bytes: Vec<(u128, u128)> = Vec::new();
        for (s, e) in held.ranges() {
            let (s, e) = (
                (u128::from(s) * from).min(size),
                (u128::from(e) * from).min(size),
            );
            if s >= e {
                continue;
            }
            match bytes.last_mut() {
                Some(last) if s <= last.1 => last.1 = last.1.max(e),
                _ => bytes.push((s, e)),
            }
        }
        for (s, e) in set.ranges() {
            let (first, end) = (u128::from(s) * to, (u128::from(e) * to).min(size));
            assert!(
                first < end,
                "file {file}: new chunks {s}..{e} of {to} B lie past the end ({size} B)"
            );
            // `bytes` is sorted and merged: only the last interval starting at or before
            // `first` can hold it (a binary search keeps big claims fast to check).
            let at = bytes.partition_point(|&(hs, _)| hs <= first);
            assert!(
                at > 0 && end <= bytes[at - 1].1,
                "file {file}: new chunks {s}..{e} of {to} B (bytes {first}..{end}) were not \
                 held; held bytes {bytes:?}"
            );
        }
    }
}
