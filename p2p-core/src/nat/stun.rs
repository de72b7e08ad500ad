//! The STUN message codec (RFC 8489, which obsoletes RFC 5389): the 20-byte header, the
//! attribute TLVs, the (XOR-)MAPPED-ADDRESS encodings and FINGERPRINT.
//!
//! This module turns bytes into checked values and back; it never touches a socket or a
//! clock. Retransmission, server fallback and the mapping test live in
//! [`client`](super::client); what the results mean for a user lives in [`nat`](super).
//! Everything here treats its input as hostile: every length is checked against the bytes
//! that are really there before it is used, and no input can make it panic or allocate
//! more than the datagram it was given.
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |0 0|     STUN message type     |      message length (body)     |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                    magic cookie 0x2112A442                    |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                transaction id (96 bits, random)              |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! | attributes: type (16) | length (16) | value, padded to 4 bytes |
//! ```

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The fixed value in bytes 4..8 of every RFC 5389/8489 message.
pub const MAGIC_COOKIE: u32 = 0x2112_A442;
/// Length of the message header.
pub const HEADER_LEN: usize = 20;
/// Largest message this codec builds or accepts. STUN over UDP has to fit one datagram;
/// anything longer than a jumbo frame is not a message we asked for.
pub const MAX_MESSAGE_LEN: usize = 9000;
/// The FINGERPRINT CRC-32 is XOR-ed with this ("STUN" in ASCII) so that it differs from
/// the CRC of protocols multiplexed on the same port.
pub const FINGERPRINT_XOR: u32 = 0x5354_554E;

/// The Binding method, the only one this codec interprets.
pub const METHOD_BINDING: u16 = 0x001;
/// TURN (RFC 8656 §17): create an allocation.
pub const METHOD_ALLOCATE: u16 = 0x003;
/// TURN: refresh (or, with LIFETIME 0, delete) an allocation.
pub const METHOD_REFRESH: u16 = 0x004;
/// TURN: Send indication (client to server, data for a peer).
pub const METHOD_SEND: u16 = 0x006;
/// TURN: Data indication (server to client, data from a peer).
pub const METHOD_DATA: u16 = 0x007;
/// TURN: install or refresh permissions.
pub const METHOD_CREATE_PERMISSION: u16 = 0x008;
/// TURN: bind a channel number to a peer address.
pub const METHOD_CHANNEL_BIND: u16 = 0x009;
/// Length of the MESSAGE-INTEGRITY value (HMAC-SHA1).
pub const MESSAGE_INTEGRITY_LEN: usize = 20;

/// Attribute types this crate knows (RFC 8489 §18.3, RFC 5780 §7).
pub mod attr {
    /// The reflexive address in plain form (RFC 3489 heritage; fallback only).
    pub const MAPPED_ADDRESS: u16 = 0x0001;
    /// Deprecated RFC 3489 attribute; known so that old servers are not rejected.
    pub const RESPONSE_ADDRESS: u16 = 0x0002;
    /// RFC 5780: ask the server to answer from another IP and/or port.
    pub const CHANGE_REQUEST: u16 = 0x0003;
    /// Deprecated RFC 3489 attribute; known so that old servers are not rejected.
    pub const SOURCE_ADDRESS: u16 = 0x0004;
    /// Deprecated RFC 3489 attribute; known so that old servers are not rejected.
    pub const CHANGED_ADDRESS: u16 = 0x0005;
    /// Credentials: the user name.
    pub const USERNAME: u16 = 0x0006;
    /// HMAC-SHA1 over the message.
    pub const MESSAGE_INTEGRITY: u16 = 0x0008;
    /// Class, number and reason phrase of an error response.
    pub const ERROR_CODE: u16 = 0x0009;
    /// Attributes the server did not understand.
    pub const UNKNOWN_ATTRIBUTES: u16 = 0x000A;
    /// Long-term credentials: realm.
    pub const REALM: u16 = 0x0014;
    /// Long-term credentials: nonce.
    pub const NONCE: u16 = 0x0015;
    /// HMAC-SHA256 over the message.
    pub const MESSAGE_INTEGRITY_SHA256: u16 = 0x001C;
    /// Long-term credentials: the password algorithm.
    pub const PASSWORD_ALGORITHM: u16 = 0x001D;
    /// Long-term credentials: hashed user name.
    pub const USERHASH: u16 = 0x001E;
    /// The reflexive address, XOR-ed with the cookie (and the transaction id for IPv6).
    pub const XOR_MAPPED_ADDRESS: u16 = 0x0020;
    /// RFC 5780: padding for MTU discovery.
    pub const PADDING: u16 = 0x0026;
    /// RFC 5780: answer to another port.
    pub const RESPONSE_PORT: u16 = 0x0027;
    /// Long-term credentials: algorithms the server offers.
    pub const PASSWORD_ALGORITHMS: u16 = 0x8002;
    /// Long-term credentials: the algorithm in use.
    pub const ALTERNATE_DOMAIN: u16 = 0x8003;
    /// Free-text name of the agent.
    pub const SOFTWARE: u16 = 0x8022;
    /// Redirect to another server (with error 300).
    pub const ALTERNATE_SERVER: u16 = 0x8023;
    /// CRC-32 of the message, XOR-ed with [`super::FINGERPRINT_XOR`]; always last.
    pub const FINGERPRINT: u16 = 0x8028;
    /// RFC 5780: the address the response was sent from.
    pub const RESPONSE_ORIGIN: u16 = 0x802B;
    /// RFC 5780: the server's alternate address (other IP and other port).
    pub const OTHER_ADDRESS: u16 = 0x802C;

    /// TURN (RFC 8656 §18): the channel number of a ChannelBind.
    pub const CHANNEL_NUMBER: u16 = 0x000C;
    /// TURN: allocation lifetime in seconds.
    pub const LIFETIME: u16 = 0x000D;
    /// TURN: a peer's address, XOR-ed like XOR-MAPPED-ADDRESS.
    pub const XOR_PEER_ADDRESS: u16 = 0x0012;
    /// TURN: the payload of a Send or Data indication.
    pub const DATA: u16 = 0x0013;
    /// TURN: the relayed transport address, XOR-ed like XOR-MAPPED-ADDRESS.
    pub const XOR_RELAYED_ADDRESS: u16 = 0x0016;
    /// TURN: the address family of the relayed address asked for.
    pub const REQUESTED_ADDRESS_FAMILY: u16 = 0x0017;
    /// TURN: ask for an even relayed port.
    pub const EVEN_PORT: u16 = 0x0018;
    /// TURN: the relayed transport protocol (17 = UDP).
    pub const REQUESTED_TRANSPORT: u16 = 0x0019;
    /// TURN: set DF on relayed datagrams.
    pub const DONT_FRAGMENT: u16 = 0x001A;
    /// TURN: token of a reserved relayed port.
    pub const RESERVATION_TOKEN: u16 = 0x0022;
    /// TURN (RFC 8656): a second address family for dual allocations.
    pub const ADDITIONAL_ADDRESS_FAMILY: u16 = 0x8000;
    /// TURN (RFC 8656): why one family of a dual allocation failed.
    pub const ADDRESS_ERROR_CODE: u16 = 0x8001;
    /// TURN (RFC 8656): an ICMP packet relayed from a peer.
    pub const ICMP: u16 = 0x8004;

    /// Comprehension-required attributes (type below 0x8000) a TURN response may carry
    /// without a TURN client failing the transaction: the STUN ones plus RFC 8656's.
    pub const TURN_KNOWN_REQUIRED: &[u16] = &[
        CHANNEL_NUMBER,
        LIFETIME,
        XOR_PEER_ADDRESS,
        DATA,
        XOR_RELAYED_ADDRESS,
        REQUESTED_ADDRESS_FAMILY,
        EVEN_PORT,
        REQUESTED_TRANSPORT,
        DONT_FRAGMENT,
        RESERVATION_TOKEN,
    ];

    /// Comprehension-required attributes (type below 0x8000) a response may carry
    /// without this client having to act on them.
    pub(crate) const KNOWN_REQUIRED: &[u16] = &[
        MAPPED_ADDRESS,
        RESPONSE_ADDRESS,
        CHANGE_REQUEST,
        SOURCE_ADDRESS,
        CHANGED_ADDRESS,
        USERNAME,
        MESSAGE_INTEGRITY,
        ERROR_CODE,
        UNKNOWN_ATTRIBUTES,
        REALM,
        NONCE,
        MESSAGE_INTEGRITY_SHA256,
        PASSWORD_ALGORITHM,
        USERHASH,
        XOR_MAPPED_ADDRESS,
        PADDING,
        RESPONSE_PORT,
    ];
}

/// Why bytes are not an acceptable STUN message. The peer (or something on the path)
/// sent garbage: none of these is a local fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StunParseError {
    /// Fewer than the 20 bytes of a header.
    #[error("{0} bytes is too short for a STUN message (the header alone is 20)")]
    TooShort(usize),
    /// Longer than any message we accept.
    #[error("{0} bytes is too long for a STUN message (limit {MAX_MESSAGE_LEN})")]
    TooLong(usize),
    /// The two leading bits are not zero: another protocol on the same port.
    #[error("not a STUN message (the two leading bits are not zero)")]
    NotStun,
    /// The magic cookie is missing: an RFC 3489 server, or not STUN at all.
    #[error("wrong magic cookie {0:#010x} (an RFC 3489-only server, or not STUN)")]
    BadMagicCookie(u32),
    /// The header's length field disagrees with the datagram, or is not a multiple of 4.
    #[error("header announces a {declared}-byte body but {actual} bytes follow it")]
    LengthMismatch { declared: usize, actual: usize },
    /// An attribute's length runs past the end of the message.
    #[error("attribute {typ:#06x} announces {len} bytes but only {left} remain")]
    AttributeOverrun { typ: u16, len: usize, left: usize },
    /// Bytes after the last attribute that do not make up an attribute header.
    #[error("{0} stray bytes after the last attribute")]
    TrailingBytes(usize),
    /// An address attribute with an unknown family or the wrong length.
    #[error("malformed address in attribute {typ:#06x}: {reason}")]
    BadAddress { typ: u16, reason: &'static str },
    /// A malformed ERROR-CODE attribute.
    #[error("malformed ERROR-CODE attribute")]
    BadErrorCode,
    /// FINGERPRINT present but wrong, or not the last attribute.
    #[error("FINGERPRINT check failed: {0}")]
    BadFingerprint(&'static str),
}

/// The four message classes (RFC 8489 §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Class {
    /// Asks for a response.
    Request,
    /// Fire and forget.
    Indication,
    /// A success response to a request.
    SuccessResponse,
    /// An error response to a request.
    ErrorResponse,
}

impl Class {
    fn bits(self) -> u16 {
        match self {
            Class::Request => 0b00,
            Class::Indication => 0b01,
            Class::SuccessResponse => 0b10,
            Class::ErrorResponse => 0b11,
        }
    }

    fn from_bits(bits: u16) -> Self {
        match bits & 0b11 {
            0b00 => Class::Request,
            0b01 => Class::Indication,
            0b10 => Class::SuccessResponse,
            _ => Class::ErrorResponse,
        }
    }
}

/// Packs class and method into the 14-bit message type: the class bits sit at positions
/// 4 and 8, interleaved with the method's bits.
pub fn message_type(class: Class, method: u16) -> u16 {
    let m = method & 0x0FFF;
    let c = class.bits();
    (m & 0x000F) | ((m & 0x0070) << 1) | ((m & 0x0F80) << 2) | ((c & 0b01) << 4) | ((c & 0b10) << 7)
}

/// Unpacks a 14-bit message type into class and method.
pub fn split_message_type(typ: u16) -> (Class, u16) {
    let class = Class::from_bits(((typ >> 4) & 0b01) | ((typ >> 7) & 0b10));
    let method = (typ & 0x000F) | ((typ >> 1) & 0x0070) | ((typ >> 2) & 0x0F80);
    (class, method)
}

/// The 96-bit id that ties a response to its request. Chosen at random for every
/// transaction, which is also what keeps an off-path attacker from forging answers.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TransactionId(pub [u8; 12]);

impl TransactionId {
    /// A fresh id from the thread-local CSPRNG.
    pub fn random() -> Self {
        TransactionId(rand::random())
    }
}

impl fmt::Debug for TransactionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

/// One attribute as it sits in a message: type and unpadded value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawAttribute<'a> {
    /// Attribute type.
    pub typ: u16,
    /// Value, without padding.
    pub value: &'a [u8],
}

impl RawAttribute<'_> {
    /// Types below 0x8000 must be understood by the receiver (RFC 8489 §14).
    pub fn is_comprehension_required(&self) -> bool {
        self.typ < 0x8000
    }
}

/// A message whose header and attribute framing have been checked; attribute values are
/// borrowed from the datagram and interpreted on demand.
#[derive(Debug, Clone)]
pub struct Message<'a> {
    /// Request, indication, success or error response.
    pub class: Class,
    /// The method (Binding is [`METHOD_BINDING`]).
    pub method: u16,
    /// The transaction this message belongs to.
    pub transaction_id: TransactionId,
    attributes: Vec<RawAttribute<'a>>,
}

/// Reads a big-endian `u16` at `at`; the caller has checked the bounds.
fn be16(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*bytes.get(at)?, *bytes.get(at + 1)?]))
}

fn be32(bytes: &[u8], at: usize) -> Option<u32> {
    let b = bytes.get(at..at + 4)?;
    Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

/// Rounds up to the 4-byte attribute alignment.
fn padded(len: usize) -> usize {
    (len + 3) & !3
}

impl<'a> Message<'a> {
    /// Checks the header and the attribute framing of one datagram. Does not look at the
    /// transaction id (the caller knows which one it expects) nor at attribute values.
    pub fn decode(bytes: &'a [u8]) -> Result<Self, StunParseError> {
        if bytes.len() < HEADER_LEN {
            return Err(StunParseError::TooShort(bytes.len()));
        }
        if bytes.len() > MAX_MESSAGE_LEN {
            return Err(StunParseError::TooLong(bytes.len()));
        }
        if bytes[0] & 0xC0 != 0 {
            return Err(StunParseError::NotStun);
        }
        let typ = be16(bytes, 0).ok_or(StunParseError::TooShort(bytes.len()))?;
        let declared = usize::from(be16(bytes, 2).ok_or(StunParseError::TooShort(bytes.len()))?);
        let cookie = be32(bytes, 4).ok_or(StunParseError::TooShort(bytes.len()))?;
        if cookie != MAGIC_COOKIE {
            return Err(StunParseError::BadMagicCookie(cookie));
        }
        let body = &bytes[HEADER_LEN..];
        if declared != body.len() || declared % 4 != 0 {
            return Err(StunParseError::LengthMismatch {
                declared,
                actual: body.len(),
            });
        }
        let mut id = [0u8; 12];
        id.copy_from_slice(&bytes[8..HEADER_LEN]);
        let (class, method) = split_message_type(typ);

        let mut attributes = Vec::new();
        let mut at = 0;
        while at < body.len() {
            let left = body.len() - at;
            if left < 4 {
                return Err(StunParseError::TrailingBytes(left));
            }
            let atyp = be16(body, at).ok_or(StunParseError::TrailingBytes(left))?;
            let alen = usize::from(be16(body, at + 2).ok_or(StunParseError::TrailingBytes(left))?);
            let start = at + 4;
            // The padding must be there too: the header length counts it.
            if padded(alen) > body.len() - start {
                return Err(StunParseError::AttributeOverrun {
                    typ: atyp,
                    len: alen,
                    left: body.len() - start,
                });
            }
            let value = &body[start..start + alen];
            if atyp == attr::FINGERPRINT {
                // FINGERPRINT covers everything before it, with the header length as
                // sent (which already includes the FINGERPRINT attribute itself).
                if start + padded(alen) != body.len() {
                    return Err(StunParseError::BadFingerprint("not the last attribute"));
                }
                let got = be32(value, 0)
                    .filter(|_| alen == 4)
                    .ok_or(StunParseError::BadFingerprint("value is not 4 bytes"))?;
                let expected = crc32fast::hash(&bytes[..HEADER_LEN + at]) ^ FINGERPRINT_XOR;
                if got != expected {
                    return Err(StunParseError::BadFingerprint("CRC does not match"));
                }
            }
            attributes.push(RawAttribute { typ: atyp, value });
            at = start + padded(alen);
        }
        Ok(Message {
            class,
            method,
            transaction_id: TransactionId(id),
            attributes,
        })
    }

    /// All attributes in order of appearance.
    pub fn attributes(&self) -> &[RawAttribute<'a>] {
        &self.attributes
    }

    /// The first attribute of a type: only the first occurrence counts (RFC 8489 §14).
    pub fn attribute(&self, typ: u16) -> Option<&[u8]> {
        self.attributes
            .iter()
            .find(|a| a.typ == typ)
            .map(|a| a.value)
    }

    /// The first comprehension-required attribute this codec does not know, if any.
    pub fn unknown_required_attribute(&self) -> Option<u16> {
        self.attributes
            .iter()
            .find(|a| a.is_comprehension_required() && !attr::KNOWN_REQUIRED.contains(&a.typ))
            .map(|a| a.typ)
    }

    /// The first address attribute of type `typ`, decoded (XOR-ed types are undone).
    /// `Ok(None)` when absent.
    pub fn address(&self, typ: u16) -> Result<Option<SocketAddr>, StunParseError> {
        let Some(value) = self.attribute(typ) else {
            return Ok(None);
        };
        let xored = matches!(
            typ,
            attr::XOR_MAPPED_ADDRESS | attr::XOR_PEER_ADDRESS | attr::XOR_RELAYED_ADDRESS
        );
        decode_address(typ, value, xored.then_some(&self.transaction_id)).map(Some)
    }

    /// ERROR-CODE as (code, reason phrase), if present.
    pub fn error_code(&self) -> Result<Option<(u16, String)>, StunParseError> {
        let Some(value) = self.attribute(attr::ERROR_CODE) else {
            return Ok(None);
        };
        if value.len() < 4 {
            return Err(StunParseError::BadErrorCode);
        }
        let class = u16::from(value[2] & 0x07);
        let number = u16::from(value[3]);
        if !(3..=6).contains(&class) || number > 99 {
            return Err(StunParseError::BadErrorCode);
        }
        let reason = String::from_utf8_lossy(&value[4..]).into_owned();
        Ok(Some((class * 100 + number, reason)))
    }

    /// SOFTWARE, if present and UTF-8.
    pub fn software(&self) -> Option<&str> {
        self.attribute(attr::SOFTWARE)
            .and_then(|v| std::str::from_utf8(v).ok())
    }

    /// The first comprehension-required attribute neither STUN nor TURN defines, if any:
    /// [`unknown_required_attribute`](Self::unknown_required_attribute) for TURN
    /// responses.
    pub fn unknown_turn_required_attribute(&self) -> Option<u16> {
        self.attributes
            .iter()
            .find(|a| {
                a.is_comprehension_required()
                    && !attr::KNOWN_REQUIRED.contains(&a.typ)
                    && !attr::TURN_KNOWN_REQUIRED.contains(&a.typ)
            })
            .map(|a| a.typ)
    }
}

/// The key of the long-term credential mechanism (RFC 8489 §9.2.2, MD5 algorithm):
/// `MD5(username ":" realm ":" password)`. The strings are used as given: SASLprep /
/// OpaqueString is not applied, which changes nothing for ASCII credentials such as
/// the TURN REST API's (`expiry:name`, base64 password).
pub fn long_term_key(username: &str, realm: &str, password: &str) -> [u8; 16] {
    use md5::{Digest, Md5};
    let mut md5 = Md5::new();
    md5.update(username.as_bytes());
    md5.update(b":");
    md5.update(realm.as_bytes());
    md5.update(b":");
    md5.update(password.as_bytes());
    md5.finalize().into()
}

/// HMAC-SHA1 over `header` (with its length field already adjusted) and `rest`.
fn hmac_sha1(key: &[u8], header: &[u8], rest: &[u8]) -> [u8; MESSAGE_INTEGRITY_LEN] {
    use hmac::{Hmac, Mac};
    // HMAC accepts keys of any length: new_from_slice cannot fail for it.
    let Ok(mut mac) = Hmac::<sha1::Sha1>::new_from_slice(key) else {
        return [0; MESSAGE_INTEGRITY_LEN];
    };
    mac.update(header);
    mac.update(rest);
    mac.finalize().into_bytes().into()
}

/// Why a message's MESSAGE-INTEGRITY does not prove it came from who holds the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IntegrityError {
    /// The message is not even framed as STUN.
    #[error("not a well-formed STUN message")]
    Malformed,
    /// No MESSAGE-INTEGRITY attribute.
    #[error("no MESSAGE-INTEGRITY attribute")]
    Missing,
    /// MESSAGE-INTEGRITY present but not 20 bytes.
    #[error("MESSAGE-INTEGRITY is not 20 bytes")]
    BadLength,
    /// The HMAC does not match: wrong key, or the message was altered.
    #[error("MESSAGE-INTEGRITY does not match")]
    Mismatch,
}

/// Checks the MESSAGE-INTEGRITY (HMAC-SHA1, RFC 8489 §14.5) of a framed message with
/// `key` (the long-term key from [`long_term_key`], or a short-term password's bytes).
/// Attributes after it (FINGERPRINT) are excluded, as the RFC says. The comparison
/// does not stop at the first differing byte.
pub fn check_message_integrity(bytes: &[u8], key: &[u8]) -> Result<(), IntegrityError> {
    if bytes.len() < HEADER_LEN {
        return Err(IntegrityError::Malformed);
    }
    let body_len = usize::from(be16(bytes, 2).ok_or(IntegrityError::Malformed)?);
    if body_len != bytes.len() - HEADER_LEN {
        return Err(IntegrityError::Malformed);
    }
    let mut at = HEADER_LEN;
    while at + 4 <= bytes.len() {
        let typ = be16(bytes, at).ok_or(IntegrityError::Malformed)?;
        let len = usize::from(be16(bytes, at + 2).ok_or(IntegrityError::Malformed)?);
        let start = at + 4;
        if start + len > bytes.len() {
            return Err(IntegrityError::Malformed);
        }
        if typ == attr::MESSAGE_INTEGRITY {
            if len != MESSAGE_INTEGRITY_LEN {
                return Err(IntegrityError::BadLength);
            }
            let mut header = [0u8; HEADER_LEN];
            header.copy_from_slice(&bytes[..HEADER_LEN]);
            // The length as if MESSAGE-INTEGRITY were the last attribute.
            let covered = u16::try_from(start + len - HEADER_LEN).unwrap_or(u16::MAX);
            header[2..4].copy_from_slice(&covered.to_be_bytes());
            let expected = hmac_sha1(key, &header, &bytes[HEADER_LEN..at]);
            let got = &bytes[start..start + len];
            let diff = expected
                .iter()
                .zip(got)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b));
            return if diff == 0 {
                Ok(())
            } else {
                Err(IntegrityError::Mismatch)
            };
        }
        at = start + padded(len);
    }
    Err(IntegrityError::Missing)
}

/// Address family codes.
const FAMILY_IPV4: u8 = 0x01;
const FAMILY_IPV6: u8 = 0x02;

/// Decodes a MAPPED-ADDRESS-shaped value; with `xor`, undoes the XOR-MAPPED-ADDRESS
/// obfuscation (port with the cookie's top half, IPv4 with the cookie, IPv6 with cookie
/// followed by the transaction id).
pub fn decode_address(
    typ: u16,
    value: &[u8],
    xor: Option<&TransactionId>,
) -> Result<SocketAddr, StunParseError> {
    let bad = |reason| StunParseError::BadAddress { typ, reason };
    if value.len() < 4 {
        return Err(bad("shorter than 4 bytes"));
    }
    let mut port = u16::from_be_bytes([value[2], value[3]]);
    let mask = xor_mask(xor);
    if xor.is_some() {
        port ^= (MAGIC_COOKIE >> 16) as u16;
    }
    let ip = match value[1] {
        FAMILY_IPV4 => {
            if value.len() != 8 {
                return Err(bad("IPv4 address is not 4 bytes"));
            }
            let mut octets = [0u8; 4];
            for (i, o) in octets.iter_mut().enumerate() {
                *o = value[4 + i] ^ mask[i];
            }
            IpAddr::V4(Ipv4Addr::from(octets))
        }
        FAMILY_IPV6 => {
            if value.len() != 20 {
                return Err(bad("IPv6 address is not 16 bytes"));
            }
            let mut octets = [0u8; 16];
            for (i, o) in octets.iter_mut().enumerate() {
                *o = value[4 + i] ^ mask[i];
            }
            IpAddr::V6(Ipv6Addr::from(octets))
        }
        _ => return Err(bad("unknown address family")),
    };
    Ok(SocketAddr::new(ip, port))
}

/// The 16 bytes addresses are XOR-ed with: cookie ‖ transaction id, or zeros.
fn xor_mask(xor: Option<&TransactionId>) -> [u8; 16] {
    let mut mask = [0u8; 16];
    if let Some(id) = xor {
        mask[..4].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
        mask[4..].copy_from_slice(&id.0);
    }
    mask
}

/// Encodes a MAPPED-ADDRESS-shaped value (XOR-ed when `xor` is given).
pub fn encode_address(addr: SocketAddr, xor: Option<&TransactionId>) -> Vec<u8> {
    let mask = xor_mask(xor);
    let port = if xor.is_some() {
        addr.port() ^ (MAGIC_COOKIE >> 16) as u16
    } else {
        addr.port()
    };
    let mut out = Vec::with_capacity(20);
    out.push(0);
    match addr.ip() {
        IpAddr::V4(ip) => {
            out.push(FAMILY_IPV4);
            out.extend_from_slice(&port.to_be_bytes());
            out.extend(ip.octets().iter().zip(mask).map(|(b, m)| b ^ m));
        }
        IpAddr::V6(ip) => {
            out.push(FAMILY_IPV6);
            out.extend_from_slice(&port.to_be_bytes());
            out.extend(ip.octets().iter().zip(mask).map(|(b, m)| b ^ m));
        }
    }
    out
}

/// Builds one message attribute by attribute. Used for our Binding requests, and by
/// tests (and later ICE connectivity checks) to build responses.
///
/// ```
/// use p2p_core::nat::stun::{Class, Message, MessageBuilder, TransactionId, METHOD_BINDING};
///
/// let id = TransactionId::random();
/// let bytes = MessageBuilder::new(Class::Request, METHOD_BINDING, id)
///     .software("p2p-transfer")
///     .finish_with_fingerprint();
/// let message = Message::decode(&bytes).unwrap();
/// assert_eq!((message.class, message.transaction_id), (Class::Request, id));
/// ```
#[derive(Debug, Clone)]
pub struct MessageBuilder {
    bytes: Vec<u8>,
    id: TransactionId,
}

impl MessageBuilder {
    /// Starts a message with an empty body.
    pub fn new(class: Class, method: u16, id: TransactionId) -> Self {
        let mut bytes = Vec::with_capacity(64);
        bytes.extend_from_slice(&message_type(class, method).to_be_bytes());
        bytes.extend_from_slice(&[0, 0]);
        bytes.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
        bytes.extend_from_slice(&id.0);
        MessageBuilder { bytes, id }
    }

    /// Appends an attribute, padded with zeros to a 4-byte boundary. Values longer than
    /// a `u16` length can express are truncated (no real attribute comes close).
    pub fn attribute(mut self, typ: u16, value: &[u8]) -> Self {
        let value = &value[..value.len().min(usize::from(u16::MAX))];
        self.bytes.extend_from_slice(&typ.to_be_bytes());
        self.bytes
            .extend_from_slice(&(value.len() as u16).to_be_bytes());
        self.bytes.extend_from_slice(value);
        self.bytes
            .resize(HEADER_LEN + padded(self.bytes.len() - HEADER_LEN), 0);
        self
    }

    /// Appends XOR-MAPPED-ADDRESS.
    pub fn xor_mapped_address(self, addr: SocketAddr) -> Self {
        let value = encode_address(addr, Some(&self.id));
        self.attribute(attr::XOR_MAPPED_ADDRESS, &value)
    }

    /// Appends a plain address attribute (MAPPED-ADDRESS, OTHER-ADDRESS, …).
    pub fn address(self, typ: u16, addr: SocketAddr) -> Self {
        self.attribute(typ, &encode_address(addr, None))
    }

    /// Appends SOFTWARE.
    pub fn software(self, name: &str) -> Self {
        self.attribute(attr::SOFTWARE, name.as_bytes())
    }

    /// Appends ERROR-CODE.
    pub fn error_code(self, code: u16, reason: &str) -> Self {
        let mut value = vec![0, 0, ((code / 100) & 0x07) as u8, (code % 100) as u8];
        value.extend_from_slice(reason.as_bytes());
        self.attribute(attr::ERROR_CODE, &value)
    }

    /// Appends an address attribute in XOR form (XOR-PEER-ADDRESS,
    /// XOR-RELAYED-ADDRESS, …), XOR-ed with this message's transaction id.
    pub fn xor_address(self, typ: u16, addr: SocketAddr) -> Self {
        let value = encode_address(addr, Some(&self.id));
        self.attribute(typ, &value)
    }

    /// Appends MESSAGE-INTEGRITY keyed with `key`: an HMAC-SHA1 over everything so far,
    /// with the header length counting the MESSAGE-INTEGRITY attribute itself. Only
    /// FINGERPRINT may follow ([`finish_with_fingerprint`](Self::finish_with_fingerprint)).
    pub fn message_integrity(mut self, key: &[u8]) -> Self {
        self.set_length(self.bytes.len() - HEADER_LEN + 4 + MESSAGE_INTEGRITY_LEN);
        let mac = hmac_sha1(key, &self.bytes[..HEADER_LEN], &self.bytes[HEADER_LEN..]);
        self.attribute(attr::MESSAGE_INTEGRITY, &mac)
    }

    /// Sets the header length and returns the message.
    pub fn finish(mut self) -> Vec<u8> {
        self.set_length(self.bytes.len() - HEADER_LEN);
        self.bytes
    }

    /// Appends FINGERPRINT (which must be last) and returns the message.
    pub fn finish_with_fingerprint(mut self) -> Vec<u8> {
        // The CRC covers the header with a length that already counts FINGERPRINT.
        self.set_length(self.bytes.len() - HEADER_LEN + 8);
        let crc = crc32fast::hash(&self.bytes) ^ FINGERPRINT_XOR;
        self.attribute(attr::FINGERPRINT, &crc.to_be_bytes())
            .finish()
    }

    fn set_length(&mut self, len: usize) {
        let len = u16::try_from(len).unwrap_or(u16::MAX).to_be_bytes();
        self.bytes[2..4].copy_from_slice(&len);
    }
}

/// What a Binding success response tells us.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindingResponse {
    /// Our address as the server saw it (server-reflexive transport address).
    pub mapped: SocketAddr,
    /// Whether `mapped` came from XOR-MAPPED-ADDRESS (`true`) or from the MAPPED-ADDRESS
    /// fallback of pre-RFC 5389 servers.
    pub xor_mapped: bool,
    /// RFC 5780 OTHER-ADDRESS: where the server also listens (other IP, other port).
    pub other_address: Option<SocketAddr>,
    /// RFC 5780 RESPONSE-ORIGIN: the address the response was sent from.
    pub response_origin: Option<SocketAddr>,
    /// The server's SOFTWARE, for diagnostics.
    pub software: Option<String>,
}

/// Why a datagram did not complete a Binding transaction.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BindingResponseError {
    /// The bytes are not a well-formed STUN message.
    #[error(transparent)]
    Malformed(#[from] StunParseError),
    /// Well-formed, but for another transaction (a late retransmission answer, or a
    /// forgery): ignore it and keep waiting.
    #[error("response for another transaction ({0:?})")]
    OtherTransaction(TransactionId),
    /// Not a Binding response (a request, an indication, another method).
    #[error("not a Binding response")]
    NotBindingResponse,
    /// The server refused the request.
    #[error(
        "the server answered with error {code}: {}",
        crate::text::printable(reason)
    )]
    ErrorResponse {
        /// STUN error code (300..=699).
        code: u16,
        /// The server's reason phrase, as it arrived (shown escaped).
        reason: String,
    },
    /// A success response that carries a comprehension-required attribute we do not
    /// know: RFC 8489 §7.3.3 says to treat the transaction as failed.
    #[error("response carries unknown comprehension-required attribute {0:#06x}")]
    UnknownRequiredAttribute(u16),
    /// A success response without any usable mapped address.
    #[error("response carries no usable (XOR-)MAPPED-ADDRESS")]
    NoMappedAddress,
}

impl BindingResponseError {
    /// Whether the datagram should simply be dropped while waiting for the real answer
    /// (garbage, stray or forged packets), rather than ending the transaction.
    pub fn is_ignorable(&self) -> bool {
        matches!(
            self,
            BindingResponseError::Malformed(_)
                | BindingResponseError::OtherTransaction(_)
                | BindingResponseError::NotBindingResponse
        )
    }
}

/// Builds a Binding request: SOFTWARE and FINGERPRINT, nothing else.
pub fn binding_request(id: TransactionId) -> Vec<u8> {
    MessageBuilder::new(Class::Request, METHOD_BINDING, id)
        .software(concat!("p2p-transfer ", env!("CARGO_PKG_VERSION")))
        .finish_with_fingerprint()
}

/// Checks a datagram as the answer to the Binding request `expected`. XOR-MAPPED-ADDRESS
/// wins; MAPPED-ADDRESS is the fallback when the XOR form is absent or malformed.
pub fn parse_binding_response(
    bytes: &[u8],
    expected: TransactionId,
) -> Result<BindingResponse, BindingResponseError> {
    let message = Message::decode(bytes)?;
    if message.transaction_id != expected {
        return Err(BindingResponseError::OtherTransaction(
            message.transaction_id,
        ));
    }
    if message.method != METHOD_BINDING {
        return Err(BindingResponseError::NotBindingResponse);
    }
    match message.class {
        Class::SuccessResponse => {}
        Class::ErrorResponse => {
            let (code, reason) = message
                .error_code()
                .ok()
                .flatten()
                .unwrap_or((500, "(no valid ERROR-CODE attribute)".to_owned()));
            return Err(BindingResponseError::ErrorResponse { code, reason });
        }
        Class::Request | Class::Indication => return Err(BindingResponseError::NotBindingResponse),
    }
    if let Some(typ) = message.unknown_required_attribute() {
        return Err(BindingResponseError::UnknownRequiredAttribute(typ));
    }
    let (mapped, xor_mapped) = match message.address(attr::XOR_MAPPED_ADDRESS) {
        Ok(Some(addr)) => (addr, true),
        Ok(None) | Err(_) => match message.address(attr::MAPPED_ADDRESS) {
            Ok(Some(addr)) => (addr, false),
            Ok(None) | Err(_) => return Err(BindingResponseError::NoMappedAddress),
        },
    };
    Ok(BindingResponse {
        mapped,
        xor_mapped,
        other_address: message.address(attr::OTHER_ADDRESS).ok().flatten(),
        response_origin: message.address(attr::RESPONSE_ORIGIN).ok().flatten(),
        software: message.software().map(str::to_owned),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: TransactionId = TransactionId([
        0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86, 0xfa, 0x87, 0xdf, 0xae,
    ]);

    /// RFC 5769 §2.2: a sample IPv4 Binding response (SOFTWARE "test vector",
    /// XOR-MAPPED-ADDRESS 192.0.2.1:32853, MESSAGE-INTEGRITY, FINGERPRINT).
    const RFC5769_IPV4_RESPONSE: [u8; 80] = [
        0x01, 0x01, 0x00, 0x3c, 0x21, 0x12, 0xa4, 0x42, 0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6,
        0x86, 0xfa, 0x87, 0xdf, 0xae, 0x80, 0x22, 0x00, 0x0b, 0x74, 0x65, 0x73, 0x74, 0x20, 0x76,
        0x65, 0x63, 0x74, 0x6f, 0x72, 0x20, 0x00, 0x20, 0x00, 0x08, 0x00, 0x01, 0xa1, 0x47, 0xe1,
        0x12, 0xa6, 0x43, 0x00, 0x08, 0x00, 0x14, 0x2b, 0x91, 0xf5, 0x99, 0xfd, 0x9e, 0x90, 0xc3,
        0x8c, 0x74, 0x89, 0xf9, 0x2a, 0xf9, 0xba, 0x53, 0xf0, 0x6b, 0xe7, 0xd7, 0x80, 0x28, 0x00,
        0x04, 0xc0, 0x7d, 0x4c, 0x96,
    ];

    /// RFC 5769 §2.3: the IPv6 variant (XOR-MAPPED-ADDRESS
    /// [2001:db8:1234:5678:11:2233:4455:6677]:32853).
    const RFC5769_IPV6_RESPONSE: [u8; 92] = [
        0x01, 0x01, 0x00, 0x48, 0x21, 0x12, 0xa4, 0x42, 0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6,
        0x86, 0xfa, 0x87, 0xdf, 0xae, 0x80, 0x22, 0x00, 0x0b, 0x74, 0x65, 0x73, 0x74, 0x20, 0x76,
        0x65, 0x63, 0x74, 0x6f, 0x72, 0x20, 0x00, 0x20, 0x00, 0x14, 0x00, 0x02, 0xa1, 0x47, 0x01,
        0x13, 0xa9, 0xfa, 0xa5, 0xd3, 0xf1, 0x79, 0xbc, 0x25, 0xf4, 0xb5, 0xbe, 0xd2, 0xb9, 0xd9,
        0x00, 0x08, 0x00, 0x14, 0xa3, 0x82, 0x95, 0x4e, 0x4b, 0xe6, 0x7b, 0xf1, 0x17, 0x84, 0xc9,
        0x7c, 0x82, 0x92, 0xc2, 0x75, 0xbf, 0xe3, 0xed, 0x41, 0x80, 0x28, 0x00, 0x04, 0xc8, 0xfb,
        0x0b, 0x4c,
    ];

    #[test]
    fn rfc5769_test_vectors_decode() {
        let r = parse_binding_response(&RFC5769_IPV4_RESPONSE, ID).unwrap();
        assert_eq!(r.mapped, "192.0.2.1:32853".parse().unwrap());
        assert!(r.xor_mapped);
        assert_eq!(r.software.as_deref(), Some("test vector"));

        let r = parse_binding_response(&RFC5769_IPV6_RESPONSE, ID).unwrap();
        assert_eq!(
            r.mapped,
            "[2001:db8:1234:5678:11:2233:4455:6677]:32853"
                .parse()
                .unwrap()
        );
    }

    #[test]
    fn message_type_packs_class_and_method() {
        assert_eq!(message_type(Class::Request, METHOD_BINDING), 0x0001);
        assert_eq!(message_type(Class::SuccessResponse, METHOD_BINDING), 0x0101);
        assert_eq!(message_type(Class::ErrorResponse, METHOD_BINDING), 0x0111);
        assert_eq!(message_type(Class::Indication, METHOD_BINDING), 0x0011);
        for class in [
            Class::Request,
            Class::Indication,
            Class::SuccessResponse,
            Class::ErrorResponse,
        ] {
            for method in [0x001, 0x003, 0x0FFF, 0x0ABC] {
                assert_eq!(
                    split_message_type(message_type(class, method)),
                    (class, method)
                );
            }
        }
    }

    #[test]
    fn built_responses_round_trip_for_both_families_and_both_encodings() {
        for mapped in ["203.0.113.7:40000", "[2001:db8::42]:1"] {
            let mapped: SocketAddr = mapped.parse().unwrap();
            let id = TransactionId::random();
            let xor = MessageBuilder::new(Class::SuccessResponse, METHOD_BINDING, id)
                .xor_mapped_address(mapped)
                .address(attr::OTHER_ADDRESS, "198.51.100.2:3479".parse().unwrap())
                .finish_with_fingerprint();
            let r = parse_binding_response(&xor, id).unwrap();
            assert_eq!((r.mapped, r.xor_mapped), (mapped, true));
            assert_eq!(r.other_address, Some("198.51.100.2:3479".parse().unwrap()));

            let plain = MessageBuilder::new(Class::SuccessResponse, METHOD_BINDING, id)
                .address(attr::MAPPED_ADDRESS, mapped)
                .finish();
            let r = parse_binding_response(&plain, id).unwrap();
            assert_eq!((r.mapped, r.xor_mapped), (mapped, false));
        }
    }

    #[test]
    fn xor_form_wins_over_plain_and_plain_is_the_fallback_for_a_broken_xor() {
        let id = TransactionId::random();
        let xor: SocketAddr = "203.0.113.7:40000".parse().unwrap();
        let plain: SocketAddr = "10.0.0.1:40000".parse().unwrap();
        let both = MessageBuilder::new(Class::SuccessResponse, METHOD_BINDING, id)
            .address(attr::MAPPED_ADDRESS, plain)
            .xor_mapped_address(xor)
            .finish();
        assert_eq!(parse_binding_response(&both, id).unwrap().mapped, xor);

        let broken_xor = MessageBuilder::new(Class::SuccessResponse, METHOD_BINDING, id)
            .attribute(attr::XOR_MAPPED_ADDRESS, &[0, 9, 0, 0, 1, 2, 3, 4])
            .address(attr::MAPPED_ADDRESS, plain)
            .finish();
        assert_eq!(
            parse_binding_response(&broken_xor, id).unwrap().mapped,
            plain
        );
    }

    #[test]
    fn hostile_headers_are_refused() {
        let id = TransactionId::random();
        let good = MessageBuilder::new(Class::SuccessResponse, METHOD_BINDING, id)
            .xor_mapped_address("192.0.2.1:1".parse().unwrap())
            .finish();

        for len in 0..HEADER_LEN {
            assert_eq!(
                Message::decode(&good[..len]).unwrap_err(),
                StunParseError::TooShort(len)
            );
        }
        let mut cookie = good.clone();
        cookie[4] ^= 1;
        assert!(matches!(
            Message::decode(&cookie),
            Err(StunParseError::BadMagicCookie(_))
        ));
        let mut bits = good.clone();
        bits[0] |= 0x80;
        assert_eq!(Message::decode(&bits).unwrap_err(), StunParseError::NotStun);
        let mut long = good.clone();
        long[3] += 4;
        assert!(matches!(
            Message::decode(&long),
            Err(StunParseError::LengthMismatch { .. })
        ));
        let mut extra = good.clone();
        extra.extend_from_slice(&[0; 4]);
        assert!(matches!(
            Message::decode(&extra),
            Err(StunParseError::LengthMismatch { .. })
        ));
        assert!(matches!(
            Message::decode(&vec![0u8; MAX_MESSAGE_LEN + 1]),
            Err(StunParseError::TooLong(_))
        ));
        assert_eq!(
            parse_binding_response(&good, TransactionId([0; 12])).unwrap_err(),
            BindingResponseError::OtherTransaction(id)
        );
    }

    #[test]
    fn hostile_attributes_are_refused() {
        let id = TransactionId::random();
        // An attribute claiming 0xFFFF bytes in a 12-byte body.
        let mut overlong = MessageBuilder::new(Class::SuccessResponse, METHOD_BINDING, id)
            .xor_mapped_address("192.0.2.1:1".parse().unwrap())
            .finish();
        overlong[22..24].copy_from_slice(&0xFFFFu16.to_be_bytes());
        assert!(matches!(
            Message::decode(&overlong),
            Err(StunParseError::AttributeOverrun { len: 0xFFFF, .. })
        ));
        // A zero-length XOR-MAPPED-ADDRESS is framed fine but not an address.
        let empty = MessageBuilder::new(Class::SuccessResponse, METHOD_BINDING, id)
            .attribute(attr::XOR_MAPPED_ADDRESS, &[])
            .finish();
        assert_eq!(
            parse_binding_response(&empty, id).unwrap_err(),
            BindingResponseError::NoMappedAddress
        );
        // An unknown comprehension-required attribute fails the transaction.
        let unknown = MessageBuilder::new(Class::SuccessResponse, METHOD_BINDING, id)
            .attribute(0x7777, b"?")
            .xor_mapped_address("192.0.2.1:1".parse().unwrap())
            .finish();
        assert_eq!(
            parse_binding_response(&unknown, id).unwrap_err(),
            BindingResponseError::UnknownRequiredAttribute(0x7777)
        );
        // A corrupted FINGERPRINT.
        let mut fingerprinted = MessageBuilder::new(Class::SuccessResponse, METHOD_BINDING, id)
            .xor_mapped_address("192.0.2.1:1".parse().unwrap())
            .finish_with_fingerprint();
        let last = fingerprinted.len() - 1;
        fingerprinted[last] ^= 1;
        assert!(matches!(
            Message::decode(&fingerprinted),
            Err(StunParseError::BadFingerprint(_))
        ));
    }

    #[test]
    fn error_responses_carry_code_and_reason() {
        let id = TransactionId::random();
        let bytes = MessageBuilder::new(Class::ErrorResponse, METHOD_BINDING, id)
            .error_code(420, "Unknown Attribute")
            .finish();
        assert_eq!(
            parse_binding_response(&bytes, id).unwrap_err(),
            BindingResponseError::ErrorResponse {
                code: 420,
                reason: "Unknown Attribute".into()
            }
        );
        // The reason phrase is the server's: shown escaped.
        let bytes = MessageBuilder::new(Class::ErrorResponse, METHOD_BINDING, id)
            .error_code(400, "Bad\u{1b}[2J\r\nRequest\u{202e}")
            .finish();
        let error = parse_binding_response(&bytes, id).unwrap_err().to_string();
        assert_eq!(
            error,
            r"the server answered with error 400: Bad\u{1b}[2J\r\nRequest\u{202e}"
        );
    }

    /// RFC 5769 §2.4: a request with long-term authentication (USERNAME, NONCE, REALM,
    /// MESSAGE-INTEGRITY, no FINGERPRINT).
    const RFC5769_LONG_TERM_REQUEST: [u8; 116] = [
        0x00, 0x01, 0x00, 0x60, 0x21, 0x12, 0xa4, 0x42, 0x78, 0xad, 0x34, 0x33, 0xc6, 0xad, 0x72,
        0xc0, 0x29, 0xda, 0x41, 0x2e, 0x00, 0x06, 0x00, 0x12, 0xe3, 0x83, 0x9e, 0xe3, 0x83, 0x88,
        0xe3, 0x83, 0xaa, 0xe3, 0x83, 0x83, 0xe3, 0x82, 0xaf, 0xe3, 0x82, 0xb9, 0x00, 0x00, 0x00,
        0x15, 0x00, 0x1c, 0x66, 0x2f, 0x2f, 0x34, 0x39, 0x39, 0x6b, 0x39, 0x35, 0x34, 0x64, 0x36,
        0x4f, 0x4c, 0x33, 0x34, 0x6f, 0x4c, 0x39, 0x46, 0x53, 0x54, 0x76, 0x79, 0x36, 0x34, 0x73,
        0x41, 0x00, 0x14, 0x00, 0x0b, 0x65, 0x78, 0x61, 0x6d, 0x70, 0x6c, 0x65, 0x2e, 0x6f, 0x72,
        0x67, 0x00, 0x00, 0x08, 0x00, 0x14, 0xf6, 0x70, 0x24, 0x65, 0x6d, 0xd6, 0x4a, 0x3e, 0x02,
        0xb8, 0xe0, 0x71, 0x2e, 0x85, 0xc9, 0xa2, 0x8c, 0xa8, 0x96, 0x66,
    ];

    #[test]
    fn rfc5769_short_term_integrity_checks_out() {
        // §2.2/2.3: the responses are keyed with the short-term password itself.
        let key = b"VOkJxbRl1RmTxUk/WvJxBt";
        assert_eq!(check_message_integrity(&RFC5769_IPV4_RESPONSE, key), Ok(()));
        assert_eq!(check_message_integrity(&RFC5769_IPV6_RESPONSE, key), Ok(()));
        assert_eq!(
            check_message_integrity(&RFC5769_IPV4_RESPONSE, b"VOkJxbRl1RmTxUk/WvJxBT"),
            Err(IntegrityError::Mismatch)
        );
        let mut altered = RFC5769_IPV4_RESPONSE;
        altered[30] ^= 1; // inside SOFTWARE
        assert_eq!(
            check_message_integrity(&altered, key),
            Err(IntegrityError::Mismatch)
        );
    }

    #[test]
    fn rfc5769_long_term_integrity_checks_out_and_is_reproduced() {
        // "マトリックス", and the password after SASLprep ("The\u{ad}M\u{aa}tr\u{2168}").
        let username = "\u{30de}\u{30c8}\u{30ea}\u{30c3}\u{30af}\u{30b9}";
        let key = long_term_key(username, "example.org", "TheMatrIX");
        assert_eq!(
            check_message_integrity(&RFC5769_LONG_TERM_REQUEST, &key),
            Ok(())
        );
        assert_eq!(
            check_message_integrity(
                &RFC5769_LONG_TERM_REQUEST,
                &long_term_key(username, "example.org", "TheMatrix")
            ),
            Err(IntegrityError::Mismatch)
        );
        // Our builder produces the same bytes from the same fields.
        let id = TransactionId(RFC5769_LONG_TERM_REQUEST[8..20].try_into().unwrap());
        let built = MessageBuilder::new(Class::Request, METHOD_BINDING, id)
            .attribute(attr::USERNAME, username.as_bytes())
            .attribute(attr::NONCE, b"f//499k954d6OL34oL9FSTvy64sA")
            .attribute(attr::REALM, b"example.org")
            .message_integrity(&key)
            .finish();
        assert_eq!(built, RFC5769_LONG_TERM_REQUEST);
        // With FINGERPRINT after it, the integrity still checks (it is excluded).
        let with_fp = MessageBuilder::new(Class::Request, METHOD_BINDING, id)
            .attribute(attr::USERNAME, username.as_bytes())
            .message_integrity(&key)
            .finish_with_fingerprint();
        assert!(Message::decode(&with_fp).is_ok());
        assert_eq!(check_message_integrity(&with_fp, &key), Ok(()));
    }

    #[test]
    fn integrity_check_survives_hostile_input() {
        let key = [7u8; 16];
        assert_eq!(
            check_message_integrity(&[], &key),
            Err(IntegrityError::Malformed)
        );
        assert_eq!(
            check_message_integrity(&RFC5769_LONG_TERM_REQUEST[..50], &key),
            Err(IntegrityError::Malformed)
        );
        let id = TransactionId::random();
        let none = MessageBuilder::new(Class::SuccessResponse, METHOD_BINDING, id).finish();
        assert_eq!(
            check_message_integrity(&none, &key),
            Err(IntegrityError::Missing)
        );
        let short = MessageBuilder::new(Class::SuccessResponse, METHOD_BINDING, id)
            .attribute(attr::MESSAGE_INTEGRITY, &[1, 2, 3])
            .finish();
        assert_eq!(
            check_message_integrity(&short, &key),
            Err(IntegrityError::BadLength)
        );
        // Every truncation and every single-byte corruption: an error or Ok, never a
        // panic.
        let good = MessageBuilder::new(Class::SuccessResponse, METHOD_BINDING, id)
            .xor_mapped_address("192.0.2.1:1".parse().unwrap())
            .message_integrity(&key)
            .finish_with_fingerprint();
        for len in 0..good.len() {
            let _ = check_message_integrity(&good[..len], &key);
        }
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0xFF;
            let _ = check_message_integrity(&bad, &key);
        }
    }

    #[test]
    fn turn_addresses_are_xored() {
        let id = TransactionId::random();
        let peer: SocketAddr = "198.51.100.9:5000".parse().unwrap();
        let relayed: SocketAddr = "[2001:db8::9]:6000".parse().unwrap();
        let bytes = MessageBuilder::new(Class::SuccessResponse, METHOD_ALLOCATE, id)
            .xor_address(attr::XOR_PEER_ADDRESS, peer)
            .xor_address(attr::XOR_RELAYED_ADDRESS, relayed)
            .attribute(attr::LIFETIME, &600u32.to_be_bytes())
            .finish();
        let m = Message::decode(&bytes).unwrap();
        assert_eq!(m.address(attr::XOR_PEER_ADDRESS).unwrap(), Some(peer));
        assert_eq!(m.address(attr::XOR_RELAYED_ADDRESS).unwrap(), Some(relayed));
        assert_eq!(m.unknown_turn_required_attribute(), None);
        assert_eq!(m.unknown_required_attribute(), Some(attr::XOR_PEER_ADDRESS));
    }

    #[test]
    fn our_request_is_what_a_server_expects() {
        let id = TransactionId::random();
        let bytes = binding_request(id);
        let m = Message::decode(&bytes).unwrap();
        assert_eq!(
            (m.class, m.method, m.transaction_id),
            (Class::Request, METHOD_BINDING, id)
        );
        assert_eq!(
            m.attributes().last().map(|a| a.typ),
            Some(attr::FINGERPRINT)
        );
        assert!(m.software().unwrap().starts_with("p2p-transfer"));
    }
}
