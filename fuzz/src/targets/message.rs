//! `message`: one frame payload, decoded by both decoders `p2p-core` has for it.
//!
//! - [`wire::decode_payload`] (serde/postcard) and [`FrameCodec`] on a frame holding the
//!   same payload must agree: same message, or an error with the same text. The codec
//!   takes its zero-copy path for `Chunk` payloads (first byte 7), which is documented to
//!   produce "exactly what serde would, or the same errors".
//! - Every decoded message goes through [`check_message`]: it re-encodes within the
//!   caps and round-trips, and an `Offer`'s entries go through `validate_entries`, whose
//!   verdict is checked against an independent oracle ([`check_offer`]).

use std::collections::HashSet;
use std::path::{Component, Path};

use bytes::{BufMut, BytesMut};
use p2p_core::fs::safe_path::{
    validate_entries, validate_path, MAX_COMPONENT_LEN, MAX_ENTRIES, MAX_PATH_LEN,
};
use p2p_core::wire::{
    self, encode_frame, Entry, EntryKind, FrameCodec, Message, FRAME_HEADER_LEN, MAX_FRAME_LEN,
};
use tokio_util::codec::Decoder;

pub fn run(data: &[u8]) {
    if data.len() > MAX_FRAME_LEN {
        return; // not a payload any frame can carry (the frame target covers the header)
    }
    let direct = wire::decode_payload(data);

    let mut frame = BytesMut::with_capacity(FRAME_HEADER_LEN + data.len());
    frame.put_u32(data.len() as u32);
    frame.put_slice(data);
    assert!(FrameCodec::holds_frame(&frame));
    let via_codec = FrameCodec.decode(&mut frame);

    match (direct, via_codec) {
        (Ok(a), Ok(Some(b))) => {
            assert_eq!(a, b, "decode_payload and FrameCodec disagree");
            assert!(frame.is_empty(), "the codec left {} bytes", frame.len());
            check_message(&a, data);
        }
        (Err(a), Err(b)) => {
            assert_eq!(
                a.to_string(),
                b.to_string(),
                "decode_payload and FrameCodec fail differently"
            );
        }
        (a, b) => panic!("decode_payload gave {a:?} but FrameCodec gave {b:?}"),
    }
}

/// Checks a message decoded from `payload` (the frame's bytes after the header).
pub fn check_message(msg: &Message, payload: &[u8]) {
    let _ = msg.kind();
    assert!(payload.len() <= MAX_FRAME_LEN);

    // Re-encoding: never refused (the canonical encoding is never longer than an accepted
    // one, and the accepted one fit the cap), decodes to the same message, and is a fixed
    // point. Byte equality with `payload` is not expected: postcard accepts over-long
    // varints ([0x80, 0x00] for 0) and re-encodes them minimally.
    let mut frame = BytesMut::new();
    encode_frame(msg, &mut frame).expect("a decoded message must re-encode");
    let len = u32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]) as usize;
    assert_eq!(len, frame.len() - FRAME_HEADER_LEN);
    assert!(
        len <= payload.len(),
        "re-encoded {len} bytes from a {}-byte payload",
        payload.len()
    );
    let reencoded = frame.clone();
    let back = FrameCodec
        .decode(&mut frame)
        .expect("a re-encoded message must decode")
        .expect("a re-encoded frame is whole");
    assert_eq!(&back, msg, "round trip changed the message");
    assert!(frame.is_empty());
    let mut again = BytesMut::new();
    encode_frame(&back, &mut again).unwrap();
    assert_eq!(again, reencoded, "encoding is not a fixed point");

    match msg {
        Message::Chunk(chunk) => {
            assert!(chunk.data.len() <= MAX_FRAME_LEN);
            assert!(chunk.data.len() < payload.len());
        }
        Message::Offer(offer) => check_offer(&offer.entries),
        _ => {}
    }
}

/// Runs the receiver's path validation on an offer and, when it accepts, checks that
/// every promise of `fs::safe_path` holds: nothing absolute, nothing that climbs out,
/// nothing Windows would read as a drive, stream, UNC path or device, bounded lengths,
/// no duplicates, no file used as a directory.
pub fn check_offer(entries: &[Entry]) {
    let verdict = validate_entries(entries);
    let paths_ok = entries.iter().all(|e| validate_path(&e.path).is_ok());
    if !paths_ok {
        assert!(
            verdict.is_err(),
            "validate_entries accepted an offer with a path validate_path refuses"
        );
    }
    if verdict.is_err() {
        return;
    }
    assert!(entries.len() <= MAX_ENTRIES);
    let mut seen = HashSet::new();
    let mut files = HashSet::new();
    for entry in entries {
        let path = entry.path.as_str();
        assert!(!path.is_empty() && path.len() <= MAX_PATH_LEN, "{path:?}");
        assert!(!path.starts_with('/'), "absolute path accepted: {path:?}");
        for part in path.split('/') {
            assert!(
                !matches!(part, "" | "." | ".."),
                "component {part:?} accepted in {path:?}"
            );
            assert!(part.len() <= MAX_COMPONENT_LEN, "{path:?}");
            assert!(
                !part
                    .chars()
                    .any(|c| c.is_control() || c == '\\' || c == ':'),
                "control character, backslash or colon accepted in {path:?}"
            );
            assert!(
                !part.ends_with('.') && !part.ends_with(' '),
                "trailing dot or space accepted in {path:?}"
            );
            let stem = part.split('.').next().unwrap_or(part).trim_end();
            assert!(!is_reserved(stem), "Windows device name accepted: {path:?}");
        }
        // Joined onto the output folder on this platform, it stays inside it.
        assert!(
            Path::new(path)
                .components()
                .all(|c| matches!(c, Component::Normal(_))),
            "{path:?} has a component that is not a plain name"
        );
        assert!(seen.insert(path), "duplicate entry accepted: {path:?}");
        if matches!(entry.kind, EntryKind::File { .. }) {
            files.insert(path);
        }
    }
    for entry in entries {
        let path = entry.path.as_str();
        for (i, _) in path.match_indices('/') {
            assert!(
                !files.contains(&path[..i]),
                "file {:?} is used as a directory by {path:?}",
                &path[..i]
            );
        }
    }
}

fn is_reserved(stem: &str) -> bool {
    let upper = stem.to_ascii_uppercase();
    matches!(upper.as_str(), "CON" | "PRN" | "AUX" | "NUL")
        || ((upper.starts_with("COM") || upper.starts_with("LPT"))
            && upper.len() == 4
            && matches!(upper.as_bytes()[3], b'1'..=b'9'))
}
