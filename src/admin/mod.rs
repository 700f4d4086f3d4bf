//! Admin HTTP: `/metrics` (Prometheus text format), `/healthz`, `/readyz`, and the queue API the
//! `dimegate queue` commands use while the server holds the store.
//!
//! | method | path | answer |
//! |---|---|---|
//! | GET | `/metrics` | Prometheus exposition |
//! | GET | `/healthz` | 200 while the process runs |
//! | GET | `/readyz` | 200 while listeners accept and the store is open; 503 while draining or shutting down |
//! | GET | `/api/queue?limit=N&sender=S&domain=D&state=K&min_age_secs=N` | JSON array of message summaries |
//! | GET | `/api/queue/{queue_id}` | JSON message record, 404 if absent |
//! | DELETE | `/api/queue/{queue_id}` | 204, or 404 if absent |
//! | POST | `/api/queue/{queue_id}/{retry,hold,release,bounce}` | JSON record after the action, 404 if absent |
//! | POST | `/api/queue/retry?domain=D` | retry every message with a recipient in D now; JSON lines of progress, the last with `"done": true` and the count |
//! | POST | `/api/tlsrpt/send` | send the TLS-RPT reports counted so far now (RFC 8460; also run daily at 00:00 UTC); JSON summary |
//! | POST | `/api/drain?peer=HOST:PORT` | stop ingress (421 4.3.2), make everything due now, and with `peer` hand every recipient to that SMTP peer; JSON |

use crate::envelope::QueueId;
use crate::store::{ListFilter, Store};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
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
    /// The scheduler, for bounces (which queue DSNs) and for waking it after a retry.
    pub runner: Arc<crate::runner::QueueRunner>,
    /// Refreshes gauges (queue size) just before `/metrics` is encoded.
    pub metrics: crate::metrics::Metrics,
    /// Cleared when shutdown begins.
    pub ready: AtomicBool,
    /// Where the queue lives, for the disk gauges.
    pub data_dir: std::path::PathBuf,
    /// SMTP ingress, whose `draining` flag `/api/drain` sets.
    pub ingress: Arc<crate::smtp::server::Ingress>,
    /// TLS-RPT reports, which `/api/tlsrpt/send` sends now.
    pub tls_reporter: Option<Arc<crate::tlsrpt::TlsReporter>>,
}

/// Builds the router.
pub fn router(state: Arc<AdminState>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/api/queue", get(queue_list))
        .route("/api/queue/retry", post(queue_flush))
        .route(
            "/api/queue/{queue_id}",
            get(queue_show).delete(queue_delete),
        )
        .route("/api/queue/{queue_id}/{action}", post(queue_action))
        .route("/api/drain", post(drain))
        .route("/api/tlsrpt/send", post(tlsrpt_send))
        .with_state(state)
}

async fn metrics(State(state): State<Arc<AdminState>>, headers: HeaderMap) -> Response {
    let store = state.store.clone();
    let metrics = state.metrics.clone();
    // Queue gauges: O(log n) in the queue's size, the store keeps the counts as it writes.
    let data_dir = state.data_dir.clone();
    let _ = tokio::task::spawn_blocking(move || {
        refresh_queue_gauges(&store, &metrics);
        refresh_disk_gauges(&data_dir, &metrics);
    })
    .await;
    let mut body = String::new();
    if prometheus_client::encoding::text::encode(&mut body, &state.registry).is_err() {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    let wants_openmetrics = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/openmetrics-text"));
    if wants_openmetrics {
        let ct = "application/openmetrics-text; version=1.0.0; charset=utf-8";
        ([(header::CONTENT_TYPE, ct)], body).into_response()
    } else {
        let ct = "text/plain; version=0.0.4; charset=utf-8";
        (
            [(header::CONTENT_TYPE, ct)],
            openmetrics_to_prometheus(&body),
        )
            .into_response()
    }
}

fn refresh_queue_gauges(store: &Store, metrics: &crate::metrics::Metrics) {
    match store.stats() {
        Ok(stats) => metrics.set_queue_gauges(&stats, crate::time::UnixTime::now()),
        Err(e) => tracing::warn!(error = %e, "reading queue gauges"),
    }
}

/// Free and total bytes of the file system holding `path` (statvfs; free as available to an
/// unprivileged user, which is what the service user gets).
fn disk_space(path: &std::path::Path) -> Option<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c` is a valid NUL-terminated path and `st` is written by statvfs before use.
    let rc = unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: statvfs returned 0, so it filled `st`.
    let st = unsafe { st.assume_init() };
    Some((
        st.f_bavail.saturating_mul(st.f_frsize),
        st.f_blocks.saturating_mul(st.f_frsize),
    ))
}

fn refresh_disk_gauges(data_dir: &std::path::Path, metrics: &crate::metrics::Metrics) {
    if let Some((free, total)) = disk_space(data_dir) {
        let g = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        metrics.data_dir_free_bytes.set(g(free));
        metrics.data_dir_size_bytes.set(g(total));
    }
}

#[derive(Deserialize)]
struct DrainQuery {
    peer: Option<String>,
}

/// Stops ingress and empties the queue: the SMTP listeners answer 421 4.3.2 from now on,
/// `/readyz` says 503 (a load balancer stops sending), every recipient is made due now, and
/// with `peer` the runner hands every recipient to that SMTP peer instead of its own route.
async fn drain(State(state): State<Arc<AdminState>>, Query(q): Query<DrainQuery>) -> Response {
    let peer = match q
        .peer
        .as_deref()
        .map(|p| crate::deliver::NextHop::smarthost(p, crate::deliver::TlsPolicy::Opportunistic))
    {
        None => None,
        Some(Ok(hop)) => Some(hop),
        Some(Err(e)) => return (StatusCode::BAD_REQUEST, format!("--peer: {e}\n")).into_response(),
    };
    state.ingress.draining.store(true, Ordering::Relaxed);
    state.metrics.draining.set(1);
    if let Some(hop) = peer {
        tracing::warn!(peer = ?hop, "draining: ingress stopped; handing the queue to a peer");
        state.runner.hand_off_to(hop);
    } else {
        tracing::warn!("draining: ingress stopped; delivering the queue");
    }
    let store = state.store.clone();
    let retried = tokio::task::spawn_blocking(move || {
        let now = crate::time::UnixTime::now();
        let mut n = 0u64;
        for m in store.list(&ListFilter::default(), None)? {
            if store
                .apply(m.queue_id, &crate::store::AdminAction::Retry, now)?
                .is_some()
            {
                n += 1;
            }
        }
        Ok::<_, crate::store::StoreError>(n)
    })
    .await;
    state.runner.wake();
    match retried {
        Ok(Ok(n)) => Json(serde_json::json!({ "draining": true, "retried": n, "peer": q.peer }))
            .into_response(),
        Ok(Err(e)) => store_error(e),
        Err(e) => store_error(e),
    }
}

async fn queue_action(
    State(state): State<Arc<AdminState>>,
    Path((id, action)): Path<(String, String)>,
) -> Response {
    use crate::store::AdminAction;
    let id = match parse_id(&id) {
        Ok(id) => id,
        Err(r) => return r.into_response(),
    };
    let action = match action.as_str() {
        "retry" => AdminAction::Retry,
        "hold" => AdminAction::Hold,
        "release" => AdminAction::Release,
        "bounce" => {
            return match state
                .runner
                .bounce(id, "bounced by the administrator")
                .await
            {
                Ok(true) => {
                    tracing::info!(queue_id = %id, "bounced by admin");
                    (StatusCode::OK, "{}").into_response()
                }
                Ok(false) => (StatusCode::NOT_FOUND, format!("no message {id}\n")).into_response(),
                Err(e) => store_error(e),
            };
        }
        other => return (StatusCode::NOT_FOUND, format!("no action {other:?}\n")).into_response(),
    };
    let store = state.store.clone();
    let now = crate::time::UnixTime::now();
    let name = format!("{action:?}");
    match tokio::task::spawn_blocking(move || store.apply(id, &action, now)).await {
        Ok(Ok(Some(record))) => {
            tracing::info!(queue_id = %id, action = %name, "queue action by admin");
            state.runner.wake();
            Json(record).into_response()
        }
        Ok(Ok(None)) => (StatusCode::NOT_FOUND, format!("no message {id}\n")).into_response(),
        Ok(Err(e)) => store_error(e),
        Err(e) => store_error(e),
    }
}

#[derive(Deserialize)]
struct FlushQuery {
    domain: Option<String>,
}

async fn tlsrpt_send(State(state): State<Arc<AdminState>>) -> Response {
    let Some(reporter) = &state.tls_reporter else {
        return (StatusCode::NOT_FOUND, "TLS-RPT is not enabled\n").into_response();
    };
    let summary = reporter
        .run(&state.store, crate::time::UnixTime::now())
        .await;
    tracing::info!(
        domains = summary.domains.len(),
        mailed = summary.mailed.len(),
        posted = summary.posted.len(),
        "TLS-RPT reports sent by admin"
    );
    state.runner.wake();
    Json(summary).into_response()
}

/// Retries a domain (or everything) in the store's chunks on the blocking pool, answering as it
/// goes: one JSON line per committed chunk (`{"retried": n, "done": false}`), then
/// `{"retried": n, "done": true}` or `{"error": ..., "done": true}`. A million messages take
/// longer than a client's read timeout; the lines keep the connection busy and say how far it
/// got. The run goes on to its end if the client goes away.
async fn queue_flush(
    State(state): State<Arc<AdminState>>,
    Query(q): Query<FlushQuery>,
) -> Response {
    let store = state.store.clone();
    let domain = q.domain.clone();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let line = |v: serde_json::Value| format!("{v}\n");
    let progress_tx = tx.clone();
    let job = tokio::task::spawn_blocking(move || {
        store.retry_domain_with(domain.as_deref(), |n| {
            let _ = progress_tx.send(line(serde_json::json!({ "retried": n, "done": false })));
        })
    });
    tokio::spawn(async move {
        let last = match job.await {
            Ok(Ok(n)) => {
                tracing::info!(domain = ?q.domain, messages = n, "queue flushed by admin");
                state.runner.wake();
                serde_json::json!({ "retried": n, "done": true })
            }
            Ok(Err(e)) => serde_json::json!({ "error": e.to_string(), "done": true }),
            Err(e) => serde_json::json!({ "error": e.to_string(), "done": true }),
        };
        let _ = tx.send(line(last));
    });
    (
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        axum::body::Body::from_stream(Lines(rx)),
    )
        .into_response()
}

/// The lines of a streamed answer, as a body stream.
struct Lines(tokio::sync::mpsc::UnboundedReceiver<String>);

impl futures_core::Stream for Lines {
    type Item = Result<String, std::convert::Infallible>;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.0.poll_recv(cx).map(|line| line.map(Ok))
    }
}

/// Rewrites OpenMetrics text (what prometheus-client writes) into the classic Prometheus text
/// format for clients that did not ask for OpenMetrics (curl, promtool): there a counter's HELP
/// and TYPE lines carry the `_total` name, and there is no `# EOF`.
fn openmetrics_to_prometheus(text: &str) -> String {
    let counters: std::collections::HashSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "].into_iter().find_map(|p| {
            let rest = line.strip_prefix(p)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{p}{name}_total {tail}"))
        });
        out.push_str(meta.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_get_total_names_in_prometheus_text() {
        let om = "# HELP a_b Things.\n# TYPE a_b counter\na_b_total 3\n# HELP g A gauge.\n# TYPE g gauge\ng 1\n# EOF\n";
        assert_eq!(
            openmetrics_to_prometheus(om),
            "# HELP a_b_total Things.\n# TYPE a_b_total counter\na_b_total 3\n# HELP g A gauge.\n# TYPE g gauge\ng 1\n"
        );
    }
}

async fn readyz(State(state): State<Arc<AdminState>>) -> Response {
    if state.ready.load(Ordering::Relaxed) && !state.ingress.draining.load(Ordering::Relaxed) {
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

fn parse_id(s: &str) -> Result<QueueId, (StatusCode, String)> {
    s.parse()
        .map_err(|e: crate::envelope::BadQueueId| (StatusCode::BAD_REQUEST, format!("{e}\n")))
}

async fn queue_show(State(state): State<Arc<AdminState>>, Path(id): Path<String>) -> Response {
    let id = match parse_id(&id) {
        Ok(id) => id,
        Err(r) => return r.into_response(),
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
        Err(r) => return r.into_response(),
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
