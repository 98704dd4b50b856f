//! The soak's blocking REST calls to 127.0.0.1: `chamfer_client::RestClient` (hyper-util's client) driven by a
//! per-thread current-thread runtime, every request bounded by a timeout (connect, send and the whole answer),
//! so a killed or hung server can never block the soak.
use std::io;
use std::time::Duration;

use chamfer_client::rest::Method;
use chamfer_client::RestClient;

/// A response: status code and body bytes.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Response {
    /// The body as JSON (`Null` when it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// The `code` field of a JSON error body, if any.
    pub fn error_code(&self) -> Option<String> {
        self.json()
            .get("code")
            .and_then(|c| c.as_str())
            .map(str::to_string)
    }

    /// The body as text, cut to `max` characters (for messages).
    pub fn text(&self, max: usize) -> String {
        String::from_utf8_lossy(&self.body)
            .chars()
            .take(max)
            .collect()
    }
}

thread_local! {
    /// One small runtime per soak thread (the soak itself is synchronous).
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime");
}

/// Sends one request to `127.0.0.1:port` and reads the whole answer within `timeout`.
pub fn request(
    port: u16,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
    timeout: Duration,
) -> io::Result<Response> {
    let client = RestClient::new(&format!("127.0.0.1:{port}"))
        .map_err(io::Error::other)?
        .timeout(timeout);
    let method = Method::from_bytes(method.as_bytes()).map_err(io::Error::other)?;
    let body = body.map(bytes::Bytes::copy_from_slice);
    let ct = body.as_ref().map(|_| "application/json");
    let r = RUNTIME
        .with(|rt| {
            rt.block_on(client.send(method, path, body, ct, &[("accept", "application/json")]))
        })
        .map_err(|e| match e {
            chamfer_client::Error::Timeout(m) => io::Error::new(io::ErrorKind::TimedOut, m),
            e => io::Error::other(e),
        })?;
    Ok(Response {
        status: r.status,
        body: r.body.to_vec(),
    })
}
