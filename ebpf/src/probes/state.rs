//! TCP state changes: where attempts start and where the kernel decides them.

use core::ffi::c_void;

use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};
use aya_log_ebpf::warn;
use sockerr_common::{Attempt, CallSites, Counter, SiteOp, SocketState};

use crate::{
    kernel::{self, TCP_CLOSE, TCP_ESTABLISHED, TCP_SYN_SENT},
    maps::{count, current_comm, socket_state, take_site, track},
};

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: BtfTracePointContext) -> i32 {
    let sk: *mut c_void = ctx.arg(0);
    let old: i32 = ctx.arg(1);
    let new: i32 = ctx.arg(2);
    match (old, new) {
        // tcp_v4_connect / tcp_v6_connect, in the task calling connect().
        (TCP_CLOSE, TCP_SYN_SENT) => start(&ctx, sk),
        (TCP_SYN_SENT, TCP_ESTABLISHED) => decide(sk, 0),
        // tcp_done_with_error() / tcp_v4_err() set sk_err before tcp_done().
        (TCP_SYN_SENT, TCP_CLOSE) => match kernel::error(sk) {
            // No error: the process itself closed or shut down the socket.
            0 => {}
            errno => decide(sk, errno),
        },
        _ => {}
    }
    0
}

fn start(ctx: &BtfTracePointContext, sk: *mut c_void) {
    let site = take_site(SiteOp::Connect);
    let inode = kernel::inode(sk);
    if inode == 0 {
        return;
    }
    let tracked = track(&SocketState {
        attempt: Attempt::new(),
        remote: kernel::remote(sk),
        inode,
        comm: current_comm(),
        sites: CallSites {
            connect: site,
            ..CallSites::default()
        },
    });
    if let Err(err) = tracked {
        warn!(
            ctx,
            "connect attempt not tracked: SOCKETS update failed ({})", err
        );
    }
}

/// Outcome of the attempt: established when `errno` is 0, failed otherwise.
/// Often runs in softirq context, so identity comes from the stored attempt.
fn decide(sk: *mut c_void, errno: i32) {
    let Some(state) = socket_state(sk) else {
        return;
    };
    let (decided, counter) = if errno == 0 {
        (state.attempt.established(), Counter::Established)
    } else {
        (state.attempt.failed(errno), Counter::Failed)
    };
    if decided {
        count(state.comm, counter, errno);
    }
}
