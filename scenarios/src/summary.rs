//! The matrix runner's closing line, written by `sockerr-scenario matrix`
//! and read by `cargo xtask matrix`:
//!
//! `MATRIX kernel=<release> check=ok|fail trace=ok|fail rows=N pass=N fail=N failed=<row numbers>|- unreach=ok|fail|absent|skipped transparent=ok|differs:N|error sites=ok|connect|fail secs=S`

use std::fmt;

#[derive(Debug)]
pub struct Summary {
    pub kernel: String,
    /// `sockerr check` exited 0.
    pub check: bool,
    /// `sockerr trace` started.
    pub trace: bool,
    pub rows: usize,
    pub pass: usize,
    /// Row numbers (from 1) that failed.
    pub failed: Vec<usize>,
    /// A connect() with no route counted: ok, fail, absent (no hook for it
    /// on this kernel) or skipped (the address was routable).
    pub unreach: String,
    /// Every call of `sockerr-scenario transparency` gave the same result
    /// with the agent attached as without it: ok, differs:N (lines that
    /// differ) or error (the scenario itself failed).
    pub transparent: String,
    /// The call sites of a flagged process (`repeat buggy`): ok (its
    /// connect() and each SO_ERROR read named by function and file:line),
    /// connect (only the connect: reads carry no sites on this kernel) or
    /// fail.
    pub sites: String,
    pub secs: f64,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ok = |b| if b { "ok" } else { "fail" };
        let failed = if self.failed.is_empty() {
            "-".to_owned()
        } else {
            let numbers: Vec<String> = self.failed.iter().map(ToString::to_string).collect();
            numbers.join(",")
        };
        write!(
            f,
            "MATRIX kernel={} check={} trace={} rows={} pass={} fail={} failed={failed} unreach={} transparent={} sites={} secs={:.1}",
            self.kernel,
            ok(self.check),
            ok(self.trace),
            self.rows,
            self.pass,
            self.failed.len(),
            self.unreach,
            self.transparent,
            self.sites,
            self.secs
        )
    }
}

impl Summary {
    /// The summary in `line`, from `MATRIX ` on.
    pub fn parse(line: &str) -> Option<Self> {
        let rest = line.strip_prefix("MATRIX ")?;
        let field = |key: &str| {
            rest.split_whitespace()
                .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
        };
        Some(Self {
            kernel: field("kernel")?.to_owned(),
            check: field("check")? == "ok",
            trace: field("trace")? == "ok",
            rows: field("rows")?.parse().ok()?,
            pass: field("pass")?.parse().ok()?,
            failed: field("failed")?
                .split(',')
                .filter_map(|n| n.parse().ok())
                .collect(),
            unreach: field("unreach")?.to_owned(),
            transparent: field("transparent")?.to_owned(),
            sites: field("sites")?.to_owned(),
            secs: field("secs")?.parse().ok()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_written_summary_reads_back() {
        let s = Summary {
            kernel: "6.1.0-56-cloud-amd64".into(),
            check: true,
            trace: false,
            rows: 13,
            pass: 11,
            failed: vec![2, 13],
            unreach: "absent".into(),
            transparent: "differs:3".into(),
            sites: "connect".into(),
            secs: 3.04,
        };
        let line = s.to_string();
        assert_eq!(
            line,
            "MATRIX kernel=6.1.0-56-cloud-amd64 check=ok trace=fail rows=13 pass=11 fail=2 failed=2,13 unreach=absent transparent=differs:3 sites=connect secs=3.0"
        );
        let back = Summary::parse(&line).unwrap();
        assert_eq!(
            (back.kernel.as_str(), back.check, back.trace),
            (s.kernel.as_str(), true, false)
        );
        assert_eq!((back.rows, back.pass, back.failed), (13, 11, vec![2, 13]));
        assert_eq!(back.unreach, "absent");
        assert_eq!(back.transparent, "differs:3");
        assert_eq!(back.sites, "connect");
    }
}
