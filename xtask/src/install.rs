//! `cargo xtask install`: the .deb of this checkout, installed with dpkg,
//! exactly as users install a release: /usr/bin/sockerr, the systemd unit
//! (enabled and started) and /etc/default/sockerr (kept if it exists).
//! `apt remove sockerr` takes it away again.

use std::process::Command;

use anyhow::{Context as _, Result, bail};

use crate::{cmd, dist};

pub fn run() -> Result<()> {
    if !cmd::is_root() {
        bail!("installing a package needs root: run `sudo -E cargo xtask install`");
    }
    let arch = cmd::output(Command::new("dpkg").arg("--print-architecture"))
        .context("asking dpkg for this machine's architecture (a Debian or Ubuntu host)")?;
    let target = dist::TARGETS
        .iter()
        .find(|t| t.arch == arch.trim())
        .with_context(|| format!("no release target for {}", arch.trim()))?;
    let artifacts = dist::run(&dist::Options::only(target.triple))?;
    let deb = artifacts
        .iter()
        .find(|a| a.extension().is_some_and(|e| e == "deb"))
        .context("dist made no .deb")?;
    cmd::run(Command::new("dpkg").arg("-i").arg(deb))?;
    println!("xtask install: done; `systemctl status sockerr` shows the service");
    Ok(())
}
