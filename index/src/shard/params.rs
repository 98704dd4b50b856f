//! The parameters that define a shard's bytes (FDE configuration, graph, codebook) and the maxima every
//! client-chosen value is held to before anything is allocated for it.
use crate::fde::FdeConfig;
use crate::hnsw::VectorStorage;
use crate::{IndexError, Result};

/// Largest graph degree `hnsw.m` (hnsw_rs exits the process beyond 256 connections).
pub const MAX_HNSW_M: usize = 128;
/// Largest `hnsw.ef_construction` (the build beam; the default is 100).
pub const MAX_EF_CONSTRUCTION: usize = 4096;
/// Largest token codebook (codes are u16; bench runs use up to 2^16).
pub const MAX_CODEBOOK_SIZE: usize = 1 << 16;
/// Largest `hnsw.min_docs`. It is a threshold, not a size: larger values would only mean "never build a graph",
/// which this value already means in practice (no shard holds 2^40 documents).
pub const MAX_MIN_DOCS: usize = 1 << 40;
/// Most token vectors in one shard document. Token counts are stored as u32, and the encoder's per-document
/// scratch grows with tokens x repetitions; the server's `limits.max_tokens_per_doc` may not exceed it.
pub const MAX_DOC_TOKENS: usize = 1 << 16;
pub use crate::tokens::MAX_TOKEN_VALUE;

/// Parameters of the candidate graph. (No serde: the files store [`super::persisted::PersistedHnswV1`], the REST
/// API its own DTOs.)
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HnswParams {
    /// How many FDE repetitions (a Matryoshka prefix) the graph indexes.
    pub prefix_repetitions: usize,
    /// Graph degree (hnsw_rs max_nb_connection).
    pub m: usize,
    /// Beam width while building.
    pub ef_construction: usize,
    /// Precision of the graph's vectors.
    pub storage: VectorStorage,
    /// Shards with fewer documents get no graph (a scan of their FDEs is faster).
    pub min_docs: usize,
}

impl Default for HnswParams {
    fn default() -> Self {
        // min_docs: measured on 100k synthetic documents, the centroid scan still beats the graph plan in both
        // recall and speed (BENCHMARKS.md), so only shards well beyond that get a graph by default.
        HnswParams {
            prefix_repetitions: 4,
            m: 16,
            ef_construction: 100,
            storage: VectorStorage::F16,
            min_docs: 250_000,
        }
    }
}

/// Everything that defines an index's bytes: the FDE configuration (with its seed), the graph parameters and
/// the token codebook size. (No serde: files store [`super::persisted::PersistedParamsV1`].)
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexParams {
    /// The FDE configuration (dimension, repetitions, projections, seed).
    pub fde: FdeConfig,
    /// The candidate graph's parameters.
    pub hnsw: HnswParams,
    /// Most centroids of the token codebook (0: no codes; see [`crate::codebook`]). The codebook gets
    /// `min(codebook_size, 2^floor(log2(16 sqrt(tokens))))`: it grows with the corpus up to this cap.
    pub codebook_size: usize,
}

/// Default cap of the token codebook size: the largest u16 codes allow, so that the size rule decides.
pub const DEFAULT_CODEBOOK_SIZE: usize = MAX_CODEBOOK_SIZE;
/// The codebook size of parameters persisted before the field existed (shards then had no codebook).
pub const LEGACY_CODEBOOK_SIZE: usize = 4096;

impl IndexParams {
    /// The defaults for token dimension `dim`: FDE (R, k_sim, d_proj) = (20, 5, 16), seed 1, empty partitions
    /// left empty, and a graph over the first 4 repetitions.
    pub fn new(dim: usize) -> Self {
        IndexParams {
            fde: FdeConfig::paper_default(dim),
            hnsw: HnswParams::default(),
            codebook_size: DEFAULT_CODEBOOK_SIZE,
        }
    }

    /// Checks every field against its documented maximum (the `MAX_*` constants of this module and of
    /// [`crate::fde`]); the [`IndexError::InvalidConfig`] message names the first bad field, its value and the limit.
    pub fn validate(&self) -> Result<()> {
        self.fde.validate()?;
        let h = &self.hnsw;
        let range = |field: &str, value: usize, min: usize, max: usize| {
            if value < min || value > max {
                Err(IndexError::InvalidConfig(format!(
                    "{field} must be in {min}..={max}, got {value}"
                )))
            } else {
                Ok(())
            }
        };
        range(
            "hnsw prefix_repetitions (at most the FDE's num_repetitions)",
            h.prefix_repetitions,
            1,
            self.fde.num_repetitions,
        )?;
        if self.fde.final_projection_dimension.is_some() {
            return Err(IndexError::InvalidConfig(
                "final_projection_dimension mixes all repetitions, so the FDE is no longer prefix-truncatable: \
                 an index needs it unset"
                    .into(),
            ));
        }
        range("codebook_size", self.codebook_size, 0, MAX_CODEBOOK_SIZE)?;
        range("hnsw m", h.m, 1, MAX_HNSW_M)?;
        range(
            "hnsw ef_construction",
            h.ef_construction,
            1,
            MAX_EF_CONSTRUCTION,
        )?;
        range("hnsw min_docs", h.min_docs, 0, MAX_MIN_DOCS)?;
        Ok(())
    }

    /// Length of the Matryoshka prefix of `reps` repetitions.
    pub fn prefix_dim(&self, reps: usize) -> usize {
        reps * self.fde.repetition_dim()
    }
}
