//! The client's error type.
use tonic::Code;

/// What a call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The address is not a valid URI (e.g. missing `http://`).
    #[error("invalid address {addr:?}: {message}")]
    InvalidAddress { addr: String, message: String },
    /// The connection could not be established (refused, timed out, TLS failure).
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: String,
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
    /// A limit was exceeded: too many tokens, too large a request (gRPC RESOURCE_EXHAUSTED).
    #[error("limit exceeded: {0}")]
    ResourceExhausted(String),
    /// The server is shutting down or unreachable (gRPC UNAVAILABLE); retrying later may succeed.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The request timeout (deadline) passed (gRPC DEADLINE_EXCEEDED).
    #[error("timed out: {0}")]
    Timeout(String),
    /// Any other gRPC status (INTERNAL, DATA_LOSS, ...).
    #[error("server error ({code:?}): {message}")]
    Server { code: Code, message: String },
}

impl Error {
    /// The gRPC code this error corresponds to (client-side errors map to the closest code).
    pub fn code(&self) -> Code {
        match self {
            Error::InvalidAddress { .. } | Error::InvalidInput(_) | Error::InvalidArgument(_) => {
                Code::InvalidArgument
            }
            Error::Connect { .. } | Error::Unavailable(_) => Code::Unavailable,
            Error::NotFound(_) => Code::NotFound,
            Error::AlreadyExists(_) => Code::AlreadyExists,
            Error::Unauthenticated(_) => Code::Unauthenticated,
            Error::ResourceExhausted(_) => Code::ResourceExhausted,
            Error::Timeout(_) => Code::DeadlineExceeded,
            Error::Server { code, .. } => *code,
        }
    }

    /// True for failures where the same request may succeed later (unavailable, timed out, not connected).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::Connect { .. } | Error::Unavailable(_) | Error::Timeout(_)
        )
    }
}

impl From<tonic::Status> for Error {
    fn from(s: tonic::Status) -> Self {
        let m = s.message().to_string();
        match s.code() {
            Code::NotFound => Error::NotFound(m),
            Code::AlreadyExists => Error::AlreadyExists(m),
            Code::InvalidArgument | Code::OutOfRange => Error::InvalidArgument(m),
            Code::Unauthenticated | Code::PermissionDenied => Error::Unauthenticated(m),
            Code::ResourceExhausted => Error::ResourceExhausted(m),
            Code::Unavailable => Error::Unavailable(m),
            Code::DeadlineExceeded => Error::Timeout(m),
            // tonic's client-side request timeout surfaces as CANCELLED "Timeout expired".
            Code::Cancelled if m.to_ascii_lowercase().contains("timeout") => Error::Timeout(m),
            code => Error::Server { code, message: m },
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
}
