//! The engine's typed errors. Every fallible public function returns [`Result`]; nothing in the engine panics
//! on bad input. The server maps each variant to a gRPC status and an HTTP code in one exhaustive table.
use std::path::PathBuf;

/// Result alias for the engine.
pub type Result<T, E = IndexError> = std::result::Result<T, E>;

/// Everything that can go wrong in the engine.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// An FDE, HNSW or search configuration that cannot work (the message says which field and why).
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// A vector or token matrix of the wrong width.
    #[error("dimension mismatch: expected {expected}, got {got}")]
    DimensionMismatch {
        /// The width the index or configuration requires.
        expected: usize,
        /// The width that was supplied.
        got: usize,
    },
    /// A document or query without any token vector.
    #[error("empty {what}: it has no token vectors")]
    Empty {
        /// What was empty (e.g. "document" or "query").
        what: &'static str,
    },
    /// NaN or infinity in an input vector.
    #[error("non-finite value (NaN or infinity) at token {token}, coordinate {coord}")]
    NonFinite {
        /// Zero-based index of the offending token vector.
        token: usize,
        /// Zero-based coordinate within that token vector.
        coord: usize,
    },
    /// More tokens than a limit allows.
    #[error("too many tokens: {got} (at most {max})")]
    TooManyTokens {
        /// The number of tokens supplied.
        got: usize,
        /// The largest number of tokens allowed.
        max: usize,
    },
    /// A request parameter out of range (k, ef, candidate counts, ...).
    #[error("invalid parameter {name}: {reason}")]
    InvalidParam {
        /// The parameter's name (e.g. "k" or "ef").
        name: &'static str,
        /// Why its value was rejected.
        reason: String,
    },
    /// Two documents with the same external id where ids must be unique.
    #[error("duplicate document id {0:?}")]
    DuplicateId(String),
    /// A document or query id that does not exist.
    #[error("unknown id {0:?}")]
    NotFound(String),
    /// An operating-system I/O error on a named file.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory the operation was on.
        path: PathBuf,
        /// The underlying operating-system error.
        source: std::io::Error,
    },
    /// A file that exists but whose bytes are not what they must be (truncated, bit-flipped, wrong magic).
    #[error("{}: corrupt or truncated file: {reason}", path.display())]
    Corrupt {
        /// The corrupt file.
        path: PathBuf,
        /// What check failed.
        reason: String,
    },
    /// A file written by a newer (or older, unsupported) version of chamfer.
    #[error("{}: unsupported format version {found} (this build reads version {supported})", path.display())]
    UnsupportedVersion {
        /// The file with the unsupported version.
        path: PathBuf,
        /// The format version recorded in the file.
        found: u32,
        /// The format version this build reads.
        supported: u32,
    },
    /// Shards or queries built with incompatible FDE configurations.
    #[error("incompatible index: {0}")]
    Incompatible(String),
    /// A finite input value too large to store (token vectors are stored as f16: |x| <= 65504).
    #[error("value {value} at token {token}, coordinate {coord} is out of range (|x| <= {limit})")]
    ValueOutOfRange {
        /// Zero-based index of the offending token vector.
        token: usize,
        /// Zero-based coordinate within that token vector.
        coord: usize,
        /// The value that was supplied.
        value: f32,
        /// The largest magnitude that can be stored (65504, the f16 maximum).
        limit: f32,
    },
    /// Work stopped before it finished because its caller gave up (a deadline passed, or shutdown began).
    #[error("cancelled: {0}")]
    Cancelled(&'static str),
}

impl IndexError {
    /// Wraps an I/O error with the path it happened on.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        IndexError::Io {
            path: path.into(),
            source,
        }
    }
    /// A corrupt-file error for `path`.
    pub fn corrupt(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        IndexError::Corrupt {
            path: path.into(),
            reason: reason.into(),
        }
    }
    /// An out-of-range parameter.
    pub fn param(name: &'static str, reason: impl Into<String>) -> Self {
        IndexError::InvalidParam {
            name,
            reason: reason.into(),
        }
    }
}
