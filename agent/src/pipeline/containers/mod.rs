//! A process's cgroup path in; its container and pod, named from the runtime's state, out.
//!
//! The container, and for Kubernetes the pod, a process runs in: ids from
//! its cgroup path ([`cgroup`]), then names from the state the container
//! runtime keeps on the node, read-only and without cluster credentials:
//! the OCI bundles of containerd ([`containerd`]) and CRI-O ([`crio`]),
//! Docker's container records ([`docker`]) and Podman's container list
//! ([`podman`]). Each container is looked up once (when its id first
//! appears) and kept, within a bound.

mod cgroup;
mod containerd;
mod crio;
mod docker;
mod podman;

use std::{
    collections::{HashMap, HashSet},
    io::Read as _,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde::{Deserialize, de::DeserializeOwned};

use crate::locks::lock;

/// The container a process runs in, as far as the node tells.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Container {
    /// 64-hex container id (docker, containerd, cri-o, podman).
    pub id: Option<String>,
    /// Kubernetes pod UID, dashed form.
    pub pod_uid: Option<String>,
    /// The container's name: in its pod for Kubernetes, else the runtime's.
    pub name: Option<String>,
    /// The image as the runtime recorded it, e.g. `docker.io/library/nginx:1.22`.
    pub image: Option<String>,
    /// Kubernetes pod name and namespace.
    pub pod: Option<String>,
    pub namespace: Option<String>,
}

/// What one runtime recorded about a container.
#[derive(Debug, Default, PartialEq, Eq)]
struct Metadata {
    name: Option<String>,
    image: Option<String>,
    pod: Option<String>,
    namespace: Option<String>,
    pod_uid: Option<String>,
    /// A pod's sandbox ("pause") container rather than one of its own.
    sandbox: bool,
}

impl Metadata {
    /// Whether this says anything a finding lacks: a runtime that keeps a
    /// bundle for every container (containerd also runs Docker's) may know
    /// nothing about one that another runtime names.
    fn names_anything(&self) -> bool {
        self.name.is_some() || self.pod.is_some() || self.image.is_some()
    }

    /// From the labels the kubelet gives every container it creates
    /// (`k8s.io/kubelet/pkg/types/labels.go`), which CRI-O copies into the
    /// OCI annotations and cri-dockerd (dockershim) into Docker labels.
    fn from_kubelet_labels(labels: &HashMap<String, String>) -> Self {
        let name = value(labels, "io.kubernetes.container.name");
        Self {
            // The kubelet names the sandbox container "POD".
            sandbox: name.as_deref() == Some("POD"),
            name,
            pod: value(labels, "io.kubernetes.pod.name"),
            namespace: value(labels, "io.kubernetes.pod.namespace"),
            pod_uid: value(labels, "io.kubernetes.pod.uid"),
            image: None,
        }
    }
}

/// A non-empty value of a map of labels or annotations.
fn value(map: &HashMap<String, String>, key: &str) -> Option<String> {
    map.get(key).filter(|v| !v.is_empty()).cloned()
}

/// An OCI runtime bundle's `config.json`, as far as it is read here.
#[derive(Deserialize)]
struct Spec {
    #[serde(default)]
    annotations: HashMap<String, String>,
}

/// A lookup in one runtime's state: `Ok(None)` when the runtime has no
/// record of the container (or is not installed); `Err` says why a record
/// that is there could not be read.
type Lookup = Result<Option<Metadata>, String>;

/// A runtime layout: where it keeps state (relative to the host root) and
/// how to find a container there.
struct Runtime {
    name: &'static str,
    dirs: &'static [&'static str],
    lookup: fn(&Path, &str) -> Lookup,
}

/// The runtimes' default state directories, in the order they are asked.
const RUNTIMES: &[Runtime] = &[
    Runtime {
        name: "containerd",
        // containerd, and the one k3s and RKE2 embed.
        dirs: &[
            "run/containerd/io.containerd.runtime.v2.task",
            "run/k3s/containerd/io.containerd.runtime.v2.task",
        ],
        lookup: containerd::lookup,
    },
    Runtime {
        name: "cri-o",
        // containers/storage's run root (the bundle CRI-O hands to the OCI
        // runtime), then its graph root (a copy that survives reboots).
        dirs: &[
            "run/containers/storage/overlay-containers",
            "var/lib/containers/storage/overlay-containers",
        ],
        lookup: crio::lookup,
    },
    Runtime {
        name: "docker",
        dirs: &["var/lib/docker/containers"],
        lookup: docker::lookup,
    },
    Runtime {
        name: "podman",
        dirs: &["var/lib/containers/storage/overlay-containers"],
        lookup: podman::lookup,
    },
];

/// Containers remembered; past this the least recently used are forgotten.
const MAX_CONTAINERS: usize = 4096;
/// A container no runtime named is looked up again after this long (its
/// state may have been unreadable for a moment).
const RETRY_UNNAMED: Duration = Duration::from_secs(30);
/// Runtime records are small; this bounds what a corrupt one can cost.
const MAX_RECORD_BYTES: u64 = 16 << 20;

/// Resolves cgroup paths to containers, caching each container by id.
/// Cloning shares the cache, so the pipeline and the metrics can both ask.
#[derive(Clone)]
pub struct Containers {
    inner: Arc<Mutex<Cache>>,
}

struct Cache {
    root: PathBuf,
    known: HashMap<String, Known>,
    /// Runtimes whose unreadable state was already reported.
    warned: HashSet<&'static str>,
    /// Whether a container no runtime knew was already reported.
    unnamed_reported: bool,
}

struct Known {
    container: Arc<Container>,
    used: Instant,
    /// When an unnamed container may be looked up again.
    retry: Option<Instant>,
}

impl Containers {
    /// Reads runtime state under `root` (`/` on the host; e.g. `/host` in a
    /// container that mounts the host's runtime directories there). Says
    /// once which runtimes' state is there.
    pub fn new(root: PathBuf) -> Self {
        let (mut found, mut not_found) = (Vec::new(), Vec::new());
        for runtime in RUNTIMES {
            for dir in runtime.dirs.iter().map(|d| root.join(d)) {
                let entry = format!("{} {}", runtime.name, dir.display());
                if dir.is_dir() {
                    found.push(entry);
                } else {
                    not_found.push(entry);
                }
            }
        }
        if found.is_empty() {
            tracing::info!(
                looked_in = not_found.join(", "),
                "no container runtime state found: findings of processes in \
                 containers carry their cgroup ids only"
            );
        } else {
            tracing::info!(
                from = found.join(", "),
                "container names and pods come from the runtime state found"
            );
        }
        Self {
            inner: Arc::new(Mutex::new(Cache {
                root,
                known: HashMap::new(),
                warned: HashSet::new(),
                unnamed_reported: false,
            })),
        }
    }

    /// The container of a process in cgroup `path` (cgroup v2); a process
    /// outside any container gets an empty one. Cached by container id.
    pub fn resolve(&self, path: &str) -> Arc<Container> {
        let ids = cgroup::ids(path);
        let Some(id) = ids.id.clone() else {
            return Arc::new(ids);
        };
        let now = Instant::now();
        let mut cache = lock(&self.inner);
        if let Some(known) = cache.known.get_mut(&id)
            && known.retry.is_none_or(|at| now < at)
        {
            known.used = now;
            return known.container.clone();
        }
        let container = Arc::new(cache.look_up(ids));
        let retry = container.name.is_none() && container.pod.is_none();
        if cache.known.len() >= MAX_CONTAINERS {
            forget_older_half(&mut cache.known, |k| k.used);
        }
        cache.known.insert(
            id,
            Known {
                container: container.clone(),
                used: now,
                retry: retry.then(|| now + RETRY_UNNAMED),
            },
        );
        container
    }
}

impl Cache {
    /// Names the container whose ids (from its cgroup path) are `ids`.
    fn look_up(&mut self, ids: Container) -> Container {
        let id = ids.id.as_deref().unwrap_or_default();
        let mut found = None;
        'runtimes: for runtime in RUNTIMES {
            for dir in runtime.dirs {
                match (runtime.lookup)(&self.root.join(dir), id) {
                    Ok(Some(m)) if m.names_anything() => {
                        found = Some(m);
                        break 'runtimes;
                    }
                    Ok(_) => {}
                    Err(why) => {
                        if self.warned.insert(runtime.name) {
                            tracing::warn!(
                                runtime = runtime.name,
                                "cannot read container state ({why}); its containers are \
                                 named by their cgroup ids only"
                            );
                        }
                    }
                }
            }
        }
        let Some(m) = found else {
            if !std::mem::replace(&mut self.unnamed_reported, true) {
                tracing::info!(
                    container_id = id,
                    root = %self.root.display(),
                    "no runtime state names this container (reported once): findings \
                     carry its cgroup ids only"
                );
            }
            return ids;
        };
        // A sandbox holds the pod's namespaces; it is no container of the
        // pod's own, so it names the pod only.
        let own = !m.sandbox;
        Container {
            pod_uid: ids.pod_uid.or(m.pod_uid),
            name: m.name.filter(|_| own),
            image: m.image.filter(|_| own),
            pod: m.pod,
            namespace: m.namespace,
            ..ids
        }
    }
}

/// Forgets the older half of `map` by last use (`used`): the entries last
/// used at or before the median time.
pub(crate) fn forget_older_half<K, V>(map: &mut HashMap<K, V>, used: impl Fn(&V) -> Instant) {
    let mut by_age: Vec<Instant> = map.values().map(&used).collect();
    if by_age.is_empty() {
        return;
    }
    let middle = by_age.len() / 2;
    let cutoff = *by_age.select_nth_unstable(middle).1;
    map.retain(|_, v| used(v) > cutoff);
}

/// A JSON record of a runtime: `Ok(None)` when there is none at `path`.
fn read_json<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, String> {
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if is_absent(&e) => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let mut text = Vec::new();
    file.take(MAX_RECORD_BYTES + 1)
        .read_to_end(&mut text)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if text.len() as u64 > MAX_RECORD_BYTES {
        return Err(format!(
            "{}: larger than {MAX_RECORD_BYTES} bytes",
            path.display()
        ));
    }
    serde_json::from_slice(&text)
        .map(Some)
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// Nothing there: the runtime is not installed, or has no such container
/// (it may have been removed since).
fn is_absent(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
    )
}

#[cfg(test)]
mod tests;
