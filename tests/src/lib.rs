//! End-to-end test crate (tests live in tests/); this library holds what several test files share, and the
//! reliability soak (`soak`, run by the `chamfer-soak` binary; see tests/soak/README.md).

pub mod fixtures;
pub mod soak;

/// A minimal HTTP/1.1 client for tests: one request per connection, exact bytes on the wire (so malformed
/// requests can be sent too).
pub mod http {
    use std::net::SocketAddr;

    use serde_json::Value;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Sends requests to one address, with an optional API key.
    pub struct Http {
        addr: SocketAddr,
        key: Option<String>,
        unchunked: bool,
    }

    impl Http {
        /// A client for `addr`, adding `x-api-key` when `key` is set.
        pub fn new(addr: SocketAddr, key: Option<&str>) -> Http {
            Http {
                addr,
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

        /// Sends exactly these bytes as the body; returns the status and the (de-chunked) body.
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
            let mut s = tokio::net::TcpStream::connect(self.addr).await.unwrap();
            let mut head = format!(
                "{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Length: {}\r\n",
                body.len()
            );
            if let Some(ct) = content_type {
                head.push_str(&format!("Content-Type: {ct}\r\n"));
            }
            if let Some(k) = &self.key {
                head.push_str(&format!("x-api-key: {k}\r\n"));
            }
            for (name, value) in headers {
                head.push_str(&format!("{name}: {value}\r\n"));
            }
            head.push_str("\r\n");
            // The server may answer (413) and close before reading a large body: write errors are not failures.
            let _ = s.write_all(head.as_bytes()).await;
            let _ = s.write_all(body).await;
            let mut buf = Vec::new();
            let _ = s.read_to_end(&mut buf).await;
            let split = buf
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .expect("an HTTP response");
            let head = String::from_utf8_lossy(&buf[..split]).to_string();
            let status: u16 = head.split_whitespace().nth(1).unwrap().parse().unwrap();
            let mut body = buf[split + 4..].to_vec();
            if head
                .to_ascii_lowercase()
                .contains("transfer-encoding: chunked")
            {
                assert!(!self.unchunked, "unexpected chunked answer: {head}");
                body = dechunk(&body);
            }
            (status, head, body)
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

    /// Decodes a chunked body; a truncated or malformed chunk ends it (what arrived is returned).
    pub fn dechunk(mut b: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let Some(eol) = b.windows(2).position(|w| w == b"\r\n") else {
                return out;
            };
            let Ok(n) = usize::from_str_radix(String::from_utf8_lossy(&b[..eol]).trim(), 16) else {
                return out;
            };
            let start = eol + 2;
            if n == 0 || start + n > b.len() {
                out.extend_from_slice(&b[start.min(b.len())..(start + n).min(b.len())]);
                return out;
            }
            out.extend_from_slice(&b[start..start + n]);
            b = &b[(start + n + 2).min(b.len())..];
        }
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn dechunk_handles_truncation() {
            assert_eq!(super::dechunk(b"3\r\nabc\r\n0\r\n\r\n"), b"abc");
            assert_eq!(super::dechunk(b"5\r\nab"), b"ab");
            assert_eq!(super::dechunk(b"zz\r\n"), b"");
        }
    }
}
