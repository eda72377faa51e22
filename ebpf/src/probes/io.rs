//! Socket I/O (send/recv and plain read()/write() on a socket), through the
//! best hook the kernel offers: the `sock_send_length`/`sock_recv_length`
//! tracepoints (Linux ≥ 6.3), else fentry on `tcp_sendmsg`/`tcp_recvmsg`,
//! else kprobes on them. The agent attaches one of each pair.

use core::ffi::c_void;

use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid,
    macros::{btf_tracepoint, fentry, kprobe},
    programs::{BtfTracePointContext, FEntryContext, ProbeContext},
};
use sockerr_common::{Health, SS_CONNECTING, Trigger};

use crate::{
    kernel::{self, TCP_CLOSE},
    maps::{Caller, attempt, finding, health},
};

#[btf_tracepoint(function = "sock_send_length")]
pub fn sock_send_length(ctx: BtfTracePointContext) -> i32 {
    typed(ctx.arg(0), Trigger::Send)
}

#[btf_tracepoint(function = "sock_recv_length")]
pub fn sock_recv_length(ctx: BtfTracePointContext) -> i32 {
    typed(ctx.arg(0), Trigger::Recv)
}

#[fentry(function = "tcp_sendmsg")]
pub fn tcp_sendmsg_fentry(ctx: FEntryContext) -> i32 {
    typed(ctx.arg(0), Trigger::Send)
}

#[fentry(function = "tcp_recvmsg")]
pub fn tcp_recvmsg_fentry(ctx: FEntryContext) -> i32 {
    typed(ctx.arg(0), Trigger::Recv)
}

#[kprobe]
pub fn tcp_sendmsg_kprobe(ctx: ProbeContext) -> u32 {
    untyped(ctx.arg(0), Trigger::Send);
    0
}

#[kprobe]
pub fn tcp_recvmsg_kprobe(ctx: ProbeContext) -> u32 {
    untyped(ctx.arg(0), Trigger::Recv);
    0
}

/// A BTF-typed `struct sock *`. Hot path: only a socket in TCP_CLOSE can be
/// one whose attempt failed, so established traffic leaves after one load.
#[inline(always)]
fn typed(sk: *const c_void, trigger: Trigger) -> i32 {
    if kernel::state(sk) == TCP_CLOSE {
        io(sk, trigger);
    }
    0
}

/// A kprobe's raw `struct sock *`: the same, reading the state with a helper.
#[inline(always)]
fn untyped(sk: Option<*const c_void>, trigger: Trigger) {
    if let Some(sk) = sk
        && kernel::state_of(sk) == TCP_CLOSE
    {
        io(sk, trigger);
    }
}

fn io(sk: *const c_void, trigger: Trigger) {
    let socket = kernel::socket(sk);
    let inode = kernel::inode(socket);
    match attempt(inode) {
        Some(state) => {
            if let Some(kind) = state.attempt.io() {
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
