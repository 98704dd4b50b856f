//! Server settings: defaults, then an optional TOML or JSON file, then `CHAMFER_*` environment variables, then
//! command-line flags (each layer overrides the one before), merged by `figment`.
//!
//! Each layer is first checked on its own (the file parsed with unknown keys refused, environment numbers
//! parsed, addresses parsed), so that every problem of every layer is reported together; the checked layers are
//! then merged in order by one `figment::Figment` and extracted as [`Settings`], which is validated as a whole.
//!
//! The library never reads the process environment itself (that is the binary's business): the caller passes
//! the variables in, so tests can build any configuration without touching global state. Validation collects
//! every problem before failing, so an operator fixes a bad deployment in one round trip instead of one error
//! per restart.
//!
//! | setting | file key | env var | default |
//! |---|---|---|---|
//! | data directory | `data_dir` | `CHAMFER_DATA_DIR` | `./chamfer-data` |
//! | HTTP listen address | `http_addr` | `CHAMFER_HTTP_ADDR` | `127.0.0.1:8080` |
//! | gRPC listen address | `grpc_addr` | `CHAMFER_GRPC_ADDR` | `127.0.0.1:50051` |
//! | API key (off when unset; an empty key is refused) | `api_key` | `CHAMFER_API_KEY` | none |
//! | max tokens per document | `limits.max_tokens_per_doc` | `CHAMFER_MAX_TOKENS_PER_DOC` | 2048 |
//! | max tokens per query | `limits.max_query_tokens` | `CHAMFER_MAX_QUERY_TOKENS` | 512 |
//! | max documents (or queries) per request | `limits.max_batch` | `CHAMFER_MAX_BATCH` | 1024 |
//! | max request body bytes | `limits.max_request_bytes` | `CHAMFER_MAX_REQUEST_BYTES` | 64 MiB |
//! | max k | `limits.max_k` | `CHAMFER_MAX_K` | 1000 |
//! | max metadata bytes per document | `limits.max_metadata_bytes` | `CHAMFER_MAX_METADATA_BYTES` | 64 KiB |
//! | max query tokens in one search or search batch (work budget) | `limits.max_batch_query_tokens` | `CHAMFER_MAX_BATCH_QUERY_TOKENS` | 65536 |
//! | request deadline, ms (gRPC: the earlier of this and `grpc-timeout`) | `request_timeout_ms` | `CHAMFER_REQUEST_TIMEOUT_MS` | 30000 |
//! | memtable documents before a flush | `flush_threshold_docs` | `CHAMFER_FLUSH_THRESHOLD_DOCS` | 20000 |
//! | compaction fan-in: shards of one size tier merged together | `compaction_max_shards` | `CHAMFER_COMPACTION_MAX_SHARDS` | 4 |
//! | CPU (search/encode) threads, 0 = cores | `search_threads` | `CHAMFER_SEARCH_THREADS` | 0 |
//! | open connections, both listeners together (0 = auto: the descriptor limit less a reserve for data files) | `limits.max_connections` | `CHAMFER_MAX_CONNECTIONS` | 0 (auto) |
//! | memory of requests in flight, server-wide, counted as 4 bytes per body byte (at least 4 x `max_request_bytes`) | `limits.request_memory_bytes` | `CHAMFER_REQUEST_MEMORY_BYTES` | 1 GiB |
//! | longest wait for the rest of a request head once it started (HTTP/1), ms | `header_read_timeout_ms` | `CHAMFER_HEADER_READ_TIMEOUT_MS` | 10000 |
//! | longest wait for a client's next bytes of a request body (or for it to take the next bytes of an answer), ms | `body_read_timeout_ms` | `CHAMFER_BODY_READ_TIMEOUT_MS` | 30000 |
//! | a connection with no request in flight for this long is closed, ms | `idle_timeout_ms` | `CHAMFER_IDLE_TIMEOUT_MS` | 60000 |
//!
//! Unknown keys in a file are errors (a typo must not silently fall back to a default); unknown `CHAMFER_*`
//! variables are ignored, since other tools (log filters, the load generator) share the prefix.
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::providers::{Format, Json, Serialized, Toml};
use figment::Figment;
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
    /// Directory holding every collection (one server per directory). Default `./chamfer-data`.
    pub data_dir: PathBuf,
    /// REST listen address. Default `127.0.0.1:8080`.
    pub http_addr: SocketAddr,
    /// gRPC listen address. Default `127.0.0.1:50051`.
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

/// One layer of optional overrides: what a file, the environment or the flags may set. The binary fills the
/// flags layer from its command line. (Serialized without its unset fields: that is how a layer becomes a
/// figment provider that overrides only what it sets.)
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SettingsLayer {
    /// Overrides [`Settings::data_dir`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    /// Overrides [`Settings::http_addr`] (`IP:port`; checked before merging).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_addr: Option<String>,
    /// Overrides [`Settings::grpc_addr`] (`IP:port`; checked before merging).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grpc_addr: Option<String>,
    /// Overrides [`Settings::api_key`]. An empty key is refused (leave it unset to run without a key), so that
    /// a blank variable cannot turn authentication off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_key: Option<String>,
    /// Overrides of [`Settings::limits`], field by field.
    #[serde(default)]
    pub limits: LimitsLayer,
    /// Overrides [`Settings::flush_threshold_docs`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flush_threshold_docs: Option<usize>,
    /// Overrides [`Settings::compaction_max_shards`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compaction_max_shards: Option<usize>,
    /// Overrides [`Settings::search_threads`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub search_threads: Option<usize>,
    /// Overrides [`Settings::request_timeout_ms`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_timeout_ms: Option<u64>,
    /// Overrides [`Settings::header_read_timeout_ms`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub header_read_timeout_ms: Option<u64>,
    /// Overrides [`Settings::body_read_timeout_ms`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body_read_timeout_ms: Option<u64>,
    /// Overrides [`Settings::idle_timeout_ms`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle_timeout_ms: Option<u64>,
}

/// Optional overrides of [`Limits`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsLayer {
    /// Overrides [`Limits::max_tokens_per_doc`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_tokens_per_doc: Option<usize>,
    /// Overrides [`Limits::max_query_tokens`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_query_tokens: Option<usize>,
    /// Overrides [`Limits::max_batch`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_batch: Option<usize>,
    /// Overrides [`Limits::max_request_bytes`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_request_bytes: Option<usize>,
    /// Overrides [`Limits::max_k`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_k: Option<usize>,
    /// Overrides [`Limits::max_metadata_bytes`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_metadata_bytes: Option<usize>,
    /// Overrides [`Limits::max_batch_query_tokens`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_batch_query_tokens: Option<usize>,
    /// Overrides [`Limits::max_connections`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<usize>,
    /// Overrides [`Limits::request_memory_bytes`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_memory_bytes: Option<usize>,
}

/// Every problem found in a configuration, reported together.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n  - {}", .problems.join("\n  - "))]
pub struct ConfigError {
    /// Each problem, naming its setting and where it came from.
    pub problems: Vec<String>,
}

impl Settings {
    /// Defaults, overridden by `file` (TOML, or JSON when it ends in `.json`), then by the `CHAMFER_*`
    /// variables among `env`, then by `flags`; then validated. Every problem (unreadable file, unknown key,
    /// unparsable value, out-of-range limit) is reported at once.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        flags: &SettingsLayer,
    ) -> Result<Settings, ConfigError> {
        let mut problems = Vec::new();
        let mut merged = Figment::from(Serialized::defaults(Settings::default()));
        if let Some(path) = file {
            match file_layer(path) {
                Ok(layer) => {
                    let layer = checked_addrs(layer, &path.display().to_string(), &mut problems);
                    merged = merged.merge(Serialized::defaults(layer));
                }
                Err(p) => problems.push(p),
            }
        }
        let env = checked_addrs(env_layer(env, &mut problems), "environment", &mut problems);
        merged = merged.merge(Serialized::defaults(env));
        let flags = checked_addrs(flags.clone(), "flags", &mut problems);
        merged = merged.merge(Serialized::defaults(flags));
        let s = match merged.extract::<Settings>() {
            Ok(s) => s,
            // Every layer was checked above: this is only reached by a bug, reported like any problem.
            Err(e) => {
                problems.extend(e.into_iter().map(|e| e.to_string()));
                return Err(ConfigError { problems });
            }
        };
        // An empty key is NOT "off": `CHAMFER_API_KEY=` (a variable set but blank, e.g. by a template that
        // lost its secret) is refused by `problems()`, like a key of spaces, rather than silently opening every
        // endpoint. To run without a key, leave it unset.
        problems.extend(s.problems());
        if problems.is_empty() {
            Ok(s)
        } else {
            Err(ConfigError { problems })
        }
    }

    /// Checks every value; all problems at once.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let problems = self.problems();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError { problems })
        }
    }

    fn problems(&self) -> Vec<String> {
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

/// `layer` without the addresses that do not parse (each one a problem naming `source`), so that the rest of
/// the layer still applies and is checked.
fn checked_addrs(
    mut layer: SettingsLayer,
    source: &str,
    problems: &mut Vec<String>,
) -> SettingsLayer {
    for (name, v) in [
        ("http_addr", &mut layer.http_addr),
        ("grpc_addr", &mut layer.grpc_addr),
    ] {
        if let Some(text) = v.as_deref() {
            if let Err(e) = text.parse::<SocketAddr>() {
                problems.push(format!(
                    "{source}: {name} {text:?} is not an IP:port address ({e})"
                ));
                *v = None;
            }
        }
    }
    layer
}

/// The config file read by figment's TOML (or, for `.json`, JSON) provider as a layer: unknown keys and wrong
/// types are refused.
fn file_layer(path: &Path) -> Result<SettingsLayer, String> {
    let is_json = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("json"));
    if let Err(e) = std::fs::metadata(path) {
        return Err(format!("cannot read config file {}: {e}", path.display()));
    }
    let provider = if is_json {
        Figment::from(Json::file_exact(path))
    } else {
        Figment::from(Toml::file_exact(path))
    };
    provider
        .extract::<SettingsLayer>()
        .map_err(|e| format!("config file {}: {e}", path.display()))
}

/// The `CHAMFER_*` variables as a layer; unparsable numbers are problems, unknown names are ignored.
fn env_layer(
    env: impl IntoIterator<Item = (String, String)>,
    problems: &mut Vec<String>,
) -> SettingsLayer {
    let vars: BTreeMap<String, String> = env
        .into_iter()
        .filter(|(k, _)| k.starts_with("CHAMFER_"))
        .collect();
    let mut layer = SettingsLayer::default();
    let string = |name: &str| vars.get(name).cloned();
    let mut number = |name: &str| -> Option<usize> {
        let v = vars.get(name)?;
        match v.trim().parse::<usize>() {
            Ok(n) => Some(n),
            Err(_) => {
                problems.push(format!(
                    "environment: {name}={v:?} is not a non-negative integer"
                ));
                None
            }
        }
    };
    layer.data_dir = string("CHAMFER_DATA_DIR").map(PathBuf::from);
    layer.http_addr = string("CHAMFER_HTTP_ADDR");
    layer.grpc_addr = string("CHAMFER_GRPC_ADDR");
    layer.api_key = string("CHAMFER_API_KEY");
    layer.limits.max_tokens_per_doc = number("CHAMFER_MAX_TOKENS_PER_DOC");
    layer.limits.max_query_tokens = number("CHAMFER_MAX_QUERY_TOKENS");
    layer.limits.max_batch = number("CHAMFER_MAX_BATCH");
    layer.limits.max_request_bytes = number("CHAMFER_MAX_REQUEST_BYTES");
    layer.limits.max_k = number("CHAMFER_MAX_K");
    layer.limits.max_metadata_bytes = number("CHAMFER_MAX_METADATA_BYTES");
    layer.limits.max_batch_query_tokens = number("CHAMFER_MAX_BATCH_QUERY_TOKENS");
    layer.flush_threshold_docs = number("CHAMFER_FLUSH_THRESHOLD_DOCS");
    layer.compaction_max_shards = number("CHAMFER_COMPACTION_MAX_SHARDS");
    layer.search_threads = number("CHAMFER_SEARCH_THREADS");
    layer.request_timeout_ms = number("CHAMFER_REQUEST_TIMEOUT_MS").map(|v| v as u64);
    layer.limits.max_connections = number("CHAMFER_MAX_CONNECTIONS");
    layer.limits.request_memory_bytes = number("CHAMFER_REQUEST_MEMORY_BYTES");
    layer.header_read_timeout_ms = number("CHAMFER_HEADER_READ_TIMEOUT_MS").map(|v| v as u64);
    layer.body_read_timeout_ms = number("CHAMFER_BODY_READ_TIMEOUT_MS").map(|v| v as u64);
    layer.idle_timeout_ms = number("CHAMFER_IDLE_TIMEOUT_MS").map(|v| v as u64);
    layer
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_are_valid() {
        let s = Settings::load(None, env(&[]), &SettingsLayer::default()).unwrap();
        assert_eq!(s, Settings::default());
    }

    #[test]
    fn layers_override_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(
            &file,
            "data_dir = \"/from-file\"\nhttp_addr = \"127.0.0.1:1\"\n[limits]\nmax_k = 7\n",
        )
        .unwrap();
        let flags = SettingsLayer {
            http_addr: Some("127.0.0.1:3".into()),
            ..Default::default()
        };
        let s = Settings::load(
            Some(&file),
            env(&[
                ("CHAMFER_HTTP_ADDR", "127.0.0.1:2"),
                ("CHAMFER_MAX_BATCH", "9"),
                ("OTHER", "x"),
            ]),
            &flags,
        )
        .unwrap();
        assert_eq!(s.data_dir, PathBuf::from("/from-file"));
        assert_eq!(s.http_addr.port(), 3);
        assert_eq!((s.limits.max_k, s.limits.max_batch), (7, 9));
    }

    #[test]
    fn json_files_work_too() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.json");
        std::fs::write(
            &file,
            r#"{"grpc_addr": "127.0.0.1:9", "limits": {"max_batch": 3}}"#,
        )
        .unwrap();
        let s = Settings::load(Some(&file), env(&[]), &SettingsLayer::default()).unwrap();
        assert_eq!((s.grpc_addr.port(), s.limits.max_batch), (9, 3));
    }

    #[test]
    fn reports_every_problem_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "bogus_key = 1\n").unwrap();
        let err = Settings::load(
            Some(&file),
            env(&[
                ("CHAMFER_MAX_K", "lots"),
                ("CHAMFER_GRPC_ADDR", "nowhere"),
                ("CHAMFER_MAX_BATCH", "0"),
            ]),
            &SettingsLayer {
                api_key: Some("short".into()),
                ..Default::default()
            },
        )
        .unwrap_err();
        let text = err.to_string();
        for needle in [
            "bogus_key",
            "CHAMFER_MAX_K",
            "nowhere",
            "max_batch",
            "api_key",
        ] {
            assert!(text.contains(needle), "{needle} missing from {text}");
        }
        assert_eq!(err.problems.len(), 5, "{text}");
    }

    #[test]
    fn deadline_and_work_budget_settings() {
        let s = Settings::load(
            None,
            env(&[
                ("CHAMFER_REQUEST_TIMEOUT_MS", "250"),
                ("CHAMFER_MAX_BATCH_QUERY_TOKENS", "4096"),
            ]),
            &SettingsLayer::default(),
        )
        .unwrap();
        assert_eq!(s.request_timeout(), std::time::Duration::from_millis(250));
        assert_eq!(s.limits.max_batch_query_tokens, 4096);
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(
            &file,
            "request_timeout_ms = 0\n[limits]\nmax_batch_query_tokens = 10\n",
        )
        .unwrap();
        let err = Settings::load(Some(&file), env(&[]), &SettingsLayer::default()).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("request_timeout_ms"), "{text}");
        assert!(text.contains("max_batch_query_tokens"), "{text}");
        assert_eq!(err.problems.len(), 2, "{text}");
    }

    /// Issue 21 item 5: an empty key (environment, file or flags) is refused with its own message, never read
    /// as "no key"; unset, the server runs without one.
    #[test]
    fn an_empty_api_key_is_refused_not_read_as_off() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "api_key = \"\"\n").unwrap();
        let keyed = dir.path().join("k.toml");
        std::fs::write(&keyed, "api_key = \"k3y-k3y-k3y\"\n").unwrap();
        let cases = [
            (
                None,
                env(&[("CHAMFER_API_KEY", "")]),
                SettingsLayer::default(),
            ),
            (Some(file.as_path()), env(&[]), SettingsLayer::default()),
            (
                None,
                env(&[]),
                SettingsLayer {
                    api_key: Some(String::new()),
                    ..Default::default()
                },
            ),
            // An empty variable over a file's key is refused too (it used to turn the key off).
            (
                Some(keyed.as_path()),
                env(&[("CHAMFER_API_KEY", "")]),
                SettingsLayer::default(),
            ),
        ];
        for (file, env, flags) in cases {
            let err = Settings::load(file, env, &flags).unwrap_err();
            assert_eq!(err.problems.len(), 1, "{err}");
            assert!(err.problems[0].contains("api_key is empty"), "{err}");
        }
        let s = Settings {
            api_key: Some(String::new()),
            ..Settings::default()
        };
        assert!(s
            .validate()
            .unwrap_err()
            .to_string()
            .contains("api_key is empty"));
        // Whitespace is refused as before, and no key at all is fine.
        let err = Settings::load(
            None,
            env(&[("CHAMFER_API_KEY", "          ")]),
            &SettingsLayer::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("printable ASCII"), "{err}");
        let s = Settings::load(None, env(&[]), &SettingsLayer::default()).unwrap();
        assert_eq!(s.api_key, None);
        let s = Settings::load(
            None,
            env(&[("CHAMFER_API_KEY", "k3y-k3y-k3y")]),
            &SettingsLayer::default(),
        )
        .unwrap();
        assert_eq!(s.api_key.as_deref(), Some("k3y-k3y-k3y"));
    }

    #[test]
    fn connection_and_memory_settings_load_and_are_bounded() {
        let s = Settings::load(
            None,
            env(&[
                ("CHAMFER_MAX_CONNECTIONS", "64"),
                ("CHAMFER_REQUEST_MEMORY_BYTES", "268435456"),
                ("CHAMFER_HEADER_READ_TIMEOUT_MS", "1500"),
                ("CHAMFER_BODY_READ_TIMEOUT_MS", "2500"),
                ("CHAMFER_IDLE_TIMEOUT_MS", "3500"),
            ]),
            &SettingsLayer::default(),
        )
        .unwrap();
        assert_eq!(s.limits.max_connections, 64);
        assert_eq!(s.limits.request_memory_bytes, 256 << 20);
        assert_eq!(
            (
                s.header_read_timeout_ms,
                s.body_read_timeout_ms,
                s.idle_timeout_ms
            ),
            (1500, 2500, 3500)
        );
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(
            &file,
            "header_read_timeout_ms = 0\nbody_read_timeout_ms = 99\nidle_timeout_ms = 3600001\n\
             [limits]\nmax_connections = 1000001\nmax_request_bytes = 4096\nrequest_memory_bytes = 16383\n",
        )
        .unwrap();
        let err = Settings::load(Some(&file), env(&[]), &SettingsLayer::default()).unwrap_err();
        let text = err.to_string();
        for needle in [
            "header_read_timeout_ms",
            "body_read_timeout_ms",
            "idle_timeout_ms",
            "limits.max_connections",
            "limits.request_memory_bytes (16383) must be at least 4 x limits.max_request_bytes (16384)",
        ] {
            assert!(text.contains(needle), "{needle} missing from {text}");
        }
        assert_eq!(err.problems.len(), 5, "{text}");
    }

    /// The table at the top of this file names every variable the environment layer reads.
    #[test]
    fn the_doc_table_lists_every_environment_variable() {
        let src = include_str!("config.rs");
        let table: Vec<&str> = src.lines().filter(|l| l.starts_with("//! | ")).collect();
        let body = &src[src.find("fn env_layer(").unwrap()..src.find("#[cfg(test)]").unwrap()];
        let mut names = 0;
        for part in body.split('"').skip(1).step_by(2) {
            if part.starts_with("CHAMFER_") && part.len() > "CHAMFER_".len() {
                names += 1;
                assert!(
                    table.iter().any(|l| l.contains(&format!("`{part}`"))),
                    "{part} is read from the environment but not in the module's table"
                );
            }
        }
        assert!(names >= 20, "found only {names} variables");
    }
}
