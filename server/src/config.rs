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
//! | API key (off when unset) | `api_key` | `CHAMFER_API_KEY` | none |
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
    /// Overrides [`Settings::api_key`] (empty: no key).
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
        let mut s = match merged.extract::<Settings>() {
            Ok(s) => s,
            // Every layer was checked above: this is only reached by a bug, reported like any problem.
            Err(e) => {
                problems.extend(e.into_iter().map(|e| e.to_string()));
                return Err(ConfigError { problems });
            }
        };
        // An empty key means "off", so `CHAMFER_API_KEY=` can disable a key set by the file.
        s.api_key = s.api_key.filter(|k| !k.is_empty());
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
            if k.len() < 8 {
                p.push("api_key must have at least 8 characters".into());
            }
            if !k.bytes().all(|b| b.is_ascii_graphic()) {
                p.push(
                    "api_key must be printable ASCII without spaces (it travels in an HTTP header)"
                        .into(),
                );
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
}
