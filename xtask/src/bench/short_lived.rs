//! What a flagged process that does not live long pays, the case call-site
//! uprobes made expensive: a 5,000-connect process flagged on every connect
//! (`masked`) beside its clean twin (`refused`), each a fresh copy of the
//! workload program (a new executable to the agent), with and without the
//! agent, alternated round by round; and the tenth 5,000-connect process of
//! an executable whose call sites a long-running process of it showed. The
//! agent is left to go idle before each measured process, and the twins take
//! turns at going first.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use sockerr_testkit::{Agent, Log};

use super::median;

/// Connects per short-lived process.
const CONNECTS: u64 = 5_000;
/// Connects of the long-running process that shows the call sites first
/// (it runs on past the call-site delay).
const LONG_CONNECTS: u64 = 300_000;

pub struct ShortLived {
    /// Ratio to no agent, per round: (fresh flagged, fresh clean, tenth
    /// flagged of a known executable, tenth clean).
    rounds: Vec<[f64; 4]>,
}

/// A copy of the workload program under a new name: a new inode, so a new
/// executable to the agent.
fn fresh_copy(scenario: &Path, n: usize) -> Result<PathBuf> {
    let path = scenario.with_file_name(format!("sockerr-scenario-fresh-{n}"));
    let _ = std::fs::remove_file(&path);
    std::fs::copy(scenario, &path).context("copying the workload program")?;
    Ok(path)
}

/// ns per connect of `program bench <workload> <n>` (no warm-up: the
/// process is short-lived on purpose).
fn ns(program: &Path, workload: &str, n: u64) -> Result<f64> {
    let out = Command::new(program)
        .args(["bench", workload, &n.to_string()])
        .output()
        .context("running the workload")?;
    if !out.status.success() {
        bail!("{workload}: {}", String::from_utf8_lossy(&out.stderr));
    }
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .strip_prefix("ns_per_op=")
        .and_then(|v| v.parse().ok())
        .context("the workload printed no ns_per_op")
}

/// Waits until the agent is idle (under 15 ms of CPU in 200 ms, or 5 s
/// passed): what it does for the previous process (attributing its first
/// finding, probing, its exit) must not run beside the next measured one,
/// which would then pay for it.
fn settle(agent: &Agent) {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        let before = agent.cpu_seconds();
        thread::sleep(Duration::from_millis(200));
        if agent.cpu_seconds() - before < 0.015 {
            return;
        }
    }
}

/// ns per connect of a flagged process and of its clean twin, each a
/// process of `program`, the agent (if any) idle before each. Which runs
/// first alternates with `round`.
fn twins(program: &Path, agent: Option<&Agent>, round: usize) -> Result<[f64; 2]> {
    let mut order = [("masked", 0), ("refused", 1)];
    if round % 2 == 1 {
        order.reverse();
    }
    let mut out = [0.0; 2];
    for (workload, i) in order {
        if let Some(agent) = agent {
            settle(agent);
        }
        out[i] = ns(program, workload, CONNECTS)?;
    }
    Ok(out)
}

pub fn measure(agent_bin: &Path, scenario: &Path, rounds: usize) -> Result<ShortLived> {
    println!("xtask bench: short-lived flagged processes ({rounds} rounds)");
    let mut out = ShortLived { rounds: Vec::new() };
    for round in 0..rounds {
        // Without the agent: the same programs, fresh copies too.
        let base = fresh_copy(scenario, round * 2)?;
        let without = twins(&base, None, round)?;
        let agent = Agent::spawn(agent_bin, &[], Log::Discard);
        let fresh = fresh_copy(scenario, round * 2 + 1)?;
        let first = twins(&fresh, Some(&agent), round)?;
        // A long-running process of the executable shows its call sites,
        // then nine short ones run before the tenth is measured.
        ns(&fresh, "masked", LONG_CONNECTS)?;
        for _ in 0..9 {
            ns(&fresh, "masked", CONNECTS)?;
        }
        let tenth = twins(&fresh, Some(&agent), round)?;
        drop(agent);
        for path in [&base, &fresh] {
            let _ = std::fs::remove_file(path);
        }
        out.rounds.push([
            first[0] / without[0],
            first[1] / without[1],
            tenth[0] / without[0],
            tenth[1] / without[1],
        ]);
    }
    Ok(out)
}

impl ShortLived {
    /// Median and spread of `f` over the rounds.
    fn stat(&self, f: impl Fn(&[f64; 4]) -> f64) -> (f64, f64, f64) {
        let mut v: Vec<f64> = self.rounds.iter().map(f).collect();
        let (lo, hi) = (
            v.iter().cloned().fold(f64::MAX, f64::min),
            v.iter().cloned().fold(0.0, f64::max),
        );
        (median(&mut v), lo, hi)
    }

    pub fn table(&self) -> String {
        let mut t = String::from(
            "\nShort-lived flagged processes: a 5,000-connect process flagged on every connect \
             (`masked`) and its clean twin (`refused`), ratios to no agent per round, median \
             [min–max]; the premium is the flagged ratio over the clean one.\n\n\
             | process | flagged | clean | premium |\n| --- | --- | --- | --- |\n",
        );
        let rows: [(&str, usize, &str); 2] = [
            ("first of a new executable", 0, "≤ ×1.25"),
            (
                "tenth of an executable whose call sites are known",
                2,
                "≤ ×1.05",
            ),
        ];
        for (name, i, target) in rows {
            let (f, flo, fhi) = self.stat(|r| r[i]);
            let (c, clo, chi) = self.stat(|r| r[i + 1]);
            let (p, plo, phi) = self.stat(|r| r[i] / r[i + 1]);
            writeln!(
                t,
                "| {name} | ×{f:.3} [{flo:.3}–{fhi:.3}] | ×{c:.3} [{clo:.3}–{chi:.3}] | \
                 ×{p:.3} [{plo:.3}–{phi:.3}] (target {target}) |"
            )
            .unwrap();
        }
        t
    }
}
