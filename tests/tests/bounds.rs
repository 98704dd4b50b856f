//! Issue 7, items 3 and 4, end to end over both protocols: client-chosen sizes are bounded (a fat FDE is a
//! 400 `invalid_config`, not an aborted process), token values beyond f16's range are a 400 `out_of_range`
//! (not a 500 / DATA_LOSS when the shard is written), and in-range extremes make a shard that flushes,
//! re-opens after a restart and searches.
use chamfer_proto::v1 as pb;
use chamfer_server::serve::Server;
use chamfer_tests::fixtures::{code_of, grpc_channel, start_server};
use chamfer_tests::http::Http;
use pb::collections_client::CollectionsClient;
use pb::documents_client::DocumentsClient;
use pb::search_client::SearchClient;
use serde_json::{json, Value};
use tonic::transport::Channel;
use tonic::Code;

// ----- fixtures (beside the shared ones in chamfer_tests::fixtures) ------------------------------------------

struct Grpc {
    coll: CollectionsClient<Channel>,
    docs: DocumentsClient<Channel>,
    search: SearchClient<Channel>,
}

async fn grpc(server: &Server) -> Grpc {
    let ch = grpc_channel(server).await;
    Grpc {
        coll: CollectionsClient::new(ch.clone()),
        docs: DocumentsClient::new(ch.clone()),
        search: SearchClient::new(ch),
    }
}

/// JSON requests to `server`, one a connection; every answer must have a Content-Length (JSON bodies are
/// small), never be chunked.
fn http(server: &Server) -> Http {
    Http::new(server.addrs().http, None).unchunked()
}

fn f32_tokens(data: &[f32], dim: usize) -> pb::Tokens {
    chamfer_proto::tokens::pack_f32(data, dim)
}

const DIM: usize = 4;

// ----- tests -----------------------------------------------------------------------------------------------

/// The request: 8192 x 2^5 x 1024 = 2^28 FDE values per document was accepted (201) and the first
/// upsert allocated 4 GiB at once. Now: 400 invalid_config naming the field, over both protocols, and the
/// server keeps serving; nothing is created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fat_fde_is_rejected_over_both_protocols() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path(), |_| {}).await;
    let mut g = grpc(&server).await;
    let (st, v) = http(&server)
        .call(
            "POST",
            "/v1/collections",
            Some(&json!({"name": "fat", "dimension": 4, "fde": {
            "num_repetitions": 8192, "num_simhash_projections": 5, "projection_dimension": 1024}})),
        )
        .await;
    assert_eq!(
        (st, v["code"].as_str()),
        (400, Some("invalid_config")),
        "{v}"
    );
    let msg = v["message"].as_str().unwrap_or_default().to_string() + &v.to_string();
    assert!(
        msg.contains("num_repetitions") && msg.contains("8192"),
        "{v}"
    );
    // Within every per-field limit, but the product is too large: still a 400.
    let (st, v) = http(&server)
        .call(
            "POST",
            "/v1/collections",
            Some(&json!({"name": "fat", "dimension": 4, "fde": {
            "num_repetitions": 256, "num_simhash_projections": 5, "projection_dimension": 1024}})),
        )
        .await;
    assert_eq!(
        (st, v["code"].as_str()),
        (400, Some("invalid_config")),
        "{v}"
    );
    let fat = pb::CreateCollectionRequest {
        name: "fat".into(),
        dimension: 4,
        fde: Some(pb::FdeParams {
            num_repetitions: Some(8192),
            num_simhash_projections: Some(5),
            projection_dimension: Some(1024),
            ..Default::default()
        }),
        hnsw: None,
        codebook_size: None,
    };
    let status = g.coll.create(fat).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("num_repetitions"), "{status:?}");
    let big_graph = pb::CreateCollectionRequest {
        name: "fat".into(),
        dimension: 4,
        fde: None,
        hnsw: Some(pb::HnswParams {
            ef_construction: Some(1_000_000),
            ..Default::default()
        }),
        codebook_size: None,
    };
    assert_eq!(
        code_of(g.coll.create(big_graph).await),
        Code::InvalidArgument
    );
    // Nothing was created, and a sane collection still can be.
    assert_eq!(
        http(&server)
            .call("GET", "/v1/collections/fat", None)
            .await
            .0,
        404
    );
    let (st, v) = http(&server)
        .call(
            "POST",
            "/v1/collections",
            Some(&json!({"name": "fat", "dimension": 4})),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    server.shutdown().await.unwrap();
}

/// 1e5 and 3.4e38 (finite f32, beyond f16) in documents and queries: 400 out_of_range over REST,
/// INVALID_ARGUMENT over gRPC, and nothing stored; +-65504 at the edge is accepted, flushes into a shard that
/// survives a restart, and searches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_beyond_f16_are_out_of_range_over_both_protocols() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path(), |_| {}).await;
    let mut g = grpc(&server).await;
    let (st, v) = http(&server)
        .call(
            "POST",
            "/v1/collections",
            Some(&json!({"name": "c", "dimension": DIM})),
        )
        .await;
    assert_eq!(st, 201, "{v}");

    for big in [1e5f32, 3.4e38, -1e5] {
        let tokens = [0.5f32, big, 0.0, 1.0];
        let (st, v) = http(&server)
            .call(
                "POST",
                "/v1/collections/c/documents",
                Some(&json!({"documents": [{"id": "bad", "tokens": [tokens]}]})),
            )
            .await;
        assert_eq!(
            (st, v["code"].as_str()),
            (400, Some("out_of_range")),
            "{big}: {v}"
        );
        let status = g
            .docs
            .upsert(pb::UpsertRequest {
                collection: "c".into(),
                documents: vec![pb::Document {
                    id: "bad".into(),
                    tokens: Some(f32_tokens(&tokens, DIM)),
                    metadata_json: String::new(),
                }],
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{big}: {status:?}");
        assert!(status.message().contains("65504"), "{status:?}");
        // Queries are held to the same range.
        let (st, v) = http(&server)
            .call(
                "POST",
                "/v1/collections/c/search",
                Some(&json!({"query": [tokens], "k": 3})),
            )
            .await;
        assert_eq!(
            (st, v["code"].as_str()),
            (400, Some("out_of_range")),
            "{big}: {v}"
        );
        let r = g
            .search
            .search(pb::SearchRequest {
                collection: "c".into(),
                query: Some(f32_tokens(&tokens, DIM)),
                k: 3,
                ..Default::default()
            })
            .await;
        assert_eq!(code_of(r), Code::InvalidArgument, "{big}");
    }
    // Nothing was stored.
    let (st, v) = http(&server).call("GET", "/v1/collections/c", None).await;
    assert_eq!((st, &v["stats"]["documents"]), (200, &json!(0)), "{v}");

    // The edge of the range: many tokens of +-65504 and 60000 (their FDE blocks overflow f16), flushed into a
    // shard.
    let extreme = |d: usize, n: usize| -> Vec<Vec<f32>> {
        (0..n)
            .map(|t| {
                (0..DIM)
                    .map(|c| match (t + c + d) % 4 {
                        0 => 65504.0,
                        1 => -65504.0,
                        2 => 60000.0,
                        _ => -60000.0,
                    })
                    .collect()
            })
            .collect()
    };
    let docs: Vec<Value> = (0..6)
        .map(|d| json!({"id": format!("x{d}"), "tokens": extreme(d, 1 + d * 100)}))
        .collect();
    let (st, v) = http(&server)
        .call(
            "POST",
            "/v1/collections/c/documents",
            Some(&json!({"documents": docs})),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let (st, v) = http(&server)
        .call("POST", "/v1/collections/c/flush", None)
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["stats"]["shards"], json!(1), "{v}");
    assert_eq!(v["stats"]["documents"], json!(6), "{v}");
    let query = json!({"query": extreme(1, 3), "k": 3});
    let (st, before) = http(&server)
        .call("POST", "/v1/collections/c/search", Some(&query))
        .await;
    assert_eq!(st, 200, "{before}");
    assert_eq!(before["hits"].as_array().map(Vec::len), Some(3), "{before}");
    server.shutdown().await.unwrap();

    // The shard re-opens after a restart and answers the same.
    let server = start_server(dir.path(), |_| {}).await;
    let (st, info) = http(&server).call("GET", "/v1/collections/c", None).await;
    assert_eq!(st, 200, "{info}");
    assert_eq!(info["stats"]["documents"], json!(6), "{info}");
    let (st, after) = http(&server)
        .call("POST", "/v1/collections/c/search", Some(&query))
        .await;
    assert_eq!(st, 200, "{after}");
    assert_eq!(before["hits"], after["hits"]);
    server.shutdown().await.unwrap();
}
