//! End-to-end bad input: every malformed, oversized or unauthorised request over both protocols gets its
//! documented code, and the server keeps serving (the real server on 127.0.0.1; `chamfer_tests::e2e`).
use chamfer_proto::v1 as pb;
use chamfer_server::serve::Server;
use chamfer_tests::e2e::*;
use chamfer_tests::fixtures::{code_of, demo_dataset, f16_tokens, grpc_channel, start_server};
use chamfer_tests::http::Http;
use serde_json::{json, Value};
use tonic::transport::Channel;
use tonic::Code;

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
