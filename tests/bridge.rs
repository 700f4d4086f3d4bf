//! The bridge end to end: a legacy SMTP client hands mail to gateway A (secure.test, 127.0.0.2),
//! which finds other.test's `_dx` in a DNSSEC-signed Knot tree, wraps the mail for the recipient
//! and sends it over DMTP, through a recording TCP tap, to gateway B (other.test, 127.0.0.3);
//! B verifies, stores, unwraps and delivers to its backend, an smtp-sink. The tap's bytes and
//! the delivered mail are the evidence: what crossed the wire, and what arrived.

mod common;

use common::{Gateway, KnotTree, Postfix, Sink, bin, free_port, smtp_send, wait_until};
use dimegate::bridge::Buckets;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A TCP tap on `listen` in front of `upstream`: records every byte each side sent, per
/// connection.
/// Per connection: what the client sent, what the server sent.
type Sessions = Arc<Mutex<Vec<(Vec<u8>, Vec<u8>)>>>;

struct Tap {
    sessions: Sessions,
    /// While set, what the server sends is dropped once the client has sent
    /// [`WITHHOLD_AFTER`] bytes since it was set: the client never hears the reply to a message.
    withhold: Arc<AtomicBool>,
    sent_since_withhold: Arc<AtomicUsize>,
    /// Both sockets of every connection, for [`Tap::cut`].
    open: Arc<Mutex<Vec<TcpStream>>>,
    /// Connections numbered below this are cut: the next bytes their client sends close them
    /// both ways, unforwarded (a peer that went away without a word, seen only when used).
    cut_below: Arc<std::sync::atomic::AtomicUsize>,
}

/// More than a transaction's commands, less than a sealed message's smallest bucket (4 KiB).
const WITHHOLD_AFTER: usize = 3000;

impl Tap {
    fn start(listen: SocketAddr, upstream: SocketAddr) -> Tap {
        let listener = TcpListener::bind(listen).expect("bind tap");
        let sessions: Sessions = Arc::default();
        let record = Arc::clone(&sessions);
        let withhold = Arc::new(AtomicBool::new(false));
        let sent_since_withhold = Arc::new(AtomicUsize::new(0));
        let open: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (withhold_, sent_, open_) = (
            Arc::clone(&withhold),
            Arc::clone(&sent_since_withhold),
            Arc::clone(&open),
        );
        let cut_below = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let cut = Arc::clone(&cut_below);
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let Ok(server) = TcpStream::connect(upstream) else {
                    continue;
                };
                {
                    let mut open = open_.lock().unwrap();
                    open.push(client.try_clone().unwrap());
                    open.push(server.try_clone().unwrap());
                }
                let slot = {
                    let mut s = record.lock().unwrap();
                    s.push((Vec::new(), Vec::new()));
                    s.len() - 1
                };
                for (mut from, mut to, upstream_side) in [
                    (
                        client.try_clone().unwrap(),
                        server.try_clone().unwrap(),
                        true,
                    ),
                    (server, client, false),
                ] {
                    let record = Arc::clone(&record);
                    let (withhold, sent) = (Arc::clone(&withhold_), Arc::clone(&sent_));
                    let cut = Arc::clone(&cut);
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 65536];
                        while let Ok(n) = from.read(&mut buf) {
                            if n == 0 {
                                break;
                            }
                            if upstream_side && slot < cut.load(Ordering::SeqCst) {
                                let _ = from.shutdown(std::net::Shutdown::Both);
                                break;
                            }
                            let held = withhold.load(Ordering::SeqCst);
                            if upstream_side && held {
                                sent.fetch_add(n, Ordering::SeqCst);
                            }
                            let drop_it = !upstream_side
                                && held
                                && sent.load(Ordering::SeqCst) >= WITHHOLD_AFTER;
                            if !drop_it && to.write_all(&buf[..n]).is_err() {
                                break;
                            }
                            let mut s = record.lock().unwrap();
                            let (up, down) = &mut s[slot];
                            if upstream_side { up } else { down }.extend_from_slice(&buf[..n]);
                        }
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        Tap {
            sessions,
            withhold,
            sent_since_withhold,
            open,
            cut_below,
        }
    }

    /// Cuts every connection open now without a word (see [`Tap::cut_below`]); new ones pass.
    fn cut_silently(&self) {
        let n = self.sessions.lock().unwrap().len();
        self.cut_below.store(n, Ordering::SeqCst);
    }

    /// From now on the client does not hear the server's reply to a message (see
    /// [`Tap::withhold`]).
    fn withhold_replies(&self) {
        self.sent_since_withhold.store(0, Ordering::SeqCst);
        self.withhold.store(true, Ordering::SeqCst);
    }

    /// Closes every connection so far, both ways, and forwards everything again.
    fn cut(&self) {
        for stream in self.open.lock().unwrap().drain(..) {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
        self.withhold.store(false, Ordering::SeqCst);
    }

    /// Every byte of every connection, both ways.
    fn all(&self) -> Vec<u8> {
        let s = self.sessions.lock().unwrap();
        s.iter()
            .flat_map(|(a, b)| a.iter().chain(b))
            .copied()
            .collect()
    }

    /// Bytes the client side sent, per connection.
    fn sent(&self) -> Vec<usize> {
        self.sessions
            .lock()
            .unwrap()
            .iter()
            .map(|(a, _)| a.len())
            .collect()
    }
}

struct Side {
    domain: &'static str,
    dir: tempfile::TempDir,
    config: PathBuf,
    smtp: SocketAddr,
    admin: SocketAddr,
    dmtp: SocketAddr,
}

impl Side {
    fn new(domain: &'static str, ip: &str, dmtp_port: u16) -> Side {
        let dir = common::tempdir();
        let config = dir.path().join("dimegate.toml");
        Side {
            domain,
            smtp: format!("{ip}:{}", free_port()).parse().unwrap(),
            admin: format!("127.0.0.1:{}", free_port()).parse().unwrap(),
            dmtp: format!("{ip}:{dmtp_port}").parse().unwrap(),
            dir,
            config,
        }
    }

    fn write_config(&self, dns: &str, connect_port: u16, extra: &str) {
        let text = format!(
            "data_dir = {:?}\n{extra}\n[[domain]]\nname = \"{d}\"\n[smtp]\nlisten = \"{}\"\nhostname = \"mx.{d}\"\n[admin]\nlisten = \"{}\"\n[dmtp]\nlisten = \"{}\"\ndx = [\"dx.{d}\"]\nconnect_port = {connect_port}\n{dns}",
            self.dir.path().join("data"),
            self.smtp,
            self.admin,
            self.dmtp,
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

    fn record_line(&self) -> String {
        let out = ok(&self.cli(&["record", self.domain]));
        let rdata = out
            .trim()
            .split_once(" IN TXT ")
            .map(|(_, r)| r.to_owned())
            .expect("record line");
        format!("{}. _dx IN TXT {rdata}\n", self.domain)
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir
            .path()
            .join(format!("data/dime/{}/{rel}", self.domain))
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

fn mail(to: &str, subject: &str, body: &str) -> String {
    format!(
        "Date: Tue, 01 Dec 2026 12:00:00 +0000\r\nFrom: Alice <alice@secure.test>\r\nTo: <{to}>\r\nSubject: {subject}\r\nMessage-ID: <m{}.{}@secure.test>\r\n\r\n{body}",
        subject.len(),
        body.len()
    )
}

/// The sizes A logged for the copies it sealed.
fn wrapped_sizes(gw: &Gateway) -> Vec<usize> {
    gw.log_text()
        .lines()
        .filter(|l| l.contains("wrapped"))
        .filter_map(|l| {
            let (_, rest) = l.split_once("size=")?;
            rest.split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
        .collect()
}

fn flow_count(gw: &Gateway, flow: &str) -> f64 {
    common::metric(
        &gw.metrics(),
        &format!("dimegate_route_decisions_total{{flow=\"{flow}\"}}"),
    )
    .unwrap_or(0.0)
}

/// Gateway A (secure.test) and B (other.test) with their `_dx` records in a DNSSEC-signed Knot
/// tree, alice@secure.test and bob@other.test as trustful users, and A reaching B's DX through a
/// tap (B reaches A's DX directly, for A's org signet). `more_b` adds B's other users before the
/// records are published; `a_extra`/`b_extra` are appended to each configuration.
struct Pair {
    a: Side,
    b: Side,
    tree: KnotTree,
    tap: Tap,
    /// With [`Pair::with_back_tap`]: the tap B reaches A's DX through.
    back: Option<Tap>,
}

impl Pair {
    fn new(more_b: impl FnOnce(&Side), a_extra: &str, b_extra: &str) -> Pair {
        Pair::build(more_b, a_extra, b_extra, false, "")
    }

    /// As [`Pair::new`], with `a_dmtp` added to A's `[dmtp]` section.
    fn with(more_b: impl FnOnce(&Side), a_extra: &str, b_extra: &str, a_dmtp: &str) -> Pair {
        Pair::build(more_b, a_extra, b_extra, false, a_dmtp)
    }

    /// As [`Pair::new`], and B reaches A through a tap of its own too.
    fn with_back_tap(more_b: impl FnOnce(&Side), a_extra: &str, b_extra: &str) -> Pair {
        Pair::build(more_b, a_extra, b_extra, true, "")
    }

    fn build(
        more_b: impl FnOnce(&Side),
        a_extra: &str,
        b_extra: &str,
        back_tap: bool,
        a_dmtp: &str,
    ) -> Pair {
        let port = free_port();
        let tap_port = free_port();
        let a = Side::new("secure.test", "127.0.0.2", port);
        let b = Side::new("other.test", "127.0.0.3", port);
        // Identities first (`users add` creates the org on first use), then the records.
        a.write_config("", port, "");
        b.write_config("", port, "");
        ok(&a.cli(&["users", "add", "alice@secure.test"]));
        ok(&b.cli(&["users", "add", "bob@other.test"]));
        more_b(&b);
        let tree = KnotTree::start(&(a.record_line() + &b.record_line()));
        let dns = format!(
            "[dns]\nservers = [\"{}\"]\ntimeout = \"2s\"\ntrust_anchor = {:?}\n",
            tree.addr,
            tree.trust_anchor()
        );
        let tap = Tap::start(format!("127.0.0.3:{tap_port}").parse().unwrap(), b.dmtp);
        let (back, b_connect) = if back_tap {
            let back_port = free_port();
            let back = Tap::start(format!("127.0.0.2:{back_port}").parse().unwrap(), a.dmtp);
            (Some(back), back_port)
        } else {
            (None, port)
        };
        let fast_retry =
            "[queue]\nretry = [\"1s\"]\njitter_percent = 0\npoll_interval = \"200ms\"\n";
        a.write_config(
            &format!("{a_dmtp}{dns}"),
            tap_port,
            &format!("{a_extra}{fast_retry}"),
        );
        b.write_config(&dns, b_connect, &format!("{b_extra}{fast_retry}"));
        Pair {
            a,
            b,
            tree,
            tap,
            back,
        }
    }
}

#[test]
fn legacy_mail_crosses_two_gateways_sealed_and_arrives_as_sent() {
    let relay_sink = Sink::start(&[]);
    let backend = Sink::start(&[]);
    let a_mailbox = Sink::start(&[]);
    // Each DMTP session on its own connection (no pooling), so the tap's byte count per
    // connection isolates each transfer (the sizes checked below); pooling has its own test.
    let Pair {
        a,
        b,
        tap,
        tree: _tree,
        ..
    } = Pair::with(
        |b| {
            ok(&b.cli(&["users", "add", "dave@other.test"]));
            ok(&b.cli(&["users", "add", "carol@other.test", "--mode", "cautious"]));
            ok(&Command::new(bin())
                .args(["keys", "user", "carol@other.test", "--org-key"])
                .arg(b.path("org.key"))
                .arg("--out")
                .arg(b.dir.path().join("carol-keys"))
                .output()
                .unwrap());
            let signet = b.dir.path().join("carol-keys/carol@other.test.signet");
            ok(&b.cli(&[
                "users",
                "import-signet",
                "carol@other.test",
                signet.to_str().unwrap(),
            ]));
        },
        &format!(
            "[relay]\nnetworks = [\"127.0.0.0/8\"]\nsmarthost = \"{}\"\nsmarthost_tls = \"off\"\n\
             [[destination]]\ndomain = \"strict.other.test\"\ndime = \"require\"\n\
             [backend]\naddress = \"{}\"\nstarttls = \"off\"\n",
            relay_sink.addr, a_mailbox.addr
        ),
        &format!(
            "[backend]\naddress = \"{}\"\nstarttls = \"off\"\n",
            backend.addr
        ),
        "pool_sessions = 0\n",
    );
    let carol_keys = b.dir.path().join("carol-keys");
    let gw_a = a.start();
    let gw_b = b.start();

    // 1. Wrap and unwrap: two messages whose sizes differ but fall in one bucket.
    let secret_subject = "Quarterly-figures-zebra";
    let secret_body = "The vault code is 1234-orchid.\r\n";
    let first = mail("bob@other.test", secret_subject, secret_body);
    let longer = mail(
        "dave@other.test",
        "Second-note-walrus",
        &"A few more words.\r\n".repeat(4),
    );
    smtp_send(gw_a.smtp, "alice@secure.test", &["bob@other.test"], &first).expect("accepted");
    smtp_send(
        gw_a.smtp,
        "alice@secure.test",
        &["dave@other.test"],
        &longer,
    )
    .expect("accepted");
    wait_until(
        Duration::from_secs(60),
        || backend.messages().len() >= 2,
        || format!("A:\n{}\nB:\n{}", gw_a.log_text(), gw_b.log_text()),
    );
    let delivered = backend.messages();
    let to_bob = delivered
        .iter()
        .find(|m| m.contains(secret_subject))
        .expect("bob's mail");
    // The delivered mail is the sent one, with our trace on top.
    for line in first.split("\r\n").filter(|l| !l.is_empty()) {
        assert!(to_bob.contains(line), "{line:?} missing from\n{to_bob}");
    }
    assert!(
        to_bob.contains("Authentication-Results: mx.other.test; dime=pass"),
        "{to_bob}"
    );
    assert!(to_bob.contains("with DMTP"), "{to_bob}");
    // How Alice's mail authenticated at A (SPF, DKIM, DMARC, sealed in with the message).
    assert!(
        to_bob.contains("Authentication-Results: mx.secure.test; spf="),
        "{to_bob}"
    );
    assert!(to_bob.contains("dmarc="), "{to_bob}");
    assert_eq!(flow_count(&gw_a, "wrap"), 2.0);
    assert_eq!(flow_count(&gw_b, "unwrap"), 2.0);

    // What the wire between A and B carried: TLS, with none of the mail in it, and two
    // transfers whose sizes say only their bucket.
    let wire = tap.all();
    assert!(!wire.is_empty(), "the tap saw the transfers");
    for secret in [
        "alice",
        "bob",
        "dave",
        secret_subject,
        "vault",
        "orchid",
        "walrus",
        "Alice",
        "secure.test>",
        "longer body",
    ] {
        assert!(
            !wire.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "{secret:?} visible on the wire"
        );
    }
    let sizes = wrapped_sizes(&gw_a);
    assert_eq!(sizes.len(), 2, "{sizes:?} {}", gw_a.log_text());
    let buckets = Buckets::default();
    for s in &sizes {
        assert!(buckets.is_bucket(*s), "{s} is not a bucket size");
    }
    assert_eq!(sizes[0], sizes[1], "both messages fit one bucket");
    // Signet lookups are sessions of their own, a few hundred bytes; the two transfers differ
    // only by the digits of SIZE= and TLS framing.
    let sent = tap.sent();
    let transfers: Vec<usize> = sent.iter().copied().filter(|&n| n > sizes[0]).collect();
    assert_eq!(transfers.len(), 2, "{sent:?}");
    assert!(
        transfers[0].abs_diff(transfers[1]) < 64,
        "the transfers' sizes differ by more than framing: {sent:?}"
    );

    // 2. Protect at rest: legacy mail for cautious Carol reaches the backend sealed to her.
    smtp_send(
        gw_b.smtp,
        "someone@legacy.example",
        &["carol@other.test"],
        &mail(
            "carol@other.test",
            "Private-matter-heron",
            "Only for Carol.\r\n",
        ),
    )
    .expect("accepted");
    let protected = message_containing(
        &backend,
        "application/vnd.dime.dmime",
        Duration::from_secs(30),
        || gw_b.log_text(),
    );
    assert!(
        !protected.contains("heron") && !protected.contains("Only for Carol"),
        "{protected}"
    );
    let b64: String = protected
        .split("filename=\"message.dmime\"")
        .nth(1)
        .unwrap()
        .lines()
        .skip_while(|l| l.trim().is_empty())
        .take_while(|l| !l.starts_with("--"))
        .collect();
    use base64::Engine;
    let sealed = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .expect("base64 D/MIME");
    let mut open = Command::new(bin())
        .args(["message", "open", "--as", "recipient", "--key"])
        .arg(carol_keys.join("carol@other.test.key"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    open.stdin.take().unwrap().write_all(&sealed).unwrap();
    let opened = open.wait_with_output().unwrap();
    let opened_text = String::from_utf8_lossy(&opened.stdout);
    assert!(
        opened_text.contains("Only for Carol."),
        "carol's key opens it: {opened_text}{}",
        String::from_utf8_lossy(&opened.stderr)
    );

    // 3. Policy: no `_dx` (a secure denial) falls back to SMTP by default, and bounces where
    // DIME is required; a DIME domain that knows no such user falls back too.
    smtp_send(
        gw_a.smtp,
        "alice@secure.test",
        &[
            "erin@legacy.other.test",
            "frank@other.test",
            "gina@strict.other.test",
        ],
        &mail(
            "erin@legacy.other.test",
            "Legacy-path-otter",
            "Plain mail.\r\n",
        ),
    )
    .expect("accepted");
    wait_until(
        Duration::from_secs(30),
        || !relay_sink.messages().is_empty() && flow_count(&gw_a, "fail") >= 1.0,
        || format!("{}\n{:?}", gw_a.log_text(), relay_sink.dumps()),
    );
    let relayed = relay_sink.messages().join("\n");
    assert!(relayed.contains("erin@legacy.other.test"), "{relayed}");
    assert!(relayed.contains("frank@other.test"), "{relayed}");
    assert!(!relayed.contains("gina@"), "{relayed}");
    let log = gw_a.log_text();
    assert!(log.contains("publishes no _dx record"), "{log}");
    assert!(
        log.contains("strict.other.test's policy requires DIME"),
        "{log}"
    );
    // Alice hears why, with the DIME reason and 5.7.1.
    let dsn = message_containing(
        &a_mailbox,
        "gina@strict.other.test",
        Duration::from_secs(30),
        || gw_a.log_text(),
    );
    assert!(dsn.contains("Status: 5.7.1"), "{dsn}");
    assert!(dsn.contains("policy requires DIME"), "{dsn}");

    // 4. B down: A keeps the wrapped mail queued and delivers when B is back.
    let mut gw_b = gw_b;
    gw_b.stop();
    smtp_send(
        gw_a.smtp,
        "alice@secure.test",
        &["bob@other.test"],
        &mail("bob@other.test", "While-you-were-out-lynx", "Later.\r\n"),
    )
    .expect("accepted");
    wait_until(
        Duration::from_secs(30),
        || gw_a.log_text().contains("DIME DMTP session"),
        || gw_a.log_text(),
    );
    assert!(!backend.messages().iter().any(|m| m.contains("lynx")));
    let gw_b = b.start();
    wait_until(
        Duration::from_secs(60),
        || {
            backend
                .messages()
                .iter()
                .any(|m| m.contains("While-you-were-out-lynx"))
        },
        || format!("A:\n{}\nB:\n{}", gw_a.log_text(), gw_b.log_text()),
    );
}

/// The provider's chain as deployed: a Postfix relaying to A, B delivering to a Postfix that
/// stores into a Maildir. The mail in the Maildir is the sent one, byte for byte in its body.
/// And a domain whose `_dx` answer fails DNSSEC validation is held at A, never sent.
#[test]
fn postfix_to_postfix_through_both_gateways() {
    let mailbox = Postfix::start(|_| Vec::new());
    let pair = Pair::new(
        |_| {},
        "[relay]\nnetworks = [\"127.0.0.0/8\"]\n",
        &format!("[backend]\naddress = \"{}\"\n", mailbox.addr),
    );
    let gw_a = pair.a.start();
    let gw_b = pair.b.start();
    let sender = Postfix::start_relay(&format!("[{}]:{}", pair.a.smtp.ip(), pair.a.smtp.port()));
    let body =
        "Line one.\r\n..a line that starts with a dot\r\n\r\nLast line, 8-bit: caf\u{e9}.\r\n";
    let sent = mail("bob@other.test", "Through-Postfix-badger", body);
    smtp_send(sender.addr, "alice@secure.test", &["bob@other.test"], &sent).expect("accepted");
    let Some(stored) = mailbox.wait_for_message_containing("Through-Postfix-badger") else {
        panic!(
            "not delivered.\nsender:\n{}\nA:\n{}\nB:\n{}\nmailbox:\n{}",
            sender.maillog(),
            gw_a.log_text(),
            gw_b.log_text(),
            mailbox.maillog()
        );
    };
    // The Maildir stores LF line ends.
    let sent_lf = sent.replace("\r\n", "\n");
    let (sent_head, sent_body) = sent_lf.split_once("\n\n").unwrap();
    let (stored_head, stored_body) = stored.split_once("\n\n").unwrap();
    assert_eq!(stored_body, sent_body, "body bytes");
    for line in sent_head.lines() {
        assert!(
            stored_head.contains(line),
            "{line:?} missing from\n{stored_head}"
        );
    }
    assert!(stored_head.contains("dime=pass"), "{stored_head}");
    // Postfix's own trace from the sender's side travelled sealed and is there again.
    assert!(
        stored_head.matches("Received:").count() >= 3,
        "{stored_head}"
    );
    assert!(!pair.tap.all().is_empty());

    // bogus.test's answers fail validation: held at A with the reason, nothing sent anywhere.
    let before = pair.tap.sent().len();
    smtp_send(
        gw_a.smtp,
        "alice@secure.test",
        &["zed@bogus.test"],
        &mail("zed@bogus.test", "Forged-path-mole", "x\r\n"),
    )
    .expect("accepted");
    wait_until(
        Duration::from_secs(30),
        || gw_a.log_text().contains("failed DNSSEC validation"),
        || gw_a.log_text(),
    );
    let queued = gw_a.queue_json();
    let held = queued
        .iter()
        .find(|m| m.to_string().contains("zed@bogus.test"))
        .unwrap_or_else(|| panic!("held in A's queue: {queued:?}"));
    assert!(
        held.to_string().contains("failed DNSSEC validation"),
        "{held}"
    );
    assert_eq!(held["recipients"][0]["state"], "deferred", "{held}");
    assert_eq!(
        pair.tap.sent().len(),
        before,
        "no DMTP session for a bogus domain"
    );
}

/// Messages to one domain share pooled DMTP sessions (fewer sessions than messages, counted on
/// the wire by the tap and by A's metrics), and a pooled session the peer dropped loses nothing:
/// one cut silently (found dead only when used: the transfer goes again on a new session), and
/// all of them when B is killed and restarted.
#[test]
fn pooled_sessions_carry_many_messages_and_a_dead_one_loses_nothing() {
    let backend = Sink::start(&[]);
    let pair = Pair::new(
        |_| {},
        "[relay]\nnetworks = [\"127.0.0.0/8\"]\n",
        &format!(
            "[backend]\naddress = \"{}\"\nstarttls = \"off\"\n",
            backend.addr
        ),
    );
    let gw_a = pair.a.start();
    let mut gw_b = pair.b.start();
    let send = |range: std::ops::Range<usize>| {
        for i in range {
            let subject = format!("pooled-{i:03}");
            smtp_send(
                gw_a.smtp,
                "alice@secure.test",
                &["bob@other.test"],
                &mail("bob@other.test", &subject, "x\r\n"),
            )
            .expect("accepted");
        }
    };
    let arrived = || {
        let mut seen: Vec<String> = backend
            .messages()
            .iter()
            .filter_map(|m| {
                let at = m.find("Subject: pooled-")?;
                Some(m[at + 9..at + 19].to_owned())
            })
            .collect();
        seen.sort();
        seen.dedup();
        seen
    };
    let wait_for = |n: usize, gw_b: &Gateway| {
        wait_until(
            Duration::from_secs(60),
            || arrived().len() >= n,
            || {
                format!(
                    "{} of {n} arrived\nA:\n{}\nB:\n{}",
                    arrived().len(),
                    gw_a.log_text(),
                    gw_b.log_text()
                )
            },
        )
    };
    let sessions = |how: &str| {
        common::metric(
            &gw_a.metrics(),
            &format!("dimegate_dmtp_client_sessions_total{{how=\"{how}\"}}"),
        )
        .unwrap_or(0.0)
    };

    // 1. N messages, each sent once the one before arrived (so no two transfers overlap):
    // one connection carries them all, and the signet look-ups before the first.
    const N: usize = 12;
    for i in 0..N {
        send(i..i + 1);
        wait_for(i + 1, &gw_b);
    }
    let connections = pair.tap.sent().len();
    assert!(
        connections <= 2,
        "{N} messages (and their signet look-ups) took {connections} DMTP connections\nA:\n{}",
        gw_a.log_text()
    );
    let (new, reused) = (sessions("new"), sessions("reused"));
    assert_eq!(new, connections as f64, "A's count of new sessions");
    assert!(reused >= (N - connections) as f64, "reused {reused}");

    // 2. The idle sessions die without a word; the next transfer finds out at MAIL and goes
    // again on a new session, at once (no deferral, no bounce).
    pair.tap.cut_silently();
    send(N..N + 1);
    wait_for(N + 1, &gw_b);
    let retries =
        common::metric(&gw_a.metrics(), "dimegate_dmtp_client_pool_retries_total").unwrap_or(0.0);
    assert!(
        retries >= 1.0,
        "no resend on a new session:\n{}",
        gw_a.log_text()
    );
    assert!(
        pair.tap.sent().len() > connections,
        "a new connection after the cut"
    );
    assert!(
        !gw_a.log_text().contains("DMTP transfer refused"),
        "{}",
        gw_a.log_text()
    );

    // 3. B killed and restarted under the pool: its sessions are gone; nothing is lost.
    gw_b.kill9();
    gw_b.spawn();
    send(N + 1..2 * N);
    wait_for(2 * N, &gw_b);
    assert_eq!(arrived().len(), 2 * N);
    wait_until(
        Duration::from_secs(30),
        || gw_a.queue_json().is_empty(),
        || format!("A: {:?}", gw_a.queue_json()),
    );
    assert!(
        !gw_a.log_text().contains("DSN queued"),
        "{}",
        gw_a.log_text()
    );
}

/// One copy of a flood message as the backend received it: its subject (unique per message),
/// its Message-ID (unique per message, so a resend by the client would show as a new one) and the
/// queue id B gave it (`Received: ... with DMTP id <queue id>`, B's half of the DMTP txid).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Arrived {
    subject: String,
    message_id: String,
    b_queue_id: String,
}

fn header<'a>(message: &'a str, name: &str) -> Option<&'a str> {
    message
        .split("\r\n\r\n")
        .next()?
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .map(str::trim)
}

fn flood_copies(backend: &Sink) -> Vec<Arrived> {
    flood_copies_matching(backend, |s| s.starts_with("flood-"))
}

fn flood_copies_matching(backend: &Sink, wanted: impl Fn(&str) -> bool) -> Vec<Arrived> {
    backend
        .messages()
        .iter()
        .filter_map(|m| {
            let subject = header(m, "Subject: ").filter(|s| wanted(s))?;
            let (_, after) = m.split_once(" with DMTP id ")?;
            let b_queue_id = after.split(';').next()?.trim().to_owned();
            Some(Arrived {
                subject: subject.to_owned(),
                message_id: header(m, "Message-ID: ").unwrap_or_default().to_owned(),
                b_queue_id,
            })
        })
        .collect()
}

/// The numbers `name=N` on the lines of `log` that contain `what`, summed.
fn logged_sum(log: &str, what: &str, name: &str) -> u64 {
    log.lines()
        .filter(|l| l.contains(what))
        .filter_map(|l| {
            let (_, rest) = l.split_once(&format!("{name}="))?;
            rest.split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

/// kill -9 of either gateway while a flood of wrapped mail crosses: first the receiver, then the
/// sender. Every message the legacy client saw `250` for arrives, and none arrives twice except
/// inside the window SMTP leaves open (RFC 1047): B's backend said 250 and B was killed before it
/// recorded that. Such a copy is B delivering one queued message again (the same DMTP id in
/// both), and there are at most as many as B had deliveries in flight when it was killed (the
/// leases it released at restart). A copy under a second DMTP id would be a transfer B queued
/// twice: B's de-duplication table must answer A's retry of identical sealed bytes with the first
/// txid. The client never resends (a message without a 250 is dropped, not retried), and each
/// message has its own Subject and Message-ID, so no duplicate can be the client's.
#[test]
fn kill_9_of_either_gateway_during_a_flood_loses_nothing() {
    let backend = Sink::start(&[]);
    let pair = Pair::new(
        |_| {},
        "[relay]\nnetworks = [\"127.0.0.0/8\"]\n",
        &format!(
            "[backend]\naddress = \"{}\"\nstarttls = \"off\"\n",
            backend.addr
        ),
    );
    let mut gw_a = pair.a.start();
    let mut gw_b = pair.b.start();
    const N: usize = 80;
    let smtp = gw_a.smtp;
    // Only what A acknowledged is promised; a message refused while A is down is the client's,
    // and the client does not send it again.
    let flood = std::thread::spawn(move || {
        let mut acked = Vec::new();
        for i in 0..N {
            let subject = format!("flood-{i:03}");
            let text = format!(
                "Date: Tue, 01 Dec 2026 12:00:00 +0000\r\nFrom: Alice <alice@secure.test>\r\nTo: <bob@other.test>\r\nSubject: {subject}\r\nMessage-ID: <{subject}@secure.test>\r\n\r\nx\r\n"
            );
            match smtp_send(smtp, "alice@secure.test", &["bob@other.test"], &text) {
                Ok(_) => acked.push(subject),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
        acked
    });
    // B first, while it is storing transfers and delivering them; then A, once the flood crosses
    // again, while transfers B has accepted are in flight: A sends those again after its restart.
    wait_until(
        Duration::from_secs(60),
        || backend.messages().len() >= 5,
        || gw_b.log_text(),
    );
    gw_b.kill9();
    gw_b.spawn();
    let before_a = backend.messages().len();
    wait_until(
        Duration::from_secs(60),
        || backend.messages().len() >= before_a + 5,
        || format!("A:\n{}\nB:\n{}", gw_a.log_text(), gw_b.log_text()),
    );
    gw_a.kill9();
    gw_a.spawn();
    let acked = flood.join().unwrap();
    assert!(acked.len() >= N / 2, "the flood got going: {}", acked.len());
    let arrived = || {
        let mut subjects: Vec<String> = flood_copies(&backend)
            .into_iter()
            .map(|c| c.subject)
            .collect();
        subjects.sort();
        subjects.dedup();
        subjects
    };
    wait_until(
        Duration::from_secs(120),
        || {
            let arrived = arrived();
            acked.iter().all(|s| arrived.contains(s))
        },
        || {
            let arrived = arrived();
            let missing: Vec<&String> = acked.iter().filter(|s| !arrived.contains(s)).collect();
            format!(
                "missing {missing:?}\nA's queue: {:?}\nB's queue: {:?}\nA:\n{}\nB:\n{}",
                gw_a.queue_json(),
                gw_b.queue_json(),
                gw_a.log_text(),
                gw_b.log_text()
            )
        },
    );
    // Nothing left behind on either side once it settles.
    wait_until(
        Duration::from_secs(30),
        || gw_a.queue_json().is_empty() && gw_b.queue_json().is_empty(),
        || format!("A: {:?}\nB: {:?}", gw_a.queue_json(), gw_b.queue_json()),
    );
    let mut copies = flood_copies(&backend);
    copies.sort();
    let (log_a, log_b) = (gw_a.log_text(), gw_b.log_text());
    // Per message: its copies, and the distinct DMTP ids among them.
    let mut by_subject: std::collections::BTreeMap<&str, Vec<&Arrived>> = Default::default();
    for c in &copies {
        by_subject.entry(c.subject.as_str()).or_default().push(c);
    }
    let mut queued_twice = Vec::new();
    let mut delivered_again = 0;
    for (subject, list) in &by_subject {
        let mut ids: Vec<&str> = list.iter().map(|c| c.b_queue_id.as_str()).collect();
        ids.sort();
        ids.dedup();
        delivered_again += list.len() - ids.len();
        if ids.len() > 1 {
            // Evidence for the operator of the test: did A hear B's 250 for the first copy?
            let heard: Vec<bool> = ids
                .iter()
                .map(|id| log_a.contains(&format!("txid={id}")))
                .collect();
            queued_twice.push(format!(
                "{subject}: B queue ids {ids:?}, A logged their txid: {heard:?}"
            ));
        }
        let message_ids: std::collections::BTreeSet<&str> =
            list.iter().map(|c| c.message_id.as_str()).collect();
        assert_eq!(
            message_ids.len(),
            1,
            "{subject}: one Message-ID, the client never resends: {list:?}"
        );
    }
    let b_in_flight = logged_sum(
        &log_b,
        "released leases left by the previous run",
        "released",
    );
    let a_in_flight = logged_sum(
        &log_a,
        "released leases left by the previous run",
        "released",
    );
    let dedup_hits = log_b.matches("DMTP transfer already queued").count();
    eprintln!(
        "{} acknowledged; {} copies of {} messages; queued twice by B: {}; delivered again by B \
         (backend window): {delivered_again}; leases released at restart: B {b_in_flight}, A \
         {a_in_flight}; retried transfers B recognized: {dedup_hits}",
        acked.len(),
        copies.len(),
        by_subject.len(),
        queued_twice.len()
    );
    for line in &queued_twice {
        eprintln!("  {line}");
    }
    assert!(
        queued_twice.is_empty(),
        "B queued a retried transfer again:\n{}",
        queued_twice.join("\n")
    );
    assert!(
        delivered_again as u64 <= b_in_flight,
        "{delivered_again} copies delivered again by B, but B had only {b_in_flight} deliveries in flight at the kill"
    );
}

/// The one case the flood above can only hit by chance, made to happen: B stores a transfer and
/// its `2xx` never reaches A (the tap drops it, then cuts the connection). A retries with the
/// same sealed bytes, B answers with the first txid, and the backend gets the message once.
#[test]
fn a_transfer_whose_2xx_was_lost_is_retried_with_the_same_bytes_and_delivered_once() {
    let backend = Sink::start(&[]);
    let pair = Pair::new(
        |_| {},
        "[relay]\nnetworks = [\"127.0.0.0/8\"]\n",
        &format!(
            "[backend]\naddress = \"{}\"\nstarttls = \"off\"\n",
            backend.addr
        ),
    );
    let gw_a = pair.a.start();
    let gw_b = pair.b.start();
    // One message first, so that signets are cached and any connection A keeps is warm.
    let warm = mail("bob@other.test", "Warm-up-heron", "x\r\n");
    smtp_send(gw_a.smtp, "alice@secure.test", &["bob@other.test"], &warm).expect("accepted");
    wait_until(
        Duration::from_secs(60),
        || flood_copies_with(&backend, "Warm-up-heron").len() == 1,
        || format!("A:\n{}\nB:\n{}", gw_a.log_text(), gw_b.log_text()),
    );
    let stored = |gw: &Gateway| gw.log_text().matches("DMTP message stored").count();
    let stored_before = stored(&gw_b);

    pair.tap.withhold_replies();
    let text = mail("bob@other.test", "Lost-reply-osprey", "Once only.\r\n");
    smtp_send(gw_a.smtp, "alice@secure.test", &["bob@other.test"], &text).expect("accepted");
    wait_until(
        Duration::from_secs(60),
        || stored(&gw_b) > stored_before,
        || format!("A:\n{}\nB:\n{}", gw_a.log_text(), gw_b.log_text()),
    );
    // B has it on disk and has answered; A has not heard. The connection goes.
    pair.tap.cut();
    wait_until(
        Duration::from_secs(60),
        || gw_a.queue_json().is_empty() && gw_b.queue_json().is_empty(),
        || format!("A: {:?}\nB: {:?}", gw_a.queue_json(), gw_b.queue_json()),
    );
    let (log_a, log_b) = (gw_a.log_text(), gw_b.log_text());
    let first_txid = log_b
        .lines()
        .filter(|l| l.contains("DMTP message stored"))
        .nth(stored_before)
        .and_then(|l| l.split_once("queue_id=")?.1.split_whitespace().next())
        .map(str::to_owned)
        .expect("B logged the transfer it stored");
    assert!(
        log_b.contains(&format!(
            "DMTP transfer already queued: a retry, answered with its first txid queue_id={first_txid}"
        )),
        "{log_b}"
    );
    assert_eq!(stored(&gw_b), stored_before + 1, "B queued it once");
    assert!(
        log_a.contains("sending the copy sealed before again"),
        "A resent its kept copy, not a new seal: {log_a}"
    );
    assert!(log_a.contains(&format!("txid={first_txid}")), "{log_a}");
    assert_eq!(
        wrapped_sizes(&gw_a).len(),
        2,
        "sealed once per message: {log_a}"
    );
    // Give a second copy, if there were one, time to arrive.
    std::thread::sleep(Duration::from_secs(2));
    let copies = flood_copies_with(&backend, "Lost-reply-osprey");
    assert_eq!(copies.len(), 1, "{copies:?}");
    assert_eq!(copies[0].b_queue_id, first_txid);
}

/// Waits up to `timeout` for a message at `sink` containing `needle`, and returns it.
fn message_containing(
    sink: &Sink,
    needle: &str,
    timeout: Duration,
    what: impl Fn() -> String,
) -> String {
    wait_until(
        timeout,
        || sink.messages().iter().any(|m| m.contains(needle)),
        what,
    );
    sink.messages()
        .into_iter()
        .find(|m| m.contains(needle))
        .expect("seen above")
}

/// The copies of the message with `subject` the backend received.
fn flood_copies_with(backend: &Sink, subject: &str) -> Vec<Arrived> {
    flood_copies_matching(backend, |s| s == subject)
}

/// `dimegate message seal` as a DIME author's client: author-signed only, for submission.
/// `recipient` names the mailbox the destination chunk carries (the exit: a legacy address).
fn seal_submission(
    side: &Side,
    author_dir: &std::path::Path,
    destination_signet: &std::path::Path,
    recipient_signet: &std::path::Path,
    recipient: Option<&str>,
    mail: &str,
) -> Vec<u8> {
    let mut cmd = Command::new(bin());
    cmd.args(["message", "seal", "--author-key"])
        .arg(author_dir.join("1.key"))
        .arg("--author-signet")
        .arg(author_dir.join("1.signet"))
        .arg("--origin-signet")
        .arg(side.path("org.signet"))
        .arg("--destination-signet")
        .arg(destination_signet)
        .arg("--recipient-signet")
        .arg(recipient_signet);
    if let Some(r) = recipient {
        cmd.args(["--recipient", r]);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(mail.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "seal: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// `dimegate dmtp send` of `message` to `origin`'s DX, as a submission to `origin`. The client
/// runs with `client`'s configuration (its DNS and DMTP port); it holds no keys.
fn submit(client: &Side, origin: &Side, message: &[u8]) -> Output {
    let file = client
        .dir
        .path()
        .join(format!("submission-{}.dmime", rand_suffix()));
    std::fs::write(&file, message).unwrap();
    client.cli(&[
        "dmtp",
        "send",
        file.to_str().unwrap(),
        "--origin",
        origin.domain,
        "--origin-signet",
        origin.path("org.signet").to_str().unwrap(),
    ])
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// The exit flow: alice@secure.test, a DIME author hosted at A, submits over DMTP. Sealed to
/// A's exit identity for a legacy mailbox, A opens it and relays it over SMTP with its body
/// intact; sealed for bob@other.test, A signs it as origin and B delivers it. A submission
/// whose author is not A's, or whose author signature is broken, is refused with the DMTP code
/// and leaves nothing in A's queue.
#[test]
fn dime_authors_submit_over_dmtp_to_legacy_and_dime_recipients() {
    let relay_sink = Sink::start(&[]);
    let a_mailbox = Sink::start(&[]);
    let backend = Sink::start(&[]);
    let pair = Pair::new(
        |_| {},
        &format!(
            "[relay]\nsmarthost = \"{}\"\nsmarthost_tls = \"off\"\n\
             [backend]\naddress = \"{}\"\nstarttls = \"off\"\n",
            relay_sink.addr, a_mailbox.addr
        ),
        &format!(
            "[backend]\naddress = \"{}\"\nstarttls = \"off\"\n",
            backend.addr
        ),
    );
    let (a, b) = (&pair.a, &pair.b);
    let gw_a = a.start();
    let gw_b = b.start();
    // The exit identity exists once A has started.
    wait_until(
        Duration::from_secs(20),
        || a.path("users/dime-bridge/1.signet").exists(),
        || gw_a.log_text(),
    );
    let alice = a.path("users/alice");
    let alice_fp = ok(&Command::new(bin())
        .args(["signet", "show"])
        .arg(alice.join("1.signet"))
        .output()
        .unwrap());

    // 1. To a legacy mailbox, through the exit.
    let body = "Exit line one.\r\n..dot line\r\nLast: caf\u{e9}.\r\n";
    let to_dave = mail("dave@legacy.other.test", "Exit-path-kestrel", body);
    let sealed = seal_submission(
        a,
        &alice,
        &a.path("org.signet"),
        &a.path("users/dime-bridge/1.signet"),
        Some("dave@legacy.other.test"),
        &to_dave,
    );
    let sent = ok(&submit(b, a, &sealed));
    assert!(sent.starts_with("accepted ["), "{sent}");
    // The same submission again (a client that missed the reply): the first txid, and it
    // leaves once (counted below).
    assert_eq!(ok(&submit(b, a, &sealed)), sent);
    wait_until(
        Duration::from_secs(30),
        || !relay_sink.messages().is_empty(),
        || gw_a.log_text(),
    );
    let relayed = relay_sink.messages().remove(0);
    assert!(relayed.contains("dave@legacy.other.test"), "{relayed}");
    // smtp-sink stores LF line ends and ends its dump with one more.
    let message = common::dumped_message(&relayed);
    let (head, got_body) = message.split_once("\n\n").expect("a message");
    assert_eq!(
        got_body.strip_suffix('\n'),
        Some(body.replace("\r\n", "\n").as_str()),
        "body bytes"
    );
    for line in to_dave.split_once("\r\n\r\n").unwrap().0.split("\r\n") {
        assert!(head.contains(line), "{line:?} missing from\n{head}");
    }
    assert!(
        head.contains("Received: from secure.test by mx.secure.test with DMTP id "),
        "{head}"
    );
    let fp_line = alice_fp
        .lines()
        .find_map(|l| l.strip_prefix("crypto fingerprint: "))
        .unwrap_or_else(|| panic!("{alice_fp}"));
    assert!(
        head.contains(&format!(
            "Authentication-Results: mx.secure.test; dime=pass (author alice@secure.test [{}]",
            fp_line.trim()
        )),
        "{head}"
    );
    assert!(
        relayed.contains("alice@secure.test"),
        "envelope sender: {relayed}"
    );

    // 2. To a DIME recipient: signed by A as origin, over DMTP to B, opened there for Bob.
    let before = pair.tap.sent().len();
    let to_bob = mail("bob@other.test", "Submitted-heron", "Sealed by Alice.\r\n");
    let sealed = seal_submission(
        a,
        &alice,
        &b.path("org.signet"),
        &b.path("users/bob/1.signet"),
        None,
        &to_bob,
    );
    ok(&submit(b, a, &sealed));
    let at_bob = message_containing(&backend, "Submitted-heron", Duration::from_secs(30), || {
        format!("A:\n{}\nB:\n{}", gw_a.log_text(), gw_b.log_text())
    });
    assert!(at_bob.contains("Sealed by Alice."), "{at_bob}");
    assert!(
        at_bob
            .contains("Authentication-Results: mx.other.test; dime=pass (author alice@secure.test"),
        "{at_bob}"
    );
    assert!(
        pair.tap.sent().len() > before,
        "A reached B through the tap"
    );
    let wire = pair.tap.all();
    for secret in ["heron", "Sealed by Alice", "bob", "alice"] {
        assert!(
            !wire.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "{secret:?} visible on the wire"
        );
    }
    assert_eq!(flow_count(&gw_a, "submitted"), 1.0);
    wait_until(
        Duration::from_secs(20),
        || gw_a.queue_json().is_empty(),
        || format!("{:?}", gw_a.queue_json()),
    );

    // 3. Refused: an author who is not A's (bob@other.test, submitting through A), and Alice's
    // message with one bit flipped in a content chunk (her tree signature covers it).
    let bob = b.path("users/bob");
    let foreign = seal_submission(
        a,
        &bob,
        &a.path("org.signet"),
        &a.path("users/dime-bridge/1.signet"),
        Some("dave@legacy.other.test"),
        &mail("dave@legacy.other.test", "Relay-attempt-magpie", "x\r\n"),
    );
    let refused = submit(b, a, &foreign);
    assert_eq!(refused.status.code(), Some(1));
    let text = String::from_utf8_lossy(&refused.stdout);
    assert!(text.contains("575"), "{text}");
    let mut tampered = seal_submission(
        a,
        &alice,
        &a.path("org.signet"),
        &a.path("users/dime-bridge/1.signet"),
        Some("dave@legacy.other.test"),
        &mail("dave@legacy.other.test", "Tampered-wren", "y\r\n"),
    );
    let at = tampered.len() - 1600;
    tampered[at] ^= 1;
    let refused = submit(b, a, &tampered);
    assert_eq!(refused.status.code(), Some(1));
    let text = String::from_utf8_lossy(&refused.stdout);
    assert!(text.contains("578"), "{text}");
    assert!(gw_a.queue_json().is_empty(), "{:?}", gw_a.queue_json());
    assert_eq!(relay_sink.messages().len(), 1, "nothing more left A");

    // 4. After the exit identity's key is rotated, mail sealed to its previous signet still
    // leaves.
    ok(&a.cli(&["users", "rotate", "dime-bridge@secure.test"]));
    assert!(a.path("users/dime-bridge/2.signet").exists());
    let late = seal_submission(
        a,
        &alice,
        &a.path("org.signet"),
        &a.path("users/dime-bridge/1.signet"),
        Some("dave@legacy.other.test"),
        &mail("dave@legacy.other.test", "Old-exit-signet-crane", "z\r\n"),
    );
    ok(&submit(b, a, &late));
    wait_until(
        Duration::from_secs(30),
        || {
            relay_sink
                .messages()
                .iter()
                .any(|m| m.contains("Old-exit-signet-crane"))
        },
        || gw_a.log_text(),
    );

    // 5. To another DIME user of A's own (added while A runs): signed by A as origin, opened
    // by A for Erin and delivered to A's backend; nothing goes to B.
    ok(&a.cli(&["users", "add", "erin@secure.test"]));
    let before = pair.tap.sent().len();
    let to_erin = mail("erin@secure.test", "Local-dime-plover", "For Erin.\r\n");
    let sealed = seal_submission(
        a,
        &alice,
        &a.path("org.signet"),
        &a.path("users/erin/1.signet"),
        None,
        &to_erin,
    );
    let sent = ok(&submit(b, a, &sealed));
    assert!(sent.starts_with("accepted ["), "{sent}");
    let at_erin = message_containing(
        &a_mailbox,
        "Local-dime-plover",
        Duration::from_secs(30),
        || gw_a.log_text(),
    );
    assert!(at_erin.contains("For Erin."), "{at_erin}");
    assert!(
        at_erin.contains(&format!(
            "Authentication-Results: mx.secure.test; dime=pass (author alice@secure.test [{}]",
            fp_line.trim()
        )),
        "{at_erin}"
    );
    assert_eq!(pair.tap.sent().len(), before, "nothing went to B");
    // Sealed to a signet Erin does not have (Bob's): refused at once, nothing queued.
    let misaddressed = seal_submission(
        a,
        &alice,
        &a.path("org.signet"),
        &b.path("users/bob/1.signet"),
        Some("erin@secure.test"),
        &mail("erin@secure.test", "Wrong-signet-tern", "w\r\n"),
    );
    let refused = submit(b, a, &misaddressed);
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&refused.stdout).contains("510"),
        "{refused:?}"
    );
    wait_until(
        Duration::from_secs(20),
        || gw_a.queue_json().is_empty(),
        || format!("{:?}", gw_a.queue_json()),
    );
}

/// A permanent failure at B's backend for mail that came over DMTP is not silence: B, which
/// opened it for Bob, seals an RFC 3464 report to its author, alice@secure.test, from B's bridge
/// identity, and sends it over DMTP; A opens it for Alice. The wire from B to A shows none of it.
#[test]
fn a_backend_refusal_at_b_goes_back_to_the_author_sealed() {
    let a_mailbox = Sink::start(&[]);
    // B's backend refuses every recipient for good (550).
    let backend = Sink::start(&["-f", "RCPT"]);
    let pair = Pair::with_back_tap(
        |_| {},
        &format!(
            "[relay]\nnetworks = [\"127.0.0.0/8\"]\n\
             [backend]\naddress = \"{}\"\nstarttls = \"off\"\n",
            a_mailbox.addr
        ),
        &format!(
            "[backend]\naddress = \"{}\"\nstarttls = \"off\"\n",
            backend.addr
        ),
    );
    let gw_a = pair.a.start();
    let gw_b = pair.b.start();
    let secret = "Refused-mail-puffin";
    smtp_send(
        gw_a.smtp,
        "alice@secure.test",
        &["bob@other.test"],
        &mail("bob@other.test", secret, "Bounce me, sealed.\r\n"),
    )
    .expect("accepted");
    let dsn = message_containing(&a_mailbox, "Status: 5.", Duration::from_secs(60), || {
        format!("A:\n{}\nB:\n{}", gw_a.log_text(), gw_b.log_text())
    });
    assert!(
        dsn.contains("Final-Recipient: rfc822; bob@other.test"),
        "{dsn}"
    );
    assert!(dsn.contains("Action: failed"), "{dsn}");
    assert!(dsn.contains(secret), "the report names the message: {dsn}");
    assert!(
        dsn.contains(
            "Authentication-Results: mx.secure.test; dime=pass (author dime-bridge@other.test"
        ),
        "{dsn}"
    );
    assert!(gw_b.log_text().contains("sealed DSN queued"));
    // What B sent A: signet look-ups and the sealed report, none of it legible.
    let back = pair.back.as_ref().unwrap();
    let wire = back.all();
    assert!(
        back.sent().iter().any(|&n| n > 4096),
        "a sealed transfer went B -> A: {:?}",
        back.sent()
    );
    for plain in [
        secret,
        "bob@other.test",
        "alice",
        "Status:",
        "Final-Recipient",
        "puffin",
    ] {
        assert!(
            !wire.windows(plain.len()).any(|w| w == plain.as_bytes()),
            "{plain:?} visible on the wire B -> A"
        );
    }
    // Both queues settle: the failure is final at B, the report delivered at A.
    wait_until(
        Duration::from_secs(30),
        || gw_a.queue_json().is_empty() && gw_b.queue_json().is_empty(),
        || format!("A: {:?}\nB: {:?}", gw_a.queue_json(), gw_b.queue_json()),
    );
}

/// The same refusal for legacy mail A wrapped as its bridge identity: carol@legacy.test, relayed
/// by the provider's MTA through A, writes to bob@other.test, and B's backend refuses it for
/// good. B's report is sealed to A's bridge identity and names the legacy sender sealed in the
/// original; A opens it and returns it as an ordinary DSN, from the null sender, through its
/// smarthost (standing in for the way to carol's MX). Nothing of it is legible between B and A,
/// and nothing answers the DSN.
#[test]
fn a_backend_refusal_at_b_of_bridge_wrapped_mail_reaches_the_legacy_sender() {
    let smarthost = Sink::start(&[]);
    let backend = Sink::start(&["-f", "RCPT"]);
    let pair = Pair::with_back_tap(
        |_| {},
        &format!(
            "[relay]\nnetworks = [\"127.0.0.0/8\"]\nsmarthost = \"{}\"\nsmarthost_tls = \"off\"\n",
            smarthost.addr
        ),
        &format!(
            "[backend]\naddress = \"{}\"\nstarttls = \"off\"\n",
            backend.addr
        ),
    );
    let gw_a = pair.a.start();
    let gw_b = pair.b.start();
    let secret = "Refused-legacy-marmot";
    let sent = format!(
        "Date: Tue, 01 Dec 2026 12:00:00 +0000\r\nFrom: Carol <carol@legacy.test>\r\nTo: <bob@other.test>\r\nSubject: {secret}\r\nMessage-ID: <marmot.1@legacy.test>\r\n\r\nBounce me back to my own MX.\r\n"
    );
    smtp_send(gw_a.smtp, "carol@legacy.test", &["bob@other.test"], &sent).expect("accepted");
    let logs = || format!("A:\n{}\nB:\n{}", gw_a.log_text(), gw_b.log_text());
    wait_until(
        Duration::from_secs(60),
        || !smarthost.messages().is_empty(),
        logs,
    );
    // Both queues settle: final at B, the report returned and relayed at A.
    wait_until(
        Duration::from_secs(30),
        || gw_a.queue_json().is_empty() && gw_b.queue_json().is_empty(),
        || format!("A: {:?}\nB: {:?}", gw_a.queue_json(), gw_b.queue_json()),
    );
    let relayed = smarthost.messages();
    assert_eq!(relayed.len(), 1, "only the DSN goes over SMTP: {relayed:?}");
    let dsn = &relayed[0];
    assert!(dsn.contains("X-Mail-Args: <>\n"), "null sender: {dsn}");
    assert!(
        dsn.contains("X-Rcpt-Args: <carol@legacy.test>\n"),
        "to the legacy sender: {dsn}"
    );
    assert!(dsn.contains("\nStatus: 5."), "{dsn}");
    assert!(
        dsn.contains("Final-Recipient: rfc822; bob@other.test"),
        "{dsn}"
    );
    assert!(dsn.contains("Action: failed"), "{dsn}");
    assert!(dsn.contains("To: <carol@legacy.test>"), "{dsn}");
    assert!(
        dsn.contains("report-type=delivery-status"),
        "an RFC 3464 report: {dsn}"
    );
    assert!(dsn.contains(secret), "the report names the message: {dsn}");
    assert!(!dsn.contains("X-Envelope-To"), "{dsn}");
    assert!(
        dsn.contains(
            "Authentication-Results: mx.secure.test; dime=pass (author dime-bridge@other.test"
        ),
        "A verified B's report: {dsn}"
    );
    let log_b = gw_b.log_text();
    assert!(
        log_b.lines().any(|l| l.contains("sealed DSN queued")
            && l.contains("legacy_sender=\"carol@legacy.test\"")),
        "{log_b}"
    );
    assert_eq!(flow_count(&gw_a, "return_report"), 1.0);
    assert!(
        gw_a.log_text()
            .contains("failure report returned to the legacy sender"),
        "{}",
        gw_a.log_text()
    );
    // What B sent A: signet look-ups and one sealed report, none of it legible.
    let back = pair.back.as_ref().unwrap();
    let wire = back.all();
    assert!(
        back.sent().iter().any(|&n| n > 4096),
        "a sealed transfer went B -> A: {:?}",
        back.sent()
    );
    for plain in [
        secret,
        "carol",
        "legacy.test",
        "bob@other.test",
        "marmot",
        "Status:",
        "Final-Recipient",
        "X-Envelope-To",
    ] {
        assert!(
            !wire.windows(plain.len()).any(|w| w == plain.as_bytes()),
            "{plain:?} visible on the wire B -> A"
        );
    }
    // Nothing answered the report: B's backend saw the one refused attempt, A relayed one DSN.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(smarthost.messages().len(), 1);
    assert_eq!(
        common::metric(
            &gw_b.metrics(),
            "dimegate_route_decisions_total{flow=\"return_report\"}"
        )
        .unwrap_or(0.0),
        0.0,
        "no report came back to B"
    );
}

/// No report answers a report, and nothing but a gateway's report goes back out: B refuses
/// legacy mail from the null sender without sealing a report about it; and a letter bob at B
/// writes to A's bridge identity is DIME mail for it that is no gateway's report, which A fails
/// visibly (log, metric) instead of relaying it, with nothing sent back (its sender is null).
#[test]
fn reports_never_answer_reports_and_a_letter_to_the_bridge_is_not_returned() {
    let smarthost = Sink::start(&[]);
    let backend = Sink::start(&["-f", "RCPT"]);
    let pair = Pair::new(
        |_| {},
        &format!(
            "[relay]\nnetworks = [\"127.0.0.0/8\"]\nsmarthost = \"{}\"\nsmarthost_tls = \"off\"\n",
            smarthost.addr
        ),
        &format!(
            "[relay]\nnetworks = [\"127.0.0.0/8\"]\n\
             [backend]\naddress = \"{}\"\nstarttls = \"off\"\n",
            backend.addr
        ),
    );
    let gw_a = pair.a.start();
    let gw_b = pair.b.start();
    let bounce = "Date: Tue, 01 Dec 2026 12:00:00 +0000\r\nFrom: MAILER-DAEMON@legacy.test\r\nTo: <bob@other.test>\r\nSubject: A bounce already\r\n\r\nNo answer to this.\r\n";
    smtp_send(gw_a.smtp, "", &["bob@other.test"], bounce).expect("accepted");
    let letter = "Date: Tue, 01 Dec 2026 12:00:00 +0000\r\nFrom: Bob <bob@other.test>\r\nTo: <dime-bridge@secure.test>\r\nSubject: Hello bridge\r\n\r\nNot a report.\r\n";
    smtp_send(
        gw_b.smtp,
        "bob@other.test",
        &["dime-bridge@secure.test"],
        letter,
    )
    .expect("accepted");
    let logs = || format!("A:\n{}\nB:\n{}", gw_a.log_text(), gw_b.log_text());
    wait_until(
        Duration::from_secs(60),
        || {
            gw_b.log_text()
                .lines()
                .any(|l| l.contains("failed rcpt=bob@other.test"))
                && gw_a.log_text().contains("failure report not returned")
        },
        logs,
    );
    wait_until(
        Duration::from_secs(30),
        || gw_a.queue_json().is_empty() && gw_b.queue_json().is_empty(),
        || format!("A: {:?}\nB: {:?}", gw_a.queue_json(), gw_b.queue_json()),
    );
    let (log_a, log_b) = (gw_a.log_text(), gw_b.log_text());
    assert!(!log_b.contains("sealed DSN queued"), "{log_b}");
    assert!(!log_a.contains("sealed DSN queued"), "{log_a}");
    let refused = log_a
        .lines()
        .find(|l| l.contains("failure report not returned"))
        .unwrap();
    assert!(
        refused.contains("rcpt=dime-bridge@secure.test")
            && refused.contains("not by other.test's bridge identity"),
        "{refused}"
    );
    assert_eq!(
        common::metric(
            &gw_a.metrics(),
            "dimegate_deliveries_total{route=\"return_report\",outcome=\"failed\"}"
        ),
        Some(1.0)
    );
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        smarthost.messages().is_empty(),
        "{:?}",
        smarthost.messages()
    );
    assert!(backend.messages().is_empty());
    assert_eq!(flow_count(&gw_b, "return_report"), 0.0);
    assert_eq!(flow_count(&gw_a, "submitted"), 0.0);
}

/// `dime = "off"` for a domain that publishes `_dx`: A relays its mail in clear over SMTP to the
/// smarthost, as configured, and never opens a DMTP session (no `_dx` asked, no signet fetched).
#[test]
fn dime_off_relays_a_dime_domain_over_smtp_without_dmtp() {
    let relay_sink = Sink::start(&[]);
    let backend = Sink::start(&[]);
    let pair = Pair::new(
        |_| {},
        &format!(
            "[relay]\nnetworks = [\"127.0.0.0/8\"]\nsmarthost = \"{}\"\nsmarthost_tls = \"off\"\n\
             [[destination]]\ndomain = \"other.test\"\ndime = \"off\"\n",
            relay_sink.addr
        ),
        &format!(
            "[backend]\naddress = \"{}\"\nstarttls = \"off\"\n",
            backend.addr
        ),
    );
    let gw_a = pair.a.start();
    let _gw_b = pair.b.start();
    let sent = mail(
        "bob@other.test",
        "Policy-off-stoat",
        "In clear, as asked.\r\n",
    );
    smtp_send(gw_a.smtp, "alice@secure.test", &["bob@other.test"], &sent).expect("accepted");
    wait_until(
        Duration::from_secs(30),
        || !relay_sink.messages().is_empty(),
        || gw_a.log_text(),
    );
    let relayed = relay_sink.messages().remove(0);
    assert!(relayed.contains("Policy-off-stoat"), "{relayed}");
    assert!(relayed.contains("In clear, as asked."), "{relayed}");
    assert_eq!(flow_count(&gw_a, "relay"), 1.0);
    assert_eq!(flow_count(&gw_a, "wrap"), 0.0);
    assert!(
        pair.tap.sent().is_empty(),
        "a DMTP session to B: {:?}",
        pair.tap.sent()
    );
    assert!(backend.messages().is_empty(), "nothing reached B");
    // `_dx` was not even asked.
    let log = gw_a.log_text();
    let routed = log
        .lines()
        .find(|l| l.contains("routed") && l.contains("rcpt=bob@other.test"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(routed.contains("dx=NotAsked"), "{routed}");
}

/// DIME mail for a cautious user at B (carol@other.test, who holds her own key) is handed to
/// the backend sealed as it came, in the MIME shape of the README; Carol's key opens it with
/// `dimegate message open`, and the mailbox holds none of the text.
#[test]
fn dime_mail_for_a_cautious_user_reaches_her_mailbox_sealed() {
    let backend = Sink::start(&[]);
    let pair = Pair::new(
        |b| {
            ok(&Command::new(bin())
                .args(["keys", "user", "carol@other.test", "--org-key"])
                .arg(b.path("org.key"))
                .arg("--out")
                .arg(b.dir.path().join("carol-keys"))
                .output()
                .unwrap());
            ok(&b.cli(&["users", "add", "carol@other.test", "--mode", "cautious"]));
            let signet = b.dir.path().join("carol-keys/carol@other.test.signet");
            ok(&b.cli(&[
                "users",
                "import-signet",
                "carol@other.test",
                signet.to_str().unwrap(),
            ]));
        },
        "[relay]\nnetworks = [\"127.0.0.0/8\"]\n",
        &format!(
            "[backend]\naddress = \"{}\"\nstarttls = \"off\"\n",
            backend.addr
        ),
    );
    let gw_a = pair.a.start();
    let gw_b = pair.b.start();
    let body = "For Carol's eyes: the ledger is in drawer 7.\r\n";
    let sent = mail("carol@other.test", "Cautious-path-ibis", body);
    smtp_send(gw_a.smtp, "alice@secure.test", &["carol@other.test"], &sent).expect("accepted");
    wait_until(
        Duration::from_secs(60),
        || !backend.messages().is_empty(),
        || format!("A:\n{}\nB:\n{}", gw_a.log_text(), gw_b.log_text()),
    );
    let stored = backend.messages().remove(0);
    assert!(stored.contains("application/vnd.dime.dmime"), "{stored}");
    for secret in ["Cautious-path-ibis", "ledger", "drawer 7"] {
        assert!(
            !stored.contains(secret),
            "{secret:?} in the mailbox: {stored}"
        );
    }
    assert_eq!(flow_count(&gw_a, "wrap"), 1.0);
    assert_eq!(flow_count(&gw_b, "pass_sealed"), 1.0);
    assert_eq!(flow_count(&gw_b, "unwrap"), 0.0);
    // The object is the one A sealed, as it crossed the wire: a bucket size.
    let b64: String = stored
        .split("filename=\"message.dmime\"")
        .nth(1)
        .unwrap()
        .lines()
        .skip_while(|l| l.trim().is_empty())
        .take_while(|l| !l.starts_with("--"))
        .collect();
    use base64::Engine;
    let sealed = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .expect("base64 D/MIME");
    assert_eq!(wrapped_sizes(&gw_a), vec![sealed.len()]);
    let mut open = Command::new(bin())
        .args(["message", "open", "--as", "recipient", "--key"])
        .arg(pair.b.dir.path().join("carol-keys/carol@other.test.key"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    open.stdin.take().unwrap().write_all(&sealed).unwrap();
    let opened = open.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&opened.stdout);
    assert!(
        text.contains("Subject: Cautious-path-ibis") && text.ends_with(body),
        "carol's key opens it: {text}{}",
        String::from_utf8_lossy(&opened.stderr)
    );
}
