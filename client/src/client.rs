//! The client: one HTTP/2 channel shared by the three services, with an interceptor adding the API key.
use std::time::Duration;

use chamfer_proto::v1 as pb;
use pb::collections_client::CollectionsClient;
use pb::documents_client::DocumentsClient;
use pb::search_client::SearchClient;
use tokio_stream::{Stream, StreamExt};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use crate::types::{Document, Hit, Query, SearchResult, StoredDocument};
use crate::{Error, Result};

/// Adds `authorization: Bearer KEY` to every call when a key is set.
#[derive(Clone, Debug)]
pub struct Auth(Option<MetadataValue<Ascii>>);

impl tonic::service::Interceptor for Auth {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

type Svc = InterceptedService<Channel, Auth>;

/// Default limit on the size of one answer (a `get` with tokens can be large).
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 256 << 20;

/// Connection options for [`Client`]. Start with [`Client::builder`].
#[derive(Clone, Debug)]
pub struct ClientBuilder {
    addr: String,
    api_key: Option<String>,
    connect_timeout: Option<Duration>,
    timeout: Option<Duration>,
    max_message_bytes: usize,
}

impl ClientBuilder {
    /// Sends `authorization: Bearer KEY` with every call (the server's `CHAMFER_API_KEY`).
    pub fn api_key(mut self, key: impl Into<String>) -> Self {
        self.api_key = Some(key.into());
        self
    }

    /// Like [`api_key`](Self::api_key), doing nothing for `None`.
    pub fn api_key_opt(mut self, key: Option<String>) -> Self {
        self.api_key = key;
        self
    }

    /// How long establishing the connection may take (default: no limit).
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = Some(d);
        self
    }

    /// How long each call may take (default: no limit); a call that takes longer fails with [`Error::Timeout`].
    pub fn timeout(mut self, d: Duration) -> Self {
        self.timeout = Some(d);
        self
    }

    /// Largest message sent or received (default 256 MiB; the server has its own request limit, 64 MiB by
    /// default).
    pub fn max_message_bytes(mut self, n: usize) -> Self {
        self.max_message_bytes = n;
        self
    }

    fn endpoint(&self) -> Result<Endpoint> {
        let bad = |message: String| Error::InvalidAddress {
            addr: self.addr.clone(),
            message,
        };
        if !self.addr.contains("://") {
            return Err(bad("expected a URL such as http://127.0.0.1:50051".into()));
        }
        let mut e = Endpoint::from_shared(self.addr.clone()).map_err(|e| bad(e.to_string()))?;
        if let Some(d) = self.connect_timeout {
            e = e.connect_timeout(d);
        }
        if let Some(d) = self.timeout {
            e = e.timeout(d);
        }
        Ok(e.tcp_nodelay(true))
    }

    fn auth(&self) -> Result<Auth> {
        match &self.api_key {
            None => Ok(Auth(None)),
            Some(k) => format!("Bearer {k}")
                .parse()
                .map(|v| Auth(Some(v)))
                .map_err(|_| Error::InvalidInput("the API key must be printable ASCII".into())),
        }
    }

    /// Connects now (fails fast when the server is unreachable).
    pub async fn connect(self) -> Result<Client> {
        let channel = self
            .endpoint()?
            .connect()
            .await
            .map_err(|source| Error::Connect {
                addr: self.addr.clone(),
                source,
            })?;
        Ok(Client::with_parts(
            channel,
            self.auth()?,
            self.max_message_bytes,
        ))
    }

    /// Connects on the first call (and reconnects as needed); never fails for an unreachable server.
    pub fn connect_lazy(self) -> Result<Client> {
        let channel = self.endpoint()?.connect_lazy();
        Ok(Client::with_parts(
            channel,
            self.auth()?,
            self.max_message_bytes,
        ))
    }
}

/// A chamfer gRPC client. Cheap to clone (clones share one connection); every method takes `&self`, so one
/// client serves many concurrent tasks.
#[derive(Clone, Debug)]
pub struct Client {
    collections: CollectionsClient<Svc>,
    documents: DocumentsClient<Svc>,
    search: SearchClient<Svc>,
}

impl Client {
    /// Options for a client of the server at `addr` (e.g. `http://127.0.0.1:50051`).
    pub fn builder(addr: impl Into<String>) -> ClientBuilder {
        ClientBuilder {
            addr: addr.into(),
            api_key: None,
            connect_timeout: None,
            timeout: None,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
        }
    }

    /// Connects to `addr` with default options.
    pub async fn connect(addr: impl Into<String>) -> Result<Client> {
        Client::builder(addr).connect().await
    }

    /// A client over a channel built by the caller (TLS, custom connectors, load balancing), with an optional
    /// API key and message limit.
    pub fn from_channel(
        channel: Channel,
        api_key: Option<String>,
        max_message_bytes: Option<usize>,
    ) -> Result<Client> {
        let b = Client::builder("unused://").api_key_opt(api_key);
        Ok(Client::with_parts(
            channel,
            b.auth()?,
            max_message_bytes.unwrap_or(DEFAULT_MAX_MESSAGE_BYTES),
        ))
    }

    fn with_parts(channel: Channel, auth: Auth, max: usize) -> Client {
        Client {
            collections: CollectionsClient::with_interceptor(channel.clone(), auth.clone())
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
            documents: DocumentsClient::with_interceptor(channel.clone(), auth.clone())
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
            search: SearchClient::with_interceptor(channel, auth)
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
        }
    }

    /// The generated clients, for anything this wrapper does not cover.
    pub fn raw(
        &self,
    ) -> (
        CollectionsClient<Svc>,
        DocumentsClient<Svc>,
        SearchClient<Svc>,
    ) {
        (
            self.collections.clone(),
            self.documents.clone(),
            self.search.clone(),
        )
    }

    // ----- collections ------------------------------------------------------------------------------------

    /// Creates a collection of `dimension`-d token vectors with the server's default index parameters.
    pub async fn create_collection(
        &self,
        name: impl Into<String>,
        dimension: u32,
    ) -> Result<pb::CollectionInfo> {
        self.create_collection_with(pb::CreateCollectionRequest {
            name: name.into(),
            dimension,
            ..Default::default()
        })
        .await
    }

    /// Creates a collection with explicit FDE / HNSW parameters.
    pub async fn create_collection_with(
        &self,
        req: pb::CreateCollectionRequest,
    ) -> Result<pb::CollectionInfo> {
        Ok(self.collections.clone().create(req).await?.into_inner())
    }

    /// Every collection with its statistics.
    pub async fn list_collections(&self) -> Result<Vec<pb::CollectionInfo>> {
        Ok(self
            .collections
            .clone()
            .list(pb::ListCollectionsRequest {})
            .await?
            .into_inner()
            .collections)
    }

    /// One collection's parameters and statistics ([`Error::NotFound`] if absent).
    pub async fn describe_collection(&self, name: impl Into<String>) -> Result<pb::CollectionInfo> {
        let req = pb::DescribeCollectionRequest { name: name.into() };
        Ok(self.collections.clone().describe(req).await?.into_inner())
    }

    /// The collection's description, or `None` when it does not exist.
    pub async fn collection(&self, name: impl Into<String>) -> Result<Option<pb::CollectionInfo>> {
        match self.describe_collection(name).await {
            Ok(i) => Ok(Some(i)),
            Err(Error::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Deletes a collection and all its files.
    pub async fn drop_collection(&self, name: impl Into<String>) -> Result<()> {
        let req = pb::DropCollectionRequest { name: name.into() };
        self.collections.clone().drop(req).await?;
        Ok(())
    }

    /// Turns the write-ahead log into an immutable shard now.
    pub async fn flush(&self, name: impl Into<String>) -> Result<pb::CollectionInfo> {
        let req = pb::FlushRequest { name: name.into() };
        Ok(self.collections.clone().flush(req).await?.into_inner())
    }

    /// Merges the shards into one and drops deleted documents now.
    pub async fn compact(&self, name: impl Into<String>) -> Result<pb::CollectionInfo> {
        let req = pb::CompactRequest { name: name.into() };
        Ok(self.collections.clone().compact(req).await?.into_inner())
    }

    // ----- documents --------------------------------------------------------------------------------------

    /// Inserts or replaces a batch (ids unique within it); durable when this returns.
    pub async fn upsert(
        &self,
        collection: impl Into<String>,
        documents: Vec<Document>,
    ) -> Result<pb::UpsertResponse> {
        let req = pb::UpsertRequest {
            collection: collection.into(),
            documents: documents.into_iter().map(Document::into_proto).collect(),
        };
        Ok(self.documents.clone().upsert(req).await?.into_inner())
    }

    /// Client-streaming bulk upsert: each item of `batches` is one batch, written durably as it arrives. A
    /// failed batch ends the stream with its error; the batches before it stay written.
    pub async fn bulk_upsert<S>(
        &self,
        collection: impl Into<String>,
        batches: S,
    ) -> Result<pb::UpsertResponse>
    where
        S: Stream<Item = Vec<Document>> + Send + 'static,
    {
        let collection = collection.into();
        let reqs = batches.map(move |docs| pb::UpsertRequest {
            collection: collection.clone(),
            documents: docs.into_iter().map(Document::into_proto).collect(),
        });
        Ok(self.documents.clone().bulk_upsert(reqs).await?.into_inner())
    }

    /// Fetches documents by id: the found ones (in request order) and the missing ids.
    pub async fn get<S: Into<String>>(
        &self,
        collection: impl Into<String>,
        ids: impl IntoIterator<Item = S>,
        with_tokens: bool,
    ) -> Result<(Vec<StoredDocument>, Vec<String>)> {
        let req = pb::GetRequest {
            collection: collection.into(),
            ids: ids.into_iter().map(Into::into).collect(),
            with_tokens,
        };
        let r = self.documents.clone().get(req).await?.into_inner();
        Ok((
            r.documents
                .into_iter()
                .map(StoredDocument::from_proto)
                .collect(),
            r.missing,
        ))
    }

    /// Deletes documents by id; returns how many existed.
    pub async fn delete<S: Into<String>>(
        &self,
        collection: impl Into<String>,
        ids: impl IntoIterator<Item = S>,
    ) -> Result<u64> {
        let req = pb::DeleteRequest {
            collection: collection.into(),
            ids: ids.into_iter().map(Into::into).collect(),
        };
        Ok(self
            .documents
            .clone()
            .delete(req)
            .await?
            .into_inner()
            .deleted)
    }

    // ----- search -----------------------------------------------------------------------------------------

    /// One query: the best hits first.
    pub async fn search(&self, collection: impl Into<String>, query: Query) -> Result<Vec<Hit>> {
        Ok(self.search_with_knobs(collection, query).await?.hits)
    }

    /// One query: the best hits first, and the knobs the server says the search ran with.
    pub async fn search_with_knobs(
        &self,
        collection: impl Into<String>,
        query: Query,
    ) -> Result<SearchResult> {
        let mut req = query.0;
        req.collection = collection.into();
        let r = self.search.clone().search(req).await?.into_inner();
        Ok(SearchResult::from_proto(r))
    }

    /// Several queries against one collection, answered from one consistent snapshot, in order.
    pub async fn search_batch(
        &self,
        collection: impl Into<String>,
        queries: Vec<Query>,
    ) -> Result<Vec<Vec<Hit>>> {
        let req = pb::SearchBatchRequest {
            collection: collection.into(),
            searches: queries.into_iter().map(|q| q.0).collect(),
        };
        Ok(self
            .search
            .clone()
            .search_batch(req)
            .await?
            .into_inner()
            .results
            .into_iter()
            .map(|r| r.hits.into_iter().map(Hit::from_proto).collect())
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bad_addresses_and_unreachable_servers_are_typed_errors() {
        let e = Client::connect("127.0.0.1:1").await.unwrap_err();
        assert!(matches!(e, Error::InvalidAddress { .. }), "{e}");
        // Port 1 on loopback: nothing listens there.
        let e = Client::builder("http://127.0.0.1:1")
            .connect_timeout(Duration::from_secs(2))
            .connect()
            .await
            .unwrap_err();
        assert!(
            matches!(e, Error::Connect { .. }) && e.is_retryable(),
            "{e}"
        );
        let lazy = Client::builder("http://127.0.0.1:1")
            .api_key("k3y-k3y-k3y")
            .connect_lazy()
            .unwrap();
        let e = lazy.list_collections().await.unwrap_err();
        assert!(e.is_retryable(), "{e}");
        assert!(Client::builder("http://x")
            .api_key("bad\nkey")
            .connect_lazy()
            .is_err());
    }
}
