//! The executable's path the kernel walked for a finding record.

use sockerr_common::{EXE_PATH_LEN, FindingRecord};

/// `exe_error` of a path the kernel kept only the end of.
pub const TRUNCATED_EXE: &str = "the executable's path is longer than the kernel keeps (255 bytes, 32 directories): only its end is shown";

/// A path from a record: `path` is the whole path, or its end after "…"
/// when `truncated`.
#[derive(Debug, PartialEq, Eq)]
pub struct KernelExe {
    pub path: String,
    pub truncated: bool,
}

/// None when the kernel took no path (a hook that cannot read the task, a
/// kernel thread). Invalid UTF-8 becomes U+FFFD, as in comms.
pub fn exe_path(record: &FindingRecord) -> Option<KernelExe> {
    let len = usize::from(record.exe_len).min(EXE_PATH_LEN);
    if len == 0 {
        return None;
    }
    let path = String::from_utf8_lossy(&record.exe[..len]);
    let truncated = record.exe_truncated != 0;
    Some(KernelExe {
        path: if truncated {
            format!("…{path}")
        } else {
            path.into_owned()
        },
        truncated,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(path: &[u8], truncated: bool) -> FindingRecord {
        let mut r = FindingRecord::zeroed();
        r.exe[..path.len()].copy_from_slice(path);
        r.exe_len = path.len() as u16;
        r.exe_truncated = truncated.into();
        r
    }

    #[test]
    fn paths_as_the_kernel_kept_them() {
        assert_eq!(exe_path(&record(b"", false)), None);
        let whole = exe_path(&record(b"/usr/sbin/nginx", false)).unwrap();
        assert_eq!(
            (whole.path.as_str(), whole.truncated),
            ("/usr/sbin/nginx", false)
        );
        let end = exe_path(&record(b"/deep/bin/x", true)).unwrap();
        assert_eq!((end.path.as_str(), end.truncated), ("…/deep/bin/x", true));
        let odd = exe_path(&record(b"/bin/\xff", false)).unwrap();
        assert_eq!(odd.path, "/bin/\u{fffd}");
        let mut garbage = record(b"/x", false);
        garbage.exe_len = u16::MAX;
        assert_eq!(exe_path(&garbage).unwrap().path.len(), EXE_PATH_LEN);
    }
}
