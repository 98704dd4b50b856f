//! The search cancellation hook (`Searcher::search_with`): asked between stages, per shard and inside the exact
//! scans, and a search it stops answers `IndexError::Cancelled`.
use std::cell::Cell;
use std::path::Path;
use std::sync::Arc;

use chamfer_data::dataset::Dataset;
use chamfer_index::search::{Plan, SearchParams, Searcher, CANCEL_CHECK_EVERY};
use chamfer_index::shard::{IndexParams, Shard, ShardDoc};
use chamfer_index::tokens::TokenMatrix;
use chamfer_index::IndexError;

fn demo_searcher() -> (Dataset, Searcher) {
    let ds = Dataset::open(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/demo"))
        .expect("bundled demo data set");
    let ip = IndexParams::new(ds.dim());
    let docs: Vec<ShardDoc> = (0..ds.n_docs())
        .map(|i| ShardDoc {
            id: ds.doc_id(i),
            tokens: TokenMatrix::new(ds.doc_tokens(i), ds.dim(), "document").unwrap(),
            payload: &[],
        })
        .collect();
    let shard = Arc::new(Shard::build_in_memory(&ip, &docs).unwrap());
    let searcher = Searcher::new(ip, vec![shard]).unwrap();
    (ds, searcher)
}

#[test]
fn the_hook_stops_every_plan_and_never_cancelling_changes_nothing() {
    let (ds, searcher) = demo_searcher();
    assert!(
        ds.n_docs() > CANCEL_CHECK_EVERY,
        "the exact scan checks more than once"
    );
    let q = TokenMatrix::new(ds.query_tokens(0), ds.dim(), "query").unwrap();
    for plan in [
        Plan::Exact,
        Plan::Auto,
        Plan::CentroidScan,
        Plan::FdeScan,
        Plan::Ivf,
    ] {
        let p = SearchParams {
            plan,
            rerank: Some(64),
            ..SearchParams::new(10)
        };
        let plain = searcher.search(q, &p, None).unwrap();
        let asked = Cell::new(0usize);
        let never = searcher
            .search_with(q, &p, None, &|| {
                asked.set(asked.get() + 1);
                false
            })
            .unwrap();
        assert_eq!(
            plain, never,
            "{plan:?}: a hook that never cancels changes the results"
        );
        assert!(
            asked.get() >= 2,
            "{plan:?}: the hook was asked {} times",
            asked.get()
        );
        // Cancel at the last question the search asks: everything before it has run, the search still stops.
        let n = asked.get();
        let seen = Cell::new(0usize);
        let err = searcher
            .search_with(q, &p, None, &|| {
                seen.set(seen.get() + 1);
                seen.get() >= n
            })
            .unwrap_err();
        assert!(matches!(err, IndexError::Cancelled(_)), "{plan:?}: {err}");
        assert_eq!(
            seen.get(),
            n,
            "{plan:?}: the search stopped at the first yes"
        );
    }
}

#[test]
fn the_exhaustive_exact_plan_checks_inside_its_scan() {
    let (ds, searcher) = demo_searcher();
    let q = TokenMatrix::new(ds.query_tokens(1), ds.dim(), "query").unwrap();
    let p = SearchParams {
        plan: Plan::Exact,
        ..SearchParams::new(5)
    };
    let asked = Cell::new(0usize);
    searcher
        .search_with(q, &p, None, &|| {
            asked.set(asked.get() + 1);
            false
        })
        .unwrap();
    // Once per shard (1), once per CANCEL_CHECK_EVERY documents of the scan, once before the re-rank stage.
    let expected = 1 + ds.n_docs().div_ceil(CANCEL_CHECK_EVERY) + 1;
    assert_eq!(asked.get(), expected);
}
