//! SIGKILL a child `chamfer serve` (this package's binary, `CARGO_BIN_EXE_chamfer`: always built before these
//! tests, so they cannot skip) in the middle of a bulk ingest and restart it: every acknowledged document is
//! back. Data: the bundled demo set. Shared helpers: `chamfer_tests::e2e`.
use std::sync::Arc;
use std::time::{Duration, Instant};

use chamfer_proto::v1 as pb;
use chamfer_tests::e2e::*;
use chamfer_tests::fixtures::{demo_dataset, f16_tokens};
use pb::collections_client::CollectionsClient;
use pb::documents_client::DocumentsClient;
use pb::search_client::SearchClient;
use serde_json::Value;
use tonic::transport::Channel;

/// The `chamfer` binary of this package: cargo builds it before these tests, so they never skip.
fn bin() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_BIN_EXE_chamfer"))
}

/// SIGKILL a child `chamfer serve` in the middle of a bulk ingest, restart it on the same directory: every
/// acknowledged document is there (searchable, with its metadata and all its tokens), nothing half-written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_kill9_mid_ingest_keeps_every_acknowledged_document() {
    let bin = bin();
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
