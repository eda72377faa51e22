//! One row of the result table: a kernel, the variant of the agent's flags
//! it ran under, what the runner reported, and whether that passes: the
//! runner's summary, and the hooks expected on that series.

use std::{path::PathBuf, time::Duration};

use sockerr_scenarios::summary::Summary;

use super::console::Line;
use crate::kernels;

/// A way of running the table: the agent as configured by default, or with
/// hooks disabled so that a probe's fallback is what runs.
pub struct Variant {
    pub name: &'static str,
    /// Extra arguments for `sockerr check` and `sockerr trace`.
    pub agent_args: &'static [&'static str],
    /// Hooks it forces, by probe, over the kernel's own choice.
    pub forces: &'static [(&'static str, &'static str)],
}

pub const VARIANTS: [Variant; 2] = [
    Variant {
        name: "",
        agent_args: &[],
        forces: &[],
    },
    // sends and receives through kprobes, the last hook of their probes
    // (tp_btf on ≥ 6.3 and fentry elsewhere come first).
    Variant {
        name: "kprobes",
        agent_args: &[
            "--kernel.disable-hook=tp_btf/sock_send_length",
            "--kernel.disable-hook=tp_btf/sock_recv_length",
            "--kernel.disable-hook=fentry/tcp_sendmsg",
            "--kernel.disable-hook=fentry/tcp_recvmsg",
        ],
        forces: &[
            ("send", "kprobe/tcp_sendmsg"),
            ("recv", "kprobe/tcp_recvmsg"),
        ],
    },
];

/// One line of the result table.
pub struct Row {
    pub series: String,
    pub kernel: String,
    /// Until init started (VMs only).
    pub boot: Option<Duration>,
    /// The runner: check, trace, every row.
    pub table: Option<Duration>,
    pub summary: Option<Summary>,
    /// What went wrong outside the runner (timeout, boot failure, skipped).
    pub note: Option<String>,
    pub lines: Vec<Line>,
    pub log: Option<PathBuf>,
    /// Probes that did not get the hook expected on this kernel.
    pub wrong_hooks: Vec<String>,
}

impl Row {
    pub fn passed(&self) -> bool {
        self.wrong_hooks.is_empty()
            && self.summary.as_ref().is_some_and(|s| {
                s.check
                    && s.trace
                    && s.failed.is_empty()
                    && self.unreach_passed(&s.unreach)
                    && s.transparent == "ok"
            })
    }

    /// Every VM kernel has the hook, and no route but loopback's: there the
    /// failure must be counted; this host may lack the hook or have routes.
    fn unreach_passed(&self, unreach: &str) -> bool {
        unreach == "ok" || (self.series == "host" && unreach != "fail")
    }
}

/// The hook each probe must have: the same on every kernel of the matrix
/// for connect, release and connect_errors, the series' own for the rest,
/// unless the variant forces one.
pub fn expected_hooks(
    series: &kernels::Series,
    variant: &Variant,
) -> Vec<(&'static str, &'static str)> {
    let [so_error, send, recv] = series.hooks;
    [
        ("connect", "tp_btf/inet_sock_set_state"),
        ("so_error", so_error),
        ("send", send),
        ("recv", recv),
        ("release", "cgroup/sock_release"),
        ("connect_errors", "fexit/inet_stream_connect"),
    ]
    .into_iter()
    .map(|(probe, hook)| {
        let forced = variant.forces.iter().find(|(p, _)| *p == probe);
        (probe, forced.map_or(hook, |(_, h)| *h))
    })
    .collect()
}

/// Where `sockerr check`'s lines (`check| ok       probe send   fentry/tcp_sendmsg: …`)
/// disagree with `expected`, e.g. `send: kprobe/tcp_sendmsg, expected fentry/tcp_sendmsg`.
pub fn wrong_hooks(lines: &[Line], expected: &[(&str, &str)]) -> Vec<String> {
    let used = |probe: &str| {
        lines.iter().find_map(|l| {
            let rest = l.text.split_once("check| ")?.1;
            let (status, rest) = rest.split_once(' ')?;
            let rest = rest.trim_start().strip_prefix("probe ")?;
            let (name, rest) = rest.split_once(' ')?;
            (name == probe).then(|| match status {
                "ok" => rest.trim_start().split(':').next().unwrap_or("").to_owned(),
                other => other.to_owned(),
            })
        })
    };
    expected
        .iter()
        .filter_map(|(probe, hook)| {
            let got = used(probe).unwrap_or_else(|| "not in check's output".into());
            (got != *hook).then(|| format!("{probe}: {got}, expected {hook}"))
        })
        .collect()
}

pub fn skipped(row: &Row) -> bool {
    row.summary.is_none()
        && row
            .note
            .as_deref()
            .is_some_and(|n| n.starts_with("skipped"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_summary_line() {
        let s = Summary::parse(
            "MATRIX kernel=6.1.0-56-cloud-amd64 check=fail trace=fail rows=13 pass=0 fail=13 failed=1,2,13 unreach=fail transparent=error sites=ok secs=3.0",
        )
        .unwrap();
        assert_eq!(s.kernel, "6.1.0-56-cloud-amd64");
        assert!(!s.check && !s.trace);
        assert_eq!((s.rows, s.pass), (13, 0));
        assert_eq!(s.failed, [1, 2, 13]);
        assert_eq!(s.unreach, "fail");
        let s = Summary::parse(
            "MATRIX kernel=x check=ok trace=ok rows=13 pass=13 fail=0 failed=- unreach=absent transparent=ok sites=ok secs=1",
        )
        .unwrap();
        assert!(s.failed.is_empty());
        // Absent passes on this host only: every VM kernel has fexit.
        let row = |series: &str| Row {
            series: series.into(),
            kernel: "x".into(),
            boot: None,
            table: None,
            summary: Summary::parse(
                "MATRIX kernel=x check=ok trace=ok rows=13 pass=13 fail=0 failed=- unreach=absent transparent=ok sites=ok secs=1",
            ),
            note: None,
            lines: Vec::new(),
            log: None,
            wrong_hooks: Vec::new(),
        };
        assert!(row("host").passed());
        assert!(!row("6.1").passed());
        let changed = Row {
            summary: Summary::parse(
                "MATRIX kernel=x check=ok trace=ok rows=13 pass=13 fail=0 failed=- unreach=absent transparent=differs:2 sites=ok secs=1",
            ),
            ..row("host")
        };
        assert!(
            !changed.passed(),
            "a call the agent changed fails the kernel"
        );
    }

    #[test]
    fn hooks_are_checked_against_the_series() {
        let line = |text: &str| Line {
            at: Duration::ZERO,
            text: text.to_owned(),
        };
        let lines = [
            line(
                "check| ok       probe connect                tp_btf/inet_sock_set_state: connect attempts",
            ),
            line(
                "check| ok       probe so_error               cgroup/getsockopt: the SO_ERROR values",
            ),
            line(
                "check| ok       probe send                   kprobe/tcp_sendmsg: sends on sockets",
            ),
            line(
                "Booting from ROM..check| absent   probe recv                   no hook works here (…)",
            ),
        ];
        let six_one = kernels::SERIES.iter().find(|s| s.name == "6.1").unwrap();
        assert_eq!(
            wrong_hooks(&lines, &expected_hooks(six_one, &VARIANTS[0])),
            [
                "send: kprobe/tcp_sendmsg, expected fentry/tcp_sendmsg",
                "recv: absent, expected fentry/tcp_recvmsg",
                "release: not in check's output, expected cgroup/sock_release",
                "connect_errors: not in check's output, expected fexit/inet_stream_connect",
            ]
        );
        let kprobes = expected_hooks(six_one, &VARIANTS[1]);
        assert!(kprobes.contains(&("send", "kprobe/tcp_sendmsg")));
        assert!(kprobes.contains(&("so_error", "cgroup/getsockopt")));
    }
}
