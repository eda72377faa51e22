//! sockerr's kernel programs.
//!
//! Which hooks, and why (costs measured on the project's machines, see
//! DESIGN.md §2): no syscall tracepoints — enabling any of them puts every
//! syscall of every process on the slow path. Instead:
//!
//! - `tp_btf/inet_sock_set_state` ([`probes::state`]): CLOSE→SYN_SENT runs in
//!   the task calling connect() and starts an attempt, kept by the socket's
//!   inode number in a preallocated LRU map; SYN_SENT→ESTABLISHED / →CLOSE
//!   decide its outcome (kernel truth, with `sk_err`). Fires only on TCP
//!   state changes.
//! - `cgroup/getsockopt` on the cgroup v2 root ([`probes::so_error`]): sees the
//!   `SO_ERROR` value the process actually receives. It is the only hook that
//!   sees getsockopt results without syscall tracepoints (≈ +360 ns a call).
//! - `tp_btf/sock_send_length` and `sock_recv_length` ([`probes::io`]): every
//!   socket send/recv, including read()/write(); they leave at once unless the
//!   socket is closed, so established traffic pays one byte read.
//! - uprobes on the C library's `connect` and `getsockopt`
//!   ([`probes::call_site`]): attached by the agent only to flagged
//!   processes; they leave the call site and user stack for the hooks above.
//!
//! Findings are decided here, by the state machine in `sockerr-common`; only
//! findings reach user space, through a ring buffer with batched wake-ups.
//! Attempts are keyed by socket inode numbers, which are not reused the way
//! fd numbers, `struct sock` addresses and pids are; those of closed sockets
//! age out of the LRU map (socket-local storage, freed with its socket, cost
//! twice as much per connect: the allocation at every connect).
#![no_std]
#![no_main]
// atomic_xadd: core offers no atomic read-modify-write on this target.
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod kernel;
mod maps;
mod probes;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any path that could get here.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
