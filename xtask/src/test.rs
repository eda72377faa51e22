//! `cargo xtask test` and `cargo xtask ci`.

use std::process::Command;

use anyhow::Result;

use crate::{cmd, setup};

pub fn run(args: &[String]) -> Result<()> {
    if !cmd::is_root() {
        println!(
            "xtask test: not root — the integration tests that load eBPF programs will be skipped \
             (they fail instead when CI=true)"
        );
    }
    setup::run()?;
    setup::export_path()?;
    // The scenario programs are separate processes the integration tests run.
    println!("xtask test: building the scenario programs and the agent");
    cmd::run(cmd::cargo().args(["build", "-p", "sockerr-scenarios", "-p", "sockerr"]))?;
    println!("xtask test: running unit and integration tests of every crate");
    cmd::run(
        cmd::cargo()
            .args(["test", "--workspace", "--exclude", "sockerr-ebpf"])
            .args(args)
            .env(
                "SOCKERR_SCENARIO",
                cmd::workspace_root().join("target/debug/sockerr-scenario"),
            )
            .env("SOCKERR_VENV", setup::venv()?),
    )
}

pub fn lint() -> Result<()> {
    setup::run()?;
    setup::export_path()?;
    println!("xtask lint: checking formatting");
    cmd::run(cmd::cargo().args(["fmt", "--all", "--", "--check"]))?;
    println!("xtask lint: clippy on the host crates");
    cmd::run(cmd::cargo().args([
        "clippy",
        "--workspace",
        "--exclude",
        "sockerr-ebpf",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    println!("xtask lint: clippy on the eBPF crate (bpfel-unknown-none, nightly)");
    cmd::run(
        Command::new("rustup")
            .args(["run", "nightly", "cargo", "clippy", "-p", "sockerr-ebpf"])
            .args([
                "--target",
                "bpfel-unknown-none",
                "-Z",
                "build-std=core",
                "--",
                "-D",
                "warnings",
            ])
            .current_dir(cmd::workspace_root())
            .env_remove("RUSTUP_TOOLCHAIN")
            .env_remove("CARGO")
            .env_remove("RUSTC"),
    )
}
