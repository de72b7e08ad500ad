//! Moving a manifest of files from one peer to the other.
//!
//! The protocol logic lives in two sans-IO state machines, [`Sender`] and [`Receiver`]:
//! no sockets, no files, no clock — time arrives as a `now` argument, bytes from disk and
//! from the peer arrive through `handle_*` methods, and everything the machine wants done
//! leaves through `poll_*` methods (quinn-proto's vocabulary):
//!
//! ```text
//!            handle_message(msg, now)          poll_transmit() -> Message
//!   peer ──────────────────────────▶ machine ──────────────────────────▶ peer
//!            handle_read / handle_written      poll_read() / poll_io() -> disk work
//!   disk ──────────────────────────▶         ──────────────────────────▶ disk
//!            handle_timeout(now)               poll_timeout() -> Option<Instant>
//! ```
//!
//! [`driver`] runs a machine over a framed stream and the file system. Because the
//! machines never block, the tests in `tests.rs` run a sender and a receiver against each
//! other on a virtual clock with loss, reordering and corruption, without a socket.

mod disk;
mod driver;
mod incoming;
mod receiver;
mod sender;
#[cfg(test)]
mod tests;
mod window;

pub use crate::chunk::{ChunkSet, Layout, ResumeInfo};
pub use driver::{
    receive_offer, send_manifest, ReceiveOptions, SendOptions, TransferSummary, Watch, IDLE_LIMIT,
};
pub use incoming::{Decision, IncomingOffer, OfferedEntry, Received};
pub use receiver::{IoRequest, Receiver};
pub use sender::{ReadPurpose, ReadRequest, Sender};
pub use window::{Window, DEFAULT_MAX_ATTEMPTS, DEFAULT_RTO};
