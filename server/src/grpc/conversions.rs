//! The one place `chamfer.v1` messages become core inputs and core results become messages (the upsert path's
//! tokens and documents stay in `super`, next to their handlers). Unset knobs and parameters stay unset: the
//! core owns the defaults.
use chamfer_index::fde::ProjectionType;
use chamfer_index::shard::VectorStorage;
use chamfer_proto::v1 as pb;

use super::tokens_in;
use crate::core::filter::{ConditionInput, FilterInput};
use crate::core::input::{CollectionParamsInput, SearchInput};
use crate::core::rerank::{RerankDocs, RerankInput, RerankOutcome};
use crate::core::{CollectionInfo, HitOut};
use crate::error::ServiceError;

// ----- wire -> core ---------------------------------------------------------------------------------------

pub(super) fn value_in(v: pb::Value) -> serde_json::Value {
    use pb::value::Kind;
    match v.kind {
        Some(Kind::StringValue(s)) => serde_json::Value::String(s),
        Some(Kind::IntValue(i)) => i.into(),
        Some(Kind::DoubleValue(d)) => {
            serde_json::Number::from_f64(d).map_or(serde_json::Value::Null, Into::into)
        }
        Some(Kind::BoolValue(b)) => b.into(),
        None => serde_json::Value::Null,
    }
}

pub(super) fn search_in(s: pb::SearchRequest) -> SearchInput {
    let opt = |v: Option<u32>| v.map(|v| v as usize);
    SearchInput {
        query: tokens_in(s.query),
        k: s.k as usize,
        ef: opt(s.ef),
        candidates: opt(s.candidates),
        rerank: opt(s.rerank),
        prefix_repetitions: opt(s.prefix_repetitions),
        nprobe: opt(s.nprobe),
        exact: s.exact,
        filter: s.filter.map(|f| FilterInput {
            must: f
                .must
                .into_iter()
                .map(|c| ConditionInput {
                    key: c.key,
                    any_of: c.any_of.into_iter().map(value_in).collect(),
                    equals: c.equals.map(value_in),
                })
                .collect(),
            ids: f.ids,
        }),
        with_metadata: s.with_metadata,
    }
}

/// The one proto -> core conversion of collection parameters (unset fields stay unset: the core owns the
/// defaults).
pub(super) fn params_in(
    fde: Option<pb::FdeParams>,
    hnsw: Option<pb::HnswParams>,
    codebook_size: Option<u32>,
) -> Result<CollectionParamsInput, ServiceError> {
    let (f, h) = (fde.unwrap_or_default(), hnsw.unwrap_or_default());
    let us = |v: Option<u32>| v.map(|v| v as usize);
    let projection_type = match pb::ProjectionType::try_from(f.projection_type) {
        Ok(pb::ProjectionType::Unspecified) => None,
        Ok(pb::ProjectionType::Identity) => Some(ProjectionType::Identity),
        Ok(pb::ProjectionType::AmsSketch) => Some(ProjectionType::AmsSketch),
        Err(_) => {
            return Err(ServiceError::Malformed(format!(
                "unknown projection_type {}",
                f.projection_type
            )))
        }
    };
    let storage = match pb::VectorStorage::try_from(h.storage) {
        Ok(pb::VectorStorage::Unspecified) => None,
        Ok(pb::VectorStorage::F16) => Some(VectorStorage::F16),
        Ok(pb::VectorStorage::F32) => Some(VectorStorage::F32),
        Err(_) => {
            return Err(ServiceError::Malformed(format!(
                "unknown storage {}",
                h.storage
            )))
        }
    };
    Ok(CollectionParamsInput {
        num_repetitions: us(f.num_repetitions),
        num_simhash_projections: f.num_simhash_projections,
        seed: f.seed,
        projection_type,
        projection_dimension: us(f.projection_dimension),
        fill_empty_partitions: f.fill_empty_partitions,
        final_projection_dimension: us(f.final_projection_dimension),
        prefix_repetitions: us(h.prefix_repetitions),
        m: us(h.m),
        ef_construction: us(h.ef_construction),
        storage,
        min_docs: us(h.min_docs),
        codebook_size: us(codebook_size),
    })
}

// ----- core -> wire ---------------------------------------------------------------------------------------

pub(super) fn info_out(i: CollectionInfo) -> pb::CollectionInfo {
    let (f, h) = (&i.params.fde, &i.params.hnsw);
    pb::CollectionInfo {
        name: i.name,
        dimension: i.dimension as u32,
        fde: Some(pb::FdeParams {
            num_repetitions: Some(f.num_repetitions as u32),
            num_simhash_projections: Some(f.num_simhash_projections),
            seed: Some(f.seed),
            projection_type: match f.projection_type {
                ProjectionType::Identity => pb::ProjectionType::Identity,
                ProjectionType::AmsSketch => pb::ProjectionType::AmsSketch,
            } as i32,
            projection_dimension: Some(f.projection_dimension as u32),
            fill_empty_partitions: Some(f.fill_empty_partitions),
            final_projection_dimension: Some(f.final_projection_dimension.unwrap_or(0) as u32),
        }),
        hnsw: Some(pb::HnswParams {
            prefix_repetitions: Some(h.prefix_repetitions as u32),
            m: Some(h.m as u32),
            ef_construction: Some(h.ef_construction as u32),
            storage: match h.storage {
                VectorStorage::F16 => pb::VectorStorage::F16,
                VectorStorage::F32 => pb::VectorStorage::F32,
            } as i32,
            min_docs: Some(h.min_docs.min(u32::MAX as usize) as u32),
        }),
        stats: Some(pb::CollectionStats {
            documents: i.stats.documents,
            shards: i.stats.shards,
            memtable_documents: i.stats.memtable_documents,
            tombstones: i.stats.tombstones,
            wal_bytes: i.stats.wal_bytes,
            last_sequence: i.stats.last_sequence,
            codebook_centroids: i.stats.codebook_centroids,
            codebook_generation: i.stats.codebook_generation,
            flushed_bytes: i.stats.flushed_bytes,
            compacted_bytes: i.stats.compacted_bytes,
            unverified_shards: i.stats.unverified_shards,
            stale_shards: i.stats.stale_shards,
        }),
        codebook_size: Some(i.params.codebook_size as u32),
    }
}

/// The one proto -> core conversion of a re-rank: exactly one of `ids` and `documents`; `k` 0 is refused.
pub(super) fn rerank_in(r: pb::RerankRequest) -> Result<RerankInput, ServiceError> {
    let docs = match (r.ids.is_empty(), r.documents.is_empty()) {
        (false, true) => RerankDocs::Stored(r.ids),
        (true, false) => RerankDocs::Supplied(
            r.documents
                .into_iter()
                .map(|d| (d.id, tokens_in(d.tokens)))
                .collect(),
        ),
        (true, true) => {
            return Err(ServiceError::InvalidArgument(
                "a re-rank needs ids or documents".into(),
            ))
        }
        (false, false) => {
            return Err(ServiceError::InvalidArgument(
                "a re-rank takes ids or documents, not both".into(),
            ))
        }
    };
    if r.k == Some(0) {
        return Err(ServiceError::InvalidArgument(
            "k must be at least 1 (leave it unset to keep every document)".into(),
        ));
    }
    Ok(RerankInput {
        query: tokens_in(r.query),
        docs,
        k: r.k.map(|k| k as usize),
        with_metadata: r.with_metadata,
    })
}

pub(super) fn rerank_out(o: RerankOutcome) -> pb::RerankResponse {
    pb::RerankResponse {
        hits: hits_out(o.hits).hits,
        missing: o.missing,
    }
}

/// The knobs a search ran with (taken from its input before the core consumes it).
pub(super) fn knobs_out(s: &SearchInput) -> pb::SearchKnobs {
    let opt = |v: Option<usize>| v.map(|v| v as u32);
    pb::SearchKnobs {
        k: s.k as u32,
        ef: opt(s.ef),
        candidates: opt(s.candidates),
        rerank: opt(s.rerank),
        prefix_repetitions: opt(s.prefix_repetitions),
        nprobe: opt(s.nprobe),
        exact: s.exact,
        with_metadata: s.with_metadata,
    }
}

/// The answer of a search that ran with `knobs`.
pub(super) fn search_out(hits: Vec<HitOut>, knobs: pb::SearchKnobs) -> pb::SearchResponse {
    pb::SearchResponse {
        knobs: Some(knobs),
        ..hits_out(hits)
    }
}

pub(super) fn hits_out(hits: Vec<HitOut>) -> pb::SearchResponse {
    pb::SearchResponse {
        knobs: None,
        hits: hits
            .into_iter()
            .map(|h| pb::ScoredDocument {
                id: h.id,
                score: h.score,
                metadata_json: h.metadata.unwrap_or_default(),
            })
            .collect(),
    }
}
