//! Engine integration tests (one binary for the crate): shard files, search plans against exact ground truth,
//! bad inputs. Data: the bundled demo slice (`data/demo`) and the shared manpages set when present.
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chamfer_data::dataset::Dataset;
use chamfer_data::eval::recall_at_k;
use chamfer_index::index_dir::{open_index, write_index, write_index_from, DocBatch, DocSource};
use chamfer_index::search::{Plan, SearchParams, Searcher};
use chamfer_index::shard::{train_codebook, Coding, IndexParams, Shard, ShardDoc};
use chamfer_index::tokens::TokenMatrix;
use chamfer_index::IndexError;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn demo() -> Dataset {
    Dataset::open(&root().join("data/demo")).expect("bundled demo data set")
}

/// The shared manpages set (`../shared/data/manpages`). When it is missing the tests that need it fail in CI
/// (`CI` set, as `.ci/run` does) and say SKIPPED loudly elsewhere.
#[allow(clippy::disallowed_methods)] // a test reads CI; the library never reads the environment
fn manpages() -> Option<Dataset> {
    let p = root().join("../shared/data/manpages");
    if !p.exists() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI: the manpages data set {} is missing (data-dependent tests fail in CI instead of skipping)",
            p.display()
        );
        eprintln!("SKIPPED (not in CI): {} not found", p.display());
        return None;
    }
    Some(Dataset::open(&p).expect("shared manpages data set"))
}

fn docs(ds: &Dataset) -> Vec<ShardDoc<'_>> {
    (0..ds.n_docs())
        .map(|i| ShardDoc {
            id: ds.doc_id(i),
            tokens: TokenMatrix::new(ds.doc_tokens(i), ds.dim(), "document").unwrap(),
            payload: &[],
        })
        .collect()
}

fn query(ds: &Dataset, j: usize) -> TokenMatrix<'_> {
    TokenMatrix::new(ds.query_tokens(j), ds.dim(), "query").unwrap()
}

/// Mean recall@10 of `searcher` (one shard in data set order) against the data set's exact ground truth.
fn recall(searcher: &Searcher, ds: &Dataset, p: &SearchParams) -> f64 {
    let total: f64 = (0..ds.n_queries())
        .map(|j| {
            let hits = searcher.search(query(ds, j), p, None).unwrap();
            let rows: Vec<usize> = hits.iter().map(|h| h.doc).collect();
            recall_at_k(&rows, ds.gt_ids(j).unwrap(), 10)
        })
        .sum();
    total / ds.n_queries() as f64
}

/// Exact search must return the ground truth top-10, up to near-ties (scores within 1e-4).
fn assert_exact_matches_gt(searcher: &Searcher, ds: &Dataset) {
    let p = SearchParams {
        plan: Plan::Exact,
        ..SearchParams::new(10)
    };
    for j in 0..ds.n_queries() {
        let hits = searcher.search(query(ds, j), &p, None).unwrap();
        let gt = ds.gt_ids(j).unwrap();
        let gs = ds.gt_scores(j).unwrap();
        for (r, h) in hits.iter().enumerate() {
            assert!(
                (h.score - gs[r]).abs() < 1e-4,
                "query {j} rank {r}: score {} vs ground truth {}",
                h.score,
                gs[r]
            );
            if h.doc != gt[r] as usize {
                let tie = gs
                    .iter()
                    .zip(gt)
                    .any(|(&s, &g)| g as usize == h.doc && (s - h.score).abs() < 1e-4);
                assert!(
                    tie,
                    "query {j} rank {r}: doc {} is not a near-tie of ground truth {}",
                    h.doc, gt[r]
                );
            }
        }
    }
}

#[test]
fn shard_round_trip_preserves_everything() {
    let ds = demo();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.chs");
    let params = IndexParams::new(ds.dim());
    let mut d = docs(&ds);
    let payloads: Vec<Vec<u8>> = (0..d.len())
        .map(|i| format!("{{\"n\":{i}}}").into_bytes())
        .collect();
    for (doc, p) in d.iter_mut().zip(&payloads) {
        doc.payload = p;
    }
    Shard::write(&path, &params, &d, &|_| {}).unwrap();
    let shard = Shard::open(&path).unwrap();
    let mem = Shard::build_in_memory(&params, &d).unwrap();
    assert_eq!(shard.len(), ds.n_docs());
    assert_eq!(shard.params(), &params);
    let enc = chamfer_index::fde::FdeEncoder::new(params.fde.clone()).unwrap();
    for i in (0..ds.n_docs()).step_by(7) {
        assert_eq!(shard.id(i), ds.doc_id(i));
        assert_eq!(shard.payload(i), payloads[i].as_slice());
        // The data set's tokens are float16 already, so the stored f16 copy is exact.
        assert_eq!(shard.tokens(i), ds.doc_tokens(i));
        assert_eq!(shard.fde(i), mem.fde(i));
        let want = enc.encode_document(d[i].tokens).unwrap();
        for (a, b) in shard.fde(i).iter().zip(&want) {
            assert!((a.to_f32() - b).abs() <= 1e-3 * b.abs().max(1.0));
        }
    }
    // No temp file is left behind.
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec!["s.chs".to_string()]);
}

#[test]
fn corrupt_or_truncated_shards_are_errors() {
    let ds = demo();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.chs");
    Shard::write(
        &path,
        &IndexParams::new(ds.dim()),
        &docs(&ds)[..40],
        &|_| {},
    )
    .unwrap();
    let good = std::fs::read(&path).unwrap();
    let bad = dir.path().join("bad.chs");
    let open_bytes = |bytes: &[u8]| {
        std::fs::write(&bad, bytes).unwrap();
        Shard::open(&bad)
    };
    for cut in [0, 10, 64, good.len() / 2, good.len() - 1] {
        assert!(
            matches!(open_bytes(&good[..cut]), Err(IndexError::Corrupt { .. })),
            "truncated at {cut}"
        );
    }
    // A flipped bit anywhere (sections, metadata, footer) is caught.
    for pos in [
        100,
        good.len() / 3,
        good.len() / 2,
        good.len() - 30,
        good.len() - 5,
    ] {
        let mut b = good.clone();
        b[pos] ^= 0x10;
        assert!(
            matches!(open_bytes(&b), Err(IndexError::Corrupt { .. })),
            "bit flip at {pos}"
        );
    }
    let mut b = good.clone();
    b[8] = 99;
    assert!(matches!(
        open_bytes(&b),
        Err(IndexError::UnsupportedVersion { found: 99, .. })
    ));
    assert!(matches!(
        Shard::open(&dir.path().join("missing.chs")),
        Err(IndexError::Io { .. })
    ));
    assert!(Shard::open(&path).is_ok());
}

#[test]
fn graph_is_persisted_reloaded_and_verified() {
    let ds = demo();
    let dir = tempfile::tempdir().unwrap();
    let mut params = IndexParams::new(ds.dim());
    params.hnsw.min_docs = 1;
    write_index(dir.path(), &params, &docs(&ds), &|_| {}).unwrap();
    let searcher = open_index(dir.path()).unwrap();
    assert!(searcher.shards()[0].graph().is_some());
    assert_eq!(
        searcher.shards()[0].fde_dim(),
        params.prefix_dim(params.hnsw.prefix_repetitions),
        "a graph shard with a codebook stores the graph's prefix only"
    );
    let p = SearchParams {
        plan: Plan::Hnsw,
        rerank: Some(100),
        ..SearchParams::new(10)
    };
    let r = recall(&searcher, &ds, &p);
    assert!(r >= 0.97, "HNSW plan recall@10 {r} on the demo set");
    drop(searcher);
    // A damaged or missing graph file is a clear error, not a process exit.
    let graph = dir.path().join("shard-00000.hnsw.graph");
    let mut g = std::fs::read(&graph).unwrap();
    let mid = g.len() / 2;
    g[mid] ^= 1;
    std::fs::write(&graph, &g).unwrap();
    assert!(matches!(
        open_index(dir.path()),
        Err(IndexError::Corrupt { .. })
    ));
    std::fs::remove_file(&graph).unwrap();
    assert!(matches!(
        open_index(dir.path()),
        Err(IndexError::Corrupt { .. })
    ));
}

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

/// Offset and length of section `name` of a shard file (from the metadata JSON before the 24-byte footer).
fn section(bytes: &[u8], name: &str) -> (usize, usize) {
    let end = bytes.len() - 24;
    let len = u64::from_le_bytes(bytes[end..end + 8].try_into().unwrap()) as usize;
    let meta: serde_json::Value = serde_json::from_slice(&bytes[end - len..end]).unwrap();
    let s = meta["sections"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap();
    (
        s["offset"].as_u64().unwrap() as usize,
        s["len"].as_u64().unwrap() as usize,
    )
}

#[test]
fn inverted_file_round_trips_and_damage_is_refused() {
    let ds = demo();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.chs");
    let d = docs(&ds);
    Shard::write(&path, &IndexParams::new(ds.dim()), &d, &|_| {}).unwrap();
    let shard = Shard::open(&path).unwrap();
    assert!(shard.has_ivf());
    let book = shard.codebook().unwrap();
    // Every (document, code) pair is in the postings, and the postings hold nothing else.
    let mut pairs = 0;
    for doc in 0..shard.len() {
        let mut codes = shard.codes(doc).to_vec();
        codes.sort_unstable();
        codes.dedup();
        for &c in &codes {
            assert!(shard
                .postings(c as usize)
                .binary_search(&(doc as u32))
                .is_ok());
        }
        pairs += codes.len();
    }
    let listed: usize = (0..book.len()).map(|c| shard.postings(c).len()).sum();
    assert_eq!(listed, pairs);
    assert!(shard.postings(book.len()).is_empty(), "out of range: empty");
    // A flipped byte in the postings is a checksum error naming the section.
    let good = std::fs::read(&path).unwrap();
    let (off, len) = section(&good, "ivf_docs");
    let bad = dir.path().join("bad.chs");
    let mut b = good.clone();
    b[off + len / 2] ^= 0x01;
    std::fs::write(&bad, &b).unwrap();
    let err = Shard::open(&bad).unwrap_err();
    assert!(
        matches!(&err, IndexError::Corrupt { reason, .. } if reason.contains("ivf_docs")),
        "{err}"
    );
    // Postings out of order behind valid checksums are refused by the structural check.
    let mut b = good.clone();
    b[off..off + 8].copy_from_slice(&[5, 0, 0, 0, 1, 0, 0, 0]);
    let resealed = chamfer_index::fuzzing::reseal(&b).unwrap();
    std::fs::write(&bad, &resealed).unwrap();
    let err = Shard::open(&bad).unwrap_err();
    assert!(
        matches!(&err, IndexError::Corrupt { reason, .. } if reason.contains("inverted")),
        "{err}"
    );
    // A damaged codebook section is refused too.
    let (off, _) = section(&good, "codebook");
    let mut b = good.clone();
    b[off + 8] = 7;
    std::fs::write(&bad, chamfer_index::fuzzing::reseal(&b).unwrap()).unwrap();
    assert!(matches!(Shard::open(&bad), Err(IndexError::Corrupt { .. })));
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

/// The demo set as a [`DocSource`] (what `chamfer bench` does with a token file read on demand).
struct DemoSource(Dataset);

impl DocSource for DemoSource {
    fn len(&self) -> usize {
        self.0.n_docs()
    }
    fn n_tokens(&self) -> usize {
        self.0.n_doc_tokens()
    }
    fn read(
        &self,
        range: std::ops::Range<usize>,
        batch: &mut DocBatch,
    ) -> chamfer_index::Result<()> {
        *batch = DocBatch::default();
        for i in range {
            batch.ids.push(self.0.doc_id(i).to_string());
            batch.tokens.extend_from_slice(self.0.doc_tokens(i));
            batch.lens.push(self.0.doc_tokens(i).len() / self.0.dim());
        }
        Ok(())
    }
}

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

/// `open_deferred` skips only the token section's checksum: a flipped bit there opens, and
/// `verify_deferred` (kept outcome) reports it; `open` refuses it at once; a flip elsewhere is refused by both.
#[test]
fn deferred_verification_finds_token_damage() {
    let ds = demo();
    let params = IndexParams::new(ds.dim());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.shard");
    Shard::write(&path, &params, &docs(&ds), &|_| {}).unwrap();
    let ok = Shard::open_deferred(&path).unwrap();
    assert!(ok.verification_pending());
    ok.verify_deferred().unwrap();
    assert!(!ok.verification_pending());
    assert!(!Shard::open(&path).unwrap().verification_pending());
    let clean = std::fs::read(&path).unwrap();
    let mut b = clean.clone();
    b[64 + 17] ^= 0x08;
    std::fs::write(&path, &b).unwrap();
    assert!(matches!(
        Shard::open(&path),
        Err(IndexError::Corrupt { .. })
    ));
    let s = Shard::open_deferred(&path).unwrap();
    for _ in 0..2 {
        let e = s.verify_deferred().unwrap_err();
        assert!(e.to_string().contains("tokens"), "{e}");
    }
    // The metadata (end of file) is checked either way.
    let mut b = clean;
    let at = b.len() - 40;
    b[at] ^= 0x01;
    std::fs::write(&path, &b).unwrap();
    assert!(Shard::open_deferred(&path).is_err());
}
