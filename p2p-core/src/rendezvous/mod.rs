//! The rendezvous: a small, memory-only server that pairs two peers by a number (the
//! *nameplate*, the first part of a one-time code such as `7-guitar-orbit`) and relays a
//! few small, opaque messages between them, and its client, [`Mailbox`]. It is also the
//! swarms' **tracker**: peers announce the swarms they have, look up who has one, and
//! introduce themselves to an announcer through it ([`tracker::Tracker`]).
//!
//! The peers run SPAKE2 and then exchange encrypted candidate lists through the mailbox;
//! the server never sees the code, only the nameplate. On the same port number it
//! answers STUN Binding requests over UDP (so a peer learns its public address from the
//! server it already talks to), and it hands out per-session credentials for a coturn
//! configured with `use-auth-secret` ([`turn_credentials`]).
//!
//! The wire format is in [`protocol`] and, byte by byte, in `docs/protocol.md (section 9)`; how to
//! run a public server is in `docs/deploy.md`.
//!
//! ```no_run
//! # async fn demo() -> Result<(), p2p_core::rendezvous::RendezvousError> {
//! use p2p_core::rendezvous::Mailbox;
//!
//! // Sender
//! let (mut mailbox, nameplate) = Mailbox::allocate("rendezvous.example.net:4000").await?;
//! println!("code: {nameplate}-guitar-orbit");
//! mailbox.send(b"spake2 message").await?;
//! let answer = mailbox.recv().await?;
//! # let _ = answer;
//! // Receiver, given the code
//! let mut mailbox = Mailbox::claim("rendezvous.example.net:4000", 7).await?;
//! let first = mailbox.recv().await?;
//! # let _ = first;
//! # Ok(()) }
//! ```

pub mod client;
pub mod protocol;
pub mod server;
pub mod tracker;

pub use client::{Mailbox, RendezvousError};
pub use protocol::{
    ClientMessage, ServerMessage, TurnGrant, MAX_BODY, MAX_FRAME, PROTOCOL_VERSION,
};
pub use server::{
    serve, turn_credentials, Limits, Rate, Server, ServerConfig, ServerStats, TurnSecret,
    DEFAULT_TURN_LIFETIME,
};
pub use tracker::{Introduction, SwarmId, Tracker};
