//! The admin HTTP server: `/` (the live status page), `/metrics` (every
//! metric of the process, OpenMetrics text), `/status` (JSON),
//! `/status/history` (the last minutes, for the page's charts) and
//! `/log?from=SEQ&limit=N` (JSON envelopes, one per line; how `dbmux tail`
//! reads the log while dbmux holds its lock).

use crate::status::StatusBoard;
use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use pipeline::log::EmbeddedLog;
use pipeline::metrics::PipelineMetrics;
use prometheus_client::registry::Registry;
use serde::Deserialize;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Most events one `/log` request returns.
pub const MAX_LOG_PAGE: usize = 10_000;

/// OpenMetrics text, which Prometheus asks for first.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone)]
struct AppState {
    log: Arc<EmbeddedLog>,
    metrics: PipelineMetrics,
    registry: Arc<Registry>,
    board: Arc<StatusBoard>,
}

#[derive(Deserialize)]
struct LogQuery {
    from: Option<u64>,
    limit: Option<usize>,
}

pub async fn serve(
    listener: tokio::net::TcpListener,
    log: Arc<EmbeddedLog>,
    metrics: PipelineMetrics,
    registry: Arc<Registry>,
    board: Arc<StatusBoard>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let state = AppState {
        log,
        metrics,
        registry,
        board,
    };
    let app = Router::new()
        .route("/", get(page))
        .route("/metrics", get(metrics_page))
        .route("/status", get(status))
        .route("/status/history", get(history))
        .route("/log", get(read_log))
        .with_state(state);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

async fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        crate::status::PAGE,
    )
        .into_response()
}

async fn metrics_page(State(s): State<AppState>) -> Response {
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &s.registry) {
        return (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response();
    }
    ([(header::CONTENT_TYPE, OPENMETRICS)], out).into_response()
}

async fn status(State(s): State<AppState>) -> Response {
    let (board, log, metrics) = (s.board.clone(), s.log.clone(), s.metrics.clone());
    // Reads the log's newest chunk: off the async workers.
    match tokio::task::spawn_blocking(move || board.status(&log, &metrics)).await {
        Ok(body) => axum::Json(body).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn history(State(s): State<AppState>) -> Response {
    axum::Json(s.board.history()).into_response()
}

async fn read_log(State(s): State<AppState>, Query(q): Query<LogQuery>) -> Response {
    let from = q.from.unwrap_or(1).max(1);
    let limit = q.limit.unwrap_or(1000).clamp(1, MAX_LOG_PAGE);
    let log = s.log.clone();
    let res = tokio::task::spawn_blocking(move || log.read(from, limit)).await;
    match res {
        Ok(Ok(events)) => {
            let mut body = String::new();
            for e in events.iter().take(limit.max(1)) {
                body.push_str(&pipeline::envelope::to_envelope(e).to_string());
                body.push('\n');
            }
            ([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response()
        }
        Ok(Err(e @ pipeline::log::LogError::Truncated { .. })) => {
            (StatusCode::GONE, e.to_string()).into_response()
        }
        Ok(Err(e)) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}
