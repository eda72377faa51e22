//! Shared between sockerr's eBPF programs and its agent.
//!
//! - [`attempt`]: the per-connect-attempt state machine that decides findings.
//!   It is plain `no_std` Rust: the kernel programs run it, the host tests it.
//! - [`abi`]: the `#[repr(C)]` records the kernel and user space exchange
//!   (finding records, counter and tally keys, kernel struct offsets).
#![cfg_attr(not(test), no_std)]

pub mod abi;
pub mod attempt;

pub use abi::*;
pub use attempt::{Attempt, FindingKind, MAX_READS, Outcome, ReadClass};
