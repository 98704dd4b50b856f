//! The whole server as a library function: [`run`] (what `chamfer serve` calls) and [`start`] (what tests
//! call: it returns the bound addresses, so they can listen on port 0).
//!
//! Start-up: validate the settings, take the data directory, bind both listeners and serve, THEN open every
//! collection (replaying its log) on a blocking thread: meanwhile `/readyz` answers 503 with the reason and
//! requests to a collection still opening answer 503 `collection_unavailable`. A damaged collection stays
//! unavailable with its reason; the others serve. Shutdown (when the `shutdown` future resolves, e.g. on SIGTERM/SIGINT):
//! readiness turns false, both listeners stop accepting, in-flight requests finish, then every collection's
//! sequencer drains its queue and syncs its log.
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::auth::ApiKey;
use crate::config::Settings;
use crate::core::Core;
use crate::metrics::Metrics;

/// The addresses the server listens on (with the real ports when the settings asked for port 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BoundAddrs {
    pub http: SocketAddr,
    pub grpc: SocketAddr,
}

/// A running server.
pub struct Server {
    addrs: BoundAddrs,
    core: Core,
    stop: watch::Sender<bool>,
    http: JoinHandle<std::io::Result<()>>,
    grpc: JoinHandle<Result<(), tonic::transport::Error>>,
}

/// Opens the data directory, binds both listeners and starts serving in background tasks.
pub async fn start(settings: Settings) -> anyhow::Result<Server> {
    settings.validate()?;
    let s = settings.clone();
    let core = tokio::task::spawn_blocking(move || Core::new(&s))
        .await
        .context("opening the data directory panicked")?
        .with_context(|| format!("cannot open data directory {}", settings.data_dir.display()))?;
    let http_listener = TcpListener::bind(settings.http_addr)
        .await
        .with_context(|| format!("cannot listen on {} (HTTP)", settings.http_addr))?;
    let grpc_listener = TcpListener::bind(settings.grpc_addr)
        .await
        .with_context(|| format!("cannot listen on {} (gRPC)", settings.grpc_addr))?;
    let addrs = BoundAddrs {
        http: http_listener.local_addr()?,
        grpc: grpc_listener.local_addr()?,
    };
    let metrics = Arc::new(Metrics::default());
    let key = ApiKey::new(settings.api_key.as_deref());
    let max = settings.limits.max_request_bytes;
    let (stop, _) = watch::channel(false);
    let signal = |stop: &watch::Sender<bool>| {
        let mut rx = stop.subscribe();
        async move {
            let _ = rx.wait_for(|v| *v).await;
        }
    };
    let router = crate::rest::router(core.clone(), metrics.clone(), key.clone(), max);
    let http = tokio::spawn(crate::rest::serve(http_listener, router, signal(&stop)));
    let api = crate::grpc::GrpcApi::new(core.clone(), metrics);
    let grpc = tokio::spawn(crate::grpc::serve(
        grpc_listener,
        api,
        key,
        max,
        signal(&stop),
    ));
    tracing::info!(http = %addrs.http, grpc = %addrs.grpc, data_dir = %settings.data_dir.display(),
        api_key = settings.api_key.is_some(), "chamfer is listening; opening collections");
    let loader = core.clone();
    tokio::task::spawn_blocking(move || loader.load())
        .await
        .context("opening the collections panicked")?;
    let health = core.health();
    tracing::info!(unavailable = health.unavailable.len(), "chamfer is serving");
    Ok(Server {
        addrs,
        core,
        stop,
        http,
        grpc,
    })
}

impl Server {
    /// Where it listens.
    pub fn addrs(&self) -> BoundAddrs {
        self.addrs
    }

    /// The service core (for in-process inspection in tests).
    pub fn core(&self) -> &Core {
        &self.core
    }

    /// Serves until `shutdown` resolves (or a listener fails), then shuts down gracefully.
    pub async fn wait(mut self, shutdown: impl Future<Output = ()> + Send) -> anyhow::Result<()> {
        let failed = tokio::select! {
            _ = shutdown => None,
            r = &mut self.http => Some(format!("the HTTP server stopped: {r:?}")),
            r = &mut self.grpc => Some(format!("the gRPC server stopped: {r:?}")),
        };
        let result = self.shutdown().await;
        match failed {
            Some(msg) => Err(anyhow::anyhow!(msg)),
            None => result,
        }
    }

    /// Graceful shutdown: stop accepting, finish in-flight requests, sync every log.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        tracing::info!("shutting down: finishing in-flight requests");
        // Readiness goes false and background work is abandoned first, so that draining never waits for a
        // compaction (an in-flight flush or compact request answers 503).
        self.core.begin_shutdown();
        let _ = self.stop.send(true);
        let core = self.core.clone();
        let http = if self.http.is_finished() {
            Ok(Ok(()))
        } else {
            self.http.await
        };
        let grpc = if self.grpc.is_finished() {
            Ok(Ok(()))
        } else {
            self.grpc.await
        };
        tokio::task::spawn_blocking(move || core.shutdown())
            .await
            .context("closing collections panicked")?;
        tracing::info!("shut down; logs synced");
        http.context("HTTP task")?.context("HTTP server")?;
        grpc.context("gRPC task")?.context("gRPC server")?;
        Ok(())
    }
}

/// Runs the server until `shutdown` resolves. What `chamfer serve` calls.
pub async fn run(
    settings: Settings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    start(settings).await?.wait(shutdown).await
}

/// [`run`], reporting the bound addresses through `on_bound` once both listeners are up.
pub async fn run_with_addrs(
    settings: Settings,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_bound: impl FnOnce(BoundAddrs) + Send,
) -> anyhow::Result<()> {
    let server = start(settings).await?;
    on_bound(server.addrs());
    server.wait(shutdown).await
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C): the usual `shutdown` future for the binary.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
