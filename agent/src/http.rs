//! HTTP endpoints: metrics, findings, health.

use std::time::Instant;

use axum::{
    Json, Router,
    extract::{Query, State as Extract},
    http::{StatusCode, header},
    response::{Html, IntoResponse, Response},
    routing::get,
};
use serde::Deserialize;
use sockerr_common::FindingKind;

use crate::state::State;

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
    kind: Option<String>,
    limit: Option<usize>,
}

async fn findings(
    Extract(state): Extract<State>,
    query: Result<Query<FindingsQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Query(query) = match query {
        Ok(q) => q,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    };
    let kind = match query.kind.as_deref() {
        None => None,
        Some(name) => match FindingKind::ALL.into_iter().find(|k| k.name() == name) {
            Some(k) => Some(k),
            None => {
                let known: Vec<_> = FindingKind::ALL.iter().map(|k| k.name()).collect();
                return (
                    StatusCode::BAD_REQUEST,
                    format!(
                        "unknown kind {name:?}; expected one of {}\n",
                        known.join(", ")
                    ),
                )
                    .into_response();
            }
        },
    };
    let mut inner = state.lock();
    let views = inner
        .flagged
        .findings(Instant::now(), kind, query.limit.unwrap_or(LIMIT_DEFAULT));
    Json(views).into_response()
}
