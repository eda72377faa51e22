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

#[inline(always)]
fn read<T: Default>(base: *const c_void, offset: usize) -> T {
    // SAFETY: bpf_probe_read_kernel faults safely on a bad address.
    unsafe { bpf_probe_read_kernel(base.cast::<u8>().wrapping_add(offset).cast::<T>()) }
        .unwrap_or_default()
}

pub fn state(sk: *const c_void) -> i32 {
    read::<u8>(sk, offset!(skc_state)).into()
}

/// The pending error of a socket whose handshake just failed: `sk_err`, or
/// `sk_err_soft` (an ICMP error seen during retransmits, as `SO_ERROR` does).
pub fn error(sk: *const c_void) -> i32 {
    match read::<i32>(sk, offset!(sk_err)) {
        0 => read::<i32>(sk, offset!(sk_err_soft)),
        err => err,
    }
}

pub fn remote(sk: *const c_void) -> Endpoint {
    let family = read::<u16>(sk, offset!(skc_family));
    let mut addr = [0u8; 16];
    if family == AF_INET6 {
        addr = read(sk, offset!(skc_v6_daddr));
    } else {
        addr[..4].copy_from_slice(&read::<[u8; 4]>(sk, offset!(skc_daddr)));
    }
    Endpoint {
        addr,
        port: u16::from_be(read(sk, offset!(skc_dport))),
        family,
        _pad: 0,
    }
}

/// The inode number of the socket's file, which names it in /proc/<pid>/fd.
pub fn inode(sk: *const c_void) -> u64 {
    let socket: u64 = read(sk, offset!(sk_socket));
    if socket == 0 {
        return 0;
    }
    read(socket as *const c_void, offset!(socket_to_ino))
}
