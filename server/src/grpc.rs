//! The gRPC adapter (tonic): translates `chamfer.v1` messages to core inputs and core results back. No
//! validation or search logic lives here: every rule is in [`crate::core`], so REST and gRPC answer alike.
//!
//! Also registered: `grpc.health.v1.Health` (no API key needed) and server reflection (`grpc.reflection.v1`, and
//! `grpc.reflection.v1alpha` for older tools).
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chamfer_index::fde::ProjectionType;
use chamfer_index::shard::VectorStorage;
use chamfer_proto::v1 as pb;
use pb::collections_server::{Collections, CollectionsServer};
use pb::documents_server::{Documents, DocumentsServer};
use pb::search_server::{Search, SearchServer};
use tonic::codegen::http;
use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Response, Status, Streaming};

use crate::auth::ApiKey;
use crate::core::filter::{ConditionInput, FilterInput};
use crate::core::input::{
    CollectionParamsInput, DocInput, Dtype, MetadataInput, SearchInput, TokenInput,
};
use crate::core::rerank::{RerankDocs, RerankInput, RerankOutcome};
use crate::core::{CollectionInfo, Core, HitOut};
use crate::error::ServiceError;
use crate::metrics::{Metrics, Proto};
use crate::net::{GrpcWire, Net, NetListener, TrackLayer};

/// The three chamfer services over one core.
#[derive(Clone)]
pub struct GrpcApi {
    core: Core,
    metrics: Arc<Metrics>,
}

impl GrpcApi {
    /// The gRPC services over `core`, recording request metrics in `metrics`.
    pub fn new(core: Core, metrics: Arc<Metrics>) -> Self {
        GrpcApi { core, metrics }
    }

    async fn observe<T>(
        &self,
        op: &'static str,
        fut: impl Future<Output = Result<T, ServiceError>>,
    ) -> Result<Response<T>, Status> {
        self.metrics
            .observe(op, Proto::Grpc, fut)
            .await
            .map(Response::new)
            .map_err(Status::from)
    }
}

// ----- wire -> core ---------------------------------------------------------------------------------------

fn tokens_in(t: Option<pb::Tokens>) -> TokenInput {
    match t {
        None => TokenInput::Rows(Vec::new()),
        Some(t) => TokenInput::Packed {
            dtype: match pb::Dtype::try_from(t.dtype) {
                Ok(pb::Dtype::F32) => Some(Dtype::F32),
                Ok(pb::Dtype::F16) => Some(Dtype::F16),
                Ok(pb::Dtype::Unspecified) | Err(_) => None,
            },
            n_tokens: t.n_tokens as usize,
            dim: t.dim as usize,
            bytes: t.data,
        },
    }
}

/// A wire document as the core's input (public for the fuzz targets: `chamfer_server::fuzzing`).
#[doc(hidden)]
pub fn doc_in(d: pb::Document) -> DocInput {
    DocInput {
        id: d.id,
        tokens: tokens_in(d.tokens),
        metadata: MetadataInput::Text(d.metadata_json),
    }
}

fn value_in(v: pb::Value) -> serde_json::Value {
    use pb::value::Kind;
    match v.kind {
        Some(Kind::StringValue(s)) => serde_json::Value::String(s),
        Some(Kind::IntValue(i)) => i.into(),
        Some(Kind::DoubleValue(d)) => {
            serde_json::Number::from_f64(d).map_or(serde_json::Value::Null, Into::into)
        }
        Some(Kind::BoolValue(b)) => b.into(),
        None => serde_json::Value::Null,
    }
}

fn search_in(s: pb::SearchRequest) -> SearchInput {
    let opt = |v: Option<u32>| v.map(|v| v as usize);
    SearchInput {
        query: tokens_in(s.query),
        k: s.k as usize,
        ef: opt(s.ef),
        candidates: opt(s.candidates),
        rerank: opt(s.rerank),
        prefix_repetitions: opt(s.prefix_repetitions),
        nprobe: opt(s.nprobe),
        exact: s.exact,
        filter: s.filter.map(|f| FilterInput {
            must: f
                .must
                .into_iter()
                .map(|c| ConditionInput {
                    key: c.key,
                    any_of: c.any_of.into_iter().map(value_in).collect(),
                    equals: c.equals.map(value_in),
                })
                .collect(),
            ids: f.ids,
        }),
        with_metadata: s.with_metadata,
    }
}

/// The one proto -> core conversion of collection parameters (unset fields stay unset: the core owns the
/// defaults).
fn params_in(
    fde: Option<pb::FdeParams>,
    hnsw: Option<pb::HnswParams>,
    codebook_size: Option<u32>,
) -> Result<CollectionParamsInput, ServiceError> {
    let (f, h) = (fde.unwrap_or_default(), hnsw.unwrap_or_default());
    let us = |v: Option<u32>| v.map(|v| v as usize);
    let projection_type = match pb::ProjectionType::try_from(f.projection_type) {
        Ok(pb::ProjectionType::Unspecified) => None,
        Ok(pb::ProjectionType::Identity) => Some(ProjectionType::Identity),
        Ok(pb::ProjectionType::AmsSketch) => Some(ProjectionType::AmsSketch),
        Err(_) => {
            return Err(ServiceError::Malformed(format!(
                "unknown projection_type {}",
                f.projection_type
            )))
        }
    };
    let storage = match pb::VectorStorage::try_from(h.storage) {
        Ok(pb::VectorStorage::Unspecified) => None,
        Ok(pb::VectorStorage::F16) => Some(VectorStorage::F16),
        Ok(pb::VectorStorage::F32) => Some(VectorStorage::F32),
        Err(_) => {
            return Err(ServiceError::Malformed(format!(
                "unknown storage {}",
                h.storage
            )))
        }
    };
    Ok(CollectionParamsInput {
        num_repetitions: us(f.num_repetitions),
        num_simhash_projections: f.num_simhash_projections,
        seed: f.seed,
        projection_type,
        projection_dimension: us(f.projection_dimension),
        fill_empty_partitions: f.fill_empty_partitions,
        final_projection_dimension: us(f.final_projection_dimension),
        prefix_repetitions: us(h.prefix_repetitions),
        m: us(h.m),
        ef_construction: us(h.ef_construction),
        storage,
        min_docs: us(h.min_docs),
        codebook_size: us(codebook_size),
    })
}

// ----- core -> wire ---------------------------------------------------------------------------------------

fn info_out(i: CollectionInfo) -> pb::CollectionInfo {
    let (f, h) = (&i.params.fde, &i.params.hnsw);
    pb::CollectionInfo {
        name: i.name,
        dimension: i.dimension as u32,
        fde: Some(pb::FdeParams {
            num_repetitions: Some(f.num_repetitions as u32),
            num_simhash_projections: Some(f.num_simhash_projections),
            seed: Some(f.seed),
            projection_type: match f.projection_type {
                ProjectionType::Identity => pb::ProjectionType::Identity,
                ProjectionType::AmsSketch => pb::ProjectionType::AmsSketch,
            } as i32,
            projection_dimension: Some(f.projection_dimension as u32),
            fill_empty_partitions: Some(f.fill_empty_partitions),
            final_projection_dimension: Some(f.final_projection_dimension.unwrap_or(0) as u32),
        }),
        hnsw: Some(pb::HnswParams {
            prefix_repetitions: Some(h.prefix_repetitions as u32),
            m: Some(h.m as u32),
            ef_construction: Some(h.ef_construction as u32),
            storage: match h.storage {
                VectorStorage::F16 => pb::VectorStorage::F16,
                VectorStorage::F32 => pb::VectorStorage::F32,
            } as i32,
            min_docs: Some(h.min_docs.min(u32::MAX as usize) as u32),
        }),
        stats: Some(pb::CollectionStats {
            documents: i.stats.documents,
            shards: i.stats.shards,
            memtable_documents: i.stats.memtable_documents,
            tombstones: i.stats.tombstones,
            wal_bytes: i.stats.wal_bytes,
            last_sequence: i.stats.last_sequence,
            codebook_centroids: i.stats.codebook_centroids,
            codebook_generation: i.stats.codebook_generation,
            flushed_bytes: i.stats.flushed_bytes,
            compacted_bytes: i.stats.compacted_bytes,
            unverified_shards: i.stats.unverified_shards,
            stale_shards: i.stats.stale_shards,
        }),
        codebook_size: Some(i.params.codebook_size as u32),
    }
}

/// The one proto -> core conversion of a re-rank: exactly one of `ids` and `documents`; `k` 0 is refused.
fn rerank_in(r: pb::RerankRequest) -> Result<RerankInput, ServiceError> {
    let docs = match (r.ids.is_empty(), r.documents.is_empty()) {
        (false, true) => RerankDocs::Stored(r.ids),
        (true, false) => RerankDocs::Supplied(
            r.documents
                .into_iter()
                .map(|d| (d.id, tokens_in(d.tokens)))
                .collect(),
        ),
        (true, true) => {
            return Err(ServiceError::InvalidArgument(
                "a re-rank needs ids or documents".into(),
            ))
        }
        (false, false) => {
            return Err(ServiceError::InvalidArgument(
                "a re-rank takes ids or documents, not both".into(),
            ))
        }
    };
    if r.k == Some(0) {
        return Err(ServiceError::InvalidArgument(
            "k must be at least 1 (leave it unset to keep every document)".into(),
        ));
    }
    Ok(RerankInput {
        query: tokens_in(r.query),
        docs,
        k: r.k.map(|k| k as usize),
        with_metadata: r.with_metadata,
    })
}

fn rerank_out(o: RerankOutcome) -> pb::RerankResponse {
    pb::RerankResponse {
        hits: hits_out(o.hits).hits,
        missing: o.missing,
    }
}

fn hits_out(hits: Vec<HitOut>) -> pb::SearchResponse {
    pb::SearchResponse {
        hits: hits
            .into_iter()
            .map(|h| pb::ScoredDocument {
                id: h.id,
                score: h.score,
                metadata_json: h.metadata.unwrap_or_default(),
            })
            .collect(),
    }
}

/// A stream error from tonic's decoder: an over-limit message is ResourceExhausted, like every other limit, and
/// bytes that are not a valid message are the client's fault: InvalidArgument (tonic says Internal).
fn stream_error(s: Status) -> Status {
    if s.code() == tonic::Code::OutOfRange && s.message().contains("message length too large") {
        Status::resource_exhausted(s.message().to_string())
    } else if s.code() == tonic::Code::Internal && s.message().starts_with(DECODE_ERROR) {
        ServiceError::Malformed(s.message().to_string()).into()
    } else {
        s
    }
}

/// How prost's `DecodeError` (which tonic reports as INTERNAL) starts its message.
const DECODE_ERROR: &str = "failed to decode Protobuf message";

/// When a call arrived (set by the first layer, before its body is read), so `grpc-timeout` counts from there.
#[derive(Clone, Copy, Debug)]
struct Arrival(Instant);

/// Parses a `grpc-timeout` value (`<up to 8 digits><H|M|S|m|u|n>`, gRPC over HTTP/2).
fn parse_grpc_timeout(v: &str) -> Option<Duration> {
    let unit = v.chars().last()?;
    let digits = &v[..v.len() - unit.len_utf8()];
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        'H' => Duration::from_secs(n * 3600),
        'M' => Duration::from_secs(n * 60),
        'S' => Duration::from_secs(n),
        'm' => Duration::from_millis(n),
        'u' => Duration::from_micros(n),
        'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The deadline of a call that arrived at `arrival` with `grpc-timeout` `timeout`: 1 ms earlier than tonic's
/// own timer for the same header, so that this server answers DEADLINE_EXCEEDED before tonic would cancel the
/// call with CANCELLED (tonic polls the service before its timer).
fn deadline_from(arrival: Instant, timeout: Duration) -> Instant {
    (arrival + timeout)
        .checked_sub(Duration::from_millis(1))
        .map_or(arrival, |e| e.max(arrival))
}

fn header_timeout(v: Option<&http::HeaderValue>) -> Option<Duration> {
    parse_grpc_timeout(v?.to_str().ok()?)
}

/// The client's deadline (`grpc-timeout` from arrival), if it sent one.
fn client_deadline<T>(r: &Request<T>) -> Option<Instant> {
    let timeout = parse_grpc_timeout(r.metadata().get("grpc-timeout")?.to_str().ok()?)?;
    let arrival = r
        .extensions()
        .get::<Arrival>()
        .map_or_else(Instant::now, |a| a.0);
    Some(deadline_from(arrival, timeout))
}

/// The outermost layer of our own: stamps each call's arrival and, when the client sent `grpc-timeout`, answers
/// DEADLINE_EXCEEDED at the deadline even while the request body is still arriving or being decoded (the
/// handler, once running, answers it itself and stops its CPU work; dropping it here stops the work too).
#[derive(Clone)]
struct Deadlines<S> {
    inner: S,
}

impl<S, B> tower::Service<http::Request<B>> for Deadlines<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = std::pin::Pin<
        Box<dyn Future<Output = Result<http::Response<tonic::body::Body>, S::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let arrival = Instant::now();
        req.extensions_mut().insert(Arrival(arrival));
        let timeout = header_timeout(req.headers().get("grpc-timeout"));
        let fut = self.inner.call(req);
        Box::pin(async move {
            let Some(timeout) = timeout else {
                return fut.await;
            };
            match tokio::time::timeout_at(deadline_from(arrival, timeout).into(), fut).await {
                Ok(r) => r,
                Err(_) => Ok(Status::from(ServiceError::DeadlineExceeded(format!(
                    "the call did not finish within its grpc-timeout of {} ms; its work was stopped",
                    timeout.as_millis()
                )))
                .into_http()),
            }
        })
    }
}

// ----- services -------------------------------------------------------------------------------------------

#[tonic::async_trait]
impl Collections for GrpcApi {
    async fn create(
        &self,
        r: Request<pb::CreateCollectionRequest>,
    ) -> Result<Response<pb::CollectionInfo>, Status> {
        let r = r.into_inner();
        self.observe("create_collection", async {
            let params = params_in(r.fde, r.hnsw, r.codebook_size)?;
            self.core
                .create_collection(r.name, r.dimension as usize, params)
                .await
                .map(info_out)
        })
        .await
    }

    async fn list(
        &self,
        _: Request<pb::ListCollectionsRequest>,
    ) -> Result<Response<pb::ListCollectionsResponse>, Status> {
        self.observe("list_collections", async {
            Ok(pb::ListCollectionsResponse {
                collections: self
                    .core
                    .list_collections()
                    .into_iter()
                    .map(info_out)
                    .collect(),
            })
        })
        .await
    }

    async fn describe(
        &self,
        r: Request<pb::DescribeCollectionRequest>,
    ) -> Result<Response<pb::CollectionInfo>, Status> {
        let name = r.into_inner().name;
        self.observe("describe_collection", async {
            self.core.describe(&name).map(info_out)
        })
        .await
    }

    async fn drop(
        &self,
        r: Request<pb::DropCollectionRequest>,
    ) -> Result<Response<pb::DropCollectionResponse>, Status> {
        let name = r.into_inner().name;
        self.observe("drop_collection", async {
            self.core
                .drop_collection(&name)
                .await
                .map(|()| pb::DropCollectionResponse {})
        })
        .await
    }

    async fn flush(
        &self,
        r: Request<pb::FlushRequest>,
    ) -> Result<Response<pb::CollectionInfo>, Status> {
        let name = r.into_inner().name;
        self.observe("flush", async {
            self.core.flush(&name).await.map(info_out)
        })
        .await
    }

    async fn compact(
        &self,
        r: Request<pb::CompactRequest>,
    ) -> Result<Response<pb::CollectionInfo>, Status> {
        let name = r.into_inner().name;
        self.observe("compact", async {
            self.core.compact(&name).await.map(info_out)
        })
        .await
    }
}

#[tonic::async_trait]
impl Documents for GrpcApi {
    async fn upsert(
        &self,
        r: Request<pb::UpsertRequest>,
    ) -> Result<Response<pb::UpsertResponse>, Status> {
        let deadline = client_deadline(&r);
        let r = r.into_inner();
        self.observe("upsert", async {
            let docs = r.documents.into_iter().map(doc_in).collect();
            let o = self
                .core
                .upsert_until(&r.collection, docs, deadline)
                .await?;
            Ok(pb::UpsertResponse {
                upserted: o.upserted,
                sequence: o.sequence,
            })
        })
        .await
    }

    async fn bulk_upsert(
        &self,
        r: Request<Streaming<pb::UpsertRequest>>,
    ) -> Result<Response<pb::UpsertResponse>, Status> {
        // The client's deadline covers the whole stream; the server's `request_timeout_ms` each message's
        // CPU part. A message handed to the log is never abandoned.
        let deadline = client_deadline(&r);
        let mut stream = r.into_inner();
        let mut total = pb::UpsertResponse::default();
        let mut collection: Option<String> = None;
        while let Some(msg) = stream.message().await.map_err(stream_error)? {
            if let Some(c) = &collection {
                if !msg.collection.is_empty() && &msg.collection != c {
                    return Err(ServiceError::InvalidArgument(format!(
                        "a bulk upsert goes to one collection: {c:?}, then {:?}",
                        msg.collection
                    ))
                    .into());
                }
            } else {
                collection = Some(msg.collection.clone());
            }
            let name = collection.as_deref().unwrap_or_default();
            let docs = msg.documents.into_iter().map(doc_in).collect();
            let o = self
                .observe(
                    "bulk_upsert_batch",
                    self.core.upsert_until(name, docs, deadline),
                )
                .await?
                .into_inner();
            total.upserted += o.upserted;
            total.sequence = o.sequence;
        }
        Ok(Response::new(total))
    }

    async fn get(&self, r: Request<pb::GetRequest>) -> Result<Response<pb::GetResponse>, Status> {
        let deadline = client_deadline(&r);
        let r = r.into_inner();
        self.observe("get", async {
            let o = self
                .core
                .get_until(&r.collection, r.ids, r.with_tokens, deadline)
                .await?;
            let dim = if r.with_tokens {
                self.core.describe(&r.collection)?.dimension
            } else {
                0
            };
            Ok(pb::GetResponse {
                documents: o
                    .documents
                    .into_iter()
                    .map(|d| pb::Document {
                        id: d.id,
                        tokens: d.tokens.map(|t| chamfer_proto::tokens::pack_f32(&t, dim)),
                        metadata_json: d.metadata.unwrap_or_default(),
                    })
                    .collect(),
                missing: o.missing,
            })
        })
        .await
    }

    async fn delete(
        &self,
        r: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        let r = r.into_inner();
        self.observe("delete", async {
            let o = self.core.delete(&r.collection, r.ids).await?;
            Ok(pb::DeleteResponse {
                deleted: o.deleted,
                sequence: o.sequence,
            })
        })
        .await
    }
}

#[tonic::async_trait]
impl Search for GrpcApi {
    async fn search(
        &self,
        r: Request<pb::SearchRequest>,
    ) -> Result<Response<pb::SearchResponse>, Status> {
        let deadline = client_deadline(&r);
        let r = r.into_inner();
        let name = r.collection.clone();
        self.observe("search", async {
            self.core
                .search_until(&name, search_in(r), deadline)
                .await
                .map(hits_out)
        })
        .await
    }

    async fn search_batch(
        &self,
        r: Request<pb::SearchBatchRequest>,
    ) -> Result<Response<pb::SearchBatchResponse>, Status> {
        let deadline = client_deadline(&r);
        let r = r.into_inner();
        self.observe("search_batch", async {
            if let Some(bad) = r
                .searches
                .iter()
                .find(|s| !s.collection.is_empty() && s.collection != r.collection)
            {
                return Err(ServiceError::InvalidArgument(format!(
                    "search for collection {:?} inside a batch for {:?}",
                    bad.collection, r.collection
                )));
            }
            let searches = r.searches.into_iter().map(search_in).collect();
            let results = self
                .core
                .search_batch_until(&r.collection, searches, deadline)
                .await?;
            Ok(pb::SearchBatchResponse {
                results: results.into_iter().map(hits_out).collect(),
            })
        })
        .await
    }

    async fn rerank(
        &self,
        r: Request<pb::RerankRequest>,
    ) -> Result<Response<pb::RerankResponse>, Status> {
        let deadline = client_deadline(&r);
        let r = r.into_inner();
        self.observe("rerank", async {
            let name = (!r.collection.is_empty()).then(|| r.collection.clone());
            let input = rerank_in(r)?;
            self.core
                .rerank_until(name.as_deref(), input, deadline)
                .await
                .map(rerank_out)
        })
        .await
    }

    async fn rerank_batch(
        &self,
        r: Request<pb::RerankBatchRequest>,
    ) -> Result<Response<pb::RerankBatchResponse>, Status> {
        let deadline = client_deadline(&r);
        let r = r.into_inner();
        self.observe("rerank_batch", async {
            let name = r.requests.first().map(|q| q.collection.clone());
            if let Some(bad) = r
                .requests
                .iter()
                .find(|q| Some(&q.collection) != name.as_ref())
            {
                return Err(ServiceError::InvalidArgument(format!(
                    "re-rank for collection {:?} inside a batch for {:?}",
                    bad.collection,
                    name.unwrap_or_default()
                )));
            }
            let name = name.filter(|n| !n.is_empty());
            let inputs = r
                .requests
                .into_iter()
                .map(rerank_in)
                .collect::<Result<Vec<_>, _>>()?;
            let results = self
                .core
                .rerank_batch_until(name.as_deref(), inputs, deadline)
                .await?;
            Ok(pb::RerankBatchResponse {
                results: results.into_iter().map(rerank_out).collect(),
            })
        })
        .await
    }
}

/// Two answers tonic gives before any handler runs are rewritten to the project's table (trailers-only
/// responses, so the status is in the headers): an over-limit message is OUT_OF_RANGE for tonic but
/// RESOURCE_EXHAUSTED like every other limit (one limit, one code); bytes that do not decode as the request
/// message are INTERNAL for tonic but the client's fault: INVALID_ARGUMENT.
fn fix_status(mut resp: http::Response<tonic::body::Body>) -> http::Response<tonic::body::Body> {
    let h = resp.headers();
    let status = h.get("grpc-status").map(|v| v.as_bytes().to_vec());
    let message = h
        .get("grpc-message")
        .map(|v| String::from_utf8_lossy(v.as_bytes()).replace("%20", " "))
        .unwrap_or_default();
    let fixed = match status.as_deref() {
        Some(b"11") if message.contains("message length too large") => Some("8"),
        Some(b"13") if message.starts_with(DECODE_ERROR) => Some("3"),
        _ => None,
    };
    if let Some(code) = fixed {
        let h = resp.headers_mut();
        h.insert("grpc-status", http::HeaderValue::from_static(code));
        if code == "3" {
            h.insert(
                "chamfer-error-code",
                http::HeaderValue::from_static("malformed"),
            );
        }
    }
    resp
}

/// Serves gRPC on `listener` until `shutdown` resolves, then finishes in-flight calls.
///
/// Every connection goes through `net`'s table and every call through its [`TrackLayer`] (timeouts, cap,
/// memory budget); HTTP/2 keep-alive pings every 30 s (10 s to answer) find vanished peers.
pub async fn serve(
    listener: NetListener,
    api: GrpcApi,
    key: ApiKey,
    max_request_bytes: usize,
    net: Arc<Net>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<CollectionsServer<GrpcApi>>().await;
    health.set_serving::<DocumentsServer<GrpcApi>>().await;
    health.set_serving::<SearchServer<GrpcApi>>().await;
    let reflection_builder = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(chamfer_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection = reflection_builder()
        .build_v1()
        .expect("the embedded descriptor sets are valid");
    // v1alpha too: grpcurl before 1.9, grpc_cli, Postman and Evans only speak the older reflection protocol.
    let reflection_alpha = reflection_builder()
        .build_v1alpha()
        .expect("the embedded descriptor sets are valid");
    let auth = move |req: Request<()>| -> Result<Request<()>, Status> {
        let md = req.metadata();
        key.check(
            md.get("authorization").map(|v| v.as_bytes()),
            md.get("x-api-key").map(|v| v.as_bytes()),
        )?;
        Ok(req)
    };
    let layers = tower::ServiceBuilder::new()
        .layer(TrackLayer::<GrpcWire>::new(net))
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .layer(
            tower_http::trace::TraceLayer::new_for_grpc()
                .make_span_with(crate::rest::request_span)
                // As on REST: server-side errors are logged once by the error mapping.
                .on_failure(tower_http::trace::DefaultOnFailure::new().level(tracing::Level::DEBUG)),
        )
        .layer(PropagateRequestIdLayer::x_request_id())
        .map_response(fix_status)
        .layer(tower::layer::layer_fn(|inner| Deadlines { inner }))
        .into_inner();
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .layer(layers)
        .add_service(health_service)
        .add_service(InterceptedService::new(reflection, auth.clone()))
        .add_service(InterceptedService::new(reflection_alpha, auth.clone()))
        .add_service(InterceptedService::new(
            CollectionsServer::new(api.clone()).max_decoding_message_size(max_request_bytes),
            auth.clone(),
        ))
        .add_service(InterceptedService::new(
            DocumentsServer::new(api.clone()).max_decoding_message_size(max_request_bytes),
            auth.clone(),
        ))
        .add_service(InterceptedService::new(
            SearchServer::new(api).max_decoding_message_size(max_request_bytes),
            auth,
        ))
        // (NetListener sets TCP_NODELAY on every accepted connection.)
        .serve_with_incoming_shutdown(listener, shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_values_parse_per_the_spec() {
        assert_eq!(parse_grpc_timeout("5m"), Some(Duration::from_millis(5)));
        assert_eq!(parse_grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("3M"), Some(Duration::from_secs(180)));
        assert_eq!(parse_grpc_timeout("7u"), Some(Duration::from_micros(7)));
        assert_eq!(
            parse_grpc_timeout("99999999n"),
            Some(Duration::from_nanos(99_999_999))
        );
        for bad in ["", "m", "5", "5x", "-5m", "123456789m", "5 m", "5é"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad:?}");
        }
        // Our deadline is 1 ms before tonic's own timer, never before the arrival.
        let t = Instant::now();
        assert_eq!(
            deadline_from(t, Duration::from_millis(5)),
            t + Duration::from_millis(4)
        );
        assert_eq!(deadline_from(t, Duration::from_micros(10)), t);
    }
}
