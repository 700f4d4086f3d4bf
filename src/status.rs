//! The vocabulary of delivery results that every transport and the queue share: RFC 3463
//! enhanced status codes ([`EnhancedStatus`]) and what is known about one attempt
//! ([`Diagnosis`]), with the RFC 3464 diagnostic type its remote reply is written in
//! ([`DiagnosticType`]).
//!
//! A leaf module: it uses no other module of the crate, so `queue` (which writes DSNs from it),
//! the transports (which fill it) and `smtp` (which answers with its codes) can all use it
//! without importing each other.

/// An RFC 3463 enhanced status code, `class.subject.detail`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EnhancedStatus {
    /// 2 (success), 4 (persistent transient failure) or 5 (permanent failure).
    pub class: u8,
    /// The subject (RFC 3463 §3: 0 other, 1 address, 2 mailbox, 3 mail system, ...).
    pub subject: u16,
    /// The detail within the subject.
    pub detail: u16,
}

impl EnhancedStatus {
    /// 2.0.0: delivered, nothing more to say.
    pub const DELIVERED: EnhancedStatus = EnhancedStatus::new(2, 0, 0);
    /// 4.0.0: a temporary failure the remote did not qualify.
    pub const DELAYED: EnhancedStatus = EnhancedStatus::new(4, 0, 0);
    /// 5.0.0: a permanent failure the remote did not qualify.
    pub const FAILED: EnhancedStatus = EnhancedStatus::new(5, 0, 0);
    /// 4.4.7: delivery time expired (RFC 3463 §3.5), for a message that timed out in the queue
    /// without a more precise last error.
    pub const EXPIRED: EnhancedStatus = EnhancedStatus::new(4, 4, 7);
    /// 5.1.3: bad destination mailbox address syntax (RFC 3463 §3.2).
    pub const BAD_ADDRESS: EnhancedStatus = EnhancedStatus::new(5, 1, 3);

    /// A code from its parts.
    pub const fn new(class: u8, subject: u16, detail: u16) -> EnhancedStatus {
        EnhancedStatus {
            class,
            subject,
            detail,
        }
    }

    /// Parses `5.1.1`: class 2, 4 or 5, subject and detail of one to three digits (RFC 3463 §2).
    pub fn parse(text: &str) -> Option<EnhancedStatus> {
        let mut parts = text.split('.');
        let class = parts.next()?;
        let subject = parts.next()?;
        let detail = parts.next()?;
        if parts.next().is_some() {
            return None;
        }
        let class = match class {
            "2" => 2,
            "4" => 4,
            "5" => 5,
            _ => return None,
        };
        let number = |s: &str| {
            if (1..=3).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit()) {
                s.parse::<u16>().ok()
            } else {
                None
            }
        };
        Some(EnhancedStatus::new(
            class,
            number(subject)?,
            number(detail)?,
        ))
    }

    /// The enhanced code that follows the reply code in an SMTP reply (`550 5.1.1 No such user`,
    /// `451-4.7.1 ...`), as RFC 2034 §4 places it.
    pub fn from_reply(reply: &str) -> Option<EnhancedStatus> {
        let first = reply.lines().next()?;
        let rest = first.get(4..)?;
        let token = rest.split_whitespace().next()?;
        EnhancedStatus::parse(token)
    }
}

impl std::fmt::Display for EnhancedStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.class, self.subject, self.detail)
    }
}

/// What is known about how an attempt went, whatever the transport.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Diagnosis {
    /// The host that answered (`Remote-MTA: dns; ...`), if one was reached.
    pub remote_mta: Option<String>,
    /// The remote's reply in its transport's terms (`550 5.1.1 No such user` over SMTP);
    /// becomes `Diagnostic-Code: <type>; ...`.
    pub reply: Option<DiagnosticCode>,
    /// A failure found here rather than reported by a remote (DNS, connection refused, expiry,
    /// policy). Becomes `Diagnostic-Code: X-Dimegate; ...` when there is no reply.
    pub local_reason: Option<String>,
    /// The enhanced status. When `None`, the one in `reply` is used, else a default of the
    /// outcome's class (5.0.0 / 4.0.0 / 2.0.0).
    pub status: Option<EnhancedStatus>,
}

/// The `diagnostic-type` of an RFC 3464 `Diagnostic-Code` field (§2.3.6): the protocol whose
/// reply the text is. Each transport states its own, so a DSN never calls a DMTP reply `smtp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DiagnosticType {
    /// An SMTP or LMTP reply (RFC 3464 §2.3.6: `smtp`), code first.
    Smtp,
    /// A DMTP reply, code first. DMTP has no registered diagnostic type, so it takes the
    /// `X-` form RFC 3464 §2.3.6 leaves for unregistered ones.
    Dmtp,
}

impl DiagnosticType {
    /// The name as the field writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            DiagnosticType::Smtp => "smtp",
            DiagnosticType::Dmtp => "X-DMTP",
        }
    }
}

/// A remote's reply as a DSN's `Diagnostic-Code` carries it: the protocol and the reply text
/// (several lines allowed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiagnosticCode {
    /// Which protocol's reply `text` is.
    pub diagnostic_type: DiagnosticType,
    /// The reply, code first for SMTP (`550 5.1.1 No such user`).
    pub text: String,
}

impl DiagnosticCode {
    /// A reply of `diagnostic_type`.
    pub fn new(diagnostic_type: DiagnosticType, text: impl Into<String>) -> DiagnosticCode {
        DiagnosticCode {
            diagnostic_type,
            text: text.into(),
        }
    }

    /// The enhanced status code in the reply, where the protocol puts one (SMTP: after the
    /// reply code, RFC 2034 §4).
    pub fn status(&self) -> Option<EnhancedStatus> {
        match self.diagnostic_type {
            DiagnosticType::Smtp => EnhancedStatus::from_reply(&self.text),
            // DMTP replies carry none (DIME.md §10.3); the transport sets the diagnosis's own.
            DiagnosticType::Dmtp => None,
        }
    }
}

/// How one delivery attempt for one recipient ended, as a transport reports it to the queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryOutcome {
    /// The next hop took responsibility (2xx after DATA) and its acceptance is the final
    /// delivery (LMTP without DSN): NOTIFY=SUCCESS gets `Action: delivered`.
    Delivered(Diagnosis),
    /// An SMTP next hop without the DSN extension took responsibility: NOTIFY=SUCCESS gets
    /// `Action: relayed` (RFC 3461 §5.2.3).
    Relayed(Diagnosis),
    /// A next hop with the DSN extension took responsibility, NOTIFY passed on: it reports
    /// success itself (RFC 3461 §5.2.2), so no success DSN from here.
    PassedOn(Diagnosis),
    /// A temporary failure (4xx, no connection, DNS SERVFAIL): try again later.
    Deferred(Diagnosis),
    /// A permanent failure (5xx, no such domain, unroutable): give up now.
    Failed(Diagnosis),
}
