//! DNS for outbound mail: MX lookup with the RFC 5321 §5.1 rules, address lookup, the DIME
//! `_dx` record (DIME.md §9) and TLSA records for DANE (RFC 7672), validated by DNSSEC when a
//! trust anchor is configured.
//!
//! Owns the hickory resolver. Answers are values ([`MxAnswer`], [`DxRecord`], [`Tlsa`] sets, a
//! possibly empty address list); a missing record is an answer, not an error. Validated answers
//! carry a [`Verdict`] (Secure or Insecure); a DNSSEC-bogus answer is never a value but always
//! [`ResolveError::Bogus`], so no caller can read it as "no record" and fall back to SMTP. Errors
//! say by [`ResolveError::is_permanent`] whether the queue should bounce (NXDOMAIN, an unusable
//! name) or retry (SERVFAIL, timeout, refused, DNSSEC-bogus, a malformed `_dx` record).
//!
//! Order of equal-preference MX hosts: this module returns them in a *stable* order (preference,
//! then host name), so answers are reproducible in tests and logs. RFC 5321 §5.1 asks the client to
//! pick randomly among equal preferences; the caller does that with its own RNG
//! ([`MxAnswer::shuffle_equal_preferences`]), as `deliver` does.

mod verdict;

pub use verdict::Verdict;

use crate::dane::Tlsa;
use crate::dime::DxRecord;
use hickory_resolver::TokioResolver;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::dnssec::{Proof, TrustAnchors};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{Name, RData, Record, RecordType};
use hickory_resolver::proto::serialize::txt::ParseError;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
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
    /// DNSSEC trust anchor: a file of DNSKEY records in zone-file syntax, all keys of the
    /// anchored zone (`[dns] trust_anchor`). With it the resolver validates every answer; without
    /// it every answer is [`Verdict::Insecure`].
    pub trust_anchor: Option<PathBuf>,
}

impl Default for ResolverSettings {
    fn default() -> Self {
        ResolverSettings {
            servers: Vec::new(),
            timeout: Duration::from_secs(5),
            attempts: 2,
            families: AddressFamilies::default(),
            trust_anchor: None,
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
    /// DNSSEC validation failed (a bad signature, a DS that matches no key, a missing or broken
    /// denial of existence): neither a record nor "no record". Held for retry, never a quiet
    /// fallback. Temporary.
    #[error("DNSSEC validation failed for {name} {record_type} (bogus)")]
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
    /// The `_dx` TXT record does not parse as a DIME management record (DIME.md §9.1). The
    /// domain published something, so this is neither "no record" nor a reason to fall back to
    /// SMTP. Temporary: the publisher can fix it before the message expires.
    #[error("{name}: the DIME record does not parse: {source}")]
    InvalidDxRecord {
        /// The queried name (`_dx.<domain>`).
        name: String,
        /// What the parser found.
        #[source]
        source: crate::dime::Error,
    },
    /// More than one TXT record at `_dx.<domain>`: which one is meant is unknowable (as for SPF,
    /// RFC 7208 §4.5). Temporary.
    #[error("{name}: {count} TXT records where one DIME record is expected")]
    MultipleDxRecords {
        /// The queried name (`_dx.<domain>`).
        name: String,
        /// How many TXT records were found.
        count: usize,
    },
    /// The trust anchor file could not be read or holds no DNSKEY record.
    #[error("DNSSEC trust anchor {path}: {reason}")]
    TrustAnchor {
        /// The configured file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
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

    /// `true` for a DNSSEC-bogus answer: hold the message, never deliver it by another route.
    pub fn is_bogus(&self) -> bool {
        matches!(self, ResolveError::Bogus { .. })
    }
}

/// An asynchronous stub resolver for MX, address, `_dx` and TLSA lookups; it validates DNSSEC
/// when built with a trust anchor. Cheap to clone (shared cache).
#[derive(Clone)]
pub struct Resolver {
    inner: TokioResolver,
    families: AddressFamilies,
    validating: bool,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver")
            .field("families", &self.families)
            .field("validating", &self.validating)
            .finish_non_exhaustive()
    }
}

/// Outcome of one typed query, before it is interpreted for MX, addresses, `_dx` or TLSA.
#[derive(Debug)]
enum Found {
    Records(Vec<RData>, Verdict),
    /// NOERROR with no records of that type (NODATA).
    NoData(Verdict),
    NxDomain(Verdict),
}

impl Resolver {
    /// Builds a resolver from settings: the listed servers, or the system configuration when the
    /// list is empty; validating when a trust anchor is set. Must be called inside a tokio
    /// runtime.
    pub fn new(settings: &ResolverSettings) -> Result<Resolver, ResolveError> {
        let anchors = match &settings.trust_anchor {
            Some(path) => Some(load_trust_anchor(path)?),
            None => None,
        };
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
        let validating = anchors.is_some();
        if let Some(anchors) = anchors {
            // Sets `validate` and the DO bit; hickory's built-in root keys are not used.
            builder = builder.with_trust_anchor(Arc::new(anchors));
        }
        let inner = builder.build().map_err(|source| ResolveError::Setup {
            source: Box::new(source),
        })?;
        Ok(Resolver {
            inner,
            families: settings.families,
            validating,
        })
    }

    /// The underlying hickory resolver, for libraries that take one (mail-auth's SPF, DKIM and
    /// DMARC checks) and should ask the same servers with the same validation.
    pub fn hickory(&self) -> TokioResolver {
        self.inner.clone()
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

    /// Whether answers are DNSSEC-validated (a trust anchor is configured). When not, every
    /// verdict is [`Verdict::Insecure`].
    pub fn is_validating(&self) -> bool {
        self.validating
    }

    /// MX hosts for `domain`, best first (RFC 5321 §5.1, RFC 7505), as [`Resolver::mx`] without
    /// the verdict. A bogus answer is still an error ([`ResolveError::Bogus`]).
    ///
    /// Cancel-safe: it only reads; dropping it abandons the query.
    pub async fn mx_hosts(&self, domain: &str) -> Result<MxAnswer, ResolveError> {
        self.mx(domain).await.map(|(answer, _)| answer)
    }

    /// MX hosts for `domain`, best first (RFC 5321 §5.1, RFC 7505), with the DNSSEC verdict of
    /// the answer (of the denial, for an implicit MX).
    ///
    /// - MX records: sorted by preference, then host name. Root exchanges (`.`) mixed with real
    ///   ones are dropped (a misconfiguration; the real ones still take mail).
    /// - Only null MX: [`MxAnswer::NullMx`].
    /// - No MX (NODATA): [`MxAnswer::Implicit`] with the domain itself.
    /// - NXDOMAIN: `Err(NxDomain)`, permanent.
    /// - DNSSEC-bogus: `Err(Bogus)`.
    ///
    /// Cancel-safe: it only reads; dropping it abandons the query.
    pub async fn mx(&self, domain: &str) -> Result<(MxAnswer, Verdict), ResolveError> {
        let name = fqdn(domain)?;
        match self.query(&name, RecordType::MX, "MX").await? {
            Found::NxDomain(_) => Err(ResolveError::NxDomain {
                name: display_name(&name),
                record_type: "MX",
            }),
            Found::NoData(verdict) => Ok((
                MxAnswer::Implicit(MxHost {
                    preference: 0,
                    host: display_name(&name),
                }),
                verdict,
            )),
            Found::Records(records, verdict) => {
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
                    let answer = if null_seen {
                        MxAnswer::NullMx
                    } else {
                        // Only a CNAME chain and no MX at its end: treat like NODATA.
                        MxAnswer::Implicit(MxHost {
                            preference: 0,
                            host: display_name(&name),
                        })
                    };
                    return Ok((answer, verdict));
                }
                hosts.sort_by(|a, b| (a.preference, &a.host).cmp(&(b.preference, &b.host)));
                hosts.dedup();
                Ok((MxAnswer::Exchanges(hosts), verdict))
            }
        }
    }

    /// The DIME management record of `domain` (the TXT record at `_dx.<domain>`, DIME.md §9.1;
    /// character-strings concatenated), with its DNSSEC verdict.
    ///
    /// - No such record (NXDOMAIN or NODATA at `_dx.<domain>`): `Ok(None)`: the domain does not
    ///   speak DIME.
    /// - DNSSEC-bogus (the record or its denial): `Err(Bogus)`, never `Ok(None)`.
    /// - A record that does not parse: `Err(InvalidDxRecord)`; several: `Err(MultipleDxRecords)`.
    /// - SERVFAIL, timeout: `Err(Temporary)`.
    ///
    /// Cancel-safe: it only reads.
    pub async fn dx(&self, domain: &str) -> Result<Option<(DxRecord, Verdict)>, ResolveError> {
        let name = prefixed(crate::dime::DX_PREFIX, domain)?;
        match self.query(&name, RecordType::TXT, "TXT").await? {
            Found::NxDomain(_) | Found::NoData(_) => Ok(None),
            Found::Records(records, verdict) => {
                let txts: Vec<_> = records
                    .into_iter()
                    .filter_map(|r| match r {
                        RData::TXT(txt) => Some(txt),
                        _ => None,
                    })
                    .collect();
                match txts.as_slice() {
                    [] => Ok(None),
                    [txt] => {
                        let strings: Vec<&[u8]> = txt.txt_data.iter().map(|s| &s[..]).collect();
                        DxRecord::parse(&strings)
                            .map(|record| Some((record, verdict)))
                            .map_err(|source| ResolveError::InvalidDxRecord {
                                name: display_name(&name),
                                source,
                            })
                    }
                    more => Err(ResolveError::MultipleDxRecords {
                        name: display_name(&name),
                        count: more.len(),
                    }),
                }
            }
        }
    }

    /// The TXT records at `<prefix>.<domain>` (`_mta-sts`, `_smtp._tls`), each record's
    /// character-strings concatenated (RFC 8461 §3.1, RFC 8460 §3), with the DNSSEC verdict.
    /// Records that are not valid UTF-8 are kept lossily: the callers' parsers refuse them.
    ///
    /// - None published (NXDOMAIN or NODATA): `Ok(None)`.
    /// - DNSSEC-bogus: `Err(Bogus)`; SERVFAIL, timeout: `Err(Temporary)`.
    ///
    /// Cancel-safe: it only reads.
    pub async fn txt(
        &self,
        prefix: &str,
        domain: &str,
    ) -> Result<Option<(Vec<String>, Verdict)>, ResolveError> {
        let name = prefixed(prefix, domain)?;
        match self.query(&name, RecordType::TXT, "TXT").await? {
            Found::NxDomain(_) | Found::NoData(_) => Ok(None),
            Found::Records(records, verdict) => {
                let texts: Vec<String> = records
                    .into_iter()
                    .filter_map(|r| match r {
                        RData::TXT(txt) => Some(
                            txt.txt_data
                                .iter()
                                .map(|s| String::from_utf8_lossy(s).into_owned())
                                .collect::<String>(),
                        ),
                        _ => None,
                    })
                    .collect();
                if texts.is_empty() {
                    return Ok(None);
                }
                Ok(Some((texts, verdict)))
            }
        }
    }

    /// TLSA records for a TCP service: `_<port>._tcp.<host>` (RFC 6698 §3; `_25._tcp.<mx>` for
    /// SMTP, RFC 7672 §2.2), with the DNSSEC verdict. Only a [`Verdict::Secure`] set may be
    /// used for DANE (RFC 7672 §2.2: insecure TLSA records are ignored).
    ///
    /// - None published (NXDOMAIN or NODATA): `Ok(None)`.
    /// - DNSSEC-bogus: `Err(Bogus)`; SERVFAIL, timeout: `Err(Temporary)`. RFC 7672 §2.2 asks the
    ///   client to treat both as "this MX host cannot be used now", not as "no DANE".
    ///
    /// Cancel-safe: it only reads.
    pub async fn tlsa(
        &self,
        port: u16,
        host: &str,
    ) -> Result<Option<(Vec<Tlsa>, Verdict)>, ResolveError> {
        let name = prefixed(&format!("_{port}._tcp"), host)?;
        match self.query(&name, RecordType::TLSA, "TLSA").await? {
            Found::NxDomain(_) | Found::NoData(_) => Ok(None),
            Found::Records(records, verdict) => {
                let mut set: Vec<Tlsa> = records
                    .into_iter()
                    .filter_map(|r| match r {
                        RData::TLSA(t) => Some(Tlsa {
                            usage: t.cert_usage.into(),
                            selector: t.selector.into(),
                            matching: t.matching.into(),
                            data: t.cert_data,
                        }),
                        _ => None,
                    })
                    .collect();
                set.dedup();
                if set.is_empty() {
                    return Ok(None);
                }
                Ok(Some((set, verdict)))
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
        self.addresses_with_verdict(host)
            .await
            .map(|(addresses, _)| addresses)
    }

    /// [`Resolver::addresses`] with the DNSSEC verdict: Secure only when every family that was
    /// asked and answered is secure (RFC 7672 §2.2.2 looks up TLSA records only for MX hosts
    /// whose addresses are secure). An IP literal is Insecure: nothing proves it.
    ///
    /// Cancel-safe: it only reads.
    pub async fn addresses_with_verdict(
        &self,
        host: &str,
    ) -> Result<(Vec<IpAddr>, Verdict), ResolveError> {
        let literal = host.trim_start_matches('[').trim_end_matches(']');
        // RFC 5321 §4.1.3 spells IPv6 literals `[IPv6:2001:db8::1]`.
        let literal = literal
            .strip_prefix("IPv6:")
            .or_else(|| literal.strip_prefix("ipv6:"))
            .unwrap_or(literal);
        if let Ok(ip) = literal.parse::<IpAddr>() {
            return Ok((vec![ip], Verdict::Insecure));
        }
        let name = fqdn(host)?;
        let (first, second): (RecordType, Option<RecordType>) = match self.families {
            AddressFamilies::Ipv4Only => (RecordType::A, None),
            AddressFamilies::Ipv6Only => (RecordType::AAAA, None),
            AddressFamilies::Ipv4ThenIpv6 => (RecordType::A, Some(RecordType::AAAA)),
            AddressFamilies::Ipv6ThenIpv4 => (RecordType::AAAA, Some(RecordType::A)),
        };
        let label = |rtype: RecordType| if rtype == RecordType::A { "A" } else { "AAAA" };
        let first_result = self.query(&name, first, label(first)).await;
        let second_result = match second {
            Some(rtype) => Some(self.query(&name, rtype, label(rtype)).await),
            None => None,
        };
        let mut addresses = Vec::new();
        let mut temporary = None;
        let mut all_secure = true;
        for result in std::iter::once(first_result).chain(second_result) {
            match result {
                Ok(Found::Records(records, verdict)) => {
                    all_secure &= verdict.is_secure();
                    addresses.extend(records.iter().filter_map(RData::ip_addr));
                }
                Ok(Found::NoData(verdict) | Found::NxDomain(verdict)) => {
                    all_secure &= verdict.is_secure();
                }
                // A bogus family is never ignored in favour of the other: it may be the attack.
                Err(error @ ResolveError::Bogus { .. }) => return Err(error),
                Err(error) => {
                    all_secure = false;
                    if temporary.is_none() {
                        temporary = Some(error);
                    }
                }
            }
        }
        let verdict = if all_secure {
            Verdict::Secure
        } else {
            Verdict::Insecure
        };
        match temporary {
            Some(error) if addresses.is_empty() => Err(error),
            _ => Ok((addresses, verdict)),
        }
    }

    /// One query of one type; classifies hickory's result and judges its DNSSEC proofs.
    /// Cancel-safe: it only reads.
    async fn query(
        &self,
        name: &Name,
        rtype: RecordType,
        record_type: &'static str,
    ) -> Result<Found, ResolveError> {
        match self.inner.lookup(name.clone(), rtype).await {
            Ok(lookup) => {
                // The whole answer (each CNAME of a chain and the records at its end) must be
                // proven for the answer to be secure; the RRSIGs themselves carry no verdict.
                let verdict = self.positive_verdict(
                    lookup
                        .answers()
                        .iter()
                        .filter(|r| r.record_type() != RecordType::RRSIG),
                );
                let verdict = verdict.map_err(|()| ResolveError::Bogus {
                    name: display_name(name),
                    record_type,
                })?;
                let records: Vec<RData> = lookup
                    .answers()
                    .iter()
                    .filter(|r| r.record_type() == rtype)
                    .map(|r| r.data.clone())
                    .collect();
                if records.is_empty() {
                    Ok(Found::NoData(verdict))
                } else {
                    Ok(Found::Records(records, verdict))
                }
            }
            Err(error) => self.classify(error, name, record_type),
        }
    }

    fn positive_verdict<'a>(
        &self,
        records: impl Iterator<Item = &'a Record>,
    ) -> Result<Verdict, ()> {
        if !self.validating {
            return Ok(Verdict::Insecure);
        }
        verdict::from_proofs(records.map(|r| r.proof))
    }

    /// The verdict of a denial that hickory's validator let through (it returns `Nsec` errors
    /// for denials it could not prove): secure when every authority record is.
    fn negative_verdict(&self, authorities: Option<&[Record]>) -> Verdict {
        let proofs: Vec<Proof> = authorities
            .unwrap_or_default()
            .iter()
            .filter(|r| r.record_type() != RecordType::RRSIG)
            .map(|r| r.proof)
            .collect();
        if self.validating && !proofs.is_empty() && proofs.iter().all(Proof::is_secure) {
            Verdict::Secure
        } else {
            Verdict::Insecure
        }
    }

    fn classify(
        &self,
        error: NetError,
        name: &Name,
        record_type: &'static str,
    ) -> Result<Found, ResolveError> {
        let bogus = || ResolveError::Bogus {
            name: display_name(name),
            record_type,
        };
        match &error {
            NetError::Dns(DnsError::NoRecordsFound(no)) => {
                let verdict = self.negative_verdict(no.authorities.as_deref());
                match no.response_code {
                    ResponseCode::NXDomain => return Ok(Found::NxDomain(verdict)),
                    ResponseCode::NoError => return Ok(Found::NoData(verdict)),
                    _ => {}
                }
            }
            NetError::Dns(DnsError::Nsec {
                proof, response, ..
            }) => {
                return match proof {
                    Proof::Bogus | Proof::Indeterminate => Err(bogus()),
                    Proof::Secure | Proof::Insecure => {
                        let verdict = if proof.is_secure() && self.validating {
                            Verdict::Secure
                        } else {
                            Verdict::Insecure
                        };
                        if response.response_code == ResponseCode::NXDomain {
                            Ok(Found::NxDomain(verdict))
                        } else {
                            Ok(Found::NoData(verdict))
                        }
                    }
                };
            }
            NetError::Dns(DnsError::DnssecBogus) => return Err(bogus()),
            _ => {}
        }
        Err(ResolveError::Temporary {
            name: display_name(name),
            record_type,
            source: Box::new(error),
        })
    }
}

/// Reads a DNSKEY trust anchor file (hickory's format: zone-file DNSKEY lines).
fn load_trust_anchor(path: &std::path::Path) -> Result<TrustAnchors, ResolveError> {
    let error = |reason: String| ResolveError::TrustAnchor {
        path: path.to_owned(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| error(e.to_string()))?;
    let anchors: TrustAnchors = text.parse().map_err(|e: ParseError| error(e.to_string()))?;
    // An empty set would make every answer bogus: say so at start, not at the first lookup.
    // (hickory's `is_empty` counts root keys only, so look at the text.)
    let has_key = text.lines().any(|line| {
        let line = line.split(';').next().unwrap_or_default();
        line.split_ascii_whitespace()
            .any(|t| t.eq_ignore_ascii_case("DNSKEY"))
    });
    if !has_key {
        return Err(error("no DNSKEY record in the file".to_owned()));
    }
    Ok(anchors)
}

/// `<prefix>.<domain>` as an absolute name (`_dx.example.test.`, `_25._tcp.mx.example.test.`).
fn prefixed(prefix: &str, domain: &str) -> Result<Name, ResolveError> {
    let base = fqdn(domain)?;
    let mut name = Name::from_ascii(prefix)
        .and_then(|p| p.append_domain(&base))
        .map_err(|_| ResolveError::InvalidName {
            name: domain.to_owned(),
        })?;
    name.set_fqdn(true);
    Ok(name)
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
    fn prefixed_names_for_dx_and_tlsa() {
        assert_eq!(
            display_name(&prefixed("_dx", "Example.TEST.").unwrap()),
            "_dx.example.test"
        );
        let tlsa = prefixed("_25._tcp", "mx.example.test").unwrap();
        assert!(tlsa.is_fqdn());
        assert_eq!(display_name(&tlsa), "_25._tcp.mx.example.test");
        assert!(matches!(
            prefixed("_dx", ""),
            Err(ResolveError::InvalidName { .. })
        ));
        // 253 octets of domain leave no room for the prefix.
        let long = [
            "a".repeat(63),
            "b".repeat(63),
            "c".repeat(63),
            "d".repeat(61),
        ]
        .join(".");
        assert!(fqdn(&long).is_ok());
        assert!(matches!(
            prefixed("_25._tcp", &long),
            Err(ResolveError::InvalidName { .. })
        ));
    }

    #[test]
    fn dx_errors_defer_and_are_not_bogus() {
        let malformed = ResolveError::InvalidDxRecord {
            name: "_dx.x".into(),
            source: crate::dime::DxRecord::parse_str("ver=2").unwrap_err(),
        };
        let multiple = ResolveError::MultipleDxRecords {
            name: "_dx.x".into(),
            count: 2,
        };
        for error in [malformed, multiple] {
            assert!(!error.is_permanent() && !error.is_bogus(), "{error}");
        }
        assert!(
            ResolveError::Bogus {
                name: "x".into(),
                record_type: "TXT"
            }
            .is_bogus()
        );
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
