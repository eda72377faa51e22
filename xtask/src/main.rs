//! `cargo xtask`: the single entry point for bootstrapping, building, running,
//! testing and benchmarking sockerr. Every step says what it does.

mod arch;
mod bench;
mod build;
mod cache;
mod cmd;
mod install;
mod kernels;
mod matrix;
mod setup;
mod test;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Build, run and test sockerr")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what building and testing need (rust-src, bpf-linker, tracefs,
    /// Debian packages; QEMU and Debian's kernels for the matrix). Idempotent.
    Setup,
    /// Build the release agent with the eBPF object embedded, and the
    /// scenario program.
    Build {
        /// Cross-build for this Rust target (e.g. aarch64-unknown-linux-gnu;
        /// `cargo xtask setup` installs its Rust target and Debian's cross
        /// compiler): into target/<TARGET>/release/.
        #[arg(long)]
        target: Option<String>,
    },
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
    /// Install the release agent, its systemd unit and defaults file (root).
    Install,
    /// Overhead benchmarks against no tracing, bpftrace and strace.
    Bench(bench::Options),
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Setup => setup::all(),
        Command::Build { target } => build::release(target.as_deref()).map(drop),
        Command::Run { args } => build::run(&args),
        Command::Test { no_matrix, args } => test::run(&args, !no_matrix),
        Command::Matrix(options) => setup::run().and_then(|()| matrix::run(&options)),
        Command::Lint => test::lint(),
        Command::Ci => test::lint().and_then(|()| test::run(&[], true)),
        Command::Install => install::run(),
        Command::Bench(options) => bench::run(&options),
    }
}
