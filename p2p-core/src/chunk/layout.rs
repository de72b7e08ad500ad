//! How the files of an offer divide into chunks.

use crate::wire::{ChunkRef, Entry, EntryKind};

/// Sizes and chunk counts of every entry of an offer, for one chunk size.
#[derive(Debug, Clone)]
pub struct Layout {
    chunk_size: u64,
    /// Size of each entry; `None` for directories.
    sizes: Vec<Option<u64>>,
}

impl Layout {
    pub fn new(entries: &[Entry], chunk_size: u32) -> Self {
        Self {
            chunk_size: u64::from(chunk_size.max(1)),
            sizes: entries
                .iter()
                .map(|e| match e.kind {
                    EntryKind::File { size } => Some(size),
                    EntryKind::Dir => None,
                })
                .collect(),
        }
    }

    pub fn chunk_size(&self) -> u64 {
        self.chunk_size
    }

    /// Number of entries (files and directories).
    pub fn len(&self) -> usize {
        self.sizes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sizes.is_empty()
    }

    /// Size of entry `file` if it is a file.
    pub fn size(&self, file: u32) -> Option<u64> {
        self.sizes.get(file as usize).copied().flatten()
    }

    /// Chunks in entry `file` (0 for an empty file); `None` if it is not a file.
    pub fn chunks(&self, file: u32) -> Option<u64> {
        self.size(file).map(|s| s.div_ceil(self.chunk_size))
    }

    /// Byte offset of a chunk (saturating: a chunk that does not exist has no
    /// meaningful offset, and [`Layout::chunk_len`] refuses it first).
    pub fn offset(&self, at: ChunkRef) -> u64 {
        at.index.saturating_mul(self.chunk_size)
    }

    /// Exact raw length of a chunk, or `None` if the chunk does not exist.
    pub fn chunk_len(&self, at: ChunkRef) -> Option<usize> {
        let size = self.size(at.file)?;
        let start = at.index.checked_mul(self.chunk_size)?;
        if start >= size {
            return None;
        }
        Some((size - start).min(self.chunk_size) as usize)
    }

    /// Indices of the file entries, in order.
    pub fn files(&self) -> impl Iterator<Item = u32> + '_ {
        self.sizes
            .iter()
            .enumerate()
            .filter(|(_, s)| s.is_some())
            .map(|(i, _)| i as u32)
    }

    /// Sum of file sizes (saturating; a validated offer's sum fits).
    pub fn total_bytes(&self) -> u64 {
        self.sizes
            .iter()
            .flatten()
            .fold(0u64, |t, s| t.saturating_add(*s))
    }
}
