//! The on-disk form of [`IndexParams`] (version 1), separate from the engine types so that renaming an engine
//! field cannot silently change a file format.
//!
//! Three files carry it, byte for byte the same JSON object: a shard's meta JSON (`params`), the server's
//! `collection.json` (`params`) and an index directory's `index.json` (`params`). Field names, their order and
//! the enum spellings below ARE the format; a change here is a format change (a new version with a reader for
//! the old one). Use it with `#[serde(with = "chamfer_index::shard::persisted")]` on an [`IndexParams`]
//! field.
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::params::{HnswParams, IndexParams, LEGACY_CODEBOOK_SIZE};
use crate::fde::{FdeConfig, ProjectionType};
use crate::hnsw::VectorStorage;

/// `params` (version 1): `{"fde": {...}, "hnsw": {...}, "codebook_size": n}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PersistedParamsV1 {
    /// `params.fde`: the FDE configuration.
    pub fde: PersistedFdeV1,
    /// `params.hnsw`: the candidate graph's parameters.
    pub hnsw: PersistedHnswV1,
    /// Absent in shards written before codebooks existed: the default then.
    #[serde(default = "default_codebook_size")]
    pub codebook_size: usize,
}

fn default_codebook_size() -> usize {
    LEGACY_CODEBOOK_SIZE
}

/// `params.fde` (version 1).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PersistedFdeV1 {
    /// Token dimension d.
    pub dimension: usize,
    /// Repetitions R.
    pub num_repetitions: usize,
    /// SimHash hyperplanes per repetition (`0..=30`; 2^k partitions).
    pub num_simhash_projections: u32,
    /// Seed of the random projections.
    pub seed: u64,
    /// Inner projection.
    pub projection_type: PersistedProjectionV1,
    /// d_proj, used only with `ams_sketch`.
    pub projection_dimension: usize,
    /// Whether documents fill empty partitions with the nearest token.
    pub fill_empty_partitions: bool,
    /// Written as `null` when unset.
    pub final_projection_dimension: Option<usize>,
}

/// `params.fde.projection_type` (version 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PersistedProjectionV1 {
    /// `"identity"`: no projection.
    #[serde(rename = "identity")]
    Identity,
    /// `"ams_sketch"`: AMS sketch to `projection_dimension`.
    #[serde(rename = "ams_sketch")]
    AmsSketch,
}

/// `params.hnsw` (version 1).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PersistedHnswV1 {
    /// FDE repetitions (Matryoshka prefix) the graph indexes.
    pub prefix_repetitions: usize,
    /// Graph degree.
    pub m: usize,
    /// Beam width while building.
    pub ef_construction: usize,
    /// Precision of the graph's vectors.
    pub storage: PersistedStorageV1,
    /// Shards with fewer documents get no graph.
    pub min_docs: usize,
}

/// `params.hnsw.storage` (version 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PersistedStorageV1 {
    /// `"f16"`: half-precision vectors.
    #[serde(rename = "f16")]
    F16,
    /// `"f32"`: single-precision vectors.
    #[serde(rename = "f32")]
    F32,
}

impl From<&IndexParams> for PersistedParamsV1 {
    fn from(p: &IndexParams) -> Self {
        let (f, h) = (&p.fde, &p.hnsw);
        PersistedParamsV1 {
            fde: PersistedFdeV1 {
                dimension: f.dimension,
                num_repetitions: f.num_repetitions,
                num_simhash_projections: f.num_simhash_projections,
                seed: f.seed,
                projection_type: match f.projection_type {
                    ProjectionType::Identity => PersistedProjectionV1::Identity,
                    ProjectionType::AmsSketch => PersistedProjectionV1::AmsSketch,
                },
                projection_dimension: f.projection_dimension,
                fill_empty_partitions: f.fill_empty_partitions,
                final_projection_dimension: f.final_projection_dimension,
            },
            hnsw: PersistedHnswV1 {
                prefix_repetitions: h.prefix_repetitions,
                m: h.m,
                ef_construction: h.ef_construction,
                storage: match h.storage {
                    VectorStorage::F16 => PersistedStorageV1::F16,
                    VectorStorage::F32 => PersistedStorageV1::F32,
                },
                min_docs: h.min_docs,
            },
            codebook_size: p.codebook_size,
        }
    }
}

impl From<PersistedParamsV1> for IndexParams {
    fn from(p: PersistedParamsV1) -> Self {
        let (f, h) = (p.fde, p.hnsw);
        IndexParams {
            fde: FdeConfig {
                dimension: f.dimension,
                num_repetitions: f.num_repetitions,
                num_simhash_projections: f.num_simhash_projections,
                seed: f.seed,
                projection_type: match f.projection_type {
                    PersistedProjectionV1::Identity => ProjectionType::Identity,
                    PersistedProjectionV1::AmsSketch => ProjectionType::AmsSketch,
                },
                projection_dimension: f.projection_dimension,
                fill_empty_partitions: f.fill_empty_partitions,
                final_projection_dimension: f.final_projection_dimension,
            },
            hnsw: HnswParams {
                prefix_repetitions: h.prefix_repetitions,
                m: h.m,
                ef_construction: h.ef_construction,
                storage: match h.storage {
                    PersistedStorageV1::F16 => VectorStorage::F16,
                    PersistedStorageV1::F32 => VectorStorage::F32,
                },
                min_docs: h.min_docs,
            },
            codebook_size: p.codebook_size,
        }
    }
}

/// Serializes an [`IndexParams`] field as [`PersistedParamsV1`].
pub fn serialize<S: Serializer>(p: &IndexParams, s: S) -> Result<S::Ok, S::Error> {
    PersistedParamsV1::from(p).serialize(s)
}

/// Deserializes an [`IndexParams`] field from [`PersistedParamsV1`].
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<IndexParams, D::Error> {
    PersistedParamsV1::deserialize(d).map(IndexParams::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The persisted JSON of known parameters, byte for byte (what every release so far has written).
    #[test]
    fn persisted_params_are_a_golden_string() {
        let mut p = IndexParams::new(4);
        p.fde.num_repetitions = 2;
        p.fde.num_simhash_projections = 2;
        p.fde.projection_dimension = 4;
        p.hnsw.prefix_repetitions = 2;
        p.hnsw.min_docs = 250_000;
        p.codebook_size = 4096;
        let json = serde_json::to_string(&PersistedParamsV1::from(&p)).unwrap();
        let golden = concat!(
            r#"{"fde":{"dimension":4,"num_repetitions":2,"num_simhash_projections":2,"seed":1,"#,
            r#""projection_type":"ams_sketch","projection_dimension":4,"fill_empty_partitions":false,"#,
            r#""final_projection_dimension":null},"hnsw":{"prefix_repetitions":2,"m":16,"ef_construction":100,"#,
            r#""storage":"f16","min_docs":250000},"codebook_size":4096}"#
        );
        assert_eq!(json, golden);
        let back: PersistedParamsV1 = serde_json::from_str(golden).unwrap();
        assert_eq!(IndexParams::from(back), p);
        // Shards written before codebooks existed have no codebook_size: the default.
        let old = golden.replace(r#","codebook_size":4096"#, "");
        let back: PersistedParamsV1 = serde_json::from_str(&old).unwrap();
        assert_eq!(back.codebook_size, LEGACY_CODEBOOK_SIZE);
        // Every enum spelling.
        p.fde.projection_type = ProjectionType::Identity;
        p.hnsw.storage = VectorStorage::F32;
        p.fde.final_projection_dimension = Some(8);
        let json = serde_json::to_string(&PersistedParamsV1::from(&p)).unwrap();
        assert!(json.contains(r#""projection_type":"identity""#), "{json}");
        assert!(json.contains(r#""storage":"f32""#), "{json}");
        assert!(json.contains(r#""final_projection_dimension":8"#), "{json}");
    }
}
