//! Sets `bpf_target_arch`: the call-site uprobes read the caller's return
//! address from an architecture-specific place. Asks bpf-linker to let LLVM
//! expand small memsets into stores (docs/design.md §4).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    aya_build::emit_bpf_target_arch_cfg()?;
    println!("cargo:rustc-link-arg=--disable-expand-memcpy-in-order");
    Ok(())
}
