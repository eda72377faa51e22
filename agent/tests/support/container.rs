//! Real containers for the tests: `runc` (Debian's, installed by `cargo
//! xtask setup`) creates each one, with its own pid, mount, ipc and uts
//! namespaces and its cgroup at a path shaped like a Kubernetes runtime's,
//! from a bundle laid out where that runtime keeps bundles and annotated as
//! it annotates them. The runtime's state lives under a scratch host root
//! ([`HostRoot`]) that the agent is pointed at with `--containers.root`, so
//! nothing touches the machine's own /run/containerd or /var/lib.
//!
//! The network namespace is the host's: the clients connect to loopback
//! ports of the test. No `process.rlimits`: root here lacks
//! CAP_SYS_RESOURCE, and runc would fail to set them.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    sync::{Mutex, MutexGuard, OnceLock, PoisonError},
};

use serde_json::json;

/// A directory standing for the host's root, holding the runtimes' state.
pub struct HostRoot {
    pub path: PathBuf,
}

impl HostRoot {
    pub fn new(name: &str) -> Self {
        let path = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("host-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        Self { path }
    }

    /// The agent's flag that makes it read runtime state here.
    pub fn flag(&self) -> String {
        format!("--containers.root={}", self.path.display())
    }
}

impl Drop for HostRoot {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A Kubernetes pod: where containers of the tests belong.
#[derive(Clone, Debug)]
pub struct Pod {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

impl Pod {
    pub fn new(namespace: &str, name: &str) -> Self {
        let uid = std::fs::read_to_string("/proc/sys/kernel/random/uuid").unwrap();
        Self {
            namespace: namespace.into(),
            name: name.into(),
            uid: uid.trim().into(),
        }
    }
}

/// The runtime whose layout and annotations a container gets.
#[derive(Clone, Copy, Debug)]
pub enum Runtime {
    /// containerd's CRI plugin: bundle in the `k8s.io` namespace of the
    /// runtime v2 task directory.
    Containerd,
    /// CRI-O: bundle in containers/storage's `userdata` directory.
    CriO,
}

/// The kubelet's cgroup driver, which shapes the container's cgroup path.
#[derive(Clone, Copy, Debug)]
pub enum CgroupDriver {
    Cgroupfs,
    /// The path systemd would give the unit. runc runs without systemd
    /// here, so its cgroupfs driver creates that path as it is.
    Systemd,
}

/// What to run, and as which container of which pod.
pub struct Spec<'a> {
    pub runtime: Runtime,
    pub driver: CgroupDriver,
    pub pod: &'a Pod,
    /// The container's name in its pod.
    pub name: &'a str,
    pub image: &'a str,
    /// A statically linked program, the only file of the root filesystem.
    pub program: &'a Path,
    pub args: Vec<String>,
}

/// Containers of this test process alive, and the cgroup directories
/// they share (`/kubepods/besteffort`): those are removed once none is left.
struct Live {
    containers: usize,
    shared: BTreeSet<String>,
}

fn live() -> MutexGuard<'static, Live> {
    static LIVE: Mutex<Live> = Mutex::new(Live {
        containers: 0,
        shared: BTreeSet::new(),
    });
    LIVE.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A container created from a bundle in the runtime's layout; deleted, with
/// its cgroups and bundle, when dropped (also when a test fails).
pub struct Container {
    /// 64-hex id: the runc container id, as the CRI runtimes use it.
    pub id: String,
    /// Its cgroup path, as /proc/<pid>/cgroup shows it.
    pub cgroup: String,
    /// The part of `cgroup` shared with other containers.
    shared: String,
    runc_root: PathBuf,
    bundle: PathBuf,
    /// Directories to remove with it (the bundle, a separate root
    /// filesystem).
    dirs: Vec<PathBuf>,
}

impl Container {
    pub fn new(host: &HostRoot, spec: &Spec) -> Self {
        let id = random_hex(32);
        let uid_ = spec.pod.uid.replace('-', "_");
        let (shared, leaf) = match (spec.runtime, spec.driver) {
            (Runtime::Containerd, CgroupDriver::Cgroupfs) => (
                "/kubepods/besteffort".to_owned(),
                format!("pod{}/{id}", spec.pod.uid),
            ),
            (Runtime::CriO, CgroupDriver::Cgroupfs) => (
                "/kubepods/besteffort".to_owned(),
                format!("pod{}/crio-{id}", spec.pod.uid),
            ),
            (Runtime::Containerd, CgroupDriver::Systemd) => (
                "/kubepods.slice/kubepods-besteffort.slice".to_owned(),
                format!("kubepods-besteffort-pod{uid_}.slice/cri-containerd-{id}.scope"),
            ),
            (Runtime::CriO, CgroupDriver::Systemd) => (
                "/kubepods.slice/kubepods-besteffort.slice".to_owned(),
                format!("kubepods-besteffort-pod{uid_}.slice/crio-{id}.scope"),
            ),
        };
        let (bundle, rootfs, annotations) = match spec.runtime {
            Runtime::Containerd => {
                let bundle = host
                    .path
                    .join("run/containerd/io.containerd.runtime.v2.task/k8s.io")
                    .join(&id);
                let rootfs = bundle.join("rootfs");
                (bundle, rootfs, containerd_annotations(spec))
            }
            Runtime::CriO => {
                let bundle = host
                    .path
                    .join("run/containers/storage/overlay-containers")
                    .join(&id)
                    .join("userdata");
                // CRI-O's root filesystem is an overlay mount elsewhere.
                let rootfs = host
                    .path
                    .join("var/lib/containers/storage/overlay")
                    .join(&id)
                    .join("merged");
                (bundle, rootfs, crio_annotations(spec, &id))
            }
        };
        for dir in [&bundle, &rootfs] {
            std::fs::create_dir_all(dir).unwrap();
        }
        std::fs::copy(spec.program, rootfs.join("program")).unwrap();
        let args: Vec<&str> = std::iter::once("/program")
            .chain(spec.args.iter().map(String::as_str))
            .collect();
        let cgroup = format!("{shared}/{leaf}");
        let config = json!({
            "ociVersion": "1.0.2",
            "process": {
                "terminal": false,
                "user": {"uid": 0, "gid": 0},
                "args": args,
                "env": ["PATH=/"],
                "cwd": "/",
                "noNewPrivileges": true,
                "capabilities": {"bounding": [], "effective": [], "permitted": []},
            },
            "root": {"path": rootfs, "readonly": true},
            "hostname": spec.pod.name,
            // runc needs /proc inside to start the process.
            "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}],
            "annotations": annotations,
            "linux": {
                "cgroupsPath": cgroup,
                "namespaces": [
                    {"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"},
                ],
            },
        });
        std::fs::write(
            bundle.join("config.json"),
            serde_json::to_vec_pretty(&config).unwrap(),
        )
        .unwrap();
        let runc_root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("runc");
        let dirs = match spec.runtime {
            Runtime::Containerd => vec![bundle.clone()],
            // The container's directory holds userdata/; the overlay's holds merged/.
            Runtime::CriO => [&bundle, &rootfs]
                .iter()
                .map(|d| d.parent().unwrap().to_path_buf())
                .collect(),
        };
        let mut live = live();
        live.containers += 1;
        live.shared.insert(shared.clone());
        drop(live);
        Self {
            id,
            cgroup,
            shared,
            runc_root,
            bundle,
            dirs,
        }
    }

    /// Runs the container's process to its end (`runc run`); the container
    /// is kept, stopped, as runtimes keep it until they handle the exit.
    pub fn run(&self) -> Output {
        Command::new(runc())
            .arg("--root")
            .arg(&self.runc_root)
            .args(["run", "--keep", "--bundle"])
            .arg(&self.bundle)
            .arg(&self.id)
            .stdin(Stdio::null())
            .output()
            .expect("running runc (cargo xtask setup installs it)")
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new(runc())
            .arg("--root")
            .arg(&self.runc_root)
            .args(["delete", "--force", &self.id])
            .output();
        let mut live = live();
        live.containers -= 1;
        // runc removed the container's own cgroup; its pod's (unique to the
        // test) go here, and the shared ones once no container is left.
        let hierarchies = cgroup_mounts();
        remove_cgroups(&hierarchies, &self.cgroup, &self.shared);
        if live.containers == 0 {
            for shared in std::mem::take(&mut live.shared) {
                remove_cgroups(&hierarchies, &shared, "");
            }
        }
        drop(live);
        for dir in &self.dirs {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Removes cgroup `path` and its ancestors below `stop` in every hierarchy
/// (each only if empty).
fn remove_cgroups(hierarchies: &[PathBuf], path: &str, stop: &str) {
    let mut dir = path;
    while dir != stop && !dir.is_empty() {
        for hierarchy in hierarchies {
            let _ = std::fs::remove_dir(hierarchy.join(dir.trim_start_matches('/')));
        }
        dir = dir.rsplit_once('/').map_or("", |(parent, _)| parent);
    }
}

/// containerd's CRI plugin annotations (`DefaultCRIAnnotations`).
fn containerd_annotations(spec: &Spec) -> serde_json::Value {
    json!({
        "io.kubernetes.cri.container-type": "container",
        "io.kubernetes.cri.container-name": spec.name,
        "io.kubernetes.cri.image-name": spec.image,
        "io.kubernetes.cri.sandbox-id": random_hex(32),
        "io.kubernetes.cri.sandbox-name": spec.pod.name,
        "io.kubernetes.cri.sandbox-namespace": spec.pod.namespace,
        "io.kubernetes.cri.sandbox-uid": spec.pod.uid,
    })
}

/// CRI-O's annotations: its own keys and the kubelet's labels.
fn crio_annotations(spec: &Spec, id: &str) -> serde_json::Value {
    json!({
        "io.container.manager": "cri-o",
        "io.kubernetes.cri-o.ContainerID": id,
        "io.kubernetes.cri-o.ContainerType": "container",
        "io.kubernetes.cri-o.Image": format!("sha256:{}", random_hex(32)),
        "io.kubernetes.cri-o.ImageName": spec.image,
        "io.kubernetes.cri-o.SandboxID": random_hex(32),
        "io.kubernetes.container.name": spec.name,
        "io.kubernetes.pod.name": spec.pod.name,
        "io.kubernetes.pod.namespace": spec.pod.namespace,
        "io.kubernetes.pod.uid": spec.pod.uid,
    })
}

fn random_hex(bytes: usize) -> String {
    use std::io::Read as _;
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut buf)
        .unwrap();
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// Where each cgroup hierarchy is mounted (v1 controllers and v2 on
/// hybrid hosts; runc creates the container's path in every one).
fn cgroup_mounts() -> Vec<PathBuf> {
    procfs::process::Process::myself()
        .and_then(|me| me.mountinfo())
        .unwrap()
        .into_iter()
        .filter(|m| m.fs_type == "cgroup" || m.fs_type == "cgroup2")
        .map(|m| m.mount_point)
        .collect()
}

/// runc, checked once.
fn runc() -> &'static str {
    static CHECKED: OnceLock<()> = OnceLock::new();
    CHECKED.get_or_init(|| {
        let ok = Command::new("runc")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(ok, "runc is missing: run `cargo xtask setup`");
    });
    "runc"
}

/// The SO_ERROR client, linked statically so that it is the only file its
/// container needs; built once per test binary.
pub fn so_error_client() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/so_error_client.c");
        let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("so_error_client");
        let status = Command::new("gcc")
            .args(["-static", "-O1", "-Wall", "-o"])
            .arg(&out)
            .arg(&src)
            .status()
            .expect("running gcc (cargo xtask setup installs gcc and libc6-dev)");
        assert!(status.success(), "compiling {}", src.display());
        out
    })
}
