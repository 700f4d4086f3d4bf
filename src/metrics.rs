//! The metric registry: every counter, gauge and histogram the gateway exports on `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// How an SMTP session ended.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// `quit`, `peer_closed`, `timeout`, `session_timeout`, `too_many_errors`,
    /// `pipelining_overflow`, `shutdown`, `io_error`, `tls_failed`, `refused_limit`,
    /// `refused_rate`, `refused_draining`.
    pub outcome: &'static str,
}

/// Which ingress rate limit refused a client.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitLabel {
    /// `connection` (connections per second, 421 4.7.0) or `auth` (AUTH back-off, 454 4.7.0).
    pub limit: &'static str,
}

/// A reply code sent to a client.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabel {
    /// The three-digit SMTP reply code.
    pub code: String,
}

/// A delivery attempt's route and outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeliveryLabel {
    /// `backend`, `smarthost`, `mx`, `peer` (handed to a peer by `queue drain --peer`), `dmtp`,
    /// `unwrap`, `pass_sealed`, `protect`.
    pub route: &'static str,
    /// `delivered`, `deferred`, `failed`.
    pub outcome: &'static str,
}

/// A routing decision's flow (DESIGN.md §1).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FlowLabel {
    /// `backend`, `relay`, `wrap`, `unwrap`, `pass_sealed`, `protect`, `hold`, `fail`.
    pub flow: &'static str,
}

/// The class and subject of an enhanced status code (`4.4`, `4.7`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusClassLabel {
    /// `class.subject`.
    pub class: String,
}

/// The kind of a DSN.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DsnLabel {
    /// `failure`, `delay`, `success`.
    pub kind: &'static str,
}

/// A recipient state.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    /// `queued`, `leased`, `deferred`, `held`, `delivered`, `failed`.
    pub state: String,
}

/// All metrics. Cloning is cheap (each metric is an `Arc` inside).
#[derive(Clone)]
pub struct Metrics {
    /// Connections accepted on the SMTP listeners.
    pub smtp_connections: Counter,
    /// Connections open now.
    pub smtp_connections_active: Gauge,
    /// Sessions by how they ended.
    pub smtp_sessions: Family<OutcomeLabel, Counter>,
    /// Messages stored and acknowledged with 250.
    pub messages_accepted: Counter,
    /// Bytes of acknowledged messages.
    pub bytes_accepted: Counter,
    /// 4xx and 5xx replies by code.
    pub smtp_rejections: Family<CodeLabel, Counter>,
    /// Clients refused by an ingress rate limit, by limit.
    pub smtp_rate_limited: Family<LimitLabel, Counter>,
    /// Time from handing a message to the store until its fsync'd commit.
    pub store_commit_seconds: Histogram,
    /// Messages in the queue.
    pub queue_messages: Gauge,
    /// Delivery attempts per recipient, by route and outcome.
    pub deliveries: Family<DeliveryLabel, Counter>,
    /// Routing decisions per recipient and attempt, by flow.
    pub route_decisions: Family<FlowLabel, Counter>,
    /// Time of one delivery transaction (all recipients of one message to one next hop).
    pub delivery_seconds: Histogram,
    /// Deferrals by enhanced status class.
    pub deferrals: Family<StatusClassLabel, Counter>,
    /// DSNs queued, by kind.
    pub dsns: Family<DsnLabel, Counter>,
    /// Recipients in the queue by state (refreshed when scraped, from counts the store keeps).
    pub queue_recipients: Family<StateLabel, Gauge>,
    /// Age of the oldest queued message (refreshed when scraped).
    pub queue_oldest_age_seconds: Gauge,
    /// Bytes free for dimegate on the file system of `data_dir` (refreshed when scraped).
    pub data_dir_free_bytes: Gauge,
    /// Size of the file system of `data_dir` (refreshed when scraped).
    pub data_dir_size_bytes: Gauge,
    /// `queue.min_free_disk`: below it ingress answers 452 4.3.1.
    pub min_free_disk_bytes: Gauge,
    /// Expiry (notAfter, Unix seconds) of the SMTP TLS certificate.
    pub tls_certificate_expiry: Gauge,
    /// 1 while `dimegate queue drain` has stopped ingress.
    pub draining: Gauge,
}

/// RFC 3463 §3.1 defines subjects 0 to 7; anything else a remote sends is counted as `other`, so
/// that a hostile next hop cannot grow the `class` label without bound.
const MAX_KNOWN_SUBJECT: u16 = 7;

impl Metrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &mut Registry) -> Metrics {
        let m = Metrics {
            smtp_connections: Counter::default(),
            smtp_connections_active: Gauge::default(),
            smtp_sessions: Family::default(),
            messages_accepted: Counter::default(),
            bytes_accepted: Counter::default(),
            smtp_rejections: Family::default(),
            smtp_rate_limited: Family::default(),
            // 100 µs .. ~3.3 s
            store_commit_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            queue_messages: Gauge::default(),
            deliveries: Family::default(),
            route_decisions: Family::default(),
            // 1 ms .. ~65 s
            delivery_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 17)),
            deferrals: Family::default(),
            dsns: Family::default(),
            queue_recipients: Family::default(),
            queue_oldest_age_seconds: Gauge::default(),
            data_dir_free_bytes: Gauge::default(),
            data_dir_size_bytes: Gauge::default(),
            min_free_disk_bytes: Gauge::default(),
            tls_certificate_expiry: Gauge::default(),
            draining: Gauge::default(),
        };
        let r = registry.sub_registry_with_prefix("dimegate");
        r.register(
            "smtp_connections",
            "SMTP connections accepted",
            m.smtp_connections.clone(),
        );
        r.register(
            "smtp_connections_active",
            "SMTP connections open now",
            m.smtp_connections_active.clone(),
        );
        r.register(
            "smtp_sessions",
            "SMTP sessions by outcome",
            m.smtp_sessions.clone(),
        );
        r.register(
            "smtp_messages_accepted",
            "Messages stored and acknowledged with 250",
            m.messages_accepted.clone(),
        );
        r.register(
            "smtp_accepted_bytes",
            "Bytes of acknowledged messages",
            m.bytes_accepted.clone(),
        );
        r.register(
            "smtp_rejections",
            "SMTP 4xx and 5xx replies by code",
            m.smtp_rejections.clone(),
        );
        r.register(
            "smtp_rate_limited",
            "SMTP clients refused by a rate limit (connections per second, AUTH back-off)",
            m.smtp_rate_limited.clone(),
        );
        r.register(
            "store_commit_seconds",
            "Latency from hand-off to the store until the fsync'd commit",
            m.store_commit_seconds.clone(),
        );
        r.register(
            "queue_messages",
            "Messages in the queue",
            m.queue_messages.clone(),
        );
        r.register(
            "deliveries",
            "Delivery attempts per recipient by route and outcome",
            m.deliveries.clone(),
        );
        r.register(
            "route_decisions",
            "Routing decisions per recipient and attempt by flow (wrap, unwrap, protect, relay...)",
            m.route_decisions.clone(),
        );
        r.register(
            "delivery_seconds",
            "Duration of one delivery transaction to one next hop",
            m.delivery_seconds.clone(),
        );
        r.register(
            "deferrals",
            "Deferred recipients by enhanced status class",
            m.deferrals.clone(),
        );
        r.register(
            "dsns",
            "Delivery status notifications queued, by kind",
            m.dsns.clone(),
        );
        r.register(
            "queue_recipients",
            "Queued recipients by state",
            m.queue_recipients.clone(),
        );
        r.register(
            "queue_oldest_age_seconds",
            "Age of the oldest message in the queue",
            m.queue_oldest_age_seconds.clone(),
        );
        r.register(
            "data_dir_free_bytes",
            "Bytes available to dimegate on the file system of data_dir",
            m.data_dir_free_bytes.clone(),
        );
        r.register(
            "data_dir_size_bytes",
            "Size of the file system of data_dir",
            m.data_dir_size_bytes.clone(),
        );
        r.register(
            "queue_min_free_disk_bytes",
            "Free space below which ingress refuses mail with 452 4.3.1 (queue.min_free_disk)",
            m.min_free_disk_bytes.clone(),
        );
        r.register(
            "tls_certificate_expiry_timestamp_seconds",
            "Expiry (notAfter) of the SMTP TLS certificate as a Unix time",
            m.tls_certificate_expiry.clone(),
        );
        r.register(
            "draining",
            "1 while the gateway is draining (ingress stopped by dimegate queue drain)",
            m.draining.clone(),
        );
        m
    }

    /// Counts a deferral under its enhanced status class and subject. The `class` label takes
    /// `4.0` .. `4.7` (or `5.x`), and `4.other` for a subject RFC 3463 does not define.
    pub fn count_deferral(&self, class: u8, subject: u16) {
        let class = match (class, subject) {
            (2 | 4 | 5, s) if s <= MAX_KNOWN_SUBJECT => format!("{class}.{s}"),
            (2 | 4 | 5, _) => format!("{class}.other"),
            _ => "other".to_owned(),
        };
        self.deferrals
            .get_or_create(&StatusClassLabel { class })
            .inc();
    }

    /// Sets the queue gauges from the store's [`QueueStats`](crate::store::QueueStats): O(1),
    /// whatever the queue's size.
    pub fn set_queue_gauges(&self, stats: &crate::store::QueueStats, now: crate::time::UnixTime) {
        self.queue_messages
            .set(i64::try_from(stats.messages).unwrap_or(i64::MAX));
        for (state, n) in stats.recipients {
            self.queue_recipients
                .get_or_create(&StateLabel {
                    state: state.to_string(),
                })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        let oldest = stats
            .oldest_arrival
            .map_or(0, |a| now.0.saturating_sub(a.0));
        self.queue_oldest_age_seconds
            .set(i64::try_from(oldest).unwrap_or(i64::MAX));
    }

    /// Counts the 4xx/5xx replies in a buffer of reply lines (only the last line of a
    /// multi-line reply, `NNN ` rather than `NNN-`).
    pub fn count_rejections(&self, replies: &[u8]) {
        for line in replies.split(|&b| b == b'\n') {
            if line.len() >= 4
                && matches!(line[0], b'4' | b'5')
                && line[3] == b' '
                && line[1..3].iter().all(u8::is_ascii_digit)
            {
                let code = String::from_utf8_lossy(&line[..3]).into_owned();
                self.smtp_rejections
                    .get_or_create(&CodeLabel { code })
                    .inc();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deferral_classes_are_bounded() {
        let mut reg = Registry::default();
        let m = Metrics::register(&mut reg);
        for subject in 0..2000 {
            m.count_deferral(4, subject);
        }
        m.count_deferral(9, 1);
        let class = |c: &str| {
            m.deferrals
                .get_or_create(&StatusClassLabel { class: c.into() })
                .get()
        };
        assert_eq!(class("4.4"), 1);
        assert_eq!(class("4.7"), 1);
        assert_eq!(class("4.other"), 2000 - 8);
        assert_eq!(class("other"), 1);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &reg).unwrap();
        let series = text
            .lines()
            .filter(|l| l.starts_with("dimegate_deferrals_total{"))
            .count();
        assert_eq!(series, 10, "{text}");
    }

    #[test]
    fn rejections_are_counted_once_per_reply() {
        let mut reg = Registry::default();
        let m = Metrics::register(&mut reg);
        m.count_rejections(
            b"250 ok\r\n550-5.1.1 no\r\n550 5.1.1 no\r\n452 4.5.3 too many\r\n354 go\r\n",
        );
        assert_eq!(
            m.smtp_rejections
                .get_or_create(&CodeLabel { code: "550".into() })
                .get(),
            1
        );
        assert_eq!(
            m.smtp_rejections
                .get_or_create(&CodeLabel { code: "452".into() })
                .get(),
            1
        );
        assert_eq!(
            m.smtp_rejections
                .get_or_create(&CodeLabel { code: "250".into() })
                .get(),
            0
        );
    }
}
