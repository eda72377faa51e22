//! `sockerr-scenario floor`: the least a program on each of the agent's
//! hooks can cost. Attaches one program that does nothing (the getsockopt
//! one only leaves the caller's result alone, as the agent's must) to each
//! hook the agent uses on a kernel without trampolines, prints "floor
//! attached", and holds them until its standard input closes. The
//! benchmark runs its loops meanwhile and reads each program's time per
//! call (`kernel.bpf_stats_enabled`) beside the agent's own: what is above
//! it is the agent's work, what is below it no program on that hook can
//! save.
//!
//! aya loads programs from an object file only; these are a few
//! instructions each, loaded with bpf(2) on the kernel's own definitions
//! (aya-obj's bindings). A raw tracepoint runs through the same dispatch as
//! a BTF one (`bpf_trace_run`), so it stands for the agent's `tp_btf`
//! programs.

use std::{
    ffi::CString,
    fs::File,
    io::{self, Read as _},
    mem,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

use anyhow::{Context as _, Result};
use aya_obj::generated::{bpf_attach_type, bpf_attr, bpf_cmd, bpf_insn, bpf_prog_type};
use sockerr_scenarios::bpf_stats;

/// `r0 = imm`.
fn mov_r0(imm: i32) -> bpf_insn {
    insn(0xb7, 0, 0, 0, imm)
}

fn exit() -> bpf_insn {
    insn(0x95, 0, 0, 0, 0)
}

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> bpf_insn {
    // SAFETY: a plain struct of integers.
    let mut i: bpf_insn = unsafe { mem::zeroed() };
    i.code = code;
    i.set_dst_reg(dst);
    i.set_src_reg(src);
    i.off = off;
    i.imm = imm;
    i
}

fn bpf(cmd: bpf_cmd, attr: &mut bpf_attr) -> io::Result<OwnedFd> {
    let fd = bpf_stats::bpf(cmd as libc::c_long, attr)?;
    // SAFETY: a new descriptor the kernel gave us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn load(
    name: &str,
    kind: bpf_prog_type,
    attach: Option<bpf_attach_type>,
    code: &[bpf_insn],
) -> Result<OwnedFd> {
    let license = c"GPL";
    // SAFETY: all-zero is every field's "not given".
    let mut attr: bpf_attr = unsafe { mem::zeroed() };
    // SAFETY: the union's BPF_PROG_LOAD member.
    let load = unsafe { &mut attr.__bindgen_anon_3 };
    load.prog_type = kind as u32;
    load.insn_cnt = code.len() as u32;
    load.insns = code.as_ptr() as u64;
    load.license = license.as_ptr() as u64;
    load.expected_attach_type = attach.map_or(0, |a| a as u32);
    for (to, from) in load.prog_name.iter_mut().zip(name.bytes().take(15)) {
        *to = from as libc::c_char;
    }
    bpf(bpf_cmd::BPF_PROG_LOAD, &mut attr).with_context(|| format!("loading {name}"))
}

fn raw_tracepoint(name: &str, tracepoint: &str) -> Result<[OwnedFd; 2]> {
    let prog = load(
        name,
        bpf_prog_type::BPF_PROG_TYPE_RAW_TRACEPOINT,
        None,
        &[mov_r0(0), exit()],
    )?;
    let tp = CString::new(tracepoint)?;
    // SAFETY: as in `load`.
    let mut attr: bpf_attr = unsafe { mem::zeroed() };
    attr.raw_tracepoint.name = tp.as_ptr() as u64;
    attr.raw_tracepoint.prog_fd = prog.as_raw_fd() as u32;
    let link = bpf(bpf_cmd::BPF_RAW_TRACEPOINT_OPEN, &mut attr)
        .with_context(|| format!("attaching {name} to {tracepoint}"))?;
    Ok([prog, link])
}

/// A program on the cgroup v2 root, through a link (gone with this process).
fn cgroup(
    name: &str,
    kind: bpf_prog_type,
    attach: bpf_attach_type,
    code: &[bpf_insn],
    root: &File,
) -> Result<[OwnedFd; 2]> {
    let prog = load(name, kind, Some(attach), code)?;
    // SAFETY: as in `load`.
    let mut attr: bpf_attr = unsafe { mem::zeroed() };
    // SAFETY: the union's BPF_LINK_CREATE member.
    let create = unsafe { &mut attr.link_create };
    create.__bindgen_anon_1.prog_fd = prog.as_raw_fd() as u32;
    create.__bindgen_anon_2.target_fd = root.as_raw_fd() as u32;
    create.attach_type = attach as u32;
    let link = bpf(bpf_cmd::BPF_LINK_CREATE, &mut attr)
        .with_context(|| format!("attaching {name} to the cgroup root"))?;
    Ok([prog, link])
}

/// The cgroup v2 hierarchy's root, wherever it is mounted.
fn cgroup_root() -> Result<File> {
    let path = sockerr_testkit::cgroup2_root()?;
    File::open(&path).with_context(|| format!("opening {}", path.display()))
}

/// Offset of `optlen` in `struct bpf_sockopt` (three 8-byte pointers, then
/// level and optname).
const SOCKOPT_OPTLEN: i16 = 32;

pub fn hold() -> Result<()> {
    let root = cgroup_root()?;
    let mut held = Vec::new();
    for (name, tracepoint) in [
        ("floor_state", "inet_sock_set_state"),
        ("floor_send", "sock_send_length"),
        ("floor_recv", "sock_recv_length"),
    ] {
        held.extend(raw_tracepoint(name, tracepoint)?);
    }
    // optlen = 0: the kernel's result stands, nothing is copied back (what
    // the agent's hook does, docs/design.md §2); then allow the call.
    let getsockopt = [
        insn(0xb7, 2, 0, 0, 0),
        insn(0x63, 1, 2, SOCKOPT_OPTLEN, 0),
        mov_r0(1),
        exit(),
    ];
    held.extend(cgroup(
        "floor_sockopt",
        bpf_prog_type::BPF_PROG_TYPE_CGROUP_SOCKOPT,
        bpf_attach_type::BPF_CGROUP_GETSOCKOPT,
        &getsockopt,
        &root,
    )?);
    held.extend(cgroup(
        "floor_release",
        bpf_prog_type::BPF_PROG_TYPE_CGROUP_SOCK,
        bpf_attach_type::BPF_CGROUP_INET_SOCK_RELEASE,
        &[mov_r0(1), exit()],
        &root,
    )?);
    println!("floor attached");
    io::stdin().read_to_end(&mut Vec::new())?;
    drop(held);
    Ok(())
}
