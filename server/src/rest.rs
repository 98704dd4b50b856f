//! The REST adapter (axum): JSON in, JSON out, the same operations as gRPC under `/v1/...`.
//!
//! Handlers only parse JSON into core inputs and render core results; every validation rule lives in
//! [`crate::core`]. Errors are `{"code": ..., "message": ...}` with the status from the one table in
//! [`crate::error`]; malformed or oversized bodies go through the same table (see [`ApiJson`]).
//!
//! One row per route (a test in tests/tests/docs.rs pins this table to the routes of [`openapi_document`], which
//! is generated from the same route lists as [`router`]):
//!
//! | method | path | operation |
//! |---|---|---|
//! | GET | `/healthz` | liveness (no API key) |
//! | GET | `/readyz` | readiness (no API key) |
//! | GET | `/metrics` | Prometheus text |
//! | GET | `/openapi.json` | the OpenAPI 3.1 document (generated from `crate::api`) |
//! | GET | `/docs` | a Scalar page over the OpenAPI document |
//! | POST | `/v1/collections` | create (201) |
//! | GET | `/v1/collections` | list |
//! | GET | `/v1/collections/{name}` | describe |
//! | DELETE | `/v1/collections/{name}` | drop |
//! | POST | `/v1/collections/{name}/flush` | flush now |
//! | POST | `/v1/collections/{name}/compact` | compact now |
//! | POST | `/v1/collections/{name}/documents` | upsert a batch |
//! | POST | `/v1/collections/{name}/documents/get` | get by ids |
//! | POST | `/v1/collections/{name}/documents/delete` | delete by ids |
//! | GET | `/v1/collections/{name}/documents/{id}` | get one document |
//! | DELETE | `/v1/collections/{name}/documents/{id}` | delete one document |
//! | POST | `/v1/collections/{name}/search` | search |
//! | POST | `/v1/collections/{name}/search/batch` | several searches |
//! | POST | `/v1/collections/{name}/rerank` | exact Chamfer re-rank of stored documents by id |
//! | POST | `/v1/rerank` | exact Chamfer re-rank of documents sent with the request |
//! | POST | `/v1/rerank/batch` | several re-ranks of sent documents |
//!
//! Slow and many clients (`crate::net`, on every request through its `TrackLayer`): a body that stops arriving
//! answers 408 `request_timeout`, one that does not fit the server's request memory budget 429 `overloaded`
//! (with `Retry-After`), and a connection over the cap is refused with a raw 503 `unavailable`.
//!
//! Deadlines: every request gets the server's `request_timeout_ms`; a client may ask for a shorter one with the
//! `x-timeout-ms: <milliseconds>` header (on search, get and upsert; an upsert's deadline covers only its CPU
//! part, before its log write). Past it the request answers 504 `deadline_exceeded` and its work stops.
use std::future::Future;
use std::sync::Arc;

use std::sync::LazyLock;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, FromRequest, Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use utoipa::OpenApi as _;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api::openapi::ApiDoc;
use crate::api::{
    Collection, CollectionList, CreateCollection, DeleteResult, DocumentOut, Documents, Empty,
    GetOneQuery, Hits, Ids, Liveness, Readiness, Rerank, RerankBatch, RerankBatchResult,
    RerankStored, RerankStoredResult, Search, SearchBatch, SearchBatchResult, SearchHits,
    SearchKnobs, UnavailableCollection, Upsert, UpsertResult,
};
use crate::auth::ApiKey;
use crate::core::input::DocInput;
use crate::core::Core;
use crate::error::ServiceError;
use crate::metrics::{Metrics, Proto};
use crate::net::{ConnInfo, Net, NetListener, RestWire, TrackLayer};

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
    // The body stopped arriving (408) or the server's request memory budget is full (429): see `crate::net`.
    if let Some(e) = crate::net::BodyError::find(&rej) {
        return e;
    }
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

/// The OpenAPI description of [`TIMEOUT_HEADER`].
const TIMEOUT_DOC: &str =
    "a deadline in milliseconds, shorter than the server's request_timeout_ms (504 \
    deadline_exceeded past it; an upsert's covers only its work before the log write)";

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

// ----- handlers (bodies: crate::api; each documented for the generated OpenAPI) --------------------------

/// Path parameter `name`.
const NAME: &str = "collection name";

#[utoipa::path(post, path = "/v1/collections", operation_id = "create_collection", tag = "collections",
    request_body = CreateCollection,
    responses((status = 201, description = "created", body = Collection)))]
async fn create(
    State(s): State<RestApi>,
    body: Body<CreateCollection>,
) -> Result<(StatusCode, Json<Collection>), ServiceError> {
    s.observe("create_collection", async {
        let b = body?.0;
        let params = b.params();
        let info = s
            .core
            .create_collection(b.name, b.dimension, params)
            .await?;
        Ok((StatusCode::CREATED, Json(info.into())))
    })
    .await
}

#[utoipa::path(get, path = "/v1/collections", operation_id = "list_collections", tag = "collections",
    responses((status = 200, description = "every collection that serves, and the unavailable ones", body = CollectionList)))]
async fn list(State(s): State<RestApi>) -> Result<Json<CollectionList>, ServiceError> {
    s.observe("list_collections", async {
        let collections = s
            .core
            .list_collections()
            .into_iter()
            .map(Collection::from)
            .collect();
        let unavailable = s
            .core
            .health()
            .unavailable
            .into_iter()
            .map(|(name, reason)| UnavailableCollection { name, reason })
            .collect();
        Ok(Json(CollectionList {
            collections,
            unavailable,
        }))
    })
    .await
}

#[utoipa::path(get, path = "/v1/collections/{name}", operation_id = "describe_collection", tag = "collections",
    params(("name" = String, Path, description = NAME)),
    responses((status = 200, description = "the collection", body = Collection)))]
async fn describe(
    State(s): State<RestApi>,
    Path(name): Path<String>,
) -> Result<Json<Collection>, ServiceError> {
    s.observe("describe_collection", async {
        Ok(Json(s.core.describe(&name)?.into()))
    })
    .await
}

#[utoipa::path(delete, path = "/v1/collections/{name}", operation_id = "drop_collection", tag = "collections",
    params(("name" = String, Path, description = NAME)),
    responses((status = 200, description = "dropped", body = Empty)))]
async fn drop_collection(
    State(s): State<RestApi>,
    Path(name): Path<String>,
) -> Result<Json<Empty>, ServiceError> {
    s.observe("drop_collection", async {
        s.core.drop_collection(&name).await?;
        Ok(Json(Empty {}))
    })
    .await
}

#[utoipa::path(post, path = "/v1/collections/{name}/flush", operation_id = "flush", tag = "collections",
    params(("name" = String, Path, description = NAME)),
    responses((status = 200, description = "the memtable is a shard now", body = Collection)))]
async fn flush(
    State(s): State<RestApi>,
    Path(name): Path<String>,
) -> Result<Json<Collection>, ServiceError> {
    s.observe("flush", async {
        Ok(Json(s.core.flush(&name).await?.into()))
    })
    .await
}

#[utoipa::path(post, path = "/v1/collections/{name}/compact", operation_id = "compact", tag = "collections",
    params(("name" = String, Path, description = NAME)),
    responses((status = 200, description = "shards merged, deleted documents dropped", body = Collection)))]
async fn compact(
    State(s): State<RestApi>,
    Path(name): Path<String>,
) -> Result<Json<Collection>, ServiceError> {
    s.observe("compact", async {
        Ok(Json(s.core.compact(&name).await?.into()))
    })
    .await
}

/// An upsert body (JSON bytes) as the core's input, as the handler decodes it (public for the fuzz targets:
/// `chamfer_server::fuzzing`).
#[doc(hidden)]
pub fn decode_upsert_body(bytes: &[u8]) -> Result<Vec<DocInput>, ServiceError> {
    let body: Upsert = serde_json::from_slice(bytes)
        .map_err(|e| ServiceError::Malformed(format!("upsert body: {e}")))?;
    body.into_input()
}

#[utoipa::path(post, path = "/v1/collections/{name}/documents", operation_id = "upsert", tag = "documents",
    params(("name" = String, Path, description = NAME),
           ("x-timeout-ms" = Option<u64>, Header, description = TIMEOUT_DOC)),
    request_body = Upsert,
    responses((status = 200, description = "durable when answered", body = UpsertResult)))]
async fn upsert(
    State(s): State<RestApi>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body<Upsert>,
) -> Result<Json<UpsertResult>, ServiceError> {
    s.observe("upsert", async {
        let deadline = client_deadline(&headers)?;
        let docs = body?.0.into_input()?;
        let o = s.core.upsert_until(&name, docs, deadline).await?;
        Ok(Json(o.into()))
    })
    .await
}

async fn get_docs(
    s: &RestApi,
    name: &str,
    ids: Vec<String>,
    with_tokens: bool,
    packed: bool,
    headers: &HeaderMap,
) -> Result<Documents, ServiceError> {
    let deadline = client_deadline(headers)?;
    let o = s.core.get_until(name, ids, with_tokens, deadline).await?;
    Ok(Documents::from_core(o, packed))
}

#[utoipa::path(post, path = "/v1/collections/{name}/documents/get", operation_id = "get", tag = "documents",
    params(("name" = String, Path, description = NAME),
           ("x-timeout-ms" = Option<u64>, Header, description = TIMEOUT_DOC)),
    request_body = Ids,
    responses((status = 200, description = "the documents found, and the missing ids", body = Documents)))]
async fn get_many(
    State(s): State<RestApi>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body<Ids>,
) -> Result<Json<Documents>, ServiceError> {
    s.observe("get", async {
        let b = body?.0;
        Ok(Json(
            get_docs(&s, &name, b.ids, b.with_tokens, b.packed, &headers).await?,
        ))
    })
    .await
}

#[utoipa::path(get, path = "/v1/collections/{name}/documents/{id}", operation_id = "get_one", tag = "documents",
    params(("name" = String, Path, description = NAME), ("id" = String, Path, description = "document id"),
           GetOneQuery, ("x-timeout-ms" = Option<u64>, Header, description = TIMEOUT_DOC)),
    responses((status = 200, description = "the document, with its tokens", body = DocumentOut)))]
async fn get_one(
    State(s): State<RestApi>,
    Path((name, id)): Path<(String, String)>,
    query: Result<Query<GetOneQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Json<DocumentOut>, ServiceError> {
    s.observe("get", async {
        let Query(q) = query.map_err(|e| ServiceError::Malformed(e.body_text()))?;
        let packed = q.packed.unwrap_or(false);
        let mut o = get_docs(&s, &name, vec![id.clone()], true, packed, &headers).await?;
        match o.documents.pop() {
            Some(doc) => Ok(Json(doc)),
            None => Err(chamfer_index::IndexError::NotFound(id).into()),
        }
    })
    .await
}

#[utoipa::path(post, path = "/v1/collections/{name}/documents/delete", operation_id = "delete", tag = "documents",
    params(("name" = String, Path, description = NAME)),
    request_body = Ids,
    responses((status = 200, description = "deleted", body = DeleteResult)))]
async fn delete_many(
    State(s): State<RestApi>,
    Path(name): Path<String>,
    body: Body<Ids>,
) -> Result<Json<DeleteResult>, ServiceError> {
    s.observe("delete", async {
        Ok(Json(s.core.delete(&name, body?.0.ids).await?.into()))
    })
    .await
}

#[utoipa::path(delete, path = "/v1/collections/{name}/documents/{id}", operation_id = "delete_one", tag = "documents",
    params(("name" = String, Path, description = NAME), ("id" = String, Path, description = "document id")),
    responses((status = 200, description = "deleted (0 when it did not exist)", body = DeleteResult)))]
async fn delete_one(
    State(s): State<RestApi>,
    Path((name, id)): Path<(String, String)>,
) -> Result<Json<DeleteResult>, ServiceError> {
    s.observe("delete", async {
        Ok(Json(s.core.delete(&name, vec![id]).await?.into()))
    })
    .await
}

#[utoipa::path(post, path = "/v1/collections/{name}/search", operation_id = "search", tag = "search",
    params(("name" = String, Path, description = NAME),
           ("x-timeout-ms" = Option<u64>, Header, description = TIMEOUT_DOC)),
    request_body = Search,
    responses((status = 200, description = "best first, with the knobs the search ran with", body = SearchHits)))]
async fn search(
    State(s): State<RestApi>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body<Search>,
) -> Result<Json<SearchHits>, ServiceError> {
    s.observe("search", async {
        let deadline = client_deadline(&headers)?;
        let input = body?.0.into_input()?;
        let knobs = SearchKnobs::of(&input);
        let hits = s.core.search_until(&name, input, deadline).await?;
        Ok(Json(SearchHits::from_core(hits, knobs)))
    })
    .await
}

#[utoipa::path(post, path = "/v1/collections/{name}/search/batch", operation_id = "search_batch", tag = "search",
    params(("name" = String, Path, description = NAME),
           ("x-timeout-ms" = Option<u64>, Header, description = TIMEOUT_DOC)),
    request_body = SearchBatch,
    responses((status = 200, description = "one result per search, in order", body = SearchBatchResult)))]
async fn search_batch(
    State(s): State<RestApi>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body<SearchBatch>,
) -> Result<Json<SearchBatchResult>, ServiceError> {
    s.observe("search_batch", async {
        let deadline = client_deadline(&headers)?;
        let b = body?.0;
        let inputs = b
            .searches
            .into_iter()
            .map(Search::into_input)
            .collect::<Result<Vec<_>, _>>()?;
        let knobs: Vec<SearchKnobs> = inputs.iter().map(SearchKnobs::of).collect();
        let results = s.core.search_batch_until(&name, inputs, deadline).await?;
        Ok(Json(SearchBatchResult {
            results: results
                .into_iter()
                .zip(knobs)
                .map(|(h, k)| SearchHits::from_core(h, k))
                .collect(),
        }))
    })
    .await
}

#[utoipa::path(post, path = "/v1/collections/{name}/rerank", operation_id = "rerank_stored", tag = "rerank",
    params(("name" = String, Path, description = NAME),
           ("x-timeout-ms" = Option<u64>, Header, description = TIMEOUT_DOC)),
    request_body = RerankStored,
    responses((status = 200, description = "exact scores, best first; unknown ids in `missing`", body = RerankStoredResult)))]
async fn rerank_stored(
    State(s): State<RestApi>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body<RerankStored>,
) -> Result<Json<RerankStoredResult>, ServiceError> {
    s.observe("rerank", async {
        let deadline = client_deadline(&headers)?;
        let b = body?.0;
        let with_metadata = b.with_metadata;
        let out = s
            .core
            .rerank_until(Some(&name), b.into_input()?, deadline)
            .await?;
        Ok(Json(RerankStoredResult::from_core(out, with_metadata)))
    })
    .await
}

#[utoipa::path(post, path = "/v1/rerank", operation_id = "rerank", tag = "rerank",
    params(("x-timeout-ms" = Option<u64>, Header, description = TIMEOUT_DOC)),
    request_body = Rerank,
    responses((status = 200, description = "exact scores of the sent documents, best first", body = Hits)))]
async fn rerank(
    State(s): State<RestApi>,
    headers: HeaderMap,
    body: Body<Rerank>,
) -> Result<Json<Hits>, ServiceError> {
    s.observe("rerank", async {
        let deadline = client_deadline(&headers)?;
        let input = body?.0.into_input()?;
        let out = s.core.rerank_until(None, input, deadline).await?;
        Ok(Json(Hits::from_core(out.hits, false)))
    })
    .await
}

#[utoipa::path(post, path = "/v1/rerank/batch", operation_id = "rerank_batch", tag = "rerank",
    params(("x-timeout-ms" = Option<u64>, Header, description = TIMEOUT_DOC)),
    request_body = RerankBatch,
    responses((status = 200, description = "one result per request, in order", body = RerankBatchResult)))]
async fn rerank_batch(
    State(s): State<RestApi>,
    headers: HeaderMap,
    body: Body<RerankBatch>,
) -> Result<Json<RerankBatchResult>, ServiceError> {
    s.observe("rerank_batch", async {
        let deadline = client_deadline(&headers)?;
        let inputs = body?
            .0
            .requests
            .into_iter()
            .map(Rerank::into_input)
            .collect::<Result<Vec<_>, _>>()?;
        let out = s.core.rerank_batch_until(None, inputs, deadline).await?;
        Ok(Json(RerankBatchResult {
            results: out
                .into_iter()
                .map(|o| Hits::from_core(o.hits, false))
                .collect(),
        }))
    })
    .await
}

#[utoipa::path(get, path = "/healthz", operation_id = "healthz", tag = "operations", security(()),
    responses((status = 200, description = "alive (no API key)", body = Liveness)))]
async fn healthz() -> Json<Liveness> {
    Json(Liveness { status: "ok" })
}

/// 200 when every collection has been opened (damaged ones are listed, not fatal); 503 with the reason while
/// starting, shutting down, or while writes fail for lack of disk space.
#[utoipa::path(get, path = "/readyz", operation_id = "readyz", tag = "operations", security(()),
    responses((status = 200, description = "ready (no API key)", body = Readiness),
              (status = 503, description = "not ready: while collections open, during shutdown or while the disk is full; the body names the reason", body = Readiness)))]
async fn readyz(State(s): State<RestApi>) -> Response {
    let h = s.core.health();
    let code = if h.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(Readiness::from_core(h))).into_response()
}

#[utoipa::path(get, path = "/metrics", operation_id = "metrics", tag = "operations",
    responses((status = 200, description = "Prometheus metrics, OpenMetrics text exposition", content_type = "application/openmetrics-text", body = String)))]
async fn metrics_text(State(s): State<RestApi>) -> Response {
    (
        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        s.metrics.render(&s.core),
    )
        .into_response()
}

/// The generated document, rendered once.
struct Rendered {
    json: String,
    html: String,
}

static RENDERED: LazyLock<Rendered> = LazyLock::new(|| {
    let doc = openapi_document();
    Rendered {
        json: doc.to_json().unwrap_or_default(),
        html: utoipa_scalar::Scalar::new(doc).to_html(),
    }
});

#[utoipa::path(get, path = "/openapi.json", operation_id = "openapi", tag = "operations",
    responses((status = 200, description = "this OpenAPI 3.1 document", body = Object)))]
async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        RENDERED.json.as_str(),
    )
        .into_response()
}

#[utoipa::path(get, path = "/docs", operation_id = "docs", tag = "operations",
    responses((status = 200, description = "interactive API documentation (HTML)", content_type = "text/html", body = String)))]
async fn docs() -> Html<&'static str> {
    Html(RENDERED.html.as_str())
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

/// Every route behind the API key, each with its OpenAPI operation.
fn keyed_routes() -> OpenApiRouter<RestApi> {
    OpenApiRouter::new()
        .routes(routes!(create, list))
        .routes(routes!(describe, drop_collection))
        .routes(routes!(flush))
        .routes(routes!(compact))
        .routes(routes!(upsert))
        .routes(routes!(get_many))
        .routes(routes!(delete_many))
        .routes(routes!(get_one, delete_one))
        .routes(routes!(search))
        .routes(routes!(search_batch))
        .routes(routes!(rerank_stored))
        .routes(routes!(rerank))
        .routes(routes!(rerank_batch))
        .routes(routes!(metrics_text))
        .routes(routes!(openapi))
        .routes(routes!(docs))
}

/// The routes without an API key (health).
fn open_routes() -> OpenApiRouter<RestApi> {
    OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
}

/// The OpenAPI document of [`router`], generated from the same route lists (so every route is in it) and the
/// bodies of `crate::api`.
pub fn openapi_document() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").into();
    doc.merge(keyed_routes().into_openapi());
    doc.merge(open_routes().into_openapi());
    crate::api::openapi::finish(&mut doc);
    doc
}

/// The router: API routes behind the key check, health routes open.
pub fn router(core: Core, metrics: Arc<Metrics>, key: ApiKey, max_request_bytes: usize) -> Router {
    use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
    let state = RestApi {
        core,
        metrics,
        max_request_bytes,
    };
    let (keyed, _) = keyed_routes().split_for_parts();
    let api = keyed
        .fallback(not_found)
        .route_layer(middleware::from_fn_with_state(key, check_key));
    let (open, _) = open_routes().split_for_parts();
    open.merge(api)
        .with_state(state)
        .layer(DefaultBodyLimit::max(max_request_bytes))
        .layer(
            tower::ServiceBuilder::new()
                .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
                .layer(
                    // Responses the classifier calls failures (5xx) at DEBUG: server-side errors are logged at
                    // ERROR once, with their cause, by the error mapping, and a 503 from /readyz while collections
                    // open is expected (it was an ERROR line per readiness poll).
                    tower_http::trace::TraceLayer::new_for_http()
                        .make_span_with(request_span)
                        .on_failure(
                            tower_http::trace::DefaultOnFailure::new().level(tracing::Level::DEBUG),
                        ),
                )
                .layer(PropagateRequestIdLayer::x_request_id()),
        )
}

/// Serves HTTP on `listener` until `shutdown` resolves, then finishes in-flight requests. Every connection
/// goes through `net`'s table and every request through its [`TrackLayer`] (timeouts, cap, memory budget).
pub async fn serve(
    listener: NetListener,
    router: Router,
    net: Arc<Net>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = router
        .layer(TrackLayer::<RestWire>::new(net))
        .into_make_service_with_connect_info::<ConnInfo>();
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}
