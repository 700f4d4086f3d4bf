//! The tokio glue of one outbound SMTP/LMTP connection: connect, then move bytes between the
//! socket and the sans-I/O [`ClientSession`] (`client.rs`), run the TLS handshake it asks for and
//! sleep until its deadline. Every protocol decision is the session's; this file only adds what
//! needs a socket: the connect timeout, the TLS configurations and the plain-text retry the
//! session asks for after a failed opportunistic STARTTLS (as Postfix does at
//! `smtp_tls_security_level = may`: a broken TLS stack must not stall mail).

use super::Stage;
use super::client::{
    ClientSession, HopFailure, Output, Peer, SessionConfig, Timeouts as ReplyTimeouts,
    TransactionResult,
};
use super::plan::{Target, Verify};
use super::wire::Capabilities;
use super::wire::DotStuffer;
use crate::body::BodyRef;
use crate::envelope::{Envelope, Recipient};
use rustls::ClientConfig;
use rustls::client::danger::{ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// What is sent after `354`: our `Received:` header, then the body as queued, dot-stuffed and
/// written a chunk at a time.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Payload<'a> {
    pub(crate) header: &'a [u8],
    pub(crate) body: BodyRef<'a>,
}

/// A TCP stream before or after STARTTLS. `Gone` only while the handshake owns the socket, or
/// after it failed.
pub(crate) enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    Gone,
}

fn gone() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "connection already closed")
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Stream::Gone => Poll::Ready(Err(gone())),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Stream::Gone => Poll::Ready(Err(gone())),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Stream::Gone => Poll::Ready(Err(gone())),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Stream::Gone => Poll::Ready(Err(gone())),
        }
    }
}

/// The TLS client configurations, built once (DANE ones are built per connection from the
/// host's TLSA records).
#[derive(Clone)]
pub(crate) struct TlsConnectors {
    /// Opportunistic: encrypts against passive listeners, authenticates nothing (RFC 7435).
    pub(crate) unverified: TlsConnector,
    /// Required: the certificate must chain to a webpki (Mozilla) root, or to a root of
    /// `[delivery] tls_ca_file`, and match the name.
    pub(crate) verified: TlsConnector,
    /// The same check as `verified`, run after an unverified handshake for TLS-RPT only.
    pub(crate) webpki: Arc<rustls::client::WebPkiServerVerifier>,
}

impl TlsConnectors {
    pub(crate) fn new(
        extra_roots: &[CertificateDer<'static>],
    ) -> Result<TlsConnectors, rustls::Error> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        for root in extra_roots {
            roots.add(root.clone())?;
        }
        let roots = Arc::new(roots);
        let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(
            roots.clone(),
            provider.clone(),
        )
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))?;
        let verified = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let unverified = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate { provider }))
            .with_no_client_auth();
        Ok(TlsConnectors {
            unverified: TlsConnector::from(Arc::new(unverified)),
            verified: TlsConnector::from(Arc::new(verified)),
            webpki,
        })
    }
}

/// What TLS did on one connection attempt, for TLS-RPT (RFC 8460 §4.3.2) and the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum TlsSeen {
    /// No TLS was attempted (disabled, or not offered under the opportunistic policy).
    #[default]
    None,
    /// Established; `verified`: the certificate passed the check the target asked for (for
    /// report-only targets, the WebPKI check run afterwards).
    Established {
        /// The certificate was verified.
        verified: bool,
    },
    /// A report-only WebPKI check failed after an accepted handshake; TLS-RPT result type.
    ReportOnlyFailed(&'static str),
    /// TLS failed; TLS-RPT result type (`starttls-not-supported`, `certificate-expired`...).
    Failed(&'static str),
}

/// TLS-RPT's result type for a failed handshake (RFC 8460 §4.3.2.2).
fn result_type(error: &rustls::Error) -> &'static str {
    use rustls::CertificateError as C;
    match error {
        rustls::Error::InvalidCertificate(
            C::NotValidForName | C::NotValidForNameContext { .. },
        ) => "certificate-host-mismatch",
        rustls::Error::InvalidCertificate(
            C::Expired | C::ExpiredContext { .. } | C::NotValidYet | C::NotValidYetContext { .. },
        ) => "certificate-expired",
        rustls::Error::InvalidCertificate(C::UnknownIssuer | C::BadSignature) => {
            "certificate-not-trusted"
        }
        _ => "validation-failure",
    }
}

/// Opportunistic TLS: any certificate is accepted, but the handshake signatures are still checked
/// so the session keys belong to whoever holds the presented key.
#[derive(Debug)]
struct AcceptAnyCertificate {
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    crate::tls::handshake_signatures_by_provider!();
}

/// Timeouts of one connection: the connect, then the session's reply timeouts.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timeouts {
    pub(crate) connect: Duration,
    pub(crate) replies: ReplyTimeouts,
}

/// The most bytes one read takes from the socket.
const READ_CHUNK: usize = 16 * 1024;

/// What driving the session produced.
enum Event {
    Ready,
    Failed(HopFailure),
    Finished(TransactionResult),
    Closed,
}

/// An open connection and its session.
pub(crate) struct Connection {
    stream: Stream,
    session: ClientSession,
    pub(crate) target: Target,
    /// Protocol and cipher when encrypted, for the log.
    pub(crate) tls: Option<String>,
    /// Transactions attempted on this connection.
    pub(crate) transactions: u32,
    /// What TLS did, for TLS-RPT.
    pub(crate) seen: TlsSeen,
}

impl Connection {
    /// Connects, reads the greeting, says EHLO (or LHLO) and applies the TLS policy; retries once
    /// in plain text when the session says a failed opportunistic STARTTLS allows it.
    ///
    /// Not cancel-safe in the sense that a dropped future drops a half-opened connection; nothing
    /// about any message has happened yet, so that is harmless.
    pub(crate) async fn open(
        target: &Target,
        helo_name: &str,
        timeouts: Timeouts,
        connectors: &TlsConnectors,
        seen: &mut TlsSeen,
    ) -> Result<Connection, HopFailure> {
        match Connection::open_once(target, helo_name, timeouts, connectors, true, seen).await {
            Err(failure) if failure.retry_without_tls => {
                tracing::info!(mta = %target.label(), reason = %failure.reason, "STARTTLS failed, retrying without TLS");
                let mut plain = TlsSeen::None;
                Connection::open_once(target, helo_name, timeouts, connectors, false, &mut plain)
                    .await
            }
            other => other,
        }
    }

    /// One connection attempt; see [`Connection::open`] (same cancel behaviour).
    async fn open_once(
        target: &Target,
        helo_name: &str,
        timeouts: Timeouts,
        connectors: &TlsConnectors,
        try_tls: bool,
        seen: &mut TlsSeen,
    ) -> Result<Connection, HopFailure> {
        let peer = Peer {
            host: target.name.clone(),
            mta: target.label(),
        };
        let connect_failure = |text: String| HopFailure {
            stage: Stage::Connect,
            reason: super::Reason::Local {
                host: Some(target.name.clone()),
                text: format!("connect to {}: {text}", target.label()),
            },
            status: super::EnhancedStatus::new(4, 4, 1),
            permanent: false,
            retry_without_tls: false,
        };
        let tcp =
            match tokio::time::timeout(timeouts.connect, TcpStream::connect(target.addr)).await {
                Ok(Ok(tcp)) => tcp,
                Ok(Err(error)) => return Err(connect_failure(error.to_string())),
                Err(_) => return Err(connect_failure("timed out".into())),
            };
        // Commands and replies alternate; Nagle would only delay the pipelined groups.
        let _ = tcp.set_nodelay(true);
        let session = ClientSession::new(
            SessionConfig {
                peer,
                helo_name: helo_name.to_owned(),
                lmtp: target.lmtp,
                tls: target.tls,
                try_tls,
                relay: target.relay,
                timeouts: timeouts.replies,
            },
            std::time::Instant::now(),
        );
        let mut connection = Connection {
            stream: Stream::Plain(tcp),
            session,
            target: target.clone(),
            tls: None,
            transactions: 0,
            seen: TlsSeen::None,
        };
        let event = connection.drive(None, connectors).await;
        *seen = connection.seen;
        if let Event::Failed(failure) = &event
            && failure.stage == Stage::StartTls
            && connection.seen == TlsSeen::None
            && !connection.session.capabilities().starttls
        {
            *seen = TlsSeen::Failed("starttls-not-supported");
        }
        match event {
            Event::Ready => Ok(connection),
            Event::Failed(failure) => {
                // Let the session finish its QUIT (bounded by its own timer).
                if !connection.session.is_closed() {
                    connection.drive(None, connectors).await;
                }
                Err(failure)
            }
            Event::Finished(_) | Event::Closed => Err(HopFailure {
                stage: Stage::Greeting,
                reason: super::Reason::Local {
                    host: Some(target.name.clone()),
                    text: format!(
                        "internal: the session with {} ended while opening",
                        target.label()
                    ),
                },
                status: super::EnhancedStatus::new(4, 3, 0),
                permanent: false,
                retry_without_tls: false,
            }),
        }
    }

    /// What the server announced.
    pub(crate) fn capabilities(&self) -> Capabilities {
        self.session.capabilities()
    }

    /// RSET before reusing an idle connection: clears any state and proves the peer is still
    /// there. Cancel-safe in effect: a dropped future only loses this connection.
    pub(crate) async fn reset(&mut self, connectors: &TlsConnectors) -> bool {
        if self.session.reset(std::time::Instant::now()).is_err() {
            return false;
        }
        matches!(self.drive(None, connectors).await, Event::Ready)
    }

    /// Best-effort QUIT before dropping the connection, bounded by the session's QUIT timer.
    /// Cancel-safe: dropping it closes the socket without the courtesy.
    pub(crate) async fn quit(mut self, connectors: &TlsConnectors) {
        self.session.quit(std::time::Instant::now());
        self.drive(None, connectors).await;
    }

    /// One mail transaction for `recipients` carrying `payload` (dot-stuffed as it is sent,
    /// then the end-of-data line); see [`TransactionResult`].
    ///
    /// Not cancel-safe: dropped after the final dot and before the reply, the peer may have taken
    /// the message while we never learn it; the queue then retries and the message may arrive
    /// twice. That is the accepted direction of failure: duplicated, never lost.
    pub(crate) async fn transaction(
        &mut self,
        envelope: &Envelope,
        recipients: &[&Recipient],
        payload: Payload<'_>,
        message_len: usize,
        connectors: &TlsConnectors,
    ) -> TransactionResult {
        self.transactions += 1;
        let now = std::time::Instant::now();
        if self
            .session
            .start_transaction(envelope, recipients, message_len, now)
            .is_err()
        {
            return TransactionResult::HopFailed {
                failure: HopFailure {
                    stage: Stage::MailFrom,
                    reason: super::Reason::Local {
                        host: Some(self.target.name.clone()),
                        text: format!(
                            "internal: the session with {} was not ready",
                            self.target.label()
                        ),
                    },
                    status: super::EnhancedStatus::new(4, 3, 0),
                    permanent: false,
                    retry_without_tls: false,
                },
                reusable: false,
            };
        }
        match self.drive(Some(payload), connectors).await {
            Event::Finished(TransactionResult::HopFailed { failure, reusable }) => {
                TransactionResult::HopFailed {
                    failure,
                    reusable: reusable && !self.session.is_closed(),
                }
            }
            Event::Finished(TransactionResult::Done { outcomes, reusable }) => {
                TransactionResult::Done {
                    outcomes,
                    reusable: reusable && !self.session.is_closed(),
                }
            }
            Event::Ready | Event::Failed(_) | Event::Closed => TransactionResult::HopFailed {
                failure: HopFailure {
                    stage: Stage::MailFrom,
                    reason: super::Reason::Local {
                        host: Some(self.target.name.clone()),
                        text: format!(
                            "internal: the session with {} ended without a result",
                            self.target.label()
                        ),
                    },
                    status: super::EnhancedStatus::new(4, 3, 0),
                    permanent: false,
                    retry_without_tls: false,
                },
                reusable: false,
            },
        }
    }

    /// Does what the session asks until it reports an event (after draining every output queued
    /// with it) or closes. Not cancel-safe: a dropped future may leave a command half written,
    /// so the connection must be dropped with it (callers hold it by value or by `&mut` inside
    /// a future dropped as a whole).
    async fn drive(&mut self, payload: Option<Payload<'_>>, connectors: &TlsConnectors) -> Event {
        let mut event = None;
        let mut buf = vec![0u8; READ_CHUNK];
        loop {
            while let Some(output) = self.session.poll_output() {
                match output {
                    Output::Send(bytes) => {
                        self.write(&bytes).await;
                    }
                    Output::SendMessage => match payload {
                        Some(payload) => self.send_message(payload).await,
                        None => self
                            .session
                            .handle_closed(Some("internal: no message to send")),
                    },
                    Output::StartTls => self.start_tls(connectors).await,
                    Output::Ready => event = event.or(Some(Event::Ready)),
                    Output::Failed(failure) => event = event.or(Some(Event::Failed(failure))),
                    Output::Finished(result) => event = event.or(Some(Event::Finished(result))),
                    Output::Close => {
                        // Best effort: the peer may be gone already.
                        let _ =
                            tokio::time::timeout(Duration::from_secs(1), self.stream.shutdown())
                                .await;
                        self.stream = Stream::Gone;
                        return event.unwrap_or(Event::Closed);
                    }
                }
            }
            if let Some(event) = event {
                return event;
            }
            let deadline = self.session.poll_timeout();
            let read = self.stream.read(&mut buf);
            let result = match deadline {
                Some(deadline) => {
                    tokio::time::timeout_at(tokio::time::Instant::from_std(deadline.at), read)
                        .await
                        .ok()
                }
                None => Some(read.await),
            };
            let now = std::time::Instant::now();
            match result {
                None => self.session.handle_timeout(now),
                Some(Ok(0)) => self.session.handle_closed(None),
                Some(Ok(n)) => self.session.handle_input(&buf[..n], now),
                Some(Err(error)) => self.session.handle_closed(Some(&error.to_string())),
            }
        }
    }

    /// Sends the message: the header and the body chunk by chunk through one [`DotStuffer`],
    /// then the end-of-data line, each write under the session's deadline. Memory is one
    /// chunk and its stuffed copy. If the body cannot be read to its end, the connection is
    /// reported closed before the end-of-data line, so the hop never takes a truncated
    /// message; the session then fails the transaction (a deferral).
    async fn send_message(&mut self, payload: Payload<'_>) {
        let mut stuffer = DotStuffer::new();
        // Room for what is sent at once (the header and a chunk, or all of a small message),
        // its stuffing and the end-of-data line. Not a whole chunk's worth for a 1 KiB message:
        // with glibc a 66 KiB buffer freed next to the top of the heap can be given back to the
        // system and asked for again, per message.
        let at_once = payload.header.len().saturating_add(
            usize::try_from(payload.body.len())
                .unwrap_or(usize::MAX)
                .min(crate::body::CHUNK),
        );
        let mut out = Vec::with_capacity(at_once.saturating_add(at_once / 32).saturating_add(5));
        stuffer.push(payload.header, &mut out);
        let mut chunks = payload.body.chunks();
        while let Some(piece) = chunks.next().await {
            match piece {
                Ok(piece) => stuffer.push(&piece, &mut out),
                Err(error) => {
                    tracing::warn!(%error, "aborting the transaction: the body cannot be read");
                    self.stream = Stream::Gone;
                    return self.session.handle_closed(Some(&error.to_string()));
                }
            }
            if out.len() >= crate::body::CHUNK {
                if !self.write(&out).await {
                    return;
                }
                out.clear();
            }
        }
        stuffer.finish(&mut out);
        self.write(&out).await;
    }

    /// Writes under the session's deadline; a failure or timeout is reported to the session
    /// (and `false` returned).
    async fn write(&mut self, bytes: &[u8]) -> bool {
        let write = async {
            self.stream.write_all(bytes).await?;
            self.stream.flush().await
        };
        let result = match self.session.poll_timeout() {
            Some(deadline) => {
                tokio::time::timeout_at(tokio::time::Instant::from_std(deadline.at), write)
                    .await
                    .ok()
            }
            None => Some(write.await),
        };
        match result {
            Some(Ok(())) => true,
            Some(Err(error)) => {
                self.session.handle_closed(Some(&error.to_string()));
                false
            }
            None => {
                self.session.handle_timeout(std::time::Instant::now());
                false
            }
        }
    }

    /// The TLS handshake the session asked for, under its deadline.
    async fn start_tls(&mut self, connectors: &TlsConnectors) {
        let tcp = match std::mem::replace(&mut self.stream, Stream::Gone) {
            Stream::Plain(tcp) => tcp,
            other => {
                self.stream = other;
                self.session
                    .handle_tls_failed("internal: STARTTLS on an encrypted stream");
                return;
            }
        };
        let Ok(name) = ServerName::try_from(self.target.name.clone()) else {
            self.session.handle_tls_failed(&format!(
                "{:?} is not a valid TLS server name",
                self.target.name
            ));
            return;
        };
        let dane;
        let connector = match &self.target.verify {
            Verify::Dane(records) => {
                match crate::dane::client_config(records.clone(), &[self.target.name.as_str()]) {
                    Ok(config) => {
                        dane = TlsConnector::from(Arc::new(config));
                        &dane
                    }
                    // Only sets with a usable record become `Verify::Dane`; kept total.
                    Err(error) => {
                        self.seen = TlsSeen::Failed("tlsa-invalid");
                        self.session
                            .handle_tls_failed(&format!("DANE configuration: {error}"));
                        return;
                    }
                }
            }
            Verify::WebPki => &connectors.verified,
            Verify::Any | Verify::ReportOnly => &connectors.unverified,
        };
        let handshake = connector.connect(name.clone(), tcp);
        let result = match self.session.poll_timeout() {
            Some(deadline) => {
                tokio::time::timeout_at(tokio::time::Instant::from_std(deadline.at), handshake)
                    .await
                    .ok()
            }
            None => Some(handshake.await),
        };
        match result {
            Some(Ok(tls)) => {
                let (_, state) = tls.get_ref();
                self.tls = Some(format!(
                    "{} {}",
                    state
                        .protocol_version()
                        .map(|v| format!("{v:?}"))
                        .unwrap_or_default(),
                    state
                        .negotiated_cipher_suite()
                        .map(|c| format!("{:?}", c.suite()))
                        .unwrap_or_default()
                ));
                self.seen = match &self.target.verify {
                    Verify::ReportOnly => match report_only_check(connectors, state, &name) {
                        Ok(()) => TlsSeen::Established { verified: true },
                        Err(kind) => TlsSeen::ReportOnlyFailed(kind),
                    },
                    Verify::Any => TlsSeen::Established { verified: false },
                    Verify::WebPki | Verify::Dane(_) => TlsSeen::Established { verified: true },
                };
                self.stream = Stream::Tls(Box::new(tls));
                self.session
                    .handle_tls_established(std::time::Instant::now());
            }
            Some(Err(error)) => {
                let rustls_error = error
                    .get_ref()
                    .and_then(|e| e.downcast_ref::<rustls::Error>());
                self.seen = TlsSeen::Failed(rustls_error.map_or("validation-failure", result_type));
                // rustls shows a verifier's own error with Debug; say why DANE refused in words.
                let dane = match rustls_error {
                    Some(rustls::Error::InvalidCertificate(rustls::CertificateError::Other(
                        other,
                    ))) => other.0.downcast_ref::<crate::dane::DaneMismatch>(),
                    _ => None,
                };
                match dane {
                    Some(mismatch) => self.session.handle_tls_failed(&mismatch.to_string()),
                    None => self.session.handle_tls_failed(&error.to_string()),
                }
            }
            None => {
                self.seen = TlsSeen::Failed("validation-failure");
                self.session.handle_tls_failed("timed out")
            }
        }
    }
}

/// The WebPKI check of an MTA-STS `testing` target, after a handshake that accepted any
/// certificate: the verdict is only reported.
fn report_only_check(
    connectors: &TlsConnectors,
    state: &rustls::ClientConnection,
    name: &ServerName<'static>,
) -> Result<(), &'static str> {
    let Some((end_entity, intermediates)) = state
        .peer_certificates()
        .and_then(|chain| chain.split_first())
    else {
        return Err("validation-failure");
    };
    connectors
        .webpki
        .verify_server_cert(end_entity, intermediates, name, &[], UnixTime::now())
        .map(|_| ())
        .map_err(|e| result_type(&e))
}
