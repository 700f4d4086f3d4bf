//! DSNs for mail that arrived over DMTP, sealed back to its author (issue 9: "a DSN for mail
//! that arrived over DMTP goes back to its author sealed").
//!
//! When the author is another gateway's bridge identity (legacy mail it wrapped), the report is
//! written for the legacy sender sealed in the original as `X-Envelope-From` (whose signatures
//! verified, or there is no report at all) and names it in `X-Envelope-To` for the bridge to
//! return it ([`crate::bridge::address_report`]); it is still sealed to the bridge identity.
//!
//! Such mail is queued with the null sender: the DMTP envelope names domains only, and a plain
//! SMTP DSN to the origin would put in clear what arrived sealed. When we opened it for a
//! trustful user, though, we know its author; so when the backend refuses the opened copy for
//! good, [`BridgeTransport::queue_sealed_dsn`] builds the RFC 3464 report (on the opened copy,
//! naming the backend's reply) and seals it at once: author our domain's bridge identity, origin
//! our org (signed), recipient the author's signet at the author's domain, padded like every
//! sealed message. It is queued as sealed bytes under our own domain as origin, which the runner
//! routes as a DIME message of ours (`Arrival::Submitted`) and passes on over DMTP as it is:
//! no path leads to clear text, whatever the author's domain's policy. Its own envelope has
//! the null sender, so no DSN ever answers it.
//!
//! The report is queued (fsync) before the failure is reported to the runner, which marks the
//! recipient failed only afterwards; if it cannot be sealed now (the author's signet cannot be
//! fetched), the recipient is deferred instead, and the attempt (and the report) repeated.

use super::BridgeTransport;
use crate::bridge::{self, Identity, WrapInput};
use crate::envelope::{DimeArrival, Envelope};
use crate::identity::bridge_address;
use crate::queue::{DsnInput, RecipientReport, ReportOutcome, build_dsn};
use crate::runner::transport::Message;
use crate::status::Diagnosis;
use crate::store::Store;
use crate::time::UnixTime;

use tracing::{info, warn};

/// What a sealed DSN reports on: recipient `index`, whose opened copy `opened` (by `author`;
/// sealed in by a bridge for `legacy_sender`) the next hop refused with `diagnosis`.
pub(super) struct Reported<'a> {
    pub(super) index: usize,
    pub(super) opened: &'a [u8],
    pub(super) author: &'a str,
    pub(super) legacy_sender: Option<&'a str>,
    pub(super) diagnosis: &'a Diagnosis,
}

/// Where sealed DSNs are queued, and how much of a message they return.
#[derive(Clone)]
pub(in crate::runner) struct SealedDsns {
    pub(in crate::runner) store: Store,
    pub(in crate::runner) max_full_bytes: u64,
}

impl BridgeTransport {
    /// Builds, seals and durably queues the failure report on `about` for its recipient of
    /// `message`. `Ok` when it is queued or none is owed (the recipient's NOTIFY); `Err` with the
    /// reason when it cannot be made now.
    pub(super) async fn queue_sealed_dsn(
        &self,
        dsns: &SealedDsns,
        message: Message<'_>,
        about: Reported<'_>,
    ) -> Result<(), String> {
        let Reported {
            index,
            opened,
            author,
            legacy_sender,
            diagnosis,
        } = about;
        let Some(recipient) = message.envelope.recipients.get(index) else {
            return Ok(());
        };
        let org = self
            .org(&recipient.address)
            .map_err(|_| format!("{} is not in a served domain", recipient.address))?;
        let Some((_, author_domain)) = author.rsplit_once('@') else {
            return Err(format!("author {author:?} has no domain"));
        };
        let now = UnixTime::now();
        // The report as the author would get it over SMTP, from the opened copy.
        let mut reported = message.envelope.clone();
        reported.sender = legacy_sender.unwrap_or(author).to_owned();
        reported.dime = None;
        let reports = [RecipientReport {
            recipient: index,
            outcome: ReportOutcome::Failed(diagnosis.clone()),
            last_attempt: Some(now),
        }];
        let Some(dsn) = build_dsn(&DsnInput {
            queue_id: message.queue_id,
            envelope: &reported,
            message: opened,
            reporting_mta: &self.hostname,
            now,
            message_id_seed: rand::random(),
            reports: &reports,
            max_full_bytes: dsns.max_full_bytes,
        }) else {
            return Ok(());
        };
        let report = match legacy_sender {
            Some(sender) => match bridge::address_report(&dsn.message, sender) {
                Ok(addressed) => addressed,
                // Its bridge cannot return it, and says so (it fails there, visibly).
                Err(e) => {
                    warn!(%author, error = %e, "sealed DSN names no legacy sender");
                    dsn.message
                }
            },
            None => dsn.message,
        };
        let destination = self
            .discovery
            .org_signet(author_domain)
            .await
            .map_err(|e| format!("sealed DSN: org signet of {author_domain}: {e}"))?
            .signet;
        let author_signet = self
            .discovery
            .user_signet(author)
            .await
            .map_err(|e| format!("sealed DSN: signet of {author}: {e}"))?
            .signet;
        let bridge = bridge_address(&org.domain);
        let (bridge_signet, bridge_key) = self
            .keystore
            .signing_identity(&bridge)
            .map_err(|e| format!("sealed DSN: bridge identity: {e}"))?;
        let sealed = bridge::wrap(
            &WrapInput {
                message: &report,
                mail_from: "",
                recipient: author,
                author: Identity {
                    signet: &bridge_signet,
                    key: &bridge_key,
                },
                author_address: &bridge,
                origin: Identity {
                    signet: &org.signet,
                    key: &org.key,
                },
                origin_domain: &org.domain,
                destination: &destination,
                destination_domain: author_domain,
                recipient_signet: &author_signet,
                authentication_results: None,
                padding: self.padding,
            },
            &mut rand::rngs::OsRng,
        )
        .map_err(|e| format!("sealed DSN: {e}"))?;
        let envelope = Envelope {
            body_8bit: true,
            dime: Some(Box::new(DimeArrival {
                origin: org.domain.clone(),
                origin_fingerprint: org.signet.crypto_fingerprint().to_string(),
                recipient_fingerprint: destination.crypto_fingerprint().to_string(),
            })),
            ..Envelope::local(
                String::new(),
                author.to_owned(),
                self.hostname.clone(),
                now.0,
            )
        };
        let size = sealed.len();
        let id = dsns
            .store
            .append(envelope, sealed)
            .await
            .map_err(|e| format!("sealed DSN: cannot queue it: {e}"))?;
        info!(dsn_queue_id = %id, rcpt = %recipient.address, %author, legacy_sender = legacy_sender.unwrap_or_default(), size, "sealed DSN queued");
        Ok(())
    }
}
