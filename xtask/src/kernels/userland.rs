//! An architecture in; the root its VMs' programs come from out: this
//! host's own files for its own architecture, and for another Debian's
//! packages of that architecture (busybox-static, iptables, the C
//! libraries), downloaded through its private view and unpacked into the
//! cache. Nothing of another architecture is ever installed on this host.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result};

use super::apt::{LISTS_MAX_AGE, apt, ensure_lists, lists_age};
use crate::{arch::Arch, cache, cmd};

/// What the VMs run besides the agent and the scenario program, and the C
/// libraries all of them load (the initramfs takes what the binaries name
/// as NEEDED, and fails naming the library when it is not here).
pub const PACKAGES: [&str; 7] = [
    "busybox-static",
    "iptables",
    "libxtables12",
    "libip4tc2",
    "libip6tc2",
    "libc6",
    "libgcc-s1",
];

/// The root directory the VMs of `arch` take busybox, iptables and the C
/// libraries from.
pub fn userland(arch: Arch, refresh: bool) -> Result<PathBuf> {
    if arch.is_host() {
        return Ok(PathBuf::from("/"));
    }
    let root = cache::kernels()?.join(format!("{}-userland", arch.debian()));
    let stamp = root.join(".packages");
    // What was unpacked there, if it is what PACKAGES names.
    let have = fs::read_to_string(&stamp).ok().filter(|h| {
        PACKAGES
            .iter()
            .all(|p| h.lines().any(|l| l.starts_with(&format!("{p}="))))
    });
    let fresh = lists_age(arch).is_some_and(|a| a < LISTS_MAX_AGE);
    if have.is_some() && fresh && !refresh {
        println!(
            "xtask kernels: the {} programs of the VMs are in {}",
            arch.debian(),
            root.display()
        );
        return Ok(root);
    }
    match ensure_lists(arch, refresh) {
        Ok(_) => {}
        Err(e) if have.is_some() => {
            println!(
                "xtask kernels: {e:#}; using the {} programs from before",
                arch.debian()
            );
            return Ok(root);
        }
        Err(e) => return Err(e),
    }
    let wanted = candidates(arch)?;
    if have.as_deref() == Some(wanted.as_str()) {
        return Ok(root);
    }
    let tmp = cache::kernels()?.join(format!("{}-userland.download", arch.debian()));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(tmp.join("root"))?;
    println!(
        "xtask kernels: downloading {}'s {} (for the VMs' initramfs; unpacked, not installed)",
        arch.debian(),
        wanted.split_whitespace().collect::<Vec<_>>().join(", ")
    );
    cmd::run(
        apt(arch, "apt-get")?
            .args(["download", "-q"])
            .args(wanted.split_whitespace())
            .current_dir(&tmp),
    )
    .with_context(|| format!("downloading {}'s {}", arch.debian(), PACKAGES.join(", ")))?;
    for deb in fs::read_dir(&tmp)?.filter_map(|e| e.ok().map(|e| e.path())) {
        if deb.extension().is_some_and(|e| e == "deb") {
            cmd::run(
                Command::new("dpkg-deb")
                    .arg("--extract")
                    .arg(&deb)
                    .arg(tmp.join("root")),
            )?;
        }
    }
    fs::write(tmp.join("root/.packages"), &wanted)?;
    let _ = fs::remove_dir_all(&root);
    fs::rename(tmp.join("root"), &root)?;
    fs::remove_dir_all(&tmp)?;
    Ok(root)
}

/// `name=version` of each package's candidate in the view, one a line.
fn candidates(arch: Arch) -> Result<String> {
    let policy = cmd::output(apt(arch, "apt-cache")?.arg("policy").args(PACKAGES))
        .context("apt-cache policy in the private view")?;
    let found = parse_policy(&policy);
    let mut out = String::new();
    for p in PACKAGES {
        let version = found
            .iter()
            .find(|(name, _)| name == p)
            .map(|(_, v)| v)
            .with_context(|| format!("no {p} for {} in the private view", arch.debian()))?;
        out += &format!("{p}={version}\n");
    }
    Ok(out)
}

/// (package, candidate) pairs of `apt-cache policy` ("busybox-static:arm64:"
/// or "busybox-static:", then "  Candidate: 1:1.35.0-4+b3"; "(none)" is none).
fn parse_policy(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut package = None;
    for line in text.lines() {
        if !line.starts_with(' ') {
            package = line
                .trim_end_matches(':')
                .split(':')
                .next()
                .map(str::to_owned);
        } else if let (Some(p), Some(v)) = (&package, line.trim().strip_prefix("Candidate: "))
            && v != "(none)"
        {
            out.push((p.clone(), v.to_owned()));
        }
    }
    out
}

/// Where the file a program inside the VM opens as `path` (absolute) is
/// under `root`, symbolic links followed inside `root`: an absolute link in
/// an unpacked package points into the package, not at this host.
pub fn resolve_in(root: &Path, path: &str) -> Result<PathBuf> {
    let mut path = PathBuf::from(path);
    for _ in 0..16 {
        let inside = root.join(path.strip_prefix("/").unwrap_or(&path));
        match fs::read_link(&inside) {
            Ok(target) if target.is_absolute() => path = target,
            Ok(target) => path = path.parent().unwrap_or(Path::new("/")).join(target),
            Err(_) if inside.is_file() => return Ok(inside),
            Err(_) => anyhow::bail!("no {} in {}", path.display(), root.display()),
        }
    }
    anyhow::bail!("too many symbolic links at {}", path.display())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_candidates_of_apt_cache_policy() {
        let text = "busybox-static:arm64:\n  Installed: (none)\n  Candidate: 1:1.35.0-4+b3\n  Version table:\n     1:1.35.0-4+b3 500\n        500 http://deb.debian.org/debian bookworm/main arm64 Packages\nlibc6:\n  Installed: (none)\n  Candidate: 2.36-9+deb12u13\nlibfoo:\n  Installed: (none)\n  Candidate: (none)\n";
        assert_eq!(
            parse_policy(text),
            [
                ("busybox-static".to_owned(), "1:1.35.0-4+b3".to_owned()),
                ("libc6".to_owned(), "2.36-9+deb12u13".to_owned()),
            ]
        );
    }

    #[test]
    fn follows_links_inside_the_root() {
        let root = std::env::temp_dir().join(format!("xtask-userland-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(root.join("usr/lib/x")).unwrap();
        fs::create_dir_all(root.join("lib")).unwrap();
        fs::write(root.join("usr/lib/x/ld.so"), "loader").unwrap();
        std::os::unix::fs::symlink("/usr/lib/x/ld.so", root.join("lib/abs.so")).unwrap();
        std::os::unix::fs::symlink("../usr/lib/x/ld.so", root.join("lib/rel.so")).unwrap();
        for p in ["/lib/abs.so", "/lib/rel.so", "/usr/lib/x/ld.so"] {
            let file = resolve_in(&root, p).unwrap();
            assert_eq!(fs::read(file).unwrap(), b"loader", "{p}");
        }
        assert!(resolve_in(&root, "/lib/missing.so").is_err());
        assert!(
            resolve_in(&root, "/usr/lib").is_err(),
            "a directory is no file"
        );
        fs::remove_dir_all(&root).unwrap();
    }
}
