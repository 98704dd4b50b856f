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
    /// Centroids of each shard's token codebook (0: no codes). Default 4096.
    #[serde(default)]
    pub codebook_size: Option<usize>,
}

/// FDE parameters of a new collection (unset: default).
#[derive(Clone, Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FdeParamsIn {
    pub num_repetitions: Option<usize>,
    pub num_simhash_projections: Option<u32>,
    /// Part of the index: stored, never changes.
    pub seed: Option<u64>,
    pub projection_type: Option<ProjectionTypeDto>,
    pub projection_dimension: Option<usize>,
    pub fill_empty_partitions: Option<bool>,
    /// 0: none.
    pub final_projection_dimension: Option<usize>,
}

/// Graph parameters of a new collection (unset: default).
#[derive(Clone, Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HnswParamsIn {
    /// Matryoshka prefix of the FDE (in repetitions) the graph is built on.
    pub prefix_repetitions: Option<usize>,
    pub m: Option<usize>,
    pub ef_construction: Option<usize>,
    pub storage: Option<StorageDto>,
    /// Shards with fewer documents get no graph.
    pub min_docs: Option<usize>,
}

/// The FDE's inner projection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ProjectionTypeDto {
    Identity,
    AmsSketch,
}

/// Precision of the graph's vectors.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StorageDto {
    F16,
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
    pub name: String,
    pub dimension: usize,
    pub fde: FdeParamsOut,
    pub hnsw: HnswParamsOut,
    /// Centroids of each shard's token codebook (0: no codes).
    pub codebook_size: usize,
    pub stats: CollectionStats,
}

/// Resolved FDE parameters.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct FdeParamsOut {
    pub dimension: usize,
    pub num_repetitions: usize,
    pub num_simhash_projections: u32,
    pub seed: u64,
    pub projection_type: ProjectionTypeDto,
    pub projection_dimension: usize,
    pub fill_empty_partitions: bool,
    /// null: none.
    pub final_projection_dimension: Option<usize>,
}

/// Resolved graph parameters.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct HnswParamsOut {
    pub prefix_repetitions: usize,
    pub m: usize,
    pub ef_construction: usize,
    pub storage: StorageDto,
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
    pub name: String,
    pub reason: String,
}

/// An empty object (`{}`): the answer of a drop.
#[derive(Clone, Debug, Default, Serialize, ToSchema)]
pub struct Empty {}
