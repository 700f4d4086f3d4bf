//! `dimegate queue summary`: the queue's shape at a glance, in the manner of Postfix's `qshape`
//! and KumoMTA's queue summary. Pending recipients (not yet delivered or failed) are counted by
//! recipient domain and by the age of their message, and the most frequent last errors of the
//! deferred ones are ranked.
//!
//! A pure function of the message list and the current time, so that it is the same whether the
//! list came from the store or from the running server's admin API.

use crate::store::{MessageSummary, StateKind};
use crate::time::UnixTime;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};

/// Upper bounds of the age buckets in minutes, as `qshape` prints them; a last bucket holds
/// everything older.
pub(super) const AGE_BUCKETS_MINUTES: [u64; 9] = [5, 10, 20, 40, 80, 160, 320, 640, 1280];

/// Longest deferral reason kept, in characters: remote replies can be long, and ranking needs
/// only their start.
const MAX_REASON_CHARS: usize = 160;

/// The pending recipients of one destination domain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(super) struct DomainRow {
    /// Recipient domain, lower case.
    pub(super) domain: String,
    /// All its pending recipients.
    pub(super) total: u64,
    /// Per age bucket: `AGE_BUCKETS_MINUTES.len() + 1` counts, the last one older than all.
    pub(super) by_age: Vec<u64>,
}

/// One deferral reason and how many deferred recipients have it as their last error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(super) struct Reason {
    /// The last error, cut to a bounded length.
    pub(super) reason: String,
    /// Deferred recipients whose last error it is.
    pub(super) recipients: u64,
}

/// The whole summary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(super) struct Summary {
    /// Messages in the queue.
    pub(super) messages: u64,
    /// Pending recipients (queued, leased, deferred, held).
    pub(super) pending_recipients: u64,
    /// Recipients by state, every state present (0 when none).
    pub(super) by_state: BTreeMap<String, u64>,
    /// Bucket bounds (minutes) for `DomainRow::by_age`.
    pub(super) age_buckets_minutes: Vec<u64>,
    /// Every domain of the whole queue in one row.
    pub(super) all: DomainRow,
    /// The domains with the most pending recipients first (ties by name), at most `top`.
    pub(super) domains: Vec<DomainRow>,
    /// Domains left off beyond `top`.
    pub(super) domains_left_off: u64,
    /// The most frequent last errors of deferred recipients, at most `top`.
    pub(super) deferral_reasons: Vec<Reason>,
}

fn bucket(age_secs: u64) -> usize {
    let minutes = age_secs / 60;
    AGE_BUCKETS_MINUTES
        .iter()
        .position(|&b| minutes < b)
        .unwrap_or(AGE_BUCKETS_MINUTES.len())
}

fn domain_of(address: &str) -> String {
    match address.rsplit_once('@') {
        Some((_, d)) if !d.is_empty() => d.trim_end_matches('.').to_lowercase(),
        _ => "(no domain)".to_owned(),
    }
}

fn cut(reason: &str) -> String {
    let one_line = reason.split(['\r', '\n']).next().unwrap_or_default().trim();
    match one_line.char_indices().nth(MAX_REASON_CHARS) {
        Some((i, _)) => format!("{}...", &one_line[..i]),
        None => one_line.to_owned(),
    }
}

fn new_row(domain: String) -> DomainRow {
    DomainRow {
        domain,
        total: 0,
        by_age: vec![0; AGE_BUCKETS_MINUTES.len() + 1],
    }
}

/// Summarises `messages` as of `now`, keeping the `top` largest domains and reasons.
pub(super) fn summarize(messages: &[MessageSummary], now: UnixTime, top: usize) -> Summary {
    let states = [
        StateKind::Queued,
        StateKind::Leased,
        StateKind::Deferred,
        StateKind::Held,
        StateKind::Delivered,
        StateKind::Failed,
    ];
    let mut by_state: BTreeMap<String, u64> = states.iter().map(|s| (s.to_string(), 0)).collect();
    let mut all = new_row("(all)".to_owned());
    let mut domains: HashMap<String, DomainRow> = HashMap::new();
    let mut reasons: HashMap<String, u64> = HashMap::new();
    for m in messages {
        let b = bucket(now.0.saturating_sub(m.arrival.0));
        for r in &m.recipients {
            *by_state.entry(r.state.to_string()).or_insert(0) += 1;
            if matches!(r.state, StateKind::Delivered | StateKind::Failed) {
                continue;
            }
            let domain = domain_of(&r.address);
            let row = domains
                .entry(domain.clone())
                .or_insert_with(|| new_row(domain));
            for row in [row, &mut all] {
                row.total += 1;
                row.by_age[b] += 1;
            }
            if r.state == StateKind::Deferred {
                let reason = r.last_error.as_deref().map_or_else(
                    || "(no error recorded)".to_owned(),
                    |e| match cut(e) {
                        e if e.is_empty() => "(empty error)".to_owned(),
                        e => e,
                    },
                );
                *reasons.entry(reason).or_insert(0) += 1;
            }
        }
    }
    let mut domains: Vec<DomainRow> = domains.into_values().collect();
    domains.sort_by(|a, b| b.total.cmp(&a.total).then_with(|| a.domain.cmp(&b.domain)));
    let left_off = domains.len().saturating_sub(top);
    domains.truncate(top);
    let mut reasons: Vec<Reason> = reasons
        .into_iter()
        .map(|(reason, recipients)| Reason { reason, recipients })
        .collect();
    reasons.sort_by(|a, b| {
        b.recipients
            .cmp(&a.recipients)
            .then_with(|| a.reason.cmp(&b.reason))
    });
    reasons.truncate(top);
    Summary {
        messages: messages.len() as u64,
        pending_recipients: all.total,
        by_state,
        age_buckets_minutes: AGE_BUCKETS_MINUTES.to_vec(),
        all,
        domains,
        domains_left_off: left_off as u64,
        deferral_reasons: reasons,
    }
}

/// The `qshape`-like text table.
pub(super) fn render(s: &Summary) -> String {
    let width = s
        .domains
        .iter()
        .map(|d| d.domain.chars().count())
        .max()
        .unwrap_or(0)
        .max(6);
    let mut out = format!("{:>width$} {:>6}", "", "T");
    for b in &s.age_buckets_minutes {
        out.push_str(&format!(" {b:>6}"));
    }
    let last = s.age_buckets_minutes.last().copied().unwrap_or(0);
    out.push_str(&format!(" {:>6}\n", format!("{last}+")));
    for row in std::iter::once(&s.all).chain(&s.domains) {
        let name = if row.domain == "(all)" {
            "TOTAL"
        } else {
            &row.domain
        };
        out.push_str(&format!("{name:>width$} {:>6}", row.total));
        for n in &row.by_age {
            out.push_str(&format!(" {n:>6}"));
        }
        out.push('\n');
    }
    if s.domains_left_off > 0 {
        out.push_str(&format!("({} more domains)\n", s.domains_left_off));
    }
    out.push_str(&format!(
        "-- {} message(s), {} pending recipient(s); by state:",
        s.messages, s.pending_recipients
    ));
    for (state, n) in &s.by_state {
        out.push_str(&format!(" {state}={n}"));
    }
    out.push('\n');
    if !s.deferral_reasons.is_empty() {
        out.push_str("top deferral reasons:\n");
        for r in &s.deferral_reasons {
            out.push_str(&format!("{:>7}  {}\n", r.recipients, r.reason));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::QueueId;
    use crate::store::RecipientSummary;

    fn rcpt(address: &str, state: StateKind, error: Option<&str>) -> RecipientSummary {
        RecipientSummary {
            address: address.into(),
            state,
            attempts: 0,
            next_attempt: None,
            last_error: error.map(str::to_owned),
        }
    }

    fn message(id: u64, arrival: u64, recipients: Vec<RecipientSummary>) -> MessageSummary {
        MessageSummary {
            queue_id: QueueId(id),
            sender: "a@x.example".into(),
            arrival: UnixTime(arrival),
            size: 10,
            client: "127.0.0.1:1".parse().unwrap(),
            recipients,
        }
    }

    #[test]
    fn buckets_follow_qshape() {
        assert_eq!(bucket(0), 0);
        assert_eq!(bucket(299), 0);
        assert_eq!(bucket(300), 1);
        assert_eq!(bucket(1279 * 60), 8);
        assert_eq!(bucket(1280 * 60), 9);
        assert_eq!(bucket(u64::MAX), 9);
    }

    #[test]
    fn counts_pending_recipients_by_domain_age_and_reason() {
        let now = UnixTime(100_000);
        let msgs = vec![
            message(
                1,
                now.0 - 30,
                vec![
                    rcpt("b@Y.example", StateKind::Queued, None),
                    rcpt(
                        "c@y.example.",
                        StateKind::Deferred,
                        Some("451 4.3.0 busy\r\nmore"),
                    ),
                    rcpt("d@z.example", StateKind::Delivered, None),
                ],
            ),
            message(
                2,
                now.0 - 3 * 3600,
                vec![
                    rcpt("e@z.example", StateKind::Deferred, Some("451 4.3.0 busy")),
                    rcpt("f@y.example", StateKind::Held, None),
                    rcpt("g@w.example", StateKind::Deferred, None),
                    rcpt("nodomain", StateKind::Failed, None),
                ],
            ),
        ];
        let s = summarize(&msgs, now, 2);
        assert_eq!(s.messages, 2);
        assert_eq!(s.pending_recipients, 5);
        assert_eq!(s.by_state["queued"], 1);
        assert_eq!(s.by_state["deferred"], 3);
        assert_eq!(s.by_state["held"], 1);
        assert_eq!(s.by_state["delivered"], 1);
        assert_eq!(s.by_state["failed"], 1);
        assert_eq!(s.by_state["leased"], 0);
        assert_eq!(s.all.by_age[0], 2);
        assert_eq!(s.all.by_age[6], 3); // 180 minutes: 160..320
        assert_eq!(s.domains.len(), 2);
        assert_eq!(s.domains[0].domain, "y.example");
        assert_eq!(s.domains[0].total, 3);
        assert_eq!(s.domains[0].by_age, vec![2, 0, 0, 0, 0, 0, 1, 0, 0, 0]);
        // w.example and z.example tie at 1: by name, w first; z left off.
        assert_eq!(s.domains[1].domain, "w.example");
        assert_eq!(s.domains_left_off, 1);
        assert_eq!(
            s.deferral_reasons,
            vec![
                Reason {
                    reason: "451 4.3.0 busy".into(),
                    recipients: 2
                },
                Reason {
                    reason: "(no error recorded)".into(),
                    recipients: 1
                },
            ]
        );
        let text = render(&s);
        assert!(text.contains("TOTAL"), "{text}");
        assert!(text.contains("1280+"), "{text}");
        assert!(text.contains("      2  451 4.3.0 busy"), "{text}");
    }

    #[test]
    fn long_and_multibyte_reasons_are_cut_on_a_char_boundary() {
        let long = "é".repeat(500);
        let c = cut(&long);
        assert_eq!(c.chars().count(), MAX_REASON_CHARS + 3);
        assert!(c.ends_with("..."));
    }

    #[test]
    fn empty_queue() {
        let s = summarize(&[], UnixTime(5), 10);
        assert_eq!(s.messages, 0);
        assert_eq!(s.pending_recipients, 0);
        assert!(s.domains.is_empty());
        assert!(s.deferral_reasons.is_empty());
        assert!(render(&s).contains("0 message(s)"));
    }
}
