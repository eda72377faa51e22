//! containerd: the runtime v2 task plugin keeps each running container's
//! OCI bundle at `<state>/io.containerd.runtime.v2.task/<namespace>/<id>/`
//! (`k8s.io` for Kubernetes, `moby` for Docker, `default` for ctr/nerdctl).
//! Its CRI plugin writes the pod and container into the bundle's
//! annotations (`pkg/cri/annotations/annotations.go`,
//! `DefaultCRIAnnotations`); the pod UID since containerd 1.6.11/1.7.

use std::path::Path;

use super::{Lookup, Metadata, Spec, is_absent, read_json, value};

const CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
const CONTAINER_NAME: &str = "io.kubernetes.cri.container-name";
const IMAGE_NAME: &str = "io.kubernetes.cri.image-name";
const SANDBOX_NAME: &str = "io.kubernetes.cri.sandbox-name";
const SANDBOX_NAMESPACE: &str = "io.kubernetes.cri.sandbox-namespace";
const SANDBOX_UID: &str = "io.kubernetes.cri.sandbox-uid";

/// The container's bundle in any containerd namespace under `tasks`.
pub(super) fn lookup(tasks: &Path, id: &str) -> Lookup {
    let namespaces = match std::fs::read_dir(tasks) {
        Ok(entries) => entries,
        Err(e) if is_absent(&e) => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", tasks.display())),
    };
    for namespace in namespaces.flatten() {
        let config = namespace.path().join(id).join("config.json");
        if let Some(spec) = read_json::<Spec>(&config)? {
            let a = &spec.annotations;
            return Ok(Some(Metadata {
                name: value(a, CONTAINER_NAME),
                image: value(a, IMAGE_NAME),
                pod: value(a, SANDBOX_NAME),
                namespace: value(a, SANDBOX_NAMESPACE),
                pod_uid: value(a, SANDBOX_UID),
                sandbox: a.get(CONTAINER_TYPE).is_some_and(|t| t == "sandbox"),
            }));
        }
    }
    Ok(None)
}
