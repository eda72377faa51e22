//! HTTP endpoints: metrics, findings, health.

use axum::{
    Json, Router,
    extract::{Query, State as Extract},
    http::{StatusCode, header},
    response::{Html, IntoResponse, Response},
    routing::get,
};
use serde::Deserialize;
use sockerr_common::FindingKind;

use crate::{
    export::state::State,
    pipeline::table::{Filter, Since},
};

const LIMIT_DEFAULT: usize = 1000;

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
        .with_state(state)
}

async fn metrics(Extract(state): Extract<State>) -> Response {
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
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
    Extract(state): Extract<State>,
    query: Result<Query<FindingsQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    match query {
        Ok(Query(q)) => {
            let limit = q.limit.unwrap_or(LIMIT_DEFAULT);
            Json(state.findings_json(&q.filter(), limit)).into_response()
        }
        Err(e) => (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    }
}
