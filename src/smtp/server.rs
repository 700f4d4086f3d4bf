//! Tokio glue for SMTP ingress: accepts connections, enforces connection caps and rate limits,
//! moves bytes between the socket and [`Session`], sleeps until the session's next deadline, and
//! performs what the session asks for (TLS upgrade, password checks, durable storage).
//!
//! The "250 only after fsync" rule lives in the session: it emits `Enqueue` and says nothing until
//! [`Session::handle_stored`] is called, which happens here only after [`Store::append`] returned.
//! Timeouts and their `421` replies are the session's too; the glue only sleeps until
//! [`Session::poll_timeout`] and reports the time.

use super::pressure::PressureGauge;
use super::ratelimit::{AuthFailures, ConnectionRate};
use super::session::{AuthResult, Limits, Output, Policy, Session, StoreFailure};
use crate::auth::Credentials;
use crate::metrics::{LimitLabel, Metrics, OutcomeLabel};
use crate::store::Store;
use ipnet::IpNet;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{sleep_until, timeout};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info, info_span, warn};

/// Read buffer per connection.
const READ_CHUNK: usize = 64 * 1024;
/// Longest wait for one write once the server is shutting down: a client that does not read
/// must not hold the exit past the grace.
const SHUTDOWN_WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// Everything an SMTP connection needs, shared by all of them.
pub struct Ingress {
    /// Greeting name, served domains.
    pub hostname: String,
    /// Domains accepted from anyone.
    pub served_domains: Vec<String>,
    /// Session limits.
    pub limits: Limits,
    /// Networks that may relay without AUTH.
    pub relay_networks: Vec<IpNet>,
    /// AUTH users.
    pub credentials: Credentials,
    /// STARTTLS / implicit TLS.
    pub tls: Option<TlsAcceptor>,
    /// The durable queue.
    pub store: Store,
    /// Metrics.
    pub metrics: Metrics,
    /// Longest wait for a write to the client, and for a TLS handshake.
    pub io_timeout: Duration,
    /// Dual mode (DIME.md §10.1): the DMTP certificate and server context for connections that
    /// ask `STARTTLS <host> MODE=DMTPv1`; `None` refuses that with `502`.
    pub dual_mode: Option<DualMode>,
    /// Connection caps.
    pub max_connections: usize,
    /// Connection cap per client IP.
    pub max_connections_per_ip: usize,
    /// Woken after each accepted message so the scheduler need not wait for its next poll.
    pub queued: Arc<tokio::sync::Notify>,
    /// Queue size and free disk as a background task last measured them.
    pub pressure: Arc<PressureGauge>,
    /// Set by `dimegate queue drain`: new connections get 421 4.3.2, open sessions go on.
    pub draining: std::sync::atomic::AtomicBool,
    /// Open connections per client IP.
    open: Mutex<HashMap<IpAddr, usize>>,
    /// New connections per second per client (std Mutex: a map update, never across an await).
    connection_rate: Mutex<ConnectionRate>,
    /// AUTH failures per client (std Mutex likewise).
    auth_failures: Mutex<AuthFailures>,
}

impl Ingress {
    /// Bundles the shared state.
    pub fn new(
        config: &crate::config::Config,
        tls: Option<TlsAcceptor>,
        store: Store,
        metrics: Metrics,
        queued: Arc<tokio::sync::Notify>,
        pressure: Arc<PressureGauge>,
    ) -> Ingress {
        let s = &config.smtp;
        Ingress {
            hostname: s.hostname.clone(),
            served_domains: config.domains.clone(),
            limits: Limits {
                max_message_size: usize::try_from(s.max_message_size).unwrap_or(usize::MAX),
                max_recipients: s.max_recipients,
                max_errors: s.max_errors,
                max_line: 512,
                recipient_overshoot: s.max_recipient_overshoot,
                idle_timeout: s.idle_timeout,
                session_timeout: s.session_timeout,
                shutdown_grace: s.shutdown_grace,
            },
            relay_networks: config.relay_networks.clone(),
            credentials: Credentials::new(&config.users),
            tls,
            store,
            metrics,
            io_timeout: s.idle_timeout,
            dual_mode: None,
            max_connections: s.max_connections,
            max_connections_per_ip: s.max_connections_per_ip,
            queued,
            pressure,
            draining: false.into(),
            open: Mutex::new(HashMap::new()),
            connection_rate: Mutex::new(ConnectionRate::new(s.rate_limits.clone())),
            auth_failures: Mutex::new(AuthFailures::new(s.rate_limits.clone())),
        }
    }

    /// Offers DMTP dual mode on this listener's connections.
    pub fn with_dual_mode(mut self, dual_mode: DualMode) -> Ingress {
        self.dual_mode = Some(dual_mode);
        self
    }

    /// Is this new connection within its client's rate?
    fn connection_allowed(&self, ip: IpAddr) -> bool {
        let mut rate = self
            .connection_rate
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        rate.admit(ip, std::time::Instant::now())
    }

    /// Checks credentials unless the client is backing off, and keeps its failure count.
    /// Not cancel-safe in the sense that a dropped future may leave a failure uncounted; it is
    /// never put in a `select!` branch.
    async fn authenticate(&self, ip: IpAddr, username: String, password: String) -> AuthResult {
        let allowed = {
            let failures = self.auth_failures.lock().unwrap_or_else(|p| p.into_inner());
            failures.allows(ip, std::time::Instant::now())
        };
        if !allowed {
            self.metrics
                .smtp_rate_limited
                .get_or_create(&LimitLabel { limit: "auth" })
                .inc();
            info!(user = %username, "AUTH refused: client is backing off after failures");
            return AuthResult::Throttled;
        }
        let creds = self.credentials.clone();
        let name = username.clone();
        let ok = tokio::task::spawn_blocking(move || creds.verify(&name, &password))
            .await
            .unwrap_or(false);
        info!(user = %username, ok, "AUTH");
        let mut failures = self.auth_failures.lock().unwrap_or_else(|p| p.into_inner());
        if ok {
            failures.record_success(ip);
            AuthResult::Authenticated(username)
        } else {
            if let Some(backoff) = failures.record_failure(ip, std::time::Instant::now()) {
                warn!(?backoff, "AUTH failures: client backs off");
            }
            AuthResult::Invalid
        }
    }

    /// Counts a new connection in, unless a cap is reached.
    fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<ConnectionSlot> {
        // std Mutex: held for a map update only, never across an await.
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let total: usize = open.values().sum();
        let mine = open.get(&ip).copied().unwrap_or(0);
        if total >= self.max_connections || mine >= self.max_connections_per_ip {
            return None;
        }
        *open.entry(ip).or_insert(0) += 1;
        Some(ConnectionSlot {
            ingress: Arc::clone(self),
            ip,
        })
    }
}

/// What an SMTP connection needs to become a DMTP one.
pub struct DualMode {
    /// TLS with the DMTP certificate and DMTP's TLS settings (not the SMTP certificate: the
    /// client checks it against the `_dx` record's `tls=` pin, DIME.md §9.4).
    pub tls: TlsAcceptor,
    /// The DMTP server's identities, resolver and store.
    pub ctx: Arc<crate::dmtp::listener::DmtpContext>,
}

/// Releases a connection's place in the caps when dropped.
struct ConnectionSlot {
    ingress: Arc<Ingress>,
    ip: IpAddr,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut open = self.ingress.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// Accepts connections on `listener` until `shutdown` is cancelled. With `implicit_tls` the TLS
/// handshake comes first (RFC 8314).
pub async fn run_listener(
    listener: TcpListener,
    implicit_tls: bool,
    ingress: Arc<Ingress>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        ingress.metrics.smtp_connections.inc();
        if ingress.draining.load(std::sync::atomic::Ordering::Relaxed) {
            refuse_connection(
                &ingress,
                &tracker,
                stream,
                implicit_tls,
                "refused_draining",
                "421 4.3.2 {} Service not available, draining; try another MX\r\n",
            );
            continue;
        }
        if !ingress.connection_allowed(peer.ip()) {
            ingress
                .metrics
                .smtp_rate_limited
                .get_or_create(&LimitLabel {
                    limit: "connection",
                })
                .inc();
            // RFC 5321 §3.1: a server may refuse a connection with 421; 4.7.0 is a policy
            // reason (RFC 3463 §3.8). The client retries later.
            refuse_connection(
                &ingress,
                &tracker,
                stream,
                implicit_tls,
                "refused_rate",
                "421 4.7.0 {} Too many connections from your address, try again later\r\n",
            );
            continue;
        }
        let Some(slot) = ingress.admit(peer.ip()) else {
            refuse_connection(
                &ingress,
                &tracker,
                stream,
                implicit_tls,
                "refused_limit",
                "421 4.7.0 {} Too many connections, try again later\r\n",
            );
            continue;
        };
        let ingress = Arc::clone(&ingress);
        let shutdown = shutdown.clone();
        let span = info_span!("smtp", peer = %peer);
        tracker.spawn(
            async move {
                ingress.metrics.smtp_connections_active.inc();
                let outcome =
                    serve_connection(stream, peer, implicit_tls, &ingress, shutdown).await;
                ingress.metrics.smtp_connections_active.dec();
                ingress
                    .metrics
                    .smtp_sessions
                    .get_or_create(&OutcomeLabel { outcome })
                    .inc();
                debug!(outcome, "session ended");
                drop(slot);
            }
            .instrument(span),
        );
    }
}

/// Refuses a connection before any session starts: counts the outcome and the 421, and sends
/// `reply` (`{}` is our host name) from a task of its own, through TLS on an implicit-TLS port.
fn refuse_connection(
    ingress: &Ingress,
    tracker: &TaskTracker,
    stream: TcpStream,
    implicit_tls: bool,
    outcome: &'static str,
    reply: &str,
) {
    ingress
        .metrics
        .smtp_sessions
        .get_or_create(&OutcomeLabel { outcome })
        .inc();
    ingress.metrics.count_rejections(b"421 ");
    let reply = reply.replace("{}", &ingress.hostname);
    tracker.spawn(refuse(
        stream,
        reply,
        implicit_tls.then(|| ingress.tls.clone()).flatten(),
    ));
}

async fn refuse(stream: TcpStream, reply: String, tls: Option<TlsAcceptor>) {
    let fut = async {
        match tls {
            Some(acceptor) => {
                if let Ok(mut s) = acceptor.accept(stream).await {
                    let _ = s.write_all(reply.as_bytes()).await;
                    let _ = s.shutdown().await;
                }
            }
            None => {
                let mut s = stream;
                let _ = s.write_all(reply.as_bytes()).await;
                let _ = s.shutdown().await;
            }
        }
    };
    let _ = timeout(Duration::from_secs(10), fut).await;
}

/// The socket, before or after the TLS upgrade.
enum Conn {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    /// Only while the upgrade is in progress.
    Upgrading,
}

impl Conn {
    /// Cancel-safe: a dropped read loses no data (tokio's `read` on a socket or TLS stream).
    async fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Conn::Plain(s) => s.read(buf).await,
            Conn::Tls(s) => s.read(buf).await,
            Conn::Upgrading => Ok(0),
        }
    }

    /// Not cancel-safe; never used in a `select!` branch.
    async fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        match self {
            Conn::Plain(s) => s.write_all(buf).await,
            Conn::Tls(s) => {
                s.write_all(buf).await?;
                s.flush().await
            }
            Conn::Upgrading => Err(std::io::ErrorKind::NotConnected.into()),
        }
    }

    async fn shutdown(&mut self) {
        let _ = match self {
            Conn::Plain(s) => s.shutdown().await,
            Conn::Tls(s) => s.shutdown().await,
            Conn::Upgrading => Ok(()),
        };
    }
}

fn tls_description(s: &tokio_rustls::server::TlsStream<TcpStream>) -> String {
    let (_, conn) = s.get_ref();
    let version = conn
        .protocol_version()
        .and_then(|v| v.as_str())
        .unwrap_or("TLS");
    let cipher = conn
        .negotiated_cipher_suite()
        .and_then(|c| c.suite().as_str())
        .unwrap_or("unknown");
    format!("{version} with cipher {cipher}")
}

/// Runs one SMTP session to its end and says how it ended.
///
/// Not cancel-safe as a whole (it awaits writes and store commits); it watches `shutdown` itself.
async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    implicit_tls: bool,
    ingress: &Ingress,
    shutdown: CancellationToken,
) -> &'static str {
    let _ = stream.set_nodelay(true);
    let mut conn = Conn::Plain(stream);
    let mut tls_info = None;
    if implicit_tls {
        let Some(acceptor) = ingress.tls.clone() else {
            return "tls_failed";
        };
        let Conn::Plain(tcp) = std::mem::replace(&mut conn, Conn::Upgrading) else {
            return "tls_failed";
        };
        match timeout(ingress.io_timeout, acceptor.accept(tcp)).await {
            Ok(Ok(s)) => {
                tls_info = Some(tls_description(&s));
                conn = Conn::Tls(Box::new(s));
            }
            _ => return "tls_failed",
        }
    }
    let policy = Policy {
        hostname: ingress.hostname.clone(),
        served_domains: ingress.served_domains.clone(),
        relay_allowed: crate::config::networks_contain(&ingress.relay_networks, peer.ip()),
        tls_available: ingress.tls.is_some(),
        auth_available: !ingress.credentials.is_empty(),
        dmtp_dual_mode: ingress.dual_mode.is_some(),
    };
    let mut session = Session::new(
        policy,
        ingress.limits.clone(),
        peer,
        std::time::Instant::now(),
        crate::time::UnixTime::now().0,
    );
    if let Some(info) = tls_info {
        // Before any input this marks the session encrypted from the start (RFC 8314).
        session.handle_tls_established(std::time::Instant::now(), info);
    }
    let mut buf = vec![0u8; READ_CHUNK];
    let mut shutting_down = false;
    loop {
        while let Some(output) = session.poll_output() {
            match output {
                Output::Send(bytes) => {
                    ingress.metrics.count_rejections(&bytes);
                    let limit = if shutting_down {
                        SHUTDOWN_WRITE_TIMEOUT.min(ingress.io_timeout)
                    } else {
                        ingress.io_timeout
                    };
                    match timeout(limit, conn.write_all(&bytes)).await {
                        Ok(Ok(())) => {}
                        _ => return "io_error",
                    }
                }
                Output::StartTls => {
                    let Some(acceptor) = ingress.tls.clone() else {
                        return "tls_failed";
                    };
                    let Conn::Plain(tcp) = std::mem::replace(&mut conn, Conn::Upgrading) else {
                        return "tls_failed";
                    };
                    match timeout(ingress.io_timeout, acceptor.accept(tcp)).await {
                        Ok(Ok(s)) => {
                            let info = tls_description(&s);
                            debug!(tls = %info, "STARTTLS done");
                            conn = Conn::Tls(Box::new(s));
                            session.handle_tls_established(std::time::Instant::now(), info);
                        }
                        _ => return "tls_failed",
                    }
                }
                Output::Authenticate { username, password } => {
                    let result = ingress.authenticate(peer.ip(), username, password).await;
                    session.handle_auth_result(std::time::Instant::now(), result);
                }
                Output::Enqueue { envelope, body } => {
                    let size = body.len() as u64;
                    let rcpts = envelope.recipients.len();
                    let sender = envelope.sender.clone();
                    // Not in a select!: the commit must be allowed to finish. Dropping this
                    // future would not undo a commit anyway (the committer thread owns it).
                    // The body moves into the store (no copy); max_messages is checked in
                    // the committer's transaction, exact under concurrency.
                    let result = ingress
                        .store
                        .append_limited(envelope, body, ingress.pressure.max_messages())
                        .await;
                    let result = match result {
                        Ok(queue_id) => {
                            ingress.pressure.note_stored(size);
                            ingress.metrics.messages_accepted.inc();
                            ingress.metrics.bytes_accepted.inc_by(size);
                            ingress.metrics.queue_messages.inc();
                            info!(%queue_id, from = %sender, rcpts, size, "accepted");
                            ingress.queued.notify_one();
                            Ok(queue_id)
                        }
                        Err(e) => {
                            // The last defence when the disk filled up between two refreshes
                            // of the back-pressure gauge.
                            warn!(error = %e, from = %sender, "store refused the message");
                            Err(if e.is_full() {
                                StoreFailure::Full
                            } else {
                                StoreFailure::Failed
                            })
                        }
                    };
                    session.handle_stored(std::time::Instant::now(), result);
                }
                Output::Close(reason) => {
                    conn.shutdown().await;
                    return reason.label();
                }
                Output::UpgradeToDmtp { host } => {
                    let Some(dual) = &ingress.dual_mode else {
                        return "tls_failed";
                    };
                    let Conn::Plain(tcp) = std::mem::replace(&mut conn, Conn::Upgrading) else {
                        return "tls_failed";
                    };
                    let mut stream = match timeout(ingress.io_timeout, dual.tls.accept(tcp)).await {
                        Ok(Ok(s)) => s,
                        _ => return "tls_failed",
                    };
                    info!(%host, tls = %tls_description(&stream), "dual mode: SMTP connection continues as DMTP");
                    return match crate::dmtp::listener::serve_dual_mode(
                        &mut stream,
                        &dual.ctx,
                        peer,
                        shutdown,
                    )
                    .await
                    {
                        Ok(()) => "dmtp",
                        Err(e) => {
                            info!(error = %e, "DMTP session ended");
                            "dmtp_io_error"
                        }
                    };
                }
            }
        }
        if session.is_closed() {
            conn.shutdown().await;
            return "closed";
        }
        session.handle_pressure(ingress.pressure.current());
        let deadline = session.poll_timeout();
        tokio::select! {
            read = conn.read(&mut buf) => match read {
                Ok(0) => return if shutting_down { "shutdown" } else { "peer_closed" },
                Ok(n) => {
                    session.set_now_unix(crate::time::UnixTime::now().0);
                    session.handle_input(std::time::Instant::now(), &buf[..n]);
                }
                Err(_) => return "io_error",
            },
            _ = sleep_until_deadline(deadline) => {
                session.handle_timeout(std::time::Instant::now());
            }
            _ = shutdown.cancelled(), if !shutting_down => {
                shutting_down = true;
                session.handle_shutdown(std::time::Instant::now());
            }
        }
    }
}

/// Sleeps until `deadline`, or forever without one. Cancel-safe.
async fn sleep_until_deadline(deadline: Option<std::time::Instant>) {
    match deadline {
        Some(d) => sleep_until(tokio::time::Instant::from_std(d)).await,
        None => std::future::pending().await,
    }
}
