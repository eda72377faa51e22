//! The kernel's counters in the metrics. `COUNTERS`, `REMOTES` and `HEALTH`
//! are read at every scrape and on a timer, the growth of each key is added
//! to the Prometheus counters, and keys that stopped growing are deleted
//! once counted, so the maps hold what is active and never stay full: after
//! [`IDLE`], or after one quiet sample while a map is half full.
//!
//! A key is taken (read and deleted in one step) where the kernel can
//! (Linux ≥ 5.14), so an increment landing since its last read is counted
//! too; on older kernels it would be lost (docs/design.md §5).

use std::{
    collections::HashMap,
    hash::Hash,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use aya::{
    Pod,
    maps::{MapData, PerCpuArray},
};
use sockerr_common::{
    Counter, CounterKey, FindingKind, HEALTH_SLOTS, Health, OTHER_COMM, OTHER_REMOTE, RemoteKey,
    counter_entries, remote_entries,
};
use strum::IntoEnumIterator as _;

use super::metrics::{ABORTED, CommCount, Metrics, PodLabels};
use crate::{
    decode,
    kernel::{Counted, CounterMap, Taken},
    pipeline::{cgroups::CgroupNames, containers::Containers},
};

/// A key that has not grown for this long is counted and deleted.
const IDLE: Duration = Duration::from_secs(600);

struct Seen {
    total: u64,
    changed: Instant,
}

/// Running totals of one per-CPU counter map's keys: what each grew by
/// since the last read, and which are quiet enough to delete.
struct Totals<K> {
    capacity: usize,
    seen: HashMap<K, Seen>,
}

impl<K: Copy + Eq + Hash> Totals<K> {
    fn new(capacity: u32) -> Self {
        Self {
            capacity: capacity as usize,
            seen: HashMap::new(),
        }
    }

    /// Given every key's total now: (key, growth) of the keys that grew,
    /// and the keys to delete: quiet for [`IDLE`], or since the previous
    /// read while the map is half full. Keys gone from the map are dropped.
    fn update(&mut self, read: &[(K, u64)], now: Instant) -> (Vec<(K, u64)>, Vec<K>) {
        let crowded = read.len() * 2 >= self.capacity;
        let (mut grew, mut quiet) = (Vec::new(), Vec::new());
        for &(key, total) in read {
            let seen = self.seen.entry(key).or_insert(Seen {
                total: 0,
                changed: now,
            });
            if total > seen.total {
                grew.push((key, total - seen.total));
                *seen = Seen {
                    total,
                    changed: now,
                };
            } else if now.duration_since(seen.changed) >= IDLE || (crowded && seen.changed < now) {
                quiet.push(key);
            }
        }
        if self.seen.len() > read.len() {
            let present: std::collections::HashSet<&K> = read.iter().map(|(k, _)| k).collect();
            self.seen.retain(|k, _| present.contains(k));
        }
        (grew, quiet)
    }

    /// `key` was deleted from the map: it starts again from 0. Returns the
    /// total counted for it.
    fn deleted(&mut self, key: &K) -> u64 {
        self.seen.remove(key).map_or(0, |s| s.total)
    }
}

/// What sampling needs of a counter map.
trait Drain<K> {
    /// Every key, with its total over CPUs.
    fn totals(&self) -> Result<Vec<(K, u64)>>;
    fn take(&mut self, key: &K) -> Taken;
}

impl<K: Pod> Drain<K> for CounterMap<K> {
    fn totals(&self) -> Result<Vec<(K, u64)>> {
        CounterMap::totals(self)
    }

    fn take(&mut self, key: &K) -> Taken {
        CounterMap::take(self, key)
    }
}

/// A per-CPU counter map and its totals.
struct Tracked<K, M> {
    map: M,
    totals: Totals<K>,
}

impl<K: Copy + Eq + Hash, M: Drain<K>> Tracked<K, M> {
    fn new(map: M, capacity: u32) -> Self {
        Self {
            map,
            totals: Totals::new(capacity),
        }
    }

    /// Calls `grew(key, by)` for each key that grew; takes the quiet ones
    /// out, counting what they grew by since they were read. Returns the
    /// keys left.
    fn sample(&mut self, now: Instant, mut grew: impl FnMut(&K, u64)) -> Result<usize> {
        let read = self.map.totals()?;
        let (growth, quiet) = self.totals.update(&read, now);
        for (key, by) in &growth {
            grew(key, *by);
        }
        let mut left = read.len();
        for key in quiet {
            let taken = self.map.take(&key);
            if matches!(taken, Taken::Gone | Taken::Kept) {
                continue;
            }
            let counted = self.totals.deleted(&key);
            if let Taken::Total(total) = taken
                && total > counted
            {
                grew(&key, total - counted);
            }
            left -= 1;
        }
        Ok(left)
    }
}

/// The pod labels of a cgroup id: its path, then the container runtime's
/// names for the container in it.
pub struct Pods {
    pub cgroups: CgroupNames,
    pub containers: Containers,
}

impl Pods {
    /// `now`: when the sample began, before the counters naming
    /// `cgroup_id` were read.
    fn labels(&self, cgroup_id: u64, now: Instant) -> PodLabels {
        let Some(path) = self.cgroups.name(cgroup_id, now) else {
            return Default::default();
        };
        let c = self.containers.resolve(&path);
        [&c.namespace, &c.pod, &c.name].map(|l| l.clone().unwrap_or_default())
    }
}

pub struct Sampler {
    counters: Tracked<CounterKey, CounterMap<CounterKey>>,
    /// With pod labels on the metrics.
    pods: Option<Pods>,
    remotes: Tracked<RemoteKey, CounterMap<RemoteKey>>,
    health: PerCpuArray<MapData, u64>,
    seen_health: [u64; HEALTH_SLOTS as usize],
}

impl Sampler {
    pub fn new(
        counters: CounterMap<CounterKey>,
        remotes: CounterMap<RemoteKey>,
        health: PerCpuArray<MapData, u64>,
        counted: &Counted,
        pods: Option<Pods>,
    ) -> Self {
        Self {
            counters: Tracked::new(counters, counter_entries(counted.max_comms)),
            pods,
            remotes: Tracked::new(remotes, remote_entries(counted.max_remotes)),
            health,
            seen_health: Default::default(),
        }
    }

    /// Adds what the kernel counted since the last call to `metrics`.
    pub fn sample(&mut self, metrics: &Metrics, now: Instant) -> Result<()> {
        let pods = &self.pods;
        // Many keys share a cgroup (one per comm, counter and errno): its
        // labels are looked up once per sample.
        let mut labelled: HashMap<u64, PodLabels> = HashMap::new();
        let counters = self.counters.sample(now, |key, n| {
            if let Some(what) = comm_count(key) {
                let comm = if key.comm == OTHER_COMM {
                    metrics.comm_overflow()
                } else {
                    metrics.comm_label(decode::label_value(&key.comm))
                };
                let pod = pods.as_ref().map(|pods| {
                    labelled
                        .entry(key.cgroup_id)
                        .or_insert_with(|| metrics.pod_label(pods.labels(key.cgroup_id, now), now))
                });
                metrics.comm_count(&comm, pod.map(|p| &*p), &what, n);
            }
        })?;
        metrics.map_usage("counters", counters, self.counters.totals.capacity);
        metrics.expire_pods(now);
        let remotes = self.remotes.sample(now, |key, n| {
            let remote = if key.remote == OTHER_REMOTE {
                metrics.remote_overflow()
            } else {
                metrics.remote_label(
                    decode::endpoint(&key.remote)
                        .map_or_else(|| "unknown".into(), |a| a.to_string()),
                )
            };
            let reason = if key.aborted != 0 {
                ABORTED.to_owned()
            } else {
                decode::errno_name(key.errno)
            };
            metrics.remote_count(&remote, &reason, n);
        })?;
        metrics.map_usage("remotes", remotes, self.remotes.totals.capacity);
        for slot in Health::iter() {
            let total: u64 = self
                .health
                .get(&(slot as u32), 0)
                .context("reading the HEALTH map")?
                .iter()
                .sum();
            let seen = &mut self.seen_health[slot as usize];
            let grew = total.saturating_sub(*seen);
            *seen = total;
            match slot {
                Health::RecordsSent => metrics.records(grew, 0),
                Health::RecordsLost => metrics.records(0, grew),
                drop => metrics.kernel_drops(drop.into(), grew),
            }
        }
        Ok(())
    }
}

fn comm_count(key: &CounterKey) -> Option<CommCount> {
    Some(match Counter::from_repr(key.counter)? {
        Counter::Established => CommCount::Established,
        Counter::Failed => CommCount::Failed {
            errno: decode::errno_name(key.detail.into()),
        },
        Counter::Aborted => CommCount::Aborted,
        Counter::ReadPending => CommCount::Read { result: "pending" },
        Counter::ReadError => CommCount::Read { result: "error" },
        Counter::ReadZero => CommCount::Read { result: "zero" },
        Counter::Finding => CommCount::Finding(FindingKind::from_repr(key.detail as u8)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(counter: Counter, detail: u16) -> CounterKey {
        let mut comm = [0u8; 16];
        comm[..4].copy_from_slice(b"curl");
        CounterKey {
            comm,
            cgroup_id: 0,
            detail,
            counter: counter as u8,
            _pad: [0; 5],
        }
    }

    #[test]
    fn growth_is_counted_once_and_quiet_keys_go() {
        let t0 = Instant::now();
        let mut totals = Totals::new(100);
        let (grew, quiet) = totals.update(&[(1u8, 5), (2, 1)], t0);
        assert_eq!((grew, quiet), (vec![(1, 5), (2, 1)], vec![]));
        let t1 = t0 + Duration::from_secs(5);
        let (grew, quiet) = totals.update(&[(1, 9), (2, 1)], t1);
        assert_eq!((grew, quiet), (vec![(1, 4)], vec![]), "quiet, not idle yet");
        let (grew, quiet) = totals.update(&[(1, 9), (2, 1)], t0 + IDLE);
        assert_eq!((grew, quiet), (vec![], vec![2]));
        totals.deleted(&2);
        // Deleted, then counted again from 0 by the kernel.
        let (grew, _) = totals.update(&[(1, 9), (2, 3)], t0 + IDLE);
        assert_eq!(grew, vec![(2, 3)]);
    }

    /// A counter map in memory; `take` answers what the test says.
    struct Fake {
        keys: Vec<(u8, u64)>,
        taken: Vec<Taken>,
    }

    impl Drain<u8> for Fake {
        fn totals(&self) -> Result<Vec<(u8, u64)>> {
            Ok(self.keys.clone())
        }

        fn take(&mut self, key: &u8) -> Taken {
            self.keys.retain(|(k, _)| k != key);
            self.taken.remove(0)
        }
    }

    #[test]
    fn a_taken_key_counts_what_it_grew_by_since_its_last_read() {
        let t0 = Instant::now();
        let fake = Fake {
            keys: vec![(1, 5), (2, 1), (3, 1), (4, 1)],
            // Key 2 grew by 2 after its last read; 3 is deleted where the
            // kernel cannot say its total; 4 could not be deleted.
            taken: vec![Taken::Total(3), Taken::Deleted, Taken::Kept],
        };
        let mut tracked = Tracked::new(fake, 100);
        let mut counted = Vec::new();
        assert_eq!(
            tracked.sample(t0, |k, by| counted.push((*k, by))).unwrap(),
            4
        );
        assert_eq!(counted, [(1, 5), (2, 1), (3, 1), (4, 1)]);
        counted.clear();
        tracked.map.keys = vec![(1, 6), (2, 1), (3, 1), (4, 1)];
        let left = tracked
            .sample(t0 + IDLE, |k, by| counted.push((*k, by)))
            .unwrap();
        assert_eq!(counted, [(1, 1), (2, 2)]);
        assert_eq!(left, 2, "1 grew, 4 was kept");
    }

    #[test]
    fn a_half_full_map_lets_go_of_keys_quiet_since_the_last_read() {
        let t0 = Instant::now();
        let mut totals = Totals::new(4);
        totals.update(&[(1u8, 1), (2, 1)], t0);
        let t1 = t0 + Duration::from_secs(5);
        let (grew, quiet) = totals.update(&[(1, 2), (2, 1)], t1);
        assert_eq!((grew, quiet), (vec![(1, 1)], vec![2]));
        // Keys that left the map are forgotten.
        totals.update(&[], t1);
        assert!(totals.seen.is_empty());
    }

    #[test]
    fn every_counter_is_named() {
        assert_eq!(
            comm_count(&key(Counter::Failed, 99)),
            Some(CommCount::Failed {
                errno: "EADDRNOTAVAIL".into()
            })
        );
        assert_eq!(
            comm_count(&key(
                Counter::Finding,
                FindingKind::IoAfterFailedConnect as u16
            )),
            Some(CommCount::Finding(FindingKind::IoAfterFailedConnect))
        );
        assert_eq!(comm_count(&key(Counter::Finding, 0)), None);
        assert_eq!(
            comm_count(&key(Counter::ReadZero, 0)),
            Some(CommCount::Read { result: "zero" })
        );
        let mut unknown = key(Counter::Aborted, 0);
        unknown.counter = 200;
        assert_eq!(comm_count(&unknown), None);
    }
}
