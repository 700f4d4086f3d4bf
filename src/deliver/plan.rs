//! The failover plan of one delivery: which addresses are tried, in which order, and what the
//! delivery's outcome is when none of them takes the transaction. Pure: DNS answers and attempt
//! results come in as values, the caller does the lookups and connections.
//!
//! Order (RFC 5321 §5.1): MX hosts by preference, equal preferences shuffled with the caller's
//! RNG; each host's addresses in the configured family order, looked up only when the host's turn
//! comes; at most `max_addresses_per_delivery` attempts over all hosts (Postfix's
//! `smtp_mx_address_limit`).
//!
//! Verdict when nobody took it: any temporary hop failure defers (the failure that got furthest
//! into a session explains best, among equals the latest); else a temporary DNS failure of a
//! host's addresses defers (4.4.3); else the permanent refusals fail (a 5xx to MAIL FROM or
//! later: every address refused the message itself); else nothing could be tried and the hop
//! kind decides (`if_nothing_tried`).

use super::client::HopFailure;
use super::{EnhancedStatus, Outcome, Reason, TlsPolicy};
use crate::resolve::{AddressFamilies, MxAnswer};
use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};

/// Where to connect and how.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Target {
    /// Host name for TLS verification and messages (the MX name, or the IP as text).
    pub(crate) name: String,
    pub(crate) addr: SocketAddr,
    pub(crate) lmtp: bool,
    pub(crate) tls: TlsPolicy,
    /// How the certificate is checked when TLS is used.
    pub(crate) verify: Verify,
    /// A relay hop (MX or smarthost): REQUIRETLS is enforced (RFC 8689 §4.2.1). The backend is
    /// the final delivery and is not asked to relay further.
    pub(crate) relay: bool,
}

/// How a target's TLS certificate is checked.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Verify {
    /// Not at all (opportunistic or encrypt-only TLS).
    Any,
    /// Accepted whatever it is, then checked by WebPKI for the TLS-RPT report only (MTA-STS
    /// `testing`).
    ReportOnly,
    /// WebPKI roots and the host name.
    WebPki,
    /// The TLSA records (DANE), with the host name as reference identifier.
    Dane(Vec<crate::dane::Tlsa>),
}

impl Verify {
    /// The checking that goes with a configured [`TlsPolicy`] (backends, relays).
    pub(crate) fn for_policy(tls: TlsPolicy) -> Verify {
        match tls {
            TlsPolicy::Required => Verify::WebPki,
            TlsPolicy::Disabled | TlsPolicy::Opportunistic => Verify::Any,
        }
    }
}

impl Target {
    /// `mx1.example.test[127.0.0.1]:25`, as Postfix names a remote MTA.
    pub(crate) fn label(&self) -> String {
        format!("{}[{}]:{}", self.name, self.addr.ip(), self.addr.port())
    }
}

/// A failed address lookup of one MX host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DnsFailure {
    /// NXDOMAIN or a bad name: this host will not get addresses by waiting.
    pub(crate) permanent: bool,
    /// What the resolver said.
    pub(crate) text: String,
}

/// What the caller does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Step {
    /// Look up this MX host's addresses, then call [`Plan::handle_addresses`].
    Lookup(String),
    /// Try this address; on a hop failure call [`Plan::handle_failure`]. Any other result of
    /// the attempt ends the delivery.
    Attempt(Target),
    /// Stop: every recipient of this transaction gets this outcome.
    Finish(Outcome),
}

/// How MX hosts become targets.
#[derive(Debug, Clone, Copy)]
struct MxTargets {
    port: u16,
    tls: TlsPolicy,
    families: AddressFamilies,
}

/// The plan of one delivery. See the module docs.
#[derive(Debug)]
pub(crate) struct Plan {
    hosts: VecDeque<String>,
    ready: VecDeque<Target>,
    mx: Option<MxTargets>,
    attempts: usize,
    cap: usize,
    last_temporary: Option<HopFailure>,
    last_permanent: Option<HopFailure>,
    dns_temporary: Option<String>,
    if_nothing_tried: Outcome,
}

impl Plan {
    /// A fixed list of targets (a backend, a relay's addresses, an address literal).
    pub(crate) fn fixed(targets: Vec<Target>, cap: usize, if_nothing_tried: Outcome) -> Plan {
        Plan {
            hosts: VecDeque::new(),
            ready: targets.into(),
            mx: None,
            attempts: 0,
            cap: cap.max(1),
            last_temporary: None,
            last_permanent: None,
            dns_temporary: None,
            if_nothing_tried,
        }
    }

    /// The hosts of an MX answer, equal preferences shuffled by `rng` when given.
    pub(crate) fn mx<R: rand::Rng + ?Sized>(
        answer: &MxAnswer,
        rng: Option<&mut R>,
        port: u16,
        tls: TlsPolicy,
        families: AddressFamilies,
        cap: usize,
        if_nothing_tried: Outcome,
    ) -> Plan {
        let mut answer = answer.clone();
        if let Some(rng) = rng {
            answer.shuffle_equal_preferences(rng);
        }
        Plan {
            hosts: answer.hosts().iter().map(|h| h.host.clone()).collect(),
            mx: Some(MxTargets {
                port,
                tls,
                families,
            }),
            ..Plan::fixed(Vec::new(), cap, if_nothing_tried)
        }
    }

    /// The next step.
    pub(crate) fn next(&mut self) -> Step {
        if self.attempts < self.cap {
            if let Some(target) = self.ready.pop_front() {
                self.attempts += 1;
                return Step::Attempt(target);
            }
            if let Some(host) = self.hosts.pop_front() {
                return Step::Lookup(host);
            }
        }
        Step::Finish(self.verdict())
    }

    /// The addresses of `host` (asked for by [`Step::Lookup`]), connected to under the plan's
    /// default TLS policy.
    pub(crate) fn handle_addresses(&mut self, host: &str, result: Result<Vec<IpAddr>, DnsFailure>) {
        let Some(mx) = self.mx else {
            return;
        };
        let verify = Verify::for_policy(mx.tls);
        self.handle_addresses_with(host, result, mx.tls, verify);
    }

    /// The addresses of `host`, connected to with the TLS policy decided for it.
    pub(crate) fn handle_addresses_with(
        &mut self,
        host: &str,
        result: Result<Vec<IpAddr>, DnsFailure>,
        tls: TlsPolicy,
        verify: Verify,
    ) {
        let Some(mx) = self.mx else {
            return;
        };
        match result {
            Ok(addresses) => {
                self.ready
                    .extend(in_family_order(addresses, mx.families).map(|ip| Target {
                        name: host.to_owned(),
                        addr: SocketAddr::new(ip, mx.port),
                        lmtp: false,
                        tls,
                        verify: verify.clone(),
                        relay: true,
                    }));
            }
            Err(failure) => {
                if !failure.permanent {
                    self.dns_temporary = Some(failure.text);
                }
            }
        }
    }

    /// The TLS policy forbids connecting to `host` now (DANE lookup failed, not in the MTA-STS
    /// policy, REQUIRETLS unmet): counted as a temporary failure of the host, so the delivery
    /// defers with this reason when no other host takes it.
    pub(crate) fn handle_refused(&mut self, host: &str, status: EnhancedStatus, text: String) {
        self.handle_failure(HopFailure {
            stage: super::Stage::Connect,
            reason: Reason::Local {
                host: Some(host.to_owned()),
                text,
            },
            status,
            permanent: false,
            retry_without_tls: false,
        });
    }

    /// The attempt did not take the transaction.
    pub(crate) fn handle_failure(&mut self, failure: HopFailure) {
        let slot = if failure.permanent {
            &mut self.last_permanent
        } else {
            &mut self.last_temporary
        };
        if slot.as_ref().is_none_or(|kept| failure.stage >= kept.stage) {
            *slot = Some(failure);
        }
    }

    fn verdict(&self) -> Outcome {
        if let Some(failure) = &self.last_temporary {
            return Outcome::Deferred {
                reason: failure.reason.clone(),
                status: Some(EnhancedStatus {
                    class: 4,
                    ..failure.status
                }),
            };
        }
        if let Some(text) = &self.dns_temporary {
            return Outcome::Deferred {
                reason: Reason::Local {
                    host: None,
                    text: text.clone(),
                },
                status: Some(EnhancedStatus::new(4, 4, 3)),
            };
        }
        if let Some(failure) = &self.last_permanent {
            return Outcome::Failed {
                reason: failure.reason.clone(),
                status: Some(failure.status),
            };
        }
        self.if_nothing_tried.clone()
    }
}

/// Keeps the families asked for, in their order, each family's addresses in DNS order.
fn in_family_order(
    addresses: Vec<IpAddr>,
    families: AddressFamilies,
) -> impl Iterator<Item = IpAddr> {
    let (v4, v6): (Vec<IpAddr>, Vec<IpAddr>) = addresses.into_iter().partition(IpAddr::is_ipv4);
    let (first, second) = match families {
        AddressFamilies::Ipv4Only => (v4, Vec::new()),
        AddressFamilies::Ipv6Only => (v6, Vec::new()),
        AddressFamilies::Ipv4ThenIpv6 => (v4, v6),
        AddressFamilies::Ipv6ThenIpv4 => (v6, v4),
    };
    first.into_iter().chain(second)
}

/// The targets tried, in order, when every attempt fails: the plan's order as one list. The
/// hosts missing from `addresses` have none.
#[cfg(test)]
pub(crate) fn attempt_order(
    answer: &MxAnswer,
    addresses: &[(&str, Vec<IpAddr>)],
    families: AddressFamilies,
    cap: usize,
) -> Vec<Target> {
    let mut plan = Plan::mx::<rand::rngs::StdRng>(
        answer,
        None,
        25,
        TlsPolicy::Opportunistic,
        families,
        cap,
        Outcome::Deferred {
            reason: Reason::Local {
                host: None,
                text: String::new(),
            },
            status: None,
        },
    );
    let mut tried = Vec::new();
    loop {
        match plan.next() {
            Step::Lookup(host) => {
                let found = addresses
                    .iter()
                    .find(|(h, _)| *h == host)
                    .map(|(_, a)| a.clone())
                    .unwrap_or_default();
                plan.handle_addresses(&host, Ok(found));
            }
            Step::Attempt(target) => {
                tried.push(target);
                plan.handle_failure(HopFailure {
                    stage: super::Stage::Connect,
                    reason: Reason::Local {
                        host: None,
                        text: "refused".into(),
                    },
                    status: EnhancedStatus::new(4, 4, 1),
                    permanent: false,
                    retry_without_tls: false,
                });
            }
            Step::Finish(_) => return tried,
        }
    }
}

#[cfg(test)]
mod tests;
