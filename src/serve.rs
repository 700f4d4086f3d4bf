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
    /// A served domain's DIME identity could not be loaded or created.
    #[error("DIME identity: {0}")]
    Identity(#[from] crate::identity::IdentityError),
    /// `[dmtp] ca_file` could not be read.
    #[error("dmtp.ca_file: {0}")]
    DmtpCa(String),
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

/// The DMTP certificate and key: the configured pair, or one generated (RSA, self-signed for the
/// `[dmtp] dx` names) under the data directory on first use.
pub fn dmtp_certificate(config: &Config) -> Result<(PathBuf, PathBuf), crate::tls::TlsError> {
    match &config.dmtp.tls {
        Some(files) => Ok((files.cert.clone(), files.key.clone())),
        None => {
            if crate::tls::ensure_dmtp_certificate(&config.data_dir, &config.dmtp.dx)? {
                info!(dir = %config.data_dir.join("dmtp-tls").display(), "generated a self-signed DMTP certificate (RSA)");
            }
            Ok(crate::tls::dmtp_generated_paths(&config.data_dir))
        }
    }
}

/// The DX finder and signet resolver as `[dmtp]` and `[dns]` configure it (the server's, and
/// the `dmtp`/`lookup` commands').
pub fn discovery(
    config: &Config,
    resolver: &crate::resolve::Resolver,
    metrics: crate::discovery::DiscoveryMetrics,
) -> Result<crate::discovery::Discovery, ServeError> {
    let roots = crate::dmtp::trust::root_store(config.dmtp.ca_file.as_deref())
        .map_err(ServeError::DmtpCa)?;
    let mut settings = crate::discovery::DiscoverySettings::new(Arc::new(roots));
    settings.connect_port = config.dmtp.connect_port;
    settings.dual_mode_port = config.dmtp.dual_mode_port;
    settings.statics = config.dmtp.statics.clone();
    settings.pool = config.dmtp.pool;
    settings.max_sessions_per_destination = config.delivery.max_connections_per_hop;
    let ehlo = config
        .domains
        .first()
        .and_then(|d| crate::dmtp::codec::Domain::parse(d).ok())
        .ok_or_else(|| ServeError::DmtpCa("no served domain to name in EHLO".into()))?;
    Ok(crate::discovery::Discovery::new(
        resolver.clone(),
        settings,
        ehlo,
        metrics,
    ))
}

/// What the DMTP listener needs: identities, the signet resolver, the store, limits.
fn dmtp_context(
    config: &Config,
    orgs: Vec<crate::identity::OrgIdentity>,
    resolver: &crate::resolve::Resolver,
    store: Store,
    pressure: Arc<PressureGauge>,
    queued: Arc<tokio::sync::Notify>,
    registry: &mut Registry,
) -> Result<crate::dmtp::listener::DmtpContext, ServeError> {
    let discovery = discovery(
        config,
        resolver,
        crate::discovery::DiscoveryMetrics::register(registry),
    )?;
    Ok(crate::dmtp::listener::DmtpContext {
        orgs,
        keystore: crate::identity::Keystore::new(&config.data_dir, &config.domains),
        // The store owns the signet cache (DESIGN.md): written through, warmed here.
        discovery: Arc::new(discovery.with_store(store.clone())),
        store,
        hostname: config.smtp.hostname.clone(),
        limits: crate::dmtp::server::Limits {
            max_message_size: config.dmtp.max_message_size,
            ..crate::dmtp::server::Limits::default()
        },
        pressure,
        queued,
    })
}

/// The runner's DIME side, sharing the DMTP listener's identities and signet resolver.
fn dime_transports(
    config: &Config,
    dmtp: &crate::dmtp::listener::DmtpContext,
    smtp: Arc<dyn crate::runner::Transport<crate::deliver::NextHop>>,
    resolver: &crate::resolve::Resolver,
) -> crate::runner::DimeTransports {
    let orgs = Arc::new(dmtp.orgs.clone());
    let padding = crate::bridge::Buckets::default();
    let bridge = Arc::new(
        crate::runner::BridgeTransport::new(
            smtp,
            Arc::clone(&dmtp.discovery),
            dmtp.keystore.clone(),
            Arc::clone(&orgs),
            config.smtp.hostname.clone(),
            padding,
        )
        .with_sealed_dsns(dmtp.store.clone(), config.queue.dsn_max_full_bytes),
    );
    crate::runner::DimeTransports {
        dmtp: Box::new(crate::runner::DmtpTransport::new(
            Arc::clone(&dmtp.discovery),
            dmtp.keystore.clone(),
            Arc::clone(&orgs),
            padding,
            crate::runner::SenderChecks::new(resolver, config.smtp.hostname.clone()),
            dmtp.store.clone(),
        )),
        reports: Box::new(Arc::clone(&bridge)),
        bridge: Box::new(bridge),
        directory: Box::new(crate::runner::DimeDirectory::new(
            Arc::clone(&dmtp.discovery),
            dmtp.keystore.clone(),
        )),
    }
}

/// Every served domain as a DIME organization: loaded, or created on first start.
pub fn load_identities(
    config: &Config,
) -> Result<Vec<crate::identity::OrgIdentity>, crate::identity::IdentityError> {
    let keystore = crate::identity::Keystore::new(&config.data_dir, &config.domains);
    let mut orgs = Vec::new();
    for domain in &config.domains {
        let (org, created) = keystore.ensure_org(
            domain,
            config.org_key_files.get(domain),
            &mut rand::rngs::OsRng,
        )?;
        info!(
            %domain,
            created,
            fingerprint = %org.signet.crypto_fingerprint(),
            "DIME organization"
        );
        let (bridge, created) = keystore.ensure_bridge(&org, &mut rand::rngs::OsRng)?;
        info!(
            address = %bridge.address,
            created,
            fingerprint = %bridge.current().map(|g| g.signet.crypto_fingerprint().to_string()).unwrap_or_default(),
            "DIME bridge identity"
        );
        orgs.push(org);
    }
    Ok(orgs)
}

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
    let (tls_config, server_cert) = crate::tls::server_config(&cert, &key)?;
    let tls = tokio_rustls::TlsAcceptor::from(tls_config);
    // Identities and the DMTP TLS configuration are checked at start: a key file others can
    // read or a certificate DMTP peers cannot use fails the start, not the first peer.
    let orgs = load_identities(&config)?;
    let (dmtp_cert, dmtp_key) = dmtp_certificate(&config)?;
    let dmtp_tls =
        tokio_rustls::TlsAcceptor::from(crate::tls::dmtp_server_config(&dmtp_cert, &dmtp_key)?);

    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    match crate::tls::certificate_expiry(&cert) {
        Some(not_after) => {
            metrics.tls_certificate_expiry.set(not_after);
        }
        None => warn!(cert = %cert.display(), "cannot read the certificate's expiry"),
    }
    metrics
        .min_free_disk_bytes
        .set(i64::try_from(config.queue.min_free_disk_bytes).unwrap_or(i64::MAX));
    let store = Store::open_with(
        &data_dir.join("queue.redb"),
        crate::store::StoreOptions {
            cache_bytes: config.store_cache_bytes,
            whole_bodies: crate::body::WholeBodies::new(config.whole_body_budget_bytes),
            commit_latency: Some(metrics.store_commit_seconds.clone()),
            // An origin running our defaults gives up on a message after `expire`; a day's margin
            // for its lease and clock.
            dedup_retention: config.queue.expire + std::time::Duration::from_secs(86_400),
            ..crate::store::StoreOptions::default()
        },
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
    let mut dmtp_listeners = Vec::new();
    for &addr in &config.dmtp.listen {
        dmtp_listeners.push(
            TcpListener::bind(addr)
                .await
                .map_err(|source| ServeError::Bind {
                    addr,
                    what: "dmtp",
                    source,
                })?,
        );
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
    let resolver = crate::resolve::Resolver::new(&config.dns)?;
    let dmtp = Arc::new(dmtp_context(
        &config,
        orgs,
        &resolver,
        store.clone(),
        Arc::clone(&pressure),
        Arc::clone(&queued),
        &mut registry,
    )?);
    let ingress = Arc::new(
        Ingress::new(
            &config,
            Some(tls),
            store.clone(),
            metrics.clone(),
            Arc::clone(&queued),
            Arc::clone(&pressure),
        )
        .with_dual_mode(crate::smtp::server::DualMode {
            tls: dmtp_tls.clone(),
            ctx: Arc::clone(&dmtp),
        }),
    );
    let deliverer = crate::deliver::Deliverer::new(config.delivery.clone(), resolver.clone())?;
    deliverer.register_metrics(&mut registry);
    let tls_reporter = Arc::new(crate::tlsrpt::TlsReporter::new(
        deliverer.tls_report_source(),
        &config.smtp.hostname,
        &config
            .delivery
            .tlsrpt_contact
            .clone()
            .unwrap_or_else(|| format!("postmaster@{}", config.smtp.hostname)),
        crate::time::UnixTime::now(),
    ));
    let smtp: Arc<dyn crate::runner::Transport<crate::deliver::NextHop>> = Arc::new(deliverer);
    let runner = Arc::new(crate::runner::QueueRunner::new(
        store.clone(),
        crate::runner::Transports {
            smtp: Arc::clone(&smtp),
            dime: Some(dime_transports(&config, &dmtp, smtp, &resolver)),
        },
        crate::queue::Scheduler::new(config.queue.clone()),
        crate::runner::RouteConfig {
            // Already in `Domain`'s form (config.rs parsed them), so none is dropped here.
            served: crate::runner::ServedDomains::new(
                config
                    .domains
                    .iter()
                    .filter_map(|d| crate::domain::Domain::parse(d).ok()),
            ),
            backend: config.backend.as_ref().map(|b| b.hop.clone()),
            smarthost: config.smarthost.clone(),
            dime: config.dime_policies.clone(),
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
    let tlsrpt_task = tokio::spawn(crate::tlsrpt::run_daily(
        Arc::clone(&tls_reporter),
        store.clone(),
        Arc::clone(&runner),
        token.clone(),
    ));

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

    for l in dmtp_listeners {
        if let Ok(addr) = l.local_addr() {
            info!(%addr, "DMTP listening (TLS)");
        }
        tracker.spawn(crate::dmtp::listener::run_listener(
            l,
            dmtp_tls.clone(),
            Arc::clone(&dmtp),
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
        ingress: Arc::clone(&ingress),
        data_dir: data_dir.clone(),
        tls_reporter: Some(Arc::clone(&tls_reporter)),
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

    let reload_task = tokio::spawn(reload_on_sighup(server_cert, metrics.clone()));
    shutdown.await;
    reload_task.abort();
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
    let _ = tlsrpt_task.await;
    let _ = tokio::time::timeout(Duration::from_secs(35), queue_task).await;
    admin_stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(2), admin_task).await;
    info!("stopped");
    Ok(())
}

/// SIGHUP (systemd's `ExecReload`, `kill -HUP`): reads the TLS certificate and key again, so a
/// renewed certificate is served without a restart. Other configuration needs a restart.
async fn reload_on_sighup(cert: Arc<crate::tls::ServerCert>, metrics: Metrics) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        return warn!("cannot listen for SIGHUP; certificate reload needs a restart");
    };
    while hup.recv().await.is_some() {
        match cert.reload() {
            Ok(()) => {
                if let Some(not_after) = crate::tls::certificate_expiry(cert.cert_path()) {
                    metrics.tls_certificate_expiry.set(not_after);
                }
                info!(cert = %cert.cert_path().display(), "SIGHUP: TLS certificate reloaded");
            }
            Err(e) => {
                warn!(error = %e, "SIGHUP: TLS certificate not reloaded; serving the old one")
            }
        }
    }
}
