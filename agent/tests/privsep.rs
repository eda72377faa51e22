//! Privilege separation (root): the process that reads the network holds
//! nothing worth stealing, and what it sends the privileged one cannot
//! harm it.
//!
//! | what is looked at or done | what holds |
//! | --- | --- |
//! | the web server's /proc/<pid>/status | not root (65534, or --web.server-user); CapEff, CapPrm, CapAmb 0; NoNewPrivs 1; Seccomp 2 (two filters); no supplementary group; not dumpable |
//! | the collector once attached | CAP_SYS_PTRACE (and CAP_SYS_ADMIN) effective; CAP_SETUID, CAP_SETGID permitted only |
//! | the web server's descriptors and environment | sockets, /dev/null and its log only: none of the web configuration's files (root's, 0600), which it is sent instead; an empty environment |
//! | hostile frames written on the server's end of the channel: another version, an unknown type, a 4 GiB length, a chunk never asked for, counts that go down, more connections than the cap | the collector ends that server (`protocol_error`), keeps running with its capabilities, and starts another, which serves; nothing of the frames reaches the metrics |
//! | the server killed (SIGKILL) or crashed (SIGSEGV) | another starts (`signal`); every finding counted before and meanwhile is there, exactly; the HTTP counts are not reset |
//! | the collector stopped (SIGSTOP) | `/healthz` 503 without credentials; scrapes past `--web.max-requests` 503 at once |
//! | a client past `--web.max-connections-per-client` | its own oldest waiting connection closed, another client served |
//! | `--web.disable-exporter-metrics` | no `process_*`, no `promhttp_*`; otherwise one series per process |
//! | `sockerr check` | names the web server's user, no capabilities, its seccomp filter |

mod support;

use std::{
    collections::HashMap,
    fs,
    io::{Read as _, Write as _},
    net::TcpStream,
    os::{
        fd::{FromRawFd as _, OwnedFd},
        unix::fs::{MetadataExt as _, PermissionsExt as _},
    },
    process::Command,
    time::Duration,
};

use support::{
    Agent, PATIENCE, Signal, agent_bin, eventually, http_get, require_root, sample, scenario_env,
    wait_web_server,
};

/// The fields of /proc/<pid>/status.
fn status(pid: u32) -> HashMap<String, String> {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_owned(), v.trim().to_owned()))
        .collect()
}

fn caps(status: &HashMap<String, String>, set: &str) -> u64 {
    u64::from_str_radix(&status[set], 16).unwrap()
}

const CAP_SETGID: u64 = 1 << 6;
const CAP_SETUID: u64 = 1 << 7;
const CAP_SYS_PTRACE: u64 = 1 << 19;

/// A web server that started after `old` (another pid), once it serves.
fn new_server(agent: &Agent, old: u32) -> u32 {
    let server = eventually(PATIENCE, "another web server", || {
        agent.server_pid().filter(|pid| *pid != old)
    });
    eventually(PATIENCE, "the new web server serving", || {
        (agent.get("/healthz").0 == 200).then_some(())
    });
    server
}

fn restarts(agent: &Agent, reason: &str) -> f64 {
    agent.metric(&format!(
        "sockerr_web_server_restarts_total{{reason=\"{reason}\"}}"
    ))
}

#[test]
fn the_web_server_runs_unprivileged_confined_and_holds_no_secret() {
    if !require_root() {
        return;
    }
    let dir = support::scratch("privsep", "secrets");
    let hash = support::bcrypt_hash("secret");
    let file = dir.join("web.yml");
    fs::write(
        &file,
        format!("basic_auth_users:\n  prometheus: '{hash}'\n"),
    )
    .unwrap();
    fs::set_permissions(&file, fs::Permissions::from_mode(0o600)).unwrap();
    let agent = Agent::with(&["--web.config.file", file.to_str().unwrap()]);
    let server = wait_web_server(agent.pid());
    // Confined before it reads the channel, so once it answers (found as
    // a child, it may still be starting).
    eventually(PATIENCE, "the web server serving", || {
        (agent.get("/healthz").0 == 200).then_some(())
    });
    let s = status(server);
    eprintln!(
        "web server {server}: Uid {} Gid {} Groups {:?} CapEff {} NoNewPrivs {} Seccomp {} \
         filters {}",
        s["Uid"],
        s["Gid"],
        s["Groups"],
        s["CapEff"],
        s["NoNewPrivs"],
        s["Seccomp"],
        s["Seccomp_filters"]
    );
    assert_eq!(s["Name"], "sockerr-server");
    assert_eq!(s["PPid"], agent.pid().to_string());
    assert_eq!(s["Uid"], "65534\t65534\t65534\t65534");
    assert_eq!(s["Gid"], "65534\t65534\t65534\t65534");
    assert_eq!(s["Groups"], "");
    for set in ["CapInh", "CapPrm", "CapEff", "CapAmb"] {
        assert_eq!(caps(&s, set), 0, "{set}");
    }
    assert_eq!(s["NoNewPrivs"], "1");
    assert_eq!(s["Seccomp"], "2", "filter mode");
    assert_eq!(s["Seccomp_filters"], "2");
    // Not dumpable: its /proc entries are root's, not its user's.
    assert_eq!(
        fs::metadata(format!("/proc/{server}/status"))
            .unwrap()
            .uid(),
        0
    );

    // The collector: what reading maps and /proc and uprobes take, and
    // the two that start the server, permitted only.
    let c = status(agent.pid());
    assert_eq!(caps(&c, "CapEff") & (CAP_SETUID | CAP_SETGID), 0);
    assert_ne!(caps(&c, "CapEff") & CAP_SYS_PTRACE, 0);
    assert_eq!(
        caps(&c, "CapPrm") & (CAP_SETUID | CAP_SETGID),
        CAP_SETUID | CAP_SETGID
    );

    // It holds sockets, /dev/null and its log; none of the files it serves
    // by (the collector reads them and sends what they say).
    for fd in fs::read_dir(format!("/proc/{server}/fd"))
        .unwrap()
        .flatten()
    {
        let target = fs::read_link(fd.path()).unwrap();
        let target = target.to_string_lossy();
        let name = fd.file_name().into_string().unwrap();
        assert!(
            target.starts_with("socket:")
                || target.starts_with("anon_inode:")
                || target == "/dev/null"
                || name == "2"
                || target.starts_with("pipe:"),
            "fd {name} -> {target}"
        );
        assert!(!target.contains("web.yml"), "fd {name} -> {target}");
    }
    let environ = fs::read(format!("/proc/{server}/environ")).unwrap();
    assert!(
        environ.is_empty() || environ.starts_with(b"RUST_LOG="),
        "{}",
        String::from_utf8_lossy(&environ)
    );
    // And it serves what the file says.
    assert_eq!(agent.get("/metrics").0, 401);
    assert_eq!(agent.get("/healthz").0, 200, "unauthenticated on purpose");
}

#[test]
fn another_user_can_be_named() {
    if !require_root() {
        return;
    }
    let agent = Agent::with(&["--web.server-user", "61234:61235"]);
    let s = status(wait_web_server(agent.pid()));
    assert_eq!(s["Uid"], "61234\t61234\t61234\t61234");
    assert_eq!(s["Gid"], "61235\t61235\t61235\t61235");
    assert_eq!(caps(&s, "CapEff"), 0);
    let out = Command::new(agent_bin())
        .args(["run", "--web.server-user", "0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("must not run as root"));
}

/// The web server's end of the channel, as code running in a compromised
/// server would have it: taken from it with pidfd_getfd(2).
fn channel_of(server: u32) -> fs::File {
    let cmdline = fs::read_to_string(format!("/proc/{server}/cmdline")).unwrap();
    let fd: i32 = cmdline
        .split('\0')
        .find_map(|a| a.strip_prefix("--channel-fd="))
        .expect("--channel-fd")
        .parse()
        .unwrap();
    // SAFETY: syscalls on integers; the descriptors returned are ours.
    unsafe {
        let pidfd = libc::syscall(libc::SYS_pidfd_open, server, 0);
        assert!(pidfd >= 0, "pidfd_open");
        let pidfd = OwnedFd::from_raw_fd(pidfd as i32);
        let theirs = libc::syscall(
            libc::SYS_pidfd_getfd,
            std::os::fd::AsRawFd::as_raw_fd(&pidfd),
            fd,
            0,
        );
        assert!(theirs >= 0, "pidfd_getfd");
        fs::File::from_raw_fd(theirs as i32)
    }
}

/// A frame: length, version, type, then `fields`.
fn frame(version: u8, kind: u8, fields: &[u8]) -> Vec<u8> {
    let mut f = ((2 + fields.len()) as u32).to_le_bytes().to_vec();
    f.extend([version, kind]);
    f.extend_from_slice(fields);
    f
}

/// The server's counts: open, in flight, 6 drop reasons, 3 scrape codes.
fn stats(open: u32, counts: u64) -> Vec<u8> {
    let mut s = open.to_le_bytes().to_vec();
    s.extend(0u32.to_le_bytes());
    for _ in 0..9 {
        s.extend(counts.to_le_bytes());
    }
    s
}

#[test]
fn hostile_frames_on_the_channel_end_the_server_not_the_collector() {
    if !require_root() {
        return;
    }
    let agent = Agent::with(&["--web.max-connections", "100"]);
    let (_, out) = scenario_env(&["masked"], &[("SCENARIO_COMM", "privsep-before")]);
    assert!(out.status.success());
    let masked = r#"sockerr_findings_total{comm="privsep-before",kind="so_error_masked"}"#;
    eventually(PATIENCE, "the finding counted", || {
        (agent.metric(masked) == 1.0).then_some(())
    });
    let collector = status(agent.pid());
    let cases: [(&str, Vec<u8>); 7] = [
        ("another version", frame(9, 0x02, &7u32.to_le_bytes())),
        ("an unknown type", frame(1, 0x7f, &7u32.to_le_bytes())),
        ("a reply's type", frame(1, 0x84, &7u32.to_le_bytes())),
        ("a 4 GiB frame", u32::MAX.to_le_bytes().to_vec()),
        (
            "the next chunk of a response never asked for",
            frame(1, 0x05, &123_456u32.to_le_bytes()),
        ),
        // Its counts as reported with each scrape so far, then all zero.
        ("counts that go down", frame(1, 0x07, &stats(0, 0))),
        (
            "more connections open than the cap",
            frame(1, 0x07, &stats(1_000_000, u64::MAX / 4)),
        ),
    ];
    let mut server = wait_web_server(agent.pid());
    for (i, (what, bytes)) in cases.iter().enumerate() {
        let before = restarts(&agent, "protocol_error");
        assert_eq!(before, i as f64, "{what}");
        let mut channel = channel_of(server);
        channel.write_all(bytes).unwrap();
        server = new_server(&agent, server);
        drop(channel);
        assert_eq!(
            restarts(&agent, "protocol_error"),
            before + 1.0,
            "{what}: the server ended for it"
        );
        eprintln!("{what}: the web server was ended and replaced ({server})");
    }
    // The collector runs on as it was, counting and serving.
    assert_eq!(status(agent.pid())["CapEff"], collector["CapEff"]);
    assert_eq!(agent.metric(masked), 1.0);
    let (_, out) = scenario_env(&["masked"], &[("SCENARIO_COMM", "privsep-before")]);
    assert!(out.status.success());
    eventually(PATIENCE, "the next finding counted", || {
        (agent.metric(masked) == 2.0).then_some(())
    });
    let metrics = agent.metrics();
    assert_eq!(
        sample(&metrics, "sockerr_http_connections"),
        Some(1.0),
        "none of the hostile counts reached the metrics"
    );
    let dropped = |reason: &str| {
        sample(
            &metrics,
            &format!("sockerr_http_connections_dropped_total{{reason=\"{reason}\"}}"),
        )
        .unwrap()
    };
    assert!(dropped("header_timeout") < 1000.0);
    assert_eq!(restarts(&agent, "signal"), 0.0);
}

#[test]
fn a_server_killed_or_crashed_is_replaced_and_nothing_counted_is_lost() {
    if !require_root() {
        return;
    }
    let agent = Agent::start();
    let masked = r#"sockerr_findings_total{comm="privsep-kill",kind="so_error_masked"}"#;
    let flag = |n: usize| {
        for _ in 0..n {
            let (_, out) = scenario_env(&["masked"], &[("SCENARIO_COMM", "privsep-kill")]);
            assert!(out.status.success());
        }
    };
    flag(5);
    eventually(PATIENCE, "5 findings counted", || {
        (agent.metric(masked) == 5.0).then_some(())
    });
    let scraped = |m: &str| sample(m, r#"promhttp_metric_handler_requests_total{code="200"}"#);
    let before = scraped(&agent.metrics()).unwrap();
    let mut server = wait_web_server(agent.pid());
    for (sig, n) in [(Signal::SIGKILL, 1.0), (Signal::SIGSEGV, 2.0)] {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(server as i32), sig).unwrap();
        // Found while the server is down or starting again: counted all
        // the same, by the collector.
        flag(5);
        server = new_server(&agent, server);
        assert_eq!(restarts(&agent, "signal"), n, "{sig}");
    }
    let metrics = agent.metrics();
    assert_eq!(
        sample(&metrics, masked),
        Some(15.0),
        "exactly what was made"
    );
    assert!(
        scraped(&metrics).unwrap() > before,
        "the HTTP counts carried over: {before} then {metrics}"
    );
    assert_eq!(caps(&status(server), "CapEff"), 0);
    assert_eq!(status(server)["Seccomp"], "2");
    // A server's process metrics are its own: another start time.
    assert!(sample(&metrics, r#"process_start_time_seconds{process="server"}"#).is_some());
}

/// A request on its own connection, left waiting for its answer.
fn ask(port: u16, path: &str) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    s
}

/// The status of the answer on `s`, once it came.
fn answer(mut s: TcpStream) -> (u16, String) {
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, text)
}

#[test]
fn with_the_collector_stopped_health_fails_and_scrapes_past_the_limit_are_refused() {
    if !require_root() {
        return;
    }
    let agent = Agent::with(&["--web.max-requests", "2"]);
    let port = agent.port();
    assert_eq!(agent.get("/healthz"), (200, "ok\n".into()));
    agent.pause();
    // Not "ok": the kubelet restarts an agent that does not answer.
    assert_eq!(http_get(port, "/healthz").0, 503);
    // Scrapes wait for the collector; once two do, a third is refused at
    // once, without waiting for anything.
    let mut waiting = Vec::new();
    let refused = eventually(PATIENCE, "a scrape refused", || {
        let mut s = ask(port, "/metrics");
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut head = [0; 12];
        match s.read_exact(&mut head) {
            Ok(()) if head.starts_with(b"HTTP/1.1 503") => Some(s),
            Ok(()) => panic!("{}", String::from_utf8_lossy(&head)),
            // No answer yet: waiting for the collector, or slow to be
            // refused (told apart below).
            Err(_) => {
                waiting.push(s);
                None
            }
        }
    });
    let (_, text) = answer(refused);
    assert!(text.contains("--web.max-requests"), "{text}");
    agent.resume();
    let statuses: Vec<u16> = waiting.into_iter().map(|s| answer(s).0).collect();
    let answered = statuses.iter().filter(|s| **s == 200).count();
    let refused = 1 + statuses.iter().filter(|s| **s == 503).count();
    assert_eq!(answered, 2, "the limit is 2: {statuses:?}");
    assert_eq!(
        answered + refused - 1,
        statuses.len(),
        "200 or 503: {statuses:?}"
    );
    let metrics = agent.metrics();
    assert_eq!(
        sample(
            &metrics,
            r#"promhttp_metric_handler_requests_total{code="503"}"#
        ),
        Some(refused as f64)
    );
    assert_eq!(
        sample(&metrics, "promhttp_metric_handler_requests_in_flight"),
        Some(1.0)
    );
}

/// A connection to 127.0.0.1:`port` from `source` (another loopback
/// address is another client).
fn connect_from(source: [u8; 4], port: u16) -> TcpStream {
    // SAFETY: a socket of our own, addresses on the stack.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0);
        let s = TcpStream::from_raw_fd(fd);
        let addr = |ip: [u8; 4], port: u16| libc::sockaddr_in {
            sin_family: libc::AF_INET as u16,
            sin_port: port.to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(ip),
            },
            sin_zero: [0; 8],
        };
        let len = size_of::<libc::sockaddr_in>() as u32;
        let from = addr(source, 0);
        assert_eq!(libc::bind(fd, (&raw const from).cast(), len), 0, "bind");
        let to = addr([127, 0, 0, 1], port);
        assert_eq!(libc::connect(fd, (&raw const to).cast(), len), 0, "connect");
        s
    }
}

fn closed(s: &mut TcpStream) -> bool {
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    matches!(s.read(&mut [0]), Ok(0) | Err(_))
}

#[test]
fn one_client_cannot_take_every_place() {
    if !require_root() {
        return;
    }
    let agent = Agent::with(&[
        "--web.max-connections-per-client",
        "3",
        "--web.header-timeout",
        "1h",
    ]);
    let port = agent.port();
    let mut mine: Vec<TcpStream> = (0..3).map(|_| connect_from([127, 0, 0, 1], port)).collect();
    agent.wait_connections(3);
    // A fourth: the client's oldest waiting one makes room.
    mine.push(connect_from([127, 0, 0, 1], port));
    assert!(closed(&mut mine[0]), "the oldest is closed");
    agent.wait_connections(3);
    // Another client is served beside it.
    let mut other = connect_from([127, 0, 0, 2], port);
    write!(
        other,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let (status, metrics) = answer(other);
    assert_eq!(status, 200, "{metrics}");
    assert!(
        metrics.contains(
            r#"sockerr_http_connections_dropped_total{reason="max_connections_per_client"} 1"#
        ),
        "{metrics}"
    );
    assert!(metrics.contains("sockerr_http_connections 4"), "{metrics}");
}

#[test]
fn exporter_metrics_are_each_processs_and_can_be_left_out() {
    if !require_root() {
        return;
    }
    let agent = Agent::start();
    wait_web_server(agent.pid());
    let metrics = eventually(PATIENCE, "the server's process metrics", || {
        let m = agent.metrics();
        m.contains(r#"process_open_fds{process="server"}"#)
            .then_some(m)
    });
    for name in [
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_virtual_memory_bytes",
        "process_start_time_seconds",
        "process_open_fds",
        "process_max_fds",
    ] {
        for process in ["collector", "server"] {
            let series = format!("{name}{{process=\"{process}\"}}");
            assert!(sample(&metrics, &series).is_some(), "{series}");
        }
    }
    assert!(metrics.contains("# TYPE process_cpu_seconds_total counter"));
    assert!(sample(&metrics, "promhttp_metric_handler_requests_in_flight").is_some());
    let bare = Agent::with(&["--web.disable-exporter-metrics"]);
    let metrics = bare.metrics();
    assert!(!metrics.contains("process_"), "{metrics}");
    assert!(!metrics.contains("promhttp_"), "{metrics}");
    assert!(metrics.contains("sockerr_web_server_restarts_total"));
}

#[test]
fn check_reports_the_split() {
    if !require_root() {
        return;
    }
    let out = Command::new(agent_bin()).arg("check").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("web server"))
        .unwrap_or_else(|| panic!("no web server line:\n{text}"));
    eprintln!("{line}");
    assert!(line.starts_with("ok "), "{line}");
    for words in [
        "uid 65534 gid 65534",
        "no capabilities",
        "no_new_privs",
        "seccomp filter",
    ] {
        assert!(line.contains(words), "{words:?} in {line}");
    }
    let out = Command::new("setpriv")
        .args(["--bounding-set=-setuid,-setgid", "--inh-caps=-all"])
        .arg(agent_bin())
        .arg("check")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("MISSING  web server") && text.contains("CAP_SETUID, CAP_SETGID"),
        "{text}"
    );
}
