//! Issue 7, items 6 and 7, end to end on the real server (127.0.0.1, port 0) with the bundled demo data:
//!
//! * fair scheduling: a one-query search sent beside a big exact batch finishes while the batch still runs;
//! * deadlines: a gRPC `grpc-timeout` (sent over a bare HTTP/2 connection, so no client-side timer races the
//!   server's answer), the server's `request_timeout_ms` and the REST `x-timeout-ms` header answer
//!   DEADLINE_EXCEEDED / 504 `deadline_exceeded`, and the abandoned work stops (queued queries are skipped,
//!   fewer pool tasks run than the request needed);
//! * the work budget (`limits.max_batch_query_tokens`) answers 413 / RESOURCE_EXHAUSTED before any work;
//! * bytes that are not a protobuf message answer INVALID_ARGUMENT, on a unary call and on the bulk stream.
//!
//! Every assertion is about order or counts, never about how long something took.
use std::time::Duration;

use bytes::{Buf, BufMut};
use chamfer_proto::v1 as pb;
use chamfer_server::config::Settings;
use chamfer_server::serve::Server;
use chamfer_tests::fixtures::{demo_dataset, f16_tokens, grpc_channel, start_server};
use chamfer_tests::http::Http;
use pb::collections_client::CollectionsClient;
use pb::documents_client::DocumentsClient;
use pb::search_client::SearchClient;
use prost::Message;
use serde_json::{json, Value};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::Channel;
use tonic::Code;

// ----- fixtures (small copies of e2e.rs's) ----------------------------------------------------------------

/// A query of exactly `n` tokens: the demo queries' tokens, concatenated (cycling), starting at query `j`.
fn heavy_query(j: usize, n: usize) -> Vec<f32> {
    let ds = demo_dataset();
    let mut out = Vec::with_capacity(n * ds.dim());
    let mut q = j;
    while out.len() < n * ds.dim() {
        out.extend_from_slice(ds.query_tokens(q % ds.n_queries()));
        q += 1;
    }
    out.truncate(n * ds.dim());
    out
}

/// What every server here starts with (as `start_server`'s tweak, before a test's own): one CPU thread, so the
/// order of the pool's work is observable, and a batch budget the big batches fit in.
fn one_thread(s: &mut Settings) {
    s.search_threads = 1;
    s.limits.max_batch_query_tokens = 1 << 20;
}

/// A collection `name` holding every demo document (one upsert).
async fn demo_collection(server: &Server, name: &str) {
    let ch = grpc_channel(server).await;
    let ds = demo_dataset();
    CollectionsClient::new(ch.clone())
        .create(pb::CreateCollectionRequest {
            name: name.into(),
            dimension: ds.dim() as u32,
            ..Default::default()
        })
        .await
        .unwrap();
    let documents = (0..ds.n_docs())
        .map(|i| pb::Document {
            id: ds.doc_id(i).to_string(),
            tokens: Some(f16_tokens(ds.doc_tokens(i), ds.dim())),
            metadata_json: String::new(),
        })
        .collect();
    DocumentsClient::new(ch)
        .upsert(pb::UpsertRequest {
            collection: name.into(),
            documents,
        })
        .await
        .unwrap();
}

fn pb_search(collection: &str, query: &[f32], exact: bool) -> pb::SearchRequest {
    pb::SearchRequest {
        collection: collection.into(),
        query: Some(f16_tokens(query, demo_dataset().dim())),
        k: 10,
        exact,
        ..Default::default()
    }
}

/// `n` exact searches of `tokens`-token queries: the expensive kind.
fn heavy_batch(collection: &str, n: usize, tokens: usize) -> pb::SearchBatchRequest {
    pb::SearchBatchRequest {
        collection: collection.into(),
        searches: (0..n)
            .map(|j| pb_search("", &heavy_query(j, tokens), true))
            .collect(),
    }
}

fn json_batch(n: usize, tokens: usize) -> Value {
    let dim = demo_dataset().dim();
    let searches: Vec<Value> = (0..n)
        .map(|j| {
            let rows: Vec<Vec<f32>> = heavy_query(j, tokens)
                .chunks(dim)
                .map(<[f32]>::to_vec)
                .collect();
            json!({"query": rows, "k": 10, "exact": true})
        })
        .collect();
    json!({ "searches": searches })
}

/// JSON requests to `server`, one a connection; no answer may be chunked.
fn http(server: &Server) -> Http {
    Http::new(server.addrs().http, None).unchunked()
}

/// Waits (by yielding, no timed assertion) until the pool has nothing queued and every submitted task either
/// ran or was skipped.
async fn pool_idle(server: &Server) -> chamfer_server::core::pool::PoolStats {
    loop {
        let s = server.core().pool_stats();
        if s.queued == 0 && s.executed + s.skipped == s.submitted {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

// ----- (a) fair scheduling --------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_search_beside_a_big_batch_finishes_first() {
    let dir = tempfile::tempdir().unwrap();
    // One CPU thread: without fair scheduling the single search waits for the whole batch.
    let server = start_server(dir.path(), one_thread).await;
    demo_collection(&server, "fair").await;
    let before = server.core().pool_stats();
    let n = 60;
    let ch = grpc_channel(&server).await;
    let mut batch_client = SearchClient::new(ch.clone());
    let batch = tokio::spawn(async move {
        batch_client
            .search_batch(heavy_batch("fair", n, 256))
            .await
            .map(|r| r.into_inner().results.len())
    });
    // The batch is running once the pool ran its validation task and at least one query.
    loop {
        let s = server.core().pool_stats();
        if s.executed >= before.executed + 2 {
            break;
        }
        assert!(
            !batch.is_finished(),
            "the batch ended before it was seen running"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let hits = SearchClient::new(ch)
        .search(pb_search("fair", demo_dataset().query_tokens(0), false))
        .await
        .unwrap()
        .into_inner()
        .hits;
    assert_eq!(hits.len(), 10);
    // Order, not time: the single search is answered while the batch still has queries to run.
    let s = server.core().pool_stats();
    let batch_tasks = 1 + n as u64;
    assert!(
        s.executed - before.executed < batch_tasks + 1,
        "the single search waited for the whole batch: {s:?}"
    );
    assert!(
        !batch.is_finished(),
        "the batch finished before the single search"
    );
    assert_eq!(batch.await.unwrap().unwrap(), n);
    server.shutdown().await.unwrap();
}

// ----- (b) deadlines --------------------------------------------------------------------------------------

/// One gRPC call over a bare HTTP/2 connection: `grpc-timeout` is sent as is, and nothing on the client side
/// enforces it (tonic's own channel gives up at the same instant with CANCELLED, racing the server's answer).
/// Returns the `grpc-status` and `grpc-message` (from the headers of a trailers-only answer, or the trailers).
async fn h2_call(server: &Server, path: &str, msg: &[u8], timeout: &str) -> (String, String) {
    let tcp = tokio::net::TcpStream::connect(server.addrs().grpc)
        .await
        .unwrap();
    let (client, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    let mut client = client.ready().await.unwrap();
    let req = tonic::codegen::http::Request::builder()
        .method("POST")
        .uri(format!("http://{}{path}", server.addrs().grpc))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-timeout", timeout)
        .body(())
        .unwrap();
    let (resp, mut send) = client.send_request(req, false).unwrap();
    let mut frame = Vec::with_capacity(msg.len() + 5);
    frame.push(0);
    frame.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    frame.extend_from_slice(msg);
    // The server may answer (and close the stream) before the body is sent: not a failure.
    let _ = send.send_data(frame.into(), true);
    let resp = resp.await.unwrap();
    let pick = |h: &tonic::codegen::http::HeaderMap| {
        h.get("grpc-status").map(|s| {
            let m = h
                .get("grpc-message")
                .map(|m| String::from_utf8_lossy(m.as_bytes()).replace("%20", " "))
                .unwrap_or_default();
            (String::from_utf8_lossy(s.as_bytes()).to_string(), m)
        })
    };
    if let Some(r) = pick(resp.headers()) {
        return r;
    }
    let mut body = resp.into_body();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    let trailers = body.trailers().await.unwrap().expect("trailers");
    pick(&trailers).expect("a grpc-status")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_timeout_answers_deadline_exceeded_and_stops_the_work() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path(), one_thread).await;
    demo_collection(&server, "dl").await;
    let before = pool_idle(&server).await;
    let n = 100;
    // 300 ms: the body arrives and the batch starts, then the deadline passes mid-batch (one CPU thread).
    let (status, message) = h2_call(
        &server,
        "/chamfer.v1.Search/SearchBatch",
        &heavy_batch("dl", n, 256).encode_to_vec(),
        "300m",
    )
    .await;
    assert_eq!(
        status, "4",
        "DEADLINE_EXCEEDED expected: {status} {message}"
    );
    assert!(message.contains("deadline"), "{message}");
    // A tiny deadline answers the same, even before the request body has arrived.
    let (status, message) = h2_call(
        &server,
        "/chamfer.v1.Search/SearchBatch",
        &heavy_batch("dl", n, 256).encode_to_vec(),
        "1m",
    )
    .await;
    assert_eq!(
        status, "4",
        "DEADLINE_EXCEEDED expected: {status} {message}"
    );
    // The abandoned work stops: the queries not started are skipped, fewer tasks run than the batch needed.
    let after = pool_idle(&server).await;
    let executed = after.executed - before.executed;
    assert!(
        executed < 2 * (1 + n as u64),
        "all {executed} tasks of the two batches ran: {after:?}"
    );
    assert!(
        after.skipped > before.skipped,
        "no queued query was skipped: {after:?}"
    );
    // The server still answers (and a single search with a generous deadline completes).
    let mut req = tonic::Request::new(pb_search("dl", demo_dataset().query_tokens(1), false));
    req.set_timeout(Duration::from_secs(600));
    let hits = SearchClient::new(grpc_channel(&server).await)
        .search(req)
        .await
        .unwrap()
        .into_inner()
        .hits;
    assert_eq!(hits.len(), 10);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_deadline_and_the_rest_header_answer_504() {
    let dir = tempfile::tempdir().unwrap();
    // Load with the default deadline (building 300 documents takes more than 1 ms), then restart with 1 ms.
    let server = start_server(dir.path(), one_thread).await;
    demo_collection(&server, "slow").await;
    server.shutdown().await.unwrap();
    let server = start_server(dir.path(), |s| {
        one_thread(s);
        s.request_timeout_ms = 1;
    })
    .await;
    let before = pool_idle(&server).await;
    let n = 50;
    let (status, body) = http(&server)
        .call_with_headers(
            "POST",
            "/v1/collections/slow/search/batch",
            Some(&json_batch(n, 256)),
            &[],
        )
        .await;
    assert_eq!(status, 504, "{body}");
    assert_eq!(body["code"], "deadline_exceeded", "{body}");
    assert!(body["message"].as_str().unwrap().contains("1 ms"), "{body}");
    let after = pool_idle(&server).await;
    assert!(
        after.executed - before.executed < 1 + n as u64,
        "every task of the batch ran: {after:?}"
    );
    // The pool's counters are exported.
    let (status, text) = http(&server).raw("GET", "/metrics", b"", None).await;
    assert_eq!(status, 200);
    let text = String::from_utf8(text).unwrap();
    let line = format!(
        "chamfer_cpu_tasks_total{{state=\"executed\"}} {}",
        after.executed
    );
    assert!(text.contains(&line), "{line} missing from {text}");
    server.shutdown().await.unwrap();

    // A generous server deadline, a tiny one asked for by the client.
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path(), one_thread).await;
    demo_collection(&server, "slow").await;
    let path = "/v1/collections/slow/search/batch";
    let (status, body) = http(&server)
        .call_with_headers(
            "POST",
            path,
            Some(&json_batch(n, 256)),
            &[("x-timeout-ms", "1")],
        )
        .await;
    assert_eq!(status, 504, "{body}");
    assert_eq!(body["code"], "deadline_exceeded", "{body}");
    let (status, body) = http(&server)
        .call_with_headers(
            "POST",
            path,
            Some(&json_batch(2, 8)),
            &[("x-timeout-ms", "soon")],
        )
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("malformed")),
        "{body}"
    );
    let (status, body) = http(&server)
        .call_with_headers(
            "POST",
            path,
            Some(&json_batch(2, 8)),
            &[("x-timeout-ms", "600000")],
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["results"].as_array().unwrap().len(), 2);
    server.shutdown().await.unwrap();
}

// ----- (c) the work budget --------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_work_budget_answers_413_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path(), |s| {
        one_thread(s);
        s.limits.max_query_tokens = 64;
        s.limits.max_batch_query_tokens = 100;
    })
    .await;
    demo_collection(&server, "budget").await;
    let before = pool_idle(&server).await;
    // 4 x 32 = 128 query tokens > 100, though each query is within max_query_tokens.
    let (status, body) = http(&server)
        .call_with_headers(
            "POST",
            "/v1/collections/budget/search/batch",
            Some(&json_batch(4, 32)),
            &[],
        )
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (413, Some("too_large")),
        "{body}"
    );
    assert!(body["message"].as_str().unwrap().contains("100"), "{body}");
    let err = SearchClient::new(grpc_channel(&server).await)
        .search_batch(heavy_batch("budget", 4, 32))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    // Refused before any work: nothing reached the pool.
    assert_eq!(server.core().pool_stats().submitted, before.submitted);
    // Within the budget: answered.
    let (status, body) = http(&server)
        .call_with_headers(
            "POST",
            "/v1/collections/budget/search/batch",
            Some(&json_batch(3, 32)),
            &[],
        )
        .await;
    assert_eq!(status, 200, "{body}");
    server.shutdown().await.unwrap();
}

// ----- (d) malformed protobuf -----------------------------------------------------------------------------

/// A codec that sends and receives raw message bytes, so a test can send bytes that are not a message.
#[derive(Clone, Copy, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }
    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        Ok(Some(src.copy_to_bytes(src.remaining()).to_vec()))
    }
}

/// Bytes prost cannot decode: a varint longer than 10 bytes; a length-delimited field 1 longer than the message.
const GARBAGE: [&[u8]; 2] = [&[0xff; 12], &[0x0a, 0x05, 0x01]];

async fn raw_unary(
    ch: &Channel,
    path: &'static str,
    body: Vec<u8>,
) -> Result<Vec<u8>, tonic::Status> {
    let mut g = tonic::client::Grpc::new(ch.clone());
    g.ready().await.unwrap();
    g.unary(
        tonic::Request::new(body),
        tonic::codegen::http::uri::PathAndQuery::from_static(path),
        RawCodec,
    )
    .await
    .map(|r| r.into_inner())
}

async fn raw_bulk(ch: &Channel, msgs: Vec<Vec<u8>>) -> Result<Vec<u8>, tonic::Status> {
    let mut g = tonic::client::Grpc::new(ch.clone());
    g.ready().await.unwrap();
    g.client_streaming(
        tonic::Request::new(tokio_stream::iter(msgs)),
        tonic::codegen::http::uri::PathAndQuery::from_static("/chamfer.v1.Documents/BulkUpsert"),
        RawCodec,
    )
    .await
    .map(|r| r.into_inner())
}

fn error_code(s: &tonic::Status) -> Option<&str> {
    s.metadata()
        .get("chamfer-error-code")
        .and_then(|v| v.to_str().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_messages_answer_invalid_argument() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path(), one_thread).await;
    demo_collection(&server, "pb").await;
    let ch = grpc_channel(&server).await;
    // The raw path works with valid bytes: the codes below come from the bytes, not the plumbing.
    let ok = raw_unary(
        &ch,
        "/chamfer.v1.Search/Search",
        pb_search("pb", demo_dataset().query_tokens(0), false).encode_to_vec(),
    )
    .await
    .unwrap();
    assert_eq!(pb::SearchResponse::decode(&ok[..]).unwrap().hits.len(), 10);
    for garbage in GARBAGE {
        for path in [
            "/chamfer.v1.Search/Search",
            "/chamfer.v1.Search/SearchBatch",
            "/chamfer.v1.Documents/Upsert",
            "/chamfer.v1.Collections/Create",
        ] {
            let err = raw_unary(&ch, path, garbage.to_vec()).await.unwrap_err();
            assert_eq!(
                err.code(),
                Code::InvalidArgument,
                "{path} {garbage:?}: {err:?}"
            );
            assert_eq!(error_code(&err), Some("malformed"), "{path}: {err:?}");
        }
        // Streaming: garbage as the first message, and after a valid one.
        let err = raw_bulk(&ch, vec![garbage.to_vec()]).await.unwrap_err();
        assert_eq!(
            err.code(),
            Code::InvalidArgument,
            "bulk {garbage:?}: {err:?}"
        );
        assert_eq!(error_code(&err), Some("malformed"), "bulk: {err:?}");
        let ds = demo_dataset();
        let valid = pb::UpsertRequest {
            collection: "pb".into(),
            documents: vec![pb::Document {
                id: "extra".into(),
                tokens: Some(f16_tokens(ds.doc_tokens(0), ds.dim())),
                metadata_json: String::new(),
            }],
        }
        .encode_to_vec();
        let err = raw_bulk(&ch, vec![valid.clone(), garbage.to_vec()])
            .await
            .unwrap_err();
        assert_eq!(
            err.code(),
            Code::InvalidArgument,
            "bulk, 2nd {garbage:?}: {err:?}"
        );
        // A valid stream still works.
        let ok = raw_bulk(&ch, vec![valid]).await.unwrap();
        assert_eq!(pb::UpsertResponse::decode(&ok[..]).unwrap().upserted, 1);
    }
    server.shutdown().await.unwrap();
}
