//! `dimegate dmtp sgnt|vrfy|hist NAME` (a `dig` for DIME), `dimegate dmtp send FILE` (one
//! transfer, e.g. a DIME author's submission to its own organization) and `dimegate lookup
//! NAME` (the whole discovery chain). Both run the server's own [`crate::discovery::Discovery`], configured from
//! `[dmtp]` and `[dns]`, so what they print is what the gateway would find.
//!
//! Exit codes: 0 found and valid, 1 the look-up failed or the signet does not validate, 2 usage
//! or invalid configuration.

use crate::config::Config;
use crate::dime::{DxRecord, Level, Signet};
use crate::discovery::connection::Transport;
use crate::discovery::{Contact, Discovery, DiscoveryError, DiscoveryMetrics, Found, Target};
use crate::dmtp::client::{ClientEvent, Job, Lookup, VrfyStatus};
use crate::dmtp::codec::{HistRange, SignetName};
use crate::resolve::Verdict;
use anyhow::Context;
use clap::{Args, Subcommand};
use std::net::SocketAddr;
use std::process::ExitCode;

const FAILED: u8 = 1;
const USAGE: u8 = 2;

/// `dimegate dmtp …`
#[derive(Debug, Subcommand)]
pub enum DmtpCommand {
    /// `SGNT`: fetch a signet and print it armored, with its fingerprint and validity.
    Sgnt(DmtpArgs),
    /// `VRFY`: is a signet current? Prints CURRENT or UPDATE <fingerprint>.
    Vrfy(DmtpArgs),
    /// `HIST`: a user's chain of custody, oldest first, each link checked.
    Hist(DmtpArgs),
    /// `MAIL`/`RCPT`/`DATA`: transfer a sealed D/MIME message (a file) and print the server's
    /// transaction id. By default a *submission*: `RCPT TO` is the origin's own domain, as a DIME
    /// author hands mail sealed with `message seal` (without `--origin-key`) to its own
    /// organization.
    Send(SendArgs),
}

/// `dimegate dmtp send`
#[derive(Debug, Args)]
pub struct SendArgs {
    /// The D/MIME message.
    pub file: std::path::PathBuf,
    /// The origin organization's domain (`MAIL FROM`).
    #[arg(long)]
    pub origin: String,
    /// The origin's org signet: `MAIL` names its fingerprint.
    #[arg(long)]
    pub origin_signet: std::path::PathBuf,
    /// The destination organization (`RCPT TO`); default: the origin (a submission).
    #[arg(long)]
    pub to: Option<String>,
    /// The destination's org signet, whose fingerprint `RCPT` names (default: none for another
    /// domain, the origin's for a submission).
    #[arg(long)]
    pub destination_signet: Option<std::path::PathBuf>,
    /// Connect to this DMTP server (TLS from the first byte) instead of the destination's DX;
    /// the certificate is still checked against the `_dx` record, if there is one.
    #[arg(long, value_name = "HOST:PORT")]
    pub server: Option<String>,
}

/// Where and what to ask.
#[derive(Debug, Args)]
pub struct DmtpArgs {
    /// A domain (org signet) or a mailbox (user signet).
    pub name: String,
    /// The fingerprint: for `sgnt` the signet wanted, for `vrfy` the one held (default: the
    /// current one, fetched first), for `hist` where the chain starts.
    #[arg(long)]
    pub fingerprint: Option<String>,
    /// Ask this DMTP server (TLS from the first byte) instead of the DX discovery finds; the
    /// certificate is still checked against the `_dx` record, if there is one.
    #[arg(long, value_name = "HOST:PORT")]
    pub server: Option<String>,
    /// With --server: the port is an SMTP port, enter DMTP by dual mode (DIME.md §10.1).
    #[arg(long, requires = "server")]
    pub dual_mode: bool,
}

/// `dimegate dmtp ARGS`.
pub fn run_dmtp(config: &Config, cmd: DmtpCommand) -> anyhow::Result<ExitCode> {
    runtime()?.block_on(dmtp(config, cmd))
}

/// `dimegate lookup NAME`.
pub fn run_lookup(config: &Config, name: &str) -> anyhow::Result<ExitCode> {
    runtime()?.block_on(lookup(config, name))
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")
}

fn discovery(config: &Config) -> anyhow::Result<Discovery> {
    let resolver = crate::resolve::Resolver::new(&config.dns)?;
    Ok(crate::serve::discovery(
        config,
        &resolver,
        DiscoveryMetrics::unregistered(),
    )?)
}

fn contact_lines(c: &Contact) -> String {
    let transport = match c.transport {
        Transport::Tls => "DMTP over TLS",
        Transport::DualMode => "dual mode (SMTP STARTTLS MODE=DMTPv1)",
    };
    format!(
        "server: {} {} ({transport})\ncertificate: {}\n",
        c.host, c.addr, c.trust
    )
}

/// The org signet's validity under the record (§9.5), or a user signet's under its org signet.
fn validity(signet: &Signet, record: &DxRecord, org: Option<&Signet>) -> Result<String, String> {
    let v = match org {
        None => record.validate_org_signet(signet),
        Some(org) => signet.validate(Some(org)),
    }
    .map_err(|e| e.to_string())?;
    let under = if org.is_some() {
        "under the org signet"
    } else {
        "under a POK of the _dx record"
    };
    if v.level < Level::Full {
        return Err(format!("validates only to the {} level {under}", v.level));
    }
    Ok(format!("valid to the {} level {under}", v.level))
}

fn signet_lines(signet: &Signet) -> String {
    format!(
        "kind: {}\nfingerprint: {}\n{}",
        signet.kind().name(),
        signet.crypto_fingerprint(),
        signet.armor()
    )
}

async fn dmtp(config: &Config, cmd: DmtpCommand) -> anyhow::Result<ExitCode> {
    let (verb, args) = match &cmd {
        DmtpCommand::Sgnt(a) => ("sgnt", a),
        DmtpCommand::Vrfy(a) => ("vrfy", a),
        DmtpCommand::Hist(a) => ("hist", a),
        DmtpCommand::Send(a) => return send(config, a).await,
    };
    let Ok(name) = SignetName::parse(&args.name) else {
        eprintln!("error: {:?} is neither a domain nor a mailbox", args.name);
        return Ok(ExitCode::from(USAGE));
    };
    let fingerprint = match args.fingerprint.as_deref().map(str::parse) {
        None => None,
        Some(Ok(fp)) => Some(fp),
        Some(Err(_)) => {
            eprintln!("error: --fingerprint is not a signet fingerprint");
            return Ok(ExitCode::from(USAGE));
        }
    };
    let discovery = discovery(config)?;
    let domain = name.domain().as_str().to_owned();
    let (record, verdict) = match discovery.record(&domain).await {
        Ok(found) => {
            println!("record: _dx.{domain} ({})", found.1);
            found
        }
        // A server named on the command line can be asked without a record (WebPKI only).
        Err(DiscoveryError::NoRecord { .. }) if args.server.is_some() => {
            println!("record: none for {domain}");
            (DxRecord::default(), Verdict::Insecure)
        }
        Err(e) => {
            println!("record: {e}");
            return Ok(ExitCode::from(FAILED));
        }
    };
    let user = matches!(name, SignetName::User(_));
    let mut jobs = Vec::new();
    // A user signet is judged under its org signet: fetch that in the same session.
    if user && verb != "vrfy" {
        jobs.push(Job::Lookup(Lookup::Sgnt {
            name: SignetName::Org(name.domain().clone()),
            fingerprint: None,
        }));
    }
    jobs.push(Job::Lookup(match (verb, fingerprint) {
        ("sgnt", fingerprint) => Lookup::Sgnt {
            name: name.clone(),
            fingerprint,
        },
        ("vrfy", Some(fp)) => Lookup::Vrfy {
            name: name.clone(),
            fingerprint: fp,
        },
        ("vrfy", None) => Lookup::Sgnt {
            name: name.clone(),
            fingerprint: None,
        },
        (_, start) => Lookup::Hist {
            name: name.clone(),
            range: start.map_or(HistRange::All, HistRange::From),
        },
    }));
    let session = |jobs: Vec<Job>| {
        let (discovery, domain, record, server) = (&discovery, &domain, &record, &args.server);
        async move {
            match server {
                None => discovery.run(domain, record, verdict, jobs).await,
                Some(server) => {
                    let (target, addr) = server_target(discovery, server, args.dual_mode).await?;
                    discovery
                        .run_at(domain, record, verdict, &target, addr, jobs)
                        .await
                }
            }
        }
    };
    let (mut events, contact) = match session(jobs).await {
        Ok(done) => done,
        Err(e) => {
            println!("error: {e}");
            return Ok(ExitCode::from(FAILED));
        }
    };
    print!("{}", contact_lines(&contact));
    // `vrfy` without a fingerprint: the current one first, then VRFY it (a second session, as
    // a resolver holding a signet would do).
    if verb == "vrfy" && args.fingerprint.is_none() {
        let current = match signets(&events).first() {
            Some(s) => s.crypto_fingerprint(),
            None => return failed(&events),
        };
        println!("held: {current}");
        events = match session(vec![Job::Lookup(Lookup::Vrfy {
            name: name.clone(),
            fingerprint: current,
        })])
        .await
        {
            Ok((events, _)) => events,
            Err(e) => {
                println!("error: {e}");
                return Ok(ExitCode::from(FAILED));
            }
        };
    }
    let mut ok = true;
    let org = if user {
        match signets(&events).first() {
            Some(org) => match validity(org, &record, None) {
                Ok(v) => {
                    println!("org signet: {} ({v})", org.crypto_fingerprint());
                    Some(org.clone())
                }
                Err(e) => {
                    println!("org signet: {} INVALID: {e}", org.crypto_fingerprint());
                    None
                }
            },
            None if verb == "vrfy" => None,
            None => return failed(&events),
        }
    } else {
        None
    };
    match verb {
        "vrfy" => match events.iter().find_map(|e| match e {
            ClientEvent::Verified { status, .. } => Some(status),
            _ => None,
        }) {
            Some(VrfyStatus::Current) => println!("CURRENT"),
            Some(VrfyStatus::Update(fp)) => println!("UPDATE {fp}"),
            None => return failed(&events),
        },
        "sgnt" => {
            let Some(signet) = signets(&events).into_iter().nth(usize::from(user)) else {
                return failed(&events);
            };
            if user && org.is_none() {
                println!("validity: unknown (no valid org signet)");
                ok = false;
            } else {
                match validity(&signet, &record, org.as_ref()) {
                    Ok(v) => println!("validity: {v}"),
                    Err(e) => {
                        println!("validity: INVALID: {e}");
                        ok = false;
                    }
                }
            }
            print!("{}", signet_lines(&signet));
        }
        _ => {
            let Some(chain) = events.iter().find_map(|e| match e {
                ClientEvent::History { signets, .. } => Some(signets),
                _ => None,
            }) else {
                return failed(&events);
            };
            let mut previous: Option<Signet> = None;
            for (i, bytes) in chain.iter().enumerate() {
                let Ok(s) = Signet::parse(bytes) else {
                    println!("{}: does not parse", i + 1);
                    ok = false;
                    continue;
                };
                let custody = match &previous {
                    None => "first".to_owned(),
                    Some(p) => match s.verify_custody(p.signing_key()) {
                        Ok(()) => "custody signed by the previous key".to_owned(),
                        Err(e) => {
                            ok = false;
                            format!("custody INVALID: {e}")
                        }
                    },
                };
                let valid = match &org {
                    Some(org) => validity(&s, &record, Some(org)).unwrap_or_else(|e| {
                        ok = false;
                        format!("INVALID: {e}")
                    }),
                    None => "not checked (no valid org signet)".into(),
                };
                println!("{}: {} ({valid}; {custody})", i + 1, s.crypto_fingerprint());
                previous = Some(s);
            }
        }
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(FAILED)
    })
}

/// `--server HOST:PORT`: the host names the certificate; an IP literal is connected to as is.
async fn server_target(
    discovery: &Discovery,
    server: &str,
    dual_mode: bool,
) -> Result<(Target, SocketAddr), DiscoveryError> {
    let bad = |why: &str| DiscoveryError::Unreachable {
        domain: server.to_owned(),
        attempts: vec![why.to_owned()],
    };
    let (host, port) = match server.parse::<SocketAddr>() {
        Ok(addr) => (addr.ip().to_string(), addr.port()),
        Err(_) => {
            let (h, p) = server
                .rsplit_once(':')
                .ok_or_else(|| bad("not HOST:PORT"))?;
            (h.to_owned(), p.parse().map_err(|_| bad("bad port"))?)
        }
    };
    let ip = match host.parse() {
        Ok(ip) => ip,
        Err(_) => *discovery
            .addresses(&host)
            .await?
            .first()
            .ok_or_else(|| bad("no address"))?,
    };
    let target = Target {
        host,
        port,
        transport: if dual_mode {
            Transport::DualMode
        } else {
            Transport::Tls
        },
    };
    Ok((target, SocketAddr::new(ip, port)))
}

/// `dmtp send`: one transfer; exit 0 with `accepted [txid]`, 1 with the server's refusal.
async fn send(config: &Config, args: &SendArgs) -> anyhow::Result<ExitCode> {
    use crate::dmtp::client::Delivery;
    use crate::dmtp::codec::Domain;
    let message = std::fs::read(&args.file).with_context(|| format!("{}", args.file.display()))?;
    let origin_signet = super::dime::load_signet(&args.origin_signet)?;
    let to = args.to.as_deref().unwrap_or(&args.origin);
    let (Ok(origin), Ok(destination)) = (Domain::parse(&args.origin), Domain::parse(to)) else {
        eprintln!("error: --origin and --to must be domain names");
        return Ok(ExitCode::from(USAGE));
    };
    let destination_fingerprint = match &args.destination_signet {
        Some(path) => Some(super::dime::load_signet(path)?.crypto_fingerprint()),
        None if args.to.is_none() => Some(origin_signet.crypto_fingerprint()),
        None => None,
    };
    let discovery = discovery(config)?;
    let domain = destination.as_str().to_owned();
    let (record, verdict) = match discovery.record(&domain).await {
        Ok(found) => found,
        Err(DiscoveryError::NoRecord { .. }) if args.server.is_some() => {
            (DxRecord::default(), Verdict::Insecure)
        }
        Err(e) => {
            println!("record: {e}");
            return Ok(ExitCode::from(FAILED));
        }
    };
    let jobs = vec![Job::Deliver(Delivery {
        origin,
        origin_fingerprint: origin_signet.crypto_fingerprint(),
        destination,
        destination_fingerprint,
        ret: None,
        data_type: None,
        message,
    })];
    let ran = match &args.server {
        None => discovery.run(&domain, &record, verdict, jobs).await,
        Some(server) => match server_target(&discovery, server, false).await {
            Ok((target, addr)) => {
                discovery
                    .run_at(&domain, &record, verdict, &target, addr, jobs)
                    .await
            }
            Err(e) => Err(e),
        },
    };
    let events = match ran {
        Ok((events, _)) => events,
        Err(e) => {
            println!("error: {e}");
            return Ok(ExitCode::from(FAILED));
        }
    };
    match events.iter().find_map(|e| match e {
        ClientEvent::Delivered { txid, .. } => Some(txid),
        _ => None,
    }) {
        Some(txid) => {
            let txid = txid.as_ref().map(|t| t.to_string()).unwrap_or_default();
            println!("accepted [{txid}]");
            Ok(ExitCode::SUCCESS)
        }
        None => failed(&events),
    }
}

fn signets(events: &[ClientEvent]) -> Vec<Signet> {
    events
        .iter()
        .filter_map(|e| match e {
            ClientEvent::Signet { signet, .. } => Signet::parse(signet).ok(),
            _ => None,
        })
        .collect()
}

fn failed(events: &[ClientEvent]) -> anyhow::Result<ExitCode> {
    match events.iter().find_map(|e| match e {
        ClientEvent::Failed { error, .. } => Some(error),
        _ => None,
    }) {
        Some(error) => println!("refused: {error}"),
        None => println!("refused: no answer"),
    }
    Ok(ExitCode::from(FAILED))
}

async fn lookup(config: &Config, name: &str) -> anyhow::Result<ExitCode> {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    let Ok(parsed) = SignetName::parse(&name) else {
        eprintln!("error: {name:?} is neither a domain nor an address");
        return Ok(ExitCode::from(USAGE));
    };
    let discovery = discovery(config)?;
    let domain = parsed.domain().as_str().to_owned();
    let (record, verdict) = match discovery.record(&domain).await {
        Ok(found) => found,
        Err(e) => {
            println!("record: _dx.{domain}: {e}");
            if e.is_bogus() {
                println!("dnssec: bogus (never delivered to, never downgraded to SMTP)");
            }
            return Ok(ExitCode::from(FAILED));
        }
    };
    println!(
        "record: _dx.{domain} {}",
        record.to_zone_rdata().unwrap_or_default()
    );
    println!("dnssec: {verdict}");
    match discovery.targets_of(&domain, &record).await {
        Ok(targets) => {
            for (i, t) in targets.iter().enumerate() {
                let how = match t.transport {
                    Transport::Tls => "tls",
                    Transport::DualMode => "dual-mode",
                };
                println!("target {}: {}:{} {how}", i + 1, t.host, t.port);
            }
        }
        Err(e) => println!("targets: {e}"),
    }
    if let Some(ca) = &config.dmtp.ca_file {
        println!("roots: Web PKI and ca_file {}", ca.display());
    }
    let org = discovery.org_signet(&domain).await;
    let ok = print_found("org signet", &org);
    let mut user_ok = true;
    if ok && matches!(parsed, SignetName::User(_)) {
        user_ok = print_found("user signet", &discovery.user_signet(&name).await);
    }
    Ok(if ok && user_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(FAILED)
    })
}

fn print_found(what: &str, found: &Result<Found, DiscoveryError>) -> bool {
    match found {
        Ok(found) => {
            match &found.contact {
                Some(c) => {
                    println!("dx chosen: {} {}", c.host, c.addr);
                    print!("{}", contact_lines(c));
                    println!("{what} cache: miss (fetched)");
                }
                None => println!("{what} cache: hit"),
            }
            println!(
                "{what}: {} ({})",
                found.signet.crypto_fingerprint(),
                found.signet.identifier().unwrap_or("no id")
            );
            true
        }
        Err(e) => {
            println!("{what}: {e}");
            false
        }
    }
}
