//! Fuzzing entry points (not part of the public API). The `fuzz/` crate's `grpc_upsert`, `rest_upsert`,
//! `wal_replay` and `manifest_parse` targets are thin wrappers around these functions, and the tests below replay the checked-in seed corpus and
//! deterministic mutations of it through the very same functions (the CI fuzz smoke).
//!
//! Each runs the real decode path of an upsert (protobuf decode + the gRPC adapter's conversion, or the REST
//! body type + the REST adapter's conversion), then THE validation ([`input::validate_docs`]), then writes the
//! validated documents into an in-memory shard and re-reads it: whatever passes validation must make a
//! readable shard. Every function returns normally for any input; a panic is a bug.
use chamfer_index::shard::{IndexParams, Shard};
use chamfer_index::IndexError;
use prost::Message;

use std::path::Path;

use crate::config::Limits;
use crate::core::input::{self, DocInput, TokenInput};
use crate::core::MAX_DIMENSION;
use crate::core::{manifest, wal};
use crate::error::ServiceError;

/// The `grpc_upsert` target: protobuf bytes -> `UpsertRequest` -> documents -> validation -> shard. Returns the
/// number of valid documents, or the error a client would get.
pub fn grpc_upsert(data: &[u8]) -> Result<usize, ServiceError> {
    let req = chamfer_proto::v1::UpsertRequest::decode(data)
        .map_err(|e| ServiceError::Malformed(format!("protobuf: {e}")))?;
    let docs: Vec<DocInput> = req.documents.into_iter().map(crate::grpc::doc_in).collect();
    validate_and_store(&docs)
}

/// The `rest_upsert` target: JSON bytes -> the REST upsert body -> documents -> validation -> shard.
pub fn rest_upsert(data: &[u8]) -> Result<usize, ServiceError> {
    let docs = crate::rest::decode_upsert_body(data)?;
    validate_and_store(&docs)
}

/// Validates against the dimension the first document claims (so that fuzzing gets past the dimension check),
/// with the default limits, then stores the valid documents in a small in-memory shard and reads them back.
fn validate_and_store(docs: &[DocInput]) -> Result<usize, ServiceError> {
    let claimed = match docs.first().map(|d| &d.tokens) {
        Some(TokenInput::Packed { dim, .. }) => *dim,
        Some(TokenInput::Rows(rows)) => rows.first().map_or(0, Vec::len),
        None => 0,
    };
    let dim = if (1..=MAX_DIMENSION).contains(&claimed) {
        claimed
    } else {
        4
    };
    let valid = input::validate_docs(docs, dim, &Limits::default())?;
    let mut params = IndexParams::new(dim);
    params.fde.num_repetitions = 2;
    params.fde.num_simhash_projections = 2;
    params.fde.projection_dimension = 4;
    params.hnsw.prefix_repetitions = 1;
    params.codebook_size = 8;
    let values: Vec<_> = valid.iter().map(|d| d.tokens_f32()).collect();
    let shard_docs = valid
        .iter()
        .zip(&values)
        .map(|(d, v)| {
            Ok(chamfer_index::shard::ShardDoc {
                id: &d.id,
                tokens: chamfer_index::tokens::TokenMatrix::new(v, dim, "document")?,
                payload: &d.metadata,
            })
        })
        .collect::<Result<Vec<_>, IndexError>>()
        .unwrap_or_else(|e| panic!("validated tokens rejected by the engine: {e}"));
    let shard = Shard::build_in_memory(&params, &shard_docs)
        .unwrap_or_else(|e| panic!("validated documents made an unreadable shard: {e}"));
    for (i, d) in valid.iter().enumerate() {
        assert_eq!(shard.id(i), d.id);
        assert_eq!(shard.tokens(i).len(), d.tokens.n_values());
    }
    Ok(valid.len())
}

/// The `wal_replay` target: bytes -> one log file `wal-1` in `dir` -> [`wal::replay`] (after a flushed sequence
/// taken from the second byte) -> on success [`wal::WalWriter::open`], which clears a torn tail. The first byte
/// selects the mode: odd = re-seal the rest (recompute the header and every record CRC, set the capacity to the
/// file's size) so that mutations reach the record decoder and the chain checks behind the checksums. Returns
/// whether replay accepted the log (errors are fine, panics are not).
pub fn wal_replay(dir: &Path, data: &[u8]) -> bool {
    let (mode, flushed, rest) = match data {
        [m, f, rest @ ..] => (*m, u64::from(*f % 4), rest),
        _ => (0, 0, data),
    };
    let bytes = if mode & 1 == 1 {
        wal::reseal(rest)
    } else {
        rest.to_vec()
    };
    let wal_dir = dir.join("wal");
    let _ = std::fs::remove_dir_all(&wal_dir);
    if std::fs::create_dir_all(&wal_dir).is_err()
        || std::fs::write(wal_dir.join("wal-00000000000000000001.log"), &bytes).is_err()
    {
        return false;
    }
    let mut n = 0usize;
    let replayed = wal::replay(&wal_dir, flushed, wal::ControlFile::MayLack, |_, op| {
        n += match op {
            wal::WalOp::Upsert(d) => d.len(),
            wal::WalOp::Delete(ids) => ids.len(),
        };
        Ok(())
    });
    std::hint::black_box(n);
    match replayed {
        Ok(r) => wal::WalWriter::open(&wal_dir, &r, &dir.join("quarantine")).is_ok(),
        Err(_) => false,
    }
}

/// The `manifest_parse` target: bytes -> `manifest.json` and `collection.json` parsers. The first byte selects
/// the mode: odd = re-seal (recompute the CRC of a version-2 envelope's body) so mutations reach the body.
pub fn manifest_parse(data: &[u8]) -> bool {
    let (mode, rest) = data.split_first().map_or((0, data), |(m, r)| (*m, r));
    let p = Path::new("manifest.json");
    let resealed = |b: Option<Vec<u8>>| b.unwrap_or_else(|| rest.to_vec());
    let (m, c) = if mode & 1 == 1 {
        (
            resealed(manifest::reseal::<manifest::Manifest>(rest)),
            resealed(manifest::reseal::<manifest::CollectionConfig>(rest)),
        )
    } else {
        (rest.to_vec(), rest.to_vec())
    };
    let a = manifest::parse_checked::<manifest::Manifest>(p, &m).is_ok();
    let b = manifest::parse_checked::<manifest::CollectionConfig>(p, &c).is_ok();
    a || b
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use chamfer_proto::v1 as pb;
    use serde_json::json;

    use super::*;

    fn corpus(target: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../fuzz/corpus")
            .join(target)
    }

    fn pb_doc(id: &str, tokens: pb::Tokens, metadata: &str) -> pb::Document {
        pb::Document {
            id: id.into(),
            tokens: Some(tokens),
            metadata_json: metadata.into(),
        }
    }

    /// (name, bytes) of the gRPC seeds.
    fn grpc_seeds() -> Vec<(&'static str, Vec<u8>)> {
        let pack = |v: &[f32], dim| chamfer_proto::tokens::pack_f32(v, dim);
        let halves = |v: &[f32], dim| {
            let bits: Vec<u16> = v
                .iter()
                .map(|x| half::f16::from_f32(*x).to_bits())
                .collect();
            chamfer_proto::tokens::pack_f16_bits(&bits, dim)
        };
        let req = |docs: Vec<pb::Document>| {
            pb::UpsertRequest {
                collection: "c".into(),
                documents: docs,
            }
            .encode_to_vec()
        };
        let ok = [0.5f32, -1.0, 0.25, 2.0, 65504.0, -65504.0, 0.0, 1.0];
        vec![
            (
                "valid_f32_two_docs",
                req(vec![
                    pb_doc("a", pack(&ok, 4), r#"{"k":1}"#),
                    pb_doc("b", pack(&ok[..4], 4), ""),
                ]),
            ),
            (
                "valid_f16",
                req(vec![pb_doc("h", halves(&ok, 2), r#"{"tag":"x"}"#)]),
            ),
            (
                "out_of_range_1e5",
                req(vec![pb_doc("big", pack(&[1e5, 0.0, 0.0, 0.0], 4), "")]),
            ),
            (
                "out_of_range_3_4e38",
                req(vec![pb_doc("big", pack(&[0.0, 3.4e38], 2), "")]),
            ),
            (
                "bad_shape",
                req(vec![pb::Document {
                    id: "s".into(),
                    tokens: Some(pb::Tokens {
                        n_tokens: 3,
                        ..pack(&ok, 4)
                    }),
                    metadata_json: String::new(),
                }]),
            ),
        ]
    }

    fn rest_seeds() -> Vec<(&'static str, Vec<u8>)> {
        let body = |v: serde_json::Value| serde_json::to_vec(&v).unwrap();
        vec![
            (
                "valid_two_docs",
                body(json!({"documents": [
                    {"id": "a", "tokens": [[0.5, -1.0, 0.25], [65504.0, -65504.0, 0.0]], "metadata": {"k": 1}},
                    {"id": "b", "tokens": [[1.0, 2.0, 3.0]]}
                ]})),
            ),
            (
                "out_of_range_1e5",
                body(json!({"documents": [{"id": "big", "tokens": [[1e5, 0.0]]}]})),
            ),
            (
                "out_of_range_3_4e38",
                body(json!({"documents": [{"id": "big", "tokens": [[0.0, 3.4e38]]}]})),
            ),
            (
                "ragged",
                body(json!({"documents": [{"id": "r", "tokens": [[1.0, 2.0], [3.0]]}]})),
            ),
            ("not_json", b"{\"documents\": [{\"id\": ".to_vec()),
        ]
    }

    type Target = fn(&[u8]) -> Result<usize, ServiceError>;

    /// The checked-in corpus of `target` as (file name, bytes), sorted; it must hold exactly the seeds
    /// (regenerate it with the ignored test below).
    fn corpus_files(target: &str, seeds: &[(&str, Vec<u8>)]) -> Vec<(String, Vec<u8>)> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(corpus(target))
            .unwrap_or_else(|e| panic!("fuzz/corpus/{target}: {e}"))
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        assert_eq!(files.len(), seeds.len(), "{target}: {files:?}");
        files
            .into_iter()
            .map(|f| {
                let name = f.file_name().unwrap().to_string_lossy().into_owned();
                (name, std::fs::read(&f).unwrap())
            })
            .collect()
    }

    /// Runs `per_seed` deterministic mutations of every seed through `accepted` (a panic fails the test) and
    /// checks that the mutations reached both outcomes.
    fn mutate(
        target: &str,
        seeds: &[(&str, Vec<u8>)],
        per_seed: usize,
        rng: u64,
        accepted: &dyn Fn(&[u8]) -> bool,
    ) {
        let (mut ok, mut rejected) = (0, 0);
        for (i, (_, seed)) in seeds.iter().enumerate() {
            for m in chamfer_index::fuzzing::mutations(seed, per_seed, rng + i as u64) {
                if accepted(&m) {
                    ok += 1;
                } else {
                    rejected += 1;
                }
            }
        }
        assert!(
            ok > 0 && rejected > 0,
            "{target}: ok {ok}, rejected {rejected}"
        );
    }

    /// An upsert target: valid seeds accepted, `out_of_range` ones refused with that code, the rest refused;
    /// then mutations.
    fn check_upsert_target(target: &str, run: Target, seeds: &[(&str, Vec<u8>)]) {
        for (name, data) in corpus_files(target, seeds) {
            let r = run(&data);
            if name.starts_with("valid") {
                assert!(r.is_ok(), "{name}: {r:?}");
            } else if name.starts_with("out_of_range") {
                assert_eq!(r.unwrap_err().status().code, "out_of_range", "{name}");
            } else {
                assert!(r.is_err(), "{name}");
            }
        }
        mutate(target, seeds, 600, 0xf00d, &|m| run(m).is_ok());
    }

    #[test]
    fn grpc_upsert_corpus_and_mutations() {
        check_upsert_target("grpc_upsert", grpc_upsert, &grpc_seeds());
    }

    #[test]
    fn rest_upsert_corpus_and_mutations() {
        check_upsert_target("rest_upsert", rest_upsert, &rest_seeds());
    }

    /// A small version-2 log of three records (capacity trimmed to its size) and a version-1 log.
    fn wal_seeds() -> Vec<(&'static str, Vec<u8>)> {
        let dir = tempfile::tempdir().unwrap();
        let mut w = wal::WalWriter::create(dir.path(), 1).unwrap();
        let t = [0.5f32, -1.0, 2.0, 0.25];
        let up = wal::encode_upsert([("a", 2usize, &t[..], &br#"{"k":1}"#[..])].into_iter());
        let del = wal::encode_delete(&["a".into(), "zz".into()]);
        w.append(&[(1, wal::KIND_UPSERT, &up), (2, wal::KIND_DELETE, &del)])
            .unwrap();
        w.append(&[(3, wal::KIND_UPSERT, &up)]).unwrap();
        let len = w.bytes() as usize;
        drop(w);
        let path = wal::list(dir.path()).unwrap()[0].path.clone();
        let mut v2 = std::fs::read(path).unwrap();
        v2.truncate(len);
        let v2 = wal::reseal(&v2);
        let mut v1 = b"CHMFWAL1".to_vec();
        v1.extend_from_slice(&1u32.to_le_bytes());
        v1.extend_from_slice(&0u32.to_le_bytes());
        v1.extend_from_slice(&v2[40..]);
        let with = |mode: u8, flushed: u8, b: &[u8]| [&[mode, flushed][..], b].concat();
        let mut flipped = v2.clone();
        flipped[60] ^= 0x20;
        let mut torn = v2.clone();
        torn.extend_from_slice(&[30, 0, 0, 0, 9, 9]);
        vec![
            ("valid_v2", with(0, 0, &v2)),
            ("valid_v2_flushed", with(0, 2, &v2)),
            ("valid_v1", with(1, 0, &v1)),
            ("valid_v2_torn_tail", with(1, 0, &torn)),
            ("damaged_flipped", with(0, 0, &flipped)),
            ("damaged_truncated", with(0, 0, &v2[..v2.len() - 30])),
        ]
    }

    fn manifest_seeds() -> Vec<(&'static str, Vec<u8>)> {
        let dir = tempfile::tempdir().unwrap();
        let m = manifest::Manifest {
            format_version: manifest::MANIFEST_VERSION,
            flushed_seq: 7,
            next_segment_id: 3,
            segments: vec![manifest::SegmentEntry {
                id: 2,
                docs: 4,
                deleted: vec![1],
                tombstones: None,
            }],
            ..Default::default()
        };
        let c = manifest::CollectionConfig {
            format_version: manifest::MANIFEST_VERSION,
            name: "c".into(),
            dimension: 4,
            params: IndexParams::new(4),
        };
        let mp = dir.path().join("m.json");
        let cp = dir.path().join("c.json");
        manifest::write_checked(&mp, &m).unwrap();
        manifest::write_checked(&cp, &c).unwrap();
        let mb = std::fs::read(&mp).unwrap();
        let cb = std::fs::read(&cp).unwrap();
        let v1 = serde_json::to_vec(&manifest::Manifest {
            format_version: 1,
            ..m.clone()
        })
        .unwrap();
        let edited = String::from_utf8(mb.clone())
            .unwrap()
            .replace("\"flushed_seq\": 7", "\"flushed_seq\": 70")
            .into_bytes();
        let with = |mode: u8, b: &[u8]| [&[mode][..], b].concat();
        vec![
            ("valid_manifest", with(0, &mb)),
            ("valid_config", with(0, &cb)),
            ("valid_manifest_v1", with(0, &v1)),
            ("damaged_edited", with(0, &edited)),
            ("damaged_truncated", with(0, &mb[..mb.len() / 2])),
        ]
    }

    /// The corpus replays (valid seeds accepted, damaged ones refused) and mutations never panic.
    fn check_bool_target(target: &str, run: &dyn Fn(&[u8]) -> bool, seeds: &[(&str, Vec<u8>)]) {
        for (name, data) in corpus_files(target, seeds) {
            assert_eq!(run(&data), name.starts_with("valid"), "{target}/{name}");
        }
        mutate(target, seeds, 400, 0xbeef, run);
    }

    #[test]
    fn wal_replay_corpus_and_mutations() {
        let dir = tempfile::tempdir().unwrap();
        check_bool_target("wal_replay", &|d| wal_replay(dir.path(), d), &wal_seeds());
    }

    #[test]
    fn manifest_parse_corpus_and_mutations() {
        check_bool_target("manifest_parse", &manifest_parse, &manifest_seeds());
    }

    /// Writes the seed corpus: `cargo test -p chamfer-server --lib fuzzing -- --ignored`.
    #[test]
    #[ignore]
    fn write_seed_corpus() {
        for (target, seeds) in [
            ("grpc_upsert", grpc_seeds()),
            ("rest_upsert", rest_seeds()),
            ("wal_replay", wal_seeds()),
            ("manifest_parse", manifest_seeds()),
        ] {
            let dir = corpus(target);
            std::fs::create_dir_all(&dir).unwrap();
            for (name, bytes) in seeds {
                std::fs::write(dir.join(name), bytes).unwrap();
            }
        }
    }
}
