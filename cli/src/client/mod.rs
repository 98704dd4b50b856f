//! Client verbs over gRPC (crate `chamfer-client`), one file per verb: `ingest`, `query`, `collections`, and
//! `healthcheck` (plain HTTP). `demo` and `load` live in their own modules and reuse the helpers here.
use std::time::Duration;

use chamfer_client::Client;
use clap::Args;

/// Where the server is.
#[derive(Args, Debug, Clone)]
pub(crate) struct Conn {
    /// The server's gRPC address.
    #[arg(long, env = "CHAMFER_ADDR", default_value = "http://127.0.0.1:50051")]
    pub addr: String,
    /// API key, when the server has one.
    #[arg(long, env = "CHAMFER_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Per-request timeout in seconds.
    #[arg(long, default_value_t = 120.0)]
    pub timeout: f64,
}

impl Conn {
    /// The address as a URL (`host:port` gets `http://`).
    pub(crate) fn url(&self) -> String {
        if self.addr.contains("://") {
            self.addr.clone()
        } else {
            format!("http://{}", self.addr)
        }
    }

    pub(crate) async fn connect(&self) -> anyhow::Result<Client> {
        Ok(Client::builder(self.url())
            .api_key_opt(self.api_key.clone())
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs_f64(self.timeout.max(0.001)))
            .connect()
            .await?)
    }
}

/// A current-thread runtime: the client verbs are I/O-bound and should leave the cores to the server.
pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

mod collections;
mod healthcheck;
mod ingest;
mod knobs;
mod query;

pub(crate) use collections::CollectionsCmd;
pub(crate) use healthcheck::HealthcheckCmd;
pub(crate) use ingest::{ingest, ingest_json, IngestCmd, IngestOpts, Source};
pub(crate) use knobs::{add_knobs, KnobArgs};
pub(crate) use query::{grpc_body, rest_body, QueryCmd};
