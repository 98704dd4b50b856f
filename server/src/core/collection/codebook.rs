//! The collection codebook: one token codebook shared by every shard a collection writes, so that approximate
//! scores do not depend on how documents were batched, flushed or compacted, and so that flushes and merges copy
//! codes instead of re-assigning them.
//!
//! # Life cycle
//!
//! - **First training**: the first flush (or compaction) of a collection without one trains it on a uniform
//!   token sample of every live document (memtable included), sized by the engine's rule
//!   ([`Codebook::effective_size`] of the collection's token count, capped by `codebook_size`).
//! - **Use**: upserts build their memory segments coded with it (documents that arrived before it exist are
//!   tokens-only segments, searched exactly); flushes and compactions copy the codes of documents coded with it
//!   and assign the others.
//! - **Re-training** (background, on a thread of its own; writes, searches, flushes and merges go on with the
//!   current codebook): when the size rule asks for at least [`GROWTH_FACTOR`] times more centroids than it has,
//!   or for more once it reaches its ceiling (the collection grew), or when held-out tokens of a flush are
//!   quantized more than [`chamfer_index::codebook::DRIFT_BOUND`] worse than the baseline measured on held-out
//!   tokens when it was trained (the data drifted) and the collection has doubled since.
//!   Shards keep the codebook they were written with (each shard file holds its own copy); compaction moves
//!   their documents to the current one.
//!
//! # File format (`codebook-<generation>.bin`, little-endian)
//!
//! ```text
//! 0   8  magic "CHMFCBK\0"
//! 8   4  format version (1)
//! 12  4  token dimension
//! 16  8  generation
//! 24  8  body length in bytes
//! 32  4  CRC32 of the body
//! 36  4  CRC32 of bytes 0..36
//! 40  .. body: the engine's codebook bytes (Codebook::to_bytes: sizes, centroids, coarse level)
//! ```
//!
//! Written atomically (temp file, fsync, rename, directory fsync) BEFORE the manifest that names it; the
//! manifest records its generation, size and CRC, so a missing, truncated, swapped or bit-flipped file is
//! refused at open (the collection is unavailable, nothing is deleted).
use std::path::Path;
use std::sync::Arc;

use chamfer_index::codebook::{Codebook, DRIFT_BOUND, SAMPLE_PER_CENTROID};
use chamfer_index::fsutil;
use chamfer_index::shard::{IndexParams, Shard};
use rand::{Rng, SeedableRng};

use crate::core::manifest::CodebookEntry;
use crate::core::storage_error::StorageError;

use super::state::Bitset;

const MAGIC: &[u8; 8] = b"CHMFCBK\0";
const VERSION: u32 = 1;
const HEADER: usize = 40;
/// Re-train when the size rule asks for this many times the current number of centroids.
pub(super) const GROWTH_FACTOR: usize = 4;
/// Tokens taken from one sampled document (a few per document spreads the sample over more documents).
const TOKENS_PER_SAMPLED_DOC: usize = 8;
/// Held-out tokens on which the drift baseline and drift checks are measured.
const HOLDOUT_TOKENS: usize = 8192;

/// A codebook in use: the entry the manifest names and the codebook itself.
#[derive(Clone)]
pub(super) struct Current {
    pub(super) entry: CodebookEntry,
    pub(super) book: Arc<Codebook>,
}

/// Writes `book` as generation `generation` to `path` (atomically, durably); returns its body CRC.
pub(super) fn write(
    path: &Path,
    dim: usize,
    generation: u64,
    book: &Codebook,
) -> Result<u32, StorageError> {
    let body = book.to_bytes();
    let crc = crc32fast::hash(&body);
    let mut out = Vec::with_capacity(HEADER + body.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&(dim as u32).to_le_bytes());
    out.extend_from_slice(&generation.to_le_bytes());
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(&crc.to_le_bytes());
    let head_crc = crc32fast::hash(&out);
    out.extend_from_slice(&head_crc.to_le_bytes());
    out.extend_from_slice(&body);
    fsutil::write_atomic(path, &out).map_err(StorageError::from)?;
    Ok(crc)
}

/// Reads the codebook `entry` names from `path`, checking it against the entry and itself.
pub(super) fn read(
    path: &Path,
    dim: usize,
    entry: &CodebookEntry,
) -> Result<Codebook, StorageError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(StorageError::damaged(
                path,
                None,
                "the collection codebook the manifest names is missing (refusing to open, nothing was deleted)",
            ))
        }
        Err(e) => return Err(StorageError::io(path, e)),
    };
    parse(path, &bytes, dim, entry)
}

fn parse(
    path: &Path,
    b: &[u8],
    dim: usize,
    entry: &CodebookEntry,
) -> Result<Codebook, StorageError> {
    let bad = |why: String| StorageError::damaged(path, None, why);
    if b.len() < HEADER || &b[..8] != MAGIC {
        return Err(bad(
            "not a chamfer codebook file (bad magic or too short)".into()
        ));
    }
    let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
    let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap_or([0; 8]));
    if crc32fast::hash(&b[..36]) != u32_at(36) {
        return Err(bad("header checksum mismatch".into()));
    }
    if u32_at(8) != VERSION {
        return Err(StorageError::Version {
            path: path.to_path_buf(),
            found: u32_at(8),
            supported: VERSION,
        });
    }
    if u32_at(12) as usize != dim {
        return Err(bad(format!(
            "dimension {} where the collection has {dim}",
            u32_at(12)
        )));
    }
    if u64_at(16) != entry.generation {
        return Err(bad(format!(
            "generation {} where the manifest names {}",
            u64_at(16),
            entry.generation
        )));
    }
    let body = &b[HEADER..];
    if u64_at(24) != body.len() as u64 {
        return Err(bad(format!(
            "body of {} bytes, the header says {}",
            body.len(),
            u64_at(24)
        )));
    }
    let crc = crc32fast::hash(body);
    if crc != u32_at(32) || crc != entry.crc32 {
        return Err(bad("body checksum mismatch".into()));
    }
    let book = Codebook::from_bytes(body, dim).map_err(bad)?;
    if book.len() != entry.centroids {
        return Err(bad(format!(
            "{} centroids where the manifest says {}",
            book.len(),
            entry.centroids
        )));
    }
    Ok(book)
}

/// A seeded uniform sample of `want` tokens of the live documents of `segments` (a few tokens from each
/// sampled document), as rows of `dim` floats.
pub(super) fn sample_tokens(
    segments: &[(Arc<Shard>, Arc<Bitset>)],
    dim: usize,
    want: usize,
    seed: u64,
) -> Vec<f32> {
    let live: Vec<(usize, usize)> = segments
        .iter()
        .enumerate()
        .map(|(i, (s, del))| (i, s.len() - del.ones()))
        .filter(|&(_, n)| n > 0)
        .collect();
    let total: usize = live.iter().map(|l| l.1).sum();
    let mut out = Vec::with_capacity(want * dim);
    if total == 0 {
        return out;
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    // Bounded: a sample never takes more tries than a few per wanted token, even when most are deleted.
    let mut tries = want.saturating_mul(8).max(64);
    while out.len() < want * dim && tries > 0 {
        tries -= 1;
        let mut r = rng.random_range(0..total);
        let Some(&(si, _)) = live.iter().find(|&&(_, n)| {
            let hit = r < n;
            if !hit {
                r -= n;
            }
            hit
        }) else {
            break;
        };
        let (shard, deleted) = &segments[si];
        let d = rng.random_range(0..shard.len());
        if deleted.get(d) || shard.n_tokens(d) == 0 {
            continue;
        }
        let toks = shard.tokens(d);
        let n = shard.n_tokens(d);
        for _ in 0..TOKENS_PER_SAMPLED_DOC.min(n) {
            let t = rng.random_range(0..n);
            out.extend_from_slice(&toks[t * dim..(t + 1) * dim]);
        }
    }
    out.truncate(want * dim);
    out
}

/// The number of centroids the collection's size rule asks for at `tokens` live tokens.
pub(super) fn wanted_size(params: &IndexParams, tokens: u64) -> usize {
    Codebook::effective_size(params.codebook_size, tokens.min(usize::MAX as u64) as usize)
}

/// Trains generation `generation` on the live documents of `segments` (None when they hold no token or
/// training was cancelled). Returns the codebook and the entry to record (its CRC filled in by the caller once
/// the file is written).
pub(super) fn train(
    params: &IndexParams,
    segments: &[(Arc<Shard>, Arc<Bitset>)],
    generation: u64,
    live_docs: u64,
    cancel: &dyn Fn() -> bool,
) -> Option<(Codebook, CodebookEntry)> {
    let dim = params.fde.dimension;
    let tokens: u64 = segments
        .iter()
        .map(|(s, del)| {
            let all = s.total_tokens();
            if del.ones() == 0 {
                all
            } else {
                (0..s.len())
                    .filter(|&d| !del.get(d))
                    .map(|d| s.n_tokens(d) as u64)
                    .sum()
            }
        })
        .sum();
    let k = wanted_size(params, tokens);
    if k == 0 {
        return None;
    }
    let seed = params.fde.seed ^ generation.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let sample = sample_tokens(segments, dim, k * SAMPLE_PER_CENTROID, seed);
    if sample.len() < k * dim {
        return None;
    }
    let holdout = sample_tokens(segments, dim, HOLDOUT_TOKENS, seed ^ 0x5A5A);
    let book = Codebook::train_cancellable(&sample, dim, k, seed, cancel)?;
    let baseline_error = if holdout.is_empty() {
        0.0
    } else {
        book.quantization_error(&holdout)
    };
    let entry = CodebookEntry {
        generation,
        centroids: book.len(),
        crc32: 0,
        baseline_error_e6: (baseline_error * 1e6).round().clamp(0.0, u64::MAX as f64) as u64,
        trained_at_docs: live_docs,
    };
    Some((book, entry))
}

/// Why `current` should be re-trained for a collection of `live_docs` documents holding `tokens` tokens, with
/// `recent` held-out tokens of newly flushed documents (None: keep it).
pub(super) fn retrain_reason(
    params: &IndexParams,
    current: &Current,
    live_docs: u64,
    tokens: u64,
    recent: &[f32],
) -> Option<String> {
    let wanted = wanted_size(params, tokens);
    // Grown by GROWTH_FACTOR, or grown at all once the size rule reaches its ceiling (the cap): otherwise a
    // codebook trained just below a quarter of the cap would never reach it.
    let ceiling = wanted_size(params, u64::MAX);
    let len = current.book.len();
    if wanted >= len.saturating_mul(GROWTH_FACTOR) || (wanted == ceiling && wanted > len) {
        return Some(format!(
            "the collection grew: its size rule asks for {wanted} centroids, the codebook has {}",
            current.book.len()
        ));
    }
    let grown = live_docs >= current.entry.trained_at_docs.saturating_mul(2);
    let baseline = current.entry.baseline_error_e6 as f64 / 1e6;
    if grown && !recent.is_empty() && baseline > 0.0 {
        let err = current.book.quantization_error(recent);
        if err > baseline * (1.0 + DRIFT_BOUND) {
            return Some(format!(
                "the data drifted: new tokens' quantization error {err:.4} exceeds the baseline {:.4} by more than {:.0}%",
                baseline,
                DRIFT_BOUND * 100.0
            ));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn book() -> Codebook {
        let mut v = Vec::new();
        for i in 0..64 {
            let mut row = vec![0f32; 8];
            row[i % 8] = 1.0 + (i / 8) as f32;
            v.extend(row);
        }
        Codebook::train(&v, 8, 4, 1)
    }

    /// Growth re-trains at 4x the centroids, and once the rule's ceiling is reached at any growth (a codebook of
    /// half the cap must not stay there).
    #[test]
    fn growth_reaches_the_cap() {
        let params = IndexParams::new(8);
        let ceiling = wanted_size(&params, u64::MAX);
        let current = |k: usize| Current {
            entry: CodebookEntry {
                generation: 1,
                centroids: k,
                crc32: 0,
                baseline_error_e6: 0,
                trained_at_docs: 1,
            },
            book: Arc::new(Codebook::from_centroids(8, vec![0.5; 8 * k])),
        };
        // Tokens for which the rule asks for the ceiling.
        let huge = 1u64 << 40;
        assert!(retrain_reason(&params, &current(ceiling / 2), 10, huge, &[]).is_some());
        assert!(retrain_reason(&params, &current(ceiling), 10, huge, &[]).is_none());
        // Below the ceiling, 2x growth is not enough, 4x is.
        let t = |k: u64| (k * k) / 256 * 2; // 16 sqrt(t) ~ k x 1.4
        let small = wanted_size(&params, t(1024));
        assert!(retrain_reason(&params, &current(small / 2), 10, t(1024), &[]).is_none());
        assert!(retrain_reason(&params, &current(small / 4), 10, t(1024), &[]).is_some());
    }

    #[test]
    fn file_round_trip_and_damage_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("codebook-00000001.bin");
        let b = book();
        let crc = write(&path, 8, 1, &b).unwrap();
        let entry = CodebookEntry {
            generation: 1,
            centroids: b.len(),
            crc32: crc,
            baseline_error_e6: 0,
            trained_at_docs: 1,
        };
        let back = read(&path, 8, &entry).unwrap();
        assert_eq!(back.centroids(), b.centroids());
        // Every single flipped byte is refused, never a panic or a different codebook.
        let bytes = std::fs::read(&path).unwrap();
        for i in 0..bytes.len() {
            let mut m = bytes.clone();
            m[i] ^= 0x10;
            assert!(parse(&path, &m, 8, &entry).is_err(), "byte {i}");
        }
        // Truncations, a wrong generation or dimension, a missing file.
        for n in [0, 10, HEADER, bytes.len() - 1] {
            assert!(parse(&path, &bytes[..n], 8, &entry).is_err(), "len {n}");
        }
        let other = CodebookEntry {
            generation: 2,
            ..entry.clone()
        };
        assert!(read(&path, 8, &other).is_err());
        assert!(read(&path, 4, &entry).is_err());
        let missing = read(&dir.path().join("nope.bin"), 8, &entry).unwrap_err();
        assert!(missing.to_string().contains("missing"), "{missing}");
    }
}
