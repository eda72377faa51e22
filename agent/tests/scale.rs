//! Scaling with the host (root, real kernel): findings counted exactly
//! whatever their rate, more live attempts than the attempts map holds,
//! more comms than the counters map holds, and a log that stays short.
//! Each test reads host-wide drop counters, so they run one at a time.

mod support;

use std::{
    io::{BufRead, BufReader, Write},
    process::{Command, Stdio},
    sync::Mutex,
};

use support::{
    Agent, Log, PATIENCE, Tracer, agent_bin, eventually, require_root, run_program, scenario_bin,
    wait_timeout,
};

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn masked(agent: &Agent, comm: &str) -> f64 {
    agent.metric(&format!(
        r#"sockerr_findings_total{{comm="{comm}",kind="so_error_masked"}}"#
    ))
}

/// 200,000 findings in a burst from two processes: every one counted, in
/// the metrics and in each process's /findings entry, though few records
/// reach the agent.
#[test]
fn a_burst_of_findings_is_counted_exactly() {
    if !require_root() {
        return;
    }
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let agent = Agent::start();
    let burst = |comm: &str| {
        Command::new(scenario_bin())
            .args(["bench", "masked", "100000"])
            .env("SCENARIO_COMM", comm)
            .stdout(Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut producers = [burst("burst-a"), burst("burst-b")];
    let pids = producers.each_ref().map(|p| p.id());
    for p in &mut producers {
        assert!(wait_timeout(p, PATIENCE).unwrap().success());
    }
    for comm in ["burst-a", "burst-b"] {
        eventually(PATIENCE, comm, || {
            (masked(&agent, comm) >= 100_000.0).then_some(())
        });
        assert_eq!(masked(&agent, comm), 100_000.0, "{comm}");
    }
    // Each process's entry counts them all, from the kernel's tallies.
    for pid in pids {
        let count = eventually(PATIENCE, "tallies read", || {
            let found = agent.findings();
            let f = found
                .iter()
                .find(|f| f["pid"] == pid && f["kind"] == "so_error_masked")?;
            (f["count"] == 100_000).then(|| f["count"].clone())
        });
        assert_eq!(count, 100_000);
    }
}

/// A process flagged on every connect for a few seconds: one finding record
/// at its first finding, then at most one per --findings.detail-interval,
/// none lost; its /findings entry spans the whole run.
#[test]
fn finding_records_are_rate_limited_per_process_and_kind() {
    if !require_root() {
        return;
    }
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let flags = ["--call-sites=off", "--findings.detail-interval=1s"];
    let agent = Agent::with(&flags);
    // The records themselves, this process's only (the agent's counter of
    // records is the host's): `sockerr trace` prints each one it gets.
    let tracer = Tracer::start_with(&flags);
    let (pid, out) = run_program(
        Command::new(scenario_bin())
            .args(["bench", "masked", "100000"])
            .env("SCENARIO_COMM", "limited"),
    );
    assert!(out.status.success(), "{out:?}");
    // How long its loop of attempts took, as it measured it.
    let ns_per_op: f64 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .strip_prefix("ns_per_op=")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("the loop's timing: {out:?}"));
    let took = ns_per_op * 100_000.0 / 1e9;
    eventually(PATIENCE, "100,000 findings", || {
        (masked(&agent, "limited") == 100_000.0).then_some(())
    });
    // The entry's count and last_seen come from the kernel's tally: from
    // the first attempt's finding to the last one's (records alone would
    // leave last_seen up to an interval behind).
    let entry = eventually(PATIENCE, "the entry's tally", || {
        agent
            .findings()
            .into_iter()
            .find(|f| f["comm"] == "limited" && f["count"] == 100_000)
    });
    let time = |k: &str| humantime::parse_rfc3339(entry[k].as_str().unwrap()).unwrap();
    let span = time("last_seen")
        .duration_since(time("first_seen"))
        .unwrap()
        .as_secs_f64();
    assert!(
        span > took - 0.5 && span <= took + 0.01,
        "first_seen to last_seen {span:.3} s for a {took:.3} s loop: {entry:#}"
    );
    // The first, then one per interval at most, and at least one more
    // once the findings outlasted the interval.
    tracer.barrier();
    let sent = tracer.of(pid).len() as f64;
    let least = if span > 1.05 { 2.0 } else { 1.0 };
    let most = span.ceil() + 1.0;
    assert!(
        (least..=most).contains(&sent),
        "{sent} records for findings over {span:.3} s (from {least} to {most})"
    );
    assert_eq!(agent.metric("sockerr_events_lost_total"), 0.0);
}

/// More attempts alive at once than the attempts map holds: every masked
/// read is judged (a finding) or counted as untracked, exactly.
#[test]
fn more_live_attempts_than_the_map_holds_lose_nothing_silently() {
    if !require_root() {
        return;
    }
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let agent = Agent::with(&["--kernel.max-attempts", "16384"]);
    let untracked = r#"sockerr_kernel_drops_total{reason="attempt_untracked"}"#;
    let before = agent.metric(untracked);
    // Two processes (the fd limit here is 20,000), 10,000 attempts each;
    // all connect before any reads, so no attempt is evicted between its
    // two reads.
    let start = |comm: &str| {
        let mut child = Command::new(scenario_bin())
            .args(["concurrent", "10000", "buggy", "stdin"])
            .env("SCENARIO_COMM", comm)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "connected");
        (child, stdout)
    };
    let mut both = [start("live-a"), start("live-b")];
    for (child, _) in &mut both {
        writeln!(child.stdin.take().unwrap()).unwrap();
    }
    for (child, _) in &mut both {
        assert!(wait_timeout(child, PATIENCE).unwrap().success());
    }
    let settled = || {
        let m = agent.metrics();
        let get = |s: &str| support::sample(&m, s).unwrap_or(0.0);
        let found = get(r#"sockerr_findings_total{comm="live-a",kind="so_error_masked"}"#)
            + get(r#"sockerr_findings_total{comm="live-b",kind="so_error_masked"}"#);
        (found, get(untracked) - before)
    };
    let (found, dropped) = eventually(PATIENCE, "every read accounted", || {
        let (found, dropped) = settled();
        (found + dropped / 2.0 >= 20_000.0).then_some((found, dropped))
    });
    assert!(
        dropped > 0.0,
        "20,000 attempts in a map of 16,384 evict some"
    );
    assert_eq!(dropped % 2.0, 0.0, "both reads of an evicted attempt");
    assert_eq!(
        found + dropped / 2.0,
        20_000.0,
        "found {found}, dropped {dropped}"
    );
}

/// The counter map is sized for `--metrics.max-comms` at load: 6,000
/// comms under a cap of 10,000 (24,000 keys) each keep their own series,
/// and no update is dropped for want of room (beyond the cap the kernel
/// folds comms into the overflow: `churn.rs`).
#[test]
fn the_counters_map_holds_every_admitted_comm() {
    if !require_root() {
        return;
    }
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let agent = Agent::spawn(
        &agent_bin(),
        &["--metrics.max-comms", "10000"],
        Log::Capture,
    );
    let full = r#"sockerr_kernel_drops_total{reason="counters_full"}"#;
    let out = Command::new(scenario_bin())
        .args(["comms", "6000"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let capacity = agent.metric(r#"sockerr_map_capacity{map="counters"}"#);
    assert!(capacity >= 10_001.0 * 4.0, "capacity {capacity}");
    eventually(PATIENCE, "the last comm counted", || {
        (agent.metric(r#"sockerr_connect_attempts_total{comm="c5999",result="failed"}"#) == 1.0)
            .then_some(())
    });
    let metrics = agent.metrics();
    for i in [0, 1234, 5999] {
        let series = format!(r#"sockerr_findings_total{{comm="c{i}",kind="so_error_masked"}}"#);
        assert_eq!(support::sample(&metrics, &series), Some(1.0), "{series}");
    }
    assert!(
        !metrics.contains("(over max-comms)"),
        "a comm under the cap was folded"
    );
    assert_eq!(agent.metric(full), 0.0, "an update found the map full");
}

/// A process flagged on every connect, for seconds: one full line, then a
/// summary a second (--log.summary-interval 1s) whose counts add up.
#[test]
fn the_log_summarises_a_flood() {
    if !require_root() {
        return;
    }
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let agent = Agent::logged(&["--log.summary-interval", "1s"]);
    let mut child = Command::new(scenario_bin())
        .args(["bench", "masked", "40000"])
        .env("SCENARIO_COMM", "flood")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    assert!(wait_timeout(&mut child, PATIENCE).unwrap().success());
    let mine = |needle: &str| -> Vec<String> {
        agent
            .log()
            .into_iter()
            .filter(|l| l.contains(&format!(" pid={pid} ")) && l.contains(needle))
            .collect()
    };
    let field = |line: &str, key: &str| -> u64 {
        line.split(' ')
            .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{key} in {line}"))
    };
    // Summaries go on until the count is complete.
    let counted = eventually(PATIENCE, "summaries", || {
        let last = mine("findings continue").last()?.clone();
        (field(&last, "count") == 40_000).then_some(last)
    });
    let first = mine("msg=finding ");
    assert_eq!(first.len(), 1, "one full line: {first:?}");
    let summaries = mine("findings continue");
    let added: u64 = summaries.iter().map(|l| field(l, "new")).sum();
    assert_eq!(added + 1, 40_000, "{summaries:?}");
    assert!(summaries.len() <= 20, "{} summary lines", summaries.len());
    assert!(counted.contains("first_seen="));
    drop(agent);
}
