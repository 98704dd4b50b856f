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
//!
//! # Stages
//!
//! A search is cut the way tantivy cuts one (`Query` -> `Weight` -> `Collector` per segment, then
//! `merge_fruits`), with plans in the place of queries:
//!
//! 1. A query context (`context.rs`) is built once per query: the validated knobs, the prepared query tokens, the
//!    plan each shard resolves to and the [`Limits`] (re-rank depth, candidate counts). The centroid table of a
//!    codebook is built the first time a shard asks for it (once per distinct codebook), the query FDE only when
//!    a plan needs it (the FDE scan, the graph).
//! 2. Each non-empty shard is handed to its plan's candidate source (`exact.rs`, `ivf.rs`, `centroid_scan.rs`,
//!    `fde_scan.rs`, `hnsw.rs`, behind one small trait in `source.rs`), which yields its scored candidates: exact
//!    hits, inverted-file candidates with their imputed scores, or candidates with an approximate score.
//! 3. The collector (`collector.rs`) merges them across shards: the inverted-file candidates compete on their
//!    imputed scores for the `candidates` slots and are re-scored by centroid interaction
//!    ([`Searcher::local_candidates`] stops here: what a node of a cluster sends), the best `rerank` of all
//!    approximate candidates are re-ranked exactly ([`Searcher::rerank_exact`]), and the best `k` of those and
//!    of the exact hits are the answer.
//!
//! Every cut breaks ties on a global key ([`DocKey`]: the shard's key, then the document), never on a position
//! in a list: a shard's key is the one its owner gave it ([`Shard::set_key`]: the server's segment id), else its
//! position in the searcher. So two rounds over several searchers (candidates from each, one re-rank) can give
//! exactly the result of one searcher over all their shards.
//!
//! Files: `params.rs` (knobs, defaults), `searcher.rs` (the snapshot of shards and the public entry points),
//! `context.rs`, `source.rs`, the five sources, `collector.rs` (orders and cuts), `stages.rs` (the pipeline and
//! the stages callable on their own).
mod centroid_scan;
mod collector;
mod context;
mod exact;
mod fde_scan;
mod hnsw;
mod ivf;
mod params;
mod searcher;
mod source;
mod stages;

pub use context::Limits;
pub use params::*;
pub use searcher::Searcher;
pub use stages::{Candidate, LocalCandidates};

#[cfg(doc)]
use crate::shard::Shard;

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

/// A document's global key: its shard's key ([`Searcher::shard_key`]) and its index in that shard. Equal scores
/// are ordered by ascending key everywhere in a search.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DocKey {
    /// The shard's key (the server's segment id; else the shard's position in the searcher).
    pub shard: u64,
    /// Index of the document within that shard.
    pub doc: usize,
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

#[cfg(test)]
mod tests;
