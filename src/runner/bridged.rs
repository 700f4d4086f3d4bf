//! The conversions before the backend (DESIGN.md §1): *unwrap* D/MIME that arrived over DMTP
//! for a trustful user, pass it on *sealed* for a cautious one, and *protect* legacy mail for a
//! cautious user at rest. Each recipient gets its own converted copy (its own keys), handed to
//! the SMTP/LMTP transport for that recipient alone. The conversions are [`crate::bridge`]'s; this
//! is where their keys and signets come from.
//!
//! When the next hop refuses an unwrapped copy for good, the failure report goes back to the
//! author sealed (`sealed_dsn`), once [`BridgeTransport::with_sealed_dsns`] says where to queue it.
//! No report answers a report: a copy whose sealed envelope sender is null gets none. When the
//! author was another gateway's bridge identity, the report names the legacy sender sealed in
//! the original; that gateway, receiving it for its bridge identity, opens it and queues it for
//! that sender as an ordinary DSN (`returned`, the route's `ReturnReport`).
//!
//! A conversion that fails for good (a message not sealed for us, a broken signature) fails the
//! recipient with the bridge's status; one that may work later (the origin's signet cannot be
//! fetched now) defers it. An author whose signet cannot be had at all does not stop delivery:
//! the mail arrives with `dime=fail` in its `Authentication-Results`.

mod returned;
mod sealed_dsn;

use super::dmtp::{bridge_outcome, discovery_outcome};
use super::route::{BridgeHop, Conversion};
use super::transport::{Delivery, Message, Transport};
use crate::body::Body;
use crate::bridge::{self, Identity, ProtectInput, UnwrapInput};
use crate::deliver::NextHop as SmtpHop;
use crate::dime::Signet;
use crate::discovery::Discovery;
use crate::envelope::Envelope;
use crate::identity::{IdentityError, Keystore, OrgIdentity, bridge_address};
use crate::status::{DeliveryOutcome, Diagnosis, EnhancedStatus};
use crate::time::UnixTime;
use std::sync::Arc;
use tracing::info;

/// Convert, then SMTP/LMTP.
pub struct BridgeTransport {
    smtp: Arc<dyn Transport<SmtpHop>>,
    discovery: Arc<Discovery>,
    keystore: Keystore,
    orgs: Arc<Vec<OrgIdentity>>,
    hostname: String,
    padding: bridge::Buckets,
    dsns: Option<sealed_dsn::SealedDsns>,
}

impl std::fmt::Debug for BridgeTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BridgeTransport")
            .field("hostname", &self.hostname)
            .finish_non_exhaustive()
    }
}

/// One recipient's converted copy: the envelope to send it with and the bytes.
struct Converted {
    envelope: Envelope,
    body: Vec<u8>,
    /// Unwrap: the author, whose signatures verified (a failure report goes back to them).
    author: Option<String>,
    /// Unwrap: the SMTP envelope sender a bridge sealed in (`X-Envelope-From`), as trustworthy
    /// as `author` is `Some`: `Some("")` for a report, which no report answers.
    envelope_from: Option<String>,
}

impl BridgeTransport {
    /// Conversions with our `orgs` and `keystore`, delivered through `smtp`; `hostname` names us
    /// in the trace fields of unwrapped mail.
    pub fn new(
        smtp: Arc<dyn Transport<SmtpHop>>,
        discovery: Arc<Discovery>,
        keystore: Keystore,
        orgs: Arc<Vec<OrgIdentity>>,
        hostname: String,
        padding: bridge::Buckets,
    ) -> BridgeTransport {
        BridgeTransport {
            smtp,
            discovery,
            keystore,
            orgs,
            hostname,
            padding,
            dsns: None,
        }
    }

    /// Failure reports for unwrapped mail that the next hop refuses for good go back to its
    /// author, sealed, queued in `store` (see `sealed_dsn`); at most `max_full_bytes` of the
    /// message are returned in one.
    pub fn with_sealed_dsns(mut self, store: crate::store::Store, max_full_bytes: u64) -> Self {
        self.dsns = Some(sealed_dsn::SealedDsns {
            store,
            max_full_bytes,
        });
        self
    }

    fn org(&self, address: &str) -> Result<&OrgIdentity, DeliveryOutcome> {
        let domain = address.rsplit_once('@').map(|(_, d)| d).unwrap_or_default();
        self.orgs
            .iter()
            .find(|o| o.domain.eq_ignore_ascii_case(domain))
            .ok_or_else(|| {
                failed(
                    EnhancedStatus::new(5, 1, 2),
                    format!("{domain} is not a DIME organization here"),
                )
            })
    }

    async fn convert(
        &self,
        conversion: Conversion,
        message: Message<'_>,
        body: &[u8],
        address: &str,
    ) -> Result<Converted, DeliveryOutcome> {
        match conversion {
            Conversion::Unwrap => self.unwrap(message, body, address).await,
            Conversion::Protect => self.protect(message, body, address),
            Conversion::PassSealed => self.pass_sealed(message, body, address),
        }
    }

    async fn unwrap(
        &self,
        message: Message<'_>,
        body: &[u8],
        address: &str,
    ) -> Result<Converted, DeliveryOutcome> {
        let Some(arrival) = message.envelope.dime.as_deref() else {
            return Err(failed(
                EnhancedStatus::new(5, 6, 0),
                "not a D/MIME message".into(),
            ));
        };
        // Served here, or this is not ours to open.
        self.org(address)?;
        // Our own org as origin: one of our DIME authors wrote to another (see the DMTP
        // listener's submission); its signets are ours, not a look-up away.
        let own = self
            .orgs
            .iter()
            .find(|o| o.domain.eq_ignore_ascii_case(&arrival.origin));
        let origin = match own {
            Some(org) => org.signet.clone(),
            None => {
                self.discovery
                    .org_signet(&arrival.origin)
                    .await
                    .map_err(|e| discovery_outcome(&e, "origin org signet"))?
                    .signet
            }
        };
        let user = self
            .keystore
            .user(address)
            .map_err(|e| failed(EnhancedStatus::new(5, 1, 1), format!("hosted user: {e}")))?;
        // The generation the message was sealed to: after a rotation, mail sealed to the
        // previous key still opens.
        let generation = user
            .generations
            .iter()
            .rev()
            .find(|g| g.signet.crypto_fingerprint().to_string() == arrival.recipient_fingerprint)
            .ok_or_else(|| {
                failed(
                    EnhancedStatus::new(5, 1, 1),
                    format!(
                        "{address} has no key generation with fingerprint {}",
                        arrival.recipient_fingerprint
                    ),
                )
            })?;
        let key = self
            .keystore
            .user_key(address, generation.number)
            .map_err(|e| deferred(EnhancedStatus::new(4, 3, 0), format!("user key: {e}")))?;
        let queue_id = message.queue_id.to_string();
        let input = UnwrapInput {
            message: body,
            destination: bridge::Destination::CheckedAtIngest { recipient: address },
            recipient_key: &key,
            hostname: &self.hostname,
            queue_id: &queue_id,
            received_at: UnixTime(message.envelope.arrival_unix),
            origin_signet: &origin,
            origin_domain: &arrival.origin,
        };
        let prepared = bridge::unwrap_prepare(&input).map_err(|e| bridge_outcome(&e))?;
        let author: Option<Signet> = if own.is_some() {
            // No such user, or a generation the author does not have, is `dime=fail`, as a
            // signet no DX serves; a key store that cannot be read is worth another try.
            match self.keystore.user(&prepared.need.author) {
                Ok(user) => user.generations.into_iter().map(|g| g.signet).find(|s| {
                    s.crypto_fingerprint().to_string() == prepared.need.author_fingerprint
                }),
                Err(
                    IdentityError::UnknownUser(_)
                    | IdentityError::NotServed(_)
                    | IdentityError::BadAddress(_),
                ) => None,
                Err(e) => {
                    return Err(deferred(
                        EnhancedStatus::new(4, 3, 0),
                        format!("author signet: {e}"),
                    ));
                }
            }
        } else {
            match self.discovery.user_signet(&prepared.need.author).await {
                Ok(found) => Some(found.signet),
                // Worth another try later; a signet that cannot be had for good is `dime=fail`.
                Err(e) if !e.is_permanent() || e.is_bogus() => {
                    return Err(discovery_outcome(&e, "author signet"));
                }
                Err(_) => None,
            }
        };
        let opened = bridge::unwrap_finish(&input, prepared, author.as_ref())
            .map_err(|e| bridge_outcome(&e))?;
        info!(rcpt = %address, author = %opened.author, origin = %opened.origin, dime = ?opened.dime, "unwrapped");
        let mut envelope = message.envelope.clone();
        if let Some(from) = &opened.envelope_from {
            envelope.sender = from.clone();
        }
        // Only an author whose signatures verified gets a report: anyone could name anyone.
        let author = (opened.dime == bridge::DimeResult::Pass).then(|| opened.author.clone());
        Ok(Converted {
            envelope,
            body: opened.rfc5322,
            author,
            envelope_from: opened.envelope_from,
        })
    }

    fn protect(
        &self,
        message: Message<'_>,
        body: &[u8],
        address: &str,
    ) -> Result<Converted, DeliveryOutcome> {
        let org = self.org(address)?;
        let user = self
            .keystore
            .user(address)
            .map_err(|e| deferred(EnhancedStatus::new(4, 3, 0), format!("hosted user: {e}")))?;
        let Some(current) = user.current() else {
            return Err(deferred(
                EnhancedStatus::new(4, 7, 0),
                format!("{address} has no signet to seal to"),
            ));
        };
        let bridge_address = bridge_address(&org.domain);
        let (bridge_signet, bridge_key) =
            self.keystore
                .signing_identity(&bridge_address)
                .map_err(|e| {
                    deferred(
                        EnhancedStatus::new(4, 3, 0),
                        format!("bridge identity: {e}"),
                    )
                })?;
        let input = ProtectInput {
            message: body,
            mail_from: &message.envelope.sender,
            recipient: address,
            recipient_signet: &current.signet,
            bridge: Identity {
                signet: &bridge_signet,
                key: &bridge_key,
            },
            bridge_address: &bridge_address,
            org: Identity {
                signet: &org.signet,
                key: &org.key,
            },
            domain: &org.domain,
            authentication_results: None,
            padding: self.padding,
        };
        let body =
            bridge::protect(&input, &mut rand::rngs::OsRng).map_err(|e| bridge_outcome(&e))?;
        info!(rcpt = %address, size = body.len(), "protected at rest");
        let mut envelope = message.envelope.clone();
        envelope.body_8bit = false;
        Ok(Converted {
            envelope,
            body,
            author: None,
            envelope_from: None,
        })
    }

    fn pass_sealed(
        &self,
        message: Message<'_>,
        body: &[u8],
        address: &str,
    ) -> Result<Converted, DeliveryOutcome> {
        let origin = message
            .envelope
            .dime
            .as_deref()
            .map(|a| a.origin.as_str())
            .unwrap_or_default();
        let body = bridge::protect::carry(
            body,
            origin,
            address,
            crate::time::UnixTime(message.envelope.arrival_unix),
        )
        .map_err(|e| bridge_outcome(&e))?;
        info!(rcpt = %address, size = body.len(), "passed on sealed");
        let mut envelope = message.envelope.clone();
        envelope.body_8bit = false;
        Ok(Converted {
            envelope,
            body,
            author: None,
            envelope_from: None,
        })
    }

    async fn send(
        &self,
        hop: &BridgeHop,
        message: Message<'_>,
        recipients: &[usize],
    ) -> Vec<(usize, DeliveryOutcome)> {
        let mut outcomes = Vec::with_capacity(recipients.len());
        // Opening and sealing need the message whole: read once, within the process's budget
        // for whole bodies (`crate::body`).
        let body = match message.body.read_all().await {
            Ok(body) => body,
            Err(e) => {
                let outcome = deferred(EnhancedStatus::new(4, 3, 0), e.to_string());
                return recipients.iter().map(|&i| (i, outcome.clone())).collect();
            }
        };
        for &index in recipients {
            let Some(recipient) = message.envelope.recipients.get(index) else {
                continue;
            };
            let converted = match self
                .convert(hop.conversion, message, &body, &recipient.address)
                .await
            {
                Ok(c) => c,
                Err(outcome) => {
                    outcomes.push((index, outcome));
                    continue;
                }
            };
            let converted_body = Body::from(converted.body);
            // `Body::from` keeps the bytes in memory; the sealed DSN below needs them too.
            let Body::Inline(converted_bytes) = &converted_body else {
                continue;
            };
            let copy = Message {
                queue_id: message.queue_id,
                envelope: &converted.envelope,
                body: &converted_body,
            };
            let mut delivered = self.smtp.deliver(&hop.hop, copy, &[index]).await;
            // A report about a report would answer a null sender (RFC 5321 §4.5.5): two
            // gateways whose backends refuse each other's bridge identities would bounce it
            // back and forth for ever.
            let bounce = converted.envelope_from.as_deref() == Some("");
            if let (Some(dsns), Some(author), false) = (&self.dsns, &converted.author, bounce) {
                // Mail a bridge wrapped: its report names the legacy sender, for that bridge to
                // return it to (the verified `X-Envelope-From`; see `crate::bridge::report`).
                let legacy_sender = converted
                    .envelope_from
                    .as_deref()
                    .filter(|_| is_bridge_identity(author));
                for (i, outcome) in &mut delivered {
                    let DeliveryOutcome::Failed(diagnosis) = outcome else {
                        continue;
                    };
                    let about = sealed_dsn::Reported {
                        index: *i,
                        opened: converted_bytes,
                        author,
                        legacy_sender,
                        diagnosis,
                    };
                    if let Err(reason) = self.queue_sealed_dsn(dsns, message, about).await {
                        // Not final without its report: try both again later.
                        *outcome = deferred(EnhancedStatus::new(4, 3, 0), reason);
                    }
                }
            }
            outcomes.extend(delivered);
        }
        outcomes
    }
}

impl Transport<BridgeHop> for BridgeTransport {
    fn deliver<'a>(
        &'a self,
        hop: &'a BridgeHop,
        message: Message<'a>,
        recipients: &'a [usize],
    ) -> Delivery<'a> {
        Box::pin(self.send(hop, message, recipients))
    }
}

/// Whether `address` is some organization's bridge identity (`crate::identity::bridge_address`).
fn is_bridge_identity(address: &str) -> bool {
    address
        .rsplit_once('@')
        .is_some_and(|(local, _)| local.eq_ignore_ascii_case(crate::identity::BRIDGE_LOCAL_PART))
}

fn failed(status: EnhancedStatus, reason: String) -> DeliveryOutcome {
    DeliveryOutcome::Failed(Diagnosis {
        local_reason: Some(reason),
        status: Some(status),
        ..Diagnosis::default()
    })
}

fn deferred(status: EnhancedStatus, reason: String) -> DeliveryOutcome {
    DeliveryOutcome::Deferred(Diagnosis {
        local_reason: Some(reason),
        status: Some(status),
        ..Diagnosis::default()
    })
}
