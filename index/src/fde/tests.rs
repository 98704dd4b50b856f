//! Golden vectors of the spec (GCC 12.2 / libstdc++ / Eigen reference), a naive transcription of the spec the
//! encoder is checked against on random configurations, and the structural properties (Matryoshka prefixes,
//! bulk == single, typed errors).
use proptest::prelude::*;

use super::*;

fn tokens(data: &[f32], dim: usize) -> TokenMatrix<'_> {
    TokenMatrix::new(data, dim, "document").unwrap()
}

fn assert_close(got: &[f32], want: &[f32], rel: f32) {
    assert_eq!(got.len(), want.len(), "{got:?}");
    for (a, b) in got.iter().zip(want) {
        assert!(
            (a - b).abs() <= rel * b.abs().max(1e-6),
            "got {got:?}\nwant {want:?}"
        );
    }
}

fn identity(dimension: usize, k_sim: u32, seed: u64) -> FdeConfig {
    FdeConfig {
        dimension,
        num_repetitions: 1,
        num_simhash_projections: k_sim,
        seed,
        projection_type: ProjectionType::Identity,
        projection_dimension: 0,
        fill_empty_partitions: false,
        final_projection_dimension: None,
    }
}

#[test]
fn golden_query_identity_k2() {
    let e = FdeEncoder::new(identity(3, 2, 42)).unwrap();
    let pts = [
        1., 0., 0., 0., 1., 0., 0., 0., 1., -1., 0., 0., 0., -1., 0., 0., 0., -1.,
    ];
    let want = [-1., 0., -1., 0., 1., 0., 1., 0., 1., 0., -1., 0.];
    assert_close(&e.encode_query(tokens(&pts, 3)).unwrap(), &want, 1e-5);
}

#[test]
fn golden_query_identity_k1() {
    let e = FdeEncoder::new(identity(3, 1, 12345)).unwrap();
    let pts = [1., 0., 0., 0., 1., 0., 0., 0., 1.];
    assert_close(
        &e.encode_query(tokens(&pts, 3)).unwrap(),
        &[1., 1., 0., 0., 0., 1.],
        1e-5,
    );
}

fn small_doc_config() -> FdeConfig {
    FdeConfig {
        dimension: 4,
        num_repetitions: 2,
        num_simhash_projections: 3,
        seed: 7,
        projection_type: ProjectionType::AmsSketch,
        projection_dimension: 2,
        fill_empty_partitions: true,
        final_projection_dimension: None,
    }
}
const SMALL_DOC: [f32; 12] = [
    0.5, -0.2, 0.1, 0.9, -0.3, 0.8, 0.4, -0.1, 0.2, 0.2, -0.7, 0.3,
];

#[test]
fn golden_document_ams_fill() {
    let e = FdeEncoder::new(small_doc_config()).unwrap();
    let want = [
        0.6, -0.1, 0.6, -0.1, -0.6, -0.4, -0.1, 0.7, -0.6, -0.4, -0.6, -0.4, -0.6, -0.4, 0.6,
        -0.1, //
        -0.6, -0.65, -1.1, -0.4, -1.1, -0.4, -1.1, -0.4, 0.9, 0.7, 0.9, 0.7, 0.9, 0.7, 0.9, 0.7,
    ];
    assert_close(
        &e.encode_document(tokens(&SMALL_DOC, 4)).unwrap(),
        &want,
        1e-5,
    );
}

#[test]
fn golden_document_ams_fill_final_projection() {
    let e = FdeEncoder::new(FdeConfig {
        final_projection_dimension: Some(8),
        ..small_doc_config()
    })
    .unwrap();
    let want = [-0.6, -0.7, 0.9, -2.65, 0.5, 1.6, 2.3, -1.2];
    assert_close(
        &e.encode_document(tokens(&SMALL_DOC, 4)).unwrap(),
        &want,
        1e-5,
    );
}

/// The spec's "realistic" tokens: token i, coordinate j = (((i*37 + j*11 + salt) mod 17) - 8) / 8.
fn realistic_tokens(n: usize, salt: usize) -> Vec<f32> {
    (0..n * 128)
        .map(|v| (((v / 128) * 37 + (v % 128) * 11 + salt) % 17) as f32 / 8.0 - 1.0)
        .collect()
}

fn sum_l2_nnz(v: &[f32]) -> (f64, f64, usize) {
    let sum = v.iter().map(|&x| x as f64).sum();
    let l2 = v.iter().map(|&x| x as f64 * x as f64).sum::<f64>().sqrt();
    (sum, l2, v.iter().filter(|&&x| x != 0.0).count())
}

fn assert_rel(got: f64, want: f64, rel: f64) {
    assert!(
        (got - want).abs() <= rel * want.abs(),
        "got {got}, want {want}"
    );
}

#[test]
fn golden_realistic() {
    let (q, p) = (realistic_tokens(32, 3), realistic_tokens(80, 5));
    let chamfer: f64 = q
        .chunks(128)
        .map(|q| {
            p.chunks(128)
                .map(|p| q.iter().zip(p).map(|(a, b)| a * b).sum::<f32>())
                .fold(f32::MIN, f32::max)
        })
        .map(f64::from)
        .sum();
    assert_eq!(chamfer, 1535.375);

    let config = FdeConfig::paper_default(128);
    let fq = FdeEncoder::new(config.clone())
        .unwrap()
        .encode_query(tokens(&q, 128))
        .unwrap();
    let (sum, l2, nnz) = sum_l2_nnz(&fq);
    assert_eq!(fq.len(), 10240);
    assert_rel(sum, -3.75, 1e-6);
    assert_rel(l2, 291.895047, 1e-6);
    assert_eq!(nnz, 3641);

    let docs = FdeEncoder::new(FdeConfig {
        fill_empty_partitions: true,
        ..config.clone()
    })
    .unwrap();
    let fd = docs.encode_document(tokens(&p, 128)).unwrap();
    let (sum, l2, nnz) = sum_l2_nnz(&fd);
    assert_rel(sum, -4.460533, 1e-5);
    assert_rel(l2, 177.973986, 1e-6);
    assert_eq!(nnz, 10036);
    assert_close(
        &fd[..8],
        &[-0.875, 1., -4.75, -3.375, 0.875, 2.125, 2.25, 0.875],
        1e-6,
    );
    let dot: f64 = fq.iter().zip(&fd).map(|(&a, &b)| a as f64 * b as f64).sum();
    assert_rel(dot, 26771.4513, 1e-6);

    let projected = FdeConfig {
        fill_empty_partitions: true,
        final_projection_dimension: Some(1024),
        ..config
    };
    let fp = FdeEncoder::new(projected)
        .unwrap()
        .encode_document(tokens(&p, 128))
        .unwrap();
    let (sum, l2, _) = sum_l2_nnz(&fp);
    assert_eq!(fp.len(), 1024);
    assert_rel(sum, -140.8897, 1e-5);
    assert_rel(l2, 178.84883, 1e-6);
}

#[test]
fn errors_are_typed() {
    let config = FdeConfig {
        final_projection_dimension: Some(5),
        ..small_doc_config()
    };
    let e = FdeEncoder::new(config.clone()).unwrap();
    let wide = [0.0f32; 10];
    assert!(matches!(
        e.encode_document(tokens(&wide, 5)),
        Err(IndexError::DimensionMismatch {
            expected: 4,
            got: 5
        })
    ));
    let ok = tokens(&SMALL_DOC, 4);
    assert!(
        matches!(e.encode_query(ok), Err(IndexError::InvalidConfig(_))),
        "fill is document-only"
    );
    assert!(matches!(
        e.encode_document_into(ok, &mut [0.0; 4]),
        Err(IndexError::InvalidParam { name: "out", .. })
    ));
    assert!(matches!(
        e.encode_documents_into(&[ok, ok], &mut [0.0; 5]),
        Err(IndexError::InvalidParam { name: "out", .. })
    ));
    assert!(matches!(
        e.encode_documents_into(&[ok, tokens(&wide, 5)], &mut [0.0; 10]),
        Err(IndexError::DimensionMismatch {
            expected: 4,
            got: 5
        })
    ));
    e.encode_documents_into(&[], &mut []).unwrap();
    assert!(matches!(
        e.encode_documents_into(&[], &mut [0.0]),
        Err(IndexError::InvalidParam { .. })
    ));
    let no_fill = FdeEncoder::new(FdeConfig {
        fill_empty_partitions: false,
        ..config
    })
    .unwrap();
    assert!(matches!(
        no_fill.encode_query_into(ok, &mut [0.0; 6]),
        Err(IndexError::InvalidParam { .. })
    ));
    no_fill.encode_query_into(ok, &mut [1.0; 5]).unwrap();
    assert!(matches!(
        FdeEncoder::new(identity(3, 31, 1)),
        Err(IndexError::InvalidConfig(_))
    ));
}

/// The spec, transcribed literally (dense matrices, per-token projections, sums in f64 beside sums of absolute
/// values). Sketch values are sequential f32 dot products, as in the encoder, so partitions agree exactly.
/// Returns (value, magnitude) per output coordinate.
fn naive(config: &FdeConfig, data: &[f32], enc: EncodingType) -> (Vec<f64>, Vec<f64>) {
    let (d, reps, k) = (
        config.dimension,
        config.num_repetitions,
        config.num_simhash_projections as usize,
    );
    let (parts, bd) = (1usize << k, config.block_dim());
    let points: Vec<&[f32]> = data.chunks(d).collect();
    let mut val = vec![0.0f64; reps * parts * bd];
    let mut mag = val.clone();
    for r in 0..reps {
        let seed = config.seed.wrapping_add(r as u64) as u32;
        let (mut rng, mut normal) = (Mt19937::new(seed), NormalF32::new());
        let mut g = vec![vec![0.0f32; k]; d];
        for h in 0..k {
            for row in g.iter_mut() {
                row[h] = normal.sample(&mut rng);
            }
        }
        let mut m = vec![vec![0.0f64; bd]; d];
        match config.projection_type {
            ProjectionType::Identity => (0..d).for_each(|i| m[i][i] = 1.0),
            ProjectionType::AmsSketch => {
                let mut rng = Mt19937::new(seed);
                for row in m.iter_mut() {
                    let j = uniform_int(&mut rng, 0, bd as u64 - 1) as usize;
                    row[j] = if bernoulli_half(&mut rng) { 1.0 } else { -1.0 };
                }
            }
        }
        let bits_of = |x: &[f32]| -> Vec<bool> {
            (0..k)
                .map(|h| (0..d).fold(0.0f32, |s, i| s + x[i] * g[i][h]) > 0.0)
                .collect()
        };
        let proj = |x: &[f32]| -> Vec<(f64, f64)> {
            (0..bd)
                .map(|j| {
                    (0..d).fold((0.0, 0.0), |(v, a), i| {
                        (v + x[i] as f64 * m[i][j], a + (x[i] as f64 * m[i][j]).abs())
                    })
                })
                .collect()
        };
        let bits: Vec<Vec<bool>> = points.iter().map(|x| bits_of(x)).collect();
        let mut counts = vec![0usize; parts];
        for (x, b) in points.iter().zip(&bits) {
            let idx = b
                .iter()
                .fold(0usize, |idx, &bit| (idx << 1) + (bit as usize ^ (idx & 1)));
            counts[idx] += 1;
            for (j, (v, a)) in proj(x).into_iter().enumerate() {
                val[(r * parts + idx) * bd + j] += v;
                mag[(r * parts + idx) * bd + j] += a;
            }
        }
        for (p, &count) in counts.iter().enumerate() {
            let base = (r * parts + p) * bd;
            if count == 0 && k > 0 && enc == EncodingType::Average && config.fill_empty_partitions {
                let gray = p ^ (p >> 1);
                let want: Vec<bool> = (0..k).map(|h| gray >> (k - 1 - h) & 1 == 1).collect();
                let distance = |b: &Vec<bool>| b.iter().zip(&want).filter(|(x, y)| x != y).count();
                let nearest = (0..points.len())
                    .min_by_key(|&t| distance(&bits[t]))
                    .unwrap();
                for (j, (v, a)) in proj(points[nearest]).into_iter().enumerate() {
                    val[base + j] = v;
                    mag[base + j] = a;
                }
            } else if count > 0 && enc == EncodingType::Average {
                for j in 0..bd {
                    val[base + j] /= count as f64;
                    mag[base + j] /= count as f64;
                }
            }
        }
    }
    match config.final_projection_dimension {
        None => (val, mag),
        Some(dim) => {
            let mut rng = Mt19937::new(config.seed as u32);
            let (mut v2, mut m2) = (vec![0.0; dim], vec![0.0; dim]);
            for (v, a) in val.iter().zip(&mag) {
                let j = uniform_int(&mut rng, 0, dim as u64 - 1) as usize;
                let sign = if bernoulli_half(&mut rng) { 1.0 } else { -1.0 };
                v2[j] += sign * v;
                m2[j] += a;
            }
            (v2, m2)
        }
    }
}

/// A random small configuration and token matrix (values from a grid including 0, some all-zero tokens, and
/// duplicated tokens, so that sketch values of exactly 0 and ties in the fill search occur).
fn arb_case() -> impl Strategy<Value = (FdeConfig, Vec<f32>)> {
    let config = (
        1usize..=9,
        1usize..=4,
        0u32..=4,
        any::<u64>(),
        prop::option::of(1usize..=6),
        any::<bool>(),
        prop::option::of(1usize..=40),
    )
        .prop_map(
            |(dimension, num_repetitions, k, seed, ams, fill, final_dim)| FdeConfig {
                dimension,
                num_repetitions,
                num_simhash_projections: k,
                seed,
                projection_type: if ams.is_some() {
                    ProjectionType::AmsSketch
                } else {
                    ProjectionType::Identity
                },
                projection_dimension: ams.unwrap_or(0),
                fill_empty_partitions: fill,
                final_projection_dimension: final_dim,
            },
        );
    let value = prop_oneof![-1.0f32..1.0, (-4i32..=4).prop_map(|v| v as f32 / 4.0)];
    let token = move |d: usize| prop_oneof![4 => prop::collection::vec(value.clone(), d), 1 => Just(vec![0.0; d])];
    (config, 1usize..=20).prop_flat_map(move |(c, n)| {
        let d = c.dimension;
        (
            Just(c),
            prop::collection::vec(token(d), n),
            prop::collection::vec(0usize..n, 0..3),
        )
            .prop_map(|(c, mut rows, dups)| {
                for i in dups {
                    rows.push(rows[i].clone());
                }
                (c, rows.concat())
            })
    })
}

fn check_against_naive(got: &[f32], config: &FdeConfig, data: &[f32], enc: EncodingType) {
    let (val, mag) = naive(config, data, enc);
    let terms = data.len() / config.dimension
        + config.dimension
        + config
            .final_projection_dimension
            .map_or(0, |_| config.full_dim());
    assert_eq!(got.len(), val.len());
    for (i, ((&g, v), m)) in got.iter().zip(&val).zip(&mag).enumerate() {
        let tol = 2.0 * f32::EPSILON as f64 * terms as f64 * m + 1e-30;
        assert!(
            (g as f64 - v).abs() <= tol,
            "coordinate {i}: {g} vs {v} (tolerance {tol})"
        );
    }
}

#[test]
fn many_hyperplanes_match_naive_spec() {
    // k_sim = 18: partition indices use all the Gray-decoding shifts (the 16-bit one needs k_sim > 16); most
    // partitions are empty (filled). One repetition, projected to one dimension: 2^18 values, the largest FDE
    // allowed (MAX_FDE_DIMENSION).
    let config = FdeConfig {
        num_repetitions: 1,
        fill_empty_partitions: true,
        projection_type: ProjectionType::AmsSketch,
        projection_dimension: 1,
        ..identity(3, MAX_SIMHASH_PROJECTIONS, 99)
    };
    assert_eq!(config.output_dim(), MAX_FDE_DIMENSION);
    let data = [
        0.3, -0.2, 0.9, -0.5, 0.1, 0.4, 0.0, 0.0, 0.0, 0.7, 0.7, -0.1, 0.3, -0.2, 0.9,
    ];
    let e = FdeEncoder::new(config.clone()).unwrap();
    check_against_naive(
        &e.encode_document(tokens(&data, 3)).unwrap(),
        &config,
        &data,
        EncodingType::Average,
    );
    let config = FdeConfig {
        fill_empty_partitions: false,
        ..config
    };
    let e = FdeEncoder::new(config.clone()).unwrap();
    check_against_naive(
        &e.encode_query(tokens(&data, 3)).unwrap(),
        &config,
        &data,
        EncodingType::Sum,
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn encoder_matches_naive_spec((config, data) in arb_case()) {
        let e = FdeEncoder::new(config.clone()).unwrap();
        let t = tokens(&data, config.dimension);
        check_against_naive(&e.encode_document(t).unwrap(), &config, &data, EncodingType::Average);
        if config.fill_empty_partitions {
            prop_assert!(matches!(e.encode_query(t), Err(IndexError::InvalidConfig(_))));
        } else {
            check_against_naive(&e.encode_query(t).unwrap(), &config, &data, EncodingType::Sum);
        }
    }

    #[test]
    fn prefixes_are_fewer_repetitions((config, data) in arb_case(), fewer in 1usize..=4) {
        let config = FdeConfig { final_projection_dimension: None, fill_empty_partitions: false, ..config };
        let short = FdeConfig { num_repetitions: fewer.min(config.num_repetitions), ..config.clone() };
        let (long_e, short_e) = (FdeEncoder::new(config).unwrap(), FdeEncoder::new(short).unwrap());
        let t = tokens(&data, long_e.config().dimension);
        let prefix = short_e.config().output_dim();
        let long_q = long_e.encode_query(t).unwrap();
        prop_assert_eq!(&long_q[..prefix], &short_e.encode_query(t).unwrap()[..]);
        let long_d = long_e.encode_document(t).unwrap();
        prop_assert_eq!(&long_d[..prefix], &short_e.encode_document(t).unwrap()[..]);
    }

    #[test]
    fn bulk_equals_single((config, data) in arb_case(), cuts in prop::collection::vec(1usize..=6, 1..12)) {
        let e = FdeEncoder::new(config).unwrap();
        let d = e.config().dimension;
        let rows: Vec<&[f32]> = data.chunks(d).collect();
        // Documents cut from rows, cycling through the tokens.
        let docs_data: Vec<Vec<f32>> = cuts
            .iter()
            .enumerate()
            .map(|(i, &len)| (0..len).flat_map(|j| rows[(i + j) % rows.len()].to_vec()).collect())
            .collect();
        let docs: Vec<TokenMatrix<'_>> = docs_data.iter().map(|v| tokens(v, d)).collect();
        let od = e.config().output_dim();
        let mut bulk = vec![f32::NAN; docs.len() * od];
        e.encode_documents_into(&docs, &mut bulk).unwrap();
        for (doc, got) in docs.iter().zip(bulk.chunks(od)) {
            prop_assert_eq!(got, &e.encode_document(*doc).unwrap()[..]);
        }
    }
}
