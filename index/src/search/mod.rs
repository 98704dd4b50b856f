//! Search plans over a snapshot of shards.
//!
//! Every plan ends with the same exact Chamfer re-rank ([`crate::kernels::chamfer`]); they differ in how the
//! documents to re-rank are found:
//!
//! * [`Plan::Exact`]: every document is scored exactly. The baseline, and the right choice for tiny collections.
//! * [`Plan::FdeScan`]: the query FDE is scored against every document's full FDE with a sparse,
//!   coordinate-major scan (the query FDE has at most `tokens x R` non-zero blocks); the best `rerank` go to the
//!   exact re-rank. Cost grows linearly but slowly with the collection; the pure-MUVERA baseline, and what
//!   [`Plan::Auto`] runs on shards without a codebook.
//! * [`Plan::CentroidScan`]: every document's token codes are scored by centroid interaction
//!   ([`crate::codebook`]: one table load and max per token); the best `rerank` go to the exact re-rank. Cheaper
//!   per document than the FDE scan and a closer approximation of Chamfer: the default for shards with a codebook
//!   below [`IVF_MIN_DOCS`] documents (and for version 1 shards, which have no inverted file).
//! * [`Plan::Ivf`]: the inverted file over the token codebook. The query's tokens are scored against every
//!   centroid (one `K x W` table); each query token probes its `nprobe` best centroids; the documents in those
//!   inverted lists are scored by the probed centroid scores, with an imputed score (the best unprobed
//!   centroid's) for query tokens whose probed lists miss a document (WARP's idea); the best `candidates` of them
//!   are re-scored by full centroid interaction over their codes and the best `rerank` re-ranked exactly.
//!   Sub-linear in the collection (a probe touches a share of documents that falls as the codebook grows with
//!   the corpus), and its re-rank depth is fixed in `k`, not grown with the collection: the default for shards
//!   with an inverted file of at least [`IVF_MIN_DOCS`] documents.
//! * [`Plan::Hnsw`]: the HNSW graph over a Matryoshka prefix of the FDE returns `candidates` documents, they are
//!   re-scored by centroid interaction (or the full FDE when the shard has no codebook), and the best `rerank` are
//!   re-ranked exactly. Used for shards with a graph (built on request, `hnsw.min_docs`) and no inverted file.
//!
//! [`Plan::Auto`] picks per shard: the inverted file where the shard has one and at least [`IVF_MIN_DOCS`]
//! documents, else HNSW where a graph exists, else the centroid scan (the FDE scan without a codebook); and exact
//! when the collection is no larger than the re-rank depth anyway. A tokens-only shard
//! ([`crate::shard::Coding::TokensOnly`]: no codebook, no FDE) is always searched exactly, whatever the plan.
//!
//! [`Searcher::with_search_threads`] splits one query's work (centroid table, candidate scoring, exact
//! re-rank, the exhaustive scan) over a private thread pool; the results are identical to one thread's.
//!
//! A filter is applied before any scoring (inside the HNSW walk), so `k` results come back whenever `k`
//! documents pass it.
use std::cmp::Ordering;
use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use rayon::prelude::*;

mod ivf;

use crate::codebook::{Codebook, QueryTable};
use crate::fde::{FdeConfig, FdeEncoder};
use crate::kernels::{self, PreparedQuery};
use crate::shard::{IndexParams, Shard};
use crate::sys::axpy::axpy_f16;
use crate::tokens::TokenMatrix;
use crate::{IndexError, Result};
use ivf::Probes;

/// Upper bound of `k` and of the candidate knobs.
pub const MAX_K: usize = 10_000;
/// Default exact re-rank depth bounds: `clamp(documents / 50, MIN, MAX)`. The approximate stages' errors
/// matter more as a collection grows denser near the top (BENCHMARKS.md), so the depth grows with it.
pub const DEFAULT_RERANK_MIN: usize = 128;
/// See [`DEFAULT_RERANK_MIN`].
pub const DEFAULT_RERANK_MAX: usize = 2048;
/// Default number of graph candidates, as a multiple of the re-rank depth.
pub const DEFAULT_CANDIDATE_FACTOR: usize = 3;
/// Default centroids probed per query token by the inverted-file plan, for a codebook of `k` centroids: one in
/// [`NPROBE_SHARE`] of them, within [`DEFAULT_NPROBE_MIN`]..=[`DEFAULT_NPROBE_MAX`]. A fixed count loses recall
/// as the codebook grows with the corpus (each token's near centroids spread over more of them): measured on
/// synthetic corpora, 16 probes held recall@10 0.985 at 100k documents (2^15 centroids) but 0.937 at 1M (2^16);
/// 64 probes at 1M gave 0.980 (BENCHMARKS.md).
pub fn default_nprobe(k: usize) -> usize {
    (k / NPROBE_SHARE).clamp(DEFAULT_NPROBE_MIN, DEFAULT_NPROBE_MAX)
}
/// See [`default_nprobe`].
pub const NPROBE_SHARE: usize = 1024;
/// See [`default_nprobe`].
pub const DEFAULT_NPROBE_MIN: usize = 16;
/// See [`default_nprobe`].
pub const DEFAULT_NPROBE_MAX: usize = 64;
/// Largest `nprobe`.
pub const MAX_NPROBE: usize = 1024;
/// Default exact re-rank depth of the inverted-file plan (at least `k`): fixed, not grown with the collection.
pub const DEFAULT_IVF_RERANK: usize = 256;
/// Default number of inverted-file candidates re-scored by full centroid interaction, as a multiple of the
/// re-rank depth.
pub const DEFAULT_IVF_CANDIDATE_FACTOR: usize = 16;
/// Shards with fewer documents are scanned (centroid scan) rather than probed by [`Plan::Auto`].
pub const IVF_MIN_DOCS: usize = 4096;
/// [`Searcher::search_with`] asks its `cancel` hook once per this many documents scored exactly (or by
/// centroid interaction), besides once per shard, per FDE-scan block and before the exact re-rank.
pub const CANCEL_CHECK_EVERY: usize = 256;

/// How to search.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Plan {
    /// Let the engine choose per shard (see the module documentation).
    #[default]
    Auto,
    /// Exhaustive exact Chamfer over every document.
    Exact,
    /// Sparse scan of all FDEs, then exact re-rank.
    FdeScan,
    /// Scan of all token codes (centroid interaction), then exact re-rank.
    CentroidScan,
    /// Inverted file over the token codebook, centroid interaction, exact re-rank.
    Ivf,
    /// HNSW over the FDE prefix, full-FDE re-score, exact re-rank.
    Hnsw,
}

impl Plan {
    /// Stable name (as in bench output).
    pub fn name(self) -> &'static str {
        match self {
            Plan::Auto => "auto",
            Plan::Exact => "exact",
            Plan::FdeScan => "fde_scan",
            Plan::CentroidScan => "centroid_scan",
            Plan::Ivf => "ivf",
            Plan::Hnsw => "hnsw",
        }
    }
}

/// Per-request knobs. `None` means the engine's default.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SearchParams {
    /// Number of results to return, 1 to [`MAX_K`] (10 000).
    pub k: usize,
    /// How to search (default [`Plan::Auto`]).
    pub plan: Plan,
    /// HNSW beam width (default: the number of candidates).
    pub ef: Option<usize>,
    /// Documents the graph returns per shard (default: 3 x rerank), or the inverted-file candidates re-scored by
    /// centroid interaction (default: 16 x rerank).
    pub candidates: Option<usize>,
    /// Documents re-ranked exactly (default: [`DEFAULT_IVF_RERANK`] when every shard is searched by its
    /// inverted file, else 2% of the collection within 128..=2048; at least k).
    pub rerank: Option<usize>,
    /// Matryoshka prefix (repetitions) used by the graph query; must equal the graph's (default).
    pub prefix_repetitions: Option<usize>,
    /// Centroids probed per query token by the inverted-file plan, 1 to [`MAX_NPROBE`] (default
    /// [`default_nprobe`] of the codebook size).
    pub nprobe: Option<usize>,
}

impl SearchParams {
    /// Defaults with `k` results.
    pub fn new(k: usize) -> Self {
        SearchParams {
            k,
            plan: Plan::Auto,
            ef: None,
            candidates: None,
            rerank: None,
            prefix_repetitions: None,
            nprobe: None,
        }
    }

    /// Range checks.
    pub fn validate(&self) -> Result<()> {
        let check = |name: &'static str, v: Option<usize>| match v {
            Some(v) if v == 0 || v > MAX_K => Err(IndexError::param(
                name,
                format!("must be in 1..={MAX_K}, got {v}"),
            )),
            _ => Ok(()),
        };
        check("k", Some(self.k))?;
        check("ef", self.ef)?;
        check("candidates", self.candidates)?;
        check("rerank", self.rerank)?;
        match self.nprobe {
            Some(v) if v == 0 || v > MAX_NPROBE => Err(IndexError::param(
                "nprobe",
                format!("must be in 1..={MAX_NPROBE}, got {v}"),
            )),
            _ => Ok(()),
        }
    }

    /// Exact re-rank depth of the inverted-file plan.
    pub fn ivf_rerank(&self) -> usize {
        self.rerank.unwrap_or(DEFAULT_IVF_RERANK).max(self.k)
    }
    /// Candidates the inverted-file plan re-scores by full centroid interaction.
    pub fn ivf_candidates(&self) -> usize {
        self.candidates
            .unwrap_or(self.ivf_rerank() * DEFAULT_IVF_CANDIDATE_FACTOR)
            .max(self.ivf_rerank())
    }

    /// Exact re-rank depth for a collection of `n` documents.
    pub fn rerank_for(&self, n: usize) -> usize {
        self.rerank
            .unwrap_or((n / 50).clamp(DEFAULT_RERANK_MIN, DEFAULT_RERANK_MAX))
            .max(self.k)
    }
    fn candidates_for(&self, n: usize) -> usize {
        self.candidates
            .unwrap_or(self.rerank_for(n) * DEFAULT_CANDIDATE_FACTOR)
            .max(self.rerank_for(n))
    }
}

/// One result: document `doc` of shard `shard` (indices into the searcher's shard list) with its exact score.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Hit {
    /// Index of the shard in the searcher's shard list.
    pub shard: usize,
    /// Index of the document within that shard.
    pub doc: usize,
    /// Exact Chamfer (MaxSim) score against the query; higher is better.
    pub score: f32,
}

/// What a search did (for benchmarks and metrics).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SearchStats {
    /// The plan that ran on the largest shard.
    pub plan: Option<Plan>,
    /// Documents scored exactly.
    pub reranked: usize,
}

/// A filter over (shard index, document index).
pub type DocFilter<'a> = &'a (dyn Fn(usize, usize) -> bool + Sync);

/// An immutable snapshot of shards sharing one [`IndexParams`]: cheap to build, safe to share across threads.
pub struct Searcher {
    params: IndexParams,
    encoder: FdeEncoder,
    shards: Vec<Arc<Shard>>,
    /// The private pool of [`Searcher::with_search_threads`] (None: the caller's thread only).
    pool: Option<Arc<rayon::ThreadPool>>,
}

/// Descending score, then ascending (shard, doc): the ground truth's tie rule.
fn by_score(a: &Hit, b: &Hit) -> Ordering {
    b.score
        .total_cmp(&a.score)
        .then(a.shard.cmp(&b.shard))
        .then(a.doc.cmp(&b.doc))
}

/// Keeps the best `n` hits (unordered).
fn keep_best(hits: &mut Vec<Hit>, n: usize) {
    if hits.len() > n {
        hits.select_nth_unstable_by(n - 1, by_score);
        hits.truncate(n);
    }
}

/// The query FDE's non-zero blocks: (offset into the FDE, values). A query token lands in one partition per
/// repetition, so at most `tokens x R` of the `R x 2^k_sim` blocks are non-zero.
struct SparseFde {
    block: usize,
    offsets: Vec<usize>,
    values: Vec<f32>,
}

impl SparseFde {
    fn new(fde: &[f32], block: usize) -> Self {
        let mut s = SparseFde {
            block,
            offsets: vec![],
            values: vec![],
        };
        for (b, chunk) in fde.chunks_exact(block).enumerate() {
            if chunk.iter().any(|&v| v != 0.0) {
                s.offsets.push(b * block);
                s.values.extend_from_slice(chunk);
            }
        }
        s
    }

    /// <query FDE, document FDE>, touching only the non-zero blocks.
    fn dot(&self, doc: &[half::f16]) -> f32 {
        self.offsets
            .iter()
            .zip(self.values.chunks_exact(self.block))
            .filter(|(&o, _)| o + self.block <= doc.len())
            .map(|(&o, q)| kernels::dot_f32_f16(q, &doc[o..o + self.block]))
            .sum()
    }

    /// Scores every document of `shard` into `scores` (coordinate-major scan); `check` runs before each
    /// non-zero block and stops the scan when it fails.
    fn scan(
        &self,
        shard: &Shard,
        scores: &mut [f32],
        check: &dyn Fn() -> Result<()>,
    ) -> Result<()> {
        let n = shard.len();
        let layout = shard.scan_layout();
        scores.iter_mut().for_each(|s| *s = 0.0);
        for (&o, q) in self
            .offsets
            .iter()
            .zip(self.values.chunks_exact(self.block))
            .filter(|(&o, _)| o + self.block <= shard.fde_dim())
        {
            check()?;
            for (c, &qv) in q.iter().enumerate() {
                if qv != 0.0 {
                    let row = &layout[(o + c) * n..(o + c + 1) * n];
                    axpy_f16(qv, row, scores);
                }
            }
        }
        Ok(())
    }
}

/// Scores documents `0..n` in steps of `step` documents (`check` before each), a step split into one range per
/// thread of `pool` (or scored here without one), keeping the best `keep` of `out` plus what `score_range` returns.
#[allow(clippy::too_many_arguments)]
fn scan_ranges(
    n: usize,
    step: usize,
    pool: Option<&rayon::ThreadPool>,
    check: &dyn Fn() -> Result<()>,
    keep: usize,
    out: &mut Vec<Hit>,
    score_range: &(dyn Fn(std::ops::Range<usize>) -> Vec<Hit> + Sync),
) -> Result<()> {
    let threads = pool.map_or(1, |p| p.current_num_threads());
    let mut hits: Vec<Hit> = Vec::new();
    for from in (0..n).step_by(step.max(1)) {
        check()?;
        let to = (from + step).min(n);
        if pool.is_some() {
            let per = step.div_ceil(threads).max(1);
            let parts: Vec<Vec<Hit>> = in_pool(pool, || {
                (from..to)
                    .step_by(per)
                    .collect::<Vec<_>>()
                    .into_par_iter()
                    .map(|a| score_range(a..(a + per).min(to)))
                    .collect()
            });
            parts.into_iter().for_each(|h| hits.extend(h));
        } else {
            hits.extend(score_range(from..to));
        }
        keep_best(&mut hits, keep);
    }
    out.extend(hits);
    Ok(())
}

/// Runs `f` in `pool` (its parallel iterators then use the pool's threads), or here without one.
fn in_pool<R: Send>(pool: Option<&rayon::ThreadPool>, f: impl FnOnce() -> R + Send) -> R {
    match pool {
        Some(p) => p.install(f),
        None => f(),
    }
}

impl Searcher {
    /// A searcher over `shards`, which must all have been built with `params`.
    pub fn new(params: IndexParams, shards: Vec<Arc<Shard>>) -> Result<Searcher> {
        params.validate()?;
        for s in &shards {
            if s.params() != &params {
                return Err(IndexError::Incompatible(format!(
                    "shard {:?} was built with different parameters (FDE config, seed or graph) than the index",
                    s.path()
                )));
            }
            // The FDE scan is the default plan only for graph-less shards without a codebook: prepare its
            // coordinate-major copy now for those, so the first query does not pay for it (others build it lazily
            // if the plan is forced).
            if s.graph().is_none() && s.codebook().is_none() && !s.is_empty() {
                s.scan_layout();
            }
        }
        // fill_empty_partitions is a document-side option (the reference rejects it for queries); the query
        // encoder is otherwise identical, so the document setting is simply cleared here.
        let encoder = FdeEncoder::new(FdeConfig {
            fill_empty_partitions: false,
            ..params.fde.clone()
        })?;
        Ok(Searcher {
            params,
            encoder,
            shards,
            pool: None,
        })
    }

    /// Splits each query's work over `threads` threads of a private pool (1: the caller's thread only). The
    /// results are identical to one thread's: only independent per-document and per-centroid work is split.
    pub fn with_search_threads(mut self, threads: usize) -> Result<Searcher> {
        self.pool = if threads <= 1 {
            None
        } else {
            Some(Arc::new(
                rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .thread_name(|i| format!("chamfer-search-{i}"))
                    .build()
                    .map_err(|e| IndexError::InvalidConfig(format!("search thread pool: {e}")))?,
            ))
        };
        Ok(self)
    }

    /// Shares `pool` (see [`with_search_threads`](Self::with_search_threads)) instead of building one.
    pub fn with_search_pool(mut self, pool: Option<Arc<rayon::ThreadPool>>) -> Searcher {
        self.pool = pool;
        self
    }

    /// Threads one query may use.
    pub fn search_threads(&self) -> usize {
        self.pool.as_ref().map_or(1, |p| p.current_num_threads())
    }

    /// The index parameters.
    pub fn params(&self) -> &IndexParams {
        &self.params
    }
    /// The shards, in hit order.
    pub fn shards(&self) -> &[Arc<Shard>] {
        &self.shards
    }
    /// Total documents.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.len()).sum()
    }
    /// True without documents.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The plan `requested` resolves to for `shard` (see [`Plan::Auto`]).
    pub fn resolve_plan(&self, requested: Plan, shard: &Shard, rerank: usize) -> Plan {
        match requested {
            Plan::Auto if self.len() <= rerank => Plan::Exact,
            // A tokens-only shard (no codebook, no FDE) has nothing to approximate with.
            _ if shard.codebook().is_none() && shard.fde_dim() == 0 => Plan::Exact,
            Plan::Auto if shard.has_ivf() && shard.len() >= IVF_MIN_DOCS => Plan::Ivf,
            Plan::Ivf if shard.has_ivf() => Plan::Ivf,
            Plan::Auto | Plan::Hnsw if shard.graph().is_some() => Plan::Hnsw,
            Plan::Auto | Plan::Hnsw | Plan::CentroidScan | Plan::Ivf
                if shard.codebook().is_some() =>
            {
                Plan::CentroidScan
            }
            Plan::FdeScan if shard.fde_dim() == 0 && shard.codebook().is_some() => {
                Plan::CentroidScan
            }
            Plan::Auto | Plan::Hnsw | Plan::CentroidScan | Plan::Ivf => Plan::FdeScan,
            p => p,
        }
    }

    /// The `p.k` best documents for `query` (descending exact Chamfer score).
    pub fn search(
        &self,
        query: TokenMatrix<'_>,
        p: &SearchParams,
        filter: Option<DocFilter<'_>>,
    ) -> Result<Vec<Hit>> {
        self.search_with_stats(query, p, filter).map(|(h, _)| h)
    }

    /// [`Searcher::search`] that gives up when `cancel` returns true: it is asked before each stage, before each
    /// shard and every [`CANCEL_CHECK_EVERY`] documents scored exactly (the exhaustive exact plan included), and
    /// a search it stops returns [`IndexError::Cancelled`]. `cancel` must be cheap (a flag or a clock read).
    pub fn search_with(
        &self,
        query: TokenMatrix<'_>,
        p: &SearchParams,
        filter: Option<DocFilter<'_>>,
        cancel: &dyn Fn() -> bool,
    ) -> Result<Vec<Hit>> {
        self.search_impl(query, p, filter, cancel).map(|(h, _)| h)
    }

    /// [`Searcher::search`], also reporting what ran.
    pub fn search_with_stats(
        &self,
        query: TokenMatrix<'_>,
        p: &SearchParams,
        filter: Option<DocFilter<'_>>,
    ) -> Result<(Vec<Hit>, SearchStats)> {
        self.search_impl(query, p, filter, &|| false)
    }

    fn search_impl(
        &self,
        query: TokenMatrix<'_>,
        p: &SearchParams,
        filter: Option<DocFilter<'_>>,
        cancel: &dyn Fn() -> bool,
    ) -> Result<(Vec<Hit>, SearchStats)> {
        // `cancel` is not Sync: it is only asked on this thread, between the parallel steps.
        let pool = self.pool.as_deref();
        let par = pool.is_some();
        let check = || {
            if cancel() {
                Err(IndexError::Cancelled("the search was stopped"))
            } else {
                Ok(())
            }
        };
        p.validate()?;
        let dim = self.params.fde.dimension;
        if query.dim() != dim {
            return Err(IndexError::DimensionMismatch {
                expected: dim,
                got: query.dim(),
            });
        }
        if let Some(r) = p.prefix_repetitions {
            if r != self.params.hnsw.prefix_repetitions {
                return Err(IndexError::param(
                    "prefix_repetitions",
                    format!(
                        "the graph indexes a {}-repetition prefix, got {r}",
                        self.params.hnsw.prefix_repetitions
                    ),
                ));
            }
        }
        let rerank = p.rerank_for(self.len());
        let pass = |s: usize, d: usize| filter.is_none_or(|f| f(s, d));
        let prepared = PreparedQuery::new(query.as_slice(), dim);
        let mut stats = SearchStats::default();
        let largest = (0..self.shards.len()).max_by_key(|&i| self.shards[i].len());
        // Stage 1: candidates with an approximate (FDE) score; exact plans score directly.
        let mut approx: Vec<Hit> = Vec::new();
        let mut exact: Vec<Hit> = Vec::new();
        let plans: Vec<Plan> = self
            .shards
            .iter()
            .map(|s| self.resolve_plan(p.plan, s, rerank))
            .collect();
        let sparse = if plans
            .iter()
            .any(|&pl| matches!(pl, Plan::FdeScan | Plan::Hnsw))
        {
            let fde = self.encoder.encode_query(query)?;
            SparseFde::new(&fde, self.params.fde.block_dim())
        } else {
            SparseFde {
                block: self.params.fde.block_dim(),
                offsets: vec![],
                values: vec![],
            }
        };
        // The inverted-file plan's re-rank depth is fixed in k; the scans' grows with the collection. Small
        // shards scanned by centroid interaction beside inverted files (a server's memtable next to its flushed
        // shards) compete on the same scores as the inverted-file candidates, so they keep the fixed depth.
        let rerank = if plans
            .iter()
            .zip(&self.shards)
            .filter(|(_, s)| !s.is_empty())
            .all(|(&pl, s)| {
                matches!(pl, Plan::Ivf | Plan::Exact)
                    || (pl == Plan::CentroidScan && s.len() < IVF_MIN_DOCS)
            })
            && plans.contains(&Plan::Ivf)
        {
            p.ivf_rerank()
        } else {
            rerank
        };
        // One centroid table per distinct codebook (shards of one collection share theirs).
        let mut tables: Vec<(Arc<Codebook>, QueryTable, Option<Probes>)> = Vec::new();
        let mut table_of: Vec<Option<usize>> = vec![None; self.shards.len()];
        let mut ivf_hits: Vec<Hit> = Vec::new();
        let nprobe = |k: usize| p.nprobe.unwrap_or_else(|| default_nprobe(k));
        let threads = pool.map_or(1, |p| p.current_num_threads());
        let mut scores = Vec::new();
        for (si, shard) in self.shards.iter().enumerate() {
            if shard.is_empty() {
                continue;
            }
            check()?;
            let plan = plans[si];
            if Some(si) == largest {
                stats.plan = Some(plan);
            }
            let at = match (plan, shard.codebook_arc()) {
                (Plan::CentroidScan | Plan::Ivf | Plan::Hnsw, Some(book)) => Some(
                    match tables.iter().position(|(b, ..)| Arc::ptr_eq(b, book)) {
                        Some(at) => at,
                        None => {
                            let table =
                                in_pool(pool, || book.query_table_par(query.as_slice(), threads));
                            tables.push((Arc::clone(book), table, None));
                            tables.len() - 1
                        }
                    },
                ),
                _ => None,
            };
            table_of[si] = at;
            if let (Plan::Ivf, Some(at)) = (plan, at) {
                if tables[at].2.is_none() {
                    let n = nprobe(tables[at].1.centroids());
                    tables[at].2 = Some(Probes::new(&tables[at].1, n));
                }
            }
            let table = at.map(|a| &tables[a].1);
            match plan {
                Plan::Exact | Plan::Auto => {
                    let scored = AtomicUsize::new(0);
                    let score_range = |r: std::ops::Range<usize>| -> Vec<Hit> {
                        let mut hits: Vec<Hit> = r
                            .filter(|&d| pass(si, d))
                            .inspect(|_| {
                                scored.fetch_add(1, AtomicOrdering::Relaxed);
                            })
                            .map(|d| Hit {
                                shard: si,
                                doc: d,
                                score: kernels::chamfer(
                                    &prepared,
                                    shard.packed_tokens(d),
                                    shard.n_tokens(d),
                                ),
                            })
                            .collect();
                        keep_best(&mut hits, p.k);
                        hits
                    };
                    scan_ranges(
                        shard.len(),
                        CANCEL_CHECK_EVERY * threads,
                        pool,
                        &check,
                        p.k,
                        &mut exact,
                        &score_range,
                    )?;
                    stats.reranked += scored.into_inner();
                }
                Plan::Ivf => {
                    let probes = at.and_then(|a| tables[a].2.as_ref()).ok_or_else(|| {
                        IndexError::param("plan", "this shard has no token codebook")
                    })?;
                    let hits = probes.gather(shard, si, p.ivf_candidates(), filter, &check)?;
                    ivf_hits.extend(hits);
                }
                Plan::FdeScan => {
                    let sp = &sparse;
                    scores.resize(shard.len(), 0.0);
                    sp.scan(shard, &mut scores, &check)?;
                    let mut hits: Vec<Hit> = scores
                        .iter()
                        .enumerate()
                        .filter(|&(d, _)| pass(si, d))
                        .map(|(d, &score)| Hit {
                            shard: si,
                            doc: d,
                            score,
                        })
                        .collect();
                    keep_best(&mut hits, rerank);
                    approx.extend(hits);
                }
                Plan::CentroidScan => {
                    let table = table.ok_or_else(|| {
                        IndexError::param("plan", "this shard has no token codebook")
                    })?;
                    let n = shard.len();
                    let score_range = |r: std::ops::Range<usize>| -> Vec<Hit> {
                        let mut hits: Vec<Hit> = r
                            .filter(|&d| pass(si, d))
                            .map(|d| Hit {
                                shard: si,
                                doc: d,
                                score: table.score(shard.codes(d)),
                            })
                            .collect();
                        keep_best(&mut hits, rerank);
                        hits
                    };
                    scan_ranges(
                        n,
                        CANCEL_CHECK_EVERY * 16 * threads,
                        pool,
                        &check,
                        rerank,
                        &mut approx,
                        &score_range,
                    )?;
                }
                Plan::Hnsw => {
                    let sp = &sparse;
                    let graph = shard
                        .graph()
                        .ok_or_else(|| IndexError::param("plan", "this shard has no HNSW graph"))?;
                    let pdim = graph.prefix_dim();
                    let mut q = vec![0f32; pdim];
                    for (&o, v) in sp.offsets.iter().zip(sp.values.chunks_exact(sp.block)) {
                        if o < pdim {
                            q[o..o + sp.block].copy_from_slice(v);
                        }
                    }
                    let norm = q.iter().map(|v| v * v).sum::<f32>().sqrt();
                    if norm > 0.0 {
                        q.iter_mut().for_each(|v| *v /= norm);
                    }
                    let n = p.candidates_for(self.len()).min(shard.len());
                    let ef = p.ef.unwrap_or(n).max(n);
                    let f = |d: usize| pass(si, d);
                    let found =
                        graph.search(&q, n, ef, if filter.is_some() { Some(&f) } else { None });
                    // Re-score the graph's candidates with the sharper signal the shard has: centroid interaction
                    // when it has a codebook, else the full FDE.
                    match table {
                        Some(table) => {
                            approx.extend(found.into_iter().map(|(d, _)| Hit {
                                shard: si,
                                doc: d,
                                score: table.score(shard.codes(d)),
                            }));
                        }
                        None => approx.extend(found.into_iter().map(|(d, _)| Hit {
                            shard: si,
                            doc: d,
                            score: sp.dot(shard.fde(d)),
                        })),
                    }
                }
            }
        }
        // The inverted-file candidates of every shard compete on their imputed scores; the best are re-scored by
        // full centroid interaction over their codes.
        if !ivf_hits.is_empty() {
            check()?;
        }
        keep_best(&mut ivf_hits, p.ivf_candidates());
        let interaction = |h: &mut Hit| {
            if let Some(a) = table_of[h.shard] {
                h.score = tables[a].1.score(self.shards[h.shard].codes(h.doc));
            }
        };
        if par {
            in_pool(pool, || {
                ivf_hits
                    .par_iter_mut()
                    .with_min_len(64)
                    .for_each(interaction)
            });
        } else {
            ivf_hits.iter_mut().for_each(interaction);
        }
        approx.extend(ivf_hits);
        // Stage 2: the best `rerank` approximate candidates over all shards are re-ranked exactly.
        check()?;
        keep_best(&mut approx, rerank);
        stats.reranked += approx.len();
        let rescore = |h: &mut Hit| {
            let shard = &self.shards[h.shard];
            h.score =
                kernels::chamfer(&prepared, shard.packed_tokens(h.doc), shard.n_tokens(h.doc));
        };
        for chunk in approx.chunks_mut(CANCEL_CHECK_EVERY * threads) {
            check()?;
            if par {
                in_pool(pool, || {
                    chunk.par_iter_mut().with_min_len(8).for_each(rescore)
                });
            } else {
                chunk.iter_mut().for_each(rescore);
            }
        }
        exact.extend(approx);
        keep_best(&mut exact, p.k);
        exact.sort_by(by_score);
        Ok((exact, stats))
    }
}
