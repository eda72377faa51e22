//! A process's file mappings: which module an address is in, and at which
//! offset of that file.

pub use crate::proc::Mapping;
use crate::proc::{self, Proc};

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProcMaps(Vec<Mapping>);

impl FromIterator<Mapping> for ProcMaps {
    fn from_iter<I: IntoIterator<Item = Mapping>>(iter: I) -> Self {
        Self(iter.into_iter().collect())
    }
}

impl ProcMaps {
    pub fn read(pid: u32) -> proc::Result<Self> {
        Ok(Self(Proc::open(pid)?.mappings()?))
    }

    pub fn find(&self, addr: u64) -> Option<&Mapping> {
        self.0.iter().find(|m| (m.start..m.end).contains(&addr))
    }

    pub fn iter(&self) -> impl Iterator<Item = &Mapping> {
        self.0.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_maps_its_own_code() {
        let maps = ProcMaps::read(std::process::id()).unwrap();
        let here = this_process_maps_its_own_code as *const () as u64;
        let exe = maps.find(here).unwrap();
        assert!(exe.is_file());
        assert_eq!(
            std::path::Path::new(&exe.path),
            std::env::current_exe().unwrap()
        );
        assert!(exe.file_offset(here) < std::fs::metadata(&exe.path).unwrap().len());
        assert!(maps.iter().any(|m| m.path == "[vdso]" && !m.is_file()));
        assert!(maps.find(0x1000).is_none());
    }
}
