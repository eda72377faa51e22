//! `sockerr check`: can this host run the agent, and if not, why.

use std::path::Path;

use crate::{btf, probes};

pub struct Requirement {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

fn req(name: impl Into<String>, result: Result<String, String>) -> Requirement {
    let (ok, detail) = match result {
        Ok(d) => (true, d),
        Err(d) => (false, d),
    };
    Requirement {
        name: name.into(),
        ok,
        detail,
    }
}

/// Capabilities loading and attaching the probes needs: tracing programs
/// need CAP_PERFMON, cgroup programs CAP_NET_ADMIN, both CAP_BPF.
const CAPABILITIES: [(u32, &str); 3] =
    [(39, "CAP_BPF"), (38, "CAP_PERFMON"), (12, "CAP_NET_ADMIN")];

fn effective_capabilities() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let hex = s
                .lines()
                .find_map(|l| l.strip_prefix("CapEff:"))?
                .trim()
                .to_owned();
            u64::from_str_radix(&hex, 16).ok()
        })
        .unwrap_or(0)
}

fn privileges() -> Result<String, String> {
    let eff = effective_capabilities();
    let missing: Vec<_> = CAPABILITIES
        .iter()
        .filter(|(bit, _)| eff & (1 << bit) == 0)
        .map(|(_, n)| *n)
        .collect();
    if missing.is_empty() {
        Ok("CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN are effective".into())
    } else {
        Err(format!(
            "missing {}: run as root, or grant CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN",
            missing.join(", ")
        ))
    }
}

/// Every requirement, in order; with `trial_load`, also loads the programs
/// into the kernel (the verifier, ring buffer and maps) without
/// attaching them.
pub fn requirements(trial_load: bool) -> Vec<Requirement> {
    let mut reqs = vec![req("privileges", privileges())];
    let parsed = btf::Btf::from_file(btf::VMLINUX)
        .map_err(|e| format!("{e:#} (the kernel needs CONFIG_DEBUG_INFO_BTF=y)"));
    let offsets = parsed
        .as_ref()
        .map_err(Clone::clone)
        .and_then(|b| b.kernel_offsets().map_err(|e| format!("{e:#}")));
    reqs.push(req(
        "kernel BTF",
        offsets
            .as_ref()
            .map(|_| format!("{} describes struct sock", btf::VMLINUX))
            .map_err(Clone::clone),
    ));
    for (name, program, what) in probes::PROBES {
        let result = if program == "so_error" {
            probes::cgroup2_root()
                .map(|root| {
                    format!(
                        "cgroup getsockopt on the cgroup v2 root {}: {what}",
                        root.display()
                    )
                })
                .map_err(|e| format!("{e:#}"))
        } else {
            match &parsed {
                Ok(b) if b.has_type(&format!("btf_trace_{name}")) => {
                    Ok(format!("tp_btf/{name}: {what}"))
                }
                Ok(_) => Err(format!(
                    "this kernel has no tracepoint {name} (needed for {what})"
                )),
                Err(e) => Err(e.clone()),
            }
        };
        reqs.push(req(format!("probe {name}"), result));
    }
    let tracefs = Path::new("/sys/kernel/tracing/events").is_dir();
    reqs.push(req(
        "tracefs",
        Ok(if tracefs {
            "mounted (not required: sockerr uses BTF tracepoints)"
        } else {
            "not mounted (not required: sockerr uses BTF tracepoints)"
        }
        .into()),
    ));
    reqs.push(req(
        "call sites (optional)",
        Ok(match crate::callsites::uprobes::unavailable() {
            None => "uprobes can be attached to flagged processes".into(),
            Some(why) => format!("findings will carry no call sites: {why}"),
        }),
    ));
    if trial_load {
        let can_load = reqs.iter().all(|r| r.ok);
        let result = match (&offsets, can_load) {
            (Ok(o), true) => probes::load(o)
                .map(|_| "every program passed the verifier; ring buffer and maps created".into())
                .map_err(|e| format!("{e:#}")),
            _ => Err("not tried: fix the requirements above first".into()),
        };
        reqs.push(req("eBPF load", result));
    }
    reqs
}

/// Prints every requirement; true when all are met.
pub fn report(reqs: &[Requirement]) -> bool {
    for r in reqs {
        println!(
            "{:<8} {:<28} {}",
            if r.ok { "ok" } else { "MISSING" },
            r.name,
            r.detail
        );
    }
    reqs.iter().all(|r| r.ok)
}

/// The same checks as `sockerr check`, as one error for `run` and `trace`.
pub fn require() -> anyhow::Result<()> {
    let missing: Vec<_> = requirements(false)
        .into_iter()
        .filter(|r| !r.ok)
        .map(|r| format!("{}: {}", r.name, r.detail))
        .collect();
    anyhow::ensure!(
        missing.is_empty(),
        "this host cannot run sockerr:\n  {}",
        missing.join("\n  ")
    );
    Ok(())
}
