//! `dimegate serve`: opens the store, sets up TLS, binds every listener, and runs until the
//! shutdown future completes; then stops accepting, lets sessions reach a safe point and waits.

use crate::admin::{self, AdminState};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::smtp::pressure::{PressureGauge, PressureProbe};
use crate::smtp::server::{Ingress, run_listener};
use crate::store::Store;
use prometheus_client::registry::Registry;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The data directory could not be created.
    #[error("data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// TLS setup failed.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// The queue could not be opened.
    #[error("queue store: {0}")]
    Store(#[from] crate::store::StoreError),
    /// The DNS resolver could not be set up.
    #[error("DNS resolver: {0}")]
    Resolve(#[from] crate::resolve::ResolveError),
    /// Outbound delivery could not be set up.
    #[error("delivery: {0}")]
    Deliver(#[from] crate::deliver::DeliverError),
    /// A listener could not be bound.
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Which listener.
        what: &'static str,
        /// Why.
        source: std::io::Error,
    },
}

/// How long shutdown waits for sessions beyond their grace (the last `421` writes).
const SHUTDOWN_SLACK: Duration = Duration::from_secs(3);

/// Runs the gateway until `shutdown` completes.
pub async fn serve(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), ServeError> {
    let data_dir = config.data_dir.clone();
    std::fs::create_dir_all(&data_dir).map_err(|source| ServeError::DataDir {
        path: data_dir.clone(),
        source,
    })?;

    let (cert, key) = match &config.tls {
        Some(files) => (files.cert.clone(), files.key.clone()),
        None => {
            if crate::tls::ensure_self_signed(&data_dir, &config.smtp.hostname)? {
                info!(dir = %data_dir.join("tls").display(), "generated a self-signed TLS certificate");
            }
            crate::tls::generated_paths(&data_dir)
        }
    };
    let tls = tokio_rustls::TlsAcceptor::from(crate::tls::server_config(&cert, &key)?);

    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    let store = Store::open(
        &data_dir.join("queue.redb"),
        Some(metrics.store_commit_seconds.clone()),
    )?;
    let queued_at_start = store.count()?;
    metrics
        .queue_messages
        .set(i64::try_from(queued_at_start).unwrap_or(i64::MAX));

    // Bind everything before serving anything: a bad address fails the start, not later.
    let mut listeners = Vec::new();
    for &addr in &config.smtp.listen {
        let l = TcpListener::bind(addr)
            .await
            .map_err(|source| ServeError::Bind {
                addr,
                what: "smtp",
                source,
            })?;
        listeners.push((l, false));
    }
    for &addr in &config.smtp.tls_listen {
        let l = TcpListener::bind(addr)
            .await
            .map_err(|source| ServeError::Bind {
                addr,
                what: "smtp tls",
                source,
            })?;
        listeners.push((l, true));
    }
    let admin_listener = TcpListener::bind(config.admin.listen)
        .await
        .map_err(|source| ServeError::Bind {
            addr: config.admin.listen,
            what: "admin http",
            source,
        })?;

    let queued = Arc::new(tokio::sync::Notify::new());
    let pressure = Arc::new(PressureGauge::new(config.queue.clone()));
    let probe = PressureProbe {
        store: store.clone(),
        data_dir: data_dir.clone(),
    };
    probe.refresh(&pressure).await;
    let ingress = Arc::new(Ingress::new(
        &config,
        Some(tls),
        store.clone(),
        metrics.clone(),
        Arc::clone(&queued),
        Arc::clone(&pressure),
    ));
    let resolver = crate::resolve::Resolver::new(&config.dns)?;
    let deliverer = crate::deliver::Deliverer::new(config.delivery.clone(), resolver)?;
    deliverer.register_metrics(&mut registry);
    let runner = Arc::new(crate::queue::QueueRunner::new(
        store.clone(),
        deliverer,
        crate::queue::Scheduler::new(config.queue.clone()),
        &config.domains,
        crate::queue::Hops {
            backend: config.backend.as_ref().map(|b| b.hop.clone()),
            smarthost: config.smarthost.clone(),
        },
        config.smtp.hostname.clone(),
        metrics.clone(),
        queued,
        config.queue_poll_interval,
        config.delivery.max_connections,
    ));
    match &config.backend {
        Some(b) => info!(backend = ?b.hop, "mail for served domains goes to the backend"),
        None => warn!("no [backend] address: mail for served domains stays queued"),
    }
    let token = CancellationToken::new();
    let tracker = TaskTracker::new();
    let queue_task = tokio::spawn(Arc::clone(&runner).run(token.clone()));
    let pressure_task = tokio::spawn(probe.run(pressure, token.clone()));

    info!(
        domains = ?config.domains,
        data_dir = %data_dir.display(),
        queued = queued_at_start,
        hostname = %config.smtp.hostname,
        "dimegate starting"
    );
    for (l, implicit_tls) in listeners {
        if let Ok(addr) = l.local_addr() {
            info!(%addr, tls = if implicit_tls { "implicit" } else { "starttls" }, "SMTP listening");
        }
        tracker.spawn(run_listener(
            l,
            implicit_tls,
            Arc::clone(&ingress),
            token.clone(),
            tracker.clone(),
        ));
    }

    let admin_state = Arc::new(AdminState {
        registry,
        runner: Arc::clone(&runner),
        store: store.clone(),
        metrics: metrics.clone(),
        ready: true.into(),
    });
    if let Ok(addr) = admin_listener.local_addr() {
        info!(%addr, "admin HTTP listening (/metrics, /healthz, /readyz, /api/queue)");
    }
    let admin_ready = Arc::clone(&admin_state);
    // The admin server outlives the SMTP sessions so that /readyz can say 503 while they drain.
    let admin_token = CancellationToken::new();
    let admin_stop = admin_token.clone();
    let admin_task = tokio::spawn(async move {
        let app = admin::router(admin_state);
        if let Err(e) = axum::serve(admin_listener, app)
            .with_graceful_shutdown(async move { admin_token.cancelled().await })
            .await
        {
            warn!(error = %e, "admin server stopped");
        }
    });

    shutdown.await;
    info!("shutting down: closing listeners, waiting for sessions");
    admin_ready.ready.store(false, Ordering::Relaxed);
    tracker.close();
    token.cancel();
    // Each session closes itself at its grace deadline; this only bounds the last writes.
    let wait = config.smtp.shutdown_grace + SHUTDOWN_SLACK;
    if tokio::time::timeout(wait, tracker.wait()).await.is_err() {
        warn!("sessions still open after {wait:?}; stopping anyway");
    }
    let _ = pressure_task.await;
    let _ = tokio::time::timeout(Duration::from_secs(35), queue_task).await;
    admin_stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(2), admin_task).await;
    info!("stopped");
    Ok(())
}
