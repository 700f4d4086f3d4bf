//! The one interface between the runner and a transport: [`Transport::deliver`] takes a
//! message, a destination and the indices of the recipients to attempt, and answers one
//! transport-neutral [`DeliveryOutcome`] per index. SMTP/LMTP (`deliver`) implements it here;
//! DMTP joins as a second implementation; unit tests of the runner use a fake.
//!
//! Outcomes are keyed by recipient index, not by address: an envelope may name one address
//! twice with different NOTIFY or ORCPT, and each RCPT keeps its own.

use super::route::{DxLookup, Hosted, SignetLookup};
use crate::body::Body;
use crate::deliver::{Deliverer, NextHop as SmtpHop};
use crate::domain::Domain;
use crate::envelope::{Envelope, QueueId};
use crate::status::DeliveryOutcome;
use std::future::Future;
use std::pin::Pin;

/// One queued message as a transport sees it.
#[derive(Debug, Clone, Copy)]
pub struct Message<'a> {
    /// Its queue id, for logs and the `Received:` header.
    pub queue_id: QueueId,
    /// Its envelope; recipient indices point into `envelope.recipients`.
    pub envelope: &'a Envelope,
    /// The message bytes as received: in memory or a body file, read in chunks by the SMTP
    /// transport; a transport that needs them whole calls [`Body::read_all`].
    pub body: &'a Body,
}

/// The future a [`Transport`] returns.
pub type Delivery<'a> = Pin<Box<dyn Future<Output = Vec<(usize, DeliveryOutcome)>> + Send + 'a>>;

/// A way out of the gateway for destinations of type `Hop`.
pub trait Transport<Hop>: Send + Sync {
    /// Attempts `message` to `hop` for the recipients at `recipients` (indices into its
    /// envelope). Answers at most one outcome per index asked for, keyed by it; the runner
    /// defers any index left without one. Never fails as a whole: a connection or lookup failure
    /// is every recipient's outcome.
    ///
    /// Each implementation says whether dropping the future can lose track of a delivery (for
    /// SMTP: a duplicate is possible, a loss is not).
    fn deliver<'a>(
        &'a self,
        hop: &'a Hop,
        message: Message<'a>,
        recipients: &'a [usize],
    ) -> Delivery<'a>;
}

/// A transport shared by several kinds of hop (the bridge's conversions and its returned
/// reports share their keys and resolver).
impl<Hop, T: Transport<Hop> + ?Sized> Transport<Hop> for std::sync::Arc<T> {
    fn deliver<'a>(
        &'a self,
        hop: &'a Hop,
        message: Message<'a>,
        recipients: &'a [usize],
    ) -> Delivery<'a> {
        (**self).deliver(hop, message, recipients)
    }
}

/// A lookup's future.
pub type Lookup<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What the runner's lookup phase asks before [`super::route`]: the network (`_dx`, signets,
/// each with its own cache) and the key store (hosted users). Answers are typed for the route;
/// why a lookup failed is in their text, for the hold's reason.
pub trait Directory: Send + Sync {
    /// The `_dx` record of `domain`.
    fn dx<'a>(&'a self, domain: &'a Domain) -> Lookup<'a, DxLookup>;
    /// The user signet of `address` at its DIME domain.
    fn signet<'a>(&'a self, address: &'a str) -> Lookup<'a, SignetLookup>;
    /// Whether `address` is a hosted DIME user here, and in which mode. A key store that
    /// cannot be read answers [`Hosted::No`] and logs why.
    fn hosted(&self, address: &str) -> Hosted;
}

/// SMTP and LMTP through the outbound client; diagnostics are `smtp`
/// ([`crate::deliver::Outcome::DIAGNOSTIC_TYPE`]).
impl Transport<SmtpHop> for Deliverer {
    fn deliver<'a>(
        &'a self,
        hop: &'a SmtpHop,
        message: Message<'a>,
        recipients: &'a [usize],
    ) -> Delivery<'a> {
        Box::pin(async move {
            Deliverer::deliver_body(
                self,
                hop,
                message.envelope,
                message.queue_id,
                message.body.as_ref(),
                recipients,
            )
            .await
            .into_iter()
            .map(|(index, outcome)| (index, outcome.to_delivery_outcome()))
            .collect()
        })
    }
}
