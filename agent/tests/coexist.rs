//! Two agents on one host (root): `sockerr trace` started next to the
//! daemon, as an SRE does to look closer. Each hook leaves the kernel's
//! result in force for the programs after it (the getsockopt hook sets
//! optlen to 0), and each reads what it needs regardless, so both see
//! every finding.

mod support;

use support::{Agent, Tracer, require_root, scenario_env};

#[test]
fn a_trace_next_to_the_daemon_and_the_daemon_both_see_every_finding() {
    if !require_root() {
        return;
    }
    let agent = Agent::start();
    let tracer = Tracer::start();
    let (pid, out) = scenario_env(&["masked"], &[("SCENARIO_COMM", "coexist")]);
    assert!(out.status.success());
    let mut traced: Vec<String> = tracer
        .wait_for(pid, 2)
        .iter()
        .map(|f| f["kind"].as_str().unwrap_or_default().to_owned())
        .collect();
    traced.sort();
    assert_eq!(traced, ["io_after_failed_connect", "so_error_masked"]);
    let mut served: Vec<String> = agent
        .wait_findings_of(pid, 2)
        .iter()
        .map(|f| f["kind"].as_str().unwrap_or_default().to_owned())
        .collect();
    served.sort();
    assert_eq!(served, traced, "the daemon saw what the trace saw");
    assert_eq!(
        agent.metric(r#"sockerr_so_error_reads_total{comm="coexist",result="error"}"#),
        1.0,
        "the daemon saw the SO_ERROR value the process read"
    );
}
