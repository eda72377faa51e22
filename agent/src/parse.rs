//! Parsers of command-line values shared by the subcommands' arguments.

use std::time::Duration;

/// A duration above zero: none of the durations taken means anything at 0
/// (a retention of 0 would drop each finding as soon as it is recorded).
pub fn positive_duration(s: &str) -> Result<Duration, String> {
    match humantime::parse_duration(s) {
        Ok(d) if d.is_zero() => Err("must be more than 0".into()),
        Ok(d) => Ok(d),
        Err(e) => Err(e.to_string()),
    }
}
