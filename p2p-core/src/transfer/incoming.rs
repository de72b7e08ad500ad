//! What a receiver is shown of an incoming transfer before it takes it, and its answer.
//!
//! [`crate::P2PSession::receive_with`] builds an [`IncomingOffer`] from the peer's
//! `Offer` once its paths have passed the safety checks, and waits for a [`Decision`]
//! (a person clicking Accept, a prompt on a terminal). While it waits, the session keeps
//! answering the sender's keepalive pings, so a decision may take as long as it takes.

use uuid::Uuid;

use crate::wire::{EntryKind, Offer};

/// One file or folder of an incoming transfer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfferedEntry {
    /// Relative path, `/`-separated, as it will be created in the output folder.
    pub path: String,
    /// Size in bytes; `None` for a folder.
    pub size: Option<u64>,
}

/// An incoming transfer, as a receiver decides on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncomingOffer {
    pub transfer_id: Uuid,
    /// Device name of the sender, as it announced itself (not authenticated).
    pub peer: String,
    /// Every file and folder, in the sender's order.
    pub entries: Vec<OfferedEntry>,
}

impl IncomingOffer {
    pub(crate) fn new(offer: &Offer, peer: &str) -> Self {
        Self {
            transfer_id: offer.transfer_id,
            peer: peer.to_owned(),
            entries: offer
                .entries
                .iter()
                .map(|e| OfferedEntry {
                    path: e.path.clone(),
                    size: match e.kind {
                        EntryKind::Dir => None,
                        EntryKind::File { size } => Some(size),
                    },
                })
                .collect(),
        }
    }

    /// Number of files (folders not counted).
    pub fn files(&self) -> u64 {
        self.entries.iter().filter(|e| e.size.is_some()).count() as u64
    }

    /// Sum of the file sizes.
    pub fn total_bytes(&self) -> u64 {
        self.entries
            .iter()
            .filter_map(|e| e.size)
            .fold(0u64, u64::saturating_add)
    }

    /// Top-level names (what appears in the output folder).
    pub fn roots(&self) -> Vec<String> {
        self.entries
            .iter()
            .filter(|e| !e.path.contains('/'))
            .map(|e| e.path.clone())
            .collect()
    }
}

/// The receiver's answer to an [`IncomingOffer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Receive it.
    Accept,
    /// Receive it with these options instead of the session's: another folder, or
    /// replacing files that exist (what a person chose while looking at the offer).
    AcceptWith(crate::ReceiveOptions),
    /// Refuse it; the sender is told this reason (and nothing is written).
    Decline(String),
}

/// What [`crate::P2PSession::receive_with`] did with the peer's next offer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    /// The transfer was accepted and completed.
    Completed(super::TransferSummary),
    /// The transfer was declined; the session stays usable.
    Declined { transfer_id: Uuid },
    /// The peer sent a text, which was taken (see
    /// [`crate::P2PSession::receive_any_with`]): it is to be shown, nothing was written.
    Text(crate::session::ReceivedText),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{Entry, Timestamp};

    fn entry(path: &str, kind: EntryKind) -> Entry {
        Entry {
            path: path.into(),
            kind,
            mode: 0o644,
            mtime: Timestamp::default(),
        }
    }

    #[test]
    fn summarises_files_sizes_and_roots() {
        let offer = Offer {
            transfer_id: Uuid::nil(),
            entries: vec![
                entry("photos", EntryKind::Dir),
                entry("photos/a.jpg", EntryKind::File { size: 10 }),
                entry("photos/empty", EntryKind::Dir),
                entry("notes.txt", EntryKind::File { size: 5 }),
            ],
        };
        let incoming = IncomingOffer::new(&offer, "laptop");
        assert_eq!(incoming.files(), 2);
        assert_eq!(incoming.total_bytes(), 15);
        assert_eq!(incoming.roots(), vec!["photos", "notes.txt"]);
        assert_eq!(incoming.entries[2].size, None);
        assert_eq!(incoming.peer, "laptop");
    }
}
