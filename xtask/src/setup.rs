//! `cargo xtask setup`: everything a fresh Debian 12 machine lacks to build
//! sockerr, installed by the project itself, in three sets: what building
//! needs ([`build`]: rustup components and bpf-linker), what the tests,
//! benchmarks and the kernel matrix use besides ([`run`], [`all`]), and what
//! release artifacts need ([`dist`]: the targets' standard libraries, their
//! C toolchains, cargo-deb). Idempotent.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::{
    arch::{ARCHES, Arch},
    cache, cmd, kernels,
};

/// Debian packages the tests, benchmarks and the kernel matrix use, with
/// the reason. Building needs none of them.
const PACKAGES: &[(&str, &str)] = &[
    (
        "bpftool",
        "tests check that no sockerr program stays loaded",
    ),
    (
        "libevent-dev",
        "tests build a real libevent 2.1 evhttp client",
    ),
    (
        "prometheus",
        "promtool validates the exposition, alert rules and dashboards",
    ),
    (
        "bpftrace",
        "the benchmark compares against a hand-written bpftrace script",
    ),
    ("strace", "the benchmark compares against strace"),
    ("wrk", "the benchmark drives nginx with a TLS upstream"),
    (
        "curl",
        "tests run curl as a well-behaved client, and against the agent's TLS and basic auth",
    ),
    ("gcc", "tests compile the libevent client"),
    (
        "libc6-dev",
        "tests link a static client to run in a container (libc.a)",
    ),
    (
        "runc",
        "tests run clients in real OCI containers (cgroups, namespaces)",
    ),
    (
        "binutils",
        "the kernel matrix strips debug info from its binaries (objcopy)",
    ),
    (
        "nodejs",
        "tests run Node's net.connect as a well-behaved client",
    ),
    (
        "python3",
        "tests run Python's asyncio as a well-behaved client",
    ),
    (
        "python3-venv",
        "setup makes a venv for the Kubernetes manifest validator",
    ),
    ("systemd", "tests check the unit file with systemd-analyze"),
    (
        "util-linux",
        "tests run the agent with reduced capabilities (setpriv)",
    ),
    (
        "squid",
        "tests run squid 5.7 as a real proxy told of a refused upstream",
    ),
    (
        "php-cli",
        "tests run PHP's async stream client, which never checks its connect",
    ),
    (
        "nginx-light",
        "tests run nginx with an https upstream (reads SO_ERROR twice) and a plain one",
    ),
    ("haproxy", "tests run haproxy with a refused backend"),
    (
        "openssl",
        "tests make certificates and run a TLS upstream (s_server)",
    ),
    (
        "iproute2",
        "tests make network namespaces of their own (ip netns)",
    ),
    (
        "procps",
        "tests set per-namespace sysctls (ports, SYN retries)",
    ),
    (
        "busybox-static",
        "the kernel matrix VMs' init and shell (a static binary in the initramfs)",
    ),
    (
        "iptables",
        "the transparency check reads a large iptables-legacy ruleset (on the host and in the VMs)",
    ),
    (
        "xz-utils",
        "the kernel matrix unpacks the netfilter modules of kernels that compress them",
    ),
    (
        "golang-go",
        "tests read the agent's logfmt with go-logfmt, the parser Loki and Promtail use",
    ),
    (
        "golang-github-go-logfmt-logfmt-dev",
        "tests read the agent's logfmt with go-logfmt (its source, built offline)",
    ),
    (
        "umoci",
        "tests unpack the release image into a runtime bundle (runc runs it)",
    ),
    (
        "skopeo",
        "tests read the release image as oci-archive and docker-archive",
    ),
];

/// What building the agent needs: the toolchains' components and bpf-linker.
pub fn build() -> Result<()> {
    println!("xtask setup: checking what building sockerr needs");
    rust_components()?;
    let linker = bpf_linker()?;
    println!("xtask setup: bpf-linker ready at {}", linker.display());
    Ok(())
}

/// [`build`], and what the tests and benchmarks use: tracefs, the Debian
/// packages of [`PACKAGES`], the Python tools.
pub fn run() -> Result<()> {
    build()?;
    println!("xtask setup: checking what the tests and benchmarks use");
    tracefs()?;
    debian_packages(PACKAGES)?;
    python_tools()?;
    println!("xtask setup: done");
    Ok(())
}

/// `cargo xtask setup --tests`: all of [`run`], what building for the other
/// architectures needs (the kernel matrix runs a cross-built agent), and
/// what the kernel matrix boots (QEMU for each architecture, Debian's
/// kernels, the arm64 VMs' busybox and iptables), which the matrix
/// otherwise fetches when it runs.
pub fn all() -> Result<()> {
    run()?;
    for arch in cross_arches() {
        cross(arch)?;
    }
    kernels::qemu(&ARCHES)?;
    let series: Vec<_> = kernels::SERIES.iter().collect();
    kernels::ensure(&series, false)?;
    for arch in cross_arches() {
        kernels::userland(arch, false)?;
    }
    Ok(())
}

/// What building the release agent for `target` needs: its standard
/// library and its Debian packages (the C toolchain).
pub fn dist_target(target: &crate::dist::Target) -> Result<()> {
    rust_target(target.triple)?;
    debian_packages(target.packages)
}

/// cargo-deb, which `cargo xtask dist` makes the .deb with: the version
/// the package metadata in agent/Cargo.toml is written for.
const CARGO_DEB: &str = "3.8.0";

/// [`build`], and what release artifacts for `targets` need: each target's
/// standard library and Debian packages (its C toolchain), and cargo-deb.
/// Returns the directory to put on PATH for cargo-deb.
pub fn dist(targets: &[&crate::dist::Target]) -> Result<PathBuf> {
    build()?;
    println!("xtask setup: checking what release artifacts need");
    for target in targets {
        dist_target(target)?;
    }
    cargo_deb()
}

/// cargo-deb [`CARGO_DEB`] in xtask's cache; its bin directory.
fn cargo_deb() -> Result<PathBuf> {
    let root = cache::dir()?.join("cargo-deb").join(CARGO_DEB);
    let bin = root.join("bin");
    if cmd::output(Command::new(bin.join("cargo-deb")).arg("--version"))
        .is_some_and(|v| v.contains(CARGO_DEB))
    {
        println!(
            "xtask setup: cargo-deb {CARGO_DEB} ready in {}",
            bin.display()
        );
        return Ok(bin);
    }
    println!(
        "xtask setup: building cargo-deb {CARGO_DEB} into {} (makes the .deb; a few minutes)",
        root.display()
    );
    cmd::run(
        Command::new("cargo")
            .args(["install", "cargo-deb", "--version", CARGO_DEB, "--locked"])
            .arg("--root")
            .arg(&root),
    )?;
    Ok(bin)
}

/// Puts the bpf-linker built by `setup` first on PATH for child processes, so
/// aya-build (run from agent/build.rs) finds it.
pub fn export_path() -> Result<()> {
    let joined = cmd::path_with(&linker_dir()?.join("bin"))?;
    // SAFETY: xtask is single-threaded when it sets up its environment.
    unsafe { std::env::set_var("PATH", joined) };
    Ok(())
}

/// The rustup components each toolchain needs: the nightly builds and lints
/// the eBPF crate (`-Z build-std=core` needs rust-src), the active toolchain
/// builds and lints the rest. A missing nightly is installed; an installed
/// one is never updated here (bpf-linker is built against its LLVM).
fn rust_components() -> Result<()> {
    let rustup = |toolchain: Option<&str>, args: &[&str]| {
        let mut c = Command::new("rustup");
        c.args(args);
        if let Some(t) = toolchain {
            c.args(["--toolchain", t]);
        }
        c
    };
    let installed = |t| cmd::output(&mut rustup(t, &["component", "list", "--installed"]));
    if installed(Some("nightly")).is_none() {
        println!("xtask setup: installing the nightly toolchain (the eBPF programs need it)");
        cmd::run(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))?;
    }
    for (toolchain, needed) in [
        (Some("nightly"), ["rust-src", "clippy"]),
        (None, ["rustfmt", "clippy"]),
    ] {
        let name = toolchain.unwrap_or("the active toolchain");
        let have = installed(toolchain).with_context(|| format!("rustup: no {name}"))?;
        let missing: Vec<_> = needed
            .into_iter()
            .filter(|c| !have.lines().any(|l| l.starts_with(c)))
            .collect();
        if missing.is_empty() {
            println!("xtask setup: {name} has {}", needed.join(", "));
            continue;
        }
        println!("xtask setup: adding {} to {name}", missing.join(", "));
        let mut add = rustup(toolchain, &["component", "add"]);
        cmd::run(add.args(missing))?;
    }
    Ok(())
}

/// The architectures other than this host's: the kernel matrix runs the
/// agent on each, so it is cross-built for them.
fn cross_arches() -> Vec<Arch> {
    ARCHES.into_iter().filter(|a| !a.is_host()).collect()
}

/// What building for `arch`, not this host's, needs (`cargo xtask build
/// --target`, the kernel matrix's rows of that architecture): its Rust
/// standard library, Debian's cross compiler and C library. The eBPF object
/// needs no target of its own: it is bpfel whatever the agent's
/// architecture.
pub fn cross(arch: Arch) -> Result<()> {
    rust_target(arch.rust_target())?;
    let [gcc, libc] = arch.cross_packages();
    let target = arch.rust_target();
    let why_gcc = format!("building for {target} links with it");
    let why_libc = format!("the C library {target} links against");
    debian_packages(&[(&gcc, &why_gcc), (&libc, &why_libc)])
}

/// Rust's standard library for `target`, for the active toolchain.
fn rust_target(target: &str) -> Result<()> {
    let installed = cmd::output(Command::new("rustup").args(["target", "list", "--installed"]))
        .context("rustup target list --installed")?;
    if installed.lines().any(|l| l.trim() == target) {
        println!("xtask setup: the Rust target {target} is installed");
        return Ok(());
    }
    println!("xtask setup: adding the Rust target {target}");
    cmd::run(Command::new("rustup").args(["target", "add", target]))
}

/// The nightly toolchain's own libLLVM: bpf-linker is built against it
/// because Debian 12 has no LLVM as new as the nightly's.
fn nightly_llvm() -> Result<PathBuf> {
    let sysroot = cmd::output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))
        .context("asking the nightly toolchain for its sysroot")?;
    let lib = Path::new(sysroot.trim()).join("lib");
    fs::read_dir(&lib)
        .with_context(|| format!("reading {}", lib.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libLLVM.so."))
        })
        .with_context(|| format!("no libLLVM.so.* in {}", lib.display()))
}

/// One directory per nightly libLLVM, so a nightly update builds a new linker
/// instead of reusing one linked against a library that no longer exists.
fn linker_dir() -> Result<PathBuf> {
    let llvm = nightly_llvm()?;
    let name = llvm.file_name().unwrap().to_string_lossy().into_owned();
    Ok(cache::dir()?.join("bpf-linker").join(name))
}

fn bpf_linker() -> Result<PathBuf> {
    let dir = linker_dir()?;
    let linker = dir.join("bin/bpf-linker");
    if cmd::output(Command::new(&linker).arg("--version")).is_some() {
        return Ok(linker);
    }
    println!(
        "xtask setup: building bpf-linker 0.13.0 against the nightly's libLLVM into {} (about a minute)",
        dir.display()
    );
    // bpf-linker's build script only needs llvm-config to exist and libLLVM in
    // $LLVM_PREFIX/lib; the binary's RUNPATH then points into this prefix.
    let llvm = nightly_llvm()?;
    let feature = llvm_feature(&llvm)?;
    let prefix = dir.join("llvm");
    fs::create_dir_all(prefix.join("bin"))?;
    fs::create_dir_all(prefix.join("lib"))?;
    let config = prefix.join("bin/llvm-config");
    fs::write(&config, "#!/bin/sh\n")?;
    fs::set_permissions(&config, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    for link in ["libLLVM.so".into(), llvm.file_name().unwrap().to_owned()] {
        let path = prefix.join("lib").join(link);
        let _ = fs::remove_file(&path);
        std::os::unix::fs::symlink(&llvm, &path)?;
    }
    cmd::run(
        Command::new("cargo")
            .args(["install", "bpf-linker", "--version", "0.13.0", "--locked"])
            .args([
                "--no-default-features",
                "--features",
                &feature,
                "--force",
                "--root",
            ])
            .arg(&dir)
            .env("LLVM_PREFIX", &prefix),
    )?;
    cmd::output(Command::new(&linker).arg("--version"))
        .with_context(|| format!("{} was built but does not run", linker.display()))?;
    Ok(linker)
}

/// bpf-linker's feature for an LLVM major version (`libLLVM.so.22.1-rust-…`
/// → `llvm-22`): 0.13.0 builds against LLVM 21 to 23.
fn llvm_feature(lib: &Path) -> Result<String> {
    let name = lib.file_name().unwrap_or_default().to_string_lossy();
    let major: u32 = name
        .trim_start_matches("libLLVM.so.")
        .split(['.', '-'])
        .next()
        .and_then(|m| m.parse().ok())
        .with_context(|| format!("no LLVM version in {name}"))?;
    anyhow::ensure!(
        (21..=23).contains(&major),
        "the nightly's LLVM {major} ({name}) is not one bpf-linker 0.13.0 supports (21 to 23): \
         install a nightly of that range (rustup toolchain install nightly-YYYY-MM-DD) \
         or move bpf-linker to a release that supports LLVM {major}"
    );
    Ok(format!("llvm-{major}"))
}

fn tracefs() -> Result<()> {
    let dir = Path::new("/sys/kernel/tracing");
    if dir.join("events").is_dir() {
        println!("xtask setup: tracefs is mounted");
        return Ok(());
    }
    if !cmd::is_root() {
        bail!("tracefs is not mounted; as root run: mount -t tracefs tracefs /sys/kernel/tracing");
    }
    println!(
        "xtask setup: mounting tracefs on /sys/kernel/tracing (tracepoint formats live there)"
    );
    cmd::run(
        Command::new("mount")
            .args(["-t", "tracefs", "tracefs"])
            .arg(dir),
    )
}

/// Python tools the tests use, in a venv of their own: the Kubernetes
/// manifest validator ships the Kubernetes JSON schemas (works offline).
const PYTHON_TOOLS: &[&str] = &["kubernetes-validate==1.37.0"];

pub fn venv() -> Result<PathBuf> {
    Ok(cache::dir()?.join("venv"))
}

fn python_tools() -> Result<()> {
    let venv = venv()?;
    let marker = venv.join(PYTHON_TOOLS.join(" "));
    if marker.exists() {
        println!(
            "xtask setup: Python tools are installed in {}",
            venv.display()
        );
        return Ok(());
    }
    println!(
        "xtask setup: installing {} into {} (tests validate the Kubernetes manifests)",
        PYTHON_TOOLS.join(" "),
        venv.display()
    );
    cmd::run(
        Command::new("python3")
            .args(["-m", "venv", "--clear"])
            .arg(&venv),
    )?;
    cmd::run(
        Command::new(venv.join("bin/pip"))
            .args(["install", "-q", "--disable-pip-version-check"])
            .args(PYTHON_TOOLS),
    )?;
    fs::write(marker, "")?;
    Ok(())
}

fn debian_packages(packages: &[(&str, &str)]) -> Result<()> {
    let missing: Vec<_> = packages
        .iter()
        .filter(|(name, _)| {
            !cmd::output(Command::new("dpkg-query").args(["-W", "-f=${Status}", name]))
                .is_some_and(|s| s.contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        println!("xtask setup: Debian packages are installed");
        return Ok(());
    }
    for (name, why) in &missing {
        println!("xtask setup: missing Debian package {name}: {why}");
    }
    let names: Vec<_> = missing.iter().map(|(n, _)| *n).collect();
    if !cmd::is_root() {
        bail!(
            "not root, so not installing packages; run:\n  sudo apt-get update && sudo apt-get install -y --no-install-recommends {}",
            names.join(" ")
        );
    }
    cmd::run(Command::new("apt-get").args(["update", "-q"]))?;
    // --no-remove: never take away a package the machine has to make room.
    cmd::run(
        Command::new("apt-get")
            .args([
                "install",
                "-y",
                "-q",
                "--no-install-recommends",
                "--no-remove",
            ])
            .args(&names)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llvm_feature_follows_the_nightly_major() {
        let lib = |n: &str| PathBuf::from("/sysroot/lib").join(n);
        assert_eq!(
            llvm_feature(&lib("libLLVM.so.22.1-rust-1.97.0-nightly")).unwrap(),
            "llvm-22"
        );
        assert_eq!(llvm_feature(&lib("libLLVM.so.21")).unwrap(), "llvm-21");
        assert!(llvm_feature(&lib("libLLVM.so.24.0-rust-1.99.0-nightly")).is_err());
        assert!(llvm_feature(&lib("libLLVM.so")).is_err());
    }
}
