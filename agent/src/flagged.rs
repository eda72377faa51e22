//! The flagged-process table: processes with a finding inside the retention
//! window, bounded in size. It backs `sockerr_flagged_processes{kind}` and
//! `/findings`.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use serde::Serialize;
use sockerr_common::FindingKind;

use crate::finding::Finding;

const KINDS: usize = FindingKind::ALL.len();

fn slot(kind: FindingKind) -> usize {
    kind as usize - 1
}

struct Flagged {
    counts: [u64; KINDS],
    first_seen: String,
    last_seen: Instant,
    /// The latest finding of each kind, in full.
    latest: [Option<Finding>; KINDS],
}

/// A finding as `/findings` shows it: the latest of its kind for its process.
#[derive(Serialize)]
pub struct FindingView<'a> {
    #[serde(flatten)]
    pub finding: &'a Finding,
    /// Findings of this kind from this process inside the retention window.
    pub count: u64,
    /// When this process was first flagged (RFC 3339).
    pub first_seen: &'a str,
}

pub struct FlaggedTable {
    max: usize,
    retention: Duration,
    procs: HashMap<u32, Flagged>,
}

impl FlaggedTable {
    pub fn new(max: usize, retention: Duration) -> Self {
        Self {
            max,
            retention,
            procs: HashMap::new(),
        }
    }

    pub fn capacity(&self) -> usize {
        self.max
    }

    pub fn len(&self) -> usize {
        self.procs.len()
    }

    /// Records a finding; true when another process was dropped to make room.
    pub fn record(&mut self, finding: Finding, now: Instant) -> bool {
        self.expire(now);
        // A reused pid running another program starts afresh (an exited
        // process, whose exe is unknown, is not another program).
        if finding.exe.is_some()
            && self.procs.get(&finding.pid).is_some_and(|p| {
                p.latest
                    .iter()
                    .flatten()
                    .any(|f| f.exe.is_some() && f.exe != finding.exe)
            })
        {
            self.procs.remove(&finding.pid);
        }
        let mut evicted = false;
        if !self.procs.contains_key(&finding.pid) && self.procs.len() >= self.max {
            let oldest = self
                .procs
                .iter()
                .min_by_key(|(_, p)| p.last_seen)
                .map(|(pid, _)| *pid);
            evicted = oldest.and_then(|pid| self.procs.remove(&pid)).is_some();
        }
        let entry = self.procs.entry(finding.pid).or_insert_with(|| Flagged {
            counts: [0; KINDS],
            first_seen: finding.time.clone(),
            last_seen: now,
            latest: Default::default(),
        });
        let i = slot(finding.kind_enum);
        entry.counts[i] += 1;
        entry.last_seen = now;
        entry.latest[i] = Some(finding);
        evicted
    }

    pub fn expire(&mut self, now: Instant) {
        let retention = self.retention;
        self.procs
            .retain(|_, p| now.duration_since(p.last_seen) < retention);
    }

    /// Flagged processes per kind, in `FindingKind::ALL` order.
    pub fn flagged_by_kind(&mut self, now: Instant) -> [usize; KINDS] {
        self.expire(now);
        let mut by_kind = [0; KINDS];
        for p in self.procs.values() {
            for (n, count) in by_kind.iter_mut().zip(p.counts) {
                *n += usize::from(count > 0);
            }
        }
        by_kind
    }

    /// Latest findings, newest first.
    pub fn findings(
        &mut self,
        now: Instant,
        kind: Option<FindingKind>,
        limit: usize,
    ) -> Vec<FindingView<'_>> {
        self.expire(now);
        let mut views: Vec<FindingView<'_>> = self
            .procs
            .values()
            .flat_map(|p| {
                p.latest.iter().zip(p.counts).filter_map(|(f, count)| {
                    let finding = f.as_ref()?;
                    Some(FindingView {
                        finding,
                        count,
                        first_seen: &p.first_seen,
                    })
                })
            })
            .filter(|v| kind.is_none_or(|k| v.finding.kind_enum == k))
            .collect();
        views.sort_by_key(|v| std::cmp::Reverse(v.finding.at));
        views.truncate(limit);
        views
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::time::{Duration, SystemTime};

    use sockerr_common::{Endpoint, FindingEvent, Trigger};

    use super::*;
    use crate::{attribution::Process, callsites::CallSites};

    pub fn finding(pid: u32, kind: FindingKind, secs: u64) -> Finding {
        let ev = FindingEvent {
            boot_ns: 0,
            inode: 0,
            tid: pid,
            tgid: pid,
            errno: 111,
            reads: [111, 0, 0, 0],
            nreads: 2,
            kind: kind as u8,
            trigger: Trigger::Getsockopt as u8,
            _pad: 0,
            remote: Endpoint::default(),
            comm: *b"client\0\0\0\0\0\0\0\0\0\0",
            sites: Default::default(),
        };
        let process = Process {
            exe: Some("/usr/bin/client".into()),
            ..Default::default()
        };
        Finding::new(
            &ev,
            kind,
            Trigger::Getsockopt,
            process,
            CallSites::default(),
            SystemTime::UNIX_EPOCH + Duration::from_secs(secs),
        )
    }

    #[test]
    fn counts_per_kind_and_keeps_the_latest() {
        let now = Instant::now();
        let mut t = FlaggedTable::new(10, Duration::from_secs(60));
        t.record(finding(1, FindingKind::SoErrorMasked, 1), now);
        t.record(finding(1, FindingKind::SoErrorMasked, 2), now);
        t.record(finding(1, FindingKind::IoAfterFailedConnect, 3), now);
        t.record(finding(2, FindingKind::SoErrorReread, 4), now);
        assert_eq!(t.flagged_by_kind(now), [1, 1, 1]);
        let all = t.findings(now, None, 100);
        let order: Vec<_> = all
            .iter()
            .map(|v| (v.finding.pid, v.finding.kind, v.count))
            .collect();
        assert_eq!(
            order,
            [
                (2, "so_error_reread", 1),
                (1, "io_after_failed_connect", 1),
                (1, "so_error_masked", 2)
            ]
        );
        assert_eq!(all[2].first_seen, "1970-01-01T00:00:01.000Z");
        assert_eq!(
            t.findings(now, Some(FindingKind::SoErrorMasked), 100).len(),
            1
        );
        assert_eq!(t.findings(now, None, 1).len(), 1);
    }

    #[test]
    fn findings_json_shape() {
        let now = Instant::now();
        let mut t = FlaggedTable::new(10, Duration::from_secs(60));
        t.record(finding(7, FindingKind::SoErrorMasked, 5), now);
        let json = serde_json::to_value(t.findings(now, None, 10)).unwrap();
        let f = &json[0];
        for key in [
            "kind",
            "severity",
            "pid",
            "tid",
            "comm",
            "exe",
            "cgroup",
            "container_id",
            "pod_uid",
            "fd",
            "remote",
            "errno",
            "so_error_reads",
            "so_error_read_count",
            "syscall",
            "call_sites",
            "time",
            "count",
            "first_seen",
        ] {
            assert!(f.get(key).is_some(), "missing {key} in {f}");
        }
        assert_eq!(f["kind"], "so_error_masked");
        assert_eq!(f["errno"], "ECONNREFUSED");
        assert_eq!(f["so_error_reads"], serde_json::json!([111, 0]));
        assert_eq!(f["fd"], serde_json::Value::Null);
        assert_eq!(f["time"], "1970-01-01T00:00:05.000Z");
        assert!(f.get("kind_enum").is_none() && f.get("exe_error").is_none());
    }

    #[test]
    fn bounded_evicting_the_least_recently_seen() {
        let start = Instant::now();
        let mut t = FlaggedTable::new(3, Duration::from_secs(60));
        let evicted: Vec<bool> = (1..=5)
            .map(|pid| {
                t.record(
                    finding(pid, FindingKind::SoErrorReread, 0),
                    start + Duration::from_millis(pid.into()),
                )
            })
            .collect();
        assert_eq!(t.len(), 3);
        assert_eq!(evicted, [false, false, false, true, true]);
        let mut pids: Vec<_> = t
            .findings(start, None, 10)
            .iter()
            .map(|v| v.finding.pid)
            .collect();
        pids.sort();
        assert_eq!(pids, [3, 4, 5]);
    }

    #[test]
    fn entries_expire_after_the_retention_window() {
        let start = Instant::now();
        let mut t = FlaggedTable::new(10, Duration::from_secs(60));
        t.record(finding(1, FindingKind::SoErrorMasked, 0), start);
        t.record(
            finding(2, FindingKind::SoErrorMasked, 0),
            start + Duration::from_secs(30),
        );
        assert_eq!(t.flagged_by_kind(start + Duration::from_secs(59))[0], 2);
        assert_eq!(t.flagged_by_kind(start + Duration::from_secs(61))[0], 1);
        assert!(
            t.findings(start + Duration::from_secs(91), None, 10)
                .is_empty()
        );
    }

    #[test]
    fn a_reused_pid_running_another_program_starts_afresh() {
        let now = Instant::now();
        let mut t = FlaggedTable::new(10, Duration::from_secs(60));
        t.record(finding(1, FindingKind::SoErrorMasked, 0), now);
        let mut other = finding(1, FindingKind::SoErrorReread, 1);
        other.exe = Some("/usr/bin/other".into());
        t.record(other, now);
        assert_eq!(t.flagged_by_kind(now), [0, 1, 0]);
        let mut exited = finding(1, FindingKind::IoAfterFailedConnect, 2);
        exited.exe = None;
        t.record(exited, now);
        assert_eq!(
            t.flagged_by_kind(now),
            [0, 1, 1],
            "an exited process keeps its entry"
        );
    }
}
