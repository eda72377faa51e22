//! What call sites cost a flagged process under `sockerr run` (root, real
//! kernel): a process is probed only once it has run on for
//! `--call-sites.delay` after its first finding, and the call sites one
//! process showed are given to later processes of the same executable file
//! without probing them (docs/design.md §5).

mod support;

use std::{
    fs,
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use serde_json::Value;
use support::{Agent, eventually, require_root, run_program, scenario_bin};

const WAIT: Duration = Duration::from_secs(60);
const PROBED: &str = r#"sockerr_map_entries{map="call_site_processes"}"#;

/// A copy of the scenario program at a path of this test's: a file of its
/// own (its own inode), so an executable no other test ran.
fn fresh_executable(name: &str) -> PathBuf {
    let dir =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("per-exe-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    let _ = fs::remove_file(&path);
    fs::copy(scenario_bin(), &path).unwrap();
    path
}

/// The note of a finding's call sites ("" when it has none).
fn note(finding: &Value) -> &str {
    finding["call_sites"]["note"].as_str().unwrap_or("")
}

/// No call sites, and the note says it was not probed for its own reason.
fn unprobed(finding: &Value) -> bool {
    let note = note(finding);
    finding["call_sites"]["so_error_reads"][1].is_null()
        && (note.contains("--call-sites.delay") || note.contains("the process exited"))
}

fn masked_finding(agent: &Agent, pid: u32) -> Value {
    let found = agent.wait_findings_of(pid, 2);
    found
        .into_iter()
        .find(|f| f["kind"] == "so_error_masked")
        .unwrap_or_else(|| panic!("process {pid} was not flagged so_error_masked"))
}

#[test]
fn a_short_lived_process_is_not_probed_and_a_later_one_gets_its_executables_sites() {
    if !require_root() {
        return;
    }
    let agent = Agent::with(&["--call-sites.delay", "1s"]);
    let exe = fresh_executable("client");

    // Exits at once after its finding: never probed, and says why (the
    // delay, or that it had exited when the agent looked).
    let (short, out) = run_program(Command::new(&exe).arg("masked"));
    assert!(out.status.success());
    let first = masked_finding(&agent, short);
    assert!(
        unprobed(&first),
        "a process that exits within the delay says why it has no call sites: {first:#}"
    );
    assert_eq!(
        agent.metric(PROBED),
        0.0,
        "the short-lived process was probed"
    );

    // One that runs on is probed once the delay has passed, shows its call
    // sites with its next finding and is let go.
    let mut long = Command::new(&exe)
        .args(["repeat", "buggy", "2", "stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let pid = long.id();
    let mut stdin = long.stdin.take().unwrap();
    assert_eq!(agent.wait_findings_of(pid, 1).len(), 1);
    eventually(
        WAIT,
        "the long-lived process probed after the delay",
        || (agent.metric(PROBED) == 1.0).then_some(()),
    );
    writeln!(stdin).unwrap();
    drop(stdin);
    assert!(long.wait().unwrap().success());
    let shown = eventually(WAIT, "a finding with call sites", || {
        agent.findings().into_iter().find(|f| {
            f["pid"] == pid && f["call_sites"]["so_error_reads"][1]["at"]["function"].is_string()
        })
    });
    assert!(note(&shown).is_empty(), "{shown:#}");
    eventually(WAIT, "the uprobes let go", || {
        (agent.metric(PROBED) == 0.0).then_some(())
    });

    // Later processes of the same file get those sites, unprobed.
    let (later, out) = run_program(Command::new(&exe).arg("masked"));
    assert!(out.status.success());
    let given = masked_finding(&agent, later);
    assert!(
        note(&given).contains(&format!("process {pid} of the same executable")),
        "{given:#}"
    );
    assert_eq!(
        given["call_sites"]["so_error_reads"][1]["at"]["function"],
        shown["call_sites"]["so_error_reads"][1]["at"]["function"]
    );

    // A file rebuilt in place is another executable: nothing learned.
    let mut bytes = fs::read(&exe).unwrap();
    bytes.extend_from_slice(b"rebuilt");
    fs::write(&exe, bytes).unwrap();
    let (rebuilt, out) = run_program(Command::new(&exe).arg("masked"));
    assert!(out.status.success());
    let fresh = masked_finding(&agent, rebuilt);
    assert!(unprobed(&fresh), "{fresh:#}");
    assert!(
        fresh["call_sites"]["so_error_reads"][1].is_null(),
        "a rebuilt executable got the old file's call sites: {fresh:#}"
    );
}
