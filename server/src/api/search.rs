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
    /// HNSW beam width, 1-10000 (default and minimum: `candidates`). Only graph searches use it.
    pub ef: Option<usize>,
    /// Documents the graph returns per shard, 1-10000 (default: 3 x `rerank`). Only graph searches use it.
    pub candidates: Option<usize>,
    /// Documents re-ranked exactly, 1-10000 (default: 128 on shards searched by their inverted file, else 2% of
    /// the collection within 128-2048; at least `k`).
    pub rerank: Option<usize>,
    /// Matryoshka prefix (in FDE repetitions) for graph queries; if set, must equal the collection's
    /// `hnsw.prefix_repetitions`.
    pub prefix_repetitions: Option<usize>,
    /// Centroids probed per query token by the inverted-file plan, 1-1024 (default: the codebook size / 1024, within 16-64). Only shards with an
    /// inverted file use it.
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

/// The answer of a search: best first.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Hits {
    /// Results, best first (at most `k`).
    pub hits: Vec<Hit>,
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
    pub results: Vec<Hits>,
}
