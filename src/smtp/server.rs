//! Tokio glue for SMTP ingress: accepts connections, enforces connection caps and timeouts, moves
//! bytes between the socket and [`Session`], and performs what the session asks for (TLS
//! upgrade, password checks, durable storage).
//!
//! The "250 only after fsync" rule lives in the session: it emits `Enqueue` and says nothing until
//! [`Session::handle_stored`] is called, which happens here only after [`Store::append`] returned.

use super::session::{Limits, Output, Policy, Session, StoreFailure};
use crate::auth::Credentials;
use crate::metrics::{Metrics, OutcomeLabel};
use crate::store::Store;
use ipnet::IpNet;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, sleep_until, timeout};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info, info_span, warn};

/// How long a session inside DATA may take to finish after shutdown began.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// Read buffer per connection.
const READ_CHUNK: usize = 64 * 1024;

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
    /// Wait for the client's next bytes at most this long.
    pub idle_timeout: Duration,
    /// A session lasts at most this long.
    pub session_timeout: Duration,
    /// Connection caps.
    pub max_connections: usize,
    /// Connection cap per client IP.
    pub max_connections_per_ip: usize,
    /// Woken after each accepted message so the scheduler need not wait for its next poll.
    pub queued: Arc<tokio::sync::Notify>,
    /// Back-pressure limits: queue size and free disk.
    pub pressure: crate::queue::Policy,
    /// Where the queue lives, for the free-space check.
    pub data_dir: std::path::PathBuf,
    /// Open connections per client IP.
    open: Mutex<HashMap<IpAddr, usize>>,
}

impl Ingress {
    /// Bundles the shared state.
    pub fn new(
        config: &crate::config::Config,
        tls: Option<TlsAcceptor>,
        store: Store,
        metrics: Metrics,
        queued: Arc<tokio::sync::Notify>,
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
            },
            relay_networks: config.relay_networks.clone(),
            credentials: Credentials::new(&config.users),
            tls,
            store,
            metrics,
            idle_timeout: s.idle_timeout,
            session_timeout: s.session_timeout,
            max_connections: s.max_connections,
            max_connections_per_ip: s.max_connections_per_ip,
            queued,
            pressure: config.queue.clone(),
            data_dir: config.data_dir.clone(),
            open: Mutex::new(HashMap::new()),
        }
    }

    /// Is the queue too full, or the disk too low, to take another message?
    fn pressure(&self) -> Option<crate::queue::Pressure> {
        let messages = self.store.count().unwrap_or(0);
        let free = free_disk_bytes(&self.data_dir).unwrap_or(u64::MAX);
        crate::queue::ingress_pressure(messages, free, &self.pressure)
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
        let Some(slot) = ingress.admit(peer.ip()) else {
            ingress
                .metrics
                .smtp_sessions
                .get_or_create(&OutcomeLabel {
                    outcome: "refused_limit",
                })
                .inc();
            ingress.metrics.count_rejections(b"421 ");
            tracker.spawn(refuse_busy(
                stream,
                ingress.hostname.clone(),
                implicit_tls.then(|| ingress.tls.clone()).flatten(),
            ));
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

async fn refuse_busy(stream: TcpStream, hostname: String, tls: Option<TlsAcceptor>) {
    let reply = format!("421 4.7.0 {hostname} Too many connections, try again later\r\n");
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
    let session_deadline = Instant::now() + ingress.session_timeout;
    let mut conn = Conn::Plain(stream);
    let mut tls_info = None;
    if implicit_tls {
        let Some(acceptor) = ingress.tls.clone() else {
            return "tls_failed";
        };
        let Conn::Plain(tcp) = std::mem::replace(&mut conn, Conn::Upgrading) else {
            return "tls_failed";
        };
        match timeout(ingress.idle_timeout, acceptor.accept(tcp)).await {
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
    };
    let mut session = Session::new(
        policy,
        ingress.limits.clone(),
        peer,
        crate::store::UnixTime::now().0,
    );
    if let Some(info) = tls_info {
        // Before any input this marks the session encrypted from the start (RFC 8314).
        session.handle_tls_established(info);
    }
    let mut buf = vec![0u8; READ_CHUNK];
    let mut shutting_down = false;
    let mut closed_reason = "peer_closed";
    loop {
        while let Some(output) = session.poll_output() {
            match output {
                Output::Send(bytes) => {
                    ingress.metrics.count_rejections(&bytes);
                    if bytes.starts_with(b"421") {
                        closed_reason = if shutting_down {
                            "shutdown"
                        } else {
                            "too_many_errors"
                        };
                    }
                    match timeout(ingress.idle_timeout, conn.write_all(&bytes)).await {
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
                    match timeout(ingress.idle_timeout, acceptor.accept(tcp)).await {
                        Ok(Ok(s)) => {
                            let info = tls_description(&s);
                            debug!(tls = %info, "STARTTLS done");
                            conn = Conn::Tls(Box::new(s));
                            session.handle_tls_established(info);
                        }
                        _ => return "tls_failed",
                    }
                }
                Output::Authenticate { username, password } => {
                    let creds = ingress.credentials.clone();
                    let name = username.clone();
                    let ok = tokio::task::spawn_blocking(move || creds.verify(&name, &password))
                        .await
                        .unwrap_or(false);
                    info!(user = %username, ok, "AUTH");
                    session.handle_auth_result(ok.then_some(username));
                }
                Output::Enqueue { envelope, body } => {
                    let size = body.len() as u64;
                    let rcpts = envelope.recipients.len();
                    let sender = envelope.sender.clone();
                    if let Some(p) = ingress.pressure() {
                        warn!(pressure = ?p, from = %sender, "refusing mail: back-pressure");
                        session.handle_stored(Err(StoreFailure::Full));
                        continue;
                    }
                    // Not in a select!: the commit must be allowed to finish. Dropping this
                    // future would not undo a commit anyway (the committer thread owns it).
                    // The body moves into the store (no copy); max_messages is checked in
                    // the committer's transaction, exact under concurrency.
                    let result = ingress
                        .store
                        .append_limited(envelope, body, ingress.pressure.max_messages)
                        .await;
                    match result {
                        Ok(queue_id) => {
                            ingress.metrics.messages_accepted.inc();
                            ingress.metrics.bytes_accepted.inc_by(size);
                            ingress.metrics.queue_messages.inc();
                            info!(%queue_id, from = %sender, rcpts, size, "accepted");
                            session.handle_stored(Ok(queue_id));
                            ingress.queued.notify_one();
                        }
                        Err(e) => {
                            let failure = if e.is_full() {
                                StoreFailure::Full
                            } else {
                                StoreFailure::Failed
                            };
                            warn!(error = %e, from = %sender, "store refused the message");
                            session.handle_stored(Err(failure));
                        }
                    }
                }
                Output::Close => {
                    conn.shutdown().await;
                    return if closed_reason == "peer_closed" {
                        "quit"
                    } else {
                        closed_reason
                    };
                }
            }
        }
        if session.is_closed() {
            conn.shutdown().await;
            return closed_reason;
        }
        let idle_deadline = Instant::now() + ingress.idle_timeout;
        let mut deadline = idle_deadline.min(session_deadline);
        if shutting_down {
            deadline = deadline.min(Instant::now() + SHUTDOWN_GRACE);
        }
        tokio::select! {
            read = conn.read(&mut buf) => match read {
                Ok(0) => return if shutting_down { "shutdown" } else { "peer_closed" },
                Ok(n) => {
                    session.set_now_unix(crate::store::UnixTime::now().0);
                    session.handle_input(&buf[..n]);
                }
                Err(_) => return "io_error",
            },
            _ = sleep_until(deadline) => {
                let reply = if shutting_down {
                    format!("421 4.3.0 {} Server shutting down\r\n", ingress.hostname)
                } else {
                    format!("421 4.4.2 {} Timeout, closing connection\r\n", ingress.hostname)
                };
                ingress.metrics.count_rejections(reply.as_bytes());
                let _ = timeout(Duration::from_secs(5), conn.write_all(reply.as_bytes())).await;
                conn.shutdown().await;
                return if shutting_down { "shutdown" } else { "timeout" };
            }
            _ = shutdown.cancelled(), if !shutting_down => {
                shutting_down = true;
                closed_reason = "shutdown";
                session.handle_shutdown();
            }
        }
    }
}

/// Free bytes for unprivileged users on the filesystem holding `path`.
fn free_disk_bytes(path: &std::path::Path) -> Option<u64> {
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
    Some(st.f_bavail.saturating_mul(st.f_frsize))
}
