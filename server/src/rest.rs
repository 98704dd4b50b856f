//! The REST adapter (axum): JSON in, JSON out, the same operations as gRPC under `/v1/...`.
//!
//! Handlers only parse JSON into core inputs and render core results; every validation rule lives in
//! [`crate::core`]. Errors are `{"code": ..., "message": ...}` with the status from the one table in
//! [`crate::error`]; malformed or oversized bodies go through the same table (see [`ApiJson`]).
//!
//! | method | path | operation |
//! |---|---|---|
//! | GET | `/healthz`, `/readyz` | liveness, readiness (no API key) |
//! | GET | `/metrics` | Prometheus text |
//! | GET | `/openapi.json` | the OpenAPI 3.1 document |
//! | POST / GET | `/v1/collections` | create / list |
//! | GET / DELETE | `/v1/collections/{name}` | describe / drop |
//! | POST | `/v1/collections/{name}/flush`, `/compact` | maintenance now |
//! | POST | `/v1/collections/{name}/documents` | upsert a batch |
//! | POST | `/v1/collections/{name}/documents/get`, `/documents/delete` | get / delete by ids |
//! | GET / DELETE | `/v1/collections/{name}/documents/{id}` | one document |
//! | POST | `/v1/collections/{name}/search`, `/search/batch` | search |
//!
//! Deadlines: every request gets the server's `request_timeout_ms`; a client may ask for a shorter one with the
//! `x-timeout-ms: <milliseconds>` header (on search, get and upsert; an upsert's deadline covers only its CPU
//! part, before its log write). Past it the request answers 504 `deadline_exceeded` and its work stops.
use std::future::Future;
use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, Path, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::net::TcpListener;

use crate::auth::ApiKey;
use crate::core::filter::FilterInput;
use crate::core::input::{CollectionParamsInput, DocInput, MetadataInput, SearchInput, TokenInput};
use crate::core::{CollectionInfo, Core, HitOut};
use crate::error::ServiceError;
use crate::metrics::{Metrics, Proto};

/// Shared handler state.
#[derive(Clone)]
pub struct RestApi {
    core: Core,
    metrics: Arc<Metrics>,
    max_request_bytes: usize,
}

/// `Json<T>` whose rejections (bad syntax, wrong types, missing content type, body over the limit) become
/// [`ServiceError`]s, so they get the JSON error body and the table's status like every other error.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ServiceError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(ApiJson(v)),
            Err(rej) => Err(json_rejection(rej)),
        }
    }
}

fn json_rejection(rej: JsonRejection) -> ServiceError {
    if rej.status() == StatusCode::PAYLOAD_TOO_LARGE {
        // The limit itself is filled in by the handler's state; the extractor does not know it.
        return ServiceError::RequestTooLarge { max: 0 };
    }
    match rej {
        JsonRejection::MissingJsonContentType(_) => ServiceError::Malformed(
            "expected a JSON body with Content-Type: application/json".into(),
        ),
        other => ServiceError::Malformed(other.body_text()),
    }
}

impl RestApi {
    async fn observe<T>(
        &self,
        op: &'static str,
        fut: impl Future<Output = Result<T, ServiceError>>,
    ) -> Result<T, ServiceError> {
        let max = self.max_request_bytes;
        self.metrics
            .observe(op, Proto::Rest, fut)
            .await
            .map_err(|e| {
                if let ServiceError::RequestTooLarge { .. } = e {
                    ServiceError::RequestTooLarge { max }
                } else {
                    e
                }
            })
    }
}

type Body<T> = Result<ApiJson<T>, ServiceError>;

/// The request header with a client's own (shorter) deadline, in milliseconds.
pub const TIMEOUT_HEADER: &str = "x-timeout-ms";

/// The client's deadline from [`TIMEOUT_HEADER`], if it sent one; counted from now (the body has been read).
fn client_deadline(headers: &HeaderMap) -> Result<Option<std::time::Instant>, ServiceError> {
    let Some(v) = headers.get(TIMEOUT_HEADER) else {
        return Ok(None);
    };
    let ms = v
        .to_str()
        .ok()
        .and_then(|t| t.trim().parse::<u64>().ok())
        .filter(|&ms| ms <= crate::config::MAX_REQUEST_TIMEOUT_MS)
        .ok_or_else(|| {
            ServiceError::Malformed(format!(
                "{TIMEOUT_HEADER} must be a number of milliseconds in 0..={}",
                crate::config::MAX_REQUEST_TIMEOUT_MS
            ))
        })?;
    Ok(Some(
        std::time::Instant::now() + std::time::Duration::from_millis(ms),
    ))
}

// ----- JSON shapes ----------------------------------------------------------------------------------------

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FdeJson {
    num_repetitions: Option<usize>,
    num_simhash_projections: Option<u32>,
    seed: Option<u64>,
    projection_type: Option<chamfer_index::fde::ProjectionType>,
    projection_dimension: Option<usize>,
    fill_empty_partitions: Option<bool>,
    final_projection_dimension: Option<usize>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct HnswJson {
    prefix_repetitions: Option<usize>,
    m: Option<usize>,
    ef_construction: Option<usize>,
    storage: Option<chamfer_index::shard::VectorStorage>,
    min_docs: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    name: String,
    dimension: usize,
    #[serde(default)]
    fde: FdeJson,
    #[serde(default)]
    hnsw: HnswJson,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DocJson {
    id: String,
    tokens: Vec<Vec<f32>>,
    #[serde(default)]
    metadata: Value,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpsertBody {
    documents: Vec<DocJson>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IdsBody {
    ids: Vec<String>,
    #[serde(default)]
    with_tokens: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SearchBody {
    query: Vec<Vec<f32>>,
    k: usize,
    ef: Option<usize>,
    candidates: Option<usize>,
    rerank: Option<usize>,
    prefix_repetitions: Option<usize>,
    #[serde(default)]
    exact: bool,
    filter: Option<FilterInput>,
    #[serde(default)]
    with_metadata: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SearchBatchBody {
    searches: Vec<SearchBody>,
}

impl SearchBody {
    fn into_input(self) -> SearchInput {
        SearchInput {
            query: TokenInput::Rows(self.query),
            k: self.k,
            ef: self.ef,
            candidates: self.candidates,
            rerank: self.rerank,
            prefix_repetitions: self.prefix_repetitions,
            exact: self.exact,
            filter: self.filter,
            with_metadata: self.with_metadata,
        }
    }
}

fn info_json(i: CollectionInfo) -> Value {
    let s = i.stats;
    json!({
        "name": i.name,
        "dimension": i.dimension,
        "fde": i.params.fde,
        "hnsw": i.params.hnsw,
        "stats": {
            "documents": s.documents, "shards": s.shards, "memtable_documents": s.memtable_documents,
            "tombstones": s.tombstones, "wal_bytes": s.wal_bytes, "last_sequence": s.last_sequence,
        },
    })
}

fn metadata_json(m: Option<String>) -> Value {
    m.and_then(|m| serde_json::from_str(&m).ok())
        .unwrap_or_else(|| json!({}))
}

fn hits_json(hits: Vec<HitOut>, with_metadata: bool) -> Value {
    let hits: Vec<Value> = hits
        .into_iter()
        .map(|h| {
            if with_metadata {
                json!({"id": h.id, "score": h.score, "metadata": metadata_json(h.metadata)})
            } else {
                json!({"id": h.id, "score": h.score})
            }
        })
        .collect();
    json!({ "hits": hits })
}

// ----- handlers -------------------------------------------------------------------------------------------

async fn create(
    State(s): State<RestApi>,
    body: Body<CreateBody>,
) -> Result<(StatusCode, Json<Value>), ServiceError> {
    s.observe("create_collection", async {
        let b = body?.0;
        let params = CollectionParamsInput {
            num_repetitions: b.fde.num_repetitions,
            num_simhash_projections: b.fde.num_simhash_projections,
            seed: b.fde.seed,
            projection_type: b.fde.projection_type,
            projection_dimension: b.fde.projection_dimension,
            fill_empty_partitions: b.fde.fill_empty_partitions,
            final_projection_dimension: b.fde.final_projection_dimension,
            prefix_repetitions: b.hnsw.prefix_repetitions,
            m: b.hnsw.m,
            ef_construction: b.hnsw.ef_construction,
            storage: b.hnsw.storage,
            min_docs: b.hnsw.min_docs,
        };
        let info = s
            .core
            .create_collection(b.name, b.dimension, params)
            .await?;
        Ok((StatusCode::CREATED, Json(info_json(info))))
    })
    .await
}

async fn list(State(s): State<RestApi>) -> Result<Json<Value>, ServiceError> {
    s.observe("list_collections", async {
        let all: Vec<Value> = s
            .core
            .list_collections()
            .into_iter()
            .map(info_json)
            .collect();
        let unavailable: Vec<Value> = s
            .core
            .health()
            .unavailable
            .into_iter()
            .map(|(n, r)| json!({"name": n, "reason": r}))
            .collect();
        Ok(Json(
            json!({ "collections": all, "unavailable": unavailable }),
        ))
    })
    .await
}

async fn describe(
    State(s): State<RestApi>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ServiceError> {
    s.observe("describe_collection", async {
        Ok(Json(info_json(s.core.describe(&name)?)))
    })
    .await
}

async fn drop_collection(
    State(s): State<RestApi>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ServiceError> {
    s.observe("drop_collection", async {
        s.core.drop_collection(&name).await?;
        Ok(Json(json!({})))
    })
    .await
}

async fn flush(
    State(s): State<RestApi>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ServiceError> {
    s.observe("flush", async {
        Ok(Json(info_json(s.core.flush(&name).await?)))
    })
    .await
}

async fn compact(
    State(s): State<RestApi>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ServiceError> {
    s.observe("compact", async {
        Ok(Json(info_json(s.core.compact(&name).await?)))
    })
    .await
}

fn upsert_docs_in(body: UpsertBody) -> Vec<DocInput> {
    body.documents
        .into_iter()
        .map(|d| DocInput {
            id: d.id,
            tokens: TokenInput::Rows(d.tokens),
            metadata: MetadataInput::Value(d.metadata),
        })
        .collect()
}

/// An upsert body (JSON bytes) as the core's input, as the handler decodes it (public for the fuzz targets:
/// `chamfer_server::fuzzing`).
#[doc(hidden)]
pub fn decode_upsert_body(bytes: &[u8]) -> Result<Vec<DocInput>, ServiceError> {
    let body: UpsertBody = serde_json::from_slice(bytes)
        .map_err(|e| ServiceError::Malformed(format!("upsert body: {e}")))?;
    Ok(upsert_docs_in(body))
}

async fn upsert(
    State(s): State<RestApi>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body<UpsertBody>,
) -> Result<Json<Value>, ServiceError> {
    s.observe("upsert", async {
        let deadline = client_deadline(&headers)?;
        let docs = upsert_docs_in(body?.0);
        let o = s.core.upsert_until(&name, docs, deadline).await?;
        Ok(Json(
            json!({"upserted": o.upserted, "sequence": o.sequence}),
        ))
    })
    .await
}

async fn get_docs(
    s: &RestApi,
    name: &str,
    ids: Vec<String>,
    with_tokens: bool,
    headers: &HeaderMap,
) -> Result<Value, ServiceError> {
    let deadline = client_deadline(headers)?;
    let o = s.core.get_until(name, ids, with_tokens, deadline).await?;
    let docs: Vec<Value> = o
        .documents
        .into_iter()
        .map(|d| {
            let mut v =
                json!({"id": d.id, "n_tokens": d.n_tokens, "metadata": metadata_json(d.metadata)});
            if let Some(t) = d.tokens {
                let dim = t.len() / d.n_tokens.max(1);
                v["tokens"] = json!(t.chunks(dim.max(1)).collect::<Vec<_>>());
            }
            v
        })
        .collect();
    Ok(json!({"documents": docs, "missing": o.missing}))
}

async fn get_many(
    State(s): State<RestApi>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body<IdsBody>,
) -> Result<Json<Value>, ServiceError> {
    s.observe("get", async {
        let b = body?.0;
        Ok(Json(
            get_docs(&s, &name, b.ids, b.with_tokens, &headers).await?,
        ))
    })
    .await
}

async fn get_one(
    State(s): State<RestApi>,
    Path((name, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<Value>, ServiceError> {
    s.observe("get", async {
        let mut v = get_docs(&s, &name, vec![id.clone()], true, &headers).await?;
        match v["documents"].as_array_mut().and_then(|d| d.pop()) {
            Some(doc) => Ok(Json(doc)),
            None => Err(chamfer_index::IndexError::NotFound(id).into()),
        }
    })
    .await
}

async fn delete_many(
    State(s): State<RestApi>,
    Path(name): Path<String>,
    body: Body<IdsBody>,
) -> Result<Json<Value>, ServiceError> {
    s.observe("delete", async {
        let o = s.core.delete(&name, body?.0.ids).await?;
        Ok(Json(json!({"deleted": o.deleted, "sequence": o.sequence})))
    })
    .await
}

async fn delete_one(
    State(s): State<RestApi>,
    Path((name, id)): Path<(String, String)>,
) -> Result<Json<Value>, ServiceError> {
    s.observe("delete", async {
        let o = s.core.delete(&name, vec![id]).await?;
        Ok(Json(json!({"deleted": o.deleted, "sequence": o.sequence})))
    })
    .await
}

async fn search(
    State(s): State<RestApi>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body<SearchBody>,
) -> Result<Json<Value>, ServiceError> {
    s.observe("search", async {
        let deadline = client_deadline(&headers)?;
        let b = body?.0;
        let with_metadata = b.with_metadata;
        Ok(Json(hits_json(
            s.core.search_until(&name, b.into_input(), deadline).await?,
            with_metadata,
        )))
    })
    .await
}

async fn search_batch(
    State(s): State<RestApi>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body<SearchBatchBody>,
) -> Result<Json<Value>, ServiceError> {
    s.observe("search_batch", async {
        let deadline = client_deadline(&headers)?;
        let b = body?.0;
        let meta: Vec<bool> = b.searches.iter().map(|q| q.with_metadata).collect();
        let results = s
            .core
            .search_batch_until(
                &name,
                b.searches.into_iter().map(SearchBody::into_input).collect(),
                deadline,
            )
            .await?;
        let results: Vec<Value> = results
            .into_iter()
            .zip(meta)
            .map(|(h, m)| hits_json(h, m))
            .collect();
        Ok(Json(json!({ "results": results })))
    })
    .await
}

async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// 200 when every collection has been opened (damaged ones are listed, not fatal); 503 with the reason while
/// starting, shutting down, or while writes fail for lack of disk space.
async fn readyz(State(s): State<RestApi>) -> Response {
    let h = s.core.health();
    let pairs = |v: &[(String, String)]| -> Value {
        v.iter()
            .map(|(n, r)| json!({"collection": n, "reason": r}))
            .collect()
    };
    let body = json!({
        "status": if h.ready { "ready" } else { "not_ready" },
        "reason": h.reason,
        "unavailable_collections": pairs(&h.unavailable),
        "storage_full": pairs(&h.storage_full),
    });
    let code = if h.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}

async fn metrics_text(State(s): State<RestApi>) -> Response {
    (
        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        s.metrics.render(&s.core),
    )
        .into_response()
}

async fn openapi() -> Json<Value> {
    Json(crate::openapi::document())
}

async fn not_found(method: axum::http::Method, uri: axum::http::Uri) -> ServiceError {
    ServiceError::RouteNotFound(format!("{method} {}", uri.path()))
}

async fn check_key(
    State(key): State<ApiKey>,
    headers: HeaderMap,
    req: Request,
    next: Next,
) -> Response {
    let h = |name| {
        headers
            .get(name)
            .map(|v: &axum::http::HeaderValue| v.as_bytes())
    };
    match key.check(h(header::AUTHORIZATION.as_str()), h("x-api-key")) {
        Ok(()) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

/// A span per request, carrying the request id (set by `SetRequestIdLayer`, or sent by the client).
pub fn request_span<B>(req: &axum::http::Request<B>) -> tracing::Span {
    let id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-");
    tracing::info_span!("request", method = %req.method(), path = %req.uri().path(), request_id = %id)
}

/// The router: API routes behind the key check, health routes open.
pub fn router(core: Core, metrics: Arc<Metrics>, key: ApiKey, max_request_bytes: usize) -> Router {
    use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
    let state = RestApi {
        core,
        metrics,
        max_request_bytes,
    };
    let api = Router::new()
        .route("/v1/collections", post(create).get(list))
        .route(
            "/v1/collections/{name}",
            get(describe).delete(drop_collection),
        )
        .route("/v1/collections/{name}/flush", post(flush))
        .route("/v1/collections/{name}/compact", post(compact))
        .route("/v1/collections/{name}/documents", post(upsert))
        .route("/v1/collections/{name}/documents/get", post(get_many))
        .route("/v1/collections/{name}/documents/delete", post(delete_many))
        .route(
            "/v1/collections/{name}/documents/{id}",
            get(get_one).delete(delete_one),
        )
        .route("/v1/collections/{name}/search", post(search))
        .route("/v1/collections/{name}/search/batch", post(search_batch))
        .route("/metrics", get(metrics_text))
        .route("/openapi.json", get(openapi))
        .fallback(not_found)
        .route_layer(middleware::from_fn_with_state(key, check_key));
    let open = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz));
    open.merge(api)
        .with_state(state)
        .layer(DefaultBodyLimit::max(max_request_bytes))
        .layer(
            tower::ServiceBuilder::new()
                .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
                .layer(tower_http::trace::TraceLayer::new_for_http().make_span_with(request_span))
                .layer(PropagateRequestIdLayer::x_request_id()),
        )
}

/// Serves HTTP on `listener` until `shutdown` resolves, then finishes in-flight requests.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}
