//! One harness for everything that drives sockerr from outside: the
//! integration tests (`agent/tests/`), the benchmarks (`cargo xtask bench`)
//! and the kernel-matrix runner (`sockerr-scenario matrix`).
//!
//! - [`Agent`]: `sockerr run` on a loopback port, its metrics and findings.
//! - [`Tracer`]: `sockerr trace --json`, findings collected as they come.
//! - [`programs`]: where the binaries are, running programs and scenarios.
//! - [`net`]: loopback ports and servers (openssl's TLS server, nginx),
//!   network namespaces, HTTP GET.
//! - [`Prometheus`]: a real Prometheus scraping what a test says.
//!
//! Helpers panic on failure (they serve tests) except where a caller needs
//! to report instead: [`Tracer::spawn`] returns a `Result`.

mod agent;
pub mod net;
pub mod programs;
mod prometheus;
mod tracer;

use std::{
    path::PathBuf,
    thread,
    time::{Duration, Instant},
};

use anyhow::Context as _;

pub use agent::{Agent, Log, web_server};
pub use net::{
    Netns, Server, closed_port, get, http_get, http_server, listening, nginx, nginx_as,
    raw_response, tls_server,
};
pub use nix::sys::signal::Signal;
pub use programs::{
    Alive, agent_bin, renamed, require_root, run_ok, run_program, scenario, scenario_alive,
    scenario_bin, scenario_env, scenario_exe, signal, stop, wait_timeout,
};
pub use prometheus::Prometheus;
pub use tracer::Tracer;

/// How long a test waits for what must happen: findings, counters, a log
/// line, a server. Things happen within milliseconds to a second here; a
/// wait only ends early, so the deadline can be generous enough for a
/// machine five times slower, busy with another job, and still fail loudly
/// when what is awaited never comes.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// The value of the sample line for exactly `series` (`name{labels}`, the
/// labels sorted by name as the exposition writes them).
pub fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))?
        .parse()
        .ok()
}

/// Where the cgroup v2 hierarchy is mounted (the agent attaches its cgroup
/// hooks to its root; tests make cgroups in it).
pub fn cgroup2_root() -> anyhow::Result<PathBuf> {
    Ok(procfs::process::Process::myself()?
        .mountinfo()?
        .into_iter()
        .find(|m| m.fs_type == "cgroup2")
        .context("no cgroup v2 hierarchy is mounted")?
        .mount_point)
}

/// Polls `f` until it returns Some, or panics with `what` after `timeout`.
pub fn eventually<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_found_by_their_whole_series() {
        let text = "# HELP x\nx{a=\"1\"} 3\nx{a=\"10\"} 7\ny 2\n";
        assert_eq!(sample(text, r#"x{a="1"}"#), Some(3.0));
        assert_eq!(sample(text, r#"x{a="10"}"#), Some(7.0));
        assert_eq!(sample(text, "y"), Some(2.0));
        assert_eq!(sample(text, "x"), None);
    }
}
