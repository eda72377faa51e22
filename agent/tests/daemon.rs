//! `sockerr run`, `check` and the command line, end to end (root).

mod support;

use std::{
    io::Write,
    net::{TcpListener, TcpStream},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;
use support::{
    Agent, Log, PATIENCE, Signal, agent_bin, eventually, http_get, raw_response, require_root,
    sample, scenario, scenario_alive, scenario_env, signal, wait_timeout,
};

fn promtool_check_metrics(exposition: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running promtool (cargo xtask setup installs prometheus)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(exposition.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let complaints =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "promtool rejects the exposition: {complaints}\n{exposition}"
    );
    assert!(complaints.trim().is_empty(), "promtool lint: {complaints}");
}

#[test]
fn run_detects_the_libevent_bug_and_serves_it() {
    if !require_root() {
        return;
    }
    let agent = Agent::start();
    // Alive until its findings are served: attributed from /proc.
    let masked = scenario_alive(&["masked"], &[("SCENARIO_COMM", "served")]);
    let pid = masked.pid();
    let (renamed, out) = scenario_env(&["renamed", "x\"y\\z\n{}"], &[]);
    assert!(out.status.success());

    agent.wait_findings_of(pid, 2);
    agent.barrier();
    let found = agent.findings_of(pid);
    assert_eq!(found.len(), 2, "{found:#?}");
    let masked_finding = found
        .iter()
        .find(|f| f["kind"] == "so_error_masked")
        .expect("masked finding in /findings");
    assert_eq!(masked_finding["errno"], "ECONNREFUSED");
    assert_eq!(masked_finding["exe"], support::scenario_exe());
    assert!(
        masked_finding["remote"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:")
    );
    assert_eq!(
        masked_finding["so_error_reads"],
        serde_json::json!([111, 0])
    );
    assert_eq!(masked_finding["count"], 1);
    for field in [
        "comm",
        "fd",
        "time",
        "first_seen",
        "cgroup",
        "syscall",
        "severity",
    ] {
        assert!(
            masked_finding.get(field).is_some(),
            "/findings lacks {field}"
        );
    }
    assert!(masked.finish().status.success());
    assert_eq!(agent.findings_of(renamed).len(), 2);

    let (status, metrics) = agent.get("/metrics");
    assert_eq!(status, 200);
    // Counted in the kernel, by comm: the one attempt and its two reads.
    for series in [
        r#"sockerr_findings_total{comm="served",kind="so_error_masked"}"#,
        r#"sockerr_connect_attempts_total{comm="served",result="failed"}"#,
        r#"sockerr_connect_failures_total{comm="served",errno="ECONNREFUSED"}"#,
        r#"sockerr_so_error_reads_total{comm="served",result="error"}"#,
        r#"sockerr_so_error_reads_total{comm="served",result="zero"}"#,
        r#"sockerr_probe_attached{hook="cgroup/getsockopt",probe="so_error"}"#,
        r#"sockerr_probe_attached{hook="tp_btf/inet_sock_set_state",probe="connect"}"#,
        r#"sockerr_probe_attached{hook="cgroup/sock_release",probe="release"}"#,
    ] {
        assert_eq!(sample(&metrics, series), Some(1.0), "{series}\n{metrics}");
    }
    // Every process the agent flagged: ours (served, renamed, the
    // barrier's) and any other of the host's.
    assert!(
        sample(
            &metrics,
            r#"sockerr_flagged_processes{kind="so_error_masked"}"#
        )
        .is_some_and(|n| n >= 3.0),
        "{metrics}"
    );
    assert_eq!(sample(&metrics, "sockerr_events_lost_total"), Some(0.0));
    // Processes carrying call-site uprobes, against --call-sites.max-processes.
    assert_eq!(
        sample(
            &metrics,
            r#"sockerr_map_capacity{map="call_site_processes"}"#
        ),
        Some(64.0)
    );
    // Control characters are written as \xNN (and a backslash doubled), so
    // distinct names stay distinct; the exposition escapes the rest.
    assert!(
        metrics.contains(r#"comm="x\"y\\\\z\\x0a{}""#),
        "hostile comm escaped: {metrics}"
    );
    promtool_check_metrics(&metrics);
}

#[test]
fn http_edge_cases() {
    if !require_root() {
        return;
    }
    // Without the in-flight and per-client limits, which would refuse some
    // of the 100 concurrent scrapes below by design (privsep.rs tests them).
    let agent = Agent::with(&["--web.max-requests=0", "--web.max-connections-per-client=0"]);
    assert_eq!(agent.get("/findings?limit=abc").0, 400);
    assert_eq!(agent.get("/findings?kind=bogus").0, 400);
    assert_eq!(agent.get("/findings?kind=so_error_masked&limit=1").0, 200);
    assert_eq!(agent.get("/nope").0, 404);
    let raw = |request: &[u8]| {
        let mut s = TcpStream::connect(agent.address).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = s.write_all(request);
        let _ = s.shutdown(std::net::Shutdown::Write);
        raw_response(&mut s).0
    };
    let garbage = raw(b"\x00\x01GARBAGE \xff\r\n\r\n");
    assert!(
        (400..500).contains(&garbage),
        "malformed request: {garbage}"
    );
    let huge = format!(
        "GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(1 << 20)
    );
    let status = raw(huge.as_bytes());
    assert!(
        status == 0 || (400..500).contains(&status),
        "oversized request: {status}"
    );
    // 100 concurrent scrapes, all served.
    let port = agent.port();
    let scrapes: Vec<_> = (0..100)
        .map(|_| thread::spawn(move || http_get(port, "/metrics").0))
        .collect();
    for s in scrapes {
        assert_eq!(s.join().unwrap(), 200);
    }
    assert_eq!(agent.get("/healthz"), (200, "ok\n".into()));
}

/// Ids of the eBPF programs process `pid` holds fds of (from fdinfo).
fn programs_of(pid: u32) -> Vec<u64> {
    let mut ids: Vec<u64> = std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .expect("the agent's fdinfo")
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .filter_map(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("prog_id:")?.trim().parse().ok())
        })
        .collect();
    ids.sort();
    ids.dedup();
    ids
}

#[test]
fn sigterm_detaches_everything_quickly() {
    if !require_root() {
        return;
    }
    let mut agent = Agent::start();
    let mine = programs_of(agent.pid());
    // Five attached, and the two call-site uprobes loaded for later.
    assert_eq!(mine.len(), 7, "the agent's programs are loaded");
    // It exits by itself (in about a second), not killed by the deadline.
    signal(&agent.child, Signal::SIGTERM);
    let status = wait_timeout(&mut agent.child, Duration::from_secs(20))
        .expect("sockerr run to exit on SIGTERM");
    assert!(status.success(), "{status}");
    // The kernel frees programs after an RCU grace period.
    let deadline = Instant::now() + PATIENCE;
    loop {
        let out = Command::new("bpftool")
            .args(["prog", "show", "--json"])
            .output()
            .unwrap();
        let loaded: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
        let ids: Vec<u64> = loaded.iter().filter_map(|p| p["id"].as_u64()).collect();
        let left: Vec<_> = mine.iter().filter(|id| ids.contains(id)).collect();
        if left.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "programs left loaded: {left:?}");
        thread::sleep(Duration::from_millis(50));
    }
    std::mem::forget(agent); // already stopped
}

/// sockerr as user nobody, with no capabilities.
fn as_nobody(args: &[&str]) -> std::process::Output {
    Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(agent_bin())
        .args(args)
        .output()
        .expect("setpriv")
}

fn sockerr(args: &[&str]) -> std::process::Output {
    Command::new(agent_bin())
        .args(args)
        .output()
        .expect("running sockerr")
}

#[test]
fn check_passes_here_and_names_what_is_missing_without_privileges() {
    if !require_root() {
        return;
    }
    let out = sockerr(&["check"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(!text.contains("MISSING"), "{text}");
    // Each probe of the table, with the hook it uses on this kernel.
    for line in [
        "ok       probe connect                tp_btf/inet_sock_set_state: ",
        "ok       probe so_error               cgroup/getsockopt: ",
        "ok       probe send                   tp_btf/sock_send_length: ",
        "ok       probe recv                   tp_btf/sock_recv_length: ",
        "ok       probe release                cgroup/sock_release: ",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
    let nobody = as_nobody(&["check"]);
    let text = String::from_utf8_lossy(&nobody.stdout);
    assert!(!nobody.status.success());
    assert!(
        text.contains("MISSING  privileges") && text.contains("CAP_BPF"),
        "{text}"
    );
    let run = as_nobody(&["run", "--web.listen-address", "127.0.0.1:0"]);
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(
        !run.status.success() && err.contains("privileges: missing CAP_BPF"),
        "{err}"
    );
}

#[test]
fn bad_input_fails_clearly_before_attaching() {
    if !require_root() {
        return;
    }
    let out = sockerr(&["run", "--no-such-flag"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--no-such-flag"));

    let busy = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    let out = sockerr(&["run", "--web.listen-address", &addr]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains(&format!("cannot listen on {addr}")) && err.contains("in use"),
        "{err}"
    );
    // Refused before loading anything.
    assert!(!err.contains("attach"), "{err}");

    let out = sockerr(&["run", "--web.listen-address", "0.0.0.0:0"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("--web.allow-remote"));
    let out = sockerr(&["run", "--retention", "soon"]);
    assert_eq!(out.status.code(), Some(2));
    // 0 would empty /findings and sockerr_flagged_processes silently.
    let out = sockerr(&["run", "--retention", "0"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("must be more than 0"));
}

/// A kernel where no send or receive hook loads (every one disabled): the
/// agent runs with the rest, says what is lost, and still finds masked
/// reads. Without any SO_ERROR hook it refuses to start.
#[test]
fn runs_without_an_optional_probe_and_refuses_without_a_required_one() {
    if !require_root() {
        return;
    }
    let no_io: Vec<String> = [
        "tp_btf/sock_send_length",
        "tp_btf/sock_recv_length",
        "fentry/tcp_sendmsg",
        "fentry/tcp_recvmsg",
        "kprobe/tcp_sendmsg",
        "kprobe/tcp_recvmsg",
    ]
    .iter()
    .map(|hook| format!("--kernel.disable-hook={hook}"))
    .collect();
    let no_io: Vec<&str> = no_io.iter().map(String::as_str).collect();
    let check = sockerr(&[&["check"][..], &no_io].concat());
    let text = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success(), "{text}");
    for probe in ["send", "recv"] {
        assert!(text.contains(&format!("absent   probe {probe} ")), "{text}");
    }
    assert!(!text.contains("MISSING"), "{text}");

    let agent = Agent::spawn(&agent_bin(), &no_io, Log::Capture);
    let metrics = agent.metrics();
    for (probe, hook, value) in [
        ("send", "none", 0.0),
        ("recv", "none", 0.0),
        ("so_error", "cgroup/getsockopt", 1.0),
    ] {
        let series = format!(r#"sockerr_probe_attached{{hook="{hook}",probe="{probe}"}}"#);
        assert_eq!(
            sample(&metrics, &series),
            Some(value),
            "{series}\n{metrics}"
        );
    }
    eventually(PATIENCE, "a warning for each absent probe", || {
        let log = agent.log();
        let warned = |probe: &str| {
            log.iter()
                .any(|l| l.contains("not observed on this kernel") && l.contains(probe))
        };
        (warned("probe=send") && warned("probe=recv")).then_some(())
    });
    // The libevent bug's scenario reads twice, then writes and reads: the
    // masked read is found, the I/O cannot be.
    let (pid, out) = scenario(&["masked"]);
    assert!(out.status.success());
    // Anything of it is in once a later process's finding is (one ring
    // buffer; this barrier gives one finding, without I/O hooks).
    let (later, _) = scenario(&["masked"]);
    assert_eq!(agent.wait_findings_of(later, 1).len(), 1);
    let found = agent.findings_of(pid);
    let kinds: Vec<&Value> = found.iter().map(|f| &f["kind"]).collect();
    assert_eq!(kinds, ["so_error_masked"], "{found:#?}");
    drop(agent);

    let no_reads = [
        "--kernel.disable-hook=cgroup/getsockopt",
        "--kernel.disable-hook=cgroup/getsockopt-compat",
    ];
    let check = sockerr(&[&["check"][..], &no_reads].concat());
    let text = String::from_utf8_lossy(&check.stdout);
    assert!(!check.status.success(), "{text}");
    assert!(text.contains("MISSING  probe so_error "), "{text}");
    let run = sockerr(
        &[
            &["run", "--web.listen-address", "127.0.0.1:0"][..],
            &no_reads,
        ]
        .concat(),
    );
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success());
    assert!(
        err.contains("cannot observe what sockerr needs on this kernel: so_error:"),
        "{err}"
    );
}
