//! # chamfer-client: a typed async gRPC client for chamfer
//!
//! chamfer is a multi-vector (ColBERT-style) retrieval server: a document is an external string id, a set of
//! token vectors and optional JSON metadata; a search sends a query's token vectors and gets the `k` documents
//! with the highest Chamfer (MaxSim) score. This crate talks to it over gRPC (package `chamfer.v1`, crate
//! [`chamfer_proto`]) or REST ([`RestClient`]) and depends on nothing else of chamfer: no engine, no server.
//!
//! ```no_run
//! use chamfer_client::{Client, Document, Filter, Query};
//!
//! # async fn demo() -> Result<(), chamfer_client::Error> {
//! let client = Client::connect("http://127.0.0.1:50051").await?;
//! client.create_collection("notes", 4).await?;
//! client
//!     .upsert(
//!         "notes",
//!         vec![
//!             // Two token vectors of dimension 4, row-major.
//!             Document::new("a", &[1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0], 4)
//!                 .with_metadata(serde_json::json!({"lang": "en"})),
//!             Document::new("b", &[0.0, 0.0, 1.0, 0.0], 4),
//!         ],
//!     )
//!     .await?;
//! let hits = client
//!     .search("notes", Query::new(&[1.0, 0.0, 0.0, 0.0], 4).k(5).filter(Filter::new().eq("lang", "en")).with_metadata())
//!     .await?;
//! for h in hits {
//!     println!("{} {:.3} {:?}", h.id, h.score, h.metadata);
//! }
//! # Ok(()) }
//! ```
//!
//! ## Connection options
//!
//! [`ClientBuilder`]: address, API key (sent as `authorization: Bearer KEY` on every call by an interceptor),
//! connect timeout, per-request timeout (a gRPC deadline), message size limits, lazy connection.
//!
//! ```no_run
//! # async fn demo() -> Result<(), chamfer_client::Error> {
//! use std::time::Duration;
//! let client = chamfer_client::Client::builder("http://10.0.0.5:50051")
//!     .api_key("s3cret-key")
//!     .connect_timeout(Duration::from_secs(3))
//!     .timeout(Duration::from_secs(10))
//!     .connect()
//!     .await?;
//! # Ok(()) }
//! ```
//!
//! ## TLS
//!
//! No TLS stack is compiled in by default (so the crate pulls no crypto dependencies). For an `https://`
//! endpoint, enable one of tonic's TLS features in your own `Cargo.toml` (cargo unifies features, so this crate's
//! tonic gets it too), build the channel yourself and hand it over:
//!
//! ```toml
//! tonic = { version = "0.14", features = ["tls-ring", "tls-native-roots"] }
//! ```
//!
//! ```ignore
//! use tonic::transport::{Channel, ClientTlsConfig};
//! let channel = Channel::from_static("https://chamfer.example.com")
//!     .tls_config(ClientTlsConfig::new().with_native_roots())?
//!     .connect()
//!     .await?;
//! let client = chamfer_client::Client::from_channel(channel, Some("s3cret-key".into()), None);
//! ```
//!
//! ## Errors
//!
//! Every call returns [`Error`]: the server's gRPC status mapped to a variant ([`Error::NotFound`],
//! [`Error::AlreadyExists`], [`Error::InvalidArgument`], [`Error::Unauthenticated`], ...), a transport failure,
//! or a problem the client found before sending (bad address, bad metadata JSON).
//!
//! ## REST and bulk ingest
//!
//! [`RestClient`] talks to the same server over its REST API (plain HTTP/1.1 on `hyper-util`'s pooled client).
//! [`ingest::ingest`] uploads a numbered list of documents over either protocol ([`ingest::IngestTarget`] is
//! implemented by [`Client`] and [`RestClient`]): batches asked of the [`ingest::DocumentSource`] one at a time
//! (memory bounded whatever the source's size), resume by id, retry when the server pushes back, uploads in
//! flight, a progress callback.
//!
//! ## Examples
//!
//! `client/examples/search.rs` creates a collection, bulk-uploads the bundled demo data set (`data/demo`) and
//! searches it; `client/examples/quickstart.rs` is the snippet above. Run them against a server
//! (`chamfer serve` or `chamfer demo`):
//!
//! ```text
//! cargo run -p chamfer-client --example search -- http://127.0.0.1:50051 data/demo
//! ```
#![warn(missing_docs)]
mod client;
mod error;
pub mod ingest;
pub mod rest;
mod types;

pub use chamfer_proto::v1 as pb;
pub use client::{Client, ClientBuilder, DEFAULT_MAX_MESSAGE_BYTES};
pub use error::Error;
pub use rest::{RestClient, RestResponse};
pub use types::{Document, Filter, Hit, Query, SearchResult, StoredDocument, Vectors};

/// The result type of every call.
pub type Result<T, E = Error> = std::result::Result<T, E>;
