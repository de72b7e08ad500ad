//! `swarm`: what a swarm peer or a shared file can hand us (issue 14).
//!
//! The first byte picks the decoder, the rest is its input:
//! - `0`: a peer frame payload → `PeerMessage::decode`; a decoded message re-encodes to
//!   a payload that decodes to the same message; a `Bitfield` is checked with
//!   `Bitfield::from_peer` for piece counts around its length (exact length, spare bits
//!   zero, count = set bits);
//! - `1`: a `.p2p` file → `ShareFile::decode`; an accepted file's manifest hashes to its
//!   root, passes `validate` (safe entries, one hash per piece), and the file re-encodes
//!   to bytes that decode to the same value;
//! - `2`: a ticket's text → `Ticket::from_str`; an accepted ticket prints as text that
//!   parses back to it;
//! - `3`: a manifest → `Manifest::decode` against the root of whatever the bytes decode
//!   to; an accepted manifest's pieces map back and forth (`locate` / `piece_of`).

use p2p_core::swarm::content::Manifest;
use p2p_core::swarm::wire::{bitfield_len, Bitfield, PeerMessage};
use p2p_core::swarm::{ShareFile, Ticket};

pub fn run(data: &[u8]) {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    match which % 4 {
        0 => peer_message(rest),
        1 => share_file(rest),
        2 => ticket(rest),
        _ => manifest(rest),
    }
}

fn peer_message(payload: &[u8]) {
    let Ok(message) = PeerMessage::decode(payload) else {
        return;
    };
    let again = message.encode();
    assert!(again.len() <= payload.len(), "re-encoding grew");
    assert_eq!(PeerMessage::decode(&again).expect("re-encoded"), message);
    if let PeerMessage::Bitfield { bits } = &message {
        let bytes = bits.len() as u32;
        for pieces in [bytes * 8, (bytes * 8).saturating_sub(3), bytes * 8 + 1, 0] {
            match Bitfield::from_peer(bits, pieces) {
                Ok(field) => {
                    assert_eq!(bits.len(), bitfield_len(pieces));
                    assert_eq!(field.len(), pieces);
                    assert_eq!(field.iter().count() as u32, field.count());
                    assert!(field.iter().all(|p| p < pieces));
                    assert_eq!(&field.to_bytes()[..], &bits[..]);
                }
                Err(_) => assert!(
                    bits.len() != bitfield_len(pieces)
                        || (0..bits.len() * 8)
                            .any(|i| i as u32 >= pieces && bits[i / 8] & (0x80 >> (i % 8)) != 0),
                    "a bitfield of the right length without spare bits was refused"
                ),
            }
        }
    }
}

fn check_manifest(manifest: &Manifest) {
    let map = manifest.validate().expect("an accepted manifest validates");
    assert_eq!(map.count() as usize, manifest.pieces.len());
    for piece in 0..map.count().min(64) {
        let (at, _, len) = map.locate(piece).expect("every piece has a place");
        assert!(len > 0 && len <= manifest.chunk_size as usize);
        assert_eq!(map.piece_of(at.file, at.index), Some(piece));
    }
    assert!(map.locate(map.count()).is_none());
}

fn share_file(bytes: &[u8]) {
    let Ok(file) = ShareFile::decode(bytes) else {
        return;
    };
    if let Some(manifest) = &file.manifest {
        assert_eq!(
            manifest.root(),
            file.ticket.root,
            "a foreign manifest was accepted"
        );
        check_manifest(manifest);
    }
    let again = file.encode();
    assert_eq!(ShareFile::decode(&again).expect("re-encoded"), file);
}

fn ticket(bytes: &[u8]) {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return;
    };
    let Ok(ticket) = text.parse::<Ticket>() else {
        return;
    };
    let printed = ticket.to_string();
    assert_eq!(printed.parse::<Ticket>().expect("printed ticket"), ticket);
}

fn manifest(bytes: &[u8]) {
    // Against its own root (what a peer's manifest is checked against), and a wrong one.
    let Ok((candidate, _)) = postcard::take_from_bytes::<Manifest>(bytes) else {
        return;
    };
    let root = candidate.root();
    if let Ok((manifest, _)) = Manifest::decode(bytes, &root) {
        assert_eq!(manifest, candidate);
        check_manifest(&manifest);
    }
    let mut wrong = root;
    wrong.0[0] ^= 1;
    assert!(
        Manifest::decode(bytes, &wrong).is_err(),
        "a manifest matched a wrong root"
    );
}
