//! Helpers shared by the engine test binaries: the bundled and shared data sets, documents and queries of a
//! data set, recall against its ground truth, shard-file sections. Each binary uses some of them.
#![allow(dead_code)]
use std::path::{Path, PathBuf};

use chamfer_data::dataset::Dataset;
use chamfer_data::eval::recall_at_k;
use chamfer_index::index_dir::{DocBatch, DocSource};
use chamfer_index::search::{Plan, SearchParams, Searcher};
use chamfer_index::shard::ShardDoc;
use chamfer_index::tokens::TokenMatrix;

pub(crate) fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

pub(crate) fn demo() -> Dataset {
    Dataset::open(&root().join("data/demo")).expect("bundled demo data set")
}

/// The shared manpages set (`../shared/data/manpages`). When it is missing the tests that need it fail in CI
/// (`CI` set, as `.ci/run` does) and say SKIPPED loudly elsewhere.
#[allow(clippy::disallowed_methods)] // a test reads CI; the library never reads the environment
pub(crate) fn manpages() -> Option<Dataset> {
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

pub(crate) fn docs(ds: &Dataset) -> Vec<ShardDoc<'_>> {
    (0..ds.n_docs())
        .map(|i| ShardDoc {
            id: ds.doc_id(i),
            tokens: TokenMatrix::new(ds.doc_tokens(i), ds.dim(), "document").unwrap(),
            payload: &[],
        })
        .collect()
}

pub(crate) fn query(ds: &Dataset, j: usize) -> TokenMatrix<'_> {
    TokenMatrix::new(ds.query_tokens(j), ds.dim(), "query").unwrap()
}

/// Mean recall@10 of `searcher` (one shard in data set order) against the data set's exact ground truth.
pub(crate) fn recall(searcher: &Searcher, ds: &Dataset, p: &SearchParams) -> f64 {
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
pub(crate) fn assert_exact_matches_gt(searcher: &Searcher, ds: &Dataset) {
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

/// Offset and length of section `name` of a shard file (from the metadata JSON before the 24-byte footer).
pub(crate) fn section(bytes: &[u8], name: &str) -> (usize, usize) {
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

/// The demo set as a [`DocSource`] (what `chamfer bench` does with a token file read on demand).
pub(crate) struct DemoSource(pub(crate) Dataset);

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
