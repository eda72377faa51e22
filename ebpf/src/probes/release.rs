//! Sockets closed by their last holder: their attempts can produce nothing
//! more, so the attempts map holds live sockets, not history.

use aya_ebpf::{macros::cgroup_sock, programs::SockContext};
use sockerr_common::Outcome;

use crate::{
    kernel::{self, IPPROTO_TCP, TCP_SYN_SENT},
    maps::{attempt, forget, plain_address},
};

/// inet_release(), before the protocol's close: the socket still has its
/// file. Runs for every inet socket of every process (cgroup v2 root).
#[cgroup_sock(sock_release)]
pub fn sock_release(ctx: SockContext) -> i32 {
    // SAFETY: the context is valid for the program run.
    let (protocol, tcp_state) = unsafe { ((*ctx.sock).protocol, (*ctx.sock).state) };
    if protocol != IPPROTO_TCP {
        return 1;
    }
    let Some(sk) = plain_address(ctx.sock) else {
        return 1;
    };
    let inode = kernel::inode(kernel::socket(sk));
    // A pending attempt is left to the close's own SYN_SENT → CLOSE, which
    // counts it as aborted (`probes::state`).
    if let Some(state) = attempt(inode)
        && !(state.attempt.outcome() == Outcome::Pending && tcp_state == TCP_SYN_SENT as u32)
    {
        forget(inode);
    }
    1
}
