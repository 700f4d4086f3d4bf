//! TLS-RPT (RFC 8460): per policy domain, the count of successful and failed outbound TLS
//! sessions with the RFC's result types, the `_smtp._tls` record, and the aggregate report in
//! the RFC's JSON (§4). Collection and the report are pure; sending is the caller's.
//!
//! Bounded: at most [`MAX_POLICIES`] policies and [`MAX_DETAILS`] failure rows per policy are
//! kept between reports; beyond that sessions are still counted in the summary.

use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

/// Policies kept between two reports.
pub const MAX_POLICIES: usize = 10_000;
/// Failure-detail rows per policy.
pub const MAX_DETAILS: usize = 100;

/// RFC 8460 §4.4 `policy-type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum PolicyType {
    /// DANE.
    #[serde(rename = "tlsa")]
    Tlsa,
    /// MTA-STS.
    #[serde(rename = "sts")]
    Sts,
    /// Neither.
    #[serde(rename = "no-policy-found")]
    NoPolicyFound,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    domain: String,
    policy_type: PolicyType,
    policy_string: Vec<String>,
}

#[derive(Debug, Clone, Default)]
struct Stats {
    mx_hosts: BTreeSet<String>,
    success: u64,
    failure: u64,
    details: BTreeMap<(String, String, String), u64>,
}

/// Counts sessions until a report takes them. Shared by the deliverer's workers.
#[derive(Debug, Default)]
pub struct Collector {
    policies: Mutex<BTreeMap<Key, Stats>>,
}

/// One session's TLS result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionResult<'a> {
    /// TLS established as the policy asked.
    Success,
    /// A failure of RFC 8460 §4.3.2's `result_type`.
    Failure(&'a str),
}

impl Collector {
    fn with_stats(&self, key: Key, f: impl FnOnce(&mut Stats)) {
        let mut policies = match self.policies.lock() {
            Ok(p) => p,
            Err(poisoned) => poisoned.into_inner(),
        };
        if !policies.contains_key(&key) && policies.len() >= MAX_POLICIES {
            return;
        }
        f(policies.entry(key).or_default());
    }

    /// Counts one session with `mx` at `ip` under the policy of `domain`.
    pub fn record(
        &self,
        domain: &str,
        policy_type: PolicyType,
        policy_string: Vec<String>,
        mx: &str,
        ip: &str,
        result: SessionResult<'_>,
    ) {
        let key = Key {
            domain: domain.to_owned(),
            policy_type,
            policy_string,
        };
        self.with_stats(key, |stats| {
            if stats.mx_hosts.len() < MAX_DETAILS {
                stats.mx_hosts.insert(mx.to_owned());
            }
            match result {
                SessionResult::Success => stats.success += 1,
                SessionResult::Failure(kind) => {
                    stats.failure += 1;
                    let row = (kind.to_owned(), mx.to_owned(), ip.to_owned());
                    if stats.details.len() < MAX_DETAILS || stats.details.contains_key(&row) {
                        *stats.details.entry(row).or_default() += 1;
                    }
                }
            }
        });
    }

    /// A TLSA lookup that failed (`dnssec-invalid`, `tlsa-invalid`): the host was not tried.
    pub fn record_tlsa_failure(&self, domain: &str, mx: &str, kind: &str) {
        self.record(
            domain,
            PolicyType::Tlsa,
            Vec::new(),
            mx,
            "",
            SessionResult::Failure(kind),
        );
    }

    /// Everything counted since the last call, one [`Report`] per policy domain, and resets.
    pub fn take_reports(&self, meta: &ReportMeta) -> Vec<(String, Report)> {
        let taken = {
            let mut policies = match self.policies.lock() {
                Ok(p) => p,
                Err(poisoned) => poisoned.into_inner(),
            };
            std::mem::take(&mut *policies)
        };
        let mut by_domain: BTreeMap<String, Vec<PolicyReport>> = BTreeMap::new();
        for (key, stats) in taken {
            let policy = PolicyReport {
                policy: PolicyDescription {
                    policy_type: key.policy_type,
                    policy_string: key.policy_string,
                    policy_domain: key.domain.clone(),
                    mx_host: stats.mx_hosts.into_iter().collect(),
                },
                summary: Summary {
                    total_successful_session_count: stats.success,
                    total_failure_session_count: stats.failure,
                },
                failure_details: stats
                    .details
                    .into_iter()
                    .map(|((result_type, mx, ip), count)| FailureDetail {
                        result_type,
                        sending_mta_ip: meta.sending_ip.clone(),
                        receiving_mx_hostname: mx,
                        receiving_ip: (!ip.is_empty()).then_some(ip),
                        failed_session_count: count,
                    })
                    .collect(),
            };
            by_domain.entry(key.domain).or_default().push(policy);
        }
        by_domain
            .into_iter()
            .map(|(domain, policies)| {
                let report = Report {
                    organization_name: meta.organization.clone(),
                    date_range: DateRange {
                        start_datetime: meta.start.clone(),
                        end_datetime: meta.end.clone(),
                    },
                    contact_info: meta.contact.clone(),
                    report_id: format!("{}_{}@{}", meta.report_id, domain, meta.organization),
                    policies,
                };
                (domain, report)
            })
            .collect()
    }
}

/// Who reports, and for which period.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportMeta {
    /// `organization-name`: our host name.
    pub organization: String,
    /// `contact-info`: an address of the operator.
    pub contact: String,
    /// Start of the period, RFC 3339 (`2026-12-01T00:00:00Z`).
    pub start: String,
    /// End of the period, RFC 3339.
    pub end: String,
    /// Unique per report run.
    pub report_id: String,
    /// `sending-mta-ip`, when known.
    pub sending_ip: Option<String>,
}

/// RFC 8460 §4.4 report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Report {
    /// `organization-name`.
    pub organization_name: String,
    /// `date-range`.
    pub date_range: DateRange,
    /// `contact-info`.
    pub contact_info: String,
    /// `report-id`.
    pub report_id: String,
    /// `policies`.
    pub policies: Vec<PolicyReport>,
}

/// `date-range`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct DateRange {
    /// `start-datetime`.
    pub start_datetime: String,
    /// `end-datetime`.
    pub end_datetime: String,
}

/// One policy's results.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct PolicyReport {
    /// `policy`.
    pub policy: PolicyDescription,
    /// `summary`.
    pub summary: Summary,
    /// `failure-details`.
    pub failure_details: Vec<FailureDetail>,
}

/// `policy`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct PolicyDescription {
    /// `policy-type`.
    pub policy_type: PolicyType,
    /// `policy-string`.
    pub policy_string: Vec<String>,
    /// `policy-domain`.
    pub policy_domain: String,
    /// `mx-host`.
    pub mx_host: Vec<String>,
}

/// `summary`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Summary {
    /// `total-successful-session-count`.
    pub total_successful_session_count: u64,
    /// `total-failure-session-count`.
    pub total_failure_session_count: u64,
}

/// One row of `failure-details`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct FailureDetail {
    /// `result-type`.
    pub result_type: String,
    /// `sending-mta-ip`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sending_mta_ip: Option<String>,
    /// `receiving-mx-hostname`.
    pub receiving_mx_hostname: String,
    /// `receiving-ip`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub receiving_ip: Option<String>,
    /// `failed-session-count`.
    pub failed_session_count: u64,
}

/// A reporting destination from the `rua` of `_smtp._tls` (RFC 8460 §3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rua {
    /// `mailto:` address.
    Mailto(String),
    /// `https:` URL.
    Https(String),
}

/// Why a `_smtp._tls` record is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// Not `v=TLSRPTv1` first.
    #[error("the record does not start with v=TLSRPTv1")]
    NotTlsRpt,
    /// No `rua`, or none of its URIs is mailto: or https:.
    #[error("the record has no usable rua")]
    NoRua,
    /// Not exactly one record.
    #[error("{0} TLS-RPT records where exactly one is expected")]
    RecordCount(usize),
}

/// Parses one `_smtp._tls` TXT record: `v=TLSRPTv1; rua=mailto:a@b,https://c/d`.
pub fn parse_record(text: &str) -> Result<Vec<Rua>, RecordError> {
    let mut fields = text.split(';').map(str::trim);
    if fields.next() != Some("v=TLSRPTv1") {
        return Err(RecordError::NotTlsRpt);
    }
    let mut out = Vec::new();
    for field in fields {
        let Some(list) = field.strip_prefix("rua=") else {
            continue;
        };
        for uri in list.split(',').map(str::trim) {
            if let Some(address) = uri.strip_prefix("mailto:") {
                // RFC 6068 allows %-escapes; addresses here are plain. Refuse anything that
                // could break an SMTP command line.
                if !address.is_empty()
                    && address.contains('@')
                    && address
                        .bytes()
                        .all(|b| b > b' ' && b != b'<' && b != b'>' && b != 0x7f)
                {
                    out.push(Rua::Mailto(address.to_owned()));
                }
            } else if uri.starts_with("https://") && uri.bytes().all(|b| b > b' ' && b != 0x7f) {
                out.push(Rua::Https(uri.to_owned()));
            }
        }
    }
    if out.is_empty() {
        return Err(RecordError::NoRua);
    }
    Ok(out)
}

/// The record among all TXT records at `_smtp._tls.<domain>`.
pub fn select_record(texts: &[String]) -> Result<Vec<Rua>, RecordError> {
    let candidates: Vec<&String> = texts
        .iter()
        .filter(|t| t.trim_start().starts_with("v=TLSRPTv1"))
        .collect();
    match candidates.as_slice() {
        [one] => parse_record(one),
        [] => Err(RecordError::NotTlsRpt),
        more => Err(RecordError::RecordCount(more.len())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_table() {
        assert_eq!(
            parse_record("v=TLSRPTv1; rua=mailto:tls@example.net,https://r.example.net/x"),
            Ok(vec![
                Rua::Mailto("tls@example.net".into()),
                Rua::Https("https://r.example.net/x".into())
            ])
        );
        assert_eq!(
            parse_record("v=TLSRPTv1;rua=ftp://x"),
            Err(RecordError::NoRua)
        );
        assert_eq!(parse_record("v=TLSRPTv1"), Err(RecordError::NoRua));
        assert_eq!(parse_record("rua=mailto:a@b"), Err(RecordError::NotTlsRpt));
        assert_eq!(
            parse_record("v=TLSRPTv1; rua=mailto:a>b@c"),
            Err(RecordError::NoRua)
        );
        let two = vec![
            "v=TLSRPTv1; rua=mailto:a@b".into(),
            "v=TLSRPTv1; rua=mailto:c@d".into(),
        ];
        assert_eq!(select_record(&two), Err(RecordError::RecordCount(2)));
    }

    #[test]
    fn report_json_has_the_rfc_shape() {
        let c = Collector::default();
        let sts = vec!["version: STSv1".to_owned(), "mode: enforce".to_owned()];
        for _ in 0..3 {
            c.record(
                "example.net",
                PolicyType::Sts,
                sts.clone(),
                "mx.example.net",
                "192.0.2.1",
                SessionResult::Success,
            );
        }
        c.record(
            "example.net",
            PolicyType::Sts,
            sts.clone(),
            "mx.example.net",
            "192.0.2.1",
            SessionResult::Failure("certificate-expired"),
        );
        c.record_tlsa_failure("other.org", "mx.other.org", "dnssec-invalid");
        let meta = ReportMeta {
            organization: "gw.example.com".into(),
            contact: "postmaster@gw.example.com".into(),
            start: "2026-12-01T00:00:00Z".into(),
            end: "2026-12-01T23:59:59Z".into(),
            report_id: "2026-12-01".into(),
            sending_ip: None,
        };
        let reports = c.take_reports(&meta);
        assert_eq!(reports.len(), 2);
        let (domain, report) = &reports[0];
        assert_eq!(domain, "example.net");
        let json: serde_json::Value = serde_json::to_value(report).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "organization-name": "gw.example.com",
                "date-range": {"start-datetime": "2026-12-01T00:00:00Z", "end-datetime": "2026-12-01T23:59:59Z"},
                "contact-info": "postmaster@gw.example.com",
                "report-id": "2026-12-01_example.net@gw.example.com",
                "policies": [{
                    "policy": {
                        "policy-type": "sts",
                        "policy-string": ["version: STSv1", "mode: enforce"],
                        "policy-domain": "example.net",
                        "mx-host": ["mx.example.net"]
                    },
                    "summary": {"total-successful-session-count": 3, "total-failure-session-count": 1},
                    "failure-details": [{
                        "result-type": "certificate-expired",
                        "receiving-mx-hostname": "mx.example.net",
                        "receiving-ip": "192.0.2.1",
                        "failed-session-count": 1
                    }]
                }]
            })
        );
        assert_eq!(
            reports[1].1.policies[0].policy.policy_type,
            PolicyType::Tlsa
        );
        // Taken: the next report starts from zero.
        assert!(c.take_reports(&meta).is_empty());
    }
}
