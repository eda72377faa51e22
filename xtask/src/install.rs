//! `cargo xtask install`: the release agent and its systemd unit.

use std::{fs, path::Path, process::Command};

use anyhow::{Context as _, Result, bail};

use crate::{build, cmd};

const FILES: [(&str, &str, u32); 2] = [
    (
        "deploy/systemd/sockerr.service",
        "/etc/systemd/system/sockerr.service",
        0o644,
    ),
    (
        "deploy/systemd/sockerr.default",
        "/etc/default/sockerr",
        0o644,
    ),
];

pub fn run() -> Result<()> {
    if !cmd::is_root() {
        bail!(
            "installing into /usr/local/bin and /etc needs root: run `sudo -E cargo xtask install`"
        );
    }
    let agent = build::release(None)?;
    install(&agent, Path::new("/usr/local/bin/sockerr"), 0o755)?;
    for (src, dst, mode) in FILES {
        let dst = Path::new(dst);
        if dst.starts_with("/etc/default") && dst.exists() {
            println!("xtask install: keeping the existing {}", dst.display());
            continue;
        }
        install(&cmd::workspace_root().join(src), dst, mode)?;
    }
    if Path::new("/run/systemd/system").is_dir() {
        cmd::run(Command::new("systemctl").arg("daemon-reload"))?;
        println!("xtask install: done; start it with: systemctl enable --now sockerr");
    } else {
        println!("xtask install: done (systemd is not running here, so nothing was reloaded)");
    }
    Ok(())
}

fn install(src: &Path, dst: &Path, mode: u32) -> Result<()> {
    println!("xtask install: {} -> {}", src.display(), dst.display());
    fs::create_dir_all(dst.parent().unwrap())?;
    fs::copy(src, dst).with_context(|| format!("copying to {}", dst.display()))?;
    fs::set_permissions(dst, std::os::unix::fs::PermissionsExt::from_mode(mode))?;
    Ok(())
}
