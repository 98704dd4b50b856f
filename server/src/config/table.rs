//! THE list of settings: for each one its config-file key, its environment variable, its command-line flag (when
//! it has one), the kind of value it takes and what it means. Everything else is derived from it: the
//! environment and flags layers of [`Settings::load`](super::Settings::load), the `chamfer serve` flags (built
//! by the CLI from [`SETTINGS`]), and the configuration table of README.md ([`markdown_table`], pinned by a test).
//! The default of each setting is [`Settings::default`](super::Settings::default), read through its file key;
//! a test checks that every field of [`Settings`](super::Settings) has exactly one entry here.
use figment::value::Value;
use figment::Figment;

use super::Settings;

/// The kind of value a setting takes (how a variable's or a flag's text is read).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A non-negative integer.
    Uint,
    /// An `IP:port` socket address.
    Addr,
    /// A file-system path.
    Path,
    /// Free text.
    Text,
}

/// One setting.
#[derive(Clone, Copy, Debug)]
pub struct Setting {
    /// The config-file key (`limits.max_k`: the `max_k` key of the `[limits]` table).
    pub key: &'static str,
    /// The environment variable.
    pub env: &'static str,
    /// The long flag of `chamfer serve`, without its dashes; `None` for a secret (a flag would show in `ps`).
    pub flag: Option<&'static str>,
    /// How its text is read.
    pub kind: Kind,
    /// What it means (one line of README's table).
    pub doc: &'static str,
}

const fn s(
    key: &'static str,
    env: &'static str,
    flag: &'static str,
    kind: Kind,
    doc: &'static str,
) -> Setting {
    Setting {
        key,
        env,
        flag: Some(flag),
        kind,
        doc,
    }
}

/// Every setting, in README's order.
#[rustfmt::skip]
pub const SETTINGS: &[Setting] = &[
    s("data_dir", "CHAMFER_DATA_DIR", "data-dir", Kind::Path,
      "data directory (every collection; one server per directory)"),
    s("http_addr", "CHAMFER_HTTP_ADDR", "http-addr", Kind::Addr, "HTTP (REST) listen address"),
    s("grpc_addr", "CHAMFER_GRPC_ADDR", "grpc-addr", Kind::Addr, "gRPC listen address"),
    Setting {
        key: "api_key",
        env: "CHAMFER_API_KEY",
        flag: None,
        kind: Kind::Text,
        doc: "API key (all but health endpoints; off when unset; an empty key is refused at start-up; at least 8 \
              printable ASCII characters)",
    },
    s("limits.max_tokens_per_doc", "CHAMFER_MAX_TOKENS_PER_DOC", "max-tokens-per-doc", Kind::Uint,
      "max tokens per document"),
    s("limits.max_query_tokens", "CHAMFER_MAX_QUERY_TOKENS", "max-query-tokens", Kind::Uint,
      "max tokens per query"),
    s("limits.max_batch", "CHAMFER_MAX_BATCH", "max-batch", Kind::Uint,
      "max documents (or ids, or queries) per request"),
    s("limits.max_request_bytes", "CHAMFER_MAX_REQUEST_BYTES", "max-request-bytes", Kind::Uint,
      "max request body (REST) or message (gRPC) bytes"),
    s("limits.max_k", "CHAMFER_MAX_K", "max-k", Kind::Uint, "max k"),
    s("limits.max_metadata_bytes", "CHAMFER_MAX_METADATA_BYTES", "max-metadata-bytes", Kind::Uint,
      "max metadata bytes per document"),
    s("flush_threshold_docs", "CHAMFER_FLUSH_THRESHOLD_DOCS", "flush-threshold-docs", Kind::Uint,
      "memtable documents before a flush"),
    s("compaction_max_shards", "CHAMFER_COMPACTION_MAX_SHARDS", "compaction-max-shards", Kind::Uint,
      "compaction fan-in (shards of one size tier merged together)"),
    s("search_threads", "CHAMFER_SEARCH_THREADS", "search-threads", Kind::Uint,
      "CPU threads for encoding and search (0 = cores)"),
    s("limits.max_batch_query_tokens", "CHAMFER_MAX_BATCH_QUERY_TOKENS", "max-batch-query-tokens", Kind::Uint,
      "work budget: query token vectors in one search or search batch (summed)"),
    s("request_timeout_ms", "CHAMFER_REQUEST_TIMEOUT_MS", "request-timeout-ms", Kind::Uint,
      "request deadline, milliseconds"),
    s("limits.max_connections", "CHAMFER_MAX_CONNECTIONS", "max-connections", Kind::Uint,
      "open connections, both listeners together (0 = the descriptor limit less max(256, 1/8 of it))"),
    s("limits.request_memory_bytes", "CHAMFER_REQUEST_MEMORY_BYTES", "request-memory-bytes", Kind::Uint,
      "memory of requests in flight, server-wide (4 bytes per request body byte; at least 4 x \
       `max_request_bytes`)"),
    s("header_read_timeout_ms", "CHAMFER_HEADER_READ_TIMEOUT_MS", "header-read-timeout-ms", Kind::Uint,
      "HTTP/1 request head: longest wait after its first byte, milliseconds"),
    s("body_read_timeout_ms", "CHAMFER_BODY_READ_TIMEOUT_MS", "body-read-timeout-ms", Kind::Uint,
      "request body: longest wait for the client's next bytes (and for it to take an answer's), milliseconds"),
    s("idle_timeout_ms", "CHAMFER_IDLE_TIMEOUT_MS", "idle-timeout-ms", Kind::Uint,
      "a connection without a request in flight is closed after, milliseconds"),
];

/// The setting whose file key is `key`.
pub fn setting(key: &str) -> Option<&'static Setting> {
    SETTINGS.iter().find(|s| s.key == key)
}

impl Setting {
    /// `text` (an environment variable's or a flag's value) as this setting's value, or why it is not one.
    pub(super) fn parse(&self, text: &str) -> Result<Value, String> {
        match self.kind {
            Kind::Uint => text
                .trim()
                .parse::<u64>()
                .map(Value::from)
                .map_err(|_| format!("{text:?} is not a non-negative integer")),
            Kind::Addr => text
                .parse::<std::net::SocketAddr>()
                .map(|_| Value::from(text.to_owned()))
                .map_err(|e| format!("{text:?} is not an IP:port address ({e})")),
            Kind::Path | Kind::Text => Ok(Value::from(text.to_owned())),
        }
    }

    /// A config file's `value` for this setting, or why it is not one.
    pub(super) fn check(&self, value: &Value) -> Result<Value, String> {
        match (self.kind, value) {
            // TOML integers arrive as i64: read either sign, then hold them to u64.
            (Kind::Uint, Value::Num(..)) => match value
                .to_u128()
                .or_else(|| value.to_i128().and_then(|n| u128::try_from(n).ok()))
            {
                Some(n) if u64::try_from(n).is_ok() => Ok(value.clone()),
                _ => Err(format!("{value:?} is not a non-negative integer")),
            },
            (Kind::Addr | Kind::Path | Kind::Text, Value::String(_, text)) => self.parse(text),
            (Kind::Uint, _) => Err("must be a non-negative integer".into()),
            (Kind::Addr | Kind::Path | Kind::Text, _) => Err("must be a string".into()),
        }
    }

    /// The default, as README shows it.
    pub fn default_text(&self) -> String {
        let defaults = Figment::from(figment::providers::Serialized::defaults(Settings::default()));
        match defaults.find_value(self.key) {
            Err(_) => "none".into(),
            Ok(v) => match (self.kind, v.to_u128()) {
                (Kind::Uint, Some(n)) => human(n, self.key.ends_with("_bytes")),
                _ => format!("`{}`", v.as_str().unwrap_or_default()),
            },
        }
    }
}

/// A number; a byte count of a whole number of KiB or more also in its binary unit (`67108864 (64 MiB)`).
fn human(n: u128, bytes: bool) -> String {
    for (shift, unit) in [(40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")] {
        if bytes && n >= 1 << shift && n.is_multiple_of(1 << shift) {
            return format!("{n} ({} {unit})", n >> shift);
        }
    }
    n.to_string()
}

/// README's configuration table, generated from [`SETTINGS`] and the defaults.
pub fn markdown_table() -> String {
    let mut out =
        String::from("| setting | file key | env var | flag | default |\n|---|---|---|---|---|\n");
    for s in SETTINGS {
        let flag = s.flag.map(|f| format!("`--{f}`")).unwrap_or_default();
        out.push_str(&format!(
            "| {} | `{}` | `{}` | {} | {} |\n",
            s.doc,
            s.key,
            s.env,
            flag,
            s.default_text()
        ));
    }
    out
}
