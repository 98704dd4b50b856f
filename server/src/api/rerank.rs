//! Re-rank bodies: exact Chamfer scores of stored documents (by id) or of documents sent with the request.
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::search::Hit;
use super::tokens::Tokens;
use super::Hits;
use crate::core::rerank::{RerankDocs, RerankInput, RerankOutcome};
use crate::error::ServiceError;

/// `POST /v1/collections/{name}/rerank`: score stored documents, by id, against a query.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"query": [[0.12, -0.5, 0.33, 0.9]], "ids": ["doc-1", "doc-7"], "k": 10}))]
pub struct RerankStored {
    /// Query token vectors (the collection's dimension).
    pub query: Tokens,
    /// Ids to score (unknown ones are listed in `missing`).
    pub ids: Vec<String>,
    /// Keep the best `k` (all when absent).
    #[schema(minimum = 1)]
    pub k: Option<usize>,
    /// Return each hit's metadata.
    #[serde(default)]
    pub with_metadata: bool,
}

/// One document sent for re-ranking.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RerankDocument {
    /// Document id (echoed in the hits).
    pub id: String,
    /// Token vectors, of the query's dimension.
    pub tokens: Tokens,
}

/// `POST /v1/rerank`: score documents sent with the request against a query (no collection; the documents
/// must have the query's dimension).
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"query": [[0.12, -0.5]], "documents": [{"id": "a", "tokens": [[0.1, 0.2], [0.3, -0.4]]}], "k": 1}))]
pub struct Rerank {
    /// Query token vectors.
    pub query: Tokens,
    /// Documents to score, 1 to `limits.max_batch`.
    pub documents: Vec<RerankDocument>,
    /// Keep the best `k` (all when absent).
    #[schema(minimum = 1)]
    pub k: Option<usize>,
}

/// `POST /v1/rerank/batch`: several re-ranks of sent documents.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RerankBatch {
    /// Re-ranks, 1 to `limits.max_batch`; each answered independently, in order.
    pub requests: Vec<Rerank>,
}

/// The answer of a re-rank of stored documents: best first, and the ids not found.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct RerankStoredResult {
    /// Scored documents, best (highest Chamfer score) first.
    pub hits: Vec<Hit>,
    /// Requested ids that do not exist.
    pub missing: Vec<String>,
}

/// The answer of a batch: one `Hits` per request, in order.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct RerankBatchResult {
    /// One result per request, in request order.
    pub results: Vec<Hits>,
}

/// `k` given as 0 is refused (absent means all).
fn check_k(k: Option<usize>) -> Result<Option<usize>, ServiceError> {
    match k {
        Some(0) => Err(ServiceError::InvalidArgument(
            "k must be at least 1 (leave it out to keep every document)".into(),
        )),
        k => Ok(k),
    }
}

impl RerankStored {
    /// The one REST -> core conversion of a stored re-rank.
    pub fn into_input(self) -> Result<RerankInput, ServiceError> {
        Ok(RerankInput {
            query: self.query.into_input()?,
            docs: RerankDocs::Stored(self.ids),
            k: check_k(self.k)?,
            with_metadata: self.with_metadata,
        })
    }
}

impl Rerank {
    /// The one REST -> core conversion of a re-rank of sent documents.
    pub fn into_input(self) -> Result<RerankInput, ServiceError> {
        let docs = self
            .documents
            .into_iter()
            .map(|d| {
                let tokens = d.tokens.into_input().map_err(|e| e.in_document(&d.id))?;
                Ok((d.id, tokens))
            })
            .collect::<Result<Vec<_>, ServiceError>>()?;
        Ok(RerankInput {
            query: self.query.into_input()?,
            docs: RerankDocs::Supplied(docs),
            k: check_k(self.k)?,
            with_metadata: false,
        })
    }
}

impl RerankStoredResult {
    /// A core re-rank result as returned by the API; `with_metadata` adds each hit's metadata.
    pub fn from_core(out: RerankOutcome, with_metadata: bool) -> Self {
        RerankStoredResult {
            hits: Hits::from_core(out.hits, with_metadata).hits,
            missing: out.missing,
        }
    }
}
