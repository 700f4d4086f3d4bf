//! Tokio glue for the queue: leases due recipients from the store, routes and delivers them,
//! feeds the outcomes to the [`Scheduler`] and performs its actions.
//!
//! Order of the durable steps for one message, so that a crash can duplicate but never lose:
//! 1. `lease_due` (fsync): the recipients are ours until the lease lapses or a restart releases it.
//! 2. delivery.
//! 3. any DSN is appended (fsync) *before* the recipients it reports on are marked final, so a
//!    crash in between repeats the attempt (and perhaps the DSN), never drops the DSN.
//! 4. state changes and removal in one `settle` transaction (fsync), batched across messages
//!    like the ingress group commit.

use super::{
    Action, DeliveryOutcome, Diagnosis, DsnInput, EnhancedStatus, QueuedMessage, ReportOutcome,
    Route, RouteSettings, Scheduler, ServedDomains, build_dsn, group_by_route,
};
use crate::deliver::{Deliverer, NextHop, Outcome as DeliverOutcome};
use crate::envelope::QueueId;
use crate::metrics::{DeliveryLabel, Metrics};
use crate::store::{Lease, MessageRecord, Outcome, Settlement, Store, StoreError, UnixTime};
use rand::SeedableRng;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{Notify, Semaphore, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, error, info, info_span, warn};

/// Where each route's mail goes.
#[derive(Debug, Clone)]
pub struct Hops {
    /// The backend MTA for served domains; `None` keeps their mail deferred.
    pub backend: Option<NextHop>,
    /// The smarthost for everything else, if configured.
    pub smarthost: Option<NextHop>,
}

/// Everything the queue runner needs.
pub struct QueueRunner {
    store: Store,
    deliverer: Deliverer,
    scheduler: Scheduler,
    served: ServedDomains,
    route_settings: RouteSettings,
    hops: Hops,
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
    active: std::sync::Mutex<std::collections::HashMap<(QueueId, usize), Lease>>,
    /// Set by `dimegate queue drain --peer`: every route goes to this SMTP peer instead.
    handoff: std::sync::Mutex<Option<NextHop>>,
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
        deliverer: Deliverer,
        scheduler: Scheduler,
        served_domains: &[String],
        hops: Hops,
        hostname: String,
        metrics: Metrics,
        wake: Arc<Notify>,
        poll_interval: Duration,
        max_in_flight: usize,
    ) -> QueueRunner {
        let (settle_tx, settle_rx) = mpsc::unbounded_channel();
        QueueRunner {
            store,
            deliverer,
            scheduler,
            served: ServedDomains::new(served_domains),
            route_settings: RouteSettings {
                // Only its presence matters to routing; `deliver` reads the address from the hop.
                smarthost: hops.smarthost.as_ref().map(|_| "configured".to_owned()),
            },
            hops,
            hostname,
            metrics,
            wake,
            poll_interval,
            in_flight: Arc::new(Semaphore::new(max_in_flight.max(1))),
            settle_tx,
            settle_rx: std::sync::Mutex::new(Some(settle_rx)),
            active: std::sync::Mutex::new(std::collections::HashMap::new()),
            handoff: std::sync::Mutex::new(None),
        }
    }

    /// From now on, hand every recipient to `peer` (a node that will deliver it) instead of
    /// its own route: how a node that is being removed empties its queue.
    pub fn hand_off_to(&self, peer: NextHop) {
        *self.handoff.lock().unwrap_or_else(|p| p.into_inner()) = Some(peer);
        self.wake();
    }

    fn handoff(&self) -> Option<NextHop> {
        self.handoff
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The table of running attempts (see [`QueueRunner::active`]).
    fn active(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<(QueueId, usize), Lease>> {
        self.active.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs until `shutdown`; then stops leasing and waits for deliveries in flight (their
    /// leases would lapse anyway, and a restart releases them).
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let tracker = TaskTracker::new();
        if let Some(rx) = self
            .settle_rx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            tokio::spawn(settler(self.store.clone(), rx));
        }
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
                _ = self.wake.notified() => {}
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
            Ok::<_, StoreError>((store.get(queue_id)?, store.body(queue_id)?))
        })
        .await;
        let (record, body) = match loaded {
            Ok(Ok((Some(r), Some(b)))) => (r, b),
            Ok(Ok(_)) => return, // deleted by the operator meanwhile
            Ok(Err(e)) => return error!(error = %e, "cannot load the message"),
            Err(e) => return error!(error = %e, "load task failed"),
        };
        let indices: Vec<usize> = leases.iter().map(|l| l.recipient).collect();
        let groups = group_by_route(
            &record.envelope.recipients,
            &indices,
            &self.served,
            &self.route_settings,
        );
        let mut outcomes: Vec<(usize, DeliveryOutcome)> = Vec::new();
        for (index, err) in &groups.unroutable {
            outcomes.push((*index, DeliveryOutcome::unroutable(err)));
        }
        for (route, idxs) in &groups.groups {
            let route_name = match route {
                Route::Backend => "backend",
                Route::Smarthost => "smarthost",
                Route::Mx { .. } => "mx",
            };
            let handoff = self.handoff();
            let route_name = if handoff.is_some() {
                "peer"
            } else {
                route_name
            };
            let hop = match route {
                _ if handoff.is_some() => handoff,
                Route::Backend => self.hops.backend.clone(),
                Route::Smarthost => self.hops.smarthost.clone(),
                Route::Mx { domain } => Some(NextHop::Mx {
                    domain: domain.clone(),
                }),
            };
            let Some(hop) = hop else {
                for &i in idxs {
                    outcomes.push((
                        i,
                        DeliveryOutcome::Deferred(Diagnosis {
                            local_reason: Some(
                                "no [backend] address configured for served domains".into(),
                            ),
                            status: Some(EnhancedStatus::new(4, 3, 5)),
                            ..Diagnosis::default()
                        }),
                    ));
                }
                continue;
            };
            let addresses: Vec<String> = idxs
                .iter()
                .filter_map(|&i| record.envelope.recipients.get(i).map(|r| r.address.clone()))
                .collect();
            let started = Instant::now();
            let results = self
                .deliverer
                .deliver(&hop, &record.envelope, queue_id, &body, &addresses)
                .await;
            self.metrics
                .delivery_seconds
                .observe(started.elapsed().as_secs_f64());
            for (&i, (_, outcome)) in idxs.iter().zip(results.iter()) {
                let label = match outcome {
                    DeliverOutcome::Delivered { .. } => "delivered",
                    DeliverOutcome::Deferred { .. } => "deferred",
                    DeliverOutcome::Failed { .. } => "failed",
                };
                self.metrics
                    .deliveries
                    .get_or_create(&DeliveryLabel {
                        route: route_name,
                        outcome: label,
                    })
                    .inc();
                if let (DeliverOutcome::Deferred { .. }, Some(s)) = (outcome, outcome.status()) {
                    self.metrics.count_deferral(s.class, s.subject);
                }
                outcomes.push((i, outcome.to_delivery_outcome()));
            }
            // A deliverer that answered fewer recipients than asked: the rest are deferred.
            for &i in idxs.iter().skip(results.len()) {
                outcomes.push((
                    i,
                    DeliveryOutcome::Deferred(Diagnosis {
                        local_reason: Some("no outcome reported by the delivery".into()),
                        ..Diagnosis::default()
                    }),
                ));
            }
        }
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

    /// Performs the scheduler's actions: DSNs first (durably queued), then one settlement.
    async fn perform(
        &self,
        record: &MessageRecord,
        body: &[u8],
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
                Action::ReleaseLease { .. } | Action::Lease { .. } => {}
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
        body: &[u8],
        reports: &[super::RecipientReport],
        now: UnixTime,
    ) -> Result<(), crate::store::AppendError> {
        let kind = if reports
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
        };
        let input = DsnInput {
            queue_id: record.queue_id,
            envelope: &record.envelope,
            message: body,
            reporting_mta: &self.hostname,
            now,
            message_id_seed: rand::random(),
            reports,
            max_full_bytes: self.scheduler.policy().dsn_max_full_bytes,
        };
        let Some(dsn) = build_dsn(&input) else {
            return Ok(());
        };
        let envelope = dsn.envelope(&self.hostname, now);
        let id = self.store.append(envelope, dsn.message).await?;
        self.metrics
            .dsns
            .get_or_create(&crate::metrics::DsnLabel { kind })
            .inc();
        info!(dsn_queue_id = %id, kind, to = %record.envelope.sender, "DSN queued");
        self.wake.notify_one();
        Ok(())
    }
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
            self.metrics
                .dsns
                .get_or_create(&crate::metrics::DsnLabel { kind: "failure" })
                .inc();
            info!(dsn_queue_id = %dsn, "DSN queued");
            self.wake.notify_one();
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
            Ok::<_, StoreError>((store.get(queue_id)?, store.body(queue_id)?))
        })
        .await
        .map_err(|_| StoreError::Unavailable)??;
        match loaded {
            (Some(r), Some(b)) => (r, b),
            _ => return Err(StoreError::NoSuchMessage { queue_id }),
        }
    };
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
            let input = DsnInput {
                queue_id,
                envelope: &record.envelope,
                message: &body,
                reporting_mta: hostname,
                now,
                message_id_seed: rand::random(),
                reports: &reports,
                max_full_bytes: scheduler.policy().dsn_max_full_bytes,
            };
            if let Some(dsn) = build_dsn(&input) {
                let id = store
                    .append(dsn.envelope(hostname, now), dsn.message)
                    .await
                    .map_err(|_| StoreError::Unavailable)?;
                dsn_id = Some(id);
            }
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
