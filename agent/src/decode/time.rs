//! Kernel timestamps (CLOCK_BOOTTIME) as wall-clock time.

use std::time::{Duration, SystemTime};

/// Converts a CLOCK_BOOTTIME timestamp from the kernel to wall-clock time.
pub fn wall_time(boot_ns: u64) -> SystemTime {
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .map(Duration::from)
        .unwrap_or_default();
    SystemTime::now() - now.saturating_sub(Duration::from_nanos(boot_ns))
}

/// RFC 3339 with milliseconds, as every timestamp users see.
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_time_maps_to_now() {
        let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME).unwrap();
        let boot_ns = Duration::from(now).as_nanos() as u64;
        let wall = wall_time(boot_ns);
        let skew = SystemTime::now().duration_since(wall).unwrap_or_default();
        assert!(skew < Duration::from_secs(1), "{skew:?}");
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
    }
}
