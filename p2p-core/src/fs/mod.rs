//! The file system side of a transfer: what the sender reads and where the receiver
//! writes. Nothing here touches the network.
//!
//! - [`safe_path`] — validating the relative paths of an offer (the receiver never trusts
//!   the sender).
//! - [`source`] — walking the sender's paths into a manifest, and reading chunks.
//! - [`output`] — the receiver's output folder: pre-flight checks, `.part` files, atomic
//!   finalisation, all confined to the chosen folder by `cap-std`.

pub mod output;
pub mod safe_path;
pub mod source;
