//! The probes never change what a process sees: getsockopt returns the same
//! bytes with and without them (root). Its own test binary, so no other
//! test's probes are attached during the run without them.

mod support;

use support::{Tracer, require_root, scenario};

#[test]
fn getsockopt_results_are_identical_with_and_without_probes() {
    if !require_root() {
        return;
    }
    let dump = || {
        let (_, out) = scenario(&["getsockopt-dump"]);
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
        without.lines().count() > 200,
        "the dump covers many options and sizes"
    );
    for (a, b) in without.lines().zip(with.lines()) {
        assert_eq!(a, b, "getsockopt differs with the probes attached");
    }
    assert_eq!(without.lines().count(), with.lines().count());
}
