//! `chamfer serve` as a child process on random 127.0.0.1 ports, its output in a log file.
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::http;

/// How long a start may take before it counts as a failure to start.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Server knobs that the soak sets.
#[derive(Clone, Debug)]
pub struct ServerOpts {
    pub bin: PathBuf,
    pub data_dir: PathBuf,
    pub flush_threshold_docs: usize,
    pub compaction_max_shards: usize,
}

/// A running server.
pub struct Server {
    child: Option<Child>,
    pub http_port: u16,
    pub log: PathBuf,
}

/// Why a start failed.
#[derive(Debug)]
pub enum StartError {
    /// The process exited before it was ready.
    Exited { status: String, log_tail: String },
    /// Not ready within [`READY_TIMEOUT`] (it was killed).
    Timeout { log_tail: String },
    /// It could not even be spawned.
    Spawn(String),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Exited { status, log_tail } => {
                write!(
                    f,
                    "the server exited during start-up ({status}): {log_tail}"
                )
            }
            StartError::Timeout { log_tail } => write!(
                f,
                "the server was not ready within {} s: {log_tail}",
                READY_TIMEOUT.as_secs()
            ),
            StartError::Spawn(e) => write!(f, "cannot spawn the server: {e}"),
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

/// `text` without ANSI colour sequences (`ESC [ ... m`).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The last `n` characters of a log file, on one line.
pub fn log_tail(path: &Path, n: usize) -> String {
    let text = strip_ansi(&std::fs::read_to_string(path).unwrap_or_default());
    let lines: Vec<&str> = text.lines().rev().take(4).collect();
    let joined: String = lines.into_iter().rev().collect::<Vec<_>>().join(" | ");
    let skip = joined.chars().count().saturating_sub(n);
    joined.chars().skip(skip).collect()
}

/// A panic message in a server log, if any.
pub fn panic_in_log(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines()
        .find(|l| l.contains("panicked at") || l.contains("RUST_BACKTRACE"))
        .map(|l| l.chars().take(300).collect())
}

/// True while some collection reports shards still being verified after a restart.
fn shards_verifying(port: u16) -> bool {
    let Ok(r) = http::request(port, "GET", "/v1/collections", None, Duration::from_secs(2)) else {
        return false;
    };
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(&r.body) else {
        return false;
    };
    v["collections"].as_array().is_some_and(|cs| {
        cs.iter()
            .any(|c| c["stats"]["unverified_shards"].as_u64().unwrap_or(0) > 0)
    })
}

impl Server {
    /// Starts the server and waits for `/readyz` (retrying with other ports if a port was taken).
    pub fn start(opts: &ServerOpts, log: &Path) -> Result<Server, StartError> {
        let mut last = None;
        for attempt in 0..3 {
            let log_path = if attempt == 0 {
                log.to_path_buf()
            } else {
                log.with_extension(format!("retry{attempt}.log"))
            };
            match Self::start_once(opts, &log_path) {
                Ok(s) => return Ok(s),
                Err(StartError::Exited { status, log_tail })
                    if log_tail.contains("in use") && !log_tail.contains("data directory") =>
                {
                    last = Some(StartError::Exited { status, log_tail });
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or(StartError::Spawn("no attempt".into())))
    }

    fn start_once(opts: &ServerOpts, log: &Path) -> Result<Server, StartError> {
        let (http_port, grpc_port) = (free_port(), free_port());
        let file = std::fs::File::create(log).map_err(|e| StartError::Spawn(e.to_string()))?;
        let err = file
            .try_clone()
            .map_err(|e| StartError::Spawn(e.to_string()))?;
        let child = Command::new(&opts.bin)
            .arg("serve")
            .arg("--data-dir")
            .arg(&opts.data_dir)
            .arg("--http-addr")
            .arg(format!("127.0.0.1:{http_port}"))
            .arg("--grpc-addr")
            .arg(format!("127.0.0.1:{grpc_port}"))
            .env(
                "CHAMFER_FLUSH_THRESHOLD_DOCS",
                opts.flush_threshold_docs.to_string(),
            )
            .env(
                "CHAMFER_COMPACTION_MAX_SHARDS",
                opts.compaction_max_shards.to_string(),
            )
            .env("CHAMFER_SEARCH_THREADS", "1")
            .env_remove("CHAMFER_API_KEY")
            .env_remove("CHAMFER_DATA_DIR")
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(err)
            .spawn()
            .map_err(|e| StartError::Spawn(format!("{}: {e}", opts.bin.display())))?;
        let mut server = Server {
            child: Some(child),
            http_port,
            log: log.to_path_buf(),
        };
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = server
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                server.child = None;
                return Err(StartError::Exited {
                    status: status.to_string(),
                    log_tail: log_tail(log, 600),
                });
            }
            if let Ok(r) = http::request(http_port, "GET", "/readyz", None, Duration::from_secs(2))
            {
                // Ready, and done verifying the shards it opened without reading them (reads of their
                // documents answer 503 until then: the soak judges a restart once that is over).
                if r.status == 200 && !shards_verifying(http_port) {
                    return Ok(server);
                }
            }
            if Instant::now() > deadline {
                server.kill();
                return Err(StartError::Timeout {
                    log_tail: log_tail(log, 600),
                });
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// SIGKILL, then reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}
