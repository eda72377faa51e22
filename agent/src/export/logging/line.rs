//! One log line, in logfmt or JSON: `ts`, `level`, `target`, `msg`, then
//! the fields in the order given.
//!
//! logfmt is written so that go-logfmt (`github.com/go-logfmt/logfmt`, what
//! Loki, Promtail and Prometheus' own tools read) decodes every line back
//! to exactly the values written:
//!
//! - a value is bare unless it is empty or holds a space, `=`, `"`, `\`,
//!   U+FFFD or a character escaped below; then it is quoted;
//! - inside quotes `"` and `\` are backslash-escaped, `\n`, `\r`, `\t` are
//!   written so, and every other control character (C0, DEL, C1 — U+0085
//!   among them), the line and paragraph separators U+2028/U+2029 and the
//!   bidirectional controls are written `\uXXXX` (go-logfmt reads these with
//!   Go's `strconv` rules for JSON strings): a hostile process name can
//!   neither start a new line nor reorder what a terminal shows;
//! - a field without a value (null, or an empty string) is left out, never
//!   written as `key=`; an array of numbers is `[111,0]`, any other array or
//!   object its compact JSON, quoted.
//!
//! JSON lines are objects of the same fields, values as they are (arrays
//! stay arrays, null stays null), so a finding's JSON log line carries the
//! same object `/findings` and `trace --json` show.

use std::fmt::Write as _;

use serde_json::{Map, Value};

use super::Format;

/// A line being written.
pub struct Line {
    format: Format,
    text: String,
    json: Map<String, Value>,
}

impl Line {
    pub fn new(format: Format) -> Self {
        Self {
            format,
            text: String::with_capacity(256),
            json: Map::new(),
        }
    }

    /// Adds a field; in logfmt, one without a value is left out.
    pub fn field(&mut self, key: &str, value: Value) -> &mut Self {
        match self.format {
            Format::Json => {
                self.json.insert(key.to_owned(), value);
            }
            Format::Logfmt => {
                let Some(text) = logfmt_text(&value) else {
                    return self;
                };
                if !self.text.is_empty() {
                    self.text.push(' ');
                }
                self.text.push_str(key);
                self.text.push('=');
                logfmt_value(&mut self.text, &text);
            }
        }
        self
    }

    pub fn str(&mut self, key: &str, value: &str) -> &mut Self {
        self.field(key, Value::String(value.to_owned()))
    }

    /// The line, newline included.
    pub fn finish(self) -> String {
        let mut out = match self.format {
            Format::Logfmt => self.text,
            Format::Json => Value::Object(self.json).to_string(),
        };
        out.push('\n');
        out
    }
}

/// The text of a value in logfmt, before quoting; None when it has none.
fn logfmt_text(value: &Value) -> Option<String> {
    match value {
        Value::Null => None,
        Value::String(s) if s.is_empty() => None,
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        // Compact JSON: `[111,0]`, `[]`; strings and objects get quoted.
        Value::Array(_) | Value::Object(_) => Some(value.to_string()),
    }
}

/// Characters written `\uXXXX` inside quotes: every control character
/// (`char::is_control`: C0, DEL, C1 — U+0085 NEL among them), U+2028 and
/// U+2029 (line and paragraph separators), and the bidirectional controls
/// (marks, embeddings, overrides, isolates).
fn escaped(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{2028}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
        )
}

/// Whether a value must be quoted for go-logfmt to read it back: its
/// decoder ends a bare value at a space or control, refuses `=` and `"` in
/// one, and its encoder quotes U+FFFD (the replacement character).
fn needs_quotes(c: char) -> bool {
    c <= ' ' || c == '=' || c == '"' || c == '\\' || c == '\u{fffd}' || escaped(c)
}

/// Appends `s` as a logfmt value: bare, or quoted and escaped.
pub fn logfmt_value(out: &mut String, s: &str) {
    if !s.is_empty() && !s.chars().any(needs_quotes) {
        out.push_str(s);
        return;
    }
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            // Every escaped character is in the Basic Multilingual Plane:
            // four hex digits, as go-logfmt's (Go's JSON) `\u` takes them.
            c if escaped(c) => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// go-logfmt's decoder (`decode.go`: `ScanKeyval`, `unquoteBytes`) for
    /// one line, as this test needs it: key/value pairs, or the error it
    /// would report. Bare values end at a byte <= ' ' and may not hold `=`
    /// or `"`; quoted values take `\"`, `\\`, `\/`, `\b`, `\f`, `\n`, `\r`,
    /// `\t` and `\uXXXX` (surrogate pairs joined) and no raw byte below
    /// 0x20.
    fn go_logfmt(line: &str) -> Result<Vec<(String, String)>, String> {
        let b = line.as_bytes();
        let mut i = 0;
        let mut pairs = Vec::new();
        while i < b.len() {
            while i < b.len() && b[i] <= b' ' {
                i += 1;
            }
            if i == b.len() {
                break;
            }
            let start = i;
            while i < b.len() && b[i] > b' ' && b[i] != b'=' && b[i] != b'"' {
                i += 1;
            }
            if i == start {
                return Err(format!("unexpected {:?} at {i}", b[i] as char));
            }
            let key = line[start..i].to_owned();
            if i == b.len() || b[i] != b'=' {
                if i < b.len() && b[i] == b'"' {
                    return Err(format!("unexpected '\"' in key at {i}"));
                }
                pairs.push((key, String::new()));
                continue;
            }
            i += 1;
            if i < b.len() && b[i] == b'"' {
                i += 1;
                let mut value = String::new();
                loop {
                    let Some(&c) = b.get(i) else {
                        return Err("unterminated quoted value".into());
                    };
                    match c {
                        b'"' => {
                            i += 1;
                            break;
                        }
                        b'\\' => {
                            let e = *b.get(i + 1).ok_or("dangling backslash")?;
                            i += 2;
                            match e {
                                b'"' => value.push('"'),
                                b'\\' => value.push('\\'),
                                b'/' => value.push('/'),
                                b'b' => value.push('\u{8}'),
                                b'f' => value.push('\u{c}'),
                                b'n' => value.push('\n'),
                                b'r' => value.push('\r'),
                                b't' => value.push('\t'),
                                b'u' => {
                                    let hex = |at: usize| {
                                        line.get(at..at + 4)
                                            .and_then(|h| u32::from_str_radix(h, 16).ok())
                                            .ok_or_else(|| format!("bad \\u escape at {at}"))
                                    };
                                    let mut code = hex(i)?;
                                    i += 4;
                                    if (0xd800..0xdc00).contains(&code)
                                        && line.get(i..i + 2) == Some("\\u")
                                    {
                                        let low = hex(i + 2)?;
                                        code = 0x10000 + ((code - 0xd800) << 10) + (low - 0xdc00);
                                        i += 6;
                                    }
                                    value.push(char::from_u32(code).unwrap_or('\u{fffd}'));
                                }
                                other => return Err(format!("bad escape \\{}", other as char)),
                            }
                        }
                        c if c < b' ' => return Err(format!("raw control byte {c:#x} in quotes")),
                        _ => {
                            let rest = &line[i..];
                            let ch = rest.chars().next().unwrap();
                            value.push(ch);
                            i += ch.len_utf8();
                        }
                    }
                }
                if i < b.len() && b[i] > b' ' {
                    return Err(format!(
                        "unexpected {:?} after a quoted value",
                        b[i] as char
                    ));
                }
                pairs.push((key, value));
            } else {
                let start = i;
                while i < b.len() && b[i] > b' ' {
                    if b[i] == b'=' || b[i] == b'"' {
                        return Err(format!("unexpected {:?} in a bare value", b[i] as char));
                    }
                    i += 1;
                }
                pairs.push((key, line[start..i].to_owned()));
            }
        }
        Ok(pairs)
    }

    /// Hostile and ordinary values, each read back exactly by go-logfmt.
    const VALUES: &[&str] = &[
        "curl",
        "sockerr-scenari",
        "two words",
        "a=b",
        "say \"hi\"",
        "back\\slash",
        "new\nline",
        "tab\there",
        "\u{1b}[31mred",
        "nul\u{0}byte",
        "del\u{7f}",
        "c1\u{85}nel",
        "c1\u{9b}csi",
        "ls\u{2028}ps\u{2029}",
        "bidi\u{202e}txt.exe",
        "iso\u{2066}late\u{2069}",
        "café",
        "emoji 🦀",
        "bad\u{fffd}utf8",
        "/usr/lib/x86_64-linux-gnu/libc.so.6",
    ];

    #[test]
    fn every_value_reads_back_exactly_with_go_logfmt() {
        for value in VALUES {
            let mut line = Line::new(Format::Logfmt);
            line.str("msg", "finding")
                .str("comm", value)
                .str("next", "x");
            let text = line.finish();
            assert_eq!(text.matches('\n').count(), 1, "one line: {text:?}");
            let pairs = go_logfmt(text.trim_end()).unwrap_or_else(|e| panic!("{text:?}: {e}"));
            assert_eq!(
                pairs,
                [
                    ("msg".into(), "finding".into()),
                    ("comm".into(), value.to_string()),
                    ("next".into(), "x".into())
                ],
                "{text:?}"
            );
        }
    }

    #[test]
    fn controls_and_separators_are_escaped_not_written_raw() {
        let escaped = |s: &str| {
            let mut out = String::new();
            logfmt_value(&mut out, s);
            out
        };
        assert_eq!(escaped("\u{1b}[31m"), r#""\u001b[31m""#);
        assert_eq!(escaped("a\u{7f}"), r#""a\u007f""#);
        assert_eq!(escaped("a\u{85}b\u{9b}"), r#""a\u0085b\u009b""#);
        assert_eq!(escaped("a\u{2028}b\u{2029}"), r#""a\u2028b\u2029""#);
        assert_eq!(escaped("x\u{202e}y"), r#""x\u202ey""#);
        assert_eq!(escaped("a\nb\tc\r"), r#""a\nb\tc\r""#);
        assert_eq!(escaped("q\"b\\"), r#""q\"b\\""#);
        assert_eq!(escaped("plain-value/1.2"), "plain-value/1.2");
        assert_eq!(escaped("café"), "café");
        assert_eq!(escaped(""), r#""""#);
        // Nothing Rust-style: go-logfmt refuses `\u{1b}` and `\x1b`.
        for value in VALUES {
            let out = escaped(value);
            assert!(!out.contains("\\u{") && !out.contains("\\x"), "{out}");
        }
    }

    #[test]
    fn fields_without_a_value_are_left_out_of_logfmt_and_kept_in_json() {
        let fields = [
            ("kind", json!("so_error_masked")),
            ("exe_error", Value::Null),
            ("container", json!("")),
            ("fd", Value::Null),
            ("so_error_reads", json!([111, 0])),
            ("none_read", json!([])),
            ("ok", json!(true)),
            ("call_sites", json!({"note": "a b"})),
        ];
        let mut logfmt = Line::new(Format::Logfmt);
        let mut jsonl = Line::new(Format::Json);
        for (k, v) in &fields {
            logfmt.field(k, v.clone());
            jsonl.field(k, v.clone());
        }
        let text = logfmt.finish();
        assert_eq!(
            text,
            "kind=so_error_masked so_error_reads=[111,0] none_read=[] ok=true \
             call_sites=\"{\\\"note\\\":\\\"a b\\\"}\"\n"
        );
        assert!(
            go_logfmt(text.trim_end())
                .unwrap()
                .iter()
                .all(|(_, v)| !v.is_empty())
        );
        let object: Value = serde_json::from_str(&jsonl.finish()).unwrap();
        assert_eq!(object["so_error_reads"], json!([111, 0]));
        assert_eq!(object["fd"], Value::Null);
        assert_eq!(object["container"], "");
        assert_eq!(
            object.as_object().unwrap().keys().collect::<Vec<_>>(),
            fields.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            "in the order given"
        );
    }
}
