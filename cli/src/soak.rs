//! `chamfer soak`: a scale run anyone can repeat. It starts its own server (this binary's `serve`, on a given
//! data directory and free 127.0.0.1 ports), streams a data set's documents into one collection over gRPC while
//! one closed-loop worker searches, lets background work settle, measures recall and idle latency, kills the
//! server with SIGKILL, restarts it on the same directory and checks that every acknowledged document is back.
//! The LAST stdout line is one JSON object (see README.md, "CLI").
//!
//! Run shape, in order:
//!
//! 1. **Start.** `chamfer serve --data-dir DIR --http-addr 127.0.0.1:P --grpc-addr 127.0.0.1:Q` with the
//!    environment inherited (so `CHAMFER_FLUSH_THRESHOLD_DOCS` and the other `CHAMFER_*` settings apply), its
//!    output appended to a log file; ready when `GET /readyz` answers 200. The child is killed on every exit path
//!    ([`ServerProc`]'s `Drop`).
//! 2. **Ingest.** Documents are read from the data set a batch at a time ([`DocStream`], never the whole corpus)
//!    and sent as f16 in `--batch` documents per upsert (fewer when a batch would pass half the server's request
//!    byte limit), `--pipeline` upserts in flight. Ids are unique in a data set, so batches may be applied in any
//!    order. Push-back (RESOURCE_EXHAUSTED `overloaded`, UNAVAILABLE) is retried with the shared ingest's rule
//!    ([`chamfer_client::ingest::retrying`]: the server's hint, or 1 s doubling to 8 s), counted in `retries`.
//!    Any other failure of an upsert counts in `errors` and the run goes on (its documents are not acknowledged,
//!    so they cannot count as lost); [`MAX_FAILURES_IN_A_ROW`] failures without a success in between stop the
//!    run (something systematic, e.g. documents over the server's token limit), and so does the server process
//!    exiting.
//! 3. **Search during ingest.** One worker sends the data set's queries (cycling, k = 10) over gRPC, each when
//!    the previous one is answered, for as long as the ingest runs.
//! 4. **Settle.** Flush (a flush also waits for a flush or compaction that is running: they take turns), then
//!    poll the collection until the memtable is empty, no shard is stale (shards coded with an older codebook
//!    are re-coded once writes stop) and the shard count has not changed for [`SETTLE_STABLE`], flushing again
//!    while the memtable is not empty; at most `--settle-timeout` seconds (then `settled` is false and the run
//!    goes on).
//! 5. **Idle.** Every query (or the first `--queries`) once: recall@10 against the exact ground truth (only when
//!    the whole corpus was acknowledged: the ground truth is for the whole corpus), then `--idle-passes` timed
//!    passes for the idle p50 / p99.
//! 6. **Restart.** SIGKILL, restart on the same directory (new ports), `restart_to_ready_s` from spawn to ready;
//!    the collection's document count must equal the acknowledged count (`lost_documents`, 0 or the command
//!    fails after printing the report); one more recall pass.
//!
//! Traffic only goes to the server this command started, on 127.0.0.1.
use std::collections::HashMap;
use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use chamfer_client::ingest::{retrying, IngestOptions};
use chamfer_client::rest::Method;
use chamfer_client::{Client, Document, Query, RestClient, Vectors};
use chamfer_data::dataset::{Dataset, DocStream};
use chamfer_data::eval::{percentiles, recall_at_k};
use chamfer_server::config::{Settings, SettingsLayer};
use clap::Args;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::params::bar;
use chamfer_server::metrics::rss_anon_bytes;

/// Most upserts in flight.
const MAX_PIPELINE: usize = 64;
/// Most timed idle passes.
const MAX_IDLE_PASSES: usize = 100;
/// Longest wait (seconds) the timeouts may be set to: one day.
const MAX_TIMEOUT_S: f64 = 86_400.0;
/// Failed upserts in a row (no success in between) that stop the run.
const MAX_FAILURES_IN_A_ROW: u32 = 20;
/// Attempts of one upsert while the server pushes back (with its 1 s hint: about ten minutes).
const MAX_ATTEMPTS: u32 = 600;
/// How long the shard count must stay the same, with an empty memtable, for background work to count as idle.
const SETTLE_STABLE: Duration = Duration::from_secs(3);
/// Results per query (recall is measured at 10).
const K: u32 = 10;
/// Per-call timeout of searches and upserts.
const CALL_TIMEOUT: Duration = Duration::from_secs(120);
/// Starts tried when the free port picked for the server was taken by someone else in between.
const START_ATTEMPTS: usize = 3;

#[derive(Args, Debug)]
pub(crate) struct SoakCmd {
    /// Data set folder: documents (streamed from disk), queries and exact ground truth.
    #[arg(long)]
    data: PathBuf,
    /// The server's data directory (created when absent; the collection must not exist in it yet).
    #[arg(long)]
    dir: PathBuf,
    /// Collection (default: the data set folder's name).
    #[arg(long)]
    collection: Option<String>,
    /// Documents per upsert request (at most the server's limit, CHAMFER_MAX_BATCH, default 1024).
    #[arg(long, default_value_t = 256)]
    batch: usize,
    /// Upsert requests in flight (1..=64).
    #[arg(long, default_value_t = 4)]
    pipeline: usize,
    /// Ingest only the first N documents (recall@10 is then null: the ground truth is for the whole corpus).
    #[arg(long)]
    docs: Option<usize>,
    /// Queries of the idle and after-restart passes (default: all of the data set's).
    #[arg(long)]
    queries: Option<usize>,
    /// Timed idle passes over those queries, after the recall pass (1..=100).
    #[arg(long, default_value_t = 2)]
    idle_passes: usize,
    /// Seconds to wait after the ingest for the memtable to be flushed and the shard count to settle.
    #[arg(long, default_value_t = 600.0)]
    settle_timeout: f64,
    /// Seconds a server start (or restart) may take until /readyz says ready.
    #[arg(long, default_value_t = 600.0)]
    ready_timeout: f64,
    /// The server's log file (its stdout and stderr, appended). Default: chamfer-soak-server.log in the
    /// system's temp directory.
    #[arg(long)]
    server_log: Option<PathBuf>,
    /// Also kill the server (SIGKILL) the moment the ingest ends, while its memtable, flushes and merges are in
    /// flight, and restart it: reports `kill_after_ingest` (documents in the memtable at the kill, restart to
    /// ready with the log replayed, documents found, lost) before the settle and the rest.
    #[arg(long)]
    kill_after_ingest: bool,
}

/// The server as a child process, killed (SIGKILL) and reaped when dropped.
struct ServerProc {
    child: Child,
    http: SocketAddr,
    grpc: SocketAddr,
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ServerProc {
    /// How the process ended, if it has.
    fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(status.to_string()),
            Ok(None) | Err(_) => None,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn grpc_url(&self) -> String {
        format!("http://{}", self.grpc)
    }

    fn http_url(&self) -> String {
        format!("http://{}", self.http)
    }
}

/// Two free 127.0.0.1 ports (bound together, then released for the server to take).
fn free_ports() -> anyhow::Result<(SocketAddr, SocketAddr)> {
    let a = std::net::TcpListener::bind("127.0.0.1:0").context("no free local port")?;
    let b = std::net::TcpListener::bind("127.0.0.1:0").context("no free local port")?;
    Ok((a.local_addr()?, b.local_addr()?))
}

/// The last lines of `log` written after byte `from` (of its last 64 KiB), on one line (for error messages).
fn log_tail(log: &Path, from: u64) -> String {
    let mut bytes = Vec::new();
    if let Ok(mut f) = std::fs::File::open(log) {
        let len = f.metadata().map_or(0, |m| m.len());
        if f.seek(SeekFrom::Start(from.max(len.saturating_sub(64 << 10))))
            .is_ok()
        {
            let _ = f.read_to_end(&mut bytes);
        }
    }
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(4)..].join(" | ")
}

/// Spawns `chamfer serve` on `dir` and waits for `/readyz`; retries with other ports when a port was taken in
/// between. Returns the server and the seconds from spawn to ready.
async fn start_server(
    dir: &Path,
    log: &Path,
    timeout: Duration,
) -> anyhow::Result<(ServerProc, f64)> {
    let exe =
        std::env::current_exe().context("cannot find the chamfer binary to start the server")?;
    for attempt in 1..=START_ATTEMPTS {
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("cannot open the server log {}", log.display()))?;
        let from = out.metadata().map_or(0, |m| m.len());
        let err = out.try_clone()?;
        let (http, grpc) = free_ports()?;
        let t0 = Instant::now();
        let child = Command::new(&exe)
            .arg("serve")
            .arg("--data-dir")
            .arg(dir)
            .arg("--http-addr")
            .arg(http.to_string())
            .arg("--grpc-addr")
            .arg(grpc.to_string())
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("cannot start {} serve", exe.display()))?;
        let mut server = ServerProc { child, http, grpc };
        let probe = RestClient::new(&server.http_url())?.timeout(Duration::from_secs(2));
        loop {
            if let Some(status) = server.exited() {
                let tail = log_tail(log, from);
                // Someone took the port between our probe and the server's bind: try other ports.
                if tail.contains("cannot listen on") && attempt < START_ATTEMPTS {
                    break;
                }
                bail!("the server exited during start-up ({status}): {tail}");
            }
            if let Ok(r) = probe.send(Method::GET, "/readyz", None, None, &[]).await {
                if r.status == 200 {
                    return Ok((server, t0.elapsed().as_secs_f64()));
                }
            }
            if t0.elapsed() > timeout {
                bail!(
                    "the server was not ready within {} s (--ready-timeout): {}",
                    timeout.as_secs_f64(),
                    log_tail(log, from)
                );
            }
            // Fine-grained at first (a small data directory opens in well under a second), then gentler on
            // the server's log, which records every 503.
            let wait = if t0.elapsed() < Duration::from_secs(2) {
                50
            } else {
                250
            };
            tokio::time::sleep(Duration::from_millis(wait)).await;
        }
    }
    bail!("the server could not bind free ports in {START_ATTEMPTS} attempts")
}

/// What the ingest did.
#[derive(Debug, Default)]
struct IngestOutcome {
    /// Documents the server acknowledged.
    acked: u64,
    /// Upserts sent again after push-back.
    retries: u64,
    /// Upserts that failed otherwise.
    errors: u64,
    /// Documents in those.
    failed_docs: u64,
    /// First failure, as text.
    first_error: Option<String>,
    seconds: f64,
}

/// Reads documents `0..n_docs` of `stream` in batches of at most `batch` documents and `byte_cap` bytes of f16
/// vectors (a single larger document goes alone) and sends them to `tx`; stops early when the receiver is gone.
fn read_batches(
    stream: &DocStream,
    n_docs: usize,
    batch: usize,
    byte_cap: usize,
    tx: &mpsc::Sender<Vec<Document>>,
) -> anyhow::Result<()> {
    let dim = stream.dim();
    let mut buf = Vec::new();
    let mut start = 0;
    while start < n_docs {
        let (mut end, mut bytes) = (start, 0);
        while end < n_docs && end - start < batch {
            let b = stream.doc_len(end) * dim * 2 + stream.id(end).len();
            if end > start && bytes + b > byte_cap {
                break;
            }
            bytes += b;
            end += 1;
        }
        buf.clear();
        stream.read_range(start..end, &mut buf)?;
        let mut docs = Vec::with_capacity(end - start);
        let mut at = 0;
        for i in start..end {
            let len = stream.doc_len(i) * dim;
            docs.push(Document::from_vectors(
                stream.id(i),
                Vectors::f16(&buf[at..at + len], dim),
            ));
            at += len;
        }
        if tx.blocking_send(docs).is_err() {
            break; // the uploader stopped; it reports why
        }
        start = end;
    }
    Ok(())
}

/// What the search worker measured.
#[derive(Debug, Default)]
struct SearchLoad {
    latencies_ms: Vec<f64>,
    errors: u64,
    first_error: Option<String>,
    seconds: f64,
}

/// Sends `queries` (cycling) one at a time until `stop` is set.
async fn search_until(
    client: Client,
    collection: String,
    queries: Arc<Vec<Query>>,
    stop: Arc<AtomicBool>,
) -> SearchLoad {
    let t0 = Instant::now();
    let mut out = SearchLoad::default();
    let mut j = 0;
    while !stop.load(Ordering::Relaxed) {
        let q = queries[j % queries.len()].clone();
        j += 1;
        let t = Instant::now();
        match client.search(collection.as_str(), q).await {
            Ok(_) => out.latencies_ms.push(t.elapsed().as_secs_f64() * 1e3),
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
struct Pass {
    /// Hit ids per query (empty for a failed query).
    ids: Vec<Vec<String>>,
    latencies_ms: Vec<f64>,
    errors: u64,
    first_error: Option<String>,
}

async fn pass(client: &Client, collection: &str, queries: &[Query]) -> Pass {
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
fn recall_at_10(ds: &Dataset, row_of: &HashMap<&str, usize>, ids: &[Vec<String>]) -> Option<f64> {
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
fn p50_p99(v: &[f64]) -> (Option<f64>, Option<f64>) {
    if v.is_empty() {
        return (None, None);
    }
    let (a, b) = percentiles(v);
    (Some(a), Some(b))
}

/// The value of the first sample of metric `name` in Prometheus / OpenMetrics text (labels allowed).
fn metric_value(text: &str, name: &str) -> Option<f64> {
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
fn write_amplification(flushed: Option<u64>, compacted: Option<u64>) -> Option<f64> {
    match (flushed, compacted) {
        (Some(f), Some(c)) if f > 0 => Some((f + c) as f64 / f as f64),
        _ => None,
    }
}

/// The server's anonymous resident memory: its `chamfer_process_rss_anon_bytes` metric when it has one, else
/// the process's /proc status.
async fn server_rss(rest: &RestClient, server: &ServerProc) -> Option<u64> {
    let scraped = match rest.send(Method::GET, "/metrics", None, None, &[]).await {
        Ok(r) if r.status == 200 => metric_value(
            &String::from_utf8_lossy(&r.body),
            "chamfer_process_rss_anon_bytes",
        ),
        _ => None,
    };
    scraped
        .map(|v| v as u64)
        .or_else(|| rss_anon_bytes(Some(server.pid())))
}

/// Clients of a running server: gRPC for the work, a slow-call gRPC client for flushes (which wait for
/// background work), REST for the stats that only REST may carry and the metrics.
struct Clients {
    grpc: Client,
    admin: Client,
    rest: RestClient,
}

async fn connect(
    server: &ServerProc,
    api_key: Option<String>,
    admin_timeout: Duration,
) -> anyhow::Result<Clients> {
    let builder = Client::builder(server.grpc_url())
        .api_key_opt(api_key.clone())
        .connect_timeout(Duration::from_secs(10));
    Ok(Clients {
        grpc: builder.clone().timeout(CALL_TIMEOUT).connect().await?,
        admin: builder.timeout(admin_timeout).connect().await?,
        rest: RestClient::new(&server.http_url())?
            .api_key(api_key)?
            .timeout(CALL_TIMEOUT),
    })
}

impl SoakCmd {
    pub(crate) fn run(self) -> anyhow::Result<()> {
        // Two threads: the client side is I/O-bound (plus f16 packing) and the server needs the cores.
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        rt.block_on(self.run_async())
    }

    /// The settings the server will run with (the same environment, the addresses it will get as flags), for
    /// the limits the flags are held to and the API key.
    fn server_settings(&self) -> anyhow::Result<Settings> {
        let flags = SettingsLayer {
            data_dir: Some(self.dir.clone()),
            http_addr: Some("127.0.0.1:0".into()),
            grpc_addr: Some("127.0.0.1:0".into()),
            ..SettingsLayer::default()
        };
        Ok(Settings::load(None, std::env::vars(), &flags)?)
    }

    fn check_flags(&self, settings: &Settings) -> anyhow::Result<()> {
        let max_batch = settings.limits.max_batch;
        if self.batch == 0 || self.batch > max_batch {
            bail!("--batch must be in 1..={max_batch} (the server's documents per request, CHAMFER_MAX_BATCH)");
        }
        if self.pipeline == 0 || self.pipeline > MAX_PIPELINE {
            bail!("--pipeline must be in 1..={MAX_PIPELINE}");
        }
        if self.idle_passes == 0 || self.idle_passes > MAX_IDLE_PASSES {
            bail!("--idle-passes must be in 1..={MAX_IDLE_PASSES}");
        }
        if self.docs == Some(0) || self.queries == Some(0) {
            bail!("--docs and --queries must be at least 1");
        }
        for (flag, v) in [
            ("--settle-timeout", self.settle_timeout),
            ("--ready-timeout", self.ready_timeout),
        ] {
            if !(v > 0.0 && v <= MAX_TIMEOUT_S) {
                bail!("{flag} must be in (0, {MAX_TIMEOUT_S}] seconds");
            }
        }
        Ok(())
    }

    async fn run_async(self) -> anyhow::Result<()> {
        let settings = self.server_settings()?;
        self.check_flags(&settings)?;
        let ds = Dataset::open_without_doc_tokens(&self.data)?;
        let stream = Arc::new(DocStream::open(&self.data)?);
        if ds.n_queries() == 0 {
            bail!("{}: no queries", self.data.display());
        }
        let n_docs = match self.docs {
            Some(n) if n > stream.len() => bail!(
                "--docs {n}: {} has only {} documents",
                self.data.display(),
                stream.len()
            ),
            Some(n) => n,
            None => stream.len(),
        };
        let n_q = self.queries.unwrap_or(usize::MAX).min(ds.n_queries());
        let dim = u32::try_from(ds.dim()).context("the data set's dimension is too large")?;
        let collection = self.collection.clone().unwrap_or_else(|| ds.name());
        let queries: Arc<Vec<Query>> = Arc::new(
            (0..ds.n_queries())
                .map(|j| Query::from_vectors(Vectors::lossless(ds.query_tokens(j), ds.dim())).k(K))
                .collect(),
        );
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("cannot create {}", self.dir.display()))?;
        let log = self
            .server_log
            .clone()
            .unwrap_or_else(|| std::env::temp_dir().join("chamfer-soak-server.log"));
        let ready_timeout = Duration::from_secs_f64(self.ready_timeout);
        let settle_timeout = Duration::from_secs_f64(self.settle_timeout);
        let admin_timeout = settle_timeout.max(CALL_TIMEOUT);
        let key = settings.api_key.clone();

        eprintln!(
            "starting the server on {} (log: {})",
            self.dir.display(),
            log.display()
        );
        let (mut server, start_s) = start_server(&self.dir, &log, ready_timeout).await?;
        eprintln!(
            "server ready in {start_s:.2} s: gRPC {}, REST {}",
            server.grpc, server.http
        );
        let mut c = connect(&server, key.clone(), admin_timeout).await?;
        match c.grpc.create_collection(collection.as_str(), dim).await {
            Ok(_) => {}
            Err(chamfer_client::Error::AlreadyExists(_)) => bail!(
                "collection {collection} already exists in {}: soak measures a fresh ingest (use an empty --dir or another --collection)",
                self.dir.display()
            ),
            Err(e) => return Err(e).context("creating the collection"),
        }

        // Ingest with one search worker alongside.
        let stop = Arc::new(AtomicBool::new(false));
        let searcher = tokio::spawn(search_until(
            c.grpc.clone(),
            collection.clone(),
            queries.clone(),
            stop.clone(),
        ));
        let ingest = self
            .ingest(
                &c.grpc,
                &collection,
                stream,
                n_docs,
                &settings,
                &mut server,
                &log,
            )
            .await;
        stop.store(true, Ordering::Relaxed);
        let during = searcher.await.context("the search worker panicked")?;
        let ingest = ingest?;
        eprintln!(
            "ingested {} of {n_docs} documents in {:.1} s ({:.0} docs/s), {} retries, {} failed requests; {} searches alongside",
            ingest.acked,
            ingest.seconds,
            ingest.acked as f64 / ingest.seconds.max(1e-9),
            ingest.retries,
            ingest.errors,
            during.latencies_ms.len()
        );
        if let Some(e) = &ingest.first_error {
            eprintln!("first upsert error: {e}");
        }
        if let Some(e) = &during.first_error {
            eprintln!("first search error during ingest: {e}");
        }

        // Optionally, kill -9 with the memtable and background work in flight, then restart.
        let mut kill_after_ingest = Value::Null;
        if self.kill_after_ingest {
            let memtable = c
                .grpc
                .describe_collection(collection.as_str())
                .await
                .context("describing the collection before the kill")?
                .stats
                .unwrap_or_default()
                .memtable_documents;
            drop(c);
            drop(server); // SIGKILL, reaped
            eprintln!("killed the server (SIGKILL) right after the ingest, {memtable} documents in its memtable; restarting");
            let (s2, replay_s) = start_server(&self.dir, &log, ready_timeout).await?;
            server = s2;
            c = connect(&server, key.clone(), admin_timeout).await?;
            let found = c
                .grpc
                .describe_collection(collection.as_str())
                .await
                .context("describing the collection after the kill")?
                .stats
                .unwrap_or_default()
                .documents;
            eprintln!("ready again in {replay_s:.2} s with {found} documents");
            kill_after_ingest = json!({
                "memtable_documents_at_kill": memtable,
                "restart_to_ready_s": replay_s,
                "replayed_docs_per_s": memtable as f64 / replay_s.max(1e-9),
                "documents": found,
                "lost_documents": ingest.acked.saturating_sub(found),
            });
        }

        // Settle, then the idle passes.
        let (settle_s, settled) = settle(&c.admin, &collection, settle_timeout).await?;
        eprintln!(
            "background work {} after {settle_s:.1} s",
            if settled {
                "settled"
            } else {
                "did NOT settle (--settle-timeout)"
            }
        );
        let whole = n_docs == ds.n_docs() && ingest.failed_docs == 0;
        let row_of: HashMap<&str, usize> = if whole {
            (0..ds.n_docs()).map(|i| (ds.doc_id(i), i)).collect()
        } else {
            HashMap::new()
        };
        let recall = |p: &Pass| {
            if whole {
                recall_at_10(&ds, &row_of, &p.ids)
            } else {
                None
            }
        };
        let first = pass(&c.grpc, &collection, &queries[..n_q]).await;
        let recall_idle = recall(&first);
        // The recall pass also warms up; the latencies come from the timed passes after it.
        let mut idle = Vec::new();
        let mut idle_errors = first.errors;
        let mut idle_first_error = first.first_error.clone();
        for _ in 0..self.idle_passes {
            let p = pass(&c.grpc, &collection, &queries[..n_q]).await;
            idle.extend(p.latencies_ms);
            idle_errors += p.errors;
            idle_first_error = idle_first_error.or(p.first_error);
        }
        if let Some(e) = &idle_first_error {
            eprintln!("first idle search error: {e}");
        }

        // Counters the server may carry (REST), memory, then the kill.
        let stats = c
            .rest
            .collection(&collection)
            .await?
            .map(|v| v["stats"].clone())
            .unwrap_or(Value::Null);
        let flushed = stats["flushed_bytes"].as_u64();
        let compacted = stats["compacted_bytes"].as_u64();
        let shards = stats["shards"].as_u64();
        let rss = server_rss(&c.rest, &server).await;
        drop(c);
        drop(server); // SIGKILL, reaped
        eprintln!("killed the server (SIGKILL); restarting on the same directory");
        let (server, restart_s) = start_server(&self.dir, &log, ready_timeout).await?;
        let c = connect(&server, key, admin_timeout).await?;
        let found = c
            .grpc
            .describe_collection(collection.as_str())
            .await
            .context("describing the collection after the restart")?
            .stats
            .unwrap_or_default()
            .documents;
        let lost = ingest.acked.saturating_sub(found);
        let after = pass(&c.grpc, &collection, &queries[..n_q]).await;
        if let Some(e) = &after.first_error {
            eprintln!("first search error after the restart: {e}");
        }
        drop(c);
        drop(server);

        let (p50_during, p99_during) = p50_p99(&during.latencies_ms);
        let (p50_idle, p99_idle) = p50_p99(&idle);
        let p99_ratio = match (p99_during, p99_idle) {
            (Some(d), Some(i)) if i > 0.0 => Some(d / i),
            _ => None,
        };
        let mut report = json!({
            "data": self.data.display().to_string(),
            "collection": collection,
            "docs": n_docs,
            "acked_documents": ingest.acked,
            "batch": self.batch,
            "pipeline": self.pipeline,
            "ingest_seconds": ingest.seconds,
            "ingest_docs_per_s": ingest.acked as f64 / ingest.seconds.max(1e-9),
            "retries": ingest.retries,
            "errors": ingest.errors,
            "failed_documents": ingest.failed_docs,
            "searches_during_ingest": during.latencies_ms.len(),
            "search_qps_during_ingest": during.latencies_ms.len() as f64 / during.seconds.max(1e-9),
            "search_errors_during_ingest": during.errors,
            "p50_ms_during_ingest": p50_during,
            "p99_ms_during_ingest": p99_during,
            "settle_seconds": settle_s,
            "settled": settled,
            "shards": shards,
            "queries": n_q,
            "idle_passes": self.idle_passes,
            "p50_ms_idle": p50_idle,
            "p99_ms_idle": p99_idle,
            "p99_ratio": p99_ratio,
            "search_errors_idle": idle_errors,
        });
        // Two halves: one json! of every key passes the macro recursion limit.
        let after_restart = json!({
            "recall_at_10": recall_idle,
            "server_start_s": start_s,
            "restart_to_ready_s": restart_s,
            "documents_after_restart": found,
            "lost_documents": lost,
            "recall_at_10_after_restart": recall(&after),
            "search_errors_after_restart": after.errors,
            "flushed_bytes": flushed,
            "compacted_bytes": compacted,
            "write_amplification": write_amplification(flushed, compacted),
            "server_rss_anon_bytes": rss,
            "kill_after_ingest": kill_after_ingest,
            "server": {
                "flush_threshold_docs": settings.flush_threshold_docs,
                "compaction_max_shards": settings.compaction_max_shards,
                "search_threads": settings.search_threads,
                "max_batch": settings.limits.max_batch,
            },
            "machine": {
                "cores": std::thread::available_parallelism().map_or(1, |n| n.get()),
                "os": std::env::consts::OS,
                "arch": std::env::consts::ARCH,
                "kernel": format!("{:?}", chamfer_index::kernels::kernel_level()),
            },
        });
        if let (Value::Object(a), Value::Object(b)) = (&mut report, after_restart) {
            a.extend(b);
        }
        eprintln!(
            "recall@10 {} (after restart {}), p99 {} ms during ingest vs {} ms idle, restart to ready {restart_s:.2} s, {found} documents after restart ({lost} lost)",
            report["recall_at_10"],
            report["recall_at_10_after_restart"],
            report["p99_ms_during_ingest"],
            report["p99_ms_idle"]
        );
        println!("{report}");
        if let Some(l) = report["kill_after_ingest"]["lost_documents"]
            .as_u64()
            .filter(|&l| l > 0)
        {
            bail!(
                "{l} acknowledged documents were missing after the kill that followed the ingest"
            );
        }
        if lost > 0 {
            bail!("{lost} acknowledged documents were missing after the restart");
        }
        Ok(())
    }

    /// Streams documents `0..n_docs` into `collection`, `--pipeline` upserts in flight (see the module
    /// documentation for the retry and failure rules).
    #[allow(clippy::too_many_arguments)]
    async fn ingest(
        &self,
        client: &Client,
        collection: &str,
        stream: Arc<DocStream>,
        n_docs: usize,
        settings: &Settings,
        server: &mut ServerProc,
        log: &Path,
    ) -> anyhow::Result<IngestOutcome> {
        let (tx, mut rx) = mpsc::channel::<Vec<Document>>(self.pipeline);
        let (batch, byte_cap) = (self.batch, settings.limits.max_request_bytes / 2);
        let reader = tokio::task::spawn_blocking(move || {
            read_batches(&stream, n_docs, batch, byte_cap, &tx)
        });
        let opts = IngestOptions {
            max_attempts: MAX_ATTEMPTS,
            ..IngestOptions::default()
        };
        let pb = bar(n_docs as u64, "ingest");
        let mut out = IngestOutcome::default();
        let mut set: JoinSet<(u64, u64, chamfer_client::Result<u64>)> = JoinSet::new();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut input_done = false;
        let mut failures_in_a_row = 0;
        let t0 = Instant::now();
        loop {
            while !input_done && set.len() < self.pipeline {
                let Some(docs) = rx.recv().await else {
                    input_done = true;
                    break;
                };
                let (client, collection, opts) =
                    (client.clone(), collection.to_string(), opts.clone());
                set.spawn(async move {
                    let n = docs.len() as u64;
                    let mut retries = 0;
                    let r = retrying(&opts, &mut retries, || {
                        client.upsert(collection.as_str(), docs.clone())
                    })
                    .await
                    .map(|r| r.upserted);
                    (n, retries, r)
                });
            }
            if set.is_empty() {
                break;
            }
            tokio::select! {
                Some(joined) = set.join_next() => {
                    let (n, retries, r) = joined.context("an upsert task panicked")?;
                    out.retries += retries;
                    match r {
                        Ok(acked) => {
                            out.acked += acked;
                            failures_in_a_row = 0;
                        }
                        Err(e) => {
                            out.errors += 1;
                            out.failed_docs += n;
                            failures_in_a_row += 1;
                            pb.suspend(|| eprintln!("an upsert of {n} documents failed: {e}"));
                            out.first_error.get_or_insert_with(|| e.to_string());
                            if failures_in_a_row >= MAX_FAILURES_IN_A_ROW {
                                set.abort_all();
                                pb.abandon();
                                bail!("{MAX_FAILURES_IN_A_ROW} upserts in a row failed; the last: {e}");
                            }
                        }
                    }
                    pb.inc(n);
                    if out.retries > 0 {
                        pb.set_message(format!("ingest ({} retries)", out.retries));
                    }
                }
                _ = tick.tick() => {
                    if let Some(status) = server.exited() {
                        set.abort_all();
                        pb.abandon();
                        bail!("the server exited during the ingest ({status}): {}", log_tail(log, 0));
                    }
                }
            }
        }
        out.seconds = t0.elapsed().as_secs_f64();
        pb.finish_and_clear();
        reader
            .await
            .context("the data set reader panicked")?
            .context("reading the data set")?;
        Ok(out)
    }
}

/// Flushes, then waits until the memtable is empty, no shard is stale (coded with an older codebook: they are
/// re-coded once writes stop) and the shard count has stayed the same for [`SETTLE_STABLE`] (flushing again
/// while the memtable is not empty). Returns the seconds waited and whether it settled within `timeout`.
async fn settle(
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
