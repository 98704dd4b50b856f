//! Document bodies: upsert, get / delete by ids, one document, and their answers.
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use super::tokens::Tokens;
use crate::core::input::{DocInput, MetadataInput};
use crate::core::{DeleteOutcome, DocOut, GetOutcome, UpsertOutcome};
use crate::error::ServiceError;

/// One document of an upsert.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"id": "doc-1", "tokens": [[0.12, -0.5, 0.33, 0.9]], "metadata": {"lang": "en"}}))]
pub struct DocumentIn {
    /// 1-512 bytes, no control characters.
    pub id: String,
    /// Token vectors: one row of `dimension` numbers per token, or the packed form.
    pub tokens: Tokens,
    /// A JSON object (or null / absent: none).
    #[serde(default)]
    #[schema(value_type = Object)]
    pub metadata: Value,
}

/// `POST /v1/collections/{name}/documents`.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Upsert {
    /// Documents to insert or replace (by id), 1 to `limits.max_batch`, ids unique within the request.
    pub documents: Vec<DocumentIn>,
}

impl Upsert {
    /// The one REST -> core conversion of an upsert; a packed-token error names its document.
    pub fn into_input(self) -> Result<Vec<DocInput>, ServiceError> {
        self.documents
            .into_iter()
            .map(|d| {
                let tokens = d.tokens.into_input().map_err(|e| e.in_document(&d.id))?;
                Ok(DocInput {
                    id: d.id,
                    tokens,
                    metadata: MetadataInput::Value(d.metadata),
                })
            })
            .collect()
    }
}

/// The answer of an upsert (durable when answered).
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct UpsertResult {
    /// Documents written (inserted or replaced).
    pub upserted: u64,
    /// Sequence number of the write.
    pub sequence: u64,
}

impl From<UpsertOutcome> for UpsertResult {
    fn from(o: UpsertOutcome) -> Self {
        UpsertResult {
            upserted: o.upserted,
            sequence: o.sequence,
        }
    }
}

/// `POST .../documents/get` and `.../documents/delete`.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Ids {
    /// Document ids, 1 to `limits.max_batch`.
    pub ids: Vec<String>,
    /// Get only: return the token vectors.
    #[serde(default)]
    pub with_tokens: bool,
    /// Get only, with `with_tokens`: tokens in the packed form (`dtype` "f16", the stored precision).
    #[serde(default)]
    pub packed: bool,
}

/// Query of `GET .../documents/{id}`.
#[derive(Clone, Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct GetOneQuery {
    /// Tokens in the packed form (`dtype` "f16").
    pub packed: Option<bool>,
}

/// A stored document.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct DocumentOut {
    /// Document id.
    pub id: String,
    /// Number of token vectors.
    pub n_tokens: usize,
    /// The metadata object (`{}` when none).
    #[schema(value_type = Object)]
    pub metadata: Value,
    /// When asked for (rows, or packed f16).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokens: Option<Tokens>,
}

impl DocumentOut {
    /// A core document as returned by the API; `packed` selects packed f16 tokens over rows.
    pub fn from_core(d: DocOut, packed: bool) -> Self {
        DocumentOut {
            tokens: d
                .tokens
                .map(|t| Tokens::from_stored(&t, d.n_tokens, packed)),
            id: d.id,
            n_tokens: d.n_tokens,
            metadata: metadata_value(d.metadata),
        }
    }
}

/// Stored metadata text as a JSON value (`{}` when none).
pub fn metadata_value(m: Option<String>) -> Value {
    m.and_then(|m| serde_json::from_str(&m).ok())
        .unwrap_or_else(|| Value::Object(Default::default()))
}

/// The answer of a get by ids.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Documents {
    /// Documents found, in request order.
    pub documents: Vec<DocumentOut>,
    /// Requested ids that do not exist.
    pub missing: Vec<String>,
}

impl Documents {
    /// A core get result as returned by the API; `packed` selects packed f16 tokens over rows.
    pub fn from_core(o: GetOutcome, packed: bool) -> Self {
        Documents {
            documents: o
                .documents
                .into_iter()
                .map(|d| DocumentOut::from_core(d, packed))
                .collect(),
            missing: o.missing,
        }
    }
}

/// The answer of a delete.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct DeleteResult {
    /// Documents that existed and were deleted (unknown ids are not counted).
    pub deleted: u64,
    /// Sequence number of the write.
    pub sequence: u64,
}

impl From<DeleteOutcome> for DeleteResult {
    fn from(o: DeleteOutcome) -> Self {
        DeleteResult {
            deleted: o.deleted,
            sequence: o.sequence,
        }
    }
}
