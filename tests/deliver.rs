//! Delivery against real peers: Postfix's smtp-sink (SMTP and LMTP, with its fault injection) and
//! Knot DNS for MX routing. No mocks.

mod common;

use common::{Knot, Sink, test_zone};
use dimegate::deliver::{
    Deliverer, DeliverySettings, DestinationPolicy, NextHop, Outcome, Reason, Stage, TlsPolicy,
};
use dimegate::domain::Domain;
use dimegate::envelope::{DsnReturn, Envelope, Notify, QueueId, Recipient};
use dimegate::resolve::Resolver;
use dimegate::status::EnhancedStatus;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const QUEUE_ID: QueueId = QueueId(0x0000_1234_5678_9ABC);

fn envelope(recipients: &[&str]) -> Envelope {
    Envelope {
        sender: "alice@example.org".into(),
        recipients: recipients
            .iter()
            .map(|r| Recipient {
                address: (*r).into(),
                notify: None,
                orcpt: None,
            })
            .collect(),
        dsn_ret: None,
        dsn_envid: None,
        body_8bit: false,
        smtputf8: false,
        helo: "client.example.org".into(),
        client: "192.0.2.7:40000".parse().unwrap(),
        tls: Some("TLSv1.3 TLS_AES_256_GCM_SHA384".into()),
        auth_user: None,
        arrival_unix: 1_795_729_248,
        require_tls: false,
        dime: None,
    }
}

/// Headers with odd folding and a body with a leading dot: must arrive byte for byte.
const BODY: &[u8] = b"From: Alice <alice@example.org>\r\n\
To: bob@example.net\r\n\
Subject: a subject\r\n   folded   oddly\r\n\
X-Spaces:    several   \r\n\
\r\n\
First line.\r\n\
.a line that starts with a dot\r\n\
..two dots\r\n\
\r\n\
last line\r\n";

fn settings() -> DeliverySettings {
    DeliverySettings {
        helo_name: "gw.example.net".into(),
        connect_timeout: Duration::from_secs(5),
        greeting_timeout: Duration::from_secs(10),
        command_timeout: Duration::from_secs(10),
        data_timeout: Duration::from_secs(20),
        shuffle_equal_mx: false,
        ..DeliverySettings::default()
    }
}

fn no_dns() -> Resolver {
    // Backend tests never look anything up; port 9 on loopback has no server.
    Resolver::with_servers(&["127.0.0.1:9".parse().unwrap()]).unwrap()
}

fn backend(addr: SocketAddr) -> NextHop {
    NextHop::Backend {
        addr,
        lmtp: false,
        tls: TlsPolicy::Opportunistic,
    }
}

fn domain(d: &str) -> Domain {
    Domain::parse(d).expect("a domain")
}

/// The indices of `list`'s recipients in `envelope(list)`: deliveries name recipients by index.
fn indices(list: &[&str]) -> Vec<usize> {
    (0..list.len()).collect()
}

fn remote(outcome: &Outcome) -> &dimegate::deliver::RemoteReply {
    match outcome {
        Outcome::Delivered { reply, .. } => reply,
        Outcome::Deferred {
            reason: Reason::Reply(reply),
            ..
        }
        | Outcome::Failed {
            reason: Reason::Reply(reply),
            ..
        } => reply,
        other => panic!("expected a remote reply, got {other:?}"),
    }
}

/// The message as dumped by smtp-sink: after its own three-line Received header.
fn dumped_message(dump: &str) -> &str {
    let start = dump
        .find("Received: from")
        .expect("smtp-sink's Received header");
    let after = &dump[start..];
    // smtp-sink's header is three lines; the message follows.
    let mut offset = 0;
    for _ in 0..3 {
        offset += after[offset..].find('\n').expect("line") + 1;
    }
    &after[offset..]
}

#[tokio::test]
async fn sink_gets_every_recipient_once_with_received_header_and_identical_body() {
    let sink = Sink::start(&[]);
    let rcpts = ["bob@example.net", "carol@example.net", "dave@example.net"];
    let deliverer = Deliverer::new(settings(), no_dns()).unwrap();
    let outcomes = deliverer
        .deliver(
            &backend(sink.addr),
            &envelope(&rcpts),
            QUEUE_ID,
            BODY,
            &indices(&rcpts),
        )
        .await;
    assert_eq!(outcomes.len(), 3);
    for ((index, outcome), expected) in outcomes.iter().zip(rcpts) {
        let address = rcpts[*index];
        assert_eq!(address, expected);
        assert!(outcome.is_delivered(), "{address}: {outcome}");
        assert_eq!(remote(outcome).stage, Stage::EndOfData);
    }

    let dumps = sink.dumps();
    assert_eq!(dumps.len(), 1, "one transaction for all recipients");
    let dump = &dumps[0];
    for rcpt in rcpts {
        assert_eq!(
            dump.matches(&format!("X-Rcpt-Args: <{rcpt}>")).count(),
            1,
            "{rcpt} once in {dump}"
        );
    }
    assert!(dump.contains("X-Mail-Args: <alice@example.org>"), "{dump}");
    assert!(dump.contains("X-Helo-Args: gw.example.net"), "{dump}");

    // smtp-sink writes lines with LF and undoes the dot-stuffing.
    let message = dumped_message(dump);
    let expected_received = "Received: from client.example.org ([192.0.2.7])\n\
\t(using TLSv1.3 TLS_AES_256_GCM_SHA384)\n\
\tby gw.example.net (dimegate) with ESMTPS id 0000123456789ABC;\n\
\tThu, 26 Nov 2026 21:40:48 +0000\n";
    assert!(
        message.starts_with(expected_received),
        "Received header first: {message}"
    );
    let rest = &message[expected_received.len()..];
    let body = String::from_utf8(BODY.to_vec())
        .unwrap()
        .replace("\r\n", "\n");
    assert!(rest.starts_with(&body), "body intact:\n{rest}");
    assert!(
        rest[body.len()..].chars().all(|c| c == '\n'),
        "nothing after the body but the dump's blank line: {:?}",
        &rest[body.len()..]
    );
}

#[tokio::test]
async fn rcpt_450_defers_with_the_remote_text() {
    let sink = Sink::start(&["-r", "RCPT"]);
    let deliverer = Deliverer::new(settings(), no_dns()).unwrap();
    let rcpts = indices(&["bob@example.net", "carol@example.net"]);
    let outcomes = deliverer
        .deliver(
            &backend(sink.addr),
            &envelope(&["bob@example.net", "carol@example.net"]),
            QUEUE_ID,
            BODY,
            &rcpts,
        )
        .await;
    for (address, outcome) in &outcomes {
        assert!(
            matches!(outcome, Outcome::Deferred { .. }),
            "{address}: {outcome}"
        );
        let reply = remote(outcome);
        assert_eq!(reply.code, 450);
        assert_eq!(reply.status, Some(EnhancedStatus::new(4, 3, 0)));
        assert_eq!(reply.stage, Stage::RcptTo);
        assert!(
            reply.text.contains("Error: command failed"),
            "{}",
            reply.text
        );
        assert_eq!(outcome.status(), Some(EnhancedStatus::new(4, 3, 0)));
    }
    assert!(sink.dumps().iter().all(|d| !d.contains("X-Rcpt-Args")));
}

#[tokio::test]
async fn rcpt_5xx_fails_with_the_remote_text() {
    let sink = Sink::start(&["-f", "RCPT"]);
    let deliverer = Deliverer::new(settings(), no_dns()).unwrap();
    let outcomes = deliverer
        .deliver(
            &backend(sink.addr),
            &envelope(&["bob@example.net"]),
            QUEUE_ID,
            BODY,
            &indices(&["bob@example.net"]),
        )
        .await;
    let (_, outcome) = &outcomes[0];
    assert!(outcome.is_permanent(), "{outcome}");
    let reply = remote(outcome);
    assert_eq!((reply.code, reply.stage), (500, Stage::RcptTo));
    assert_eq!(reply.status, Some(EnhancedStatus::new(5, 3, 0)));
    assert!(reply.text.contains("Error: command failed"));
    assert!(
        outcome
            .to_string()
            .contains("(in reply to RCPT TO command)"),
        "{outcome}"
    );
}

#[tokio::test]
async fn data_and_end_of_data_5xx_fail_with_the_remote_text() {
    for (command, stage) in [("DATA", Stage::Data), (".", Stage::EndOfData)] {
        let sink = Sink::start(&["-f", command]);
        let deliverer = Deliverer::new(settings(), no_dns()).unwrap();
        let rcpts = ["bob@example.net", "carol@example.net"];
        let outcomes = deliverer
            .deliver(
                &backend(sink.addr),
                &envelope(&rcpts),
                QUEUE_ID,
                BODY,
                &indices(&rcpts),
            )
            .await;
        for (address, outcome) in &outcomes {
            assert!(outcome.is_permanent(), "{command} {address}: {outcome}");
            let reply = remote(outcome);
            assert_eq!(reply.stage, stage, "{command}");
            assert!(reply.code >= 500, "{command}");
        }
    }
}

#[tokio::test]
async fn mail_421_defers_everyone() {
    let sink = Sink::start(&["-Q", "MAIL"]);
    let deliverer = Deliverer::new(settings(), no_dns()).unwrap();
    let rcpts = ["bob@example.net", "carol@example.net"];
    let outcomes = deliverer
        .deliver(
            &backend(sink.addr),
            &envelope(&rcpts),
            QUEUE_ID,
            BODY,
            &indices(&rcpts),
        )
        .await;
    for (address, outcome) in &outcomes {
        assert!(
            matches!(outcome, Outcome::Deferred { .. }),
            "{address}: {outcome}"
        );
        let reply = remote(outcome);
        assert_eq!((reply.code, reply.stage), (421, Stage::MailFrom));
    }
    assert_eq!(
        deliverer.idle_connections(),
        0,
        "a 421 session is not pooled"
    );
}

#[tokio::test]
async fn sink_down_defers_with_a_connect_error() {
    // Take a free port and leave it closed.
    let addr: SocketAddr = format!("127.0.0.1:{}", common::free_port())
        .parse()
        .unwrap();
    let deliverer = Deliverer::new(settings(), no_dns()).unwrap();
    let outcomes = deliverer
        .deliver(
            &backend(addr),
            &envelope(&["bob@example.net"]),
            QUEUE_ID,
            BODY,
            &indices(&["bob@example.net"]),
        )
        .await;
    let (_, outcome) = &outcomes[0];
    match outcome {
        Outcome::Deferred {
            reason: Reason::Local { text, .. },
            status,
        } => {
            assert!(
                text.contains(&format!("connect to {}", addr.ip())),
                "{text}"
            );
            assert!(text.to_lowercase().contains("refused"), "{text}");
            assert_eq!(*status, Some(EnhancedStatus::new(4, 4, 1)));
        }
        other => panic!("expected a local deferral, got {other:?}"),
    }
}

#[tokio::test]
async fn lmtp_gives_one_reply_per_recipient() {
    let sink = Sink::start(&["-L"]);
    let deliverer = Deliverer::new(settings(), no_dns()).unwrap();
    let rcpts = ["bob@example.net", "carol@example.net", "dave@example.net"];
    let hop = NextHop::Backend {
        addr: sink.addr,
        lmtp: true,
        tls: TlsPolicy::Disabled,
    };
    let outcomes = deliverer
        .deliver(&hop, &envelope(&rcpts), QUEUE_ID, BODY, &indices(&rcpts))
        .await;
    assert_eq!(outcomes.len(), 3);
    for (address, outcome) in &outcomes {
        assert!(outcome.is_delivered(), "{address}: {outcome}");
        assert_eq!(remote(outcome).stage, Stage::EndOfData);
    }
    let dumps = sink.dumps();
    assert_eq!(dumps.len(), 1);
    assert!(dumps[0].contains("X-Client-Proto: LMTP"), "{}", dumps[0]);

    // The connection survived the three end-of-data replies: a second message reuses it.
    assert_eq!(deliverer.idle_connections(), 1);
    let again = deliverer
        .deliver(
            &hop,
            &envelope(&rcpts[..1]),
            QUEUE_ID,
            BODY,
            &indices(&rcpts[..1]),
        )
        .await;
    assert!(again[0].1.is_delivered(), "{}", again[0].1);
}

#[tokio::test]
async fn consecutive_messages_reuse_one_connection() {
    let sink = Sink::start(&[]);
    let deliverer = Deliverer::new(settings(), no_dns()).unwrap();
    let mut registry = prometheus_client::registry::Registry::default();
    deliverer.register_metrics(&mut registry);
    for round in 0..3 {
        let outcomes = deliverer
            .deliver(
                &backend(sink.addr),
                &envelope(&["bob@example.net"]),
                QueueId(round),
                BODY,
                &indices(&["bob@example.net"]),
            )
            .await;
        assert!(
            outcomes[0].1.is_delivered(),
            "round {round}: {}",
            outcomes[0].1
        );
        assert_eq!(deliverer.idle_connections(), 1);
    }
    assert_eq!(sink.dumps().len(), 3);
    deliverer.close_idle().await;
    assert_eq!(deliverer.idle_connections(), 0);
    // One session: one connect, one EHLO, RSET before each reuse, QUIT at the end.
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Two connects: the readiness probe in Sink::start, and ours.
    assert_eq!(sink.count_in_log("connect ("), 2);
    assert_eq!(sink.count_in_log("EHLO"), 1);
    assert_eq!(sink.count_in_log("RSET"), 2);
    assert_eq!(sink.count_in_log("MAIL FROM"), 3);
    assert_eq!(sink.count_in_log("QUIT"), 1);

    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    for line in [
        "dimegate_delivery_connections_opened_total 1",
        "dimegate_delivery_connections_reused_total 2",
        "dimegate_delivery_connections_idle 0",
        "dimegate_delivery_active 0",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
    }
}

#[tokio::test]
async fn idle_connections_expire() {
    let sink = Sink::start(&[]);
    let deliverer = Deliverer::new(
        DeliverySettings {
            idle_timeout: Duration::from_millis(200),
            ..settings()
        },
        no_dns(),
    )
    .unwrap();
    let rcpt = indices(&["bob@example.net"]);
    let env = envelope(&["bob@example.net"]);
    let first = deliverer
        .deliver(&backend(sink.addr), &env, QUEUE_ID, BODY, &rcpt)
        .await;
    assert!(first[0].1.is_delivered());
    assert_eq!(deliverer.idle_connections(), 1);
    // The readiness probe in Sink::start, and ours.
    assert_eq!(sink.count_in_log("connect ("), 2);
    tokio::time::sleep(Duration::from_millis(400)).await;
    // The expired connection is not used; a fresh one is opened and pooled instead.
    let second = deliverer
        .deliver(&backend(sink.addr), &env, QUEUE_ID, BODY, &rcpt)
        .await;
    assert!(second[0].1.is_delivered());
    assert_eq!(deliverer.idle_connections(), 1);
    // Reusing the expired connection would leave the count at 2 and send a RSET on it.
    assert_eq!(sink.count_in_log("connect ("), 3, "a new connection");
    assert_eq!(sink.count_in_log("EHLO"), 2, "greeted anew");
    assert_eq!(
        sink.count_in_log("RSET"),
        0,
        "the expired one was not reset for reuse"
    );
}

/// RFC 5321 lets a client name one address in two RCPTs; each keeps its own DSN parameters on
/// the wire and gets its own outcome, keyed by its index.
#[tokio::test]
async fn a_duplicate_rcpt_keeps_its_own_notify() {
    let sink = Sink::start(&[]);
    let deliverer = Deliverer::new(settings(), no_dns()).unwrap();
    let mut env = envelope(&["bob@example.net", "bob@example.net"]);
    env.recipients[0].notify = Some(Notify {
        never: false,
        success: true,
        failure: false,
        delay: false,
    });
    env.recipients[1].notify = Some(Notify {
        never: true,
        ..Notify::default()
    });
    let outcomes = deliverer
        .deliver(&backend(sink.addr), &env, QUEUE_ID, BODY, &[0, 1])
        .await;
    let keys: Vec<usize> = outcomes.iter().map(|(i, _)| *i).collect();
    assert_eq!(keys, [0, 1]);
    assert!(
        outcomes.iter().all(|(_, o)| o.is_delivered()),
        "{outcomes:?}"
    );
    let dump = &sink.dumps()[0];
    let rcpt_args: Vec<&str> = dump
        .lines()
        .filter(|l| l.starts_with("X-Rcpt-Args:"))
        .collect();
    assert_eq!(
        rcpt_args,
        [
            "X-Rcpt-Args: <bob@example.net> NOTIFY=SUCCESS",
            "X-Rcpt-Args: <bob@example.net> NOTIFY=NEVER",
        ],
        "{dump}"
    );
}

#[tokio::test]
async fn required_tls_without_starttls_defers() {
    let sink = Sink::start(&[]);
    let deliverer = Deliverer::new(settings(), no_dns()).unwrap();
    let hop = NextHop::Backend {
        addr: sink.addr,
        lmtp: false,
        tls: TlsPolicy::Required,
    };
    let outcomes = deliverer
        .deliver(
            &hop,
            &envelope(&["bob@example.net"]),
            QUEUE_ID,
            BODY,
            &indices(&["bob@example.net"]),
        )
        .await;
    let (_, outcome) = &outcomes[0];
    assert!(matches!(outcome, Outcome::Deferred { .. }), "{outcome}");
    assert_eq!(outcome.status(), Some(EnhancedStatus::new(4, 7, 4)));
    assert!(
        outcome.to_string().contains("does not offer STARTTLS"),
        "{outcome}"
    );
    assert!(sink.dumps().is_empty(), "nothing sent in clear text");
}

#[tokio::test]
async fn eight_bit_body_fails_where_8bitmime_is_missing() {
    let sink = Sink::start(&["-8"]);
    let deliverer = Deliverer::new(settings(), no_dns()).unwrap();
    let mut env = envelope(&["bob@example.net"]);
    env.body_8bit = true;
    let outcomes = deliverer
        .deliver(
            &backend(sink.addr),
            &env,
            QUEUE_ID,
            "Subject: caf\u{e9}\r\n\r\n\u{e9}t\u{e9}\r\n".as_bytes(),
            &indices(&["bob@example.net"]),
        )
        .await;
    let (_, outcome) = &outcomes[0];
    assert!(outcome.is_permanent(), "{outcome}");
    assert_eq!(outcome.status(), Some(EnhancedStatus::new(5, 6, 3)));
    assert!(outcome.to_string().contains("8BITMIME"), "{outcome}");

    // The same message to a sink that announces 8BITMIME goes through with BODY=8BITMIME.
    let sink8 = Sink::start(&[]);
    let outcomes = deliverer
        .deliver(
            &backend(sink8.addr),
            &env,
            QUEUE_ID,
            "Subject: caf\u{e9}\r\n\r\n\u{e9}t\u{e9}\r\n".as_bytes(),
            &indices(&["bob@example.net"]),
        )
        .await;
    assert!(outcomes[0].1.is_delivered(), "{}", outcomes[0].1);
    assert!(
        sink8.dumps()[0].contains("BODY=8BITMIME"),
        "{}",
        sink8.dumps()[0]
    );
}

#[tokio::test]
async fn smtputf8_message_fails_where_smtputf8_is_missing() {
    // smtp-sink does not announce SMTPUTF8.
    let sink = Sink::start(&[]);
    let deliverer = Deliverer::new(settings(), no_dns()).unwrap();
    let mut env = envelope(&["jürgen@example.net"]);
    env.smtputf8 = true;
    let outcomes = deliverer
        .deliver(
            &backend(sink.addr),
            &env,
            QUEUE_ID,
            BODY,
            &indices(&["jürgen@example.net"]),
        )
        .await;
    let (_, outcome) = &outcomes[0];
    assert!(outcome.is_permanent(), "{outcome}");
    assert_eq!(outcome.status(), Some(EnhancedStatus::new(5, 6, 7)));
    assert!(sink.dumps().is_empty());
}

#[tokio::test]
async fn dsn_parameters_pass_on_only_where_dsn_is_offered() {
    let mut env = envelope(&[]);
    env.dsn_ret = Some(DsnReturn::Headers);
    env.dsn_envid = Some("QQ314159".into());
    env.recipients = vec![Recipient {
        address: "bob@example.net".into(),
        notify: Some(Notify {
            never: false,
            success: true,
            failure: true,
            delay: false,
        }),
        orcpt: Some("rfc822;bob@example.net".into()),
    }];
    let rcpts = indices(&["bob@example.net"]);
    let deliverer = Deliverer::new(settings(), no_dns()).unwrap();

    let with_dsn = Sink::start(&[]);
    let outcomes = deliverer
        .deliver(&backend(with_dsn.addr), &env, QUEUE_ID, BODY, &rcpts)
        .await;
    assert!(outcomes[0].1.is_delivered());
    let dump = &with_dsn.dumps()[0];
    assert!(
        dump.contains("X-Mail-Args: <alice@example.org> RET=HDRS ENVID=QQ314159"),
        "{dump}"
    );
    assert!(
        dump.contains(
            "X-Rcpt-Args: <bob@example.net> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;bob@example.net"
        ),
        "{dump}"
    );

    let without_dsn = Sink::start(&["-N"]);
    let outcomes = deliverer
        .deliver(&backend(without_dsn.addr), &env, QUEUE_ID, BODY, &rcpts)
        .await;
    assert!(outcomes[0].1.is_delivered());
    let dump = &without_dsn.dumps()[0];
    assert!(
        dump.contains("X-Mail-Args: <alice@example.org>\n"),
        "{dump}"
    );
    assert!(dump.contains("X-Rcpt-Args: <bob@example.net>\n"), "{dump}");
}

#[tokio::test]
async fn per_hop_cap_serialises_deliveries() {
    // Each end-of-data waits 1 s; with a cap of 1, three deliveries take at least 3 s.
    let sink = Sink::start(&["-W", ".:1"]);
    let deliverer = Deliverer::new(
        DeliverySettings {
            max_connections_per_hop: 1,
            ..settings()
        },
        no_dns(),
    )
    .unwrap();
    let env = envelope(&["bob@example.net"]);
    let rcpts = indices(&["bob@example.net"]);
    let hop = backend(sink.addr);
    let started = Instant::now();
    let results = tokio::join!(
        deliverer.deliver(&hop, &env, QueueId(1), BODY, &rcpts),
        deliverer.deliver(&hop, &env, QueueId(2), BODY, &rcpts),
        deliverer.deliver(&hop, &env, QueueId(3), BODY, &rcpts),
    );
    let elapsed = started.elapsed();
    for outcomes in [results.0, results.1, results.2] {
        assert!(outcomes[0].1.is_delivered(), "{}", outcomes[0].1);
    }
    assert!(elapsed >= Duration::from_millis(2900), "{elapsed:?}");
    // Serialised deliveries share one connection.
    assert_eq!(deliverer.idle_connections(), 1);
}

// --- MX routing through a real DNS server -------------------------------------------------------

fn mx_settings(port: u16) -> DeliverySettings {
    DeliverySettings {
        mx_port: port,
        connect_timeout: Duration::from_secs(2),
        ..settings()
    }
}

#[tokio::test]
async fn mx_delivery_falls_over_to_the_next_mx_and_fails_on_null_mx() {
    let knot = Knot::start("example.test", &test_zone());
    // Every address of failover.example.test's MX hosts uses this port; only 127.0.0.1 listens
    // (dead.example.test is 127.0.0.3, refused).
    let sink = Sink::start(&[]);
    let resolver = Resolver::with_servers(&[knot.addr]).unwrap();
    let deliverer = Deliverer::new(mx_settings(sink.addr.port()), resolver).unwrap();
    let rcpts = indices(&["bob@failover.example.test"]);
    let env = envelope(&["bob@failover.example.test"]);

    let outcomes = deliverer
        .deliver(
            &NextHop::Mx {
                domain: domain("failover.example.test"),
            },
            &env,
            QUEUE_ID,
            BODY,
            &rcpts,
        )
        .await;
    let reply = remote(&outcomes[0].1);
    assert!(outcomes[0].1.is_delivered(), "{}", outcomes[0].1);
    assert!(
        reply.mta.starts_with("live.example.test[127.0.0.1]"),
        "{}",
        reply.mta
    );

    // Null MX: failed at once, 5.1.10, nothing sent.
    let outcomes = deliverer
        .deliver(
            &NextHop::Mx {
                domain: domain("nullmx.example.test"),
            },
            &env,
            QUEUE_ID,
            BODY,
            &rcpts,
        )
        .await;
    assert!(outcomes[0].1.is_permanent(), "{}", outcomes[0].1);
    assert_eq!(outcomes[0].1.status(), Some(EnhancedStatus::new(5, 1, 10)));

    // NXDOMAIN: failed, 5.1.2.
    let outcomes = deliverer
        .deliver(
            &NextHop::Mx {
                domain: domain("nope.example.test"),
            },
            &env,
            QUEUE_ID,
            BODY,
            &rcpts,
        )
        .await;
    assert!(outcomes[0].1.is_permanent(), "{}", outcomes[0].1);
    assert_eq!(outcomes[0].1.status(), Some(EnhancedStatus::new(5, 1, 2)));

    // MX host without any address: failed, 5.4.4.
    let outcomes = deliverer
        .deliver(
            &NextHop::Mx {
                domain: domain("noaddr.example.test"),
            },
            &env,
            QUEUE_ID,
            BODY,
            &rcpts,
        )
        .await;
    assert!(outcomes[0].1.is_permanent(), "{}", outcomes[0].1);
    assert_eq!(outcomes[0].1.status(), Some(EnhancedStatus::new(5, 4, 4)));

    // Implicit MX (A record only) reaches the sink on 127.0.0.1.
    let outcomes = deliverer
        .deliver(
            &NextHop::Mx {
                domain: domain("amail.example.test"),
            },
            &env,
            QUEUE_ID,
            BODY,
            &rcpts,
        )
        .await;
    assert!(outcomes[0].1.is_delivered(), "{}", outcomes[0].1);
}

#[tokio::test]
async fn all_mx_hosts_down_defers_and_require_tls_applies_to_mx() {
    let knot = Knot::start("example.test", &test_zone());
    let closed_port = common::free_port();
    let resolver = Resolver::with_servers(&[knot.addr]).unwrap();
    let deliverer = Deliverer::new(mx_settings(closed_port), resolver).unwrap();
    let env = envelope(&["bob@example.test"]);
    let rcpts = indices(&["bob@example.test"]);
    let outcomes = deliverer
        .deliver(
            &NextHop::Mx {
                domain: domain("example.test"),
            },
            &env,
            QUEUE_ID,
            BODY,
            &rcpts,
        )
        .await;
    let outcome = &outcomes[0].1;
    assert!(matches!(outcome, Outcome::Deferred { .. }), "{outcome}");
    assert!(outcome.to_string().contains("connect to"), "{outcome}");

    // require_tls for the destination: the sink does not offer STARTTLS, so deferred 4.7.4.
    let sink = Sink::start(&[]);
    let resolver = Resolver::with_servers(&[knot.addr]).unwrap();
    let deliverer = Deliverer::new(
        DeliverySettings {
            destinations: vec![DestinationPolicy {
                domain: domain("AMAIL.example.test"),
                require_tls: true,
            }],
            ..mx_settings(sink.addr.port())
        },
        resolver,
    )
    .unwrap();
    let outcomes = deliverer
        .deliver(
            &NextHop::Mx {
                domain: domain("amail.example.test"),
            },
            &env,
            QUEUE_ID,
            BODY,
            &rcpts,
        )
        .await;
    assert!(
        matches!(outcomes[0].1, Outcome::Deferred { .. }),
        "{}",
        outcomes[0].1
    );
    assert_eq!(outcomes[0].1.status(), Some(EnhancedStatus::new(4, 7, 4)));
    assert!(sink.dumps().is_empty());
}

// --- STARTTLS with a real Postfix ---------------------------------------------------------------

#[tokio::test]
async fn starttls_with_postfix_opportunistic_encrypts_and_required_verifies() {
    let postfix = common::Postfix::start_with_tls();
    let deliverer = Deliverer::new(settings(), no_dns()).unwrap();
    let rcpts = ["bob@example.net", "jürgen@example.net"];
    let mut env = envelope(&rcpts);
    env.smtputf8 = true;

    // Opportunistic: STARTTLS is offered, the self-signed certificate is not checked.
    let opportunistic = NextHop::Backend {
        addr: postfix.addr,
        lmtp: false,
        tls: TlsPolicy::Opportunistic,
    };
    let outcomes = deliverer
        .deliver(&opportunistic, &env, QUEUE_ID, BODY, &indices(&rcpts))
        .await;
    for (address, outcome) in &outcomes {
        assert!(outcome.is_delivered(), "{address}: {outcome}");
        assert!(remote(outcome).text.contains("queued as"), "{outcome}");
    }
    let message = postfix
        .wait_for_message_containing("Received: from client.example.org ([192.0.2.7])")
        .unwrap_or_else(|| panic!("nothing in the Maildir; {}", postfix.maillog()));
    // Postfix's own trace header says the session was encrypted (UTF8SMTPS: SMTPUTF8 over TLS,
    // RFC 6531 §3.7.4), and ours follows it.
    let ours = message
        .find("Received: from client.example.org ([192.0.2.7])")
        .expect("our Received header");
    let postfix_received = message.find("Received: from").expect("a Received header");
    assert!(postfix_received < ours);
    assert!(
        message[postfix_received..ours].contains("with UTF8SMTPS id"),
        "{message}"
    );
    assert!(
        message.contains(".a line that starts with a dot"),
        "{message}"
    );
    assert!(
        postfix
            .maillog()
            .contains("TLS connection established from"),
        "{}",
        postfix.maillog()
    );

    // Required: the same certificate is self-signed, so verification fails and we defer.
    let required = NextHop::Backend {
        addr: postfix.addr,
        lmtp: false,
        tls: TlsPolicy::Required,
    };
    let outcomes = deliverer
        .deliver(&required, &env, QUEUE_ID, BODY, &indices(&rcpts[..1]))
        .await;
    let (_, outcome) = &outcomes[0];
    assert!(matches!(outcome, Outcome::Deferred { .. }), "{outcome}");
    assert_eq!(outcome.status(), Some(EnhancedStatus::new(4, 7, 5)));
    assert!(outcome.to_string().contains("certificate"), "{outcome}");
}

#[tokio::test]
async fn a_5xx_at_mail_on_one_mx_tries_the_next() {
    let knot = Knot::start("example.test", &test_zone());
    let domain = NextHop::Mx {
        domain: domain("failover.example.test"),
    };
    let env = envelope(&["bob@failover.example.test"]);
    let rcpts = indices(&["bob@failover.example.test"]);
    // dead.example.test (preference 10) is 127.0.0.3, live.example.test (20) is 127.0.0.1; both
    // sinks listen on the same port, the MX port.
    for (first_flags, second_flags, expect) in [
        (&["-f", "MAIL"][..], &[][..], "delivered"),
        (&["-f", "MAIL"][..], &["-f", "MAIL"][..], "failed"),
        (&["-r", "MAIL"][..], &["-f", "MAIL"][..], "deferred"),
        (&["-f", "CONNECT"][..], &[][..], "delivered"),
    ] {
        let port = common::free_port();
        let first = Sink::start_at(format!("127.0.0.3:{port}").parse().unwrap(), first_flags);
        let second = Sink::start_at(format!("127.0.0.1:{port}").parse().unwrap(), second_flags);
        let resolver = Resolver::with_servers(&[knot.addr]).unwrap();
        let deliverer = Deliverer::new(mx_settings(port), resolver).unwrap();
        let outcomes = deliverer
            .deliver(&domain, &env, QUEUE_ID, BODY, &rcpts)
            .await;
        let outcome = &outcomes[0].1;
        let case = format!("{first_flags:?} then {second_flags:?}");
        match expect {
            "delivered" => {
                assert!(outcome.is_delivered(), "{case}: {outcome}");
                assert!(
                    remote(outcome).mta.starts_with("live.example.test"),
                    "{case}"
                );
            }
            "failed" => {
                assert!(outcome.is_permanent(), "{case}: {outcome}");
                assert_eq!(remote(outcome).stage, Stage::MailFrom, "{case}");
            }
            _ => {
                assert!(
                    matches!(outcome, Outcome::Deferred { .. }),
                    "{case}: {outcome}"
                );
                // The temporary refusal decides; its text is kept.
                assert_eq!(remote(outcome).code, 450, "{case}: {outcome}");
            }
        }
        // The first MX was really tried.
        assert_eq!(first.count_in_log("connect ("), 2, "{case}");
        drop(second);
    }
}

#[tokio::test]
async fn connection_level_failures_defer_every_recipient_with_a_precise_reason() {
    let rcpts = ["bob@example.net", "carol@example.net"];
    for (flags, expect_in_reason) in [
        (&["-Q", "CONNECT"][..], "421"),
        (&["-Q", "EHLO"][..], "421"),
        (&["-q", "MAIL"][..], "sending MAIL FROM to"),
        (&["-Q", "RCPT"][..], "in reply to RCPT TO command"),
        (&["-q", "RCPT"][..], "sending RCPT TO to"),
        (&["-q", "DATA"][..], "sending DATA to"),
        (&["-q", "."][..], "may or may not have been delivered"),
        (&["-Q", "."][..], "in reply to end of DATA command"),
    ] {
        let sink = Sink::start(flags);
        let deliverer = Deliverer::new(settings(), no_dns()).unwrap();
        let outcomes = deliverer
            .deliver(
                &backend(sink.addr),
                &envelope(&rcpts),
                QUEUE_ID,
                BODY,
                &indices(&rcpts),
            )
            .await;
        assert_eq!(outcomes.len(), 2);
        for (address, outcome) in &outcomes {
            assert!(
                matches!(outcome, Outcome::Deferred { .. }),
                "{flags:?} {address}: {outcome}"
            );
            assert_eq!(outcome.status().map(|s| s.class), Some(4), "{flags:?}");
            assert!(
                outcome.to_string().contains(expect_in_reason),
                "{flags:?}: {outcome}"
            );
        }
        assert_eq!(deliverer.idle_connections(), 0, "{flags:?}: not pooled");
    }
}

#[tokio::test]
async fn smarthost_by_name_or_literal_and_a_missing_relay_defers() {
    let knot = Knot::start("example.test", &test_zone());
    let sink = Sink::start(&[]);
    let resolver = Resolver::with_servers(&[knot.addr]).unwrap();
    let deliverer = Deliverer::new(settings(), resolver).unwrap();
    let env = envelope(&["bob@example.net"]);
    let rcpts = indices(&["bob@example.net"]);
    for host in ["mx1.example.test", "[127.0.0.1]", "127.0.0.1"] {
        let hop = NextHop::smarthost(
            &format!("{host}:{}", sink.addr.port()),
            TlsPolicy::Opportunistic,
        )
        .unwrap();
        let outcomes = deliverer.deliver(&hop, &env, QUEUE_ID, BODY, &rcpts).await;
        assert!(outcomes[0].1.is_delivered(), "{host}: {}", outcomes[0].1);
    }
    // An address literal as the recipient domain: straight to it on the MX port.
    let literal = Deliverer::new(mx_settings(sink.addr.port()), no_dns()).unwrap();
    let outcomes = literal
        .deliver(
            &NextHop::Mx {
                domain: domain("[127.0.0.1]"),
            },
            &env,
            QUEUE_ID,
            BODY,
            &rcpts,
        )
        .await;
    assert!(outcomes[0].1.is_delivered(), "{}", outcomes[0].1);

    // A relay that does not exist is our configuration error: deferred, never bounced.
    let hop = NextHop::Smarthost {
        host: "nope.example.test".into(),
        port: sink.addr.port(),
        tls: TlsPolicy::Opportunistic,
    };
    let outcomes = deliverer.deliver(&hop, &env, QUEUE_ID, BODY, &rcpts).await;
    let outcome = &outcomes[0].1;
    assert!(matches!(outcome, Outcome::Deferred { .. }), "{outcome}");
    assert_eq!(outcome.status(), Some(EnhancedStatus::new(4, 3, 5)));
    assert!(
        outcome.to_string().contains("relay host nope.example.test"),
        "{outcome}"
    );
}

#[tokio::test]
async fn a_slow_reply_times_out_and_defers() {
    let sink = Sink::start(&["-W", "RCPT:3"]);
    let deliverer = Deliverer::new(
        DeliverySettings {
            command_timeout: Duration::from_millis(500),
            ..settings()
        },
        no_dns(),
    )
    .unwrap();
    let outcomes = deliverer
        .deliver(
            &backend(sink.addr),
            &envelope(&["bob@example.net"]),
            QUEUE_ID,
            BODY,
            &indices(&["bob@example.net"]),
        )
        .await;
    let outcome = &outcomes[0].1;
    assert!(matches!(outcome, Outcome::Deferred { .. }), "{outcome}");
    assert!(
        outcome.to_string().contains("sending RCPT TO to"),
        "{outcome}"
    );
    assert!(outcome.to_string().contains("timed out"), "{outcome}");
    assert_eq!(deliverer.idle_connections(), 0);
}

#[tokio::test]
async fn total_cap_serialises_deliveries_to_different_hops() {
    let first = Sink::start(&["-W", ".:1"]);
    let second = Sink::start(&["-W", ".:1"]);
    let deliverer = Deliverer::new(
        DeliverySettings {
            max_connections: 1,
            ..settings()
        },
        no_dns(),
    )
    .unwrap();
    let env = envelope(&["bob@example.net"]);
    let rcpts = indices(&["bob@example.net"]);
    let (hop_a, hop_b) = (backend(first.addr), backend(second.addr));
    let started = Instant::now();
    let (a, b) = tokio::join!(
        deliverer.deliver(&hop_a, &env, QueueId(1), BODY, &rcpts),
        deliverer.deliver(&hop_b, &env, QueueId(2), BODY, &rcpts),
    );
    assert!(a[0].1.is_delivered() && b[0].1.is_delivered());
    assert!(
        started.elapsed() >= Duration::from_millis(1900),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn ehlo_refused_falls_back_to_helo_without_extensions() {
    let sink = Sink::start(&["-f", "EHLO"]);
    let deliverer = Deliverer::new(settings(), no_dns()).unwrap();
    let mut env = envelope(&["bob@example.net"]);
    env.dsn_ret = Some(DsnReturn::Full);
    let outcomes = deliverer
        .deliver(
            &backend(sink.addr),
            &env,
            QUEUE_ID,
            BODY,
            &indices(&["bob@example.net"]),
        )
        .await;
    assert!(outcomes[0].1.is_delivered(), "{}", outcomes[0].1);
    assert_eq!(sink.count_in_log("HELO"), 1);
    // No extension after HELO: RET= is not sent.
    let dump = &sink.dumps()[0];
    assert!(
        dump.contains("X-Mail-Args: <alice@example.org>\n"),
        "{dump}"
    );
}

#[tokio::test]
async fn broken_starttls_falls_back_to_plain_text_unless_required_and_size_is_honoured() {
    // STARTTLS is announced, but the certificate files are missing: Postfix answers 454.
    let postfix = common::Postfix::start(|dir| {
        vec![
            "smtpd_tls_security_level=may".to_owned(),
            format!("smtpd_tls_cert_file={}", dir.join("missing.pem").display()),
            format!("smtpd_tls_key_file={}", dir.join("missing.pem").display()),
            "message_size_limit=4000".to_owned(),
        ]
    });
    let deliverer = Deliverer::new(settings(), no_dns()).unwrap();
    let env = envelope(&["bob@example.net"]);
    let rcpts = indices(&["bob@example.net"]);

    let opportunistic = backend(postfix.addr);
    let outcomes = deliverer
        .deliver(&opportunistic, &env, QUEUE_ID, BODY, &rcpts)
        .await;
    assert!(outcomes[0].1.is_delivered(), "{}", outcomes[0].1);
    // Postfix may also file a postmaster notice about its TLS problem in the same Maildir.
    assert!(
        postfix
            .wait_for_message_containing(
                "by gw.example.net (dimegate) with ESMTPS id 0000123456789ABC"
            )
            .is_some(),
        "our message arrived; {}",
        postfix.maillog()
    );

    let required = NextHop::Backend {
        addr: postfix.addr,
        lmtp: false,
        tls: TlsPolicy::Required,
    };
    let outcomes = deliverer
        .deliver(&required, &env, QUEUE_ID, BODY, &rcpts)
        .await;
    let outcome = &outcomes[0].1;
    assert!(matches!(outcome, Outcome::Deferred { .. }), "{outcome}");
    assert_eq!(remote(outcome).code, 454, "{outcome}");
    assert_eq!(remote(outcome).stage, Stage::StartTls);

    // Postfix announces SIZE 4000: a bigger message fails before MAIL FROM, 5.3.4.
    let big = [BODY, &b"x".repeat(5000)[..], b"\r\n"].concat();
    let outcomes = deliverer
        .deliver(&opportunistic, &env, QUEUE_ID, &big, &rcpts)
        .await;
    let outcome = &outcomes[0].1;
    assert!(outcome.is_permanent(), "{outcome}");
    assert_eq!(outcome.status(), Some(EnhancedStatus::new(5, 3, 4)));
    assert!(
        outcome.to_string().contains("SIZE limit of 4000"),
        "{outcome}"
    );
}

#[tokio::test]
async fn many_recipients_go_in_several_transactions_on_one_connection() {
    let sink = Sink::start(&[]);
    let deliverer = Deliverer::new(
        DeliverySettings {
            max_recipients_per_transaction: 2,
            ..settings()
        },
        no_dns(),
    )
    .unwrap();
    let rcpts = [
        "a@example.net",
        "b@example.net",
        "c@example.net",
        "d@example.net",
        "e@example.net",
    ];
    let outcomes = deliverer
        .deliver(
            &backend(sink.addr),
            &envelope(&rcpts),
            QUEUE_ID,
            BODY,
            &indices(&rcpts),
        )
        .await;
    let addresses: Vec<&str> = outcomes.iter().map(|(i, _)| rcpts[*i]).collect();
    assert_eq!(addresses, rcpts, "outcomes in the order given");
    assert!(outcomes.iter().all(|(_, o)| o.is_delivered()));
    let dumps = sink.dumps();
    assert_eq!(dumps.len(), 3, "2 + 2 + 1 recipients");
    for rcpt in rcpts {
        let seen: usize = dumps
            .iter()
            .map(|d| d.matches(&format!("X-Rcpt-Args: <{rcpt}>")).count())
            .sum();
        assert_eq!(seen, 1, "{rcpt}");
    }
    assert_eq!(sink.count_in_log("EHLO"), 1, "one connection");
    assert_eq!(sink.count_in_log("MAIL FROM"), 3);
}

#[tokio::test]
async fn a_5xx_greeting_or_ehlo_defers_instead_of_bouncing() {
    for flags in [&["-f", "CONNECT"][..], &["-f", "EHLO,HELO"][..]] {
        let sink = Sink::start(flags);
        let deliverer = Deliverer::new(settings(), no_dns()).unwrap();
        let outcomes = deliverer
            .deliver(
                &backend(sink.addr),
                &envelope(&["bob@example.net"]),
                QUEUE_ID,
                BODY,
                &indices(&["bob@example.net"]),
            )
            .await;
        let outcome = &outcomes[0].1;
        assert!(
            matches!(outcome, Outcome::Deferred { .. }),
            "{flags:?}: {outcome}"
        );
        assert_eq!(
            remote(outcome).code / 100,
            5,
            "{flags:?}: the 5xx text is kept"
        );
        assert_eq!(outcome.status().map(|s| s.class), Some(4), "{flags:?}");
    }
}

/// The TOML block of `deliver`'s module doc, through the real configuration loader.
#[test]
fn the_module_docs_toml_is_a_valid_configuration() {
    let source = include_str!("../src/deliver/mod.rs");
    let block: String = source
        .lines()
        .skip_while(|l| *l != "//! ```toml")
        .skip(1)
        .take_while(|l| *l != "//! ```")
        .map(|l| format!("{}\n", l.trim_start_matches("//!").trim_start()))
        .collect();
    assert!(block.contains("[delivery]"), "{block}");
    let config = dimegate::config::Config::parse(&block).expect("the sketch loads");
    assert_eq!(
        config.smarthost,
        Some(NextHop::Smarthost {
            host: "relay.example.net".into(),
            port: 587,
            tls: TlsPolicy::Required,
        })
    );
    assert_eq!(config.delivery.max_connections_per_hop, 20);
    assert_eq!(config.delivery.destinations.len(), 1);
    assert!(config.delivery.destinations[0].require_tls);
}

/// The client's writes as the recorder saw them, and the one that carried MAIL FROM.
fn mail_chunk(recorder: &common::Recorder) -> (Vec<String>, String) {
    let chunks = recorder.chunks();
    let mail = chunks
        .iter()
        .find(|c| c.contains("MAIL FROM:"))
        .cloned()
        .unwrap_or_else(|| panic!("no MAIL FROM in {chunks:#?}"));
    (chunks, mail)
}

#[tokio::test]
async fn pipelining_groups_mail_and_every_rcpt_in_one_write_to_postfix() {
    let postfix = common::Postfix::start(|_| vec!["smtpd_tls_security_level=none".into()]);
    let recorder = common::Recorder::start(postfix.addr);
    let deliverer = Deliverer::new(settings(), no_dns()).unwrap();
    let mut registry = prometheus_client::registry::Registry::default();
    deliverer.register_metrics(&mut registry);
    let rcpts = ["bob@example.net", "carol@example.net", "dave@example.net"];
    let hop = NextHop::Backend {
        addr: recorder.addr,
        lmtp: false,
        tls: TlsPolicy::Disabled,
    };
    let outcomes = deliverer
        .deliver(&hop, &envelope(&rcpts), QUEUE_ID, BODY, &indices(&rcpts))
        .await;
    for (address, outcome) in &outcomes {
        assert!(outcome.is_delivered(), "{address}: {outcome}");
        assert!(remote(outcome).text.contains("queued as"), "{outcome}");
    }
    assert!(
        postfix
            .wait_for_message_containing(
                "by gw.example.net (dimegate) with ESMTPS id 0000123456789ABC"
            )
            .is_some(),
        "delivered into Postfix's Maildir; {}",
        postfix.maillog()
    );
    // Postfix's smtpd offers PIPELINING: MAIL FROM and all RCPT TOs went in one write, without
    // waiting for a reply in between; DATA followed on its own, after their replies.
    let (chunks, mail) = mail_chunk(&recorder);
    for rcpt in rcpts {
        assert!(mail.contains(&format!("RCPT TO:<{rcpt}>")), "{chunks:#?}");
    }
    assert!(!mail.contains("DATA"), "{chunks:#?}");
    assert!(chunks.iter().any(|c| c == "DATA\r\n"), "{chunks:#?}");
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    assert!(
        text.lines()
            .any(|l| l == "dimegate_delivery_transactions_pipelined_total 1"),
        "{text}"
    );
}

#[tokio::test]
async fn without_pipelining_offered_commands_go_one_at_a_time_and_mail_is_delivered() {
    // Postfix told not to announce PIPELINING, and smtp-sink with -p (no PIPELINING).
    let postfix = common::Postfix::start(|_| vec!["smtpd_discard_ehlo_keywords=pipelining".into()]);
    let sink = Sink::start(&["-p"]);
    let rcpts = ["bob@example.net", "carol@example.net"];
    for upstream in [postfix.addr, sink.addr] {
        let recorder = common::Recorder::start(upstream);
        let deliverer = Deliverer::new(settings(), no_dns()).unwrap();
        let hop = NextHop::Backend {
            addr: recorder.addr,
            lmtp: false,
            tls: TlsPolicy::Disabled,
        };
        let outcomes = deliverer
            .deliver(&hop, &envelope(&rcpts), QUEUE_ID, BODY, &indices(&rcpts))
            .await;
        for (address, outcome) in &outcomes {
            assert!(outcome.is_delivered(), "{upstream} {address}: {outcome}");
        }
        let (chunks, mail) = mail_chunk(&recorder);
        assert!(!mail.contains("RCPT TO"), "{upstream}: {chunks:#?}");
        for rcpt in rcpts {
            assert!(
                chunks.iter().any(|c| *c == format!("RCPT TO:<{rcpt}>\r\n")),
                "{upstream}: {chunks:#?}"
            );
        }
    }
    assert!(
        postfix
            .wait_for_message_containing("(dimegate) with ESMTPS id 0000123456789ABC")
            .is_some(),
        "{}",
        postfix.maillog()
    );
    assert!(
        postfix
            .maillog()
            .contains("discarding EHLO keywords: PIPELINING")
    );
    assert_eq!(sink.messages().len(), 1);
}
