//! Collection bodies: create (with FDE, graph and codebook parameters), describe / list (parameters and
//! statistics), drop.
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use chamfer_index::fde::ProjectionType;
use chamfer_index::shard::VectorStorage;

use crate::core::input::CollectionParamsInput;
use crate::core::CollectionInfo;

/// `POST /v1/collections`.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"name": "docs", "dimension": 128, "fde": {"num_repetitions": 20}, "hnsw": {"m": 16}}))]
pub struct CreateCollection {
    /// 1-64 characters of `[A-Za-z0-9_-]`, not starting with '-'.
    #[schema(pattern = "^[A-Za-z0-9_][A-Za-z0-9_-]{0,63}$")]
    pub name: String,
    /// Token vector dimension.
    #[schema(minimum = 1)]
    pub dimension: usize,
    /// FDE parameters; unset fields take the defaults.
    #[serde(default)]
    pub fde: FdeParamsIn,
    /// Graph parameters; unset fields take the defaults.
    #[serde(default)]
    pub hnsw: HnswParamsIn,
    /// Most centroids of the token codebook, 0-{MAX_CODEBOOK_SIZE} (0: no codes; the codebook grows with the
    /// corpus up to this cap).
    #[serde(default)]
    pub codebook_size: Option<usize>,
}

/// FDE parameters of a new collection (unset: the engine's default, listed as each field's `default`).
#[derive(Clone, Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FdeParamsIn {
    /// Repetitions R of the FDE (independent estimates, summed).
    pub num_repetitions: Option<usize>,
    /// SimHash hyperplanes per repetition: 2^n partitions each.
    pub num_simhash_projections: Option<u32>,
    /// Part of the index: stored, never changes.
    pub seed: Option<u64>,
    /// Inner projection of each token.
    pub projection_type: Option<ProjectionTypeDto>,
    /// Dimension of the AMS sketch (used only with `ams_sketch`).
    pub projection_dimension: Option<usize>,
    /// Documents only: fill empty partitions with the nearest token (in SimHash distance).
    pub fill_empty_partitions: Option<bool>,
    /// Final random projection of the whole FDE (0: none; an index needs none).
    pub final_projection_dimension: Option<usize>,
}

/// Graph parameters of a new collection (unset: the engine's default, listed as each field's `default`).
#[derive(Clone, Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HnswParamsIn {
    /// Matryoshka prefix of the FDE (in repetitions) the graph is built on (at most `num_repetitions`).
    pub prefix_repetitions: Option<usize>,
    /// Graph degree (max connections per node), 1-{MAX_HNSW_M}.
    pub m: Option<usize>,
    /// Beam width while building the graph, 1-{MAX_EF_CONSTRUCTION}.
    pub ef_construction: Option<usize>,
    /// Precision of the graph's vectors.
    pub storage: Option<StorageDto>,
    /// Shards with fewer documents get no graph.
    pub min_docs: Option<usize>,
}

/// The FDE's inner projection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ProjectionTypeDto {
    /// No projection: FDE blocks have the token dimension.
    Identity,
    /// Sparse AMS sketch to `projection_dimension`.
    AmsSketch,
}

/// Precision of the graph's vectors.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StorageDto {
    /// Half precision (2 bytes per value).
    F16,
    /// Single precision (4 bytes per value).
    F32,
}

impl From<ProjectionTypeDto> for ProjectionType {
    fn from(p: ProjectionTypeDto) -> Self {
        match p {
            ProjectionTypeDto::Identity => ProjectionType::Identity,
            ProjectionTypeDto::AmsSketch => ProjectionType::AmsSketch,
        }
    }
}

impl From<ProjectionType> for ProjectionTypeDto {
    fn from(p: ProjectionType) -> Self {
        match p {
            ProjectionType::Identity => ProjectionTypeDto::Identity,
            ProjectionType::AmsSketch => ProjectionTypeDto::AmsSketch,
        }
    }
}

impl From<StorageDto> for VectorStorage {
    fn from(s: StorageDto) -> Self {
        match s {
            StorageDto::F16 => VectorStorage::F16,
            StorageDto::F32 => VectorStorage::F32,
        }
    }
}

impl From<VectorStorage> for StorageDto {
    fn from(s: VectorStorage) -> Self {
        match s {
            VectorStorage::F16 => StorageDto::F16,
            VectorStorage::F32 => StorageDto::F32,
        }
    }
}

impl CreateCollection {
    /// The one REST -> core conversion of collection parameters.
    pub fn params(&self) -> CollectionParamsInput {
        let (f, h) = (&self.fde, &self.hnsw);
        CollectionParamsInput {
            num_repetitions: f.num_repetitions,
            num_simhash_projections: f.num_simhash_projections,
            seed: f.seed,
            projection_type: f.projection_type.map(Into::into),
            projection_dimension: f.projection_dimension,
            fill_empty_partitions: f.fill_empty_partitions,
            final_projection_dimension: f.final_projection_dimension,
            prefix_repetitions: h.prefix_repetitions,
            m: h.m,
            ef_construction: h.ef_construction,
            storage: h.storage.map(Into::into),
            min_docs: h.min_docs,
            codebook_size: self.codebook_size,
        }
    }
}

/// A collection: its resolved parameters and statistics (create, describe, flush, compact, list).
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Collection {
    /// Collection name.
    pub name: String,
    /// Token vector dimension.
    pub dimension: usize,
    /// FDE parameters.
    pub fde: FdeParamsOut,
    /// Graph parameters.
    pub hnsw: HnswParamsOut,
    /// Centroids of each shard's token codebook (0: no codes).
    pub codebook_size: usize,
    /// Statistics.
    pub stats: CollectionStats,
}

/// Resolved FDE parameters.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct FdeParamsOut {
    /// Token dimension the FDE encodes.
    pub dimension: usize,
    /// Repetitions R.
    pub num_repetitions: usize,
    /// SimHash hyperplanes per repetition (2^n partitions each).
    pub num_simhash_projections: u32,
    /// Seed of the random projections (part of the index).
    pub seed: u64,
    /// Inner projection of each token.
    pub projection_type: ProjectionTypeDto,
    /// Dimension of the AMS sketch (ignored with `identity`).
    pub projection_dimension: usize,
    /// Documents only: empty partitions filled with the nearest token.
    pub fill_empty_partitions: bool,
    /// null: none.
    pub final_projection_dimension: Option<usize>,
}

/// Resolved graph parameters.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct HnswParamsOut {
    /// FDE repetitions (a Matryoshka prefix) the graph is built on.
    pub prefix_repetitions: usize,
    /// Graph degree (max connections per node).
    pub m: usize,
    /// Beam width while building the graph.
    pub ef_construction: usize,
    /// Precision of the graph's vectors.
    pub storage: StorageDto,
    /// Shards with fewer documents get no graph (they are scanned instead).
    pub min_docs: usize,
}

/// Collection statistics.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct CollectionStats {
    /// Live documents.
    pub documents: u64,
    /// Immutable shards on disk.
    pub shards: u64,
    /// Live documents still in the memtable (durable in the log, not yet in a shard).
    pub memtable_documents: u64,
    /// Deleted or overwritten documents still occupying shard space.
    pub tombstones: u64,
    /// Bytes of write-ahead log on disk.
    pub wal_bytes: u64,
    /// Sequence number of the last acknowledged write.
    pub last_sequence: u64,
    /// Centroids of the collection codebook (0 before the first flush trains it).
    pub codebook_centroids: u64,
    /// Generation of the collection codebook (0: none yet; one more per re-training).
    pub codebook_generation: u64,
    /// Bytes of shard files written by flushes, over the collection's life.
    pub flushed_bytes: u64,
    /// Bytes of shard files written by compactions, over the collection's life. Write amplification of the
    /// shards: `(flushed_bytes + compacted_bytes) / flushed_bytes`.
    pub compacted_bytes: u64,
    /// Shards whose token section is still being verified in the background after a restart (reading their
    /// documents answers 503 `unavailable` until then; searches go on).
    pub unverified_shards: u64,
    /// Shards coded with an older codebook generation (written before a re-training): re-coded with the current
    /// codebook in the background once no write has come for a moment (their candidates are coarser until then).
    pub stale_shards: u64,
}

impl From<CollectionInfo> for Collection {
    fn from(i: CollectionInfo) -> Self {
        let (f, h, s) = (&i.params.fde, &i.params.hnsw, &i.stats);
        Collection {
            dimension: i.dimension,
            fde: FdeParamsOut {
                dimension: f.dimension,
                num_repetitions: f.num_repetitions,
                num_simhash_projections: f.num_simhash_projections,
                seed: f.seed,
                projection_type: f.projection_type.into(),
                projection_dimension: f.projection_dimension,
                fill_empty_partitions: f.fill_empty_partitions,
                final_projection_dimension: f.final_projection_dimension,
            },
            hnsw: HnswParamsOut {
                prefix_repetitions: h.prefix_repetitions,
                m: h.m,
                ef_construction: h.ef_construction,
                storage: h.storage.into(),
                min_docs: h.min_docs,
            },
            codebook_size: i.params.codebook_size,
            stats: CollectionStats {
                documents: s.documents,
                shards: s.shards,
                memtable_documents: s.memtable_documents,
                tombstones: s.tombstones,
                wal_bytes: s.wal_bytes,
                last_sequence: s.last_sequence,
                codebook_centroids: s.codebook_centroids,
                codebook_generation: s.codebook_generation,
                flushed_bytes: s.flushed_bytes,
                compacted_bytes: s.compacted_bytes,
                unverified_shards: s.unverified_shards,
                stale_shards: s.stale_shards,
            },
            name: i.name,
        }
    }
}

/// `GET /v1/collections`.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct CollectionList {
    /// Collections that serve.
    pub collections: Vec<Collection>,
    /// Collections on disk that cannot serve (damaged), with the reason; describe answers 503
    /// `collection_unavailable`.
    pub unavailable: Vec<UnavailableCollection>,
}

/// A collection that cannot serve.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct UnavailableCollection {
    /// Collection name (the name of its directory).
    pub name: String,
    /// Why it cannot serve (names the damaged file, relative to the data directory).
    pub reason: String,
}

/// An empty object (`{}`): the answer of a drop.
#[derive(Clone, Debug, Default, Serialize, ToSchema)]
pub struct Empty {}
