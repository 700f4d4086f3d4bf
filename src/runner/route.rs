//! Which next hop a recipient goes to: the one pure function of DESIGN.md §1, [`route`], from
//! the address, what the lookup phase found ([`Lookups`]) and the configuration
//! ([`RouteConfig`]). No I/O: the runner looks up first, then asks.
//!
//! The order of the rules, first match wins:
//! 1. an address without a usable domain fails (5.1.3);
//! 2. a served domain (or a bare local part such as `Postmaster`) goes to the backend, or is held
//!    (4.3.5) while none is configured;
//! 3. a domain whose `_dx` lookup found a DX host goes over DMTP; a `_dx` lookup that failed for
//!    now, or whose DNSSEC validation failed, holds the recipient (never a quiet fallback to
//!    SMTP, which would send in clear text what the domain asked to receive encrypted);
//! 4. anything else goes to the smarthost if one is configured, else to the domain's MX hosts.

use crate::deliver::NextHop as SmtpHop;
use crate::domain::{Domain, DomainError};
use crate::status::{Diagnosis, EnhancedStatus};
use std::collections::BTreeSet;

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
}

/// Where a DMTP delivery goes: the recipient domain's DX hosts, from its `_dx` record.
///
/// A placeholder for the DMTP transport (the next issue), which gives it what a DMTP client
/// session needs (the DX host names, the org signet's fingerprint).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DmtpHop {
    /// The recipient domain.
    pub domain: Domain,
    /// Its DX hosts, in the record's order.
    pub dx_hosts: Vec<String>,
}

/// What the `_dx` lookup of a recipient domain found (DIME.md §4: a domain speaks DIME if it
/// publishes `_dx.<domain>`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum DxLookup {
    /// Not looked up: no DMTP transport is configured, so the answer could not change the route.
    #[default]
    NotAsked,
    /// No `_dx` record (NXDOMAIN or NODATA): the domain does not speak DIME.
    Absent,
    /// The domain publishes `_dx`.
    Found(DmtpHop),
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

/// What the lookup phase found for one recipient's domain.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lookups {
    /// The `_dx` record.
    pub dx: DxLookup,
}

/// The next hop of one recipient: a transport and its destination, or no attempt now.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum NextHop {
    /// Over SMTP or LMTP (`deliver`): the backend, the smarthost or the domain's MX hosts.
    Smtp(SmtpHop),
    /// Over DMTP to the domain's DX hosts.
    Dmtp(DmtpHop),
    /// Not now: keep the recipient queued and try again on the retry schedule.
    Hold(Hold),
    /// Never: fail the recipient (and send the DSN).
    Fail(RouteError),
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
}

impl RouteError {
    /// Whether retrying could help: never for a malformed address.
    pub fn is_permanent(&self) -> bool {
        true
    }

    /// The attempt's diagnosis: 5.1.3, bad destination mailbox address syntax.
    pub fn diagnosis(&self) -> Diagnosis {
        Diagnosis {
            local_reason: Some(self.to_string()),
            status: Some(EnhancedStatus::BAD_ADDRESS),
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

/// The next hop for `recipient`, given what the lookup phase found for its domain (see the
/// module doc for the rules).
pub fn route(recipient: &str, lookups: &Lookups, config: &RouteConfig) -> NextHop {
    let domain = match recipient_domain(recipient) {
        Ok(Some(domain)) if !config.served.contains(&domain) => domain,
        Ok(_) => {
            return match &config.backend {
                Some(backend) => NextHop::Smtp(backend.clone()),
                // Our own configuration, not the recipient's fault: hold, do not bounce.
                None => NextHop::Hold(Hold {
                    status: EnhancedStatus::new(4, 3, 5),
                    reason: "no [backend] address configured for served domains".into(),
                }),
            };
        }
        Err(e) => return NextHop::Fail(e),
    };
    match &lookups.dx {
        DxLookup::Found(hop) => return NextHop::Dmtp(hop.clone()),
        DxLookup::Temporary { reason } => {
            return NextHop::Hold(Hold {
                // RFC 3463 §3.5: 4.4.3, directory server failure.
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
        DxLookup::NotAsked | DxLookup::Absent => {}
    }
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
        }
    }

    fn dx_found(d: &str) -> Lookups {
        Lookups {
            dx: DxLookup::Found(DmtpHop {
                domain: domain(d),
                dx_hosts: vec![format!("dx.{d}")],
            }),
        }
    }

    #[test]
    fn route_table() {
        let direct = config(Some(backend()), None);
        let relayed = config(Some(backend()), Some(relay()));
        let no_backend = config(None, None);
        let none = Lookups::default();
        let absent = Lookups {
            dx: DxLookup::Absent,
        };
        let servfail = Lookups {
            dx: DxLookup::Temporary {
                reason: "SERVFAIL".into(),
            },
        };
        let bogus = Lookups {
            dx: DxLookup::Bogus {
                reason: "RRSIG expired".into(),
            },
        };
        let dx_ours = dx_found("example.org");
        let dx_dime = dx_found("dime.example");
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
                NextHop::Dmtp(DmtpHop {
                    domain: domain("dime.example"),
                    dx_hosts: vec!["dx.dime.example".into()],
                }),
            ),
            (
                "carol@dime.example",
                &dx_dime,
                &relayed,
                NextHop::Dmtp(DmtpHop {
                    domain: domain("dime.example"),
                    dx_hosts: vec!["dx.dime.example".into()],
                }),
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
                route(address, lookups, config),
                want,
                "{address} {lookups:?}"
            );
        }
    }

    #[test]
    fn an_unroutable_recipient_fails_with_5_1_3() {
        let NextHop::Fail(error) = route("nobody@", &Lookups::default(), &RouteConfig::default())
        else {
            panic!("routed");
        };
        assert!(error.is_permanent());
        assert_eq!(error.diagnosis().status, Some(EnhancedStatus::BAD_ADDRESS));
    }
}
