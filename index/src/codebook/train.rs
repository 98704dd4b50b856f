//! Training: k-means (flat or two-level), the codebook size rule, the quantization error and drift.
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;

use super::assign::assign_flat;
use super::*;
use crate::kernels;

pub(super) fn normalise(v: &mut [f32]) {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if n > 0.0 {
        v.iter_mut().for_each(|x| *x /= n);
    }
}

/// Spherical k-means of `sample` (row-major) into `k` unit centroids; None when `cancel()` turns true.
pub(super) fn kmeans(
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
pub(super) fn quotas(counts: &[usize], k: usize) -> Vec<usize> {
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

    pub(super) fn with_train_error(mut self, sample: &[f32]) -> Codebook {
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
}
