//! Token codebooks for centroid-interaction scoring and the inverted file (the idea of PLAID's first stage).
//!
//! Every document token is replaced by the id of its nearest centroid (2 bytes instead of 256). For a query,
//! a `K x W` table of query-token x centroid inner products is computed once; a document's approximate Chamfer
//! score is then `sum_q max_{c in codes(doc)} <q, centroid_c>`: one table-row load and one max per document
//! token. That is ~100x cheaper than the exact score and a much tighter approximation of the Chamfer ranking
//! than the FDE (BENCHMARKS.md).
//!
//! **Size.** A codebook grows with the corpus, by ColBERT's rule: `2^floor(log2(16 sqrt(tokens)))` centroids
//! ([`Codebook::size_for_tokens`]), capped by the requested size and by 2^16 (codes are u16). A finer codebook is
//! a better ranker and makes each inverted list a smaller share of the collection.
//!
//! **Two levels.** Codebooks larger than [`FLAT_MAX`] centroids are trained and searched in two levels: about
//! `sqrt(K)` coarse centroids, each owning a contiguous range of fine centroids trained on the tokens it holds
//! (hierarchical k-means). Assigning a token scores the coarse centroids and then only the fine centroids of its
//! [`ASSIGN_PROBE`] best coarse clusters: `sqrt(K) + 4 K / sqrt(K)` inner products instead of `K` (about 1280
//! instead of 65,536 at 2^16), which is what makes indexing a million documents take minutes instead of hours.
//! The price is that a token occasionally gets the second-nearest centroid; `chamfer bench` reports the share
//! (`assign_agreement`).
//!
//! **Bytes.** [`Codebook::to_bytes`] / [`Codebook::from_bytes`] are the codebook's on-disk form (a shard's
//! `codebook` section): `u32 K, u32 Kc, u32 dim, f32 training error` (little-endian; the error NaN when unknown),
//! `f32[K * dim]` fine centroids, then when
//! `Kc > 0` `f32[Kc * dim]` coarse centroids and `u32[Kc + 1]` fine-range starts. Centroids are unit vectors.
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;

use crate::kernels;
use crate::sys::codes;
use crate::sys::gemm::matmul_abt;

/// Tokens per k-means sample, per centroid.
pub const SAMPLE_PER_CENTROID: usize = 16;
const KMEANS_ITERS: usize = 4;
/// Rows per matrix-product block when assigning codes.
const BLOCK: usize = 512;
/// Rows per block of the two-level assignment (larger blocks group more tokens per coarse cluster).
const BLOCK_TWO_LEVEL: usize = 4096;
/// Largest codebook trained and searched flat (one level); larger ones get a coarse level.
pub const FLAT_MAX: usize = 4096;
/// Coarse clusters whose fine centroids a token is compared with in a two-level assignment.
pub const ASSIGN_PROBE: usize = 4;
/// Relative growth of the mean quantization error past which [`Codebook::drifted`] says a codebook no longer
/// fits the documents it codes.
pub const DRIFT_BOUND: f64 = 0.25;
/// Largest number of centroids (codes are u16).
pub const MAX_CENTROIDS: usize = 1 << 16;

/// Centroids (unit vectors, row-major `k x dim`), optionally with a coarse level over them.
#[derive(Clone, Debug, PartialEq)]
pub struct Codebook {
    dim: usize,
    centroids: Vec<f32>,
    /// The centroids as f16 16-row k-major panels (the kernel layout), for per-query tables.
    panels: Vec<half::f16>,
    coarse: Option<Coarse>,
    /// Mean quantization error of the training sample (see [`Codebook::quantization_error`]); None when unknown
    /// (codebooks rebuilt from bare centroids).
    train_error: Option<f32>,
}

/// The coarse level: `kc` centroids, coarse cluster `c` owning fine centroids `start[c]..start[c + 1]`.
#[derive(Clone, Debug, PartialEq)]
struct Coarse {
    centroids: Vec<f32>,
    start: Vec<u32>,
}

fn normalise(v: &mut [f32]) {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if n > 0.0 {
        v.iter_mut().for_each(|x| *x /= n);
    }
}

/// Index of the largest value of each row of `scores` (`rows x k`).
fn argmax_rows(scores: &[f32], k: usize) -> impl Iterator<Item = (usize, f32)> + '_ {
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
fn transpose_into(
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
fn top_indices(row: &[f32], p: usize, out: &mut Vec<u32>) {
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

fn argmin(v: &[(f32, u32)]) -> usize {
    let mut m = 0;
    for (i, x) in v.iter().enumerate() {
        if x.0 < v[m].0 {
            m = i;
        }
    }
    m
}

/// Nearest of `k` centroids (row-major) for every token, in parallel blocks of matrix products.
fn assign_flat(centroids: &[f32], k: usize, dim: usize, tokens: &[f32]) -> Vec<usize> {
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

/// Spherical k-means of `sample` (row-major) into `k` unit centroids; None when `cancel()` turns true.
fn kmeans(
    sample: &[f32],
    dim: usize,
    k: usize,
    rng: &mut StdRng,
    cancel: &dyn Fn() -> bool,
) -> Option<Vec<f32>> {
    let n = sample.len() / dim.max(1);
    let k = k.clamp(1, n.max(1));
    if n == 0 {
        return Some(vec![0.0; dim]);
    }
    let mut centroids: Vec<f32> = (0..k)
        .flat_map(|_| sample[rng.random_range(0..n) * dim..][..dim].to_vec())
        .collect();
    centroids.chunks_exact_mut(dim).for_each(normalise);
    for _ in 0..KMEANS_ITERS {
        if cancel() {
            return None;
        }
        let assign = assign_flat(&centroids, k, dim, sample);
        let mut sums = vec![0f32; k * dim];
        let mut counts = vec![0usize; k];
        for (t, &c) in assign.iter().enumerate() {
            counts[c] += 1;
            sums[c * dim..][..dim]
                .iter_mut()
                .zip(&sample[t * dim..][..dim])
                .for_each(|(s, v)| *s += v);
        }
        for (c, s) in sums.chunks_exact_mut(dim).enumerate() {
            if counts[c] == 0 {
                // Re-seed an empty cluster with a random sample token.
                s.copy_from_slice(&sample[rng.random_range(0..n) * dim..][..dim]);
            }
            normalise(s);
        }
        centroids = sums;
    }
    Some(centroids)
}

/// Splits `k` fine centroids over clusters holding `counts` sample tokens: proportional, at least one per
/// non-empty cluster, never more than a cluster has tokens.
fn quotas(counts: &[usize], k: usize) -> Vec<usize> {
    let total: usize = counts.iter().sum();
    let mut q: Vec<usize> = counts
        .iter()
        .map(|&n| {
            if n == 0 {
                0
            } else {
                ((k as u128 * n as u128 / total.max(1) as u128) as usize).clamp(1, n)
            }
        })
        .collect();
    let mut sum: usize = q.iter().sum();
    // Hand out what rounding left (or take back what the minimum of one added), largest share first.
    while sum < k {
        let best = (0..q.len())
            .filter(|&c| q[c] < counts[c])
            .max_by(|&a, &b| (counts[a] * q[b].max(1)).cmp(&(counts[b] * q[a].max(1))));
        let Some(c) = best else { break };
        q[c] += 1;
        sum += 1;
    }
    while sum > k {
        let Some(c) = (0..q.len()).filter(|&c| q[c] > 1).max_by_key(|&c| q[c]) else {
            break;
        };
        q[c] -= 1;
        sum -= 1;
    }
    q
}

impl Codebook {
    /// ColBERT's codebook size for a corpus of `n_tokens` tokens: `2^floor(log2(16 sqrt(n_tokens)))`, at most
    /// one centroid per 16 tokens, at least 1, at most [`MAX_CENTROIDS`].
    pub fn size_for_tokens(n_tokens: usize) -> usize {
        let target = 16.0 * (n_tokens as f64).sqrt();
        let pow = if target >= 1.0 {
            1usize << (target.log2().floor() as u32).min(16)
        } else {
            1
        };
        pow.min(n_tokens / SAMPLE_PER_CENTROID)
            .clamp(1, MAX_CENTROIDS)
    }

    /// The effective codebook size for `n_tokens` tokens when at most `requested` are asked for:
    /// `min(requested, size_for_tokens(n_tokens))`, at least 1.
    pub fn effective_size(requested: usize, n_tokens: usize) -> usize {
        requested
            .min(Codebook::size_for_tokens(n_tokens))
            .clamp(1, MAX_CENTROIDS)
    }

    /// Spherical k-means (`k` centroids) over a seeded sample of `tokens` (row-major, `dim` wide); two levels
    /// when `k` > [`FLAT_MAX`] (see the module documentation).
    pub fn train(tokens: &[f32], dim: usize, k: usize, seed: u64) -> Codebook {
        Codebook::train_cancellable(tokens, dim, k, seed, &|| false).expect("never cancelled")
    }

    /// [`train`](Self::train) that gives up (None) when `cancel()` turns true; it is asked before every k-means
    /// iteration. The result is the same as `train`'s when it is never cancelled.
    pub fn train_cancellable(
        tokens: &[f32],
        dim: usize,
        k: usize,
        seed: u64,
        cancel: &dyn Fn() -> bool,
    ) -> Option<Codebook> {
        let n = tokens.len() / dim.max(1);
        let k = k.clamp(1, n.clamp(1, MAX_CENTROIDS));
        let mut rng = StdRng::seed_from_u64(seed ^ 0xC0DE_B00C);
        let take = (k * SAMPLE_PER_CENTROID).min(n);
        let sample: Vec<f32> = if take == n {
            tokens[..n * dim].to_vec()
        } else {
            (0..take)
                .flat_map(|_| {
                    tokens[rng.random_range(0..n) * dim..][..dim]
                        .iter()
                        .copied()
                })
                .collect()
        };
        if k <= FLAT_MAX {
            let centroids = kmeans(&sample, dim, k, &mut rng, cancel)?;
            return Some(Codebook::from_centroids(dim, centroids).with_train_error(&sample));
        }
        // Two levels: coarse k-means, then k-means inside each coarse cluster on the tokens it holds.
        let kc = (k as f64).sqrt().ceil() as usize;
        let coarse = kmeans(&sample, dim, kc, &mut rng, cancel)?;
        let kc = coarse.len() / dim;
        let owner = assign_flat(&coarse, kc, dim, &sample);
        let mut members: Vec<Vec<f32>> = vec![Vec::new(); kc];
        for (t, &c) in owner.iter().enumerate() {
            members[c].extend_from_slice(&sample[t * dim..][..dim]);
        }
        let counts: Vec<usize> = members.iter().map(|m| m.len() / dim).collect();
        let quota = quotas(&counts, k);
        let seeds: Vec<u64> = (0..kc).map(|_| rng.random()).collect();
        // Fine k-means per coarse cluster, in parallel; `cancel` (not Sync) is asked between rounds.
        let mut fine: Vec<Vec<f32>> = Vec::with_capacity(kc);
        for round in (0..kc).collect::<Vec<_>>().chunks(32) {
            if cancel() {
                return None;
            }
            let done: Vec<Vec<f32>> = round
                .par_iter()
                .map(|&c| {
                    if quota[c] == 0 {
                        return Vec::new();
                    }
                    let mut r = StdRng::seed_from_u64(seeds[c]);
                    kmeans(&members[c], dim, quota[c], &mut r, &|| false).unwrap_or_default()
                })
                .collect();
            fine.extend(done);
        }
        let mut centroids = Vec::with_capacity(k * dim);
        let mut start = vec![0u32];
        for f in fine {
            centroids.extend(f);
            start.push((centroids.len() / dim) as u32);
        }
        Some(
            Codebook::with_coarse(
                dim,
                centroids,
                Coarse {
                    centroids: coarse,
                    start,
                },
            )
            .with_train_error(&sample),
        )
    }

    /// Rebuilds a flat codebook from stored centroids.
    pub fn from_centroids(dim: usize, centroids: Vec<f32>) -> Codebook {
        let mut panels = Vec::new();
        if !centroids.is_empty() {
            kernels::pack_tokens(&centroids, dim, &mut panels);
        }
        Codebook {
            dim,
            centroids,
            panels,
            coarse: None,
            train_error: None,
        }
    }

    fn with_train_error(mut self, sample: &[f32]) -> Codebook {
        self.train_error = Some(self.quantization_error(sample) as f32);
        self
    }

    /// Mean quantization error of `tokens`: `1 - cos(token, its assigned centroid)`, over tokens with a non-zero
    /// norm (0 for none). Centroids are unit vectors, so this is the share of a token's direction its code loses.
    pub fn quantization_error(&self, tokens: &[f32]) -> f64 {
        let dim = self.dim.max(1);
        let codes = self.assign(tokens);
        let (sum, n) = tokens
            .chunks_exact(dim)
            .zip(&codes)
            .filter_map(|(t, &c)| {
                let norm = t.iter().map(|v| v * v).sum::<f32>().sqrt();
                (norm > 0.0).then(|| {
                    let cent = &self.centroids[c as usize * dim..][..dim];
                    let cos = t.iter().zip(cent).map(|(a, b)| a * b).sum::<f32>() / norm;
                    f64::from((1.0 - cos).max(0.0))
                })
            })
            .fold((0.0, 0usize), |(s, n), e| (s + e, n + 1));
        if n == 0 {
            0.0
        } else {
            sum / n as f64
        }
    }

    /// The training sample's mean quantization error, when known.
    pub fn train_error(&self) -> Option<f32> {
        self.train_error
    }

    /// Whether `tokens` (a sample of new documents) are quantized measurably worse than the training sample was:
    /// their mean error exceeds the training error by more than [`DRIFT_BOUND`] of it. False when the training
    /// error is unknown. A collection re-trains its codebook when this turns true; shards keep the codebook they
    /// were written with, and search scores every shard against its own (exact re-rank makes the final scores
    /// independent of the codebook).
    pub fn drifted(&self, tokens: &[f32]) -> bool {
        self.train_error.is_some_and(|base| {
            self.quantization_error(tokens) > f64::from(base) * (1.0 + DRIFT_BOUND) + 1e-6
        })
    }

    fn with_coarse(dim: usize, centroids: Vec<f32>, coarse: Coarse) -> Codebook {
        Codebook {
            coarse: Some(coarse),
            ..Codebook::from_centroids(dim, centroids)
        }
    }

    /// Number of centroids.
    pub fn len(&self) -> usize {
        self.centroids.len() / self.dim.max(1)
    }
    /// True for an empty codebook.
    pub fn is_empty(&self) -> bool {
        self.centroids.is_empty()
    }
    /// Token dimension.
    pub fn dim(&self) -> usize {
        self.dim
    }
    /// Number of coarse centroids (0 for a flat codebook).
    pub fn coarse_len(&self) -> usize {
        self.coarse
            .as_ref()
            .map_or(0, |c| c.centroids.len() / self.dim.max(1))
    }
    /// The centroids, row-major.
    pub fn centroids(&self) -> &[f32] {
        &self.centroids
    }

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

    fn assign_on(&self, tokens: &[f32], kernel: bool) -> Vec<u16> {
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
    fn kernel_assigns(&self) -> bool {
        self.dim > 0 && kernels::kernel_level() != kernels::KernelLevel::Portable
    }

    /// Flat assignment of one block on the kernel.
    fn assign_flat_kernel(&self, block: &[f32]) -> Vec<u16> {
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

    fn assign_two_level(&self, coarse: &Coarse, block: &[f32], kernel: bool) -> Vec<u16> {
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

    /// The codebook's on-disk form (see the module documentation).
    pub fn to_bytes(&self) -> Vec<u8> {
        let (kc, cc, st): (usize, &[f32], &[u32]) = match &self.coarse {
            Some(c) => (c.centroids.len() / self.dim, &c.centroids, &c.start),
            None => (0, &[], &[]),
        };
        let mut out = Vec::with_capacity(16 + 4 * (self.centroids.len() + cc.len() + st.len()));
        for v in [self.len() as u32, kc as u32, self.dim as u32] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&self.train_error.unwrap_or(f32::NAN).to_le_bytes());
        for v in self.centroids.iter().chain(cc) {
            out.extend_from_slice(&v.to_le_bytes());
        }
        for v in st {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out
    }

    /// Parses [`to_bytes`](Self::to_bytes) output for tokens of `dim` values; every size is checked against
    /// the bytes present before anything is allocated, every value must be finite and the coarse ranges must
    /// cover the fine centroids in order. The error says what is wrong.
    pub fn from_bytes(bytes: &[u8], dim: usize) -> Result<Codebook, String> {
        // Header words: K, Kc, dim, training error.
        const H: usize = 4;
        let word = |i: usize| -> Option<u32> {
            let b = bytes.get(i * 4..i * 4 + 4)?;
            Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        };
        let (Some(k), Some(kc), Some(d)) = (word(0), word(1), word(2)) else {
            return Err("codebook header is truncated".into());
        };
        let (k, kc, d) = (k as usize, kc as usize, d as usize);
        if d != dim {
            return Err(format!("codebook is {d}-dimensional, the index {dim}"));
        }
        if k == 0 || k > MAX_CENTROIDS || kc > k {
            return Err(format!("codebook sizes out of range (K {k}, coarse {kc})"));
        }
        let starts = if kc > 0 { kc + 1 } else { 0 };
        let want = H + (k + kc) * dim + starts;
        if bytes.len() != want * 4 {
            return Err(format!(
                "codebook holds {} bytes, its header needs {}",
                bytes.len(),
                want * 4
            ));
        }
        let floats = |from: usize, n: usize| -> Vec<f32> {
            bytes[from * 4..(from + n) * 4]
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect()
        };
        let train_error = f32::from_bits(word(3).unwrap_or(u32::MAX));
        let train_error = match train_error {
            e if e.is_nan() => None,
            e if e.is_finite() && e >= 0.0 => Some(e),
            e => return Err(format!("codebook training error {e} is out of range")),
        };
        let centroids = floats(H, k * dim);
        let coarse_c = floats(H + k * dim, kc * dim);
        if centroids.iter().chain(&coarse_c).any(|v| !v.is_finite()) {
            return Err("codebook holds a non-finite value".into());
        }
        if kc == 0 {
            return Ok(Codebook {
                train_error,
                ..Codebook::from_centroids(dim, centroids)
            });
        }
        let start: Vec<u32> = (0..starts)
            .map(|i| word(H + (k + kc) * dim + i).unwrap_or(u32::MAX))
            .collect();
        if start[0] != 0 || start[kc] as usize != k || start.windows(2).any(|w| w[1] < w[0]) {
            return Err("codebook coarse ranges are inconsistent".into());
        }
        Ok(Codebook {
            train_error,
            ..Codebook::with_coarse(
                dim,
                centroids,
                Coarse {
                    centroids: coarse_c,
                    start,
                },
            )
        })
    }

    /// The per-query table: `K x W` inner products in 16-bit fixed point (`W` = query tokens rounded up to 16;
    /// padding columns 0). See [`QueryTable`].
    pub fn query_table(&self, query: &[f32]) -> QueryTable {
        self.query_table_par(query, 1)
    }

    /// [`query_table`](Self::query_table) computed by up to `threads` rayon tasks (identical values).
    pub fn query_table_par(&self, query: &[f32], threads: usize) -> QueryTable {
        let (k, dim) = (self.len(), self.dim);
        let nq = query.len() / dim.max(1);
        let w = nq.div_ceil(codes::LANES).max(1) * codes::LANES;
        let mut qt = vec![0f32; nq * dim];
        for (j, tok) in query.chunks_exact(dim).enumerate() {
            for (kk, &v) in tok.iter().enumerate() {
                qt[kk * nq + j] = v;
            }
        }
        let scale = QueryTable::scale_for(query, dim);
        let q = codes::TableQuery {
            qt: &qt,
            nq,
            dim,
            w,
            scale,
        };
        let mut table = vec![0i16; k * w];
        if threads <= 1 || k < 1024 {
            codes::centroid_table(q, &self.panels, k, &mut table);
        } else {
            // Split at panel (16-centroid) boundaries: each task fills its own rows.
            let per = k.div_ceil(threads).div_ceil(16) * 16;
            table
                .par_chunks_mut(per * w)
                .enumerate()
                .for_each(|(i, rows)| {
                    let c0 = i * per;
                    let kk = rows.len() / w;
                    let panels = &self.panels[c0 * dim..(c0 + kk.div_ceil(16) * 16) * dim];
                    codes::centroid_table(q, panels, kk, rows);
                });
        }
        QueryTable {
            table,
            w,
            nq,
            scale,
        }
    }
}

/// A query's centroid table: `<query token j, centroid c>` for every centroid, in 16-bit fixed point.
///
/// A value is stored as `round(v * scale)`, where `scale` maps the largest query-token norm (a bound of every
/// inner product with a unit centroid) to nearly the full i16 range. The absolute error of a value is at most
/// `0.5 / scale` (about 1.5e-5 of the largest norm), below the f16 rounding of the centroids the products are
/// computed from; scores are exact integer sums divided by the scale. Half the bytes of an f32 table, so a
/// row of 32 query tokens is one cache line, and a max over 16 query tokens is one instruction.
pub struct QueryTable {
    table: Vec<i16>,
    w: usize,
    nq: usize,
    scale: f32,
}

impl QueryTable {
    /// The quantization scale for `query` (tokens of `dim` values): the full range over the largest token
    /// norm, with 2% headroom for the f16 rounding of unit centroids; 1 for an all-zero query.
    fn scale_for(query: &[f32], dim: usize) -> f32 {
        let norm = query
            .chunks_exact(dim.max(1))
            .map(|t| t.iter().map(|v| v * v).sum::<f32>().sqrt())
            .fold(0f32, f32::max);
        if norm > 0.0 && norm.is_finite() {
            codes::QUANT_MAX / (norm * 1.02)
        } else {
            1.0
        }
    }
    /// Approximate Chamfer score of a document given its token codes.
    pub fn score(&self, codes: &[u16]) -> f32 {
        self.unscale(codes::score(&self.table, self.w, codes))
    }
    /// A sum of table values, back in score units.
    fn unscale(&self, v: i32) -> f32 {
        v as f32 / self.scale
    }
    /// Number of query tokens (columns that are not padding).
    pub fn query_tokens(&self) -> usize {
        self.nq
    }
    /// Number of centroids (rows).
    pub fn centroids(&self) -> usize {
        self.table.len() / self.w.max(1)
    }
    /// `<query token j, centroid c>` (as quantized).
    pub fn get(&self, c: usize, j: usize) -> f32 {
        self.unscale(i32::from(self.table[c * self.w + j]))
    }
    /// Centroid `c`'s row of quantized values: its inner product with every query token (then zero padding);
    /// [`value`](Self::value) converts one back.
    pub fn row(&self, c: usize) -> &[i16] {
        &self.table[c * self.w..(c + 1) * self.w]
    }
    /// A quantized value of [`row`](Self::row) in score units.
    pub fn value(&self, q: i16) -> f32 {
        self.unscale(i32::from(q))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kmeans_assigns_tokens_to_their_own_cluster() {
        // Three well-separated directions with small perturbations.
        let dim = 4;
        let base = [
            [1.0, 0.0, 0.0, 0.0],
            [0.0, 1.0, 0.0, 0.0],
            [0.0, 0.0, 0.0, 1.0],
        ];
        let mut toks = Vec::new();
        for i in 0..300 {
            let b = base[i % 3];
            let mut v: Vec<f32> = b
                .iter()
                .enumerate()
                .map(|(j, x)| x + ((i * 7 + j * 3) % 5) as f32 * 0.01)
                .collect();
            normalise(&mut v);
            toks.extend(v);
        }
        let book = Codebook::train(&toks, dim, 3, 1);
        // Cancellable training: the same centroids when never cancelled, None when cancelled mid-way.
        let same = Codebook::train_cancellable(&toks, dim, 3, 1, &|| false).unwrap();
        assert_eq!(same.centroids(), book.centroids());
        let asked = std::cell::Cell::new(0);
        let cancel = || {
            asked.set(asked.get() + 1);
            asked.get() > 2
        };
        assert!(Codebook::train_cancellable(&toks, dim, 3, 1, &cancel).is_none());
        assert_eq!(asked.get(), 3, "asked once per iteration until cancelled");
        let codes = book.assign(&toks);
        for i in 0..300 {
            assert_eq!(codes[i], codes[i % 3], "token {i}");
        }
        assert_ne!(codes[0], codes[1]);
        // The table score equals the naive centroid-interaction score.
        let q = &toks[..2 * dim];
        let t = book.query_table(q);
        let naive: f32 = (0..2)
            .map(|qi| {
                codes
                    .iter()
                    .map(|&c| {
                        (0..dim)
                            .map(|j| q[qi * dim + j] * book.centroids()[c as usize * dim + j])
                            .sum::<f32>()
                    })
                    .fold(f32::MIN, f32::max)
            })
            .sum();
        // The table is computed from f16 copies of the centroids (relative error <= 2^-11 per value).
        assert!(
            (t.score(&codes) - naive).abs() < 2e-3,
            "{} vs {naive}",
            t.score(&codes)
        );
        assert_eq!(Codebook::effective_size(1024, 100), 6);
    }

    /// Seeded clustered unit vectors: `clusters` random directions, `per` noisy tokens around each.
    fn clustered(clusters: usize, per: usize, dim: usize, seed: u64) -> Vec<f32> {
        let mut rng = StdRng::seed_from_u64(seed);
        let centers: Vec<Vec<f32>> = (0..clusters)
            .map(|_| {
                let mut v: Vec<f32> = (0..dim).map(|_| rng.random::<f32>() - 0.5).collect();
                normalise(&mut v);
                v
            })
            .collect();
        let mut out = Vec::with_capacity(clusters * per * dim);
        for i in 0..clusters * per {
            let mut v: Vec<f32> = centers[i % clusters]
                .iter()
                .map(|x| x + 0.15 * (rng.random::<f32>() - 0.5))
                .collect();
            normalise(&mut v);
            out.extend(v);
        }
        out
    }

    #[test]
    fn size_rule_follows_colbert_and_is_capped() {
        // 2^floor(log2(16 sqrt(n))): 1M tokens -> 16000 -> 8192; 64M -> 128k -> capped at 2^16.
        assert_eq!(Codebook::size_for_tokens(1_000_000), 8192);
        assert_eq!(Codebook::size_for_tokens(64_000_000), MAX_CENTROIDS);
        assert_eq!(Codebook::size_for_tokens(0), 1);
        assert_eq!(
            Codebook::size_for_tokens(100),
            6,
            "at most one centroid per 16 tokens"
        );
        assert_eq!(Codebook::effective_size(1024, 1_000_000), 1024);
    }

    #[test]
    fn quotas_sum_to_k_and_respect_cluster_sizes() {
        let q = quotas(&[100, 0, 7, 1, 50], 40);
        assert_eq!(q.iter().sum::<usize>(), 40);
        assert_eq!(q[1], 0);
        assert!(q.iter().zip([100, 0, 7, 1, 50]).all(|(&a, n)| a <= n));
        // Fewer tokens than centroids asked: every token its own centroid.
        assert_eq!(quotas(&[2, 3], 10), vec![2, 3]);
    }

    #[test]
    fn transpose_into_is_coordinate_major() {
        for (n_rows, dim) in [
            (1usize, 1usize),
            (8, 8),
            (9, 17),
            (23, 128),
            (16, 7),
            (3, 24),
        ] {
            let block: Vec<f32> = (0..(n_rows + 2) * dim).map(|i| i as f32).collect();
            let rows: Vec<u32> = (0..n_rows as u32)
                .map(|r| (r * 7 + 1) % (n_rows as u32 + 2))
                .collect();
            let mut out = Vec::new();
            transpose_into(&block, dim, rows.iter().copied(), &mut out);
            assert_eq!(out.len(), n_rows * dim);
            for (j, &r) in rows.iter().enumerate() {
                for k in 0..dim {
                    assert_eq!(
                        out[k * n_rows + j],
                        block[r as usize * dim + k],
                        "{n_rows}x{dim} j={j} k={k}"
                    );
                }
            }
        }
    }

    /// The plain one-value-at-a-time scan [`top_indices`] must agree with, ties and NaN included.
    fn plain_top(row: &[f32], p: usize) -> Vec<u32> {
        let mut best: Vec<(f32, u32)> = Vec::new();
        for (i, &v) in row.iter().enumerate() {
            if best.len() < p {
                best.push((v, i as u32));
            } else if p > 0 && v > best[argmin(&best)].0 {
                let w = argmin(&best);
                best[w] = (v, i as u32);
            }
        }
        best.into_iter().map(|(_, i)| i).collect()
    }

    #[test]
    fn top_indices_agree_with_a_plain_scan_on_ties_and_nan() {
        for n in [0usize, 1, 7, 8, 9, 40, 256] {
            for seed in 0..10u64 {
                // Few distinct values (many ties), some NaN.
                let row: Vec<f32> = (0..n)
                    .map(|i| match (i as u64 * 7 + seed * 13) % 11 {
                        0 => f32::NAN,
                        v => (v % 4) as f32,
                    })
                    .collect();
                for p in 0..6 {
                    let mut got = Vec::new();
                    top_indices(&row, p, &mut got);
                    got.sort_unstable();
                    let mut want = plain_top(&row, p);
                    want.sort_unstable();
                    assert_eq!(got, want, "n={n} p={p} seed={seed}");
                }
            }
        }
    }

    #[test]
    fn top_indices_are_the_largest_values() {
        for n in [1usize, 3, 4, 5, 17, 256] {
            for seed in 0..20u64 {
                let row: Vec<f32> = (0..n)
                    .map(|i| ((i as u64 * 2654435761 + seed * 7919) % 1009) as f32)
                    .collect();
                for p in 1..=n.min(6) {
                    let mut got = Vec::new();
                    top_indices(&row, p, &mut got);
                    let mut want: Vec<f32> = row.clone();
                    want.sort_by(|a, b| b.total_cmp(a));
                    let mut vals: Vec<f32> = got.iter().map(|&i| row[i as usize]).collect();
                    vals.sort_by(|a, b| b.total_cmp(a));
                    assert_eq!(vals, want[..p].to_vec(), "n={n} p={p} seed={seed}");
                    got.sort_unstable();
                    got.dedup();
                    assert_eq!(got.len(), p, "distinct indices");
                    let mut plain = plain_top(&row, p);
                    plain.sort_unstable();
                    assert_eq!(got, plain, "the same indices as a plain scan");
                }
            }
        }
    }

    #[test]
    fn two_level_codebook_assigns_like_brute_force_and_round_trips() {
        let dim = 16;
        let toks = clustered(6000, 3, dim, 5);
        let k = FLAT_MAX * 2;
        let book = Codebook::train(&toks, dim, k, 3);
        assert!(
            book.coarse_len() > 0,
            "a codebook above FLAT_MAX has a coarse level"
        );
        assert!(book.len() <= k && book.len() > k / 2, "{}", book.len());
        let codes = book.assign(&toks);
        assert_eq!(codes, book.assign_sequential(&toks));
        let agree = book.assign_agreement(&toks);
        assert!((0.9..=1.0).contains(&agree), "{agree}");
        // Flat: exact on f32 products; the kernel's fused multiply-adds round differently, so a token may take a
        // near-tie's other centroid, never one measurably worse.
        let flat = Codebook::train(&toks, dim, 64, 3);
        assert_eq!(
            assign_flat(flat.centroids(), flat.len(), dim, &toks),
            flat.assign_by_products(&toks)
                .iter()
                .map(|&c| c as usize)
                .collect::<Vec<_>>(),
            "flat products: exact"
        );
        assert_eq!(flat.assign_agreement(&toks), 1.0, "flat: exact");
        for (book, flat_book) in [(&flat, true), (&book, false)] {
            let fast = book.assign(&toks);
            let reference = book.assign_by_products(&toks);
            let mut same = 0;
            for (t, (&a, &b)) in toks.chunks_exact(dim).zip(fast.iter().zip(&reference)) {
                let score = |c: u16| -> f32 {
                    let cent = &book.centroids()[c as usize * dim..][..dim];
                    t.iter().zip(cent).map(|(x, y)| x * y).sum()
                };
                let norm = t.iter().map(|v| v * v).sum::<f32>().sqrt();
                same += usize::from(a == b);
                if flat_book {
                    assert!(score(a) >= score(b) - 2e-3 * norm, "kernel code {a} vs {b}");
                }
            }
            assert!(
                same as f64 >= 0.999 * fast.len() as f64,
                "kernel and products agree on {same} of {} tokens",
                fast.len()
            );
        }
        // Round trip, and damage refused with a reason.
        let bytes = book.to_bytes();
        let back = Codebook::from_bytes(&bytes, dim).unwrap();
        assert_eq!(back.centroids(), book.centroids());
        assert_eq!(back.assign(&toks), codes);
        assert!(Codebook::from_bytes(&bytes, dim + 1).is_err());
        assert!(Codebook::from_bytes(&bytes[..bytes.len() - 4], dim).is_err());
        assert!(Codebook::from_bytes(&bytes[..8], dim).is_err());
        let mut nan = bytes.clone();
        nan[16..20].copy_from_slice(&f32::NAN.to_le_bytes());
        assert!(Codebook::from_bytes(&nan, dim)
            .unwrap_err()
            .contains("non-finite"));
        let mut ranges = bytes.clone();
        let last = ranges.len() - 4;
        ranges[last..].copy_from_slice(&1u32.to_le_bytes());
        assert!(Codebook::from_bytes(&ranges, dim)
            .unwrap_err()
            .contains("ranges"));
        assert_eq!(back.train_error(), book.train_error());
        let mut bad_err = bytes.clone();
        bad_err[12..16].copy_from_slice(&(-1.0f32).to_le_bytes());
        assert!(Codebook::from_bytes(&bad_err, dim)
            .unwrap_err()
            .contains("training error"));
        // A flat codebook round trips too.
        let small = Codebook::train(&toks, dim, 64, 3);
        let back = Codebook::from_bytes(&small.to_bytes(), dim).unwrap();
        assert_eq!(back.centroids(), small.centroids());
        assert_eq!(back.coarse_len(), 0);
    }

    #[test]
    fn parallel_query_table_equals_sequential() {
        let dim = 16;
        let toks = clustered(300, 10, dim, 9);
        let book = Codebook::train(&toks, dim, 1500, 1);
        let q = &toks[..5 * dim];
        let (a, b) = (book.query_table(q), book.query_table_par(q, 3));
        assert_eq!(a.table, b.table);
        assert_eq!(a.query_tokens(), 5);
    }

    #[test]
    fn drift_is_measured_against_the_training_error() {
        let dim = 16;
        let toks = clustered(200, 20, dim, 21);
        let book = Codebook::train(&toks, dim, 256, 4);
        let base = book.train_error().unwrap();
        assert!(base > 0.0 && base < 0.2, "{base}");
        // More tokens from the same clusters: no drift. Tokens from other directions: drift.
        assert!(!book.drifted(&clustered(200, 5, dim, 21)));
        assert!(book.drifted(&clustered(200, 5, dim, 99)));
        // Unknown training error (bare centroids): never drifted.
        let bare = Codebook::from_centroids(dim, book.centroids().to_vec());
        assert_eq!(bare.train_error(), None);
        assert!(!bare.drifted(&clustered(200, 5, dim, 99)));
        assert_eq!(
            book.quantization_error(&[0.0; 16]),
            0.0,
            "zero tokens are skipped"
        );
    }
}
