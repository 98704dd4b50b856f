use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::assign::{argmin, assign_flat, top_indices, transpose_into};
use super::train::{normalise, quotas};
use super::*;

#[test]
fn kmeans_assigns_tokens_to_their_own_cluster() {
    // Three well-separated directions with small perturbations.
    let dim = 4;
    let base = [
        [1.0, 0.0, 0.0, 0.0],
        [0.0, 1.0, 0.0, 0.0],
        [0.0, 0.0, 0.0, 1.0],
    ];
    let mut toks = Vec::new();
    for i in 0..300 {
        let b = base[i % 3];
        let mut v: Vec<f32> = b
            .iter()
            .enumerate()
            .map(|(j, x)| x + ((i * 7 + j * 3) % 5) as f32 * 0.01)
            .collect();
        normalise(&mut v);
        toks.extend(v);
    }
    let book = Codebook::train(&toks, dim, 3, 1);
    // Cancellable training: the same centroids when never cancelled, None when cancelled mid-way.
    let same = Codebook::train_cancellable(&toks, dim, 3, 1, &|| false).unwrap();
    assert_eq!(same.centroids(), book.centroids());
    let asked = std::cell::Cell::new(0);
    let cancel = || {
        asked.set(asked.get() + 1);
        asked.get() > 2
    };
    assert!(Codebook::train_cancellable(&toks, dim, 3, 1, &cancel).is_none());
    assert_eq!(asked.get(), 3, "asked once per iteration until cancelled");
    let codes = book.assign(&toks);
    for i in 0..300 {
        assert_eq!(codes[i], codes[i % 3], "token {i}");
    }
    assert_ne!(codes[0], codes[1]);
    // The table score equals the naive centroid-interaction score.
    let q = &toks[..2 * dim];
    let t = book.query_table(q);
    let naive: f32 = (0..2)
        .map(|qi| {
            codes
                .iter()
                .map(|&c| {
                    (0..dim)
                        .map(|j| q[qi * dim + j] * book.centroids()[c as usize * dim + j])
                        .sum::<f32>()
                })
                .fold(f32::MIN, f32::max)
        })
        .sum();
    // The table is computed from f16 copies of the centroids (relative error <= 2^-11 per value).
    assert!(
        (t.score(&codes) - naive).abs() < 2e-3,
        "{} vs {naive}",
        t.score(&codes)
    );
    assert_eq!(Codebook::effective_size(1024, 100), 6);
}

/// Seeded clustered unit vectors: `clusters` random directions, `per` noisy tokens around each.
fn clustered(clusters: usize, per: usize, dim: usize, seed: u64) -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    let centers: Vec<Vec<f32>> = (0..clusters)
        .map(|_| {
            let mut v: Vec<f32> = (0..dim).map(|_| rng.random::<f32>() - 0.5).collect();
            normalise(&mut v);
            v
        })
        .collect();
    let mut out = Vec::with_capacity(clusters * per * dim);
    for i in 0..clusters * per {
        let mut v: Vec<f32> = centers[i % clusters]
            .iter()
            .map(|x| x + 0.15 * (rng.random::<f32>() - 0.5))
            .collect();
        normalise(&mut v);
        out.extend(v);
    }
    out
}

#[test]
fn size_rule_follows_colbert_and_is_capped() {
    // 2^floor(log2(16 sqrt(n))): 1M tokens -> 16000 -> 8192; 64M -> 128k -> capped at 2^16.
    assert_eq!(Codebook::size_for_tokens(1_000_000), 8192);
    assert_eq!(Codebook::size_for_tokens(64_000_000), MAX_CENTROIDS);
    assert_eq!(Codebook::size_for_tokens(0), 1);
    assert_eq!(
        Codebook::size_for_tokens(100),
        6,
        "at most one centroid per 16 tokens"
    );
    assert_eq!(Codebook::effective_size(1024, 1_000_000), 1024);
}

#[test]
fn quotas_sum_to_k_and_respect_cluster_sizes() {
    let q = quotas(&[100, 0, 7, 1, 50], 40);
    assert_eq!(q.iter().sum::<usize>(), 40);
    assert_eq!(q[1], 0);
    assert!(q.iter().zip([100, 0, 7, 1, 50]).all(|(&a, n)| a <= n));
    // Fewer tokens than centroids asked: every token its own centroid.
    assert_eq!(quotas(&[2, 3], 10), vec![2, 3]);
}

#[test]
fn transpose_into_is_coordinate_major() {
    for (n_rows, dim) in [
        (1usize, 1usize),
        (8, 8),
        (9, 17),
        (23, 128),
        (16, 7),
        (3, 24),
    ] {
        let block: Vec<f32> = (0..(n_rows + 2) * dim).map(|i| i as f32).collect();
        let rows: Vec<u32> = (0..n_rows as u32)
            .map(|r| (r * 7 + 1) % (n_rows as u32 + 2))
            .collect();
        let mut out = Vec::new();
        transpose_into(&block, dim, rows.iter().copied(), &mut out);
        assert_eq!(out.len(), n_rows * dim);
        for (j, &r) in rows.iter().enumerate() {
            for k in 0..dim {
                assert_eq!(
                    out[k * n_rows + j],
                    block[r as usize * dim + k],
                    "{n_rows}x{dim} j={j} k={k}"
                );
            }
        }
    }
}

/// The plain one-value-at-a-time scan [`top_indices`] must agree with, ties and NaN included.
fn plain_top(row: &[f32], p: usize) -> Vec<u32> {
    let mut best: Vec<(f32, u32)> = Vec::new();
    for (i, &v) in row.iter().enumerate() {
        if best.len() < p {
            best.push((v, i as u32));
        } else if p > 0 && v > best[argmin(&best)].0 {
            let w = argmin(&best);
            best[w] = (v, i as u32);
        }
    }
    best.into_iter().map(|(_, i)| i).collect()
}

#[test]
fn top_indices_agree_with_a_plain_scan_on_ties_and_nan() {
    for n in [0usize, 1, 7, 8, 9, 40, 256] {
        for seed in 0..10u64 {
            // Few distinct values (many ties), some NaN.
            let row: Vec<f32> = (0..n)
                .map(|i| match (i as u64 * 7 + seed * 13) % 11 {
                    0 => f32::NAN,
                    v => (v % 4) as f32,
                })
                .collect();
            for p in 0..6 {
                let mut got = Vec::new();
                top_indices(&row, p, &mut got);
                got.sort_unstable();
                let mut want = plain_top(&row, p);
                want.sort_unstable();
                assert_eq!(got, want, "n={n} p={p} seed={seed}");
            }
        }
    }
}

#[test]
fn top_indices_are_the_largest_values() {
    for n in [1usize, 3, 4, 5, 17, 256] {
        for seed in 0..20u64 {
            let row: Vec<f32> = (0..n)
                .map(|i| ((i as u64 * 2654435761 + seed * 7919) % 1009) as f32)
                .collect();
            for p in 1..=n.min(6) {
                let mut got = Vec::new();
                top_indices(&row, p, &mut got);
                let mut want: Vec<f32> = row.clone();
                want.sort_by(|a, b| b.total_cmp(a));
                let mut vals: Vec<f32> = got.iter().map(|&i| row[i as usize]).collect();
                vals.sort_by(|a, b| b.total_cmp(a));
                assert_eq!(vals, want[..p].to_vec(), "n={n} p={p} seed={seed}");
                got.sort_unstable();
                got.dedup();
                assert_eq!(got.len(), p, "distinct indices");
                let mut plain = plain_top(&row, p);
                plain.sort_unstable();
                assert_eq!(got, plain, "the same indices as a plain scan");
            }
        }
    }
}

#[test]
fn two_level_codebook_assigns_like_brute_force_and_round_trips() {
    let dim = 16;
    let toks = clustered(6000, 3, dim, 5);
    let k = FLAT_MAX * 2;
    let book = Codebook::train(&toks, dim, k, 3);
    assert!(
        book.coarse_len() > 0,
        "a codebook above FLAT_MAX has a coarse level"
    );
    assert!(book.len() <= k && book.len() > k / 2, "{}", book.len());
    let codes = book.assign(&toks);
    assert_eq!(codes, book.assign_sequential(&toks));
    let agree = book.assign_agreement(&toks);
    assert!((0.9..=1.0).contains(&agree), "{agree}");
    // Flat: exact on f32 products; the kernel's fused multiply-adds round differently, so a token may take a
    // near-tie's other centroid, never one measurably worse.
    let flat = Codebook::train(&toks, dim, 64, 3);
    assert_eq!(
        assign_flat(flat.centroids(), flat.len(), dim, &toks),
        flat.assign_by_products(&toks)
            .iter()
            .map(|&c| c as usize)
            .collect::<Vec<_>>(),
        "flat products: exact"
    );
    assert_eq!(flat.assign_agreement(&toks), 1.0, "flat: exact");
    for (book, flat_book) in [(&flat, true), (&book, false)] {
        let fast = book.assign(&toks);
        let reference = book.assign_by_products(&toks);
        let mut same = 0;
        for (t, (&a, &b)) in toks.chunks_exact(dim).zip(fast.iter().zip(&reference)) {
            let score = |c: u16| -> f32 {
                let cent = &book.centroids()[c as usize * dim..][..dim];
                t.iter().zip(cent).map(|(x, y)| x * y).sum()
            };
            let norm = t.iter().map(|v| v * v).sum::<f32>().sqrt();
            same += usize::from(a == b);
            if flat_book {
                assert!(score(a) >= score(b) - 2e-3 * norm, "kernel code {a} vs {b}");
            }
        }
        assert!(
            same as f64 >= 0.999 * fast.len() as f64,
            "kernel and products agree on {same} of {} tokens",
            fast.len()
        );
    }
    // Round trip, and damage refused with a reason.
    let bytes = book.to_bytes();
    let back = Codebook::from_bytes(&bytes, dim).unwrap();
    assert_eq!(back.centroids(), book.centroids());
    assert_eq!(back.assign(&toks), codes);
    assert!(Codebook::from_bytes(&bytes, dim + 1).is_err());
    assert!(Codebook::from_bytes(&bytes[..bytes.len() - 4], dim).is_err());
    assert!(Codebook::from_bytes(&bytes[..8], dim).is_err());
    let mut nan = bytes.clone();
    nan[16..20].copy_from_slice(&f32::NAN.to_le_bytes());
    assert!(Codebook::from_bytes(&nan, dim)
        .unwrap_err()
        .contains("non-finite"));
    let mut ranges = bytes.clone();
    let last = ranges.len() - 4;
    ranges[last..].copy_from_slice(&1u32.to_le_bytes());
    assert!(Codebook::from_bytes(&ranges, dim)
        .unwrap_err()
        .contains("ranges"));
    assert_eq!(back.train_error(), book.train_error());
    let mut bad_err = bytes.clone();
    bad_err[12..16].copy_from_slice(&(-1.0f32).to_le_bytes());
    assert!(Codebook::from_bytes(&bad_err, dim)
        .unwrap_err()
        .contains("training error"));
    // A flat codebook round trips too.
    let small = Codebook::train(&toks, dim, 64, 3);
    let back = Codebook::from_bytes(&small.to_bytes(), dim).unwrap();
    assert_eq!(back.centroids(), small.centroids());
    assert_eq!(back.coarse_len(), 0);
}

#[test]
fn parallel_query_table_equals_sequential() {
    let dim = 16;
    let toks = clustered(300, 10, dim, 9);
    let book = Codebook::train(&toks, dim, 1500, 1);
    let q = &toks[..5 * dim];
    let (a, b) = (book.query_table(q), book.query_table_par(q, 3));
    assert_eq!(a.table, b.table);
    assert_eq!(a.query_tokens(), 5);
}

#[test]
fn drift_is_measured_against_the_training_error() {
    let dim = 16;
    let toks = clustered(200, 20, dim, 21);
    let book = Codebook::train(&toks, dim, 256, 4);
    let base = book.train_error().unwrap();
    assert!(base > 0.0 && base < 0.2, "{base}");
    // More tokens from the same clusters: no drift. Tokens from other directions: drift.
    assert!(!book.drifted(&clustered(200, 5, dim, 21)));
    assert!(book.drifted(&clustered(200, 5, dim, 99)));
    // Unknown training error (bare centroids): never drifted.
    let bare = Codebook::from_centroids(dim, book.centroids().to_vec());
    assert_eq!(bare.train_error(), None);
    assert!(!bare.drifted(&clustered(200, 5, dim, 99)));
    assert_eq!(
        book.quantization_error(&[0.0; 16]),
        0.0,
        "zero tokens are skipped"
    );
}
