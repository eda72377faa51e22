//! The event pipeline: findings from the kernel's ring buffer, decoded,
//! attributed, given their call sites (instrumenting newly flagged
//! processes) and handed to a sink; kernel log records to the agent's log.

use std::time::Duration;

use anyhow::Result;
use aya::maps::{MapData, RingBuf};
use sockerr_common::{FindingEvent, FindingKind, MAX_READS, Trigger};
use tokio::io::{Interest, unix::AsyncFd};

use crate::{
    attribution::{self, Process},
    callsites::{
        Resolver,
        uprobes::{Coverage, Instrumenter},
    },
    finding::Finding,
};

/// The kernel wakes the agent only when findings pile up (see the eBPF
/// `WAKEUP_BYTES`); otherwise they are collected on this tick.
const DRAIN_EVERY: Duration = Duration::from_millis(100);
/// Findings attributed before their call sites are resolved.
const BATCH: usize = 256;
/// How often instrumented processes that exited are let go.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Everything a finding passes through on its way to the sink.
pub struct Collector {
    pub ring: RingBuf<MapData>,
    /// Owns the loaded programs: dropping the collector detaches them.
    pub instrumenter: Instrumenter,
    pub resolver: Resolver,
}

/// Reads findings until the future is dropped.
pub async fn run(collector: Collector, sink: impl FnMut(Finding)) -> Result<()> {
    let Collector {
        ring,
        instrumenter,
        resolver,
    } = collector;
    // SAFETY: the ring buffer owns its fd for as long as the AsyncFd owns it.
    let mut ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
        .map_err(|e| anyhow::anyhow!("polling the findings ring buffer: {e}"))?;
    let mut tick = tokio::time::interval(DRAIN_EVERY);
    let mut sweep = tokio::time::interval(SWEEP_EVERY);
    let mut stages = Stages {
        attributor: attribution::Attributor::default(),
        instrumenter,
        resolver,
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
            _ = tick.tick() => stages.drain(ring.get_mut()),
            _ = sweep.tick() => {
                for pid in stages.instrumenter.sweep() {
                    stages.resolver.forget(pid);
                }
            }
        }
    }
}

struct Stages<S> {
    attributor: attribution::Attributor,
    instrumenter: Instrumenter,
    resolver: Resolver,
    sink: S,
}

impl<S: FnMut(Finding)> Stages<S> {
    /// Handles everything queued, [`BATCH`] findings at a time.
    fn drain(&mut self, ring: &mut RingBuf<MapData>) {
        loop {
            // Attribute a batch first, while its processes most likely still
            // run: instrumenting a new process takes milliseconds. Bounded,
            // or a producer as fast as attribution would keep it growing.
            let mut batch = Vec::with_capacity(BATCH);
            self.attributor.new_pass();
            while batch.len() < BATCH
                && let Some(item) = ring.next()
            {
                let Some((ev, kind, trigger)) = Finding::decode(&item) else {
                    tracing::error!(len = item.len(), "undecodable finding record");
                    continue;
                };
                drop(item);
                let process = self.attributor.attribute(ev.tgid, ev.inode);
                batch.push((ev, kind, trigger, process));
            }
            if batch.is_empty() {
                return;
            }
            for (ev, kind, trigger, process) in batch {
                self.finish(&ev, kind, trigger, process);
            }
        }
    }

    /// Call sites (instrumenting the process if new), then the sink.
    fn finish(&mut self, ev: &FindingEvent, kind: FindingKind, trigger: Trigger, process: Process) {
        let pid = ev.tgid;
        if !self.resolver.remembers(pid, kind) {
            // A kind whose call sites are not known yet: probe again.
            self.instrumenter.reinstrument(pid);
        }
        let coverage = self.instrumenter.coverage(pid);
        if coverage == Coverage::NotYet {
            // The snapshot of its mappings, taken while the process most
            // likely runs, names modules after it exits.
            let maps = self.resolver.snapshot(pid);
            self.instrumenter.instrument(pid, maps);
        }
        let nreads = (ev.nreads as usize).min(MAX_READS);
        let at = crate::finding::wall_time(ev.boot_ns);
        let time = humantime::format_rfc3339_millis(at).to_string();
        let sites = self
            .resolver
            .resolve(pid, kind, &time, &ev.sites, nreads, &coverage);
        if sites.note.is_none() {
            self.instrumenter.captured(pid);
        }
        (self.sink)(Finding::new(ev, kind, trigger, process, sites, at));
    }
}

/// Logs one structured line for a finding.
pub fn log(f: &Finding) {
    tracing::warn!(
        target: "sockerr::finding",
        kind = f.kind,
        severity = f.severity,
        pid = f.pid,
        tid = f.tid,
        comm = f.comm.as_str(),
        exe = f.exe.as_deref().unwrap_or_default(),
        exe_error = f.exe_error.as_deref().unwrap_or_default(),
        cgroup = f.cgroup.as_deref().unwrap_or(""),
        container_id = f.container_id.as_deref().unwrap_or(""),
        pod_uid = f.pod_uid.as_deref().unwrap_or(""),
        fd = f.fd.unwrap_or(-1),
        remote = f.remote.as_str(),
        errno = f.errno.as_deref().unwrap_or(""),
        so_error_reads = ?f.so_error_reads,
        syscall = f.syscall,
        call_sites = f.call_sites.summary(&f.so_error_reads),
        "finding"
    );
}

/// Forwards aya-log records from the eBPF programs to the agent's log.
pub fn forward_kernel_logs(logger: aya_log::EbpfLogger<&'static dyn log::Log>) {
    // SAFETY: the logger owns its ring buffer fd for as long as the AsyncFd owns it.
    let Ok(mut fd) = (unsafe { AsyncFd::register_with_interest(logger, Interest::READABLE) })
    else {
        tracing::warn!("cannot poll kernel log records");
        return;
    };
    tokio::spawn(async move {
        while let Ok(mut guard) = fd.readable_mut().await {
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    });
}
