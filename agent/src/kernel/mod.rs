//! The eBPF object and the kernel's BTF in; attached programs and the agent's maps out.
//!
//! Loading the object into the kernel and attaching its programs as the
//! probe table ([`probes::PROBES`]) says, each probe through the first of
//! its hooks this kernel accepts, with struct offsets read from the
//! kernel's BTF ([`btf`]). [`Kernel`] owns the object: dropping it detaches
//! and unloads every program and link.

pub mod btf;
mod counter_map;
pub mod probes;
#[cfg(test)]
mod tests;

pub use counter_map::{CounterMap, Taken};

use std::{fs::File, path::Path, time::Duration};

use anyhow::{Context as _, Result, bail};
use aya::{
    Ebpf, EbpfLoader, Endianness,
    maps::{Array, HashMap, MapData, PerCpuArray, RingBuf, StackTraceMap},
    programs::{
        BtfTracePoint, CgroupAttachMode, CgroupSock, CgroupSockopt, FEntry, FExit, KProbe, Program,
        ProgramError, UProbe,
    },
};
use sockerr_common::{
    CounterKey, RemoteKey, Tally, TallyKey, counter_entries, names, remote_entries,
};

use self::probes::{Attach, Hook, PROBES, Probe};
use crate::proc;

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sockerr"));

/// The call-site uprobes: loaded with the probes, attached per process later.
const UPROBES: [&str; 2] = [names::CONNECT_SITE, names::GETSOCKOPT_SITE];

/// What the kernel side is told at load.
#[derive(Clone, Debug)]
pub struct Options {
    /// Capacity of the attempts map (`--kernel.max-attempts`).
    pub max_attempts: u32,
    /// How the kernel keys its counters.
    pub counted: Counted,
    /// At most one finding record per (process, kind) per this interval
    /// after the first (`--findings.detail-interval`).
    pub detail_interval: Duration,
    /// Hooks never to use, as [`Attach`] displays them (`--kernel.disable-hook`).
    pub disabled_hooks: Vec<String>,
}

/// How the kernel keys its counters: by comm (the first `max_comms`, the
/// rest as the overflow), by remote endpoint likewise, and by cgroup too
/// for pod labels.
#[derive(Clone, Debug)]
pub struct Counted {
    /// Keep counters by cgroup too (`--metrics.kubernetes-labels`).
    pub by_cgroup: bool,
    /// `--metrics.max-comms`, `--metrics.max-remotes`.
    pub max_comms: u32,
    pub max_remotes: u32,
}

impl Default for Counted {
    fn default() -> Self {
        Self {
            by_cgroup: false,
            max_comms: sockerr_common::DEFAULT_MAX_COMMS,
            max_remotes: sockerr_common::DEFAULT_MAX_REMOTES,
        }
    }
}

/// The kernel's BTF, read once and parsed by both readers that need it:
/// ours (struct offsets, which aya does not expose) and aya's (program
/// attach points). One read per process: `check` and loading share it.
pub struct KernelBtf {
    pub offsets: btf::Btf,
    aya: aya::Btf,
}

impl KernelBtf {
    pub fn read() -> Result<Self> {
        let data = std::fs::read(btf::VMLINUX)
            .with_context(|| format!("reading kernel BTF from {}", btf::VMLINUX))?;
        Ok(Self {
            offsets: btf::Btf::parse(&data)
                .with_context(|| format!("parsing kernel BTF {}", btf::VMLINUX))?,
            aya: aya::Btf::parse(&data, Endianness::default())
                .with_context(|| format!("parsing kernel BTF {}", btf::VMLINUX))?,
        })
    }
}

/// How each probe of the table ended up: the hook attached, or why none.
pub struct Attached(Vec<(&'static Probe, Result<Hook, String>)>);

impl Attached {
    pub fn iter(&self) -> impl Iterator<Item = &(&'static Probe, Result<Hook, String>)> {
        self.0.iter()
    }

    /// Why the agent cannot run: a required probe that did not attach.
    fn missing_required(&self) -> Option<String> {
        let missing: Vec<String> = self
            .0
            .iter()
            .filter(|(p, r)| p.required && r.is_err())
            .map(|(p, r)| format!("{}: {}", p.name, r.as_ref().err().unwrap()))
            .collect();
        (!missing.is_empty()).then(|| missing.join("; "))
    }
}

/// The maps the agent reads, taken out of the object.
pub struct Maps {
    pub findings: RingBuf<MapData>,
    pub counters: CounterMap<CounterKey>,
    pub remotes: CounterMap<RemoteKey>,
    pub health: PerCpuArray<MapData, u64>,
    pub tallies: HashMap<MapData, TallyKey, Tally>,
    /// User stacks of call sites.
    pub stacks: StackTraceMap<MapData>,
    /// Processes whose call sites the agent is collecting.
    pub want_sites: HashMap<MapData, u32, u8>,
    /// Whether any process has call-site uprobes (index 0).
    pub sites_on: Array<MapData, u32>,
}

/// The loaded object: its programs, their links, and the call-site uprobes.
pub struct Kernel {
    ebpf: Ebpf,
}

impl Kernel {
    /// Loads the object (maps are created, programs not yet verified).
    pub fn load(btf: &KernelBtf, options: &Options) -> Result<Self> {
        let offsets = btf.offsets.kernel_offsets()?;
        let interval = u64::try_from(options.detail_interval.as_nanos()).unwrap_or(u64::MAX);
        let counted = &options.counted;
        let ebpf = EbpfLoader::new()
            .btf(Some(&btf.aya))
            .override_global(names::OFFSETS, &offsets, true)
            .override_global(names::DETAIL_INTERVAL_NS, &interval, true)
            .override_global(names::BY_CGROUP, &u8::from(counted.by_cgroup), true)
            .map_max_entries(names::SOCKETS, options.max_attempts)
            .map_max_entries(names::COMMS, counted.max_comms)
            .map_max_entries(names::REMOTE_ENDPOINTS, counted.max_remotes)
            .map_max_entries(names::COUNTERS, counter_entries(counted.max_comms))
            .map_max_entries(names::REMOTES, remote_entries(counted.max_remotes))
            .load(OBJECT)
            .context("loading sockerr's eBPF object into the kernel")?;
        Ok(Self { ebpf })
    }

    /// Loads and attaches every probe of the table, each through the first
    /// of its hooks that works here; fails when a required one attaches
    /// through none. cgroup programs go on the cgroup v2 root, which covers
    /// every process on the host, in any container.
    pub fn attach(&mut self, btf: &KernelBtf, options: &Options) -> Result<Attached> {
        let attached = self.try_attach(btf, options)?;
        if let Some(missing) = attached.missing_required() {
            bail!("cannot observe what sockerr needs on this kernel: {missing}");
        }
        Ok(attached)
    }

    /// Like [`Kernel::attach`], reporting instead of failing (`sockerr check`).
    pub fn try_attach(&mut self, btf: &KernelBtf, options: &Options) -> Result<Attached> {
        let root = proc::cgroup2_root()?;
        let attached = PROBES
            .iter()
            .map(|probe| {
                let mut errors = Vec::new();
                for hook in probe.hooks {
                    let name = hook.attach.to_string();
                    if options.disabled_hooks.contains(&name) {
                        errors.push(format!("{name}: disabled (--kernel.disable-hook)"));
                        continue;
                    }
                    match self.attach_hook(btf, &root, hook) {
                        Ok(()) => return (probe, Ok(*hook)),
                        Err(e) => errors.push(format!("{}: {e:#}", hook.attach)),
                    }
                }
                (probe, Err(errors.join("; ")))
            })
            .collect();
        Ok(Attached(attached))
    }

    fn attach_hook(&mut self, btf: &KernelBtf, cgroup_root: &Path, hook: &Hook) -> Result<()> {
        let program = self
            .ebpf
            .program_mut(hook.program)
            .with_context(|| format!("program {} is not in the object", hook.program))?;
        attach_program(program, &btf.aya, cgroup_root, hook.attach)
    }

    /// Loads the call-site uprobes (verified now; attached per process later).
    pub fn load_uprobes(&mut self) -> Result<()> {
        for name in UPROBES {
            self.uprobe(name)?
                .load()
                .with_context(|| format!("loading program {name} (verifier)"))?;
        }
        Ok(())
    }

    pub fn uprobe(&mut self, name: &str) -> Result<&mut UProbe> {
        let program = self
            .ebpf
            .program_mut(name)
            .with_context(|| format!("program {name} missing"))?;
        Ok(program.try_into()?)
    }

    /// aya-log's records from the programs, to be forwarded to the log.
    pub fn logger(&mut self) -> Result<aya_log::EbpfLogger<&'static dyn log::Log>> {
        Ok(aya_log::EbpfLogger::init(&mut self.ebpf)?)
    }

    pub fn take_maps(&mut self) -> Result<Maps> {
        let mut map = |name| {
            self.ebpf
                .take_map(name)
                .with_context(|| format!("map {name} missing"))
        };
        Ok(Maps {
            findings: RingBuf::try_from(map(names::FINDINGS)?)?,
            counters: CounterMap::new(map(names::COUNTERS)?)?,
            remotes: CounterMap::new(map(names::REMOTES)?)?,
            health: PerCpuArray::try_from(map(names::HEALTH)?)?,
            tallies: HashMap::try_from(map(names::TALLIES)?)?,
            stacks: StackTraceMap::try_from(map(names::STACKS)?)?,
            want_sites: HashMap::try_from(map(names::WANT_SITES)?)?,
            sites_on: Array::try_from(map(names::SITES_ON)?)?,
        })
    }
}

/// Loads and attaches `program` as `attach` says; one that fails to is
/// unloaded again (see [`attach_as`]).
fn attach_program(
    program: &mut Program,
    btf: &aya::Btf,
    cgroup_root: &Path,
    attach: Attach,
) -> Result<()> {
    let cgroup = || {
        File::open(cgroup_root)
            .with_context(|| format!("opening cgroup v2 root {}", cgroup_root.display()))
    };
    match attach {
        Attach::TpBtf(tracepoint) => attach_as(program, BtfTracePoint::unload, |p| {
            p.load(tracepoint, btf).context("verifier")?;
            p.attach()?;
            Ok(())
        }),
        Attach::FEntry(function) => attach_as(program, FEntry::unload, |p| {
            p.load(function, btf).context("verifier")?;
            p.attach()?;
            Ok(())
        }),
        Attach::FExit(function) => attach_as(program, FExit::unload, |p| {
            p.load(function, btf).context("verifier")?;
            p.attach()?;
            Ok(())
        }),
        Attach::KProbe(function) => attach_as(program, KProbe::unload, |p| {
            p.load().context("verifier")?;
            p.attach(function, 0)?;
            Ok(())
        }),
        Attach::CgroupGetsockopt | Attach::CgroupGetsockoptCompat => {
            attach_as(program, CgroupSockopt::unload, |p| {
                p.load().context("verifier")?;
                p.attach(cgroup()?, CgroupAttachMode::Single)?;
                Ok(())
            })
        }
        Attach::CgroupSockRelease => attach_as(program, CgroupSock::unload, |p| {
            p.load().context("verifier")?;
            p.attach(cgroup()?, CgroupAttachMode::Single)?;
            Ok(())
        }),
    }
}

/// Runs `load_and_attach` on `program` as the kind `P`, and when it fails
/// (e.g. an fentry loaded but refused at attach) frees the program with
/// `unload`: aya unloads per kind, not through `&mut Program`. Every kind
/// attaches through here and must name its `unload`, so none can be left
/// out of the cleanup.
fn attach_as<P>(
    program: &mut Program,
    unload: fn(&mut P) -> Result<(), ProgramError>,
    load_and_attach: impl FnOnce(&mut P) -> Result<()>,
) -> Result<()>
where
    for<'p> &'p mut P: TryFrom<&'p mut Program, Error = ProgramError>,
{
    let program: &mut P = program.try_into()?;
    let result = load_and_attach(program);
    if result.is_err() {
        let _ = unload(program);
    }
    result
}
