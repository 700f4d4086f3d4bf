//! Which next hop a recipient goes to, and in what form: the one pure function of DESIGN.md §1,
//! [`route`], from the address, how the message arrived ([`Arrival`]), what the lookup phase
//! found ([`Lookups`]) and the configuration ([`RouteConfig`]). No I/O: the runner looks up
//! first, then asks.
//!
//! The rules, first match wins:
//! 1. an address without a usable domain fails (5.1.3);
//! 2. a served domain (or a bare local part such as `Postmaster`) goes to the backend, or is held
//!    (4.3.5) while none is configured. On the way, D/MIME that arrived over DMTP is opened for a
//!    trustful user (*unwrap*) or passed on sealed for a cautious one; legacy mail for a cautious
//!    user is sealed to their signet (*protect at rest*). D/MIME from another organization for a
//!    served domain's bridge identity is a failure report for mail the bridge wrapped: it is
//!    *returned* to the legacy sender it names, backend or not;
//! 3. D/MIME that arrived over DMTP for anyone else fails, unless one of our own authors
//!    submitted it (and we signed it as origin): that goes on over DMTP as it is, whatever the
//!    destination's policy, as it can be read by nobody but its DIME recipient;
//! 4. a domain whose DIME policy is `off` goes over SMTP;
//! 5. a domain that publishes `_dx`, with a recipient signet found, is *wrapped* and goes over DMTP;
//!    a `_dx` or signet lookup that failed for now, or a `_dx` that failed DNSSEC validation, holds
//!    the recipient: never a quiet fallback to SMTP, which would send in clear text what the domain
//!    asked to receive encrypted;
//! 6. a domain without `_dx` (or whose DIME server knows no such user) follows its policy's
//!    fallback: SMTP (TLS optional or required), hold, or bounce;
//! 7. SMTP goes to the smarthost if one is configured, else to the domain's MX hosts.

use crate::deliver::NextHop as SmtpHop;
use crate::domain::{Domain, DomainError};
use crate::status::{Diagnosis, EnhancedStatus};
use std::collections::{BTreeMap, BTreeSet};

/// The domains dimegate accepts mail for, in their comparable form ([`Domain`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServedDomains(BTreeSet<Domain>);

impl ServedDomains {
    /// From domains as configured.
    pub fn new(domains: impl IntoIterator<Item = Domain>) -> ServedDomains {
        ServedDomains(domains.into_iter().collect())
    }

    /// Whether `domain` is served here.
    pub fn contains(&self, domain: &Domain) -> bool {
        self.0.contains(domain)
    }

    /// The first served domain in order, the organization of last resort for a relayed sender.
    pub fn first(&self) -> Option<&Domain> {
        self.0.iter().next()
    }
}

/// Whether mail to a domain goes out as DIME (`[[destination]] dime`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum DimeMode {
    /// Only as DIME: a domain without DIME gets the fallback, which must not be SMTP.
    Require,
    /// As DIME when the domain publishes `_dx`, else the fallback.
    #[default]
    Prefer,
    /// Never as DIME: `_dx` is not even asked.
    Off,
}

/// What becomes of mail that cannot go as DIME: the domain publishes no `_dx`, or its DIME
/// server says the recipient has no signet (`[[destination]] fallback`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Fallback {
    /// Over SMTP, TLS as the delivery settings say.
    #[default]
    Smtp,
    /// Over SMTP with TLS required (the delivery settings enforce it for the domain).
    SmtpTls,
    /// Keep it queued, retried on the schedule until it expires.
    Hold,
    /// Fail the recipient now.
    Bounce,
}

/// A destination's DIME policy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct DimePolicy {
    /// DIME or not.
    pub mode: DimeMode,
    /// When not.
    pub fallback: Fallback,
}

/// DIME policies: one default, and one per destination domain that has its own.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DimePolicies {
    /// For domains without their own.
    pub default: DimePolicy,
    /// Per domain.
    pub domains: BTreeMap<Domain, DimePolicy>,
}

impl DimePolicies {
    /// The policy for mail to `domain`.
    pub fn get(&self, domain: &Domain) -> DimePolicy {
        self.domains.get(domain).copied().unwrap_or(self.default)
    }
}

/// What [`route`] needs from the configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteConfig {
    /// The domains served here.
    pub served: ServedDomains,
    /// The backend MTA for served domains (`[backend]`); `None` holds their mail.
    pub backend: Option<SmtpHop>,
    /// The relay for every other domain (`[relay] smarthost`), instead of MX lookups.
    pub smarthost: Option<SmtpHop>,
    /// DIME policy per destination.
    pub dime: DimePolicies,
}

/// Who is the author of a wrapped message (DESIGN.md §1): the hosted user whose keys we hold,
/// or, for a sender we do not hold keys for, the bridge identity of a served domain.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Author {
    /// A trustful hosted user, by address.
    Hosted(String),
    /// The bridge identity of this served domain (the legacy sender is named in the sealed
    /// headers).
    Bridge(Domain),
    /// A DIME author of ours who sealed the message themselves and submitted it over DMTP
    /// (by address): it is passed on as it is, already signed by us as origin.
    Submitted(String),
}

impl Author {
    /// The served domain that signs as origin.
    pub fn origin(&self) -> Option<Domain> {
        match self {
            Author::Hosted(address) | Author::Submitted(address) => {
                recipient_domain(address).ok().flatten()
            }
            Author::Bridge(domain) => Some(domain.clone()),
        }
    }
}

/// The author of mail from `sender`: the sender when it is a trustful hosted user
/// (`sender_hosted`), else the bridge identity of the sender's domain when it is served, else
/// that of the first served domain (mail from the provider's MTA in `[relay] networks` for a
/// domain of its own that is not served here). `None` when no domain is served.
pub fn author_of(sender: &str, sender_hosted: bool, served: &ServedDomains) -> Option<Author> {
    if sender_hosted {
        return Some(Author::Hosted(sender.to_owned()));
    }
    match recipient_domain(sender) {
        Ok(Some(domain)) if served.contains(&domain) => Some(Author::Bridge(domain)),
        _ => served.first().cloned().map(Author::Bridge),
    }
}

/// How the message being routed reached the queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Arrival {
    /// Over SMTP: legacy mail, to be wrapped for DIME destinations with this author (`None`: no
    /// served domain could be its origin, so it cannot go as DIME).
    Smtp {
        /// The author for wrapped copies.
        author: Option<Author>,
    },
    /// Over DMTP: a D/MIME message sealed to one of our organizations.
    Dime,
    /// Over DMTP from one of our own DIME authors, for another DIME domain: sealed by the
    /// author, signed by us as origin at submission, to be passed on as it is.
    Submitted {
        /// The author.
        author: String,
    },
}

/// Where a DMTP delivery goes, and who wrote what is sealed for it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DmtpHop {
    /// The recipient domain (its `_dx` names the DX hosts).
    pub domain: Domain,
    /// The author of the wrapped copies.
    pub author: Author,
}

/// What the `_dx` lookup of a recipient domain found (DIME.md §4: a domain speaks DIME if it
/// publishes `_dx.<domain>`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum DxLookup {
    /// Not looked up: no DMTP transport is configured, or the policy is `off`, so the answer
    /// could not change the route.
    #[default]
    NotAsked,
    /// No `_dx` record (NXDOMAIN or NODATA): the domain does not speak DIME.
    Absent,
    /// The domain publishes `_dx`.
    Found,
    /// SERVFAIL or timeout: ask again on the next attempt.
    Temporary {
        /// What the resolver said.
        reason: String,
    },
    /// DNSSEC says the answer is forged or broken.
    Bogus {
        /// What the validator said.
        reason: String,
    },
}

/// What the lookup of the recipient's user signet at its DIME domain found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum SignetLookup {
    /// Not looked up (the domain has no `_dx`).
    #[default]
    NotAsked,
    /// Found and valid under the domain's org signet.
    Found,
    /// The domain's DIME server answered that it has no such user (or an invalid signet):
    /// the recipient cannot get DIME mail.
    Absent {
        /// Why.
        reason: String,
    },
    /// The lookup failed for now (DX unreachable, 4xx, org signet unavailable).
    Temporary {
        /// Why.
        reason: String,
    },
}

/// A recipient of a served domain, as the key store knows them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Hosted {
    /// Not a DIME user here (a legacy mailbox, or not looked up).
    #[default]
    No,
    /// We hold their key.
    Trustful,
    /// They hold their key; we hold their signet, once they imported one.
    Cautious {
        /// Whether a signet was imported.
        has_signet: bool,
    },
}

/// What the lookup phase found for one recipient.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lookups {
    /// The `_dx` record of its domain.
    pub dx: DxLookup,
    /// Its user signet at that domain.
    pub signet: SignetLookup,
    /// For a served domain: the hosted user.
    pub hosted: Hosted,
}

/// A conversion of the queued message for one recipient, before SMTP to the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Conversion {
    /// D/MIME from DMTP, for a trustful user: open it and rebuild RFC 5322.
    Unwrap,
    /// D/MIME from DMTP, for a cautious user: hand it on sealed, in a MIME message.
    PassSealed,
    /// Legacy mail for a cautious user: seal it to their signet, in a MIME message.
    Protect,
}

impl Conversion {
    /// The flow's name, for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Conversion::Unwrap => "unwrap",
            Conversion::PassSealed => "pass_sealed",
            Conversion::Protect => "protect",
        }
    }
}

/// A converted delivery: the message converted for each recipient, then SMTP/LMTP.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BridgeHop {
    /// The conversion.
    pub conversion: Conversion,
    /// Where the result goes.
    pub hop: SmtpHop,
}

/// The next hop of one recipient: a transport and its destination, or no attempt now.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum NextHop {
    /// Over SMTP or LMTP (`deliver`), as queued: the backend, the smarthost or the MX hosts.
    Smtp(SmtpHop),
    /// Wrapped, over DMTP to the domain's DX hosts.
    Dmtp(DmtpHop),
    /// Converted for the recipient, then over SMTP or LMTP to the backend.
    Bridge(BridgeHop),
    /// Not now: keep the recipient queued and try again on the retry schedule.
    Hold(Hold),
    /// Opened as the bridge identity of a served domain and queued again, with the null sender,
    /// for the legacy sender it reports to, whom the next route takes it to.
    ReturnReport(ReportHop),
    /// Never: fail the recipient (and send the DSN).
    Fail(RouteError),
}

/// A failure report sealed to a served domain's bridge identity, for the legacy sender of the
/// mail the bridge wrapped (see `crate::bridge::report`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ReportHop {
    /// The served domain whose bridge identity it is sealed to.
    pub domain: Domain,
}

impl NextHop {
    /// The flow of DESIGN.md §1 this hop is, for logs and metrics (a bounded set of names).
    pub fn flow(&self) -> &'static str {
        match self {
            NextHop::Smtp(SmtpHop::Backend { .. }) => "backend",
            NextHop::Smtp(_) => "relay",
            NextHop::Dmtp(DmtpHop {
                author: Author::Submitted(_),
                ..
            }) => "submitted",
            NextHop::Dmtp(_) => "wrap",
            NextHop::Bridge(b) => b.conversion.as_str(),
            NextHop::Hold(_) => "hold",
            NextHop::ReturnReport(_) => "return_report",
            NextHop::Fail(_) => "fail",
        }
    }
}

/// Why a recipient is held, as its attempt's diagnosis says it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Hold {
    /// The enhanced status of the delay (4.x.x).
    pub status: EnhancedStatus,
    /// Why, for the log, the store and a delay DSN.
    pub reason: String,
}

impl Hold {
    /// The attempt's diagnosis: a local reason, no remote.
    pub fn diagnosis(&self) -> Diagnosis {
        Diagnosis {
            local_reason: Some(self.reason.clone()),
            status: Some(self.status),
            ..Diagnosis::default()
        }
    }
}

/// A recipient that has no route.
#[derive(Debug, Clone, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
pub enum RouteError {
    /// The address has an `@` but nothing (usable) after it. The SMTP session should have
    /// refused it; if one reaches the queue anyway it fails permanently with 5.1.3 ("bad
    /// destination mailbox address syntax", RFC 3463 §3.2) rather than being retried for days.
    #[error("recipient address {address:?} has no domain")]
    NoDomain {
        /// The address as queued.
        address: String,
    },
    /// The part after the `@` is no domain name (IDNA refuses it).
    #[error("recipient address {address:?} has no valid domain")]
    BadDomain {
        /// The address as queued.
        address: String,
    },
    /// The destination's policy bounces what cannot go as DIME (5.7.1: delivery not
    /// authorized, RFC 3463 §3.8).
    #[error("{domain}'s policy requires DIME and {reason}")]
    DimeRequired {
        /// The destination.
        domain: Domain,
        /// Why it cannot go as DIME.
        reason: String,
    },
    /// D/MIME that arrived over DMTP for a recipient that is not a hosted user here: no flow
    /// takes it (5.1.1, bad destination mailbox).
    #[error("D/MIME for {address:?}, who is not a hosted DIME user here")]
    NotHosted {
        /// The recipient.
        address: String,
    },
}

impl RouteError {
    /// Whether retrying could help: never, for any of these.
    pub fn is_permanent(&self) -> bool {
        true
    }

    /// The attempt's diagnosis.
    pub fn diagnosis(&self) -> Diagnosis {
        let status = match self {
            RouteError::NoDomain { .. } | RouteError::BadDomain { .. } => {
                EnhancedStatus::BAD_ADDRESS
            }
            RouteError::DimeRequired { .. } => EnhancedStatus::new(5, 7, 1),
            RouteError::NotHosted { .. } => EnhancedStatus::new(5, 1, 1),
        };
        Diagnosis {
            local_reason: Some(self.to_string()),
            status: Some(status),
            ..Diagnosis::default()
        }
    }
}

/// The domain of `recipient` (after the last `@`: a quoted local part may itself contain one);
/// `Ok(None)` for a bare local part (`Postmaster`), which RFC 5321 §4.1.1.3 lets a client send
/// to and which means ours.
pub fn recipient_domain(recipient: &str) -> Result<Option<Domain>, RouteError> {
    let Some((_, domain)) = recipient.rsplit_once('@') else {
        return Ok(None);
    };
    match Domain::parse(domain) {
        Ok(domain) => Ok(Some(domain)),
        Err(DomainError::Empty) => Err(RouteError::NoDomain {
            address: recipient.to_owned(),
        }),
        Err(_) => Err(RouteError::BadDomain {
            address: recipient.to_owned(),
        }),
    }
}

/// Whether the lookup phase must ask `_dx` for mail to `domain` that arrived as `arrival`: only
/// a legacy message to a domain that is not ours and whose policy allows DIME.
pub fn wants_dx(domain: &Domain, arrival: &Arrival, config: &RouteConfig) -> bool {
    matches!(arrival, Arrival::Smtp { author: Some(_) })
        && !config.served.contains(domain)
        && config.dime.get(domain).mode != DimeMode::Off
}

/// The next hop for `recipient` (see the module doc for the rules).
pub fn route(
    recipient: &str,
    arrival: &Arrival,
    lookups: &Lookups,
    config: &RouteConfig,
) -> NextHop {
    let domain = match recipient_domain(recipient) {
        Ok(Some(domain)) if !config.served.contains(&domain) => domain,
        Ok(_) => return local(recipient, arrival, lookups.hosted, config),
        Err(e) => return NextHop::Fail(e),
    };
    let author = match arrival {
        Arrival::Dime => {
            return NextHop::Fail(RouteError::NotHosted {
                address: recipient.to_owned(),
            });
        }
        Arrival::Submitted { author } => {
            return NextHop::Dmtp(DmtpHop {
                domain,
                author: Author::Submitted(author.clone()),
            });
        }
        Arrival::Smtp { author } => author,
    };
    let policy = config.dime.get(&domain);
    if policy.mode == DimeMode::Off {
        return legacy(domain, config);
    }
    let no_dime = match &lookups.dx {
        DxLookup::Found => match (&lookups.signet, author) {
            (SignetLookup::Found, Some(author)) => {
                return NextHop::Dmtp(DmtpHop {
                    domain,
                    author: author.clone(),
                });
            }
            (SignetLookup::Temporary { reason }, _) => {
                return NextHop::Hold(Hold {
                    // RFC 3463 §3.5: 4.4.3, directory server failure.
                    status: EnhancedStatus::new(4, 4, 3),
                    reason: format!("signet lookup for {recipient} failed: {reason}"),
                });
            }
            (SignetLookup::Absent { reason }, _) => {
                format!("{domain}'s DIME server has no signet for {recipient}: {reason}")
            }
            (SignetLookup::NotAsked, _) | (SignetLookup::Found, None) => {
                "no served domain can be the origin of mail from this sender".to_owned()
            }
        },
        DxLookup::Temporary { reason } => {
            return NextHop::Hold(Hold {
                status: EnhancedStatus::new(4, 4, 3),
                reason: format!("_dx lookup for {domain} failed: {reason}"),
            });
        }
        DxLookup::Bogus { reason } => {
            return NextHop::Hold(Hold {
                // RFC 3463 §3.8: 4.7.5, cryptographic failure.
                status: EnhancedStatus::new(4, 7, 5),
                reason: format!("_dx record of {domain} failed DNSSEC validation: {reason}"),
            });
        }
        DxLookup::Absent => format!("{domain} publishes no _dx record"),
        DxLookup::NotAsked => "no DMTP transport is configured".to_owned(),
    };
    match policy.fallback {
        Fallback::Smtp | Fallback::SmtpTls => legacy(domain, config),
        Fallback::Hold => NextHop::Hold(Hold {
            // RFC 3463 §3.8: 4.7.0, security or policy status.
            status: EnhancedStatus::new(4, 7, 0),
            reason: format!("held by {domain}'s DIME policy: {no_dime}"),
        }),
        Fallback::Bounce => NextHop::Fail(RouteError::DimeRequired {
            domain,
            reason: no_dime,
        }),
    }
}

/// A served domain's recipient: the backend, after the conversion the user's mode asks for.
fn local(recipient: &str, arrival: &Arrival, hosted: Hosted, config: &RouteConfig) -> NextHop {
    // Only another organization's DIME mail: legacy mail to the address goes to the backend
    // like any, and our own authors have no reason to write to it.
    if let (Arrival::Dime, Some(domain)) = (arrival, bridge_domain(recipient, config)) {
        return NextHop::ReturnReport(ReportHop { domain });
    }
    let conversion = match (arrival, hosted) {
        (Arrival::Smtp { .. }, Hosted::No | Hosted::Trustful) => None,
        (Arrival::Smtp { .. }, Hosted::Cautious { has_signet: true }) => Some(Conversion::Protect),
        (Arrival::Smtp { .. }, Hosted::Cautious { has_signet: false }) => {
            // Delivering in clear would break the promise the mode makes; the user can import
            // their signet while it waits.
            return NextHop::Hold(Hold {
                status: EnhancedStatus::new(4, 7, 0),
                reason: format!(
                    "{recipient} is a cautious DIME user without a signet: import one with `dimegate users import-signet`"
                ),
            });
        }
        (Arrival::Dime | Arrival::Submitted { .. }, Hosted::Trustful) => Some(Conversion::Unwrap),
        (Arrival::Dime | Arrival::Submitted { .. }, Hosted::Cautious { .. }) => {
            Some(Conversion::PassSealed)
        }
        (Arrival::Dime | Arrival::Submitted { .. }, Hosted::No) => {
            return NextHop::Fail(RouteError::NotHosted {
                address: recipient.to_owned(),
            });
        }
    };
    let Some(backend) = &config.backend else {
        // Our own configuration, not the recipient's fault: hold, do not bounce.
        return NextHop::Hold(Hold {
            status: EnhancedStatus::new(4, 3, 5),
            reason: "no [backend] address configured for served domains".into(),
        });
    };
    match conversion {
        None => NextHop::Smtp(backend.clone()),
        Some(conversion) => NextHop::Bridge(BridgeHop {
            conversion,
            hop: backend.clone(),
        }),
    }
}

/// The served domain whose bridge identity `recipient` is, if it is one.
fn bridge_domain(recipient: &str, config: &RouteConfig) -> Option<Domain> {
    let (local, domain) = recipient.rsplit_once('@')?;
    let domain = Domain::parse(domain).ok()?;
    (local.eq_ignore_ascii_case(crate::identity::BRIDGE_LOCAL_PART)
        && config.served.contains(&domain))
    .then_some(domain)
}

/// Legacy SMTP to a domain that is not ours.
fn legacy(domain: Domain, config: &RouteConfig) -> NextHop {
    match &config.smarthost {
        Some(relay) => NextHop::Smtp(relay.clone()),
        None => NextHop::Smtp(SmtpHop::Mx { domain }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deliver::TlsPolicy;

    fn domain(d: &str) -> Domain {
        Domain::parse(d).expect("a domain")
    }

    fn mx(d: &str) -> NextHop {
        NextHop::Smtp(SmtpHop::Mx { domain: domain(d) })
    }

    fn backend() -> SmtpHop {
        SmtpHop::Backend {
            addr: "127.0.0.1:24".parse().expect("addr"),
            lmtp: true,
            tls: TlsPolicy::Disabled,
        }
    }

    fn relay() -> SmtpHop {
        SmtpHop::smarthost("relay.isp.example:587", TlsPolicy::Required).expect("relay")
    }

    fn config(backend: Option<SmtpHop>, smarthost: Option<SmtpHop>) -> RouteConfig {
        RouteConfig {
            served: ServedDomains::new([domain("example.org"), domain("Mail.Example.NET.")]),
            backend,
            smarthost,
            dime: DimePolicies::default(),
        }
    }

    fn dx_found() -> Lookups {
        Lookups {
            dx: DxLookup::Found,
            signet: SignetLookup::Found,
            hosted: Hosted::No,
        }
    }

    fn legacy_mail() -> Arrival {
        Arrival::Smtp {
            author: Some(Author::Bridge(domain("example.org"))),
        }
    }

    fn wrapped(d: &str) -> NextHop {
        NextHop::Dmtp(DmtpHop {
            domain: domain(d),
            author: Author::Bridge(domain("example.org")),
        })
    }

    #[test]
    fn route_table() {
        let direct = config(Some(backend()), None);
        let relayed = config(Some(backend()), Some(relay()));
        let no_backend = config(None, None);
        let none = Lookups::default();
        let absent = Lookups {
            dx: DxLookup::Absent,
            ..Lookups::default()
        };
        let servfail = Lookups {
            dx: DxLookup::Temporary {
                reason: "SERVFAIL".into(),
            },
            ..Lookups::default()
        };
        let bogus = Lookups {
            dx: DxLookup::Bogus {
                reason: "RRSIG expired".into(),
            },
            ..Lookups::default()
        };
        let dx_ours = dx_found();
        let dx_dime = dx_found();
        let to_backend = NextHop::Smtp(backend());
        let held_no_backend = NextHop::Hold(Hold {
            status: EnhancedStatus::new(4, 3, 5),
            reason: "no [backend] address configured for served domains".into(),
        });
        let rows: Vec<(&str, &Lookups, &RouteConfig, NextHop)> = vec![
            // SMTP: backend.
            ("alice@example.org", &none, &direct, to_backend.clone()),
            ("alice@EXAMPLE.org", &none, &direct, to_backend.clone()),
            ("alice@example.org.", &none, &direct, to_backend.clone()),
            ("bob@mail.example.net", &none, &direct, to_backend.clone()),
            ("alice@example.org", &none, &relayed, to_backend.clone()),
            ("Postmaster", &none, &direct, to_backend.clone()),
            // A served domain stays ours whatever its `_dx` says.
            ("alice@example.org", &dx_ours, &direct, to_backend.clone()),
            // Hold: no backend configured.
            (
                "alice@example.org",
                &none,
                &no_backend,
                held_no_backend.clone(),
            ),
            ("Postmaster", &none, &no_backend, held_no_backend),
            // SMTP: MX.
            ("carol@other.example", &none, &direct, mx("other.example")),
            ("carol@other.example", &absent, &direct, mx("other.example")),
            ("carol@Other.Example", &none, &direct, mx("other.example")),
            (
                "carol@sub.example.org",
                &none,
                &direct,
                mx("sub.example.org"),
            ),
            ("\"a@b\"@other.example", &none, &direct, mx("other.example")),
            ("dave@[192.0.2.1]", &none, &direct, mx("[192.0.2.1]")),
            (
                "δοκιμή@παράδειγμα.δοκιμή",
                &none,
                &direct,
                mx("παράδειγμα.δοκιμή"),
            ),
            (
                "δοκιμή@παράδειγμα.δοκιμή",
                &none,
                &direct,
                mx("xn--hxajbheg2az3al.xn--jxalpdlp"),
            ),
            // SMTP: smarthost.
            (
                "carol@other.example",
                &none,
                &relayed,
                NextHop::Smtp(relay()),
            ),
            (
                "carol@other.example",
                &absent,
                &relayed,
                NextHop::Smtp(relay()),
            ),
            // DMTP: the domain publishes `_dx`, relay or not.
            (
                "carol@dime.example",
                &dx_dime,
                &direct,
                wrapped("dime.example"),
            ),
            (
                "carol@dime.example",
                &dx_dime,
                &relayed,
                wrapped("dime.example"),
            ),
            // Hold: `_dx` unknown for now, or forged.
            (
                "carol@dime.example",
                &servfail,
                &relayed,
                NextHop::Hold(Hold {
                    status: EnhancedStatus::new(4, 4, 3),
                    reason: "_dx lookup for dime.example failed: SERVFAIL".into(),
                }),
            ),
            (
                "carol@dime.example",
                &bogus,
                &direct,
                NextHop::Hold(Hold {
                    status: EnhancedStatus::new(4, 7, 5),
                    reason: "_dx record of dime.example failed DNSSEC validation: RRSIG expired"
                        .into(),
                }),
            ),
            // Fail.
            (
                "nobody@",
                &none,
                &direct,
                NextHop::Fail(RouteError::NoDomain {
                    address: "nobody@".into(),
                }),
            ),
            (
                "nobody@.",
                &none,
                &relayed,
                NextHop::Fail(RouteError::NoDomain {
                    address: "nobody@.".into(),
                }),
            ),
            (
                "nobody@xn--zz.example",
                &none,
                &direct,
                NextHop::Fail(RouteError::BadDomain {
                    address: "nobody@xn--zz.example".into(),
                }),
            ),
        ];
        for (address, lookups, config, want) in rows {
            assert_eq!(
                route(address, &legacy_mail(), lookups, config),
                want,
                "{address} {lookups:?}"
            );
        }
    }

    #[test]
    fn an_unroutable_recipient_fails_with_5_1_3() {
        let NextHop::Fail(error) = route(
            "nobody@",
            &legacy_mail(),
            &Lookups::default(),
            &RouteConfig::default(),
        ) else {
            panic!("routed");
        };
        assert!(error.is_permanent());
        assert_eq!(error.diagnosis().status, Some(EnhancedStatus::BAD_ADDRESS));
    }

    fn policy(mode: DimeMode, fallback: Fallback) -> RouteConfig {
        let mut c = config(Some(backend()), None);
        c.dime
            .domains
            .insert(domain("dime.example"), DimePolicy { mode, fallback });
        c
    }

    /// The destination policy: every mode against every lookup result that matters.
    #[test]
    fn dime_policy_table() {
        use DimeMode::*;
        use Fallback::{Bounce, Smtp, SmtpTls};
        let keep = Fallback::Hold;
        let no_signet = Lookups {
            dx: DxLookup::Found,
            signet: SignetLookup::Absent {
                reason: "510 unknown".into(),
            },
            hosted: Hosted::No,
        };
        let signet_later = Lookups {
            dx: DxLookup::Found,
            signet: SignetLookup::Temporary {
                reason: "DX unreachable".into(),
            },
            hosted: Hosted::No,
        };
        let absent = Lookups {
            dx: DxLookup::Absent,
            ..Lookups::default()
        };
        let held = |why: &str| {
            NextHop::Hold(Hold {
                status: EnhancedStatus::new(4, 7, 0),
                reason: format!("held by dime.example's DIME policy: {why}"),
            })
        };
        let bounced = |why: &str| {
            NextHop::Fail(RouteError::DimeRequired {
                domain: domain("dime.example"),
                reason: why.into(),
            })
        };
        let no_dx = "dime.example publishes no _dx record";
        let unknown =
            "dime.example's DIME server has no signet for carol@dime.example: 510 unknown";
        let later = NextHop::Hold(Hold {
            status: EnhancedStatus::new(4, 4, 3),
            reason: "signet lookup for carol@dime.example failed: DX unreachable".into(),
        });
        let rows = [
            (Prefer, Smtp, dx_found(), wrapped("dime.example")),
            (Require, Bounce, dx_found(), wrapped("dime.example")),
            (Off, Smtp, dx_found(), mx("dime.example")),
            (Prefer, Smtp, absent.clone(), mx("dime.example")),
            (Prefer, SmtpTls, absent.clone(), mx("dime.example")),
            (Prefer, keep, absent.clone(), held(no_dx)),
            (Require, Bounce, absent.clone(), bounced(no_dx)),
            (Require, keep, absent, held(no_dx)),
            (Prefer, Smtp, no_signet.clone(), mx("dime.example")),
            (Require, Bounce, no_signet.clone(), bounced(unknown)),
            (Prefer, keep, no_signet, held(unknown)),
            // A lookup that may work later holds, whatever the fallback.
            (Prefer, Smtp, signet_later.clone(), later.clone()),
            (Require, Bounce, signet_later, later),
        ];
        for (mode, fallback, lookups, want) in rows {
            let got = route(
                "carol@dime.example",
                &legacy_mail(),
                &lookups,
                &policy(mode, fallback),
            );
            assert_eq!(got, want, "{mode:?} {fallback:?} {lookups:?}");
        }
        // `_dx` is asked only where its answer could matter.
        let arrival = legacy_mail();
        assert!(wants_dx(
            &domain("dime.example"),
            &arrival,
            &policy(Prefer, Smtp)
        ));
        assert!(!wants_dx(
            &domain("dime.example"),
            &arrival,
            &policy(Off, Smtp)
        ));
        assert!(!wants_dx(
            &domain("example.org"),
            &arrival,
            &policy(Prefer, Smtp)
        ));
        assert!(!wants_dx(
            &domain("dime.example"),
            &Arrival::Dime,
            &policy(Prefer, Smtp)
        ));
        let orphan = Arrival::Smtp { author: None };
        assert!(!wants_dx(
            &domain("dime.example"),
            &orphan,
            &policy(Prefer, Smtp)
        ));
        assert_eq!(
            route(
                "carol@dime.example",
                &orphan,
                &Lookups::default(),
                &policy(Prefer, Smtp)
            ),
            mx("dime.example")
        );
    }

    /// Served recipients: the conversion follows the arrival and the user's mode.
    #[test]
    fn local_flows() {
        let c = config(Some(backend()), None);
        let hosted = |hosted| Lookups {
            hosted,
            ..Lookups::default()
        };
        let bridge = |conversion| {
            NextHop::Bridge(BridgeHop {
                conversion,
                hop: backend(),
            })
        };
        let trustful = hosted(Hosted::Trustful);
        let cautious = hosted(Hosted::Cautious { has_signet: true });
        let unsigned = hosted(Hosted::Cautious { has_signet: false });
        let legacy = hosted(Hosted::No);
        let dime = Arrival::Dime;
        let smtp = legacy_mail();
        let rows = [
            (&smtp, &legacy, NextHop::Smtp(backend())),
            (&smtp, &trustful, NextHop::Smtp(backend())),
            (&smtp, &cautious, bridge(Conversion::Protect)),
            (&dime, &trustful, bridge(Conversion::Unwrap)),
            (&dime, &cautious, bridge(Conversion::PassSealed)),
            (
                &dime,
                &legacy,
                NextHop::Fail(RouteError::NotHosted {
                    address: "alice@example.org".into(),
                }),
            ),
        ];
        for (arrival, lookups, want) in rows {
            assert_eq!(
                route("alice@example.org", arrival, lookups, &c),
                want,
                "{arrival:?} {lookups:?}"
            );
        }
        // Another organization's DIME mail for our bridge identity is a report to return,
        // whatever the key store says about the address and whether a backend exists; anything
        // else addressed to it goes the ordinary way.
        let returned = NextHop::ReturnReport(ReportHop {
            domain: domain("example.org"),
        });
        let no_backend = config(None, None);
        let submitted = Arrival::Submitted {
            author: "alice@example.org".into(),
        };
        for (address, arrival, lookups, config, want) in [
            (
                "dime-bridge@example.org",
                &dime,
                &trustful,
                &c,
                returned.clone(),
            ),
            (
                "DIME-Bridge@Example.ORG",
                &dime,
                &trustful,
                &c,
                returned.clone(),
            ),
            (
                "dime-bridge@example.org",
                &dime,
                &legacy,
                &c,
                returned.clone(),
            ),
            (
                "dime-bridge@example.org",
                &dime,
                &trustful,
                &no_backend,
                returned.clone(),
            ),
            (
                "dime-bridge@mail.example.net",
                &dime,
                &trustful,
                &c,
                NextHop::ReturnReport(ReportHop {
                    domain: domain("mail.example.net"),
                }),
            ),
            (
                "dime-bridge@example.org",
                &smtp,
                &trustful,
                &c,
                NextHop::Smtp(backend()),
            ),
            (
                "dime-bridge@example.org",
                &submitted,
                &trustful,
                &c,
                bridge(Conversion::Unwrap),
            ),
            (
                "dime-bridger@example.org",
                &dime,
                &trustful,
                &c,
                bridge(Conversion::Unwrap),
            ),
            (
                "dime-bridge@dime.example",
                &dime,
                &trustful,
                &c,
                NextHop::Fail(RouteError::NotHosted {
                    address: "dime-bridge@dime.example".into(),
                }),
            ),
        ] {
            let hop = route(address, arrival, lookups, config);
            assert_eq!(hop, want, "{address} {arrival:?} {lookups:?}");
        }
        assert_eq!(returned.flow(), "return_report");
        let NextHop::Hold(hold) = route("alice@example.org", &smtp, &unsigned, &c) else {
            panic!("a cautious user without a signet is not held");
        };
        assert!(hold.reason.contains("import-signet"), "{hold:?}");
        // DIME arrivals for anyone not ours are refused, whatever their domain publishes.
        assert_eq!(
            route("carol@dime.example", &dime, &dx_found(), &c),
            NextHop::Fail(RouteError::NotHosted {
                address: "carol@dime.example".into(),
            })
        );
        // No backend: held like any mail for served domains.
        let none = config(None, None);
        assert!(matches!(
            route("alice@example.org", &dime, &trustful, &none),
            NextHop::Hold(_)
        ));
    }

    /// A submission from one of our DIME authors goes over DMTP as it is: whatever `_dx` or the
    /// policy say, since only its DIME recipient can read it; for a served domain it is a DIME
    /// arrival like any other.
    #[test]
    fn submitted_mail_goes_on_sealed() {
        let mut c = config(Some(backend()), Some(relay()));
        c.dime.domains.insert(
            domain("off.example"),
            DimePolicy {
                mode: DimeMode::Off,
                fallback: Fallback::Smtp,
            },
        );
        let submitted = Arrival::Submitted {
            author: "alice@example.org".into(),
        };
        let passed_on = |d: &str| {
            NextHop::Dmtp(DmtpHop {
                domain: domain(d),
                author: Author::Submitted("alice@example.org".into()),
            })
        };
        for (address, lookups) in [
            ("@dime.example", Lookups::default()),
            ("@dime.example", dx_found()),
            ("@off.example", Lookups::default()),
        ] {
            let hop = route(address, &submitted, &lookups, &c);
            assert_eq!(hop, passed_on(&address[1..]), "{address} {lookups:?}");
            assert_eq!(hop.flow(), "submitted");
        }
        let trustful = Lookups {
            hosted: Hosted::Trustful,
            ..Lookups::default()
        };
        assert_eq!(
            route("bob@example.org", &submitted, &trustful, &c),
            NextHop::Bridge(BridgeHop {
                conversion: Conversion::Unwrap,
                hop: backend(),
            })
        );
        assert!(matches!(
            route("@", &submitted, &Lookups::default(), &c),
            NextHop::Fail(RouteError::NoDomain { .. })
        ));
        assert!(!wants_dx(&domain("dime.example"), &submitted, &c));
    }

    #[test]
    fn authors() {
        let served = ServedDomains::new([domain("example.org"), domain("b.example")]);
        assert_eq!(
            author_of("alice@example.org", true, &served),
            Some(Author::Hosted("alice@example.org".into()))
        );
        assert_eq!(
            author_of("bob@B.Example", false, &served),
            Some(Author::Bridge(domain("b.example")))
        );
        // A relayed sender of a domain not served here: the first served domain vouches.
        assert_eq!(
            author_of("mta@isp.example", false, &served),
            Some(Author::Bridge(domain("b.example")))
        );
        assert_eq!(
            author_of("", false, &served),
            Some(Author::Bridge(domain("b.example")))
        );
        assert_eq!(
            author_of("x@isp.example", false, &ServedDomains::default()),
            None
        );
        assert_eq!(
            Author::Hosted("alice@example.org".into()).origin(),
            Some(domain("example.org"))
        );
    }
}
