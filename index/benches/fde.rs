//! Single-threaded bulk document encoding with the paper's configuration (R, k_sim, d_proj) = (20, 5, 16),
//! d = 128, on seeded synthetic documents of 113 unit-norm Gaussian tokens. Reports documents per second twice:
//! by wall-clock time, and by the CPU time of the process (Linux; on a shared machine the wall clock also
//! counts the time other processes hold the core).
use std::time::{Duration, Instant};

use chamfer_index::fde::rng::{Mt19937, NormalF32};
use chamfer_index::fde::{FdeConfig, FdeEncoder};
use chamfer_index::tokens::TokenMatrix;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

const DIM: usize = 128;
const TOKENS: usize = 113;
const DOCS: usize = 256;

fn corpus() -> Vec<f32> {
    let (mut rng, mut normal) = (Mt19937::new(2024), NormalF32::new());
    let mut data: Vec<f32> = (0..DOCS * TOKENS * DIM)
        .map(|_| normal.sample(&mut rng))
        .collect();
    for token in data.chunks_exact_mut(DIM) {
        let norm = token.iter().map(|v| v * v).sum::<f32>().sqrt();
        token.iter_mut().for_each(|v| *v /= norm);
    }
    data
}

/// CPU time of every thread of the process, from `/proc/self/task/*/schedstat` (nanoseconds).
fn process_cpu_time() -> Option<Duration> {
    let mut total = 0u64;
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let stat = std::fs::read_to_string(task.ok()?.path().join("schedstat")).ok()?;
        total += stat.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(Duration::from_nanos(total))
}

fn bench(c: &mut Criterion) {
    let data = corpus();
    let docs: Vec<TokenMatrix<'_>> = data
        .chunks_exact(TOKENS * DIM)
        .map(|d| TokenMatrix::new(d, DIM, "document").unwrap())
        .collect();
    let encoder = FdeEncoder::new(FdeConfig::paper_default(DIM)).unwrap();
    let mut out = vec![0.0f32; DOCS * encoder.config().output_dim()];
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    let mut encode = || {
        pool.install(|| encoder.encode_documents_into(&docs, &mut out))
            .unwrap()
    };

    let mut group = c.benchmark_group("fde");
    group.throughput(Throughput::Elements(DOCS as u64));
    group.bench_function(
        "encode_documents_into/1 thread/113 tokens/(20,5,16)/wall",
        |b| b.iter(&mut encode),
    );
    if process_cpu_time().is_some() {
        group.bench_function(
            "encode_documents_into/1 thread/113 tokens/(20,5,16)/cpu",
            |b| {
                b.iter_custom(|iters| {
                    let (cpu, wall) = (process_cpu_time().unwrap_or_default(), Instant::now());
                    for _ in 0..iters {
                        encode();
                    }
                    process_cpu_time().map_or(wall.elapsed(), |now| now.saturating_sub(cpu))
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
