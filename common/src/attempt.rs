//! One connect attempt and the findings it produces.
//!
//! An *attempt* is one `connect()` on a TCP socket. Its *outcome* is kernel
//! truth (established, or failed with an errno), reported by the socket's
//! state change. `SO_ERROR` reads made while the outcome is still pending are
//! legitimate polling and never count; reads made after it was decided are
//! recorded, and decide:
//!
//! - `so_error_masked`: the attempt failed, a read returned the error and a
//!   later read returned 0 — the error was destroyed and the process was told
//!   "no error" (libevent's evhttp bug);
//! - `so_error_reread`: a second read of the decided attempt that does not
//!   mask an error (harmless today, one refactor away from the bug);
//! - `io_after_failed_connect`: send/recv/read/write on a socket whose latest
//!   attempt failed, while the process had not been told the error: nothing
//!   told it (no decided read returned the error, no I/O took it), or its
//!   latest decided read returned 0. An I/O that itself returns the pending
//!   error takes it exactly as an `SO_ERROR` read would (`tcp_sendmsg()` and
//!   `tcp_recvmsg()` return `sock_error()`): the process is told by it, and
//!   later I/O is cleanup, as is I/O after a read that returned the error
//!   (squid reads once before closing).
//!
//! Each kind is reported at most once per attempt. A new `connect()` on the
//! same socket starts a new attempt.

/// `SO_ERROR` values kept per attempt for the report ("111 then 0").
pub const MAX_READS: usize = 4;

#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Pending = 0,
    Established = 1,
    Failed = 2,
}

/// What a finding says about a process; named in metrics, logs and JSON by
/// its snake_case name (`so_error_masked`).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(
    feature = "user",
    derive(
        strum::FromRepr,
        strum::IntoStaticStr,
        strum::EnumString,
        strum::EnumIter,
        strum::EnumCount,
        serde::Serialize,
        serde::Deserialize
    ),
    strum(serialize_all = "snake_case"),
    serde(rename_all = "snake_case")
)]
pub enum FindingKind {
    SoErrorMasked = 1,
    SoErrorReread = 2,
    IoAfterFailedConnect = 3,
}

impl FindingKind {
    pub fn severity(self) -> &'static str {
        match self {
            FindingKind::SoErrorReread => "warning",
            _ => "critical",
        }
    }

    const fn bit(self) -> u8 {
        1 << self as u8
    }
}

/// How an `SO_ERROR` read is counted (`sockerr_so_error_reads_total{result}`).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadClass {
    /// Read while the attempt was still undecided.
    Pending = 0,
    /// Returned a non-zero error.
    Error = 1,
    /// Returned 0.
    Zero = 2,
}

/// State of the latest connect attempt on one socket.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attempt {
    outcome: Outcome,
    /// Bit per [`FindingKind`] already reported for this attempt.
    reported: u8,
    /// Whether a decided read returned a non-zero error.
    error_read: bool,
    /// Whether the process knows how its failed attempt ended: the latest
    /// decided read returned the error, or an I/O took it.
    told: bool,
    /// Decided reads so far (saturating; the first [`MAX_READS`] are kept).
    nreads: u8,
    _pad: [u8; 3],
    /// errno of a failed outcome, 0 otherwise.
    errno: i32,
    reads: [i32; MAX_READS],
}

impl Default for Attempt {
    fn default() -> Self {
        Self::new()
    }
}

impl Attempt {
    /// A new attempt: `connect()` was called, the outcome is pending.
    pub const fn new() -> Self {
        Self {
            outcome: Outcome::Pending,
            reported: 0,
            error_read: false,
            told: false,
            nreads: 0,
            _pad: [0; 3],
            errno: 0,
            reads: [0; MAX_READS],
        }
    }

    pub fn outcome(&self) -> Outcome {
        self.outcome
    }

    pub fn errno(&self) -> i32 {
        self.errno
    }

    /// The decided `SO_ERROR` reads kept, oldest first.
    pub fn reads(&self) -> &[i32] {
        &self.reads[..(self.nreads as usize).min(MAX_READS)]
    }

    /// The decided reads kept, zero-filled past [`Attempt::reads`] (a fixed
    /// size copy: the eBPF target has no variable-length memcpy).
    pub fn read_slots(&self) -> [i32; MAX_READS] {
        self.reads
    }

    /// Index in [`Attempt::reads`] of the latest decided read, if it is kept.
    pub fn latest_read_slot(&self) -> Option<usize> {
        let n = self.nreads as usize;
        (1..=MAX_READS).contains(&n).then(|| n - 1)
    }

    /// Number of decided reads, including those beyond [`MAX_READS`].
    pub fn nreads(&self) -> u8 {
        self.nreads
    }

    /// The handshake completed. Returns whether this decided the attempt.
    pub fn established(&mut self) -> bool {
        self.decide(Outcome::Established, 0)
    }

    /// The handshake failed with `errno`. Returns whether this decided the attempt.
    pub fn failed(&mut self, errno: i32) -> bool {
        self.decide(Outcome::Failed, errno)
    }

    fn decide(&mut self, outcome: Outcome, errno: i32) -> bool {
        if self.outcome != Outcome::Pending {
            return false;
        }
        self.outcome = outcome;
        self.errno = errno;
        true
    }

    /// The process read `value` from `SO_ERROR`.
    pub fn so_error_read(&mut self, value: i32) -> (ReadClass, Option<FindingKind>) {
        if self.outcome == Outcome::Pending {
            return (ReadClass::Pending, None);
        }
        if let Some(slot) = self.reads.get_mut(self.nreads as usize) {
            *slot = value;
        }
        self.nreads = self.nreads.saturating_add(1);
        let masks = self.outcome == Outcome::Failed && self.error_read && value == 0;
        self.told = value != 0;
        self.error_read |= self.told;
        let class = if value == 0 {
            ReadClass::Zero
        } else {
            ReadClass::Error
        };
        let finding = if masks {
            self.report(FindingKind::SoErrorMasked)
        } else if self.nreads >= 2 && !self.has_reported(FindingKind::SoErrorMasked) {
            self.report(FindingKind::SoErrorReread)
        } else {
            None
        };
        (class, finding)
    }

    /// The process sent or received on the socket. `took_error`: the call
    /// returned the attempt's pending error, taking it as an `SO_ERROR` read
    /// would, so the process was told by the I/O itself.
    pub fn io(&mut self, took_error: bool) -> Option<FindingKind> {
        if self.outcome != Outcome::Failed {
            return None;
        }
        self.told |= took_error;
        if self.told {
            return None;
        }
        self.report(FindingKind::IoAfterFailedConnect)
    }

    fn has_reported(&self, kind: FindingKind) -> bool {
        self.reported & kind.bit() != 0
    }

    fn report(&mut self, kind: FindingKind) -> Option<FindingKind> {
        if self.has_reported(kind) {
            return None;
        }
        self.reported |= kind.bit();
        Some(kind)
    }
}

#[cfg(test)]
mod tests;
