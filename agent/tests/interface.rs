//! The agent's interface as exporters have it: listen addresses as
//! node_exporter takes them, the version and revision, `/findings` filters,
//! `trace --comm` instrumenting only what it shows, log lines a standard
//! logfmt parser (go-logfmt, Loki's) reads back with the fields of the
//! finding's `/findings` entry, JSON logs holding that entry as it is, and
//! exporter-toolkit's TLS policy keys applied.

mod support;

use std::{
    collections::BTreeSet,
    fs,
    io::Write as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use serde_json::Value;
use support::{
    Agent, Tracer, agent_bin, closed_port, eventually, http_get, repo, require_root, run_ok,
    scenario_env, stop,
};

fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("interface")
        .join(name);
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

fn sockerr(args: &[&str]) -> std::process::Output {
    Command::new(agent_bin()).args(args).output().unwrap()
}

/// `sockerr run ARGS` (its own --web.listen-address among them), stopped
/// when dropped; `port` is where /healthz is polled on 127.0.0.1.
struct Running {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
}

impl Running {
    fn start(args: &[&str], port: u16) -> Self {
        let mut child = Command::new(agent_bin())
            .arg("run")
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = log.clone();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            use std::io::BufRead as _;
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                sink.lock().unwrap().push(line);
            }
        });
        let mut running = Self { child, log };
        let ok = (0..300).any(|_| {
            if http_get(port, "/healthz").0 == 200 {
                return true;
            }
            assert!(
                running.child.try_wait().unwrap().is_none(),
                "{:?}",
                running.log()
            );
            std::thread::sleep(Duration::from_millis(100));
            false
        });
        assert!(ok, "sockerr run {args:?} did not serve on 127.0.0.1:{port}");
        running
    }

    fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

fn revision() -> String {
    let out = run_ok(
        Command::new("git")
            .args(["rev-parse", "--short=12", "HEAD"])
            .current_dir(repo()),
        "git",
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn the_version_names_the_commit_and_the_target() {
    let out = sockerr(&["--version"]);
    assert!(out.status.success());
    let version = String::from_utf8_lossy(&out.stdout);
    let expected = format!("sockerr 0.1.0 (revision {}, ", revision());
    assert!(version.starts_with(&expected), "{version}");
    assert!(version.trim_end().ends_with("-linux-gnu)"), "{version}");
}

/// `:PORT` (every address) and `localhost:PORT` as node_exporter takes
/// them; a bad one is refused before anything is attached, saying why.
#[test]
fn listen_addresses_as_node_exporter_takes_them() {
    // No root needed: these fail before the probes are loaded.
    let port = closed_port();
    let out = sockerr(&["run", "--web.listen-address", &format!(":{port}")]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("--web.allow-remote"),
        "every address is not loopback: {err}"
    );
    for (bad, why) in [
        ("9809", "expected HOST:PORT"),
        ("localhost:http", "is not a port number"),
        ("no-such-host.invalid:9809", "cannot resolve"),
    ] {
        let out = sockerr(&["run", "--web.listen-address", bad]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(why), "{bad}: {err}");
    }
    if !require_root() {
        return;
    }
    let port = closed_port();
    let any = Running::start(
        &[
            "--web.listen-address",
            &format!(":{port}"),
            "--web.allow-remote",
        ],
        port,
    );
    let address = eventually(Duration::from_secs(10), "the address in the log", || {
        any.log()
            .iter()
            .find(|l| l.contains("msg=\"sockerr running\""))
            .cloned()
    });
    assert!(
        address.contains(&format!("address=[::]:{port}"))
            || address.contains(&format!("address=0.0.0.0:{port}")),
        "{address}"
    );
    drop(any);
    let port = closed_port();
    let local = Running::start(
        &["--web.listen-address", &format!("localhost:{port}")],
        port,
    );
    let address = eventually(Duration::from_secs(10), "the address in the log", || {
        local
            .log()
            .iter()
            .find(|l| l.contains("msg=\"sockerr running\""))
            .cloned()
    });
    assert!(
        address.contains(&format!("address=127.0.0.1:{port}")),
        "{address}"
    );
}

/// Findings of one process, waited for (its records may arrive after it
/// exited).
fn findings_of(agent: &Agent, pid: u32) -> Vec<Value> {
    let found = agent.wait_findings_of(pid, 1);
    assert!(!found.is_empty(), "no finding of {pid}");
    found
}

/// The `io_after_failed_connect` finding of a `masked` process, once both
/// of its findings arrived: each comes in a record of its own, and the
/// agent may show the first before it has read the second.
fn io_finding_of(agent: &Agent, pid: u32) -> Value {
    agent
        .wait_findings_of(pid, 2)
        .into_iter()
        .find(|f| f["kind"] == "io_after_failed_connect")
        .expect("the I/O finding")
}

fn query(agent: &Agent, q: &str) -> Vec<Value> {
    let (status, body) = agent.get(&format!("/findings?{q}"));
    assert_eq!(status, 200, "{q}: {body}");
    serde_json::from_str(&body).unwrap()
}

#[test]
fn findings_filter_by_comm_pid_namespace_pod_and_since() {
    if !require_root() {
        return;
    }
    let agent = Agent::start();
    let linger = ("SCENARIO_LINGER_MS", "300");
    let (a, _) = scenario_env(&["masked"], &[("SCENARIO_COMM", "filter-a"), linger]);
    let (b, _) = scenario_env(&["masked"], &[("SCENARIO_COMM", "filter-b"), linger]);
    findings_of(&agent, a);
    findings_of(&agent, b);
    let pids = |q: &str| -> BTreeSet<u64> {
        query(&agent, q)
            .iter()
            .map(|f| f["pid"].as_u64().unwrap())
            .filter(|p| [a, b].contains(&(*p as u32)))
            .collect()
    };
    let (a, b) = (u64::from(a), u64::from(b));
    assert_eq!(pids("comm=filter-a"), [a].into());
    assert!(
        query(&agent, "comm=filter-a")
            .iter()
            .all(|f| f["comm"] == "filter-a")
    );
    assert_eq!(pids(&format!("pid={b}")), [b].into());
    assert_eq!(
        pids("comm=filter-b&kind=io_after_failed_connect"),
        [b].into()
    );
    assert_eq!(pids("since=1h"), [a, b].into());
    assert!(query(&agent, "since=2999-01-01T00:00:00Z").is_empty());
    // Processes on the host are in no pod.
    assert!(pids("namespace=shop").is_empty() && pids("pod=web-0").is_empty());
    let (status, body) = agent.get("/findings?since=yesterday");
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("since"), "{body}");
}

/// `trace --comm` drops other processes' records before anything is done
/// with them: a flagged process it does not show is never instrumented for
/// call sites, while the one it shows is.
#[test]
fn trace_comm_instruments_only_what_it_shows() {
    if !require_root() {
        return;
    }
    let log = Arc::new(Mutex::new(Vec::<String>::new()));
    let sink = log.clone();
    let tracer = Tracer::spawn(
        &agent_bin(),
        &["--comm".into(), "trace-shown".into()],
        Duration::from_secs(60),
        move |line| sink.lock().unwrap().push(line.to_owned()),
    )
    .unwrap();
    // Alive for a second after their findings: time to be instrumented.
    let linger = ("SCENARIO_LINGER_MS", "1000");
    let (hidden, _) = scenario_env(&["masked"], &[("SCENARIO_COMM", "trace-hidden"), linger]);
    let (shown, _) = scenario_env(&["masked"], &[("SCENARIO_COMM", "trace-shown"), linger]);
    // One ring buffer: once the shown process's finding is out, the hidden
    // one's record (made before) has been handled.
    let found = tracer.wait_for(shown, 1);
    assert!(!found.is_empty(), "trace --comm showed nothing");
    assert!(tracer.of(hidden).is_empty(), "showed another comm");
    let entry = &found[0];
    for key in ["count", "first_seen", "last_seen", "node", "call_sites"] {
        assert!(
            entry.get(key).is_some(),
            "trace --json lacks {key}: {entry}"
        );
    }
    let lines = log.lock().unwrap().clone();
    let attached = |pid: u32| {
        lines
            .iter()
            .any(|l| l.contains("call-site uprobes attached") && l.contains(&format!("pid={pid} ")))
    };
    assert!(
        attached(shown),
        "the shown process was not instrumented: {lines:#?}"
    );
    assert!(
        !attached(hidden),
        "the hidden process was instrumented: {lines:#?}"
    );
    assert!(
        !lines.iter().any(|l| l.contains(&format!("pid={hidden} "))),
        "the hidden process was handled: {lines:#?}"
    );
}

/// The go-logfmt decoder (Debian's golang-github-go-logfmt-logfmt-dev,
/// built offline): each line of stdin as its key/value pairs, or an error.
fn go_logfmt() -> PathBuf {
    let dir = scratch("go-logfmt");
    fs::write(
        dir.join("main.go"),
        r#"package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"os"

	"github.com/go-logfmt/logfmt"
)

func main() {
	in := bufio.NewScanner(os.Stdin)
	in.Buffer(make([]byte, 1<<20), 1<<24)
	out := json.NewEncoder(os.Stdout)
	for n := 1; in.Scan(); n++ {
		dec := logfmt.NewDecoder(bytes.NewReader(in.Bytes()))
		pairs := [][2]string{}
		for dec.ScanRecord() {
			for dec.ScanKeyval() {
				pairs = append(pairs, [2]string{string(dec.Key()), string(dec.Value())})
			}
		}
		if err := dec.Err(); err != nil {
			fmt.Fprintf(os.Stderr, "line %d: %v\n", n, err)
			os.Exit(1)
		}
		out.Encode(pairs)
	}
}
"#,
    )
    .unwrap();
    run_ok(
        Command::new("go")
            .args(["build", "-o", "check", "main.go"])
            .current_dir(&dir)
            .env("GO111MODULE", "off")
            .env("GOPATH", "/usr/share/gocode")
            .env("GOCACHE", dir.join("cache"))
            .env("GOFLAGS", ""),
        "go build (cargo xtask setup --tests installs golang-go and go-logfmt)",
    );
    dir.join("check")
}

/// Each line's pairs as go-logfmt reads them; panics with the line it
/// refuses.
fn parse_logfmt(lines: &[String]) -> Vec<Vec<(String, String)>> {
    let mut child = Command::new(go_logfmt())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let text = lines.join("\n") + "\n";
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || stdin.write_all(text.as_bytes()));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    if let Some(n) = err
        .strip_prefix("line ")
        .and_then(|r| r.split(':').next())
        .and_then(|n| n.parse::<usize>().ok())
    {
        panic!("go-logfmt refuses line {n}: {err}\n{:?}", lines[n - 1]);
    }
    assert!(out.status.success(), "{err}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A process name with a control sequence, DEL, a C1 control (U+0085), a
/// line separator (U+2028), `=` and `"`: 14 bytes, under the kernel's 15.
const HOSTILE: &str = "e\u{1b}[1m\u{7f}\u{85}\u{2028}=\"x";

/// The keys of a /findings entry that have a value (logfmt leaves the
/// others out).
fn keys_with_values(entry: &Value) -> Vec<String> {
    entry
        .as_object()
        .unwrap()
        .iter()
        .filter(|(_, v)| !v.is_null() && v.as_str() != Some(""))
        .map(|(k, _)| k.clone())
        .collect()
}

#[test]
fn logfmt_lines_read_back_with_go_logfmt_and_carry_the_findings_fields() {
    if !require_root() {
        return;
    }
    let agent = Agent::logged(&["--findings.node-name=node-9"]);
    let (pid, out) = scenario_env(&["masked"], &[("SCENARIO_COMM", HOSTILE)]);
    assert!(out.status.success());
    let entry = io_finding_of(&agent, pid);
    assert_eq!(entry["comm"], HOSTILE, "the name as the kernel has it");
    let mine = format!(" pid={pid} ");
    let line = eventually(Duration::from_secs(10), "the finding's log line", || {
        agent
            .log()
            .into_iter()
            .find(|l| l.contains("msg=finding") && l.contains(&mine) && l.contains("io_after"))
    });
    let lines = agent.log();
    // Every line of the log, not only the finding's, is read back whole,
    // and no field is empty.
    let parsed = parse_logfmt(&lines);
    for (text, pairs) in lines.iter().zip(&parsed) {
        let keys: Vec<&str> = pairs.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys[..4], ["ts", "level", "target", "msg"], "{text}");
        assert!(
            pairs.iter().all(|(_, v)| !v.is_empty()),
            "an empty value: {text}"
        );
    }
    let pairs = &parsed[lines.iter().position(|l| *l == line).unwrap()];
    let get = |key: &str| {
        pairs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("no {key} in {line}"))
    };
    assert_eq!(get("comm"), HOSTILE, "read back exactly: {line}");
    assert!(!line.contains('\u{1b}') && !line.contains('\u{85}') && !line.contains('\u{2028}'));
    assert_eq!(get("node"), "node-9");
    assert_eq!(get("level"), "warn");
    // The fields of the /findings entry, in its order.
    let logged: Vec<&str> = pairs[4..].iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(logged, keys_with_values(&entry), "{line}");
    for key in [
        "kind",
        "pid",
        "exe",
        "remote",
        "errno",
        "syscall",
        "time",
        "first_seen",
    ] {
        let value = &entry[key];
        let text = value
            .as_str()
            .map_or_else(|| value.to_string(), str::to_owned);
        assert_eq!(get(key), text, "{key}");
    }
    assert_eq!(get("so_error_reads"), entry["so_error_reads"].to_string());
}

/// A JSON log line of a finding is its /findings entry (arrays and objects
/// as they are, null where null) beside ts, level, target and msg.
#[test]
fn json_log_lines_hold_the_findings_entry() {
    if !require_root() {
        return;
    }
    let agent = Agent::logged(&["--log.format=json"]);
    let (pid, _) = scenario_env(&["masked"], &[("SCENARIO_COMM", "json-logs")]);
    let entry = io_finding_of(&agent, pid);
    let line = eventually(Duration::from_secs(10), "the finding's log line", || {
        agent.log().into_iter().find_map(|l| {
            let v: Value = serde_json::from_str(&l).ok()?;
            (v["msg"] == "finding" && v["pid"] == pid && v["kind"] == entry["kind"]).then_some(v)
        })
    });
    for l in agent.log() {
        let v: Value = serde_json::from_str(&l).unwrap_or_else(|e| panic!("{e}: {l}"));
        assert!(v.get("fields").is_none(), "nested fields: {l}");
        for key in ["ts", "level", "msg"] {
            assert!(v[key].is_string(), "no {key}: {l}");
        }
    }
    let mut fields = line.as_object().unwrap().clone();
    // (retain keeps the order; remove would swap the last key in)
    fields.retain(|k, _| !["ts", "level", "target", "msg"].contains(&k.as_str()));
    let keys = |o: &serde_json::Map<String, Value>| o.keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys(&fields), keys(entry.as_object().unwrap()));
    assert!(fields["so_error_reads"].is_array() && fields["call_sites"].is_object());
    for key in [
        "kind",
        "pid",
        "comm",
        "exe",
        "fd",
        "remote",
        "errno",
        "so_error_reads",
        "time",
    ] {
        assert_eq!(fields[key], entry[key], "{key}");
    }
}

/// exporter-toolkit's `cipher_suites` restricts TLS 1.2 handshakes to the
/// suites listed, as node_exporter does with the same file.
#[test]
fn web_config_cipher_suites_are_applied() {
    if !require_root() {
        return;
    }
    let dir = scratch("ciphers");
    run_ok(
        Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            ])
            .args([
                "-subj",
                "/CN=localhost",
                "-addext",
                "subjectAltName=IP:127.0.0.1",
            ])
            .args(["-keyout", "tls.key", "-out", "tls.crt"])
            .current_dir(&dir),
        "openssl req",
    );
    fs::write(
        dir.join("web.yml"),
        "tls_server_config:\n  cert_file: tls.crt\n  key_file: tls.key\n  max_version: TLS12\n  \
         cipher_suites: [TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384]\n  \
         curve_preferences: [X25519]\n",
    )
    .unwrap();
    let port = closed_port();
    let mut child = Command::new(agent_bin())
        .args(["run", "--web.listen-address", &format!("127.0.0.1:{port}")])
        .arg("--web.config.file")
        .arg(dir.join("web.yml"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let curl = |cipher: &str| {
        Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
            .arg(dir.join("tls.crt"))
            .args(["--tls-max", "1.2", "--ciphers", cipher])
            .arg(format!("https://127.0.0.1:{port}/healthz"))
            .output()
            .unwrap()
    };
    eventually(Duration::from_secs(30), "the agent serving TLS", || {
        assert!(child.try_wait().unwrap().is_none(), "the agent exited");
        let out = curl("ECDHE-RSA-AES256-GCM-SHA384");
        (String::from_utf8_lossy(&out.stdout) == "200").then_some(())
    });
    let refused = curl("ECDHE-RSA-AES128-GCM-SHA256");
    stop(&mut child);
    assert!(
        !refused.status.success(),
        "a suite the file leaves out was accepted: {}",
        String::from_utf8_lossy(&refused.stdout)
    );
}
