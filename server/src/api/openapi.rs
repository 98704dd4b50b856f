//! The OpenAPI 3.1 document, generated: `ApiDoc` (title, tags, security schemes) plus the paths and schemas
//! utoipa collects from the handlers' `#[utoipa::path]` attributes (`crate::rest`), then [`finish`] adds the
//! error responses each operation can give (derived from what it takes, so they cannot drift from the table in
//! `crate::error`). Served at `/openapi.json`; `/docs` is a Scalar page over it (its assets are embedded in the
//! `utoipa-scalar` crate: nothing is downloaded).
use utoipa::openapi::path::{Operation, ParameterIn};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, OpenApi as Document, Ref, ResponseBuilder};
use utoipa::OpenApi;

use super::health::ErrorBody;

/// The document's fixed parts.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "chamfer",
        description = "Multi-vector (ColBERT-style) retrieval: documents and queries are sets of token vectors, \
                       scored by Chamfer / MaxSim. The same operations are served over gRPC (package chamfer.v1). \
                       Token vectors are an array of arrays of numbers or the packed form \
                       `{\"dtype\": \"f16\"|\"f32\", \"shape\": [n, dim], \"data\": \"<base64>\"}`. Every error is \
                       `{\"code\", \"message\"}`."
    ),
    components(schemas(ErrorBody)),
    tags(
        (name = "collections", description = "create, list, describe, drop, flush, compact"),
        (name = "documents", description = "upsert, get, delete"),
        (name = "search", description = "search and batch search"),
        (name = "rerank", description = "exact Chamfer scores of stored or sent documents against a query"),
        (name = "operations", description = "health, readiness, metrics, this document")
    )
)]
pub struct ApiDoc;

/// Operations that write (they can meet a full disk: 507).
const WRITES: &[&str] = &[
    "create_collection",
    "drop_collection",
    "flush",
    "compact",
    "upsert",
    "delete",
    "delete_one",
];

fn error_description(status: u16) -> &'static str {
    match status {
        400 => "bad request (malformed, invalid_argument, dimension_mismatch, non_finite, empty, invalid_parameter, duplicate_id, invalid_config, out_of_range)",
        401 => "unauthenticated: missing or wrong API key",
        404 => "collection_not_found or not_found",
        408 => "request_timeout: the client stopped sending its body for body_read_timeout_ms",
        409 => "already_exists",
        413 => "too_large or too_many_tokens",
        429 => "overloaded (writers faster than flushing, or the server's request memory budget full): retry after the Retry-After header",
        500 => "internal server error (io, corrupt, unsupported_version, incompatible, dataset, internal)",
        503 => "unavailable, collection_unavailable or cancelled",
        504 => "deadline_exceeded",
        507 => "storage_full",
        _ => "error",
    }
}

/// The error statuses an operation can answer, from what it takes.
fn error_statuses(path: &str, op: &Operation) -> Vec<u16> {
    let params = op.parameters.as_deref().unwrap_or_default();
    let has = |loc: ParameterIn| params.iter().any(|p| p.parameter_in == loc);
    let id = op.operation_id.as_deref().unwrap_or_default();
    // Only the open routes (health, readiness) set their own `security(())`.
    let open = op.security.is_some();
    let mut out = Vec::new();
    if !open {
        out.push(401);
    }
    if path.starts_with("/v1/") {
        out.extend([500, 503, 504]);
        if has(ParameterIn::Path) {
            out.push(404);
        }
        if op.request_body.is_some() || has(ParameterIn::Query) || has(ParameterIn::Header) {
            out.push(400);
        }
        if op.request_body.is_some() {
            // 408: the body stopped arriving; 429: the server's request memory budget is full.
            out.extend([408, 413, 429]);
        }
        if WRITES.contains(&id) {
            out.push(507);
        }
        if id == "upsert" {
            out.push(429);
        }
        if id == "create_collection" {
            out.extend([400, 409]);
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// Completes the generated document: security schemes (bearer or `x-api-key`, required everywhere except
/// where an operation says `security(())`), every operation's error responses with the [`ErrorBody`] schema, and
/// the engine's values in the descriptions and defaults ([`fill_engine_values`]).
pub fn finish(doc: &mut Document) {
    fill_engine_values(doc);
    let components = doc.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        "bearer",
        SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
    );
    components.add_security_scheme(
        "apiKey",
        SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("x-api-key"))),
    );
    doc.security = Some(vec![
        utoipa::openapi::security::SecurityRequirement::new("bearer", Vec::<String>::new()),
        utoipa::openapi::security::SecurityRequirement::new("apiKey", Vec::<String>::new()),
    ]);
    for (path, item) in doc.paths.paths.iter_mut() {
        for op in [&mut item.get, &mut item.post, &mut item.delete]
            .into_iter()
            .flatten()
        {
            for status in error_statuses(path, op) {
                op.responses
                    .responses
                    .entry(status.to_string())
                    .or_insert_with(|| {
                        ResponseBuilder::new()
                            .description(error_description(status))
                            .content(
                                "application/json",
                                ContentBuilder::new()
                                    .schema(Some(Ref::from_schema_name("ErrorBody")))
                                    .build(),
                            )
                            .build()
                            .into()
                    });
            }
        }
    }
}

/// The engine constants the field descriptions quote, by the placeholder they are written as (`{MAX_K}`): the
/// generated document states each value once, from its constant (a test pins the proto's comments to them).
pub fn quoted_constants() -> Vec<(&'static str, usize)> {
    use chamfer_index::search as s;
    use chamfer_index::shard as sh;
    vec![
        ("MAX_K", s::MAX_K),
        ("DEFAULT_CANDIDATE_FACTOR", s::DEFAULT_CANDIDATE_FACTOR),
        (
            "DEFAULT_IVF_CANDIDATE_FACTOR",
            s::DEFAULT_IVF_CANDIDATE_FACTOR,
        ),
        ("DEFAULT_IVF_RERANK", s::DEFAULT_IVF_RERANK),
        ("DEFAULT_RERANK_MIN", s::DEFAULT_RERANK_MIN),
        ("DEFAULT_RERANK_MAX", s::DEFAULT_RERANK_MAX),
        ("MAX_NPROBE", s::MAX_NPROBE),
        ("NPROBE_SHARE", s::NPROBE_SHARE),
        ("DEFAULT_NPROBE_MIN", s::DEFAULT_NPROBE_MIN),
        ("DEFAULT_NPROBE_MAX", s::DEFAULT_NPROBE_MAX),
        ("MAX_CODEBOOK_SIZE", sh::MAX_CODEBOOK_SIZE),
        ("MAX_HNSW_M", sh::MAX_HNSW_M),
        ("MAX_EF_CONSTRUCTION", sh::MAX_EF_CONSTRUCTION),
    ]
}

/// The `default` of every collection parameter, from the engine's own defaults ([`IndexParams::new`]), as
/// `(schema, property, value)`.
///
/// [`IndexParams::new`]: chamfer_index::shard::IndexParams::new
pub fn parameter_defaults() -> Vec<(&'static str, &'static str, serde_json::Value)> {
    use serde_json::json;

    use super::collections::{ProjectionTypeDto, StorageDto};
    // Every default below is independent of the token dimension.
    let p = chamfer_index::shard::IndexParams::new(128);
    let (f, h) = (&p.fde, &p.hnsw);
    vec![
        ("FdeParamsIn", "num_repetitions", json!(f.num_repetitions)),
        (
            "FdeParamsIn",
            "num_simhash_projections",
            json!(f.num_simhash_projections),
        ),
        ("FdeParamsIn", "seed", json!(f.seed)),
        (
            "FdeParamsIn",
            "projection_type",
            json!(ProjectionTypeDto::from(f.projection_type)),
        ),
        (
            "FdeParamsIn",
            "projection_dimension",
            json!(f.projection_dimension),
        ),
        (
            "FdeParamsIn",
            "fill_empty_partitions",
            json!(f.fill_empty_partitions),
        ),
        (
            "FdeParamsIn",
            "final_projection_dimension",
            json!(f.final_projection_dimension.unwrap_or(0)),
        ),
        (
            "HnswParamsIn",
            "prefix_repetitions",
            json!(h.prefix_repetitions),
        ),
        ("HnswParamsIn", "m", json!(h.m)),
        ("HnswParamsIn", "ef_construction", json!(h.ef_construction)),
        (
            "HnswParamsIn",
            "storage",
            json!(StorageDto::from(h.storage)),
        ),
        ("HnswParamsIn", "min_docs", json!(h.min_docs)),
        ("CreateCollection", "codebook_size", json!(p.codebook_size)),
    ]
}

/// Fills the descriptions' `{CONSTANT}` placeholders ([`quoted_constants`]) and the collection parameters'
/// `default`s ([`parameter_defaults`]) from the engine.
fn fill_engine_values(doc: &mut Document) {
    use utoipa::openapi::schema::Schema;
    use utoipa::openapi::RefOr;

    let constants = quoted_constants();
    let fill = |text: &mut String| {
        for (name, value) in &constants {
            *text = text.replace(&format!("{{{name}}}"), &value.to_string());
        }
    };
    // The description and default slots of a schema, whatever its kind.
    fn slots(
        s: &mut RefOr<Schema>,
    ) -> (Option<&mut String>, Option<&mut Option<serde_json::Value>>) {
        match s {
            RefOr::Ref(r) => (Some(&mut r.description), None),
            RefOr::T(Schema::Object(o)) => (o.description.as_mut(), Some(&mut o.default)),
            RefOr::T(Schema::OneOf(o)) => (o.description.as_mut(), Some(&mut o.default)),
            RefOr::T(Schema::AllOf(o)) => (o.description.as_mut(), Some(&mut o.default)),
            RefOr::T(Schema::AnyOf(o)) => (o.description.as_mut(), Some(&mut o.default)),
            RefOr::T(_) => (None, None),
        }
    }
    let Some(components) = doc.components.as_mut() else {
        return;
    };
    for (name, schema) in components.schemas.iter_mut() {
        if let (Some(d), _) = slots(schema) {
            fill(d);
        }
        let RefOr::T(Schema::Object(o)) = schema else {
            continue;
        };
        for (property, p) in o.properties.iter_mut() {
            let (description, default) = slots(p);
            if let Some(d) = description {
                fill(d);
            }
            if let Some((_, _, value)) = parameter_defaults()
                .into_iter()
                .find(|(s, f, _)| s == name && f == property)
            {
                *default.expect("a collection parameter's schema has a default slot") = Some(value);
            }
        }
    }
}
