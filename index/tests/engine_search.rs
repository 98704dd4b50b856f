//! Engine integration tests: search plans against exact ground truth (recall floors), filters, bad inputs.
//! Data: the bundled demo slice (`data/demo`) and the shared manpages set when present (`common`).
use std::path::Path;
use std::sync::Arc;

use chamfer_data::dataset::Dataset;
use chamfer_index::index_dir::{open_index, write_index};
use chamfer_index::search::{Plan, SearchParams, Searcher};
use chamfer_index::shard::{train_codebook, IndexParams, Shard, ShardDoc};
use chamfer_index::tokens::TokenMatrix;
use chamfer_index::IndexError;

mod common;
use common::*;

#[test]
fn demo_plans_meet_recall_floors_and_exact_matches_ground_truth() {
    let ds = demo();
    let dir = tempfile::tempdir().unwrap();
    write_index(dir.path(), &IndexParams::new(ds.dim()), &docs(&ds), &|_| {}).unwrap();
    let searcher = open_index(dir.path()).unwrap();
    assert_exact_matches_gt(&searcher, &ds);
    let scan = SearchParams {
        plan: Plan::FdeScan,
        rerank: Some(60),
        ..SearchParams::new(10)
    };
    // Shards with a codebook and no graph store no FDE (no default plan reads it): the FDE scan is measured on
    // an index without a codebook, which stores all of it.
    let no_codes = IndexParams {
        codebook_size: 0,
        ..IndexParams::new(ds.dim())
    };
    let fde_only = Searcher::new(
        no_codes.clone(),
        vec![Arc::new(
            Shard::build_in_memory(&no_codes, &docs(&ds)).unwrap(),
        )],
    )
    .unwrap();
    assert_eq!(fde_only.shards()[0].fde_dim(), no_codes.fde.output_dim());
    assert_eq!(searcher.shards()[0].fde_dim(), 0);
    let (_, stats) = searcher
        .search_with_stats(query(&ds, 0), &scan, None)
        .unwrap();
    assert_eq!(
        stats.plan,
        Some(Plan::CentroidScan),
        "falls back without FDEs"
    );
    let r = recall(&fde_only, &ds, &scan);
    assert!(
        r >= 0.95,
        "FDE scan recall@10 {r} with 60 of 300 documents re-ranked"
    );
    let codes = SearchParams {
        plan: Plan::CentroidScan,
        rerank: Some(30),
        ..SearchParams::new(10)
    };
    let r = recall(&searcher, &ds, &codes);
    assert!(
        r >= 0.97,
        "centroid scan recall@10 {r} with 30 of 300 documents re-ranked"
    );
    let (_, stats) = searcher
        .search_with_stats(query(&ds, 0), &SearchParams::new(10), None)
        .unwrap();
    assert_eq!(stats.plan, Some(Plan::CentroidScan));
    assert!(recall(&searcher, &ds, &SearchParams::new(10)) >= 0.99);
    // A collection no larger than the re-rank depth is searched exactly.
    let small = Searcher::new(
        searcher.params().clone(),
        vec![Arc::new(
            Shard::build_in_memory(searcher.params(), &docs(&ds)[..100]).unwrap(),
        )],
    )
    .unwrap();
    let (_, stats) = small
        .search_with_stats(query(&ds, 0), &SearchParams::new(10), None)
        .unwrap();
    assert_eq!((stats.plan, stats.reranked), (Some(Plan::Exact), 100));
}

#[test]
fn manpages_default_params_recall_floor() {
    let Some(ds) = manpages() else {
        eprintln!("skipped: ../shared/data/manpages not found");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    write_index(dir.path(), &IndexParams::new(ds.dim()), &docs(&ds), &|_| {}).unwrap();
    let searcher = open_index(dir.path()).unwrap();
    let r = recall(&searcher, &ds, &SearchParams::new(10));
    assert!(r >= 0.98, "manpages recall@10 at default parameters: {r}");
    assert_exact_matches_gt(&searcher, &ds);
}

#[test]
fn filters_and_multiple_shards() {
    let ds = demo();
    let params = IndexParams::new(ds.dim());
    let d = docs(&ds);
    let (a, b) = d.split_at(170);
    let shards = vec![
        Arc::new(Shard::build_in_memory(&params, a).unwrap()),
        Arc::new(Shard::build_in_memory(&params, b).unwrap()),
    ];
    let split = Searcher::new(params.clone(), shards).unwrap();
    let whole = Searcher::new(
        params.clone(),
        vec![Arc::new(Shard::build_in_memory(&params, &d).unwrap())],
    )
    .unwrap();
    let exact = SearchParams {
        plan: Plan::Exact,
        ..SearchParams::new(10)
    };
    for j in 0..ds.n_queries() {
        let h1: Vec<(usize, f32)> = split
            .search(query(&ds, j), &exact, None)
            .unwrap()
            .iter()
            .map(|h| (h.shard * 170 + h.doc, h.score))
            .collect();
        let h2: Vec<(usize, f32)> = whole
            .search(query(&ds, j), &exact, None)
            .unwrap()
            .iter()
            .map(|h| (h.doc, h.score))
            .collect();
        assert_eq!(h1, h2, "query {j}");
        // Only even documents: k results that all pass, with every plan.
        let even = |s: usize, doc: usize| (s * 170 + doc).is_multiple_of(2);
        for plan in [
            Plan::Exact,
            Plan::FdeScan,
            Plan::CentroidScan,
            Plan::Ivf,
            Plan::Auto,
        ] {
            let p = SearchParams {
                plan,
                rerank: Some(20),
                ..SearchParams::new(10)
            };
            let hits = split.search(query(&ds, j), &p, Some(&even)).unwrap();
            assert_eq!(hits.len(), 10);
            assert!(hits.iter().all(|h| even(h.shard, h.doc)));
        }
    }
    // Shards built with another FDE seed cannot be mixed in.
    let mut other = params.clone();
    other.fde.seed = 2;
    let s = Arc::new(Shard::build_in_memory(&other, a).unwrap());
    assert!(matches!(
        Searcher::new(params, vec![s]),
        Err(IndexError::Incompatible(_))
    ));
}

#[test]
fn bad_inputs_are_typed_errors() {
    let ds = demo();
    let params = IndexParams::new(ds.dim());
    let searcher = Searcher::new(
        params.clone(),
        vec![Arc::new(
            Shard::build_in_memory(&params, &docs(&ds)[..20]).unwrap(),
        )],
    )
    .unwrap();
    assert!(matches!(
        TokenMatrix::new(&[], 128, "document"),
        Err(IndexError::Empty { .. })
    ));
    let mut nan = ds.query_tokens(0).to_vec();
    nan[5] = f32::NAN;
    assert!(matches!(
        TokenMatrix::new(&nan, 128, "query"),
        Err(IndexError::NonFinite { token: 0, coord: 5 })
    ));
    assert!(matches!(
        TokenMatrix::new(&nan[..100], 128, "query"),
        Err(IndexError::DimensionMismatch { .. })
    ));
    let q64 = TokenMatrix::new(&ds.query_tokens(0)[..64], 64, "query").unwrap();
    assert!(matches!(
        searcher.search(q64, &SearchParams::new(10), None),
        Err(IndexError::DimensionMismatch {
            expected: 128,
            got: 64
        })
    ));
    for bad in [
        SearchParams::new(0),
        SearchParams {
            rerank: Some(0),
            ..SearchParams::new(5)
        },
        SearchParams::new(1_000_000),
        SearchParams {
            nprobe: Some(0),
            ..SearchParams::new(5)
        },
        SearchParams {
            nprobe: Some(chamfer_index::search::MAX_NPROBE + 1),
            ..SearchParams::new(5)
        },
    ] {
        assert!(matches!(
            searcher.search(query(&ds, 0), &bad, None),
            Err(IndexError::InvalidParam { .. })
        ));
    }
    // Documents: wrong dimension and duplicate ids.
    let t = TokenMatrix::new(&ds.doc_tokens(0)[..64], 64, "document").unwrap();
    let wrong = [ShardDoc {
        id: "x",
        tokens: t,
        payload: &[],
    }];
    assert!(matches!(
        Shard::build_in_memory(&params, &wrong),
        Err(IndexError::DimensionMismatch { .. })
    ));
    let d = docs(&ds);
    let dup = [
        d[0],
        ShardDoc {
            id: d[0].id,
            ..d[1]
        },
    ];
    assert!(matches!(
        Shard::build_in_memory(&params, &dup),
        Err(IndexError::DuplicateId(_))
    ));
    // Invalid index parameters.
    let mut p = params.clone();
    p.hnsw.prefix_repetitions = 99;
    assert!(matches!(p.validate(), Err(IndexError::InvalidConfig(_))));
    p = params.clone();
    p.hnsw.m = 1000;
    assert!(matches!(p.validate(), Err(IndexError::InvalidConfig(_))));
    // Data set folders.
    assert!(matches!(
        Dataset::open(Path::new("/nonexistent")),
        Err(chamfer_data::DataError::Dataset { .. })
    ));
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("doc_tokens.npy"), b"not numpy").unwrap();
    assert!(matches!(
        Dataset::open(dir.path()),
        Err(chamfer_data::DataError::Dataset { .. })
    ));
}

#[test]
fn ivf_plan_recall_floors_threads_and_shared_codebook() {
    let ds = demo();
    let params = IndexParams::new(ds.dim());
    let d = docs(&ds);
    let whole = Searcher::new(
        params.clone(),
        vec![Arc::new(Shard::build_in_memory(&params, &d).unwrap())],
    )
    .unwrap();
    // Default knobs, and a pruned setting where every stage cuts (few probes, few candidates, shallow re-rank).
    let ivf = SearchParams {
        plan: Plan::Ivf,
        ..SearchParams::new(10)
    };
    let r = recall(&whole, &ds, &ivf);
    assert!(r >= 0.99, "IVF recall@10 at default knobs: {r}");
    // The default probe count follows the codebook size, within its bounds.
    use chamfer_index::search::{default_nprobe, DEFAULT_NPROBE_MAX, DEFAULT_NPROBE_MIN};
    assert_eq!(default_nprobe(1 << 16), 64);
    assert_eq!(default_nprobe(1 << 15), 32);
    assert_eq!(default_nprobe(4096), DEFAULT_NPROBE_MIN);
    assert_eq!(default_nprobe(usize::MAX), DEFAULT_NPROBE_MAX);
    let pruned = SearchParams {
        plan: Plan::Ivf,
        nprobe: Some(2),
        candidates: Some(60),
        rerank: Some(20),
        ..SearchParams::new(10)
    };
    let r = recall(&whole, &ds, &pruned);
    assert!(
        r >= 0.9,
        "IVF recall@10, nprobe 2, 60 candidates, 20 re-ranked: {r}"
    );
    let (_, stats) = whole
        .search_with_stats(query(&ds, 0), &pruned, None)
        .unwrap();
    assert_eq!((stats.plan, stats.reranked), (Some(Plan::Ivf), 20));
    // Several threads for one query: the same hits and scores.
    let threaded = Searcher::new(params.clone(), whole.shards().to_vec())
        .unwrap()
        .with_search_threads(3)
        .unwrap();
    assert_eq!(threaded.search_threads(), 3);
    for plan in [Plan::Ivf, Plan::CentroidScan, Plan::Exact] {
        for p in [
            SearchParams {
                plan,
                ..SearchParams::new(10)
            },
            SearchParams {
                plan,
                ..pruned.clone()
            },
        ] {
            for j in 0..ds.n_queries() {
                assert_eq!(
                    whole.search(query(&ds, j), &p, None).unwrap(),
                    threaded.search(query(&ds, j), &p, None).unwrap(),
                    "{plan:?} query {j}"
                );
            }
        }
    }
    // One collection codebook for two shards: a document's approximate (centroid) score does not depend on the
    // split, and both shards hold the same codebook.
    let book = Arc::new(train_codebook(&params, &d, &|| false).unwrap().unwrap());
    let (a, b) = d.split_at(170);
    let sa = Shard::build_in_memory_with_codebook(&params, a, Some(book.clone())).unwrap();
    let sb = Shard::build_in_memory_with_codebook(&params, b, Some(book.clone())).unwrap();
    let sw = Shard::build_in_memory_with_codebook(&params, &d, Some(book.clone())).unwrap();
    for (i, doc) in (0..sb.len()).enumerate() {
        assert_eq!(sb.codes(doc), sw.codes(170 + i));
    }
    assert_eq!(sa.codes(3), sw.codes(3));
    assert_eq!(sa.codebook().unwrap(), &*book);
    let split = Searcher::new(params.clone(), vec![Arc::new(sa), Arc::new(sb)]).unwrap();
    let whole = Searcher::new(params.clone(), vec![Arc::new(sw)]).unwrap();
    let deep = SearchParams {
        plan: Plan::Ivf,
        rerank: Some(50),
        ..SearchParams::new(10)
    };
    for j in 0..ds.n_queries() {
        let h1: Vec<(usize, f32)> = split
            .search(query(&ds, j), &deep, None)
            .unwrap()
            .iter()
            .map(|h| (h.shard * 170 + h.doc, h.score))
            .collect();
        let h2: Vec<(usize, f32)> = whole
            .search(query(&ds, j), &deep, None)
            .unwrap()
            .iter()
            .map(|h| (h.doc, h.score))
            .collect();
        assert_eq!(h1, h2, "query {j}");
    }
    // A codebook of another dimension is refused.
    let other = Arc::new(chamfer_index::codebook::Codebook::from_centroids(
        4,
        vec![1.0, 0.0, 0.0, 0.0],
    ));
    assert!(matches!(
        Shard::build_in_memory_with_codebook(&params, a, Some(other)),
        Err(IndexError::DimensionMismatch { .. })
    ));
}

#[test]
fn manpages_ivf_recall_floor() {
    let Some(ds) = manpages() else {
        eprintln!("skipped: ../shared/data/manpages not found");
        return;
    };
    let params = IndexParams::new(ds.dim());
    let searcher = Searcher::new(
        params.clone(),
        vec![Arc::new(
            Shard::build_in_memory(&params, &docs(&ds)).unwrap(),
        )],
    )
    .unwrap();
    for (nprobe, candidates, floor) in [(None, None, 0.99), (Some(4), Some(512), 0.98)] {
        let p = SearchParams {
            plan: Plan::Ivf,
            nprobe,
            candidates,
            ..SearchParams::new(10)
        };
        let r = recall(&searcher, &ds, &p);
        assert!(
            r >= floor,
            "manpages IVF recall@10 {r} (nprobe {nprobe:?}, candidates {candidates:?})"
        );
    }
}
