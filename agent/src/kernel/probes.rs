//! The probe table: every thing the agent observes in the kernel, the ways
//! it can observe it in order of preference, and whether the agent can run
//! without it. Attaching, `sockerr check` and `sockerr_probe_attached` all
//! read this table; a new probe or a new fallback is one entry here (and
//! its program in `ebpf/src/probes/`).

/// How a program is attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attach {
    /// A BTF tracepoint (`tp_btf/<name>`).
    TpBtf(&'static str),
    /// fentry on a kernel function (needs BPF trampolines).
    FEntry(&'static str),
    /// fexit on a kernel function (its return value; BPF trampolines).
    FExit(&'static str),
    /// A kprobe on a kernel function (needs CONFIG_KPROBES).
    KProbe(&'static str),
    /// `cgroup/getsockopt` on the cgroup v2 root.
    CgroupGetsockopt,
    /// The same, built for kernels that refuse task helpers there (5.10):
    /// reads are attributed to the process that made the connect, and
    /// carry no call sites.
    CgroupGetsockoptCompat,
    /// `cgroup/sock_release` on the cgroup v2 root (Linux ≥ 5.9).
    CgroupSockRelease,
}

impl std::fmt::Display for Attach {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Attach::TpBtf(tp) => write!(f, "tp_btf/{tp}"),
            Attach::FEntry(func) => write!(f, "fentry/{func}"),
            Attach::FExit(func) => write!(f, "fexit/{func}"),
            Attach::KProbe(func) => write!(f, "kprobe/{func}"),
            Attach::CgroupGetsockopt => f.write_str("cgroup/getsockopt"),
            Attach::CgroupGetsockoptCompat => f.write_str("cgroup/getsockopt-compat"),
            Attach::CgroupSockRelease => f.write_str("cgroup/sock_release"),
        }
    }
}

/// One way to observe something: a program of the eBPF object and where it
/// attaches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hook {
    pub program: &'static str,
    pub attach: Attach,
}

#[derive(Debug)]
pub struct Probe {
    /// The `probe` label of `sockerr_probe_attached`, and its name in `check`.
    pub name: &'static str,
    /// What it observes, and what is lost without it.
    pub observes: &'static str,
    /// Without a required probe the agent refuses to start.
    pub required: bool,
    /// Tried in order; the first that loads and attaches is used.
    pub hooks: &'static [Hook],
}

const fn hook(program: &'static str, attach: Attach) -> Hook {
    Hook { program, attach }
}

pub const PROBES: &[Probe] = &[
    Probe {
        name: "connect",
        observes: "connect attempts and their outcomes (TCP state changes); everything depends on it",
        required: true,
        hooks: &[hook(
            "inet_sock_set_state",
            Attach::TpBtf("inet_sock_set_state"),
        )],
    },
    Probe {
        name: "so_error",
        observes: "the SO_ERROR values processes read: so_error_masked and so_error_reread",
        required: true,
        hooks: &[
            hook("so_error", Attach::CgroupGetsockopt),
            hook("so_error_compat", Attach::CgroupGetsockoptCompat),
        ],
    },
    Probe {
        name: "connect_errors",
        observes: "connect() calls that fail before the handshake starts (no route: \
                   ENETUNREACH, EHOSTUNREACH; a policy: EPERM, EACCES), counted as failed attempts",
        required: false,
        hooks: &[hook(
            "inet_stream_connect",
            Attach::FExit("inet_stream_connect"),
        )],
    },
    // fentry first, for sends and receives: tcp_sendmsg and tcp_recvmsg are
    // TCP's own, so UDP, Unix and every other socket's I/O runs no program
    // at all; the tracepoints fire for every socket's I/O, each firing a
    // program run even when it leaves at once (docs/design.md §2).
    Probe {
        name: "send",
        observes: "sends on sockets whose connect failed: io_after_failed_connect",
        required: false,
        hooks: &[
            hook("tcp_sendmsg_fentry", Attach::FEntry("tcp_sendmsg")),
            hook("sock_send_length", Attach::TpBtf("sock_send_length")),
            hook("tcp_sendmsg_kprobe", Attach::KProbe("tcp_sendmsg")),
        ],
    },
    Probe {
        name: "recv",
        observes: "receives on sockets whose connect failed: io_after_failed_connect",
        required: false,
        hooks: &[
            hook("tcp_recvmsg_fentry", Attach::FEntry("tcp_recvmsg")),
            hook("sock_recv_length", Attach::TpBtf("sock_recv_length")),
            hook("tcp_recvmsg_kprobe", Attach::KProbe("tcp_recvmsg")),
        ],
    },
    Probe {
        name: "release",
        observes: "sockets closed by their process, whose attempts it then forgets \
                   (without it they age out of the attempts map instead)",
        required: false,
        hooks: &[hook("sock_release", Attach::CgroupSockRelease)],
    },
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_every_probe_has_a_hook() {
        let mut names: Vec<_> = PROBES.iter().map(|p| p.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), PROBES.len());
        let mut programs: Vec<_> = PROBES
            .iter()
            .flat_map(|p| p.hooks)
            .map(|h| h.program)
            .collect();
        let n = programs.len();
        programs.sort();
        programs.dedup();
        assert_eq!(programs.len(), n, "a program serves one probe");
        assert!(PROBES.iter().all(|p| !p.hooks.is_empty()));
    }
}
