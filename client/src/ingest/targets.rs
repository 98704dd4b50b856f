//! [`IngestTarget`] over gRPC ([`Client`]) and REST ([`RestClient`]).
use super::IngestTarget;
use crate::{pb, Client, Document, Error, RestClient, Result};

/// A dimension as the wire carries it (u32).
fn wire_dimension(dimension: usize) -> Result<u32> {
    u32::try_from(dimension)
        .map_err(|_| Error::InvalidInput(format!("dimension {dimension} is too large")))
}

/// Creating a collection that already exists is what a resumed ingest expects.
fn exists_is_fine<T>(r: Result<T>) -> Result<()> {
    match r {
        Ok(_) | Err(Error::AlreadyExists(_)) => Ok(()),
        Err(e) => Err(e),
    }
}

impl IngestTarget for Client {
    async fn dimension(&self, collection: &str) -> Result<Option<usize>> {
        Ok(self
            .collection(collection)
            .await?
            .map(|i| i.dimension as usize))
    }

    async fn create(&self, collection: &str, dimension: usize) -> Result<()> {
        exists_is_fine(
            self.create_collection(collection, wire_dimension(dimension)?)
                .await,
        )
    }

    async fn missing(&self, collection: &str, ids: Vec<String>) -> Result<Vec<String>> {
        Ok(self.get(collection, ids, false).await?.1)
    }

    async fn upsert(&self, collection: &str, docs: Vec<Document>) -> Result<u64> {
        let r: pb::UpsertResponse = Client::upsert(self, collection, docs).await?;
        Ok(r.upserted)
    }
}

impl IngestTarget for RestClient {
    async fn dimension(&self, collection: &str) -> Result<Option<usize>> {
        Ok(self
            .collection(collection)
            .await?
            .map(|v| v["dimension"].as_u64().unwrap_or(0) as usize))
    }

    async fn create(&self, collection: &str, dimension: usize) -> Result<()> {
        exists_is_fine(
            self.create_collection(collection, wire_dimension(dimension)?)
                .await,
        )
    }

    async fn missing(&self, collection: &str, ids: Vec<String>) -> Result<Vec<String>> {
        RestClient::missing(self, collection, ids).await
    }

    async fn upsert(&self, collection: &str, docs: Vec<Document>) -> Result<u64> {
        RestClient::upsert(self, collection, docs).await
    }
}
