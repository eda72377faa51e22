//! Kernel struct field offsets from the running kernel's BTF
//! (/sys/kernel/btf/vmlinux), for the probes that read `struct sock`.
//!
//! A small reader of the BTF format (include/uapi/linux/btf.h): it walks the
//! type section once and resolves `struct.member` paths, descending into
//! anonymous structs and unions as C does. aya's own BTF type does not expose
//! member lookups, and the crates that do are LGPL.

use std::collections::HashMap;

use anyhow::{Context as _, Result, bail, ensure};
use sockerr_common::KernelOffsets;

pub const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

const KIND_INT: u32 = 1;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

struct Member {
    name: u32,
    ty: u32,
    bit_offset: u32,
}

struct Type {
    name: u32,
    kind: u32,
    /// Referenced type for typedef/const/volatile/...
    ty: u32,
    members: Vec<Member>,
}

pub struct Btf {
    types: Vec<Type>,
    strings: Vec<u8>,
    by_name: HashMap<String, Vec<u32>>,
}

impl Btf {
    pub fn parse(data: &[u8]) -> Result<Self> {
        let u32_at = |off: usize| -> Result<u32> {
            let bytes = data.get(off..off + 4).context("truncated BTF")?;
            Ok(u32::from_le_bytes(bytes.try_into()?))
        };
        ensure!(
            data.len() >= 24 && data[..2] == [0x9f, 0xeb],
            "not little-endian BTF"
        );
        let hdr_len = u32_at(4)? as usize;
        let (type_off, type_len) = (u32_at(8)? as usize, u32_at(12)? as usize);
        let (str_off, str_len) = (u32_at(16)? as usize, u32_at(20)? as usize);
        let strings = data
            .get(hdr_len + str_off..hdr_len + str_off + str_len)
            .context("string section out of bounds")?
            .to_vec();
        // Type ids start at 1; id 0 is void.
        let mut types = vec![Type {
            name: 0,
            kind: 0,
            ty: 0,
            members: Vec::new(),
        }];
        let (mut off, end) = (hdr_len + type_off, hdr_len + type_off + type_len);
        while off < end {
            let (name, info, size_or_type) = (u32_at(off)?, u32_at(off + 4)?, u32_at(off + 8)?);
            off += 12;
            let kind = (info >> 24) & 0x1f;
            let vlen = (info & 0xffff) as usize;
            let kind_flag = info >> 31 == 1;
            let mut members = Vec::new();
            off += match kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                KIND_ARRAY => 12,
                KIND_STRUCT | KIND_UNION => {
                    for i in 0..vlen {
                        let m = off + i * 12;
                        let raw = u32_at(m + 8)?;
                        // With kind_flag, the top 8 bits hold a bitfield size.
                        let bit_offset = if kind_flag { raw & 0xff_ffff } else { raw };
                        members.push(Member {
                            name: u32_at(m)?,
                            ty: u32_at(m + 4)?,
                            bit_offset,
                        });
                    }
                    vlen * 12
                }
                KIND_ENUM | KIND_FUNC_PROTO => vlen * 8,
                KIND_DATASEC | KIND_ENUM64 => vlen * 12,
                0..=KIND_TYPE_TAG => 0,
                _ => bail!("unknown BTF kind {kind}"),
            };
            types.push(Type {
                name,
                kind,
                ty: size_or_type,
                members,
            });
        }
        let mut btf = Btf {
            types,
            strings,
            by_name: HashMap::new(),
        };
        for id in 1..btf.types.len() as u32 {
            let name = btf.string(btf.types[id as usize].name).to_owned();
            if !name.is_empty() {
                btf.by_name.entry(name).or_default().push(id);
            }
        }
        Ok(btf)
    }

    fn string(&self, off: u32) -> &str {
        let rest = self.strings.get(off as usize..).unwrap_or_default();
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        std::str::from_utf8(&rest[..end]).unwrap_or_default()
    }

    fn strip(&self, mut id: u32) -> u32 {
        while matches!(
            self.types[id as usize].kind,
            KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG
        ) {
            id = self.types[id as usize].ty;
        }
        id
    }

    /// Byte offset of `member` in `struct name`, looking through anonymous
    /// structs and unions.
    pub fn offset(&self, name: &str, member: &str) -> Result<u32> {
        let id = self
            .by_name
            .get(name)
            .into_iter()
            .flatten()
            .copied()
            .find(|&id| self.types[id as usize].kind == KIND_STRUCT)
            .with_context(|| format!("kernel BTF has no struct {name}"))?;
        let bits = self
            .member_bits(id, member)
            .with_context(|| format!("kernel BTF: struct {name} has no member {member}"))?;
        ensure!(bits % 8 == 0, "{name}.{member} is a bitfield");
        Ok(bits / 8)
    }

    fn member_bits(&self, id: u32, member: &str) -> Option<u32> {
        self.types[id as usize].members.iter().find_map(|m| {
            if self.string(m.name) == member {
                return Some(m.bit_offset);
            }
            let inner = self.strip(m.ty);
            let anonymous =
                m.name == 0 && matches!(self.types[inner as usize].kind, KIND_STRUCT | KIND_UNION);
            anonymous
                .then(|| self.member_bits(inner, member).map(|b| m.bit_offset + b))
                .flatten()
        })
    }

    /// The offsets the probes need: `struct sock` and its socket, and the
    /// task fields a finding record names its process by.
    pub fn kernel_offsets(&self) -> Result<KernelOffsets> {
        // `struct sock` embeds `struct sock_common` as __sk_common.
        let common = self.offset("sock", "__sk_common")?;
        let skc = |m| self.offset("sock_common", m).map(|o| common + o);
        let socket = self.offset("socket_alloc", "socket")?;
        let inode = self.offset("socket_alloc", "vfs_inode")?;
        Ok(KernelOffsets {
            skc_family: skc("skc_family")?,
            skc_state: skc("skc_state")?,
            skc_daddr: skc("skc_daddr")?,
            skc_dport: skc("skc_dport")?,
            skc_num: skc("skc_num")?,
            skc_v6_daddr: skc("skc_v6_daddr")?,
            sk_type: self.offset("sock", "sk_type")?,
            sk_protocol: self.offset("sock", "sk_protocol")?,
            sk_err: self.offset("sock", "sk_err")?,
            sk_err_soft: self.offset("sock", "sk_err_soft")?,
            sk_socket: self.offset("sock", "sk_socket")?,
            socket_state: self.offset("socket", "state")?,
            socket_to_ino: inode - socket + self.offset("inode", "i_ino")?,
            task_group_leader: self.offset("task_struct", "group_leader")?,
            task_start_boottime: self.offset("task_struct", "start_boottime")?,
            task_mm: self.offset("task_struct", "mm")?,
            mm_exe_file: self.offset("mm_struct", "exe_file")?,
            file_mnt: self.offset("file", "f_path")? + self.offset("path", "mnt")?,
            file_dentry: self.offset("file", "f_path")? + self.offset("path", "dentry")?,
            dentry_name: self.offset("dentry", "d_name")? + self.offset("qstr", "name")?,
            dentry_name_len: self.offset("dentry", "d_name")? + self.offset("qstr", "len")?,
            dentry_parent: self.offset("dentry", "d_parent")?,
            vfsmount_root: self.offset("vfsmount", "mnt_root")?,
            mount_mnt: self.offset("mount", "mnt")?,
            mount_parent: self.offset("mount", "mnt_parent")?,
            mount_mountpoint: self.offset("mount", "mnt_mountpoint")?,
            file_inode: self.offset("file", "f_inode")?,
            inode_ino: self.offset("inode", "i_ino")?,
            inode_sb: self.offset("inode", "i_sb")?,
            inode_size: self.offset("inode", "i_size")?,
            // Renamed twice: a timespec64 until 6.6 and 6.11 (tv_sec first).
            inode_mtime: ["i_mtime_sec", "__i_mtime", "i_mtime"]
                .into_iter()
                .find_map(|m| self.offset("inode", m).ok())
                .context("struct inode has no modification time member")?,
            sb_dev: self.offset("super_block", "s_dev")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads the running kernel's BTF (world-readable; no root needed).
    #[test]
    fn resolves_struct_sock_offsets_on_this_kernel() {
        if !std::path::Path::new(VMLINUX).exists() {
            assert!(std::env::var("CI").is_err(), "CI machines have BTF");
            eprintln!("skipping: no {VMLINUX}");
            return;
        }
        let btf = Btf::parse(&std::fs::read(VMLINUX).unwrap()).unwrap();
        let o = btf.kernel_offsets().unwrap();
        // sock_common's layout has been stable for years on x86_64: the
        // address pair first, then family and state.
        assert_eq!(o.skc_daddr, 0);
        assert_eq!(o.skc_dport, 12);
        assert_eq!((o.skc_family, o.skc_state), (16, 18));
        assert!(o.sk_err > o.skc_v6_daddr && o.sk_socket > 0 && o.socket_to_ino > 0);
        assert!(o.task_mm > 0 && o.dentry_name > 0 && o.socket_to_ino > o.socket_state);
        assert!(btf.offset("sock", "no_such_member").is_err());
        assert!(btf.offset("no_such_struct", "x").is_err());
    }

    #[test]
    fn rejects_garbage() {
        assert!(Btf::parse(b"not btf at all, definitely not").is_err());
        assert!(Btf::parse(&[]).is_err());
    }
}
