//! The queue runner: the loop that takes due recipients from the store and gets them out.
//! For each leased message: look up what routing needs ([`Lookups`]), [`route`] each recipient
//! to a [`NextHop`], hand each group to its [`Transport`] (SMTP/LMTP now, DMTP next), feed the
//! outcomes, keyed by recipient index, to the queue's [`Scheduler`] and perform its actions.
//! It owns the clock, the RNG and the store I/O, so that `queue` (policy), `deliver` (SMTP) and
//! the route stay pure or transport-specific.
//!
//! "What is due" has one implementation, the store's durable schedule (`Store::lease_due`,
//! which finds and leases in one transaction): the runner asks it whenever ingress queues a
//! message, a delivery slot frees up, or the poll interval passes (which bounds how late a retry
//! runs).
//!
//! Order of the durable steps for one message, so that a crash can duplicate but never lose:
//! 1. `lease_due` (fsync): the recipients are ours until the lease lapses or a restart releases it.
//! 2. delivery.
//! 3. any DSN is appended (fsync) *before* the recipients it reports on are marked final, so a
//!    crash in between repeats the attempt (and perhaps the DSN), never drops the DSN.
//! 4. state changes and removal in one `settle` transaction (fsync), batched across messages
//!    like the ingress group commit.

mod authres;
mod bridged;
mod directory;
mod dmtp;
mod forward;
mod route;
#[cfg(test)]
mod tests;
mod transport;

pub use authres::SenderChecks;
pub use bridged::BridgeTransport;
pub use directory::DimeDirectory;
pub use dmtp::DmtpTransport;
pub use route::{
    Arrival, Author, BridgeHop, Conversion, DimeMode, DimePolicies, DimePolicy, DmtpHop, DxLookup,
    Fallback, Hold, Hosted, Lookups, NextHop, ReportHop, RouteConfig, RouteError, ServedDomains,
    SignetLookup, author_of, recipient_domain, route, wants_dx,
};
pub use transport::{Delivery, Directory, Lookup, Message, Transport};

use crate::body::Body;

use crate::deliver::NextHop as SmtpHop;
use crate::domain::Domain;
use crate::envelope::QueueId;
use crate::metrics::{DeliveryLabel, Metrics};
use crate::queue::{
    Action, DsnInput, QueuedMessage, RecipientReport, ReportOutcome, Scheduler, build_dsn,
};
use crate::status::{DeliveryOutcome, Diagnosis, EnhancedStatus};
use crate::store::{Lease, MessageRecord, Outcome, Settlement, Store, StoreError};
use crate::time::UnixTime;
use rand::SeedableRng;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{Notify, Semaphore, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, error, info, info_span, warn};

/// The transports the runner can hand a message to, one per kind of [`NextHop`], and the
/// directory its lookup phase asks.
pub struct Transports {
    /// SMTP and LMTP: backend, smarthost, MX.
    pub smtp: Arc<dyn Transport<SmtpHop>>,
    /// DIME: wrap and DMTP, the conversions before the backend, and the lookups they need.
    /// While `None`, `_dx` is not looked up, so [`route`] never picks DMTP, and D/MIME that
    /// arrived over DMTP is held.
    pub dime: Option<DimeTransports>,
}

/// The DIME side of [`Transports`].
pub struct DimeTransports {
    /// Wrap, then DMTP to the recipient domain's DX.
    pub dmtp: Box<dyn Transport<DmtpHop>>,
    /// Convert for the recipient (unwrap, protect), then SMTP/LMTP to the backend.
    pub bridge: Box<dyn Transport<BridgeHop>>,
    /// Open a failure report sealed to a bridge identity and queue it for the legacy sender.
    pub reports: Box<dyn Transport<ReportHop>>,
    /// `_dx` records, signets, hosted users.
    pub directory: Box<dyn Directory>,
}

impl std::fmt::Debug for Transports {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transports")
            .field("dime", &self.dime.is_some())
            .finish_non_exhaustive()
    }
}

/// Everything the queue runner needs.
pub struct QueueRunner {
    store: Store,
    transports: Transports,
    scheduler: Scheduler,
    route: RouteConfig,
    hostname: String,
    metrics: Metrics,
    wake: Arc<Notify>,
    poll_interval: Duration,
    in_flight: Arc<Semaphore>,
    settle_tx: mpsc::UnboundedSender<SettleRequest>,
    settle_rx: std::sync::Mutex<Option<mpsc::UnboundedReceiver<SettleRequest>>>,
    /// Recipients with an attempt running in this process, with their latest lease. A lease
    /// can lapse under an attempt that is only waiting for a connection slot (a busy next hop,
    /// `max_connections_per_hop`); `lease_due` then hands the recipient out again. Instead of a
    /// second, concurrent attempt (a duplicate delivery), the running attempt gets the new
    /// lease and settles its outcome against it.
    active: std::sync::Mutex<HashMap<(QueueId, usize), Lease>>,
    /// Set by `dimegate queue drain --peer`: every route goes to this SMTP peer instead.
    handoff: std::sync::Mutex<Option<SmtpHop>>,
}

type SettleRequest = (
    Vec<Settlement>,
    oneshot::Sender<Result<(), Arc<StoreError>>>,
);

impl QueueRunner {
    /// Bundles the runner's parts. `wake` is notified by ingress when a message is queued.
    #[allow(clippy::too_many_arguments)] // the runner's wiring is its configuration
    pub fn new(
        store: Store,
        transports: Transports,
        scheduler: Scheduler,
        route: RouteConfig,
        hostname: String,
        metrics: Metrics,
        wake: Arc<Notify>,
        poll_interval: Duration,
        max_in_flight: usize,
    ) -> QueueRunner {
        let (settle_tx, settle_rx) = mpsc::unbounded_channel();
        QueueRunner {
            store,
            transports,
            scheduler,
            route,
            hostname,
            metrics,
            wake,
            poll_interval,
            in_flight: Arc::new(Semaphore::new(max_in_flight.max(1))),
            settle_tx,
            settle_rx: std::sync::Mutex::new(Some(settle_rx)),
            active: std::sync::Mutex::new(HashMap::new()),
            handoff: std::sync::Mutex::new(None),
        }
    }

    /// From now on, hand every recipient to `peer` (a node that will deliver it) instead of
    /// its own route: how a node that is being removed empties its queue.
    pub fn hand_off_to(&self, peer: SmtpHop) {
        *self.handoff.lock().unwrap_or_else(|p| p.into_inner()) = Some(peer);
        self.wake();
    }

    fn handoff(&self) -> Option<SmtpHop> {
        self.handoff
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The table of running attempts (see [`QueueRunner::active`]).
    fn active(&self) -> std::sync::MutexGuard<'_, HashMap<(QueueId, usize), Lease>> {
        self.active.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts the task that commits settlements (once; later calls do nothing).
    fn start_settler(&self) {
        if let Some(rx) = self
            .settle_rx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            tokio::spawn(settler(self.store.clone(), rx));
        }
    }

    /// Runs until `shutdown`; then stops leasing and waits for deliveries in flight (their
    /// leases would lapse anyway, and a restart releases them).
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let tracker = TaskTracker::new();
        self.start_settler();
        loop {
            if shutdown.is_cancelled() {
                break;
            }
            let budget = self.in_flight.available_permits();
            if budget == 0 {
                tokio::select! {
                    permit = self.in_flight.acquire() => drop(permit),
                    _ = shutdown.cancelled() => break,
                }
                continue;
            }
            let store = self.store.clone();
            let lease_for = self.scheduler.policy().lease;
            let now = UnixTime::now();
            let leased =
                tokio::task::spawn_blocking(move || store.lease_due(now, lease_for, budget)).await;
            let leases = match leased {
                Ok(Ok(l)) => l,
                Ok(Err(e)) => {
                    error!(error = %e, "leasing due recipients failed");
                    Vec::new()
                }
                Err(e) => {
                    error!(error = %e, "lease task failed");
                    Vec::new()
                }
            };
            let full_batch = leases.len() >= budget;
            let mut by_message: BTreeMap<QueueId, Vec<Lease>> = BTreeMap::new();
            {
                let mut active = self.active();
                for lease in leases {
                    let key = (lease.queue_id, lease.recipient);
                    if let Some(running) = active.get_mut(&key) {
                        // Lapsed under an attempt still running here: renew, do not repeat.
                        *running = lease;
                        continue;
                    }
                    active.insert(key, lease.clone());
                    by_message.entry(lease.queue_id).or_default().push(lease);
                }
            }
            for (queue_id, leases) in by_message {
                let keys: Vec<(QueueId, usize)> =
                    leases.iter().map(|l| (l.queue_id, l.recipient)).collect();
                let Ok(permit) = Arc::clone(&self.in_flight).acquire_owned().await else {
                    let mut active = self.active();
                    for key in &keys {
                        active.remove(key);
                    }
                    break;
                };
                let this = Arc::clone(&self);
                tracker.spawn(
                    async move {
                        this.attempt(queue_id, leases).await;
                        // Whatever became of the attempt, a lease still in the store is for
                        // the next one (after it lapses).
                        let mut active = this.active();
                        for key in &keys {
                            active.remove(key);
                        }
                        drop(active);
                        drop(permit);
                    }
                    .instrument(info_span!("delivery", %queue_id)),
                );
            }
            if full_batch {
                continue;
            }
            tokio::select! {
                _ = tokio::time::sleep(self.poll_interval) => {}
                _ = self.wake.notified() => {
                    // Under load arrivals come one commit after another; waiting a moment
                    // lets one lease transaction (and its fsync) take the rest of the burst
                    // instead of one each. Unloaded, it adds GATHER to a delivery's start.
                    tokio::time::sleep(GATHER).await;
                }
                _ = shutdown.cancelled() => break,
            }
        }
        tracker.close();
        // Each delivery waits for its own settlement, so when they are done nothing is pending.
        if tokio::time::timeout(Duration::from_secs(30), tracker.wait())
            .await
            .is_err()
        {
            warn!("deliveries still running at shutdown; their leases will be released at start");
        }
    }

    /// One delivery attempt for the leased recipients of one message.
    async fn attempt(&self, queue_id: QueueId, leases: Vec<Lease>) {
        let store = self.store.clone();
        let loaded = tokio::task::spawn_blocking(move || {
            Ok::<_, StoreError>((store.get(queue_id)?, store.body_handle(queue_id)?))
        })
        .await;
        // A large body is an open file here, read in chunks as it is sent.
        let (record, body) = match loaded {
            Ok(Ok((Some(r), Some(b)))) => (r, b),
            Ok(Ok(_)) => return, // deleted by the operator meanwhile
            Ok(Err(e)) => return error!(error = %e, "cannot load the message"),
            Err(e) => return error!(error = %e, "load task failed"),
        };
        let indices: Vec<usize> = leases.iter().map(|l| l.recipient).collect();
        let message = Message {
            queue_id,
            envelope: &record.envelope,
            body: &body,
        };
        let outcomes = self.deliver(message, &indices).await;
        let now = UnixTime::now();
        let actions = {
            let mut rng = rand::rngs::StdRng::from_entropy();
            let message = QueuedMessage {
                record: &record,
                delay_warned: record.delay_warned,
            };
            self.scheduler
                .handle_outcomes(&message, &outcomes, now, &mut rng)
        };
        self.perform(&record, &body, &leases, actions, now).await;
    }

    /// The lookup phase, route and transports for the recipients at `indices` of one message:
    /// one outcome per index.
    async fn deliver(
        &self,
        message: Message<'_>,
        indices: &[usize],
    ) -> Vec<(usize, DeliveryOutcome)> {
        let mut outcomes = Vec::with_capacity(indices.len());
        let handoff = self.handoff();
        for (hop, group) in self.plan(message, indices, handoff.as_ref()).await {
            match &hop {
                NextHop::Fail(e) => {
                    let outcome = DeliveryOutcome::Failed(e.diagnosis());
                    outcomes.extend(group.iter().map(|&i| (i, outcome.clone())));
                }
                NextHop::Hold(hold) => {
                    // A hold is a deferral like a transport's 4xx: the same metric sees both
                    // (a `_dx` lookup that failed for now, a cautious user without a signet).
                    for _ in &group {
                        self.metrics
                            .count_deferral(hold.status.class, hold.status.subject);
                    }
                    let outcome = DeliveryOutcome::Deferred(hold.diagnosis());
                    outcomes.extend(group.iter().map(|&i| (i, outcome.clone())));
                }
                NextHop::Smtp(smtp) => {
                    let label = match smtp {
                        _ if handoff.as_ref() == Some(smtp) => "peer",
                        SmtpHop::Backend { .. } => "backend",
                        SmtpHop::Smarthost { .. } => "smarthost",
                        SmtpHop::Mx { .. } => "mx",
                    };
                    let transport = &*self.transports.smtp;
                    outcomes.extend(self.call(transport, smtp, label, message, &group).await);
                }
                // `plan` routes to these only when the DIME transports exist.
                NextHop::Dmtp(dmtp) => {
                    if let Some(dime) = &self.transports.dime {
                        let transport = &*dime.dmtp;
                        outcomes.extend(self.call(transport, dmtp, "dmtp", message, &group).await);
                    }
                }
                NextHop::Bridge(bridge) => {
                    if let Some(dime) = &self.transports.dime {
                        let transport = &*dime.bridge;
                        let label = bridge.conversion.as_str();
                        outcomes.extend(self.call(transport, bridge, label, message, &group).await);
                    }
                }
                NextHop::ReturnReport(report) => {
                    if let Some(dime) = &self.transports.dime {
                        let transport = &*dime.reports;
                        let label = "return_report";
                        outcomes.extend(self.call(transport, report, label, message, &group).await);
                    }
                }
            }
        }
        outcomes
    }

    /// Looks up, routes and groups the recipients at `indices` by next hop, hops in order of
    /// their first recipient, so each hop gets one transaction with all its recipients (RFC
    /// 5321 §3.3 allows many RCPTs per transaction, and the receiver stores the message once).
    /// Indices past the envelope's recipients are skipped. Each decision is logged with the
    /// queue id (the span's) and counted.
    async fn plan(
        &self,
        message: Message<'_>,
        indices: &[usize],
        handoff: Option<&SmtpHop>,
    ) -> Vec<(NextHop, Vec<usize>)> {
        let envelope = message.envelope;
        let directory = self.transports.dime.as_ref().map(|d| &*d.directory);
        let arrival = match (&envelope.dime, directory) {
            // Our own domain as origin: we signed it at submission (see `forward`).
            (Some(d), _)
                if Domain::parse(&d.origin).is_ok_and(|o| self.route.served.contains(&o)) =>
            {
                Arrival::Submitted {
                    author: envelope.sender.clone(),
                }
            }
            (Some(_), _) => Arrival::Dime,
            (None, Some(directory)) => {
                let hosted = directory.hosted(&envelope.sender) == Hosted::Trustful;
                Arrival::Smtp {
                    author: author_of(&envelope.sender, hosted, &self.route.served),
                }
            }
            // Without DIME transports nothing is wrapped: `_dx` is never asked.
            (None, None) => Arrival::Smtp { author: None },
        };
        let mut dx: HashMap<Domain, DxLookup> = HashMap::new();
        let mut plan: Vec<(NextHop, Vec<usize>)> = Vec::new();
        for &index in indices {
            let Some(recipient) = envelope.recipients.get(index) else {
                continue;
            };
            let address = &recipient.address;
            let lookups = self.lookups(address, &arrival, directory, &mut dx).await;
            let hop = match (&envelope.dime, directory) {
                // Sealed bytes, not RFC 5322: never to an SMTP hop as they are.
                (Some(_), None) => dime_arrival_hold(),
                _ => match (route(address, &arrival, &lookups, &self.route), handoff) {
                    // A draining node hands what it would deliver or hold to its peer; what
                    // needs our keys (DIME arrivals, wrapping, conversions) stays here.
                    (NextHop::Smtp(_) | NextHop::Hold(_), Some(peer))
                        if envelope.dime.is_none() =>
                    {
                        NextHop::Smtp(peer.clone())
                    }
                    (hop, _) => hop,
                },
            };
            self.decided(address, &hop, &lookups);
            match plan.iter_mut().find(|(h, _)| *h == hop) {
                Some((_, members)) => members.push(index),
                None => plan.push((hop, vec![index])),
            }
        }
        plan
    }

    /// The lookup phase for one recipient: what [`route`] needs beyond the address, the
    /// arrival and the configuration. `_dx` is asked once per domain per attempt (in `dx`), and
    /// only where [`wants_dx`]; the recipient's signet only where `_dx` was found.
    async fn lookups(
        &self,
        address: &str,
        arrival: &Arrival,
        directory: Option<&dyn Directory>,
        dx: &mut HashMap<Domain, DxLookup>,
    ) -> Lookups {
        let mut lookups = Lookups::default();
        let Some(directory) = directory else {
            return lookups;
        };
        let domain = match recipient_domain(address) {
            Ok(Some(domain)) => domain,
            Ok(None) => return lookups,
            Err(_) => return lookups,
        };
        if self.route.served.contains(&domain) {
            lookups.hosted = directory.hosted(address);
            return lookups;
        }
        if !wants_dx(&domain, arrival, &self.route) {
            return lookups;
        }
        lookups.dx = match dx.get(&domain) {
            Some(found) => found.clone(),
            None => {
                let found = directory.dx(&domain).await;
                dx.insert(domain.clone(), found.clone());
                found
            }
        };
        if lookups.dx == DxLookup::Found {
            lookups.signet = directory.signet(address).await;
        }
        lookups
    }

    /// Logs and counts a routing decision.
    fn decided(&self, address: &str, hop: &NextHop, lookups: &Lookups) {
        let flow = hop.flow();
        self.metrics
            .route_decisions
            .get_or_create(&crate::metrics::FlowLabel { flow })
            .inc();
        match hop {
            NextHop::Hold(hold) => info!(rcpt = %address, flow, reason = %hold.reason, "routed"),
            NextHop::Fail(e) => info!(rcpt = %address, flow, reason = %e, "routed"),
            NextHop::Dmtp(dmtp) => {
                info!(rcpt = %address, flow, author = ?dmtp.author, dx = ?lookups.dx, "routed")
            }
            _ => info!(rcpt = %address, flow, dx = ?lookups.dx, hosted = ?lookups.hosted, "routed"),
        }
    }

    /// Hands `group` to `transport` and returns one outcome per index of `group`, counting them
    /// in the metrics; an index the transport did not answer is deferred.
    async fn call<H>(
        &self,
        transport: &dyn Transport<H>,
        hop: &H,
        route: &'static str,
        message: Message<'_>,
        group: &[usize],
    ) -> Vec<(usize, DeliveryOutcome)> {
        let started = Instant::now();
        let mut answered: BTreeMap<usize, DeliveryOutcome> = BTreeMap::new();
        for (index, outcome) in transport.deliver(hop, message, group).await {
            answered.entry(index).or_insert(outcome);
        }
        self.metrics
            .delivery_seconds
            .observe(started.elapsed().as_secs_f64());
        let mut outcomes = Vec::with_capacity(group.len());
        for &index in group {
            let Some(outcome) = answered.remove(&index) else {
                outcomes.push((
                    index,
                    DeliveryOutcome::Deferred(Diagnosis {
                        local_reason: Some("no outcome reported by the delivery".into()),
                        ..Diagnosis::default()
                    }),
                ));
                continue;
            };
            let label = match &outcome {
                DeliveryOutcome::Delivered(_)
                | DeliveryOutcome::Relayed(_)
                | DeliveryOutcome::PassedOn(_) => "delivered",
                DeliveryOutcome::Deferred(_) => "deferred",
                DeliveryOutcome::Failed(_) => "failed",
            };
            self.metrics
                .deliveries
                .get_or_create(&DeliveryLabel {
                    route,
                    outcome: label,
                })
                .inc();
            if let DeliveryOutcome::Deferred(Diagnosis {
                status: Some(s), ..
            }) = &outcome
            {
                self.metrics.count_deferral(s.class, s.subject);
            }
            outcomes.push((index, outcome));
        }
        outcomes
    }

    /// Performs the scheduler's actions: DSNs first (durably queued), then one settlement.
    async fn perform(
        &self,
        record: &MessageRecord,
        body: &Body,
        leases: &[Lease],
        actions: Vec<Action>,
        now: UnixTime,
    ) {
        // The latest lease: renewed in `active` if the first one lapsed during the attempt.
        let lease_of = |recipient: usize| {
            self.active()
                .get(&(record.queue_id, recipient))
                .cloned()
                .or_else(|| leases.iter().find(|l| l.recipient == recipient).cloned())
        };
        let mut settlements = Vec::new();
        for action in actions {
            match action {
                Action::Delivered { recipient, .. } => {
                    if let Some(lease) = lease_of(recipient) {
                        settlements.push(Settlement::Complete {
                            lease,
                            outcome: Outcome::Delivered,
                        });
                    }
                }
                Action::Defer {
                    recipient,
                    next_at,
                    error,
                    ..
                } => {
                    if let Some(lease) = lease_of(recipient) {
                        info!(rcpt = %lease.address, next_attempt = next_at.0, %error, "deferred");
                        settlements.push(Settlement::Complete {
                            lease,
                            outcome: Outcome::Deferred { next_at, error },
                        });
                    }
                }
                Action::Fail {
                    recipient, reason, ..
                } => {
                    if let Some(lease) = lease_of(recipient) {
                        warn!(rcpt = %lease.address, %reason, "failed");
                        settlements.push(Settlement::Complete {
                            lease,
                            outcome: Outcome::Failed { reply: reason },
                        });
                    }
                }
                Action::SendDsn { reports, .. } => {
                    if let Err(e) = self.send_dsn(record, body, &reports, now).await {
                        // Without the DSN queued the recipients must not become final: leave
                        // them leased; the lease lapses and the attempt (and DSN) is repeated.
                        error!(error = %e, "cannot queue the DSN; the attempt will be repeated");
                        return;
                    }
                }
                Action::MarkDelayWarned { queue_id } => {
                    settlements.push(Settlement::MarkDelayWarned { queue_id })
                }
                Action::Remove { queue_id } => settlements.push(Settlement::Remove { queue_id }),
            }
        }
        if settlements.is_empty() {
            return;
        }
        let (tx, rx) = oneshot::channel();
        if self.settle_tx.send((settlements, tx)).is_err() {
            return error!("settler gone; the lease will lapse and the attempt be repeated");
        }
        match rx.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                error!(error = %e, "cannot record the outcome; the attempt will be repeated")
            }
            Err(_) => error!("settler dropped the request; the attempt will be repeated"),
        }
    }

    async fn send_dsn(
        &self,
        record: &MessageRecord,
        body: &Body,
        reports: &[RecipientReport],
        now: UnixTime,
    ) -> Result<(), DsnError> {
        // Whole, within the process's budget for whole bodies (see `crate::body`).
        let body = body.read_all().await?;
        let queued = append_dsn(
            &self.store,
            &self.scheduler,
            &self.hostname,
            record,
            &body,
            reports,
            now,
        )
        .await?;
        if let Some(id) = queued {
            self.dsn_queued(id, dsn_kind(reports));
        }
        Ok(())
    }

    /// Counts and logs a queued DSN and wakes the loop to send it.
    fn dsn_queued(&self, id: QueueId, kind: &'static str) {
        self.metrics
            .dsns
            .get_or_create(&crate::metrics::DsnLabel { kind })
            .inc();
        info!(dsn_queue_id = %id, kind, "DSN queued");
        self.wake.notify_one();
    }
}

/// Why a DSN could not be queued.
#[derive(Debug, thiserror::Error)]
enum DsnError {
    #[error(transparent)]
    Body(#[from] crate::body::BodyError),
    #[error(transparent)]
    Append(#[from] crate::store::AppendError),
}

/// The kind of DSN `reports` make, for the metrics: a failure if any recipient failed, else a
/// delay warning if any is delayed, else a success notice.
fn dsn_kind(reports: &[RecipientReport]) -> &'static str {
    if reports
        .iter()
        .any(|r| matches!(r.outcome, ReportOutcome::Failed(_)))
    {
        "failure"
    } else if reports
        .iter()
        .any(|r| matches!(r.outcome, ReportOutcome::Delayed { .. }))
    {
        "delay"
    } else {
        "success"
    }
}

/// Builds the DSN for `reports` and appends it durably; `None` when none is owed. The one path
/// by which both the runner and the operator's `bounce` queue a DSN.
async fn append_dsn(
    store: &Store,
    scheduler: &Scheduler,
    hostname: &str,
    record: &MessageRecord,
    body: &[u8],
    reports: &[RecipientReport],
    now: UnixTime,
) -> Result<Option<QueueId>, crate::store::AppendError> {
    let input = DsnInput {
        queue_id: record.queue_id,
        envelope: &record.envelope,
        message: body,
        reporting_mta: hostname,
        now,
        message_id_seed: rand::random(),
        reports,
        max_full_bytes: scheduler.policy().dsn_max_full_bytes,
    };
    let Some(dsn) = build_dsn(&input) else {
        return Ok(None);
    };
    let id = store
        .append(dsn.envelope(hostname, now), dsn.message)
        .await?;
    Ok(Some(id))
}

impl QueueRunner {
    /// The operator's `bounce`, see [`bounce`].
    pub async fn bounce(&self, queue_id: QueueId, reason: &str) -> Result<bool, StoreError> {
        let dsn_queued = match bounce(
            &self.store,
            &self.scheduler,
            &self.hostname,
            queue_id,
            reason,
        )
        .await
        {
            Ok(d) => d,
            Err(StoreError::NoSuchMessage { .. }) => return Ok(false),
            Err(e) => return Err(e),
        };
        if let Some(dsn) = dsn_queued {
            self.dsn_queued(dsn, "failure");
        }
        Ok(true)
    }

    /// Wakes the scheduler now (after `retry`/`release`).
    pub fn wake(&self) {
        self.wake.notify_one();
    }
}

/// Fails every recipient of `queue_id` not yet final or in flight, queues the failure DSN first
/// (durably), then marks them failed and removes the message once all its recipients are final.
/// Works with or without a running server (the CLI calls it on a stopped one). Returns the DSN's
/// queue id, if one was owed (none for a null sender or NOTIFY=NEVER).
pub async fn bounce(
    store: &Store,
    scheduler: &Scheduler,
    hostname: &str,
    queue_id: QueueId,
    reason: &str,
) -> Result<Option<QueueId>, StoreError> {
    let (record, body) = {
        let store = store.clone();
        let loaded = tokio::task::spawn_blocking(move || {
            Ok::<_, StoreError>((store.get(queue_id)?, store.body_handle(queue_id)?))
        })
        .await
        .map_err(|_| StoreError::Unavailable)??;
        match loaded {
            (Some(r), Some(b)) => (r, b),
            _ => return Err(StoreError::NoSuchMessage { queue_id }),
        }
    };
    let body = body
        .read_all()
        .await
        .map_err(|e| StoreError::Io(std::io::Error::other(e)))?;
    let targets: Vec<usize> = record
        .recipients
        .iter()
        .enumerate()
        .filter(|(_, r)| {
            !r.state.is_final() && !matches!(r.state, crate::store::RecipientState::Leased { .. })
        })
        .map(|(i, _)| i)
        .collect();
    let message = QueuedMessage {
        record: &record,
        delay_warned: record.delay_warned,
    };
    let now = UnixTime::now();
    let mut dsn_id = None;
    for action in scheduler.bounce(&message, &targets, reason) {
        if let Action::SendDsn { reports, .. } = action {
            dsn_id = append_dsn(store, scheduler, hostname, &record, &body, &reports, now)
                .await
                .map_err(|_| StoreError::Unavailable)?
                .or(dsn_id);
        }
    }
    let store = store.clone();
    let reason = reason.to_owned();
    tokio::task::spawn_blocking(move || {
        let after = store.apply(queue_id, &crate::store::AdminAction::Bounce { reason }, now)?;
        if let Some(after) = after
            && after.recipients.iter().all(|r| r.state.is_final())
        {
            store.delete(queue_id)?;
        }
        Ok(dsn_id)
    })
    .await
    .map_err(|_| StoreError::Unavailable)?
}

/// How long the loop waits after a wake-up before it leases (see `run`).
const GATHER: Duration = Duration::from_millis(5);

/// Commits settlements in batches: whatever queued up while the previous commit ran goes into
/// the next one, so concurrent deliveries share an fsync.
async fn settler(store: Store, mut rx: mpsc::UnboundedReceiver<SettleRequest>) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < 512 {
            match rx.try_recv() {
                Ok(more) => batch.push(more),
                Err(_) => break,
            }
        }
        let mut items = Vec::new();
        let mut spans = Vec::new();
        for (settlements, reply) in batch {
            spans.push((items.len(), settlements.len(), reply));
            items.extend(settlements);
        }
        let store = store.clone();
        let result =
            tokio::task::spawn_blocking(move || store.settle(UnixTime::now(), &items)).await;
        match result {
            Ok(Ok(answers)) => {
                for (start, len, reply) in spans {
                    let bad = answers
                        .get(start..start + len)
                        .and_then(|a| a.iter().find_map(|a| a.as_ref().err()));
                    if let Some(e) = bad {
                        warn!(error = %e, "outcome not recorded (stale lease or message gone)");
                    }
                    let _ = reply.send(Ok(()));
                }
            }
            Ok(Err(e)) => {
                let e = Arc::new(e);
                for (_, _, reply) in spans {
                    let _ = reply.send(Err(Arc::clone(&e)));
                }
            }
            Err(e) => error!(error = %e, "settle task failed"),
        }
    }
}

/// A D/MIME message that arrived over DMTP holds sealed bytes, not RFC 5322: it must never be
/// handed to an SMTP next hop as it is. Without the DIME transports (which open it for trustful
/// users and pass it on sealed for cautious ones) it waits; the hold keeps it visible in `queue
/// list`.
fn dime_arrival_hold() -> NextHop {
    NextHop::Hold(route::Hold {
        status: EnhancedStatus::new(4, 3, 0),
        reason: "D/MIME message received over DMTP: held until the bridge opens it".into(),
    })
}
