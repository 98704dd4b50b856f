//! `chamfer bench`: build an index in a temp dir, run every query with one search thread, compare with
//! exhaustive exact search measured in the same run, print a JSON report as the last stdout line.
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context};
use chamfer_data::dataset::{Dataset, DocStream};
use chamfer_data::eval::{ndcg_at_k, percentiles, recall_at_k};
use chamfer_index::fde::FdeEncoder;
use chamfer_index::index_dir::{index_bytes, open_index};
use chamfer_index::kernels::kernel_level;
use chamfer_index::search::{Plan, SearchParams, Searcher};
use chamfer_index::tokens::TokenMatrix;
use clap::Args;
use serde_json::json;

use super::engine::build_index;
use super::params::{IndexArgs, SearchArgs};
use chamfer_server::metrics::rss_anon_bytes;

#[derive(Args, Debug)]
pub(crate) struct BenchCmd {
    /// Data set folder with queries and ground truth.
    #[arg(long)]
    data: PathBuf,
    #[command(flatten)]
    index: IndexArgs,
    #[command(flatten)]
    search: SearchArgs,
    /// Threads for the index build (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Threads one query may use in the second timed pass (`qps_all_threads`); the headline `qps` always
    /// uses one. Default: all cores.
    #[arg(long)]
    search_threads: Option<usize>,
    /// Timed passes over the query set (the median pass is reported).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Queries for the exhaustive exact baseline (0 = all).
    #[arg(long, default_value_t = 0)]
    exact_queries: usize,
    /// Build the index here instead of a temp dir, or reuse the index already there (then build_s is 0).
    #[arg(long)]
    index_dir: Option<PathBuf>,
}

struct Pass {
    qps: f64,
    p50_ms: f64,
    p99_ms: f64,
    results: Vec<Vec<usize>>,
    plan: Option<Plan>,
}

/// Data set row of every (shard, document): the bench index holds the data set in order, shard after shard.
fn shard_bases(s: &Searcher) -> Vec<usize> {
    let mut at = 0;
    s.shards()
        .iter()
        .map(|sh| {
            let base = at;
            at += sh.len();
            base
        })
        .collect()
}

fn run_pass(
    s: &Searcher,
    ds: &Dataset,
    queries: &[usize],
    p: &SearchParams,
) -> anyhow::Result<Pass> {
    let mut lat = Vec::with_capacity(queries.len());
    let mut results = Vec::with_capacity(queries.len());
    let mut plan = None;
    let bases = shard_bases(s);
    let start = Instant::now();
    for &j in queries {
        let q = TokenMatrix::new(ds.query_tokens(j), ds.dim(), "query")?;
        let t = Instant::now();
        let (hits, stats) = s.search_with_stats(q, p, None)?;
        lat.push(t.elapsed().as_secs_f64() * 1e3);
        plan = plan.or(stats.plan);
        results.push(hits.iter().map(|h| bases[h.shard] + h.doc).collect());
    }
    let total = start.elapsed().as_secs_f64();
    let (p50_ms, p99_ms) = percentiles(&lat);
    Ok(Pass {
        qps: queries.len() as f64 / total,
        p50_ms,
        p99_ms,
        results,
        plan,
    })
}

/// Runs `runs` passes and returns the one with the median throughput.
fn median_pass(
    s: &Searcher,
    ds: &Dataset,
    queries: &[usize],
    p: &SearchParams,
    runs: usize,
) -> anyhow::Result<Pass> {
    let mut passes = (0..runs.max(1))
        .map(|_| run_pass(s, ds, queries, p))
        .collect::<anyhow::Result<Vec<_>>>()?;
    passes.sort_by(|a, b| a.qps.total_cmp(&b.qps));
    let mid = passes.len() / 2;
    Ok(passes.swap_remove(mid))
}

fn mean(v: impl Iterator<Item = f64>) -> f64 {
    let (s, n) = v.fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
    if n == 0 {
        0.0
    } else {
        s / n as f64
    }
}

impl BenchCmd {
    pub(crate) fn run(self) -> anyhow::Result<()> {
        if let Some(t) = self.threads {
            rayon::ThreadPoolBuilder::new()
                .num_threads(t)
                .build_global()
                .context("thread pool")?;
        }
        // Queries and ground truth in memory; documents read from their token file a shard at a time, so a
        // data set larger than memory can be indexed.
        let ds = Dataset::open_without_doc_tokens(&self.data)?;
        let stream = DocStream::open(&self.data)?;
        if ds.n_queries() == 0 || ds.gt_ids(0).is_none() {
            bail!(
                "{}: bench needs queries and gt_chamfer_ids.npy",
                self.data.display()
            );
        }
        let params = self.index.params(ds.dim());
        params.validate()?;
        let tmp = tempfile::tempdir()?;
        let dir = self
            .index_dir
            .clone()
            .unwrap_or_else(|| tmp.path().join("index"));
        let reuse = dir.join("index.json").exists();
        let n_docs = stream.len();

        // FDE encoding throughput on one thread (a slice of the corpus, outside the build timing).
        let enc = FdeEncoder::new(params.fde.clone())?;
        let n_sample = n_docs.min(2000);
        let mut sample_tokens = Vec::new();
        stream.read_range(0..n_sample, &mut sample_tokens)?;
        let mut sample: Vec<TokenMatrix<'_>> = Vec::with_capacity(n_sample);
        let mut at = 0;
        for i in 0..n_sample {
            let len = stream.doc_len(i) * ds.dim();
            sample.push(TokenMatrix::new(
                &sample_tokens[at..at + len],
                ds.dim(),
                "document",
            )?);
            at += len;
        }
        let mut out = vec![0f32; sample.len() * params.fde.output_dim()];
        let one = rayon::ThreadPoolBuilder::new().num_threads(1).build()?;
        let t = Instant::now();
        one.install(|| enc.encode_documents_into(&sample, &mut out))?;
        let fde_docs_per_s_1thread = sample.len() as f64 / t.elapsed().as_secs_f64();
        drop(out);

        let t = Instant::now();
        if reuse {
            eprintln!("reusing the index in {}", dir.display());
        } else {
            build_index(&dir, &params, &stream)?;
        }
        let build_s = if reuse {
            0.0
        } else {
            t.elapsed().as_secs_f64()
        };
        let build_docs_per_s = if reuse { 0.0 } else { n_docs as f64 / build_s };
        let rss_after_build = rss_anon_bytes(None);
        let bytes = index_bytes(&dir);
        let t = Instant::now();
        let searcher = open_index(&dir)?;
        if reuse && searcher.params() != &params {
            bail!(
                "{} was built with other parameters than these flags",
                dir.display()
            );
        }
        let open_s = t.elapsed().as_secs_f64();

        let queries: Vec<usize> = (0..ds.n_queries()).collect();
        let p = self.search.params();
        let k = p.k;
        eprintln!("warming up...");
        run_pass(&searcher, &ds, &queries[..queries.len().min(50)], &p)?;
        eprintln!("timing {} runs of {} queries...", self.runs, queries.len());
        let main = one.install(|| median_pass(&searcher, &ds, &queries, &p, self.runs))?;
        let recall = mean(
            queries
                .iter()
                .zip(&main.results)
                .map(|(&j, r)| recall_at_k(r, ds.gt_ids(j).unwrap_or(&[]), 10)),
        );
        let ndcg = ds.has_qrels().then(|| {
            mean(queries.iter().zip(&main.results).map(|(&j, r)| {
                let ids: Vec<&str> = r.iter().map(|&d| ds.doc_id(d)).collect();
                ds.qrels(j).map(|q| ndcg_at_k(&ids, q, 10)).unwrap_or(0.0)
            }))
        });

        // The same queries with one query's work split over several threads.
        let search_threads = self
            .search_threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        let multi = Searcher::new(searcher.params().clone(), searcher.shards().to_vec())?
            .with_search_threads(search_threads)?;
        let mt = median_pass(&multi, &ds, &queries, &p, self.runs)?;
        let same = mt.results == main.results;
        drop(multi);

        let n_exact = if self.exact_queries == 0 {
            queries.len()
        } else {
            self.exact_queries.min(queries.len())
        };
        let exact_p = SearchParams {
            plan: Plan::Exact,
            ..SearchParams::new(k)
        };
        eprintln!("exact baseline over {n_exact} queries...");
        let exact = one.install(|| {
            median_pass(
                &searcher,
                &ds,
                &queries[..n_exact],
                &exact_p,
                self.runs.min(3),
            )
        })?;
        let exact_recall = mean(
            queries
                .iter()
                .zip(&exact.results)
                .map(|(&j, r)| recall_at_k(r, ds.gt_ids(j).unwrap_or(&[]), 10)),
        );
        let q_tokens: f64 = mean(
            queries[..n_exact]
                .iter()
                .map(|&j| (ds.query_tokens(j).len() / ds.dim()) as f64),
        );
        let exact_gflops =
            2.0 * q_tokens * ds.n_doc_tokens() as f64 * ds.dim() as f64 * exact.qps / 1e9;

        let mut report = json!({
            "data": ds.path().display().to_string(),
            "n_docs": ds.n_docs(),
            "n_queries": queries.len(),
            "n_doc_tokens": ds.n_doc_tokens(),
            "build_s": build_s,
            "open_s": open_s,
            "index_bytes": bytes,
            "index_bytes_per_doc": bytes as f64 / ds.n_docs() as f64,
            "fde_docs_per_s_1thread": fde_docs_per_s_1thread,
            "recall_at_10": recall,
            "qps": main.qps,
            "p50_ms": main.p50_ms,
            "p99_ms": main.p99_ms,
            "exact_qps": exact.qps,
            "exact_recall_at_10": exact_recall,
            "exact_queries": n_exact,
            "exact_gflops": exact_gflops,
            "speedup_vs_exact": main.qps / exact.qps,
            "search_threads": search_threads,
            "qps_all_threads": mt.qps,
            "p50_ms_all_threads": mt.p50_ms,
            "all_threads_same_results": same,
            "build_docs_per_s": build_docs_per_s,
            "rss_anon_bytes_after_build": rss_after_build,
            "rss_anon_bytes_after_search": rss_anon_bytes(None),
            "index_bytes_per_token_byte": bytes as f64 / (ds.n_doc_tokens() * ds.dim() * 2) as f64,
            "codebook_size": searcher.shards().iter().find_map(|s| s.codebook().map(|b| b.len())),
            "ivf_bytes": searcher.shards().iter().map(|s| s.ivf_bytes()).sum::<usize>(),
            // Two-level assignment against brute force, on the first 20k tokens of the corpus.
            "assign_agreement": searcher.shards().iter().find_map(|s| s.codebook()).map(|b| {
                b.assign_agreement(&sample_tokens)
            }),
            "plan": main.plan.unwrap_or(Plan::Auto).name(),
            "kernel": format!("{:?}", kernel_level()),
            "runs": self.runs,
            "params": {"index": chamfer_index::shard::persisted::PersistedParamsV1::from(&params), "search": p},
        });
        if let Some(n) = ndcg {
            report["ndcg_at_10"] = json!(n);
        }
        eprintln!(
            "{} docs: recall@10 {:.4}, {:.0} qps (p50 {:.3} ms, p99 {:.3} ms), {:.0} qps on {} threads, exact {:.1} qps (recall {:.4}), speed-up {:.1}x, plan {}",
            ds.n_docs(), recall, main.qps, main.p50_ms, main.p99_ms, mt.qps, search_threads, exact.qps, exact_recall, main.qps / exact.qps, report["plan"]
        );
        println!("{}", serde_json::to_string(&report)?);
        Ok(())
    }
}
