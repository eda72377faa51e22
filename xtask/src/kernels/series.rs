//! The kernel series the matrix boots, where each comes from, and the hooks
//! the agent must pick on each.

use anyhow::{Context as _, Result};

/// A kernel series the matrix boots: the cloud flavour (no modules needed,
/// BTF built in) of the newest Debian package in `suites`.
pub struct Series {
    pub name: &'static str,
    pub suites: &'static [&'static str],
    pub from: &'static str,
    /// The hooks the agent must pick there for the probes whose hook
    /// depends on the kernel: (so_error, send, recv), as `sockerr check`
    /// names them (the README's tested-kernels table).
    pub hooks: [&'static str; 3],
}

/// fentry on the TCP send/receive functions: before 6.3's tracepoints.
const FENTRY_IO: [&str; 2] = ["fentry/tcp_sendmsg", "fentry/tcp_recvmsg"];

pub const SERIES: &[Series] = &[
    Series {
        name: "5.10",
        suites: &["bullseye", "bullseye-security"],
        from: "Debian 11 bullseye",
        hooks: ["cgroup/getsockopt-compat", FENTRY_IO[0], FENTRY_IO[1]],
    },
    Series {
        name: "6.1",
        suites: &["bookworm", "bookworm-security"],
        from: "Debian 12 bookworm",
        hooks: ["cgroup/getsockopt", FENTRY_IO[0], FENTRY_IO[1]],
    },
    Series {
        name: "6.12",
        suites: &["bookworm-backports"],
        from: "Debian 12 bookworm-backports",
        hooks: [
            "cgroup/getsockopt",
            "tp_btf/sock_send_length",
            "tp_btf/sock_recv_length",
        ],
    },
];

/// The kernels of the series named (all when empty).
pub fn select(names: &[String]) -> Result<Vec<&'static Series>> {
    if names.is_empty() {
        return Ok(SERIES.iter().collect());
    }
    names
        .iter()
        .map(|n| {
            SERIES.iter().find(|s| s.name == n).with_context(|| {
                format!(
                    "no kernel series {n}; the matrix has {}",
                    SERIES.iter().map(|s| s.name).collect::<Vec<_>>().join(", ")
                )
            })
        })
        .collect()
}
