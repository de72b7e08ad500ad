//! # p2p-core
//!
//! Everything needed to move files and folders between two peers: establish a session,
//! negotiate parameters, stream chunks through a sliding window, verify, and place files
//! safely. The CLI (`p2p-cli`) and the GUI (`p2p-gui`) are thin front ends over this crate;
//! they render [`TransferEvent`]s and never see a socket or a frame.
//!
//! ## Layout
//!
//! Data flows top to bottom when sending and bottom to top when receiving:
//!
//! | module | owns |
//! |---|---|
//! | [`session`] | [`P2PSession`]: connect/accept, then any number of sends and receives |
//! | [`handshake`] | `Hello`/`Config` exchange, version check, capability intersection |
//! | [`transfer`] | sans-IO [`Sender`]/[`Receiver`] machines and their async driver |
//! | [`wire`] | the [`Message`] enum and the length-prefixed frame codec |
//! | [`net`] | the connectivity layer: dial/listen, TLS 1.3, device identities, codes (SPAKE2), trusted devices; hands out authenticated [`net::Connection`]s |
//! | [`transport`] | the byte-stream abstraction sessions run on |
//! | [`fs`] | manifests, safe paths, `.part` files, atomic finalisation, resume state |
//! | [`chunk`] | the chunk model shared by `transfer` and `fs`: an offer's [`Layout`](chunk::Layout), [`ChunkSet`](chunk::ChunkSet), [`ResumeInfo`](chunk::ResumeInfo) |
//! | [`compress`], [`verify`], [`throttle`] | adaptive zstd, CRC-32 and SHA-256, token bucket |
//! | [`discovery`] | LAN beacons: announcing a receiver, finding one by name or id |
//! | [`nat`] | STUN client (RFC 8489): public address and NAT mapping behaviour |
//! | [`rendezvous`] | the rendezvous server (mailboxes by nameplate, STUN, TURN credentials) and its client |
//! | [`event`] | [`TransferEvent`] and [`EventSink`] |
//! | [`history`] | the record of past transfers (JSON lines in the data directory) |
//! | [`config`], [`error`], [`reconnect`], [`interrupt`] | defaults and limits; typed errors; retry policy; stopping on purpose (Ctrl+C, Cancel) |
//! | [`settings`] | the user's saved settings (JSON in the config folder), shared by the front ends |
//! | [`text`] | showing what a peer chose (names, paths, error messages) with invisible and control characters escaped |
//!
//! Layering rules keep the imports free of cycles (`tests/layering.rs` checks them):
//! [`chunk`] imports neither [`fs`] nor [`transfer`]; nothing in [`fs`] imports
//! [`transfer`]; [`wire`] imports nothing from [`error`] (it defines
//! [`WireError`](wire::WireError), which [`error`] re-exports).
//!
//! ## Example
//!
//! ```no_run
//! # async fn demo() -> p2p_core::Result<()> {
//! use p2p_core::{P2PSession, ReceiveOptions, SessionOptions, NoEvents};
//!
//! // Receiver: accept one session and receive until the sender closes it.
//! let listener = p2p_core::transport::listen("0.0.0.0:14567").await?;
//! let mut session = P2PSession::accept(&listener, &SessionOptions::default()).await?;
//! let options = ReceiveOptions { output_dir: "downloads".into(), overwrite: false };
//! for summary in session.run_event_loop(&options, &NoEvents).await? {
//!     println!("received {} files", summary.files);
//! }
//! # Ok(()) }
//! ```

pub mod chunk;
pub mod compress;
pub mod config;
pub mod daemon;
pub mod discovery;
pub mod error;
pub mod event;
pub mod fs;
pub mod handshake;
pub mod history;
pub mod interrupt;
pub mod nat;
pub mod net;
pub mod reconnect;
pub mod rendezvous;
pub mod session;
pub mod settings;
pub mod swarm;
pub mod text;
pub mod throttle;
pub mod transfer;
pub mod transport;
pub mod verify;
pub mod wire;

pub use error::{Error, Result};
pub use event::{Direction, EventSink, NoEvents, TransferEvent};
pub use interrupt::Interrupt;
pub use session::{P2PSession, Role, SessionOptions};
pub use transfer::{
    Decision, IncomingOffer, ReceiveOptions, Received, Receiver, Sender, TransferSummary,
};
pub use wire::{Capabilities, Message, SessionConfig, PROTOCOL_VERSION};
