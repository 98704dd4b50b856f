//! Server settings: defaults, then an optional TOML or JSON file, then `CHAMFER_*` environment variables, then
//! command-line flags (each layer overrides the one before), merged by `figment`.
//!
//! One definition per setting: the typed field and its default here ([`Settings`], [`Limits`]), its file key,
//! variable, flag and meaning in [`SETTINGS`] (table.rs). The layers are read through that table
//! ([`Settings::load`], load.rs), `chamfer serve` builds its flags from it, and README.md's configuration table is
//! generated from it ([`markdown_table`]; a test pins README to it and the table to the fields).
//!
//! Each value of each layer is checked on its own (the file's keys, the variables' and flags' numbers and
//! addresses), so that every problem of every layer is reported together; the checked values are then merged in
//! order by one `figment::Figment` and extracted as [`Settings`], which is validated as a whole.
//!
//! The library never reads the process environment itself (that is the binary's business): the caller passes
//! the variables in, so tests can build any configuration without touching global state. Validation collects
//! every problem before failing, so an operator fixes a bad deployment in one round trip instead of one error
//! per restart.
mod load;
mod table;
#[cfg(test)]
mod tests;

pub use table::{markdown_table, setting, Kind, Setting, SETTINGS};

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Largest `request_timeout_ms`: one day.
pub const MAX_REQUEST_TIMEOUT_MS: u64 = 86_400_000;

/// Smallest connection timeout (`header_read_timeout_ms`, `body_read_timeout_ms`, `idle_timeout_ms`), ms.
pub const MIN_CONNECTION_TIMEOUT_MS: u64 = 100;

/// Largest connection timeout, ms: one hour.
pub const MAX_CONNECTION_TIMEOUT_MS: u64 = 3_600_000;

/// Largest `limits.max_connections`.
pub const MAX_CONNECTIONS: usize = 1_000_000;

/// Bytes of `limits.request_memory_bytes` a request reserves per byte of its body.
pub const REQUEST_MEMORY_FACTOR: usize = 4;

/// Largest `limits.request_memory_bytes`: 1 TiB.
pub const MAX_REQUEST_MEMORY_BYTES: usize = 1 << 40;

/// Request limits, enforced once in the service core for both protocols.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Token vectors per document.
    pub max_tokens_per_doc: usize,
    /// Token vectors per query.
    pub max_query_tokens: usize,
    /// Documents per upsert (or per bulk message), ids per get/delete, queries per batch search.
    pub max_batch: usize,
    /// Bytes of one request body (REST) or one message (gRPC).
    pub max_request_bytes: usize,
    /// Largest `k` (and ef / candidates / rerank are capped at the engine's own maximum).
    pub max_k: usize,
    /// Bytes of one document's metadata JSON.
    pub max_metadata_bytes: usize,
    /// The work budget of one search request: query token vectors summed over its queries (a batch's total).
    /// Search cost grows with it; over the budget a request is refused before any work starts.
    pub max_batch_query_tokens: usize,
    /// Open connections, both listeners together; 0 = auto: the soft descriptor limit (`RLIMIT_NOFILE`, read
    /// from `/proc/self/limits`; 1024 where unknown) less a reserve of max(256, 1/8 of it) for the server's
    /// own files. At the cap a new connection evicts the one that has waited on its client longest, or is
    /// refused (HTTP: 503 `unavailable` with `Retry-After`; gRPC: closed) when none is waiting.
    pub max_connections: usize,
    /// Memory the requests in flight may hold, all together, counted as [`REQUEST_MEMORY_FACTOR`] bytes per
    /// request body byte (a maximum-size packed-f16 upload peaks at about 3.6 times its body: the body, its
    /// parsed copy, the decoded tokens). A body with a `Content-Length` reserves before it is read; others as
    /// their bytes arrive, at most `REQUEST_MEMORY_FACTOR x max_request_bytes` per request; released when the
    /// answer is sent. A request that does not fit answers 429 / RESOURCE_EXHAUSTED `overloaded` with a
    /// retry hint. At least `REQUEST_MEMORY_FACTOR x max_request_bytes`.
    pub request_memory_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_tokens_per_doc: 2048,
            max_query_tokens: 512,
            max_batch: 1024,
            max_request_bytes: 64 << 20,
            max_k: 1000,
            max_metadata_bytes: 64 << 10,
            max_batch_query_tokens: 65_536,
            max_connections: 0,
            request_memory_bytes: 1 << 30,
        }
    }
}

/// Validated server settings. Build with [`Settings::load`] (file + env + flags) or start from
/// [`Settings::default`] and call [`Settings::validate`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settings {
    /// Directory holding every collection (one server per directory).
    pub data_dir: PathBuf,
    /// REST listen address.
    pub http_addr: SocketAddr,
    /// gRPC listen address.
    pub grpc_addr: SocketAddr,
    /// When set, every endpoint but health needs `authorization: Bearer KEY` or `x-api-key: KEY`.
    #[serde(skip_serializing)]
    pub api_key: Option<String>,
    /// Request limits.
    pub limits: Limits,
    /// Live memtable documents that trigger a background flush into an immutable shard.
    pub flush_threshold_docs: usize,
    /// Compaction fan-in: when this many shards share a size tier, the background merges them (size-tiered
    /// compaction, ARCHITECTURE.md); a shard with a fifth of its documents deleted is rewritten alone.
    pub compaction_max_shards: usize,
    /// Threads of the CPU pool that runs encoding and search; 0 means one per core.
    pub search_threads: usize,
    /// Deadline of every request, in milliseconds from its arrival (a gRPC client's shorter `grpc-timeout`,
    /// or a REST client's shorter `x-timeout-ms` header, wins). Work past it stops and the request answers
    /// DEADLINE_EXCEEDED / 504. A write that reached its log is never abandoned.
    pub request_timeout_ms: u64,
    /// HTTP/1: a connection that started sending a request head (its first byte arrived) and has not finished
    /// it within this many milliseconds is closed. (HTTP/2 connections carry control frames between requests:
    /// they are bounded by `idle_timeout_ms`.)
    pub header_read_timeout_ms: u64,
    /// The longest wait, in milliseconds, for a client's next bytes of a request body while the server waits
    /// for them (the timer runs only while the server is reading the body, so a busy server's back-pressure
    /// does not count), and for a client to take the next bytes of an answer. Past it the request fails (408 /
    /// DEADLINE_EXCEEDED `request_timeout`) or the connection is closed.
    pub body_read_timeout_ms: u64,
    /// A connection without a request in flight for this many milliseconds is closed (keep-alive HTTP/1,
    /// idle HTTP/2 and gRPC channels, connections that never send a request).
    pub idle_timeout_ms: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            data_dir: PathBuf::from("./chamfer-data"),
            http_addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            grpc_addr: SocketAddr::from(([127, 0, 0, 1], 50051)),
            api_key: None,
            limits: Limits::default(),
            flush_threshold_docs: 20_000,
            compaction_max_shards: 4,
            search_threads: 0,
            request_timeout_ms: 30_000,
            header_read_timeout_ms: 10_000,
            body_read_timeout_ms: 30_000,
            idle_timeout_ms: 60_000,
        }
    }
}

/// Every problem found in a configuration, reported together.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n  - {}", .problems.join("\n  - "))]
pub struct ConfigError {
    /// Each problem, naming its setting and where it came from.
    pub problems: Vec<String>,
}

impl Settings {
    /// Checks every value; all problems at once.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let problems = self.problems();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError { problems })
        }
    }

    pub(crate) fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        let l = &self.limits;
        let mut positive = |name: &str, v: usize| {
            if v == 0 {
                p.push(format!("{name} must be > 0"));
            }
        };
        positive("limits.max_tokens_per_doc", l.max_tokens_per_doc);
        positive("limits.max_query_tokens", l.max_query_tokens);
        positive("limits.max_batch", l.max_batch);
        positive("limits.max_k", l.max_k);
        positive("flush_threshold_docs", self.flush_threshold_docs);
        positive("limits.max_batch_query_tokens", l.max_batch_query_tokens);
        if l.max_batch_query_tokens < l.max_query_tokens {
            p.push(format!(
                "limits.max_batch_query_tokens ({}) must be at least limits.max_query_tokens ({}): one \
                 full-size query must fit the budget",
                l.max_batch_query_tokens, l.max_query_tokens
            ));
        }
        if self.request_timeout_ms == 0 || self.request_timeout_ms > MAX_REQUEST_TIMEOUT_MS {
            p.push(format!(
                "request_timeout_ms must be in 1..={MAX_REQUEST_TIMEOUT_MS}, got {}",
                self.request_timeout_ms
            ));
        }
        if l.max_request_bytes < 1024 {
            p.push(format!(
                "limits.max_request_bytes must be at least 1024, got {}",
                l.max_request_bytes
            ));
        }
        if l.max_request_bytes > 2_000_000_000 {
            p.push(format!(
                "limits.max_request_bytes must be at most 2000000000, got {}",
                l.max_request_bytes
            ));
        }
        for (name, v) in [
            ("limits.max_tokens_per_doc", l.max_tokens_per_doc),
            ("limits.max_query_tokens", l.max_query_tokens),
        ] {
            if v > chamfer_index::shard::MAX_DOC_TOKENS {
                p.push(format!(
                    "{name} must be at most {} (the engine's limit), got {v}",
                    chamfer_index::shard::MAX_DOC_TOKENS
                ));
            }
        }
        if l.max_k > chamfer_index::search::MAX_K {
            p.push(format!(
                "limits.max_k must be at most {}, got {}",
                chamfer_index::search::MAX_K,
                l.max_k
            ));
        }
        if self.compaction_max_shards < 2 {
            p.push(format!(
                "compaction_max_shards must be at least 2, got {}",
                self.compaction_max_shards
            ));
        }
        if self.search_threads > 1024 {
            p.push(format!(
                "search_threads must be at most 1024, got {}",
                self.search_threads
            ));
        }
        if let Some(k) = &self.api_key {
            if k.is_empty() {
                p.push(
                    "api_key is empty: an empty key does not turn the key off; leave api_key (and \
                     CHAMFER_API_KEY) unset to run without one"
                        .into(),
                );
            } else if k.len() < 8 {
                p.push("api_key must have at least 8 characters".into());
            }
            if !k.bytes().all(|b| b.is_ascii_graphic()) {
                p.push(
                    "api_key must be printable ASCII without spaces (it travels in an HTTP header)"
                        .into(),
                );
            }
        }
        if l.max_connections > MAX_CONNECTIONS {
            p.push(format!(
                "limits.max_connections must be at most {MAX_CONNECTIONS} (0: from the descriptor limit), got {}",
                l.max_connections
            ));
        }
        let one_request = l.max_request_bytes.saturating_mul(REQUEST_MEMORY_FACTOR);
        if l.request_memory_bytes < one_request {
            p.push(format!(
                "limits.request_memory_bytes ({}) must be at least {REQUEST_MEMORY_FACTOR} x \
                 limits.max_request_bytes ({one_request}): one full-size request must fit the budget",
                l.request_memory_bytes
            ));
        }
        if l.request_memory_bytes > MAX_REQUEST_MEMORY_BYTES {
            p.push(format!(
                "limits.request_memory_bytes must be at most {MAX_REQUEST_MEMORY_BYTES}, got {}",
                l.request_memory_bytes
            ));
        }
        for (name, v) in [
            ("header_read_timeout_ms", self.header_read_timeout_ms),
            ("body_read_timeout_ms", self.body_read_timeout_ms),
            ("idle_timeout_ms", self.idle_timeout_ms),
        ] {
            if !(MIN_CONNECTION_TIMEOUT_MS..=MAX_CONNECTION_TIMEOUT_MS).contains(&v) {
                p.push(format!(
                    "{name} must be in {MIN_CONNECTION_TIMEOUT_MS}..={MAX_CONNECTION_TIMEOUT_MS}, got {v}"
                ));
            }
        }
        if self.http_addr == self.grpc_addr && self.http_addr.port() != 0 {
            p.push(format!(
                "http_addr and grpc_addr are both {}",
                self.http_addr
            ));
        }
        if self.data_dir.as_os_str().is_empty() {
            p.push("data_dir must not be empty".into());
        }
        p
    }

    /// The request deadline.
    pub fn request_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.request_timeout_ms)
    }

    /// The number of CPU-pool threads to start.
    pub fn cpu_threads(&self) -> usize {
        if self.search_threads > 0 {
            self.search_threads
        } else {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2)
        }
    }
}
