//! `cargo xtask matrix`: the detection scenario table on other kernels.
//! Boots Debian's cloud kernels (see `kernels.rs`) under QEMU with TCG
//! (KVM fails or hangs on these machines) with an initramfs carrying the
//! release agent, the scenario program, their C libraries and busybox; init
//! runs `sockerr-scenario matrix` (check, trace, the table) and powers off.
//! The same runner runs on this host; then one table, a row per kernel.

use std::{
    fmt::Write as _,
    fs,
    io::{BufRead, BufReader, Read, Write as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use cpio::{NewcBuilder, newc};
use sockerr_scenarios::{summary::Summary, table::TABLE};

use crate::{build, cmd, kernels, kernels::Kernel};

const DEFAULT_TIMEOUT: u64 = 300;
const DEFAULT_MEMORY: u32 = 1024;

#[derive(clap::Args)]
pub struct Options {
    /// Kernel series to boot (5.10, 6.1, 6.12); repeat for several. Default: all.
    #[arg(long = "kernel", value_name = "SERIES")]
    pub kernels: Vec<String>,
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
            host_only: false,
            no_host: false,
            refresh: false,
            timeout: DEFAULT_TIMEOUT,
            memory: DEFAULT_MEMORY,
            bpf_stats: false,
        }
    }
}

/// A way of running the table: the agent as configured by default, or with
/// hooks disabled so that a probe's fallback is what runs.
struct Variant {
    name: &'static str,
    /// Extra arguments for `sockerr check` and `sockerr trace`.
    agent_args: &'static [&'static str],
    /// Hooks it forces, by probe, over the kernel's own choice.
    forces: &'static [(&'static str, &'static str)],
}

const VARIANTS: [Variant; 2] = [
    Variant {
        name: "",
        agent_args: &[],
        forces: &[],
    },
    // sends and receives through kprobes, the last hook of their probes
    // (tp_btf on ≥ 6.3 and fentry elsewhere come first).
    Variant {
        name: "kprobes",
        agent_args: &[
            "--kernel.disable-hook=tp_btf/sock_send_length",
            "--kernel.disable-hook=tp_btf/sock_recv_length",
            "--kernel.disable-hook=fentry/tcp_sendmsg",
            "--kernel.disable-hook=fentry/tcp_recvmsg",
        ],
        forces: &[
            ("send", "kprobe/tcp_sendmsg"),
            ("recv", "kprobe/tcp_recvmsg"),
        ],
    },
];

/// One line of the result table.
struct Row {
    series: String,
    kernel: String,
    /// Until init started (VMs only).
    boot: Option<Duration>,
    /// The runner: check, trace, every row.
    table: Option<Duration>,
    summary: Option<Summary>,
    /// What went wrong outside the runner (timeout, boot failure, skipped).
    note: Option<String>,
    lines: Vec<Line>,
    log: Option<PathBuf>,
    /// Probes that did not get the hook expected on this kernel.
    wrong_hooks: Vec<String>,
}

impl Row {
    fn passed(&self) -> bool {
        self.wrong_hooks.is_empty()
            && self.summary.as_ref().is_some_and(|s| {
                s.check && s.trace && s.failed.is_empty() && self.unreach_passed(&s.unreach)
            })
    }

    /// Every VM kernel has the hook, and no route but loopback's: there the
    /// failure must be counted; this host may lack the hook or have routes.
    fn unreach_passed(&self, unreach: &str) -> bool {
        unreach == "ok" || (self.series == "host" && unreach != "fail")
    }
}

/// The hook each probe must have: the same on every kernel of the matrix
/// for connect, release and connect_errors, the series' own for the rest,
/// unless the variant forces one.
fn expected_hooks(
    series: &kernels::Series,
    variant: &Variant,
) -> Vec<(&'static str, &'static str)> {
    let [so_error, send, recv] = series.hooks;
    [
        ("connect", "tp_btf/inet_sock_set_state"),
        ("so_error", so_error),
        ("send", send),
        ("recv", recv),
        ("release", "cgroup/sock_release"),
        ("connect_errors", "fexit/inet_stream_connect"),
    ]
    .into_iter()
    .map(|(probe, hook)| {
        let forced = variant.forces.iter().find(|(p, _)| *p == probe);
        (probe, forced.map_or(hook, |(_, h)| *h))
    })
    .collect()
}

/// Where `sockerr check`'s lines (`check| ok       probe send   fentry/tcp_sendmsg: …`)
/// disagree with `expected`, e.g. `send: kprobe/tcp_sendmsg, expected fentry/tcp_sendmsg`.
fn wrong_hooks(lines: &[Line], expected: &[(&str, &str)]) -> Vec<String> {
    let used = |probe: &str| {
        lines.iter().find_map(|l| {
            let rest = l.text.split_once("check| ")?.1;
            let (status, rest) = rest.split_once(' ')?;
            let rest = rest.trim_start().strip_prefix("probe ")?;
            let (name, rest) = rest.split_once(' ')?;
            (name == probe).then(|| match status {
                "ok" => rest.trim_start().split(':').next().unwrap_or("").to_owned(),
                other => other.to_owned(),
            })
        })
    };
    expected
        .iter()
        .filter_map(|(probe, hook)| {
            let got = used(probe).unwrap_or_else(|| "not in check's output".into());
            (got != *hook).then(|| format!("{probe}: {got}, expected {hook}"))
        })
        .collect()
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
        kernels::select(&options.kernels)?
    };
    if !series.is_empty() {
        kernels::qemu()?;
    }

    let t = Instant::now();
    let kernels = kernels::ensure(&series, options.refresh)?;
    let fetch_time = t.elapsed();

    let agent = build::release()?;
    let scenario = agent.with_file_name("sockerr-scenario");
    let out = cmd::workspace_root().join("target/matrix");
    fs::create_dir_all(&out)?;

    let mut rows = Vec::new();
    let mut initramfs_time = None;
    if !kernels.is_empty() {
        let t = Instant::now();
        let image = initramfs(&agent, &scenario, options.bpf_stats, &out)?;
        initramfs_time = Some(t.elapsed());
        for kernel in &kernels {
            for variant in &VARIANTS {
                rows.push(boot(kernel, variant, &image, options, &out)?);
            }
        }
    }
    if !options.no_host {
        rows.push(host(&agent, &scenario, &out, options.timeout)?);
    }

    print_table(&rows, fetch_time, initramfs_time, started.elapsed());
    let failed = rows.iter().filter(|r| !r.passed() && !skipped(r)).count();
    Ok(Outcome {
        passed: rows.iter().filter(|r| r.passed()).count(),
        failed,
    })
}

fn skipped(row: &Row) -> bool {
    row.summary.is_none()
        && row
            .note
            .as_deref()
            .is_some_and(|n| n.starts_with("skipped"))
}

// ----- the initramfs -------------------------------------------------------

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

/// An uncompressed newc cpio archive (what the kernel unpacks fastest;
/// under TCG decompression is slow): directories, /dev/console for init's
/// output, /init, busybox, the agent, the scenario program and their
/// libraries at the paths the loader looks for them.
fn initramfs(agent: &Path, scenario: &Path, bpf_stats: bool, out: &Path) -> Result<PathBuf> {
    let busybox = Path::new("/bin/busybox");
    anyhow::ensure!(
        busybox.exists(),
        "{} is missing: `cargo xtask setup` installs busybox-static",
        busybox.display()
    );
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
    for binary in [busybox, agent, scenario] {
        for lib in libraries(binary)? {
            if !libs.contains(&lib) {
                libs.push(lib);
            }
        }
    }
    for lib in &libs {
        let name = lib.to_str().context("non-UTF-8 library path")?;
        files.push((
            name.trim_start_matches('/').to_owned(),
            fs::read(lib).with_context(|| format!("reading {name}"))?,
        ));
    }
    let mut dirs: Vec<String> = ["dev", "proc", "sys", "tmp", "run", "root"]
        .map(String::from)
        .to_vec();
    for (name, _) in &files {
        for p in Path::new(name).ancestors().skip(1) {
            let p = p.to_str().unwrap().to_owned();
            if !p.is_empty() && !dirs.contains(&p) {
                dirs.push(p);
            }
        }
    }
    // Parents sort before their children.
    dirs.sort();
    let mut archive = Vec::new();
    let mut ino = 1;
    let mut entry = |archive: &mut Vec<u8>, builder: NewcBuilder, data: &[u8]| -> Result<()> {
        let mut w = builder.ino(ino).write(archive, data.len() as u32);
        w.write_all(data)?;
        w.finish()?;
        ino += 1;
        Ok(())
    };
    for d in &dirs {
        entry(
            &mut archive,
            NewcBuilder::new(d).mode(0o040_755).nlink(2),
            &[],
        )?;
    }
    // The kernel opens /dev/console for init before devtmpfs is mounted.
    entry(
        &mut archive,
        NewcBuilder::new("dev/console")
            .mode(0o020_600)
            .rdev_major(5)
            .rdev_minor(1),
        &[],
    )?;
    for (name, data) in &files {
        entry(&mut archive, NewcBuilder::new(name).mode(0o100_755), data)?;
    }
    newc::trailer(&mut archive)?;
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

// ----- running -------------------------------------------------------------

/// A line of output and when it arrived.
struct Line {
    at: Duration,
    text: String,
}

/// Runs `command`, echoing its output prefixed with `[label] `, into `log`;
/// kills it after `timeout`. Returns the lines and whether it timed out.
fn stream(
    command: &mut Command,
    label: &str,
    timeout: Duration,
    log: &Path,
) -> Result<(Vec<Line>, bool)> {
    let started = Instant::now();
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {:?}", command.get_program()))?;
    let (tx, rx) = mpsc::channel::<String>();
    let readers = [
        pump(child.stdout.take().unwrap(), tx.clone()),
        pump(child.stderr.take().unwrap(), tx),
    ];
    let mut file = fs::File::create(log)?;
    let mut lines = Vec::new();
    let mut timed_out = false;
    loop {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(text) => {
                writeln!(file, "{text}")?;
                println!("[{label}] {text}");
                lines.push(Line {
                    at: started.elapsed(),
                    text,
                });
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        if !timed_out && started.elapsed() > timeout {
            println!("xtask matrix: {label}: still running after {timeout:?}; killing it");
            let _ = child.kill();
            timed_out = true;
        }
    }
    child.wait()?;
    for r in readers {
        let _ = r.join();
    }
    Ok((lines, timed_out))
}

/// Forwards lines (serial console output: CRs, escape sequences) as text.
fn pump(source: impl Read + Send + 'static, tx: mpsc::Sender<String>) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let mut reader = BufReader::new(source);
        let mut buf = Vec::new();
        while reader.read_until(b'\n', &mut buf).is_ok_and(|n| n > 0) {
            let text = clean(&String::from_utf8_lossy(&buf));
            buf.clear();
            if !text.is_empty() && tx.send(text).is_err() {
                return;
            }
        }
    })
}

/// Drops terminal escape sequences and control characters.
fn clean(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // ESC [ params letter, or ESC letter.
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            } else {
                chars.next();
            }
        } else if c == '\t' || !c.is_control() {
            out.push(c);
        }
    }
    out.trim_end().to_owned()
}

/// The first line holding `marker`, and its text from the marker on (the
/// firmware may leave a line unfinished: "Booting from ROM..MATRIX-INIT").
fn find<'a>(lines: &'a [Line], marker: &str) -> Option<(&'a Line, &'a str)> {
    lines
        .iter()
        .find_map(|l| l.text.find(marker).map(|i| (l, &l.text[i..])))
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
    let cmdline: String = std::iter::once("console=ttyS0 panic=-1 quiet".to_owned())
        .chain(
            variant
                .agent_args
                .iter()
                .map(|a| format!("sockerr.arg={a}")),
        )
        .collect::<Vec<_>>()
        .join(" ");
    let mut qemu = Command::new(kernels::QEMU);
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

// ----- the report ----------------------------------------------------------

fn secs(d: Option<Duration>) -> String {
    d.map_or("-".into(), |d| format!("{:.1} s", d.as_secs_f64()))
}

fn print_table(rows: &[Row], fetch: Duration, initramfs: Option<Duration>, total: Duration) {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "\nkernel matrix: the detection table ({} rows) per kernel; VMs under QEMU TCG (emulated CPU), host native",
        TABLE.len()
    );
    let _ = writeln!(
        t,
        "{:<12} {:<28} {:>8} {:>8} {:<6} {:<6} {:>6} {:<8} result",
        "series", "kernel", "boot", "table", "check", "trace", "rows", "unreach"
    );
    for r in rows {
        let (check, trace, passed, unreach, result) = match &r.summary {
            Some(s) => (
                if s.check { "ok" } else { "FAIL" },
                if s.trace { "ok" } else { "FAIL" },
                format!("{}/{}", s.pass, s.rows),
                s.unreach.as_str(),
                if r.passed() {
                    "PASS".to_owned()
                } else if !r.wrong_hooks.is_empty() {
                    format!("FAIL: hooks ({})", r.wrong_hooks.join("; "))
                } else if s.check && s.trace && s.failed.is_empty() {
                    format!("FAIL: a connect() with no route: {}", s.unreach)
                } else if !s.trace {
                    "FAIL: agent did not start; no row ran".to_owned()
                } else if s.failed.is_empty() {
                    "FAIL: sockerr check".to_owned()
                } else {
                    format!(
                        "FAIL: rows {}",
                        s.failed
                            .iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join(",")
                    )
                },
            ),
            None => (
                "-",
                "-",
                "-".into(),
                "-",
                r.note.clone().unwrap_or_else(|| "FAIL".into()),
            ),
        };
        let result = match (&r.note, r.summary.is_some()) {
            (Some(note), true) => format!("{result} ({note})"),
            _ => result,
        };
        let kernel = r
            .summary
            .as_ref()
            .map_or(r.kernel.as_str(), |s| s.kernel.as_str());
        let _ = writeln!(
            t,
            "{:<12} {:<28} {:>8} {:>8} {:<6} {:<6} {:>6} {:<8} {}",
            r.series,
            kernel,
            secs(r.boot),
            secs(r.table),
            check,
            trace,
            passed,
            unreach,
            result
        );
    }
    let _ = writeln!(
        t,
        "kernels fetched or found in the cache in {:.1} s, initramfs built in {}, whole matrix {:.1} s",
        fetch.as_secs_f64(),
        secs(initramfs),
        total.as_secs_f64()
    );
    for r in rows.iter().filter(|r| !r.passed() && !skipped(r)) {
        let _ = writeln!(t, "\n{} ({}) failed:", r.series, r.kernel);
        let mut any = false;
        for l in &r.lines {
            let text = &l.text;
            let keep = text.starts_with("check| MISSING")
                || (text.starts_with("trace| ") && !text.starts_with("trace| ts="))
                || text.starts_with("FAIL ")
                || text.starts_with("matrix: barrier failed")
                || text.starts_with("matrix: sockerr trace did not start")
                || text.starts_with("matrix: unreach:");
            if keep {
                let _ = writeln!(t, "  {text}");
                any = true;
            }
        }
        if let Some(s) = r.summary.as_ref().filter(|s| s.trace) {
            for n in &s.failed {
                if let Some(case) = TABLE.get(n - 1) {
                    let _ = writeln!(
                        t,
                        "  row {n}: {} (sockerr-scenario {}) expects {:?}",
                        case.name,
                        case.args.join(" "),
                        case.expected
                    );
                }
            }
        }
        if !any || r.summary.is_none() {
            let _ = writeln!(t, "  last console lines:");
            for l in r.lines.iter().rev().take(25).rev() {
                let _ = writeln!(t, "  | {}", l.text);
            }
        }
        if let Some(log) = &r.log {
            let _ = writeln!(t, "  full output: {}", log.display());
        }
    }
    let stats: Vec<(&str, &str)> = rows
        .iter()
        .flat_map(|r| {
            r.lines
                .iter()
                .filter_map(|l| l.text.strip_prefix("BPFSTAT "))
                .map(|s| (r.series.as_str(), s))
        })
        .collect();
    if !stats.is_empty() {
        let _ = writeln!(
            t,
            "\neBPF program statistics inside the VMs (kernel.bpf_stats_enabled=1), whole table run.\n\
             EMULATED CPU (QEMU TCG): run counts are real, times are not those of real hardware."
        );
        for (series, s) in stats {
            let _ = writeln!(t, "  {series:<12} {s}");
        }
    }
    print!("{t}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_summary_line() {
        let s = Summary::parse(
            "MATRIX kernel=6.1.0-56-cloud-amd64 check=fail trace=fail rows=13 pass=0 fail=13 failed=1,2,13 unreach=fail secs=3.0",
        )
        .unwrap();
        assert_eq!(s.kernel, "6.1.0-56-cloud-amd64");
        assert!(!s.check && !s.trace);
        assert_eq!((s.rows, s.pass), (13, 0));
        assert_eq!(s.failed, [1, 2, 13]);
        assert_eq!(s.unreach, "fail");
        let s = Summary::parse(
            "MATRIX kernel=x check=ok trace=ok rows=13 pass=13 fail=0 failed=- unreach=absent secs=1",
        )
        .unwrap();
        assert!(s.failed.is_empty());
        // Absent passes on this host only: every VM kernel has fexit.
        let row = |series: &str| Row {
            series: series.into(),
            kernel: "x".into(),
            boot: None,
            table: None,
            summary: Summary::parse(
                "MATRIX kernel=x check=ok trace=ok rows=13 pass=13 fail=0 failed=- unreach=absent secs=1",
            ),
            note: None,
            lines: Vec::new(),
            log: None,
            wrong_hooks: Vec::new(),
        };
        assert!(row("host").passed());
        assert!(!row("6.1").passed());
    }

    #[test]
    fn finds_markers_after_unfinished_firmware_lines() {
        let line = |text: &str| Line {
            at: Duration::from_secs(1),
            text: text.into(),
        };
        let lines = [
            line("SeaBIOS"),
            line("Booting from ROM..MATRIX-INIT uptime=3.79 cpus=2"),
        ];
        let (_, text) = find(&lines, "MATRIX-INIT").unwrap();
        assert_eq!(text, "MATRIX-INIT uptime=3.79 cpus=2");
        assert!(find(&lines, "MATRIX ").is_none());
    }

    #[test]
    fn hooks_are_checked_against_the_series() {
        let line = |text: &str| Line {
            at: Duration::ZERO,
            text: text.to_owned(),
        };
        let lines = [
            line(
                "check| ok       probe connect                tp_btf/inet_sock_set_state: connect attempts",
            ),
            line(
                "check| ok       probe so_error               cgroup/getsockopt: the SO_ERROR values",
            ),
            line(
                "check| ok       probe send                   kprobe/tcp_sendmsg: sends on sockets",
            ),
            line(
                "Booting from ROM..check| absent   probe recv                   no hook works here (…)",
            ),
        ];
        let six_one = kernels::SERIES.iter().find(|s| s.name == "6.1").unwrap();
        assert_eq!(
            wrong_hooks(&lines, &expected_hooks(six_one, &VARIANTS[0])),
            [
                "send: kprobe/tcp_sendmsg, expected fentry/tcp_sendmsg",
                "recv: absent, expected fentry/tcp_recvmsg",
                "release: not in check's output, expected cgroup/sock_release",
                "connect_errors: not in check's output, expected fexit/inet_stream_connect",
            ]
        );
        let kprobes = expected_hooks(six_one, &VARIANTS[1]);
        assert!(kprobes.contains(&("send", "kprobe/tcp_sendmsg")));
        assert!(kprobes.contains(&("so_error", "cgroup/getsockopt")));
    }

    #[test]
    fn cleans_console_lines() {
        assert_eq!(clean("\u{1b}[2J\u{1b}[01;01Hhello\r\n"), "hello");
        assert_eq!(clean("\u{1b}cSeaBIOS"), "SeaBIOS");
    }
}
