//! HTTP endpoints: metrics, findings, health, each answered by asking the
//! collector over the channel (`export::channel`).
//!
//! `/findings` is written a chunk at a time: the collector fixes which
//! entries the response shows and in what order when it is asked, and
//! makes each chunk from its findings table when the client has taken the
//! one before (`export::serving::answer`). A response costs a chunk at a
//! time whatever its length, however slowly it is read, and
//! [`FINDINGS_IN_FLIGHT`] bound how many are written at once: 10,000
//! flagged processes read by 30 slow clients cost a few MiB, not a copy of
//! the table each.
//!
//! `/healthz` answers without authentication, on purpose: it is the
//! kubelet's liveness and readiness probe, which carries no credentials.
//! It says `ok` only when the collector answers (so a wedged collector is
//! restarted), and nothing else.

use std::{sync::Arc, time::Duration};

use axum::{
    Router,
    body::Body,
    extract::{Query, State as Extract},
    http::{HeaderValue, StatusCode, header},
    response::{Html, IntoResponse, Response},
    routing::get,
};
use serde::Deserialize;
use sockerr_common::FindingKind;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::collector::{Collector, Unanswered};
use crate::{
    export::channel::{self, LIMIT_MAX, Scrape, Setup},
    pipeline::table::{Filter, Since},
};

/// Entries of a `/findings` without `?limit=`.
const LIMIT_DEFAULT: u32 = 1000;

/// `/findings` responses being written at once; another waits
/// [`FINDINGS_WAIT`] for its turn, then gets 503. Each costs its order in
/// the collector (up to 160 KiB at `LIMIT_MAX`) and a chunk or two in the
/// server's buffers. The collector holds it to the same bound.
pub const FINDINGS_IN_FLIGHT: usize = 32;

const FINDINGS_WAIT: Duration = Duration::from_secs(1);

/// How long `/healthz` waits for the collector before saying it does not
/// answer: under the kubelet's usual probe timeout (3 s in the DaemonSet).
const HEALTH_WAIT: Duration = Duration::from_secs(2);

#[derive(Clone)]
struct Endpoints {
    collector: Arc<Collector>,
    findings_in_flight: Arc<Semaphore>,
    /// `--web.max-requests` (None: no limit).
    scrapes: Option<(Arc<Semaphore>, u32)>,
}

pub fn router(collector: Arc<Collector>, setup: &Setup) -> Router {
    let telemetry_path = &setup.telemetry_path;
    let landing = format!(
        "<html><head><title>sockerr</title></head><body><h1>sockerr</h1>\
         <p><a href=\"{telemetry_path}\">Metrics</a> · <a href=\"/findings\">Findings</a> · \
         <a href=\"/healthz\">Health</a></p></body></html>"
    );
    Router::new()
        .route(telemetry_path, get(metrics))
        .route("/findings", get(findings))
        .route("/healthz", get(health))
        .route("/", get(move || async move { Html(landing) }))
        .with_state(Endpoints {
            collector,
            findings_in_flight: Arc::new(Semaphore::new(FINDINGS_IN_FLIGHT)),
            scrapes: (setup.max_requests > 0).then(|| {
                (
                    Arc::new(Semaphore::new(setup.max_requests as usize)),
                    setup.max_requests,
                )
            }),
        })
}

/// A scrape being answered: counted in flight until it is dropped (the
/// client may go away first), then by how it was answered.
struct Scraping {
    collector: Arc<Collector>,
    answered: Scrape,
    _permit: Option<OwnedSemaphorePermit>,
}

impl Drop for Scraping {
    fn drop(&mut self) {
        let answered = self.answered;
        self.collector.count(|s| {
            s.scrapes_in_flight -= 1;
            s.scrapes[answered as usize] += 1;
        });
    }
}

async fn metrics(Extract(endpoints): Extract<Endpoints>) -> Response {
    let collector = endpoints.collector;
    let permit = match &endpoints.scrapes {
        None => None,
        Some((scrapes, max)) => match scrapes.clone().try_acquire_owned() {
            Ok(permit) => Some(permit),
            Err(_) => {
                collector.count(|s| s.scrapes[Scrape::Refused as usize] += 1);
                return (
                    StatusCode::SERVICE_UNAVAILABLE,
                    [(header::RETRY_AFTER, HeaderValue::from_static("1"))],
                    format!(
                        "Limit of concurrent requests reached ({max}, --web.max-requests), try \
                         again later.\n"
                    ),
                )
                    .into_response();
            }
        },
    };
    collector.count(|s| s.scrapes_in_flight += 1);
    let mut scraping = Scraping {
        collector: collector.clone(),
        answered: Scrape::Failed,
        _permit: permit,
    };
    match collector.metrics().await {
        Ok(body) => {
            scraping.answered = Scrape::Ok;
            ([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], body).into_response()
        }
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("rendering metrics: {e}\n"),
        )
            .into_response(),
    }
}

async fn health(Extract(endpoints): Extract<Endpoints>) -> Response {
    match tokio::time::timeout(HEALTH_WAIT, endpoints.collector.health()).await {
        Ok(true) => "ok\n".into_response(),
        _ => (
            StatusCode::SERVICE_UNAVAILABLE,
            "the collector does not answer\n",
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
    limit: Option<u32>,
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

fn unavailable(why: &str) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(header::RETRY_AFTER, HeaderValue::from_static("1"))],
        format!("{why}; retry\n"),
    )
        .into_response()
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
        return unavailable(&format!(
            "{FINDINGS_IN_FLIGHT} /findings responses are being written"
        ));
    };
    let filter = q.filter();
    // No comm, namespace or pod is that long (15 bytes, 253 characters):
    // nothing to ask for.
    if !channel::filter_fits(&filter) {
        return ([(header::CONTENT_TYPE, "application/json")], "[]").into_response();
    }
    match endpoints.collector.findings(filter, limit, permit).await {
        Ok(body) => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            Body::new(body),
        )
            .into_response(),
        Err(Unanswered::Busy) => unavailable(&format!(
            "{FINDINGS_IN_FLIGHT} /findings responses are being written"
        )),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("reading findings: {e}\n"),
        )
            .into_response(),
    }
}
