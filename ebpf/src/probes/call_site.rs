//! Uprobes on the C library's `connect` and `getsockopt` wrappers, attached
//! by the agent only to the processes it instruments: where each call was
//! made from. The kernel hook of the same system call (the connect state
//! change, the cgroup getsockopt hook) takes the site and keeps it with the
//! attempt.

use aya_ebpf::{
    bindings::BPF_F_USER_STACK, macros::uprobe, programs::ProbeContext,
    programs::tracing::StackIdContext as _,
};
use sockerr_common::{CallSite, SiteOp};

use crate::{
    kernel::{SO_ERROR, SOL_SOCKET},
    maps::{STACKS, put_site},
};

#[uprobe]
pub fn connect_site(ctx: ProbeContext) -> u32 {
    record(&ctx, SiteOp::Connect);
    0
}

/// getsockopt(fd, level, optname, ...): only SO_ERROR reads are kept.
#[uprobe]
pub fn getsockopt_site(ctx: ProbeContext) -> u32 {
    if ctx.arg::<i32>(1) == Some(SOL_SOCKET) && ctx.arg::<i32>(2) == Some(SO_ERROR) {
        record(&ctx, SiteOp::Getsockopt);
    }
    0
}

fn record(ctx: &ProbeContext, op: SiteOp) {
    let stack_id = match ctx.get_stackid(&STACKS, BPF_F_USER_STACK.into()) {
        Ok(id) => id as i32,
        Err(errno) => errno,
    };
    put_site(&CallSite {
        ret: caller(ctx),
        stack_id,
        op: op as u32,
    });
}

/// The return address into the wrapper's caller. At the wrapper's first
/// instruction it is still where the call put it.
#[cfg(bpf_target_arch = "x86_64")]
fn caller(ctx: &ProbeContext) -> u64 {
    // Only this architecture reads the caller from the stack.
    use aya_ebpf::helpers::bpf_probe_read_user;
    // SAFETY: the registers of the probed task; reading its stack may fault,
    // which the helper reports instead of crashing.
    let sp = unsafe { (*ctx.regs).rsp };
    unsafe { bpf_probe_read_user(sp as *const u64) }.unwrap_or(0)
}

#[cfg(bpf_target_arch = "aarch64")]
fn caller(ctx: &ProbeContext) -> u64 {
    // SAFETY: the registers of the probed task; x30 is the link register.
    unsafe { (*ctx.regs).regs[30] }
}
