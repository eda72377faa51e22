//! Each message's fields in order, and what a decoded one must satisfy
//! beyond its bounds.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    time::{Duration, SystemTime},
};

use axum::{
    body::Bytes,
    http::{HeaderMap, HeaderName, HeaderValue},
};
use sockerr_common::FindingKind;

use super::{
    BODY_CHUNK, LIMIT_MAX, MAX_FILTER, MAX_SHORT, Malformed, Reply, Request, Setup, Terms,
    body_header,
    frame::{Reader, Writer, open},
    kind, malformed,
};
use crate::{
    export::web::config::{self, ClientAuth, Tls, Version},
    export::web::tls::Pem,
    pipeline::table::{Filter, Since},
};

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
            Reply::Failed { id, message } => {
                // Cut to the bound on a character's boundary.
                let end = (0..=message.len().min(MAX_SHORT))
                    .rev()
                    .find(|&i| message.is_char_boundary(i))
                    .unwrap_or(0);
                Writer::new(kind::FAILED)
                    .u32(*id)
                    .str(&message[..end])
                    .finish()
            }
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
