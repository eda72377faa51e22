//! Shared by the integration tests: root gating, the scenario program, and
//! the agent started as a child process (`sockerr trace --json` or `sockerr run`).
#![allow(dead_code)] // each test binary uses a different part

pub mod container;

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, Output, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

/// True when the test may load eBPF programs. Without root it skips, except
/// under CI=true, where it fails: CI runs as root and must run every test.
pub fn require_root() -> bool {
    // SAFETY: no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "this test needs root, and CI=true"
    );
    eprintln!("skipping: needs root to load eBPF programs");
    false
}

/// The repository's root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
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

pub fn agent_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_sockerr"))
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

/// `sockerr trace --json` in the background, collecting findings.
pub struct Tracer {
    child: Child,
    findings: Arc<Mutex<Vec<Value>>>,
}

impl Tracer {
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// `sockerr trace --json` with more flags.
    pub fn start_with(args: &[&str]) -> Self {
        let mut child = Command::new(agent_bin())
            .args(["trace", "--json"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting sockerr trace");
        let stderr = BufReader::new(child.stderr.take().unwrap());
        let mut lines = stderr.lines();
        // The banner is printed once every probe is attached.
        for line in lines.by_ref() {
            let line = line.expect("reading sockerr's stderr");
            if line.contains("tracing; Ctrl-C to stop") {
                break;
            }
            assert!(
                !line.contains("level=error"),
                "sockerr trace failed: {line}"
            );
        }
        thread::spawn(move || lines.for_each(|l| eprintln!("sockerr: {}", l.unwrap_or_default())));
        let findings = Arc::new(Mutex::new(Vec::new()));
        let sink = findings.clone();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        thread::spawn(move || {
            for line in stdout.lines().map_while(Result::ok) {
                let v: Value = serde_json::from_str(&line).expect("a JSON line");
                sink.lock().unwrap().push(v);
            }
        });
        Self { child, findings }
    }

    pub fn of(&self, pid: u32) -> Vec<Value> {
        self.findings
            .lock()
            .unwrap()
            .iter()
            .filter(|f| f["pid"] == pid)
            .cloned()
            .collect()
    }

    /// Sorted finding kinds of a process.
    pub fn kinds(&self, pid: u32) -> Vec<String> {
        let mut kinds: Vec<String> = self
            .of(pid)
            .iter()
            .map(|f| f["kind"].as_str().unwrap().to_owned())
            .collect();
        kinds.sort();
        kinds
    }

    /// Waits until `pid` has at least `n` findings.
    pub fn wait_for(&self, pid: u32, n: usize, timeout: Duration) -> Vec<Value> {
        self.wait_matching(|f| f["pid"] == pid, n, timeout)
    }

    /// Findings that match `pred`.
    pub fn matching(&self, pred: impl Fn(&Value) -> bool) -> Vec<Value> {
        let findings = self.findings.lock().unwrap();
        findings.iter().filter(|f| pred(f)).cloned().collect()
    }

    /// Waits until at least `n` findings match `pred`.
    pub fn wait_matching(
        &self,
        pred: impl Fn(&Value) -> bool,
        n: usize,
        timeout: Duration,
    ) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let found = self.matching(&pred);
            if found.len() >= n || Instant::now() > deadline {
                return found;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Runs a scenario that must be flagged and waits for its finding: every
    /// finding produced before it has been delivered too (one ring buffer).
    pub fn barrier(&self) {
        let (pid, _) = scenario(&["masked"]);
        let found = self.wait_for(pid, 2, Duration::from_secs(10));
        assert_eq!(found.len(), 2, "the barrier scenario was not flagged");
    }
}

impl Tracer {
    /// Stops the agent (SIGSTOP): findings wait in the ring buffer.
    pub fn pause(&self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGSTOP) };
    }

    pub fn resume(&self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGCONT) };
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

/// SIGTERM, then wait.
pub fn stop(child: &mut Child) -> std::process::ExitStatus {
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    child.wait().expect("waiting for sockerr")
}

/// A loopback HTTP server answering every request with 200 "ok".
pub fn http_server(v6: bool) -> u16 {
    let listener = TcpListener::bind(if v6 { "[::1]:0" } else { "127.0.0.1:0" }).unwrap();
    let port = listener.local_addr().unwrap().port();
    thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let mut req = Vec::new();
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = conn.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                );
            });
        }
    });
    port
}

/// A loopback port nothing listens on.
pub fn closed_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Plain HTTP/1.1 GET; returns (status, body).
pub fn http_get(port: u16, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connecting to the agent");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    raw_response(&mut s)
}

/// Reads a whole response (the server closes the connection).
pub fn raw_response(s: &mut TcpStream) -> (u16, String) {
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    let text = String::from_utf8_lossy(&resp).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, dechunk(&body))
}

/// Undoes chunked transfer encoding when present.
fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            return body.to_owned();
        };
        if n == 0 {
            return out;
        }
        let Some(chunk) = tail.get(..n) else {
            return body.to_owned();
        };
        out.push_str(chunk);
        rest = tail.get(n + 2..).unwrap_or_default();
    }
    body.to_owned()
}

/// `sockerr run` on an ephemeral loopback port.
pub struct Agent {
    pub child: Child,
    pub port: u16,
}

impl Agent {
    pub fn start() -> Self {
        Self::with(&[])
    }

    /// `sockerr run` with extra flags.
    pub fn with(args: &[&str]) -> Self {
        Self::spawn(args, Stdio::inherit())
    }

    /// `sockerr run` with extra flags, its log lines collected.
    pub fn logged(args: &[&str]) -> (Self, Arc<Mutex<Vec<String>>>) {
        let mut agent = Self::spawn(args, Stdio::piped());
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        let stderr = BufReader::new(agent.child.stderr.take().unwrap());
        thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        (agent, lines)
    }

    fn spawn(args: &[&str], stderr: Stdio) -> Self {
        let port = closed_port();
        let child = Command::new(agent_bin())
            .args(["run", "--web.listen-address", &format!("127.0.0.1:{port}")])
            .args(args)
            .stderr(stderr)
            .spawn()
            .expect("starting sockerr run");
        let agent = Self { child, port };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "sockerr run did not start listening"
            );
            thread::sleep(Duration::from_millis(50));
        }
        // It listens before attaching; /healthz answers once it serves.
        while http_get(port, "/healthz").0 != 200 {
            assert!(
                Instant::now() < deadline,
                "sockerr run did not become healthy"
            );
            thread::sleep(Duration::from_millis(50));
        }
        agent
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

    /// The value of one series (labels in the exposition's order, sorted by
    /// name), 0 when absent.
    pub fn metric(&self, series: &str) -> f64 {
        sample(&self.metrics(), series).unwrap_or(0.0)
    }

    pub fn findings(&self) -> Vec<Value> {
        serde_json::from_str(&self.get("/findings").1).expect("/findings is JSON")
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
}

impl Drop for Agent {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

/// The value of the sample line for exactly `series` (`name{labels}`).
pub fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))?
        .parse()
        .ok()
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

/// A network namespace of the test's own (loopback up), deleted on drop.
pub struct Netns(pub String);

impl Netns {
    pub fn new(name: &str) -> Self {
        let name = format!("sockerr-{name}-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).status();
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .expect("ip (cargo xtask setup installs iproute2)");
        assert!(ok.success(), "ip netns add {name}");
        let ns = Self(name);
        ns.run(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// A command run inside the namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.0]).arg(program);
        cmd
    }

    /// Runs a command inside the namespace; it must succeed.
    pub fn run(&self, args: &[&str]) {
        let out = self.command(args[0]).args(&args[1..]).output().unwrap();
        assert!(out.status.success(), "{args:?} in {}: {out:?}", self.0);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
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

/// A real Prometheus (Debian's, installed by `cargo xtask setup`) scraping
/// every second with the given `scrape_configs` entries (YAML, indented two
/// spaces), in a directory of its own.
pub struct Prometheus {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Prometheus {
    pub fn start(scrape_configs: &str) -> Self {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("prometheus-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n{scrape_configs}"
            ),
        )
        .unwrap();
        let port = closed_port();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting prometheus (cargo xtask setup installs it)");
        let p = Self { child, port, dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !prometheus_ready(port) {
            assert!(Instant::now() < deadline, "prometheus did not become ready");
            thread::sleep(Duration::from_millis(200));
        }
        p
    }

    /// Runs an instant query; panics unless Prometheus accepts it.
    pub fn query(&self, expr: &str) -> Vec<Value> {
        let (status, body) = http_get(self.port, &format!("/api/v1/query?query={}", encode(expr)));
        let v: Value = serde_json::from_str(&body).unwrap_or_else(|_| panic!("{status}: {body}"));
        assert_eq!(v["status"], "success", "query {expr} rejected: {body}");
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn prometheus_ready(port: u16) -> bool {
    TcpStream::connect(("127.0.0.1", port)).is_ok() && http_get(port, "/-/ready").0 == 200
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
