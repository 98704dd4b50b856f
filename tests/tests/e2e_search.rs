//! End-to-end searches: the real server (`chamfer_server::serve::start`, the wiring `chamfer serve` uses) on
//! 127.0.0.1 port 0 over gRPC and REST answers what the in-process engine answers; deletes never come back and
//! filters return k matches. Data: the bundled demo set (`data/demo`: 300 manpages passages, 50 queries, 128-d
//! f16 tokens). Shared helpers: `chamfer_tests::e2e`.
use chamfer_index::search::{Plan, SearchParams};
use chamfer_index::shard::Coding;
use chamfer_proto::v1 as pb;
use chamfer_tests::e2e::*;
use chamfer_tests::fixtures::{demo_dataset, start_server};
use chamfer_tests::http::Http;
use serde_json::{json, Value};

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
