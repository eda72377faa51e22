//! The web server's seccomp filter: the system calls serving HTTP and TLS
//! on an inherited listening socket takes, and nothing else.
//!
//! The list was found by running the server under `strace -f` through
//! everything it does (plain HTTP, TLS 1.2 and 1.3 with and without client
//! certificates, basic auth with bcrypt on its blocking thread, reloads
//! and new certificates, `/findings` read slowly, header and idle
//! timeouts, floods past both connection caps, shutdown), and is kept as
//! small as works: about thirty calls, some only with given arguments. No `open`,
//! `socket`, `connect`, `bind`, `execve`, `ptrace`, `kill` or `fork`: a
//! compromised server cannot open a file, reach another host, start a
//! program or signal a process.
//!
//! Anything else kills the server (`SECCOMP_RET_KILL_PROCESS`), not an
//! error return: code running in a compromised server cannot catch it, so
//! it cannot probe the filter, and each try costs a restart the collector
//! logs (`killed by signal 31 (SIGSYS)`) and counts
//! (`sockerr_web_server_restarts_total{reason="seccomp"}`); the kernel log
//! names the call (`audit: type=1326 ... syscall=N`). An `EPERM` would let
//! it try at leisure, and let a legitimate path that was missed fail in
//! ways its library does not expect; killed, it fails at once and loudly,
//! and costs the connections open at that moment, nothing more (the
//! counts are the collector's). A crash ends as the signal it is (the
//! server restores SIGSEGV's and SIGBUS's default actions first); an abort
//! (a panic while panicking, an allocation failure) ends as SIGSYS too,
//! raising SIGABRT being a signal it may not send.

use std::{collections::BTreeMap, os::fd::RawFd};

use anyhow::{Context as _, Result};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

#[cfg(target_arch = "x86_64")]
const ARCH: TargetArch = TargetArch::x86_64;
#[cfg(target_arch = "aarch64")]
const ARCH: TargetArch = TargetArch::aarch64;

/// What a call is allowed with.
#[derive(Clone, Copy)]
enum Only {
    Any,
    /// `(arg & mask) == value`.
    Masked {
        arg: u8,
        mask: u64,
        value: u64,
    },
    /// `arg` is one of these.
    OneOf {
        arg: u8,
        values: &'static [u64],
    },
    /// The descriptor (first argument) is not the listening socket: the
    /// server's copy shares the collector's socket, which a `shutdown`
    /// would stop listening for every later server too.
    NotListener,
    /// `SOL_SOCKET` and this option.
    SocketOption(u64),
}

/// (name, number, what for, allowed with).
type Allowed = (&'static str, libc::c_long, &'static str, Only);

const NOT_EXEC: Only = Only::Masked {
    arg: 2,
    mask: libc::PROT_EXEC as u64,
    value: 0,
};

/// How many system calls the web server may make.
pub fn allowed() -> usize {
    ALLOWED.len()
}

/// The allow list: each call seen under `strace -f` (docs/design.md §5
/// has the run), except the three marked "not seen", kept for paths the
/// run could not reach.
const ALLOWED: &[Allowed] = &[
    // Connections and the channel (std reads and writes sockets with
    // recv and send, hyper writes responses with writev), the log.
    (
        "recvfrom",
        libc::SYS_recvfrom,
        "reading connections and the channel",
        Only::Any,
    ),
    (
        "sendto",
        libc::SYS_sendto,
        "writing them (MSG_NOSIGNAL)",
        Only::Any,
    ),
    ("writev", libc::SYS_writev, "hyper's responses", Only::Any),
    (
        "write",
        libc::SYS_write,
        "the log (standard error), tokio's eventfd",
        Only::Any,
    ),
    (
        "accept4",
        libc::SYS_accept4,
        "the inherited listening socket",
        Only::Any,
    ),
    (
        "shutdown",
        libc::SYS_shutdown,
        "ending a connection (never the listening socket)",
        Only::NotListener,
    ),
    ("close", libc::SYS_close, "closing one", Only::Any),
    (
        "setsockopt",
        libc::SYS_setsockopt,
        "SO_SNDBUF of a connection, nothing else",
        Only::SocketOption(libc::SO_SNDBUF as u64),
    ),
    (
        "fcntl",
        libc::SYS_fcntl,
        "F_GETFD: the standard library's check of a descriptor it takes",
        Only::OneOf {
            arg: 1,
            values: &[libc::F_GETFD as u64],
        },
    ),
    // tokio's event loop.
    // glibc's epoll_wait is epoll_wait on x86_64; musl's (the release
    // binary) is epoll_pwait, as every C library's is on aarch64, which
    // has no epoll_wait.
    #[cfg(target_arch = "x86_64")]
    (
        "epoll_wait",
        libc::SYS_epoll_wait,
        "the event loop (glibc)",
        Only::Any,
    ),
    (
        "epoll_pwait",
        libc::SYS_epoll_pwait,
        "the event loop",
        Only::Any,
    ),
    (
        "epoll_ctl",
        libc::SYS_epoll_ctl,
        "registering connections",
        Only::Any,
    ),
    (
        "futex",
        libc::SYS_futex,
        "locks, and waking the event loop",
        Only::Any,
    ),
    ("getrandom", libc::SYS_getrandom, "TLS", Only::Any),
    (
        "clock_gettime",
        libc::SYS_clock_gettime,
        "not seen: the vDSO answers, except on a clock source it cannot read",
        Only::Any,
    ),
    (
        "restart_syscall",
        libc::SYS_restart_syscall,
        "not seen: a timed wait resumed after SIGSTOP and SIGCONT",
        Only::Any,
    ),
    // Memory, never executable: a compromised server cannot map code.
    (
        "mmap",
        libc::SYS_mmap,
        "memory, thread stacks (never executable)",
        NOT_EXEC,
    ),
    (
        "mprotect",
        libc::SYS_mprotect,
        "guard pages (never executable)",
        NOT_EXEC,
    ),
    ("munmap", libc::SYS_munmap, "freeing memory", Only::Any),
    (
        "madvise",
        libc::SYS_madvise,
        "returning a thread's stack",
        Only::Any,
    ),
    ("brk", libc::SYS_brk, "the heap", Only::Any),
    (
        "mremap",
        libc::SYS_mremap,
        "not seen: growing a buffer past 128 KiB (glibc's realloc)",
        Only::Any,
    ),
    // Threads (tokio's blocking pool: bcrypt), never another process.
    (
        "clone",
        libc::SYS_clone,
        "threads only (CLONE_THREAD)",
        Only::Masked {
            arg: 0,
            mask: libc::CLONE_THREAD as u64,
            value: libc::CLONE_THREAD as u64,
        },
    ),
    (
        "clone3",
        libc::SYS_clone3,
        "answered ENOSYS by the first filter: glibc then uses clone",
        Only::Any,
    ),
    (
        "set_robust_list",
        libc::SYS_set_robust_list,
        "a new thread",
        Only::Any,
    ),
    (
        "rseq",
        libc::SYS_rseq,
        "a new thread (glibc 2.35+)",
        Only::Any,
    ),
    (
        "sigaltstack",
        libc::SYS_sigaltstack,
        "a thread's stack-overflow handler",
        Only::Any,
    ),
    (
        "rt_sigprocmask",
        libc::SYS_rt_sigprocmask,
        "a new thread's signal mask",
        Only::Any,
    ),
    (
        "rt_sigaction",
        libc::SYS_rt_sigaction,
        "glibc's own signal (SIGSETXID, 33), set up with the first thread",
        Only::OneOf {
            arg: 0,
            values: &[33],
        },
    ),
    (
        "prctl",
        libc::SYS_prctl,
        "PR_SET_NAME: naming a thread, nothing else",
        Only::OneOf {
            arg: 0,
            values: &[libc::PR_SET_NAME as u64],
        },
    ),
    (
        "sched_getaffinity",
        libc::SYS_sched_getaffinity,
        "sizing the blocking pool",
        Only::Any,
    ),
    ("gettid", libc::SYS_gettid, "a new thread", Only::Any),
    ("exit", libc::SYS_exit, "a thread's end", Only::Any),
    ("exit_group", libc::SYS_exit_group, "the end", Only::Any),
];

fn rules(only: Only, listener: RawFd) -> Result<Vec<SeccompRule>> {
    let condition = |arg: u8, op, value| {
        SeccompCondition::new(arg, SeccompCmpArgLen::Qword, op, value)
            .context("a seccomp condition")
    };
    let rule = |conditions| SeccompRule::new(conditions).context("a seccomp rule");
    Ok(match only {
        Only::Any => Vec::new(),
        Only::NotListener => vec![rule(vec![condition(
            0,
            SeccompCmpOp::Ne,
            listener as u64,
        )?])?],
        Only::SocketOption(name) => vec![rule(vec![
            condition(1, SeccompCmpOp::Eq, libc::SOL_SOCKET as u64)?,
            condition(2, SeccompCmpOp::Eq, name)?,
        ])?],
        Only::Masked { arg, mask, value } => vec![
            SeccompRule::new(vec![condition(arg, SeccompCmpOp::MaskedEq(mask), value)?])
                .context("a seccomp rule")?,
        ],
        Only::OneOf { arg, values } => values
            .iter()
            .map(|v| {
                SeccompRule::new(vec![condition(arg, SeccompCmpOp::Eq, *v)?])
                    .context("a seccomp rule")
            })
            .collect::<Result<_>>()?,
    })
}

/// The two filters: clone3 answered ENOSYS (its flags are in memory, out
/// of a filter's reach; glibc then uses clone, whose flags it can check),
/// and the allow list, anything else killing the process. The kernel runs
/// both and takes the stricter answer. `listener`: the inherited listening
/// socket's descriptor.
fn filters(listener: RawFd) -> Result<[BpfProgram; 2]> {
    let clone3 = SeccompFilter::new(
        BTreeMap::from([(libc::SYS_clone3, Vec::new())]),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        ARCH,
    )
    .context("the clone3 filter")?;
    let mut allowed = BTreeMap::new();
    for (name, nr, _, only) in ALLOWED {
        allowed.insert(
            *nr,
            rules(*only, listener).with_context(|| format!("the rule of {name}"))?,
        );
    }
    let list = SeccompFilter::new(
        allowed,
        SeccompAction::KillProcess,
        SeccompAction::Allow,
        ARCH,
    )
    .context("the allow list")?;
    Ok([
        clone3.try_into().context("compiling the clone3 filter")?,
        list.try_into().context("compiling the allow list")?,
    ])
}

/// Puts the calling process under the filter (with `no_new_privs`), for
/// good: it applies to every thread started from now on, and cannot be
/// lifted. Call before starting any thread; `listener` is the inherited
/// listening socket's descriptor.
pub fn apply(listener: RawFd) -> Result<()> {
    for filter in filters(listener)? {
        seccompiler::apply_filter(&filter).context("installing the seccomp filter")?;
    }
    Ok(())
}

/// Whether the kernel has seccomp filters that can kill a process.
pub fn supported() -> bool {
    let action: u32 = libc::SECCOMP_RET_KILL_PROCESS;
    // SAFETY: seccomp(SECCOMP_GET_ACTION_AVAIL) reads the u32 it is given.
    unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_GET_ACTION_AVAIL,
            0,
            &raw const action,
        ) == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_list_compiles_names_each_call_once_and_opens_nothing() {
        let programs = filters(3).unwrap();
        assert!(programs.iter().all(|p| !p.is_empty()));
        let mut names: Vec<&str> = ALLOWED.iter().map(|a| a.0).collect();
        names.sort_unstable();
        let before = names.len();
        names.dedup();
        assert_eq!(names.len(), before, "a call listed twice");
        for never in [
            "open",
            "openat",
            "openat2",
            "socket",
            "connect",
            "bind",
            "listen",
            "execve",
            "execveat",
            "ptrace",
            "kill",
            "tgkill",
            "fork",
            "vfork",
            "bpf",
            "setuid",
            "process_vm_readv",
        ] {
            assert!(!names.contains(&never), "{never} is allowed");
        }
        assert!(supported(), "this kernel has seccomp filters");
    }

    /// Each call in a child process of its own (forked: a filter is for
    /// good, and the child makes only system calls until it exits): what
    /// the filter lets through, what it answers ENOSYS, what kills.
    #[test]
    fn the_filter_kills_what_it_does_not_list() {
        const KILLED: i32 = -1;
        // Standard error stands for the listening socket.
        let filters = filters(2).unwrap();
        let path = c"/etc/passwd";
        type Call = Box<dyn Fn() -> libc::c_long>;
        let calls: [(&str, Call, i32); 13] = [
            // SAFETY (each): a system call on integers and static memory.
            (
                "write",
                Box::new(|| unsafe { libc::syscall(libc::SYS_write, 2, c"".as_ptr(), 0) }),
                0,
            ),
            (
                "getrandom",
                Box::new(|| unsafe {
                    let mut b = [0u8; 8];
                    libc::syscall(libc::SYS_getrandom, b.as_mut_ptr(), 8, 0) - 8
                }),
                0,
            ),
            (
                "clone3",
                Box::new(|| unsafe { libc::syscall(libc::SYS_clone3, 0, 0) }),
                libc::ENOSYS,
            ),
            (
                "openat",
                Box::new(|| unsafe {
                    libc::syscall(
                        libc::SYS_openat,
                        libc::AT_FDCWD,
                        path.as_ptr(),
                        libc::O_RDONLY,
                    )
                }),
                KILLED,
            ),
            (
                "socket",
                Box::new(|| unsafe {
                    libc::syscall(libc::SYS_socket, libc::AF_INET, libc::SOCK_STREAM, 0)
                }),
                KILLED,
            ),
            (
                "an executable mapping",
                Box::new(|| unsafe {
                    libc::syscall(
                        libc::SYS_mmap,
                        0,
                        4096,
                        libc::PROT_READ | libc::PROT_EXEC,
                        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                        -1,
                        0,
                    )
                }),
                KILLED,
            ),
            (
                "a process (clone without CLONE_THREAD)",
                Box::new(|| unsafe { libc::syscall(libc::SYS_clone, libc::SIGCHLD, 0, 0, 0, 0) }),
                KILLED,
            ),
            (
                "kill",
                Box::new(|| unsafe { libc::syscall(libc::SYS_kill, 1, 0) }),
                KILLED,
            ),
            (
                "setsockopt(SO_RCVBUF)",
                Box::new(|| unsafe {
                    libc::syscall(
                        libc::SYS_setsockopt,
                        0,
                        libc::SOL_SOCKET,
                        libc::SO_RCVBUF,
                        0,
                        0,
                    )
                }),
                KILLED,
            ),
            (
                "setsockopt(SO_SNDBUF) at another level",
                Box::new(|| unsafe {
                    libc::syscall(
                        libc::SYS_setsockopt,
                        0,
                        libc::IPPROTO_TCP,
                        libc::SO_SNDBUF,
                        0,
                        0,
                    )
                }),
                KILLED,
            ),
            (
                "shutdown of another descriptor (none open: the kernel's answer)",
                Box::new(|| unsafe { libc::syscall(libc::SYS_shutdown, 999, libc::SHUT_RDWR) }),
                libc::EBADF,
            ),
            (
                "shutdown of the listening socket",
                Box::new(|| unsafe { libc::syscall(libc::SYS_shutdown, 2, libc::SHUT_RDWR) }),
                KILLED,
            ),
            (
                "prctl(PR_SET_DUMPABLE)",
                Box::new(|| unsafe {
                    libc::syscall(libc::SYS_prctl, libc::PR_SET_DUMPABLE, 1, 0, 0, 0)
                }),
                KILLED,
            ),
        ];
        for (what, call, expected) in calls {
            // SAFETY: the child makes system calls only, then _exit.
            let pid = unsafe { libc::fork() };
            assert!(pid >= 0, "fork");
            if pid == 0 {
                let code = match filters.iter().all(|f| seccompiler::apply_filter(f).is_ok()) {
                    false => 100,
                    true => match call() {
                        r if r >= 0 => 0,
                        // SAFETY: errno of this thread.
                        _ => unsafe { *libc::__errno_location() },
                    },
                };
                // SAFETY: ends the child at once.
                unsafe { libc::_exit(code) };
            }
            let mut status = 0;
            // SAFETY: our child, the status on the stack.
            assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
            let got = if libc::WIFSIGNALED(status) {
                assert_eq!(libc::WTERMSIG(status), libc::SIGSYS, "{what}");
                KILLED
            } else {
                libc::WEXITSTATUS(status)
            };
            assert_eq!(got, expected, "{what}");
        }
    }
}
