//! Transfer parameters: defaults, limits, and the negotiation that settles them.

use crate::error::HandshakeError;
use crate::wire::{Capabilities, SessionConfig};

/// Default raw bytes per chunk.
pub const DEFAULT_CHUNK_SIZE: u32 = 1024 * 1024;
/// Default chunks in flight.
pub const DEFAULT_WINDOW_SIZE: u32 = 16;
/// Default zstd level.
pub const DEFAULT_COMPRESS_LEVEL: i8 = 3;
/// Smallest chunk accepted.
pub const MIN_CHUNK_SIZE: u32 = 1024;
/// Largest chunk accepted (the frame cap leaves room for headers).
pub const MAX_CHUNK_SIZE: u32 = 16 * 1024 * 1024;
/// Most chunks in flight accepted.
pub const MAX_WINDOW_SIZE: u32 = 1024;
/// Cap on `window × chunk`: what one transfer may buffer, whatever a side's budget.
pub const MAX_IN_FLIGHT_BYTES: u64 = 1024 * 1024 * 1024;
/// Default memory budget: the most `window × chunk` a side agrees to, so the most
/// chunk data a peer can make it hold for one transfer.
pub const DEFAULT_MEMORY_BUDGET: u64 = 64 * 1024 * 1024;
/// Valid zstd levels.
pub const COMPRESS_LEVELS: std::ops::RangeInclusive<i8> = -7..=22;

/// The defaults every front end starts from: 1 MiB chunks, 16 in flight, adaptive zstd
/// level 3.
pub fn default_config() -> SessionConfig {
    SessionConfig {
        chunk_size: DEFAULT_CHUNK_SIZE,
        window_size: DEFAULT_WINDOW_SIZE,
        compress: true,
        compress_level: DEFAULT_COMPRESS_LEVEL,
        adaptive: true,
    }
}

/// Checks that a configuration is within the protocol's limits.
pub fn validate(config: &SessionConfig) -> Result<(), HandshakeError> {
    if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&config.chunk_size) {
        return Err(HandshakeError::BadConfig(format!(
            "chunk size {} is outside {MIN_CHUNK_SIZE}..={MAX_CHUNK_SIZE}",
            config.chunk_size
        )));
    }
    if !(1..=MAX_WINDOW_SIZE).contains(&config.window_size) {
        return Err(HandshakeError::BadConfig(format!(
            "window size {} is outside 1..={MAX_WINDOW_SIZE}",
            config.window_size
        )));
    }
    if !COMPRESS_LEVELS.contains(&config.compress_level) {
        return Err(HandshakeError::BadConfig(format!(
            "compression level {} is outside -7..=22",
            config.compress_level
        )));
    }
    Ok(())
}

/// Shrinks `config` until `window × chunk` fits `budget` (clamped to
/// `MIN_CHUNK_SIZE..=MAX_IN_FLIGHT_BYTES`): chunks above the default size are halved
/// first (a big window of 1 MiB chunks keeps a long path full; a few huge chunks do
/// not), then the window, then chunks down to the minimum.
pub fn fit_budget(config: &mut SessionConfig, budget: u64) {
    let budget = budget.clamp(u64::from(MIN_CHUNK_SIZE), MAX_IN_FLIGHT_BYTES);
    while u64::from(config.window_size) * u64::from(config.chunk_size) > budget {
        if config.chunk_size > DEFAULT_CHUNK_SIZE {
            config.chunk_size /= 2;
        } else if config.window_size > 1 {
            config.window_size /= 2;
        } else if config.chunk_size > MIN_CHUNK_SIZE {
            config.chunk_size = (config.chunk_size / 2).max(MIN_CHUNK_SIZE);
        } else {
            break;
        }
    }
}

/// The responder's answer to a proposal: for chunk and window size the smaller of both
/// sides' values, compression only if both allow it, the proposer's level and adaptive
/// mode, then whatever the agreed capabilities rule out; finally `window × chunk` is
/// brought within the responder's memory `budget` ([`fit_budget`]).
///
/// Taking the minimum makes the rule symmetric: a receiver that states no preference
/// offers the protocol maxima, so the sender's settings win whichever side connects.
pub fn negotiate(
    proposed: &SessionConfig,
    local: &SessionConfig,
    agreed: Capabilities,
    budget: u64,
) -> Result<SessionConfig, HandshakeError> {
    validate(proposed)?;
    let mut config = SessionConfig {
        chunk_size: proposed.chunk_size.min(local.chunk_size),
        window_size: proposed.window_size.min(local.window_size),
        compress: proposed.compress && local.compress,
        compress_level: proposed.compress_level,
        adaptive: proposed.adaptive,
    };
    apply_capabilities(&mut config, agreed);
    fit_budget(&mut config, budget);
    Ok(config)
}

/// Protocol maxima: what a side that states no preference offers.
pub fn ceilings(compress: bool) -> SessionConfig {
    SessionConfig {
        chunk_size: MAX_CHUNK_SIZE,
        window_size: MAX_WINDOW_SIZE,
        compress,
        compress_level: DEFAULT_COMPRESS_LEVEL,
        adaptive: true,
    }
}

/// Turns off what the agreed capabilities do not allow.
pub fn apply_capabilities(config: &mut SessionConfig, agreed: Capabilities) {
    if !agreed.contains(Capabilities::WINDOWED) {
        config.window_size = 1;
    }
    if !agreed.contains(Capabilities::COMPRESSION) {
        config.compress = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responder_bounds_the_proposal_and_capabilities_switch_features_off() {
        let proposed = SessionConfig {
            chunk_size: 4 << 20,
            window_size: 64,
            ..default_config()
        };
        let local = SessionConfig {
            chunk_size: 1 << 20,
            window_size: 1024,
            ..default_config()
        };
        let budget = DEFAULT_MEMORY_BUDGET;
        let agreed = negotiate(&proposed, &local, Capabilities::supported(), budget).unwrap();
        assert_eq!((agreed.chunk_size, agreed.window_size), (1 << 20, 64));
        assert!(agreed.compress);
        let agreed = negotiate(&proposed, &local, Capabilities::FOLDER, budget).unwrap();
        assert_eq!(agreed.window_size, 1);
        assert!(!agreed.compress);
        let agreed = negotiate(
            &ceilings(true),
            &ceilings(true),
            Capabilities::all(),
            budget,
        )
        .unwrap();
        assert_eq!((agreed.chunk_size, agreed.window_size), (1 << 20, 64));
    }

    /// Issue 10, item 3: a peer asking for the largest chunk and window used to pin
    /// 1 GiB of the receiver's memory; the budget caps `window × chunk`.
    #[test]
    fn the_memory_budget_caps_what_a_peer_can_ask_for() {
        let greedy = SessionConfig {
            chunk_size: MAX_CHUNK_SIZE,
            window_size: MAX_WINDOW_SIZE,
            ..default_config()
        };
        for budget in [
            0,
            1,
            4096,
            1 << 20,
            10 << 20,
            DEFAULT_MEMORY_BUDGET,
            u64::MAX,
        ] {
            let agreed = negotiate(&greedy, &ceilings(true), Capabilities::all(), budget).unwrap();
            let held = u64::from(agreed.window_size) * u64::from(agreed.chunk_size);
            let cap = budget.clamp(u64::from(MIN_CHUNK_SIZE), MAX_IN_FLIGHT_BYTES);
            assert!(held <= cap, "budget {budget}: {held}");
            validate(&agreed).unwrap();
        }
        // A modest proposal within the budget is left alone.
        let agreed = negotiate(
            &default_config(),
            &ceilings(true),
            Capabilities::all(),
            DEFAULT_MEMORY_BUDGET,
        )
        .unwrap();
        assert_eq!((agreed.chunk_size, agreed.window_size), (1 << 20, 16));
    }

    #[test]
    fn out_of_range_proposals_are_refused() {
        for bad in [
            SessionConfig {
                chunk_size: 0,
                ..default_config()
            },
            SessionConfig {
                window_size: 0,
                ..default_config()
            },
            SessionConfig {
                compress_level: 23,
                ..default_config()
            },
        ] {
            let budget = DEFAULT_MEMORY_BUDGET;
            assert!(negotiate(&bad, &default_config(), Capabilities::all(), budget).is_err());
        }
    }
}
