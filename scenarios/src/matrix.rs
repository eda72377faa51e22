//! `sockerr-scenario matrix --agent PATH`: the detection table against a real
//! agent on the running kernel. Runs `sockerr check`, starts
//! `sockerr trace --json`, runs every row of the table as its own process,
//! waits for the findings (a barrier scenario), and prints one line per row
//! and a closing summary line that `cargo xtask matrix` reads
//! (`sockerr_scenarios::summary`), with `unreach`: whether `sockerr run`
//! counts a connect() that fails before the handshake (no route), where the
//! kernel offers the hook for it, and `sites`: whether a flagged process
//! (this program, dynamically linked to the C library) gets its connect()
//! and SO_ERROR reads named down to function and file:line.
//!
//! Runs on the host (root) and as the payload of the kernel-matrix VMs.
//! Exits 0 only when every row passed.

use std::{
    io::{Read, Write as _},
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;
use sockerr_scenarios::{
    bpf_stats,
    summary::Summary,
    table::{BARRIER, Case, TABLE},
};
use sockerr_testkit::{Agent, Log, Tracer, closed_port, sample, wait_timeout};

struct Options {
    agent: PathBuf,
    /// Extra arguments for `sockerr check` and `sockerr trace` (e.g. hooks
    /// to disable, to exercise a fallback).
    agent_args: Vec<String>,
    /// How long the agent may take to attach (TCG emulation is slow).
    attach_timeout: Duration,
    bpf_stats: bool,
}

fn parse(args: &[&str]) -> Result<Options> {
    let usage = "matrix --agent PATH [--agent-arg ARG]... [--attach-timeout SECS] [--bpf-stats]";
    let mut options = Options {
        agent: PathBuf::new(),
        agent_args: Vec::new(),
        attach_timeout: Duration::from_secs(120),
        bpf_stats: false,
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match *arg {
            "--agent" => options.agent = it.next().context(usage)?.into(),
            "--attach-timeout" => {
                options.attach_timeout = Duration::from_secs(it.next().context(usage)?.parse()?)
            }
            "--bpf-stats" => options.bpf_stats = true,
            "--agent-arg" => options
                .agent_args
                .push(it.next().context(usage)?.to_string()),
            other => bail!("unknown argument {other}; usage: {usage}"),
        }
    }
    anyhow::ensure!(!options.agent.as_os_str().is_empty(), "usage: {usage}");
    Ok(options)
}

pub fn run(args: &[&str]) -> Result<()> {
    let options = parse(args)?;
    let started = Instant::now();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .context("reading the kernel release")?
        .trim()
        .to_owned();
    println!("matrix: kernel {kernel}, agent {}", options.agent.display());

    let without_agent = transparency_calls();
    let check = check(&options);
    let trace = trace(&options);
    let transparent = match (&trace, without_agent) {
        (Ok(_), Ok(without))
            if without
                .last()
                .is_some_and(|l| l.starts_with("ended: exit status: 0")) =>
        {
            compare_transparency(&without, transparency_calls())
        }
        (Err(_), _) => "error".to_owned(),
        (_, Ok(without)) => {
            println!(
                "matrix: transparency: the calls failed without the agent: {}",
                without.last().map_or("", String::as_str)
            );
            "error".to_owned()
        }
        (_, Err(e)) => {
            println!("matrix: transparency: {e:#}");
            "error".to_owned()
        }
    };
    let mut outcomes: Vec<Option<bool>> = vec![None; TABLE.len()];
    let mut sites = "fail";
    if let Ok(tracer) = &trace {
        let pids: Vec<Result<u32>> = TABLE.iter().map(scenario).collect();
        let barrier = scenario(&BARRIER).and_then(|pid| {
            tracer
                .try_wait_for(pid, BARRIER.expected.len(), Duration::from_secs(60))
                .map(drop)
        });
        match &barrier {
            Ok(()) => println!("matrix: barrier scenario flagged; every finding is in"),
            Err(e) => println!("matrix: barrier failed: {e:#}"),
        }
        for (i, (case, pid)) in TABLE.iter().zip(pids).enumerate() {
            let (ok, got) = match pid {
                Ok(pid) => {
                    let kinds = tracer.kinds(pid);
                    (kinds == case.expected, format!("{kinds:?}"))
                }
                Err(e) => (false, format!("scenario failed: {e:#}")),
            };
            outcomes[i] = Some(ok);
            println!(
                "{} {:>2} {:<44} expected {:?} got {got}",
                if ok { "PASS" } else { "FAIL" },
                i + 1,
                case.name,
                case.expected,
            );
        }
        sites = call_sites(tracer);
        if options.bpf_stats {
            hot_paths();
            bpf_stats::print();
        }
    }
    let trace_ok = match trace {
        // Dropping it stops the agent: everything it attached goes.
        Ok(tracer) => {
            drop(tracer);
            true
        }
        Err(e) => {
            println!("matrix: sockerr trace did not start: {e:#}");
            println!("matrix: none of the {} rows ran", TABLE.len());
            false
        }
    };

    let unreach = no_route_counted(&options);
    let summary = Summary {
        kernel,
        check,
        trace: trace_ok,
        rows: TABLE.len(),
        pass: outcomes.iter().filter(|o| **o == Some(true)).count(),
        failed: (1..=TABLE.len())
            .filter(|n| outcomes[n - 1] != Some(true))
            .collect(),
        unreach: unreach.to_owned(),
        transparent,
        sites: sites.to_owned(),
        secs: started.elapsed().as_secs_f64(),
    };
    println!("{summary}");
    if !check
        || !summary.failed.is_empty()
        || unreach == "fail"
        || summary.transparent != "ok"
        || sites == "fail"
    {
        bail!("the matrix failed on {}", summary.kernel);
    }
    Ok(())
}

/// A connect() to an address with no route, under `sockerr run`: `ok` when
/// it is counted once as a failure with `ENETUNREACH` (by comm and by
/// remote) and a refused blocking connect() still once, not also by the
/// return-value hook; `absent` when this kernel offers no hook for it,
/// `skipped` when the address is routable here.
fn no_route_counted(options: &Options) -> &'static str {
    let args: Vec<&str> = options.agent_args.iter().map(String::as_str).collect();
    let agent = match Agent::try_spawn(&options.agent, &args, Log::Discard, options.attach_timeout)
    {
        Ok(agent) => agent,
        Err(e) => {
            println!("matrix: unreach: {e}");
            return "fail";
        }
    };
    let metrics = || agent.get("/metrics").1;
    let absent = r#"sockerr_probe_attached{hook="none",probe="connect_errors"}"#;
    if sample(&metrics(), absent) == Some(0.0) {
        return "absent";
    }
    let connect = |comm: &str, addr: &str| {
        std::env::current_exe()
            .and_then(|me| {
                Command::new(me)
                    .args(["connect", addr])
                    .env("SCENARIO_COMM", comm)
                    .output()
            })
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_else(|e| e.to_string())
    };
    // TEST-NET-1: the VMs have no route but loopback's.
    let said = connect("unreachable", "192.0.2.1:9");
    if said != format!("connect={}", libc::ENETUNREACH) {
        println!("matrix: unreach: 192.0.2.1 is reachable here ({said}): nothing to count");
        return "skipped";
    }
    let refused = connect("refusedonce", &format!("127.0.0.1:{}", closed_port()));
    if refused != format!("connect={}", libc::ECONNREFUSED) {
        println!("matrix: unreach: a connect to a closed port said {refused}");
        return "fail";
    }
    let expected = [
        r#"sockerr_connect_failures_total{comm="unreachable",errno="ENETUNREACH"}"#,
        r#"sockerr_connect_failures_by_remote_total{reason="ENETUNREACH",remote="192.0.2.1:9"}"#,
        r#"sockerr_connect_failures_total{comm="refusedonce",errno="ECONNREFUSED"}"#,
    ];
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = metrics();
        let got: Vec<Option<f64>> = expected.iter().map(|s| sample(&text, s)).collect();
        if got.iter().all(|v| *v == Some(1.0)) {
            // Settled, and still once each a moment later.
            std::thread::sleep(Duration::from_millis(500));
            let text = metrics();
            if expected.iter().all(|s| sample(&text, s) == Some(1.0)) {
                return "ok";
            }
        }
        if Instant::now() >= deadline {
            println!("matrix: unreach: expected 1 each of {expected:?}, got {got:?}");
            return "fail";
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Call sites (`sites`): `repeat buggy 2 stdin` (this program: libevent's
/// two SO_ERROR reads re-enacted, in functions named after libevent's) is
/// flagged at its first attempt, which makes the agent put uprobes on its
/// C library; the finding of its second attempt must name where it
/// connected and read (see [`judge_sites`]).
fn call_sites(tracer: &Tracer) -> &'static str {
    let started = Instant::now();
    let spawned = std::env::current_exe().and_then(|me| {
        Command::new(me)
            .args(["repeat", "buggy", "2", "stdin"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
    });
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) => {
            println!("matrix: call sites: starting the client: {e}");
            return "fail";
        }
    };
    let pid = child.id();
    let timeout = Duration::from_secs(60);
    let mut found = tracer.try_wait_for(pid, 1, timeout).unwrap_or_default();
    if found.len() == 1 {
        // Its uprobes are attached once its first finding is out.
        let _ = child.stdin.take().map(|mut s| writeln!(s));
        found = tracer.try_wait_for(pid, 2, timeout).unwrap_or_default();
    }
    let _ = child.kill();
    let _ = child.wait();
    let Some(finding) = found.get(1) else {
        println!(
            "matrix: call sites: {} of 2 findings of `repeat buggy` within {timeout:?}",
            found.len()
        );
        return "fail";
    };
    let verdict = judge_sites(finding);
    println!(
        "matrix: call sites {} in {:.1} s: {}",
        match verdict {
            Ok(v) => v,
            Err(_) => "fail",
        },
        started.elapsed().as_secs_f64(),
        finding["call_sites"]
    );
    verdict.unwrap_or_else(|why| {
        println!("matrix: call sites: {why}");
        "fail"
    })
}

/// `ok` when a finding of `repeat buggy` names its connect() and both
/// SO_ERROR reads by function, file and line, each read by the function
/// that made it; `connect` when only the connect is named and the reads
/// have no site at all (a kernel whose getsockopt hook may not ask which
/// task runs it); otherwise what is missing.
fn judge_sites(finding: &Value) -> Result<&'static str, String> {
    let sites = &finding["call_sites"];
    let named = |what: &str, frame: &Value, function: &str| {
        let f = frame["function"].as_str().unwrap_or_default();
        let file = frame["file"].as_str().unwrap_or_default();
        let line = frame["line"].as_u64().unwrap_or(0);
        if f.is_empty() || !f.ends_with(function) || file.is_empty() || line == 0 {
            Err(format!(
                "{what} at {frame}, expected a function ending in `{function}` with file and line"
            ))
        } else {
            Ok(())
        }
    };
    named("connect", &sites["connect"]["at"], "")?;
    let reads = sites["so_error_reads"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if reads.len() == 2 && reads.iter().all(Value::is_null) {
        return Ok("connect");
    }
    for (i, function) in ["bufferevent_finished_connecting", "evhttp_connection_cb"]
        .into_iter()
        .enumerate()
    {
        let read = reads.get(i).unwrap_or(&Value::Null);
        named(&format!("read {}", i + 1), &read["at"], function)?;
    }
    Ok("ok")
}

/// The output of `sockerr-scenario transparency`: one line per call, and
/// a last line with how it ended (a call that failed only with the agent
/// attached stops it: that differs too).
fn transparency_calls() -> Result<Vec<String>> {
    let out = Command::new(std::env::current_exe()?)
        .arg("transparency")
        .output()
        .context("running sockerr-scenario transparency")?;
    let mut lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    lines.push(format!(
        "ended: {} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    ));
    Ok(lines)
}

/// `ok` when every call gave the same result with the agent attached,
/// else `differs:N` (the first differences printed) or `error`.
fn compare_transparency(without: &[String], with: Result<Vec<String>>) -> String {
    let with = match with {
        Ok(with) => with,
        Err(e) => {
            println!("matrix: transparency: the calls failed with the agent attached: {e:#}");
            return "error".to_owned();
        }
    };
    let differ: Vec<(&String, &String)> =
        without.iter().zip(&with).filter(|(a, b)| a != b).collect();
    let missing = without.len().abs_diff(with.len());
    for (a, b) in differ.iter().take(10) {
        println!(
            "matrix: transparency: without the agent: {a}\nmatrix: transparency: with it:        {b}"
        );
    }
    println!(
        "matrix: transparency: {} calls, {} differ with the agent attached{}",
        without.len(),
        differ.len() + missing,
        if missing > 0 { " (some missing)" } else { "" }
    );
    match differ.len() + missing {
        0 => "ok".to_owned(),
        n => format!("differs:{n}"),
    }
}

/// `sockerr check`, its output prefixed with `check| `; true when it exits 0.
fn check(options: &Options) -> bool {
    println!("matrix: $ {} check", options.agent.display());
    let started = Instant::now();
    match Command::new(&options.agent)
        .arg("check")
        .args(&options.agent_args)
        .output()
    {
        Ok(out) => {
            let text = String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr);
            for line in text.lines() {
                println!("check| {line}");
            }
            println!(
                "matrix: sockerr check {} in {:.1} s",
                out.status,
                started.elapsed().as_secs_f64()
            );
            out.status.success()
        }
        Err(e) => {
            println!("matrix: cannot run {}: {e}", options.agent.display());
            false
        }
    }
}

/// Loops that give each program thousands of runs on its common path (a
/// connect decided, a read judged, I/O on a healthy socket), so that the
/// statistics printed after them are those of the hot paths, not of the
/// table's few findings.
fn hot_paths() {
    for (name, iterations) in [
        ("refused", "2000"),
        ("established", "1000"),
        ("pingpong", "2000"),
    ] {
        let out = std::env::current_exe()
            .and_then(|me| Command::new(me).args(["bench", name, iterations]).output());
        match out {
            Ok(o) if o.status.success() => println!(
                "matrix: hot path {name} x{iterations}: {}",
                String::from_utf8_lossy(&o.stdout).trim()
            ),
            other => println!("matrix: hot path {name} failed: {other:?}"),
        }
    }
}

/// `sockerr trace --json`, its log passed through prefixed with `trace| `.
fn trace(options: &Options) -> Result<Tracer> {
    if options.bpf_stats {
        bpf_stats::set(true)?;
    }
    println!("matrix: $ {} trace --json", options.agent.display());
    let started = Instant::now();
    let tracer = Tracer::spawn(
        &options.agent,
        &options.agent_args,
        options.attach_timeout,
        |line| println!("trace| {line}"),
    )?;
    println!(
        "matrix: tracing after {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(tracer)
}

/// Runs one row's scenario to completion (at most 60 s); its pid.
fn scenario(case: &Case) -> Result<u32> {
    let exe = std::env::current_exe().context("locating sockerr-scenario")?;
    let mut child = Command::new(exe)
        .args(case.args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting the scenario")?;
    let pid = child.id();
    let status = wait_timeout(&mut child, Duration::from_secs(60))?;
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut stderr);
    }
    anyhow::ensure!(status.success(), "{status}: {}", stderr.trim());
    Ok(pid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_sites_are_named_down_to_the_line() {
        let frame = |function: &str| {
            serde_json::json!({
                "address": "0xaaaad7e1c0a8",
                "module": "/sockerr/sockerr-scenario",
                "function": function,
                "file": "scenarios/src/net.rs",
                "line": 91,
            })
        };
        let finding = |reads: Value| {
            serde_json::json!({
                "kind": "so_error_masked",
                "call_sites": {
                    "connect": {"at": frame("sockerr_scenario::refused"), "stack": []},
                    "so_error_reads": reads,
                },
            })
        };
        let both = serde_json::json!([
            {"at": frame("sockerr_scenario::bufferevent_finished_connecting"), "stack": []},
            {"at": frame("sockerr_scenario::evhttp_connection_cb"), "stack": []},
        ]);
        assert_eq!(judge_sites(&finding(both.clone())), Ok("ok"));
        assert_eq!(
            judge_sites(&finding(serde_json::json!([null, null]))),
            Ok("connect")
        );
        let mut swapped = both.clone();
        swapped.as_array_mut().unwrap().reverse();
        assert!(judge_sites(&finding(swapped)).is_err());
        let mut no_line = both;
        no_line[1]["at"]["line"] = Value::Null;
        assert!(judge_sites(&finding(no_line)).is_err());
        assert!(
            judge_sites(&serde_json::json!({"call_sites": {"note": "not instrumented yet"}}))
                .is_err()
        );
    }
}
