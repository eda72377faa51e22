//! Thin wrappers over the socket calls the scenarios make, exactly as a C
//! client would make them (libc, no runtime in between).

use std::{
    io,
    mem::size_of,
    net::{SocketAddr, TcpListener},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};

pub struct Sock {
    pub fd: OwnedFd,
}

fn check(ret: libc::c_int, what: &str) -> Result<libc::c_int> {
    if ret < 0 {
        bail!("{what}: {}", io::Error::last_os_error());
    }
    Ok(ret)
}

pub fn errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// A sockaddr for `addr`, and its length.
fn sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            // SAFETY: sockaddr_storage is large enough and aligned for sockaddr_in.
            let sin = unsafe { &mut *(&raw mut storage).cast::<libc::sockaddr_in>() };
            sin.sin_family = libc::AF_INET as u16;
            sin.sin_port = a.port().to_be();
            sin.sin_addr.s_addr = u32::from(*a.ip()).to_be();
            size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 = unsafe { &mut *(&raw mut storage).cast::<libc::sockaddr_in6>() };
            sin6.sin6_family = libc::AF_INET6 as u16;
            sin6.sin6_port = a.port().to_be();
            sin6.sin6_addr.s6_addr = a.ip().octets();
            size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

impl Sock {
    pub fn tcp(v6: bool, nonblocking: bool) -> Result<Self> {
        let family = if v6 { libc::AF_INET6 } else { libc::AF_INET };
        let flags = if nonblocking { libc::SOCK_NONBLOCK } else { 0 };
        // SAFETY: plain syscall.
        let fd = check(
            unsafe { libc::socket(family, libc::SOCK_STREAM | flags, 0) },
            "socket",
        )?;
        // SAFETY: fd was just returned by socket().
        Ok(Self {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// connect(); returns 0 or the errno.
    /// Inlined, like [`Sock::so_error`], so that call sites name the scenario's
    /// own functions.
    #[inline(always)]
    pub fn connect(&self, addr: SocketAddr) -> i32 {
        let (sa, len) = sockaddr(addr);
        // SAFETY: valid sockaddr of length len.
        let ret = unsafe { libc::connect(self.fd.as_raw_fd(), (&raw const sa).cast(), len) };
        if ret == 0 { 0 } else { errno() }
    }

    /// getsockopt(SOL_SOCKET, SO_ERROR).
    #[inline(always)]
    pub fn so_error(&self) -> i32 {
        let mut value: libc::c_int = -1;
        let mut len = size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: value and len are valid for writing.
        let ret = unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_ERROR,
                (&raw mut value).cast(),
                &mut len,
            )
        };
        assert_eq!(
            ret,
            0,
            "getsockopt(SO_ERROR): {}",
            io::Error::last_os_error()
        );
        value
    }

    pub fn wait_writable(&self, timeout: Duration) -> Result<()> {
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLOUT,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let n = check(
            unsafe { libc::poll(&mut pfd, 1, timeout.as_millis() as i32) },
            "poll",
        )?;
        anyhow::ensure!(n == 1, "socket not writable within {timeout:?}");
        Ok(())
    }

    /// SO_LINGER {on, 0}: close() sends an RST and leaves no TIME_WAIT.
    pub fn linger_zero(&self) {
        let l = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        // SAFETY: valid option buffer of the right size.
        unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&raw const l).cast(),
                size_of::<libc::linger>() as libc::socklen_t,
            )
        };
    }

    pub fn set_blocking(&self) {
        // SAFETY: fcntl on an owned fd.
        unsafe {
            let flags = libc::fcntl(self.fd.as_raw_fd(), libc::F_GETFL);
            libc::fcntl(
                self.fd.as_raw_fd(),
                libc::F_SETFL,
                flags & !libc::O_NONBLOCK,
            );
        }
    }

    /// write() of one byte; returns the byte count or -errno.
    pub fn write(&self) -> isize {
        // SAFETY: one valid byte; MSG_NOSIGNAL-free write() as C clients do,
        // so SIGPIPE is ignored process-wide in main.
        let ret = unsafe {
            libc::send(
                self.fd.as_raw_fd(),
                b"x".as_ptr().cast(),
                1,
                libc::MSG_NOSIGNAL,
            )
        };
        if ret < 0 { -(errno() as isize) } else { ret }
    }

    /// read() of one byte; returns the byte count or -errno.
    pub fn read(&self) -> isize {
        let mut b = [0u8; 1];
        // SAFETY: one writable byte.
        let ret = unsafe { libc::read(self.fd.as_raw_fd(), b.as_mut_ptr().cast(), 1) };
        if ret < 0 { -(errno() as isize) } else { ret }
    }

    /// shutdown(SHUT_RDWR); returns 0 or -errno.
    pub fn shutdown(&self) -> i32 {
        // SAFETY: shutdown on an owned fd.
        let ret = unsafe { libc::shutdown(self.fd.as_raw_fd(), libc::SHUT_RDWR) };
        if ret < 0 { -errno() } else { ret }
    }

    pub fn state_is_syn_sent(&self) -> bool {
        // SAFETY: tcp_info is plain data; len bounds the kernel's write.
        let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
        let mut len = size_of::<libc::tcp_info>() as libc::socklen_t;
        let ret = unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_INFO,
                (&raw mut info).cast(),
                &mut len,
            )
        };
        ret == 0 && info.tcpi_state == 2
    }
}

/// A loopback port with nothing listening on it.
pub fn closed_port(v6: bool) -> Result<SocketAddr> {
    let l = TcpListener::bind(if v6 { "[::1]:0" } else { "127.0.0.1:0" })
        .context("binding loopback")?;
    l.local_addr().context("local address")
}

/// A listener with the given backlog.
pub fn listen(v6: bool, backlog: i32) -> Result<TcpListener> {
    let s = Sock::tcp(v6, false)?;
    let (sa, len) = sockaddr(if v6 {
        "[::1]:0".parse()?
    } else {
        "127.0.0.1:0".parse()?
    });
    // SAFETY: valid sockaddr; plain syscalls.
    unsafe {
        check(
            libc::bind(s.fd.as_raw_fd(), (&raw const sa).cast(), len),
            "bind",
        )?;
        check(libc::listen(s.fd.as_raw_fd(), backlog), "listen")?;
    }
    Ok(TcpListener::from(s.fd))
}

/// Waits until `n` connections wait in `listener`'s accept queue (a
/// listener's TCP_INFO `tcpi_unacked` is its accept queue's length): a
/// connect() returns once the SYN-ACK came back, before the handshake's
/// last step has put the connection in the queue.
pub fn wait_queued(listener: &TcpListener, n: u32, timeout: Duration) -> Result<()> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        // SAFETY: all-zero is a valid tcp_info.
        let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
        let mut len = size_of::<libc::tcp_info>() as libc::socklen_t;
        // SAFETY: info and len are valid for writing.
        check(
            unsafe {
                libc::getsockopt(
                    listener.as_raw_fd(),
                    libc::IPPROTO_TCP,
                    libc::TCP_INFO,
                    (&raw mut info).cast(),
                    &mut len,
                )
            },
            "getsockopt(TCP_INFO)",
        )?;
        if info.tcpi_unacked >= n {
            return Ok(());
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "{n} connections did not reach the accept queue within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Raises the soft RLIMIT_NOFILE to the hard limit (default soft: 1024).
pub fn raise_fd_limit() -> Result<()> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid rlimit pointer.
    check(
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) },
        "getrlimit",
    )?;
    lim.rlim_cur = lim.rlim_max;
    // SAFETY: as above.
    check(
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) },
        "setrlimit",
    )?;
    Ok(())
}

pub fn set_comm(comm: &str) -> Result<()> {
    let mut name = comm.as_bytes().to_vec();
    name.push(0);
    // SAFETY: NUL-terminated buffer; the kernel copies at most 16 bytes.
    check(
        unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr()) },
        "prctl(PR_SET_NAME)",
    )?;
    Ok(())
}
