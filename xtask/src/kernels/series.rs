//! The kernel series the matrix boots, where each comes from, and the hooks
//! the agent must pick on each.

use anyhow::Result;

use crate::arch::Arch;

/// A kernel series the matrix boots: the cloud flavour (no modules needed,
/// BTF built in) of the newest Debian package in `suites`.
pub struct Series {
    /// Its row in the table and its directory in the cache: the version
    /// for amd64, `arm64-<version>` for arm64.
    pub name: &'static str,
    /// The kernel version: Debian's packages are linux-image-<version>.*.
    pub version: &'static str,
    pub arch: Arch,
    pub suites: &'static [&'static str],
    pub from: &'static str,
    /// The hooks the agent must pick there for the probes whose hook
    /// depends on the kernel, as `sockerr check` names them (the README's
    /// tested-kernels table).
    pub hooks: Hooks,
    /// Whether the matrix also runs it with sends and receives forced
    /// through kprobes (the `/kprobes` row): not where they are kprobes
    /// already, nor where another series of the same architecture tests
    /// that fallback.
    pub kprobes_row: bool,
    /// Whether SO_ERROR reads carry call sites there, besides the connect:
    /// not where the getsockopt hook may not ask which task runs it.
    pub read_sites: bool,
}

/// `sockerr check`'s hook per probe; `absent` where no hook works.
pub struct Hooks {
    pub so_error: &'static str,
    pub send: &'static str,
    pub recv: &'static str,
    pub connect_errors: &'static str,
}

/// What `sockerr check` says of a probe that no hook of the kernel takes.
pub const ABSENT: &str = "absent";

const FENTRY_IO: [&str; 2] = ["fentry/tcp_sendmsg", "fentry/tcp_recvmsg"];
const KPROBE_IO: [&str; 2] = ["kprobe/tcp_sendmsg", "kprobe/tcp_recvmsg"];
const FEXIT_CONNECT: &str = "fexit/inet_stream_connect";

pub const SERIES: &[Series] = &[
    Series {
        name: "5.10",
        version: "5.10",
        arch: Arch::Amd64,
        suites: &["bullseye", "bullseye-security"],
        from: "Debian 11 bullseye",
        hooks: Hooks {
            so_error: "cgroup/getsockopt-compat",
            send: FENTRY_IO[0],
            recv: FENTRY_IO[1],
            connect_errors: FEXIT_CONNECT,
        },
        kprobes_row: true,
        read_sites: false,
    },
    Series {
        name: "6.1",
        version: "6.1",
        arch: Arch::Amd64,
        suites: &["bookworm", "bookworm-security"],
        from: "Debian 12 bookworm",
        hooks: Hooks {
            so_error: "cgroup/getsockopt",
            send: FENTRY_IO[0],
            recv: FENTRY_IO[1],
            connect_errors: FEXIT_CONNECT,
        },
        kprobes_row: true,
        read_sites: true,
    },
    Series {
        name: "6.12",
        version: "6.12",
        arch: Arch::Amd64,
        suites: &["bookworm-backports"],
        from: "Debian 12 bookworm-backports",
        hooks: Hooks {
            so_error: "cgroup/getsockopt",
            send: FENTRY_IO[0],
            recv: FENTRY_IO[1],
            connect_errors: FEXIT_CONNECT,
        },
        kprobes_row: true,
        read_sites: true,
    },
    // arm64's 6.1 has no ftrace direct calls (its config lacks
    // HAVE_DYNAMIC_FTRACE_WITH_DIRECT_CALLS; 6.12's has it), which BPF
    // trampolines on kernel functions need: fentry and fexit attach with
    // 524 (ENOTSUPP), so sends and receives fall back to kprobes (this row
    // tests that fallback on arm64) and connect()'s own errors go uncounted.
    Series {
        name: "arm64-6.1",
        version: "6.1",
        arch: Arch::Arm64,
        suites: &["bookworm", "bookworm-security"],
        from: "Debian 12 bookworm, arm64",
        hooks: Hooks {
            so_error: "cgroup/getsockopt",
            send: KPROBE_IO[0],
            recv: KPROBE_IO[1],
            connect_errors: ABSENT,
        },
        kprobes_row: false,
        read_sites: true,
    },
    Series {
        name: "arm64-6.12",
        version: "6.12",
        arch: Arch::Arm64,
        suites: &["bookworm-backports"],
        from: "Debian 12 bookworm-backports, arm64",
        hooks: Hooks {
            so_error: "cgroup/getsockopt",
            send: FENTRY_IO[0],
            recv: FENTRY_IO[1],
            connect_errors: FEXIT_CONNECT,
        },
        kprobes_row: false,
        read_sites: true,
    },
];

/// The series of `arches` (all when empty) named in `names` (all when
/// empty). A name is a series' own (`6.1`, `arm64-6.1`), or, with
/// `--arch` given, a version (`--arch arm64 --kernel 6.1`).
pub fn select(names: &[String], arches: &[Arch]) -> Result<Vec<&'static Series>> {
    let of_arch: Vec<&'static Series> = SERIES
        .iter()
        .filter(|s| arches.is_empty() || arches.contains(&s.arch))
        .collect();
    if names.is_empty() {
        return Ok(of_arch);
    }
    let mut chosen = Vec::new();
    for n in names {
        let matching: Vec<_> = of_arch
            .iter()
            .filter(|s| s.name == n || (!arches.is_empty() && s.version == n))
            .collect();
        anyhow::ensure!(
            !matching.is_empty(),
            "no kernel series {n}{}; the matrix has {}",
            if arches.is_empty() {
                String::new()
            } else {
                format!(
                    " for {}",
                    arches
                        .iter()
                        .map(|a| a.debian())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            },
            SERIES.iter().map(|s| s.name).collect::<Vec<_>>().join(", ")
        );
        chosen.extend(matching.into_iter().copied());
    }
    Ok(chosen)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selects_by_name_or_by_version_within_an_architecture() {
        let names = |v: Vec<&Series>| v.iter().map(|s| s.name).collect::<Vec<_>>();
        let n = |s: &[&str]| s.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(names(select(&[], &[]).unwrap()).len(), SERIES.len());
        assert_eq!(
            names(select(&[], &[Arch::Arm64]).unwrap()),
            ["arm64-6.1", "arm64-6.12"]
        );
        assert_eq!(names(select(&n(&["6.1"]), &[]).unwrap()), ["6.1"]);
        assert_eq!(
            names(select(&n(&["6.1"]), &[Arch::Arm64]).unwrap()),
            ["arm64-6.1"]
        );
        assert_eq!(
            names(select(&n(&["arm64-6.12", "5.10"]), &[]).unwrap()),
            ["arm64-6.12", "5.10"]
        );
        assert!(select(&n(&["5.10"]), &[Arch::Arm64]).is_err());
        assert!(select(&n(&["4.19"]), &[]).is_err());
    }

    #[test]
    fn names_are_unique_and_say_their_architecture() {
        for s in SERIES {
            assert_eq!(SERIES.iter().filter(|t| t.name == s.name).count(), 1);
            let expected = if s.arch == Arch::Amd64 {
                s.version.to_owned()
            } else {
                format!("{}-{}", s.arch.debian(), s.version)
            };
            assert_eq!(s.name, expected);
        }
    }
}
