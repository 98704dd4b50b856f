//! End-to-end test crate (tests live in tests/); this library holds what several test files share, and the
//! reliability soak (`soak`, run by the `chamfer-soak` binary; see tests/soak/README.md).
// Tests read CHAMFER_BIN / CI from the environment; the libraries may not (clippy.toml).
#![allow(clippy::disallowed_methods)]

pub mod e2e;
pub mod fixtures;
pub mod soak;

/// Raw connections and metrics text, for the slow-client tests.
pub mod raw {
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpStream;

    /// A connection that sent `bytes` and nothing more.
    pub async fn sent(addr: std::net::SocketAddr, bytes: &[u8]) -> TcpStream {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(bytes).await.unwrap();
        s
    }

    /// The value of one series (`name{labels}`) in a metrics text.
    pub fn metric(text: &str, series: &str) -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("{series} missing from\n{text}"))
            .trim()
            .parse::<f64>()
            .unwrap() as u64
    }
}

/// The tests' REST helper over `chamfer_client::RestClient::send` (hyper-util's client): exact body bytes on the
/// wire (so malformed requests can be sent too), the status, headers and body of every answer whatever its
/// status.
pub mod http {
    use std::net::SocketAddr;

    use chamfer_client::rest::Method;
    use chamfer_client::RestClient;
    use serde_json::Value;

    /// Sends requests to one address, with an optional API key.
    pub struct Http {
        client: RestClient,
        key: Option<String>,
        unchunked: bool,
    }

    impl Http {
        /// A client for `addr`, adding `x-api-key` when `key` is set.
        pub fn new(addr: SocketAddr, key: Option<&str>) -> Http {
            Http {
                client: RestClient::new(&addr.to_string())
                    .expect("a socket address is a valid URL"),
                key: key.map(String::from),
                unchunked: false,
            }
        }

        /// This client asserts that no answer is chunked (`Transfer-Encoding: chunked`): for tests whose
        /// answers must all carry a Content-Length.
        pub fn unchunked(mut self) -> Http {
            self.unchunked = true;
            self
        }

        /// Sends exactly these bytes as the body; returns the status and the body.
        pub async fn raw(
            &self,
            method: &str,
            path: &str,
            body: &[u8],
            content_type: Option<&str>,
        ) -> (u16, Vec<u8>) {
            let (status, _, body) = self.raw_with_head(method, path, body, content_type).await;
            (status, body)
        }

        /// [`Http::raw`], also returning the response head (status line and headers) as text.
        pub async fn raw_with_head(
            &self,
            method: &str,
            path: &str,
            body: &[u8],
            content_type: Option<&str>,
        ) -> (u16, String, Vec<u8>) {
            self.raw_with_headers(method, path, body, content_type, &[])
                .await
        }

        /// [`Http::raw_with_head`], with extra request headers (name, value) after the usual ones.
        pub async fn raw_with_headers(
            &self,
            method: &str,
            path: &str,
            body: &[u8],
            content_type: Option<&str>,
            headers: &[(&str, &str)],
        ) -> (u16, String, Vec<u8>) {
            let mut all: Vec<(&str, &str)> = Vec::new();
            if let Some(k) = &self.key {
                all.push(("x-api-key", k));
            }
            all.extend_from_slice(headers);
            let method = Method::from_bytes(method.as_bytes()).expect("an HTTP method");
            // A server that refuses an oversized body answers before reading it and closes; the client can then
            // see the connection reset before it reads the answer (a race in TCP, not in chamfer). Such a send
            // is tried again, a bounded number of times; any other error, or the race every time, fails.
            let mut attempt = 0;
            let r = loop {
                attempt += 1;
                match self
                    .client
                    .send(
                        method.clone(),
                        path,
                        Some(bytes::Bytes::copy_from_slice(body)),
                        content_type,
                        &all,
                    )
                    .await
                {
                    Ok(r) => break r,
                    Err(e)
                        if attempt < 8 && {
                            let e = e.to_string();
                            e.contains("connection closed before message completed")
                                || e.contains("Broken pipe")
                                || e.contains("Connection reset")
                        } => {}
                    Err(e) => panic!("{method} {path}: {e}"),
                }
            };
            let chunked = r
                .headers
                .get("transfer-encoding")
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"chunked"));
            assert!(
                !(self.unchunked && chunked),
                "unexpected chunked answer: {}",
                r.head()
            );
            (r.status, r.head(), r.body.to_vec())
        }

        /// Sends `body` as JSON (when given); returns the status and the parsed body (Null if not JSON).
        pub async fn call(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
            self.call_with_headers(method, path, body, &[]).await
        }

        /// [`Http::call`], with extra request headers (name, value).
        pub async fn call_with_headers(
            &self,
            method: &str,
            path: &str,
            body: Option<&Value>,
            headers: &[(&str, &str)],
        ) -> (u16, Value) {
            let bytes = body
                .map(|b| serde_json::to_vec(b).unwrap())
                .unwrap_or_default();
            let (status, _, out) = self
                .raw_with_headers(
                    method,
                    path,
                    &bytes,
                    body.map(|_| "application/json"),
                    headers,
                )
                .await;
            (status, serde_json::from_slice(&out).unwrap_or(Value::Null))
        }

        /// [`Http::call`], asserting a 200 or 201.
        pub async fn ok(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
            let (status, v) = self.call(method, path, body).await;
            assert!(
                status == 200 || status == 201,
                "{method} {path}: {status} {v}"
            );
            v
        }
    }
}
