//! Passing on a submission (DESIGN.md §1, the exit flow's DIME-to-DIME half): a message one of
//! our DIME authors sealed for a recipient at another DIME domain and submitted over DMTP, which
//! the listener checked and signed as origin before queueing it (see
//! `crate::dmtp::listener`'s submission module). Nothing is sealed here: the body goes to the
//! destination's DX as it is, one transfer per queued recipient (a submission names one), with
//! the origin and destination fingerprints the listener recorded.
//!
//! As for wrapped mail, the receiver's `2xx OK [txid]` comes after its fsync, and dropping the
//! future can only repeat a transfer, never lose one.

use super::dmtp::{client_outcome, discovery_outcome, local_failure};
use super::route::DmtpHop;
use super::transport::Message;
use crate::dime::Fingerprint;
use crate::discovery::Discovery;
use crate::dmtp::client::{ClientEvent, Delivery as Transfer, Job, JobId};
use crate::dmtp::codec::Domain as DmtpDomain;
use crate::status::{DeliveryOutcome, Diagnosis, DiagnosticCode, DiagnosticType, EnhancedStatus};
use tracing::{info, warn};

/// Sends the queued, origin-signed message to `hop`'s domain for the recipients at `recipients`.
pub(super) async fn pass_on(
    discovery: &Discovery,
    hop: &DmtpHop,
    message: Message<'_>,
    recipients: &[usize],
) -> Vec<(usize, DeliveryOutcome)> {
    let domain = hop.domain.as_str();
    let every = |outcome: DeliveryOutcome| -> Vec<(usize, DeliveryOutcome)> {
        recipients.iter().map(|&i| (i, outcome.clone())).collect()
    };
    let Some(arrival) = message.envelope.dime.as_deref() else {
        return every(local_failure(
            true,
            EnhancedStatus::new(5, 6, 0),
            "a submission without its DIME record cannot be passed on".into(),
        ));
    };
    let (Ok(origin), Ok(origin_fingerprint), Ok(destination)) = (
        DmtpDomain::parse(&arrival.origin),
        arrival.origin_fingerprint.parse::<Fingerprint>(),
        DmtpDomain::parse(domain),
    ) else {
        return every(local_failure(
            true,
            EnhancedStatus::new(5, 1, 2),
            format!("{domain} or {} cannot be named in DMTP", arrival.origin),
        ));
    };
    let (record, verdict) = match discovery.record(domain).await {
        Ok(found) => found,
        Err(e) => return every(discovery_outcome(&e, "_dx lookup")),
    };
    // Passed on as it is, but whole: within the process's budget for whole bodies.
    let body = match message.body.read_all().await {
        Ok(body) => body,
        Err(e) => {
            return every(local_failure(
                false,
                EnhancedStatus::new(4, 3, 0),
                e.to_string(),
            ));
        }
    };
    let jobs: Vec<Job> = recipients
        .iter()
        .map(|_| {
            Job::Deliver(Transfer {
                origin: origin.clone(),
                origin_fingerprint,
                destination: destination.clone(),
                // The org signet the author sealed to; the receiver answers 576 if it is not
                // (or no longer) one of its own.
                destination_fingerprint: arrival.recipient_fingerprint.parse().ok(),
                ret: None,
                data_type: None,
                message: body.to_vec(),
            })
        })
        .collect();
    let (events, contact) = match discovery.run(domain, &record, verdict, jobs).await {
        Ok(ran) => ran,
        Err(e) => return every(discovery_outcome(&e, "DMTP session")),
    };
    // Jobs are numbered from 1 in the order submitted.
    let recipient_of = |job: JobId| {
        usize::try_from(job.0)
            .ok()
            .and_then(|n| n.checked_sub(1))
            .and_then(|n| recipients.get(n).copied())
    };
    let mut outcomes = Vec::with_capacity(recipients.len());
    for event in events {
        match event {
            ClientEvent::Delivered { job, txid, .. } => {
                let Some(index) = recipient_of(job) else {
                    continue;
                };
                let txid = txid.map(|t| t.to_string()).unwrap_or_default();
                info!(rcpt_index = index, dx = %contact.host, %txid, "submission passed on over DMTP");
                outcomes.push((
                    index,
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
                    warn!(rcpt_index = index, dx = %contact.host, %error, "DMTP transfer of a submission refused");
                    outcomes.push((index, client_outcome(&contact.host, &error)));
                }
            }
            _ => {}
        }
    }
    outcomes
}
