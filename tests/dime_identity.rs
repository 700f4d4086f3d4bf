//! Served domains as DIME organizations, as an administrator meets them: the real binary creates
//! org keys on first start, refuses key files others can read, manages hosted users while it
//! runs, and prints the `_dx` record of the running configuration, which a parser reads back.

mod common;

use common::{Gateway, bin};
use dimegate::dime::{DxRecord, Signet, TlsPin};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

fn run(config: &Path, args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .expect("run dimegate")
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}: {}{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn json(out: &Output) -> serde_json::Value {
    serde_json::from_str(&ok(out)).expect("JSON output")
}

#[test]
fn first_start_makes_each_domain_an_organization_and_record_publishes_it() {
    let gw = Gateway::start("");
    let data = gw.dir.path().join("data");
    for domain in ["example.test", "localhost"] {
        let d = data.join("dime").join(domain);
        assert_eq!(mode(&d), 0o700, "{domain} directory");
        assert_eq!(mode(&d.join("org.key")), 0o600, "{domain} org key");
        let signet = Signet::parse_any(&std::fs::read(d.join("org.signet")).unwrap()).unwrap();
        assert_eq!(signet.identifier(), Some(domain));
        assert!(
            gw.log_text()
                .contains(&signet.crypto_fingerprint().to_string()),
            "the log names {domain}'s fingerprint"
        );
    }
    let org = Signet::parse_any(&std::fs::read(data.join("dime/example.test/org.signet")).unwrap())
        .unwrap();

    // The record of the running configuration: POK, the DMTP certificate's pin, the DX host.
    let out = ok(&run(&gw.config, &["record", "example.test"]));
    let line = out.trim();
    let rdata = line
        .strip_prefix("_dx.example.test. IN TXT ")
        .unwrap_or_else(|| panic!("record line: {line}"));
    // Zone-file rdata: one or more quoted strings.
    let strings: Vec<String> = rdata
        .split("\" \"")
        .map(|s| s.trim_matches('"').to_owned())
        .collect();
    let record = DxRecord::parse_str(&strings.concat()).expect("the record parses");
    assert_eq!(record.poks, vec![*org.signing_key()]);
    assert_eq!(record.dx, vec!["mx.example.test".to_owned()]);
    use rustls_pki_types::pem::PemObject;
    let cert =
        rustls_pki_types::CertificateDer::from_pem_file(data.join("dmtp-tls/cert.pem")).unwrap();
    assert!(matches!(record.check_tls(&cert), TlsPin::Verified { .. }));
    // A different certificate does not match the pin.
    let other = rcgen::generate_simple_self_signed(vec!["mx.example.test".into()]).unwrap();
    assert!(!matches!(
        record.check_tls(other.cert.der()),
        TlsPin::Verified { .. }
    ));
    assert_eq!(mode(&data.join("dmtp-tls/key.pem")), 0o600);

    // A domain that is not served is a usage error.
    assert_eq!(
        run(&gw.config, &["record", "elsewhere.test"]).status.code(),
        Some(2)
    );
}

#[test]
fn a_group_readable_org_key_stops_the_start_with_its_path() {
    let mut gw = Gateway::start("");
    gw.stop();
    let key = gw.dir.path().join("data/dime/example.test/org.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).unwrap();
    let out = Command::new(bin())
        .args(["serve", "--config"])
        .arg(&gw.config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&key.display().to_string()) && err.contains("chmod 600"),
        "{err}"
    );
}

#[test]
fn configured_org_key_files_are_used_and_checked() {
    let dir = common::tempdir();
    let keys = dir.path().join("keys");
    let status = Command::new(bin())
        .args(["keys", "org", "example.test", "--out"])
        .arg(&keys)
        .output()
        .unwrap();
    assert!(status.status.success());
    let extra = format!(
        "[[domain]]\nname = \"example.org\"\norg_key = {:?}\norg_signet = {:?}\n",
        keys.join("example.test.key"),
        keys.join("example.test.signet")
    );
    // The key pair of example.test configured for example.org: the start names the mismatch.
    let config = dir.path().join("bad.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {:?}\n{extra}[smtp]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[dmtp]\nlisten = \"127.0.0.1:0\"\n",
            dir.path().join("data")
        ),
    )
    .unwrap();
    let out = Command::new(bin())
        .args(["serve", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("example.test"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Half a pair is a configuration error naming the key.
    std::fs::write(
        &config,
        "[[domain]]\nname = \"example.org\"\norg_key = \"/x\"\n",
    )
    .unwrap();
    let out = Command::new(bin())
        .args(["config", "check"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("domain[0].org_signet"));
}

/// The addresses `users list --json` prints, in its order.
fn listed(config: &Path) -> Vec<String> {
    json(&run(config, &["users", "list", "--json"]))
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["address"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn hosted_users_are_managed_while_the_server_runs() {
    let gw = Gateway::start("");
    let c = &gw.config;
    let org_path = gw.dir.path().join("data/dime/example.test/org.signet");
    let org = Signet::parse_any(&std::fs::read(&org_path).unwrap()).unwrap();

    ok(&run(c, &["users", "add", "Alice@example.test"]));
    ok(&run(
        c,
        &["users", "add", "bob@example.test", "--mode", "cautious"],
    ));
    // Twice is refused; a domain we do not serve is a usage error.
    assert_eq!(
        run(c, &["users", "add", "alice@example.test"])
            .status
            .code(),
        Some(1)
    );
    assert_eq!(
        run(c, &["users", "add", "x@elsewhere.test"]).status.code(),
        Some(2)
    );

    // Each served domain's bridge identity is a hosted user too (made at start).
    assert_eq!(
        listed(c),
        [
            "alice@example.test",
            "bob@example.test",
            "dime-bridge@example.test",
            "dime-bridge@localhost"
        ]
    );

    // Alice's signet validates under the org signet, through the binary.
    let alice = json(&run(c, &["users", "show", "alice@example.test", "--json"]));
    assert_eq!(alice["mode"], "trustful");
    let g1 = alice["generations"][0]["crypto_fingerprint"]
        .as_str()
        .unwrap()
        .to_owned();
    let user_dir = gw.dir.path().join("data/dime/example.test/users/alice");
    let shown = Command::new(bin())
        .args(["signet", "show", "--org"])
        .arg(&org_path)
        .arg(user_dir.join("1.signet"))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&ok(&shown).into_bytes()).contains("level: id"));

    // Rotation: a second generation whose custody is signed by the first key.
    ok(&run(c, &["users", "rotate", "alice@example.test"]));
    let alice = json(&run(c, &["users", "show", "alice@example.test", "--json"]));
    assert_eq!(alice["generations"].as_array().unwrap().len(), 2);
    assert_eq!(alice["generations"][0]["crypto_fingerprint"], g1.as_str());
    assert_ne!(alice["current"], g1.as_str());
    let s1 = Signet::parse_any(&std::fs::read(user_dir.join("1.signet")).unwrap()).unwrap();
    let s2 = Signet::parse_any(&std::fs::read(user_dir.join("2.signet")).unwrap()).unwrap();
    s2.verify_custody(s1.signing_key()).unwrap();
    s2.validate(Some(&org)).unwrap();

    // Bob is cautious: his client made the key and a signing request; we sign and file it.
    let bob_dir = gw.dir.path().join("bob-keys");
    ok(&Command::new(bin())
        .args(["keys", "user", "bob@example.test", "--org-key"])
        .arg(gw.dir.path().join("data/dime/example.test/org.key"))
        .arg("--out")
        .arg(&bob_dir)
        .output()
        .unwrap());
    assert_eq!(
        run(c, &["users", "rotate", "bob@example.test"])
            .status
            .code(),
        Some(1),
        "we do not hold a cautious user's key"
    );
    let signet_file = bob_dir.join("bob@example.test.signet");
    ok(&run(
        c,
        &[
            "users",
            "import-signet",
            "bob@example.test",
            signet_file.to_str().unwrap(),
        ],
    ));
    let bob = json(&run(c, &["users", "show", "bob@example.test", "--json"]));
    assert_eq!(bob["mode"], "cautious");
    assert_eq!(bob["generations"][0]["key_held"], false);
    // A second import without custody from the first key is refused.
    let other_dir = gw.dir.path().join("bob-keys-2");
    ok(&Command::new(bin())
        .args(["keys", "user", "bob@example.test", "--org-key"])
        .arg(gw.dir.path().join("data/dime/example.test/org.key"))
        .arg("--out")
        .arg(&other_dir)
        .output()
        .unwrap());
    let out = run(
        c,
        &[
            "users",
            "import-signet",
            "bob@example.test",
            other_dir.join("bob@example.test.signet").to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("custody"));

    ok(&run(c, &["users", "remove", "alice@example.test"]));
    assert_eq!(
        run(c, &["users", "show", "alice@example.test"])
            .status
            .code(),
        Some(1)
    );
    assert_eq!(
        listed(c),
        [
            "bob@example.test",
            "dime-bridge@example.test",
            "dime-bridge@localhost"
        ]
    );
    // The server kept running through all of it.
    assert_eq!(common::http_get(gw.admin, "/healthz").unwrap().0, 200);
}
