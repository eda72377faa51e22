//! Task names (`comm`) and other NUL-terminated kernel strings.

use std::fmt::Write as _;

/// A NUL-terminated kernel string (a comm, a file name). Any bytes are
/// possible: invalid UTF-8 becomes U+FFFD (JSON and logs show the rest as is).
pub fn comm(raw: &[u8]) -> String {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    String::from_utf8_lossy(&raw[..end]).into_owned()
}

/// A comm as a metric label value: distinct comms stay distinct. Bytes that
/// are not printable UTF-8 (control characters, invalid UTF-8) are written
/// as `\xNN`, and a backslash as `\\`, so `\x01ctl` never merges with `ctl`
/// and two invalid names never merge into the same U+FFFD.
pub fn label_value(raw: &[u8]) -> String {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    let mut out = String::with_capacity(end);
    for chunk in raw[..end].utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                c if c.is_control() => escape(&mut out, c.encode_utf8(&mut [0; 4]).as_bytes()),
                c => out.push(c),
            }
        }
        escape(&mut out, chunk.invalid());
    }
    out
}

fn escape(out: &mut String, bytes: &[u8]) {
    for b in bytes {
        // Writing to a String never fails.
        let _ = write!(out, "\\x{b:02x}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comm_stops_at_nul_and_survives_invalid_utf8() {
        assert_eq!(comm(b"curl\0\0\0garbage"), "curl");
        assert_eq!(comm(b"a\xffb\0"), "a\u{fffd}b");
        assert_eq!(comm(b"sixteen-bytes-ok"), "sixteen-bytes-ok");
    }

    #[test]
    fn label_values_keep_distinct_names_distinct() {
        let names: [&[u8]; 7] = [
            b"ctl\0",
            b"\x01ctl\0",
            b"a\xffb\0",
            b"a\xfeb\0",
            b"back\\x01\0",
            b"new\nline\0",
            b"caf\xc3\xa9\0",
        ];
        let labels: Vec<String> = names.iter().map(|n| label_value(n)).collect();
        assert_eq!(
            labels,
            [
                "ctl",
                "\\x01ctl",
                "a\\xffb",
                "a\\xfeb",
                "back\\\\x01",
                "new\\x0aline",
                "café"
            ]
        );
        let mut unique = labels.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), labels.len());
    }
}
