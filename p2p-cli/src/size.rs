//! Human sizes on the command line: `1048576`, `500K`, `500KB`, `1.5M`, `2GiB`,
//! `2 GiB`. K, M and G are powers of 1024 whichever way they are written (`1M`, `1MB`
//! and `1MiB` are all 1 MiB), as the bars and summaries print them.
//!
//! Parsing is the `parse-size` crate, configured for binary units: it handles
//! fractions (`1.5M` rounds to the nearest byte), spaces, case and overflow exactly,
//! and refuses signs and stray characters. This file only words the errors.

/// The unit rule, for help texts and error messages.
pub const UNIT_RULE: &str = "K/M/G are powers of 1024";

/// Parses a size: a number (fractions allowed) with an optional unit K, M, G, T (an
/// optional trailing `B` or `iB`; case and spaces do not matter).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let config = parse_size::Config::new().with_binary();
    config.parse_size(text.trim()).map_err(|e| match e {
        parse_size::Error::PosOverflow => format!("{text:?} is too large"),
        _ => format!(
            "{text:?} is not a size: give a number and an optional unit, e.g. 65536, 500K, \
             1.5M, 2GiB ({UNIT_RULE})"
        ),
    })
}

/// A bandwidth limit in bytes per second; `None` is unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate(pub Option<u64>);

/// Parses a bandwidth limit: a size per second (`10M`, `512K`, `1.5G`, `10MB/s`), or
/// `unlimited` / `0` for no limit.
pub fn parse_rate(text: &str) -> Result<Rate, String> {
    let trimmed = text.trim();
    if trimmed.eq_ignore_ascii_case("unlimited") {
        return Ok(Rate(None));
    }
    let per_second = trimmed
        .strip_suffix("/s")
        .or_else(|| trimmed.strip_suffix("/S"))
        .unwrap_or(trimmed);
    let bytes = parse_size(per_second).map_err(|_| {
        format!(
            "{text:?} is not a rate: give bytes per second, e.g. 10M, 512K, 1.5G, or \
             unlimited ({UNIT_RULE})"
        )
    })?;
    Ok(Rate((bytes > 0).then_some(bytes)))
}

/// Checks the size and window flags against the protocol's limits before anything
/// connects: a value out of range is a command-line error (exit code 2) that names the
/// flag and the allowed range.
pub fn check_transfer_flags(transfer: &crate::TransferArgs) -> Result<(), crate::exit::Usage> {
    use p2p_core::config::{MAX_CHUNK_SIZE, MAX_IN_FLIGHT_BYTES, MAX_WINDOW_SIZE, MIN_CHUNK_SIZE};
    let out_of_range = |flag: &str, value: u64, low: u64, high: u64| {
        crate::exit::Usage(format!(
            "{flag} {} is out of range: give {} to {} ({low} to {high} bytes; {UNIT_RULE})",
            shown(value),
            shown(low),
            shown(high)
        ))
    };
    if let Some(chunk) = transfer.chunk_size {
        let (low, high) = (u64::from(MIN_CHUNK_SIZE), u64::from(MAX_CHUNK_SIZE));
        if !(low..=high).contains(&chunk) {
            return Err(out_of_range("--chunk-size", chunk, low, high));
        }
    }
    if let Some(window) = transfer.window_size {
        if !(1..=MAX_WINDOW_SIZE).contains(&window) {
            return Err(crate::exit::Usage(format!(
                "--window-size {window} is out of range: give 1 to {MAX_WINDOW_SIZE} (chunks in \
                 flight)"
            )));
        }
    }
    let (low, high) = (u64::from(MIN_CHUNK_SIZE), MAX_IN_FLIGHT_BYTES);
    if !(low..=high).contains(&transfer.memory_budget) {
        return Err(out_of_range(
            "--memory-budget",
            transfer.memory_budget,
            low,
            high,
        ));
    }
    Ok(())
}

/// A byte count as the user would type it: `16M`, `1K`, `1536`.
fn shown(bytes: u64) -> String {
    const UNITS: [(u64, &str); 3] = [(1 << 30, "G"), (1 << 20, "M"), (1 << 10, "K")];
    UNITS
        .iter()
        .find(|(unit, _)| bytes >= *unit && bytes.is_multiple_of(*unit))
        .map_or_else(
            || bytes.to_string(),
            |(unit, suffix)| format!("{}{suffix}", bytes / unit),
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn plain_bytes() {
        assert_eq!(parse_size("1048576"), Ok(MIB));
        assert_eq!(parse_size("65536"), Ok(65536));
        assert_eq!(parse_size("0"), Ok(0));
    }

    #[test]
    fn k_m_g_are_powers_of_1024_however_written() {
        for text in ["1M", "1m", "1MB", "1mb", "1MiB", "1 MiB", " 1M "] {
            assert_eq!(parse_size(text), Ok(MIB), "{text}");
        }
        assert_eq!(parse_size("500K"), Ok(500 * 1024));
        assert_eq!(parse_size("500KB"), Ok(500 * 1024));
        assert_eq!(parse_size("500KiB"), Ok(500 * 1024));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("2 GiB"), Ok(2 << 30));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size("1T"), Ok(1 << 40));
    }

    #[test]
    fn fractions_round_to_the_nearest_byte() {
        assert_eq!(parse_size("1.5M"), Ok(MIB + MIB / 2));
        assert_eq!(parse_size("0.5K"), Ok(512));
        assert_eq!(parse_size("1.5 GiB"), Ok(3 << 29));
    }

    #[test]
    fn rejected_sizes_name_the_input() {
        for bad in ["-1", "1.5.5M", "10Q", "", "   ", "fast", "1M2", "M"] {
            let error = parse_size(bad).expect_err(bad);
            assert!(
                error.starts_with(&format!("{bad:?} is not a size")),
                "{bad:?}: {error}"
            );
            assert!(error.contains("powers of 1024"), "{error}");
        }
        assert_eq!(
            parse_size("99999999999G"),
            Err("\"99999999999G\" is too large".to_owned())
        );
    }

    #[test]
    fn sizes_are_shown_as_typed() {
        assert_eq!(shown(16 << 20), "16M");
        assert_eq!(shown(1024), "1K");
        assert_eq!(shown(1 << 30), "1G");
        assert_eq!(shown(1536), "1536");
        assert_eq!(shown(0), "0");
    }

    #[test]
    fn rates() {
        assert_eq!(parse_rate("10M"), Ok(Rate(Some(10 * MIB))));
        assert_eq!(parse_rate("10MB/s"), Ok(Rate(Some(10 * MIB))));
        assert_eq!(parse_rate("512k"), Ok(Rate(Some(512 << 10))));
        assert_eq!(parse_rate("1.5M"), Ok(Rate(Some(MIB + MIB / 2))));
        assert_eq!(parse_rate("2 GiB"), Ok(Rate(Some(2 << 30))));
        assert_eq!(parse_rate("1048576"), Ok(Rate(Some(MIB))));
        assert_eq!(parse_rate("Unlimited"), Ok(Rate(None)));
        assert_eq!(parse_rate("0"), Ok(Rate(None)));
    }

    #[test]
    fn rejected_rates_name_the_input() {
        for bad in ["-1", "1.5.5M", "10Q", "", "fast", "10M/min"] {
            let error = parse_rate(bad).expect_err(bad);
            assert!(
                error.starts_with(&format!("{bad:?} is not a rate")),
                "{bad:?}: {error}"
            );
        }
    }
}
