//! Sets `bpf_target_arch`: the call-site uprobes read the caller's return
//! address from an architecture-specific place.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    aya_build::emit_bpf_target_arch_cfg()?;
    Ok(())
}
