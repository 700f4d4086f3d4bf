use super::*;
use crate::deliver::{RemoteReply, Stage};
use crate::resolve::MxHost;
use rand::SeedableRng;

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

fn mx(hosts: &[(u16, &str)]) -> MxAnswer {
    MxAnswer::Exchanges(
        hosts
            .iter()
            .map(|(preference, host)| MxHost {
                preference: *preference,
                host: (*host).into(),
            })
            .collect(),
    )
}

fn labels(targets: &[Target]) -> Vec<String> {
    targets.iter().map(Target::label).collect()
}

#[test]
fn attempt_order_table() {
    let answer = mx(&[(10, "a"), (20, "b"), (30, "c")]);
    let addresses = [
        (
            "a",
            vec![ip("2001:db8::1"), ip("192.0.2.1"), ip("192.0.2.2")],
        ),
        ("b", vec![]),
        ("c", vec![ip("192.0.2.3"), ip("2001:db8::3")]),
    ];
    for (families, cap, expected) in [
        (
            AddressFamilies::Ipv4ThenIpv6,
            10,
            &[
                "a[192.0.2.1]:25",
                "a[192.0.2.2]:25",
                "a[2001:db8::1]:25",
                "c[192.0.2.3]:25",
                "c[2001:db8::3]:25",
            ][..],
        ),
        (
            AddressFamilies::Ipv6ThenIpv4,
            10,
            &[
                "a[2001:db8::1]:25",
                "a[192.0.2.1]:25",
                "a[192.0.2.2]:25",
                "c[2001:db8::3]:25",
                "c[192.0.2.3]:25",
            ][..],
        ),
        (
            AddressFamilies::Ipv4Only,
            10,
            &["a[192.0.2.1]:25", "a[192.0.2.2]:25", "c[192.0.2.3]:25"][..],
        ),
        (
            AddressFamilies::Ipv6Only,
            10,
            &["a[2001:db8::1]:25", "c[2001:db8::3]:25"][..],
        ),
        // The cap counts addresses over all hosts (smtp_mx_address_limit).
        (
            AddressFamilies::Ipv4ThenIpv6,
            2,
            &["a[192.0.2.1]:25", "a[192.0.2.2]:25"][..],
        ),
        // A cap of 0 still tries one address.
        (AddressFamilies::Ipv4ThenIpv6, 0, &["a[192.0.2.1]:25"][..]),
    ] {
        let got = attempt_order(&answer, &addresses, families, cap);
        assert_eq!(labels(&got), expected, "{families:?} cap {cap}");
    }
    assert!(attempt_order(&MxAnswer::NullMx, &addresses, AddressFamilies::default(), 5).is_empty());
}

#[test]
fn equal_preferences_are_shuffled_by_the_callers_rng_only() {
    let answer = mx(&[(10, "a"), (10, "b"), (10, "c"), (20, "z")]);
    let hosts_in = |rng: Option<&mut rand::rngs::StdRng>| {
        let mut plan = Plan::mx(
            &answer,
            rng,
            25,
            TlsPolicy::Opportunistic,
            AddressFamilies::default(),
            10,
            nothing(),
        );
        let mut hosts = Vec::new();
        while let Step::Lookup(host) = plan.next() {
            hosts.push(host);
        }
        hosts
    };
    assert_eq!(hosts_in(None), ["a", "b", "c", "z"]);
    let mut seen = std::collections::HashSet::new();
    for seed in 0..32 {
        let hosts = hosts_in(Some(&mut rand::rngs::StdRng::seed_from_u64(seed)));
        assert_eq!(hosts[3], "z", "preference order kept");
        // The same seed gives the same order: deterministic under the caller's RNG.
        assert_eq!(
            hosts,
            hosts_in(Some(&mut rand::rngs::StdRng::seed_from_u64(seed)))
        );
        seen.insert(hosts);
    }
    assert!(seen.len() > 1, "equal preferences do get shuffled");
}

fn nothing() -> Outcome {
    Outcome::local(
        true,
        None,
        EnhancedStatus::new(5, 4, 4),
        "no address found".into(),
    )
}

fn target(n: u8) -> Target {
    Target {
        name: format!("h{n}"),
        addr: SocketAddr::new(IpAddr::from([192, 0, 2, n]), 25),
        lmtp: false,
        tls: TlsPolicy::Opportunistic,
        verify: super::Verify::Any,
        relay: true,
    }
}

fn reply_failure(stage: Stage, code: u16) -> HopFailure {
    let class = (code / 100) as u8;
    let reply = RemoteReply {
        host: "h".into(),
        mta: "h[192.0.2.1]:25".into(),
        stage,
        code,
        status: Some(EnhancedStatus::new(class, 0, 0)),
        text: "text".into(),
    };
    HopFailure {
        stage,
        permanent: code >= 500 && stage >= Stage::MailFrom,
        status: EnhancedStatus::new(class, 0, 0),
        reason: Reason::Reply(reply),
        retry_without_tls: false,
    }
}

fn local_failure(stage: Stage) -> HopFailure {
    HopFailure {
        stage,
        reason: Reason::Local {
            host: Some("h".into()),
            text: format!("{stage:?} failed"),
        },
        status: EnhancedStatus::new(4, 4, 1),
        permanent: false,
        retry_without_tls: false,
    }
}

/// What the delivery ends with, given each attempt's hop failure in turn.
fn verdict(failures: Vec<HopFailure>) -> (usize, Outcome) {
    let count = failures.len();
    let mut plan = Plan::fixed((1..=count as u8).map(target).collect(), 10, nothing());
    let mut failures = failures.into_iter();
    let mut attempts = 0;
    loop {
        match plan.next() {
            Step::Attempt(_) => {
                attempts += 1;
                plan.handle_failure(failures.next().unwrap());
            }
            Step::Finish(outcome) => return (attempts, outcome),
            Step::Lookup(_) => unreachable!("fixed plans look nothing up"),
        }
    }
}

#[test]
fn what_next_after_each_attempt_table() {
    let defer = |o: &Outcome| matches!(o, Outcome::Deferred { .. });
    for (case, failures, deferred, status, explains) in [
        (
            "every address refuses MAIL FROM permanently: fail",
            vec![
                reply_failure(Stage::MailFrom, 550),
                reply_failure(Stage::MailFrom, 554),
            ],
            false,
            EnhancedStatus::new(5, 0, 0),
            Stage::MailFrom,
        ),
        (
            "one permanent, one temporary: defer",
            vec![
                reply_failure(Stage::MailFrom, 550),
                local_failure(Stage::Connect),
            ],
            true,
            EnhancedStatus::new(4, 4, 1),
            Stage::Connect,
        ),
        (
            "a 5xx greeting counts as temporary (smtp_skip_5xx_greeting)",
            vec![reply_failure(Stage::Greeting, 554)],
            true,
            EnhancedStatus::new(4, 0, 0),
            Stage::Greeting,
        ),
        (
            "a 5xx EHLO too",
            vec![
                reply_failure(Stage::Hello, 550),
                reply_failure(Stage::Hello, 550),
            ],
            true,
            EnhancedStatus::new(4, 0, 0),
            Stage::Hello,
        ),
        (
            "the furthest failure explains: STARTTLS beats a later refused connect",
            vec![
                local_failure(Stage::StartTls),
                local_failure(Stage::Connect),
            ],
            true,
            EnhancedStatus::new(4, 4, 1),
            Stage::StartTls,
        ),
        (
            "among equals the latest",
            vec![
                reply_failure(Stage::MailFrom, 451),
                reply_failure(Stage::MailFrom, 452),
            ],
            true,
            EnhancedStatus::new(4, 0, 0),
            Stage::MailFrom,
        ),
    ] {
        let (attempts, outcome) = verdict(failures.clone());
        assert_eq!(attempts, failures.len(), "{case}: every address tried");
        assert_eq!(defer(&outcome), deferred, "{case}: {outcome}");
        assert_eq!(outcome.status(), Some(status), "{case}");
        let stage = match outcome {
            Outcome::Deferred {
                reason: Reason::Reply(r),
                ..
            }
            | Outcome::Failed {
                reason: Reason::Reply(r),
                ..
            } => r.stage,
            Outcome::Deferred {
                reason: Reason::Local { text, .. },
                ..
            } => {
                if text.starts_with("StartTls") {
                    Stage::StartTls
                } else {
                    Stage::Connect
                }
            }
            other => panic!("{case}: {other}"),
        };
        assert_eq!(stage, explains, "{case}");
    }
}

#[test]
fn dns_failures_and_empty_plans() {
    let answer = mx(&[(10, "a"), (20, "b")]);
    let new_plan = || {
        Plan::mx::<rand::rngs::StdRng>(
            &answer,
            None,
            25,
            TlsPolicy::Opportunistic,
            AddressFamilies::default(),
            5,
            nothing(),
        )
    };
    let temporary = DnsFailure {
        permanent: false,
        text: "SERVFAIL".into(),
    };
    let permanent = DnsFailure {
        permanent: true,
        text: "NXDOMAIN".into(),
    };
    // A temporary lookup failure of one host, nothing at the other: deferred 4.4.3.
    let mut plan = new_plan();
    assert_eq!(plan.next(), Step::Lookup("a".into()));
    plan.handle_addresses("a", Err(temporary.clone()));
    assert_eq!(plan.next(), Step::Lookup("b".into()));
    plan.handle_addresses("b", Ok(vec![]));
    let Step::Finish(outcome) = plan.next() else {
        panic!("finished")
    };
    assert!(matches!(outcome, Outcome::Deferred { .. }));
    assert_eq!(outcome.status(), Some(EnhancedStatus::new(4, 4, 3)));
    // Only permanent DNS failures: the hop's own "nothing tried" outcome.
    let mut plan = new_plan();
    plan.next();
    plan.handle_addresses("a", Err(permanent.clone()));
    plan.next();
    plan.handle_addresses("b", Err(permanent));
    assert_eq!(plan.next(), Step::Finish(nothing()));
    // A temporary DNS failure outranks a permanent refusal; a later host is tried after it.
    let mut plan = new_plan();
    plan.next();
    plan.handle_addresses("a", Err(temporary));
    plan.next();
    plan.handle_addresses("b", Ok(vec![ip("192.0.2.9")]));
    let Step::Attempt(t) = plan.next() else {
        panic!("an attempt")
    };
    assert_eq!(t.label(), "b[192.0.2.9]:25");
    plan.handle_failure(reply_failure(Stage::MailFrom, 550));
    let Step::Finish(outcome) = plan.next() else {
        panic!("finished")
    };
    assert_eq!(outcome.status(), Some(EnhancedStatus::new(4, 4, 3)));
    // A fixed plan without targets.
    let mut plan = Plan::fixed(Vec::new(), 5, nothing());
    assert_eq!(plan.next(), Step::Finish(nothing()));
}
