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
    pub query: Tokens,
    #[schema(minimum = 1)]
    pub k: usize,
    pub ef: Option<usize>,
    pub candidates: Option<usize>,
    pub rerank: Option<usize>,
    pub prefix_repetitions: Option<usize>,
    /// Score every document exactly.
    #[serde(default)]
    pub exact: bool,
    pub filter: Option<Filter>,
    /// Return each hit's metadata.
    #[serde(default)]
    pub with_metadata: bool,
}

/// A document passes when it meets every condition in `must` and, if `ids` is not empty, its id is listed.
#[derive(Clone, Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Filter {
    #[serde(default)]
    pub must: Vec<Condition>,
    #[serde(default)]
    pub ids: Vec<String>,
}

/// Metadata field `key` (dots descend into objects) equals `equals` or one of `any_of` (strings, numbers,
/// booleans).
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Condition {
    pub key: String,
    #[serde(default)]
    pub any_of: Vec<Value>,
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
    pub searches: Vec<Search>,
}

/// One result.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Hit {
    pub id: String,
    pub score: f32,
    /// With `with_metadata` only (`{}` when the document has none).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
}

/// The answer of a search: best first.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Hits {
    pub hits: Vec<Hit>,
}

impl Hits {
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
    pub results: Vec<Hits>,
}
