//! `getsockopt(SOL_SOCKET, SO_ERROR)`: what the process was told.

use aya_ebpf::{macros::cgroup_sockopt, programs::SockoptContext};
use sockerr_common::{Counter, Health, ReadClass, SS_CONNECTING, SiteOp, Trigger};

use crate::{
    kernel::{self, SO_ERROR, SOL_SOCKET, TCP_CLOSE, TCP_SYN_SENT},
    maps::{
        attempt, count, current_comm, finding, health, keep_read_site, plain_address, take_site,
    },
};

/// Runs after the kernel's own getsockopt. It must return 1 and change
/// nothing: the process sees exactly what it would without sockerr.
#[cgroup_sockopt(getsockopt)]
pub fn so_error(ctx: SockoptContext) -> i32 {
    observe(&ctx);
    1
}

fn observe(ctx: &SockoptContext) {
    // SAFETY: the context is valid for the program run.
    let opt = unsafe { &*ctx.sockopt };
    if opt.level != SOL_SOCKET || opt.optname != SO_ERROR || opt.retval != 0 || opt.optlen < 4 {
        return;
    }
    // SAFETY: reading context fields.
    let (sk, start, end) = unsafe {
        (
            opt.__bindgen_anon_1.sk,
            opt.__bindgen_anon_2.optval,
            opt.__bindgen_anon_3.optval_end,
        )
    };
    // Taken before any early return, so it cannot be left for a later call.
    let site = take_site(SiteOp::Getsockopt);
    if sk.is_null() || start.wrapping_byte_add(4) > end {
        return;
    }
    let Some(sk) = plain_address(sk) else {
        return;
    };
    let socket = kernel::socket(sk);
    let inode = kernel::inode(socket);
    let Some(state) = attempt(inode) else {
        // A connecting socket, or a client whose attempt failed: its
        // attempt was evicted, so this read cannot be judged.
        let tcp_state = kernel::state_of(sk);
        if tcp_state == TCP_SYN_SENT
            || (tcp_state == TCP_CLOSE && kernel::connect_state(socket) == SS_CONNECTING)
        {
            health(Health::AttemptUntracked);
        }
        return;
    };
    // SAFETY: bounds checked against optval_end above.
    let value = unsafe { *start.cast::<i32>() };
    let (class, finding_kind) = state.attempt.so_error_read(value);
    if class != ReadClass::Pending
        && site.captured()
        && let Some(slot) = state.attempt.latest_read_slot()
    {
        keep_read_site(inode, state, slot, site);
    }
    count(current_comm(), Counter::read(class), 0);
    if let Some(kind) = finding_kind {
        finding(inode, state, kind, Trigger::Getsockopt);
    }
}
