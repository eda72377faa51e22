//! Series names in; Debian's cloud kernels ready to boot, and the QEMU that
//! boots them, out.
//!
//! Each series ([`series`]) is the newest cloud kernel of its Debian
//! suites, fetched through a private apt view ([`apt`]) and kept in the
//! cache with only its vmlinuz, config and the netfilter modules the
//! transparency check loads.

mod apt;
mod series;

pub use series::{SERIES, Series, select};

use std::{fs, path::PathBuf, process::Command, time::Instant};

use anyhow::{Context as _, Result, bail};

use self::apt::{LISTS_MAX_AGE, apt, apt_dir, ensure_lists, lists_age, qemu_suite, resolve};
use crate::{cache, cmd};

/// A kernel ready to boot.
pub struct Kernel {
    pub series: &'static Series,
    /// e.g. linux-image-6.1.0-56-cloud-amd64
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
        apt("apt-get")?
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
    let all_cached = series.iter().all(|s| cached(s).is_some());
    let fresh = lists_age().is_some_and(|a| a < LISTS_MAX_AGE);
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
    let online = match ensure_lists(refresh) {
        Ok(online) => online,
        Err(e) if all_cached => {
            println!("xtask kernels: {e:#}; using the cached kernels");
            return Ok(series.iter().filter_map(|s| cached(s)).collect());
        }
        Err(e) => return Err(e),
    };
    let mut kernels = Vec::new();
    for s in series {
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

/// The QEMU binary the matrix runs.
pub const QEMU: &str = "qemu-system-x86_64";

/// Installs QEMU (needs root) when it is missing. It comes from this
/// release's backports through the private view: the machines this project
/// runs on carry qemu-utils from backports, which Breaks the older
/// qemu-system-common of the release itself, so installing the release's
/// QEMU would remove it. `--no-remove` makes apt refuse rather than remove
/// anything.
pub fn qemu() -> Result<()> {
    if cmd::output(Command::new(QEMU).arg("--version")).is_some() {
        println!("xtask setup: {QEMU} is installed");
        return Ok(());
    }
    let suite = qemu_suite();
    println!(
        "xtask setup: missing {QEMU}: cargo xtask matrix boots Debian kernels under QEMU (TCG); \
         installing qemu-system-x86 from {suite}"
    );
    if !cmd::is_root() {
        bail!(
            "not root, so not installing QEMU; run as root: cargo xtask setup \
             (it installs qemu-system-x86 from {suite} through {})",
            apt_dir()?.join("sources.list").display()
        );
    }
    ensure_lists(false)?;
    let mut c = apt("apt-get")?;
    c.args([
        "install",
        "-y",
        "-q",
        "--no-install-recommends",
        "--no-remove",
    ])
    .args(["-t", &suite, "qemu-system-x86"])
    .env("DEBIAN_FRONTEND", "noninteractive");
    cmd::run(&mut c)?;
    Ok(())
}
