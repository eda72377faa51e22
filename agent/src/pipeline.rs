//! The event pipeline: findings from the kernel's ring buffer, decoded,
//! attributed and handed to a sink; kernel log records to the agent's log.

use std::time::Duration;

use anyhow::Result;
use aya::maps::{MapData, RingBuf};
use tokio::io::{Interest, unix::AsyncFd};

use crate::{attribution, finding::Finding};

/// The kernel wakes the agent only when findings pile up (see the eBPF
/// `WAKEUP_BYTES`); otherwise they are collected on this tick.
const DRAIN_EVERY: Duration = Duration::from_millis(100);

/// Reads findings until the task is dropped.
pub async fn run(ring: RingBuf<MapData>, mut sink: impl FnMut(Finding)) -> Result<()> {
    // SAFETY: the ring buffer owns its fd for as long as the AsyncFd owns it.
    let mut ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
        .map_err(|e| anyhow::anyhow!("polling the findings ring buffer: {e}"))?;
    let mut tick = tokio::time::interval(DRAIN_EVERY);
    loop {
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard?;
                drain(guard.get_inner_mut(), &mut sink);
                guard.clear_ready();
            }
            _ = tick.tick() => drain(ring.get_mut(), &mut sink),
        }
    }
}

fn drain(ring: &mut RingBuf<MapData>, sink: &mut impl FnMut(Finding)) {
    while let Some(item) = ring.next() {
        let Some((ev, kind, trigger)) = Finding::decode(&item) else {
            tracing::error!(len = item.len(), "undecodable finding record");
            continue;
        };
        drop(item);
        let process = attribution::attribute(ev.tgid, ev.inode);
        sink(Finding::new(
            &ev,
            kind,
            trigger,
            process,
            crate::finding::wall_time(ev.boot_ns),
        ));
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
