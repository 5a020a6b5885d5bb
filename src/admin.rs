//! The admin HTTP server: `/metrics` (Prometheus text), `/status` (JSON) and
//! `/log?from=SEQ&limit=N` (JSON envelopes, one per line; how `dbmux tail`
//! reads the log while dbmux holds its lock).

use crate::log::AnyLog;
use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use pipeline::log::{Log, LogError, LogReader};
use pipeline::metrics::PipelineMetrics;
use prometheus_client::registry::Registry;
use serde::Deserialize;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Most events one `/log` request returns.
pub const MAX_LOG_PAGE: usize = 10_000;

/// Renders more Prometheus text for `/metrics`.
pub type MetricsFn = Box<dyn Fn() -> String + Send + Sync>;

#[derive(Clone)]
struct AppState {
    extra: Arc<Vec<MetricsFn>>,
    log: AnyLog,
    metrics: PipelineMetrics,
    registry: Arc<Registry>,
    replicas: Arc<Vec<String>>,
}

#[derive(Deserialize)]
struct LogQuery {
    from: Option<u64>,
    limit: Option<usize>,
}

pub async fn serve(
    listener: tokio::net::TcpListener,
    log: AnyLog,
    metrics: PipelineMetrics,
    registry: Arc<Registry>,
    extra: Vec<MetricsFn>,
    replicas: Vec<String>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let state = AppState {
        extra: Arc::new(extra),
        log,
        metrics,
        registry,
        replicas: Arc::new(replicas),
    };
    let app = Router::new()
        .route("/metrics", get(metrics_page))
        .route("/status", get(status))
        .route("/log", get(read_log))
        .with_state(state);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

async fn metrics_page(State(s): State<AppState>) -> Response {
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &s.registry) {
        return (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response();
    }
    // The proxy renders its own text; serve everything as the classic text
    // format (which Prometheus reads either way), so drop OpenMetrics' `# EOF`.
    if let Some(body) = out.strip_suffix("# EOF\n") {
        out.truncate(body.len());
    }
    for render in s.extra.iter() {
        out.push_str(&render());
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        out,
    )
        .into_response()
}

async fn status(State(s): State<AppState>) -> Response {
    let mut replicas = serde_json::Map::new();
    for r in s.replicas.iter() {
        replicas.insert(
            r.clone(),
            serde_json::json!({ "applied_seq": s.log.acked(r).await.ok().flatten() }),
        );
    }
    // The embedded log answers from local storage; Kafka from the brokers
    // (an unreachable broker leaves these null rather than failing /status).
    let last = s.log.last().await.ok().flatten();
    let body = serde_json::json!({
        "capture": { "connected": s.metrics.capture_connected.get() == 1 },
        "log": {
            "kind": if s.log.is_embedded() { "embedded" } else { "kafka" },
            "first_seq": s.log.first_seq().await.ok().flatten(),
            "last_seq": s.log.last_seq(),
            "resume_position": last.map(|(_, p)| p.to_string()),
        },
        "replicas": replicas,
    });
    axum::Json(body).into_response()
}

async fn read_log(State(s): State<AppState>, Query(q): Query<LogQuery>) -> Response {
    let from = q.from.unwrap_or(1).max(1);
    let limit = q.limit.unwrap_or(1000).clamp(1, MAX_LOG_PAGE);
    let res = match s.log.reader("admin").await {
        Ok(mut reader) => reader.read(from, limit).await,
        Err(e) => Err(e),
    };
    match res {
        Ok(txns) => {
            let mut body = String::new();
            for env in txns
                .iter()
                .flat_map(pipeline::envelope::transaction_envelopes)
                .take(limit)
            {
                body.push_str(&env.to_string());
                body.push('\n');
            }
            ([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response()
        }
        Err(e @ LogError::Truncated { .. }) => (StatusCode::GONE, e.to_string()).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}
