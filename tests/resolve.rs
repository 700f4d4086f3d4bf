//! MX and address resolution against a real DNS server: Knot on loopback, queried directly, and
//! Unbound in front of it for SERVFAIL.

mod common;

use common::{Knot, test_zone};
use dimegate::resolve::{
    AddressFamilies, MxAnswer, MxHost, ResolveError, Resolver, ResolverSettings,
};
use std::net::IpAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn mx(preference: u16, host: &str) -> MxHost {
    MxHost {
        preference,
        host: host.to_owned(),
    }
}

fn ips(list: &[&str]) -> Vec<IpAddr> {
    list.iter().map(|s| s.parse().unwrap()).collect()
}

#[tokio::test]
async fn mx_answers_from_knot() {
    let knot = Knot::start("example.test", &test_zone());
    let resolver = Resolver::with_servers(&[knot.addr]).unwrap();

    // Preference order.
    assert_eq!(
        resolver.mx_hosts("example.test").await.unwrap(),
        MxAnswer::Exchanges(vec![mx(10, "mx1.example.test"), mx(20, "mx2.example.test")])
    );
    // Case and a trailing dot do not matter.
    assert_eq!(
        resolver.mx_hosts("EXAMPLE.test.").await.unwrap(),
        resolver.mx_hosts("example.test").await.unwrap()
    );
    // Equal preferences in a stable order (by name) after the better one.
    assert_eq!(
        resolver.mx_hosts("equal.example.test").await.unwrap(),
        MxAnswer::Exchanges(vec![
            mx(5, "mx3.example.test"),
            mx(10, "mx1.example.test"),
            mx(10, "mx2.example.test"),
        ])
    );
    // No MX but an address: the domain is its own MX, preference 0.
    assert_eq!(
        resolver.mx_hosts("amail.example.test").await.unwrap(),
        MxAnswer::Implicit(mx(0, "amail.example.test"))
    );
    // Null MX.
    assert_eq!(
        resolver.mx_hosts("nullmx.example.test").await.unwrap(),
        MxAnswer::NullMx
    );
    // NXDOMAIN: permanent error.
    let error = resolver.mx_hosts("nope.example.test").await.unwrap_err();
    assert!(matches!(error, ResolveError::NxDomain { .. }), "{error:?}");
    assert!(error.is_permanent());
    // The name exists with other records only: implicit MX, which has no address.
    assert_eq!(
        resolver.mx_hosts("nodata.example.test").await.unwrap(),
        MxAnswer::Implicit(mx(0, "nodata.example.test"))
    );
    assert_eq!(
        resolver.addresses("nodata.example.test").await.unwrap(),
        Vec::<IpAddr>::new()
    );
}

#[tokio::test]
async fn addresses_from_knot_in_family_order() {
    let knot = Knot::start("example.test", &test_zone());
    let resolver = Resolver::with_servers(&[knot.addr]).unwrap();
    assert_eq!(
        resolver.addresses("amail.example.test").await.unwrap(),
        ips(&["127.0.0.1", "::1"])
    );
    assert_eq!(
        resolver.addresses("mx2.example.test").await.unwrap(),
        ips(&["127.0.0.2"])
    );
    // No such host is an empty answer, not an error.
    assert_eq!(
        resolver.addresses("nowhere.example.test").await.unwrap(),
        Vec::<IpAddr>::new()
    );
    // IP literals are not looked up.
    assert_eq!(
        resolver.addresses("[192.0.2.1]").await.unwrap(),
        ips(&["192.0.2.1"])
    );
    assert_eq!(
        resolver.addresses("[IPv6:2001:db8::1]").await.unwrap(),
        ips(&["2001:db8::1"])
    );

    let v6_first = Resolver::new(&ResolverSettings {
        servers: vec![knot.addr],
        families: AddressFamilies::Ipv6ThenIpv4,
        ..ResolverSettings::default()
    })
    .unwrap();
    assert_eq!(
        v6_first.addresses("amail.example.test").await.unwrap(),
        ips(&["::1", "127.0.0.1"])
    );
    let v4_only = Resolver::new(&ResolverSettings {
        servers: vec![knot.addr],
        families: AddressFamilies::Ipv4Only,
        ..ResolverSettings::default()
    })
    .unwrap();
    assert_eq!(
        v4_only.addresses("amail.example.test").await.unwrap(),
        ips(&["127.0.0.1"])
    );
}

#[tokio::test]
async fn refused_and_unreachable_servers_are_temporary() {
    let knot = Knot::start("example.test", &test_zone());
    let resolver = Resolver::new(&ResolverSettings {
        servers: vec![knot.addr],
        timeout: Duration::from_secs(1),
        attempts: 1,
        ..ResolverSettings::default()
    })
    .unwrap();
    // Knot is not authoritative for other.example: it answers REFUSED.
    let error = resolver.mx_hosts("other.example").await.unwrap_err();
    assert!(matches!(error, ResolveError::Temporary { .. }), "{error:?}");
    assert!(!error.is_permanent());

    // Nothing listens on this port.
    let dead = Resolver::new(&ResolverSettings {
        servers: vec![
            format!("127.0.0.1:{}", common::free_port())
                .parse()
                .unwrap(),
        ],
        timeout: Duration::from_secs(1),
        attempts: 1,
        ..ResolverSettings::default()
    })
    .unwrap();
    let started = Instant::now();
    let error = dead.mx_hosts("example.test").await.unwrap_err();
    assert!(matches!(error, ResolveError::Temporary { .. }), "{error:?}");
    assert!(!error.is_permanent());
    assert!(started.elapsed() < Duration::from_secs(10));
    let error = dead.addresses("mx1.example.test").await.unwrap_err();
    assert!(!error.is_permanent(), "{error:?}");
}

#[tokio::test]
async fn servfail_through_unbound_is_temporary() {
    common::require_tool("unbound", "unbound");
    common::require_tool("keymgr", "knot");
    let knot = Knot::start("example.test", &test_zone());
    let dir = tempfile::tempdir().unwrap();
    // Trust anchors for the signed example.test zone, from Knot's keys.
    let ds = Command::new("keymgr")
        .arg("-c")
        .arg(knot.dir.path().join("knot.conf"))
        .args(["example.test", "ds"])
        .output()
        .expect("run keymgr");
    assert!(ds.status.success(), "keymgr failed");
    let anchors = dir.path().join("anchors.ds");
    std::fs::write(&anchors, &ds.stdout).unwrap();
    let port = common::free_port();
    let status = Command::new("sh")
        .arg(common::testbed().join("mk-unbound.sh"))
        .arg(dir.path().join("unbound"))
        .arg(port.to_string())
        .arg(&anchors)
        .arg(format!("stub:example.test:127.0.0.1@{}", knot.addr.port()))
        // Knot does not serve broken.test and answers REFUSED: Unbound turns that into SERVFAIL.
        .arg(format!(
            "insecure:broken.test:127.0.0.1@{}",
            knot.addr.port()
        ))
        .stdout(Stdio::null())
        .status()
        .expect("run mk-unbound.sh");
    assert!(status.success(), "mk-unbound.sh failed");
    let _unbound = common::spawn_guarded(
        "unbound",
        Command::new("unbound")
            .arg("-d")
            .arg("-c")
            .arg(dir.path().join("unbound/unbound.conf")),
    );
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    common::wait_for_dns(addr, "example.test");

    let resolver = Resolver::new(&ResolverSettings {
        servers: vec![addr],
        timeout: Duration::from_secs(10),
        attempts: 1,
        ..ResolverSettings::default()
    })
    .unwrap();
    // Through the validating resolver the signed answers still come out right.
    assert_eq!(
        resolver.mx_hosts("example.test").await.unwrap(),
        MxAnswer::Exchanges(vec![mx(10, "mx1.example.test"), mx(20, "mx2.example.test")])
    );
    assert_eq!(
        resolver.mx_hosts("nullmx.example.test").await.unwrap(),
        MxAnswer::NullMx
    );
    assert!(
        resolver
            .mx_hosts("nope.example.test")
            .await
            .unwrap_err()
            .is_permanent()
    );
    // broken.test's server refuses: Unbound answers SERVFAIL, which must defer, not bounce.
    let error = resolver.mx_hosts("broken.test").await.unwrap_err();
    assert!(matches!(error, ResolveError::Temporary { .. }), "{error:?}");
    assert!(!error.is_permanent());
    assert!(
        error.to_string().contains("SERVFAIL") || error.to_string().contains("Server Failure"),
        "{error}"
    );
    // The same for a `_dx` look-up: SERVFAIL defers, it is not "no DIME record".
    let error = resolver.dx("broken.test").await.unwrap_err();
    assert!(matches!(error, ResolveError::Temporary { .. }), "{error:?}");
    assert!(!error.is_permanent() && !error.is_bogus());
}

#[tokio::test]
async fn system_configuration_builds() {
    // No query: only that /etc/resolv.conf is read and a resolver comes out.
    let resolver = Resolver::new(&ResolverSettings::default());
    assert!(resolver.is_ok(), "{:?}", resolver.err());
}

// ---- DNSSEC: the signed test tree of TESTBED.md §3.7, validated by hickory itself ----

use dimegate::dane::Tlsa;
use dimegate::resolve::Verdict;

const POK: &str = "POBPl5Z0Jtq3/8QK8FkWKAlkRyny2J0dXqY3xh0i3ms";
const DIGEST: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// `_dx`, TLSA and a few odd records in every child of the tree.
fn tree_records() -> String {
    // Longer than 255 bytes: mk-knot-tree.sh splits it into several character-strings.
    let many_hosts: String = (0..20)
        .map(|i| format!(" dx=dx{i}.long.secure.test"))
        .collect();
    format!(
        "\
secure.test. _dx IN TXT \"ver=1 pok={POK} dx=dx.secure.test\"
secure.test. _dx.long IN TXT \"ver=1 pok={POK}{many_hosts}\"
secure.test. _25._tcp.mx IN TLSA 3 1 1 {DIGEST}
secure.test. _25._tcp.mx IN TLSA 2 0 2 {DIGEST}{DIGEST}
other.test. _dx IN TXT \"ver=1 pok={POK} dx=dx.other.test pol=strict\"
other.test. _dx.broken IN TXT \"ver=1 pok=not-a-key\"
other.test. _dx.two IN TXT \"ver=1 pok={POK}\"
other.test. _dx.two IN TXT \"ver=1 pok={POK} dx=dx.other.test\"
plain.test. _dx IN TXT \"ver=1 pok={POK} dx=dx.plain.test\"
plain.test. _25._tcp.mx IN TLSA 3 1 1 {DIGEST}
bogus.test. _dx IN TXT \"ver=1 pok={POK} dx=dx.bogus.test\"
bogus.test. _25._tcp.mx IN TLSA 3 1 1 {DIGEST}
"
    )
}

fn validating(tree: &common::KnotTree) -> Resolver {
    let resolver = Resolver::new(&ResolverSettings {
        servers: vec![tree.addr],
        trust_anchor: Some(tree.trust_anchor()),
        ..ResolverSettings::default()
    })
    .unwrap();
    assert!(resolver.is_validating());
    resolver
}

fn digest() -> Vec<u8> {
    (0..32)
        .map(|i| u8::from_str_radix(&DIGEST[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

fn assert_bogus<T: std::fmt::Debug>(result: Result<T, ResolveError>, what: &str) {
    match result {
        Err(error @ ResolveError::Bogus { .. }) => {
            assert!(error.is_bogus());
            assert!(!error.is_permanent(), "bogus must defer, not bounce");
        }
        other => panic!("{what}: expected Bogus, got {other:?}"),
    }
}

#[tokio::test]
async fn dx_verdicts_secure_insecure_bogus() {
    let tree = common::KnotTree::start(&tree_records());
    let resolver = validating(&tree);

    let (record, verdict) = resolver.dx("secure.test").await.unwrap().expect("record");
    assert_eq!(verdict, Verdict::Secure);
    assert_eq!(record.dx, ["dx.secure.test"]);
    assert_eq!(record.poks.len(), 1);
    // Case and a trailing dot do not matter.
    let (again, _) = resolver.dx("SECURE.test.").await.unwrap().unwrap();
    assert_eq!(again, record);

    let (record, verdict) = resolver.dx("other.test").await.unwrap().unwrap();
    assert_eq!(verdict, Verdict::Secure);
    assert_eq!(record.policy(), dimegate::dime::Policy::Strict);

    let (record, verdict) = resolver.dx("plain.test").await.unwrap().unwrap();
    assert_eq!(verdict, Verdict::Insecure);
    assert_eq!(record.dx, ["dx.plain.test"]);

    assert_bogus(resolver.dx("bogus.test").await, "_dx.bogus.test");
    // A name without a record in a bogus zone: the denial cannot be proven either, so it is
    // bogus, never "no record".
    assert_bogus(
        resolver.dx("nothing.bogus.test").await,
        "_dx.nothing.bogus.test",
    );

    // A split TXT record (more than 255 bytes) is concatenated before parsing.
    let (record, verdict) = resolver.dx("long.secure.test").await.unwrap().unwrap();
    assert_eq!(verdict, Verdict::Secure);
    assert_eq!(record.dx.len(), 20);
    assert_eq!(record.dx[19], "dx19.long.secure.test");
}

#[tokio::test]
async fn dx_absent_malformed_and_ambiguous() {
    let tree = common::KnotTree::start(&tree_records());
    let resolver = validating(&tree);
    // NXDOMAIN at _dx (authenticated denial in a signed zone, plain denial in the unsigned one).
    assert!(resolver.dx("nope.secure.test").await.unwrap().is_none());
    assert!(resolver.dx("nope.plain.test").await.unwrap().is_none());
    // NODATA: `_dx.mx.secure.test` does not exist but mx.secure.test does; and a name with other
    // records only.
    assert!(resolver.dx("mx.secure.test").await.unwrap().is_none());

    let error = resolver.dx("broken.other.test").await.unwrap_err();
    assert!(
        matches!(&error, ResolveError::InvalidDxRecord { name, .. } if name == "_dx.broken.other.test"),
        "{error:?}"
    );
    assert!(!error.is_permanent() && !error.is_bogus());

    let error = resolver.dx("two.other.test").await.unwrap_err();
    assert!(
        matches!(error, ResolveError::MultipleDxRecords { count: 2, .. }),
        "{error:?}"
    );

    let error = resolver.dx("bad..name").await.unwrap_err();
    assert!(
        matches!(error, ResolveError::InvalidName { .. }),
        "{error:?}"
    );
}

#[tokio::test]
async fn mx_and_address_verdicts() {
    let tree = common::KnotTree::start(&tree_records());
    let resolver = validating(&tree);
    let exchange = |zone: &str| MxAnswer::Exchanges(vec![mx(10, &format!("mx.{zone}"))]);

    assert_eq!(
        resolver.mx("secure.test").await.unwrap(),
        (exchange("secure.test"), Verdict::Secure)
    );
    assert_eq!(
        resolver.mx("plain.test").await.unwrap(),
        (exchange("plain.test"), Verdict::Insecure)
    );
    assert_bogus(resolver.mx("bogus.test").await, "MX bogus.test");
    // The verdict-less call for existing callers refuses a bogus answer the same way.
    assert_bogus(resolver.mx_hosts("bogus.test").await, "mx_hosts bogus.test");
    assert_eq!(
        resolver.mx_hosts("secure.test").await.unwrap(),
        exchange("secure.test")
    );
    // NODATA with an authenticated denial: the implicit MX, secure.
    assert_eq!(
        resolver.mx("mx.secure.test").await.unwrap(),
        (MxAnswer::Implicit(mx(0, "mx.secure.test")), Verdict::Secure)
    );
    assert_eq!(
        resolver.mx("mx.plain.test").await.unwrap().1,
        Verdict::Insecure
    );
    let error = resolver.mx("nope.secure.test").await.unwrap_err();
    assert!(matches!(error, ResolveError::NxDomain { .. }), "{error:?}");
    assert!(error.is_permanent());

    assert_eq!(
        resolver
            .addresses_with_verdict("mx.secure.test")
            .await
            .unwrap(),
        (ips(&["127.0.0.2"]), Verdict::Secure)
    );
    assert_eq!(
        resolver
            .addresses_with_verdict("mx.plain.test")
            .await
            .unwrap(),
        (ips(&["127.0.0.4"]), Verdict::Insecure)
    );
    assert_bogus(
        resolver.addresses_with_verdict("mx.bogus.test").await,
        "A mx.bogus.test",
    );
}

#[tokio::test]
async fn tlsa_verdicts() {
    let tree = common::KnotTree::start(&tree_records());
    let resolver = validating(&tree);

    let (mut records, verdict) = resolver.tlsa(25, "mx.secure.test").await.unwrap().unwrap();
    assert_eq!(verdict, Verdict::Secure);
    records.sort_by_key(|r| r.usage);
    let sha512_data: Vec<u8> = digest().repeat(2);
    assert_eq!(
        records,
        [
            Tlsa {
                usage: 2,
                selector: 0,
                matching: 2,
                data: sha512_data
            },
            Tlsa {
                usage: 3,
                selector: 1,
                matching: 1,
                data: digest()
            },
        ]
    );
    let (records, verdict) = resolver.tlsa(25, "mx.plain.test").await.unwrap().unwrap();
    assert_eq!(verdict, Verdict::Insecure);
    assert_eq!(records.len(), 1);
    assert_bogus(
        resolver.tlsa(25, "mx.bogus.test").await,
        "TLSA mx.bogus.test",
    );
    // No TLSA records: NODATA (another port) and NXDOMAIN (another host).
    assert!(
        resolver
            .tlsa(465, "mx.secure.test")
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        resolver
            .tlsa(25, "nope.secure.test")
            .await
            .unwrap()
            .is_none()
    );
    assert!(resolver.tlsa(25, "mx.other.test").await.unwrap().is_none());
}

#[tokio::test]
async fn without_trust_anchor_nothing_is_validated() {
    let tree = common::KnotTree::start(&tree_records());
    let resolver = Resolver::with_servers(&[tree.addr]).unwrap();
    assert!(!resolver.is_validating());
    assert_eq!(
        resolver.dx("secure.test").await.unwrap().unwrap().1,
        Verdict::Insecure
    );
    // Not validated, so the broken chain is not noticed: the answer is only Insecure.
    assert_eq!(
        resolver.dx("bogus.test").await.unwrap().unwrap().1,
        Verdict::Insecure
    );
    assert_eq!(
        resolver.mx("secure.test").await.unwrap().1,
        Verdict::Insecure
    );
}

#[tokio::test]
async fn silent_server_is_temporary() {
    // Bound on UDP and TCP, never answering: every query times out.
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = udp.local_addr().unwrap();
    let _tcp = std::net::TcpListener::bind(addr);
    let resolver = Resolver::new(&ResolverSettings {
        servers: vec![addr],
        timeout: Duration::from_millis(500),
        attempts: 1,
        ..ResolverSettings::default()
    })
    .unwrap();
    for result in [
        resolver.dx("secure.test").await.map(|_| ()),
        resolver.tlsa(25, "mx.secure.test").await.map(|_| ()),
        resolver.mx("secure.test").await.map(|_| ()),
    ] {
        let error = result.unwrap_err();
        assert!(matches!(error, ResolveError::Temporary { .. }), "{error:?}");
        assert!(!error.is_permanent() && !error.is_bogus());
    }
    drop(udp);
}

#[test]
fn unusable_trust_anchor_fails_at_build() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("missing.keys", None),
        ("empty.keys", Some("")),
        (
            "garbage.keys",
            Some("test. 300 IN DNSKEY 257 3 13 !!!notbase64\n"),
        ),
    ];
    for (file, content) in cases {
        let path = dir.path().join(file);
        if let Some(content) = content {
            std::fs::write(&path, content).unwrap();
        }
        let error = Resolver::new(&ResolverSettings {
            servers: vec!["127.0.0.1:53".parse().unwrap()],
            trust_anchor: Some(path.clone()),
            ..ResolverSettings::default()
        })
        .unwrap_err();
        assert!(
            matches!(&error, ResolveError::TrustAnchor { path: p, .. } if *p == path),
            "{file}: {error:?}"
        );
    }
}
