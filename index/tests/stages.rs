//! Search as stages: the stages called on their own (local candidates, exact re-rank of chosen documents) give
//! exactly `Searcher::search`'s answer for every plan, also in two rounds over two searchers that split the
//! shards; equal scores are ordered by the global key (shard key, document), not by positions in lists.
use std::sync::Arc;

use chamfer_data::dataset::Dataset;
use chamfer_index::search::{DocKey, LocalCandidates, Plan, SearchParams, Searcher};
use chamfer_index::shard::{train_codebook, Coding, IndexParams, Shard};
use chamfer_index::tokens::TokenMatrix;

mod common;
use common::{demo, docs, query};

/// The search, by global key.
fn searched(s: &Searcher, q: TokenMatrix<'_>, p: &SearchParams) -> Vec<(DocKey, f32)> {
    s.search(q, p, None)
        .unwrap()
        .iter()
        .map(|h| (s.doc_key(h), h.score))
        .collect()
}

/// The same search from the stages: candidates of every searcher in `nodes`, merged; the chosen documents
/// re-ranked by the searcher that holds them; the best `k`.
fn staged(nodes: &[&Searcher], q: TokenMatrix<'_>, p: &SearchParams) -> Vec<(DocKey, f32)> {
    let parts: Vec<LocalCandidates> = nodes
        .iter()
        .map(|s| s.local_candidates(q, p, None, &|| false).unwrap())
        .collect();
    let all = LocalCandidates::merge(parts).unwrap();
    let chosen = all.to_rerank();
    let mut reranked = Vec::new();
    for s in nodes {
        let mine: Vec<DocKey> = chosen
            .iter()
            .copied()
            .filter(|k| s.shard_position(k.shard).is_some())
            .collect();
        let hits = s.rerank_exact(q, &mine, &|| false).unwrap();
        assert_eq!(hits.len(), mine.len());
        reranked.extend(hits.iter().map(|h| (s.doc_key(h), h.score)));
    }
    all.finish(&reranked)
}

/// Three shards of the demo set under one codebook, keyed 30, 10, 20 (so key order is not list order).
fn keyed_shards(ds: &Dataset, params: &IndexParams) -> Vec<Arc<Shard>> {
    let d = docs(ds);
    let book = train_codebook(params, &d, &|| false).unwrap().map(Arc::new);
    let third = d.len() / 3;
    let parts = [&d[..third], &d[third..2 * third], &d[2 * third..]];
    parts
        .iter()
        .zip([30u64, 10, 20])
        .map(|(part, key)| {
            let coding = match &book {
                Some(codebook) => Coding::Given {
                    codebook,
                    known: None,
                },
                None => Coding::Train,
            };
            let s = Shard::build_in_memory_coded(params, part, coding).unwrap();
            s.set_key(key).unwrap();
            Arc::new(s)
        })
        .collect()
}

#[test]
fn stages_compose_to_the_search_for_every_plan() {
    let ds = demo();
    let with_book = IndexParams::new(ds.dim());
    let without_book = IndexParams {
        codebook_size: 0,
        ..IndexParams::new(ds.dim())
    };
    for params in [with_book, without_book] {
        let shards = keyed_shards(&ds, &params);
        let one = Searcher::new(params.clone(), shards.clone()).unwrap();
        assert_eq!(one.shard_key(0), 30);
        assert_eq!(one.shard_position(10), Some(1));
        for threads in [1, 2] {
            let one = one.with_shards(shards.clone()).unwrap();
            let one = one.with_search_threads(threads).unwrap();
            for plan in [
                Plan::Auto,
                Plan::Exact,
                Plan::FdeScan,
                Plan::CentroidScan,
                Plan::Ivf,
                Plan::Hnsw,
            ] {
                let p = SearchParams {
                    plan,
                    rerank: Some(40),
                    candidates: Some(200),
                    ..SearchParams::new(10)
                };
                for j in 0..ds.n_queries().min(12) {
                    let q = query(&ds, j);
                    let want = searched(&one, q, &p);
                    assert_eq!(want.len(), 10);
                    assert_eq!(staged(&[&one], q, &p), want, "{plan:?} query {j}");
                }
            }
        }
        // Two rounds over two searchers that split the shards give one searcher's answer (the inverted-file plan,
        // whose limits do not depend on the collection's size, and the exact plan).
        let a = one.with_shards(shards[..2].to_vec()).unwrap();
        let b = Searcher::new(params.clone(), vec![shards[2].clone()]).unwrap();
        for plan in [Plan::Ivf, Plan::Exact] {
            let p = SearchParams {
                plan,
                rerank: Some(40),
                candidates: Some(200),
                ..SearchParams::new(10)
            };
            for j in 0..ds.n_queries().min(12) {
                let q = query(&ds, j);
                assert_eq!(
                    staged(&[&a, &b], q, &p),
                    searched(&one, q, &p),
                    "{plan:?} query {j}: two rounds"
                );
            }
        }
    }
}

#[test]
fn the_graph_plan_composes_too() {
    let ds = demo();
    let dir = tempfile::tempdir().unwrap();
    let mut params = IndexParams::new(ds.dim());
    params.hnsw.min_docs = 1;
    let path = dir.path().join("g.shard");
    Shard::write(&path, &params, &docs(&ds), &|_| {}).unwrap();
    let shard = Shard::open(&path).unwrap();
    assert!(shard.graph().is_some());
    shard.set_key(7).unwrap();
    let s = Searcher::new(params, vec![Arc::new(shard)]).unwrap();
    let p = SearchParams {
        plan: Plan::Hnsw,
        rerank: Some(30),
        ..SearchParams::new(10)
    };
    for j in 0..ds.n_queries().min(12) {
        let q = query(&ds, j);
        assert_eq!(staged(&[&s], q, &p), searched(&s, q, &p), "query {j}");
    }
}

/// The same documents in two shards score the same: the shard with the smaller key wins every tie, wherever
/// it sits in the searcher's list, in every plan.
#[test]
fn ties_break_on_the_shard_key() {
    let ds = demo();
    let params = IndexParams::new(ds.dim());
    let d = docs(&ds);
    let book = Arc::new(train_codebook(&params, &d, &|| false).unwrap().unwrap());
    let build = |key: u64| {
        let coding = Coding::Given {
            codebook: &book,
            known: None,
        };
        let s = Shard::build_in_memory_coded(&params, &d, coding).unwrap();
        s.set_key(key).unwrap();
        Arc::new(s)
    };
    // Position 0 holds key 9, position 1 key 4.
    let s = Searcher::new(params.clone(), vec![build(9), build(4)]).unwrap();
    for plan in [Plan::Exact, Plan::CentroidScan, Plan::Ivf] {
        let p = SearchParams {
            plan,
            ..SearchParams::new(6)
        };
        for j in 0..ds.n_queries().min(5) {
            let hits = s.search(query(&ds, j), &p, None).unwrap();
            // Each document appears twice, at equal scores: key 4 (position 1) first.
            for pair in hits.chunks(2) {
                assert_eq!(pair[0].score, pair[1].score, "{plan:?} query {j}");
                assert_eq!(pair[0].doc, pair[1].doc, "{plan:?} query {j}");
                assert_eq!((pair[0].shard, pair[1].shard), (1, 0), "{plan:?} query {j}");
            }
        }
    }
    // A key is set once; two shards with one key cannot be searched together.
    let x = build(4);
    assert!(x.set_key(4).is_ok());
    assert!(x.set_key(5).is_err());
    assert!(Searcher::new(params.clone(), vec![x, build(4)]).is_err());
}
