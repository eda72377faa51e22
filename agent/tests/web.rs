//! Serving remote scrapers: TLS, basic auth and client certificates checked
//! with curl and a real Prometheus, reloading the web configuration, and
//! the timeouts and connection cap under a slowloris attack (root). Bad
//! configurations fail before anything needs root.

mod support;

use std::{
    fs,
    io::{ErrorKind, Read, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
    thread,
    time::{Duration, Instant},
};

use support::{
    Agent, Log, PATIENCE, Prometheus, agent_bin, bcrypt_hash, eventually, raw_response,
    require_root, sample,
};

/// A fresh scratch directory of this test binary.
fn scratch(name: &str) -> PathBuf {
    support::scratch("web", name)
}

/// A test CA, a server certificate for 127.0.0.1, ::1 and localhost, a
/// client certificate from the CA and one from nobody (self-signed), made
/// with the openssl command once per test binary; never kept.
fn pki() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = scratch("pki");
        let openssl = |args: &[&str]| support::openssl(&dir, args);
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
            support::ca_sign(
                &dir,
                &format!("{name}.csr"),
                &format!("{name}.ext"),
                &format!("{name}.crt"),
            );
        }
        dir
    })
}

fn pki_file(name: &str) -> String {
    pki().join(name).to_str().unwrap().to_owned()
}

/// `sockerr run` with `args`, its log kept.
fn run(args: &[&str]) -> Agent {
    Agent::spawn(&agent_bin(), args, Log::Capture)
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
        // Refused before loading anything.
        assert!(!err.contains("attach"), "{err}");
    }
}

#[test]
fn logs_the_address_it_bound() {
    if !require_root() {
        return;
    }
    let agent = run(&["--web.listen-address", "[::1]:0"]);
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
    let agent = run(&[
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
    // A TLS handshake is bounded by the header timeout too: the agent
    // closes a silent client, never before the timeout (its clock starts
    // after ours), and counts it as such.
    let timed_out = || {
        let (ok, _, text) =
            curl(&[&tls[..], &["-u", "prometheus:secret", &url("/metrics")]].concat());
        assert!(ok, "{text}");
        dropped(&text, "header_timeout")
    };
    let before = timed_out();
    let start = Instant::now();
    let mut silent = TcpStream::connect(("127.0.0.1", agent.port())).unwrap();
    silent.set_read_timeout(Some(PATIENCE)).unwrap();
    // Closed by the agent (end of stream or reset), not the read timing out.
    match silent.read(&mut [0; 1]) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("the silent TLS client was not closed: {other:?}"),
    }
    let waited = start.elapsed();
    assert!(waited >= Duration::from_secs(2), "closed early: {waited:?}");
    assert_eq!(timed_out(), before + 1.0);

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
    eventually(PATIENCE, "good and mtls up, bad down", || {
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
    eventually(PATIENCE, "good down, mtls up", || {
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
    let agent = run(&[
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
    eventually(PATIENCE, "the SIGHUP reload", || {
        (get_as(port, "a", "six") == 200).then_some(())
    });
    assert_eq!(get_as(port, "a", "two"), 401);
}

/// A client that sends `first` and then, if that started a request without
/// finishing its headers, one more header line a second, never finishing.
struct Slow {
    stream: TcpStream,
    /// Taken before connecting: the agent's clock for the connection
    /// starts later, so it cannot close it less than a timeout after this.
    opened: Instant,
    trickles: bool,
    received: Vec<u8>,
    closed: Option<Duration>,
}

impl Slow {
    fn open(port: u16, first: &[u8]) -> Self {
        let opened = Instant::now();
        let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream.write_all(first).unwrap();
        stream.set_nonblocking(true).unwrap();
        Self {
            stream,
            opened,
            trickles: !first.is_empty() && !first.ends_with(b"\r\n\r\n"),
            received: Vec::new(),
            closed: None,
        }
    }

    /// Keeps what the server sent; notes when it closed the connection.
    fn poll(&mut self) {
        let mut buf = [0; 4096];
        while self.closed.is_none() {
            match self.stream.read(&mut buf) {
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Ok(n) if n > 0 => self.received.extend_from_slice(&buf[..n]),
                _ => self.closed = Some(self.opened.elapsed()),
            }
        }
    }
}

/// Polls every client until all are closed, trickling header lines
/// meanwhile; panics after [`PATIENCE`].
fn watch_close(clients: &mut [Slow]) {
    let start = Instant::now();
    let mut last_trickle = Instant::now();
    while clients.iter().any(|c| c.closed.is_none()) {
        let open = clients.iter().filter(|c| c.closed.is_none()).count();
        assert!(
            start.elapsed() < PATIENCE,
            "{open} connections still open after {PATIENCE:?}"
        );
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

/// Indexes of the clients the server closed, once at least `n` are.
fn wait_closed(clients: &mut [Slow], n: usize) -> Vec<usize> {
    eventually(PATIENCE, &format!("{n} connections closed"), || {
        clients.iter_mut().for_each(Slow::poll);
        let closed: Vec<usize> = (0..clients.len())
            .filter(|&i| clients[i].closed.is_some())
            .collect();
        (closed.len() >= n).then_some(closed)
    })
}

/// Its value of `sockerr_http_connections_dropped_total` for `reason`.
fn dropped(metrics: &str, reason: &str) -> f64 {
    let series = format!("sockerr_http_connections_dropped_total{{reason=\"{reason}\"}}");
    sample(metrics, &series).unwrap_or_else(|| panic!("{series} missing:\n{metrics}"))
}

#[test]
fn slowloris_is_cut_off_and_metrics_keep_answering() {
    if !require_root() {
        return;
    }
    let header = Duration::from_secs(3);
    let idle = Duration::from_secs(6);
    let agent = run(&[
        "--web.header-timeout",
        "3s",
        "--web.idle-timeout",
        "6s",
        "--web.max-connections",
        "600",
        // Every client is 127.0.0.1: the cap is the limit here.
        "--web.max-connections-per-client=0",
        // No uprobes on the host's other processes: they hold descriptors.
        "--call-sites=off",
    ]);
    let port = agent.port();
    assert_eq!(agent.get("/metrics").0, 200);
    agent.wait_connections(0);

    // 300 clients trickling headers and 200 sending nothing at all: all
    // held, and scrapes still answered (each counts itself too).
    let mut clients: Vec<Slow> = (0..300)
        .map(|_| Slow::open(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n"))
        .chain((0..200).map(|_| Slow::open(port, b"")))
        .collect();
    for _ in 0..10 {
        // The previous scrape's connection gone (the agent closes it and
        // counts it out in one step of its single thread).
        agent.wait_connections(500);
        let metrics = agent.metrics();
        assert_eq!(sample(&metrics, "sockerr_http_connections"), Some(501.0));
    }
    // Each closed for its header timeout, never before it.
    watch_close(&mut clients);
    let first = clients.iter().filter_map(|c| c.closed).min().unwrap();
    let last = clients.iter().filter_map(|c| c.closed).max().unwrap();
    eprintln!("slowloris: 500 connections closed after {first:?}..{last:?}");
    assert!(first >= header, "closed early: {first:?}");
    assert!(
        clients.iter().all(|c| c.received.is_empty()),
        "no slow client got an answer"
    );
    agent.wait_connections(0);
    let metrics = agent.metrics();
    assert_eq!(dropped(&metrics, "header_timeout"), 500.0);
    assert_eq!(dropped(&metrics, "max_connections"), 0.0);

    // A kept-alive connection, once answered, waits for the idle timeout,
    // not the header timeout.
    let mut kept = [Slow::open(
        port,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
    )];
    watch_close(&mut kept);
    let [kept] = kept;
    let response = String::from_utf8_lossy(&kept.received);
    assert!(response.starts_with("HTTP/1.1 200 "), "{response}");
    let closed = kept.closed.unwrap();
    eprintln!("idle keep-alive connection closed after {closed:?}");
    assert!(closed >= idle, "closed before the idle timeout: {closed:?}");
    agent.wait_connections(0);
    let metrics = agent.metrics();
    assert_eq!(dropped(&metrics, "idle_timeout"), 1.0);
    assert_eq!(dropped(&metrics, "header_timeout"), 500.0);
    assert_eq!(sample(&metrics, "sockerr_http_connections"), Some(1.0));
}

/// Past the cap, each new connection closes the oldest one still waiting
/// for a request: a scrape gets through a full house. The timeouts are
/// long, so nothing else can close a connection meanwhile, however slowly
/// they are opened.
#[test]
fn past_the_cap_each_new_connection_closes_the_oldest_waiting_one() {
    if !require_root() {
        return;
    }
    let agent = run(&[
        "--web.header-timeout",
        "1h",
        "--web.idle-timeout",
        "1h",
        "--web.max-connections",
        "600",
        "--web.max-connections-per-client=0",
        "--call-sites=off",
    ]);
    let port = agent.port();
    let mut flood: Vec<Slow> = (0..650).map(|_| Slow::open(port, b"")).collect();
    // The last 50 made room: the first 50 are closed, 600 held.
    let closed = wait_closed(&mut flood, 50);
    assert_eq!(closed, (0..50).collect::<Vec<_>>(), "the oldest are closed");
    agent.wait_connections(600);
    let (status, metrics) = agent.get("/metrics");
    assert_eq!(status, 200, "{metrics}");
    // The scrape made room too, and was counted among the 600.
    assert_eq!(dropped(&metrics, "max_connections"), 51.0);
    assert_eq!(sample(&metrics, "sockerr_http_connections"), Some(600.0));
    let closed = wait_closed(&mut flood, 51);
    assert_eq!(closed, (0..51).collect::<Vec<_>>(), "the oldest are closed");
    agent.wait_connections(599);
    drop(flood);
    agent.wait_connections(0);
    let metrics = agent.metrics();
    assert_eq!(dropped(&metrics, "max_connections"), 51.0);
    assert_eq!(dropped(&metrics, "header_timeout"), 0.0);
    assert_eq!(sample(&metrics, "sockerr_http_connections"), Some(1.0));
}
