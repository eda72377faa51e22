//! Where the time goes: each of the agent's eBPF programs, its calls per
//! loop iteration and its run time per call, from the kernel's own
//! accounting (`kernel.bpf_stats_enabled=1`, which adds ≈ 20 ns a call).
//! Run after the timed rounds: the statistics slow every program. Beside
//! each, the floor: an empty program on the same hook.

use std::{
    collections::HashMap,
    fmt::Write as _,
    io::{BufRead as _, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;
use sockerr_scenarios::bpf_stats;
use sockerr_testkit::{Agent, Log};

pub struct Cost {
    pub workload: &'static str,
    pub program: String,
    pub calls_per_op: f64,
    pub ns_per_call: f64,
}

/// Loaded programs by id: (name, run time in ns, run count). Through
/// bpftool, which names programs in full from their BTF (the kernel keeps
/// 15 characters, as `bpf_stats::programs` in the VMs without bpftool shows).
fn programs() -> Result<HashMap<u64, (String, u64, u64)>> {
    let out = Command::new("bpftool")
        .args(["prog", "show", "--json"])
        .output()
        .context("running bpftool")?;
    if !out.status.success() {
        bail!(
            "bpftool prog show: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let all: Vec<Value> = serde_json::from_slice(&out.stdout).context("bpftool's JSON")?;
    Ok(all
        .iter()
        .filter_map(|p| {
            let id = p["id"].as_u64()?;
            let name = p["name"].as_str().unwrap_or("?").to_owned();
            let time = p["run_time_ns"].as_u64().unwrap_or(0);
            Some((id, (name, time, p["run_cnt"].as_u64().unwrap_or(0))))
        })
        .collect())
}

/// Turns the statistics on until dropped.
struct Enabled;

impl Enabled {
    fn on() -> Result<Self> {
        bpf_stats::set(true)?;
        Ok(Self)
    }
}

impl Drop for Enabled {
    fn drop(&mut self) {
        let _ = bpf_stats::set(false);
    }
}

/// The floor's program on the same hook as the agent's `program`.
fn floor_of(program: &str) -> Option<&'static str> {
    Some(match program {
        "inet_sock_set_state" => "floor_state",
        "sock_send_length" => "floor_send",
        "sock_recv_length" => "floor_recv",
        "so_error" => "floor_sockopt",
        "sock_release" => "floor_release",
        _ => return None,
    })
}

/// Each workload run `n` times once, with the programs loaded now (all but
/// `others`) counting.
fn costs_of(
    scenario: &Path,
    loops: &[(&'static str, u64)],
    others: &HashMap<u64, (String, u64, u64)>,
) -> Result<Vec<Cost>> {
    let _stats = Enabled::on()?;
    let mut costs = Vec::new();
    for &(workload, n) in loops {
        let before = programs()?;
        // The workload pins itself to CPU 0, as in the timed rounds.
        let status = Command::new(scenario)
            .args(["bench", workload, &n.to_string()])
            .output()
            .context("running the workload")?
            .status;
        if !status.success() {
            bail!("{workload} failed: {status}");
        }
        let mut after: Vec<_> = programs()?
            .into_iter()
            .filter(|(id, _)| !others.contains_key(id))
            .collect();
        after.sort_by_key(|&(id, _)| id);
        for (id, (program, time, count)) in after {
            let (_, time0, count0) = before.get(&id).cloned().unwrap_or_default();
            let calls = count.saturating_sub(count0);
            if calls > 0 {
                costs.push(Cost {
                    workload,
                    program,
                    calls_per_op: calls as f64 / n as f64,
                    ns_per_call: time.saturating_sub(time0) as f64 / calls as f64,
                });
            }
        }
    }
    Ok(costs)
}

/// `sockerr-scenario floor` (an empty program on each of the agent's
/// hooks), attached until dropped.
pub struct Floor(Child);

impl Floor {
    pub fn attach(scenario: &Path) -> Result<Self> {
        let mut child = Command::new(scenario)
            .arg("floor")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting sockerr-scenario floor")?;
        let mut said = String::new();
        BufReader::new(child.stdout.take().context("the floor's output")?).read_line(&mut said)?;
        if said.trim() != "floor attached" {
            let _ = child.kill();
            bail!("sockerr-scenario floor: {:?}", child.wait_with_output()?);
        }
        Ok(Self(child))
    }
}

impl Drop for Floor {
    /// It detaches and exits when its standard input closes.
    fn drop(&mut self) {
        drop(self.0.stdin.take());
        let _ = self.0.wait();
    }
}

/// The agent as deployed, then the floor (the agent not running), each
/// workload run `n` times once under each.
pub fn measure(
    agent_bin: &Path,
    scenario: &Path,
    loops: &[(&'static str, u64)],
) -> Result<(Vec<Cost>, Vec<Cost>)> {
    println!("xtask bench: per-program cost (kernel.bpf_stats_enabled)");
    let others = programs()?;
    let agent = Agent::spawn(agent_bin, &[], Log::Discard);
    let costs = costs_of(scenario, loops, &others)?;
    drop(agent);
    println!("xtask bench: the floor: an empty program on each hook");
    let floor = Floor::attach(scenario)?;
    let floor_costs = costs_of(scenario, loops, &others);
    drop(floor);
    let floor_costs = floor_costs?
        .into_iter()
        .filter(|c| c.program.starts_with("floor_"))
        .collect();
    Ok((costs, floor_costs))
}

/// The costs as a markdown table, each program beside the floor of its
/// hook in the same workload.
pub fn table(costs: &[Cost], floor: &[Cost]) -> String {
    let mut out = String::from(
        "\nWhere the time goes, per eBPF program of the agent as deployed \
         (kernel.bpf_stats_enabled=1, after the timed rounds; ≈ 20 ns a call is the \
         statistics' own), beside the floor: an empty program on the same hook, run \
         by the same workload without the agent (`sockerr-scenario floor`; a raw \
         tracepoint for the agent's tp_btf ones, whose dispatch is the same):\n\n\
         | workload | program | calls per iteration | ns per call | floor ns per call | ns per iteration |\n\
         | --- | --- | --- | --- | --- | --- |\n",
    );
    for c in costs {
        let floor = floor_of(&c.program)
            .and_then(|f| {
                floor
                    .iter()
                    .find(|fc| fc.workload == c.workload && fc.program == f)
            })
            .map_or("–".to_owned(), |fc| format!("{:.0}", fc.ns_per_call));
        writeln!(
            out,
            "| {} | `{}` | {:.2} | {:.0} | {floor} | {:.0} |",
            c.workload,
            c.program,
            c.calls_per_op,
            c.ns_per_call,
            c.calls_per_op * c.ns_per_call
        )
        .unwrap();
    }
    out
}
