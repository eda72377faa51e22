//! Socket I/O (send/recv and plain read()/write() on a socket), through the
//! best hook the kernel offers: the `sock_send_length`/`sock_recv_length`
//! tracepoints (Linux ≥ 6.3), else fentry on `tcp_sendmsg`/`tcp_recvmsg`,
//! else kprobes on them. The agent attaches one of each pair.
//!
//! An I/O on a failed attempt either takes its pending error (the call
//! returns it, as an `SO_ERROR` read would: the process is told) or comes
//! after the error was consumed (docs/design.md §3). The tracepoints run
//! after the call and see what it returned; fentry and kprobes run before
//! it and see whether an error is pending (`sk_err`), which the call takes.

use core::ffi::c_void;

use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid,
    macros::{btf_tracepoint, fentry, kprobe},
    programs::{BtfTracePointContext, FEntryContext, ProbeContext},
};
use sockerr_common::{Attempt, Health, Outcome, SS_CONNECTING, Trigger};

use crate::{
    kernel::{self, TCP_CLOSE},
    maps::{Caller, attempt, finding, health},
};

#[btf_tracepoint(function = "sock_send_length")]
pub fn sock_send_length(ctx: BtfTracePointContext) -> i32 {
    returned(&ctx, Trigger::Send)
}

#[btf_tracepoint(function = "sock_recv_length")]
pub fn sock_recv_length(ctx: BtfTracePointContext) -> i32 {
    returned(&ctx, Trigger::Recv)
}

#[fentry(function = "tcp_sendmsg")]
pub fn tcp_sendmsg_fentry(ctx: FEntryContext) -> i32 {
    entering(ctx.arg(0), Trigger::Send)
}

#[fentry(function = "tcp_recvmsg")]
pub fn tcp_recvmsg_fentry(ctx: FEntryContext) -> i32 {
    entering(ctx.arg(0), Trigger::Recv)
}

#[kprobe]
pub fn tcp_sendmsg_kprobe(ctx: ProbeContext) -> u32 {
    entering_untyped(ctx.arg(0), Trigger::Send);
    0
}

#[kprobe]
pub fn tcp_recvmsg_kprobe(ctx: ProbeContext) -> u32 {
    entering_untyped(ctx.arg(0), Trigger::Recv);
    0
}

/// `sock_{send,recv}_length(struct sock *, int ret, int flags)`, after the
/// call, for every socket family. Hot path: established TCP traffic leaves
/// after one load (only a socket in TCP_CLOSE can be one whose attempt
/// failed), every other kind of socket after the next two.
#[inline(always)]
fn returned(ctx: &BtfTracePointContext, trigger: Trigger) -> i32 {
    let sk: *const c_void = ctx.arg(0);
    if kernel::state(sk) == TCP_CLOSE && kernel::is_tcp(sk) {
        let ret: i32 = ctx.arg(1);
        io(sk, trigger, |a| ret < 0 && ret.wrapping_neg() == a.errno());
    }
    0
}

/// A BTF-typed `struct sock *` of `tcp_{send,recv}msg` (TCP only), before
/// the call.
#[inline(always)]
fn entering(sk: *const c_void, trigger: Trigger) -> i32 {
    if kernel::state(sk) == TCP_CLOSE {
        io(sk, trigger, |_| kernel::pending_error(sk) != 0);
    }
    0
}

/// A kprobe's raw `struct sock *`: the same, reading with a helper.
#[inline(always)]
fn entering_untyped(sk: Option<*const c_void>, trigger: Trigger) {
    if let Some(sk) = sk
        && kernel::state_of(sk) == TCP_CLOSE
    {
        io(sk, trigger, |_| kernel::pending_error_of(sk) != 0);
    }
}

/// `took_error`: whether this call returns (and so takes) the attempt's
/// pending error; asked only of a socket with an attempt.
#[inline(always)]
fn io(sk: *const c_void, trigger: Trigger, took_error: impl FnOnce(&Attempt) -> bool) {
    let socket = kernel::socket(sk);
    let inode = kernel::inode(socket);
    match attempt(inode) {
        Some(state) => {
            let took = state.attempt.outcome() == Outcome::Failed && took_error(&state.attempt);
            if let Some(kind) = state.attempt.io(took) {
                finding(
                    inode,
                    state,
                    kind,
                    trigger,
                    &Caller::current(bpf_get_current_pid_tgid()),
                );
            }
        }
        // Still SS_CONNECTING: a client whose attempt failed, evicted.
        None if kernel::connect_state(socket) == SS_CONNECTING => health(Health::AttemptUntracked),
        None => {}
    }
}
