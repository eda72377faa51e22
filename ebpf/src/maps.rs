//! Maps shared by the probes, and the small operations on them.

use core::{
    ffi::c_void,
    intrinsics::{AtomicOrdering, atomic_xadd},
    ptr,
};

use aya_ebpf::{
    bindings::{
        BPF_F_NO_PREALLOC, BPF_NOEXIST, BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP,
    },
    btf_maps::StackTrace,
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_ktime_get_boot_ns, bpf_ktime_get_ns,
    },
    macros::{btf_map, map},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf},
};
use sockerr_common::{
    CallSite, CallSites, Counter, CounterKey, DEFAULT_MAX_ATTEMPTS, DEFAULT_MAX_COMMS,
    DEFAULT_MAX_REMOTES, Endpoint, ExeFile, FINDINGS_RING_BYTES, FindingKind, FindingRecord,
    HEALTH_SLOTS, Health, OTHER_COMM, OTHER_REMOTE, PENDING_SITES, RemoteKey, SITE_ENTRIES,
    STACK_DEPTH, STACK_ENTRIES, SiteOp, SocketState, TALLY_ENTRIES, TASK_COMM_LEN, Tally, TallyKey,
    Trigger, WANT_SITES_ENTRIES,
};

use crate::kernel;

const EEXIST: i32 = 17;

/// The latest connect attempt of each TCP socket, by the socket's inode
/// number, from connect() until the socket is released (`probes::release`).
/// A preallocated LRU map rather than socket-local storage: creating storage
/// at every connect cost about twice as much (measured with
/// kernel.bpf_stats_enabled), and inode numbers are not reused the way
/// socket addresses are. Its size is set at load (`--kernel.max-attempts`);
/// what it evicts is counted as `AttemptUntracked` when it is next needed.
#[map]
static SOCKETS: LruHashMap<u64, SocketState> =
    LruHashMap::with_max_entries(DEFAULT_MAX_ATTEMPTS, 0);

/// Call sites of the attempts of instrumented processes, by socket inode.
#[map]
static SITES: LruHashMap<u64, CallSites> = LruHashMap::with_max_entries(SITE_ENTRIES, 0);

/// Processes the agent is collecting call sites of (by tgid): each of their
/// findings with call sites gets a record, however soon after the last, so
/// the agent knows the sites within a few findings and lets the uprobes go.
#[map]
static WANT_SITES: HashMap<u32, u8> = HashMap::with_max_entries(WANT_SITES_ENTRIES, 0);

#[map]
static FINDINGS: RingBuf = RingBuf::with_byte_size(FINDINGS_RING_BYTES, 0);

/// Attempts, failures by errno, SO_ERROR reads and findings, by comm. The
/// agent deletes idle keys after adding them to its own totals. Sized at
/// load for the comms of `COMMS` ([`sockerr_common::counter_entries`]).
#[map]
static COUNTERS: PerCpuHashMap<CounterKey, u64> = PerCpuHashMap::with_max_entries(
    sockerr_common::counter_entries(DEFAULT_MAX_COMMS),
    BPF_F_NO_PREALLOC,
);

/// Failed and aborted attempts by remote endpoint, sized at load likewise.
#[map]
static REMOTES: PerCpuHashMap<RemoteKey, u64> = PerCpuHashMap::with_max_entries(
    sockerr_common::remote_entries(DEFAULT_MAX_REMOTES),
    BPF_F_NO_PREALLOC,
);

/// The comms counted under their own name, the first `--metrics.max-comms`
/// seen (its size, set at load); the rest are counted as [`OTHER_COMM`].
/// Folding in the kernel bounds `COUNTERS` by what the metrics show, so a
/// churn of thousands of short-lived processes with distinct names loses
/// no count to a full map (docs/design.md §4).
#[map]
static COMMS: HashMap<[u8; TASK_COMM_LEN], u8> = HashMap::with_max_entries(DEFAULT_MAX_COMMS, 0);

/// The same for remote endpoints (`--metrics.max-remotes`, [`OTHER_REMOTE`]).
#[map]
static REMOTE_ENDPOINTS: HashMap<Endpoint, u8> = HashMap::with_max_entries(DEFAULT_MAX_REMOTES, 0);

/// Findings per (process, kind): what rate-limits finding records.
#[map]
static TALLIES: LruHashMap<TallyKey, Tally> = LruHashMap::with_max_entries(TALLY_ENTRIES, 0);

/// What the kernel side did and everything it had to drop.
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
static PENDING: LruHashMap<u64, Pending> = LruHashMap::with_max_entries(PENDING_SITES, 0);

/// A call site on its way from a uprobe to the kernel hook of the same
/// system call, microseconds later.
#[derive(Clone, Copy)]
struct Pending {
    site: CallSite,
    at_ns: u64,
}

/// An entry older than this was left by a call the kernel hook never saw
/// (a UDP connect, a probing period that ended): not this call's. The
/// uprobe and the hook are microseconds apart, but an emulated or loaded
/// CPU can stretch that: 100 ms.
const PENDING_FRESH_NS: u64 = 100_000_000;

/// Non-zero while the agent has call-site uprobes on some process (set by
/// the agent): the hooks look for a pending site only then, sparing every
/// connect and SO_ERROR read of the host a hash lookup otherwise.
#[map]
static SITES_ON: Array<u32> = Array::with_max_entries(1, 0);

/// One slot per CPU for [`plain_address`].
#[map]
static SCRATCH: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// One per CPU to build an executable's path in (too big for the stack).
#[map]
static PATH_SCRATCH: PerCpuArray<kernel::PathScratch> = PerCpuArray::with_max_entries(1, 0);

/// Wake-ups were the dominant cost measured, so the agent is woken only by
/// the first record of a (process, kind) (it then attributes it while the
/// process most likely still runs) or once this much is queued; it also
/// drains the ring on a short timer.
#[unsafe(no_mangle)]
static WAKEUP_BYTES: u64 = 64 * 1024;

/// After the first finding of a (process, kind), at most one finding record
/// per this interval (`--findings.detail-interval`); 0 sends every finding.
#[unsafe(no_mangle)]
static DETAIL_INTERVAL_NS: u64 = 0;

/// 1: counters are kept by cgroup too (`--metrics.kubernetes-labels`).
#[unsafe(no_mangle)]
static BY_CGROUP: u8 = 0;

/// The current task's cgroup v2 id when counters are kept by cgroup, else
/// 0 (and no helper call: the global is read-only, the branch goes).
pub fn counted_cgroup() -> u64 {
    // SAFETY: reading a read-only global; the helper has no preconditions.
    unsafe {
        if ptr::read_volatile(&BY_CGROUP) != 0 {
            bpf_get_current_cgroup_id()
        } else {
            0
        }
    }
}

/// The attempt of the socket with inode `inode`, if it made one.
#[inline(always)]
pub fn attempt(inode: u64) -> Option<&'static mut SocketState> {
    if inode == 0 {
        return None;
    }
    // SAFETY: the entry stays valid for this program run (RCU); concurrent
    // updates of one socket's attempt are serialized by the socket's own calls.
    SOCKETS.get_ptr_mut(inode).map(|p| unsafe { &mut *p })
}

/// The address `sk` points at, as a plain number that probe reads can
/// start from. The verifier forbids arithmetic on a cgroup hook's socket
/// pointer, but lets a privileged program store it in a map and load it back.
pub fn plain_address<T>(sk: *const T) -> Option<*const c_void> {
    let slot = SCRATCH.get_ptr_mut(0)?;
    // SAFETY: this CPU's slot, used only here, within one program run.
    unsafe {
        ptr::write_volatile(slot, sk as u64);
        Some(ptr::read_volatile(slot) as *const c_void)
    }
}

/// Records a new attempt of the socket `inode`, replacing its previous one,
/// with the call site of its connect() when one was captured.
pub fn track(inode: u64, state: &SocketState, connect: CallSite) -> Result<(), i32> {
    if connect.captured() {
        let sites = CallSites {
            started_ns: state.started_ns,
            connect,
            ..CallSites::default()
        };
        let _ = SITES.insert(inode, sites, 0);
    }
    SOCKETS
        .insert(inode, state, 0)
        .inspect_err(|_| health(Health::StorageUnavailable))
}

/// The socket is gone, or its attempt can produce nothing more.
pub fn forget(inode: u64) {
    let _ = SOCKETS.remove(inode);
}

/// A monotonic timestamp for [`SocketState::started_ns`].
pub fn now_ns() -> u64 {
    // SAFETY: no preconditions.
    unsafe { bpf_ktime_get_ns() }
}

/// Keeps the call site of a decided `SO_ERROR` read, kept in `slot`.
pub fn keep_read_site(inode: u64, state: &SocketState, slot: usize, site: CallSite) {
    let current = SITES
        .get_ptr_mut(inode)
        // SAFETY: valid for this program run (RCU).
        .filter(|s| unsafe { (**s).started_ns } == state.started_ns);
    let sites = match current {
        // SAFETY: as above.
        Some(s) => unsafe { &mut *s },
        None => {
            let fresh = CallSites {
                started_ns: state.started_ns,
                ..CallSites::default()
            };
            if SITES.insert(inode, fresh, 0).is_err() {
                return;
            }
            match SITES.get_ptr_mut(inode) {
                // SAFETY: as above.
                Some(s) => unsafe { &mut *s },
                None => return,
            }
        }
    };
    // Opaque to LLVM, so this bounds check stays: LLVM would drop it as
    // implied by the state machine's own, which the verifier cannot see.
    if let Some(kept) = sites.reads.get_mut(core::hint::black_box(slot)) {
        *kept = site;
    }
}

/// Leaves the call site of the current thread's system call for its kernel hook.
pub fn put_site(site: &CallSite) {
    let pending = Pending {
        site: *site,
        at_ns: now_ns(),
    };
    // An old entry of this thread is simply replaced.
    let _ = PENDING.insert(bpf_get_current_pid_tgid(), pending, 0);
}

/// Takes the call site a uprobe left for the current system call of the
/// thread `pid_tgid`; the default (not captured) when the process is not
/// instrumented or made the call without the C library.
pub fn take_site(op: SiteOp, pid_tgid: u64) -> CallSite {
    if SITES_ON.get(0).is_none_or(|on| *on == 0) {
        return CallSite::default();
    }
    let key = pid_tgid;
    // SAFETY: the value is copied out before the entry is removed.
    let Some(pending) = (unsafe { PENDING.get(key) }).copied() else {
        return CallSite::default();
    };
    let _ = PENDING.remove(key);
    let fresh = now_ns().wrapping_sub(pending.at_ns) < PENDING_FRESH_NS;
    if pending.site.op == op as u32 && fresh {
        pending.site
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

/// Adds one to a per-CPU counter map's `key`, creating it; false when the
/// map is full.
fn bump<K>(map: &PerCpuHashMap<K, u64>, key: &K) -> bool {
    for _ in 0..2 {
        if let Some(v) = map.get_ptr_mut(key) {
            // SAFETY: per-CPU value, no concurrent writer on this CPU.
            unsafe { *v += 1 };
            return true;
        }
        // Another CPU may insert the same key first: then look it up again.
        if map.insert(key, 1, BPF_NOEXIST as u64).is_ok() {
            return true;
        }
    }
    false
}

/// Whether `key` is one of `admitted`'s, admitting it while there is room.
fn admitted<K>(admitted: &HashMap<K, u8>, key: &K) -> bool {
    // SAFETY: a u8 value, only tested for presence.
    if unsafe { admitted.get(key) }.is_some() {
        return true;
    }
    // Another CPU may admit the same key first (EEXIST): admitted too. A
    // full map (E2BIG) admits no more.
    match admitted.insert(key, 1, BPF_NOEXIST as u64) {
        Ok(()) => true,
        Err(errno) => errno == -EEXIST,
    }
}

/// Adds one to `key` in `map` if the key is there: the common case, one
/// lookup. A key is created only for an admitted comm or remote, so an
/// existing one needs no admission check.
fn bump_existing<K>(map: &PerCpuHashMap<K, u64>, key: &K) -> bool {
    match map.get_ptr_mut(key) {
        Some(v) => {
            // SAFETY: per-CPU value, no concurrent writer on this CPU.
            unsafe { *v += 1 };
            true
        }
        None => false,
    }
}

pub fn count(comm: [u8; TASK_COMM_LEN], cgroup_id: u64, counter: Counter, detail: u16) {
    let mut key = CounterKey {
        comm,
        cgroup_id,
        detail,
        counter: counter as u8,
        _pad: [0; 5],
    };
    if bump_existing(&COUNTERS, &key) {
        return;
    }
    if !admitted(&COMMS, &comm) {
        key.comm = OTHER_COMM;
    }
    if !bump(&COUNTERS, &key) {
        health(Health::CountersFull);
    }
}

/// An attempt to `remote` failed with `errno`, or was aborted.
pub fn count_remote(remote: Endpoint, errno: i32, aborted: bool) {
    let mut key = RemoteKey {
        remote,
        errno,
        aborted: aborted as u8,
        _pad: [0; 3],
    };
    if bump_existing(&REMOTES, &key) {
        return;
    }
    if !admitted(&REMOTE_ENDPOINTS, &remote) {
        key.remote = OTHER_REMOTE;
    }
    if !bump(&REMOTES, &key) {
        health(Health::RemotesFull);
    }
}

/// The attempt of socket `inode` was decided: established (`errno` 0) or
/// failed. Counted once, by the comm that made the connect.
pub fn decided(state: &mut SocketState, errno: i32) {
    if errno == 0 {
        if state.attempt.established() {
            count(state.comm, state.cgroup_id, Counter::Established, 0);
        }
    } else if state.attempt.failed(errno) {
        failed(state.comm, state.cgroup_id, state.remote, errno);
    }
}

/// Counts a failed attempt by comm and errno, and by remote: `errno` 0 for
/// a failure inside connect() the kernel keeps no errno of.
pub fn failed(comm: [u8; TASK_COMM_LEN], cgroup_id: u64, remote: Endpoint, errno: i32) {
    count(comm, cgroup_id, Counter::Failed, errno as u16);
    count_remote(remote, errno, false);
}

/// Who made a call: the current task where the hook may ask, else the task
/// that made the attempt's connect() (almost always the same process).
pub struct Caller {
    pub pid_tgid: u64,
    pub comm: [u8; TASK_COMM_LEN],
    /// What its counters are kept under (see [`counted_cgroup`]).
    pub cgroup_id: u64,
    /// Whether the task itself can be read (identity for the record).
    pub current: bool,
}

impl Caller {
    /// The current task, `pid_tgid` already asked for.
    pub fn current(pid_tgid: u64) -> Self {
        Self {
            pid_tgid,
            comm: current_comm(),
            cgroup_id: counted_cgroup(),
            current: true,
        }
    }

    pub fn connecting(state: &SocketState) -> Self {
        Self {
            pid_tgid: u64::from(state.tgid) << 32 | u64::from(state.tgid),
            comm: state.comm,
            cgroup_id: state.cgroup_id,
            current: false,
        }
    }
}

/// A finding: counted by comm and per (process, kind) in every case; a
/// record goes to the agent for the first finding of a (process, kind) and
/// then at most once per `DETAIL_INTERVAL_NS`.
pub fn finding(
    inode: u64,
    state: &SocketState,
    kind: FindingKind,
    trigger: Trigger,
    caller: &Caller,
) {
    let comm = caller.comm;
    count(comm, caller.cgroup_id, Counter::Finding, kind as u16);
    let pid_tgid = caller.pid_tgid;
    let key = TallyKey {
        tgid: (pid_tgid >> 32) as u32,
        kind: kind as u8,
        _pad: [0; 3],
    };
    // SAFETY: no preconditions.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    let Some((tally, first)) = tally(&key, now) else {
        return;
    };
    // SAFETY: reading read-only globals.
    let interval = unsafe { ptr::read_volatile(&DETAIL_INTERVAL_NS) };
    let previous = tally.record_ns;
    let due = first || now.wrapping_sub(previous) >= interval;
    // Within the interval, a record only to carry the call sites of a
    // process whose sites the agent is collecting.
    // SAFETY: a u8 value, only tested for presence.
    if !due && unsafe { WANT_SITES.get(key.tgid) }.is_none() {
        return;
    }
    let sites = call_sites(inode, state);
    if !due && sites.is_none() {
        return;
    }
    tally.record_ns = now;
    let Some(mut entry) = FINDINGS.reserve::<FindingRecord>(0) else {
        // The next finding of this tally tries again.
        tally.record_ns = previous;
        health(Health::RecordsLost);
        return;
    };
    // SAFETY: the entry is ours until submitted. Every field is written
    // below, one by one: zeroing the whole record first (the path buffer
    // included) is a byte loop the verifier walks on every path here.
    let record = unsafe { &mut *entry.as_mut_ptr() };
    record.attempt(state, kind, trigger);
    record.boot_ns = now;
    record.inode = inode;
    record.tally_since_ns = tally.since_ns;
    record.tally_total = tally.total;
    record.tid = pid_tgid as u32;
    record.tgid = key.tgid;
    record.first = first as u8;
    record.comm = comm;
    record.sites = match sites {
        // SAFETY: valid for this program run (RCU); copied.
        Some(sites) => unsafe { *sites },
        None => CallSites::default(),
    };
    record.start_boot_ns = 0;
    // `exe` is read up to `exe_len` only.
    record.exe_len = 0;
    record.exe_truncated = 0;
    record._pad = 0;
    record.exe_dev = 0;
    record.exe_file = ExeFile::default();
    if caller.current
        && let Some(scratch) = PATH_SCRATCH.get_ptr_mut(0)
    {
        // SAFETY: this CPU's slot, used only here, within one program run.
        kernel::identify_current(record, unsafe { &mut *scratch });
    } else {
        kernel::identify_cgroup(record);
    }
    health(Health::RecordsSent);
    let queued = FINDINGS.query(BPF_RB_AVAIL_DATA as u64);
    // SAFETY: reading a read-only global.
    let threshold = unsafe { ptr::read_volatile(&WAKEUP_BYTES) };
    // A record sent within the interval carries call sites the agent is
    // waiting for to let the process's uprobes go: at once, too.
    let flags = if first || !due || queued >= threshold {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    entry.submit(flags as u64);
}

/// The call sites captured for the attempt, if its process is instrumented.
/// A pointer, not a copy: an `Option` of the copy lets LLVM read its
/// payload unconditionally, and Linux 5.10 refuses reading stack never written.
fn call_sites(inode: u64, state: &SocketState) -> Option<*const CallSites> {
    // SAFETY: valid for this program run (RCU).
    SITES
        .get_ptr(inode)
        .filter(|s| unsafe { (**s).started_ns } == state.started_ns)
}

/// The tally of `key` with this finding added, and whether it began with it.
fn tally(key: &TallyKey, now: u64) -> Option<(&'static mut Tally, bool)> {
    let mut first = false;
    for _ in 0..2 {
        if let Some(t) = TALLIES.get_ptr_mut(key) {
            // SAFETY: valid for this program run (RCU). Threads of one
            // process may add at once on other CPUs: the total is added
            // atomically (an add without fetch, which every kernel's
            // verifier accepts); the timestamps may race harmlessly.
            let t = unsafe { &mut *t };
            if !first {
                // SAFETY: an aligned u64 in map memory. core has no atomic
                // read-modify-write for this target, hence the intrinsic.
                unsafe {
                    atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut t.total, 1)
                };
            }
            t.last_ns = now;
            return Some((t, first));
        }
        let fresh = Tally {
            total: 1,
            since_ns: now,
            last_ns: now,
            record_ns: now,
        };
        // Another CPU may create it first: then add to that one.
        first = TALLIES.insert(key, fresh, BPF_NOEXIST as u64).is_ok();
    }
    None
}
