//! Prometheus metrics: request counts (by operation, protocol and outcome code) and latency histograms (by
//! operation and protocol), plus per-collection gauges (documents, shards, memtable, tombstones, WAL bytes),
//! readiness and CPU-pool counters read from the core at scrape time.
//!
//! Built on `prometheus-client` (rather than `metrics` + `metrics-exporter-prometheus`): its registry is a value
//! owned by one server, not a process-wide recorder, so several servers in one process (the tests) keep
//! separate counts; label sets are typed structs; and the scrape-time gauges are a [`Collector`] that reads the
//! core's published snapshots, so a scrape never waits for a collection's sequencer. The output is the
//! OpenMetrics text format ([`CONTENT_TYPE`]), which Prometheus scrapes natively.
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{text, DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::core::collection::Stats;
use crate::core::pool::PoolStats;
use crate::core::{Core, Health};
use crate::error::ServiceError;
#[cfg(test)]
use crate::net::NetStats;
use crate::net::{ListenerStats, Net};

/// The `Content-Type` of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Upper bounds (seconds) of the latency buckets.
const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The protocol a request came in on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Proto {
    /// gRPC (label `grpc`).
    Grpc,
    /// REST (label `rest`).
    Rest,
}

impl Proto {
    fn name(self) -> &'static str {
        match self {
            Proto::Grpc => "grpc",
            Proto::Rest => "rest",
        }
    }
}

/// Labels of `chamfer_requests_total` (in this order on the wire).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    op: &'static str,
    protocol: &'static str,
    code: &'static str,
}

/// Labels of `chamfer_request_duration_seconds`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LatencyLabels {
    op: &'static str,
    protocol: &'static str,
}

fn latency_histogram() -> Histogram {
    Histogram::new(BUCKETS)
}

type LatencyFamily = Family<LatencyLabels, Histogram, fn() -> Histogram>;

/// The metrics registry, shared by both adapters.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: LatencyFamily,
}

impl Default for Metrics {
    fn default() -> Self {
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = LatencyFamily::new_with_constructor(latency_histogram);
        let mut registry = Registry::default();
        // (prometheus-client appends the final period of every help text.)
        registry.register(
            "chamfer_requests",
            "Requests by operation, protocol and outcome code",
            requests.clone(),
        );
        registry.register(
            "chamfer_request_duration_seconds",
            "Request latency by operation and protocol",
            latency.clone(),
        );
        Metrics {
            registry,
            requests,
            latency,
        }
    }
}

impl Metrics {
    /// Adds the connection table's and the request memory budget's series (read at each scrape).
    pub fn register_net(&mut self, net: Arc<Net>) {
        self.registry
            .register_collector(Box::new(NetGauges(NetSource::Live(net))));
    }

    /// Runs `fut` as operation `op`, counting its outcome and timing it.
    pub async fn observe<T>(
        &self,
        op: &'static str,
        proto: Proto,
        fut: impl Future<Output = Result<T, ServiceError>>,
    ) -> Result<T, ServiceError> {
        let start = Instant::now();
        let r = fut.await;
        let code = match &r {
            Ok(_) => "ok",
            Err(e) => e.status().code,
        };
        self.record(op, proto, code, start.elapsed().as_secs_f64());
        r
    }

    /// Records one finished request.
    pub fn record(&self, op: &'static str, proto: Proto, code: &'static str, seconds: f64) {
        let protocol = proto.name();
        self.requests
            .get_or_create(&RequestLabels { op, protocol, code })
            .inc();
        self.latency
            .get_or_create(&LatencyLabels { op, protocol })
            .observe(seconds);
    }

    /// The text exposition (OpenMetrics), with the core's gauges.
    pub fn render(&self, core: &Core) -> String {
        let mut scrape = Registry::default();
        scrape.register_collector(Box::new(CoreGauges {
            stats: core.stats(),
            health: core.health(),
            pool: core.pool_stats(),
            rss_anon: rss_anon_bytes(None),
        }));
        let mut out = String::new();
        // Writing into a String cannot fail, and every value here encodes.
        let _ = text::encode_registry(&mut out, &self.registry)
            .and_then(|()| text::encode_registry(&mut out, &scrape))
            .and_then(|()| text::encode_eof(&mut out));
        out
    }
}

/// A per-collection gauge: name, help, getter.
type Gauge = (&'static str, &'static str, fn(&Stats) -> u64);

const COLLECTION_GAUGES: [Gauge; 8] = [
    ("chamfer_documents", "Live documents", |s| s.documents),
    ("chamfer_shards", "Immutable shards on disk", |s| s.shards),
    (
        "chamfer_memtable_documents",
        "Live documents not yet flushed into a shard",
        |s| s.memtable_documents,
    ),
    (
        "chamfer_tombstones",
        "Deleted or overwritten documents awaiting compaction",
        |s| s.tombstones,
    ),
    (
        "chamfer_wal_bytes",
        "Bytes of write-ahead log on disk",
        |s| s.wal_bytes,
    ),
    (
        "chamfer_codebook_centroids",
        "Centroids of the collection codebook (0 before the first flush)",
        |s| s.codebook_centroids,
    ),
    (
        "chamfer_flushed_bytes",
        "Bytes of shard files written by flushes over the collection's life",
        |s| s.flushed_bytes,
    ),
    (
        "chamfer_compacted_bytes",
        "Bytes of shard files written by compactions over the collection's life",
        |s| s.compacted_bytes,
    ),
];

/// RssAnon of process `pid`, or of this process for `None` (bytes, from /proc/PID/status): its own memory,
/// without mapped file pages (shard files), which belong to the page cache. None where /proc is not available.
pub fn rss_anon_bytes(pid: Option<u32>) -> Option<u64> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/status"),
        None => "/proc/self/status".to_string(),
    };
    let status = std::fs::read_to_string(path).ok()?;
    let line = status.lines().find(|l| l.starts_with("RssAnon:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// The core's state at one scrape, encoded as gauges and counters.
#[derive(Debug)]
struct CoreGauges {
    stats: Vec<(String, Stats)>,
    health: Health,
    pool: PoolStats,
    rss_anon: Option<u64>,
}

impl Collector for CoreGauges {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for (name, help, get) in COLLECTION_GAUGES {
            let mut m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for (coll, s) in &self.stats {
                ConstGauge::new(get(s))
                    .encode(m.encode_family(&[("collection", coll.as_str())])?)?;
            }
        }
        if let Some(rss) = self.rss_anon {
            let m = enc.encode_descriptor(
                "chamfer_process_rss_anon_bytes",
                "Anonymous resident memory of the server process (RssAnon: without mapped shard files)",
                None,
                MetricType::Gauge,
            )?;
            ConstGauge::new(rss).encode(m)?;
        }
        let m = enc.encode_descriptor(
            "chamfer_collections",
            "Collections",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(self.stats.len() as u64).encode(m)?;
        let m = enc.encode_descriptor(
            "chamfer_ready",
            "1 when the server is ready (see /readyz for the reason when not)",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(u64::from(self.health.ready)).encode(m)?;
        for (name, help, list) in [
            (
                "chamfer_collection_unavailable",
                "Collections that cannot serve (damaged), by name",
                &self.health.unavailable,
            ),
            (
                "chamfer_storage_full",
                "1 for a collection whose writes fail for lack of disk space",
                &self.health.storage_full,
            ),
        ] {
            let mut m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for (coll, _) in list {
                ConstGauge::new(1u64).encode(m.encode_family(&[("collection", coll.as_str())])?)?;
            }
        }
        let mut m = enc.encode_descriptor(
            "chamfer_cpu_tasks",
            "CPU-pool tasks by outcome: executed, or skipped unstarted because their request was cancelled \
             (deadline passed, client gone, sibling task failed)",
            None,
            MetricType::Counter,
        )?;
        for (state, n) in [
            ("executed", self.pool.executed),
            ("skipped", self.pool.skipped),
        ] {
            ConstCounter::new(n).encode(m.encode_family(&[("state", state)])?)?;
        }
        let m = enc.encode_descriptor(
            "chamfer_cpu_tasks_queued",
            "CPU-pool tasks waiting now",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(self.pool.queued).encode(m)?;
        Ok(())
    }
}

/// Where [`NetGauges`] reads its counts.
#[derive(Debug)]
enum NetSource {
    Live(Arc<Net>),
    #[cfg(test)]
    Fixed(NetStats),
}

/// The connection table's and the memory budget's series (`crate::net`), read at each scrape:
///
/// | series | type | labels |
/// |---|---|---|
/// | `chamfer_connections_max` | gauge | |
/// | `chamfer_connections_active` | gauge | `protocol` |
/// | `chamfer_connections_accepted_total`, `_refused_total`, `_evicted_total` | counter | `protocol` |
/// | `chamfer_connections_timed_out_total` | counter | `protocol`, `reason` (`header`, `body`, `idle`, `write`) |
/// | `chamfer_connection_accept_errors_total` | counter | `protocol` |
/// | `chamfer_requests_in_flight` | gauge | `protocol` |
/// | `chamfer_request_memory_bytes`, `chamfer_request_memory_limit_bytes` | gauge | |
/// | `chamfer_request_memory_refused_total` | counter | `protocol` |
#[derive(Debug)]
struct NetGauges(NetSource);

impl Collector for NetGauges {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = match &self.0 {
            NetSource::Live(net) => net.stats(),
            #[cfg(test)]
            NetSource::Fixed(s) => *s,
        };
        let both = [(Proto::Rest, &s.rest), (Proto::Grpc, &s.grpc)];
        let per = |enc: &mut DescriptorEncoder,
                   name: &str,
                   help: &str,
                   kind: MetricType,
                   get: fn(&ListenerStats) -> u64|
         -> Result<(), std::fmt::Error> {
            let mut m = enc.encode_descriptor(name, help, None, kind)?;
            for (proto, l) in both {
                let labels = [("protocol", proto.name())];
                if kind == MetricType::Counter {
                    ConstCounter::new(get(l)).encode(m.encode_family(&labels)?)?;
                } else {
                    ConstGauge::new(get(l)).encode(m.encode_family(&labels)?)?;
                }
            }
            Ok(())
        };
        let m = enc.encode_descriptor(
            "chamfer_connections_max",
            "The cap on open connections, both listeners together (limits.max_connections)",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(s.max_connections).encode(m)?;
        per(
            &mut enc,
            "chamfer_connections_active",
            "Open connections (closing ones until their socket is closed)",
            MetricType::Gauge,
            |l| l.active,
        )?;
        per(
            &mut enc,
            "chamfer_connections_accepted",
            "Connections accepted",
            MetricType::Counter,
            |l| l.accepted,
        )?;
        per(
            &mut enc,
            "chamfer_connections_refused",
            "Connections refused at the cap because none could be evicted (HTTP: 503)",
            MetricType::Counter,
            |l| l.refused,
        )?;
        per(
            &mut enc,
            "chamfer_connections_evicted",
            "Connections closed to make room: the one waiting on its client longest",
            MetricType::Counter,
            |l| l.evicted,
        )?;
        let mut m = enc.encode_descriptor(
            "chamfer_connections_timed_out",
            "Connections closed, or request bodies failed (body), because the client was too slow",
            None,
            MetricType::Counter,
        )?;
        for (proto, l) in both {
            for (reason, n) in [
                ("header", l.timed_out_header),
                ("body", l.timed_out_body),
                ("idle", l.timed_out_idle),
                ("write", l.timed_out_write),
            ] {
                ConstCounter::new(n)
                    .encode(m.encode_family(&[("protocol", proto.name()), ("reason", reason)])?)?;
            }
        }
        per(
            &mut enc,
            "chamfer_connection_accept_errors",
            "Failed accepts (e.g. out of file descriptors); each closes the longest-waiting connection",
            MetricType::Counter,
            |l| l.accept_errors,
        )?;
        per(
            &mut enc,
            "chamfer_requests_in_flight",
            "Requests being received, processed or answered",
            MetricType::Gauge,
            |l| l.in_flight,
        )?;
        let m = enc.encode_descriptor(
            "chamfer_request_memory_bytes",
            "Request body bytes reserved now against the budget",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(s.memory_in_use).encode(m)?;
        let m = enc.encode_descriptor(
            "chamfer_request_memory_limit_bytes",
            "The request memory budget (limits.request_memory_bytes)",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(s.memory_limit).encode(m)?;
        per(
            &mut enc,
            "chamfer_request_memory_refused",
            "Requests refused because the request memory budget was full (429 / RESOURCE_EXHAUSTED)",
            MetricType::Counter,
            |l| l.memory_refused,
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every series name and label set that dashboards, tests and deploy/smoke.sh rely on, in valid
    /// OpenMetrics text (each sample after its family's TYPE line, one EOF at the end).
    #[test]
    fn requests_and_latency_keep_their_names_and_labels() {
        let m = Metrics::default();
        m.record("search", Proto::Grpc, "ok", 0.003);
        m.record("search", Proto::Grpc, "ok", 20.0);
        let mut out = String::new();
        text::encode_registry(&mut out, &m.registry).unwrap();
        for needle in [
            "# TYPE chamfer_requests counter",
            "chamfer_requests_total{op=\"search\",protocol=\"grpc\",code=\"ok\"} 2",
            "# TYPE chamfer_request_duration_seconds histogram",
            "chamfer_request_duration_seconds_bucket{le=\"0.0025\",op=\"search\",protocol=\"grpc\"} 0",
            "chamfer_request_duration_seconds_bucket{le=\"0.005\",op=\"search\",protocol=\"grpc\"} 1",
            "chamfer_request_duration_seconds_bucket{le=\"+Inf\",op=\"search\",protocol=\"grpc\"} 2",
            "chamfer_request_duration_seconds_count{op=\"search\",protocol=\"grpc\"} 2",
        ] {
            assert!(out.contains(needle), "{needle:?} missing from\n{out}");
        }
    }

    #[test]
    fn core_gauges_encode_every_series() {
        let g = CoreGauges {
            stats: vec![(
                "c".into(),
                Stats {
                    documents: 300,
                    wal_bytes: 7,
                    ..Stats::default()
                },
            )],
            health: Health {
                ready: true,
                unavailable: vec![("bad".into(), "why".into())],
                ..Health::default()
            },
            pool: PoolStats {
                executed: 5,
                ..PoolStats::default()
            },
            rss_anon: Some(4096),
        };
        let mut r = Registry::default();
        r.register_collector(Box::new(g));
        let mut out = String::new();
        text::encode(&mut out, &r).unwrap();
        for needle in [
            "chamfer_documents{collection=\"c\"} 300",
            "chamfer_wal_bytes{collection=\"c\"} 7",
            "chamfer_collections 1",
            "chamfer_ready 1",
            "chamfer_collection_unavailable{collection=\"bad\"} 1",
            "# TYPE chamfer_storage_full gauge",
            "chamfer_cpu_tasks_total{state=\"executed\"} 5",
            "chamfer_cpu_tasks_total{state=\"skipped\"} 0",
            "chamfer_cpu_tasks_queued 0",
            "chamfer_process_rss_anon_bytes 4096",
            "chamfer_flushed_bytes{collection=\"c\"} 0",
        ] {
            assert!(out.contains(needle), "{needle:?} missing from\n{out}");
        }
        assert!(out.ends_with("# EOF\n"));
    }

    #[test]
    fn connection_and_memory_series_keep_their_names_and_labels() {
        let stats = NetStats {
            max_connections: 64,
            rest: ListenerStats {
                accepted: 5,
                evicted: 2,
                timed_out_header: 1,
                ..ListenerStats::default()
            },
            grpc: ListenerStats {
                refused: 3,
                timed_out_body: 4,
                memory_refused: 6,
                active: 7,
                ..ListenerStats::default()
            },
            memory_in_use: 100,
            memory_limit: 1000,
        };
        let mut r = Registry::default();
        r.register_collector(Box::new(NetGauges(NetSource::Fixed(stats))));
        let mut out = String::new();
        text::encode(&mut out, &r).unwrap();
        for needle in [
            "chamfer_connections_max 64",
            "chamfer_connections_active{protocol=\"grpc\"} 7",
            "chamfer_connections_accepted_total{protocol=\"rest\"} 5",
            "chamfer_connections_refused_total{protocol=\"grpc\"} 3",
            "chamfer_connections_evicted_total{protocol=\"rest\"} 2",
            "chamfer_connections_timed_out_total{protocol=\"rest\",reason=\"header\"} 1",
            "chamfer_connections_timed_out_total{protocol=\"grpc\",reason=\"body\"} 4",
            "chamfer_connections_timed_out_total{protocol=\"grpc\",reason=\"idle\"} 0",
            "chamfer_connection_accept_errors_total{protocol=\"rest\"} 0",
            "chamfer_requests_in_flight{protocol=\"rest\"} 0",
            "chamfer_request_memory_bytes 100",
            "chamfer_request_memory_limit_bytes 1000",
            "chamfer_request_memory_refused_total{protocol=\"grpc\"} 6",
        ] {
            assert!(out.contains(needle), "{needle:?} missing from\n{out}");
        }
    }
}
