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

mod codec;
mod frame;
#[cfg(test)]
mod tests;

use std::{collections::BTreeMap, time::Duration};

use axum::body::Bytes;
use axum::http::HeaderMap;
use strum::EnumCount as _;

pub use frame::{body_header, read_frame};

use super::web::{config::Tls, tls::Pem};
use crate::pipeline::table::Filter;

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

/// The longest telemetry path, file path, user name, hash, header name or
/// value: the web configuration and the flags are refused past it, so that
/// every one the collector accepts can be sent.
pub const MAX_SHORT: usize = 4 << 10;

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
