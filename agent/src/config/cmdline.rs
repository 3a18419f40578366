//! The kernel command line as the agent reads it: the `sockfwd.*` parameters
//! of `/proc/cmdline`, in order, as the kernel itself splits them.
//!
//! A pure function over the text, so every case is a table test. It follows
//! the kernel's `next_arg` (`lib/cmdline.c`, `kernel/params.c`):
//! - words are separated by whitespace outside double quotes, and the quotes
//!   are removed (`sockfwd.x="a b"` and `"sockfwd.x=a b"` both give `a b`);
//! - a parameter name treats `-` and `_` alike (`sockfwd.pending-timeout` is
//!   `sockfwd.pending_timeout`);
//! - `--` ends the kernel's parameters: what follows is init's argv;
//! - a word without `=` has no value (a switch such as `sockfwd.allow_any_cid`).
//!
//! Which keys exist and what their values mean is the key table's business
//! ([`crate::config`]).

/// Every parameter of ours starts with this.
pub const PREFIX: &str = "sockfwd.";

/// One `sockfwd.KEY[=VALUE]` word.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Param {
    /// The name after `sockfwd.`, with `-` spelled `_`.
    pub key: String,
    /// The value after the first `=`; `None` when the word has no `=`.
    pub value: Option<String>,
}

/// The `sockfwd.*` parameters of a kernel command line, in order; other words
/// are ignored.
pub fn parse(text: &str) -> Vec<Param> {
    let mut params = Vec::new();
    for word in words(text) {
        if word == "--" {
            break;
        }
        let (name, value) = match word.split_once('=') {
            Some((name, value)) => (name, Some(value.to_owned())),
            None => (word.as_str(), None),
        };
        if let Some(key) = name.strip_prefix(PREFIX) {
            params.push(Param {
                key: key.replace('-', "_"),
                value,
            });
        }
    }
    params
}

/// Splits at whitespace outside double quotes and drops the quotes; an
/// unterminated quote runs to the end of the text.
fn words(text: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut quoted = false;
    for c in text.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                in_word = true;
            }
            c if c.is_whitespace() && !quoted => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            c => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(word);
    }
    words
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(key: &str, value: Option<&str>) -> Param {
        Param {
            key: key.to_owned(),
            value: value.map(str::to_owned),
        }
    }

    #[test]
    fn table() {
        let cases: Vec<(&str, Vec<Param>)> = vec![
            ("", vec![]),
            ("console=ttyS0 quiet\n", vec![]),
            (
                "console=ttyS0 sockfwd.control_port=1025 quiet\n",
                vec![p("control_port", Some("1025"))],
            ),
            (
                "sockfwd.allow_dir=/run/a sockfwd.allow_dir=/run/b",
                vec![
                    p("allow_dir", Some("/run/a")),
                    p("allow_dir", Some("/run/b")),
                ],
            ),
            (
                r#"sockfwd.log="info,sockfwd_agent=debug x" ro"#,
                vec![p("log", Some("info,sockfwd_agent=debug x"))],
            ),
            (
                r#""sockfwd.forward=a:/run/a b.sock""#,
                vec![p("forward", Some("a:/run/a b.sock"))],
            ),
            (
                "sockfwd.pending-timeout=1s",
                vec![p("pending_timeout", Some("1s"))],
            ),
            ("sockfwd.allow_any_cid", vec![p("allow_any_cid", None)]),
            ("sockfwd.log=", vec![p("log", Some(""))]),
            ("sockfwd.x=a=b", vec![p("x", Some("a=b"))]),
            (
                "\tsockfwd.a=1\t\tsockfwd.a=2  ",
                vec![p("a", Some("1")), p("a", Some("2"))],
            ),
            // Not ours: a prefix that only looks alike, a module parameter.
            ("sockfwdx.a=1 xsockfwd.a=1 vsock.x=1 SOCKFWD.a=1", vec![]),
            // After `--` the words are init's.
            ("sockfwd.a=1 -- sockfwd.b=2", vec![p("a", Some("1"))]),
            (r#"sockfwd.a="x y"#, vec![p("a", Some("x y"))]),
            (r#"sockfwd.a="" b"#, vec![p("a", Some(""))]),
            ("sockfwd.", vec![p("", None)]),
        ];
        for (text, want) in cases {
            assert_eq!(parse(text), want, "{text:?}");
        }
    }

    #[test]
    fn any_text_parses_without_panicking() {
        for text in [
            "\"",
            "\"\"\"",
            "=",
            "sockfwd.=",
            "sockfwd.\u{0}=\u{ff}",
            "é sockfwd.é=é",
        ] {
            let _ = parse(text);
        }
        assert_eq!(parse("sockfwd.é=é"), vec![p("é", Some("é"))]);
    }
}
