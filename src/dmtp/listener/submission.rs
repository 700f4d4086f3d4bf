//! DMTP submission: how one of our own DIME authors hands us a message (the exit flow of
//! DESIGN.md §1, and DIME-to-DIME mail from a DIME client of ours).
//!
//! # How a submission is recognized
//!
//! A transfer whose `MAIL FROM` names a domain we serve is a submission: no other DX may speak
//! as our origin, and a message from another org always names its own domain there. A
//! submission must name our org signet's fingerprint in `MAIL` (575 otherwise) and our own
//! domain in `RCPT` (576 otherwise): the author's client submits to its own organization, which
//! is origin and, for the exit, destination too. The message is sealed by the author with our
//! org as origin and carries the author's signatures but no origin signatures yet.
//!
//! No origin signature can vouch for it, so the author's do, before the `2xx`
//! ([`crate::bridge::submission_sign`]): our origin keyslot must open (575); the author the
//! origin chunk names must be a hosted user of this domain (575: no relaying over DIME for
//! anyone else), the signet it names must be one of that user's generations and valid under our
//! org signet (575), and every author signature the origin can see must verify (578). Then we
//! sign as origin, and the origin chunk's destination decides:
//!
//! * **our own domain: the exit**, when the recipient keyslot is sealed to the domain's exit
//!   identity ([`crate::identity::bridge_address`], any of its key generations, newest first).
//!   It is opened here, the RFC 5322 message rebuilt with `Received:` and `Authentication-Results:
//!   <host>; dime=pass (author … [fingerprint]; origin …)`, and queued as ordinary mail from the
//!   author to the legacy mailbox the destination chunk names: the runner routes it like any
//!   mail to that domain (its DIME policy, the smarthost or its MX, its TLS policy), and a DSN
//!   goes to the author.
//! * **our own domain, for one of our DIME users**, when no exit key opens the recipient
//!   keyslot: we sign as origin and read the destination chunk as the destination we also are;
//!   the recipient it names must be a hosted user of ours holding the signet it names (510
//!   otherwise). It is queued as a DMTP arrival from our own org, for the runner to open for a
//!   trustful user or keep sealed for a cautious one, as mail from any other org.
//! * **another domain: DMTP.** The origin cannot read the recipient's mailbox (only the
//!   destination can), so the queued envelope names the domain alone, as `@<domain>`, with the
//!   signed message as its body and [`DimeArrival::origin`] our own domain; the runner passes it
//!   on over DMTP as it is.
//!
//! Nothing is queued for a refused submission.
//!
//! A submission is de-duplicated like any transfer (`Store::append_dmtp`, keyed on the bytes as
//! submitted): the same bytes again, a client's retry or a replay by whoever holds a copy, get
//! the first txid and are not queued twice, for as long as the de-duplication table remembers
//! them.

use super::{DmtpContext, TransferRefusal, TxId};
use crate::bridge::{
    self, BridgeError, ExitInput, Identity, SubmitInput, submission_prepare, submission_sign,
};
use crate::dime::Signet;
use crate::dime::message::Actor;
use crate::dmtp::server::Transfer;
use crate::envelope::{DimeArrival, Envelope, Recipient};
use crate::identity::{IdentityError, OrgIdentity, bridge_address};
use crate::time::UnixTime;
use std::net::SocketAddr;
use tracing::{info, warn};

/// The checks of the module documentation, then the durable append.
pub(super) async fn accept(
    ctx: &DmtpContext,
    org: &OrgIdentity,
    t: Transfer,
    peer: SocketAddr,
) -> Result<TxId, TransferRefusal> {
    if t.origin_fingerprint != org.signet.crypto_fingerprint() {
        warn!(origin = %org.domain, "submission names another org signet than ours");
        return Err(TransferRefusal::InvalidOriginSignet);
    }
    if !t.destination.as_str().eq_ignore_ascii_case(&org.domain) {
        warn!(origin = %org.domain, destination = %t.destination, "submission not addressed to its origin");
        return Err(TransferRefusal::WrongDestinationSignet);
    }
    let input = SubmitInput {
        message: &t.body,
        org: Identity {
            signet: &org.signet,
            key: &org.key,
        },
        domain: &org.domain,
    };
    let submission = submission_prepare(&input).map_err(|e| refusal(&org.domain, &e))?;
    let author_signet = hosted_signet(
        ctx,
        &submission.author,
        &submission.author_fingerprint,
        TransferRefusal::InvalidOriginSignet,
    )?;
    let arrival_unix = UnixTime::now().0;
    let mut envelope = Envelope {
        sender: submission.author.clone(),
        recipients: Vec::new(),
        dsn_ret: None,
        dsn_envid: None,
        body_8bit: true,
        smtputf8: false,
        helo: org.domain.clone(),
        client: peer,
        tls: Some("DMTPv1".into()),
        auth_user: Some(submission.author.clone()),
        arrival_unix,
        require_tls: false,
        dime: None,
    };
    let body = if submission.destination.eq_ignore_ascii_case(&org.domain) {
        let exit = bridge_address(&org.domain);
        let generations = ctx.keystore.user(&exit).map_err(|e| {
            warn!(error = %e, "exit identity unavailable");
            TransferRefusal::StoreFailed
        })?;
        let trace_id = format!("S{:016X}", rand::random::<u64>());
        // Newest first: after a rotation, mail sealed to the previous exit signet still opens.
        let mut opened = Err(BridgeError::NotForUs(Actor::Recipient));
        for generation in generations.generations.iter().rev().filter(|g| g.has_key) {
            let exit_key = ctx
                .keystore
                .user_key(&exit, generation.number)
                .map_err(|e| {
                    warn!(error = %e, "exit key unavailable");
                    TransferRefusal::StoreFailed
                })?;
            opened = bridge::unwrap_exit_finish(
                &ExitInput {
                    message: &t.body,
                    org: input.org,
                    domain: &org.domain,
                    exit_key: &exit_key,
                    hostname: &ctx.hostname,
                    queue_id: &trace_id,
                    received_at: UnixTime(arrival_unix),
                },
                Some(&author_signet),
            )
            .map(|exited| (exited, generation.number));
            if !matches!(opened, Err(BridgeError::NotForUs(Actor::Recipient))) {
                break;
            }
        }
        let (exited, exit_generation) = match opened {
            Ok(opened) => opened,
            // Not for the exit: for one of our own DIME users, then.
            Err(BridgeError::NotForUs(Actor::Recipient)) => {
                let body = local_user(ctx, org, &input, &author_signet, &mut envelope)?;
                return store(ctx, org, &submission, &t, envelope, body).await;
            }
            Err(e) => return Err(refusal(&org.domain, &e)),
        };
        let recipient = exited.unwrapped.recipient;
        if !is_mailbox(&recipient) {
            warn!(%recipient, "exit submission names no usable mailbox");
            return Err(TransferRefusal::InvalidRecipient);
        }
        info!(author = %submission.author, %recipient, exit_generation, trace_id, "exit: submission opened for a legacy mailbox");
        envelope.recipients.push(Recipient {
            address: recipient,
            notify: None,
            orcpt: None,
        });
        exited.unwrapped.rfc5322
    } else {
        let destination = crate::domain::Domain::parse(&submission.destination)
            .map_err(|_| TransferRefusal::Corrupted)?;
        let (_, signed) =
            submission_sign(&input, &author_signet).map_err(|e| refusal(&org.domain, &e))?;
        info!(author = %submission.author, destination = %destination, "submission signed as origin for DMTP");
        envelope.recipients.push(Recipient {
            address: format!("@{destination}"),
            notify: None,
            orcpt: None,
        });
        envelope.dime = Some(Box::new(DimeArrival {
            origin: org.domain.clone(),
            origin_fingerprint: org.signet.crypto_fingerprint().to_string(),
            recipient_fingerprint: submission.destination_fingerprint.clone(),
        }));
        signed
    };
    store(ctx, org, &submission, &t, envelope, body).await
}

/// For one of our own users (the exit's keyslot did not open): we sign as origin and read, as
/// the destination we are too, who it is for; that must be a hosted user of ours with the
/// signet it was sealed to (510 otherwise). It is then queued as a DMTP arrival from our own
/// org would be, so the runner opens it for a trustful user and keeps it sealed for a cautious
/// one.
fn local_user(
    ctx: &DmtpContext,
    org: &OrgIdentity,
    input: &SubmitInput<'_>,
    author_signet: &Signet,
    envelope: &mut Envelope,
) -> Result<Vec<u8>, TransferRefusal> {
    let (submission, signed) =
        submission_sign(input, author_signet).map_err(|e| refusal(&org.domain, &e))?;
    let dest = bridge::local_destination(input, &signed).map_err(|e| refusal(&org.domain, &e))?;
    hosted_signet(
        ctx,
        &dest.recipient,
        &dest.recipient_fingerprint,
        TransferRefusal::InvalidRecipient,
    )?;
    info!(author = %submission.author, recipient = %dest.recipient, "submission signed as origin for a DIME user of ours");
    envelope.recipients.push(Recipient {
        address: dest.recipient,
        notify: None,
        orcpt: None,
    });
    envelope.dime = Some(Box::new(DimeArrival {
        origin: org.domain.clone(),
        origin_fingerprint: org.signet.crypto_fingerprint().to_string(),
        recipient_fingerprint: dest.recipient_fingerprint,
    }));
    Ok(signed)
}

/// The durable append of a submission that passed its checks, de-duplicated.
async fn store(
    ctx: &DmtpContext,
    org: &OrgIdentity,
    submission: &bridge::Submission,
    t: &Transfer,
    envelope: Envelope,
    body: Vec<u8>,
) -> Result<TxId, TransferRefusal> {
    let size = body.len() as u64;
    // Keyed on the bytes as submitted: a client retrying a submission whose `2xx` it never
    // heard gets the first txid, and the same submission twice is queued once.
    let key = crate::store::DedupKey::for_transfer(&org.domain, &t.body);
    match ctx
        .store
        .append_dmtp(envelope, body, ctx.pressure.max_messages(), key)
        .await
    {
        Ok(crate::store::Appended::Seen(queue_id)) => {
            info!(%queue_id, author = %submission.author, "DMTP submission already queued: answered with its first txid");
            TxId::parse(&queue_id.to_string()).map_err(|_| TransferRefusal::StoreFailed)
        }
        Ok(crate::store::Appended::Stored(queue_id)) => {
            ctx.pressure.note_stored(size);
            ctx.queued.notify_one();
            info!(%queue_id, author = %submission.author, destination = %submission.destination, size, "DMTP submission queued");
            TxId::parse(&queue_id.to_string()).map_err(|_| TransferRefusal::StoreFailed)
        }
        Err(crate::store::AppendError::TooManyMessages { .. }) => Err(TransferRefusal::QueueFull),
        Err(e) if e.is_full() => Err(TransferRefusal::StoreFull),
        Err(e) => {
            warn!(error = %e, "DMTP submission store failed");
            Err(TransferRefusal::StoreFailed)
        }
    }
}

/// The generation of hosted user `address` whose signet has `fingerprint`: for the author, the
/// signet the submission's signatures must verify under; for a recipient of ours, the one it
/// was sealed to. `refusal` when there is no such user or generation.
fn hosted_signet(
    ctx: &DmtpContext,
    address: &str,
    fingerprint: &str,
    refusal: TransferRefusal,
) -> Result<Signet, TransferRefusal> {
    let user = match ctx.keystore.user(address) {
        Ok(u) => u,
        Err(
            IdentityError::UnknownUser(_)
            | IdentityError::NotServed(_)
            | IdentityError::BadAddress(_),
        ) => {
            warn!(%address, "submission names a user who is not hosted here");
            return Err(refusal);
        }
        Err(e) => {
            warn!(error = %e, "hosted-user look-up failed");
            return Err(TransferRefusal::StoreFailed);
        }
    };
    user.generations
        .into_iter()
        .map(|g| g.signet)
        .find(|s| s.crypto_fingerprint().to_string() == fingerprint)
        .ok_or_else(|| {
            warn!(%address, fingerprint, "submission names a signet the user does not have");
            refusal
        })
}

/// A bridge refusal as the DMTP code the table has for it: the origin-side codes, because the
/// author's signatures stand in for the origin's here.
fn refusal(domain: &str, e: &BridgeError) -> TransferRefusal {
    warn!(%domain, error = %e, "submission refused");
    match e {
        BridgeError::ForeignAuthor { .. }
        | BridgeError::AuthorSignet(_)
        | BridgeError::NotForUs(Actor::Origin | Actor::Author) => {
            TransferRefusal::InvalidOriginSignet
        }
        BridgeError::AuthorSignature(_) | BridgeError::OriginSignature(_) => {
            TransferRefusal::InvalidOriginSignature
        }
        BridgeError::NotForUs(Actor::Recipient) => TransferRefusal::InvalidRecipient,
        BridgeError::NotForUs(Actor::Destination) | BridgeError::WrongDestination { .. } => {
            TransferRefusal::WrongDestinationSignet
        }
        BridgeError::TooLarge(_) => TransferRefusal::TooLarge,
        _ => TransferRefusal::Corrupted,
    }
}

/// `local@domain` with a domain name after the last `@` and nothing that cannot go into an
/// SMTP envelope.
fn is_mailbox(address: &str) -> bool {
    let Some((local, domain)) = address.rsplit_once('@') else {
        return false;
    };
    !local.is_empty()
        && !address
            .chars()
            .any(|c| c.is_control() || c.is_whitespace() || matches!(c, '<' | '>'))
        && crate::domain::Domain::parse(domain).is_ok()
}

#[cfg(test)]
mod tests {
    use super::is_mailbox;

    #[test]
    fn only_plain_mailboxes_leave_by_the_exit() {
        assert!(is_mailbox("dave@legacy.example"));
        for bad in [
            "",
            "dave",
            "@legacy.example",
            "dave@",
            "da ve@legacy.example",
            "dave@legacy.example>\r\nRCPT TO:<x@y",
            "<dave@legacy.example>",
        ] {
            assert!(!is_mailbox(bad), "{bad:?}");
        }
    }
}
