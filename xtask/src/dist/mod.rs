//! `cargo xtask dist`: the release artifacts, in `target/dist/`. Per target,
//! one static binary (musl: it runs on any Linux whatever its C library),
//! shipped three ways, byte for byte the same file in each:
//!
//! - `sockerr-<version>.linux-<arch>.tar.gz`: the binary, the systemd unit,
//!   its defaults file, the alert rules, the web configuration example, the
//!   README and the licenses;
//! - `sockerr_<version>-1_<arch>.deb` (cargo-deb, from the metadata in
//!   agent/Cargo.toml): /usr/bin/sockerr, the unit (enabled and started on
//!   install, restarted on upgrade), /etc/default/sockerr as a conffile;
//! - `sockerr-<version>.linux-<arch>.oci.tar`: an OCI image archive
//!   ([`oci`]) of that binary alone, loadable by podman, skopeo, containerd
//!   and Docker;
//!
//! and `SHA256SUMS` over all of them (`sha256sum -c SHA256SUMS`).

mod oci;

use std::{
    fs,
    io::Write as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::{cmd, setup};

#[derive(clap::Args, Default)]
pub struct Options {
    /// Rust target triple to build for (repeatable); default: every target
    /// of the table in xtask/src/dist/mod.rs.
    #[arg(long = "target", value_name = "TRIPLE")]
    targets: Vec<String>,
}

/// A target the artifacts are built for.
pub struct Target {
    /// Rust's name for it.
    pub triple: &'static str,
    /// Debian's and the OCI image's name for its architecture.
    pub arch: &'static str,
    /// Debian packages that building for it needs on this machine, with
    /// why (as in `setup`).
    pub packages: &'static [(&'static str, &'static str)],
    /// Environment of its build: a cross target names its C compiler
    /// (`CC_<triple>`, for ring) and linker
    /// (`CARGO_TARGET_<TRIPLE>_LINKER`) here.
    pub env: &'static [(&'static str, &'static str)],
}

/// The targets releases are built for. Another architecture is one more
/// entry (its triple, its Debian/OCI name, the C toolchain it needs): the
/// eBPF object follows the target (aya-build builds it for the target's
/// architecture) and every artifact is made the same way.
pub const TARGETS: &[Target] = &[
    Target {
        triple: "x86_64-unknown-linux-musl",
        arch: "amd64",
        packages: &[(
            "musl-tools",
            "ring's C code is compiled for musl with musl-gcc (release artifacts)",
        )],
        env: &[],
    },
    // Debian's glibc cross compiler links and compiles ring for musl too:
    // the Rust target brings musl's C library and start files.
    Target {
        triple: "aarch64-unknown-linux-musl",
        arch: "arm64",
        packages: &[
            (
                "gcc-aarch64-linux-gnu",
                "compiles ring's C code and links the arm64 release binary",
            ),
            (
                "binutils-aarch64-linux-gnu",
                "reads and strips the arm64 release binary",
            ),
        ],
        env: &[
            (
                "CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER",
                "aarch64-linux-gnu-gcc",
            ),
            ("CC_aarch64_unknown_linux_musl", "aarch64-linux-gnu-gcc"),
        ],
    },
];

/// The artifacts, in `target/dist/`.
pub fn run(options: &Options) -> Result<Vec<PathBuf>> {
    let targets = select(&options.targets)?;
    let cargo_deb = setup::dist(&targets)?;
    setup::export_path()?;
    let root = cmd::workspace_root();
    let out = root.join("target/dist");
    // Only this run's artifacts, so SHA256SUMS lists exactly what is there.
    if out.exists() {
        fs::remove_dir_all(&out).with_context(|| format!("emptying {}", out.display()))?;
    }
    fs::create_dir_all(&out)?;
    let release = Release::describe()?;
    let mut artifacts = Vec::new();
    for target in targets {
        let binary = build(target)?;
        println!(
            "xtask dist: {} is static (no interpreter, no shared libraries)",
            binary.display()
        );
        artifacts.push(tarball(target, &release, &binary, &out)?);
        artifacts.push(deb(target, &release, &cargo_deb, &out)?);
        artifacts.push(oci::archive(target, &release, &binary, &out)?);
    }
    checksums(&artifacts, &out)?;
    println!("xtask dist: done; in {}:", out.display());
    for artifact in &artifacts {
        println!("  {}", artifact.file_name().unwrap().to_string_lossy());
    }
    println!("  SHA256SUMS");
    Ok(artifacts)
}

impl Options {
    /// Artifacts for `triple` only.
    pub fn only(triple: &str) -> Self {
        Self {
            targets: vec![triple.to_owned()],
        }
    }
}

fn select(triples: &[String]) -> Result<Vec<&'static Target>> {
    if triples.is_empty() {
        return Ok(TARGETS.iter().collect());
    }
    triples
        .iter()
        .map(|triple| {
            TARGETS
                .iter()
                .find(|t| t.triple == triple)
                .with_context(|| {
                    let known: Vec<_> = TARGETS.iter().map(|t| t.triple).collect();
                    format!(
                        "no release target {triple}; the table in xtask/src/dist/mod.rs has {}",
                        known.join(", ")
                    )
                })
        })
        .collect()
}

/// What names this release: its version, the commit and the time the
/// artifacts say they were made (the commit's, so that two builds of one
/// commit give the same archives).
pub struct Release {
    pub version: &'static str,
    pub revision: String,
    /// Seconds since the epoch: `SOURCE_DATE_EPOCH`, else the commit's time.
    pub epoch: u64,
}

impl Release {
    fn describe() -> Result<Self> {
        let git = |args: &[&str]| {
            cmd::output(
                Command::new("git")
                    .args(args)
                    .current_dir(cmd::workspace_root()),
            )
            .map(|s| s.trim().to_owned())
        };
        let epoch = match std::env::var("SOURCE_DATE_EPOCH") {
            Ok(s) => s.parse().context("SOURCE_DATE_EPOCH is not a number")?,
            Err(_) => git(&["log", "-1", "--format=%ct"])
                .and_then(|t| t.parse().ok())
                .unwrap_or(0),
        };
        Ok(Self {
            version: env!("CARGO_PKG_VERSION"),
            revision: git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into()),
            epoch,
        })
    }

    /// `sockerr-<version>.linux-<arch>`, as Prometheus' exporters name theirs.
    fn stem(&self, target: &Target) -> String {
        format!("sockerr-{}.linux-{}", self.version, target.arch)
    }
}

/// The static release agent for `arch` (Debian's name), as the release
/// artifacts ship it: the kernel matrix boots it alone in every VM, which
/// proves the artifacts run whatever the host's C library.
pub fn static_agent(arch: &str) -> Result<PathBuf> {
    let target = TARGETS
        .iter()
        .find(|t| t.arch == arch)
        .with_context(|| format!("no release target for {arch}"))?;
    setup::dist_target(target)?;
    setup::export_path()?;
    build(target)
}

/// Builds the agent for `target`; fails unless the result is static.
fn build(target: &Target) -> Result<PathBuf> {
    println!(
        "xtask dist: building the release agent for {}",
        target.triple
    );
    cmd::run(
        cmd::cargo()
            .args(["build", "--locked", "--release", "-p", "sockerr"])
            .args(["--target", target.triple])
            .envs(target.env.iter().copied()),
    )?;
    let binary = cmd::workspace_root()
        .join("target")
        .join(target.triple)
        .join("release/sockerr");
    ensure_static(&binary)?;
    Ok(binary)
}

/// A static executable has no program interpreter (PT_INTERP) and needs no
/// shared library (no PT_DYNAMIC with DT_NEEDED; static-pie keeps a
/// PT_DYNAMIC for its own relocations).
fn ensure_static(binary: &Path) -> Result<()> {
    use object::{
        Endianness,
        read::elf::{Dyn as _, ElfFile64, ProgramHeader as _},
    };
    let data = fs::read(binary).with_context(|| format!("reading {}", binary.display()))?;
    let elf = ElfFile64::<Endianness>::parse(&*data)
        .with_context(|| format!("{} is not a 64-bit ELF file", binary.display()))?;
    let endian = elf.endian();
    for segment in elf.elf_program_headers() {
        if segment.p_type(endian) == object::elf::PT_INTERP {
            bail!(
                "{} names a program interpreter: it is dynamically linked",
                binary.display()
            );
        }
        if let Some(dynamic) = segment.dynamic(endian, &*data)?
            && dynamic
                .iter()
                .any(|d| d.d_tag(endian) as i64 == object::elf::DT_NEEDED)
        {
            bail!("{} needs shared libraries", binary.display());
        }
    }
    Ok(())
}

/// A file of an archive: its path inside, its mode and where it comes from.
struct Entry<'a> {
    path: String,
    mode: u32,
    source: &'a Path,
}

/// The tarball: a directory named like the archive, holding the binary and
/// what installing it by hand needs.
fn tarball(target: &Target, release: &Release, binary: &Path, out: &Path) -> Result<PathBuf> {
    let stem = release.stem(target);
    let root = cmd::workspace_root();
    let files = [
        ("sockerr", 0o755, binary.to_path_buf()),
        (
            "sockerr.service",
            0o644,
            root.join("deploy/systemd/sockerr.service"),
        ),
        (
            "sockerr.default",
            0o644,
            root.join("deploy/systemd/sockerr.default"),
        ),
        (
            "sockerr-alerts.yml",
            0o644,
            root.join("deploy/prometheus/sockerr-alerts.yml"),
        ),
        (
            "web-config.example.yml",
            0o644,
            root.join("deploy/web-config.example.yml"),
        ),
        ("README.md", 0o644, root.join("README.md")),
        ("LICENSE-APACHE", 0o644, root.join("LICENSE-APACHE")),
        ("LICENSE-MIT", 0o644, root.join("LICENSE-MIT")),
    ];
    let entries: Vec<Entry<'_>> = files
        .iter()
        .map(|(name, mode, source)| Entry {
            path: format!("{stem}/{name}"),
            mode: *mode,
            source,
        })
        .collect();
    let path = out.join(format!("{stem}.tar.gz"));
    println!("xtask dist: writing {}", path.display());
    let gz = flate2::GzBuilder::new().mtime(0).write(
        fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?,
        flate2::Compression::best(),
    );
    let mut tar = tar::Builder::new(gz);
    append_dir(&mut tar, &format!("{stem}/"), release.epoch)?;
    for entry in &entries {
        append_file(&mut tar, entry, release.epoch)?;
    }
    tar.into_inner()?.finish()?.flush()?;
    Ok(path)
}

/// A directory entry owned by root, `mode` 0755, modified at `mtime`.
pub(crate) fn append_dir<W: std::io::Write>(
    tar: &mut tar::Builder<W>,
    path: &str,
    mtime: u64,
) -> Result<()> {
    let mut header = header(tar::EntryType::Directory, 0o755, 0, mtime);
    tar.append_data(&mut header, path, std::io::empty())
        .with_context(|| format!("adding {path}"))
}

/// A regular file owned by root, modified at `mtime`: archives of the same
/// files are the same bytes whenever and wherever they are made.
fn append_file<W: std::io::Write>(
    tar: &mut tar::Builder<W>,
    entry: &Entry<'_>,
    mtime: u64,
) -> Result<()> {
    let data =
        fs::read(entry.source).with_context(|| format!("reading {}", entry.source.display()))?;
    let mut header = header(
        tar::EntryType::Regular,
        entry.mode,
        data.len() as u64,
        mtime,
    );
    tar.append_data(&mut header, &entry.path, &*data)
        .with_context(|| format!("adding {}", entry.path))
}

fn header(kind: tar::EntryType, mode: u32, size: u64, mtime: u64) -> tar::Header {
    let mut header = tar::Header::new_ustar();
    header.set_entry_type(kind);
    header.set_mode(mode);
    header.set_size(size);
    header.set_mtime(mtime);
    header.set_uid(0);
    header.set_gid(0);
    // Names as well as ids, so that tar lists them alike everywhere.
    let _ = header.set_username("root");
    let _ = header.set_groupname("root");
    header
}

/// The .deb, by cargo-deb from `[package.metadata.deb]` in agent/Cargo.toml,
/// packaging the binary [`build`] made (no rebuild, no second strip).
fn deb(target: &Target, release: &Release, cargo_deb: &Path, out: &Path) -> Result<PathBuf> {
    println!("xtask dist: making the .deb with cargo-deb");
    let path = cmd::output_of(
        cmd::cargo()
            .args(["deb", "-p", "sockerr", "--no-build", "--no-strip"])
            .args(["--target", target.triple])
            .arg("--output")
            .arg(out)
            .env("SOURCE_DATE_EPOCH", release.epoch.to_string())
            .env("PATH", cmd::path_with(cargo_deb)?),
    )?;
    // cargo-deb prints the path of the package it wrote.
    let path = PathBuf::from(path.lines().last().unwrap_or_default().trim());
    if !path.is_file() || path.extension().is_none_or(|e| e != "deb") {
        bail!(
            "cargo-deb did not name the package it wrote: {}",
            path.display()
        );
    }
    Ok(path)
}

/// `SHA256SUMS`: `sha256sum -c SHA256SUMS` checks every artifact.
fn checksums(artifacts: &[PathBuf], out: &Path) -> Result<()> {
    let mut sums = String::new();
    for artifact in artifacts {
        let data = fs::read(artifact)?;
        let name = artifact.file_name().unwrap().to_string_lossy();
        sums += &format!("{}  {name}\n", oci::hex(&oci::sha256(&data)));
    }
    fs::write(out.join("SHA256SUMS"), sums)?;
    Ok(())
}
