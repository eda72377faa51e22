//! Each runtime's state laid out under a scratch host root as the runtime
//! writes it (fixtures in `tests/fixtures/containers/`), resolved from the
//! cgroup path the runtime gives the container.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, atomic::AtomicU32},
};

use super::*;

/// A scratch directory standing for the host's root.
struct HostRoot(PathBuf);

impl HostRoot {
    fn new() -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("sockerr-containers-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    /// Writes `fixture` (a file of tests/fixtures/containers) at `path`.
    fn put(&self, path: &str, fixture: &str) -> &Self {
        let text = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/containers")
                .join(fixture),
        )
        .unwrap();
        self.write(path, &text)
    }

    fn write(&self, path: &str, text: &str) -> &Self {
        let path = self.0.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
        self
    }

    fn containers(&self) -> Containers {
        Containers::new(self.0.clone())
    }
}

impl Drop for HostRoot {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const CONTAINERD_APP: &str = "90f4ab8492725c41e9516a37a4fab64932e4afad611fb05b3aacafe8f41fdee1";
const CONTAINERD_SANDBOX: &str = "6b22239c6f04cb3d01f0bd9a9c9aeab233047b0ddc5fce567589d1a8d4507135";
const WEB_0_UID: &str = "39a328fb-fd7e-416d-a003-073e2ba2aa4e";
const CRIO_APP: &str = "b760e2a8a2c99ba57509f22118a89bce65e5a6063fc81629ef4c4c8c6520b92b";
const CRIO_SANDBOX: &str = "08cf380b902893dc1090ecbcdaa21e4fc9090d50fc25843987f1afde52e8ee0a";
const API_UID: &str = "53ea40c2-ff76-4180-a9c8-3432678f6b79";
const DOCKER_RUN: &str = "7fd608041473a8b04b6083604a25e72db91e312e06940f29a6978b09cd8ce562";
const DOCKERSHIM: &str = "a98b037cd4de26a3af9c5b45f9fd7b0722ab633d2929b4e81195ed8579196662";
const COREDNS_UID: &str = "533abb92-ba32-43e8-a567-db45fbf1e72e";
const PODMAN: &str = "7cf28314c100bc3f39cb10fed80be1764460b92d87bc06c264b197e6bcc838ec";

fn containerd_bundle(id: &str) -> String {
    format!("run/containerd/io.containerd.runtime.v2.task/k8s.io/{id}/config.json")
}

fn crio_userdata(id: &str) -> String {
    format!("run/containers/storage/overlay-containers/{id}/userdata/config.json")
}

fn systemd_pod_slice(qos: &str, uid: &str) -> String {
    let uid_ = uid.replace('-', "_");
    format!("/kubepods.slice/kubepods-{qos}.slice/kubepods-{qos}-pod{uid_}.slice")
}

fn web_0() -> Container {
    Container {
        id: Some(CONTAINERD_APP.into()),
        pod_uid: Some(WEB_0_UID.into()),
        name: Some("nginx".into()),
        image: Some("docker.io/library/nginx:1.22".into()),
        pod: Some("web-0".into()),
        namespace: Some("shop".into()),
    }
}

fn api() -> Container {
    Container {
        id: Some(CRIO_APP.into()),
        pod_uid: Some(API_UID.into()),
        name: Some("api".into()),
        image: Some("quay.io/acme/api:2.4.1".into()),
        pod: Some("api-7d9f8b6c5d-x2kqp".into()),
        namespace: Some("payments".into()),
    }
}

#[test]
fn containerd_cri_containers_with_either_cgroup_driver() {
    let root = HostRoot::new();
    root.put(
        &containerd_bundle(CONTAINERD_APP),
        "containerd-container.json",
    );
    let containers = root.containers();
    let systemd = format!(
        "{}/cri-containerd-{CONTAINERD_APP}.scope",
        systemd_pod_slice("burstable", WEB_0_UID)
    );
    assert_eq!(*containers.resolve(&systemd), web_0());
    let cgroupfs = format!("/kubepods/burstable/pod{WEB_0_UID}/{CONTAINERD_APP}");
    assert_eq!(*containers.resolve(&cgroupfs), web_0());
}

/// The id of a real container, in a cgroup no runtime made: whoever made
/// it does not pass for that container or its pod, though the runtime's
/// state names it (a custom `--cgroup-parent` is not recognized either).
#[test]
fn a_container_id_outside_the_runtimes_cgroups_names_nothing() {
    let root = HostRoot::new();
    root.put(
        &containerd_bundle(CONTAINERD_APP),
        "containerd-container.json",
    );
    let containers = root.containers();
    for path in [
        format!("/custom/cri-containerd-{CONTAINERD_APP}.scope"),
        format!("/probe.slice/evil-{CONTAINERD_APP}.scope"),
    ] {
        assert_eq!(*containers.resolve(&path), Container::default(), "{path}");
    }
    let real = format!("/kubepods/burstable/pod{WEB_0_UID}/{CONTAINERD_APP}");
    assert_eq!(*containers.resolve(&real), web_0());
}

#[test]
fn k3s_keeps_containerd_state_elsewhere() {
    let root = HostRoot::new();
    root.put(
        &format!(
            "run/k3s/containerd/io.containerd.runtime.v2.task/k8s.io/{CONTAINERD_APP}/config.json"
        ),
        "containerd-container.json",
    );
    let path = format!("/kubepods/burstable/pod{WEB_0_UID}/{CONTAINERD_APP}");
    assert_eq!(*root.containers().resolve(&path), web_0());
}

#[test]
fn crio_containers_from_the_run_root_or_the_graph_root() {
    let root = HostRoot::new();
    root.put(&crio_userdata(CRIO_APP), "crio-container.json");
    let systemd = format!(
        "{}/crio-{CRIO_APP}.scope",
        systemd_pod_slice("besteffort", API_UID)
    );
    assert_eq!(*root.containers().resolve(&systemd), api());

    let root = HostRoot::new();
    root.put(
        &format!("var/lib/containers/storage/overlay-containers/{CRIO_APP}/userdata/config.json"),
        "crio-container.json",
    );
    let cgroupfs = format!("/kubepods/besteffort/pod{API_UID}/crio-{CRIO_APP}");
    assert_eq!(*root.containers().resolve(&cgroupfs), api());
}

#[test]
fn a_sandbox_names_its_pod_and_no_container() {
    let root = HostRoot::new();
    root.put(
        &containerd_bundle(CONTAINERD_SANDBOX),
        "containerd-sandbox.json",
    )
    .put(&crio_userdata(CRIO_SANDBOX), "crio-sandbox.json")
    // containers/storage lists CRI-O's sandbox too, named "k8s_POD_...".
    .put(
        "var/lib/containers/storage/overlay-containers/containers.json",
        "podman-containers.json",
    );
    let containers = root.containers();
    let pause = containers.resolve(&format!(
        "/kubepods/burstable/pod{WEB_0_UID}/{CONTAINERD_SANDBOX}"
    ));
    assert_eq!(
        (pause.pod.as_deref(), pause.namespace.as_deref()),
        (Some("web-0"), Some("shop"))
    );
    assert_eq!((&pause.name, &pause.image), (&None, &None));
    let pause = containers.resolve(&format!(
        "{}/crio-{CRIO_SANDBOX}.scope",
        systemd_pod_slice("besteffort", API_UID)
    ));
    assert_eq!(pause.pod.as_deref(), Some("api-7d9f8b6c5d-x2kqp"));
    assert_eq!((&pause.name, &pause.image), (&None, &None));
}

#[test]
fn docker_containers_and_dockershim_pods() {
    let root = HostRoot::new();
    root.put(
        &format!("var/lib/docker/containers/{DOCKER_RUN}/config.v2.json"),
        "docker-run.json",
    )
    .put(
        &format!("var/lib/docker/containers/{DOCKERSHIM}/config.v2.json"),
        "docker-dockershim.json",
    )
    // Docker runs its containers through containerd's "moby" namespace,
    // whose bundles name nothing.
    .write(
        &format!("run/containerd/io.containerd.runtime.v2.task/moby/{DOCKER_RUN}/config.json"),
        r#"{"ociVersion":"1.1.0","annotations":{}}"#,
    );
    let containers = root.containers();
    let web = containers.resolve(&format!("/system.slice/docker-{DOCKER_RUN}.scope"));
    assert_eq!(
        *web,
        Container {
            id: Some(DOCKER_RUN.into()),
            name: Some("web".into()),
            image: Some("nginx:1.22".into()),
            ..Container::default()
        }
    );
    let coredns = containers.resolve(&format!(
        "/kubepods/burstable/pod{COREDNS_UID}/{DOCKERSHIM}"
    ));
    assert_eq!(
        *coredns,
        Container {
            id: Some(DOCKERSHIM.into()),
            pod_uid: Some(COREDNS_UID.into()),
            name: Some("coredns".into()),
            image: Some("registry.k8s.io/coredns/coredns@sha256:a0ead06651cf580044aeb0a0feba63591858fb2e43ade8c9dea45a6a89ae7e5e".into()),
            pod: Some("coredns-5d78c9869d-4xq2z".into()),
            namespace: Some("kube-system".into()),
        }
    );
}

#[test]
fn podman_containers_from_the_storage_list() {
    let root = HostRoot::new();
    root.put(
        "var/lib/containers/storage/overlay-containers/containers.json",
        "podman-containers.json",
    )
    // Podman's own OCI spec names nothing.
    .write(
        &format!("var/lib/containers/storage/overlay-containers/{PODMAN}/userdata/config.json"),
        r#"{"ociVersion":"1.0.0","annotations":{"io.container.manager":"libpod","org.opencontainers.image.stopSignal":"15"}}"#,
    );
    let redis = root
        .containers()
        .resolve(&format!("/machine.slice/libpod-{PODMAN}.scope/container"));
    assert_eq!(
        *redis,
        Container {
            id: Some(PODMAN.into()),
            name: Some("redis-cache".into()),
            image: Some("docker.io/library/redis:7".into()),
            ..Container::default()
        }
    );
}

#[test]
fn without_runtime_state_the_ids_remain() {
    let root = HostRoot::new();
    // No runtime state at all, and a record that cannot be parsed.
    root.write(&containerd_bundle(CRIO_APP), "{ not json");
    let containers = root.containers();
    for id in [CONTAINERD_APP, CRIO_APP] {
        let c = containers.resolve(&format!("/kubepods/besteffort/pod{API_UID}/{id}"));
        assert_eq!(
            *c,
            Container {
                id: Some(id.into()),
                pod_uid: Some(API_UID.into()),
                ..Container::default()
            }
        );
    }
    assert_eq!(
        *containers.resolve("/user.slice/user-1000.slice/session-2.scope"),
        Container::default()
    );
}

#[test]
fn each_container_is_looked_up_once_and_the_cache_is_bounded() {
    let root = HostRoot::new();
    root.put(
        &containerd_bundle(CONTAINERD_APP),
        "containerd-container.json",
    );
    let containers = root.containers();
    let path = format!("/kubepods/burstable/pod{WEB_0_UID}/{CONTAINERD_APP}");
    let first = containers.resolve(&path);
    // Gone from the runtime's state: the container is still known.
    std::fs::remove_dir_all(root.0.join("run")).unwrap();
    let again = containers.clone().resolve(&path);
    assert!(Arc::ptr_eq(&first, &again), "cached, and shared by clones");
    for n in 0..=MAX_CONTAINERS {
        containers.resolve(&format!("/docker/{n:064x}"));
    }
    let known = containers.inner.lock().unwrap().known.len();
    assert!(known <= MAX_CONTAINERS, "{known} containers cached");
}
