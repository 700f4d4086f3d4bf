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
    /// More served domains (after `domain`).
    extra_domains: Vec<&'static str>,

    dir: tempfile::TempDir,
    config: PathBuf,
    smtp: SocketAddr,
    admin: SocketAddr,
    dmtp: SocketAddr,
}

impl Side {
    /// Every side listens on the same two ports on its own address, so that one
    /// `connect_port` and one `dual_mode_port` reach all of them.
    fn new(domain: &'static str, ip: &'static str, ports: (u16, u16)) -> Side {
        Side::serving(domain, &[], ip, ports)
    }

    fn serving(
        domain: &'static str,
        extra_domains: &[&'static str],
        ip: &'static str,
        (dmtp_port, smtp_port): (u16, u16),
    ) -> Side {
        let dir = common::tempdir();
        let config = dir.path().join("dimegate.toml");
        let side = Side {
            domain,
            extra_domains: extra_domains.to_vec(),
            smtp: format!("{ip}:{smtp_port}").parse().unwrap(),
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
        self.write_config_with(dns, "");
    }

    /// The configuration with `tail` (whole sections) at its end.
    fn write_config_with(&self, dns: Option<&KnotTree>, tail: &str) {
        let dns = match dns {
            Some(t) => format!(
                "[dns]\nservers = [\"{}\"]\ntimeout = \"2s\"\ntrust_anchor = {:?}\n",
                t.addr,
                t.trust_anchor()
            ),
            None => "[dns]\nservers = [\"127.0.0.1:9\"]\ntimeout = \"1s\"\n".into(),
        };
        let extra: String = self
            .extra_domains
            .iter()
            .map(|d| format!("[[domain]]\nname = \"{d}\"\n"))
            .collect();
        let text = format!(
            "data_dir = {:?}\n[[domain]]\nname = \"{d}\"\n{extra}[smtp]\nlisten = \"{}\"\nhostname = \"mx.{d}\"\n[admin]\nlisten = \"{}\"\n[dmtp]\nlisten = \"{}\"\ndx = [\"dx.{d}\"]\nconnect_port = {}\ndual_mode_port = {}\n{dns}",
            self.data(),
            self.smtp,
            self.admin,
            self.dmtp,
            self.dmtp.port(),
            self.smtp.port(),
            d = self.domain,
        );
        let text = format!("{text}{tail}");
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
        self.record_line_for(self.domain, zone, "_dx")
    }

    /// `record DOMAIN` as a records line for `owner` in `zone`.
    fn record_line_for(&self, domain: &str, zone: &str, owner: &str) -> String {
        let out = ok(&self.cli(&["record", domain]));
        let rdata = out
            .trim()
            .split_once(" IN TXT ")
            .map(|(_, r)| r.to_owned())
            .expect("record line");
        format!("{zone}. {owner} IN TXT {rdata}\n")
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

/// `text` without ANSI colour sequences (the gateway's log colours its fields).
fn plain(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
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
    let ports = (free_port(), free_port());
    let a = Side::new("secure.test", "127.0.0.2", ports);
    // B also serves dual.other.test, whose record names no DX: it is reached through its MX
    // (mx.other.test, B) in dual mode on the SMTP port.
    let b = Side::serving("other.test", &["dual.other.test"], "127.0.0.3", ports);
    // A third organization in the unsigned zone, pinning its self-signed certificate: without
    // DNSSEC the pin proves nothing, so nobody may trust it.
    let c = Side::new("plain.test", "127.0.0.4", ports);
    ok(&a.cli(&["users", "add", "alice@secure.test"]));
    ok(&b.cli(&["users", "add", "bob@other.test"]));
    let mut records = a.record_line("secure.test") + &b.record_line("other.test");
    records += &c.record_line("plain.test");
    let dual_record = b.record_line_for("dual.other.test", "other.test", "_dx.dual");
    assert!(dual_record.contains(" dx=dx.other.test"), "{dual_record}");
    records += &dual_record.replace(" dx=dx.other.test", "");
    records += "other.test. dual IN MX 10 mx.other.test.\n";
    // bogus.test publishes A's record, but its zone does not validate.
    records += &a.record_line("bogus.test");
    let tree = KnotTree::start(&records);
    for s in [&a, &b, &c] {
        s.write_config(Some(&tree));
    }
    let gw_a = a.start();
    let mut gw_b = b.start();
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
    // -quiet implies -ign_eof: s_client holds the connection open after its stdin ends, so it
    // says QUIT (-crlf: as CRLF, which DMTP requires) and the server's 221 and close end it.
    // Waiting for the server's idle timeout instead cost this test five minutes.
    let mut s_client = Command::new(tool("openssl"))
        .args([
            "s_client",
            "-tls1_2",
            "-cipher",
            "ECDHE-RSA-AES256-GCM-SHA384",
            "-crlf",
            "-quiet",
            "-connect",
        ])
        .arg(b.dmtp.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = s_client.stdin.take().unwrap();
        stdin.write_all(b"QUIT\n").unwrap();
        // Dropped here: s_client ignores the EOF (-quiet) and waits for the server to close.
    }
    let s_client = s_client.wait_with_output().unwrap();
    let banner = String::from_utf8_lossy(&s_client.stdout);
    assert!(
        banner.starts_with("220 ") && banner.contains("DMTPv1") && banner.contains("\n221 "),
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
    assert_eq!(chain, vec![bob1.clone(), bob2.clone()]);
    let (good, text) = python(b.dmtp, "1.3", "x", &["sgnt", "nobody@other.test"]);
    assert!(!good && text.contains("510"), "{text}");

    // Dual mode on B's SMTP port (§10.1): the greeting carries DMTPv1, STARTTLS <host>
    // MODE=DMTPv1 gets 2xx, TLS with the DMTP certificate (1.2 with the one suite, or 1.3),
    // then 250 OK DMTPv1 and DMTP.
    let (good, text) = python(b.smtp, "dual1.2", "mx.other.test", &["banner"]);
    assert!(good, "{text}\nB's log:\n{}", gw_b.log_text());
    assert!(text.starts_with("250 OK DMTPv1"), "{text}");
    assert!(
        text.contains("TLSv1.2 ECDHE-RSA-AES256-GCM-SHA384"),
        "{text}"
    );
    let (good, text) = python(b.smtp, "dual1.3", "mx.other.test", &["sgnt", "other.test"]);
    assert!(good, "{text}");
    assert_eq!(Signet::from_base64_line(text.trim()).unwrap(), b_org);

    // `dimegate dmtp` (a dig for DIME) with A's configuration: DX found through DNSSEC, the
    // certificate pinned, the signet validated.
    let out = ok(&a.cli(&["dmtp", "sgnt", "other.test"]));
    assert!(out.contains("record: _dx.other.test (secure)"), "{out}");
    assert!(
        out.contains("certificate: tls= pin under a DNSSEC-secure record"),
        "{out}"
    );
    assert!(
        out.contains(&format!("fingerprint: {}", b_org.crypto_fingerprint())),
        "{out}"
    );
    assert!(
        out.contains("validity: valid to the id level under a POK of the _dx record"),
        "{out}"
    );
    assert!(out.contains("-----BEGIN"), "{out}");
    let bob2_fp = bob2.crypto_fingerprint().to_string();
    let out = ok(&a.cli(&["dmtp", "sgnt", "bob@other.test"]));
    assert!(out.contains(&format!("fingerprint: {bob2_fp}")), "{out}");
    assert!(
        out.contains("validity: valid to the id level under the org signet"),
        "{out}"
    );
    let out = ok(&a.cli(&["dmtp", "vrfy", "bob@other.test", "--fingerprint", &fp1]));
    assert!(out.contains(&format!("UPDATE {bob2_fp}")), "{out}");
    let out = ok(&a.cli(&["dmtp", "vrfy", "bob@other.test"]));
    assert!(out.contains("CURRENT"), "{out}");
    let out = ok(&a.cli(&["dmtp", "hist", "bob@other.test"]));
    assert!(
        out.contains(&format!(
            "1: {fp1} (valid to the id level under the org signet; first)"
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "2: {bob2_fp} (valid to the id level under the org signet; custody signed by the previous key)"
        )),
        "{out}"
    );
    // --server: straight to B's DMTP port, and to its SMTP port in dual mode.
    let out = ok(&a.cli(&[
        "dmtp",
        "sgnt",
        "other.test",
        "--server",
        &b.dmtp.to_string(),
    ]));
    assert!(
        out.contains(&format!("server: {} {}", b.dmtp.ip(), b.dmtp)),
        "{out}"
    );
    let out = ok(&a.cli(&[
        "dmtp",
        "sgnt",
        "other.test",
        "--server",
        &b.smtp.to_string(),
        "--dual-mode",
    ]));
    assert!(
        out.contains("dual mode (SMTP STARTTLS MODE=DMTPv1)"),
        "{out}"
    );
    let out = a.cli(&["dmtp", "sgnt", "nobody@other.test"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("510"),
        "{out:?}"
    );

    // `dimegate lookup`: the whole chain.
    let out = ok(&a.cli(&["lookup", "bob@other.test"]));
    for want in [
        "record: _dx.other.test \"ver=1 pok=".to_owned(),
        "dnssec: secure".to_owned(),
        format!("target 1: dx.other.test:{} tls", b.dmtp.port()),
        format!("target 2: mx.other.test:{} dual-mode", b.smtp.port()),
        format!("dx chosen: dx.other.test {}", b.dmtp),
        "certificate: tls= pin under a DNSSEC-secure record".to_owned(),
        "org signet cache: miss (fetched)".to_owned(),
        format!("org signet: {} (other.test)", b_org.crypto_fingerprint()),
        format!("user signet: {bob2_fp} (bob@other.test)"),
    ] {
        assert!(out.contains(&want), "{want:?} in:\n{out}");
    }
    // Our own discovery in dual mode: dual.other.test's record names no DX, so its MX
    // (mx.other.test = B) is asked on [dmtp] dual_mode_port.
    let dual_org = Signet::parse_any(
        &std::fs::read(b.data().join("dime/dual.other.test/org.signet")).unwrap(),
    )
    .unwrap();
    let out = ok(&a.cli(&["lookup", "dual.other.test"]));
    for want in [
        format!("target 1: mx.other.test:{} dual-mode", b.smtp.port()),
        format!("dx chosen: mx.other.test {}", b.smtp),
        "(dual mode (SMTP STARTTLS MODE=DMTPv1))".to_owned(),
        "certificate: tls= pin under a DNSSEC-secure record".to_owned(),
        format!(
            "org signet: {} (dual.other.test)",
            dual_org.crypto_fingerprint()
        ),
    ] {
        assert!(out.contains(&want), "{want:?} in:\n{out}");
    }
    let out = a.cli(&["lookup", "bogus.test"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("dnssec: bogus"),
        "{out:?}"
    );
    let out = a.cli(&["lookup", "plain.test"]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("dnssec: insecure") && text.contains("not DNSSEC-secure"),
        "{text}"
    );

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
    let txid_of = |text: &str| {
        text.trim()
            .rsplit_once('[')
            .map(|(_, t)| t.trim_end_matches(']').to_owned())
            .expect("250 OK [txid]")
    };
    let (good, text) = send("secure.test", &a_fp, &sealed);
    assert!(good, "{text}\nB's log:\n{}", gw_b.log_text());
    let txid = txid_of(&text);
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

    // The same sealed bytes again: an origin retrying a transfer whose 2xx it never heard (A
    // keeps each sealed copy until it settles, so its retries are identical). B verifies it
    // (the origin signet now from its cache) and answers with the first txid; nothing new is
    // queued.
    let (good, text) = send("secure.test", &a_fp, &sealed);
    assert!(good, "{text}");
    assert_eq!(txid_of(&text), txid, "a retry gets the first txid: {text}");
    assert_eq!(
        queued(&gw_b).len(),
        before + 1,
        "a retry is not queued again"
    );
    assert!(
        plain(&gw_b.log_text()).contains(&format!(
            "DMTP transfer already queued: a retry, answered with its first txid queue_id={txid}"
        )),
        "{}",
        gw_b.log_text()
    );
    // And once more in dual mode, on the SMTP port: the same transfer, the same answer.
    let (good, text) = python(
        b.smtp,
        "dual1.3",
        "mx.other.test",
        &[
            "send",
            "secure.test",
            &a_fp,
            "other.test",
            &b_fp,
            sealed.to_str().unwrap(),
        ],
    );
    assert!(good && text.starts_with("250"), "{text}");
    assert_eq!(txid_of(&text), txid, "{text}");
    // A new seal of the same mail is a new message (fresh keys): queued.
    let other_dir = common::tempdir();
    let resealed = seal(&a, &b, other_dir.path());
    let (good, text) = send("secure.test", &a_fp, &resealed);
    assert!(good, "{text}");
    assert_ne!(txid_of(&text), txid, "{text}");
    assert_eq!(queued(&gw_b).len(), before + 2);
    assert!(
        http_get(gw_b.admin, "/metrics")
            .unwrap()
            .1
            .contains("dimegate_signet_cache_hits_total 3")
    );

    // The store owns the signet cache: after a restart B still knows A's org signet, and a
    // transfer from A is verified without a DMTP connection to A.
    let asked_by_b = || {
        gw_a.log_text()
            .lines()
            .filter(|l| l.contains("DMTP connection accepted"))
            .count()
    };
    let asked_before = asked_by_b();
    // Only B's resolver connects to A's DMTP port in this test.
    assert!(asked_before >= 1, "B asked A: {}", gw_a.log_text());
    // Restarted with room for one more message: [queue] max_messages applies to DMTP too.
    let room = queued(&gw_b).len() + 1;
    b.write_config_with(Some(&tree), &format!("[queue]\nmax_messages = {room}\n"));
    assert!(gw_b.stop().success());
    gw_b.spawn();
    assert!(
        plain(&gw_b.log_text()).contains("signet cache warmed from the store warmed=1"),
        "{}",
        gw_b.log_text()
    );
    // B remembers accepted transfers across a restart (the table is in the store): the first
    // one is still answered with its txid and not stored again.
    let (good, text) = send("secure.test", &a_fp, &sealed);
    assert!(good, "{text}\nB's log:\n{}", gw_b.log_text());
    assert_eq!(txid_of(&text), txid, "{text}");
    assert_eq!(queued(&gw_b).len(), room - 1);
    let third_dir = common::tempdir();
    let third = seal(&a, &b, third_dir.path());
    let (good, text) = send("secure.test", &a_fp, &third);
    assert!(good, "{text}\nB's log:\n{}", gw_b.log_text());
    let m = gw_b.metrics();
    assert!(m.contains("dimegate_signet_cache_hits_total 2"), "{m}");
    assert!(
        !m.contains("dimegate_signet_lookups_total{kind=\"org\""),
        "{m}"
    );
    assert_eq!(asked_by_b(), asked_before, "no DMTP connection from B to A");
    assert_eq!(queued(&gw_b).len(), room);
    let fourth_dir = common::tempdir();
    let fourth = seal(&a, &b, fourth_dir.path());
    let (good, text) = send("secure.test", &a_fp, &fourth);
    assert!(
        !good && text.contains("431 destination limits exceeded"),
        "{text}"
    );
    assert_eq!(queued(&gw_b).len(), room, "nothing stored over the limit");

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
