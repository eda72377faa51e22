//! Real programs are the judges (root, real kernel, Debian's packages): each
//! gets the verdict an SRE would agree with, and each test first proves the
//! program really made its connect, so "no finding" cannot pass by accident.
//!
//! | program                         | how it learns the connect result        | verdict                   |
//! | ------------------------------- | --------------------------------------- | ------------------------- |
//! | squid 5.7, refused upstream     | reads SO_ERROR (111), then one read()   | nothing (it was told)     |
//! | PHP async stream, refused port  | never: writes at once                   | `io_after_failed_connect` |
//! | PHP blocking stream, open port  | connect()'s return value                | nothing                   |
//! | nginx 1.22, https upstream      | reads SO_ERROR 0, then 0 after TLS      | `so_error_reread` only    |
//! | nginx 1.22, plain upstream      | reads SO_ERROR once                     | nothing                   |
//! | haproxy 2.6, refused backend    | a second connect()                      | nothing                   |

mod support;

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use support::{
    Agent, PATIENCE, Server, closed_port, eventually, http_server, listening, nginx_as, renamed,
    require_root, run_program, tls_server,
};

/// A directory of this test's own, empty.
fn workdir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("programs-{name}"));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

/// curl's HTTP status for `url`, optionally through a proxy.
fn status(url: &str, proxy: Option<u16>) -> u16 {
    let mut cmd = Command::new("curl");
    cmd.args([
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "--max-time",
        "10",
    ]);
    if let Some(port) = proxy {
        cmd.args(["-x", &format!("http://127.0.0.1:{port}")]);
    }
    let (_, out) = run_program(cmd.arg(url));
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0)
}

fn kinds_of(agent: &Agent, comm: &str) -> Vec<String> {
    let mut kinds: Vec<String> = agent
        .findings()
        .iter()
        .filter(|f| f["comm"] == comm)
        .map(|f| f["kind"].as_str().unwrap().to_owned())
        .collect();
    kinds.sort();
    kinds.dedup();
    kinds
}

#[test]
fn squid_told_of_a_refused_upstream_is_not_flagged() {
    if !require_root() {
        return;
    }
    let dir = workdir("squid");
    let port = closed_port();
    let conf = dir.join("squid.conf");
    fs::write(
        &conf,
        format!(
            "http_port 127.0.0.1:{port}\nhttp_access allow all\ncache deny all\n\
             cache_mem 8 MB\npid_filename {dir}/squid.pid\ncache_log {dir}/cache.log\n\
             access_log none\ncoredump_dir {dir}\ncache_effective_user proxy\n\
             shutdown_lifetime 0 seconds\ndns_nameservers 127.0.0.1\n",
            dir = dir.display()
        ),
    )
    .unwrap();
    // squid drops to user proxy: its log directory must be writable.
    Command::new("chown")
        .args(["proxy:proxy"])
        .arg(&dir)
        .status()
        .unwrap();
    let agent = Agent::start();
    let squid = renamed("squid", "squid-refused");
    let _squid = Server::start(Command::new(squid).arg("-N").arg("-f").arg(&conf));
    listening(port);
    let upstream = format!("http://127.0.0.1:{}/", closed_port());
    for _ in 0..3 {
        assert_eq!(status(&upstream, Some(port)), 503, "squid answers 503");
    }
    // It may try an upstream more than once per request.
    eventually(PATIENCE, "squid's refused connects", || {
        (agent.attempts("squid-refused", "failed") >= 3.0).then_some(())
    });
    agent.barrier();
    assert_eq!(kinds_of(&agent, "squid-refused"), Vec::<String>::new());
}

/// PHP's async stream client never checks the connect: it writes at once,
/// and that write takes the connect's pending error (strace: `sendto(...)
/// = -1 ECONNREFUSED`; `fwrite` returns false). The process was told, by
/// the I/O itself: no finding (docs/design.md §3). Nor is its blocking twin
/// to a server that answers flagged.
#[test]
fn php_told_by_its_write_to_a_refused_async_stream_and_its_blocking_twin_are_not_flagged() {
    if !require_root() {
        return;
    }
    let agent = Agent::start();
    let refused = closed_port();
    let async_client = format!(
        r#"$s = stream_socket_client("tcp://127.0.0.1:{refused}", $no, $str, 1,
               STREAM_CLIENT_CONNECT | STREAM_CLIENT_ASYNC_CONNECT);
           var_dump(@fwrite($s, "GET / HTTP/1.0\r\n\r\n"));"#
    );
    let (pid, out) = run_program(Command::new("php").args(["-r", &async_client]));
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "bool(false)",
        "fwrite reports the refusal"
    );
    // Seen: the refused attempt is counted, then nothing raised for it.
    eventually(PATIENCE, "PHP's refused connect counted", || {
        (agent.attempts("php", "failed") >= 1.0).then_some(())
    });
    agent.barrier();
    let flagged = agent.findings_of(pid);
    assert!(flagged.is_empty(), "told by its write: {flagged:?}");
    // Its twin: a blocking stream to a server that answers.
    let open = http_server(false);
    let blocking = format!(
        r#"$s = stream_socket_client("tcp://127.0.0.1:{open}", $no, $str, 1);
           fwrite($s, "GET / HTTP/1.0\r\n\r\n"); echo stream_get_contents($s);"#
    );
    let (twin, out) = run_program(Command::new("php").args(["-r", &blocking]));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("200 OK"),
        "{out:?}"
    );
    agent.barrier();
    let flagged = agent.findings_of(twin);
    assert!(flagged.is_empty(), "{flagged:?}");
}

/// nginx reads SO_ERROR again after the TLS handshake with an https
/// upstream (0 then 0): a re-read, never more; with a plain upstream, one
/// read: clean.
#[test]
fn nginx_rereads_with_an_https_upstream_only() {
    if !require_root() {
        return;
    }
    let dir = workdir("nginx");
    let (_upstream, tls) = tls_server(&dir);
    let plain = http_server(false);
    let (https_port, plain_port) = (closed_port(), closed_port());
    let agent = Agent::start();
    let comm = "nginx-upstream";
    let _nginx = nginx_as(
        &renamed("nginx", comm),
        &dir,
        &[
            (https_port, format!("https://127.0.0.1:{tls}")),
            (plain_port, format!("http://127.0.0.1:{plain}")),
        ],
    );
    // Five requests through `port`: one upstream connect each (nginx keeps
    // no upstream connection alive unless told to), all counted, settled.
    let proxy_five = |port: u16, established: f64| {
        for _ in 0..5 {
            assert_eq!(status(&format!("http://127.0.0.1:{port}/"), None), 200);
        }
        eventually(PATIENCE, "nginx's upstream connects", || {
            (agent.attempts(comm, "established") >= established).then_some(())
        });
        agent.barrier();
        assert_eq!(agent.attempts(comm, "established"), established);
    };
    proxy_five(https_port, 5.0);
    assert_eq!(kinds_of(&agent, comm), ["so_error_reread"]);
    let reread = format!(r#"sockerr_findings_total{{comm="{comm}",kind="so_error_reread"}}"#);
    assert_eq!(agent.metric(&reread), 5.0, "one per upstream connect");
    // The plain upstream: one read per connect, nothing new.
    proxy_five(plain_port, 10.0);
    assert_eq!(agent.metric(&reread), 5.0);
    assert_eq!(kinds_of(&agent, comm), ["so_error_reread"]);
}

/// haproxy learns of a refused backend with a second connect(): clean.
#[test]
fn haproxy_with_a_refused_backend_is_not_flagged() {
    if !require_root() {
        return;
    }
    let dir = workdir("haproxy");
    let (front, backend) = (closed_port(), closed_port());
    let conf = dir.join("haproxy.cfg");
    fs::write(
        &conf,
        format!(
            "defaults\n  mode http\n  timeout connect 2s\n  timeout client 5s\n  timeout server 5s\n\
             frontend f\n  bind 127.0.0.1:{front}\n  default_backend b\n\
             backend b\n  server s1 127.0.0.1:{backend}\n"
        ),
    )
    .unwrap();
    let agent = Agent::start();
    let haproxy = renamed("haproxy", "haproxy-refused");
    let _haproxy = Server::start(Command::new(haproxy).arg("-db").arg("-f").arg(&conf));
    listening(front);
    for _ in 0..3 {
        assert_eq!(status(&format!("http://127.0.0.1:{front}/"), None), 503);
    }
    // It retries a refused backend (retries 3 by default).
    eventually(PATIENCE, "haproxy's refused connects", || {
        (agent.attempts("haproxy-refused", "failed") >= 3.0).then_some(())
    });
    agent.barrier();
    assert_eq!(kinds_of(&agent, "haproxy-refused"), Vec::<String>::new());
}
