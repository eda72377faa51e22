//! sockerr's kernel programs: the hooks of the probe table (the agent's
//! `kernel/probes.rs`), each a thin adapter in `probes/` that hands events
//! to the state machine in `sockerr-common`, and the maps they share
//! (`maps.rs`). Why these hooks and not syscall tracepoints, what each map
//! holds and how findings are counted rather than sent: docs/design.md §2
//! and §4.
#![no_std]
#![no_main]
// atomic_xadd: core offers no atomic read-modify-write on this target.
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod kernel;
mod maps;
mod probes;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any path that could get here.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
