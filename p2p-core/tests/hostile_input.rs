//! Property tests over the two parsers that read datagrams from strangers: the STUN
//! codec and the discovery beacon decoder. Each property runs 100,000 generated inputs
//! by default (`PROPTEST_CASES` overrides): random bytes, well-framed messages with
//! random attributes, and valid messages with random corruption. None may panic, and
//! what is accepted must be consistent with what was built.

use std::net::SocketAddr;

use p2p_core::discovery::{
    decode_datagram, encode_datagram, Beacon, DiscoveryMessage, PeerTable, DATAGRAM_MAGIC,
    MAX_PEERS,
};
use p2p_core::nat::stun::{
    self, parse_binding_response, Class, Message, MessageBuilder, TransactionId, MAGIC_COOKIE,
    METHOD_BINDING,
};
use proptest::prelude::*;

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000)
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: cases(),
        ..ProptestConfig::default()
    }
}

fn class() -> impl Strategy<Value = Class> {
    prop_oneof![
        Just(Class::Request),
        Just(Class::Indication),
        Just(Class::SuccessResponse),
        Just(Class::ErrorResponse),
    ]
}

/// Attribute types biased towards the ones the parser interprets.
fn attribute_type() -> impl Strategy<Value = u16> {
    prop_oneof![
        Just(stun::attr::XOR_MAPPED_ADDRESS),
        Just(stun::attr::MAPPED_ADDRESS),
        Just(stun::attr::OTHER_ADDRESS),
        Just(stun::attr::RESPONSE_ORIGIN),
        Just(stun::attr::ERROR_CODE),
        Just(stun::attr::SOFTWARE),
        Just(stun::attr::FINGERPRINT),
        any::<u16>(),
    ]
}

/// Attribute values biased towards address-shaped ones (family byte, 8 or 20 bytes).
fn attribute_value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..40),
        (0u8..4, any::<[u8; 6]>()).prop_map(|(family, rest)| {
            let mut v = vec![0, family];
            v.extend_from_slice(&rest);
            v
        }),
        (0u8..4, any::<[u8; 18]>()).prop_map(|(family, rest)| {
            let mut v = vec![0, family];
            v.extend_from_slice(&rest);
            v
        }),
    ]
}

fn attributes() -> impl Strategy<Value = Vec<(u16, Vec<u8>)>> {
    proptest::collection::vec((attribute_type(), attribute_value()), 0..8)
}

/// Edits applied to a valid datagram.
#[derive(Debug, Clone)]
enum Corruption {
    Flip(usize, u8),
    Truncate(usize),
    Append(Vec<u8>),
    SetU16(usize, u16),
}

fn corruptions() -> impl Strategy<Value = Vec<Corruption>> {
    proptest::collection::vec(
        prop_oneof![
            (any::<usize>(), 1u8..=255).prop_map(|(i, x)| Corruption::Flip(i, x)),
            any::<usize>().prop_map(Corruption::Truncate),
            proptest::collection::vec(any::<u8>(), 1..16).prop_map(Corruption::Append),
            (any::<usize>(), any::<u16>()).prop_map(|(i, v)| Corruption::SetU16(i, v)),
        ],
        1..4,
    )
}

fn corrupt(mut bytes: Vec<u8>, edits: &[Corruption]) -> Vec<u8> {
    for edit in edits {
        match edit {
            Corruption::Flip(i, x) if !bytes.is_empty() => {
                let i = i % bytes.len();
                bytes[i] ^= x;
            }
            Corruption::Truncate(n) if !bytes.is_empty() => bytes.truncate(n % bytes.len()),
            Corruption::Append(extra) => bytes.extend_from_slice(extra),
            Corruption::SetU16(i, v) if bytes.len() >= 2 => {
                let i = i % (bytes.len() - 1);
                bytes[i..i + 2].copy_from_slice(&v.to_be_bytes());
            }
            _ => {}
        }
    }
    bytes
}

fn build(
    class: Class,
    method: u16,
    id: [u8; 12],
    attrs: &[(u16, Vec<u8>)],
    fingerprint: bool,
) -> Vec<u8> {
    let mut builder = MessageBuilder::new(class, method, TransactionId(id));
    for (typ, value) in attrs {
        builder = builder.attribute(*typ, value);
    }
    if fingerprint {
        builder.finish_with_fingerprint()
    } else {
        builder.finish()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn stun_random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600),
                                     id in any::<[u8; 12]>()) {
        let _ = Message::decode(&bytes);
        let _ = parse_binding_response(&bytes, TransactionId(id));
    }

    #[test]
    fn stun_well_framed_random_bodies_never_panic(class in class(),
                                                  id in any::<[u8; 12]>(),
                                                  words in proptest::collection::vec(any::<[u8; 4]>(), 0..40)) {
        // A correct header over a random body reaches the attribute parser every time.
        let body: Vec<u8> = words.concat();
        let mut bytes = Vec::with_capacity(20 + body.len());
        bytes.extend_from_slice(&stun::message_type(class, METHOD_BINDING).to_be_bytes());
        bytes.extend_from_slice(&(body.len() as u16).to_be_bytes());
        bytes.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
        bytes.extend_from_slice(&id);
        bytes.extend_from_slice(&body);
        if let Ok(message) = Message::decode(&bytes) {
            for attribute in message.attributes() {
                let _ = stun::decode_address(attribute.typ, attribute.value, Some(&message.transaction_id));
            }
            let _ = message.error_code();
        }
        let _ = parse_binding_response(&bytes, TransactionId(id));
    }

    #[test]
    fn stun_built_messages_decode_to_what_was_built(class in class(),
                                                    method in 0u16..0x1000,
                                                    id in any::<[u8; 12]>(),
                                                    attrs in attributes(),
                                                    fingerprint in any::<bool>()) {
        // FINGERPRINT must be last: leave explicit ones out of the list.
        let attrs: Vec<_> = attrs
            .into_iter()
            .filter(|(t, _)| *t != stun::attr::FINGERPRINT)
            .collect();
        let bytes = build(class, method, id, &attrs, fingerprint);
        let message = Message::decode(&bytes).expect("a built message decodes");
        prop_assert_eq!(message.class, class);
        prop_assert_eq!(message.method, method);
        prop_assert_eq!(message.transaction_id, TransactionId(id));
        let decoded: Vec<(u16, Vec<u8>)> = message
            .attributes()
            .iter()
            .filter(|a| a.typ != stun::attr::FINGERPRINT)
            .map(|a| (a.typ, a.value.to_vec()))
            .collect();
        prop_assert_eq!(decoded, attrs);
        // And a different transaction id is never accepted as ours.
        let mut other = id;
        other[0] ^= 1;
        let foreign = parse_binding_response(&bytes, TransactionId(other));
        let is_foreign = matches!(foreign, Err(stun::BindingResponseError::OtherTransaction(_)));
        prop_assert!(is_foreign);
    }

    #[test]
    fn stun_corrupted_responses_never_panic(id in any::<[u8; 12]>(),
                                            attrs in attributes(),
                                            fingerprint in any::<bool>(),
                                            edits in corruptions()) {
        let attrs: Vec<_> = attrs
            .into_iter()
            .filter(|(t, _)| *t != stun::attr::FINGERPRINT)
            .collect();
        let bytes = corrupt(build(Class::SuccessResponse, METHOD_BINDING, id, &attrs, fingerprint), &edits);
        let _ = parse_binding_response(&bytes, TransactionId(id));
    }

    #[test]
    fn stun_addresses_round_trip(ip in any::<[u8; 16]>(), v4 in any::<bool>(), port in any::<u16>(),
                                 id in any::<[u8; 12]>()) {
        let addr: SocketAddr = if v4 {
            SocketAddr::from(([ip[0], ip[1], ip[2], ip[3]], port))
        } else {
            SocketAddr::from((ip, port))
        };
        let bytes = MessageBuilder::new(Class::SuccessResponse, METHOD_BINDING, TransactionId(id))
            .xor_mapped_address(addr)
            .finish_with_fingerprint();
        let response = parse_binding_response(&bytes, TransactionId(id)).expect("valid response");
        prop_assert_eq!(response.mapped, addr);
    }

    #[test]
    fn beacon_random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..700),
                                       with_magic in any::<bool>()) {
        let bytes = if with_magic {
            let mut b = DATAGRAM_MAGIC.to_vec();
            b.extend_from_slice(&bytes);
            b
        } else {
            bytes
        };
        let _ = decode_datagram(&bytes);
    }

    #[test]
    fn beacons_round_trip_and_survive_corruption(id in any::<u128>(),
                                                 name in "\\PC{1,40}",
                                                 port in 1u16..,
                                                 edits in corruptions()) {
        let beacon = Beacon::new(p2p_core::net::DeviceId(id.to_be_bytes()[..15].try_into().unwrap()), &name, port);
        let message = DiscoveryMessage::Beacon(beacon);
        let bytes = encode_datagram(&message).expect("a beacon fits");
        prop_assert_eq!(decode_datagram(&bytes).expect("decodes"), message);
        if let Ok(DiscoveryMessage::Beacon(b)) = decode_datagram(&corrupt(bytes, &edits)) {
            // Whatever survives corruption is still a beacon we would accept.
            prop_assert!(!b.name.is_empty() && b.name.len() <= 64 && b.listen_port != 0);
            prop_assert!(!b.name.chars().any(char::is_control));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases() / 10, ..ProptestConfig::default() })]

    #[test]
    fn the_peer_table_survives_any_datagram_stream(
        datagrams in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..80), 1..20),
        from in any::<[u8; 4]>(),
    ) {
        let mut table = PeerTable::new(None, std::time::Duration::from_secs(10));
        let now = tokio::time::Instant::now();
        for mut datagram in datagrams {
            let mut bytes = DATAGRAM_MAGIC.to_vec();
            bytes.append(&mut datagram);
            let _ = table.handle_datagram(SocketAddr::from((from, 14566)), &bytes, now);
        }
        prop_assert!(table.peers(now).len() <= MAX_PEERS);
    }
}
