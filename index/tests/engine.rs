//! Engine integration tests: shard files (round trip, damage, graph files, inverted file, deferred verification).
//! Data: the bundled demo slice (`data/demo`) and the shared manpages set when present (`common`).
use chamfer_index::index_dir::{open_index, write_index};
use chamfer_index::search::{Plan, SearchParams};
use chamfer_index::shard::{IndexParams, Shard};
use chamfer_index::IndexError;

mod common;
use common::*;

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
