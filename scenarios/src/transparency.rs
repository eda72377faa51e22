//! `sockerr-scenario transparency`: calls whose results the agent must never
//! change, printed one line each, so that a run without the agent and a run
//! with it can be compared line by line (docs/design.md §2, "What the hooks
//! may change"). Root: it gives itself thousands of supplementary groups
//! (an `SO_PEERGROUPS` result larger than a page) and loads an
//! iptables-legacy ruleset whose read is one large getsockopt.
//!
//! - getsockopt at `SOL_SOCKET`, `IPPROTO_TCP`, `IPPROTO_IP` and
//!   `IPPROTO_IPV6` with buffers of many sizes around a page and a NULL
//!   buffer, on TCP (fresh, connecting, refused, established), UDP and
//!   Unix sockets: return value, errno, the length and the bytes;
//! - `SO_ERROR` of a refused connect read again and again (the first read
//!   returns the error, the next ones 0, exactly as without the agent);
//! - sends and receives on TCP, UDP and Unix sockets;
//! - `iptables-legacy-save` of a few hundred rules: exit status and output.

use std::{
    collections::hash_map::DefaultHasher,
    hash::{Hash as _, Hasher as _},
    io::Write as _,
    net::TcpStream,
    os::fd::AsRawFd,
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};

use crate::net::{self, Sock, closed_port, errno};

/// Supplementary groups the process gives itself: `SO_PEERGROUPS` of its
/// own socketpair is then 8,000 bytes, two pages.
const GROUPS: u32 = 2000;
/// iptables rules loaded: their `IPT_SO_GET_ENTRIES` read is ≈ 46 KB.
const RULES: u32 = 300;

/// Buffer sizes tried for every option: around a page, and a NULL buffer
/// (`None`) last, since a getsockopt may consume what it reads (SO_ERROR)
/// even when it cannot copy the value out.
const SIZES: [Option<usize>; 10] = [
    Some(4),
    Some(8),
    Some(0),
    Some(1),
    Some(3),
    Some(4095),
    Some(4096),
    Some(4097),
    Some(65536),
    None,
];

#[rustfmt::skip]
const OPTIONS: &[(libc::c_int, libc::c_int, &str)] = &[
    (libc::SOL_SOCKET, libc::SO_ERROR, "SO_ERROR"),
    (libc::SOL_SOCKET, libc::SO_TYPE, "SO_TYPE"),
    (libc::SOL_SOCKET, libc::SO_DOMAIN, "SO_DOMAIN"),
    (libc::SOL_SOCKET, libc::SO_PROTOCOL, "SO_PROTOCOL"),
    (libc::SOL_SOCKET, libc::SO_ACCEPTCONN, "SO_ACCEPTCONN"),
    (libc::SOL_SOCKET, libc::SO_RCVBUF, "SO_RCVBUF"),
    (libc::SOL_SOCKET, libc::SO_LINGER, "SO_LINGER"),
    (libc::SOL_SOCKET, libc::SO_KEEPALIVE, "SO_KEEPALIVE"),
    (libc::SOL_SOCKET, libc::SO_PEERCRED, "SO_PEERCRED"),
    (libc::SOL_SOCKET, libc::SO_PEERGROUPS, "SO_PEERGROUPS"),
    (libc::SOL_SOCKET, libc::SO_BINDTODEVICE, "SO_BINDTODEVICE"),
    (libc::IPPROTO_TCP, libc::TCP_NODELAY, "TCP_NODELAY"),
    (libc::IPPROTO_TCP, libc::TCP_MAXSEG, "TCP_MAXSEG"),
    (libc::IPPROTO_TCP, libc::TCP_CONGESTION, "TCP_CONGESTION"),
    (libc::IPPROTO_TCP, libc::TCP_INFO, "TCP_INFO"),
    (libc::IPPROTO_TCP, libc::TCP_USER_TIMEOUT, "TCP_USER_TIMEOUT"),
    (libc::IPPROTO_IP, libc::IP_TTL, "IP_TTL"),
    (libc::IPPROTO_IP, libc::IP_TOS, "IP_TOS"),
    (libc::IPPROTO_IP, libc::IP_OPTIONS, "IP_OPTIONS"),
    (libc::IPPROTO_IP, libc::IP_MTU_DISCOVER, "IP_MTU_DISCOVER"),
    (libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, "IPV6_V6ONLY"),
    (libc::IPPROTO_IPV6, libc::IPV6_UNICAST_HOPS, "IPV6_UNICAST_HOPS"),
    (libc::IPPROTO_IPV6, libc::IPV6_TCLASS, "IPV6_TCLASS"),
];

pub fn run() -> Result<()> {
    supplementary_groups()?;
    let sockets = sockets()?;
    for (name, fd) in &sockets {
        for &(level, option, label) in OPTIONS {
            for size in SIZES {
                println!("{name} {label} {}", getsockopt(*fd, level, option, size));
            }
        }
    }
    io_calls()?;
    iptables()?;
    Ok(())
}

fn supplementary_groups() -> Result<()> {
    let groups: Vec<libc::gid_t> = (0..GROUPS).map(|g| 100_000 + g).collect();
    // SAFETY: a valid array of `groups.len()` ids.
    if unsafe { libc::setgroups(groups.len(), groups.as_ptr()) } != 0 {
        bail!(
            "setgroups({GROUPS} groups): {} (needs root)",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// One getsockopt, as a line: return value, errno, the length the kernel
/// wrote and the bytes (hashed: some are pages long). TCP_INFO carries
/// timings that differ from run to run: its length only.
fn getsockopt(
    fd: libc::c_int,
    level: libc::c_int,
    option: libc::c_int,
    size: Option<usize>,
) -> String {
    // Deterministic, non-zero filler, to see any byte the kernel or a probe
    // would (wrongly) touch.
    let mut buf: Vec<u8> = (0..size.unwrap_or(0)).map(|i| (i * 7 + 3) as u8).collect();
    let mut len = size.unwrap_or(4) as libc::socklen_t;
    let ptr = match size {
        Some(_) => buf.as_mut_ptr().cast(),
        None => std::ptr::null_mut(),
    };
    // SAFETY: ptr is null or valid for `len` bytes.
    let ret = unsafe { libc::getsockopt(fd, level, option, ptr, &mut len) };
    let err = if ret < 0 { errno() } else { 0 };
    let size = size.map_or("NULL".to_owned(), |s| s.to_string());
    let bytes = match (level, option) {
        (libc::IPPROTO_TCP, libc::TCP_INFO) => "timings".to_owned(),
        // struct ucred starts with the peer's pid: this run's own.
        (libc::SOL_SOCKET, libc::SO_PEERCRED) => {
            let pid = buf.len().min(4);
            buf[..pid].fill(0);
            shown(&buf)
        }
        _ => shown(&buf),
    };
    format!("size={size} ret={ret} errno={err} len={len} bytes={bytes}")
}

/// Small buffers in hex, larger ones hashed.
fn shown(bytes: &[u8]) -> String {
    if bytes.len() <= 16 {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    } else {
        format!("hash:{}", hash(bytes))
    }
}

fn hash(bytes: &[u8]) -> String {
    let mut h = DefaultHasher::new();
    bytes.hash(&mut h);
    format!("{:016x}", h.finish())
}

/// The sockets, by name, in every state the agent tracks. The listeners
/// and peers stay open while the options are read.
fn sockets() -> Result<Vec<(&'static str, libc::c_int)>> {
    let mut out = Vec::new();
    let keep = |s: Sock, name: &'static str, out: &mut Vec<_>| {
        out.push((name, s.fd.as_raw_fd()));
        std::mem::forget(s);
    };
    keep(Sock::tcp(false, true)?, "tcp4", &mut out);
    keep(Sock::tcp(true, true)?, "tcp6", &mut out);
    // A full accept queue drops the SYN: the attempt stays in SYN_SENT.
    let full = net::listen(false, 0)?;
    let filler = TcpStream::connect(full.local_addr()?)?;
    net::wait_queued(&full, 1, Duration::from_secs(30))?;
    let pending = Sock::tcp(false, true)?;
    pending.connect(full.local_addr()?);
    anyhow::ensure!(
        pending.state_is_syn_sent(),
        "the connect did not stay pending"
    );
    keep(pending, "tcp-pending", &mut out);
    let refused = Sock::tcp(false, true)?;
    refused.connect(closed_port(false)?);
    refused.wait_writable(Duration::from_secs(10))?;
    keep(refused, "tcp-refused", &mut out);
    let open = net::listen(false, 16)?;
    let established = Sock::tcp(false, true)?;
    established.connect(open.local_addr()?);
    established.wait_writable(Duration::from_secs(10))?;
    keep(established, "tcp-established", &mut out);
    // SAFETY: plain syscall.
    let udp = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0) };
    out.push(("udp4", udp));
    let [a, _b] = socketpair(libc::SOCK_STREAM)?;
    out.push(("unix-stream", a));
    let [c, _d] = socketpair(libc::SOCK_DGRAM)?;
    out.push(("unix-dgram", c));
    // Open until the process exits, like the sockets above.
    std::mem::forget((full, filler, open));
    Ok(out)
}

fn socketpair(kind: libc::c_int) -> Result<[libc::c_int; 2]> {
    let mut fds = [0; 2];
    // SAFETY: fds has room for two descriptors.
    if unsafe { libc::socketpair(libc::AF_UNIX, kind, 0, fds.as_mut_ptr()) } != 0 {
        bail!("socketpair: {}", std::io::Error::last_os_error());
    }
    Ok(fds)
}

/// A send or receive, as `ret errno`.
fn outcome(ret: isize) -> String {
    let err = if ret < 0 { errno() } else { 0 };
    format!("ret={ret} errno={err}")
}

fn send(fd: libc::c_int) -> String {
    // SAFETY: one valid byte.
    outcome(unsafe {
        libc::send(
            fd,
            b"x".as_ptr().cast(),
            1,
            libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
        )
    })
}

fn recv(fd: libc::c_int) -> String {
    let mut b = [0u8; 1];
    // SAFETY: one writable byte.
    outcome(unsafe { libc::recv(fd, b.as_mut_ptr().cast(), 1, libc::MSG_DONTWAIT) })
}

/// Sends and receives on a refused TCP connect (the first takes its
/// error), an established one, UDP and Unix datagrams.
fn io_calls() -> Result<()> {
    let refused = Sock::tcp(false, true)?;
    refused.connect(closed_port(false)?);
    refused.wait_writable(Duration::from_secs(10))?;
    let fd = refused.fd.as_raw_fd();
    println!("io tcp-refused recv {}", recv(fd));
    println!("io tcp-refused send {}", send(fd));
    println!("io tcp-refused recv {}", recv(fd));
    let listener = net::listen(false, 16)?;
    let established = TcpStream::connect(listener.local_addr()?)?;
    let (peer, _) = listener.accept()?;
    let fd = established.as_raw_fd();
    println!("io tcp-established send {}", send(fd));
    println!("io tcp-established recv {}", recv(fd));
    drop(peer);
    let udp = std::net::UdpSocket::bind("127.0.0.1:0")?;
    udp.connect(udp.local_addr()?)?;
    let fd = udp.as_raw_fd();
    println!("io udp send {}", send(fd));
    println!("io udp recv {}", recv(fd));
    println!("io udp recv {}", recv(fd));
    let [a, b] = socketpair(libc::SOCK_DGRAM)?;
    println!("io unix-dgram send {}", send(a));
    println!("io unix-dgram recv {}", recv(b));
    println!("io unix-dgram recv {}", recv(b));
    Ok(())
}

/// `iptables-legacy-save` of a ruleset of `RULES` rules, loaded first with
/// `iptables-legacy-restore` (the filter table is replaced, then restored
/// at the end).
fn iptables() -> Result<()> {
    let saved = xtables(&["iptables-save"], None)?;
    let mut rules =
        String::from("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n");
    for i in 0..RULES {
        rules += &format!("-A INPUT -s 10.{}.{}.1/32 -j ACCEPT\n", i / 250, i % 250);
    }
    rules += "COMMIT\n";
    xtables(&["iptables-restore"], Some(&rules))?;
    let out = xtables(&["iptables-save"], None);
    // Back to the table as it was, whatever the save gave.
    let filter_only = saved.contains("*filter");
    let restore = if filter_only {
        saved
    } else {
        "*filter\nCOMMIT\n".to_owned()
    };
    xtables(&["iptables-restore"], Some(&restore))?;
    let out = out?;
    // Comment lines carry the time, and each chain's line its packet and
    // byte counters (`:INPUT ACCEPT [12:3456]`), which any packet on
    // loopback between the restore and the save moves (a SYN retransmitted
    // by an earlier socket, under a slow emulated CPU): both left out.
    let lines: Vec<&str> = out
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| match l.strip_prefix(':').and(l.rsplit_once(" [")) {
            Some((chain, _)) => chain,
            None => l,
        })
        .collect();
    anyhow::ensure!(
        lines.len() as u32 >= RULES,
        "iptables-legacy-save printed {} rule lines, not {RULES}",
        lines.len()
    );
    println!(
        "iptables-legacy-save lines={} text={}",
        lines.len(),
        hash(lines.join("\n").as_bytes())
    );
    Ok(())
}

/// `xtables-legacy-multi ARGS` (what iptables-legacy-save and -restore
/// link to), with `input` on its standard input; its output, or why not.
fn xtables(args: &[&str], input: Option<&str>) -> Result<String> {
    let mut child = Command::new("xtables-legacy-multi")
        .args(args)
        .env("PATH", "/usr/sbin:/sbin:/usr/bin:/bin")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context(
            "running xtables-legacy-multi (the iptables package: cargo xtask setup installs it)",
        )?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(input.unwrap_or("").as_bytes())?;
    let out = child.wait_with_output()?;
    anyhow::ensure!(
        out.status.success(),
        "xtables-legacy-multi {args:?}: {}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}
