//! The architectures sockerr is built and tested for, and the name each
//! tool gives them (Debian, Rust, GNU, QEMU): a leaf that setup, build and
//! the kernel matrix all ask.

use anyhow::{Result, bail};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Arch {
    Amd64,
    Arm64,
}

pub const ARCHES: [Arch; 2] = [Arch::Amd64, Arch::Arm64];

impl Arch {
    /// The architecture xtask runs on.
    pub fn host() -> Result<Self> {
        match std::env::consts::ARCH {
            "x86_64" => Ok(Self::Amd64),
            "aarch64" => Ok(Self::Arm64),
            other => bail!("xtask runs on x86_64 and aarch64 hosts, not {other}"),
        }
    }

    pub fn is_host(self) -> bool {
        Self::host().is_ok_and(|h| h == self)
    }

    /// Rust's target triple with the GNU C library.
    pub fn rust_target(self) -> &'static str {
        match self {
            Self::Amd64 => "x86_64-unknown-linux-gnu",
            Self::Arm64 => "aarch64-unknown-linux-gnu",
        }
    }

    /// The architecture a Rust target triple builds for.
    pub fn of_rust_target(target: &str) -> Option<Self> {
        match target.split('-').next()? {
            "x86_64" => Some(Self::Amd64),
            "aarch64" => Some(Self::Arm64),
            _ => None,
        }
    }

    /// Debian's name: package architectures, kernel flavours (`cloud-arm64`).
    pub fn debian(self) -> &'static str {
        match self {
            Self::Amd64 => "amd64",
            Self::Arm64 => "arm64",
        }
    }

    /// The GNU triplet: multiarch library directories and the prefix of
    /// Debian's cross tools (`aarch64-linux-gnu-gcc`).
    pub fn gnu(self) -> &'static str {
        match self {
            Self::Amd64 => "x86_64-linux-gnu",
            Self::Arm64 => "aarch64-linux-gnu",
        }
    }

    /// Debian's cross compiler and C library for building on another
    /// architecture (`gcc-aarch64-linux-gnu`, `libc6-dev-arm64-cross`).
    pub fn cross_packages(self) -> [String; 2] {
        [
            format!("gcc-{}", self.gnu().replace('_', "-")),
            format!("libc6-dev-{}-cross", self.debian()),
        ]
    }

    /// A binutils program that handles this architecture's ELF files: the
    /// host's own, or the cross one (the host's objcopy knows no other
    /// machine).
    pub fn binutil(self, tool: &str) -> String {
        if self.is_host() {
            tool.to_owned()
        } else {
            format!("{}-{tool}", self.gnu())
        }
    }

    /// The QEMU that emulates it, and Debian's package of it.
    pub fn qemu(self) -> (&'static str, &'static str) {
        match self {
            Self::Amd64 => ("qemu-system-x86_64", "qemu-system-x86"),
            Self::Arm64 => ("qemu-system-aarch64", "qemu-system-arm"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_agree() {
        for arch in ARCHES {
            assert_eq!(Arch::of_rust_target(arch.rust_target()), Some(arch));
        }
        assert_eq!(
            Arch::Arm64.cross_packages(),
            ["gcc-aarch64-linux-gnu", "libc6-dev-arm64-cross"]
        );
        assert_eq!(
            Arch::Amd64.cross_packages(),
            ["gcc-x86-64-linux-gnu", "libc6-dev-amd64-cross"]
        );
        assert_eq!(
            Arch::of_rust_target("aarch64-unknown-linux-musl"),
            Some(Arch::Arm64)
        );
        assert_eq!(Arch::of_rust_target("riscv64gc-unknown-linux-gnu"), None);
    }
}
