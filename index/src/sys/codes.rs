//! Centroid-interaction scoring: the max over a document's token *codes* of a per-query table.
//!
//! `table` is `K x W` (row-major): row `c` holds the query tokens' inner products with centroid `c`, `W` a
//! multiple of 8 (padding columns are 0, so they add nothing to the sum). The score of a document with codes
//! `c_1..c_n` is `sum over columns of max over i of table[c_i][col]`. [`centroid_table`] builds the table.
use half::f16;

/// Scalar twin (the reference).
pub(crate) fn score_scalar(table: &[f32], w: usize, codes: &[u16]) -> f32 {
    let mut acc = vec![f32::NEG_INFINITY; w];
    for &c in codes {
        let row = &table[c as usize * w..c as usize * w + w];
        for (a, &v) in acc.iter_mut().zip(row) {
            *a = a.max(v);
        }
    }
    if codes.is_empty() {
        return 0.0;
    }
    acc.iter().sum()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn score_avx2(table: &[f32], w: usize, codes: &[u16]) -> f32 {
    use std::arch::x86_64::*;
    let mut total = 0.0f32;
    let mut block = 0;
    // Up to 32 query tokens (4 registers) per pass over the codes.
    while block < w {
        let lanes = (w - block).min(32);
        let mut acc = [_mm256_set1_ps(f32::NEG_INFINITY); 4];
        for &c in codes {
            let base = c as usize * w + block;
            let mut r = 0;
            while r * 8 < lanes {
                // SAFETY: the caller checked table.len() >= K * w for every code c < K, and base + r*8 + 8
                // <= c*w + w because block + lanes <= w and lanes is a multiple of 8.
                unsafe {
                    acc[r] =
                        _mm256_max_ps(acc[r], _mm256_loadu_ps(table.as_ptr().add(base + r * 8)));
                }
                r += 1;
            }
        }
        let mut buf = [0f32; 8];
        for a in acc.iter().take(lanes / 8) {
            // SAFETY: buf holds exactly 8 f32.
            unsafe { _mm256_storeu_ps(buf.as_mut_ptr(), *a) };
            total += buf.iter().sum::<f32>();
        }
        block += lanes;
    }
    total
}

/// Dispatched score. Codes must be `< table.len() / w`; out-of-range codes or a bad `w` give 0 (never UB).
pub(crate) fn score(table: &[f32], w: usize, codes: &[u16]) -> f32 {
    if w == 0 || !w.is_multiple_of(8) || codes.is_empty() {
        return 0.0;
    }
    let k = table.len() / w;
    if codes.iter().any(|&c| c as usize >= k) {
        return 0.0;
    }
    #[cfg(target_arch = "x86_64")]
    if matches!(
        crate::kernels::kernel_level(),
        crate::kernels::KernelLevel::Avx512 | crate::kernels::KernelLevel::Avx2Fma
    ) {
        // SAFETY: avx2 was detected at run time (both levels imply it); codes and w were checked above.
        return unsafe { score_avx2(table, w, codes) };
    }
    score_scalar(table, w, codes)
}

/// Scalar twin of [`centroid_table`].
pub(crate) fn centroid_table_scalar(
    qt: &[f32],
    nq: usize,
    dim: usize,
    panels: &[f16],
    k: usize,
    w: usize,
    out: &mut [f32],
) {
    for c in 0..k {
        let (p, t) = (c / 16, c % 16);
        for j in 0..nq {
            out[c * w + j] = (0..dim)
                .map(|kk| qt[kk * nq + j] * panels[(p * dim + kk) * 16 + t].to_f32())
                .sum();
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn centroid_table_avx512(
    qt: &[f32],
    nq: usize,
    dim: usize,
    panels: &[f16],
    k: usize,
    w: usize,
    out: &mut [f32],
) {
    use std::arch::x86_64::*;
    let mut tmp = [[0f32; 16]; 8];
    for p in 0..k.div_ceil(16) {
        for j0 in (0..nq).step_by(8) {
            let jb = (nq - j0).min(8);
            let mut acc = [_mm512_setzero_ps(); 8];
            for kk in 0..dim {
                // SAFETY: the caller checked panels.len() >= ceil(k/16) * 16 * dim and qt.len() >= dim * nq;
                // p < ceil(k/16), kk < dim, j0 + j < nq.
                unsafe {
                    let row = _mm512_cvtph_ps(_mm256_loadu_si256(
                        panels.as_ptr().add((p * dim + kk) * 16).cast(),
                    ));
                    for (j, a) in acc.iter_mut().enumerate().take(jb) {
                        *a = _mm512_fmadd_ps(
                            _mm512_set1_ps(*qt.get_unchecked(kk * nq + j0 + j)),
                            row,
                            *a,
                        );
                    }
                }
            }
            for j in 0..jb {
                // SAFETY: tmp[j] holds 16 f32.
                unsafe { _mm512_storeu_ps(tmp[j].as_mut_ptr(), acc[j]) };
            }
            for t in 0..16.min(k - p * 16) {
                for (j, row) in tmp.iter().enumerate().take(jb) {
                    out[(p * 16 + t) * w + j0 + j] = row[t];
                }
            }
        }
    }
}

/// `out[c * w + j] = <centroid c, query token j>` for `k` centroids stored as f16 16-token k-major panels and a
/// k-major query `qt[kk * nq + j]`; columns `j >= nq` are left as they are. Does nothing on inconsistent sizes.
pub(crate) fn centroid_table(
    qt: &[f32],
    nq: usize,
    dim: usize,
    panels: &[f16],
    k: usize,
    w: usize,
    out: &mut [f32],
) {
    if nq > w
        || qt.len() < dim * nq
        || panels.len() < k.div_ceil(16) * 16 * dim
        || out.len() < k * w
    {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if crate::kernels::kernel_level() == crate::kernels::KernelLevel::Avx512 {
        // SAFETY: AVX-512F was detected at run time; the sizes were checked above.
        unsafe { centroid_table_avx512(qt, nq, dim, panels, k, w, out) };
        return;
    }
    centroid_table_scalar(qt, nq, dim, panels, k, w, out);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn centroid_table_matches_scalar() {
        for (k, nq, dim) in [
            (1usize, 1usize, 3usize),
            (17, 9, 16),
            (40, 8, 128),
            (5, 20, 7),
        ] {
            let cents: Vec<f32> = (0..k * dim)
                .map(|i| ((i * 37) % 19) as f32 / 9.0 - 1.0)
                .collect();
            let mut panels = Vec::new();
            crate::kernels::pack_tokens(&cents, dim, &mut panels);
            let qt: Vec<f32> = (0..nq * dim)
                .map(|i| ((i * 11) % 13) as f32 / 6.0 - 1.0)
                .collect();
            let w = nq.div_ceil(8) * 8;
            let (mut a, mut b) = (vec![0f32; k * w], vec![0f32; k * w]);
            centroid_table_scalar(&qt, nq, dim, &panels, k, w, &mut a);
            centroid_table(&qt, nq, dim, &panels, k, w, &mut b);
            for (x, y) in a.iter().zip(&b) {
                assert!(
                    (x - y).abs() < 1e-4 * x.abs().max(1.0),
                    "k={k} nq={nq} dim={dim}"
                );
            }
        }
    }

    #[test]
    fn simd_matches_scalar() {
        for w in [8usize, 16, 24, 40] {
            let k = 37;
            let table: Vec<f32> = (0..k * w)
                .map(|i| ((i * 7919) % 101) as f32 / 50.0 - 1.0)
                .collect();
            for n in [1usize, 2, 9, 113] {
                let codes: Vec<u16> = (0..n).map(|i| ((i * 31 + 7) % k) as u16).collect();
                let (a, b) = (score_scalar(&table, w, &codes), score(&table, w, &codes));
                assert!((a - b).abs() < 1e-4, "w={w} n={n}: {a} vs {b}");
            }
        }
        assert_eq!(score(&[1.0; 16], 8, &[5]), 0.0, "out-of-range code");
    }
}
