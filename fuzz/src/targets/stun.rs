//! `stun`: a datagram on the NAT probe's UDP socket, through the STUN codec
//! (`nat::stun`): `Message::decode`, every attribute accessor, `decode_address` and
//! `parse_binding_response`.
//!
//! Checks:
//!
//! - `Message::decode` refuses anything shorter than the 20-byte header or longer than
//!   `MAX_MESSAGE_LEN`; what it accepts has a length field equal to the body, a multiple
//!   of 4, with attributes that tile the body exactly (value + padding) and borrow only
//!   bytes of the datagram; a FINGERPRINT it accepts is last and has the right CRC.
//! - Rebuilding the message with `MessageBuilder` (same class, method, transaction id
//!   and attributes; FINGERPRINT recomputed) gives a datagram of the same length that
//!   decodes to the same message.
//! - `attribute` returns the first occurrence; an address attribute that decodes
//!   re-encodes to the same value (`encode_address`); ERROR-CODE is 300..=699.
//! - `parse_binding_response` agrees with the accessors: another transaction id is
//!   `OtherTransaction`, a success response maps to XOR-MAPPED-ADDRESS or else
//!   MAPPED-ADDRESS, and only garbage, strays and forgeries are "ignorable".
//! - `decode_address` on the raw input (both plain and XOR-ed) never panics and
//!   round-trips; message type packing round-trips for every 14-bit type.

use p2p_core::nat::stun::{
    attr, decode_address, encode_address, message_type, parse_binding_response, split_message_type,
    BindingResponseError, Class, Message, MessageBuilder, StunParseError, TransactionId,
    FINGERPRINT_XOR, HEADER_LEN, MAGIC_COOKIE, MAX_MESSAGE_LEN, METHOD_BINDING,
};

const ADDRESS_TYPES: [u16; 6] = [
    attr::MAPPED_ADDRESS,
    attr::XOR_MAPPED_ADDRESS,
    attr::OTHER_ADDRESS,
    attr::RESPONSE_ORIGIN,
    attr::ALTERNATE_SERVER,
    attr::CHANGED_ADDRESS,
];

/// `attr::KNOWN_REQUIRED` is crate-private: the same list, from the public constants.
const KNOWN_REQUIRED: [u16; 17] = [
    attr::MAPPED_ADDRESS,
    attr::RESPONSE_ADDRESS,
    attr::CHANGE_REQUEST,
    attr::SOURCE_ADDRESS,
    attr::CHANGED_ADDRESS,
    attr::USERNAME,
    attr::MESSAGE_INTEGRITY,
    attr::ERROR_CODE,
    attr::UNKNOWN_ATTRIBUTES,
    attr::REALM,
    attr::NONCE,
    attr::MESSAGE_INTEGRITY_SHA256,
    attr::PASSWORD_ALGORITHM,
    attr::USERHASH,
    attr::XOR_MAPPED_ADDRESS,
    attr::PADDING,
    attr::RESPONSE_PORT,
];

pub fn run(data: &[u8]) {
    check_address_decoder(data);
    if let [a, b, ..] = data {
        let typ = u16::from_be_bytes([*a, *b]) & 0x3FFF;
        let (class, method) = split_message_type(typ);
        assert_eq!(message_type(class, method), typ, "message type packing");
    }

    let id = match data.get(8..HEADER_LEN) {
        Some(id) => TransactionId(id.try_into().unwrap()),
        None => TransactionId([0; 12]),
    };
    let decoded = Message::decode(data);
    let response = parse_binding_response(data, id);
    let mut other = id;
    other.0[0] ^= 1;
    let stray = parse_binding_response(data, other);

    let message = match decoded {
        Ok(message) => message,
        Err(e) => {
            check_refusal(data, &e);
            assert_eq!(response, Err(BindingResponseError::Malformed(e.clone())));
            assert_eq!(stray, Err(BindingResponseError::Malformed(e)));
            return;
        }
    };
    assert_eq!(
        stray,
        Err(BindingResponseError::OtherTransaction(id)),
        "a response to another transaction was not set aside"
    );
    check_framing(data, &message);
    check_rebuild(&message);
    check_accessors(&message);
    check_binding_response(&message, &response);
    if let Err(e) = &response {
        let _ = e.to_string();
        let ignorable = e.is_ignorable();
        assert_eq!(
            ignorable,
            matches!(
                e,
                BindingResponseError::Malformed(_)
                    | BindingResponseError::OtherTransaction(_)
                    | BindingResponseError::NotBindingResponse
            )
        );
    }
}

fn check_refusal(data: &[u8], e: &StunParseError) {
    let _ = e.to_string();
    match e {
        StunParseError::TooShort(n) => assert!(*n == data.len() && *n < HEADER_LEN),
        StunParseError::TooLong(n) => assert!(*n == data.len() && *n > MAX_MESSAGE_LEN),
        _ => assert!((HEADER_LEN..=MAX_MESSAGE_LEN).contains(&data.len())),
    }
}

/// The header and the attribute TLVs tile the datagram exactly.
fn check_framing(data: &[u8], message: &Message) {
    assert!((HEADER_LEN..=MAX_MESSAGE_LEN).contains(&data.len()));
    assert_eq!(data[0] & 0xC0, 0);
    let declared = usize::from(u16::from_be_bytes([data[2], data[3]]));
    assert_eq!(declared, data.len() - HEADER_LEN);
    assert_eq!(declared % 4, 0);
    assert_eq!(
        u32::from_be_bytes([data[4], data[5], data[6], data[7]]),
        MAGIC_COOKIE
    );
    assert_eq!(message.transaction_id.0, data[8..HEADER_LEN]);
    let (class, method) = split_message_type(u16::from_be_bytes([data[0], data[1]]));
    assert_eq!((message.class, message.method), (class, method));

    let range = data.as_ptr_range();
    let mut at = HEADER_LEN;
    let attributes = message.attributes();
    for (i, a) in attributes.iter().enumerate() {
        assert_eq!(u16::from_be_bytes([data[at], data[at + 1]]), a.typ);
        let len = usize::from(u16::from_be_bytes([data[at + 2], data[at + 3]]));
        assert_eq!(len, a.value.len());
        let value = a.value.as_ptr_range();
        assert!(range.start <= value.start && value.end <= range.end);
        assert_eq!(
            value.start,
            data[at + 4..].as_ptr(),
            "value borrowed elsewhere"
        );
        if a.typ == attr::FINGERPRINT {
            assert_eq!(
                i,
                attributes.len() - 1,
                "FINGERPRINT accepted before the end"
            );
            assert_eq!(len, 4);
            let crc = crc32fast::hash(&data[..at]) ^ FINGERPRINT_XOR;
            assert_eq!(a.value, crc.to_be_bytes(), "wrong FINGERPRINT accepted");
        }
        at += 4 + len.div_ceil(4) * 4;
    }
    assert_eq!(at, data.len(), "attributes do not tile the body");
}

/// The builder reproduces what the decoder accepted.
fn check_rebuild(message: &Message) {
    let mut builder = MessageBuilder::new(message.class, message.method, message.transaction_id);
    let mut fingerprint = false;
    for a in message.attributes() {
        if a.typ == attr::FINGERPRINT {
            fingerprint = true;
        } else {
            builder = builder.attribute(a.typ, a.value);
        }
    }
    let bytes = if fingerprint {
        builder.finish_with_fingerprint()
    } else {
        builder.finish()
    };
    let back = Message::decode(&bytes).expect("a rebuilt message must decode");
    assert_eq!(
        (back.class, back.method, back.transaction_id),
        (message.class, message.method, message.transaction_id)
    );
    assert_eq!(back.attributes(), message.attributes());
}

fn check_accessors(message: &Message) {
    // (The first 32 are enough: `attribute` is a linear scan, all of them would be
    // quadratic in the number of attributes.)
    for a in message.attributes().iter().take(32) {
        let first = message.attribute(a.typ).expect("a present attribute");
        let expected = message
            .attributes()
            .iter()
            .find(|b| b.typ == a.typ)
            .unwrap();
        assert_eq!(
            first.as_ptr(),
            expected.value.as_ptr(),
            "not the first occurrence"
        );
    }
    let first_unknown = message
        .attributes()
        .iter()
        .find(|a| a.typ < 0x8000 && !KNOWN_REQUIRED.contains(&a.typ))
        .map(|a| a.typ);
    assert_eq!(message.unknown_required_attribute(), first_unknown);
    for typ in ADDRESS_TYPES {
        match message.address(typ) {
            Ok(Some(addr)) => {
                let value = message.attribute(typ).unwrap();
                let xor = typ == attr::XOR_MAPPED_ADDRESS;
                let again = encode_address(addr, xor.then_some(&message.transaction_id));
                // Byte 0 is reserved and ignored on decode; the rest must match.
                assert_eq!(again[1..], value[1..], "address does not round-trip");
            }
            Ok(None) => assert!(message.attribute(typ).is_none()),
            Err(e) => assert!(matches!(e, StunParseError::BadAddress { typ: t, .. } if t == typ)),
        }
    }
    match message.error_code() {
        Ok(Some((code, reason))) => {
            assert!((300..=699).contains(&code), "error code {code}");
            let _ = reason;
        }
        Ok(None) => assert!(message.attribute(attr::ERROR_CODE).is_none()),
        Err(e) => assert_eq!(e, StunParseError::BadErrorCode),
    }
    if let Some(software) = message.software() {
        assert_eq!(Some(software.as_bytes()), message.attribute(attr::SOFTWARE));
    }
}

fn check_binding_response(
    message: &Message,
    response: &Result<p2p_core::nat::stun::BindingResponse, BindingResponseError>,
) {
    let is_binding_response = message.method == METHOD_BINDING
        && matches!(message.class, Class::SuccessResponse | Class::ErrorResponse);
    if !is_binding_response {
        assert_eq!(response, &Err(BindingResponseError::NotBindingResponse));
        return;
    }
    if message.class == Class::ErrorResponse {
        match response {
            Err(BindingResponseError::ErrorResponse { code, .. }) => {
                assert!((300..=699).contains(code), "error code {code}")
            }
            other => panic!("error response parsed as {other:?}"),
        }
        return;
    }
    if let Some(typ) = message.unknown_required_attribute() {
        assert_eq!(
            response,
            &Err(BindingResponseError::UnknownRequiredAttribute(typ))
        );
        return;
    }
    let xor = message.address(attr::XOR_MAPPED_ADDRESS).ok().flatten();
    let plain = message.address(attr::MAPPED_ADDRESS).ok().flatten();
    match (xor, plain) {
        (None, None) => assert_eq!(response, &Err(BindingResponseError::NoMappedAddress)),
        (xor, plain) => {
            let r = response
                .as_ref()
                .expect("a usable mapped address was refused");
            match xor {
                Some(addr) => assert_eq!((r.mapped, r.xor_mapped), (addr, true)),
                None => assert_eq!((r.mapped, r.xor_mapped), (plain.unwrap(), false)),
            }
            assert_eq!(
                r.other_address,
                message.address(attr::OTHER_ADDRESS).ok().flatten()
            );
            assert_eq!(
                r.response_origin,
                message.address(attr::RESPONSE_ORIGIN).ok().flatten()
            );
            assert_eq!(r.software.as_deref(), message.software());
        }
    }
}

/// `decode_address` straight on the input, plain and XOR-ed with an id from the input.
fn check_address_decoder(data: &[u8]) {
    let mut id = [0u8; 12];
    for (i, b) in data.iter().rev().take(12).enumerate() {
        id[i] = *b;
    }
    let id = TransactionId(id);
    for xor in [None, Some(&id)] {
        if let Ok(addr) = decode_address(attr::MAPPED_ADDRESS, data, xor) {
            assert!(data.len() == 8 || data.len() == 20);
            let again = encode_address(addr, xor);
            assert_eq!(again[1..], data[1..], "address does not round-trip");
        }
    }
}
