//! Search bodies: one search, a batch, filters, hits.
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::documents::metadata_value;
use super::tokens::Tokens;
use crate::core::filter::{ConditionInput, FilterInput};
use crate::core::input::SearchInput;
use crate::core::HitOut;
use crate::error::ServiceError;

/// `POST /v1/collections/{name}/search` (and one entry of a batch).
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"query": [[0.12, -0.5, 0.33, 0.9]], "k": 10, "with_metadata": true}))]
pub struct Search {
    /// Query token vectors (the collection's dimension).
    pub query: Tokens,
    /// Number of results, 1 to the server's `limits.max_k` (1000 unless configured).
    #[schema(minimum = 1)]
    pub k: usize,
    /// HNSW beam width, 1-{MAX_K} (default and minimum: `candidates`). Only shards searched by their graph use
    /// it.
    pub ef: Option<usize>,
    /// Candidates taken from the first stage, 1-{MAX_K}: per shard from the graph (default:
    /// {DEFAULT_CANDIDATE_FACTOR} x `rerank`) or from the inverted file, re-scored by centroid interaction
    /// (default: {DEFAULT_IVF_CANDIDATE_FACTOR} x `rerank`).
    pub candidates: Option<usize>,
    /// Documents re-ranked exactly, 1-{MAX_K} (default: {DEFAULT_IVF_RERANK} on shards searched by their inverted
    /// file, else 2% of the collection within {DEFAULT_RERANK_MIN}-{DEFAULT_RERANK_MAX}; at least `k`).
    pub rerank: Option<usize>,
    /// Matryoshka prefix (in FDE repetitions) of graph queries; if set, must equal the collection's
    /// `hnsw.prefix_repetitions`.
    pub prefix_repetitions: Option<usize>,
    /// Centroids probed per query token by the inverted-file plan, 1-{MAX_NPROBE} (default: the codebook size /
    /// {NPROBE_SHARE}, within {DEFAULT_NPROBE_MIN}-{DEFAULT_NPROBE_MAX}). Only shards with an inverted file use it.
    pub nprobe: Option<usize>,
    /// Score every document exactly.
    #[serde(default)]
    pub exact: bool,
    /// Only documents that pass this filter are returned (applied during the search: `k` results come back
    /// whenever `k` documents pass).
    pub filter: Option<Filter>,
    /// Return each hit's metadata.
    #[serde(default)]
    pub with_metadata: bool,
}

/// A document passes when it meets every condition in `must` and, if `ids` is not empty, its id is listed.
#[derive(Clone, Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Filter {
    /// Conditions that must all hold.
    #[serde(default)]
    pub must: Vec<Condition>,
    /// When not empty, only documents with these ids pass.
    #[serde(default)]
    pub ids: Vec<String>,
}

/// Metadata field `key` (dots descend into objects) equals `equals` or one of `any_of` (strings, numbers,
/// booleans).
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Condition {
    /// Metadata field name; dots descend into nested objects (`a.b`).
    pub key: String,
    /// The field equals one of these values.
    #[serde(default)]
    pub any_of: Vec<Value>,
    /// The field equals this value.
    #[serde(default)]
    pub equals: Option<Value>,
}

impl Search {
    /// The one REST -> core conversion of a search.
    pub fn into_input(self) -> Result<SearchInput, ServiceError> {
        Ok(SearchInput {
            query: self.query.into_input()?,
            k: self.k,
            ef: self.ef,
            candidates: self.candidates,
            rerank: self.rerank,
            prefix_repetitions: self.prefix_repetitions,
            nprobe: self.nprobe,
            exact: self.exact,
            filter: self.filter.map(|f| FilterInput {
                must: f
                    .must
                    .into_iter()
                    .map(|c| ConditionInput {
                        key: c.key,
                        any_of: c.any_of,
                        equals: c.equals,
                    })
                    .collect(),
                ids: f.ids,
            }),
            with_metadata: self.with_metadata,
        })
    }
}

/// `POST /v1/collections/{name}/search/batch`: several searches on one snapshot.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SearchBatch {
    /// Searches, 1 to `limits.max_batch`, all on the same snapshot of the collection.
    pub searches: Vec<Search>,
}

/// One result.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Hit {
    /// Document id.
    pub id: String,
    /// Chamfer score: sum over query tokens of the best dot product with a document token (higher is better).
    pub score: f32,
    /// With `with_metadata` only (`{}` when the document has none).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
}

/// Scored documents, best first (the answer of a re-rank of sent documents).
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Hits {
    /// Results, best first (at most `k`).
    pub hits: Vec<Hit>,
}

/// The knobs a search ran with, as the server received them (null: the engine's default, chosen per shard).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SearchKnobs {
    /// Results wanted.
    pub k: usize,
    /// HNSW beam width.
    pub ef: Option<usize>,
    /// First-stage candidates.
    pub candidates: Option<usize>,
    /// Exact re-rank depth.
    pub rerank: Option<usize>,
    /// Matryoshka prefix of graph queries.
    pub prefix_repetitions: Option<usize>,
    /// Centroids probed per query token.
    pub nprobe: Option<usize>,
    /// Every document scored exactly.
    pub exact: bool,
    /// Each hit's metadata returned.
    pub with_metadata: bool,
}

impl SearchKnobs {
    /// The knobs of a search input (taken before the core consumes it).
    pub fn of(s: &SearchInput) -> Self {
        SearchKnobs {
            k: s.k,
            ef: s.ef,
            candidates: s.candidates,
            rerank: s.rerank,
            prefix_repetitions: s.prefix_repetitions,
            nprobe: s.nprobe,
            exact: s.exact,
            with_metadata: s.with_metadata,
        }
    }
}

/// The answer of a search: the hits, best first, and the knobs it ran with.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct SearchHits {
    /// Results, best first (at most `k`).
    pub hits: Vec<Hit>,
    /// The knobs this search ran with.
    pub knobs: SearchKnobs,
}

impl SearchHits {
    /// Core hits of a search that ran with `knobs` (their `with_metadata` adds each hit's metadata).
    pub fn from_core(hits: Vec<HitOut>, knobs: SearchKnobs) -> Self {
        SearchHits {
            hits: Hits::from_core(hits, knobs.with_metadata).hits,
            knobs,
        }
    }
}

impl Hits {
    /// Core hits as returned by the API; `with_metadata` adds each hit's metadata.
    pub fn from_core(hits: Vec<HitOut>, with_metadata: bool) -> Self {
        Hits {
            hits: hits
                .into_iter()
                .map(|h| Hit {
                    id: h.id,
                    score: h.score,
                    metadata: with_metadata.then(|| metadata_value(h.metadata)),
                })
                .collect(),
        }
    }
}

/// The answer of a batch: one `Hits` per search, in order.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct SearchBatchResult {
    /// One result per search, in request order.
    pub results: Vec<SearchHits>,
}
