//! The REST contract: every request and response body, in one place, deriving serde and `utoipa::ToSchema`.
//!
//! These types ARE the REST API: the OpenAPI document (`openapi.rs`, served at `/openapi.json`, browsable at
//! `/docs`) is generated from them and from the handlers' `#[utoipa::path]` attributes in `crate::rest`. Each
//! body has exactly one conversion into the core's protocol-neutral input (`crate::core::input`), which owns
//! validation and the parameter defaults; the engine's types are not serialized here (nor are the persisted
//! file formats, which have their own structs: `chamfer_index::shard::persisted`).
//!
//! | file | bodies |
//! |---|---|
//! | `collections.rs` | create (FDE / graph / codebook parameters), collection (parameters + stats), list |
//! | `documents.rs` | upsert, ids (get / delete), one document, documents, upsert / delete results |
//! | `search.rs` | search, filter, batch, hits |
//! | `rerank.rs` | re-rank of stored ids or of sent documents, batch |
//! | `tokens.rs` | token vectors: rows or packed base64 (`{"dtype", "shape", "data"}`) |
//! | `health.rs` | liveness, readiness, the error body |
//! | `openapi.rs` | the generated document, its error responses and security, the `/docs` page |
pub mod collections;
pub mod documents;
pub mod health;
pub mod openapi;
pub mod rerank;
pub mod search;
pub mod tokens;

pub use collections::*;
pub use documents::*;
pub use health::*;
pub use rerank::*;
pub use search::*;
pub use tokens::*;
