//! The candidate source of each plan: given the query's context, one shard and the limits, it yields the shard's
//! scored candidates ([`Fruit`]).
use super::collector::Fruit;
use super::context::{Limits, QueryContext};
use super::Plan;
use crate::Result;

/// One plan's way of finding a shard's candidates.
pub(crate) trait CandidateSource {
    /// The candidates of shard `si` (an index into the searcher's shards; never empty) for the query of `ctx`.
    fn candidates(&self, ctx: &QueryContext<'_>, si: usize, limits: &Limits) -> Result<Fruit>;
}

/// The source of a resolved plan ([`Plan::Auto`] never is one: it is read as exact).
pub(crate) fn source_of(plan: Plan) -> &'static dyn CandidateSource {
    match plan {
        Plan::Exact | Plan::Auto => &super::exact::Exact,
        Plan::Ivf => &super::ivf::Ivf,
        Plan::CentroidScan => &super::centroid_scan::CentroidScan,
        Plan::FdeScan => &super::fde_scan::FdeScan,
        Plan::Hnsw => &super::hnsw::Hnsw,
    }
}
