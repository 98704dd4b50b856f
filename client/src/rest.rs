//! An async client for chamfer's REST API, on `hyper-util`'s pooled HTTP/1.1 client (plain `http://` only, like
//! the gRPC client without a TLS feature).
//!
//! [`RestClient::send`] is the raw layer: any method, path, body bytes and extra headers; it returns the status,
//! the headers and the body whatever the status (tests use it to send malformed requests on purpose).
//! [`RestClient::call`] sends JSON and turns a non-2xx answer into an [`Error`] (with the `Retry-After` hint);
//! the typed calls below it are what [`crate::ingest`] needs.
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER};
pub use hyper::Method;
use hyper::{Request, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client as Pool;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};

use crate::{Document, Error, Result};

/// Largest answer body read (a bound on the client's memory, far above any answer of the server).
pub const MAX_RESPONSE_BYTES: usize = 512 << 20;

/// An answer, whatever its status.
#[derive(Debug, Clone)]
pub struct RestResponse {
    /// HTTP status code (e.g. 200, 404).
    pub status: u16,
    /// Response headers.
    pub headers: HeaderMap,
    /// The raw response body (at most [`MAX_RESPONSE_BYTES`]).
    pub body: Bytes,
}

impl RestResponse {
    /// The body as JSON (`Null` when it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    /// The `Retry-After` header (seconds), when present.
    pub fn retry_after(&self) -> Option<Duration> {
        let v = self.headers.get(RETRY_AFTER)?.to_str().ok()?;
        v.trim().parse::<u64>().ok().map(Duration::from_secs)
    }

    /// The status line and headers as text (`HTTP/1.1 200 OK\r\nname: value\r\n...`), for assertions.
    pub fn head(&self) -> String {
        let reason = hyper::StatusCode::from_u16(self.status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("");
        let mut h = format!("HTTP/1.1 {} {reason}", self.status);
        for (k, v) in &self.headers {
            h.push_str(&format!(
                "\r\n{}: {}",
                k,
                String::from_utf8_lossy(v.as_bytes())
            ));
        }
        h
    }

    /// The body as JSON for a 2xx answer, else the matching [`Error`].
    pub fn into_result(self) -> Result<Value> {
        if (200..300).contains(&self.status) {
            Ok(self.json())
        } else {
            Err(Error::from_http(
                self.status,
                &self.body,
                self.retry_after(),
            ))
        }
    }
}

/// A REST client for one server (cheap to clone: the connection pool is shared).
#[derive(Clone, Debug)]
pub struct RestClient {
    pool: Pool<HttpConnector, Full<Bytes>>,
    /// `http://host:port` (no trailing slash).
    base: String,
    api_key: Option<HeaderValue>,
    timeout: Duration,
}

/// `http://host:port[/...]` or `host:port[/...]` as a URI; `localhost` becomes 127.0.0.1 (a static binary in a
/// `FROM scratch` image has no resolver for it), other names are resolved by the system.
pub fn parse_http_url(url: &str) -> Result<Uri> {
    let bad = |m: &str| Error::InvalidAddress {
        addr: url.to_string(),
        message: m.to_string(),
    };
    let full = if url.contains("://") {
        url.to_string()
    } else {
        format!("http://{url}")
    };
    let uri: Uri = full.parse().map_err(|e| bad(&format!("{e}")))?;
    if uri.scheme_str() != Some("http") {
        return Err(bad("only http:// is supported"));
    }
    let auth = uri.authority().ok_or_else(|| bad("no host"))?;
    if auth.host().is_empty() {
        return Err(bad("no host"));
    }
    // `http::Uri` takes any text after the last colon as a port: it must be a number.
    if auth.as_str().len() > auth.host().len() && auth.port_u16().is_none() {
        return Err(bad("bad port"));
    }
    if auth.host().eq_ignore_ascii_case("localhost") {
        let port = auth.port_u16().map_or(String::new(), |p| format!(":{p}"));
        let pq = uri.path_and_query().map_or("/", |p| p.as_str());
        return format!("http://127.0.0.1{port}{pq}")
            .parse()
            .map_err(|e| bad(&format!("{e}")));
    }
    Ok(uri)
}

impl RestClient {
    /// A client for `addr` (`http://host:port` or `host:port`; a path is ignored), 10 s connect timeout, 120 s
    /// per-request timeout, no API key.
    pub fn new(addr: &str) -> Result<RestClient> {
        let uri = parse_http_url(addr)?;
        let auth = uri.authority().map(|a| a.as_str()).unwrap_or_default();
        let mut conn = HttpConnector::new();
        conn.set_nodelay(true);
        conn.set_connect_timeout(Some(Duration::from_secs(10)));
        Ok(RestClient {
            pool: Pool::builder(TokioExecutor::new()).build(conn),
            base: format!("http://{auth}"),
            api_key: None,
            timeout: Duration::from_secs(120),
        })
    }

    /// Sends `Authorization: Bearer KEY` with every request.
    pub fn api_key(mut self, key: Option<String>) -> Result<RestClient> {
        self.api_key = match key {
            None => None,
            Some(k) => Some(HeaderValue::from_str(&format!("Bearer {k}")).map_err(|_| {
                Error::InvalidInput("the API key is not a valid header value".into())
            })?),
        };
        Ok(self)
    }

    /// Per-request timeout (connecting, sending and reading the whole answer).
    pub fn timeout(mut self, d: Duration) -> RestClient {
        self.timeout = d;
        self
    }

    /// `http://host:port`.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Sends one request: `body` as it is (with `content_type` when given; `Content-Length` is set), `headers`
    /// after the usual ones. Returns the answer whatever its status; errors are transport failures only.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
        content_type: Option<&str>,
        headers: &[(&str, &str)],
    ) -> Result<RestResponse> {
        let fail = |message: String| Error::Http {
            addr: self.base.clone(),
            message,
        };
        let mut req = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        if let Some(ct) = content_type {
            req = req.header(CONTENT_TYPE, ct);
        }
        if let Some(k) = &self.api_key {
            req = req.header(AUTHORIZATION, k.clone());
        }
        for (k, v) in headers {
            let k = HeaderName::from_bytes(k.as_bytes())
                .map_err(|e| Error::InvalidInput(format!("header name {k:?}: {e}")))?;
            let v = HeaderValue::from_str(v)
                .map_err(|e| Error::InvalidInput(format!("header value {v:?}: {e}")))?;
            req = req.header(k, v);
        }
        let req = req
            .body(Full::new(body.unwrap_or_default()))
            .map_err(|e| Error::InvalidInput(format!("request: {e}")))?;
        let exchange = async {
            let resp = self
                .pool
                .request(req)
                .await
                .map_err(|e| fail(error_chain(&e)))?;
            let (parts, body) = resp.into_parts();
            let body = Limited::new(body, MAX_RESPONSE_BYTES)
                .collect()
                .await
                .map_err(|e| fail(format!("reading the answer: {e}")))?
                .to_bytes();
            Ok(RestResponse {
                status: parts.status.as_u16(),
                headers: parts.headers,
                body,
            })
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| Error::Timeout(format!("no answer within {:?}", self.timeout)))?
    }

    /// Sends `body` as JSON (when given); a 2xx answer's JSON body, or the matching [`Error`].
    pub async fn call(&self, method: Method, path: &str, body: Option<&Value>) -> Result<Value> {
        let bytes = body.map(|b| Bytes::from(b.to_string()));
        let ct = body.map(|_| "application/json");
        self.send(method, path, bytes, ct, &[]).await?.into_result()
    }

    /// A collection's description (JSON), or `None` when it does not exist.
    pub async fn collection(&self, name: &str) -> Result<Option<Value>> {
        match self
            .call(Method::GET, &format!("/v1/collections/{name}"), None)
            .await
        {
            Ok(v) => Ok(Some(v)),
            Err(Error::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Creates a collection with the server's default parameters.
    pub async fn create_collection(&self, name: &str, dimension: u32) -> Result<Value> {
        let body = json!({"name": name, "dimension": dimension});
        self.call(Method::POST, "/v1/collections", Some(&body))
            .await
    }

    /// Upserts a batch (durable when this returns); the number of documents written.
    pub async fn upsert(&self, collection: &str, documents: Vec<Document>) -> Result<u64> {
        let docs = documents
            .into_iter()
            .map(|d| {
                let dim = d.vectors.dim().max(1);
                let data = d.vectors.to_f32().ok_or_else(|| {
                    Error::InvalidInput(format!("document {:?}: unknown vector encoding", d.id))
                })?;
                let mut v = json!({"id": d.id, "tokens": data.chunks(dim).collect::<Vec<_>>()});
                if let Some(m) = d.metadata {
                    v["metadata"] = m;
                }
                Ok(v)
            })
            .collect::<Result<Vec<Value>>>()?;
        let v = self
            .call(
                Method::POST,
                &format!("/v1/collections/{collection}/documents"),
                Some(&json!({ "documents": docs })),
            )
            .await?;
        Ok(v["upserted"].as_u64().unwrap_or(0))
    }

    /// The ids among `ids` that the collection does not hold.
    pub async fn missing(&self, collection: &str, ids: Vec<String>) -> Result<Vec<String>> {
        let v = self
            .call(
                Method::POST,
                &format!("/v1/collections/{collection}/documents/get"),
                Some(&json!({"ids": ids, "with_tokens": false})),
            )
            .await?;
        Ok(v["missing"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Flushes the collection's write-ahead log into a shard; its description.
    pub async fn flush(&self, collection: &str) -> Result<Value> {
        self.call(
            Method::POST,
            &format!("/v1/collections/{collection}/flush"),
            None,
        )
        .await
    }

    /// Merges the collection's shards; its description.
    pub async fn compact(&self, collection: &str) -> Result<Value> {
        self.call(
            Method::POST,
            &format!("/v1/collections/{collection}/compact"),
            None,
        )
        .await
    }
}

/// An error and its sources on one line (hyper-util's errors say little at the top level).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_http_urls() {
        let u = parse_http_url("http://127.0.0.1:8080/readyz").unwrap();
        assert_eq!(
            (u.host(), u.port_u16(), u.path()),
            (Some("127.0.0.1"), Some(8080), "/readyz")
        );
        let u = parse_http_url("localhost:9").unwrap();
        assert_eq!(
            (u.host(), u.port_u16(), u.path()),
            (Some("127.0.0.1"), Some(9), "/")
        );
        let u = parse_http_url("http://[::1]:9/x").unwrap();
        assert_eq!((u.host(), u.port_u16()), (Some("[::1]"), Some(9)));
        assert!(parse_http_url("https://x/").is_err());
        assert!(parse_http_url("http://x:y/").is_err());
    }
}
