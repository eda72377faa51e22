//! Reading `struct sock` fields at offsets resolved by the agent from the
//! running kernel's BTF (Rust eBPF has no CO-RE relocations).

use core::{ffi::c_void, ptr};

use aya_ebpf::helpers::bpf_probe_read_kernel;
use sockerr_common::{Endpoint, KernelOffsets};

pub const AF_INET6: u16 = 10;
pub const TCP_ESTABLISHED: i32 = 1;
pub const TCP_SYN_SENT: i32 = 2;
pub const TCP_CLOSE: i32 = 7;
pub const SOL_SOCKET: i32 = 1;
pub const SO_ERROR: i32 = 4;

#[unsafe(no_mangle)]
static OFFSETS: KernelOffsets = KernelOffsets {
    skc_family: 0,
    skc_state: 0,
    skc_daddr: 0,
    skc_dport: 0,
    skc_v6_daddr: 0,
    sk_err: 0,
    sk_err_soft: 0,
    sk_socket: 0,
    socket_to_ino: 0,
    _pad: 0,
};

macro_rules! offset {
    ($field:ident) => {
        // SAFETY: reading a read-only global set at load time.
        unsafe { ptr::read_volatile(&raw const OFFSETS.$field) as usize }
    };
}

/// A field of the `struct sock` a tp_btf program got as an argument, loaded
/// directly: the offset is read-only data the verifier knows, so it checks
/// the access against the kernel's BTF and it costs one load instruction
/// rather than a helper call (this runs on every socket send and receive).
#[inline(always)]
fn sock_field<T: Copy>(sk: *const c_void, offset: usize) -> T {
    // SAFETY: `sk` is a BTF-typed `struct sock *` and the offset one of its
    // fields; a faulting load is fixed up by the kernel.
    unsafe { ptr::read_volatile(sk.byte_add(offset).cast::<T>()) }
}

pub fn state(sk: *const c_void) -> i32 {
    sock_field::<u8>(sk, offset!(skc_state)).into()
}

/// The pending error of a socket whose handshake just failed: `sk_err`, or
/// `sk_err_soft` (an ICMP error seen during retransmits, as `SO_ERROR` does).
pub fn error(sk: *const c_void) -> i32 {
    match sock_field::<i32>(sk, offset!(sk_err)) {
        0 => sock_field::<i32>(sk, offset!(sk_err_soft)),
        err => err,
    }
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

/// The inode number of the socket's file (it names the socket in
/// /proc/<pid>/fd, and keys its attempt); 0 once the process closed it.
/// Read with a helper: `sk` may be a cgroup hook's `bpf_sock`, and the inode
/// lies past `struct socket` (in `struct socket_alloc`), where the verifier
/// allows no direct load either.
pub fn inode(sk: *const c_void) -> u64 {
    let field = sk.cast::<u8>().wrapping_add(offset!(sk_socket));
    // SAFETY: bpf_probe_read_kernel faults safely on a bad address.
    let socket = unsafe { bpf_probe_read_kernel(field.cast::<u64>()) }.unwrap_or_default();
    if socket == 0 {
        return 0;
    }
    let ino = (socket as *const u8).wrapping_add(offset!(socket_to_ino));
    // SAFETY: as above.
    unsafe { bpf_probe_read_kernel(ino.cast::<u64>()) }.unwrap_or_default()
}
