//! The kernels against their scalar twins, at every kernel level this machine has.
use super::dot::{dot_f16_on, dot_f32_f16_on, dot_f32_on};
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
