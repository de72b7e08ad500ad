//! The control protocol: JSON lines over the Unix socket, one request line, then one
//! response line, any number of times per connection.
//!
//! Requests: `{"op":"ping"}`, `{"op":"add","record":{…}}`, `{"op":"list"}`,
//! `{"op":"remove","which":"ROOT-PREFIX or NAME"}`, `{"op":"stop"}`. Every response has
//! `"ok"`; a failure has `"error"` (a sentence for people). docs/daemon.md has the exact
//! shapes.

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufRead, AsyncBufReadExt};

use super::{ShareRecord, ShareStats};

/// Longest request line the daemon reads, newline included.
pub const MAX_REQUEST: usize = 64 * 1024;
/// Longest response line a client reads (a list of many shares).
pub const MAX_RESPONSE: usize = 16 * 1024 * 1024;
/// The daemon's version, as `ping` reports it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// One request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase", deny_unknown_fields)]
pub enum Request {
    /// Is the daemon there? Answers its pid and version.
    Ping,
    /// Serve a share (replacing one with the same root) and persist it.
    Add {
        /// The share.
        record: ShareRecord,
    },
    /// The shares served, with their stats.
    List,
    /// Stop serving a share and forget it.
    Remove {
        /// A root hash prefix (hex) or the share's exact name.
        which: String,
    },
    /// Stop the daemon (as SIGTERM does).
    Stop,
}

/// The ops [`Request`] knows, for error messages.
pub const OPS: &str = "ping, add, list, remove, stop";

/// One share in a `list` response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listed {
    /// What is persisted.
    pub record: ShareRecord,
    /// How it is doing.
    pub stats: ShareStats,
}

/// The answer to `ping`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pong {
    /// The daemon's process id.
    pub pid: u32,
    /// The daemon's version.
    pub version: String,
}

/// One response; the fields present depend on the request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    /// Whether the request did what it asked.
    pub ok: bool,
    /// Why not, when `ok` is false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// `ping`: the daemon's process id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// `ping`: the daemon's version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// `add`: whether a share with the same root was replaced (false: added).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaced: Option<bool>,
    /// `remove`: the share removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub removed: Option<ShareRecord>,
    /// `list`: the shares.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shares: Option<Vec<Listed>>,
}

impl Response {
    /// `{"ok":true}`.
    pub fn ok() -> Self {
        Self {
            ok: true,
            ..Self::default()
        }
    }

    /// `{"ok":false,"error":…}`.
    pub fn error(message: impl Into<String>) -> Self {
        Self {
            ok: false,
            error: Some(message.into()),
            ..Self::default()
        }
    }

    /// The response as one line, newline included.
    pub fn to_line(&self) -> Vec<u8> {
        let mut line = serde_json::to_vec(self).unwrap_or_else(|_| {
            br#"{"ok":false,"error":"the response could not be encoded"}"#.to_vec()
        });
        line.push(b'\n');
        line
    }
}

/// Reads a request line: what went wrong, for the error response.
pub fn parse_request(line: &[u8]) -> Result<Request, String> {
    let value: serde_json::Value =
        serde_json::from_slice(line).map_err(|e| format!("the request is not JSON: {e}"))?;
    let op = match value.get("op") {
        Some(serde_json::Value::String(op)) => op.clone(),
        Some(_) => return Err("\"op\" must be a string".into()),
        None if !value.is_object() => return Err("the request must be a JSON object".into()),
        None => return Err(format!("the request has no \"op\" (one of {OPS})")),
    };
    if !OPS.split(", ").any(|known| known == op) {
        return Err(format!(
            "unknown op {:?} (one of {OPS})",
            crate::text::printable_truncated(&op, 64)
        ));
    }
    let allowed: &[&str] = match op.as_str() {
        "add" => &["op", "record"],
        "remove" => &["op", "which"],
        _ => &["op"],
    };
    let mut fields = value.as_object().map(|o| o.keys()).into_iter().flatten();
    if let Some(extra) = fields.find(|k| !allowed.contains(&k.as_str())) {
        return Err(format!(
            "bad {op} request: unknown field {:?}",
            crate::text::printable_truncated(extra, 64)
        ));
    }
    serde_json::from_value(value).map_err(|e| format!("bad {op} request: {e}"))
}

/// What [`read_line`] got.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// A whole line, without its newline.
    Line(Vec<u8>),
    /// The other side closed (nothing or only a partial line was pending).
    Closed,
    /// The line went past the limit (the rest of it was not read).
    TooLong,
}

/// Reads one `\n`-terminated line of at most `max` bytes (newline included) without
/// ever buffering more than that.
pub async fn read_line<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    max: usize,
) -> std::io::Result<Line> {
    let mut line = Vec::new();
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            return Ok(Line::Closed);
        }
        let room = max.saturating_sub(line.len());
        let window = &available[..available.len().min(room)];
        if let Some(end) = window.iter().position(|&b| b == b'\n') {
            line.extend_from_slice(&window[..end]);
            reader.consume(end + 1);
            return Ok(Line::Line(line));
        }
        if window.len() < available.len() || room == 0 {
            return Ok(Line::TooLong);
        }
        let taken = window.len();
        line.extend_from_slice(window);
        reader.consume(taken);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_are_bounded() {
        let mut input: &[u8] = b"abc\ndefgh\n";
        assert_eq!(
            read_line(&mut input, 4).await.unwrap(),
            Line::Line(b"abc".to_vec())
        );
        assert_eq!(read_line(&mut input, 4).await.unwrap(), Line::TooLong);
        let mut exact: &[u8] = b"abc\n";
        assert_eq!(
            read_line(&mut exact, 4).await.unwrap(),
            Line::Line(b"abc".to_vec())
        );
        let mut partial: &[u8] = b"abc";
        assert_eq!(read_line(&mut partial, 4).await.unwrap(), Line::Closed);
    }

    #[test]
    fn requests_parse_and_bad_ones_say_why() {
        assert_eq!(parse_request(br#"{"op":"ping"}"#), Ok(Request::Ping));
        assert_eq!(
            parse_request(br#"{"op":"remove","which":"abc"}"#),
            Ok(Request::Remove {
                which: "abc".into()
            })
        );
        assert!(parse_request(b"nope").unwrap_err().contains("not JSON"));
        assert!(parse_request(br#"{"op":"fly"}"#)
            .unwrap_err()
            .contains("unknown op \"fly\""));
        assert!(parse_request(br#"{"op":"remove"}"#)
            .unwrap_err()
            .contains("bad remove request"));
        assert!(parse_request(br#"{}"#).unwrap_err().contains("no \"op\""));
        assert!(parse_request(br#"{"op":"ping","extra":1}"#).is_err());
        assert!(parse_request(br#"{"op":"remove","which":"a","extra":1}"#).is_err());
    }
}
