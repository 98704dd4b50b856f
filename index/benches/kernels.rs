//! Chamfer (MaxSim) kernel throughput, reported by criterion as elements/s = flop/s (2 flops per multiply-add
//! of real tokens; panel padding is not counted).
//!
//! * `maxsim_32x128_by_2000`: one 32-token query against one 2000-token document, d = 128, per kernel level,
//!   against the baseline `matrixmultiply::sgemm` (f32 copy of the document) + row max.
//! * `maxsim_8x128_by_113_docs`: this project's re-rank case, an 8-token query scored against many 113-token
//!   documents one after another (per-document overhead included), same baseline per document.
//!
//! * `assign_4096_tokens_16k_centroids`: nearest-centroid codes of 4096 tokens against a two-level codebook of
//!   16384 centroids (128 coarse), on one thread: the fused AVX-512 nearest-centroid kernel (`kernel`, where the
//!   CPU has it) against f32 matrix products (`products`). Elements/s = tokens/s.
//!
//! Run: `cargo bench -p chamfer-index --bench kernels`.
use chamfer_index::kernels::{chamfer_with, kernel_level, pack_tokens, KernelLevel, PreparedQuery};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::hint::black_box;
use std::time::Duration;

const D: usize = 128;

/// Deterministic pseudo-random values in [-1, 1).
fn random(n: usize, seed: u64) -> Vec<f32> {
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

/// The levels this CPU runs for real (`chamfer_with` would silently fall back to portable).
fn levels() -> Vec<KernelLevel> {
    use KernelLevel::*;
    match kernel_level() {
        Avx512 => vec![Avx512, Avx2Fma, Portable],
        Avx2Fma => vec![Avx2Fma, Portable],
        Portable => vec![Portable],
    }
}

/// f16-rounded f32 copy of row-major tokens (what the sgemm baseline multiplies).
fn f16_rounded(tokens: &[f32]) -> Vec<f32> {
    tokens
        .iter()
        .map(|&v| half::f16::from_f32(v).to_f32())
        .collect()
}

/// Baseline: `scores = q * doc^T` with sgemm into `scores` (n_q x n_doc), then the sum of row maxima.
fn sgemm_maxsim(q: &[f32], doc: &[f32], scores: &mut [f32]) -> f32 {
    let (m, n) = (q.len() / D, doc.len() / D);
    assert_eq!(scores.len(), m * n);
    // SAFETY: q is m x D row-major, doc is n x D row-major read as the D x n matrix doc^T (row stride 1,
    // column stride D), scores is m x n row-major: the lengths are checked above and by construction.
    unsafe {
        matrixmultiply::sgemm(
            m,
            D,
            n,
            1.0,
            q.as_ptr(),
            D as isize,
            1,
            doc.as_ptr(),
            1,
            D as isize,
            0.0,
            scores.as_mut_ptr(),
            n as isize,
            1,
        );
    }
    scores
        .chunks_exact(n)
        .map(|row| row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)))
        .sum()
}

fn maxsim_one_big_document(c: &mut Criterion) {
    let (n_q, n_doc) = (32, 2000);
    let q = random(n_q * D, 1);
    let doc = random(n_doc * D, 2);
    let prepared = PreparedQuery::new(&q, D);
    let mut packed = Vec::new();
    pack_tokens(&doc, D, &mut packed);

    let mut g = c.benchmark_group("maxsim_32x128_by_2000");
    g.throughput(Throughput::Elements((2 * n_q * D * n_doc) as u64));
    for level in levels() {
        g.bench_function(format!("{level:?}"), |b| {
            b.iter(|| chamfer_with(level, black_box(&prepared), black_box(&packed), n_doc))
        });
    }
    let doc32 = f16_rounded(&doc);
    let mut scores = vec![0.0; n_q * n_doc];
    g.bench_function("sgemm_rowmax", |b| {
        b.iter(|| sgemm_maxsim(black_box(&q), black_box(&doc32), &mut scores))
    });
    g.finish();
}

fn maxsim_many_small_documents(c: &mut Criterion) {
    let (n_q, n_tok) = (8, 113);
    let q = random(n_q * D, 3);
    let prepared = PreparedQuery::new(&q, D);
    for n_docs in [100, 2000] {
        let docs: Vec<Vec<f32>> = (0..n_docs)
            .map(|i| random(n_tok * D, 10 + i as u64))
            .collect();
        // All documents back to back, as in a shard file.
        let mut packed = Vec::new();
        for doc in &docs {
            pack_tokens(doc, D, &mut packed);
        }
        let per_doc = packed.len() / n_docs;

        let mut g = c.benchmark_group(format!("maxsim_8x128_by_113_x{n_docs}_docs"));
        g.throughput(Throughput::Elements((2 * n_q * D * n_tok * n_docs) as u64));
        for level in levels() {
            g.bench_function(format!("{level:?}"), |b| {
                b.iter(|| {
                    let mut s = 0.0;
                    for doc in black_box(&packed).chunks_exact(per_doc) {
                        s += chamfer_with(level, &prepared, doc, n_tok);
                    }
                    s
                })
            });
        }
        let docs32: Vec<Vec<f32>> = docs.iter().map(|d| f16_rounded(d)).collect();
        let mut scores = vec![0.0; n_q * n_tok];
        g.bench_function("sgemm_rowmax", |b| {
            b.iter(|| {
                docs32
                    .iter()
                    .map(|d| sgemm_maxsim(black_box(&q), d, &mut scores))
                    .sum::<f32>()
            })
        });
        g.finish();
    }
}

fn assign_codes(c: &mut Criterion) {
    use chamfer_index::codebook::Codebook;
    const K: usize = 16384;
    let train = random(K * 16 * D, 7);
    let book = Codebook::train(&train, D, K, 7);
    let tokens = random(4096 * D, 8);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .expect("pool");
    let mut g = c.benchmark_group("assign_4096_tokens_16k_centroids");
    g.throughput(Throughput::Elements(4096));
    if kernel_level() == KernelLevel::Avx512 {
        g.bench_function("kernel", |b| {
            b.iter(|| pool.install(|| black_box(book.assign(&tokens))))
        });
    }
    g.bench_function("products", |b| {
        b.iter(|| pool.install(|| black_box(book.assign_by_products(&tokens))))
    });
    g.finish();
}

/// Short runs (the machine is shared); medians are in target/criterion/<group>/<kernel>/new/estimates.json.
fn config() -> Criterion {
    Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
}

criterion_group! {
    name = benches;
    config = config();
    targets = maxsim_one_big_document, maxsim_many_small_documents, assign_codes
}
criterion_main!(benches);
