//! A finding as users see it: decoded from the kernel record and attributed
//! to a process.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::{Duration, SystemTime},
};

use serde::Serialize;
use sockerr_common::{Endpoint, FindingEvent, FindingKind, MAX_READS, Trigger};

use crate::{attribution::Process, callsites::CallSites};

#[derive(Clone, Debug, Serialize)]
pub struct Finding {
    pub kind: &'static str,
    pub severity: &'static str,
    /// Process (thread group) id.
    pub pid: u32,
    /// Thread that made the call.
    pub tid: u32,
    pub comm: String,
    /// Null when the process exited before it could be attributed
    /// (`exe_error` says so).
    pub exe: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exe_error: Option<String>,
    pub cgroup: Option<String>,
    pub container_id: Option<String>,
    pub pod_uid: Option<String>,
    /// The process's fd for the socket; null if it was closed first.
    pub fd: Option<i32>,
    pub remote: String,
    /// The errno of the failed connect (e.g. `ECONNREFUSED`); null when the
    /// connect succeeded.
    pub errno: Option<String>,
    /// `SO_ERROR` values read after the outcome was decided, in order.
    pub so_error_reads: Vec<i32>,
    /// Total decided `SO_ERROR` reads (more may have happened than are kept).
    pub so_error_read_count: u8,
    /// The call that raised the finding: getsockopt, send or recv.
    pub syscall: &'static str,
    /// Where the attempt's connect() and SO_ERROR reads were made.
    pub call_sites: CallSites,
    /// RFC 3339.
    pub time: String,
    #[serde(skip)]
    pub kind_enum: FindingKind,
    #[serde(skip)]
    pub at: SystemTime,
}

impl Finding {
    /// Decodes a ring-buffer record; None for a record this agent does not
    /// understand (never expected: the object is embedded in the agent).
    pub fn decode(bytes: &[u8]) -> Option<(FindingEvent, FindingKind, Trigger)> {
        if bytes.len() < size_of::<FindingEvent>() {
            return None;
        }
        // SAFETY: FindingEvent is plain old data and the length was checked.
        let ev: FindingEvent = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
        Some((
            ev,
            FindingKind::from_u8(ev.kind)?,
            Trigger::from_u8(ev.trigger)?,
        ))
    }

    pub fn new(
        ev: &FindingEvent,
        kind: FindingKind,
        trigger: Trigger,
        process: Process,
        call_sites: CallSites,
        at: SystemTime,
    ) -> Self {
        let nreads = (ev.nreads as usize).min(MAX_READS);
        Self {
            kind: kind.name(),
            severity: kind.severity(),
            pid: ev.tgid,
            tid: ev.tid,
            comm: comm(&ev.comm),
            exe: process.exe,
            exe_error: process.exe_error,
            cgroup: process.cgroup,
            container_id: process.container.id,
            pod_uid: process.container.pod_uid,
            fd: process.fd,
            remote: remote(&ev.remote).map_or_else(|| "unknown".into(), |a| a.to_string()),
            errno: (ev.errno != 0).then(|| errno_name(ev.errno)),
            so_error_reads: ev.reads[..nreads].to_vec(),
            so_error_read_count: ev.nreads,
            syscall: trigger.name(),
            call_sites,
            time: humantime::format_rfc3339_millis(at).to_string(),
            kind_enum: kind,
            at,
        }
    }

    /// One human line, e.g. for `sockerr trace`.
    pub fn human(&self) -> String {
        let reads: Vec<String> = self.so_error_reads.iter().map(i32::to_string).collect();
        format!(
            "{} {} {} pid={} comm={:?} exe={} fd={} remote={} errno={} so_error_reads=[{}] syscall={} sites: {}",
            self.time,
            self.severity.to_uppercase(),
            self.kind,
            self.pid,
            self.comm,
            self.exe
                .clone()
                .unwrap_or_else(|| format!("({})", self.exe_error.as_deref().unwrap_or("unknown"))),
            self.fd.map_or_else(|| "-".into(), |fd| fd.to_string()),
            self.remote,
            self.errno.as_deref().unwrap_or("-"),
            reads.join(","),
            self.syscall,
            self.call_sites.summary(&self.so_error_reads),
        )
    }
}

/// A task's comm: NUL-terminated, any bytes; invalid UTF-8 is replaced.
pub fn comm(raw: &[u8]) -> String {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    String::from_utf8_lossy(&raw[..end]).into_owned()
}

pub fn remote(ep: &Endpoint) -> Option<SocketAddr> {
    let ip = match ep.family as i32 {
        libc::AF_INET => IpAddr::V4(Ipv4Addr::new(
            ep.addr[0], ep.addr[1], ep.addr[2], ep.addr[3],
        )),
        libc::AF_INET6 => IpAddr::V6(Ipv6Addr::from(ep.addr)),
        _ => return None,
    };
    Some(SocketAddr::new(ip, ep.port))
}

/// `ECONNREFUSED` for 111; `errno 4242` for what has no name.
pub fn errno_name(errno: i32) -> String {
    let e = nix::errno::Errno::from_raw(errno);
    if e == nix::errno::Errno::UnknownErrno {
        format!("errno {errno}")
    } else {
        format!("{e:?}")
    }
}

/// Converts a CLOCK_BOOTTIME timestamp from the kernel to wall-clock time.
pub fn wall_time(boot_ns: u64) -> SystemTime {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    let now_boot = Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32);
    SystemTime::now() - now_boot.saturating_sub(Duration::from_nanos(boot_ns))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_format_like_users_expect() {
        let mut v4 = Endpoint {
            family: libc::AF_INET as u16,
            port: 8080,
            ..Default::default()
        };
        v4.addr[..4].copy_from_slice(&[127, 0, 0, 1]);
        assert_eq!(remote(&v4).unwrap().to_string(), "127.0.0.1:8080");
        let v6 = Endpoint {
            family: libc::AF_INET6 as u16,
            port: 443,
            addr: Ipv6Addr::LOCALHOST.octets(),
            ..Default::default()
        };
        assert_eq!(remote(&v6).unwrap().to_string(), "[::1]:443");
        assert!(remote(&Endpoint::default()).is_none());
    }

    #[test]
    fn errno_names() {
        assert_eq!(errno_name(111), "ECONNREFUSED");
        assert_eq!(errno_name(110), "ETIMEDOUT");
        assert_eq!(errno_name(113), "EHOSTUNREACH");
        assert_eq!(errno_name(4242), "errno 4242");
    }

    #[test]
    fn comm_stops_at_nul_and_survives_invalid_utf8() {
        assert_eq!(comm(b"curl\0\0\0garbage"), "curl");
        assert_eq!(comm(b"a\xffb\0"), "a\u{fffd}b");
    }

    #[test]
    fn decode_rejects_short_or_unknown_records() {
        assert!(Finding::decode(&[0u8; 8]).is_none());
        let zeroed = vec![0u8; size_of::<FindingEvent>()];
        assert!(
            Finding::decode(&zeroed).is_none(),
            "kind 0 is not a finding"
        );
    }
}
