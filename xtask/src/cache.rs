//! Where xtask keeps what it builds and downloads (bpf-linker, the Python
//! tools, the kernel matrix's kernels): a leaf, so that setting up and
//! fetching kernels need not ask each other.

use std::path::PathBuf;

use anyhow::{Context as _, Result};

/// $XDG_CACHE_HOME/sockerr or ~/.cache/sockerr.
pub fn dir() -> Result<PathBuf> {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .context("neither XDG_CACHE_HOME nor HOME is set")?;
    Ok(cache.join("sockerr"))
}

/// The kernel matrix's kernels, one directory per series, and its private
/// apt view (`apt/`).
pub fn kernels() -> Result<PathBuf> {
    Ok(dir()?.join("kernels"))
}
