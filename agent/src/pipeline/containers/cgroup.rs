//! Container id and pod UID from a process's cgroup v2 path: the names
//! runtimes give container cgroups carry the id, and the kubelet's pod
//! cgroups the pod UID, for the cgroupfs and systemd drivers alike.
//!
//! Only where the runtimes put them: a process in any cgroup named like a
//! container (`/probe.slice/evil-<id>.scope`, a user's own
//! `user@1000.service/docker-<id>.scope`) must not pass for that container,
//! or for a pod (and take a place among `--metrics.max-pods`). Below a
//! container's own cgroup the same shapes are read again, relative to it,
//! for the containers it runs itself (Docker in Docker, kind).

use super::Container;

/// What a cgroup path says about the container of a process in it (its
/// `id` and `pod_uid`), from where runtimes put container cgroups below the
/// root of the hierarchy:
///
/// - Kubernetes (containerd, CRI-O, cri-dockerd): under `kubepods` or
///   `kubepods.slice` (or `kubelet/kubepods`, `kubelet.slice/kubelet-kubepods.slice`
///   with kind's `--cgroup-root`), an optional QoS level (`besteffort`,
///   `kubepods-burstable.slice`), the pod (`pod<uid>`,
///   `kubepods-…-pod<uid_with_underscores>.slice`), then the container:
///   `<id>`, `crio-<id>`, `crio-conmon-<id>.scope`,
///   `cri-containerd-<id>.scope`, `cri-containerd:<id>`, `docker-<id>.scope`.
/// - Docker: `/docker/<id>` (cgroupfs), `/system.slice/docker-<id>.scope`
///   (systemd).
/// - Podman: `/machine.slice/libpod-<id>.scope` (also inside a pod's
///   `machine-libpod_pod_<id>.slice`), `/libpod_parent/libpod-<id>`.
///
/// The innermost container wins, so a container nested in another is named
/// for itself.
pub fn ids(path: &str) -> Container {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let mut found = Container::default();
    let mut root = 0;
    while let Some((container, end)) = container_at(&parts[root..]) {
        let inside = container.id.is_some();
        found.pod_uid = container.pod_uid.or(found.pod_uid);
        found.id = container.id.or(found.id);
        if !inside {
            break;
        }
        root += end;
    }
    found
}

/// The container whose cgroup the path `parts` (relative to a hierarchy's
/// root) goes through, and how many parts its own cgroup takes; a pod's
/// cgroup without a container in the path gives the pod UID alone.
fn container_at(parts: &[&str]) -> Option<(Container, usize)> {
    let at = |i: usize| parts.get(i).copied().unwrap_or_default();
    let container = |id: Option<String>, pod_uid: Option<String>, end: usize| {
        Some((
            Container {
                id,
                pod_uid,
                ..Container::default()
            },
            end,
        ))
    };
    match at(0) {
        "docker" => container(bare_id(at(1)), None, 2).filter(|(c, _)| c.id.is_some()),
        "system.slice" => container(prefixed_id(at(1), "docker-", ".scope"), None, 2)
            .filter(|(c, _)| c.id.is_some()),
        "libpod_parent" => {
            container(prefixed_id(at(1), "libpod-", ""), None, 2).filter(|(c, _)| c.id.is_some())
        }
        "machine.slice" => {
            let pod = at(1).starts_with("machine-libpod_pod_") && at(1).ends_with(".slice");
            let i = if pod { 2 } else { 1 };
            container(prefixed_id(at(i), "libpod-", ".scope"), None, i + 1)
                .filter(|(c, _)| c.id.is_some())
        }
        _ => {
            let mut i = match (at(0), at(1)) {
                ("kubepods" | "kubepods.slice", _) => 1,
                ("kubelet", "kubepods") | ("kubelet.slice", "kubelet-kubepods.slice") => 2,
                _ => return None,
            };
            if is_qos(at(i)) {
                i += 1;
            }
            let pod_uid = pod_uid(at(i))?;
            let id = kubernetes_id(at(i + 1));
            container(id, Some(pod_uid), i + 2)
        }
    }
}

/// `besteffort`, `burstable` (cgroupfs), `kubepods-besteffort.slice` (systemd).
fn is_qos(part: &str) -> bool {
    let stem = part.strip_suffix(".slice").unwrap_or(part);
    ["besteffort", "burstable"]
        .iter()
        .any(|qos| stem == *qos || (part.ends_with(".slice") && stem.ends_with(&format!("-{qos}"))))
}

/// The UID of a pod cgroup: `pod<uid>` (cgroupfs) or
/// `kubepods-…-pod<uid_with_underscores>.slice` (systemd), dashed.
fn pod_uid(part: &str) -> Option<String> {
    let uid = match part.strip_suffix(".slice") {
        Some(stem) => stem.rsplit_once("-pod")?.1,
        None => part.strip_prefix("pod")?,
    };
    let is_uid = uid.len() == 36
        && uid
            .bytes()
            .all(|b| b.is_ascii_hexdigit() || b == b'-' || b == b'_');
    is_uid.then(|| uid.replace('_', "-"))
}

/// A container's cgroup in a pod: the id after the runtime's prefix, if any
/// (`<id>`, `crio-<id>`, `cri-containerd-<id>.scope`, `cri-containerd:<id>`).
fn kubernetes_id(part: &str) -> Option<String> {
    let stem = part.strip_suffix(".scope").unwrap_or(part);
    bare_id(stem.rsplit(['-', ':']).next().unwrap_or(stem))
}

/// `<prefix><id><suffix>`.
fn prefixed_id(part: &str, prefix: &str, suffix: &str) -> Option<String> {
    bare_id(part.strip_prefix(prefix)?.strip_suffix(suffix)?)
}

/// A 64-hex container id.
fn bare_id(part: &str) -> Option<String> {
    (part.len() == 64 && part.bytes().all(|b| b.is_ascii_hexdigit())).then(|| part.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f4b2c1d0e9f8a7b6c5d4e3f2a1b0c9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b";
    const UID: &str = "8d1a3c9e-2b4f-4e6a-9c7d-1f2e3d4c5b6a";

    /// Paths as each runtime and cgroup driver lays them out (as
    /// /proc/<pid>/cgroup shows them on the host).
    #[test]
    fn container_ids_from_real_cgroup_path_shapes() {
        let uid_ = UID.replace('-', "_");
        #[rustfmt::skip]
        let cases = [
            // Docker, cgroupfs and systemd drivers.
            (format!("/docker/{ID}"), Some(ID), None),
            (format!("/system.slice/docker-{ID}.scope"), Some(ID), None),
            // Podman: systemd (with its inner "container" cgroup) and cgroupfs.
            (format!("/machine.slice/libpod-{ID}.scope/container"), Some(ID), None),
            (format!("/libpod_parent/libpod-{ID}"), Some(ID), None),
            // containerd's CRI plugin: cgroupfs, and systemd.
            (format!("/kubepods/besteffort/pod{UID}/{ID}"), Some(ID), Some(UID)),
            (format!("/kubepods/pod{UID}/{ID}"), Some(ID), Some(UID)),
            (
                format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice/cri-containerd-{ID}.scope"),
                Some(ID), Some(UID),
            ),
            // CRI-O: systemd, cgroupfs, and its conmon monitor.
            (format!("/kubepods.slice/kubepods-pod{uid_}.slice/crio-{ID}.scope"), Some(ID), Some(UID)),
            (format!("/kubepods/burstable/pod{UID}/crio-{ID}"), Some(ID), Some(UID)),
            (format!("/kubepods.slice/kubepods-pod{uid_}.slice/crio-conmon-{ID}.scope"), Some(ID), Some(UID)),
            // Older containerd with the systemd driver's "slice:prefix:name" kept whole.
            (format!("/kubepods/pod{UID}/cri-containerd:{ID}"), Some(ID), Some(UID)),
            // Not containers.
            ("/user.slice/user-1000.slice/session-2.scope".into(), None, None),
            ("/system.slice/containerd.service".into(), None, None),
            ("/".into(), None, None),
        ];
        for (path, id, uid) in cases {
            let c = ids(&path);
            assert_eq!(c.id.as_deref(), id, "{path}");
            assert_eq!(c.pod_uid.as_deref(), uid, "{path}");
        }
    }

    #[test]
    fn the_innermost_container_wins() {
        let outer = "a".repeat(64);
        let uid_ = UID.replace('-', "_");
        for path in [
            format!("/docker/{outer}/docker/{ID}"),
            // kind: a Kubernetes node in a Docker container.
            format!(
                "/system.slice/docker-{outer}.scope/kubelet.slice/kubelet-kubepods.slice/\
                 kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{uid_}.slice/\
                 cri-containerd-{ID}.scope"
            ),
        ] {
            assert_eq!(ids(&path).id.as_deref(), Some(ID), "{path}");
        }
    }

    /// Named like a container, but where no runtime puts one: anyone who
    /// can make a cgroup (a user's systemd, a root shell's `systemd-run`, a
    /// container with its own cgroups) could pass for any container or pod.
    #[test]
    fn container_names_elsewhere_are_no_containers() {
        let outer = "a".repeat(64);
        let uid_ = UID.replace('-', "_");
        let user = "/user.slice/user-1000.slice/user@1000.service";
        #[rustfmt::skip]
        let cases = [
            format!("/probe.slice/evil-{ID}.scope"),
            format!("/probe.slice/docker-{ID}.scope"),
            format!("/system.slice/evil.service/docker-{ID}.scope"),
            format!("/system.slice/cri-containerd-{ID}.scope"),
            format!("{user}/app.slice/docker-{ID}.scope"),
            format!("{user}/user.slice/libpod-{ID}.scope"),
            format!("{user}/kubepods/pod{UID}/{ID}"),
            format!("/probe.slice/kubepods-besteffort-pod{uid_}.slice/cri-containerd-{ID}.scope"),
            format!("/kubepods/besteffort/{ID}"),
            format!("/kubepods/besteffort/evil/pod{UID}/{ID}"),
            format!("/docker/evil-{ID}"),
            format!("/machine.slice/evil-{ID}.scope"),
            format!("/{ID}"),
        ];
        for path in cases {
            assert_eq!(ids(&path), Container::default(), "{path}");
        }
        // Inside a container, its own cgroups are read the same way: a
        // fake below it leaves the container itself.
        let nested = ids(&format!("/docker/{outer}/probe.slice/evil-{ID}.scope"));
        assert_eq!(nested.id.as_deref(), Some(outer.as_str()));
        // A process in a pod's cgroup, in none of its containers.
        let pod = ids(&format!("/kubepods/burstable/pod{UID}"));
        assert_eq!((pod.id, pod.pod_uid.as_deref()), (None, Some(UID)));
    }
}
