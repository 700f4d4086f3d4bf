//! The outbound TLS decision for one MX host, as one pure function ([`tls_policy`]) of what DNS
//! and MTA-STS said and what the operator and the sender asked for. Table-tested below.
//!
//! Precedence (RFC 8461 §2, RFC 7672 §2.2, RFC 8689 §4.2.1):
//! 1. A `[[destination]] require_tls` wins over both DANE and MTA-STS: WebPKI-verified TLS.
//! 2. DANE: a secure MX RRset, secure addresses and a secure TLSA RRset. Usable records mean
//!    STARTTLS is mandatory and the certificate is checked against them; a secure set without a
//!    usable record means mandatory but unauthenticated TLS; a TLSA lookup that failed (bogus,
//!    SERVFAIL) makes the host unusable now, never a fallback to less.
//! 3. MTA-STS: `enforce` delivers only to MX hosts the policy names, over WebPKI-verified TLS;
//!    `testing` delivers as without a policy, verifying only to report (TLS-RPT).
//! 4. Otherwise the local default (`[delivery] tls`), opportunistic unless configured.
//!
//! REQUIRETLS (the sender's `MAIL FROM ... REQUIRETLS`) is met only by a verified certificate of
//! an authenticated MX name: DANE, or WebPKI with the MX named by an MTA-STS policy (whose
//! `testing` mode then counts as `enforce`) or by a DNSSEC-secure MX RRset. Anything less refuses
//! the host with 4.7.30 (5.7.30 once the message expires). That the server offers REQUIRETLS is
//! the session's check (`wire::check_capabilities`).

use super::TlsPolicy;
use super::mta_sts::{Mode, Policy};
use crate::dane::Tlsa;
use crate::status::EnhancedStatus;

/// What DANE says about one MX host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DaneLookup {
    /// No DANE: no validating resolver, an insecure MX RRset or insecure addresses, or no
    /// secure TLSA RRset.
    NotApplicable,
    /// A secure TLSA RRset with at least one usable record.
    Usable(Vec<Tlsa>),
    /// A secure TLSA RRset without any usable record (RFC 7672 §2.2: TLS, unauthenticated).
    NoUsableRecords,
    /// The TLSA lookup failed: `bogus` for a DNSSEC failure, else temporary.
    Failed {
        /// DNSSEC-bogus (TLS-RPT `dnssec-invalid`) rather than SERVFAIL or a timeout.
        bogus: bool,
        /// What the resolver said.
        text: String,
    },
}

/// Everything [`tls_policy`] decides from.
#[derive(Debug, Clone, Copy)]
pub struct PolicyInputs<'a> {
    /// The MX host name.
    pub host: &'a str,
    /// The MX RRset was DNSSEC-secure.
    pub mx_secure: bool,
    /// DANE for this host.
    pub dane: &'a DaneLookup,
    /// The recipient domain's MTA-STS policy, if one is known (fetched or cached).
    pub sts: Option<&'a Policy>,
    /// `[[destination]] require_tls` for the recipient domain.
    pub destination_require_tls: bool,
    /// The message was received with REQUIRETLS (`Envelope.require_tls`).
    pub envelope_require_tls: bool,
    /// `[delivery] tls`: what applies when no policy does.
    pub default: TlsPolicy,
}

/// Which policy decided, for logs, metrics labels and TLS-RPT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PolicyKind {
    /// `[[destination]] require_tls`.
    Destination,
    /// DANE (RFC 7672).
    Dane,
    /// MTA-STS in `enforce` mode (or `testing` under REQUIRETLS).
    MtaSts,
    /// MTA-STS in `testing` mode.
    MtaStsTesting,
    /// No policy: the local default.
    NoPolicy,
}

impl PolicyKind {
    /// Lower-case label.
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyKind::Destination => "destination",
            PolicyKind::Dane => "dane",
            PolicyKind::MtaSts => "mta_sts",
            PolicyKind::MtaStsTesting => "mta_sts_testing",
            PolicyKind::NoPolicy => "none",
        }
    }
}

/// How a connection to the host must go, or why it must not be tried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsRequirement {
    /// No STARTTLS.
    Disabled,
    /// STARTTLS when offered, any certificate; plain text when it fails.
    Opportunistic,
    /// As opportunistic, and the certificate is checked by WebPKI only to be reported.
    ReportOnly,
    /// STARTTLS mandatory, the certificate checked by the TLSA records.
    Dane(Vec<Tlsa>),
    /// STARTTLS mandatory, no authentication.
    EncryptOnly,
    /// STARTTLS mandatory, the certificate valid under the WebPKI roots for the host name.
    WebPki,
    /// Do not connect: every recipient is deferred with this status unless another host takes it.
    Refuse {
        /// 4.7.x.
        status: EnhancedStatus,
        /// Why, for the log and the DSN.
        text: String,
    },
}

impl TlsRequirement {
    /// Lower-case label for metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            TlsRequirement::Disabled => "disabled",
            TlsRequirement::Opportunistic => "opportunistic",
            TlsRequirement::ReportOnly => "report_only",
            TlsRequirement::Dane(_) => "dane",
            TlsRequirement::EncryptOnly => "encrypt_only",
            TlsRequirement::WebPki => "webpki",
            TlsRequirement::Refuse { .. } => "refused",
        }
    }
}

/// The decision for one host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The policy that decided.
    pub policy: PolicyKind,
    /// What it requires.
    pub requirement: TlsRequirement,
}

/// 4.7.30, "REQUIRETLS support required" (RFC 8689 §6).
pub const REQUIRETLS_STATUS: EnhancedStatus = EnhancedStatus::new(4, 7, 30);

fn refuse(policy: PolicyKind, status: EnhancedStatus, text: String) -> Decision {
    Decision {
        policy,
        requirement: TlsRequirement::Refuse { status, text },
    }
}

fn decided(policy: PolicyKind, requirement: TlsRequirement) -> Decision {
    Decision {
        policy,
        requirement,
    }
}

/// The TLS decision for one MX host. See the module docs for the rules.
pub fn tls_policy(inputs: PolicyInputs<'_>) -> Decision {
    let host = inputs.host;
    let sts_names_host = inputs
        .sts
        .is_some_and(|p| p.mode != Mode::None && p.matches(host));
    let requiretls = inputs.envelope_require_tls;
    let unmet = |policy: PolicyKind, why: &str| {
        refuse(
            policy,
            REQUIRETLS_STATUS,
            format!("the message requires TLS (REQUIRETLS) and {why} for {host}"),
        )
    };

    if inputs.destination_require_tls {
        if requiretls && !(inputs.mx_secure || sts_names_host) {
            return unmet(
                PolicyKind::Destination,
                "neither DNSSEC nor MTA-STS authenticates the MX name",
            );
        }
        return decided(PolicyKind::Destination, TlsRequirement::WebPki);
    }

    match inputs.dane {
        DaneLookup::Usable(records) => {
            return decided(PolicyKind::Dane, TlsRequirement::Dane(records.clone()));
        }
        DaneLookup::NoUsableRecords if requiretls => {
            return unmet(
                PolicyKind::Dane,
                "no usable TLSA record can verify the certificate",
            );
        }
        DaneLookup::NoUsableRecords => {
            return decided(PolicyKind::Dane, TlsRequirement::EncryptOnly);
        }
        DaneLookup::Failed { bogus, text } => {
            let what = if *bogus { "DNSSEC-bogus" } else { "failed" };
            return refuse(
                PolicyKind::Dane,
                EnhancedStatus::new(4, 7, 5),
                format!("the TLSA lookup for {host} {what} ({text}); not used until it succeeds"),
            );
        }
        DaneLookup::NotApplicable => {}
    }

    if let Some(policy) = inputs.sts {
        match policy.mode {
            Mode::Enforce if sts_names_host => {
                return decided(PolicyKind::MtaSts, TlsRequirement::WebPki);
            }
            Mode::Enforce => {
                return refuse(
                    PolicyKind::MtaSts,
                    EnhancedStatus::new(4, 7, 5),
                    format!("{host} is not an MX host of the recipient domain's MTA-STS policy"),
                );
            }
            Mode::Testing if requiretls && sts_names_host => {
                return decided(PolicyKind::MtaSts, TlsRequirement::WebPki);
            }
            Mode::Testing if requiretls => {
                return unmet(
                    PolicyKind::MtaSts,
                    "the MTA-STS policy (testing) does not name the host",
                );
            }
            Mode::Testing => {
                let requirement = match inputs.default {
                    TlsPolicy::Required => TlsRequirement::WebPki,
                    TlsPolicy::Disabled | TlsPolicy::Opportunistic => TlsRequirement::ReportOnly,
                };
                return decided(PolicyKind::MtaStsTesting, requirement);
            }
            Mode::None => {}
        }
    }

    match (inputs.default, requiretls) {
        (TlsPolicy::Required, true) if inputs.mx_secure => {
            decided(PolicyKind::NoPolicy, TlsRequirement::WebPki)
        }
        (_, true) => unmet(
            PolicyKind::NoPolicy,
            "no DANE or MTA-STS policy (nor a DNSSEC-secure MX with verified TLS) applies",
        ),
        (TlsPolicy::Required, false) => decided(PolicyKind::NoPolicy, TlsRequirement::WebPki),
        (TlsPolicy::Opportunistic, false) => {
            decided(PolicyKind::NoPolicy, TlsRequirement::Opportunistic)
        }
        (TlsPolicy::Disabled, false) => decided(PolicyKind::NoPolicy, TlsRequirement::Disabled),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn sts(mode: Mode) -> Policy {
        Policy {
            mode,
            max_age: Duration::from_secs(86_400),
            mx: vec!["*.example.net".into()],
        }
    }

    fn tlsa() -> Vec<Tlsa> {
        vec![Tlsa {
            usage: 3,
            selector: 1,
            matching: 1,
            data: vec![0; 32],
        }]
    }

    #[test]
    fn decision_table() {
        use PolicyKind as P;
        use TlsPolicy::{Disabled as Off, Opportunistic as May, Required as Must};
        let usable = DaneLookup::Usable(tlsa());
        let unusable = DaneLookup::NoUsableRecords;
        let bogus = DaneLookup::Failed {
            bogus: true,
            text: "bogus".into(),
        };
        let none = DaneLookup::NotApplicable;
        let enforce = sts(Mode::Enforce);
        let testing = sts(Mode::Testing);
        let withdrawn = sts(Mode::None);
        // (host, mx_secure, dane, sts, destination, requiretls, default) -> (policy, label)
        type Row<'a> = (
            &'a str,
            bool,
            &'a DaneLookup,
            Option<&'a Policy>,
            bool,
            bool,
            TlsPolicy,
            P,
            &'a str,
        );
        #[rustfmt::skip]
        let rows: &[Row<'_>] = &[
            // No policy: the local default.
            ("mx.example.net", false, &none, None, false, false, May, P::NoPolicy, "opportunistic"),
            ("mx.example.net", false, &none, None, false, false, Off, P::NoPolicy, "disabled"),
            ("mx.example.net", false, &none, None, false, false, Must, P::NoPolicy, "webpki"),
            ("mx.example.net", false, &none, Some(&withdrawn), false, false, May, P::NoPolicy, "opportunistic"),
            // DANE wins over MTA-STS and over the default.
            ("mx.example.net", true, &usable, Some(&enforce), false, false, May, P::Dane, "dane"),
            ("other.host", true, &usable, Some(&enforce), false, false, Off, P::Dane, "dane"),
            ("mx.example.net", true, &unusable, Some(&enforce), false, false, May, P::Dane, "encrypt_only"),
            ("mx.example.net", true, &bogus, Some(&enforce), false, false, May, P::Dane, "refused"),
            // The destination's require_tls wins over both.
            ("mx.example.net", true, &usable, Some(&enforce), true, false, May, P::Destination, "webpki"),
            ("mx.example.net", true, &bogus, None, true, false, May, P::Destination, "webpki"),
            // MTA-STS.
            ("mx.example.net", false, &none, Some(&enforce), false, false, May, P::MtaSts, "webpki"),
            ("mx.elsewhere.org", false, &none, Some(&enforce), false, false, May, P::MtaSts, "refused"),
            ("mx.example.net", false, &none, Some(&testing), false, false, May, P::MtaStsTesting, "report_only"),
            ("mx.elsewhere.org", false, &none, Some(&testing), false, false, May, P::MtaStsTesting, "report_only"),
            ("mx.example.net", false, &none, Some(&testing), false, false, Must, P::MtaStsTesting, "webpki"),
            // REQUIRETLS: only a verified certificate of an authenticated MX name.
            ("mx.example.net", true, &usable, None, false, true, May, P::Dane, "dane"),
            ("mx.example.net", true, &unusable, None, false, true, May, P::Dane, "refused"),
            ("mx.example.net", false, &none, Some(&enforce), false, true, May, P::MtaSts, "webpki"),
            ("mx.example.net", false, &none, Some(&testing), false, true, May, P::MtaSts, "webpki"),
            ("mx.elsewhere.org", false, &none, Some(&testing), false, true, May, P::MtaSts, "refused"),
            ("mx.example.net", false, &none, None, false, true, May, P::NoPolicy, "refused"),
            ("mx.example.net", false, &none, None, false, true, Must, P::NoPolicy, "refused"),
            ("mx.example.net", true, &none, None, false, true, Must, P::NoPolicy, "webpki"),
            ("mx.example.net", false, &none, None, true, true, May, P::Destination, "refused"),
            ("mx.example.net", true, &none, None, true, true, May, P::Destination, "webpki"),
            ("mx.example.net", false, &none, Some(&enforce), true, true, May, P::Destination, "webpki"),
        ];
        for &(host, mx_secure, dane, sts, destination, requiretls, default, policy, label) in rows {
            let decision = tls_policy(PolicyInputs {
                host,
                mx_secure,
                dane,
                sts,
                destination_require_tls: destination,
                envelope_require_tls: requiretls,
                default,
            });
            let row = format!(
                "{host} secure={mx_secure} {dane:?} {sts:?} dest={destination} requiretls={requiretls} {default:?}"
            );
            assert_eq!(decision.policy, policy, "{row}");
            assert_eq!(decision.requirement.as_str(), label, "{row}");
            if let TlsRequirement::Refuse { status, .. } = &decision.requirement {
                let want = if requiretls {
                    REQUIRETLS_STATUS
                } else {
                    EnhancedStatus::new(4, 7, 5)
                };
                assert_eq!(*status, want, "{row}");
            }
        }
    }

    #[test]
    fn dane_records_are_passed_on() {
        let records = tlsa();
        let decision = tls_policy(PolicyInputs {
            host: "mx.example.net",
            mx_secure: true,
            dane: &DaneLookup::Usable(records.clone()),
            sts: None,
            destination_require_tls: false,
            envelope_require_tls: false,
            default: TlsPolicy::Opportunistic,
        });
        assert_eq!(decision.requirement, TlsRequirement::Dane(records));
    }
}
