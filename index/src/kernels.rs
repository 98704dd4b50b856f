//! Exact Chamfer (MaxSim) and dot-product kernels.
//!
//! `Chamfer(Q, D) = sum over query tokens q of max over document tokens p of <q, p>`, with queries in f32 and
//! documents stored as f16, accumulated in f32.
//!
//! Document layout: `n` tokens of dimension `d` are stored as `ceil(n / 16)` panels of [`PANEL`] tokens, each
//! panel k-major: `panel[k * 16 + t]` = coordinate k of token `16 * panel_index + t`. The last partial panel is
//! padded with copies of the document's last token, which never changes a max, so the kernels need no masks.
//! Queries are transposed once by [`PreparedQuery`] (k-major, `qt[k * n_q + j]`).
//!
//! The kernel level (AVX-512F, AVX2+FMA+F16C or portable) is detected once at run time ([`kernel_level`]);
//! every dispatched kernel has a plain scalar twin it is tested against. The SIMD code lives in `crate::sys::simd`.
//! Lengths that disagree are a caller bug: they trip a `debug_assert` and, in release builds, the kernels
//! score the common prefix (whole panels for documents).
use half::f16;
use half::slice::HalfFloatSliceExt;
use std::sync::OnceLock;

#[cfg(target_arch = "x86_64")]
use crate::sys::simd;

/// Tokens per document panel.
pub const PANEL: usize = 16;

/// The instruction set a kernel runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelLevel {
    /// AVX-512F: 16 f32 lanes, one per panel token.
    Avx512,
    /// AVX2 + FMA + F16C: two 8-lane halves per panel.
    Avx2Fma,
    /// Safe Rust written to auto-vectorise.
    Portable,
}

/// A kernel level together with the proof that this CPU supports it.
#[derive(Clone, Copy)]
enum Isa {
    #[cfg(target_arch = "x86_64")]
    Avx512(simd::Avx512),
    #[cfg(target_arch = "x86_64")]
    Avx2Fma(simd::Avx2Fma),
    Portable,
}

impl Isa {
    /// `level` if this CPU supports it, else portable.
    fn of(level: KernelLevel) -> Isa {
        match level {
            #[cfg(target_arch = "x86_64")]
            KernelLevel::Avx512 => simd::Avx512::detect().map_or(Isa::Portable, Isa::Avx512),
            #[cfg(target_arch = "x86_64")]
            KernelLevel::Avx2Fma => simd::Avx2Fma::detect().map_or(Isa::Portable, Isa::Avx2Fma),
            _ => Isa::Portable,
        }
    }

    fn level(self) -> KernelLevel {
        match self {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512(_) => KernelLevel::Avx512,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2Fma(_) => KernelLevel::Avx2Fma,
            Isa::Portable => KernelLevel::Portable,
        }
    }
}

/// The best level this CPU supports, detected once.
fn isa() -> Isa {
    static ISA: OnceLock<Isa> = OnceLock::new();
    *ISA.get_or_init(|| {
        [KernelLevel::Avx512, KernelLevel::Avx2Fma]
            .into_iter()
            .map(Isa::of)
            .find(|isa| isa.level() != KernelLevel::Portable)
            .unwrap_or(Isa::Portable)
    })
}

/// The level the dispatched kernels ([`chamfer`], `dot_*`) run on.
pub fn kernel_level() -> KernelLevel {
    isa().level()
}

/// Caps every kernel of this process at `max` (AVX-512 > AVX2 + FMA > portable), to measure or check a lower
/// level on a CPU that has a higher one; each kernel still falls back below the cap when the CPU lacks it. The
/// cap can only be set before the first kernel runs: returns false, changing nothing, once the CPU features
/// were detected.
pub fn cap_kernel_level(max: KernelLevel) -> bool {
    crate::sys::cpu::detect_capped(max == KernelLevel::Avx512, max != KernelLevel::Portable)
}

/// Number of f16 values of a packed document: `ceil(n_tokens / 16) * 16 * dim`.
pub fn packed_len(n_tokens: usize, dim: usize) -> usize {
    n_tokens.div_ceil(PANEL) * PANEL * dim
}

/// Appends the panels of `tokens` (row-major, `n x dim`, n >= 1) to `out`: [`packed_len`] values.
pub fn pack_tokens(tokens: &[f32], dim: usize, out: &mut Vec<f16>) {
    debug_assert!(
        dim > 0 && tokens.len().is_multiple_of(dim) && !tokens.is_empty(),
        "bad token matrix"
    );
    let n = tokens.len().checked_div(dim).unwrap_or(0);
    out.reserve(packed_len(n, dim));
    // One panel at a time: its tokens converted in one vectorised call, then transposed in L1.
    let mut halves = vec![f16::ZERO; PANEL * dim];
    for p in 0..n.div_ceil(PANEL) {
        let rows = PANEL.min(n - p * PANEL);
        halves[..rows * dim]
            .convert_from_f32_slice(&tokens[p * PANEL * dim..(p * PANEL + rows) * dim]);
        push_panel(&halves[..rows * dim], dim, out);
    }
}

/// [`pack_tokens`] for tokens that are f16 already (a replayed log record): the same panels, with no
/// conversion.
pub fn pack_tokens_f16(tokens: &[f16], dim: usize, out: &mut Vec<f16>) {
    debug_assert!(
        dim > 0 && tokens.len().is_multiple_of(dim) && !tokens.is_empty(),
        "bad token matrix"
    );
    let n = tokens.len().checked_div(dim).unwrap_or(0);
    out.reserve(packed_len(n, dim));
    for p in 0..n.div_ceil(PANEL) {
        let rows = PANEL.min(n - p * PANEL);
        push_panel(&tokens[p * PANEL * dim..(p * PANEL + rows) * dim], dim, out);
    }
}

/// Appends one panel made of `rows` (1..=16 row-major tokens): transposed, tokens past the end copies of the
/// last one.
fn push_panel(rows: &[f16], dim: usize, out: &mut Vec<f16>) {
    let n = rows.len() / dim;
    let base = out.len();
    out.resize(base + PANEL * dim, f16::ZERO);
    let panel = &mut out[base..];
    for t in 0..PANEL {
        let row = &rows[t.min(n - 1) * dim..][..dim];
        for (k, &v) in row.iter().enumerate() {
            panel[k * PANEL + t] = v;
        }
    }
}

/// The row-major `n_tokens x dim` tokens of a packed document (the tokens of whole panels only, if `packed`
/// is too short).
pub fn unpack_tokens(packed: &[f16], n_tokens: usize, dim: usize) -> Vec<f32> {
    let packed = whole_panels(packed, n_tokens, dim);
    let n = n_tokens.min(packed.len().checked_div(dim).unwrap_or(0));
    let mut out = Vec::with_capacity(n * dim);
    for i in 0..n {
        let panel = &packed[i / PANEL * PANEL * dim..];
        out.extend((0..dim).map(|k| panel[k * PANEL + i % PANEL].to_f32()));
    }
    out
}

/// The whole panels of `packed` that belong to a document of `n_tokens` tokens.
fn whole_panels(packed: &[f16], n_tokens: usize, dim: usize) -> &[f16] {
    let want = packed_len(n_tokens, dim);
    debug_assert_eq!(packed.len(), want, "packed document of the wrong length");
    let len = want.min(packed.len());
    &packed[..len - len % (PANEL * dim).max(1)]
}

/// A query prepared once for many documents: its f32 tokens transposed k-major.
#[derive(Clone, Debug)]
pub struct PreparedQuery {
    dim: usize,
    n_tokens: usize,
    /// `qt[k * n_tokens + j]` = coordinate k of token j.
    qt: Vec<f32>,
}

impl PreparedQuery {
    /// Prepares the row-major `n x dim` query `tokens`.
    pub fn new(tokens: &[f32], dim: usize) -> Self {
        debug_assert!(
            dim > 0 && tokens.len().is_multiple_of(dim),
            "bad query matrix"
        );
        let n = tokens.len().checked_div(dim).unwrap_or(0);
        let qt = (0..n * dim)
            .map(|x| tokens[(x % n) * dim + x / n])
            .collect();
        PreparedQuery {
            dim,
            n_tokens: n,
            qt,
        }
    }

    /// Number of query tokens.
    pub fn n_tokens(&self) -> usize {
        self.n_tokens
    }

    /// Dimension of the tokens.
    pub fn dim(&self) -> usize {
        self.dim
    }
}

/// Chamfer score of `q` against a packed document of `n_tokens` tokens, on the best kernel level.
pub fn chamfer(q: &PreparedQuery, packed: &[f16], n_tokens: usize) -> f32 {
    chamfer_on(isa(), q, packed, n_tokens)
}

/// [`chamfer`] on a forced kernel level (portable if this CPU lacks it).
pub fn chamfer_with(level: KernelLevel, q: &PreparedQuery, packed: &[f16], n_tokens: usize) -> f32 {
    chamfer_on(Isa::of(level), q, packed, n_tokens)
}

fn chamfer_on(isa: Isa, q: &PreparedQuery, packed: &[f16], n_tokens: usize) -> f32 {
    let panels = whole_panels(packed, n_tokens, q.dim);
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512(t) => t.chamfer(&q.qt, q.dim, panels),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2Fma(t) => t.chamfer(&q.qt, q.dim, panels),
        Isa::Portable => chamfer_portable(q, panels),
    }
}

/// Portable Chamfer: blocks of `QB` query tokens against one panel at a time, 16 lanes per panel row
/// (auto-vectorised; `QB` and `KC` were tuned on x86-64's baseline SSE2).
fn chamfer_portable(q: &PreparedQuery, panels: &[f16]) -> f32 {
    const QB: usize = 8;
    const KC: usize = 32;
    let (n_q, dim) = (q.n_tokens, q.dim);
    if n_q == 0 || panels.is_empty() {
        return 0.0;
    }
    let mut buf = [0f32; PANEL * KC];
    let mut total = 0.0;
    for j0 in (0..n_q).step_by(QB) {
        let qb = QB.min(n_q - j0);
        let mut best = [f32::NEG_INFINITY; QB];
        for panel in panels.chunks_exact(PANEL * dim) {
            let mut acc = [[0f32; PANEL]; QB];
            // Widen KC rows at a time (one call, vectorised by `half`), then multiply-add row by row.
            for (c, packed_rows) in panel.chunks(PANEL * KC).enumerate() {
                let rows = &mut buf[..packed_rows.len()];
                packed_rows.convert_to_f32_slice(rows);
                for (i, row) in rows.chunks_exact(PANEL).enumerate() {
                    let k = c * KC + i;
                    for (a, &x) in acc.iter_mut().zip(&q.qt[k * n_q + j0..][..qb]) {
                        for t in 0..PANEL {
                            a[t] += x * row[t];
                        }
                    }
                }
            }
            for (b, a) in best.iter_mut().zip(&acc[..qb]) {
                *b = a.iter().fold(*b, |m, &v| m.max(v));
            }
        }
        total += best[..qb].iter().sum::<f32>();
    }
    total
}

/// Reference Chamfer: a plain triple loop over query tokens, document tokens and coordinates.
pub fn chamfer_scalar(q: &PreparedQuery, packed: &[f16], n_tokens: usize) -> f32 {
    let dim = q.dim;
    let panels = whole_panels(packed, n_tokens, dim);
    let n_doc = n_tokens.min(panels.len().checked_div(dim).unwrap_or(0));
    if n_doc == 0 || q.n_tokens == 0 {
        return 0.0;
    }
    let mut total = 0.0;
    for j in 0..q.n_tokens {
        let mut best = f32::NEG_INFINITY;
        for i in 0..n_doc {
            let mut s = 0.0;
            for k in 0..dim {
                s += q.qt[k * q.n_tokens + j]
                    * panels[i / PANEL * PANEL * dim + k * PANEL + i % PANEL].to_f32();
            }
            best = best.max(s);
        }
        total += best;
    }
    total
}

/// Nearest-centroid search for a block of tokens: for each of the `best.len()` tokens of the k-major `qt`
/// (`qt[k * n + j]`), the largest inner product with the row-major f32 centroids `lo..hi` of `cents` and the
/// smallest index reaching it, written to `best[j]` when strictly larger than the score it holds. Callers start
/// from `(0, -inf)` and may fold several ranges (a two-level codebook's probed clusters). Returns false, leaving
/// `best` alone, when the sizes are inconsistent or this CPU has no SIMD kernel (callers then use a matrix
/// product).
pub fn nearest_centroids(
    qt: &[f32],
    dim: usize,
    cents: &[f32],
    lo: usize,
    hi: usize,
    best: &mut [(u32, f32)],
) -> bool {
    nearest_on(isa(), qt, dim, cents, lo, hi, best)
}

/// [`nearest_centroids`] on `level` (portable if this CPU lacks it), for tests and benchmarks.
pub fn nearest_centroids_with(
    level: KernelLevel,
    qt: &[f32],
    dim: usize,
    cents: &[f32],
    lo: usize,
    hi: usize,
    best: &mut [(u32, f32)],
) -> bool {
    nearest_on(Isa::of(level), qt, dim, cents, lo, hi, best)
}

fn nearest_on(
    isa: Isa,
    qt: &[f32],
    dim: usize,
    cents: &[f32],
    lo: usize,
    hi: usize,
    best: &mut [(u32, f32)],
) -> bool {
    if !nearest_fits(qt, dim, cents, lo, hi, best.len()) {
        return false;
    }
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512(t) => {
            t.nearest(qt, dim, cents, lo, hi, best);
            true
        }
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2Fma(t) => {
            t.nearest(qt, dim, cents, lo, hi, best);
            true
        }
        Isa::Portable => false,
    }
}

fn nearest_fits(qt: &[f32], dim: usize, cents: &[f32], lo: usize, hi: usize, n: usize) -> bool {
    dim > 0
        && lo < hi
        && hi <= i32::MAX as usize
        && n.checked_mul(dim).is_some_and(|v| qt.len() >= v)
        && hi.checked_mul(dim).is_some_and(|v| cents.len() >= v)
}

/// Scalar twin of [`nearest_centroids`]: the same fused multiply-adds in the same order, so the same bits.
pub fn nearest_centroids_scalar(
    qt: &[f32],
    dim: usize,
    cents: &[f32],
    lo: usize,
    hi: usize,
    best: &mut [(u32, f32)],
) -> bool {
    let n = best.len();
    if !nearest_fits(qt, dim, cents, lo, hi, n) {
        return false;
    }
    for (j, b) in best.iter_mut().enumerate() {
        for c in lo..hi {
            let s = (0..dim).fold(0f32, |acc, k| {
                qt[k * n + j].mul_add(cents[c * dim + k], acc)
            });
            if s > b.1 {
                *b = (c as u32, s);
            }
        }
    }
    true
}

/// `<a, b>` of an f32 and an f16 vector of equal length.
pub fn dot_f32_f16(a: &[f32], b: &[f16]) -> f32 {
    dot_f32_f16_on(isa(), a, b)
}

/// `<a, b>` of two f16 vectors of equal length.
pub fn dot_f16(a: &[f16], b: &[f16]) -> f32 {
    dot_f16_on(isa(), a, b)
}

/// `<a, b>` of two f32 vectors of equal length.
pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    dot_f32_on(isa(), a, b)
}

/// Reference of [`dot_f32_f16`].
pub fn dot_f32_f16_scalar(a: &[f32], b: &[f16]) -> f32 {
    dot_scalar(a, b)
}

/// Reference of [`dot_f16`].
pub fn dot_f16_scalar(a: &[f16], b: &[f16]) -> f32 {
    dot_scalar(a, b)
}

/// Reference of [`dot_f32`].
pub fn dot_f32_scalar(a: &[f32], b: &[f32]) -> f32 {
    dot_scalar(a, b)
}

fn dot_f32_f16_on(isa: Isa, a: &[f32], b: &[f16]) -> f32 {
    debug_assert_eq!(a.len(), b.len(), "dot of vectors of different lengths");
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512(t) => t.dot(a, b),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2Fma(t) => t.dot(a, b),
        Isa::Portable => dot_portable(a, b),
    }
}

fn dot_f16_on(isa: Isa, a: &[f16], b: &[f16]) -> f32 {
    debug_assert_eq!(a.len(), b.len(), "dot of vectors of different lengths");
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512(t) => t.dot(a, b),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2Fma(t) => t.dot(a, b),
        Isa::Portable => dot_portable(a, b),
    }
}

fn dot_f32_on(isa: Isa, a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len(), "dot of vectors of different lengths");
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512(t) => t.dot(a, b),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2Fma(t) => t.dot(a, b),
        Isa::Portable => dot_portable(a, b),
    }
}

/// An element of a dot-product operand.
trait Widen: Copy + Into<f32> {
    /// `dst[i] = src[i] as f32` (equal lengths).
    fn widen(src: &[Self], dst: &mut [f32]);
}

impl Widen for f32 {
    fn widen(src: &[f32], dst: &mut [f32]) {
        dst.copy_from_slice(src);
    }
}

impl Widen for f16 {
    fn widen(src: &[f16], dst: &mut [f32]) {
        src.convert_to_f32_slice(dst);
    }
}

/// Portable dot product of the common prefix: 16 independent lanes, f16 widened 16 at a time.
fn dot_portable<A: Widen, B: Widen>(a: &[A], b: &[B]) -> f32 {
    let n = a.len().min(b.len());
    let (ca, cb) = (a[..n].chunks_exact(16), b[..n].chunks_exact(16));
    let tail = dot_scalar(ca.remainder(), cb.remainder());
    let (mut x, mut y, mut acc) = ([0f32; 16], [0f32; 16], [0f32; 16]);
    for (u, v) in ca.zip(cb) {
        A::widen(u, &mut x);
        B::widen(v, &mut y);
        for i in 0..16 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Sequential dot product of the common prefix.
fn dot_scalar<A: Copy + Into<f32>, B: Copy + Into<f32>>(a: &[A], b: &[B]) -> f32 {
    a.iter().zip(b).map(|(&x, &y)| x.into() * y.into()).sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const LEVELS: [KernelLevel; 3] = [
        KernelLevel::Avx512,
        KernelLevel::Avx2Fma,
        KernelLevel::Portable,
    ];

    /// The levels this CPU runs for real (a missing level would silently test the portable one again).
    fn levels() -> Vec<KernelLevel> {
        LEVELS
            .into_iter()
            .filter(|&l| Isa::of(l).level() == l)
            .collect()
    }

    fn close(got: f32, want: f32) -> bool {
        (got - want).abs() <= 1e-4 * want.abs().max(1.0)
    }

    fn pack(tokens: &[f32], dim: usize) -> Vec<f16> {
        let mut out = Vec::new();
        pack_tokens(tokens, dim, &mut out);
        out
    }

    /// A deterministic pseudo-random vector in [-1, 1].
    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
            })
            .collect()
    }

    fn matrices() -> impl Strategy<Value = (usize, Vec<f32>, Vec<f32>)> {
        (
            prop::sample::select(vec![1usize, 3, 16, 17, 128]),
            1usize..40,
            1usize..70,
        )
            .prop_flat_map(|(d, nq, nd)| {
                let v = |n| prop::collection::vec(-1.0f32..=1.0, n);
                (Just(d), v(nq * d), v(nd * d))
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        #[test]
        fn kernels_match_scalar_chamfer((d, q, doc) in matrices()) {
            let q = PreparedQuery::new(&q, d);
            let n = doc.len() / d;
            let packed = pack(&doc, d);
            let want = chamfer_scalar(&q, &packed, n);
            for level in levels() {
                let got = chamfer_with(level, &q, &packed, n);
                prop_assert!(close(got, want), "{level:?}: {got} vs {want}");
            }
            prop_assert!(close(chamfer(&q, &packed, n), want));
        }
    }

    #[test]
    fn dispatch_picks_the_best_level() {
        assert_eq!(kernel_level(), levels()[0]);
    }

    #[test]
    fn pack_unpack_round_trip() {
        for (n, d) in [(1, 1), (15, 3), (16, 17), (17, 128), (113, 128)] {
            // Multiples of 1/64 in [-1, 1] are exact in f16.
            let tokens: Vec<f32> = values(n * d, 7)
                .iter()
                .map(|v| (v * 64.0).round() / 64.0)
                .collect();
            let packed = pack(&tokens, d);
            assert_eq!(packed.len(), packed_len(n, d));
            assert_eq!(unpack_tokens(&packed, n, d), tokens);
        }
    }

    #[test]
    fn padding_repeats_the_last_token_and_keeps_scores() {
        let d = 17;
        let q = PreparedQuery::new(&values(5 * d, 1), d);
        for n in [1, 15, 17, 31] {
            let doc = values(n * d, n as u64);
            let packed = pack(&doc, d);
            let last = &doc[(n - 1) * d..];
            for i in n..n.div_ceil(PANEL) * PANEL {
                let panel = &packed[i / PANEL * PANEL * d..];
                let pad: Vec<f32> = (0..d)
                    .map(|k| panel[k * PANEL + i % PANEL].to_f32())
                    .collect();
                assert_eq!(
                    pad,
                    last.iter()
                        .map(|&v| f16::from_f32(v).to_f32())
                        .collect::<Vec<_>>()
                );
            }
            // The same document with its padding as real tokens scores the same.
            let full = n.div_ceil(PANEL) * PANEL;
            let padded: Vec<f32> = (0..full)
                .flat_map(|i| doc[i.min(n - 1) * d..][..d].to_vec())
                .collect();
            assert_eq!(pack(&padded, d), packed);
            let want = chamfer_scalar(&q, &packed, n);
            assert_eq!(chamfer_scalar(&q, &packed, full), want);
            for level in levels() {
                assert!(
                    close(chamfer_with(level, &q, &packed, n), want),
                    "{level:?} n={n}"
                );
            }
        }
    }

    #[test]
    fn dot_kernels_match_scalar() {
        for n in (0..300).chain([512, 10240]) {
            let a = values(n, n as u64 + 1);
            let b = values(n, n as u64 + 1000);
            let (a16, b16): (Vec<f16>, Vec<f16>) = (
                a.iter().map(|&v| f16::from_f32(v)).collect(),
                b.iter().map(|&v| f16::from_f32(v)).collect(),
            );
            let (w1, w2, w3) = (
                dot_f32_f16_scalar(&a, &b16),
                dot_f16_scalar(&a16, &b16),
                dot_f32_scalar(&a, &b),
            );
            for level in levels() {
                let isa = Isa::of(level);
                assert!(
                    close(dot_f32_f16_on(isa, &a, &b16), w1),
                    "{level:?} f32.f16 n={n}"
                );
                assert!(
                    close(dot_f16_on(isa, &a16, &b16), w2),
                    "{level:?} f16 n={n}"
                );
                assert!(close(dot_f32_on(isa, &a, &b), w3), "{level:?} f32 n={n}");
            }
            assert!(
                close(dot_f32_f16(&a, &b16), w1)
                    && close(dot_f16(&a16, &b16), w2)
                    && close(dot_f32(&a, &b), w3)
            );
        }
    }

    #[test]
    fn empty_inputs_score_zero() {
        let q = PreparedQuery::new(&values(3 * 4, 2), 4);
        assert_eq!(PreparedQuery::new(&[], 4).n_tokens(), 0);
        for level in levels() {
            assert_eq!(
                chamfer_with(
                    level,
                    &PreparedQuery::new(&[], 4),
                    &pack(&values(4, 3), 4),
                    1
                ),
                0.0
            );
            assert_eq!(chamfer_with(level, &q, &[], 0), 0.0);
        }
    }

    proptest! {
        /// The nearest-centroid kernels (AVX-512, AVX2) return the scalar twin's bits (index and score) for any range,
        /// partial panels and ties (duplicated centroids) included, folding into a prior best.
        #[test]
        fn nearest_centroids_matches_scalar(
            n in 1usize..80,
            dim in 1usize..40,
            k in 1usize..70,
            lo_frac in 0.0f64..1.0,
            len_frac in 0.0f64..1.0,
            seed in 0u64..1000,
            prior in prop::option::of(-2.0f32..2.0),
        ) {
            let val = |i: usize| (((i as u64 * 2654435761 + seed * 97) % 1000) as f32 / 500.0) - 1.0;
            let mut cents: Vec<f32> = (0..k * dim).map(val).collect();
            if k > 3 {
                // A tie: centroid 3 repeats centroid 1.
                let c1 = cents[dim..2 * dim].to_vec();
                cents[3 * dim..4 * dim].copy_from_slice(&c1);
            }
            let tokens: Vec<f32> = (0..n * dim).map(|i| val(i * 7 + 3)).collect();
            let mut qt = vec![0f32; n * dim];
            for j in 0..n {
                for kk in 0..dim {
                    qt[kk * n + j] = tokens[j * dim + kk];
                }
            }
            let lo = ((k as f64 * lo_frac) as usize).min(k - 1);
            let hi = (lo + 1 + ((k - lo - 1) as f64 * len_frac) as usize).min(k);
            let start = vec![(u32::MAX, prior.unwrap_or(f32::NEG_INFINITY)); n];
            let mut want = start.clone();
            prop_assert!(nearest_centroids_scalar(&qt, dim, &cents, lo, hi, &mut want));
            let mut got = start.clone();
            let fast = nearest_centroids(&qt, dim, &cents, lo, hi, &mut got);
            prop_assert_eq!(fast, kernel_level() != KernelLevel::Portable);
            if fast {
                prop_assert_eq!(&got, &want);
            }
            for level in [KernelLevel::Avx512, KernelLevel::Avx2Fma] {
                let mut got = start.clone();
                if nearest_centroids_with(level, &qt, dim, &cents, lo, hi, &mut got) {
                    prop_assert_eq!(&got, &want, "{:?}", level);
                }
            }
            for (j, &(c, s)) in want.iter().enumerate() {
                if c != u32::MAX {
                    let c = c as usize;
                    prop_assert!((lo..hi).contains(&c));
                    let exact: f32 = (0..dim).map(|kk| tokens[j * dim + kk] * cents[c * dim + kk]).sum();
                    prop_assert!(close(s, exact));
                }
            }
        }
    }

    /// The panel layout, against its definition: `panel[k * 16 + t]` = coordinate k of token 16p + t, tokens past
    /// the end copies of the last one, values rounded to f16.
    #[test]
    fn pack_tokens_follows_the_panel_layout() {
        for (n, dim) in [(1usize, 1usize), (15, 3), (16, 128), (17, 5), (40, 33)] {
            let tokens: Vec<f32> = (0..n * dim)
                .map(|i| (i as f32 * 0.37).sin() * 3.0)
                .collect();
            let mut got = Vec::new();
            pack_tokens(&tokens, dim, &mut got);
            assert_eq!(got.len(), packed_len(n, dim));
            for p in 0..n.div_ceil(PANEL) {
                for k in 0..dim {
                    for t in 0..PANEL {
                        let src = tokens[(p * PANEL + t).min(n - 1) * dim + k];
                        assert_eq!(
                            got[(p * dim + k) * PANEL + t],
                            f16::from_f32(src),
                            "{n}x{dim}"
                        );
                    }
                }
            }
            assert_eq!(unpack_tokens(&got, n, dim).len(), n * dim);
            // f16 input gives the same panels.
            let halves: Vec<f16> = tokens.iter().map(|&v| f16::from_f32(v)).collect();
            let mut from_halves = vec![f16::ONE; 3]; // appended after what is there
            pack_tokens_f16(&halves, dim, &mut from_halves);
            assert_eq!(&from_halves[3..], &got[..], "{n}x{dim}");
        }
    }

    #[test]
    fn nearest_centroids_refuses_bad_sizes() {
        let cents = [1.0f32; 4 * 8];
        let mut best = vec![(0u32, f32::NEG_INFINITY); 2];
        for (qt_len, lo, hi) in [
            (15usize, 0usize, 4usize),
            (16, 2, 2),
            (16, 0, 5),
            (16, 3, 1),
        ] {
            let qt = vec![1.0; qt_len];
            assert!(!nearest_centroids_scalar(&qt, 8, &cents, lo, hi, &mut best));
            assert!(!nearest_centroids(&qt, 8, &cents, lo, hi, &mut best));
        }
        assert!(best.iter().all(|b| *b == (0, f32::NEG_INFINITY)));
    }
}
