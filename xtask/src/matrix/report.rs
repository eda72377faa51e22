//! The result table, a row per kernel, and what went wrong where a row
//! failed.

use std::{fmt::Write as _, time::Duration};

use sockerr_scenarios::table::TABLE;

use super::row::{Row, skipped};

pub fn secs(d: Option<Duration>) -> String {
    d.map_or("-".into(), |d| format!("{:.1} s", d.as_secs_f64()))
}

pub fn print_table(rows: &[Row], fetch: Duration, initramfs: Option<Duration>, total: Duration) {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "\nkernel matrix: the detection table ({} rows) per kernel; VMs under QEMU TCG (emulated CPU), host native",
        TABLE.len()
    );
    let _ = writeln!(
        t,
        "{:<12} {:<28} {:>8} {:>8} {:<6} {:<6} {:>6} {:<8} {:<11} {:<8} result",
        "series",
        "kernel",
        "boot",
        "table",
        "check",
        "trace",
        "rows",
        "unreach",
        "transparent",
        "sites"
    );
    for r in rows {
        let (check, trace, passed, unreach, transparent, sites, result) = match &r.summary {
            Some(s) => (
                if s.check { "ok" } else { "FAIL" },
                if s.trace { "ok" } else { "FAIL" },
                format!("{}/{}", s.pass, s.rows),
                s.unreach.as_str(),
                s.transparent.as_str(),
                s.sites.as_str(),
                if r.passed() {
                    "PASS".to_owned()
                } else if !r.wrong_hooks.is_empty() {
                    format!("FAIL: hooks ({})", r.wrong_hooks.join("; "))
                } else if s.transparent != "ok" {
                    format!("FAIL: calls changed by the agent: {}", s.transparent)
                } else if s.check && s.trace && s.failed.is_empty() && !r.unreach_passed(&s.unreach)
                {
                    format!("FAIL: a connect() with no route: {}", s.unreach)
                } else if s.check && s.trace && s.failed.is_empty() {
                    format!("FAIL: call sites: {}", s.sites)
                } else if !s.trace {
                    "FAIL: agent did not start; no row ran".to_owned()
                } else if s.failed.is_empty() {
                    "FAIL: sockerr check".to_owned()
                } else {
                    format!(
                        "FAIL: rows {}",
                        s.failed
                            .iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join(",")
                    )
                },
            ),
            None => (
                "-",
                "-",
                "-".into(),
                "-",
                "-",
                "-",
                r.note.clone().unwrap_or_else(|| "FAIL".into()),
            ),
        };
        let result = match (&r.note, r.summary.is_some()) {
            (Some(note), true) => format!("{result} ({note})"),
            _ => result,
        };
        let kernel = r
            .summary
            .as_ref()
            .map_or(r.kernel.as_str(), |s| s.kernel.as_str());
        let _ = writeln!(
            t,
            "{:<12} {:<28} {:>8} {:>8} {:<6} {:<6} {:>6} {:<8} {:<11} {:<8} {}",
            r.series,
            kernel,
            secs(r.boot),
            secs(r.table),
            check,
            trace,
            passed,
            unreach,
            transparent,
            sites,
            result
        );
    }
    let _ = writeln!(
        t,
        "kernels fetched or found in the cache in {:.1} s, initramfs built in {}, whole matrix {:.1} s",
        fetch.as_secs_f64(),
        secs(initramfs),
        total.as_secs_f64()
    );
    for r in rows.iter().filter(|r| !r.passed() && !skipped(r)) {
        let _ = writeln!(t, "\n{} ({}) failed:", r.series, r.kernel);
        let mut any = false;
        for l in &r.lines {
            let text = &l.text;
            let keep = text.starts_with("check| MISSING")
                || (text.starts_with("trace| ") && !text.starts_with("trace| ts="))
                || text.starts_with("FAIL ")
                || text.starts_with("matrix: barrier failed")
                || text.starts_with("matrix: sockerr trace did not start")
                || text.starts_with("matrix: unreach:")
                || text.starts_with("matrix: transparency:")
                || text.starts_with("matrix: call sites");
            if keep {
                let _ = writeln!(t, "  {text}");
                any = true;
            }
        }
        if let Some(s) = r.summary.as_ref().filter(|s| s.trace) {
            for n in &s.failed {
                if let Some(case) = TABLE.get(n - 1) {
                    let _ = writeln!(
                        t,
                        "  row {n}: {} (sockerr-scenario {}) expects {:?}",
                        case.name,
                        case.args.join(" "),
                        case.expected
                    );
                }
            }
        }
        if !any || r.summary.is_none() {
            let _ = writeln!(t, "  last console lines:");
            for l in r.lines.iter().rev().take(25).rev() {
                let _ = writeln!(t, "  | {}", l.text);
            }
        }
        if let Some(log) = &r.log {
            let _ = writeln!(t, "  full output: {}", log.display());
        }
    }
    let stats: Vec<(&str, &str)> = rows
        .iter()
        .flat_map(|r| {
            r.lines
                .iter()
                .filter_map(|l| l.text.strip_prefix("BPFSTAT "))
                .map(|s| (r.series.as_str(), s))
        })
        .collect();
    if !stats.is_empty() {
        let _ = writeln!(
            t,
            "\neBPF program statistics inside the VMs (kernel.bpf_stats_enabled=1), whole table run.\n\
             EMULATED CPU (QEMU TCG): run counts are real, times are not those of real hardware."
        );
        for (series, s) in stats {
            let _ = writeln!(t, "  {series:<12} {s}");
        }
    }
    print!("{t}");
}
