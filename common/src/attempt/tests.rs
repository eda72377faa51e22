//! The state machine as a specification: the findings and not-findings of
//! docs/design.md §3 as a table, then every interleaving of events up to a
//! small length checked against an independent, whole-history statement of
//! the rules.

use super::*;
use FindingKind::*;

const ECONNREFUSED: i32 = 111;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Ev {
    /// `connect()` starts a new attempt on the socket.
    Connect,
    Established,
    Failed(i32),
    Read(i32),
    /// send/recv that did not return the attempt's error.
    Io,
    /// send/recv that returned the attempt's pending error (and took it).
    IoTook,
}
use Ev::*;

/// Runs events on one socket with the state machine; returns the findings.
fn run(events: &[Ev]) -> Vec<FindingKind> {
    let mut attempt: Option<Attempt> = None;
    let mut findings = Vec::new();
    for ev in events {
        let Some(a) = attempt.as_mut().filter(|_| *ev != Connect) else {
            if *ev == Connect {
                attempt = Some(Attempt::new());
            }
            continue;
        };
        let finding = match *ev {
            Connect => unreachable!(),
            Established => (a.established(), None).1,
            Failed(e) => (a.failed(e), None).1,
            Read(v) => a.so_error_read(v).1,
            Io => a.io(false),
            IoTook => a.io(true),
        };
        findings.extend(finding);
    }
    findings
}

#[test]
fn scenarios() {
    let table: &[(&str, &[Ev], &[FindingKind])] = &[
        (
            "libevent bug: refused, read 111 then 0, then write and read",
            &[Connect, Failed(ECONNREFUSED), Read(111), Read(0), Io, Io],
            &[SoErrorMasked, IoAfterFailedConnect],
        ),
        (
            "refused, one read, close",
            &[Connect, Failed(ECONNREFUSED), Read(111)],
            &[],
        ),
        (
            "success, read twice (0, 0)",
            &[Connect, Established, Read(0), Read(0)],
            &[SoErrorReread],
        ),
        (
            "success, one read, then I/O",
            &[Connect, Established, Read(0), Io, Io],
            &[],
        ),
        (
            "polled while pending, then one read after it is decided",
            &[Connect, Read(0), Read(0), Read(0), Established, Read(0), Io],
            &[],
        ),
        (
            "polled while pending, refused, one read",
            &[Connect, Read(0), Failed(ECONNREFUSED), Read(111)],
            &[],
        ),
        (
            "connect() again consumed the error, then one read (0), close",
            &[Connect, Failed(ECONNREFUSED), Read(0)],
            &[],
        ),
        (
            "blocking connect fails, return value ignored, write()",
            &[Connect, Failed(ECONNREFUSED), Io],
            &[IoAfterFailedConnect],
        ),
        (
            "retry on the same socket starts a new attempt",
            &[
                Connect,
                Failed(ECONNREFUSED),
                Read(111),
                Connect,
                Established,
                Read(0),
                Io,
            ],
            &[],
        ),
        (
            "each kind once per attempt",
            &[
                Connect,
                Failed(ECONNREFUSED),
                Read(111),
                Read(0),
                Read(0),
                Io,
                Io,
                Read(0),
            ],
            &[SoErrorMasked, IoAfterFailedConnect],
        ),
        (
            "new attempt reports again",
            &[
                Connect,
                Established,
                Read(0),
                Read(0),
                Connect,
                Established,
                Read(0),
                Read(0),
            ],
            &[SoErrorReread, SoErrorReread],
        ),
        (
            "squid: refused, read 111, then one read() before closing",
            &[Connect, Failed(ECONNREFUSED), Read(111), Io],
            &[],
        ),
        (
            "PHP async client: refused, never reads SO_ERROR, writes",
            &[Connect, Failed(ECONNREFUSED), Io, Io],
            &[IoAfterFailedConnect],
        ),
        (
            "told, then told 'no error' by a second read, then I/O",
            &[Connect, Failed(ECONNREFUSED), Read(111), Io, Read(0), Io],
            &[SoErrorMasked, IoAfterFailedConnect],
        ),
        (
            "a benchmarking client: refused, its first read() returns the error",
            &[Connect, Failed(ECONNREFUSED), IoTook],
            &[],
        ),
        (
            "refused, the first write() returns the error, then cleanup I/O",
            &[Connect, Failed(ECONNREFUSED), IoTook, Io, Io],
            &[],
        ),
        (
            "masked read, then the I/O: the error was consumed, not told",
            &[Connect, Failed(ECONNREFUSED), Read(111), Read(0), Io],
            &[SoErrorMasked, IoAfterFailedConnect],
        ),
        (
            "told by the I/O, then told 'no error' by a read, then I/O",
            &[Connect, Failed(ECONNREFUSED), IoTook, Read(0), Io],
            &[IoAfterFailedConnect],
        ),
        (
            "I/O before the outcome is not a finding",
            &[Connect, Io, Failed(ECONNREFUSED)],
            &[],
        ),
        (
            "a late failure after success changes nothing",
            &[Connect, Established, Failed(ECONNREFUSED), Io],
            &[],
        ),
        (
            "no connect, nothing tracked",
            &[Read(111), Read(0), Io],
            &[],
        ),
    ];
    // Every row checked before failing, so one failure hides no other.
    let wrong: Vec<String> = table
        .iter()
        .filter_map(|(name, events, expected)| {
            let got = run(events);
            (got != *expected).then(|| format!("{name}: expected {expected:?}, got {got:?}"))
        })
        .collect();
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn reads_are_kept_in_order_and_counted_past_capacity() {
    let mut a = Attempt::new();
    assert_eq!(a.so_error_read(7).0, ReadClass::Pending);
    assert_eq!(a.latest_read_slot(), None, "pending reads are not kept");
    assert!(a.failed(ECONNREFUSED));
    assert!(!a.established(), "an outcome is decided once");
    assert_eq!(a.so_error_read(111), (ReadClass::Error, None));
    assert_eq!(a.latest_read_slot(), Some(0));
    assert_eq!(a.so_error_read(0), (ReadClass::Zero, Some(SoErrorMasked)));
    assert_eq!(a.latest_read_slot(), Some(1));
    a.so_error_read(0);
    a.so_error_read(0);
    assert_eq!(a.latest_read_slot(), Some(MAX_READS - 1));
    for _ in 0..300 {
        a.so_error_read(0);
        assert_eq!(
            a.latest_read_slot(),
            None,
            "reads past capacity have no slot"
        );
    }
    assert_eq!(a.reads(), &[111, 0, 0, 0]);
    assert_eq!(a.nreads(), u8::MAX);
    assert_eq!((a.outcome(), a.errno()), (Outcome::Failed, ECONNREFUSED));
}

/// The rules stated over a whole history, independently of the incremental
/// state machine: split into attempts at each `Connect`, find the decision,
/// then look at what happened after it.
fn oracle(events: &[Ev]) -> Vec<FindingKind> {
    let mut findings = Vec::new();
    let starts: Vec<usize> = (0..events.len())
        .filter(|&i| events[i] == Connect)
        .collect();
    for (n, &start) in starts.iter().enumerate() {
        let end = starts.get(n + 1).copied().unwrap_or(events.len());
        let attempt = &events[start + 1..end];
        let Some(decided) = attempt
            .iter()
            .position(|e| matches!(e, Established | Failed(_)))
        else {
            continue;
        };
        let failed = matches!(attempt[decided], Failed(_));
        // (position in the attempt, finding), then sorted by position.
        let mut found: Vec<(usize, FindingKind)> = Vec::new();
        let reads: Vec<(usize, i32)> = attempt
            .iter()
            .enumerate()
            .skip(decided)
            .filter_map(|(i, e)| if let Read(v) = e { Some((i, *v)) } else { None })
            .collect();
        let masked_at = (0..reads.len())
            .find(|&j| failed && reads[j].1 == 0 && reads[..j].iter().any(|&(_, v)| v != 0));
        if let Some(j) = masked_at {
            found.push((reads[j].0, SoErrorMasked));
        }
        if reads.len() >= 2 && masked_at != Some(1) {
            found.push((reads[1].0, SoErrorReread));
        }
        // I/O that did not take the error while nothing had told the
        // process, or the latest telling (a decided read, an I/O that took
        // the error) before it was a read of 0.
        let told_by = |i: usize| {
            (decided..i)
                .rev()
                .find_map(|j| match attempt[j] {
                    Read(v) => Some(v != 0),
                    IoTook => Some(true),
                    _ => None,
                })
                .unwrap_or(false)
        };
        let uninformed_io = (decided..attempt.len()).find(|&i| attempt[i] == Io && !told_by(i));
        if failed && let Some(i) = uninformed_io {
            found.push((i, IoAfterFailedConnect));
        }
        found.sort();
        findings.extend(found.into_iter().map(|(_, k)| k));
    }
    findings
}

#[test]
fn every_interleaving_matches_the_rules() {
    const ALPHABET: [Ev; 8] = [
        Connect,
        Established,
        Failed(ECONNREFUSED),
        Failed(110),
        Read(0),
        Read(111),
        Io,
        IoTook,
    ];
    const MAX_LEN: u32 = 7;
    let mut checked = 0u64;
    for len in 0..=MAX_LEN {
        for mut code in 0..ALPHABET.len().pow(len) {
            let events: Vec<Ev> = (0..len)
                .map(|_| {
                    let ev = ALPHABET[code % ALPHABET.len()];
                    code /= ALPHABET.len();
                    ev
                })
                .collect();
            assert_eq!(run(&events), oracle(&events), "{events:?}");
            checked += 1;
        }
    }
    assert_eq!(checked, (0..=MAX_LEN).map(|l| 8u64.pow(l)).sum::<u64>());
}
