//! Fuzzing entry points (not part of the public API). The `fuzz/` crate's targets are thin wrappers around
//! these functions, and the crate's own tests replay a seed corpus and deterministic mutations through the very
//! same functions, so `cargo test` is the CI fuzz smoke.
//!
//! Every function here must return normally for any input: a panic or an abort is a bug in the reader.
use std::path::Path;
use std::sync::Arc;

use half::f16;

use crate::search::{Plan, SearchParams, Searcher};
use crate::shard::{IndexParams, Shard, ShardDoc};
use crate::tokens::TokenMatrix;
use crate::Result;

/// `shard_open` input modes, selected by the low bit of the first byte.
const MODE_RESEAL: u8 = 1;

/// The `shard_open` target: bytes -> (optionally re-sealed) shard file in `dir` -> [`Shard::open`] -> read every
/// document -> searches. The first byte selects the mode: odd = re-seal the rest (recompute every section CRC
/// and the metadata CRC, see [`reseal`]) so that mutations reach the structural checks behind the checksums;
/// even = use the rest as is. Returns whether the shard opened (errors are fine, panics are not).
pub fn shard_open_file(dir: &Path, data: &[u8]) -> bool {
    let bytes = prepare(data);
    let path = dir.join("fuzz.shard");
    if std::fs::write(&path, &bytes).is_err() {
        return false;
    }
    let opened = Shard::open(&path).map(exercise).is_ok();
    let _ = std::fs::remove_file(&path);
    opened
}

/// [`shard_open_file`] without the file: the same parser over the bytes in memory (no mmap, no graph files).
/// Fast enough for thousands of mutations in a unit test.
pub fn shard_open_bytes(data: &[u8]) -> bool {
    let bytes = prepare(data);
    Shard::from_memory(&bytes).map(exercise).is_ok()
}

fn prepare(data: &[u8]) -> Vec<u8> {
    match data.split_first() {
        Some((&mode, rest)) if mode & 1 == MODE_RESEAL => {
            reseal(rest).unwrap_or_else(|| rest.to_vec())
        }
        Some((_, rest)) => rest.to_vec(),
        None => Vec::new(),
    }
}

/// Reads everything an opened shard exposes and runs one search per plan; every value is touched so that an
/// out-of-bounds offset would panic here rather than in production.
fn exercise(shard: Shard) -> Result<()> {
    let mut sink = 0u64;
    for i in 0..shard.len() {
        sink = sink.wrapping_add(shard.id(i).len() as u64);
        sink = sink.wrapping_add(shard.payload(i).len() as u64);
        sink = sink.wrapping_add(shard.tokens(i).len() as u64);
        sink = sink.wrapping_add(shard.codes(i).len() as u64);
        sink = sink.wrapping_add(shard.fde(i).len() as u64);
        sink = sink.wrapping_add(shard.n_tokens(i) as u64);
    }
    std::hint::black_box(sink);
    let params = shard.params().clone();
    let dim = params.fde.dimension;
    let shard = Arc::new(shard);
    let searcher = Searcher::new(params, vec![shard])?;
    let query: Vec<f32> = (0..2 * dim)
        .map(|i| ((i * 7919 % 113) as f32 / 56.0) - 1.0)
        .collect();
    let query = TokenMatrix::new(&query, dim, "query")?;
    for plan in [Plan::Auto, Plan::Exact, Plan::FdeScan, Plan::CentroidScan] {
        let mut p = SearchParams::new(3);
        p.plan = plan;
        let _ = searcher.search(query, &p, None);
    }
    Ok(())
}

/// Start of the metadata JSON in shard bytes (the last `{"format"`), if any.
fn meta_start(bytes: &[u8]) -> Option<usize> {
    const KEY: &[u8] = b"{\"format\"";
    bytes.windows(KEY.len()).rposition(|w| w == KEY)
}

/// Re-seals (possibly damaged) shard bytes so that they pass every checksum: the metadata JSON is found by its
/// first key (wherever truncations or insertions moved it), each section it lists that lies inside the body
/// gets its CRC32 recomputed, and a fresh footer (length, CRC, version, end marker) replaces whatever followed
/// the JSON. Metadata that no longer parses is kept as is (with a matching CRC), so its parse errors are
/// reached too. Returns None without a metadata JSON.
pub fn reseal(bytes: &[u8]) -> Option<Vec<u8>> {
    let start = meta_start(bytes)?;
    let end = start + bytes[start..].iter().rposition(|&b| b == b'}')? + 1;
    let raw = &bytes[start..end];
    let json = match serde_json::from_slice::<serde_json::Value>(raw) {
        Ok(mut meta) => {
            if let Some(sections) = meta
                .get_mut("sections")
                .and_then(serde_json::Value::as_array_mut)
            {
                for s in sections {
                    let (Some(off), Some(len)) = (
                        s.get("offset").and_then(serde_json::Value::as_u64),
                        s.get("len").and_then(serde_json::Value::as_u64),
                    ) else {
                        continue;
                    };
                    let range = usize::try_from(off)
                        .ok()
                        .zip(usize::try_from(len).ok())
                        .and_then(|(o, l)| Some(o..o.checked_add(l)?))
                        .filter(|r| r.end <= start);
                    if let (Some(r), Some(obj)) = (range, s.as_object_mut()) {
                        obj.insert(
                            "crc32".into(),
                            serde_json::Value::from(crc32fast::hash(&bytes[r])),
                        );
                    }
                }
            }
            serde_json::to_vec(&meta).ok()?
        }
        Err(_) => raw.to_vec(),
    };
    let mut out = bytes[..start].to_vec();
    out.extend_from_slice(&json);
    out.extend_from_slice(&(json.len() as u64).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&json).to_le_bytes());
    out.extend_from_slice(&crate::shard::FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(b"CHMFEND1");
    Some(out)
}

/// Small valid shards for the seed corpus: (name, bytes). Deterministic: the same bytes on every run and build
/// (the `written_by` field aside, which records the crate version).
pub fn seed_shards() -> Vec<(&'static str, Vec<u8>)> {
    let doc_tokens = |seed: usize, n: usize, dim: usize| -> Vec<f32> {
        (0..n * dim)
            .map(|i| (((i + 31 * seed) * 2654435761 % 1000) as f32 / 500.0) - 1.0)
            .collect()
    };
    let make = |params: IndexParams, n_docs: usize, extreme: bool| -> Option<Vec<u8>> {
        let dim = params.fde.dimension;
        let data: Vec<Vec<f32>> = (0..n_docs)
            .map(|d| {
                let mut t = doc_tokens(d, 1 + d % 5, dim);
                if extreme {
                    t.iter_mut().for_each(|v| {
                        *v = if *v >= 0.0 {
                            f16::MAX.to_f32()
                        } else {
                            f16::MIN.to_f32()
                        }
                    });
                }
                t
            })
            .collect();
        let ids: Vec<String> = (0..n_docs).map(|d| format!("doc-{d}")).collect();
        let payloads: Vec<String> = (0..n_docs)
            .map(|d| {
                if d % 2 == 0 {
                    format!("{{\"n\":{d}}}")
                } else {
                    String::new()
                }
            })
            .collect();
        let docs: Vec<ShardDoc<'_>> = (0..n_docs)
            .map(|d| {
                Some(ShardDoc {
                    id: &ids[d],
                    tokens: TokenMatrix::new(&data[d], dim, "document").ok()?,
                    payload: payloads[d].as_bytes(),
                })
            })
            .collect::<Option<_>>()?;
        let shard = Shard::build_in_memory(&params, &docs).ok()?;
        Some(shard.raw_bytes().to_vec())
    };
    let small = |dim: usize, codebook: usize| {
        let mut p = IndexParams::new(dim);
        p.fde.num_repetitions = 2;
        p.fde.num_simhash_projections = 2;
        p.fde.projection_dimension = 4;
        p.hnsw.prefix_repetitions = 1;
        p.codebook_size = codebook;
        p
    };
    let mut out = Vec::new();
    for (name, params, n, extreme) in [
        ("small_no_codebook", small(4, 0), 6, false),
        ("small_codebook", small(4, 4), 40, false),
        (
            "identity_extreme",
            {
                let mut p = small(3, 0);
                p.fde.projection_type = crate::fde::ProjectionType::Identity;
                p
            },
            5,
            true,
        ),
        ("empty", small(4, 0), 0, false),
    ] {
        if let Some(bytes) = make(params, n, extreme) {
            out.push((name, bytes));
        }
    }
    out
}

/// Deterministic mutations of `seed` for the fuzz smoke: bit flips, byte overwrites with boundary values,
/// truncations, extensions and duplicated ranges, drawn from a small xorshift generator.
pub fn mutations(seed: &[u8], count: usize, rng_seed: u64) -> impl Iterator<Item = Vec<u8>> + '_ {
    let mut state = rng_seed | 1;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    (0..count).map(move |_| {
        let mut m = seed.to_vec();
        let edits = 1 + next() % 4;
        for _ in 0..edits {
            let len = m.len().max(1);
            let at = (next() as usize) % len;
            match next() % 9 {
                0 | 1 => {
                    if let Some(b) = m.get_mut(at) {
                        *b ^= 1 << (next() % 8);
                    }
                }
                2 => {
                    let v = [0x00, 0xff, 0x7f, 0x80, 0x01][(next() % 5) as usize];
                    let n = 1 + (next() % 8) as usize;
                    for b in m.iter_mut().skip(at).take(n) {
                        *b = v;
                    }
                }
                3 => m.truncate(at),
                4 => {
                    let n = (next() % 64) as usize;
                    m.extend((0..n).map(|i| (i as u8).wrapping_mul(37)));
                }
                5..=7 => {
                    // Replace an ASCII digit of the metadata JSON (a count, offset, length or parameter) by
                    // another digit or by many digits.
                    let from = meta_start(&m).map_or(at, |s| s + at % (m.len() - s).max(1));
                    if let Some(p) = m[from..].iter().position(u8::is_ascii_digit) {
                        let at = from;
                        let digits: &[u8] = match next() % 3 {
                            0 => b"9",
                            1 => b"0",
                            _ => b"18446744073709551615",
                        };
                        let p = at + p;
                        m.splice(p..p + 1, digits.iter().copied());
                    }
                }
                _ => {
                    let n = ((next() % 32) as usize).min(m.len() - at.min(m.len()));
                    let chunk: Vec<u8> = m[at.min(m.len())..][..n].to_vec();
                    let to = (next() as usize) % m.len().max(1);
                    m.splice(to.min(m.len())..to.min(m.len()), chunk);
                }
            }
        }
        m
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn corpus_dir() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/shard_open")
    }

    /// The checked-in corpus replays without a panic, and its valid seeds (and the generated ones) open in both
    /// modes: a fuzz smoke that could not open anything would test nothing.
    #[test]
    fn corpus_replays_and_seeds_open() {
        let mut files: Vec<_> = std::fs::read_dir(corpus_dir())
            .expect("fuzz/corpus/shard_open exists")
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        assert!(files.len() >= 4, "{files:?}");
        let dir = tempfile::tempdir().unwrap();
        let mut opened = 0;
        for f in &files {
            let data = std::fs::read(f).unwrap();
            let a = shard_open_file(dir.path(), &data);
            let b = shard_open_bytes(&data);
            assert_eq!(a, b, "{}", f.display());
            let name = f.file_name().unwrap().to_string_lossy().into_owned();
            if name.starts_with("valid") {
                assert!(a, "{name} must open");
            }
            opened += a as usize;
        }
        assert!(opened >= 3);
        for (name, bytes) in seed_shards() {
            for mode in [0u8, 1] {
                let mut data = vec![mode];
                data.extend_from_slice(&bytes);
                assert!(shard_open_bytes(&data), "{name} mode {mode}");
            }
        }
        assert_eq!(seed_shards().len(), 4);
    }

    /// A few thousand deterministic mutations of every seed, raw and re-sealed: none may panic. Re-sealed
    /// mutations get past the checksums, so some of them still open (structure intact) and the rest are
    /// rejected by the structural checks: both counts are non-zero or the smoke would not be reaching them.
    #[test]
    fn mutations_never_panic() {
        let (mut ok, mut rejected) = (0, 0);
        for (i, (_, bytes)) in seed_shards().into_iter().enumerate() {
            for mode in [0u8, 1] {
                let mut seed = vec![mode];
                seed.extend_from_slice(&bytes);
                for m in mutations(&seed, 1000, 0x5eed + i as u64 * 2 + mode as u64) {
                    if shard_open_bytes(&m) {
                        ok += 1;
                    } else {
                        rejected += 1;
                    }
                }
            }
        }
        assert!(ok > 0 && rejected > 0, "ok {ok}, rejected {rejected}");
    }

    /// Writes the seed corpus (run by hand after a format change:
    /// `cargo test -p chamfer-index --lib fuzzing::tests::write_seed_corpus -- --ignored`).
    #[test]
    #[ignore]
    fn write_seed_corpus() {
        let dir = corpus_dir();
        std::fs::create_dir_all(&dir).unwrap();
        for (name, bytes) in seed_shards() {
            let mut data = vec![0u8];
            data.extend_from_slice(&bytes);
            std::fs::write(dir.join(format!("valid_{name}")), &data).unwrap();
            let mut resealed_truncated = vec![1u8];
            resealed_truncated.extend_from_slice(&bytes[..bytes.len() / 2]);
            std::fs::write(
                dir.join(format!("damaged_truncated_{name}")),
                &resealed_truncated,
            )
            .unwrap();
        }
        std::fs::write(dir.join("damaged_empty"), b"").unwrap();
        std::fs::write(dir.join("damaged_magic_only"), b"\x00CHMFSHRD").unwrap();
    }
}
