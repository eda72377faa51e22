//! Detection on real sockets with the real programs loaded (root): the
//! scenario table (`scenarios/src/table.rs`: the rules of docs/design.md §3),
//! each detection with a clean twin, then real third-party clients.

mod support;

use std::process::Command;

use support::{
    Tracer, build_evhttp_client, closed_port, http_server, require_root, run_program, scenario,
    scenario_alive,
};

use sockerr_scenarios::table::{IO, MASKED, REREAD, TABLE};

/// The scenario table (shared with `cargo xtask matrix`, which runs it on
/// other kernels): every row as its own process, then one barrier.
#[test]
fn scenario_table() {
    if !require_root() {
        return;
    }
    let tracer = Tracer::start();
    let runs: Vec<_> = TABLE.iter().map(|case| scenario(case.args)).collect();
    tracer.barrier();
    // Every row is judged, and every failing row named: one failure does
    // not hide the others.
    let failures: Vec<String> = TABLE
        .iter()
        .zip(runs)
        .filter_map(|(case, (pid, out))| {
            if !out.status.success() {
                let err = String::from_utf8_lossy(&out.stderr);
                return Some(format!(
                    "{} ({:?}): the scenario failed: {err}",
                    case.name, case.args
                ));
            }
            let got = tracer.kinds(pid);
            (got != case.expected).then(|| {
                format!(
                    "{} ({:?}): expected {:?}, got {got:?}",
                    case.name, case.args, case.expected
                )
            })
        })
        .collect();
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn findings_carry_what_a_user_needs() {
    if !require_root() {
        return;
    }
    let tracer = Tracer::start();
    // Alive until its findings are in: attributed from /proc.
    let masked = scenario_alive(&["masked"], &[]);
    let pid = masked.pid();
    tracer.wait_for(pid, 2);
    let out = masked.finish();
    assert!(out.status.success(), "{out:?}");
    tracer.barrier();
    let found = tracer.of(pid);
    assert_eq!(found.len(), 2, "{found:#?}");
    let masked = found
        .iter()
        .find(|f| f["kind"] == MASKED)
        .expect("a masked finding");
    assert_eq!(masked["errno"], "ECONNREFUSED");
    assert_eq!(masked["so_error_reads"], serde_json::json!([111, 0]));
    assert_eq!(masked["syscall"], "getsockopt");
    assert_eq!(masked["severity"], "critical");
    assert_eq!(masked["exe"], support::scenario_exe());
    assert!(masked["fd"].as_i64().is_some_and(|fd| fd >= 3), "{masked}");
    assert!(masked["remote"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert_eq!(masked["comm"], "sockerr-scenari");
    let io = found
        .iter()
        .find(|f| f["kind"] == IO)
        .expect("an I/O finding");
    assert_eq!(io["syscall"], "send");
    assert_eq!(io["remote"], masked["remote"]);
}

#[test]
fn two_thousand_concurrent_attempts() {
    if !require_root() {
        return;
    }
    let tracer = Tracer::start();
    let (buggy, out) = scenario(&["concurrent", "2000", "buggy"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (correct, out) = scenario(&["concurrent", "2000", "correct"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let found = tracer.wait_for(buggy, 2000);
    tracer.barrier();
    let found_now = tracer.of(buggy);
    assert_eq!(
        found_now.len(),
        2000,
        "exactly one finding per buggy attempt"
    );
    assert!(found.iter().all(|f| f["kind"] == MASKED));
    assert!(
        tracer.of(correct).is_empty(),
        "correct clients are never flagged"
    );
}

/// Real clients that read SO_ERROR once stay clean, against a closed and an
/// open port; libevent 2.1's evhttp reads it twice on success.
#[test]
fn real_clients() {
    if !require_root() {
        return;
    }
    let open = http_server(false);
    let closed = closed_port();
    let evhttp = build_evhttp_client();
    let tracer = Tracer::start();
    let mut pids = Vec::new();
    // Each client prints how its connect ended, so "no finding" cannot pass
    // for a client that never got that far.
    for (port, outcome) in [(open, "connected"), (closed, "refused")] {
        let url = format!("http://127.0.0.1:{port}/");
        let curl = run_program(Command::new("curl").args([
            "-s",
            "-o",
            "/dev/null",
            "--max-time",
            "5",
            "-w",
            "%{http_code}",
            &url,
        ]));
        let py = format!(
            "import asyncio\nasync def main():\n    try:\n        r, w = await asyncio.open_connection('127.0.0.1', {port})\n        print('connected')\n        w.write(b'GET / HTTP/1.0\\r\\n\\r\\n'); await w.drain(); await r.read(); w.close()\n    except ConnectionRefusedError:\n        print('refused')\nasyncio.run(main())\n"
        );
        let python = run_program(Command::new("python3").args(["-c", &py]));
        let js = format!(
            "const s = require('net').connect({port}, '127.0.0.1');\
             s.on('connect', () => {{ console.log('connected'); s.end('GET / HTTP/1.0\\r\\n\\r\\n'); }});\
             s.on('data', () => {{}});\
             s.on('error', e => console.log(e.code === 'ECONNREFUSED' ? 'refused' : e.code));"
        );
        let node = run_program(Command::new("node").args(["-e", &js]));
        // IO::Socket with a timeout: a non-blocking connect, select(), then
        // a second connect() that returns the error (or EISCONN).
        let pl = format!(
            "use IO::Socket::INET; my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', \
             PeerPort => {port}, Timeout => 5); if ($s) {{ print \"connected\\n\"; \
             print $s \"GET / HTTP/1.0\\r\\n\\r\\n\"; while (<$s>) {{}} }} \
             else {{ print $!{{ECONNREFUSED}} ? \"refused\\n\" : \"$!\\n\" }}"
        );
        let perl = run_program(Command::new("perl").args(["-e", &pl]));
        // curl's own report: the HTTP status, or 000 when it could not connect.
        let curl_said = if outcome == "connected" { "200" } else { "000" };
        for (name, (pid, out), said) in [
            ("curl", curl, curl_said),
            ("python asyncio", python, outcome),
            ("node net", node, outcome),
            ("perl IO::Socket", perl, outcome),
        ] {
            assert_eq!(
                String::from_utf8_lossy(&out.stdout).trim(),
                said,
                "{name} against port {port}: {out:?}"
            );
            pids.push((name, port, pid));
        }
    }
    let (ev_open, out) = run_program(Command::new(&evhttp).arg(open.to_string()));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("status=200"),
        "{out:?}"
    );
    // The request fails: libevent reports no HTTP status (0).
    let (ev_closed, out) = run_program(Command::new(&evhttp).arg(closed.to_string()));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "status=0",
        "{out:?}"
    );
    tracer.barrier();
    let flagged: Vec<String> = pids
        .into_iter()
        .filter_map(|(name, port, pid)| {
            let kinds = tracer.kinds(pid);
            (!kinds.is_empty()).then(|| format!("{name} against port {port}: {kinds:?}"))
        })
        .collect();
    assert!(flagged.is_empty(), "clean clients flagged: {flagged:#?}");
    assert_eq!(
        tracer.kinds(ev_open),
        [REREAD],
        "libevent 2.1 evhttp reads SO_ERROR twice on success"
    );
    assert_eq!(
        tracer.kinds(ev_closed),
        Vec::<String>::new(),
        "libevent against a closed port"
    );
}
