//! `getsockopt(SOL_SOCKET, SO_ERROR)`: what the process was told.
//!
//! Two builds of one hook: `so_error` asks who is calling; `so_error_compat`
//! is for kernels whose getsockopt hook may not (Debian 11's 5.10 refuses
//! `bpf_get_current_pid_tgid` there) and attributes the read to the process
//! that made the connect, without call sites for reads.
//!
//! The hook runs for every getsockopt of every process and must leave each
//! call's outcome exactly as the kernel produced it (docs/design.md §2):
//! it sets `optlen` to 0 on the way out, which every kernel since 5.8 reads
//! as "use the kernel's own result, copy nothing back". Returning with the
//! kernel's `optlen` instead makes the kernel copy the program's view back
//! (a page at most), and before Linux 6.5 turns a result larger than a page
//! into EFAULT (iptables-legacy reading its ruleset, `SO_PEERGROUPS`).

use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid, macros::cgroup_sockopt, programs::SockoptContext,
};
use sockerr_common::{CallSite, Counter, Health, ReadClass, SS_CONNECTING, SiteOp, Trigger};

use crate::{
    kernel::{self, IPPROTO_TCP, SO_ERROR, SOCK_STREAM, SOL_SOCKET, TCP_CLOSE, TCP_SYN_SENT},
    maps::{Caller, attempt, count, finding, health, keep_read_site, plain_address, take_site},
};

/// Runs after the kernel's own getsockopt. It must return 1 and change
/// nothing: the process sees exactly what it would without sockerr.
#[cgroup_sockopt(getsockopt)]
pub fn so_error(ctx: SockoptContext) -> i32 {
    observe(&ctx, true);
    untouched(&ctx)
}

#[cgroup_sockopt(getsockopt)]
pub fn so_error_compat(ctx: SockoptContext) -> i32 {
    observe(&ctx, false);
    untouched(&ctx)
}

/// The kernel's result stands as it is: no copy-back (see the module docs).
#[inline(always)]
fn untouched(ctx: &SockoptContext) -> i32 {
    // SAFETY: `optlen` is writable in getsockopt programs.
    unsafe { (*ctx.sockopt).optlen = 0 };
    1
}

/// `ask`: whether this build may ask the kernel who is calling. A constant
/// in each build: the other build carries no such helper call.
#[inline(always)]
fn observe(ctx: &SockoptContext, ask: bool) {
    // SAFETY: the context is valid for the program run.
    let opt = unsafe { &*ctx.sockopt };
    if opt.level != SOL_SOCKET || opt.optname != SO_ERROR {
        return;
    }
    // Asked once, only by the build that may.
    let pid_tgid = if ask { bpf_get_current_pid_tgid() } else { 0 };
    // Taken before any early return, so it cannot be left for a later call.
    let site = if ask {
        take_site(SiteOp::Getsockopt, pid_tgid)
    } else {
        CallSite::default()
    };
    // SAFETY: reading context fields.
    let (sk, start, end) = unsafe {
        (
            opt.__bindgen_anon_1.sk,
            opt.__bindgen_anon_2.optval,
            opt.__bindgen_anon_3.optval_end,
        )
    };
    // SAFETY: `sk` is the hook's socket; its bpf_sock fields are readable.
    if sk.is_null() || unsafe { (*sk).protocol != IPPROTO_TCP || (*sk).type_ != SOCK_STREAM } {
        return;
    }
    // The value is read from the buffer whatever `optlen` says: a program
    // that ran before this one (another agent's, or a second sockerr's) may
    // have set it to 0 as this one does, which leaves the kernel's result
    // in the buffer and in force. The buffer holds 4 bytes only when the
    // caller's did.
    if opt.retval != 0 || start.wrapping_byte_add(4) > end {
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
