//! Prometheus metrics: request counts (by operation, protocol and outcome code) and latency histograms (by
//! operation and protocol), plus per-collection gauges (documents, shards, memtable, tombstones, WAL bytes)
//! read from the core at scrape time.
//!
//! Hand-written text exposition (format 0.0.4): a dozen atomics per operation do not justify a metrics crate.
use std::collections::BTreeMap;
use std::fmt::Write;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use crate::core::Core;
use crate::error::ServiceError;

/// Upper bounds (seconds) of the latency buckets.
const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A per-collection gauge: name, help, getter.
type Gauge = (
    &'static str,
    &'static str,
    fn(&crate::core::collection::Stats) -> u64,
);

/// The protocol a request came in on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Proto {
    Grpc,
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

#[derive(Default)]
struct Histogram {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

/// The metrics registry, shared by both adapters.
#[derive(Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(&'static str, Proto, &'static str), u64>>,
    latency: Mutex<BTreeMap<(&'static str, Proto), &'static Histogram>>,
}

impl Metrics {
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
        *self
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry((op, proto, code))
            .or_default() += 1;
        let h: &'static Histogram = self
            .latency
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry((op, proto))
            // One small allocation per (operation, protocol) pair for the process's lifetime.
            .or_insert_with(|| Box::leak(Box::default()));
        for (i, &b) in BUCKETS.iter().enumerate() {
            if seconds <= b {
                h.buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        h.count.fetch_add(1, Ordering::Relaxed);
        h.sum_nanos
            .fetch_add((seconds * 1e9) as u64, Ordering::Relaxed);
    }

    /// The text exposition, with the core's gauges.
    pub fn render(&self, core: &Core) -> String {
        let mut out = String::new();
        out.push_str(
            "# HELP chamfer_requests_total Requests by operation, protocol and outcome code.\n",
        );
        out.push_str("# TYPE chamfer_requests_total counter\n");
        for ((op, proto, code), n) in self
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "chamfer_requests_total{{op=\"{op}\",protocol=\"{}\",code=\"{code}\"}} {n}",
                proto.name()
            );
        }
        out.push_str(
            "# HELP chamfer_request_duration_seconds Request latency by operation and protocol.\n",
        );
        out.push_str("# TYPE chamfer_request_duration_seconds histogram\n");
        for ((op, proto), h) in self
            .latency
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let labels = format!("op=\"{op}\",protocol=\"{}\"", proto.name());
            for (i, b) in BUCKETS.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "chamfer_request_duration_seconds_bucket{{{labels},le=\"{b}\"}} {}",
                    h.buckets[i].load(Ordering::Relaxed)
                );
            }
            let count = h.count.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "chamfer_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {count}"
            );
            let _ = writeln!(
                out,
                "chamfer_request_duration_seconds_sum{{{labels}}} {}",
                h.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9
            );
            let _ = writeln!(
                out,
                "chamfer_request_duration_seconds_count{{{labels}}} {count}"
            );
        }
        let stats = core.stats();
        let gauges: [Gauge; 5] = [
            ("chamfer_documents", "Live documents.", |s| s.documents),
            ("chamfer_shards", "Immutable shards on disk.", |s| s.shards),
            (
                "chamfer_memtable_documents",
                "Live documents not yet flushed into a shard.",
                |s| s.memtable_documents,
            ),
            (
                "chamfer_tombstones",
                "Deleted or overwritten documents awaiting compaction.",
                |s| s.tombstones,
            ),
            (
                "chamfer_wal_bytes",
                "Bytes of write-ahead log on disk.",
                |s| s.wal_bytes,
            ),
        ];
        for (name, help, get) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
            for (coll, s) in &stats {
                let _ = writeln!(out, "{name}{{collection=\"{coll}\"}} {}", get(s));
            }
        }
        let _ = writeln!(
            out,
            "# HELP chamfer_collections Collections.\n# TYPE chamfer_collections gauge\nchamfer_collections {}",
            stats.len()
        );
        let h = core.health();
        let _ = writeln!(
            out,
            "# HELP chamfer_ready 1 when the server is ready (see /readyz for the reason when not).\n# TYPE chamfer_ready gauge\nchamfer_ready {}",
            u8::from(h.ready)
        );
        let _ = writeln!(
            out,
            "# HELP chamfer_collection_unavailable Collections that cannot serve (damaged), by name.\n# TYPE chamfer_collection_unavailable gauge"
        );
        for (coll, _) in &h.unavailable {
            let _ = writeln!(
                out,
                "chamfer_collection_unavailable{{collection=\"{coll}\"}} 1"
            );
        }
        let _ = writeln!(
            out,
            "# HELP chamfer_storage_full 1 for a collection whose writes fail for lack of disk space.\n# TYPE chamfer_storage_full gauge"
        );
        for (coll, _) in &h.storage_full {
            let _ = writeln!(out, "chamfer_storage_full{{collection=\"{coll}\"}} 1");
        }
        let pool = core.pool_stats();
        let _ = writeln!(
            out,
            "# HELP chamfer_cpu_tasks_total CPU-pool tasks by outcome: executed, or skipped unstarted because \
             their request was cancelled (deadline passed, client gone, sibling task failed).\n\
             # TYPE chamfer_cpu_tasks_total counter\n\
             chamfer_cpu_tasks_total{{state=\"executed\"}} {}\n\
             chamfer_cpu_tasks_total{{state=\"skipped\"}} {}\n\
             # HELP chamfer_cpu_tasks_queued CPU-pool tasks waiting now.\n\
             # TYPE chamfer_cpu_tasks_queued gauge\nchamfer_cpu_tasks_queued {}",
            pool.executed, pool.skipped, pool.queued
        );
        out
    }
}
