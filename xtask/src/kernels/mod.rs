//! Series names in; Debian's cloud kernels ready to boot, the QEMU that
//! boots them, and the programs of another architecture's VMs, out.
//!
//! Each series ([`series`]) is the newest cloud kernel of its Debian
//! suites and architecture, fetched through a private apt view ([`apt`])
//! and kept in the cache with only its vmlinuz, config and the netfilter
//! modules the transparency check loads. An arm64 VM's busybox, iptables
//! and C libraries are Debian's arm64 packages, unpacked ([`userland`]).

mod apt;
mod series;
mod userland;

pub use series::{ABSENT, SERIES, Series, select};
pub use userland::{resolve_in, userland};

use std::{fs, path::PathBuf, process::Command, time::Instant};

use anyhow::{Context as _, Result, bail};

use self::apt::{LISTS_MAX_AGE, apt, apt_dir, ensure_lists, lists_age, qemu_suite, resolve};
use crate::{arch::Arch, cache, cmd};

/// A kernel ready to boot.
pub struct Kernel {
    pub series: &'static Series,
    /// e.g. linux-image-6.1.0-56-cloud-amd64, linux-image-6.1.0-50-cloud-arm64
    pub package: String,
    pub version: String,
    pub vmlinuz: PathBuf,
    /// The modules of [`NETFILTER_MODULES`], uncompressed, in load order.
    pub modules: Vec<PathBuf>,
}

/// What iptables-legacy needs of a kernel that builds it as modules (every
/// Debian kernel of the matrix), in the order they load: the transparency
/// check reads a large ruleset through it.
pub const NETFILTER_MODULES: [&str; 3] = [
    "net/netfilter/x_tables",
    "net/ipv4/netfilter/ip_tables",
    "net/ipv4/netfilter/iptable_filter",
];

impl Kernel {
    /// The kernel release, e.g. 6.1.0-56-cloud-amd64.
    pub fn release(&self) -> &str {
        release_of(&self.package)
    }
}

/// linux-image-6.1.0-56-cloud-amd64 → 6.1.0-56-cloud-amd64.
fn release_of(package: &str) -> &str {
    package.strip_prefix("linux-image-").unwrap_or(package)
}

/// What a series' cache directory holds: vmlinuz, config, `package`
/// ("name version") and `modules/<name>.ko`.
fn cached(series: &'static Series) -> Option<Kernel> {
    let d = cache::kernels().ok()?.join(series.name);
    let text = fs::read_to_string(d.join("package")).ok()?;
    let (package, version) = text.trim().split_once(' ')?;
    let vmlinuz = d.join("vmlinuz");
    let modules: Vec<PathBuf> = NETFILTER_MODULES
        .iter()
        .map(|m| d.join("modules").join(format!("{}.ko", module_name(m))))
        .collect();
    (vmlinuz.is_file() && modules.iter().all(|m| m.is_file())).then(|| Kernel {
        series,
        package: package.to_owned(),
        version: version.to_owned(),
        vmlinuz,
        modules,
    })
}

/// net/ipv4/netfilter/ip_tables → ip_tables.
fn module_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// Downloads the package and keeps only its vmlinuz, config and the
/// netfilter modules (uncompressed: busybox's insmod takes plain `.ko`).
fn download(series: &'static Series, package: &str, version: &str) -> Result<Kernel> {
    let d = cache::kernels()?.join(series.name);
    let tmp = cache::kernels()?.join(format!("{}.download", series.name));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp)?;
    println!(
        "xtask kernels: downloading {package} {version} ({})",
        series.from
    );
    let started = Instant::now();
    cmd::run(
        apt(series.arch, "apt-get")?
            .args(["download", "-q", &format!("{package}={version}")])
            .current_dir(&tmp),
    )
    .with_context(|| format!("downloading {package} {version}"))?;
    let deb = fs::read_dir(&tmp)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .context("apt-get download left no .deb")?;
    let size = fs::metadata(&deb)?.len();
    // /boot/vmlinuz-*, /boot/config-* and a few modules (BTF is built into
    // the image); 6.12's modules are xz-compressed.
    let release = release_of(package);
    let modules = NETFILTER_MODULES
        .map(|m| format!("'./lib/modules/{release}/kernel/{m}.ko*'"))
        .join(" ");
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!(
            r#"dpkg-deb --fsys-tarfile "$1" | tar -x --wildcards -C "$2" "./boot/vmlinuz-$3" "./boot/config-$3" {modules}"#
        ))
        .args(["sh"])
        .arg(&deb)
        .arg(&tmp)
        .arg(release)
        .status()?;
    anyhow::ensure!(
        status.success(),
        "extracting vmlinuz-{release} and its netfilter modules from {}",
        deb.display()
    );
    let kept = tmp.join("modules");
    fs::create_dir_all(&kept)?;
    for m in NETFILTER_MODULES {
        let base = tmp.join(format!("lib/modules/{release}/kernel/{m}.ko"));
        let name = kept.join(format!("{}.ko", module_name(m)));
        let xz = base.with_extension("ko.xz");
        if xz.is_file() {
            cmd::run(Command::new("xz").arg("-d").arg(&xz))
                .with_context(|| format!("decompressing {} (xz-utils)", xz.display()))?;
        }
        fs::rename(&base, &name).with_context(|| {
            format!("{m}.ko is not in {package}: modules compressed otherwise?")
        })?;
    }
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(&d)?;
    fs::rename(
        tmp.join(format!("boot/vmlinuz-{release}")),
        d.join("vmlinuz"),
    )?;
    fs::rename(tmp.join(format!("boot/config-{release}")), d.join("config"))?;
    fs::rename(&kept, d.join("modules"))?;
    fs::write(d.join("package"), format!("{package} {version}\n"))?;
    fs::remove_dir_all(&tmp)?;
    println!(
        "xtask kernels: {package} {version}: {:.1} MB downloaded in {:.1} s, kept {}",
        size as f64 / 1e6,
        started.elapsed().as_secs_f64(),
        d.join("vmlinuz").display()
    );
    cached(series).context("the kernel just extracted is not in the cache")
}

/// Kernels of `series`, from the cache, or the newest package of each
/// (downloaded when the cache holds another version). With `refresh`, the
/// package lists are refreshed even when less than a week old.
pub fn ensure(series: &[&'static Series], refresh: bool) -> Result<Vec<Kernel>> {
    let mut arches: Vec<Arch> = Vec::new();
    for s in series {
        if !arches.contains(&s.arch) {
            arches.push(s.arch);
        }
    }
    let all_cached = series.iter().all(|s| cached(s).is_some());
    let fresh = arches
        .iter()
        .all(|a| lists_age(*a).is_some_and(|age| age < LISTS_MAX_AGE));
    if all_cached && fresh && !refresh {
        let kernels: Vec<Kernel> = series.iter().filter_map(|s| cached(s)).collect();
        for k in &kernels {
            println!(
                "xtask kernels: {} kernel {} {} is cached in {}",
                k.series.name,
                k.package,
                k.version,
                k.vmlinuz.parent().unwrap().display()
            );
        }
        return Ok(kernels);
    }
    // Per architecture: whether its lists are fresh (online), or could not
    // be refreshed while its kernels are cached (offline: the cache is used).
    let mut online = Vec::new();
    for arch in arches {
        let arch_cached = series
            .iter()
            .filter(|s| s.arch == arch)
            .all(|s| cached(s).is_some());
        match ensure_lists(arch, refresh) {
            Ok(fresh) => online.push((arch, Some(fresh))),
            Err(e) if arch_cached => {
                println!(
                    "xtask kernels: {e:#}; using the cached {} kernels",
                    arch.debian()
                );
                online.push((arch, None));
            }
            Err(e) => return Err(e),
        }
    }
    let mut kernels = Vec::new();
    for s in series {
        let online = match online.iter().find(|(a, _)| *a == s.arch) {
            Some((_, Some(online))) => *online,
            _ => {
                kernels.push(cached(s).context("checked above: cached")?);
                continue;
            }
        };
        let kernel = match resolve(s) {
            Ok((package, version)) => match cached(s) {
                Some(k) if k.package == package && k.version == version => {
                    println!(
                        "xtask kernels: {} kernel {package} {version} is cached",
                        s.name
                    );
                    k
                }
                old => match download(s, &package, &version) {
                    Ok(k) => k,
                    Err(e) => match old {
                        Some(k) => {
                            println!(
                                "xtask kernels: {e:#}; using the cached {} {} instead",
                                k.package, k.version
                            );
                            k
                        }
                        None => return Err(e),
                    },
                },
            },
            Err(e) => match cached(s) {
                Some(k) if !online => {
                    println!("xtask kernels: {e:#}; using the cached {}", k.package);
                    k
                }
                _ => return Err(e),
            },
        };
        kernels.push(kernel);
    }
    Ok(kernels)
}

/// Installs the QEMU of each of `arches` (needs root) when one is
/// missing. They come from this release's backports through the host's
/// private view: the machines this project runs on carry qemu-utils from
/// backports, which Breaks the older qemu-system-common of the release
/// itself, so installing the release's QEMU would remove it; and every
/// qemu-system-* depends on the very version of qemu-system-common, so
/// they are installed together, from one suite, in one apt run (which
/// upgrades an installed one rather than leave them apart). `--no-remove`
/// makes apt refuse rather than remove anything.
pub fn qemu(arches: &[Arch]) -> Result<()> {
    let missing: Vec<Arch> = arches
        .iter()
        .copied()
        .filter(|a| cmd::output(Command::new(a.qemu().0).arg("--version")).is_none())
        .collect();
    for a in arches.iter().filter(|a| !missing.contains(a)) {
        println!("xtask setup: {} is installed", a.qemu().0);
    }
    if missing.is_empty() {
        return Ok(());
    }
    let suite = qemu_suite();
    let packages: Vec<&str> = arches.iter().map(|a| a.qemu().1).collect();
    for a in &missing {
        println!(
            "xtask setup: missing {}: cargo xtask matrix boots Debian's {} kernels under it (TCG)",
            a.qemu().0,
            a.debian()
        );
    }
    println!(
        "xtask setup: installing {} from {suite} (together: they share qemu-system-common)",
        packages.join(" ")
    );
    let host = Arch::host()?;
    if !cmd::is_root() {
        bail!(
            "not root, so not installing QEMU; run as root: cargo xtask setup \
             (it installs {} from {suite} through {})",
            packages.join(" "),
            apt_dir(host)?.join("sources.list").display()
        );
    }
    ensure_lists(host, false)?;
    let mut c = apt(host, "apt-get")?;
    c.args([
        "install",
        "-y",
        "-q",
        "--no-install-recommends",
        "--no-remove",
    ])
    .args(["-t", &suite])
    .args(&packages)
    .env("DEBIAN_FRONTEND", "noninteractive");
    cmd::run(&mut c)?;
    Ok(())
}
