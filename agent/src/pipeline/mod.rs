//! Finding records from the kernel's ring buffer in; findings as users see them out, to a sink.
//!
//! The event pipeline, on a thread of its own: each record decoded
//! ([`record`]), attributed to its process ([`attribution`]), given its call
//! sites ([`callsites`]) and made a finding ([`report`]) handed to a sink
//! (the daemon's keeps it in the findings table, [`table`]); and the
//! kernel's per-(process, kind) tallies, read periodically so that counts
//! stay exact between records.

pub mod attribution;
pub mod callsites;
pub mod cgroups;
pub mod containers;
pub mod record;
pub mod report;
pub mod table;

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use anyhow::Result;
use aya::maps::{HashMap as BpfHashMap, MapData, RingBuf};
use sockerr_common::{FindingKind, Tally, TallyKey};
use tokio::io::{Interest, unix::AsyncFd};

use self::{
    attribution::{Attributor, Process},
    callsites::Locator,
    record::Record,
    report::Finding,
    table::TallyRead,
};
use crate::{
    decode,
    kernel::Kernel,
    proc::{self, Proc},
};

/// The kernel wakes the agent only for the first record of a (process,
/// kind), or when records pile up (see the eBPF `WAKEUP_BYTES`); otherwise
/// they are collected on this tick.
const DRAIN_EVERY: Duration = Duration::from_millis(100);
/// Records attributed before their call sites are resolved.
const BATCH: usize = 256;
/// How often instrumented processes that exited are let go, and the
/// kernel's tallies read.
const SWEEP_EVERY: Duration = Duration::from_secs(2);

/// What the pipeline hands to its sink.
pub enum Output {
    /// A finding record, attributed.
    Finding {
        finding: Box<Finding>,
        /// The process's start time (CLOCK_BOOTTIME ns): with the pid, it
        /// names the process.
        start_boot_ns: u64,
        tally: TallyRead,
    },
    /// A kernel tally read between records: the findings counted so far.
    Tally {
        pid: u32,
        kind: FindingKind,
        read: TallyRead,
        last: SystemTime,
    },
}

/// Everything a record passes through on its way to the sink.
pub struct Pipeline {
    /// Owns the loaded programs: dropping the pipeline detaches them.
    pub kernel: Kernel,
    pub ring: RingBuf<MapData>,
    pub tallies: BpfHashMap<MapData, TallyKey, Tally>,
    pub locator: Locator,
    pub attributor: Attributor,
    pub selection: Selection,
}

/// Whose records the pipeline takes (`sockerr trace --pid/--comm`); the
/// others are dropped as they are read, before they are attributed or
/// their process instrumented for call sites. Empty lists take everyone.
#[derive(Clone, Debug, Default)]
pub struct Selection {
    pub pids: Vec<u32>,
    pub comms: Vec<String>,
}

impl Selection {
    fn takes(&self, record: &Record) -> bool {
        (self.pids.is_empty() || self.pids.contains(&record.raw.tgid))
            && (self.comms.is_empty() || self.comms.contains(&decode::comm(&record.raw.comm)))
    }
}

/// The pipeline on a thread of its own, so that the slow parts of a record
/// (symbolizing a module the first time takes up to a second) never hold up
/// the HTTP server. Dropping it stops the thread and detaches every program.
pub struct Running {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    ended: tokio::sync::oneshot::Receiver<Result<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Running {
    pub fn spawn(pipeline: Pipeline, sink: impl FnMut(Output) + Send + 'static) -> Result<Self> {
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let (end, ended) = tokio::sync::oneshot::channel();
        let thread = std::thread::Builder::new()
            .name("pipeline".into())
            .spawn(move || {
                let result = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(anyhow::Error::from)
                    .and_then(|rt| {
                        rt.block_on(async {
                            tokio::select! {
                                result = run(pipeline, sink) => result,
                                _ = stopped => Ok(()),
                            }
                        })
                    });
                let _ = end.send(result);
            })?;
        Ok(Self {
            stop: Some(stop),
            ended,
            thread: Some(thread),
        })
    }

    /// Resolves when the pipeline fails (it runs until stopped otherwise).
    pub async fn ended(&mut self) -> Result<()> {
        (&mut self.ended)
            .await
            .unwrap_or_else(|_| Err(anyhow::anyhow!("the pipeline thread panicked")))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Reads records until the future is dropped.
async fn run(pipeline: Pipeline, sink: impl FnMut(Output)) -> Result<()> {
    let Pipeline {
        kernel,
        ring,
        tallies,
        locator,
        attributor,
        selection,
    } = pipeline;
    // SAFETY: the ring buffer owns its fd for as long as the AsyncFd owns it.
    let mut ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
        .map_err(|e| anyhow::anyhow!("polling the findings ring buffer: {e}"))?;
    let mut tick = tokio::time::interval(DRAIN_EVERY);
    let mut sweep = tokio::time::interval(SWEEP_EVERY);
    let mut stages = Stages {
        kernel,
        tallies,
        locator,
        attributor,
        selection,
        sink,
    };
    loop {
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard?;
                // Cleared before draining: a wake-up for a record queued
                // while draining then makes the next wait return at once
                // (cleared after, it would be lost until the next tick).
                guard.clear_ready();
                stages.drain(guard.get_inner_mut());
            }
            _ = tick.tick() => {
                stages.drain(ring.get_mut());
                stages.locator.tick(&mut stages.kernel);
            }
            _ = sweep.tick() => {
                stages.locator.sweep();
                stages.read_tallies();
            }
        }
    }
}

struct Stages<S> {
    kernel: Kernel,
    tallies: BpfHashMap<MapData, TallyKey, Tally>,
    locator: Locator,
    attributor: Attributor,
    selection: Selection,
    sink: S,
}

impl<S: FnMut(Output)> Stages<S> {
    /// Handles everything queued, [`BATCH`] records at a time.
    fn drain(&mut self, ring: &mut RingBuf<MapData>) {
        loop {
            // Attribute a batch first, while its processes most likely still
            // run: instrumenting a new process takes milliseconds. Bounded,
            // or a producer as fast as attribution would keep it growing.
            let mut batch = Vec::with_capacity(BATCH);
            // Each process's socket fds, read once per batch.
            let mut fds: HashMap<u32, HashMap<u64, i32>> = HashMap::new();
            while batch.len() < BATCH
                && let Some(item) = ring.next()
            {
                let Some(record) = Record::decode(&item) else {
                    tracing::error!(len = item.len(), "undecodable finding record");
                    continue;
                };
                drop(item);
                if !self.selection.takes(&record) {
                    continue;
                }
                // Read per record: the cgroup tree is walked as of `now`,
                // and a record made after the batch began (the agent
                // stopped meanwhile) may name a cgroup created since.
                let process = self.attributor.attribute(&record.raw, Instant::now());
                let fd = fds
                    .entry(record.raw.tgid)
                    .or_insert_with(|| socket_fds(&process, record.raw.tgid))
                    .get(&record.raw.inode)
                    .copied();
                batch.push((record, process, fd));
            }
            if batch.is_empty() {
                return;
            }
            for (record, process, fd) in batch {
                let at = record.at();
                let sites = self.locator.sites(&mut self.kernel, &record, at);
                let tally = TallyRead {
                    since_ns: record.raw.tally_since_ns,
                    total: record.raw.tally_total,
                };
                (self.sink)(Output::Finding {
                    finding: Box::new(Finding::new(&record, &process, fd, sites, at)),
                    start_boot_ns: record.raw.start_boot_ns,
                    tally,
                });
            }
        }
    }

    /// Reads the kernel's tallies; those of processes that exited are
    /// passed on a last time and deleted.
    fn read_tallies(&mut self) {
        let mut gone = Vec::new();
        for entry in self.tallies.iter() {
            let Ok((key, tally)) = entry else { break };
            let Some(kind) = FindingKind::from_repr(key.kind) else {
                continue;
            };
            (self.sink)(Output::Tally {
                pid: key.tgid,
                kind,
                read: TallyRead {
                    since_ns: tally.since_ns,
                    total: tally.total,
                },
                last: decode::wall_time(tally.last_ns),
            });
            if !proc::alive(key.tgid) {
                gone.push(key);
            }
        }
        for key in gone {
            let _ = self.tallies.remove(&key);
        }
    }
}

/// Socket fds of a process that was found running.
fn socket_fds(process: &Arc<Process>, pid: u32) -> HashMap<u64, i32> {
    if process.exe_source == Some(attribution::ExeSource::Kernel) {
        return HashMap::new();
    }
    Proc::open(pid).map(|p| p.socket_fds()).unwrap_or_default()
}
