//! `chamfer serve`: the server process (tracing, tokio runtime, signals) around `chamfer_server::serve::run`.
use std::path::PathBuf;

use chamfer_server::config::{Settings, SettingsLayer};
use clap::Args;

/// Where the server listens and keeps its data (shared by `serve` and `demo`).
#[derive(Args, Debug)]
pub(crate) struct ServerArgs {
    /// Configuration file (TOML, or JSON when it ends in .json). Precedence: flags > CHAMFER_* env > file > defaults.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Data directory [env CHAMFER_DATA_DIR; default ./chamfer-data].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// HTTP (REST) listen address [env CHAMFER_HTTP_ADDR; default 127.0.0.1:8080].
    #[arg(long)]
    http_addr: Option<String>,
    /// gRPC listen address [env CHAMFER_GRPC_ADDR; default 127.0.0.1:50051].
    #[arg(long)]
    grpc_addr: Option<String>,
    /// CPU threads for encoding and search, 0 = all cores [env CHAMFER_SEARCH_THREADS].
    #[arg(long)]
    search_threads: Option<usize>,
}

impl ServerArgs {
    /// The validated settings (all problems at once).
    pub(crate) fn settings(&self) -> anyhow::Result<Settings> {
        let flags = SettingsLayer {
            data_dir: self.data_dir.clone(),
            http_addr: self.http_addr.clone(),
            grpc_addr: self.grpc_addr.clone(),
            search_threads: self.search_threads,
            ..SettingsLayer::default()
        };
        Ok(Settings::load(
            self.config.as_deref(),
            std::env::vars(),
            &flags,
        )?)
    }
}

#[derive(Args, Debug)]
pub(crate) struct ServeCmd {
    #[command(flatten)]
    server: ServerArgs,
    /// Log as JSON lines instead of text.
    #[arg(long)]
    log_json: bool,
}

/// Installs the tracing subscriber (RUST_LOG, default info).
pub(crate) fn init_tracing(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        let _ = builder.json().try_init();
    } else {
        let _ = builder.try_init();
    }
}

impl ServeCmd {
    pub(crate) fn run(self) -> anyhow::Result<()> {
        init_tracing(self.log_json);
        let settings = self.server.settings()?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        Ok(rt.block_on(chamfer_server::serve::run(
            settings,
            chamfer_server::serve::shutdown_signal(),
        ))?)
    }
}
