//! Kernel series and options in; the detection table's result on each kernel out.
//!
//! `cargo xtask matrix`: the detection scenario table on other kernels.
//! Boots Debian's cloud kernels (see `kernels/`), amd64 and arm64, under
//! QEMU with TCG (KVM fails or hangs on these machines) with an initramfs
//! carrying the release agent and the scenario program built for the
//! kernel's architecture (cross-built for arm64), their C libraries and
//! busybox; init runs `sockerr-scenario matrix` (check, trace, the table,
//! call sites) and powers off. The same runner runs on this host; then one
//! table, a row per kernel.
//!
//! The pieces: the initramfs ([`initramfs`]), the consoles ([`console`]), a
//! row of the table and what passing means ([`row`]), the table printed
//! ([`report`]).

mod console;
mod initramfs;
mod report;
mod row;

use std::{
    fs,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};
use sockerr_scenarios::summary::Summary;

use self::{
    console::{find, stream},
    initramfs::{initramfs, with_modules},
    report::{print_table, secs},
    row::{Expected, Row, Variant, expected_hooks, skipped, variants, wrong_hooks},
};
use crate::{arch::Arch, build, cmd, dist, kernels, kernels::Kernel, setup};

const DEFAULT_TIMEOUT: u64 = 300;
const DEFAULT_MEMORY: u32 = 1024;

#[derive(clap::Args)]
pub struct Options {
    /// Kernel series to boot (5.10, 6.1, 6.12, arm64-6.1, arm64-6.12; with
    /// --arch also a version: --arch arm64 --kernel 6.1); repeat for
    /// several. Default: all.
    #[arg(long = "kernel", value_name = "SERIES")]
    pub kernels: Vec<String>,
    /// Only the kernels of this architecture (amd64, arm64; arm64 runs a
    /// cross-built agent under qemu-system-aarch64), and the host row only
    /// if it is this host's; repeat for several. Default: all.
    #[arg(long = "arch", value_enum)]
    pub arches: Vec<Arch>,
    /// Boot no VM, run the table on this host only.
    #[arg(long, conflicts_with = "kernels")]
    pub host_only: bool,
    /// Leave out the row for this host.
    #[arg(long)]
    pub no_host: bool,
    /// Refresh the package lists (and kernels) even when fetched less than a week ago.
    #[arg(long)]
    pub refresh: bool,
    /// Seconds one VM may take (boot and table) before it is killed.
    #[arg(long, default_value_t = DEFAULT_TIMEOUT)]
    pub timeout: u64,
    /// Memory of each VM, MiB.
    #[arg(long, default_value_t = DEFAULT_MEMORY)]
    pub memory: u32,
    /// Also print, inside each VM, how often each eBPF program ran and for how
    /// long (kernel.bpf_stats_enabled=1). Emulated CPU: the times are not
    /// those of real hardware.
    #[arg(long)]
    pub bpf_stats: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            kernels: Vec::new(),
            arches: Vec::new(),
            host_only: false,
            no_host: false,
            refresh: false,
            timeout: DEFAULT_TIMEOUT,
            memory: DEFAULT_MEMORY,
            bpf_stats: false,
        }
    }
}

/// Counts of the result table, for `cargo xtask test`'s closing line.
pub struct Outcome {
    pub passed: usize,
    pub failed: usize,
}

/// The verb: builds, boots, prints the table; fails when any kernel failed.
pub fn run(options: &Options) -> Result<()> {
    let outcome = matrix(options)?;
    if outcome.failed > 0 {
        bail!(
            "the kernel matrix failed on {} of {} kernels",
            outcome.failed,
            outcome.passed + outcome.failed
        );
    }
    Ok(())
}

/// Everything but the final verdict: `cargo xtask test` adds it to its own.
pub fn matrix(options: &Options) -> Result<Outcome> {
    let started = Instant::now();
    let series = if options.host_only {
        Vec::new()
    } else {
        kernels::select(&options.kernels, &options.arches)?
    };
    // The architectures to boot, in the order of their series.
    let mut arches: Vec<Arch> = Vec::new();
    for s in &series {
        if !arches.contains(&s.arch) {
            arches.push(s.arch);
        }
    }
    let host_arch = Arch::host()?;
    let host_row =
        !options.no_host && (options.arches.is_empty() || options.arches.contains(&host_arch));
    kernels::qemu(&arches)?;

    let t = Instant::now();
    let kernels = kernels::ensure(&series, options.refresh)?;
    let mut roots = Vec::new();
    for &arch in &arches {
        roots.push((arch, kernels::userland(arch, options.refresh)?));
    }
    let fetch_time = t.elapsed();

    // The agent and the scenario program of each architecture run.
    let mut builds = Vec::new();
    for arch in arches.iter().copied().chain(host_row.then_some(host_arch)) {
        if !builds.iter().any(|(a, _)| *a == arch) {
            let target = (!arch.is_host()).then(|| arch.rust_target());
            if target.is_some() {
                setup::cross(arch)?;
            }
            builds.push((arch, build::release(target)?));
        }
    }
    let built = |arch: Arch| {
        let agent = builds.iter().find(|(a, _)| *a == arch).unwrap().1.clone();
        let scenario = agent.with_file_name("sockerr-scenario");
        (agent, scenario)
    };
    // The VMs run the release artifacts' static agent, alone: no C library
    // is copied for it, so each row proves the artifact on that kernel's
    // distribution (Debian 11's glibc 2.31 for 5.10).
    let mut static_agents = Vec::new();
    for &arch in &arches {
        static_agents.push((arch, dist::static_agent(arch.debian())?));
    }
    let out = cmd::workspace_root().join("target/matrix");
    fs::create_dir_all(&out)?;

    let mut rows = Vec::new();
    let mut initramfs_time = Duration::ZERO;
    for (arch, root) in &roots {
        let (_, scenario) = built(*arch);
        let agent = &static_agents.iter().find(|(a, _)| a == arch).unwrap().1;
        let t = Instant::now();
        let image = initramfs(*arch, root, agent, &scenario, options.bpf_stats, &out)?;
        initramfs_time += t.elapsed();
        for kernel in kernels.iter().filter(|k| k.series.arch == *arch) {
            let image = with_modules(&image, &kernel.modules, kernel.series.name, &out)?;
            for variant in variants(kernel.series) {
                rows.push(boot(kernel, variant, &image, options, &out)?);
            }
        }
    }
    if host_row {
        let (agent, scenario) = built(host_arch);
        rows.push(host(&agent, &scenario, &out, options.timeout)?);
    }
    let initramfs_time = (!roots.is_empty()).then_some(initramfs_time);

    print_table(&rows, fetch_time, initramfs_time, started.elapsed());
    let failed = rows.iter().filter(|r| !r.passed() && !skipped(r)).count();
    Ok(Outcome {
        passed: rows.iter().filter(|r| r.passed()).count(),
        failed,
    })
}

fn boot(
    kernel: &Kernel,
    variant: &Variant,
    image: &Path,
    options: &Options,
    out: &Path,
) -> Result<Row> {
    let series = if variant.name.is_empty() {
        kernel.series.name.to_owned()
    } else {
        format!("{}/{}", kernel.series.name, variant.name)
    };
    let series = series.as_str();
    let log = out.join(format!("{}.console.log", series.replace('/', "-")));
    println!(
        "xtask matrix: booting {} ({} {}, {}) under QEMU TCG, {} MiB; at most {} s{}",
        kernel.release(),
        kernel.package,
        kernel.version,
        kernel.series.from,
        options.memory,
        options.timeout,
        if variant.name.is_empty() {
            String::new()
        } else {
            format!("; agent {}", variant.agent_args.join(" "))
        }
    );
    let arch = kernel.series.arch;
    let console = match arch {
        Arch::Amd64 => "ttyS0",
        // The virt machine's PL011 UART.
        Arch::Arm64 => "ttyAMA0",
    };
    let cmdline: String = std::iter::once(format!("console={console} panic=-1 quiet"))
        .chain(
            variant
                .agent_args
                .iter()
                .map(|a| format!("sockerr.arg={a}")),
        )
        .collect::<Vec<_>>()
        .join(" ");
    let mut qemu = Command::new(arch.qemu().0);
    if arch == Arch::Arm64 {
        qemu.args(["-machine", "virt"]);
    }
    qemu.args(["-accel", "tcg", "-cpu", "max", "-smp", "2"])
        .args(["-m", &options.memory.to_string()])
        .args(["-nographic", "-no-reboot", "-nic", "none"])
        .arg("-kernel")
        .arg(&kernel.vmlinuz)
        .arg("-initrd")
        .arg(image)
        .args(["-append", &cmdline]);
    let (lines, timed_out) = stream(
        &mut qemu,
        series,
        Duration::from_secs(options.timeout),
        &log,
    )?;
    let init = find(&lines, "MATRIX-INIT").map(|(l, _)| l.at);
    let summary_line = find(&lines, "MATRIX ");
    let end = find(&lines, "MATRIX-END").map(|(l, _)| l.at);
    let note = if timed_out {
        Some(format!("killed after {} s", options.timeout))
    } else if init.is_none() {
        Some("init never ran (boot failed)".into())
    } else if summary_line.is_none() {
        Some("the runner printed no summary".into())
    } else {
        None
    };
    let boot = init;
    let table = match (init, summary_line.map(|(l, _)| l.at).or(end)) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a)),
        _ => None,
    };
    println!(
        "xtask matrix: {series}: boot {}, table {}, VM total {}",
        secs(boot),
        secs(table),
        secs(lines.last().map(|l| l.at))
    );
    let summary = summary_line.and_then(|(_, text)| Summary::parse(text));
    let wrong_hooks = if summary.is_some() {
        wrong_hooks(&lines, &expected_hooks(kernel.series, variant))
    } else {
        Vec::new()
    };
    Ok(Row {
        series: series.into(),
        expected: Some(Expected::of(kernel.series)),
        kernel: kernel.release().into(),
        boot,
        table,
        summary,
        note,
        lines,
        log: Some(log),
        wrong_hooks,
    })
}

/// The runner on this host (root: it loads the programs here).
/// `timeout`: seconds the runner may take, as for each VM.
fn host(agent: &Path, scenario: &Path, out: &Path, timeout: u64) -> Result<Row> {
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")?
        .trim()
        .to_owned();
    let mut row = Row {
        series: "host".into(),
        expected: None,
        kernel,
        boot: None,
        table: None,
        summary: None,
        note: None,
        lines: Vec::new(),
        log: None,
        wrong_hooks: Vec::new(),
    };
    if !cmd::is_root() {
        anyhow::ensure!(
            std::env::var("CI").as_deref() != Ok("true"),
            "the host row of the kernel matrix needs root, and CI=true"
        );
        row.note = Some("skipped: needs root".into());
        return Ok(row);
    }
    println!(
        "xtask matrix: running the table on this host ({})",
        row.kernel
    );
    let log = out.join("host.log");
    let (lines, timed_out) = stream(
        Command::new(scenario)
            .arg("matrix")
            .arg("--agent")
            .arg(agent),
        "host",
        Duration::from_secs(timeout),
        &log,
    )?;
    let summary = find(&lines, "MATRIX ");
    row.table = summary.map(|(l, _)| l.at);
    row.summary = summary.and_then(|(_, text)| Summary::parse(text));
    if timed_out {
        row.note = Some(format!("killed after {timeout} s"));
    } else if row.summary.is_none() {
        row.note = Some("the runner printed no summary".into());
    }
    row.lines = lines;
    row.log = Some(log);
    Ok(row)
}
