//! Wire format: the [`Message`] enum and the length-prefixed frame codec.
//!
//! Every message travels as one frame: a 4-byte big-endian length followed by that many
//! bytes of a postcard-encoded [`Message`]. The length is checked against
//! [`MAX_FRAME_LEN`] *before* any buffer is grown, so a hostile peer cannot make us
//! allocate more than one frame's worth. This module knows how messages look, not what
//! they mean: the handshake and transfer layers give them meaning.
//!
//! The variant order of [`Message`] is part of the protocol (postcard encodes the
//! variant index as a varint); `Hello`, `HelloAck` and `Error` keep their index and
//! layout in every protocol version so that a version mismatch can always be reported.
//! `docs/protocol.md` is the byte-level specification.

use std::io;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use tokio_util::codec::{Decoder, Encoder};
use uuid::Uuid;

/// The protocol version this build speaks. Peers with another version are refused.
pub const PROTOCOL_VERSION: u32 = 2;

/// The four bytes every `Hello` starts with: tells a p2p-transfer peer from anything else.
pub const MAGIC: [u8; 4] = *b"P2PT";

/// Largest frame payload accepted or produced: the largest chunk plus generous room for
/// headers, and the cap on a manifest's encoded size.
pub const MAX_FRAME_LEN: usize = 32 * 1024 * 1024;

/// Length of the frame header (big-endian `u32` payload length).
pub const FRAME_HEADER_LEN: usize = 4;

/// Most bytes of UTF-8 one [`Message::Text`] carries. Longer text goes as a file
/// (`send -` streams standard input).
pub const MAX_TEXT_LEN: usize = 64 * 1024;

/// Longest frame payload a [`Message::Text`] can have: its variant byte, the transfer id
/// (a 17-byte byte string) and the text's length (at most a 3-byte varint) around at
/// most [`MAX_TEXT_LEN`] bytes of text. A frame that starts with the `Text` variant and
/// announces more is refused from its first five bytes, before anything is allocated.
pub const MAX_TEXT_FRAME_LEN: usize = 1 + 17 + 3 + MAX_TEXT_LEN;

/// Framing and encoding failures.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// A frame header announced more bytes than any valid message has.
    #[error("frame of {len} bytes is too large (limit {max})")]
    Oversized { len: u64, max: usize },
    /// A `Text` frame announced more bytes than a text may have.
    #[error(
        "the peer sent a text frame of {len} bytes; a text frame has at most {max} \
         (longer text goes as a file or stream)"
    )]
    TextTooLong { len: u64, max: usize },
    /// The stream ended in the middle of a frame.
    #[error("connection closed in the middle of a frame ({buffered} bytes unread)")]
    Truncated { buffered: usize },
    /// The payload is not a valid message.
    #[error("malformed message: {0}")]
    Decode(#[source] postcard::Error),
    /// A message could not be encoded (a local bug or an oversized value).
    #[error("cannot encode message: {0}")]
    Encode(#[source] postcard::Error),
    /// A frame held bytes after its message.
    #[error("malformed message: {0} unexpected trailing bytes")]
    TrailingBytes(usize),
    /// The transport failed.
    #[error("connection error: {0}")]
    Io(io::Error),
    /// The secure channel refused a record: it was altered (or damaged) in transit, so
    /// TLS stopped the connection before a byte of it was used.
    #[error(
        "the connection was tampered with or damaged in transit: the secure channel \
         refused a record ({0}); nothing from it was used"
    )]
    Tampered(io::Error),
}

impl From<io::Error> for WireError {
    /// TLS reports a record that fails authentication as `InvalidData` (a plain TCP
    /// stream never does).
    fn from(e: io::Error) -> Self {
        if e.kind() == io::ErrorKind::InvalidData {
            WireError::Tampered(e)
        } else {
            WireError::Io(e)
        }
    }
}

bitflags::bitflags! {
    /// Optional protocol features. Each side announces what it supports; the session
    /// uses the intersection.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
    pub struct Capabilities: u32 {
        /// Chunks may be zstd-compressed (`ChunkFlags::COMPRESSED`).
        const COMPRESSION = 1 << 0;
        /// The receiver may report chunks it already holds (`Accept::have`).
        const RESUME = 1 << 1;
        /// Offers may hold directories and several files.
        const FOLDER = 1 << 2;
        /// Reserved for authenticated encryption (not implemented yet).
        const ENCRYPTION = 1 << 3;
        /// More than one chunk may be in flight (window size above 1).
        const WINDOWED = 1 << 4;
        /// Unix permission bits and modification times are applied by the receiver.
        const METADATA = 1 << 5;
        /// The peer understands `Text` (a short UTF-8 text shown instead of saved) and
        /// answers it with `Done` or `Error`. Never sent to a peer without it.
        const TEXT = 1 << 6;
    }
}

impl Capabilities {
    /// Everything this build implements.
    pub fn supported() -> Self {
        Self::COMPRESSION
            | Self::RESUME
            | Self::FOLDER
            | Self::WINDOWED
            | Self::METADATA
            | Self::TEXT
    }
}

bitflags::bitflags! {
    /// Per-chunk flags.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
    pub struct ChunkFlags: u8 {
        /// `data` is one zstd frame that decompresses to the chunk's raw bytes.
        const COMPRESSED = 1 << 0;
    }
}

/// First message each way: who we are and what we speak.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Always [`MAGIC`].
    pub magic: [u8; 4],
    /// The sender's [`PROTOCOL_VERSION`].
    pub version: u32,
    /// Stable random id of the device (not an authenticated identity).
    pub device_id: Uuid,
    /// Human-readable device name, at most [`MAX_NAME_LEN`] bytes.
    pub device_name: String,
    /// Features the sender supports.
    pub capabilities: Capabilities,
}

/// Longest accepted device name, in bytes.
pub const MAX_NAME_LEN: usize = 256;

/// Transfer parameters proposed by the initiator (`Config`) and settled by the responder
/// (`ConfigAck`). Used for every transfer of the session, in both directions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionConfig {
    /// Raw bytes per chunk (the last chunk of a file may be shorter).
    pub chunk_size: u32,
    /// Most chunks in flight (sent, not yet acknowledged) at once.
    pub window_size: u32,
    /// Whether chunks may be compressed.
    pub compress: bool,
    /// zstd level used by the sender (1..=22, or negative "fast" levels down to -7).
    pub compress_level: i8,
    /// Whether the sender samples data and stops compressing incompressible files.
    pub adaptive: bool,
}

/// Seconds and nanoseconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Timestamp {
    pub secs: i64,
    pub nanos: u32,
}

/// What a manifest entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryKind {
    /// A directory; created even when empty.
    Dir,
    /// A regular file of `size` bytes.
    File { size: u64 },
}

/// One file or directory of an offer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Relative path, components separated by `/`; validated by the receiver.
    pub path: String,
    pub kind: EntryKind,
    /// Unix permission bits (only `0o777` is honoured).
    pub mode: u32,
    /// Modification time.
    pub mtime: Timestamp,
}

/// A sender's proposal: what it wants to send.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Offer {
    pub transfer_id: Uuid,
    /// Files and directories. Chunk messages name a file by its index in this list.
    pub entries: Vec<Entry>,
}

/// A file's chunk, by index into the offer's entries and chunk number within the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ChunkRef {
    pub file: u32,
    pub index: u64,
}

/// A run of chunks `[start, end)` of one file that the receiver already holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRange {
    pub file: u32,
    pub start: u64,
    pub end: u64,
}

/// Receiver's answer to an offer it will take.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Accept {
    pub transfer_id: Uuid,
    /// Chunks already durably held (resume); empty for a fresh transfer.
    pub have: Vec<ChunkRange>,
    /// Files already verified and in place (resume): the sender skips them entirely.
    pub complete: Vec<u32>,
}

/// One chunk of file data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chunk {
    pub at: ChunkRef,
    pub flags: ChunkFlags,
    /// CRC-32 (IEEE) of `data` exactly as transmitted.
    pub crc32: u32,
    #[serde(with = "serde_bytes_compat")]
    pub data: Bytes,
}

/// Why a message refuses, aborts or fails something. Carried in [`Message::Error`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorCode {
    /// The peer speaks another protocol version (`Hello` layouts differ in nothing else).
    VersionMismatch,
    /// A message arrived that the protocol does not allow at this point.
    Protocol,
    /// The offer names a path the receiver will not write (traversal, reserved name…).
    UnsafePath,
    /// A file that exists at the destination would be overwritten.
    AlreadyExists,
    /// Not enough free space for the declared sizes.
    InsufficientSpace,
    /// The receiver's disk failed (write error, permission denied).
    Storage,
    /// A file's SHA-256 did not match after all chunks arrived.
    VerificationFailed,
    /// The user declined or cancelled.
    Cancelled,
    /// Anything else.
    Other,
    /// The peer's user stopped a running transfer (Ctrl+C, Cancel). What arrived is
    /// kept: the transfer can be resumed, and the other side may wait for that.
    Interrupted,
}

/// Everything that crosses the wire. See `docs/protocol.md`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// 0 — initiator introduces itself.
    Hello(Hello),
    /// 1 — responder introduces itself.
    HelloAck(Hello),
    /// 2 — a refusal or abort, with the reason; either side, any time. Also carries the
    /// sender's protocol version in `version` so that mismatches can be reported.
    Error {
        code: ErrorCode,
        message: String,
        version: u32,
    },
    /// 3 — initiator proposes transfer parameters.
    Config(SessionConfig),
    /// 4 — responder settles them.
    ConfigAck(SessionConfig),
    /// 5 — the side that wants to send proposes a transfer.
    Offer(Offer),
    /// 6 — the other side takes it.
    Accept(Accept),
    /// 7 — file data.
    Chunk(Chunk),
    /// 8 — the chunk was verified and written.
    Ack(ChunkRef),
    /// 9 — the chunk failed its CRC; send it again.
    Nack(ChunkRef),
    /// 10 — all chunks of `file` were sent; its SHA-256 for verification.
    FileEnd { file: u32, sha256: [u8; 32] },
    /// 11 — the receiver verified and finalised `file`.
    FileDone { file: u32 },
    /// 12 — the receiver finalised every entry of the transfer.
    Done { transfer_id: Uuid },
    /// 13 — liveness probe; answered by `Pong` with the same value.
    Ping(u64),
    /// 14 — answer to `Ping`.
    Pong(u64),
    /// 15 — the side that wants to send offers a short text to be shown, not saved
    /// (only when [`Capabilities::TEXT`] was agreed). `text` is UTF-8, at most
    /// [`MAX_TEXT_LEN`] bytes; the receiver checks both and answers `Done` or `Error`.
    Text {
        transfer_id: Uuid,
        #[serde(with = "serde_bytes_compat")]
        text: Bytes,
    },
}

impl Message {
    /// Short name for logs and errors.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Hello(_) => "Hello",
            Message::HelloAck(_) => "HelloAck",
            Message::Error { .. } => "Error",
            Message::Config(_) => "Config",
            Message::ConfigAck(_) => "ConfigAck",
            Message::Offer(_) => "Offer",
            Message::Accept(_) => "Accept",
            Message::Chunk(_) => "Chunk",
            Message::Ack(_) => "Ack",
            Message::Nack(_) => "Nack",
            Message::FileEnd { .. } => "FileEnd",
            Message::FileDone { .. } => "FileDone",
            Message::Done { .. } => "Done",
            Message::Ping(_) => "Ping",
            Message::Pong(_) => "Pong",
            Message::Text { .. } => "Text",
        }
    }
}

/// Encodes chunk data with `serialize_bytes` (postcard: varint length + raw bytes) rather
/// than as a sequence of individually encoded `u8`s — the same bytes on the wire for
/// postcard, but one `memcpy` instead of a loop. (Decoding a `Chunk` from a frame does not
/// go through serde at all: see [`decode_chunk`].)
pub(crate) mod serde_bytes_compat {
    use bytes::Bytes;
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(data: &Bytes, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(data)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Bytes;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a byte string")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Bytes, E> {
                Ok(Bytes::copy_from_slice(v))
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Bytes, E> {
                Ok(Bytes::from(v))
            }
        }
        d.deserialize_bytes(V)
    }
}

/// Variant index of [`Message::Chunk`] (a one-byte varint).
const CHUNK_VARIANT: u8 = 7;

/// Variant index of [`Message::Text`] (a one-byte varint).
const TEXT_VARIANT: u8 = 15;

/// A header announcing `len` bytes that the decoder refuses without waiting for them:
/// more than any frame, or a `Text` frame (its variant byte `variant` is known once the
/// payload has started) longer than any text.
fn refused_len(len: usize, variant: Option<&u8>) -> Option<WireError> {
    if len > MAX_FRAME_LEN {
        Some(WireError::Oversized {
            len: len as u64,
            max: MAX_FRAME_LEN,
        })
    } else if len > MAX_TEXT_FRAME_LEN && variant == Some(&TEXT_VARIANT) {
        Some(WireError::TextTooLong {
            len: len as u64,
            max: MAX_TEXT_FRAME_LEN,
        })
    } else {
        None
    }
}

/// Decodes a `Chunk` payload without copying its data: the returned `data` is a slice of
/// the frame buffer. Produces exactly what serde would, or the same errors.
fn decode_chunk(payload: BytesMut) -> Result<Message, WireError> {
    let (header, rest) =
        postcard::take_from_bytes::<(ChunkRef, ChunkFlags, u32, u64)>(&payload[1..])
            .map_err(WireError::Decode)?;
    let (at, flags, crc32, len) = header;
    let start = payload.len() - rest.len();
    let len = usize::try_from(len)
        .map_err(|_| WireError::Decode(postcard::Error::DeserializeBadVarint))?;
    match rest.len().cmp(&len) {
        std::cmp::Ordering::Less => {
            Err(WireError::Decode(postcard::Error::DeserializeUnexpectedEnd))
        }
        std::cmp::Ordering::Greater => Err(WireError::TrailingBytes(rest.len() - len)),
        std::cmp::Ordering::Equal => Ok(Message::Chunk(Chunk {
            at,
            flags,
            crc32,
            data: payload.freeze().slice(start..),
        })),
    }
}

/// Encodes a message into a complete frame (header + payload).
pub fn encode_frame(msg: &Message, dst: &mut BytesMut) -> Result<(), WireError> {
    let len = postcard::experimental::serialized_size(msg).map_err(WireError::Encode)?;
    if len > MAX_FRAME_LEN {
        return Err(WireError::Oversized {
            len: len as u64,
            max: MAX_FRAME_LEN,
        });
    }
    dst.reserve(FRAME_HEADER_LEN + len);
    dst.put_u32(len as u32);
    let start = dst.len();
    dst.resize(start + len, 0);
    postcard::to_slice(msg, &mut dst[start..]).map_err(WireError::Encode)?;
    Ok(())
}

/// Decodes one message from a frame payload (without the header).
pub fn decode_payload(payload: &[u8]) -> Result<Message, WireError> {
    let (msg, rest) = postcard::take_from_bytes::<Message>(payload).map_err(WireError::Decode)?;
    if !rest.is_empty() {
        return Err(WireError::TrailingBytes(rest.len()));
    }
    Ok(msg)
}

/// [`tokio_util::codec`] codec for [`Message`] frames.
///
/// Decoding distinguishes *incomplete* (wait for more bytes: `Ok(None)`) from *invalid*
/// (an error). Lengths above [`MAX_FRAME_LEN`] are rejected from the 4-byte header
/// alone, before the buffer grows.
#[derive(Debug, Default, Clone, Copy)]
pub struct FrameCodec;

impl FrameCodec {
    /// Whether `buf` (a read buffer) starts with a whole frame, so that decoding the next
    /// message needs no read from the stream. An oversized header counts as whole: the
    /// decoder reports it at once.
    pub fn holds_frame(buf: &[u8]) -> bool {
        match buf.first_chunk::<FRAME_HEADER_LEN>() {
            Some(header) => {
                let len = u32::from_be_bytes(*header) as usize;
                refused_len(len, buf.get(FRAME_HEADER_LEN)).is_some()
                    || buf.len() - FRAME_HEADER_LEN >= len
            }
            None => false,
        }
    }
}

impl Decoder for FrameCodec {
    type Item = Message;
    type Error = WireError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Message>, WireError> {
        if src.len() < FRAME_HEADER_LEN {
            return Ok(None);
        }
        let len = u32::from_be_bytes([src[0], src[1], src[2], src[3]]) as usize;
        if let Some(refused) = refused_len(len, src.get(FRAME_HEADER_LEN)) {
            return Err(refused);
        }
        if src.len() < FRAME_HEADER_LEN + len {
            // Room for the whole frame only once its variant is known (a `Text` frame
            // has a lower limit than the others).
            if src.len() > FRAME_HEADER_LEN {
                src.reserve(FRAME_HEADER_LEN + len - src.len());
            }
            return Ok(None);
        }
        src.advance(FRAME_HEADER_LEN);
        let payload = src.split_to(len);
        if payload.first() == Some(&CHUNK_VARIANT) {
            return decode_chunk(payload).map(Some);
        }
        decode_payload(&payload).map(Some)
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Message>, WireError> {
        match self.decode(src)? {
            Some(msg) => Ok(Some(msg)),
            None if src.is_empty() => Ok(None),
            None => Err(WireError::Truncated {
                buffered: src.len(),
            }),
        }
    }
}

impl Encoder<Message> for FrameCodec {
    type Error = WireError;

    fn encode(&mut self, msg: Message, dst: &mut BytesMut) -> Result<(), WireError> {
        encode_frame(&msg, dst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_frame_means_the_next_decode_reads_nothing_more() {
        let mut buf = BytesMut::new();
        FrameCodec.encode(Message::Ping(7), &mut buf).unwrap();
        let whole = buf.len();
        FrameCodec.encode(Message::Pong(7), &mut buf).unwrap();
        assert!(FrameCodec::holds_frame(&buf));
        assert!(FrameCodec::holds_frame(&buf[..whole]));
        assert!(!FrameCodec::holds_frame(&buf[..whole - 1]));
        assert!(!FrameCodec::holds_frame(&buf[..3]));
        assert!(!FrameCodec::holds_frame(&[]));
        // An oversized header is "whole": the decoder rejects it without waiting.
        assert!(FrameCodec::holds_frame(&u32::MAX.to_be_bytes()));
    }

    fn samples() -> Vec<Message> {
        let id = Uuid::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef);
        vec![
            Message::Hello(Hello {
                magic: MAGIC,
                version: PROTOCOL_VERSION,
                device_id: id,
                device_name: "laptop ☃".into(),
                capabilities: Capabilities::supported(),
            }),
            Message::Error {
                code: ErrorCode::UnsafePath,
                message: "no".into(),
                version: 1,
            },
            Message::Config(SessionConfig {
                chunk_size: 1 << 20,
                window_size: 16,
                compress: true,
                compress_level: -3,
                adaptive: true,
            }),
            Message::Offer(Offer {
                transfer_id: id,
                entries: vec![
                    Entry {
                        path: "a/b".into(),
                        kind: EntryKind::File { size: 5 },
                        mode: 0o644,
                        mtime: Timestamp { secs: -5, nanos: 7 },
                    },
                    Entry {
                        path: "a".into(),
                        kind: EntryKind::Dir,
                        mode: 0o755,
                        mtime: Timestamp::default(),
                    },
                ],
            }),
            Message::Accept(Accept {
                transfer_id: id,
                have: vec![ChunkRange {
                    file: 0,
                    start: 1,
                    end: 9,
                }],
                complete: vec![3],
            }),
            Message::Chunk(Chunk {
                at: ChunkRef { file: 3, index: 9 },
                flags: ChunkFlags::COMPRESSED,
                crc32: 0xdead_beef,
                data: Bytes::from_static(&[1, 2, 3, 255]),
            }),
            Message::Ack(ChunkRef { file: 1, index: 2 }),
            Message::Nack(ChunkRef { file: 1, index: 2 }),
            Message::FileEnd {
                file: 2,
                sha256: [7; 32],
            },
            Message::FileDone { file: 2 },
            Message::Done { transfer_id: id },
            Message::Ping(u64::MAX),
            Message::Pong(0),
            Message::Text {
                transfer_id: id,
                text: Bytes::from_static("héllo\n\u{1b}[2J".as_bytes()),
            },
        ]
    }

    #[test]
    fn every_message_round_trips_through_the_codec() {
        let mut codec = FrameCodec;
        let mut buf = BytesMut::new();
        for msg in samples() {
            codec.encode(msg, &mut buf).unwrap();
        }
        for expected in samples() {
            let got = codec.decode(&mut buf).unwrap().expect("a whole frame");
            assert_eq!(got, expected);
        }
        assert!(buf.is_empty());
        assert_eq!(codec.decode_eof(&mut buf).unwrap(), None);
    }

    #[test]
    fn every_prefix_of_a_frame_is_incomplete_not_invalid() {
        let mut whole = BytesMut::new();
        for msg in samples() {
            whole.clear();
            encode_frame(&msg, &mut whole).unwrap();
            for cut in 0..whole.len() {
                let mut part = BytesMut::from(&whole[..cut]);
                assert_eq!(FrameCodec.decode(&mut part).unwrap(), None, "cut at {cut}");
                if cut > 0 {
                    let err = FrameCodec.decode_eof(&mut part).unwrap_err();
                    assert!(matches!(err, WireError::Truncated { .. }), "{err}");
                }
            }
        }
    }

    #[test]
    fn oversized_length_is_rejected_from_the_header_alone() {
        let mut buf = BytesMut::new();
        buf.put_u32(MAX_FRAME_LEN as u32 + 1);
        let err = FrameCodec.decode(&mut buf).unwrap_err();
        assert!(matches!(err, WireError::Oversized { .. }));
        assert!(buf.capacity() < 1024, "must not reserve the claimed length");
        assert!(err.to_string().contains("too large"), "{err}");
    }

    #[test]
    fn garbage_payload_is_an_error_not_a_panic() {
        for payload in [&[0xffu8, 0xff, 0xff][..], &[200], &[7, 1], &[]] {
            let mut buf = BytesMut::new();
            buf.put_u32(payload.len() as u32);
            buf.put_slice(payload);
            assert!(FrameCodec.decode(&mut buf).is_err(), "{payload:?}");
        }
    }

    #[test]
    fn the_zero_copy_chunk_decoder_agrees_with_serde() {
        let chunk = Message::Chunk(Chunk {
            at: ChunkRef {
                file: 300,
                index: 1 << 40,
            },
            flags: ChunkFlags::COMPRESSED,
            crc32: u32::MAX,
            data: Bytes::from(vec![5u8; 1000]),
        });
        let mut buf = BytesMut::new();
        encode_frame(&chunk, &mut buf).unwrap();
        let payload = buf.split_off(FRAME_HEADER_LEN);
        assert_eq!(decode_payload(&payload).unwrap(), chunk);
        assert_eq!(decode_chunk(payload.clone()).unwrap(), chunk);
        // One byte short, one byte long: the same errors as serde would give.
        let short = BytesMut::from(&payload[..payload.len() - 1]);
        assert!(decode_chunk(short).is_err());
        let mut long = payload.clone();
        long.put_u8(0);
        assert!(matches!(
            decode_chunk(long),
            Err(WireError::TrailingBytes(1))
        ));
        // A header cut inside its varints.
        assert!(decode_chunk(BytesMut::from(&payload[..3])).is_err());
    }

    #[test]
    fn trailing_bytes_after_a_message_are_rejected() {
        let mut buf = BytesMut::new();
        encode_frame(&Message::Ping(1), &mut buf).unwrap();
        buf.put_u8(0);
        // Patch the length to cover the extra byte.
        let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) + 1;
        buf[..4].copy_from_slice(&len.to_be_bytes());
        let err = FrameCodec.decode(&mut buf).unwrap_err();
        assert!(matches!(err, WireError::TrailingBytes(1)), "{err}");
    }

    /// Pins the byte layout documented in docs/protocol.md.
    #[test]
    fn golden_bytes_match_the_spec() {
        let mut buf = BytesMut::new();
        encode_frame(
            &Message::Ack(ChunkRef {
                file: 1,
                index: 300,
            }),
            &mut buf,
        )
        .unwrap();
        assert_eq!(&buf[..], &[0, 0, 0, 4, 8, 1, 0xac, 0x02]);

        buf.clear();
        encode_frame(
            &Message::Error {
                code: ErrorCode::Interrupted,
                message: "x".into(),
                version: 2,
            },
            &mut buf,
        )
        .unwrap();
        assert_eq!(&buf[..], &[0, 0, 0, 5, 2, 9, 1, b'x', 2]);

        let id = Uuid::from_u128(1);
        buf.clear();
        encode_frame(
            &Message::Hello(Hello {
                magic: MAGIC,
                version: 1,
                device_id: id,
                device_name: "A".into(),
                capabilities: Capabilities::COMPRESSION | Capabilities::WINDOWED,
            }),
            &mut buf,
        )
        .unwrap();
        let mut expected = vec![0u8, b'P', b'2', b'P', b'T', 1, 16];
        expected.extend_from_slice(&id.into_bytes());
        expected.extend_from_slice(&[1, b'A', 17]);
        assert_eq!(&buf[4..], &expected[..]);

        buf.clear();
        encode_frame(
            &Message::Chunk(Chunk {
                at: ChunkRef { file: 0, index: 1 },
                flags: ChunkFlags::empty(),
                crc32: 1,
                data: Bytes::from_static(&[9, 9]),
            }),
            &mut buf,
        )
        .unwrap();
        assert_eq!(&buf[4..], &[7, 0, 1, 0, 1, 2, 9, 9]);

        // Text { id 00…01, "hi" }: variant 15, the id as a 16-byte byte string, then the
        // text as a byte string.
        buf.clear();
        encode_frame(
            &Message::Text {
                transfer_id: id,
                text: Bytes::from_static(b"hi"),
            },
            &mut buf,
        )
        .unwrap();
        let mut expected = vec![0u8, 0, 0, 21, 15, 16];
        expected.extend_from_slice(&id.into_bytes());
        expected.extend_from_slice(&[2, b'h', b'i']);
        assert_eq!(&buf[..], &expected[..]);
        // …answered by Done { id 00…01 }.
        buf.clear();
        encode_frame(&Message::Done { transfer_id: id }, &mut buf).unwrap();
        let mut expected = vec![0u8, 0, 0, 18, 12, 16];
        expected.extend_from_slice(&id.into_bytes());
        assert_eq!(&buf[..], &expected[..]);

        // The capability bits, as the `Hello` of this build announces them.
        assert_eq!(Capabilities::TEXT.bits(), 64);
        assert_eq!(
            postcard::to_allocvec(&Capabilities::supported()).unwrap(),
            [0x77]
        );
    }

    fn text_frame(len: usize) -> BytesMut {
        let mut buf = BytesMut::new();
        encode_frame(
            &Message::Text {
                transfer_id: Uuid::from_u128(u128::MAX),
                text: Bytes::from(vec![b'a'; len]),
            },
            &mut buf,
        )
        .unwrap();
        buf
    }

    #[test]
    fn the_longest_text_fits_its_frame_limit_exactly() {
        let mut buf = text_frame(MAX_TEXT_LEN);
        assert_eq!(buf.len() - FRAME_HEADER_LEN, MAX_TEXT_FRAME_LEN);
        let Some(Message::Text { text, .. }) = FrameCodec.decode(&mut buf).unwrap() else {
            panic!("expected a Text");
        };
        assert_eq!(text.len(), MAX_TEXT_LEN);
    }

    #[test]
    fn a_long_text_frame_is_refused_from_its_first_five_bytes() {
        let whole = text_frame(MAX_TEXT_LEN + 1);
        // The header alone says nothing about the variant: wait, without room for the
        // announced payload.
        let mut header = BytesMut::from(&whole[..FRAME_HEADER_LEN]);
        assert_eq!(FrameCodec.decode(&mut header).unwrap(), None);
        assert!(
            header.capacity() < 1024,
            "must not reserve the claimed length"
        );
        assert!(!FrameCodec::holds_frame(&header));
        // The variant byte: refused at once, nothing reserved.
        let mut five = BytesMut::from(&whole[..FRAME_HEADER_LEN + 1]);
        assert!(FrameCodec::holds_frame(&five));
        let err = FrameCodec.decode(&mut five).unwrap_err();
        assert!(
            matches!(err, WireError::TextTooLong { len, max }
                if len == (MAX_TEXT_FRAME_LEN + 1) as u64 && max == MAX_TEXT_FRAME_LEN),
            "{err}"
        );
        assert!(
            five.capacity() < 1024,
            "must not reserve the claimed length"
        );
        // Other messages keep the frame limit: a chunk frame of the same length is fine.
        let mut chunk = BytesMut::new();
        encode_frame(
            &Message::Chunk(Chunk {
                at: ChunkRef { file: 0, index: 0 },
                flags: ChunkFlags::empty(),
                crc32: 0,
                data: Bytes::from(vec![0; MAX_TEXT_FRAME_LEN]),
            }),
            &mut chunk,
        )
        .unwrap();
        assert!(matches!(
            FrameCodec.decode(&mut chunk).unwrap(),
            Some(Message::Chunk(_))
        ));
    }
}
