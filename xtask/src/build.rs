//! `cargo xtask build` and `cargo xtask run`.

use std::{path::PathBuf, process::Command};

use anyhow::{Result, bail};

use crate::{arch::Arch, cmd, setup};

/// Builds the release agent (and the scenario programs the tests, the
/// benchmarks and the kernel matrix drive) with the eBPF object embedded,
/// for this host or for `target` (a Rust target triple, e.g.
/// aarch64-unknown-linux-gnu); returns the agent's path.
///
/// Cross-building needs nothing of the eBPF side: the object is bpfel for
/// every architecture, and aya-build compiles it with `bpf_target_arch`
/// set to the agent's target architecture (the register layouts kprobes
/// and uprobes read differ). The cross linker is .cargo/config.toml's.
pub fn release(target: Option<&str>) -> Result<PathBuf> {
    setup::export_path()?;
    let mut build = cmd::cargo();
    build.args([
        "build",
        "--release",
        "-p",
        "sockerr",
        "-p",
        "sockerr-scenarios",
    ]);
    let dir = match target {
        Some(target) => {
            println!("xtask build: building the eBPF programs and the release agent for {target}");
            if let Some(arch) = Arch::of_rust_target(target).filter(|a| !a.is_host()) {
                let [gcc, libc] = arch.cross_packages();
                println!(
                    "xtask build: cross-building with {}-gcc ({gcc}, {libc}: `cargo xtask setup` installs them)",
                    arch.gnu()
                );
            }
            build.args(["--target", target]);
            format!("target/{target}/release")
        }
        None => {
            println!("xtask build: building the eBPF programs and the release agent");
            "target/release".to_owned()
        }
    };
    cmd::run(&mut build)?;
    Ok(cmd::workspace_root().join(dir).join("sockerr"))
}

pub fn run(args: &[String]) -> Result<()> {
    if !cmd::is_root() {
        bail!(
            "sockerr loads eBPF programs and needs root (or CAP_BPF+CAP_PERFMON); \
             run `sudo -E cargo xtask run` instead"
        );
    }
    setup::build()?;
    let agent = release(None)?;
    println!(
        "xtask run: starting {} run {}",
        agent.display(),
        args.join(" ")
    );
    let status = Command::new(agent).arg("run").args(args).status()?;
    if !status.success() {
        bail!("sockerr exited with {status}");
    }
    Ok(())
}
