//! The chunk model: how an offer divides into chunks ([`Layout`]), sets of chunk indices
//! ([`ChunkSet`]), and what an earlier attempt left on disk ([`ResumeInfo`]).
//!
//! Both the transfer machines and the file system side use these types, so they live
//! below both: this module depends on [`wire`](crate::wire) only, never on `fs` or
//! `transfer` (`tests/layering.rs` checks). `transfer` re-exports them, so
//! `p2p_core::transfer::ChunkSet` and friends keep working.

use std::collections::BTreeMap;

mod layout;
mod set;

pub use layout::Layout;
pub use set::ChunkSet;

/// What an earlier attempt of the same transfer left behind, as the receiver's resume
/// state vouches for it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResumeInfo {
    /// Per file: chunks durably in its `.part` file.
    pub have: BTreeMap<u32, ChunkSet>,
    /// Files already verified and in place.
    pub complete: Vec<u32>,
}
