//! Wrap: an RFC 5322 message from SMTP, sealed into one D/MIME message for one DIME recipient,
//! signed by its author and by our org as origin in the same pass, padded to a size bucket.
//!
//! The message is canonicalised as [`crate::dime::message`] documents (common headers first,
//! header line endings CRLF, body untouched); 8-bit bytes pass through. Before sealing, the
//! sealed headers get, at the top, `Authentication-Results:` (the caller's value, when given:
//! how the legacy sender authenticated) and `X-Envelope-From: <sender>` (the SMTP envelope
//! sender); any incoming `X-Envelope-From`, and any incoming `Authentication-Results` claiming the
//! same authserv-id as ours (RFC 8601 §5), are dropped first so a sender cannot forge them.

use rand::{CryptoRng, RngCore};

use super::padding::Buckets;
use super::{BridgeError, ENVELOPE_FROM_FIELD, Identity, header_safe, headers};
use crate::dime::Signet;
use crate::dime::message::{self, Parties, Party, SealOptions, SizePolicy};

/// What [`wrap`] seals, for whom.
#[derive(Debug, Clone, Copy)]
pub struct WrapInput<'a> {
    /// The message as queued (RFC 5322; may lack CRLF canon; may be 8-bit).
    pub message: &'a [u8],
    /// The SMTP envelope sender ("" for bounces).
    pub mail_from: &'a str,
    /// The one recipient this copy is sealed for.
    pub recipient: &'a str,
    /// The hosted user, or the domain's bridge identity for a legacy sender.
    pub author: Identity<'a>,
    /// The author's name as written in the origin envelope.
    pub author_address: &'a str,
    /// Our org: signs as origin in the same pass.
    pub origin: Identity<'a>,
    /// Our domain, as written in the destination envelope.
    pub origin_domain: &'a str,
    /// The recipient's org signet.
    pub destination: &'a Signet,
    /// The recipient's domain.
    pub destination_domain: &'a str,
    /// The recipient's user signet.
    pub recipient_signet: &'a Signet,
    /// An `Authentication-Results` value (`authserv-id; spf=pass ...`) for the sealed headers.
    pub authentication_results: Option<&'a str>,
    /// The size buckets to pad to.
    pub padding: Buckets,
}

/// Seals `input.message` for `input.recipient` (see the module documentation). Randomness comes
/// from `rng` only.
pub fn wrap(
    input: &WrapInput<'_>,
    rng: &mut (impl CryptoRng + RngCore),
) -> Result<Vec<u8>, BridgeError> {
    let message = sealed_headers(input.message, input.mail_from, input.authentication_results)?;
    let author = named(input.author.signet, input.author_address);
    let origin = named(input.origin.signet, input.origin_domain);
    let destination = named(input.destination, input.destination_domain);
    let recipient = named(input.recipient_signet, input.recipient);
    let parties = Parties {
        author: &author,
        origin: &origin,
        destination: &destination,
        recipient: &recipient,
    };
    seal(
        &message,
        &parties,
        input.author,
        input.origin,
        &input.padding,
        rng,
    )
}

/// The public half of `signet` under the name the envelope will carry.
pub(super) fn named(signet: &Signet, name: &str) -> Party {
    let mut p = Party::from_signet(signet);
    p.name = name.to_owned();
    p
}

/// Seals as `author`, signs as `origin` in the same pass, pads by `size`.
pub(super) fn seal(
    message: &[u8],
    parties: &Parties<'_>,
    author: Identity<'_>,
    origin: Identity<'_>,
    size: &dyn SizePolicy,
    rng: &mut (impl CryptoRng + RngCore),
) -> Result<Vec<u8>, BridgeError> {
    let options = SealOptions {
        origin_signing_key: Some(origin.key.signing_key()),
        ..SealOptions::default()
    };
    Ok(message::seal_sized(
        message,
        parties,
        author.key.signing_key(),
        &options,
        size,
        rng,
    )?)
}

/// `message` with our `X-Envelope-From` and `Authentication-Results` at the top, and any
/// incoming fields that would pass for ours removed.
pub(super) fn sealed_headers(
    message: &[u8],
    mail_from: &str,
    authentication_results: Option<&str>,
) -> Result<Vec<u8>, BridgeError> {
    header_safe("the envelope sender", mail_from)?;
    let ours = match authentication_results {
        Some(v) => {
            header_safe("the Authentication-Results value", v)?;
            let id = headers::authserv_id(v.as_bytes()).ok_or_else(|| BridgeError::BadValue {
                what: "the Authentication-Results value (no authserv-id)",
                value: v.to_owned(),
            })?;
            Some((v, id))
        }
        None => None,
    };
    let (rest, _) = headers::remove(message, |f| {
        headers::is(f, ENVELOPE_FROM_FIELD)
            || ours.as_ref().is_some_and(|(_, id)| {
                headers::is(f, "Authentication-Results")
                    && headers::authserv_id(f.value).is_some_and(|v| v.eq_ignore_ascii_case(id))
            })
    });
    let mut out = Vec::with_capacity(rest.len() + 256);
    if let Some((v, _)) = ours {
        out.extend_from_slice(format!("Authentication-Results: {v}\r\n").as_bytes());
    }
    out.extend_from_slice(format!("{ENVELOPE_FROM_FIELD}: <{mail_from}>\r\n").as_bytes());
    out.extend_from_slice(&rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bridge::testkit;
    use crate::dime::message::{Actor, canonical_form, open};
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn wrapped_message_opens_as_all_four_actors() {
        let w = testkit::world();
        let mut rng = StdRng::seed_from_u64(1);
        let msg = testkit::mail("alice@north.test", "bob@south.test");
        let ar = "mx.north.test; spf=pass smtp.mailfrom=alice@north.test";
        let sealed = w
            .wrap(msg.as_bytes(), Some(ar), Buckets::DEFAULT, &mut rng)
            .unwrap();
        let parties = w.parties_north_to_south();
        let keys = [
            (Actor::Author, &w.alice.key),
            (Actor::Origin, &w.north.key),
            (Actor::Destination, &w.south.key),
            (Actor::Recipient, &w.bob.key),
        ];
        let expected =
            canonical_form(&sealed_headers(msg.as_bytes(), "alice@north.test", Some(ar)).unwrap())
                .unwrap();
        for (actor, key) in keys {
            let report = open(&sealed, actor, key.encryption_secret(), &parties)
                .unwrap_or_else(|e| panic!("{actor}: {e}"));
            assert!(report.check().is_ok());
            match actor {
                Actor::Author | Actor::Recipient => {
                    let rebuilt = report.rfc5322().unwrap();
                    assert_eq!(
                        String::from_utf8_lossy(&rebuilt),
                        String::from_utf8_lossy(&expected)
                    );
                    let text = String::from_utf8(rebuilt).unwrap();
                    assert!(text.contains(&format!("\r\nAuthentication-Results: {ar}\r\n")));
                    assert!(text.contains("\r\nX-Envelope-From: <alice@north.test>\r\n"));
                }
                Actor::Origin => {
                    let env = report.origin_envelope.clone().unwrap();
                    assert_eq!(env.author, "alice@north.test");
                    assert_eq!(env.destination, "south.test");
                    assert!(report.rfc5322().is_none());
                }
                Actor::Destination => {
                    let env = report.destination_envelope.clone().unwrap();
                    assert_eq!(env.recipient, "bob@south.test");
                    assert_eq!(env.origin, "north.test");
                    assert!(report.rfc5322().is_none());
                }
            }
        }
    }

    #[test]
    fn forged_fields_are_replaced() {
        let m = b"Authentication-Results: mx.north.test; spf=pass (forged)\r\nAuthentication-Results: other.example; dkim=pass\r\nX-Envelope-From: <ceo@north.test>\r\nSubject: s\r\n\r\nbody\r\n";
        let out = sealed_headers(m, "", Some("mx.north.test; spf=fail")).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "Authentication-Results: mx.north.test; spf=fail\r\nX-Envelope-From: <>\r\nAuthentication-Results: other.example; dkim=pass\r\nSubject: s\r\n\r\nbody\r\n"
        );
    }

    #[test]
    fn header_injection_is_refused() {
        for (from, ar) in [
            ("a@b\r\nBcc: x@y", None),
            ("a@b", Some("mx; spf=pass\r\nX-Evil: 1")),
            ("a@b", Some("  ")),
        ] {
            assert!(matches!(
                sealed_headers(b"Subject: s\r\n\r\n", from, ar),
                Err(BridgeError::BadValue { .. })
            ));
        }
    }

    #[test]
    fn unsealable_messages_are_5_6_0() {
        let w = testkit::world();
        let mut rng = StdRng::seed_from_u64(2);
        for m in [
            &b"Subject: no date\r\n\r\nx"[..],
            b"Date: d\r\nnot a header\r\n\r\n",
        ] {
            let e = w.wrap(m, None, Buckets::DEFAULT, &mut rng).unwrap_err();
            assert!(matches!(e, BridgeError::Unparsable(_)), "{e}");
            assert_eq!(e.status().to_string(), "5.6.0");
        }
    }

    #[test]
    fn lf_only_and_8bit_messages_wrap() {
        let w = testkit::world();
        let mut rng = StdRng::seed_from_u64(3);
        let m = "Date: Tue, 1 Dec 2026 10:00:00 +0000\nFrom: Ålice <alice@north.test>\nTo: bob@south.test\nSubject: Grüße\n\nbody \u{e9}\n".as_bytes();
        let sealed = w.wrap(m, None, Buckets::DEFAULT, &mut rng).unwrap();
        let report = open(
            &sealed,
            Actor::Recipient,
            w.bob.key.encryption_secret(),
            &w.parties_north_to_south(),
        )
        .unwrap();
        let rebuilt = report.rfc5322().unwrap();
        assert!(rebuilt.ends_with("\r\n\r\nbody \u{e9}\n".as_bytes()));
        assert!(
            String::from_utf8(rebuilt)
                .unwrap()
                .contains("Subject: Grüße\r\n")
        );
    }
}
