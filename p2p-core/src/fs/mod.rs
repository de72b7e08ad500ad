//! The file system side of a transfer: what the sender reads and where the receiver
//! writes. Nothing here touches the network.
//!
//! - [`safe_path`] — validating the relative paths of an offer (the receiver never trusts
//!   the sender).
//! - [`source`] — walking the sender's paths into a manifest, and reading chunks.
//! - [`output`] — the receiver's output folder: pre-flight checks, `.part` files, atomic
//!   finalisation, resume state, all confined to the chosen folder by `cap-std`.
//! - [`unnamed`] — files that get their name only once complete (`O_TMPFILE`).
//! - [`resume_state`] — the format of the resume state file.

pub mod output;
pub mod resume_state;
pub mod safe_path;
pub mod source;
pub mod unnamed;
