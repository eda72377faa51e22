//! Loading the eBPF object into the kernel and attaching its programs.

use std::{fs::File, path::PathBuf};

use anyhow::{Context as _, Result};
use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::{MapData, PerCpuArray, PerCpuHashMap, RingBuf, StackTraceMap},
    programs::{BtfTracePoint, CgroupAttachMode, CgroupSockopt, Program},
};
use sockerr_common::{CounterKey, KernelOffsets, names};

use crate::{btf, metrics::KernelCounts};

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sockerr"));

/// Each probe: (name in metrics and `check`, program in the object, what it gives).
pub const PROBES: [(&str, &str, &str); 4] = [
    (
        "inet_sock_set_state",
        "inet_sock_set_state",
        "TCP state changes: connect attempts and their outcome",
    ),
    (
        "getsockopt",
        "so_error",
        "SO_ERROR values processes read (cgroup getsockopt on the cgroup v2 root)",
    ),
    (
        "sock_send_length",
        "sock_send_length",
        "sends on sockets whose connect failed",
    ),
    (
        "sock_recv_length",
        "sock_recv_length",
        "receives on sockets whose connect failed",
    ),
];

/// The loaded programs and the maps the agent reads. Dropping it detaches
/// and unloads everything (all attachments are bpf_links owned here).
pub struct Probes {
    pub ebpf: Ebpf,
    pub findings: RingBuf<MapData>,
    pub counters: KernelCounters,
    /// User stacks of call sites.
    pub stacks: StackTraceMap<MapData>,
    /// Per probe of [`PROBES`]: attached or not.
    pub attached: [bool; PROBES.len()],
}

/// The kernel's per-CPU counter maps.
pub struct KernelCounters {
    counters: PerCpuHashMap<MapData, CounterKey, u64>,
    health: PerCpuArray<MapData, u64>,
}

impl KernelCounters {
    /// Running totals, summed over CPUs.
    pub fn read(&self) -> Result<KernelCounts> {
        let mut counts = KernelCounts::default();
        for entry in self.counters.iter() {
            let (key, per_cpu) = entry.context("reading the COUNTERS map")?;
            counts.counters.push((key, per_cpu.iter().sum()));
        }
        for (slot, total) in counts.health.iter_mut().enumerate() {
            *total = self
                .health
                .get(&(slot as u32), 0)
                .context("reading the HEALTH map")?
                .iter()
                .sum();
        }
        Ok(counts)
    }
}

/// Loads every program into the kernel (the verifier runs here) without
/// attaching anything. The call-site uprobes are attached later, per process.
pub fn load(offsets: &KernelOffsets) -> Result<Ebpf> {
    let btf = Btf::from_sys_fs().context("reading kernel BTF from /sys/kernel/btf/vmlinux")?;
    let mut ebpf = EbpfLoader::new()
        .override_global(names::OFFSETS, offsets, true)
        .load(OBJECT)
        .context("loading sockerr's eBPF object into the kernel")?;
    for (name, prog) in ebpf.programs_mut() {
        let result = match prog {
            Program::BtfTracePoint(p) => p.load(name, &btf),
            Program::CgroupSockopt(p) => p.load(),
            Program::UProbe(p) => p.load(),
            other => anyhow::bail!("program {name}: unexpected type {:?}", other.prog_type()),
        };
        result.with_context(|| format!("loading program {name} (verifier)"))?;
    }
    Ok(ebpf)
}

impl Probes {
    /// Loads and attaches every probe; getsockopt goes on the cgroup v2 root,
    /// which covers every process on the host, in any container.
    pub fn attach() -> Result<Self> {
        let offsets = btf::Btf::from_file(btf::VMLINUX)?.kernel_offsets()?;
        let mut ebpf = load(&offsets)?;
        if let Err(e) =
            aya_log::EbpfLogger::init(&mut ebpf).map(crate::pipeline::forward_kernel_logs)
        {
            tracing::warn!("kernel log records unavailable: {e}");
        }
        let root = cgroup2_root()?;
        let mut attached = [false; PROBES.len()];
        for (i, (name, program, _)) in PROBES.iter().enumerate() {
            let prog = ebpf.program_mut(program).expect("loaded above");
            let result = if let Ok(tp) = <&mut BtfTracePoint>::try_from(&mut *prog) {
                tp.attach().map(drop)
            } else {
                let cgroup = File::open(&root)
                    .with_context(|| format!("opening cgroup v2 root {}", root.display()))?;
                <&mut CgroupSockopt>::try_from(prog)?
                    .attach(cgroup, CgroupAttachMode::Single)
                    .map(drop)
            };
            match result {
                Ok(()) => attached[i] = true,
                Err(e) => tracing::error!(probe = name, "attaching failed: {e}"),
            }
        }
        // Without these two nothing can be detected; I/O probes are optional.
        anyhow::ensure!(
            attached[0] && attached[1],
            "could not attach the connect and getsockopt probes (see the errors above; `sockerr check` tells why)"
        );
        let mut map = |name| {
            ebpf.take_map(name)
                .with_context(|| format!("map {name} missing"))
        };
        Ok(Self {
            findings: RingBuf::try_from(map(names::FINDINGS)?)?,
            counters: KernelCounters {
                counters: PerCpuHashMap::try_from(map(names::COUNTERS)?)?,
                health: PerCpuArray::try_from(map(names::HEALTH)?)?,
            },
            stacks: StackTraceMap::try_from(map(names::STACKS)?)?,
            ebpf,
            attached,
        })
    }
}

/// Where cgroup v2 is mounted (/sys/fs/cgroup, or /sys/fs/cgroup/unified on
/// hybrid hosts), from /proc/mounts.
pub fn cgroup2_root() -> Result<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
    mounts
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.get(2) == Some(&"cgroup2"))
        .and_then(|f| f.get(1).map(PathBuf::from))
        .context("no cgroup v2 filesystem mounted (see /proc/mounts); mount one with: mount -t cgroup2 none /sys/fs/cgroup")
}
