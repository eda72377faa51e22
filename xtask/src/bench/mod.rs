//! `cargo xtask bench`: what sockerr costs the machine it watches, measured
//! side by side in one run against no tracing, the floor (an empty program
//! on each of its hooks: the least any program there costs), a hand-written
//! bpftrace script and strace. Configurations alternate round by round;
//! medians, min/max and ratios to the baseline are printed, then the worst
//! realistic cases ([`workload`]): processes flagged on every connect beside
//! their clean twins, a burst of findings from two processes, nginx with a
//! TLS upstream; then where the time goes, per eBPF program ([`programs`]).
//! It prints one `BENCH key=value` line and writes docs/benchmarks.md.

mod programs;
mod short_lived;
mod workload;

use std::{
    collections::HashMap,
    fmt::Write as _,
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use sockerr_testkit::{Agent, Log, Signal};

use crate::{build, cmd, setup};

#[derive(clap::Args)]
pub struct Options {
    /// Short runs for spot checks (about 10 minutes on a 2-core VM; indicative only).
    #[arg(long)]
    pub quick: bool,
}

/// (loop, what it measures, iterations).
const LOOPS: [(&str, &str, u64); 8] = [
    ("refused", "1. refused connect + 1 SO_ERROR read", 20_000),
    ("established", "2. established connect + 1 read", 10_000),
    ("pingpong", "3. socket I/O: 1-byte TCP ping-pong", 20_000),
    ("pipe", "4. non-socket syscalls: pipe write+read", 500_000),
    (
        "udp",
        "7. UDP: 1-byte send+recv on a connected pair",
        200_000,
    ),
    (
        "unix-dgram",
        "8. Unix datagrams: 1-byte send+recv on a socketpair",
        200_000,
    ),
    (
        "masked",
        "5. loop 1 reading twice: so_error_masked every iteration",
        20_000,
    ),
    (
        "established-reread",
        "6. loop 2 reading twice: so_error_reread every iteration (nginx, https upstream)",
        10_000,
    ),
];

/// (flagged loop, its clean twin): what a process flagged on every connect
/// pays beyond what the same loop pays clean.
const TWINS: [(&str, &str); 2] = [("masked", "refused"), ("established-reread", "established")];

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Tool {
    Baseline,
    /// An empty program on each of the agent's hooks
    /// ([`programs::Floor`]): what any program there costs, the least
    /// sockerr could.
    Floor,
    /// `sockerr run` as deployed: call-site uprobes on flagged processes only.
    Sockerr,
    /// `sockerr run --call-sites=all`: uprobes on every process's connect
    /// and getsockopt, what always-on call sites would cost.
    SockerrAll,
    Bpftrace,
    Strace,
}

const TOOLS: [Tool; 6] = [
    Tool::Baseline,
    Tool::Floor,
    Tool::Sockerr,
    Tool::SockerrAll,
    Tool::Bpftrace,
    Tool::Strace,
];

impl Tool {
    fn name(self) -> &'static str {
        match self {
            Tool::Baseline => "baseline",
            Tool::Floor => "floor",
            Tool::Sockerr => "sockerr",
            Tool::SockerrAll => "sockerr_sites_all",
            Tool::Bpftrace => "bpftrace",
            Tool::Strace => "strace",
        }
    }

    /// strace stops the process at every traced syscall: far fewer iterations.
    fn divisor(self) -> u64 {
        if self == Tool::Strace { 20 } else { 1 }
    }
}

/// The per-fd tracking an engineer would write by hand: connects and
/// SO_ERROR reads per (pid, fd) in maps, through syscall tracepoints.
const BPFTRACE_SCRIPT: &str = r#"
tracepoint:syscalls:sys_enter_connect { @reads[pid, args->fd] = 0; @last[pid, args->fd] = 0; }
tracepoint:syscalls:sys_enter_getsockopt /args->level == 1 && args->optname == 4/ {
  @optval[tid] = args->optval; @fd[tid] = args->fd;
}
tracepoint:syscalls:sys_exit_getsockopt /@optval[tid]/ {
  $v = *(int32 *)uptr(@optval[tid]);
  $k = @fd[tid];
  if (@reads[pid, $k] > 0 && @last[pid, $k] != 0 && $v == 0) {
    printf("so_error_masked pid=%d comm=%s fd=%d\n", pid, comm, $k);
  }
  @reads[pid, $k] = @reads[pid, $k] + 1; @last[pid, $k] = $v;
  delete(@optval[tid]); delete(@fd[tid]);
}
tracepoint:syscalls:sys_enter_close { delete(@reads[pid, args->fd]); delete(@last[pid, args->fd]); }
END { clear(@reads); clear(@last); clear(@optval); clear(@fd); }
"#;

struct Run {
    quick: bool,
    scenario: PathBuf,
    agent: PathBuf,
    ns: HashMap<(Tool, &'static str), Vec<f64>>,
    agent_cpu: Vec<f64>,
    agent_rss_kib: u64,
}

pub fn run(options: &Options) -> Result<()> {
    if !cmd::is_root() {
        bail!("benchmarks load eBPF programs: run `sudo -E cargo xtask bench`");
    }
    // Run-time statistics add to every BPF program run, sockerr's and
    // bpftrace's alike: the numbers would not be those of a normal host.
    if sockerr_scenarios::bpf_stats::enabled() {
        bail!(
            "kernel.bpf_stats_enabled is on and slows every BPF program: \
             `sysctl kernel.bpf_stats_enabled=0`, then run the benchmark again"
        );
    }
    setup::run()?;
    let agent = build::release(None)?;
    let root = cmd::workspace_root();
    let mut run = Run {
        quick: options.quick,
        scenario: root.join("target/release/sockerr-scenario"),
        agent,
        ns: HashMap::new(),
        agent_cpu: Vec::new(),
        agent_rss_kib: 0,
    };
    let rounds = if options.quick { 3 } else { 7 };
    for round in 0..rounds {
        // Rotate the order so no configuration always runs first or last.
        for i in 0..TOOLS.len() {
            let tool = TOOLS[(i + round) % TOOLS.len()];
            println!("xtask bench: round {}/{rounds}: {}", round + 1, tool.name());
            run.round(tool)?;
        }
    }
    let (each, nginx_rounds, seconds) = if options.quick {
        (25_000, 2, 3)
    } else {
        (100_000, 3, 5)
    };
    let burst = workload::burst(&run.agent, &run.scenario, 2, each)?;
    let nginx = workload::nginx(
        &run.agent,
        &root.join("target/bench-nginx"),
        nginx_rounds,
        seconds,
    )?;
    let short = short_lived::measure(&run.agent, &run.scenario, rounds)?;
    let scrape_ms = run.scrape_with_many_comms()?;
    let rss_after = if options.quick {
        None
    } else {
        Some(run.rss_after_findings(1_000_000)?)
    };
    let loops: Vec<_> = ["refused", "established", "pingpong", "masked", "udp"]
        .into_iter()
        .map(|name| (name, run.iterations(20_000, Tool::Sockerr)))
        .collect();
    let (costs, floor) = programs::measure(&run.agent, &run.scenario, &loops)?;
    let report = run.report(scrape_ms, rss_after, &burst, &nginx)
        + &short.table()
        + &programs::table(&costs, &floor);
    print!("{report}");
    let doc = root.join("docs/benchmarks.md");
    std::fs::write(&doc, run.document(&report))?;
    println!("xtask bench: wrote {}", doc.display());
    Ok(())
}

impl Run {
    fn iterations(&self, base: u64, tool: Tool) -> u64 {
        let n = if self.quick { base / 4 } else { base };
        (n / tool.divisor()).max(100)
    }

    fn round(&mut self, tool: Tool) -> Result<()> {
        let mut agent = match tool {
            Tool::Sockerr => Some(Agent::spawn(&self.agent, &[], Log::Discard)),
            Tool::SockerrAll => Some(Agent::spawn(
                &self.agent,
                &["--call-sites=all"],
                Log::Discard,
            )),
            _ => None,
        };
        let bpftrace = if tool == Tool::Bpftrace {
            Some(start_bpftrace()?)
        } else {
            None
        };
        let _floor = if tool == Tool::Floor {
            Some(programs::Floor::attach(&self.scenario)?)
        } else {
            None
        };
        // The agent's own figures (CPU, memory) are those of sockerr as
        // deployed, while loops 1–4 run.
        let watched = agent.as_mut().filter(|_| tool == Tool::Sockerr);
        let cpu_before = watched.as_ref().map(|a| (a.cpu_seconds(), Instant::now()));
        for (name, _, base) in LOOPS {
            if name == "masked"
                && let (Some((cpu, since)), Some(a)) = (cpu_before, watched.as_ref())
            {
                self.agent_cpu
                    .push((a.cpu_seconds() - cpu) / since.elapsed().as_secs_f64());
            }
            let n = self.iterations(base, tool);
            let ns = self.measure(tool, name, n)?;
            self.ns.entry((tool, name)).or_default().push(ns);
        }
        if let Some(a) = &watched {
            self.agent_rss_kib = self.agent_rss_kib.max(a.rss_kib());
        }
        if let Some(mut b) = bpftrace {
            // bpftrace ends its run on SIGINT.
            sockerr_testkit::signal(&b, Signal::SIGINT);
            let _ = b.wait();
        }
        Ok(())
    }

    fn measure(&self, tool: Tool, name: &str, n: u64) -> Result<f64> {
        let mut command = if tool == Tool::Strace {
            let mut c = Command::new("strace");
            c.args([
                "-f",
                "-qq",
                "-o",
                "/dev/null",
                "-e",
                "trace=connect,getsockopt",
            ])
            .arg(&self.scenario);
            c
        } else {
            Command::new(&self.scenario)
        };
        let out = command
            .args(["bench", name, &n.to_string(), "warm"])
            .output()
            .context("running the workload")?;
        if !out.status.success() {
            bail!(
                "{name} under {}: {}",
                tool.name(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .strip_prefix("ns_per_op=")
            .and_then(|v| v.parse().ok())
            .context("the workload printed no ns_per_op")
    }

    /// Median time of a /metrics scrape with 100 distinct comms exported.
    fn scrape_with_many_comms(&self) -> Result<f64> {
        println!("xtask bench: /metrics with 100 comms");
        let agent = Agent::spawn(&self.agent, &[], Log::Discard);
        for i in 0..100 {
            Command::new(&self.scenario)
                .args(["renamed", &format!("bench-comm-{i}")])
                .output()?;
        }
        thread::sleep(Duration::from_millis(300));
        let mut times: Vec<f64> = (0..21)
            .map(|_| {
                let start = Instant::now();
                agent.metrics();
                start.elapsed().as_secs_f64() * 1e3
            })
            .collect();
        if !agent.metrics().contains("bench-comm-99") {
            bail!("the 100 comms did not reach the metrics");
        }
        Ok(median(&mut times))
    }

    /// RSS (MiB) of the agent after `n` findings.
    fn rss_after_findings(&self, n: u64) -> Result<f64> {
        println!("xtask bench: agent memory after {n} findings");
        let agent = Agent::spawn(&self.agent, &[], Log::Discard);
        self.measure(Tool::Baseline, "masked", n)?;
        thread::sleep(Duration::from_millis(500));
        let rss = agent.rss_kib() as f64 / 1024.0;
        Ok(rss)
    }

    fn stats(&self, tool: Tool, name: &str) -> Option<(f64, f64, f64)> {
        let mut v = self.ns.get(&(tool, name))?.clone();
        let (min, max) = (
            v.iter().cloned().fold(f64::MAX, f64::min),
            v.iter().cloned().fold(0.0, f64::max),
        );
        Some((median(&mut v), min, max))
    }

    fn ratio(&self, tool: Tool, name: &str) -> f64 {
        self.stats(tool, name).unwrap().0 / self.stats(Tool::Baseline, name).unwrap().0
    }

    fn report(
        &self,
        scrape_ms: f64,
        rss_after: Option<f64>,
        burst: &workload::Burst,
        nginx: &workload::Nginx,
    ) -> String {
        let mut out = String::new();
        if self.quick {
            writeln!(
                out,
                "\n**--quick: 3 short rounds. This machine's rounds spread by more than the \
                 differences measured; the ratios below are indicative only and no target is \
                 judged. Run `cargo xtask bench` for numbers to conclude from.**"
            )
            .unwrap();
        }
        let mut bench = String::from("BENCH");
        writeln!(out, "\n| loop | baseline ns/op | floor (empty programs) | sockerr | sockerr, call sites on all | bpftrace | strace | sockerr added vs ⅓ of bpftrace's | sockerr above the floor |").unwrap();
        writeln!(
            out,
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
        )
        .unwrap();
        for (name, label, _) in LOOPS {
            let (base, bmin, bmax) = self.stats(Tool::Baseline, name).unwrap();
            let mut row = format!("| {label} | {base:.0} [{bmin:.0}–{bmax:.0}] ");
            let mut added = HashMap::new();
            for tool in [
                Tool::Floor,
                Tool::Sockerr,
                Tool::SockerrAll,
                Tool::Bpftrace,
                Tool::Strace,
            ] {
                let (m, lo, hi) = self.stats(tool, name).unwrap();
                let ratio = m / base;
                added.insert(tool, ratio - 1.0);
                write!(row, "| {m:.0} [{lo:.0}–{hi:.0}] ×{ratio:.3} ").unwrap();
                write!(bench, " {name}_{}={ratio:.3}", tool.name()).unwrap();
            }
            let ok = added[&Tool::Sockerr] <= added[&Tool::Bpftrace] / 3.0;
            write!(
                row,
                "| {:+.1} % vs {:+.1} % {} ",
                added[&Tool::Sockerr] * 100.0,
                added[&Tool::Bpftrace] * 100.0 / 3.0,
                match (self.quick, ok) {
                    (true, _) => "",
                    (false, true) => "✓",
                    (false, false) => "✗",
                }
            )
            .unwrap();
            let above = (added[&Tool::Sockerr] - added[&Tool::Floor]) * base;
            writeln!(row, "| {above:+.0} ns/op |").unwrap();
            out.push_str(&row);
        }
        writeln!(out).unwrap();
        for (flagged, clean) in TWINS {
            let premium = self.ratio(Tool::Sockerr, flagged) / self.ratio(Tool::Sockerr, clean);
            writeln!(
                out,
                "- flagged premium, `{flagged}` (a finding every iteration) over its clean twin `{clean}`, \
                 a long-running process (after a {WARM_UP_S} s warm-up): ×{premium:.3}{}",
                if self.quick { "" } else { " (target ≤ ×1.05)" }
            )
            .unwrap();
            write!(
                bench,
                " {}_flagged_premium={premium:.3}",
                flagged.replace('-', "_")
            )
            .unwrap();
        }
        let mut cpu = self.agent_cpu.clone();
        let cpu = median(&mut cpu) * 100.0;
        let rss = self.agent_rss_kib as f64 / 1024.0;
        writeln!(
            out,
            "- agent CPU during loops 1–4: {cpu:.2} % of one core (median of rounds)"
        )
        .unwrap();
        writeln!(
            out,
            "- burst: {} findings from 2 processes in {:.1} s ({:.0}/s): {} counted in \
             sockerr_findings_total, {} finding records sent, {} records lost; agent CPU \
             {:.1} ms per 10,000 findings ({:.2} % of a core at 10,000 findings/s), log \
             {:.0} bytes per 10,000 findings",
            burst.produced,
            burst.seconds,
            burst.rate(),
            burst.counted,
            burst.records,
            burst.lost,
            burst.cpu_ms_per_10k(),
            burst.cpu_pct_at_10k_per_s(),
            burst.log_bytes_per_10k(),
        )
        .unwrap();
        writeln!(
            out,
            "- nginx with an https upstream (wrk, 4 connections): {:.0} requests/s without \
             the agent, {:.0} with (×{:.3}); {:.2} findings per request",
            nginx.rps_without,
            nginx.rps_with,
            nginx.rps_with / nginx.rps_without,
            nginx.findings_per_request,
        )
        .unwrap();
        writeln!(
            out,
            "- agent RSS at the end of the rounds (largest): {rss:.1} MiB"
        )
        .unwrap();
        if let Some(r) = rss_after {
            writeln!(out, "- agent RSS after 1,000,000 findings: {r:.1} MiB").unwrap();
            write!(bench, " agent_rss_1m_mib={r:.1}").unwrap();
        }
        writeln!(
            out,
            "- /metrics scrape with 100 comms: {scrape_ms:.2} ms (median of 21)"
        )
        .unwrap();
        write!(
            bench,
            " agent_cpu_pct={cpu:.2} agent_rss_mib={rss:.1} burst_produced={} burst_counted={} \
             burst_records={} burst_lost={} agent_cpu_ms_per_10k={:.1} log_bytes_per_10k={:.0} \
             nginx_ratio={:.3} nginx_findings_per_request={:.2} scrape_ms={scrape_ms:.2}",
            burst.produced,
            burst.counted,
            burst.records,
            burst.lost,
            burst.cpu_ms_per_10k(),
            burst.log_bytes_per_10k(),
            nginx.rps_with / nginx.rps_without,
            nginx.findings_per_request,
        )
        .unwrap();
        writeln!(out, "\n{bench}").unwrap();
        out
    }

    fn document(&self, report: &str) -> String {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("model name"))
                    .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
            })
            .unwrap_or_default();
        let kernel = cmd::output(Command::new("uname").arg("-r")).unwrap_or_default();
        let cores = thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0);
        format!(
            "# Benchmarks\n\nGenerated by `cargo xtask bench{}` — do not edit by hand; see the \
             notes below the table.\n\nMachine: {cores} cores ({cpu}), Linux {}. Each loop runs \
             pinned to CPU 0 (the agent gets the other core); configurations alternate round by \
             round ({} rounds); cells are median ns/op [min–max] and the ratio to the baseline \
             median. strace runs 1/20 of the iterations.\n{report}\n{NOTES}",
            if self.quick { " --quick" } else { "" },
            kernel.trim(),
            if self.quick { 3 } else { 7 },
        )
    }
}

const NOTES: &str = include_str!("notes.md");

/// The warm-up of the timed loops (`sockerr-scenario bench … warm`).
const WARM_UP_S: u64 = 3;

fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn start_bpftrace() -> Result<Child> {
    let script = std::env::temp_dir().join("sockerr-bench.bt");
    std::fs::write(&script, BPFTRACE_SCRIPT)?;
    let mut child = Command::new("bpftrace")
        .arg(&script)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting bpftrace (cargo xtask setup installs it)")?;
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    match lines.next() {
        Some(Ok(l)) if l.starts_with("Attaching") => {}
        other => bail!("bpftrace did not attach: {other:?}"),
    }
    thread::spawn(move || lines.for_each(drop));
    thread::sleep(Duration::from_millis(500));
    Ok(child)
}
