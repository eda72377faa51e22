//! CRI-O: each container's OCI spec is saved as `<id>/userdata/config.json`
//! in containers/storage's per-container directories, both under the run
//! root (the bundle the OCI runtime runs) and the graph root
//! (`server/container_create.go`). Its annotations carry the kubelet's
//! labels (pod name, namespace, UID, container name) as they are, and the
//! image under CRI-O's own keys (`internal/factory/container`,
//! `SpecAddAnnotations`).

use std::path::Path;

use super::{Lookup, Metadata, Spec, read_json, value};

const CONTAINER_TYPE: &str = "io.kubernetes.cri-o.ContainerType";
/// A name of the image (e.g. `docker.io/library/nginx:1.22`).
const IMAGE_NAME: &str = "io.kubernetes.cri-o.ImageName";
/// The image as the pod asked for it; the kubelet often passes an image id.
const IMAGE: &str = "io.kubernetes.cri-o.Image";

pub(super) fn lookup(containers: &Path, id: &str) -> Lookup {
    let config = containers.join(id).join("userdata/config.json");
    Ok(read_json::<Spec>(&config)?.map(|spec| {
        let a = &spec.annotations;
        let mut m = Metadata::from_kubelet_labels(a);
        m.image = value(a, IMAGE_NAME).or_else(|| value(a, IMAGE));
        m.sandbox |= a.get(CONTAINER_TYPE).is_some_and(|t| t == "sandbox");
        m
    }))
}
