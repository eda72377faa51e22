//! Embeds the eBPF object: built from ../ebpf through aya-build, or taken
//! prebuilt from $SOCKERR_EBPF_OBJECT.

use std::{env, fs, path::PathBuf};

use anyhow::{Context as _, anyhow};

const PREBUILT: &str = "SOCKERR_EBPF_OBJECT";

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed={PREBUILT}");
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
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").context("no manifest dir")?);
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
