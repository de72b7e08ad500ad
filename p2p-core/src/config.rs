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
/// Cap on `window × chunk`: what one transfer may buffer.
pub const MAX_IN_FLIGHT_BYTES: u64 = 1024 * 1024 * 1024;
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

/// The responder's answer to a proposal: for chunk and window size the smaller of both
/// sides' values, compression only if both allow it, the proposer's level and adaptive
/// mode, then whatever the agreed capabilities rule out. `window × chunk` is kept within
/// [`MAX_IN_FLIGHT_BYTES`] by shrinking the window.
///
/// Taking the minimum makes the rule symmetric: a receiver that states no preference
/// offers the protocol maxima, so the sender's settings win whichever side connects.
pub fn negotiate(
    proposed: &SessionConfig,
    local: &SessionConfig,
    agreed: Capabilities,
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
    while u64::from(config.window_size) * u64::from(config.chunk_size) > MAX_IN_FLIGHT_BYTES {
        config.window_size = (config.window_size / 2).max(1);
    }
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
        let agreed = negotiate(&proposed, &local, Capabilities::supported()).unwrap();
        assert_eq!((agreed.chunk_size, agreed.window_size), (1 << 20, 64));
        assert!(agreed.compress);
        let agreed = negotiate(&proposed, &local, Capabilities::FOLDER).unwrap();
        assert_eq!(agreed.window_size, 1);
        assert!(!agreed.compress);
        let agreed = negotiate(&ceilings(true), &ceilings(true), Capabilities::all()).unwrap();
        assert!(
            u64::from(agreed.window_size) * u64::from(agreed.chunk_size) <= MAX_IN_FLIGHT_BYTES
        );
        assert_eq!(agreed.chunk_size, MAX_CHUNK_SIZE);
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
            assert!(negotiate(&bad, &default_config(), Capabilities::all()).is_err());
        }
    }
}
