//! The agent's own `process_*` metrics, as every Prometheus exporter has
//! them (client_golang's process collector: CPU, memory, descriptors,
//! start time), one series per process of the agent: `process="collector"`
//! and `process="server"` (the web server, while one runs). Read from /proc
//! at each scrape; `--web.disable-exporter-metrics` leaves them out.

use std::sync::{
    Arc, Mutex,
    atomic::{AtomicU32, Ordering},
};

use prometheus::{
    CounterVec, GaugeVec, Opts,
    core::{Collector, Desc},
    proto::MetricFamily,
};

use crate::{
    locks::lock,
    proc::{Proc, Usage},
};

/// The metrics, made afresh at each collection (values are read, not
/// counted here).
struct Families {
    cpu: CounterVec,
    resident: GaugeVec,
    virtual_memory: GaugeVec,
    start_time: GaugeVec,
    open_fds: GaugeVec,
    max_fds: GaugeVec,
}

impl Families {
    fn new() -> Self {
        let gauge = |name: &str, help: &str| {
            GaugeVec::new(Opts::new(name, help), &["process"]).expect("valid metric")
        };
        Self {
            cpu: CounterVec::new(
                Opts::new(
                    "process_cpu_seconds_total",
                    "Total user and system CPU time spent in seconds, by process of the agent.",
                ),
                &["process"],
            )
            .expect("valid metric"),
            resident: gauge(
                "process_resident_memory_bytes",
                "Resident memory size in bytes, by process of the agent.",
            ),
            virtual_memory: gauge(
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes, by process of the agent.",
            ),
            start_time: gauge(
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds, by process of the agent.",
            ),
            open_fds: gauge(
                "process_open_fds",
                "Number of open file descriptors, by process of the agent.",
            ),
            max_fds: gauge(
                "process_max_fds",
                "Maximum number of open file descriptors, by process of the agent.",
            ),
        }
    }

    fn set(&self, process: &str, u: &Usage, max_fds: Option<u64>) {
        let labels = [process];
        self.cpu.with_label_values(&labels).inc_by(u.cpu_seconds);
        self.resident
            .with_label_values(&labels)
            .set(u.resident_bytes as f64);
        self.virtual_memory
            .with_label_values(&labels)
            .set(u.virtual_bytes as f64);
        self.start_time
            .with_label_values(&labels)
            .set(u.start_time_seconds);
        self.open_fds
            .with_label_values(&labels)
            .set(u.open_fds as f64);
        if let Some(max) = max_fds {
            self.max_fds.with_label_values(&labels).set(max as f64);
        }
    }

    fn all(&self) -> [&dyn Collector; 6] {
        [
            &self.cpu,
            &self.resident,
            &self.virtual_memory,
            &self.start_time,
            &self.open_fds,
            &self.max_fds,
        ]
    }
}

pub struct ProcessMetrics {
    /// The web server's pid, 0 while none runs.
    server: Arc<AtomicU32>,
    descs: Vec<Desc>,
    /// Each process's limit of open files, read once (by pid): parsing
    /// /proc/<pid>/limits at every scrape would cost more than the rest.
    max_fds: Mutex<Vec<(u32, Option<u64>)>>,
}

impl ProcessMetrics {
    pub fn new(server: Arc<AtomicU32>) -> Self {
        let families = Families::new();
        let descs = families
            .all()
            .iter()
            .flat_map(|c| c.desc().into_iter().cloned())
            .collect();
        Self {
            server,
            descs,
            max_fds: Mutex::default(),
        }
    }
}

impl Collector for ProcessMetrics {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let families = Families::new();
        let server = self.server.load(Ordering::Relaxed);
        for (process, pid) in [("collector", std::process::id()), ("server", server)] {
            if pid == 0 {
                continue;
            }
            let Ok(proc) = Proc::open(pid) else { continue };
            let max_fds = {
                let mut known = lock(&self.max_fds);
                match known.iter().find(|(p, _)| *p == pid) {
                    Some((_, max)) => *max,
                    None => {
                        let max = proc.max_fds().ok().flatten();
                        // The collector and the running server.
                        known.retain(|(p, _)| *p == std::process::id() || *p == server);
                        known.push((pid, max));
                        max
                    }
                }
            };
            let usage = match pid == std::process::id() {
                true => crate::proc::own_usage(),
                false => proc.usage(),
            };
            match usage {
                Ok(usage) => families.set(process, &usage, max_fds),
                Err(e) => tracing::debug!(process, pid, "process metrics: {e}"),
            }
        }
        families.all().iter().flat_map(|c| c.collect()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_process_of_the_agent_has_its_series() {
        let registry = prometheus::Registry::new();
        let server = Arc::new(AtomicU32::new(0));
        registry
            .register(Box::new(ProcessMetrics::new(server.clone())))
            .unwrap();
        let text = |r: &prometheus::Registry| {
            prometheus::TextEncoder::new()
                .encode_to_string(&r.gather())
                .unwrap()
        };
        let alone = text(&registry);
        assert!(
            alone.contains("# TYPE process_cpu_seconds_total counter"),
            "{alone}"
        );
        assert!(
            alone.contains(r#"process_open_fds{process="collector"}"#),
            "{alone}"
        );
        assert!(!alone.contains(r#"process="server""#), "{alone}");
        // Any live process stands in for the server.
        let child = std::process::Command::new("sleep")
            .arg("10")
            .spawn()
            .unwrap();
        server.store(child.id(), Ordering::Relaxed);
        let both = text(&registry);
        for name in [
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_virtual_memory_bytes",
            "process_start_time_seconds",
            "process_open_fds",
            "process_max_fds",
        ] {
            assert!(
                both.contains(&format!("{name}{{process=\"server\"}}")),
                "{name}\n{both}"
            );
        }
        let mut child = child;
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
