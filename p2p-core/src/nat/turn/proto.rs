//! The TURN wire format (RFC 8656) on top of [`stun`]'s codec, without sockets or
//! clocks: the requests a client sends (signed with the long-term credential), the
//! answers it reads, ChannelData framing and the framing of one TCP stream that carries
//! both STUN messages and ChannelData. Every input is hostile: lengths are checked
//! against the bytes that are there, nothing panics.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crate::nat::stun::{
    self, attr, check_message_integrity, Class, IntegrityError, Message, MessageBuilder,
    TransactionId,
};

/// First channel number a client may bind (RFC 8656 §12).
pub const CHANNEL_MIN: u16 = 0x4000;
/// Last channel number a client may bind.
pub const CHANNEL_MAX: u16 = 0x4FFF;
/// REQUESTED-TRANSPORT value for UDP (the IANA protocol number).
pub const TRANSPORT_UDP: u8 = 17;
/// Length of the ChannelData header (channel number, length).
pub const CHANNEL_DATA_HEADER: usize = 4;
/// Largest payload a ChannelData message or a Send indication can carry here.
pub const MAX_PAYLOAD: usize = 65_000;
/// Permissions last 300 s (RFC 8656 §9); refreshed a minute early.
pub const PERMISSION_REFRESH: Duration = Duration::from_secs(240);
/// Channel bindings last 600 s (RFC 8656 §12); refreshed a minute early.
pub const CHANNEL_REFRESH: Duration = Duration::from_secs(540);
/// The allocation lifetime when the server names none (RFC 8656 §7.2).
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(600);
/// The software name we put into requests.
pub const SOFTWARE: &str = concat!("p2p-transfer ", env!("CARGO_PKG_VERSION"));

/// When to refresh an allocation granted for `lifetime`: at half of it (never sooner
/// than 1 s, so that a server granting 0 or 1 s cannot make us spin).
pub fn refresh_after(lifetime: Duration) -> Duration {
    (lifetime / 2).max(Duration::from_secs(1))
}

/// What a long-term-credential request is signed with: the server's realm and current
/// nonce, and the key derived from them.
#[derive(Clone)]
pub struct Auth {
    /// USERNAME.
    pub username: String,
    /// REALM, as the server sent it.
    pub realm: Vec<u8>,
    /// NONCE, as the server last sent it.
    pub nonce: Vec<u8>,
    password: String,
    key: [u8; 16],
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("username", &self.username)
            .field("realm", &String::from_utf8_lossy(&self.realm))
            .finish_non_exhaustive()
    }
}

impl Auth {
    /// The credentials for `realm` (as the server's 401 named it) with `nonce`.
    pub fn new(username: &str, password: &str, realm: &[u8], nonce: &[u8]) -> Self {
        let key = stun::long_term_key(username, &String::from_utf8_lossy(realm), password);
        Auth {
            username: username.to_owned(),
            realm: realm.to_vec(),
            nonce: nonce.to_vec(),
            password: password.to_owned(),
            key,
        }
    }

    /// The HMAC key.
    pub fn key(&self) -> &[u8; 16] {
        &self.key
    }

    /// Takes a new nonce (and realm, should it have changed) from a 401/438 answer.
    pub fn renew(&mut self, challenge: &Challenge) {
        if challenge.realm != self.realm {
            *self = Auth::new(
                &self.username.clone(),
                &self.password.clone(),
                &challenge.realm,
                &challenge.nonce,
            );
        } else {
            self.nonce.clone_from(&challenge.nonce);
        }
    }

    fn sign(&self, builder: MessageBuilder) -> Vec<u8> {
        builder
            .attribute(attr::USERNAME, self.username.as_bytes())
            .attribute(attr::REALM, &self.realm)
            .attribute(attr::NONCE, &self.nonce)
            .message_integrity(&self.key)
            .finish_with_fingerprint()
    }
}

/// The requests a TURN client sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// Allocate a UDP relayed address.
    Allocate,
    /// Refresh the allocation: with `None` for the server's default lifetime, with
    /// `Some(0)` to delete it.
    Refresh {
        /// Seconds.
        lifetime: Option<u32>,
    },
    /// Install or refresh a permission for this peer IP.
    CreatePermission(IpAddr),
    /// Bind `channel` to `peer` (or refresh the binding).
    ChannelBind {
        /// 0x4000..=0x4FFF.
        channel: u16,
        /// The peer's address.
        peer: SocketAddr,
    },
}

impl Request {
    /// The STUN method.
    pub fn method(&self) -> u16 {
        match self {
            Request::Allocate => stun::METHOD_ALLOCATE,
            Request::Refresh { .. } => stun::METHOD_REFRESH,
            Request::CreatePermission(_) => stun::METHOD_CREATE_PERMISSION,
            Request::ChannelBind { .. } => stun::METHOD_CHANNEL_BIND,
        }
    }

    /// The request's bytes, signed when `auth` is given (the very first Allocate goes
    /// unsigned to learn realm and nonce).
    pub fn encode(&self, id: TransactionId, auth: Option<&Auth>) -> Vec<u8> {
        let mut b = MessageBuilder::new(Class::Request, self.method(), id);
        match *self {
            Request::Allocate => {
                b = b
                    .attribute(attr::REQUESTED_TRANSPORT, &[TRANSPORT_UDP, 0, 0, 0])
                    .software(SOFTWARE);
            }
            Request::Refresh { lifetime } => {
                if let Some(lifetime) = lifetime {
                    b = b.attribute(attr::LIFETIME, &lifetime.to_be_bytes());
                }
            }
            Request::CreatePermission(ip) => {
                // The port is ignored by the server (RFC 8656 §10).
                b = b.xor_address(attr::XOR_PEER_ADDRESS, SocketAddr::new(ip, 0));
            }
            Request::ChannelBind { channel, peer } => {
                let [hi, lo] = channel.to_be_bytes();
                b = b
                    .attribute(attr::CHANNEL_NUMBER, &[hi, lo, 0, 0])
                    .xor_address(attr::XOR_PEER_ADDRESS, peer);
            }
        }
        match auth {
            Some(auth) => auth.sign(b),
            None => b.finish_with_fingerprint(),
        }
    }
}

/// A Send indication: data for `peer` before its channel is bound. No integrity (RFC
/// 8656 §11: indications cannot be authenticated).
pub fn send_indication(peer: SocketAddr, data: &[u8]) -> Vec<u8> {
    MessageBuilder::new(
        Class::Indication,
        stun::METHOD_SEND,
        TransactionId::random(),
    )
    .xor_address(attr::XOR_PEER_ADDRESS, peer)
    .attribute(attr::DATA, data)
    .finish()
}

/// The 4-byte ChannelData header.
pub fn channel_data_header(channel: u16, len: usize) -> [u8; CHANNEL_DATA_HEADER] {
    let [c0, c1] = channel.to_be_bytes();
    let [l0, l1] = u16::try_from(len).unwrap_or(u16::MAX).to_be_bytes();
    [c0, c1, l0, l1]
}

/// Zero bytes that pad a ChannelData payload of `len` bytes to 4 over TCP.
pub fn tcp_padding(len: usize) -> usize {
    (4 - len % 4) % 4
}

/// Why bytes from the server are not a frame we accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Shorter than a header.
    #[error("{0} bytes is too short for a TURN frame")]
    TooShort(usize),
    /// The first two bits name neither STUN (00) nor ChannelData (01).
    #[error("first byte {0:#04x} is neither STUN nor ChannelData")]
    UnknownKind(u8),
    /// ChannelData whose channel is outside 0x4000..=0x4FFF.
    #[error("ChannelData on channel {0:#06x}, outside 0x4000..=0x4FFF")]
    BadChannel(u16),
    /// ChannelData whose length field runs past the datagram.
    #[error("ChannelData announces {declared} bytes, {actual} follow")]
    BadLength {
        /// From the header.
        declared: usize,
        /// In the datagram.
        actual: usize,
    },
    /// A STUN header whose length is not a multiple of 4.
    #[error("STUN length {0} is not a multiple of 4")]
    UnalignedStun(usize),
}

/// One frame from the server, sorted by its first byte (RFC 8656 §12.5, RFC 7983).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A STUN message (still to be decoded).
    Stun(&'a [u8]),
    /// ChannelData: the channel and its payload (padding removed).
    ChannelData {
        /// 0x4000..=0x4FFF.
        channel: u16,
        /// The peer's datagram.
        payload: &'a [u8],
    },
}

/// Sorts one datagram (UDP) or one frame cut by [`tcp_frame_len`] (TCP). Over UDP a
/// ChannelData message may carry padding after the payload; it is ignored.
pub fn classify(bytes: &[u8]) -> Result<Frame<'_>, FrameError> {
    let first = *bytes.first().ok_or(FrameError::TooShort(0))?;
    match first >> 6 {
        0b00 => Ok(Frame::Stun(bytes)),
        0b01 => {
            if bytes.len() < CHANNEL_DATA_HEADER {
                return Err(FrameError::TooShort(bytes.len()));
            }
            let channel = u16::from_be_bytes([bytes[0], bytes[1]]);
            if !(CHANNEL_MIN..=CHANNEL_MAX).contains(&channel) {
                return Err(FrameError::BadChannel(channel));
            }
            let declared = usize::from(u16::from_be_bytes([bytes[2], bytes[3]]));
            let body = &bytes[CHANNEL_DATA_HEADER..];
            let payload = body.get(..declared).ok_or(FrameError::BadLength {
                declared,
                actual: body.len(),
            })?;
            Ok(Frame::ChannelData { channel, payload })
        }
        _ => Err(FrameError::UnknownKind(first)),
    }
}

/// On a TCP stream, the length of the whole frame that starts with these 4 bytes:
/// a STUN message is 20 bytes of header plus its body length, ChannelData 4 plus its
/// length padded to a multiple of 4. Both are bounded by the 16-bit length field
/// (at most 65,555 bytes), so a reader can use one fixed buffer.
pub fn tcp_frame_len(head: [u8; 4]) -> Result<usize, FrameError> {
    let len = usize::from(u16::from_be_bytes([head[2], head[3]]));
    match head[0] >> 6 {
        0b00 => {
            if len % 4 != 0 {
                return Err(FrameError::UnalignedStun(len));
            }
            Ok(stun::HEADER_LEN + len)
        }
        0b01 => {
            let channel = u16::from_be_bytes([head[0], head[1]]);
            if !(CHANNEL_MIN..=CHANNEL_MAX).contains(&channel) {
                return Err(FrameError::BadChannel(channel));
            }
            Ok(CHANNEL_DATA_HEADER + len + tcp_padding(len))
        }
        _ => Err(FrameError::UnknownKind(head[0])),
    }
}

/// The largest frame [`tcp_frame_len`] can return.
pub const MAX_TCP_FRAME: usize = stun::HEADER_LEN + 0xFFFF;

/// A Data indication's peer and payload, if `message` is one.
pub fn data_indication<'a>(message: &Message<'a>) -> Option<(SocketAddr, &'a [u8])> {
    if message.class != Class::Indication || message.method != stun::METHOD_DATA {
        return None;
    }
    let peer = message.address(attr::XOR_PEER_ADDRESS).ok().flatten()?;
    let data = message
        .attributes()
        .iter()
        .find(|a| a.typ == attr::DATA)?
        .value;
    Some((peer, data))
}

/// REALM and NONCE of a 401 or 438 answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    /// REALM.
    pub realm: Vec<u8>,
    /// NONCE.
    pub nonce: Vec<u8>,
}

/// A response, checked and interpreted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Success.
    Success(Success),
    /// An error answer; `challenge` is set when it carries REALM and NONCE.
    Error {
        /// 300..=699.
        code: u16,
        /// The server's reason phrase as it arrived (escape it before showing).
        reason: String,
        /// REALM and NONCE, if the answer carries both.
        challenge: Option<Challenge>,
    },
}

/// What a success response carries that a client uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Success {
    /// XOR-RELAYED-ADDRESS (Allocate).
    pub relayed: Option<SocketAddr>,
    /// XOR-MAPPED-ADDRESS (Allocate).
    pub mapped: Option<SocketAddr>,
    /// LIFETIME (Allocate, Refresh).
    pub lifetime: Option<Duration>,
}

/// Why a datagram is not the answer to a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnswerError {
    /// Not for this transaction, not a response, not this method, or not framed:
    /// drop it and keep waiting.
    #[error("not an answer to this request")]
    Unrelated,
    /// Claims to answer the request but fails the integrity check: a forgery or a
    /// corruption; drop it and keep waiting.
    #[error("answer fails MESSAGE-INTEGRITY: {0}")]
    Integrity(IntegrityError),
    /// A success answer with a comprehension-required attribute we do not know
    /// (RFC 8489 §7.3.3: the transaction failed).
    #[error("answer carries unknown comprehension-required attribute {0:#06x}")]
    UnknownRequired(u16),
}

/// Checks `bytes` as the answer to the request `(id, method)` that was signed with
/// `key` (`None`: sent unsigned). A success must carry a valid MESSAGE-INTEGRITY when
/// the request was signed; error answers 400, 401 and 438 need not (RFC 8489 §9.2.5),
/// any other error answer's integrity is checked when present.
pub fn parse_answer(
    bytes: &[u8],
    id: TransactionId,
    method: u16,
    key: Option<&[u8]>,
) -> Result<Answer, AnswerError> {
    let message = Message::decode(bytes).map_err(|_| AnswerError::Unrelated)?;
    if message.transaction_id != id || message.method != method {
        return Err(AnswerError::Unrelated);
    }
    match message.class {
        Class::SuccessResponse => {
            if let Some(key) = key {
                check_message_integrity(bytes, key).map_err(AnswerError::Integrity)?;
            }
            if let Some(typ) = message.unknown_turn_required_attribute() {
                return Err(AnswerError::UnknownRequired(typ));
            }
            let lifetime = message
                .attribute(attr::LIFETIME)
                .and_then(|v| <[u8; 4]>::try_from(v).ok())
                .map(|v| Duration::from_secs(u64::from(u32::from_be_bytes(v))));
            Ok(Answer::Success(Success {
                relayed: message.address(attr::XOR_RELAYED_ADDRESS).ok().flatten(),
                mapped: message.address(attr::XOR_MAPPED_ADDRESS).ok().flatten(),
                lifetime,
            }))
        }
        Class::ErrorResponse => {
            let (code, reason) = message
                .error_code()
                .ok()
                .flatten()
                .unwrap_or((500, "(no valid ERROR-CODE attribute)".to_owned()));
            if let (Some(key), false) = (key, matches!(code, 400 | 401 | 438)) {
                match check_message_integrity(bytes, key) {
                    Ok(()) | Err(IntegrityError::Missing) => {}
                    Err(e) => return Err(AnswerError::Integrity(e)),
                }
            }
            let challenge = match (
                message.attribute(attr::REALM),
                message.attribute(attr::NONCE),
            ) {
                (Some(realm), Some(nonce)) if !nonce.is_empty() => Some(Challenge {
                    realm: realm.to_vec(),
                    nonce: nonce.to_vec(),
                }),
                _ => None,
            };
            Ok(Answer::Error {
                code,
                reason,
                challenge,
            })
        }
        Class::Request | Class::Indication => Err(AnswerError::Unrelated),
    }
}

/// The transaction id of a framed STUN message, if it is a response (the reader uses
/// it to route answers).
pub fn response_id(bytes: &[u8]) -> Option<TransactionId> {
    if bytes.len() < stun::HEADER_LEN {
        return None;
    }
    let typ = u16::from_be_bytes([bytes[0], bytes[1]]);
    let (class, _) = stun::split_message_type(typ);
    if !matches!(class, Class::SuccessResponse | Class::ErrorResponse) {
        return None;
    }
    let mut id = [0u8; 12];
    id.copy_from_slice(&bytes[8..stun::HEADER_LEN]);
    Some(TransactionId(id))
}

/// When to (re)send a request over UDP: RFC 8489's doubling RTO from 500 ms, capped
/// by the transaction's deadline. Over TCP a request is sent once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retransmit {
    rto: Duration,
    sends: u32,
}

impl Retransmit {
    /// The first RTO.
    pub const INITIAL_RTO: Duration = Duration::from_millis(500);
    /// Requests sent in all, the first included (RFC 8489 `Rc`).
    pub const MAX_SENDS: u32 = 7;

    /// A schedule for a request just sent once.
    pub fn new() -> Self {
        Retransmit {
            rto: Self::INITIAL_RTO,
            sends: 1,
        }
    }

    /// After the first send, how long until the next one; `None` when no more are due.
    pub fn next_after_send(&mut self) -> Option<Duration> {
        if self.sends >= Self::MAX_SENDS {
            return None;
        }
        let wait = self.rto;
        self.rto = self.rto.saturating_mul(2);
        self.sends += 1;
        Some(wait)
    }
}

impl Default for Retransmit {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_is_at_half_the_lifetime_and_never_spins() {
        assert_eq!(
            refresh_after(Duration::from_secs(600)),
            Duration::from_secs(300)
        );
        assert_eq!(
            refresh_after(Duration::from_secs(3)),
            Duration::from_millis(1500)
        );
        assert_eq!(refresh_after(Duration::ZERO), Duration::from_secs(1));
    }

    #[test]
    fn retransmissions_double_and_stop() {
        let mut r = Retransmit::new();
        let waits: Vec<_> = std::iter::from_fn(|| r.next_after_send()).collect();
        assert_eq!(
            waits,
            [500, 1000, 2000, 4000, 8000, 16000].map(Duration::from_millis)
        );
    }

    #[test]
    fn channel_data_frames_both_ways() {
        let payload = b"hello";
        let mut frame = channel_data_header(0x4001, payload.len()).to_vec();
        frame.extend_from_slice(payload);
        assert_eq!(
            classify(&frame),
            Ok(Frame::ChannelData {
                channel: 0x4001,
                payload
            })
        );
        // UDP: padding after the payload is allowed and ignored.
        frame.extend_from_slice(&[0, 0, 0]);
        assert_eq!(
            classify(&frame),
            Ok(Frame::ChannelData {
                channel: 0x4001,
                payload
            })
        );
        // TCP: the frame length counts the padding.
        assert_eq!(tcp_frame_len([0x40, 0x01, 0, 5]), Ok(12));
        assert_eq!(tcp_frame_len([0x40, 0x01, 0, 8]), Ok(12));
        assert_eq!(tcp_frame_len([0x40, 0x01, 0, 0]), Ok(4));
        assert_eq!(tcp_frame_len([0x4F, 0xFF, 0xFF, 0xFF]), Ok(4 + 0x10000));
        assert_eq!(tcp_frame_len([0x00, 0x03, 0x00, 0x10]), Ok(36));
        assert!(tcp_frame_len([0x00, 0x03, 0x00, 0x11]).is_err());
        assert!(tcp_frame_len([0x80, 0, 0, 0]).is_err());
        assert!(tcp_frame_len([0x50, 0, 0, 4]).is_err()); // channel 0x5000
        const { assert!(MAX_TCP_FRAME >= 4 + 0xFFFF + 3) };
        assert_eq!(tcp_padding(0), 0);
        assert_eq!(tcp_padding(1200), 0);
        assert_eq!(tcp_padding(1201), 3);
    }

    #[test]
    fn hostile_frames_are_errors_not_panics() {
        assert_eq!(classify(&[]), Err(FrameError::TooShort(0)));
        assert_eq!(classify(&[0x40, 0x00, 0x00]), Err(FrameError::TooShort(3)));
        assert_eq!(
            classify(&[0x40, 0x00, 0x00, 0x05, 1, 2]),
            Err(FrameError::BadLength {
                declared: 5,
                actual: 2
            })
        );
        assert_eq!(
            classify(&[0x7F, 0xFF, 0x00, 0x00]),
            Err(FrameError::BadChannel(0x7FFF))
        );
        assert_eq!(
            classify(&[0xC0, 0, 0, 0]),
            Err(FrameError::UnknownKind(0xC0))
        );
        // Every prefix and every byte flip of real frames: no panic anywhere.
        let id = TransactionId::random();
        let auth = Auth::new("u", "p", b"realm", b"nonce");
        let frames = [
            Request::ChannelBind {
                channel: 0x4000,
                peer: "127.0.0.1:9".parse().unwrap(),
            }
            .encode(id, Some(&auth)),
            send_indication("[::1]:9".parse().unwrap(), b"data"),
            [channel_data_header(0x4000, 3).as_slice(), b"abc"].concat(),
        ];
        for frame in &frames {
            for len in 0..=frame.len() {
                let cut = &frame[..len];
                let _ = classify(cut);
                if let Ok(Frame::Stun(b)) = classify(cut) {
                    if let Ok(m) = Message::decode(b) {
                        let _ = data_indication(&m);
                    }
                }
                let _ = parse_answer(cut, id, stun::METHOD_CHANNEL_BIND, Some(auth.key()));
                let _ = response_id(cut);
            }
            for i in 0..frame.len() {
                let mut bad = frame.clone();
                bad[i] ^= 0xA5;
                let _ = classify(&bad);
                let _ = parse_answer(&bad, id, stun::METHOD_CHANNEL_BIND, Some(auth.key()));
                if bad.len() >= 4 {
                    let _ = tcp_frame_len([bad[0], bad[1], bad[2], bad[3]]);
                }
            }
        }
    }

    #[test]
    fn requests_are_signed_and_answers_checked() {
        let auth = Auth::new("1700000000:test", "secret", b"p2p.test", b"n0nce");
        let id = TransactionId::random();
        let req = Request::CreatePermission("192.0.2.7".parse().unwrap()).encode(id, Some(&auth));
        let m = Message::decode(&req).unwrap();
        assert_eq!(m.method, stun::METHOD_CREATE_PERMISSION);
        assert_eq!(
            m.address(attr::XOR_PEER_ADDRESS).unwrap(),
            Some("192.0.2.7:0".parse().unwrap())
        );
        assert_eq!(check_message_integrity(&req, auth.key()), Ok(()));
        assert_eq!(m.attribute(attr::NONCE), Some(&b"n0nce"[..]));

        // A signed success answer is accepted; the same answer with a wrong key or
        // unsigned is not.
        let relayed: SocketAddr = "127.0.0.1:50000".parse().unwrap();
        let ok = MessageBuilder::new(Class::SuccessResponse, stun::METHOD_ALLOCATE, id)
            .xor_address(attr::XOR_RELAYED_ADDRESS, relayed)
            .attribute(attr::LIFETIME, &77u32.to_be_bytes())
            .message_integrity(auth.key())
            .finish_with_fingerprint();
        let Ok(Answer::Success(s)) = parse_answer(&ok, id, stun::METHOD_ALLOCATE, Some(auth.key()))
        else {
            panic!("a signed answer is accepted")
        };
        assert_eq!(s.relayed, Some(relayed));
        assert_eq!(s.lifetime, Some(Duration::from_secs(77)));
        assert_eq!(
            parse_answer(&ok, id, stun::METHOD_ALLOCATE, Some(&[0; 16])),
            Err(AnswerError::Integrity(IntegrityError::Mismatch))
        );
        let unsigned = MessageBuilder::new(Class::SuccessResponse, stun::METHOD_ALLOCATE, id)
            .xor_address(attr::XOR_RELAYED_ADDRESS, relayed)
            .finish();
        assert_eq!(
            parse_answer(&unsigned, id, stun::METHOD_ALLOCATE, Some(auth.key())),
            Err(AnswerError::Integrity(IntegrityError::Missing))
        );
        assert_eq!(
            parse_answer(&ok, TransactionId::random(), stun::METHOD_ALLOCATE, None),
            Err(AnswerError::Unrelated)
        );
        assert_eq!(
            parse_answer(&ok, id, stun::METHOD_REFRESH, None),
            Err(AnswerError::Unrelated)
        );

        // 438 carries a new nonce; it needs no integrity.
        let stale = MessageBuilder::new(Class::ErrorResponse, stun::METHOD_ALLOCATE, id)
            .error_code(438, "Stale Nonce")
            .attribute(attr::REALM, b"p2p.test")
            .attribute(attr::NONCE, b"fresh")
            .finish();
        let Ok(Answer::Error {
            code: 438,
            challenge: Some(challenge),
            ..
        }) = parse_answer(&stale, id, stun::METHOD_ALLOCATE, Some(auth.key()))
        else {
            panic!("438 is read")
        };
        let mut renewed = auth.clone();
        renewed.renew(&challenge);
        assert_eq!(renewed.nonce, b"fresh");
        assert_eq!(renewed.key(), auth.key());
    }

    #[test]
    fn data_indications_are_read() {
        let peer: SocketAddr = "[2001:db8::1]:4000".parse().unwrap();
        let bytes = MessageBuilder::new(
            Class::Indication,
            stun::METHOD_DATA,
            TransactionId::random(),
        )
        .xor_address(attr::XOR_PEER_ADDRESS, peer)
        .attribute(attr::DATA, b"payload")
        .finish();
        let m = Message::decode(&bytes).unwrap();
        assert_eq!(data_indication(&m), Some((peer, &b"payload"[..])));
        // A Send indication (our direction) is not a Data indication.
        let send = send_indication(peer, b"x");
        assert_eq!(data_indication(&Message::decode(&send).unwrap()), None);
        // DATA without a peer address: nothing.
        let no_peer = MessageBuilder::new(
            Class::Indication,
            stun::METHOD_DATA,
            TransactionId::random(),
        )
        .attribute(attr::DATA, b"payload")
        .finish();
        assert_eq!(data_indication(&Message::decode(&no_peer).unwrap()), None);
    }
}
