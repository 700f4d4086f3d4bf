//! `dimegate queue list|show|retry|hold|release|bounce|delete|summary|drain`.
//!
//! The store is opened directly when no server holds it; when the running server holds its lock,
//! the same operations go through the server's admin HTTP API, so the answers are the same.

use super::Exit;
use crate::config::{Config, Scalar, parse_duration};
use crate::envelope::QueueId;
use crate::store::{
    AdminAction, ListFilter, MessageRecord, MessageSummary, StateKind, Store, StoreError,
    StoreReader,
};
use crate::time::utc_timestamp;
use anyhow::Context;
use clap::Subcommand;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::ExitCode;
use std::time::Duration;

/// `dimegate queue ...`.
#[derive(Debug, Subcommand)]
pub enum QueueCommand {
    /// List queued messages with their recipients and states (all, unless --limit).
    List {
        /// Print one JSON array.
        #[arg(long)]
        json: bool,
        /// At most this many messages.
        #[arg(long)]
        limit: Option<usize>,
        /// Only messages from this sender (exact, case-insensitive; `<>` for the null sender).
        #[arg(long)]
        sender: Option<String>,
        /// Only messages with a recipient in this domain.
        #[arg(long)]
        domain: Option<String>,
        /// Only messages with a recipient in this state (queued, leased, deferred, held,
        /// delivered, failed).
        #[arg(long)]
        state: Option<String>,
        /// Only messages at least this old (e.g. "1h").
        #[arg(long)]
        min_age: Option<String>,
    },
    /// Show one message: envelope and per-recipient state.
    Show {
        /// Queue id.
        queue_id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Make messages due now; with --domain, every message with a recipient in that domain.
    Retry {
        /// Queue ids.
        queue_ids: Vec<String>,
        /// Flush this destination domain.
        #[arg(long)]
        domain: Option<String>,
    },
    /// Stop delivery attempts for messages until released.
    Hold {
        /// Queue ids.
        #[arg(required = true)]
        queue_ids: Vec<String>,
    },
    /// Release held messages.
    Release {
        /// Queue ids.
        #[arg(required = true)]
        queue_ids: Vec<String>,
    },
    /// Give up on messages: fail their recipients and send the sender a DSN.
    Bounce {
        /// Queue ids.
        #[arg(required = true)]
        queue_ids: Vec<String>,
    },
    /// Delete messages from the queue (no DSN is sent).
    Delete {
        /// Queue ids.
        #[arg(required = true)]
        queue_ids: Vec<String>,
    },
    /// Pending recipients by domain and age (like Postfix's qshape) and the top deferral reasons.
    Summary {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Show at most this many domains and reasons.
        #[arg(long, default_value_t = 20)]
        top: usize,
    },
    /// Stop accepting mail and empty the queue: deliver what it holds, or hand it to a peer
    /// over SMTP. Exit 0 when the queue is empty, 1 when messages remain at the timeout (or
    /// only held ones remain). Needs the running server.
    Drain {
        /// Hand every message to this SMTP peer (`host:port`, `[host]:port`) instead of
        /// delivering it along its own route.
        #[arg(long)]
        peer: Option<String>,
        /// Give up after this long (e.g. "10m").
        #[arg(long, default_value = "10m")]
        timeout: String,
        /// Make deferred recipients due again this often while draining.
        #[arg(long, default_value = "30s")]
        retry_every: String,
    },
}

/// How the CLI reaches the queue.
enum Access {
    Direct(Store),
    Server(SocketAddr),
}

/// How a read-only command reaches the queue: it never opens the store for writing, so looking
/// at a stopped server's queue changes nothing the next start sees (leases stay recorded).
enum ReadAccess {
    Direct(StoreReader),
    Server(SocketAddr),
}

fn queue_path(config: &Config) -> anyhow::Result<std::path::PathBuf> {
    let path = config.data_dir.join("queue.redb");
    if !path.exists() {
        return Err(Exit {
            code: 1,
            message: format!("no queue at {} (is data_dir right?)", path.display()),
        }
        .into());
    }
    Ok(path)
}

fn open(config: &Config) -> anyhow::Result<Access> {
    let path = queue_path(config)?;
    match Store::open(&path, None) {
        Ok(store) => Ok(Access::Direct(store)),
        Err(StoreError::Locked { .. }) => Ok(Access::Server(config.admin.listen)),
        Err(e) => Err(e).with_context(|| format!("opening {}", path.display())),
    }
}

fn open_read_only(config: &Config) -> anyhow::Result<ReadAccess> {
    let path = queue_path(config)?;
    match StoreReader::open(&path) {
        Ok(reader) => Ok(ReadAccess::Direct(reader)),
        Err(StoreError::Locked { .. }) => Ok(ReadAccess::Server(config.admin.listen)),
        Err(e) => Err(e).with_context(|| format!("opening {} read-only", path.display())),
    }
}

fn usage(message: String) -> anyhow::Error {
    Exit { code: 2, message }.into()
}

fn parse_id(s: &str) -> anyhow::Result<QueueId> {
    s.parse::<QueueId>().map_err(|e| usage(e.to_string()))
}

/// Runs a queue command.
pub(crate) fn run(config: &Config, command: QueueCommand) -> anyhow::Result<ExitCode> {
    match command {
        QueueCommand::Summary { json, top } => {
            let list = list_all(config)?;
            let summary = super::summary::summarize(&list, crate::time::UnixTime::now(), top);
            if json {
                println!("{}", serde_json::to_string_pretty(&summary)?);
            } else {
                print!("{}", super::summary::render(&summary));
            }
            Ok(ExitCode::SUCCESS)
        }
        QueueCommand::Drain {
            peer,
            timeout,
            retry_every,
        } => {
            let duration = |key: &str, v: String| {
                parse_duration(key, &Scalar::Text(v)).map_err(|e| usage(e.to_string()))
            };
            let timeout = duration("--timeout", timeout)?;
            let retry_every = duration("--retry-every", retry_every)?;
            drain(config.admin.listen, peer.as_deref(), timeout, retry_every)
        }
        QueueCommand::List {
            json,
            limit,
            sender,
            domain,
            state,
            min_age,
        } => {
            let state = match state {
                None => None,
                Some(s) => Some(
                    serde_json::from_value::<StateKind>(serde_json::Value::String(s.clone()))
                        .map_err(|_| usage(format!("unknown state {s:?}")))?,
                ),
            };
            let min_age = match min_age {
                None => None,
                Some(s) => Some(
                    parse_duration("--min-age", &Scalar::Text(s))
                        .map_err(|e| usage(e.to_string()))?,
                ),
            };
            let filter = ListFilter {
                sender: sender.map(|s| if s == "<>" { String::new() } else { s }),
                recipient_domain: domain,
                state,
                min_age,
            };
            let list: Vec<MessageSummary> = match open_read_only(config)? {
                ReadAccess::Direct(store) => store.list(&filter, limit)?,
                ReadAccess::Server(addr) => {
                    let query = list_query(&filter, limit);
                    let (status, body) = http(addr, "GET", &format!("/api/queue{query}"))?;
                    if status != 200 {
                        anyhow::bail!("server answered {status}: {}", body.trim());
                    }
                    serde_json::from_str(&body).context("reading the server's answer")?
                }
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                print_list(&list);
            }
            Ok(ExitCode::SUCCESS)
        }
        QueueCommand::Show { queue_id, json } => {
            let id = parse_id(&queue_id)?;
            let record: Option<MessageRecord> = match open_read_only(config)? {
                ReadAccess::Direct(store) => store.get(id)?,
                ReadAccess::Server(addr) => {
                    let (status, body) = http(addr, "GET", &format!("/api/queue/{id}"))?;
                    match status {
                        200 => Some(
                            serde_json::from_str(&body).context("reading the server's answer")?,
                        ),
                        404 => None,
                        _ => anyhow::bail!("server answered {status}: {}", body.trim()),
                    }
                }
            };
            let Some(record) = record else {
                eprintln!("no message {id}");
                return Ok(ExitCode::from(1));
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&record)?);
            } else {
                print_record(&record);
            }
            Ok(ExitCode::SUCCESS)
        }
        QueueCommand::Retry { queue_ids, domain } => {
            if queue_ids.is_empty() && domain.is_none() {
                return Err(usage("queue retry needs queue ids or --domain".into()));
            }
            let access = open(config)?;
            if let Some(domain) = domain {
                let n = match &access {
                    Access::Direct(store) => store.retry_domain(Some(&domain))?,
                    Access::Server(addr) => {
                        let (status, body) = http(
                            *addr,
                            "POST",
                            &format!("/api/queue/retry?domain={}", percent_encode(&domain)),
                        )?;
                        if status != 200 {
                            anyhow::bail!("server answered {status}: {}", body.trim());
                        }
                        retried_count(&body)?
                    }
                };
                println!("{domain}: {n} message(s) due now");
            }
            act_on(config, &access, &queue_ids, "retry")
        }
        QueueCommand::Hold { queue_ids } => {
            let access = open(config)?;
            act_on(config, &access, &queue_ids, "hold")
        }
        QueueCommand::Release { queue_ids } => {
            let access = open(config)?;
            act_on(config, &access, &queue_ids, "release")
        }
        QueueCommand::Bounce { queue_ids } => {
            let access = open(config)?;
            act_on(config, &access, &queue_ids, "bounce")
        }
        QueueCommand::Delete { queue_ids } => {
            let ids = queue_ids
                .iter()
                .map(|s| parse_id(s))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let access = open(config)?;
            let mut missing = 0;
            for id in ids {
                let deleted = match &access {
                    Access::Direct(store) => store.delete(id)?,
                    Access::Server(addr) => {
                        let (status, body) = http(*addr, "DELETE", &format!("/api/queue/{id}"))?;
                        match status {
                            204 => true,
                            404 => false,
                            _ => anyhow::bail!("server answered {status}: {}", body.trim()),
                        }
                    }
                };
                if deleted {
                    println!("{id}: deleted");
                } else {
                    eprintln!("{id}: no such message");
                    missing += 1;
                }
            }
            Ok(if missing == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
    }
}

/// Every message, from the store or from the running server.
fn list_all(config: &Config) -> anyhow::Result<Vec<MessageSummary>> {
    Ok(match open(config)? {
        Access::Direct(store) => store.list(&ListFilter::default(), None)?,
        Access::Server(addr) => {
            let (status, body) = http(addr, "GET", "/api/queue")?;
            if status != 200 {
                anyhow::bail!("server answered {status}: {}", body.trim());
            }
            serde_json::from_str(&body).context("reading the server's answer")?
        }
    })
}

/// Recipients still to be delivered, and those among them that are held.
fn pending(list: &[MessageSummary]) -> (usize, usize) {
    let mut pending = 0;
    let mut held = 0;
    for r in list.iter().flat_map(|m| &m.recipients) {
        match r.state {
            StateKind::Delivered | StateKind::Failed => {}
            StateKind::Held => {
                pending += 1;
                held += 1;
            }
            _ => pending += 1,
        }
    }
    (pending, held)
}

/// `queue drain`: tells the server to stop ingress (and perhaps to hand everything to `peer`),
/// then waits for the queue to empty.
fn drain(
    admin: SocketAddr,
    peer: Option<&str>,
    timeout: Duration,
    retry_every: Duration,
) -> anyhow::Result<ExitCode> {
    let path = match peer {
        Some(p) => format!("/api/drain?peer={}", percent_encode(p)),
        None => "/api/drain".to_owned(),
    };
    let (status, body) = http(admin, "POST", &path).map_err(|e| Exit {
        code: 1,
        message: format!("queue drain needs the running server's admin API at {admin}: {e:#}"),
    })?;
    match status {
        200 => {}
        400 => return Err(usage(body.trim().to_owned())),
        _ => anyhow::bail!("server answered {status}: {}", body.trim()),
    }
    match peer {
        Some(p) => println!("draining: ingress stopped; handing the queue to {p}"),
        None => println!("draining: ingress stopped; delivering the queue"),
    }
    let started = std::time::Instant::now();
    let mut last_retry = started;
    let mut last_report = None;
    loop {
        let (status, body) = http(admin, "GET", "/api/queue")?;
        if status != 200 {
            anyhow::bail!("server answered {status}: {}", body.trim());
        }
        let list: Vec<MessageSummary> =
            serde_json::from_str(&body).context("reading the server's answer")?;
        let (pending, held) = pending(&list);
        if list.is_empty() {
            println!("drained: the queue is empty");
            return Ok(ExitCode::SUCCESS);
        }
        if pending > 0 && pending == held {
            println!(
                "drained except {} held message(s) ({held} recipient(s)): release or delete them",
                list.len()
            );
            return Ok(ExitCode::from(1));
        }
        if last_report != Some((list.len(), pending)) {
            println!("{} message(s), {pending} recipient(s) to go", list.len());
            last_report = Some((list.len(), pending));
        }
        if started.elapsed() >= timeout {
            println!(
                "timed out after {}s: {} message(s), {pending} recipient(s) still queued",
                timeout.as_secs(),
                list.len()
            );
            return Ok(ExitCode::from(1));
        }
        if last_retry.elapsed() >= retry_every {
            let (status, body) = http(admin, "POST", "/api/queue/retry")?;
            if status != 200 {
                anyhow::bail!("server answered {status}: {}", body.trim());
            }
            last_retry = std::time::Instant::now();
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// What an operator must know after `hold` or `bounce`: recipients in flight (leased by a
/// running delivery) were left alone, and may still be delivered.
fn in_flight_note(action: &str, record: &MessageRecord) -> Option<String> {
    if !matches!(action, "hold" | "bounce") {
        return None;
    }
    let n = record
        .recipients
        .iter()
        .filter(|r| matches!(r.state, crate::store::RecipientState::Leased { .. }))
        .count();
    (n > 0).then(|| {
        format!(
            "{n} recipient(s) in a delivery attempt right now were left alone; \
             repeat the {action} after the attempt if it is still wanted"
        )
    })
}

/// Applies `action` (retry, hold, release, bounce) to each queue id.
fn act_on(
    config: &Config,
    access: &Access,
    queue_ids: &[String],
    action: &str,
) -> anyhow::Result<ExitCode> {
    let ids = queue_ids
        .iter()
        .map(|s| parse_id(s))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut missing = 0;
    for id in ids {
        // Some(record) when found; the record after the action when there is one.
        let found: Option<Option<MessageRecord>> = match access {
            Access::Direct(store) => {
                let now = crate::time::UnixTime::now();
                match action {
                    "bounce" => {
                        let rt = tokio::runtime::Builder::new_current_thread()
                            .enable_all()
                            .build()?;
                        let scheduler = crate::queue::Scheduler::new(config.queue.clone());
                        match rt.block_on(crate::runner::bounce(
                            store,
                            &scheduler,
                            &config.smtp.hostname,
                            id,
                            "bounced by the administrator",
                        )) {
                            Ok(_) => Some(store.get(id)?),
                            Err(StoreError::NoSuchMessage { .. }) => None,
                            Err(e) => return Err(e.into()),
                        }
                    }
                    _ => {
                        let a = match action {
                            "retry" => AdminAction::Retry,
                            "hold" => AdminAction::Hold,
                            _ => AdminAction::Release,
                        };
                        store.apply(id, &a, now)?.map(Some)
                    }
                }
            }
            Access::Server(addr) => {
                let (status, body) = http(*addr, "POST", &format!("/api/queue/{id}/{action}"))?;
                match status {
                    200 => Some(serde_json::from_str::<MessageRecord>(&body).ok()),
                    404 => None,
                    _ => anyhow::bail!("server answered {status}: {}", body.trim()),
                }
            }
        };
        if let Some(after) = found {
            match after.as_ref().and_then(|r| in_flight_note(action, r)) {
                Some(note) => println!("{id}: {action} ({note})"),
                None => println!("{id}: {action}"),
            }
        } else {
            eprintln!("{id}: no such message");
            missing += 1;
        }
    }
    Ok(if missing == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn list_query(filter: &ListFilter, limit: Option<usize>) -> String {
    let mut parts = Vec::new();
    if let Some(l) = limit {
        parts.push(format!("limit={l}"));
    }
    if let Some(s) = &filter.sender {
        parts.push(format!("sender={}", percent_encode(s)));
    }
    if let Some(d) = &filter.recipient_domain {
        parts.push(format!("domain={}", percent_encode(d)));
    }
    if let Some(s) = filter.state {
        parts.push(format!("state={s}"));
    }
    if let Some(a) = filter.min_age {
        parts.push(format!("min_age_secs={}", a.as_secs()));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("?{}", parts.join("&"))
    }
}

fn percent_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'@') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A minimal HTTP/1.1 request to the admin listener (loopback; no TLS, no redirects).
pub(super) fn http(addr: SocketAddr, method: &str, path: &str) -> anyhow::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .with_context(|| format!("the admin API at {addr} does not answer"))?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("malformed HTTP answer")?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let body = &raw[split + 4..];
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("malformed HTTP status line")?;
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return Ok((status, String::from_utf8_lossy(&dechunk(body)).into_owned()));
    }
    Ok((status, String::from_utf8_lossy(body).into_owned()))
}

/// The count in the server's answer to `/api/queue/retry`: JSON lines of progress, the last one
/// `"done": true` with the count or an error.
fn retried_count(body: &str) -> anyhow::Result<u64> {
    let last = body
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    let v: serde_json::Value = serde_json::from_str(last).context("reading the server's answer")?;
    if v["done"] != serde_json::Value::Bool(true) {
        anyhow::bail!("the server stopped answering before the retry was done: {last}");
    }
    if let Some(error) = v["error"].as_str() {
        anyhow::bail!("the server could not retry: {error}");
    }
    v["retried"]
        .as_u64()
        .context("the server's answer has no count")
}

/// Joins the chunks of a chunked HTTP body. Works on bytes: a chunk boundary may fall inside a
/// UTF-8 character, so the text is decoded only once it is whole.
fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = body.windows(2).position(|w| w == b"\r\n") {
        let size = std::str::from_utf8(&body[..eol]).unwrap_or("");
        // Chunk extensions (`;name=value`) are allowed after the size (RFC 9112 §7.1.1).
        let size = size.split(';').next().unwrap_or("").trim();
        let Ok(n) = usize::from_str_radix(size, 16) else {
            break;
        };
        let rest = &body[eol + 2..];
        if n == 0 || rest.len() < n {
            break;
        }
        out.extend_from_slice(&rest[..n]);
        body = rest[n..].strip_prefix(b"\r\n").unwrap_or(&rest[n..]);
    }
    out
}

fn print_list(list: &[MessageSummary]) {
    println!(
        "{:<16}  {:<19}  {:>9}  SENDER",
        "QUEUE ID", "ARRIVAL (UTC)", "SIZE"
    );
    for m in list {
        println!(
            "{:<16}  {}  {:>9}  <{}>",
            m.queue_id,
            utc_timestamp(m.arrival),
            m.size,
            m.sender
        );
        for r in &m.recipients {
            let mut line = format!("{:>20}  {:<9}  {}", "", r.state.to_string(), r.address);
            if r.attempts > 0 {
                line.push_str(&format!("  attempts={}", r.attempts));
            }
            if let Some(next) = r.next_attempt {
                line.push_str(&format!("  next={}", utc_timestamp(next)));
            }
            if let Some(e) = &r.last_error {
                line.push_str(&format!("  last_error={e:?}"));
            }
            println!("{line}");
        }
    }
    let rcpts: usize = list.iter().map(|m| m.recipients.len()).sum();
    println!("-- {} message(s), {} recipient(s)", list.len(), rcpts);
}

fn print_record(r: &MessageRecord) {
    let e = &r.envelope;
    println!("queue id:  {}", r.queue_id);
    println!(
        "arrival:   {} UTC",
        utc_timestamp(crate::time::UnixTime(e.arrival_unix))
    );
    println!("size:      {}", r.size);
    println!("sender:    <{}>", e.sender);
    println!("client:    {} (helo {})", e.client, e.helo);
    println!("tls:       {}", e.tls.as_deref().unwrap_or("none"));
    println!("auth:      {}", e.auth_user.as_deref().unwrap_or("none"));
    if e.dsn_ret.is_some() || e.dsn_envid.is_some() {
        println!("dsn:       ret={:?} envid={:?}", e.dsn_ret, e.dsn_envid);
    }
    println!("recipients:");
    for rs in &r.recipients {
        println!("  {}", serde_json::to_string(rs).unwrap_or_default());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_retry_count_is_the_last_line_and_only_when_done() {
        let done = "{\"retried\":4096,\"done\":false}\n{\"retried\":5000,\"done\":true}\n";
        assert_eq!(retried_count(done).unwrap(), 5000);
        let cut = "{\"retried\":4096,\"done\":false}\n";
        assert!(
            retried_count(cut).is_err(),
            "a progress line is not the answer"
        );
        let failed = "{\"error\":\"disk on fire\",\"done\":true}\n";
        assert!(
            retried_count(failed)
                .unwrap_err()
                .to_string()
                .contains("disk on fire")
        );
        assert!(retried_count("").is_err());
    }

    #[test]
    fn hold_and_bounce_say_when_recipients_in_flight_were_left_alone() {
        use crate::store::{RecipientState, RecipientStatus};
        use crate::time::UnixTime;
        let envelope = crate::envelope::Envelope::for_test("a@x.example", &["b@y", "c@y"], 0);
        let mut record = MessageRecord {
            queue_id: QueueId(1),
            envelope,
            size: 1,
            recipients: vec![RecipientStatus::new("b@y"), RecipientStatus::new("c@y")],
            delay_warned: false,
        };
        record.recipients[0].state = RecipientState::Held;
        assert_eq!(in_flight_note("hold", &record), None);
        record.recipients[1].state = RecipientState::Leased { until: UnixTime(9) };
        let note = in_flight_note("hold", &record).expect("a note");
        assert!(
            note.starts_with("1 recipient(s) in a delivery attempt"),
            "{note}"
        );
        assert!(in_flight_note("bounce", &record).is_some());
        assert_eq!(in_flight_note("retry", &record), None);
        assert_eq!(in_flight_note("release", &record), None);
    }

    #[test]
    fn chunked_bodies_are_joined() {
        assert_eq!(dechunk(b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"), b"abcde");
    }

    /// Issue 7: the body was sliced as `&str` by chunk sizes and panicked when a chunk ended
    /// inside a UTF-8 character (a sender named "José" in `queue list` is enough).
    #[test]
    fn a_chunk_boundary_inside_a_character_is_joined_not_a_panic() {
        let rows: &[(&[u8], &str)] = &[
            (b"4\r\nJos\xc3\r\n1\r\n\xa9\r\n0\r\n\r\n", "Jos\u{e9}"),
            (
                b"1\r\n\xe2\r\n1\r\n\x82\r\n1;ext=1\r\n\xac\r\n0\r\n\r\n",
                "\u{20ac}",
            ),
            (b"5\r\nab", ""),
            (b"zz\r\nab\r\n", ""),
        ];
        for (body, text) in rows {
            assert_eq!(String::from_utf8_lossy(&dechunk(body)), *text);
        }
        // The same through the HTTP client, against a socket that sends such an answer.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            use std::io::{Read, Write};
            // Another process's port probe may connect first: answer the one that asks.
            let mut s = loop {
                let (mut s, _) = listener.accept().unwrap();
                let mut req = [0u8; 1024];
                if matches!(s.read(&mut req), Ok(n) if req[..n].starts_with(b"GET")) {
                    break s;
                }
            };
            s.write_all(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
                  4\r\nJos\xc3\r\n1\r\n\xa9\r\n0\r\n\r\n",
            )
            .unwrap();
        });
        let (status, body) = http(addr, "GET", "/api/queue").unwrap();
        server.join().unwrap();
        assert_eq!((status, body.as_str()), (200, "Jos\u{e9}"));
    }
}
