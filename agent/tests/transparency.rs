//! The probes never change what a process sees: `sockerr-scenario
//! transparency` (getsockopt of many options and sizes on TCP, UDP and Unix
//! sockets in every state, results over a page, `SO_ERROR` read again and
//! again, sends and receives, iptables-legacy's ruleset read) gives the
//! same results with and without them (root). Its own test binary, so no
//! other test's probes are attached during the run without them. The
//! kernel matrix runs the same comparison on every kernel.

mod support;

use support::{Tracer, require_root, scenario};

#[test]
fn every_call_gives_the_same_result_with_and_without_probes() {
    if !require_root() {
        return;
    }
    let dump = || {
        let (_, out) = scenario(&["transparency"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let without = dump();
    let tracer = Tracer::start();
    let with = dump();
    drop(tracer);
    assert!(
        without.lines().count() > 1000 && without.contains("iptables-legacy-save lines="),
        "the calls cover many options, sizes and sockets, and iptables: {without}"
    );
    for (a, b) in without.lines().zip(with.lines()) {
        assert_eq!(a, b, "a call's result differs with the probes attached");
    }
    assert_eq!(without.lines().count(), with.lines().count());
}
