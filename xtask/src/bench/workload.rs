//! The worst realistic cases, measured beside their clean ones: a burst of
//! findings from several processes, and nginx proxying to a TLS upstream (a
//! finding on every request), with and without the agent, alternated.

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use sockerr_testkit::{Agent, Log, closed_port, net, tls_server};

use super::median;

/// What a burst of findings cost and what was counted.
pub struct Burst {
    pub produced: u64,
    pub counted: u64,
    pub records: u64,
    pub lost: u64,
    pub seconds: f64,
    pub agent_cpu_seconds: f64,
    pub log_bytes: u64,
}

impl Burst {
    pub fn rate(&self) -> f64 {
        self.produced as f64 / self.seconds
    }

    /// Agent CPU per 10,000 findings, in milliseconds.
    pub fn cpu_ms_per_10k(&self) -> f64 {
        self.agent_cpu_seconds * 1e3 / self.produced as f64 * 1e4
    }

    /// The agent's share of one core at 10,000 findings a second, in %.
    pub fn cpu_pct_at_10k_per_s(&self) -> f64 {
        self.cpu_ms_per_10k() / 10.0
    }

    pub fn log_bytes_per_10k(&self) -> f64 {
        self.log_bytes as f64 / self.produced as f64 * 1e4
    }
}

/// `processes` workload processes, each making `each` findings (the libevent
/// bug on every connect), at once, under the agent as deployed.
pub fn burst(agent_bin: &Path, scenario: &Path, processes: usize, each: u64) -> Result<Burst> {
    println!(
        "xtask bench: burst of {} findings from {processes} processes",
        processes as u64 * each
    );
    let agent = Agent::spawn(agent_bin, &[], Log::Capture);
    let cpu = agent.cpu_seconds();
    let log = agent.log_bytes();
    let start = Instant::now();
    let comms: Vec<String> = (0..processes).map(|i| format!("burst-{i}")).collect();
    let mut children: Vec<Child> = comms
        .iter()
        .map(|comm| {
            Command::new(scenario)
                .args(["bench", "masked", &each.to_string()])
                .env("SCENARIO_COMM", comm)
                .stdout(Stdio::null())
                .spawn()
                .context("starting a workload process")
        })
        .collect::<Result<_>>()?;
    for child in &mut children {
        if !child.wait()?.success() {
            bail!("a burst process failed");
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    // Records reach the agent within its drain interval; the tallies within
    // two seconds.
    thread::sleep(Duration::from_millis(2500));
    let metrics = agent.metrics();
    let counted = comms
        .iter()
        .map(|c| {
            sum(
                &metrics,
                &format!(r#"sockerr_findings_total{{comm="{c}",kind="so_error_masked"}}"#),
            )
        })
        .sum();
    Ok(Burst {
        produced: processes as u64 * each,
        counted,
        records: sum(&metrics, "sockerr_finding_records_total"),
        lost: sum(&metrics, "sockerr_events_lost_total"),
        seconds,
        agent_cpu_seconds: agent.cpu_seconds() - cpu,
        log_bytes: agent.log_bytes() - log,
    })
}

/// Sum of the samples of series starting with `prefix`.
pub fn sum(metrics: &str, prefix: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// nginx proxying to an https upstream, with and without the agent.
pub struct Nginx {
    pub rps_without: f64,
    pub rps_with: f64,
    pub findings_per_request: f64,
}

/// Requests per second wrk got through `url` in `seconds`, and how many.
fn wrk(url: &str, seconds: u64) -> Result<(f64, u64)> {
    let out = Command::new("wrk")
        .args(["-t1", "-c4", &format!("-d{seconds}s"), url])
        .output()
        .context("running wrk (cargo xtask setup installs it)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("wrk printed no rate: {text}"))?;
    let requests = text
        .lines()
        .find_map(|l| l.trim().split_once(" requests in "))
        .and_then(|(n, _)| n.parse().ok())
        .with_context(|| format!("wrk printed no count: {text}"))?;
    Ok((rps, requests))
}

pub fn nginx(agent_bin: &Path, dir: &Path, rounds: usize, seconds: u64) -> Result<Nginx> {
    println!("xtask bench: nginx with an https upstream, {rounds} rounds each way");
    std::fs::create_dir_all(dir)?;
    let (_upstream, tls) = tls_server(dir);
    let front = closed_port();
    let _nginx = net::nginx(dir, &[(front, format!("https://127.0.0.1:{tls}"))]);
    let url = format!("http://127.0.0.1:{front}/");
    let (mut with, mut without) = (Vec::new(), Vec::new());
    let (mut findings, mut requests) = (0, 0);
    for _ in 0..rounds {
        // Each measured run follows a short unmeasured one: with the agent,
        // nginx is flagged at its first upstream connect and carries
        // call-site uprobes until a few findings have shown its call sites,
        // a one-time cost left out of the measurement.
        wrk(&url, 3)?;
        without.push(wrk(&url, seconds)?.0);
        let agent = Agent::spawn(agent_bin, &[], Log::Discard);
        wrk(&url, 3)?;
        let before = sum(
            &agent.metrics(),
            r#"sockerr_findings_total{comm="nginx",kind="so_error_reread"}"#,
        );
        let (rps, n) = wrk(&url, seconds)?;
        with.push(rps);
        // The tallies are read every two seconds; the counters at the scrape.
        thread::sleep(Duration::from_millis(500));
        findings += sum(
            &agent.metrics(),
            r#"sockerr_findings_total{comm="nginx",kind="so_error_reread"}"#,
        ) - before;
        requests += n;
    }
    Ok(Nginx {
        rps_without: median(&mut without),
        rps_with: median(&mut with),
        findings_per_request: findings as f64 / requests as f64,
    })
}
