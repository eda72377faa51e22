//! The deployments: the systemd unit, least privilege (root), and the
//! Kubernetes manifests.

mod support;

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use serde_json::Value;
use support::{
    Agent, Log, PATIENCE, agent_bin, repo, require_root, scenario, scenario_alive, scenario_bin,
    scenario_exe, wait_timeout,
};

fn unit() -> String {
    std::fs::read_to_string(repo().join("deploy/systemd/sockerr.service")).unwrap()
}

/// The capabilities the unit grants, e.g. ["bpf", "perfmon", ...].
fn unit_capabilities() -> Vec<String> {
    let unit = unit();
    let line = unit
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .expect("a capability set");
    line.split_whitespace()
        .map(|c| c.trim_start_matches("CAP_").to_lowercase())
        .collect()
}

#[test]
fn systemd_unit_verifies() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let unit_path = dir.join("sockerr.service");
    std::fs::write(
        &unit_path,
        unit().replace("/usr/bin/sockerr", agent_bin().to_str().unwrap()),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit_path)
        .output()
        .expect("systemd-analyze");
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Unknown keys are only warnings: any output is a failure.
    assert!(out.status.success() && stderr.trim().is_empty(), "{stderr}");
}

/// The unit's command line, as systemd expands it with /etc/default/sockerr
/// setting SOCKERR_WEB_CONFIG and SOCKERR_OPTS.
fn unit_command(web_config: &str, opts: &str) -> Command {
    let exec = unit()
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("an ExecStart")
        .replace("${SOCKERR_WEB_CONFIG}", web_config)
        .replace("$SOCKERR_OPTS", opts);
    let mut words = exec.split_whitespace();
    assert_eq!(words.next(), Some("/usr/bin/sockerr"));
    let mut cmd = Command::new(agent_bin());
    cmd.args(words);
    cmd
}

#[test]
fn the_units_web_config_is_optional() {
    // Empty: no file, so a non-loopback address is refused for want of TLS.
    let out = unit_command("", "--web.listen-address=0.0.0.0:0")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("--web.allow-remote") && !err.contains("web config"),
        "{err}"
    );
    // Set: the file is read (the example refuses to start until its
    // placeholder hash is replaced).
    let example = repo().join("deploy/web-config.example.yml");
    let out = unit_command(example.to_str().unwrap(), "")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("basic_auth_users.prometheus: not a bcrypt hash"),
        "{err}"
    );
}

/// `sockerr run` with exactly the given capabilities, all others dropped;
/// an error with its log if it does not run.
fn run_with_caps(caps: &[String]) -> Result<Agent, String> {
    let set: Vec<String> = caps.iter().map(|c| format!("+{c}")).collect();
    let mut setpriv = Command::new("setpriv");
    setpriv
        .args(["--inh-caps=-all", "--ambient-caps=-all"])
        .arg(format!("--bounding-set=-all,{}", set.join(",")))
        .arg(agent_bin());
    // A record per finding: the latest one carries call sites.
    // Probed at its first finding: the capabilities of call sites are used.
    let args = ["--findings.detail-interval=0s", "--call-sites.delay=0s"];
    Agent::try_launch(setpriv, &args, Log::Capture, PATIENCE)
}

fn effective_caps(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .unwrap()
        .trim();
    u64::from_str_radix(hex, 16).unwrap()
}

/// The /findings entry of a process that ran `repeat buggy 3 0` to its
/// end under `agent`: its only one, with the third record's details.
fn buggy_entry(agent: &Agent) -> Value {
    let (pid, out) = scenario(&["repeat", "buggy", "3", "0"]);
    assert!(out.status.success(), "{out:?}");
    agent.barrier();
    let found = agent.findings_of(pid);
    assert_eq!(found.len(), 1, "one entry, so_error_masked: {found:#?}");
    found.into_iter().next().unwrap()
}

#[test]
fn runs_with_exactly_the_units_capabilities_and_each_is_needed() {
    if !require_root() {
        return;
    }
    let caps = unit_capabilities();
    assert_eq!(
        caps,
        [
            "bpf",
            "perfmon",
            "net_admin",
            "sys_ptrace",
            "sys_admin",
            "setuid",
            "setgid"
        ]
    );

    // With exactly the unit's set: attaches, detects, attributes, serves.
    let agent =
        run_with_caps(&caps).unwrap_or_else(|e| panic!("with the unit's capabilities: {e}"));
    // After attaching it keeps CAP_SYS_PTRACE (bit 19) and, for call-site
    // uprobes, CAP_SYS_ADMIN (bit 21); CAP_SETUID and CAP_SETGID only
    // permitted, to start the web server, which has none.
    assert_eq!(effective_caps(agent.pid()), (1 << 19) | (1 << 21));
    assert_eq!(effective_caps(support::wait_web_server(agent.pid())), 0);
    // Alive, and each attempt once the agent has handled the one before:
    // the second is made with the call-site uprobes in place.
    let mut buggy = Command::new(scenario_bin())
        .args(["repeat", "buggy", "2", "stdin"])
        .env("SCENARIO_LINGER_MS", "stdin")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let pid = buggy.id();
    let mut stdin = buggy.stdin.take().unwrap();
    agent.wait_findings_of(pid, 1);
    writeln!(stdin).unwrap();
    agent.barrier();
    let found = agent.findings_of(pid);
    assert_eq!(
        found.len(),
        1,
        "detected with reduced capabilities: {found:#?}"
    );
    let entry = &found[0];
    assert!(entry["exe"].is_string(), "attributed: {entry:#}");
    assert!(
        entry["call_sites"]["so_error_reads"][1]["at"]["function"]
            .as_str()
            .is_some_and(|f| f.ends_with("evhttp_connection_cb")),
        "call sites of the latest finding: {entry:#}"
    );
    drop(stdin);
    assert!(
        wait_timeout(&mut buggy, PATIENCE)
            .expect("the scenario to exit")
            .success()
    );
    assert!(
        agent.metrics().contains("sockerr_connect_attempts_total{"),
        "kernel counters readable"
    );
    drop(agent);

    // Each one removed: the loading ones fail with a clear message; without
    // CAP_SYS_PTRACE the agent runs but cannot attribute (and says why).
    for missing in &caps {
        let fewer: Vec<String> = caps.iter().filter(|c| *c != missing).cloned().collect();
        let started = run_with_caps(&fewer);
        let name = format!("CAP_{}", missing.to_uppercase());
        match missing.as_str() {
            "sys_admin" => {
                let agent = started.unwrap_or_else(|e| panic!("without {name}: {e}"));
                let entry = buggy_entry(&agent);
                let note = entry["call_sites"]["note"].as_str().unwrap_or_default();
                assert!(note.contains("needs CAP_SYS_ADMIN"), "{entry:#}");
            }
            "sys_ptrace" => {
                let agent = started.unwrap_or_else(|e| panic!("without {name}: {e}"));
                // Alive while the agent looks at it in /proc.
                let masked = scenario_alive(&["masked"], &[]);
                let pid = masked.pid();
                agent.wait_findings_of(pid, 2);
                let out = masked.finish();
                assert!(out.status.success(), "{out:?}");
                agent.barrier();
                let found = agent.findings_of(pid);
                assert_eq!(found.len(), 2, "masked, then I/O: {found:#?}");
                // /proc/<pid>/exe is out of reach: the path the kernel
                // walked stands in, and the finding says why.
                for f in &found {
                    assert_eq!(f["exe"], scenario_exe().as_str(), "{f}");
                    assert_eq!(f["exe_source"], "kernel", "{f}");
                    assert!(
                        f["exe_error"]
                            .as_str()
                            .is_some_and(|e| e.contains("permission denied")),
                        "{f}"
                    );
                }
            }
            _ => match started {
                Ok(_) => panic!("ran without {name}"),
                Err(e) => assert!(
                    e.contains(&format!("missing {name}")),
                    "without {name}: {e}"
                ),
            },
        }
    }
}

fn venv_bin(tool: &str) -> PathBuf {
    let venv = std::env::var_os("SOCKERR_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/sockerr/venv")
        });
    let bin = venv.join("bin").join(tool);
    assert!(
        bin.exists(),
        "{} missing: run `cargo xtask setup`",
        bin.display()
    );
    bin
}

#[test]
fn kubernetes_manifests_validate_offline() {
    let k8s = repo().join("deploy/kubernetes");
    let builtin = [
        "namespace.yaml",
        "serviceaccount.yaml",
        "daemonset.yaml",
        "service.yaml",
    ];
    for version in ["1.30", "1.37"] {
        let out = Command::new(venv_bin("kubernetes-validate"))
            .args(["--strict", "--quiet", "-k", version])
            .args(builtin.iter().map(|f| k8s.join(f)))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        // A kind without a schema is only a warning: any output fails.
        assert!(
            out.status.success() && text.trim().is_empty(),
            "Kubernetes {version}: {text}"
        );
    }
    let out = Command::new(venv_bin("python"))
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/check_monitors.py"))
        .arg(&k8s)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let kustomization = std::fs::read_to_string(k8s.join("kustomization.yaml")).unwrap();
    for file in builtin.iter().chain(&["servicemonitor.yaml"]) {
        assert!(
            kustomization.contains(file),
            "kustomization.yaml lacks {file}"
        );
    }
}

/// The DaemonSet mounts nothing writable, and each runtime's state where
/// `--containers.root=/host` makes the agent look for it.
#[test]
fn daemonset_mounts_runtime_state_read_only_under_the_containers_root() {
    let script = r#"
import sys, yaml
pod = yaml.safe_load(open(sys.argv[1]))["spec"]["template"]["spec"]
agent = pod["containers"][0]
assert "--containers.root=/host" in agent["args"], agent["args"]
volumes = {v["name"]: v for v in pod["volumes"]}
for m in agent["volumeMounts"]:
    assert m.get("readOnly") is True, m
    if m["mountPath"].startswith("/host/"):
        assert m["mountPath"] == "/host" + volumes[m["name"]]["hostPath"]["path"], m
        assert m.get("mountPropagation") == "HostToContainer", m
        print(m["mountPath"])
"#;
    let out = Command::new(venv_bin("python"))
        .args(["-c", script])
        .arg(repo().join("deploy/kubernetes/daemonset.yaml"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        [
            "/host/run/containerd/io.containerd.runtime.v2.task",
            "/host/run/containers/storage/overlay-containers",
        ]
    );
}
