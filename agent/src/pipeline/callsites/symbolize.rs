//! Code locations with blazesym: function, offset and file:line where a
//! module has symbols and debug info.
//!
//! Lookups go by offset in the module's file, so they do not need the process
//! to still run. The file is read at its host path when that is the file the
//! process mapped (same device and inode), else through the process's root
//! while it lives (a container sees other files).

use std::{collections::HashMap, fs, os::unix::fs::MetadataExt, path::PathBuf};

use blazesym::symbolize::{
    Input, Symbolized, Symbolizer as Blaze,
    source::{Elf, Source},
};

use super::procmaps::Mapping;

/// Resolved lookups kept; the cache starts over when it grows past this.
const MAX_CACHED: usize = 1 << 16;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Symbol {
    pub function: String,
    /// From the start of the function.
    pub offset: u64,
    pub file: Option<String>,
    pub line: Option<u32>,
}

type Key = ((u32, u32), u64, u64);

thread_local! {
    /// blazesym's symbolizer keeps what it parsed of each file; it is not
    /// `Send`, so it lives in the thread that symbolizes (the pipeline's).
    static BLAZE: Blaze = Blaze::new();
}

pub struct Symbolizer {
    /// By (device, inode, file offset): the same library in many processes
    /// is looked up once.
    cache: HashMap<Key, Option<Symbol>>,
}

impl Symbolizer {
    pub fn new() -> Self {
        Self {
            cache: HashMap::new(),
        }
    }

    /// The function containing `file_offset` of the file behind `mapping`
    /// in process `pid`; None without symbols or without the file.
    pub fn symbol(&mut self, pid: u32, mapping: &Mapping, file_offset: u64) -> Option<Symbol> {
        let key = (mapping.dev, mapping.inode, file_offset);
        if let Some(known) = self.cache.get(&key) {
            return known.clone();
        }
        let path = elf_path(pid, mapping)?;
        let symbol = self.lookup(path, file_offset);
        if self.cache.len() >= MAX_CACHED {
            self.cache.clear();
        }
        self.cache.insert(key, symbol.clone());
        symbol
    }

    fn lookup(&self, path: PathBuf, file_offset: u64) -> Option<Symbol> {
        let source = Source::Elf(Elf::new(&path));
        BLAZE.with(
            |blaze| match blaze.symbolize_single(&source, Input::FileOffset(file_offset)) {
                Ok(Symbolized::Sym(sym)) => Some(Symbol {
                    function: sym.name.into_owned(),
                    offset: sym.offset as u64,
                    file: sym
                        .code_info
                        .as_ref()
                        .map(|c| c.to_path().display().to_string()),
                    line: sym.code_info.as_ref().and_then(|c| c.line),
                }),
                Ok(Symbolized::Unknown(_)) => None,
                Err(e) => {
                    tracing::debug!(path = %path.display(), "symbolizing: {e}");
                    None
                }
            },
        )
    }
}

/// Where to read the mapped file from, if anywhere.
fn elf_path(pid: u32, mapping: &Mapping) -> Option<PathBuf> {
    if !mapping.is_file() {
        return None;
    }
    let host = PathBuf::from(&mapping.path);
    let same = fs::metadata(&host).is_ok_and(|md| {
        md.ino() == mapping.inode && (libc::major(md.dev()), libc::minor(md.dev())) == mapping.dev
    });
    if same {
        return Some(host);
    }
    // Overlay filesystems report other device numbers through stat() than in
    // the maps, so inside a live process's root the path is trusted.
    let inside = crate::proc::in_root(pid, &mapping.path);
    inside.exists().then_some(inside)
}
