//! `dimegate demo`: the bridge end to end on one machine, with no configuration and nothing
//! installed. Two gateways, north.test (A) and south.test (B), each a full `serve` of this same
//! binary on loopback, find each other through a static DX map (`[[dmtp.static]]`) instead of
//! DNS; alice@north.test sends bob@south.test one SMTP message through A; A wraps it, sends it
//! over DMTP through a recording TCP tap ([`wire`]) to B, which unwraps it for Bob and delivers
//! it to a Maildir writer ([`mailbox`], the stand-in for the provider's MTA). The demo then
//! prints what each hop saw, from the gateways' JSON logs ([`report`]) and the tap's bytes, and
//! succeeds only when the delivered mail carries every header line and the body of the sent one.
//!
//! The gateways are child processes, not tasks in this process: tracing's subscriber is one per
//! process, so separate processes give each gateway its own JSON log to read its view from, and
//! each is exactly the `dimegate serve` an operator runs. They are stopped with SIGTERM (then
//! killed) when the demo ends, fails or is interrupted.

pub mod mailbox;
pub mod report;
pub mod wire;

use crate::config::Config;
use crate::envelope::{Envelope, QueueId};
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::process::Child;

/// How long the mail may take from A's SMTP listener to B's mailbox.
const DELIVERY_LIMIT: Duration = Duration::from_secs(20);
/// How long a gateway may take to become ready.
const START_LIMIT: Duration = Duration::from_secs(15);

const NORTH: &str = "north.test";
const SOUTH: &str = "south.test";
const ALICE: &str = "alice@north.test";
const BOB: &str = "bob@south.test";
const SUBJECT: &str = "Tea on Thursday?";
const BODY: &str = "Hello Bob,\r\n\r\nthe spare key is under the blue flowerpot.\r\n\r\nAlice\r\n";
/// Text of the mail that must never show on the wire between A and B.
const SECRETS: &[&str] = &[
    "alice",
    "bob",
    "Alice Liddell",
    "Bob Builder",
    "Tea on Thursday",
    "spare key",
    "flowerpot",
];

/// Why the demo failed.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// A local file or socket operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// A generated configuration or identity was refused.
    #[error("setting up {side}: {reason}")]
    Setup {
        /// north.test or south.test.
        side: &'static str,
        /// Why.
        reason: String,
    },
    /// A gateway exited, never became ready, or did not do its part in time.
    #[error("{reason}\n--- log of {side} ({log}) ---\n{tail}")]
    Gateway {
        /// north.test or south.test.
        side: &'static str,
        /// What went wrong.
        reason: String,
        /// The log file.
        log: String,
        /// Its last lines.
        tail: String,
    },
    /// A refused the message.
    #[error("gateway A did not accept the message: {0}")]
    NotAccepted(String),
    /// The mail's text was visible between the gateways.
    #[error("visible on the wire between A and B: {0:?}")]
    Visible(Vec<String>),
    /// The delivered mail is not the sent one.
    #[error("the delivered mail is not the sent one: {0}")]
    Mismatch(#[from] report::Mismatch),
    /// Ctrl-C or SIGTERM.
    #[error("interrupted; gateways stopped")]
    Interrupted,
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> DemoError {
    let what = what.into();
    move |source| DemoError::Io { what, source }
}

/// Runs the demo under `dir` (kept), or under a fresh temporary directory (removed).
pub fn run(dir: Option<PathBuf>) -> Result<(), DemoError> {
    let (root, temporary) = match dir {
        Some(d) => (d, false),
        None => {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos());
            let d =
                std::env::temp_dir().join(format!("dimegate-demo-{}-{nanos}", std::process::id()));
            (d, true)
        }
    };
    std::fs::create_dir_all(&root).map_err(io_err(format!("creating {}", root.display())))?;
    let rt = tokio::runtime::Runtime::new().map_err(io_err("starting the tokio runtime"))?;
    let result = rt.block_on(async {
        // Registered before anything starts, so that no signal finds the default action
        // (which would leave the gateways running).
        use tokio::signal::unix::{SignalKind, signal};
        let mut int = signal(SignalKind::interrupt()).map_err(io_err("handling SIGINT"))?;
        let mut term = signal(SignalKind::terminate()).map_err(io_err("handling SIGTERM"))?;
        let mut gateways = Vec::new();
        let result = tokio::select! {
            r = demo_retrying(&root, &mut gateways) => r,
            _ = int.recv() => Err(DemoError::Interrupted),
            _ = term.recv() => Err(DemoError::Interrupted),
        };
        for gw in &mut gateways {
            gw.stop().await;
        }
        result
    });
    if temporary {
        let _ = std::fs::remove_dir_all(&root);
    }
    result
}

/// [`demo`], started again on fresh ports (up to twice) when a gateway could not listen: a port
/// found free can be taken by another process, even as the local end of its outbound
/// connection, before the gateway binds it.
async fn demo_retrying(root: &Path, gateways: &mut Vec<Gateway>) -> Result<(), DemoError> {
    let mut attempt = 0;
    loop {
        match demo(root, gateways).await {
            Err(DemoError::Gateway { ref tail, .. })
                if attempt < 2 && tail.contains("Address already in use") =>
            {
                for gw in gateways.iter_mut() {
                    gw.stop().await;
                }
                gateways.clear();
                attempt += 1;
            }
            result => return result,
        }
    }
}

/// One `dimegate serve` child.
struct Gateway {
    side: &'static str,
    child: Child,
    log: PathBuf,
    admin: SocketAddr,
}

impl Gateway {
    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn failed(&self, reason: impl Into<String>) -> DemoError {
        let text = self.log_text();
        let lines: Vec<&str> = text.lines().collect();
        DemoError::Gateway {
            side: self.side,
            reason: reason.into(),
            log: self.log.display().to_string(),
            tail: lines[lines.len().saturating_sub(20)..].join("\n"),
        }
    }

    async fn stop(&mut self) {
        if let Ok(None) = self.child.try_wait()
            && let Some(pid) = self.child.id().and_then(|p| i32::try_from(p).ok())
        {
            // SAFETY: kill(2) on our own child's pid, which try_wait has just shown is not
            // reaped yet, so it cannot name another process.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            if tokio::time::timeout(Duration::from_secs(5), self.child.wait())
                .await
                .is_ok()
            {
                return;
            }
        }
        let _ = self.child.kill().await;
    }

    /// Waits for `/readyz` to answer 200.
    async fn ready(&mut self) -> Result<(), DemoError> {
        let until = tokio::time::Instant::now() + START_LIMIT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(self.failed(format!("{} exited at start: {status}", self.side)));
            }
            if http_status(self.admin, "/readyz").await == Some(200) {
                return Ok(());
            }
            if tokio::time::Instant::now() > until {
                return Err(self.failed(format!("{} not ready after {START_LIMIT:?}", self.side)));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.ok()?;
    let text = String::from_utf8_lossy(&buf);
    text.split_whitespace().nth(1)?.parse().ok()
}

/// A free loopback port (bound, then released for the gateway to take).
fn free_port() -> Result<SocketAddr, DemoError> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(io_err("finding a free loopback port"))
}

/// One side's files and addresses.
#[derive(Debug, Clone)]
struct Side {
    domain: &'static str,
    dir: PathBuf,
    smtp: SocketAddr,
    admin: SocketAddr,
    dmtp: SocketAddr,
}

impl Side {
    fn new(root: &Path, name: &str, domain: &'static str) -> Result<Side, DemoError> {
        Ok(Side {
            domain,
            dir: root.join(name),
            smtp: free_port()?,
            admin: free_port()?,
            dmtp: free_port()?,
        })
    }

    fn config_path(&self) -> PathBuf {
        self.dir.join("dimegate.toml")
    }

    /// The configuration; `extra` is appended (the static map, relay or backend).
    fn write_config(&self, extra: &str) -> Result<Config, DemoError> {
        let d = self.domain;
        // Any DNS question goes to a loopback port nobody answers on: the demo never leaves
        // the machine, and a question that should not be asked fails fast.
        let text = format!(
            "data_dir = {data:?}\n\
             [[domain]]\nname = \"{d}\"\n\
             [smtp]\nlisten = \"{smtp}\"\nhostname = \"mx.{d}\"\n\
             [admin]\nlisten = \"{admin}\"\n\
             [dns]\nservers = [\"127.0.0.1:9\"]\ntimeout = \"1s\"\n\
             [queue]\nretry = [\"1s\"]\njitter_percent = 0\npoll_interval = \"200ms\"\n\
             {extra}\
             [dmtp]\nlisten = \"{dmtp}\"\ndx = [\"dx.{d}\"]\n",
            data = self.dir.join("data"),
            smtp = self.smtp,
            admin = self.admin,
            dmtp = self.dmtp,
        );
        std::fs::create_dir_all(&self.dir)
            .map_err(io_err(format!("creating {}", self.dir.display())))?;
        let path = self.config_path();
        std::fs::write(&path, text).map_err(io_err(format!("writing {}", path.display())))?;
        Config::load(&path).map_err(|e| DemoError::Setup {
            side: self.domain,
            reason: format!("{}: {e}", path.display()),
        })
    }

    /// Creates the org (on first use) and the trustful user, and returns the `_dx` RDATA.
    fn identities(&self, user: &str) -> Result<String, DemoError> {
        let config = self.write_config("")?;
        let setup = |e: &dyn std::fmt::Display| DemoError::Setup {
            side: self.domain,
            reason: e.to_string(),
        };
        let rdata = crate::cli::dime::zone_rdata(&config, self.domain).map_err(|e| setup(&e))?;
        let ks = crate::identity::Keystore::new(&config.data_dir, &config.domains);
        if ks.user(user).is_err() {
            let (org, _) = ks
                .ensure_org(self.domain, None, &mut rand::rngs::OsRng)
                .map_err(|e| setup(&e))?;
            ks.add_user(
                &org,
                user,
                crate::identity::Mode::Trustful,
                &mut rand::rngs::OsRng,
            )
            .map_err(|e| setup(&e))?;
        }
        Ok(rdata)
    }

    fn spawn(&self) -> Result<Gateway, DemoError> {
        let exe = std::env::current_exe().map_err(io_err("finding the dimegate binary"))?;
        let log = self.dir.join("gateway.log.json");
        let stderr =
            std::fs::File::create(&log).map_err(io_err(format!("creating {}", log.display())))?;
        let child = tokio::process::Command::new(exe)
            .arg("--log-json")
            .arg("serve")
            .arg("--config")
            .arg(self.config_path())
            .env("RUST_LOG", "info")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .map_err(io_err(format!("starting the {} gateway", self.domain)))?;
        Ok(Gateway {
            side: self.domain,
            child,
            log,
            admin: self.admin,
        })
    }
}

fn side_name(user: &str) -> &'static str {
    if user.ends_with(NORTH) { NORTH } else { SOUTH }
}

fn static_entry(domain: &str, rdata: &str, address: SocketAddr) -> String {
    format!("[[dmtp.static]]\ndomain = \"{domain}\"\nrecord = {rdata:?}\naddress = \"{address}\"\n")
}

fn message_text() -> String {
    let now = crate::time::UnixTime::now();
    format!(
        "Date: {}\r\nFrom: Alice Liddell <{ALICE}>\r\nTo: Bob Builder <{BOB}>\r\n\
         Subject: {SUBJECT}\r\nMessage-ID: <demo.{}.{}@{NORTH}>\r\nMIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\r\n{BODY}",
        crate::time::rfc5322_date(now),
        now.0,
        std::process::id()
    )
}

/// Sends the mail to A over SMTP with the gateway's own delivery client.
async fn send(a: SocketAddr, mail: &[u8]) -> Result<String, DemoError> {
    let resolver = crate::resolve::Resolver::with_servers(&["127.0.0.1:9"
        .parse()
        .map_err(|_| DemoError::NotAccepted("bad resolver address".into()))?])
    .map_err(|e| DemoError::NotAccepted(e.to_string()))?;
    let settings = crate::deliver::DeliverySettings {
        helo_name: format!("client.{NORTH}"),
        connect_timeout: Duration::from_secs(5),
        ..crate::deliver::DeliverySettings::default()
    };
    let deliverer = crate::deliver::Deliverer::new(settings, resolver)
        .map_err(|e| DemoError::NotAccepted(e.to_string()))?;
    let envelope = Envelope::local(
        ALICE.into(),
        BOB.into(),
        String::new(),
        crate::time::UnixTime::now().0,
    );
    let hop = crate::deliver::NextHop::Smarthost {
        host: a.ip().to_string(),
        port: a.port(),
        tls: crate::deliver::TlsPolicy::Disabled,
    };
    let outcomes = deliverer
        .deliver(&hop, &envelope, QueueId(0), mail, &[0])
        .await;
    match outcomes.first() {
        Some((_, o)) if o.is_delivered() => Ok(o.to_string()),
        Some((_, o)) => Err(DemoError::NotAccepted(o.to_string())),
        None => Err(DemoError::NotAccepted("no outcome".into())),
    }
}

async fn demo(root: &Path, gateways: &mut Vec<Gateway>) -> Result<(), DemoError> {
    let north = Side::new(root, "north", NORTH)?;
    let south = Side::new(root, "south", SOUTH)?;
    // Key and RSA certificate generation is most of the start-up: both sides at once, off
    // the runtime's threads so that a Ctrl-C is seen meanwhile.
    let identities = |side: &Side, user: &'static str| {
        let side = side.clone();
        async move {
            tokio::task::spawn_blocking(move || side.identities(user))
                .await
                .unwrap_or_else(|e| {
                    Err(DemoError::Setup {
                        side: side_name(user),
                        reason: format!("identity generation: {e}"),
                    })
                })
        }
    };
    let (north_rdata, south_rdata) =
        tokio::join!(identities(&north, ALICE), identities(&south, BOB));
    let (north_rdata, south_rdata) = (north_rdata?, south_rdata?);

    let bind = |what: &'static str| async move {
        TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(io_err(format!("binding the {what}")))
    };
    let tap_listener = bind("tap").await?;
    let tap_addr = tap_listener.local_addr().map_err(io_err("tap address"))?;
    let mailbox_listener = bind("mailbox").await?;
    let mailbox_addr = mailbox_listener
        .local_addr()
        .map_err(io_err("mailbox address"))?;
    let maildir = mailbox::Maildir::create(&root.join("mailbox")).map_err(io_err(format!(
        "creating {}",
        root.join("mailbox").display()
    )))?;
    let (delivered_tx, mut delivered_rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(mailbox::serve(
        mailbox_listener,
        SOUTH.into(),
        maildir,
        delivered_tx,
    ));
    let recording: wire::Recording = Arc::default();
    tokio::spawn(wire::tap(tap_listener, south.dmtp, Arc::clone(&recording)));

    // A reaches south.test through the tap; B reaches north.test (for its signets) directly.
    north.write_config(&format!(
        "[relay]\nnetworks = [\"127.0.0.0/8\"]\n{}",
        static_entry(SOUTH, &south_rdata, tap_addr)
    ))?;
    south.write_config(&format!(
        "[backend]\naddress = \"{mailbox_addr}\"\nstarttls = \"off\"\n{}",
        static_entry(NORTH, &north_rdata, north.dmtp)
    ))?;
    for side in [&north, &south] {
        gateways.push(side.spawn()?);
    }
    for gw in gateways.iter_mut() {
        gw.ready().await?;
    }
    println!("dimegate demo: {}", root.display());
    println!(
        "  A = {NORTH}: SMTP {}, DMTP {}   B = {SOUTH}: DMTP {} (reached by A through the tap on {tap_addr}), backend {mailbox_addr}\n",
        north.smtp, north.dmtp, south.dmtp
    );

    let mail = message_text();
    let reply = send(north.smtp, mail.as_bytes()).await?;
    let until = tokio::time::Instant::now() + DELIVERY_LIMIT;
    let path = match tokio::time::timeout_at(until, delivered_rx.recv()).await {
        Ok(Some(p)) => p,
        _ => {
            let b = gateways[1].failed("");
            return Err(gateways[0].failed(format!(
                "the mail did not reach B's mailbox within {DELIVERY_LIMIT:?}; B's log:\n{b}"
            )));
        }
    };
    // A logs the DMTP 250 after B answered it; it may land just after the delivery.
    while !gateways[0].log_text().contains("sent over DMTP") {
        if tokio::time::Instant::now() > until {
            return Err(gateways[0].failed("A never logged the DMTP transfer"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let delivered = std::fs::read(&path).map_err(io_err(format!("reading {}", path.display())))?;
    let a_log = gateways[0].log_text();
    let b_log = gateways[1].log_text();
    print_views(&a_log, &b_log, &reply, &delivered);
    let visible = print_wire(&wire::snapshot(&recording));
    println!("== The mail as delivered ({})", path.display());
    for line in String::from_utf8_lossy(&delivered).lines() {
        println!("  | {line}");
    }
    println!();
    if !visible.is_empty() {
        return Err(DemoError::Visible(visible));
    }
    report::compare(mail.as_bytes(), &delivered)?;
    println!(
        "ok: the delivered mail carries every header line and the body of the sent one; \
         the wire between A and B showed none of its text"
    );
    Ok(())
}

fn print_views(a_log: &str, b_log: &str, reply: &str, delivered: &[u8]) {
    use report::{events, field};
    println!("== A ({NORTH}) SMTP envelope");
    for e in events(a_log, "accepted") {
        println!(
            "  MAIL FROM:<{}>  recipients {}  size {} bytes  queue id {}",
            field(&e, "from"),
            field(&e, "rcpts"),
            field(&e, "size"),
            field(&e, "queue_id")
        );
    }
    for e in events(a_log, "routed") {
        println!(
            "  RCPT TO:<{}>  route: {}",
            field(&e, "rcpt"),
            field(&e, "flow")
        );
    }
    println!("  A answered: {reply}\n");

    println!("== DMTP envelope (A to B: domains and a size bucket, nothing else)");
    for e in events(a_log, "wrapped") {
        let rcpt = field(&e, "rcpt");
        let size = field(&e, "size");
        let bucket = size
            .parse::<usize>()
            .is_ok_and(|s| crate::bridge::Buckets::default().is_bucket(s));
        println!(
            "  A sealed: origin {NORTH} -> destination {}  sealed size {size} bytes ({})",
            rcpt.rsplit_once('@').map_or("?", |(_, d)| d),
            if bucket {
                "a padding bucket"
            } else {
                "NOT a bucket"
            }
        );
    }
    for e in events(a_log, "sent over DMTP") {
        println!(
            "  A sent it to DX {} at {} (trust: {}), transaction {}",
            field(&e, "dx"),
            field(&e, "addr"),
            trust_name(&field(&e, "trust")),
            field(&e, "txid")
        );
    }
    println!();

    println!("== B ({SOUTH}) destination view (what the destination keyslot opens)");
    for e in events(b_log, "DMTP message stored") {
        println!(
            "  mailbox {}  origin {}  origin fingerprint {}  sealed size {} bytes  queue id {}",
            field(&e, "recipient"),
            field(&e, "origin"),
            field(&e, "origin_fingerprint"),
            field(&e, "sealed_size"),
            field(&e, "queue_id")
        );
    }
    println!();

    println!("== Recipient view (Bob's keyslot, opened by B for trustful bob)");
    for e in events(b_log, "unwrapped") {
        println!(
            "  author {}  origin {}  signatures: {}",
            field(&e, "author"),
            field(&e, "origin"),
            field(&e, "dime")
        );
    }
    match report::header(delivered, "Authentication-Results") {
        Some(ar) => println!("  Authentication-Results: {ar}"),
        None => println!("  (no Authentication-Results header)"),
    }
    println!();
}

/// `Pinned`, `PinnedAndCa` or `Ca` from the logged trust (whose key dump is noise here).
fn trust_name(logged: &str) -> &str {
    let name = logged.split([' ', '{']).next().unwrap_or(logged);
    match name {
        "Pinned" => "the record's tls= pin (static map record, trusted as DNSSEC-secure)",
        "PinnedAndCa" => "tls= pin and a CA-signed certificate",
        "Ca" => "CA-signed certificate",
        _ => name,
    }
}

/// Prints the wire summary; returns the secrets that showed.
fn print_wire(sessions: &[wire::Recorded]) -> Vec<String> {
    println!("== Wire between A and B (the tap)");
    let (mut up, mut down) = (0, 0);
    for (i, s) in sessions.iter().enumerate() {
        up += s.upstream.len();
        down += s.downstream.len();
        let tls = wire::server_hello(&s.downstream).map_or_else(
            || "no TLS ServerHello seen".to_owned(),
            |h| format!("{}, {}", h.version_name(), h.cipher_name()),
        );
        println!(
            "  connection {}: A->B {} bytes, B->A {} bytes, {tls}",
            i + 1,
            s.upstream.len(),
            s.downstream.len()
        );
    }
    println!(
        "  {} connections, {up} bytes A->B, {down} bytes B->A",
        sessions.len()
    );
    let all: Vec<u8> = sessions
        .iter()
        .flat_map(|s| s.upstream.iter().chain(&s.downstream))
        .copied()
        .collect();
    let visible: Vec<String> = wire::visible(&all, SECRETS)
        .into_iter()
        .map(String::from)
        .collect();
    if visible.is_empty() {
        println!(
            "  none of the mail's local parts, names, subject or body text appear in the captured bytes: {SECRETS:?}\n"
        );
    } else {
        println!("  VISIBLE in the captured bytes: {visible:?}\n");
    }
    visible
}
