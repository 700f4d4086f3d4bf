//! The DMTP transport: the wrap flow of DESIGN.md §1 from the runner's side. For one recipient
//! domain and one author it finds the domain's DX and org signet and each recipient's user
//! signet (through [`Discovery`], cached), seals one D/MIME copy per recipient ([`bridge::wrap`]:
//! author and origin signatures in one pass, padded to a size bucket), and hands all copies to
//! one DMTP session, one transfer each. How the legacy sender authenticated (SPF, DKIM, DMARC,
//! or SMTP AUTH: [`SenderChecks`]) travels inside, as a sealed `Authentication-Results` field. The receiver's `2xx OK [txid]` comes after its fsync, so
//! a recipient is delivered exactly when its copy is durable there.
//!
//! Each copy is sealed once: before its first transfer it is kept in the store with its fsync
//! ([`Store::keep_sealed`]) and every later attempt sends those bytes again, until the recipient
//! settles. So a retry of a transfer the receiver had accepted (its `2xx` lost to a kill -9 of
//! either side, or to a crash here before the outcome was recorded) is byte-identical, and the
//! receiver answers it with the first txid instead of queueing it twice (`store/dedup.rs`).
//! Re-sealing would draw new keys and could see a new signet or new SPF/DKIM results: a
//! different message on the wire. A kept copy outlives a rotation of the recipient's signet
//! (the receiver keeps the old key generations); one the receiver refuses for good fails like
//! any refusal.
//!
//! Dropping the future can lose only the knowledge of a transfer that was accepted: the
//! recipient stays leased and is tried again with the same bytes; it cannot be lost.

use super::authres::SenderChecks;
use super::route::{Author, DmtpHop};
use super::transport::{Delivery, Message, Transport};
use crate::bridge::{self, BridgeError, Identity, WrapInput};
use crate::dime::{PrivateKey, Signet};
use crate::discovery::Contact;
use crate::discovery::{Discovery, DiscoveryError};
use crate::dmtp::client::{ClientError, ClientEvent, Delivery as Transfer, Job, JobId};
use crate::dmtp::codec::Domain as DmtpDomain;
use crate::identity::{Keystore, OrgIdentity, bridge_address};
use crate::status::{DeliveryOutcome, Diagnosis, DiagnosticCode, DiagnosticType, EnhancedStatus};
use crate::store::Store;
use std::collections::HashMap;
use std::sync::Arc;
use tracing::{info, warn};

/// Wrap, then DMTP.
#[derive(Debug, Clone)]
pub struct DmtpTransport {
    discovery: Arc<Discovery>,
    keystore: Keystore,
    orgs: Arc<Vec<OrgIdentity>>,
    padding: bridge::Buckets,
    checks: SenderChecks,
    store: Store,
}

impl DmtpTransport {
    /// A transport that signs as origin for `orgs`, with authors from `keystore`, sealing the
    /// legacy sender's `checks` results into each copy, and keeping each copy in `store` (the
    /// queue's) until its recipient settles.
    pub fn new(
        discovery: Arc<Discovery>,
        keystore: Keystore,
        orgs: Arc<Vec<OrgIdentity>>,
        padding: bridge::Buckets,
        checks: SenderChecks,
        store: Store,
    ) -> DmtpTransport {
        DmtpTransport {
            discovery,
            keystore,
            orgs,
            padding,
            checks,
            store,
        }
    }

    /// The copies of `queue_id` sealed by an earlier attempt, by recipient index.
    async fn kept_copies(&self, queue_id: crate::envelope::QueueId) -> HashMap<usize, Vec<u8>> {
        let store = self.store.clone();
        match tokio::task::spawn_blocking(move || store.sealed_copies(queue_id)).await {
            Ok(Ok(copies)) => copies.into_iter().collect(),
            // Unreadable: seal again. The receiver may then queue a second copy of a transfer
            // it had accepted, which is what at-least-once allows; nothing is lost.
            Ok(Err(e)) => {
                warn!(error = %e, "cannot read the kept sealed copies");
                HashMap::new()
            }
            Err(e) => {
                warn!(error = %e, "sealed-copy read task failed");
                HashMap::new()
            }
        }
    }

    async fn send(
        &self,
        hop: &DmtpHop,
        message: Message<'_>,
        recipients: &[usize],
    ) -> Vec<(usize, DeliveryOutcome)> {
        if let Author::Submitted(_) = &hop.author {
            // Sealed and signed already: nothing to wrap.
            return super::forward::pass_on(&self.discovery, hop, message, recipients).await;
        }
        let domain = hop.domain.as_str();
        let every = |outcome: DeliveryOutcome| -> Vec<(usize, DeliveryOutcome)> {
            recipients.iter().map(|&i| (i, outcome.clone())).collect()
        };
        let (record, verdict) = match self.discovery.record(domain).await {
            Ok(found) => found,
            Err(e) => return every(discovery_outcome(&e, "_dx lookup")),
        };
        let destination = match self.discovery.org_signet(domain).await {
            Ok(found) => found.signet,
            Err(e) => return every(discovery_outcome(&e, "destination org signet")),
        };
        let (origin, author_address, author_signet, author_key) = match self.author(&hop.author) {
            Ok(a) => a,
            Err(reason) => {
                return every(local_failure(false, EnhancedStatus::new(4, 3, 0), reason));
            }
        };
        let (Ok(origin_name), Ok(destination_name)) =
            (DmtpDomain::parse(&origin.domain), DmtpDomain::parse(domain))
        else {
            return every(local_failure(
                true,
                EnhancedStatus::new(5, 1, 2),
                format!("{domain} or {} cannot be named in DMTP", origin.domain),
            ));
        };
        let mut kept = self.kept_copies(message.queue_id).await;
        // Asked only when a copy has to be sealed (SPF, DKIM and DMARC cost DNS queries).
        let mut authentication_results: Option<String> = None;
        // DKIM and sealing need the message whole: read once, only when a copy has to be
        // sealed, within the process's budget for whole bodies (`crate::body`).
        let mut whole: Option<crate::body::WholeBody<'_>> = None;
        let mut outcomes = Vec::with_capacity(recipients.len());
        let mut copies: Vec<(usize, Vec<u8>)> = Vec::new();
        let mut fresh: Vec<(usize, Vec<u8>)> = Vec::new();
        for &index in recipients {
            let Some(recipient) = message.envelope.recipients.get(index) else {
                continue;
            };
            let address = recipient.address.as_str();
            if let Some(sealed) = kept.remove(&index) {
                info!(rcpt = %address, size = sealed.len(), "sending the copy sealed before again");
                copies.push((index, sealed));
                continue;
            }
            if whole.is_none() {
                match message.body.read_all().await {
                    Ok(body) => whole = Some(body),
                    Err(e) => {
                        let status = EnhancedStatus::new(4, 3, 0);
                        outcomes.push((index, local_failure(false, status, e.to_string())));
                        continue;
                    }
                }
            }
            let Some(body) = whole.as_deref() else {
                continue;
            };
            let authentication_results = match &authentication_results {
                Some(results) => results.clone(),
                None => {
                    let results = self.checks.results(message.envelope, body).await;
                    authentication_results.insert(results).clone()
                }
            };
            let signet = match self.discovery.user_signet(address).await {
                Ok(found) => found.signet,
                Err(e) => {
                    outcomes.push((index, discovery_outcome(&e, "recipient signet")));
                    continue;
                }
            };
            let input = WrapInput {
                message: body,
                mail_from: &message.envelope.sender,
                recipient: address,
                author: Identity {
                    signet: &author_signet,
                    key: &author_key,
                },
                author_address: &author_address,
                origin: Identity {
                    signet: &origin.signet,
                    key: &origin.key,
                },
                origin_domain: &origin.domain,
                destination: &destination,
                destination_domain: domain,
                recipient_signet: &signet,
                authentication_results: Some(&authentication_results),
                padding: self.padding,
            };
            let sealed = match bridge::wrap(&input, &mut rand::rngs::OsRng) {
                Ok(sealed) => sealed,
                Err(e) => {
                    outcomes.push((index, bridge_outcome(&e)));
                    continue;
                }
            };
            info!(rcpt = %address, author = %author_address, size = sealed.len(), "wrapped");
            fresh.push((index, sealed));
        }
        if !fresh.is_empty() {
            // fsync before the first transfer: a retry after a crash sends these same bytes.
            match self
                .store
                .keep_sealed(message.queue_id, fresh.clone())
                .await
            {
                Ok(()) => copies.extend(fresh),
                Err(e) => {
                    warn!(error = %e, "cannot keep the sealed copies; not sending them");
                    outcomes.extend(fresh.iter().map(|&(index, _)| {
                        (
                            index,
                            local_failure(
                                false,
                                EnhancedStatus::new(4, 3, 0),
                                format!("cannot keep the sealed copy: {e}"),
                            ),
                        )
                    }));
                }
            }
        }
        if copies.is_empty() {
            return outcomes;
        }
        copies.sort_by_key(|&(index, _)| index);
        let mut jobs = Vec::with_capacity(copies.len());
        let mut job_recipients = Vec::with_capacity(copies.len());
        for (index, sealed) in copies {
            jobs.push(Job::Deliver(Transfer {
                origin: origin_name.clone(),
                origin_fingerprint: origin.signet.crypto_fingerprint(),
                destination: destination_name.clone(),
                destination_fingerprint: Some(destination.crypto_fingerprint()),
                ret: None,
                data_type: None,
                message: sealed,
            }));
            job_recipients.push(index);
        }
        let (events, contact) = match self.discovery.run(domain, &record, verdict, jobs).await {
            Ok(ran) => ran,
            Err(e) => {
                let outcome = discovery_outcome(&e, "DMTP session");
                outcomes.extend(job_recipients.iter().map(|&i| (i, outcome.clone())));
                return outcomes;
            }
        };
        outcomes.extend(transfer_outcomes(
            events,
            &contact,
            &job_recipients,
            "transfer",
        ));
        outcomes
    }

    /// The origin org and the author's address, signet and key.
    fn author(
        &self,
        author: &Author,
    ) -> Result<(&OrgIdentity, String, Signet, PrivateKey), String> {
        let origin = author
            .origin()
            .ok_or_else(|| format!("{author:?} names no domain"))?;
        let org = self
            .orgs
            .iter()
            .find(|o| o.domain == origin.as_str())
            .ok_or_else(|| format!("{origin} is not a DIME organization here"))?;
        let address = match author {
            Author::Hosted(address) => address.clone(),
            Author::Bridge(domain) => bridge_address(domain.as_str()),
            Author::Submitted(address) => {
                return Err(format!("{address}'s submission is sealed already"));
            }
        };
        let (signet, key) = self
            .keystore
            .signing_identity(&address)
            .map_err(|e| format!("author identity: {e}"))?;
        Ok((org, address, signet, key))
    }
}

impl Transport<DmtpHop> for DmtpTransport {
    fn deliver<'a>(
        &'a self,
        hop: &'a DmtpHop,
        message: Message<'a>,
        recipients: &'a [usize],
    ) -> Delivery<'a> {
        Box::pin(self.send(hop, message, recipients))
    }
}

/// A failure found here, permanent or not.
pub(super) fn local_failure(
    permanent: bool,
    status: EnhancedStatus,
    reason: String,
) -> DeliveryOutcome {
    let diagnosis = Diagnosis {
        local_reason: Some(reason),
        status: Some(status),
        ..Diagnosis::default()
    };
    if permanent {
        DeliveryOutcome::Failed(diagnosis)
    } else {
        DeliveryOutcome::Deferred(diagnosis)
    }
}

/// A discovery failure as the recipients' outcome: the reason names the DIME step. A forged
/// (bogus) answer is never permanent here: it may be an attack on the path, which passes.
pub(super) fn discovery_outcome(e: &DiscoveryError, step: &str) -> DeliveryOutcome {
    let permanent = e.is_permanent() && !e.is_bogus();
    let status = match e {
        DiscoveryError::Dns(_) if e.is_bogus() => EnhancedStatus::new(4, 7, 5),
        DiscoveryError::InvalidSignet { .. } => {
            EnhancedStatus::new(if permanent { 5 } else { 4 }, 7, 5)
        }
        DiscoveryError::Refused { .. } if permanent => EnhancedStatus::new(5, 1, 1),
        _ if permanent => EnhancedStatus::new(5, 4, 4),
        _ => EnhancedStatus::new(4, 4, 1),
    };
    local_failure(permanent, status, format!("DIME {step}: {e}"))
}

/// The recipients' outcomes from a DMTP session's events, for jobs numbered from 1 in the
/// order of `job_recipients` (what [`Discovery::run`] does); `what` names the transfer in logs.
pub(super) fn transfer_outcomes(
    events: Vec<ClientEvent>,
    contact: &Contact,
    job_recipients: &[usize],
    what: &str,
) -> Vec<(usize, DeliveryOutcome)> {
    let recipient_of = |job: JobId| {
        usize::try_from(job.0)
            .ok()
            .and_then(|n| n.checked_sub(1))
            .and_then(|n| job_recipients.get(n).copied())
    };
    let mut outcomes = Vec::with_capacity(job_recipients.len());
    for event in events {
        match event {
            ClientEvent::Delivered { job, txid, .. } => {
                let Some(index) = recipient_of(job) else {
                    continue;
                };
                let txid = txid.map(|t| t.to_string()).unwrap_or_default();
                info!(rcpt_index = index, dx = %contact.host, addr = %contact.addr, trust = %contact.trust, %txid, "{what} sent over DMTP");
                outcomes.push((
                    index,
                    // DMTP has no DSN extension: the receiver's acceptance is a relay.
                    DeliveryOutcome::Relayed(Diagnosis {
                        remote_mta: Some(contact.host.clone()),
                        reply: Some(DiagnosticCode::new(
                            DiagnosticType::Dmtp,
                            format!("250 OK [{txid}]"),
                        )),
                        ..Diagnosis::default()
                    }),
                ));
            }
            ClientEvent::Failed {
                job: Some(job),
                error,
            } => {
                if let Some(index) = recipient_of(job) {
                    warn!(rcpt_index = index, dx = %contact.host, %error, "DMTP {what} refused");
                    outcomes.push((index, client_outcome(&contact.host, &error)));
                }
            }
            _ => {}
        }
    }
    outcomes
}

/// A refused transfer: the DMTP reply is the diagnostic code.
pub(super) fn client_outcome(host: &str, error: &ClientError) -> DeliveryOutcome {
    let diagnosis = Diagnosis {
        remote_mta: Some(host.to_owned()),
        reply: error
            .code()
            .map(|_| DiagnosticCode::new(DiagnosticType::Dmtp, error.to_string())),
        local_reason: error.code().is_none().then(|| error.to_string()),
        status: Some(EnhancedStatus::new(
            if error.is_permanent() { 5 } else { 4 },
            0,
            0,
        )),
    };
    if error.is_permanent() {
        DeliveryOutcome::Failed(diagnosis)
    } else {
        DeliveryOutcome::Deferred(diagnosis)
    }
}

/// A conversion failure as the recipient's outcome.
pub(super) fn bridge_outcome(e: &BridgeError) -> DeliveryOutcome {
    local_failure(e.is_permanent(), e.status(), format!("DIME: {e}"))
}
