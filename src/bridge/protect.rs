//! Protect at rest: mail for a *cautious* hosted user (we hold only their signet) sealed to that
//! signet before it reaches the mailbox store, so the store holds ciphertext that only the user's
//! own client can open.
//!
//! The D/MIME message is sealed with the domain's bridge identity as author (the legacy sender is
//! named in the sealed headers: its own `From:`, plus `X-Envelope-From:` and the caller's
//! `Authentication-Results:` as in [`super::wrap`]), our org as origin (signed in the same pass)
//! and as destination, the user as recipient, and padded to a size bucket.
//!
//! # The MIME shape handed to the backend
//!
//! ```text
//! Date: <the original's>
//! From: <the original's>
//! To: <the original's>
//! Message-ID: <the original's>            (each only when the original has one)
//! Subject: DIME-protected message
//! MIME-Version: 1.0
//! Content-Type: multipart/mixed; boundary="=_dime-protected"
//!
//! --=_dime-protected
//! Content-Type: text/plain; charset=us-ascii
//!
//! (a fixed note: this message is encrypted; open it with a DIME client)
//! --=_dime-protected
//! Content-Type: application/vnd.dime.dmime
//! Content-Transfer-Encoding: base64
//! Content-Disposition: attachment; filename="message.dmime"
//!
//! (the D/MIME object, base64 in 76-character lines)
//! --=_dime-protected--
//! ```
//!
//! Why this shape: `multipart/mixed` with a fixed note, rather than a bare
//! `application/vnd.dime.dmime` body, so that a legacy client showing the mailbox says what the
//! message is instead of an opaque blob; the note is the same for every message, so it tells the
//! store nothing. A DIME client finds the object by its media type. The boundary starts with
//! `=_`, which cannot occur in base64 or in the note, so no content can end the part early.
//!
//! Outside stay only the fields a client needs to list and thread the mailbox: `Date`, `From`,
//! `To` and `Message-ID`, copied as they came (line endings made CRLF); the mailbox store sees
//! those for any mail it holds. `Subject` is replaced by a neutral one because it is content.
//! Everything else (`Cc`, `Received` with the sender's addresses, `In-Reply-To`, `References`,
//! the body) is only inside the sealed object.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use rand::{CryptoRng, RngCore};

use super::padding::Buckets;
use super::wrap::{named, seal, sealed_headers};
use super::{BridgeError, Identity, headers};
use crate::dime::Signet;
use crate::dime::message::Parties;

/// The media type of the part carrying the D/MIME object.
pub const MEDIA_TYPE: &str = "application/vnd.dime.dmime";
/// The subject the outer message carries.
pub const SUBJECT: &str = "DIME-protected message";
/// The multipart boundary.
pub const BOUNDARY: &str = "=_dime-protected";
/// The fields copied to the outside, in this order.
pub const OUTER_FIELDS: [&str; 4] = ["Date", "From", "To", "Message-ID"];

const NOTE: &str = "This message was encrypted with DIME for your mailbox when it arrived.\r\n\
                    Open the attached message.dmime with your DIME client to read it.\r\n";

/// What [`protect`] seals, for whom.
#[derive(Debug, Clone, Copy)]
pub struct ProtectInput<'a> {
    /// The message as queued (RFC 5322).
    pub message: &'a [u8],
    /// The SMTP envelope sender ("" for bounces).
    pub mail_from: &'a str,
    /// The cautious user's address.
    pub recipient: &'a str,
    /// The cautious user's signet (the only thing of theirs we hold).
    pub recipient_signet: &'a Signet,
    /// The domain's bridge identity: author of the sealed message.
    pub bridge: Identity<'a>,
    /// The bridge identity's address, as the origin envelope names it.
    pub bridge_address: &'a str,
    /// Our org: origin (signs) and destination.
    pub org: Identity<'a>,
    /// Our domain.
    pub domain: &'a str,
    /// An `Authentication-Results` value for the sealed headers (the legacy sender's checks).
    pub authentication_results: Option<&'a str>,
    /// The size buckets to pad to.
    pub padding: Buckets,
}

/// Seals `input.message` to the cautious user and returns the MIME message of the module
/// documentation.
pub fn protect(
    input: &ProtectInput<'_>,
    rng: &mut (impl CryptoRng + RngCore),
) -> Result<Vec<u8>, BridgeError> {
    let inner = sealed_headers(input.message, input.mail_from, input.authentication_results)?;
    let author = named(input.bridge.signet, input.bridge_address);
    let org = named(input.org.signet, input.domain);
    let recipient = named(input.recipient_signet, input.recipient);
    let parties = Parties {
        author: &author,
        origin: &org,
        destination: &org,
        recipient: &recipient,
    };
    let sealed = seal(
        &inner,
        &parties,
        input.bridge,
        input.org,
        &input.padding,
        rng,
    )?;

    let (fields, _) = headers::fields(input.message);
    let mut outer = Vec::new();
    for name in OUTER_FIELDS {
        if let Some(f) = fields.iter().find(|f| headers::is(f, name)) {
            for line in f.raw.split_inclusive(|b| *b == b'\n') {
                let line = line.strip_suffix(b"\n").unwrap_or(line);
                outer.extend_from_slice(line.strip_suffix(b"\r").unwrap_or(line));
                outer.extend_from_slice(b"\r\n");
            }
        }
    }
    Ok(carrying(&outer, &sealed))
}

/// A D/MIME message that arrived sealed for a cautious user, in the shape of the module
/// documentation, so the backend stores it as it came. We can read neither its author nor its
/// headers (only the user can), so the outside names what the destination envelope does: the
/// origin domain (as its postmaster, the one address every domain has), the recipient and the
/// time of arrival.
pub fn carry(
    sealed: &[u8],
    origin: &str,
    recipient: &str,
    received_at: crate::time::UnixTime,
) -> Result<Vec<u8>, BridgeError> {
    for (what, value) in [("origin", origin), ("recipient", recipient)] {
        if value.is_empty()
            || value
                .chars()
                .any(|c| c.is_control() || matches!(c, '<' | '>' | '"' | ' '))
        {
            return Err(BridgeError::BadValue {
                what,
                value: value.to_owned(),
            });
        }
    }
    let outer = format!(
        "Date: {}\r\nFrom: \"DIME mail via {origin}\" <postmaster@{origin}>\r\nTo: <{recipient}>\r\n",
        crate::time::rfc5322_date(received_at)
    );
    Ok(carrying(outer.as_bytes(), sealed))
}

/// The MIME message: `outer` fields (CRLF-terminated lines), then the note and `sealed` in
/// base64.
fn carrying(outer: &[u8], sealed: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(sealed.len() * 4 / 3 + outer.len() + 1024);
    out.extend_from_slice(outer);
    out.extend_from_slice(
        format!(
            "Subject: {SUBJECT}\r\n\
             MIME-Version: 1.0\r\n\
             Content-Type: multipart/mixed; boundary=\"{BOUNDARY}\"\r\n\
             \r\n\
             --{BOUNDARY}\r\n\
             Content-Type: text/plain; charset=us-ascii\r\n\
             \r\n\
             {NOTE}\
             --{BOUNDARY}\r\n\
             Content-Type: {MEDIA_TYPE}\r\n\
             Content-Transfer-Encoding: base64\r\n\
             Content-Disposition: attachment; filename=\"message.dmime\"\r\n\
             \r\n"
        )
        .as_bytes(),
    );
    let b64 = STANDARD.encode(sealed);
    for line in b64.as_bytes().chunks(76) {
        out.extend_from_slice(line);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bridge::testkit;
    use crate::dime::message::{Actor, open};
    use mail_parser::{MessageParser, MimeHeaders};
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn protected(msg: &[u8]) -> Vec<u8> {
        let w = testkit::world();
        protect(
            &ProtectInput {
                message: msg,
                mail_from: "someone@legacy.example",
                recipient: w.carol.address,
                recipient_signet: &w.carol.signet,
                bridge: w.south_bridge.identity(),
                bridge_address: w.south_bridge.address,
                org: w.south.identity(),
                domain: w.south.domain,
                authentication_results: Some("mx.south.test; spf=pass"),
                padding: Buckets::DEFAULT,
            },
            &mut StdRng::seed_from_u64(5),
        )
        .unwrap()
    }

    #[test]
    fn the_store_sees_listing_fields_and_ciphertext_only() {
        let w = testkit::world();
        let msg = "Received: from [192.0.2.7] by mx.legacy.example\r\n\
                   Date: Tue, 1 Dec 2026 10:00:00 +0000\r\n\
                   From: Someone <someone@legacy.example>\r\n\
                   To: Carol <carol@south.test>\r\n\
                   Cc: Secret Friend <friend@legacy.example>\r\n\
                   Subject: The merger is off\r\n\
                   Message-ID: <m42@legacy.example>\r\n\
                   \r\n\
                   Keep this quiet until Friday.\r\n";
        let out = protected(msg.as_bytes());
        let text = String::from_utf8(out.clone()).unwrap();
        for secret in ["merger", "Friday", "friend@", "192.0.2.7", "spf=pass"] {
            assert!(!text.contains(secret), "{secret} is visible");
        }

        let parsed = MessageParser::default().parse(&out).unwrap();
        assert_eq!(parsed.subject(), Some(SUBJECT));
        assert_eq!(parsed.message_id(), Some("m42@legacy.example"));
        assert!(text.starts_with(
            "Date: Tue, 1 Dec 2026 10:00:00 +0000\r\nFrom: Someone <someone@legacy.example>\r\nTo: Carol <carol@south.test>\r\nMessage-ID: <m42@legacy.example>\r\nSubject: "
        ));
        assert_eq!(parsed.attachment_count(), 1);
        let part = parsed.attachment(0).unwrap();
        let ct = part.content_type().unwrap();
        assert_eq!(
            format!("{}/{}", ct.ctype(), ct.subtype().unwrap()),
            MEDIA_TYPE
        );
        let sealed = part.contents();
        assert!(Buckets::DEFAULT.is_bucket(sealed.len()));

        // Only the user's key opens it, and inside is the whole original, sender named.
        let signets = [
            named(&w.south_bridge.signet, w.south_bridge.address),
            named(&w.south.signet, w.south.domain),
            named(&w.carol.signet, w.carol.address),
        ];
        let report = open(
            sealed,
            Actor::Recipient,
            w.carol.key.encryption_secret(),
            &signets,
        )
        .unwrap();
        let inner = String::from_utf8(report.rfc5322().unwrap()).unwrap();
        assert!(inner.contains("Subject: The merger is off\r\n"));
        assert!(inner.contains("X-Envelope-From: <someone@legacy.example>\r\n"));
        assert!(inner.contains("Authentication-Results: mx.south.test; spf=pass\r\n"));
        assert!(inner.ends_with("\r\n\r\nKeep this quiet until Friday.\r\n"));
        assert_eq!(report.origin_envelope.unwrap().author, "bridge@south.test");
        assert!(
            open(
                sealed,
                Actor::Recipient,
                w.bob.key.encryption_secret(),
                &signets
            )
            .is_err()
        );
    }

    #[test]
    fn lf_headers_are_copied_with_crlf_and_folding_kept() {
        let msg = b"Date: Tue, 1 Dec 2026 10:00:00 +0000\nFrom: A\n <a@legacy.example>\nTo: carol@south.test\nSubject: s\n\nb\n";
        let text = String::from_utf8(protected(msg)).unwrap();
        assert!(text.starts_with(
            "Date: Tue, 1 Dec 2026 10:00:00 +0000\r\nFrom: A\r\n <a@legacy.example>\r\nTo: carol@south.test\r\nSubject: DIME-protected message\r\n"
        ));
        assert!(!text.contains('\n') || !text.replace("\r\n", "").contains('\n'));
    }
}
