//! `cargo xtask`: the single entry point for bootstrapping, building, running,
//! testing and benchmarking sockerr. Every step says what it does.

mod arch;
mod bench;
mod build;
mod cache;
mod cmd;
mod dist;
mod install;
mod kernels;
mod matrix;
mod setup;
mod test;

use anyhow::Result;
use clap::{Parser, Subcommand};

use crate::arch::Arch;

#[derive(Parser)]
#[command(about = "Build, run and test sockerr")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what building needs (rustup components, bpf-linker);
    /// idempotent. `cargo xtask test`, `dist` and `bench` run what they need
    /// of it themselves.
    Setup {
        /// Also what the tests, benchmarks and the kernel matrix use:
        /// tracefs, Debian packages, Python tools, QEMU and Debian's kernels.
        #[arg(long)]
        tests: bool,
        /// Also what release artifacts need (`cargo xtask dist`): the
        /// targets' standard libraries and C toolchains, cargo-deb.
        #[arg(long)]
        dist: bool,
    },
    /// Build the release agent with the eBPF object embedded, and the
    /// scenario program.
    Build {
        /// Cross-build for this Rust target (e.g. aarch64-unknown-linux-gnu;
        /// its Rust target and Debian's cross compiler are installed first):
        /// into target/<TARGET>/release/.
        #[arg(long)]
        target: Option<String>,
    },
    /// Release artifacts in target/dist: per target a static binary in a
    /// tarball, a .deb and an OCI image archive (the same binary in each),
    /// and SHA256SUMS.
    Dist(dist::Options),
    /// Setup, build, then run `sockerr run ARGS` (needs root).
    Run {
        /// Arguments passed to `sockerr run`.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Setup, then every test: unit tests, root integration tests, then the
    /// kernel matrix.
    Test {
        /// Leave out the kernel matrix (e.g. with a test name filter).
        #[arg(long)]
        no_matrix: bool,
        /// Arguments passed to `cargo test` (e.g. a test name filter).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Setup, build, then the detection scenario table on Debian's 5.10, 6.1
    /// and 6.12 kernels under QEMU and on this host: a result table.
    Matrix(matrix::Options),
    /// Formatting check and clippy -D warnings (host and eBPF crates).
    Lint,
    /// `lint`, then `test`.
    Ci,
    /// Build the .deb for this machine (`dist`) and install it with dpkg:
    /// the agent, its systemd unit and /etc/default/sockerr (root).
    Install,
    /// Overhead benchmarks against no tracing, bpftrace and strace.
    Bench(bench::Options),
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Setup { tests, dist } => {
            if tests {
                setup::all()?;
            } else {
                setup::build()?;
            }
            if dist {
                setup::dist(&dist::TARGETS.iter().collect::<Vec<_>>())?;
            }
            Ok(())
        }
        Command::Build { target } => {
            setup::build()?;
            if let Some(arch) = target
                .as_deref()
                .and_then(Arch::of_rust_target)
                .filter(|a| !a.is_host())
            {
                setup::cross(arch)?;
            }
            build::release(target.as_deref()).map(drop)
        }
        Command::Dist(options) => dist::run(&options).map(drop),
        Command::Run { args } => build::run(&args),
        Command::Test { no_matrix, args } => test::run(&args, !no_matrix),
        Command::Matrix(options) => setup::run().and_then(|()| matrix::run(&options)),
        Command::Lint => test::lint(),
        Command::Ci => test::lint().and_then(|()| test::run(&[], true)),
        Command::Install => install::run(),
        Command::Bench(options) => bench::run(&options),
    }
}
