//! Outbound SMTP and LMTP: one transaction per (message, next hop) carrying all its recipients,
//! with a per-recipient [`Outcome`] built from the remote replies.
//!
//! Owns the outbound connections: a small idle pool keyed by next-hop address (RSET before reuse)
//! and the concurrency caps, per next hop and in total. It decides *where* and *how* a message
//! goes ([`NextHop`], TLS policy, MX order); *when* to try again is the queue's business: it
//! reads [`Outcome`] (delivered, deferred, failed) and the enhanced status for DSNs.
//!
//! What is sent: a `Received:` header ([`received_header`]) followed by the stored message bytes,
//! dot-stuffed and otherwise untouched. A body file is read and sent in chunks
//! ([`crate::body::CHUNK`]) and stuffed as it goes ([`Deliverer::deliver_body`]), so a message
//! in flight costs one chunk of memory whatever its size.
//!
//! Failure rules, in short: a 2xx after the data delivers, a 4xx defers, a 5xx fails, each
//! recipient on its own reply (LMTP: one reply per recipient after the data). Whatever keeps a
//! next hop from taking the transaction at all (connect, greeting, EHLO, STARTTLS, MAIL FROM,
//! a missing extension, a lost session before any recipient was refused) makes the next MX
//! address be tried (RFC 5321 §5.1); when none takes it, any temporary trouble defers everyone,
//! and only unanimous permanent refusals (a 5xx to MAIL FROM or later; a 5xx greeting or EHLO
//! counts as temporary, as with Postfix's `smtp_skip_5xx_greeting`) fail them. Once the
//! message's bytes are on the wire, a lost session defers: a duplicate is possible, a loss is not.
//!
//! Where each part lives: the protocol of one connection is the sans-I/O [`client::ClientSession`]
//! (`client.rs`, replies parsed by `reply.rs`, command lines and dot-stuffing in `wire.rs`); the
//! order of attempts and the verdict when none succeeds is the pure `plan.rs`; `session.rs` is
//! the tokio glue that only moves bytes, runs TLS and sleeps; this file holds the pool, the caps
//! and the loop that follows the plan.
//!
//! The TOML that `config` maps onto [`DeliverySettings`] and [`NextHop`] (tests/deliver.rs parses
//! this block with the real loader):
//!
//! ```toml
//! [backend]                 # NextHop::Backend
//! address = "127.0.0.1:24"
//! lmtp = true
//! starttls = "off"          # TlsPolicy: off (Disabled) | opportunistic | required
//! [relay]                   # NextHop::smarthost(spec, tls)
//! smarthost = "[relay.example.net]:587"
//! smarthost_tls = "required"
//! [dns]                     # resolve::ResolverSettings
//! servers = ["127.0.0.1:53"]
//! [delivery]                # DeliverySettings (helo_name defaults to smtp.hostname)
//! max_connections = 100
//! max_connections_per_hop = 20
//! idle_timeout = "5s"
//! [[destination]]           # DestinationPolicy
//! domain = "bank.example"
//! require_tls = true
//! [outbound_tls]            # DeliverySettings' TLS block; DANE follows [dns] trust_anchor
//! mta_sts = true
//! ca_file = "/etc/dimegate/private-ca.pem"
//! ```
//!
//! Outbound TLS policy (DANE, MTA-STS, REQUIRETLS, per-destination `require_tls`) is decided per
//! MX host by the pure [`policy::tls_policy`]; MTA-STS records and policies are parsed by
//! `mta_sts.rs` and fetched by `sts_fetch.rs`; `tlsrpt.rs` counts sessions for TLS-RPT.

pub mod client;
mod metrics;
pub mod mta_sts;
mod plan;
pub mod policy;
mod received;
mod reply;
mod session;
pub mod sts_fetch;
pub mod tlsrpt;
mod wire;

pub use received::received_header;

use crate::body::BodyRef;
use crate::domain::Domain;
use crate::envelope::{Envelope, QueueId, Recipient};
use crate::resolve::{MxAnswer, ResolveError, Resolver};
use crate::status::{DeliveryOutcome, Diagnosis, DiagnosticCode, DiagnosticType, EnhancedStatus};
use client::{HopFailure, TransactionResult};
use plan::{DnsFailure, Plan, Step, Target, Verify};
use policy::{DaneLookup, PolicyInputs, TlsRequirement};
use session::{Connection, Timeouts, TlsConnectors, TlsSeen};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// The SMTP step a reply answered, for "(in reply to RCPT TO command)".
/// Ordered by how far a session got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    /// TCP connect.
    Connect,
    /// The server greeting.
    Greeting,
    /// EHLO, LHLO or HELO.
    Hello,
    /// STARTTLS and the TLS handshake.
    StartTls,
    /// MAIL FROM.
    MailFrom,
    /// RCPT TO.
    RcptTo,
    /// DATA (before the message).
    Data,
    /// The end-of-data dot.
    EndOfData,
}

impl Stage {
    fn in_reply_to(self) -> &'static str {
        match self {
            Stage::Connect => "connect",
            Stage::Greeting => "the initial greeting",
            Stage::Hello => "EHLO/LHLO/HELO command",
            Stage::StartTls => "STARTTLS command",
            Stage::MailFrom => "MAIL FROM command",
            Stage::RcptTo => "RCPT TO command",
            Stage::Data => "DATA command",
            Stage::EndOfData => "end of DATA command",
        }
    }

    fn doing(self) -> &'static str {
        match self {
            Stage::Connect => "connect to",
            Stage::Greeting => "waiting for the greeting of",
            Stage::Hello => "saying EHLO to",
            Stage::StartTls => "STARTTLS with",
            Stage::MailFrom => "sending MAIL FROM to",
            Stage::RcptTo => "sending RCPT TO to",
            Stage::Data => "sending DATA to",
            Stage::EndOfData => "sending the message to",
        }
    }
}

/// A reply from the next hop, kept whole for the log and the DSN's Diagnostic-Code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteReply {
    /// Who said it, as a DSN's `Remote-MTA: dns; <host>` names it: the MX or relay host name, or
    /// the IP address of a backend.
    pub host: String,
    /// Who said it, precisely: `host[ip]:port`.
    pub mta: String,
    /// What it answered.
    pub stage: Stage,
    /// The three-digit reply code.
    pub code: u16,
    /// The enhanced status code when the reply carried one.
    pub status: Option<EnhancedStatus>,
    /// The reply text, lines joined with `\n`, without codes.
    pub text: String,
}

impl RemoteReply {
    fn from_reply(peer: &client::Peer, stage: Stage, reply: &reply::Reply) -> Self {
        RemoteReply {
            host: peer.host.clone(),
            mta: peer.mta.clone(),
            stage,
            code: reply.code,
            status: reply.status,
            text: reply.text(),
        }
    }

    /// The reply as a DSN's `Diagnostic-Code: smtp; ...` wants it: code, enhanced code when
    /// given, text (lines joined by a space).
    pub fn reply_line(&self) -> String {
        match self.status {
            Some(status) => format!("{} {status} {}", self.code, self.text.replace('\n', " ")),
            None => format!("{} {}", self.code, self.text.replace('\n', " ")),
        }
    }

    /// The reply's enhanced code, or `X.0.0` of its class when it had none (RFC 3463 §3.1).
    pub fn status_or_default(&self) -> EnhancedStatus {
        self.status.unwrap_or_else(|| {
            let class = match self.code {
                200..=299 => 2,
                400..=499 => 4,
                _ => 5,
            };
            EnhancedStatus::new(class, 0, 0)
        })
    }
}

impl std::fmt::Display for RemoteReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "host {} said: {} (in reply to {})",
            self.mta,
            self.reply_line(),
            self.stage.in_reply_to()
        )
    }
}

/// Why a recipient was deferred or failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// The next hop said so.
    Reply(RemoteReply),
    /// We found out ourselves: DNS, connect, TLS, timeout, a missing extension.
    Local {
        /// The next hop concerned (host name, or IP of a backend), when one was chosen; the
        /// text names it precisely as `host[ip]:port`.
        host: Option<String>,
        /// What happened, precisely.
        text: String,
    },
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reason::Reply(reply) => reply.fmt(f),
            Reason::Local { text, .. } => f.write_str(text),
        }
    }
}

/// Who tells the sender about a success the sender asked for with NOTIFY=SUCCESS (RFC 3461
/// §5.2), once the next hop has accepted a recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handoff {
    /// The next hop offers DSN and got the NOTIFY/ORCPT parameters: it reports success itself
    /// (§5.2.2); a report from us as well would tell the sender twice.
    PassedOn,
    /// An SMTP next hop without DSN: we report `Action: relayed` (§5.2.3), since we cannot know
    /// about the final delivery.
    Relayed,
    /// An LMTP next hop without DSN: its acceptance is the delivery into the mailbox, so we
    /// report `Action: delivered` (§5.2.1).
    Delivered,
}

/// What happened to one recipient in one delivery attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The next hop took responsibility (2xx after the data).
    Delivered {
        /// Its reply, usually with its own queue id.
        reply: RemoteReply,
        /// Who owes the sender a success DSN, if one was asked for.
        handoff: Handoff,
    },
    /// Try again later.
    Deferred {
        /// The remote reply or our own finding.
        reason: Reason,
        /// The enhanced status for a delay DSN.
        status: Option<EnhancedStatus>,
    },
    /// Will not be delivered: bounce.
    Failed {
        /// The remote reply or our own finding.
        reason: Reason,
        /// The enhanced status for the failure DSN.
        status: Option<EnhancedStatus>,
    },
}

impl Outcome {
    /// What this transport's remote replies are, for a DSN's `Diagnostic-Code` (RFC 3464
    /// §2.3.6): SMTP and LMTP replies alike are `smtp`.
    pub const DIAGNOSTIC_TYPE: DiagnosticType = DiagnosticType::Smtp;

    /// 2xx delivered, 4xx deferred, 5xx failed; anything else (a 1xx or 3xx where a final answer
    /// belongs) is a protocol error of the peer: deferred.
    fn from_reply(reply: RemoteReply) -> Outcome {
        match reply.code {
            200..=299 => Outcome::Delivered {
                reply,
                handoff: Handoff::Relayed,
            },
            500..=599 => Outcome::Failed {
                status: Some(reply.status_or_default()),
                reason: Reason::Reply(reply),
            },
            400..=499 => Outcome::Deferred {
                status: Some(reply.status_or_default()),
                reason: Reason::Reply(reply),
            },
            _ => Outcome::Deferred {
                status: Some(EnhancedStatus::new(4, 5, 0)),
                reason: Reason::Reply(reply),
            },
        }
    }

    fn local(
        permanent: bool,
        host: Option<String>,
        status: EnhancedStatus,
        text: String,
    ) -> Outcome {
        let reason = Reason::Local { host, text };
        if permanent {
            Outcome::Failed {
                reason,
                status: Some(status),
            }
        } else {
            Outcome::Deferred {
                reason,
                status: Some(status),
            }
        }
    }

    /// `true` for [`Outcome::Delivered`].
    pub fn is_delivered(&self) -> bool {
        matches!(self, Outcome::Delivered { .. })
    }

    /// `true` for [`Outcome::Failed`]: the queue bounces this recipient.
    pub fn is_permanent(&self) -> bool {
        matches!(self, Outcome::Failed { .. })
    }

    /// The next hop that answered or was tried, for a DSN's `Remote-MTA: dns; ...`.
    pub fn remote_host(&self) -> Option<&str> {
        match self {
            Outcome::Delivered { reply, .. }
            | Outcome::Deferred {
                reason: Reason::Reply(reply),
                ..
            }
            | Outcome::Failed {
                reason: Reason::Reply(reply),
                ..
            } => Some(&reply.host),
            Outcome::Deferred {
                reason: Reason::Local { host, .. },
                ..
            }
            | Outcome::Failed {
                reason: Reason::Local { host, .. },
                ..
            } => host.as_deref(),
        }
    }

    /// The remote reply, code first, for a DSN's `Diagnostic-Code: smtp; ...`.
    pub fn reply_line(&self) -> Option<String> {
        match self {
            Outcome::Delivered { reply, .. }
            | Outcome::Deferred {
                reason: Reason::Reply(reply),
                ..
            }
            | Outcome::Failed {
                reason: Reason::Reply(reply),
                ..
            } => Some(reply.reply_line()),
            _ => None,
        }
    }

    /// Our own finding when no remote reply explains the outcome (DNS, connect, TLS, timeout).
    pub fn local_reason(&self) -> Option<&str> {
        match self {
            Outcome::Deferred {
                reason: Reason::Local { text, .. },
                ..
            }
            | Outcome::Failed {
                reason: Reason::Local { text, .. },
                ..
            } => Some(text),
            _ => None,
        }
    }

    /// For a delivered recipient, who owes the sender a success DSN; `None` otherwise.
    pub fn handoff(&self) -> Option<Handoff> {
        match self {
            Outcome::Delivered { handoff, .. } => Some(*handoff),
            _ => None,
        }
    }

    /// The transport-neutral view of this outcome, for the queue and the DSN: `Remote-MTA` from
    /// the host, `Diagnostic-Code: smtp;` from the reply ([`Outcome::DIAGNOSTIC_TYPE`]), our own
    /// reason otherwise, and the enhanced status.
    pub fn to_delivery_outcome(&self) -> DeliveryOutcome {
        let diagnosis = Diagnosis {
            remote_mta: self.remote_host().map(str::to_owned),
            reply: self
                .reply_line()
                .map(|line| DiagnosticCode::new(Self::DIAGNOSTIC_TYPE, line)),
            local_reason: self.local_reason().map(str::to_owned),
            status: self.status(),
        };
        match self {
            Outcome::Delivered { handoff, .. } => match handoff {
                Handoff::Delivered => DeliveryOutcome::Delivered(diagnosis),
                Handoff::Relayed => DeliveryOutcome::Relayed(diagnosis),
                Handoff::PassedOn => DeliveryOutcome::PassedOn(diagnosis),
            },
            Outcome::Deferred { .. } => DeliveryOutcome::Deferred(diagnosis),
            Outcome::Failed { .. } => DeliveryOutcome::Failed(diagnosis),
        }
    }

    /// The enhanced status code: the remote one if given, else the one we chose.
    pub fn status(&self) -> Option<EnhancedStatus> {
        match self {
            Outcome::Delivered { reply, .. } => Some(reply.status_or_default()),
            Outcome::Deferred { status, .. } | Outcome::Failed { status, .. } => *status,
        }
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Delivered { reply, .. } => write!(f, "delivered: {reply}"),
            Outcome::Deferred { reason, .. } => write!(f, "deferred: {reason}"),
            Outcome::Failed { reason, .. } => write!(f, "failed: {reason}"),
        }
    }
}

/// How to use STARTTLS with a next hop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum TlsPolicy {
    /// Never (a backend on loopback or a Unix-like trusted link).
    Disabled,
    /// When offered, without certificate verification (RFC 7435); if the handshake fails, the
    /// message goes in plain text on a new connection.
    #[default]
    Opportunistic,
    /// Must succeed with a certificate valid for the host name under the webpki roots;
    /// otherwise the recipients are deferred (4.7.x).
    Required,
}

/// Where a message goes next: data, decided by routing; [`Deliverer::deliver`] does the rest.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum NextHop {
    /// The provider's MTA behind us.
    Backend {
        /// Its address.
        addr: SocketAddr,
        /// Speak LMTP (RFC 2033) instead of SMTP.
        lmtp: bool,
        /// STARTTLS policy.
        tls: TlsPolicy,
    },
    /// A relay host for all outbound mail, without MX lookup (Postfix's `relayhost = [host]:port`).
    Smarthost {
        /// Host name or IP literal.
        host: String,
        /// TCP port.
        port: u16,
        /// STARTTLS policy.
        tls: TlsPolicy,
    },
    /// The recipient domain's MX hosts, tried in order (RFC 5321 §5.1); an address literal is
    /// connected to directly.
    Mx {
        /// The recipient domain.
        domain: Domain,
    },
}

/// A relay specification that is not `host`, `host:port`, `[host]:port` or `[v6addr]:port`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a relay host specification (host, host:port or [host]:port): {0:?}")]
pub struct BadHostPort(pub String);

impl BadHostPort {
    /// A configuration error: retrying does not help.
    pub fn is_permanent(&self) -> bool {
        true
    }
}

impl NextHop {
    /// A smarthost from its configuration text: `host`, `host:port`, `[host]:port` (Postfix's
    /// spelling; the brackets only mean "no MX lookup", which a smarthost never does) or
    /// `[2001:db8::1]:587`. The port defaults to 25.
    pub fn smarthost(spec: &str, tls: TlsPolicy) -> Result<NextHop, BadHostPort> {
        let bad = || BadHostPort(spec.to_owned());
        let spec_trimmed = spec.trim();
        let (host, port) = if let Some(rest) = spec_trimmed.strip_prefix('[') {
            let (host, after) = rest.split_once(']').ok_or_else(bad)?;
            let port = match after {
                "" => 25,
                _ => after
                    .strip_prefix(':')
                    .and_then(|p| p.parse::<u16>().ok())
                    .ok_or_else(bad)?,
            };
            (host, port)
        } else {
            match spec_trimmed.matches(':').count() {
                0 => (spec_trimmed, 25),
                1 => {
                    let (host, port) = spec_trimmed.split_once(':').ok_or_else(bad)?;
                    (host, port.parse::<u16>().map_err(|_| bad())?)
                }
                // A bare IPv6 address.
                _ => (spec_trimmed, 25),
            }
        };
        if host.is_empty() || port == 0 || host.chars().any(|c| c.is_whitespace() || c == '/') {
            return Err(bad());
        }
        Ok(NextHop::Smarthost {
            host: host.to_owned(),
            port,
            tls,
        })
    }

    /// The key under which concurrency is counted.
    fn concurrency_key(&self) -> String {
        match self {
            NextHop::Backend { addr, lmtp, .. } => {
                format!("{}:{addr}", if *lmtp { "lmtp" } else { "smtp" })
            }
            NextHop::Smarthost { host, port, .. } => {
                format!("relay:{}:{port}", host.to_ascii_lowercase())
            }
            NextHop::Mx { domain } => format!("mx:{domain}"),
        }
    }
}

/// Per-destination policy for [`NextHop::Mx`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DestinationPolicy {
    /// Recipient domain.
    pub domain: Domain,
    /// Require verified TLS to this domain's MX hosts.
    pub require_tls: bool,
}

/// Typed delivery settings; `config` wires TOML keys to these fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliverySettings {
    /// Our host name: the EHLO argument and the `by` of the `Received:` header.
    pub helo_name: String,
    /// TCP port for MX hosts (25; tests use another).
    pub mx_port: u16,
    /// TLS policy for MX hosts without a [`DestinationPolicy`] requiring TLS.
    pub mx_tls: TlsPolicy,
    /// Per-domain policies for MX delivery.
    pub destinations: Vec<DestinationPolicy>,
    /// TCP connect limit.
    pub connect_timeout: Duration,
    /// Greeting wait (RFC 5321 §4.5.3.2.1: 5 minutes).
    pub greeting_timeout: Duration,
    /// Per-command reply wait (RFC 5321 §4.5.3.2: 5 minutes for MAIL/RCPT).
    pub command_timeout: Duration,
    /// Sending the message and waiting for the end-of-data reply (RFC 5321: 10 minutes).
    pub data_timeout: Duration,
    /// Concurrent deliveries in total.
    pub max_connections: usize,
    /// Concurrent deliveries per next hop (per MX domain, backend or relay).
    pub max_connections_per_hop: usize,
    /// How long an idle connection is kept for the next message to the same address.
    pub idle_timeout: Duration,
    /// Recipients per transaction; more go in further transactions (Postfix's
    /// `smtp_destination_recipient_limit`, default 50).
    pub max_recipients_per_transaction: usize,
    /// Transactions per connection before it is closed (0: no limit).
    pub max_messages_per_connection: u32,
    /// Addresses tried per delivery attempt over all MX hosts (Postfix's
    /// `smtp_mx_address_limit`).
    pub max_addresses_per_delivery: usize,
    /// Shuffle MX hosts of equal preference (RFC 5321 §5.1). Off only for reproducible tests.
    pub shuffle_equal_mx: bool,
    // --- outbound TLS policy (DANE, MTA-STS, REQUIRETLS, TLS-RPT) ---
    /// Look up and apply MTA-STS policies (RFC 8461).
    pub mta_sts: bool,
    /// The HTTPS port of `mta-sts.<domain>`: 443; a test setting.
    pub mta_sts_port: u16,
    /// The whole policy fetch (connect, TLS, request, response).
    pub mta_sts_timeout: Duration,
    /// Extra trusted roots (PEM) for WebPKI-verified TLS: MTA-STS policy hosts and MX hosts
    /// under MTA-STS or `require_tls`. For private CAs and tests.
    pub tls_ca_file: Option<std::path::PathBuf>,
    /// TLS-RPT `contact-info` and the sender of report mail; `None`: `postmaster@<helo_name>`.
    pub tlsrpt_contact: Option<String>,
}

impl Default for DeliverySettings {
    fn default() -> Self {
        DeliverySettings {
            helo_name: "localhost".into(),
            mx_port: 25,
            mx_tls: TlsPolicy::Opportunistic,
            destinations: Vec::new(),
            connect_timeout: Duration::from_secs(30),
            greeting_timeout: Duration::from_secs(300),
            command_timeout: Duration::from_secs(300),
            data_timeout: Duration::from_secs(600),
            max_connections: 100,
            max_connections_per_hop: 20,
            idle_timeout: Duration::from_secs(5),
            max_recipients_per_transaction: 50,
            max_messages_per_connection: 100,
            max_addresses_per_delivery: 5,
            shuffle_equal_mx: true,
            mta_sts: true,
            mta_sts_port: 443,
            mta_sts_timeout: Duration::from_secs(60),
            tls_ca_file: None,
            tlsrpt_contact: None,
        }
    }
}

/// Delivery could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeliverError {
    /// The TLS client configuration could not be built.
    #[error("cannot build the TLS client configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// `tls_ca_file` could not be read or holds no certificate.
    #[error("CA file {path}: {reason}")]
    CaFile {
        /// The configured file.
        path: std::path::PathBuf,
        /// What was wrong.
        reason: String,
    },
}

impl DeliverError {
    /// Set-up errors are configuration errors: retrying will not help.
    pub fn is_permanent(&self) -> bool {
        true
    }
}

struct IdleConnection {
    connection: Connection,
    since: Instant,
}

/// Sends messages to next hops. Share it (`Arc`) between queue workers.
pub struct Deliverer {
    settings: DeliverySettings,
    resolver: Resolver,
    connectors: TlsConnectors,
    total: Arc<Semaphore>,
    per_hop: Mutex<HashMap<String, Arc<Semaphore>>>,
    // std Mutex: never held across an await, only to push or pop a connection.
    idle: Mutex<HashMap<Target, Vec<IdleConnection>>>,
    metrics: metrics::DeliveryMetrics,
    sts_cache: mta_sts::PolicyCache,
    fetcher: sts_fetch::Fetcher,
    tlsrpt: Arc<tlsrpt::Collector>,
}

/// What the TLS-RPT sender (`crate::tlsrpt`) needs from the deliverer: the counts, a resolver
/// for `_smtp._tls` and report hosts, and WebPKI-verifying TLS for `https:` destinations.
#[derive(Clone)]
pub struct TlsReportSource {
    /// The counts, shared with the deliverer.
    pub collector: Arc<tlsrpt::Collector>,
    /// The deliverer's resolver.
    pub resolver: Resolver,
    /// WebPKI-verifying TLS (webpki roots plus `tls_ca_file`).
    pub https: tokio_rustls::TlsConnector,
}

/// What the TLS decisions of an MX delivery need beyond the plan.
#[derive(Debug, Clone)]
struct MxContext {
    domain: String,
    mx_secure: bool,
    sts: Option<Arc<mta_sts::Policy>>,
    destination_require_tls: bool,
}

impl std::fmt::Debug for Deliverer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deliverer")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Deliverer {
    /// Builds a deliverer; fails only if the TLS configuration cannot be built.
    pub fn new(settings: DeliverySettings, resolver: Resolver) -> Result<Deliverer, DeliverError> {
        let total = Arc::new(Semaphore::new(settings.max_connections.max(1)));
        let extra_roots = match &settings.tls_ca_file {
            Some(path) => load_roots(path)?,
            None => Vec::new(),
        };
        let connectors = TlsConnectors::new(&extra_roots)?;
        let fetcher = sts_fetch::Fetcher {
            connector: connectors.verified.clone(),
            port: settings.mta_sts_port,
            timeout: settings.mta_sts_timeout,
        };
        Ok(Deliverer {
            connectors,
            fetcher,
            sts_cache: mta_sts::PolicyCache::default(),
            tlsrpt: Arc::new(tlsrpt::Collector::default()),
            total,
            settings,
            resolver,
            per_hop: Mutex::new(HashMap::new()),
            idle: Mutex::new(HashMap::new()),
            metrics: metrics::DeliveryMetrics::default(),
        })
    }

    /// Registers the connection metrics (`dimegate_delivery_connections_*`,
    /// `dimegate_delivery_active`) in the gateway's registry.
    pub fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        self.metrics.register(registry);
    }

    /// Delivers one message to one next hop for the recipients at `recipients` (indices into
    /// `envelope.recipients`, whose NOTIFY/ORCPT go with each). Returns one outcome per index
    /// asked for, keyed by it and in the order given (an index past the envelope's recipients
    /// gets none), so two RCPTs of one address keep their own parameters and outcomes. Never
    /// fails as a whole: DNS, connect or TLS trouble shows as every recipient deferred (or
    /// failed, when permanent) with the precise reason.
    ///
    /// Waits for a free slot under the per-hop and total caps first.
    ///
    /// Not cancel-safe: if dropped after the message's end-of-data was sent and before the reply
    /// was read, the next hop may have the message while the caller records nothing; a retry then
    /// delivers it twice. Never a loss. Dropping it at any other point only closes a connection.
    pub async fn deliver(
        &self,
        hop: &NextHop,
        envelope: &Envelope,
        queue_id: QueueId,
        body: &[u8],
        recipients: &[usize],
    ) -> Vec<(usize, Outcome)> {
        self.deliver_body(hop, envelope, queue_id, BodyRef::Bytes(body), recipients)
            .await
    }

    /// [`Deliverer::deliver`] for a body that may be a file: it is read and sent in chunks of
    /// [`crate::body::CHUNK`] bytes, dot-stuffed as it goes, so a message in flight costs a chunk
    /// of memory whatever its size. A body that cannot be read to its end aborts the
    /// transaction before the end-of-data line (the hop never takes a truncated message) and
    /// defers it.
    pub async fn deliver_body(
        &self,
        hop: &NextHop,
        envelope: &Envelope,
        queue_id: QueueId,
        body: BodyRef<'_>,
        recipients: &[usize],
    ) -> Vec<(usize, Outcome)> {
        let (indices, chosen): (Vec<usize>, Vec<&Recipient>) = recipients
            .iter()
            .filter_map(|&i| envelope.recipients.get(i).map(|r| (i, r)))
            .unzip();
        let outcomes = self
            .deliver_inner(hop, envelope, queue_id, body, &chosen)
            .await;
        for (recipient, outcome) in chosen.iter().zip(&outcomes) {
            tracing::info!(%queue_id, rcpt = %recipient.address, %outcome, "delivery attempt");
        }
        indices.into_iter().zip(outcomes).collect()
    }

    /// [`Deliverer::deliver`] without the logging: one outcome per recipient, in order. Not
    /// cancel-safe, for the same reason.
    async fn deliver_inner(
        &self,
        hop: &NextHop,
        envelope: &Envelope,
        queue_id: QueueId,
        body: BodyRef<'_>,
        recipients: &[&Recipient],
    ) -> Vec<Outcome> {
        let all = |outcome: Outcome| -> Vec<Outcome> { vec![outcome; recipients.len()] };
        if recipients.is_empty() {
            return Vec::new();
        }

        // Per hop first, then total: a hop at its cap waits without holding a global slot.
        let hop_semaphore = self.hop_semaphore(hop);
        let (Ok(_hop_permit), Ok(_total_permit)) = (
            hop_semaphore.acquire_owned().await,
            self.total.clone().acquire_owned().await,
        ) else {
            // The semaphores are never closed; this keeps the function total.
            return all(Outcome::local(
                false,
                None,
                EnhancedStatus::new(4, 3, 0),
                "delivery slots closed (shutting down)".into(),
            ));
        };
        self.metrics.deliveries_active.inc();
        // Decremented on every exit, a dropped future included.
        let _active = ActiveGuard(&self.metrics.deliveries_active);

        let header = received_header(envelope, queue_id, &self.settings.helo_name);
        let message_len = header
            .len()
            .saturating_add(usize::try_from(body.len()).unwrap_or(usize::MAX));
        let payload = session::Payload {
            header: header.as_bytes(),
            body,
        };
        // Postfix's smtp_destination_recipient_limit: large recipient lists go as several
        // transactions (on the same pooled connection), since servers need only accept 100
        // recipients per transaction (RFC 5321 §4.5.3.1.8).
        let chunk_size = self.settings.max_recipients_per_transaction.max(1);
        let mut outcomes = Vec::with_capacity(recipients.len());
        for chunk in recipients.chunks(chunk_size) {
            outcomes.extend(
                self.deliver_chunk(hop, envelope, queue_id, chunk, payload, message_len)
                    .await,
            );
        }
        outcomes
    }

    /// One transaction for `recipients` (at most `max_recipients_per_transaction`), trying the
    /// hop's targets in order. Not cancel-safe, as [`Deliverer::deliver`].
    async fn deliver_chunk(
        &self,
        hop: &NextHop,
        envelope: &Envelope,
        queue_id: QueueId,
        recipients: &[&Recipient],
        payload: session::Payload<'_>,
        message_len: usize,
    ) -> Vec<Outcome> {
        let all = |outcome: Outcome| -> Vec<Outcome> { vec![outcome; recipients.len()] };
        let (mut plan, context) = match self.plan(hop, envelope, queue_id).await {
            Ok(plan) => plan,
            Err(outcome) => return all(outcome),
        };
        loop {
            match plan.next() {
                Step::Lookup(host) => {
                    let result = self
                        .resolver
                        .addresses_with_verdict(&host)
                        .await
                        .map_err(|error| {
                            tracing::info!(%queue_id, %host, %error, "MX host address lookup failed");
                            DnsFailure {
                                permanent: error.is_permanent(),
                                text: error.to_string(),
                            }
                        });
                    let Some(context) = &context else {
                        // Only MX plans look hosts up, and they always have a context.
                        plan.handle_addresses(&host, result.map(|(a, _)| a));
                        continue;
                    };
                    self.handle_mx_host(&mut plan, context, &host, result, envelope, queue_id)
                        .await;
                }
                Step::Attempt(target) => {
                    match self
                        .attempt(
                            &target,
                            envelope,
                            recipients,
                            payload,
                            message_len,
                            context.as_ref(),
                        )
                        .await
                    {
                        Ok(outcomes) => return outcomes,
                        Err(failure) => {
                            tracing::info!(%queue_id, reason = %failure.reason, "next hop failed, trying the next one if any");
                            plan.handle_failure(failure);
                        }
                    }
                }
                Step::Finish(outcome) => return all(outcome),
            }
        }
    }

    /// The failover plan of the hop (its targets, or MX hosts to expand), or a final outcome for
    /// every recipient. Cancel-safe: DNS lookups only.
    async fn plan(
        &self,
        hop: &NextHop,
        envelope: &Envelope,
        queue_id: QueueId,
    ) -> Result<(Plan, Option<MxContext>), Outcome> {
        let cap = self.settings.max_addresses_per_delivery;
        // Nothing tried at all. For MX routing that is the recipient domain's fault (5.4.4); a
        // relay or backend that cannot be found is our own configuration, which must not bounce
        // everybody's mail: defer (4.3.5, "system incorrectly configured").
        let if_nothing_tried = match hop {
            NextHop::Mx { domain } => Outcome::local(
                true,
                None,
                EnhancedStatus::new(5, 4, 4),
                format!("no address found for any mail exchanger of {domain}"),
            ),
            NextHop::Smarthost { host, .. } => Outcome::local(
                false,
                None,
                EnhancedStatus::new(4, 3, 5),
                format!("no address found for relay host {host}"),
            ),
            NextHop::Backend { addr, .. } => Outcome::local(
                false,
                None,
                EnhancedStatus::new(4, 3, 5),
                format!("backend {addr} could not be tried"),
            ),
        };
        // RFC 8689 §4.2.1 for hops without DNS-based policy: a relay host must be verified by
        // WebPKI, and an address literal authenticates nothing.
        let requiretls_unmet = |what: String| {
            tracing::info!(%queue_id, reason = %what, "REQUIRETLS cannot be met");
            Outcome::local(false, None, policy::REQUIRETLS_STATUS, what)
        };
        match hop {
            NextHop::Backend { addr, lmtp, tls } => Ok((
                Plan::fixed(
                    vec![Target {
                        name: addr.ip().to_string(),
                        addr: *addr,
                        lmtp: *lmtp,
                        tls: *tls,
                        verify: Verify::for_policy(*tls),
                        relay: false,
                    }],
                    cap,
                    if_nothing_tried,
                ),
                None,
            )),
            NextHop::Smarthost { host, tls, .. }
                if envelope.require_tls && *tls != TlsPolicy::Required =>
            {
                Err(requiretls_unmet(format!(
                    "the message requires TLS (REQUIRETLS) and relay host {host} is not \
                     configured with smarthost_tls = \"required\""
                )))
            }
            NextHop::Mx { domain } if envelope.require_tls && domain.is_address_literal() => {
                Err(requiretls_unmet(format!(
                    "the message requires TLS (REQUIRETLS) and {domain} is an address literal: \
                     no certificate can be verified for it"
                )))
            }
            NextHop::Smarthost { host, port, tls } => {
                let addresses = self
                    .resolver
                    .addresses(host)
                    .await
                    .map_err(|e| relay_dns_outcome(host, &e))?;
                let name = host
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_owned();
                Ok((
                    Plan::fixed(
                        addresses
                            .into_iter()
                            .map(|ip| Target {
                                name: name.clone(),
                                addr: SocketAddr::new(ip, *port),
                                lmtp: false,
                                tls: *tls,
                                verify: Verify::for_policy(*tls),
                                relay: true,
                            })
                            .collect(),
                        cap,
                        if_nothing_tried,
                    ),
                    None,
                ))
            }
            NextHop::Mx { domain } if domain.is_address_literal() => {
                // An address literal (RFC 5321 §4.1.3): connect to it, no DNS.
                let inner = domain
                    .as_str()
                    .trim_start_matches('[')
                    .trim_end_matches(']');
                let inner = inner
                    .strip_prefix("IPv6:")
                    .or_else(|| inner.strip_prefix("ipv6:"))
                    .unwrap_or(inner);
                let ip: std::net::IpAddr = inner.parse().map_err(|_| {
                    Outcome::local(
                        true,
                        None,
                        EnhancedStatus::new(5, 1, 2),
                        format!("{domain} is not a valid address literal"),
                    )
                })?;
                Ok((
                    Plan::fixed(
                        vec![Target {
                            name: ip.to_string(),
                            addr: SocketAddr::new(ip, self.settings.mx_port),
                            lmtp: false,
                            tls: self.settings.mx_tls,
                            verify: Verify::for_policy(self.settings.mx_tls),
                            relay: true,
                        }],
                        cap,
                        if_nothing_tried,
                    ),
                    None,
                ))
            }
            NextHop::Mx { domain } => {
                let (answer, mx_verdict) = match self.resolver.mx(domain.as_str()).await {
                    Ok(found) => found,
                    Err(error) => {
                        if error.is_bogus() {
                            // RFC 7672 §2.2.1: a bogus MX RRset is not "no MX"; hold the mail.
                            self.metrics
                                .tls_policy
                                .get_or_create(&metrics::TlsLabels {
                                    policy: "dane",
                                    result: "mx_bogus",
                                })
                                .inc();
                            tracing::warn!(%queue_id, %domain, %error, "MX lookup DNSSEC-bogus: deferred");
                        }
                        return Err(dns_outcome(&error));
                    }
                };
                if answer == MxAnswer::NullMx {
                    return Err(Outcome::local(
                        true,
                        None,
                        EnhancedStatus::new(5, 1, 10),
                        format!("{domain} publishes a null MX (RFC 7505): it accepts no mail"),
                    ));
                }
                let require = self
                    .settings
                    .destinations
                    .iter()
                    .any(|d| d.require_tls && d.domain == *domain);
                let tls = if require {
                    TlsPolicy::Required
                } else {
                    self.settings.mx_tls
                };
                let sts = if self.settings.mta_sts {
                    self.sts_policy(domain.as_str(), queue_id).await
                } else {
                    None
                };
                let context = MxContext {
                    domain: domain.as_str().to_owned(),
                    mx_secure: mx_verdict.is_secure(),
                    sts,
                    destination_require_tls: require,
                };
                let mut rng = rand::thread_rng();
                Ok((
                    Plan::mx(
                        &answer,
                        self.settings.shuffle_equal_mx.then_some(&mut rng),
                        self.settings.mx_port,
                        tls,
                        self.resolver.families(),
                        cap,
                        if_nothing_tried,
                    ),
                    Some(context),
                ))
            }
        }
    }

    /// One transaction with one target, on a pooled connection when one is idle. Not cancel-safe
    /// (see [`Connection::transaction`]); a dropped future drops its connection, never pools it.
    async fn attempt(
        &self,
        target: &Target,
        envelope: &Envelope,
        recipients: &[&Recipient],
        payload: session::Payload<'_>,
        message_len: usize,
        context: Option<&MxContext>,
    ) -> Result<Vec<Outcome>, HopFailure> {
        let mut connection = match self.take_idle(target).await {
            Some(connection) => {
                self.metrics.connections_reused.inc();
                connection
            }
            None => {
                let mut seen = TlsSeen::None;
                let opened = Connection::open(
                    target,
                    &self.settings.helo_name,
                    self.timeouts(),
                    &self.connectors,
                    &mut seen,
                )
                .await;
                if let Some(context) = context {
                    self.record_session(context, target, seen);
                }
                let connection = opened?;
                self.metrics.connections_opened.inc();
                tracing::debug!(mta = %target.label(), tls = ?connection.tls, "connected");
                connection
            }
        };
        if connection.capabilities().pipelining {
            self.metrics.transactions_pipelined.inc();
        }
        let result = connection
            .transaction(envelope, recipients, payload, message_len, &self.connectors)
            .await;
        let (result, reusable) = match result {
            TransactionResult::HopFailed { failure, reusable } => (Err(failure), reusable),
            TransactionResult::Done { outcomes, reusable } => (Ok(outcomes), reusable),
        };
        let limit = self.settings.max_messages_per_connection;
        if reusable && (limit == 0 || connection.transactions < limit) {
            self.put_idle(connection);
        } else if reusable {
            // The outcome goes back now, not after QUIT's reply (up to QUIT_TIMEOUT): until the
            // runner records a 250 a crash would deliver the message again (RFC 1047).
            let connectors = self.connectors.clone();
            tokio::spawn(async move { connection.quit(&connectors).await });
        }
        result
    }

    /// Applies the TLS policy to one MX host whose addresses were looked up: DANE lookup, the
    /// decision, its log line and metric, then the host's targets (or its refusal) into `plan`.
    /// Cancel-safe: DNS only.
    async fn handle_mx_host(
        &self,
        plan: &mut Plan,
        context: &MxContext,
        host: &str,
        result: Result<(Vec<std::net::IpAddr>, crate::resolve::Verdict), DnsFailure>,
        envelope: &Envelope,
        queue_id: QueueId,
    ) {
        let (addresses, addresses_secure) = match result {
            Ok((addresses, verdict)) => (Ok(addresses), verdict.is_secure()),
            Err(failure) => (Err(failure), false),
        };
        if !addresses.as_ref().is_ok_and(|a| !a.is_empty()) {
            // Nothing to connect to: the plan only learns the failure or the empty answer.
            plan.handle_addresses_with(host, addresses, self.settings.mx_tls, Verify::Any);
            return;
        }
        let dane = self
            .dane_lookup(context, host, addresses_secure, queue_id)
            .await;
        let decision = policy::tls_policy(PolicyInputs {
            host,
            mx_secure: context.mx_secure,
            dane: &dane,
            sts: context.sts.as_deref(),
            destination_require_tls: context.destination_require_tls,
            envelope_require_tls: envelope.require_tls,
            default: self.settings.mx_tls,
        });
        self.metrics
            .tls_policy
            .get_or_create(&metrics::TlsLabels {
                policy: decision.policy.as_str(),
                result: decision.requirement.as_str(),
            })
            .inc();
        tracing::info!(
            %queue_id,
            domain = %context.domain,
            mx = %host,
            policy = decision.policy.as_str(),
            requirement = decision.requirement.as_str(),
            requiretls = envelope.require_tls,
            "TLS policy"
        );
        let (tls, verify) = match decision.requirement {
            TlsRequirement::Refuse { status, text } => {
                tracing::info!(%queue_id, mx = %host, reason = %text, "MX host not used");
                if let DaneLookup::Failed { bogus, .. } = dane {
                    let kind = if bogus {
                        "dnssec-invalid"
                    } else {
                        "tlsa-invalid"
                    };
                    self.tlsrpt.record_tlsa_failure(&context.domain, host, kind);
                }
                plan.handle_refused(host, status, text);
                return;
            }
            TlsRequirement::Disabled => (TlsPolicy::Disabled, Verify::Any),
            TlsRequirement::Opportunistic => (TlsPolicy::Opportunistic, Verify::Any),
            TlsRequirement::ReportOnly => (TlsPolicy::Opportunistic, Verify::ReportOnly),
            TlsRequirement::Dane(records) => (TlsPolicy::Required, Verify::Dane(records)),
            TlsRequirement::EncryptOnly => (TlsPolicy::Required, Verify::Any),
            TlsRequirement::WebPki => (TlsPolicy::Required, Verify::WebPki),
        };
        plan.handle_addresses_with(host, addresses, tls, verify);
    }

    /// DANE for one MX host (RFC 7672 §2.2): looked up only when the resolver validates and
    /// the MX RRset and the host's addresses are secure. Cancel-safe: DNS only.
    async fn dane_lookup(
        &self,
        context: &MxContext,
        host: &str,
        addresses_secure: bool,
        queue_id: QueueId,
    ) -> DaneLookup {
        if !self.resolver.is_validating() || !context.mx_secure || !addresses_secure {
            return DaneLookup::NotApplicable;
        }
        match self.resolver.tlsa(25, host).await {
            Ok(Some((records, verdict))) if verdict.is_secure() => {
                if records.iter().any(|r| r.usable().is_ok()) {
                    DaneLookup::Usable(records)
                } else {
                    DaneLookup::NoUsableRecords
                }
            }
            Ok(_) => DaneLookup::NotApplicable,
            Err(error) => {
                tracing::warn!(%queue_id, mx = %host, %error, "TLSA lookup failed");
                DaneLookup::Failed {
                    bogus: error.is_bogus(),
                    text: error.to_string(),
                }
            }
        }
    }

    /// The MTA-STS policy of `domain` (RFC 8461 §5): the cached one while the `_mta-sts` id is
    /// unchanged, else fetched; a failed fetch or lookup keeps an unexpired cached policy.
    /// Cancel-safe: DNS and one HTTPS request.
    async fn sts_policy(&self, domain: &str, queue_id: QueueId) -> Option<Arc<mta_sts::Policy>> {
        let now = Instant::now();
        let cached = self.sts_cache.get(domain, now);
        let record = match self.resolver.txt("_mta-sts", domain).await {
            Ok(Some((texts, _))) => match mta_sts::select_record(&texts) {
                Ok(record) => Some(record),
                Err(error) => {
                    tracing::info!(%queue_id, %domain, %error, "MTA-STS record not usable");
                    None
                }
            },
            Ok(None) => None,
            Err(error) => {
                tracing::info!(%queue_id, %domain, %error, "MTA-STS record lookup failed");
                None
            }
        };
        let Some(record) = record else {
            return cached.map(|(_, policy)| policy);
        };
        if let Some((id, policy)) = &cached
            && *id == record.id
        {
            return Some(policy.clone());
        }
        if self.sts_cache.fetch_backing_off(domain, &record.id, now) {
            return cached.map(|(_, policy)| policy);
        }
        let host = format!("mta-sts.{domain}");
        let fetched = match self.resolver.addresses(&host).await {
            Ok(addresses) => self.fetcher.fetch(domain, &addresses).await,
            Err(error) => Err(sts_fetch::FetchError::Fetch {
                domain: domain.to_owned(),
                text: format!("{host}: {error}"),
            }),
        };
        match fetched {
            Ok(policy) => {
                tracing::info!(%queue_id, %domain, id = %record.id, mode = policy.mode.as_str(), max_age = policy.max_age.as_secs(), "MTA-STS policy fetched");
                self.sts_cache
                    .put(domain, record.id, policy.clone(), Instant::now());
                Some(policy)
            }
            Err(error) => {
                tracing::warn!(%queue_id, %domain, %error, "MTA-STS policy fetch failed");
                self.sts_cache
                    .fetch_failed(domain, &record.id, Instant::now());
                self.tlsrpt.record(
                    domain,
                    tlsrpt::PolicyType::Sts,
                    Vec::new(),
                    &host,
                    "",
                    tlsrpt::SessionResult::Failure(error.result_type()),
                );
                self.metrics
                    .tls_sessions
                    .get_or_create(&metrics::TlsLabels {
                        policy: "mta_sts",
                        result: error.result_type(),
                    })
                    .inc();
                cached.map(|(_, policy)| policy)
            }
        }
    }

    /// Counts a new connection's TLS result for TLS-RPT and the metrics.
    fn record_session(&self, context: &MxContext, target: &Target, seen: TlsSeen) {
        let sts = context
            .sts
            .as_deref()
            .filter(|p| p.mode != mta_sts::Mode::None);
        let (policy_type, policy_string, label) = match (&target.verify, sts) {
            (Verify::Dane(records), _) => (
                tlsrpt::PolicyType::Tlsa,
                records
                    .iter()
                    .map(|r| {
                        let data: String = r.data.iter().map(|b| format!("{b:02x}")).collect();
                        format!("{} {} {} {data}", r.usage, r.selector, r.matching)
                    })
                    .collect(),
                "dane",
            ),
            (_, Some(policy)) if !context.destination_require_tls => {
                (tlsrpt::PolicyType::Sts, policy.policy_strings(), "mta_sts")
            }
            _ => (tlsrpt::PolicyType::NoPolicyFound, Vec::new(), "none"),
        };
        let result = match seen {
            TlsSeen::Established { .. } => tlsrpt::SessionResult::Success,
            TlsSeen::Failed(kind) | TlsSeen::ReportOnlyFailed(kind) => {
                tlsrpt::SessionResult::Failure(kind)
            }
            // Plain text: a failure only where a policy wanted TLS.
            TlsSeen::None if target.verify == Verify::ReportOnly => {
                tlsrpt::SessionResult::Failure("starttls-not-supported")
            }
            TlsSeen::None => return,
        };
        let result_label = match result {
            tlsrpt::SessionResult::Success => "success",
            tlsrpt::SessionResult::Failure(kind) => kind,
        };
        self.metrics
            .tls_sessions
            .get_or_create(&metrics::TlsLabels {
                policy: label,
                result: result_label,
            })
            .inc();
        self.tlsrpt.record(
            &context.domain,
            policy_type,
            policy_string,
            &target.name,
            &target.addr.ip().to_string(),
            result,
        );
    }

    /// The TLS-RPT reports counted since the last call (RFC 8460), one per policy domain; the
    /// counters restart from zero.
    pub fn take_tls_reports(&self, meta: &tlsrpt::ReportMeta) -> Vec<(String, tlsrpt::Report)> {
        self.tlsrpt.take_reports(meta)
    }

    /// A handle for sending TLS-RPT reports (`crate::tlsrpt::TlsReporter`), sharing the counts.
    pub fn tls_report_source(&self) -> TlsReportSource {
        TlsReportSource {
            collector: self.tlsrpt.clone(),
            resolver: self.resolver.clone(),
            https: self.connectors.verified.clone(),
        }
    }

    fn timeouts(&self) -> Timeouts {
        Timeouts {
            connect: self.settings.connect_timeout,
            replies: client::Timeouts {
                greeting: self.settings.greeting_timeout,
                command: self.settings.command_timeout,
                data: self.settings.data_timeout,
            },
        }
    }

    fn hop_semaphore(&self, hop: &NextHop) -> Arc<Semaphore> {
        let key = hop.concurrency_key();
        let mut map = match self.per_hop.lock() {
            Ok(map) => map,
            Err(poisoned) => poisoned.into_inner(),
        };
        if map.len() > 4096 {
            // Forget hops nobody is delivering to, so the map does not grow with every domain.
            map.retain(|_, s| Arc::strong_count(s) > 1);
        }
        map.entry(key)
            .or_insert_with(|| {
                Arc::new(Semaphore::new(self.settings.max_connections_per_hop.max(1)))
            })
            .clone()
    }

    /// The most recently used idle connection to `target` that answers RSET. Cancel-safe in
    /// effect: a connection taken out and dropped mid-RSET is simply closed.
    async fn take_idle(&self, target: &Target) -> Option<Connection> {
        loop {
            let candidate = {
                let mut idle = match self.idle.lock() {
                    Ok(idle) => idle,
                    Err(poisoned) => poisoned.into_inner(),
                };
                let list = idle.get_mut(target)?;
                let now = Instant::now();
                list.retain(|c| now.duration_since(c.since) < self.settings.idle_timeout);
                let popped = list.pop();
                self.set_idle_gauge(&idle);
                popped
            };
            let mut connection = candidate?.connection;
            if connection.reset(&self.connectors).await {
                return Some(connection);
            }
            // Dead or confused: drop it and look at the next one.
        }
    }

    fn put_idle(&self, connection: Connection) {
        let mut idle = match self.idle.lock() {
            Ok(idle) => idle,
            Err(poisoned) => poisoned.into_inner(),
        };
        let now = Instant::now();
        // Sweep expired connections of every target on each return, so idle sockets do not
        // outlive the idle timeout by much without a separate reaper task.
        idle.retain(|_, list| {
            list.retain(|c| now.duration_since(c.since) < self.settings.idle_timeout);
            !list.is_empty()
        });
        let list = idle.entry(connection.target.clone()).or_default();
        if list.len() < self.settings.max_connections_per_hop.max(1) {
            list.push(IdleConnection {
                connection,
                since: now,
            });
        }
        self.set_idle_gauge(&idle);
    }

    fn set_idle_gauge(&self, idle: &HashMap<Target, Vec<IdleConnection>>) {
        let count: usize = idle.values().map(Vec::len).sum();
        self.metrics
            .connections_idle
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    /// Closes every idle connection (QUIT). For shutdown. Cancel-safe: a connection not yet
    /// closed when the future is dropped is closed by the drop.
    pub async fn close_idle(&self) {
        let all: Vec<Connection> = {
            let mut idle = match self.idle.lock() {
                Ok(idle) => idle,
                Err(poisoned) => poisoned.into_inner(),
            };
            let all = idle
                .drain()
                .flat_map(|(_, list)| list.into_iter().map(|c| c.connection))
                .collect();
            self.set_idle_gauge(&idle);
            all
        };
        for connection in all {
            connection.quit(&self.connectors).await;
        }
    }

    /// Number of idle pooled connections (for metrics and tests).
    pub fn idle_connections(&self) -> usize {
        let idle = match self.idle.lock() {
            Ok(idle) => idle,
            Err(poisoned) => poisoned.into_inner(),
        };
        idle.values().map(Vec::len).sum()
    }
}

/// Reads PEM certificates to trust as roots (`tls_ca_file`).
fn load_roots(
    path: &std::path::Path,
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, DeliverError> {
    use rustls::pki_types::pem::PemObject;
    let bad = |reason: String| DeliverError::CaFile {
        path: path.to_owned(),
        reason,
    };
    let roots = rustls::pki_types::CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(e.to_string()))?;
    if roots.is_empty() {
        return Err(bad("no certificate in the file".into()));
    }
    Ok(roots)
}

/// Decrements the in-flight gauge when a delivery ends or is dropped.
struct ActiveGuard<'a>(&'a prometheus_client::metrics::gauge::Gauge);

impl Drop for ActiveGuard<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// A DNS error as every recipient's outcome: NXDOMAIN and bad names fail (5.1.2), the rest defer.
fn dns_outcome(error: &ResolveError) -> Outcome {
    if error.is_permanent() {
        Outcome::local(true, None, EnhancedStatus::new(5, 1, 2), error.to_string())
    } else {
        Outcome::local(false, None, EnhancedStatus::new(4, 4, 3), error.to_string())
    }
}

/// A relay host that DNS cannot find is a configuration problem here, not the recipient's:
/// always deferred, so a typo in `[relay]` holds mail instead of bouncing all of it.
fn relay_dns_outcome(host: &str, error: &ResolveError) -> Outcome {
    let status = if error.is_permanent() {
        EnhancedStatus::new(4, 3, 5)
    } else {
        EnhancedStatus::new(4, 4, 3)
    };
    Outcome::local(false, None, status, format!("relay host {host}: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(code: u16, esc: [u8; 3]) -> RemoteReply {
        let [class, subject, detail] = esc;
        RemoteReply::from_reply(
            &client::Peer {
                host: "mx".into(),
                mta: "mx[192.0.2.1]:25".into(),
            },
            Stage::RcptTo,
            &reply::Reply {
                code,
                status: (class != 0)
                    .then(|| EnhancedStatus::new(class, u16::from(subject), u16::from(detail))),
                lines: vec!["text".into()],
            },
        )
    }

    #[test]
    fn reply_classes_table() {
        for (code, esc, delivered, permanent, status) in [
            (250, [2, 1, 5], true, false, "2.1.5"),
            (250, [0, 0, 0], true, false, "2.0.0"),
            (450, [4, 2, 0], false, false, "4.2.0"),
            (451, [0, 0, 0], false, false, "4.0.0"),
            (550, [5, 1, 1], false, true, "5.1.1"),
            (554, [0, 0, 0], false, true, "5.0.0"),
            (354, [0, 0, 0], false, false, "4.5.0"),
        ] {
            let outcome = Outcome::from_reply(reply(code, esc));
            assert_eq!(outcome.is_delivered(), delivered, "{code}");
            assert_eq!(outcome.is_permanent(), permanent, "{code}");
            assert_eq!(
                outcome.status().map(|s| s.to_string()).as_deref(),
                Some(status),
                "{code}"
            );
        }
    }

    #[test]
    fn reply_display_reads_like_postfix() {
        assert_eq!(
            reply(550, [5, 1, 1]).to_string(),
            "host mx[192.0.2.1]:25 said: 550 5.1.1 text (in reply to RCPT TO command)"
        );
        assert_eq!(reply(550, [5, 1, 1]).reply_line(), "550 5.1.1 text");
        assert_eq!(reply(550, [0, 0, 0]).reply_line(), "550 text");
        assert_eq!(reply(550, [0, 0, 0]).host, "mx");
    }

    #[test]
    fn outcomes_become_queue_diagnoses() {
        assert_eq!(
            Outcome::from_reply(reply(550, [5, 1, 1])).to_delivery_outcome(),
            DeliveryOutcome::Failed(Diagnosis {
                remote_mta: Some("mx".into()),
                reply: Some(DiagnosticCode::new(DiagnosticType::Smtp, "550 5.1.1 text")),
                local_reason: None,
                status: Some(EnhancedStatus::new(5, 1, 1)),
            })
        );
        assert_eq!(
            Outcome::local(
                false,
                Some("mx".into()),
                EnhancedStatus::new(4, 4, 1),
                "connect to mx[192.0.2.1]:25: refused".into()
            )
            .to_delivery_outcome(),
            DeliveryOutcome::Deferred(Diagnosis {
                remote_mta: Some("mx".into()),
                reply: None,
                local_reason: Some("connect to mx[192.0.2.1]:25: refused".into()),
                status: Some(EnhancedStatus::new(4, 4, 1)),
            })
        );
        // A 2xx is a relay unless the session learned more (DSN offered, or LMTP).
        assert!(matches!(
            Outcome::from_reply(reply(250, [2, 0, 0])).to_delivery_outcome(),
            DeliveryOutcome::Relayed(_)
        ));
        for (handoff, expect_delivered, expect_passed_on) in [
            (Handoff::Delivered, true, false),
            (Handoff::PassedOn, false, true),
        ] {
            let o = Outcome::Delivered {
                reply: reply(250, [2, 0, 0]),
                handoff,
            }
            .to_delivery_outcome();
            assert_eq!(matches!(o, DeliveryOutcome::Delivered(_)), expect_delivered);
            assert_eq!(matches!(o, DeliveryOutcome::PassedOn(_)), expect_passed_on);
        }
    }

    #[test]
    fn smarthost_specs_table() {
        let tls = TlsPolicy::Opportunistic;
        for (spec, expected) in [
            ("relay.example.net", Some(("relay.example.net", 25))),
            ("relay.example.net:587", Some(("relay.example.net", 587))),
            (
                "[relay.example.net]:2525",
                Some(("relay.example.net", 2525)),
            ),
            ("[relay.example.net]", Some(("relay.example.net", 25))),
            ("[192.0.2.1]:26", Some(("192.0.2.1", 26))),
            ("[2001:db8::1]:587", Some(("2001:db8::1", 587))),
            ("2001:db8::1", Some(("2001:db8::1", 25))),
            (" relay:25 ", Some(("relay", 25))),
            ("", None),
            ("relay:", None),
            ("relay:0", None),
            ("relay:99999", None),
            ("[relay", None),
            ("[relay]x", None),
            ("re lay:25", None),
        ] {
            let got = NextHop::smarthost(spec, tls).ok();
            let want = expected.map(|(host, port)| NextHop::Smarthost {
                host: host.into(),
                port,
                tls,
            });
            assert_eq!(got, want, "{spec:?}");
        }
    }

    #[test]
    fn concurrency_keys_are_case_insensitive() {
        let domain = |d: &str| Domain::parse(d).expect("a domain");
        let a = NextHop::Mx {
            domain: domain("Example.ORG"),
        };
        let b = NextHop::Mx {
            domain: domain("example.org"),
        };
        assert_eq!(a.concurrency_key(), b.concurrency_key());
    }
}
