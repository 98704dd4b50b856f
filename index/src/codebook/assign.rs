//! Assignment: the nearest centroid of every token (flat, or through the coarse level).
use rayon::prelude::*;

use super::*;
use crate::kernels;
use crate::sys::gemm::matmul_abt;

/// Index of the largest value of each row of `scores` (`rows x k`).
pub(super) fn argmax_rows(scores: &[f32], k: usize) -> impl Iterator<Item = (usize, f32)> + '_ {
    scores.chunks_exact(k).map(|row| {
        let mut best = (0usize, f32::NEG_INFINITY);
        for (c, &s) in row.iter().enumerate() {
            if s > best.1 {
                best = (c, s);
            }
        }
        best
    })
}

/// Writes the tokens `rows` of the row-major `block` into `out` k-major (`out[k * n + j]`, n = number of rows),
/// the layout of the nearest-centroid kernel.
pub(super) fn transpose_into(
    block: &[f32],
    dim: usize,
    rows: impl ExactSizeIterator<Item = u32>,
    out: &mut Vec<f32>,
) {
    const T: usize = 8;
    let starts: Vec<&[f32]> = rows.map(|r| &block[r as usize * dim..][..dim]).collect();
    let n = starts.len();
    out.clear();
    out.resize(n * dim, 0.0);
    // 8 x 8 tiles: 8 contiguous coordinates of 8 rows in, 8 contiguous tokens of 8 coordinates out (element by
    // element, either the loads or the stores scatter; element-wise stores measured 5% of a server's ingest CPU).
    let (n_full, k_full) = (n - n % T, dim - dim % T);
    for j0 in (0..n_full).step_by(T) {
        let rows: [&[f32]; T] = std::array::from_fn(|t| starts[j0 + t]);
        for k0 in (0..k_full).step_by(T) {
            let tile: [[f32; T]; T] = std::array::from_fn(|t| {
                let mut r = [0f32; T];
                r.copy_from_slice(&rows[t][k0..k0 + T]);
                r
            });
            for kk in 0..T {
                let dst = &mut out[(k0 + kk) * n + j0..][..T];
                for (t, d) in dst.iter_mut().enumerate() {
                    *d = tile[t][kk];
                }
            }
        }
    }
    // The edges: tokens past the last whole tile, coordinates past the last whole tile.
    for (j, row) in starts.iter().enumerate() {
        let ks = if j < n_full { k_full } else { 0 };
        for (k, &v) in row.iter().enumerate().skip(ks) {
            out[k * n + j] = v;
        }
    }
}

/// Indices of the `p` largest values of `row` (in no particular order), by one scan keeping the best `p`:
/// cheaper than a selection algorithm for the few probes of an assignment. The scan tests 8 values at a time
/// against the worst kept one with one vectorised max, and looks at single values only in the rare groups that
/// hold a better one (ties keep the earlier index, as a plain scan does).
pub(super) fn top_indices(row: &[f32], p: usize, out: &mut Vec<u32>) {
    const G: usize = 8;
    out.clear();
    if p == 0 {
        return;
    }
    let head = p.min(row.len());
    // (score, index) of the best so far, the worst of them at `worst`.
    let mut best: Vec<(f32, u32)> = row[..head]
        .iter()
        .enumerate()
        .map(|(i, &v)| (v, i as u32))
        .collect();
    let mut worst = argmin(&best);
    let offer = |i: usize, v: f32, best: &mut [(f32, u32)], worst: &mut usize| {
        if v > best[*worst].0 {
            best[*worst] = (v, i as u32);
            *worst = argmin(best);
        }
    };
    if head == p {
        let rest = &row[head..];
        let groups = rest.chunks_exact(G);
        let tail = groups.remainder();
        for (g, group) in groups.enumerate() {
            let group: &[f32; G] = group.try_into().expect("chunks_exact");
            if group.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) > best[worst].0 {
                for (t, &v) in group.iter().enumerate() {
                    offer(head + g * G + t, v, &mut best, &mut worst);
                }
            }
        }
        let at = row.len() - tail.len();
        for (t, &v) in tail.iter().enumerate() {
            offer(at + t, v, &mut best, &mut worst);
        }
    }
    out.extend(best.iter().map(|&(_, i)| i));
}

pub(super) fn argmin(v: &[(f32, u32)]) -> usize {
    let mut m = 0;
    for (i, x) in v.iter().enumerate() {
        if x.0 < v[m].0 {
            m = i;
        }
    }
    m
}

/// Nearest of `k` centroids (row-major) for every token, in parallel blocks of matrix products.
pub(super) fn assign_flat(centroids: &[f32], k: usize, dim: usize, tokens: &[f32]) -> Vec<usize> {
    tokens
        .par_chunks(BLOCK * dim)
        .flat_map_iter(|block| {
            let rows = block.len() / dim;
            let mut scores = vec![0f32; rows * k];
            matmul_abt(block, centroids, &mut scores, rows, k, dim);
            argmax_rows(&scores, k).map(|(c, _)| c).collect::<Vec<_>>()
        })
        .collect()
}

impl Codebook {
    /// The nearest centroid (largest inner product) of every token: exact for a flat codebook, among the fine
    /// centroids of the [`ASSIGN_PROBE`] nearest coarse clusters for a two-level one.
    pub fn assign(&self, tokens: &[f32]) -> Vec<u16> {
        self.assign_on(tokens, self.kernel_assigns())
    }

    /// [`assign`](Self::assign) on f32 matrix products even where the fused kernel runs (the reference the
    /// kernel path is tested and benchmarked against).
    pub fn assign_by_products(&self, tokens: &[f32]) -> Vec<u16> {
        self.assign_on(tokens, false)
    }

    pub(super) fn assign_on(&self, tokens: &[f32], kernel: bool) -> Vec<u16> {
        match &self.coarse {
            None if kernel => tokens
                .par_chunks(BLOCK * self.dim)
                .flat_map_iter(|block| self.assign_flat_kernel(block))
                .collect(),
            None => assign_flat(&self.centroids, self.len(), self.dim, tokens)
                .into_iter()
                .map(|c| c as u16)
                .collect(),
            Some(coarse) => tokens
                .par_chunks(BLOCK_TWO_LEVEL * self.dim)
                .flat_map_iter(|block| self.assign_two_level(coarse, block, kernel))
                .collect(),
        }
    }

    /// Whether assignment runs on the fused nearest-centroid kernel ([`kernels::nearest_centroids`], AVX-512 or
    /// AVX2),
    /// rather than on f32 matrix products. Both pick the largest f32 inner product; they can differ only on
    /// near-ties (fused multiply-adds round differently).
    pub(super) fn kernel_assigns(&self) -> bool {
        self.dim > 0 && kernels::kernel_level() != kernels::KernelLevel::Portable
    }

    /// Flat assignment of one block on the kernel.
    pub(super) fn assign_flat_kernel(&self, block: &[f32]) -> Vec<u16> {
        let rows = block.len() / self.dim;
        let mut qt = Vec::new();
        transpose_into(block, self.dim, (0..rows).map(|r| r as u32), &mut qt);
        let mut best = vec![(0u32, f32::NEG_INFINITY); rows];
        kernels::nearest_centroids(&qt, self.dim, &self.centroids, 0, self.len(), &mut best);
        best.into_iter().map(|(c, _)| c as u16).collect()
    }

    /// [`assign`](Self::assign) on the calling thread only (for callers that parallelise over documents).
    pub fn assign_sequential(&self, tokens: &[f32]) -> Vec<u16> {
        match &self.coarse {
            None if self.kernel_assigns() => tokens
                .chunks(BLOCK * self.dim)
                .flat_map(|block| self.assign_flat_kernel(block))
                .collect(),
            None => {
                let (k, dim) = (self.len(), self.dim);
                tokens
                    .chunks(BLOCK * dim)
                    .flat_map(|block| {
                        let rows = block.len() / dim;
                        let mut scores = vec![0f32; rows * k];
                        matmul_abt(block, &self.centroids, &mut scores, rows, k, dim);
                        argmax_rows(&scores, k)
                            .map(|(c, _)| c as u16)
                            .collect::<Vec<_>>()
                    })
                    .collect()
            }
            Some(coarse) => tokens
                .chunks(BLOCK_TWO_LEVEL * self.dim)
                .flat_map(|block| self.assign_two_level(coarse, block, self.kernel_assigns()))
                .collect(),
        }
    }

    /// Share of `tokens` whose [`assign`](Self::assign)ed code is their nearest centroid by brute force (1 for a
    /// flat codebook): what the two-level assignment costs in quantization.
    pub fn assign_agreement(&self, tokens: &[f32]) -> f64 {
        let n = tokens.len() / self.dim.max(1);
        if n == 0 {
            return 1.0;
        }
        let fast = self.assign(tokens);
        let exact = assign_flat(&self.centroids, self.len(), self.dim, tokens);
        let same = fast
            .iter()
            .zip(&exact)
            .filter(|(a, b)| **a as usize == **b)
            .count();
        same as f64 / n as f64
    }

    pub(super) fn assign_two_level(
        &self,
        coarse: &Coarse,
        block: &[f32],
        kernel: bool,
    ) -> Vec<u16> {
        let dim = self.dim;
        let rows = block.len() / dim;
        let kc = coarse.centroids.len() / dim;
        let mut scores = vec![0f32; rows * kc];
        matmul_abt(block, &coarse.centroids, &mut scores, rows, kc, dim);
        // The tokens each coarse cluster is probed by.
        let probe = ASSIGN_PROBE.min(kc);
        let mut by_cluster: Vec<Vec<u32>> = vec![Vec::new(); kc];
        let mut top = Vec::with_capacity(probe);
        for (r, row) in scores.chunks_exact(kc).enumerate() {
            top_indices(row, probe, &mut top);
            for &c in &top {
                by_cluster[c as usize].push(r as u32);
            }
        }
        let mut best = vec![(0u32, f32::NEG_INFINITY); rows];
        let mut gathered = Vec::new();
        let mut fine_scores = Vec::new();
        let mut probed = Vec::new();
        for (c, toks) in by_cluster.iter().enumerate() {
            let (s, e) = (coarse.start[c] as usize, coarse.start[c + 1] as usize);
            if toks.is_empty() || s == e {
                continue;
            }
            if kernel {
                transpose_into(block, dim, toks.iter().copied(), &mut gathered);
                probed.clear();
                probed.extend(toks.iter().map(|&r| best[r as usize]));
                kernels::nearest_centroids(&gathered, dim, &self.centroids, s, e, &mut probed);
                for (&r, &b) in toks.iter().zip(&probed) {
                    best[r as usize] = b;
                }
                continue;
            }
            gathered.clear();
            for &r in toks {
                gathered.extend_from_slice(&block[r as usize * dim..][..dim]);
            }
            fine_scores.resize(toks.len() * (e - s), 0.0);
            matmul_abt(
                &gathered,
                &self.centroids[s * dim..e * dim],
                &mut fine_scores,
                toks.len(),
                e - s,
                dim,
            );
            for (&r, (f, score)) in toks.iter().zip(argmax_rows(&fine_scores, e - s)) {
                let b = &mut best[r as usize];
                if score > b.1 {
                    *b = ((s + f) as u32, score);
                }
            }
        }
        best.into_iter().map(|(c, _)| c as u16).collect()
    }
}
