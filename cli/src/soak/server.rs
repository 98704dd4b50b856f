//! The server of `chamfer soak` as a child process (this binary's `serve`), started, killed and restarted, and
//! the clients that talk to it.
use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use chamfer_client::rest::Method;
use chamfer_client::{Client, RestClient};
use chamfer_server::metrics::rss_anon_bytes;

use super::measure::metric_value;
use super::{CALL_TIMEOUT, START_ATTEMPTS};

/// The server as a child process, killed (SIGKILL) and reaped when dropped.
pub(super) struct ServerProc {
    child: Child,
    pub(super) http: SocketAddr,
    pub(super) grpc: SocketAddr,
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ServerProc {
    /// SIGKILL, then reap.
    pub(super) fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// How the process ended, if it has.
    pub(super) fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(status.to_string()),
            Ok(None) | Err(_) => None,
        }
    }

    pub(super) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(super) fn grpc_url(&self) -> String {
        format!("http://{}", self.grpc)
    }

    pub(super) fn http_url(&self) -> String {
        format!("http://{}", self.http)
    }
}

/// Two free 127.0.0.1 ports (bound together, then released for the server to take).
pub(super) fn free_ports() -> anyhow::Result<(SocketAddr, SocketAddr)> {
    let a = std::net::TcpListener::bind("127.0.0.1:0").context("no free local port")?;
    let b = std::net::TcpListener::bind("127.0.0.1:0").context("no free local port")?;
    Ok((a.local_addr()?, b.local_addr()?))
}

/// The last lines of `log` written after byte `from` (of its last 64 KiB), on one line (for error messages).
pub(super) fn log_tail(log: &Path, from: u64) -> String {
    let mut bytes = Vec::new();
    if let Ok(mut f) = std::fs::File::open(log) {
        let len = f.metadata().map_or(0, |m| m.len());
        if f.seek(SeekFrom::Start(from.max(len.saturating_sub(64 << 10))))
            .is_ok()
        {
            let _ = f.read_to_end(&mut bytes);
        }
    }
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(4)..].join(" | ")
}

/// Spawns `chamfer serve` on `dir` and waits for `/readyz`; on `ports` (a restart that clients keep talking to)
/// or on free ports, retrying with other ports when one was taken in between. Returns the server and the
/// seconds from spawn to ready.
pub(super) async fn start_server(
    dir: &Path,
    log: &Path,
    timeout: Duration,
    ports: Option<(SocketAddr, SocketAddr)>,
) -> anyhow::Result<(ServerProc, f64)> {
    let exe =
        std::env::current_exe().context("cannot find the chamfer binary to start the server")?;
    for attempt in 1..=START_ATTEMPTS {
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("cannot open the server log {}", log.display()))?;
        let from = out.metadata().map_or(0, |m| m.len());
        let err = out.try_clone()?;
        let (http, grpc) = match ports {
            Some(p) => p,
            None => free_ports()?,
        };
        let t0 = Instant::now();
        let child = Command::new(&exe)
            .arg("serve")
            .arg("--data-dir")
            .arg(dir)
            .arg("--http-addr")
            .arg(http.to_string())
            .arg("--grpc-addr")
            .arg(grpc.to_string())
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("cannot start {} serve", exe.display()))?;
        let mut server = ServerProc { child, http, grpc };
        let probe = RestClient::new(&server.http_url())?.timeout(Duration::from_secs(2));
        loop {
            if let Some(status) = server.exited() {
                let tail = log_tail(log, from);
                // Someone took the port between our probe and the server's bind: try other ports.
                if tail.contains("cannot listen on") && attempt < START_ATTEMPTS && ports.is_none()
                {
                    break;
                }
                bail!("the server exited during start-up ({status}): {tail}");
            }
            if let Ok(r) = probe.send(Method::GET, "/readyz", None, None, &[]).await {
                if r.status == 200 {
                    return Ok((server, t0.elapsed().as_secs_f64()));
                }
            }
            if t0.elapsed() > timeout {
                bail!(
                    "the server was not ready within {} s (--ready-timeout): {}",
                    timeout.as_secs_f64(),
                    log_tail(log, from)
                );
            }
            // Fine-grained at first (a small data directory opens in well under a second), then gentler on
            // the server's log, which records every 503.
            let wait = if t0.elapsed() < Duration::from_secs(2) {
                50
            } else {
                250
            };
            tokio::time::sleep(Duration::from_millis(wait)).await;
        }
    }
    bail!("the server could not bind free ports in {START_ATTEMPTS} attempts")
}

/// The server's anonymous resident memory: its `chamfer_process_rss_anon_bytes` metric when it has one, else
/// the process's /proc status.
pub(super) async fn server_rss(rest: &RestClient, server: &ServerProc) -> Option<u64> {
    let scraped = match rest.send(Method::GET, "/metrics", None, None, &[]).await {
        Ok(r) if r.status == 200 => metric_value(
            &String::from_utf8_lossy(&r.body),
            "chamfer_process_rss_anon_bytes",
        ),
        _ => None,
    };
    scraped
        .map(|v| v as u64)
        .or_else(|| rss_anon_bytes(Some(server.pid())))
}

/// Clients of a running server: gRPC for the work, a slow-call gRPC client for flushes (which wait for
/// background work), REST for the stats that only REST may carry and the metrics.
pub(super) struct Clients {
    pub(super) grpc: Client,
    pub(super) admin: Client,
    pub(super) rest: RestClient,
}

pub(super) async fn connect(
    server: &ServerProc,
    api_key: Option<String>,
    admin_timeout: Duration,
) -> anyhow::Result<Clients> {
    let builder = Client::builder(server.grpc_url())
        .api_key_opt(api_key.clone())
        .connect_timeout(Duration::from_secs(10));
    Ok(Clients {
        grpc: builder.clone().timeout(CALL_TIMEOUT).connect().await?,
        admin: builder.timeout(admin_timeout).connect().await?,
        rest: RestClient::new(&server.http_url())?
            .api_key(api_key)?
            .timeout(CALL_TIMEOUT),
    })
}
