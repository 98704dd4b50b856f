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

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::auth::ApiKey;
use crate::config::{ConfigError, Settings};
use crate::core::Core;
use crate::error::ServiceError;
use crate::metrics::{Metrics, Proto};
use crate::net::{Net, NetConfig, NetListener};

/// Why the server could not start, or stopped other than by its shutdown signal.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The settings are invalid (every problem listed).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The data directory could not be opened (locked by another server, unreadable, ...).
    #[error("cannot open data directory {}: {source}", path.display())]
    DataDir {
        /// The data directory.
        path: std::path::PathBuf,
        /// Why it could not be opened.
        source: ServiceError,
    },
    /// A listener could not be bound.
    #[error("cannot listen on {addr} ({protocol}): {source}")]
    Bind {
        /// `HTTP` or `gRPC`.
        protocol: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The bind error.
        source: std::io::Error,
    },
    /// A listener failed while serving.
    #[error("the {protocol} server stopped: {message}")]
    Listener {
        /// `HTTP` or `gRPC`.
        protocol: &'static str,
        /// The listener's error.
        message: String,
    },
    /// A start-up or shutdown step on a blocking thread panicked (a bug).
    #[error("{what} panicked: {source}")]
    Panicked {
        /// The step that panicked.
        what: &'static str,
        /// The panic, as the join error.
        source: tokio::task::JoinError,
    },
}

/// The addresses the server listens on (with the real ports when the settings asked for port 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BoundAddrs {
    /// REST listen address.
    pub http: SocketAddr,
    /// gRPC listen address.
    pub grpc: SocketAddr,
}

/// A running server.
pub struct Server {
    addrs: BoundAddrs,
    core: Core,
    stop: watch::Sender<bool>,
    http: JoinHandle<std::io::Result<()>>,
    grpc: JoinHandle<Result<(), tonic::transport::Error>>,
    sweeper: JoinHandle<()>,
    sweep_stop: watch::Sender<bool>,
    net: Arc<Net>,
}

/// Opens the data directory, binds both listeners and starts serving in background tasks.
pub async fn start(settings: Settings) -> Result<Server, ServeError> {
    settings.validate()?;
    let s = settings.clone();
    let core = tokio::task::spawn_blocking(move || Core::new(&s))
        .await
        .map_err(|source| ServeError::Panicked {
            what: "opening the data directory",
            source,
        })?
        .map_err(|source| ServeError::DataDir {
            path: settings.data_dir.clone(),
            source,
        })?;
    let (http_listener, http) = bind("HTTP", settings.http_addr).await?;
    let (grpc_listener, grpc) = bind("gRPC", settings.grpc_addr).await?;
    let addrs = BoundAddrs { http, grpc };
    let net = Net::new(NetConfig::from_settings(&settings));
    warn_if_the_cap_exceeds_descriptors(net.config().max_connections);
    let mut metrics = Metrics::default();
    metrics.register_net(net.clone());
    let metrics = Arc::new(metrics);
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
    let http = tokio::spawn(crate::rest::serve(
        NetListener::new(http_listener, net.clone(), Proto::Rest),
        router,
        net.clone(),
        signal(&stop),
    ));
    let api = crate::grpc::GrpcApi::new(core.clone(), metrics);
    let grpc = tokio::spawn(crate::grpc::serve(
        NetListener::new(grpc_listener, net.clone(), Proto::Grpc),
        api,
        key,
        max,
        net.clone(),
        signal(&stop),
    ));
    // Runs until both listeners are done: connections still draining at shutdown are timed too.
    let (sweep_stop, sweep_rx) = watch::channel(false);
    let sweeper = tokio::spawn(net.clone().sweep(sweep_rx));
    tracing::info!(http = %addrs.http, grpc = %addrs.grpc, data_dir = %settings.data_dir.display(),
        api_key = settings.api_key.is_some(), max_connections = net.config().max_connections,
        request_memory_bytes = net.config().request_memory_bytes, "chamfer is listening; opening collections");
    let loader = core.clone();
    tokio::task::spawn_blocking(move || loader.load())
        .await
        .map_err(|source| ServeError::Panicked {
            what: "opening the collections",
            source,
        })?;
    let health = core.health();
    tracing::info!(unavailable = health.unavailable.len(), "chamfer is serving");
    Ok(Server {
        addrs,
        core,
        stop,
        http,
        grpc,
        sweeper,
        sweep_stop,
        net,
    })
}

/// A WARN when `cap` connections, with the server's own files, could run out of descriptors (an explicit
/// `limits.max_connections` above the automatic one): accepts then fail, and each failure closes the
/// longest-waiting connection, but file opens could fail too.
fn warn_if_the_cap_exceeds_descriptors(cap: usize) {
    let Some(limit) = crate::net::descriptor_limit() else {
        return;
    };
    let auto = crate::net::auto_max_connections(Some(limit));
    if cap > auto {
        tracing::warn!(
            max_connections = cap,
            descriptor_limit = limit,
            "limits.max_connections leaves too few file descriptors for the server's own files (at most \
             {auto} with this limit): raise the limit (ulimit -n) or lower limits.max_connections"
        );
    }
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

    /// The connection table and request memory budget (for in-process inspection in tests).
    pub fn net(&self) -> &Arc<Net> {
        &self.net
    }

    /// Serves until `shutdown` resolves (or a listener fails), then shuts down gracefully.
    pub async fn wait(
        mut self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), ServeError> {
        let failed = tokio::select! {
            _ = shutdown => None,
            r = &mut self.http => Some(ServeError::Listener { protocol: "HTTP", message: format!("{r:?}") }),
            r = &mut self.grpc => Some(ServeError::Listener { protocol: "gRPC", message: format!("{r:?}") }),
        };
        let result = self.shutdown().await;
        match failed {
            Some(e) => Err(e),
            None => result,
        }
    }

    /// Graceful shutdown: stop accepting, finish in-flight requests, sync every log.
    pub async fn shutdown(self) -> Result<(), ServeError> {
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
        // Both listeners are done: stop the sweeper (it has no result).
        let _ = self.sweep_stop.send(true);
        let _ = self.sweeper.await;
        tokio::task::spawn_blocking(move || core.shutdown())
            .await
            .map_err(|source| ServeError::Panicked {
                what: "closing collections",
                source,
            })?;
        tracing::info!("shut down; logs synced");
        let listener = |protocol, message: String| ServeError::Listener { protocol, message };
        match http {
            Err(source) => Err(ServeError::Panicked {
                what: "the HTTP server",
                source,
            }),
            Ok(Err(e)) => Err(listener("HTTP", e.to_string())),
            Ok(Ok(())) => Ok(()),
        }?;
        match grpc {
            Err(source) => Err(ServeError::Panicked {
                what: "the gRPC server",
                source,
            }),
            Ok(Err(e)) => Err(listener("gRPC", e.to_string())),
            Ok(Ok(())) => Ok(()),
        }
    }
}

/// Binds one listener, returning it with its real address.
async fn bind(
    protocol: &'static str,
    addr: SocketAddr,
) -> Result<(TcpListener, SocketAddr), ServeError> {
    let err = |source| ServeError::Bind {
        protocol,
        addr,
        source,
    };
    let listener = TcpListener::bind(addr).await.map_err(err)?;
    let local = listener.local_addr().map_err(err)?;
    Ok((listener, local))
}

/// Runs the server until `shutdown` resolves. What `chamfer serve` calls.
pub async fn run(
    settings: Settings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    start(settings).await?.wait(shutdown).await
}

/// [`run`], reporting the bound addresses through `on_bound` once both listeners are up.
pub async fn run_with_addrs(
    settings: Settings,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_bound: impl FnOnce(BoundAddrs) + Send,
) -> Result<(), ServeError> {
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
