//! Fuzz targets for every decoder of `p2p-core` that a hostile peer (or a file a peer
//! influenced) reaches. Each target is a plain `fn(&[u8])` that panics when an invariant
//! does not hold; the same functions run under AFL++ (`src/bin/afl_*.rs`, built with
//! `cargo afl build --features afl`) and under the plain replay driver
//! (`src/bin/replay.rs`, used by `ci.sh`).
//!
//! "No panic" is the floor; every target also checks what the decoder promises: the
//! size caps, round trips through the matching encoder, agreement between two decoders
//! of the same bytes, and the safety properties of what a decoded value lets through.

pub mod targets;

/// A named fuzz target.
pub struct Target {
    pub name: &'static str,
    pub run: fn(&[u8]),
}

/// Every target, in the order `run.sh all` runs them.
pub const TARGETS: &[Target] = &[
    Target {
        name: "frame",
        run: targets::frame::run,
    },
    Target {
        name: "message",
        run: targets::message::run,
    },
    Target {
        name: "resume_state",
        run: targets::resume_state::run,
    },
    Target {
        name: "beacon",
        run: targets::beacon::run,
    },
    Target {
        name: "stun",
        run: targets::stun::run,
    },
    Target {
        name: "swarm",
        run: targets::swarm::run,
    },
];

/// The target called `name`, if any.
pub fn target(name: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|t| t.name == name)
}
