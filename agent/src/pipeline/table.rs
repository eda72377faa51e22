//! The findings table: one entry per (process, kind) with a finding inside
//! the retention window, bounded in size. It backs `/findings`,
//! `sockerr_flagged_processes{kind}` and the log's summary lines.
//!
//! The kernel counts every finding in a per-(process, kind) tally and sends
//! a full record only for the first and then at most once per detail
//! interval; the counts here come from those tallies (each record carries
//! its tally's total, and the agent reads the tallies periodically), so they
//! are exact however few records arrive.

use std::{
    collections::HashMap,
    time::{Duration, Instant, SystemTime},
};

use serde::{Deserialize, Serialize};
use sockerr_common::FindingKind;
use strum::{EnumCount as _, IntoEnumIterator as _};

use super::report::Finding;
use crate::decode;

const KINDS: usize = FindingKind::COUNT;

/// Where a kind's entry is kept: its place in the derived list of kinds.
fn slot(kind: FindingKind) -> usize {
    FindingKind::iter()
        .position(|k| k == kind)
        .expect("every kind is in the list")
}

/// The findings of one kind of one process.
pub struct Entry {
    /// The latest finding record, in full.
    pub latest: Finding,
    /// Findings counted.
    pub count: u64,
    pub first_seen: SystemTime,
    pub last_seen: SystemTime,
    /// `count` when a log line last reported it.
    logged: u64,
    /// The kernel tally counted so far.
    tally: TallyRead,
}

struct Flagged {
    /// Start time the kernel gave (CLOCK_BOOTTIME ns): tells a reused pid.
    start_boot_ns: u64,
    last_seen: Instant,
    kinds: [Option<Entry>; KINDS],
}

/// A (process, kind) entry as `/findings` shows it: the latest finding of
/// its kind, and how many there were.
#[derive(Serialize)]
pub struct FindingView<'a> {
    #[serde(flatten)]
    pub finding: &'a Finding,
    /// Findings of this kind from this process.
    pub count: u64,
    #[serde(serialize_with = "decode::serialize_rfc3339")]
    pub first_seen: SystemTime,
    #[serde(serialize_with = "decode::serialize_rfc3339")]
    pub last_seen: SystemTime,
}

/// Which entry: a (process, kind), the process told from a later one with
/// its pid by its start time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntryKey {
    pid: u32,
    kind: FindingKind,
    start_boot_ns: u64,
}

/// A tally as the kernel keeps it, identified by when it began.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TallyRead {
    pub since_ns: u64,
    pub total: u64,
}

/// What recording a finding did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Recorded {
    /// The first finding of its (process, kind): worth a log line.
    pub new: bool,
    /// Another process was dropped to make room.
    pub evicted: bool,
}

/// Which entries `/findings` shows: those matching every criterion given
/// (none: all of them).
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
pub struct Filter {
    pub kind: Option<FindingKind>,
    /// The process's name (`comm`), exactly.
    pub comm: Option<String>,
    pub pid: Option<u32>,
    /// Kubernetes namespace and pod, exactly.
    pub namespace: Option<String>,
    pub pod: Option<String>,
    /// Only entries with a finding (`last_seen`) at or after this.
    pub since: Option<Since>,
}

/// A point in time, as `since=` takes it: a duration back from now (`5m`,
/// `1h30m`), or an RFC 3339 time (`2026-12-03T15:00:00Z`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum Since {
    Ago(Duration),
    At(SystemTime),
}

impl TryFrom<String> for Since {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        if let Ok(ago) = humantime::parse_duration(&s) {
            return Ok(Since::Ago(ago));
        }
        humantime::parse_rfc3339_weak(&s)
            .map(Since::At)
            .map_err(|_| format!("since: {s:?} is neither a duration (5m) nor an RFC 3339 time"))
    }
}

impl Since {
    fn time(self, now: SystemTime) -> SystemTime {
        match self {
            Since::Ago(ago) => now.checked_sub(ago).unwrap_or(SystemTime::UNIX_EPOCH),
            Since::At(at) => at,
        }
    }
}

impl Filter {
    fn matches(&self, entry: &Entry, since: Option<SystemTime>) -> bool {
        let f = &entry.latest;
        self.kind.is_none_or(|k| f.kind == k)
            && self.comm.as_ref().is_none_or(|c| *c == f.comm)
            && self.pid.is_none_or(|p| p == f.pid)
            && (self.namespace.is_none() || self.namespace == f.namespace)
            && (self.pod.is_none() || self.pod == f.pod)
            && since.is_none_or(|t| entry.last_seen >= t)
    }
}

pub struct Findings {
    max: usize,
    retention: Duration,
    procs: HashMap<u32, Flagged>,
}

impl Findings {
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

    /// Records a finding record of the process that started at
    /// `start_boot_ns`, whose tally stood at `tally`.
    pub fn record(
        &mut self,
        finding: Finding,
        start_boot_ns: u64,
        tally: TallyRead,
        now: Instant,
    ) -> Recorded {
        let pid = finding.pid;
        let mut recorded = Recorded::default();
        self.expire_one(pid, now);
        if self
            .procs
            .get(&pid)
            .is_some_and(|p| p.start_boot_ns != start_boot_ns)
        {
            // The pid names another process now: it starts afresh.
            self.procs.remove(&pid);
        }
        if !self.procs.contains_key(&pid) && self.procs.len() >= self.max {
            // Full: make room from those past their retention first.
            self.expire(now);
            if self.procs.len() >= self.max {
                let oldest = self
                    .procs
                    .iter()
                    .min_by_key(|(_, p)| p.last_seen)
                    .map(|(pid, _)| *pid);
                if let Some(oldest) = oldest {
                    self.procs.remove(&oldest);
                    recorded.evicted = true;
                }
            }
        }
        let flagged = self.procs.entry(pid).or_insert_with(|| Flagged {
            start_boot_ns,
            last_seen: now,
            kinds: Default::default(),
        });
        flagged.last_seen = now;
        let at = finding.at;
        match &mut flagged.kinds[slot(finding.kind)] {
            Some(entry) => {
                entry.count += account(&mut entry.tally, tally);
                entry.last_seen = entry.last_seen.max(at);
                entry.latest = finding;
            }
            vacant @ None => {
                recorded.new = true;
                // A record counts at least itself (its tally may have been
                // read past it already); its own log line reports it.
                let count = tally.total.max(1);
                *vacant = Some(Entry {
                    latest: finding,
                    count,
                    first_seen: at,
                    last_seen: at,
                    logged: count,
                    tally,
                });
            }
        }
        recorded
    }

    /// The entry of `kind` of `pid`, as `/findings` shows it.
    pub fn latest_view(&self, pid: u32, kind: FindingKind) -> Option<FindingView<'_>> {
        self.procs.get(&pid)?.kinds[slot(kind)]
            .as_ref()
            .map(Entry::view)
    }

    /// A tally read from the kernel: findings since the last record.
    pub fn tally(
        &mut self,
        pid: u32,
        kind: FindingKind,
        read: TallyRead,
        last: SystemTime,
        now: Instant,
    ) {
        self.expire_one(pid, now);
        // Only processes with an entry: a record of one without will count
        // the whole tally when it arrives.
        let Some(p) = self.procs.get_mut(&pid) else {
            return;
        };
        let Some(entry) = &mut p.kinds[slot(kind)] else {
            return;
        };
        let new = account(&mut entry.tally, read);
        if new == 0 {
            return;
        }
        p.last_seen = now;
        entry.count += new;
        entry.last_seen = entry.last_seen.max(last);
    }

    /// Forgets `pid` if it is past its retention.
    fn expire_one(&mut self, pid: u32, now: Instant) {
        let retention = self.retention;
        if self
            .procs
            .get(&pid)
            .is_some_and(|p| now.duration_since(p.last_seen) >= retention)
        {
            self.procs.remove(&pid);
        }
    }

    /// Forgets every process past its retention.
    fn expire(&mut self, now: Instant) {
        let retention = self.retention;
        self.procs
            .retain(|_, p| now.duration_since(p.last_seen) < retention);
    }

    /// Flagged processes per kind, in `FindingKind` order.
    pub fn flagged_by_kind(&mut self, now: Instant) -> [usize; KINDS] {
        self.expire(now);
        let mut by_kind = [0; KINDS];
        for p in self.procs.values() {
            for (n, entry) in by_kind.iter_mut().zip(&p.kinds) {
                *n += usize::from(entry.is_some());
            }
        }
        by_kind
    }

    /// Latest findings of the entries `filter` matches, newest first.
    #[cfg(test)]
    pub fn findings(
        &mut self,
        now: (Instant, SystemTime),
        filter: &Filter,
        limit: usize,
    ) -> Vec<FindingView<'_>> {
        let order = self.order(now, filter, limit);
        order.iter().filter_map(|key| self.view(key)).collect()
    }

    /// The entries `filter` matches, newest first, at most `limit`: which
    /// to show, read one by one afterwards with [`Findings::view`] (16 bytes
    /// an entry, where a view written out is hundreds). `now` (the wall
    /// clock) is what `since=5m` counts back from.
    pub fn order(
        &mut self,
        now: (Instant, SystemTime),
        filter: &Filter,
        limit: usize,
    ) -> Vec<EntryKey> {
        self.expire(now.0);
        let since = filter.since.map(|s| s.time(now.1));
        let mut order: Vec<(SystemTime, EntryKey)> = self
            .procs
            .iter()
            .flat_map(|(&pid, p)| {
                p.kinds
                    .iter()
                    .flatten()
                    .filter(move |e| filter.matches(e, since))
                    .map(move |e| {
                        let key = EntryKey {
                            pid,
                            kind: e.latest.kind,
                            start_boot_ns: p.start_boot_ns,
                        };
                        (e.last_seen, key)
                    })
            })
            .collect();
        order.sort_by_key(|(last_seen, _)| std::cmp::Reverse(*last_seen));
        order.truncate(limit);
        // A Vec of its own: collecting in place would keep the allocation
        // of every entry's time and key for as long as the response lasts.
        let mut keys = Vec::with_capacity(order.len());
        keys.extend(order.iter().map(|(_, key)| *key));
        keys
    }

    /// The entry `key` names as it stands now; None once it expired or its
    /// process was dropped (also when its pid names another process now).
    pub fn view(&self, key: &EntryKey) -> Option<FindingView<'_>> {
        let p = self
            .procs
            .get(&key.pid)
            .filter(|p| p.start_boot_ns == key.start_boot_ns)?;
        let e = p.kinds[slot(key.kind)].as_ref()?;
        Some(FindingView {
            finding: &e.latest,
            count: e.count,
            first_seen: e.first_seen,
            last_seen: e.last_seen,
        })
    }

    /// Appends the entries of `keys` that still exist to `out` as JSON
    /// objects, separated by commas (`first`: none written yet), until `out`
    /// holds `chunk` bytes. An entry that would take `out` past `most`
    /// bytes is left out and ends the writing. Returns how many keys it
    /// used, and whether `most` stopped it.
    pub fn write(
        &self,
        keys: &[EntryKey],
        out: &mut Vec<u8>,
        first: &mut bool,
        (chunk, most): (usize, usize),
    ) -> (usize, bool) {
        let mut used = 0;
        for key in keys {
            if out.len() >= chunk {
                break;
            }
            used += 1;
            let Some(view) = self.view(key) else {
                continue;
            };
            let before = out.len();
            if !*first {
                out.push(b',');
            }
            serde_json::to_writer(&mut *out, &view).expect("serializable");
            if out.len() > most {
                out.truncate(before);
                return (used, true);
            }
            *first = false;
        }
        (used, false)
    }

    /// Entries whose count grew since they were last logged, with how much;
    /// each is then marked logged.
    pub fn summaries(&mut self, now: Instant) -> Vec<(FindingView<'_>, u64)> {
        self.expire(now);
        self.procs
            .values_mut()
            .flat_map(|p| p.kinds.iter_mut().flatten())
            .filter(|e| e.count > e.logged)
            .map(|e| {
                let new = e.count - e.logged;
                e.logged = e.count;
                (e.view(), new)
            })
            .collect()
    }
}

impl Entry {
    fn view(&self) -> FindingView<'_> {
        FindingView {
            finding: &self.latest,
            count: self.count,
            first_seen: self.first_seen,
            last_seen: self.last_seen,
        }
    }
}

/// Findings of a tally not counted yet, `known` brought up to `read`. A
/// tally that began later than the one counted replaced it (the kernel
/// evicted the old one); an older one is a record overtaken by a newer read.
fn account(known: &mut TallyRead, read: TallyRead) -> u64 {
    if read.since_ns > known.since_ns {
        *known = TallyRead {
            since_ns: read.since_ns,
            total: 0,
        };
    }
    if read.since_ns < known.since_ns || read.total <= known.total {
        return 0;
    }
    let new = read.total - known.total;
    known.total = read.total;
    new
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::report::tests::finding;

    fn tally(total: u64) -> TallyRead {
        TallyRead { since_ns: 1, total }
    }

    #[test]
    fn counts_come_from_the_kernel_tallies() {
        let now = Instant::now();
        let mut t = Findings::new(10, Duration::from_secs(60));
        let first = t.record(finding(1, FindingKind::SoErrorMasked, 1), 7, tally(1), now);
        assert_eq!(
            first,
            Recorded {
                new: true,
                evicted: false
            }
        );
        // 499 more findings, no record: a tally read finds them.
        t.tally(
            1,
            FindingKind::SoErrorMasked,
            tally(500),
            SystemTime::UNIX_EPOCH,
            now,
        );
        // The next record carries the tally at 800; a stale read changes nothing.
        let later = t.record(
            finding(1, FindingKind::SoErrorMasked, 9),
            7,
            tally(800),
            now,
        );
        assert!(!later.new);
        t.tally(
            1,
            FindingKind::SoErrorMasked,
            tally(700),
            SystemTime::UNIX_EPOCH,
            now,
        );
        let views = t.findings((now, SystemTime::now()), &Filter::default(), 10);
        assert_eq!(views[0].count, 800);
        assert_eq!(
            views[0].first_seen,
            SystemTime::UNIX_EPOCH + Duration::from_secs(1)
        );
        assert_eq!(
            views[0].last_seen,
            SystemTime::UNIX_EPOCH + Duration::from_secs(9)
        );
        // The kernel evicted the tally and began another: counted on top.
        t.tally(
            1,
            FindingKind::SoErrorMasked,
            TallyRead {
                since_ns: 2,
                total: 5,
            },
            SystemTime::UNIX_EPOCH,
            now,
        );
        assert_eq!(
            t.findings((now, SystemTime::now()), &Filter::default(), 10)[0].count,
            805
        );
        // A tally of a process the table does not know is left for its record.
        t.tally(
            2,
            FindingKind::SoErrorReread,
            tally(3),
            SystemTime::UNIX_EPOCH,
            now,
        );
        t.record(finding(2, FindingKind::SoErrorReread, 3), 7, tally(4), now);
        let reread = t.findings(
            (now, SystemTime::now()),
            &Filter {
                kind: Some(FindingKind::SoErrorReread),
                ..Filter::default()
            },
            10,
        );
        assert_eq!(reread[0].count, 4);
    }

    #[test]
    fn entries_per_kind_newest_first() {
        let now = Instant::now();
        let mut t = Findings::new(10, Duration::from_secs(60));
        t.record(finding(1, FindingKind::SoErrorMasked, 1), 7, tally(1), now);
        t.record(finding(1, FindingKind::SoErrorMasked, 2), 7, tally(2), now);
        t.record(
            finding(1, FindingKind::IoAfterFailedConnect, 3),
            7,
            tally(1),
            now,
        );
        t.record(finding(2, FindingKind::SoErrorReread, 4), 8, tally(1), now);
        assert_eq!(t.flagged_by_kind(now), [1, 1, 1]);
        let order: Vec<_> = t
            .findings((now, SystemTime::now()), &Filter::default(), 100)
            .iter()
            .map(|v| (v.finding.pid, v.finding.kind_name(), v.count))
            .collect();
        assert_eq!(
            order,
            [
                (2, "so_error_reread", 1),
                (1, "io_after_failed_connect", 1),
                (1, "so_error_masked", 2)
            ]
        );
        assert_eq!(
            t.findings((now, SystemTime::now()), &Filter::default(), 1)
                .len(),
            1
        );
    }

    #[test]
    fn an_order_names_entries_read_as_they_stand_later() {
        let now = Instant::now();
        let mut t = Findings::new(2, Duration::from_secs(60));
        t.record(finding(1, FindingKind::SoErrorMasked, 1), 7, tally(1), now);
        t.record(finding(2, FindingKind::SoErrorReread, 2), 7, tally(1), now);
        let all = Filter::default();
        let wall = (now, SystemTime::now());
        let order = t.order(wall, &all, 10);
        assert_eq!(order.len(), 2);
        let masked = Filter {
            kind: Some(FindingKind::SoErrorMasked),
            ..Filter::default()
        };
        assert_eq!(t.order(wall, &masked, 10).len(), 1);
        assert_eq!(t.order(wall, &all, 1), order[..1]);
        // The entry of pid 1 counts more; pid 2, seen less recently, makes
        // room for pid 3.
        t.tally(
            1,
            FindingKind::SoErrorMasked,
            tally(5),
            SystemTime::UNIX_EPOCH,
            now + Duration::from_millis(1),
        );
        let later = now + Duration::from_millis(2);
        t.record(
            finding(3, FindingKind::SoErrorMasked, 3),
            7,
            tally(1),
            later,
        );
        let views: Vec<_> = order.iter().map(|k| t.view(k).map(|v| v.count)).collect();
        assert_eq!(views, [None, Some(5)], "pid 2 gone, pid 1 as it is now");
        // A pid that names another process now is not the entry ordered.
        let mut t = Findings::new(2, Duration::from_secs(60));
        t.record(finding(1, FindingKind::SoErrorMasked, 1), 7, tally(1), now);
        let order = t.order((now, SystemTime::now()), &Filter::default(), 10);
        t.record(finding(1, FindingKind::SoErrorMasked, 2), 8, tally(1), now);
        assert!(t.view(&order[0]).is_none());
    }

    /// Written a chunk at a time, the entries make the same JSON as at
    /// once; past `most` bytes an entry is left out whole.
    #[test]
    fn entries_are_written_in_chunks_within_a_bound() {
        let now = Instant::now();
        let mut t = Findings::new(100, Duration::from_secs(60));
        for pid in 1..=50 {
            t.record(
                finding(pid, FindingKind::SoErrorMasked, pid.into()),
                7,
                tally(1),
                now,
            );
        }
        let wall = (now, SystemTime::now());
        let order = t.order(wall, &Filter::default(), 100);
        let whole = serde_json::to_vec(&t.findings(wall, &Filter::default(), 100)).unwrap();
        let mut chunks = Vec::new();
        let (mut out, mut first, mut next) = (vec![b'['], true, 0);
        while next < order.len() {
            let (used, full) = t.write(&order[next..], &mut out, &mut first, (1000, usize::MAX));
            assert!(used > 0 && !full);
            next += used;
            chunks.push(std::mem::take(&mut out));
        }
        chunks.push(vec![b']']);
        assert!(chunks.len() > 5, "{} chunks", chunks.len());
        assert_eq!(chunks.concat(), whole);
        // A bound in the middle of the third entry: two are written.
        let entry = serde_json::to_vec(&t.view(&order[0]).unwrap())
            .unwrap()
            .len();
        let (mut out, mut first) = (Vec::new(), true);
        let most = 2 * entry + entry / 2;
        let (used, full) = t.write(&order, &mut out, &mut first, (usize::MAX, most));
        assert!(full);
        assert_eq!(used, 3);
        assert_eq!(out.len(), 2 * entry + 1, "two entries and their comma");
        let mut array = vec![b'['];
        array.extend(&out);
        array.push(b']');
        let parsed: serde_json::Value = serde_json::from_slice(&array).unwrap();
        assert_eq!(parsed.as_array().unwrap().len(), 2);
    }

    #[test]
    fn findings_json_shape() {
        let now = Instant::now();
        let mut t = Findings::new(10, Duration::from_secs(60));
        t.record(finding(7, FindingKind::SoErrorMasked, 5), 7, tally(3), now);
        let json =
            serde_json::to_value(t.findings((now, SystemTime::now()), &Filter::default(), 10))
                .unwrap();
        let f = &json[0];
        for key in [
            "kind",
            "severity",
            "pid",
            "tid",
            "comm",
            "exe",
            "exe_source",
            "cgroup",
            "container_id",
            "pod_uid",
            "container",
            "image",
            "pod",
            "namespace",
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
            "last_seen",
        ] {
            assert!(f.get(key).is_some(), "missing {key} in {f}");
        }
        assert_eq!(f["kind"], "so_error_masked");
        assert_eq!(f["count"], 3);
        assert_eq!(f["time"], "1970-01-01T00:00:05.000Z");
        assert_eq!(f["first_seen"], f["time"]);
    }

    #[test]
    fn filters_by_comm_pid_namespace_pod_kind_and_since() {
        let now = Instant::now();
        let wall = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let mut t = Findings::new(10, Duration::from_secs(60));
        let mut in_pod = finding(1, FindingKind::SoErrorMasked, 900);
        in_pod.comm = "nginx".into();
        in_pod.namespace = Some("shop".into());
        in_pod.pod = Some("web-0".into());
        t.record(in_pod, 7, tally(1), now);
        t.record(
            finding(2, FindingKind::SoErrorReread, 990),
            7,
            tally(1),
            now,
        );
        t.record(
            finding(3, FindingKind::SoErrorMasked, 999),
            7,
            tally(1),
            now,
        );
        let mut pids = |filter: Filter| -> Vec<u32> {
            t.findings((now, wall), &filter, 10)
                .iter()
                .map(|v| v.finding.pid)
                .collect()
        };
        let since = |s: &str| Some(Since::try_from(s.to_owned()).unwrap());
        for (filter, expected) in [
            (Filter::default(), &[3, 2, 1][..]),
            (
                Filter {
                    comm: Some("nginx".into()),
                    ..Filter::default()
                },
                &[1],
            ),
            (
                Filter {
                    comm: Some("client".into()),
                    ..Filter::default()
                },
                &[3, 2],
            ),
            (
                Filter {
                    pid: Some(2),
                    ..Filter::default()
                },
                &[2],
            ),
            (
                Filter {
                    namespace: Some("shop".into()),
                    ..Filter::default()
                },
                &[1],
            ),
            (
                Filter {
                    pod: Some("web-0".into()),
                    ..Filter::default()
                },
                &[1],
            ),
            (
                Filter {
                    pod: Some("web-1".into()),
                    ..Filter::default()
                },
                &[],
            ),
            (
                Filter {
                    kind: Some(FindingKind::SoErrorMasked),
                    ..Filter::default()
                },
                &[3, 1],
            ),
            // 20 s back from 1000 s: the findings at 990 s and 999 s.
            (
                Filter {
                    since: since("20s"),
                    ..Filter::default()
                },
                &[3, 2],
            ),
            (
                Filter {
                    since: since("1970-01-01T00:16:35Z"),
                    ..Filter::default()
                },
                &[3],
            ),
            (
                Filter {
                    comm: Some("client".into()),
                    kind: Some(FindingKind::SoErrorReread),
                    ..Filter::default()
                },
                &[2],
            ),
        ] {
            assert_eq!(pids(filter.clone()), expected, "{filter:?}");
        }
        assert!(Since::try_from("yesterday".to_owned()).is_err());
    }

    #[test]
    fn bounded_evicting_the_least_recently_seen() {
        let start = Instant::now();
        let mut t = Findings::new(3, Duration::from_secs(60));
        let evicted: Vec<bool> = (1..=5)
            .map(|pid| {
                let at = start + Duration::from_millis(pid.into());
                t.record(finding(pid, FindingKind::SoErrorReread, 0), 7, tally(1), at)
                    .evicted
            })
            .collect();
        assert_eq!(t.len(), 3);
        assert_eq!(evicted, [false, false, false, true, true]);
        let mut pids: Vec<_> = t
            .findings((start, SystemTime::now()), &Filter::default(), 10)
            .iter()
            .map(|v| v.finding.pid)
            .collect();
        pids.sort();
        assert_eq!(pids, [3, 4, 5]);
    }

    #[test]
    fn entries_expire_after_the_retention_window() {
        let start = Instant::now();
        let mut t = Findings::new(10, Duration::from_secs(60));
        t.record(
            finding(1, FindingKind::SoErrorMasked, 0),
            7,
            tally(1),
            start,
        );
        t.record(
            finding(2, FindingKind::SoErrorMasked, 0),
            7,
            tally(1),
            start + Duration::from_secs(30),
        );
        assert_eq!(t.flagged_by_kind(start + Duration::from_secs(59))[0], 2);
        assert_eq!(t.flagged_by_kind(start + Duration::from_secs(61))[0], 1);
        assert!(
            t.findings(
                (start + Duration::from_secs(91), SystemTime::now()),
                &Filter::default(),
                10
            )
            .is_empty()
        );
    }

    #[test]
    fn a_reused_pid_is_another_process() {
        let now = Instant::now();
        let mut t = Findings::new(10, Duration::from_secs(60));
        t.record(finding(1, FindingKind::SoErrorMasked, 0), 7, tally(1), now);
        t.record(finding(1, FindingKind::SoErrorReread, 1), 9, tally(1), now);
        assert_eq!(t.flagged_by_kind(now), [0, 1, 0]);
    }

    #[test]
    fn summaries_report_growth_once() {
        let now = Instant::now();
        let mut t = Findings::new(10, Duration::from_secs(60));
        t.record(finding(1, FindingKind::SoErrorReread, 1), 7, tally(1), now);
        assert!(
            t.summaries(now).is_empty(),
            "the first finding has its own line"
        );
        t.tally(
            1,
            FindingKind::SoErrorReread,
            tally(40),
            SystemTime::UNIX_EPOCH,
            now,
        );
        let s = t.summaries(now);
        assert_eq!((s.len(), s[0].0.count, s[0].1), (1, 40, 39));
        assert!(t.summaries(now).is_empty());
    }
}
