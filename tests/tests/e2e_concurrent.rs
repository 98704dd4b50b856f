//! End-to-end concurrency: gRPC and REST writers and readers at once while background flushes and compactions
//! run (the real server on 127.0.0.1; `chamfer_tests::e2e`).
use std::time::{Duration, Instant};

use chamfer_index::search::{Plan, SearchParams};
use chamfer_index::shard::Coding;
use chamfer_proto::v1 as pb;
use chamfer_tests::e2e::*;
use chamfer_tests::fixtures::{demo_dataset, start_server};
use chamfer_tests::http::Http;
use serde_json::json;

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
