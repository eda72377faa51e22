//! HTTP endpoints: metrics, findings, health.
//!
//! `/findings` is written a chunk at a time: the request fixes which
//! entries it shows and in what order (16 bytes an entry), and each chunk
//! is serialized from the findings table when the client has taken the one
//! before. A response costs its order and one chunk whatever its length,
//! however slowly it is read, and [`FINDINGS_IN_FLIGHT`] bound how many are
//! written at once: 10,000 flagged processes read by 30 slow clients cost
//! a few MiB, not a copy of the table each.

use std::{
    convert::Infallible,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::{Duration, Instant, SystemTime},
};

use axum::{
    Router,
    body::{Body, Bytes},
    extract::{Query, State as Extract},
    http::{HeaderValue, StatusCode, header},
    response::{Html, IntoResponse, Response},
    routing::get,
};
use hyper::body::Frame;
use serde::Deserialize;
use sockerr_common::FindingKind;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::{
    export::state::State,
    locks::lock,
    pipeline::table::{EntryKey, Filter, Findings, Since},
};

/// Entries of a `/findings` without `?limit=`.
const LIMIT_DEFAULT: usize = 1000;

/// Most entries one `/findings` shows (`?limit=` above is a 400): the
/// order a response keeps is 16 bytes an entry.
pub const LIMIT_MAX: usize = 10_000;

/// Most bytes of one `/findings` body: entries past it are left out (the
/// array stays whole). A flagged process's entry is about 600 bytes, a few
/// KiB with call sites, so this is reached only by thousands of entries
/// with long stacks.
pub const BODY_MAX: usize = 32 << 20;

/// Bytes serialized at a time: written out before the next is made.
const CHUNK: usize = 32 << 10;

/// `/findings` responses being written at once; another waits
/// [`FINDINGS_WAIT`] for its turn, then gets 503. Each costs its order (up
/// to 160 KiB at `LIMIT_MAX`) and a chunk or two in the server's buffers.
pub const FINDINGS_IN_FLIGHT: usize = 32;

const FINDINGS_WAIT: Duration = Duration::from_secs(1);

#[derive(Clone)]
struct Endpoints {
    state: State,
    findings_in_flight: Arc<Semaphore>,
}

pub fn router(state: State, telemetry_path: &str) -> Router {
    let landing = format!(
        "<html><head><title>sockerr</title></head><body><h1>sockerr</h1>\
         <p><a href=\"{telemetry_path}\">Metrics</a> · <a href=\"/findings\">Findings</a> · \
         <a href=\"/healthz\">Health</a></p></body></html>"
    );
    Router::new()
        .route(telemetry_path, get(metrics))
        .route("/findings", get(findings))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/", get(move || async move { Html(landing) }))
        .with_state(Endpoints {
            state,
            findings_in_flight: Arc::new(Semaphore::new(FINDINGS_IN_FLIGHT)),
        })
}

async fn metrics(Extract(endpoints): Extract<Endpoints>) -> Response {
    let state = endpoints.state;
    let body = tokio::task::spawn_blocking(move || state.render_metrics()).await;
    match body {
        Ok(body) => ([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], body).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("rendering metrics: {e}\n"),
        )
            .into_response(),
    }
}

/// What `/findings` filters by, and `?limit=`; any other parameter (a
/// cache-buster such as `_=1`) is ignored.
#[derive(Deserialize)]
struct FindingsQuery {
    kind: Option<FindingKind>,
    comm: Option<String>,
    pid: Option<u32>,
    namespace: Option<String>,
    pod: Option<String>,
    since: Option<Since>,
    limit: Option<usize>,
}

impl FindingsQuery {
    fn filter(self) -> Filter {
        Filter {
            kind: self.kind,
            comm: self.comm,
            pid: self.pid,
            namespace: self.namespace,
            pod: self.pod,
            since: self.since,
        }
    }
}

async fn findings(
    Extract(endpoints): Extract<Endpoints>,
    query: Result<Query<FindingsQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let q = match query {
        Ok(Query(q)) => q,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    };
    let limit = q.limit.unwrap_or(LIMIT_DEFAULT);
    if limit > LIMIT_MAX {
        return (
            StatusCode::BAD_REQUEST,
            format!("limit: at most {LIMIT_MAX}\n"),
        )
            .into_response();
    }
    let permit = tokio::time::timeout(
        FINDINGS_WAIT,
        endpoints.findings_in_flight.clone().acquire_owned(),
    )
    .await;
    let Ok(Ok(permit)) = permit else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, HeaderValue::from_static("1"))],
            format!("{FINDINGS_IN_FLIGHT} /findings responses are being written; retry\n"),
        )
            .into_response();
    };
    let table = endpoints.state.findings();
    let now = (Instant::now(), SystemTime::now());
    let order = lock(&table).order(now, &q.filter(), limit);
    let body = FindingsBody {
        table,
        order,
        next: 0,
        first: true,
        sent: 0,
        done: false,
        _permit: permit,
    };
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        Body::new(body),
    )
        .into_response()
}

/// A `/findings` body: a JSON array of the entries of `order` that still
/// exist when their chunk is made, each as it stands then.
struct FindingsBody<P = OwnedSemaphorePermit> {
    table: Arc<Mutex<Findings>>,
    order: Vec<EntryKey>,
    /// The first entry of `order` not written yet.
    next: usize,
    /// No entry written yet (no comma before the next).
    first: bool,
    /// Bytes made so far.
    sent: usize,
    done: bool,
    /// A place among the [`FINDINGS_IN_FLIGHT`] until the body is dropped.
    _permit: P,
}

impl<P> FindingsBody<P> {
    fn chunk(&mut self, body_max: usize) -> Bytes {
        let mut out = Vec::with_capacity(CHUNK + CHUNK / 4);
        if self.sent == 0 {
            out.push(b'[');
        }
        // Room for the closing bracket.
        let most = body_max - self.sent - 1;
        let (used, full) = lock(&self.table).write(
            &self.order[self.next..],
            &mut out,
            &mut self.first,
            (CHUNK, most),
        );
        self.next += used;
        if full || self.next == self.order.len() {
            out.push(b']');
            self.done = true;
            self.order = Vec::new();
        }
        self.sent += out.len();
        Bytes::from(out)
    }
}

impl<P: Send + Unpin + 'static> hyper::body::Body for FindingsBody<P> {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        Poll::Ready(Some(Ok(Frame::data(this.chunk(BODY_MAX)))))
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::pipeline::report::tests::finding;

    fn table(n: u32) -> Arc<Mutex<Findings>> {
        let mut t = Findings::new(100_000, Duration::from_secs(60));
        let tally = crate::pipeline::table::TallyRead {
            since_ns: 1,
            total: 1,
        };
        for pid in 1..=n {
            t.record(
                finding(pid, FindingKind::SoErrorReread, pid.into()),
                7,
                tally,
                Instant::now(),
            );
        }
        Arc::new(Mutex::new(t))
    }

    /// The whole body, chunk by chunk, with `body_max`.
    fn body(table: &Arc<Mutex<Findings>>, limit: usize, body_max: usize) -> (Vec<u8>, usize) {
        let now = (Instant::now(), SystemTime::now());
        let order = lock(table).order(now, &Filter::default(), limit);
        let mut body = FindingsBody {
            table: table.clone(),
            order,
            next: 0,
            first: true,
            sent: 0,
            done: false,
            _permit: (),
        };
        let (mut all, mut chunks) = (Vec::new(), 0);
        while !body.done {
            let chunk = body.chunk(body_max);
            assert!(chunk.len() <= CHUNK + CHUNK / 4, "{} bytes", chunk.len());
            all.extend_from_slice(&chunk);
            chunks += 1;
        }
        (all, chunks)
    }

    #[test]
    fn findings_are_one_json_array_made_a_chunk_at_a_time() {
        let t = table(2000);
        let (all, chunks) = body(&t, LIMIT_MAX, BODY_MAX);
        let parsed: Vec<serde_json::Value> = serde_json::from_slice(&all).unwrap();
        assert_eq!(parsed.len(), 2000);
        assert!(chunks > 10, "{chunks} chunks");
        assert_eq!(parsed[0]["pid"], 2000, "newest first");
        let (all, _) = body(&t, 3, BODY_MAX);
        assert_eq!(
            serde_json::from_slice::<Vec<serde_json::Value>>(&all)
                .unwrap()
                .len(),
            3
        );
        // Nothing flagged: an empty array.
        assert_eq!(body(&table(0), LIMIT_MAX, BODY_MAX).0, b"[]");
    }

    #[test]
    fn a_body_past_its_bound_leaves_entries_out_whole() {
        let t = table(2000);
        let body_max = 100_000;
        let (all, _) = body(&t, LIMIT_MAX, body_max);
        assert!(all.len() <= body_max, "{} bytes", all.len());
        assert!(all.len() > body_max - 1000, "{} bytes", all.len());
        let parsed: Vec<serde_json::Value> = serde_json::from_slice(&all).unwrap();
        assert!(parsed.len() < 2000 && parsed[0]["pid"] == 2000);
    }
}
