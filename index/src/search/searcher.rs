//! The [`Searcher`]: an immutable snapshot of shards, its query encoder and thread pool, and the search entry
//! points (built from the stages of `stages.rs`).
use std::sync::Arc;

use super::{DocFilter, DocKey, Hit, Plan, SearchParams, SearchStats, IVF_MIN_DOCS};
use crate::fde::{FdeConfig, FdeEncoder};
use crate::shard::{IndexParams, Shard};
use crate::tokens::TokenMatrix;
use crate::{IndexError, Result};

/// An immutable snapshot of shards sharing one [`IndexParams`]: cheap to build, safe to share across threads.
pub struct Searcher {
    params: IndexParams,
    /// The query encoder, shared by the searchers [`with_shards`](Self::with_shards) derives.
    encoder: Arc<FdeEncoder>,
    shards: Vec<Arc<Shard>>,
    /// Each shard's key ([`Shard::key`], else its position): the first half of a document's [`DocKey`].
    keys: Vec<u64>,
    /// (key, position), sorted by key.
    by_key: Vec<(u64, usize)>,
    /// The private pool of [`Searcher::with_search_threads`] (None: the caller's thread only).
    pool: Option<Arc<rayon::ThreadPool>>,
}

impl Searcher {
    /// A searcher over `shards`, which must all have been built with `params` and have distinct keys
    /// ([`Shard::key`]; a shard without one is keyed by its position in `shards`).
    pub fn new(params: IndexParams, shards: Vec<Arc<Shard>>) -> Result<Searcher> {
        params.validate()?;
        // fill_empty_partitions is a document-side option (the reference rejects it for queries); the query
        // encoder is otherwise identical, so the document setting is simply cleared here.
        let encoder = FdeEncoder::new(FdeConfig {
            fill_empty_partitions: false,
            ..params.fde.clone()
        })?;
        Searcher::assemble(params, Arc::new(encoder), shards, None)
    }

    /// A searcher over `shards` (as [`new`](Self::new) checks them) that shares this one's query encoder and
    /// thread pool instead of building them again: what a server does on every publish of a new snapshot.
    pub fn with_shards(&self, shards: Vec<Arc<Shard>>) -> Result<Searcher> {
        Searcher::assemble(
            self.params.clone(),
            Arc::clone(&self.encoder),
            shards,
            self.pool.clone(),
        )
    }

    fn assemble(
        params: IndexParams,
        encoder: Arc<FdeEncoder>,
        shards: Vec<Arc<Shard>>,
        pool: Option<Arc<rayon::ThreadPool>>,
    ) -> Result<Searcher> {
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
        let keys: Vec<u64> = shards
            .iter()
            .enumerate()
            .map(|(i, s)| s.key().unwrap_or(i as u64))
            .collect();
        let mut by_key: Vec<(u64, usize)> = keys.iter().copied().zip(0..).collect();
        by_key.sort_unstable();
        if let Some(w) = by_key.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(IndexError::Incompatible(format!(
                "shards {:?} and {:?} have the same key {}",
                shards[w[0].1].path(),
                shards[w[1].1].path(),
                w[0].0
            )));
        }
        Ok(Searcher {
            params,
            encoder,
            shards,
            keys,
            by_key,
            pool,
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

    pub(crate) fn pool(&self) -> Option<&rayon::ThreadPool> {
        self.pool.as_deref()
    }

    pub(crate) fn encoder(&self) -> &FdeEncoder {
        &self.encoder
    }

    /// True when `other` shares this searcher's query encoder (one derived from the other by
    /// [`with_shards`](Self::with_shards)).
    pub fn shares_encoder(&self, other: &Searcher) -> bool {
        Arc::ptr_eq(&self.encoder, &other.encoder)
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

    /// Every shard's key, by position.
    pub(crate) fn keys(&self) -> &[u64] {
        &self.keys
    }
    /// The key of the shard at `position` (its [`Shard::key`], else `position`).
    pub fn shard_key(&self, position: usize) -> u64 {
        self.keys[position]
    }
    /// The global key of a hit's document.
    pub fn doc_key(&self, hit: &Hit) -> DocKey {
        DocKey {
            shard: self.keys[hit.shard],
            doc: hit.doc,
        }
    }
    /// The position of the shard keyed `key`, if this searcher has it.
    pub fn shard_position(&self, key: u64) -> Option<usize> {
        let at = self.by_key.binary_search_by_key(&key, |&(k, _)| k).ok()?;
        Some(self.by_key[at].1)
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

    /// The `p.k` best documents for `query` (descending exact Chamfer score, ties by ascending [`DocKey`]).
    pub fn search(
        &self,
        query: TokenMatrix<'_>,
        p: &SearchParams,
        filter: Option<DocFilter<'_>>,
    ) -> Result<Vec<Hit>> {
        self.search_with_stats(query, p, filter).map(|(h, _)| h)
    }

    /// [`Searcher::search`] that gives up when `cancel` returns true: it is asked before each stage, before each
    /// shard and every [`CANCEL_CHECK_EVERY`](super::CANCEL_CHECK_EVERY) documents scored exactly (the exhaustive
    /// exact plan included), and a search it stops returns [`IndexError::Cancelled`]. `cancel` must be cheap (a
    /// flag or a clock read).
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
}
