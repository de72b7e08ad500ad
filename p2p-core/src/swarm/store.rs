//! Where a share's pieces are on this machine.
//!
//! A **seed** reads them from the files that were shared, and checks each against its
//! hash before serving it (a file edited since it was shared is caught here, not by the
//! peer). A **download** writes verified pieces into the output folder exactly as a
//! direct transfer's receiver does — `fs::output::OutputDir`: safe paths, `.part` files,
//! no file overwritten, atomic finalize, and the same resume state file (transfer id =
//! the first 16 bytes of the root hash, chunks = pieces) — and serves what it has to
//! other downloaders, from `.part` files or final files.

use std::path::Path;
use std::sync::Arc;

use uuid::Uuid;

use super::content::{piece_hash, Hash, LocalShare, Manifest, PieceMap};
use super::wire::Bitfield;
use super::SwarmError;
use crate::fs::output::{OutputDir, SaveJob};
use crate::fs::source::{SourceManifest, SourceReader};
use crate::wire::{Entry, EntryKind};

/// The transfer id a download's resume state is bound to.
pub fn transfer_id(root: &Hash) -> Uuid {
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&root.0[..16]);
    Uuid::from_bytes(bytes)
}

/// A share's pieces on this machine (see the module documentation).
pub enum Store {
    /// Every piece, read from the shared files.
    Seed {
        /// Reads the shared files.
        reader: SourceReader,
    },
    /// A download into an output folder.
    Download {
        /// The output folder.
        output: Box<OutputDir>,
        /// Entries finalized (moved to their final path).
        finalized: Vec<bool>,
        /// Pieces still to come, per file.
        missing: Vec<u32>,
        /// Pieces on disk (a second copy of one, as endgame brings, is not written).
        written: Bitfield,
    },
}

impl Store {
    /// Serves a share from the files that were shared.
    pub fn seed(share: &LocalShare) -> Store {
        let source = SourceManifest {
            entries: share.manifest.entries.clone(),
            local_paths: share.local_paths.clone(),
            skipped: Vec::new(),
        };
        Store::Seed {
            reader: SourceReader::new(&source),
        }
    }

    /// Opens `dir` for a download of `manifest`, and returns the pieces already there: a
    /// resume state of an earlier attempt is believed as a direct transfer believes it,
    /// and each piece it claims is hashed again before it counts.
    pub fn download(
        dir: &Path,
        root: &Hash,
        manifest: &Manifest,
        map: &PieceMap,
    ) -> Result<(Store, Bitfield, Vec<String>), SwarmError> {
        let entries: Arc<[Entry]> = manifest.entries.clone().into();
        let mut output =
            OutputDir::prepare(dir, transfer_id(root), &entries, false, manifest.chunk_size)
                .map_err(|e| match e {
                    crate::Error::Transfer(crate::error::TransferError::AlreadyExists {
                        first,
                        count,
                    }) => SwarmError::Output(format!(
                        "{} already exists in {}{}: nothing was overwritten; download into \
                     another folder (-o DIR), or move it away",
                        crate::text::Printable(&first),
                        dir.display(),
                        if count > 1 {
                            format!(" (and {} more)", count - 1)
                        } else {
                            String::new()
                        }
                    )),
                    e => SwarmError::Output(e.to_string()),
                })?;
        let notes = output.notes().to_vec();
        let resume = output.resume_info().clone();
        let mut have = Bitfield::new(map.count());
        let mut finalized = vec![false; entries.len()];
        let mut missing: Vec<u32> = (0..entries.len() as u32)
            .map(|f| map.file_pieces(f).len() as u32)
            .collect();
        for &file in &resume.complete {
            if let Some(done) = finalized.get_mut(file as usize) {
                *done = true;
                for piece in map.file_pieces(file) {
                    have.set(piece);
                }
                missing[file as usize] = 0;
            }
        }
        for (&file, chunks) in &resume.have {
            if finalized.get(file as usize).copied().unwrap_or(true) {
                continue;
            }
            for (start, end) in chunks.ranges() {
                for index in start..end {
                    let Some(piece) = map.piece_of(file, index) else {
                        continue;
                    };
                    let Some((_, offset, len)) = map.locate(piece) else {
                        continue;
                    };
                    let Ok(data) = output.read_part(file, offset, len) else {
                        continue;
                    };
                    if piece_hash(&data) == manifest.pieces[piece as usize] && have.set(piece) {
                        missing[file as usize] -= 1;
                    }
                }
            }
        }
        Ok((
            Store::Download {
                output: Box::new(output),
                finalized,
                missing,
                written: have.clone(),
            },
            have,
            notes,
        ))
    }

    /// Reads piece `piece`.
    pub fn read(&mut self, map: &PieceMap, piece: u32) -> Result<Vec<u8>, SwarmError> {
        let (at, offset, len) = map
            .locate(piece)
            .ok_or_else(|| SwarmError::Protocol(format!("no piece {piece}")))?;
        let data = match self {
            Store::Seed { reader } => reader.read(at.file, offset, len),
            Store::Download {
                output, finalized, ..
            } => {
                if finalized[at.file as usize] {
                    output.read_final(at.file, offset, len)
                } else {
                    output.read_part(at.file, offset, len)
                }
            }
        };
        data.map_err(|e| SwarmError::Io(e.to_string()))
    }

    /// Writes verified piece `piece` (a download); returns the file it completed, if any.
    /// A piece already written is not written again (endgame brings copies, and the
    /// file may be in its final place already).
    pub fn write(
        &mut self,
        map: &PieceMap,
        piece: u32,
        data: &[u8],
    ) -> Result<Option<u32>, SwarmError> {
        let Store::Download {
            output,
            missing,
            written,
            ..
        } = self
        else {
            return Ok(None);
        };
        let (at, offset, _) = map
            .locate(piece)
            .ok_or_else(|| SwarmError::Protocol(format!("no piece {piece}")))?;
        if written.has(piece) {
            return Ok(None);
        }
        output
            .write(at.file, offset, data)
            .map_err(|e| SwarmError::Output(e.to_string()))?;
        written.set(piece);
        let left = &mut missing[at.file as usize];
        *left = left.saturating_sub(1);
        Ok((*left == 0).then_some(at.file))
    }

    /// Moves a complete file to its final path.
    pub fn finalize(&mut self, file: u32) -> Result<(), SwarmError> {
        if let Store::Download {
            output, finalized, ..
        } = self
        {
            if !finalized[file as usize] {
                output
                    .finalize(file)
                    .map_err(|e| SwarmError::Output(e.to_string()))?;
                finalized[file as usize] = true;
            }
        }
        Ok(())
    }

    /// Finishes a complete download: empty files and folders, then no resume state.
    pub fn finish(&mut self, manifest: &Manifest) -> Result<(), SwarmError> {
        if matches!(self, Store::Seed { .. }) {
            return Ok(());
        }
        for (i, entry) in manifest.entries.iter().enumerate() {
            if matches!(entry.kind, EntryKind::File { size: 0 }) {
                self.finalize(i as u32)?;
            }
        }
        if let Store::Download { output, .. } = self {
            output
                .finish()
                .map_err(|e| SwarmError::Output(e.to_string()))?;
            output.complete();
        }
        Ok(())
    }

    /// A job that saves the resume state (run it off the async threads).
    pub fn save_job(&mut self) -> Option<SaveJob> {
        match self {
            Store::Download { output, .. } => output.save_job(false).ok(),
            Store::Seed { .. } => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::swarm::content::hash_share;

    /// Endgame brings two copies of a piece; both pass their hash. Counting both once
    /// finalized a file a piece early — its last piece then never reached the final file
    /// (found by three downloaders of one 50 MiB share: one file differed).
    #[test]
    fn a_second_copy_of_a_piece_does_not_complete_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("f.bin");
        let data: Vec<u8> = (0..600_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&src, &data).unwrap();
        let share = hash_share(&[&src], &mut |_, _| {}).unwrap();
        let map = share.manifest.validate().unwrap();
        assert_eq!(map.count(), 3);
        let out = dir.path().join("out");
        let (mut store, have, _) =
            Store::download(&out, &share.root, &share.manifest, &map).unwrap();
        assert_eq!(have.count(), 0);
        let mut seed = Store::seed(&share);
        let pieces: Vec<Vec<u8>> = (0..3).map(|p| seed.read(&map, p).unwrap()).collect();
        assert_eq!(store.write(&map, 0, &pieces[0]).unwrap(), None);
        assert_eq!(store.write(&map, 1, &pieces[1]).unwrap(), None);
        assert_eq!(
            store.write(&map, 1, &pieces[1]).unwrap(),
            None,
            "a copy counted twice"
        );
        assert_eq!(store.write(&map, 2, &pieces[2]).unwrap(), Some(0));
        store.finalize(0).unwrap();
        store.finish(&share.manifest).unwrap();
        assert_eq!(std::fs::read(out.join("f.bin")).unwrap(), data);
    }
}
