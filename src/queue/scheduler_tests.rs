//! Scheduler tests on a fake clock. Actions are applied with the store's own state transitions
//! (`RecipientStatus::lease`, `defer`, ...), so a decision the store would refuse fails the test;
//! recipients are leased as `Store::lease_due` leases them (`is_due`, then `lease`).

use super::*;
use crate::envelope::{Envelope, Notify};
use crate::queue::Jitter;
use rand::SeedableRng;
use rand::rngs::StdRng;
use std::net::SocketAddr;
use std::time::Duration;

const T0: UnixTime = UnixTime(1_700_000_000);
const H: u64 = 3600;
const D: u64 = 86_400;

/// An SMTP reply as a DSN's Diagnostic-Code carries it.
fn smtp(text: impl Into<String>) -> DiagnosticCode {
    DiagnosticCode::new(DiagnosticType::Smtp, text)
}

fn at(offset: u64) -> UnixTime {
    T0.plus(Duration::from_secs(offset))
}

fn exact_policy() -> Policy {
    Policy {
        jitter: Jitter::NONE,
        ..Policy::default()
    }
}

fn record(addresses: &[&str]) -> MessageRecord {
    let envelope = Envelope {
        client: SocketAddr::from(([192, 0, 2, 1], 1025)),
        ..Envelope::for_test("alice@example.org", addresses, T0.0)
    };
    MessageRecord {
        queue_id: QueueId(7),
        recipients: addresses.iter().map(|a| RecipientStatus::new(*a)).collect(),
        envelope,
        size: 100,
        delay_warned: false,
    }
}

fn deferred(reply: &str) -> DeliveryOutcome {
    DeliveryOutcome::Deferred(Diagnosis {
        remote_mta: Some("mx.other.example".into()),
        reply: Some(smtp(reply)),
        ..Diagnosis::default()
    })
}

fn failed(reply: &str) -> DeliveryOutcome {
    DeliveryOutcome::Failed(Diagnosis {
        remote_mta: Some("mx.other.example".into()),
        reply: Some(smtp(reply)),
        ..Diagnosis::default()
    })
}

fn delivered() -> DeliveryOutcome {
    DeliveryOutcome::Delivered(Diagnosis {
        remote_mta: Some("mx.other.example".into()),
        reply: Some(smtp("250 2.0.0 Ok")),
        ..Diagnosis::default()
    })
}

/// One message in a fake store, changed only through the store's transitions.
struct Sim {
    record: MessageRecord,
    delay_warned: bool,
    dsns: Vec<(UnixTime, Vec<RecipientReport>)>,
    removed: bool,
    /// Recipients leased by the last `lease_due`.
    leased: Vec<usize>,
}

impl Sim {
    fn new(record: MessageRecord) -> Sim {
        Sim {
            record,
            delay_warned: false,
            dsns: Vec::new(),
            removed: false,
            leased: Vec::new(),
        }
    }

    fn view(&self) -> QueuedMessage<'_> {
        QueuedMessage {
            record: &self.record,
            delay_warned: self.delay_warned,
        }
    }

    fn transition(
        &mut self,
        index: usize,
        f: impl FnOnce(RecipientStatus) -> Result<RecipientStatus, crate::store::TransitionError>,
    ) {
        let status = self.record.recipients[index].clone();
        self.record.recipients[index] = f(status).expect("the store accepts the transition");
    }

    /// What `Store::lease_due` does to this message at `now`: every due recipient is leased
    /// for the policy's lease.
    fn lease_due(&mut self, scheduler: &Scheduler, now: UnixTime) {
        let until = now.plus(scheduler.policy().lease);
        self.leased = (0..self.record.recipients.len())
            .filter(|&r| self.record.recipients[r].is_due(now))
            .collect();
        for r in self.leased.clone() {
            self.transition(r, |s| s.lease(now, until));
        }
    }

    /// When the store's schedule next has a recipient of this message due.
    fn next_due(&self, now: UnixTime) -> Option<UnixTime> {
        self.record
            .recipients
            .iter()
            .filter_map(|r| r.next_attempt(now))
            .min()
    }

    fn apply(&mut self, actions: Vec<Action>, now: UnixTime) {
        for action in actions {
            match action {
                Action::Delivered { recipient, at, .. } => {
                    self.transition(recipient, |s| s.delivered(at))
                }
                Action::Defer {
                    recipient,
                    next_at,
                    error,
                    ..
                } => self.transition(recipient, |s| s.defer(next_at, error)),
                Action::Fail {
                    recipient, reason, ..
                } => {
                    if matches!(
                        self.record.recipients[recipient].state,
                        RecipientState::Leased { .. }
                    ) {
                        self.transition(recipient, |s| s.fail(now, reason))
                    } else {
                        self.transition(recipient, |s| s.bounce(now, reason))
                    }
                }
                Action::SendDsn { reports, .. } => self.dsns.push((now, reports)),
                Action::MarkDelayWarned { .. } => self.delay_warned = true,
                Action::Remove { .. } => self.removed = true,
            }
        }
    }
}

/// The whole life of a message whose only recipient answers 451 forever: attempts on the
/// schedule, one delay warning with the first deferral at or after 4h, a failure DSN and removal
/// at exactly 5 days.
#[test]
fn retries_on_schedule_warns_once_and_expires_after_five_days() {
    let scheduler = Scheduler::new(exact_policy());
    let mut rng = StdRng::seed_from_u64(1);
    let mut sim = Sim::new(record(&["bob@other.example"]));
    let mut now = T0;
    let mut attempts = Vec::new();
    for _ in 0..200 {
        sim.lease_due(&scheduler, now);
        if !sim.leased.is_empty() {
            attempts.push(now.0 - T0.0);
            let outcomes: Vec<_> = sim
                .leased
                .iter()
                .map(|&r| (r, deferred("451 4.7.1 Greylisted, try again later")))
                .collect();
            let actions = scheduler.handle_outcomes(&sim.view(), &outcomes, now, &mut rng);
            sim.apply(actions, now);
        }
        if sim.removed {
            break;
        }
        match sim.next_due(now) {
            Some(next) => {
                assert!(next > now, "the loop would spin at {now:?}");
                now = next;
            }
            None => panic!("nothing pending but the message is still queued"),
        }
    }
    assert!(sim.removed, "never expired");

    let mut want = vec![0u64];
    let steps = [60, 300, 900, 1800, 3600, 7200, 14_400, 28_800];
    loop {
        let n = want.len();
        let next = want[n - 1] + steps[(n - 1).min(steps.len() - 1)];
        if next >= 5 * D {
            want.push(5 * D);
            break;
        }
        want.push(next);
    }
    assert_eq!(attempts, want);
    assert_eq!(attempts.len(), 23);

    // Two DSNs: the warning with the first deferral past 4h (the attempt at 28 260 s, 7h51m:
    // at most one retry step late, as Postfix's delay_warning_time), the failure at 5 days.
    assert_eq!(sim.dsns.len(), 2, "{:?}", sim.dsns);
    let (warned_at, warning) = &sim.dsns[0];
    assert_eq!(*warned_at, at(28_260));
    assert!(want.contains(&28_260) && !want.iter().any(|&t| (4 * H..28_260).contains(&t)));
    assert!(matches!(
        warning[0].outcome,
        ReportOutcome::Delayed { will_retry_until, .. } if will_retry_until == at(5 * D)
    ));
    let (failed_at, failure) = &sim.dsns[1];
    assert_eq!(*failed_at, at(5 * D));
    let ReportOutcome::Failed(diagnosis) = &failure[0].outcome else {
        panic!("{failure:?}");
    };
    assert_eq!(
        diagnosis.reply.as_ref().map(|r| r.text.as_str()),
        Some("451 4.7.1 Greylisted, try again later")
    );
    assert!(matches!(
        sim.record.recipients[0].state,
        RecipientState::Failed { at: t, .. } if t == at(5 * D)
    ));
    assert_eq!(sim.record.recipients[0].attempts, 23);
}

#[test]
fn handle_outcome_table() {
    let scheduler = Scheduler::new(exact_policy());
    let q = QueueId(7);
    // (attempts before, now offset, outcome, expected actions without the DSN reports)
    let rows: Vec<(u32, u64, DeliveryOutcome, Vec<&str>)> = vec![
        (0, 0, delivered(), vec!["delivered", "remove"]),
        (0, 0, deferred("451 busy"), vec!["defer@60"]),
        (3, 2 * H, deferred("451 busy"), vec!["defer@9000"]),
        // Never warned and long past delay_warning: the warning goes out with the deferral.
        (
            22,
            5 * D - 10,
            deferred("451 busy"),
            vec![
                "defer@432000",
                "dsn",
                "MarkDelayWarned { queue_id: QueueId(7) }",
            ],
        ),
        (
            22,
            5 * D,
            deferred("451 busy"),
            vec!["fail", "dsn", "remove"],
        ),
        (0, 0, failed("550 5.1.1 no"), vec!["fail", "dsn", "remove"]),
    ];
    for (attempts, now, outcome, want) in rows {
        let mut r = record(&["bob@other.example"]);
        r.recipients[0].attempts = attempts;
        r.recipients[0].state = RecipientState::Leased { until: at(now + H) };
        let view = QueuedMessage {
            record: &r,
            delay_warned: false,
        };
        let mut rng = StdRng::seed_from_u64(0);
        let actions = scheduler.handle_outcomes(&view, &[(0, outcome.clone())], at(now), &mut rng);
        let got: Vec<String> = actions
            .iter()
            .map(|a| match a {
                Action::Delivered { .. } => "delivered".to_owned(),
                Action::Defer { next_at, .. } => format!("defer@{}", next_at.0 - T0.0),
                Action::Fail { .. } => "fail".to_owned(),
                Action::SendDsn { queue_id, .. } => {
                    assert_eq!(*queue_id, q);
                    "dsn".to_owned()
                }
                Action::Remove { .. } => "remove".to_owned(),
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(got, want, "attempts {attempts} at +{now}s: {outcome:?}");
    }
}

#[test]
fn requiretls_deferrals_expire_as_5_7_30() {
    // RFC 8689 §5: every attempt deferred with 4.7.30 (no REQUIRETLS path); the bounce says 5.7.30.
    let scheduler = Scheduler::new(exact_policy());
    let mut r = record(&["bob@other.example"]);
    r.recipients[0].state = RecipientState::Leased { until: at(6 * D) };
    let view = QueuedMessage {
        record: &r,
        delay_warned: true,
    };
    let outcome = DeliveryOutcome::Deferred(Diagnosis {
        local_reason: Some("the message requires TLS (REQUIRETLS) and ...".into()),
        status: Some(EnhancedStatus::new(4, 7, 30)),
        ..Diagnosis::default()
    });
    let early = scheduler.handle_outcomes(
        &view,
        &[(0, outcome.clone())],
        at(D),
        &mut StdRng::seed_from_u64(0),
    );
    assert!(
        matches!(early.first(), Some(Action::Defer { .. })),
        "{early:?}"
    );
    let actions = scheduler.handle_outcomes(
        &view,
        &[(0, outcome)],
        at(5 * D),
        &mut StdRng::seed_from_u64(0),
    );
    let Some(Action::SendDsn { reports, .. }) = actions.get(1) else {
        panic!("{actions:?}");
    };
    let ReportOutcome::Failed(d) = &reports[0].outcome else {
        panic!("{reports:?}");
    };
    assert_eq!(d.status, Some(EnhancedStatus::new(5, 7, 30)));
}

#[test]
fn expiry_without_a_reply_says_delivery_time_expired() {
    let scheduler = Scheduler::new(exact_policy());
    let mut r = record(&["bob@other.example"]);
    r.recipients[0].state = RecipientState::Leased { until: at(6 * D) };
    let view = QueuedMessage {
        record: &r,
        delay_warned: true,
    };
    let outcome = DeliveryOutcome::Deferred(Diagnosis {
        local_reason: Some("connection to mx.other.example timed out".into()),
        ..Diagnosis::default()
    });
    let actions = scheduler.handle_outcomes(
        &view,
        &[(0, outcome)],
        at(5 * D),
        &mut StdRng::seed_from_u64(0),
    );
    let Some(Action::SendDsn { reports, .. }) = actions.get(1) else {
        panic!("{actions:?}");
    };
    let ReportOutcome::Failed(d) = &reports[0].outcome else {
        panic!("{reports:?}");
    };
    assert_eq!(d.status, Some(EnhancedStatus::EXPIRED));
    assert!(
        d.local_reason
            .as_deref()
            .is_some_and(|r| r.contains("gave up after 5 day(s)") && r.contains("timed out")),
        "{d:?}"
    );
}

#[test]
fn mixed_outcomes_report_once_and_keep_the_message_while_one_is_pending() {
    let scheduler = Scheduler::new(exact_policy());
    let mut sim = Sim::new(record(&[
        "a@other.example",
        "b@other.example",
        "c@other.example",
    ]));
    // b asked for success notices as well.
    sim.record.envelope.recipients[1].notify = Some(Notify {
        never: false,
        success: true,
        failure: true,
        delay: true,
    });
    sim.lease_due(&scheduler, T0);
    assert_eq!(sim.leased, vec![0, 1, 2]);
    let outcomes = [
        (0, failed("550 5.1.1 no such user")),
        (1, delivered()),
        (2, deferred("451 4.3.0 try later")),
    ];
    let actions =
        scheduler.handle_outcomes(&sim.view(), &outcomes, T0, &mut StdRng::seed_from_u64(0));
    sim.apply(actions, T0);
    assert!(!sim.removed);
    assert_eq!(sim.dsns.len(), 1);
    let reported: Vec<usize> = sim.dsns[0].1.iter().map(|r| r.recipient).collect();
    assert_eq!(reported, vec![0, 1]);
    let kinds: Vec<StateKindOf> = sim.record.recipients.iter().map(kind).collect();
    assert_eq!(kinds, ["failed", "delivered", "deferred"]);

    // c goes through on the retry: no DSN (default NOTIFY has no SUCCESS), message removed.
    let now = at(60);
    sim.lease_due(&scheduler, now);
    assert_eq!(sim.leased, vec![2]);
    let actions = scheduler.handle_outcomes(
        &sim.view(),
        &[(2, delivered())],
        now,
        &mut StdRng::seed_from_u64(0),
    );
    assert_eq!(
        actions,
        vec![
            Action::Delivered {
                queue_id: QueueId(7),
                recipient: 2,
                at: now
            },
            Action::Remove {
                queue_id: QueueId(7)
            }
        ]
    );
}

type StateKindOf = &'static str;

fn kind(s: &RecipientStatus) -> StateKindOf {
    match s.state {
        RecipientState::Queued => "queued",
        RecipientState::Leased { .. } => "leased",
        RecipientState::Deferred { .. } => "deferred",
        RecipientState::Held => "held",
        RecipientState::Delivered { .. } => "delivered",
        RecipientState::Failed { .. } => "failed",
    }
}

#[test]
fn no_dsn_action_for_the_null_sender_or_notify_never() {
    let scheduler = Scheduler::new(exact_policy());
    for null_sender in [true, false] {
        let mut r = record(&["bob@other.example"]);
        if null_sender {
            r.envelope.sender.clear();
        } else {
            r.envelope.recipients[0].notify = Some(Notify {
                never: true,
                ..Notify::default()
            });
        }
        r.recipients[0].state = RecipientState::Leased { until: at(H) };
        let view = QueuedMessage {
            record: &r,
            delay_warned: false,
        };
        let actions = scheduler.handle_outcomes(
            &view,
            &[(0, failed("550 5.1.1 no"))],
            T0,
            &mut StdRng::seed_from_u64(0),
        );
        assert!(
            !actions.iter().any(|a| matches!(a, Action::SendDsn { .. })),
            "{actions:?}"
        );
        assert!(actions.contains(&Action::Remove {
            queue_id: QueueId(7)
        }));
    }
}

/// A lease that lapsed was released (and perhaps re-leased) by the store; a late outcome from the
/// worker that held it must not move the recipient.
#[test]
fn an_outcome_for_a_recipient_no_longer_leased_is_ignored() {
    let scheduler = Scheduler::new(exact_policy());
    let mut sim = Sim::new(record(&["bob@other.example"]));
    sim.lease_due(&scheduler, T0);
    assert_eq!(sim.leased, vec![0]);
    let lapse = at(30 * 60);
    // A late outcome from the dead worker for a lease that is not its own any more would be
    // indistinguishable; but an outcome for a recipient that is not leased is ignored.
    let mut r = sim.record.clone();
    r.recipients[0].state = RecipientState::Queued;
    let view = QueuedMessage {
        record: &r,
        delay_warned: false,
    };
    assert!(
        scheduler
            .handle_outcomes(
                &view,
                &[(0, delivered())],
                lapse,
                &mut StdRng::seed_from_u64(0)
            )
            .is_empty()
    );
}

#[test]
fn delay_warning_off_never_warns() {
    let scheduler = Scheduler::new(Policy {
        delay_warning: None,
        ..exact_policy()
    });
    let mut r = record(&["a@x.example"]);
    r.recipients[0].state = RecipientState::Leased { until: at(13 * H) };
    let view = QueuedMessage {
        record: &r,
        delay_warned: false,
    };
    let actions = scheduler.handle_outcomes(
        &view,
        &[(0, deferred("451 4.3.0 try later"))],
        at(12 * H),
        &mut StdRng::seed_from_u64(0),
    );
    assert!(
        matches!(actions.as_slice(), [Action::Defer { .. }]),
        "{actions:?}"
    );
}

#[test]
fn operator_bounce_fails_waiting_recipients_only() {
    let scheduler = Scheduler::new(exact_policy());
    let mut sim = Sim::new(record(&["a@x.example", "b@x.example", "c@x.example"]));
    sim.record.recipients[1].state = RecipientState::Leased { until: at(H) };
    sim.record.recipients[2].state = RecipientState::Held;
    let actions = scheduler.bounce(&sim.view(), &[0, 1, 2, 9], "bounced by the operator");
    sim.apply(actions, T0);
    let kinds: Vec<StateKindOf> = sim.record.recipients.iter().map(kind).collect();
    assert_eq!(kinds, ["failed", "leased", "failed"]);
    assert_eq!(sim.dsns.len(), 1);
    assert_eq!(sim.dsns[0].1.len(), 2);
    assert!(!sim.removed, "b is still in flight");
}

#[test]
fn jittered_retries_stay_within_the_policy() {
    let scheduler = Scheduler::new(Policy::default());
    let mut rng = StdRng::seed_from_u64(99);
    let mut r = record(&["a@x.example"]);
    r.recipients[0].attempts = 4;
    r.recipients[0].state = RecipientState::Leased { until: at(H) };
    let view = QueuedMessage {
        record: &r,
        delay_warned: true,
    };
    for _ in 0..50 {
        let actions = scheduler.handle_outcomes(&view, &[(0, deferred("451 x"))], T0, &mut rng);
        let [Action::Defer { next_at, .. }] = actions.as_slice() else {
            panic!("{actions:?}");
        };
        // The fifth step is 1h; ±10%.
        assert!((3240..=3960).contains(&(next_at.0 - T0.0)), "{next_at:?}");
    }
}

/// The store does not hand out a deferred message before it is due again, so the delay
/// warning must come from `handle_outcomes`: the first deferral at or after `delay_warning`
/// sends it (once), naming every recipient still waiting.
#[test]
fn a_deferral_past_delay_warning_sends_the_warning_once() {
    let scheduler = Scheduler::new(exact_policy());
    let mut rng = StdRng::seed_from_u64(1);
    let mut r = record(&["a@x.example", "b@x.example", "c@x.example"]);
    r.recipients[0].state = RecipientState::Leased { until: at(5 * H) };
    r.recipients[1].state = RecipientState::Deferred { next_at: at(6 * H) };
    r.recipients[1].last_error = Some("mx.x.example said: 452 4.2.2 full".into());
    r.recipients[2].state = RecipientState::Delivered { at: T0 };

    // Before the warning time: only the deferral.
    let early = QueuedMessage {
        record: &r,
        delay_warned: false,
    };
    let actions =
        scheduler.handle_outcomes(&early, &[(0, deferred("450 4.3.0 busy"))], at(H), &mut rng);
    assert!(
        matches!(actions.as_slice(), [Action::Defer { .. }]),
        "{actions:?}"
    );

    // Past it (4h by default): the warning and the mark.
    let actions = scheduler.handle_outcomes(
        &early,
        &[(0, deferred("450 4.3.0 busy"))],
        at(4 * H + 1),
        &mut rng,
    );
    let [
        Action::Defer { .. },
        Action::SendDsn { reports, .. },
        Action::MarkDelayWarned { .. },
    ] = actions.as_slice()
    else {
        panic!("{actions:?}");
    };
    let names: Vec<usize> = reports.iter().map(|r| r.recipient).collect();
    assert_eq!(
        names,
        [0, 1],
        "the waiting recipients, not the delivered one"
    );
    let ReportOutcome::Delayed {
        diagnosis,
        will_retry_until,
    } = &reports[0].outcome
    else {
        panic!("{reports:?}");
    };
    assert_eq!(
        diagnosis.reply.as_ref().map(|r| r.text.as_str()),
        Some("450 4.3.0 busy")
    );
    assert_eq!(*will_retry_until, at(5 * D));
    assert_eq!(reports[0].last_attempt, Some(at(4 * H + 1)));
    let ReportOutcome::Delayed { diagnosis, .. } = &reports[1].outcome else {
        panic!("{reports:?}");
    };
    assert_eq!(
        diagnosis.reply.as_ref().map(|r| r.text.as_str()),
        Some("452 4.2.2 full")
    );
    assert_eq!(reports[1].last_attempt, None);

    // Already warned: never again.
    let warned = QueuedMessage {
        record: &r,
        delay_warned: true,
    };
    let actions = scheduler.handle_outcomes(
        &warned,
        &[(0, deferred("450 4.3.0 busy"))],
        at(5 * H),
        &mut rng,
    );
    assert!(
        matches!(actions.as_slice(), [Action::Defer { .. }]),
        "{actions:?}"
    );

    // A null sender gets no DSN, but the warning is marked as done all the same.
    r.envelope.sender.clear();
    let null = QueuedMessage {
        record: &r,
        delay_warned: false,
    };
    let actions = scheduler.handle_outcomes(
        &null,
        &[(0, deferred("450 4.3.0 busy"))],
        at(5 * H),
        &mut rng,
    );
    assert!(
        matches!(
            actions.as_slice(),
            [Action::Defer { .. }, Action::MarkDelayWarned { .. }]
        ),
        "{actions:?}"
    );
}

/// NOTIFY=SUCCESS: a next hop that speaks DSN got the NOTIFY and reports success itself, so the
/// queue sends nothing; one without DSN makes it send `relayed`; LMTP without DSN `delivered`.
#[test]
fn success_dsn_depends_on_what_the_next_hop_does_with_notify() {
    let scheduler = Scheduler::new(exact_policy());
    let mut rng = StdRng::seed_from_u64(3);
    let ok = Diagnosis {
        remote_mta: Some("mx.other.example".into()),
        reply: Some(smtp("250 2.0.0 Ok")),
        ..Diagnosis::default()
    };
    let rows: [(DeliveryOutcome, Option<&str>); 3] = [
        (DeliveryOutcome::PassedOn(ok.clone()), None),
        (DeliveryOutcome::Relayed(ok.clone()), Some("relayed")),
        (DeliveryOutcome::Delivered(ok.clone()), Some("delivered")),
    ];
    for (outcome, want) in rows {
        let mut r = record(&["bob@other.example"]);
        r.envelope.recipients[0].notify = Some(Notify {
            success: true,
            failure: true,
            ..Notify::default()
        });
        r.recipients[0].state = RecipientState::Leased { until: at(H) };
        let view = QueuedMessage {
            record: &r,
            delay_warned: false,
        };
        let actions = scheduler.handle_outcomes(&view, &[(0, outcome.clone())], T0, &mut rng);
        assert!(
            matches!(actions.first(), Some(Action::Delivered { .. })),
            "{actions:?}"
        );
        assert!(
            matches!(actions.last(), Some(Action::Remove { .. })),
            "{actions:?}"
        );
        let got = actions.iter().find_map(|a| match a {
            Action::SendDsn { reports, .. } => Some(match reports[0].outcome {
                ReportOutcome::Delivered(_) => "delivered",
                ReportOutcome::Relayed(_) => "relayed",
                _ => "other",
            }),
            _ => None,
        });
        assert_eq!(got, want, "{outcome:?}");
    }
}
