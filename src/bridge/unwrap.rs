//! Unwrap: a D/MIME message opened back into RFC 5322 for delivery by SMTP/LMTP.
//!
//! **Inbound** (DMTP, for a trustful hosted user): open as destination with our org key and check
//! the origin's signatures (248/249/255) under the origin signet, and that the destination chunk
//! names the origin that handed the message over; open as recipient with the user's key; check
//! the author's signatures under the author signet (fetched by the caller between
//! [`unwrap_prepare`] and [`unwrap_finish`]), which must be the one the message names and must
//! validate under the origin's org signet. Author-side failures, a missing author signet
//! included, are not errors: the message is delivered with `dime=fail` and [`DimeResult::Fail`]
//! says why, so the caller's policy decides. Origin-side failures are errors (the DMTP listener
//! refuses those before the 250 already).
//!
//! **Exit** (DMTP submission from one of our authors, for a legacy mailbox): the recipient keyslot
//! is sealed to the domain's exit identity, the destination is our own org, and no origin has
//! signed yet. [`unwrap_exit_prepare`] opens as origin and refuses authors of other domains (no
//! open relay over DIME); [`unwrap_exit_finish`] requires the author's signet (under our org) and
//! valid author signatures, signs as origin ([`Exited::signed`]), opens as the exit identity and
//! rebuilds the message. Every failure there is an error: nothing unauthenticated leaves.
//!
//! The rebuilt message is [`crate::dime::message::Report::rfc5322`] with, prepended,
//! `Received: from <origin domain> by <hostname> with DMTP id <queue id>; <date>` and
//! `Authentication-Results: <hostname>; dime=pass|fail (...)` naming the author and origin
//! with their fingerprints. Any `Authentication-Results` inside that claims our host name is
//! dropped (RFC 8601 §5), and so is `X-Envelope-From`, whose value becomes
//! [`Unwrapped::envelope_from`]. On exit the verdict is always `dime=pass` (anything else was
//! refused): the receiving domain may ignore a field of ours (RFC 8601 §1.6), but the
//! recipient and our own backend see which DIME identity vouched for the mail.

use std::fmt;

use super::submit::{SubmitInput, submission_sign};
use super::wrap::named;
use super::{BridgeError, ENVELOPE_FROM_FIELD, Identity, headers, is_origin_chunk};
use crate::dime::message::{
    self, Actor, ChunkType, Decrypted, DestinationEnvelope, OpenError, OriginEnvelope, Report,
    Scope,
};
use crate::dime::{PrivateKey, Signet};
use crate::time::{UnixTime, rfc5322_date};

/// What [`unwrap_prepare`] and [`unwrap_finish`] open.
#[derive(Debug, Clone, Copy)]
pub struct UnwrapInput<'a> {
    /// The D/MIME message as received over DMTP.
    pub message: &'a [u8],
    /// Where the destination's checks stand.
    pub destination: Destination<'a>,
    /// The trustful recipient's user key.
    pub recipient_key: &'a PrivateKey,
    /// Our host name, for `Received:` and as the authserv-id of `Authentication-Results:`.
    pub hostname: &'a str,
    /// The queue id, for `Received:`.
    pub queue_id: &'a str,
    /// When the message arrived, for `Received:`.
    pub received_at: UnixTime,
    /// The origin's org signet (as the DMTP listener checked it).
    pub origin_signet: &'a Signet,
    /// The origin domain (the DMTP `MAIL FROM`).
    pub origin_domain: &'a str,
}

/// The destination's side of an inbound message: checked here, or before.
#[derive(Debug, Clone, Copy)]
pub enum Destination<'a> {
    /// Open as destination with our org key (this one) and check the origin's signatures and
    /// the destination chunk here.
    Open(&'a PrivateKey),
    /// The DMTP listener did, on these same bytes, before its `2xx` (`dmtp::listener`): the
    /// origin's signatures verified under [`UnwrapInput::origin_signet`] and the destination
    /// chunk named the origin and this recipient. Neither is checked again: the recipient's
    /// pass checks the author's signatures only.
    CheckedAtIngest {
        /// The recipient mailbox the destination chunk named.
        recipient: &'a str,
    },
}

/// Whose signet the caller must resolve before finishing, and what the envelopes say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NeedSignets {
    /// The author's mailbox, as the origin chunk names it.
    pub author: String,
    /// The author signet's crypto fingerprint, as the origin chunk names it.
    pub author_fingerprint: String,
    /// The origin domain.
    pub origin: String,
    /// The origin signet's crypto fingerprint.
    pub origin_fingerprint: String,
    /// The recipient mailbox, as the destination chunk names it (for exit: the legacy address).
    pub recipient: String,
}

/// Why the DIME checks did not pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailReason {
    /// No author signet was found for the fingerprint the message names.
    AuthorSignetMissing {
        /// The fingerprint the origin chunk names.
        fingerprint: String,
    },
    /// The signet supplied is not the one the message names (fingerprint or identifier).
    AuthorSignetMismatch {
        /// What the message names.
        named: String,
        /// What the supplied signet is.
        given: String,
    },
    /// The author signet does not validate under the origin's org signet.
    AuthorSignetInvalid {
        /// Why (the signet validation error).
        reason: String,
    },
    /// An author signature (a chunk's own, the tree or the full signature) fails.
    AuthorSignature {
        /// The chunk.
        chunk: ChunkType,
    },
    /// An origin signature fails, as the recipient sees it.
    OriginSignature {
        /// The chunk.
        chunk: ChunkType,
    },
}

impl fmt::Display for FailReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FailReason::AuthorSignetMissing { fingerprint } => {
                write!(f, "author signet not available [{fingerprint}]")
            }
            FailReason::AuthorSignetMismatch { named, given } => {
                write!(f, "author signet is {given}, the message names {named}")
            }
            FailReason::AuthorSignetInvalid { reason } => {
                write!(f, "author signet invalid under the origin signet: {reason}")
            }
            FailReason::AuthorSignature { chunk } => {
                write!(f, "author signature invalid in chunk {chunk}")
            }
            FailReason::OriginSignature { chunk } => {
                write!(f, "origin signature invalid in chunk {chunk}")
            }
        }
    }
}

/// The verdict of the DIME checks, as `Authentication-Results: ...; dime=` states it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DimeResult {
    /// Every author and origin signature verifies under signets that validate.
    Pass,
    /// Something did not; the message was still opened.
    Fail {
        /// What.
        reason: FailReason,
    },
}

/// An opened message, ready for the backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unwrapped {
    /// The rebuilt RFC 5322 message with our trace fields on top.
    pub rfc5322: Vec<u8>,
    /// The author's mailbox.
    pub author: String,
    /// The author signet's crypto fingerprint, as the message names it.
    pub author_fingerprint: String,
    /// The origin domain.
    pub origin: String,
    /// The origin signet's crypto fingerprint.
    pub origin_fingerprint: String,
    /// The recipient mailbox the destination chunk names.
    pub recipient: String,
    /// The SMTP envelope sender a bridge sealed in (`X-Envelope-From`), if any: `""` for a
    /// bounce. As trustworthy as [`Unwrapped::dime`] says.
    pub envelope_from: Option<String>,
    /// The verdict.
    pub dime: DimeResult,
}

/// What [`unwrap_prepare`] found: whose signet to resolve, and the message opened once as
/// destination (its checks passed) and decrypted once as recipient, for [`unwrap_finish`].
#[derive(Debug)]
pub struct Prepared<'a> {
    /// Whose signet the caller must resolve.
    pub need: NeedSignets,
    recipient: Decrypted<'a>,
}

/// Opens `input.message` as destination (the origin checks) and decrypts it as recipient, and
/// says which author signet to resolve.
pub fn unwrap_prepare<'a>(input: &UnwrapInput<'a>) -> Result<Prepared<'a>, BridgeError> {
    let origin = named(input.origin_signet, input.origin_domain);
    let recipient_named = match input.destination {
        Destination::CheckedAtIngest { recipient } => recipient.to_owned(),
        Destination::Open(key) => {
            let dest = message::inspect(
                input.message,
                Actor::Destination,
                key.encryption_secret(),
                std::slice::from_ref(&origin),
            )
            .map_err(|e| super::open_error(Actor::Destination, e))?;
            let denv = destination_envelope(&dest)?;
            if !denv.origin.eq_ignore_ascii_case(input.origin_domain)
                || denv.origin_fingerprint != origin.fingerprint
            {
                return Err(BridgeError::OriginMismatch {
                    expected: input.origin_domain.to_owned(),
                    found: denv.origin,
                    found_fingerprint: denv.origin_fingerprint,
                });
            }
            dest.check()
                .map_err(|e| super::open_error(Actor::Destination, e))?;
            denv.recipient
        }
    };
    let recipient = message::decrypt(
        input.message,
        Actor::Recipient,
        input.recipient_key.encryption_secret(),
    )
    .map_err(|e| super::open_error(Actor::Recipient, e))?;
    let oenv = recipient
        .origin_envelope()
        .cloned()
        .ok_or(BridgeError::Corrupt(OpenError::MalformedEnvelope {
            chunk: ChunkType::Origin,
        }))?;
    Ok(Prepared {
        need: NeedSignets {
            author: oenv.author,
            author_fingerprint: oenv.author_fingerprint,
            origin: input.origin_domain.to_owned(),
            origin_fingerprint: origin.fingerprint,
            recipient: recipient_named,
        },
        recipient,
    })
}

/// Checks the recipient's signatures of what `prepared` opened (from the same `input`) with the
/// author's signet (or without: `dime=fail`) and rebuilds the message.
pub fn unwrap_finish(
    input: &UnwrapInput<'_>,
    prepared: Prepared<'_>,
    author_signet: Option<&Signet>,
) -> Result<Unwrapped, BridgeError> {
    trace_safe(input.hostname, input.queue_id)?;
    let Prepared { need, recipient } = prepared;
    let origin = named(input.origin_signet, input.origin_domain);
    // One pass as recipient: the report only uses the author signet if its fingerprint is the
    // one named, and every other check on it follows from the envelope the pass reads.
    let mut signets = vec![origin];
    signets.extend(author_signet.map(|s| named(s, s.identifier().unwrap_or_default())));
    let scope = match input.destination {
        Destination::Open(_) => Scope::All,
        Destination::CheckedAtIngest { .. } => Scope::AuthorOnly,
    };
    let report = recipient.verify_scoped(&signets, scope);
    let mut reason = match author_signet {
        None => Some(FailReason::AuthorSignetMissing {
            fingerprint: need.author_fingerprint.clone(),
        }),
        Some(s) => author_signet_check(s, &need, input.origin_signet).err(),
    };
    if reason.is_none() {
        reason = match report.check() {
            Ok(()) => None,
            Err(OpenError::SignatureInvalid { chunk } | OpenError::SignatureMissing { chunk }) => {
                Some(if is_origin_chunk(chunk) {
                    FailReason::OriginSignature { chunk }
                } else {
                    FailReason::AuthorSignature { chunk }
                })
            }
            Err(OpenError::SignetMissing { fingerprint, .. }) => {
                Some(FailReason::AuthorSignetMissing { fingerprint })
            }
            Err(e) => return Err(BridgeError::Corrupt(e)),
        };
    }
    let dime = match reason {
        None => DimeResult::Pass,
        Some(reason) => DimeResult::Fail { reason },
    };
    let ar = authentication_results(input.hostname, &need, &dime);
    rebuild(
        &report,
        need,
        Trace {
            origin: input.origin_domain,
            hostname: input.hostname,
            queue_id: input.queue_id,
            received_at: input.received_at,
            authentication_results: Some(ar),
        },
        dime,
    )
}

pub(super) fn origin_envelope(r: &Report) -> Result<OriginEnvelope, BridgeError> {
    r.origin_envelope
        .clone()
        .ok_or(BridgeError::Corrupt(OpenError::MalformedEnvelope {
            chunk: ChunkType::Origin,
        }))
}

fn destination_envelope(r: &Report) -> Result<DestinationEnvelope, BridgeError> {
    r.destination_envelope
        .clone()
        .ok_or(BridgeError::Corrupt(OpenError::MalformedEnvelope {
            chunk: ChunkType::Destination,
        }))
}

/// The supplied author signet is the one named, for the address named, valid under `org`.
pub(super) fn author_signet_check(
    s: &Signet,
    need: &NeedSignets,
    org: &Signet,
) -> Result<(), FailReason> {
    let given = s.crypto_fingerprint().to_string();
    if given != need.author_fingerprint {
        return Err(FailReason::AuthorSignetMismatch {
            named: format!("[{}]", need.author_fingerprint),
            given: format!("[{given}]"),
        });
    }
    if let Some(id) = s.identifier()
        && !id.eq_ignore_ascii_case(&need.author)
    {
        return Err(FailReason::AuthorSignetMismatch {
            named: need.author.clone(),
            given: id.to_owned(),
        });
    }
    s.validate(Some(org))
        .map(|_| ())
        .map_err(|e| FailReason::AuthorSignetInvalid {
            reason: e.to_string(),
        })
}

/// What goes on top of the rebuilt message.
struct Trace<'a> {
    origin: &'a str,
    hostname: &'a str,
    queue_id: &'a str,
    received_at: UnixTime,
    authentication_results: Option<String>,
}

fn trace_safe(hostname: &str, queue_id: &str) -> Result<(), BridgeError> {
    for (what, v) in [("the host name", hostname), ("the queue id", queue_id)] {
        if v.is_empty()
            || v.chars()
                .any(|c| c.is_control() || c.is_whitespace() || c == ';')
        {
            return Err(BridgeError::BadValue {
                what,
                value: v.to_owned(),
            });
        }
    }
    Ok(())
}

/// `text` safe inside an RFC 5322 comment: parentheses and backslashes quoted, control
/// characters dropped (names from the envelope are hostile input).
fn comment_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '(' | ')' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

fn authentication_results(hostname: &str, need: &NeedSignets, dime: &DimeResult) -> String {
    let parties = format!(
        "author {} [{}]; origin {} [{}]",
        comment_text(&need.author),
        comment_text(&need.author_fingerprint),
        comment_text(&need.origin),
        comment_text(&need.origin_fingerprint),
    );
    match dime {
        DimeResult::Pass => format!("{hostname}; dime=pass ({parties})"),
        DimeResult::Fail { reason } => format!(
            "{hostname}; dime=fail ({}; {parties})",
            comment_text(&reason.to_string())
        ),
    }
}

fn rebuild(
    report: &Report,
    need: NeedSignets,
    trace: Trace<'_>,
    dime: DimeResult,
) -> Result<Unwrapped, BridgeError> {
    let inner = report
        .rfc5322()
        .ok_or(BridgeError::Corrupt(OpenError::MissingChunk {
            chunk: ChunkType::Common,
        }))?;
    let envelope_from = headers::fields(&inner)
        .0
        .iter()
        .find(|f| headers::is(f, ENVELOPE_FROM_FIELD))
        .map(|f| {
            let v = headers::unfolded(f.value);
            v.strip_prefix('<')
                .and_then(|v| v.strip_suffix('>'))
                .unwrap_or(&v)
                .to_owned()
        });
    let (rest, _) = headers::remove(&inner, |f| {
        headers::is(f, ENVELOPE_FROM_FIELD)
            || (headers::is(f, "Authentication-Results")
                && headers::authserv_id(f.value)
                    .is_some_and(|id| id.eq_ignore_ascii_case(trace.hostname)))
    });
    let mut out = Vec::with_capacity(rest.len() + 512);
    out.extend_from_slice(
        format!(
            "Received: from {} by {} with DMTP id {}; {}\r\n",
            trace.origin,
            trace.hostname,
            trace.queue_id,
            rfc5322_date(trace.received_at)
        )
        .as_bytes(),
    );
    if let Some(ar) = trace.authentication_results {
        out.extend_from_slice(format!("Authentication-Results: {ar}\r\n").as_bytes());
    }
    out.extend_from_slice(&rest);
    Ok(Unwrapped {
        rfc5322: out,
        author: need.author,
        author_fingerprint: need.author_fingerprint,
        origin: need.origin,
        origin_fingerprint: need.origin_fingerprint,
        recipient: need.recipient,
        envelope_from,
        dime,
    })
}

/// What [`unwrap_exit_prepare`] and [`unwrap_exit_finish`] open.
#[derive(Debug, Clone, Copy)]
pub struct ExitInput<'a> {
    /// The D/MIME message as the author's client submitted it over DMTP.
    pub message: &'a [u8],
    /// Our org: origin (it signs) and destination of the submission.
    pub org: Identity<'a>,
    /// Our domain.
    pub domain: &'a str,
    /// The domain's exit identity key: the recipient keyslot is sealed to it.
    pub exit_key: &'a PrivateKey,
    /// Our host name, for `Received:`.
    pub hostname: &'a str,
    /// The queue id, for `Received:`.
    pub queue_id: &'a str,
    /// When the submission arrived.
    pub received_at: UnixTime,
}

/// A submission opened for a legacy mailbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exited {
    /// The rebuilt message and who sent it ([`Unwrapped::recipient`] is the legacy address);
    /// `dime` is always [`DimeResult::Pass`] here.
    pub unwrapped: Unwrapped,
    /// The submission with our origin signatures filled in, as a DIME copy for the record or
    /// a DSN.
    pub signed: Vec<u8>,
}

/// Opens a submission as origin: who the author is, refused unless one of ours, for us.
pub fn unwrap_exit_prepare(input: &ExitInput<'_>) -> Result<NeedSignets, BridgeError> {
    let org = named(input.org.signet, input.domain);
    let as_origin = message::inspect(
        input.message,
        Actor::Origin,
        input.org.key.encryption_secret(),
        std::slice::from_ref(&org),
    )
    .map_err(|e| super::open_error(Actor::Origin, e))?;
    let oenv = origin_envelope(&as_origin)?;
    let author_domain = oenv.author.rsplit_once('@').map(|(_, d)| d);
    if !author_domain.is_some_and(|d| d.eq_ignore_ascii_case(input.domain)) {
        return Err(BridgeError::ForeignAuthor {
            author: oenv.author,
            domain: input.domain.to_owned(),
        });
    }
    if !oenv.destination.eq_ignore_ascii_case(input.domain) {
        return Err(BridgeError::WrongDestination {
            expected: input.domain.to_owned(),
            found: oenv.destination,
        });
    }
    // We are the destination too: the destination chunk names the legacy recipient.
    let as_destination = message::inspect(
        input.message,
        Actor::Destination,
        input.org.key.encryption_secret(),
        std::slice::from_ref(&org),
    )
    .map_err(|e| super::open_error(Actor::Destination, e))?;
    let denv = destination_envelope(&as_destination)?;
    Ok(NeedSignets {
        author: oenv.author,
        author_fingerprint: oenv.author_fingerprint,
        origin: input.domain.to_owned(),
        origin_fingerprint: org.fingerprint,
        recipient: denv.recipient,
    })
}

/// Checks the author, signs as origin, opens as the exit identity and rebuilds the message.
pub fn unwrap_exit_finish(
    input: &ExitInput<'_>,
    author_signet: Option<&Signet>,
) -> Result<Exited, BridgeError> {
    trace_safe(input.hostname, input.queue_id)?;
    let need = unwrap_exit_prepare(input)?;
    let signet = author_signet.ok_or_else(|| {
        BridgeError::AuthorSignet(FailReason::AuthorSignetMissing {
            fingerprint: need.author_fingerprint.clone(),
        })
    })?;
    let submitted = SubmitInput {
        message: input.message,
        org: input.org,
        domain: input.domain,
    };
    let (_, signed) = submission_sign(&submitted, signet)?;
    let signets = [
        named(input.org.signet, input.domain),
        named(signet, &need.author),
    ];
    let report = message::open(
        &signed,
        Actor::Recipient,
        input.exit_key.encryption_secret(),
        &signets,
    )
    .map_err(|e| super::open_error(Actor::Recipient, e))?;
    let ar = authentication_results(input.hostname, &need, &DimeResult::Pass);
    let unwrapped = rebuild(
        &report,
        need,
        Trace {
            origin: input.domain,
            hostname: input.hostname,
            queue_id: input.queue_id,
            received_at: input.received_at,
            authentication_results: Some(ar),
        },
        DimeResult::Pass,
    )?;
    Ok(Exited { unwrapped, signed })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bridge::padding::Buckets;
    use crate::bridge::testkit::{self, World};
    use crate::bridge::wrap::{WrapInput, wrap};
    use crate::dime::armor;
    use crate::dime::message::{Parties, SealOptions, canonical_form};
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    const HOST: &str = "mx.south.test";
    const AT: UnixTime = UnixTime(1_796_119_200);

    fn inbound<'a>(w: &'a World, msg: &'a [u8]) -> UnwrapInput<'a> {
        UnwrapInput {
            message: msg,
            destination: Destination::Open(&w.south.key),
            recipient_key: &w.bob.key,
            hostname: HOST,
            queue_id: "Q1",
            received_at: AT,
            origin_signet: &w.north.signet,
            origin_domain: "north.test",
        }
    }

    fn sealed(w: &World, msg: &str, ar: Option<&str>) -> Vec<u8> {
        w.wrap(
            msg.as_bytes(),
            ar,
            Buckets::DEFAULT,
            &mut StdRng::seed_from_u64(7),
        )
        .unwrap()
    }

    /// Both halves, as the runner calls them.
    fn open_all(
        input: &UnwrapInput<'_>,
        author: Option<&Signet>,
    ) -> Result<Unwrapped, BridgeError> {
        unwrap_finish(input, unwrap_prepare(input)?, author)
    }

    fn text(u: &Unwrapped) -> String {
        String::from_utf8(u.rfc5322.clone()).unwrap()
    }

    #[test]
    fn wrap_then_unwrap_passes_and_rebuilds_the_message() {
        let w = testkit::world();
        let mail = testkit::mail("alice@north.test", "bob@south.test");
        let ar = "mx.north.test; spf=pass smtp.mailfrom=alice@north.test";
        let msg = sealed(w, &mail, Some(ar));
        let input = inbound(w, &msg);
        let need = unwrap_prepare(&input).unwrap().need;
        assert_eq!(need.author, "alice@north.test");
        assert_eq!(
            need.author_fingerprint,
            w.alice.signet.crypto_fingerprint().to_string()
        );
        assert_eq!(need.recipient, "bob@south.test");
        let u = open_all(&input, Some(&w.alice.signet)).unwrap();
        assert_eq!(u.dime, DimeResult::Pass);
        assert_eq!(u.envelope_from.as_deref(), Some("alice@north.test"));
        let afp = w.alice.signet.crypto_fingerprint();
        let ofp = w.north.signet.crypto_fingerprint();
        let want = format!(
            "Received: from north.test by mx.south.test with DMTP id Q1; Tue, 01 Dec 2026 10:00:00 +0000\r\n\
             Authentication-Results: mx.south.test; dime=pass (author alice@north.test [{afp}]; origin north.test [{ofp}])\r\n\
             Date: Tue, 1 Dec 2026 10:00:00 +0000\r\n"
        );
        let got = text(&u);
        assert!(got.starts_with(&want), "{got}");
        // The rest is the canonical original, with the legacy sender's results kept.
        let canonical = String::from_utf8(canonical_form(mail.as_bytes()).unwrap()).unwrap();
        let rest = &got[want.len() - "Date: Tue, 1 Dec 2026 10:00:00 +0000\r\n".len()..];
        assert_eq!(
            rest.replace(&format!("Authentication-Results: {ar}\r\n"), ""),
            canonical
        );
        assert!(!got.contains("X-Envelope-From"));
    }

    #[test]
    fn missing_author_signet_is_dime_fail_not_an_error() {
        let w = testkit::world();
        let msg = sealed(
            w,
            &testkit::mail("alice@north.test", "bob@south.test"),
            None,
        );
        let u = open_all(&inbound(w, &msg), None).unwrap();
        let fp = w.alice.signet.crypto_fingerprint().to_string();
        assert_eq!(
            u.dime,
            DimeResult::Fail {
                reason: FailReason::AuthorSignetMissing {
                    fingerprint: fp.clone()
                }
            }
        );
        assert!(text(&u).contains(&format!(
            "\r\nAuthentication-Results: mx.south.test; dime=fail (author signet not available [{fp}]; author alice@north.test ["
        )));
        assert!(text(&u).ends_with("lunch at noon at the usual place?\r\n"));
    }

    #[test]
    fn someone_elses_signet_is_a_mismatch() {
        let w = testkit::world();
        let msg = sealed(
            w,
            &testkit::mail("alice@north.test", "bob@south.test"),
            None,
        );
        let u = open_all(&inbound(w, &msg), Some(&w.bob.signet)).unwrap();
        assert!(matches!(
            u.dime,
            DimeResult::Fail {
                reason: FailReason::AuthorSignetMismatch { .. }
            }
        ));
    }

    #[test]
    fn author_not_under_the_origin_fails_validation() {
        // mallory@south.test's mail sealed with north.test as origin.
        let w = testkit::world();
        let mail = testkit::mail("mallory@south.test", "bob@south.test");
        let msg = wrap(
            &WrapInput {
                message: mail.as_bytes(),
                mail_from: "mallory@south.test",
                recipient: w.bob.address,
                author: w.mallory.identity(),
                author_address: w.mallory.address,
                origin: w.north.identity(),
                origin_domain: "north.test",
                destination: &w.south.signet,
                destination_domain: "south.test",
                recipient_signet: &w.bob.signet,
                authentication_results: None,
                padding: Buckets::DEFAULT,
            },
            &mut StdRng::seed_from_u64(8),
        )
        .unwrap();
        let u = open_all(&inbound(w, &msg), Some(&w.mallory.signet)).unwrap();
        assert!(
            matches!(
                &u.dime,
                DimeResult::Fail {
                    reason: FailReason::AuthorSignetInvalid { .. }
                }
            ),
            "{:?}",
            u.dime
        );
    }

    #[test]
    fn results_claiming_our_host_are_stripped() {
        let w = testkit::world();
        let mail = testkit::mail_headers("alice@north.test", "bob@south.test").replace(
            "MIME-Version",
            "Authentication-Results: MX.south.test; dime=pass (forged)\r\nAuthentication-Results: mx.elsewhere; spf=none\r\nMIME-Version",
        ) + "hi\r\n";
        let msg = sealed(w, &mail, None);
        let got = text(&open_all(&inbound(w, &msg), Some(&w.alice.signet)).unwrap());
        assert!(!got.contains("forged"));
        assert!(got.contains("\r\nAuthentication-Results: mx.elsewhere; spf=none\r\n"));
        assert_eq!(
            got.matches("Authentication-Results: mx.south.test").count(),
            1
        );
    }

    #[test]
    fn origin_and_key_mismatches_are_errors() {
        let w = testkit::world();
        let msg = sealed(
            w,
            &testkit::mail("alice@north.test", "bob@south.test"),
            None,
        );
        let mut input = inbound(w, &msg);
        input.origin_domain = "other.test";
        assert!(matches!(
            unwrap_prepare(&input),
            Err(BridgeError::OriginMismatch { .. })
        ));
        let mut input = inbound(w, &msg);
        input.origin_signet = &w.south.signet;
        assert!(matches!(
            unwrap_prepare(&input),
            Err(BridgeError::OriginMismatch { .. })
        ));
        let mut input = inbound(w, &msg);
        input.recipient_key = &w.carol.key;
        assert_eq!(
            unwrap_prepare(&input).map(|p| p.need),
            Err(BridgeError::NotForUs(Actor::Recipient))
        );
        let mut input = inbound(w, &msg);
        input.destination = Destination::Open(&w.north.key);
        let e = unwrap_prepare(&input).unwrap_err();
        assert!(e.is_permanent() && e.status().subject == 1, "{e}");
        let mut input = inbound(w, &msg);
        input.queue_id = "Q1\r\nX-Evil: 1";
        assert!(matches!(
            open_all(&input, None),
            Err(BridgeError::BadValue { .. })
        ));
    }

    #[test]
    fn tampering_anywhere_is_refused_or_reported() {
        let w = testkit::world();
        let msg = sealed(
            w,
            &testkit::mail("alice@north.test", "bob@south.test"),
            None,
        );
        let good = open_all(&inbound(w, &msg), Some(&w.alice.signet)).unwrap();
        let mut reported = 0;
        for at in (0..msg.len()).step_by(msg.len() / 97) {
            let mut bad = msg.clone();
            bad[at] ^= 0x20;
            match open_all(&inbound(w, &bad), Some(&w.alice.signet)) {
                Err(e) => assert!(e.is_permanent(), "byte {at}: {e}"),
                // Only what no signature covers may change without notice: the tracing block,
                // and the author's and origin's keyslots of the last chunk (255), which neither
                // the destination nor the recipient can open (DIME.md §7.8: 255 signs 2..249).
                // Damage only the recipient can see (its own keyslots) is delivered as dime=fail.
                Ok(u) if u.dime != DimeResult::Pass => reported += 1,
                Ok(u) => {
                    let tracing = 4 + usize::from(u16::from_be_bytes([msg[2], msg[3]]));
                    let slots = msg.len() - 256..msg.len() - 128;
                    assert!(at < tracing || slots.contains(&at), "byte {at} accepted");
                    assert_eq!(u.rfc5322, good.rfc5322);
                }
            }
        }
        assert!(reported > 0);
        let truncated = unwrap_prepare(&inbound(w, &msg[..msg.len() - 1])).unwrap_err();
        assert_eq!(truncated.status().to_string(), "5.6.0");
    }

    /// What the DMTP listener checked is not checked again, and nothing else is skipped: over
    /// the same tampering sweep, the recipient-only pass passes a byte only where the full
    /// pass refused it on the destination's or the origin's grounds, which the listener
    /// refuses before its 2xx.
    #[test]
    fn checked_at_ingest_skips_the_destination_checks_only() {
        let w = testkit::world();
        let msg = sealed(
            w,
            &testkit::mail("alice@north.test", "bob@south.test"),
            None,
        );
        fn ingested<'a>(w: &'a World, m: &'a [u8]) -> UnwrapInput<'a> {
            UnwrapInput {
                destination: Destination::CheckedAtIngest {
                    recipient: "bob@south.test",
                },
                ..inbound(w, m)
            }
        }
        let full = open_all(&inbound(w, &msg), Some(&w.alice.signet)).unwrap();
        let fast = open_all(&ingested(w, &msg), Some(&w.alice.signet)).unwrap();
        assert_eq!(fast, full);
        let mut skipped = 0;
        for at in (0..msg.len()).step_by(msg.len() / 97) {
            let mut bad = msg.clone();
            bad[at] ^= 0x20;
            let full = open_all(&inbound(w, &bad), Some(&w.alice.signet));
            let fast = open_all(&ingested(w, &bad), Some(&w.alice.signet));
            let author_side = |r: &Result<Unwrapped, BridgeError>| match r {
                Ok(u) => matches!(
                    u.dime,
                    DimeResult::Fail {
                        reason: FailReason::AuthorSignature { .. }
                    }
                ),
                Err(BridgeError::NotForUs(Actor::Recipient)) => true,
                Err(_) => false,
            };
            if author_side(&full) {
                assert!(
                    !matches!(&fast, Ok(u) if u.dime == DimeResult::Pass),
                    "byte {at}: the author's damage passed"
                );
            }
            if matches!(&fast, Ok(u) if u.dime == DimeResult::Pass)
                && !matches!(&full, Ok(u) if u.dime == DimeResult::Pass)
            {
                skipped += 1;
                assert!(
                    !author_side(&full),
                    "byte {at}: skipped a check the recipient owns"
                );
            }
        }
        // The origin's and the destination's own bytes are among those swept.
        assert!(skipped > 0);
    }

    fn vector(name: &str) -> Vec<u8> {
        let path = format!(
            "{}/../shared/dime-vectors/d1-libdime/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    fn vector_key(name: &str) -> PrivateKey {
        PrivateKey::parse(&armor::decode_any(&vector(name)).unwrap()).unwrap()
    }

    /// libdime's own message, after the destination hop: unwrap as b.example for bob.
    #[test]
    fn libdime_vector_unwraps() {
        let (dest, recp) = (vector_key("dest.keys"), vector_key("recp.keys"));
        let orig = Signet::parse(&vector("orig.signet.bin")).unwrap();
        let auth = Signet::parse(&vector("auth.signet.bin")).unwrap();
        let msg = vector("msg.from_destination.bin");
        let input = UnwrapInput {
            message: &msg,
            destination: Destination::Open(&dest),
            recipient_key: &recp,
            hostname: "mx.b.example",
            queue_id: "V1",
            received_at: AT,
            origin_signet: &orig,
            origin_domain: "a.example",
        };
        let need = unwrap_prepare(&input).unwrap().need;
        assert_eq!(need.author, "alice@a.example");
        assert_eq!(need.recipient, "bob@b.example");
        let u = open_all(&input, Some(&auth)).unwrap();
        assert_eq!(u.dime, DimeResult::Pass);
        assert_eq!(u.envelope_from, None);
        let got = text(&u);
        let body = "Date: Thu, 26 Nov 2026 12:00:00 +0000\r\nTo: Bob <bob@b.example>\r\nFrom: Alice <alice@a.example>\r\nSubject: DIME test vector\r\nMessage-ID: <vec1@a.example>\r\n\r\nHello Bob,\r\nthis is a DIME test vector.\r\n";
        assert!(got.ends_with(body), "{got}");
        assert!(got.starts_with("Received: from a.example by mx.b.example with DMTP id V1; "));
        assert!(got.contains("; dime=pass (author alice@a.example ["));
        // The message before the destination hop is already complete: same result.
        let from_origin = vector("msg.from_origin.bin");
        let u2 = open_all(
            &UnwrapInput {
                message: &from_origin,
                ..input
            },
            Some(&auth),
        )
        .unwrap();
        assert_eq!(u2, u);
    }

    fn submission(w: &World, author: &testkit::User, to: &str) -> Vec<u8> {
        let a = named(&author.signet, author.address);
        let org = named(&w.north.signet, "north.test");
        let exit = named(&w.north_exit.signet, to);
        let mail = testkit::mail(author.address, to);
        message::seal(
            mail.as_bytes(),
            &Parties {
                author: &a,
                origin: &org,
                destination: &org,
                recipient: &exit,
            },
            author.key.signing_key(),
            &SealOptions::default(),
            &mut StdRng::seed_from_u64(11),
        )
        .unwrap()
    }

    fn exit_input<'a>(w: &'a World, msg: &'a [u8]) -> ExitInput<'a> {
        ExitInput {
            message: msg,
            org: w.north.identity(),
            domain: "north.test",
            exit_key: &w.north_exit.key,
            hostname: "mx.north.test",
            queue_id: "E1",
            received_at: AT,
        }
    }

    #[test]
    fn exit_opens_our_authors_mail_for_a_legacy_mailbox() {
        let w = testkit::world();
        let msg = submission(w, &w.alice, "dave@legacy.example");
        let input = exit_input(w, &msg);
        let need = unwrap_exit_prepare(&input).unwrap();
        assert_eq!(need.author, "alice@north.test");
        assert_eq!(need.recipient, "dave@legacy.example");
        let out = unwrap_exit_finish(&input, Some(&w.alice.signet)).unwrap();
        assert_eq!(out.unwrapped.recipient, "dave@legacy.example");
        assert_eq!(out.unwrapped.dime, DimeResult::Pass);
        let got = text(&out.unwrapped);
        assert!(got.starts_with(
            "Received: from north.test by mx.north.test with DMTP id E1; Tue, 01 Dec 2026 10:00:00 +0000\r\nAuthentication-Results: "
        ));
        assert!(got.contains(&format!(
            "\r\nAuthentication-Results: mx.north.test; dime=pass (author alice@north.test [{}]; origin north.test [",
            w.alice.signet.crypto_fingerprint()
        )));
        assert!(got.ends_with("lunch at noon at the usual place?\r\n"));
        // The signed copy passes a destination's checks; the submission did not.
        let org = [named(&w.north.signet, "north.test")];
        let key = w.north.key.encryption_secret();
        assert!(message::open(&out.signed, Actor::Destination, key, &org).is_ok());
        assert!(message::open(&msg, Actor::Destination, key, &org).is_err());
    }

    #[test]
    fn exit_refuses_what_it_cannot_authenticate() {
        let w = testkit::world();
        let msg = submission(w, &w.alice, "dave@legacy.example");
        let input = exit_input(w, &msg);
        assert!(matches!(
            unwrap_exit_finish(&input, None),
            Err(BridgeError::AuthorSignet(
                FailReason::AuthorSignetMissing { .. }
            ))
        ));
        assert!(matches!(
            unwrap_exit_finish(&input, Some(&w.north_bridge.signet)),
            Err(BridgeError::AuthorSignet(
                FailReason::AuthorSignetMismatch { .. }
            ))
        ));
        // A user of another domain: no relaying.
        let foreign = submission(w, &w.mallory, "dave@legacy.example");
        let e = unwrap_exit_prepare(&exit_input(w, &foreign)).unwrap_err();
        assert!(matches!(e, BridgeError::ForeignAuthor { .. }), "{e}");
        assert_eq!(e.status().to_string(), "5.7.1");
        // Damage to a chunk the origin can check: refused before we sign anything.
        let mut bad = msg.clone();
        let at = bad.len() - 700;
        bad[at] ^= 1;
        let e = unwrap_exit_finish(&exit_input(w, &bad), Some(&w.alice.signet)).unwrap_err();
        assert!(e.is_permanent(), "{e}");
    }
}
