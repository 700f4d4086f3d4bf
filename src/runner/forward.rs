//! Passing on a submission (DESIGN.md §1, the exit flow's DIME-to-DIME half): a message one of
//! our DIME authors sealed for a recipient at another DIME domain and submitted over DMTP, which
//! the listener checked and signed as origin before queueing it (see
//! `crate::dmtp::listener`'s submission module). Nothing is sealed here: the body goes to the
//! destination's DX as it is, one transfer per queued recipient (a submission names one), with
//! the origin and destination fingerprints the listener recorded.
//!
//! As for wrapped mail, the receiver's `2xx OK [txid]` comes after its fsync, and dropping the
//! future can only repeat a transfer, never lose one.

use super::dmtp::{discovery_outcome, local_failure, transfer_outcomes};
use super::route::DmtpHop;
use super::transport::Message;
use crate::dime::Fingerprint;
use crate::discovery::Discovery;
use crate::dmtp::client::{Delivery as Transfer, Job};
use crate::dmtp::codec::Domain as DmtpDomain;
use crate::status::{DeliveryOutcome, EnhancedStatus};

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
    transfer_outcomes(events, &contact, recipients, "submission")
}
