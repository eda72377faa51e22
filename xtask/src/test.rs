//! `cargo xtask test` and `cargo xtask ci`.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
};

use anyhow::{Result, bail};

use crate::{arch::ARCHES, cmd, dist, matrix, setup};

/// Setup, the workspace's tests, then (with `matrix`) the kernel matrix,
/// whose kernels count as one test each in the closing summary line.
pub fn run(args: &[String], matrix: bool) -> Result<()> {
    if !cmd::is_root() {
        println!(
            "xtask test: not root — the integration tests that load eBPF programs will be skipped \
             (they fail instead when CI=true)"
        );
    }
    setup::run()?;
    // The release artifacts, which agent/tests/release.rs checks (this also
    // installs what making them needs, and puts bpf-linker on PATH).
    println!("xtask test: making the release artifacts (`cargo xtask dist`)");
    dist::run(&dist::Options::default())?;
    // The scenario programs are separate processes the integration tests run.
    println!("xtask test: building the scenario programs and the agent");
    cmd::run(cmd::cargo().args(["build", "-p", "sockerr-scenarios", "-p", "sockerr"]))?;
    println!("xtask test: running unit and integration tests of every crate");
    let mut test = cmd::cargo();
    test.args(["test", "--workspace", "--exclude", "sockerr-ebpf"])
        .args(args)
        .env(
            "SOCKERR_SCENARIO",
            cmd::workspace_root().join("target/debug/sockerr-scenario"),
        )
        .env("SOCKERR_VENV", setup::venv()?)
        .env("SOCKERR_DIST", cmd::workspace_root().join("target/dist"));
    let (mut passed, mut failed) = run_counting(&mut test)?;
    println!("xtask test: cargo test: {passed} passed, {failed} failed");
    if matrix {
        println!(
            "xtask test: the kernel matrix (`cargo xtask matrix`; `cargo xtask test --no-matrix` leaves it out)"
        );
        let outcome = matrix::matrix(&matrix::Options::default())?;
        println!(
            "xtask test: kernel matrix: {} kernels passed, {} failed (one test each below)",
            outcome.passed, outcome.failed
        );
        passed += outcome.passed as u64;
        failed += outcome.failed as u64;
    }
    // One closing line for the whole run (cargo's last line is often a
    // crate with no tests).
    println!("summary: {passed} passed, {failed} failed");
    if failed > 0 {
        bail!("{failed} tests failed");
    }
    Ok(())
}

/// Runs `cargo test`, passing its output through, and adds up its
/// `test result:` lines.
fn run_counting(cmd: &mut Command) -> Result<(u64, u64)> {
    println!("xtask: $ cargo test ...");
    let mut child = cmd.stdout(Stdio::piped()).spawn()?;
    let (mut passed, mut failed) = (0, 0);
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            let count = |what: &str| {
                rest.split(';')
                    .find_map(|part| {
                        part.trim()
                            .trim_start_matches("ok. ")
                            .trim_start_matches("FAILED. ")
                            .strip_suffix(what)
                    })
                    .and_then(|n| n.trim().parse::<u64>().ok())
                    .unwrap_or(0)
            };
            passed += count("passed");
            failed += count("failed");
        }
    }
    let status = child.wait()?;
    if !status.success() && failed == 0 {
        bail!("cargo test failed: {status}");
    }
    Ok((passed, failed))
}

pub fn lint() -> Result<()> {
    setup::build()?;
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
    // The object differs by the architecture whose registers its kprobes
    // and uprobes read (cfg bpf_target_arch): each is linted, the others'
    // in target dirs of their own (the cfg is set through an environment
    // variable, which would otherwise rebuild the crates at every switch).
    for arch in ARCHES {
        let bpf_arch = arch.rust_target().split('-').next().unwrap_or_default();
        println!(
            "xtask lint: clippy on the eBPF crate (bpfel-unknown-none, nightly) as built for {} agents",
            arch.debian()
        );
        let mut clippy = Command::new("rustup");
        clippy
            .args(["run", "nightly", "cargo", "clippy", "-p", "sockerr-ebpf"])
            .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
            .current_dir(cmd::workspace_root())
            .env_remove("RUSTUP_TOOLCHAIN")
            .env_remove("CARGO")
            .env_remove("RUSTC");
        if !arch.is_host() {
            clippy
                .arg("--target-dir")
                .arg(cmd::workspace_root().join(format!("target/clippy-bpf-{bpf_arch}")))
                .env("AYA_BPF_TARGET_ARCH", bpf_arch);
        }
        cmd::run(clippy.args(["--", "-D", "warnings"]))?;
    }
    Ok(())
}
