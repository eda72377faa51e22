//! The channel between the collector and the web server: requests in,
//! answers out, over a Unix socket pair made before the server is started.
//!
//! The web server is the process that takes network input, so what it
//! sends is read as hostile: every frame is length-prefixed and bounded
//! ([`MAX_REQUEST`]), carries the format's [`VERSION`] and a known type,
//! and is decoded whole or not at all (a short, long, unknown or
//! out-of-range frame is [`Malformed`]: the collector ends that server and
//! starts another). What crosses it:
//!
//! - server → collector ([`Request`]): "is the web configuration still
//!   current?", health, metrics, a `/findings` query (kind, limit) and its
//!   next chunk or its end, and the server's own counts ([`Stats`]: open
//!   connections, connections dropped by reason, scrapes by status).
//! - collector → server ([`Reply`]): the settings the server runs with
//!   ([`Setup`]), the web configuration in force ([`Terms`]: TLS
//!   certificate, key and client CA as read, users and their bcrypt hashes,
//!   response headers), and answers: metrics text, findings JSON, "ok".
//!
//! A frame: `length: u32` (little-endian, the bytes after it), `version:
//! u8`, `type: u8`, then the type's fields: integers little-endian, `bool`
//! as 0 or 1, byte strings and UTF-8 strings as `u32` length and bytes,
//! lists as `u32` count and items, options as a `bool` then the value.

use std::{
    collections::BTreeMap,
    io,
    path::PathBuf,
    time::{Duration, SystemTime},
};

use axum::{
    body::Bytes,
    http::{HeaderMap, HeaderName, HeaderValue},
};
use sockerr_common::FindingKind;
use strum::EnumCount as _;
use tokio::io::{AsyncRead, AsyncReadExt as _};

use super::web::{
    config::{self, ClientAuth, Tls, Version},
    tls::Pem,
};
use crate::pipeline::table::{Filter, Since};

/// The format's version: a server of another build is refused, not
/// half-understood (it is always the collector's own executable, so this
/// only changes with the format).
pub const VERSION: u8 = 1;

/// Most bytes of a frame from the server (after its length): requests and
/// counts take a few dozen.
pub const MAX_REQUEST: usize = 1 << 10;

/// Most bytes of a frame from the collector: a web configuration is at
/// most four files of at most 1 MiB (`web::config::MAX_FILE_BYTES`), a
/// body is sent in chunks of [`BODY_CHUNK`].
pub const MAX_REPLY: usize = 5 << 20;

/// Bytes of a body (metrics text) per frame.
pub const BODY_CHUNK: usize = 1 << 20;

/// Most entries a `/findings` query asks for.
pub const LIMIT_MAX: u32 = 10_000;

/// The longest telemetry path, user name, hash, header name or value.
const MAX_SHORT: usize = 4 << 10;

/// The longest comm, namespace or pod a `/findings` filter names (a comm
/// is 15 bytes, 45 decoded; a namespace or pod name 253 characters): a
/// longer one matches nothing, and is not sent.
pub const MAX_FILTER: usize = 256;

/// Whether a filter can be sent (see [`MAX_FILTER`]).
pub fn filter_fits(filter: &Filter) -> bool {
    [&filter.comm, &filter.namespace, &filter.pod]
        .into_iter()
        .flatten()
        .all(|s| s.len() <= MAX_FILTER)
}

/// Why the server closed a connection before the client did; the label
/// (`sockerr_http_connections_dropped_total{reason}`) is the snake_case name.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, strum::EnumIter, strum::EnumCount, strum::IntoStaticStr,
)]
#[strum(serialize_all = "snake_case")]
pub enum Dropped {
    MaxConnections,
    MaxConnectionsPerClient,
    TlsHandshake,
    HeaderTimeout,
    IdleTimeout,
    WriteTimeout,
}

/// How a scrape of the telemetry path was answered
/// (`promhttp_metric_handler_requests_total{code}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, strum::EnumIter, strum::EnumCount)]
pub enum Scrape {
    Ok,
    Failed,
    /// `--web.max-requests` scrapes were being answered already.
    Refused,
}

impl Scrape {
    pub fn code(self) -> &'static str {
        match self {
            Scrape::Ok => "200",
            Scrape::Failed => "500",
            Scrape::Refused => "503",
        }
    }
}

/// What the server counted since it started: sent whenever it changes
/// (and with each scrape), so that the collector, which keeps the
/// metrics, loses none of it when the server dies.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub open: u32,
    pub scrapes_in_flight: u32,
    pub dropped: [u64; Dropped::COUNT],
    pub scrapes: [u64; Scrape::COUNT],
}

/// Server → collector.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// Read the web configuration again if its files changed; answered by
    /// [`Reply::Done`], after [`Reply::Terms`] if it changed.
    CheckConfig {
        id: u32,
    },
    /// Answered by a body `ok`.
    Health {
        id: u32,
    },
    /// The exposition, in body chunks; `stats` as of the request.
    Metrics {
        id: u32,
        stats: Stats,
    },
    /// A `/findings` response: its first chunk, or [`Reply::Busy`].
    Findings {
        id: u32,
        filter: Filter,
        limit: u32,
    },
    /// The next chunk of a `/findings` response not finished yet.
    FindingsNext {
        id: u32,
    },
    /// The client went away: the response's place is given back.
    FindingsCancel {
        id: u32,
    },
    Stats(Stats),
}

/// What the server runs with, from the `--web.*` flags.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Setup {
    pub telemetry_path: String,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub write_timeout: Duration,
    pub max_connections: u32,
    /// 0: no limit.
    pub max_connections_per_client: u32,
    /// 0: no limit.
    pub max_requests: u32,
}

/// A web configuration as the collector read and accepted it; the server
/// makes its TLS configuration from it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Terms {
    pub tls: Option<(Tls, Pem)>,
    pub users: BTreeMap<String, String>,
    pub headers: HeaderMap,
}

/// Collector → server.
#[derive(Clone, Debug, PartialEq)]
pub enum Reply {
    Setup(Setup),
    Terms(Box<Terms>),
    Done {
        id: u32,
    },
    /// A chunk of a body. Decoded without a copy: a slice of the frame.
    Body {
        id: u32,
        last: bool,
        bytes: Bytes,
    },
    /// Too many `/findings` responses are being written: try again.
    Busy {
        id: u32,
    },
    Failed {
        id: u32,
        message: String,
    },
}

/// A frame that is not one of the format's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Malformed(pub String);

impl std::fmt::Display for Malformed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Malformed {}

fn malformed<T>(what: impl Into<String>) -> Result<T, Malformed> {
    Err(Malformed(what.into()))
}

/// Message types. Requests below 0x80, replies from it.
mod kind {
    pub const CHECK_CONFIG: u8 = 0x01;
    pub const HEALTH: u8 = 0x02;
    pub const METRICS: u8 = 0x03;
    pub const FINDINGS: u8 = 0x04;
    pub const FINDINGS_NEXT: u8 = 0x05;
    pub const FINDINGS_CANCEL: u8 = 0x06;
    pub const STATS: u8 = 0x07;
    pub const SETUP: u8 = 0x81;
    pub const TERMS: u8 = 0x82;
    pub const DONE: u8 = 0x83;
    pub const BODY: u8 = 0x84;
    pub const BUSY: u8 = 0x85;
    pub const FAILED: u8 = 0x86;
}

/// A frame being written.
struct Writer(Vec<u8>);

impl Writer {
    fn new(kind: u8) -> Self {
        Self(vec![0, 0, 0, 0, VERSION, kind])
    }

    fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }

    fn bool(&mut self, v: bool) -> &mut Self {
        self.u8(u8::from(v))
    }

    fn u16(&mut self, v: u16) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }

    fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }

    fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }

    fn len(&mut self, n: usize) -> &mut Self {
        self.u32(u32::try_from(n).expect("bounded by the frame size"))
    }

    fn bytes(&mut self, v: &[u8]) -> &mut Self {
        self.len(v.len());
        self.0.extend_from_slice(v);
        self
    }

    fn str(&mut self, v: &str) -> &mut Self {
        self.bytes(v.as_bytes())
    }

    fn option_str(&mut self, v: Option<&str>) -> &mut Self {
        self.bool(v.is_some());
        if let Some(v) = v {
            self.str(v);
        }
        self
    }

    fn duration(&mut self, v: Duration) -> &mut Self {
        self.u64(u64::try_from(v.as_millis()).unwrap_or(u64::MAX))
    }

    fn stats(&mut self, s: &Stats) -> &mut Self {
        self.u32(s.open).u32(s.scrapes_in_flight);
        for v in s.dropped.iter().chain(&s.scrapes) {
            self.u64(*v);
        }
        self
    }

    /// The whole frame, its length filled in.
    fn finish(&mut self) -> Vec<u8> {
        let len = u32::try_from(self.0.len() - 4).expect("bounded by the frame size");
        self.0[..4].copy_from_slice(&len.to_le_bytes());
        std::mem::take(&mut self.0)
    }
}

/// A frame being read: every read is bounds-checked, and [`Reader::end`]
/// refuses bytes left over.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], Malformed> {
        if self.0.len() < n {
            return malformed(format!("{what}: the frame ends early"));
        }
        let (taken, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(taken)
    }

    fn u8(&mut self, what: &str) -> Result<u8, Malformed> {
        Ok(self.take(1, what)?[0])
    }

    fn bool(&mut self, what: &str) -> Result<bool, Malformed> {
        match self.u8(what)? {
            0 => Ok(false),
            1 => Ok(true),
            v => malformed(format!("{what}: {v} is not a boolean")),
        }
    }

    fn u16(&mut self, what: &str) -> Result<u16, Malformed> {
        Ok(u16::from_le_bytes(
            self.take(2, what)?.try_into().expect("2 bytes"),
        ))
    }

    fn u32(&mut self, what: &str) -> Result<u32, Malformed> {
        Ok(u32::from_le_bytes(
            self.take(4, what)?.try_into().expect("4 bytes"),
        ))
    }

    fn u64(&mut self, what: &str) -> Result<u64, Malformed> {
        Ok(u64::from_le_bytes(
            self.take(8, what)?.try_into().expect("8 bytes"),
        ))
    }

    fn bytes(&mut self, max: usize, what: &str) -> Result<&'a [u8], Malformed> {
        let n = self.u32(what)? as usize;
        if n > max {
            return malformed(format!("{what}: {n} bytes, at most {max}"));
        }
        self.take(n, what)
    }

    fn string(&mut self, max: usize, what: &str) -> Result<String, Malformed> {
        let bytes = self.bytes(max, what)?;
        String::from_utf8(bytes.to_vec()).or_else(|_| malformed(format!("{what}: not UTF-8")))
    }

    fn option_string(&mut self, max: usize, what: &str) -> Result<Option<String>, Malformed> {
        self.bool(what)?.then(|| self.string(max, what)).transpose()
    }

    /// A list's count, which cannot be more than the bytes left (each item
    /// takes at least one).
    fn count(&mut self, what: &str) -> Result<usize, Malformed> {
        let n = self.u32(what)? as usize;
        if n > self.0.len() {
            return malformed(format!("{what}: {n} items in {} bytes", self.0.len()));
        }
        Ok(n)
    }

    fn duration(&mut self, what: &str) -> Result<Duration, Malformed> {
        match self.u64(what)? {
            0 => malformed(format!("{what}: 0")),
            ms => Ok(Duration::from_millis(ms)),
        }
    }

    fn stats(&mut self) -> Result<Stats, Malformed> {
        let mut s = Stats {
            open: self.u32("open connections")?,
            scrapes_in_flight: self.u32("scrapes in flight")?,
            ..Stats::default()
        };
        for v in s.dropped.iter_mut() {
            *v = self.u64("dropped connections")?;
        }
        for v in s.scrapes.iter_mut() {
            *v = self.u64("scrapes")?;
        }
        Ok(s)
    }

    fn end(self) -> Result<(), Malformed> {
        match self.0.len() {
            0 => Ok(()),
            n => malformed(format!("{n} bytes after the message")),
        }
    }
}

/// The version and type of a frame's body.
fn open(body: &[u8]) -> Result<(u8, Reader<'_>), Malformed> {
    let mut r = Reader(body);
    let version = r.u8("version")?;
    if version != VERSION {
        return malformed(format!("version {version}, expected {VERSION}"));
    }
    let kind = r.u8("type")?;
    Ok((kind, r))
}

impl Request {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Request::CheckConfig { id } => Writer::new(kind::CHECK_CONFIG).u32(*id).finish(),
            Request::Health { id } => Writer::new(kind::HEALTH).u32(*id).finish(),
            Request::Metrics { id, stats } => {
                Writer::new(kind::METRICS).u32(*id).stats(stats).finish()
            }
            Request::Findings { id, filter, limit } => {
                let mut w = Writer::new(kind::FINDINGS);
                w.u32(*id).u8(filter.kind.map_or(0, |k| k as u8));
                w.option_str(filter.comm.as_deref());
                w.bool(filter.pid.is_some()).u32(filter.pid.unwrap_or(0));
                w.option_str(filter.namespace.as_deref());
                w.option_str(filter.pod.as_deref());
                let (tag, at) = match filter.since {
                    None => (0, Duration::ZERO),
                    Some(Since::Ago(ago)) => (1, ago),
                    Some(Since::At(at)) => (
                        2,
                        at.duration_since(SystemTime::UNIX_EPOCH)
                            .unwrap_or_default(),
                    ),
                };
                w.u8(tag).u64(at.as_secs()).u32(at.subsec_nanos());
                w.u32(*limit).finish()
            }
            Request::FindingsNext { id } => Writer::new(kind::FINDINGS_NEXT).u32(*id).finish(),
            Request::FindingsCancel { id } => Writer::new(kind::FINDINGS_CANCEL).u32(*id).finish(),
            Request::Stats(stats) => Writer::new(kind::STATS).stats(stats).finish(),
        }
    }

    /// A frame's body (after its length) as a request, or why not.
    pub fn decode(body: &[u8]) -> Result<Self, Malformed> {
        let (t, mut r) = open(body)?;
        let request = match t {
            kind::CHECK_CONFIG => Request::CheckConfig { id: r.u32("id")? },
            kind::HEALTH => Request::Health { id: r.u32("id")? },
            kind::METRICS => Request::Metrics {
                id: r.u32("id")?,
                stats: r.stats()?,
            },
            kind::FINDINGS => {
                let id = r.u32("id")?;
                let kind = match r.u8("kind")? {
                    0 => None,
                    k => Some(
                        FindingKind::from_repr(k)
                            .ok_or_else(|| Malformed(format!("kind: no kind {k}")))?,
                    ),
                };
                let comm = r.option_string(MAX_FILTER, "comm")?;
                let pid = match (r.bool("pid")?, r.u32("pid")?) {
                    (true, pid) => Some(pid),
                    (false, 0) => None,
                    (false, _) => return malformed("pid: a value without its flag"),
                };
                let namespace = r.option_string(MAX_FILTER, "namespace")?;
                let pod = r.option_string(MAX_FILTER, "pod")?;
                let (tag, secs, nanos) = (r.u8("since")?, r.u64("since")?, r.u32("since")?);
                if nanos >= 1_000_000_000 {
                    return malformed(format!("since: {nanos} nanoseconds"));
                }
                let at = Duration::new(secs, nanos);
                let since = match tag {
                    0 if at.is_zero() => None,
                    1 => Some(Since::Ago(at)),
                    2 => Some(Since::At(
                        SystemTime::UNIX_EPOCH
                            .checked_add(at)
                            .ok_or_else(|| Malformed("since: out of range".into()))?,
                    )),
                    _ => return malformed(format!("since: {tag}")),
                };
                let limit = r.u32("limit")?;
                if limit > LIMIT_MAX {
                    return malformed(format!("limit: {limit}, at most {LIMIT_MAX}"));
                }
                Request::Findings {
                    id,
                    filter: Filter {
                        kind,
                        comm,
                        pid,
                        namespace,
                        pod,
                        since,
                    },
                    limit,
                }
            }
            kind::FINDINGS_NEXT => Request::FindingsNext { id: r.u32("id")? },
            kind::FINDINGS_CANCEL => Request::FindingsCancel { id: r.u32("id")? },
            kind::STATS => Request::Stats(r.stats()?),
            other => return malformed(format!("no request of type {other:#04x}")),
        };
        r.end()?;
        Ok(request)
    }
}

fn client_auth_code(c: ClientAuth) -> u8 {
    match c {
        ClientAuth::NoClientCert => 0,
        ClientAuth::RequestClientCert => 1,
        ClientAuth::RequireAnyClientCert => 2,
        ClientAuth::VerifyClientCertIfGiven => 3,
        ClientAuth::RequireAndVerifyClientCert => 4,
    }
}

fn version_code(v: Version) -> u8 {
    match v {
        Version::Tls12 => 12,
        Version::Tls13 => 13,
    }
}

fn path_bytes(p: &std::path::Path) -> &[u8] {
    std::os::unix::ffi::OsStrExt::as_bytes(p.as_os_str())
}

fn path(r: &mut Reader<'_>, what: &str) -> Result<PathBuf, Malformed> {
    let bytes = r.bytes(MAX_SHORT, what)?;
    Ok(PathBuf::from(
        <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(bytes),
    ))
}

impl Reply {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Reply::Setup(s) => Writer::new(kind::SETUP)
                .str(&s.telemetry_path)
                .duration(s.header_timeout)
                .duration(s.idle_timeout)
                .duration(s.write_timeout)
                .u32(s.max_connections)
                .u32(s.max_connections_per_client)
                .u32(s.max_requests)
                .finish(),
            Reply::Terms(t) => {
                let mut w = Writer::new(kind::TERMS);
                w.bool(t.tls.is_some());
                if let Some((tls, pem)) = &t.tls {
                    w.bytes(path_bytes(&tls.cert_file))
                        .bytes(path_bytes(&tls.key_file))
                        .bool(tls.client_ca_file.is_some());
                    if let Some(ca) = &tls.client_ca_file {
                        w.bytes(path_bytes(ca));
                    }
                    w.u8(client_auth_code(tls.client_auth))
                        .u8(version_code(tls.min_version))
                        .u8(version_code(tls.max_version))
                        .len(tls.cipher_suites.len());
                    for suite in &tls.cipher_suites {
                        w.u16(u16::from(*suite));
                    }
                    w.len(tls.curves.len());
                    for curve in &tls.curves {
                        w.u16(u16::from(*curve));
                    }
                    w.bool(tls.prefer_server_cipher_suites)
                        .bytes(pem.cert())
                        .bytes(pem.key())
                        .bool(pem.client_ca().is_some());
                    if let Some(ca) = pem.client_ca() {
                        w.bytes(ca);
                    }
                }
                w.len(t.users.len());
                for (user, hash) in &t.users {
                    w.str(user).str(hash);
                }
                w.len(t.headers.len());
                for (name, value) in &t.headers {
                    w.str(name.as_str()).bytes(value.as_bytes());
                }
                w.finish()
            }
            Reply::Done { id } => Writer::new(kind::DONE).u32(*id).finish(),
            Reply::Body { id, last, bytes } => {
                let mut frame = body_header(*id, *last, bytes.len());
                frame.extend_from_slice(bytes);
                frame
            }
            Reply::Busy { id } => Writer::new(kind::BUSY).u32(*id).finish(),
            Reply::Failed { id, message } => Writer::new(kind::FAILED)
                .u32(*id)
                .str(&message[..message.len().min(MAX_SHORT)])
                .finish(),
        }
    }

    /// A frame's body (after its length) as a reply, or why not.
    pub fn decode(body: &Bytes) -> Result<Self, Malformed> {
        let (t, mut r) = open(body)?;
        let reply = match t {
            kind::SETUP => Reply::Setup(Setup {
                telemetry_path: r.string(MAX_SHORT, "telemetry path")?,
                header_timeout: r.duration("header timeout")?,
                idle_timeout: r.duration("idle timeout")?,
                write_timeout: r.duration("write timeout")?,
                max_connections: match r.u32("max connections")? {
                    0 => return malformed("max connections: 0"),
                    n => n,
                },
                max_connections_per_client: r.u32("max connections per client")?,
                max_requests: r.u32("max requests")?,
            }),
            kind::TERMS => Reply::Terms(Box::new(terms(&mut r)?)),
            kind::DONE => Reply::Done { id: r.u32("id")? },
            kind::BODY => {
                let id = r.u32("id")?;
                let last = r.bool("last")?;
                let n = r.bytes(BODY_CHUNK, "body")?.len();
                let end = body.len() - r.0.len();
                Reply::Body {
                    id,
                    last,
                    bytes: body.slice(end - n..end),
                }
            }
            kind::BUSY => Reply::Busy { id: r.u32("id")? },
            kind::FAILED => Reply::Failed {
                id: r.u32("id")?,
                message: r.string(MAX_SHORT, "message")?,
            },
            other => return malformed(format!("no reply of type {other:#04x}")),
        };
        r.end()?;
        Ok(reply)
    }
}

/// The start of a body frame of `len` bytes, which follow it: written
/// apart, so a large body is not copied into a frame first.
pub fn body_header(id: u32, last: bool, len: usize) -> Vec<u8> {
    let mut w = Writer::new(kind::BODY);
    w.u32(id).bool(last).len(len);
    let mut header = w.0;
    let frame = header.len() - 4 + len;
    header[..4].copy_from_slice(&u32::try_from(frame).expect("a bounded body").to_le_bytes());
    header
}

fn terms(r: &mut Reader<'_>) -> Result<Terms, Malformed> {
    let file = config::MAX_FILE_BYTES as usize;
    let tls = if r.bool("tls")? {
        let cert_file = path(r, "cert_file")?;
        let key_file = path(r, "key_file")?;
        let client_ca_file = r
            .bool("client_ca_file")?
            .then(|| path(r, "client_ca_file"))
            .transpose()?;
        let client_auth = match r.u8("client_auth_type")? {
            0 => ClientAuth::NoClientCert,
            1 => ClientAuth::RequestClientCert,
            2 => ClientAuth::RequireAnyClientCert,
            3 => ClientAuth::VerifyClientCertIfGiven,
            4 => ClientAuth::RequireAndVerifyClientCert,
            v => return malformed(format!("client_auth_type: {v}")),
        };
        let version = |r: &mut Reader<'_>, what| match r.u8(what)? {
            12 => Ok(Version::Tls12),
            13 => Ok(Version::Tls13),
            v => malformed(format!("{what}: {v}")),
        };
        let min_version = version(r, "min_version")?;
        let max_version = version(r, "max_version")?;
        let mut cipher_suites = Vec::new();
        for _ in 0..r.count("cipher_suites")? {
            let code = r.u16("cipher_suites")?;
            cipher_suites.push(
                config::known_suite(code)
                    .ok_or_else(|| Malformed(format!("cipher_suites: {code:#06x}")))?,
            );
        }
        let mut curves = Vec::new();
        for _ in 0..r.count("curve_preferences")? {
            let code = r.u16("curve_preferences")?;
            curves.push(
                config::known_curve(code)
                    .ok_or_else(|| Malformed(format!("curve_preferences: {code:#06x}")))?,
            );
        }
        let prefer_server_cipher_suites = r.bool("prefer_server_cipher_suites")?;
        let cert = r.bytes(file, "certificate")?.to_vec();
        let key = r.bytes(file, "key")?.to_vec();
        let client_ca = r
            .bool("client CA")?
            .then(|| r.bytes(file, "client CA").map(<[u8]>::to_vec))
            .transpose()?;
        if client_ca.is_some() != client_ca_file.is_some() {
            return malformed("client CA: sent without its file, or its file without it");
        }
        Some((
            Tls {
                cert_file,
                key_file,
                client_auth,
                client_ca_file,
                min_version,
                max_version,
                cipher_suites,
                curves,
                prefer_server_cipher_suites,
            },
            Pem::new(cert, key, client_ca),
        ))
    } else {
        None
    };
    let mut users = BTreeMap::new();
    for _ in 0..r.count("users")? {
        let user = r.string(MAX_SHORT, "user")?;
        let hash = r.string(MAX_SHORT, "hash")?;
        if users.insert(user, hash).is_some() {
            return malformed("users: a user twice");
        }
    }
    let mut headers = HeaderMap::new();
    for _ in 0..r.count("headers")? {
        let name = HeaderName::from_bytes(r.bytes(MAX_SHORT, "header name")?)
            .or_else(|_| malformed("header name: invalid"))?;
        let value = HeaderValue::from_bytes(r.bytes(MAX_SHORT, "header value")?)
            .or_else(|_| malformed("header value: invalid"))?;
        headers.append(name, value);
    }
    Ok(Terms {
        tls,
        users,
        headers,
    })
}

/// Reads one frame's body (after its length, at most `max` bytes); `None`
/// at the end of the stream between frames. A length over `max`, or under
/// the version and type, is an error before anything more is read.
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    max: usize,
) -> io::Result<Option<Vec<u8>>> {
    let mut len = [0; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_le_bytes(len) as usize;
    if !(2..=max).contains(&len) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            Malformed(format!("a frame of {len} bytes (2 to {max})")),
        ));
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body).await?;
    Ok(Some(body))
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
