//! The binaries under test, and running programs to completion.

use std::{
    path::PathBuf,
    process::{Child, Command, ExitStatus, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};
use nix::{sys::signal, unistd::Pid};

/// True when the test may load eBPF programs. Without root it skips, except
/// under CI=true, where it fails: CI runs as root and must run every test.
pub fn require_root() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "this test needs root, and CI=true"
    );
    eprintln!("skipping: needs root to load eBPF programs");
    false
}

/// The agent: $SOCKERR_AGENT, or `sockerr` in the target directory of the
/// running test binary (`target/debug/deps/<test>` → `target/debug/sockerr`).
pub fn agent_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("SOCKERR_AGENT") {
        return path.into();
    }
    let exe = std::env::current_exe().expect("the test binary's path");
    let dir = exe.parent().expect("a directory");
    let dir = if dir.ends_with("deps") {
        dir.parent().expect("the profile directory")
    } else {
        dir
    };
    dir.join("sockerr")
}

/// The scenario program: $SOCKERR_SCENARIO (set by `cargo xtask test`), or
/// built next to the agent.
pub fn scenario_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("SOCKERR_SCENARIO") {
        return path.into();
    }
    let path = agent_bin().with_file_name("sockerr-scenario");
    if !path.exists() {
        let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["build", "-p", "sockerr-scenarios"])
            .status()
            .expect("running cargo");
        assert!(status.success(), "building the scenario program");
    }
    path
}

/// The scenario program's path as /proc/<pid>/exe shows it.
pub fn scenario_exe() -> String {
    scenario_bin()
        .canonicalize()
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned()
}

/// Runs one scenario to completion; returns its pid and output.
pub fn scenario(args: &[&str]) -> (u32, Output) {
    scenario_env(args, &[])
}

pub fn scenario_env(args: &[&str], env: &[(&str, &str)]) -> (u32, Output) {
    run_program(
        Command::new(scenario_bin())
            .args(args)
            .envs(env.iter().copied()),
    )
}

/// Runs any program to completion; returns its pid and output.
pub fn run_program(cmd: &mut Command) -> (u32, Output) {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning");
    let pid = child.id();
    let output = child.wait_with_output().expect("waiting");
    (pid, output)
}

/// Runs a program that must succeed (`what` names it in the panic,
/// with its output); returns its output.
pub fn run_ok(cmd: &mut Command, what: &str) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {what}: {e}"));
    assert!(
        out.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Sends `sig` to a child (SIGSTOP pauses an agent: its findings wait in
/// the ring buffer; SIGCONT resumes it).
pub fn signal(child: &Child, sig: signal::Signal) {
    let _ = signal::kill(Pid::from_raw(child.id() as i32), sig);
}

/// SIGTERM, then wait (SIGKILL after 30 s).
pub fn stop(child: &mut Child) -> ExitStatus {
    signal(child, signal::Signal::SIGTERM);
    match wait_timeout(child, Duration::from_secs(30)) {
        Ok(status) => status,
        Err(_) => child.wait().expect("waiting for a killed child"),
    }
}

/// Waits for a child, killing it after `timeout`.
pub fn wait_timeout(child: &mut Child, timeout: Duration) -> Result<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            child.wait()?;
            bail!("still running after {timeout:?}; killed");
        }
        thread::sleep(Duration::from_millis(10));
    }
}
