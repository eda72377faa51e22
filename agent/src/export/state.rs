//! What the daemon knows, shared by the pipeline (writer), the kernel
//! sampler and the HTTP handlers (readers). The findings table and the
//! kernel sampler have a lock each, so a slow scrape (which reads the
//! kernel's maps) never holds up recording findings.

use std::{
    sync::{Arc, Mutex},
    time::Instant,
};

use super::{logging, metrics::Metrics, sampler::Sampler};
use crate::{
    locks::lock,
    pipeline::{Output, callsites::uprobes::Usage, table::Findings},
};

#[derive(Clone)]
pub struct State {
    findings: Arc<Mutex<Findings>>,
    sampler: Arc<Mutex<Sampler>>,
    metrics: Arc<Metrics>,
    call_sites: Usage,
}

impl State {
    pub fn new(findings: Findings, sampler: Sampler, metrics: Metrics, call_sites: Usage) -> Self {
        Self {
            findings: Arc::new(Mutex::new(findings)),
            sampler: Arc::new(Mutex::new(sampler)),
            metrics: Arc::new(metrics),
            call_sites,
        }
    }

    /// Takes what the pipeline produced; logs the first finding of each
    /// (process, kind) in full.
    pub fn record(&self, output: Output) {
        let mut findings = lock(&self.findings);
        match output {
            Output::Finding {
                finding,
                start_boot_ns,
                tally,
            } => {
                let (pid, kind) = (finding.pid, finding.kind);
                let recorded = findings.record(*finding, start_boot_ns, tally, Instant::now());
                // Only a new entry's finding is logged, in full.
                if recorded.new
                    && let Some(view) = findings.latest_view(pid, kind)
                {
                    logging::finding(&view);
                }
                drop(findings);
                if recorded.evicted {
                    self.metrics.flagged_evicted();
                }
            }
            Output::Tally {
                pid,
                kind,
                read,
                last,
            } => findings.tally(pid, kind, read, last, Instant::now()),
        }
    }

    /// One summary line per (process, kind) whose findings went on.
    pub fn log_summaries(&self) {
        for (view, new) in lock(&self.findings).summaries(Instant::now()) {
            logging::summary(&view, new);
        }
    }

    /// Adds what the kernel counted since the last call to the metrics.
    pub fn sample_kernel(&self) {
        if let Err(e) = lock(&self.sampler).sample(&self.metrics, Instant::now()) {
            tracing::error!("reading kernel counters: {e:#}");
        }
    }

    /// Brings gauges and kernel-fed counters up to date, then renders.
    pub fn render_metrics(&self) -> String {
        self.sample_kernel();
        let (by_kind, flagged, capacity) = {
            let mut findings = lock(&self.findings);
            let by_kind = findings.flagged_by_kind(Instant::now());
            (by_kind, findings.len(), findings.capacity())
        };
        self.metrics.flagged(by_kind);
        self.metrics
            .map_usage("flagged_processes", flagged, capacity);
        self.metrics.map_usage(
            "call_site_processes",
            self.call_sites.probed(),
            self.call_sites.capacity,
        );
        self.metrics.render()
    }

    /// The findings table behind `/findings`, which writes it out a chunk
    /// at a time (`web/routes.rs`).
    pub fn findings(&self) -> Arc<Mutex<Findings>> {
        self.findings.clone()
    }
}
