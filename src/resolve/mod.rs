//! DNS for outbound mail: MX lookup with the RFC 5321 §5.1 rules and address lookup.
//!
//! Owns the hickory resolver. Answers are values ([`MxAnswer`], a possibly empty address list); a
//! missing record is an answer, not an error. Errors say by [`ResolveError::is_permanent`] whether
//! the queue should bounce (NXDOMAIN, an unusable name) or retry (SERVFAIL, timeout, refused,
//! DNSSEC-bogus).
//!
//! Order of equal-preference MX hosts: this module returns them in a *stable* order (preference,
//! then host name), so answers are reproducible in tests and logs. RFC 5321 §5.1 asks the client to
//! pick randomly among equal preferences; the caller does that with its own RNG
//! ([`MxAnswer::shuffle_equal_preferences`]), as `deliver` does.

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{Name, RData};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// Which address families [`Resolver::addresses`] asks for, and in which order they are tried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AddressFamilies {
    /// A only.
    Ipv4Only,
    /// AAAA only.
    Ipv6Only,
    /// A and AAAA, IPv4 addresses first (the default: IPv6 routes are still the ones more often
    /// broken on mail hosts, and a failed connect costs a timeout).
    #[default]
    Ipv4ThenIpv6,
    /// A and AAAA, IPv6 addresses first.
    Ipv6ThenIpv4,
}

/// Typed resolver settings; `config` wires `[dns]` keys to these fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolverSettings {
    /// Name servers to ask (UDP, then TCP on truncation). Empty: use the system configuration
    /// (`/etc/resolv.conf`).
    pub servers: Vec<SocketAddr>,
    /// Time limit for one query to one server.
    pub timeout: Duration,
    /// Attempts per query before giving up (hickory's `attempts`).
    pub attempts: usize,
    /// Address families for [`Resolver::addresses`].
    pub families: AddressFamilies,
}

impl Default for ResolverSettings {
    fn default() -> Self {
        ResolverSettings {
            servers: Vec::new(),
            timeout: Duration::from_secs(5),
            attempts: 2,
            families: AddressFamilies::default(),
        }
    }
}

/// One mail exchanger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MxHost {
    /// MX preference; lower is tried first. 0 for the implicit MX.
    pub preference: u16,
    /// The exchange host name, lower-case ASCII (A-labels), without the trailing dot.
    pub host: String,
}

/// The answer to "where does mail for this domain go?".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MxAnswer {
    /// MX records, sorted by preference, then by host name.
    Exchanges(Vec<MxHost>),
    /// No MX records but the domain exists: the domain itself is the implicit MX of preference 0
    /// (RFC 5321 §5.1). Whether it has addresses is for [`Resolver::addresses`] to say.
    Implicit(MxHost),
    /// The domain publishes a null MX (`MX 0 .`, RFC 7505): it accepts no mail. Permanent.
    NullMx,
}

impl MxAnswer {
    /// The hosts to try, best first; empty for a null MX.
    pub fn hosts(&self) -> &[MxHost] {
        match self {
            MxAnswer::Exchanges(hosts) => hosts,
            MxAnswer::Implicit(host) => std::slice::from_ref(host),
            MxAnswer::NullMx => &[],
        }
    }

    /// Shuffles hosts of equal preference with the caller's RNG (RFC 5321 §5.1: "SHOULD pick one
    /// at random"), keeping the preference order.
    pub fn shuffle_equal_preferences<R: rand::Rng + ?Sized>(&mut self, rng: &mut R) {
        use rand::seq::SliceRandom;
        if let MxAnswer::Exchanges(hosts) = self {
            for group in hosts.chunk_by_mut(|a, b| a.preference == b.preference) {
                group.shuffle(rng);
            }
        }
    }
}

/// What can go wrong in a lookup. The query name and type ride in every variant.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ResolveError {
    /// The name cannot be a DNS name (bad label, too long). Permanent.
    #[error("not a valid domain name: {name:?}")]
    InvalidName {
        /// The name as given.
        name: String,
    },
    /// The domain does not exist (NXDOMAIN). Permanent.
    #[error("{name} does not exist (NXDOMAIN, {record_type} query)")]
    NxDomain {
        /// The queried name.
        name: String,
        /// The record type asked for.
        record_type: &'static str,
    },
    /// DNSSEC validation failed: not retried into a fallback, held for retry. Temporary.
    #[error("DNSSEC validation failed for {name} {record_type}")]
    Bogus {
        /// The queried name.
        name: String,
        /// The record type asked for.
        record_type: &'static str,
    },
    /// SERVFAIL, REFUSED, timeout, no server reachable: try again later. Temporary.
    #[error("{record_type} lookup of {name} failed temporarily: {source}")]
    Temporary {
        /// The queried name.
        name: String,
        /// The record type asked for.
        record_type: &'static str,
        /// What hickory reported.
        #[source]
        source: Box<NetError>,
    },
    /// The resolver could not be built (unreadable `/etc/resolv.conf`, no servers).
    #[error("cannot set up the DNS resolver: {source}")]
    Setup {
        /// What hickory reported.
        #[source]
        source: Box<NetError>,
    },
}

impl ResolveError {
    /// `true` when retrying cannot help: the queue bounces instead of deferring.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            ResolveError::InvalidName { .. } | ResolveError::NxDomain { .. }
        )
    }
}

/// An asynchronous stub resolver for MX and address lookups. Cheap to clone (shared cache).
#[derive(Clone)]
pub struct Resolver {
    inner: TokioResolver,
    families: AddressFamilies,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver")
            .field("families", &self.families)
            .finish_non_exhaustive()
    }
}

/// Outcome of one typed query, before it is interpreted for MX or addresses.
enum Found {
    Records(Vec<RData>),
    /// NOERROR with no records of that type (NODATA).
    NoData,
    NxDomain,
}

impl Resolver {
    /// Builds a resolver from settings: the listed servers, or the system configuration when the
    /// list is empty. Must be called inside a tokio runtime.
    pub fn new(settings: &ResolverSettings) -> Result<Resolver, ResolveError> {
        let mut builder = if settings.servers.is_empty() {
            TokioResolver::builder_tokio().map_err(|source| ResolveError::Setup {
                source: Box::new(source),
            })?
        } else {
            let servers = settings
                .servers
                .iter()
                .map(|addr| {
                    let mut udp = ConnectionConfig::udp();
                    udp.port = addr.port();
                    let mut tcp = ConnectionConfig::tcp();
                    tcp.port = addr.port();
                    NameServerConfig::new(addr.ip(), true, vec![udp, tcp])
                })
                .collect();
            TokioResolver::builder_with_config(
                ResolverConfig::from_name_servers(servers),
                TokioRuntimeProvider::default(),
            )
        };
        let options: &mut ResolverOpts = builder.options_mut();
        options.timeout = settings.timeout;
        options.attempts = settings.attempts;
        // Truncated UDP answers are retried over TCP; other errors are not hidden behind a retry.
        options.try_tcp_on_error = false;
        let inner = builder.build().map_err(|source| ResolveError::Setup {
            source: Box::new(source),
        })?;
        Ok(Resolver {
            inner,
            families: settings.families,
        })
    }

    /// Resolver that asks only the given servers (tests, `[dns] servers`).
    pub fn with_servers(servers: &[SocketAddr]) -> Result<Resolver, ResolveError> {
        Resolver::new(&ResolverSettings {
            servers: servers.to_vec(),
            ..ResolverSettings::default()
        })
    }

    /// The address families [`Resolver::addresses`] asks for, in order.
    pub fn families(&self) -> AddressFamilies {
        self.families
    }

    /// MX hosts for `domain`, best first (RFC 5321 §5.1, RFC 7505).
    ///
    /// - MX records: sorted by preference, then host name. Root exchanges (`.`) mixed with real
    ///   ones are dropped (a misconfiguration; the real ones still take mail).
    /// - Only null MX: [`MxAnswer::NullMx`].
    /// - No MX (NODATA): [`MxAnswer::Implicit`] with the domain itself.
    /// - NXDOMAIN: `Err(NxDomain)`, permanent.
    ///
    /// Cancel-safe: it only reads; dropping it abandons the query.
    pub async fn mx_hosts(&self, domain: &str) -> Result<MxAnswer, ResolveError> {
        let name = fqdn(domain)?;
        match self.query(&name, domain, "MX").await? {
            Found::NxDomain => Err(ResolveError::NxDomain {
                name: display_name(&name),
                record_type: "MX",
            }),
            Found::NoData => Ok(MxAnswer::Implicit(MxHost {
                preference: 0,
                host: display_name(&name),
            })),
            Found::Records(records) => {
                let mut null_seen = false;
                let mut hosts: Vec<MxHost> = Vec::new();
                for rdata in records {
                    if let RData::MX(mx) = rdata {
                        if mx.exchange.is_root() {
                            null_seen = true;
                        } else {
                            hosts.push(MxHost {
                                preference: mx.preference,
                                host: display_name(&mx.exchange),
                            });
                        }
                    }
                }
                if hosts.is_empty() {
                    return Ok(if null_seen {
                        MxAnswer::NullMx
                    } else {
                        // Only a CNAME chain and no MX at its end: treat like NODATA.
                        MxAnswer::Implicit(MxHost {
                            preference: 0,
                            host: display_name(&name),
                        })
                    });
                }
                hosts.sort_by(|a, b| (a.preference, &a.host).cmp(&(b.preference, &b.host)));
                hosts.dedup();
                Ok(MxAnswer::Exchanges(hosts))
            }
        }
    }

    /// Addresses of `host` in the configured family order. An empty list means the host has no
    /// address records (NODATA or NXDOMAIN): an answer, not an error. An IP literal (with or
    /// without brackets) is returned as is.
    ///
    /// When both families are asked for, one family's temporary failure is ignored if the other
    /// gave addresses; with no addresses at all, a temporary failure of either wins (we cannot
    /// say "no address" while one answer is missing).
    ///
    /// Cancel-safe: it only reads.
    pub async fn addresses(&self, host: &str) -> Result<Vec<IpAddr>, ResolveError> {
        let literal = host.trim_start_matches('[').trim_end_matches(']');
        // RFC 5321 §4.1.3 spells IPv6 literals `[IPv6:2001:db8::1]`.
        let literal = literal
            .strip_prefix("IPv6:")
            .or_else(|| literal.strip_prefix("ipv6:"))
            .unwrap_or(literal);
        if let Ok(ip) = literal.parse::<IpAddr>() {
            return Ok(vec![ip]);
        }
        let name = fqdn(host)?;
        let (first, second): (&'static str, Option<&'static str>) = match self.families {
            AddressFamilies::Ipv4Only => ("A", None),
            AddressFamilies::Ipv6Only => ("AAAA", None),
            AddressFamilies::Ipv4ThenIpv6 => ("A", Some("AAAA")),
            AddressFamilies::Ipv6ThenIpv4 => ("AAAA", Some("A")),
        };
        let first_result = self.query(&name, host, first).await;
        let second_result = match second {
            Some(rtype) => Some(self.query(&name, host, rtype).await),
            None => None,
        };
        let mut addresses = Vec::new();
        let mut temporary = None;
        for result in std::iter::once(first_result).chain(second_result) {
            match result {
                Ok(Found::Records(records)) => {
                    addresses.extend(records.iter().filter_map(RData::ip_addr));
                }
                Ok(Found::NoData | Found::NxDomain) => {}
                Err(error) => {
                    if temporary.is_none() {
                        temporary = Some(error);
                    }
                }
            }
        }
        match temporary {
            Some(error) if addresses.is_empty() => Err(error),
            _ => Ok(addresses),
        }
    }

    /// One query of one type; classifies hickory's result. Cancel-safe: it only reads.
    async fn query(
        &self,
        name: &Name,
        as_given: &str,
        record_type: &'static str,
    ) -> Result<Found, ResolveError> {
        use hickory_resolver::proto::rr::RecordType;
        let rtype = match record_type {
            "MX" => RecordType::MX,
            "A" => RecordType::A,
            "AAAA" => RecordType::AAAA,
            _ => RecordType::Unknown(0),
        };
        match self.inner.lookup(name.clone(), rtype).await {
            Ok(lookup) => {
                let records: Vec<RData> = lookup
                    .answers()
                    .iter()
                    .filter(|r| r.record_type() == rtype)
                    .map(|r| r.data.clone())
                    .collect();
                if records.is_empty() {
                    Ok(Found::NoData)
                } else {
                    Ok(Found::Records(records))
                }
            }
            Err(error) => classify(error, name, as_given, record_type),
        }
    }
}

fn classify(
    error: NetError,
    name: &Name,
    _as_given: &str,
    record_type: &'static str,
) -> Result<Found, ResolveError> {
    if error.is_nx_domain() {
        return Ok(Found::NxDomain);
    }
    match &error {
        NetError::Dns(DnsError::NoRecordsFound(no))
            if no.response_code == ResponseCode::NoError =>
        {
            Ok(Found::NoData)
        }
        NetError::Dns(DnsError::DnssecBogus) => Err(ResolveError::Bogus {
            name: display_name(name),
            record_type,
        }),
        _ => Err(ResolveError::Temporary {
            name: display_name(name),
            record_type,
            source: Box::new(error),
        }),
    }
}

/// Parses a domain (U-labels become A-labels) into an absolute name, so that no search list or
/// `ndots` rule ever turns `example.test` into `example.test.corp.local`.
fn fqdn(domain: &str) -> Result<Name, ResolveError> {
    let trimmed = domain.trim_end_matches('.');
    if trimmed.is_empty() {
        return Err(ResolveError::InvalidName {
            name: domain.to_owned(),
        });
    }
    let mut name = Name::from_utf8(trimmed).map_err(|_| ResolveError::InvalidName {
        name: domain.to_owned(),
    })?;
    name.set_fqdn(true);
    Ok(name)
}

/// Lower-case ASCII form without the trailing dot, as used in logs, EHLO targets and TLS names.
fn display_name(name: &Name) -> String {
    let mut text = name.to_lowercase().to_ascii();
    if text.ends_with('.') {
        text.pop();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn host(preference: u16, host: &str) -> MxHost {
        MxHost {
            preference,
            host: host.to_owned(),
        }
    }

    #[test]
    fn fqdn_is_absolute_and_idna() {
        assert_eq!(
            display_name(&fqdn("Example.TEST.").unwrap()),
            "example.test"
        );
        assert!(fqdn("example.test").unwrap().is_fqdn());
        assert_eq!(
            display_name(&fqdn("bücher.example").unwrap()),
            "xn--bcher-kva.example"
        );
        assert!(matches!(fqdn(""), Err(ResolveError::InvalidName { .. })));
        assert!(matches!(fqdn("."), Err(ResolveError::InvalidName { .. })));
        let long_label = "a".repeat(64);
        assert!(fqdn(&format!("{long_label}.test")).is_err());
    }

    #[test]
    fn shuffle_keeps_preference_order() {
        let mut answer = MxAnswer::Exchanges(vec![
            host(10, "a"),
            host(10, "b"),
            host(10, "c"),
            host(20, "d"),
            host(20, "e"),
            host(30, "f"),
        ]);
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for _ in 0..20 {
            answer.shuffle_equal_preferences(&mut rng);
            let prefs: Vec<u16> = answer.hosts().iter().map(|h| h.preference).collect();
            assert_eq!(prefs, [10, 10, 10, 20, 20, 30]);
            assert_eq!(answer.hosts()[5].host, "f");
        }
    }

    #[test]
    fn null_mx_has_no_hosts() {
        assert!(MxAnswer::NullMx.hosts().is_empty());
        assert_eq!(MxAnswer::Implicit(host(0, "x")).hosts().len(), 1);
    }

    #[test]
    fn permanence_by_variant() {
        assert!(
            ResolveError::NxDomain {
                name: "x".into(),
                record_type: "MX"
            }
            .is_permanent()
        );
        assert!(ResolveError::InvalidName { name: "x".into() }.is_permanent());
        assert!(
            !ResolveError::Temporary {
                name: "x".into(),
                record_type: "MX",
                source: Box::new(NetError::Timeout)
            }
            .is_permanent()
        );
        assert!(
            !ResolveError::Bogus {
                name: "x".into(),
                record_type: "MX"
            }
            .is_permanent()
        );
    }
}
