//! Who may connect: the step after TLS and before the session's `Hello`.
//!
//! TLS has told each side which key the other holds (a [`Channel`]). Admission decides
//! whether that key is welcome and tells the peer the verdict, in at most three rounds
//! of small messages ([`AdmitMessage`], each framed by a 2-byte big-endian length):
//!
//! ```text
//! both sides at once:  Intro { pake }          SPAKE2 message when this side has a code
//! if both sent one:    Confirm { mac }         HMAC proving the same SPAKE2 key and TLS session
//! both sides at once:  Verdict { accepted, reason }
//! ```
//!
//! A peer is welcome when it matches the pinned id, if one is set, and then, in this
//! order: both sides used a code and SPAKE2 proved it the same (a failed proof refuses
//! at once); it proved the code earlier in this process (a reconnection); it holds this
//! device's own key (two programs of one installation); it is a trusted device; it
//! matches the pin; only one side used a code (refused: the code is missing); with
//! `accept_unknown`, it is let in as [`Admitted::Unknown`] for a person to decide at
//! the offer. Anything else is an unknown device, refused. The key confirmation is
//! `HMAC-SHA256(K, "p2p-transfer/2 confirm" || side || exporter || own key || peer key)`:
//! it binds the SPAKE2 key `K` to both certificates' keys and to the TLS exporter, so a
//! relay that terminates TLS on both sides (two TLS sessions, two exporters) fails even
//! when it passes the SPAKE2 messages through. A failed confirmation burns the code on
//! that side for good: a guesser gets one try.

use std::sync::{Arc, Mutex, PoisonError};

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use spake2::{Ed25519Group, Identity as SpakeIdentity, Password, Spake2};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::code::Code;
use super::identity::{DeviceId, Fingerprint};
use super::tls::Channel;
use super::trust::TrustedDevice;
use super::SecurityError;

/// Largest admission message, in bytes (the length prefix's limit).
pub const MAX_ADMIT_LEN: usize = 1024;
/// Longest refusal reason sent, in bytes.
pub const MAX_REASON_LEN: usize = 512;
/// SPAKE2 identity string (symmetric mode): both sides use the same.
const SPAKE2_IDENTITY: &[u8] = b"p2p-transfer/2 admission";
/// First input of the key confirmation.
const CONFIRM_LABEL: &[u8] = b"p2p-transfer/2 confirm";
/// Input of the follow-up code's derivation.
const RESUME_LABEL: &[u8] = b"p2p-transfer/2 resume code";

/// The admission messages (postcard-encoded; the variant index is the first byte).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AdmitMessage {
    /// 0 — this side's SPAKE2 message (33 bytes), or none when it has no code.
    Intro { pake: Option<Vec<u8>> },
    /// 1 — the key confirmation (sent only when both Intros carried SPAKE2 messages).
    Confirm { mac: [u8; 32] },
    /// 2 — whether this side lets the peer in; a reason for a person when not.
    Verdict { accepted: bool, reason: String },
}

/// How the peer got in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admitted {
    /// It proved it knows the one-time code (in this connection, or in an earlier one
    /// of this process that this one reconnects).
    Code,
    /// It is in the trust store, under this name.
    Trusted { name: String },
    /// It proved this device's own key: another program of the same installation.
    SameDevice,
    /// It proved the key of the pinned device id.
    Pinned,
    /// Nobody vouches for it; a person decides at the offer (`receive --ask`).
    Unknown,
}

/// A peer's verified identity, from the connection (not from anything it claims).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    pub device_id: DeviceId,
    pub fingerprint: Fingerprint,
    pub admitted: Admitted,
    /// After a code was proven in this connection: a follow-up code both sides derive
    /// from the SPAKE2 key, for continuing an interrupted transfer in a new session (the
    /// code itself is used up). The same on both sides, known to nobody else.
    pub resume_code: Option<Code>,
}

#[derive(Debug, Clone)]
enum CodeState {
    None,
    Fresh(Code),
    /// Used by a successful session; only the key that used it may come back, with no
    /// code or with the follow-up code both sides derived (`follow_up`, which a
    /// restarted peer needs: it no longer knows it was paired).
    Used {
        follow_up: Option<Code>,
    },
    /// A failed attempt burnt it.
    Burnt,
}

#[derive(Debug)]
struct State {
    code: CodeState,
    pinned: Option<DeviceId>,
    /// A constraint without being a way in: the id a beacon announced.
    expected: Option<DeviceId>,
    trusted: Vec<TrustedDevice>,
    accept_unknown: bool,
    /// Keys that proved the code in this process (reconnections need no code).
    paired: Vec<Fingerprint>,
}

/// This side's rules for whom it lets in. Clones share their state: a code burnt or
/// used through one clone is burnt or used for all (a listener and its reconnections).
#[derive(Debug, Clone)]
pub struct Admission(Arc<Mutex<State>>);

impl Default for Admission {
    /// Nobody: no code, nothing trusted. Add what should get in.
    fn default() -> Self {
        Admission(Arc::new(Mutex::new(State {
            code: CodeState::None,
            pinned: None,
            expected: None,
            trusted: Vec::new(),
            accept_unknown: false,
            paired: Vec::new(),
        })))
    }
}

impl Admission {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Lets in the peer that proves it knows `code` (once).
    pub fn with_code(self, code: Code) -> Self {
        self.state().code = CodeState::Fresh(code);
        self
    }

    /// Refuses every peer but the one holding the key of `id`.
    pub fn with_pin(self, id: DeviceId) -> Self {
        self.state().pinned = Some(id);
        self
    }

    /// Lets in these devices without a code.
    pub fn with_trusted(self, devices: &[TrustedDevice]) -> Self {
        self.state().trusted = devices.to_vec();
        self
    }

    /// Lets in unknown devices as [`Admitted::Unknown`] (a person decides later).
    pub fn accepting_unknown(self, accept: bool) -> Self {
        self.state().accept_unknown = accept;
        self
    }

    /// Whether a one-time code is waiting to be used.
    pub fn has_code(&self) -> bool {
        matches!(self.state().code, CodeState::Fresh(_))
    }

    /// The pinned device id, if any.
    pub fn pinned(&self) -> Option<DeviceId> {
        self.state().pinned
    }

    /// Requires the peer to prove `id` without letting it in for that alone: the id a
    /// beacon announced (anyone can announce any id; the peer still needs a code, trust
    /// or a pin).
    pub fn expect(&self, id: Option<DeviceId>) {
        self.state().expected = id;
    }

    /// The code to prove to `peer`: a fresh one to anybody; after a session, the
    /// follow-up code only to the key that proved the first one (anybody else meets a
    /// used code, and cannot burn the follow-up).
    fn code_for(&self, peer: &Fingerprint) -> Option<Code> {
        let state = self.state();
        match &state.code {
            CodeState::Fresh(code) => Some(code.clone()),
            CodeState::Used { follow_up } if state.paired.contains(peer) => follow_up.clone(),
            CodeState::Used { .. } | CodeState::None | CodeState::Burnt => None,
        }
    }
}

/// What happened to the code in this exchange.
enum Pake {
    /// Neither side used a code.
    NotRun,
    Proven,
    Failed,
    /// This side has a code, the peer sent none.
    PeerWithout,
    /// The peer sent a SPAKE2 message, this side has no code.
    OursMissing,
}

/// Runs admission on a fresh TLS stream. On success the stream is ready for the
/// session's handshake and the peer's identity is known.
pub async fn admit<S>(
    stream: &mut S,
    channel: &Channel,
    admission: &Admission,
) -> Result<PeerIdentity, SecurityError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let code = admission.code_for(&channel.peer);
    let spake = code.as_ref().map(|code| {
        Spake2::<Ed25519Group>::start_symmetric(
            &Password::new(code.password()),
            &SpakeIdentity::new(SPAKE2_IDENTITY),
        )
    });
    let intro = AdmitMessage::Intro {
        pake: spake.as_ref().map(|(_, msg)| msg.clone()),
    };
    write(stream, &intro).await?;
    let theirs = match read(stream).await? {
        AdmitMessage::Intro { pake } => pake,
        other => return Err(unexpected("Intro", &other)),
    };
    let mut proven_key = None;
    let pake = match (spake, theirs) {
        (None, None) => Pake::NotRun,
        (Some(_), None) => Pake::PeerWithout,
        (None, Some(_)) => Pake::OursMissing,
        (Some((state, _)), Some(their_msg)) => {
            // A malformed SPAKE2 message fails like a wrong code.
            let key = state.finish(&their_msg).ok();
            let ours = key
                .as_deref()
                .map(|k| {
                    confirmation(k, channel.is_client, channel)
                        .finalize()
                        .into_bytes()
                        .into()
                })
                .unwrap_or([0u8; 32]);
            write(stream, &AdmitMessage::Confirm { mac: ours }).await?;
            let mac = match read(stream).await? {
                AdmitMessage::Confirm { mac } => mac,
                other => return Err(unexpected("Confirm", &other)),
            };
            match key {
                Some(k)
                    if confirmation(&k, !channel.is_client, channel)
                        .verify_slice(&mac)
                        .is_ok() =>
                {
                    proven_key = Some(k);
                    Pake::Proven
                }
                _ => Pake::Failed,
            }
        }
    };
    let follow_up = proven_key.as_deref().map(resume_code);
    let verdict = judge(admission, channel, &pake, follow_up.clone());
    let (accepted, reason) = match &verdict {
        Ok(_) => (true, String::new()),
        Err(e) => (false, e.to_string()),
    };
    let mut reason = reason;
    truncate(&mut reason, MAX_REASON_LEN);
    write(stream, &AdmitMessage::Verdict { accepted, reason }).await?;
    let peer_verdict = match read(stream).await {
        Ok(AdmitMessage::Verdict { accepted, reason }) => Ok((accepted, reason)),
        Ok(other) => Err(unexpected("Verdict", &other)),
        Err(e) => Err(e),
    };
    // Our own refusal speaks first: it is the more precise one — except "the peer sent
    // no code", where the peer knows why (its code was used or burnt already).
    if let (Err(SecurityError::CodeMissing { here: false }), Ok((false, reason))) =
        (&verdict, &peer_verdict)
    {
        return Err(SecurityError::RefusedByPeer(
            crate::text::printable_truncated(reason, MAX_REASON_LEN).into_owned(),
        ));
    }
    let admitted = verdict?;
    match peer_verdict? {
        (true, _) => {}
        (false, reason) => {
            // The peer refused although the code matched here: it has its own reasons
            // (a pin). The code stays used: it proved itself.
            return Err(SecurityError::RefusedByPeer(
                crate::text::printable_truncated(&reason, MAX_REASON_LEN).into_owned(),
            ));
        }
    }
    Ok(PeerIdentity {
        device_id: channel.peer.device_id(),
        fingerprint: channel.peer,
        admitted,
        resume_code: follow_up,
    })
}

/// The follow-up code of a proven SPAKE2 key `K`: `d = HMAC-SHA256(K, "p2p-transfer/2
/// resume code")`; number `1 + d[0] % 99`; words `(d[1]·256 + d[2]) % 2048` and
/// `(d[3]·256 + d[4]) % 2048` of the BIP-39 English list.
pub fn resume_code(key: &[u8]) -> Code {
    let mut mac = hmac(key);
    mac.update(RESUME_LABEL);
    let d = mac.finalize().into_bytes();
    let word = |hi: u8, lo: u8| (usize::from(hi) << 8 | usize::from(lo)) % 2048;
    Code::from_parts(
        1 + u16::from(d[0] % 99),
        &[word(d[1], d[2]), word(d[3], d[4])],
    )
}

/// This side's verdict on the peer, updating the code's state.
fn judge(
    admission: &Admission,
    channel: &Channel,
    pake: &Pake,
    follow_up: Option<Code>,
) -> Result<Admitted, SecurityError> {
    let mut state = admission.state();
    let peer = channel.peer;
    for pin in [state.pinned, state.expected].into_iter().flatten() {
        if !pin.matches(&peer) {
            return Err(SecurityError::NotPinned {
                expected: pin,
                proven: peer.device_id(),
            });
        }
    }
    // Without a code on both sides, the other ways in still count (a trusted device may
    // connect to a side that also waits for a code); the refusal names the code.
    let mut refusal = None;
    match pake {
        Pake::Proven => {
            state.code = CodeState::Used { follow_up };
            state.paired.push(peer);
            return Ok(Admitted::Code);
        }
        // A wrong try at the follow-up code burns it; the code itself was used.
        Pake::Failed if matches!(state.code, CodeState::Used { .. }) => {
            state.code = CodeState::Used { follow_up: None };
            return Err(SecurityError::CodeUsed);
        }
        Pake::Failed => {
            state.code = CodeState::Burnt;
            return Err(SecurityError::WrongCode);
        }
        Pake::PeerWithout => refusal = Some(SecurityError::CodeMissing { here: false }),
        // Never had a code here: the peer is judged like any other device (an unknown
        // one is told how to pair, a code included).
        Pake::OursMissing => {
            refusal = match state.code {
                CodeState::Used { .. } => Some(SecurityError::CodeUsed),
                CodeState::Burnt => Some(SecurityError::CodeBurnt),
                _ => None,
            }
        }
        Pake::NotRun => {}
    }
    if state.paired.contains(&peer) {
        return Ok(Admitted::Code);
    }
    if peer == channel.local {
        return Ok(Admitted::SameDevice);
    }
    if let Some(device) = state.trusted.iter().find(|d| d.matches(&peer)) {
        return Ok(Admitted::Trusted {
            name: device.name.clone(),
        });
    }
    if state.pinned.is_some() {
        return Ok(Admitted::Pinned);
    }
    if let Some(refusal) = refusal {
        return Err(refusal);
    }
    if state.accept_unknown {
        return Ok(Admitted::Unknown);
    }
    if matches!(state.code, CodeState::Used { .. }) {
        return Err(SecurityError::CodeUsed);
    }
    Err(SecurityError::UnknownDevice(peer.device_id()))
}

/// The `Confirm` mac its sender computes: ours with `by_client == channel.is_client`,
/// the peer's (to check it) with the other side.
fn confirmation(key: &[u8], by_client: bool, channel: &Channel) -> Hmac<Sha256> {
    let (sender, receiver) = if by_client == channel.is_client {
        (channel.local, channel.peer)
    } else {
        (channel.peer, channel.local)
    };
    let mut mac = hmac(key);
    mac.update(CONFIRM_LABEL);
    mac.update(if by_client { b"C" } else { b"S" });
    mac.update(&channel.exporter);
    mac.update(&sender.0);
    mac.update(&receiver.0);
    mac
}

fn hmac(key: &[u8]) -> Hmac<Sha256> {
    // HMAC takes keys of any length; the SPAKE2 key is 32 bytes.
    <Hmac<Sha256> as Mac>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC accepts every key length"))
}

fn truncate(text: &mut String, max: usize) {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
}

fn unexpected(expected: &'static str, got: &AdmitMessage) -> SecurityError {
    let got = match got {
        AdmitMessage::Intro { .. } => "Intro",
        AdmitMessage::Confirm { .. } => "Confirm",
        AdmitMessage::Verdict { .. } => "Verdict",
    };
    SecurityError::Protocol(format!("expected {expected}, got {got}"))
}

async fn write<S: AsyncWrite + Unpin>(
    stream: &mut S,
    message: &AdmitMessage,
) -> Result<(), SecurityError> {
    let body = postcard::to_stdvec(message).map_err(|e| SecurityError::Protocol(e.to_string()))?;
    let len = u16::try_from(body.len())
        .ok()
        .filter(|&n| usize::from(n) <= MAX_ADMIT_LEN)
        .ok_or_else(|| SecurityError::Protocol("admission message too long".into()))?;
    let mut frame = Vec::with_capacity(2 + body.len());
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(&body);
    stream.write_all(&frame).await.map_err(closed)?;
    stream.flush().await.map_err(closed)
}

async fn read<S: AsyncRead + Unpin>(stream: &mut S) -> Result<AdmitMessage, SecurityError> {
    let mut len = [0u8; 2];
    stream.read_exact(&mut len).await.map_err(closed)?;
    let len = usize::from(u16::from_be_bytes(len));
    if len > MAX_ADMIT_LEN {
        return Err(SecurityError::Protocol(format!(
            "admission message of {len} bytes (limit {MAX_ADMIT_LEN})"
        )));
    }
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).await.map_err(closed)?;
    let (message, rest) = postcard::take_from_bytes::<AdmitMessage>(&body)
        .map_err(|e| SecurityError::Protocol(format!("malformed admission message: {e}")))?;
    if !rest.is_empty() {
        return Err(SecurityError::Protocol(
            "trailing bytes after an admission message".into(),
        ));
    }
    if let AdmitMessage::Intro { pake: Some(m) } = &message {
        if m.len() != 33 {
            return Err(SecurityError::Protocol(format!(
                "a SPAKE2 message has 33 bytes, not {}",
                m.len()
            )));
        }
    }
    Ok(message)
}

fn closed(e: std::io::Error) -> SecurityError {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        SecurityError::Closed
    } else if e.kind() == std::io::ErrorKind::InvalidData {
        // rustls reports a record that fails authentication (tampering) this way.
        SecurityError::Tls(e.to_string())
    } else {
        SecurityError::Io(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(bytes: &[u8]) -> String {
        bytes
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// The examples of docs/protocol.md, section 0.3.
    #[test]
    fn admission_messages_match_the_spec() {
        let intro = postcard::to_stdvec(&AdmitMessage::Intro { pake: None }).unwrap();
        assert_eq!(hex(&intro), "00 00");
        let mut pake = vec![0x53];
        pake.extend([0xaa; 32]);
        let intro = postcard::to_stdvec(&AdmitMessage::Intro { pake: Some(pake) }).unwrap();
        assert_eq!(intro.len(), 36);
        assert_eq!(hex(&intro[..5]), "00 01 21 53 aa");
        let confirm = postcard::to_stdvec(&AdmitMessage::Confirm { mac: [7; 32] }).unwrap();
        assert_eq!(confirm.len(), 33);
        assert_eq!(hex(&confirm[..3]), "01 07 07");
        let verdict = postcard::to_stdvec(&AdmitMessage::Verdict {
            accepted: false,
            reason: "no".into(),
        })
        .unwrap();
        assert_eq!(hex(&verdict), "02 00 02 6e 6f");
        let verdict = postcard::to_stdvec(&AdmitMessage::Verdict {
            accepted: true,
            reason: String::new(),
        })
        .unwrap();
        assert_eq!(hex(&verdict), "02 01 00");
    }

    #[test]
    fn both_sides_derive_the_same_follow_up_code_from_the_same_key() {
        let (a, msg_a) = Spake2::<Ed25519Group>::start_symmetric(
            &Password::new(b"7-guitar-orbit"),
            &SpakeIdentity::new(SPAKE2_IDENTITY),
        );
        let (b, msg_b) = Spake2::<Ed25519Group>::start_symmetric(
            &Password::new(b"7-guitar-orbit"),
            &SpakeIdentity::new(SPAKE2_IDENTITY),
        );
        let (ka, kb) = (a.finish(&msg_b).unwrap(), b.finish(&msg_a).unwrap());
        assert_eq!(resume_code(&ka), resume_code(&kb));
        assert_ne!(resume_code(&ka).to_string(), "7-guitar-orbit");
        // Pinned for docs/protocol.md: K = 32 zero bytes.
        assert_eq!(resume_code(&[0; 32]).to_string(), "48-stairs-plunge");
    }

    #[test]
    fn a_spake2_message_is_33_bytes_starting_with_s() {
        let (_, msg) = Spake2::<Ed25519Group>::start_symmetric(
            &Password::new(b"7-guitar-orbit"),
            &SpakeIdentity::new(SPAKE2_IDENTITY),
        );
        assert_eq!(msg.len(), 33);
        assert_eq!(msg[0], b'S');
    }

    #[test]
    fn the_plaintext_refusal_is_a_version_1_error_frame() {
        let frame = super::super::tls::plaintext_refusal();
        let len = u32::from_be_bytes(frame[..4].try_into().unwrap()) as usize;
        assert_eq!(frame.len(), 4 + len);
        // Error (2), VersionMismatch (0), message, version 2.
        assert_eq!(hex(&frame[4..6]), "02 00");
        assert_eq!(*frame.last().unwrap(), 2);
        println!("{}", hex(&frame));
    }
}
