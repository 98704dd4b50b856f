//! Token codebooks for centroid-interaction scoring and the inverted file (the idea of PLAID's first stage).
//!
//! Every document token is replaced by the id of its nearest centroid (2 bytes instead of 256). For a query,
//! a `K x W` table of query-token x centroid inner products is computed once; a document's approximate Chamfer
//! score is then `sum_q max_{c in codes(doc)} <q, centroid_c>`: one table-row load and one max per document
//! token. That is ~100x cheaper than the exact score and a much tighter approximation of the Chamfer ranking
//! than the FDE (BENCHMARKS.md).
//!
//! **Size.** A codebook grows with the corpus, by ColBERT's rule: `2^floor(log2(16 sqrt(tokens)))` centroids
//! ([`Codebook::size_for_tokens`]), capped by the requested size and by 2^16 (codes are u16). A finer codebook is
//! a better ranker and makes each inverted list a smaller share of the collection.
//!
//! **Two levels.** Codebooks larger than [`FLAT_MAX`] centroids are trained and searched in two levels: about
//! `sqrt(K)` coarse centroids, each owning a contiguous range of fine centroids trained on the tokens it holds
//! (hierarchical k-means). Assigning a token scores the coarse centroids and then only the fine centroids of its
//! [`ASSIGN_PROBE`] best coarse clusters: `sqrt(K) + 4 K / sqrt(K)` inner products instead of `K` (about 1280
//! instead of 65,536 at 2^16), which is what makes indexing a million documents take minutes instead of hours.
//! The price is that a token occasionally gets the second-nearest centroid; `chamfer bench` reports the share
//! (`assign_agreement`).
//!
//! **Bytes.** [`Codebook::to_bytes`] / [`Codebook::from_bytes`] are the codebook's on-disk form (a shard's
//! `codebook` section): `u32 K, u32 Kc, u32 dim, f32 training error` (little-endian; the error NaN when unknown),
//! `f32[K * dim]` fine centroids, then when
//! `Kc > 0` `f32[Kc * dim]` coarse centroids and `u32[Kc + 1]` fine-range starts. Centroids are unit vectors.
//!
//! Files: `train` (k-means, sizes, drift), `assign` (nearest centroids), `table` (per-query tables), `bytes`
//! (the on-disk form).
mod assign;
mod bytes;
mod table;
mod train;

pub use table::QueryTable;

/// Tokens per k-means sample, per centroid.
pub const SAMPLE_PER_CENTROID: usize = 16;
const KMEANS_ITERS: usize = 4;
/// Rows per matrix-product block when assigning codes.
const BLOCK: usize = 512;
/// Rows per block of the two-level assignment (larger blocks group more tokens per coarse cluster).
const BLOCK_TWO_LEVEL: usize = 4096;
/// Largest codebook trained and searched flat (one level); larger ones get a coarse level.
pub const FLAT_MAX: usize = 4096;
/// Coarse clusters whose fine centroids a token is compared with in a two-level assignment.
pub const ASSIGN_PROBE: usize = 4;
/// Relative growth of the mean quantization error past which [`Codebook::drifted`] says a codebook no longer
/// fits the documents it codes.
pub const DRIFT_BOUND: f64 = 0.25;
/// Largest number of centroids (codes are u16).
pub const MAX_CENTROIDS: usize = 1 << 16;

/// Centroids (unit vectors, row-major `k x dim`), optionally with a coarse level over them.
#[derive(Clone, Debug, PartialEq)]
pub struct Codebook {
    dim: usize,
    centroids: Vec<f32>,
    /// The centroids as f16 16-row k-major panels (the kernel layout), for per-query tables.
    panels: Vec<half::f16>,
    coarse: Option<Coarse>,
    /// Mean quantization error of the training sample (see [`Codebook::quantization_error`]); None when unknown
    /// (codebooks rebuilt from bare centroids).
    train_error: Option<f32>,
}

/// The coarse level: `kc` centroids, coarse cluster `c` owning fine centroids `start[c]..start[c + 1]`.
#[derive(Clone, Debug, PartialEq)]
struct Coarse {
    centroids: Vec<f32>,
    start: Vec<u32>,
}

impl Codebook {
    fn with_coarse(dim: usize, centroids: Vec<f32>, coarse: Coarse) -> Codebook {
        Codebook {
            coarse: Some(coarse),
            ..Codebook::from_centroids(dim, centroids)
        }
    }

    /// Number of centroids.
    pub fn len(&self) -> usize {
        self.centroids.len() / self.dim.max(1)
    }
    /// True for an empty codebook.
    pub fn is_empty(&self) -> bool {
        self.centroids.is_empty()
    }
    /// Token dimension.
    pub fn dim(&self) -> usize {
        self.dim
    }
    /// Number of coarse centroids (0 for a flat codebook).
    pub fn coarse_len(&self) -> usize {
        self.coarse
            .as_ref()
            .map_or(0, |c| c.centroids.len() / self.dim.max(1))
    }
    /// The centroids, row-major.
    pub fn centroids(&self) -> &[f32] {
        &self.centroids
    }
}

#[cfg(test)]
mod tests;
