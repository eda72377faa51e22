//! `getsockopt(SOL_SOCKET, SO_ERROR)`: what the process was told.

use aya_ebpf::{macros::cgroup_sockopt, programs::SockoptContext};
use sockerr_common::{Counter, ReadClass, SiteOp, Trigger};

use crate::{
    kernel::{SO_ERROR, SOL_SOCKET},
    maps::{count, current_comm, emit, plain_address, socket_state, take_site},
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
    let Some(state) = plain_address(sk.cast()).and_then(socket_state) else {
        return;
    };
    // SAFETY: bounds checked against optval_end above.
    let value = unsafe { *start.cast::<i32>() };
    let (class, finding) = state.attempt.so_error_read(value);
    if class != ReadClass::Pending
        && let Some(slot) = state.attempt.latest_read_slot()
        // Opaque to LLVM, so this bounds check stays: LLVM would drop it as
        // implied by the state machine's own, which the verifier cannot see.
        && let Some(kept) = state.sites.reads.get_mut(core::hint::black_box(slot))
    {
        *kept = site;
    }
    count(current_comm(), Counter::read(class), 0);
    if let Some(kind) = finding {
        emit(state, kind, Trigger::Getsockopt);
    }
}
