//! The admin HTTP server: `/` (the live status page), `/metrics` (every
//! metric of the process, OpenMetrics text), `/status` (JSON),
//! `/status/history` (the last minutes, for the page's charts),
//! `/log?from=SEQ&limit=N` (JSON envelopes, one per line; how `dbmux tail`
//! reads the log while dbmux holds its lock) and
//! `POST /replicas/NAME/resume?table=DB.TABLE` (how `dbmux resume-table` lifts
//! a quarantine while dbmux runs) and `POST /replicas/NAME/snapshot[?table=DB.TABLE]`
//! (how `dbmux snapshot` asks for a re-snapshot while dbmux runs).

use crate::log::AnyLog;
use crate::status::StatusBoard;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use pipeline::log::{Log, LogError, LogReader};
use pipeline::metrics::PipelineMetrics;
use pipeline::replica::ReplicaBoard;
use pipeline::runtime::ResumeRequest;
use pipeline::schema::TableId;
use prometheus_client::registry::Registry;
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Most events one `/log` request returns.
pub const MAX_LOG_PAGE: usize = 10_000;

/// OpenMetrics text, which Prometheus asks for first.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The appliers as the admin server sees them.
#[derive(Clone, Default)]
pub struct Pipeline {
    pub board: ReplicaBoard,
    /// Where to send a replica's resume requests.
    pub resume: Arc<HashMap<String, tokio::sync::mpsc::Sender<ResumeRequest>>>,
    /// Wakes the snapshot coordinator when a request was stored; `None` when
    /// this process runs no snapshot coordinator (no capture here).
    pub snapshot_wake: Option<Arc<tokio::sync::Notify>>,
    /// The configured replicas a snapshot may be requested for (all of the
    /// configuration's, also in `dbmux capture`, which applies to none).
    pub snapshot_replicas: Vec<String>,
}

#[derive(Clone)]
struct AppState {
    log: AnyLog,
    metrics: PipelineMetrics,
    registry: Arc<Registry>,
    board: Arc<StatusBoard>,
    pipeline: Pipeline,
}

#[derive(Deserialize)]
struct ResumeQuery {
    table: String,
}

#[derive(Deserialize)]
struct SnapshotQuery {
    table: Option<String>,
    /// Start the replica over: recreate and reload every captured table and
    /// move its offset to the run's first event (for a replica that needs a
    /// snapshot because the log no longer has its next `seq`). Implied when
    /// this process sees the replica in `needs_snapshot`.
    start_over: Option<bool>,
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
    board: Arc<StatusBoard>,
    pipeline: Pipeline,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let state = AppState {
        log,
        metrics,
        registry,
        board,
        pipeline,
    };
    let app = Router::new()
        .route("/", get(page))
        .route("/metrics", get(metrics_page))
        .route("/status", get(status))
        .route("/status/history", get(history))
        .route("/log", get(read_log))
        .route("/replicas/{name}/resume", post(resume_table))
        .route("/replicas/{name}/snapshot", post(snapshot))
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
    // Lag is computed now, from the log's head and each replica's position, so
    // it grows while a replica is down.
    pipeline::runtime::refresh_lag(&s.metrics, &s.log, &s.pipeline.board).await;
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &s.registry) {
        return (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response();
    }
    ([(header::CONTENT_TYPE, OPENMETRICS)], out).into_response()
}

async fn status(State(s): State<AppState>) -> Response {
    // The embedded log answers from local storage (off the async workers);
    // Kafka from the brokers.
    pipeline::runtime::refresh_lag(&s.metrics, &s.log, &s.pipeline.board).await;
    let body = s.board.status(&s.log, &s.metrics, &s.pipeline.board).await;
    axum::Json(body).into_response()
}

async fn history(State(s): State<AppState>) -> Response {
    axum::Json(s.board.history()).into_response()
}

/// Lifts a table's quarantine on one replica: the applier re-applies the
/// table's skipped events and answers when done.
async fn resume_table(
    State(s): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<ResumeQuery>,
) -> Response {
    let Some((db, table)) = q.table.split_once('.') else {
        return (StatusCode::BAD_REQUEST, "table must be DB.TABLE\n").into_response();
    };
    let Some(tx) = s.pipeline.resume.get(&name) else {
        return (StatusCode::NOT_FOUND, format!("no replica named {name:?}\n")).into_response();
    };
    let (reply, answer) = tokio::sync::oneshot::channel();
    let req = ResumeRequest {
        table: TableId::new(db, table),
        reply,
    };
    if tx.send(req).await.is_err() {
        return (
            StatusCode::CONFLICT,
            format!("replica {name} is stopped; see /status\n"),
        )
            .into_response();
    }
    match answer.await {
        Ok(Ok(msg)) => (StatusCode::OK, format!("{msg}\n")).into_response(),
        Ok(Err(msg)) => (StatusCode::CONFLICT, format!("{msg}\n")).into_response(),
        Err(_) => (
            StatusCode::CONFLICT,
            format!("replica {name} stopped before answering; see /status\n"),
        )
            .into_response(),
    }
}

/// Asks capture to re-snapshot one table (or every table) for one replica:
/// the request is stored in the log and begins at the coordinator's next look.
/// Only a process that runs capture (with a MySQL source) can take it.
async fn snapshot(
    State(s): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<SnapshotQuery>,
) -> Response {
    if !s.pipeline.snapshot_replicas.contains(&name) {
        return (StatusCode::NOT_FOUND, format!("no replica named {name:?}\n")).into_response();
    }
    let Some(wake) = &s.pipeline.snapshot_wake else {
        return (
            StatusCode::CONFLICT,
            "this process does not run capture: ask the admin server of the process \
             that does (`dbmux run` or `dbmux capture`)\n",
        )
            .into_response();
    };
    let tables = match &q.table {
        Some(t) => match t.split_once('.') {
            Some((db, table)) if !db.is_empty() && !table.is_empty() => vec![TableId::new(db, table)],
            _ => return (StatusCode::BAD_REQUEST, "table must be DB.TABLE\n").into_response(),
        },
        None => Vec::new(),
    };
    let needs = s
        .pipeline
        .board
        .get(&name)
        .is_some_and(|r| matches!(r.state, pipeline::replica::ReplicaState::NeedsSnapshot { .. }));
    let start_over = q.start_over.unwrap_or(false) || needs;
    if start_over && !tables.is_empty() {
        return (
            StatusCode::BAD_REQUEST,
            format!(
                "replica {name} must start over (every table recreated and reloaded): a single table cannot be \
                 requested for it; leave out `table`\n"
            ),
        )
            .into_response();
    }
    match pipeline::snapshot::request(&s.log, &name, &tables, start_over).await {
        Ok(id) => {
            wake.notify_one();
            let what = q.table.as_deref().unwrap_or("every captured table");
            let how = if start_over {
                " (the replica starts over from it)"
            } else {
                ""
            };
            (
                StatusCode::OK,
                format!("snapshot of {what} for replica {name} requested ({id}){how}; progress on /status\n"),
            )
                .into_response()
        }
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
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
                body.push_str(env.as_str());
                body.push('\n');
            }
            ([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response()
        }
        Err(e @ LogError::Truncated { .. }) => (StatusCode::GONE, e.to_string()).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}
