//! Docker keeps each container's record in
//! `/var/lib/docker/containers/<id>/config.v2.json` (moby
//! `container/container.go`): its name (with a leading `/`), the image as
//! it was asked for and its labels, where cri-dockerd (dockershim) puts the
//! kubelet's labels for Kubernetes pods.

use std::{collections::HashMap, path::Path};

use serde::Deserialize;

use super::{Lookup, Metadata, read_json};

#[derive(Deserialize)]
struct Record {
    #[serde(rename = "Name", default)]
    name: String,
    #[serde(rename = "Config", default)]
    config: Config,
}

#[derive(Default, Deserialize)]
struct Config {
    #[serde(rename = "Image", default)]
    image: String,
    #[serde(rename = "Labels", default)]
    labels: Option<HashMap<String, String>>,
}

pub(super) fn lookup(containers: &Path, id: &str) -> Lookup {
    let path = containers.join(id).join("config.v2.json");
    Ok(read_json::<Record>(&path)?.map(|record| {
        let labels = record.config.labels.unwrap_or_default();
        let mut m = Metadata::from_kubelet_labels(&labels);
        // A Kubernetes container is named in its pod; Docker's own name
        // (k8s_<container>_<pod>_...) says the same, less readably.
        if m.name.is_none() {
            m.name = Some(record.name.trim_start_matches('/').to_owned()).filter(|n| !n.is_empty());
        }
        m.sandbox |= labels
            .get("io.kubernetes.docker.type")
            .is_some_and(|t| t == "podsandbox");
        m.image = Some(record.config.image).filter(|i| !i.is_empty());
        m
    }))
}
