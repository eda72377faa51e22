//! The initramfs the VMs boot: busybox as init's shell, the release agent,
//! the scenario program, iptables-legacy and their C libraries, all of the
//! VM's architecture; then, per kernel, a second archive with its
//! netfilter modules (the kernel unpacks archives concatenated into one
//! initrd in turn).

use std::{
    fs,
    io::Write as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result};
use cpio::{NewcBuilder, newc};

use crate::{arch::Arch, cmd, kernels::resolve_in};

/// init: mounts what the agent needs, runs the table, powers off. The
/// markers let the host time the boot and find the end. The kernel command
/// line's `sockerr.arg=…` words become the agent's extra arguments.
fn init_script(bpf_stats: bool) -> String {
    format!(
        r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mount -t bpf bpf /sys/fs/bpf
mount -t tracefs tracefs /sys/kernel/tracing
ip link set lo up
for m in $(cat /lib/modules/netfilter/order); do
  insmod "/lib/modules/netfilter/$m.ko" || echo "matrix: insmod $m failed"
done
echo "MATRIX-INIT uptime=$(cut -d' ' -f1 /proc/uptime) cpus=$(nproc)"
args=""
for word in $(cat /proc/cmdline); do
  case "$word" in sockerr.arg=*) args="$args --agent-arg ${{word#sockerr.arg=}}";; esac
done
/sockerr/sockerr-scenario matrix --agent /sockerr/sockerr --attach-timeout 240$args{stats}
rc=$?
if [ $rc -ne 0 ]; then
  echo "--- dmesg, last 40 lines"
  dmesg | tail -n 40
fi
echo "MATRIX-END rc=$rc uptime=$(cut -d' ' -f1 /proc/uptime)"
poweroff -f
"#,
        stats = if bpf_stats { " --bpf-stats" } else { "" }
    )
}

/// The ELF interpreter and NEEDED libraries `readelf` (which reads every
/// architecture's ELF) lists for a binary.
fn dynamic(binary: &Path) -> Result<(Option<String>, Vec<String>)> {
    let out = Command::new("readelf")
        .args(["--program-headers", "--dynamic", "--wide"])
        .arg(binary)
        .output()
        .context("running readelf (binutils: `cargo xtask setup` installs it)")?;
    anyhow::ensure!(
        out.status.success(),
        "readelf {}: {}",
        binary.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(parse_dynamic(&String::from_utf8_lossy(&out.stdout)))
}

fn parse_dynamic(text: &str) -> (Option<String>, Vec<String>) {
    let bracketed = |l: &str, after: &str| {
        let rest = l.split_once(after)?.1;
        Some(rest.split_once(']')?.0.trim().to_owned())
    };
    let interpreter = text
        .lines()
        .find_map(|l| bracketed(l, "[Requesting program interpreter:"));
    let needed = text
        .lines()
        .filter(|l| l.contains("(NEEDED)"))
        .filter_map(|l| bracketed(l, "Shared library: ["))
        .collect();
    (interpreter, needed)
}

/// The shared libraries `binaries` load, transitively, and their loader:
/// (path inside the VM, file under `root`), found where the loader looks
/// for them without an ld.so.cache (the multiarch directories first).
fn libraries(root: &Path, arch: Arch, binaries: &[PathBuf]) -> Result<Vec<(String, PathBuf)>> {
    let dirs = [
        format!("/lib/{}", arch.gnu()),
        format!("/usr/lib/{}", arch.gnu()),
        "/lib".to_owned(),
        "/usr/lib".to_owned(),
    ];
    let mut found: Vec<(String, PathBuf)> = Vec::new();
    let mut todo: Vec<PathBuf> = binaries.to_vec();
    while let Some(binary) = todo.pop() {
        let (interpreter, needed) = dynamic(&binary)?;
        let mut wanted: Vec<(String, PathBuf)> = Vec::new();
        if let Some(loader) = interpreter {
            let file = resolve_in(root, &loader)?;
            wanted.push((loader, file));
        }
        for soname in needed {
            let hit = dirs.iter().find_map(|d| {
                let path = format!("{d}/{soname}");
                resolve_in(root, &path).ok().map(|file| (path, file))
            });
            wanted.push(hit.with_context(|| {
                format!(
                    "{} needs {soname}, which is in none of {} under {}{}",
                    binary.display(),
                    dirs.join(", "),
                    root.display(),
                    if arch.is_host() {
                        String::new()
                    } else {
                        " (add its Debian package to kernels::userland::PACKAGES)".to_owned()
                    }
                )
            })?);
        }
        for (path, file) in wanted {
            if !found.iter().any(|(p, _)| *p == path) {
                todo.push(file.clone());
                found.push((path, file));
            }
        }
    }
    Ok(found)
}

/// `objcopy --strip-debug` (the binutils of the binary's architecture)
/// into `out`.
fn stripped(binary: &Path, arch: Arch, out: &Path) -> Result<Vec<u8>> {
    let dest = out.join(binary.file_name().unwrap());
    cmd::run(
        Command::new(arch.binutil("objcopy"))
            .arg("--strip-debug")
            .arg(binary)
            .arg(&dest),
    )?;
    Ok(fs::read(dest)?)
}

/// iptables-legacy as the transparency check runs it, and the one
/// extension its ruleset needs (loaded with dlopen, so it is not NEEDED).
const XTABLES: &str = "/usr/sbin/xtables-legacy-multi";
fn xtables_standard(arch: Arch) -> String {
    format!("/usr/lib/{}/xtables/libxt_standard.so", arch.gnu())
}

/// The initramfs every VM of `arch` shares: /init, busybox, the agent,
/// the scenario program, iptables-legacy and their libraries at the paths
/// the loader looks for them; all but the agent and the scenario program
/// (built for `arch`) from `root` (see `kernels::userland`).
///
/// The scenario program keeps its line tables: the call-site check names
/// its functions down to file:line.
pub fn initramfs(
    arch: Arch,
    root: &Path,
    agent: &Path,
    scenario: &Path,
    bpf_stats: bool,
    out: &Path,
) -> Result<PathBuf> {
    let package = |p: &str| {
        if arch.is_host() {
            format!("`cargo xtask setup` installs {p}")
        } else {
            format!("{p}:{} should have been unpacked there", arch.debian())
        }
    };
    let busybox = resolve_in(root, "/bin/busybox").with_context(|| package("busybox-static"))?;
    let xtables = resolve_in(root, XTABLES).with_context(|| package("iptables"))?;
    let standard = xtables_standard(arch);
    let standard_file = resolve_in(root, &standard).with_context(|| package("iptables"))?;
    println!(
        "xtask matrix: building the {} initramfs (the agent stripped of debug info)",
        arch.debian()
    );
    let strip_dir = out.join(format!("stripped-{}", arch.debian()));
    fs::create_dir_all(&strip_dir)?;
    let mut files: Vec<(String, Vec<u8>)> = vec![
        ("init".into(), init_script(bpf_stats).into_bytes()),
        ("bin/busybox".into(), fs::read(&busybox)?),
        ("sockerr/sockerr".into(), stripped(agent, arch, &strip_dir)?),
        ("sockerr/sockerr-scenario".into(), fs::read(scenario)?),
    ];
    let mut libs = libraries(
        root,
        arch,
        &[
            busybox,
            agent.to_owned(),
            scenario.to_owned(),
            xtables.clone(),
            standard_file.clone(),
        ],
    )?;
    libs.extend([(XTABLES.to_owned(), xtables), (standard, standard_file)]);
    for (path, file) in &libs {
        files.push((
            path.trim_start_matches('/').to_owned(),
            fs::read(file).with_context(|| format!("reading {}", file.display()))?,
        ));
    }
    let archive = cpio(&files, &["dev", "proc", "sys", "tmp", "run", "root"])?;
    let path = out.join(format!("initramfs-{}.cpio", arch.debian()));
    fs::write(&path, &archive)?;
    println!(
        "xtask matrix: initramfs {} ({:.1} MB): init, busybox, sockerr, sockerr-scenario, {}",
        path.display(),
        archive.len() as f64 / 1e6,
        libs.iter()
            .map(|(p, _)| p.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(path)
}

/// The shared initramfs followed by an archive of `modules` (in load order)
/// under /lib/modules/netfilter, for one kernel.
pub fn with_modules(shared: &Path, modules: &[PathBuf], name: &str, out: &Path) -> Result<PathBuf> {
    let mut files = Vec::new();
    let mut order = String::new();
    for m in modules {
        let stem = m
            .file_stem()
            .and_then(|s| s.to_str())
            .context("module name")?;
        files.push((
            format!("lib/modules/netfilter/{stem}.ko"),
            fs::read(m).with_context(|| format!("reading {}", m.display()))?,
        ));
        order += &format!("{stem}\n");
    }
    files.push(("lib/modules/netfilter/order".into(), order.into_bytes()));
    let mut image = fs::read(shared)?;
    image.extend(cpio(&files, &[])?);
    let path = out.join(format!("{name}.initramfs.cpio"));
    fs::write(&path, image)?;
    Ok(path)
}

/// An uncompressed newc cpio archive (what the kernel unpacks fastest;
/// under TCG decompression is slow) of `files`, their directories and
/// `dirs`, and /dev/console for init's output.
fn cpio(files: &[(String, Vec<u8>)], dirs: &[&str]) -> Result<Vec<u8>> {
    let mut all_dirs: Vec<String> = dirs.iter().map(|d| d.to_string()).collect();
    for (name, _) in files {
        for p in Path::new(name).ancestors().skip(1) {
            let p = p.to_str().unwrap().to_owned();
            if !p.is_empty() && !all_dirs.contains(&p) {
                all_dirs.push(p);
            }
        }
    }
    // Parents sort before their children.
    all_dirs.sort();
    let mut archive = Vec::new();
    let mut ino = 1;
    let mut entry = |archive: &mut Vec<u8>, builder: NewcBuilder, data: &[u8]| -> Result<()> {
        let mut w = builder.ino(ino).write(archive, data.len() as u32);
        w.write_all(data)?;
        w.finish()?;
        ino += 1;
        Ok(())
    };
    for d in &all_dirs {
        entry(
            &mut archive,
            NewcBuilder::new(d).mode(0o040_755).nlink(2),
            &[],
        )?;
    }
    // The kernel opens /dev/console for init before devtmpfs is mounted.
    if dirs.contains(&"dev") {
        entry(
            &mut archive,
            NewcBuilder::new("dev/console")
                .mode(0o020_600)
                .rdev_major(5)
                .rdev_minor(1),
            &[],
        )?;
    }
    for (name, data) in files {
        entry(&mut archive, NewcBuilder::new(name).mode(0o100_755), data)?;
    }
    newc::trailer(&mut archive)?;
    Ok(archive)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_loader_and_libraries_readelf_lists() {
        let text = "\
Program Headers:
  INTERP         0x000238 0x0000000000000238 0x0000000000000238 0x00001b 0x00001b R   0x1
      [Requesting program interpreter: /lib/ld-linux-aarch64.so.1]
Dynamic section at offset 0xa2ec38 contains 31 entries:
  Tag        Type                         Name/Value
 0x0000000000000001 (NEEDED)             Shared library: [libgcc_s.so.1]
 0x0000000000000001 (NEEDED)             Shared library: [libc.so.6]
 0x000000000000001e (FLAGS)              BIND_NOW
";
        assert_eq!(
            parse_dynamic(text),
            (
                Some("/lib/ld-linux-aarch64.so.1".to_owned()),
                vec!["libgcc_s.so.1".to_owned(), "libc.so.6".to_owned()]
            )
        );
        assert_eq!(
            parse_dynamic("There is no dynamic section in this file.\n"),
            (None, vec![])
        );
    }
}
