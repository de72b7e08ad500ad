//! Writes the seed corpora: a few small valid inputs per target, built with p2p-core's
//! own encoders so that they follow the format as it is. Deterministic.
//!
//! ```text
//! cargo run --release --bin gen-corpus    # (re)writes fuzz/corpus/*/seed-*
//! ```

use std::net::SocketAddr;
use std::path::Path;

use bytes::{Bytes, BytesMut};
use p2p_core::discovery::{encode_datagram, Beacon, DiscoveryMessage};
use p2p_core::fs::resume_state::StateBody;
use p2p_core::nat::stun::{self, attr, Class, MessageBuilder, TransactionId, METHOD_BINDING};
use p2p_core::net::DeviceId;
use p2p_core::transfer::{ChunkSet, ResumeInfo};
use p2p_core::wire::{
    encode_frame, Accept, Capabilities, Chunk, ChunkFlags, ChunkRange, ChunkRef, Entry, EntryKind,
    ErrorCode, Hello, Message, Offer, SessionConfig, Timestamp, FRAME_HEADER_LEN, MAGIC,
    PROTOCOL_VERSION,
};
use uuid::Uuid;

const ID: Uuid = Uuid::from_u128(0x0123_4567_89ab_cdef_fedc_ba98_7654_3210);
const PEER: Uuid = Uuid::from_u128(0x1111_2222_3333_4444_5555_6666_7777_8888);
const DEVICE: DeviceId = DeviceId([
    0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef, 0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd,
]);
const PEER_DEVICE: DeviceId = DeviceId([0x11; 15]);

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let mut total = 0;
    for (target, seeds) in [
        ("frame", frame_seeds()),
        ("message", message_seeds()),
        ("resume_state", resume_seeds()),
        ("beacon", beacon_seeds()),
        ("stun", stun_seeds()),
        ("swarm", swarm_seeds()),
    ] {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir).unwrap();
        for (name, bytes) in seeds {
            total += bytes.len();
            std::fs::write(dir.join(format!("seed-{name}")), bytes).unwrap();
        }
    }
    println!("wrote {total} bytes of seeds under {}", root.display());
}

fn hello(name: &str) -> Hello {
    Hello {
        magic: MAGIC,
        version: PROTOCOL_VERSION,
        device_id: ID,
        device_name: name.into(),
        capabilities: Capabilities::supported(),
    }
}

fn config() -> SessionConfig {
    SessionConfig {
        chunk_size: 1 << 20,
        window_size: 16,
        compress: true,
        compress_level: 3,
        adaptive: true,
    }
}

fn entry(path: &str, kind: EntryKind) -> Entry {
    Entry {
        path: path.into(),
        kind,
        mode: 0o644,
        mtime: Timestamp {
            secs: 1_700_000_000,
            nanos: 5,
        },
    }
}

/// One of each message, in protocol order.
fn messages() -> Vec<(&'static str, Message)> {
    vec![
        ("hello", Message::Hello(hello("laptop"))),
        ("hello-ack", Message::HelloAck(hello("desk ☃"))),
        (
            "error",
            Message::Error {
                code: ErrorCode::UnsafePath,
                message: "no".into(),
                version: PROTOCOL_VERSION,
            },
        ),
        ("config", Message::Config(config())),
        ("config-ack", Message::ConfigAck(config())),
        (
            "offer",
            Message::Offer(Offer {
                transfer_id: ID,
                entries: vec![
                    entry("docs", EntryKind::Dir),
                    entry("docs/a.txt", EntryKind::File { size: 5 }),
                    entry("docs/sub/b.bin", EntryKind::File { size: 70_000 }),
                    entry("c", EntryKind::File { size: 0 }),
                ],
            }),
        ),
        (
            "accept",
            Message::Accept(Accept {
                transfer_id: ID,
                have: vec![ChunkRange {
                    file: 1,
                    start: 0,
                    end: 3,
                }],
                complete: vec![3],
            }),
        ),
        (
            "chunk",
            Message::Chunk(Chunk {
                at: ChunkRef { file: 1, index: 0 },
                flags: ChunkFlags::empty(),
                crc32: crc32fast::hash(b"hello"),
                data: Bytes::from_static(b"hello"),
            }),
        ),
        ("ack", Message::Ack(ChunkRef { file: 1, index: 0 })),
        ("nack", Message::Nack(ChunkRef { file: 1, index: 2 })),
        (
            "file-end",
            Message::FileEnd {
                file: 1,
                sha256: [0xab; 32],
            },
        ),
        ("file-done", Message::FileDone { file: 1 }),
        ("done", Message::Done { transfer_id: ID }),
        ("ping", Message::Ping(7)),
        ("pong", Message::Pong(7)),
    ]
}

fn frame_of(msg: &Message) -> Vec<u8> {
    let mut buf = BytesMut::new();
    encode_frame(msg, &mut buf).unwrap();
    buf.to_vec()
}

fn payload_of(msg: &Message) -> Vec<u8> {
    frame_of(msg)[FRAME_HEADER_LEN..].to_vec()
}

/// Frame seeds: byte 0 is the read size selector, then a stream of frames.
fn frame_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let all = messages();
    let find = |name: &str| &all.iter().find(|(n, _)| *n == name).unwrap().1;
    let stream = |cut: u8, names: &[&str]| {
        let mut out = vec![cut];
        for name in names {
            out.extend(frame_of(find(name)));
        }
        out
    };
    let mut truncated = stream(2, &["ping", "offer"]);
    truncated.truncate(truncated.len() - 9);
    let mut oversized = vec![0u8];
    oversized.extend_from_slice(&(32u32 * 1024 * 1024 + 1).to_be_bytes());
    oversized.extend_from_slice(&[0; 4]);
    vec![
        (
            "handshake",
            stream(0, &["hello", "hello-ack", "config", "config-ack"]),
        ),
        ("offer", stream(6, &["offer", "accept"])),
        (
            "transfer",
            stream(
                1,
                &["chunk", "ack", "nack", "file-end", "file-done", "done"],
            ),
        ),
        ("misc", stream(9, &["error", "ping", "pong"])),
        ("truncated", truncated),
        ("oversized", oversized),
    ]
}

fn message_seeds() -> Vec<(&'static str, Vec<u8>)> {
    messages()
        .into_iter()
        .map(|(name, msg)| (name, payload_of(&msg)))
        .collect()
}

/// Resume state files without their trailing CRC (the target appends it).
fn resume_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let mut durable = ResumeInfo::default();
    let mut set = ChunkSet::new();
    set.insert_range(0, 10);
    set.insert_range(12, 13);
    durable.have.insert(1, set);
    let mut written = durable.clone();
    written.have.get_mut(&1).unwrap().insert_range(13, 40);
    let mut other = ChunkSet::new();
    other.insert_range(3, 5);
    written.have.insert(4, other);
    written.complete.push(3);
    let mut body = StateBody::new(ID, [7; 32], 1 << 20, &durable, &written);
    body.boot_id = Some(PEER);
    let mut empty = StateBody::new(ID, [0; 32], 4096, &ResumeInfo::default(), &durable);
    empty.boot_id = None;
    let strip = |b: &StateBody| {
        let mut bytes = b.encode();
        bytes.truncate(bytes.len() - 4);
        bytes
    };
    vec![("resume", strip(&body)), ("durable-only", strip(&empty))]
}

fn beacon_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let beacon = |id, name: &str, port| {
        encode_datagram(&DiscoveryMessage::Beacon(Beacon::new(id, name, port))).unwrap()
    };
    let probe = encode_datagram(&DiscoveryMessage::Probe).unwrap();
    // A sequence for the peer table: [ctl][len u16 BE][datagram] records.
    let mut sequence = Vec::new();
    for (ctl, datagram) in [
        (0x00u8, beacon(PEER_DEVICE, "desk", 14567)),
        (0x11, beacon(DEVICE, "own beacon", 14567)),
        (0x22, probe.clone()),
        (0x33, beacon(PEER_DEVICE, "desk renamed", 15000)),
        (0xf0, b"not a beacon".to_vec()),
    ] {
        sequence.push(ctl);
        sequence.extend_from_slice(&(datagram.len() as u16).to_be_bytes());
        sequence.extend_from_slice(&datagram);
    }
    vec![
        ("beacon", beacon(PEER_DEVICE, "laptop", 14567)),
        (
            "beacon-code",
            encode_datagram(&DiscoveryMessage::Beacon(
                Beacon::new(PEER_DEVICE, "sender", 14567).with_nameplate(Some(7)),
            ))
            .unwrap(),
        ),
        ("probe", probe),
        ("table", sequence),
    ]
}

fn stun_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let id = TransactionId([
        0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86, 0xfa, 0x87, 0xdf, 0xae,
    ]);
    let v4: SocketAddr = "192.0.2.1:32853".parse().unwrap();
    let v6: SocketAddr = "[2001:db8:1234:5678:11:2233:4455:6677]:32853"
        .parse()
        .unwrap();
    let other: SocketAddr = "198.51.100.2:3479".parse().unwrap();
    let success = MessageBuilder::new(Class::SuccessResponse, METHOD_BINDING, id)
        .xor_mapped_address(v4)
        .address(attr::MAPPED_ADDRESS, v4)
        .address(attr::OTHER_ADDRESS, other)
        .address(attr::RESPONSE_ORIGIN, other)
        .software("coturn")
        .finish_with_fingerprint();
    let success_v6 = MessageBuilder::new(Class::SuccessResponse, METHOD_BINDING, id)
        .xor_mapped_address(v6)
        .finish();
    let legacy = MessageBuilder::new(Class::SuccessResponse, METHOD_BINDING, id)
        .address(attr::MAPPED_ADDRESS, v6)
        .finish();
    let error = MessageBuilder::new(Class::ErrorResponse, METHOD_BINDING, id)
        .error_code(420, "Unknown Attribute")
        .attribute(attr::UNKNOWN_ATTRIBUTES, &[0x00, 0x2f])
        .finish_with_fingerprint();
    vec![
        ("request", stun::binding_request(id)),
        ("success", success),
        ("success-v6", success_v6),
        ("legacy-mapped", legacy),
        ("error-420", error),
    ]
}

/// One input per decoder of the `swarm` target: the first byte picks it.
fn swarm_seeds() -> Vec<(&'static str, Vec<u8>)> {
    use p2p_core::swarm::content::{piece_hash, Manifest, MIN_CHUNK_SIZE};
    use p2p_core::swarm::wire::PeerMessage;
    use p2p_core::swarm::{ShareFile, Ticket};
    use p2p_core::wire::{Entry, EntryKind, Timestamp};
    let entry = |path: &str, kind| Entry {
        path: path.into(),
        kind,
        mode: 0o644,
        mtime: Timestamp {
            secs: 1_700_000_000,
            nanos: 5,
        },
    };
    let manifest = Manifest {
        name: "album".into(),
        chunk_size: MIN_CHUNK_SIZE,
        entries: vec![
            entry("album", EntryKind::Dir),
            entry(
                "album/a.bin",
                EntryKind::File {
                    size: u64::from(MIN_CHUNK_SIZE) + 3,
                },
            ),
            entry("album/empty", EntryKind::File { size: 0 }),
        ],
        pieces: vec![piece_hash(b"first"), piece_hash(b"abc")],
    };
    let ticket = Ticket {
        root: manifest.root(),
        tracker: Some("rdv.example.net:4000".into()),
        trusted: vec![],
    };
    let file = ShareFile {
        ticket: ticket.clone(),
        manifest: Some(manifest.clone()),
    };
    let tagged = |tag: u8, body: &[u8]| {
        let mut out = vec![tag];
        out.extend_from_slice(body);
        out
    };
    let messages = [
        PeerMessage::Hello {
            version: 1,
            manifest: true,
        },
        PeerMessage::GetManifest,
        PeerMessage::Bitfield {
            bits: bytes::Bytes::from_static(&[0xa0]),
        },
        PeerMessage::Have { piece: 300 },
        PeerMessage::Request { piece: 2 },
        PeerMessage::Piece {
            piece: 1,
            data: bytes::Bytes::from_static(b"abc"),
        },
        PeerMessage::Goodbye {
            reason: "bye".into(),
        },
    ];
    let names = [
        "hello",
        "get-manifest",
        "bitfield",
        "have",
        "request",
        "piece",
        "goodbye",
    ];
    let mut seeds: Vec<(&'static str, Vec<u8>)> = names
        .iter()
        .zip(messages.iter())
        .map(|(name, m)| (*name, tagged(0, &m.encode())))
        .collect();
    seeds.push(("share-file", tagged(1, &file.encode())));
    seeds.push(("ticket", tagged(2, ticket.to_string().as_bytes())));
    seeds.push(("manifest", tagged(3, &manifest.encode())));
    seeds
}
