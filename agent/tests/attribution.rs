//! Findings of short-lived processes are attributed (root, real kernel):
//! the kernel takes the identity with the finding, so a process that exits
//! at once keeps its executable and cgroup.

mod support;

use std::process::Command;

use support::{Agent, require_root, run_program, scenario, scenario_bin, scenario_exe};

fn own_cgroup() -> String {
    procfs::process::Process::myself()
        .and_then(|me| me.cgroups())
        .unwrap()
        .into_iter()
        .find(|g| g.hierarchy == 0 && g.controllers.is_empty())
        .map(|g| g.pathname)
        .expect("a cgroup v2 path")
}

/// Each pid's findings, once all of them arrived: two kinds each, masked,
/// then I/O after it.
fn findings_of(agent: &Agent, pids: &[u32]) -> Vec<serde_json::Value> {
    agent.barrier();
    let found: Vec<_> = pids
        .iter()
        .flat_map(|&pid| agent.findings_of(pid))
        .collect();
    assert_eq!(found.len(), 2 * pids.len(), "{found:#?}");
    found
}

#[test]
fn a_burst_of_short_lived_processes_is_attributed() {
    if !require_root() {
        return;
    }
    let agent = Agent::start();
    // Each run makes the mistake and exits at once.
    let pids: Vec<u32> = (0..30).map(|_| scenario(&["masked"]).0).collect();
    let cgroup = own_cgroup();
    for f in findings_of(&agent, &pids) {
        let exe = f["exe"].as_str().unwrap_or_else(|| panic!("no exe: {f}"));
        assert!(exe.ends_with("sockerr-scenario"), "{f}");
        assert_eq!(f["cgroup"], cgroup.as_str(), "{f}");
        assert!(f.get("exe_error").is_none(), "{f}");
        assert!(f.get("cgroup_error").is_none(), "{f}");
    }
}

/// The agent is stopped while the processes run and exit: none of them can
/// be read from /proc, so everything comes from the kernel, and says so.
#[test]
fn processes_gone_before_the_agent_looks_are_named_by_the_kernel() {
    if !require_root() {
        return;
    }
    let agent = Agent::start();
    agent.pause();
    let pids: Vec<u32> = (0..30).map(|_| scenario(&["masked"]).0).collect();
    agent.resume();
    let cgroup = own_cgroup();
    for f in findings_of(&agent, &pids) {
        // The full path, walked in the kernel: the process is gone.
        assert_eq!(f["exe"], scenario_exe().as_str(), "{f}");
        assert_eq!(f["exe_source"], "kernel", "{f}");
        assert_eq!(f["cgroup"], cgroup.as_str(), "{f}");
        assert!(f.get("exe_error").is_none(), "exiting is no error: {f}");
        assert_eq!(f["fd"], serde_json::Value::Null);
        // A dynamically linked program, gone before it could be probed:
        // said so, not mistaken for a static binary.
        let note = f["call_sites"]["note"].as_str().unwrap_or_default();
        assert!(
            note.contains("the process exited") && !note.contains("static"),
            "{f}"
        );
    }
}

/// A process in a cgroup that is removed before the agent could name it
/// (a short-lived container): its finding says why it has no cgroup.
#[test]
fn a_cgroup_gone_before_the_agent_looks_is_reported_as_such() {
    if !require_root() {
        return;
    }
    let mount = sockerr_testkit::cgroup2_root().unwrap();
    let agent = Agent::start();
    agent.pause();
    // Made once the agent cannot look: it never sees this cgroup.
    let dir = mount.join(format!("sockerr-gone-{}", std::process::id()));
    std::fs::create_dir(&dir).unwrap();
    let (pid, out) = run_program(Command::new("sh").args([
        "-c",
        &format!(
            "echo $$ > {}/cgroup.procs && exec {} masked",
            dir.display(),
            scenario_bin().display()
        ),
    ]));
    let removed = std::fs::remove_dir(&dir);
    agent.resume();
    assert!(out.status.success(), "{out:?}");
    removed.unwrap();
    for f in findings_of(&agent, &[pid]) {
        assert!(f["cgroup"].is_null(), "{f}");
        assert!(f["container_id"].is_null(), "{f}");
        let why = f["cgroup_error"].as_str().unwrap_or_default();
        assert!(why.contains("removed before it could be named"), "{f}");
        assert_eq!(
            f["exe"],
            scenario_exe().as_str(),
            "still named by the kernel: {f}"
        );
    }
}
