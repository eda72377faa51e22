//! A per-CPU counter map that the agent drains. aya reads and iterates it;
//! taking a key — its value read and the key deleted in one step, so an
//! increment can no longer fall between a read and a later deletion — is
//! the kernel's `BPF_MAP_LOOKUP_AND_DELETE_ELEM`, which aya offers for
//! queues and stacks only (docs/design.md §5, "Kernel counters").

use std::os::fd::{AsFd as _, AsRawFd as _, OwnedFd};

use anyhow::{Context as _, Result, bail};
use aya::{
    Pod,
    maps::{Map, MapData, PerCpuHashMap},
};

/// What taking a key found.
#[derive(Debug, PartialEq)]
pub enum Taken {
    /// Deleted; its total over CPUs at that instant.
    Total(u64),
    /// Deleted; the kernel (< 5.14) cannot say its total at that instant.
    Deleted,
    /// Not in the map.
    Gone,
    /// Not deleted (an error, logged): still counted from its next read.
    Kept,
}

pub struct CounterMap<K: Pod> {
    map: PerCpuHashMap<MapData, K, u64>,
    /// The same map, for the one command aya does not wrap.
    fd: OwnedFd,
    /// One value per possible CPU: what the kernel copies out.
    values: Vec<u64>,
    /// Whether the kernel takes keys in one step (hash maps: Linux ≥ 5.14).
    atomic: bool,
}

impl<K: Pod> CounterMap<K> {
    pub fn new(map: Map) -> Result<Self> {
        let Map::PerCpuHashMap(data) = &map else {
            bail!("not a per-CPU hash map");
        };
        let fd = data.fd().as_fd().try_clone_to_owned()?;
        let cpus = aya::util::nr_cpus().map_err(|(file, e)| anyhow::anyhow!("{file}: {e}"))?;
        Ok(Self {
            map: PerCpuHashMap::try_from(map)?,
            fd,
            values: vec![0; cpus],
            atomic: true,
        })
    }

    /// Every key, with its total over CPUs.
    pub fn totals(&self) -> Result<Vec<(K, u64)>> {
        self.map
            .iter()
            .map(|entry| {
                let (key, per_cpu) = entry.context("reading a counter map")?;
                Ok((key, per_cpu.iter().sum()))
            })
            .collect()
    }

    /// Deletes `key`, with its total at that instant where the kernel can
    /// tell it.
    pub fn take(&mut self, key: &K) -> Taken {
        if self.atomic {
            match lookup_and_delete(&self.fd, key, &mut self.values) {
                Ok(()) => return Taken::Total(self.values.iter().sum()),
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Taken::Gone,
                // ENOTSUPP (524, kernel-internal) or EINVAL: not for hash maps here.
                Err(e) if matches!(e.raw_os_error(), Some(524 | libc::EINVAL)) => {
                    tracing::info!(
                        "this kernel cannot read and delete a counter in one step: an increment \
                         landing between a quiet counter's last read and its deletion is lost"
                    );
                    self.atomic = false;
                }
                // Left in place: counted from its next read.
                Err(e) => {
                    tracing::warn!("taking a counter: {e}");
                    return Taken::Kept;
                }
            }
        }
        match self.map.remove(key) {
            Ok(()) => Taken::Deleted,
            Err(_) => Taken::Kept,
        }
    }
}

/// `BPF_MAP_LOOKUP_AND_DELETE_ELEM` on a per-CPU map: `values` holds one
/// u64 per possible CPU.
fn lookup_and_delete<K: Pod>(fd: &OwnedFd, key: &K, values: &mut [u64]) -> std::io::Result<()> {
    /// The map-element part of `union bpf_attr`.
    #[repr(C)]
    struct ElemAttr {
        map_fd: u32,
        _pad: u32,
        key: u64,
        value: u64,
        flags: u64,
    }
    const BPF_MAP_LOOKUP_AND_DELETE_ELEM: libc::c_long = 21;
    let attr = ElemAttr {
        map_fd: fd.as_raw_fd() as u32,
        _pad: 0,
        key: std::ptr::from_ref(key) as u64,
        value: values.as_mut_ptr() as u64,
        flags: 0,
    };
    // SAFETY: the attribute points at a key of the map's key size and at a
    // buffer of one u64 per possible CPU, the size of a per-CPU u64 value.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_LOOKUP_AND_DELETE_ELEM,
            &raw const attr,
            size_of::<ElemAttr>(),
        )
    };
    if ret < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
