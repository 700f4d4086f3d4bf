//! Tokio glue for one DMTP client connection: it moves bytes between a socket and a
//! [`ClientSession`], runs the TLS handshakes the session asks for, sleeps until its deadline,
//! and hands back the session's events, one batch of jobs at a time so that an idle
//! [`Connection`] can be pooled. Every decision is the session's.

use crate::dmtp::client::{ClientEvent, ClientOutput, ClientSession, Job, JobId};
use rustls::pki_types::ServerName;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// How the connection starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// TLS from the first byte (port 26).
    Tls,
    /// An SMTP port: `STARTTLS <host> MODE=DMTPv1` after the SMTP banner (DIME.md §10.1).
    DualMode,
}

/// Why a connection produced no session.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// TCP connect failed or timed out.
    #[error("connect to {addr}: {reason}")]
    Connect {
        /// Where.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
    /// The TLS handshake failed (a refused certificate lands here too).
    #[error("TLS with {addr}: {source}")]
    Tls {
        /// Where.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// Reading or writing failed after the handshake.
    #[error("{addr}: {source}")]
    Io {
        /// Where.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    Gone,
}

/// One established DMTP client connection: a socket and the [`ClientSession`] on it. It runs
/// batches of jobs ([`Connection::run_jobs`]); between batches it is idle and may be pooled
/// ([`super::pool`]) for the next transaction to the same destination.
pub struct Connection {
    addr: SocketAddr,
    stream: Stream,
    session: ClientSession,
    connector: TlsConnector,
    tls_name: ServerName<'static>,
    handshake_timeout: Duration,
    buf: Vec<u8>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("addr", &self.addr)
            .field("step", &self.session.step())
            .finish_non_exhaustive()
    }
}

impl Connection {
    /// Connects to `addr` (and, for [`Transport::Tls`], runs the TLS handshake). `tls_name` is
    /// the DX host name the certificate is checked against by `connector`'s verifier.
    pub async fn open(
        addr: SocketAddr,
        transport: Transport,
        tls_name: ServerName<'static>,
        connector: TlsConnector,
        session: ClientSession,
        connect_timeout: Duration,
    ) -> Result<Connection, ConnectError> {
        let tcp = tokio::time::timeout(connect_timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| ConnectError::Connect {
                addr,
                reason: "timed out".into(),
            })?
            .map_err(|e| ConnectError::Connect {
                addr,
                reason: e.to_string(),
            })?;
        let _ = tcp.set_nodelay(true);
        let stream = match transport {
            Transport::Tls => Stream::Tls(Box::new(
                handshake(&connector, tls_name.clone(), tcp, addr, connect_timeout).await?,
            )),
            Transport::DualMode => Stream::Plain(tcp),
        };
        Ok(Connection {
            addr,
            stream,
            session,
            connector,
            tls_name,
            handshake_timeout: connect_timeout,
            buf: vec![0u8; 16 * 1024],
        })
    }

    /// Where it is connected.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Runs `jobs` in order on this session and returns every event about them (and any session
    /// failure), with the jobs numbered from 1 in the order given, whatever the session numbered
    /// them. Returns once each job has its result or the session ended; then
    /// [`Connection::is_reusable`] says whether another batch may follow.
    pub async fn run_jobs(&mut self, jobs: Vec<Job>) -> Result<Vec<ClientEvent>, ConnectError> {
        let now = Instant::now();
        let mut ids: Vec<JobId> = Vec::with_capacity(jobs.len());
        let mut refused = Vec::new();
        for (n, job) in (1u64..).zip(jobs) {
            match self.session.submit(now, job) {
                Ok(id) => ids.push(id),
                // The session has ended already: this job never ran.
                Err(error) => refused.push(ClientEvent::Failed {
                    job: Some(JobId(n)),
                    error,
                }),
            }
        }
        let mut events = self.drive(|events| all_done(&ids, events)).await?;
        renumber(&mut events, &ids);
        events.append(&mut refused);
        Ok(events)
    }

    /// Ready for another batch: established, idle, nothing queued, not closing.
    pub fn is_reusable(&self) -> bool {
        self.session.is_idle() && !matches!(self.stream, Stream::Gone)
    }

    /// Whether the peer has closed (or written to) this idle connection: a look at the socket
    /// that does not wait. An idle DMTP server sends nothing, so anything readable (EOF, a
    /// `421`, a TLS alert) means the session is over.
    pub fn peer_gone(&self) -> bool {
        let tcp = match &self.stream {
            Stream::Plain(s) => s,
            Stream::Tls(s) => s.get_ref().0,
            Stream::Gone => return true,
        };
        let mut probe = [0u8; 1];
        !matches!(tcp.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }

    /// Ends the session politely (`QUIT`, then TLS close), bounded by the reply timeout.
    pub async fn quit(mut self) {
        self.session.quit(Instant::now());
        let _ = self.drive(|_| false).await;
    }

    /// Moves bytes until `done(events so far)` or the session closes.
    async fn drive(
        &mut self,
        done: impl Fn(&[ClientEvent]) -> bool,
    ) -> Result<Vec<ClientEvent>, ConnectError> {
        let mut events = Vec::new();
        loop {
            while let Some(out) = self.session.poll_output() {
                match out {
                    ClientOutput::Send(bytes) => {
                        let written = match &mut self.stream {
                            Stream::Plain(s) => s.write_all(&bytes).await,
                            Stream::Tls(s) => s.write_all(&bytes).await,
                            Stream::Gone => Ok(()),
                        };
                        if written.is_err() {
                            self.session.handle_closed();
                        }
                    }
                    ClientOutput::StartTls => {
                        let tcp = match std::mem::replace(&mut self.stream, Stream::Gone) {
                            Stream::Plain(tcp) => tcp,
                            other => {
                                self.stream = other;
                                self.session.handle_closed();
                                continue;
                            }
                        };
                        match handshake(
                            &self.connector,
                            self.tls_name.clone(),
                            tcp,
                            self.addr,
                            self.handshake_timeout,
                        )
                        .await
                        {
                            Ok(tls) => {
                                self.stream = Stream::Tls(Box::new(tls));
                                self.session.handle_tls_established(Instant::now());
                            }
                            Err(e) => {
                                self.session.handle_closed();
                                return Err(e);
                            }
                        }
                    }
                    ClientOutput::Event(e) => events.push(e),
                    ClientOutput::Close => {
                        if let Stream::Tls(s) = &mut self.stream {
                            let _ = s.shutdown().await;
                        }
                        self.stream = Stream::Gone;
                        return Ok(events);
                    }
                }
            }
            if self.session.is_closed() || (self.session.is_idle() && done(&events)) {
                return Ok(events);
            }
            let deadline = self.session.poll_timeout();
            let buf = &mut self.buf;
            let read = async {
                match &mut self.stream {
                    Stream::Plain(s) => s.read(buf).await,
                    Stream::Tls(s) => s.read(buf).await,
                    Stream::Gone => Ok(0),
                }
            };
            let sleep = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d.into()).await,
                    None => std::future::pending().await,
                }
            };
            let woke = tokio::select! {
                r = read => Some(r),
                () = sleep => None,
            };
            match woke {
                Some(Ok(0) | Err(_)) => self.session.handle_closed(),
                Some(Ok(n)) => self.session.handle_input(Instant::now(), &self.buf[..n]),
                None => self.session.handle_timeout(Instant::now()),
            }
        }
    }
}

/// Connects to `addr`, runs `jobs` in order, then `QUIT`, and returns every event the session
/// reported (the jobs' results, numbered from 1, and any session failure). `tls_name` is the DX
/// host name the certificate is checked against by `connector`'s verifier.
///
/// Cancel-safe in the sense that matters here: dropping the future drops the connection; a
/// message transfer cut off that way is retried by the caller (the receiver stores nothing
/// before the whole message is read).
#[allow(clippy::too_many_arguments)] // one connection's whole setting
pub async fn run(
    addr: SocketAddr,
    transport: Transport,
    tls_name: ServerName<'static>,
    connector: TlsConnector,
    session: ClientSession,
    jobs: Vec<Job>,
    connect_timeout: Duration,
) -> Result<Vec<ClientEvent>, ConnectError> {
    let mut conn = Connection::open(
        addr,
        transport,
        tls_name,
        connector,
        session,
        connect_timeout,
    )
    .await?;
    let events = conn.run_jobs(jobs).await?;
    conn.quit().await;
    Ok(events)
}

/// Every job in `ids` has its result among `events`.
fn all_done(ids: &[JobId], events: &[ClientEvent]) -> bool {
    ids.iter()
        .all(|id| events.iter().any(|e| e.job() == Some(*id)))
}

/// The session's job ids as the batch's positions (from 1).
fn renumber(events: &mut [ClientEvent], ids: &[JobId]) {
    for e in events {
        let slot = match e {
            ClientEvent::Delivered { job, .. }
            | ClientEvent::Signet { job, .. }
            | ClientEvent::Verified { job, .. }
            | ClientEvent::History { job, .. }
            | ClientEvent::Failed { job: Some(job), .. } => job,
            ClientEvent::Ready | ClientEvent::Failed { job: None, .. } => continue,
        };
        if let Some(pos) = ids.iter().position(|id| id == slot) {
            *slot = JobId(pos as u64 + 1);
        }
    }
}

async fn handshake(
    connector: &TlsConnector,
    name: ServerName<'static>,
    tcp: TcpStream,
    addr: SocketAddr,
    timeout: Duration,
) -> Result<TlsStream<TcpStream>, ConnectError> {
    match tokio::time::timeout(timeout, connector.connect(name, tcp)).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(source)) => Err(ConnectError::Tls { addr, source }),
        Err(_) => Err(ConnectError::Tls {
            addr,
            source: std::io::Error::new(std::io::ErrorKind::TimedOut, "handshake timed out"),
        }),
    }
}

/// A TLS client configuration whose certificate check is `verifier` (TLS 1.2 and 1.3, ring).
pub fn connector(
    verifier: Arc<dyn rustls::client::danger::ServerCertVerifier>,
) -> Result<TlsConnector, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}
