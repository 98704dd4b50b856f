//! `chamfer fde-recall`: how good a candidate generator the MUVERA FDE is on a data set, at any size, without
//! building an index. It streams the documents once, encodes them, scores every Matryoshka prefix of their FDE
//! against the queries' FDEs (an exact FDE scan: what the `fde-scan` plan computes, and the best an HNSW graph
//! over the same vectors can approximate) and reports, per prefix and candidate count C, recall@10 after an exact
//! re-rank of the FDE top C: the share of the exact top 10 inside the FDE top C (an exact re-rank orders the
//! candidates exactly).
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context};
use chamfer_data::dataset::{Dataset, DocStream};
use chamfer_index::fde::FdeEncoder;
use chamfer_index::tokens::TokenMatrix;
use clap::Args;
use rayon::prelude::*;

use crate::params::{bar, IndexArgs};

/// Documents encoded and scored per step.
const BATCH: usize = 4096;
/// Most queries: the scan keeps C (score, document) pairs per query and prefix.
const MAX_QUERIES: usize = 1000;
/// Most candidates per query.
const MAX_CANDIDATES: usize = 100_000;
/// Most (score, document) pairs kept at once over all queries and prefixes (8 bytes each: 512 MiB).
const MAX_KEPT: usize = 1 << 26;

#[derive(Args, Debug)]
pub(crate) struct FdeRecallCmd {
    /// Data set folder with queries and exact ground truth.
    #[arg(long)]
    data: PathBuf,
    /// Queries to score (the first N of the data set).
    #[arg(long, default_value_t = 50)]
    queries: usize,
    /// Candidate counts C (comma-separated).
    #[arg(long, value_delimiter = ',', default_values_t = [128usize, 500, 1000, 2000, 4000])]
    candidates: Vec<usize>,
    /// Matryoshka prefixes to score, in repetitions (comma-separated; each <= --repetitions).
    #[arg(long, value_delimiter = ',', default_values_t = [4usize, 10, 20])]
    prefixes: Vec<usize>,
    #[command(flatten)]
    index: IndexArgs,
}

impl FdeRecallCmd {
    pub(crate) fn run(self) -> anyhow::Result<()> {
        let ds = Dataset::open_without_doc_tokens(&self.data)?;
        let stream = DocStream::open(&self.data)?;
        if self.queries == 0 {
            bail!("--queries must be at least 1");
        }
        let nq = self.queries.min(ds.n_queries());
        if nq == 0 || ds.gt_ids(0).is_none() {
            bail!(
                "{}: fde-recall needs queries and gt_chamfer_ids.npy",
                self.data.display()
            );
        }
        if self.queries > MAX_QUERIES {
            bail!(
                "--queries {} is above the limit {MAX_QUERIES}",
                self.queries
            );
        }
        let c_max = self.candidates.iter().copied().max().unwrap_or(0);
        if self
            .candidates
            .iter()
            .any(|&c| c == 0 || c > MAX_CANDIDATES)
            || c_max == 0
        {
            bail!("--candidates must hold values in 1..={MAX_CANDIDATES}");
        }
        let params = self.index.params(ds.dim());
        let fde = &params.fde;
        if fde.final_projection_dimension.is_some() {
            bail!("a final projection mixes repetitions: no Matryoshka prefixes to score");
        }
        let (rep_dim, out_dim) = (fde.repetition_dim(), fde.output_dim());
        let mut prefixes = self.prefixes.clone();
        prefixes.sort_unstable();
        prefixes.dedup();
        if prefixes.is_empty()
            || prefixes[0] == 0
            || prefixes[prefixes.len() - 1] > fde.num_repetitions
        {
            bail!("--prefixes must hold values in 1..={}", fde.num_repetitions);
        }
        let kept = nq * prefixes.len() * 2 * c_max;
        if kept > MAX_KEPT {
            bail!(
                "--queries x --prefixes x 2 x the largest of --candidates is {kept} kept candidates, above the \
                 limit {MAX_KEPT}: ask for fewer"
            );
        }
        let enc = FdeEncoder::new(fde.clone())?;
        let dim = ds.dim();
        let qfde: Vec<Vec<f32>> = (0..nq)
            .map(|j| enc.encode_query(TokenMatrix::new(ds.query_tokens(j), dim, "query")?))
            .collect::<Result<_, _>>()?;

        // Per query and prefix: the best (score, document) so far, trimmed to C when twice as long.
        let mut best: Vec<Vec<Vec<(f32, u32)>>> = vec![vec![Vec::new(); prefixes.len()]; nq];
        let n = stream.len();
        let progress = bar(n as u64, "scanning FDEs");
        let (mut tokens, mut fdes) = (Vec::new(), Vec::new());
        let (mut encode_s, mut scan_s) = (0f64, 0f64);
        for from in (0..n).step_by(BATCH) {
            let to = (from + BATCH).min(n);
            tokens.clear();
            stream.read_range(from..to, &mut tokens)?;
            let t = Instant::now();
            let mut at = 0;
            let docs: Vec<TokenMatrix<'_>> = (from..to)
                .map(|i| {
                    let len = stream.doc_len(i) * dim;
                    at += len;
                    TokenMatrix::new(&tokens[at - len..at], dim, "document")
                })
                .collect::<Result<_, _>>()?;
            fdes.resize((to - from) * out_dim, 0.0);
            enc.encode_documents_into(&docs, &mut fdes)?;
            encode_s += t.elapsed().as_secs_f64();
            let t = Instant::now();
            // Documents outer (each FDE stays in cache across the queries), in parallel; then merged per query.
            let np = prefixes.len();
            let mut scores = vec![0f32; (to - from) * nq * np];
            scores
                .par_chunks_mut(nq * np)
                .zip(fdes.par_chunks_exact(out_dim))
                .for_each(|(row, doc)| {
                    for (j, q) in qfde.iter().enumerate() {
                        // Prefix sums of the inner product, one prefix's repetitions at a time.
                        let (mut s, mut r0) = (0f32, 0);
                        for (p, &r) in prefixes.iter().enumerate() {
                            let span = r0 * rep_dim..r * rep_dim;
                            s += dot(&q[span.clone()], &doc[span]);
                            r0 = r;
                            row[j * np + p] = s;
                        }
                    }
                });
            for (d, row) in scores.chunks_exact(nq * np).enumerate() {
                for (j, lists) in best.iter_mut().enumerate() {
                    for (p, list) in lists.iter_mut().enumerate() {
                        list.push((row[j * np + p], (from + d) as u32));
                    }
                }
            }
            for list in best.iter_mut().flatten() {
                if list.len() >= 2 * c_max {
                    keep_best(list, c_max);
                }
            }
            scan_s += t.elapsed().as_secs_f64();
            progress.set_position(to as u64);
        }
        progress.finish_and_clear();

        let mut rows = Vec::new();
        for (p, &r) in prefixes.iter().enumerate() {
            for &c in &self.candidates {
                let recall = (0..nq)
                    .map(|j| {
                        let mut list = best[j][p].clone();
                        keep_best(&mut list, c);
                        let ids: Vec<usize> = list.iter().map(|&(_, d)| d as usize).collect();
                        let truth = ds.gt_ids(j).unwrap_or(&[]);
                        let hits = truth
                            .iter()
                            .take(10)
                            .filter(|&&g| ids.contains(&(g as usize)))
                            .count();
                        hits as f64 / truth.len().clamp(1, 10) as f64
                    })
                    .sum::<f64>()
                    / nq as f64;
                eprintln!("prefix {r:>2} repetitions ({:>5}-d), top {c:>6}: recall@10 after exact re-rank {recall:.4}", r * rep_dim);
                rows.push(serde_json::json!({
                    "prefix_repetitions": r,
                    "prefix_dim": r * rep_dim,
                    "candidates": c,
                    "recall_at_10": recall,
                }));
            }
        }
        let report = serde_json::json!({
            "data": self.data.display().to_string(),
            "n_docs": n,
            "queries": nq,
            "fde_dim": out_dim,
            "encode_docs_per_s": n as f64 / encode_s.max(1e-9),
            "scan_s_per_query_full_fde": scan_s / nq as f64,
            "rows": rows,
        });
        println!("{}", serde_json::to_string(&report).context("report")?);
        Ok(())
    }
}

/// Keeps the `c` highest scores of `list` (ties by lower document), best first.
fn keep_best(list: &mut Vec<(f32, u32)>, c: usize) {
    let order = |a: &(f32, u32), b: &(f32, u32)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
    if list.len() > c {
        list.select_nth_unstable_by(c, order);
        list.truncate(c);
    }
    list.sort_unstable_by(order);
}

/// Inner product in 8 independent lanes (vectorises).
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keep_best_keeps_the_highest_in_order() {
        let mut v = vec![(0.5, 3), (0.9, 1), (0.1, 0), (0.9, 0), (0.7, 2)];
        keep_best(&mut v, 3);
        assert_eq!(v, vec![(0.9, 0), (0.9, 1), (0.7, 2)]);
        let mut short = vec![(0.2, 1), (0.4, 0)];
        keep_best(&mut short, 5);
        assert_eq!(short, vec![(0.4, 0), (0.2, 1)]);
    }

    #[test]
    fn dot_matches_a_plain_sum() {
        let a: Vec<f32> = (0..37).map(|i| i as f32 * 0.25 - 3.0).collect();
        let b: Vec<f32> = (0..37).map(|i| 1.5 - i as f32 * 0.125).collect();
        let plain: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        assert!((dot(&a, &b) - plain).abs() < 1e-3);
    }
}
