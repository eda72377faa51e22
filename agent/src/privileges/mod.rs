//! Least privilege: once the probes are attached, the agent keeps only what
//! reading its maps, attributing processes and (unless call sites are off)
//! attaching uprobes to flagged processes needs.

use anyhow::{Context as _, Result};
use caps::{CapSet, Capability, CapsHashSet};

/// Reading maps and ring buffers through the fds the agent already holds
/// needs no capability; CAP_SYS_PTRACE lets it read /proc/<pid>/exe,
/// /proc/<pid>/fd and /proc/<pid>/maps of the processes it flags.
const ATTRIBUTE: Capability = Capability::CAP_SYS_PTRACE;
/// Creating a uprobe needs CAP_SYS_ADMIN since Linux 6.16 (and 6.12.y,
/// 6.6.y stable: "perf: Require CAP_SYS_ADMIN for uprobes"); it also covers
/// attaching the BPF program to it.
pub const UPROBES: Capability = Capability::CAP_SYS_ADMIN;

/// Whether the agent can create uprobes now.
pub fn can_create_uprobes() -> bool {
    caps::has_cap(None, CapSet::Effective, UPROBES).unwrap_or(false)
}

pub fn drop_after_attach(keep_uprobes: bool) -> Result<()> {
    let permitted = caps::read(None, CapSet::Permitted).context("reading capabilities")?;
    let keep: CapsHashSet = permitted
        .into_iter()
        .filter(|c| *c == ATTRIBUTE || (keep_uprobes && *c == UPROBES))
        .collect();
    for set in [CapSet::Ambient, CapSet::Inheritable] {
        caps::clear(None, set).with_context(|| format!("clearing {set:?} capabilities"))?;
    }
    caps::set(None, CapSet::Effective, &keep).context("dropping effective capabilities")?;
    caps::set(None, CapSet::Permitted, &keep).context("dropping permitted capabilities")?;
    tracing::info!(kept = ?keep, "dropped the other capabilities after attaching");
    Ok(())
}
