//! One row of the result table: a kernel, the variant of the agent's flags
//! it ran under, what the runner reported, and whether that passes: the
//! runner's summary, and the hooks, no-route count and call sites expected
//! on that series.

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
    // (fentry where BPF trampolines work, then tp_btf on ≥ 6.3, come
    // first; this host's row runs tp_btf).
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

/// The variants a series runs under: as configured, and the kprobes one
/// where the series asks for it.
pub fn variants(series: &kernels::Series) -> impl Iterator<Item = &'static Variant> {
    VARIANTS
        .iter()
        .filter(move |v| v.name.is_empty() || series.kprobes_row)
}

/// What a VM's runner must report besides passing rows, from its series.
#[derive(Debug, PartialEq, Eq)]
pub struct Expected {
    /// `unreach`: `ok`, or `absent` where no hook sees connect()'s errors.
    pub unreach: &'static str,
    /// `sites`: `ok` (the connect and each SO_ERROR read named), or
    /// `connect` where reads carry no call sites.
    pub sites: &'static str,
}

impl Expected {
    pub fn of(series: &kernels::Series) -> Self {
        Self {
            unreach: if series.hooks.connect_errors == kernels::ABSENT {
                "absent"
            } else {
                "ok"
            },
            sites: if series.read_sites { "ok" } else { "connect" },
        }
    }
}

/// One line of the result table.
pub struct Row {
    pub series: String,
    /// None for this host, which may lack hooks or have routes (only an
    /// `unreach` of `fail` fails it there).
    pub expected: Option<Expected>,
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
                    && self.sites_passed(&s.sites)
            })
    }

    /// A VM has no route but loopback's: where its kernel has the hook the
    /// failure must be counted; this host may lack the hook or have routes.
    pub fn unreach_passed(&self, unreach: &str) -> bool {
        match &self.expected {
            Some(e) => unreach == e.unreach,
            None => unreach != "fail",
        }
    }

    /// Call sites as the series has them; all of them on this host.
    pub fn sites_passed(&self, sites: &str) -> bool {
        sites == self.expected.as_ref().map_or("ok", |e| e.sites)
    }
}

/// The hook each probe must have: the same on every kernel of the matrix
/// for connect and release, the series' own for the rest, unless the
/// variant forces one.
pub fn expected_hooks(
    series: &kernels::Series,
    variant: &Variant,
) -> Vec<(&'static str, &'static str)> {
    let h = &series.hooks;
    [
        ("connect", "tp_btf/inet_sock_set_state"),
        ("so_error", h.so_error),
        ("send", h.send),
        ("recv", h.recv),
        ("release", "cgroup/sock_release"),
        ("connect_errors", h.connect_errors),
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

    const PASSING: &str = "MATRIX kernel=x check=ok trace=ok rows=13 pass=13 fail=0 failed=- unreach=ok transparent=ok sites=ok secs=1";

    fn row(series: &str, summary: &str) -> Row {
        Row {
            series: series.into(),
            expected: (series != "host")
                .then(|| Expected::of(kernels::SERIES.iter().find(|s| s.name == series).unwrap())),
            kernel: "x".into(),
            boot: None,
            table: None,
            summary: Summary::parse(summary),
            note: None,
            lines: Vec::new(),
            log: None,
            wrong_hooks: Vec::new(),
        }
    }

    #[test]
    fn parses_the_summary_line() {
        let s = Summary::parse(
            "MATRIX kernel=6.1.0-56-cloud-amd64 check=fail trace=fail rows=13 pass=0 fail=13 failed=1,2,13 unreach=fail transparent=error sites=fail secs=3.0",
        )
        .unwrap();
        assert_eq!(s.kernel, "6.1.0-56-cloud-amd64");
        assert!(!s.check && !s.trace);
        assert_eq!((s.rows, s.pass), (13, 0));
        assert_eq!(s.failed, [1, 2, 13]);
        assert_eq!(s.unreach, "fail");
        assert_eq!(s.sites, "fail");
        let s = Summary::parse(PASSING).unwrap();
        assert!(s.failed.is_empty());
    }

    #[test]
    fn passing_depends_on_the_series() {
        for series in ["host", "5.10", "6.1", "6.12", "arm64-6.12"] {
            let summary = if series == "5.10" {
                PASSING.replace("sites=ok", "sites=connect")
            } else {
                PASSING.to_owned()
            };
            assert!(row(series, &summary).passed(), "{series}");
        }
        // No hook for connect()'s own errors: absent passes on this host and
        // where the series says so (arm64 6.1: no BPF trampolines).
        let absent = PASSING.replace("unreach=ok", "unreach=absent");
        assert!(row("host", &absent).passed());
        assert!(row("arm64-6.1", &absent).passed());
        assert!(!row("6.1", &absent).passed());
        assert!(
            !row("arm64-6.1", PASSING).passed(),
            "a hook it should not have"
        );
        // Reads named everywhere but on 5.10.
        let connect_only = PASSING.replace("sites=ok", "sites=connect");
        assert!(!row("6.1", &connect_only).passed());
        assert!(!row("host", &connect_only).passed());
        assert!(!row("5.10", PASSING).passed());
        assert!(!row("host", &PASSING.replace("sites=ok", "sites=fail")).passed());
        let changed = PASSING.replace("transparent=ok", "transparent=differs:2");
        assert!(
            !row("host", &changed).passed(),
            "a call the agent changed fails the kernel"
        );
    }

    #[test]
    fn kprobe_rows_only_where_they_add_a_hook() {
        let names = |series: &str| {
            let s = kernels::SERIES.iter().find(|s| s.name == series).unwrap();
            variants(s).map(|v| v.name).collect::<Vec<_>>()
        };
        assert_eq!(names("6.1"), ["", "kprobes"]);
        assert_eq!(names("arm64-6.1"), [""]);
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
        let arm64 = kernels::SERIES
            .iter()
            .find(|s| s.name == "arm64-6.1")
            .unwrap();
        assert!(expected_hooks(arm64, &VARIANTS[0]).contains(&("connect_errors", "absent")));
    }
}
