//! Podman: containers/storage lists the containers it holds in
//! `containers.json`, and those created `--rm` (transient) in
//! `volatile-containers.json`, in the graph root's `overlay-containers/`.
//! Each entry has the container's names and Podman's metadata (a JSON
//! string with `name` and `image-name`; libpod `RuntimeContainerMetadata`).
//! Podman's OCI spec carries no name, so this list is where names are.

use std::path::Path;

use serde::Deserialize;

use super::{Lookup, Metadata, read_json};

#[derive(Deserialize)]
struct Entry {
    id: String,
    #[serde(default)]
    names: Vec<String>,
    #[serde(default)]
    metadata: String,
}

#[derive(Default, Deserialize)]
struct PodmanMetadata {
    #[serde(default)]
    name: String,
    #[serde(rename = "image-name", default)]
    image_name: String,
}

pub(super) fn lookup(containers: &Path, id: &str) -> Lookup {
    for list in ["containers.json", "volatile-containers.json"] {
        let Some(entries) = read_json::<Vec<Entry>>(&containers.join(list))? else {
            continue;
        };
        if let Some(entry) = entries.into_iter().find(|e| e.id == id) {
            // CRI-O's containers are listed too, with metadata of its own
            // shape: their names come from their bundles instead.
            let meta: PodmanMetadata = serde_json::from_str(&entry.metadata).unwrap_or_default();
            let name = Some(meta.name)
                .filter(|n| !n.is_empty())
                .or_else(|| entry.names.into_iter().next());
            return Ok(Some(Metadata {
                name,
                image: Some(meta.image_name).filter(|i| !i.is_empty()),
                ..Metadata::default()
            }));
        }
    }
    Ok(None)
}
