//! Prometheus metrics: the names, labels and HELP texts of the interface
//! contract (DESIGN.md §4). Counters the kernel counts are fed from its
//! per-CPU maps as deltas of their running totals.

use std::collections::{HashMap, HashSet};

use prometheus::{IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};
use sockerr_common::{Counter, CounterKey, FindingKind, Health};

use crate::{
    finding::{comm, errno_name},
    probes::PROBES,
};

/// Running totals read from the kernel maps.
#[derive(Default)]
pub struct KernelCounts {
    pub counters: Vec<(CounterKey, u64)>,
    pub health: [u64; sockerr_common::HEALTH_SLOTS as usize],
}

/// Bounds the `comm` label: the first `max` distinct comms keep their name,
/// the rest are reported as `other`.
struct CommCap {
    max: usize,
    admitted: HashSet<String>,
}

impl CommCap {
    fn label(&mut self, comm: &str) -> String {
        if self.admitted.contains(comm) {
            return comm.to_owned();
        }
        if self.admitted.len() < self.max {
            self.admitted.insert(comm.to_owned());
            return comm.to_owned();
        }
        "other".to_owned()
    }
}

pub struct Metrics {
    registry: Registry,
    findings: IntCounterVec,
    attempts: IntCounterVec,
    failures: IntCounterVec,
    reads: IntCounterVec,
    flagged: IntGaugeVec,
    events_lost: IntCounter,
    evicted: IntCounter,
    kernel_drops: IntCounterVec,
    map_entries: IntGaugeVec,
    map_capacity: IntGaugeVec,
    probe_attached: IntGaugeVec,
    comms: CommCap,
    /// Kernel totals already added, per (counter, comm label, errno).
    seen: HashMap<(u8, String, u16), u64>,
    seen_health: [u64; sockerr_common::HEALTH_SLOTS as usize],
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let v = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry
        .register(Box::new(v.clone()))
        .expect("unique metric");
    v
}

fn gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let v = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry
        .register(Box::new(v.clone()))
        .expect("unique metric");
    v
}

impl Metrics {
    pub fn new(max_comms: usize) -> Self {
        let r = Registry::new();
        let events_lost = IntCounter::new(
            "sockerr_events_lost_total",
            "Findings the kernel produced but could not deliver (ring buffer full).",
        )
        .expect("valid metric");
        r.register(Box::new(events_lost.clone()))
            .expect("unique metric");
        let evicted = IntCounter::new(
            "sockerr_flagged_processes_evicted_total",
            "Flagged processes dropped from the table (--max-processes) before their retention ended.",
        )
        .expect("valid metric");
        r.register(Box::new(evicted.clone()))
            .expect("unique metric");
        let build_info = gauge_vec(
            &r,
            "sockerr_build_info",
            "sockerr build information; always 1.",
            &["version"],
        );
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        let m = Self {
            findings: counter_vec(
                &r,
                "sockerr_findings_total",
                "Findings by kind: so_error_masked, so_error_reread, io_after_failed_connect.",
                &["kind", "comm"],
            ),
            attempts: counter_vec(
                &r,
                "sockerr_connect_attempts_total",
                "TCP connect attempts whose outcome the kernel decided, by result (established, failed).",
                &["comm", "result"],
            ),
            failures: counter_vec(
                &r,
                "sockerr_connect_failures_total",
                "Failed TCP connect attempts by errno.",
                &["comm", "errno"],
            ),
            reads: counter_vec(
                &r,
                "sockerr_so_error_reads_total",
                "getsockopt(SO_ERROR) reads on connecting sockets by result: error, zero, or pending (read before the outcome was decided).",
                &["comm", "result"],
            ),
            flagged: gauge_vec(
                &r,
                "sockerr_flagged_processes",
                "Processes with a finding of this kind inside the retention window.",
                &["kind"],
            ),
            kernel_drops: counter_vec(
                &r,
                "sockerr_kernel_drops_total",
                "Work the kernel side had to skip: storage_unavailable (an attempt not tracked), counters_full (a counter update lost).",
                &["reason"],
            ),
            map_entries: gauge_vec(
                &r,
                "sockerr_map_entries",
                "Entries in sockerr's tables.",
                &["map"],
            ),
            map_capacity: gauge_vec(
                &r,
                "sockerr_map_capacity",
                "Capacity of sockerr's tables.",
                &["map"],
            ),
            probe_attached: gauge_vec(
                &r,
                "sockerr_probe_attached",
                "1 when the probe is attached, 0 when it could not be.",
                &["probe"],
            ),
            events_lost,
            evicted,
            registry: r,
            comms: CommCap {
                max: max_comms,
                admitted: HashSet::new(),
            },
            seen: HashMap::new(),
            seen_health: Default::default(),
        };
        for kind in FindingKind::ALL {
            m.flagged.with_label_values(&[kind.name()]).set(0);
        }
        for reason in ["storage_unavailable", "counters_full"] {
            m.kernel_drops.with_label_values(&[reason]).inc_by(0);
        }
        m
    }

    pub fn finding(&mut self, kind: FindingKind, comm: &str) {
        let comm = self.comms.label(comm);
        self.findings.with_label_values(&[kind.name(), &comm]).inc();
    }

    pub fn flagged_evicted(&self) {
        self.evicted.inc();
    }

    pub fn probes_attached(&self, attached: &[bool]) {
        for ((name, ..), up) in PROBES.iter().zip(attached) {
            self.probe_attached
                .with_label_values(&[name])
                .set(i64::from(*up));
        }
    }

    pub fn flagged(&self, by_kind: [usize; FindingKind::ALL.len()]) {
        for (kind, n) in FindingKind::ALL.iter().zip(by_kind) {
            self.flagged.with_label_values(&[kind.name()]).set(n as i64);
        }
    }

    pub fn map_usage(&self, map: &str, entries: usize, capacity: usize) {
        self.map_entries
            .with_label_values(&[map])
            .set(entries as i64);
        self.map_capacity
            .with_label_values(&[map])
            .set(capacity as i64);
    }

    /// Adds what the kernel counted since the last call.
    pub fn kernel(&mut self, counts: &KernelCounts) {
        let mut totals: HashMap<(u8, String, u16), u64> = HashMap::new();
        for (key, value) in &counts.counters {
            let label = self.comms.label(&comm(&key.comm));
            *totals.entry((key.counter, label, key.errno)).or_default() += value;
        }
        for (key, total) in totals {
            let before = self.seen.insert(key.clone(), total).unwrap_or(0);
            let delta = total.saturating_sub(before);
            let (counter, comm, errno) = key;
            let Some(counter) = Counter::from_u8(counter) else {
                continue;
            };
            let (vec, result) = match counter {
                Counter::Established => (&self.attempts, "established"),
                Counter::Failed => {
                    let errno = errno_name(errno.into());
                    self.failures
                        .with_label_values(&[&comm, &errno])
                        .inc_by(delta);
                    (&self.attempts, "failed")
                }
                Counter::ReadPending => (&self.reads, "pending"),
                Counter::ReadError => (&self.reads, "error"),
                Counter::ReadZero => (&self.reads, "zero"),
            };
            vec.with_label_values(&[&comm, result]).inc_by(delta);
        }
        let delta = |slot: Health, seen: &mut [u64]| {
            let (now, before) = (counts.health[slot as usize], seen[slot as usize]);
            seen[slot as usize] = now;
            now.saturating_sub(before)
        };
        self.events_lost
            .inc_by(delta(Health::FindingsLost, &mut self.seen_health));
        let storage = delta(Health::StorageFailed, &mut self.seen_health);
        self.kernel_drops
            .with_label_values(&["storage_unavailable"])
            .inc_by(storage);
        let full = delta(Health::CountersFull, &mut self.seen_health);
        self.kernel_drops
            .with_label_values(&["counters_full"])
            .inc_by(full);
        self.map_usage(
            "counters",
            counts.counters.len(),
            sockerr_common::COUNTER_ENTRIES as usize,
        );
    }

    /// Adds metrics kept elsewhere (the HTTP server's) to the exposition.
    pub fn register(&self, collector: Box<dyn prometheus::core::Collector>) {
        self.registry.register(collector).expect("unique metric");
    }

    pub fn render(&self) -> String {
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .expect("text encoding cannot fail")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(comm: &[u8], counter: Counter, errno: u16) -> CounterKey {
        let mut c = [0u8; 16];
        c[..comm.len()].copy_from_slice(comm);
        CounterKey {
            comm: c,
            errno,
            counter: counter as u8,
            _pad: 0,
        }
    }

    /// Every sample line: `name{labels} value`, labels well-formed.
    fn samples(text: &str) -> Vec<&str> {
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .collect()
    }

    #[test]
    fn hostile_comms_cannot_break_the_exposition() {
        let mut m = Metrics::new(100);
        let hostile = [
            "a\"b",
            "back\\slash",
            "new\nline",
            "{brace}",
            &comm(b"bad\xff\xfeutf8\0"),
        ];
        for c in hostile {
            m.finding(FindingKind::SoErrorMasked, c);
        }
        let text = m.render();
        let lines: Vec<_> = samples(&text)
            .into_iter()
            .filter(|l| l.starts_with("sockerr_findings_total"))
            .collect();
        assert_eq!(lines.len(), hostile.len(), "{text}");
        assert!(text.contains(r#"comm="a\"b""#), "{text}");
        assert!(text.contains(r#"comm="back\\slash""#));
        assert!(text.contains(r#"comm="new\nline""#));
        assert!(text.contains(r#"comm="{brace}""#));
        assert!(text.contains("comm=\"bad\u{fffd}\u{fffd}utf8\""));
        for line in samples(&text) {
            let value = line.rsplit(' ').next().unwrap();
            assert!(value.parse::<f64>().is_ok(), "bad sample line {line:?}");
        }
    }

    #[test]
    fn comm_label_is_capped() {
        let mut m = Metrics::new(2);
        for c in ["a", "b", "c", "d", "a"] {
            m.finding(FindingKind::SoErrorReread, c);
        }
        let text = m.render();
        assert!(
            text.contains(r#"sockerr_findings_total{comm="a",kind="so_error_reread"} 2"#),
            "{text}"
        );
        assert!(text.contains(r#"sockerr_findings_total{comm="b",kind="so_error_reread"} 1"#));
        assert!(text.contains(r#"sockerr_findings_total{comm="other",kind="so_error_reread"} 2"#));
        assert!(!text.contains(r#"comm="c""#));
    }

    #[test]
    fn kernel_totals_become_counter_deltas() {
        let mut m = Metrics::new(100);
        let mut counts = KernelCounts {
            counters: vec![
                (key(b"curl", Counter::Established, 0), 3),
                (key(b"curl", Counter::Failed, 111), 2),
                (key(b"curl", Counter::ReadError, 0), 2),
                (key(b"curl", Counter::ReadPending, 0), 5),
            ],
            ..Default::default()
        };
        counts.health[Health::FindingsLost as usize] = 4;
        m.kernel(&counts);
        counts.counters[1].1 = 5;
        counts.health[Health::FindingsLost as usize] = 6;
        m.kernel(&counts);
        let text = m.render();
        for expected in [
            r#"sockerr_connect_attempts_total{comm="curl",result="established"} 3"#,
            r#"sockerr_connect_attempts_total{comm="curl",result="failed"} 5"#,
            r#"sockerr_connect_failures_total{comm="curl",errno="ECONNREFUSED"} 5"#,
            r#"sockerr_so_error_reads_total{comm="curl",result="error"} 2"#,
            r#"sockerr_so_error_reads_total{comm="curl",result="pending"} 5"#,
            "sockerr_events_lost_total 6",
            r#"sockerr_kernel_drops_total{reason="counters_full"} 0"#,
            r#"sockerr_map_entries{map="counters"} 4"#,
            r#"sockerr_build_info{version=""#,
            r#"sockerr_flagged_processes{kind="so_error_masked"} 0"#,
        ] {
            assert!(text.contains(expected), "missing {expected}\n{text}");
        }
    }
}
