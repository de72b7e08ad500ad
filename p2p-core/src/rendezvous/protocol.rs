//! The rendezvous wire format: frames of a big-endian `u16` length and a postcard-encoded
//! [`ClientMessage`] or [`ServerMessage`]. `docs/protocol.md (section 9)` has it byte by byte.
//!
//! Both ends decode strictly: a frame must hold exactly one message (no trailing bytes),
//! and is at most [`MAX_FRAME`] bytes long.

use bytes::{BufMut, Bytes, BytesMut};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio_util::codec::LengthDelimitedCodec;

/// Largest payload of one frame (the postcard bytes, without the 2-byte length).
pub const MAX_FRAME: usize = 4096;
/// Largest [`ClientMessage::Add`] body.
pub const MAX_BODY: usize = 2048;
/// The protocol version a client sends in [`ClientMessage::Hello`] and the server
/// answers in [`ServerMessage::Welcome`]. The first frame on a connection must be `Hello`
/// with this version: it is what tells a rendezvous connection from anything else that
/// reaches the port.
pub const PROTOCOL_VERSION: u16 = 1;
/// Length of the frame header (the big-endian payload length).
pub const HEADER_LEN: usize = 2;
/// Most peer ids in one [`ServerMessage::Peers`].
pub const MAX_PEERS: usize = 50;

/// Names a swarm on the tracker: 32 bytes the peers derive from the share (the tracker
/// never learns the share's root hash).
pub type SwarmId = [u8; 32];

/// What a client sends.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum ClientMessage {
    /// Tag 0. Must be the first frame; `version` is [`PROTOCOL_VERSION`].
    Hello {
        /// The client's protocol version.
        version: u16,
    },
    /// Tag 1. Opens a new mailbox; this connection is its side 0.
    Allocate,
    /// Tag 2. Joins the mailbox waiting on `nameplate` as its side 1.
    Claim {
        /// The number from the code's first part.
        nameplate: u32,
    },
    /// Tag 3. Delivers `body` to the other side (queued until it joins).
    Add {
        /// Opaque to the server; at most [`MAX_BODY`] bytes.
        body: Vec<u8>,
    },
    /// Tag 4. Tracker: this connection has (part of) `swarm`; (re)starts the entry's TTL.
    /// Answered [`ServerMessage::Announced`].
    Announce {
        /// The swarm.
        swarm: SwarmId,
    },
    /// Tag 5. Tracker: this connection no longer has `swarm`. No answer.
    Withdraw {
        /// The swarm.
        swarm: SwarmId,
    },
    /// Tag 6. Tracker: who has `swarm`? Answered [`ServerMessage::Peers`].
    Lookup {
        /// The swarm.
        swarm: SwarmId,
    },
    /// Tag 7. Tracker: asks `peer` (an announcer of `swarm`) to claim the mailbox on
    /// `nameplate`. Answered [`ServerMessage::Introduced`].
    Introduce {
        /// The swarm the peer announced.
        swarm: SwarmId,
        /// The peer, as [`ServerMessage::Peers`] named it.
        peer: u64,
        /// A mailbox the asking client allocated (on another connection) and waits on.
        nameplate: u32,
    },
}

impl ClientMessage {
    /// Whether this is one of the tracker's messages (`Announce`, `Withdraw`, `Lookup`,
    /// `Introduce`).
    pub fn is_tracker(&self) -> bool {
        matches!(
            self,
            ClientMessage::Announce { .. }
                | ClientMessage::Withdraw { .. }
                | ClientMessage::Lookup { .. }
                | ClientMessage::Introduce { .. }
        )
    }
}

/// What the server sends.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum ServerMessage {
    /// Tag 0. The answer to `Hello`, with TURN credentials when the server hands them out.
    Welcome {
        /// The server's protocol version.
        version: u16,
        /// Credentials for the TURN servers, valid for this session.
        turn: Option<TurnGrant>,
    },
    /// Tag 1. The answer to `Allocate`.
    Allocated {
        /// The mailbox's number: the smallest free one, from 1.
        nameplate: u32,
    },
    /// Tag 2. The answer to `Claim`.
    Claimed,
    /// Tag 3. To side 0: side 1 has claimed the mailbox.
    PeerJoined,
    /// Tag 4. A body the other side added.
    Message {
        /// As the other side sent it.
        body: Vec<u8>,
    },
    /// Tag 5. The other side's connection closed; the mailbox is gone and so is this
    /// connection, right after.
    PeerLeft,
    /// Tag 6. Why the server gives up on this connection; it closes right after.
    Error {
        /// A sentence for a person (clients show it escaped).
        reason: String,
    },
    /// Tag 7. The answer to `Announce`.
    Announced {
        /// The swarm announced.
        swarm: SwarmId,
    },
    /// Tag 8. The answer to `Lookup`: up to [`MAX_PEERS`] random live announcers of
    /// `swarm`, never the asking connection; empty when there are none.
    Peers {
        /// The swarm asked about.
        swarm: SwarmId,
        /// Their peer ids (valid while their connections last).
        peers: Vec<u64>,
    },
    /// Tag 9. The answer to `Introduce`.
    Introduced {
        /// The peer asked for.
        peer: u64,
        /// Whether the [`ServerMessage::Introduction`] was queued for that peer.
        delivered: bool,
    },
    /// Tag 10. Unsolicited, to an announcer: a peer that wants `swarm` waits on the
    /// mailbox `nameplate`; claim it to run the sealed exchange.
    Introduction {
        /// The swarm this connection announced.
        swarm: SwarmId,
        /// The mailbox to claim.
        nameplate: u32,
    },
}

/// Short-lived credentials for a coturn configured with `use-auth-secret` (the "TURN
/// REST API" scheme).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct TurnGrant {
    /// `host:port` of each TURN server (UDP and TCP on the same port).
    pub servers: Vec<String>,
    /// `"{expires_unix}:p2p"`.
    pub username: String,
    /// base64(HMAC-SHA1(secret, username)).
    pub password: String,
    /// When coturn stops accepting them (seconds since the Unix epoch).
    pub expires_unix: u64,
}

/// Why a frame's payload is not a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// postcard could not read a message from it.
    #[error("malformed message")]
    Malformed,
    /// A message, followed by bytes that belong to none.
    #[error("{0} bytes after the message")]
    Trailing(usize),
}

/// The frame codec both ends use: 2-byte big-endian length, at most [`MAX_FRAME`].
pub fn codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .length_field_length(HEADER_LEN)
        .big_endian()
        .max_frame_length(MAX_FRAME)
        .new_codec()
}

/// One message as a whole frame (header included). `None` when the encoding is longer
/// than [`MAX_FRAME`] (only an oversized [`ClientMessage::Add`] or a huge TURN grant can be).
pub fn encode_frame<T: Serialize>(message: &T) -> Option<Bytes> {
    let payload = postcard::to_stdvec(message).ok()?;
    if payload.len() > MAX_FRAME {
        return None;
    }
    let mut frame = BytesMut::with_capacity(HEADER_LEN + payload.len());
    frame.put_u16(payload.len() as u16);
    frame.put_slice(&payload);
    Some(frame.freeze())
}

/// Reads exactly one message from a frame's payload.
pub fn decode<T: DeserializeOwned>(payload: &[u8]) -> Result<T, DecodeError> {
    match postcard::take_from_bytes::<T>(payload) {
        Ok((message, [])) => Ok(message),
        Ok((_, rest)) => Err(DecodeError::Trailing(rest.len())),
        Err(_) => Err(DecodeError::Malformed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame<T: Serialize>(m: &T) -> Vec<u8> {
        encode_frame(m).unwrap().to_vec()
    }

    /// The byte strings docs/protocol.md (section 9) shows.
    #[test]
    fn frames_are_byte_exact() {
        assert_eq!(
            frame(&ClientMessage::Hello { version: 1 }),
            [0x00, 0x02, 0x00, 0x01]
        );
        assert_eq!(frame(&ClientMessage::Allocate), [0x00, 0x01, 0x01]);
        assert_eq!(
            frame(&ClientMessage::Claim { nameplate: 300 }),
            [0x00, 0x03, 0x02, 0xAC, 0x02]
        );
        assert_eq!(
            frame(&ClientMessage::Add {
                body: b"hi".to_vec()
            }),
            [0x00, 0x04, 0x03, 0x02, b'h', b'i']
        );
        assert_eq!(
            frame(&ServerMessage::Welcome {
                version: 1,
                turn: None
            }),
            [0x00, 0x03, 0x00, 0x01, 0x00]
        );
        assert_eq!(
            frame(&ServerMessage::Welcome {
                version: 1,
                turn: Some(TurnGrant {
                    servers: vec!["t:1".into()],
                    username: "9:p2p".into(),
                    password: "pw".into(),
                    expires_unix: 9,
                }),
            }),
            [
                0x00, 0x12, 0x00, 0x01, 0x01, 0x01, 0x03, b't', b':', b'1', 0x05, b'9', b':', b'p',
                b'2', b'p', 0x02, b'p', b'w', 0x09
            ]
        );
        assert_eq!(
            frame(&ServerMessage::Allocated { nameplate: 7 }),
            [0x00, 0x02, 0x01, 0x07]
        );
        assert_eq!(frame(&ServerMessage::Claimed), [0x00, 0x01, 0x02]);
        assert_eq!(frame(&ServerMessage::PeerJoined), [0x00, 0x01, 0x03]);
        assert_eq!(
            frame(&ServerMessage::Message { body: vec![0xFF] }),
            [0x00, 0x03, 0x04, 0x01, 0xFF]
        );
        assert_eq!(frame(&ServerMessage::PeerLeft), [0x00, 0x01, 0x05]);
        assert_eq!(
            frame(&ServerMessage::Error {
                reason: "no".into()
            }),
            [0x00, 0x04, 0x06, 0x02, b'n', b'o']
        );
    }

    /// A swarm id for the examples: bytes 0x00, 0x01, … 0x1f.
    fn example_swarm() -> SwarmId {
        std::array::from_fn(|i| i as u8)
    }

    fn with_swarm(head: &[u8], tail: &[u8]) -> Vec<u8> {
        let mut frame = head.to_vec();
        frame.extend(0..32u8);
        frame.extend_from_slice(tail);
        frame
    }

    /// The tracker's byte strings docs/protocol.md (section 9.8) shows.
    #[test]
    fn tracker_frames_are_byte_exact() {
        let swarm = example_swarm();
        let cases: [(Vec<u8>, Vec<u8>); 8] = [
            (
                frame(&ClientMessage::Announce { swarm }),
                with_swarm(&[0x00, 0x21, 0x04], &[]),
            ),
            (
                frame(&ClientMessage::Withdraw { swarm }),
                with_swarm(&[0x00, 0x21, 0x05], &[]),
            ),
            (
                frame(&ClientMessage::Lookup { swarm }),
                with_swarm(&[0x00, 0x21, 0x06], &[]),
            ),
            (
                frame(&ClientMessage::Introduce {
                    swarm,
                    peer: 1000,
                    nameplate: 300,
                }),
                with_swarm(&[0x00, 0x25, 0x07], &[0xE8, 0x07, 0xAC, 0x02]),
            ),
            (
                frame(&ServerMessage::Announced { swarm }),
                with_swarm(&[0x00, 0x21, 0x07], &[]),
            ),
            (
                frame(&ServerMessage::Peers {
                    swarm,
                    peers: vec![1000, 5],
                }),
                with_swarm(&[0x00, 0x25, 0x08], &[0x02, 0xE8, 0x07, 0x05]),
            ),
            (
                frame(&ServerMessage::Introduced {
                    peer: 1000,
                    delivered: true,
                }),
                vec![0x00, 0x04, 0x09, 0xE8, 0x07, 0x01],
            ),
            (
                frame(&ServerMessage::Introduction {
                    swarm,
                    nameplate: 7,
                }),
                with_swarm(&[0x00, 0x22, 0x0A], &[0x07]),
            ),
        ];
        for (got, expected) in cases {
            assert_eq!(got, expected);
        }
        // The largest Peers fits a frame with room to spare.
        let peers = ServerMessage::Peers {
            swarm,
            peers: vec![u64::MAX; MAX_PEERS],
        };
        assert!(encode_frame(&peers).is_some_and(|f| f.len() < 600));
    }

    #[test]
    fn tracker_messages_round_trip() {
        let swarm = [0xAB; 32];
        for message in [
            ClientMessage::Announce { swarm },
            ClientMessage::Withdraw { swarm },
            ClientMessage::Lookup { swarm },
            ClientMessage::Introduce {
                swarm,
                peer: u64::MAX,
                nameplate: u32::MAX,
            },
        ] {
            assert!(message.is_tracker());
            let f = frame(&message);
            assert_eq!(decode::<ClientMessage>(&f[HEADER_LEN..]), Ok(message));
        }
        assert!(!ClientMessage::Allocate.is_tracker());
        for message in [
            ServerMessage::Announced { swarm },
            ServerMessage::Peers {
                swarm,
                peers: vec![],
            },
            ServerMessage::Introduced {
                peer: 0,
                delivered: false,
            },
            ServerMessage::Introduction {
                swarm,
                nameplate: u32::MAX,
            },
        ] {
            let f = frame(&message);
            assert_eq!(decode::<ServerMessage>(&f[HEADER_LEN..]), Ok(message));
        }
        // A swarm id cut short is malformed, not a shorter id.
        let mut short = vec![0x04];
        short.extend([0u8; 31]);
        assert_eq!(decode::<ClientMessage>(&short), Err(DecodeError::Malformed));
        // A delivered flag other than 0 or 1 is malformed.
        assert_eq!(
            decode::<ServerMessage>(&[0x09, 0x01, 0x02]),
            Err(DecodeError::Malformed)
        );
    }

    #[test]
    fn decoding_is_strict() {
        assert_eq!(
            decode::<ClientMessage>(&[0x02, 0xAC, 0x02]),
            Ok(ClientMessage::Claim { nameplate: 300 })
        );
        assert_eq!(
            decode::<ClientMessage>(&[0x01, 0x00]),
            Err(DecodeError::Trailing(1))
        );
        assert_eq!(decode::<ClientMessage>(&[]), Err(DecodeError::Malformed));
        assert_eq!(
            decode::<ClientMessage>(&[0x04]),
            Err(DecodeError::Malformed)
        );
        // A body that claims more bytes than the frame has.
        assert_eq!(
            decode::<ClientMessage>(&[0x03, 0x80, 0x20, 1]),
            Err(DecodeError::Malformed)
        );
    }

    #[test]
    fn the_largest_add_fits_a_frame_and_a_larger_frame_is_refused() {
        let add = ClientMessage::Add {
            body: vec![0; MAX_BODY],
        };
        assert!(encode_frame(&add).is_some());
        let huge = ClientMessage::Add {
            body: vec![0; MAX_FRAME],
        };
        assert!(encode_frame(&huge).is_none());
    }
}
