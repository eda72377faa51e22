//! TCP state changes: where attempts start, where the kernel decides them,
//! and where the process gives up on them.

use core::ffi::c_void;

use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid, macros::btf_tracepoint, programs::BtfTracePointContext,
};
use aya_log_ebpf::warn;
use sockerr_common::{Attempt, Counter, Health, Outcome, SS_UNCONNECTED, SiteOp, SocketState};

use crate::{
    kernel::{self, EADDRNOTAVAIL, TCP_CLOSE, TCP_ESTABLISHED, TCP_SYN_SENT},
    maps::{
        attempt, count, count_remote, counted_cgroup, current_comm, decided, failed, forget,
        health, now_ns, take_site, track,
    },
};

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: BtfTracePointContext) -> i32 {
    let sk: *mut c_void = ctx.arg(0);
    let old: i32 = ctx.arg(1);
    let new: i32 = ctx.arg(2);
    // The transitions that matter come first (two context loads), then
    // whether the socket is TCP at all: DCCP and MPTCP sockets change
    // state through the same tracepoint (docs/design.md §2).
    let relevant = matches!(
        (old, new),
        (TCP_CLOSE, TCP_SYN_SENT) | (TCP_SYN_SENT, TCP_ESTABLISHED) | (TCP_SYN_SENT, TCP_CLOSE)
    );
    if !relevant || !kernel::is_tcp(sk) {
        return 0;
    }
    match (old, new) {
        // tcp_v4_connect / tcp_v6_connect, in the task calling connect().
        (TCP_CLOSE, TCP_SYN_SENT) => start(&ctx, sk),
        (TCP_SYN_SENT, TCP_ESTABLISHED) => decide(sk, 0),
        // tcp_done_with_error() / tcp_v4_err() set sk_err before tcp_done().
        (TCP_SYN_SENT, TCP_CLOSE) => match kernel::error(sk) {
            0 => closed_while_pending(sk),
            errno => decide(sk, errno),
        },
        _ => {}
    }
    0
}

fn start(ctx: &BtfTracePointContext, sk: *mut c_void) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let site = take_site(SiteOp::Connect, pid_tgid);
    let inode = kernel::inode(kernel::socket(sk));
    if inode == 0 {
        return;
    }
    let state = SocketState {
        attempt: Attempt::new(),
        tgid: (pid_tgid >> 32) as u32,
        remote: kernel::remote(sk),
        started_ns: now_ns(),
        cgroup_id: counted_cgroup(),
        comm: current_comm(),
    };
    if let Err(err) = track(inode, &state, site) {
        warn!(
            ctx,
            "connect attempt not tracked: SOCKETS update failed ({})", err
        );
    }
}

/// Outcome of the attempt: established when `errno` is 0, failed otherwise.
/// Often runs in softirq context, so identity comes from the stored attempt.
fn decide(sk: *mut c_void, errno: i32) {
    match attempt(kernel::inode(kernel::socket(sk))) {
        Some(state) => decided(state, errno),
        None => health(Health::AttemptUntracked),
    }
}

/// SYN_SENT → CLOSE with no error: in the task that did it. Still inside
/// connect() (the socket not yet `SS_CONNECTING`), the kernel gave up
/// before sending the SYN and the errno went back to the process only: with
/// no local port it is counted as `EADDRNOTAVAIL` (inet_hash_connect() found
/// none: ephemeral ports exhausted), otherwise with errno 0 (`unknown`). The
/// port is a weak witness (docs/design.md §4): tcp_set_state(TCP_CLOSE) gives
/// it back (inet_put_port() zeroes inet_num) before this tracepoint fires
/// unless the process bound a port of its own, so any failure here of a
/// socket that did not bind() a port reads 0, and rarer ones (e.g. `ENOBUFS`)
/// are counted as `EADDRNOTAVAIL` too. After connect() returned, the process
/// closed or shut the socket down while the outcome was pending: usually an
/// application-level connect timeout, counted as aborted, never a finding.
fn closed_while_pending(sk: *mut c_void) {
    let socket = kernel::socket(sk);
    let inode = kernel::inode(socket);
    let Some(state) = attempt(inode) else {
        health(Health::AttemptUntracked);
        return;
    };
    if state.attempt.outcome() != Outcome::Pending {
        return;
    }
    if kernel::connect_state(socket) == SS_UNCONNECTED {
        let errno = if kernel::local_port(sk) == 0 {
            EADDRNOTAVAIL
        } else {
            0
        };
        // The process may still do I/O on it: the attempt stays, failed.
        state.attempt.failed(errno);
        failed(state.comm, state.cgroup_id, state.remote, errno);
    } else {
        count(state.comm, state.cgroup_id, Counter::Aborted, 0);
        count_remote(state.remote, 0, true);
        forget(inode);
    }
}
