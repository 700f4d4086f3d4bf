//! Tokio glue for one DMTP client connection: it moves bytes between a socket and a
//! [`ClientSession`], runs the TLS handshakes the session asks for, sleeps until its deadline,
//! and hands back the session's events. Every decision is the session's.

use crate::dmtp::client::{ClientEvent, ClientOutput, ClientSession, Job};
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

/// Connects to `addr`, runs `jobs` in order, then `QUIT`, and returns every event the session
/// reported (the jobs' results and any session failure). `tls_name` is the DX host name the
/// certificate is checked against by `connector`'s verifier.
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
    mut session: ClientSession,
    jobs: Vec<Job>,
    connect_timeout: Duration,
) -> Result<Vec<ClientEvent>, ConnectError> {
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
    let mut stream = match transport {
        Transport::Tls => Stream::Tls(Box::new(
            handshake(&connector, tls_name.clone(), tcp, addr, connect_timeout).await?,
        )),
        Transport::DualMode => Stream::Plain(tcp),
    };
    let now = Instant::now();
    for job in jobs {
        // A fresh session takes every job; an error here means it has ended already, which
        // its own `Failed` event reports.
        let _ = session.submit(now, job);
    }
    session.quit(now);
    let mut events = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        while let Some(out) = session.poll_output() {
            match out {
                ClientOutput::Send(bytes) => {
                    let written = match &mut stream {
                        Stream::Plain(s) => s.write_all(&bytes).await,
                        Stream::Tls(s) => s.write_all(&bytes).await,
                        Stream::Gone => Ok(()),
                    };
                    if written.is_err() {
                        session.handle_closed();
                    }
                }
                ClientOutput::StartTls => {
                    let tcp = match std::mem::replace(&mut stream, Stream::Gone) {
                        Stream::Plain(tcp) => tcp,
                        other => {
                            stream = other;
                            session.handle_closed();
                            continue;
                        }
                    };
                    match handshake(&connector, tls_name.clone(), tcp, addr, connect_timeout).await
                    {
                        Ok(tls) => {
                            stream = Stream::Tls(Box::new(tls));
                            session.handle_tls_established(Instant::now());
                        }
                        Err(e) => {
                            session.handle_closed();
                            return Err(e);
                        }
                    }
                }
                ClientOutput::Event(e) => events.push(e),
                ClientOutput::Close => {
                    if let Stream::Tls(s) = &mut stream {
                        let _ = s.shutdown().await;
                    }
                    return Ok(events);
                }
            }
        }
        if session.is_closed() {
            return Ok(events);
        }
        let deadline = session.poll_timeout();
        let read = async {
            match &mut stream {
                Stream::Plain(s) => s.read(&mut buf).await,
                Stream::Tls(s) => s.read(&mut buf).await,
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
            Some(Ok(0) | Err(_)) => session.handle_closed(),
            Some(Ok(n)) => session.handle_input(Instant::now(), &buf[..n]),
            None => session.handle_timeout(Instant::now()),
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
