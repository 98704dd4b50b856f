//! Issue 21, items 3 to 5, end to end on the real server (127.0.0.1, port 0):
//!
//! * half-sent requests (a REST head or body that never ends, an HTTP/2 preface or HEADERS frame and nothing
//!   more, a gRPC stream whose message never completes, a connection that sends nothing) are closed, or
//!   answered 408 / DEADLINE_EXCEEDED `request_timeout`, within the configured timeouts, and counted;
//! * at a small connection cap, connections that keep sending bytes (so none can be evicted) make new ones
//!   refused (a raw 503 `unavailable` with `Retry-After` on REST, a close on gRPC), hundreds more slow
//!   connections are refused and closed, and once the slow ones stop sending, new REST and gRPC clients are
//!   served by evicting them; `/metrics` counts it all;
//! * the request memory budget: with three uploads holding it, a fourth answers 429 `overloaded` with
//!   `Retry-After` (REST) or RESOURCE_EXHAUSTED with `retry-after-ms` (gRPC); concurrent uploads either
//!   succeed or are told to retry, every acknowledged one is readable, and the budget is all released;
//!
//! (The check with the `chamfer` binary, 2000 slow connections under a 1024-descriptor limit, and the
//! empty API key are in `descriptor_limit.rs`.)
//!
//! Time bounds are generous (a loaded CI machine): each asserts that something happens at all within a
//! timeout plus a few seconds, and that a timeout was not cut short. The tests take turns ([`SERIAL`]): the
//! cap test needs its slow connections to keep sending on time.
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use chamfer_proto::v1 as pb;
use chamfer_server::config::Settings;
use chamfer_server::serve::Server;
use chamfer_tests::fixtures::{f16_tokens, grpc_channel, start_server};
use chamfer_tests::http::Http;
use chamfer_tests::raw::{metric, sent};
use pb::collections_client::CollectionsClient;
use pb::documents_client::DocumentsClient;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic::Code;

/// One test at a time in this file.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Slack on top of a timeout before a test calls it missed.
const SLACK: Duration = Duration::from_secs(4);

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Reads until the server closes the connection (end of file, or a reset), for at most `limit`: how long it
/// took and what the server sent; Err(what it sent) when it is still open.
async fn until_closed(s: &mut TcpStream, limit: Duration) -> Result<(Duration, Vec<u8>), Vec<u8>> {
    let start = Instant::now();
    let deadline = tokio::time::Instant::now() + limit;
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Ok((start.elapsed(), got)),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => return Err(got),
        }
    }
}

async fn metrics(server: &Server) -> String {
    let (status, body) = Http::new(server.addrs().http, None)
        .raw("GET", "/metrics", b"", None)
        .await;
    assert_eq!(status, 200);
    String::from_utf8(body).unwrap()
}

fn elapsed_in(what: &str, took: Duration, timeout: Duration) {
    assert!(
        took >= timeout.mul_f64(0.9) && took <= timeout + SLACK,
        "{what}: closed after {took:?}, the timeout is {timeout:?}"
    );
}

// ----- half-sent requests ---------------------------------------------------------------------------------

const HEADER_MS: u64 = 1000;
const BODY_MS: u64 = 1000;
const IDLE_MS: u64 = 2000;

fn short_timeouts(s: &mut Settings) {
    s.header_read_timeout_ms = HEADER_MS;
    s.body_read_timeout_ms = BODY_MS;
    s.idle_timeout_ms = IDLE_MS;
}

/// A gRPC unary call whose message never completes, over a bare HTTP/2 connection: the answer's
/// `grpc-status` and `chamfer-error-code` and when it came, then when the server closed the connection.
async fn grpc_stalled_call(addr: std::net::SocketAddr) -> (String, String, Duration, Duration) {
    let start = Instant::now();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (client, conn) = h2::client::handshake(tcp).await.unwrap();
    let conn = tokio::spawn(conn);
    let mut client = client.ready().await.unwrap();
    let req = tonic::codegen::http::Request::builder()
        .method("POST")
        .uri(format!("http://{addr}/chamfer.v1.Documents/Upsert"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let (resp, mut send) = client.send_request(req, false).unwrap();
    // A message announced as 1000 bytes, of which 10 are sent; the stream stays open.
    let mut frame = vec![0u8];
    frame.extend_from_slice(&1000u32.to_be_bytes());
    frame.extend_from_slice(&[0u8; 10]);
    send.send_data(frame.into(), false).unwrap();
    let resp = resp.await.unwrap();
    let answered = start.elapsed();
    let h = resp.headers();
    let get = |name: &str| {
        h.get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .unwrap_or_default()
    };
    let (status, code) = (get("grpc-status"), get("chamfer-error-code"));
    drop((resp, send));
    // The connection now has no request in flight: the idle timeout closes it (the client keeps it open).
    let closed = tokio::time::timeout(Duration::from_millis(IDLE_MS) + SLACK * 2, conn).await;
    assert!(closed.is_ok(), "the idle HTTP/2 connection was not closed");
    (status, code, answered, start.elapsed() - answered)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_requests_are_closed_within_the_timeouts() {
    let _turn = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path(), short_timeouts).await;
    let (http, grpc) = (server.addrs().http, server.addrs().grpc);
    let (header, body, idle) = (
        Duration::from_millis(HEADER_MS),
        Duration::from_millis(BODY_MS),
        Duration::from_millis(IDLE_MS),
    );
    let limit = idle + SLACK * 2;
    // All at once: the test takes about the longest timeout.
    let rest_head = tokio::spawn(async move {
        let mut s = sent(
            http,
            b"POST /v1/collections/c/documents HTTP/1.1\r\nHost: x\r\nContent-Ty",
        )
        .await;
        until_closed(&mut s, limit).await
    });
    let rest_body = tokio::spawn(async move {
        let mut s = sent(
            http,
            b"POST /v1/collections/c/documents HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
              Content-Length: 100\r\n\r\n{\"a",
        )
        .await;
        until_closed(&mut s, limit).await
    });
    let rest_silent = tokio::spawn(async move {
        let mut s = TcpStream::connect(http).await.unwrap();
        until_closed(&mut s, limit).await
    });
    let rest_keep_alive = tokio::spawn(async move {
        let mut s = sent(http, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
        until_closed(&mut s, limit).await
    });
    let grpc_preface = tokio::spawn(async move {
        let mut s = sent(grpc, H2_PREFACE).await;
        until_closed(&mut s, limit).await
    });
    let grpc_head = tokio::spawn(async move {
        // The preface, empty SETTINGS, then a HEADERS frame without END_HEADERS (three indexed fields) and
        // no CONTINUATION: a request head that never ends.
        let mut bytes = H2_PREFACE.to_vec();
        bytes.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
        bytes.extend_from_slice(&[0, 0, 3, 1, 0, 0, 0, 0, 1, 0x83, 0x86, 0x84]);
        let mut s = sent(grpc, &bytes).await;
        until_closed(&mut s, limit).await
    });
    let grpc_body = tokio::spawn(grpc_stalled_call(grpc));

    let (took, _) = rest_head
        .await
        .unwrap()
        .expect("half-sent REST head still open");
    elapsed_in("REST head", took, header);
    let (took, answer) = rest_body
        .await
        .unwrap()
        .expect("half-sent REST body still open");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("\"code\":\"request_timeout\""), "{answer}");
    assert!(took >= body.mul_f64(0.9), "408 after {took:?}");
    assert!(took <= body + idle + SLACK, "closed after {took:?}");
    let (took, _) = rest_silent
        .await
        .unwrap()
        .expect("silent REST connection still open");
    elapsed_in("REST silent", took, idle);
    let (took, answer) = rest_keep_alive
        .await
        .unwrap()
        .expect("idle keep-alive connection still open");
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"));
    elapsed_in("REST keep-alive", took, idle);
    let (took, _) = grpc_preface
        .await
        .unwrap()
        .expect("HTTP/2 preface still open");
    elapsed_in("gRPC preface", took, idle);
    let (took, _) = grpc_head
        .await
        .unwrap()
        .expect("half-sent HTTP/2 head still open");
    elapsed_in("gRPC head", took, idle);
    let (status, code, answered, closed_after) = grpc_body.await.unwrap();
    assert_eq!(
        (status.as_str(), code.as_str()),
        ("4", "request_timeout"),
        "a stalled gRPC body answers DEADLINE_EXCEEDED request_timeout"
    );
    elapsed_in("gRPC body", answered, body);
    elapsed_in("gRPC idle after the answer", closed_after, idle);

    let m = metrics(&server).await;
    let timed_out = |protocol: &str, reason: &str| {
        metric(
            &m,
            &format!(
                "chamfer_connections_timed_out_total{{protocol=\"{protocol}\",reason=\"{reason}\"}}"
            ),
        )
    };
    assert!(timed_out("rest", "header") >= 1, "{m}");
    assert!(timed_out("rest", "body") >= 1, "{m}");
    assert!(timed_out("rest", "idle") >= 2, "{m}");
    assert!(timed_out("grpc", "body") >= 1, "{m}");
    assert!(timed_out("grpc", "idle") >= 3, "{m}");
    assert_eq!(
        metric(&m, "chamfer_connections_refused_total{protocol=\"rest\"}"),
        0
    );
    server.shutdown().await.unwrap();
}

// ----- many slow connections at the cap -------------------------------------------------------------------

const CAP: usize = 64;

/// A REST connection sending one byte of a never-ending header every 20 ms while `go` is true (so it is
/// never idle long enough to be evicted), then holding still. The socket, or None when the server closed it.
async fn trickle(addr: std::net::SocketAddr, go: Arc<AtomicBool>) -> Option<TcpStream> {
    let mut s = TcpStream::connect(addr).await.ok()?;
    s.write_all(b"GET /v1/collections HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .ok()?;
    while go.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(20)).await;
        s.write_all(b"a").await.ok()?;
    }
    Some(s)
}

/// Until `ok` holds for the server's connection counts (in process: the listeners may be full).
async fn wait_for_stats(
    server: &Server,
    what: &str,
    ok: impl Fn(&chamfer_server::net::NetStats) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = server.net().stats();
        if ok(&s) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: {s:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_cap_slow_connections_are_refused_then_evicted_for_new_clients() {
    let _turn = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path(), |s| {
        s.limits.max_connections = CAP;
        // Nothing times out here: what is tested is the cap, refusal and eviction.
        s.header_read_timeout_ms = 600_000;
        s.body_read_timeout_ms = 600_000;
        s.idle_timeout_ms = 600_000;
    })
    .await;
    let (http, grpc) = (server.addrs().http, server.addrs().grpc);
    {
        let client = Http::new(http, None);
        client
            .ok(
                "POST",
                "/v1/collections",
                Some(&json!({"name": "c", "dimension": 4})),
            )
            .await;
    }
    // The client's pooled connection is gone once dropped.
    wait_for_stats(&server, "the first client's connection closed", |s| {
        s.rest.active == 0
    })
    .await;

    // 1. The table fills with connections that keep sending: none can be evicted.
    let go = Arc::new(AtomicBool::new(true));
    let tricklers: Vec<_> = (0..CAP)
        .map(|_| tokio::spawn(trickle(http, go.clone())))
        .collect();
    // (The first client's connection, then the tricklers.)
    wait_for_stats(&server, "the tricklers connected", |s| {
        s.rest.accepted + s.rest.refused > CAP as u64
    })
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let before = server.net().stats();
    assert_eq!(before.rest.active, CAP as u64, "{before:?}");

    // 2. A new REST connection is refused with a raw 503 and a retry hint; a gRPC one is closed.
    let mut probe = sent(http, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let (_, answer) = until_closed(&mut probe, Duration::from_secs(10))
        .await
        .expect("a refused connection is closed");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("retry-after: 1\r\n"), "{answer}");
    assert!(answer.contains("\"code\":\"unavailable\""), "{answer}");
    assert!(answer.contains("too many connections"), "{answer}");
    let mut probe = sent(grpc, H2_PREFACE).await;
    until_closed(&mut probe, Duration::from_secs(10))
        .await
        .expect("a refused gRPC connection is closed");

    // 3. Many more slow connections than the cap (half-sent REST heads and bodies, bare HTTP/2 prefaces):
    //    every one is refused and closed.
    let more: Vec<_> = (0..300)
        .map(|i| {
            tokio::spawn(async move {
                let mut s = match i % 3 {
                    0 => {
                        sent(
                            http,
                            b"POST /v1/collections/c/documents HTTP/1.1\r\nHost: x\r\n",
                        )
                        .await
                    }
                    1 => {
                        sent(
                            http,
                            b"POST /v1/collections/c/documents HTTP/1.1\r\nHost: x\r\n\
                              Content-Length: 50\r\n\r\n{",
                        )
                        .await
                    }
                    _ => sent(grpc, H2_PREFACE).await,
                };
                until_closed(&mut s, Duration::from_secs(20)).await.is_ok()
            })
        })
        .collect();
    for t in more {
        assert!(
            t.await.unwrap(),
            "a slow connection over the cap stayed open"
        );
    }
    let s = server.net().stats();
    assert!(s.rest.refused - before.rest.refused >= 201, "{s:?}");
    assert!(s.grpc.refused - before.grpc.refused >= 101, "{s:?}");
    assert_eq!(s.rest.evicted, 0, "{s:?}");

    // 4. The slow connections stop sending: new clients evict the ones that waited longest.
    go.store(false, Ordering::Relaxed);
    let mut held = Vec::new();
    for t in tricklers {
        held.extend(t.await.unwrap());
    }
    assert_eq!(held.len(), CAP, "a trickler was closed while it sent");
    tokio::time::sleep(Duration::from_millis(400)).await;
    // Each new client keeps its connection, so the next one must evict again.
    let good = Http::new(http, None);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut attempts = 0;
    loop {
        attempts += 1;
        let (status, v) = good.call("GET", "/v1/collections", None).await;
        if status == 200 {
            assert_eq!(v["collections"][0]["name"], "c", "{v}");
            break;
        }
        assert_eq!(status, 503, "{v}");
        assert!(Instant::now() < deadline, "REST never served: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(attempts, 1, "the REST client was refused first");
    let channel = grpc_channel(&server).await;
    let list = CollectionsClient::new(channel.clone())
        .list(pb::ListCollectionsRequest {})
        .await
        .expect("a new gRPC client is served")
        .into_inner();
    assert_eq!(list.collections.len(), 1);
    let m = metrics(&server).await;
    // The evicted connections see their end: one for each new client (REST, gRPC, the scrape).
    let mut closed = 0;
    for mut s in held {
        if until_closed(&mut s, Duration::from_millis(50))
            .await
            .is_ok()
        {
            closed += 1;
        }
    }
    assert!(closed >= 3, "{closed} slow connections were closed");
    assert_eq!(metric(&m, "chamfer_connections_max"), CAP as u64);
    // Refused: the probe and 200 slow ones (REST), the probe and 100 (gRPC).
    assert!(
        metric(&m, "chamfer_connections_evicted_total{protocol=\"rest\"}") >= 3,
        "{m}"
    );
    assert!(
        metric(&m, "chamfer_connections_refused_total{protocol=\"rest\"}") >= 201,
        "{m}"
    );
    assert!(
        metric(&m, "chamfer_connections_refused_total{protocol=\"grpc\"}") >= 101,
        "{m}"
    );
    assert!(
        metric(&m, "chamfer_connections_accepted_total{protocol=\"grpc\"}") >= 1,
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            "chamfer_connection_accept_errors_total{protocol=\"rest\"}"
        ),
        0
    );
    drop((good, channel));
    server.shutdown().await.unwrap();
}

// ----- the request memory budget --------------------------------------------------------------------------

const DIM: usize = 128;
const TOKENS: usize = 2048;
const DOCS: usize = 4;

fn values(seed: usize) -> Vec<f32> {
    (0..TOKENS * DIM)
        .map(|i| ((i * 7919 + seed * 104_729) % 2001) as f32 / 1000.0 - 1.0)
        .collect()
}

fn ids(tag: &str) -> Vec<String> {
    (0..DOCS).map(|d| format!("{tag}-{d}")).collect()
}

/// A REST upsert of `DOCS` documents of `TOKENS` packed f16 tokens each (about 2.8 MB of JSON).
fn rest_upload(tag: &str) -> Vec<u8> {
    let docs: Vec<Value> = ids(tag)
        .into_iter()
        .enumerate()
        .map(|(d, id)| {
            let bytes: Vec<u8> = values(d)
                .iter()
                .flat_map(|v| half::f16::from_f32(*v).to_bits().to_le_bytes())
                .collect();
            json!({"id": id, "tokens": {"dtype": "f16", "shape": [TOKENS, DIM],
                   "data": base64::engine::general_purpose::STANDARD.encode(bytes)}})
        })
        .collect();
    serde_json::to_vec(&json!({ "documents": docs })).unwrap()
}

/// The same as a gRPC upsert (about 2 MiB).
fn grpc_upload(tag: &str) -> pb::UpsertRequest {
    pb::UpsertRequest {
        collection: "m".into(),
        documents: ids(tag)
            .into_iter()
            .enumerate()
            .map(|(d, id)| pb::Document {
                id,
                tokens: Some(f16_tokens(&values(d), DIM)),
                metadata_json: String::new(),
            })
            .collect(),
    }
}

/// The ids among `want` that the collection does not have.
async fn missing(http: &Http, want: &[String]) -> Vec<String> {
    let v = http
        .ok(
            "POST",
            "/v1/collections/m/documents/get",
            Some(&json!({ "ids": want })),
        )
        .await;
    assert_eq!(
        v["documents"].as_array().unwrap().len() + v["missing"].as_array().unwrap().len(),
        want.len()
    );
    serde_json::from_value(v["missing"].clone()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_memory_budget_refuses_what_does_not_fit_and_loses_nothing() {
    let _turn = SERIAL.lock().await;
    let body_len = rest_upload("x").len();
    // Room for three and a half bodies (4 bytes reserved per body byte).
    let per_byte = chamfer_server::config::REQUEST_MEMORY_FACTOR;
    let budget = per_byte * (3 * body_len + body_len / 2);
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path(), |s| {
        s.limits.max_request_bytes = 4 << 20;
        s.limits.request_memory_bytes = budget;
    })
    .await;
    let addr = server.addrs().http;
    let http = Http::new(addr, None);
    http.ok(
        "POST",
        "/v1/collections",
        Some(&json!({"name": "m", "dimension": DIM})),
    )
    .await;
    let mut documents = DocumentsClient::new(grpc_channel(&server).await);
    let path = "/v1/collections/m/documents";

    // 1. Three uploads hold the budget: each sent its head (Content-Length) and half its body, then waits.
    let mut holders = Vec::new();
    for h in 0..3 {
        let body = rest_upload(&format!("held{h}"));
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        let mut s = sent(addr, head.as_bytes()).await;
        s.write_all(&body[..body.len() / 2]).await.unwrap();
        holders.push((s, body));
    }
    wait_for_stats(&server, "three uploads reserved", |s| {
        s.memory_in_use >= (3 * per_byte * body_len) as u64
    })
    .await;

    // 2. A fourth does not fit: 429 overloaded with Retry-After at once (REST), RESOURCE_EXHAUSTED with
    //    retry-after-ms (gRPC, whose body has no length: refused as it arrives).
    let (status, head, body) = http
        .raw_with_head("POST", path, &rest_upload("late"), Some("application/json"))
        .await;
    let answer: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        (status, answer["code"].as_str()),
        (429, Some("overloaded")),
        "{answer}"
    );
    assert!(
        head.to_ascii_lowercase().contains("retry-after: 1"),
        "{head}"
    );
    assert!(
        answer["message"]
            .as_str()
            .unwrap()
            .contains("memory budget"),
        "{answer}"
    );
    let e = documents
        .upsert(grpc_upload("late-grpc"))
        .await
        .expect_err("the budget is full");
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(e.metadata().get("retry-after-ms").is_some(), "{e:?}");
    assert_eq!(
        e.metadata().get("chamfer-error-code").unwrap().as_bytes(),
        b"overloaded"
    );

    // 3. The held uploads finish and are acknowledged; then the refused ones go through.
    for (s, body) in &mut holders {
        s.write_all(&body[body.len() / 2..]).await.unwrap();
    }
    for (mut s, _) in holders {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&got).contains("\"sequence\"") {
            let n = tokio::time::timeout(Duration::from_secs(60), s.read(&mut buf))
                .await
                .expect("an answer")
                .unwrap();
            assert!(n > 0, "closed: {}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
        }
        assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200"));
    }
    wait_for_stats(&server, "the budget released", |s| s.memory_in_use == 0).await;
    http.ok(
        "POST",
        path,
        Some(&serde_json::from_slice(&rest_upload("late")).unwrap()),
    )
    .await;
    documents.upsert(grpc_upload("late-grpc")).await.unwrap();

    // 4. Sixteen uploads at once: each acknowledged or told to retry, nothing else; every acknowledged
    //    document readable.
    let mut tasks = Vec::new();
    for i in 0..8 {
        let tag = format!("rest{i}");
        tasks.push(tokio::spawn(async move {
            let (status, _, body) = Http::new(addr, None)
                .raw_with_head(
                    "POST",
                    "/v1/collections/m/documents",
                    &rest_upload(&tag),
                    Some("application/json"),
                )
                .await;
            match status {
                200 => Some(tag),
                429 => None,
                other => panic!("{other}: {}", String::from_utf8_lossy(&body)),
            }
        }));
        let tag = format!("grpc{i}");
        let mut client = documents.clone();
        tasks.push(tokio::spawn(async move {
            match client.upsert(grpc_upload(&tag)).await {
                Ok(_) => Some(tag),
                Err(e) if e.code() == Code::ResourceExhausted => None,
                Err(e) => panic!("{e:?}"),
            }
        }));
    }
    let mut acknowledged: Vec<String> = ["held0", "held1", "held2", "late", "late-grpc"]
        .iter()
        .flat_map(|t| ids(t))
        .collect();
    let mut refused = 0;
    for t in tasks {
        match t.await.unwrap() {
            Some(tag) => acknowledged.extend(ids(&tag)),
            None => refused += 1,
        }
    }
    eprintln!("16 concurrent uploads: {refused} told to retry");
    assert_eq!(missing(&http, &acknowledged).await, Vec::<String>::new());
    wait_for_stats(&server, "the budget released", |s| s.memory_in_use == 0).await;
    let m = metrics(&server).await;
    assert!(
        metric(
            &m,
            "chamfer_request_memory_refused_total{protocol=\"rest\"}"
        ) >= 1
    );
    assert!(
        metric(
            &m,
            "chamfer_request_memory_refused_total{protocol=\"grpc\"}"
        ) >= 1
    );
    assert_eq!(
        metric(&m, "chamfer_request_memory_limit_bytes"),
        budget as u64
    );
    server.shutdown().await.unwrap();
}
