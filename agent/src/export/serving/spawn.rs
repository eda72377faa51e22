//! Starting the web server: this executable again (`/proc/self/exe
//! serve`: a fresh address space, none of the collector's memory, maps or
//! secrets), as `--web.server-user`, with two descriptors (the listen
//! socket and its end of the channel) and a clean environment.
//!
//! It is started from a thread of its own, the warden, which then only
//! waits: the server's parent-death signal (SIGKILL) fires when that thread
//! ends. That is how the collector stops a server it may not signal (it
//! runs as another user, and the collector keeps no CAP_KILL), and why a
//! collector that dies takes its server with it.

use std::{
    io,
    os::{
        fd::{AsFd as _, AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
        unix::process::{CommandExt as _, ExitStatusExt as _},
    },
    process::{Command, ExitStatus, Stdio},
    sync::mpsc,
};

use tokio::io::{Interest, unix::AsyncFd};

use crate::privileges::{self, ServerUser};

/// A web server that was started, until it is reaped.
pub struct Server {
    pub pid: u32,
    pidfd: AsyncFd<OwnedFd>,
    /// Dropped: the warden ends, and the kernel kills the server.
    warden: Option<mpsc::Sender<()>>,
    status: Option<ExitStatus>,
}

/// A copy of `fd` numbered 3 or more (close-on-exec): the standard
/// streams the child is given (0, 1, 2) cannot take its place.
fn above_stdio(fd: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC on a descriptor we hold returns a new one.
    let copy = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 3) };
    if copy < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: just made, owned by no one else.
    Ok(unsafe { OwnedFd::from_raw_fd(copy) })
}

/// Starts a web server; `global` are the flags it shares with the
/// collector (the log's format and level).
pub fn start(
    user: &ServerUser,
    listener: BorrowedFd<'_>,
    channel: OwnedFd,
    global: &[String],
) -> io::Result<Server> {
    let listen = above_stdio(listener)?;
    let channel = above_stdio(channel.as_fd())?;
    let keep = [listen.as_raw_fd(), channel.as_raw_fd()];
    let mut command = Command::new("/proc/self/exe");
    command
        .arg0("sockerr")
        .args(global)
        .arg("serve")
        .arg(format!("--listen-fd={}", keep[0]))
        .arg(format!("--channel-fd={}", keep[1]))
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    if let Some(filter) = std::env::var_os("RUST_LOG") {
        command.env("RUST_LOG", filter);
    }
    if user.needs_set_id() {
        command.uid(user.uid).gid(user.gid);
    }
    // SAFETY: in_server_child makes only async-signal-safe calls.
    unsafe {
        command.pre_exec(move || privileges::in_server_child(keep));
    }
    let (started, start) = mpsc::channel();
    let (warden, until) = mpsc::channel::<()>();
    std::thread::Builder::new()
        .name("server-warden".into())
        .spawn(move || {
            // CAP_SETUID and CAP_SETGID, effective in this thread alone,
            // for the child to change user before it executes.
            let child = privileges::set_id(true).and_then(|()| command.spawn());
            let _ = privileges::set_id(false);
            // The child has its copies (spawn returns once it executed).
            drop((listen, channel));
            let running = child.is_ok();
            let _ = started.send(child.map(|c| c.id()));
            if running {
                // Until the sender is dropped; then this thread ends, and
                // with it the server.
                let _ = until.recv();
            }
        })?;
    let pid = start
        .recv()
        .map_err(|_| io::Error::other("the warden thread ended"))??;
    // SAFETY: pidfd_open(2) of our own unreaped child: the pid cannot have
    // been reused.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if pidfd < 0 {
        let e = io::Error::last_os_error();
        drop(warden);
        return Err(e);
    }
    // SAFETY: just opened, owned by no one else.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd as i32) };
    // SAFETY: the AsyncFd owns the pidfd, and nothing else polls it.
    let pidfd = unsafe { AsyncFd::register_with_interest(pidfd, Interest::READABLE) }?;
    Ok(Server {
        pid,
        pidfd,
        warden: Some(warden),
        status: None,
    })
}

impl Server {
    /// Completes when the server has exited, and reaps it.
    pub async fn exited(&mut self) -> ExitStatus {
        loop {
            if let Some(status) = self.status {
                return status;
            }
            // A pidfd is readable once its process has exited.
            let ready = self.pidfd.readable().await;
            let mut status = 0;
            // SAFETY: waitpid on our own child, status written to the stack.
            let reaped = unsafe { libc::waitpid(self.pid as i32, &mut status, libc::WNOHANG) };
            if reaped == self.pid as i32 {
                self.status = Some(ExitStatus::from_raw(status));
            } else if let Ok(mut ready) = ready {
                ready.clear_ready();
            } else {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }

    /// Kills the server (SIGKILL, through its warden's end).
    pub fn kill(&mut self) {
        self.warden = None;
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}
