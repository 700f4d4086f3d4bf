//! Outbound TLS policy against real peers: Knot serving the signed test tree (TESTBED.md §3.7)
//! with MX, TLSA, `_mta-sts` records; real Postfix instances as receiving MX (a certificate from
//! the test CA that the TLSA records and MTA-STS accept, a stranger's self-signed one, and one
//! with STARTTLS stripped from its EHLO); Python's http.server with ssl serving MTA-STS
//! policies; a small Python SMTP receiver that offers REQUIRETLS (no packaged MTA does).

mod common;

use common::{KnotTree, Postfix};
use dimegate::deliver::tlsrpt::{PolicyType, ReportMeta};
use dimegate::deliver::{Deliverer, DeliverySettings, DestinationPolicy, NextHop, Outcome};
use dimegate::domain::Domain;
use dimegate::envelope::{Envelope, QueueId, Recipient};
use dimegate::resolve::{Resolver, ResolverSettings};
use dimegate::status::EnhancedStatus;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, PublicKeyData};
use sha2::{Digest, Sha256};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const QUEUE_ID: QueueId = QueueId(0x0000_0000_7715_0001);

/// The names the test CA's leaf certificate carries: every MX host and MTA-STS policy host.
const NAMES: &[&str] = &[
    "mxdane.secure.test",
    "mxrtls.secure.test",
    "mxopp.plain.test",
    "mxsts.plain.test",
    "mta-sts.sts.plain.test",
    "mta-sts.stsbad.plain.test",
    "mta-sts.ststest.plain.test",
    "mta-sts.stsredir.plain.test",
];

struct Pki {
    dir: tempfile::TempDir,
    /// SHA-256 of the leaf's SubjectPublicKeyInfo, hex (TLSA 3 1 1).
    spki_sha256: String,
}

impl Pki {
    fn new() -> Pki {
        let dir = common::tempdir();
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "dimegate test CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(NAMES.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .unwrap()
            .signed_by(&key, &Issuer::from_params(&ca_params, &ca_key))
            .unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        std::fs::write(
            dir.path().join("chain.pem"),
            format!("{}{}", leaf.pem(), ca.pem()),
        )
        .unwrap();
        std::fs::write(dir.path().join("key.pem"), key.serialize_pem()).unwrap();
        let spki_sha256 = Sha256::digest(key.subject_public_key_info())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Pki { dir, spki_sha256 }
    }

    fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }
    fn chain(&self) -> PathBuf {
        self.dir.path().join("chain.pem")
    }
    fn key(&self) -> PathBuf {
        self.dir.path().join("key.pem")
    }

    /// Postfix presenting the test CA's leaf; `strip_starttls` hides STARTTLS from EHLO (the
    /// downgrade an active attacker performs).
    fn postfix(&self, strip_starttls: bool) -> Postfix {
        let (chain, key) = (self.chain(), self.key());
        Postfix::start(move |_| {
            let mut settings = vec![
                "smtpd_tls_security_level=may".to_owned(),
                format!("smtpd_tls_cert_file={}", chain.display()),
                format!("smtpd_tls_key_file={}", key.display()),
                "smtpd_tls_loglevel=1".to_owned(),
            ];
            if strip_starttls {
                settings.push("smtpd_discard_ehlo_keywords=starttls".to_owned());
            }
            settings
        })
    }
}

/// A Python peer from tests/scripts that prints its port first; killed on drop.
struct Python {
    child: Child,
    port: u16,
}

impl Python {
    fn start(script: &str, args: &[&Path]) -> Python {
        common::require_tool("python3", "python3");
        let mut child = Command::new("python3")
            .arg(
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("tests/scripts")
                    .join(script),
            )
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start python3");
        let mut line = String::new();
        let stdout = child.stdout.take().expect("stdout");
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read the port");
        let port = line
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{script}: {line:?}"));
        Python { child, port }
    }
}

impl Drop for Python {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The Knot tree with `records` and the three receiving Postfix instances (test-CA certificate,
/// STARTTLS stripped, a stranger's self-signed certificate), started side by side: each takes
/// seconds.
fn start_peers(pki: &Pki, records: &str) -> (KnotTree, Postfix, Postfix, Postfix) {
    std::thread::scope(|s| {
        let tree = s.spawn(|| KnotTree::start(records));
        let good = s.spawn(|| pki.postfix(false));
        let stripped = s.spawn(|| pki.postfix(true));
        let stranger = Postfix::start_with_tls();
        (
            tree.join().unwrap(),
            good.join().unwrap(),
            stripped.join().unwrap(),
            stranger,
        )
    })
}

/// Stops Postfix instances side by side (each master takes a second or two to exit).
fn stop_all(instances: Vec<Postfix>) {
    std::thread::scope(|s| {
        for postfix in instances {
            s.spawn(move || drop(postfix));
        }
    });
}

fn envelope(to: &str, require_tls: bool) -> Envelope {
    Envelope {
        sender: "alice@example.org".into(),
        recipients: vec![Recipient {
            address: to.into(),
            notify: None,
            orcpt: None,
        }],
        dsn_ret: None,
        dsn_envid: None,
        body_8bit: false,
        smtputf8: false,
        helo: "client.example.org".into(),
        client: "192.0.2.7:40000".parse().unwrap(),
        tls: None,
        auth_user: None,
        arrival_unix: 1_795_729_248,
        require_tls,
        dime: None,
    }
}

const BODY: &[u8] = b"From: alice@example.org\r\nSubject: tls policy\r\n\r\nhello\r\n";

struct Setup<'a> {
    tree: &'a KnotTree,
    pki: &'a Pki,
    https_port: u16,
    destinations: Vec<DestinationPolicy>,
}

impl Setup<'_> {
    /// A deliverer whose MX connections all go to 127.0.0.1:`port` (the MX records point there).
    fn deliverer(&self, port: u16) -> Deliverer {
        let resolver = Resolver::new(&ResolverSettings {
            servers: vec![self.tree.addr],
            trust_anchor: Some(self.tree.trust_anchor()),
            ..ResolverSettings::default()
        })
        .unwrap();
        Deliverer::new(
            DeliverySettings {
                helo_name: "gw.example.org".into(),
                mx_port: port,
                connect_timeout: Duration::from_secs(5),
                greeting_timeout: Duration::from_secs(10),
                command_timeout: Duration::from_secs(10),
                data_timeout: Duration::from_secs(10),
                shuffle_equal_mx: false,
                idle_timeout: Duration::ZERO,
                mta_sts_port: self.https_port,
                mta_sts_timeout: Duration::from_secs(10),
                tls_ca_file: Some(self.pki.ca()),
                destinations: self.destinations.clone(),
                ..DeliverySettings::default()
            },
            resolver,
        )
        .unwrap()
    }
}

async fn send(deliverer: &Deliverer, to: &str, require_tls: bool) -> Outcome {
    let domain = to.split_once('@').unwrap().1;
    let hop = NextHop::Mx {
        domain: Domain::parse(domain).unwrap(),
    };
    let mut outcomes = deliverer
        .deliver(&hop, &envelope(to, require_tls), QUEUE_ID, BODY, &[0])
        .await;
    assert_eq!(outcomes.len(), 1);
    outcomes.remove(0).1
}

#[track_caller]
fn assert_delivered(outcome: &Outcome, what: &str) {
    assert!(outcome.is_delivered(), "{what}: {outcome}");
}

#[track_caller]
fn assert_deferred(outcome: &Outcome, status: (u8, u16, u16), needle: &str, what: &str) {
    assert!(
        matches!(outcome, Outcome::Deferred { .. }),
        "{what}: expected deferred, got {outcome}"
    );
    assert_eq!(
        outcome.status(),
        Some(EnhancedStatus::new(status.0, status.1, status.2)),
        "{what}: {outcome}"
    );
    assert!(
        outcome.to_string().contains(needle),
        "{what}: {outcome:?} lacks {needle:?}"
    );
}

fn metrics_text(deliverer: &Deliverer) -> String {
    let mut registry = prometheus_client::registry::Registry::default();
    deliverer.register_metrics(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    text
}

fn meta() -> ReportMeta {
    ReportMeta {
        organization: "gw.example.org".into(),
        contact: "postmaster@example.org".into(),
        start: "2026-12-01T00:00:00Z".into(),
        end: "2026-12-01T23:59:59Z".into(),
        report_id: "test".into(),
        sending_ip: None,
    }
}

fn received_over_tls(postfix: &Postfix) -> usize {
    postfix
        .maillog()
        .matches("TLS connection established from")
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dane_is_enforced_and_cannot_be_downgraded() {
    let pki = Pki::new();
    let records = format!(
        "\
secure.test. dane IN MX 10 mxdane
secure.test. mxdane IN A 127.0.0.1
secure.test. _25._tcp.mxdane IN TLSA 3 1 1 {spki}
plain.test. opp IN MX 10 mxopp
plain.test. mxopp IN A 127.0.0.1
plain.test. _25._tcp.mxopp IN TLSA 3 1 1 {zeros}
",
        spki = pki.spki_sha256,
        zeros = "00".repeat(32),
    );
    let (tree, good, stripped, stranger) = start_peers(&pki, &records);
    let setup = Setup {
        tree: &tree,
        pki: &pki,
        https_port: 9,
        destinations: Vec::new(),
    };

    // Secure MX, secure TLSA matching the certificate: delivered over TLS.
    let to_good = setup.deliverer(good.addr.port());
    let outcome = send(&to_good, "bob@dane.secure.test", false).await;
    assert_delivered(&outcome, "DANE, matching certificate");
    assert!(
        good.wait_for_message_containing("Subject: tls policy")
            .is_some()
    );
    assert_eq!(received_over_tls(&good), 1, "{}", good.maillog());

    // The same MX presenting another key: refused in the handshake, deferred, never in clear.
    let to_stranger = setup.deliverer(stranger.addr.port());
    let outcome = send(&to_stranger, "bob@dane.secure.test", false).await;
    assert_deferred(
        &outcome,
        (4, 7, 5),
        "DANE authentication failed: TLSA record 0: ",
        "DANE, stranger",
    );
    assert!(
        !stranger.maillog().contains("queued as"),
        "{}",
        stranger.maillog()
    );

    // STARTTLS stripped from EHLO: deferred, nothing sent in clear.
    let to_stripped = setup.deliverer(stripped.addr.port());
    let outcome = send(&to_stripped, "bob@dane.secure.test", false).await;
    assert_deferred(
        &outcome,
        (4, 7, 4),
        "does not offer STARTTLS",
        "DANE, downgrade",
    );
    assert!(
        !stripped.maillog().contains("from=<alice@example.org>"),
        "{}",
        stripped.maillog()
    );

    // An insecure zone's TLSA records are ignored (RFC 7672 §2.2): opportunistic, so the
    // stranger's certificate is fine and the stripped server gets the mail in clear.
    assert_delivered(
        &send(&to_stranger, "bob@opp.plain.test", false).await,
        "insecure TLSA, stranger",
    );
    assert_delivered(
        &send(&to_stripped, "bob@opp.plain.test", false).await,
        "insecure TLSA, stripped",
    );

    // A bogus MX RRset defers (4.4.3), it is never read as "no MX".
    let outcome = send(&to_good, "bob@bogus.test", false).await;
    assert!(matches!(outcome, Outcome::Deferred { .. }), "{outcome}");
    assert!(outcome.to_string().contains("bogus"), "{outcome}");

    // Counted per decision and per session result.
    let good_metrics = metrics_text(&to_good);
    assert!(
        good_metrics.contains("dimegate_tls_policy_total{policy=\"dane\",result=\"dane\"} 1"),
        "{good_metrics}"
    );
    assert!(
        good_metrics.contains("dimegate_tls_sessions_total{policy=\"dane\",result=\"success\"} 1"),
        "{good_metrics}"
    );
    assert!(
        good_metrics.contains("dimegate_tls_policy_total{policy=\"dane\",result=\"mx_bogus\"} 1"),
        "{good_metrics}"
    );
    let stripped_metrics = metrics_text(&to_stripped);
    assert!(
        stripped_metrics.contains(
            "dimegate_tls_sessions_total{policy=\"dane\",result=\"starttls-not-supported\"} 1"
        ),
        "{stripped_metrics}"
    );

    // TLS-RPT: the stranger's deliverer saw one DANE failure and one no-policy success.
    let reports = to_stranger.take_tls_reports(&meta());
    let dane = reports
        .iter()
        .find(|(d, _)| d == "dane.secure.test")
        .map(|(_, r)| r)
        .expect("a report for dane.secure.test");
    let policy = &dane.policies[0];
    assert_eq!(policy.policy.policy_type, PolicyType::Tlsa);
    assert_eq!(
        policy.policy.policy_string,
        [format!("3 1 1 {}", pki.spki_sha256)]
    );
    assert_eq!(policy.summary.total_successful_session_count, 0);
    assert_eq!(policy.summary.total_failure_session_count, 1);
    assert_eq!(policy.failure_details[0].result_type, "validation-failure");
    assert_eq!(
        policy.failure_details[0].receiving_mx_hostname,
        "mxdane.secure.test"
    );
    let opp = reports
        .iter()
        .find(|(d, _)| d == "opp.plain.test")
        .map(|(_, r)| r)
        .expect("a report for opp.plain.test");
    assert_eq!(
        opp.policies[0].policy.policy_type,
        PolicyType::NoPolicyFound
    );
    assert_eq!(opp.policies[0].summary.total_successful_session_count, 1);
    stop_all(vec![good, stripped, stranger]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mta_sts_and_requiretls_against_real_peers() {
    let pki = Pki::new();
    let policies = pki.dir.path().join("policies");
    std::fs::create_dir(&policies).unwrap();
    let policy = |mode: &str, mx: &str| {
        format!("version: STSv1\r\nmode: {mode}\r\nmx: {mx}\r\nmax_age: 86400\r\n")
    };
    std::fs::write(
        policies.join("mta-sts.sts.plain.test"),
        policy("enforce", "mxsts.plain.test"),
    )
    .unwrap();
    std::fs::write(
        policies.join("mta-sts.stsbad.plain.test"),
        policy("enforce", "*.elsewhere.test"),
    )
    .unwrap();
    std::fs::write(
        policies.join("mta-sts.ststest.plain.test"),
        policy("testing", "mxsts.plain.test"),
    )
    .unwrap();
    std::fs::write(
        policies.join("mta-sts.stsredir.plain.test"),
        "REDIRECT https://mta-sts.sts.plain.test/.well-known/mta-sts.txt",
    )
    .unwrap();
    let https_log = pki.dir.path().join("https.log");
    let https = Python::start(
        "mta_sts_https.py",
        &[&pki.chain(), &pki.key(), &policies, &https_log],
    );
    let rtls_log = pki.dir.path().join("rtls.log");
    let rtls = Python::start("requiretls_mx.py", &[&pki.chain(), &pki.key(), &rtls_log]);
    let records = format!(
        "\
secure.test. rtls IN MX 10 mxrtls
secure.test. mxrtls IN A 127.0.0.1
secure.test. _25._tcp.mxrtls IN TLSA 3 1 1 {spki}
plain.test. opp IN MX 10 mxopp
plain.test. mxopp IN A 127.0.0.1
plain.test. mxsts IN A 127.0.0.1
plain.test. sts IN MX 10 mxsts
plain.test. _mta-sts.sts IN TXT \"v=STSv1; id=1\"
plain.test. mta-sts.sts IN A 127.0.0.1
plain.test. stsbad IN MX 10 mxsts
plain.test. _mta-sts.stsbad IN TXT \"v=STSv1; id=1\"
plain.test. mta-sts.stsbad IN A 127.0.0.1
plain.test. ststest IN MX 10 mxsts
plain.test. _mta-sts.ststest IN TXT \"v=STSv1; id=1\"
plain.test. mta-sts.ststest IN A 127.0.0.1
plain.test. stsredir IN MX 10 mxsts
plain.test. _mta-sts.stsredir IN TXT \"v=STSv1; id=1\"
plain.test. mta-sts.stsredir IN A 127.0.0.1
plain.test. _smtp._tls.sts IN TXT \"v=TLSRPTv1; rua=mailto:tlsrpt@reports.example,https://mta-sts.sts.plain.test:{https}/v1/report\"
",
        spki = pki.spki_sha256,
        https = https.port,
    );
    let (tree, good, stripped, stranger) = start_peers(&pki, &records);
    let setup = Setup {
        tree: &tree,
        pki: &pki,
        https_port: https.port,
        destinations: Vec::new(),
    };
    let fetches = |host: &str| {
        std::fs::read_to_string(&https_log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.starts_with(&format!("{host} ")))
            .count()
    };

    // enforce, the MX named, its certificate valid under the (test) WebPKI: delivered, twice,
    // with one policy fetch (cached to max_age, the record id unchanged).
    let to_good = setup.deliverer(good.addr.port());
    for _ in 0..2 {
        assert_delivered(
            &send(&to_good, "bob@sts.plain.test", false).await,
            "MTA-STS enforce, good",
        );
    }
    assert_eq!(fetches("mta-sts.sts.plain.test"), 1);
    assert_eq!(received_over_tls(&good), 2, "{}", good.maillog());

    // enforce against an untrusted certificate, and against a STARTTLS downgrade: deferred.
    let to_stranger = setup.deliverer(stranger.addr.port());
    let outcome = send(&to_stranger, "bob@sts.plain.test", false).await;
    assert_deferred(
        &outcome,
        (4, 7, 5),
        "UnknownIssuer",
        "MTA-STS enforce, stranger",
    );
    let to_stripped = setup.deliverer(stripped.addr.port());
    let outcome = send(&to_stripped, "bob@sts.plain.test", false).await;
    assert_deferred(
        &outcome,
        (4, 7, 4),
        "does not offer STARTTLS",
        "MTA-STS, downgrade",
    );
    assert!(
        !stripped.maillog().contains("from=<alice@example.org>"),
        "{}",
        stripped.maillog()
    );

    // enforce, but the MX is not in the policy: not even connected to.
    let before = good.maillog().matches("connect from").count();
    let outcome = send(&to_good, "bob@stsbad.plain.test", false).await;
    assert_deferred(
        &outcome,
        (4, 7, 5),
        "not an MX host",
        "MTA-STS enforce, MX mismatch",
    );
    assert_eq!(good.maillog().matches("connect from").count(), before);

    // testing: delivered despite the untrusted certificate; the failure is only reported.
    assert_delivered(
        &send(&to_stranger, "bob@ststest.plain.test", false).await,
        "MTA-STS testing, stranger",
    );
    // A redirect is not followed: no policy, delivered opportunistically, fetch error reported.
    let before = fetches("mta-sts.sts.plain.test");
    assert_delivered(
        &send(&to_stranger, "bob@stsredir.plain.test", false).await,
        "MTA-STS redirect",
    );
    // A failed fetch is not retried for every message (FETCH_BACKOFF).
    assert_delivered(
        &send(&to_stranger, "bob@stsredir.plain.test", false).await,
        "MTA-STS redirect, again",
    );
    assert_eq!(fetches("mta-sts.stsredir.plain.test"), 1);
    assert_eq!(
        fetches("mta-sts.sts.plain.test"),
        before,
        "redirect followed"
    );
    let reports = to_stranger.take_tls_reports(&meta());
    let by = |domain: &str| {
        reports
            .iter()
            .find(|(d, _)| d == domain)
            .map(|(_, r)| serde_json::to_value(r).unwrap())
            .unwrap_or_else(|| panic!("no report for {domain}: {reports:?}"))
    };
    let testing = by("ststest.plain.test");
    assert_eq!(testing["policies"][0]["policy"]["policy-type"], "sts");
    assert_eq!(
        testing["policies"][0]["policy"]["policy-string"][1],
        "mode: testing"
    );
    assert_eq!(
        testing["policies"][0]["failure-details"][0]["result-type"],
        "certificate-not-trusted"
    );
    let redirected = by("stsredir.plain.test");
    assert_eq!(
        redirected["policies"][0]["failure-details"][0]["result-type"],
        "sts-policy-fetch-error"
    );

    // TLS-RPT (RFC 8460): the report for sts.plain.test goes to both destinations of its
    // `_smtp._tls` record, queued as mail in our store and posted over HTTPS.
    let store_dir = common::tempdir();
    let store = dimegate::store::Store::open(&store_dir.path().join("queue.redb"), None).unwrap();
    let reporter = dimegate::tlsrpt::TlsReporter::new(
        to_good.tls_report_source(),
        "gw.example.org",
        "postmaster@example.org",
        dimegate::time::UnixTime(1_796_083_200),
    );
    let summary = reporter
        .run(&store, dimegate::time::UnixTime(1_796_169_599))
        .await;
    assert_eq!(summary.mailed.len(), 1, "{summary:?}");
    assert_eq!(summary.posted.len(), 1, "{summary:?}");
    assert_eq!(summary.posted[0].2, 201);
    let posted: serde_json::Value =
        serde_json::from_slice(&std::fs::read(format!("{}.0.json", https_log.display())).unwrap())
            .unwrap();
    assert_eq!(posted["organization-name"], "gw.example.org");
    assert_eq!(
        posted["date-range"]["start-datetime"],
        "2026-12-01T00:00:00Z"
    );
    assert_eq!(posted["date-range"]["end-datetime"], "2026-12-01T23:59:59Z");
    let sts_policy = &posted["policies"][0];
    assert_eq!(sts_policy["policy"]["policy-domain"], "sts.plain.test");
    assert_eq!(sts_policy["policy"]["policy-type"], "sts");
    assert_eq!(sts_policy["policy"]["mx-host"][0], "mxsts.plain.test");
    assert_eq!(sts_policy["summary"]["total-successful-session-count"], 2);
    assert!(
        std::fs::read_to_string(&https_log)
            .unwrap()
            .contains("POST /v1/report application/tlsrpt+json")
    );
    let queued = store
        .list(&dimegate::store::ListFilter::default(), None)
        .unwrap();
    assert_eq!(queued.len(), 1);
    let record = store.get(queued[0].queue_id).unwrap().unwrap();
    assert_eq!(record.envelope.sender, "postmaster@example.org");
    assert_eq!(
        record.envelope.recipients[0].address,
        "tlsrpt@reports.example"
    );
    let mail = String::from_utf8(store.body(queued[0].queue_id).unwrap().unwrap()).unwrap();
    assert!(
        mail.contains("TLS-Report-Domain: sts.plain.test\r\n"),
        "{mail}"
    );
    assert!(mail.contains("report-type=\"tlsrpt\""), "{mail}");
    let encoded: String = mail
        .split("Content-Transfer-Encoding: base64\r\n")
        .nth(1)
        .and_then(|part| part.split("\r\n\r\n").nth(1))
        .unwrap()
        .replace("\r\n", "");
    use base64::Engine;
    let mailed: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::STANDARD
            .decode(encoded.trim_end_matches('-'))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(mailed, posted);
    // Counted once: a second run has nothing to report.
    let again = reporter
        .run(&store, dimegate::time::UnixTime(1_796_169_600))
        .await;
    assert!(again.domains.is_empty(), "{again:?}");

    // REQUIRETLS: Postfix does not offer it, so even over verified TLS the message waits.
    let outcome = send(&to_good, "bob@sts.plain.test", true).await;
    assert_deferred(
        &outcome,
        (4, 7, 30),
        "does not offer REQUIRETLS",
        "REQUIRETLS, Postfix",
    );
    // A server offering it gets `MAIL FROM ... REQUIRETLS`, over MTA-STS and over DANE.
    let to_rtls = setup.deliverer(rtls.port);
    assert_delivered(
        &send(&to_rtls, "bob@sts.plain.test", true).await,
        "REQUIRETLS, STS",
    );
    assert_delivered(
        &send(&to_rtls, "bob@rtls.secure.test", true).await,
        "REQUIRETLS, DANE",
    );
    let log = std::fs::read_to_string(&rtls_log).unwrap();
    assert_eq!(
        log.lines()
            .filter(|l| l.starts_with("TLS MAIL FROM:<alice@example.org> ")
                && l.ends_with(" REQUIRETLS"))
            .count(),
        2,
        "{log}"
    );
    assert!(!log.contains("PLAIN MAIL"), "{log}");
    // No verified path (no DANE, no MTA-STS): not sent at all, 4.7.30.
    let connections = log.matches("PLAIN EHLO").count();
    let outcome = send(&to_rtls, "bob@opp.plain.test", true).await;
    assert_deferred(&outcome, (4, 7, 30), "REQUIRETLS", "REQUIRETLS, no policy");
    let log = std::fs::read_to_string(&rtls_log).unwrap();
    assert_eq!(log.matches("PLAIN EHLO").count(), connections, "{log}");

    // [[destination]] require_tls wins: WebPKI-verified TLS to a domain without any policy.
    let setup = Setup {
        destinations: vec![DestinationPolicy {
            domain: Domain::parse("opp.plain.test").unwrap(),
            require_tls: true,
        }],
        ..setup
    };
    assert_delivered(
        &send(
            &setup.deliverer(good.addr.port()),
            "bob@opp.plain.test",
            false,
        )
        .await,
        "require_tls, good",
    );
    let outcome = send(
        &setup.deliverer(stripped.addr.port()),
        "bob@opp.plain.test",
        false,
    )
    .await;
    assert_deferred(
        &outcome,
        (4, 7, 4),
        "does not offer STARTTLS",
        "require_tls, downgrade",
    );
    let metrics = metrics_text(&to_good);
    assert!(
        metrics.contains("dimegate_tls_policy_total{policy=\"mta_sts\",result=\"webpki\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("dimegate_tls_policy_total{policy=\"mta_sts\",result=\"refused\"} 1"),
        "{metrics}"
    );
    stop_all(vec![good, stripped, stranger]);
}

/// The binary end to end: `[dns] trust_anchor` and `[outbound_tls]` from the configuration file,
/// DANE delivery to Postfix, a REQUIRETLS message (received over STARTTLS from Python's
/// smtplib) that Postfix cannot take, bounced with 5.7.30 after its retries, and the TLS-RPT
/// report emitted by `POST /api/tlsrpt/send`, queued and delivered as mail to the `rua`.
#[test]
fn gateway_applies_dane_requiretls_and_sends_tls_reports() {
    use common::{Gateway, Sink, wait_until};
    let pki = Pki::new();
    let records = format!(
        "\
secure.test. dane IN MX 10 mxdane
secure.test. mxdane IN A 127.0.0.1
secure.test. _25._tcp.mxdane IN TLSA 3 1 1 {spki}
secure.test. _smtp._tls.dane IN TXT \"v=TLSRPTv1; rua=mailto:tlsrpt@opp.plain.test\"
plain.test. opp IN MX 10 mxopp
plain.test. mxopp IN A 127.0.0.1
",
        spki = pki.spki_sha256,
    );
    // Started side by side: each takes seconds.
    let (tree, mx) = std::thread::scope(|s| {
        let tree = s.spawn(|| KnotTree::start(&records));
        let mx = pki.postfix(false);
        (tree.join().unwrap(), mx)
    });
    let backend = Sink::start(&[]);
    let gw = Gateway::start(&format!(
        "[backend]\naddress = \"{backend}\"\n\
         [queue]\nretry = [\"1s\"]\njitter_percent = 0\nexpire = \"4s\"\n\
         delay_warning = \"off\"\npoll_interval = \"100ms\"\n\
         [relay]\nnetworks = [\"127.0.0.0/8\"]\n\
         [delivery]\nconnect_timeout = \"2s\"\ncommand_timeout = \"10s\"\nmx_port = {mx_port}\n\
         [dns]\nservers = [\"{dns}\"]\ntimeout = \"2s\"\ntrust_anchor = {anchor:?}\n\
         [outbound_tls]\nca_file = {ca:?}\nmta_sts_https_port = 9\n\
         tlsrpt_contact = \"tls-reports@example.test\"\n",
        backend = backend.addr,
        mx_port = mx.addr.port(),
        dns = tree.addr,
        anchor = tree.trust_anchor(),
        ca = pki.ca(),
    ));
    let message = |subject: &str| {
        format!(
            "From: alice@example.test\r\nTo: bob@dane.secure.test\r\nSubject: {subject}\r\n\r\nhi\r\n"
        )
    };
    common::smtp_send(
        gw.smtp,
        "alice@example.test",
        &["bob@dane.secure.test"],
        &message("plain-dane"),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", gw.log_text()));
    assert!(
        mx.wait_for_message_containing("Subject: plain-dane")
            .is_some(),
        "{}\n{}",
        gw.log_text(),
        mx.maillog()
    );
    assert_eq!(received_over_tls(&mx), 1, "{}", mx.maillog());

    // REQUIRETLS over STARTTLS from a real client; Postfix never offers REQUIRETLS.
    let program = r#"
import smtplib, ssl, sys
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
s = smtplib.SMTP(sys.argv[1], int(sys.argv[2]), timeout=20)
s.ehlo("client.test"); s.starttls(context=ctx); s.ehlo("client.test")
s.sendmail("alice@example.test", ["bob@dane.secure.test"], sys.argv[3].encode(), mail_options=["REQUIRETLS"])
s.quit()
"#;
    let out = Command::new("python3")
        .args([
            "-c",
            program,
            "127.0.0.1",
            &gw.smtp.port().to_string(),
            &message("needs-requiretls"),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_until(
        Duration::from_secs(20),
        || {
            backend
                .messages()
                .iter()
                .any(|m| m.contains("Status: 5.7.30"))
        },
        || format!("no 5.7.30 DSN; log:\n{}", gw.log_text()),
    );
    let dsn = backend
        .messages()
        .into_iter()
        .find(|m| m.contains("Status: 5.7.30"))
        .unwrap();
    assert!(dsn.contains("REQUIRETLS"), "{dsn}");
    assert!(
        mx.wait_for_messages(0)
            .iter()
            .all(|m| !String::from_utf8_lossy(m).contains("needs-requiretls")),
        "the REQUIRETLS message reached a server without REQUIRETLS"
    );
    let log = gw.log_text();
    assert!(log.contains("TLS policy"), "{log}");
    let metrics = gw.metrics();
    assert!(
        metrics.contains("dimegate_tls_policy_total{policy=\"dane\",result=\"dane\"}"),
        "{metrics}"
    );

    // The TLS-RPT report, now: queued for tlsrpt@opp.plain.test and delivered to its MX.
    let mut s = std::net::TcpStream::connect(gw.admin).unwrap();
    use std::io::{Read, Write};
    write!(s, "POST /api/tlsrpt/send HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    let body: serde_json::Value =
        serde_json::from_str(reply.split_once("\r\n\r\n").unwrap().1).unwrap();
    assert_eq!(body["mailed"][0][0], "dane.secure.test", "{body}");
    assert_eq!(body["mailed"][0][1], "tlsrpt@opp.plain.test", "{body}");
    let report = mx
        .wait_for_message_containing("TLS-Report-Domain: dane.secure.test")
        .unwrap_or_else(|| panic!("no report delivered; log:\n{}", gw.log_text()));
    assert!(
        report.contains("Return-Path: <tls-reports@example.test>"),
        "{report}"
    );
    assert!(report.contains("application/tlsrpt+json"), "{report}");
}
