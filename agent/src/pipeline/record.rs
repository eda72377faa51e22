//! A finding record from the kernel's ring buffer, decoded.

use std::time::SystemTime;

use sockerr_common::{ExeFile, FindingKind, FindingRecord, MAX_READS, Trigger};

use crate::decode;

/// A finding record the agent understands: its kind and trigger decoded.
pub struct Record {
    pub raw: FindingRecord,
    pub kind: FindingKind,
    pub trigger: Trigger,
}

impl Record {
    /// None for a record this agent does not understand (never expected:
    /// the object is embedded in the agent).
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() < size_of::<FindingRecord>() {
            return None;
        }
        // SAFETY: FindingRecord is plain old data and the length was checked.
        let raw: FindingRecord = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
        Some(Self {
            kind: FindingKind::from_repr(raw.kind)?,
            trigger: Trigger::from_repr(raw.trigger)?,
            raw,
        })
    }

    /// The decided reads kept.
    pub fn reads(&self) -> &[i32] {
        &self.raw.reads[..(self.raw.nreads as usize).min(MAX_READS)]
    }

    pub fn at(&self) -> SystemTime {
        decode::wall_time(self.raw.boot_ns)
    }

    /// Which file the process executes, as the kernel saw it with the
    /// record: (device, inode, size, modification time); None when the
    /// hook could not read the task.
    pub fn exe_file(&self) -> Option<(u32, ExeFile)> {
        (self.raw.exe_file.ino != 0).then_some((self.raw.exe_dev, self.raw.exe_file))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_rejects_short_or_unknown_records() {
        assert!(Record::decode(&[0u8; 8]).is_none());
        let zeroed = vec![0u8; size_of::<FindingRecord>()];
        assert!(Record::decode(&zeroed).is_none(), "kind 0 is not a finding");
    }
}
