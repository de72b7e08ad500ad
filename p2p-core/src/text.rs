//! Showing text that another party chose: a peer's device name, the paths of an offer,
//! the message of a peer's `Error`, a LAN beacon's name, a STUN server's reason phrase.
//!
//! Such text may carry terminal escape sequences (`ESC ] 0 ; … BEL` retitles a window,
//! `ESC [ 2 J` clears the screen), carriage returns and line feeds that forge whole
//! lines, and Unicode bidi controls that reorder what is shown: `invoice\u{202E}fdp.exe`
//! displays as `invoiceexe.pdf`. [`printable`] makes such text safe to show by escaping
//! every character that is invisible or changes how the text around it is displayed;
//! everything else, every script and emoji included, passes unchanged and unallocated.
//! This module only transforms strings: deciding where to call it is the front ends'
//! job (and [`crate::error`]'s, for errors that quote a peer).
//!
//! ## What is escaped
//!
//! - every control character: C0 (U+0000–U+001F), DEL (U+007F), C1 (U+0080–U+009F);
//! - the line and paragraph separators U+2028 and U+2029;
//! - every Unicode *default-ignorable* code point (characters a renderer draws as
//!   nothing) except the variation selectors, which only choose between two looks of the
//!   character before them (text or emoji ❤️, an ideograph variant): the bidi controls
//!   U+061C, U+200E, U+200F, U+202A–U+202E, U+2066–U+2069; the zero-width U+200B–U+200D,
//!   U+2060–U+2064 and U+FEFF; the soft hyphen U+00AD; U+034F; the Hangul fillers U+115F,
//!   U+1160, U+3164, U+FFA0; U+17B4, U+17B5, U+180E, U+206A–U+206F, U+FFF0–U+FFF8,
//!   U+1BCA0–U+1BCA3, U+1D173–U+1D17A; and the tag characters U+E0000–U+E0FFF (outside
//!   the variation selectors U+E0100–U+E01EF);
//! - the interlinear annotation characters U+FFF9–U+FFFB, which renderers may hide.
//!
//! Joiners are escaped too, so emoji sequences built with U+200D (👨‍👩‍👧) and the
//! flags of England, Scotland and Wales (built with tag characters) show their parts
//! and escapes: a name's look must never depend on characters nobody can see.
//!
//! ## How
//!
//! Line feed, carriage return and tab become `\n`, `\r` and `\t`; every other escaped
//! character becomes `\u{…}` with its code point in lowercase hex, as Rust's `{:?}`
//! writes it: ESC is `\u{1b}`, the right-to-left override `\u{202e}`.
//!
//! The backslash itself is *not* escaped. The escaping is for a person to read, not a
//! reversible encoding: a peer that sends the eight characters `\u{202e}` is shown those
//! eight harmless characters, exactly what the real override is shown as, and in both
//! cases nothing is hidden or reordered. Leaving backslashes alone keeps ordinary text
//! (`C:\Users`) as it is and makes [`printable`] idempotent, so text escaped where it
//! entered (a peer's error message) and again where it is printed never shows `\\u{…}`.
//!
//! ```
//! use p2p_core::text::printable;
//!
//! assert_eq!(printable("invoice\u{202E}fdp.exe"), r"invoice\u{202e}fdp.exe");
//! assert_eq!(printable("\u{1b}]0;pwned\u{7}\r\ndone"), r"\u{1b}]0;pwned\u{7}\r\ndone");
//! assert_eq!(printable("Café 日本 🎉"), "Café 日本 🎉");
//! ```

use std::borrow::Cow;
use std::fmt::{self, Write as _};

/// `text` with every character that is invisible or changes how text is displayed
/// escaped visibly (see the [module documentation](self) for the set and the scheme).
/// Borrows when there is nothing to escape, which is almost always.
pub fn printable(text: &str) -> Cow<'_, str> {
    escape(text, EscapeLineFeed::Yes)
}

/// Like [`printable`], but a line feed is kept as a line break: for a message that this
/// program composed of several lines on purpose (a listing, an error naming several
/// receivers) and whose parts from a peer were already made [`printable`]. A carriage
/// return is still escaped, so nothing can overwrite a line that is already shown.
pub fn printable_lines(text: &str) -> Cow<'_, str> {
    escape(text, EscapeLineFeed::No)
}

/// [`printable`] text of at most `max_bytes` bytes: it stops before the first character
/// or escape that would not fit whole, so the result never ends in a cut `\u{…}`.
///
/// ```
/// use p2p_core::text::printable_truncated;
///
/// assert_eq!(printable_truncated("naïve", 3), "na");
/// assert_eq!(printable_truncated("ab\u{202E}cd", 8), "ab");
/// assert_eq!(printable_truncated("ab\u{202E}cd", 10), r"ab\u{202e}");
/// ```
pub fn printable_truncated(text: &str, max_bytes: usize) -> Cow<'_, str> {
    let Some(first) = text.find(needs_escape) else {
        return Cow::Borrowed(truncate_to_bytes(text, max_bytes));
    };
    if first >= max_bytes {
        return Cow::Borrowed(truncate_to_bytes(text, max_bytes));
    }
    let mut shown = String::with_capacity(max_bytes);
    shown.push_str(&text[..first]);
    let mut piece = String::new();
    for c in text[first..].chars() {
        piece.clear();
        push_shown(&mut piece, c, EscapeLineFeed::Yes);
        if shown.len() + piece.len() > max_bytes {
            break;
        }
        shown.push_str(&piece);
    }
    Cow::Owned(shown)
}

/// The longest prefix of `text` that is at most `max_bytes` bytes long and ends on a
/// character boundary.
///
/// ```
/// use p2p_core::text::truncate_to_bytes;
///
/// assert_eq!(truncate_to_bytes("héllo", 2), "h"); // "é" is two bytes
/// assert_eq!(truncate_to_bytes("héllo", 3), "hé");
/// assert_eq!(truncate_to_bytes("hi", 10), "hi");
/// ```
pub fn truncate_to_bytes(text: &str, max_bytes: usize) -> &str {
    if text.len() <= max_bytes {
        return text;
    }
    let mut end = max_bytes;
    // A UTF-8 character is at most four bytes: this steps back at most three times.
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Shows a string [`printable`] in a format string, honouring width and alignment:
/// `format!("{:<20}", Printable(&name))`.
#[derive(Debug, Clone, Copy)]
pub struct Printable<'a>(pub &'a str);

impl fmt::Display for Printable<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&printable(self.0))
    }
}

/// Whether a line feed is escaped or kept as a line break.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EscapeLineFeed {
    Yes,
    No,
}

fn escape(text: &str, line_feed: EscapeLineFeed) -> Cow<'_, str> {
    let escaped = |c: char| needs_escape(c) && !(c == '\n' && line_feed == EscapeLineFeed::No);
    let Some(first) = text.find(escaped) else {
        return Cow::Borrowed(text);
    };
    let mut shown = String::with_capacity(text.len() + 16);
    shown.push_str(&text[..first]);
    for c in text[first..].chars() {
        push_shown(&mut shown, c, line_feed);
    }
    Cow::Owned(shown)
}

/// Appends `c` as it is shown: itself, or its escape.
fn push_shown(out: &mut String, c: char, line_feed: EscapeLineFeed) {
    match c {
        '\n' if line_feed == EscapeLineFeed::No => out.push('\n'),
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        c if needs_escape(c) => {
            // Writing to a String cannot fail.
            let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
        }
        c => out.push(c),
    }
}

/// Whether `c` is shown escaped: see the module documentation for why each range is here.
fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            // Line and paragraph separators.
            '\u{2028}' | '\u{2029}'
            // Default-ignorable code points, without the variation selectors
            // (U+180B–U+180D, U+180F, U+FE00–U+FE0F, U+E0100–U+E01EF).
            | '\u{00AD}'
            | '\u{034F}'
            | '\u{061C}'
            | '\u{115F}'..='\u{1160}'
            | '\u{17B4}'..='\u{17B5}'
            | '\u{180E}'
            | '\u{200B}'..='\u{200F}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{206F}'
            | '\u{3164}'
            | '\u{FEFF}'
            | '\u{FFA0}'
            | '\u{FFF0}'..='\u{FFF8}'
            | '\u{1BCA0}'..='\u{1BCA3}'
            | '\u{1D173}'..='\u{1D17A}'
            | '\u{E0000}'..='\u{E00FF}'
            | '\u{E01F0}'..='\u{E0FFF}'
            // Interlinear annotation: renderers may hide what it encloses.
            | '\u{FFF9}'..='\u{FFFB}'
        )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Every character the module promises to escape, one of each range's ends.
    const HOSTILE: &[char] = &[
        '\u{0}',
        '\u{7}',
        '\t',
        '\n',
        '\r',
        '\u{1b}',
        '\u{1f}',
        '\u{7f}',
        '\u{80}',
        '\u{85}',
        '\u{9b}',
        '\u{9f}',
        '\u{61c}',
        '\u{200e}',
        '\u{200f}',
        '\u{202a}',
        '\u{202b}',
        '\u{202c}',
        '\u{202d}',
        '\u{202e}',
        '\u{2066}',
        '\u{2067}',
        '\u{2068}',
        '\u{2069}',
        '\u{200b}',
        '\u{200c}',
        '\u{200d}',
        '\u{2060}',
        '\u{feff}',
        '\u{2028}',
        '\u{2029}',
        '\u{ad}',
        '\u{3164}',
        '\u{e0001}',
        '\u{e007f}',
        '\u{fff9}',
        '\u{fffb}',
    ];

    /// What must never reach a screen, written out apart from `needs_escape`: controls,
    /// bidi controls, zero-width and other invisible format characters, separators.
    fn is_hostile(c: char) -> bool {
        let c = u32::from(c);
        c <= 0x1f
            || (0x7f..=0x9f).contains(&c)
            || [0x61c, 0x200e, 0x200f, 0x2060, 0xfeff, 0x2028, 0x2029, 0xad].contains(&c)
            || (0x202a..=0x202e).contains(&c)
            || (0x2066..=0x2069).contains(&c)
            || (0x200b..=0x200d).contains(&c)
            || (0xe0000..=0xe007f).contains(&c)
    }

    #[test]
    fn ordinary_text_is_borrowed_unchanged() {
        for text in [
            "",
            "report.pdf",
            "photos/2024/Été à Paris.jpg",
            "Ünïcödé ñame",
            "日本語のファイル名",
            "файл",
            "ملف عربي",
            "קובץ",
            "emoji 🎉🚀 ❤\u{fe0f} and a variation selector",
            r"C:\Users\back\slashes and \u{202e} typed by hand",
            "quotes \" and ' stay",
        ] {
            assert!(
                matches!(printable(text), Cow::Borrowed(t) if t == text),
                "{text:?}"
            );
            assert!(matches!(printable_lines(text), Cow::Borrowed(_)));
        }
    }

    #[test]
    fn terminal_escapes_and_forged_lines_are_shown_escaped() {
        let forged = "\u{1b}]0;pwned\u{7}\r\ntransfer complete, all files verified";
        assert_eq!(
            printable(forged),
            r"\u{1b}]0;pwned\u{7}\r\ntransfer complete, all files verified"
        );
        assert_eq!(
            printable("a\tb\u{0}c\u{9b}d\u{7f}"),
            r"a\tb\u{0}c\u{9b}d\u{7f}"
        );
    }

    #[test]
    fn bidi_and_invisible_characters_are_shown_escaped() {
        assert_eq!(
            printable("invoice\u{202E}fdp.exe"),
            r"invoice\u{202e}fdp.exe"
        );
        assert_eq!(
            printable("\u{2066}a\u{2069}\u{200b}b\u{feff}\u{2028}"),
            r"\u{2066}a\u{2069}\u{200b}b\u{feff}\u{2028}"
        );
        for &c in HOSTILE {
            let shown = printable(&c.to_string()).into_owned();
            assert!(
                shown.starts_with('\\') && shown.len() > 1,
                "{c:?} -> {shown:?}"
            );
        }
    }

    #[test]
    fn printable_lines_keeps_line_feeds_only() {
        assert_eq!(
            printable_lines("two receivers:\n  a\u{202e}b\r\n  c"),
            "two receivers:\n  a\\u{202e}b\\r\n  c"
        );
    }

    #[test]
    fn the_display_wrapper_pads_the_escaped_text() {
        assert_eq!(format!("[{:<9}]", Printable("a\u{1b}")), r"[a\u{1b}  ]");
        assert_eq!(format!("[{:>4}]", Printable("ab")), "[  ab]");
    }

    #[test]
    fn truncation_keeps_whole_characters_and_whole_escapes() {
        assert_eq!(truncate_to_bytes("", 0), "");
        assert_eq!(truncate_to_bytes("€", 2), "");
        assert_eq!(truncate_to_bytes("a€", 3), "a");
        assert_eq!(truncate_to_bytes("a€", 4), "a€");
        let name = "ж".repeat(150); // 300 bytes
        assert_eq!(printable_truncated(&name, 256).len(), 256);
        let name = "\u{1b}".repeat(100); // each shown as `\u{1b}`, 6 bytes
        assert_eq!(printable_truncated(&name, 256), r"\u{1b}".repeat(42));
        assert_eq!(printable_truncated("ab\u{202e}", 9), "ab");
    }

    fn hostile_char() -> impl Strategy<Value = char> {
        prop_oneof![
            proptest::sample::select(HOSTILE),
            any::<char>(),
            proptest::char::range('\u{0}', '\u{ff}'),
            proptest::char::range('\u{2000}', '\u{206f}'),
        ]
    }

    proptest! {
        #[test]
        fn nothing_hostile_survives(chars in proptest::collection::vec(hostile_char(), 0..64),
                                    max in 0usize..300) {
            let text: String = chars.into_iter().collect();
            let shown = printable(&text);
            prop_assert!(!shown.chars().any(is_hostile), "{:?} -> {:?}", text, shown);
            let twice = printable(&shown);
            prop_assert_eq!(twice.as_ref(), shown.as_ref(), "idempotent");
            let lines = printable_lines(&text);
            prop_assert!(!lines.chars().any(|c| c != '\n' && is_hostile(c)));
            let cut = printable_truncated(&text, max);
            prop_assert!(cut.len() <= max);
            prop_assert!(shown.starts_with(cut.as_ref()));
            prop_assert!(!cut.chars().any(is_hostile));
        }

        #[test]
        fn printable_text_is_unchanged(text in "[\\PC&&[^\u{ad}\u{34f}\u{61c}\u{115f}\u{1160}\u{17b4}\u{17b5}\u{180e}\u{200b}-\u{200f}\u{2028}-\u{202e}\u{2060}-\u{206f}\u{3164}\u{feff}\u{ffa0}\u{fff0}-\u{fffb}]]{0,40}") {
            prop_assert!(matches!(printable(&text), Cow::Borrowed(t) if t == text));
        }

        #[test]
        fn truncation_is_a_prefix_on_a_boundary(text in any::<String>(), max in 0usize..64) {
            let cut = truncate_to_bytes(&text, max);
            prop_assert!(cut.len() <= max && text.starts_with(cut));
            prop_assert!(cut.len() + 4 > max || cut.len() == text.len());
        }
    }
}
