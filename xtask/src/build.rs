//! `cargo xtask build` and `cargo xtask run`.

use std::{path::PathBuf, process::Command};

use anyhow::{Result, bail};

use crate::{cmd, setup};

/// Builds the release agent (and the scenario programs the tests and
/// benchmarks drive) with the eBPF object embedded; returns the agent's path.
pub fn release() -> Result<PathBuf> {
    setup::export_path()?;
    println!("xtask build: building the eBPF programs and the release agent");
    cmd::run(cmd::cargo().args([
        "build",
        "--release",
        "-p",
        "sockerr",
        "-p",
        "sockerr-scenarios",
    ]))?;
    Ok(cmd::workspace_root().join("target/release/sockerr"))
}

pub fn run(args: &[String]) -> Result<()> {
    if !cmd::is_root() {
        bail!(
            "sockerr loads eBPF programs and needs root (or CAP_BPF+CAP_PERFMON); \
             run `sudo -E cargo xtask run` instead"
        );
    }
    setup::build()?;
    let agent = release()?;
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
