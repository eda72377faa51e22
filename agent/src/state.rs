//! What the daemon knows: metrics and flagged processes, shared by the
//! pipeline (writer) and the HTTP handlers (readers).

use std::{
    sync::{Arc, Mutex, MutexGuard},
    time::Instant,
};

use crate::{
    callsites::uprobes::Usage, finding::Finding, flagged::FlaggedTable, metrics::Metrics,
    probes::KernelCounters,
};

pub struct Inner {
    pub metrics: Metrics,
    pub flagged: FlaggedTable,
    kernel: Option<KernelCounters>,
    call_sites: Usage,
}

#[derive(Clone)]
pub struct State(Arc<Mutex<Inner>>);

impl State {
    pub fn new(
        metrics: Metrics,
        flagged: FlaggedTable,
        kernel: Option<KernelCounters>,
        call_sites: Usage,
    ) -> Self {
        Self(Arc::new(Mutex::new(Inner {
            metrics,
            flagged,
            kernel,
            call_sites,
        })))
    }

    pub fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves consistent data behind.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn record(&self, finding: Finding) {
        let mut inner = self.lock();
        inner.metrics.finding(finding.kind_enum, &finding.comm);
        if inner.flagged.record(finding, Instant::now()) {
            inner.metrics.flagged_evicted();
        }
    }

    /// Brings gauges and kernel-fed counters up to date, then renders.
    pub fn render_metrics(&self) -> String {
        let mut guard = self.lock();
        let inner = &mut *guard;
        if let Some(kernel) = &inner.kernel {
            match kernel.read() {
                Ok(counts) => inner.metrics.kernel(&counts),
                Err(e) => tracing::error!("reading kernel counters: {e:#}"),
            }
        }
        let by_kind = inner.flagged.flagged_by_kind(Instant::now());
        inner.metrics.flagged(by_kind);
        inner.metrics.map_usage(
            "call_site_processes",
            inner.call_sites.probed(),
            inner.call_sites.capacity,
        );
        inner.metrics.map_usage(
            "flagged_processes",
            inner.flagged.len(),
            inner.flagged.capacity(),
        );
        inner.metrics.render()
    }
}
