//! The per-query context: built once per query, read by every candidate source.
use std::sync::{Arc, OnceLock};

use super::collector::in_pool;
use super::fde_scan::SparseFde;
use super::ivf::Probes;
use super::{default_nprobe, DocFilter, Plan, SearchParams, Searcher, IVF_MIN_DOCS};
use crate::codebook::{Codebook, QueryTable};
use crate::kernels::PreparedQuery;
use crate::tokens::TokenMatrix;
use crate::{IndexError, Result};

/// The depths and counts one search cuts at, fixed before any shard is scored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Results returned.
    pub k: usize,
    /// Approximate candidates re-ranked exactly (over all shards).
    pub rerank: usize,
    /// Inverted-file candidates re-scored by centroid interaction (over all shards; also the cut of each shard).
    pub ivf_candidates: usize,
    /// Documents the graph returns per shard.
    pub graph_candidates: usize,
    /// The graph's beam width (None: the shard's number of graph candidates).
    pub ef: Option<usize>,
}

impl Limits {
    /// The limits of `p` over a collection of `n` documents whose shards resolve to `plans` (`sizes` their
    /// document counts, in the same order).
    pub(crate) fn new(p: &SearchParams, n: usize, plans: &[Plan], sizes: &[usize]) -> Limits {
        // The inverted-file plan's re-rank depth is fixed in k; the scans' grows with the collection. Small
        // shards scanned by centroid interaction beside inverted files (a server's memtable next to its flushed
        // shards) compete on the same scores as the inverted-file candidates, so they keep the fixed depth.
        let fixed = plans
            .iter()
            .zip(sizes)
            .filter(|(_, &len)| len > 0)
            .all(|(&pl, &len)| {
                matches!(pl, Plan::Ivf | Plan::Exact)
                    || (pl == Plan::CentroidScan && len < IVF_MIN_DOCS)
            })
            && plans.contains(&Plan::Ivf);
        Limits {
            k: p.k,
            rerank: if fixed {
                p.ivf_rerank()
            } else {
                p.rerank_for(n)
            },
            ivf_candidates: p.ivf_candidates(),
            graph_candidates: p.candidates_for(n),
            ef: p.ef,
        }
    }
}

/// One codebook's per-query state, built on first use.
struct Book {
    book: Arc<Codebook>,
    table: OnceLock<QueryTable>,
    probes: OnceLock<Probes>,
}

/// What every stage of one query reads: built once by [`Searcher::context`].
pub(crate) struct QueryContext<'a> {
    pub(crate) searcher: &'a Searcher,
    pub(crate) query: TokenMatrix<'a>,
    pub(crate) params: &'a SearchParams,
    pub(crate) filter: Option<DocFilter<'a>>,
    /// Asked only on this thread, between the parallel steps (it is not `Sync`).
    cancel: &'a dyn Fn() -> bool,
    pub(crate) prepared: PreparedQuery,
    pub(crate) pool: Option<&'a rayon::ThreadPool>,
    pub(crate) threads: usize,
    /// The plan of each shard.
    pub(crate) plans: Vec<Plan>,
    pub(crate) limits: Limits,
    /// One entry per distinct codebook of the shards whose plan reads a centroid table.
    books: Vec<Book>,
    /// Shard -> its entry of `books`.
    book_of: Vec<Option<usize>>,
    /// The query FDE's non-zero blocks, encoded when a plan first needs them.
    sparse: OnceLock<SparseFde>,
}

impl<'a> QueryContext<'a> {
    pub(crate) fn new(
        searcher: &'a Searcher,
        query: TokenMatrix<'a>,
        params: &'a SearchParams,
        filter: Option<DocFilter<'a>>,
        cancel: &'a dyn Fn() -> bool,
    ) -> Result<QueryContext<'a>> {
        params.validate()?;
        let ip = searcher.params();
        let dim = ip.fde.dimension;
        if query.dim() != dim {
            return Err(IndexError::DimensionMismatch {
                expected: dim,
                got: query.dim(),
            });
        }
        if let Some(r) = params.prefix_repetitions {
            if r != ip.hnsw.prefix_repetitions {
                return Err(IndexError::param(
                    "prefix_repetitions",
                    format!(
                        "the graph indexes a {}-repetition prefix, got {r}",
                        ip.hnsw.prefix_repetitions
                    ),
                ));
            }
        }
        let shards = searcher.shards();
        let n = searcher.len();
        let rerank = params.rerank_for(n);
        let plans: Vec<Plan> = shards
            .iter()
            .map(|s| searcher.resolve_plan(params.plan, s, rerank))
            .collect();
        let sizes: Vec<usize> = shards.iter().map(|s| s.len()).collect();
        let limits = Limits::new(params, n, &plans, &sizes);
        // One centroid table per distinct codebook (shards of one collection share theirs).
        let mut books: Vec<Book> = Vec::new();
        let book_of = shards
            .iter()
            .zip(&plans)
            .map(|(s, plan)| match (plan, s.codebook_arc()) {
                (Plan::CentroidScan | Plan::Ivf | Plan::Hnsw, Some(book)) if !s.is_empty() => Some(
                    match books.iter().position(|b| Arc::ptr_eq(&b.book, book)) {
                        Some(at) => at,
                        None => {
                            books.push(Book {
                                book: Arc::clone(book),
                                table: OnceLock::new(),
                                probes: OnceLock::new(),
                            });
                            books.len() - 1
                        }
                    },
                ),
                _ => None,
            })
            .collect();
        let pool = searcher.pool();
        Ok(QueryContext {
            searcher,
            query,
            params,
            filter,
            cancel,
            prepared: PreparedQuery::new(query.as_slice(), dim),
            pool,
            threads: pool.map_or(1, |p| p.current_num_threads()),
            plans,
            limits,
            books,
            book_of,
            sparse: OnceLock::new(),
        })
    }

    /// [`IndexError::Cancelled`] once the caller's hook says so.
    pub(crate) fn check(&self) -> Result<()> {
        if (self.cancel)() {
            Err(IndexError::Cancelled("the search was stopped"))
        } else {
            Ok(())
        }
    }

    /// The centroid table of shard `si`'s codebook (built on first use; None when its plan reads none).
    pub(crate) fn table(&self, si: usize) -> Option<&QueryTable> {
        let b = &self.books[self.book_of[si]?];
        let (query, threads) = (self.query.as_slice(), self.threads);
        Some(
            b.table
                .get_or_init(|| in_pool(self.pool, || b.book.query_table_par(query, threads))),
        )
    }

    /// The inverted-file probes of shard `si`'s codebook (built on first use).
    pub(crate) fn probes(&self, si: usize) -> Option<&Probes> {
        let table = self.table(si)?;
        let b = &self.books[self.book_of[si]?];
        Some(b.probes.get_or_init(|| {
            let n = self
                .params
                .nprobe
                .unwrap_or_else(|| default_nprobe(table.centroids()));
            Probes::new(table, n)
        }))
    }

    /// The query FDE's non-zero blocks (encoded on first use).
    pub(crate) fn sparse(&self) -> Result<&SparseFde> {
        if let Some(s) = self.sparse.get() {
            return Ok(s);
        }
        let fde = self.searcher.encoder().encode_query(self.query)?;
        let block = self.searcher.params().fde.block_dim();
        Ok(self.sparse.get_or_init(|| SparseFde::new(&fde, block)))
    }
}

/// True when document `d` of shard `si` passes `filter` (every document without one).
pub(crate) fn passes(filter: Option<DocFilter<'_>>, si: usize, d: usize) -> bool {
    filter.is_none_or(|f| f(si, d))
}
