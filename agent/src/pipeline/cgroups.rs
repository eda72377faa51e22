//! cgroup v2 ids to paths. The kernel names a process's cgroup by id; the
//! id of a cgroup v2 is its directory's inode number, so the tree is walked
//! when an unknown id shows up. cgroup ids are 64-bit and never reused, so
//! a name stays true after its cgroup is gone: names are kept (bounded) for
//! whoever asks later, e.g. the metrics after a short-lived container.

use std::{
    collections::{HashMap, HashSet},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use crate::locks::lock;

/// How often the cgroup tree may be walked again for an id a walk missed.
const RESCAN_EVERY: Duration = Duration::from_secs(1);
/// Names and missed ids kept; past this they start over.
const MAX_KEPT: usize = 65536;

/// cgroup v2 ids to paths, shared by its clones (the pipeline names the
/// cgroups of findings while they exist; the metrics reuse those names).
#[derive(Clone)]
pub struct CgroupNames(Arc<Mutex<Names>>);

struct Names {
    root: Option<PathBuf>,
    names: HashMap<u64, String>,
    /// When the latest walk began.
    scanned: Option<Instant>,
    /// When the latest walk whose names are in `names` began.
    walked: Option<Instant>,
    /// Ids a walk did not find: their cgroups were gone already.
    missed: HashSet<u64>,
}

impl CgroupNames {
    pub fn new(root: Option<PathBuf>) -> Self {
        Self(Arc::new(Mutex::new(Names {
            root,
            names: HashMap::new(),
            scanned: None,
            walked: None,
            missed: HashSet::new(),
        })))
    }

    /// `id` is the cgroup at `path` (as a live process's /proc showed it).
    pub fn remember(&self, id: u64, path: &str) {
        if id == 0 {
            return;
        }
        let mut n = lock(&self.0);
        if n.names.len() >= MAX_KEPT {
            n.names.clear();
        }
        n.names.insert(id, path.to_owned());
    }

    /// The path (below the cgroup v2 root) of the cgroup with id `id`,
    /// which was in use at `asked` (e.g. when the batch of records naming
    /// it began to be read). The tree is walked without holding the names,
    /// and not again for an id a walk begun since `asked` did not find.
    pub fn name(&self, id: u64, asked: Instant) -> Option<String> {
        if id == 0 {
            return None;
        }
        let mut n = lock(&self.0);
        if let Some(name) = n.names.get(&id) {
            return Some(name.clone());
        }
        let root = n.root.clone()?;
        // An id never looked for may be a cgroup made since the last walk
        // (a container that started and exited in between): walk at once.
        // One the last walk missed is gone: walking again soon is wasted.
        if n.missed.contains(&id) && n.scanned.is_some_and(|t| t.elapsed() < RESCAN_EVERY) {
            return None;
        }
        // A walk begun after the id was in use would have found it: its
        // cgroup is gone (e.g. one of many exited containers in a batch).
        if n.walked.is_some_and(|t| t >= asked) {
            n.miss(id);
            return None;
        }
        let started = Instant::now();
        n.scanned = Some(started);
        drop(n);
        let mut found = HashMap::new();
        walk(&root, &root, &mut found);
        let name = found.get(&id).cloned();
        let mut n = lock(&self.0);
        if n.names.len() >= MAX_KEPT {
            n.names.clear();
        }
        n.names.extend(found);
        n.walked = n.walked.max(Some(started));
        if name.is_none() {
            n.miss(id);
        }
        name
    }
}

impl Names {
    fn miss(&mut self, id: u64) {
        if self.missed.len() >= MAX_KEPT {
            self.missed.clear();
        }
        self.missed.insert(id);
    }
}

fn walk(root: &Path, dir: &Path, names: &mut HashMap<u64, String>) {
    use std::os::unix::fs::MetadataExt as _;
    let Ok(md) = std::fs::metadata(dir) else {
        return;
    };
    let relative = dir.strip_prefix(root).unwrap_or(dir);
    names.insert(md.ino(), format!("/{}", relative.display()));
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            walk(root, &entry.path(), names);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt as _;

    use super::*;

    #[test]
    fn a_cgroup_made_since_the_last_walk_is_named_at_once() {
        // Any directory tree stands for the cgroup tree: ids are inodes.
        let root = std::env::temp_dir().join(format!("sockerr-cgroups-{}", std::process::id()));
        let ino = |dir: &str| {
            std::fs::create_dir_all(root.join(dir)).unwrap();
            std::fs::metadata(root.join(dir)).unwrap().ino()
        };
        let names = CgroupNames::new(Some(root.clone()));
        let first = ino("kubepods/pod1/a");
        assert_eq!(
            names.name(first, Instant::now()).as_deref(),
            Some("/kubepods/pod1/a")
        );
        let second = ino("kubepods/pod2/b");
        assert_eq!(
            names.name(second, Instant::now()).as_deref(),
            Some("/kubepods/pod2/b")
        );
        // An id no walk finds is not walked for again at once.
        assert_eq!(names.name(u64::MAX, Instant::now()), None);
        let walked = names.0.lock().unwrap().scanned;
        assert_eq!(names.name(u64::MAX, Instant::now()), None);
        assert_eq!(names.0.lock().unwrap().scanned, walked);
        // A cgroup gone since keeps its name.
        std::fs::remove_dir(root.join("kubepods/pod1/a")).unwrap();
        assert_eq!(
            names.name(first, Instant::now()).as_deref(),
            Some("/kubepods/pod1/a")
        );
        std::fs::remove_dir_all(root).unwrap();
    }
}
