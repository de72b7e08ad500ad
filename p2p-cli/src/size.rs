//! Human sizes on the command line: `512K`, `1M`, `4MiB`, `1G`, or plain bytes.

/// Parses a size with an optional binary suffix (K, M, G; an optional trailing `B` or
/// `iB`; case-insensitive).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let lower = t.to_ascii_lowercase();
    let stripped = lower
        .strip_suffix("ib")
        .or_else(|| lower.strip_suffix('b'))
        .unwrap_or(&lower);
    let (digits, mult) = match stripped.chars().last() {
        Some('k') => (&stripped[..stripped.len() - 1], 1u64 << 10),
        Some('m') => (&stripped[..stripped.len() - 1], 1 << 20),
        Some('g') => (&stripped[..stripped.len() - 1], 1 << 30),
        _ => (stripped, 1),
    };
    let n: u64 = digits
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a size (examples: 65536, 64K, 1M, 1G)"))?;
    n.checked_mul(mult)
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// A bandwidth limit in bytes per second; `None` is unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate(pub Option<u64>);

/// Parses a bandwidth limit: a size per second (`10M`, `512K`, `1G`, `10MB`), or
/// `unlimited` / `0` for no limit.
pub fn parse_rate(text: &str) -> Result<Rate, String> {
    if text.trim().eq_ignore_ascii_case("unlimited") {
        return Ok(Rate(None));
    }
    let stripped = text.trim().trim_end_matches("/s");
    match parse_size(stripped)? {
        0 => Ok(Rate(None)),
        n => Ok(Rate(Some(n))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suffixes() {
        assert_eq!(parse_size("512K"), Ok(512 * 1024));
        assert_eq!(parse_size("1m"), Ok(1 << 20));
        assert_eq!(parse_size("4MiB"), Ok(4 << 20));
        assert_eq!(parse_size("1GB"), Ok(1 << 30));
        assert_eq!(parse_size("65536"), Ok(65536));
        assert!(parse_size("fast").is_err());
        assert!(parse_size("99999999999G").is_err());
        assert_eq!(parse_rate("10M"), Ok(Rate(Some(10 << 20))));
        assert_eq!(parse_rate("512k"), Ok(Rate(Some(512 << 10))));
        assert_eq!(parse_rate("Unlimited"), Ok(Rate(None)));
        assert_eq!(parse_rate("0"), Ok(Rate(None)));
        assert!(parse_rate("fast").is_err());
    }
}
