//! Everything the agent reads from /proc, in one place, through the `procfs`
//! crate: typed results, and "the process exited" told apart from
//! "permission denied" by the error's kind, never by its message.

use std::{collections::HashMap, path::PathBuf};

use procfs::{
    ProcError,
    process::{FDTarget, MMapPath, Process},
};

/// Why something could not be read about a process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Unreadable {
    /// The process is gone (or its pid now names another process).
    Exited,
    /// The agent may not look (CAP_SYS_PTRACE, a different user namespace).
    Denied(String),
    Other(String),
}

impl std::fmt::Display for Unreadable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unreadable::Exited => f.write_str("the process exited"),
            Unreadable::Denied(what) => write!(f, "{what}: permission denied"),
            Unreadable::Other(e) => f.write_str(e),
        }
    }
}

impl std::error::Error for Unreadable {}

impl From<ProcError> for Unreadable {
    fn from(e: ProcError) -> Self {
        let path =
            |p: Option<PathBuf>| p.map_or_else(|| "/proc".into(), |p| p.display().to_string());
        match e {
            ProcError::NotFound(_) => Unreadable::Exited,
            ProcError::PermissionDenied(p) => Unreadable::Denied(format!("reading {}", path(p))),
            other => Unreadable::Other(other.to_string()),
        }
    }
}

pub type Result<T> = std::result::Result<T, Unreadable>;

/// A live process, opened once; each read may still find it gone.
pub struct Proc(Process);

/// One line of /proc/<pid>/maps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    /// Offset in the file of `start`.
    pub offset: u64,
    /// Device (major, minor) and inode of the file: 0 for anonymous memory.
    pub dev: (u32, u32),
    pub inode: u64,
    /// The path as the process sees it (inside its mount namespace), or a
    /// pseudo name such as `[vdso]`.
    pub path: String,
}

impl Mapping {
    /// A file the process mapped, as opposed to `[vdso]`, `[heap]` etc.
    pub fn is_file(&self) -> bool {
        self.inode != 0 && self.path.starts_with('/')
    }

    /// The file's name without its directory.
    pub fn name(&self) -> &str {
        self.path.rsplit('/').next().unwrap_or(&self.path)
    }

    pub fn file_offset(&self, addr: u64) -> u64 {
        addr - self.start + self.offset
    }
}

/// What identifies a process at a moment: its start time tells a reused pid.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub exe: Result<String>,
    /// cgroup v2 path (the `0::` line), when it has one.
    pub cgroup: Option<String>,
}

impl Proc {
    pub fn open(pid: u32) -> Result<Self> {
        Ok(Self(Process::new(pid as i32)?))
    }

    /// Process `pid` if it is still the one the kernel saw start at
    /// `start_boot_ns` (ns since boot; 0 when unknown, and then not checked):
    /// another start time means the pid now names another process.
    pub fn open_started(pid: u32, start_boot_ns: u64) -> Result<Self> {
        let p = Self::open(pid)?;
        if start_boot_ns != 0 {
            // The kernel's start time in clock ticks, as /proc shows it.
            let ticks = start_boot_ns / (1_000_000_000 / ticks_per_second());
            if p.start_ticks()? != ticks {
                return Err(Unreadable::Exited);
            }
        }
        Ok(p)
    }

    /// When the process started, in clock ticks since boot (`stat` field 22).
    fn start_ticks(&self) -> Result<u64> {
        Ok(self.0.stat()?.starttime)
    }

    pub fn identity(&self) -> Identity {
        let exe = self
            .0
            .exe()
            .map(|p| p.to_string_lossy().into_owned())
            .map_err(Unreadable::from);
        let cgroup = self.0.cgroups().ok().and_then(|groups| {
            groups
                .into_iter()
                .find(|g| g.hierarchy == 0)
                .map(|g| g.pathname)
        });
        Identity { exe, cgroup }
    }

    /// The process's socket fds by socket inode.
    pub fn socket_fds(&self) -> HashMap<u64, i32> {
        let Ok(fds) = self.0.fd() else {
            return HashMap::new();
        };
        fds.flatten()
            .filter_map(|fd| match fd.target {
                FDTarget::Socket(inode) => Some((inode, fd.fd)),
                _ => None,
            })
            .collect()
    }

    /// The process's memory mappings (`maps`).
    pub fn mappings(&self) -> Result<Vec<Mapping>> {
        Ok(self
            .0
            .maps()?
            .into_iter()
            .map(|m| Mapping {
                start: m.address.0,
                end: m.address.1,
                offset: m.offset,
                dev: (m.dev.0 as u32, m.dev.1 as u32),
                inode: m.inode,
                path: match m.pathname {
                    MMapPath::Path(p) => p.to_string_lossy().into_owned(),
                    MMapPath::Vdso => "[vdso]".into(),
                    MMapPath::Heap => "[heap]".into(),
                    MMapPath::Stack => "[stack]".into(),
                    MMapPath::Other(s) => s,
                    _ => String::new(),
                },
            })
            .collect())
    }
}

/// A file as process `pid` sees it (through its root: inside a container,
/// the container's file).
pub fn in_root(pid: u32, path: &str) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/root{path}"))
}

/// Whether `pid` still runs.
pub fn alive(pid: u32) -> bool {
    Process::new(pid as i32).is_ok_and(|p| p.is_alive())
}

/// Whether this host has IPv6 (`ipv6.disable=1` leaves no
/// /proc/net/if_inet6).
pub fn ipv6_enabled() -> bool {
    std::path::Path::new("/proc/net/if_inet6").exists()
}

/// The host's name, for findings' `node` when none is given.
pub fn hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
}

/// Clock ticks per second, the unit of [`Proc::start_ticks`].
fn ticks_per_second() -> u64 {
    procfs::ticks_per_second()
}

/// Where cgroup v2 is mounted (/sys/fs/cgroup, or /sys/fs/cgroup/unified on
/// hybrid hosts), from the agent's own mounts.
pub fn cgroup2_root() -> anyhow::Result<PathBuf> {
    use anyhow::Context as _;
    let mounts = Process::myself()
        .and_then(|me| me.mountinfo())
        .context("reading /proc/self/mountinfo")?;
    mounts
        .into_iter()
        .find(|m| m.fs_type == "cgroup2")
        .map(|m| m.mount_point)
        .context(
            "no cgroup v2 filesystem mounted (see /proc/mounts); mount one with: \
             mount -t cgroup2 none /sys/fs/cgroup",
        )
}

/// What a process uses of the machine, as exporters report it of
/// themselves (the `process_*` metrics).
#[derive(Clone, Debug, PartialEq)]
pub struct Usage {
    /// User and system CPU time.
    pub cpu_seconds: f64,
    pub resident_bytes: u64,
    pub virtual_bytes: u64,
    /// Since the Unix epoch.
    pub start_time_seconds: f64,
    pub open_fds: u64,
}

/// Since boot, read once for the process (procfs keeps it per thread, and
/// the metrics are made on whichever blocking thread is free).
fn boot_time() -> f64 {
    static BOOT: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *BOOT.get_or_init(|| procfs::boot_time_secs().unwrap_or(0)) as f64
}

/// This process's [`Usage`], cheaply: getrusage(2) and statm, which cost a
/// tenth of parsing its stat (the collector's is slow to make: ~20 µs
/// against 2 µs here, with its threads and BPF descriptors).
pub fn own_usage() -> Result<Usage> {
    static START: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    let me = Process::myself()?;
    let start = match START.get() {
        Some(start) => *start,
        None => {
            let ticks = procfs::ticks_per_second() as f64;
            *START.get_or_init(|| {
                me.stat()
                    .map_or(0.0, |s| boot_time() + s.starttime as f64 / ticks)
            })
        }
    };
    // SAFETY: getrusage fills the struct it is given.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut ru);
        ru
    };
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    let statm = me.statm()?;
    Ok(Usage {
        cpu_seconds: seconds(ru.ru_utime) + seconds(ru.ru_stime),
        resident_bytes: statm.resident * procfs::page_size(),
        virtual_bytes: statm.size * procfs::page_size(),
        start_time_seconds: start,
        open_fds: me.fd_count()? as u64,
    })
}

impl Proc {
    pub fn usage(&self) -> Result<Usage> {
        let stat = self.0.stat()?;
        let ticks = procfs::ticks_per_second() as f64;
        Ok(Usage {
            cpu_seconds: (stat.utime + stat.stime) as f64 / ticks,
            resident_bytes: stat.rss * procfs::page_size(),
            virtual_bytes: stat.vsize,
            start_time_seconds: boot_time() + stat.starttime as f64 / ticks,
            open_fds: self.0.fd_count()? as u64,
        })
    }

    /// The soft limit of open files; None when unlimited.
    pub fn max_fds(&self) -> Result<Option<u64>> {
        Ok(match self.0.limits()?.max_open_files.soft_limit {
            procfs::process::LimitValue::Value(n) => Some(n),
            procfs::process::LimitValue::Unlimited => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd;

    use super::*;

    #[test]
    fn this_process_and_a_gone_one() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let inode = std::os::unix::fs::MetadataExt::ino(
            &std::fs::metadata(format!("/proc/self/fd/{}", listener.as_raw_fd())).unwrap(),
        );
        let me = Proc::open(std::process::id()).unwrap();
        let identity = me.identity();
        assert_eq!(
            identity.exe.as_deref().ok(),
            std::env::current_exe()
                .ok()
                .as_deref()
                .and_then(|p| p.to_str())
        );
        assert!(identity.cgroup.is_some_and(|c| c.starts_with('/')));
        assert_eq!(me.socket_fds().get(&inode), Some(&listener.as_raw_fd()));
        assert!(me.start_ticks().unwrap() > 0);
        assert!(
            me.mappings()
                .unwrap()
                .iter()
                .any(|m| m.name().starts_with("libc"))
        );
        let usage = me.usage().unwrap();
        let own = own_usage().unwrap();
        assert_eq!(
            own.start_time_seconds.round(),
            usage.start_time_seconds.round()
        );
        assert!(own.resident_bytes > 0 && own.open_fds > 2, "{own:?}");
        assert!(usage.open_fds > 2 && usage.resident_bytes > 0 && usage.cpu_seconds >= 0.0);
        assert!(me.max_fds().unwrap().is_some_and(|n| n >= usage.open_fds));
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!(usage.start_time_seconds > now - 3600.0 && usage.start_time_seconds <= now + 1.0);
        assert!(matches!(Proc::open(u32::MAX >> 1), Err(Unreadable::Exited)));
        assert!(alive(std::process::id()) && !alive(u32::MAX >> 1));
    }

    #[test]
    fn cgroup2_is_mounted_here() {
        assert!(cgroup2_root().unwrap().is_dir());
    }
}
