//! Protocol-neutral request inputs and THE validation every request goes through.
//!
//! The adapters only move wire values into these types (gRPC bytes stay bytes, JSON rows stay rows); every
//! rule (shape, dimension, finite values, token and batch limits, id syntax, duplicate ids, metadata, k range)
//! is checked here, once, so REST and gRPC cannot drift apart.
use std::collections::HashSet;

use chamfer_index::shard::IndexParams;
use chamfer_index::tokens::{TokenValues, Tokens};
use chamfer_index::IndexError;

use crate::config::Limits;
use crate::error::ServiceError;

use super::filter::{Filter, FilterInput};

/// Element type of packed token bytes (the engine's: tokens keep it from the wire to the log and the shard).
pub use chamfer_index::tokens::Dtype;

/// Token vectors as a client sent them.
#[derive(Clone, Debug)]
pub enum TokenInput {
    /// Packed little-endian bytes plus shape (gRPC). `dtype: None` = unspecified or unknown on the wire.
    Packed {
        /// Element type (`None`: unspecified or unknown on the wire, refused as malformed).
        dtype: Option<Dtype>,
        /// Declared number of token vectors.
        n_tokens: usize,
        /// Declared dimension of each token vector.
        dim: usize,
        /// The `n_tokens * dim` values, row-major.
        bytes: Vec<u8>,
    },
    /// One array of numbers per token (JSON).
    Rows(Vec<Vec<f32>>),
}

/// Metadata as a client sent it.
#[derive(Clone, Debug, Default)]
pub enum MetadataInput {
    /// No metadata.
    #[default]
    None,
    /// JSON text (gRPC); empty means none.
    Text(String),
    /// An already parsed JSON value (REST); null means none.
    Value(serde_json::Value),
}

/// One document of an upsert.
#[derive(Clone, Debug)]
pub struct DocInput {
    /// External id (checked by [`validate_id`]).
    pub id: String,
    /// Token vectors as sent.
    pub tokens: TokenInput,
    /// Metadata as sent.
    pub metadata: MetadataInput,
}

/// One search.
#[derive(Clone, Debug)]
pub struct SearchInput {
    /// Query token vectors as sent.
    pub query: TokenInput,
    /// Number of results (1 to `limits.max_k`).
    pub k: usize,
    /// HNSW beam width (engine default when unset).
    pub ef: Option<usize>,
    /// Documents the graph returns per shard (engine default when unset).
    pub candidates: Option<usize>,
    /// Documents re-ranked exactly (engine default when unset).
    pub rerank: Option<usize>,
    /// Matryoshka prefix of graph queries; must equal the collection's when set.
    pub prefix_repetitions: Option<usize>,
    /// Centroids probed per query token by the inverted-file plan (engine default when unset).
    pub nprobe: Option<usize>,
    /// Score every document exactly.
    pub exact: bool,
    /// Metadata filter, applied during the search.
    pub filter: Option<FilterInput>,
    /// Return each hit's metadata.
    pub with_metadata: bool,
}

/// THE parameter set of a new collection, as every protocol hands it to the core (REST DTOs and proto messages
/// each convert into it once; see `crate::api`). Unset fields take the defaults, which live here and in the
/// engine's [`IndexParams::new`] and nowhere else ([`CollectionParamsInput::resolve`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CollectionParamsInput {
    /// FDE repetitions R.
    pub num_repetitions: Option<usize>,
    /// SimHash hyperplanes per repetition.
    pub num_simhash_projections: Option<u32>,
    /// Seed of the random projections.
    pub seed: Option<u64>,
    /// Inner projection of each token.
    pub projection_type: Option<chamfer_index::fde::ProjectionType>,
    /// AMS sketch dimension (used only with the AMS projection).
    pub projection_dimension: Option<usize>,
    /// Documents only: fill empty partitions.
    pub fill_empty_partitions: Option<bool>,
    /// 0: no final projection.
    pub final_projection_dimension: Option<usize>,
    /// FDE repetitions the graph indexes (default: 4, at most `num_repetitions`).
    pub prefix_repetitions: Option<usize>,
    /// Graph degree.
    pub m: Option<usize>,
    /// Beam width while building the graph.
    pub ef_construction: Option<usize>,
    /// Precision of the graph's vectors.
    pub storage: Option<chamfer_index::shard::VectorStorage>,
    /// Shards with fewer documents get no graph.
    pub min_docs: Option<usize>,
    /// Centroids of each shard's token codebook (0: no codes).
    pub codebook_size: Option<usize>,
}

impl CollectionParamsInput {
    /// The engine parameters of a new collection of token `dimension`: the defaults
    /// ([`IndexParams::new`]), then every set field; validated. Without an explicit graph prefix, a smaller
    /// FDE keeps the default prefix inside it.
    pub fn resolve(&self, dimension: usize) -> Result<IndexParams, ServiceError> {
        let mut p = IndexParams::new(dimension);
        fn set<T>(dst: &mut T, src: Option<T>) {
            if let Some(v) = src {
                *dst = v;
            }
        }
        let f = &mut p.fde;
        set(&mut f.num_repetitions, self.num_repetitions);
        set(&mut f.num_simhash_projections, self.num_simhash_projections);
        set(&mut f.seed, self.seed);
        set(&mut f.projection_type, self.projection_type);
        set(&mut f.projection_dimension, self.projection_dimension);
        set(&mut f.fill_empty_partitions, self.fill_empty_partitions);
        if let Some(v) = self.final_projection_dimension {
            f.final_projection_dimension = (v > 0).then_some(v);
        }
        let h = &mut p.hnsw;
        set(&mut h.prefix_repetitions, self.prefix_repetitions);
        set(&mut h.m, self.m);
        set(&mut h.ef_construction, self.ef_construction);
        set(&mut h.storage, self.storage);
        set(&mut h.min_docs, self.min_docs);
        set(&mut p.codebook_size, self.codebook_size);
        if self.prefix_repetitions.is_none() {
            p.hnsw.prefix_repetitions = p.hnsw.prefix_repetitions.min(p.fde.num_repetitions.max(1));
        }
        p.validate()?;
        Ok(p)
    }
}

/// A validated document, ready for the engine and the log.
#[derive(Clone, Debug)]
pub struct ValidDoc {
    /// External id.
    pub id: String,
    /// Token values (validated), in the width the client sent them: f16 stays f16 to the log and the shard.
    pub tokens: Tokens,
    /// Compact JSON object text, or empty for none (the shard payload).
    pub metadata: Vec<u8>,
}

impl ValidDoc {
    /// The tokens as f32 values, f16 ones widened (tools and tests: the write path keeps them as they came).
    pub fn tokens_f32(&self) -> std::borrow::Cow<'_, [f32]> {
        match self.tokens.values() {
            TokenValues::F32(v) => std::borrow::Cow::Borrowed(v),
            TokenValues::F16(_) => {
                let mut v = Vec::with_capacity(self.tokens.n_values());
                self.tokens.extend_f32(&mut v);
                std::borrow::Cow::Owned(v)
            }
        }
    }
}

/// Longest external id, in bytes.
pub const MAX_ID_BYTES: usize = 512;

/// Checks a collection name: 1-64 characters of `[A-Za-z0-9_-]` (it becomes a directory name).
pub fn validate_collection_name(name: &str) -> Result<(), ServiceError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        && !name.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(ServiceError::InvalidArgument(format!(
            "collection name {name:?} must be 1-64 characters of [A-Za-z0-9_-], not starting with '-'"
        )))
    }
}

/// Checks an external document id.
pub fn validate_id(id: &str) -> Result<(), ServiceError> {
    if id.is_empty() {
        return Err(ServiceError::InvalidArgument(
            "document id must not be empty".into(),
        ));
    }
    if id.len() > MAX_ID_BYTES {
        return Err(ServiceError::TooLarge {
            what: "document id (bytes)",
            got: id.len(),
            max: MAX_ID_BYTES,
        });
    }
    if id.chars().any(char::is_control) {
        return Err(ServiceError::InvalidArgument(format!(
            "document id {id:?} contains control characters"
        )));
    }
    Ok(())
}

/// Checks the number of items in one request.
pub fn check_batch(what: &'static str, n: usize, limits: &Limits) -> Result<(), ServiceError> {
    if n == 0 {
        return Err(ServiceError::InvalidArgument(format!(
            "no {what} in the request"
        )));
    }
    if n > limits.max_batch {
        return Err(ServiceError::TooLarge {
            what,
            got: n,
            max: limits.max_batch,
        });
    }
    Ok(())
}

/// Decodes and validates token vectors: shape, dimension, token count, byte length, finite values, and the
/// f16 range |x| <= 65504 (`chamfer_index::tokens::MAX_TOKEN_VALUE`: tokens are stored as f16), for documents
/// and queries alike (400 `out_of_range`). `what` is "document" or "query". The values keep the width they were
/// sent in (packed f16 stays f16; JSON rows and packed f32 are f32).
pub fn decode_tokens_typed(
    input: &TokenInput,
    dim: usize,
    max_tokens: usize,
    what: &'static str,
) -> Result<Tokens, ServiceError> {
    let tokens = match input {
        TokenInput::Packed {
            dtype,
            n_tokens,
            dim: got_dim,
            bytes,
        } => {
            let dtype = dtype.ok_or_else(|| {
                ServiceError::Malformed(format!("{what} tokens: dtype must be F32 or F16"))
            })?;
            if *got_dim != dim {
                return Err(IndexError::DimensionMismatch {
                    expected: dim,
                    got: *got_dim,
                }
                .into());
            }
            if *n_tokens == 0 {
                return Err(IndexError::Empty { what }.into());
            }
            if *n_tokens > max_tokens {
                return Err(IndexError::TooManyTokens {
                    got: *n_tokens,
                    max: max_tokens,
                }
                .into());
            }
            let want = n_tokens * dim * dtype.size();
            if bytes.len() != want {
                return Err(ServiceError::Malformed(format!(
                    "{what} tokens: {} bytes of data, but {n_tokens} x {dim} {dtype:?} values need {want}",
                    bytes.len()
                )));
            }
            match dtype {
                Dtype::F32 => Tokens::from_f32(
                    bytes
                        .chunks_exact(4)
                        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                        .collect(),
                    dim,
                    what,
                )?,
                Dtype::F16 => Tokens::from_f16(
                    bytes
                        .chunks_exact(2)
                        .map(|c| half::f16::from_bits(u16::from_le_bytes([c[0], c[1]])))
                        .collect(),
                    dim,
                    what,
                )?,
            }
        }
        TokenInput::Rows(rows) => {
            if rows.is_empty() {
                return Err(IndexError::Empty { what }.into());
            }
            if rows.len() > max_tokens {
                return Err(IndexError::TooManyTokens {
                    got: rows.len(),
                    max: max_tokens,
                }
                .into());
            }
            if let Some((token, row)) = rows.iter().enumerate().find(|(_, r)| r.len() != dim) {
                return Err(ServiceError::TokenLength {
                    token,
                    got: row.len(),
                    expected: dim,
                });
            }
            Tokens::from_f32(rows.concat(), dim, what)?
        }
    };
    Ok(tokens)
}

/// [`decode_tokens_typed`] as f32 values (queries: the engine scores f32 queries).
pub fn decode_tokens(
    input: &TokenInput,
    dim: usize,
    max_tokens: usize,
    what: &'static str,
) -> Result<Vec<f32>, ServiceError> {
    Ok(
        match decode_tokens_typed(input, dim, max_tokens, what)?.into_values() {
            TokenValues::F32(v) => v,
            TokenValues::F16(v) => {
                use half::slice::HalfFloatSliceExt;
                v.to_f32_vec()
            }
        },
    )
}

/// Validates metadata: a JSON object (or nothing) of at most `max_bytes`, returned as compact JSON bytes.
pub fn encode_metadata(input: &MetadataInput, max_bytes: usize) -> Result<Vec<u8>, ServiceError> {
    let value = match input {
        MetadataInput::None => return Ok(Vec::new()),
        MetadataInput::Text(t) if t.trim().is_empty() => return Ok(Vec::new()),
        MetadataInput::Text(t) => {
            if t.len() > max_bytes {
                return Err(ServiceError::TooLarge {
                    what: "metadata (bytes)",
                    got: t.len(),
                    max: max_bytes,
                });
            }
            serde_json::from_str::<serde_json::Value>(t)
                .map_err(|e| ServiceError::Malformed(format!("metadata is not valid JSON: {e}")))?
        }
        MetadataInput::Value(v) => v.clone(),
    };
    match &value {
        serde_json::Value::Null => Ok(Vec::new()),
        serde_json::Value::Object(m) if m.is_empty() => Ok(Vec::new()),
        serde_json::Value::Object(_) => {
            let bytes =
                serde_json::to_vec(&value).map_err(|e| ServiceError::Internal(e.to_string()))?;
            if bytes.len() > max_bytes {
                return Err(ServiceError::TooLarge {
                    what: "metadata (bytes)",
                    got: bytes.len(),
                    max: max_bytes,
                });
            }
            Ok(bytes)
        }
        other => Err(ServiceError::InvalidArgument(format!(
            "metadata must be a JSON object, got {}",
            json_kind(other)
        ))),
    }
}

pub(crate) fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// Validates an upsert batch: size, ids (syntax, no duplicates), tokens, metadata.
pub fn validate_docs(
    docs: &[DocInput],
    dim: usize,
    limits: &Limits,
) -> Result<Vec<ValidDoc>, ServiceError> {
    check_batch("documents", docs.len(), limits)?;
    let mut seen = HashSet::with_capacity(docs.len());
    let mut out = Vec::with_capacity(docs.len());
    for d in docs {
        validate_id(&d.id)?;
        if !seen.insert(d.id.as_str()) {
            return Err(IndexError::DuplicateId(d.id.clone()).into());
        }
        let tokens = decode_tokens_typed(&d.tokens, dim, limits.max_tokens_per_doc, "document")
            .map_err(|e| in_doc(&d.id, e))?;
        let metadata = encode_metadata(&d.metadata, limits.max_metadata_bytes)
            .map_err(|e| in_doc(&d.id, e))?;
        out.push(ValidDoc {
            id: d.id.clone(),
            tokens,
            metadata,
        });
    }
    Ok(out)
}

/// Adds the document id to a validation error, so a client can find the bad document in a large batch (the
/// code and status stay the inner error's).
fn in_doc(id: &str, e: ServiceError) -> ServiceError {
    e.in_document(id)
}

/// Validates the id list of a get or delete.
pub fn validate_ids(ids: &[String], limits: &Limits) -> Result<(), ServiceError> {
    check_batch("ids", ids.len(), limits)?;
    ids.iter().try_for_each(|id| validate_id(id))
}

/// A validated search: query tokens, engine parameters and a compiled filter.
pub struct ValidSearch {
    /// Query token values, row-major.
    pub query: Vec<f32>,
    /// Engine parameters (k, knobs, plan).
    pub params: chamfer_index::search::SearchParams,
    /// Compiled filter (`None` when it restricts nothing).
    pub filter: Option<Filter>,
    /// Return each hit's metadata.
    pub with_metadata: bool,
}

/// Validates one search against the collection's dimension and the limits.
pub fn validate_search(
    s: &SearchInput,
    dim: usize,
    limits: &Limits,
) -> Result<ValidSearch, ServiceError> {
    use chamfer_index::search::{Plan, SearchParams, MAX_K};
    if s.k == 0 || s.k > limits.max_k {
        return Err(IndexError::param(
            "k",
            format!("must be in 1..={}, got {}", limits.max_k, s.k),
        )
        .into());
    }
    let knob = |name: &'static str, v: Option<usize>| match v {
        Some(v) if v == 0 || v > MAX_K => Err(IndexError::param(
            name,
            format!("must be in 1..={MAX_K}, got {v}"),
        )),
        _ => Ok(v),
    };
    let mut params = SearchParams::new(s.k);
    params.ef = knob("ef", s.ef)?;
    params.candidates = knob("candidates", s.candidates)?;
    params.rerank = knob("rerank", s.rerank)?;
    params.prefix_repetitions = knob("prefix_repetitions", s.prefix_repetitions)?;
    params.nprobe = s.nprobe;
    if s.exact {
        params.plan = Plan::Exact;
    }
    params.validate()?;
    let query = decode_tokens(&s.query, dim, limits.max_query_tokens, "query")?;
    let filter = s
        .filter
        .as_ref()
        .map(Filter::compile)
        .transpose()?
        .flatten();
    Ok(ValidSearch {
        query,
        params,
        filter,
        with_metadata: s.with_metadata,
    })
}

/// Query token vectors a search asks for, as declared (packed: its shape; JSON: its rows).
fn query_tokens(s: &SearchInput) -> usize {
    match &s.query {
        TokenInput::Packed { n_tokens, .. } => *n_tokens,
        TokenInput::Rows(rows) => rows.len(),
    }
}

/// The work budget of one search request: the query token vectors of all its searches, summed, must not exceed
/// `limits.max_batch_query_tokens` (search CPU grows with them). Checked before any work starts.
pub fn check_search_budget(searches: &[SearchInput], limits: &Limits) -> Result<(), ServiceError> {
    let total = searches
        .iter()
        .fold(0usize, |acc, s| acc.saturating_add(query_tokens(s)));
    if total > limits.max_batch_query_tokens {
        return Err(ServiceError::TooLarge {
            what: "search work (query token vectors in one request)",
            got: total,
            max: limits.max_batch_query_tokens,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packed(dtype: Dtype, n: usize, dim: usize, bytes: Vec<u8>) -> TokenInput {
        TokenInput::Packed {
            dtype: Some(dtype),
            n_tokens: n,
            dim,
            bytes,
        }
    }

    #[test]
    fn decodes_f16_and_f32_and_rows_identically() {
        let vals = [0.5f32, -1.0, 2.0, 0.25];
        let f32b: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
        let f16b: Vec<u8> = vals
            .iter()
            .flat_map(|v| half::f16::from_f32(*v).to_bits().to_le_bytes())
            .collect();
        let a = decode_tokens(&packed(Dtype::F32, 2, 2, f32b), 2, 8, "query").unwrap();
        let b = decode_tokens(&packed(Dtype::F16, 2, 2, f16b), 2, 8, "query").unwrap();
        let c = decode_tokens(
            &TokenInput::Rows(vec![vec![0.5, -1.0], vec![2.0, 0.25]]),
            2,
            8,
            "query",
        )
        .unwrap();
        assert_eq!(a, vals);
        assert_eq!(a, b);
        assert_eq!(a, c);
    }

    #[test]
    fn rejects_every_bad_shape() {
        let code = |r: Result<Vec<f32>, ServiceError>| r.unwrap_err().status().code;
        assert_eq!(
            code(decode_tokens(
                &packed(Dtype::F32, 1, 3, vec![0; 12]),
                2,
                8,
                "query"
            )),
            "dimension_mismatch"
        );
        assert_eq!(
            code(decode_tokens(
                &packed(Dtype::F32, 0, 2, vec![]),
                2,
                8,
                "query"
            )),
            "empty"
        );
        assert_eq!(
            code(decode_tokens(
                &packed(Dtype::F32, 9, 2, vec![0; 72]),
                2,
                8,
                "query"
            )),
            "too_many_tokens"
        );
        assert_eq!(
            code(decode_tokens(
                &packed(Dtype::F32, 1, 2, vec![0; 7]),
                2,
                8,
                "query"
            )),
            "malformed"
        );
        let nan: Vec<u8> = [1.0f32, f32::NAN]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        assert_eq!(
            code(decode_tokens(&packed(Dtype::F32, 1, 2, nan), 2, 8, "query")),
            "non_finite"
        );
        let none = TokenInput::Packed {
            dtype: None,
            n_tokens: 1,
            dim: 2,
            bytes: vec![0; 8],
        };
        assert_eq!(code(decode_tokens(&none, 2, 8, "query")), "malformed");
        assert_eq!(
            code(decode_tokens(
                &TokenInput::Rows(vec![vec![1.0]]),
                2,
                8,
                "query"
            )),
            "dimension_mismatch"
        );
        assert_eq!(
            code(decode_tokens(&TokenInput::Rows(vec![]), 2, 8, "query")),
            "empty"
        );
    }

    /// Tokens are stored as f16: finite values beyond +-65504 are a 400 `out_of_range` (not a 500 when the
    /// shard is written), for documents and queries, packed f32 and JSON rows alike; the limit itself is fine.
    #[test]
    fn values_beyond_f16_are_out_of_range() {
        let code = |r: Result<Vec<f32>, ServiceError>| r.unwrap_err().status().code;
        for what in ["document", "query"] {
            for big in [1e5f32, -1e5, 3.4e38, 65505.0] {
                let f32b: Vec<u8> = [0.0f32, big].iter().flat_map(|v| v.to_le_bytes()).collect();
                assert_eq!(
                    code(decode_tokens(&packed(Dtype::F32, 1, 2, f32b), 2, 8, what)),
                    "out_of_range",
                    "{what} {big}"
                );
                assert_eq!(
                    code(decode_tokens(
                        &TokenInput::Rows(vec![vec![0.0, 1.0], vec![big, 0.0]]),
                        2,
                        8,
                        what
                    )),
                    "out_of_range",
                    "{what} {big}"
                );
            }
            let edge = vec![vec![65504.0f32, -65504.0]];
            assert_eq!(
                decode_tokens(&TokenInput::Rows(edge), 2, 8, what).unwrap(),
                [65504.0, -65504.0]
            );
        }
        // The message says where and what the limit is.
        let err = decode_tokens(&TokenInput::Rows(vec![vec![0.0, 1e5]]), 2, 8, "document")
            .unwrap_err()
            .to_string();
        assert!(err.contains("100000") && err.contains("65504"), "{err}");
    }

    #[test]
    fn metadata_must_be_a_small_object() {
        assert_eq!(
            encode_metadata(&MetadataInput::Text("".into()), 10).unwrap(),
            b""
        );
        assert_eq!(
            encode_metadata(&MetadataInput::Text(r#"{"b":1, "a":2}"#.into()), 100).unwrap(),
            br#"{"a":2,"b":1}"#
        );
        assert!(encode_metadata(&MetadataInput::Text("[1]".into()), 100).is_err());
        assert!(encode_metadata(&MetadataInput::Text("{".into()), 100).is_err());
        assert!(encode_metadata(&MetadataInput::Text(r#"{"a":"0123456789"}"#.into()), 10).is_err());
    }

    #[test]
    fn duplicate_ids_in_a_batch_are_rejected() {
        let doc = |id: &str| DocInput {
            id: id.into(),
            tokens: TokenInput::Rows(vec![vec![1.0]]),
            metadata: MetadataInput::None,
        };
        let err =
            validate_docs(&[doc("a"), doc("b"), doc("a")], 1, &Limits::default()).unwrap_err();
        assert_eq!(err.status().code, "duplicate_id");
    }
}
