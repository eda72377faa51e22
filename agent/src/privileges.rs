//! Least privilege: once the probes are attached, the agent keeps only what
//! reading its maps and attributing processes needs.

use anyhow::{Context as _, Result};
use caps::{CapSet, Capability, CapsHashSet};

/// Reading maps and ring buffers through the fds the agent already holds
/// needs no capability; CAP_SYS_PTRACE lets it read /proc/<pid>/exe and
/// /proc/<pid>/fd of the processes it flags.
const KEEP: Capability = Capability::CAP_SYS_PTRACE;

pub fn drop_after_attach() -> Result<()> {
    let permitted = caps::read(None, CapSet::Permitted).context("reading capabilities")?;
    let keep: CapsHashSet = permitted.into_iter().filter(|c| *c == KEEP).collect();
    for set in [CapSet::Ambient, CapSet::Inheritable] {
        caps::clear(None, set).with_context(|| format!("clearing {set:?} capabilities"))?;
    }
    caps::set(None, CapSet::Effective, &keep).context("dropping effective capabilities")?;
    caps::set(None, CapSet::Permitted, &keep).context("dropping permitted capabilities")?;
    tracing::info!(kept = ?keep, "dropped the other capabilities after attaching");
    Ok(())
}
