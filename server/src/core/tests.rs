//! Core-level tests on small synthetic data: durability across reopen, flush and compaction keep answers,
//! deletes and overwrites are honoured, filters return k matching documents.
use super::input::{CollectionParamsInput, DocInput, MetadataInput, SearchInput, TokenInput};
use super::*;
use crate::config::Settings;

pub(super) const DIM: usize = 8;

pub(super) fn settings(dir: &Path) -> Settings {
    Settings {
        data_dir: dir.to_path_buf(),
        flush_threshold_docs: 1_000_000,
        search_threads: 2,
        ..Settings::default()
    }
}

/// Opens the core on `dir` with [`settings`], off the async workers.
pub(super) async fn open_core(dir: &Path) -> Core {
    let s = settings(dir);
    tokio::task::spawn_blocking(move || Core::open(&s))
        .await
        .unwrap()
        .unwrap()
}

/// Deterministic pseudo-random unit tokens.
pub(super) fn tokens(seed: u64, n: usize) -> Vec<Vec<f32>> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            let mut row: Vec<f32> = (0..DIM)
                .map(|_| {
                    x = x
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    ((x >> 33) as f32 / (1u64 << 31) as f32) - 0.5
                })
                .collect();
            let n = row.iter().map(|v| v * v).sum::<f32>().sqrt();
            row.iter_mut().for_each(|v| *v /= n);
            row
        })
        .collect()
}

pub(super) fn doc(i: u64) -> DocInput {
    DocInput {
        id: format!("d{i}"),
        tokens: TokenInput::Rows(tokens(i, 3 + (i % 4) as usize)),
        metadata: MetadataInput::Value(
            serde_json::json!({"parity": i % 2, "group": format!("g{}", i % 3)}),
        ),
    }
}

fn query(seed: u64, k: usize) -> SearchInput {
    SearchInput {
        query: TokenInput::Rows(tokens(1000 + seed, 4)),
        k,
        ef: None,
        candidates: None,
        rerank: None,
        prefix_repetitions: None,
        nprobe: None,
        exact: true,
        filter: None,
        with_metadata: true,
    }
}

async fn ids(core: &Core, q: SearchInput) -> Vec<String> {
    core.search("c", q)
        .await
        .unwrap()
        .into_iter()
        .map(|h| h.id)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_survive_reopen_flush_and_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let core = open_core(dir.path()).await;
    core.create_collection("c".into(), DIM, CollectionParamsInput::default())
        .await
        .unwrap();
    assert!(matches!(
        core.create_collection("c".into(), DIM, CollectionParamsInput::default())
            .await,
        Err(ServiceError::CollectionExists(_))
    ));
    for chunk in (0..60u64).collect::<Vec<_>>().chunks(20) {
        core.upsert("c", chunk.iter().map(|&i| doc(i)).collect())
            .await
            .unwrap();
    }
    let before: Vec<Vec<String>> = futures_all(&core, 5).await;
    // Delete and overwrite: d0 gone, d1 replaced with d2's tokens.
    assert_eq!(
        core.delete("c", vec!["d0".into(), "nope".into()])
            .await
            .unwrap()
            .deleted,
        1
    );
    let mut over = doc(2);
    over.id = "d1".into();
    core.upsert("c", vec![over]).await.unwrap();
    let check = |core: Core| async move {
        let got = core
            .get("c", vec!["d0".into(), "d1".into()], true)
            .await
            .unwrap();
        assert_eq!(got.missing, vec!["d0".to_string()]);
        assert_eq!(
            got.documents[0].tokens.as_ref().unwrap().len(),
            tokens(2, 5).len() * DIM
        );
        for s in 0..5 {
            let hits = ids(&core, query(s, 59)).await;
            assert_eq!(hits.len(), 59, "k results despite tombstones");
            assert!(!hits.contains(&"d0".to_string()));
            assert_eq!(hits.iter().filter(|h| *h == "d1").count(), 1);
        }
    };
    check(core.clone()).await;
    assert_eq!(core.describe("c").unwrap().stats.documents, 59);
    core.flush("c").await.unwrap();
    assert_eq!(core.describe("c").unwrap().stats.memtable_documents, 0);
    check(core.clone()).await;
    core.upsert("c", (60..70).map(doc).collect()).await.unwrap();
    core.flush("c").await.unwrap();
    core.delete("c", vec!["d69".into()]).await.unwrap();
    core.compact("c").await.unwrap();
    let st = core.describe("c").unwrap().stats;
    assert_eq!((st.shards, st.tombstones, st.documents), (1, 0, 68));
    // Filters: k results, all matching.
    let mut q = query(1, 10);
    q.filter = Some(
        serde_json::from_value(serde_json::json!({"must": [{"key": "group", "equals": "g1"}]}))
            .unwrap(),
    );
    let hits = core.search("c", q).await.unwrap();
    assert_eq!(hits.len(), 10);
    assert!(hits
        .iter()
        .all(|h| h.metadata.as_deref().unwrap().contains("\"g1\"")));
    core.upsert("c", vec![doc(100)]).await.unwrap();
    core.shutdown();
    drop(core);

    // Reopen: manifest + log replay give the same state.
    let core = open_core(dir.path()).await;
    assert_eq!(core.describe("c").unwrap().stats.documents, 69);
    check(core.clone()).await;
    let after: Vec<Vec<String>> = futures_all(&core, 5).await;
    for (b, a) in before.iter().zip(&after) {
        let expect: Vec<&String> = b
            .iter()
            .filter(|id| *id != "d0" && *id != "d1")
            .take(5)
            .collect();
        let got: Vec<&String> = a
            .iter()
            .filter(|id| {
                *id != "d1"
                    && ![
                        "d60", "d61", "d62", "d63", "d64", "d65", "d66", "d67", "d68", "d100",
                    ]
                    .contains(&id.as_str())
            })
            .take(5)
            .collect();
        assert_eq!(expect, got);
    }
    core.drop_collection("c").await.unwrap();
    assert!(core.list_collections().is_empty());
    core.shutdown();
}

async fn futures_all(core: &Core, n: u64) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for s in 0..n {
        out.push(ids(core, query(s, 20)).await);
    }
    out
}
