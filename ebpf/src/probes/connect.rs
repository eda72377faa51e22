//! connect() calls that fail before the attempt enters SYN_SENT: no route
//! (`ENETUNREACH`, `EHOSTUNREACH`), a policy (`EPERM`, `EACCES`). They
//! change no TCP state, so only the call's return value shows them; fexit
//! sees it where the kernel allows BPF trampolines (docs/design.md §7).

use core::ffi::c_void;

use aya_ebpf::{macros::fexit, programs::FExitContext};

use crate::{
    kernel,
    maps::{attempt, counted_cgroup, current_comm, failed},
};

/// What a connect() can fail with before the handshake starts: no route
/// or network (`ENETUNREACH`, `EHOSTUNREACH`, `ENETDOWN`), a policy
/// (`EPERM`, `EACCES`), no source address (`EADDRNOTAVAIL`), no memory
/// (`ENOBUFS`, `ENOMEM`). An allow-list: anything else (`EINPROGRESS`, an
/// interrupted or aborted call, bad arguments, an error the state changes
/// already counted) is left alone.
const BEFORE_HANDSHAKE: [i32; 8] = [101, 113, 100, 1, 13, 99, 105, 12];

/// `inet_stream_connect(struct socket *, struct sockaddr *, int, int)`: its
/// return value follows the four arguments.
#[fexit(function = "inet_stream_connect")]
pub fn inet_stream_connect(ctx: FExitContext) -> i32 {
    // An int: the upper half of the saved register means nothing.
    let ret: i32 = ctx.arg(4);
    let errno = ret.wrapping_neg();
    if !BEFORE_HANDSHAKE.contains(&errno) {
        return 0;
    }
    let sock: *const c_void = ctx.arg(0);
    // An attempt that reached SYN_SENT is counted by the state changes.
    if attempt(kernel::inode(sock as u64)).is_some() {
        return 0;
    }
    let Some(remote) = kernel::sockaddr_endpoint(ctx.arg(1)) else {
        return 0;
    };
    failed(current_comm(), counted_cgroup(), remote, errno);
    0
}
