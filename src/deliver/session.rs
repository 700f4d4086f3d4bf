//! One SMTP/LMTP client connection: connect, greeting, EHLO/LHLO, STARTTLS, and one transaction.
//!
//! Built on mail-send's `SmtpClient` primitives (`connect`, `read`, `read_many`, `ehlo`, `lhlo`,
//! `cmd`, `into_tls`) rather than its `send()`: `send()` stops at the first refused RCPT, so it
//! cannot give per-recipient replies; its `data()` always writes `\r\n.\r\n` (adding an empty line
//! to a body that already ends in CRLF, so the body would not arrive byte-identical) and reads a
//! single reply after the dot, where LMTP sends one per accepted recipient (RFC 2033 §4.2). So the
//! transaction is written here, one command at a time, and each reply is read and kept.

use super::wire::{self, Capabilities, Unsendable};
use super::{EnhancedStatus, Handoff, Outcome, Reason, RemoteReply, Stage, TlsPolicy};
use crate::envelope::{Envelope, Recipient};
use mail_send::SmtpClient;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use smtp_proto::Response;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// A TCP stream before or after STARTTLS, so one `SmtpClient` type serves both.
pub(crate) enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
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
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// The two TLS client configurations, built once.
#[derive(Clone)]
pub(crate) struct TlsConnectors {
    /// Opportunistic: encrypts against passive listeners, authenticates nothing (RFC 7435).
    pub(crate) unverified: TlsConnector,
    /// Required: the certificate must chain to a webpki (Mozilla) root and match the name.
    pub(crate) verified: TlsConnector,
}

impl TlsConnectors {
    pub(crate) fn new() -> Result<TlsConnectors, rustls::Error> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
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
        })
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
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Where to connect and how.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Target {
    /// Host name for TLS verification and messages (the MX name, or the IP as text).
    pub(crate) name: String,
    pub(crate) addr: SocketAddr,
    pub(crate) lmtp: bool,
    pub(crate) tls: TlsPolicy,
}

impl Target {
    /// `mx1.example.test[127.0.0.1]:25`, as Postfix names a remote MTA.
    pub(crate) fn label(&self) -> String {
        format!("{}[{}]:{}", self.name, self.addr.ip(), self.addr.port())
    }
}

/// Timeouts of one connection (RFC 5321 §4.5.3.2 gives the usual minimums).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timeouts {
    pub(crate) connect: Duration,
    pub(crate) greeting: Duration,
    pub(crate) command: Duration,
}

/// A failure that concerns the next hop as a whole: nothing was decided for any recipient, so the
/// next MX or address may be tried.
#[derive(Debug, Clone)]
pub(crate) struct HopFailure {
    /// How far the session got; the furthest failure is the one reported.
    pub(crate) stage: Stage,
    pub(crate) reason: Reason,
    pub(crate) status: EnhancedStatus,
    pub(crate) permanent: bool,
}

impl HopFailure {
    fn local(target: &Target, stage: Stage, status: EnhancedStatus, text: String) -> HopFailure {
        HopFailure {
            stage,
            permanent: status.class == 5,
            reason: Reason::Local {
                host: Some(target.name.clone()),
                text,
            },
            status,
        }
    }

    fn reply(target: &Target, stage: Stage, response: Response<String>) -> HopFailure {
        let reply = RemoteReply::from_response(target, stage, response);
        HopFailure {
            stage,
            // A 5xx before MAIL FROM (greeting, EHLO, STARTTLS) refuses the session, not this
            // message: like Postfix's smtp_skip_5xx_greeting, skip the host and, if no other
            // takes the mail, defer rather than bounce on a server's bad day.
            permanent: reply.code >= 500 && stage >= Stage::MailFrom,
            status: reply.status_or_default(),
            reason: Reason::Reply(reply),
        }
    }

    /// mail-send's error at `stage` as a hop failure with a precise text.
    fn from_client(target: &Target, stage: Stage, error: mail_send::Error) -> HopFailure {
        match error {
            mail_send::Error::UnexpectedReply(response) => {
                HopFailure::reply(target, stage, response)
            }
            other => HopFailure::local(
                target,
                stage,
                match stage {
                    Stage::Connect => EnhancedStatus::new(4, 4, 1),
                    Stage::StartTls => EnhancedStatus::new(4, 7, 5),
                    _ => EnhancedStatus::new(4, 4, 2),
                },
                format!("{} {}: {}", stage.doing(), target.label(), describe(&other)),
            ),
        }
    }
}

/// Precise words for mail-send's errors (its `UnparseableReply` also means "the peer closed").
fn describe(error: &mail_send::Error) -> String {
    match error {
        mail_send::Error::Io(e) => e.to_string(),
        mail_send::Error::Timeout => "timed out".into(),
        mail_send::Error::UnparseableReply => {
            "connection closed by the peer, or a reply that is not SMTP".into()
        }
        mail_send::Error::Tls(e) => format!("TLS: {e}"),
        other => other.to_string(),
    }
}

/// An open, greeted connection, ready for MAIL FROM.
pub(crate) struct Connection {
    client: SmtpClient<Stream>,
    pub(crate) target: Target,
    pub(crate) caps: Capabilities,
    /// Protocol and cipher when encrypted, for the log.
    pub(crate) tls: Option<String>,
    /// Transactions attempted on this connection.
    pub(crate) transactions: u32,
}

impl Connection {
    /// Connects, reads the greeting, says EHLO (or LHLO) and applies the TLS policy. With
    /// opportunistic TLS, a failed STARTTLS is retried once in plain text on a new connection, as
    /// Postfix does at `smtp_tls_security_level = may`: a broken TLS stack must not stall mail.
    ///
    /// Not cancel-safe in the sense that a dropped future drops a half-opened connection; nothing
    /// about any message has happened yet, so that is harmless.
    pub(crate) async fn open(
        target: &Target,
        helo_name: &str,
        timeouts: Timeouts,
        connectors: &TlsConnectors,
    ) -> Result<Connection, HopFailure> {
        match Connection::open_once(target, helo_name, timeouts, connectors, true).await {
            Err(failure) if failure.tls_fallback_ok && target.tls == TlsPolicy::Opportunistic => {
                tracing::info!(mta = %target.label(), reason = %failure.inner.reason, "STARTTLS failed, retrying without TLS");
                Connection::open_once(target, helo_name, timeouts, connectors, false)
                    .await
                    .map_err(|f| f.inner)
            }
            other => other.map_err(|f| f.inner),
        }
    }

    /// One connection attempt; see [`Connection::open`] (same cancel behaviour).
    async fn open_once(
        target: &Target,
        helo_name: &str,
        timeouts: Timeouts,
        connectors: &TlsConnectors,
        try_tls: bool,
    ) -> Result<Connection, OpenFailure> {
        let plain = SmtpClient::connect(target.addr, timeouts.connect)
            .await
            .map_err(|e| {
                let failure = match e {
                    mail_send::Error::Timeout => HopFailure::local(
                        target,
                        Stage::Connect,
                        EnhancedStatus::new(4, 4, 1),
                        format!("connect to {}: timed out", target.label()),
                    ),
                    other => HopFailure::local(
                        target,
                        Stage::Connect,
                        EnhancedStatus::new(4, 4, 1),
                        format!("connect to {}: {}", target.label(), describe(&other)),
                    ),
                };
                OpenFailure::plain(failure)
            })?;
        let mut client = SmtpClient {
            stream: Stream::Plain(plain.stream),
            timeout: timeouts.command,
        };
        let greeting = tokio::time::timeout(timeouts.greeting, client.read())
            .await
            .map_err(|_| mail_send::Error::Timeout)
            .and_then(|r| r)
            .map_err(|e| OpenFailure::plain(HopFailure::from_client(target, Stage::Greeting, e)))?;
        if !(200..300).contains(&greeting.code) {
            quit_quietly(&mut client).await;
            return Err(OpenFailure::plain(HopFailure::reply(
                target,
                Stage::Greeting,
                greeting,
            )));
        }
        let mut caps = hello(&mut client, target, helo_name)
            .await
            .map_err(OpenFailure::plain)?;

        let wants_tls = match target.tls {
            TlsPolicy::Disabled => false,
            TlsPolicy::Opportunistic => try_tls && caps.starttls,
            TlsPolicy::Required => {
                if !caps.starttls {
                    quit_quietly(&mut client).await;
                    return Err(OpenFailure::plain(HopFailure::local(
                        target,
                        Stage::StartTls,
                        EnhancedStatus::new(4, 7, 4),
                        format!(
                            "TLS is required, but {} does not offer STARTTLS",
                            target.label()
                        ),
                    )));
                }
                true
            }
        };
        let mut tls_text = None;
        if wants_tls {
            let response = client.cmd(b"STARTTLS\r\n").await.map_err(|e| {
                OpenFailure::plain(HopFailure::from_client(target, Stage::StartTls, e))
            })?;
            if response.code != 220 {
                quit_quietly(&mut client).await;
                return Err(OpenFailure::tls(HopFailure::reply(
                    target,
                    Stage::StartTls,
                    response,
                )));
            }
            let tcp = match client.stream {
                Stream::Plain(tcp) => tcp,
                // Only reachable if STARTTLS were sent twice, which this function never does.
                Stream::Tls(_) => {
                    return Err(OpenFailure::plain(HopFailure::local(
                        target,
                        Stage::StartTls,
                        EnhancedStatus::new(4, 7, 5),
                        "internal: STARTTLS on an encrypted stream".into(),
                    )));
                }
            };
            let connector = if target.tls == TlsPolicy::Required {
                &connectors.verified
            } else {
                &connectors.unverified
            };
            let tls_client = SmtpClient {
                stream: tcp,
                timeout: timeouts.command,
            }
            .into_tls(connector, &target.name)
            .await
            .map_err(|e| {
                let failure = match e {
                    mail_send::Error::InvalidTLSName => HopFailure::local(
                        target,
                        Stage::StartTls,
                        EnhancedStatus::new(4, 7, 5),
                        format!("TLS: {:?} is not a valid TLS server name", target.name),
                    ),
                    other => HopFailure::local(
                        target,
                        Stage::StartTls,
                        EnhancedStatus::new(4, 7, 5),
                        format!(
                            "TLS handshake with {}: {}",
                            target.label(),
                            describe(&other)
                        ),
                    ),
                };
                OpenFailure::tls(failure)
            })?;
            let (_, session) = tls_client.stream.get_ref();
            tls_text = Some(format!(
                "{} {}",
                session
                    .protocol_version()
                    .map(|v| format!("{v:?}"))
                    .unwrap_or_default(),
                session
                    .negotiated_cipher_suite()
                    .map(|c| format!("{:?}", c.suite()))
                    .unwrap_or_default()
            ));
            client = SmtpClient {
                stream: Stream::Tls(Box::new(tls_client.stream)),
                timeout: timeouts.command,
            };
            // RFC 3207 §4.2: forget what was learned before TLS and ask again.
            caps = hello(&mut client, target, helo_name)
                .await
                .map_err(OpenFailure::plain)?;
        }
        Ok(Connection {
            client,
            target: target.clone(),
            caps,
            tls: tls_text,
            transactions: 0,
        })
    }

    /// RSET before reusing an idle connection: clears any state and proves the peer is still
    /// there. Cancel-safe in effect: a dropped future only loses this connection.
    pub(crate) async fn reset(&mut self) -> bool {
        matches!(self.client.cmd(b"RSET\r\n").await, Ok(r) if (200..300).contains(&r.code))
    }

    /// Best-effort QUIT before dropping the connection. Cancel-safe: dropping it closes the socket
    /// without the courtesy.
    pub(crate) async fn quit(mut self) {
        quit_quietly(&mut self.client).await;
    }

    /// One mail transaction for `recipients` carrying `payload` (already dot-stuffed, with the
    /// end-of-data line). Returns either a hop failure (nothing decided for any recipient, try
    /// the next hop) or one outcome per recipient, in order, and whether the connection may be
    /// reused.
    ///
    /// Not cancel-safe: dropped after the final dot and before the reply, the peer may have taken
    /// the message while we never learn it; the queue then retries and the message may arrive
    /// twice. That is the accepted direction of failure: duplicated, never lost.
    pub(crate) async fn transaction(
        &mut self,
        envelope: &Envelope,
        recipients: &[&Recipient],
        payload: &[u8],
        message_len: usize,
        data_timeout: Duration,
    ) -> Transaction {
        self.transactions += 1;
        let target = self.target.clone();
        let label = target.label();
        if let Err(unsendable) =
            wire::check_capabilities(envelope, recipients, &self.caps, message_len)
        {
            return unsendable_result(&target, unsendable, recipients.len(), true);
        }
        let mail = match wire::mail_from_command(envelope, recipients, &self.caps, message_len) {
            Ok(mail) => mail,
            Err(unsendable) => {
                return unsendable_result(&target, unsendable, recipients.len(), true);
            }
        };
        match self.client.cmd(mail.as_bytes()).await {
            Ok(r) if (200..300).contains(&r.code) => {}
            Ok(r) => {
                let reusable = r.code != 421;
                return Transaction::HopFailed {
                    failure: HopFailure::reply(&target, Stage::MailFrom, r),
                    reusable,
                };
            }
            Err(e) => {
                return Transaction::HopFailed {
                    failure: HopFailure::from_client(&target, Stage::MailFrom, e),
                    reusable: false,
                };
            }
        }

        // One RCPT at a time, each reply kept for its recipient.
        let mut outcomes: Vec<Option<Outcome>> = vec![None; recipients.len()];
        let mut accepted: Vec<usize> = Vec::new();
        let mut any_refused = false;
        for (index, recipient) in recipients.iter().enumerate() {
            let command = match wire::rcpt_to_command(recipient, &self.caps) {
                Ok(command) => command,
                Err(unsendable) => {
                    outcomes[index] = Some(Outcome::Failed {
                        reason: Reason::Local {
                            host: Some(target.name.clone()),
                            text: unsendable.text,
                        },
                        status: Some(unsendable.status),
                    });
                    any_refused = true;
                    continue;
                }
            };
            match self.client.cmd(command.as_bytes()).await {
                Ok(r) if (200..300).contains(&r.code) => accepted.push(index),
                Ok(r) if r.code == 421 => {
                    let failure = HopFailure::reply(&target, Stage::RcptTo, r);
                    return self.session_lost(failure, outcomes, any_refused);
                }
                Ok(r) => {
                    any_refused = true;
                    outcomes[index] = Some(Outcome::from_reply(RemoteReply::from_response(
                        &target,
                        Stage::RcptTo,
                        r,
                    )));
                }
                Err(e) => {
                    let failure = HopFailure::from_client(&target, Stage::RcptTo, e);
                    return self.session_lost(failure, outcomes, any_refused);
                }
            }
        }
        if accepted.is_empty() {
            // Nothing to send; the connection stays usable (RSET at reuse clears the MAIL).
            return Transaction::Done {
                outcomes: outcomes.into_iter().map(fill_missing).collect(),
                reusable: true,
            };
        }

        match self.client.cmd(b"DATA\r\n").await {
            Ok(r) if r.code == 354 => {}
            Ok(r) if r.code == 421 => {
                let failure = HopFailure::reply(&target, Stage::Data, r);
                return self.session_lost(failure, outcomes, any_refused);
            }
            Ok(r) => {
                let reply = RemoteReply::from_response(&target, Stage::Data, r);
                for &index in &accepted {
                    outcomes[index] = Some(Outcome::from_reply(reply.clone()));
                }
                return Transaction::Done {
                    outcomes: outcomes.into_iter().map(fill_missing).collect(),
                    reusable: true,
                };
            }
            Err(e) => {
                let failure = HopFailure::from_client(&target, Stage::Data, e);
                return self.session_lost(failure, outcomes, any_refused);
            }
        }

        // From the first payload byte on, a lost connection means "status unknown": defer, and
        // accept the risk of a duplicate over the risk of a loss.
        let replies_wanted = if self.target.lmtp { accepted.len() } else { 1 };
        let sent = tokio::time::timeout(data_timeout, async {
            self.client.stream.write_all(payload).await?;
            self.client.stream.flush().await?;
            self.client.read_many(replies_wanted).await
        })
        .await
        .map_err(|_| mail_send::Error::Timeout)
        .and_then(|r| r);
        let replies = match sent {
            Ok(replies) => replies,
            Err(e) => {
                let reason = Reason::Local {
                    host: Some(target.name.clone()),
                    text: format!(
                        "lost the session with {label} while sending the message or waiting for \
                         the end-of-data reply ({}); it may or may not have been delivered",
                        describe(&e)
                    ),
                };
                for &index in &accepted {
                    outcomes[index] = Some(Outcome::Deferred {
                        reason: reason.clone(),
                        status: Some(EnhancedStatus::new(4, 4, 2)),
                    });
                }
                return Transaction::Done {
                    outcomes: outcomes.into_iter().map(fill_missing).collect(),
                    reusable: false,
                };
            }
        };
        let mut reusable = true;
        for (position, &index) in accepted.iter().enumerate() {
            // SMTP: one reply for all; LMTP: one per accepted recipient, in RCPT order.
            let response = if self.target.lmtp {
                replies.get(position)
            } else {
                replies.first()
            };
            let outcome = match response {
                Some(r) => {
                    if r.code == 421 {
                        reusable = false;
                    }
                    let mut outcome = Outcome::from_reply(RemoteReply::from_response(
                        &target,
                        Stage::EndOfData,
                        r.clone(),
                    ));
                    if let Outcome::Delivered { handoff, .. } = &mut outcome {
                        *handoff = if self.caps.dsn {
                            Handoff::PassedOn
                        } else if self.target.lmtp {
                            Handoff::Delivered
                        } else {
                            Handoff::Relayed
                        };
                    }
                    outcome
                }
                None => Outcome::Deferred {
                    reason: Reason::Local {
                        host: Some(target.name.clone()),
                        text: format!("{label} sent fewer end-of-data replies than recipients"),
                    },
                    status: Some(EnhancedStatus::new(4, 5, 0)),
                },
            };
            outcomes[index] = Some(outcome);
        }
        Transaction::Done {
            outcomes: outcomes.into_iter().map(fill_missing).collect(),
            reusable,
        }
    }

    /// The session died (421 or I/O) before the message was sent. If no recipient has been
    /// refused yet, nothing has been decided and the whole hop failed: the caller tries the next
    /// one. Otherwise the refusals stand and everybody else is deferred with this reason.
    fn session_lost(
        &self,
        failure: HopFailure,
        outcomes: Vec<Option<Outcome>>,
        any_refused: bool,
    ) -> Transaction {
        if !any_refused {
            return Transaction::HopFailed {
                failure,
                reusable: false,
            };
        }
        let outcomes = outcomes
            .into_iter()
            .map(|o| {
                o.unwrap_or_else(|| Outcome::Deferred {
                    reason: failure.reason.clone(),
                    status: Some(EnhancedStatus {
                        class: 4,
                        ..failure.status
                    }),
                })
            })
            .collect();
        Transaction::Done {
            outcomes,
            reusable: false,
        }
    }
}

/// The result of [`Connection::transaction`].
pub(crate) enum Transaction {
    HopFailed {
        failure: HopFailure,
        reusable: bool,
    },
    Done {
        outcomes: Vec<Outcome>,
        reusable: bool,
    },
}

/// A check before MAIL FROM failed: hop-specific reasons let the next hop try; others fail every
/// recipient now.
fn unsendable_result(
    target: &Target,
    unsendable: Unsendable,
    count: usize,
    reusable: bool,
) -> Transaction {
    let reason = Reason::Local {
        host: Some(target.name.clone()),
        text: unsendable.text,
    };
    if unsendable.hop_specific {
        Transaction::HopFailed {
            failure: HopFailure {
                stage: Stage::MailFrom,
                reason,
                status: unsendable.status,
                permanent: unsendable.status.class == 5,
            },
            reusable,
        }
    } else {
        Transaction::Done {
            outcomes: (0..count)
                .map(|_| Outcome::Failed {
                    reason: reason.clone(),
                    status: Some(unsendable.status),
                })
                .collect(),
            reusable,
        }
    }
}

/// Every slot is filled by the time a transaction returns; this keeps the function total without
/// a panic if that ever stops being true.
fn fill_missing(outcome: Option<Outcome>) -> Outcome {
    outcome.unwrap_or_else(|| Outcome::Deferred {
        reason: Reason::Local {
            host: None,
            text: "internal: no outcome recorded for this recipient".into(),
        },
        status: Some(EnhancedStatus::new(4, 3, 0)),
    })
}

/// Failure while opening, with whether a plain-text retry makes sense.
struct OpenFailure {
    inner: HopFailure,
    tls_fallback_ok: bool,
}

impl OpenFailure {
    fn plain(inner: HopFailure) -> OpenFailure {
        OpenFailure {
            inner,
            tls_fallback_ok: false,
        }
    }
    fn tls(inner: HopFailure) -> OpenFailure {
        OpenFailure {
            inner,
            tls_fallback_ok: true,
        }
    }
}

/// EHLO (or LHLO for LMTP), falling back to HELO when an SMTP server refuses EHLO (RFC 5321
/// §3.2); after HELO no extension is assumed. Not cancel-safe: a dropped future leaves the
/// session mid-command, so the connection must be dropped with it (callers own it by value or
/// by `&mut` inside a future that is dropped as a whole).
async fn hello(
    client: &mut SmtpClient<Stream>,
    target: &Target,
    helo_name: &str,
) -> Result<Capabilities, HopFailure> {
    let result = if target.lmtp {
        client.lhlo(helo_name).await
    } else {
        client.ehlo(helo_name).await
    };
    match result {
        Ok(ehlo) => Ok(Capabilities::from_ehlo(&ehlo)),
        Err(mail_send::Error::UnexpectedReply(r))
            if !target.lmtp && (500..600).contains(&r.code) && r.code != 554 =>
        {
            let helo = client
                .cmd(format!("HELO {helo_name}\r\n").as_bytes())
                .await
                .map_err(|e| HopFailure::from_client(target, Stage::Hello, e))?;
            if (200..300).contains(&helo.code) {
                Ok(Capabilities::default())
            } else {
                Err(HopFailure::reply(target, Stage::Hello, helo))
            }
        }
        Err(e) => Err(HopFailure::from_client(target, Stage::Hello, e)),
    }
}

/// QUIT and shut the stream down, bounded to 5 s. Cancel-safe: it is only a courtesy.
async fn quit_quietly(client: &mut SmtpClient<Stream>) {
    // A short bound: QUIT is a courtesy, not worth holding a delivery slot for.
    let _ = tokio::time::timeout(Duration::from_secs(5), client.cmd(b"QUIT\r\n")).await;
    let _ = client.stream.shutdown().await;
}
