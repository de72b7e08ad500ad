//! The swarm's peer protocol: what two peers of one share say to each other over the
//! connection `net` hands out (TLS 1.3 inside QUIC, admitted with the share's code).
//!
//! Frames are a big-endian `u32` length and one postcard [`PeerMessage`]. Both sides are
//! equal: each says [`PeerMessage::Hello`], fetches the manifest if it lacks one, sends
//! its [`PeerMessage::Bitfield`], then either may request pieces the other has and must
//! serve what it announced. docs/protocol.md (section 10) has it byte by byte; the limits
//! a peer must respect are the constants here.

use bytes::{Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use tokio_util::codec::LengthDelimitedCodec;

use super::SwarmError;

/// The swarm protocol version in [`PeerMessage::Hello`].
pub const SWARM_VERSION: u16 = 1;
/// Largest frame before the manifest is known (everything but a manifest is small).
pub const MAX_CONTROL_FRAME: usize = 256 * 1024;
/// Most requests a peer may have outstanding with us; one more is a flood.
pub const MAX_PEER_REQUESTS: usize = 64;
/// Bytes of a frame header.
pub const FRAME_HEADER: usize = 4;

/// One message of the peer protocol (tags are the variant positions, from 0).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerMessage {
    /// Tag 0. First message each way: the protocol version, and whether this side has
    /// the manifest (and so can serve [`PeerMessage::GetManifest`]).
    Hello {
        /// [`SWARM_VERSION`].
        version: u16,
        /// This side has the manifest.
        manifest: bool,
    },
    /// Tag 1. Asks for the manifest (only to a peer whose Hello said it has one; once).
    GetManifest,
    /// Tag 2. The manifest, postcard-encoded: the answer to `GetManifest` (the asker
    /// checks it against the root hash).
    Manifest {
        /// The encoded manifest.
        #[serde(with = "crate::wire::serde_bytes_compat")]
        bytes: Bytes,
    },
    /// Tag 3. The pieces this side has: bit `i % 8` (most significant first) of byte
    /// `i / 8` is piece `i`; exactly `ceil(pieces / 8)` bytes, spare bits zero. Sent
    /// once, after both sides have the manifest, before any `Have` or `Request`.
    Bitfield {
        /// The bits.
        #[serde(with = "crate::wire::serde_bytes_compat")]
        bits: Bytes,
    },
    /// Tag 4. This side has verified another piece.
    Have {
        /// Its number.
        piece: u32,
    },
    /// Tag 5. Asks for a piece the other side announced.
    Request {
        /// Its number.
        piece: u32,
    },
    /// Tag 6. No longer wanted (another peer sent it); the answer may still come.
    Cancel {
        /// Its number.
        piece: u32,
    },
    /// Tag 7. A piece's bytes: the answer to a `Request`.
    Piece {
        /// Its number.
        piece: u32,
        /// Exactly the piece's length.
        #[serde(with = "crate::wire::serde_bytes_compat")]
        data: Bytes,
    },
    /// Tag 8. The answer to a `Request` this side will not serve now (it is busy);
    /// the asker tries another peer.
    Reject {
        /// Its number.
        piece: u32,
    },
    /// Tag 9. Why this side closes the connection (shown escaped).
    Goodbye {
        /// A sentence for a person, at most 256 bytes.
        reason: String,
    },
}

impl PeerMessage {
    /// The message's name, for errors.
    pub fn kind(&self) -> &'static str {
        match self {
            PeerMessage::Hello { .. } => "Hello",
            PeerMessage::GetManifest => "GetManifest",
            PeerMessage::Manifest { .. } => "Manifest",
            PeerMessage::Bitfield { .. } => "Bitfield",
            PeerMessage::Have { .. } => "Have",
            PeerMessage::Request { .. } => "Request",
            PeerMessage::Cancel { .. } => "Cancel",
            PeerMessage::Piece { .. } => "Piece",
            PeerMessage::Reject { .. } => "Reject",
            PeerMessage::Goodbye { .. } => "Goodbye",
        }
    }

    /// The message as a frame payload.
    pub fn encode(&self) -> Bytes {
        Bytes::from(postcard::to_stdvec(self).unwrap_or_default())
    }

    /// Reads one frame payload: exactly one message.
    pub fn decode(payload: &[u8]) -> Result<PeerMessage, SwarmError> {
        let (message, rest): (PeerMessage, _) = postcard::take_from_bytes(payload)
            .map_err(|_| SwarmError::Protocol("malformed message".into()))?;
        if !rest.is_empty() {
            return Err(SwarmError::Protocol(format!(
                "{} bytes after a {} message",
                rest.len(),
                message.kind()
            )));
        }
        Ok(message)
    }
}

/// The frame codec: `u32` big-endian length, at most `max` bytes (raised once the
/// manifest fixes the piece size, and for the one manifest this side asked for).
pub fn codec(max: usize) -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .length_field_length(FRAME_HEADER)
        .big_endian()
        .max_frame_length(max)
        .new_codec()
}

/// The largest frame a peer may send once the manifest is known: a whole piece or the
/// whole bitfield, plus the message's own bytes.
pub fn max_frame(chunk_size: u32, pieces: u32) -> usize {
    (chunk_size as usize)
        .max(bitfield_len(pieces))
        .saturating_add(32)
        .max(MAX_CONTROL_FRAME)
}

/// Bytes of the bitfield of `pieces` pieces.
pub fn bitfield_len(pieces: u32) -> usize {
    (pieces as usize).div_ceil(8)
}

/// A set of pieces as bits (see [`PeerMessage::Bitfield`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bitfield {
    bits: Vec<u8>,
    len: u32,
    ones: u32,
}

impl Bitfield {
    /// No pieces of `len`.
    pub fn new(len: u32) -> Self {
        Bitfield {
            bits: vec![0; bitfield_len(len)],
            len,
            ones: 0,
        }
    }

    /// All pieces of `len`.
    pub fn full(len: u32) -> Self {
        let mut b = Self::new(len);
        for i in 0..len {
            b.set(i);
        }
        b
    }

    /// A peer's bitfield for a share of `len` pieces: the length must be exact and the
    /// spare bits zero.
    pub fn from_peer(bits: &[u8], len: u32) -> Result<Self, SwarmError> {
        if bits.len() != bitfield_len(len) {
            return Err(SwarmError::Protocol(format!(
                "bitfield of {} bytes for {len} pieces (expected {})",
                bits.len(),
                bitfield_len(len)
            )));
        }
        let spare = (bitfield_len(len) * 8) as u32 - len;
        if spare > 0 {
            let last = bits[bits.len() - 1];
            if last & ((1u8 << spare) - 1) != 0 {
                return Err(SwarmError::Protocol(
                    "bitfield has bits set past the last piece".into(),
                ));
            }
        }
        let ones = bits.iter().map(|b| b.count_ones()).sum();
        Ok(Bitfield {
            bits: bits.to_vec(),
            len,
            ones,
        })
    }

    /// Whether piece `i` is in the set.
    pub fn has(&self, i: u32) -> bool {
        i < self.len && self.bits[(i / 8) as usize] & (0x80 >> (i % 8)) != 0
    }

    /// Adds piece `i`; false if it was there or is out of range.
    pub fn set(&mut self, i: u32) -> bool {
        if i >= self.len || self.has(i) {
            return false;
        }
        self.bits[(i / 8) as usize] |= 0x80 >> (i % 8);
        self.ones += 1;
        true
    }

    /// Pieces in the set.
    pub fn count(&self) -> u32 {
        self.ones
    }

    /// Pieces the set is about.
    pub fn len(&self) -> u32 {
        self.len
    }

    /// Whether the share has no pieces at all.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Every piece is in the set.
    pub fn is_full(&self) -> bool {
        self.ones == self.len
    }

    /// The bits as sent.
    pub fn to_bytes(&self) -> Bytes {
        Bytes::copy_from_slice(&self.bits)
    }

    /// The pieces in the set.
    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        (0..self.len).filter(|&i| self.has(i))
    }
}

/// A frame for `message` (header included), for tests and hostile peers.
pub fn frame(message: &PeerMessage) -> BytesMut {
    let payload = message.encode();
    let mut out = BytesMut::with_capacity(FRAME_HEADER + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(&payload);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_have_the_documented_bytes() {
        // docs/protocol.md section 10 quotes these.
        let cases: Vec<(PeerMessage, &[u8])> = vec![
            (
                PeerMessage::Hello {
                    version: 1,
                    manifest: true,
                },
                &[0, 1, 1],
            ),
            (PeerMessage::GetManifest, &[1]),
            (
                PeerMessage::Bitfield {
                    bits: Bytes::from_static(&[0xa0]),
                },
                &[3, 1, 0xa0],
            ),
            (PeerMessage::Have { piece: 300 }, &[4, 0xac, 0x02]),
            (PeerMessage::Request { piece: 2 }, &[5, 2]),
            (PeerMessage::Cancel { piece: 2 }, &[6, 2]),
            (
                PeerMessage::Piece {
                    piece: 1,
                    data: Bytes::from_static(b"abc"),
                },
                &[7, 1, 3, b'a', b'b', b'c'],
            ),
            (PeerMessage::Reject { piece: 1 }, &[8, 1]),
            (
                PeerMessage::Goodbye {
                    reason: "no".into(),
                },
                &[9, 2, b'n', b'o'],
            ),
        ];
        for (message, bytes) in cases {
            assert_eq!(&message.encode()[..], bytes, "{message:?}");
            assert_eq!(PeerMessage::decode(bytes).unwrap(), message);
        }
        assert!(PeerMessage::decode(&[5, 2, 0]).is_err());
        assert!(PeerMessage::decode(&[10]).is_err());
    }

    #[test]
    fn bitfields_are_checked_exactly() {
        let b = Bitfield::from_peer(&[0b1010_0000], 3).unwrap();
        assert_eq!(b.iter().collect::<Vec<_>>(), vec![0, 2]);
        assert_eq!(b.count(), 2);
        assert!(Bitfield::from_peer(&[0b1010_0000, 0], 3).is_err());
        assert!(Bitfield::from_peer(&[], 3).is_err());
        let err = Bitfield::from_peer(&[0b1011_0000], 3).unwrap_err();
        assert!(err.to_string().contains("past the last piece"), "{err}");
        assert!(Bitfield::from_peer(&[0xff], 8).unwrap().is_full());
        assert!(Bitfield::from_peer(&[], 0).unwrap().is_full());
        let mut b = Bitfield::new(9);
        assert!(b.set(8) && !b.set(8) && !b.set(9));
        assert_eq!(&b.to_bytes()[..], &[0, 0x80]);
    }
}
