//! Prometheus metrics: the names, labels and HELP texts of the interface
//! contract (docs/design.md, "Metrics"). Every method takes `&self`, so the
//! pipeline, the kernel sampler and the HTTP handlers share one instance
//! without a lock around it; only the label caps have their own.

use std::{
    collections::{HashMap, HashSet},
    sync::Mutex,
    time::{Duration, Instant},
};

use prometheus::{IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};
use sockerr_common::FindingKind;
use strum::IntoEnumIterator as _;

use crate::locks::lock;

/// The `comm` label of the comms past `--metrics.max-comms`. A comm is at
/// most 15 bytes (TASK_COMM_LEN 16 with its NUL, include/linux/sched.h) and
/// its label is longer only where `decode::label_value` escaped a byte, with
/// a backslash: 16 bytes without one can never be a real process's label,
/// so a process named `other` keeps its own series.
pub const COMM_OVERFLOW: &str = "(over max-comms)";

/// The `remote` label of the endpoints past `--metrics.max-remotes`: a real
/// remote is always `ip:port`.
pub const REMOTE_OVERFLOW: &str = "other";

/// Bounds a label: the first `max` distinct values keep their name, the
/// rest are reported as `overflow`.
struct Cap {
    max: usize,
    overflow: &'static str,
    admitted: HashSet<String>,
}

impl Cap {
    fn new(max: usize, overflow: &'static str) -> Self {
        Self {
            max,
            overflow,
            admitted: HashSet::new(),
        }
    }

    fn label(&mut self, value: String) -> String {
        if self.admitted.contains(&value) {
            return value;
        }
        if self.admitted.len() < self.max {
            self.admitted.insert(value.clone());
            return value;
        }
        self.overflow.to_owned()
    }
}

/// Bounds the pod labels (`--metrics.max-pods`) on a node where pods come
/// and go: a pod that counted nothing for `idle` gives its slot up and its
/// series are removed, so new pods are named again rather than all becoming
/// `other` once the cap has seen that many pods.
pub struct PodCap {
    pub max: usize,
    pub idle: Duration,
}

/// The pods holding a slot, by (namespace, pod), with when each last counted.
struct PodSlots {
    cap: PodCap,
    seen: HashMap<(String, String), Instant>,
}

impl PodSlots {
    /// Whether the pod keeps its labels, taking a free slot if it has none.
    fn admit(&mut self, key: (String, String), now: Instant) -> bool {
        let free = self.seen.len() < self.cap.max;
        match self.seen.get_mut(&key) {
            Some(seen) => *seen = now,
            None if free => drop(self.seen.insert(key, now)),
            None => return false,
        }
        true
    }

    /// Frees the slots of pods idle since before `now - idle`; returns them.
    fn expire(&mut self, now: Instant) -> Vec<(String, String)> {
        let idle = self.cap.idle;
        let gone: Vec<_> = self
            .seen
            .iter()
            .filter(|(_, seen)| now.saturating_duration_since(**seen) > idle)
            .map(|(key, _)| key.clone())
            .collect();
        for key in &gone {
            self.seen.remove(key);
        }
        gone
    }
}

/// Why a failed or aborted attempt to a remote failed: the errno's name, or
/// `aborted`.
pub const ABORTED: &str = "aborted";

/// Kernel-side drops, by `sockerr_kernel_drops_total{reason}`.
pub const DROP_REASONS: [&str; 4] = [
    "storage_unavailable",
    "counters_full",
    "attempt_untracked",
    "remotes_full",
];

/// The pod labels of a process's series (`--metrics.kubernetes-labels`):
/// namespace, pod and container, empty for a process in no pod.
pub type PodLabels = [String; 3];

/// Label names added to the per-process series with pod labels.
const POD_LABELS: [&str; 3] = ["namespace", "pod", "container"];

pub struct Metrics {
    registry: Registry,
    findings: IntCounterVec,
    attempts: IntCounterVec,
    failures: IntCounterVec,
    by_remote: IntCounterVec,
    reads: IntCounterVec,
    flagged: IntGaugeVec,
    records_sent: IntCounter,
    records_lost: IntCounter,
    evicted: IntCounter,
    kernel_drops: IntCounterVec,
    map_entries: IntGaugeVec,
    map_capacity: IntGaugeVec,
    probe_attached: IntGaugeVec,
    comms: Mutex<Cap>,
    remotes: Mutex<Cap>,
    /// With [`POD_LABELS`] on the per-process series: the pods holding them.
    pods: Option<Mutex<PodSlots>>,
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

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid metric");
    registry
        .register(Box::new(c.clone()))
        .expect("unique metric");
    c
}

/// What the kernel counted for one comm.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CommCount {
    Established,
    Failed { errno: String },
    Aborted,
    Read { result: &'static str },
    Finding(FindingKind),
}

impl Metrics {
    /// `pod_cap`: with pod labels on the per-process series, how many pods
    /// keep theirs at once (the rest are `other`), and for how long idle.
    pub fn new(max_comms: usize, max_remotes: usize, pod_cap: Option<PodCap>) -> Self {
        let pod_labels = pod_cap.is_some();
        let r = Registry::new();
        let per_process = |labels: &[&'static str]| -> Vec<&'static str> {
            let pods = if pod_labels { &POD_LABELS[..] } else { &[] };
            labels.iter().chain(pods).copied().collect()
        };
        let build_info = gauge_vec(
            &r,
            "sockerr_build_info",
            "sockerr build information: the release, the git commit it was built from and \
             the target it was built for; always 1.",
            &["version", "revision", "target"],
        );
        build_info
            .with_label_values(&[
                env!("CARGO_PKG_VERSION"),
                env!("SOCKERR_REVISION"),
                env!("SOCKERR_TARGET"),
            ])
            .set(1);
        let m = Self {
            findings: counter_vec(
                &r,
                "sockerr_findings_total",
                "Findings by kind: so_error_masked, so_error_reread, io_after_failed_connect \
                 (counted in the kernel, every one).",
                &per_process(&["kind", "comm"]),
            ),
            attempts: counter_vec(
                &r,
                "sockerr_connect_attempts_total",
                "TCP connect attempts by result: established, failed, or aborted (closed or \
                 shut down by the process while the outcome was pending, usually an \
                 application's connect timeout).",
                &per_process(&["comm", "result"]),
            ),
            failures: counter_vec(
                &r,
                "sockerr_connect_failures_total",
                "Failed TCP connect attempts by errno. A failure inside connect() after the SYN \
                 was due keeps no errno: EADDRNOTAVAIL when the socket's local port reads 0 \
                 (ports exhausted, or given back by any failure of a socket that did not bind), \
                 else unknown.",
                &per_process(&["comm", "errno"]),
            ),
            by_remote: counter_vec(
                &r,
                "sockerr_connect_failures_by_remote_total",
                "Failed and aborted TCP connect attempts by remote endpoint (ip:port; the \
                 first --metrics.max-remotes endpoints, the rest as other) and reason (errno \
                 name, or aborted).",
                &["remote", "reason"],
            ),
            reads: counter_vec(
                &r,
                "sockerr_so_error_reads_total",
                "getsockopt(SO_ERROR) reads on connecting sockets by result: error, zero, or \
                 pending (read before the outcome was decided).",
                &per_process(&["comm", "result"]),
            ),
            flagged: gauge_vec(
                &r,
                "sockerr_flagged_processes",
                "Processes with a finding of this kind inside the retention window.",
                &["kind"],
            ),
            records_sent: counter(
                &r,
                "sockerr_finding_records_total",
                "Finding records the kernel sent the agent: the first finding of each process and \
                 kind, then at most one per --findings.detail-interval.",
            ),
            records_lost: counter(
                &r,
                "sockerr_events_lost_total",
                "Finding records the kernel could not deliver (ring buffer full). The findings \
                 themselves are still counted in sockerr_findings_total; only their detail \
                 (remote, errno, reads, call sites) is lost.",
            ),
            evicted: counter(
                &r,
                "sockerr_flagged_processes_evicted_total",
                "Flagged processes dropped from the table (--max-processes) before their \
                 retention ended.",
            ),
            kernel_drops: counter_vec(
                &r,
                "sockerr_kernel_drops_total",
                "Work the kernel side had to skip: storage_unavailable (an attempt not \
                 recorded), counters_full (a counter update lost), attempt_untracked (an \
                 outcome, SO_ERROR read or I/O of an attempt evicted from the attempts map: \
                 not judged), remotes_full (a by-remote count lost).",
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
                "1 when the probe is attached (hook: how), 0 when no hook worked on this kernel.",
                &["probe", "hook"],
            ),
            registry: r,
            comms: Mutex::new(Cap::new(max_comms, COMM_OVERFLOW)),
            remotes: Mutex::new(Cap::new(max_remotes, REMOTE_OVERFLOW)),
            pods: pod_cap.map(|cap| {
                Mutex::new(PodSlots {
                    cap,
                    seen: HashMap::new(),
                })
            }),
        };
        for kind in FindingKind::iter() {
            m.flagged.with_label_values(&[<&str>::from(kind)]).set(0);
        }
        for reason in DROP_REASONS {
            m.kernel_drops.with_label_values(&[reason]).inc_by(0);
        }
        m
    }

    /// The capped `comm` label for a comm already escaped as a label value.
    pub fn comm_label(&self, comm: String) -> String {
        lock(&self.comms).label(comm)
    }

    /// The capped `remote` label.
    pub fn remote_label(&self, remote: String) -> String {
        lock(&self.remotes).label(remote)
    }

    /// The label of what the kernel counted past `--metrics.max-comms`.
    pub fn comm_overflow(&self) -> String {
        COMM_OVERFLOW.to_owned()
    }

    /// The label of what the kernel counted past `--metrics.max-remotes`.
    pub fn remote_overflow(&self) -> String {
        REMOTE_OVERFLOW.to_owned()
    }

    /// Pod labels of a process counting at `now`, the pod capped: while
    /// `--metrics.max-pods` pods hold a slot, others are `other` (all three
    /// labels).
    pub fn pod_label(&self, pod: PodLabels, now: Instant) -> PodLabels {
        let Some(pods) = &self.pods else {
            return pod;
        };
        if pod[1].is_empty() || lock(pods).admit((pod[0].clone(), pod[1].clone()), now) {
            pod
        } else {
            ["other", "other", "other"].map(String::from)
        }
    }

    /// Removes the series of pods that counted nothing for the idle time,
    /// freeing their slots.
    pub fn expire_pods(&self, now: Instant) {
        let Some(pods) = &self.pods else {
            return;
        };
        let gone = lock(pods).expire(now);
        if gone.is_empty() {
            return;
        }
        for vec in [&self.findings, &self.attempts, &self.failures, &self.reads] {
            for family in prometheus::core::Collector::collect(vec) {
                for metric in family.get_metric() {
                    let labels: HashMap<&str, &str> = metric
                        .get_label()
                        .iter()
                        .map(|l| (l.name(), l.value()))
                        .collect();
                    let of_pod = |(ns, pod): &(String, String)| {
                        labels.get("namespace") == Some(&ns.as_str())
                            && labels.get("pod") == Some(&pod.as_str())
                    };
                    if gone.iter().any(of_pod) {
                        let _ = vec.remove(&labels);
                    }
                }
            }
        }
    }

    /// Adds `n` to what the kernel counted for `comm` (a capped label) in
    /// `pod` (when the series carry pod labels).
    pub fn comm_count(&self, comm: &str, pod: Option<&PodLabels>, what: &CommCount, n: u64) {
        let pod: Vec<&str> = match (&self.pods, pod) {
            (Some(_), Some(p)) => p.iter().map(String::as_str).collect(),
            (Some(_), None) => vec![""; 3],
            (None, _) => Vec::new(),
        };
        fn labels<'a>(base: &[&'a str], pod: &[&'a str]) -> Vec<&'a str> {
            base.iter().chain(pod).copied().collect()
        }
        match what {
            CommCount::Established => self
                .attempts
                .with_label_values(&labels(&[comm, "established"], &pod)),
            CommCount::Aborted => self
                .attempts
                .with_label_values(&labels(&[comm, ABORTED], &pod)),
            CommCount::Failed { errno } => {
                self.failures
                    .with_label_values(&labels(&[comm, errno], &pod))
                    .inc_by(n);
                self.attempts
                    .with_label_values(&labels(&[comm, "failed"], &pod))
            }
            CommCount::Read { result } => {
                self.reads.with_label_values(&labels(&[comm, result], &pod))
            }
            CommCount::Finding(kind) => self
                .findings
                .with_label_values(&labels(&[(*kind).into(), comm], &pod)),
        }
        .inc_by(n);
    }

    /// Adds `n` failed (`reason` an errno name) or aborted attempts to `remote`.
    /// `remote`: a label from [`Metrics::remote_label`] or the overflow.
    pub fn remote_count(&self, remote: &str, reason: &str, n: u64) {
        self.by_remote
            .with_label_values(&[remote, reason])
            .inc_by(n);
    }

    pub fn records(&self, sent: u64, lost: u64) {
        self.records_sent.inc_by(sent);
        self.records_lost.inc_by(lost);
    }

    pub fn kernel_drops(&self, reason: &str, n: u64) {
        self.kernel_drops.with_label_values(&[reason]).inc_by(n);
    }

    pub fn flagged_evicted(&self) {
        self.evicted.inc();
    }

    pub fn probe(&self, probe: &str, hook: Option<&str>) {
        self.probe_attached
            .with_label_values(&[probe, hook.unwrap_or("none")])
            .set(i64::from(hook.is_some()));
    }

    pub fn flagged(&self, by_kind: impl IntoIterator<Item = usize>) {
        for (kind, n) in FindingKind::iter().zip(by_kind) {
            self.flagged
                .with_label_values(&[<&str>::from(kind)])
                .set(n as i64);
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
    use crate::decode::label_value;

    /// Every sample line: `name{labels} value`, labels well-formed.
    fn samples(text: &str) -> Vec<&str> {
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .collect()
    }

    #[test]
    fn hostile_comms_cannot_break_the_exposition_or_merge() {
        let m = Metrics::new(100, 100, None);
        let hostile: [&[u8]; 7] = [
            b"a\"b",
            b"back\\slash",
            b"new\nline",
            b"{brace}",
            b"bad\xff\xfeutf8",
            b"\x01ctl",
            b"ctl",
        ];
        for c in hostile {
            let label = m.comm_label(label_value(c));
            m.comm_count(
                &label,
                None,
                &CommCount::Finding(FindingKind::SoErrorMasked),
                1,
            );
        }
        let text = m.render();
        let lines: Vec<_> = samples(&text)
            .into_iter()
            .filter(|l| l.starts_with("sockerr_findings_total"))
            .collect();
        assert_eq!(lines.len(), hostile.len(), "{text}");
        assert!(text.contains(r#"comm="a\"b""#), "{text}");
        assert!(text.contains(r#"comm="back\\\\slash""#), "{text}");
        assert!(text.contains(r#"comm="new\\x0aline""#), "{text}");
        assert!(text.contains(r#"comm="{brace}""#));
        assert!(text.contains(r#"comm="bad\\xff\\xfeutf8""#), "{text}");
        assert!(text.contains(r#"comm="\\x01ctl""#) && text.contains(r#"comm="ctl""#));
        for line in samples(&text) {
            let value = line.rsplit(' ').next().unwrap();
            assert!(value.parse::<f64>().is_ok(), "bad sample line {line:?}");
        }
    }

    #[test]
    fn labels_are_capped() {
        let m = Metrics::new(2, 1, None);
        for c in ["a", "b", "c", "d", "a"] {
            let label = m.comm_label(c.into());
            m.comm_count(
                &label,
                None,
                &CommCount::Finding(FindingKind::SoErrorReread),
                1,
            );
        }
        for r in ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.1:80"] {
            m.remote_count(&m.remote_label(r.into()), "ECONNREFUSED", 1);
        }
        // What the kernel folded past its caps joins the overflow.
        m.comm_count(
            &m.comm_overflow(),
            None,
            &CommCount::Finding(FindingKind::SoErrorReread),
            1,
        );
        m.remote_count(&m.remote_overflow(), "ECONNREFUSED", 1);
        let text = m.render();
        for expected in [
            r#"sockerr_findings_total{comm="a",kind="so_error_reread"} 2"#,
            r#"sockerr_findings_total{comm="b",kind="so_error_reread"} 1"#,
            r#"sockerr_findings_total{comm="(over max-comms)",kind="so_error_reread"} 3"#,
            r#"sockerr_connect_failures_by_remote_total{reason="ECONNREFUSED",remote="10.0.0.1:80"} 2"#,
            r#"sockerr_connect_failures_by_remote_total{reason="ECONNREFUSED",remote="other"} 2"#,
        ] {
            assert!(text.contains(expected), "missing {expected}\n{text}");
        }
        assert!(!text.contains(r#"comm="c""#));
    }

    /// A process named `other` (or any name the overflow could be mistaken
    /// for) keeps its own series beside the comms past the cap.
    #[test]
    fn no_real_comm_merges_with_the_overflow() {
        let m = Metrics::new(1, 1, None);
        for raw in [&b"other"[..], b"x", b"(over max-comms", b"y"] {
            let label = m.comm_label(label_value(raw));
            m.comm_count(&label, None, &CommCount::Aborted, 1);
        }
        let text = m.render();
        for expected in [
            r#"sockerr_connect_attempts_total{comm="other",result="aborted"} 1"#,
            r#"sockerr_connect_attempts_total{comm="(over max-comms)",result="aborted"} 3"#,
        ] {
            assert!(text.contains(expected), "missing {expected}\n{text}");
        }
        // Every comm the kernel can report, escaped, differs from it: 15
        // bytes at most, longer only with a backslash.
        assert_eq!(COMM_OVERFLOW.len(), 16);
        assert!(!COMM_OVERFLOW.contains('\\'));
        // Ahead of the cap, "other" is just a name.
        let first = Metrics::new(1, 1, None);
        assert_eq!(first.comm_label("other".into()), "other");
        assert_eq!(first.comm_label("x".into()), COMM_OVERFLOW);
    }

    #[test]
    fn pod_labels_are_capped_by_pod() {
        let idle = Duration::from_secs(60);
        let m = Metrics::new(10, 10, Some(PodCap { max: 2, idle }));
        let pod = |ns: &str, name: &str, c: &str| [ns, name, c].map(String::from);
        let start = Instant::now();
        let count = |p, at| {
            let labels = m.pod_label(p, at);
            m.comm_count("c", Some(&labels), &CommCount::Aborted, 1);
        };
        for p in [
            pod("shop", "web-0", "nginx"),
            pod("shop", "web-0", "sidecar"),
            pod("shop", "web-1", "nginx"),
            pod("shop", "web-2", "nginx"),
            pod("", "", ""),
        ] {
            count(p, start);
        }
        m.comm_count("c", None, &CommCount::Aborted, 1);
        let text = m.render();
        for expected in [
            r#"{comm="c",container="nginx",namespace="shop",pod="web-0",result="aborted"} 1"#,
            r#"{comm="c",container="sidecar",namespace="shop",pod="web-0",result="aborted"} 1"#,
            r#"{comm="c",container="nginx",namespace="shop",pod="web-1",result="aborted"} 1"#,
            r#"{comm="c",container="other",namespace="other",pod="other",result="aborted"} 1"#,
            r#"{comm="c",container="",namespace="",pod="",result="aborted"} 2"#,
        ] {
            assert!(text.contains(expected), "missing {expected}\n{text}");
        }
        // web-1 goes on counting; web-0 is idle past the limit: its series
        // go and its slot is web-2's, which then keeps its name.
        let later = start + idle + Duration::from_secs(1);
        count(pod("shop", "web-1", "nginx"), later);
        m.expire_pods(later);
        count(pod("shop", "web-2", "nginx"), later);
        let text = m.render();
        assert!(!text.contains(r#"pod="web-0""#), "{text}");
        for expected in [
            r#"{comm="c",container="nginx",namespace="shop",pod="web-1",result="aborted"} 2"#,
            r#"{comm="c",container="nginx",namespace="shop",pod="web-2",result="aborted"} 1"#,
            r#"{comm="c",container="other",namespace="other",pod="other",result="aborted"} 1"#,
        ] {
            assert!(text.contains(expected), "missing {expected}\n{text}");
        }
        // Nothing idle: nothing removed.
        m.expire_pods(later);
        assert_eq!(m.render(), text);
    }

    #[test]
    fn failures_count_as_attempts_too() {
        let m = Metrics::new(10, 10, None);
        let failed = CommCount::Failed {
            errno: "EADDRNOTAVAIL".into(),
        };
        m.comm_count("curl", None, &failed, 3);
        m.comm_count("curl", None, &CommCount::Aborted, 2);
        m.probe("send", Some("fentry/tcp_sendmsg"));
        m.probe("release", None);
        let text = m.render();
        for expected in [
            r#"sockerr_connect_attempts_total{comm="curl",result="failed"} 3"#,
            r#"sockerr_connect_attempts_total{comm="curl",result="aborted"} 2"#,
            r#"sockerr_connect_failures_total{comm="curl",errno="EADDRNOTAVAIL"} 3"#,
            r#"sockerr_probe_attached{hook="fentry/tcp_sendmsg",probe="send"} 1"#,
            r#"sockerr_probe_attached{hook="none",probe="release"} 0"#,
            r#"sockerr_kernel_drops_total{reason="attempt_untracked"} 0"#,
            "sockerr_events_lost_total 0",
            r#"sockerr_flagged_processes{kind="so_error_masked"} 0"#,
            r#"sockerr_build_info{revision=""#,
        ] {
            assert!(text.contains(expected), "missing {expected}\n{text}");
        }
    }
}
