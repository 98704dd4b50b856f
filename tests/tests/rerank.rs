//! Re-rank end to end, over REST and gRPC, on the demo set: stored ids re-ranked equal exact search's ranking
//! and scores; the same documents sent with the request score the same; both protocols agree; bad requests
//! answer the documented errors.
use chamfer_proto::v1 as pb;
use chamfer_tests::fixtures::{code_of, demo_dataset, f16_tokens, grpc_channel, start_server};
use chamfer_tests::http::Http;
use pb::search_client::SearchClient;
use serde_json::{json, Value};
use tonic::Code;

const N_DOCS: usize = 120;

fn rows(data: &[f32], dim: usize) -> Vec<Vec<f32>> {
    data.chunks(dim).map(<[f32]>::to_vec).collect()
}

fn hits(v: &Value) -> Vec<(String, f32)> {
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

fn assert_close(a: &[(String, f32)], b: &[(String, f32)], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    for (x, y) in a.iter().zip(b) {
        assert_eq!(x.0, y.0, "{what}: ids");
        assert!(
            (x.1 - y.1).abs() <= 1e-3 * y.1.abs().max(1.0),
            "{what}: {} vs {}",
            x.1,
            y.1
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rerank_equals_exact_search_over_rest_and_grpc() {
    let ds = demo_dataset();
    let dim = ds.dim();
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path(), |_| {}).await;
    let h = Http::new(server.addrs().http, None);
    h.ok(
        "POST",
        "/v1/collections",
        Some(&json!({"name": "c", "dimension": dim})),
    )
    .await;
    for chunk in (0..N_DOCS).collect::<Vec<_>>().chunks(40) {
        let docs: Vec<Value> = chunk
            .iter()
            .map(|&i| json!({"id": ds.doc_id(i), "tokens": rows(ds.doc_tokens(i), dim), "metadata": {"n": i}}))
            .collect();
        h.ok(
            "POST",
            "/v1/collections/c/documents",
            Some(&json!({"documents": docs})),
        )
        .await;
    }
    let mut g = SearchClient::new(grpc_channel(&server).await);
    for q in 0..5 {
        let query = rows(ds.query_tokens(q), dim);
        let exact = hits(
            &h.ok(
                "POST",
                "/v1/collections/c/search",
                Some(&json!({"query": query, "k": 10, "exact": true})),
            )
            .await,
        );
        assert_eq!(exact.len(), 10);
        // Every stored id, in reverse order, plus an unknown one: the exact top 10 comes back.
        let mut ids: Vec<String> = (0..N_DOCS)
            .rev()
            .map(|i| ds.doc_id(i).to_string())
            .collect();
        ids.push("no-such-doc".into());
        let stored = h
            .ok(
                "POST",
                "/v1/collections/c/rerank",
                Some(&json!({"query": query, "ids": ids, "k": 10, "with_metadata": true})),
            )
            .await;
        assert_close(
            &hits(&stored),
            &exact,
            "REST stored re-rank vs exact search",
        );
        assert_eq!(stored["missing"], json!(["no-such-doc"]));
        assert!(stored["hits"][0]["metadata"]["n"].is_number());

        // The same documents sent with the request (f16, as stored) score the same.
        let docs: Vec<Value> = (0..N_DOCS)
            .map(|i| json!({"id": ds.doc_id(i), "tokens": rows(ds.doc_tokens(i), dim)}))
            .collect();
        let sent = h
            .ok(
                "POST",
                "/v1/rerank",
                Some(&json!({"query": query, "documents": docs, "k": 10})),
            )
            .await;
        assert_close(&hits(&sent), &exact, "REST sent re-rank vs exact search");

        // gRPC: stored and sent.
        let grpc_hits = |r: pb::RerankResponse| -> Vec<(String, f32)> {
            r.hits.into_iter().map(|h| (h.id, h.score)).collect()
        };
        let r = g
            .rerank(pb::RerankRequest {
                collection: "c".into(),
                query: Some(f16_tokens(ds.query_tokens(q), dim)),
                ids: ids.clone(),
                k: Some(10),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.missing, vec!["no-such-doc".to_string()]);
        assert_close(&grpc_hits(r), &exact, "gRPC stored re-rank vs exact search");
        let batch = g
            .rerank_batch(pb::RerankBatchRequest {
                requests: vec![pb::RerankRequest {
                    query: Some(f16_tokens(ds.query_tokens(q), dim)),
                    documents: (0..N_DOCS)
                        .map(|i| pb::RerankDocument {
                            id: ds.doc_id(i).into(),
                            tokens: Some(f16_tokens(ds.doc_tokens(i), dim)),
                        })
                        .collect(),
                    k: Some(10),
                    ..Default::default()
                }],
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(batch.results.len(), 1);
        assert_close(
            &grpc_hits(batch.results.into_iter().next().unwrap()),
            &exact,
            "gRPC sent batch re-rank vs exact search",
        );
    }

    // Errors: k = 0, ids and documents both or neither, stored ids without a collection, wrong dimension (named
    // by document id), an unknown collection.
    let q = rows(ds.query_tokens(0), dim);
    let (st, body) = h
        .call(
            "POST",
            "/v1/collections/c/rerank",
            Some(&json!({"query": q, "ids": ["a"], "k": 0})),
        )
        .await;
    assert_eq!((st, body["code"].as_str()), (400, Some("invalid_argument")));
    let (st, body) = h
        .call(
            "POST",
            "/v1/rerank",
            Some(&json!({"query": q, "documents": [{"id": "odd", "tokens": [[1.0, 2.0]]}]})),
        )
        .await;
    assert_eq!(
        (st, body["code"].as_str()),
        (400, Some("dimension_mismatch")),
        "{body}"
    );
    assert!(
        body["message"].as_str().unwrap().contains("\"odd\""),
        "{body}"
    );
    let (st, body) = h
        .call(
            "POST",
            "/v1/collections/nope/rerank",
            Some(&json!({"query": q, "ids": ["a"]})),
        )
        .await;
    assert_eq!(
        (st, body["code"].as_str()),
        (404, Some("collection_not_found"))
    );
    let base = pb::RerankRequest {
        collection: "c".into(),
        query: Some(f16_tokens(ds.query_tokens(0), dim)),
        ..Default::default()
    };
    assert_eq!(code_of(g.rerank(base.clone()).await), Code::InvalidArgument);
    assert_eq!(
        code_of(
            g.rerank(pb::RerankRequest {
                collection: String::new(),
                ids: vec!["a".into()],
                ..base.clone()
            })
            .await
        ),
        Code::InvalidArgument
    );
    assert_eq!(
        code_of(
            g.rerank(pb::RerankRequest {
                ids: vec!["a".into()],
                documents: vec![pb::RerankDocument {
                    id: "x".into(),
                    tokens: Some(f16_tokens(ds.doc_tokens(0), dim)),
                }],
                ..base.clone()
            })
            .await
        ),
        Code::InvalidArgument
    );
    server.shutdown().await.unwrap();
}
