//! Reading kernel structs at offsets resolved by the agent from the running
//! kernel's BTF (Rust eBPF has no CO-RE relocations).

use core::{ffi::c_void, ptr};

use aya_ebpf::helpers::{
    bpf_get_current_cgroup_id, bpf_get_current_task, bpf_probe_read_kernel,
    bpf_probe_read_kernel_str_bytes,
};
use sockerr_common::{Endpoint, FindingRecord, KernelOffsets};

pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;
pub const IPPROTO_TCP: u32 = 6;
pub const TCP_ESTABLISHED: i32 = 1;
pub const TCP_SYN_SENT: i32 = 2;
pub const TCP_CLOSE: i32 = 7;
pub const SOL_SOCKET: i32 = 1;
pub const SO_ERROR: i32 = 4;
pub const EADDRNOTAVAIL: i32 = 99;

#[unsafe(no_mangle)]
static OFFSETS: KernelOffsets = KernelOffsets {
    skc_family: 0,
    skc_state: 0,
    skc_daddr: 0,
    skc_dport: 0,
    skc_num: 0,
    skc_v6_daddr: 0,
    sk_err: 0,
    sk_err_soft: 0,
    sk_socket: 0,
    socket_state: 0,
    socket_to_ino: 0,
    task_group_leader: 0,
    task_start_boottime: 0,
    task_mm: 0,
    mm_exe_file: 0,
    file_dentry: 0,
    dentry_name: 0,
    _pad: 0,
};

macro_rules! offset {
    ($field:ident) => {
        // SAFETY: reading a read-only global set at load time.
        unsafe { ptr::read_volatile(&raw const OFFSETS.$field) as usize }
    };
}

/// A field of a BTF-typed `struct sock` (a tp_btf or fentry argument),
/// loaded directly: the offset is read-only data the verifier knows, so it
/// checks the access against the kernel's BTF and it costs one load
/// instruction rather than a helper call (this runs on every socket send and
/// receive).
#[inline(always)]
fn sock_field<T: Copy>(sk: *const c_void, offset: usize) -> T {
    // SAFETY: `sk` is a BTF-typed `struct sock *` and the offset one of its
    // fields; a faulting load is fixed up by the kernel.
    unsafe { ptr::read_volatile(sk.byte_add(offset).cast::<T>()) }
}

/// A field at `base + offset` of any kernel pointer (a kprobe argument, a
/// cgroup hook's socket, a task), read with the helper.
#[inline(always)]
fn read<T: Copy + Default>(base: u64, offset: usize) -> T {
    let at = (base as *const u8).wrapping_add(offset);
    // SAFETY: bpf_probe_read_kernel faults safely on a bad address.
    unsafe { bpf_probe_read_kernel(at.cast::<T>()) }.unwrap_or_default()
}

/// TCP state of a BTF-typed socket.
pub fn state(sk: *const c_void) -> i32 {
    sock_field::<u8>(sk, offset!(skc_state)).into()
}

/// TCP state of a socket known only by its address.
pub fn state_of(sk: *const c_void) -> i32 {
    read::<u8>(sk as u64, offset!(skc_state)).into()
}

/// The pending error of a socket whose handshake just failed: `sk_err`, or
/// `sk_err_soft` (an ICMP error seen during retransmits, as `SO_ERROR` does).
pub fn error(sk: *const c_void) -> i32 {
    match sock_field::<i32>(sk, offset!(sk_err)) {
        0 => sock_field::<i32>(sk, offset!(sk_err_soft)),
        err => err,
    }
}

/// The local port; 0 when connect() found none, or gave it back on failing
/// (docs/design.md §4).
pub fn local_port(sk: *const c_void) -> u16 {
    sock_field(sk, offset!(skc_num))
}

pub fn remote(sk: *const c_void) -> Endpoint {
    let family = sock_field::<u16>(sk, offset!(skc_family));
    let mut addr = [0u8; 16];
    if family == AF_INET6 {
        let v6 = sock_field::<[u64; 2]>(sk, offset!(skc_v6_daddr));
        addr[..8].copy_from_slice(&v6[0].to_ne_bytes());
        addr[8..].copy_from_slice(&v6[1].to_ne_bytes());
    } else {
        addr[..4].copy_from_slice(&sock_field::<u32>(sk, offset!(skc_daddr)).to_ne_bytes());
    }
    Endpoint {
        addr,
        port: u16::from_be(sock_field(sk, offset!(skc_dport))),
        family,
        _pad: 0,
    }
}

/// The endpoint a `struct sockaddr` names (connect()'s argument, copied
/// into the kernel); None for a family other than IPv4 and IPv6.
pub fn sockaddr_endpoint(uaddr: *const c_void) -> Option<Endpoint> {
    // sockaddr_in: family, port, address at 4; sockaddr_in6: family, port,
    // flowinfo, address at 8.
    let raw: [u8; 24] = read(uaddr as u64, 0);
    let family = u16::from_ne_bytes([raw[0], raw[1]]);
    let mut addr = [0u8; 16];
    match family {
        AF_INET => addr[..4].copy_from_slice(&raw[4..8]),
        AF_INET6 => addr.copy_from_slice(&raw[8..24]),
        _ => return None,
    }
    Some(Endpoint {
        addr,
        port: u16::from_be_bytes([raw[2], raw[3]]),
        family,
        _pad: 0,
    })
}

/// The `struct socket` of a socket's file; 0 once the process closed it.
/// Read with a helper: `sk` may be a cgroup hook's `bpf_sock`, and the
/// socket's inode lies past `struct socket` (in `struct socket_alloc`),
/// where the verifier allows no direct load either.
pub fn socket(sk: *const c_void) -> u64 {
    read(sk as u64, offset!(sk_socket))
}

/// The inode number of a `struct socket`'s file (it names the socket in
/// /proc/<pid>/fd, and keys its attempt); 0 for none.
pub fn inode(socket: u64) -> u64 {
    if socket == 0 {
        return 0;
    }
    read(socket, offset!(socket_to_ino))
}

/// `struct socket.state` (`SS_*`) of a `struct socket`.
pub fn connect_state(socket: u64) -> i32 {
    if socket == 0 {
        return 0;
    }
    read(socket, offset!(socket_state))
}

/// The current task's cgroup v2 id, for a finding record of a hook that can
/// ask nothing else about the task.
pub fn identify_cgroup(record: &mut FindingRecord) {
    // SAFETY: no preconditions.
    record.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
}

/// Who the current task is, for a finding record: its cgroup v2 id, its
/// thread group leader's start time and its executable's file name. Only
/// finding records pay for this (a handful of reads), never a plain connect.
pub fn identify_current(record: &mut FindingRecord) {
    identify_cgroup(record);
    // SAFETY: no preconditions.
    let task = unsafe { bpf_get_current_task() };
    let leader: u64 = read(task, offset!(task_group_leader));
    record.start_boot_ns = read(leader, offset!(task_start_boottime));
    let mm: u64 = read(task, offset!(task_mm));
    if mm == 0 {
        return;
    }
    let file: u64 = read(mm, offset!(mm_exe_file));
    if file == 0 {
        return;
    }
    let dentry: u64 = read(file, offset!(file_dentry));
    let name: u64 = read(dentry, offset!(dentry_name));
    if name != 0 {
        // SAFETY: the helper bounds the copy by the buffer and faults safely.
        let _ = unsafe { bpf_probe_read_kernel_str_bytes(name as *const u8, &mut record.exe) };
    }
}
