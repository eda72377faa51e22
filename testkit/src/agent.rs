//! `sockerr run` as a child process on a loopback port of its own.

use std::{
    collections::HashSet,
    fs,
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::Path,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex, mpsc},
    thread,
    time::{Duration, Instant},
};

use nix::sys::signal::Signal;
use serde_json::Value;

use crate::{
    PATIENCE, eventually,
    net::get,
    programs::{agent_bin, pause, scenario_env, signal, stop},
    sample,
};

/// What becomes of the agent's log once it runs (until then it is kept,
/// to say why it did not start).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Log {
    /// Into the test's output, each line prefixed with `sockerr: `.
    Inherit,
    /// Kept, line by line ([`Agent::log`]); also counted in bytes.
    Capture,
    Discard,
}

pub struct Agent {
    pub child: Child,
    /// Where it serves, as it logged it: the port is the one the kernel
    /// gave it, so no other program can have taken it meanwhile.
    pub address: SocketAddr,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Agent {
    pub fn start() -> Self {
        Self::with(&[])
    }

    /// `sockerr run` with extra flags.
    pub fn with(args: &[&str]) -> Self {
        Self::spawn(&agent_bin(), args, Log::Inherit)
    }

    /// `sockerr run` with extra flags, its log lines kept ([`Agent::log`]).
    pub fn logged(args: &[&str]) -> Self {
        Self::spawn(&agent_bin(), args, Log::Capture)
    }

    /// `bin run` with extra flags; returns once it runs (probes attached,
    /// serving).
    pub fn spawn(bin: &Path, args: &[&str], log: Log) -> Self {
        Self::try_spawn(bin, args, log, PATIENCE).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`Agent::spawn`], an error when it does not run within `timeout`
    /// (the kernel matrix's emulated CPUs attach slowly).
    pub fn try_spawn(
        bin: &Path,
        args: &[&str],
        log: Log,
        timeout: Duration,
    ) -> Result<Self, String> {
        Self::try_launch(Command::new(bin), args, log, timeout)
    }

    /// `launcher run ARGS`, where `launcher` is the agent or a program that
    /// executes it with the arguments it is given (e.g. `setpriv ...
    /// sockerr`). Unless ARGS name one, the listen address is 127.0.0.1:0.
    /// An error, with its log, when it exits or does not run within
    /// `timeout`.
    pub fn try_launch(
        mut launcher: Command,
        args: &[&str],
        log: Log,
        timeout: Duration,
    ) -> Result<Self, String> {
        launcher.arg("run");
        if !args.iter().any(|a| a.starts_with("--web.listen-address")) {
            launcher.args(["--web.listen-address", "127.0.0.1:0"]);
        }
        let mut child = launcher
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("starting sockerr run: {e}"))?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (running, address) = mpsc::channel();
        let stderr = BufReader::new(child.stderr.take().expect("piped"));
        let sink = lines.clone();
        let reader = thread::spawn(move || {
            let mut started = false;
            for line in stderr.lines().map_while(Result::ok) {
                if !started && let Some(address) = running_address(&line) {
                    started = true;
                    let _ = running.send(address);
                }
                if log == Log::Inherit {
                    eprintln!("sockerr: {line}");
                }
                if !started || log == Log::Capture {
                    sink.lock().unwrap().push(line);
                }
            }
        });
        let deadline = Instant::now() + timeout;
        loop {
            let running = address
                .recv_timeout(Duration::from_millis(50))
                .map_err(|e| e == mpsc::RecvTimeoutError::Disconnected);
            // It says it runs a moment before it handles SIGTERM and SIGHUP
            // (its server installs the handlers when it first runs): until
            // then either would kill it.
            let running = running.and_then(|address| {
                while !handles_term_and_hup(child.id()) {
                    if Instant::now() >= deadline || child.try_wait().ok().flatten().is_some() {
                        return Err(true);
                    }
                    thread::sleep(Duration::from_millis(10));
                }
                Ok(address)
            });
            match running {
                Ok(address) => {
                    if log != Log::Capture {
                        lines.lock().unwrap().clear();
                    }
                    return Ok(Self {
                        child,
                        address,
                        lines,
                    });
                }
                Err(false) if Instant::now() < deadline => {}
                Err(_) => {
                    let why = match child.try_wait() {
                        Ok(Some(status)) => format!("exited ({status})"),
                        _ => {
                            stop(&mut child);
                            format!("did not run within {timeout:?}")
                        }
                    };
                    let _ = reader.join();
                    let log = lines.lock().unwrap().join("\n");
                    return Err(format!("sockerr run {why}; its log:\n{log}"));
                }
            }
        }
    }

    pub fn port(&self) -> u16 {
        self.address.port()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn get(&self, path: &str) -> (u16, String) {
        get(self.address, path)
    }

    /// The exposition, scraped now.
    pub fn metrics(&self) -> String {
        let (status, text) = self.get("/metrics");
        assert_eq!(status, 200, "{text}");
        text
    }

    /// The value of one series (labels sorted by name, as the exposition
    /// writes them), 0 when absent.
    pub fn metric(&self, series: &str) -> f64 {
        sample(&self.metrics(), series).unwrap_or(0.0)
    }

    /// The comm's connect attempts counted with `result` (0 when absent).
    pub fn attempts(&self, comm: &str, result: &str) -> f64 {
        self.metric(&format!(
            r#"sockerr_connect_attempts_total{{comm="{comm}",result="{result}"}}"#
        ))
    }

    pub fn findings(&self) -> Vec<Value> {
        serde_json::from_str(&self.get("/findings").1).expect("/findings is JSON")
    }

    /// The `/findings` entries of process `pid`.
    pub fn findings_of(&self, pid: u32) -> Vec<Value> {
        self.findings()
            .into_iter()
            .filter(|f| f["pid"] == pid)
            .collect()
    }

    /// Settles: the agent has seen what happened before (one ring buffer:
    /// a finding of a process run afterwards arrives after every earlier
    /// one). The barrier's process has a comm of its own.
    pub fn barrier(&self) {
        let (pid, out) = scenario_env(&["masked"], &[("SCENARIO_COMM", "barrier")]);
        assert!(out.status.success(), "the barrier scenario: {out:?}");
        let seen = self.wait_findings_of(pid, 2);
        assert_eq!(seen.len(), 2, "the barrier scenario's findings: {seen:#?}");
    }

    /// Waits until process `pid` has at least `n` entries in `/findings`;
    /// panics, saying what it has, after [`PATIENCE`].
    pub fn wait_findings_of(&self, pid: u32, n: usize) -> Vec<Value> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let found = self.findings_of(pid);
            if found.len() >= n {
                return found;
            }
            assert!(
                Instant::now() < deadline,
                "waited {PATIENCE:?} for {n} findings of pid {pid}, got {}: {found:#?}",
                found.len()
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Log lines kept so far ([`Log::Capture`]).
    pub fn log(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// Waits until a log line ([`Log::Capture`]) contains `text`; that
    /// line. Panics with the log after [`PATIENCE`].
    pub fn wait_log(&self, text: &str) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(line) = self.log().into_iter().find(|l| l.contains(text)) {
                return line;
            }
            assert!(
                Instant::now() < deadline,
                "waited {PATIENCE:?} for a log line with {text:?}; the log:\n{}",
                self.log().join("\n")
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Bytes logged so far ([`Log::Capture`]), newlines included.
    pub fn log_bytes(&self) -> u64 {
        let lines = self.lines.lock().unwrap();
        lines.iter().map(|l| l.len() as u64 + 1).sum()
    }

    /// The web server `sockerr run` started (the process that holds the
    /// connections), while one runs: its child named `sockerr-server`.
    pub fn server_pid(&self) -> Option<u32> {
        web_server(self.pid())
    }

    /// Every process of the agent: `sockerr run`, and its web server once
    /// it runs.
    pub fn pids(&self) -> Vec<u32> {
        [self.pid()].into_iter().chain(self.server_pid()).collect()
    }

    /// Open file descriptors, of every process of the agent.
    pub fn fds(&self) -> usize {
        self.pids()
            .iter()
            .filter_map(|pid| fs::read_dir(format!("/proc/{pid}/fd")).ok())
            .map(Iterator::count)
            .sum()
    }

    /// Established TCP connections the agent holds on its listen port
    /// (accepted, not yet closed by it): its processes' sockets, from
    /// /proc/<pid>/fd, looked up in /proc/net/tcp and tcp6.
    pub fn connections(&self) -> usize {
        let sockets: HashSet<u64> = self
            .pids()
            .iter()
            .filter_map(|pid| fs::read_dir(format!("/proc/{pid}/fd")).ok())
            .flatten()
            .flatten()
            .filter_map(|fd| {
                let target = fs::read_link(fd.path()).ok()?;
                target
                    .to_str()?
                    .strip_prefix("socket:[")?
                    .strip_suffix(']')?
                    .parse()
                    .ok()
            })
            .collect();
        let port = format!("{:04X}", self.port());
        ["/proc/net/tcp", "/proc/net/tcp6"]
            .iter()
            .flat_map(|table| {
                fs::read_to_string(table)
                    .unwrap_or_default()
                    .lines()
                    .skip(1)
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .filter(|row| {
                // sl local_address rem_address st ... uid timeout inode
                let fields: Vec<&str> = row.split_whitespace().collect();
                fields.len() > 9
                    && fields[1].rsplit(':').next() == Some(port.as_str())
                    && fields[3] == "01"
                    && fields[9]
                        .parse()
                        .is_ok_and(|inode| sockets.contains(&inode))
            })
            .count()
    }

    /// Waits until [`Agent::connections`] is `n`; panics, saying how many
    /// it holds, after [`PATIENCE`].
    pub fn wait_connections(&self, n: usize) {
        eventually(
            PATIENCE,
            &format!("the agent to hold {n} connections"),
            || (self.connections() == n).then_some(()),
        );
    }

    /// Stops the agent (SIGSTOP): findings wait in the ring buffer.
    pub fn pause(&self) {
        pause(&self.child);
    }

    pub fn resume(&self) {
        signal(&self.child, Signal::SIGCONT);
    }

    /// CPU time the agent (every process of it) has used, in seconds.
    pub fn cpu_seconds(&self) -> f64 {
        let ticks: u64 = self
            .pids()
            .iter()
            .filter_map(|pid| procfs::process::Process::new(*pid as i32).ok())
            .filter_map(|p| p.stat().ok())
            .map(|stat| stat.utime + stat.stime)
            .sum();
        ticks as f64 / procfs::ticks_per_second() as f64
    }

    /// Resident memory now (every process of the agent), in KiB.
    pub fn rss_kib(&self) -> u64 {
        self.pids()
            .iter()
            .filter_map(|pid| procfs::process::Process::new(*pid as i32).ok())
            .filter_map(|p| p.status().ok())
            .filter_map(|s| s.vmrss)
            .sum()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            stop(&mut self.child);
        }
    }
}

/// Whether process `pid` has handlers for SIGTERM and SIGHUP (SigCgt in
/// /proc/<pid>/status: bit n-1 for signal n).
fn handles_term_and_hup(pid: u32) -> bool {
    let wanted = (1 << (Signal::SIGTERM as u64 - 1)) | (1 << (Signal::SIGHUP as u64 - 1));
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            let hex = status.lines().find_map(|l| l.strip_prefix("SigCgt:"))?;
            u64::from_str_radix(hex.trim(), 16).ok()
        })
        .is_some_and(|caught| caught & wanted == wanted)
}

/// The address in the agent's "sockerr running" line, logfmt
/// (`msg="sockerr running" address=127.0.0.1:9809 ...`) or JSON
/// (`{"msg":"sockerr running","address":"127.0.0.1:9809",...}`).
fn running_address(line: &str) -> Option<SocketAddr> {
    if let Ok(json) = serde_json::from_str::<Value>(line) {
        return (json["msg"] == "sockerr running")
            .then(|| json["address"].as_str()?.parse().ok())
            .flatten();
    }
    if !line.contains(r#"msg="sockerr running""#) {
        return None;
    }
    line.split_whitespace()
        .find_map(|field| field.strip_prefix("address="))?
        .parse()
        .ok()
}

/// The web server of `sockerr run` (pid `collector`): its child named
/// `sockerr-server` (started from a thread of its own, so each thread's
/// children are looked at).
pub fn web_server(collector: u32) -> Option<u32> {
    let tasks = fs::read_dir(format!("/proc/{collector}/task")).ok()?;
    tasks.flatten().find_map(|task| {
        let children = fs::read_to_string(task.path().join("children")).ok()?;
        children
            .split_whitespace()
            .filter_map(|pid| pid.parse().ok())
            .find(|pid| {
                fs::read_to_string(format!("/proc/{pid}/comm"))
                    .is_ok_and(|comm| comm.trim() == "sockerr-server")
            })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_address_is_read_from_either_log_format() {
        let logfmt = r#"ts=2025-01-01T00:00:00Z level=info target=sockerr msg="sockerr running" address=[::1]:40123 path=/metrics"#;
        assert_eq!(
            running_address(logfmt),
            Some("[::1]:40123".parse().unwrap())
        );
        let json = r#"{"ts":"x","level":"info","target":"sockerr","msg":"sockerr running","address":"127.0.0.1:9809","path":"/metrics"}"#;
        assert_eq!(
            running_address(json),
            Some("127.0.0.1:9809".parse().unwrap())
        );
        assert_eq!(
            running_address(r#"message="finding" address=1.2.3.4:5"#),
            None
        );
    }
}
