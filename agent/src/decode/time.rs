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

/// [`rfc3339`] for serde's `serialize_with`.
pub fn serialize_rfc3339<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&rfc3339(*t))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_time_maps_to_wall_time() {
        let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME).unwrap();
        let boot_ns = Duration::from(now).as_nanos() as u64;
        // Seconds before now, negative in the future.
        let ago = |ns: u64| {
            let wall = wall_time(ns);
            match SystemTime::now().duration_since(wall) {
                Ok(d) => d.as_secs_f64(),
                Err(e) => -e.duration().as_secs_f64(),
            }
        };
        assert!(ago(boot_ns).abs() < 0.5, "{}", ago(boot_ns));
        let earlier = ago(boot_ns - 5_000_000_000);
        assert!((earlier - 5.0).abs() < 0.5, "{earlier}");
        // A timestamp taken after the agent's clock read saturates at now.
        let later = ago(boot_ns + 50_000_000_000);
        assert!(later.abs() < 0.5, "{later}");
    }

    #[test]
    fn rfc3339_in_utc_with_milliseconds() {
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        assert_eq!(rfc3339(t), "2023-11-14T22:13:20.123Z");
    }
}
