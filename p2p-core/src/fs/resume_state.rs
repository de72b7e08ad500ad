//! The receiver's resume state file: which chunks of which files are durably on disk,
//! bound to one transfer.
//!
//! Layout: `b"P2PR"`, a format version byte, a postcard-encoded [`StateBody`], then the
//! CRC-32 of everything before it (little endian). A file that is truncated, corrupt, of
//! another version, or for another transfer or manifest is rejected with a reason; the
//! caller reports it and starts afresh.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::transfer::{ChunkSet, ResumeInfo};
use crate::verify::crc32;
use crate::wire::Entry;

const MAGIC: [u8; 4] = *b"P2PR";
const FORMAT: u8 = 1;

/// The state as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateBody {
    pub transfer_id: Uuid,
    /// [`manifest_digest`] of the offer this state belongs to.
    pub manifest_digest: [u8; 32],
    pub chunk_size: u32,
    /// Per file: durable chunk ranges `[start, end)`.
    pub have: Vec<(u32, Vec<(u64, u64)>)>,
    /// Files verified and moved into place.
    pub complete: Vec<u32>,
}

/// SHA-256 over the encoded entries: names, kinds, sizes, modes and times. A sender
/// whose files changed since the earlier attempt offers another digest, and nothing is
/// resumed.
pub fn manifest_digest(entries: &[Entry]) -> [u8; 32] {
    let encoded = postcard::to_allocvec(entries).unwrap_or_default();
    Sha256::digest(&encoded).into()
}

impl StateBody {
    pub fn new(transfer_id: Uuid, digest: [u8; 32], chunk_size: u32, info: &ResumeInfo) -> Self {
        Self {
            transfer_id,
            manifest_digest: digest,
            chunk_size,
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
        let body = StateBody::new(Uuid::from_u128(5), [7; 32], 4096, &info);
        let bytes = body.encode();
        let back = StateBody::decode(&bytes).unwrap();
        assert_eq!(back, body);
        assert_eq!(back.info(), info);
        for cut in 0..bytes.len() {
            assert!(StateBody::decode(&bytes[..cut]).is_err(), "cut {cut}");
        }
        let mut flipped = bytes.clone();
        flipped[10] ^= 1;
        assert!(StateBody::decode(&flipped).is_err());
    }
}
