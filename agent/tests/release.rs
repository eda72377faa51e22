//! The release artifacts of `cargo xtask dist` (`cargo xtask test` makes
//! them first, in target/dist, or $SOCKERR_DIST): one static binary that
//! runs alone, the same bytes in the tarball, the .deb and the OCI image;
//! the .deb installs the unit and its defaults; the image runs in an OCI
//! runtime; the binary detects as the debug build does.
//!
//! Without the artifacts these tests skip, or fail under CI=true.

mod support;

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
};

use serde_json::Value;
use support::{Agent, Log, repo, require_root, run_ok, scenario_env};

/// The artifacts' directory, or None (the test skips) when `cargo xtask
/// dist` has not run.
fn dist() -> Option<PathBuf> {
    let dir = std::env::var_os("SOCKERR_DIST")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target/dist"));
    if dir.join("SHA256SUMS").is_file() {
        return Some(dir);
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "no release artifacts in {} (cargo xtask dist), and CI=true",
        dir.display()
    );
    eprintln!(
        "skipping: no release artifacts in {}; run `cargo xtask dist`",
        dir.display()
    );
    None
}

/// The artifact whose name ends with `suffix`.
fn artifact(dist: &Path, suffix: &str) -> PathBuf {
    fs::read_dir(dist)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().ends_with(suffix))
        .unwrap_or_else(|| panic!("no *{suffix} in {}", dist.display()))
}

fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("release")
        .join(name);
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

/// The files of a tar archive (gzip-compressed or not), by path.
fn untar(data: &[u8]) -> BTreeMap<String, Vec<u8>> {
    let plain = if data.starts_with(&[0x1f, 0x8b]) {
        let gz = scratch(&format!("gunzip-{:?}", std::thread::current().id())).join("data.gz");
        fs::write(&gz, data).unwrap();
        run_ok(Command::new("gzip").arg("-dc").arg(&gz), "gzip").stdout
    } else {
        data.to_vec()
    };
    // A ustar reader: 512-byte headers, name at 0 (prefix at 345), size
    // in octal at 124, type at 156.
    let mut files = BTreeMap::new();
    let mut at = 0;
    while at + 512 <= plain.len() && plain[at] != 0 {
        let header = &plain[at..at + 512];
        let field = |range: std::ops::Range<usize>| {
            let raw = &header[range];
            String::from_utf8_lossy(&raw[..raw.iter().position(|&b| b == 0).unwrap_or(raw.len())])
                .into_owned()
        };
        let (prefix, name) = (field(345..500), field(0..100));
        let path = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        };
        let size = usize::from_str_radix(field(124..136).trim(), 8).unwrap_or(0);
        let body = at + 512;
        if header[156] == b'0' || header[156] == 0 {
            files.insert(
                path.trim_start_matches("./").to_owned(),
                plain[body..body + size].to_vec(),
            );
        }
        at = body + size.div_ceil(512) * 512;
    }
    files
}

/// The binary as the tarball ships it.
fn tarball_binary(dist: &Path) -> &'static [u8] {
    static BINARY: OnceLock<Vec<u8>> = OnceLock::new();
    BINARY.get_or_init(|| {
        let files = untar(&fs::read(artifact(dist, ".linux-amd64.tar.gz")).unwrap());
        let (path, binary) = files
            .iter()
            .find(|(p, _)| p.ends_with("/sockerr"))
            .expect("a sockerr binary in the tarball");
        assert_eq!(path, "sockerr-0.1.0.linux-amd64/sockerr");
        binary.clone()
    })
}

/// The tarball's binary written out, executable.
fn binary_file(dist: &Path, dir: &Path) -> PathBuf {
    let path = dir.join("sockerr");
    fs::write(&path, tarball_binary(dist)).unwrap();
    fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    path
}

/// `sockerr --version` of the commit checked out here.
fn expected_version() -> String {
    let out = run_ok(
        Command::new("git")
            .args(["rev-parse", "--short=12", "HEAD"])
            .current_dir(repo()),
        "git",
    );
    let revision = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    format!("sockerr 0.1.0 (revision {revision}, x86_64-unknown-linux-musl)")
}

#[test]
fn checksums_cover_every_artifact() {
    let Some(dist) = dist() else { return };
    let sums = fs::read_to_string(dist.join("SHA256SUMS")).unwrap();
    let names: Vec<&str> = sums
        .lines()
        .map(|l| l.split_once("  ").expect("sha256sum's format").1)
        .collect();
    assert_eq!(
        names,
        [
            "sockerr-0.1.0.linux-amd64.tar.gz",
            "sockerr_0.1.0-1_amd64.deb",
            "sockerr-0.1.0.linux-amd64.oci.tar",
            "sockerr-0.1.0.linux-arm64.tar.gz",
            "sockerr_0.1.0-1_arm64.deb",
            "sockerr-0.1.0.linux-arm64.oci.tar"
        ]
    );
    let out = Command::new("sha256sum")
        .args(["--check", "--strict", "SHA256SUMS"])
        .current_dir(&dist)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// Static: no program interpreter, no shared library; and it runs in an
/// empty root (a chroot holding nothing but the binary), so it needs
/// nothing of the host's C library, whatever its version.
#[test]
fn the_binary_is_static_and_runs_alone() {
    let Some(dist) = dist() else { return };
    let dir = scratch("alone");
    let binary = binary_file(&dist, &dir);
    let ldd = Command::new("ldd").arg(&binary).output().unwrap();
    let said =
        String::from_utf8_lossy(&ldd.stdout).into_owned() + &String::from_utf8_lossy(&ldd.stderr);
    assert!(
        said.contains("statically linked") || said.contains("not a dynamic executable"),
        "ldd: {said}"
    );
    assert!(!said.contains("=>"), "ldd lists libraries: {said}");
    if !require_root() {
        return;
    }
    assert_eq!(
        fs::read_dir(&dir).unwrap().count(),
        1,
        "the root holds the binary alone"
    );
    let out = run_ok(
        Command::new("chroot")
            .arg(&dir)
            .args(["/sockerr", "--version"]),
        "chroot",
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        expected_version()
    );
}

/// The tarball, the .deb and the image ship the same file.
#[test]
fn the_three_artifacts_hold_the_same_binary() {
    let Some(dist) = dist() else { return };
    let binary = tarball_binary(&dist);
    let deb = deb_files(&dist);
    assert!(
        deb["usr/bin/sockerr"] == binary,
        "the .deb's binary differs"
    );
    let image = image_files(&dist);
    assert!(
        image["usr/bin/sockerr"] == binary,
        "the image's binary differs"
    );
    assert_eq!(
        image.keys().collect::<Vec<_>>(),
        [
            "usr/bin/sockerr",
            "usr/share/doc/sockerr/LICENSE-APACHE",
            "usr/share/doc/sockerr/LICENSE-MIT"
        ],
        "the image holds the agent and its licenses, nothing else"
    );
}

/// The files of the .deb's data archive.
fn deb_files(dist: &Path) -> BTreeMap<String, Vec<u8>> {
    let out = run_ok(
        Command::new("dpkg-deb")
            .arg("--fsys-tarfile")
            .arg(artifact(dist, "_amd64.deb")),
        "dpkg-deb",
    );
    untar(&out.stdout)
}

/// The files of the image's single layer, found through index.json and
/// the manifest as a runtime finds them.
fn image_files(dist: &Path) -> BTreeMap<String, Vec<u8>> {
    let archive = untar(&fs::read(artifact(dist, ".linux-amd64.oci.tar")).unwrap());
    let blob = |digest: &str| -> &Vec<u8> {
        &archive[&format!("blobs/sha256/{}", digest.trim_start_matches("sha256:"))]
    };
    let index: Value = serde_json::from_slice(&archive["index.json"]).unwrap();
    let manifests = index["manifests"].as_array().unwrap();
    assert_eq!(manifests.len(), 1);
    assert_eq!(manifests[0]["platform"]["architecture"], "amd64");
    let manifest: Value =
        serde_json::from_slice(blob(manifests[0]["digest"].as_str().unwrap())).unwrap();
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1);
    untar(blob(layers[0]["digest"].as_str().unwrap()))
}

#[test]
fn the_deb_installs_the_agent_its_unit_and_defaults() {
    let Some(dist) = dist() else { return };
    let deb = artifact(&dist, "_amd64.deb");
    let field = |name: &str| {
        let out = run_ok(
            Command::new("dpkg-deb").arg("-f").arg(&deb).arg(name),
            "dpkg-deb",
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    assert_eq!(field("Package"), "sockerr");
    assert_eq!(field("Version"), "0.1.0-1");
    assert_eq!(field("Architecture"), "amd64");
    assert_eq!(field("Homepage"), "https://github.com/sockerr/sockerr");
    let files = deb_files(&dist);
    for path in [
        "usr/bin/sockerr",
        "usr/lib/systemd/system/sockerr.service",
        "etc/default/sockerr",
        "usr/share/doc/sockerr/copyright",
        "usr/share/doc/sockerr/LICENSE-APACHE",
        "usr/share/doc/sockerr/LICENSE-MIT",
        "usr/share/doc/sockerr/examples/sockerr-alerts.yml",
    ] {
        assert!(
            files.contains_key(path),
            "{path} missing: {:?}",
            files.keys()
        );
    }
    assert_eq!(
        files["usr/lib/systemd/system/sockerr.service"],
        fs::read(repo().join("deploy/systemd/sockerr.service")).unwrap()
    );
    assert_eq!(
        files["etc/default/sockerr"],
        fs::read(repo().join("deploy/systemd/sockerr.default")).unwrap()
    );
    // Maintainer scripts: the defaults are a conffile (kept on upgrade),
    // the unit is enabled and started on install, stopped on removal.
    let control = scratch("deb-control");
    run_ok(
        Command::new("dpkg-deb").arg("-e").arg(&deb).arg(&control),
        "dpkg-deb -e",
    );
    let read = |name: &str| fs::read_to_string(control.join(name)).unwrap_or_default();
    assert_eq!(read("conffiles").trim(), "/etc/default/sockerr");
    assert!(read("postinst").contains("deb-systemd-helper enable sockerr.service"));
    assert!(read("postinst").contains("sockerr.service"));
    assert!(read("prerm").contains("deb-systemd-invoke stop sockerr.service"));
    // The unit as packaged verifies against the packaged binary.
    let dir = scratch("deb-unit");
    let binary = binary_file(&dist, &dir);
    let unit = String::from_utf8(files["usr/lib/systemd/system/sockerr.service"].clone())
        .unwrap()
        .replace("/usr/bin/sockerr", binary.to_str().unwrap());
    fs::write(dir.join("sockerr.service"), unit).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(dir.join("sockerr.service"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.trim().is_empty(), "{stderr}");
}

/// The image read by the tools that take it (skopeo's `oci-archive:` and
/// `docker-archive:`), unpacked by umoci into a runtime bundle and run by
/// runc: an OCI runtime starts the agent alone from it.
#[test]
fn the_image_runs_in_an_oci_runtime() {
    let Some(dist) = dist() else { return };
    let archive = artifact(&dist, ".linux-amd64.oci.tar");
    for transport in ["oci-archive", "docker-archive"] {
        let out = run_ok(
            Command::new("skopeo")
                .args(["inspect", "--config"])
                .arg(format!("{transport}:{}", archive.display())),
            "skopeo inspect (cargo xtask setup --tests installs skopeo)",
        );
        let config: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(config["architecture"], "amd64", "{transport}");
        assert_eq!(
            config["config"]["Entrypoint"],
            serde_json::json!(["/usr/bin/sockerr"]),
            "{transport}"
        );
        assert_eq!(config["config"]["Cmd"], serde_json::json!(["run"]));
        let labels = &config["config"]["Labels"];
        assert_eq!(
            labels["org.opencontainers.image.licenses"],
            "MIT OR Apache-2.0"
        );
        assert_eq!(
            labels["org.opencontainers.image.source"],
            "https://github.com/sockerr/sockerr"
        );
    }
    if !require_root() {
        return;
    }
    let dir = scratch("image");
    let layout = dir.join("layout");
    fs::create_dir_all(&layout).unwrap();
    run_ok(
        Command::new("tar")
            .arg("xf")
            .arg(&archive)
            .arg("-C")
            .arg(&layout),
        "tar",
    );
    let bundle = dir.join("bundle");
    run_ok(
        Command::new("umoci")
            .args(["unpack", "--image"])
            .arg(format!("{}:0.1.0", layout.display()))
            .arg(&bundle),
        "umoci unpack (cargo xtask setup --tests installs umoci)",
    );
    // The bundle's process as the image's config made it, run with
    // --version; no rlimits (this machine's root may not set them), no
    // terminal.
    let config_path = bundle.join("config.json");
    let mut config: Value = serde_json::from_slice(&fs::read(&config_path).unwrap()).unwrap();
    assert_eq!(
        config["process"]["args"],
        serde_json::json!(["/usr/bin/sockerr", "run"]),
        "the entrypoint and command"
    );
    config["process"]["args"] = serde_json::json!(["/usr/bin/sockerr", "--version"]);
    config["process"]["terminal"] = false.into();
    config["process"].as_object_mut().unwrap().remove("rlimits");
    fs::write(&config_path, serde_json::to_vec(&config).unwrap()).unwrap();
    let id = format!("sockerr-release-{}", std::process::id());
    let out = run_ok(
        Command::new("runc").args(["run", &id]).current_dir(&bundle),
        "runc run",
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        expected_version()
    );
}

/// The static binary as the agent: it attaches, detects, attributes and
/// serves, and says which build it is.
#[test]
fn the_release_binary_detects() {
    let Some(dist) = dist() else { return };
    if !require_root() {
        return;
    }
    let dir = scratch("agent");
    let binary = binary_file(&dist, &dir);
    let agent = Agent::spawn(&binary, &["--findings.node-name=node-7"], Log::Discard);
    let (pid, out) = scenario_env(&["masked"], &[("SCENARIO_LINGER_MS", "500")]);
    assert!(out.status.success());
    let found = agent.wait_findings_of(pid, 1);
    assert!(!found.is_empty(), "no finding from the release binary");
    for f in &found {
        assert_eq!(f["node"], "node-7", "{f}");
        assert!(
            f["exe"]
                .as_str()
                .is_some_and(|e| e.ends_with("sockerr-scenario")),
            "{f}"
        );
    }
    let metrics = agent.metrics();
    let revision = expected_version();
    let revision = revision
        .split("revision ")
        .nth(1)
        .unwrap()
        .split(',')
        .next()
        .unwrap();
    assert!(
        metrics.contains(&format!(
            "sockerr_build_info{{revision=\"{revision}\",target=\"x86_64-unknown-linux-musl\",version=\"0.1.0\"}} 1"
        )),
        "{}",
        metrics.lines().filter(|l| l.contains("build_info")).collect::<Vec<_>>().join("\n")
    );
}
