//! AVX-512F kernels: 16 f32 lanes, one lane per token of a document panel.
use super::{Lanes, PANEL};
use half::f16;
use std::arch::x86_64::*;

/// Query tokens scored together: each keeps 2 zmm accumulators (two panels at a time), so a block of 12
/// uses 24 of the 32 zmm registers, leaving room for the two converted panel rows and a broadcast.
const QMAX: usize = 12;

/// Loads 16 f16 and widens them to f32.
/// # Safety
/// AVX-512F is available and `p` is valid for reading 16 f16.
#[inline]
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn load_ph(p: *const f16) -> __m512 {
    // SAFETY: the caller guarantees 32 readable bytes at p (unaligned load).
    _mm512_cvtph_ps(unsafe { _mm256_loadu_si256(p.cast()) })
}

/// Chamfer score: the sum over the `n_q` query tokens of their max dot product with the document's tokens.
/// # Safety
/// AVX-512F is available, `qt` is valid for reading `n_q * dim` f32 (k-major) and `doc` for reading
/// `n_panels * 16 * dim` f16 (panels).
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn chamfer(qt: *const f32, n_q: usize, doc: *const f16, n_panels: usize, dim: usize) -> f32 {
    let mut total = 0.0;
    // Balanced blocks of at most QMAX query tokens: 32 tokens run as 11 + 11 + 10, not 12 + 12 + 8.
    let n_blocks = n_q.div_ceil(QMAX);
    let mut j0 = 0;
    for b in 0..n_blocks {
        let qb = n_q / n_blocks + usize::from(b < n_q % n_blocks);
        // SAFETY: j0 + qb <= n_q, so the block's reads qt[k * n_q + j0 + j] (k < dim, j < qb) stay in qt; the
        // document reads are the caller's.
        let q = unsafe { qt.add(j0) };
        total += unsafe {
            match qb {
                1 => block::<1>(q, n_q, doc, n_panels, dim),
                2 => block::<2>(q, n_q, doc, n_panels, dim),
                3 => block::<3>(q, n_q, doc, n_panels, dim),
                4 => block::<4>(q, n_q, doc, n_panels, dim),
                5 => block::<5>(q, n_q, doc, n_panels, dim),
                6 => block::<6>(q, n_q, doc, n_panels, dim),
                7 => block::<7>(q, n_q, doc, n_panels, dim),
                8 => block::<8>(q, n_q, doc, n_panels, dim),
                9 => block::<9>(q, n_q, doc, n_panels, dim),
                10 => block::<10>(q, n_q, doc, n_panels, dim),
                11 => block::<11>(q, n_q, doc, n_panels, dim),
                _ => block::<QMAX>(q, n_q, doc, n_panels, dim),
            }
        };
        j0 += qb;
    }
    total
}

/// Sum of the max scores of QB query tokens (`q[k * stride + j]`) over all the document's panels.
/// # Safety
/// As [`chamfer`], with `q[k * stride + j]` readable for k < dim, j < QB.
#[target_feature(enable = "avx512f")]
unsafe fn block<const QB: usize>(q: *const f32, stride: usize, doc: *const f16, n_panels: usize, dim: usize) -> f32 {
    let mut best = [_mm512_set1_ps(f32::NEG_INFINITY); QB];
    let panel = PANEL * dim;
    let mut p = 0;
    while p + 2 <= n_panels {
        // SAFETY: panels p and p + 1 are within the caller's n_panels.
        unsafe { panels::<QB, 2>(q, stride, doc.add(p * panel), dim, &mut best) };
        p += 2;
    }
    if p < n_panels {
        // SAFETY: panel p is the last one.
        unsafe { panels::<QB, 1>(q, stride, doc.add(p * panel), dim, &mut best) };
    }
    best.iter().map(|&m| _mm512_reduce_max_ps(m)).sum()
}

/// Folds the scores of NP consecutive panels at `doc` into `best` (per query token, per panel lane maxima).
/// Each panel row (16 tokens' coordinate k) is widened once and multiplied by QB broadcast query coordinates,
/// giving NP * QB independent FMA chains.
/// # Safety
/// As [`block`], with `doc` valid for reading NP panels.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn panels<const QB: usize, const NP: usize>(
    q: *const f32,
    stride: usize,
    doc: *const f16,
    dim: usize,
    best: &mut [__m512; QB],
) {
    let mut acc = [[_mm512_setzero_ps(); QB]; NP];
    for k in 0..dim {
        // SAFETY: k < dim and i < NP: row k of panel i is within the NP panels at doc.
        let rows: [__m512; NP] = std::array::from_fn(|i| unsafe { load_ph(doc.add(i * PANEL * dim + k * PANEL)) });
        for j in 0..QB {
            // SAFETY: k < dim, j < QB: within the query block.
            let x = _mm512_set1_ps(unsafe { *q.add(k * stride + j) });
            for i in 0..NP {
                acc[i][j] = _mm512_fmadd_ps(x, rows[i], acc[i][j]);
            }
        }
    }
    for a in &acc {
        for j in 0..QB {
            best[j] = _mm512_max_ps(best[j], a[j]);
        }
    }
}

/// `sum a[i] * b[i]` for i < n, n a multiple of 16.
/// # Safety
/// AVX-512F is available and `a`, `b` are valid for reading n elements.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn dot<A: Lanes, B: Lanes>(a: *const A, b: *const B, n: usize) -> f32 {
    debug_assert_eq!(n % 16, 0);
    let mut acc = [_mm512_setzero_ps(); 4];
    let mut i = 0;
    while i + 64 <= n {
        for (l, s) in acc.iter_mut().enumerate() {
            // SAFETY: i + 16 * l + 16 <= n.
            *s = unsafe { _mm512_fmadd_ps(A::load16(a.add(i + 16 * l)), B::load16(b.add(i + 16 * l)), *s) };
        }
        i += 64;
    }
    while i < n {
        // SAFETY: i + 16 <= n since n is a multiple of 16.
        acc[0] = unsafe { _mm512_fmadd_ps(A::load16(a.add(i)), B::load16(b.add(i)), acc[0]) };
        i += 16;
    }
    _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3])))
}
