//! Finding records and what the uprobes captured in; the code locations of their calls out.
//!
//! Where in the process each connect() and SO_ERROR read of a finding was
//! made: the uprobes that capture it ([`uprobes`]), and turning the captured
//! addresses and stacks into code locations ([`procmaps`], [`symbolize`]).
//! The pipeline calls [`Locator::sites`] for each finding record; which
//! processes are probed, and for how long, is decided here. Call sites are
//! a property of the executable: once a process showed them for a kind of
//! finding, later processes of the same executable file get them without
//! being probed (docs/design.md §5).

pub mod procmaps;
mod symbolize;
pub mod uprobes;

use std::{
    collections::HashMap,
    fmt,
    time::{Duration, Instant, SystemTime},
};

use anyhow::Result;
use aya::maps::{MapData, StackTraceMap};
use serde::{Serialize, Serializer};
use sockerr_common::{CallSite, FindingKind, STACK_ENTRIES, abi};

use self::{
    procmaps::ProcMaps,
    symbolize::Symbolizer,
    uprobes::{Coverage, Instrumenter, Mode, Usage},
};
use super::record::Record;
use crate::{decode, kernel::Kernel};

/// An executable file: (device, the kernel's identity of the file).
type ExeId = (u32, sockerr_common::ExeFile);

/// The call sites of findings: instruments a process from its first
/// finding (per `--call-sites`), resolves what its uprobes captured, and
/// lets it go once its sites are known.
pub struct Locator {
    instrumenter: Instrumenter,
    resolver: Resolver,
}

impl Locator {
    pub fn new(
        kernel: &mut Kernel,
        maps: (
            StackTraceMap<MapData>,
            aya::maps::HashMap<MapData, u32, u8>,
            aya::maps::Array<MapData, u32>,
        ),
        mode: Mode,
        max_instrumented: usize,
        keep: u32,
        delay: Duration,
    ) -> Result<Self> {
        let (stacks, want, on) = maps;
        Ok(Self {
            instrumenter: Instrumenter::new(
                kernel,
                (want, on),
                mode,
                max_instrumented,
                keep,
                delay,
            )?,
            resolver: Resolver::new(stacks),
        })
    }

    /// The call sites of a finding record made `at`: those it carries, or
    /// those another process of the same executable showed; else its
    /// process is probed (now, or once it has run on for the delay).
    pub fn sites(&mut self, kernel: &mut Kernel, record: &Record, at: SystemTime) -> CallSites {
        let (pid, kind) = (record.raw.tgid, record.kind);
        if !self.resolver.remembers(pid, kind) {
            // A kind whose call sites are not known yet: probe again.
            self.instrumenter.reinstrument(pid);
        }
        let mut coverage = self.instrumenter.coverage(pid);
        let unprobed = matches!(coverage, Coverage::NotYet | Coverage::Deferred(_));
        let carried = record.raw.sites.connect.captured()
            || record.raw.sites.reads.iter().any(CallSite::captured);
        if let Some(exe) = record.exe_file() {
            self.resolver.note_exe(pid, exe);
        }
        if unprobed
            && !carried
            && let Some(sites) = self.resolver.learned(pid, kind)
        {
            return sites;
        }
        if coverage == Coverage::NotYet {
            // The snapshot of its mappings, taken while the process most
            // likely runs, names modules after it exits.
            let maps = self.resolver.snapshot(pid);
            self.instrumenter.flagged(kernel, pid, maps, Instant::now());
            // One that could not be instrumented (it exited already), or
            // waits for the delay, will have no next findings with sites:
            // say why now. One just instrumented: "not yet" still holds.
            let now = self.instrumenter.coverage(pid);
            if matches!(now, Coverage::Unavailable(_) | Coverage::Deferred(_)) {
                coverage = now;
            }
        }
        let sites = self.resolver.resolve(
            pid,
            kind,
            at,
            &record.raw.sites,
            record.reads().len(),
            &coverage,
        );
        if sites.note.is_none() {
            self.instrumenter.captured(pid);
        }
        sites
    }

    /// Instruments the flagged processes that have run on for the delay,
    /// unless their executable's call sites became known meanwhile.
    pub fn tick(&mut self, kernel: &mut Kernel) {
        for pid in self.instrumenter.due(Instant::now()) {
            if !self.resolver.knows_executable(pid) {
                let maps = self.resolver.snapshot(pid);
                self.instrumenter.instrument(kernel, pid, maps);
            }
        }
    }

    /// Lets go of processes that exited.
    pub fn sweep(&mut self) {
        for pid in self.instrumenter.sweep() {
            self.resolver.forget(pid);
        }
    }

    pub fn usage(&self) -> Usage {
        self.instrumenter.usage()
    }
}

/// Processes whose mappings are kept; past this the snapshots start over
/// (those of live processes are simply read again).
const MAX_SNAPSHOTS: usize = 1024;
/// (process, kind) whose latest complete call sites are remembered.
const MAX_REMEMBERED: usize = 4096;

/// One code location in a process.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Frame {
    #[serde(serialize_with = "hex")]
    pub address: u64,
    /// The mapped file (path as the process sees it), or `[vdso]` etc.
    pub module: Option<String>,
    #[serde(serialize_with = "hex_opt")]
    pub module_offset: Option<u64>,
    pub function: Option<String>,
    /// From the start of the function.
    pub offset: Option<u64>,
    pub file: Option<String>,
    pub line: Option<u32>,
}

/// One captured call: where the C library wrapper was called from, and the
/// user stack around it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Site {
    /// The wrapper's caller.
    pub at: Frame,
    /// Innermost first: the wrapper, its caller, then what frame pointers
    /// reach (partial where code is built without them).
    pub stack: Vec<Frame>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stack_error: Option<String>,
}

/// The call sites of a finding's attempt.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct CallSites {
    pub connect: Option<Site>,
    /// One per entry of the finding's `so_error_reads`.
    pub so_error_reads: Vec<Option<Site>>,
    /// Why sites are missing, when some are.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl CallSites {
    /// e.g. `read 1 (111) at f+0x1a (libx.so), read 2 (0) at g+0x4a (liby.so); connect at h+0x9 (app)`.
    pub fn summary(&self, reads: &[i32]) -> String {
        let at = |site: &Option<Site>| site.as_ref().map_or("?".into(), |s| s.at.to_string());
        let mut text = reads
            .iter()
            .zip(&self.so_error_reads)
            .enumerate()
            .map(|(i, (value, site))| format!("read {} ({value}) at {}", i + 1, at(site)))
            .collect::<Vec<_>>()
            .join(", ");
        if self.connect.is_some() {
            if !text.is_empty() {
                text.push_str("; ");
            }
            text.push_str(&format!("connect at {}", at(&self.connect)));
        }
        if let Some(note) = &self.note {
            if !text.is_empty() {
                text.push_str("; ");
            }
            text.push_str(note);
        }
        text
    }

    /// Every captured stack, one frame a line, for `sockerr trace --stacks`.
    pub fn stacks(&self, reads: &[i32]) -> String {
        let mut out = String::new();
        let reads = reads
            .iter()
            .zip(&self.so_error_reads)
            .enumerate()
            .map(|(i, (v, s))| (format!("read {} ({v})", i + 1), s));
        for (name, site) in std::iter::once(("connect".to_owned(), &self.connect)).chain(reads) {
            let Some(site) = site else { continue };
            out.push_str(&format!("  {name}:\n"));
            for (n, frame) in site.stack.iter().enumerate() {
                out.push_str(&format!("    #{n} {frame}\n"));
            }
            if let Some(e) = &site.stack_error {
                out.push_str(&format!("    ({e})\n"));
            }
        }
        out
    }
}

impl fmt::Display for Frame {
    /// `function+0x4a (module) file:line`, `module+0x1f0b0`, or the address.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let module = self
            .module
            .as_deref()
            .map(|m| m.rsplit('/').next().unwrap_or(m));
        match (&self.function, module, self.module_offset) {
            (Some(function), module, _) => {
                write!(f, "{function}+{:#x}", self.offset.unwrap_or(0))?;
                if let Some(module) = module {
                    write!(f, " ({module})")?;
                }
                if let (Some(file), Some(line)) = (&self.file, self.line) {
                    write!(f, " {file}:{line}")?;
                }
                Ok(())
            }
            (None, Some(module), Some(offset)) => write!(f, "{module}+{offset:#x}"),
            _ => write!(f, "{:#x}", self.address),
        }
    }
}

/// Turns the sites captured in the kernel into code locations.
struct Resolver {
    stacks: StackTraceMap<MapData>,
    /// Stack ids are never reused for another stack (see the eBPF `STACKS`).
    stack_cache: HashMap<u32, Vec<u64>>,
    maps: HashMap<u32, ProcMaps>,
    symbolizer: Symbolizer,
    /// The latest complete sites per (process, kind), and when: what the
    /// findings of a process whose uprobes were detached repeat.
    remembered: HashMap<(u32, FindingKind), (CallSites, SystemTime)>,
    /// The executable of each process, from its records.
    exes: HashMap<u32, ExeId>,
    /// Complete sites per (executable, kind), from the process that showed
    /// them and when: what later processes of the executable are given.
    learned: HashMap<(ExeId, FindingKind), (CallSites, u32, SystemTime)>,
}

impl Resolver {
    fn new(stacks: StackTraceMap<MapData>) -> Self {
        Self {
            stacks,
            stack_cache: HashMap::new(),
            maps: HashMap::new(),
            symbolizer: Symbolizer::new(),
            remembered: HashMap::new(),
            exes: HashMap::new(),
            learned: HashMap::new(),
        }
    }

    fn note_exe(&mut self, pid: u32, exe: ExeId) {
        if self.exes.len() >= MAX_SNAPSHOTS && !self.exes.contains_key(&pid) {
            self.exes.clear();
        }
        self.exes.insert(pid, exe);
    }

    /// The executable `pid` runs, from its records.
    fn exe(&self, pid: u32) -> Option<ExeId> {
        self.exes.get(&pid).copied()
    }

    /// Whether any kind of call sites of `pid`'s executable is known.
    fn knows_executable(&self, pid: u32) -> bool {
        let Some(exe) = self.exe(pid) else {
            return false;
        };
        self.learned.keys().any(|(e, _)| *e == exe)
    }

    /// The sites another process of `pid`'s executable showed for `kind`.
    fn learned(&self, pid: u32, kind: FindingKind) -> Option<CallSites> {
        let exe = self.exe(pid)?;
        let (sites, from, at) = self.learned.get(&(exe, kind))?;
        Some(CallSites {
            note: Some(format!(
                "call sites of process {from} of the same executable, seen at {}: this \
                 process was not probed",
                decode::rfc3339(*at),
            )),
            ..sites.clone()
        })
    }

    /// Whether complete call sites of a `kind` finding of `pid` are known.
    fn remembers(&self, pid: u32, kind: FindingKind) -> bool {
        self.remembered.contains_key(&(pid, kind))
    }

    /// `pid` exited.
    fn forget(&mut self, pid: u32) {
        self.maps.remove(&pid);
        self.exes.remove(&pid);
        self.remembered.retain(|(p, _), _| *p != pid);
    }

    /// Reads the mappings of `pid` now, while it runs, so that its findings
    /// still name modules after it exits. A process that exited but was not
    /// reaped yet shows no mappings: the snapshot taken before is kept.
    fn snapshot(&mut self, pid: u32) -> Option<&ProcMaps> {
        let maps = ProcMaps::read(pid)
            .ok()
            .filter(|m| m.iter().next().is_some())?;
        if self.maps.len() >= MAX_SNAPSHOTS && !self.maps.contains_key(&pid) {
            self.maps.clear();
        }
        self.maps.insert(pid, maps);
        self.maps.get(&pid)
    }

    /// The sites of a `kind` finding made `at` by `pid`, whose attempt
    /// kept `nreads` reads. Complete sites are remembered; a process whose
    /// uprobes were detached gets those remembered for its kind, said so.
    fn resolve(
        &mut self,
        pid: u32,
        kind: FindingKind,
        at: SystemTime,
        sites: &abi::CallSites,
        nreads: usize,
        coverage: &Coverage,
    ) -> CallSites {
        let connect = self.site(pid, &sites.connect);
        let so_error_reads: Vec<_> = sites.reads[..nreads]
            .iter()
            .map(|s| self.site(pid, s))
            .collect();
        let missing = connect.is_none() || so_error_reads.iter().any(Option::is_none);
        let resolved = CallSites {
            connect,
            so_error_reads,
            note: missing.then(|| note(coverage)),
        };
        if !missing {
            if self.remembered.len() >= MAX_REMEMBERED {
                self.remembered.clear();
            }
            self.remembered.insert((pid, kind), (resolved.clone(), at));
            if let Some(exe) = self.exe(pid) {
                if self.learned.len() >= MAX_REMEMBERED {
                    self.learned.clear();
                }
                self.learned
                    .insert((exe, kind), (resolved.clone(), pid, at));
            }
        } else if *coverage == Coverage::Detached
            && let Some((known, at)) = self.remembered.get(&(pid, kind))
        {
            return CallSites {
                note: Some(format!(
                    "call sites of this process's {} finding at {}: its uprobes were \
                     detached once its call sites were known (--call-sites.findings)",
                    <&str>::from(kind),
                    decode::rfc3339(*at),
                )),
                ..known.clone()
            };
        }
        resolved
    }

    fn site(&mut self, pid: u32, site: &CallSite) -> Option<Site> {
        if !site.captured() {
            return None;
        }
        let at = self.frame(pid, site.ret, true);
        let (stack, stack_error) = match self.stack(site.stack_id) {
            // The walk starts from the caller's frame pointer: it holds the
            // wrapper's address, then the caller's caller; the caller itself
            // is the return address captured on entry.
            Ok(ips) => {
                let mut stack = Vec::with_capacity(ips.len() + 1);
                for (n, &ip) in ips.iter().enumerate() {
                    stack.push(self.frame(pid, ip, n > 0));
                    if n == 0 {
                        stack.push(at.clone());
                    }
                }
                (stack, None)
            }
            Err(e) => (vec![at.clone()], Some(e)),
        };
        Some(Site {
            at,
            stack,
            stack_error,
        })
    }

    fn stack(&mut self, id: i32) -> Result<Vec<u64>, String> {
        let id = u32::try_from(id).map_err(|_| stack_error(id))?;
        if let Some(ips) = self.stack_cache.get(&id) {
            return Ok(ips.clone());
        }
        let trace = self
            .stacks
            .get(&id, 0)
            .map_err(|e| format!("reading stack {id}: {e}"))?;
        let ips: Vec<u64> = trace.frames().iter().map(|f| f.ip).collect();
        if self.stack_cache.len() >= STACK_ENTRIES {
            self.stack_cache.clear();
        }
        self.stack_cache.insert(id, ips.clone());
        Ok(ips)
    }

    /// `is_return`: a return address, whose call is the instruction before.
    fn frame(&mut self, pid: u32, address: u64, is_return: bool) -> Frame {
        let mut frame = Frame {
            address,
            module: None,
            module_offset: None,
            function: None,
            offset: None,
            file: None,
            line: None,
        };
        let known = self.maps.get(&pid).and_then(|m| m.find(address)).is_some();
        // Not in the snapshot: mapped since (dlopen), if the process runs.
        let maps = if known {
            self.maps.get(&pid)
        } else {
            self.snapshot(pid)
        };
        let Some(mapping) = maps.and_then(|m| m.find(address)).cloned() else {
            return frame;
        };
        let module_offset = mapping.file_offset(address);
        frame.module = Some(mapping.path.clone());
        frame.module_offset = mapping.is_file().then_some(module_offset);
        let back = u64::from(is_return);
        if let Some(sym) = self
            .symbolizer
            .symbol(pid, &mapping, module_offset.saturating_sub(back))
        {
            frame.function = Some(sym.function);
            frame.offset = Some(sym.offset + back);
            frame.file = sym.file;
            frame.line = sym.line;
        }
        frame
    }
}

fn note(coverage: &Coverage) -> String {
    match coverage {
        Coverage::Off => "call sites are off (--call-sites=off)".into(),
        Coverage::NotYet => {
            "the process was not instrumented yet: call sites come with its next findings".into()
        }
        Coverage::Deferred(delay) => format!(
            "call sites come if the process runs on for {} after its first finding \
             (--call-sites.delay): a short-lived process is not probed",
            humantime::format_duration(*delay)
        ),
        Coverage::Instrumented | Coverage::Detached => {
            "the process made the missing calls without its C library (raw system calls, \
             e.g. Go) or before it was instrumented"
                .into()
        }
        Coverage::Unavailable(why) => why.clone(),
    }
}

fn stack_error(errno: i32) -> String {
    match -errno {
        libc::EEXIST => "stack not kept: the stack table had another stack in its slot".into(),
        libc::EFAULT => "no user stack could be read".into(),
        _ => format!("stack not taken: {}", decode::errno_name(-errno)),
    }
}

fn hex<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{v:#x}"))
}

fn hex_opt<S: Serializer>(v: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(v) => hex(v, s),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(function: Option<&str>, module: Option<&str>) -> Frame {
        Frame {
            address: 0x7f2c1002a1f0,
            module: module.map(str::to_owned),
            module_offset: module.map(|_| 0x2a1f0),
            function: function.map(str::to_owned),
            offset: function.map(|_| 0x4a),
            file: None,
            line: None,
        }
    }

    fn site(function: &str, module: &str) -> Option<Site> {
        let at = frame(Some(function), Some(module));
        Some(Site {
            stack: vec![
                frame(Some("getsockopt"), Some("/lib/libc.so.6")),
                at.clone(),
            ],
            at,
            stack_error: None,
        })
    }

    #[test]
    fn frames_fall_back_from_function_to_module_offset_to_address() {
        let mut f = frame(
            Some("evhttp_connection_cb"),
            Some("/usr/lib/libevent-2.1.so.7"),
        );
        assert_eq!(
            f.to_string(),
            "evhttp_connection_cb+0x4a (libevent-2.1.so.7)"
        );
        (f.file, f.line) = (Some("http.c".into()), Some(1234));
        assert_eq!(
            f.to_string(),
            "evhttp_connection_cb+0x4a (libevent-2.1.so.7) http.c:1234"
        );
        assert_eq!(
            frame(None, Some("/usr/lib/libevent-2.1.so.7")).to_string(),
            "libevent-2.1.so.7+0x2a1f0"
        );
        assert_eq!(frame(None, None).to_string(), "0x7f2c1002a1f0");
        let json = serde_json::to_value(frame(None, Some("/x"))).unwrap();
        assert_eq!(json["address"], "0x7f2c1002a1f0");
        assert_eq!(json["module_offset"], "0x2a1f0");
        assert_eq!(json["function"], serde_json::Value::Null);
    }

    #[test]
    fn summary_names_each_read_and_says_why_sites_are_missing() {
        let sites = CallSites {
            connect: site("evutil_socket_connect_", "/lib/libevent_core.so"),
            so_error_reads: vec![
                site(
                    "evutil_socket_finished_connecting_",
                    "/lib/libevent_core.so",
                ),
                None,
            ],
            note: Some(note(&Coverage::Instrumented)),
        };
        let text = sites.summary(&[111, 0]);
        assert!(
            text.starts_with(
                "read 1 (111) at evutil_socket_finished_connecting_+0x4a (libevent_core.so), \
                 read 2 (0) at ?; connect at evutil_socket_connect_+0x4a (libevent_core.so); \
                 the process made the missing calls without its C library"
            ),
            "{text}"
        );
        let stacks = sites.stacks(&[111, 0]);
        assert_eq!(
            stacks.lines().collect::<Vec<_>>(),
            [
                "  connect:",
                "    #0 getsockopt+0x4a (libc.so.6)",
                "    #1 evutil_socket_connect_+0x4a (libevent_core.so)",
                "  read 1 (111):",
                "    #0 getsockopt+0x4a (libc.so.6)",
                "    #1 evutil_socket_finished_connecting_+0x4a (libevent_core.so)",
            ]
        );
        let none = CallSites {
            note: Some(note(&Coverage::NotYet)),
            so_error_reads: vec![None],
            ..CallSites::default()
        };
        assert!(none.summary(&[0]).contains("not instrumented yet"));
    }

    #[test]
    fn stack_errors_say_what_happened() {
        assert!(stack_error(-libc::EEXIST).contains("another stack"));
        assert!(stack_error(-libc::EFAULT).contains("no user stack"));
        assert!(stack_error(-libc::ENOMEM).contains("ENOMEM"));
    }
}
