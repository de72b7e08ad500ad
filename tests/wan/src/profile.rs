//! Link profiles: the named ones from issue 12 and custom specs such as
//! `rate=50mbit,rtt=30ms,loss=2%,queue=256k` (or a named profile with overrides:
//! `intercontinental,loss=0%`).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::model::LinkParams;

/// The smallest default queue: one bandwidth-delay product, but at least this.
pub const MIN_DEFAULT_QUEUE: u64 = 64 * 1024;
/// The largest Ethernet frame the link carries (MTU 1500 + 14-byte header).
pub const MAX_FRAME: u64 = 1514;

/// The same in both directions: a rate, a round trip (half of it each way), random loss
/// in each direction and a tail-drop queue.
#[derive(Clone, Debug, PartialEq)]
pub struct Profile {
    pub name: String,
    pub rate_bps: u64,
    pub rtt: Duration,
    /// Probability in [0, 1) in each direction.
    pub loss: f64,
    pub queue_bytes: u64,
}

/// The named profiles: name, rate (bit/s), RTT (ms), loss (%).
pub const NAMED: &[(&str, u64, u64, f64)] = &[
    ("dsl", 20_000_000, 40, 0.1),
    ("intercontinental", 100_000_000, 150, 0.5),
    ("lossy", 50_000_000, 30, 2.0),
    ("satellite", 50_000_000, 600, 0.5),
    ("lan", 1_000_000_000, 1, 0.0),
];

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ProfileError {
    #[error("unknown profile '{0}' (known: dsl, intercontinental, lossy, satellite, lan; or a spec like rate=50mbit,rtt=30ms,loss=2%,queue=256k)")]
    Unknown(String),
    #[error("'{0}' is not key=value (keys: rate, rtt, loss, queue)")]
    NotKeyValue(String),
    #[error("unknown key '{0}' (keys: rate, rtt, loss, queue)")]
    UnknownKey(String),
    #[error("'{0}' is given twice")]
    Duplicate(String),
    #[error("missing {0}= (a custom profile needs rate= and rtt=)")]
    Missing(&'static str),
    #[error("bad rate '{0}': a number with a unit bit, kbit, mbit or gbit (decimal, as tc), between 8kbit and 100gbit")]
    Rate(String),
    #[error("bad rtt '{0}': a number with a unit us, ms or s, at most 10s")]
    Rtt(String),
    #[error("bad loss '{0}': a percentage from 0% to below 100%, such as 0.5%")]
    Loss(String),
    #[error("bad queue '{0}': bytes with an optional unit b, k (KiB) or m (MiB), at least 1514 (one frame) and at most 1024m")]
    Queue(String),
    #[error("empty profile")]
    Empty,
}

/// A plain non-negative decimal: digits with at most one '.', nothing else (no sign,
/// exponent, inf or nan).
fn decimal(text: &str) -> Option<f64> {
    let valid = !text.is_empty()
        && text.chars().all(|c| c.is_ascii_digit() || c == '.')
        && text.chars().filter(|&c| c == '.').count() <= 1
        && text.chars().any(|c| c.is_ascii_digit());
    if valid {
        text.parse().ok()
    } else {
        None
    }
}

/// Splits "50mbit" into ("50", "mbit").
fn number_and_unit(text: &str) -> (&str, &str) {
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    text.split_at(split)
}

fn parse_rate(text: &str) -> Result<u64, ProfileError> {
    let bad = || ProfileError::Rate(text.to_string());
    let (number, unit) = number_and_unit(text);
    let scale = match unit.to_ascii_lowercase().as_str() {
        "bit" => 1.0,
        "kbit" => 1e3,
        "mbit" => 1e6,
        "gbit" => 1e9,
        _ => return Err(bad()),
    };
    let bps = decimal(number).ok_or_else(bad)? * scale;
    if !(8e3..=100e9).contains(&bps) {
        return Err(bad());
    }
    Ok(bps.round() as u64)
}

fn parse_rtt(text: &str) -> Result<Duration, ProfileError> {
    let bad = || ProfileError::Rtt(text.to_string());
    let (number, unit) = number_and_unit(text);
    let scale = match unit {
        "us" => 1e3,
        "ms" => 1e6,
        "s" => 1e9,
        _ => return Err(bad()),
    };
    let ns = decimal(number).ok_or_else(bad)? * scale;
    if ns > 10e9 {
        return Err(bad());
    }
    Ok(Duration::from_nanos(ns.round() as u64))
}

fn parse_loss(text: &str) -> Result<f64, ProfileError> {
    let bad = || ProfileError::Loss(text.to_string());
    let number = text.strip_suffix('%').ok_or_else(bad)?;
    let percent = decimal(number).ok_or_else(bad)?;
    if percent >= 100.0 {
        return Err(bad());
    }
    Ok(percent / 100.0)
}

fn parse_queue(text: &str) -> Result<u64, ProfileError> {
    let bad = || ProfileError::Queue(text.to_string());
    let (number, unit) = number_and_unit(text);
    let scale = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1u64,
        "k" => 1024,
        "m" => 1024 * 1024,
        _ => return Err(bad()),
    };
    if !number.chars().all(|c| c.is_ascii_digit()) || number.is_empty() {
        return Err(bad());
    }
    let bytes = number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(scale))
        .ok_or_else(bad)?;
    if !(MAX_FRAME..=1024 * 1024 * 1024).contains(&bytes) {
        return Err(bad());
    }
    Ok(bytes)
}

/// One bandwidth-delay product (rate × RTT) in bytes, at least [`MIN_DEFAULT_QUEUE`].
pub fn default_queue(rate_bps: u64, rtt: Duration) -> u64 {
    let bdp = u128::from(rate_bps) * rtt.as_nanos() / 8 / 1_000_000_000;
    (bdp as u64).max(MIN_DEFAULT_QUEUE)
}

impl Profile {
    /// A named profile, with its default queue.
    pub fn named(name: &str) -> Option<Profile> {
        let &(name, rate_bps, rtt_ms, loss_percent) = NAMED.iter().find(|p| p.0 == name)?;
        let rtt = Duration::from_millis(rtt_ms);
        Some(Profile {
            name: name.to_string(),
            rate_bps,
            rtt,
            loss: loss_percent / 100.0,
            queue_bytes: default_queue(rate_bps, rtt),
        })
    }

    /// A named profile, a custom spec, or a named profile followed by overrides.
    pub fn parse(spec: &str) -> Result<Profile, ProfileError> {
        let spec = spec.trim();
        if spec.is_empty() {
            return Err(ProfileError::Empty);
        }
        let mut items = spec.split(',').map(str::trim).peekable();
        let base = match items.peek() {
            Some(first) if !first.contains('=') => {
                let name = items.next().unwrap_or_default();
                Some(Profile::named(name).ok_or_else(|| ProfileError::Unknown(name.into()))?)
            }
            _ => None,
        };
        let (mut rate, mut rtt, mut loss, mut queue) = (None, None, None, None);
        for item in items {
            let (key, value) = item
                .split_once('=')
                .ok_or_else(|| ProfileError::NotKeyValue(item.into()))?;
            let (key, value) = (key.trim(), value.trim());
            let duplicate = || ProfileError::Duplicate(key.to_string());
            match key {
                "rate" if rate.is_none() => rate = Some(parse_rate(value)?),
                "rtt" if rtt.is_none() => rtt = Some(parse_rtt(value)?),
                "loss" if loss.is_none() => loss = Some(parse_loss(value)?),
                "queue" if queue.is_none() => queue = Some(parse_queue(value)?),
                "rate" | "rtt" | "loss" | "queue" => return Err(duplicate()),
                _ => return Err(ProfileError::UnknownKey(key.into())),
            }
        }
        let customised = rate.is_some() || rtt.is_some() || loss.is_some() || queue.is_some();
        let (name, rate_bps, rtt, loss) = match &base {
            Some(base) => (
                if customised {
                    format!("{}+custom", base.name)
                } else {
                    base.name.clone()
                },
                rate.unwrap_or(base.rate_bps),
                rtt.unwrap_or(base.rtt),
                loss.unwrap_or(base.loss),
            ),
            None => (
                "custom".to_string(),
                rate.ok_or(ProfileError::Missing("rate"))?,
                rtt.ok_or(ProfileError::Missing("rtt"))?,
                loss.unwrap_or(0.0),
            ),
        };
        Ok(Profile {
            name,
            rate_bps,
            rtt,
            loss,
            queue_bytes: queue.unwrap_or_else(|| default_queue(rate_bps, rtt)),
        })
    }

    /// One direction of the link: half the RTT as one-way delay.
    pub fn link_params(&self) -> LinkParams {
        LinkParams {
            rate_bps: self.rate_bps,
            delay_ns: (self.rtt.as_nanos() / 2) as u64,
            loss: self.loss,
            queue_bytes: self.queue_bytes,
        }
    }

    /// The link's rate in MiB/s of frames (what a transfer can reach, before headers).
    pub fn rate_mib_per_s(&self) -> f64 {
        self.rate_bps as f64 / 8.0 / 1024.0 / 1024.0
    }
}

impl FromStr for Profile {
    type Err = ProfileError;
    fn from_str(spec: &str) -> Result<Profile, ProfileError> {
        Profile::parse(spec)
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} Mbit/s each way, RTT {} ms, loss {}% each way, queue {} bytes",
            self.name,
            self.rate_bps as f64 / 1e6,
            self.rtt.as_secs_f64() * 1e3,
            self.loss * 100.0,
            self.queue_bytes
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_profiles_match_the_issue() {
        let p = Profile::named("intercontinental").expect("known");
        assert_eq!(p.rate_bps, 100_000_000);
        assert_eq!(p.rtt, Duration::from_millis(150));
        assert!((p.loss - 0.005).abs() < 1e-12);
        // One BDP: 100 Mbit/s × 150 ms = 1,875,000 bytes.
        assert_eq!(p.queue_bytes, 1_875_000);
        let params = p.link_params();
        assert_eq!(params.delay_ns, 75_000_000);
        // lan: 1 Gbit/s × 1 ms = 125,000 bytes; dsl: 20 Mbit/s × 40 ms = 100,000.
        assert_eq!(Profile::named("lan").map(|p| p.queue_bytes), Some(125_000));
        assert_eq!(Profile::named("dsl").map(|p| p.queue_bytes), Some(100_000));
        for (name, ..) in NAMED {
            assert_eq!(Profile::parse(name).map(|p| p.name), Ok(name.to_string()));
        }
        assert_eq!(
            Profile::parse("wifi"),
            Err(ProfileError::Unknown("wifi".into()))
        );
    }

    #[test]
    fn custom_specs_parse() {
        let p = Profile::parse("rate=50mbit,rtt=30ms,loss=2%,queue=256k").expect("valid");
        assert_eq!(p.name, "custom");
        assert_eq!(p.rate_bps, 50_000_000);
        assert_eq!(p.rtt, Duration::from_millis(30));
        assert!((p.loss - 0.02).abs() < 1e-12);
        assert_eq!(p.queue_bytes, 262_144);
        // Defaults: no loss, one BDP (but at least 64 KiB) of queue.
        let p = Profile::parse("rate=1.5Mbit, rtt=250us").expect("valid");
        assert_eq!(p.rate_bps, 1_500_000);
        assert_eq!(p.rtt, Duration::from_micros(250));
        assert_eq!(p.loss, 0.0);
        assert_eq!(p.queue_bytes, MIN_DEFAULT_QUEUE);
        // A named profile with overrides.
        let p = Profile::parse("intercontinental,loss=0%,queue=4m").expect("valid");
        assert_eq!(p.name, "intercontinental+custom");
        assert_eq!(p.rate_bps, 100_000_000);
        assert_eq!(p.loss, 0.0);
        assert_eq!(p.queue_bytes, 4 * 1024 * 1024);
    }

    #[test]
    fn bad_specs_are_refused_with_the_reason() {
        let cases: &[(&str, ProfileError)] = &[
            ("", ProfileError::Empty),
            ("rtt=30ms", ProfileError::Missing("rate")),
            ("rate=50mbit", ProfileError::Missing("rtt")),
            (
                "rate=50mbit,rtt=30ms,rate=1gbit",
                ProfileError::Duplicate("rate".into()),
            ),
            (
                "rate=50mbit,rtt=30ms,jitter=1ms",
                ProfileError::UnknownKey("jitter".into()),
            ),
            ("rate=50mbit,rtt", ProfileError::NotKeyValue("rtt".into())),
            ("rate=50,rtt=30ms", ProfileError::Rate("50".into())),
            ("rate=50mb,rtt=30ms", ProfileError::Rate("50mb".into())),
            ("rate=-5mbit,rtt=30ms", ProfileError::Rate("-5mbit".into())),
            (
                "rate=1e3mbit,rtt=30ms",
                ProfileError::Rate("1e3mbit".into()),
            ),
            ("rate=0mbit,rtt=30ms", ProfileError::Rate("0mbit".into())),
            ("rate=50mbit,rtt=30", ProfileError::Rtt("30".into())),
            ("rate=50mbit,rtt=11s", ProfileError::Rtt("11s".into())),
            (
                "rate=50mbit,rtt=30ms,loss=2",
                ProfileError::Loss("2".into()),
            ),
            (
                "rate=50mbit,rtt=30ms,loss=100%",
                ProfileError::Loss("100%".into()),
            ),
            (
                "rate=50mbit,rtt=30ms,loss=1.2.3%",
                ProfileError::Loss("1.2.3%".into()),
            ),
            (
                "rate=50mbit,rtt=30ms,queue=1000",
                ProfileError::Queue("1000".into()),
            ),
            (
                "rate=50mbit,rtt=30ms,queue=1.5m",
                ProfileError::Queue("1.5m".into()),
            ),
            (
                "rate=50mbit,rtt=30ms,queue=4g",
                ProfileError::Queue("4g".into()),
            ),
            (
                "lossy,satellite",
                ProfileError::NotKeyValue("satellite".into()),
            ),
        ];
        for (spec, expected) in cases {
            assert_eq!(Profile::parse(spec).as_ref(), Err(expected), "{spec}");
        }
    }
}
