//! Hostile input and faults: what a client on the scrape network, or an
//! unlucky operator, can do to a running agent, and what it must hold to
//! (root, real kernel; the checks at start need no root). Each test reads
//! host-wide state or loads the machine, so they run one at a time.
//!
//! | what is done to it | what it holds to |
//! | --- | --- |
//! | 30 clients read the largest `/findings` slowly, 10,000 processes flagged | anonymous memory within [`FINDINGS_BOUND`] of before; every body whole |
//! | a slow reader of a large response; connections past the cap meanwhile | served past the idle timeout, never evicted mid-body |
//! | a client stops reading a response | closed after the write timeout, counted as such |
//! | 1,000 non-atomic rewrites of a TLS + basic-auth file, read mid-rewrite | 0 plain-HTTP and 0 unauthenticated answers; every rewrite refused or unchanged |
//! | the file swapped for a FIFO or `/dev/zero` | refused at once; the server keeps answering |
//! | SIGHUP 10, 50, 100, 200 ms after start, and all through start-up | the agent runs |
//! | SIGHUP with the file unchanged (also 100 a second while scraping) | no connection dropped |
//! | new TLS terms | a connection answers the request it was about to send, then closes |
//! | `sockerr trace` and `sockerr check` with a closed standard output | exit 0, no panic |
//! | `--web.telemetry-path '/{'` or `'/{x}'` | refused at start, naming the flag |
//! | `/findings?_=1`, `?limit=` past the cap | 200; 400 |
//! | a process in a cgroup named like another pod's container | in no container; the same id in the pod's cgroup is |

mod support;

use std::{
    fs,
    io::{BufRead, BufReader, ErrorKind, Read, Write},
    net::{SocketAddr, TcpStream},
    os::{fd::FromRawFd, unix::fs::symlink},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex, MutexGuard, OnceLock, PoisonError,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use base64::Engine as _;
use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject as _};
use serde_json::Value;
use support::{
    Agent, Signal, agent_bin, bcrypt_hash, eventually, http_get, repo, require_root, run_ok,
    sample, scenario, scenario_bin, signal, stop,
};

/// How long to wait for anything the agent should do: generous, for a
/// machine several times slower than the development VM, and busy.
const WAIT: Duration = Duration::from_secs(120);

/// What 30 slow readers of the largest `/findings` may add to the agent's
/// anonymous memory (heap): each holds its order (16 bytes an entry, 160
/// KiB at `?limit=10000`) and a chunk or two of 32 KiB.
const FINDINGS_BOUND: u64 = 16 << 20;

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A fresh scratch directory of this test binary.
fn scratch(name: &str) -> PathBuf {
    support::scratch("hostile", name)
}

/// The value of `series` in `metrics`, 0 when absent.
fn value(metrics: &str, series: &str) -> f64 {
    sample(metrics, series).unwrap_or(0.0)
}

/// `sockerr run` on 127.0.0.1:0 started by hand: for what the harness
/// cannot do (signals from the first instant, a TLS-only listener). Its
/// log is kept; stopped when dropped.
struct Started {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
}

impl Started {
    fn spawn(args: &[&str]) -> Self {
        let mut child = Command::new(agent_bin())
            .args(["run", "--web.listen-address", "127.0.0.1:0"])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting sockerr run");
        let log = Arc::new(Mutex::new(Vec::new()));
        let stderr = BufReader::new(child.stderr.take().unwrap());
        let sink = log.clone();
        thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Self { child, log }
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// The log lines with `text`, at least one.
    fn lines(&self, text: &str) -> Vec<String> {
        let lines: Vec<String> = self
            .log()
            .into_iter()
            .filter(|l| l.contains(text))
            .collect();
        assert!(!lines.is_empty(), "no {text:?} in {:#?}", self.log());
        lines
    }

    /// Panics, with the log, if the agent has exited.
    fn alive(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!("sockerr run exited: {status}\n{:#?}", self.log());
        }
    }

    /// Waits until it serves; the address it logged.
    fn running(&mut self) -> SocketAddr {
        eventually(WAIT, "sockerr running", || {
            self.alive();
            let line = self
                .log()
                .into_iter()
                .find(|l| l.contains("msg=\"sockerr running\""))?;
            line.split_whitespace()
                .find_map(|f| f.strip_prefix("address="))?
                .parse()
                .ok()
        })
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            stop(&mut self.child);
        }
    }
}

/// A web configuration of its own directory: basic auth, user `a` with
/// password `a`, plain HTTP.
fn basic_auth(name: &str) -> PathBuf {
    let file = scratch(name).join("web.yml");
    let users = format!("basic_auth_users:\n  a: '{}'\n", bcrypt_hash("a"));
    fs::write(&file, users).unwrap();
    file
}

/// A test CA and two server certificates from it for 127.0.0.1 (`one`,
/// `two`: a rotation), made with openssl once per test binary.
fn pki() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = scratch("pki");
        let openssl = |args: &[&str]| support::openssl(&dir, args);
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ];
        openssl(
            &[
                &["req", "-x509"][..],
                &ec,
                &["-subj", "/CN=sockerr hostile CA", "-days", "2"],
                &["-keyout", "ca.key", "-out", "ca.crt"],
            ]
            .concat(),
        );
        fs::write(
            dir.join("server.ext"),
            "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        for name in ["one", "two"] {
            let (key, csr, crt) = (
                format!("{name}.key"),
                format!("{name}.csr"),
                format!("{name}.crt"),
            );
            openssl(
                &[
                    &["req"][..],
                    &ec,
                    &["-subj", "/CN=127.0.0.1", "-keyout", &key, "-out", &csr],
                ]
                .concat(),
            );
            support::ca_sign(&dir, &csr, "server.ext", &crt);
        }
        dir
    })
}

/// A TLS client trusting the test CA.
fn tls_client() -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(pki().join("ca.crt")).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// A TLS connection to the agent, handshake done.
fn tls_connect(config: &Arc<rustls::ClientConfig>, port: u16) -> Result<Tls, String> {
    let tcp = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let name = ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into());
    let conn = rustls::ClientConnection::new(config.clone(), name).map_err(|e| e.to_string())?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    while tls.conn.is_handshaking() {
        tls.conn
            .complete_io(&mut tls.sock)
            .map_err(|e| format!("handshake: {e}"))?;
    }
    Ok(tls)
}

/// A GET request; `Connection: close` unless `keep`.
fn request(path: &str, credentials: Option<&str>, keep: bool) -> String {
    let auth = credentials
        .map(|c| {
            let c = base64::engine::general_purpose::STANDARD.encode(c);
            format!("Authorization: Basic {c}\r\n")
        })
        .unwrap_or_default();
    let connection = if keep { "keep-alive" } else { "close" };
    format!("GET {path} HTTP/1.1\r\nHost: x\r\n{auth}Connection: {connection}\r\n\r\n")
}

/// Reads one response whose body has a Content-Length; its status line
/// and headers (lower case), and body.
fn response(stream: &mut impl Read) -> Result<(u16, String, String), String> {
    let mut head = Vec::new();
    let mut byte = [0];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            Ok(_) => return Err(format!("closed after {} bytes", head.len())),
            Err(e) => return Err(e.to_string()),
        }
    }
    let head = String::from_utf8_lossy(&head).to_lowercase();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status: {head:?}"))?;
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; length];
    stream.read_exact(&mut body).map_err(|e| e.to_string())?;
    Ok((status, head, String::from_utf8_lossy(&body).into_owned()))
}

/// GET over plain HTTP on a new connection: status and body.
fn get_as(port: u16, path: &str, credentials: &str) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(request(path, Some(credentials), false).as_bytes())
        .unwrap();
    let (status, _, body) = response(&mut s).unwrap();
    (status, body)
}

/// GET over TLS on a new connection: status and body, or why none.
fn https_get(
    config: &Arc<rustls::ClientConfig>,
    port: u16,
    path: &str,
    credentials: Option<&str>,
) -> Result<(u16, String), String> {
    let mut tls = tls_connect(config, port)?;
    tls.write_all(request(path, credentials, false).as_bytes())
        .map_err(|e| e.to_string())?;
    response(&mut tls).map(|(status, _, body)| (status, body))
}

/// Whether SIGHUP is blocked or caught in a process's main thread (from
/// main's first instruction on; before that, the default ends it).
fn hangup_handled(pid: i32) -> bool {
    let Ok(status) = fs::read_to_string(format!("/proc/{pid}/status")) else {
        return false;
    };
    ["SigBlk:", "SigCgt:"].iter().any(|field| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
            .is_some_and(|mask| mask & 1 != 0)
    })
}

/// Resident anonymous memory (the heap, not the mapped binary) of `pid`, KiB.
fn rss_anon_kib(pid: u32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("RssAnon in /proc/<pid>/status")
}

/// Resident anonymous memory of the agent: the collector (`pid`), which
/// keeps the findings and makes each chunk, and its web server, which
/// holds the connections and the chunks being written.
fn agent_anon_kib(pid: u32) -> u64 {
    rss_anon_kib(pid) + rss_anon_kib(support::wait_web_server(pid))
}

/// A loopback connection whose receive buffer is `rcvbuf` bytes, set
/// before connecting: a reader the server can only feed as fast as it
/// reads (the kernel would otherwise take megabytes for it).
fn small_window(port: u16, rcvbuf: i32) -> TcpStream {
    // SAFETY: a new socket, options and address on the stack, and the fd
    // handed to TcpStream, which owns it from then on.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let stream = TcpStream::from_raw_fd(fd);
        let size = rcvbuf;
        let set = libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&raw const size).cast(),
            size_of::<i32>() as u32,
        );
        assert_eq!(set, 0, "SO_RCVBUF: {}", std::io::Error::last_os_error());
        let addr = libc::sockaddr_in {
            sin_family: libc::AF_INET as u16,
            sin_port: port.to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(std::net::Ipv4Addr::LOCALHOST).to_be(),
            },
            sin_zero: [0; 8],
        };
        let connected = libc::connect(
            fd,
            (&raw const addr).cast(),
            size_of::<libc::sockaddr_in>() as u32,
        );
        assert_eq!(connected, 0, "connect: {}", std::io::Error::last_os_error());
        stream
    }
}

/// As many of the newest findings as one response gives: other tests on
/// the host may flag thousands of processes meanwhile.
const NEWEST: &str = "/findings?limit=10000";

/// `flag_many`: forks processes that each make the libevent mistake once.
fn flag_many() -> PathBuf {
    let src = repo().join("agent/tests/fixtures/flag_many.c");
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("flag_many");
    run_ok(
        Command::new("gcc").args(["-O1", "-o"]).arg(&out).arg(&src),
        "gcc (cargo xtask setup installs it)",
    );
    out
}

/// Runs `flagged` (a process that makes the libevent mistake) until
/// /findings has an entry `mine` says is its own; that entry. Once is not
/// enough: other tests on the host may fill the ring buffer, and a record
/// that finds it full is lost (counted, not delivered).
fn until_seen(
    agent: &Agent,
    what: &str,
    mut flagged: impl FnMut() -> u32,
    mine: impl Fn(&Value, &[u32]) -> bool,
) -> Value {
    let mut pids = Vec::new();
    eventually(WAIT, what, || {
        pids.push(flagged());
        let (status, body) = agent.get(NEWEST);
        let found: Vec<Value> = serde_json::from_str(&body).ok()?;
        assert_eq!(status, 200);
        found.into_iter().find(|f| mine(f, &pids))
    })
}

/// Waits until the agent has handled every record that reached it: a
/// process flagged afterwards is in /findings (one ring buffer, in order).
fn settle(agent: &Agent) {
    let masked = || {
        let (pid, out) = scenario(&["masked"]);
        assert!(out.status.success());
        pid
    };
    until_seen(agent, "a process flagged last", masked, |f, pids| {
        pids.iter().any(|&pid| f["pid"] == pid)
    });
}

/// Flags `n` processes (two findings each) and waits until the agent has
/// handled them. Returns the entries in /findings.
fn flag(agent: &Agent, n: u32) -> usize {
    let port = support::closed_port().to_string();
    run_ok(
        Command::new(flag_many()).args([port.as_str(), &n.to_string()]),
        "flag_many",
    );
    settle(agent);
    let metrics = agent.metrics();
    [
        "so_error_masked",
        "io_after_failed_connect",
        "so_error_reread",
    ]
    .iter()
    .map(|kind| {
        value(
            &metrics,
            &format!("sockerr_flagged_processes{{kind=\"{kind}\"}}"),
        ) as usize
    })
    .sum()
}

/// A response read a little at a time, its body de-chunked once it is all in.
struct SlowReader {
    stream: TcpStream,
    raw: Vec<u8>,
    done: bool,
}

impl SlowReader {
    /// Asks for `path` with a receive buffer of 32 KiB.
    fn open(port: u16, path: &str) -> Self {
        let mut stream = small_window(port, 32 << 10);
        stream
            .write_all(request(path, None, false).as_bytes())
            .unwrap();
        stream.set_nonblocking(true).unwrap();
        Self {
            stream,
            raw: Vec::new(),
            done: false,
        }
    }

    /// Reads at most `most` bytes of what has arrived.
    fn read(&mut self, most: usize) {
        if self.done {
            return;
        }
        let mut buf = vec![0; most];
        match self.stream.read(&mut buf) {
            Ok(0) => self.done = true,
            Ok(n) => self.raw.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(e) => panic!("reading /findings: {e}"),
        }
    }

    /// The status and the de-chunked body of the whole response.
    fn body(&self) -> (u16, Vec<u8>) {
        let at = self
            .raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("response headers");
        let head = String::from_utf8_lossy(&self.raw[..at]).to_lowercase();
        assert!(head.contains("transfer-encoding: chunked"), "{head}");
        let status = head.split(' ').nth(1).unwrap().parse().unwrap();
        let (mut rest, mut body) = (&self.raw[at + 4..], Vec::new());
        loop {
            let line = rest
                .windows(2)
                .position(|w| w == b"\r\n")
                .expect("chunk size");
            let size = usize::from_str_radix(std::str::from_utf8(&rest[..line]).unwrap(), 16)
                .expect("a hex chunk size");
            if size == 0 {
                return (status, body);
            }
            body.extend_from_slice(&rest[line + 2..line + 2 + size]);
            rest = &rest[line + 2 + size + 2..];
        }
    }

    /// The whole body as /findings entries.
    fn entries(&self) -> Vec<Value> {
        let (status, body) = self.body();
        assert_eq!(status, 200);
        serde_json::from_slice(&body).expect("a JSON array")
    }
}

/// 10,000 flagged processes, `/findings?limit=10000` read slowly: by 30
/// clients at once (memory stays within a bound), by one while
/// connections past the cap arrive (served to the end, past the idle
/// timeout), and by one that stops reading (closed by the write timeout).
#[test]
fn slow_readers_of_the_largest_findings() {
    if !require_root() {
        return;
    }
    let _serial = serial();
    // Room for processes other tests flag meanwhile: an entry evicted
    // before its turn would be left out of a response.
    let agent = Agent::with(&[
        "--max-processes",
        "30000",
        "--web.idle-timeout",
        "2s",
        "--web.write-timeout",
        "10s",
        "--web.max-connections",
        "40",
    ]);
    let pid = agent.child.id();
    let entries = flag(&agent, 10_000);
    assert!(entries >= 2000, "{entries} entries in /findings");
    let expected = entries.min(10_000);
    let path = "/findings?limit=10000";
    let port = agent.port();

    // 30 at once, each reading at most 8 KiB every 10 ms (800 KiB/s: the
    // kernel takes up to 4 MiB of a response for a slow reader, the rest
    // waits in the agent).
    let before = agent_anon_kib(pid);
    let mut readers: Vec<SlowReader> = (0..30).map(|_| SlowReader::open(port, path)).collect();
    let (mut peak, mut all_reading) = (before, false);
    let started = Instant::now();
    while readers.iter().any(|r| !r.done) {
        assert!(
            started.elapsed() < WAIT * 3,
            "30 slow readers still reading"
        );
        readers.iter_mut().for_each(|r| r.read(8 << 10));
        all_reading |= readers.iter().all(|r| !r.raw.is_empty() && !r.done);
        peak = peak.max(agent_anon_kib(pid));
        thread::sleep(Duration::from_millis(10));
    }
    let took = started.elapsed();
    let sizes: Vec<usize> = readers.iter().map(|r| r.raw.len()).collect();
    assert!(
        all_reading,
        "the 30 responses were never written at once: {sizes:?}"
    );
    for reader in &readers {
        let found = reader.entries().len();
        assert!(
            (expected..=10_000).contains(&found),
            "{found} of {expected} entries"
        );
    }
    let bytes = readers[0].body().1.len();
    drop(readers);
    let (base, grew) = (before >> 10, (peak - before) >> 10);
    eprintln!(
        "30 slow readers of {path} ({expected} entries, {} KiB each) for {took:.1?}: anonymous \
         memory {base} MiB before, +{grew} MiB at most",
        bytes >> 10
    );
    assert!(
        (peak - before) << 10 <= FINDINGS_BOUND,
        "anonymous memory {base} MiB, +{grew} MiB with 30 slow readers"
    );

    // One slow reader, while connections past the cap (40) come: it is
    // written to, so neither idle nor closed to make room. It reads at
    // most 16 KiB every 20 ms (800 KiB/s): the body takes several idle
    // timeouts (2 s).
    let dropped = |reason: &str| {
        agent.metric(&format!(
            "sockerr_http_connections_dropped_total{{reason=\"{reason}\"}}"
        ))
    };
    let made_room = dropped("max_connections");
    let mut reader = SlowReader::open(port, path);
    let started = Instant::now();
    let mut flood = Vec::new();
    while !reader.done {
        assert!(started.elapsed() < WAIT, "the slow reader is still reading");
        reader.read(16 << 10);
        if flood.is_empty() && reader.raw.len() > 512 << 10 {
            flood = (0..60)
                .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
                .collect();
        }
        thread::sleep(Duration::from_millis(20));
    }
    assert!(!flood.is_empty(), "the body outgrew its window");
    let found = reader.entries().len();
    assert!(
        (expected..=10_000).contains(&found),
        "{found} of {expected} entries"
    );
    eventually(WAIT, "room made among the silent connections", || {
        (dropped("max_connections") >= made_room + 20.0).then_some(())
    });
    drop(flood);

    // A client that stops reading: closed after the write timeout.
    let write_timeouts = dropped("write_timeout");
    let mut stalled = SlowReader::open(port, path);
    eventually(WAIT, "the response under way", || {
        stalled.read(16 << 10);
        (!stalled.raw.is_empty()).then_some(())
    });
    eventually(
        WAIT,
        "the stalled reader closed by the write timeout",
        || (dropped("write_timeout") == write_timeouts + 1.0).then_some(()),
    );
    assert!(rss_anon_kib(pid) > 0, "the agent runs");
}

/// The twin of the slow readers: bounded requests are answered as they
/// were, and a cache-buster is no error.
#[test]
fn findings_ignore_unknown_parameters_and_bound_limit() {
    if !require_root() {
        return;
    }
    let _serial = serial();
    let agent = Agent::start();
    settle(&agent);
    for path in [
        "/findings?_=1",
        "/findings?limit=10000&_=1700000000000&x",
        "/findings",
    ] {
        let (status, body) = agent.get(path);
        assert_eq!(status, 200, "{path}: {body}");
        let found: Vec<Value> = serde_json::from_str(&body).unwrap();
        assert!(!found.is_empty(), "{path}");
    }
    let (status, body) = agent.get("/findings?limit=10001");
    assert_eq!((status, body.as_str()), (400, "limit: at most 10000\n"));
    assert_eq!(agent.get("/findings?kind=bogus&_=1").0, 400);
}

/// The live file, rewritten in place (truncated, then written in two
/// parts) 1,000 times, the agent asked at each step, and by a scrape loop
/// beside: never plain HTTP, never without a password.
#[test]
fn a_config_rewritten_in_place_never_serves_plain_http_or_anyone() {
    if !require_root() {
        return;
    }
    let _serial = serial();
    let dir = scratch("rewrites");
    let live = dir.join("web.yml");
    let tls = format!(
        "tls_server_config:\n  cert_file: {0}/one.crt\n  key_file: {0}/one.key\n",
        pki().display()
    );
    let hash = bcrypt_hash("secret");
    let good = format!("{tls}basic_auth_users:\n  prometheus: '{hash}'\n");
    fs::write(&live, &good).unwrap();
    let mut agent = Started::spawn(&["--web.config.file", live.to_str().unwrap()]);
    let port = agent.running().port();
    let client = tls_client();
    let scrape = |credentials| https_get(&client, port, "/metrics", credentials);
    assert_eq!(scrape(Some("prometheus:secret")).map(|r| r.0), Ok(200));

    /// Each asking: plain HTTP (must get no HTTP answer), TLS without the
    /// password (must get 401), TLS with it (200).
    #[derive(Default)]
    struct Tally {
        asked: AtomicU64,
        plain: AtomicU64,
        unauthenticated: AtomicU64,
        refused: AtomicU64,
        authenticated: AtomicU64,
    }
    let tally = Arc::new(Tally::default());
    let ask = {
        let (client, tally) = (client.clone(), tally.clone());
        move || {
            let count = |n: &AtomicU64| n.fetch_add(1, Ordering::Relaxed);
            count(&tally.asked);
            if http_get(port, "/metrics").0 != 0 {
                count(&tally.plain);
            }
            match https_get(&client, port, "/metrics", None) {
                Ok((200, _)) => count(&tally.unauthenticated),
                Ok((401, _)) => count(&tally.refused),
                _ => 0,
            };
            if https_get(&client, port, "/metrics", Some("prometheus:secret"))
                .is_ok_and(|(s, _)| s == 200)
            {
                count(&tally.authenticated);
            }
        }
    };
    let rewriting = Arc::new(AtomicBool::new(true));
    let beside = {
        let (rewriting, ask) = (rewriting.clone(), ask.clone());
        thread::spawn(move || {
            while rewriting.load(Ordering::Relaxed) {
                ask();
            }
        })
    };
    let (first, second) = good.split_at(good.len() / 2);
    let rewrites = 1000;
    for _ in 0..rewrites {
        let mut file = fs::File::create(&live).unwrap();
        ask();
        file.write_all(first.as_bytes()).unwrap();
        ask();
        file.write_all(second.as_bytes()).unwrap();
        drop(file);
        ask();
    }
    rewriting.store(false, Ordering::Relaxed);
    beside.join().unwrap();
    let (_, metrics) = scrape(Some("prometheus:secret")).unwrap();
    let reloads = |result: &str| {
        value(
            &metrics,
            &format!("sockerr_web_config_reloads_total{{result=\"{result}\"}}"),
        )
    };
    let get = |n: &AtomicU64| n.load(Ordering::Relaxed);
    eprintln!(
        "{rewrites} rewrites, {} askings: {} plain-HTTP answers, {} 200s and {} 401s without \
         the password, {} 200s with it; reloads refused {}, invalid {}, unchanged {}, applied {}",
        get(&tally.asked),
        get(&tally.plain),
        get(&tally.unauthenticated),
        get(&tally.refused),
        get(&tally.authenticated),
        reloads("refused"),
        reloads("invalid"),
        reloads("unchanged"),
        reloads("applied"),
    );
    assert_eq!(get(&tally.plain), 0, "plain HTTP served");
    assert_eq!(
        get(&tally.unauthenticated),
        0,
        "served without the password"
    );
    assert_eq!(
        get(&tally.refused),
        get(&tally.asked),
        "401 without the password"
    );
    assert_eq!(
        get(&tally.authenticated),
        get(&tally.asked),
        "scrapes answered"
    );
    // Each truncated file was read, and refused.
    assert!(reloads("refused") >= rewrites as f64);
    assert_eq!(reloads("applied"), 0.0);
    assert_eq!(
        value(&metrics, "sockerr_web_config_last_reload_successful"),
        1.0
    );
    let refusal = agent.lines("refusing to reload").remove(0);
    assert!(
        refusal.contains("level=error") && refusal.contains("plain HTTP"),
        "{refusal}"
    );

    // Swapped for a FIFO, then for /dev/zero: refused at once, the server
    // answering throughout.
    let fifo = dir.join("fifo");
    for swap in ["fifo", "/dev/zero"] {
        let _ = fs::remove_file(&fifo);
        if swap == "fifo" {
            nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        } else {
            symlink(swap, &fifo).unwrap();
        }
        fs::rename(&fifo, &live).unwrap();
        let (status, metrics) = scrape(Some("prometheus:secret")).unwrap();
        assert_eq!(status, 200, "{swap}");
        assert_eq!(
            value(&metrics, "sockerr_web_config_last_reload_successful"),
            0.0
        );
    }
    let invalid = agent.lines("not a regular file");
    assert!(invalid.len() >= 2, "{:#?}", agent.log());

    // The twin: a password changed on purpose, TLS as it was, is applied.
    fs::remove_file(&live).unwrap();
    fs::write(&live, good.replace(&hash, &bcrypt_hash("other"))).unwrap();
    eventually(WAIT, "the new password", || {
        (scrape(Some("prometheus:other")).ok()?.0 == 200).then_some(())
    });
    assert_eq!(scrape(Some("prometheus:secret")).unwrap().0, 401);
    agent.alive();
}

/// SIGHUP at moments of start-up (10, 50, 100 and 200 ms after the agent
/// was started, the time its loader takes first at the least), then one
/// every 2 ms all through it: the agent runs, and handles the next.
#[test]
fn sighup_at_any_moment_of_startup_is_harmless() {
    if !require_root() {
        return;
    }
    let _serial = serial();
    let file = basic_auth("sighup");
    let args = [
        "--web.config.file",
        file.to_str().unwrap(),
        "--call-sites=off",
    ];
    // Polled every millisecond (`eventually` takes 100 ms between looks).
    let handled = |agent: &mut Started| {
        let deadline = Instant::now() + WAIT;
        while !hangup_handled(agent.pid()) {
            agent.alive();
            assert!(Instant::now() < deadline, "SIGHUP never blocked");
            thread::sleep(Duration::from_millis(1));
        }
    };
    for delay in [10, 50, 100, 200].map(Duration::from_millis) {
        let spawned = Instant::now();
        let mut agent = Started::spawn(&args);
        // Before main's first instruction (the loader's time) the default
        // action would end it: no program can help that.
        handled(&mut agent);
        let loader = spawned.elapsed();
        thread::sleep(delay.saturating_sub(loader));
        signal(&agent.child, Signal::SIGHUP);
        let sent = spawned.elapsed();
        let address = agent.running();
        eprintln!(
            "SIGHUP {sent:?} after start (main ran after {loader:?}): runs, serves {address}"
        );
        // The reload handler has it from now on, and it reads the file.
        signal(&agent.child, Signal::SIGHUP);
        eventually(WAIT, "the SIGHUP after start-up handled", || {
            let metrics = get_as(address.port(), "/metrics", "a:a").1;
            (value(
                &metrics,
                r#"sockerr_web_config_reloads_total{result="unchanged"}"#,
            ) >= 1.0)
                .then_some(())
        });
        agent.alive();
    }
    let mut agent = Started::spawn(&args);
    handled(&mut agent);
    let mut sent = 0;
    while !agent.log().iter().any(|l| l.contains("sockerr running")) {
        agent.alive();
        signal(&agent.child, Signal::SIGHUP);
        sent += 1;
        thread::sleep(Duration::from_millis(2));
    }
    agent.running();
    eprintln!("{sent} SIGHUPs through start-up: runs");
    assert!(sent > 10, "start-up took {sent} SIGHUPs only");
}

/// One request on an open connection; its status, or why none.
fn ask(stream: &mut TcpStream, path: &str, credentials: Option<&str>) -> Result<u16, String> {
    stream
        .write_all(request(path, credentials, true).as_bytes())
        .map_err(|e| e.to_string())?;
    response(stream).map(|(status, _, _)| status)
}

/// A reload that changes nothing closes nothing: not a connection that
/// has not sent its request yet (a scrape that just connected), not a
/// kept-alive one; nor do 100 SIGHUPs a second while scraping.
#[test]
fn sighup_with_the_file_unchanged_drops_no_connection() {
    if !require_root() {
        return;
    }
    let _serial = serial();
    let file = basic_auth("unchanged");
    let agent = Agent::with(&["--web.config.file", file.to_str().unwrap()]);
    let port = agent.port();
    let unchanged = || {
        let metrics = get_as(port, "/metrics", "a:a").1;
        value(
            &metrics,
            r#"sockerr_web_config_reloads_total{result="unchanged"}"#,
        )
    };
    let connect = || {
        let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s
    };
    let mut pending: Vec<TcpStream> = (0..20).map(|_| connect()).collect();
    let mut kept: Vec<TcpStream> = (0..20)
        .map(|_| {
            let mut s = connect();
            assert_eq!(ask(&mut s, "/metrics", Some("a:a")), Ok(200));
            s
        })
        .collect();
    let before = unchanged();
    signal(&agent.child, Signal::SIGHUP);
    eventually(WAIT, "the SIGHUP handled", || {
        (unchanged() > before).then_some(())
    });
    for (i, s) in pending.iter_mut().chain(&mut kept).enumerate() {
        assert_eq!(ask(s, "/metrics", Some("a:a")), Ok(200), "connection {i}");
    }

    // 100 SIGHUPs a second while 20 scrapes connect, wait a moment, ask.
    let hups = Arc::new(AtomicBool::new(true));
    let sender = {
        let (hups, pid) = (hups.clone(), agent.child.id() as i32);
        thread::spawn(move || {
            let mut sent = 0;
            while hups.load(Ordering::Relaxed) {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGHUP);
                sent += 1;
                thread::sleep(Duration::from_millis(10));
            }
            sent
        })
    };
    let failed: Vec<String> = (0..20)
        .filter_map(|_| {
            let mut s = connect();
            thread::sleep(Duration::from_millis(50));
            ask(&mut s, "/metrics", Some("a:a")).err()
        })
        .collect();
    hups.store(false, Ordering::Relaxed);
    let sent = sender.join().unwrap();
    assert!(unchanged() > before + 1.0);
    eprintln!("{sent} SIGHUPs during 20 scrapes: {} failed", failed.len());
    assert!(failed.is_empty(), "{failed:?}");
}

/// New TLS terms (a rotated certificate) close a kept-alive connection,
/// and a connection that has not sent its request yet answers it first.
#[test]
fn new_tls_terms_answer_the_request_about_to_come() {
    if !require_root() {
        return;
    }
    let _serial = serial();
    let dir = scratch("rotation");
    for ext in ["crt", "key"] {
        fs::copy(
            pki().join(format!("one.{ext}")),
            dir.join(format!("tls.{ext}")),
        )
        .unwrap();
    }
    let file = dir.join("web.yml");
    fs::write(
        &file,
        format!(
            "tls_server_config:\n  cert_file: tls.crt\n  key_file: tls.key\nbasic_auth_users:\n  a: '{}'\n",
            bcrypt_hash("a")
        ),
    )
    .unwrap();
    let mut agent = Started::spawn(&["--web.config.file", file.to_str().unwrap()]);
    let port = agent.running().port();
    let client = tls_client();
    let mut idle = tls_connect(&client, port).unwrap();
    idle.write_all(request("/healthz", None, true).as_bytes())
        .unwrap();
    assert_eq!(response(&mut idle).unwrap().0, 200);
    let mut about_to_ask = tls_connect(&client, port).unwrap();
    let applied = || {
        let metrics = https_get(&client, port, "/metrics", Some("a:a")).unwrap().1;
        value(
            &metrics,
            r#"sockerr_web_config_reloads_total{result="applied"}"#,
        )
    };
    assert_eq!(applied(), 0.0);
    for ext in ["crt", "key"] {
        fs::copy(
            pki().join(format!("two.{ext}")),
            dir.join(format!("tls.{ext}")),
        )
        .unwrap();
    }
    signal(&agent.child, Signal::SIGHUP);
    eventually(WAIT, "the new certificate applied", || {
        (applied() == 1.0).then_some(())
    });
    // The kept-alive connection is closed (end of stream, or a reset).
    let mut byte = [0];
    assert!(
        matches!(idle.read(&mut byte), Ok(0) | Err(_)),
        "the kept-alive connection stayed open under the old terms"
    );
    about_to_ask
        .write_all(request("/healthz", None, true).as_bytes())
        .unwrap();
    let (status, head, body) = response(&mut about_to_ask).unwrap();
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    assert!(head.contains("connection: close"), "{head}");
}

/// `sockerr trace` and `sockerr check` whose reader is gone (`| head -1`):
/// no panic. trace stops (its probes detached), check gives its verdict.
#[test]
fn a_closed_standard_output_ends_trace_and_check_cleanly() {
    if !require_root() {
        return;
    }
    let _serial = serial();
    // A pipe whose reading end is closed before anything is written.
    let closed_pipe = || {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        writer
    };
    let check = Command::new(agent_bin())
        .arg("check")
        .stdout(closed_pipe())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&check.stderr);
    assert!(check.status.success(), "{:?}: {stderr}", check.status);
    assert!(!stderr.contains("panicked"), "{stderr}");

    let mut trace = Command::new(agent_bin())
        .args(["trace", "--call-sites=off"])
        .stdout(closed_pipe())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(trace.stderr.take().unwrap());
    let mut line = String::new();
    while !line.contains("tracing; Ctrl-C to stop") {
        line.clear();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "trace ended before tracing"
        );
    }
    let log = thread::spawn(move || {
        let mut rest = String::new();
        let _ = stderr.read_to_string(&mut rest);
        rest
    });
    // A finding for it to print; more until it has tried.
    let status = eventually(WAIT, "trace to end", || {
        let (_, out) = scenario(&["masked"]);
        assert!(out.status.success());
        trace.try_wait().unwrap()
    });
    let rest = log.join().unwrap();
    assert!(status.success(), "{status:?}: {rest}");
    assert!(!rest.contains("panicked"), "{rest}");
}

/// A telemetry path the router would read as a pattern is refused before
/// anything is attached; a literal one serves metrics there only.
#[test]
fn the_telemetry_path_is_a_literal_path() {
    for path in ["/{", "/{x}", "/{*rest}", "/:x", "/a b"] {
        let out = Command::new(agent_bin())
            .args([
                "run",
                "--web.listen-address",
                "127.0.0.1:0",
                "--web.telemetry-path",
                path,
            ])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{path}: {stderr}");
        assert!(
            stderr.contains("--web.telemetry-path") && stderr.contains("literal path"),
            "{path}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    if !require_root() {
        return;
    }
    let _serial = serial();
    let agent = Agent::with(&["--web.telemetry-path", "/sockerr/metrics"]);
    let (status, body) = agent.get("/sockerr/metrics");
    assert_eq!(status, 200);
    assert!(body.contains("sockerr_build_info"));
    for elsewhere in ["/metrics", "/x", "/sockerr/metricsx"] {
        assert_eq!(agent.get(elsewhere).0, 404, "{elsewhere}");
    }
}

/// A cgroup v2 directory, removed (after its processes ended) when dropped.
struct Cgroup(PathBuf);

impl Cgroup {
    fn new(path: &str) -> Self {
        let dir = sockerr_testkit::cgroup2_root()
            .unwrap()
            .join(path.trim_start_matches('/'));
        fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    /// Runs the masked scenario in it (the shell moves itself in, then
    /// becomes the scenario); its pid.
    fn masked(&self) -> u32 {
        let (pid, out) = support::run_program(Command::new("sh").arg("-c").arg(format!(
            "echo $$ > {} && exec {} masked",
            self.0.join("cgroup.procs").display(),
            scenario_bin().display()
        )));
        assert!(out.status.success(), "{out:?}");
        pid
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        // Leaf first; the parents this test made, up to the first shared one.
        let mut dir = self.0.clone();
        while fs::remove_dir(&dir).is_ok() {
            if !dir.pop() {
                break;
            }
        }
    }
}

/// A process in a cgroup named like another pod's container is in no
/// container; in that pod's cgroup, the same id names the container.
#[test]
fn only_the_runtimes_cgroups_name_containers() {
    if !require_root() {
        return;
    }
    let _serial = serial();
    let agent = Agent::with(&["--max-processes", "30000"]);
    let id = format!(
        "{:064x}",
        std::process::id() as u128 * 0x9e37_79b9_7f4a_7c15
    );
    let uid = format!("8d1a3c9e-2b4f-4e6a-9c7d-{:012x}", std::process::id());
    let uid_ = uid.replace('-', "_");
    let fake = format!(
        "/sockerr-hostile-{}.slice/evil-{id}.scope",
        std::process::id()
    );
    let real = format!(
        "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice/\
         cri-containerd-{id}.scope"
    );
    for (path, container_id, pod_uid) in [
        (fake.as_str(), Value::Null, Value::Null),
        (
            real.as_str(),
            Value::from(id.clone()),
            Value::from(uid.clone()),
        ),
    ] {
        let cgroup = Cgroup::new(path);
        let found = until_seen(
            &agent,
            path,
            || cgroup.masked(),
            |f, pids| pids.iter().any(|&pid| f["pid"] == pid),
        );
        assert_eq!(found["cgroup"], path, "{found:#}");
        assert_eq!(found["container_id"], container_id, "{path}: {found:#}");
        assert_eq!(found["pod_uid"], pod_uid, "{path}: {found:#}");
        drop(cgroup);
    }
}

/// The unit restarts the agent after any exit systemctl did not ask for:
/// `on-failure` takes a death by SIGHUP (what `systemctl reload` sends)
/// for a clean exit.
#[test]
fn the_systemd_unit_restarts_on_any_exit() {
    let unit = fs::read_to_string(repo().join("deploy/systemd/sockerr.service")).unwrap();
    let directives: Vec<&str> = unit
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .collect();
    assert!(directives.contains(&"Restart=always"), "{unit}");
    assert!(
        directives.contains(&"ExecReload=/bin/kill -HUP $MAINPID"),
        "{unit}"
    );
    assert!(
        !directives
            .iter()
            .any(|l| l.starts_with("Restart=") && *l != "Restart=always")
    );
}
