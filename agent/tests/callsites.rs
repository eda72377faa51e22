//! Call sites (root, real kernel): from a process's first finding on, the
//! agent puts uprobes on its C library, and the findings that follow say
//! where each connect() and SO_ERROR read was made.

mod support;

use std::{
    ffi::OsStr,
    fs,
    io::{BufRead, BufReader, Write},
    process::{Child, ChildStdin, Command, Stdio},
    sync::mpsc,
    thread,
};

use serde_json::Value;
use support::{
    PATIENCE, Tracer, agent_bin, build_evhttp_client, http_server, require_root, run_program,
    scenario, scenario_bin, scenario_env, scenario_exe, stop, wait_timeout,
};

/// The function named at a read's call site.
fn read_function(finding: &Value, read: usize) -> &str {
    finding["call_sites"]["so_error_reads"][read]["at"]["function"]
        .as_str()
        .unwrap_or_else(|| panic!("read {read} has no named call site: {finding:#}"))
}

fn read_module(finding: &Value, read: usize) -> &str {
    finding["call_sites"]["so_error_reads"][read]["at"]["module"]
        .as_str()
        .unwrap_or_else(|| panic!("read {read} has no module: {finding:#}"))
}

/// Whether the kernel set up uprobe trampolines in a process: it maps
/// `[uprobes]` the first time one of its uprobes fires. The process must
/// be alive (the maps of one that exited read empty).
fn has_uprobes_mapped(pid: u32) -> bool {
    let maps = fs::read_to_string(format!("/proc/{pid}/maps")).expect("the process is alive");
    assert!(
        !maps.is_empty(),
        "process {pid} has exited: no maps to read"
    );
    maps.contains("[uprobes]")
}

/// `repeat buggy|correct N stdin`: one attempt now, then one more per line
/// written to the returned pipe.
fn stepped(
    program: impl AsRef<OsStr>,
    mode: &str,
    attempts: u32,
    env: &[(&str, &str)],
) -> (Child, ChildStdin) {
    let mut child = Command::new(program)
        .args(["repeat", mode, &attempts.to_string(), "stdin"])
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let stdin = child.stdin.take().unwrap();
    (child, stdin)
}

#[test]
fn reads_named_by_the_functions_that_made_them() {
    if !require_root() {
        return;
    }
    let tracer = Tracer::start();
    // Each attempt once the agent has handled the previous one: what the
    // agent decides (instrument, detach) is in place before the next.
    let (mut buggy, mut stdin) = stepped(scenario_bin(), "buggy", 10, &[]);
    let pid = buggy.id();
    // The clean twin makes its attempts alongside, alive after its last
    // one until the end: never flagged, so never probed.
    let linger = [("SCENARIO_LINGER_MS", "stdin")];
    let (mut clean, mut twin_stdin) = stepped(scenario_bin(), "correct", 10, &linger);
    let twin = clean.id();
    for n in 1..10 {
        assert_eq!(tracer.wait_for(pid, n).len(), n);
        writeln!(stdin).unwrap();
        writeln!(twin_stdin).unwrap();
    }
    assert!(wait_timeout(&mut buggy, PATIENCE).unwrap().success());
    tracer.barrier();
    let found = tracer.of(pid);
    assert_eq!(found.len(), 10, "one finding per attempt");
    assert!(
        found[0]["call_sites"]["note"]
            .as_str()
            .is_some_and(|n| n.contains("not instrumented yet")),
        "the first finding says why it has no call sites: {:#}",
        found[0]
    );
    for f in &found[1..] {
        assert_eq!(f["kind"], "so_error_masked");
        assert!(
            read_function(f, 0).ends_with("::bufferevent_finished_connecting"),
            "{f:#}"
        );
        assert!(
            read_function(f, 1).ends_with("::evhttp_connection_cb"),
            "{f:#}"
        );
        assert_eq!(read_module(f, 0), scenario_exe());
        assert_eq!(
            f["call_sites"]["connect"]["at"]["module"],
            scenario_exe(),
            "{f:#}"
        );
        // The stack starts in the C library's wrapper, then its caller.
        let read = &f["call_sites"]["so_error_reads"][1];
        let stack = read["stack"].as_array().unwrap();
        assert!(
            stack[0]["function"]
                .as_str()
                .is_some_and(|s| s.contains("getsockopt")),
            "{f:#}"
        );
        assert!(stack[0]["module"].as_str().unwrap().contains("libc"));
        assert_eq!(stack[1], read["at"]);
    }
    // One finding with call sites (--call-sites.findings), then the uprobes
    // go and later findings repeat the sites, saying so.
    let notes: Vec<Option<&str>> = found[1..]
        .iter()
        .map(|f| f["call_sites"]["note"].as_str())
        .collect();
    assert!(notes[..1].iter().all(Option::is_none), "{notes:?}");
    assert!(
        notes[1..]
            .iter()
            .all(|n| n.is_some_and(|n| n.contains("uprobes were detached"))),
        "{notes:?}"
    );
    assert!(
        !has_uprobes_mapped(twin),
        "a process that was never flagged must not pay for uprobes"
    );
    drop(twin_stdin);
    assert!(wait_timeout(&mut clean, PATIENCE).unwrap().success());
    assert!(tracer.of(twin).is_empty());
}

/// The flagged process is probed (so the twin's check above can fail).
#[test]
fn a_flagged_process_gets_uprobes() {
    if !require_root() {
        return;
    }
    let tracer = Tracer::start();
    // Alive after its second attempt until its stdin closes.
    let (mut child, mut stdin) = stepped(
        scenario_bin(),
        "buggy",
        2,
        &[("SCENARIO_LINGER_MS", "stdin")],
    );
    let pid = child.id();
    assert_eq!(tracer.wait_for(pid, 1).len(), 1);
    writeln!(stdin).unwrap();
    assert_eq!(tracer.wait_for(pid, 2).len(), 2);
    assert!(has_uprobes_mapped(pid));
    drop(stdin);
    assert!(wait_timeout(&mut child, PATIENCE).unwrap().success());
}

/// libevent's evhttp reads SO_ERROR twice on success: both reads are named
/// by libevent's modules.
#[test]
fn libevent_reads_named_by_its_modules() {
    if !require_root() {
        return;
    }
    let open = http_server(false);
    let evhttp = build_evhttp_client();
    let tracer = Tracer::start();
    let (pid, out) = run_program(Command::new(&evhttp).args([&open.to_string(), "5", "150"]));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout)
            .matches("status=200")
            .count(),
        5,
        "{out:?}"
    );
    tracer.barrier();
    let found = tracer.of(pid);
    assert_eq!(found.len(), 5, "{found:#?}");
    for f in &found[1..] {
        assert_eq!(f["kind"], "so_error_reread");
        assert!(read_module(f, 0).contains("libevent"), "{f:#}");
        assert!(read_module(f, 1).contains("libevent"), "{f:#}");
        assert!(
            f["call_sites"]["connect"]["at"]["module"]
                .as_str()
                .is_some_and(|m| m.contains("libevent")),
            "{f:#}"
        );
    }
    eprintln!(
        "libevent finding's sites: {:#}",
        found.last().unwrap()["call_sites"]
    );
}

/// A process gone before its findings are symbolized (the agent is stopped
/// meanwhile, and the executable deleted): modules and addresses remain.
#[test]
fn exited_process_keeps_modules_and_addresses() {
    if !require_root() {
        return;
    }
    let copy = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("short-lived-client");
    fs::copy(scenario_bin(), &copy).unwrap();
    let tracer = Tracer::start();
    let (mut child, mut stdin) = stepped(&copy, "buggy", 3, &[]);
    let pid = child.id();
    assert_eq!(tracer.wait_for(pid, 1).len(), 1);
    tracer.pause();
    writeln!(stdin).unwrap();
    writeln!(stdin).unwrap();
    assert!(wait_timeout(&mut child, PATIENCE).unwrap().success());
    fs::remove_file(&copy).unwrap();
    tracer.resume();
    tracer.barrier();
    let found = tracer.of(pid);
    assert_eq!(found.len(), 3, "{found:#?}");
    for f in &found[1..] {
        for read in 0..2 {
            let at = &f["call_sites"]["so_error_reads"][read]["at"];
            assert_eq!(at["module"], copy.to_str().unwrap(), "{f:#}");
            assert!(at["address"].as_str().unwrap().starts_with("0x"));
            assert!(at["module_offset"].as_str().unwrap().starts_with("0x"));
            assert!(at["function"].is_null(), "the file is gone: {f:#}");
        }
    }
}

/// `sockerr trace --stacks --comm C`: human lines for C's findings only, each
/// followed by the stacks of its call sites.
#[test]
fn trace_prints_stacks_of_the_chosen_comm() {
    if !require_root() {
        return;
    }
    let mut trace = Command::new(agent_bin())
        .args(["trace", "--stacks", "--comm", "stacks-test"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Its log, read to the end (a pipe left unread would fill), and when
    // it says so, the probes are attached.
    let (attached, banner) = mpsc::channel();
    let stderr = BufReader::new(trace.stderr.take().unwrap());
    thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            eprintln!("sockerr: {line}");
            if line.contains("tracing; Ctrl-C to stop") {
                let _ = attached.send(());
            }
        }
    });
    banner
        .recv_timeout(PATIENCE)
        .expect("sockerr trace to attach");
    let (tx, rx) = mpsc::channel();
    let stdout = BufReader::new(trace.stdout.take().unwrap());
    thread::spawn(move || {
        stdout
            .lines()
            .map_while(Result::ok)
            .for_each(|l| drop(tx.send(l)))
    });
    // Another comm, flagged meanwhile: filtered out.
    let (other, out) = scenario(&["masked"]);
    assert!(out.status.success());
    // Each attempt once the previous one was printed: instrumenting the
    // process is in place before the next.
    let (mut child, mut stdin) = stepped(
        scenario_bin(),
        "buggy",
        4,
        &[("SCENARIO_COMM", "stacks-test")],
    );
    let pid = child.id();
    let mut lines = Vec::new();
    let mut printed = 0;
    let next = |lines: &[String]| {
        rx.recv_timeout(PATIENCE).unwrap_or_else(|_| {
            panic!(
                "no line from sockerr trace within {PATIENCE:?}; so far:\n{}",
                lines.join("\n")
            )
        })
    };
    while printed < 4 {
        let line = next(&lines);
        if line.contains(" so_error_masked ") && line.contains(&format!(" pid={pid} ")) {
            printed += 1;
            if printed < 4 {
                writeln!(stdin).unwrap();
            }
        }
        lines.push(line);
    }
    assert!(wait_timeout(&mut child, PATIENCE).unwrap().success());
    // Then a barrier of the same comm: once its finding is printed, the
    // fourth's stacks before it are too.
    let (barrier, out) = scenario_env(&["masked"], &[("SCENARIO_COMM", "stacks-test")]);
    assert!(out.status.success());
    loop {
        let line = next(&lines);
        let done = line.contains(&format!(" pid={barrier} "));
        lines.push(line);
        if done {
            break;
        }
    }
    stop(&mut trace);
    let text = lines.join("\n");
    let findings: Vec<_> = lines
        .iter()
        .filter(|l| l.contains(" so_error_masked ") && l.contains(&format!(" pid={pid} ")))
        .collect();
    assert_eq!(findings.len(), 4, "{text}");
    assert!(
        findings.iter().all(|l| l.contains("comm=\"stacks-test\"")),
        "{text}"
    );
    assert!(!text.contains(&format!(" pid={other} ")), "{text}");
    // Findings 2-4: a block per call site, innermost frame first.
    let read2 = lines.iter().filter(|l| l.trim() == "read 2 (0):").count();
    assert_eq!(read2, 3, "{text}");
    assert!(
        lines.windows(3).any(|w| w[0].trim() == "read 2 (0):"
            && w[1].trim_start().starts_with("#0 __getsockopt")
            && w[2].contains("#1 ")
            && w[2].contains("evhttp_connection_cb")),
        "{text}"
    );
}
