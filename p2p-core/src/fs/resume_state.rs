//! The receiver's resume state file: which chunks of which files are on disk, bound to
//! one transfer.
//!
//! It makes two claims. `durable` lists what was flushed to the disk (`syncfs`) before
//! the state was written: that survives a power cut. `written` lists everything the
//! receiver had written when it saved, most of which may still sit in the page cache:
//! that survives the receiver being killed or crashing, but not the machine going down.
//! So `written` is only believed by a receiver running in the same boot of the kernel
//! (the state records `/proc/sys/kernel/random/boot_id`); after a reboot the `durable`
//! claim is used. Flushing is what makes saving expensive — with thousands of small
//! files it halved the receive rate — so the receiver saves `written` often and cheaply
//! and `durable` seldom (see `transfer::disk`).
//!
//! Layout: `b"P2PR"`, a format version byte, a postcard-encoded [`StateBody`], then the
//! CRC-32 of everything before it (little endian). A file that is truncated, corrupt, of
//! another version, or for another transfer or manifest is rejected with a reason; the
//! caller reports it and starts afresh.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::chunk::{ChunkSet, ResumeInfo};
use crate::verify::crc32;
use crate::wire::Entry;

const MAGIC: [u8; 4] = *b"P2PR";
const FORMAT: u8 = 2;

/// The state as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateBody {
    pub transfer_id: Uuid,
    /// [`manifest_digest`] of the offer this state belongs to.
    pub manifest_digest: [u8; 32],
    pub chunk_size: u32,
    /// The kernel boot the `written` claim was made in (`None` if unknown: then only
    /// `durable` is ever believed).
    pub boot_id: Option<Uuid>,
    /// What was flushed to disk before this state was written.
    pub durable: Claim,
    /// What had been written (a superset of `durable`).
    pub written: Claim,
}

/// Chunks and files on disk, as stored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    /// Per file: chunk ranges `[start, end)` in its `.part` file.
    pub have: Vec<(u32, Vec<(u64, u64)>)>,
    /// Files verified and moved into place.
    pub complete: Vec<u32>,
}

impl Claim {
    pub fn new(info: &ResumeInfo) -> Self {
        Self {
            have: info
                .have
                .iter()
                .map(|(f, set)| (*f, set.ranges().collect()))
                .collect(),
            complete: info.complete.clone(),
        }
    }

    pub fn info(&self) -> ResumeInfo {
        ResumeInfo {
            have: self
                .have
                .iter()
                .map(|(f, ranges)| {
                    let mut set = ChunkSet::new();
                    for (s, e) in ranges {
                        set.insert_range(*s, *e);
                    }
                    (*f, set)
                })
                .collect(),
            complete: self.complete.clone(),
        }
    }
}

/// Re-expresses the chunks held per file in another chunk size: a chunk of the new size
/// is held if every byte of it was (the last chunk of a file may be short). What only
/// partly covers a new chunk is received again, so the conversion never claims a byte
/// that was not held. `sizes` gives each file's size; files it does not know are dropped.
pub fn rechunk(
    info: &ResumeInfo,
    from: u32,
    to: u32,
    sizes: impl Fn(u32) -> Option<u64>,
) -> ResumeInfo {
    let (from, to) = (u64::from(from.max(1)), u64::from(to.max(1)));
    let mut have = std::collections::BTreeMap::new();
    for (&file, set) in &info.have {
        let Some(size) = sizes(file) else {
            continue;
        };
        let mut converted = ChunkSet::new();
        for (start, end) in set.ranges() {
            let first_byte = start.saturating_mul(from).min(size);
            let end_byte = end.saturating_mul(from).min(size);
            let new_start = first_byte.div_ceil(to);
            // A range reaching the end of the file covers its short last chunk too.
            let new_end = if end_byte == size {
                size.div_ceil(to)
            } else {
                end_byte / to
            };
            if new_start < new_end {
                converted.insert_range(new_start, new_end);
            }
        }
        if !converted.is_empty() {
            have.insert(file, converted);
        }
    }
    ResumeInfo {
        have,
        complete: info.complete.clone(),
    }
}

/// This boot of the kernel (Linux), read once.
pub fn boot_id() -> Option<Uuid> {
    static BOOT: std::sync::OnceLock<Option<Uuid>> = std::sync::OnceLock::new();
    *BOOT.get_or_init(|| {
        let text = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
        Uuid::parse_str(text.trim()).ok()
    })
}

/// SHA-256 over the encoded entries: names, kinds, sizes, modes and times. A sender
/// whose files changed since the earlier attempt offers another digest, and nothing is
/// resumed.
pub fn manifest_digest(entries: &[Entry]) -> [u8; 32] {
    // Streamed into the hash: a large offer is not encoded into memory a second time.
    let mut hasher = Sha256::new();
    let _ = postcard::to_io(entries, &mut hasher);
    hasher.finalize().into()
}

impl StateBody {
    pub fn new(
        transfer_id: Uuid,
        digest: [u8; 32],
        chunk_size: u32,
        durable: &ResumeInfo,
        written: &ResumeInfo,
    ) -> Self {
        Self {
            transfer_id,
            manifest_digest: digest,
            chunk_size,
            boot_id: boot_id(),
            durable: Claim::new(durable),
            written: Claim::new(written),
        }
    }

    /// The claim a receiver in boot `now` can believe, and whether it is the durable
    /// one.
    pub fn believable(&self, now: Option<Uuid>) -> (ResumeInfo, bool) {
        if self.boot_id.is_some() && self.boot_id == now {
            (self.written.info(), false)
        } else {
            (self.durable.info(), true)
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.push(FORMAT);
        out.extend(postcard::to_allocvec(self).unwrap_or_default());
        let crc = crc32(&out);
        out.extend(crc.to_le_bytes());
        out
    }

    /// Decodes and checks a state file; the error says why it cannot be used.
    pub fn decode(bytes: &[u8]) -> Result<Self, &'static str> {
        if bytes.len() < MAGIC.len() + 1 + 4 {
            return Err("truncated");
        }
        let (body, crc) = bytes.split_at(bytes.len() - 4);
        if crc32(body).to_le_bytes() != crc {
            return Err("checksum mismatch (corrupt or truncated)");
        }
        if body[..4] != MAGIC {
            return Err("not a resume state file");
        }
        if body[4] != FORMAT {
            return Err("written by another version");
        }
        postcard::from_bytes(&body[5..]).map_err(|_| "undecodable")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_damage() {
        let mut info = ResumeInfo::default();
        let mut set = ChunkSet::new();
        set.insert_range(0, 10);
        set.insert_range(12, 13);
        info.have.insert(1, set);
        info.complete.push(3);
        let body = StateBody::new(Uuid::from_u128(5), [7; 32], 4096, &info, &info);
        let bytes = body.encode();
        let back = StateBody::decode(&bytes).unwrap();
        assert_eq!(back, body);
        assert_eq!(back.durable.info(), info);
        for cut in 0..bytes.len() {
            assert!(StateBody::decode(&bytes[..cut]).is_err(), "cut {cut}");
        }
        let mut flipped = bytes.clone();
        flipped[10] ^= 1;
        assert!(StateBody::decode(&flipped).is_err());
    }

    #[test]
    fn what_was_only_written_is_believed_in_the_same_boot_only() {
        let mut durable = ResumeInfo::default();
        let mut set = ChunkSet::new();
        set.insert_range(0, 4);
        durable.have.insert(0, set);
        let mut written = durable.clone();
        written.have.get_mut(&0).unwrap().insert_range(4, 9);
        written.complete.push(2);
        let mut body = StateBody::new(Uuid::from_u128(5), [7; 32], 4096, &durable, &written);
        body.boot_id = Some(Uuid::from_u128(1));
        assert_eq!(
            body.believable(Some(Uuid::from_u128(1))),
            (written.clone(), false)
        );
        // After a reboot, or when the boot cannot be told: only what was flushed.
        assert_eq!(
            body.believable(Some(Uuid::from_u128(2))),
            (durable.clone(), true)
        );
        assert_eq!(body.believable(None), (durable.clone(), true));
        body.boot_id = None;
        assert_eq!(body.believable(None), (durable, true));
    }

    #[test]
    fn held_chunks_are_re_expressed_in_another_chunk_size_without_claiming_more() {
        let mut info = ResumeInfo::default();
        let mut set = ChunkSet::new();
        set.insert_range(0, 5); // bytes 0..5120 of file 0 (1 KiB chunks)
        set.insert_range(7, 10); // bytes 7168..10000 (the file's end)
        info.have.insert(0, set);
        info.complete.push(1);
        let sizes = |f| (f == 0).then_some(10_000);
        // To 4 KiB chunks: 0..4096 is held (chunk 0); 4096..8192 is not whole; the
        // last chunk 8192..10000 lies within 7168..10000, so it is held.
        let bigger = rechunk(&info, 1024, 4096, sizes);
        assert_eq!(
            bigger.have[&0].ranges().collect::<Vec<_>>(),
            vec![(0, 1), (2, 3)]
        );
        assert_eq!(bigger.complete, vec![1]);
        // To 512 B chunks: every byte range maps exactly.
        let smaller = rechunk(&info, 1024, 512, sizes);
        assert_eq!(
            smaller.have[&0].ranges().collect::<Vec<_>>(),
            vec![(0, 10), (14, 20)]
        );
        // A file the offer does not have is dropped.
        let mut stray = info.clone();
        stray.have.insert(9, ChunkSet::new());
        assert!(!rechunk(&stray, 1024, 512, sizes).have.contains_key(&9));
    }
}
