//! The gRPC adapter (tonic): translates `chamfer.v1` messages to core inputs and core results back. No
//! validation or search logic lives here: every rule is in [`crate::core`], so REST and gRPC answer alike.
//!
//! Files: `conversions.rs` (wire <-> core, besides the upsert path's tokens and documents here), `deadline.rs`
//! (`grpc-timeout`, tonic's early answers); this file holds the services and [`serve`].
//!
//! Also registered: `grpc.health.v1.Health` (no API key needed) and server reflection (`grpc.reflection.v1`, and
//! `grpc.reflection.v1alpha` for older tools).
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chamfer_proto::v1 as pb;
use pb::collections_server::{Collections, CollectionsServer};
use pb::documents_server::{Documents, DocumentsServer};
use pb::search_server::{Search, SearchServer};
use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Response, Status, Streaming};

use crate::auth::ApiKey;
use crate::core::input::{DocInput, Dtype, MetadataInput, TokenInput};
use crate::core::Core;
use crate::error::ServiceError;
use crate::metrics::{Metrics, Proto};
use crate::net::{GrpcWire, Net, NetListener, TrackLayer};

mod conversions;
mod deadline;

use conversions::{info_out, knobs_out, params_in, rerank_in, rerank_out, search_in, search_out};
use deadline::{client_deadline, fix_status, Deadlines, DECODE_ERROR};

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
            let input = search_in(r);
            let knobs = knobs_out(&input);
            self.core
                .search_until(&name, input, deadline)
                .await
                .map(|hits| search_out(hits, knobs))
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
            let searches: Vec<_> = r.searches.into_iter().map(search_in).collect();
            let knobs: Vec<_> = searches.iter().map(knobs_out).collect();
            let results = self
                .core
                .search_batch_until(&r.collection, searches, deadline)
                .await?;
            Ok(pb::SearchBatchResponse {
                results: results
                    .into_iter()
                    .zip(knobs)
                    .map(|(h, k)| search_out(h, k))
                    .collect(),
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
