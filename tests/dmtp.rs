//! DMTP between real gateways: two (three) dimegate processes on their own loopback addresses,
//! `_dx` records published in a DNSSEC-signed Knot tree, an independent Python DMTP client written
//! from DIME.md §10, and openssl s_client. The receiving gateway resolves the origin's org signet
//! through DNSSEC and the origin's own DMTP server before it answers a transfer.

mod common;

use common::{Gateway, KnotTree, bin, free_port, http_get, script, tool};
use dimegate::dime::Signet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

struct Side {
    domain: &'static str,

    dir: tempfile::TempDir,
    config: PathBuf,
    smtp: SocketAddr,
    admin: SocketAddr,
    dmtp: SocketAddr,
}

impl Side {
    fn new(domain: &'static str, ip: &'static str, dmtp_port: u16) -> Side {
        let dir = common::tempdir();
        let config = dir.path().join("dimegate.toml");
        let side = Side {
            domain,
            smtp: format!("{ip}:{}", free_port()).parse().unwrap(),
            admin: format!("127.0.0.1:{}", free_port()).parse().unwrap(),
            dmtp: format!("{ip}:{dmtp_port}").parse().unwrap(),
            dir,
            config,
        };
        side.write_config(None);
        side
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn write_config(&self, dns: Option<&KnotTree>) {
        let dns = match dns {
            Some(t) => format!(
                "[dns]\nservers = [\"{}\"]\ntimeout = \"2s\"\ntrust_anchor = {:?}\n",
                t.addr,
                t.trust_anchor()
            ),
            None => "[dns]\nservers = [\"127.0.0.1:9\"]\ntimeout = \"1s\"\n".into(),
        };
        let text = format!(
            "data_dir = {:?}\n[[domain]]\nname = \"{d}\"\n[smtp]\nlisten = \"{}\"\nhostname = \"mx.{d}\"\n[admin]\nlisten = \"{}\"\n[dmtp]\nlisten = \"{}\"\ndx = [\"dx.{d}\"]\nconnect_port = {}\n{dns}",
            self.data(),
            self.smtp,
            self.admin,
            self.dmtp,
            self.dmtp.port(),
            d = self.domain,
        );
        std::fs::write(&self.config, text).unwrap();
    }

    fn cli(&self, args: &[&str]) -> Output {
        Command::new(bin())
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .output()
            .unwrap()
    }

    /// `record` output as a mk-knot-tree.sh records line for `zone`.
    fn record_line(&self, zone: &str) -> String {
        let out = ok(&self.cli(&["record", self.domain]));
        let rdata = out
            .trim()
            .split_once(" IN TXT ")
            .map(|(_, r)| r.to_owned())
            .expect("record line");
        format!("{zone}. _dx IN TXT {rdata}\n")
    }

    fn start(&self) -> Gateway {
        let mut gw = Gateway {
            dir: common::tempdir(),
            config: self.config.clone(),
            smtp: self.smtp,
            tls_smtp: self.smtp,
            admin: self.admin,
            child: None,
            log: self.dir.path().join("gateway.log"),
        };
        gw.spawn();
        gw
    }

    fn org_signet(&self) -> Signet {
        let p = self.data().join(format!("dime/{}/org.signet", self.domain));
        Signet::parse_any(&std::fs::read(p).unwrap()).unwrap()
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.data().join(format!("dime/{}/{rel}", self.domain))
    }
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

/// The Python client: (exit success, stdout).
fn python(server: SocketAddr, tls: &str, name: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new("python3")
        .arg(script("dmtp_client.py"))
        .arg(server.ip().to_string())
        .arg(server.port().to_string())
        .arg(tls)
        .arg(name)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

const MAIL: &str = "Date: Tue, 01 Dec 2026 12:00:00 +0000\r\nTo: <bob@other.test>\r\nFrom: <alice@secure.test>\r\nSubject: over DMTP\r\n\r\nHello Bob.\r\n";

fn seal(a: &Side, b: &Side, dir: &Path) -> PathBuf {
    let mut child = Command::new(bin())
        .args(["message", "seal", "--author-key"])
        .arg(a.path("users/alice/1.key"))
        .arg("--author-signet")
        .arg(a.path("users/alice/1.signet"))
        .arg("--origin-key")
        .arg(a.path("org.key"))
        .arg("--origin-signet")
        .arg(a.path("org.signet"))
        .arg("--destination-signet")
        .arg(b.path("org.signet"))
        .arg("--recipient-signet")
        .arg(b.path("users/bob/1.signet"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(MAIL.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let path = dir.join("sealed.dmime");
    std::fs::write(&path, &out.stdout).unwrap();
    path
}

fn queued(gw: &Gateway) -> Vec<serde_json::Value> {
    gw.queue_json()
}

#[test]
fn two_gateways_answer_signet_lookups_and_transfer_over_dmtp() {
    tool("openssl");
    let port = free_port();
    let a = Side::new("secure.test", "127.0.0.2", port);
    let b = Side::new("other.test", "127.0.0.3", port);
    // A third organization in the unsigned zone, pinning its self-signed certificate: without
    // DNSSEC the pin proves nothing, so nobody may trust it.
    let c = Side::new("plain.test", "127.0.0.4", port);
    ok(&a.cli(&["users", "add", "alice@secure.test"]));
    ok(&b.cli(&["users", "add", "bob@other.test"]));
    let mut records = a.record_line("secure.test") + &b.record_line("other.test");
    records += &c.record_line("plain.test");
    // bogus.test publishes A's record, but its zone does not validate.
    records += &a.record_line("bogus.test");
    let tree = KnotTree::start(&records);
    for s in [&a, &b, &c] {
        s.write_config(Some(&tree));
    }
    let gw_a = a.start();
    let gw_b = b.start();
    let _gw_c = c.start();

    // TLS 1.2 with the one DMTP suite, and TLS 1.3; the banner announces DMTPv1.
    let (good, text) = python(b.dmtp, "1.2", "dx.other.test", &["banner"]);
    assert!(good, "{text}");
    assert!(text.contains("DMTPv1"), "{text}");
    assert!(
        text.contains("TLSv1.2 ECDHE-RSA-AES256-GCM-SHA384"),
        "{text}"
    );
    let (good, text) = python(b.dmtp, "1.3", "dx.other.test", &["banner"]);
    assert!(good && text.contains("TLSv1.3"), "{text}");
    let s_client = Command::new(tool("openssl"))
        .args([
            "s_client",
            "-tls1_2",
            "-cipher",
            "ECDHE-RSA-AES256-GCM-SHA384",
            "-connect",
        ])
        .arg(b.dmtp.to_string())
        .arg("-quiet")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let banner = String::from_utf8_lossy(&s_client.stdout);
    assert!(
        banner.starts_with("220 ") && banner.contains("DMTPv1"),
        "{banner}"
    );

    // SGNT, VRFY, HIST from the independent client.
    let b_org = b.org_signet();
    let (good, text) = python(b.dmtp, "1.3", "dx.other.test", &["sgnt", "other.test"]);
    assert!(good, "{text}");
    assert_eq!(
        Signet::from_base64_line(text.trim()).unwrap(),
        b_org,
        "SGNT serves the org signet"
    );
    let bob1 = Signet::parse_any(&std::fs::read(b.path("users/bob/1.signet")).unwrap()).unwrap();
    let fp1 = bob1.crypto_fingerprint().to_string();
    let (good, text) = python(b.dmtp, "1.3", "x", &["vrfy", "bob@other.test", &fp1]);
    assert!(good && text.contains("CURRENT"), "{text}");
    ok(&b.cli(&["users", "rotate", "bob@other.test"]));
    let bob2 = Signet::parse_any(&std::fs::read(b.path("users/bob/2.signet")).unwrap()).unwrap();
    let (good, text) = python(b.dmtp, "1.3", "x", &["vrfy", "bob@other.test", &fp1]);
    assert!(
        good && text.contains(&format!("UPDATE {}", bob2.crypto_fingerprint())),
        "{text}"
    );
    let (good, text) = python(b.dmtp, "1.3", "x", &["hist", "bob@other.test"]);
    assert!(good, "{text}");
    let chain: Vec<Signet> = text
        .lines()
        .map(|l| Signet::from_base64_line(l).unwrap())
        .collect();
    assert_eq!(chain, vec![bob1.clone(), bob2]);
    let (good, text) = python(b.dmtp, "1.3", "x", &["sgnt", "nobody@other.test"]);
    assert!(!good && text.contains("510"), "{text}");

    // A transfer: sealed by A's tools, sent to B; B fetches A's org signet from A over DMTP
    // (found through the DNSSEC-secure _dx record) before it says 250.
    let a_fp = a.org_signet().crypto_fingerprint().to_string();
    let b_fp = b_org.crypto_fingerprint().to_string();
    let sealed = seal(&a, &b, a.dir.path());
    let before = queued(&gw_b).len();
    let send = |origin: &str, ofp: &str, file: &Path| {
        python(
            b.dmtp,
            "1.2",
            "dx.other.test",
            &[
                "send",
                origin,
                ofp,
                "other.test",
                &b_fp,
                file.to_str().unwrap(),
            ],
        )
    };
    let (good, text) = send("secure.test", &a_fp, &sealed);
    assert!(good, "{text}\nB's log:\n{}", gw_b.log_text());
    let txid = text
        .trim()
        .rsplit_once('[')
        .map(|(_, t)| t.trim_end_matches(']').to_owned())
        .expect("250 OK [txid]");
    let list = queued(&gw_b);
    assert_eq!(list.len(), before + 1);
    let stored = list
        .iter()
        .find(|m| m.to_string().contains(&txid))
        .unwrap_or_else(|| panic!("txid {txid} is the queue id: {list:?}"));
    assert!(stored.to_string().contains("bob@other.test"), "{stored}");
    // B asked A: A's DMTP served SGNT secure.test.
    let a_metrics = http_get(gw_b.admin, "/metrics").unwrap().1;
    assert!(
        a_metrics.contains("dimegate_signet_lookups_total{kind=\"org\",result=\"found\"} 1"),
        "{a_metrics}"
    );

    // The same message again: the origin signet now comes from B's cache.
    let (good, text) = send("secure.test", &a_fp, &sealed);
    assert!(good, "{text}");
    assert!(
        http_get(gw_b.admin, "/metrics")
            .unwrap()
            .1
            .contains("dimegate_signet_cache_hits_total 1")
    );

    // Refusals, each leaving nothing in the queue.
    let count = queued(&gw_b).len();
    // MAIL names a fingerprint that is not the origin's org signet: 575.
    let (good, text) = send("secure.test", &b_fp, &sealed);
    assert!(!good && text.contains("575"), "{text}");
    // A flipped byte in the middle (a chunk the origin signatures cover): refused.
    let mut bytes = std::fs::read(&sealed).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0x55;
    let tampered = a.dir.path().join("tampered.dmime");
    std::fs::write(&tampered, &bytes).unwrap();
    let (good, text) = send("secure.test", &a_fp, &tampered);
    assert!(
        !good && (text.contains("578") || text.contains("451") || text.contains("576")),
        "{text}"
    );
    // An origin in a bogus zone: its signet cannot be had now (470), and nothing is downgraded.
    let (good, text) = send("bogus.test", &a_fp, &sealed);
    assert!(!good && text.contains("470"), "{text}");
    // An origin in an unsigned zone pinning a self-signed certificate: B refuses the DX's
    // certificate, so the origin signet is unavailable.
    let c_fp = c.org_signet().crypto_fingerprint().to_string();
    let (good, text) = send("plain.test", &c_fp, &sealed);
    assert!(!good && text.contains("470"), "{text}");
    assert!(
        gw_b.log_text().contains("not DNSSEC-secure"),
        "the log says why: {}",
        gw_b.log_text()
    );
    assert_eq!(queued(&gw_b).len(), count, "no half-stored message");
    drop(gw_a);
}
