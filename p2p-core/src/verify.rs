//! Integrity checks: CRC-32 per chunk (catches corruption cheaply, triggers a
//! retransmit) and SHA-256 per file (decides whether a file is finalised).
//!
//! Neither is a defence against a malicious peer — that is the job of the authenticated
//! transport planned in design.md — but together they make silent corruption impossible.

use sha2::{Digest, Sha256};

/// CRC-32 (IEEE, as in zlib and Ethernet) of `data`.
pub fn crc32(data: &[u8]) -> u32 {
    crc32fast::hash(data)
}

/// A SHA-256 fed in file order while data streams through.
#[derive(Clone, Default)]
pub struct FileHasher(Sha256);

impl std::fmt::Debug for FileHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FileHasher")
    }
}

impl FileHasher {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }

    pub fn finish(self) -> [u8; 32] {
        self.0.finalize().into()
    }
}

/// Lowercase hex of a digest, for logs and messages.
pub fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_answers() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        let mut h = FileHasher::new();
        h.update(b"a");
        h.update(b"bc");
        assert_eq!(
            hex(&h.finish()),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
