//! Socket I/O (send/recv and plain read()/write() on a socket).

use core::ffi::c_void;

use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};
use sockerr_common::Trigger;

use crate::{
    kernel::{self, TCP_CLOSE},
    maps::{emit, socket_state},
};

#[btf_tracepoint(function = "sock_send_length")]
pub fn sock_send_length(ctx: BtfTracePointContext) -> i32 {
    io(&ctx, Trigger::Send)
}

#[btf_tracepoint(function = "sock_recv_length")]
pub fn sock_recv_length(ctx: BtfTracePointContext) -> i32 {
    io(&ctx, Trigger::Recv)
}

#[inline(always)]
fn io(ctx: &BtfTracePointContext, trigger: Trigger) -> i32 {
    let sk: *mut c_void = ctx.arg(0);
    // Hot path: only a socket in TCP_CLOSE can be one whose attempt failed,
    // so established traffic leaves after reading one byte.
    if kernel::state(sk) != TCP_CLOSE {
        return 0;
    }
    if let Some(state) = socket_state(sk)
        && let Some(kind) = state.attempt.io()
    {
        emit(state, kind, trigger);
    }
    0
}
