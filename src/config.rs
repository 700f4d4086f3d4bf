//! Configuration: the TOML file, its defaults, and validation into typed values.
//!
//! The file is parsed into plain serde structs (`RawConfig`, unknown keys refused), then converted
//! once into [`Config`], whose fields cannot hold an invalid value. Every error names the key path
//! (`smtp.listen`, `domain[1].name`) and the reason. `dimegate config check` runs the same code.

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
    /// Domains this gateway serves (lower-case, no trailing dot).
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
            .map_err(|e| ConfigError::new("(file)", e.message().to_owned()))?;
        let raw: RawConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            ConfigError::new(
                if path == "." { "(file)".into() } else { path },
                inner.message().to_owned(),
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
        let max_message_size = parse_size("smtp.max_message_size", &s.max_message_size)?;
        if max_message_size < 1024 {
            return Err(ConfigError::new(
                "smtp.max_message_size",
                "must be at least 1KiB",
            ));
        }
        let positive = |path: &str, v: usize| {
            if v == 0 {
                Err(ConfigError::new(path, "must be at least 1"))
            } else {
                Ok(v)
            }
        };
        let smtp = SmtpConfig {
            listen,
            tls_listen,
            hostname: s.hostname.to_ascii_lowercase(),
            max_message_size,
            max_recipients: positive("smtp.max_recipients", s.max_recipients)?,
            max_errors: positive("smtp.max_errors", s.max_errors)?,
            idle_timeout: parse_duration("smtp.idle_timeout", &s.idle_timeout)?,
            session_timeout: parse_duration("smtp.session_timeout", &s.session_timeout)?,
            max_connections: positive("smtp.max_connections", s.max_connections)?,
            max_connections_per_ip: positive(
                "smtp.max_connections_per_ip",
                s.max_connections_per_ip,
            )?,
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
        for (i, d) in raw.domain.iter().enumerate() {
            let path = format!("domain[{i}].name");
            let name = d.name.trim_end_matches('.').to_ascii_lowercase();
            if name.is_empty() || name.len() > 253 || !name.bytes().all(is_hostname_byte) {
                return Err(ConfigError::new(
                    path,
                    format!("not a domain name: {:?}", d.name),
                ));
            }
            if domains.contains(&name) {
                return Err(ConfigError::new(path, format!("{name} is listed twice")));
            }
            domains.push(name);
        }

        let mut relay_networks = Vec::new();
        for (i, n) in raw.relay.networks.iter().enumerate() {
            let net = n
                .parse::<IpNet>()
                .or_else(|_| n.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| {
                    ConfigError::new(
                        format!("relay.networks[{i}]"),
                        format!("not a CIDR network: {n:?}"),
                    )
                })?;
            relay_networks.push(net.trunc());
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
            connect_timeout: parse_duration("delivery.connect_timeout", &d.connect_timeout)?,
            command_timeout: parse_duration("delivery.command_timeout", &d.command_timeout)?,
            data_timeout: parse_duration("delivery.data_timeout", &d.data_timeout)?,
            idle_timeout: parse_duration("delivery.idle_timeout", &d.idle_timeout)?,
            max_connections: positive("delivery.max_connections", d.max_connections)?,
            max_connections_per_hop: positive(
                "delivery.max_connections_per_hop",
                d.max_connections_per_hop,
            )?,
            ..crate::deliver::DeliverySettings::default()
        };
        delivery.greeting_timeout = delivery.command_timeout;
        for (i, dest) in raw.destination.iter().enumerate() {
            let domain = dest.domain.trim_end_matches('.').to_ascii_lowercase();
            if domain.is_empty() || !domain.bytes().all(is_hostname_byte) {
                return Err(ConfigError::new(
                    format!("destination[{i}].domain"),
                    format!("not a domain name: {:?}", dest.domain),
                ));
            }
            delivery
                .destinations
                .push(crate::deliver::DestinationPolicy {
                    domain,
                    require_tls: dest.require_tls,
                });
        }

        let mut dns = crate::resolve::ResolverSettings::default();
        dns.servers = parse_addrs("dns.servers", &raw.dns.servers)?;
        dns.timeout = parse_duration("dns.timeout", &raw.dns.timeout)?;

        let q = raw.queue;
        let mut queue = crate::queue::Policy::default();
        if let Some(steps) = &q.retry {
            let steps = steps
                .iter()
                .enumerate()
                .map(|(i, v)| parse_duration(&format!("queue.retry[{i}]"), v))
                .collect::<Result<Vec<_>, _>>()?;
            queue.retry = crate::queue::RetrySchedule::try_from(steps)
                .map_err(|e| ConfigError::new("queue.retry", e.to_string()))?;
        }
        queue.jitter = crate::queue::Jitter::percent(q.jitter_percent)
            .map_err(|e| ConfigError::new("queue.jitter_percent", e.to_string()))?;
        queue.expire = parse_duration("queue.expire", &q.expire)?;
        queue.delay_warning = match &q.delay_warning {
            Scalar::Text(t) if t == "off" => None,
            v => Some(parse_duration("queue.delay_warning", v)?),
        };
        queue.lease = parse_duration("queue.lease", &q.lease)?;
        queue.max_messages = q.max_messages;
        queue.min_free_disk_bytes = parse_size("queue.min_free_disk", &q.min_free_disk)?;
        queue.dsn_max_full_bytes = parse_size("queue.dsn_max_full", &q.dsn_max_full)?;
        queue
            .validate()
            .map_err(|e| ConfigError::new("queue", e.to_string()))?;
        let store_cache_bytes = parse_size("queue.store_cache", &q.store_cache)?;
        let store_cache_bytes = usize::try_from(store_cache_bytes)
            .map_err(|_| ConfigError::new("queue.store_cache", "too large for this machine"))?;
        let queue_poll_interval = parse_duration("queue.poll_interval", &q.poll_interval)?;
        if queue_poll_interval.is_zero() {
            return Err(ConfigError::new(
                "queue.poll_interval",
                "must be more than 0",
            ));
        }

        Ok(Config {
            backend,
            smarthost,
            delivery,
            dns,
            queue,
            queue_poll_interval,
            store_cache_bytes,
            data_dir: raw.data_dir,
            smtp,
            tls,
            admin,
            domains,
            relay_networks,
            users,
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
            }],
            relay: RawRelay::default(),
            user: Vec::new(),
            backend: RawBackend::default(),
            delivery: RawDelivery::default(),
            destination: Vec::new(),
            dns: RawDns::default(),
            queue: RawQueue::default(),
        }
    }
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
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawDns {
    servers: OneOrMany,
    timeout: Scalar,
}

impl Default for RawDns {
    fn default() -> Self {
        RawDns {
            servers: OneOrMany::Many(Vec::new()),
            timeout: Scalar::Text("5s".into()),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawQueue {
    retry: Option<Vec<Scalar>>,
    jitter_percent: u8,
    expire: Scalar,
    delay_warning: Scalar,
    lease: Scalar,
    max_messages: u64,
    min_free_disk: Scalar,
    dsn_max_full: Scalar,
    poll_interval: Scalar,
    store_cache: Scalar,
}

impl Default for RawQueue {
    fn default() -> Self {
        RawQueue {
            retry: None,
            jitter_percent: 10,
            expire: Scalar::Text("5d".into()),
            delay_warning: Scalar::Text("4h".into()),
            lease: Scalar::Text("30m".into()),
            max_messages: 100_000,
            min_free_disk: Scalar::Text("256MiB".into()),
            dsn_max_full: Scalar::Text("1MiB".into()),
            poll_interval: Scalar::Text("1s".into()),
            store_cache: Scalar::Text("32MiB".into()),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUser {
    name: String,
    password_hash: String,
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
