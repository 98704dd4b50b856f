//! What the end-to-end test files share: demo documents as protobuf and JSON, a keyed gRPC client, the engine's
//! in-process answers to compare with, REST and gRPC search helpers, and (for the tests in cli/tests that run
//! the `chamfer` binary) free ports, a child `chamfer serve` killed on drop, and a run of the binary.
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use chamfer_index::search::{SearchParams, Searcher};
use chamfer_index::shard::{Coding, IndexParams, Shard, ShardDoc};
use chamfer_index::tokens::TokenMatrix;
use chamfer_proto::v1 as pb;
use chamfer_server::serve::Server;
use pb::collections_client::CollectionsClient;
use pb::documents_client::DocumentsClient;
use pb::search_client::SearchClient;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::fixtures::{demo_dataset, f16_tokens, grpc_channel};
use crate::http::Http;

/// `cp.1#2` -> {"page": "cp", "section": "1", "n": 2}
pub fn metadata(id: &str) -> Value {
    let (name, n) = id.split_once('#').unwrap_or((id, "0"));
    let (page, section) = name.rsplit_once('.').unwrap_or((name, ""));
    json!({"page": page, "section": section, "n": n.parse::<i64>().unwrap_or(0)})
}

pub fn rows(data: &[f32], dim: usize) -> Vec<Vec<f32>> {
    data.chunks(dim).map(<[f32]>::to_vec).collect()
}

pub fn pb_doc(i: usize) -> pb::Document {
    let ds = demo_dataset();
    pb::Document {
        id: ds.doc_id(i).to_string(),
        tokens: Some(f16_tokens(ds.doc_tokens(i), ds.dim())),
        metadata_json: metadata(ds.doc_id(i)).to_string(),
    }
}

pub fn json_doc(i: usize) -> Value {
    let ds = demo_dataset();
    json!({"id": ds.doc_id(i), "tokens": rows(ds.doc_tokens(i), ds.dim()), "metadata": metadata(ds.doc_id(i))})
}

/// Adds the API key (if any) to every gRPC call.
#[derive(Clone)]
pub struct Key(pub Option<String>);

impl tonic::service::Interceptor for Key {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(k) = &self.0 {
            req.metadata_mut()
                .insert("authorization", format!("Bearer {k}").parse().unwrap());
        }
        Ok(req)
    }
}

pub type Svc = InterceptedService<Channel, Key>;

pub struct Grpc {
    pub coll: CollectionsClient<Svc>,
    pub docs: DocumentsClient<Svc>,
    pub search: SearchClient<Svc>,
}

pub async fn grpc(server: &Server, key: Option<&str>) -> Grpc {
    let ch = grpc_channel(server).await;
    let k = Key(key.map(String::from));
    Grpc {
        coll: CollectionsClient::with_interceptor(ch.clone(), k.clone()),
        docs: DocumentsClient::with_interceptor(ch.clone(), k.clone()),
        search: SearchClient::with_interceptor(ch, k),
    }
}

/// The engine's own answer for the first `n_docs` documents, in process: one in-memory shard per `segment`
/// documents (the server builds one per acknowledged batch; each shard has its own seeded token codebook, so
/// the approximate stage depends on the segmentation, and a like-for-like comparison must mirror it).
pub fn engine_results(
    n_docs: usize,
    segment: usize,
    coding: Coding<'_>,
    params: &SearchParams,
    queries: &[usize],
) -> Vec<Vec<(String, f32)>> {
    let ds = demo_dataset();
    let ip = IndexParams::new(ds.dim());
    let shards: Vec<Arc<Shard>> = (0..n_docs)
        .collect::<Vec<_>>()
        .chunks(segment)
        .map(|c| {
            let docs: Vec<ShardDoc> = c
                .iter()
                .map(|&i| ShardDoc {
                    id: ds.doc_id(i),
                    tokens: TokenMatrix::new(ds.doc_tokens(i), ds.dim(), "document").unwrap(),
                    payload: b"",
                })
                .collect();
            Arc::new(Shard::build_in_memory_coded(&ip, &docs, coding).unwrap())
        })
        .collect();
    let searcher = Searcher::new(ip, shards.clone()).unwrap();
    queries
        .iter()
        .map(|&q| {
            let m = TokenMatrix::new(ds.query_tokens(q), ds.dim(), "query").unwrap();
            searcher
                .search(m, params, None)
                .unwrap()
                .into_iter()
                .map(|h| (shards[h.shard].id(h.doc).to_string(), h.score))
                .collect()
        })
        .collect()
}

pub fn pb_search(collection: &str, q: usize, k: u32, rerank: Option<u32>) -> pb::SearchRequest {
    let ds = demo_dataset();
    pb::SearchRequest {
        collection: collection.into(),
        query: Some(f16_tokens(ds.query_tokens(q), ds.dim())),
        k,
        rerank,
        ..Default::default()
    }
}

pub async fn grpc_hits(g: &mut Grpc, req: pb::SearchRequest) -> Vec<(String, f32)> {
    g.search
        .search(req)
        .await
        .unwrap()
        .into_inner()
        .hits
        .into_iter()
        .map(|h| (h.id, h.score))
        .collect()
}

pub async fn rest_hits(h: &Http, collection: &str, body: Value) -> Vec<(String, f32)> {
    let v = h
        .ok(
            "POST",
            &format!("/v1/collections/{collection}/search"),
            Some(&body),
        )
        .await;
    v["hits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h["id"].as_str().unwrap().to_string(),
                h["score"].as_f64().unwrap() as f32,
            )
        })
        .collect()
}

pub fn assert_same(a: &[(String, f32)], b: &[(String, f32)], what: &str) {
    let ids = |x: &[(String, f32)]| x.iter().map(|h| h.0.clone()).collect::<Vec<_>>();
    assert_eq!(ids(a), ids(b), "{what}: different ids");
    for (x, y) in a.iter().zip(b) {
        assert!(
            (x.1 - y.1).abs() <= 1e-5,
            "{what}: score of {} differs: {} vs {}",
            x.0,
            x.1,
            y.1
        );
    }
}

pub async fn create_both(g: &mut Grpc, h: &Http, grpc_name: &str, rest_name: &str) {
    let dim = demo_dataset().dim() as u32;
    g.coll
        .create(pb::CreateCollectionRequest {
            name: grpc_name.into(),
            dimension: dim,
            ..Default::default()
        })
        .await
        .unwrap();
    h.ok(
        "POST",
        "/v1/collections",
        Some(&json!({"name": rest_name, "dimension": dim})),
    )
    .await;
}

pub async fn ingest_grpc_bulk(g: &mut Grpc, name: &str, n: usize, batch: usize) {
    let msgs: Vec<pb::UpsertRequest> = (0..n)
        .collect::<Vec<_>>()
        .chunks(batch)
        .map(|c| pb::UpsertRequest {
            collection: name.into(),
            documents: c.iter().map(|&i| pb_doc(i)).collect(),
        })
        .collect();
    let r = g
        .docs
        .bulk_upsert(tokio_stream::iter(msgs))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.upserted as usize, n);
}

pub async fn ingest_rest(h: &Http, name: &str, range: std::ops::Range<usize>, batch: usize) {
    for c in range.collect::<Vec<_>>().chunks(batch) {
        let body = json!({"documents": c.iter().map(|&i| json_doc(i)).collect::<Vec<_>>()});
        let v = h
            .ok(
                "POST",
                &format!("/v1/collections/{name}/documents"),
                Some(&body),
            )
            .await;
        assert_eq!(v["upserted"].as_u64().unwrap() as usize, c.len());
    }
}

// ----- the `chamfer` binary as a child process -------------------------------------------------------------

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub struct Child(pub std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn spawn_chamfer(bin: &Path, dir: &Path, http: u16, grpc_port: u16) -> Child {
    let log = std::fs::File::create(dir.with_extension("log")).unwrap();
    Child(
        std::process::Command::new(bin)
            .args(["serve", "--data-dir"])
            .arg(dir)
            .args([
                "--http-addr",
                &format!("127.0.0.1:{http}"),
                "--grpc-addr",
                &format!("127.0.0.1:{grpc_port}"),
            ])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn chamfer serve"),
    )
}

pub async fn wait_healthy(http: u16) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", http)).await {
            let _ = s
                .write_all(b"GET /readyz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
                .await;
            let mut buf = Vec::new();
            let _ = s.read_to_end(&mut buf).await;
            if buf.starts_with(b"HTTP/1.1 200") {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "chamfer serve did not become healthy"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Row of document `id` in the demo set.
pub fn doc_row(id: &str) -> usize {
    static ROWS: OnceLock<std::collections::HashMap<String, usize>> = OnceLock::new();
    let ds = demo_dataset();
    ROWS.get_or_init(|| {
        (0..ds.n_docs())
            .map(|i| (ds.doc_id(i).to_string(), i))
            .collect()
    })[id]
}

/// Runs the `chamfer` binary to completion: (exit success, stdout, stderr).
pub async fn run_chamfer(bin: &Path, args: &[&str]) -> (bool, String, String) {
    let out = tokio::process::Command::new(bin)
        .args(args)
        .env_remove("CHAMFER_API_KEY")
        .env_remove("CHAMFER_ADDR")
        .kill_on_drop(true)
        .output()
        .await
        .expect("run chamfer");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
