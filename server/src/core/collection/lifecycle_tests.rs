//! Collection-level tests: the tiered compaction policy (properties of the picker alone, and random
//! insert/delete/flush/compact sequences against a model, across reopens), and the collection codebook
//! (trained once, persisted, reused after a restart, damage refused).
use std::collections::BTreeMap;

use proptest::prelude::*;

use super::maintenance::{pick_compaction, ShardSize, TierPolicy};
use super::*;
use crate::core::wal::{encode_delete, encode_upsert, KIND_DELETE, KIND_UPSERT};
use chamfer_index::search::{Plan, SearchParams};
use chamfer_index::shard::IndexParams;
use chamfer_index::tokens::TokenMatrix;

const DIM: usize = 8;

pub(super) fn config() -> CollectionConfig {
    CollectionConfig {
        format_version: MANIFEST_VERSION,
        name: "c".into(),
        dimension: DIM,
        params: IndexParams::new(DIM),
    }
}

/// Deterministic tokens of version `v` of a document (3 to 6 unit rows).
pub(super) fn toks(v: u64) -> Vec<f32> {
    let mut x = v.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let n = 3 + (v % 4) as usize;
    let mut out = Vec::with_capacity(n * DIM);
    for _ in 0..n {
        let row: Vec<f32> = (0..DIM)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 40) as f32 / (1u64 << 24) as f32 - 0.5
            })
            .collect();
        let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-6);
        out.extend(row.iter().map(|v| v / norm));
    }
    out
}

/// Upserts `(id, version)` pairs as one write, the way the core does (memory shard built by the collection).
pub(super) async fn upsert(c: &Collection, docs: &[(String, u64)]) {
    let tokens: Vec<Vec<f32>> = docs.iter().map(|d| toks(d.1)).collect();
    let shard_docs: Vec<ShardDoc<'_>> = docs
        .iter()
        .zip(&tokens)
        .map(|((id, _), t)| ShardDoc {
            id,
            tokens: TokenMatrix::new(t, DIM, "document").unwrap(),
            payload: b"",
        })
        .collect();
    let shard = Arc::new(
        c.build_memory_shard_coded(&shard_docs, c.codebook().as_ref(), None)
            .unwrap(),
    );
    let body = encode_upsert(
        docs.iter()
            .zip(&tokens)
            .map(|((id, _), t)| (id.as_str(), DIM, t.as_slice(), &b""[..])),
    );
    c.write(WriteOp::Upsert { shard }, KIND_UPSERT, body)
        .await
        .unwrap();
}

pub(super) async fn delete(c: &Collection, ids: Vec<String>) {
    let body = encode_delete(&ids);
    c.write(WriteOp::Delete { ids }, KIND_DELETE, body)
        .await
        .unwrap();
}

/// Documents `d{i}` with version `i` for `i` in `r`.
pub(super) fn docs(r: std::ops::Range<u64>) -> Vec<(String, u64)> {
    r.map(|i| (format!("d{i}"), i)).collect()
}

/// Runs a blocking collection call (flush, compaction, re-training) off the async workers; panics on error.
pub(super) async fn blocking<T: Send + 'static>(
    c: &Arc<Collection>,
    f: impl FnOnce(&Collection) -> Result<T, ServiceError> + Send + 'static,
) -> T {
    let c = c.clone();
    tokio::task::spawn_blocking(move || f(&c))
        .await
        .unwrap()
        .unwrap()
}

/// Every live document with its tokens, as the collection serves them.
pub(super) fn contents(
    c: &Collection,
    ids: impl Iterator<Item = String>,
) -> BTreeMap<String, Vec<f32>> {
    let ids: Vec<String> = ids.collect();
    ids.iter()
        .zip(c.get(&ids).unwrap())
        .filter_map(|(id, r)| r.map(|r| (id.clone(), r.shard.tokens(r.doc))))
        .collect()
}

fn check_model(c: &Collection, model: &BTreeMap<String, u64>, universe: u64) {
    let all = (0..universe).map(|i| format!("d{i}"));
    let got = contents(c, all);
    let want: BTreeMap<String, Vec<f32>> = model
        .iter()
        .map(|(id, &v)| {
            // Stored tokens are f16: compare after the same rounding.
            let t = toks(v)
                .iter()
                .map(|x| half::f16::from_f32(*x).to_f32())
                .collect();
            (id.clone(), t)
        })
        .collect();
    assert_eq!(got, want);
    assert_eq!(c.stats().documents as usize, model.len());
}

#[derive(Clone, Debug)]
enum Op {
    Insert(Vec<u64>),
    Delete(Vec<u64>),
    Flush,
    Compact,
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => proptest::collection::vec(0u64..60, 1..12).prop_map(Op::Insert),
        2 => proptest::collection::vec(0u64..60, 1..8).prop_map(Op::Delete),
        2 => Just(Op::Flush),
        2 => Just(Op::Compact),
        1 => Just(Op::Reopen),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, .. ProptestConfig::default() })]

    /// Random insert / overwrite / delete / flush / tiered-compaction / reopen sequences keep exactly the
    /// model's live documents with their latest tokens (background flushes and merges run meanwhile: a flush
    /// threshold of 6 documents and a fan-in of 2).
    #[test]
    fn compaction_keeps_every_live_document(ops in proptest::collection::vec(op(), 1..24)) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let tuning = Tuning::new(6, 2);
            let mut c = Collection::create(dir.path(), config(), tuning).unwrap();
            let mut model: BTreeMap<String, u64> = BTreeMap::new();
            let mut version = 0u64;
            for op in ops {
                match op {
                    Op::Insert(ids) => {
                        let mut batch: BTreeMap<String, u64> = BTreeMap::new();
                        for i in ids {
                            version += 1;
                            batch.insert(format!("d{i}"), version * 1000 + i);
                        }
                        let docs: Vec<(String, u64)> = batch.into_iter().collect();
                        upsert(&c, &docs).await;
                        model.extend(docs);
                    }
                    Op::Delete(ids) => {
                        let ids: Vec<String> = ids.iter().map(|i| format!("d{i}")).collect();
                        for id in &ids {
                            model.remove(id);
                        }
                        delete(&c, ids).await;
                    }
                    Op::Flush => {
                        blocking(&c, |c| c.flush()).await;
                    }
                    Op::Compact => {
                        blocking(&c, |c| c.compact_tiered()).await;
                    }
                    Op::Reopen => {
                        c.close();
                        let layout = Layout { dir: dir.path().join("c") };
                        c = tokio::task::spawn_blocking(move || Collection::open(layout, tuning))
                            .await
                            .unwrap()
                            .unwrap();
                    }
                }
                check_model(&c, &model, 60);
            }
            // Drain the policy: it ends, and leaves no tier with a full fan-in of open shards.
            blocking(&c, |c| c.flush()).await;
            for _ in 0..100 {
                if !blocking(&c, |c| c.compact_tiered()).await {
                    break;
                }
            }
            assert!(!c.needs_compaction());
            check_model(&c, &model, 60);
            c.close();
        });
    }

    /// The picker alone: what it picks exists, is a deletion rewrite or a same-tier merge within the cap, and
    /// applying its merges always ends (each one lowers the shard count or clears deletions).
    #[test]
    fn picker_merges_by_tier_and_ends(
        sizes in proptest::collection::vec((1usize..2_000_000, 0usize..100), 0..40),
        fan_in in 2usize..6,
        base in 1usize..50_000,
    ) {
        let policy = TierPolicy::new(base, fan_in, 250_000);
        let mut shards: Vec<ShardSize> = sizes
            .iter()
            .enumerate()
            .map(|(i, &(docs, del_pct))| ShardSize {
                id: i as u64,
                docs,
                deleted: if del_pct < 70 { 0 } else { docs * (del_pct - 70) / 30 },
            })
            .collect();
        let mut next = shards.len() as u64;
        let mut steps = 0;
        while let Some(pick) = pick_compaction(&shards, &policy) {
            steps += 1;
            prop_assert!(steps <= 2 * sizes.len() + 1, "the policy does not end");
            let picked: Vec<ShardSize> =
                shards.iter().filter(|s| pick.contains(&s.id)).copied().collect();
            prop_assert_eq!(picked.len(), pick.len(), "picked ids exist, once each");
            let live: usize = picked.iter().map(|s| s.docs - s.deleted).sum();
            if picked.len() == 1 {
                prop_assert!(picked[0].deleted * 5 >= picked[0].docs && picked[0].deleted > 0);
            } else {
                prop_assert!(picked.len() <= fan_in);
                prop_assert!(live <= policy.max_docs);
                let tiers: Vec<u32> = picked.iter().map(|s| tier_of(&policy, s.docs - s.deleted)).collect();
                prop_assert!(tiers.iter().all(|&t| t == tiers[0]), "one tier: {:?}", tiers);
            }
            shards.retain(|s| !pick.contains(&s.id));
            if live > 0 {
                shards.push(ShardSize { id: next, docs: live, deleted: 0 });
                next += 1;
            }
        }
    }
}

fn tier_of(p: &TierPolicy, live: usize) -> u32 {
    let mut t = 0;
    let mut upper = p.base * p.fan_in;
    while live >= upper {
        t += 1;
        upper *= p.fan_in;
    }
    t
}

/// Writes amplification stays bounded: streaming many flush-sized shards through the policy rewrites each
/// document about once per tier (here: base 20k, fan-in 4, cap below the 250k graph threshold -> 2 tiers).
#[test]
fn tiered_write_amplification_is_bounded() {
    let policy = TierPolicy::new(20_000, 4, 250_000);
    let mut shards = Vec::new();
    let (mut flushed, mut merged, mut next) = (0usize, 0usize, 0u64);
    for _ in 0..50 {
        shards.push(ShardSize {
            id: next,
            docs: 20_000,
            deleted: 0,
        });
        next += 1;
        flushed += 20_000;
        while let Some(pick) = pick_compaction(&shards, &policy) {
            let live: usize = shards
                .iter()
                .filter(|s| pick.contains(&s.id))
                .map(|s| s.docs)
                .sum();
            merged += live;
            shards.retain(|s| !pick.contains(&s.id));
            shards.push(ShardSize {
                id: next,
                docs: live,
                deleted: 0,
            });
            next += 1;
        }
    }
    let wa = (flushed + merged) as f64 / flushed as f64;
    assert!(wa <= 3.0, "write amplification {wa}");
    assert!(wa >= 2.0, "merges happened: {wa}");
    // 1M documents end in a handful of shards, none over the cap.
    assert!(shards.len() <= 12, "{} shards", shards.len());
    assert!(shards.iter().all(|s| s.docs <= policy.max_docs));
}

/// The collection codebook: trained by the first flush (documents before it are tokens-only segments,
/// searched exactly), written beside the manifest, reused by later memory segments and flushes, the same one
/// after a restart (not re-trained), and a damaged codebook file makes the collection refuse to open without
/// deleting anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn codebook_is_trained_once_persisted_and_reused() {
    let dir = tempfile::tempdir().unwrap();
    let tuning = Tuning::new(1_000_000, 8);
    let c = Collection::create(dir.path(), config(), tuning).unwrap();
    upsert(&c, &docs(0..400)).await;
    assert_eq!(c.stats().codebook_centroids, 0);
    let snap = c.snapshot();
    assert!(snap.segs.iter().all(|s| s.shard.codebook().is_none()));
    let exact = SearchParams {
        plan: Plan::Exact,
        ..SearchParams::new(10)
    };
    let q = toks(99_999);
    let qm = TokenMatrix::new(&q, DIM, "query").unwrap();
    let before = snap
        .searcher
        .as_ref()
        .unwrap()
        .search(qm, &exact, None)
        .unwrap();
    let auto = SearchParams::new(10);
    assert_eq!(
        snap.searcher
            .as_ref()
            .unwrap()
            .search(qm, &auto, None)
            .unwrap(),
        before,
        "tokens-only segments are searched exactly"
    );

    blocking(&c, |c| c.flush()).await;
    let st = c.stats();
    assert_eq!(st.codebook_generation, 1);
    assert!(st.codebook_centroids > 0);
    assert!(st.flushed_bytes > 0);
    let book_path = dir.path().join("c").join("codebook-00000001.bin");
    assert!(book_path.exists());
    let book = c.snapshot().codebook.clone().unwrap();
    // Later batches are coded with it, and their flush copies the codes into a shard sharing it.
    upsert(&c, &docs(400..500)).await;
    let snap = c.snapshot();
    let mem = snap.segs.last().unwrap();
    assert!(Arc::ptr_eq(mem.shard.codebook_arc().unwrap(), &book));
    blocking(&c, |c| c.flush()).await;
    let snap = c.snapshot();
    assert_eq!(snap.segs.len(), 2);
    assert!(snap
        .segs
        .iter()
        .all(|s| Arc::ptr_eq(s.shard.codebook_arc().unwrap(), &book)));
    let results = |c: &Collection| {
        let s = c.snapshot();
        s.searcher
            .as_ref()
            .unwrap()
            .search(qm, &auto, None)
            .unwrap()
    };
    let served = results(&c);
    c.close();
    drop(c);

    // Restart: the same codebook (same generation, same centroids), shared by every shard, same answers.
    let layout = Layout {
        dir: dir.path().join("c"),
    };
    let c = Collection::open(layout.clone(), tuning).unwrap();
    assert_eq!(c.stats().codebook_generation, 1);
    let again = c.snapshot().codebook.clone().unwrap();
    assert_eq!(again.centroids(), book.centroids());
    assert!(c
        .snapshot()
        .segs
        .iter()
        .all(|s| Arc::ptr_eq(s.shard.codebook_arc().unwrap(), &again)));
    assert_eq!(results(&c), served);
    upsert(&c, &docs(500..520)).await;
    blocking(&c, |c| c.flush()).await;
    assert_eq!(c.stats().codebook_generation, 1, "not re-trained");
    c.close();
    drop(c);

    // A flipped byte in the codebook file: refused, nothing deleted.
    let mut bytes = std::fs::read(&book_path).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x40;
    std::fs::write(&book_path, &bytes).unwrap();
    let files = |p: &std::path::Path| std::fs::read_dir(p).unwrap().count();
    let segs_before = files(&layout.segments());
    let err = Collection::open(layout.clone(), tuning).err().unwrap();
    assert!(err.to_string().contains("codebook"), "{err}");
    assert!(book_path.exists());
    assert_eq!(files(&layout.segments()), segs_before);
    // The file missing: refused too.
    std::fs::remove_file(&book_path).unwrap();
    let err = Collection::open(layout, tuning).err().unwrap();
    assert!(err.to_string().contains("missing"), "{err}");
}

/// A restart maps large shards without reading their token sections; the background check finds a flipped
/// bit there: reads of the documents answer `unavailable` while it is pending, the collection is marked damaged
/// once it fails, and no file changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_damage_is_found_in_the_background() {
    let dir = tempfile::tempdir().unwrap();
    let mut tuning = Tuning::new(1_000_000, 8);
    let c = Collection::create(dir.path(), config(), tuning).unwrap();
    let docs = docs(0..200);
    upsert(&c, &docs).await;
    blocking(&c, |c| c.flush()).await;
    c.close();
    drop(c);
    let layout = Layout {
        dir: dir.path().join("c"),
    };
    let seg = std::fs::read_dir(layout.segments())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "shard"))
        .unwrap();
    // Every shard deferred: the background path.
    tuning.verify_now_bytes = 0;
    // Undamaged: verified in the background, then reads serve.
    let c = Collection::open(layout.clone(), tuning).unwrap();
    for _ in 0..200 {
        if c.unverified_shards() == 0 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_eq!(c.unverified_shards(), 0);
    assert!(c.damaged().is_none());
    assert!(c.get(&["d1".to_string()]).unwrap()[0].is_some());
    c.close();
    drop(c);

    let mut b = std::fs::read(&seg).unwrap();
    b[64 + 5] ^= 0x02;
    std::fs::write(&seg, &b).unwrap();
    let c = Collection::open(layout, tuning).unwrap();
    for _ in 0..200 {
        if c.damaged().is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let reason = c.damaged().expect("the damage is found");
    assert!(reason.contains("tokens checksum mismatch"), "{reason}");
    assert!(matches!(
        c.get(&["d1".to_string()]),
        Err(ServiceError::CollectionUnavailable { .. })
    ));
    assert_eq!(
        std::fs::read(&seg).unwrap(),
        b,
        "the damaged file is left as it was"
    );
    c.close();
}

/// Growth re-trains the codebook: a new generation with more centroids, recorded in the manifest (the old file
/// deleted), used by later flushes; a merge moves older shards' documents to it; answers stay exact after the
/// re-rank; a restart keeps the new generation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn growth_retrains_the_codebook() {
    let dir = tempfile::tempdir().unwrap();
    let tuning = Tuning::new(1_000_000, 8);
    let c = Collection::create(dir.path(), config(), tuning).unwrap();
    upsert(&c, &docs(0..100)).await;
    blocking(&c, |c| c.flush()).await;
    let first = c.stats().codebook_centroids;
    assert_eq!(c.stats().codebook_generation, 1);
    // No reason yet: nothing changes.
    blocking(&c, |c| c.retrain_if_needed(&[])).await;
    assert_eq!(c.stats().codebook_generation, 1);
    for b in 0..8 {
        upsert(&c, &docs(100 + b * 500..600 + b * 500)).await;
    }
    blocking(&c, |c| c.flush()).await;
    blocking(&c, |c| c.retrain_if_needed(&[])).await;
    let st = c.stats();
    assert_eq!(st.codebook_generation, 2);
    assert!(
        st.codebook_centroids >= first * 4,
        "{first} -> {}",
        st.codebook_centroids
    );
    let cdir = dir.path().join("c");
    assert!(!cdir.join("codebook-00000001.bin").exists());
    assert!(cdir.join("codebook-00000002.bin").exists());
    // Later batches use it; a full merge moves every document to it.
    upsert(&c, &docs(5000..5100)).await;
    blocking(&c, |c| c.flush()).await;
    blocking(&c, |c| c.compact()).await;
    let snap = c.snapshot();
    let book = snap.codebook.clone().unwrap();
    assert_eq!(snap.segs.len(), 1);
    assert!(Arc::ptr_eq(
        snap.segs[0].shard.codebook_arc().unwrap(),
        &book
    ));
    // Exact after the re-rank: a deep re-rank of the centroid scan under the new codebook returns the exact top 10.
    let searcher = snap.searcher.as_ref().unwrap();
    for s in 0..5 {
        let q = toks(77_000 + s);
        let qm = TokenMatrix::new(&q, DIM, "query").unwrap();
        let exact = SearchParams {
            plan: Plan::Exact,
            ..SearchParams::new(10)
        };
        let deep = SearchParams {
            plan: Plan::CentroidScan,
            rerank: Some(2500),
            ..SearchParams::new(10)
        };
        let e: Vec<usize> = searcher
            .search(qm, &exact, None)
            .unwrap()
            .iter()
            .map(|h| h.doc)
            .collect();
        let a: Vec<usize> = searcher
            .search(qm, &deep, None)
            .unwrap()
            .iter()
            .map(|h| h.doc)
            .collect();
        assert_eq!(a, e, "query {s}");
    }
    c.close();
    drop(c);
    let c = Collection::open(Layout { dir: cdir }, tuning).unwrap();
    assert_eq!(c.stats().codebook_generation, 2);
    c.close();
}

/// Shards written before a re-training are stale; once no write comes they are re-coded with the current
/// codebook, one at a time, keeping every document and the shard count; a write (or a flush asked for) arriving
/// meanwhile abandons the shard in progress without leaving a file behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_shards_are_recoded_when_writes_stop() {
    let dir = tempfile::tempdir().unwrap();
    let mut tuning = Tuning::new(1_000_000, 8);
    tuning.recode_after_idle = None;
    let c = Collection::create(dir.path(), config(), tuning).unwrap();
    upsert(&c, &docs(0..100)).await;
    blocking(&c, |c| c.flush()).await;
    for b in 0..8 {
        upsert(&c, &docs(100 + b * 500..600 + b * 500)).await;
    }
    blocking(&c, |c| c.flush()).await;
    blocking(&c, |c| c.retrain_if_needed(&[])).await;
    assert_eq!(c.stats().codebook_generation, 2);
    assert_eq!(c.stats().stale_shards, 2);
    let all = || (0..4100u64).map(|i| format!("d{i}"));
    let before = contents(&c, all());
    assert_eq!(before.len(), 4100);
    let layout = Layout {
        dir: dir.path().join("c"),
    };
    let files = |l: &Layout| std::fs::read_dir(l.segments()).unwrap().count();
    let n_files = files(&layout);

    // A write that arrived since the quiet point abandons the re-coding: nothing changes, no file is left.
    let seq = c.stats().last_sequence;
    assert!(!blocking(&c, move |c| c.recode_stale(seq + 1)).await);
    assert_eq!(c.stats().stale_shards, 2);
    assert_eq!(files(&layout), n_files);
    // Quiet: the smallest stale shard is re-coded.
    assert!(blocking(&c, move |c| c.recode_stale(seq)).await);
    assert_eq!(c.stats().stale_shards, 1);
    assert_eq!(c.stats().shards, 2);
    c.close();
    drop(c);

    // Reopened with the idle re-coding on: the last stale shard is re-coded in the background.
    tuning.recode_after_idle = Some(std::time::Duration::from_millis(50));
    let c = Collection::open(layout.clone(), tuning).unwrap();
    assert_eq!(c.stats().stale_shards, 1);
    let t0 = std::time::Instant::now();
    while c.stats().stale_shards > 0 {
        assert!(t0.elapsed().as_secs() < 120, "never re-coded");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let snap = c.snapshot();
    let book = snap.codebook.clone().unwrap();
    assert_eq!(snap.segs.len(), 2);
    assert!(snap
        .segs
        .iter()
        .all(|s| Arc::ptr_eq(s.shard.codebook_arc().unwrap(), &book)));
    assert_eq!(contents(&c, all()), before);
    c.close();
    drop(c);
    let c = Collection::open(layout, tuning).unwrap();
    assert_eq!(c.stats().stale_shards, 0);
    assert_eq!(contents(&c, all()), before);
    c.close();
}

/// An explicit compaction merges into as few shards as the size cap allows, never past it (here the cap is
/// just below a 100-document graph threshold), and keeps every document.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explicit_compaction_respects_the_size_cap() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config();
    cfg.params.hnsw.min_docs = 100;
    let tuning = Tuning::new(10, 8);
    let c = Collection::create(dir.path(), cfg, tuning).unwrap();
    let mut model = BTreeMap::new();
    for b in 0..6u64 {
        let docs = docs(b * 50..b * 50 + 50);
        upsert(&c, &docs).await;
        model.extend(docs);
        blocking(&c, |c| c.flush()).await;
    }
    blocking(&c, |c| c.compact()).await;
    let snap = c.snapshot();
    assert!(snap
        .segs
        .iter()
        .all(|s| s.shard.len() < 100 && s.shard.graph().is_none()));
    assert!(snap.segs.len() >= 4, "{} shards", snap.segs.len());
    check_model(&c, &model, 300);
    c.close();
}
