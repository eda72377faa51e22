//! The detection scenario table: each detection with its clean twin. Every
//! row is one run of `sockerr-scenario ARGS` as its own process, and the
//! finding kinds the agent must report for that process (sorted).

pub const MASKED: &str = "so_error_masked";
pub const REREAD: &str = "so_error_reread";
pub const IO: &str = "io_after_failed_connect";

/// One row: a scenario run and the findings it must earn.
#[derive(Clone, Copy, Debug)]
pub struct Case {
    pub name: &'static str,
    /// Arguments to `sockerr-scenario`.
    pub args: &'static [&'static str],
    /// Finding kinds of the scenario's process, sorted.
    pub expected: &'static [&'static str],
}

const fn case(
    name: &'static str,
    args: &'static [&'static str],
    expected: &'static [&'static str],
) -> Case {
    Case {
        name,
        args,
        expected,
    }
}

#[rustfmt::skip]
pub const TABLE: &[Case] = &[
    //   scenario                                      args to sockerr-scenario        expected findings (sorted)
    case("libevent bug: 111 then 0, write(), read()",  &["masked"],                    &[IO, MASKED]),
    case("same, closed after the first read",          &["close-after-read"],          &[]),
    case("success, SO_ERROR read twice (0, 0)",        &["success-reread"],            &[REREAD]),
    case("success, one read, then I/O",                &["success-io"],                &[]),
    case("polled while pending, one read after",       &["pending-poll"],              &[]),
    case("connect() again to check, one read, close",  &["reconnect-check"],           &[]),
    case("first read() returns the refusal",           &["first-read"],                &[]),
    case("first write() returns the refusal",          &["first-write"],               &[]),
    case("blocking connect fails, write()",            &["blocking-io"],               &[IO]),
    case("failed fd reused by a good socket",          &["fd-reuse"],                  &[]),
    case("reads in two threads",                       &["threads-masked"],            &[MASKED]),
    case("IPv6 libevent bug",                          &["masked", "--v6"],            &[IO, MASKED]),
    case("IPv6 closed after the first read",           &["close-after-read", "--v6"],  &[]),
    case("IPv6 success read twice",                    &["success-reread", "--v6"],    &[REREAD]),
    case("IPv6 success, one read, I/O",                &["success-io", "--v6"],        &[]),
];

/// Run after the table with the agent still tracing: once its findings have
/// arrived, every earlier finding has too (they share one ring buffer).
pub const BARRIER: Case = case("barrier", &["masked"], &[IO, MASKED]);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expected_kinds_are_sorted_and_known() {
        for c in TABLE.iter().chain([&BARRIER]) {
            assert!(c.expected.is_sorted(), "{}", c.name);
            assert!(
                c.expected.iter().all(|k| [MASKED, REREAD, IO].contains(k)),
                "{}",
                c.name
            );
        }
    }
}
