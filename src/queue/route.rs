//! Which next hop a recipient goes to: the one pure function of DESIGN.md §1.
//!
//! For now only the SMTP routes exist. The DIME flows (wrap to a `_dx` host, unwrap to the
//! backend) need the lookup results (`_dx` record, signet) as an extra input; they join
//! [`Route`] as new variants and [`route`] as a new first step, see the marked place below.

use crate::envelope::Recipient;
use std::collections::BTreeSet;

/// The domains dimegate accepts mail for, normalised once (lower case, no trailing dot) so the
/// comparison in [`route`] is a set lookup.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServedDomains(BTreeSet<String>);

impl ServedDomains {
    /// From domain names as configured.
    pub fn new<I, S>(domains: I) -> ServedDomains
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        ServedDomains(domains.into_iter().map(|d| normalise(d.as_ref())).collect())
    }

    /// Whether `domain` (any case, with or without trailing dot) is served here.
    pub fn contains(&self, domain: &str) -> bool {
        self.0.contains(&normalise(domain))
    }
}

/// Case-insensitive and trailing-dot-insensitive form of a domain (RFC 5321 §2.4: domain names
/// are not case-sensitive). Unicode lower-casing also covers SMTPUTF8 U-labels; comparing a
/// U-label with an A-label (`xn--`) needs IDNA, which the configuration's `Domain` type does.
fn normalise(domain: &str) -> String {
    domain.trim_end_matches('.').to_lowercase()
}

/// How to reach the smarthost, when one is configured.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteSettings {
    /// Send all mail for domains not served here to this relay (`host` or `host:port`) instead of
    /// looking up MX records. The address itself is `deliver`'s business; here only its presence
    /// decides the route.
    pub smarthost: Option<String>,
}

/// The next hop of one recipient.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Route {
    /// A domain served here: hand it to the backend MTA (SMTP/LMTP).
    Backend,
    /// Any other domain, with a smarthost configured: hand it to the smarthost.
    Smarthost,
    /// Any other domain, no smarthost: the MX hosts of `domain` (RFC 5321 §5.1), normalised to
    /// lower case. An address literal (`[192.0.2.1]`) is kept as written; `deliver` connects to it
    /// directly instead of asking DNS.
    Mx {
        /// The recipient's domain.
        domain: String,
    },
    // DIME routes go here (`Dmtp { domain }` for a recipient whose domain publishes `_dx`,
    // `Unwrap` for hosted trustful users), decided from the lookup results before the SMTP
    // fallbacks in `route`.
}

/// A recipient that has no route.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
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
}

impl RouteError {
    /// Whether retrying could help: never for a malformed address.
    pub fn is_permanent(&self) -> bool {
        true
    }
}

/// The next hop for `recipient`.
///
/// A served domain goes to the backend; anything else to the smarthost if there is one, else to
/// the recipient domain's MX. An address without `@` is a local mailbox: RFC 5321 §4.1.1.3 lets a
/// client send to bare `<Postmaster>`, which means ours, so it goes to the backend.
pub fn route(
    recipient: &str,
    served_domains: &ServedDomains,
    settings: &RouteSettings,
) -> Result<Route, RouteError> {
    // The domain follows the last `@`: a quoted local part may itself contain one.
    let Some((_, domain)) = recipient.rsplit_once('@') else {
        return Ok(Route::Backend);
    };
    let domain = normalise(domain);
    if domain.is_empty() || domain == "[]" {
        return Err(RouteError::NoDomain {
            address: recipient.to_owned(),
        });
    }
    // (DIME: look at the `_dx`/signet lookup results here, before the SMTP routes.)
    if served_domains.0.contains(&domain) {
        return Ok(Route::Backend);
    }
    if settings.smarthost.is_some() {
        return Ok(Route::Smarthost);
    }
    Ok(Route::Mx { domain })
}

/// The recipients of one message grouped by next hop, so each hop gets one transaction with all
/// its recipients (RFC 5321 §3.3 allows many RCPTs per transaction, and the receiver stores the
/// message once).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteGroups {
    /// Each next hop with the indices (into the envelope's recipients, which are also the store's
    /// recipient-state indices) of its recipients. Hops in order of their first recipient.
    pub groups: Vec<(Route, Vec<usize>)>,
    /// Recipients without a route, to be failed with a DSN.
    pub unroutable: Vec<(usize, RouteError)>,
}

/// Groups the recipients at `indices` of `recipients` by [`route`]. Indices out of range are
/// skipped (the caller passed a record that does not match).
pub fn group_by_route(
    recipients: &[Recipient],
    indices: &[usize],
    served_domains: &ServedDomains,
    settings: &RouteSettings,
) -> RouteGroups {
    let mut out = RouteGroups::default();
    for &index in indices {
        let Some(recipient) = recipients.get(index) else {
            continue;
        };
        match route(&recipient.address, served_domains, settings) {
            Ok(hop) => match out.groups.iter_mut().find(|(r, _)| *r == hop) {
                Some((_, members)) => members.push(index),
                None => out.groups.push((hop, vec![index])),
            },
            Err(e) => out.unroutable.push((index, e)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn served() -> ServedDomains {
        ServedDomains::new(["example.org", "Mail.Example.NET."])
    }

    fn mx(domain: &str) -> Result<Route, RouteError> {
        Ok(Route::Mx {
            domain: domain.into(),
        })
    }

    #[test]
    fn route_table() {
        let direct = RouteSettings::default();
        let relay = RouteSettings {
            smarthost: Some("relay.isp.example:587".into()),
        };
        let rows: Vec<(&str, &RouteSettings, Result<Route, RouteError>)> = vec![
            ("alice@example.org", &direct, Ok(Route::Backend)),
            ("alice@EXAMPLE.org", &direct, Ok(Route::Backend)),
            ("alice@example.org.", &direct, Ok(Route::Backend)),
            ("bob@mail.example.net", &direct, Ok(Route::Backend)),
            ("alice@example.org", &relay, Ok(Route::Backend)),
            ("Postmaster", &direct, Ok(Route::Backend)),
            ("carol@other.example", &direct, mx("other.example")),
            ("carol@Other.Example", &direct, mx("other.example")),
            ("carol@other.example", &relay, Ok(Route::Smarthost)),
            ("carol@sub.example.org", &direct, mx("sub.example.org")),
            ("\"a@b\"@other.example", &direct, mx("other.example")),
            ("dave@[192.0.2.1]", &direct, mx("[192.0.2.1]")),
            ("δοκιμή@παράδειγμα.δοκιμή", &direct, mx("παράδειγμα.δοκιμή")),
            (
                "nobody@",
                &direct,
                Err(RouteError::NoDomain {
                    address: "nobody@".into(),
                }),
            ),
            (
                "nobody@.",
                &relay,
                Err(RouteError::NoDomain {
                    address: "nobody@.".into(),
                }),
            ),
        ];
        for (address, settings, want) in rows {
            assert_eq!(route(address, &served(), settings), want, "{address}");
        }
    }

    #[test]
    fn groups_by_next_hop_in_order_of_first_recipient() {
        let rcpt = |a: &str| Recipient {
            address: a.into(),
            notify: None,
            orcpt: None,
        };
        let recipients = vec![
            rcpt("a@other.example"),
            rcpt("b@example.org"),
            rcpt("c@OTHER.example"),
            rcpt("d@third.example"),
            rcpt("e@"),
            rcpt("f@example.org"),
        ];
        let groups = group_by_route(
            &recipients,
            &[0, 1, 2, 3, 4, 5, 99],
            &served(),
            &RouteSettings::default(),
        );
        assert_eq!(
            groups.groups,
            vec![
                (
                    Route::Mx {
                        domain: "other.example".into()
                    },
                    vec![0, 2]
                ),
                (Route::Backend, vec![1, 5]),
                (
                    Route::Mx {
                        domain: "third.example".into()
                    },
                    vec![3]
                ),
            ]
        );
        assert_eq!(groups.unroutable.len(), 1);
        assert_eq!(groups.unroutable[0].0, 4);
        assert!(groups.unroutable[0].1.is_permanent());

        // Only the indices asked for (the due ones), and with a smarthost everything foreign
        // collapses into one group.
        let relay = RouteSettings {
            smarthost: Some("relay".into()),
        };
        let groups = group_by_route(&recipients, &[0, 3, 5], &served(), &relay);
        assert_eq!(
            groups.groups,
            vec![(Route::Smarthost, vec![0, 3]), (Route::Backend, vec![5])]
        );
    }
}
