//! The initramfs the VMs boot: busybox as init's shell, the release agent,
//! the scenario program, iptables-legacy and their C libraries; then, per
//! kernel, a second archive with its netfilter modules (the kernel unpacks
//! archives concatenated into one initrd in turn).

use std::{
    fs,
    io::Write as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result};
use cpio::{NewcBuilder, newc};

use crate::cmd;

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

/// The shared libraries `ldd` lists for a binary, and its loader.
fn libraries(binary: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd").arg(binary).output()?;
    // A static binary: ldd says so and exits 1.
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .lines()
        .filter_map(|l| {
            let path = match l.split_once("=>") {
                Some((_, right)) => right.split_whitespace().next()?,
                None => l.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect())
}

/// `objcopy --strip-debug` into `out`.
fn stripped(binary: &Path, out: &Path) -> Result<Vec<u8>> {
    let dest = out.join(binary.file_name().unwrap());
    cmd::run(
        Command::new("objcopy")
            .arg("--strip-debug")
            .arg(binary)
            .arg(&dest),
    )?;
    Ok(fs::read(dest)?)
}

/// iptables-legacy as the transparency check runs it, and the one
/// extension its ruleset needs (loaded with dlopen, so ldd does not list it).
const XTABLES: &str = "/usr/sbin/xtables-legacy-multi";
const XTABLES_STANDARD: &str = "/usr/lib/x86_64-linux-gnu/xtables/libxt_standard.so";

/// The initramfs every VM shares: /init, busybox, the agent, the scenario
/// program, iptables-legacy and their libraries at the paths the loader
/// looks for them.
pub fn initramfs(agent: &Path, scenario: &Path, bpf_stats: bool, out: &Path) -> Result<PathBuf> {
    let busybox = Path::new("/bin/busybox");
    for (path, package) in [
        (busybox, "busybox-static"),
        (Path::new(XTABLES), "iptables"),
        (Path::new(XTABLES_STANDARD), "iptables"),
    ] {
        anyhow::ensure!(
            path.exists(),
            "{} is missing: `cargo xtask setup` installs {package}",
            path.display()
        );
    }
    println!("xtask matrix: building the initramfs (agent and scenarios stripped of debug info)");
    let strip_dir = out.join("stripped");
    fs::create_dir_all(&strip_dir)?;
    let mut files: Vec<(String, Vec<u8>)> = vec![
        ("init".into(), init_script(bpf_stats).into_bytes()),
        ("bin/busybox".into(), fs::read(busybox)?),
        ("sockerr/sockerr".into(), stripped(agent, &strip_dir)?),
        (
            "sockerr/sockerr-scenario".into(),
            stripped(scenario, &strip_dir)?,
        ),
    ];
    let mut libs = Vec::new();
    for binary in [busybox, agent, scenario, Path::new(XTABLES)] {
        for lib in libraries(binary)? {
            if !libs.contains(&lib) {
                libs.push(lib);
            }
        }
    }
    libs.extend([PathBuf::from(XTABLES), PathBuf::from(XTABLES_STANDARD)]);
    for lib in &libs {
        let name = lib.to_str().context("non-UTF-8 library path")?;
        files.push((
            name.trim_start_matches('/').to_owned(),
            fs::read(lib).with_context(|| format!("reading {name}"))?,
        ));
    }
    let archive = cpio(&files, &["dev", "proc", "sys", "tmp", "run", "root"])?;
    let path = out.join("initramfs.cpio");
    fs::write(&path, &archive)?;
    println!(
        "xtask matrix: initramfs {} ({:.1} MB): init, busybox, sockerr, sockerr-scenario, {}",
        path.display(),
        archive.len() as f64 / 1e6,
        libs.iter()
            .map(|l| l.display().to_string())
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
