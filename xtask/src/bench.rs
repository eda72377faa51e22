//! `cargo xtask bench`: overhead of sockerr against no tracing, bpftrace and strace.

use anyhow::{Result, bail};

#[derive(clap::Args)]
pub struct Options {
    /// Short runs for spot checks (under two minutes).
    #[arg(long)]
    pub quick: bool,
}

pub fn run(_options: &Options) -> Result<()> {
    bail!("benchmarks are not implemented yet")
}
