//! Admin HTTP: `/metrics` (Prometheus text format), `/healthz`, `/readyz`, and the queue API the
//! `dimegate queue` commands use while the server holds the store.
//!
//! | method | path | answer |
//! |---|---|---|
//! | GET | `/metrics` | Prometheus exposition |
//! | GET | `/healthz` | 200 while the process runs |
//! | GET | `/readyz` | 200 while listeners accept and the store is open; 503 during shutdown |
//! | GET | `/api/queue?limit=N&sender=S&domain=D&state=K&min_age_secs=N` | JSON array of message summaries |
//! | GET | `/api/queue/{queue_id}` | JSON message record, 404 if absent |
//! | DELETE | `/api/queue/{queue_id}` | 204, or 404 if absent |

use crate::envelope::QueueId;
use crate::store::{ListFilter, Store};
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use prometheus_client::registry::Registry;
use serde::Deserialize;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// What the admin endpoints read.
pub struct AdminState {
    /// The metric registry to encode.
    pub registry: Registry,
    /// The queue.
    pub store: Store,
    /// Refreshes gauges (queue size) just before `/metrics` is encoded.
    pub metrics: crate::metrics::Metrics,
    /// Cleared when shutdown begins.
    pub ready: AtomicBool,
}

/// Builds the router.
pub fn router(state: Arc<AdminState>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/api/queue", get(queue_list))
        .route(
            "/api/queue/{queue_id}",
            get(queue_show).delete(queue_delete),
        )
        .with_state(state)
}

async fn metrics(State(state): State<Arc<AdminState>>) -> Response {
    if let Ok(n) = state.store.count() {
        state
            .metrics
            .queue_messages
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &state.registry) {
        Ok(()) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

async fn readyz(State(state): State<Arc<AdminState>>) -> Response {
    if state.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
    }
}

#[derive(Deserialize)]
struct ListQuery {
    limit: Option<usize>,
    sender: Option<String>,
    domain: Option<String>,
    state: Option<crate::store::StateKind>,
    min_age_secs: Option<u64>,
}

fn store_error(e: impl std::fmt::Display) -> Response {
    (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response()
}

async fn queue_list(State(state): State<Arc<AdminState>>, Query(q): Query<ListQuery>) -> Response {
    let filter = ListFilter {
        sender: q.sender,
        recipient_domain: q.domain,
        state: q.state,
        min_age: q.min_age_secs.map(std::time::Duration::from_secs),
    };
    let store = state.store.clone();
    match tokio::task::spawn_blocking(move || store.list(&filter, q.limit)).await {
        Ok(Ok(list)) => Json(list).into_response(),
        Ok(Err(e)) => store_error(e),
        Err(e) => store_error(e),
    }
}

fn parse_id(s: &str) -> Result<QueueId, Response> {
    s.parse().map_err(|e: crate::envelope::BadQueueId| {
        (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response()
    })
}

async fn queue_show(State(state): State<Arc<AdminState>>, Path(id): Path<String>) -> Response {
    let id = match parse_id(&id) {
        Ok(id) => id,
        Err(r) => return r,
    };
    let store = state.store.clone();
    match tokio::task::spawn_blocking(move || store.get(id)).await {
        Ok(Ok(Some(record))) => Json(record).into_response(),
        Ok(Ok(None)) => (StatusCode::NOT_FOUND, format!("no message {id}\n")).into_response(),
        Ok(Err(e)) => store_error(e),
        Err(e) => store_error(e),
    }
}

async fn queue_delete(State(state): State<Arc<AdminState>>, Path(id): Path<String>) -> Response {
    let id = match parse_id(&id) {
        Ok(id) => id,
        Err(r) => return r,
    };
    let store = state.store.clone();
    match tokio::task::spawn_blocking(move || store.delete(id)).await {
        Ok(Ok(true)) => {
            tracing::info!(queue_id = %id, "deleted by admin");
            StatusCode::NO_CONTENT.into_response()
        }
        Ok(Ok(false)) => (StatusCode::NOT_FOUND, format!("no message {id}\n")).into_response(),
        Ok(Err(e)) => store_error(e),
        Err(e) => store_error(e),
    }
}
