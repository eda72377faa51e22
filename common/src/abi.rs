//! Records exchanged between the eBPF programs and the agent. All are
//! `#[repr(C)]`, plain old data, with explicit padding.

use crate::attempt::{Attempt, FindingKind, MAX_READS};

pub const TASK_COMM_LEN: usize = 16;

/// Map and program names, shared so the agent and the probes cannot disagree.
pub mod names {
    pub const FINDINGS: &str = "FINDINGS";
    pub const COUNTERS: &str = "COUNTERS";
    pub const HEALTH: &str = "HEALTH";
    pub const OFFSETS: &str = "OFFSETS";
    pub const WAKEUP_BYTES: &str = "WAKEUP_BYTES";
    pub const STACKS: &str = "STACKS";
    /// The uprobes on the C library's wrappers, attached per process.
    pub const CONNECT_SITE: &str = "connect_site";
    pub const GETSOCKOPT_SITE: &str = "getsockopt_site";
}

/// Capacity of the `SOCKETS` LRU map: connect attempts tracked at once, the
/// least recently used dropped first (preallocated: ≈ 3.8 MiB). Reads and I/O
/// follow a connect within milliseconds, so this is hours of history on most
/// hosts and seconds on a proxy making thousands of connects a second.
pub const SOCKET_ENTRIES: u32 = 16384;
/// Capacity of the `COUNTERS` per-CPU hash map: (comm, counter, errno) keys.
pub const COUNTER_ENTRIES: u32 = 16384;
/// Ring buffer size for findings (a finding is 168 bytes + 8 of header).
pub const FINDINGS_RING_BYTES: u32 = 1 << 22;

/// Why a finding was raised: the call that made it visible.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    Getsockopt = 1,
    Send = 2,
    Recv = 3,
}

impl Trigger {
    pub fn from_u8(v: u8) -> Option<Self> {
        [Trigger::Getsockopt, Trigger::Send, Trigger::Recv]
            .into_iter()
            .find(|t| *t as u8 == v)
    }

    pub fn name(self) -> &'static str {
        match self {
            Trigger::Getsockopt => "getsockopt",
            Trigger::Send => "send",
            Trigger::Recv => "recv",
        }
    }
}

/// The remote end of a connect attempt, as the kernel saw it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
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
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CallSites {
    pub connect: CallSite,
    pub reads: [CallSite; MAX_READS],
}

/// Per-socket state, keyed by the socket's inode number: the latest attempt
/// and what is known about who made it.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SocketState {
    pub attempt: Attempt,
    pub remote: Endpoint,
    /// Inode of the socket: its key in `SOCKETS`, and how the agent finds
    /// the process's fd for it in /proc.
    pub inode: u64,
    /// comm of the task that called connect(), for the counters of an
    /// outcome decided in softirq context.
    pub comm: [u8; TASK_COMM_LEN],
    pub sites: CallSites,
}

/// One finding, sent to user space through the `FINDINGS` ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct FindingEvent {
    /// CLOCK_BOOTTIME, nanoseconds.
    pub boot_ns: u64,
    pub inode: u64,
    /// Thread and process of the task whose call raised the finding.
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
    pub _pad: u8,
    pub remote: Endpoint,
    pub comm: [u8; TASK_COMM_LEN],
    pub sites: CallSites,
}

impl FindingEvent {
    pub fn new(state: &SocketState, kind: FindingKind, trigger: Trigger) -> Self {
        let a = &state.attempt;
        Self {
            boot_ns: 0,
            inode: state.inode,
            tid: 0,
            tgid: 0,
            errno: a.errno(),
            reads: a.read_slots(),
            nreads: a.nreads(),
            kind: kind as u8,
            trigger: trigger as u8,
            _pad: 0,
            remote: state.remote,
            comm: [0; TASK_COMM_LEN],
            sites: state.sites,
        }
    }
}

/// What a `COUNTERS` entry counts.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// `sockerr_connect_attempts_total{result="established"}`.
    Established = 0,
    /// `sockerr_connect_attempts_total{result="failed"}` and, by errno,
    /// `sockerr_connect_failures_total`.
    Failed = 1,
    /// `sockerr_so_error_reads_total{result=pending|error|zero}`: 2 + [`crate::ReadClass`].
    ReadPending = 2,
    ReadError = 3,
    ReadZero = 4,
}

impl Counter {
    pub const ALL: [Counter; 5] = [
        Counter::Established,
        Counter::Failed,
        Counter::ReadPending,
        Counter::ReadError,
        Counter::ReadZero,
    ];

    pub fn from_u8(v: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|c| *c as u8 == v)
    }

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
    /// errno for [`Counter::Failed`], 0 otherwise.
    pub errno: u16,
    /// A [`Counter`].
    pub counter: u8,
    pub _pad: u8,
}

/// Indexes of the per-CPU `HEALTH` array: what the kernel side could not do.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    /// Findings produced.
    FindingsProduced = 0,
    /// Findings dropped because the ring buffer was full.
    FindingsLost = 1,
    /// An attempt could not be recorded in `SOCKETS`.
    StorageFailed = 2,
    /// Counter updates dropped because `COUNTERS` was full.
    CountersFull = 3,
}

pub const HEALTH_SLOTS: u32 = 4;

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
    pub skc_v6_daddr: u32,
    /// `struct sock`.
    pub sk_err: u32,
    pub sk_err_soft: u32,
    pub sk_socket: u32,
    /// From a `struct socket *` to its inode number: `struct socket_alloc`
    /// puts the socket and its `vfs_inode` side by side.
    pub socket_to_ino: u32,
    pub _pad: u32,
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all are #[repr(C)] with explicit padding and no pointers.
    unsafe impl aya::Pod for super::FindingEvent {}
    unsafe impl aya::Pod for super::CounterKey {}
    unsafe impl aya::Pod for super::KernelOffsets {}
}
