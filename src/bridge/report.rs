//! Failure reports for bridge-authored mail, on their way back to the legacy sender.
//!
//! Legacy mail wrapped for a DIME recipient has our domain's bridge identity as author, the
//! legacy envelope sender sealed inside as `X-Envelope-From`. When the recipient's gateway
//! cannot deliver its opened copy, it builds the RFC 3464 report and seals it to the author,
//! our bridge identity, which cannot read mail. So the report names, at the top of its header
//! block and sealed with the rest, the SMTP recipient it is for: `X-Envelope-To: <legacy
//! sender>`, the value the reporting gateway took from the original's verified
//! `X-Envelope-From` ([`address_report`]). We open it as the bridge identity and
//! [`returned_report`] takes the field out again, after checking that what we opened is a
//! delivery report at all; the caller decides whether its signatures make it ours to send on.

use super::headers;

/// The field a report for a bridge-authored message names its SMTP recipient in.
pub const ENVELOPE_TO_FIELD: &str = "X-Envelope-To";

/// Why an opened message cannot be returned to a legacy sender.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReportError {
    /// Its top-level type is not `multipart/report; report-type=delivery-status`.
    #[error("not a delivery status report (Content-Type {content_type:?})")]
    NotAReport {
        /// The `Content-Type` value, or empty when there is none.
        content_type: String,
    },
    /// It names no recipient to return it to, or more than one.
    #[error("the report names {count} X-Envelope-To recipients, not one")]
    Recipients {
        /// How many `X-Envelope-To` fields it has.
        count: usize,
    },
    /// The recipient it names is no mailbox (empty, no domain, or characters that do not
    /// belong in an SMTP path).
    #[error("the report's X-Envelope-To is no mailbox: {value:?}")]
    BadRecipient {
        /// The value.
        value: String,
    },
    /// Its header block starts with a folded line, which belongs to no field: a field put in
    /// front of it would take it as its own continuation.
    #[error("the report's header block starts with a continuation line")]
    LeadingContinuation,
}

/// A report ready to go on to its legacy recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Returned {
    /// The SMTP recipient: the legacy sender of the reported message.
    pub recipient: String,
    /// The report without its `X-Envelope-To` field.
    pub message: Vec<u8>,
}

/// `report` (an RFC 5322 message) with `X-Envelope-To: <recipient>` at the top, replacing any
/// such field: how the reporting gateway addresses a report for a bridge identity.
pub fn address_report(report: &[u8], recipient: &str) -> Result<Vec<u8>, ReportError> {
    if !is_mailbox(recipient) {
        return Err(ReportError::BadRecipient {
            value: recipient.to_owned(),
        });
    }
    let (rest, _) = headers::remove(report, |f| headers::is(f, ENVELOPE_TO_FIELD));
    if starts_folded(&rest) {
        return Err(ReportError::LeadingContinuation);
    }
    let mut out = Vec::with_capacity(rest.len() + recipient.len() + 20);
    out.extend_from_slice(format!("{ENVELOPE_TO_FIELD}: <{recipient}>\r\n").as_bytes());
    out.extend_from_slice(&rest);
    Ok(out)
}

/// The report in `opened` (a message opened for our bridge identity) and the legacy recipient
/// it names; an error for anything that is not a delivery report naming exactly one mailbox.
pub fn returned_report(opened: &[u8]) -> Result<Returned, ReportError> {
    let (fields, _) = headers::fields(opened);
    let content_type = fields
        .iter()
        .find(|f| headers::is(f, "Content-Type"))
        .map(|f| headers::unfolded(f.value))
        .unwrap_or_default();
    if !is_delivery_report(&content_type) {
        return Err(ReportError::NotAReport { content_type });
    }
    let named: Vec<String> = fields
        .iter()
        .filter(|f| headers::is(f, ENVELOPE_TO_FIELD))
        .map(|f| headers::unfolded(f.value))
        .collect();
    let [value] = named.as_slice() else {
        return Err(ReportError::Recipients { count: named.len() });
    };
    let recipient = value
        .strip_prefix('<')
        .and_then(|v| v.strip_suffix('>'))
        .filter(|v| is_mailbox(v))
        .ok_or_else(|| ReportError::BadRecipient {
            value: value.clone(),
        })?;
    let (message, _) = headers::remove(opened, |f| headers::is(f, ENVELOPE_TO_FIELD));
    if starts_folded(&message) {
        return Err(ReportError::LeadingContinuation);
    }
    Ok(Returned {
        recipient: recipient.to_owned(),
        message,
    })
}

fn starts_folded(message: &[u8]) -> bool {
    matches!(message.first(), Some(b' ' | b'\t'))
}

/// `multipart/report` with `report-type=delivery-status` (RFC 6522 §3, RFC 3464 §2), names and
/// values case-insensitive, the value quoted or not.
fn is_delivery_report(content_type: &str) -> bool {
    let mut parts = content_type.split(';');
    let media = parts.next().unwrap_or_default().trim();
    media.eq_ignore_ascii_case("multipart/report")
        && parts.any(|p| {
            p.split_once('=').is_some_and(|(name, value)| {
                name.trim().eq_ignore_ascii_case("report-type")
                    && value
                        .trim()
                        .trim_matches('"')
                        .eq_ignore_ascii_case("delivery-status")
            })
        })
}

/// A non-null SMTP mailbox as an envelope path can carry it: a local part and a domain, no
/// white space, controls or angle brackets (the value goes into `RCPT TO:<...>`).
fn is_mailbox(address: &str) -> bool {
    address.len() <= 320
        && address
            .rsplit_once('@')
            .is_some_and(|(local, domain)| !local.is_empty() && !domain.is_empty())
        && !address
            .chars()
            .any(|c| c.is_control() || c.is_whitespace() || c == '<' || c == '>')
}

#[cfg(test)]
mod tests {
    use super::*;

    const DSN: &str = "From: Mail Delivery System <MAILER-DAEMON@mx.other.test>\r\nTo: <carol@legacy.test>\r\nSubject: Undelivered Mail Returned to Sender\r\nMIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status;\r\n boundary=\"b1\"\r\n\r\n--b1\r\nContent-Type: message/delivery-status\r\n\r\nX-Envelope-To: <not@header.test>\r\n--b1--\r\n";

    #[test]
    fn an_addressed_report_comes_back_with_its_recipient_and_without_the_field() {
        let addressed = address_report(DSN.as_bytes(), "carol@legacy.test").unwrap();
        assert!(addressed.starts_with(b"X-Envelope-To: <carol@legacy.test>\r\nFrom: "));
        let r = returned_report(&addressed).unwrap();
        assert_eq!(r.recipient, "carol@legacy.test");
        assert_eq!(
            r.message,
            DSN.as_bytes(),
            "the report is returned as it was"
        );
        // Addressing again replaces, never adds.
        let twice = address_report(&addressed, "dave@legacy.test").unwrap();
        assert_eq!(
            returned_report(&twice).unwrap().recipient,
            "dave@legacy.test"
        );
    }

    #[test]
    fn anything_else_is_refused_with_its_reason() {
        let plain = b"X-Envelope-To: <carol@legacy.test>\r\nContent-Type: text/plain\r\n\r\nhi\r\n";
        assert!(matches!(
            returned_report(plain),
            Err(ReportError::NotAReport { .. })
        ));
        let mdn = b"X-Envelope-To: <carol@legacy.test>\r\nContent-Type: multipart/report; report-type=disposition-notification\r\n\r\n";
        assert!(matches!(
            returned_report(mdn),
            Err(ReportError::NotAReport { .. })
        ));
        let quoted = b"X-Envelope-To: <carol@legacy.test>\r\ncontent-type: Multipart/Report; boundary=x; REPORT-TYPE=\"Delivery-Status\"\r\n\r\n";
        assert_eq!(
            returned_report(quoted).unwrap().recipient,
            "carol@legacy.test"
        );
        // The field only counts in the header block: the body's copy above does not.
        assert_eq!(
            returned_report(DSN.as_bytes()),
            Err(ReportError::Recipients { count: 0 })
        );
        let two = [
            "X-Envelope-To: <a@legacy.test>\r\n".as_bytes(),
            &address_report(DSN.as_bytes(), "b@legacy.test").unwrap(),
        ]
        .concat();
        assert_eq!(
            returned_report(&two),
            Err(ReportError::Recipients { count: 2 })
        );
        for bad in [
            "<>",
            "carol@legacy.test",
            "<carol>",
            "<a b@c.test>",
            "<@c.test>",
        ] {
            let m = format!("X-Envelope-To: {bad}\r\n{DSN}");
            assert!(
                matches!(
                    returned_report(m.as_bytes()),
                    Err(ReportError::BadRecipient { .. })
                ),
                "{bad}"
            );
        }
        for bad in ["", "carol", "a>b@c.test", "a\r\nRCPT@c.test"] {
            assert!(address_report(DSN.as_bytes(), bad).is_err(), "{bad:?}");
        }
    }

    /// A folded line before the first field (the fuzzer's find): once the field in front of it
    /// is gone it would continue the next field put there, so neither function takes it.
    #[test]
    fn a_header_block_that_starts_folded_is_refused() {
        let folded = format!(" y=1\r\n{DSN}");
        assert_eq!(
            address_report(folded.as_bytes(), "carol@legacy.test"),
            Err(ReportError::LeadingContinuation)
        );
        let hidden = format!(" y=1\r\nX-Envelope-To: <carol@legacy.test>\r\n{DSN}");
        assert_eq!(
            returned_report(hidden.as_bytes()),
            Err(ReportError::LeadingContinuation)
        );
    }

    /// Hostile bytes: an answer, never a panic.
    #[test]
    fn arbitrary_bytes_never_panic() {
        for input in [
            &b""[..],
            b"\r\n",
            b"X-Envelope-To:",
            b"X-Envelope-To: <\xff@\xfe>\r\nContent-Type: multipart/report; report-type=delivery-status\r\n",
            b":::\r\n \r\n\t",
        ] {
            let _ = returned_report(input);
        }
    }
}
