//! End-to-end tests: the real server (`chamfer_server::serve::start`, the same wiring `chamfer serve` uses) on
//! 127.0.0.1 port 0, driven over gRPC (the generated tonic clients) and REST (a minimal HTTP/1.1 client over a
//! TCP socket, so that the bytes on the wire are exactly what a test writes, malformed ones included).
//!
//! Data: the bundled demo set (`data/demo`: 300 manpages passages, 50 queries, 128-d f16 tokens), so the whole
//! binary runs in seconds. The crash test runs the `chamfer` binary as a child process and kills it with
//! SIGKILL; it needs `cargo build -p chamfer-cli --bin chamfer` first (done by `.ci/run`).
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use chamfer_index::search::{Plan, SearchParams, Searcher};
use chamfer_index::shard::{Coding, IndexParams, Shard, ShardDoc};
use chamfer_index::tokens::TokenMatrix;
use chamfer_proto::v1 as pb;
use chamfer_server::serve::Server;
use chamfer_tests::fixtures::{
    chamfer_bin_or_skip, code_of, demo_dataset, demo_dir, f16_tokens, grpc_channel, start_server,
};
use chamfer_tests::http::Http;
use pb::collections_client::CollectionsClient;
use pb::documents_client::DocumentsClient;
use pb::search_client::SearchClient;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::Code;

// ----- fixtures -------------------------------------------------------------------------------------------

/// `cp.1#2` -> {"page": "cp", "section": "1", "n": 2}
fn metadata(id: &str) -> Value {
    let (name, n) = id.split_once('#').unwrap_or((id, "0"));
    let (page, section) = name.rsplit_once('.').unwrap_or((name, ""));
    json!({"page": page, "section": section, "n": n.parse::<i64>().unwrap_or(0)})
}

fn rows(data: &[f32], dim: usize) -> Vec<Vec<f32>> {
    data.chunks(dim).map(<[f32]>::to_vec).collect()
}

fn pb_doc(i: usize) -> pb::Document {
    let ds = demo_dataset();
    pb::Document {
        id: ds.doc_id(i).to_string(),
        tokens: Some(f16_tokens(ds.doc_tokens(i), ds.dim())),
        metadata_json: metadata(ds.doc_id(i)).to_string(),
    }
}

fn json_doc(i: usize) -> Value {
    let ds = demo_dataset();
    json!({"id": ds.doc_id(i), "tokens": rows(ds.doc_tokens(i), ds.dim()), "metadata": metadata(ds.doc_id(i))})
}

/// Adds the API key (if any) to every gRPC call.
#[derive(Clone)]
struct Key(Option<String>);

impl tonic::service::Interceptor for Key {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(k) = &self.0 {
            req.metadata_mut()
                .insert("authorization", format!("Bearer {k}").parse().unwrap());
        }
        Ok(req)
    }
}

type Svc = InterceptedService<Channel, Key>;

struct Grpc {
    coll: CollectionsClient<Svc>,
    docs: DocumentsClient<Svc>,
    search: SearchClient<Svc>,
}

async fn grpc(server: &Server, key: Option<&str>) -> Grpc {
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
fn engine_results(
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

fn pb_search(collection: &str, q: usize, k: u32, rerank: Option<u32>) -> pb::SearchRequest {
    let ds = demo_dataset();
    pb::SearchRequest {
        collection: collection.into(),
        query: Some(f16_tokens(ds.query_tokens(q), ds.dim())),
        k,
        rerank,
        ..Default::default()
    }
}

async fn grpc_hits(g: &mut Grpc, req: pb::SearchRequest) -> Vec<(String, f32)> {
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

async fn rest_hits(h: &Http, collection: &str, body: Value) -> Vec<(String, f32)> {
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

fn assert_same(a: &[(String, f32)], b: &[(String, f32)], what: &str) {
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

async fn create_both(g: &mut Grpc, h: &Http, grpc_name: &str, rest_name: &str) {
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

async fn ingest_grpc_bulk(g: &mut Grpc, name: &str, n: usize, batch: usize) {
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

async fn ingest_rest(h: &Http, name: &str, range: std::ops::Range<usize>, batch: usize) {
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

// ----- tests ----------------------------------------------------------------------------------------------

/// Ingest over gRPC (bulk stream, f16 bytes) and over REST (JSON rows) into two collections; every search
/// over either protocol, on either collection, before and after flush + compaction, equals the engine's
/// in-process answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_and_rest_agree_with_the_in_process_engine() {
    let ds = demo_dataset();
    let n = ds.n_docs();
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path(), |_| {}).await;
    let (mut g, h) = (
        grpc(&server, None).await,
        Http::new(server.addrs().http, None),
    );
    create_both(&mut g, &h, "via_grpc", "via_rest").await;
    const BATCH: usize = 50;
    ingest_grpc_bulk(&mut g, "via_grpc", n, BATCH).await;
    ingest_rest(&h, "via_rest", 0..n, BATCH).await;

    let queries: Vec<usize> = (0..ds.n_queries()).step_by(2).collect();
    // The engine's default plan and a shallow re-rank.
    for round in ["memtable", "flushed+compacted"] {
        for rerank in [None, Some(40u32)] {
            let mut p = SearchParams::new(10);
            p.rerank = rerank.map(|r| r as usize);
            // Memtable: one tokens-only segment per acknowledged batch (no codebook before the first flush: searched
            // exactly). After flush + compaction: one shard coded with the collection codebook, which the server
            // trains on its own sample: the engine's reference is then the exact answer, which the default
            // re-rank depth (128 of 300) must reach; the shallow one (40) is only compared across protocols.
            let want = if round == "memtable" {
                engine_results(n, BATCH, Coding::TokensOnly, &p, &queries)
            } else if rerank.is_none() {
                let exact = SearchParams {
                    plan: Plan::Exact,
                    ..p.clone()
                };
                engine_results(n, n, Coding::Train, &exact, &queries)
            } else {
                Vec::new()
            };
            for (qi, &q) in queries.iter().enumerate() {
                let what = format!("query {q}, rerank {rerank:?}, {round}");
                let a = grpc_hits(&mut g, pb_search("via_grpc", q, 10, rerank)).await;
                let b = grpc_hits(&mut g, pb_search("via_rest", q, 10, rerank)).await;
                let mut body = json!({"query": rows(ds.query_tokens(q), ds.dim()), "k": 10});
                if let Some(r) = rerank {
                    body["rerank"] = json!(r);
                }
                let c = rest_hits(&h, "via_grpc", body.clone()).await;
                let d = rest_hits(&h, "via_rest", body).await;
                for (other, label) in [
                    (&b, "grpc on the REST collection"),
                    (&c, "REST on the gRPC collection"),
                    (&d, "REST"),
                ] {
                    assert_same(&a, other, &format!("{what}: {label}"));
                }
                if let Some(want) = want.get(qi) {
                    assert_same(&a, want, &format!("{what}: engine"));
                }
            }
        }
        if round == "memtable" {
            for name in ["via_grpc", "via_rest"] {
                g.coll
                    .flush(pb::FlushRequest { name: name.into() })
                    .await
                    .unwrap();
                let info = h
                    .ok("POST", &format!("/v1/collections/{name}/compact"), None)
                    .await;
                assert_eq!(info["stats"]["documents"].as_u64().unwrap() as usize, n);
                assert_eq!(info["stats"]["memtable_documents"], 0);
            }
        }
    }
    // Exact search equals the data set's ground truth (top 10, up to near-ties).
    for q in 0..ds.n_queries() {
        let mut req = pb_search("via_grpc", q, 10, None);
        req.exact = true;
        let got = grpc_hits(&mut g, req).await;
        let gt: Vec<&str> = ds.gt_ids(q).unwrap()[..10]
            .iter()
            .map(|&r| ds.doc_id(r as usize))
            .collect();
        let scores = ds.gt_scores(q).unwrap();
        for (i, (id, score)) in got.iter().enumerate() {
            assert!(
                id == gt[i] || (score - scores[i]).abs() < 1e-4,
                "query {q} rank {i}: {id} vs {}",
                gt[i]
            );
        }
    }
    // Get returns the stored tokens and metadata over both protocols.
    let got = g
        .docs
        .get(pb::GetRequest {
            collection: "via_rest".into(),
            ids: vec![ds.doc_id(3).into(), "nope".into()],
            with_tokens: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.missing, vec!["nope".to_string()]);
    let t = got.documents[0].tokens.as_ref().unwrap();
    assert_eq!(t.n_tokens as usize * ds.dim(), ds.doc_tokens(3).len());
    assert_eq!(
        serde_json::from_str::<Value>(&got.documents[0].metadata_json).unwrap(),
        metadata(ds.doc_id(3))
    );
    let one = h
        .ok(
            "GET",
            &format!(
                "/v1/collections/via_grpc/documents/{}",
                ds.doc_id(3).replace('#', "%23")
            ),
            None,
        )
        .await;
    assert_eq!(one["metadata"], metadata(ds.doc_id(3)));
    assert_eq!(
        one["tokens"].as_array().unwrap().len() * ds.dim(),
        ds.doc_tokens(3).len()
    );
    // Operations endpoints.
    let metrics = String::from_utf8(h.raw("GET", "/metrics", b"", None).await.1).unwrap();
    for needle in [
        "chamfer_requests_total{op=\"search\",protocol=\"grpc\",code=\"ok\"}",
        "chamfer_request_duration_seconds_bucket",
        "chamfer_documents{collection=\"via_rest\"} 300",
        "chamfer_wal_bytes",
    ] {
        assert!(metrics.contains(needle), "metrics lack {needle}");
    }
    let openapi = h.ok("GET", "/openapi.json", None).await;
    assert!(openapi["paths"]["/v1/collections/{name}/search"]["post"].is_object());
    let list = g
        .coll
        .list(pb::ListCollectionsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.collections.len(), 2);
    server.shutdown().await.unwrap();
}

fn matching(ids: &[(String, f32)], f: impl Fn(&Value) -> bool) -> bool {
    ids.iter().all(|(id, _)| f(&metadata(id)))
}

/// Deletes and overwrites never come back (memtable, after flush, compaction and restart); filters return k
/// results that all match.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletes_never_come_back_and_filters_return_k_matches() {
    let ds = demo_dataset();
    let n = ds.n_docs();
    let dir = tempfile::tempdir().unwrap();
    let mut server = start_server(dir.path(), |_| {}).await;
    let (mut g, mut h) = (
        grpc(&server, None).await,
        Http::new(server.addrs().http, None),
    );
    let dim = ds.dim() as u32;
    g.coll
        .create(pb::CreateCollectionRequest {
            name: "c".into(),
            dimension: dim,
            ..Default::default()
        })
        .await
        .unwrap();
    for c in (0..n).collect::<Vec<_>>().chunks(50) {
        g.docs
            .upsert(pb::UpsertRequest {
                collection: "c".into(),
                documents: c.iter().map(|&i| pb_doc(i)).collect(),
            })
            .await
            .unwrap();
    }
    // Delete every third document: half over gRPC, half over REST.
    let deleted: Vec<String> = (0..n)
        .step_by(3)
        .map(|i| ds.doc_id(i).to_string())
        .collect();
    let (a, b) = deleted.split_at(deleted.len() / 2);
    let r = g
        .docs
        .delete(pb::DeleteRequest {
            collection: "c".into(),
            ids: a.to_vec(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.deleted as usize, a.len());
    let v = h
        .ok(
            "POST",
            "/v1/collections/c/documents/delete",
            Some(&json!({"ids": b})),
        )
        .await;
    assert_eq!(v["deleted"].as_u64().unwrap() as usize, b.len());
    let live = n - deleted.len();

    for phase in ["memtable", "flushed", "compacted", "restarted"] {
        match phase {
            "flushed" => drop(
                g.coll
                    .flush(pb::FlushRequest { name: "c".into() })
                    .await
                    .unwrap(),
            ),
            "compacted" => drop(
                g.coll
                    .compact(pb::CompactRequest { name: "c".into() })
                    .await
                    .unwrap(),
            ),
            "restarted" => {
                server.shutdown().await.unwrap();
                server = start_server(dir.path(), |_| {}).await;
                g = grpc(&server, None).await;
                h = Http::new(server.addrs().http, None);
            }
            _ => {}
        }
        let info = g
            .coll
            .describe(pb::DescribeCollectionRequest { name: "c".into() })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(info.stats.unwrap().documents as usize, live, "{phase}");
        for q in (0..ds.n_queries()).step_by(5) {
            // k larger than what is left: exactly the live documents come back, none deleted.
            let hits = grpc_hits(&mut g, pb_search("c", q, (n - 10) as u32, None)).await;
            assert_eq!(hits.len(), live, "{phase}: query {q}");
            assert!(
                hits.iter().all(|(id, _)| !deleted.contains(id)),
                "{phase}: a deleted document came back"
            );
            let hits = grpc_hits(&mut g, pb_search("c", q, 10, Some(30))).await;
            assert_eq!(hits.len(), 10);
            assert!(
                hits.iter().all(|(id, _)| !deleted.contains(id)),
                "{phase}: a deleted document came back (FDE scan)"
            );
        }
        // Filters: equality, membership, id allow-list; k results, all matching.
        let q = rows(ds.query_tokens(1), ds.dim());
        let eq = rest_hits(
            &h,
            "c",
            json!({"query": q, "k": 10, "filter": {"must": [{"key": "section", "equals": "1"}]}}),
        )
        .await;
        assert_eq!(eq.len(), 10);
        assert!(matching(&eq, |m| m["section"] == "1"));
        let mut req = pb_search("c", 1, 10, Some(20));
        req.filter = Some(pb::Filter {
            must: vec![pb::FieldCondition {
                key: "section".into(),
                any_of: ["5", "8"]
                    .iter()
                    .map(|s| pb::Value {
                        kind: Some(pb::value::Kind::StringValue(s.to_string())),
                    })
                    .collect(),
                equals: None,
            }],
            ids: vec![],
        });
        let member = grpc_hits(&mut g, req).await;
        let n_58 = (0..n)
            .filter(|&i| {
                !deleted.contains(&ds.doc_id(i).to_string())
                    && ["5", "8"].contains(&metadata(ds.doc_id(i))["section"].as_str().unwrap())
            })
            .count();
        assert_eq!(member.len(), n_58.min(10), "{phase}");
        assert!(matching(&member, |m| m["section"] == "5" || m["section"] == "8"));
        let allow: Vec<String> = (1..n)
            .step_by(37)
            .map(|i| ds.doc_id(i).to_string())
            .collect();
        let live_allowed: Vec<&String> = allow.iter().filter(|id| !deleted.contains(id)).collect();
        let by_id = rest_hits(
            &h,
            "c",
            json!({"query": q, "k": 10, "filter": {"ids": allow}}),
        )
        .await;
        assert_eq!(by_id.len(), live_allowed.len().min(10));
        assert!(by_id.iter().all(|(id, _)| live_allowed.contains(&id)));
        // Overwrite one document with another's tokens: one copy, new metadata.
        let mut d = pb_doc(2);
        d.id = ds.doc_id(1).to_string();
        d.metadata_json = json!({"section": "overwritten", "phase": phase}).to_string();
        g.docs
            .upsert(pb::UpsertRequest {
                collection: "c".into(),
                documents: vec![d],
            })
            .await
            .unwrap();
        let hits = rest_hits(
            &h,
            "c",
            json!({"query": q, "k": 300, "with_metadata": true}),
        )
        .await;
        assert_eq!(hits.iter().filter(|(id, _)| id == ds.doc_id(1)).count(), 1);
        let got = h
            .ok(
                "POST",
                "/v1/collections/c/documents/get",
                Some(&json!({"ids": [ds.doc_id(1)]})),
            )
            .await;
        assert_eq!(got["documents"][0]["metadata"]["phase"], phase);
    }
    server.shutdown().await.unwrap();
}

/// Every bad input of the issue, over both protocols, with the exact status codes; the server keeps serving
/// and nothing stored is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_matrix_over_both_protocols() {
    let ds = demo_dataset();
    let dim = ds.dim();
    const KEY: &str = "test-key-0123456789";
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path(), |s| {
        s.api_key = Some(KEY.into());
        s.limits.max_tokens_per_doc = 200;
        s.limits.max_request_bytes = 2 << 20;
        s.limits.max_k = 100;
    })
    .await;
    let (mut g, h) = (
        grpc(&server, Some(KEY)).await,
        Http::new(server.addrs().http, Some(KEY)),
    );
    g.coll
        .create(pb::CreateCollectionRequest {
            name: "c".into(),
            dimension: dim as u32,
            ..Default::default()
        })
        .await
        .unwrap();
    h.ok(
        "POST",
        "/v1/collections/c/documents",
        Some(&json!({"documents": (0..5).map(json_doc).collect::<Vec<_>>()})),
    )
    .await;
    g.docs
        .upsert(pb::UpsertRequest {
            collection: "c".into(),
            documents: (5..20).map(pb_doc).collect(),
        })
        .await
        .unwrap();

    // Missing or wrong API key; health needs none.
    let mut anon = grpc(&server, None).await;
    assert_eq!(
        code_of(anon.coll.list(pb::ListCollectionsRequest {}).await),
        Code::Unauthenticated
    );
    assert_eq!(
        code_of(anon.search.search(pb_search("c", 0, 5, None)).await),
        Code::Unauthenticated
    );
    let mut wrong = grpc(&server, Some("wrong-key-0123456789")).await;
    assert_eq!(
        code_of(
            wrong
                .docs
                .upsert(pb::UpsertRequest {
                    collection: "c".into(),
                    documents: vec![pb_doc(30)]
                })
                .await
        ),
        Code::Unauthenticated
    );
    let anon_http = Http::new(server.addrs().http, None);
    let (st, v) = anon_http.call("GET", "/v1/collections", None).await;
    assert_eq!((st, v["code"].as_str()), (401, Some("unauthenticated")));
    assert_eq!(anon_http.call("GET", "/metrics", None).await.0, 401);
    assert_eq!(anon_http.call("GET", "/healthz", None).await.0, 200);
    assert_eq!(anon_http.call("GET", "/readyz", None).await.0, 200);

    // Each case: a gRPC upsert/search and the REST twin.
    let doc_with = |tokens: pb::Tokens| pb::UpsertRequest {
        collection: "c".into(),
        documents: vec![pb::Document {
            id: "bad".into(),
            tokens: Some(tokens),
            metadata_json: String::new(),
        }],
    };
    let rest_doc = |tokens: Value| json!({"documents": [{"id": "bad", "tokens": tokens}]});
    let good = ds.doc_tokens(0);
    let wrong_dim: Vec<f32> = good[..(dim - 1) * 4].to_vec();
    let mut nan = good.to_vec();
    nan[5] = f32::NAN;
    let many: Vec<f32> = (0..201).flat_map(|_| good[..dim].to_vec()).collect();

    // unknown collection
    let mut req = doc_with(f16_tokens(good, dim));
    req.collection = "nope".into();
    assert_eq!(code_of(g.docs.upsert(req).await), Code::NotFound);
    assert_eq!(
        code_of(g.search.search(pb_search("nope", 0, 5, None)).await),
        Code::NotFound
    );
    let (st, v) = h
        .call(
            "POST",
            "/v1/collections/nope/search",
            Some(&json!({"query": rows(ds.query_tokens(0), dim), "k": 5})),
        )
        .await;
    assert_eq!(
        (st, v["code"].as_str()),
        (404, Some("collection_not_found"))
    );
    assert_eq!(h.call("GET", "/v1/collections/nope", None).await.0, 404);
    // collection exists
    let dup = pb::CreateCollectionRequest {
        name: "c".into(),
        dimension: dim as u32,
        ..Default::default()
    };
    assert_eq!(code_of(g.coll.create(dup).await), Code::AlreadyExists);
    assert_eq!(
        h.call(
            "POST",
            "/v1/collections",
            Some(&json!({"name": "c", "dimension": dim}))
        )
        .await
        .0,
        409
    );
    // wrong dimension
    assert_eq!(
        code_of(
            g.docs
                .upsert(doc_with(chamfer_proto::tokens::pack_f32(
                    &wrong_dim,
                    dim - 1
                )))
                .await
        ),
        Code::InvalidArgument
    );
    let (st, v) = h
        .call(
            "POST",
            "/v1/collections/c/documents",
            Some(&rest_doc(json!(rows(&wrong_dim, dim - 1)))),
        )
        .await;
    assert_eq!((st, v["code"].as_str()), (400, Some("dimension_mismatch")));
    let mut q = pb_search("c", 0, 5, None);
    q.query = Some(chamfer_proto::tokens::pack_f32(&wrong_dim, dim - 1));
    assert_eq!(code_of(g.search.search(q).await), Code::InvalidArgument);
    // NaN / infinity (JSON cannot say NaN: an overflowing number is infinity, a NaN literal is malformed)
    assert_eq!(
        code_of(
            g.docs
                .upsert(doc_with(chamfer_proto::tokens::pack_f32(&nan, dim)))
                .await
        ),
        Code::InvalidArgument
    );
    let mut inf = rows(good, dim);
    inf[0][0] = 0.0;
    let mut body = serde_json::to_string(&rest_doc(json!(inf))).unwrap();
    body = body.replacen("[[0.0,", "[[1e39,", 1);
    let (st, out) = h
        .raw(
            "POST",
            "/v1/collections/c/documents",
            body.as_bytes(),
            Some("application/json"),
        )
        .await;
    assert_eq!(
        (
            st,
            serde_json::from_slice::<Value>(&out).unwrap()["code"].clone()
        ),
        (400, json!("non_finite"))
    );
    let nan_body = body.replacen("[[1e39,", "[[NaN,", 1);
    let (st, out) = h
        .raw(
            "POST",
            "/v1/collections/c/documents",
            nan_body.as_bytes(),
            Some("application/json"),
        )
        .await;
    assert_eq!(
        (
            st,
            serde_json::from_slice::<Value>(&out).unwrap()["code"].clone()
        ),
        (400, json!("malformed"))
    );
    // empty document
    assert_eq!(
        code_of(
            g.docs
                .upsert(doc_with(chamfer_proto::tokens::pack_f32(&[], dim)))
                .await
        ),
        Code::InvalidArgument
    );
    let (st, v) = h
        .call(
            "POST",
            "/v1/collections/c/documents",
            Some(&rest_doc(json!([]))),
        )
        .await;
    assert_eq!((st, v["code"].as_str()), (400, Some("empty")));
    // too many tokens
    assert_eq!(
        code_of(g.docs.upsert(doc_with(f16_tokens(&many, dim))).await),
        Code::ResourceExhausted
    );
    let (st, v) = h
        .call(
            "POST",
            "/v1/collections/c/documents",
            Some(&rest_doc(json!(rows(&many, dim)))),
        )
        .await;
    assert_eq!((st, v["code"].as_str()), (413, Some("too_many_tokens")));
    // k out of range
    for k in [0u32, 101] {
        assert_eq!(
            code_of(g.search.search(pb_search("c", 0, k, None)).await),
            Code::InvalidArgument,
            "k={k}"
        );
        let (st, v) = h
            .call(
                "POST",
                "/v1/collections/c/search",
                Some(&json!({"query": rows(ds.query_tokens(0), dim), "k": k})),
            )
            .await;
        assert_eq!(
            (st, v["code"].as_str()),
            (400, Some("invalid_parameter")),
            "k={k}"
        );
    }
    // duplicate ids in one batch
    let twice = pb::UpsertRequest {
        collection: "c".into(),
        documents: vec![pb_doc(40), pb_doc(40)],
    };
    assert_eq!(code_of(g.docs.upsert(twice).await), Code::InvalidArgument);
    let (st, v) = h
        .call(
            "POST",
            "/v1/collections/c/documents",
            Some(&json!({"documents": [json_doc(40), json_doc(40)]})),
        )
        .await;
    assert_eq!((st, v["code"].as_str()), (400, Some("duplicate_id")));
    // oversized request (limit 2 MiB)
    let big = pb::UpsertRequest {
        collection: "c".into(),
        documents: (100..200).map(pb_doc).collect(),
    };
    assert_eq!(code_of(g.docs.upsert(big).await), Code::ResourceExhausted);
    let big = json!({"documents": (100..140).map(json_doc).collect::<Vec<_>>()});
    let (st, v) = h
        .call("POST", "/v1/collections/c/documents", Some(&big))
        .await;
    assert_eq!((st, v["code"].as_str()), (413, Some("too_large")));
    // malformed JSON and bytes
    let (st, out) = h
        .raw(
            "POST",
            "/v1/collections/c/documents",
            b"{\"documents\": [",
            Some("application/json"),
        )
        .await;
    assert_eq!(
        (
            st,
            serde_json::from_slice::<Value>(&out).unwrap()["code"].clone()
        ),
        (400, json!("malformed"))
    );
    let (st, _) = h
        .raw(
            "POST",
            "/v1/collections/c/search",
            br#"{"query": "x", "k": 1}"#,
            Some("application/json"),
        )
        .await;
    assert_eq!(st, 400);
    let (st, _) = h
        .raw("POST", "/v1/collections/c/search", br#"{"k": 1}"#, None)
        .await;
    assert_eq!(st, 400);
    let mut short = f16_tokens(good, dim);
    short.data.pop();
    assert_eq!(
        code_of(g.docs.upsert(doc_with(short)).await),
        Code::InvalidArgument
    );
    let mut unspecified = f16_tokens(good, dim);
    unspecified.dtype = 0;
    assert_eq!(
        code_of(g.docs.upsert(doc_with(unspecified)).await),
        Code::InvalidArgument
    );
    let mut bad_meta = doc_with(f16_tokens(good, dim));
    bad_meta.documents[0].metadata_json = "{not json".into();
    assert_eq!(
        code_of(g.docs.upsert(bad_meta).await),
        Code::InvalidArgument
    );
    let (st, _) = h
        .call(
            "POST",
            "/v1/collections/c/documents",
            Some(&json!({"documents": [{"id": "x", "tokens": rows(good, dim), "metadata": [1]}]})),
        )
        .await;
    assert_eq!(st, 400);
    assert_eq!(h.call("GET", "/v1/nothing-here", None).await.0, 404);

    // Still healthy, nothing lost, nothing half-written.
    assert_eq!(h.call("GET", "/healthz", None).await.0, 200);
    let info = g
        .coll
        .describe(pb::DescribeCollectionRequest { name: "c".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.stats.unwrap().documents, 20);
    let hits = grpc_hits(&mut g, pb_search("c", 0, 5, None)).await;
    assert_eq!(hits.len(), 5);
    let mut health = tonic_health_client(&server).await;
    let r = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await;
    assert!(r.is_ok(), "gRPC health without a key: {r:?}");
    server.shutdown().await.unwrap();
}

async fn tonic_health_client(
    server: &Server,
) -> tonic_health::pb::health_client::HealthClient<Channel> {
    tonic_health::pb::health_client::HealthClient::new(grpc_channel(server).await)
}

/// Writers (gRPC and REST) and readers at once, with a tiny flush threshold so that background flushes and
/// compactions run during the test: no errors, and every document is there at the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_ingest_and_search() {
    let ds = demo_dataset();
    let n = ds.n_docs();
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path(), |s| {
        s.flush_threshold_docs = 60;
        s.compaction_max_shards = 2;
    })
    .await;
    let mut g = grpc(&server, None).await;
    g.coll
        .create(pb::CreateCollectionRequest {
            name: "c".into(),
            dimension: ds.dim() as u32,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..4usize {
        let mut g = grpc(&server, None).await;
        let h = Http::new(server.addrs().http, None);
        tasks.spawn(async move {
            let mine: Vec<usize> = (w..n).step_by(4).collect();
            for c in mine.chunks(15) {
                if w % 2 == 0 {
                    g.docs
                        .upsert(pb::UpsertRequest {
                            collection: "c".into(),
                            documents: c.iter().map(|&i| pb_doc(i)).collect(),
                        })
                        .await
                        .unwrap();
                } else {
                    let body =
                        json!({"documents": c.iter().map(|&i| json_doc(i)).collect::<Vec<_>>()});
                    h.ok("POST", "/v1/collections/c/documents", Some(&body))
                        .await;
                }
            }
        });
    }
    for r in 0..3usize {
        let mut g = grpc(&server, None).await;
        tasks.spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(20);
            let mut i = r;
            while Instant::now() < deadline {
                let hits = grpc_hits(&mut g, pb_search("c", i % 50, 10, Some(40))).await;
                assert!(hits.len() <= 10);
                let docs = g
                    .coll
                    .describe(pb::DescribeCollectionRequest { name: "c".into() })
                    .await
                    .unwrap()
                    .into_inner()
                    .stats
                    .unwrap()
                    .documents;
                if docs as usize == 300 && i > 40 {
                    break;
                }
                i += 1;
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    let info = g
        .coll
        .describe(pb::DescribeCollectionRequest { name: "c".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.stats.unwrap().documents as usize, n);
    // The segmentation left by concurrent batches and background work is not deterministic, so compare the
    // exact plan (independent of it) with the engine.
    let mut p = SearchParams::new(10);
    p.plan = Plan::Exact;
    let queries: Vec<usize> = (0..10).collect();
    let want = engine_results(n, n, Coding::Train, &p, &queries);
    for (qi, &q) in queries.iter().enumerate() {
        let mut req = pb_search("c", q, 10, None);
        req.exact = true;
        assert_same(
            &grpc_hits(&mut g, req).await,
            &want[qi],
            &format!("query {q}"),
        );
    }
    server.shutdown().await.unwrap();
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_chamfer(bin: &Path, dir: &Path, http: u16, grpc_port: u16) -> Child {
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

async fn wait_healthy(http: u16) {
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

/// SIGKILL a child `chamfer serve` in the middle of a bulk ingest, restart it on the same directory: every
/// acknowledged document is there (searchable, with its metadata and all its tokens), nothing half-written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_kill9_mid_ingest_keeps_every_acknowledged_document() {
    let Some(bin) = chamfer_bin_or_skip() else {
        return;
    };
    let ds = demo_dataset();
    let dim = ds.dim();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let (http, gport) = (free_port(), free_port());
    let mut child = spawn_chamfer(&bin, &dir, http, gport);
    wait_healthy(http).await;
    let ch = Channel::from_shared(format!("http://127.0.0.1:{gport}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut coll = CollectionsClient::new(ch.clone());
    coll.create(pb::CreateCollectionRequest {
        name: "c".into(),
        dimension: dim as u32,
        ..Default::default()
    })
    .await
    .unwrap();
    // Two writers stream small batches; the acknowledged ids are recorded as the answers arrive.
    let acked = Arc::new(std::sync::Mutex::new(Vec::<usize>::new()));
    let mut writers = Vec::new();
    for w in 0..2usize {
        let mut docs = DocumentsClient::new(ch.clone());
        let acked = acked.clone();
        writers.push(tokio::spawn(async move {
            for c in (w..ds.n_docs()).step_by(2).collect::<Vec<_>>().chunks(5) {
                let req = pb::UpsertRequest {
                    collection: "c".into(),
                    documents: c.iter().map(|&i| pb_doc(i)).collect(),
                };
                match docs.upsert(req).await {
                    Ok(_) => acked.lock().unwrap().extend_from_slice(c),
                    Err(_) => return,
                }
            }
        }));
    }
    // Kill once a good part is acknowledged, while writes are in flight.
    let deadline = Instant::now() + Duration::from_secs(60);
    while acked.lock().unwrap().len() < 120 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    child.0.kill().unwrap(); // SIGKILL
    child.0.wait().unwrap();
    for w in writers {
        let _ = w.await;
    }
    let acked: Vec<usize> = acked.lock().unwrap().clone();
    assert!(
        acked.len() >= 120 && acked.len() < ds.n_docs(),
        "killed mid-ingest ({} acknowledged)",
        acked.len()
    );

    let _child = spawn_chamfer(&bin, &dir, http, gport);
    wait_healthy(http).await;
    let ch = Channel::from_shared(format!("http://127.0.0.1:{gport}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut docs = DocumentsClient::new(ch.clone()).max_decoding_message_size(256 << 20);
    let mut search = SearchClient::new(ch.clone());
    let ids: Vec<String> = acked.iter().map(|&i| ds.doc_id(i).to_string()).collect();
    let got = docs
        .get(pb::GetRequest {
            collection: "c".into(),
            ids: ids.clone(),
            with_tokens: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        got.missing.is_empty(),
        "acknowledged documents lost: {:?}",
        got.missing
    );
    let info = CollectionsClient::new(ch)
        .describe(pb::DescribeCollectionRequest { name: "c".into() })
        .await
        .unwrap()
        .into_inner();
    let count = info.stats.unwrap().documents as usize;
    assert!(
        count >= acked.len() && count <= acked.len() + 10,
        "{count} documents for {} acknowledged (+ at most 2 in-flight batches)",
        acked.len()
    );
    for (d, &i) in got.documents.iter().zip(&acked) {
        let t = d.tokens.as_ref().unwrap();
        assert_eq!(
            t.n_tokens as usize * dim,
            ds.doc_tokens(i).len(),
            "{}: tokens half-written",
            d.id
        );
        assert_eq!(
            serde_json::from_str::<Value>(&d.metadata_json).unwrap(),
            metadata(&d.id)
        );
    }
    // Searchable: a document's own tokens as the query find it first.
    for &i in acked.iter().step_by(15) {
        let req = pb::SearchRequest {
            collection: "c".into(),
            query: Some(f16_tokens(ds.doc_tokens(i), dim)),
            k: 1,
            exact: true,
            ..Default::default()
        };
        let hits = search.search(req).await.unwrap().into_inner().hits;
        assert_eq!(hits[0].id, ds.doc_id(i));
    }
}

// ----- the client, the CLI's client verbs and the load generator ------------------------------------------

/// Row of document `id` in the demo set.
fn doc_row(id: &str) -> usize {
    static ROWS: OnceLock<std::collections::HashMap<String, usize>> = OnceLock::new();
    let ds = demo_dataset();
    ROWS.get_or_init(|| {
        (0..ds.n_docs())
            .map(|i| (ds.doc_id(i).to_string(), i))
            .collect()
    })[id]
}

/// Runs the `chamfer` binary to completion: (exit success, stdout, stderr).
async fn run_chamfer(bin: &Path, args: &[&str]) -> (bool, String, String) {
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

/// `chamfer ingest` (data set folder and JSON Lines) uploads through the CLI; the Rust client's searches then
/// equal the engine's in-process answers; a re-run skips everything; `chamfer query` prints the same ranking.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_ingest_then_client_search_equals_the_engine() {
    let Some(bin) = chamfer_bin_or_skip() else {
        return;
    };
    let ds = demo_dataset();
    let n = ds.n_docs();
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path(), |_| {}).await;
    let addr = format!("http://{}", server.addrs().grpc);
    let demo = demo_dir();
    let demo = demo.to_str().unwrap();
    const BATCH: usize = 50;
    let args = [
        "ingest",
        "--addr",
        &addr,
        "--collection",
        "cli",
        "--data",
        demo,
        "--batch",
        "50",
    ];
    let (ok, out, err) = run_chamfer(&bin, &args).await;
    assert!(ok, "chamfer ingest failed: {out}\n{err}");
    assert!(
        out.contains(&format!(
            "ingested {n} documents into cli (0 already stored"
        )),
        "{out}"
    );

    let client = chamfer_client::Client::connect(addr.clone()).await.unwrap();
    let info = client.describe_collection("cli").await.unwrap();
    assert_eq!(info.stats.unwrap().documents as usize, n);
    let queries: Vec<usize> = (0..ds.n_queries()).step_by(3).collect();
    // Every acknowledged batch is one tokens-only memtable segment (no flush yet): mirror the CLI's batches.
    let want = engine_results(
        n,
        BATCH,
        Coding::TokensOnly,
        &SearchParams::new(10),
        &queries,
    );
    for (qi, &q) in queries.iter().enumerate() {
        let query = chamfer_client::Query::from_vectors(chamfer_client::Vectors::lossless(
            ds.query_tokens(q),
            ds.dim(),
        ))
        .k(10)
        .with_metadata();
        let hits = client.search("cli", query).await.unwrap();
        let got: Vec<(String, f32)> = hits.iter().map(|h| (h.id.clone(), h.score)).collect();
        assert_same(&got, &want[qi], &format!("query {q}: client vs engine"));
        // The CLI stored each document's text as metadata.
        let top = doc_row(&hits[0].id);
        assert_eq!(
            hits[0].metadata.as_ref().unwrap()["text"].as_str(),
            ds.doc_text(top).map(|t| &t[..t.len().min(2000)])
        );
    }

    // `chamfer query` prints the same ranking, and the ground truth when asked by data set query.
    let qid = ds.query_id(queries[1]).to_string();
    let (ok, out, err) = run_chamfer(
        &bin,
        &[
            "query",
            "--addr",
            &addr,
            "--collection",
            "cli",
            "--data",
            demo,
            "--query-id",
            &qid,
            "--format",
            "json",
        ],
    )
    .await;
    assert!(ok, "chamfer query failed: {err}");
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    let ids: Vec<&str> = v["hits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["id"].as_str().unwrap())
        .collect();
    let want_ids: Vec<&str> = want[1].iter().map(|h| h.0.as_str()).collect();
    assert_eq!(ids, want_ids);
    let gt0 = ds.doc_id(ds.gt_ids(queries[1]).unwrap()[0] as usize);
    assert_eq!(v["ground_truth"][0], gt0);

    // A re-run is cheap: everything is already stored, nothing is uploaded.
    let (ok, out, err) = run_chamfer(&bin, &args).await;
    assert!(ok, "{err}");
    assert!(
        out.contains(&format!(
            "ingested 0 documents into cli ({n} already stored"
        )),
        "{out}"
    );

    // JSON Lines with metadata, then a filtered search through the CLI.
    let jsonl = dir.path().join("docs.jsonl");
    let lines: Vec<String> = (0..3)
        .map(|i| {
            json!({"id": ds.doc_id(i), "vectors": rows(ds.doc_tokens(i), ds.dim()), "metadata": {"n": i, "tag": if i == 1 { "one" } else { "other" }}})
                .to_string()
        })
        .collect();
    std::fs::write(&jsonl, lines.join("\n")).unwrap();
    let (ok, out, err) = run_chamfer(
        &bin,
        &[
            "ingest",
            "--addr",
            &addr,
            "--jsonl",
            jsonl.to_str().unwrap(),
        ],
    )
    .await;
    assert!(ok, "{out}\n{err}");
    let (docs, missing) = client
        .get("docs", [ds.doc_id(0), ds.doc_id(2)], false)
        .await
        .unwrap();
    assert!(missing.is_empty());
    assert_eq!(docs[1].metadata.as_ref().unwrap()["n"], 2);
    let vecs = dir.path().join("q.json");
    std::fs::write(&vecs, json!(rows(ds.doc_tokens(0), ds.dim())).to_string()).unwrap();
    let (ok, out, err) = run_chamfer(
        &bin,
        &[
            "query",
            "--addr",
            &addr,
            "--collection",
            "docs",
            "--vectors",
            vecs.to_str().unwrap(),
            "--filter",
            "tag=one",
            "--format",
            "ids",
        ],
    )
    .await;
    assert!(ok, "{err}");
    assert_eq!(out.trim(), ds.doc_id(1));

    // Collections verbs.
    let (ok, out, _) = run_chamfer(&bin, &["collections", "--addr", &addr, "list"]).await;
    assert!(ok && out.contains("cli") && out.contains("docs"), "{out}");
    let (ok, _, _) = run_chamfer(&bin, &["collections", "--addr", &addr, "drop", "docs"]).await;
    assert!(ok);
    let (ok, _, err) =
        run_chamfer(&bin, &["collections", "--addr", &addr, "describe", "docs"]).await;
    assert!(!ok && err.contains("not found"), "{err}");
    server.shutdown().await.unwrap();
}

/// `chamfer load --ingest` over gRPC, then over REST: no errors, every answer consistent, and recall@10 equal
/// to the in-process engine's over the same (flushed and compacted: one shard) documents.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_load_reports_the_in_process_recall() {
    let Some(bin) = chamfer_bin_or_skip() else {
        return;
    };
    let ds = demo_dataset();
    let all: Vec<usize> = (0..ds.n_queries()).collect();
    let want = engine_results(
        ds.n_docs(),
        ds.n_docs(),
        Coding::Train,
        &SearchParams::new(10),
        &all,
    );
    let recall: f64 = all
        .iter()
        .map(|&q| {
            let rows: Vec<usize> = want[q].iter().map(|h| doc_row(&h.0)).collect();
            chamfer_data::eval::recall_at_k(&rows, ds.gt_ids(q).unwrap(), 10)
        })
        .sum::<f64>()
        / all.len() as f64;
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path(), |_| {}).await;
    let demo = demo_dir();
    let grpc_addr = server.addrs().grpc.to_string();
    let http_addr = server.addrs().http.to_string();
    for (proto, addr, ingest) in [("--grpc", &grpc_addr, true), ("--http", &http_addr, false)] {
        let mut args = vec![
            "load",
            proto,
            addr,
            "--data",
            demo.to_str().unwrap(),
            "--collection",
            "load",
            "--concurrency",
            "2",
            "--duration",
            "1.5",
        ];
        if ingest {
            args.push("--ingest");
        }
        let (ok, out, err) = run_chamfer(&bin, &args).await;
        assert!(ok, "chamfer load {proto} failed: {err}");
        let last = out.lines().last().unwrap();
        let v: Value = serde_json::from_str(last).unwrap();
        assert_eq!(v["errors"], 0, "{proto}: {v}\n{err}");
        assert_eq!(v["inconsistent"], 0, "{proto}: {v}");
        assert!(v["requests"].as_u64().unwrap() > 0, "{v}");
        let got = v["recall_at_10"].as_f64().unwrap();
        assert!(
            (got - recall).abs() < 1e-9,
            "{proto}: recall {got} over the network, {recall} in process"
        );
        for key in ["qps", "p50_ms", "p99_ms"] {
            assert!(v[key].as_f64().unwrap() > 0.0, "{key}: {v}");
        }
    }
    // Only loopback targets.
    let (ok, _, err) = run_chamfer(
        &bin,
        &[
            "load",
            "--grpc",
            "10.0.0.1:50051",
            "--data",
            demo.to_str().unwrap(),
            "--duration",
            "1",
        ],
    )
    .await;
    assert!(!ok && err.contains("loopback"), "{err}");
    server.shutdown().await.unwrap();
}

/// `chamfer healthcheck`: exit 0 iff the URL answers 2xx in time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_healthcheck_exit_codes() {
    let Some(bin) = chamfer_bin_or_skip() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path(), |s| s.api_key = Some("k3y-k3y-k3y".into())).await;
    let http = server.addrs().http;
    let closed = free_port();
    for (url, want) in [
        (format!("http://{http}/readyz"), true),
        (format!("http://{http}/healthz"), true),
        (format!("http://{http}/nope"), false), // 401 (API key) / 404
        (format!("http://{http}/v1/collections"), false), // 401: the key is required
        (format!("http://127.0.0.1:{closed}/readyz"), false), // refused
    ] {
        let (ok, out, err) =
            run_chamfer(&bin, &["healthcheck", "--http", &url, "--timeout", "2"]).await;
        assert_eq!(ok, want, "{url}: {out} {err}");
    }
    server.shutdown().await.unwrap();
}

/// `chamfer demo --once`: loads the demo set into a fresh data dir, answers a query (top hit = ground truth),
/// prints how to query it; a second run finds the collection and does not load it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_demo_once_loads_and_answers() {
    let Some(bin) = chamfer_bin_or_skip() else {
        return;
    };
    let ds = demo_dataset();
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let demo = demo_dir();
    let args = [
        "demo",
        "--once",
        "--data",
        demo.to_str().unwrap(),
        "--data-dir",
        data_dir.to_str().unwrap(),
        "--http-addr",
        "127.0.0.1:0",
        "--grpc-addr",
        "127.0.0.1:0",
    ];
    let (ok, out, err) = run_chamfer(&bin, &args).await;
    assert!(ok, "chamfer demo failed: {out}\n{err}");
    assert!(
        out.contains(&format!("loaded {} documents", ds.n_docs())),
        "{out}"
    );
    let gt0 = ds.doc_id(ds.gt_ids(0).unwrap()[0] as usize);
    assert!(
        out.contains(&format!("  1. {gt0} ")),
        "top hit is not {gt0}: {out}"
    );
    for needle in ["curl -s", "grpcurl -plaintext", "chamfer query"] {
        assert!(out.contains(needle), "{needle}: {out}");
    }
    let (ok, out, err) = run_chamfer(&bin, &args).await;
    assert!(ok, "{err}");
    assert!(
        out.contains(&format!(
            "collection demo is there ({} documents)",
            ds.n_docs()
        )),
        "{out}"
    );
}

// ----- packed tokens over REST ----------------------------------------------------------------------------

/// Standard base64 of f32 values, little-endian.
fn b64_f32(v: &[f32]) -> String {
    use base64::Engine as _;
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Standard base64 of f16 values, little-endian.
fn b64_f16(v: &[f32]) -> String {
    use base64::Engine as _;
    let bytes: Vec<u8> = v
        .iter()
        .flat_map(|x| half::f16::from_f32(*x).to_bits().to_le_bytes())
        .collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The tokens of `data` in one of the three REST forms.
fn tokens_as(form: &str, data: &[f32], dim: usize) -> Value {
    let shape = json!([data.len() / dim, dim]);
    match form {
        "rows" => json!(rows(data, dim)),
        "f32" => json!({"dtype": "f32", "shape": shape, "data": b64_f32(data)}),
        "f16" => json!({"dtype": "f16", "shape": shape, "data": b64_f16(data)}),
        other => panic!("{other}"),
    }
}

/// Packed tokens over REST (`{"dtype", "shape", "data"}`, f16 and f32) are the same documents and queries as
/// JSON rows: three collections ingested in the three forms answer every query form identically (the demo
/// tokens are f16 values, so nothing is rounded); packed read-back returns the stored f16 values; bad packed
/// values fail with the array form's codes, and a bad document's error names it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_packed_tokens_equal_rows() {
    use base64::Engine as _;
    let ds = demo_dataset();
    let dim = ds.dim();
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path(), |s| s.limits.max_tokens_per_doc = 200).await;
    let h = Http::new(server.addrs().http, None);
    let n = 60;
    let forms = ["rows", "f32", "f16"];
    for form in forms {
        h.ok(
            "POST",
            "/v1/collections",
            Some(&json!({"name": form, "dimension": dim})),
        )
        .await;
        for c in (0..n).collect::<Vec<_>>().chunks(20) {
            let docs: Vec<Value> = c
                .iter()
                .map(|&i| json!({"id": ds.doc_id(i), "tokens": tokens_as(form, ds.doc_tokens(i), dim)}))
                .collect();
            let v = h
                .ok(
                    "POST",
                    &format!("/v1/collections/{form}/documents"),
                    Some(&json!({ "documents": docs })),
                )
                .await;
            assert_eq!(v["upserted"].as_u64().unwrap() as usize, c.len());
        }
    }
    for q in 0..5 {
        let query = |form| json!({"query": tokens_as(form, ds.query_tokens(q), dim), "k": 10});
        let want = rest_hits(&h, "rows", query("rows")).await;
        assert_eq!(want.len(), 10);
        for coll in forms {
            for qf in forms {
                let got = rest_hits(&h, coll, query(qf)).await;
                assert_same(
                    &want,
                    &got,
                    &format!("query {q}: {qf} query on the {coll} collection"),
                );
            }
            // The batch route takes packed queries too.
            let batch = h
                .ok(
                    "POST",
                    &format!("/v1/collections/{coll}/search/batch"),
                    Some(&json!({"searches": [query("f16"), query("f32")]})),
                )
                .await;
            for r in batch["results"].as_array().unwrap() {
                assert_eq!(r["hits"][0]["id"].as_str().unwrap(), want[0].0);
            }
        }
    }
    // Read-back: packed is the stored f16 values, rows the same values as numbers.
    let id = ds.doc_id(3);
    let path_id = id.replace('#', "%23");
    let stored = ds.doc_tokens(3);
    let check_packed = |t: &Value| {
        assert_eq!(t["dtype"], "f16");
        assert_eq!(t["shape"], json!([stored.len() / dim, dim]));
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(t["data"].as_str().unwrap())
            .unwrap();
        assert_eq!(t["data"].as_str().unwrap(), b64_f16(stored));
        assert_eq!(bytes.len(), stored.len() * 2);
    };
    for coll in forms {
        let got = h
            .ok(
                "POST",
                &format!("/v1/collections/{coll}/documents/get"),
                Some(&json!({"ids": [id], "with_tokens": true, "packed": true})),
            )
            .await;
        check_packed(&got["documents"][0]["tokens"]);
        let one = h
            .ok(
                "GET",
                &format!("/v1/collections/{coll}/documents/{path_id}?packed=true"),
                None,
            )
            .await;
        check_packed(&one["tokens"]);
        let plain = h
            .ok(
                "GET",
                &format!("/v1/collections/{coll}/documents/{path_id}"),
                None,
            )
            .await;
        // JSON numbers are f32 printed shortest: compare as f32 (a Value holds f64).
        let got: Vec<Vec<f32>> = serde_json::from_value(plain["tokens"].clone()).unwrap();
        assert_eq!(got, rows(stored, dim));
    }
    // Errors: the array form's codes, with the document named.
    let hr = &h;
    let upsert = |tokens: Value| async move {
        hr.call(
            "POST",
            "/v1/collections/f32/documents",
            Some(&json!({"documents": [{"id": "bad-doc", "tokens": tokens}]})),
        )
        .await
    };
    let one_row = vec![0.5f32; dim];
    let cases: Vec<(Value, u16, &str, &str)> = vec![
        (
            json!({"dtype": "f32", "shape": [1, dim], "data": "not base64!"}),
            400,
            "malformed",
            "base64",
        ),
        (
            json!({"dtype": "f32", "shape": [1, dim], "data": b64_f32(&one_row[1..])}),
            400,
            "malformed",
            "bytes",
        ),
        (
            json!({"dtype": "f16", "shape": [2, dim], "data": b64_f16(&one_row)}),
            400,
            "malformed",
            "bytes",
        ),
        (
            json!({"dtype": "f32", "shape": [dim], "data": b64_f32(&one_row)}),
            400,
            "malformed",
            "shape",
        ),
        (
            json!({"dtype": "f32", "shape": [1, dim, 1], "data": b64_f32(&one_row)}),
            400,
            "malformed",
            "shape",
        ),
        (
            json!({"dtype": "f32", "shape": [2, dim / 2], "data": b64_f32(&one_row)}),
            400,
            "dimension_mismatch",
            "dimension",
        ),
        (
            json!({"dtype": "f32", "shape": [0, dim], "data": ""}),
            400,
            "empty",
            "no token",
        ),
        (
            json!({"dtype": "f32", "shape": [201, dim], "data": ""}),
            413,
            "too_many_tokens",
            "too many",
        ),
        (
            json!({"dtype": "f32", "shape": [1, dim], "data": b64_f32(&[vec![1e5f32], vec![0.0; dim - 1]].concat())}),
            400,
            "out_of_range",
            "65504",
        ),
        (
            json!({"dtype": "f32", "shape": [1, dim], "data": b64_f32(&[vec![f32::NAN], vec![0.0; dim - 1]].concat())}),
            400,
            "non_finite",
            "non-finite",
        ),
        (
            json!({"dtype": "f64", "shape": [1, dim], "data": ""}),
            400,
            "malformed",
            "f64",
        ),
        (
            json!([one_row.clone(), vec![0.5f32; dim - 1]]),
            400,
            "dimension_mismatch",
            "token 1 has 127 values, expected 128",
        ),
    ];
    for (tokens, status, code, needle) in cases {
        let (st, v) = upsert(tokens.clone()).await;
        assert_eq!(
            (st, v["code"].as_str()),
            (status, Some(code)),
            "{tokens}: {v}"
        );
        let msg = v["message"].as_str().unwrap();
        assert!(msg.contains(needle), "{tokens}: {msg}");
        // (An unknown dtype fails to parse at all: the message names the JSON position instead.)
        if needle != "f64" {
            assert!(msg.contains("document \"bad-doc\""), "{tokens}: {msg}");
        }
    }
    // The exact message of the issue's example.
    let (_, v) = upsert(json!([
        one_row.clone(),
        one_row.clone(),
        one_row.clone(),
        vec![0.0f32; dim - 1]
    ]))
    .await;
    assert_eq!(
        v["message"],
        format!(
            "document \"bad-doc\": token 3 has {} values, expected {dim}",
            dim - 1
        )
    );
    // Queries: the same checks.
    let (st, v) = h
        .call(
            "POST",
            "/v1/collections/f32/search",
            Some(&json!({"query": {"dtype": "f16", "shape": [1, dim], "data": "%%%"}, "k": 1})),
        )
        .await;
    assert_eq!((st, v["code"].as_str()), (400, Some("malformed")), "{v}");
    let (st, v) = h
        .call(
            "POST",
            "/v1/collections/f32/search",
            Some(&json!({"query": {"dtype": "f16", "shape": [1, dim + 1], "data": b64_f16(&vec![0.5; dim + 1])}, "k": 1})),
        )
        .await;
    assert_eq!(
        (st, v["code"].as_str()),
        (400, Some("dimension_mismatch")),
        "{v}"
    );
    server.shutdown().await.unwrap();
}
