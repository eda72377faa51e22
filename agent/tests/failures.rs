//! Every connect failure a user would call a failure (root, real kernel):
//! attempts the application gives up on, failures inside connect(), kernel
//! timeouts, and failures by remote endpoint. None of them is a finding.

mod support;

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    sync::{PoisonError, RwLock},
};

use support::{
    Agent, Netns, PATIENCE, closed_port, eventually, renamed, require_root, run_ok, run_program,
    scenario_bin, wait_timeout,
};

/// A loopback port whose listener answers no SYN (its accept queue is full),
/// held until dropped.
struct Blackhole {
    child: Child,
    port: u16,
}

impl Blackhole {
    fn start(netns: Option<&Netns>) -> Self {
        let mut cmd = match netns {
            Some(ns) => ns.command(scenario_bin()),
            None => Command::new(scenario_bin()),
        };
        let mut child = cmd
            .arg("blackhole")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line.trim().parse().expect("the blackhole's port");
        Self { child, port }
    }
}

impl Drop for Blackhole {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = wait_timeout(&mut self.child, PATIENCE);
    }
}

/// Every agent counts every process's failures, and each keeps the first
/// 100 remotes: the test failing 1,000 remotes runs alone, or the others'
/// remotes would fall into its `other` (write lock), the rest together.
static REMOTES: RwLock<()> = RwLock::new(());

fn by_remote(agent: &Agent, remote: &str, reason: &str) -> f64 {
    agent.metric(&format!(
        r#"sockerr_connect_failures_by_remote_total{{reason="{reason}",remote="{remote}"}}"#
    ))
}

/// Waits until the series reaches `n`, then checks it is exactly `n`. The
/// kernel counts an attempt when it is decided or its socket closed, both
/// before its process is reaped, and every scrape reads those counts: once
/// the processes that make the attempts are gone, nothing more is coming.
fn settles(what: &str, n: f64, read: impl Fn() -> f64) {
    let seen = eventually(PATIENCE, what, || {
        let seen = read();
        (seen >= n).then_some(seen)
    });
    assert_eq!(seen, n, "{what}");
}

/// Real clients with short connect timeouts against a backend that never
/// answers: each attempt counts once as aborted, by its comm and remote,
/// and is no finding.
#[test]
fn attempts_given_up_by_the_application_count_as_aborted() {
    if !require_root() {
        return;
    }
    let _remotes = REMOTES.read().unwrap_or_else(PoisonError::into_inner);
    let agent = Agent::start();
    let hole = Blackhole::start(None);
    let remote = format!("127.0.0.1:{}", hole.port);
    // Nothing answers: curl exits 28 (timeout) after a second. Each client
    // runs under a comm of its own.
    let (curl, out) = run_program(Command::new(renamed("curl", "abort-curl")).args([
        "-s",
        "--connect-timeout",
        "1",
        &format!("http://{remote}/"),
    ]));
    assert_eq!(out.status.code(), Some(28), "curl timed out: {out:?}");
    let py = format!(
        "import asyncio\nasync def main():\n    try:\n        await asyncio.wait_for(asyncio.open_connection('127.0.0.1', {}), 1)\n    except asyncio.TimeoutError:\n        print('timeout')\nasyncio.run(main())\n",
        hole.port
    );
    // The interpreter itself (python3 on PATH may be a wrapper script).
    let interpreter = run_ok(
        Command::new("python3").args(["-c", "import sys; print(sys.executable)"]),
        "python3",
    );
    let interpreter = String::from_utf8(interpreter.stdout).unwrap();
    let python3 = renamed(interpreter.trim(), "abort-python");
    let (python, out) = run_program(Command::new(python3).args(["-c", &py]));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "timeout",
        "{out:?}"
    );
    let (aborter, out) = run_program(
        Command::new(scenario_bin())
            .args(["abort", &hole.port.to_string()])
            .env("SCENARIO_COMM", "aborter"),
    );
    assert!(out.status.success(), "{out:?}");
    let (shutter, out) = run_program(
        Command::new(scenario_bin())
            .args(["abort", &hole.port.to_string(), "shutdown"])
            .env("SCENARIO_COMM", "shutter"),
    );
    assert!(out.status.success(), "{out:?}");
    settles("curl's aborted attempt", 1.0, || {
        agent.attempts("abort-curl", "aborted")
    });
    settles("python's aborted attempt", 1.0, || {
        agent.attempts("abort-python", "aborted")
    });
    settles("the scenario's aborted attempt", 1.0, || {
        agent.attempts("aborter", "aborted")
    });
    settles("the attempt shut down while pending", 1.0, || {
        agent.attempts("shutter", "aborted")
    });
    assert_eq!(by_remote(&agent, &remote, "aborted"), 4.0);
    for comm in ["abort-curl", "abort-python", "aborter", "shutter"] {
        assert_eq!(agent.attempts(comm, "failed"), 0.0, "{comm}");
    }
    let findings = agent.findings();
    for pid in [curl, python, aborter, shutter] {
        assert!(
            findings.iter().all(|f| f["pid"] != pid),
            "closing a pending socket is no finding: {findings:?}"
        );
    }
}

/// Ephemeral ports exhausted in a namespace: connect() itself fails with
/// EADDRNOTAVAIL, counted once each, by errno and by remote.
#[test]
fn port_exhaustion_counts_as_failed_with_eaddrnotavail() {
    if !require_root() {
        return;
    }
    let _remotes = REMOTES.read().unwrap_or_else(PoisonError::into_inner);
    let ns = Netns::new("ports");
    ns.run(&["sysctl", "-q", "net.ipv4.ip_local_port_range=40000 40001"]);
    let agent = Agent::start();
    // A listener in the namespace: connections that get a port stay.
    let hole = Blackhole::start(Some(&ns));
    let remote = format!("127.0.0.1:{}", hole.port);
    let out = ns
        .command(scenario_bin())
        .args(["exhaust", &remote, "7"])
        .env("SCENARIO_COMM", "exhauster")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    // The listener and its filler connection hold ports of the range too:
    // what is left goes to the first connects, the rest fail.
    let printed = String::from_utf8_lossy(&out.stdout);
    let (held, failed) = printed
        .trim()
        .strip_prefix("held=")
        .and_then(|r| r.split_once(" eaddrnotavail="))
        .map(|(h, f)| (h.parse::<f64>().unwrap(), f.parse::<f64>().unwrap()))
        .expect("the scenario's counts");
    assert!(held <= 1.0 && held + failed == 7.0, "{printed}");
    let failures = r#"sockerr_connect_failures_total{comm="exhauster",errno="EADDRNOTAVAIL"}"#;
    settles("EADDRNOTAVAIL failures", failed, || agent.metric(failures));
    assert_eq!(agent.attempts("exhauster", "failed"), failed);
    assert_eq!(agent.attempts("exhauster", "aborted"), 0.0);
    assert_eq!(by_remote(&agent, &remote, "EADDRNOTAVAIL"), failed);
}

/// Refused, timed out by the kernel (SYN retries exhausted in a namespace),
/// and established attempts, each counted exactly; the by-remote counter
/// adds up to the by-errno one.
#[test]
fn refused_timed_out_and_established_attempts_count_exactly() {
    if !require_root() {
        return;
    }
    let _remotes = REMOTES.read().unwrap_or_else(PoisonError::into_inner);
    let ns = Netns::new("synretries");
    ns.run(&["sysctl", "-q", "net.ipv4.tcp_syn_retries=1"]);
    let agent = Agent::start();
    let connect = |addr: &str| {
        let out = ns
            .command(scenario_bin())
            .args(["connect", addr])
            .env("SCENARIO_COMM", "counted")
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    let hole = Blackhole::start(Some(&ns));
    let silent = format!("127.0.0.1:{}", hole.port);
    // The kernel gives up after one SYN retransmit (about 3 s).
    assert_eq!(connect(&silent), format!("connect={}", libc::ETIMEDOUT));
    let closed = format!("127.0.0.1:{}", closed_port());
    for _ in 0..3 {
        assert_eq!(connect(&closed), format!("connect={}", libc::ECONNREFUSED));
    }
    // An established one, outside the namespace, to a listener of the test.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let open = listener.local_addr().unwrap().to_string();
    let out = Command::new(scenario_bin())
        .args(["connect", &open])
        .env("SCENARIO_COMM", "counted")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "connect=0");
    settles("the established attempt", 1.0, || {
        agent.attempts("counted", "established")
    });
    settles("the failed attempts", 4.0, || {
        agent.attempts("counted", "failed")
    });
    let errno = |name: &str| {
        agent.metric(&format!(
            r#"sockerr_connect_failures_total{{comm="counted",errno="{name}"}}"#
        ))
    };
    assert_eq!(errno("ETIMEDOUT"), 1.0);
    assert_eq!(errno("ECONNREFUSED"), 3.0);
    assert_eq!(by_remote(&agent, &silent, "ETIMEDOUT"), 1.0);
    assert_eq!(by_remote(&agent, &closed, "ECONNREFUSED"), 3.0);
    assert_eq!(agent.attempts("counted", "aborted"), 0.0);
}

/// 1,000 failing remotes: the exposition keeps --metrics.max-remotes of
/// them and counts the rest as `other`, and its total matches the errno
/// counter's.
#[test]
fn remote_endpoints_are_capped() {
    if !require_root() {
        return;
    }
    let _alone = REMOTES.write().unwrap_or_else(PoisonError::into_inner);
    let agent = Agent::with(&["--metrics.max-remotes", "100"]);
    let out = Command::new(scenario_bin())
        .args(["remotes", "1000"])
        .env("SCENARIO_COMM", "scatter")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let failures = r#"sockerr_connect_failures_total{comm="scatter",errno="ECONNREFUSED"}"#;
    settles("1,000 refused attempts", 1000.0, || agent.metric(failures));
    let metrics = agent.metrics();
    let series: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("sockerr_connect_failures_by_remote_total{"))
        .collect();
    assert!(series.len() <= 101, "{} series", series.len());
    assert!(series.iter().any(|l| l.contains(r#"remote="other""#)));
    // Every failed or aborted attempt once by remote, whoever made it (the
    // host's other processes count too): the by-remote total equals the
    // per-errno failures plus the aborted attempts, once both are sampled.
    let sum = |metrics: &str, prefix: &str, filter: &str| -> f64 {
        metrics
            .lines()
            .filter(|l| l.starts_with(prefix) && l.contains(filter))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    eventually(PATIENCE, "by-remote total = failures + aborted", || {
        let m = agent.metrics();
        let by_remote = sum(&m, "sockerr_connect_failures_by_remote_total{", "");
        let failed = sum(&m, "sockerr_connect_failures_total{", "");
        let aborted = sum(&m, "sockerr_connect_attempts_total{", r#"result="aborted""#);
        (by_remote >= 1000.0 && by_remote == failed + aborted).then_some(())
    });
}
