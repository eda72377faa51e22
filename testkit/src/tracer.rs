//! `sockerr trace --json` as a child process, its findings collected.

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex, mpsc},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use nix::sys::signal::Signal;
use serde_json::Value;

use crate::{
    PATIENCE,
    programs::{agent_bin, pause, scenario_env, signal, stop},
};

pub struct Tracer {
    child: Child,
    findings: Arc<Mutex<Vec<Value>>>,
}

impl Tracer {
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// `sockerr trace --json` with more flags; panics unless it attaches
    /// within [`PATIENCE`]. Its log goes to the test's stderr.
    pub fn start_with(args: &[&str]) -> Self {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        Self::spawn(&agent_bin(), &args, PATIENCE, |line| {
            eprintln!("sockerr: {line}")
        })
        .expect("sockerr trace")
    }

    /// `bin trace --json ARGS`; returns once its banner says every probe is
    /// attached. Each stderr line goes to `log`.
    pub fn spawn(
        bin: &Path,
        args: &[String],
        attach_timeout: Duration,
        log: impl Fn(&str) + Send + 'static,
    ) -> Result<Self> {
        let mut child = Command::new(bin)
            .args(["trace", "--json"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting sockerr trace")?;
        let (banner_tx, banner_rx) = mpsc::channel();
        let stderr = BufReader::new(child.stderr.take().expect("piped"));
        let stderr_done = thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                log(&line);
                if line.contains("tracing; Ctrl-C to stop") {
                    let _ = banner_tx.send(());
                }
            }
        });
        let findings = Arc::new(Mutex::new(Vec::new()));
        let sink = findings.clone();
        let stdout = BufReader::new(child.stdout.take().expect("piped"));
        thread::spawn(move || {
            for line in stdout.lines().map_while(Result::ok) {
                match serde_json::from_str::<Value>(&line) {
                    Ok(v) => sink.lock().unwrap().push(v),
                    Err(e) => eprintln!("not a JSON finding ({e}): {line}"),
                }
            }
        });
        let mut tracer = Self { child, findings };
        let deadline = Instant::now() + attach_timeout;
        loop {
            if banner_rx.recv_timeout(Duration::from_millis(50)).is_ok() {
                return Ok(tracer);
            }
            if let Some(status) = tracer.child.try_wait()? {
                let _ = stderr_done.join();
                bail!("sockerr trace exited with {status} before attaching");
            }
            if Instant::now() > deadline {
                stop(&mut tracer.child);
                bail!("sockerr trace did not attach within {attach_timeout:?}");
            }
        }
    }

    pub fn of(&self, pid: u32) -> Vec<Value> {
        self.matching(|f| f["pid"] == pid)
    }

    /// Sorted finding kinds of a process.
    pub fn kinds(&self, pid: u32) -> Vec<String> {
        let mut kinds: Vec<String> = self
            .of(pid)
            .iter()
            .filter_map(|f| f["kind"].as_str().map(str::to_owned))
            .collect();
        kinds.sort();
        kinds
    }

    /// Waits until `pid` has at least `n` findings; panics, saying what
    /// it has, after [`PATIENCE`].
    pub fn wait_for(&self, pid: u32, n: usize) -> Vec<Value> {
        self.try_wait_for(pid, n, PATIENCE)
            .unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// [`Tracer::wait_for`], an error when they do not come within
    /// `timeout`.
    pub fn try_wait_for(&self, pid: u32, n: usize, timeout: Duration) -> Result<Vec<Value>> {
        self.try_wait_matching(&format!("pid {pid}"), |f| f["pid"] == pid, n, timeout)
    }

    /// Findings that match `pred`.
    pub fn matching(&self, pred: impl Fn(&Value) -> bool) -> Vec<Value> {
        let findings = self.findings.lock().unwrap();
        findings.iter().filter(|f| pred(f)).cloned().collect()
    }

    /// Waits until at least `n` findings match `pred` (findings of `what`);
    /// panics, saying what matched, after [`PATIENCE`].
    pub fn wait_matching(&self, what: &str, pred: impl Fn(&Value) -> bool, n: usize) -> Vec<Value> {
        self.try_wait_matching(what, pred, n, PATIENCE)
            .unwrap_or_else(|e| panic!("{e:#}"))
    }

    fn try_wait_matching(
        &self,
        what: &str,
        pred: impl Fn(&Value) -> bool,
        n: usize,
        timeout: Duration,
    ) -> Result<Vec<Value>> {
        let deadline = Instant::now() + timeout;
        loop {
            let found = self.matching(&pred);
            if found.len() >= n {
                return Ok(found);
            }
            if Instant::now() > deadline {
                bail!(
                    "waited {timeout:?} for {n} findings of {what}, got {}: {found:#?}",
                    found.len()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Runs a scenario that must be flagged (with a comm of its own) and
    /// waits for its findings: every finding produced before it has been
    /// delivered too (one ring buffer).
    pub fn barrier(&self) {
        let (pid, out) = scenario_env(&["masked"], &[("SCENARIO_COMM", "barrier")]);
        assert!(out.status.success(), "the barrier scenario: {out:?}");
        let found = self.wait_for(pid, 2);
        assert_eq!(
            found.len(),
            2,
            "the barrier scenario's findings: {found:#?}"
        );
    }

    /// Stops the agent (SIGSTOP): findings wait in the ring buffer.
    pub fn pause(&self) {
        pause(&self.child);
    }

    pub fn resume(&self) {
        signal(&self.child, Signal::SIGCONT);
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}
