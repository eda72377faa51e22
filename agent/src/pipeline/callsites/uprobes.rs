//! Which processes get the call-site uprobes on their C library's `connect`
//! and `getsockopt`, and attaching them.
//!
//! A uprobe costs a trap on every call it sees, so by default only flagged
//! processes get them, and only those that run on for `--call-sites.delay`
//! after their first finding: attaching and detaching take the kernel
//! hundreds of milliseconds, a window a short-lived process would spend
//! trapped for most of its life (docs/design.md §5). A process that never
//! misbehaves, or lives briefly, pays nothing.

use std::{
    collections::{HashMap, HashSet},
    num::NonZeroU32,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use aya::{
    maps::{Array, HashMap as BpfHashMap, MapData},
    programs::uprobe::{UProbeLink, UProbeScope},
};
use blazesym::inspect::{
    Inspector,
    source::{Elf, Source},
};
use sockerr_common::names;

use super::procmaps::{Mapping, ProcMaps};
use crate::{kernel::Kernel, proc};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// No uprobes: findings carry no call sites.
    Off,
    /// Uprobes on each process from its first finding on.
    Flagged,
    /// Uprobes on the host's C library for every process, from the start.
    All,
}

/// What a process's findings can carry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Coverage {
    Off,
    /// Not instrumented before this finding.
    NotYet,
    /// Flagged, to be instrumented if it runs on for this long after its
    /// first finding.
    Deferred(Duration),
    Instrumented,
    /// Its call sites are known: the uprobes were detached.
    Detached,
    Unavailable(String),
}

/// How many processes carry call-site uprobes, for the metrics.
#[derive(Clone)]
pub struct Usage {
    probed: Arc<AtomicUsize>,
    pub capacity: usize,
}

impl Usage {
    pub fn probed(&self) -> usize {
        self.probed.load(Ordering::Relaxed)
    }
}

/// The wrappers probed: (program, C library symbol).
const WRAPPERS: [(&str, &str); 2] = [
    (names::CONNECT_SITE, "connect"),
    (names::GETSOCKOPT_SITE, "getsockopt"),
];

enum Entry {
    /// The links detach when dropped; empty when the host-wide probes of
    /// [`Mode::All`] already cover the process's C library. `captured`:
    /// findings with call sites since.
    Instrumented {
        links: Vec<UProbeLink>,
        captured: u32,
    },
    Detached,
    Unavailable(String),
}

pub struct Instrumenter {
    mode: Mode,
    /// Findings with call sites a process gives before its uprobes are
    /// detached (0: never): each probe hit costs the process a trap.
    keep: u32,
    /// How long a flagged process must run on before it is instrumented.
    delay: Duration,
    /// Flagged processes waiting for `delay`, since their first finding.
    deferred: HashMap<u32, Instant>,
    /// Why no process can be instrumented, if so.
    unavailable: Option<String>,
    max: usize,
    procs: HashMap<u32, Entry>,
    usage: Usage,
    /// [`Mode::All`]: (device, inode) of the C library probed host-wide.
    host_libc: Option<FileId>,
    _host_links: Vec<UProbeLink>,
    /// File offsets of the [`WRAPPERS`] per C library file: most processes
    /// share one, whose symbol table is then read once.
    offsets: HashMap<FileId, [u64; 2]>,
    /// The kernel's set of processes whose call sites are collected: their
    /// findings get a record each until `keep` of them carried sites.
    want: BpfHashMap<MapData, u32, u8>,
    wanted: HashSet<u32>,
    /// The kernel's flag: some process has uprobes (`SITES_ON`).
    on: Array<MapData, u32>,
    on_now: bool,
}

/// (device, inode) of a mapped file.
type FileId = ((u32, u32), u64);

impl Instrumenter {
    /// In [`Mode::All`], attaches to the agent's own C library (the host's)
    /// for every process.
    pub fn new(
        kernel: &mut Kernel,
        (want, on): (BpfHashMap<MapData, u32, u8>, Array<MapData, u32>),
        mode: Mode,
        max: usize,
        keep: u32,
        delay: Duration,
    ) -> Result<Self> {
        let unavailable = if mode == Mode::Off {
            None
        } else {
            unavailable()
        };
        let mut this = Self {
            mode,
            keep,
            delay,
            deferred: HashMap::new(),
            unavailable,
            max,
            procs: HashMap::new(),
            usage: Usage {
                probed: Arc::default(),
                capacity: max,
            },
            host_libc: None,
            _host_links: Vec::new(),
            offsets: HashMap::new(),
            want,
            wanted: HashSet::new(),
            on,
            on_now: false,
        };
        if let Some(why) = &this.unavailable {
            tracing::warn!("findings will carry no call sites: {why}");
        } else if mode == Mode::All {
            let maps = ProcMaps::read(std::process::id()).context("reading /proc/self/maps")?;
            let libc = c_library(&maps).context("the agent maps no C library")?;
            this._host_links = this
                .attach(
                    kernel,
                    libc,
                    Path::new(&libc.path),
                    UProbeScope::AllProcesses,
                )
                .with_context(|| format!("attaching call-site uprobes to {}", libc.path))?;
            this.host_libc = Some((libc.dev, libc.inode));
            this.set_on(true);
            tracing::info!(libc = libc.path, "call-site uprobes on every process");
        }
        Ok(this)
    }

    pub fn coverage(&self, pid: u32) -> Coverage {
        if let Some(why) = &self.unavailable {
            return Coverage::Unavailable(why.clone());
        }
        match (self.mode, self.procs.get(&pid)) {
            (Mode::Off, _) => Coverage::Off,
            (_, Some(Entry::Instrumented { .. })) => Coverage::Instrumented,
            (_, Some(Entry::Detached)) => Coverage::Detached,
            (_, Some(Entry::Unavailable(why))) => Coverage::Unavailable(why.clone()),
            (_, None) if self.deferred.contains_key(&pid) => Coverage::Deferred(self.delay),
            (_, None) if self.usage.probed() >= self.max => Coverage::Unavailable(format!(
                "{} other processes were being instrumented (--call-sites.max-processes)",
                self.max
            )),
            (_, None) => Coverage::NotYet,
        }
    }

    /// A flagged process not instrumented yet: at once without a delay,
    /// else once it has run on for the delay ([`Instrumenter::due`]).
    /// `maps`: its mappings (None: it is gone).
    pub fn flagged(
        &mut self,
        kernel: &mut Kernel,
        pid: u32,
        maps: Option<&ProcMaps>,
        now: Instant,
    ) {
        if self.coverage(pid) != Coverage::NotYet {
            return;
        }
        // One already gone is said so at once.
        if self.delay.is_zero() || self.mode == Mode::All || maps.is_none() {
            self.instrument(kernel, pid, maps);
        } else {
            self.deferred.insert(pid, now);
        }
    }

    /// Deferred processes whose delay has passed, no longer deferred; those
    /// that exited meanwhile are dropped.
    pub fn due(&mut self, now: Instant) -> Vec<u32> {
        let delay = self.delay;
        let due: Vec<u32> = self
            .deferred
            .iter()
            .filter(|(_, since)| now.duration_since(**since) >= delay)
            .map(|(pid, _)| *pid)
            .collect();
        for pid in &due {
            self.deferred.remove(pid);
        }
        due.into_iter().filter(|pid| proc::alive(*pid)).collect()
    }

    /// Instruments `pid`, whose mappings are `maps` (None: it is gone).
    pub fn instrument(&mut self, kernel: &mut Kernel, pid: u32, maps: Option<&ProcMaps>) {
        if !matches!(self.coverage(pid), Coverage::NotYet | Coverage::Deferred(_)) {
            return;
        }
        self.deferred.remove(&pid);
        let entry = match self.try_instrument(kernel, pid, maps) {
            Ok(entry) => entry,
            // Short-lived processes often exit while they are instrumented
            // (perf_event_open: ESRCH, or their files are gone): expected.
            Err(e) if !proc::alive(pid) => {
                tracing::debug!(pid, "no call sites: the process exited: {e:#}");
                Entry::Unavailable(EXITED.into())
            }
            Err(e) => {
                tracing::warn!(pid, "no call sites for this process: {e:#}");
                Entry::Unavailable(
                    "the call-site uprobes could not be attached to this process \
                     (the agent's log says why)"
                        .into(),
                )
            }
        };
        self.procs.insert(pid, entry);
        self.sync();
    }

    /// A finding of `pid` came with every call site: past `keep` of them,
    /// its uprobes are detached.
    pub fn captured(&mut self, pid: u32) {
        let Some(Entry::Instrumented { links, captured }) = self.procs.get_mut(&pid) else {
            return;
        };
        *captured += 1;
        // Once: a process under the host-wide probes stays instrumented and
        // goes on counting.
        if self.keep > 0 && *captured == self.keep {
            // Host-wide probes ([`Mode::All`]) stay; only their records stop.
            if !links.is_empty()
                && let Some(Entry::Instrumented { links, .. }) =
                    self.procs.insert(pid, Entry::Detached)
            {
                detach(links);
                tracing::info!(pid, "call sites known: uprobes detaching");
            }
            self.sync();
        }
    }

    /// Lets `pid` be instrumented again (a finding of a new kind).
    pub fn reinstrument(&mut self, pid: u32) {
        if matches!(self.procs.get(&pid), Some(Entry::Detached)) {
            self.procs.remove(&pid);
        }
    }

    pub fn usage(&self) -> Usage {
        self.usage.clone()
    }

    /// Brings the probed-process count and the kernel's want set in line
    /// with `procs`.
    fn sync(&mut self) {
        let probed = self
            .procs
            .values()
            .filter(|e| matches!(e, Entry::Instrumented { links, .. } if !links.is_empty()))
            .count();
        self.usage.probed.store(probed, Ordering::Relaxed);
        self.set_on(probed > 0 || self.host_libc.is_some());
        let keep = self.keep;
        let wanted: HashSet<u32> = self
            .procs
            .iter()
            .filter(|(_, e)| {
                matches!(e, Entry::Instrumented { captured, .. } if keep == 0 || *captured < keep)
            })
            .map(|(pid, _)| *pid)
            .collect();
        for pid in self.wanted.difference(&wanted) {
            let _ = self.want.remove(pid);
        }
        for pid in wanted.difference(&self.wanted) {
            if let Err(e) = self.want.insert(pid, 1, 0) {
                tracing::warn!(pid, "call sites will come at the detail interval only: {e}");
            }
        }
        self.wanted = wanted;
    }

    /// Tells the kernel whether any process has uprobes, when that changes.
    fn set_on(&mut self, on: bool) {
        if on == self.on_now {
            return;
        }
        match self.on.set(0, u32::from(on), 0) {
            Ok(()) => self.on_now = on,
            Err(e) => tracing::warn!("call sites: setting SITES_ON: {e}"),
        }
    }

    fn try_instrument(
        &mut self,
        kernel: &mut Kernel,
        pid: u32,
        maps: Option<&ProcMaps>,
    ) -> Result<Entry> {
        let start = std::time::Instant::now();
        // No mappings (see `Resolver::snapshot`): it is gone.
        let Some(maps) = maps else {
            tracing::debug!(
                pid,
                "no call sites: the process exited before its mappings were read"
            );
            return Ok(Entry::Unavailable(EXITED.into()));
        };
        let Some(libc) = c_library(maps) else {
            tracing::debug!(pid, "no call sites: no C library mapped");
            return Ok(Entry::Unavailable(
                "the program has no C library to probe: it is statically linked, or makes \
                 raw system calls (e.g. Go)"
                    .into(),
            ));
        };
        if self.host_libc == Some((libc.dev, libc.inode)) {
            return Ok(Entry::Instrumented {
                links: Vec::new(),
                captured: 0,
            });
        }
        let pid_nz = NonZeroU32::new(pid).context("pid 0")?;
        // The library as the process sees it, also inside a container.
        let path = proc::in_root(pid, &libc.path);
        let links = self
            .attach(kernel, libc, &path, UProbeScope::OneProcess(pid_nz))
            .with_context(|| format!("attaching uprobes to {}", libc.path))?;
        tracing::info!(pid, libc = libc.path, took = ?start.elapsed(), "call-site uprobes attached");
        Ok(Entry::Instrumented { links, captured: 0 })
    }

    /// Attaches the [`WRAPPERS`] uprobes to `libc`, opened at `path`.
    fn attach(
        &mut self,
        kernel: &mut Kernel,
        libc: &Mapping,
        path: &Path,
        scope: UProbeScope,
    ) -> Result<Vec<UProbeLink>> {
        let id = (libc.dev, libc.inode);
        let offsets = match self.offsets.get(&id) {
            Some(known) => *known,
            None => {
                let found = self.wrapper_offsets(path)?;
                self.offsets.insert(id, found);
                found
            }
        };
        WRAPPERS
            .iter()
            .zip(offsets)
            .map(|((program, symbol), offset)| {
                let probe = kernel.uprobe(program)?;
                let link = probe
                    .attach(offset, path, scope)
                    .with_context(|| format!("uprobe on {symbol}"))?;
                Ok(probe.take_link(link)?)
            })
            .collect()
    }

    /// File offsets of the wrappers, from the library's dynamic symbols.
    fn wrapper_offsets(&self, path: &Path) -> Result<[u64; 2]> {
        let source = Source::Elf(Elf {
            debug_syms: false,
            ..Elf::new(path)
        });
        let names = WRAPPERS.map(|(_, symbol)| symbol);
        // Created per library, rarely: the inspector is not `Send`.
        let inspector = Inspector::new();
        let found = inspector
            .lookup(&source, &names)
            .with_context(|| format!("reading the symbols of {}", path.display()))?;
        let mut offsets = [0; 2];
        for ((offset, symbol), infos) in offsets.iter_mut().zip(names).zip(found) {
            *offset = infos
                .iter()
                .find_map(|i| i.file_offset)
                .with_context(|| format!("no symbol {symbol}"))?;
        }
        Ok(offsets)
    }

    /// Detaches from processes that exited (their pids may be reused);
    /// returns those pids.
    pub fn sweep(&mut self) -> Vec<u32> {
        let gone: Vec<u32> = self
            .procs
            .keys()
            .copied()
            .filter(|pid| !proc::alive(*pid))
            .collect();
        if !gone.is_empty() {
            for pid in &gone {
                if let Some(Entry::Instrumented { links, .. }) = self.procs.remove(pid) {
                    detach(links);
                }
            }
            self.sync();
        }
        gone
    }
}

/// Detaches uprobe links off the pipeline's thread. Each detach takes the
/// kernel ≈ 170 ms (it waits for RCU with a global lock held); a probe's
/// breakpoints are removed at the start of its own detach, so the one hit
/// most often (getsockopt: once or twice per connect) goes first.
fn detach(links: Vec<UProbeLink>) {
    let spawned = std::thread::Builder::new()
        .name("uprobe-detach".into())
        .spawn(move || links.into_iter().rev().for_each(drop));
    if let Err(e) = spawned {
        tracing::warn!("detaching call-site uprobes on this thread: {e}");
    }
}

/// The note of a process that exited before it could be instrumented.
const EXITED: &str = "the process exited before its call sites could be read";

/// Why this host or agent cannot create uprobes, if it cannot: a sentence
/// for findings' notes.
pub fn unavailable() -> Option<String> {
    if !Path::new("/sys/bus/event_source/devices/uprobe").exists() {
        Some(
            "this kernel has no uprobe events (CONFIG_UPROBE_EVENTS), which call sites need".into(),
        )
    } else if !crate::privileges::can_create_uprobes() {
        Some(
            "call sites need uprobes, and creating uprobes needs CAP_SYS_ADMIN, which the agent \
             lacks"
                .into(),
        )
    } else {
        None
    }
}

/// The C library among a process's mappings: glibc or musl.
fn c_library(maps: &ProcMaps) -> Option<&Mapping> {
    maps.iter().find(|m| {
        let name = m.name();
        m.is_file()
            && (name.starts_with("libc.so")
                || (name.starts_with("libc-") && name.ends_with(".so"))
                || name.starts_with("ld-musl-"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_glibc_and_musl_but_not_look_alikes() {
        let mapping = |inode, path: &str| Mapping {
            start: 0x7f00_0000_0000,
            end: 0x7f00_0000_1000,
            offset: 0,
            dev: (0xfd, 1),
            inode,
            path: path.into(),
        };
        let maps = |path: &str| -> ProcMaps {
            [mapping(42, "/usr/lib/libcrypto.so.3"), mapping(43, path)]
                .into_iter()
                .collect()
        };
        for libc in [
            "/usr/lib/x86_64-linux-gnu/libc.so.6",
            "/lib/libc-2.31.so",
            "/lib/ld-musl-x86_64.so.1",
        ] {
            assert_eq!(c_library(&maps(libc)).unwrap().path, libc);
        }
        assert!(c_library(&maps("/usr/lib/libcap.so.2")).is_none());
        assert!(c_library(&ProcMaps::default()).is_none());
    }
}
