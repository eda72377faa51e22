//! Scenario programs for sockerr's integration tests and benchmarks: each
//! subcommand is one client behaviour on real sockets, run as its own process
//! so the agent attributes it like any other program.
//!
//! Usage: sockerr-scenario <name> [--v6] [args...]; prints what it read.
//! `sockerr-scenario matrix --agent PATH` runs the detection table (see
//! `matrix.rs`).
//! SCENARIO_COMM sets the process's comm first; SCENARIO_LINGER_MS keeps it
//! alive that long at the end, or with `stdin`, until its stdin closes.

mod bench;
mod floor;
mod matrix;
mod net;
mod transparency;

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd,
    sync::Mutex,
    thread,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};

use crate::net::{Sock, closed_port};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let v6 = args.iter().any(|a| a == "--v6");
    let rest: Vec<&str> = args
        .iter()
        .skip(1)
        .map(String::as_str)
        .filter(|a| *a != "--v6")
        .collect();
    let name = args
        .first()
        .context("usage: sockerr-scenario <scenario> [--v6] [args]")?;
    if let Ok(comm) = std::env::var("SCENARIO_COMM") {
        net::set_comm(&comm)?;
    }
    let result = run(name, v6, &rest);
    // Stay alive (sockets open) so the agent can attribute the process.
    match std::env::var("SCENARIO_LINGER_MS").as_deref() {
        // Until the test is done with it: it closes our stdin.
        Ok("stdin") => {
            std::io::stdin().read_to_end(&mut Vec::new())?;
        }
        Ok(ms) => thread::sleep(Duration::from_millis(ms.parse()?)),
        Err(_) => {}
    }
    result
}

fn run(name: &str, v6: bool, rest: &[&str]) -> Result<()> {
    match name {
        "masked" => masked(v6),
        "close-after-read" => close_after_read(v6),
        "first-read" => first_io(v6, false),
        "first-write" => first_io(v6, true),
        "success-reread" => success(v6, 2, false),
        "success-io" => success(v6, 1, true),
        "pending-poll" => pending_poll(v6),
        "reconnect-check" => reconnect_check(v6),
        "blocking-io" => blocking_io(v6),
        "fd-reuse" => fd_reuse(v6),
        "threads-masked" => threads_masked(v6),
        "repeat" => {
            let usage = "repeat buggy|correct <attempts> <pause ms|stdin>";
            let n = rest.get(1).context(usage)?.parse()?;
            let buggy = rest.first() == Some(&"buggy");
            repeat(v6, buggy, n, rest.get(2).context(usage)?)
        }
        "renamed" => {
            net::set_comm(rest.first().context("renamed <comm>")?)?;
            masked(v6)
        }
        "concurrent" => {
            let n = rest
                .first()
                .context("concurrent <n> buggy|correct [stdin]")?
                .parse()?;
            concurrent(
                v6,
                n,
                rest.get(1) == Some(&"buggy"),
                rest.get(2) == Some(&"stdin"),
            )
        }
        "comms" => comms(v6, rest.first().context("comms <n>")?.parse()?),
        "churn" => churn(v6, rest.first().context("churn <n>")?.parse()?),
        "blackhole" => blackhole(v6),
        "abort" => abort(
            v6,
            rest.first().context("abort <port> [shutdown]")?.parse()?,
            rest.get(1) == Some(&"shutdown"),
        ),
        "exhaust" => exhaust(
            rest.first().context("exhaust <addr> <n>")?.parse()?,
            rest.get(1).context("exhaust <addr> <n>")?.parse()?,
        ),
        "remotes" => remotes(v6, rest.first().context("remotes <n>")?.parse()?),
        "connect" => connect_to(rest.first().context("connect <addr>")?.parse()?),
        "transparency" => transparency::run(),
        "floor" => floor::hold(),
        "matrix" => matrix::run(rest),
        "bench" => {
            let usage = "bench <loop> <iterations> [warm]";
            let iterations = rest.get(1).context(usage)?.parse()?;
            bench::run(
                rest.first().context(usage)?,
                iterations,
                rest.get(2) == Some(&"warm"),
            )
        }
        other => bail!("unknown scenario {other}"),
    }
}

/// Sockets kept open until the process exits, after SCENARIO_LINGER_MS: the
/// agent finds the fd of a finding's socket only while it is open.
static KEEP: Mutex<Vec<Sock>> = Mutex::new(Vec::new());

/// The libevent bug: refused non-blocking connect, SO_ERROR read twice (the
/// second read returns 0), then write() and read() on the dead socket.
fn masked(v6: bool) -> Result<()> {
    let s = refused(v6)?;
    let first = s.so_error();
    let second = s.so_error();
    println!(
        "reads={first},{second} write={} read={}",
        s.write(),
        s.read()
    );
    KEEP.lock().expect("not poisoned").push(s);
    Ok(())
}

/// `n` refused attempts. Buggy: the libevent bug, each SO_ERROR read made by
/// its own function as in libevent (the bufferevent layer, then evhttp);
/// correct: the first read only. Between attempts it pauses `pause` ms, or
/// with `stdin`, waits for a line.
fn repeat(v6: bool, buggy: bool, n: usize, pause: &str) -> Result<()> {
    for i in 0..n {
        let s = refused(v6)?;
        let first = bufferevent_finished_connecting(&s);
        if buggy {
            println!("attempt {i}: reads={first},{}", evhttp_connection_cb(&s));
        } else {
            println!("attempt {i}: read={first}");
        }
        drop(s);
        if i + 1 == n {
            break;
        }
        if pause == "stdin" {
            std::io::stdin().read_line(&mut String::new())?;
        } else {
            thread::sleep(Duration::from_millis(pause.parse()?));
        }
    }
    Ok(())
}

// Not inlined, and kept different (black_box) so that they are not merged
// into one function either.
#[inline(never)]
fn bufferevent_finished_connecting(s: &Sock) -> i32 {
    std::hint::black_box(1);
    s.so_error()
}

#[inline(never)]
fn evhttp_connection_cb(s: &Sock) -> i32 {
    std::hint::black_box(2);
    s.so_error()
}

/// A non-blocking connect to a closed port, decided (writable).
fn refused(v6: bool) -> Result<Sock> {
    let s = Sock::tcp(v6, true)?;
    s.connect(closed_port(v6)?);
    s.wait_writable(Duration::from_secs(5))?;
    Ok(s)
}

/// Correct: one read returns the error, the socket is closed.
fn close_after_read(v6: bool) -> Result<()> {
    let s = refused(v6)?;
    println!("reads={}", s.so_error());
    Ok(())
}

/// Correct without `SO_ERROR`: the outcome is learned from the first I/O,
/// which returns the connect's error (a widely used HTTP benchmarking client
/// reads first), then the socket is closed.
fn first_io(v6: bool, write: bool) -> Result<()> {
    let s = refused(v6)?;
    let (call, ret) = if write {
        ("write", s.write())
    } else {
        ("read", s.read())
    };
    let refused = -(libc::ECONNREFUSED as isize);
    anyhow::ensure!(ret == refused, "{call}() returned {ret}, not -ECONNREFUSED");
    println!("{call}={ret}");
    Ok(())
}

/// A listener that accepts and echoes one byte per connection.
fn echo_server(v6: bool) -> Result<SocketAddr> {
    let listener = TcpListener::bind(if v6 { "[::1]:0" } else { "127.0.0.1:0" })?;
    let addr = listener.local_addr()?;
    thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            thread::spawn(move || echo(conn));
        }
    });
    Ok(addr)
}

fn echo(mut conn: TcpStream) {
    let mut b = [0u8; 1];
    while matches!(conn.read(&mut b), Ok(1)) {
        if conn.write_all(&b).is_err() {
            break;
        }
    }
}

/// A successful non-blocking connect, `reads` SO_ERROR reads, then maybe I/O.
fn success(v6: bool, reads: usize, io: bool) -> Result<()> {
    let addr = echo_server(v6)?;
    let s = Sock::tcp(v6, true)?;
    s.connect(addr);
    s.wait_writable(Duration::from_secs(5))?;
    let values: Vec<String> = (0..reads).map(|_| s.so_error().to_string()).collect();
    println!("reads={}", values.join(","));
    if io {
        s.set_blocking();
        println!("write={} read={}", s.write(), s.read());
    }
    Ok(())
}

/// Polls SO_ERROR while the connect is still pending, then reads once after
/// it is decided. The SYN is dropped because the listener's accept queue is
/// full (a full queue drops SYNs, see tcp_conn_request()); accepting frees it
/// and the SYN retransmit (after ~1 s) completes the handshake.
fn pending_poll(v6: bool) -> Result<()> {
    let listener = net::listen(v6, 0)?;
    let addr = listener.local_addr()?;
    let filler = TcpStream::connect(addr)?;
    net::wait_queued(&listener, 1, Duration::from_secs(30))?;
    let s = Sock::tcp(v6, true)?;
    s.connect(addr);
    let mut polled = Vec::new();
    for _ in 0..3 {
        polled.push(s.so_error());
        thread::sleep(Duration::from_millis(20));
    }
    anyhow::ensure!(s.state_is_syn_sent(), "the connect did not stay pending");
    let (accepted, _) = listener.accept()?;
    drop((accepted, filler));
    s.wait_writable(Duration::from_secs(10))?;
    println!("pending_reads={polled:?} decided_read={}", s.so_error());
    Ok(())
}

/// Checks completion with a second connect() (which returns the error and
/// consumes it), reads SO_ERROR once (0), closes.
fn reconnect_check(v6: bool) -> Result<()> {
    let addr = closed_port(v6)?;
    let s = Sock::tcp(v6, true)?;
    s.connect(addr);
    s.wait_writable(Duration::from_secs(5))?;
    let again = s.connect(addr);
    println!("connect_again={again} read={}", s.so_error());
    Ok(())
}

/// A blocking connect that fails, its return value ignored, then write().
fn blocking_io(v6: bool) -> Result<()> {
    let s = Sock::tcp(v6, false)?;
    let err = s.connect(closed_port(v6)?);
    println!("connect={err} write={}", s.write());
    Ok(())
}

/// A failed socket is closed; its fd number is reused by a socket that
/// connects fine and does I/O.
fn fd_reuse(v6: bool) -> Result<()> {
    let failed = refused(v6)?;
    let fd = failed.fd.as_raw_fd();
    println!("first read={}", failed.so_error());
    drop(failed);
    let s = Sock::tcp(v6, true)?;
    // The echo server starts only now: its thread's accept() reserves the
    // lowest free fd while it blocks, which could be the one just freed.
    anyhow::ensure!(
        s.fd.as_raw_fd() == fd,
        "fd {fd} was not reused (got {})",
        s.fd.as_raw_fd()
    );
    let addr = echo_server(v6)?;
    s.connect(addr);
    s.wait_writable(Duration::from_secs(5))?;
    println!("reused fd={fd} read={}", s.so_error());
    s.set_blocking();
    println!("write={} read={}", s.write(), s.read());
    Ok(())
}

/// The first SO_ERROR read in one thread, the second in another.
fn threads_masked(v6: bool) -> Result<()> {
    let s = refused(v6)?;
    let first = thread::scope(|t| t.spawn(|| s.so_error()).join().expect("thread"));
    let second = thread::scope(|t| t.spawn(|| s.so_error()).join().expect("thread"));
    println!("reads={first},{second}");
    Ok(())
}

/// The libevent bug under `n` distinct comms (`c0`, `c1`, …): four counter
/// keys each (failed, a read of the error, a read of 0, the finding).
fn comms(v6: bool, n: usize) -> Result<()> {
    for i in 0..n {
        net::set_comm(&format!("c{i}"))?;
        let s = refused(v6)?;
        s.so_error();
        s.so_error();
    }
    println!("comms={n}");
    Ok(())
}

/// `n` short-lived processes, one after the other, each with a comm of its
/// own (`ch<i>`): the libevent bug once (a masked read and the failed
/// attempt), then exit. Prints how many ran.
fn churn(v6: bool, n: usize) -> Result<()> {
    let addr = closed_port(v6)?;
    for i in 0..n {
        // SAFETY: the child only makes system calls and exits without
        // returning into Rust's runtime.
        match unsafe { libc::fork() } {
            -1 => bail!("fork: {}", std::io::Error::last_os_error()),
            0 => {
                let ok = net::set_comm(&format!("ch{i}")).is_ok() && {
                    let s = Sock::tcp(v6, true);
                    s.is_ok_and(|s| {
                        s.connect(addr);
                        s.wait_writable(Duration::from_secs(5)).is_ok()
                            && s.so_error() != 0
                            && s.so_error() == 0
                    })
                };
                // SAFETY: ends the child at once.
                unsafe { libc::_exit(if ok { 0 } else { 1 }) };
            }
            child => {
                let mut status = 0;
                // SAFETY: waits for our own child.
                unsafe { libc::waitpid(child, &mut status, 0) };
                anyhow::ensure!(status == 0, "process {i} of the churn failed");
            }
        }
    }
    println!("churn={n}");
    Ok(())
}

/// A loopback listener that answers no SYN: its accept queue (backlog 0)
/// holds one connection that is never accepted, and a full queue drops
/// SYNs (tcp_conn_request()). Prints its port, then holds it until stdin
/// closes.
fn blackhole(v6: bool) -> Result<()> {
    let listener = net::listen(v6, 0)?;
    let addr = listener.local_addr()?;
    let filler = TcpStream::connect(addr)?;
    println!("{}", addr.port());
    std::io::stdout().flush()?;
    std::io::stdin().read_to_end(&mut Vec::new())?;
    drop((filler, listener));
    Ok(())
}

/// An application-level connect timeout: a non-blocking connect to a port
/// that never answers, given up after 200 ms by closing the socket, or by
/// shutting it down (then closed a moment later).
fn abort(v6: bool, port: u16, shutdown: bool) -> Result<()> {
    let s = Sock::tcp(v6, true)?;
    let ip = if v6 { "[::1]" } else { "127.0.0.1" };
    s.connect(format!("{ip}:{port}").parse()?);
    anyhow::ensure!(
        s.wait_writable(Duration::from_millis(200)).is_err(),
        "the connect was answered"
    );
    anyhow::ensure!(s.state_is_syn_sent(), "the connect is not pending");
    if shutdown {
        anyhow::ensure!(s.shutdown() == 0, "shutdown failed");
        anyhow::ensure!(!s.state_is_syn_sent(), "still pending after shutdown");
        thread::sleep(Duration::from_millis(100));
    }
    drop(s);
    println!("aborted");
    Ok(())
}

/// Refused attempts to `n` distinct closed ports, each read once (clean).
fn remotes(v6: bool, n: usize) -> Result<()> {
    let mut seen = std::collections::HashSet::new();
    while seen.len() < n {
        let addr = closed_port(v6)?;
        if seen.insert(addr.port()) {
            let s = Sock::tcp(v6, true)?;
            s.connect(addr);
            s.wait_writable(Duration::from_secs(5))?;
            s.so_error();
        }
    }
    println!("remotes={n}");
    Ok(())
}

/// A blocking connect to `addr`; prints its result (0 or the errno).
fn connect_to(addr: SocketAddr) -> Result<()> {
    let s = Sock::tcp(addr.is_ipv6(), false)?;
    println!("connect={}", s.connect(addr));
    Ok(())
}

/// `n` connects to `addr` held open at once: with fewer local ports than
/// `n`, the rest fail inside connect() with EADDRNOTAVAIL. Prints the
/// errors by name.
fn exhaust(addr: SocketAddr, n: usize) -> Result<()> {
    let mut held = Vec::new();
    let mut refused_ports = 0;
    for _ in 0..n {
        let s = Sock::tcp(addr.is_ipv6(), true)?;
        match s.connect(addr) {
            0 | libc::EINPROGRESS => held.push(s),
            libc::EADDRNOTAVAIL => refused_ports += 1,
            other => bail!("connect: errno {other}"),
        }
    }
    println!("held={} eaddrnotavail={refused_ports}", held.len());
    Ok(())
}

/// `n` attempts in flight at once, all buggy (read twice) or all correct.
/// With `barrier`, it prints `connected` once every connect is made and
/// reads only after a line on stdin.
fn concurrent(v6: bool, n: usize, buggy: bool, barrier: bool) -> Result<()> {
    net::raise_fd_limit()?;
    let addr = closed_port(v6)?;
    let socks: Vec<Sock> = (0..n).map(|_| Sock::tcp(v6, true)).collect::<Result<_>>()?;
    for s in &socks {
        s.connect(addr);
    }
    if barrier {
        println!("connected");
        std::io::stdout().flush()?;
        std::io::stdin().read_line(&mut String::new())?;
    }
    for s in &socks {
        s.wait_writable(Duration::from_secs(5))?;
        s.so_error();
        if buggy {
            s.so_error();
        }
    }
    println!("attempts={n} buggy={buggy}");
    Ok(())
}
