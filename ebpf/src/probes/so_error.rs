//! `getsockopt(SOL_SOCKET, SO_ERROR)`: what the process was told.
//!
//! Two builds of one hook: `so_error` asks who is calling; `so_error_compat`
//! is for kernels whose getsockopt hook may not (Debian 11's 5.10 refuses
//! `bpf_get_current_pid_tgid` there) and attributes the read to the process
//! that made the connect, without call sites for reads.

use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid, macros::cgroup_sockopt, programs::SockoptContext,
};
use sockerr_common::{CallSite, Counter, Health, ReadClass, SS_CONNECTING, SiteOp, Trigger};

use crate::{
    kernel::{self, SO_ERROR, SOL_SOCKET, TCP_CLOSE, TCP_SYN_SENT},
    maps::{Caller, attempt, count, finding, health, keep_read_site, plain_address, take_site},
};

/// Runs after the kernel's own getsockopt. It must return 1 and change
/// nothing: the process sees exactly what it would without sockerr.
#[cgroup_sockopt(getsockopt)]
pub fn so_error(ctx: SockoptContext) -> i32 {
    observe(&ctx, true);
    1
}

#[cgroup_sockopt(getsockopt)]
pub fn so_error_compat(ctx: SockoptContext) -> i32 {
    observe(&ctx, false);
    1
}

/// `ask`: whether this build may ask the kernel who is calling. A constant
/// in each build: the other build carries no such helper call.
#[inline(always)]
fn observe(ctx: &SockoptContext, ask: bool) {
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
    // Asked once, only by the build that may.
    let pid_tgid = if ask { bpf_get_current_pid_tgid() } else { 0 };
    // Taken before any early return, so it cannot be left for a later call.
    let site = if ask {
        take_site(SiteOp::Getsockopt, pid_tgid)
    } else {
        CallSite::default()
    };
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
    let caller = if ask {
        Caller::current(pid_tgid)
    } else {
        Caller::connecting(state)
    };
    count(caller.comm, caller.cgroup_id, Counter::read(class), 0);
    if let Some(kind) = finding_kind {
        finding(inode, state, kind, Trigger::Getsockopt, &caller);
    }
}
