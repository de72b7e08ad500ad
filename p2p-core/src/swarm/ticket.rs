//! How a share travels between people: a `.p2p` file, or a ticket string.
//!
//! Both carry the root hash (what to fetch and how to check it), the tracker (where to
//! find peers) and optionally the device ids of trusted peers (a closed swarm: only
//! those devices are connected to). A `.p2p` file also carries the manifest, so a
//! downloader can start without asking a peer for it; a ticket is short enough to paste
//! in a chat, and the manifest is fetched from the first peer (and checked against the
//! root hash).
//!
//! `.p2p` file: the 8 bytes `P2PSHARE`, a format byte (1), then a postcard
//! [`ShareFile`]. Ticket: `p2p1` followed by the URL-safe base64 (no padding) of a
//! postcard [`Ticket`]. docs/protocol.md (section 10) has both byte by byte.

use std::fmt;
use std::io::Write;
use std::path::Path;
use std::str::FromStr;

use base64::Engine;
use serde::{Deserialize, Serialize};

use super::content::{Hash, Manifest, MAX_MANIFEST_BYTES};
use super::SwarmError;
use crate::net::DeviceId;

const MAGIC: &[u8; 8] = b"P2PSHARE";
const FORMAT: u8 = 1;
/// What every ticket starts with.
pub const TICKET_PREFIX: &str = "p2p1";
/// Longest ticket accepted (characters).
pub const MAX_TICKET_LEN: usize = 4096;
/// Most trusted device ids a ticket or file may list.
pub const MAX_TRUSTED: usize = 64;
/// Longest tracker address accepted.
pub const MAX_TRACKER_LEN: usize = 255;

/// What a ticket carries (see the module documentation).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ticket {
    /// The share's root hash.
    pub root: Hash,
    /// The tracker (rendezvous server), `host:port`.
    pub tracker: Option<String>,
    /// If not empty, only these devices are connected to.
    pub trusted: Vec<DeviceId>,
}

/// What a `.p2p` file carries: a ticket and the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShareFile {
    /// Root hash, tracker, trusted devices.
    pub ticket: Ticket,
    /// The manifest (checked against the root hash when read).
    pub manifest: Option<Manifest>,
}

impl Ticket {
    fn check(&self) -> Result<(), SwarmError> {
        if let Some(tracker) = &self.tracker {
            if tracker.is_empty()
                || tracker.len() > MAX_TRACKER_LEN
                || tracker.chars().any(|c| c.is_control() || c.is_whitespace())
            {
                return Err(SwarmError::Input(
                    "the ticket's tracker address is not a host:port".into(),
                ));
            }
        }
        if self.trusted.len() > MAX_TRUSTED {
            return Err(SwarmError::Input(format!(
                "the ticket lists more than {MAX_TRUSTED} trusted devices"
            )));
        }
        Ok(())
    }
}

impl fmt::Display for Ticket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bytes = postcard::to_stdvec(self).map_err(|_| fmt::Error)?;
        write!(
            f,
            "{TICKET_PREFIX}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
        )
    }
}

impl FromStr for Ticket {
    type Err = SwarmError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let bad = |why: &str| SwarmError::Input(format!("not a share ticket: {why}"));
        if s.len() > MAX_TICKET_LEN {
            return Err(bad("too long"));
        }
        let body = s
            .strip_prefix(TICKET_PREFIX)
            .ok_or_else(|| bad("a ticket starts with p2p1"))?;
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| bad("damaged (not base64); copy it whole"))?;
        let (ticket, rest): (Ticket, _) =
            postcard::take_from_bytes(&bytes).map_err(|_| bad("damaged; copy it whole"))?;
        if !rest.is_empty() {
            return Err(bad("damaged (extra bytes); copy it whole"));
        }
        ticket.check()?;
        Ok(ticket)
    }
}

impl ShareFile {
    /// The file's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.push(FORMAT);
        out.extend(postcard::to_stdvec(self).unwrap_or_default());
        out
    }

    /// Reads a `.p2p` file's bytes; a manifest in it must hash to its root.
    pub fn decode(bytes: &[u8]) -> Result<ShareFile, SwarmError> {
        let bad = |why: String| SwarmError::Input(format!("not a .p2p share file: {why}"));
        let body = bytes
            .strip_prefix(MAGIC.as_slice())
            .ok_or_else(|| bad("it does not start with P2PSHARE".into()))?;
        let (&format, body) = body
            .split_first()
            .ok_or_else(|| bad("it ends after its first 8 bytes".into()))?;
        if format != FORMAT {
            return Err(bad(format!(
                "format {format}, this version reads format {FORMAT} (a newer p2p-transfer wrote it?)"
            )));
        }
        let (file, rest): (ShareFile, _) =
            postcard::take_from_bytes(body).map_err(|e| bad(format!("damaged ({e})")))?;
        if !rest.is_empty() {
            return Err(bad(format!("{} bytes after its end", rest.len())));
        }
        file.ticket.check()?;
        if let Some(manifest) = &file.manifest {
            // Re-checked like one from a peer: a .p2p file is input, not trusted.
            Manifest::decode(&manifest.encode(), &file.ticket.root)?;
        }
        Ok(file)
    }

    /// Reads `path` (at most the size a manifest may have, plus a margin).
    pub fn read(path: &Path) -> Result<ShareFile, SwarmError> {
        let meta = std::fs::metadata(path)
            .map_err(|e| SwarmError::Io(format!("cannot read {}: {e}", path.display())))?;
        if meta.len() > (MAX_MANIFEST_BYTES + 64 * 1024) as u64 {
            return Err(SwarmError::Input(format!(
                "{} is too large for a .p2p file",
                path.display()
            )));
        }
        let bytes = std::fs::read(path)
            .map_err(|e| SwarmError::Io(format!("cannot read {}: {e}", path.display())))?;
        Self::decode(&bytes)
    }

    /// Writes the file at `path`, never over an existing file.
    pub fn write_new(&self, path: &Path) -> Result<(), SwarmError> {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(|e| {
                SwarmError::Io(if e.kind() == std::io::ErrorKind::AlreadyExists {
                    format!(
                        "{} exists already: not overwritten (remove it, or choose another \
                         name with --output-file)",
                        path.display()
                    )
                } else {
                    format!("cannot create {}: {e}", path.display())
                })
            })?;
        file.write_all(&self.encode())
            .and_then(|()| file.sync_all())
            .map_err(|e| SwarmError::Io(format!("cannot write {}: {e}", path.display())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::swarm::content::{piece_hash, MIN_CHUNK_SIZE};
    use crate::wire::{Entry, EntryKind, Timestamp};

    fn manifest() -> Manifest {
        Manifest {
            name: "a".into(),
            chunk_size: MIN_CHUNK_SIZE,
            entries: vec![Entry {
                path: "a".into(),
                kind: EntryKind::File { size: 3 },
                mode: 0o644,
                mtime: Timestamp::default(),
            }],
            pieces: vec![piece_hash(b"abc")],
        }
    }

    #[test]
    fn a_ticket_has_the_documented_text() {
        // docs/protocol.md section 10.2.
        let ticket = Ticket {
            root: Hash([0x11; 32]),
            tracker: Some("h:1".into()),
            trusted: vec![],
        };
        assert_eq!(
            ticket.to_string(),
            "p2p1EREREREREREREREREREREREREREREREREREREREREREBA2g6MQA"
        );
    }

    #[test]
    fn tickets_round_trip_and_stay_short() {
        let ticket = Ticket {
            root: manifest().root(),
            tracker: Some("rdv.example.net:4000".into()),
            trusted: vec![],
        };
        let text = ticket.to_string();
        assert!(text.starts_with("p2p1"), "{text}");
        assert!(text.len() < 90, "{} characters: {text}", text.len());
        assert_eq!(text.parse::<Ticket>().unwrap(), ticket);
        assert!(format!(" {text}\n").parse::<Ticket>().is_ok());
        for bad in ["", "p2p1", "p2p1!!", &text[..text.len() - 3], "http://x"] {
            let err = bad.parse::<Ticket>().unwrap_err().to_string();
            assert!(err.starts_with("not a share ticket"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn share_files_round_trip_and_refuse_a_foreign_manifest() {
        let m = manifest();
        let file = ShareFile {
            ticket: Ticket {
                root: m.root(),
                tracker: None,
                trusted: vec![DeviceId::random()],
            },
            manifest: Some(m.clone()),
        };
        let bytes = file.encode();
        assert_eq!(&bytes[..9], b"P2PSHARE\x01");
        assert_eq!(ShareFile::decode(&bytes).unwrap(), file);

        let mut forged = file.clone();
        forged.manifest.as_mut().unwrap().pieces[0] = piece_hash(b"abd");
        let err = ShareFile::decode(&forged.encode()).unwrap_err().to_string();
        assert!(err.contains("root hash"), "{err}");
        let err = ShareFile::decode(&bytes[..bytes.len() - 1])
            .unwrap_err()
            .to_string();
        assert!(err.contains("damaged"), "{err}");
    }

    #[test]
    fn writing_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.p2p");
        std::fs::write(&path, b"precious").unwrap();
        let file = ShareFile {
            ticket: Ticket {
                root: manifest().root(),
                tracker: None,
                trusted: vec![],
            },
            manifest: None,
        };
        let err = file.write_new(&path).unwrap_err().to_string();
        assert!(err.contains("not overwritten"), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), b"precious");
    }
}
