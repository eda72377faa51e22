//! The private apt views the kernels, QEMU and the other architectures'
//! programs come through: a sources list of our own (built from the Debian
//! archive this machine is configured with), with its own package lists
//! and download cache under ~/.cache/sockerr/kernels/apt. The system's
//! sources are never edited; `apt-get -c …` points apt at ours.
//!
//! One view per architecture: this host's (`apt/`: its kernels, and the
//! QEMU installed from it) and each other's (`apt-arm64/` on an amd64
//! host: `APT::Architecture "arm64"` and a dpkg status of its own, empty,
//! so it only ever downloads; nothing is installed from it).

use std::{
    fs,
    path::PathBuf,
    process::Command,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context as _, Result, bail};

use super::series::{SERIES, Series};
use crate::{arch::Arch, cache, cmd};

/// The meta package whose Depends names the current cloud kernel.
fn meta(arch: Arch) -> String {
    format!("linux-image-cloud-{}", arch.debian())
}
/// Package lists older than this are refreshed (a failed refresh keeps the
/// cached kernels).
pub const LISTS_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);
const DEFAULT_KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

pub fn apt_dir(arch: Arch) -> Result<PathBuf> {
    Ok(cache::kernels()?.join(if arch.is_host() {
        "apt".to_owned()
    } else {
        format!("apt-{}", arch.debian())
    }))
}

/// apt's configuration for the private view, read after the system's (`-c`).
fn apt_conf(arch: Arch) -> Result<PathBuf> {
    let apt = apt_dir(arch)?;
    let foreign = if arch.is_host() {
        String::new()
    } else {
        format!(
            "// Another architecture's packages, only to download: its own\n\
             // (empty) dpkg status, not this host's.\n\
             APT::Architecture \"{arch}\";\n\
             APT::Architectures {{ \"{arch}\"; }};\n\
             Dir::State::status \"{status}\";\n",
            arch = arch.debian(),
            status = apt.join("status").display(),
        )
    };
    let conf = format!(
        "// Written by cargo xtask (kernel matrix): a private apt view.\n\
         Dir::Etc::sourcelist \"{sources}\";\n\
         Dir::Etc::sourceparts \"-\";\n\
         Dir::State::Lists \"{lists}\";\n\
         Dir::Cache \"{cache}\";\n\
         // Only the package lists: no translations, no AppStream metadata.\n\
         Acquire::Languages \"none\";\n\
         Acquire::IndexTargets::deb::DEP-11::DefaultEnabled \"false\";\n\
         Acquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled \"false\";\n\
         Acquire::IndexTargets::deb::DEP-11-icons-small::DefaultEnabled \"false\";\n\
         // Downloads go to directories of ours, which apt's sandbox user cannot write.\n\
         APT::Sandbox::User \"root\";\n{foreign}",
        sources = apt.join("sources.list").display(),
        lists = apt.join("lists").display(),
        cache = apt.join("cache").display(),
    );
    let path = apt.join("apt.conf");
    if fs::read_to_string(&path).ok().as_deref() != Some(conf.as_str()) {
        fs::create_dir_all(&apt)?;
        fs::write(&path, conf)?;
    }
    if !arch.is_host() && !apt.join("status").exists() {
        fs::write(apt.join("status"), "")?;
    }
    Ok(path)
}

/// `program` (apt-get, apt-cache) in `arch`'s view.
pub fn apt(arch: Arch, program: &str) -> Result<Command> {
    let mut c = Command::new(program);
    c.arg("-c").arg(apt_conf(arch)?);
    Ok(c)
}

/// The Debian archive and security URIs this machine's apt is configured
/// with (one-line and deb822 sources), and the keyring that signs them.
struct Archive {
    debian: String,
    security: Option<String>,
    keyring: String,
}

const DEBIAN_CODENAMES: &[&str] = &[
    "buster",
    "bullseye",
    "bookworm",
    "trixie",
    "forky",
    "sid",
    "stable",
    "oldstable",
    "testing",
    "unstable",
];

fn configured_archive() -> Result<Archive> {
    let mut entries: Vec<(String, String, Option<String>)> = Vec::new(); // (uri, suite, signed-by)
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(dir) = fs::read_dir("/etc/apt/sources.list.d") {
        let mut more: Vec<_> = dir.filter_map(|e| e.ok().map(|e| e.path())).collect();
        more.sort();
        files.extend(more);
    }
    for file in files {
        let Ok(text) = fs::read_to_string(&file) else {
            continue;
        };
        if file.extension().is_some_and(|e| e == "sources") {
            entries.extend(deb822_entries(&text));
        } else if file.extension().is_some_and(|e| e == "list") {
            entries.extend(one_line_entries(&text));
        }
    }
    let debian_suite = |suite: &str| DEBIAN_CODENAMES.contains(&suite.split('-').next().unwrap());
    let debian = entries
        .iter()
        .find(|(_, s, _)| debian_suite(s) && !s.ends_with("-security"))
        .context(
            "no Debian archive in the apt sources (/etc/apt/sources.list, \
             /etc/apt/sources.list.d): the kernel matrix fetches Debian's kernels from it",
        )?;
    let security = entries
        .iter()
        .find(|(_, s, _)| debian_suite(s) && s.ends_with("-security"));
    let keyring = debian
        .2
        .clone()
        .filter(|k| k.starts_with('/'))
        .unwrap_or_else(|| DEFAULT_KEYRING.into());
    Ok(Archive {
        debian: debian.0.clone(),
        security: security.map(|s| s.0.clone()),
        keyring,
    })
}

fn one_line_entries(text: &str) -> Vec<(String, String, Option<String>)> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        let Some(rest) = line.strip_prefix("deb ") else {
            continue;
        };
        let mut rest = rest.trim();
        let mut signed_by = None;
        if let Some(opts) = rest.strip_prefix('[') {
            let Some((opts, tail)) = opts.split_once(']') else {
                continue;
            };
            signed_by = opts
                .split_whitespace()
                .find_map(|o| o.strip_prefix("signed-by="))
                .map(str::to_owned);
            rest = tail.trim();
        }
        let mut words = rest.split_whitespace();
        if let (Some(uri), Some(suite)) = (words.next(), words.next()) {
            out.push((uri.to_owned(), suite.to_owned(), signed_by));
        }
    }
    out
}

fn deb822_entries(text: &str) -> Vec<(String, String, Option<String>)> {
    let mut out = Vec::new();
    for stanza in text.split("\n\n") {
        let field = |name: &str| {
            stanza.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case(name)
                    .then(|| v.trim().to_owned())
            })
        };
        let types = field("Types").unwrap_or_default();
        if !types.split_whitespace().any(|t| t == "deb")
            || field("Enabled").is_some_and(|e| e.eq_ignore_ascii_case("no"))
        {
            continue;
        }
        let signed_by = field("Signed-By");
        for uri in field("URIs").unwrap_or_default().split_whitespace() {
            for suite in field("Suites").unwrap_or_default().split_whitespace() {
                out.push((uri.to_owned(), suite.to_owned(), signed_by.clone()));
            }
        }
    }
    out
}

/// This machine's Debian codename (e.g. bookworm), from /etc/os-release.
fn codename() -> Option<String> {
    fs::read_to_string("/etc/os-release")
        .ok()?
        .lines()
        .find_map(|l| {
            l.strip_prefix("VERSION_CODENAME=")
                .map(|v| v.trim_matches('"').to_owned())
        })
}

/// The suite QEMU comes from: this release's backports (see [`super::qemu`]).
pub fn qemu_suite() -> String {
    format!(
        "{}-backports",
        codename().unwrap_or_else(|| "bookworm".into())
    )
}

/// Writes a view's sources list: every suite of the series of its
/// architecture, and, in this host's, the suite QEMU is installed from.
fn write_sources(arch: Arch, archive: &Archive) -> Result<String> {
    let mut suites: Vec<String> = Vec::new();
    for suite in SERIES
        .iter()
        .filter(|s| s.arch == arch)
        .flat_map(|s| s.suites.iter().map(|s| s.to_string()))
        .chain(arch.is_host().then(qemu_suite))
    {
        if !suites.contains(&suite) {
            suites.push(suite);
        }
    }
    let mut list =
        String::from("# Written by cargo xtask (kernel matrix); not the system's sources.\n");
    for suite in &suites {
        let uri = if suite.ends_with("-security") {
            match &archive.security {
                Some(uri) => uri,
                None => {
                    println!(
                        "xtask kernels: no Debian security archive configured; skipping {suite}"
                    );
                    continue;
                }
            }
        } else {
            &archive.debian
        };
        list.push_str(&format!(
            "deb [signed-by={}] {uri} {suite} main\n",
            archive.keyring
        ));
    }
    let apt = apt_dir(arch)?;
    for d in ["lists/partial", "cache/archives/partial"] {
        fs::create_dir_all(apt.join(d))?;
    }
    fs::write(apt.join("sources.list"), &list)?;
    Ok(list)
}

fn marker(arch: Arch) -> Result<PathBuf> {
    Ok(apt_dir(arch)?.join("updated"))
}

pub fn lists_age(arch: Arch) -> Option<Duration> {
    let modified = fs::metadata(marker(arch).ok()?).ok()?.modified().ok()?;
    SystemTime::now().duration_since(modified).ok()
}

/// Refreshes a private view's package lists.
fn update(arch: Arch) -> Result<()> {
    let archive = configured_archive()?;
    let list = write_sources(arch, &archive)?;
    println!(
        "xtask kernels: updating the package lists ({}) of the private apt view {}:",
        arch.debian(),
        apt_dir(arch)?.join("sources.list").display()
    );
    for line in list.lines().filter(|l| l.starts_with("deb ")) {
        println!("xtask kernels:   {line}");
    }
    let started = Instant::now();
    let mut c = apt(arch, "apt-get")?;
    // apt-get update exits 0 when it could not fetch a list, unless told.
    c.args(["update", "-q", "--error-on=any"]);
    cmd::run(&mut c).context(
        "updating the private apt view failed (offline, or the Debian archive unreachable?)",
    )?;
    fs::write(marker(arch)?, "")?;
    println!(
        "xtask kernels: package lists updated in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Makes sure a private view's lists exist and are not older than a
/// week (or refreshes them when `refresh`). Returns false when they could
/// not be refreshed but older ones exist.
pub fn ensure_lists(arch: Arch, refresh: bool) -> Result<bool> {
    let age = lists_age(arch);
    if !refresh && age.is_some_and(|a| a < LISTS_MAX_AGE) {
        return Ok(true);
    }
    match update(arch) {
        Ok(()) => Ok(true),
        Err(e) if age.is_some() => {
            println!("xtask kernels: {e:#}; using the package lists from before");
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

fn dpkg_newer(a: &str, b: &str) -> bool {
    Command::new("dpkg")
        .args(["--compare-versions", a, "gt", b])
        .status()
        .is_ok_and(|s| s.success())
}

/// The newest `linux-image-cloud-<arch>` in the series' suites, and the
/// versioned kernel package it depends on.
pub fn resolve(series: &Series) -> Result<(String, String)> {
    let package = meta(series.arch);
    let madison = cmd::output(apt(series.arch, "apt-cache")?.args(["madison", &package]))
        .with_context(|| format!("apt-cache madison {package} in the private view"))?;
    // "pkg | version | uri suite/component arch Packages"
    let mut best: Option<String> = None;
    for line in madison.lines() {
        let fields: Vec<&str> = line.split('|').map(str::trim).collect();
        let (Some(version), Some(source)) = (fields.get(1), fields.get(2)) else {
            continue;
        };
        let suite = source
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.split('/').next())
            .unwrap_or("");
        if series.suites.contains(&suite) && best.as_deref().is_none_or(|b| dpkg_newer(version, b))
        {
            best = Some((*version).to_owned());
        }
    }
    let current = best.with_context(|| {
        format!(
            "no {package} in {} (package lists of the private view)",
            series.suites.join(", ")
        )
    })?;
    let show =
        cmd::output(apt(series.arch, "apt-cache")?.args(["show", &format!("{package}={current}")]))
            .with_context(|| format!("apt-cache show {package}={current}"))?;
    let depends = show
        .lines()
        .find_map(|l| l.strip_prefix("Depends:"))
        .with_context(|| format!("{package} {current} has no Depends"))?;
    // "linux-image-6.1.0-56-cloud-amd64 (= 6.1.192-2)"
    for dep in depends.split(',') {
        let dep = dep.trim();
        if let Some((name, rest)) = dep.split_once(" (= ")
            && name.starts_with("linux-image-")
        {
            let version = rest.trim_end_matches(')').trim().to_owned();
            anyhow::ensure!(
                name.starts_with(&format!("linux-image-{}.", series.version)),
                "{package} {current} in {} depends on {name}, not a {} kernel",
                series.suites.join(", "),
                series.version
            );
            return Ok((name.to_owned(), version));
        }
    }
    bail!("{package} {current}: no linux-image dependency in {depends}")
}
