use std::time::SystemTime;

use axum::http::HeaderValue;
use sockerr_common::FindingKind;

use super::*;
use crate::{
    export::web::config::{ClientAuth, Version},
    pipeline::table::Since,
};

fn stats() -> Stats {
    Stats {
        open: 3,
        scrapes_in_flight: 1,
        dropped: [1, 2, 3, 4, 5, 6],
        scrapes: [7, 8, u64::MAX],
    }
}

fn requests() -> Vec<Request> {
    vec![
        Request::CheckConfig { id: 1 },
        Request::Health { id: u32::MAX },
        Request::Metrics {
            id: 7,
            stats: stats(),
        },
        Request::Findings {
            id: 8,
            filter: Filter::default(),
            limit: 0,
        },
        Request::Findings {
            id: 9,
            filter: Filter {
                kind: Some(FindingKind::IoAfterFailedConnect),
                comm: Some("curl".into()),
                pid: Some(42),
                namespace: Some("shop".into()),
                pod: Some("x".repeat(MAX_FILTER)),
                since: Some(Since::Ago(Duration::from_millis(300_001))),
            },
            limit: LIMIT_MAX,
        },
        Request::Findings {
            id: 10,
            filter: Filter {
                pid: Some(0),
                since: Some(Since::At(
                    SystemTime::UNIX_EPOCH + Duration::new(1_796_000_000, 5),
                )),
                ..Filter::default()
            },
            limit: 1,
        },
        Request::FindingsNext { id: 9 },
        Request::FindingsCancel { id: 9 },
        Request::Stats(Stats::default()),
    ]
}

fn replies() -> Vec<Reply> {
    let mut headers = HeaderMap::new();
    headers.insert("x-frame-options", HeaderValue::from_static("deny"));
    vec![
        Reply::Setup(Setup {
            telemetry_path: "/metrics".into(),
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(90),
            write_timeout: Duration::from_millis(30_500),
            max_connections: 512,
            max_connections_per_client: 0,
            max_requests: 40,
        }),
        Reply::Terms(Box::default()),
        Reply::Terms(Box::new(Terms {
            tls: Some((
                Tls {
                    cert_file: "/etc/sockerr/tls.crt".into(),
                    key_file: "/etc/sockerr/tls.key".into(),
                    client_auth: ClientAuth::RequireAndVerifyClientCert,
                    client_ca_file: Some("/etc/sockerr/ca.crt".into()),
                    min_version: Version::Tls12,
                    max_version: Version::Tls13,
                    cipher_suites: vec![
                        rustls::CipherSuite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
                        rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
                    ],
                    curves: vec![rustls::NamedGroup::X25519],
                    prefer_server_cipher_suites: true,
                },
                Pem::new(b"cert".to_vec(), b"key".to_vec(), Some(b"ca".to_vec())),
            )),
            users: BTreeMap::from([("prometheus".into(), "$2b$10$x".into())]),
            headers,
        })),
        Reply::Done { id: 1 },
        Reply::Body {
            id: 2,
            last: true,
            bytes: Bytes::from_static(b"ok\n"),
        },
        Reply::Body {
            id: 2,
            last: false,
            bytes: Bytes::from(vec![0xff; BODY_CHUNK]),
        },
        Reply::Busy { id: 3 },
        Reply::Failed {
            id: 4,
            message: "rendering metrics: boom".into(),
        },
    ]
}

fn bytes(b: &[u8]) -> Bytes {
    Bytes::copy_from_slice(b)
}

/// The body of an encoded frame, its length checked.
fn body(frame: &[u8]) -> &[u8] {
    let len = u32::from_le_bytes(frame[..4].try_into().unwrap()) as usize;
    assert_eq!(len, frame.len() - 4);
    &frame[4..]
}

#[test]
fn every_message_round_trips_within_its_bound() {
    for request in requests() {
        let frame = request.encode();
        assert!(frame.len() - 4 <= MAX_REQUEST, "{request:?}");
        assert_eq!(Request::decode(body(&frame)), Ok(request));
    }
    for reply in replies() {
        let frame = reply.encode();
        assert!(frame.len() - 4 <= MAX_REPLY);
        assert_eq!(Reply::decode(&bytes(body(&frame))).as_ref(), Ok(&reply));
    }
}

/// A failure's message past the bound is cut, on a character's boundary.
#[test]
fn a_long_message_is_cut_to_whole_characters() {
    let message = format!("a{}", "é".repeat(MAX_SHORT));
    let frame = Reply::Failed { id: 1, message }.encode();
    let Ok(Reply::Failed { message, .. }) = Reply::decode(&bytes(body(&frame))) else {
        panic!("not a failure");
    };
    assert_eq!(message.len(), MAX_SHORT - 1);
    assert!(message.starts_with('a') && message.ends_with('é'));
}

#[test]
fn what_is_not_the_format_is_refused_and_named() {
    let valid = Request::Findings {
        id: 1,
        filter: Filter::default(),
        limit: 5,
    }
    .encode();
    let refused = |bytes: &[u8], expected: &str| {
        let e = Request::decode(bytes).expect_err(expected);
        assert!(e.0.contains(expected), "{e} ({expected})");
    };
    refused(&[], "version: the frame ends early");
    refused(&[VERSION], "type: the frame ends early");
    refused(&[2, kind::HEALTH, 0, 0, 0, 0], "version 2, expected 1");
    refused(&[VERSION, 0x7f, 0, 0, 0, 0], "no request of type 0x7f");
    // A reply's type is no request, and the other way round.
    refused(
        &[VERSION, kind::DONE, 0, 0, 0, 0],
        "no request of type 0x83",
    );
    assert!(Reply::decode(&bytes(body(&Request::Health { id: 1 }.encode()))).is_err());
    refused(
        &body(&valid)[..body(&valid).len() - 1],
        "limit: the frame ends early",
    );
    let mut long = body(&valid).to_vec();
    long.push(0);
    refused(&long, "1 bytes after the message");
    let mut bad_kind = body(&valid).to_vec();
    bad_kind[6] = 9;
    refused(&bad_kind, "kind: no kind 9");
    let over = Request::Findings {
        id: 1,
        filter: Filter::default(),
        limit: LIMIT_MAX + 1,
    }
    .encode();
    refused(body(&over), "limit: 10001, at most 10000");
    let long = Request::Findings {
        id: 1,
        filter: Filter {
            comm: Some("c".repeat(MAX_FILTER + 1)),
            ..Filter::default()
        },
        limit: 1,
    };
    assert!(!filter_fits(match &long {
        Request::Findings { filter, .. } => filter,
        _ => unreachable!(),
    }));
    refused(body(&long.encode()), "comm: 257 bytes, at most 256");
    // A boolean is 0 or 1.
    let mut frame = Reply::Body {
        id: 1,
        last: true,
        bytes: Bytes::new(),
    }
    .encode();
    frame[4 + 2 + 4] = 2;
    assert_eq!(
        Reply::decode(&bytes(body(&frame))),
        Err(Malformed("last: 2 is not a boolean".into()))
    );
    // A length past the frame, or a count past its bytes.
    let mut frame = Reply::Body {
        id: 1,
        last: true,
        bytes: Bytes::from_static(b"abc"),
    }
    .encode();
    frame[4 + 2 + 4 + 1] = 4;
    assert!(Reply::decode(&bytes(body(&frame))).is_err());
    let mut terms = Reply::Terms(Box::default()).encode();
    terms[4 + 2 + 1] = 0xff;
    let e = Reply::decode(&bytes(body(&terms))).unwrap_err();
    assert!(e.0.contains("users: 255 items in 4 bytes"), "{e}");
}

/// A tiny xorshift: the same inputs on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Random bytes, every prefix of every valid frame, and valid frames
/// with bytes flipped or overwritten: decoding never panics, reads
/// nothing past the frame, and whatever it accepts encodes back to the
/// same bytes (so nothing was skipped or guessed).
#[test]
fn no_input_makes_the_decoders_panic_or_accept_what_they_did_not_read() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut frames: Vec<Vec<u8>> = requests()
        .iter()
        .map(Request::encode)
        .chain(
            replies()
                .iter()
                .filter(|r| !matches!(r, Reply::Body { bytes, .. } if bytes.len() > 100))
                .map(Reply::encode),
        )
        .map(|f| f[4..].to_vec())
        .collect();
    for _ in 0..20_000 {
        let len = rng.below(64);
        frames.push((0..len).map(|_| rng.next() as u8).collect());
    }
    let valid = frames.len() - 20_000;
    for i in 0..valid {
        for _ in 0..500 {
            let mut f = frames[i].clone();
            let at = rng.below(f.len());
            match rng.below(3) {
                0 => f[at] ^= 1 << rng.below(8),
                1 => f[at] = rng.next() as u8,
                _ => f.truncate(at),
            }
            frames.push(f);
        }
    }
    let (mut accepted, mut refused) = (0, 0);
    for f in &frames {
        match Request::decode(f) {
            Ok(r) => {
                accepted += 1;
                assert_eq!(&r.encode()[4..], &f[..], "{r:?}");
            }
            Err(_) => refused += 1,
        }
        match Reply::decode(&bytes(f)) {
            // Headers and users are kept in a canonical order.
            Ok(Reply::Terms(_)) => accepted += 1,
            Ok(r) => {
                accepted += 1;
                assert_eq!(&r.encode()[4..], &f[..], "{r:?}");
            }
            Err(_) => refused += 1,
        }
        for prefix in 0..f.len().min(16) {
            let _ = Request::decode(&f[..prefix]);
            let _ = Reply::decode(&bytes(&f[..prefix]));
        }
    }
    assert!(accepted > valid && refused > 20_000, "{accepted} {refused}");
}

#[test]
fn a_body_header_and_its_bytes_are_the_frame() {
    let reply = Reply::Body {
        id: 9,
        last: false,
        bytes: Bytes::from_static(b"metrics"),
    };
    let mut apart = body_header(9, false, 7);
    apart.extend_from_slice(b"metrics");
    assert_eq!(apart, reply.encode());
}

#[tokio::test]
async fn frames_are_bounded_before_they_are_read() {
    let frame = Request::Health { id: 1 }.encode();
    let mut two: &[u8] = &[frame.clone(), frame.clone()].concat();
    for _ in 0..2 {
        let got = read_frame(&mut two, MAX_REQUEST).await.unwrap().unwrap();
        assert_eq!(Request::decode(&got), Ok(Request::Health { id: 1 }));
    }
    assert_eq!(read_frame(&mut two, MAX_REQUEST).await.unwrap(), None);
    // A length over the bound: refused without waiting for the bytes.
    let mut huge: &[u8] = &(u32::MAX).to_le_bytes();
    let e = read_frame(&mut huge, MAX_REQUEST).await.unwrap_err();
    assert!(e.to_string().contains("a frame of 4294967295 bytes"), "{e}");
    let mut tiny: &[u8] = &[1, 0, 0, 0, VERSION];
    assert!(read_frame(&mut tiny, MAX_REQUEST).await.is_err());
    // Cut inside a frame: an error, not the end.
    let mut cut: &[u8] = &frame[..frame.len() - 1];
    assert!(read_frame(&mut cut, MAX_REQUEST).await.is_err());
}
