//! `beacon`: datagrams on the LAN discovery port, through `decode_datagram` and the
//! browser's `PeerTable::handle_datagram`.
//!
//! The whole input is first decoded as one datagram; then it is read as a sequence of
//! records `[ctl: u8][len: u16 BE][len bytes of datagram]` fed to one `PeerTable`, where
//! `ctl` picks the source address and how much time passes. Checks:
//!
//! - `decode_datagram` refuses anything over `MAX_DATAGRAM_LEN` (512) bytes; a beacon it
//!   accepts has a name of 1 to `MAX_NAME_LEN` (64) bytes without control characters and
//!   a non-zero port, re-encodes within 512 bytes and round-trips.
//! - `Beacon::new` cleans any name into a beacon that a browser accepts.
//! - The table's answer agrees with `decode_datagram` (malformed, probe, own beacon, new
//!   or refreshed peer, exactly as a model of the table predicts); a peer it records has the beacon's id, name and port at the
//!   datagram's source IP; the live peers never include our own id, never exceed
//!   `MAX_PEERS`, are unique, sorted by name then id, and all seen within the TTL.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use p2p_core::discovery::{
    decode_datagram, encode_datagram, Beacon, BeaconError, DiscoveryMessage, Observation,
    PeerTable, MAX_DATAGRAM_LEN, MAX_NAME_LEN, MAX_PEERS,
};
use p2p_core::net::DeviceId;
use tokio::time::Instant;

const OWN_ID: DeviceId = DeviceId([
    0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef, 0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd,
]);
const TTL: Duration = Duration::from_secs(10);

pub fn run(data: &[u8]) {
    check_datagram(data);
    check_new(data);
    feed_table(data);
}

/// Decodes one datagram and checks what came out.
fn check_datagram(bytes: &[u8]) -> Option<DiscoveryMessage> {
    let decoded = decode_datagram(bytes);
    if bytes.len() > MAX_DATAGRAM_LEN {
        assert!(
            matches!(decoded, Err(BeaconError::Oversized(n)) if n == bytes.len()),
            "{}-byte datagram not refused as oversized: {decoded:?}",
            bytes.len()
        );
        return None;
    }
    let message = match decoded {
        Ok(message) => message,
        Err(e) => {
            let _ = e.to_string();
            return None;
        }
    };
    if let DiscoveryMessage::Beacon(beacon) = &message {
        check_beacon(beacon);
    }
    let encoded = encode_datagram(&message).expect("an accepted message must re-encode");
    assert!(encoded.len() <= bytes.len() && encoded.len() <= MAX_DATAGRAM_LEN);
    assert_eq!(
        decode_datagram(&encoded).expect("a re-encoded message must decode"),
        message,
        "round trip changed the message"
    );
    Some(message)
}

fn check_beacon(beacon: &Beacon) {
    assert!(
        !beacon.name.is_empty() && beacon.name.len() <= MAX_NAME_LEN,
        "name of {} bytes accepted",
        beacon.name.len()
    );
    assert!(
        !beacon.name.chars().any(char::is_control),
        "control character accepted in {:?}",
        beacon.name
    );
    assert_ne!(beacon.listen_port, 0, "port 0 accepted");
}

/// Whatever name a user types, the beacon we announce is one a browser accepts.
fn check_new(data: &[u8]) {
    let name = String::from_utf8_lossy(data);
    let port = match data {
        [a, b, ..] => u16::from_be_bytes([*a, *b]).max(1),
        _ => 14567,
    };
    let beacon = Beacon::new(OWN_ID, &name, port);
    check_beacon(&beacon);
    let message = DiscoveryMessage::Beacon(beacon);
    let datagram = encode_datagram(&message).expect("Beacon::new made an unencodable beacon");
    assert_eq!(
        decode_datagram(&datagram).expect("Beacon::new made a beacon browsers refuse"),
        message
    );
}

fn feed_table(data: &[u8]) {
    let start = Instant::now();
    let mut now = start;
    let mut table = PeerTable::new(Some(OWN_ID), TTL);
    // What the table should hold: (id, port) -> last seen, expired ones included until
    // pruned.
    let mut model: HashMap<(DeviceId, u16), Instant> = HashMap::new();
    let mut rest = data;
    while let [ctl, hi, lo, tail @ ..] = rest {
        let len = usize::from(u16::from_be_bytes([*hi, *lo])).min(tail.len());
        let (datagram, tail) = tail.split_at(len);
        rest = tail;

        // Time passes in steps of 0 to 15 half-seconds, so peers expire (TTL 10 s).
        now += Duration::from_millis(u64::from(ctl >> 4) * 500);
        let ip = match ctl & 0x3 {
            0 => IpAddr::V4(Ipv4Addr::new(192, 168, 1, ctl & 0x0c)),
            1 => IpAddr::V4(Ipv4Addr::LOCALHOST),
            2 => IpAddr::V6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, u16::from(*ctl))),
            _ => IpAddr::V6(Ipv6Addr::LOCALHOST),
        };
        let from = SocketAddr::new(ip, 40_000 + u16::from(*ctl));

        let observation = table.handle_datagram(from, datagram, now);
        let decoded = check_datagram(datagram);
        let live = table.peers(now);
        let fresh = |seen: &Instant| now.saturating_duration_since(*seen) < TTL;
        match (&observation, decoded) {
            (Observation::Malformed(why), None) => assert!(!why.is_empty()),
            (Observation::Probe, Some(DiscoveryMessage::Probe)) => {}
            (Observation::Own, Some(DiscoveryMessage::Beacon(b))) => {
                assert_eq!(b.device_id, OWN_ID)
            }
            (Observation::TableFull, Some(DiscoveryMessage::Beacon(b))) => {
                assert!(!model.contains_key(&(b.device_id, b.listen_port)));
                model.retain(|_, seen| fresh(seen));
                assert_eq!(model.len(), MAX_PEERS, "table full below MAX_PEERS");
            }
            (
                Observation::NewPeer(id) | Observation::Refreshed(id),
                Some(DiscoveryMessage::Beacon(b)),
            ) => {
                assert_eq!(*id, b.device_id);
                assert_ne!(*id, OWN_ID, "our own beacon entered the table");
                // A peer still held (even past its TTL, until pruned) is refreshed; a new
                // one is added after the expired ones are pruned.
                let key = (*id, b.listen_port);
                if model.contains_key(&key) {
                    assert!(matches!(observation, Observation::Refreshed(_)));
                } else {
                    assert!(matches!(observation, Observation::NewPeer(_)));
                    model.retain(|_, seen| fresh(seen));
                    assert!(model.len() < MAX_PEERS);
                }
                model.insert(key, now);
                let peer = live
                    .iter()
                    .find(|p| (p.device_id, p.addr.port()) == key)
                    .expect("a recorded peer is live");
                assert_eq!(peer.name, b.name);
                assert_eq!(peer.addr, SocketAddr::new(from.ip(), b.listen_port));
                assert_eq!(peer.protocol_version, b.protocol_version);
                assert_eq!(peer.last_seen, now);
            }
            (observation, decoded) => {
                panic!("table says {observation:?} for a datagram that decodes as {decoded:?}")
            }
        }
        let expected: HashSet<(DeviceId, u16)> = model
            .iter()
            .filter(|(_, seen)| fresh(seen))
            .map(|(key, _)| *key)
            .collect();
        let listed: HashSet<(DeviceId, u16)> =
            live.iter().map(|p| (p.device_id, p.addr.port())).collect();
        assert_eq!(listed, expected, "live peers differ from the model");

        assert!(live.len() <= MAX_PEERS);
        let mut ids = HashSet::new();
        for peer in &live {
            assert!(
                ids.insert((peer.device_id, peer.addr.port())),
                "peer listed twice"
            );
            assert_ne!(peer.device_id, OWN_ID);
            assert!(now.saturating_duration_since(peer.last_seen) < TTL);
            assert!(!peer.name.is_empty() && peer.name.len() <= MAX_NAME_LEN);
            assert!(!peer.name.chars().any(char::is_control));
            assert_ne!(peer.addr.port(), 0);
            let _ = peer.to_string();
            let _ = peer.is_compatible();
            assert!(peer.matches(&peer.short_id()));
            assert!(peer.matches(&peer.device_id.to_string()));
            let _ = peer.matches(&peer.name);
        }
        for pair in live.windows(2) {
            let key =
                |p: &p2p_core::discovery::PeerInfo| (p.name.clone(), p.device_id, p.addr.port());
            assert!(key(&pair[0]) < key(&pair[1]), "peers not sorted");
        }
        table.handle_timeout(now);
        model.retain(|_, seen| now.saturating_duration_since(*seen) < TTL);
    }
}
