//! A process's file mappings from /proc/<pid>/maps: which module an address
//! is in, and at which offset of that file.

use std::{fs, io};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    /// Offset in the file of `start`.
    pub offset: u64,
    /// Device (major, minor) and inode of the file: 0 for anonymous memory.
    pub dev: (u32, u32),
    pub inode: u64,
    /// The path as the process sees it (inside its mount namespace), or a
    /// pseudo name such as `[vdso]`.
    pub path: String,
}

impl Mapping {
    /// A file the process mapped, as opposed to `[vdso]`, `[heap]` etc.
    pub fn is_file(&self) -> bool {
        self.inode != 0 && self.path.starts_with('/')
    }

    /// The file's name without its directory.
    pub fn name(&self) -> &str {
        self.path.rsplit('/').next().unwrap_or(&self.path)
    }

    pub fn file_offset(&self, addr: u64) -> u64 {
        addr - self.start + self.offset
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProcMaps(Vec<Mapping>);

impl ProcMaps {
    pub fn read(pid: u32) -> io::Result<Self> {
        fs::read_to_string(format!("/proc/{pid}/maps")).map(|s| Self::parse(&s))
    }

    /// Lines such as `7f2c..-7f2c.. r-xp 00028000 fd:01 1835 /usr/lib/x86_64-linux-gnu/libc.so.6`;
    /// malformed lines are skipped.
    pub fn parse(text: &str) -> Self {
        Self(text.lines().filter_map(parse_line).collect())
    }

    pub fn find(&self, addr: u64) -> Option<&Mapping> {
        self.0.iter().find(|m| (m.start..m.end).contains(&addr))
    }

    pub fn iter(&self) -> impl Iterator<Item = &Mapping> {
        self.0.iter()
    }
}

fn parse_line(line: &str) -> Option<Mapping> {
    let mut fields = line.splitn(6, ' ');
    let (start, end) = fields.next()?.split_once('-')?;
    let _perms = fields.next()?;
    let offset = fields.next()?;
    let (major, minor) = fields.next()?.split_once(':')?;
    let inode = fields.next()?.parse().ok()?;
    let hex = |s| u64::from_str_radix(s, 16).ok();
    Some(Mapping {
        start: hex(start)?,
        end: hex(end)?,
        offset: hex(offset)?,
        dev: (
            u32::from_str_radix(major, 16).ok()?,
            u32::from_str_radix(minor, 16).ok()?,
        ),
        inode,
        path: fields.next().unwrap_or("").trim_start().to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAPS: &str = "\
55d0c3a40000-55d0c3a4b000 r--p 00000000 fd:01 131 /usr/bin/evhttp client
55d0c3a4b000-55d0c3a60000 r-xp 0000b000 fd:01 131 /usr/bin/evhttp client
55d0c4000000-55d0c4021000 rw-p 00000000 00:00 0                          [heap]
7f2c10028000-7f2c101bd000 r-xp 00028000 103:02 1835 /usr/lib/x86_64-linux-gnu/libc.so.6
7ffd1a3f0000-7ffd1a3f2000 r-xp 00000000 00:00 0                          [vdso]
garbage line
";

    #[test]
    fn parses_files_pseudo_mappings_and_paths_with_spaces() {
        let maps = ProcMaps::parse(MAPS);
        assert_eq!(maps.iter().count(), 5, "the malformed line is skipped");
        let exe = maps.find(0x55d0c3a4b1f0).unwrap();
        assert_eq!(exe.path, "/usr/bin/evhttp client");
        assert_eq!(exe.file_offset(0x55d0c3a4b1f0), 0xb1f0);
        assert!(exe.is_file());
        let libc = maps.find(0x7f2c10028000).unwrap();
        assert_eq!((libc.dev, libc.inode), ((0x103, 2), 1835));
        assert_eq!(libc.name(), "libc.so.6");
        assert_eq!(libc.file_offset(0x7f2c10030000), 0x30000);
        let vdso = maps.find(0x7ffd1a3f0100).unwrap();
        assert_eq!(vdso.path, "[vdso]");
        assert!(!vdso.is_file());
        assert!(!maps.find(0x55d0c4000010).unwrap().is_file(), "heap");
        assert!(maps.find(0x1000).is_none());
        assert!(maps.find(0x55d0c3a60000).is_none(), "end is exclusive");
    }
}
