//! Deadlines and the status rewrites that happen before a handler runs: `grpc-timeout` parsed and enforced from
//! the call's arrival ([`Deadlines`], [`client_deadline`]), and tonic's own early answers mapped to the
//! project's codes ([`fix_status`]).
use std::future::Future;
use std::time::{Duration, Instant};

use tonic::codegen::http;
use tonic::{Request, Status};

use crate::error::ServiceError;

/// How prost's `DecodeError` (which tonic reports as INTERNAL) starts its message.
pub(super) const DECODE_ERROR: &str = "failed to decode Protobuf message";

/// When a call arrived (set by the first layer, before its body is read), so `grpc-timeout` counts from there.
#[derive(Clone, Copy, Debug)]
struct Arrival(Instant);

/// Parses a `grpc-timeout` value (`<up to 8 digits><H|M|S|m|u|n>`, gRPC over HTTP/2).
fn parse_grpc_timeout(v: &str) -> Option<Duration> {
    let unit = v.chars().last()?;
    let digits = &v[..v.len() - unit.len_utf8()];
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        'H' => Duration::from_secs(n * 3600),
        'M' => Duration::from_secs(n * 60),
        'S' => Duration::from_secs(n),
        'm' => Duration::from_millis(n),
        'u' => Duration::from_micros(n),
        'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The deadline of a call that arrived at `arrival` with `grpc-timeout` `timeout`: 1 ms earlier than tonic's
/// own timer for the same header, so that this server answers DEADLINE_EXCEEDED before tonic would cancel the
/// call with CANCELLED (tonic polls the service before its timer).
fn deadline_from(arrival: Instant, timeout: Duration) -> Instant {
    (arrival + timeout)
        .checked_sub(Duration::from_millis(1))
        .map_or(arrival, |e| e.max(arrival))
}

fn header_timeout(v: Option<&http::HeaderValue>) -> Option<Duration> {
    parse_grpc_timeout(v?.to_str().ok()?)
}

/// The client's deadline (`grpc-timeout` from arrival), if it sent one.
pub(super) fn client_deadline<T>(r: &Request<T>) -> Option<Instant> {
    let timeout = parse_grpc_timeout(r.metadata().get("grpc-timeout")?.to_str().ok()?)?;
    let arrival = r
        .extensions()
        .get::<Arrival>()
        .map_or_else(Instant::now, |a| a.0);
    Some(deadline_from(arrival, timeout))
}

/// The outermost layer of our own: stamps each call's arrival and, when the client sent `grpc-timeout`, answers
/// DEADLINE_EXCEEDED at the deadline even while the request body is still arriving or being decoded (the
/// handler, once running, answers it itself and stops its CPU work; dropping it here stops the work too).
#[derive(Clone)]
pub(super) struct Deadlines<S> {
    pub(super) inner: S,
}

impl<S, B> tower::Service<http::Request<B>> for Deadlines<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = std::pin::Pin<
        Box<dyn Future<Output = Result<http::Response<tonic::body::Body>, S::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let arrival = Instant::now();
        req.extensions_mut().insert(Arrival(arrival));
        let timeout = header_timeout(req.headers().get("grpc-timeout"));
        let fut = self.inner.call(req);
        Box::pin(async move {
            let Some(timeout) = timeout else {
                return fut.await;
            };
            match tokio::time::timeout_at(deadline_from(arrival, timeout).into(), fut).await {
                Ok(r) => r,
                Err(_) => Ok(Status::from(ServiceError::DeadlineExceeded(format!(
                    "the call did not finish within its grpc-timeout of {} ms; its work was stopped",
                    timeout.as_millis()
                )))
                .into_http()),
            }
        })
    }
}

/// Two answers tonic gives before any handler runs are rewritten to the project's table (trailers-only
/// responses, so the status is in the headers): an over-limit message is OUT_OF_RANGE for tonic but
/// RESOURCE_EXHAUSTED like every other limit (one limit, one code); bytes that do not decode as the request
/// message are INTERNAL for tonic but the client's fault: INVALID_ARGUMENT.
pub(super) fn fix_status(
    mut resp: http::Response<tonic::body::Body>,
) -> http::Response<tonic::body::Body> {
    let h = resp.headers();
    let status = h.get("grpc-status").map(|v| v.as_bytes().to_vec());
    let message = h
        .get("grpc-message")
        .map(|v| String::from_utf8_lossy(v.as_bytes()).replace("%20", " "))
        .unwrap_or_default();
    let fixed = match status.as_deref() {
        Some(b"11") if message.contains("message length too large") => Some("8"),
        Some(b"13") if message.starts_with(DECODE_ERROR) => Some("3"),
        _ => None,
    };
    if let Some(code) = fixed {
        let h = resp.headers_mut();
        h.insert("grpc-status", http::HeaderValue::from_static(code));
        if code == "3" {
            h.insert(
                "chamfer-error-code",
                http::HeaderValue::from_static("malformed"),
            );
        }
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_values_parse_per_the_spec() {
        assert_eq!(parse_grpc_timeout("5m"), Some(Duration::from_millis(5)));
        assert_eq!(parse_grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("3M"), Some(Duration::from_secs(180)));
        assert_eq!(parse_grpc_timeout("7u"), Some(Duration::from_micros(7)));
        assert_eq!(
            parse_grpc_timeout("99999999n"),
            Some(Duration::from_nanos(99_999_999))
        );
        for bad in ["", "m", "5", "5x", "-5m", "123456789m", "5 m", "5é"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad:?}");
        }
        // Our deadline is 1 ms before tonic's own timer, never before the arrival.
        let t = Instant::now();
        assert_eq!(
            deadline_from(t, Duration::from_millis(5)),
            t + Duration::from_millis(4)
        );
        assert_eq!(deadline_from(t, Duration::from_micros(10)), t);
    }
}
