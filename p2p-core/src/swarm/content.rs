//! Content addressing: what a share is, named by a hash of everything in it.
//!
//! A share's [`Manifest`] lists its entries (paths, sizes, modes, mtimes — the same
//! [`Entry`] a direct transfer offers), its chunk size, and the BLAKE3 hash of every
//! chunk ("piece"). Pieces are the chunks of each file in turn (a file of `n` bytes has
//! `ceil(n / chunk_size)` of them, an empty file none), numbered from 0 across the share.
//!
//! - piece hash = BLAKE3 in derive-key mode, context `"p2p-transfer piece v1"`, over the
//!   piece's bytes;
//! - the pieces' **Merkle root**: leaves are the piece hashes; a node is BLAKE3 derive-key
//!   `"p2p-transfer node v1"` over `left ‖ right`; an odd node at the end of a level is
//!   carried up unchanged; no pieces → 32 zero bytes;
//! - the share's **root hash** = BLAKE3 derive-key `"p2p-transfer share v1"` over
//!   `postcard(name, chunk_size, entries) ‖ merkle_root ‖ piece_count (u64 LE)`.
//!
//! The root hash names the share: a manifest that arrives from a peer is believed only
//! if it hashes to the root the person was given, and from then on every piece is
//! checked against its own hash before it is written — a bad piece is pinned on the peer
//! that sent it. Why BLAKE3 rather than SHA-256: docs/architecture.md (both measured).

use std::fmt;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::SwarmError;
use crate::chunk::Layout;
use crate::fs::safe_path::validate_entries;
use crate::fs::source::SourceManifest;
use crate::wire::{ChunkRef, Entry, EntryKind};

/// Smallest chunk size a share uses (small shares).
pub const MIN_CHUNK_SIZE: u32 = 256 * 1024;
/// Largest chunk size (very large shares): bounds one piece message.
pub const MAX_CHUNK_SIZE: u32 = 16 * 1024 * 1024;
/// The chunk size grows (in powers of two) to keep a share near this many pieces.
pub const TARGET_PIECES: u64 = 65_536;
/// Most pieces a manifest may have (a peer's bitfield is at most this many bits).
pub const MAX_PIECES: u32 = 1 << 20;
/// Largest encoded manifest accepted from a peer or a `.p2p` file.
pub const MAX_MANIFEST_BYTES: usize = 64 * 1024 * 1024;

const PIECE_CONTEXT: &str = "p2p-transfer piece v1";
const NODE_CONTEXT: &str = "p2p-transfer node v1";
const SHARE_CONTEXT: &str = "p2p-transfer share v1";
const SWARM_ID_CONTEXT: &str = "p2p-transfer swarm id v1";
const SWARM_CODE_CONTEXT: &str = "p2p-transfer swarm code v1";

/// A 32-byte BLAKE3 hash: a piece hash or a share's root hash.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Hash(pub [u8; 32]);

impl Hash {
    /// The hash in lower-case hex (64 characters).
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The first `n` hex characters, for people.
    pub fn short(&self) -> String {
        let mut hex = self.to_hex();
        hex.truncate(12);
        hex
    }

    /// The id the tracker knows this share by (when `self` is a root hash): derived, so
    /// the tracker never learns the root hash, which is what lets a peer fetch the share.
    pub fn swarm_id(&self) -> [u8; 32] {
        blake3::derive_key(SWARM_ID_CONTEXT, &self.0)
    }

    /// The secret part of the one-time codes peers of this share meet with (when `self`
    /// is a root hash): only those who know the root hash can connect.
    pub fn swarm_secret(&self) -> String {
        let key = blake3::derive_key(SWARM_CODE_CONTEXT, &self.0);
        Hash(key).to_hex()[..32].to_owned()
    }
}

impl fmt::Display for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hash({})", self.short())
    }
}

impl FromStr for Hash {
    type Err = SwarmError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let bad = || SwarmError::Input(format!("not a root hash (64 hex characters): {s:?}"));
        if s.len() != 64 || !s.is_ascii() {
            return Err(bad());
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
        }
        Ok(Hash(out))
    }
}

/// The hash of one piece's bytes.
pub fn piece_hash(data: &[u8]) -> Hash {
    let mut hasher = blake3::Hasher::new_derive_key(PIECE_CONTEXT);
    hasher.update(data);
    Hash(*hasher.finalize().as_bytes())
}

/// The Merkle root of `leaves` (see the module documentation).
pub fn merkle_root(leaves: &[Hash]) -> Hash {
    if leaves.is_empty() {
        return Hash([0; 32]);
    }
    let mut level: Vec<Hash> = leaves.to_vec();
    while level.len() > 1 {
        level = level
            .chunks(2)
            .map(|pair| match pair {
                [left, right] => {
                    let mut hasher = blake3::Hasher::new_derive_key(NODE_CONTEXT);
                    hasher.update(&left.0);
                    hasher.update(&right.0);
                    Hash(*hasher.finalize().as_bytes())
                }
                [single] => *single,
                _ => unreachable!("chunks(2) yields one or two"),
            })
            .collect();
    }
    level[0]
}

/// The chunk size for a share of `total` bytes: [`MIN_CHUNK_SIZE`], doubled until the
/// share has at most [`TARGET_PIECES`] pieces (up to [`MAX_CHUNK_SIZE`]).
pub fn chunk_size_for(total: u64) -> u32 {
    let mut size = MIN_CHUNK_SIZE;
    while size < MAX_CHUNK_SIZE && total.div_ceil(u64::from(size)) > TARGET_PIECES {
        size *= 2;
    }
    size
}

/// What a share is (see the module documentation).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// What the share is called: its top-level entry's name (several: the first and a count).
    pub name: String,
    /// Bytes per piece (the last piece of a file may be shorter).
    pub chunk_size: u32,
    /// Files and folders, parents before children, as a direct transfer offers them.
    pub entries: Vec<Entry>,
    /// The hash of every piece, in piece order.
    pub pieces: Vec<Hash>,
}

/// The part of the manifest the root hashes besides the Merkle root.
#[derive(Serialize)]
struct Header<'a> {
    name: &'a str,
    chunk_size: u32,
    entries: &'a [Entry],
}

impl Manifest {
    /// The root hash: the share's name (see the module documentation).
    pub fn root(&self) -> Hash {
        let header = Header {
            name: &self.name,
            chunk_size: self.chunk_size,
            entries: &self.entries,
        };
        // Serialising plain data into a Vec cannot fail.
        let header = postcard::to_stdvec(&header).unwrap_or_default();
        let mut hasher = blake3::Hasher::new_derive_key(SHARE_CONTEXT);
        hasher.update(&header);
        hasher.update(&merkle_root(&self.pieces).0);
        hasher.update(&(self.pieces.len() as u64).to_le_bytes());
        Hash(*hasher.finalize().as_bytes())
    }

    /// Checks everything a peer could have got wrong: the chunk size, safe paths, sizes,
    /// and exactly one hash per piece.
    pub fn validate(&self) -> Result<PieceMap, SwarmError> {
        if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&self.chunk_size)
            || !self.chunk_size.is_power_of_two()
        {
            return Err(SwarmError::Manifest(format!(
                "chunk size {} is not a power of two between {MIN_CHUNK_SIZE} and {MAX_CHUNK_SIZE}",
                self.chunk_size
            )));
        }
        if self.name.is_empty() || self.name.len() > 255 || self.name.chars().any(char::is_control)
        {
            return Err(SwarmError::Manifest(
                "the share's name is empty or unsafe".into(),
            ));
        }
        validate_entries(&self.entries).map_err(|e| SwarmError::Manifest(e.to_string()))?;
        let map = PieceMap::new(&self.entries, self.chunk_size)?;
        if map.count() as usize != self.pieces.len() {
            return Err(SwarmError::Manifest(format!(
                "{} piece hashes for {} pieces",
                self.pieces.len(),
                map.count()
            )));
        }
        Ok(map)
    }

    /// Sum of the file sizes.
    pub fn total_bytes(&self) -> u64 {
        self.entries
            .iter()
            .map(|e| match e.kind {
                EntryKind::File { size } => size,
                EntryKind::Dir => 0,
            })
            .fold(0u64, u64::saturating_add)
    }

    /// The manifest as stored and sent (postcard).
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).unwrap_or_default()
    }

    /// Reads a manifest and believes it only if it hashes to `root` and is valid.
    pub fn decode(bytes: &[u8], root: &Hash) -> Result<(Manifest, PieceMap), SwarmError> {
        if bytes.len() > MAX_MANIFEST_BYTES {
            return Err(SwarmError::Manifest(format!(
                "{} bytes: larger than {MAX_MANIFEST_BYTES}",
                bytes.len()
            )));
        }
        let (manifest, rest): (Manifest, _) = postcard::take_from_bytes(bytes)
            .map_err(|e| SwarmError::Manifest(format!("malformed: {e}")))?;
        if !rest.is_empty() {
            return Err(SwarmError::Manifest(format!(
                "{} bytes after the manifest",
                rest.len()
            )));
        }
        if manifest.root() != *root {
            return Err(SwarmError::Manifest(
                "it does not hash to the share's root hash (another share, or tampered)".into(),
            ));
        }
        let map = manifest.validate()?;
        Ok((manifest, map))
    }
}

/// Where each piece of a share lies: file, offset, length.
#[derive(Debug, Clone)]
pub struct PieceMap {
    layout: Layout,
    /// The first piece of each entry (directories: the next file's).
    first: Vec<u32>,
    count: u32,
}

impl PieceMap {
    /// The map of `entries` cut in `chunk_size` pieces; too many pieces is an error.
    pub fn new(entries: &[Entry], chunk_size: u32) -> Result<Self, SwarmError> {
        let layout = Layout::new(entries, chunk_size);
        let mut first = Vec::with_capacity(entries.len());
        let mut count: u64 = 0;
        for file in 0..entries.len() as u32 {
            first.push(u32::try_from(count).unwrap_or(u32::MAX));
            count = count.saturating_add(layout.chunks(file).unwrap_or(0));
            if count > u64::from(MAX_PIECES) {
                return Err(SwarmError::Manifest(format!(
                    "more than {MAX_PIECES} pieces"
                )));
            }
        }
        Ok(PieceMap {
            layout,
            first,
            count: count as u32,
        })
    }

    /// How many pieces the share has.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// The chunk layout (per file).
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Where piece `piece` lies: its chunk, offset in the file and length.
    pub fn locate(&self, piece: u32) -> Option<(ChunkRef, u64, usize)> {
        if piece >= self.count {
            return None;
        }
        // The last entry whose first piece is <= piece: it has chunks (an entry without
        // any shares its first piece with the next entry, and the last entry's first is
        // `count` if it has none).
        let file = self.first.partition_point(|&f| f <= piece).checked_sub(1)? as u32;
        let index = u64::from(piece - self.first[file as usize]);
        let at = ChunkRef { file, index };
        let len = self.layout.chunk_len(at)?;
        Some((at, self.layout.offset(at), len))
    }

    /// The piece number of chunk `index` of `file`.
    pub fn piece_of(&self, file: u32, index: u64) -> Option<u32> {
        let chunks = self.layout.chunks(file)?;
        if index >= chunks {
            return None;
        }
        Some(self.first[file as usize] + index as u32)
    }

    /// The pieces of entry `file` (empty for folders and empty files).
    pub fn file_pieces(&self, file: u32) -> std::ops::Range<u32> {
        let start = self.first.get(file as usize).copied().unwrap_or(self.count);
        let n = self.layout.chunks(file).unwrap_or(0) as u32;
        start..start + n
    }

    /// Bytes in piece `piece`.
    pub fn piece_len(&self, piece: u32) -> Option<usize> {
        self.locate(piece).map(|(_, _, len)| len)
    }
}

/// A share on this machine: its manifest, and where each entry is on the disk.
#[derive(Debug, Clone)]
pub struct LocalShare {
    /// The share.
    pub manifest: Manifest,
    /// Its root hash.
    pub root: Hash,
    /// For each entry, its path here.
    pub local_paths: Vec<PathBuf>,
}

/// Hashes `paths` (files or folders) into a share, calling `progress(done, total)` as
/// bytes are hashed.
pub fn hash_share<P: AsRef<Path>>(
    paths: &[P],
    progress: &mut dyn FnMut(u64, u64),
) -> Result<LocalShare, SwarmError> {
    let source = SourceManifest::scan(paths).map_err(|e| SwarmError::Input(e.to_string()))?;
    let total = source.total_bytes();
    let chunk_size = chunk_size_for(total);
    let mut buf = vec![0u8; chunk_size as usize];
    let mut pieces = Vec::new();
    let mut done = 0u64;
    progress(0, total);
    for (entry, path) in source.entries.iter().zip(&source.local_paths) {
        let EntryKind::File { size } = entry.kind else {
            continue;
        };
        let mut file = File::open(path)
            .map_err(|e| SwarmError::Io(format!("cannot read {}: {e}", path.display())))?;
        let mut left = size;
        while left > 0 {
            let len = left.min(u64::from(chunk_size)) as usize;
            file.read_exact(&mut buf[..len]).map_err(|e| {
                SwarmError::Io(format!(
                    "cannot read {} (did it change while it was hashed?): {e}",
                    path.display()
                ))
            })?;
            pieces.push(piece_hash(&buf[..len]));
            left -= len as u64;
            done += len as u64;
            progress(done, total);
        }
    }
    let names: Vec<&str> = source
        .entries
        .iter()
        .filter(|e| !e.path.contains('/'))
        .map(|e| e.path.as_str())
        .collect();
    let name = match names.as_slice() {
        [one] => (*one).to_owned(),
        [first, rest @ ..] => format!("{first}-and-{}-more", rest.len()),
        [] => "share".to_owned(),
    };
    let manifest = Manifest {
        name,
        chunk_size,
        entries: source.entries,
        pieces,
    };
    manifest.validate()?;
    Ok(LocalShare {
        root: manifest.root(),
        manifest,
        local_paths: source.local_paths,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Timestamp;

    fn file(path: &str, size: u64) -> Entry {
        Entry {
            path: path.into(),
            kind: EntryKind::File { size },
            mode: 0o644,
            mtime: Timestamp::default(),
        }
    }

    #[test]
    fn pieces_map_to_files_and_back() {
        let c = u64::from(MIN_CHUNK_SIZE);
        let entries = vec![
            Entry {
                path: "d".into(),
                kind: EntryKind::Dir,
                mode: 0o755,
                mtime: Timestamp::default(),
            },
            file("d/a", 2 * c + 1),
            file("d/empty", 0),
            file("d/b", c),
        ];
        let map = PieceMap::new(&entries, MIN_CHUNK_SIZE).unwrap();
        assert_eq!(map.count(), 4);
        assert_eq!(map.file_pieces(1), 0..3);
        assert_eq!(map.file_pieces(2), 3..3);
        assert_eq!(map.file_pieces(3), 3..4);
        let (at, offset, len) = map.locate(2).unwrap();
        assert_eq!((at.file, at.index, offset, len), (1, 2, 2 * c, 1));
        let (at, offset, len) = map.locate(3).unwrap();
        assert_eq!((at.file, at.index, offset, len), (3, 0, 0, c as usize));
        assert!(map.locate(4).is_none());
        for piece in 0..4 {
            let (at, _, _) = map.locate(piece).unwrap();
            assert_eq!(map.piece_of(at.file, at.index), Some(piece));
        }
    }

    #[test]
    fn the_root_changes_with_any_part_of_the_manifest() {
        let manifest = Manifest {
            name: "a".into(),
            chunk_size: MIN_CHUNK_SIZE,
            entries: vec![file("a", 10)],
            pieces: vec![piece_hash(b"0123456789")],
        };
        let root = manifest.root();
        let mut other = manifest.clone();
        other.pieces[0].0[0] ^= 1;
        assert_ne!(other.root(), root);
        let mut other = manifest.clone();
        other.entries[0].mode = 0o600;
        assert_ne!(other.root(), root);
        let bytes = manifest.encode();
        assert_eq!(Manifest::decode(&bytes, &root).unwrap().0, manifest);
        let err = Manifest::decode(&bytes, &other.root()).unwrap_err();
        assert!(err.to_string().contains("root hash"), "{err}");
    }

    #[test]
    fn a_manifest_with_the_wrong_number_of_hashes_is_refused() {
        let manifest = Manifest {
            name: "a".into(),
            chunk_size: MIN_CHUNK_SIZE,
            entries: vec![file("a", u64::from(MIN_CHUNK_SIZE) + 1)],
            pieces: vec![piece_hash(b"x")],
        };
        let err = Manifest::decode(&manifest.encode(), &manifest.root()).unwrap_err();
        assert!(
            err.to_string().contains("1 piece hashes for 2 pieces"),
            "{err}"
        );
    }

    #[test]
    fn merkle_root_of_three_carries_the_odd_leaf() {
        let l: Vec<Hash> = (0u8..3).map(|i| piece_hash(&[i])).collect();
        let pair = merkle_root(&l[..2]);
        assert_eq!(merkle_root(&l), merkle_root(&[pair, l[2]]));
        assert_eq!(merkle_root(&l[..1]), l[0]);
    }

    #[test]
    fn chunk_size_grows_with_the_share() {
        assert_eq!(chunk_size_for(0), MIN_CHUNK_SIZE);
        assert_eq!(chunk_size_for(16 << 30), MIN_CHUNK_SIZE);
        assert_eq!(chunk_size_for((16 << 30) + 1), 2 * MIN_CHUNK_SIZE);
        assert_eq!(chunk_size_for(u64::MAX), MAX_CHUNK_SIZE);
    }
}

#[cfg(test)]
mod vectors {
    use super::*;
    use crate::wire::Timestamp;

    /// The test vectors docs/protocol.md section 10.1 quotes.
    #[test]
    fn hashes_match_the_spec() {
        let a = piece_hash(b"abc");
        let b = piece_hash(b"");
        let manifest = Manifest {
            name: "a".into(),
            chunk_size: MIN_CHUNK_SIZE,
            entries: vec![Entry {
                path: "a".into(),
                kind: EntryKind::File { size: 3 },
                mode: 0o644,
                mtime: Timestamp { secs: 0, nanos: 0 },
            }],
            pieces: vec![a],
        };
        assert_eq!(
            a.to_hex(),
            "3f85f1064e90e776c1967d3b989d78d957ae57a643c5880873bd1180fcb2e4a1"
        );
        assert_eq!(
            merkle_root(&[a, b]).to_hex(),
            "ea77ed1f608390f8e8595705145773c567ba07db811d823ea0e9305a8ec8d444"
        );
        let root = manifest.root();
        assert_eq!(
            root.to_hex(),
            "d515da4f044dda52773531709b119fb7c655fda1563725fe9923abde2a9641d9"
        );
        assert_eq!(
            Hash(root.swarm_id()).to_hex(),
            "32801b9cb1d5c7b5b9d97d072521521114c631698e4258bdda39d1c440f18123"
        );
        assert_eq!(root.swarm_secret(), "f8bf44398fa49c61d0d9fba2e7e8e8d1");
        let mut expected = vec![
            0x01, 0x61, 0x80, 0x80, 0x10, 0x01, 0x01, 0x61, 0x01, 0x03, 0xa4, 0x03, 0x00, 0x00,
            0x01,
        ];
        expected.extend_from_slice(&a.0);
        assert_eq!(manifest.encode(), expected);
    }
}
