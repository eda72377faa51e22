//! The container image, written directly as an OCI image layout in a tar
//! archive (`oci-archive`): no container engine, no daemon, no base image.
//! One layer holds the static agent (`/usr/bin/sockerr`) and its licenses;
//! the entrypoint is the agent, the command `run`.
//!
//! The archive is the OCI image layout (image-spec 1.1: `oci-layout`,
//! `index.json`, `blobs/sha256/…`), which podman (`podman load`), skopeo
//! (`oci-archive:`), containerd (`ctr images import`), umoci and Docker ≥ 25
//! read, plus Docker's older `manifest.json` beside it so `docker load` of
//! earlier versions takes it too. Everything in it is derived from the
//! binary and the release (no timestamps of this run): the same commit
//! gives the same image digest.

use std::{fs, io::Write as _, path::Path, path::PathBuf};

use anyhow::{Context as _, Result};
use serde_json::{Value, json};

use super::{Entry, Release, Target, append_dir, append_file};
use crate::cmd;

/// Where the image is published; the name `docker load` and containerd
/// give it.
pub const REPOSITORY: &str = "ghcr.io/sockerr/sockerr";

const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const INDEX: &str = "application/vnd.oci.image.index.v1+json";
const CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// Writes `sockerr-<version>.linux-<arch>.oci.tar` into `out`.
pub fn archive(target: &Target, release: &Release, binary: &Path, out: &Path) -> Result<PathBuf> {
    let path = out.join(format!("{}.oci.tar", release.stem(target)));
    println!("xtask dist: writing the image {}", path.display());
    let root = cmd::workspace_root();
    let (layer, diff_id) = layer(
        &[
            Entry {
                path: "usr/bin/sockerr".into(),
                mode: 0o755,
                source: binary,
            },
            Entry {
                path: "usr/share/doc/sockerr/LICENSE-APACHE".into(),
                mode: 0o644,
                source: &root.join("LICENSE-APACHE"),
            },
            Entry {
                path: "usr/share/doc/sockerr/LICENSE-MIT".into(),
                mode: 0o644,
                source: &root.join("LICENSE-MIT"),
            },
        ],
        release.epoch,
    )?;
    let created = rfc3339(release.epoch);
    let labels = labels(release, &created);
    let config = serde_json::to_vec(&json!({
        "created": created,
        "architecture": target.arch,
        "os": "linux",
        "config": {
            // Loading eBPF programs needs uid 0 (with the capabilities the
            // DaemonSet grants); the container is not meant to run privileged.
            "User": "0:0",
            "ExposedPorts": {"9809/tcp": {}},
            "Entrypoint": ["/usr/bin/sockerr"],
            // The default listen address is 127.0.0.1:9809, reachable only
            // inside the container's network namespace: deployments pass
            // --web.listen-address with a --web.config.file (daemonset.yaml).
            "Cmd": ["run"],
            "Labels": labels,
        },
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{diff_id}")]},
        "history": [{
            "created": created,
            "created_by": "cargo xtask dist: /usr/bin/sockerr (static) and its licenses",
        }],
    }))?;
    let config_desc = descriptor(CONFIG, &config);
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "config": config_desc,
        "layers": [descriptor(LAYER, &layer)],
        "annotations": labels,
    }))?;
    let reference = format!("{REPOSITORY}:{}", release.version);
    let mut manifest_desc = descriptor(MANIFEST, &manifest);
    manifest_desc["platform"] = json!({"architecture": target.arch, "os": "linux"});
    manifest_desc["annotations"] = json!({
        // The tag, as the image layout names references; containerd and
        // Docker ≥ 25 take the full name from their own annotation.
        "org.opencontainers.image.ref.name": release.version,
        "io.containerd.image.name": reference,
    });
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": INDEX,
        "manifests": [manifest_desc],
    }))?;
    // Docker's own archive format, for `docker load` before Docker 25.
    let docker = serde_json::to_vec(&json!([{
        "Config": blob_path(&config),
        "RepoTags": [reference],
        "Layers": [blob_path(&layer)],
    }]))?;

    let mut tar = tar::Builder::new(
        fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?,
    );
    let files: [(String, &[u8]); 6] = [
        ("oci-layout".into(), br#"{"imageLayoutVersion":"1.0.0"}"#),
        ("index.json".into(), &index),
        ("manifest.json".into(), &docker),
        (blob_path(&layer), &layer),
        (blob_path(&config), &config),
        (blob_path(&manifest), &manifest),
    ];
    append_dir(&mut tar, "blobs/", release.epoch)?;
    append_dir(&mut tar, "blobs/sha256/", release.epoch)?;
    for (name, data) in &files {
        let mut header = tar::Header::new_ustar();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_mode(0o644);
        header.set_size(data.len() as u64);
        header.set_mtime(release.epoch);
        let _ = header.set_username("root");
        let _ = header.set_groupname("root");
        tar.append_data(&mut header, name, *data)
            .with_context(|| format!("adding {name}"))?;
    }
    tar.into_inner()?.flush()?;
    Ok(path)
}

/// The image's labels (also the manifest's annotations): the
/// `org.opencontainers.image.*` keys registries and scanners read.
fn labels(release: &Release, created: &str) -> Value {
    let url = "https://github.com/sockerr/sockerr";
    json!({
        "org.opencontainers.image.title": "sockerr",
        "org.opencontainers.image.description": "eBPF agent that flags processes which re-read \
            SO_ERROR or do I/O after a failed connect(), exported as Prometheus metrics",
        "org.opencontainers.image.version": release.version,
        "org.opencontainers.image.revision": release.revision,
        "org.opencontainers.image.created": created,
        "org.opencontainers.image.licenses": "MIT OR Apache-2.0",
        "org.opencontainers.image.source": url,
        "org.opencontainers.image.url": url,
        "org.opencontainers.image.documentation": format!("{url}#readme"),
    })
}

/// The layer (gzip of a tar) and the digest of the uncompressed tar (its
/// diff id); every directory above a file is listed before it.
fn layer(entries: &[Entry<'_>], mtime: u64) -> Result<(Vec<u8>, String)> {
    let mut tar = tar::Builder::new(Vec::new());
    let mut dirs: Vec<String> = Vec::new();
    for entry in entries {
        let mut parent = String::new();
        for part in entry
            .path
            .split('/')
            .take(entry.path.split('/').count() - 1)
        {
            parent = format!("{parent}{part}/");
            if !dirs.contains(&parent) {
                append_dir(&mut tar, &parent, mtime)?;
                dirs.push(parent.clone());
            }
        }
        append_file(&mut tar, entry, mtime)?;
    }
    let plain = tar.into_inner()?;
    let diff_id = hex(&sha256(&plain));
    let mut gz = flate2::GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), flate2::Compression::best());
    gz.write_all(&plain)?;
    Ok((gz.finish()?, diff_id))
}

fn descriptor(media_type: &str, blob: &[u8]) -> Value {
    json!({
        "mediaType": media_type,
        "digest": format!("sha256:{}", hex(&sha256(blob))),
        "size": blob.len(),
    })
}

fn blob_path(blob: &[u8]) -> String {
    format!("blobs/sha256/{}", hex(&sha256(blob)))
}

pub fn sha256(data: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, data)
        .as_ref()
        .to_vec()
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `YYYY-MM-DDTHH:MM:SSZ` of seconds since the epoch (UTC; days to a civil
/// date by Howard Hinnant's algorithm).
fn rfc3339(epoch: u64) -> String {
    let (days, secs) = ((epoch / 86_400) as i64, epoch % 86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_of_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_796_313_158), "2026-12-03T15:52:38Z");
    }

    #[test]
    fn layers_list_each_directory_once_before_its_files() {
        let dir = std::env::temp_dir().join(format!("xtask-oci-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let file = dir.join("f");
        fs::write(&file, b"x").unwrap();
        let entries = [
            Entry {
                path: "usr/bin/a".into(),
                mode: 0o755,
                source: &file,
            },
            Entry {
                path: "usr/share/b".into(),
                mode: 0o644,
                source: &file,
            },
        ];
        let (gz, diff_id) = layer(&entries, 7).unwrap();
        let mut plain = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&*gz), &mut plain).unwrap();
        assert_eq!(diff_id, hex(&sha256(&plain)));
        let names: Vec<String> = tar::Archive::new(&*plain)
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        assert_eq!(
            names,
            ["usr/", "usr/bin/", "usr/bin/a", "usr/share/", "usr/share/b"]
        );
        // The same input, the same bytes.
        assert_eq!(layer(&entries, 7).unwrap().0, gz);
        fs::remove_dir_all(dir).unwrap();
    }
}
