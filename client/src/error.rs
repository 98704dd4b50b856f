//! The client's error type (gRPC and REST).
// Error tables are exhaustive: a new variant must be placed by hand, never by a catch-all arm.
#![deny(clippy::wildcard_enum_match_arm)]
use std::time::Duration;

use tonic::Code;

/// What a call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The address is not a valid URI (e.g. missing `http://`).
    #[error("invalid address {addr:?}: {message}")]
    InvalidAddress {
        /// The address as given.
        addr: String,
        /// Why it could not be parsed.
        message: String,
    },
    /// The connection could not be established (refused, timed out, TLS failure).
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// The server address the client tried to reach.
        addr: String,
        /// The transport error that prevented the connection.
        #[source]
        source: tonic::transport::Error,
    },
    /// Something the client rejected before sending (e.g. metadata that is not a JSON object).
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// The collection or document does not exist (gRPC NOT_FOUND).
    #[error("not found: {0}")]
    NotFound(String),
    /// The collection already exists (gRPC ALREADY_EXISTS).
    #[error("already exists: {0}")]
    AlreadyExists(String),
    /// The server rejected the request (gRPC INVALID_ARGUMENT): wrong dimension, NaN, empty document, ...
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// Missing or wrong API key (gRPC UNAUTHENTICATED).
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// A limit was exceeded: too many tokens, too large a request (gRPC RESOURCE_EXHAUSTED, HTTP 413).
    #[error("limit exceeded: {0}")]
    ResourceExhausted(String),
    /// The server is overloaded (flushing is behind): gRPC RESOURCE_EXHAUSTED with a `retry-after-ms` hint or
    /// the `overloaded` error code, HTTP 429. Retrying after `retry_after` (the server's hint) may succeed.
    #[error("overloaded: {message}")]
    Overloaded {
        /// The server's error message.
        message: String,
        /// How long the server suggested waiting before retrying, if it gave a hint.
        retry_after: Option<Duration>,
    },
    /// The server is shutting down or unreachable (gRPC UNAVAILABLE, HTTP 503); retrying later may succeed,
    /// after `retry_after` when the server gave a hint.
    #[error("unavailable: {message}")]
    Unavailable {
        /// The server's (or transport's) error message.
        message: String,
        /// How long the server suggested waiting before retrying, if it gave a hint.
        retry_after: Option<Duration>,
    },
    /// A REST request could not be sent or its answer not read (connection refused, reset, timed out,
    /// an answer over the size bound).
    #[error("HTTP request to {addr} failed: {message}")]
    Http {
        /// The server address (base URL) the request was sent to.
        addr: String,
        /// What went wrong.
        message: String,
    },
    /// The request timeout (deadline) passed (gRPC DEADLINE_EXCEEDED).
    #[error("timed out: {0}")]
    Timeout(String),
    /// Any other gRPC status (INTERNAL, DATA_LOSS, ...).
    #[error("server error ({code:?}): {message}")]
    Server {
        /// The gRPC status code the server returned.
        code: Code,
        /// The status message the server returned.
        message: String,
    },
}

impl Error {
    /// The gRPC code this error corresponds to (client-side errors map to the closest code).
    pub fn code(&self) -> Code {
        match self {
            Error::InvalidAddress { .. } | Error::InvalidInput(_) | Error::InvalidArgument(_) => {
                Code::InvalidArgument
            }
            Error::Connect { .. } | Error::Unavailable { .. } | Error::Http { .. } => {
                Code::Unavailable
            }
            Error::NotFound(_) => Code::NotFound,
            Error::AlreadyExists(_) => Code::AlreadyExists,
            Error::Unauthenticated(_) => Code::Unauthenticated,
            Error::ResourceExhausted(_) | Error::Overloaded { .. } => Code::ResourceExhausted,
            Error::Timeout(_) => Code::DeadlineExceeded,
            Error::Server { code, .. } => *code,
        }
    }

    /// True for failures where the same request may succeed later (unavailable, overloaded, timed out, not
    /// connected).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::Connect { .. }
                | Error::Http { .. }
                | Error::Unavailable { .. }
                | Error::Overloaded { .. }
                | Error::Timeout(_)
        )
    }

    /// True when the server asked the client to come back later: overloaded (RESOURCE_EXHAUSTED with a hint,
    /// HTTP 429) or unavailable (UNAVAILABLE, HTTP 503). What [`crate::ingest`] retries with backoff.
    pub fn is_backpressure(&self) -> bool {
        matches!(self, Error::Overloaded { .. } | Error::Unavailable { .. })
    }

    /// The server's retry hint (gRPC metadata `retry-after-ms`, HTTP `Retry-After`), when it gave one.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::Overloaded { retry_after, .. } | Error::Unavailable { retry_after, .. } => {
                *retry_after
            }
            Error::InvalidAddress { .. }
            | Error::Connect { .. }
            | Error::InvalidInput(_)
            | Error::NotFound(_)
            | Error::AlreadyExists(_)
            | Error::InvalidArgument(_)
            | Error::Unauthenticated(_)
            | Error::ResourceExhausted(_)
            | Error::Http { .. }
            | Error::Timeout(_)
            | Error::Server { .. } => None,
        }
    }

    /// The error for a non-2xx REST answer: the status picks the variant, the JSON body's `message` (or the
    /// body's text) is the message, `Retry-After` (seconds) the hint.
    pub(crate) fn from_http(status: u16, body: &[u8], retry_after: Option<Duration>) -> Error {
        let json: Option<serde_json::Value> = serde_json::from_slice(body).ok();
        let field = |k: &str| {
            json.as_ref()
                .and_then(|v| v.get(k))
                .and_then(|m| m.as_str())
                .map(str::to_string)
        };
        let text: String = String::from_utf8_lossy(body).chars().take(500).collect();
        let m = field("message").unwrap_or(text);
        match status {
            400 | 422 => Error::InvalidArgument(m),
            401 | 403 => Error::Unauthenticated(m),
            404 => Error::NotFound(m),
            409 => Error::AlreadyExists(m),
            413 => Error::ResourceExhausted(m),
            429 => Error::Overloaded {
                message: m,
                retry_after,
            },
            503 => Error::Unavailable {
                message: m,
                retry_after,
            },
            504 => Error::Timeout(m),
            500 => Error::Server {
                code: Code::Internal,
                message: m,
            },
            s => Error::Server {
                code: Code::Unknown,
                message: format!("HTTP {s}: {m}"),
            },
        }
    }
}

/// The `retry-after-ms` metadata of a status (the server's hint when it is overloaded).
fn retry_after_ms(s: &tonic::Status) -> Option<Duration> {
    let v = s.metadata().get("retry-after-ms")?.to_str().ok()?;
    v.trim().parse::<u64>().ok().map(Duration::from_millis)
}

impl From<tonic::Status> for Error {
    fn from(s: tonic::Status) -> Self {
        let m = s.message().to_string();
        let retry_after = retry_after_ms(&s);
        let overloaded = retry_after.is_some()
            || s.metadata()
                .get("chamfer-error-code")
                .is_some_and(|c| c == "overloaded");
        match s.code() {
            Code::NotFound => Error::NotFound(m),
            Code::AlreadyExists => Error::AlreadyExists(m),
            Code::InvalidArgument | Code::OutOfRange => Error::InvalidArgument(m),
            Code::Unauthenticated | Code::PermissionDenied => Error::Unauthenticated(m),
            Code::ResourceExhausted if overloaded => Error::Overloaded {
                message: m,
                retry_after,
            },
            Code::ResourceExhausted => Error::ResourceExhausted(m),
            Code::Unavailable => Error::Unavailable {
                message: m,
                retry_after,
            },
            Code::DeadlineExceeded => Error::Timeout(m),
            // tonic's client-side request timeout surfaces as CANCELLED "Timeout expired".
            Code::Cancelled if m.to_ascii_lowercase().contains("timeout") => Error::Timeout(m),
            code @ (Code::Ok
            | Code::Cancelled
            | Code::Unknown
            | Code::FailedPrecondition
            | Code::Aborted
            | Code::Unimplemented
            | Code::Internal
            | Code::DataLoss) => Error::Server { code, message: m },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_variants_and_back() {
        for code in [
            Code::NotFound,
            Code::AlreadyExists,
            Code::InvalidArgument,
            Code::Unauthenticated,
            Code::ResourceExhausted,
            Code::Unavailable,
            Code::DeadlineExceeded,
            Code::Internal,
            Code::DataLoss,
        ] {
            let e = Error::from(tonic::Status::new(code, "x"));
            assert_eq!(e.code(), code, "{e}");
        }
        assert!(Error::from(tonic::Status::unavailable("x")).is_retryable());
        assert!(!Error::from(tonic::Status::not_found("x")).is_retryable());
    }

    #[test]
    fn retry_hints_are_read_from_grpc_metadata_and_http_statuses() {
        let mut s = tonic::Status::resource_exhausted("overloaded: flushing is behind");
        s.metadata_mut()
            .insert("retry-after-ms", "250".parse().unwrap());
        let e = Error::from(s);
        assert!(e.is_backpressure(), "{e:?}");
        assert_eq!(e.retry_after(), Some(Duration::from_millis(250)));
        assert_eq!(e.code(), Code::ResourceExhausted);
        // A size limit is not backpressure: retrying the same request cannot help.
        let e = Error::from(tonic::Status::resource_exhausted("too many tokens"));
        assert!(matches!(e, Error::ResourceExhausted(_)) && !e.is_backpressure());
        let e = Error::from_http(
            429,
            br#"{"code":"overloaded","message":"m"}"#,
            Some(Duration::from_secs(2)),
        );
        assert!(
            matches!(&e, Error::Overloaded { message, .. } if message == "m"),
            "{e:?}"
        );
        assert_eq!(e.retry_after(), Some(Duration::from_secs(2)));
        let e = Error::from_http(503, b"down", None);
        assert!(e.is_backpressure() && e.retry_after().is_none(), "{e:?}");
        assert!(matches!(
            Error::from_http(404, b"{}", None),
            Error::NotFound(_)
        ));
        assert!(!Error::from_http(400, b"bad", None).is_backpressure());
    }
}
