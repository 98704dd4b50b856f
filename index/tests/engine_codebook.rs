//! Engine integration tests: codebooks shared, retrained and carried by merges; tokens-only shards.
//! Data: the bundled demo slice (`data/demo`) and the shared manpages set when present (`common`).
use std::sync::Arc;

use chamfer_data::eval::recall_at_k;
use chamfer_index::index_dir::{open_index, write_index_from};
use chamfer_index::search::{Plan, SearchParams, Searcher};
use chamfer_index::shard::{train_codebook, Coding, IndexParams, Shard};
use chamfer_index::IndexError;

mod common;
use common::*;

#[test]
fn streamed_index_shards_share_one_codebook_and_answer_like_one_shard() {
    let src = DemoSource(demo());
    let ds = &src.0;
    let params = IndexParams::new(ds.dim());
    let (split, whole) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    write_index_from(split.path(), &params, &src, 70, &|_| {}, &|| false).unwrap();
    write_index_from(whole.path(), &params, &src, 1000, &|_| {}, &|| false).unwrap();
    let (split, whole) = (
        open_index(split.path()).unwrap(),
        open_index(whole.path()).unwrap(),
    );
    assert_eq!((split.shards().len(), whole.shards().len()), (5, 1));
    let books: Vec<_> = split
        .shards()
        .iter()
        .map(|s| s.codebook_arc().unwrap().clone())
        .collect();
    assert!(
        books.iter().all(|b| Arc::ptr_eq(b, &books[0])),
        "one codebook in memory"
    );
    assert_eq!(
        *books[0],
        *whole.shards()[0].codebook_arc().unwrap().clone()
    );
    let p = SearchParams {
        plan: Plan::Ivf,
        rerank: Some(40),
        ..SearchParams::new(10)
    };
    for j in 0..ds.n_queries() {
        let a: Vec<(usize, f32)> = split
            .search(query(ds, j), &p, None)
            .unwrap()
            .iter()
            .map(|h| (h.shard * 70 + h.doc, h.score))
            .collect();
        let b: Vec<(usize, f32)> = whole
            .search(query(ds, j), &p, None)
            .unwrap()
            .iter()
            .map(|h| (h.doc, h.score))
            .collect();
        assert_eq!(a, b, "query {j}");
    }
    let r = recall(&whole, ds, &p);
    assert!(
        r >= 0.97,
        "IVF recall@10 with a streamed codebook, 40 re-ranked: {r}"
    );
    // Cancelled: an error, and no manifest.
    let dir = tempfile::tempdir().unwrap();
    let err = write_index_from(dir.path(), &params, &src, 70, &|_| {}, &|| true).unwrap_err();
    assert!(matches!(err, IndexError::Cancelled(_)), "{err}");
    assert!(!dir.path().join("index.json").exists());
}

#[test]
fn a_retrained_codebook_leaves_final_scores_exact() {
    // Shards coded by two codebooks (the first trained on one half of the collection, a re-trained one on the
    // other): every plan's final scores are exact Chamfer scores, and with a re-rank depth covering the
    // collection the hits are the exact plan's.
    let ds = demo();
    let params = IndexParams::new(ds.dim());
    let d = docs(&ds);
    let (a, b) = d.split_at(150);
    let old = Arc::new(train_codebook(&params, a, &|| false).unwrap().unwrap());
    let new = Arc::new(train_codebook(&params, b, &|| false).unwrap().unwrap());
    assert_ne!(*old, *new);
    let searcher = Searcher::new(
        params.clone(),
        vec![
            Arc::new(Shard::build_in_memory_with_codebook(&params, a, Some(old)).unwrap()),
            Arc::new(Shard::build_in_memory_with_codebook(&params, b, Some(new)).unwrap()),
        ],
    )
    .unwrap();
    let exact = SearchParams {
        plan: Plan::Exact,
        ..SearchParams::new(10)
    };
    for plan in [Plan::Ivf, Plan::CentroidScan] {
        let deep = SearchParams {
            plan,
            rerank: Some(300),
            candidates: Some(300),
            nprobe: Some(1024),
            ..SearchParams::new(10)
        };
        for j in 0..ds.n_queries() {
            let want = searcher.search(query(&ds, j), &exact, None).unwrap();
            assert_eq!(
                searcher.search(query(&ds, j), &deep, None).unwrap(),
                want,
                "{plan:?} query {j}"
            );
        }
    }
    let ivf = SearchParams {
        plan: Plan::Ivf,
        ..SearchParams::new(10)
    };
    let r: f64 = (0..ds.n_queries())
        .map(|j| {
            let hits = searcher.search(query(&ds, j), &ivf, None).unwrap();
            let rows: Vec<usize> = hits.iter().map(|h| h.shard * 150 + h.doc).collect();
            recall_at_k(&rows, ds.gt_ids(j).unwrap(), 10)
        })
        .sum::<f64>()
        / ds.n_queries() as f64;
    assert!(r >= 0.98, "two codebooks, default knobs: {r}");
}

/// The writer's `Coding`: codes given for some documents are copied (the shard equals one where they were
/// assigned), a merge of existing shards (`write_merged`) holds the same documents, codes and answers as a shard
/// written from them, tokens-only shards are searched exactly whatever the plan, and merges refuse sizes that
/// would need a graph.
#[test]
fn known_codes_merges_and_tokens_only_shards() {
    let ds = demo();
    let params = IndexParams::new(ds.dim());
    let d = docs(&ds);
    let book = Arc::new(train_codebook(&params, &d, &|| false).unwrap().unwrap());
    let given = |known| Coding::Given {
        codebook: &book,
        known,
    };
    let assigned = Shard::build_in_memory_coded(&params, &d, given(None)).unwrap();
    // The given codebook is the shard's own (the same Arc, not a parsed copy).
    assert!(Arc::ptr_eq(assigned.codebook_arc().unwrap(), &book));
    // Half the documents bring their codes: copied, and the shard is the same.
    let codes: Vec<Vec<u16>> = (0..d.len()).map(|i| assigned.codes(i).to_vec()).collect();
    let known: Vec<Option<&[u16]>> = (0..d.len())
        .map(|i| (i % 2 == 0).then(|| codes[i].as_slice()))
        .collect();
    let copied = Shard::build_in_memory_coded(&params, &d, given(Some(&known))).unwrap();
    for i in 0..d.len() {
        assert_eq!(copied.codes(i), assigned.codes(i), "doc {i}");
    }
    // Codes that do not fit their document are refused.
    let mut bad = known.clone();
    let short = [0u16];
    bad[1] = Some(&short);
    assert!(Shard::build_in_memory_coded(&params, &d, given(Some(&bad))).is_err());

    // A merge of two shards (one coded with the book, one tokens-only) equals a shard written from the documents.
    let (a, b) = d.split_at(150);
    let mut sa = Shard::build_in_memory_coded(&params, a, given(None)).unwrap();
    sa.share_codebook(&book);
    let sb = Shard::build_in_memory_coded(&params, b, Coding::TokensOnly).unwrap();
    assert!(sb.codebook().is_none() && sb.fde_dim() == 0);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("merged.shard");
    let order: Vec<(&Shard, u32)> = (0..sa.len() as u32)
        .map(|i| (&sa, i))
        .chain((0..sb.len() as u32).map(|i| (&sb, i)))
        .collect();
    Shard::write_merged(&path, &params, &order, &book, &|_| {}, &|| false).unwrap();
    let merged = Shard::open(&path).unwrap();
    assert_eq!(merged.len(), d.len());
    for i in 0..d.len() {
        assert_eq!(merged.id(i), assigned.id(i));
        assert_eq!(merged.packed_tokens(i), assigned.packed_tokens(i));
        assert_eq!(merged.codes(i), assigned.codes(i), "doc {i}");
        assert_eq!(merged.payload(i), assigned.payload(i));
    }
    assert!(merged.has_ivf());
    let m = Searcher::new(params.clone(), vec![Arc::new(merged)]).unwrap();
    let w = Searcher::new(params.clone(), vec![Arc::new(assigned)]).unwrap();
    for plan in [Plan::Ivf, Plan::CentroidScan, Plan::Exact] {
        let p = SearchParams {
            plan,
            ..SearchParams::new(10)
        };
        for j in 0..ds.n_queries() {
            assert_eq!(
                m.search(query(&ds, j), &p, None).unwrap(),
                w.search(query(&ds, j), &p, None).unwrap(),
                "{plan:?} query {j}"
            );
        }
    }
    // Tokens-only: every plan is the exact one.
    let t = Searcher::new(params.clone(), vec![Arc::new(sb)]).unwrap();
    let exact = SearchParams {
        plan: Plan::Exact,
        ..SearchParams::new(10)
    };
    for plan in [Plan::Auto, Plan::FdeScan, Plan::CentroidScan, Plan::Ivf] {
        let p = SearchParams {
            plan,
            ..SearchParams::new(10)
        };
        for j in 0..ds.n_queries() {
            assert_eq!(
                t.search(query(&ds, j), &p, None).unwrap(),
                t.search(query(&ds, j), &exact, None).unwrap(),
                "{plan:?} query {j}"
            );
        }
    }
    // A merge as large as the graph threshold is refused (it would need an FDE and a graph).
    let small = IndexParams {
        hnsw: chamfer_index::shard::HnswParams {
            min_docs: 100,
            ..params.hnsw.clone()
        },
        ..params.clone()
    };
    let order: Vec<(&Shard, u32)> = (0..100u32).map(|i| (&sa, i)).collect();
    assert!(matches!(
        Shard::write_merged(&path, &small, &order, &book, &|_| {}, &|| false),
        Err(IndexError::InvalidParam { .. })
    ));
    // Duplicate ids are refused.
    let twice = [(&sa, 0u32), (&sa, 0u32)];
    assert!(matches!(
        Shard::write_merged(&path, &params, &twice, &book, &|_| {}, &|| false),
        Err(IndexError::DuplicateId(_))
    ));
}
