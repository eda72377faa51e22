//! Run counts and run time of every loaded eBPF program, as the kernel
//! counts them with `kernel.bpf_stats_enabled=1` (which slows every program
//! a little), for `matrix --bpf-stats` inside the kernel-matrix VMs (no
//! bpftool there); and the switch itself, which the benchmark flips too.

use std::{fs, io, os::fd::FromRawFd};

use anyhow::{Context as _, Result};

const STATS_SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// Whether the statistics are on.
pub fn enabled() -> bool {
    fs::read_to_string(STATS_SYSCTL).is_ok_and(|v| v.trim() != "0")
}

/// Turns the statistics on or off for the whole machine.
pub fn set(on: bool) -> Result<()> {
    let value = if on { "1" } else { "0" };
    fs::write(STATS_SYSCTL, value).with_context(|| format!("writing {value} to {STATS_SYSCTL}"))
}

/// One loaded program's statistics.
pub struct Program {
    pub id: u32,
    pub name: String,
    pub run_cnt: u64,
    pub run_time_ns: u64,
}

const BPF_PROG_GET_NEXT_ID: libc::c_long = 11;
const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
/// Offset of `name` (16 bytes) in `struct bpf_prog_info` (stable UAPI).
const INFO_NAME: usize = 64;

/// bpf(2): `attr` is a zero-initialised prefix of `union bpf_attr` as long
/// as `cmd` needs (the kernel checks that what it does not know is 0).
pub fn bpf<A>(cmd: libc::c_long, attr: &mut A) -> io::Result<libc::c_long> {
    // SAFETY: attr is valid for its whole size, which is what is passed.
    let ret =
        unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut A, std::mem::size_of::<A>()) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(ret)
}

/// Prints `BPFSTAT name=<program> id=<id> run_cnt=<n> run_time_ns=<ns> ns_per_run=<ns>`
/// for every loaded program that ran.
pub fn print() {
    match programs() {
        Ok(programs) => {
            for p in programs {
                if let Some(per_run) = p.run_time_ns.checked_div(p.run_cnt) {
                    println!(
                        "BPFSTAT name={} id={} run_cnt={} run_time_ns={} ns_per_run={per_run}",
                        p.name, p.id, p.run_cnt, p.run_time_ns
                    );
                }
            }
        }
        Err(e) => println!("matrix: bpf stats unavailable: {e:#}"),
    }
}

/// Every loaded program with its counters.
pub fn programs() -> Result<Vec<Program>> {
    let mut programs = Vec::new();
    let mut id = 0u32;
    loop {
        // start_id, then next_id (both u32) in the first 8 bytes.
        let mut attr = [u64::from(id), 0, 0, 0];
        match bpf(BPF_PROG_GET_NEXT_ID, &mut attr) {
            Ok(_) => id = (attr[0] >> 32) as u32,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(programs),
            Err(e) => return Err(e).context("BPF_PROG_GET_NEXT_ID"),
        }
        let mut attr = [u64::from(id), 0, 0, 0];
        let Ok(fd) = bpf(BPF_PROG_GET_FD_BY_ID, &mut attr) else {
            continue; // unloaded meanwhile
        };
        // SAFETY: the kernel just returned this fd to us.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) };
        let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
        let mut info = [0u8; 256];
        let mut attr = [
            u64::from(raw as u32) | ((info.len() as u64) << 32),
            info.as_mut_ptr() as u64,
            0,
            0,
        ];
        bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr).context("BPF_OBJ_GET_INFO_BY_FD")?;
        let name = &info[INFO_NAME..INFO_NAME + 16];
        let name =
            String::from_utf8_lossy(&name[..name.iter().position(|b| *b == 0).unwrap_or(16)])
                .into_owned();
        // The counters, from the fd's fdinfo (present since Linux 5.1).
        let fdinfo = fs::read_to_string(format!("/proc/self/fdinfo/{raw}"))?;
        let field = |key: &str| {
            fdinfo
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        if let (Some(run_cnt), Some(run_time_ns)) = (field("run_cnt:"), field("run_time_ns:")) {
            programs.push(Program {
                id,
                name,
                run_cnt,
                run_time_ns,
            });
        }
    }
}
