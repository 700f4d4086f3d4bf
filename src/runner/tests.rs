//! The runner against a real store (in a temporary directory) and a fake SMTP transport that
//! records what it was asked and answers from a script. What the runner does with the answers
//! (settle, DSN, removal) is read back from the store.

use super::*;
use crate::deliver::TlsPolicy;
use crate::envelope::{Envelope, Notify};
use crate::store::RecipientState;
use std::sync::Mutex;

/// One call of the fake: the hop, and per index asked the NOTIFY of that RCPT.
type Call = (SmtpHop, Vec<(usize, Option<Notify>)>);

struct FakeSmtp {
    calls: Arc<Mutex<Vec<Call>>>,
    /// The answer for each index, from its recipient's address and NOTIFY.
    answer: fn(&crate::envelope::Recipient) -> Option<DeliveryOutcome>,
}

impl Transport<SmtpHop> for FakeSmtp {
    fn deliver<'a>(
        &'a self,
        hop: &'a SmtpHop,
        message: Message<'a>,
        recipients: &'a [usize],
    ) -> Delivery<'a> {
        Box::pin(async move {
            let asked = recipients
                .iter()
                .map(|&i| (i, message.envelope.recipients[i].notify))
                .collect();
            self.calls
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((hop.clone(), asked));
            recipients
                .iter()
                .filter_map(|&i| (self.answer)(&message.envelope.recipients[i]).map(|o| (i, o)))
                .collect()
        })
    }
}

fn relayed() -> DeliveryOutcome {
    DeliveryOutcome::Relayed(Diagnosis {
        remote_mta: Some("127.0.0.1".into()),
        ..Diagnosis::default()
    })
}

fn backend() -> SmtpHop {
    SmtpHop::Backend {
        addr: "127.0.0.1:2525".parse().expect("addr"),
        lmtp: false,
        tls: TlsPolicy::Disabled,
    }
}

struct Harness {
    _dir: tempfile::TempDir,
    store: Store,
    runner: QueueRunner,
    calls: Arc<Mutex<Vec<Call>>>,
}

fn harness(
    backend: Option<SmtpHop>,
    answer: fn(&crate::envelope::Recipient) -> Option<DeliveryOutcome>,
) -> Harness {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&dir.path().join("queue.redb"), None).expect("store");
    let calls = Arc::new(Mutex::new(Vec::new()));
    let mut registry = prometheus_client::registry::Registry::default();
    let runner = QueueRunner::new(
        store.clone(),
        Transports {
            smtp: Arc::new(FakeSmtp {
                calls: Arc::clone(&calls),
                answer,
            }),
            dime: None,
        },
        Scheduler::new(crate::queue::Policy::default()),
        RouteConfig {
            served: ServedDomains::new([Domain::parse("example.org").expect("domain")]),
            backend,
            smarthost: None,
            dime: Default::default(),
        },
        "gw.example.org".into(),
        Metrics::register(&mut registry),
        Arc::new(tokio::sync::Notify::new()),
        Duration::from_secs(1),
        4,
    );
    Harness {
        _dir: dir,
        store,
        runner,
        calls,
    }
}

impl Harness {
    /// Queues `envelope`, leases its recipients and runs one attempt.
    async fn attempt(&self, envelope: Envelope) -> QueueId {
        let id = self
            .store
            .append(envelope, b"Subject: t\r\n\r\nhi\r\n".to_vec())
            .await
            .expect("append");
        let leases = self
            .store
            .lease_due(UnixTime::now(), Duration::from_secs(600), 100)
            .expect("lease");
        assert!(leases.iter().all(|l| l.queue_id == id));
        self.runner.start_settler();
        tokio::time::timeout(Duration::from_secs(30), self.runner.attempt(id, leases))
            .await
            .expect("the attempt ends");
        id
    }

    /// Every message in the store other than `except`, with its body.
    fn others(&self, except: QueueId) -> Vec<(MessageRecord, String)> {
        self.store
            .list(&crate::store::ListFilter::default(), None)
            .expect("list")
            .into_iter()
            .filter(|r| r.queue_id != except)
            .map(|summary| {
                let id = summary.queue_id;
                let record = self.store.get(id).expect("get").expect("a record");
                let body = self.store.body(id).expect("body").expect("a body");
                (record, String::from_utf8_lossy(&body).into_owned())
            })
            .collect()
    }
}

fn notify(success: bool, never: bool) -> Option<Notify> {
    Some(Notify {
        never,
        success,
        failure: !never,
        delay: false,
    })
}

/// Two RCPTs of one address, one with NOTIFY=SUCCESS, one with NOTIFY=NEVER: the transport
/// sees each index with its own NOTIFY, and only the first gets a success DSN (`relayed`).
#[tokio::test]
async fn a_duplicate_rcpt_keeps_its_own_notify() {
    let h = harness(Some(backend()), |_| Some(relayed()));
    let mut envelope = Envelope::for_test(
        "alice@other.example",
        &["bob@example.org", "bob@example.org"],
        UnixTime::now().0,
    );
    envelope.recipients[0].notify = notify(true, false);
    envelope.recipients[1].notify = notify(false, true);
    let id = h.attempt(envelope).await;

    let calls = h.calls.lock().unwrap_or_else(|p| p.into_inner()).clone();
    assert_eq!(
        calls,
        vec![(
            backend(),
            vec![(0, notify(true, false)), (1, notify(false, true))]
        )]
    );
    assert_eq!(h.store.get(id).expect("get"), None, "both final: removed");
    let dsns = h.others(id);
    assert_eq!(dsns.len(), 1, "one success DSN");
    let (record, body) = &dsns[0];
    assert_eq!(record.envelope.sender, "");
    assert_eq!(record.envelope.recipients[0].address, "alice@other.example");
    assert_eq!(body.matches("Action: relayed").count(), 1, "{body}");
    assert_eq!(body.matches("Final-Recipient:").count(), 1, "{body}");
}

/// Unroutable, held and unanswered recipients never reach the transport as such, and each gets
/// its own outcome: a failure DSN for the first, deferral for the others.
#[tokio::test]
async fn route_outcomes_without_a_transport_call() {
    // No backend: served mail is held. The transport answers nothing for carol.
    let h = harness(None, |r| (r.address != "carol@other.example").then(relayed));
    let envelope = Envelope::for_test(
        "alice@other.example",
        &[
            "nobody@",
            "bob@example.org",
            "carol@other.example",
            "dave@third.example",
        ],
        UnixTime::now().0,
    );
    let id = h.attempt(envelope).await;

    let calls = h.calls.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let mx = |d: &str| SmtpHop::Mx {
        domain: Domain::parse(d).expect("domain"),
    };
    assert_eq!(
        calls,
        vec![
            (mx("other.example"), vec![(2, None)]),
            (mx("third.example"), vec![(3, None)]),
        ],
        "one call per next hop, only for routable recipients"
    );
    let record = h.store.get(id).expect("get").expect("still queued");
    let states: Vec<&RecipientState> = record.recipients.iter().map(|r| &r.state).collect();
    assert!(
        matches!(states[0], RecipientState::Failed { .. }),
        "{states:?}"
    );
    assert!(
        matches!(states[1], RecipientState::Deferred { .. }),
        "{states:?}"
    );
    assert!(
        matches!(states[2], RecipientState::Deferred { .. }),
        "{states:?}"
    );
    assert!(
        matches!(states[3], RecipientState::Delivered { .. }),
        "{states:?}"
    );
    assert_eq!(
        record.recipients[1].last_error.as_deref(),
        Some("no [backend] address configured for served domains")
    );
    assert_eq!(
        record.recipients[2].last_error.as_deref(),
        Some("no outcome reported by the delivery")
    );
    let dsns = h.others(id);
    assert_eq!(dsns.len(), 1, "the failure DSN for nobody@");
    let body = &dsns[0].1;
    assert!(body.contains("Status: 5.1.3"), "{body}");
    assert!(
        body.contains("Diagnostic-Code: X-Dimegate; recipient address \"nobody@\" has no domain"),
        "{body}"
    );
}
