//! Returning a failure report to a legacy sender (the route's `ReturnReport`): another
//! organization's gateway could not deliver legacy mail our bridge wrapped, and sealed its RFC
//! 3464 report to the author, our bridge identity, naming the legacy sender
//! (`crate::bridge::report`). We open it with the bridge identity's key like any unwrap and
//! queue it again, as it is, from the null sender to that legacy sender: the runner then routes
//! it like any mail to its domain (smarthost, MX, or DIME again), and since its sender is null no
//! DSN ever answers it.
//!
//! It is returned only when every signature verified (`dime=pass`), its author is the reporting
//! organization's own bridge identity (a gateway's report, not a user's letter), it was sent from
//! the null sender and it is a delivery-status report naming one mailbox. Anything else fails
//! the recipient (5.6.0 / 5.7.1) with the reason: in the log (`failed`), the metrics
//! (`dimegate_deliveries_total{route="return_report",outcome="failed"}`) and `queue show`
//! until settled. The arrival itself has the null sender, so its failure makes no report
//! either.

use super::{BridgeTransport, Converted, deferred, failed};
use crate::bridge::{self, returned_report};
use crate::envelope::Envelope;
use crate::identity::bridge_address;
use crate::runner::route::ReportHop;
use crate::runner::transport::{Delivery, Message, Transport};
use crate::status::{DeliveryOutcome, Diagnosis, EnhancedStatus};
use crate::time::UnixTime;

use tracing::{info, warn};

impl BridgeTransport {
    async fn return_reports(
        &self,
        hop: &ReportHop,
        message: Message<'_>,
        recipients: &[usize],
    ) -> Vec<(usize, DeliveryOutcome)> {
        let every = |outcome: DeliveryOutcome| -> Vec<(usize, DeliveryOutcome)> {
            recipients.iter().map(|&i| (i, outcome.clone())).collect()
        };
        let Some(dsns) = &self.dsns else {
            return every(deferred(
                EnhancedStatus::new(4, 3, 5),
                "no queue to return failure reports through".into(),
            ));
        };
        let body = match message.body.read_all().await {
            Ok(body) => body,
            Err(e) => return every(deferred(EnhancedStatus::new(4, 3, 0), e.to_string())),
        };
        let mut outcomes = Vec::with_capacity(recipients.len());
        for &index in recipients {
            let Some(recipient) = message.envelope.recipients.get(index) else {
                continue;
            };
            let outcome = match self
                .return_one(hop, message, &body, &recipient.address)
                .await
            {
                Ok((legacy, queued)) => match dsns.store.append(queued.0, queued.1).await {
                    Ok(id) => {
                        info!(rcpt = %recipient.address, legacy_sender = %legacy, dsn_queue_id = %id, "failure report returned to the legacy sender");
                        DeliveryOutcome::Delivered(Diagnosis {
                            local_reason: Some(format!(
                                "report queued as {id} for the legacy sender {legacy}"
                            )),
                            ..Diagnosis::default()
                        })
                    }
                    Err(e) => deferred(
                        EnhancedStatus::new(4, 3, 0),
                        format!("cannot queue the returned report: {e}"),
                    ),
                },
                Err(outcome) => {
                    if let DeliveryOutcome::Failed(d) = &outcome {
                        warn!(rcpt = %recipient.address, reason = d.local_reason.as_deref().unwrap_or_default(), "failure report not returned");
                    }
                    outcome
                }
            };
            outcomes.push((index, outcome));
        }
        outcomes
    }

    /// Opens the report for `address` and checks it (see the module doc): the legacy sender and
    /// what to queue for them.
    async fn return_one(
        &self,
        hop: &ReportHop,
        message: Message<'_>,
        body: &[u8],
        address: &str,
    ) -> Result<(String, (Envelope, Vec<u8>)), DeliveryOutcome> {
        let ours = bridge_address(hop.domain.as_str());
        if !address.eq_ignore_ascii_case(&ours) {
            return Err(failed(
                EnhancedStatus::new(5, 1, 1),
                format!("{address} is not the bridge identity {ours}"),
            ));
        }
        let origin = message
            .envelope
            .dime
            .as_deref()
            .map(|d| d.origin.clone())
            .unwrap_or_default();
        let Converted {
            body: opened,
            author,
            envelope_from,
            ..
        } = self.unwrap(message, body, &ours).await?;
        let Some(author) = author else {
            return Err(failed(
                EnhancedStatus::new(5, 7, 1),
                "its DIME signatures do not verify (dime=fail): not returned".into(),
            ));
        };
        if !author.eq_ignore_ascii_case(&bridge_address(&origin)) {
            return Err(failed(
                EnhancedStatus::new(5, 7, 1),
                format!(
                    "written by {author}, not by {origin}'s bridge identity: not a gateway's report"
                ),
            ));
        }
        if envelope_from.as_deref() != Some("") {
            return Err(failed(
                EnhancedStatus::new(5, 6, 0),
                format!(
                    "sent from {:?}, not the null sender: not a delivery report",
                    envelope_from.unwrap_or_default()
                ),
            ));
        }
        let returned = returned_report(&opened).map_err(|e: bridge::ReportError| {
            failed(EnhancedStatus::new(5, 6, 0), e.to_string())
        })?;
        let now = UnixTime::now();
        let envelope = Envelope {
            body_8bit: !returned.message.is_ascii(),
            smtputf8: !returned.recipient.is_ascii(),
            ..Envelope::local(
                String::new(),
                returned.recipient.clone(),
                self.hostname.clone(),
                now.0,
            )
        };
        Ok((returned.recipient, (envelope, returned.message)))
    }
}

impl Transport<ReportHop> for BridgeTransport {
    fn deliver<'a>(
        &'a self,
        hop: &'a ReportHop,
        message: Message<'a>,
        recipients: &'a [usize],
    ) -> Delivery<'a> {
        Box::pin(self.return_reports(hop, message, recipients))
    }
}
