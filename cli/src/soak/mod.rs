//! `chamfer soak`: a scale run anyone can repeat. It starts its own server (this binary's `serve`, on a given
//! data directory and free 127.0.0.1 ports), streams a data set's documents into one collection over gRPC while
//! one closed-loop worker searches, lets background work settle, measures recall and idle latency, kills the
//! server with SIGKILL, restarts it on the same directory and checks that every acknowledged document is back.
//! By default it also kills the server in the middle of the ingest (`--kill-at 0.5`), and every check looks up
//! each acknowledged id (not a count). The LAST stdout line is one JSON object (see README.md, "CLI").
//!
//! Files: this one (the command and the run), `ingest.rs` (the upserts, the acknowledged rows, the mid-ingest
//! kill), `server.rs` (the child server and its clients), `measure.rs` (searches, recall, settling).
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
//!    exiting. Each acknowledged upsert marks its documents' rows ([`ingest::Acked`]).
//!    **Kill mid-ingest** (default; `--kill-at 0` turns it off). Once `--kill-at` of the documents are
//!    acknowledged: SIGKILL with `--pipeline` upserts in flight, restart on the same ports, look up every
//!    acknowledged id (`kill_mid_ingest.lost_documents`, 0 or the command fails), send the in-flight upserts again
//!    (their outcome is unknown; an upsert by id is idempotent) and go on. The search worker waits meanwhile.
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
//!    every acknowledged id is looked up (`lost_documents`: those missing, 0 or the command fails after printing
//!    the report); one more recall pass.
//!
//! Traffic only goes to the server this command started, on 127.0.0.1.
mod ingest;
mod measure;
mod server;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use chamfer_client::{Query, Vectors};
use chamfer_data::dataset::{Dataset, DocStream};
use chamfer_server::config::Settings;
use clap::Args;
use serde_json::{json, Value};
use tokio::sync::watch;

use ingest::{missing_ids, IngestRun};
use measure::{p50_p99, pass, recall_at_10, search_until, settle, write_amplification, Pass};
use server::{connect, server_rss, start_server};

/// Most upserts in flight.
const MAX_PIPELINE: usize = 64;
/// Most timed idle passes.
const MAX_IDLE_PASSES: usize = 100;
/// Longest wait (seconds) the timeouts may be set to: one day.
const MAX_TIMEOUT_S: f64 = 86_400.0;
/// Failed upserts in a row (no success in between) that stop the run.
pub(crate) const MAX_FAILURES_IN_A_ROW: u32 = 20;
/// Attempts of one upsert while the server pushes back (with its 1 s hint: about ten minutes).
pub(crate) const MAX_ATTEMPTS: u32 = 600;
/// How long the shard count must stay the same, with an empty memtable, for background work to count as idle.
pub(crate) const SETTLE_STABLE: Duration = Duration::from_secs(3);
/// Results per query (recall is measured at 10).
pub(crate) const K: u32 = 10;
/// Per-call timeout of searches and upserts.
pub(crate) const CALL_TIMEOUT: Duration = Duration::from_secs(120);
/// Starts tried when the free port picked for the server was taken by someone else in between.
pub(crate) const START_ATTEMPTS: usize = 3;

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
    /// Kill the server (SIGKILL) once this fraction of the documents is acknowledged, with upserts in flight,
    /// restart it, check every acknowledged id and go on (0 = no kill during the ingest).
    #[arg(long, default_value_t = 0.5)]
    kill_at: f64,
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
        let dir = self.dir.to_string_lossy();
        let flags = [
            ("data_dir", dir.as_ref()),
            ("http_addr", "127.0.0.1:0"),
            ("grpc_addr", "127.0.0.1:0"),
        ];
        Ok(Settings::load(None, std::env::vars(), flags)?)
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
        if !(0.0..1.0).contains(&self.kill_at) {
            bail!("--kill-at must be in [0, 1) (0: no kill during the ingest)");
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
        let (mut server, start_s) = start_server(&self.dir, &log, ready_timeout, None).await?;
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
        let (search_client, search_rx) = watch::channel(Some(c.grpc.clone()));
        let searcher = tokio::spawn(search_until(
            search_rx,
            collection.clone(),
            queries.clone(),
            stop.clone(),
        ));
        let lookup_chunk = settings.limits.max_batch;
        let run = IngestRun {
            collection: &collection,
            n_docs,
            batch: self.batch,
            pipeline: self.pipeline,
            byte_cap: settings.limits.max_request_bytes / 2,
            lookup_chunk,
            kill_at: (self.kill_at > 0.0).then(|| ((n_docs as f64 * self.kill_at) as u64).max(1)),
            dir: &self.dir,
            log: &log,
            ready_timeout,
            api_key: key.clone(),
            admin_timeout,
            searcher: &search_client,
        };
        let ingest = run.run(stream.clone(), &mut server, &mut c).await;
        stop.store(true, Ordering::Relaxed);
        let during = searcher.await.context("the search worker panicked")?;
        let ingest = ingest?;
        eprintln!(
            "ingested {} of {n_docs} documents in {:.1} s ({:.0} docs/s), {} retries, {} failed requests; {} searches alongside",
            ingest.acked.count(),
            ingest.seconds,
            ingest.acked.count() as f64 / ingest.seconds.max(1e-9),
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
            let (s2, replay_s) = start_server(&self.dir, &log, ready_timeout, None).await?;
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
            let missing =
                missing_ids(&c.grpc, &collection, &stream, &ingest.acked, lookup_chunk).await?;
            eprintln!(
                "ready again in {replay_s:.2} s with {found} documents, {} acknowledged ids missing",
                missing.len()
            );
            kill_after_ingest = json!({
                "memtable_documents_at_kill": memtable,
                "restart_to_ready_s": replay_s,
                "replayed_docs_per_s": memtable as f64 / replay_s.max(1e-9),
                "documents": found,
                "lost_documents": missing.len(),
                "first_lost": missing.first(),
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
        let (server, restart_s) = start_server(&self.dir, &log, ready_timeout, None).await?;
        let c = connect(&server, key, admin_timeout).await?;
        let found = c
            .grpc
            .describe_collection(collection.as_str())
            .await
            .context("describing the collection after the restart")?
            .stats
            .unwrap_or_default()
            .documents;
        let missing =
            missing_ids(&c.grpc, &collection, &stream, &ingest.acked, lookup_chunk).await?;
        let lost = missing.len();
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
            "acked_documents": ingest.acked.count(),
            "batch": self.batch,
            "pipeline": self.pipeline,
            "ingest_seconds": ingest.seconds,
            "ingest_docs_per_s": ingest.acked.count() as f64 / ingest.seconds.max(1e-9),
            "retries": ingest.retries,
            "errors": ingest.errors,
            "failed_documents": ingest.failed_docs,
            "searches_during_ingest": during.latencies_ms.len(),
            "search_qps_during_ingest": during.latencies_ms.len() as f64 / during.seconds.max(1e-9),
            "search_errors_during_ingest": during.errors,
            "searches_interrupted_by_the_kill": during.interrupted,
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
            "first_lost": missing.first(),
            "kill_mid_ingest": ingest.kill,
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
        if ingest.missing_after_kill > 0 {
            bail!(
                "{} acknowledged documents were missing after the kill during the ingest",
                ingest.missing_after_kill
            );
        }
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
}
