//! The binaries under test, and running programs to completion.

use std::{
    io::Read,
    path::PathBuf,
    process::{Child, Command, ExitStatus, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};
use nix::{sys::signal, unistd::Pid};

use crate::{PATIENCE, eventually};

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

/// `program` (a path, or found on PATH) under another name: a symlink
/// called `comm`, so that its processes get that comm (the kernel takes it
/// from the name executed), which the metrics count them by. Another test,
/// or another test run on the host, running the same program cannot add to
/// this one's counts. (Not for a wrapper that looks at its own name, such
/// as pyenv's shims.)
pub fn renamed(program: &str, comm: &str) -> PathBuf {
    assert!(comm.len() <= 15, "a comm has at most 15 bytes: {comm}");
    let target = if program.contains('/') {
        PathBuf::from(program)
    } else {
        std::env::var_os("PATH")
            .and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|dir| dir.join(program))
                    .find(|path| path.is_file())
            })
            .unwrap_or_else(|| panic!("{program} is not on PATH (cargo xtask setup installs it)"))
    };
    let dir = std::env::temp_dir().join(format!("sockerr-renamed-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a directory for the renamed programs");
    let link = dir.join(comm);
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&target, &link).expect("linking the renamed program");
    link
}

/// A scenario kept alive after its run (SCENARIO_LINGER_MS=stdin) until
/// [`Alive::finish`]: the agent, and the test, find it in /proc meanwhile.
/// Killed if dropped unfinished.
pub struct Alive(Child);

/// Starts a scenario that stays alive once done.
pub fn scenario_alive(args: &[&str], env: &[(&str, &str)]) -> Alive {
    let child = Command::new(scenario_bin())
        .args(args)
        .envs(env.iter().copied())
        .env("SCENARIO_LINGER_MS", "stdin")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning the scenario");
    Alive(child)
}

impl Alive {
    pub fn pid(&self) -> u32 {
        self.0.id()
    }

    /// Lets it exit (closes its stdin); its output, once it has.
    pub fn finish(mut self) -> Output {
        drop(self.0.stdin.take());
        let status = wait_timeout(&mut self.0, PATIENCE).expect("the scenario to exit");
        let read = |pipe: Option<&mut dyn Read>| {
            let mut bytes = Vec::new();
            if let Some(pipe) = pipe {
                pipe.read_to_end(&mut bytes)
                    .expect("reading the scenario's output");
            }
            bytes
        };
        let stdout = read(self.0.stdout.as_mut().map(|p| p as &mut dyn Read));
        let stderr = read(self.0.stderr.as_mut().map(|p| p as &mut dyn Read));
        Output {
            status,
            stdout,
            stderr,
        }
    }
}

impl Drop for Alive {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
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

/// Stops `child` (SIGSTOP) and waits until every thread of it is stopped:
/// kill() returns before the signal is delivered, and a thread still
/// running could go on handling what the caller meant to hold back.
pub fn pause(child: &Child) {
    signal(child, signal::Signal::SIGSTOP);
    let process = procfs::process::Process::new(child.id() as i32).expect("the child's /proc");
    eventually(PATIENCE, "every thread to stop after SIGSTOP", || {
        let stopped = process
            .tasks()
            .ok()?
            .flatten()
            .all(|t| t.stat().is_ok_and(|s| s.state == 'T'));
        stopped.then_some(())
    });
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
