//! Serving remote scrapers: TLS, basic auth and client certificates checked
//! with curl and a real Prometheus, reloading the web configuration, and
//! the timeouts and connection cap under a slowloris attack (root). Bad
//! configurations fail before anything needs root.

mod support;

use std::{
    fs,
    io::{BufRead, BufReader, ErrorKind, Read, Write},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

use support::{
    Prometheus, agent_bin, eventually, http_get, raw_response, require_root, run_ok, sample, stop,
};

/// A scratch directory of this test binary.
fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("web-{}", std::process::id()))
        .join(name);
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

/// A test CA, a server certificate for 127.0.0.1, ::1 and localhost, a
/// client certificate from the CA and one from nobody (self-signed), made
/// with the openssl command once per test binary; never kept.
fn pki() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = scratch("pki");
        let openssl = |args: &[&str]| {
            run_ok(
                Command::new("openssl").args(args).current_dir(&dir),
                &format!("openssl {args:?} (cargo xtask setup installs it)"),
            );
        };
        let key = |name: &str| {
            openssl(&[
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-out",
                &format!("{name}.key"),
            ])
        };
        let self_signed = |name: &str| {
            key(name);
            let subject = format!("/CN=sockerr test {name}");
            openssl(&[
                "req",
                "-x509",
                "-new",
                "-key",
                &format!("{name}.key"),
                "-subj",
                &subject,
                "-days",
                "2",
                "-out",
                &format!("{name}.crt"),
            ]);
        };
        self_signed("ca");
        self_signed("stranger");
        for (name, extensions) in [
            (
                "server",
                "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1\nextendedKeyUsage=serverAuth\n",
            ),
            ("client", "extendedKeyUsage=clientAuth\n"),
        ] {
            key(name);
            fs::write(dir.join(format!("{name}.ext")), extensions).unwrap();
            openssl(&[
                "req",
                "-new",
                "-key",
                &format!("{name}.key"),
                "-subj",
                &format!("/CN={name}"),
                "-out",
                &format!("{name}.csr"),
            ]);
            openssl(&[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                &format!("{name}.ext"),
                "-out",
                &format!("{name}.crt"),
            ]);
        }
        dir
    })
}

fn pki_file(name: &str) -> String {
    pki().join(name).to_str().unwrap().to_owned()
}

/// `sockerr hash-password` of `password`.
fn bcrypt_hash(password: &str) -> String {
    let mut child = Command::new(agent_bin())
        .arg("hash-password")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{password}").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// `sockerr run` with its log collected; `address` is the one it reports.
struct Running {
    child: Child,
    address: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
}

impl Running {
    fn start(args: &[&str]) -> Self {
        let mut child = Command::new(agent_bin())
            .arg("run")
            .args(args)
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting sockerr run");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (running, started) = mpsc::channel();
        let stderr = BufReader::new(child.stderr.take().unwrap());
        let sink = log.clone();
        thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                eprintln!("sockerr: {line}");
                if line.contains("message=\"sockerr running\"") {
                    let _ = running.send(line.clone());
                }
                sink.lock().unwrap().push(line);
            }
        });
        let line = started
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("sockerr run did not start: {:?}", log.lock().unwrap()));
        let address = line
            .split_whitespace()
            .find_map(|field| field.strip_prefix("address="))
            .expect("the address in the log")
            .parse()
            .expect("a socket address");
        Self {
            child,
            address,
            log,
        }
    }

    fn port(&self) -> u16 {
        self.address.port()
    }

    /// Descriptors of the web server, which holds the connections.
    fn fds(&self) -> usize {
        let server = support::wait_web_server(self.child.id());
        fs::read_dir(format!("/proc/{server}/fd")).unwrap().count()
    }

    /// Waits until a log line contains `text`.
    fn wait_log(&self, text: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(line) = self.log.lock().unwrap().iter().find(|l| l.contains(text)) {
                return line.clone();
            }
            assert!(Instant::now() < deadline, "no log line with {text:?}");
            thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

/// Runs curl; returns whether it succeeded, the HTTP status (0 if none)
/// and its output (headers included).
fn curl(args: &[&str]) -> (bool, u16, String) {
    let out = Command::new("curl")
        .args(["-sS", "-i", "--max-time", "10", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("running curl (cargo xtask setup installs it)");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let status = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or(0);
    (out.status.success(), status, text)
}

#[test]
fn bad_web_configs_fail_at_start_naming_the_key() {
    let dir = scratch("bad");
    let hash = bcrypt_hash("secret");
    let tls = |extra: &str| {
        format!(
            "tls_server_config:\n  cert_file: {}\n  key_file: {}\n{extra}",
            pki_file("server.crt"),
            pki_file("server.key")
        )
    };
    for (listen, config, expected) in [
        (
            "127.0.0.1:0",
            "basic_auth_users:\n  alice: hunter2\n".to_owned(),
            "basic_auth_users.alice: not a bcrypt hash",
        ),
        (
            "127.0.0.1:0",
            "tls_server_config:\n  cert_file: nowhere.crt\n  key_file: k\n".into(),
            "tls_server_config.cert_file: reading",
        ),
        (
            "127.0.0.1:0",
            format!(
                "tls_server_config:\n  cert_file: {}\n  key_file: {}\n",
                pki_file("server.crt"),
                pki_file("stranger.key")
            ),
            "tls_server_config.key_file",
        ),
        (
            "127.0.0.1:0",
            tls(&format!(
                "  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: {}\n",
                pki_file("ca.key")
            )),
            "tls_server_config.client_ca_file",
        ),
        (
            "127.0.0.1:0",
            tls("  ciphers: [x]\n"),
            "unknown field `ciphers`",
        ),
        // Encrypted but open to anyone: not enough to leave loopback.
        ("0.0.0.0:0", tls(""), "refusing to serve on 0.0.0.0:0"),
        (
            "0.0.0.0:0",
            format!("basic_auth_users:\n  a: '{hash}'\n"),
            "refusing to serve on 0.0.0.0:0",
        ),
    ] {
        let file = dir.join("web.yml");
        fs::write(&file, &config).unwrap();
        let start = Instant::now();
        let out = Command::new(agent_bin())
            .args(["run", "--web.listen-address", listen, "--web.config.file"])
            .arg(&file)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{config}");
        assert!(err.contains(expected), "{config}\n{err}");
        if listen == "127.0.0.1:0" {
            assert!(
                err.contains(&format!("web config {}", file.display())),
                "{err}"
            );
        }
        assert!(
            !err.contains("attach") && start.elapsed() < Duration::from_secs(2),
            "{err}"
        );
    }
}

#[test]
fn logs_the_address_it_bound() {
    if !require_root() {
        return;
    }
    let agent = Running::start(&["--web.listen-address", "[::1]:0"]);
    assert_eq!(
        agent.address.ip(),
        "::1".parse::<std::net::IpAddr>().unwrap()
    );
    assert_ne!(
        agent.port(),
        0,
        "logged the port asked for, not the one bound"
    );
    let mut s = TcpStream::connect(agent.address).unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    assert_eq!(raw_response(&mut s), (200, "ok\n".into()));
}

/// The latest `up` of a Prometheus job: "1", "0", or None before its first scrape.
fn up(prom: &Prometheus, job: &str) -> Option<String> {
    prom.query(&format!("up{{job=\"{job}\"}}"))
        .first()
        .and_then(|s| s["value"][1].as_str().map(str::to_owned))
}

/// How long to poll for a change: Prometheus scrapes every second, with a
/// one-second timeout, on a machine that may be busy.
const WAIT: Duration = Duration::from_secs(60);

#[test]
fn tls_basic_auth_and_client_certificates_for_curl_and_prometheus() {
    if !require_root() {
        return;
    }
    let hash = bcrypt_hash("secret");
    // Relative paths: taken from the file's directory.
    let config = pki().join("web.yml");
    let basic = format!(
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n\
         basic_auth_users:\n  prometheus: '{hash}'\n\
         http_server_config:\n  headers:\n    X-Content-Type-Options: nosniff\n"
    );
    fs::write(&config, &basic).unwrap();
    // TLS and authentication: a non-loopback address needs no --web.allow-remote.
    let agent = Running::start(&[
        "--web.listen-address",
        "0.0.0.0:0",
        "--web.config.file",
        config.to_str().unwrap(),
        "--web.header-timeout",
        "2s",
    ]);
    let url = |path: &str| format!("https://127.0.0.1:{}{path}", agent.port());
    let ca = pki_file("ca.crt");
    let (client_crt, client_key) = (pki_file("client.crt"), pki_file("client.key"));
    let (stranger_crt, stranger_key) = (pki_file("stranger.crt"), pki_file("stranger.key"));
    let tls = ["--cacert", ca.as_str()];

    let (ok, status, text) =
        curl(&[&tls[..], &["-u", "prometheus:secret", &url("/metrics")]].concat());
    assert!(ok && status == 200, "{text}");
    assert!(text.contains("sockerr_build_info{"), "{text}");
    assert!(text.contains("x-content-type-options: nosniff"), "{text}");
    for credentials in [
        &[][..],
        &["-u", "prometheus:wrong"],
        &["-u", "nobody:secret"],
    ] {
        for path in ["/metrics", "/findings", "/"] {
            let (_, status, text) = curl(&[&tls[..], credentials, &[&url(path)]].concat());
            assert_eq!(status, 401, "{credentials:?} {path}: {text}");
            assert!(text.contains("www-authenticate: Basic"), "{text}");
            assert!(text.contains("x-content-type-options: nosniff"), "{text}");
        }
    }
    // The kubelet's probes carry no credentials.
    assert_eq!(curl(&[&tls[..], &[&url("/healthz")]].concat()).1, 200);
    // Plain HTTP gets no answer.
    let plain = format!("http://127.0.0.1:{}/metrics", agent.port());
    let (ok, status, text) = curl(&["-u", "prometheus:secret", &plain]);
    assert!(!ok && status != 200, "{text}");
    // A TLS handshake is bounded by the header timeout too.
    let start = Instant::now();
    let mut silent = TcpStream::connect(("127.0.0.1", agent.port())).unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    // Closed by the agent (end of stream or reset), not the read timing out.
    match silent.read(&mut [0; 1]) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("the silent TLS client was not closed: {other:?}"),
    }
    let waited = start.elapsed();
    assert!(
        waited > Duration::from_millis(1500) && waited < Duration::from_secs(4),
        "{waited:?}"
    );

    let target = format!("['127.0.0.1:{}']", agent.port());
    let job = |name: &str, tls: &str, password: &str| {
        format!(
            "  - job_name: {name}\n    scheme: https\n    tls_config:\n      ca_file: {ca}\n{tls}    \
             basic_auth:\n      username: prometheus\n      password: {password}\n    \
             static_configs:\n      - targets: {target}\n"
        )
    };
    let client_tls = format!("      cert_file: {client_crt}\n      key_file: {client_key}\n");
    let prom = Prometheus::start(
        &[
            job("good", "", "secret"),
            job("bad", "", "wrong"),
            job("mtls", &client_tls, "secret"),
        ]
        .concat(),
    );
    eventually(WAIT, "good and mtls up, bad down", || {
        (up(&prom, "good").as_deref() == Some("1")
            && up(&prom, "mtls").as_deref() == Some("1")
            && up(&prom, "bad").as_deref() == Some("0"))
        .then_some(())
    });
    assert!(!prom.query(r#"sockerr_build_info{job="good"}"#).is_empty());
    assert!(
        !prom
            .query(r#"sockerr_http_connections{job="good"}"#)
            .is_empty()
    );

    // Client certificates from the CA required from now on, without a restart.
    fs::write(
        &config,
        basic.replace(
            "  key_file: server.key\n",
            "  key_file: server.key\n  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\n",
        ),
    )
    .unwrap();
    let mtls = [&tls[..], &["--cert", &client_crt, "--key", &client_key]].concat();
    let (ok, status, text) =
        curl(&[&mtls[..], &["-u", "prometheus:secret", &url("/metrics")]].concat());
    assert!(ok && status == 200, "{text}");
    agent.wait_log("web config reloaded");
    // Still basic auth on top.
    assert_eq!(curl(&[&mtls[..], &[&url("/metrics")]].concat()).1, 401);
    for refused in [
        &tls[..],
        &[&tls[..], &["--cert", &stranger_crt, "--key", &stranger_key]].concat(),
    ] {
        let (ok, status, text) =
            curl(&[refused, &["-u", "prometheus:secret", &url("/metrics")]].concat());
        assert!(!ok && status == 0, "{refused:?}: {text}");
    }
    // Prometheus' kept-alive connections are closed by the reload: the job
    // without a client certificate goes down.
    eventually(WAIT, "good down, mtls up", || {
        (up(&prom, "good").as_deref() == Some("0") && up(&prom, "mtls").as_deref() == Some("1"))
            .then_some(())
    });

    // A broken file is reported, naming the key, and changes nothing.
    fs::write(&config, "basic_auth_users:\n  prometheus: plain\n").unwrap();
    assert_eq!(
        curl(&[&mtls[..], &["-u", "prometheus:secret", &url("/metrics")]].concat()).1,
        200
    );
    let error = agent.wait_log("keeping the previous web config");
    assert!(
        error.contains("basic_auth_users.prometheus: not a bcrypt hash"),
        "{error}"
    );
}

/// GET with basic auth on a plain connection; the status.
fn get_as(port: u16, user: &str, password: &str) -> u16 {
    curl(&[
        "-u",
        &format!("{user}:{password}"),
        &format!("http://127.0.0.1:{port}/metrics"),
    ])
    .1
}

#[test]
fn the_web_config_is_read_again_on_change_and_on_sighup() {
    if !require_root() {
        return;
    }
    let dir = scratch("reload");
    let file = dir.join("web.yml");
    let users = |password: &str| format!("basic_auth_users:\n  a: '{}'\n", bcrypt_hash(password));
    fs::write(&file, users("one")).unwrap();
    let agent = Running::start(&[
        "--web.listen-address",
        "127.0.0.1:0",
        "--web.config.file",
        file.to_str().unwrap(),
    ]);
    let port = agent.port();
    assert_eq!(get_as(port, "a", "one"), 200);
    assert_eq!(get_as(port, "a", "two"), 401);
    fs::write(&file, users("two")).unwrap();
    assert_eq!(get_as(port, "a", "two"), 200);
    assert_eq!(get_as(port, "a", "one"), 401, "the old password was cached");

    // Rewritten in place with the same size and modification time (as
    // `cp -p` may leave it): only SIGHUP can tell.
    let modified = fs::metadata(&file).unwrap().modified().unwrap();
    fs::write(&file, users("six")).unwrap();
    fs::File::options()
        .write(true)
        .open(&file)
        .unwrap()
        .set_modified(modified)
        .unwrap();
    assert_eq!(get_as(port, "a", "six"), 401);
    support::signal(&agent.child, support::Signal::SIGHUP);
    eventually(WAIT, "the SIGHUP reload", || {
        (get_as(port, "a", "six") == 200).then_some(())
    });
    assert_eq!(get_as(port, "a", "two"), 401);
}

/// A client that sends `first` and then, if that started a request without
/// finishing its headers, one more header line a second, never finishing.
struct Slow {
    stream: TcpStream,
    opened: Instant,
    trickles: bool,
    closed: Option<Duration>,
}

impl Slow {
    fn open(port: u16, first: &[u8]) -> Self {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream.write_all(first).unwrap();
        stream.set_nonblocking(true).unwrap();
        Self {
            stream,
            opened: Instant::now(),
            trickles: !first.is_empty() && !first.ends_with(b"\r\n\r\n"),
            closed: None,
        }
    }

    /// Notes when the server closed the connection.
    fn poll(&mut self) {
        if self.closed.is_some() {
            return;
        }
        let mut buf = [0; 4096];
        match self.stream.read(&mut buf) {
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Ok(n) if n > 0 => {}
            _ => self.closed = Some(self.opened.elapsed()),
        }
    }
}

/// Polls every client until all are closed or `limit` has passed.
fn watch_close(clients: &mut [Slow], limit: Duration) {
    let start = Instant::now();
    let mut last_trickle = Instant::now();
    while start.elapsed() < limit && clients.iter().any(|c| c.closed.is_none()) {
        if last_trickle.elapsed() >= Duration::from_secs(1) {
            last_trickle = Instant::now();
            for c in clients
                .iter_mut()
                .filter(|c| c.trickles && c.closed.is_none())
            {
                let _ = c.stream.write_all(b"X-Slow: 1\r\n");
            }
        }
        clients.iter_mut().for_each(Slow::poll);
        thread::sleep(Duration::from_millis(20));
    }
}

fn closing_times(clients: &[Slow]) -> (Duration, Duration) {
    let times: Vec<Duration> = clients
        .iter()
        .map(|c| c.closed.expect("every connection closed"))
        .collect();
    (*times.iter().min().unwrap(), *times.iter().max().unwrap())
}

#[test]
fn slowloris_is_cut_off_and_metrics_keep_answering() {
    if !require_root() {
        return;
    }
    let header = Duration::from_secs(3);
    let idle = Duration::from_secs(6);
    let agent = Running::start(&[
        "--web.listen-address",
        "127.0.0.1:0",
        "--web.header-timeout",
        "3s",
        "--web.idle-timeout",
        "6s",
        "--web.max-connections",
        "600",
        // Every connection comes from 127.0.0.1: the cap is the limit here.
        "--web.max-connections-per-client",
        "0",
        // No uprobes on the host's other processes: they hold descriptors.
        "--call-sites=off",
    ]);
    let port = agent.port();
    assert_eq!(http_get(port, "/metrics").0, 200);
    thread::sleep(Duration::from_millis(200));
    let baseline = agent.fds();

    // Scrapes every 100 ms while the attack lasts.
    let attacking = Arc::new(AtomicBool::new(true));
    let scraper = {
        let attacking = attacking.clone();
        thread::spawn(move || {
            let mut latencies = Vec::new();
            while attacking.load(Ordering::Relaxed) {
                let start = Instant::now();
                let (status, _) = http_get(port, "/metrics");
                latencies.push((status, start.elapsed()));
                thread::sleep(Duration::from_millis(100));
            }
            latencies
        })
    };
    // 300 clients trickling headers and 200 sending nothing at all.
    let mut clients: Vec<Slow> = (0..300)
        .map(|_| Slow::open(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n"))
        .chain((0..200).map(|_| Slow::open(port, b"")))
        .collect();
    thread::sleep(Duration::from_millis(500));
    let during = agent.fds();
    watch_close(&mut clients, header * 3);
    attacking.store(false, Ordering::Relaxed);
    let scrapes = scraper.join().unwrap();
    let (first, last) = closing_times(&clients);
    let mut times: Vec<Duration> = scrapes.iter().map(|(_, t)| *t).collect();
    times.sort();
    eprintln!(
        "slowloris: {} connections closed after {first:?}..{last:?}; {} scrapes during it, \
         median {:?}, max {:?}; fds {baseline} before, {during} during",
        clients.len(),
        scrapes.len(),
        times[times.len() / 2],
        times.last().unwrap()
    );
    assert!(
        first >= header - Duration::from_millis(300),
        "closed early: {first:?}"
    );
    assert!(
        last <= header + Duration::from_millis(1500),
        "closed late: {last:?}"
    );
    assert!(during >= baseline + 500, "{during} fds during the attack");
    assert!(
        scrapes.len() >= 20 && scrapes.iter().all(|(s, _)| *s == 200),
        "{scrapes:?}"
    );
    assert!(*times.last().unwrap() < Duration::from_secs(1), "{times:?}");
    eventually(WAIT, "descriptors back to the baseline", || {
        (agent.fds() <= baseline).then_some(())
    });

    // A kept-alive connection outlives the header timeout while idle, not
    // the idle timeout.
    let mut kept = Slow::open(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    thread::sleep(header + Duration::from_secs(1));
    kept.poll();
    assert!(
        kept.closed.is_none(),
        "an idle kept-alive connection got the header timeout"
    );
    let mut kept = [kept];
    watch_close(&mut kept, idle);
    let closed = kept[0].closed.expect("closed after the idle timeout");
    eprintln!("idle keep-alive connection closed after {closed:?}");
    assert!(
        closed >= idle - Duration::from_millis(300) && closed <= idle + Duration::from_millis(1500),
        "{closed:?}"
    );

    // Past the cap, each new connection closes the oldest one still
    // waiting for a request: a scrape gets through a full house.
    let mut flood: Vec<Slow> = (0..650).map(|_| Slow::open(port, b"")).collect();
    thread::sleep(Duration::from_millis(500));
    let peak = agent.fds();
    let start = Instant::now();
    let (status, _) = http_get(port, "/metrics");
    let scrape = start.elapsed();
    flood.iter_mut().for_each(Slow::poll);
    let closed: Vec<usize> = (0..flood.len())
        .filter(|&i| flood[i].closed.is_some())
        .collect();
    eprintln!(
        "650 connections against a cap of 600: {} closed at once; fds {peak}; \
         a scrape then: {status} in {scrape:?}",
        closed.len()
    );
    assert_eq!(status, 200);
    assert_eq!(closed, (0..51).collect::<Vec<_>>(), "the oldest are closed");
    assert!(peak <= baseline + 600, "{peak} fds");
    watch_close(&mut flood, header * 3);
    eventually(WAIT, "descriptors back to the baseline", || {
        (agent.fds() <= baseline).then_some(())
    });
    let metrics = http_get(port, "/metrics").1;
    let value =
        |series: &str| sample(&metrics, series).unwrap_or_else(|| panic!("{series} missing"));
    let dropped = |reason: &str| {
        value(&format!(
            "sockerr_http_connections_dropped_total{{reason=\"{reason}\"}}"
        ))
    };
    assert_eq!(dropped("max_connections"), 51.0);
    assert_eq!(dropped("header_timeout"), 500.0 + 599.0);
    assert_eq!(dropped("idle_timeout"), 1.0);
    assert_eq!(value("sockerr_http_connections"), 1.0);
}
