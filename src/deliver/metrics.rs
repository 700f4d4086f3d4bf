//! Connection-pool metrics of delivery. Created with the [`super::Deliverer`] and registered into
//! the gateway's registry by [`super::Deliverer::register_metrics`]. Per-recipient results are
//! counted by the queue runner (`dimegate_deliveries`), not here.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Counters and gauges of outbound delivery. Cloning shares them.
#[derive(Clone, Default)]
pub(crate) struct DeliveryMetrics {
    pub(crate) connections_opened: Counter,
    pub(crate) connections_reused: Counter,
    pub(crate) transactions_pipelined: Counter,
    pub(crate) connections_idle: Gauge,
    pub(crate) deliveries_active: Gauge,
    /// TLS decisions per MX host: which policy, what it required (bounded label values).
    pub(crate) tls_policy: Family<TlsLabels, Counter>,
    /// TLS outcomes of new connections: policy and RFC 8460 result type (or `success`).
    pub(crate) tls_sessions: Family<TlsLabels, Counter>,
}

/// `policy` is a [`super::policy::PolicyKind`] label, `result` a fixed word: the label
/// cardinality is bounded by the code, never by the peer.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct TlsLabels {
    pub(crate) policy: &'static str,
    pub(crate) result: &'static str,
}

impl DeliveryMetrics {
    pub(crate) fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("dimegate");
        r.register(
            "delivery_connections_opened",
            "Outbound SMTP/LMTP connections opened",
            self.connections_opened.clone(),
        );
        r.register(
            "delivery_connections_reused",
            "Transactions sent on a pooled connection",
            self.connections_reused.clone(),
        );
        r.register(
            "delivery_transactions_pipelined",
            "Transactions sent with MAIL FROM and RCPT TO grouped (RFC 2920 PIPELINING)",
            self.transactions_pipelined.clone(),
        );
        r.register(
            "delivery_connections_idle",
            "Outbound connections idle in the pool now",
            self.connections_idle.clone(),
        );
        r.register(
            "delivery_active",
            "Deliveries holding a concurrency slot now",
            self.deliveries_active.clone(),
        );
        r.register(
            "tls_policy",
            "Outbound TLS decisions per MX host, by policy (dane, mta_sts, mta_sts_testing, \
             destination, none) and requirement (dane, webpki, encrypt_only, report_only, \
             opportunistic, disabled, refused; mx_bogus: a DNSSEC-bogus MX RRset)",
            self.tls_policy.clone(),
        );
        r.register(
            "tls_sessions",
            "Outbound connections by TLS policy and RFC 8460 result (success, \
             starttls-not-supported, certificate-*, validation-failure, ...)",
            self.tls_sessions.clone(),
        );
    }
}
