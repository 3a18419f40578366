//! Text a peer or a user supplied, made safe for a log line: [`escape`] writes
//! control characters (NUL, newlines, the ESC that starts ANSI sequences, C1
//! codes) and the invisible formatting characters that reorder or hide text
//! (bidirectional overrides, zero-width characters) as `\u{..}` escapes, a
//! backslash as `\\`, and clips the text to [`LOG_TEXT_MAX`] characters with a
//! marker saying how much was cut. What it writes never spans lines, never
//! changes a terminal's state, and reads back unambiguously.

use std::fmt::{self, Write as _};

/// How many characters of a peer- or user-supplied string a log line keeps.
pub const LOG_TEXT_MAX: usize = 128;

/// `text` escaped and clipped to [`LOG_TEXT_MAX`] characters, for a log field
/// (`forward_id = %escape(&req.forward_id)`) or an echo in an error message.
pub fn escape(text: &str) -> Escaped<'_> {
    escape_clipped(text, LOG_TEXT_MAX)
}

/// [`escape`] with another limit, in characters.
pub fn escape_clipped(text: &str, max_chars: usize) -> Escaped<'_> {
    Escaped { text, max_chars }
}

/// See [`escape`]; `Display` writes the safe form.
#[derive(Debug, Clone, Copy)]
pub struct Escaped<'a> {
    text: &'a str,
    max_chars: usize,
}

/// Characters that change how the text around them is shown without being
/// control characters: bidirectional embeddings, overrides and isolates,
/// zero-width characters, the byte-order mark.
fn is_invisible_format(c: char) -> bool {
    matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2060}'..='\u{2069}' | '\u{feff}')
}

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (kept, (i, c)) in self.text.char_indices().enumerate() {
            if kept == self.max_chars {
                return write!(f, "...({} more bytes)", self.text.len() - i);
            }
            match c {
                '\\' => f.write_str("\\\\")?,
                '\n' => f.write_str("\\n")?,
                '\r' => f.write_str("\\r")?,
                '\t' => f.write_str("\\t")?,
                '\0' => f.write_str("\\0")?,
                c if c.is_control() || is_invisible_format(c) => {
                    write!(f, "\\u{{{:x}}}", u32::from(c))?;
                }
                c => f.write_char(c)?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_ansi_nul_and_invisible_characters_are_escaped() {
        let cases = [
            ("plain-id_1.x", "plain-id_1.x"),
            ("a b/é", "a b/é"),
            ("two\nlines\r\n", "two\\nlines\\r\\n"),
            ("\u{1b}[31mred\u{1b}[0m", "\\u{1b}[31mred\\u{1b}[0m"),
            ("nul\0tab\t", "nul\\0tab\\t"),
            ("c1\u{9b}del\u{7f}", "c1\\u{9b}del\\u{7f}"),
            ("abc\u{202e}fed", "abc\\u{202e}fed"),
            ("zero\u{200b}width", "zero\\u{200b}width"),
            ("back\\slash", "back\\\\slash"),
        ];
        for (raw, want) in cases {
            assert_eq!(escape(raw).to_string(), want, "{raw:?}");
        }
    }

    #[test]
    fn long_text_is_clipped_with_a_marker() {
        let long = "é".repeat(LOG_TEXT_MAX + 10);
        let shown = escape(&long).to_string();
        let (kept, marker) = shown.split_at("é".len() * LOG_TEXT_MAX);
        assert_eq!(kept.chars().count(), LOG_TEXT_MAX);
        assert_eq!(marker, "...(20 more bytes)");
        assert_eq!(
            escape_clipped("abcdef", 3).to_string(),
            "abc...(3 more bytes)"
        );
        assert_eq!(escape_clipped("abc", 3).to_string(), "abc");
        assert_eq!(escape("").to_string(), "");
    }
}
