//! Reading kernel structs at offsets resolved by the agent from the running
//! kernel's BTF (Rust eBPF has no CO-RE relocations).

use core::{ffi::c_void, ptr};

use aya_ebpf::helpers::{bpf_get_current_cgroup_id, bpf_get_current_task, generated};
use sockerr_common::{EXE_PATH_LEN, Endpoint, ExeFile, FindingRecord, KernelOffsets};

pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;
pub const IPPROTO_TCP: u32 = 6;
pub const SOCK_STREAM: u32 = 1;
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
    sk_type: 0,
    sk_protocol: 0,
    sk_err: 0,
    sk_err_soft: 0,
    sk_socket: 0,
    socket_state: 0,
    socket_to_ino: 0,
    task_group_leader: 0,
    task_start_boottime: 0,
    task_mm: 0,
    mm_exe_file: 0,
    file_mnt: 0,
    file_dentry: 0,
    dentry_name: 0,
    dentry_name_len: 0,
    dentry_parent: 0,
    vfsmount_root: 0,
    mount_mnt: 0,
    mount_parent: 0,
    mount_mountpoint: 0,
    file_inode: 0,
    inode_ino: 0,
    inode_sb: 0,
    inode_size: 0,
    inode_mtime: 0,
    sb_dev: 0,
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
/// cgroup hook's socket, a task), read with the helper; zero when the
/// address faults. Without a branch on the helper's result: the helper
/// zeroes the destination itself on a fault, and a branch per read
/// multiplies the paths the verifier walks (the path walk reads several
/// fields a level).
#[inline(always)]
fn read<T: Copy + Default>(base: u64, offset: usize) -> T {
    let at = (base as *const u8).wrapping_add(offset);
    let mut value = T::default();
    // SAFETY: bpf_probe_read_kernel faults safely on a bad address, and
    // writes at most size_of::<T>() bytes into `value`.
    unsafe {
        generated::bpf_probe_read_kernel((&raw mut value).cast(), size_of::<T>() as u32, at.cast())
    };
    value
}

/// TCP state of a BTF-typed socket.
pub fn state(sk: *const c_void) -> i32 {
    sock_field::<u8>(sk, offset!(skc_state)).into()
}

/// Whether a BTF-typed socket is TCP (a stream socket of IPPROTO_TCP, which
/// only AF_INET and AF_INET6 create): every other kind leaves the hot hooks
/// after this (docs/design.md §2).
pub fn is_tcp(sk: *const c_void) -> bool {
    u32::from(sock_field::<u16>(sk, offset!(sk_protocol))) == IPPROTO_TCP
        && u32::from(sock_field::<u16>(sk, offset!(sk_type))) == SOCK_STREAM
}

/// The pending error of a BTF-typed socket: what the next send or receive
/// on it returns and clears (`sock_error()`).
pub fn pending_error(sk: *const c_void) -> i32 {
    sock_field(sk, offset!(sk_err))
}

/// [`pending_error`] of a socket known only by its address.
pub fn pending_error_of(sk: *const c_void) -> i32 {
    read(sk as u64, offset!(sk_err))
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
/// thread group leader's start time and its executable's path. Only finding
/// records pay for this, never a plain connect.
pub fn identify_current(record: &mut FindingRecord, scratch: &mut PathScratch) {
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
    if file != 0 {
        exe_path(file, scratch, record);
        let inode: u64 = read(file, offset!(file_inode));
        let sb: u64 = read(inode, offset!(inode_sb));
        record.exe_dev = read(sb, offset!(sb_dev));
        record.exe_file = ExeFile {
            ino: read(inode, offset!(inode_ino)),
            size: read(inode, offset!(inode_size)),
            mtime_sec: read(inode, offset!(inode_mtime)),
        };
    }
}

/// Scratch to build a path in: the path ends at `EXE_PATH_LEN`; the second
/// half only gives masked copies room (the verifier checks bounds, not intent).
pub type PathScratch = [u8; 2 * EXE_PATH_LEN];

/// Directories walked up at most: deeper paths keep their end only.
const PATH_DEPTH: usize = 32;

/// The path of `file` as d_path() gives it (docs/design.md §4): names from
/// its dentry up to the root of its mount, then on from the dentry that
/// mount is mounted at, up to the root of the mount namespace. Built back
/// to front in `scratch`, then copied to the start of `record.exe`.
fn exe_path(file: u64, scratch: &mut PathScratch, record: &mut FindingRecord) {
    const N: usize = EXE_PATH_LEN;
    let mut dentry: u64 = read(file, offset!(file_dentry));
    let mut vfsmount: u64 = read(file, offset!(file_mnt));
    let mut mount = vfsmount.wrapping_sub(offset!(mount_mnt) as u64);
    // Bytes of the path written so far, ending at N.
    let mut used = 0;
    let mut whole = false;
    for _ in 0..PATH_DEPTH {
        let parent: u64 = read(dentry, offset!(dentry_parent));
        let root: u64 = read(vfsmount, offset!(vfsmount_root));
        if dentry == root || dentry == parent {
            let up: u64 = read(mount, offset!(mount_parent));
            if up == mount || up == 0 {
                whole = true;
                break;
            }
            dentry = read(mount, offset!(mount_mountpoint));
            mount = up;
            vfsmount = up.wrapping_add(offset!(mount_mnt) as u64);
            continue;
        }
        let len = read::<u32>(dentry, offset!(dentry_name_len)) as usize;
        if used + len + 1 > N {
            break;
        }
        // Masks the verifier can see (LLVM would drop them as implied by
        // the check above, hence the opaque values). They also keep `used`
        // in the same range on every turn of the loop, so the verifier's
        // states of one turn match the next and it walks the loop once.
        used = core::hint::black_box(used + len + 1) & (2 * N - 1);
        let at = (N - used) & (N - 1);
        let name: u64 = read(dentry, offset!(dentry_name));
        let out = scratch.as_mut_ptr().wrapping_add(at);
        // SAFETY: `at` < N and the name < N bytes: inside the 2 N scratch.
        // The helper faults safely on a bad source.
        unsafe {
            *out = b'/';
            generated::bpf_probe_read_kernel(
                out.wrapping_add(1).cast(),
                (core::hint::black_box(len) & (N - 1)) as u32,
                name as *const c_void,
            );
        }
        dentry = parent;
    }
    let at = (N - core::hint::black_box(used)) & (N - 1);
    // SAFETY: N bytes from `at` < N lie inside the 2 N scratch.
    unsafe {
        generated::bpf_probe_read_kernel(
            record.exe.as_mut_ptr().cast(),
            N as u32,
            scratch.as_ptr().wrapping_add(at).cast(),
        );
    }
    record.exe_len = used as u16;
    record.exe_truncated = u8::from(!whole);
}
