//! `sockerr run` as a child process on an ephemeral loopback port.

use std::{
    io::{BufRead, BufReader},
    net::TcpStream,
    path::Path,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use nix::sys::signal::Signal;
use serde_json::Value;

use crate::{
    net::{closed_port, http_get},
    programs::{agent_bin, scenario, signal, stop},
    sample,
};

/// What becomes of the agent's log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Log {
    /// Into the test's own stderr.
    Inherit,
    /// Kept, line by line ([`Agent::log`]); also counted in bytes.
    Capture,
    Discard,
}

pub struct Agent {
    pub child: Child,
    pub port: u16,
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

    /// `sockerr run` with extra flags, its log lines kept.
    pub fn logged(args: &[&str]) -> (Self, Arc<Mutex<Vec<String>>>) {
        let agent = Self::spawn(&agent_bin(), args, Log::Capture);
        let lines = agent.lines.clone();
        (agent, lines)
    }

    /// `bin run` with extra flags; returns once it serves /healthz.
    pub fn spawn(bin: &Path, args: &[&str], log: Log) -> Self {
        Self::try_spawn(bin, args, log, Duration::from_secs(30)).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`Agent::spawn`], an error when it does not serve within `timeout`
    /// (the kernel matrix's emulated CPUs attach slowly).
    pub fn try_spawn(
        bin: &Path,
        args: &[&str],
        log: Log,
        timeout: Duration,
    ) -> Result<Self, String> {
        let port = closed_port();
        let mut child = Command::new(bin)
            .args(["run", "--web.listen-address", &format!("127.0.0.1:{port}")])
            .args(args)
            .stdout(Stdio::null())
            .stderr(match log {
                Log::Inherit => Stdio::inherit(),
                Log::Capture => Stdio::piped(),
                Log::Discard => Stdio::null(),
            })
            .spawn()
            .map_err(|e| format!("starting sockerr run: {e}"))?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        if let Some(stderr) = child.stderr.take() {
            let sink = lines.clone();
            thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    sink.lock().unwrap().push(line);
                }
            });
        }
        // Dropped on every return below: stops it.
        let agent = Self { child, port, lines };
        let deadline = Instant::now() + timeout;
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() >= deadline {
                return Err("sockerr run did not start listening".into());
            }
            thread::sleep(Duration::from_millis(50));
        }
        // It listens before attaching; /healthz answers once it serves.
        while http_get(port, "/healthz").0 != 200 {
            if Instant::now() >= deadline {
                return Err("sockerr run did not become healthy".into());
            }
            thread::sleep(Duration::from_millis(50));
        }
        Ok(agent)
    }

    /// A `sockerr run` started otherwise (e.g. under setpriv), serving on
    /// `port`; stopped when dropped.
    pub fn adopt(child: Child, port: u16) -> Self {
        Self {
            child,
            port,
            lines: Arc::default(),
        }
    }

    pub fn get(&self, path: &str) -> (u16, String) {
        http_get(self.port, path)
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

    /// Settles: the agent has seen what happened before (one ring buffer:
    /// a finding of a process run afterwards arrives after every earlier one).
    pub fn barrier(&self) {
        let (pid, _) = scenario(&["masked"]);
        let seen = self.wait_findings_of(pid, 2);
        assert_eq!(seen.len(), 2, "the barrier scenario was flagged");
    }

    pub fn wait_findings_of(&self, pid: u32, n: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let found: Vec<Value> = self
                .findings()
                .into_iter()
                .filter(|f| f["pid"] == pid)
                .collect();
            if found.len() >= n || Instant::now() > deadline {
                return found;
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Log lines kept so far ([`Log::Capture`]).
    pub fn log(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// Bytes logged so far ([`Log::Capture`]), newlines included.
    pub fn log_bytes(&self) -> u64 {
        let lines = self.lines.lock().unwrap();
        lines.iter().map(|l| l.len() as u64 + 1).sum()
    }

    /// Stops the agent (SIGSTOP): findings wait in the ring buffer.
    pub fn pause(&self) {
        signal(&self.child, Signal::SIGSTOP);
    }

    pub fn resume(&self) {
        signal(&self.child, Signal::SIGCONT);
    }

    /// CPU time the agent has used, in seconds.
    pub fn cpu_seconds(&self) -> f64 {
        let stat = procfs::process::Process::new(self.child.id() as i32)
            .and_then(|p| p.stat())
            .expect("the agent's /proc/<pid>/stat");
        (stat.utime + stat.stime) as f64 / procfs::ticks_per_second() as f64
    }

    /// Resident memory now, in KiB.
    pub fn rss_kib(&self) -> u64 {
        procfs::process::Process::new(self.child.id() as i32)
            .and_then(|p| p.status())
            .ok()
            .and_then(|s| s.vmrss)
            .unwrap_or(0)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            stop(&mut self.child);
        }
    }
}
