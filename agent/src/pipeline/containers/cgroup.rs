//! Container id and pod UID from a process's cgroup v2 path: the names
//! runtimes give container cgroups carry the id, and the kubelet's pod
//! cgroups the pod UID, for the cgroupfs and systemd drivers alike.

use super::Container;

/// What a cgroup path says about the container of a process in it (its
/// `id` and `pod_uid`), from the shapes runtimes give cgroup paths:
/// `/docker/<id>`, `docker-<id>.scope`, `cri-containerd-<id>.scope`,
/// `crio-<id>.scope`, `libpod-<id>.scope`, cgroupfs
/// `/kubepods/.../pod<uid>/<id>` and systemd
/// `kubepods-...-pod<uid_with_underscores>.slice`. The innermost id wins, so
/// a container nested in another is named for itself.
pub fn ids(path: &str) -> Container {
    let mut found = Container::default();
    for part in path.split('/') {
        let stem = part
            .strip_suffix(".scope")
            .or(part.strip_suffix(".slice"))
            .unwrap_or(part);
        if let Some(uid) = stem
            .rsplit_once("-pod")
            .map(|(_, u)| u)
            .or(stem.strip_prefix("pod"))
            && is_pod_uid(uid)
        {
            found.pod_uid = Some(uid.replace('_', "-"));
        }
        let id = stem.rsplit(['-', ':']).next().unwrap_or(stem);
        if id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
            found.id = Some(id.to_owned());
        }
    }
    found
}

fn is_pod_uid(s: &str) -> bool {
    s.len() == 36
        && s.bytes()
            .all(|b| b.is_ascii_hexdigit() || b == b'-' || b == b'_')
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
        assert_eq!(
            ids(&format!("/docker/{outer}/docker/{ID}")).id.as_deref(),
            Some(ID)
        );
    }
}
