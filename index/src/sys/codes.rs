//! Centroid-interaction scoring: the max over a document's token *codes* of a per-query table.
//!
//! `table` is `K x W` (row-major): row `c` holds the query tokens' inner products with centroid `c`, `W` a
//! multiple of 8 (padding columns are 0, so they add nothing to the sum). The score of a document with codes
//! `c_1..c_n` is `sum over columns of max over i of table[c_i][col]`.

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
    if w == 0 || w % 8 != 0 || codes.is_empty() {
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

#[cfg(test)]
mod tests {
    use super::*;

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
