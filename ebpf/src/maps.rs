//! Maps shared by the probes, and the small operations on them.

use core::{ffi::c_void, ptr};

use aya_ebpf::{
    bindings::{
        BPF_F_NO_PREALLOC, BPF_NOEXIST, BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP,
    },
    btf_maps::StackTrace,
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_boot_ns},
    macros::{btf_map, map},
    maps::{LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf},
};
use sockerr_common::{
    COUNTER_ENTRIES, CallSite, Counter, CounterKey, FINDINGS_RING_BYTES, FindingEvent, FindingKind,
    HEALTH_SLOTS, Health, PENDING_SITES, SOCKET_ENTRIES, STACK_DEPTH, STACK_ENTRIES, SiteOp,
    SocketState, TASK_COMM_LEN, Trigger,
};

use crate::kernel;

/// The latest connect attempt of each TCP socket, by the socket's inode
/// number. A preallocated LRU map rather than socket-local storage: creating
/// storage at every connect cost about twice as much (measured with
/// kernel.bpf_stats_enabled), inode numbers are not reused the way socket
/// addresses are, and attempts of sockets long closed age out with no hook
/// on socket destruction.
#[map]
static SOCKETS: LruHashMap<u64, SocketState> = LruHashMap::with_max_entries(SOCKET_ENTRIES, 0);

#[map]
static FINDINGS: RingBuf = RingBuf::with_byte_size(FINDINGS_RING_BYTES, 0);

/// Attempts, failures by errno and SO_ERROR reads, by comm.
#[map]
static COUNTERS: PerCpuHashMap<CounterKey, u64> =
    PerCpuHashMap::with_max_entries(COUNTER_ENTRIES, BPF_F_NO_PREALLOC);

/// Findings produced and everything the kernel side had to drop.
#[map]
static HEALTH: PerCpuArray<u64> = PerCpuArray::with_max_entries(HEALTH_SLOTS, 0);

/// User stacks of call sites. Identical stacks share an id; a different
/// stack hashing to a used bucket is not stored (the id would otherwise be
/// reused under findings still in flight).
#[btf_map]
pub static STACKS: StackTrace<STACK_ENTRIES, 0, STACK_DEPTH> = StackTrace::new();

/// The call site a uprobe saw, per thread, until the kernel hook of the same
/// system call takes it.
#[map]
static PENDING: LruHashMap<u64, CallSite> = LruHashMap::with_max_entries(PENDING_SITES, 0);

/// One slot per CPU for [`plain_address`].
#[map]
static SCRATCH: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Wake-ups were the dominant cost measured, so the agent is woken only by
/// the first finding queued into an empty ring (it then attributes it while
/// the process most likely still runs) or once this much is queued; it also
/// drains the ring on a short timer.
#[unsafe(no_mangle)]
static WAKEUP_BYTES: u64 = 64 * 1024;

/// The attempt state of socket `sk`, if it made one.
#[inline(always)]
pub fn socket_state(sk: *const c_void) -> Option<&'static mut SocketState> {
    let inode = kernel::inode(sk);
    if inode == 0 {
        return None;
    }
    // SAFETY: the entry stays valid for this program run (RCU); concurrent
    // updates of one socket's attempt are serialized by the socket's own calls.
    SOCKETS.get_ptr_mut(inode).map(|p| unsafe { &mut *p })
}

/// The address `sk` points at, as a plain number that probe reads can
/// start from. The verifier forbids arithmetic on the cgroup hook's socket
/// pointer, but lets a privileged program store it in a map and load it back.
pub fn plain_address(sk: *const c_void) -> Option<*const c_void> {
    let slot = SCRATCH.get_ptr_mut(0)?;
    // SAFETY: this CPU's slot, used only here, within one program run.
    unsafe {
        ptr::write_volatile(slot, sk as u64);
        Some(ptr::read_volatile(slot) as *const c_void)
    }
}

/// Records a new attempt, replacing the socket's previous one; the error
/// when it could not be recorded (counted in `HEALTH`).
pub fn track(state: &SocketState) -> Result<(), i32> {
    SOCKETS
        .insert(state.inode, state, 0)
        .inspect_err(|_| health(Health::StorageFailed))
}

/// Leaves the call site of the current thread's system call for its kernel hook.
pub fn put_site(site: &CallSite) {
    // An old entry of this thread is simply replaced.
    let _ = PENDING.insert(bpf_get_current_pid_tgid(), site, 0);
}

/// Takes the call site a uprobe left for the current system call; the
/// default (not captured) when the process is not instrumented or made the
/// call without the C library.
pub fn take_site(op: SiteOp) -> CallSite {
    let key = bpf_get_current_pid_tgid();
    // SAFETY: the value is copied out before the entry is removed.
    let Some(site) = (unsafe { PENDING.get(key) }).copied() else {
        return CallSite::default();
    };
    let _ = PENDING.remove(key);
    if site.op == op as u32 {
        site
    } else {
        CallSite::default()
    }
}

pub fn health(slot: Health) {
    if let Some(v) = HEALTH.get_ptr_mut(slot as u32) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *v += 1 };
    }
}

pub fn current_comm() -> [u8; TASK_COMM_LEN] {
    bpf_get_current_comm().unwrap_or_default()
}

pub fn count(comm: [u8; TASK_COMM_LEN], counter: Counter, errno: i32) {
    let key = CounterKey {
        comm,
        errno: errno as u16,
        counter: counter as u8,
        _pad: 0,
    };
    for _ in 0..2 {
        if let Some(v) = COUNTERS.get_ptr_mut(key) {
            // SAFETY: per-CPU value, no concurrent writer on this CPU.
            unsafe { *v += 1 };
            return;
        }
        // Another CPU may insert the same key first: then look it up again.
        if COUNTERS.insert(key, 1, BPF_NOEXIST as u64).is_ok() {
            return;
        }
    }
    health(Health::CountersFull);
}

/// Sends a finding to user space, or counts it as lost.
pub fn emit(state: &SocketState, kind: FindingKind, trigger: Trigger) {
    health(Health::FindingsProduced);
    let queued = FINDINGS.query(BPF_RB_AVAIL_DATA as u64);
    let Some(mut entry) = FINDINGS.reserve::<FindingEvent>(0) else {
        health(Health::FindingsLost);
        return;
    };
    let pid_tgid = bpf_get_current_pid_tgid();
    let mut event = FindingEvent::new(state, kind, trigger);
    event.tid = pid_tgid as u32;
    event.tgid = (pid_tgid >> 32) as u32;
    event.comm = current_comm();
    // SAFETY: no preconditions.
    event.boot_ns = unsafe { bpf_ktime_get_boot_ns() };
    entry.write(event);
    // SAFETY: reading a read-only global.
    let threshold = unsafe { ptr::read_volatile(&WAKEUP_BYTES) };
    let wake = queued == 0 || queued >= threshold;
    let flags = if wake {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    entry.submit(flags as u64);
}
