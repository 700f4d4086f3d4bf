//! Delivery status notifications: RFC 3464 `multipart/report` messages with RFC 3461 semantics.
//!
//! [`build_dsn`] is pure: the original envelope and bytes, what happened to which recipient, the
//! reporting MTA's name and the time go in; the DSN's bytes and envelope come out, or `None` when
//! no DSN is owed (null sender, or NOTIFY asked for none of these events).
//!
//! Choices, all in the direction of "the sender can read it and nothing breaks on the way":
//! - The report is `message/delivery-status`, which RFC 3464 §2.1.2 wants in US-ASCII. A
//!   non-ASCII (SMTPUTF8) address is written with address type `utf-8` in the RFC 6533 §3
//!   `utf-8-addr-xtext` form (`\x{3B1}` for U+03B1), so the report stays 7-bit and a parser
//!   that knows RFC 6533 recovers the address exactly; the human-readable part spells it out in
//!   UTF-8. (`message/global-delivery-status` would avoid the escapes but is understood by far
//!   fewer parsers.)
//! - RET=FULL returns `message/rfc822` only in a DSN that reports a failure (RFC 3461 §4.3) and
//!   only up to [`DsnInput::max_full_bytes`]; otherwise, and for RET=HDRS or no RET, the
//!   headers go back as `text/rfc822-headers` (RFC 3462). When the full message is withheld the
//!   human-readable part says why. Returned content that is not valid 8bit MIME (lines over 998
//!   bytes, NUL, bare CR or LF) is not returned at all, since it could not travel intact; that too
//!   is said.
//! - Every line ends in CRLF and is at most 998 bytes (RFC 5322 §2.1.1); long fields are folded
//!   at spaces (§2.2.3).

use crate::envelope::{DsnReturn, Envelope, Notify, QueueId, Recipient};
use crate::status::{Diagnosis, DiagnosticCode, EnhancedStatus};
use crate::time::{UnixTime, rfc5322_date};
use std::fmt::Write as _;

/// What happened to one recipient, as far as this DSN reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReportOutcome {
    /// Permanently failed (5xx, or expired after 4xx): `Action: failed`.
    Failed(Diagnosis),
    /// Still being retried: `Action: delayed`.
    Delayed {
        /// The last temporary failure.
        diagnosis: Diagnosis,
        /// When the queue gives up (`Will-Retry-Until`).
        will_retry_until: UnixTime,
    },
    /// Delivered by the next hop (LMTP), reported only on NOTIFY=SUCCESS: `Action: delivered`.
    Delivered(Diagnosis),
    /// Accepted by a next hop that does not speak DSN, reported only on NOTIFY=SUCCESS:
    /// `Action: relayed` (RFC 3461 §5.2.3).
    Relayed(Diagnosis),
}

impl ReportOutcome {
    fn action(&self) -> &'static str {
        match self {
            ReportOutcome::Failed(_) => "failed",
            ReportOutcome::Delayed { .. } => "delayed",
            ReportOutcome::Delivered(_) => "delivered",
            ReportOutcome::Relayed(_) => "relayed",
        }
    }

    fn diagnosis(&self) -> &Diagnosis {
        match self {
            ReportOutcome::Failed(d)
            | ReportOutcome::Delayed { diagnosis: d, .. }
            | ReportOutcome::Delivered(d)
            | ReportOutcome::Relayed(d) => d,
        }
    }

    /// The `Status:` value: given, else from the reply, else the class default; a code of the
    /// wrong class for the action is replaced by the default rather than contradict the action
    /// (a failure may carry a 4.x.x code: the persistent transient error that made it expire).
    fn status(&self) -> EnhancedStatus {
        let d = self.diagnosis();
        let given = d
            .status
            .or_else(|| d.reply.as_ref().and_then(DiagnosticCode::status));
        let (fits, default): (&[u8], _) = match self {
            ReportOutcome::Failed(_) => (&[4, 5], EnhancedStatus::FAILED),
            ReportOutcome::Delayed { .. } => (&[4], EnhancedStatus::DELAYED),
            ReportOutcome::Delivered(_) | ReportOutcome::Relayed(_) => {
                (&[2], EnhancedStatus::DELIVERED)
            }
        };
        given.filter(|s| fits.contains(&s.class)).unwrap_or(default)
    }

    /// Whether the recipient's NOTIFY (RFC 3461 §4.1) asks for this event. No NOTIFY means
    /// FAILURE,DELAY (§4.1: "the default ... NOTIFY=FAILURE or NOTIFY=FAILURE,DELAY"; we pick
    /// the latter, like Postfix and Sendmail).
    pub(super) fn wanted_by(&self, notify: Option<Notify>) -> bool {
        let Some(n) = notify else {
            return !matches!(
                self,
                ReportOutcome::Delivered(_) | ReportOutcome::Relayed(_)
            );
        };
        if n.never {
            return false;
        }
        match self {
            ReportOutcome::Failed(_) => n.failure,
            ReportOutcome::Delayed { .. } => n.delay,
            ReportOutcome::Delivered(_) | ReportOutcome::Relayed(_) => n.success,
        }
    }
}

/// One recipient's line in a DSN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipientReport {
    /// Index into the original envelope's recipients (and the store's recipient states).
    pub recipient: usize,
    /// What happened.
    pub outcome: ReportOutcome,
    /// When the last attempt ended (`Last-Attempt-Date`), if there was one.
    pub last_attempt: Option<UnixTime>,
}

/// Everything a DSN is made from.
#[derive(Debug, Clone)]
pub struct DsnInput<'a> {
    /// The message's queue id, named in the text for the postmaster.
    pub queue_id: QueueId,
    /// The original envelope: sender, recipients with NOTIFY/ORCPT, RET, ENVID, arrival.
    pub envelope: &'a Envelope,
    /// The original message as queued.
    pub message: &'a [u8],
    /// Our host name (`Reporting-MTA: dns; ...`, `From: MAILER-DAEMON@...`).
    pub reporting_mta: &'a str,
    /// The time of the report (`Date:`).
    pub now: UnixTime,
    /// A fresh value per DSN (caller's RNG or counter) for `Message-ID` and the MIME boundary.
    pub message_id_seed: u64,
    /// What to report; recipients whose NOTIFY declines their event are left out here.
    pub reports: &'a [RecipientReport],
    /// The largest message returned whole on RET=FULL ([`super::Policy::dsn_max_full_bytes`]).
    pub max_full_bytes: u64,
}

/// A DSN ready to queue: it is sent like any other message, from `<>` (RFC 5321 §4.5.5: a
/// notification about delivery MUST use the null reverse-path, so no DSN ever answers a DSN).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dsn {
    /// The envelope recipient: the original sender.
    pub recipient: String,
    /// The RFC 5322 message, CRLF line endings.
    pub message: Vec<u8>,
    /// Whether the message has 8-bit content (send with BODY=8BITMIME).
    pub body_8bit: bool,
    /// Whether the recipient or headers need SMTPUTF8.
    pub smtputf8: bool,
    /// The reported message was received with REQUIRETLS: its DSN, which carries its headers
    /// or more, goes back under the same requirement (RFC 8689 §5).
    pub require_tls: bool,
}

impl Dsn {
    /// The envelope to queue the DSN under: null sender, the original sender as the one
    /// recipient, arrival `now`. Queue it with the store's `append` like received mail, so the
    /// DSN is as durable as the message it reports on.
    pub fn envelope(&self, reporting_mta: &str, now: UnixTime) -> Envelope {
        Envelope {
            body_8bit: self.body_8bit,
            smtputf8: self.smtputf8,
            require_tls: self.require_tls,
            ..Envelope::local(
                String::new(),
                self.recipient.clone(),
                reporting_mta.to_owned(),
                now.0,
            )
        }
    }
}

/// The longest line RFC 5322 §2.1.1 allows, without CRLF.
const MAX_LINE: usize = 998;
/// Where folding starts to look for a space (RFC 5322 §2.1.1's SHOULD).
const FOLD_AT: usize = 78;

/// What goes into the third part of the report.
enum Returned<'a> {
    /// `message/rfc822`: the whole message.
    Full(&'a [u8]),
    /// `text/rfc822-headers`, with the reason when the full message was asked for.
    Headers(&'a [u8], Option<String>),
    /// Nothing could be returned intact.
    Nothing(String),
}

/// Builds the DSN for `input`, or `None` when none is owed: the null sender never gets one
/// (RFC 5321 §4.5.5: it is how bounce loops are prevented), and recipients whose NOTIFY declines their event are not
/// reported (RFC 3461 §4.1), so a DSN with nobody to report is not sent.
pub fn build_dsn(input: &DsnInput<'_>) -> Option<Dsn> {
    let envelope = input.envelope;
    if envelope.sender.is_empty() {
        return None;
    }
    let reported: Vec<(&RecipientReport, &Recipient)> = input
        .reports
        .iter()
        .filter_map(|r| Some((r, envelope.recipients.get(r.recipient)?)))
        .filter(|(r, rcpt)| r.outcome.wanted_by(rcpt.notify))
        .collect();
    if reported.is_empty() {
        return None;
    }
    let any_failed = reported
        .iter()
        .any(|(r, _)| matches!(r.outcome, ReportOutcome::Failed(_)));
    let any_delayed = reported
        .iter()
        .any(|(r, _)| matches!(r.outcome, ReportOutcome::Delayed { .. }));
    let returned = choose_returned(input, any_failed);
    let mta = sanitize_token(input.reporting_mta);

    let human = human_part(input, &reported, &returned, &mta);
    let status = status_part(input, &reported, &mta);
    let (returned_type, returned_bytes): (&str, &[u8]) = match &returned {
        Returned::Full(bytes) => ("message/rfc822", bytes),
        Returned::Headers(bytes, _) => ("text/rfc822-headers", bytes),
        Returned::Nothing(_) => ("", &[]),
    };
    let human_8bit = !human.is_ascii();
    let returned_8bit = !returned_bytes.is_ascii();
    let body_8bit = human_8bit || returned_8bit;
    let boundary = pick_boundary(
        input,
        &[human.as_bytes(), status.as_bytes(), returned_bytes],
    );

    let mut out = String::new();
    push_field(
        &mut out,
        "From",
        &format!("Mail Delivery System <MAILER-DAEMON@{mta}>"),
    );
    // A UTF-8 sender stays UTF-8: the DSN goes to it with SMTPUTF8, which allows UTF-8 header
    // fields (RFC 6532 §3.2).
    push_field(
        &mut out,
        "To",
        &format!("<{}>", sanitize_text(&envelope.sender)),
    );
    let subject = if any_failed {
        "Undelivered Mail Returned to Sender"
    } else if any_delayed {
        "Delayed Mail (still being retried)"
    } else {
        "Successful Mail Delivery Report"
    };
    push_field(&mut out, "Subject", subject);
    push_field(&mut out, "Date", &rfc5322_date(input.now));
    push_field(
        &mut out,
        "Message-ID",
        &format!("<{:016x}.{}@{mta}>", input.message_id_seed, input.queue_id),
    );
    // RFC 3834 §5.2: marks it as automatic so vacation responders and lists do not answer it.
    push_field(&mut out, "Auto-Submitted", "auto-replied");
    push_field(&mut out, "MIME-Version", "1.0");
    push_field(
        &mut out,
        "Content-Type",
        &format!("multipart/report; report-type=delivery-status; boundary=\"{boundary}\""),
    );
    push_field(
        &mut out,
        "Content-Transfer-Encoding",
        if body_8bit { "8bit" } else { "7bit" },
    );
    out.push_str("\r\nThis is a MIME-encapsulated message.\r\n\r\n");

    // Part 1: for people (RFC 3464 §2: "a human readable explanation").
    let _ = write!(out, "--{boundary}\r\n");
    push_field(
        &mut out,
        "Content-Type",
        if human_8bit {
            "text/plain; charset=utf-8"
        } else {
            "text/plain; charset=us-ascii"
        },
    );
    push_field(&mut out, "Content-Description", "Notification");
    if human_8bit {
        push_field(&mut out, "Content-Transfer-Encoding", "8bit");
    }
    out.push_str("\r\n");
    out.push_str(&human);

    // Part 2: for programs.
    let _ = write!(out, "\r\n--{boundary}\r\n");
    push_field(&mut out, "Content-Type", "message/delivery-status");
    push_field(&mut out, "Content-Description", "Delivery report");
    out.push_str("\r\n");
    out.push_str(&status);

    let mut message = out.into_bytes();
    // Part 3: what the sender sent, as much as RET and the size cap allow.
    if !returned_type.is_empty() {
        let mut head = String::new();
        let _ = write!(head, "\r\n--{boundary}\r\n");
        push_field(&mut head, "Content-Type", returned_type);
        push_field(
            &mut head,
            "Content-Description",
            if matches!(returned, Returned::Full(_)) {
                "Undelivered Message"
            } else {
                "Message Headers"
            },
        );
        if returned_8bit {
            push_field(&mut head, "Content-Transfer-Encoding", "8bit");
        }
        head.push_str("\r\n");
        message.extend_from_slice(head.as_bytes());
        message.extend_from_slice(returned_bytes);
        if !returned_bytes.ends_with(b"\r\n") {
            message.extend_from_slice(b"\r\n");
        }
        // RFC 2046 §5.1.1: the CRLF before a delimiter belongs to the delimiter, so without this
        // one the returned content would lose its last line break.
        message.extend_from_slice(b"\r\n");
    } else {
        message.extend_from_slice(b"\r\n");
    }
    message.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());

    Some(Dsn {
        recipient: envelope.sender.clone(),
        message,
        body_8bit,
        smtputf8: !envelope.sender.is_ascii(),
        require_tls: envelope.require_tls,
    })
}

/// RET=FULL and at least one failure: the whole message if it is small enough and travels intact;
/// otherwise (and always for RET=HDRS, no RET, or a DSN of only delays and successes) the header
/// block. RFC 3461 §4.3 ties RET=FULL to "failed" DSNs.
fn choose_returned<'a>(input: &DsnInput<'a>, any_failed: bool) -> Returned<'a> {
    let message = input.message;
    let headers = header_block(message);
    let full_asked = any_failed && input.envelope.dsn_ret == Some(DsnReturn::Full);
    let mut reason = None;
    if full_asked {
        if (message.len() as u64) > input.max_full_bytes {
            reason = Some(format!(
                "The message is larger than {} bytes, so only its headers are returned.",
                input.max_full_bytes
            ));
        } else if valid_8bit_mime(message) {
            return Returned::Full(message);
        } else {
            reason = Some(
                "The message cannot be returned intact by mail (it has lines longer than 998 \
                 bytes or bare line breaks), so only its headers are returned."
                    .to_owned(),
            );
        }
    }
    if valid_8bit_mime(headers) {
        Returned::Headers(headers, reason)
    } else {
        Returned::Nothing(
            "The original headers cannot be returned intact by mail (lines longer than 998 \
             bytes or bare line breaks), so they are not included."
                .to_owned(),
        )
    }
}

/// The header section: everything up to and including the CRLF that ends the last header line,
/// without the empty line. A message without a body is all header.
fn header_block(message: &[u8]) -> &[u8] {
    if message.starts_with(b"\r\n") {
        return &[];
    }
    match message.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(end) => &message[..end + 2],
        None => message,
    }
}

/// Lines of at most 998 bytes, only CRLF line breaks, no NUL (RFC 2045 §2.8's "8bit data").
fn valid_8bit_mime(bytes: &[u8]) -> bool {
    let mut line_len = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            0 | b'\n' => return false,
            b'\r' => {
                if bytes.get(i + 1) != Some(&b'\n') {
                    return false;
                }
                line_len = 0;
                i += 2;
                continue;
            }
            _ => line_len += 1,
        }
        if line_len > MAX_LINE {
            return false;
        }
        i += 1;
    }
    true
}

/// A boundary that occurs in no part (RFC 2046 §5.1.1: it must not appear in the encapsulated
/// content), from characters RFC 2046 allows: a per-DSN prefix, a counter and a closing `=`.
///
/// The content is scanned once for our prefix and the counter is the smallest one not found
/// there. The closing `=` makes a clash an exact match, so `_1=` is not a prefix of `_12=`; and
/// one scan instead of one per candidate keeps a message stuffed with candidate boundaries from
/// costing quadratic time.
fn pick_boundary(input: &DsnInput<'_>, parts: &[&[u8]]) -> String {
    let prefix = format!("=_dsn_{:016x}_{}_", input.message_id_seed, input.queue_id);
    let needle = format!("--{prefix}");
    let needle = needle.as_bytes();
    let mut taken = std::collections::HashSet::new();
    for part in parts {
        let mut rest: &[u8] = part;
        while let Some(pos) = rest.windows(needle.len()).position(|w| w == needle) {
            rest = &rest[pos + needle.len()..];
            let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
            if rest.get(digits) == Some(&b'=')
                && let Some(n) = std::str::from_utf8(&rest[..digits])
                    .ok()
                    .and_then(|d| d.parse::<u64>().ok())
            {
                taken.insert(n);
            }
        }
    }
    // At most one number per occurrence is taken, so this stops within len + 1 candidates.
    let counter = (0u64..).find(|n| !taken.contains(n)).unwrap_or(u64::MAX);
    format!("{prefix}{counter}=")
}

fn human_part(
    input: &DsnInput<'_>,
    reported: &[(&RecipientReport, &Recipient)],
    returned: &Returned<'_>,
    mta: &str,
) -> String {
    let mut text = String::new();
    let para = |t: &mut String, s: &str| {
        wrap_into(t, s, "");
        t.push_str("\r\n");
    };
    para(&mut text, &format!("This is the mail system at {mta}."));
    let failed = reported
        .iter()
        .filter(|(r, _)| matches!(r.outcome, ReportOutcome::Failed(_)))
        .count();
    let delayed: Vec<UnixTime> = reported
        .iter()
        .filter_map(|(r, _)| match r.outcome {
            ReportOutcome::Delayed {
                will_retry_until, ..
            } => Some(will_retry_until),
            _ => None,
        })
        .collect();
    let relayed = reported
        .iter()
        .filter(|(r, _)| matches!(r.outcome, ReportOutcome::Relayed(_)))
        .count();
    let delivered = reported.len() - failed - delayed.len() - relayed;
    if failed > 0 {
        para(
            &mut text,
            "Your message could not be delivered to the recipients marked \"failed\" below. \
             This is permanent: the mail system has given up on them.",
        );
    }
    if let Some(until) = delayed.iter().max() {
        para(
            &mut text,
            &format!(
                "Your message has not yet been delivered to the recipients marked \"delayed\" \
                 below. The mail system keeps trying until {}; you do not need to send it \
                 again. This is only a warning.",
                rfc5322_date(*until)
            ),
        );
    }
    if delivered > 0 {
        para(
            &mut text,
            "Your message was delivered to the recipients marked \"delivered\" below, as you \
             asked to be told.",
        );
    }
    if relayed > 0 {
        para(
            &mut text,
            "Your message was passed on to the recipients marked \"relayed\" below. The next \
             mail system does not report deliveries, so you will not hear whether it reached \
             the mailbox.",
        );
    }
    para(
        &mut text,
        &format!(
            "If you need help, write to the postmaster of {mta} and include this report. The \
             queue id of your message is {}.",
            input.queue_id
        ),
    );
    match returned {
        Returned::Headers(_, Some(reason)) | Returned::Nothing(reason) => para(&mut text, reason),
        _ => {}
    }
    for (report, rcpt) in reported {
        // Human text: the address as the sender wrote it, UTF-8 included.
        let address = sanitize_text(&rcpt.address);
        let _ = write!(text, "<{address}>: {}\r\n", report.outcome.action());
        let d = report.outcome.diagnosis();
        let detail = match (&d.reply, &d.remote_mta, &d.local_reason) {
            (Some(reply), Some(host), _) => format!("{host} said: {}", one_line(&reply.text)),
            (Some(reply), None, _) => {
                format!("The remote server said: {}", one_line(&reply.text))
            }
            (None, _, Some(reason)) => one_line(reason),
            (None, Some(host), None) => format!("Accepted by {host}."),
            (None, None, None) => String::new(),
        };
        if !detail.is_empty() {
            // Remote text: no control character may reach the message (a bare CR would break it).
            wrap_into(&mut text, &sanitize_text(&detail), "    ");
        }
        if matches!(report.outcome, ReportOutcome::Failed(_)) && report.outcome.status().class == 4
        {
            // A temporary error that lasted until expiry (RFC 3463 §3.5, X.4.7).
            wrap_into(
                &mut text,
                "The mail system kept retrying until the message expired, then gave up.",
                "    ",
            );
        }
        text.push_str("\r\n");
    }
    text
}

fn status_part(
    input: &DsnInput<'_>,
    reported: &[(&RecipientReport, &Recipient)],
    mta: &str,
) -> String {
    let mut out = String::new();
    // Per-message fields (RFC 3464 §2.2).
    push_field(&mut out, "Reporting-MTA", &format!("dns; {mta}"));
    if let Some(envid) = &input.envelope.dsn_envid {
        push_field(&mut out, "Original-Envelope-Id", &envid_text(envid));
    }
    push_field(
        &mut out,
        "Arrival-Date",
        &rfc5322_date(UnixTime(input.envelope.arrival_unix)),
    );
    // Per-recipient fields (RFC 3464 §2.3), each group after an empty line.
    for (report, rcpt) in reported {
        out.push_str("\r\n");
        if let Some(orcpt) = &rcpt.orcpt {
            push_field(&mut out, "Original-Recipient", &orcpt_text(orcpt));
        }
        push_field(&mut out, "Final-Recipient", &typed_address(&rcpt.address));
        push_field(&mut out, "Action", report.outcome.action());
        push_field(&mut out, "Status", &report.outcome.status().to_string());
        let d = report.outcome.diagnosis();
        if let Some(host) = &d.remote_mta {
            push_field(
                &mut out,
                "Remote-MTA",
                &format!("dns; {}", sanitize_token(host)),
            );
        }
        if let Some(reply) = &d.reply {
            push_field(
                &mut out,
                "Diagnostic-Code",
                &format!(
                    "{}; {}",
                    reply.diagnostic_type.as_str(),
                    sanitize_header(&one_line(&reply.text))
                ),
            );
        } else if let Some(reason) = &d.local_reason {
            push_field(
                &mut out,
                "Diagnostic-Code",
                &format!("X-Dimegate; {}", sanitize_header(&one_line(reason))),
            );
        }
        if let Some(at) = report.last_attempt {
            push_field(&mut out, "Last-Attempt-Date", &rfc5322_date(at));
        }
        if let ReportOutcome::Delayed {
            will_retry_until, ..
        } = report.outcome
        {
            push_field(
                &mut out,
                "Will-Retry-Until",
                &rfc5322_date(will_retry_until),
            );
        }
    }
    out
}

/// `rfc822; addr` for an ASCII address, `utf-8; addr` in RFC 6533 §3 utf-8-addr-xtext form for
/// any other (see the module comment).
fn typed_address(address: &str) -> String {
    if address.bytes().all(|b| (0x21..0x7f).contains(&b)) {
        format!("rfc822; {address}")
    } else {
        format!("utf-8; {}", utf8_addr_xtext(address))
    }
}

/// RFC 6533 §3: printable ASCII except `+`, `=` and `\` as is; everything else as `\x{HEX}`
/// (upper-case hex of the code point, at least two digits).
fn utf8_addr_xtext(address: &str) -> String {
    let mut out = String::new();
    for c in address.chars() {
        let qchar = matches!(c, '!'..='~') && !matches!(c, '+' | '=' | '\\');
        if qchar {
            out.push(c);
        } else {
            let _ = write!(out, "\\x{{{:02X}}}", u32::from(c));
        }
    }
    out
}

/// RFC 3461 §4.2 ORCPT is `addr-type;xtext` on the wire; RFC 3464 §2.3.1 shows the address
/// itself. Decode the xtext when it yields printable ASCII, else keep the value as given (a
/// `utf-8` ORCPT is already in RFC 6533's ASCII form).
fn orcpt_text(orcpt: &str) -> String {
    let Some((kind, value)) = orcpt.split_once(';') else {
        return format!("rfc822; {}", sanitize_header(orcpt));
    };
    let kind = sanitize_token(kind.trim());
    let value = value.trim();
    match xtext_decode(value) {
        Some(decoded) if printable_ascii(&decoded) && !kind.eq_ignore_ascii_case("utf-8") => {
            format!("{kind}; {decoded}")
        }
        _ => format!("{kind}; {}", sanitize_header(value)),
    }
}

/// RFC 3461 §4.4 ENVID is xtext on the wire; RFC 3464 §2.2.1 carries the envelope id itself.
fn envid_text(envid: &str) -> String {
    match xtext_decode(envid) {
        Some(decoded) if printable_ascii(&decoded) => decoded,
        _ => sanitize_header(envid),
    }
}

/// Decodes RFC 3461 §4 xtext (`+HH` for a byte); `None` for a malformed escape or non-UTF-8.
fn xtext_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'+' {
            let hex = text.get(i + 1..i + 3)?;
            if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return None;
            }
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn printable_ascii(s: &str) -> bool {
    s.bytes().all(|b| (0x20..0x7f).contains(&b))
}

/// A multi-line SMTP reply on one line: the lines joined with a space.
fn one_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// For `message/delivery-status` and header values: printable ASCII, anything else as `?`
/// (the report must be US-ASCII, RFC 3464 §2.1.2; a control byte would break the syntax).
fn sanitize_header(text: &str) -> String {
    text.chars()
        .map(|c| if matches!(c, ' '..='~') { c } else { '?' })
        .collect()
}

/// Like [`sanitize_header`], for the human part: UTF-8 stays, control characters go.
fn sanitize_text(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// A host name or address type: printable ASCII without spaces.
fn sanitize_token(text: &str) -> String {
    text.chars()
        .map(|c| if matches!(c, '!'..='~') { c } else { '?' })
        .collect()
}

/// `Name: value` folded at spaces (RFC 5322 §2.2.3) to about 78 columns, and never over 998.
fn push_field(out: &mut String, name: &str, value: &str) {
    let mut line = format!("{name}:");
    let mut words_on_line = 0;
    for word in value.split(' ').filter(|w| !w.is_empty()) {
        if words_on_line > 0 && line.len() + 1 + word.len() > FOLD_AT {
            out.push_str(&line);
            out.push_str("\r\n");
            line.clear();
            words_on_line = 0;
        }
        // Before the first word this is the space after the colon; after a fold it is the
        // whitespace that makes the next line a continuation.
        line.push(' ');
        push_hard_wrapped(out, &mut line, word, " ");
        words_on_line += 1;
    }
    out.push_str(&line);
    out.push_str("\r\n");
}

/// Appends `word` to `line`; when that would pass 998 bytes, flushes `line` to `out` and goes on
/// in a new line starting with `continue_with`. Only a single word longer than a line needs this.
fn push_hard_wrapped(out: &mut String, line: &mut String, word: &str, continue_with: &str) {
    for c in word.chars() {
        if line.len() + c.len_utf8() > MAX_LINE {
            out.push_str(line);
            out.push_str("\r\n");
            line.clear();
            line.push_str(continue_with);
        }
        line.push(c);
    }
}

/// Appends `text` as lines of about 76 columns, each starting with `indent`, CRLF-terminated.
fn wrap_into(out: &mut String, text: &str, indent: &str) {
    let mut line = String::from(indent);
    for word in text.split(' ').filter(|w| !w.is_empty()) {
        if line.len() > indent.len() && line.len() + 1 + word.len() > 76 {
            out.push_str(&line);
            out.push_str("\r\n");
            line = String::from(indent);
        }
        if line.len() > indent.len() {
            line.push(' ');
        }
        push_hard_wrapped(out, &mut line, word, indent);
    }
    out.push_str(&line);
    out.push_str("\r\n");
}

#[cfg(test)]
#[path = "dsn_tests.rs"]
mod tests;
