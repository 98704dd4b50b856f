//! The service's one error type and its one table to both protocols.
//!
//! Every failure a request can meet becomes a [`ServiceError`]; [`ServiceError::status`] maps each variant (and
//! each engine [`IndexError`] variant inside it) to a gRPC code, an HTTP status and a stable machine-readable
//! `code` string. The matches are exhaustive, with no `_ =>` arm: a new variant in the engine or here does not
//! compile until someone decides how clients see it.
//!
//! The codes, statuses and conditions clients see are README.md's "Errors" table, which a test below pins to
//! [`ServiceError::status`] (every row is produced by some variant, and every variant's status is a row).
//!
//! A 500's message names only its `code` (its details name server files and go to the log at ERROR); a
//! damaged collection's reason names the file relative to the data directory.
// Error tables are exhaustive: a new variant must be placed by hand, never by a catch-all arm.
#![deny(clippy::wildcard_enum_match_arm)]
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chamfer_index::IndexError;

use crate::core::storage_error::StorageError;
use tonic::Code;

/// Everything a request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// An engine error (input validation by the engine, or storage).
    #[error(transparent)]
    Index(#[from] IndexError),
    /// A failure of the server's own storage (write-ahead log, manifests).
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// A body or field that cannot be parsed (bad JSON, wrong byte length, unknown enum value).
    #[error("malformed request: {0}")]
    Malformed(String),
    /// A well-formed but unacceptable argument.
    #[error("{0}")]
    InvalidArgument(String),
    /// A token of a JSON token list with the wrong number of values (`token` counts from 0).
    #[error("token {token} has {got} values, expected {expected}")]
    TokenLength {
        /// Index of the token, from 0.
        token: usize,
        /// Values it has.
        got: usize,
        /// Values expected (the dimension).
        expected: usize,
    },
    /// An input-validation error in one document of a batch: the inner error's code and status, its message
    /// prefixed with the document's id (`document "abc": token 3 has 127 values, expected 128`).
    #[error("document {id:?}: {source}")]
    InDocument {
        /// The document's id.
        id: String,
        /// The error in that document.
        source: Box<ServiceError>,
    },
    /// No collection of this name (code `collection_not_found`, 404).
    #[error("collection {0:?} does not exist")]
    CollectionNotFound(String),
    /// No route for this method and path (REST).
    #[error("no route for {0}")]
    RouteNotFound(String),
    /// A collection of this name exists already (code `already_exists`, 409).
    #[error("collection {0:?} already exists")]
    CollectionExists(String),
    /// A request, batch or field larger than a configured limit.
    #[error("{what} too large: {got} (the limit is {max})")]
    TooLarge {
        /// What is too large (a unit is part of the name, e.g. `metadata (bytes)`).
        what: &'static str,
        /// Its size.
        got: usize,
        /// The configured limit.
        max: usize,
    },
    /// A request body above `limits.max_request_bytes`.
    #[error("request body larger than the limit of {max} bytes")]
    RequestTooLarge {
        /// The limit, in bytes.
        max: usize,
    },
    /// The API key is required and missing or wrong.
    #[error("missing or invalid API key")]
    Unauthenticated,
    /// The server (or the collection) is shutting down.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// A collection that exists on disk but cannot serve: damaged (the reason says what and where), or still
    /// being opened.
    #[error("collection {name:?} is unavailable: {reason}")]
    CollectionUnavailable {
        /// The collection.
        name: String,
        /// Why: still opening, or what is damaged and where.
        reason: String,
    },
    /// Writes arrive faster than they can be flushed: retry after the hint.
    #[error("overloaded: {reason}; retry after {retry_after_ms} ms")]
    Overloaded {
        /// What is backed up (memtable documents waiting for a flush, and the limit).
        reason: String,
        /// Suggested wait in ms (gRPC `retry-after-ms` metadata; REST `Retry-After`, in whole seconds).
        retry_after_ms: u64,
    },
    /// The request's deadline passed before it finished (its work was stopped).
    #[error("deadline exceeded: {0}")]
    DeadlineExceeded(String),
    /// The client stopped sending its request body for longer than `body_read_timeout_ms`.
    #[error("request timeout: {0}")]
    RequestTimeout(String),
    /// A bug or an unexpected failure (a panicked worker, a poisoned log).
    #[error("internal error: {0}")]
    Internal(String),
}

/// How one error looks on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ErrorStatus {
    /// gRPC status code.
    pub grpc: Code,
    /// HTTP status.
    pub http: StatusCode,
    /// Stable, machine-readable name (the JSON body's `code`).
    pub code: &'static str,
}

const fn st(grpc: Code, http: StatusCode, code: &'static str) -> ErrorStatus {
    ErrorStatus { grpc, http, code }
}

impl ServiceError {
    /// THE table (see the module documentation).
    pub fn status(&self) -> ErrorStatus {
        use ServiceError as S;
        const BAD: StatusCode = StatusCode::BAD_REQUEST;
        const SERVER: StatusCode = StatusCode::INTERNAL_SERVER_ERROR;
        const UNAVAILABLE: StatusCode = StatusCode::SERVICE_UNAVAILABLE;
        const INSUFFICIENT: StatusCode = StatusCode::INSUFFICIENT_STORAGE;
        match self {
            S::Index(e) => match e {
                IndexError::InvalidConfig(_) => st(Code::InvalidArgument, BAD, "invalid_config"),
                IndexError::DimensionMismatch { .. } => {
                    st(Code::InvalidArgument, BAD, "dimension_mismatch")
                }
                IndexError::Empty { .. } => st(Code::InvalidArgument, BAD, "empty"),
                IndexError::NonFinite { .. } => st(Code::InvalidArgument, BAD, "non_finite"),
                IndexError::TooManyTokens { .. } => st(
                    Code::ResourceExhausted,
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "too_many_tokens",
                ),
                IndexError::InvalidParam { .. } => {
                    st(Code::InvalidArgument, BAD, "invalid_parameter")
                }
                IndexError::DuplicateId(_) => st(Code::InvalidArgument, BAD, "duplicate_id"),
                IndexError::NotFound(_) => st(Code::NotFound, StatusCode::NOT_FOUND, "not_found"),
                IndexError::Io { source, .. }
                    if source.kind() == std::io::ErrorKind::StorageFull =>
                {
                    st(Code::ResourceExhausted, INSUFFICIENT, "storage_full")
                }
                IndexError::Io { .. } => st(Code::Internal, SERVER, "io"),
                IndexError::Corrupt { .. } => st(Code::DataLoss, SERVER, "corrupt"),
                IndexError::UnsupportedVersion { .. } => {
                    st(Code::FailedPrecondition, SERVER, "unsupported_version")
                }
                IndexError::Incompatible(_) => st(Code::FailedPrecondition, SERVER, "incompatible"),
                IndexError::ValueOutOfRange { .. } => {
                    st(Code::InvalidArgument, BAD, "out_of_range")
                }
                IndexError::Cancelled(_) => st(Code::Cancelled, UNAVAILABLE, "cancelled"),
            },
            S::Storage(e) => match e {
                StorageError::Io { .. } => st(Code::Internal, SERVER, "io"),
                StorageError::Full { .. } => {
                    st(Code::ResourceExhausted, INSUFFICIENT, "storage_full")
                }
                StorageError::Damaged { .. } => st(Code::DataLoss, SERVER, "corrupt"),
                StorageError::Version { .. } => {
                    st(Code::FailedPrecondition, SERVER, "unsupported_version")
                }
                StorageError::Poisoned { .. } => st(Code::Internal, SERVER, "internal"),
            },
            S::Malformed(_) => st(Code::InvalidArgument, BAD, "malformed"),
            S::TokenLength { .. } => st(Code::InvalidArgument, BAD, "dimension_mismatch"),
            S::InDocument { source, .. } => source.status(),
            S::InvalidArgument(_) => st(Code::InvalidArgument, BAD, "invalid_argument"),
            S::CollectionNotFound(_) => st(
                Code::NotFound,
                StatusCode::NOT_FOUND,
                "collection_not_found",
            ),
            S::RouteNotFound(_) => st(Code::Unimplemented, StatusCode::NOT_FOUND, "not_found"),
            S::CollectionExists(_) => {
                st(Code::AlreadyExists, StatusCode::CONFLICT, "already_exists")
            }
            S::TooLarge { .. } => st(
                Code::ResourceExhausted,
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
            ),
            S::RequestTooLarge { .. } => st(
                Code::ResourceExhausted,
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
            ),
            S::Unauthenticated => st(
                Code::Unauthenticated,
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
            ),
            S::Unavailable(_) => st(
                Code::Unavailable,
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
            ),
            S::CollectionUnavailable { .. } => {
                st(Code::Unavailable, UNAVAILABLE, "collection_unavailable")
            }
            S::Overloaded { .. } => st(
                Code::ResourceExhausted,
                StatusCode::TOO_MANY_REQUESTS,
                "overloaded",
            ),
            S::DeadlineExceeded(_) => st(
                Code::DeadlineExceeded,
                StatusCode::GATEWAY_TIMEOUT,
                "deadline_exceeded",
            ),
            S::RequestTimeout(_) => st(
                Code::DeadlineExceeded,
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
            ),
            S::Internal(_) => st(Code::Internal, SERVER, "internal"),
        }
    }

    /// This error, said of the document `id` of a batch.
    pub fn in_document(self, id: &str) -> Self {
        ServiceError::InDocument {
            id: id.to_owned(),
            source: Box::new(self),
        }
    }

    /// An I/O error of the server's storage on `path` (disk full included).
    pub fn io(path: impl Into<std::path::PathBuf>, source: std::io::Error) -> Self {
        ServiceError::Storage(StorageError::io(path, source))
    }

    /// True for errors caused by the server rather than the request (logged at error level).
    pub fn is_server_side(&self) -> bool {
        self.status().http.is_server_error()
    }

    /// The message a client sees. A 500 says only what kind of failure it was, and a 507 only that the disk
    /// is full (their details, which name server files, go to the log); every other status keeps its full
    /// message, which is about the request.
    pub fn public_message(&self) -> String {
        let s = self.status();
        if s.http == StatusCode::INTERNAL_SERVER_ERROR {
            format!(
                "internal server error ({}); the server log has the details",
                s.code
            )
        } else if s.http == StatusCode::INSUFFICIENT_STORAGE {
            "out of disk space: the write was not applied; retry once space is freed".into()
        } else {
            self.to_string()
        }
    }
}

impl From<ServiceError> for tonic::Status {
    fn from(e: ServiceError) -> Self {
        if e.is_server_side() {
            tracing::error!(error = %e, "request failed");
        }
        let s = e.status();
        let mut status = tonic::Status::new(s.grpc, e.public_message());
        if let Ok(v) = s.code.parse() {
            status.metadata_mut().insert("chamfer-error-code", v);
        }
        if let ServiceError::Overloaded { retry_after_ms, .. } = &e {
            if let Ok(v) = retry_after_ms.to_string().parse() {
                status.metadata_mut().insert("retry-after-ms", v);
            }
        }
        status
    }
}

pub use crate::api::ErrorBody;

impl IntoResponse for ServiceError {
    fn into_response(self) -> Response {
        if self.is_server_side() {
            tracing::error!(error = %self, "request failed");
        }
        let s = self.status();
        let retry_after = if let ServiceError::Overloaded { retry_after_ms, .. } = &self {
            Some(retry_after_ms.div_ceil(1000))
        } else {
            None
        };
        let mut resp = (
            s.http,
            axum::Json(ErrorBody {
                code: s.code,
                message: self.public_message(),
            }),
        )
            .into_response();
        if let Some(secs) = retry_after {
            resp.headers_mut()
                .insert(axum::http::header::RETRY_AFTER, secs.max(1).into());
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_matches_the_issue() {
        let cases: Vec<(ServiceError, Code, u16)> = vec![
            (
                ServiceError::CollectionNotFound("x".into()),
                Code::NotFound,
                404,
            ),
            (
                IndexError::DimensionMismatch {
                    expected: 2,
                    got: 3,
                }
                .into(),
                Code::InvalidArgument,
                400,
            ),
            (
                IndexError::NonFinite { token: 0, coord: 0 }.into(),
                Code::InvalidArgument,
                400,
            ),
            (
                IndexError::Empty { what: "document" }.into(),
                Code::InvalidArgument,
                400,
            ),
            (
                IndexError::TooManyTokens { got: 9, max: 8 }.into(),
                Code::ResourceExhausted,
                413,
            ),
            (
                IndexError::param("k", "0").into(),
                Code::InvalidArgument,
                400,
            ),
            (
                IndexError::DuplicateId("a".into()).into(),
                Code::InvalidArgument,
                400,
            ),
            (
                ServiceError::TooLarge {
                    what: "request",
                    got: 2,
                    max: 1,
                },
                Code::ResourceExhausted,
                413,
            ),
            (
                ServiceError::Malformed("x".into()),
                Code::InvalidArgument,
                400,
            ),
            (ServiceError::Unauthenticated, Code::Unauthenticated, 401),
            (
                ServiceError::RequestTimeout("x".into()),
                Code::DeadlineExceeded,
                408,
            ),
            (
                ServiceError::CollectionExists("x".into()),
                Code::AlreadyExists,
                409,
            ),
        ];
        for (e, grpc, http) in cases {
            let s = e.status();
            assert_eq!((s.grpc, s.http.as_u16()), (grpc, http), "{e}");
        }
    }

    /// One error of every variant, the engine's and the storage layer's included (the `variant` matches below
    /// have no catch-all arm, so a new variant does not compile until it is named here and given an example).
    fn one_of_each() -> Vec<ServiceError> {
        let io = |kind: std::io::ErrorKind| std::io::Error::new(kind, "x");
        let index = vec![
            IndexError::InvalidConfig("x".into()),
            IndexError::DimensionMismatch {
                expected: 2,
                got: 3,
            },
            IndexError::Empty { what: "query" },
            IndexError::NonFinite { token: 0, coord: 0 },
            IndexError::TooManyTokens { got: 9, max: 8 },
            IndexError::param("k", "0"),
            IndexError::DuplicateId("a".into()),
            IndexError::NotFound("a".into()),
            IndexError::io("/f", io(std::io::ErrorKind::StorageFull)),
            IndexError::io("/f", io(std::io::ErrorKind::PermissionDenied)),
            IndexError::Corrupt {
                path: "/f".into(),
                reason: "x".into(),
            },
            IndexError::UnsupportedVersion {
                path: "/f".into(),
                found: 9,
                supported: 1,
            },
            IndexError::Incompatible("x".into()),
            IndexError::ValueOutOfRange {
                token: 0,
                coord: 0,
                value: 1e6,
                limit: 65504.0,
            },
            IndexError::Cancelled("x"),
        ];
        let storage = vec![
            StorageError::io("/f", io(std::io::ErrorKind::PermissionDenied)),
            StorageError::io("/f", io(std::io::ErrorKind::StorageFull)),
            StorageError::damaged("/f", None, "x"),
            StorageError::Version {
                path: "/f".into(),
                found: 9,
                supported: 1,
            },
            StorageError::Poisoned {
                path: "/f".into(),
                reason: "x".into(),
            },
        ];
        let mut all: Vec<ServiceError> = index.into_iter().map(ServiceError::from).collect();
        all.extend(storage.into_iter().map(ServiceError::from));
        all.extend([
            ServiceError::Malformed("x".into()),
            ServiceError::InvalidArgument("x".into()),
            ServiceError::TokenLength {
                token: 0,
                got: 1,
                expected: 2,
            },
            ServiceError::Malformed("x".into()).in_document("a"),
            ServiceError::CollectionNotFound("x".into()),
            ServiceError::RouteNotFound("x".into()),
            ServiceError::CollectionExists("x".into()),
            ServiceError::TooLarge {
                what: "request",
                got: 2,
                max: 1,
            },
            ServiceError::RequestTooLarge { max: 1 },
            ServiceError::Unauthenticated,
            ServiceError::Unavailable("x".into()),
            ServiceError::CollectionUnavailable {
                name: "x".into(),
                reason: "x".into(),
            },
            ServiceError::Overloaded {
                reason: "x".into(),
                retry_after_ms: 1,
            },
            ServiceError::DeadlineExceeded("x".into()),
            ServiceError::RequestTimeout("x".into()),
            ServiceError::Internal("x".into()),
        ]);
        all
    }

    /// The variant's name (nested variants as `Index::NotFound`); exhaustive, no catch-all.
    fn variant(e: &ServiceError) -> String {
        use ServiceError as S;
        let name = match e {
            S::Index(e) => {
                return format!(
                    "Index::{}",
                    match e {
                        IndexError::InvalidConfig(_) => "InvalidConfig",
                        IndexError::DimensionMismatch { .. } => "DimensionMismatch",
                        IndexError::Empty { .. } => "Empty",
                        IndexError::NonFinite { .. } => "NonFinite",
                        IndexError::TooManyTokens { .. } => "TooManyTokens",
                        IndexError::InvalidParam { .. } => "InvalidParam",
                        IndexError::DuplicateId(_) => "DuplicateId",
                        IndexError::NotFound(_) => "NotFound",
                        IndexError::Io { .. } => "Io",
                        IndexError::Corrupt { .. } => "Corrupt",
                        IndexError::UnsupportedVersion { .. } => "UnsupportedVersion",
                        IndexError::Incompatible(_) => "Incompatible",
                        IndexError::ValueOutOfRange { .. } => "ValueOutOfRange",
                        IndexError::Cancelled(_) => "Cancelled",
                    }
                )
            }
            S::Storage(e) => {
                return format!(
                    "Storage::{}",
                    match e {
                        StorageError::Io { .. } => "Io",
                        StorageError::Full { .. } => "Full",
                        StorageError::Damaged { .. } => "Damaged",
                        StorageError::Version { .. } => "Version",
                        StorageError::Poisoned { .. } => "Poisoned",
                    }
                )
            }
            S::Malformed(_) => "Malformed",
            S::InvalidArgument(_) => "InvalidArgument",
            S::TokenLength { .. } => "TokenLength",
            S::InDocument { .. } => "InDocument",
            S::CollectionNotFound(_) => "CollectionNotFound",
            S::RouteNotFound(_) => "RouteNotFound",
            S::CollectionExists(_) => "CollectionExists",
            S::TooLarge { .. } => "TooLarge",
            S::RequestTooLarge { .. } => "RequestTooLarge",
            S::Unauthenticated => "Unauthenticated",
            S::Unavailable(_) => "Unavailable",
            S::CollectionUnavailable { .. } => "CollectionUnavailable",
            S::Overloaded { .. } => "Overloaded",
            S::DeadlineExceeded(_) => "DeadlineExceeded",
            S::RequestTimeout(_) => "RequestTimeout",
            S::Internal(_) => "Internal",
        };
        name.into()
    }

    /// README's "Errors" table rows as (code, HTTP, gRPC), rows of a nested error ("the inner error's") left out.
    fn readme_rows() -> Vec<(String, u16, String)> {
        let readme = include_str!("../../README.md");
        let start = readme
            .find("| condition | `code` | HTTP | gRPC |")
            .expect("README's Errors table");
        readme[start..]
            .lines()
            .skip(2)
            .take_while(|l| l.starts_with('|'))
            .filter_map(|l| {
                let cells: Vec<&str> = l.split('|').map(str::trim).collect();
                let code = cells[2].strip_prefix('`')?.strip_suffix('`')?;
                Some((code.to_owned(), cells[3].parse().ok()?, cells[4].to_owned()))
            })
            .collect()
    }

    /// Issue 22 item 6: README's error table is exactly what `status` answers: every variant's (code, HTTP
    /// status, gRPC code) is a row, and every row is answered by some variant (no dead code like the old
    /// `dataset`).
    #[test]
    fn readme_error_table_is_the_status_table() {
        let rows = readme_rows();
        assert!(rows.len() >= 20, "{rows:?}");
        let all = one_of_each();
        let mut names: Vec<String> = all.iter().map(variant).collect();
        names.sort();
        names.dedup();
        // Each variant has an example (Index::Io twice: disk full and other I/O).
        assert_eq!(names.len(), 14 + 5 + 16, "{names:?}");
        let mut answered = Vec::new();
        for e in &all {
            let s = e.status();
            let grpc = format!("{:?}", s.grpc);
            let row = (s.code.to_owned(), s.http.as_u16(), screaming(&grpc));
            assert!(
                rows.contains(&row),
                "{} ({e}) answers {row:?}, which README's Errors table lacks",
                variant(e)
            );
            answered.push(row);
        }
        for row in &rows {
            assert!(
                answered.contains(row),
                "README's Errors table row {row:?} is answered by no error"
            );
        }
    }

    /// `DeadlineExceeded` -> `DEADLINE_EXCEEDED` (how README names gRPC codes).
    fn screaming(camel: &str) -> String {
        let mut out = String::new();
        for (i, c) in camel.chars().enumerate() {
            if c.is_uppercase() && i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_uppercase());
        }
        out
    }
}
