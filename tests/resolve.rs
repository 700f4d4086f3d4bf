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
}

#[tokio::test]
async fn system_configuration_builds() {
    // No query: only that /etc/resolv.conf is read and a resolver comes out.
    let resolver = Resolver::new(&ResolverSettings::default());
    assert!(resolver.is_ok(), "{:?}", resolver.err());
}
