//! Counts stay exact under process churn (root): 10,000 short-lived
//! processes with distinct names, far more than `--metrics.max-comms`,
//! each flagged once. The kernel counts the first names under their own
//! keys and the rest under the overflow key, so its counter maps never fill
//! and not one finding or attempt goes uncounted. Its own test binary: the
//! sums below are over every comm of the host.

mod support;

use std::{process::Command, time::Duration};

use support::{Agent, eventually, require_root, run_ok, scenario_bin};

const PROCESSES: f64 = 10_000.0;

/// The sum of every sample of `metric` whose labels contain `matching`.
fn sum(metrics: &str, metric: &str, matching: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{metric}{{")) && l.contains(matching))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

#[test]
fn ten_thousand_short_lived_processes_are_counted_exactly() {
    if !require_root() {
        return;
    }
    let agent = Agent::start();
    let out = run_ok(
        Command::new(scenario_bin()).args(["churn", "10000"]),
        "sockerr-scenario churn",
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "churn=10000");
    // Every count settles at the processes run; the wait ends when they
    // all are in, and fails loudly if one never comes.
    let settled = eventually(
        Duration::from_secs(120),
        "10,000 masked reads and failed attempts counted",
        || {
            let m = agent.metrics();
            let findings = sum(&m, "sockerr_findings_total", r#"kind="so_error_masked""#);
            let failed = sum(&m, "sockerr_connect_attempts_total", r#"result="failed""#);
            (findings >= PROCESSES && failed >= PROCESSES).then_some(m)
        },
    );
    assert_eq!(
        sum(
            &settled,
            "sockerr_findings_total",
            r#"kind="so_error_masked""#
        ),
        PROCESSES,
        "one masked read per process, each counted once"
    );
    assert_eq!(
        sum(
            &settled,
            "sockerr_connect_attempts_total",
            r#"result="failed""#
        ),
        PROCESSES
    );
    assert_eq!(
        sum(
            &settled,
            "sockerr_so_error_reads_total",
            r#"result="error""#
        ),
        PROCESSES
    );
    for reason in ["counters_full", "remotes_full"] {
        assert_eq!(
            sum(
                &settled,
                "sockerr_kernel_drops_total",
                &format!(r#"reason="{reason}""#)
            ),
            0.0,
            "{reason}"
        );
    }
    // The names past the cap share one overflow series per kind.
    let named = settled
        .lines()
        .filter(|l| l.starts_with("sockerr_findings_total{") && l.contains("comm=\"ch"))
        .count();
    assert!(named <= 100, "{named} comms kept their own series");
}
