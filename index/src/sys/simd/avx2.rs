//! AVX2+FMA+F16C kernels: 8 f32 lanes, a document panel is processed as two 8-token halves.
use super::{Lanes, PANEL};
use half::f16;
use std::arch::x86_64::*;

/// Query tokens scored together: each keeps 2 ymm accumulators (the two panel halves), so a block of 6 uses
/// 12 of the 16 ymm registers, leaving room for the two converted half rows and a broadcast.
const QMAX: usize = 6;

/// Loads 8 f16 and widens them to f32.
/// # Safety
/// AVX2 and F16C are available and `p` is valid for reading 8 f16.
#[inline]
#[target_feature(enable = "avx2,f16c")]
pub(super) unsafe fn load_ph(p: *const f16) -> __m256 {
    // SAFETY: the caller guarantees 16 readable bytes at p (unaligned load).
    _mm256_cvtph_ps(unsafe { _mm_loadu_si128(p.cast()) })
}

/// Chamfer score: the sum over the `n_q` query tokens of their max dot product with the document's tokens.
/// # Safety
/// AVX2, FMA and F16C are available, `qt` is valid for reading `n_q * dim` f32 (k-major) and `doc` for
/// reading `n_panels * 16 * dim` f16 (panels).
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn chamfer(
    qt: *const f32,
    n_q: usize,
    doc: *const f16,
    n_panels: usize,
    dim: usize,
) -> f32 {
    let mut total = 0.0;
    for (j0, qb) in super::blocks(n_q, QMAX) {
        // SAFETY: j0 + qb <= n_q, so the block's reads qt[k * n_q + j0 + j] (k < dim, j < qb) stay within the
        // caller's n_q * dim values; the document reads are the caller's.
        total +=
            unsafe { by_block_size!(qb, block(qt.add(j0), n_q, doc, n_panels, dim); 1 2 3 4 5 6) };
    }
    total
}

/// Sum of the max scores of QB query tokens (`q[k * stride + j]`) over all the document's panels.
/// Each panel row is widened once, as two 8-token halves, and multiplied by the QB broadcast query
/// coordinates: 2 * QB independent FMA chains, two ymm accumulators per query token.
/// # Safety
/// As [`chamfer`], with `q[k * stride + j]` readable for k < dim, j < QB.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn block<const QB: usize>(
    q: *const f32,
    stride: usize,
    doc: *const f16,
    n_panels: usize,
    dim: usize,
) -> f32 {
    let mut best = [_mm256_set1_ps(f32::NEG_INFINITY); QB];
    for p in 0..n_panels {
        // SAFETY: panel p < n_panels starts at p * 16 * dim.
        let panel = unsafe { doc.add(p * PANEL * dim) };
        let mut acc = [[_mm256_setzero_ps(); 2]; QB];
        for k in 0..dim {
            // SAFETY: k < dim: both 8-token halves of row k are within the panel.
            let rows = unsafe {
                [
                    load_ph(panel.add(k * PANEL)),
                    load_ph(panel.add(k * PANEL + 8)),
                ]
            };
            for (j, a) in acc.iter_mut().enumerate() {
                // SAFETY: k < dim, j < QB: within the query block.
                let x = _mm256_set1_ps(unsafe { *q.add(k * stride + j) });
                a[0] = _mm256_fmadd_ps(x, rows[0], a[0]);
                a[1] = _mm256_fmadd_ps(x, rows[1], a[1]);
            }
        }
        for (b, a) in best.iter_mut().zip(acc) {
            *b = _mm256_max_ps(*b, _mm256_max_ps(a[0], a[1]));
        }
    }
    best.iter().map(|&m| hmax(m)).sum()
}

/// Max of the 8 lanes.
#[inline]
#[target_feature(enable = "avx2")]
fn hmax(v: __m256) -> f32 {
    let m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)))
}

/// `sum a[i] * b[i]` for i < n, n a multiple of 8.
/// # Safety
/// AVX2, FMA and F16C are available and `a`, `b` are valid for reading n elements.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot<A: Lanes, B: Lanes>(a: *const A, b: *const B, n: usize) -> f32 {
    debug_assert_eq!(n % 8, 0);
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    while i + 32 <= n {
        for (l, s) in acc.iter_mut().enumerate() {
            // SAFETY: i + 8 * l + 8 <= n.
            *s = unsafe {
                _mm256_fmadd_ps(A::load8(a.add(i + 8 * l)), B::load8(b.add(i + 8 * l)), *s)
            };
        }
        i += 32;
    }
    while i < n {
        // SAFETY: i + 8 <= n since n is a multiple of 8.
        acc[0] = unsafe { _mm256_fmadd_ps(A::load8(a.add(i)), B::load8(b.add(i)), acc[0]) };
        i += 8;
    }
    let s = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
    let m = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps::<1>(s));
    let m = _mm_add_ps(m, _mm_movehl_ps(m, m));
    _mm_cvtss_f32(_mm_add_ss(m, _mm_movehdup_ps(m)))
}
