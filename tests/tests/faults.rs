//! Fault injection through the real server (`chamfer_server::serve::start` on 127.0.0.1 port 0): what a
//! client sees of a damaged collection over REST and gRPC, `/readyz` and `/metrics`; that the other
//! collections keep serving; that error bodies never name server files. The storage-level cases (every kind of
//! damage, drop vs flush, close vs compaction, backpressure, a full disk) are in
//! `server/src/core/fault_tests.rs`; RELIABILITY.md maps each promise to its test.
use chamfer_proto::v1 as pb;
use chamfer_tests::fixtures::{grpc_channel, start_server};
use chamfer_tests::http::Http;
use pb::collections_client::CollectionsClient;
use pb::search_client::SearchClient;
use serde_json::{json, Value};
use tonic::Code;

fn doc(i: usize) -> Value {
    let t = |k: usize| ((i * 7 + k * 3) % 11) as f32 / 4.0 - 1.0;
    json!({"id": format!("d{i}"), "tokens": [[t(0), t(1), t(2), t(3)], [t(4), t(5), t(6), t(7)]]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_collection_is_reported_and_the_rest_serves() {
    let dir = tempfile::tempdir().unwrap();
    let s = start_server(dir.path(), |_| {}).await;
    let h = Http::new(s.addrs().http, None);
    for name in ["good", "bad"] {
        h.ok(
            "POST",
            "/v1/collections",
            Some(&json!({"name": name, "dimension": 4})),
        )
        .await;
        let docs: Vec<Value> = (0..20).map(doc).collect();
        h.ok(
            "POST",
            &format!("/v1/collections/{name}/documents"),
            Some(&json!({ "documents": docs })),
        )
        .await;
    }
    s.shutdown().await.unwrap();

    // Damage "bad": its manifest disappears.
    let bad = dir.path().join("collections/bad");
    std::fs::remove_file(bad.join("manifest.json")).unwrap();
    let wal_before = std::fs::read_dir(bad.join("wal")).unwrap().count();

    let s = start_server(dir.path(), |_| {}).await;
    let h = Http::new(s.addrs().http, None);
    let (status, body) = h.call("GET", "/v1/collections/bad", None).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["code"], "collection_unavailable");
    let msg = body["message"].as_str().unwrap();
    assert!(msg.contains("manifest.json"), "{msg}");
    let root = dir.path().display().to_string();
    assert!(
        !msg.contains(&root),
        "the reason names a server path: {msg}"
    );
    let (status, _) = h
        .call(
            "POST",
            "/v1/collections/bad/search",
            Some(&json!({"query": [[1, 0, 0, 0]], "k": 3})),
        )
        .await;
    assert_eq!(status, 503);
    // The good collection serves.
    let v = h
        .ok(
            "POST",
            "/v1/collections/good/search",
            Some(&json!({"query": [[1, 0, 0, 0]], "k": 3})),
        )
        .await;
    assert_eq!(v["hits"].as_array().unwrap().len(), 3);
    // Listed as unavailable, ready overall (one bad collection is not an outage), visible in metrics.
    let list = h.ok("GET", "/v1/collections", None).await;
    assert_eq!(list["collections"].as_array().unwrap().len(), 1);
    assert_eq!(list["unavailable"][0]["name"], "bad");
    let (status, ready) = h.call("GET", "/readyz", None).await;
    assert_eq!(status, 200, "{ready}");
    assert_eq!(ready["unavailable_collections"][0]["collection"], "bad");
    let (_, metrics) = h.raw("GET", "/metrics", b"", None).await;
    let metrics = String::from_utf8(metrics).unwrap();
    assert!(
        metrics.contains("chamfer_collection_unavailable{collection=\"bad\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("chamfer_ready 1"));

    // gRPC says the same.
    let ch = grpc_channel(&s).await;
    let mut coll = CollectionsClient::new(ch.clone());
    let e = coll
        .describe(pb::DescribeCollectionRequest { name: "bad".into() })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable);
    assert_eq!(
        e.metadata().get("chamfer-error-code").unwrap(),
        "collection_unavailable"
    );
    let mut search = SearchClient::new(ch);
    let q = chamfer_proto::tokens::pack_f32(&[1.0, 0.0, 0.0, 0.0], 4);
    let hits = search
        .search(pb::SearchRequest {
            collection: "good".into(),
            query: Some(q),
            k: 2,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(hits.hits.len(), 2);
    s.shutdown().await.unwrap();

    // Nothing of the damaged collection was deleted: the log is intact, so putting back the manifest it had
    // (never flushed: the one written at creation) brings every acknowledged document back.
    assert_eq!(
        std::fs::read_dir(bad.join("wal")).unwrap().count(),
        wal_before
    );
    use chamfer_server::core::manifest::{write_checked, Manifest, MANIFEST_VERSION};
    let empty = Manifest {
        format_version: MANIFEST_VERSION,
        ..Default::default()
    };
    write_checked(&bad.join("manifest.json"), &empty).unwrap();
    let s = start_server(dir.path(), |_| {}).await;
    let h = Http::new(s.addrs().http, None);
    let v = h.ok("GET", "/v1/collections/bad", None).await;
    assert_eq!(v["stats"]["documents"], 20, "{v}");
    s.shutdown().await.unwrap();
}

/// Issue 21, items 1 and 6, as the probe reproduced them: create, upsert `a`, flush, upsert `b`, delete `a`, stop,
/// wipe the newest log file (emptied, or its records zeroed): the collection must not open as if the log were
/// empty (`b` missing, `a` back). It is unavailable with the reason, the files stay as they were, and putting the
/// file back brings `b` back with `a` deleted. A `collection.json` copied from another collection is refused the
/// same way instead of serving one name twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_log_tail_or_a_foreign_descriptor_is_refused() {
    type Wipe = fn(&std::path::Path);
    let wipes: [(&str, Wipe); 2] = [
        ("truncate -s 0", |p| {
            std::fs::OpenOptions::new()
                .write(true)
                .open(p)
                .unwrap()
                .set_len(0)
                .unwrap()
        }),
        ("records zeroed", |p| {
            let mut b = std::fs::read(p).unwrap();
            b[40..].fill(0); // the 40-byte header is kept
            std::fs::write(p, b).unwrap();
        }),
    ];
    for (how, wipe) in wipes {
        for flush in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let s = start_server(dir.path(), |_| {}).await;
            let h = Http::new(s.addrs().http, None);
            h.ok(
                "POST",
                "/v1/collections",
                Some(&json!({"name": "c", "dimension": 4})),
            )
            .await;
            let upsert = |i: usize| json!({ "documents": [doc(i)] });
            h.ok("POST", "/v1/collections/c/documents", Some(&upsert(0)))
                .await;
            if flush {
                h.ok("POST", "/v1/collections/c/flush", None).await;
            }
            h.ok("POST", "/v1/collections/c/documents", Some(&upsert(1)))
                .await;
            h.ok(
                "POST",
                "/v1/collections/c/documents/delete",
                Some(&json!({"ids": ["d0"]})),
            )
            .await;
            s.shutdown().await.unwrap();

            let wal = dir.path().join("collections/c/wal");
            let mut logs: Vec<_> = std::fs::read_dir(&wal)
                .unwrap()
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "log"))
                .collect();
            logs.sort();
            let newest = logs.pop().unwrap();
            let saved = std::fs::read(&newest).unwrap();
            wipe(&newest);
            let wiped = std::fs::read(&newest).unwrap();

            let s = start_server(dir.path(), |_| {}).await;
            let h = Http::new(s.addrs().http, None);
            let (status, body) = h.call("GET", "/v1/collections/c", None).await;
            let case = format!("{how}, flush {flush}");
            assert_eq!(status, 503, "{case}: {body}");
            let msg = body["message"].as_str().unwrap();
            assert!(
                msg.contains("acknowledged") && msg.contains("wal-"),
                "{case}: {msg}"
            );
            let list = h.ok("GET", "/v1/collections", None).await;
            assert_eq!(list["unavailable"][0]["name"], "c", "{case}: {list}");
            s.shutdown().await.unwrap();
            assert_eq!(
                std::fs::read(&newest).unwrap(),
                wiped,
                "{case}: nothing was 'cleaned up'"
            );

            std::fs::write(&newest, &saved).unwrap();
            let s = start_server(dir.path(), |_| {}).await;
            let h = Http::new(s.addrs().http, None);
            let (status, body) = h
                .call(
                    "POST",
                    "/v1/collections/c/documents/get",
                    Some(&json!({"ids": ["d0", "d1"]})),
                )
                .await;
            assert_eq!(status, 200, "{case}: {body}");
            assert_eq!(body["missing"], json!(["d0"]), "{case}: {body}");
            s.shutdown().await.unwrap();
        }
    }

    // Item 6: b's descriptor replaced by a's.
    let dir = tempfile::tempdir().unwrap();
    let s = start_server(dir.path(), |_| {}).await;
    let h = Http::new(s.addrs().http, None);
    for name in ["a", "b"] {
        h.ok(
            "POST",
            "/v1/collections",
            Some(&json!({"name": name, "dimension": 4})),
        )
        .await;
    }
    s.shutdown().await.unwrap();
    let root = dir.path().join("collections");
    std::fs::copy(
        root.join("a/collection.json"),
        root.join("b/collection.json"),
    )
    .unwrap();
    let s = start_server(dir.path(), |_| {}).await;
    let h = Http::new(s.addrs().http, None);
    let list = h.ok("GET", "/v1/collections", None).await;
    let names: Vec<&str> = list["collections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a"], "{list}");
    assert_eq!(list["unavailable"][0]["name"], "b", "{list}");
    let (status, body) = h.call("GET", "/v1/collections/b", None).await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("describes the collection \"a\""),
        "{body}"
    );
    s.shutdown().await.unwrap();
}
