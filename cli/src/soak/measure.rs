//! What `chamfer soak` measures: searches during the ingest and in idle passes, recall@10, percentiles, the
//! server's counters, and the wait for background work to settle.
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use chamfer_client::ingest::{retrying, IngestOptions};
use chamfer_client::{Client, Query};
use chamfer_data::dataset::Dataset;
use chamfer_data::eval::{percentiles, recall_at_k};
use tokio::sync::watch;

use super::{K, MAX_ATTEMPTS, SETTLE_STABLE};

/// What the search worker measured.
#[derive(Debug, Default)]
pub(super) struct SearchLoad {
    pub(super) latencies_ms: Vec<f64>,
    pub(super) errors: u64,
    /// Searches in flight when the server was killed mid-ingest.
    pub(super) interrupted: u64,
    pub(super) first_error: Option<String>,
    pub(super) seconds: f64,
}

/// Sends `queries` (cycling) one at a time until `stop` is set, through the client `client` holds: `None` while
/// the server is being killed and restarted (the worker waits; a search that the kill interrupted is not an
/// error of the server's and is counted apart).
pub(super) async fn search_until(
    mut client: watch::Receiver<Option<Client>>,
    collection: String,
    queries: Arc<Vec<Query>>,
    stop: Arc<AtomicBool>,
) -> SearchLoad {
    let t0 = Instant::now();
    let mut out = SearchLoad::default();
    let mut j = 0;
    while !stop.load(Ordering::Relaxed) {
        let Some(c) = client.borrow_and_update().clone() else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let q = queries[j % queries.len()].clone();
        j += 1;
        let t = Instant::now();
        match c.search(collection.as_str(), q).await {
            Ok(_) => out.latencies_ms.push(t.elapsed().as_secs_f64() * 1e3),
            Err(_) if client.has_changed().unwrap_or(false) => out.interrupted += 1,
            Err(e) => {
                out.errors += 1;
                out.first_error.get_or_insert_with(|| e.to_string());
                // A failing server should not turn into a busy loop of failures.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    out.seconds = t0.elapsed().as_secs_f64();
    out
}

/// One pass: every query once, in order.
#[derive(Debug, Default)]
pub(super) struct Pass {
    /// Hit ids per query (empty for a failed query).
    pub(super) ids: Vec<Vec<String>>,
    pub(super) latencies_ms: Vec<f64>,
    pub(super) errors: u64,
    pub(super) first_error: Option<String>,
}

pub(super) async fn pass(client: &Client, collection: &str, queries: &[Query]) -> Pass {
    let mut p = Pass::default();
    for q in queries {
        let t = Instant::now();
        match client.search(collection, q.clone()).await {
            Ok(hits) => {
                p.latencies_ms.push(t.elapsed().as_secs_f64() * 1e3);
                p.ids.push(hits.into_iter().map(|h| h.id).collect());
            }
            Err(e) => {
                p.errors += 1;
                p.first_error.get_or_insert_with(|| e.to_string());
                p.ids.push(Vec::new());
            }
        }
    }
    p
}

/// Mean recall@10 of `ids` (one list per query, from query 0) against the ground truth.
pub(super) fn recall_at_10(
    ds: &Dataset,
    row_of: &HashMap<&str, usize>,
    ids: &[Vec<String>],
) -> Option<f64> {
    let recalls: Vec<f64> = ids
        .iter()
        .enumerate()
        .filter_map(|(j, got)| {
            let gt = ds.gt_ids(j)?;
            let rows: Vec<usize> = got
                .iter()
                .map(|id| row_of.get(id.as_str()).copied().unwrap_or(usize::MAX))
                .collect();
            Some(recall_at_k(&rows, gt, K as usize))
        })
        .collect();
    (!recalls.is_empty()).then(|| recalls.iter().sum::<f64>() / recalls.len() as f64)
}

/// Median and 99th percentile, or `None` without samples.
pub(super) fn p50_p99(v: &[f64]) -> (Option<f64>, Option<f64>) {
    if v.is_empty() {
        return (None, None);
    }
    let (a, b) = percentiles(v);
    (Some(a), Some(b))
}

/// The value of the first sample of metric `name` in Prometheus / OpenMetrics text (labels allowed).
pub(super) fn metric_value(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?;
        let rest = match rest.chars().next()? {
            ' ' => rest,
            '{' => &rest[rest.find('}')? + 1..],
            _ => return None,
        };
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// (flushed + compacted) / flushed: bytes of shard files written per byte flushed. `None` when a counter is
/// missing or nothing was flushed.
pub(super) fn write_amplification(flushed: Option<u64>, compacted: Option<u64>) -> Option<f64> {
    match (flushed, compacted) {
        (Some(f), Some(c)) if f > 0 => Some((f + c) as f64 / f as f64),
        _ => None,
    }
}

/// Flushes, then waits until the memtable is empty, no shard is stale (coded with an older codebook: they are
/// re-coded once writes stop) and the shard count has stayed the same for [`SETTLE_STABLE`] (flushing again
/// while the memtable is not empty). Returns the seconds waited and whether it settled within `timeout`.
pub(super) async fn settle(
    admin: &Client,
    collection: &str,
    timeout: Duration,
) -> anyhow::Result<(f64, bool)> {
    let t0 = Instant::now();
    let opts = IngestOptions {
        max_attempts: MAX_ATTEMPTS,
        ..IngestOptions::default()
    };
    let mut retries = 0;
    let mut last_shards = None;
    let mut stable_since = Instant::now();
    let mut memtable = None;
    loop {
        // Flushing only while documents wait in the memtable: a flush waits for background work in progress, and
        // the re-coding of stale shards gives way to it.
        if memtable != Some(0) {
            retrying(&opts, &mut retries, || admin.flush(collection))
                .await
                .context("flushing after the ingest")?;
        }
        let s = admin
            .describe_collection(collection)
            .await?
            .stats
            .unwrap_or_default();
        memtable = Some(s.memtable_documents);
        if last_shards != Some(s.shards) {
            last_shards = Some(s.shards);
            stable_since = Instant::now();
        }
        if s.memtable_documents == 0
            && s.stale_shards == 0
            && stable_since.elapsed() >= SETTLE_STABLE
        {
            return Ok((t0.elapsed().as_secs_f64(), true));
        }
        if t0.elapsed() >= timeout {
            return Ok((t0.elapsed().as_secs_f64(), false));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_values_are_read_with_and_without_labels() {
        let text = "# HELP chamfer_process_rss_anon_bytes x\n# TYPE chamfer_process_rss_anon_bytes gauge\n\
                    chamfer_process_rss_anon_bytes_total 1\nchamfer_process_rss_anon_bytes 12345\n";
        assert_eq!(
            metric_value(text, "chamfer_process_rss_anon_bytes"),
            Some(12345.0)
        );
        let text = "chamfer_process_rss_anon_bytes{pid=\"1 2\"} 7 1700000000\n";
        assert_eq!(
            metric_value(text, "chamfer_process_rss_anon_bytes"),
            Some(7.0)
        );
        assert_eq!(
            metric_value("other 1\n", "chamfer_process_rss_anon_bytes"),
            None
        );
    }

    #[test]
    fn write_amplification_needs_both_counters_and_a_flush() {
        assert_eq!(write_amplification(Some(100), Some(150)), Some(2.5));
        assert_eq!(write_amplification(Some(100), Some(0)), Some(1.0));
        assert_eq!(write_amplification(Some(0), Some(10)), None);
        assert_eq!(write_amplification(None, Some(10)), None);
        assert_eq!(write_amplification(Some(10), None), None);
    }
}
