//! Embeds the eBPF object: built from ../ebpf through aya-build, or taken
//! prebuilt from $SOCKERR_EBPF_OBJECT. Also names the build for `--version`
//! and `sockerr_build_info`: the git revision (`SOCKERR_REVISION`) and the
//! target (`SOCKERR_TARGET`).

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, anyhow};

const PREBUILT: &str = "SOCKERR_EBPF_OBJECT";
/// Set to name the revision of a build from a tree without git history
/// (a source tarball); otherwise git is asked.
const REVISION: &str = "SOCKERR_REVISION";

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed={PREBUILT}");
    println!("cargo:rerun-if-env-changed={REVISION}");
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").context("no manifest dir")?);
    let revision = env::var(REVISION)
        .ok()
        .filter(|r| !r.is_empty())
        .or_else(|| git_revision(&manifest))
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env={REVISION}={revision}");
    println!(
        "cargo:rustc-env=SOCKERR_TARGET={}",
        env::var("TARGET").context("TARGET not set")?
    );
    let out = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR not set")?).join("sockerr");
    if let Some(prebuilt) = env::var_os(PREBUILT) {
        println!(
            "cargo:rerun-if-changed={}",
            PathBuf::from(&prebuilt).display()
        );
        fs::copy(&prebuilt, &out).with_context(|| {
            format!("copying {PREBUILT}={}", PathBuf::from(&prebuilt).display())
        })?;
        return Ok(());
    }
    if which("bpf-linker").is_none() {
        return Err(anyhow!(
            "bpf-linker is not on PATH: run `cargo xtask setup` and build with `cargo xtask build`, \
             or set {PREBUILT} to a prebuilt eBPF object"
        ));
    }
    let ebpf = manifest
        .parent()
        .context("agent is in the workspace")?
        .join("ebpf");
    // aya-build watches ../ebpf; the programs also compile ../common.
    println!(
        "cargo:rerun-if-changed={}",
        ebpf.with_file_name("common").display()
    );
    let root_dir = ebpf.to_str().context("non-UTF-8 path")?;
    let package = aya_build::Package {
        name: "sockerr-ebpf",
        root_dir,
        ..Default::default()
    };
    aya_build::build_ebpf([package], aya_build::Toolchain::default())
}

fn which(program: &str) -> Option<PathBuf> {
    env::split_paths(&env::var_os("PATH")?)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

/// The commit checked out (12 hex digits), and the files to watch so that
/// a new commit or checkout builds again: HEAD and the branch it names.
/// None outside a git checkout (or without git).
fn git_revision(dir: &Path) -> Option<String> {
    let git = |args: &[&str]| {
        let out = Command::new("git")
            .args(args)
            .current_dir(dir)
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };
    let revision = git(&["rev-parse", "--short=12", "HEAD"])?;
    let mut watched = vec!["HEAD".to_owned(), "packed-refs".to_owned()];
    watched.extend(git(&["symbolic-ref", "-q", "HEAD"]));
    for name in watched {
        // A path that does not exist would make cargo run this every time.
        if let Some(path) = git(&["rev-parse", "--git-path", &name]).map(PathBuf::from)
            && path.exists()
        {
            println!("cargo:rerun-if-changed={}", dir.join(path).display());
        }
    }
    Some(revision)
}
