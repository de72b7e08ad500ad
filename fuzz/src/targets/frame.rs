//! `frame`: a byte stream fed to [`FrameCodec`] as a `tokio_util` `Decoder`, the way
//! `Framed` feeds it: bytes arrive in reads, and after each read the codec is asked for
//! messages until it says "incomplete" or fails; at the end of the stream `decode_eof`.
//!
//! Input: byte 0 picks the read size (1 to 64 bytes), the rest is the stream. Checks:
//!
//! - The outcome (messages, then a clean end, a truncation or an error) does not depend on
//!   how the stream is cut into reads: the stream decoded in small reads and in one read
//!   must agree exactly. "Incomplete" is never confused with "invalid".
//! - `FrameCodec::holds_frame` predicts every `decode`: true exactly when the call
//!   returns a message or an error rather than "incomplete".
//! - An incomplete decode consumes nothing; a decoded frame consumes exactly its header
//!   and announced length, which is at most `MAX_FRAME_LEN` (32 MiB). An oversized
//!   header is refused without growing the buffer, and no buffer grows past one frame.
//!   A `Text` frame (variant byte 15) announcing more than `MAX_TEXT_FRAME_LEN` is
//!   refused from its first five bytes, without waiting for (or buffering) its payload.
//! - Every frame's payload decodes the same through `wire::decode_payload`, and every
//!   message passes [`check_message`] (re-encoding, round trip, and `validate_entries`
//!   with its oracle for an `Offer`).
//! - `decode_eof` ends cleanly on an empty buffer and reports `Truncated` with the exact
//!   number of bytes left otherwise.

use bytes::BytesMut;
use p2p_core::error::WireError;
use p2p_core::wire::{
    self, FrameCodec, Message, FRAME_HEADER_LEN, MAX_FRAME_LEN, MAX_TEXT_FRAME_LEN,
};
use tokio_util::codec::Decoder;

use super::message::check_message;

#[derive(Debug, PartialEq)]
enum End {
    /// The stream ended on a frame boundary.
    Clean,
    /// The stream ended inside a frame with this many bytes unread.
    Truncated(usize),
    /// The codec refused the stream (the error's text).
    Error(String),
}

#[derive(Debug, PartialEq)]
struct Outcome {
    /// Each message with the offset and length of its frame in the stream.
    messages: Vec<(Message, usize, usize)>,
    end: End,
}

pub fn run(data: &[u8]) {
    let Some((&cut, stream)) = data.split_first() else {
        return;
    };
    let whole = decode_stream(stream, stream.len().max(1));
    let step = usize::from(cut % 64) + 1;
    let pieces = decode_stream(stream, step);
    assert_eq!(
        whole, pieces,
        "the outcome depends on how the stream is cut into {step}-byte reads"
    );

    for (msg, offset, len) in &whole.messages {
        let payload = &stream[offset + FRAME_HEADER_LEN..offset + len];
        let direct = wire::decode_payload(payload).expect("decode_payload refuses a frame");
        assert_eq!(&direct, msg, "decode_payload and FrameCodec disagree");
        check_message(msg, payload);
    }
    if let End::Error(text) = &whole.end {
        // The refused frame starts right after the last message.
        let offset = whole.messages.last().map_or(0, |(_, o, l)| o + l);
        let header = &stream[offset..offset + FRAME_HEADER_LEN];
        let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let is_text = stream.get(offset + FRAME_HEADER_LEN) == Some(&15);
        if is_text && len > MAX_TEXT_FRAME_LEN && len <= MAX_FRAME_LEN {
            // Refused from the header and the variant byte: the payload need not be there.
            let expected = WireError::TextTooLong {
                len: len as u64,
                max: MAX_TEXT_FRAME_LEN,
            };
            assert_eq!(
                &expected.to_string(),
                text,
                "a long Text frame was refused for another reason"
            );
        } else if len <= MAX_FRAME_LEN {
            let payload = &stream[offset + FRAME_HEADER_LEN..offset + FRAME_HEADER_LEN + len];
            let direct = wire::decode_payload(payload)
                .expect_err("decode_payload accepts a frame the codec refused");
            assert_eq!(
                &direct.to_string(),
                text,
                "the two decoders fail differently"
            );
        }
    }
}

/// Feeds `stream` to a fresh codec in reads of `step` bytes.
fn decode_stream(stream: &[u8], step: usize) -> Outcome {
    let mut codec = FrameCodec;
    let mut buf = BytesMut::new();
    let mut messages = Vec::new();
    let mut fed = 0;
    // Offset in `stream` of the first byte still in `buf`.
    let mut consumed = 0;
    loop {
        loop {
            let holds = FrameCodec::holds_frame(&buf);
            let before = buf.len();
            let capacity = buf.capacity();
            match codec.decode(&mut buf) {
                Ok(Some(msg)) => {
                    assert!(holds, "holds_frame said incomplete, decode gave a message");
                    let used = before - buf.len();
                    assert!(used >= FRAME_HEADER_LEN);
                    assert!(used - FRAME_HEADER_LEN <= MAX_FRAME_LEN);
                    let header = &stream[consumed..consumed + FRAME_HEADER_LEN];
                    let announced =
                        u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
                    assert_eq!(used, FRAME_HEADER_LEN + announced, "frame length mismatch");
                    messages.push((msg, consumed, used));
                    consumed += used;
                }
                Ok(None) => {
                    assert!(!holds, "holds_frame said whole, decode said incomplete");
                    assert_eq!(buf.len(), before, "an incomplete decode consumed bytes");
                    assert!(
                        buf.capacity() <= 2 * (FRAME_HEADER_LEN + MAX_FRAME_LEN),
                        "the read buffer grew to {} bytes",
                        buf.capacity()
                    );
                    break;
                }
                Err(e) => {
                    assert!(holds, "holds_frame said incomplete, decode gave {e}");
                    if let WireError::Oversized { len, max } = &e {
                        assert_eq!(*max, MAX_FRAME_LEN);
                        assert!(*len > MAX_FRAME_LEN as u64);
                        assert_eq!(buf.capacity(), capacity, "grew for an oversized frame");
                    }
                    if let WireError::TextTooLong { len, max } = &e {
                        assert_eq!(*max, MAX_TEXT_FRAME_LEN);
                        assert!(*len > MAX_TEXT_FRAME_LEN as u64);
                        assert!(
                            buf.len() <= FRAME_HEADER_LEN + step.max(1) + FRAME_HEADER_LEN,
                            "buffered {} bytes of a refused text frame",
                            buf.len()
                        );
                    }
                    assert!(
                        !matches!(e, WireError::Truncated { .. } | WireError::Io(_)),
                        "decode gave {e}"
                    );
                    return Outcome {
                        messages,
                        end: End::Error(e.to_string()),
                    };
                }
            }
        }
        if fed == stream.len() {
            break;
        }
        let n = step.min(stream.len() - fed);
        buf.extend_from_slice(&stream[fed..fed + n]);
        fed += n;
    }
    assert_eq!(consumed + buf.len(), stream.len());
    let left = buf.len();
    let end = match codec.decode_eof(&mut buf) {
        Ok(None) => {
            assert_eq!(left, 0, "decode_eof ended cleanly with {left} bytes unread");
            End::Clean
        }
        Ok(Some(msg)) => panic!("decode_eof produced {msg:?} that decode did not"),
        Err(WireError::Truncated { buffered }) => {
            assert_eq!(buffered, left);
            assert!(buffered > 0);
            End::Truncated(buffered)
        }
        Err(e) => panic!("decode_eof failed with {e} where decode said incomplete"),
    };
    Outcome { messages, end }
}
