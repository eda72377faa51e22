//! Records exchanged between the eBPF programs and the agent. All are
//! `#[repr(C)]`, plain old data, with explicit padding.

use crate::attempt::{Attempt, FindingKind, MAX_READS};

pub const TASK_COMM_LEN: usize = 16;
/// Bytes of an executable's path kept in a finding record (a power of two:
/// the kernel builds the path back to front with masked offsets).
pub const EXE_PATH_LEN: usize = 256;

/// Map, global and program names as the agent loads, sizes, takes and sets
/// them. The eBPF crate cannot use these constants: aya-ebpf's macros name a
/// program or map after its item (or a string literal), and `no_mangle`
/// names a global after its item. What keeps the two sides in step is the
/// agent's unit test of the embedded object (`agent/src/kernel/tests.rs`),
/// which fails on a name one side has and the other lacks.
pub mod names {
    pub const SOCKETS: &str = "SOCKETS";
    pub const FINDINGS: &str = "FINDINGS";
    pub const COUNTERS: &str = "COUNTERS";
    pub const REMOTES: &str = "REMOTES";
    pub const TALLIES: &str = "TALLIES";
    pub const HEALTH: &str = "HEALTH";
    pub const STACKS: &str = "STACKS";
    pub const OFFSETS: &str = "OFFSETS";
    pub const WAKEUP_BYTES: &str = "WAKEUP_BYTES";
    pub const DETAIL_INTERVAL_NS: &str = "DETAIL_INTERVAL_NS";
    pub const BY_CGROUP: &str = "BY_CGROUP";
    pub const WANT_SITES: &str = "WANT_SITES";
    pub const SITES_ON: &str = "SITES_ON";
    pub const COMMS: &str = "COMMS";
    pub const REMOTE_ENDPOINTS: &str = "REMOTE_ENDPOINTS";
    /// The uprobes on the C library's wrappers, attached per process.
    pub const CONNECT_SITE: &str = "connect_site";
    pub const GETSOCKOPT_SITE: &str = "getsockopt_site";
}

/// Default capacity of the `SOCKETS` LRU map (`--kernel.max-attempts`): the
/// attempts of live sockets, each ≈ 150 bytes with the map's own overhead.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 65536;
/// Comms that keep counters of their own (`--metrics.max-comms`); the rest
/// are counted under [`OTHER_COMM`], in the kernel.
pub const DEFAULT_MAX_COMMS: u32 = 100;
/// Remote endpoints that keep counters of their own
/// (`--metrics.max-remotes`); the rest are counted under [`OTHER_REMOTE`].
pub const DEFAULT_MAX_REMOTES: u32 = 100;

/// The comm the kernel counts every comm past `--metrics.max-comms` under.
/// A real comm always ends in NUL within `TASK_COMM_LEN` bytes: this one
/// cannot be a process's.
pub const OTHER_COMM: [u8; TASK_COMM_LEN] = [0xff; TASK_COMM_LEN];
/// The endpoint every remote past `--metrics.max-remotes` is counted
/// under: no address family is 0xffff.
pub const OTHER_REMOTE: Endpoint = Endpoint {
    addr: [0; 16],
    port: 0,
    family: 0xffff,
    _pad: 0,
};

/// Capacity of the `COUNTERS` per-CPU hash map, (comm, counter, detail)
/// keys, for `max_comms` comms and the overflow: a comm has at most a few
/// dozen keys (3 outcomes, the errnos it failed with, 3 read results, 3
/// finding kinds). The agent deletes idle keys once counted.
pub const fn counter_entries(max_comms: u32) -> u32 {
    at_least(max_comms.saturating_add(1).saturating_mul(32), 16384)
}

/// Capacity of the `REMOTES` per-CPU hash map, (endpoint, errno) keys, for
/// `max_remotes` endpoints and the overflow.
pub const fn remote_entries(max_remotes: u32) -> u32 {
    at_least(max_remotes.saturating_add(1).saturating_mul(16), 4096)
}

const fn at_least(n: u32, floor: u32) -> u32 {
    if n > floor { n } else { floor }
}
/// Capacity of the `TALLIES` LRU map: (process, kind) pairs with findings.
pub const TALLY_ENTRIES: u32 = 16384;
/// Capacity of the `SITES` LRU map: attempts of instrumented processes.
pub const SITE_ENTRIES: u32 = 8192;
/// Capacity of the `WANT_SITES` map: processes whose call sites the agent
/// is collecting (at most `--call-sites.max-processes` at once).
pub const WANT_SITES_ENTRIES: u32 = 4096;
/// Ring buffer size for finding records (≈ 300 bytes each).
pub const FINDINGS_RING_BYTES: u32 = 1 << 22;

/// Why a finding was raised: the call that made it visible.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(
    feature = "user",
    derive(strum::FromRepr, strum::IntoStaticStr),
    strum(serialize_all = "snake_case")
)]
pub enum Trigger {
    Getsockopt = 1,
    Send = 2,
    Recv = 3,
}

/// The remote end of a connect attempt, as the kernel saw it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// IPv4 in the first 4 bytes, or IPv6; network byte order.
    pub addr: [u8; 16],
    /// Host byte order.
    pub port: u16,
    /// AF_INET or AF_INET6.
    pub family: u16,
    pub _pad: u32,
}

/// Capacity of the `STACKS` stack trace map, and the frames kept per stack.
pub const STACK_ENTRIES: usize = 4096;
pub const STACK_DEPTH: usize = 32;
/// Capacity of the per-thread map that carries a call site from a uprobe to
/// the kernel hook that runs later in the same system call.
pub const PENDING_SITES: u32 = 8192;

/// The C library wrapper a [`CallSite`] was captured in.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SiteOp {
    Connect = 1,
    Getsockopt = 2,
}

/// Where in a process a C library call was made, captured by a uprobe on the
/// wrapper (only in processes the agent instruments).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CallSite {
    /// Return address into the wrapper's caller, read at the user stack
    /// pointer on entry (the wrapper builds no frame, so a frame-pointer
    /// stack misses its caller); 0 when no site was captured.
    pub ret: u64,
    /// Id of the user stack in `STACKS`, or a negative errno when the stack
    /// could not be taken.
    pub stack_id: i32,
    /// A [`SiteOp`].
    pub op: u32,
}

impl CallSite {
    pub fn captured(&self) -> bool {
        self.ret != 0
    }
}

/// The call sites of one attempt: its connect() and its kept SO_ERROR reads.
/// Kept apart from [`SocketState`] (in `SITES`) because only instrumented
/// processes have them.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CallSites {
    /// [`SocketState::started_ns`] of the attempt these sites belong to.
    pub started_ns: u64,
    pub connect: CallSite,
    pub reads: [CallSite; MAX_READS],
}

/// Per-socket state, keyed by the socket's inode number: the latest attempt
/// and what is known about who made it.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SocketState {
    pub attempt: Attempt,
    /// Thread group of the task that called connect(): whom a finding is
    /// attributed to where the hook cannot ask who is calling (the
    /// getsockopt hook of kernels without task helpers there).
    pub tgid: u32,
    pub remote: Endpoint,
    /// When the attempt started (CLOCK_MONOTONIC): tells its call sites from
    /// those of an earlier attempt on the same socket.
    pub started_ns: u64,
    /// cgroup v2 id of the task that called connect(), when counters are
    /// kept by cgroup (`BY_CGROUP`); 0 otherwise.
    pub cgroup_id: u64,
    /// comm of the task that called connect(), for the counters of an
    /// outcome decided in softirq context.
    pub comm: [u8; TASK_COMM_LEN],
}

/// A finding in full, sent to user space through the `FINDINGS` ring buffer
/// for the first finding of a (process, kind) and then at most once per
/// `DETAIL_INTERVAL_NS`; every finding is counted in `COUNTERS` and
/// `TALLIES` whether or not it gets a record.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct FindingRecord {
    /// CLOCK_BOOTTIME, nanoseconds.
    pub boot_ns: u64,
    /// Inode number of the socket, to find the process's fd for it.
    pub inode: u64,
    /// The process's tally of this kind: when it began (CLOCK_BOOTTIME; it
    /// names the tally, which starts over if evicted) and the findings it
    /// has counted, this one included.
    pub tally_since_ns: u64,
    pub tally_total: u64,
    /// Identity of the task whose call raised the finding, taken in the
    /// kernel so that a process that exits at once is still named: its
    /// cgroup v2 id, and its thread group leader's start time
    /// (CLOCK_BOOTTIME ns; with the pid, it tells a reused pid).
    pub cgroup_id: u64,
    pub start_boot_ns: u64,
    pub tid: u32,
    pub tgid: u32,
    pub errno: i32,
    pub reads: [i32; MAX_READS],
    /// How many decided SO_ERROR reads happened (may exceed `MAX_READS`).
    pub nreads: u8,
    /// A [`FindingKind`].
    pub kind: u8,
    /// A [`Trigger`].
    pub trigger: u8,
    /// 1 when this record began the tally: the agent is woken for it.
    pub first: u8,
    pub remote: Endpoint,
    pub comm: [u8; TASK_COMM_LEN],
    /// The executable's full path, walked in the kernel (`exe_len` bytes
    /// from the start); empty for a kernel thread, or when the hook cannot
    /// read the task.
    pub exe: [u8; EXE_PATH_LEN],
    pub exe_len: u16,
    /// 1 when the path did not fit or was deeper than the walk goes: `exe`
    /// holds its end only.
    pub exe_truncated: u8,
    pub _pad: u8,
    /// Which file the executable is ([`ExeFile`]); zeroed with `exe`.
    pub exe_dev: u32,
    pub exe_file: ExeFile,
    /// Zeroed unless the process was instrumented for call sites.
    pub sites: CallSites,
}

impl FindingRecord {
    pub const fn zeroed() -> Self {
        Self {
            boot_ns: 0,
            inode: 0,
            tally_since_ns: 0,
            tally_total: 0,
            cgroup_id: 0,
            start_boot_ns: 0,
            tid: 0,
            tgid: 0,
            errno: 0,
            reads: [0; MAX_READS],
            nreads: 0,
            kind: 0,
            trigger: 0,
            first: 0,
            remote: Endpoint {
                addr: [0; 16],
                port: 0,
                family: 0,
                _pad: 0,
            },
            comm: [0; TASK_COMM_LEN],
            exe: [0; EXE_PATH_LEN],
            exe_len: 0,
            exe_truncated: 0,
            _pad: 0,
            exe_dev: 0,
            exe_file: ExeFile {
                ino: 0,
                size: 0,
                mtime_sec: 0,
            },
            sites: CallSites {
                started_ns: 0,
                connect: CallSite {
                    ret: 0,
                    stack_id: 0,
                    op: 0,
                },
                reads: [CallSite {
                    ret: 0,
                    stack_id: 0,
                    op: 0,
                }; MAX_READS],
            },
        }
    }

    /// The attempt's part of a record for a `kind` finding.
    pub fn attempt(&mut self, state: &SocketState, kind: FindingKind, trigger: Trigger) {
        let a = &state.attempt;
        self.errno = a.errno();
        self.reads = a.read_slots();
        self.nreads = a.nreads();
        self.kind = kind as u8;
        self.trigger = trigger as u8;
        self.remote = state.remote;
    }
}

/// The executable's file as the kernel knows it: with the device, a file
/// replaced (a new inode) or rewritten in place (a new size or
/// modification time) is another executable.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ExeFile {
    pub ino: u64,
    pub size: i64,
    pub mtime_sec: i64,
}

/// What a `COUNTERS` entry counts.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(strum::FromRepr))]
pub enum Counter {
    /// `sockerr_connect_attempts_total{result="established"}`.
    Established = 0,
    /// `sockerr_connect_attempts_total{result="failed"}` and, by errno
    /// (the key's detail; 0 when the kernel keeps none),
    /// `sockerr_connect_failures_total`.
    Failed = 1,
    /// `sockerr_so_error_reads_total{result=pending|error|zero}`: 2 + [`crate::ReadClass`].
    ReadPending = 2,
    ReadError = 3,
    ReadZero = 4,
    /// `sockerr_connect_attempts_total{result="aborted"}`: closed or shut
    /// down by the process while the outcome was pending.
    Aborted = 5,
    /// `sockerr_findings_total`, by kind (the key's detail).
    Finding = 6,
}

impl Counter {
    pub fn read(class: crate::ReadClass) -> Self {
        match class {
            crate::ReadClass::Pending => Counter::ReadPending,
            crate::ReadClass::Error => Counter::ReadError,
            crate::ReadClass::Zero => Counter::ReadZero,
        }
    }
}

/// Key of the per-CPU `COUNTERS` hash map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CounterKey {
    pub comm: [u8; TASK_COMM_LEN],
    /// cgroup v2 id of the process counted, when counters are kept by
    /// cgroup (for pod labels); 0 otherwise.
    pub cgroup_id: u64,
    /// errno for [`Counter::Failed`], a [`FindingKind`] for
    /// [`Counter::Finding`], 0 otherwise.
    pub detail: u16,
    /// A [`Counter`].
    pub counter: u8,
    pub _pad: [u8; 5],
}

/// Key of the per-CPU `REMOTES` hash map: failed and aborted attempts by
/// remote endpoint.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RemoteKey {
    pub remote: Endpoint,
    /// errno of a failure (0 when the kernel keeps none); 0 when aborted.
    pub errno: i32,
    /// 1 for an aborted attempt.
    pub aborted: u8,
    pub _pad: [u8; 3],
}

/// Key of the `TALLIES` LRU map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TallyKey {
    pub tgid: u32,
    /// A [`FindingKind`].
    pub kind: u8,
    pub _pad: [u8; 3],
}

/// The findings of one kind of one process, counted in the kernel so that a
/// process flagged on every connect costs one map update per finding, not a
/// record and a wake-up.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// Findings since `since_ns` (added atomically: threads of a process run
    /// on several CPUs).
    pub total: u64,
    /// When the tally began (CLOCK_BOOTTIME): it names the tally.
    pub since_ns: u64,
    /// The latest finding (CLOCK_BOOTTIME).
    pub last_ns: u64,
    /// The latest finding record sent (CLOCK_BOOTTIME).
    pub record_ns: u64,
}

/// Indexes of the per-CPU `HEALTH` array: what the kernel side did and
/// could not do.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(
    feature = "user",
    derive(strum::EnumIter, strum::EnumCount, strum::IntoStaticStr),
    strum(serialize_all = "snake_case")
)]
pub enum Health {
    /// Finding records sent to the agent (the findings themselves are
    /// counted by kind and comm in `COUNTERS`).
    RecordsSent = 0,
    /// Finding records dropped because the ring buffer was full (the
    /// findings themselves are still counted).
    RecordsLost = 1,
    /// An attempt could not be recorded in `SOCKETS`.
    StorageUnavailable = 2,
    /// Counter updates dropped because `COUNTERS` was full (its capacity
    /// holds every admitted comm: only with counters kept by cgroup).
    CountersFull = 3,
    /// An outcome, `SO_ERROR` read or I/O on a connecting or failed socket
    /// whose attempt is no longer in `SOCKETS` (evicted): not judged.
    AttemptUntracked = 4,
    /// Remote endpoint counts dropped because `REMOTES` was full.
    RemotesFull = 5,
}

pub const HEALTH_SLOTS: u32 = 6;

/// Offsets of the kernel struct fields the probes read, resolved from
/// /sys/kernel/btf/vmlinux by the agent (Rust eBPF has no CO-RE relocations)
/// and set as a read-only global at load time.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    /// `struct sock_common`, through `struct sock.__sk_common`.
    pub skc_family: u32,
    pub skc_state: u32,
    pub skc_daddr: u32,
    pub skc_dport: u32,
    /// The local port; 0 until connect() found one.
    pub skc_num: u32,
    pub skc_v6_daddr: u32,
    /// `struct sock`: `sk_type` and `sk_protocol` (u16 each since Linux
    /// 5.6) tell a TCP socket from every other kind.
    pub sk_type: u32,
    pub sk_protocol: u32,
    pub sk_err: u32,
    pub sk_err_soft: u32,
    pub sk_socket: u32,
    /// `struct socket.state`: `SS_CONNECTING` once connect() has started
    /// the handshake, `SS_UNCONNECTED` while it is still inside connect().
    pub socket_state: u32,
    /// From a `struct socket *` to its inode number: `struct socket_alloc`
    /// puts the socket and its `vfs_inode` side by side.
    pub socket_to_ino: u32,
    /// `struct task_struct`.
    pub task_group_leader: u32,
    pub task_start_boottime: u32,
    pub task_mm: u32,
    /// `struct mm_struct.exe_file`.
    pub mm_exe_file: u32,
    /// `struct file.f_path`: its `mnt` and `dentry`.
    pub file_mnt: u32,
    pub file_dentry: u32,
    /// `struct dentry`: `d_name.name`, `d_name.len`, `d_parent`.
    pub dentry_name: u32,
    pub dentry_name_len: u32,
    pub dentry_parent: u32,
    /// `struct vfsmount.mnt_root`.
    pub vfsmount_root: u32,
    /// `struct mount` (fs/mount.h): the `struct vfsmount` it embeds, the
    /// mount it is mounted on and the dentry it is mounted at.
    pub mount_mnt: u32,
    pub mount_parent: u32,
    pub mount_mountpoint: u32,
    /// `struct file.f_inode`, and of `struct inode`: `i_ino`, `i_sb`,
    /// `i_size` and the seconds of its modification time (`i_mtime`,
    /// `__i_mtime` or `i_mtime_sec` by kernel), and `struct
    /// super_block.s_dev`: which file the executable is.
    pub file_inode: u32,
    pub inode_ino: u32,
    pub inode_sb: u32,
    pub inode_size: u32,
    pub inode_mtime: u32,
    pub sb_dev: u32,
}

/// `struct socket.state` of a socket whose connect() is under way or done
/// (include/uapi/linux/net.h).
pub const SS_UNCONNECTED: i32 = 1;
pub const SS_CONNECTING: i32 = 2;

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all are #[repr(C)] with explicit padding and no pointers.
    unsafe impl aya::Pod for super::FindingRecord {}
    unsafe impl aya::Pod for super::CounterKey {}
    unsafe impl aya::Pod for super::RemoteKey {}
    unsafe impl aya::Pod for super::TallyKey {}
    unsafe impl aya::Pod for super::Tally {}
    unsafe impl aya::Pod for super::KernelOffsets {}
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernel and the agent read these with the same layout; padding is
    /// explicit, so the sizes are exact sums.
    #[test]
    fn layouts() {
        assert_eq!(size_of::<Endpoint>(), 24);
        assert_eq!(size_of::<Attempt>(), 28);
        assert_eq!(size_of::<SocketState>(), 88);
        assert_eq!(size_of::<CallSites>(), 88);
        assert_eq!(size_of::<ExeFile>(), 24);
        assert_eq!(size_of::<FindingRecord>(), 496);
        assert_eq!(size_of::<CounterKey>(), 32);
        assert_eq!(size_of::<RemoteKey>(), 32);
        assert_eq!(size_of::<TallyKey>(), 8);
        assert_eq!(size_of::<KernelOffsets>(), 128);
    }
}
