//! Shared by the integration tests: the harness of `sockerr-testkit` (the
//! agent and tracer as child processes, the scenario programs, loopback
//! helpers, a real Prometheus), and what only these tests need: the
//! repository's files, the libevent client fixture, real containers.
#![allow(dead_code, unused_imports)] // each test binary uses a different part

pub mod container;

use std::{path::PathBuf, process::Command};

pub use sockerr_testkit::*;

/// The repository's root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Compiles the evhttp client fixture against Debian's libevent.
pub fn build_evhttp_client() -> PathBuf {
    let src =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/evhttp_client.c");
    let out = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("evhttp_client");
    let status = Command::new("gcc")
        .args(["-O1", "-g", "-fno-omit-frame-pointer", "-o"])
        .arg(&out)
        .arg(&src)
        .args(["-levent"])
        .status()
        .expect("running gcc (cargo xtask setup installs gcc and libevent-dev)");
    assert!(status.success(), "compiling {}", src.display());
    out
}

/// The web server `sockerr run` (pid `collector`) runs now: its child
/// named `sockerr-server` (the collector starts it from a thread of its
/// own, so each thread's children are looked at).
pub fn web_server(collector: u32) -> Option<u32> {
    let tasks = std::fs::read_dir(format!("/proc/{collector}/task")).ok()?;
    tasks.flatten().find_map(|task| {
        let children = std::fs::read_to_string(task.path().join("children")).ok()?;
        children
            .split_whitespace()
            .filter_map(|pid| pid.parse().ok())
            .find(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/comm"))
                    .is_ok_and(|comm| comm.trim() == "sockerr-server")
            })
    })
}

/// [`web_server`], waited for (it starts once the probes are attached).
pub fn wait_web_server(collector: u32) -> u32 {
    eventually(std::time::Duration::from_secs(20), "the web server", || {
        web_server(collector)
    })
}
