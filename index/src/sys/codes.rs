//! Centroid-interaction scoring: the max over a document's token *codes* of a per-query table.
//!
//! `table` is `K x W` (row-major) 16-bit fixed-point values: row `c` holds the query tokens' inner products
//! with centroid `c`, times the query's `scale` and rounded ([`quantize`]); `W` is a multiple of [`LANES`]
//! (padding columns are 0, so they add nothing to the sum). The score of a document with codes `c_1..c_n` is
//! `sum over columns of max over i of table[c_i][col]`, an exact integer sum ([`score`]); the caller divides
//! it by the scale. One row is 16 bits per query token (a cache line for 32 of them, half the f32 row), and
//! a max over 16 query tokens is one instruction. [`centroid_table`] builds the table.
use half::f16;

/// Columns per SIMD register of the scoring kernel (16 x i16 = 256 bits); the table's width is a multiple.
pub(crate) const LANES: usize = 16;
/// Largest magnitude of a table value.
pub(crate) const QUANT_MAX: f32 = 32767.0;

/// `v * scale`, saturated to +-[`QUANT_MAX`] and rounded to the nearest integer, ties to even (as the SIMD
/// conversion rounds); NaN gives 0.
#[inline]
pub(crate) fn quantize(v: f32, scale: f32) -> i16 {
    (v * scale).clamp(-QUANT_MAX, QUANT_MAX).round_ties_even() as i16
}

/// Scalar twin (the reference).
pub(crate) fn score_scalar(table: &[i16], w: usize, codes: &[u16]) -> i32 {
    if codes.is_empty() {
        return 0;
    }
    let last = table.len() / w - 1;
    let mut acc = vec![i16::MIN; w];
    for &c in codes {
        let c = (c as usize).min(last);
        let row = &table[c * w..c * w + w];
        for (a, &v) in acc.iter_mut().zip(row) {
            *a = (*a).max(v);
        }
    }
    acc.iter().map(|&v| i32::from(v)).sum()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn score_avx2(table: &[i16], w: usize, codes: &[u16]) -> i32 {
    use std::arch::x86_64::*;
    let mut total = _mm256_setzero_si256();
    let ones = _mm256_set1_epi16(1);
    let last = table.len() / w - 1;
    let mut block = 0;
    // Up to 64 query tokens (4 registers) per pass over the codes.
    while block < w {
        let lanes = (w - block).min(4 * LANES);
        let mut acc = [_mm256_set1_epi16(i16::MIN); 4];
        for &c in codes {
            let base = (c as usize).min(last) * w + block;
            let mut r = 0;
            while r * LANES < lanes {
                // SAFETY: the row index is clamped to last = table.len() / w - 1 (the caller checked K >= 1), and
                // base + r*16 + 16 <= row*w + w <= table.len() because block + lanes <= w and lanes is a
                // multiple of 16.
                unsafe {
                    let row = _mm256_loadu_si256(table.as_ptr().add(base + r * LANES).cast());
                    acc[r] = _mm256_max_epi16(acc[r], row);
                }
                r += 1;
            }
        }
        for a in acc.iter().take(lanes / LANES) {
            // Pairs of i16 summed into i32 lanes: exact.
            total = _mm256_add_epi32(total, _mm256_madd_epi16(*a, ones));
        }
        block += lanes;
    }
    let mut buf = [0i32; 8];
    // SAFETY: buf holds exactly 8 i32.
    unsafe { _mm256_storeu_si256(buf.as_mut_ptr().cast(), total) };
    buf.iter().sum()
}

/// Dispatched score (the integer sum; see the module documentation). Codes should be `< K = table.len() / w`
/// (the writer checks them); a larger one reads row `K - 1` (a damaged shard that kept its checksum gives wrong
/// scores, never UB); a bad `w` or an empty table gives 0. No pass over the codes besides the kernel's: a
/// separate range check cost 9% of a 1M-document query (its first touch of the codes).
pub(crate) fn score(table: &[i16], w: usize, codes: &[u16]) -> i32 {
    score_on(Kernel::best(), table, w, codes)
}

/// [`score`] on `kernel` (or the best one below it that this CPU supports; AVX-512 uses the AVX2 kernel).
pub(crate) fn score_on(kernel: Kernel, table: &[i16], w: usize, codes: &[u16]) -> i32 {
    if w == 0 || !w.is_multiple_of(LANES) || codes.is_empty() || table.len() < w {
        return 0;
    }
    match kernel.supported() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX2 was detected at run time (both levels imply it); w is a non-zero multiple of 16 and the
        // table holds at least one row (checked above); the kernel clamps the codes.
        Kernel::Avx512 | Kernel::Avx2 => unsafe { score_avx2(table, w, codes) },
        _ => score_scalar(table, w, codes),
    }
}

/// The query side of a centroid table: the k-major query `qt[kk * nq + j]` (`nq` tokens of `dim` values), the
/// table's row width `w >= nq` and the quantization scale of its values.
#[derive(Clone, Copy, Debug)]
pub(crate) struct TableQuery<'a> {
    pub qt: &'a [f32],
    pub nq: usize,
    pub dim: usize,
    pub w: usize,
    pub scale: f32,
}

/// Scalar twin of [`centroid_table`].
pub(crate) fn centroid_table_scalar(q: TableQuery<'_>, panels: &[f16], k: usize, out: &mut [i16]) {
    let TableQuery {
        qt,
        nq,
        dim,
        w,
        scale,
    } = q;
    for c in 0..k {
        let (p, t) = (c / 16, c % 16);
        for j in 0..nq {
            let v: f32 = (0..dim)
                .map(|kk| qt[kk * nq + j] * panels[(p * dim + kk) * 16 + t].to_f32())
                .sum();
            out[c * w + j] = quantize(v, scale);
        }
    }
}

/// One block of a SIMD table kernel: the inner products of the `G` centroids at `panel[kk * 16 + t]` (t < G)
/// with query tokens `q[kk * stride + j]`, quantized as [`quantize`] does, into `out[j][t]`. Arguments: `q`,
/// `stride`, `panel`, `dim`, `scale`, `out`.
#[cfg(target_arch = "x86_64")]
type TableBlock<const G: usize, const QB: usize> =
    unsafe fn(*const f32, usize, *const f16, usize, f32, &mut [[i16; G]; QB]);

/// The loop both SIMD table kernels share: every group of `G` centroids (a panel of 16, or half of one) against
/// blocks of up to `QB` query tokens; `blocks[jb - 1]` computes a block of `jb` tokens, and its values land in
/// `out`.
/// # Safety
/// The sizes passed [`centroid_table_on`]'s checks, and the CPU runs the instruction set of `blocks`.
#[cfg(target_arch = "x86_64")]
unsafe fn table_in_blocks<const G: usize, const QB: usize>(
    q: TableQuery<'_>,
    panels: &[f16],
    k: usize,
    out: &mut [i16],
    blocks: &[TableBlock<G, QB>; QB],
) {
    let TableQuery {
        qt,
        nq,
        dim,
        w,
        scale,
    } = q;
    for c0 in (0..k).step_by(G) {
        let rows = (k - c0).min(G);
        let mut j0 = 0;
        while j0 < nq {
            let jb = (nq - j0).min(QB);
            let mut tmp = [[0i16; G]; QB];
            // SAFETY: panels.len() >= ceil(k/16) * 16 * dim and qt.len() >= dim * nq were checked, so the panel of
            // centroid c0 (at (c0 / 16) * dim * 16, lane c0 % 16, which G divides) is readable for kk < dim and
            // t < G, and the query for kk < dim and j < jb (j0 + jb <= nq); the caller vouches for the CPU.
            unsafe {
                let panel = panels.as_ptr().add((c0 / 16) * dim * 16 + c0 % 16);
                blocks[jb - 1](qt.as_ptr().add(j0), nq, panel, dim, scale, &mut tmp);
            }
            for t in 0..rows {
                for (j, row) in tmp.iter().enumerate().take(jb) {
                    out[(c0 + t) * w + j0 + j] = row[t];
                }
            }
            j0 += jb;
        }
    }
}

/// The AVX-512 blocks: a whole panel (16 centroids) against 1..=[`AVX512_QB`] query tokens.
#[cfg(target_arch = "x86_64")]
const AVX512_BLOCKS: [TableBlock<16, AVX512_QB>; AVX512_QB] = [
    table_block_avx512::<1>,
    table_block_avx512::<2>,
    table_block_avx512::<3>,
    table_block_avx512::<4>,
    table_block_avx512::<5>,
    table_block_avx512::<6>,
    table_block_avx512::<7>,
    table_block_avx512::<8>,
    table_block_avx512::<9>,
    table_block_avx512::<10>,
    table_block_avx512::<11>,
    table_block_avx512::<12>,
    table_block_avx512::<13>,
    table_block_avx512::<14>,
    table_block_avx512::<15>,
    table_block_avx512::<16>,
];

/// The AVX2 blocks: a half panel (8 centroids) against 1..=[`AVX2_QB`] query tokens.
#[cfg(target_arch = "x86_64")]
const AVX2_BLOCKS: [TableBlock<8, AVX2_QB>; AVX2_QB] = [
    table_block_avx2::<1>,
    table_block_avx2::<2>,
    table_block_avx2::<3>,
    table_block_avx2::<4>,
    table_block_avx2::<5>,
    table_block_avx2::<6>,
    table_block_avx2::<7>,
    table_block_avx2::<8>,
    table_block_avx2::<9>,
    table_block_avx2::<10>,
    table_block_avx2::<11>,
    table_block_avx2::<12>,
];

/// Query tokens per block of the AVX-512 table kernel: one zmm accumulator each, of the 32 registers.
#[cfg(target_arch = "x86_64")]
const AVX512_QB: usize = 16;

/// Inner products of the 16 centroids of one panel (`panel[kk * 16 + t]`) with QB query tokens
/// (`q[kk * stride + j]`), quantized as [`quantize`] does, into `out[j][t]`. A block size known at compile time
/// keeps the accumulators in registers (a run-time count tested every accumulator on every coordinate).
/// # Safety
/// AVX-512F is available; `panel` is readable at `kk * 16 + t` and `q` at `kk * stride + j` for kk < dim, t < 16,
/// j < QB.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn table_block_avx512<const QB: usize>(
    q: *const f32,
    stride: usize,
    panel: *const f16,
    dim: usize,
    scale: f32,
    out: &mut [[i16; 16]; AVX512_QB],
) {
    use std::arch::x86_64::*;
    let mut acc = [_mm512_setzero_ps(); QB];
    for kk in 0..dim {
        // SAFETY: kk < dim and j < QB, as the caller guarantees readable.
        unsafe {
            let row = _mm512_cvtph_ps(_mm256_loadu_si256(panel.add(kk * 16).cast()));
            for (j, a) in acc.iter_mut().enumerate() {
                *a = _mm512_fmadd_ps(_mm512_set1_ps(*q.add(kk * stride + j)), row, *a);
            }
        }
    }
    let (scale, lo, hi) = (
        _mm512_set1_ps(scale),
        _mm512_set1_ps(-QUANT_MAX),
        _mm512_set1_ps(QUANT_MAX),
    );
    for (o, a) in out.iter_mut().zip(acc) {
        // quantize(), 16 at a time: scale, saturate, round to nearest even (the default MXCSR mode), NaN to 0.
        let x = _mm512_mul_ps(a, scale);
        let number = _mm512_cmp_ps_mask::<_CMP_ORD_Q>(x, x);
        let x = _mm512_min_ps(_mm512_max_ps(x, lo), hi);
        let v = _mm512_maskz_mov_epi32(number, _mm512_cvtps_epi32(x));
        // SAFETY: o holds 16 i16 (32 bytes); the values are within +-32767, so the narrowing keeps them.
        unsafe { _mm256_storeu_si256(o.as_mut_ptr().cast(), _mm512_cvtepi32_epi16(v)) };
    }
}

/// Query tokens per block of the AVX2 table kernel: one ymm accumulator each, of the 16 registers (the
/// half-panel row and the broadcast take two more).
#[cfg(target_arch = "x86_64")]
const AVX2_QB: usize = 12;

/// Inner products of 8 centroids (a half panel: `panel[kk * 16 + t]`, t < 8) with QB query tokens
/// (`q[kk * stride + j]`), quantized as [`quantize`] does, into `out[j][t]`.
/// # Safety
/// AVX2, FMA and F16C are available; `panel` is readable at `kk * 16 + t` and `q` at `kk * stride + j` for
/// kk < dim, t < 8, j < QB.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn table_block_avx2<const QB: usize>(
    q: *const f32,
    stride: usize,
    panel: *const f16,
    dim: usize,
    scale: f32,
    out: &mut [[i16; 8]; AVX2_QB],
) {
    use std::arch::x86_64::*;
    let mut acc = [_mm256_setzero_ps(); QB];
    for kk in 0..dim {
        // SAFETY: kk < dim and j < QB, as the caller guarantees readable.
        unsafe {
            let row = _mm256_cvtph_ps(_mm_loadu_si128(panel.add(kk * 16).cast()));
            for (j, a) in acc.iter_mut().enumerate() {
                *a = _mm256_fmadd_ps(_mm256_set1_ps(*q.add(kk * stride + j)), row, *a);
            }
        }
    }
    let (scale, lo, hi) = (
        _mm256_set1_ps(scale),
        _mm256_set1_ps(-QUANT_MAX),
        _mm256_set1_ps(QUANT_MAX),
    );
    for (o, a) in out.iter_mut().zip(acc) {
        // quantize(), 8 at a time: scale, saturate, round to nearest even (the default MXCSR mode), NaN to 0.
        let x = _mm256_mul_ps(a, scale);
        let number = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_ORD_Q>(x, x));
        let x = _mm256_min_ps(_mm256_max_ps(x, lo), hi);
        let v = _mm256_and_si256(_mm256_cvtps_epi32(x), number);
        // The values are within +-32767: the saturating pack keeps them, in order (low half, then high half).
        let h = _mm_packs_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
        // SAFETY: o holds 8 i16 (16 bytes).
        unsafe { _mm_storeu_si128(o.as_mut_ptr().cast(), h) };
    }
}

/// The kernels of this module, best first; [`centroid_table_on`] and [`score_on`] fall back to the next one the
/// CPU supports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kernel {
    Avx512,
    Avx2,
    Scalar,
}

impl Kernel {
    /// The best kernel this CPU runs.
    fn best() -> Kernel {
        Kernel::Avx512
    }
    /// `self`, or the best one below it that this CPU supports.
    fn supported(self) -> Kernel {
        let f = super::cpu::features();
        match self {
            Kernel::Avx512 if f.avx512f => Kernel::Avx512,
            Kernel::Avx512 | Kernel::Avx2 if f.avx2_fma_f16c() => Kernel::Avx2,
            Kernel::Avx512 | Kernel::Avx2 | Kernel::Scalar => Kernel::Scalar,
        }
    }
}

/// `out[c * w + j] = quantize(<centroid c, query token j>, scale)` for `k` centroids stored as f16 16-token
/// k-major panels and a k-major query `qt[kk * nq + j]`; columns `j >= nq` are left as they are. Does nothing
/// on inconsistent sizes.
pub(crate) fn centroid_table(q: TableQuery<'_>, panels: &[f16], k: usize, out: &mut [i16]) {
    centroid_table_on(Kernel::best(), q, panels, k, out);
}

/// [`centroid_table`] on `kernel` (or the best one below it that this CPU supports).
pub(crate) fn centroid_table_on(
    kernel: Kernel,
    q: TableQuery<'_>,
    panels: &[f16],
    k: usize,
    out: &mut [i16],
) {
    let TableQuery { qt, nq, dim, w, .. } = q;
    if nq > w
        || qt.len() < dim * nq
        || panels.len() < k.div_ceil(16) * 16 * dim
        || out.len() < k * w
    {
        return;
    }
    match kernel.supported() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX-512F was detected at run time; the sizes were checked above.
        Kernel::Avx512 => unsafe { table_in_blocks(q, panels, k, out, &AVX512_BLOCKS) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX2, FMA and F16C were detected at run time; the sizes were checked above.
        Kernel::Avx2 => unsafe { table_in_blocks(q, panels, k, out, &AVX2_BLOCKS) },
        _ => centroid_table_scalar(q, panels, k, out),
    }
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
            let w = nq.div_ceil(LANES) * LANES;
            let scale = 100.0;
            let q = TableQuery {
                qt: &qt,
                nq,
                dim,
                w,
                scale,
            };
            let mut a = vec![0i16; k * w];
            centroid_table_scalar(q, &panels, k, &mut a);
            for kernel in [Kernel::Avx512, Kernel::Avx2, Kernel::Scalar] {
                let mut b = vec![0i16; k * w];
                centroid_table_on(kernel, q, &panels, k, &mut b);
                // The sums differ in their rounding order only: at most one step apart after quantization.
                for (x, y) in a.iter().zip(&b) {
                    assert!(
                        (x - y).abs() <= 1,
                        "{kernel:?} k={k} nq={nq} dim={dim}: {x} vs {y}"
                    );
                }
            }
            assert!(a.iter().any(|&v| v.abs() > 100), "the values use the range");
        }
    }

    #[test]
    fn quantize_rounds_and_saturates() {
        assert_eq!(quantize(0.5, 10.0), 5);
        assert_eq!(quantize(-0.26, 10.0), -3);
        assert_eq!(quantize(1e9, 1.0), 32767);
        assert_eq!(quantize(-1e9, 1.0), -32767);
        assert_eq!(quantize(f32::NAN, 1.0), 0);
        // Ties to even, as the SIMD conversion rounds.
        assert_eq!(quantize(2.5, 1.0), 2);
        assert_eq!(quantize(-3.5, 1.0), -4);
    }

    #[test]
    fn table_kernels_saturate_zero_nan_and_round_like_the_scalar_twin() {
        // One centroid of ones against query tokens whose sums are huge, NaN, ties and small values.
        let dim = 2;
        let cents = vec![1.0f32; dim];
        let mut panels = Vec::new();
        crate::kernels::pack_tokens(&cents, dim, &mut panels);
        let tokens = [1e9f32, -1e9, f32::NAN, 1.25, -1.75, 0.3, 0.0, 2.0e-3];
        let nq = tokens.len();
        // k-major: coordinate 0 holds the value, coordinate 1 is zero.
        let mut qt = vec![0f32; dim * nq];
        qt[..nq].copy_from_slice(&tokens);
        let w = LANES;
        let q = TableQuery {
            qt: &qt,
            nq,
            dim,
            w,
            scale: 2.0,
        };
        let mut want = vec![0i16; w];
        centroid_table_scalar(q, &panels, 1, &mut want);
        assert_eq!(&want[..nq], &[32767, -32767, 0, 2, -4, 1, 0, 0]);
        for kernel in [Kernel::Avx512, Kernel::Avx2, Kernel::Scalar] {
            let mut got = vec![0i16; w];
            centroid_table_on(kernel, q, &panels, 1, &mut got);
            assert_eq!(got, want, "{kernel:?}");
        }
    }

    #[test]
    fn simd_matches_scalar() {
        for w in [16usize, 32, 48, 64, 80] {
            let k = 37;
            let table: Vec<i16> = (0..k * w)
                .map(|i| (((i * 7919) % 60001) as i32 - 30000) as i16)
                .collect();
            for n in [1usize, 2, 9, 113] {
                let codes: Vec<u16> = (0..n).map(|i| ((i * 31 + 7) % k) as u16).collect();
                let a = score_scalar(&table, w, &codes);
                assert_ne!(a, 0);
                for kernel in [Kernel::Avx512, Kernel::Avx2, Kernel::Scalar] {
                    assert_eq!(
                        score_on(kernel, &table, w, &codes),
                        a,
                        "{kernel:?} w={w} n={n}"
                    );
                }
            }
        }
        // An out-of-range code reads the last row, on every kernel.
        let table: Vec<i16> = (0..48).collect();
        for kernel in [Kernel::Avx512, Kernel::Avx2, Kernel::Scalar] {
            let last: i32 = (32..48).sum();
            assert_eq!(score_on(kernel, &table, 16, &[9]), last, "{kernel:?}");
            assert_eq!(
                score_on(kernel, &table, 16, &[0, 60000]),
                last,
                "{kernel:?}"
            );
        }
        assert_eq!(score(&[1; 16], 8, &[0]), 0, "bad width");
        assert_eq!(score(&[], 16, &[0]), 0, "empty table");
    }
}
