//! Configuration: the TOML file, its defaults, and validation into typed values.
//!
//! The file is parsed into plain serde structs (`RawConfig`, unknown keys refused), then converted
//! once into [`Config`], whose fields cannot hold an invalid value. Every error names the key path
//! (`smtp.listen`, `domain[1].name`) and the reason; a TOML syntax error names its line and
//! column. Every duration, size and count has bounds, so no value that passes `config check`
//! can overflow later (an `Instant + Duration`, a buffer size). A default that conflicts with a
//! value the user set adapts to it; only two settings the user wrote can conflict.
//! `dimegate config check` runs the same code.

use ipnet::IpNet;
use serde::Deserialize;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A configuration that cannot be used, with the key it is about.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{path}: {reason}")]
pub struct ConfigError {
    /// Dotted key path, e.g. `smtp.max_message_size` or `user[0].password_hash`; `(file)` for
    /// problems with the file as a whole.
    pub path: String,
    /// What is wrong with it.
    pub reason: String,
}

impl ConfigError {
    fn new(path: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError {
            path: path.into(),
            reason: reason.into(),
        }
    }
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the queue, keys and generated certificates live.
    pub data_dir: PathBuf,
    /// The SMTP listeners and limits.
    pub smtp: SmtpConfig,
    /// Certificate and key for STARTTLS and implicit TLS; `None`: generate a self-signed pair.
    pub tls: Option<TlsFiles>,
    /// The admin HTTP listener.
    pub admin: AdminConfig,
    /// Domains this gateway serves, in [`Domain`](crate::domain::Domain)'s form (lower-case
    /// A-labels, no trailing dot).
    pub domains: Vec<String>,
    /// Client networks allowed to relay without AUTH.
    pub relay_networks: Vec<IpNet>,
    /// Users who may AUTH.
    pub users: Vec<User>,
    /// The MTA behind the gateway that receives mail for the served domains.
    pub backend: Option<Backend>,
    /// `[relay] smarthost`: all other outbound mail goes there instead of to MX hosts.
    pub smarthost: Option<crate::deliver::NextHop>,
    /// Outbound delivery: timeouts, caps, TLS policy per destination.
    pub delivery: crate::deliver::DeliverySettings,
    /// DNS resolution for MX lookups.
    pub dns: crate::resolve::ResolverSettings,
    /// Retry schedule, expiry, DSN and back-pressure policy.
    pub queue: crate::queue::Policy,
    /// How often the scheduler looks for due work when nothing wakes it earlier.
    pub queue_poll_interval: Duration,
    /// The queue store's page cache in bytes (`queue.store_cache`): bounds the store's memory
    /// whatever the queue's size.
    pub store_cache_bytes: usize,
    /// The bytes of queued bodies held whole in memory at once (`queue.whole_body_budget`):
    /// DIME sealing and DSNs read a body whole, the rest stream it ([`crate::body::WholeBodies`]).
    /// A message larger than the budget is still read, alone.
    pub whole_body_budget_bytes: usize,
    /// Org key and signet files kept outside the data directory, by domain (`[[domain]]
    /// org_key`, `org_signet`); other domains' identities live under `data_dir/dime`.
    pub org_key_files: std::collections::BTreeMap<String, crate::identity::OrgKeyFiles>,
    /// `[dmtp]`: the DMTP listener and what `_dx` records publish.
    pub dmtp: DmtpConfig,
    /// `[bridge]` and `[[destination]] dime`/`fallback`: which mail goes out as DIME.
    pub dime_policies: crate::runner::DimePolicies,
}

/// `[dmtp]`.
#[derive(Debug, Clone)]
pub struct DmtpConfig {
    /// DMTP listeners (TLS from the first byte; port 26 in production).
    pub listen: Vec<SocketAddr>,
    /// The DX host names that `dimegate record` publishes as `dx=` (default: `smtp.hostname`).
    pub dx: Vec<String>,
    /// The DMTP certificate (RSA, for TLS 1.2 ECDHE-RSA-AES256-GCM-SHA384); `None`: generated
    /// on first start under `data_dir/dmtp-tls`.
    pub tls: Option<TlsFiles>,
    /// The port other DX hosts are reached on with TLS from the first byte (26; tests move it).
    pub connect_port: u16,
    /// The SMTP port MX hosts are tried on in dual mode (25; tests move it).
    pub dual_mode_port: u16,
    /// Extra roots for DX certificates that are not pinned under DNSSEC.
    pub ca_file: Option<PathBuf>,
    /// Largest D/MIME message accepted over DMTP (default: `smtp.max_message_size` plus the
    /// sealing overhead).
    pub max_message_size: u64,
    /// `[[dmtp.static]]`: domains whose `_dx` record and DX address are configured here instead
    /// of looked up in DNS, by lower-case domain name. Operator configuration: trusted as a
    /// DNSSEC-secure record is.
    pub statics: std::collections::BTreeMap<String, crate::discovery::StaticDx>,
    /// `pool_sessions` (idle DMTP sessions kept per destination for the next transaction; 0:
    /// close each after its jobs; at most `delivery.max_connections_per_hop` are open at once)
    /// and `pool_idle_timeout` (how long one is kept idle).
    pub pool: crate::discovery::pool::PoolPolicy,
}

/// `[backend]`.
#[derive(Debug, Clone)]
pub struct Backend {
    /// The next hop for served domains.
    pub hop: crate::deliver::NextHop,
}

/// `[smtp]`.
#[derive(Debug, Clone)]
pub struct SmtpConfig {
    /// Plain SMTP listeners (STARTTLS offered).
    pub listen: Vec<SocketAddr>,
    /// Implicit-TLS listeners (submissions, RFC 8314).
    pub tls_listen: Vec<SocketAddr>,
    /// The name in the greeting and in `Received:`.
    pub hostname: String,
    /// Largest message accepted, in bytes.
    pub max_message_size: u64,
    /// Most recipients per message.
    pub max_recipients: usize,
    /// Errors tolerated before the session is dropped.
    pub max_errors: usize,
    /// How long the server waits for the client's next bytes.
    pub idle_timeout: Duration,
    /// The longest a session may last.
    pub session_timeout: Duration,
    /// Most concurrent connections in total.
    pub max_connections: usize,
    /// Most concurrent connections from one IP address.
    pub max_connections_per_ip: usize,
    /// Recipients over `max_recipients` per session answered 452 without counting as errors.
    pub max_recipient_overshoot: usize,
    /// After SIGTERM, how long a session inside a message may go on before its `421`.
    pub shutdown_grace: Duration,
    /// Connections per second and AUTH failures per client.
    pub rate_limits: crate::smtp::ratelimit::RateLimits,
}

/// `[tls]`.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

/// `[admin]`.
#[derive(Debug, Clone)]
pub struct AdminConfig {
    /// Where `/metrics`, `/healthz`, `/readyz` and the queue API listen.
    pub listen: SocketAddr,
}

/// One `[[user]]` allowed to AUTH.
#[derive(Debug, Clone)]
pub struct User {
    /// The login name.
    pub name: String,
    /// A PHC string (`$argon2id$...` or `$scrypt$...`); never the password itself.
    pub password_hash: String,
}

impl Default for Config {
    fn default() -> Self {
        Config::from_raw(RawConfig::default()).expect("embedded defaults are valid")
    }
}

impl Config {
    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::new("(file)", format!("cannot read {}: {e}", path.display()))
        })?;
        Config::parse(&text)
    }

    /// Parses and validates configuration text.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let de = toml::Deserializer::parse(text)
            .map_err(|e| ConfigError::new("(file)", located(text, &e)))?;
        let raw: RawConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            ConfigError::new(
                if path == "." { "(file)".into() } else { path },
                located(text, &inner),
            )
        })?;
        Config::from_raw(raw)
    }

    /// Converts the raw file into validated values.
    pub fn from_raw(raw: RawConfig) -> Result<Config, ConfigError> {
        let s = raw.smtp;
        let listen = parse_addrs("smtp.listen", &s.listen)?;
        let tls_listen = parse_addrs("smtp.tls_listen", &s.tls_listen)?;
        if listen.is_empty() && tls_listen.is_empty() {
            return Err(ConfigError::new(
                "smtp.listen",
                "no SMTP listener configured",
            ));
        }
        if s.hostname.is_empty() || !s.hostname.bytes().all(is_hostname_byte) {
            return Err(ConfigError::new(
                "smtp.hostname",
                format!("not a host name: {:?}", s.hostname),
            ));
        }
        // The body is held in memory until it is stored: 1 GiB bounds what one client can pin.
        let max_message_size = parse_size_in(
            "smtp.max_message_size",
            &s.max_message_size,
            1 << 10,
            1 << 30,
        )?;
        let positive = |path: &str, v: usize| count_in(path, v, 1, 1_000_000);
        let auth_backoff = duration_in("smtp.auth_backoff", &s.auth_backoff, SECOND, DAY)?;
        let auth_backoff_max =
            duration_in("smtp.auth_backoff_max", &s.auth_backoff_max, SECOND, DAY)?;
        if auth_backoff_max < auth_backoff {
            return Err(ConfigError::new(
                "smtp.auth_backoff_max",
                format!(
                    "{} is shorter than smtp.auth_backoff ({})",
                    show_duration(auth_backoff_max),
                    show_duration(auth_backoff)
                ),
            ));
        }
        let mut exempt = Vec::new();
        for (i, n) in s.rate_limit_exempt.iter().enumerate() {
            exempt.push(parse_network(&format!("smtp.rate_limit_exempt[{i}]"), n)?);
        }
        let rate_limits = crate::smtp::ratelimit::RateLimits {
            connections_per_second: count_in(
                "smtp.connection_rate_per_ip",
                s.connection_rate_per_ip,
                0,
                100_000,
            )?,
            auth_failures: count_in("smtp.auth_failures_per_ip", s.auth_failures_per_ip, 0, 1000)?,
            auth_backoff,
            auth_backoff_max,
            exempt,
        };
        let smtp = SmtpConfig {
            listen,
            tls_listen,
            hostname: s.hostname.to_ascii_lowercase(),
            max_message_size,
            max_recipients: count_in("smtp.max_recipients", s.max_recipients, 1, 100_000)?,
            max_errors: count_in("smtp.max_errors", s.max_errors, 1, 1000)?,
            idle_timeout: duration_in("smtp.idle_timeout", &s.idle_timeout, SECOND, HOUR)?,
            session_timeout: duration_in("smtp.session_timeout", &s.session_timeout, SECOND, DAY)?,
            max_connections: positive("smtp.max_connections", s.max_connections)?,
            max_connections_per_ip: positive(
                "smtp.max_connections_per_ip",
                s.max_connections_per_ip,
            )?,
            max_recipient_overshoot: count_in(
                "smtp.max_recipient_overshoot",
                s.max_recipient_overshoot,
                0,
                1_000_000,
            )?,
            shutdown_grace: duration_in(
                "smtp.shutdown_grace",
                &s.shutdown_grace,
                Duration::ZERO,
                5 * MINUTE,
            )?,
            rate_limits,
        };

        let tls = match (raw.tls.cert, raw.tls.key) {
            (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
            (None, None) => None,
            (Some(_), None) => {
                return Err(ConfigError::new(
                    "tls.key",
                    "tls.cert is set but tls.key is not",
                ));
            }
            (None, Some(_)) => {
                return Err(ConfigError::new(
                    "tls.cert",
                    "tls.key is set but tls.cert is not",
                ));
            }
        };

        let admin = AdminConfig {
            listen: parse_addr("admin.listen", &raw.admin.listen)?,
        };

        let mut domains: Vec<String> = Vec::new();
        let mut org_key_files = std::collections::BTreeMap::new();
        for (i, d) in raw.domain.iter().enumerate() {
            let path = format!("domain[{i}].name");
            let name = crate::domain::Domain::parse(&d.name)
                .map(|d| d.to_string())
                .unwrap_or_default();
            if name.is_empty() || name.len() > 253 || !name.bytes().all(is_hostname_byte) {
                return Err(ConfigError::new(
                    path,
                    format!("not a domain name: {:?}", d.name),
                ));
            }
            if domains.contains(&name) {
                return Err(ConfigError::new(path, format!("{name} is listed twice")));
            }
            match (&d.org_key, &d.org_signet) {
                (Some(key), Some(signet)) => {
                    org_key_files.insert(
                        name.clone(),
                        crate::identity::OrgKeyFiles {
                            key: key.clone(),
                            signet: signet.clone(),
                        },
                    );
                }
                (None, None) => {}
                (Some(_), None) => {
                    return Err(ConfigError::new(
                        format!("domain[{i}].org_signet"),
                        "org_key is set but org_signet is not",
                    ));
                }
                (None, Some(_)) => {
                    return Err(ConfigError::new(
                        format!("domain[{i}].org_key"),
                        "org_signet is set but org_key is not",
                    ));
                }
            }
            domains.push(name);
        }

        let dmtp = DmtpConfig {
            listen: parse_addrs("dmtp.listen", &raw.dmtp.listen)?,
            dx: match &raw.dmtp.dx {
                None => vec![smtp.hostname.clone()],
                Some(hosts) => {
                    let mut out = Vec::new();
                    for (i, h) in hosts.iter().enumerate() {
                        let h = h.trim_end_matches('.').to_ascii_lowercase();
                        if h.is_empty() || !h.bytes().all(is_hostname_byte) {
                            return Err(ConfigError::new(
                                format!("dmtp.dx[{i}]"),
                                format!("not a host name: {h:?}"),
                            ));
                        }
                        out.push(h);
                    }
                    out
                }
            },
            statics: static_dx_map(&raw.dmtp.statics)?,
            pool: crate::discovery::pool::PoolPolicy {
                max_idle_per_destination: usize::try_from(raw.dmtp.pool_sessions)
                    .unwrap_or(usize::MAX),
                idle_timeout: duration_in(
                    "dmtp.pool_idle_timeout",
                    &raw.dmtp.pool_idle_timeout,
                    SECOND,
                    // Under the 5 min a server waits for the next command (RFC 5321 §4.5.3.2.7).
                    Duration::from_secs(240),
                )?,
                ..crate::discovery::pool::PoolPolicy::default()
            },
            connect_port: port("dmtp.connect_port", raw.dmtp.connect_port)?,
            dual_mode_port: port("dmtp.dual_mode_port", raw.dmtp.dual_mode_port)?,
            ca_file: raw.dmtp.ca_file,
            max_message_size: match &raw.dmtp.max_message_size {
                Some(v) => parse_size("dmtp.max_message_size", v)?,
                // Sealing adds keyslots, signatures and padding: a quarter is ample.
                None => smtp
                    .max_message_size
                    .saturating_add(smtp.max_message_size / 4),
            },
            tls: match (raw.dmtp.cert, raw.dmtp.key) {
                (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
                (None, None) => None,
                (Some(_), None) => {
                    return Err(ConfigError::new(
                        "dmtp.key",
                        "dmtp.cert is set but dmtp.key is not",
                    ));
                }
                (None, Some(_)) => {
                    return Err(ConfigError::new(
                        "dmtp.cert",
                        "dmtp.key is set but dmtp.cert is not",
                    ));
                }
            },
        };

        let mut relay_networks = Vec::new();
        for (i, n) in raw.relay.networks.iter().enumerate() {
            relay_networks.push(parse_network(&format!("relay.networks[{i}]"), n)?);
        }

        let mut users: Vec<User> = Vec::new();
        for (i, u) in raw.user.iter().enumerate() {
            if u.name.is_empty() || u.name.chars().any(|c| c.is_control()) {
                return Err(ConfigError::new(
                    format!("user[{i}].name"),
                    "must be non-empty, without control characters",
                ));
            }
            if users.iter().any(|x| x.name == u.name) {
                return Err(ConfigError::new(
                    format!("user[{i}].name"),
                    format!("{} is listed twice", u.name),
                ));
            }
            crate::auth::check_hash_format(&u.password_hash)
                .map_err(|reason| ConfigError::new(format!("user[{i}].password_hash"), reason))?;
            users.push(User {
                name: u.name.clone(),
                password_hash: u.password_hash.clone(),
            });
        }

        let tls_policy = |path: &str, v: &str| -> Result<crate::deliver::TlsPolicy, ConfigError> {
            use crate::deliver::TlsPolicy;
            match v {
                "off" | "none" => Ok(TlsPolicy::Disabled),
                "opportunistic" | "may" => Ok(TlsPolicy::Opportunistic),
                "required" | "verify" => Ok(TlsPolicy::Required),
                _ => Err(ConfigError::new(
                    path,
                    format!("{v:?}: expected \"off\", \"opportunistic\" or \"required\""),
                )),
            }
        };
        let backend = match &raw.backend.address {
            None => None,
            Some(a) => Some(Backend {
                hop: crate::deliver::NextHop::Backend {
                    addr: parse_addr("backend.address", a)?,
                    lmtp: raw.backend.lmtp,
                    tls: tls_policy("backend.starttls", &raw.backend.starttls)?,
                },
            }),
        };
        let smarthost = match &raw.relay.smarthost {
            None => None,
            Some(spec) => Some(
                crate::deliver::NextHop::smarthost(
                    spec,
                    tls_policy("relay.smarthost_tls", &raw.relay.smarthost_tls)?,
                )
                .map_err(|e| ConfigError::new("relay.smarthost", e.to_string()))?,
            ),
        };

        let d = raw.delivery;
        let mut delivery = crate::deliver::DeliverySettings {
            helo_name: smtp.hostname.clone(),
            mx_port: d.mx_port,
            mx_tls: tls_policy("delivery.tls", &d.tls)?,
            connect_timeout: duration_in(
                "delivery.connect_timeout",
                &d.connect_timeout,
                SECOND,
                HOUR,
            )?,
            command_timeout: duration_in(
                "delivery.command_timeout",
                &d.command_timeout,
                SECOND,
                HOUR,
            )?,
            data_timeout: duration_in("delivery.data_timeout", &d.data_timeout, SECOND, HOUR)?,
            idle_timeout: duration_in(
                "delivery.idle_timeout",
                &d.idle_timeout,
                Duration::ZERO,
                HOUR,
            )?,
            max_connections: positive("delivery.max_connections", d.max_connections)?,
            max_connections_per_hop: positive(
                "delivery.max_connections_per_hop",
                d.max_connections_per_hop,
            )?,
            ..crate::deliver::DeliverySettings::default()
        };
        delivery.greeting_timeout = delivery.command_timeout;
        apply_outbound_tls(&raw.outbound_tls, &mut delivery)?;
        let mut dime_policies = crate::runner::DimePolicies {
            default: dime_policy(
                "bridge",
                Some(&raw.bridge.dime),
                Some(&raw.bridge.fallback),
                crate::runner::DimePolicy::default(),
            )?,
            domains: Default::default(),
        };
        if dime_policies.default.fallback == crate::runner::Fallback::SmtpTls {
            delivery.mx_tls = crate::deliver::TlsPolicy::Required;
        }
        for (i, dest) in raw.destination.iter().enumerate() {
            let domain = crate::domain::Domain::parse(&dest.domain)
                .ok()
                .filter(|d| !d.is_address_literal() && d.as_str().bytes().all(is_hostname_byte))
                .ok_or_else(|| {
                    ConfigError::new(
                        format!("destination[{i}].domain"),
                        format!("not a domain name: {:?}", dest.domain),
                    )
                })?;
            let policy = dime_policy(
                &format!("destination[{i}]"),
                dest.dime.as_deref(),
                dest.fallback.as_deref(),
                dime_policies.default,
            )?;
            if policy != dime_policies.default {
                dime_policies.domains.insert(domain.clone(), policy);
            }
            delivery
                .destinations
                .push(crate::deliver::DestinationPolicy {
                    domain,
                    require_tls: dest.require_tls
                        || policy.fallback == crate::runner::Fallback::SmtpTls,
                });
        }
        let smtp_tls_anywhere = dime_policies.default.fallback == crate::runner::Fallback::SmtpTls
            || dime_policies
                .domains
                .values()
                .any(|p| p.fallback == crate::runner::Fallback::SmtpTls);
        if smtp_tls_anywhere
            && let Some(crate::deliver::NextHop::Smarthost { tls, .. }) = &smarthost
            && *tls != crate::deliver::TlsPolicy::Required
        {
            // The smarthost takes every domain's mail; TLS to it is what `smtp_tls` can mean.
            return Err(ConfigError::new(
                "relay.smarthost_tls",
                "a fallback of \"smtp_tls\" needs relay.smarthost_tls = \"required\"",
            ));
        }

        let mut dns = crate::resolve::ResolverSettings::default();
        dns.servers = parse_addrs("dns.servers", &raw.dns.servers)?;
        dns.timeout = duration_in(
            "dns.timeout",
            &raw.dns.timeout,
            Duration::from_millis(10),
            5 * MINUTE,
        )?;
        // Read when the resolver is built at start: a bad file fails `serve`, not a lookup.
        dns.trust_anchor = raw.dns.trust_anchor;

        let q = raw.queue;
        let mut queue = crate::queue::Policy::default();
        if let Some(steps) = &q.retry {
            let steps = steps
                .iter()
                .enumerate()
                .map(|(i, v)| duration_in(&format!("queue.retry[{i}]"), v, SECOND, 30 * DAY))
                .collect::<Result<Vec<_>, _>>()?;
            queue.retry = crate::queue::RetrySchedule::try_from(steps)
                .map_err(|e| ConfigError::new("queue.retry", e.to_string()))?;
        }
        queue.jitter = crate::queue::Jitter::percent(q.jitter_percent)
            .map_err(|e| ConfigError::new("queue.jitter_percent", e.to_string()))?;
        queue.expire = duration_in("queue.expire", &q.expire, SECOND, 365 * DAY)?;
        queue.delay_warning = match &q.delay_warning {
            Some(Scalar::Text(t)) if t == "off" => None,
            Some(v) => Some(duration_in("queue.delay_warning", v, SECOND, 365 * DAY)?),
            // The default warning only makes sense before expiry: with a shorter `expire` the
            // message bounces before it would be late, so there is nothing to warn about.
            None => Some(DEFAULT_DELAY_WARNING).filter(|w| *w < queue.expire),
        };
        queue.lease = duration_in("queue.lease", &q.lease, SECOND, DAY)?;
        queue.max_messages = count_in("queue.max_messages", q.max_messages, 1, 1_000_000_000)?;
        queue.min_free_disk_bytes =
            parse_size_in("queue.min_free_disk", &q.min_free_disk, 0, 1 << 50)?;
        queue.dsn_max_full_bytes =
            parse_size_in("queue.dsn_max_full", &q.dsn_max_full, 0, 1 << 30)?;
        queue.validate().map_err(|e| {
            // Name the key the user can change: the one that conflicts with `expire`.
            let path = match e {
                crate::queue::PolicyError::WarningAfterExpiry { .. } => "queue.delay_warning",
                crate::queue::PolicyError::ExpireTooShort { .. } => "queue.expire",
                crate::queue::PolicyError::LeaseTooShort { .. } => "queue.lease",
                _ => "queue",
            };
            ConfigError::new(path, e.to_string())
        })?;
        let queue_poll_interval = duration_in(
            "queue.poll_interval",
            &q.poll_interval,
            Duration::from_millis(10),
            HOUR,
        )?;
        let store_cache_bytes =
            parse_size_in("queue.store_cache", &q.store_cache, 1 << 20, 1 << 40)?;
        let store_cache_bytes = usize::try_from(store_cache_bytes)
            .map_err(|_| ConfigError::new("queue.store_cache", "too large for this machine"))?;
        // Below a MiB the budget would not hold two ordinary messages: every whole read beyond
        // the smallest would wait on the one before it.
        let whole_body_budget_bytes = parse_size_in(
            "queue.whole_body_budget",
            &q.whole_body_budget,
            1 << 20,
            1 << 40,
        )?;
        let whole_body_budget_bytes = usize::try_from(whole_body_budget_bytes).map_err(|_| {
            ConfigError::new("queue.whole_body_budget", "too large for this machine")
        })?;

        Ok(Config {
            backend,
            smarthost,
            delivery,
            dns,
            queue,
            queue_poll_interval,
            store_cache_bytes,
            whole_body_budget_bytes,
            data_dir: raw.data_dir,
            smtp,
            tls,
            admin,
            domains,
            relay_networks,
            users,
            org_key_files,
            dmtp,
            dime_policies,
        })
    }

    /// Is this client address allowed to relay without AUTH?
    pub fn may_relay(&self, ip: IpAddr) -> bool {
        networks_contain(&self.relay_networks, ip)
    }
}

/// Whether `ip` is in one of `networks`; an IPv4-mapped IPv6 address counts as its IPv4 address
/// (a dual-stack listener reports IPv4 clients that way).
pub fn networks_contain(networks: &[IpNet], ip: IpAddr) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    };
    networks.iter().any(|n| n.contains(&ip))
}

/// The default `queue.delay_warning`.
const DEFAULT_DELAY_WARNING: Duration = Duration::from_secs(4 * 3600);
const SECOND: Duration = Duration::from_secs(1);
const MINUTE: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(86_400);

/// A TOML error's message with the line and column where it starts (1-based).
fn located(text: &str, e: &toml::de::Error) -> String {
    let message = e.message().trim_end();
    let Some(start) = e.span().map(|s| s.start.min(text.len())) else {
        return message.to_owned();
    };
    let before = text.as_bytes().get(..start).unwrap_or_default();
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let line_start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    let column = String::from_utf8_lossy(&before[line_start..])
        .chars()
        .count()
        + 1;
    format!("line {line}, column {column}: {message}")
}

/// A duration within `[min, max]`, or an error naming the key and the bounds.
fn duration_in(
    path: &str,
    v: &Scalar,
    min: Duration,
    max: Duration,
) -> Result<Duration, ConfigError> {
    let d = parse_duration(path, v)?;
    if d < min || d > max {
        return Err(ConfigError::new(
            path,
            format!(
                "{} is out of range: must be between {} and {}",
                show_value(v),
                show_duration(min),
                show_duration(max)
            ),
        ));
    }
    Ok(d)
}

/// A size within `[min, max]` bytes.
fn parse_size_in(path: &str, v: &Scalar, min: u64, max: u64) -> Result<u64, ConfigError> {
    let n = parse_size(path, v)?;
    if n < min || n > max {
        return Err(ConfigError::new(
            path,
            format!(
                "{} is out of range: must be between {} and {}",
                show_value(v),
                show_size(min),
                show_size(max)
            ),
        ));
    }
    Ok(n)
}

/// A count within `[min, max]`.
fn count_in<T: Copy + PartialOrd + std::fmt::Display>(
    path: &str,
    v: T,
    min: T,
    max: T,
) -> Result<T, ConfigError> {
    if v < min || v > max {
        let reason = if v < min && min.to_string() == "1" {
            "must be at least 1".to_owned()
        } else {
            format!("{v} is out of range: must be between {min} and {max}")
        };
        return Err(ConfigError::new(path, reason));
    }
    Ok(v)
}

fn show_value(v: &Scalar) -> String {
    match v {
        Scalar::Int(n) => n.to_string(),
        Scalar::Text(t) => format!("{t:?}"),
    }
}

/// `90s`, `5m`, `4h`, `2d`, `250ms`: the largest unit that divides the duration.
fn show_duration(d: Duration) -> String {
    let ms = d.as_millis();
    for (unit, size) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1000),
    ] {
        if ms >= size && ms.is_multiple_of(size) {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}

fn show_size(n: u64) -> String {
    for (unit, shift) in [
        ("PiB", 50),
        ("TiB", 40),
        ("GiB", 30),
        ("MiB", 20),
        ("KiB", 10),
    ] {
        if n >= 1 << shift && n.is_multiple_of(1 << shift) {
            return format!("{}{unit}", n >> shift);
        }
    }
    n.to_string()
}

/// A CIDR network, or one address.
fn parse_network(path: &str, n: &str) -> Result<IpNet, ConfigError> {
    n.parse::<IpNet>()
        .or_else(|_| n.parse::<IpAddr>().map(IpNet::from))
        .map(|net| net.trunc())
        .map_err(|_| ConfigError::new(path, format!("not a CIDR network: {n:?}")))
}

fn port(path: &str, v: u32) -> Result<u16, ConfigError> {
    match u16::try_from(v) {
        Ok(p) if p != 0 => Ok(p),
        _ => Err(ConfigError::new(path, format!("not a port number: {v}"))),
    }
}

fn static_dx_map(
    raw: &[RawStaticDx],
) -> Result<std::collections::BTreeMap<String, crate::discovery::StaticDx>, ConfigError> {
    let mut map = std::collections::BTreeMap::new();
    for (i, entry) in raw.iter().enumerate() {
        let path = |key: &str| format!("dmtp.static[{i}].{key}");
        let domain = entry.domain.trim_end_matches('.').to_ascii_lowercase();
        if domain.is_empty() || !domain.bytes().all(is_hostname_byte) {
            return Err(ConfigError::new(
                path("domain"),
                format!("not a domain name: {:?}", entry.domain),
            ));
        }
        let record = crate::dime::DxRecord::parse_zone_rdata(&entry.record)
            .map_err(|e| ConfigError::new(path("record"), e.to_string()))?;
        if record.poks.is_empty() {
            return Err(ConfigError::new(path("record"), "names no pok="));
        }
        let address = parse_addr(&path("address"), &entry.address)?;
        if map
            .insert(
                domain.clone(),
                crate::discovery::StaticDx { record, address },
            )
            .is_some()
        {
            return Err(ConfigError::new(
                path("domain"),
                format!("{domain} is listed twice"),
            ));
        }
    }
    Ok(map)
}

fn is_hostname_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_'
}

fn parse_addr(path: &str, s: &str) -> Result<SocketAddr, ConfigError> {
    s.parse()
        .map_err(|_| ConfigError::new(path, format!("not an address:port: {s:?}")))
}

fn parse_addrs(path: &str, v: &OneOrMany) -> Result<Vec<SocketAddr>, ConfigError> {
    match v {
        OneOrMany::One(s) => Ok(vec![parse_addr(path, s)?]),
        OneOrMany::Many(list) => list
            .iter()
            .enumerate()
            .map(|(i, s)| parse_addr(&format!("{path}[{i}]"), s))
            .collect(),
    }
}

/// Parses `"90s"`, `"5m"`, `"4h"`, `"5d"`, `"250ms"` (a bare number is seconds).
pub fn parse_duration(path: &str, v: &Scalar) -> Result<Duration, ConfigError> {
    let bad = |s: &str| {
        ConfigError::new(
            path,
            format!("not a duration (e.g. \"90s\", \"5m\", \"4h\", \"5d\"): {s:?}"),
        )
    };
    let s = match v {
        Scalar::Int(n) if *n >= 0 => return Ok(Duration::from_secs(*n as u64)),
        Scalar::Int(n) => return Err(bad(&n.to_string())),
        Scalar::Text(s) => s.trim(),
    };
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| bad(s))?;
    let unit_ms: u64 = match unit.trim() {
        "ms" => 1,
        "" | "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(bad(s)),
    };
    n.checked_mul(unit_ms)
        .map(Duration::from_millis)
        .ok_or_else(|| bad(s))
}

/// Parses `"25MiB"`, `"512KiB"`, `"10MB"`, `"1GiB"` or a plain byte count.
pub fn parse_size(path: &str, v: &Scalar) -> Result<u64, ConfigError> {
    let bad = |s: &str| {
        ConfigError::new(
            path,
            format!("not a size (e.g. \"25MiB\", \"512KiB\", 1048576): {s:?}"),
        )
    };
    let s = match v {
        Scalar::Int(n) if *n >= 0 => return Ok(*n as u64),
        Scalar::Int(n) => return Err(bad(&n.to_string())),
        Scalar::Text(s) => s.trim(),
    };
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| bad(s))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "kB" | "KB" => 1000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => return Err(bad(s)),
    };
    n.checked_mul(mult).ok_or_else(|| bad(s))
}

/// The configuration file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawConfig {
    data_dir: PathBuf,
    smtp: RawSmtp,
    tls: RawTls,
    admin: RawAdmin,
    domain: Vec<RawDomain>,
    relay: RawRelay,
    user: Vec<RawUser>,
    backend: RawBackend,
    delivery: RawDelivery,
    destination: Vec<RawDestination>,
    dns: RawDns,
    queue: RawQueue,
    dmtp: RawDmtp,
    outbound_tls: RawOutboundTls,
    bridge: RawBridge,
}

impl Default for RawConfig {
    fn default() -> Self {
        RawConfig {
            data_dir: PathBuf::from("dimegate-data"),
            smtp: RawSmtp::default(),
            tls: RawTls::default(),
            admin: RawAdmin::default(),
            domain: vec![RawDomain {
                name: "localhost".into(),
                org_key: None,
                org_signet: None,
            }],
            relay: RawRelay::default(),
            user: Vec::new(),
            backend: RawBackend::default(),
            delivery: RawDelivery::default(),
            destination: Vec::new(),
            dns: RawDns::default(),
            queue: RawQueue::default(),
            dmtp: RawDmtp::default(),
            outbound_tls: RawOutboundTls::default(),
            bridge: RawBridge::default(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawBridge {
    dime: String,
    fallback: String,
}

impl Default for RawBridge {
    fn default() -> Self {
        RawBridge {
            dime: "prefer".into(),
            fallback: "smtp".into(),
        }
    }
}

/// A DIME policy from `dime` and `fallback` under `path`, each defaulting to `base`'s. A policy
/// that requires DIME cannot fall back to SMTP: that would be `prefer`.
fn dime_policy(
    path: &str,
    dime: Option<&str>,
    fallback: Option<&str>,
    base: crate::runner::DimePolicy,
) -> Result<crate::runner::DimePolicy, ConfigError> {
    use crate::runner::{DimeMode, Fallback};
    let mode = match dime {
        None => base.mode,
        Some("require") => DimeMode::Require,
        Some("prefer") => DimeMode::Prefer,
        Some("off") => DimeMode::Off,
        Some(other) => {
            return Err(ConfigError::new(
                format!("{path}.dime"),
                format!("{other:?} is not one of \"require\", \"prefer\", \"off\""),
            ));
        }
    };
    let fallback = match fallback {
        None if mode == DimeMode::Require
            && matches!(base.fallback, Fallback::Smtp | Fallback::SmtpTls) =>
        {
            Fallback::Bounce
        }
        None => base.fallback,
        Some("smtp") => Fallback::Smtp,
        Some("smtp_tls") => Fallback::SmtpTls,
        Some("hold") => Fallback::Hold,
        Some("bounce") => Fallback::Bounce,
        Some(other) => {
            return Err(ConfigError::new(
                format!("{path}.fallback"),
                format!("{other:?} is not one of \"smtp\", \"smtp_tls\", \"hold\", \"bounce\""),
            ));
        }
    };
    if mode == DimeMode::Require && matches!(fallback, Fallback::Smtp | Fallback::SmtpTls) {
        return Err(ConfigError::new(
            format!("{path}.fallback"),
            "dime = \"require\" cannot fall back to SMTP: use \"hold\" or \"bounce\" (or dime = \"prefer\")",
        ));
    }
    Ok(crate::runner::DimePolicy { mode, fallback })
}

/// A string, or a list of strings.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    /// `listen = "127.0.0.1:25"`
    One(String),
    /// `listen = ["127.0.0.1:25", "[::1]:25"]`
    Many(Vec<String>),
}

/// A value that may be written as a number or as a string with a unit.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Scalar {
    /// `max_message_size = 1048576`
    Int(i64),
    /// `max_message_size = "25MiB"`
    Text(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawSmtp {
    listen: OneOrMany,
    tls_listen: OneOrMany,
    hostname: String,
    max_message_size: Scalar,
    max_recipients: usize,
    max_errors: usize,
    idle_timeout: Scalar,
    session_timeout: Scalar,
    max_connections: usize,
    max_connections_per_ip: usize,
    max_recipient_overshoot: usize,
    shutdown_grace: Scalar,
    connection_rate_per_ip: u32,
    auth_failures_per_ip: u32,
    auth_backoff: Scalar,
    auth_backoff_max: Scalar,
    rate_limit_exempt: Vec<String>,
}

impl Default for RawSmtp {
    fn default() -> Self {
        RawSmtp {
            listen: OneOrMany::One("127.0.0.1:2525".into()),
            tls_listen: OneOrMany::Many(Vec::new()),
            hostname: "localhost".into(),
            max_message_size: Scalar::Text("25MiB".into()),
            max_recipients: 100,
            max_errors: 10,
            // RFC 5321 §4.5.3.2 asks for 5 minutes between commands.
            idle_timeout: Scalar::Text("5m".into()),
            session_timeout: Scalar::Text("30m".into()),
            max_connections: 1000,
            max_connections_per_ip: 50,
            // Postfix's smtpd_recipient_overshoot_limit.
            max_recipient_overshoot: 1000,
            shutdown_grace: Scalar::Text("10s".into()),
            connection_rate_per_ip: 20,
            auth_failures_per_ip: 5,
            auth_backoff: Scalar::Text("30s".into()),
            auth_backoff_max: Scalar::Text("15m".into()),
            // Like Postfix, which exempts $mynetworks (loopback by default) from its anvil limits.
            rate_limit_exempt: vec!["127.0.0.0/8".into(), "::1/128".into()],
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawTls {
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawAdmin {
    listen: String,
}

impl Default for RawAdmin {
    fn default() -> Self {
        RawAdmin {
            listen: "127.0.0.1:9725".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDomain {
    name: String,
    org_key: Option<PathBuf>,
    org_signet: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawDmtp {
    listen: OneOrMany,
    dx: Option<Vec<String>>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    connect_port: u32,
    dual_mode_port: u32,
    ca_file: Option<PathBuf>,
    max_message_size: Option<Scalar>,
    #[serde(rename = "static")]
    statics: Vec<RawStaticDx>,
    pool_sessions: u32,
    pool_idle_timeout: Scalar,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStaticDx {
    domain: String,
    record: String,
    address: String,
}

impl Default for RawDmtp {
    fn default() -> Self {
        RawDmtp {
            listen: OneOrMany::One("127.0.0.1:2626".into()),
            dx: None,
            cert: None,
            key: None,
            connect_port: 26,
            dual_mode_port: 25,
            ca_file: None,
            max_message_size: None,
            statics: Vec::new(),
            pool_sessions: 20,
            pool_idle_timeout: Scalar::Text("30s".into()),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawRelay {
    networks: Vec<String>,
    smarthost: Option<String>,
    smarthost_tls: String,
}

impl Default for RawRelay {
    fn default() -> Self {
        RawRelay {
            networks: Vec::new(),
            smarthost: None,
            smarthost_tls: "opportunistic".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawBackend {
    address: Option<String>,
    lmtp: bool,
    starttls: String,
}

impl Default for RawBackend {
    fn default() -> Self {
        RawBackend {
            address: None,
            lmtp: false,
            starttls: "opportunistic".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawDelivery {
    tls: String,
    mx_port: u16,
    connect_timeout: Scalar,
    command_timeout: Scalar,
    data_timeout: Scalar,
    idle_timeout: Scalar,
    max_connections: usize,
    max_connections_per_hop: usize,
}

impl Default for RawDelivery {
    fn default() -> Self {
        RawDelivery {
            tls: "opportunistic".into(),
            mx_port: 25,
            connect_timeout: Scalar::Text("30s".into()),
            // RFC 5321 §4.5.3.2: 5 minutes for commands, 10 for the end of data.
            command_timeout: Scalar::Text("5m".into()),
            data_timeout: Scalar::Text("10m".into()),
            idle_timeout: Scalar::Text("5s".into()),
            max_connections: 100,
            max_connections_per_hop: 20,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDestination {
    domain: String,
    #[serde(default)]
    require_tls: bool,
    dime: Option<String>,
    fallback: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawDns {
    servers: OneOrMany,
    timeout: Scalar,
    trust_anchor: Option<PathBuf>,
}

impl Default for RawDns {
    fn default() -> Self {
        RawDns {
            servers: OneOrMany::Many(Vec::new()),
            timeout: Scalar::Text("5s".into()),
            trust_anchor: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawQueue {
    retry: Option<Vec<Scalar>>,
    jitter_percent: u8,
    expire: Scalar,
    /// `None`: not set, so the default adapts to `expire`.
    delay_warning: Option<Scalar>,
    lease: Scalar,
    max_messages: u64,
    min_free_disk: Scalar,
    dsn_max_full: Scalar,
    poll_interval: Scalar,
    store_cache: Scalar,
    whole_body_budget: Scalar,
}

impl Default for RawQueue {
    fn default() -> Self {
        RawQueue {
            retry: None,
            jitter_percent: 10,
            expire: Scalar::Text("5d".into()),
            delay_warning: None,
            lease: Scalar::Text("30m".into()),
            max_messages: 100_000,
            min_free_disk: Scalar::Text("256MiB".into()),
            dsn_max_full: Scalar::Text("1MiB".into()),
            poll_interval: Scalar::Text("1s".into()),
            store_cache: Scalar::Text("32MiB".into()),
            whole_body_budget: Scalar::Text("32MiB".into()),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUser {
    name: String,
    password_hash: String,
}

// --- [outbound_tls]: DANE, MTA-STS, REQUIRETLS and TLS-RPT on egress (deliver::policy) -------
//
// [outbound_tls]
// mta_sts = true                 # look up and apply MTA-STS policies (RFC 8461)
// mta_sts_https_port = 443       # test setting: the policy URL is fixed at 443 in production
// mta_sts_timeout = "1m"         # the whole policy fetch
// ca_file = "/etc/dimegate/private-ca.pem"   # extra roots for WebPKI-verified TLS
// tlsrpt_contact = "postmaster@gw.example"  # TLS-RPT contact-info and report sender
//                                           # (default postmaster@<smtp.hostname>)
//
// DANE needs no key of its own: it applies when `[dns] trust_anchor` makes the resolver validate.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawOutboundTls {
    mta_sts: bool,
    mta_sts_https_port: u16,
    mta_sts_timeout: Scalar,
    ca_file: Option<PathBuf>,
    tlsrpt_contact: Option<String>,
}

impl Default for RawOutboundTls {
    fn default() -> Self {
        RawOutboundTls {
            mta_sts: true,
            mta_sts_https_port: 443,
            mta_sts_timeout: Scalar::Text("1m".into()),
            ca_file: None,
            tlsrpt_contact: None,
        }
    }
}

fn apply_outbound_tls(
    raw: &RawOutboundTls,
    delivery: &mut crate::deliver::DeliverySettings,
) -> Result<(), ConfigError> {
    delivery.mta_sts = raw.mta_sts;
    if raw.mta_sts_https_port == 0 {
        return Err(ConfigError::new(
            "outbound_tls.mta_sts_https_port",
            "must be a TCP port (1-65535)",
        ));
    }
    delivery.mta_sts_port = raw.mta_sts_https_port;
    delivery.mta_sts_timeout = duration_in(
        "outbound_tls.mta_sts_timeout",
        &raw.mta_sts_timeout,
        Duration::from_secs(1),
        Duration::from_secs(600),
    )?;
    // Read when the deliverer is built at start: a bad file fails `serve`.
    delivery.tls_ca_file = raw.ca_file.clone();
    if let Some(contact) = &raw.tlsrpt_contact {
        let valid = contact
            .split_once('@')
            .is_some_and(|(l, d)| !l.is_empty() && !d.is_empty())
            && contact
                .bytes()
                .all(|b| b > b' ' && b != b'<' && b != b'>' && b != 0x7f);
        if !valid {
            return Err(ConfigError::new(
                "outbound_tls.tlsrpt_contact",
                format!("not a mail address: {contact:?}"),
            ));
        }
    }
    delivery.tlsrpt_contact = raw.tlsrpt_contact.clone();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dime_policies() {
        use crate::runner::{DimeMode, DimePolicy, Fallback};
        let c = Config::parse("").unwrap();
        assert_eq!(c.dime_policies.default, DimePolicy::default());
        assert_eq!(c.dime_policies.default.mode, DimeMode::Prefer);
        assert_eq!(c.dime_policies.default.fallback, Fallback::Smtp);
        let c = Config::parse(
            "[bridge]\nfallback = \"hold\"\n\
             [[destination]]\ndomain = \"a.example\"\ndime = \"require\"\n\
             [[destination]]\ndomain = \"b.example\"\nfallback = \"smtp_tls\"\n\
             [[destination]]\ndomain = \"c.example\"\ndime = \"off\"\nfallback = \"hold\"\n",
        )
        .unwrap();
        let get = |d: &str| {
            c.dime_policies
                .get(&crate::domain::Domain::parse(d).unwrap())
        };
        assert_eq!(get("a.example").mode, DimeMode::Require);
        assert_eq!(
            get("a.example").fallback,
            Fallback::Hold,
            "inherits [bridge]"
        );
        assert_eq!(get("b.example").fallback, Fallback::SmtpTls);
        assert_eq!(get("c.example").mode, DimeMode::Off);
        assert_eq!(get("other.example").fallback, Fallback::Hold);
        let b = c
            .delivery
            .destinations
            .iter()
            .find(|d| d.domain.as_str() == "b.example")
            .unwrap();
        assert!(
            b.require_tls,
            "smtp_tls falls back to SMTP with TLS required"
        );
        // `require` alone means bounce; with an SMTP fallback it is refused.
        let c =
            Config::parse("[[destination]]\ndomain = \"a.example\"\ndime = \"require\"\n").unwrap();
        assert_eq!(
            c.dime_policies
                .get(&crate::domain::Domain::parse("a.example").unwrap())
                .fallback,
            Fallback::Bounce
        );
        for (text, path) in [
            (
                "[bridge]\ndime = \"require\"\nfallback = \"smtp\"\n",
                "bridge.fallback",
            ),
            ("[bridge]\ndime = \"always\"\n", "bridge.dime"),
            (
                "[[destination]]\ndomain = \"a.example\"\nfallback = \"smtp_tls\"\n[relay]\nsmarthost = \"relay.example\"\n",
                "relay.smarthost_tls",
            ),
            (
                "[[destination]]\ndomain = \"a.example\"\nfallback = \"later\"\n",
                "destination[0].fallback",
            ),
        ] {
            let e = Config::parse(text).unwrap_err();
            assert_eq!(e.path, path, "{text}: {e:?}");
        }
        let c = Config::parse("[bridge]\nfallback = \"smtp_tls\"\n").unwrap();
        assert_eq!(c.delivery.mx_tls, crate::deliver::TlsPolicy::Required);
    }

    #[test]
    fn defaults_serve_localhost_on_loopback() {
        let c = Config::parse("").unwrap();
        assert_eq!(c.domains, vec!["localhost"]);
        assert_eq!(c.smtp.listen, vec!["127.0.0.1:2525".parse().unwrap()]);
        assert_eq!(c.admin.listen, "127.0.0.1:9725".parse().unwrap());
        assert_eq!(c.data_dir, PathBuf::from("dimegate-data"));
        assert_eq!(c.smtp.max_message_size, 25 << 20);
        assert!(c.relay_networks.is_empty());
        assert!(
            !c.may_relay("127.0.0.1".parse().unwrap()),
            "loopback must not relay by default"
        );
    }

    #[test]
    fn static_dx_map_parses_and_names_bad_keys() {
        let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
        let record = crate::dime::DxRecord {
            poks: vec![key.verifying_key()],
            dx: vec!["dx.south.test".into()],
            ..Default::default()
        };
        let rdata = record.to_zone_rdata().unwrap();
        let file = |domain: &str, rdata: &str, address: &str| {
            format!(
                "[[dmtp.static]]\ndomain = {domain:?}\nrecord = {rdata:?}\naddress = {address:?}\n"
            )
        };
        let c = Config::parse(&file("South.Test.", &rdata, "127.0.0.1:2627")).unwrap();
        let s = &c.dmtp.statics["south.test"];
        assert_eq!(s.record, record);
        assert_eq!(s.address, "127.0.0.1:2627".parse().unwrap());
        assert!(Config::parse("").unwrap().dmtp.statics.is_empty());
        let cases = [
            (file("a b", &rdata, "127.0.0.1:1"), "dmtp.static[0].domain"),
            (
                file("s.test", "\"ver=1", "127.0.0.1:1"),
                "dmtp.static[0].record",
            ),
            (
                file("s.test", "\"ver=1\"", "127.0.0.1:1"),
                "dmtp.static[0].record",
            ),
            (
                file("s.test", &rdata, "localhost:26"),
                "dmtp.static[0].address",
            ),
            (
                file("s.test", &rdata, "127.0.0.1:1") + &file("S.test", &rdata, "127.0.0.1:2"),
                "dmtp.static[1].domain",
            ),
        ];
        for (text, path) in cases {
            assert_eq!(Config::parse(&text).unwrap_err().path, path, "{text}");
        }
    }

    #[test]
    fn full_file_parses() {
        let c = Config::parse(
            r#"
            data_dir = "/var/lib/dimegate"
            [smtp]
            listen = ["127.0.0.1:25", "[::1]:25"]
            tls_listen = "127.0.0.1:465"
            hostname = "MX.Example.org"
            max_message_size = "50MiB"
            max_recipients = 500
            idle_timeout = "90s"
            session_timeout = "1h"
            [tls]
            cert = "/etc/ssl/c.pem"
            key = "/etc/ssl/k.pem"
            [admin]
            listen = "127.0.0.1:9000"
            [[domain]]
            name = "Example.ORG."
            [[domain]]
            name = "example.net"
            [relay]
            networks = ["10.0.0.0/8", "192.0.2.7", "::ffff:0:0/96"]
            [[user]]
            name = "alice"
            password_hash = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$2ZhLgY1bV2dz4Is7Q1uVIQ7+3cc3VVc5dQ8Z/6Gc9O4"
            "#,
        )
        .unwrap();
        assert_eq!(c.smtp.listen.len(), 2);
        assert_eq!(c.smtp.tls_listen.len(), 1);
        assert_eq!(c.smtp.hostname, "mx.example.org");
        assert_eq!(c.smtp.max_message_size, 50 << 20);
        assert_eq!(c.smtp.idle_timeout, Duration::from_secs(90));
        assert_eq!(c.smtp.session_timeout, Duration::from_secs(3600));
        assert_eq!(c.domains, vec!["example.org", "example.net"]);
        assert!(c.may_relay("10.1.2.3".parse().unwrap()));
        assert!(c.may_relay("192.0.2.7".parse().unwrap()));
        assert!(c.may_relay("::ffff:10.0.0.1".parse().unwrap()));
        assert!(!c.may_relay("192.0.2.8".parse().unwrap()));
        assert_eq!(c.users[0].name, "alice");
    }

    #[test]
    fn errors_name_the_key() {
        let cases: &[(&str, &str)] = &[
            ("[smtp]\nlisten = \"nope\"", "smtp.listen"),
            (
                "[smtp]\nlisten = [\"127.0.0.1:1\", \"x\"]",
                "smtp.listen[1]",
            ),
            (
                "[smtp]\nmax_message_size = \"12 parsecs\"",
                "smtp.max_message_size",
            ),
            (
                "[smtp]\nidle_timeout = \"5 fortnights\"",
                "smtp.idle_timeout",
            ),
            ("[smtp]\nmax_recipients = 0", "smtp.max_recipients"),
            ("[smtp]\nmax_recipients = -1", "smtp.max_recipients"),
            ("[smtp]\nbogus = 1", "smtp.bogus"),
            ("bogus = 1", "bogus"),
            (
                "[[domain]]\nname = \"a.example\"\n[[domain]]\nname = \"b ad\"",
                "domain[1].name",
            ),
            ("[relay]\nnetworks = [\"10.0.0.0/33\"]", "relay.networks[0]"),
            ("[tls]\ncert = \"c.pem\"", "tls.key"),
            (
                "[[user]]\nname = \"a\"\npassword_hash = \"hunter2\"",
                "user[0].password_hash",
            ),
            ("[admin]\nlisten = 9725", "admin.listen"),
            ("[smtp", "(file)"),
        ];
        for (text, path) in cases {
            let err = Config::parse(text).expect_err(text);
            assert_eq!(&err.path, path, "{text:?} gave {err}");
            assert!(!err.reason.is_empty());
        }
    }

    #[test]
    fn outbound_tls_keys() {
        let c = Config::parse("").unwrap();
        assert!(c.delivery.mta_sts);
        assert_eq!(c.delivery.mta_sts_port, 443);
        assert_eq!(c.delivery.mta_sts_timeout, Duration::from_secs(60));
        let c = Config::parse(
            "[outbound_tls]\nmta_sts = false\nmta_sts_https_port = 8443\nmta_sts_timeout = \"5s\"\n\
             ca_file = \"/x.pem\"",
        )
        .unwrap();
        assert!(!c.delivery.mta_sts);
        assert_eq!(c.delivery.mta_sts_port, 8443);
        assert_eq!(c.delivery.mta_sts_timeout, Duration::from_secs(5));
        assert_eq!(c.delivery.tls_ca_file, Some(PathBuf::from("/x.pem")));
        for (text, path) in [
            (
                "[outbound_tls]\nmta_sts_https_port = 0",
                "outbound_tls.mta_sts_https_port",
            ),
            (
                "[outbound_tls]\nmta_sts_timeout = \"1h\"",
                "outbound_tls.mta_sts_timeout",
            ),
        ] {
            assert_eq!(Config::parse(text).unwrap_err().path, path, "{text}");
        }
    }

    #[test]
    fn dns_trust_anchor_is_optional() {
        assert_eq!(Config::parse("").unwrap().dns.trust_anchor, None);
        let c = Config::parse("[dns]\ntrust_anchor = \"/etc/dimegate/anchor.keys\"").unwrap();
        assert_eq!(
            c.dns.trust_anchor,
            Some(PathBuf::from("/etc/dimegate/anchor.keys"))
        );
    }

    #[test]
    fn durations_and_sizes() {
        let d = |s: &str| parse_duration("x", &Scalar::Text(s.into()));
        assert_eq!(d("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(d("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(d("4h"), Ok(Duration::from_secs(14400)));
        assert_eq!(d("5d"), Ok(Duration::from_secs(432000)));
        assert_eq!(d("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(d("30"), Ok(Duration::from_secs(30)));
        assert!(d("").is_err());
        assert!(d("m").is_err());
        assert!(d("-5s").is_err());
        assert!(d("99999999999999999999d").is_err());
        let z = |s: &str| parse_size("x", &Scalar::Text(s.into()));
        assert_eq!(z("25MiB"), Ok(25 << 20));
        assert_eq!(z("512KiB"), Ok(512 << 10));
        assert_eq!(z("1GiB"), Ok(1 << 30));
        assert_eq!(z("10MB"), Ok(10_000_000));
        assert_eq!(z("1000"), Ok(1000));
        assert!(z("25 MiBs").is_err());
        assert!(z("99999999999999GiB").is_err());
    }

    #[test]
    fn every_duration_size_and_count_is_bounded_and_the_error_names_the_key() {
        // Issue 7: this value passed `config check` and panicked at the first connection.
        let huge = "9223372036854775807";
        let keys: &[(&str, &str)] = &[
            ("smtp", "idle_timeout"),
            ("smtp", "session_timeout"),
            ("smtp", "shutdown_grace"),
            ("smtp", "auth_backoff"),
            ("smtp", "auth_backoff_max"),
            ("smtp", "max_message_size"),
            ("smtp", "max_recipients"),
            ("smtp", "max_errors"),
            ("smtp", "max_connections"),
            ("smtp", "max_recipient_overshoot"),
            ("delivery", "connect_timeout"),
            ("delivery", "command_timeout"),
            ("delivery", "data_timeout"),
            ("delivery", "idle_timeout"),
            ("delivery", "max_connections"),
            ("dns", "timeout"),
            ("queue", "expire"),
            ("queue", "delay_warning"),
            ("queue", "lease"),
            ("queue", "poll_interval"),
            ("queue", "max_messages"),
            ("queue", "min_free_disk"),
            ("queue", "dsn_max_full"),
            ("queue", "store_cache"),
            ("queue", "whole_body_budget"),
        ];
        for (table, key) in keys {
            for value in [
                huge.to_owned(),
                format!("\"{huge}d\""),
                "\"99999d\"".to_owned(),
            ] {
                let text = format!("[{table}]\n{key} = {value}\n");
                let err = Config::parse(&text).expect_err(&text);
                assert_eq!(err.path, format!("{table}.{key}"), "{text:?} gave {err}");
            }
        }
        let err = Config::parse("[queue]\nretry = [\"1m\", \"999d\"]").unwrap_err();
        assert_eq!(err.path, "queue.retry[1]");
        assert!(err.reason.contains("between 1s and 30d"), "{err}");
        let err = Config::parse(&format!("[smtp]\nidle_timeout = {huge}")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "smtp.idle_timeout: 9223372036854775807 is out of range: must be between 1s and 1h"
        );
        let err = Config::parse("[smtp]\nmax_message_size = \"2GiB\"").unwrap_err();
        assert!(err.reason.contains("between 1KiB and 1GiB"), "{err}");
        let err = Config::parse("[smtp]\nmax_message_size = 100").unwrap_err();
        assert_eq!(err.path, "smtp.max_message_size");
        let err =
            Config::parse("[smtp]\nauth_backoff = \"1h\"\nauth_backoff_max = \"1m\"").unwrap_err();
        assert_eq!(err.path, "smtp.auth_backoff_max");
        // The bounds themselves are accepted.
        let c = Config::parse(
            "[smtp]\nidle_timeout = \"1h\"\nsession_timeout = \"1d\"\nshutdown_grace = 0\n\
             [queue]\nexpire = \"365d\"\npoll_interval = \"10ms\"",
        )
        .unwrap();
        assert_eq!(c.smtp.idle_timeout, Duration::from_secs(3600));
        assert_eq!(c.smtp.shutdown_grace, Duration::ZERO);
    }

    #[test]
    fn whole_body_budget() {
        let c = Config::parse("").unwrap();
        assert_eq!(
            c.whole_body_budget_bytes,
            crate::body::DEFAULT_WHOLE_BODY_BUDGET,
            "the default is the library's"
        );
        let c = Config::parse("[queue]\nwhole_body_budget = \"100MiB\"").unwrap();
        assert_eq!(c.whole_body_budget_bytes, 100 << 20);
        let c = Config::parse("[queue]\nwhole_body_budget = 1048576").unwrap();
        assert_eq!(c.whole_body_budget_bytes, 1 << 20, "the minimum itself");
        for text in [
            "[queue]\nwhole_body_budget = \"1023KiB\"",
            "[queue]\nwhole_body_budget = 0",
            "[queue]\nwhole_body_budget = \"lots\"",
        ] {
            let err = Config::parse(text).expect_err(text);
            assert_eq!(err.path, "queue.whole_body_budget", "{text:?} gave {err}");
        }
        let err = Config::parse("[queue]\nwhole_body_budget = \"512KiB\"").unwrap_err();
        assert!(err.reason.contains("between 1MiB and"), "{err}");
    }

    #[test]
    fn a_default_yields_to_what_the_user_set() {
        // Issue 11: `expire = "10m"` alone was refused because of the default delay_warning.
        let c = Config::parse("[queue]\nexpire = \"10m\"").unwrap();
        assert_eq!(c.queue.expire, Duration::from_secs(600));
        assert_eq!(
            c.queue.delay_warning, None,
            "expiry comes first: no warning"
        );
        let c = Config::parse("[queue]\nexpire = \"5h\"").unwrap();
        assert_eq!(c.queue.delay_warning, Some(Duration::from_secs(4 * 3600)));
        let c = Config::parse("[queue]\nexpire = \"10m\"\ndelay_warning = \"5m\"").unwrap();
        assert_eq!(c.queue.delay_warning, Some(Duration::from_secs(300)));
        // Two explicit settings that conflict: an error naming the one to change.
        let err = Config::parse("[queue]\nexpire = \"10m\"\ndelay_warning = \"4h\"").unwrap_err();
        assert_eq!(err.path, "queue.delay_warning");
        assert!(err.reason.contains("not shorter than expire"), "{err}");
        assert_eq!(
            Config::default().queue.delay_warning,
            Some(Duration::from_secs(14_400))
        );
    }

    #[test]
    fn toml_syntax_errors_name_line_and_column() {
        let cases: &[(&str, &str)] = &[
            ("[smtp]\nlisten = \n", "line 2, column 10"),
            ("data_dir = \"x\"\n[smtp\n", "line 2, column 6"),
            (
                "# comment\n\n[queue]\nexpire = \"5d\" oops\n",
                "line 4, column 15",
            ),
            ("[smtp]\nmax_recipients = \"many\"\n", "line 2, column 18"),
            // Columns count characters, not bytes.
            ("# é\n[smtp]\nhostname = \"é\" x\n", "line 3, column 16"),
        ];
        for (text, at) in cases {
            let err = Config::parse(text).expect_err(text);
            assert!(err.reason.starts_with(at), "{text:?}: {err}");
        }
        let err = Config::parse("[smtp]\nmax_recipients = \"many\"\n").unwrap_err();
        assert_eq!(err.path, "smtp.max_recipients");
    }

    #[test]
    fn rate_limits_from_smtp() {
        let c = Config::default();
        assert_eq!(
            c.smtp.rate_limits,
            crate::smtp::ratelimit::RateLimits::default()
        );
        let c = Config::parse(
            "[smtp]\nconnection_rate_per_ip = 3\nauth_failures_per_ip = 2\nauth_backoff = \"5s\"\n\
             auth_backoff_max = \"1m\"\nrate_limit_exempt = [\"192.0.2.0/24\"]",
        )
        .unwrap();
        let r = &c.smtp.rate_limits;
        assert_eq!((r.connections_per_second, r.auth_failures), (3, 2));
        assert_eq!(r.auth_backoff, Duration::from_secs(5));
        assert_eq!(r.exempt, vec!["192.0.2.0/24".parse::<IpNet>().unwrap()]);
        let err = Config::parse("[smtp]\nrate_limit_exempt = [\"nope\"]").unwrap_err();
        assert_eq!(err.path, "smtp.rate_limit_exempt[0]");
    }

    /// Issue 7: the README's example declared `[relay]` twice. Every TOML block in the README
    /// goes through the real loader, as `config check` runs it.
    #[test]
    fn every_toml_block_in_the_readme_is_a_valid_configuration() {
        let readme = include_str!("../README.md");
        let mut blocks = 0;
        let mut rest = readme;
        while let Some(start) = rest.find("```toml\n") {
            let body = &rest[start + "```toml\n".len()..];
            let end = body.find("\n```").expect("every ```toml block is closed");
            let block = &body[..end];
            if let Err(e) = Config::parse(block) {
                panic!("README toml block {blocks} is not a valid configuration: {e}\n{block}");
            }
            blocks += 1;
            rest = &body[end..];
        }
        assert!(blocks >= 1, "the README has a configuration example");
    }
}
