//! The search knobs: plans, per-request parameters and their defaults and bounds.
use serde::{Deserialize, Serialize};

use crate::{IndexError, Result};

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
/// [`Searcher::search_with`](super::Searcher::search_with) asks its `cancel` hook once per this many documents scored exactly (or by
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
    pub(super) fn candidates_for(&self, n: usize) -> usize {
        self.candidates
            .unwrap_or(self.rerank_for(n) * DEFAULT_CANDIDATE_FACTOR)
            .max(self.rerank_for(n))
    }
}
