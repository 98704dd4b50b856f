//! Shard round trips, damage detection, bounds and cancellation.
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use super::writer::{encode_batch_docs, ENCODE_BATCH};
use super::*;
use crate::fde::MAX_FDE_DIMENSION;
use crate::search::{Plan, SearchParams, Searcher};

fn small_params(dim: usize) -> IndexParams {
    let mut p = IndexParams::new(dim);
    p.fde.num_repetitions = 2;
    p.fde.num_simhash_projections = 2;
    p.fde.projection_dimension = 4;
    p.hnsw.prefix_repetitions = 1;
    p.codebook_size = 0;
    p
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn every_limit_is_named_in_its_error_and_defaults_are_valid() {
    IndexParams::new(128).validate().unwrap();
    IndexParams::new(crate::fde::MAX_TOKEN_DIMENSION)
        .validate()
        .unwrap();
    let mut at_max = IndexParams::new(128);
    at_max.codebook_size = MAX_CODEBOOK_SIZE;
    at_max.hnsw.m = MAX_HNSW_M;
    at_max.hnsw.ef_construction = MAX_EF_CONSTRUCTION;
    at_max.hnsw.min_docs = MAX_MIN_DOCS;
    at_max.hnsw.prefix_repetitions = at_max.fde.num_repetitions;
    at_max.validate().unwrap();
    type Edit = fn(&mut IndexParams);
    let cases: [(Edit, &str, &str, String); 6] = [
        (|p| p.hnsw.m = 129, "hnsw m", "129", MAX_HNSW_M.to_string()),
        (
            |p| p.hnsw.ef_construction = 5000,
            "ef_construction",
            "5000",
            MAX_EF_CONSTRUCTION.to_string(),
        ),
        (
            |p| p.codebook_size = 70000,
            "codebook_size",
            "70000",
            MAX_CODEBOOK_SIZE.to_string(),
        ),
        (
            |p| p.hnsw.min_docs = usize::MAX,
            "min_docs",
            "18446744073709551615",
            MAX_MIN_DOCS.to_string(),
        ),
        (
            |p| p.hnsw.prefix_repetitions = 21,
            "prefix_repetitions",
            "21",
            "20".into(),
        ),
        (
            |p| p.fde.num_repetitions = 8192,
            "num_repetitions",
            "8192",
            crate::fde::MAX_REPETITIONS.to_string(),
        ),
    ];
    for (edit, field, value, limit) in cases {
        let mut p = IndexParams::new(128);
        edit(&mut p);
        match p.validate() {
            Err(IndexError::InvalidConfig(msg)) => assert!(
                msg.contains(field) && msg.contains(value) && msg.contains(&limit),
                "{msg}"
            ),
            other => panic!("{field}: {other:?}"),
        }
    }
}

/// The encode scratch is bounded by its byte budget for every allowed FDE size, and the default batch is
/// unchanged.
#[test]
fn encode_batches_fit_the_scratch_budget() {
    assert_eq!(encode_batch_docs(10240), ENCODE_BATCH);
    for fde_dim in [1, 7, 10240, 65536, MAX_FDE_DIMENSION, usize::MAX / 2] {
        let n = encode_batch_docs(fde_dim);
        assert!((1..=ENCODE_BATCH).contains(&n), "{fde_dim}: {n}");
        if fde_dim <= MAX_FDE_DIMENSION {
            assert!(n * fde_dim * 4 <= ENCODE_SCRATCH_BYTES, "{fde_dim}: {n}");
        }
    }
    assert_eq!(encode_batch_docs(MAX_FDE_DIMENSION), 128);
}

/// Tokens at the very edge of f16 (+-65504, and 60000), many per document: the FDE blocks (sums of 8
/// projected coordinates) overflow f16 unless saturated, and the graph's prefix scale would be infinite
/// (written as JSON null, an unreadable shard). The written shard must re-open, be finite, and search.
#[test]
fn extreme_in_range_tokens_write_reopen_and_search() {
    let dim = 8;
    let mut params = IndexParams::new(dim);
    params.hnsw.min_docs = 1; // build the graph too: it is scaled by the prefix scale
    let docs_data: Vec<Vec<f32>> = (0..12)
        .map(|d| {
            let n = if d == 0 {
                MAX_DOC_TOKENS.min(2048)
            } else {
                1 + d * 37
            };
            (0..n * dim)
                .map(|i| match (i * 31 + d * 7) % 5 {
                    0 => MAX_TOKEN_VALUE,
                    1 => -MAX_TOKEN_VALUE,
                    2 => 60000.0,
                    3 => -60000.0,
                    _ => 0.5,
                })
                .collect()
        })
        .collect();
    let ids: Vec<String> = (0..docs_data.len()).map(|d| format!("d{d}")).collect();
    let docs: Vec<ShardDoc<'_>> = docs_data
        .iter()
        .zip(&ids)
        .map(|(t, id)| ShardDoc {
            id,
            tokens: TokenMatrix::new(t, dim, "document").unwrap(),
            payload: b"",
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.shard");
    Shard::write(&path, &params, &docs, &|_| {}).unwrap();
    let shard = Shard::open(&path).unwrap();
    assert!(shard.graph().is_some());
    assert!(
        shard.prefix_scale().is_finite() && shard.prefix_scale() > 0.0,
        "{}",
        shard.prefix_scale()
    );
    assert!(shard.fdes().iter().all(|v| v.is_finite()));
    // Saturation really happened (this data overflows f16 without it).
    assert!(shard
        .fdes()
        .iter()
        .any(|v| v.to_f32().abs() == MAX_TOKEN_VALUE));
    assert_eq!(shard.tokens(0), docs_data[0]);
    let searcher = Searcher::new(params, vec![Arc::new(shard)]).unwrap();
    let q = TokenMatrix::new(&docs_data[3][..2 * dim], dim, "query").unwrap();
    for plan in [Plan::Exact, Plan::Hnsw, Plan::FdeScan, Plan::CentroidScan] {
        let mut p = SearchParams::new(5);
        p.plan = plan;
        let hits = searcher.search(q, &p, None).unwrap();
        assert_eq!(hits.len(), 5, "{plan:?}");
        assert!(hits.iter().all(|h| h.score.is_finite()), "{plan:?}");
    }
    // The in-memory twin agrees.
    let mem = Shard::build_in_memory(searcher.params(), &docs).unwrap();
    assert!(mem.prefix_scale().is_finite());
}

#[test]
fn too_many_tokens_in_a_document_is_refused() {
    let dim = 1;
    let data = vec![0.25f32; MAX_DOC_TOKENS + 1];
    let docs = [ShardDoc {
        id: "a",
        tokens: TokenMatrix::new(&data, dim, "document").unwrap(),
        payload: b"",
    }];
    assert!(matches!(
        Shard::build_in_memory(&small_params(dim), &docs),
        Err(IndexError::TooManyTokens { .. })
    ));
}

/// Cancelled after the first encode batch: Cancelled, only one batch encoded, nothing left in the folder.
#[test]
fn cancelled_write_stops_after_the_first_batch_and_leaves_nothing() {
    let dim = 4;
    let n = ENCODE_BATCH + 50;
    let data: Vec<f32> = (0..n * dim).map(|i| (i % 13) as f32 - 6.0).collect();
    let ids: Vec<String> = (0..n).map(|d| format!("d{d}")).collect();
    let docs: Vec<ShardDoc<'_>> = (0..n)
        .map(|d| ShardDoc {
            id: &ids[d],
            tokens: TokenMatrix::new(&data[d * dim..(d + 1) * dim], dim, "document").unwrap(),
            payload: b"p",
        })
        .collect();
    let params = small_params(dim);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s1.shard");
    let encoded = AtomicU64::new(0);
    let err = Shard::write_cancellable(
        &path,
        &params,
        &docs,
        &|k| {
            encoded.fetch_add(k, Ordering::SeqCst);
        },
        &|| encoded.load(Ordering::SeqCst) > 0,
    )
    .unwrap_err();
    assert!(matches!(err, IndexError::Cancelled(_)), "{err:?}");
    assert_eq!(encoded.load(Ordering::SeqCst), ENCODE_BATCH as u64);
    assert_eq!(files_in(dir.path()), Vec::<String>::new());
    // Never cancelled: the same call writes a shard that opens.
    Shard::write_cancellable(&path, &params, &docs, &|_| {}, &|| false).unwrap();
    assert_eq!(Shard::open(&path).unwrap().len(), n);
}

/// Runs `write` cancelled at its first, second, ... cancellation check until it completes; every cancelled run
/// must leave `dir` empty. Returns the number of checks (cancelled runs).
fn cancel_at_every_checkpoint(
    dir: &Path,
    write: impl Fn(&dyn Fn() -> bool) -> Result<()>,
) -> usize {
    for stop_at in 0.. {
        let calls = AtomicUsize::new(0);
        match write(&|| calls.fetch_add(1, Ordering::SeqCst) >= stop_at) {
            Err(IndexError::Cancelled(_)) => {
                assert_eq!(files_in(dir), Vec::<String>::new(), "{stop_at}");
            }
            Ok(()) => return stop_at,
            Err(e) => panic!("{e}"),
        }
    }
    unreachable!("an unbounded range")
}

/// Every cancellation point (each encode batch, the codebook, the graph build, the file, the rename) leaves
/// the folder as it was, graph files included.
#[test]
fn cancelled_at_every_checkpoint_leaves_nothing() {
    let dim = 4;
    let n = 40;
    let data: Vec<f32> = (0..n * dim).map(|i| ((i * 7) % 11) as f32 - 5.0).collect();
    let ids: Vec<String> = (0..n).map(|d| format!("d{d}")).collect();
    let docs: Vec<ShardDoc<'_>> = (0..n)
        .map(|d| ShardDoc {
            id: &ids[d],
            tokens: TokenMatrix::new(&data[d * dim..(d + 1) * dim], dim, "document").unwrap(),
            payload: b"",
        })
        .collect();
    let mut params = small_params(dim);
    params.hnsw.min_docs = 1;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s2.shard");
    let checkpoints = cancel_at_every_checkpoint(dir.path(), |cancel| {
        Shard::write_cancellable(&path, &params, &docs, &|_| {}, cancel)
    });
    // One batch, codebook, graph, file, rename.
    assert_eq!(checkpoints, 5);
    let shard = Shard::open(&path).unwrap();
    assert!(shard.graph().is_some());
}

/// A merge that re-assigns codes (its sources use another codebook) can be cancelled between groups of
/// assignment runs, not only before and after them, and every cancellation point leaves the folder as it was.
#[test]
fn cancelled_merge_stops_while_assigning_and_leaves_nothing() {
    let dim = 4;
    let n = 2500; // three groups of assignment runs
    let data: Vec<f32> = (0..n * dim)
        .map(|i| ((i * 7919) % 23) as f32 - 11.0)
        .collect();
    let ids: Vec<String> = (0..n).map(|d| format!("d{d}")).collect();
    let docs: Vec<ShardDoc<'_>> = (0..n)
        .map(|d| ShardDoc {
            id: &ids[d],
            tokens: TokenMatrix::new(&data[d * dim..(d + 1) * dim], dim, "document").unwrap(),
            payload: b"",
        })
        .collect();
    let mut params = small_params(dim);
    params.codebook_size = 8;
    params.hnsw.min_docs = 100_000;
    let dir = tempfile::tempdir().unwrap();
    let source = Shard::build_in_memory(&params, &docs).unwrap();
    let other = Arc::new(Codebook::train(&data, dim, 16, 5));
    let picked: Vec<(&Shard, u32)> = (0..n as u32).map(|d| (&source, d)).collect();
    let path = dir.path().join("m.shard");
    let checkpoints = cancel_at_every_checkpoint(dir.path(), |cancel| {
        Shard::write_merged(&path, &params, &picked, &other, &|_| {}, cancel)
    });
    // Before the codes, between the three groups of runs (two), then the three of writing the file.
    assert_eq!(checkpoints, 6);
    let merged = Shard::open(&path).unwrap();
    assert_eq!(merged.len(), n);
    assert_eq!(merged.codebook().unwrap().centroids(), other.centroids());
}

/// A tokens-only shard of f16 documents is byte for byte the one the f32 path makes of the same values, and its
/// documents are checked as f32 ones are (non-finite values, ragged or empty tokens, duplicate or empty ids).
#[test]
fn tokens_only_f16_shards_match_the_f32_path_and_check_their_input() {
    let dim = 5;
    let params = small_params(dim);
    let values: Vec<Vec<f32>> = (0..7usize)
        .map(|d| {
            (0..(d * 7 % 20 + 1) * dim)
                .map(|i| f16::from_f32(((d * 31 + i) as f32 * 0.7).sin() * 4.0).to_f32())
                .collect()
        })
        .collect();
    let halves: Vec<Vec<f16>> = values
        .iter()
        .map(|v| v.iter().map(|&x| f16::from_f32(x)).collect())
        .collect();
    let ids: Vec<String> = (0..values.len()).map(|d| format!("doc-{d}")).collect();
    let f32_docs: Vec<ShardDoc<'_>> = values
        .iter()
        .zip(&ids)
        .map(|(v, id)| ShardDoc {
            id,
            tokens: TokenMatrix::new(v, dim, "document").unwrap(),
            payload: id.as_bytes(),
        })
        .collect();
    let half_docs: Vec<HalfDoc<'_>> = halves
        .iter()
        .zip(&ids)
        .map(|(v, id)| HalfDoc {
            id,
            dim,
            tokens: v,
            payload: id.as_bytes(),
        })
        .collect();
    let want = Shard::build_in_memory_coded(&params, &f32_docs, Coding::TokensOnly).unwrap();
    let got = Shard::build_in_memory_tokens_f16(&params, &half_docs).unwrap();
    assert_eq!(got.bytes.as_slice(), want.bytes.as_slice());
    assert_eq!(got.tokens(6), values[6]);

    let bad = |tokens: &[f16], d: usize, id: &str| {
        let mut docs = half_docs[..2].to_vec();
        docs.push(HalfDoc {
            id,
            dim: d,
            tokens,
            payload: &[],
        });
        Shard::build_in_memory_tokens_f16(&params, &docs).unwrap_err()
    };
    let mut nan = halves[2].clone();
    nan[dim + 2] = f16::NAN;
    assert!(matches!(
        bad(&nan, dim, "x"),
        IndexError::NonFinite { token: 1, coord: 2 }
    ));
    let mut inf = halves[2].clone();
    inf[3] = f16::NEG_INFINITY;
    assert!(matches!(
        bad(&inf, dim, "x"),
        IndexError::NonFinite { token: 0, coord: 3 }
    ));
    // The largest finite f16 is a valid token value.
    let mut max = halves[2].clone();
    max[0] = f16::MAX;
    let mut docs = half_docs.clone();
    docs[0].tokens = &max;
    Shard::build_in_memory_tokens_f16(&params, &docs).unwrap();
    assert!(matches!(
        bad(&halves[2][..dim + 1], dim, "x"),
        IndexError::DimensionMismatch {
            expected: 5,
            got: 1
        }
    ));
    assert!(matches!(
        bad(&[], dim, "x"),
        IndexError::Empty { what: "document" }
    ));
    assert!(matches!(
        bad(&halves[2][..4], 4, "x"),
        IndexError::DimensionMismatch {
            expected: 5,
            got: 4
        }
    ));
    assert!(matches!(
        bad(&halves[2], dim, "doc-1"),
        IndexError::DuplicateId(_)
    ));
    assert!(matches!(
        bad(&halves[2], dim, ""),
        IndexError::InvalidParam { name: "id", .. }
    ));
}
