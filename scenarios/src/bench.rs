//! Benchmark loops (`sockerr-scenario bench <loop> <iterations> [warm]`):
//! each prints `ns_per_op=<n>`. Built in release mode by `cargo xtask bench`.
//!
//! With `warm`, the loop first runs for [`WARM_UP`] in small batches with
//! pauses, then rests a moment: a process the agent flags gets call-site
//! uprobes from its first finding until a few of its findings have shown
//! their call sites (about a second), a one-time cost that the measured
//! iterations then no longer include.

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::net::{Sock, closed_port};

const WARM_UP: Duration = Duration::from_millis(3000);

pub fn run(name: &str, iterations: u64, warm: bool) -> Result<()> {
    pin_to_cpu0()?;
    let run = |n| match name {
        "refused" => connects(n, 1),
        "established" => established(n, 1),
        "established-reread" => established(n, 2),
        "pingpong" => pingpong(n),
        "pipe" => pipe(n),
        "udp" => datagrams(n, udp_pair()?),
        "unix-dgram" => datagrams(n, unix_dgram_pair()?),
        "masked" => connects(n, 2),
        other => bail!("unknown loop {other}"),
    };
    if warm {
        let start = Instant::now();
        while start.elapsed() < WARM_UP {
            run((iterations / 200).max(20))?;
            thread::sleep(Duration::from_millis(50));
        }
        thread::sleep(Duration::from_millis(500));
    }
    println!("ns_per_op={:.0}", run(iterations)?);
    Ok(())
}

/// One CPU for the loop and its helper thread: wake-ups stay on one core
/// (cross-core wake-ups in this VM cost more than the work measured), and
/// the other core is left to the agent.
fn pin_to_cpu0() -> Result<()> {
    // SAFETY: a zeroed cpu_set_t is empty; CPU_SET and the syscall take valid pointers.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        anyhow::ensure!(
            libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) == 0,
            "sched_setaffinity"
        );
    }
    Ok(())
}

fn per_op(start: Instant, iterations: u64) -> f64 {
    start.elapsed().as_nanos() as f64 / iterations as f64
}

/// Non-blocking connects to a closed port, `reads` SO_ERROR reads each
/// (2 = the libevent bug, a masked finding every iteration), close.
fn connects(iterations: u64, reads: usize) -> Result<f64> {
    let addr = closed_port(false)?;
    let start = Instant::now();
    for _ in 0..iterations {
        let s = Sock::tcp(false, true)?;
        s.connect(addr);
        s.wait_writable(Duration::from_secs(5))?;
        for _ in 0..reads {
            s.so_error();
        }
    }
    Ok(per_op(start, iterations))
}

/// Connects to a listener, `reads` SO_ERROR reads (2: a so_error_reread
/// finding every iteration, as nginx with an https upstream); the listener
/// accepts and closes, then the client closes. Accepting in the same thread keeps the
/// accept queue from filling (a full queue drops SYNs), and the client closes
/// with an RST (SO_LINGER 0): thousands of TIME_WAIT sockets would make the
/// kernel's port search, not the probes, dominate.
fn established(iterations: u64, reads: usize) -> Result<f64> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let start = Instant::now();
    for _ in 0..iterations {
        let s = Sock::tcp(false, true)?;
        s.linger_zero();
        s.connect(addr);
        s.wait_writable(Duration::from_secs(5))?;
        for _ in 0..reads {
            anyhow::ensure!(s.so_error() == 0, "connect failed");
        }
        drop(listener.accept()?);
    }
    Ok(per_op(start, iterations))
}

/// 1-byte ping-pong over one established loopback pair.
fn pingpong(iterations: u64) -> Result<f64> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let mut client = TcpStream::connect(listener.local_addr()?)?;
    let (mut server, _) = listener.accept()?;
    client.set_nodelay(true)?;
    server.set_nodelay(true)?;
    let echo = thread::spawn(move || {
        let mut b = [0u8; 1];
        while matches!(server.read(&mut b), Ok(1)) {
            if server.write_all(&b).is_err() {
                break;
            }
        }
    });
    let mut b = [0u8; 1];
    let start = Instant::now();
    for _ in 0..iterations {
        client.write_all(b"x")?;
        client.read_exact(&mut b)?;
    }
    let ns = per_op(start, iterations);
    drop(client);
    echo.join().ok().context("echo thread")?;
    Ok(ns)
}

/// Two UDP sockets on loopback connected to each other.
fn udp_pair() -> Result<[std::os::fd::OwnedFd; 2]> {
    let a = std::net::UdpSocket::bind("127.0.0.1:0")?;
    let b = std::net::UdpSocket::bind("127.0.0.1:0")?;
    a.connect(b.local_addr()?)?;
    b.connect(a.local_addr()?)?;
    Ok([a.into(), b.into()])
}

fn unix_dgram_pair() -> Result<[std::os::fd::OwnedFd; 2]> {
    let (a, b) = std::os::unix::net::UnixDatagram::pair()?;
    Ok([a.into(), b.into()])
}

/// 1-byte send and receive over a datagram pair: socket I/O that can never
/// be a finding, which the I/O hooks must leave at once.
fn datagrams(iterations: u64, pair: [std::os::fd::OwnedFd; 2]) -> Result<f64> {
    use std::os::fd::AsRawFd as _;
    let (a, b) = (pair[0].as_raw_fd(), pair[1].as_raw_fd());
    let mut byte = [0u8; 1];
    let start = Instant::now();
    for _ in 0..iterations {
        // SAFETY: valid fds and a one-byte buffer.
        let (sent, received) = unsafe {
            (
                libc::send(a, b"x".as_ptr().cast(), 1, 0),
                libc::recv(b, byte.as_mut_ptr().cast(), 1, 0),
            )
        };
        anyhow::ensure!(sent == 1 && received == 1, "datagram lost");
    }
    Ok(per_op(start, iterations))
}

/// 1-byte write/read through a pipe: syscalls that are not socket I/O.
fn pipe(iterations: u64) -> Result<f64> {
    let mut fds = [0; 2];
    // SAFETY: fds has room for two descriptors.
    anyhow::ensure!(unsafe { libc::pipe(fds.as_mut_ptr()) } == 0, "pipe");
    let mut b = [0u8; 1];
    let start = Instant::now();
    for _ in 0..iterations {
        // SAFETY: valid fds and a one-byte buffer.
        unsafe {
            libc::write(fds[1], b"x".as_ptr().cast(), 1);
            libc::read(fds[0], b.as_mut_ptr().cast(), 1);
        }
    }
    let ns = per_op(start, iterations);
    // SAFETY: our fds.
    unsafe {
        libc::close(fds[0]);
        libc::close(fds[1]);
    }
    Ok(ns)
}
