//! A minimal HTTP/1.1 client for the CLI's own needs (the REST load generator, `healthcheck`): plain TCP, one
//! keep-alive connection per caller, `Content-Length` or chunked bodies. No TLS, no redirects, no proxies:
//! enough for talking to a chamfer server, and no shell or curl needed inside a `FROM scratch` image.
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

/// `http://host:port/path` split into its parts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpUrl {
    pub host: String,
    pub port: u16,
    pub path: String,
}

impl HttpUrl {
    /// Parses `http://host[:port][/path]` (or `host:port[/path]`; port 80 by default).
    pub fn parse(url: &str) -> anyhow::Result<HttpUrl> {
        let rest = match url.split_once("://") {
            Some(("http", rest)) => rest,
            Some((scheme, _)) => bail!("{url}: only http:// is supported, not {scheme}://"),
            None => url,
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (
                h,
                p.parse::<u16>()
                    .with_context(|| format!("{url}: bad port {p:?}"))?,
            ),
            _ => (authority, 80),
        };
        if host.is_empty() {
            bail!("{url}: no host");
        }
        Ok(HttpUrl {
            host: host.trim_start_matches('[').trim_end_matches(']').into(),
            port,
            path: path.into(),
        })
    }

    /// The socket addresses (numeric hosts and `localhost` resolve without DNS).
    pub fn addrs(&self) -> anyhow::Result<Vec<SocketAddr>> {
        resolve(&self.host, self.port)
    }
}

/// Resolves `host:port`; IP literals and `localhost` never touch the system resolver (a static glibc binary in a
/// `FROM scratch` image has no NSS modules).
pub fn resolve(host: &str, port: u16) -> anyhow::Result<Vec<SocketAddr>> {
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    if host.eq_ignore_ascii_case("localhost") {
        return Ok(vec![SocketAddr::from(([127, 0, 0, 1], port))]);
    }
    let v: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve {host}"))?
        .collect();
    if v.is_empty() {
        bail!("{host} resolves to no address");
    }
    Ok(v)
}

/// `GET url` with a deadline: the status code.
pub fn get_status(url: &HttpUrl, timeout: Duration) -> anyhow::Result<u16> {
    let deadline = Instant::now() + timeout;
    let left = || {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| anyhow!("timed out after {timeout:?}"))
    };
    let mut last = None;
    let mut stream = None;
    for addr in url.addrs()? {
        match TcpStream::connect_timeout(&addr, left()?) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = Some(anyhow!(e).context(format!("cannot connect to {addr}"))),
        }
    }
    let mut s = stream.ok_or_else(|| last.unwrap_or_else(|| anyhow!("no address")))?;
    s.set_write_timeout(Some(left()?))?;
    write!(
        s,
        "GET {} HTTP/1.1\r\nHost: {}:{}\r\nUser-Agent: chamfer-healthcheck\r\nConnection: close\r\n\r\n",
        url.path, url.host, url.port
    )?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 512];
    while !buf.windows(2).any(|w| w == b"\r\n") {
        s.set_read_timeout(Some(left()?))?;
        let n = s.read(&mut chunk).context("reading the answer")?;
        if n == 0 {
            bail!("the connection closed before an HTTP status line");
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > 8192 {
            bail!("no HTTP status line in the first 8 KiB");
        }
    }
    status_of(&buf)
}

fn status_of(head: &[u8]) -> anyhow::Result<u16> {
    let line = String::from_utf8_lossy(head);
    let line = line.lines().next().unwrap_or("");
    let mut parts = line.split_whitespace();
    match (parts.next(), parts.next().map(str::parse::<u16>)) {
        (Some(v), Some(Ok(code))) if v.starts_with("HTTP/") => Ok(code),
        _ => bail!("not an HTTP status line: {line:?}"),
    }
}

/// One keep-alive HTTP/1.1 connection (async), reconnecting when the server closed it.
pub struct HttpConn {
    addr: SocketAddr,
    host: String,
    api_key: Option<String>,
    conn: Option<BufReader<tokio::net::TcpStream>>,
}

impl HttpConn {
    pub fn new(addr: SocketAddr, api_key: Option<String>) -> HttpConn {
        HttpConn {
            addr,
            host: addr.to_string(),
            api_key,
            conn: None,
        }
    }

    /// Sends one request with a JSON body (or none) and returns the status and body. Retries once on a fresh
    /// connection when a kept-alive one turns out closed.
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> anyhow::Result<(u16, Vec<u8>)> {
        let reused = self.conn.is_some();
        match self.try_request(method, path, body).await {
            Ok(r) => Ok(r),
            Err(_) if reused => {
                self.conn = None;
                self.try_request(method, path, body).await
            }
            Err(e) => Err(e),
        }
    }

    async fn try_request(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> anyhow::Result<(u16, Vec<u8>)> {
        if self.conn.is_none() {
            let s = tokio::net::TcpStream::connect(self.addr)
                .await
                .with_context(|| format!("cannot connect to {}", self.addr))?;
            s.set_nodelay(true)?;
            self.conn = Some(BufReader::new(s));
        }
        let c = self.conn.as_mut().expect("connected");
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {}\r\n", self.host);
        if let Some(k) = &self.api_key {
            head.push_str(&format!("Authorization: Bearer {k}\r\n"));
        }
        let body = body.unwrap_or(&[]);
        if !body.is_empty() || method == "POST" {
            head.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        head.push_str("\r\n");
        let mut msg = head.into_bytes();
        msg.extend_from_slice(body);
        let result = read_response(c, &msg).await;
        match result {
            Ok((status, body, keep_alive)) => {
                if !keep_alive {
                    self.conn = None;
                }
                Ok((status, body))
            }
            Err(e) => {
                self.conn = None;
                Err(e)
            }
        }
    }
}

async fn read_response(
    c: &mut BufReader<tokio::net::TcpStream>,
    msg: &[u8],
) -> anyhow::Result<(u16, Vec<u8>, bool)> {
    c.get_mut().write_all(msg).await?;
    let mut line = String::new();
    if c.read_line(&mut line).await? == 0 {
        bail!("connection closed");
    }
    let status = status_of(line.as_bytes())?;
    let (mut len, mut chunked, mut keep_alive) = (None, false, true);
    loop {
        line.clear();
        if c.read_line(&mut line).await? == 0 {
            bail!("connection closed in the headers");
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
            match k.as_str() {
                "content-length" => len = Some(v.parse::<usize>()?),
                "transfer-encoding" => chunked = v.eq_ignore_ascii_case("chunked"),
                "connection" => keep_alive = !v.eq_ignore_ascii_case("close"),
                _ => {}
            }
        }
    }
    let mut body = Vec::new();
    if chunked {
        loop {
            line.clear();
            c.read_line(&mut line).await?;
            let n = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                .context("bad chunk size")?;
            if n == 0 {
                line.clear();
                c.read_line(&mut line).await?;
                break;
            }
            let start = body.len();
            body.resize(start + n + 2, 0);
            c.read_exact(&mut body[start..]).await?;
            body.truncate(start + n);
        }
    } else if let Some(n) = len {
        body.resize(n, 0);
        c.read_exact(&mut body).await?;
    } else {
        c.read_to_end(&mut body).await?;
        keep_alive = false;
    }
    Ok((status, body, keep_alive))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        let u = HttpUrl::parse("http://127.0.0.1:8080/readyz").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("127.0.0.1", 8080, "/readyz")
        );
        let u = HttpUrl::parse("localhost").unwrap();
        assert_eq!((u.port, u.path.as_str()), (80, "/"));
        let u = HttpUrl::parse("http://[::1]:9/x").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 9));
        assert!(HttpUrl::parse("https://x/").is_err());
        assert!(HttpUrl::parse("http://x:y/").is_err());
        assert_eq!(
            status_of(b"HTTP/1.1 503 Service Unavailable\r\n").unwrap(),
            503
        );
        assert!(status_of(b"SSH-2.0\r\n").is_err());
    }
}
