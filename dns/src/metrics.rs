//! Prometheus metrics of the DNS server (prefix `meridian_dns_`).
//!
//! Queries are counted by type, response code and transport. Messages too malformed to
//! reach the handler (shorter than a header, or rejected by the parser with FORMERR) are
//! answered or dropped by hickory's server before the handler, and are not counted.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hickory_server::net::xfer::Protocol;
use hickory_server::proto::op::ResponseCode;
use hickory_server::proto::rr::RecordType;
use meridian_api::subscription::Status;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Labels of `meridian_dns_queries_total`; every value is from a small fixed set.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueryLabels {
    /// Query type (`A`, `AAAA`, `SRV`, …; `Unknown` for unassigned types, `none` if absent).
    qtype: &'static str,
    /// Response code as dig prints it (`NOERROR`, `NXDOMAIN`, …).
    rcode: &'static str,
    /// `udp` or `tcp`.
    protocol: &'static str,
}

/// The server's metrics and the registry they are exposed from.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    queries: Family<QueryLabels, Counter>,
    answer_cache_hits: Counter,
    snapshot_version: Gauge<u64, AtomicU64>,
    snapshot_age: Gauge<f64, AtomicU64>,
    snapshot_updates: Counter,
    zone_records: Gauge,
    skipped_entries: Gauge,
    controller_connected: Gauge,
    /// Connections the admin server closed.
    pub admin: meridian_api::admin::AdminMetrics,
    /// When the served snapshot took effect, in milliseconds since the epoch (0: never).
    applied_at_ms: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("meridian_dns");
        let queries = Family::<QueryLabels, Counter>::default();
        registry.register(
            "queries",
            "DNS queries answered, by query type, response code and transport",
            queries.clone(),
        );
        let answer_cache_hits = Counter::default();
        registry.register(
            "answer_cache_hits",
            "UDP queries answered from a socket's cache of encoded answers (also counted in queries)",
            answer_cache_hits.clone(),
        );
        // The same type as the controller's `meridian_snapshot_version` (a content hash), so
        // the two can be compared; 0 means none yet.
        let snapshot_version = Gauge::<u64, AtomicU64>::default();
        registry.register(
            "snapshot_version",
            "Version of the snapshot the zones are built from (0 before the first)",
            snapshot_version.clone(),
        );
        let snapshot_age = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "snapshot_age_seconds",
            "Seconds since the served snapshot took effect (-1 before the first)",
            snapshot_age.clone(),
        );
        let snapshot_updates = Counter::default();
        registry.register(
            "snapshot_updates",
            "Snapshots applied to the served zones",
            snapshot_updates.clone(),
        );
        let zone_records = Gauge::default();
        registry.register(
            "zone_records",
            "Records served, over all zones",
            zone_records.clone(),
        );
        let skipped_entries = Gauge::default();
        registry.register(
            "snapshot_skipped_entries",
            "Entries of the served snapshot left out of the zones (invalid names or VIPs)",
            skipped_entries.clone(),
        );
        let controller_connected = Gauge::default();
        registry.register(
            "controller_connected",
            "1 while the snapshot stream from the controller is open",
            controller_connected.clone(),
        );
        let admin = meridian_api::admin::AdminMetrics::default();
        admin.register(&mut registry);
        Self {
            registry,
            admin,
            queries,
            answer_cache_hits,
            snapshot_version,
            snapshot_age,
            snapshot_updates,
            zone_records,
            skipped_entries,
            controller_connected,
            applied_at_ms: AtomicU64::new(0),
        }
    }

    /// Counts one answered query.
    pub fn query(&self, qtype: Option<RecordType>, rcode: ResponseCode, protocol: Protocol) {
        let labels = QueryLabels {
            qtype: qtype.map_or("none", <&'static str>::from),
            rcode: rcode_label(rcode),
            protocol: match protocol {
                Protocol::Udp => "udp",
                Protocol::Tcp => "tcp",
                _ => "other",
            },
        };
        self.queries.get_or_create(&labels).inc();
    }

    /// Counts one UDP query answered from the answer cache.
    pub fn answer_cache_hit(&self) {
        self.answer_cache_hits.inc();
    }

    /// Records that the zones of snapshot `version` are now served.
    pub fn snapshot_applied(&self, version: u64, records: usize, skipped: usize) {
        self.snapshot_version.set(version);
        self.zone_records
            .set(i64::try_from(records).unwrap_or(i64::MAX));
        self.skipped_entries
            .set(i64::try_from(skipped).unwrap_or(i64::MAX));
        self.snapshot_updates.inc();
        self.applied_at_ms
            .store(unix_ms(SystemTime::now()), Ordering::Relaxed);
    }

    /// Renders the metrics in the Prometheus/OpenMetrics text format, refreshing the values
    /// that depend on the time of the scrape and on the subscription's `status`.
    pub fn encode(&self, status: &Status) -> Result<String, std::fmt::Error> {
        self.controller_connected.set(i64::from(status.connected));
        let applied = self.applied_at_ms.load(Ordering::Relaxed);
        let age = if applied == 0 {
            -1.0
        } else {
            Duration::from_millis(unix_ms(SystemTime::now()).saturating_sub(applied)).as_secs_f64()
        };
        self.snapshot_age.set(age);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

fn unix_ms(time: SystemTime) -> u64 {
    let since_epoch = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX)
}

/// Response codes as dig prints them; the rare extended codes share one label.
fn rcode_label(rcode: ResponseCode) -> &'static str {
    match rcode {
        ResponseCode::NoError => "NOERROR",
        ResponseCode::FormErr => "FORMERR",
        ResponseCode::ServFail => "SERVFAIL",
        ResponseCode::NXDomain => "NXDOMAIN",
        ResponseCode::NotImp => "NOTIMP",
        ResponseCode::Refused => "REFUSED",
        ResponseCode::NotAuth => "NOTAUTH",
        ResponseCode::BADVERS => "BADVERS",
        _ => "OTHER",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_queries_and_reports_the_snapshot() {
        let metrics = Metrics::new();
        let before = metrics.encode(&Status::default()).unwrap();
        assert!(
            before.contains("meridian_dns_snapshot_version 0"),
            "{before}"
        );
        assert!(
            before.contains("meridian_dns_snapshot_age_seconds -1"),
            "{before}"
        );

        metrics.query(Some(RecordType::A), ResponseCode::NoError, Protocol::Udp);
        metrics.query(Some(RecordType::A), ResponseCode::NoError, Protocol::Udp);
        metrics.query(Some(RecordType::SRV), ResponseCode::NXDomain, Protocol::Tcp);
        metrics.query(None, ResponseCode::FormErr, Protocol::Udp);
        // Controller versions are content hashes: the whole u64 range.
        metrics.snapshot_applied(10_146_691_460_553_791_713, 12, 1);
        let status = Status {
            connected: true,
            ..Status::default()
        };
        let text = metrics.encode(&status).unwrap();
        for line in [
            r#"meridian_dns_queries_total{qtype="A",rcode="NOERROR",protocol="udp"} 2"#,
            r#"meridian_dns_queries_total{qtype="SRV",rcode="NXDOMAIN",protocol="tcp"} 1"#,
            r#"meridian_dns_queries_total{qtype="none",rcode="FORMERR",protocol="udp"} 1"#,
            "meridian_dns_snapshot_version 10146691460553791713",
            "meridian_dns_zone_records 12",
            "meridian_dns_snapshot_skipped_entries 1",
            "meridian_dns_snapshot_updates_total 1",
            "meridian_dns_controller_connected 1",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        let age: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix("meridian_dns_snapshot_age_seconds "))
            .and_then(|v| v.parse().ok())
            .expect("age");
        assert!(age >= 0.0, "{age}");
    }
}
