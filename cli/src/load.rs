//! `chamfer load`: a closed-loop load generator over gRPC or REST that also checks the answers.
//!
//! With `--ingest` it first creates the collection and uploads the data set's documents (skipping those already
//! stored; read from disk a batch at a time, f16 sent as f16, so memory stays bounded whatever the corpus's
//! size), then flushes and compacts (one shard, like the in-process `chamfer bench` index). The queries, ground
//! truth and document ids are all it holds of the data set. A warm-up pass sends every query once and scores it
//! against the data set's exact ground truth (`recall_at_10`), so the network path is checked for correctness
//! too; then `--concurrency` workers send the queries (cycling) for `--duration` seconds or `--max-requests`
//! requests, whichever comes first. Every timed answer is compared with the warm-up
//! answer of the same query (`inconsistent` counts differences). The LAST stdout line is one JSON object (with
//! the ingest's `ingest_docs_per_s` and this process's peak resident memory, `client_peak_rss_bytes`).
//!
//! Traffic only goes to loopback addresses: this is a benchmark tool, not a way to load someone else's server.
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use chamfer_client::rest::Method;
use chamfer_client::{Client, Query, RestClient, Vectors};
use chamfer_data::dataset::Dataset;
use chamfer_data::eval::{percentiles, recall_at_k};
use clap::Args;
use serde_json::{json, Value};

use super::client::{add_knobs, ingest, ingest_json, IngestOpts, KnobArgs, Source};
use super::params::peak_rss_bytes;

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["grpc", "http"])))]
pub(crate) struct LoadCmd {
    /// gRPC address of the server (host:port or http://host:port; loopback only).
    #[arg(long)]
    grpc: Option<String>,
    /// HTTP address of the server (host:port or http://host:port; loopback only).
    #[arg(long)]
    http: Option<String>,
    /// Data set folder: queries, ground truth (and documents with --ingest, read a batch at a time).
    #[arg(long)]
    data: std::path::PathBuf,
    /// Create the collection and upload the documents first (skips stored ids), then flush and compact.
    #[arg(long)]
    ingest: bool,
    /// Collection (default: the data set folder's name).
    #[arg(long)]
    collection: Option<String>,
    /// Requests in flight (closed loop: each worker sends its next query when the previous one is answered).
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    /// Seconds of timed load (at most 3600).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Stop after this many timed requests even if the duration has not passed.
    #[arg(long, default_value_t = 1_000_000)]
    max_requests: u64,
    /// Results per query (recall is measured at 10).
    #[arg(long, default_value_t = 10)]
    k: u32,
    /// Knobs sent with every query (default: the server's).
    #[command(flatten)]
    knobs: KnobArgs,
    /// API key, when the server has one.
    #[arg(long, env = "CHAMFER_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
}

#[allow(clippy::large_enum_variant)] // one per run
enum Target {
    Grpc(Client),
    Http(RestClient),
}

/// One worker's connection.
#[allow(clippy::large_enum_variant)] // one per worker
enum Conn {
    Grpc(Client, String),
    Http(RestClient, String),
}

/// Pre-encoded requests, one per query.
struct Requests {
    grpc: Vec<Query>,
    http: Vec<Bytes>,
}

impl Conn {
    async fn search(&mut self, reqs: &Requests, j: usize) -> anyhow::Result<Vec<String>> {
        match self {
            Conn::Grpc(c, coll) => Ok(c
                .search(coll.as_str(), reqs.grpc[j].clone())
                .await?
                .into_iter()
                .map(|h| h.id)
                .collect()),
            Conn::Http(c, path) => {
                let r = c
                    .send(
                        Method::POST,
                        path,
                        Some(reqs.http[j].clone()),
                        Some("application/json"),
                        &[],
                    )
                    .await?;
                if r.status != 200 {
                    bail!("HTTP {}: {}", r.status, String::from_utf8_lossy(&r.body));
                }
                let v: Value = serde_json::from_slice(&r.body)?;
                let hits = v["hits"].as_array().context("no hits in the answer")?;
                Ok(hits
                    .iter()
                    .map(|h| h["id"].as_str().unwrap_or_default().to_string())
                    .collect())
            }
        }
    }
}

/// Resolves `host:port`; IP literals and `localhost` never touch the system resolver (a static glibc binary in a
/// `FROM scratch` image has no NSS modules).
fn resolve(host: &str, port: u16) -> anyhow::Result<Vec<SocketAddr>> {
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    if host.eq_ignore_ascii_case("localhost") {
        return Ok(vec![SocketAddr::from(([127, 0, 0, 1], port))]);
    }
    let v: Vec<SocketAddr> = std::net::ToSocketAddrs::to_socket_addrs(&(host, port))
        .with_context(|| format!("cannot resolve {host}"))?
        .collect();
    if v.is_empty() {
        bail!("{host} resolves to no address");
    }
    Ok(v)
}

fn loopback(addr: &str) -> anyhow::Result<(SocketAddr, String)> {
    let hostport = addr
        .strip_prefix("http://")
        .unwrap_or(addr)
        .trim_end_matches('/');
    let (host, port) = hostport
        .rsplit_once(':')
        .with_context(|| format!("{addr}: expected host:port"))?;
    let port: u16 = port.parse().with_context(|| format!("{addr}: bad port"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let sa = resolve(host, port)?
        .into_iter()
        .next()
        .context("no address")?;
    if !sa.ip().is_loopback() {
        bail!("{addr}: chamfer load only targets loopback addresses (127.0.0.0/8, ::1), got {sa}");
    }
    Ok((sa, format!("http://{sa}")))
}

impl LoadCmd {
    pub(crate) fn run(self) -> anyhow::Result<()> {
        if !(self.duration > 0.0 && self.duration <= 3600.0) {
            bail!("--duration must be in (0, 3600] seconds");
        }
        if self.concurrency == 0 || self.concurrency > 1024 {
            bail!("--concurrency must be in 1..=1024");
        }
        // Queries, ground truth and document ids; the documents are streamed by --ingest.
        let ds = Dataset::open_for_queries(&self.data)?;
        if ds.n_queries() == 0 {
            bail!("{}: no queries", self.data.display());
        }
        let collection = self.collection.clone().unwrap_or_else(|| ds.name());
        // Two threads: the workers are I/O-bound and the server needs the cores.
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        rt.block_on(self.run_async(ds, collection))
    }

    async fn run_async(self, data: Dataset, collection: String) -> anyhow::Result<()> {
        let (target, protocol) = match (&self.grpc, &self.http) {
            (Some(a), _) => {
                let (_, url) = loopback(a)?;
                let c = Client::builder(url)
                    .api_key_opt(self.api_key.clone())
                    .connect_timeout(Duration::from_secs(10))
                    .timeout(Duration::from_secs(60))
                    .connect()
                    .await?;
                (Target::Grpc(c), "grpc")
            }
            (None, Some(a)) => {
                let (_, url) = loopback(a)?;
                let c = RestClient::new(&url)?
                    .api_key(self.api_key.clone())?
                    .timeout(Duration::from_secs(60));
                (Target::Http(c), "http")
            }
            (None, None) => bail!("give --grpc ADDR or --http ADDR"),
        };
        let dim = data.dim();
        let ingested = if self.ingest {
            let docs = Source::open_dataset(&self.data)?;
            Some(self.ingest(&target, &collection, &docs).await?)
        } else {
            None
        };

        // Pre-encode every query for both protocols (cheap; keeps encoding out of the timed loop).
        let mut reqs = Requests {
            grpc: Vec::new(),
            http: Vec::new(),
        };
        for j in 0..data.n_queries() {
            let t = data.query_tokens(j);
            let knobs = self.knobs.knobs(self.k, false);
            let mut body = json!({"query": t.chunks(dim).collect::<Vec<_>>()});
            add_knobs(&mut body, &knobs);
            let q = Query::from_vectors(Vectors::lossless(t, dim)).knobs(knobs);
            reqs.grpc.push(q);
            reqs.http.push(Bytes::from(serde_json::to_vec(&body)?));
        }
        let reqs = Arc::new(reqs);
        let row_of: HashMap<&str, usize> =
            (0..data.n_docs()).map(|i| (data.doc_id(i), i)).collect();
        let new_conn = || match &target {
            Target::Grpc(c) => Conn::Grpc(c.clone(), collection.clone()),
            Target::Http(c) => {
                Conn::Http(c.clone(), format!("/v1/collections/{collection}/search"))
            }
        };

        // Warm-up: every query once; recall against the exact ground truth.
        let n_q = data.n_queries();
        let mut reference: Vec<Vec<String>> = Vec::with_capacity(n_q);
        let mut conn = new_conn();
        for j in 0..n_q {
            reference.push(
                conn.search(&reqs, j)
                    .await
                    .with_context(|| format!("warm-up query {}", data.query_id(j)))?,
            );
        }
        let mut recalls = Vec::new();
        for (j, ids) in reference.iter().enumerate() {
            if let Some(gt) = data.gt_ids(j) {
                let rows: Vec<usize> = ids
                    .iter()
                    .map(|id| row_of.get(id.as_str()).copied().unwrap_or(usize::MAX))
                    .collect();
                recalls.push(recall_at_k(&rows, gt, 10));
            }
        }
        let recall = if recalls.is_empty() {
            Value::Null
        } else {
            json!(recalls.iter().sum::<f64>() / recalls.len() as f64)
        };
        let reference = Arc::new(reference);

        // Timed closed loop.
        eprintln!(
            "{protocol} load on {collection}: {} workers for {} s ({} queries, cycling)",
            self.concurrency, self.duration, n_q
        );
        let next = Arc::new(AtomicUsize::new(0));
        let issued = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(AtomicU64::new(0));
        let inconsistent = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let first_error = Arc::new(std::sync::Mutex::new(None::<String>));
        let t0 = Instant::now();
        let deadline = t0 + Duration::from_secs_f64(self.duration);
        let mut workers = Vec::new();
        for _ in 0..self.concurrency {
            let mut conn = new_conn();
            let (reqs, reference, next, issued, errors, inconsistent, stop, first_error) = (
                reqs.clone(),
                reference.clone(),
                next.clone(),
                issued.clone(),
                errors.clone(),
                inconsistent.clone(),
                stop.clone(),
                first_error.clone(),
            );
            let max = self.max_requests;
            workers.push(tokio::spawn(async move {
                let mut lat = Vec::new();
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    if issued.fetch_add(1, Ordering::Relaxed) >= max {
                        break;
                    }
                    let j = next.fetch_add(1, Ordering::Relaxed) % n_q;
                    let t = Instant::now();
                    match conn.search(&reqs, j).await {
                        Ok(ids) => {
                            lat.push(t.elapsed().as_secs_f64() * 1e3);
                            if ids != reference[j] {
                                inconsistent.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Err(e) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                            first_error
                                .lock()
                                .unwrap()
                                .get_or_insert_with(|| format!("{e:#}"));
                            // A dead server should not turn into a busy loop of failures.
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    }
                }
                lat
            }));
        }
        let mut lat = Vec::new();
        for w in workers {
            lat.extend(w.await.context("a load worker panicked")?);
        }
        stop.store(true, Ordering::Relaxed);
        let elapsed = t0.elapsed().as_secs_f64();
        let (p50, p99) = percentiles(&lat);
        let p90 = {
            let mut s = lat.clone();
            s.sort_by(f64::total_cmp);
            s.get(((s.len() as f64 * 0.9).ceil() as usize).saturating_sub(1))
                .copied()
                .unwrap_or(0.0)
        };
        let errors = errors.load(Ordering::Relaxed);
        if let Some(e) = first_error.lock().unwrap().as_ref() {
            eprintln!("first error: {e}");
        }
        let report = json!({
            "protocol": protocol,
            "collection": collection,
            "concurrency": self.concurrency,
            "duration_s": elapsed,
            "requests": lat.len() as u64 + errors,
            "qps": lat.len() as f64 / elapsed,
            "p50_ms": p50,
            "p90_ms": p90,
            "p99_ms": p99,
            "mean_ms": if lat.is_empty() { 0.0 } else { lat.iter().sum::<f64>() / lat.len() as f64 },
            "errors": errors,
            "inconsistent": inconsistent.load(Ordering::Relaxed),
            "recall_at_10": recall,
            "queries": n_q,
            "k": self.k,
            "ingest_docs_per_s": ingested.as_ref().map(|v| v["ingest_docs_per_s"].clone()),
            "ingest": ingested,
            "client_peak_rss_bytes": peak_rss_bytes(),
        });
        eprintln!(
            "{} requests in {elapsed:.2} s: {:.0} qps, p50 {p50:.3} ms, p99 {p99:.3} ms, {errors} errors, recall@10 {}",
            report["requests"], report["qps"].as_f64().unwrap_or(0.0), report["recall_at_10"]
        );
        println!("{report}");
        Ok(())
    }

    /// `--ingest`: the shared ingest over the chosen protocol (creates the collection, skips stored ids), then
    /// flush and compact (one shard). Returns the ingest's figures ([`ingest_json`]).
    async fn ingest(
        &self,
        target: &Target,
        collection: &str,
        src: &Source,
    ) -> anyhow::Result<Value> {
        let r = match target {
            Target::Grpc(c) => {
                let r = ingest(c, collection, src, IngestOpts::default()).await?;
                c.flush(collection).await?;
                c.compact(collection).await?;
                r
            }
            Target::Http(c) => {
                let r = ingest(c, collection, src, IngestOpts::default()).await?;
                c.flush(collection).await?;
                c.compact(collection).await?;
                r
            }
        };
        eprintln!(
            "ingested {} documents ({} already stored) in {:.2} s: {:.0} docs/s",
            r.uploaded,
            r.skipped,
            r.seconds,
            r.uploaded as f64 / r.seconds.max(1e-9)
        );
        Ok(ingest_json(&r, src.dim()))
    }
}
