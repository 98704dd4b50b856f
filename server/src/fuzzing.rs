//! Fuzzing entry points (not part of the public API). The `fuzz/` crate's `grpc_upsert` and `rest_upsert`
//! targets are thin wrappers around these functions, and the tests below replay the checked-in seed corpus and
//! deterministic mutations of it through the very same functions (the CI fuzz smoke).
//!
//! Each runs the real decode path of an upsert (protobuf decode + the gRPC adapter's conversion, or the REST
//! body type + the REST adapter's conversion), then THE validation ([`input::validate_docs`]), then writes the
//! validated documents into an in-memory shard and re-reads it: whatever passes validation must make a
//! readable shard. Every function returns normally for any input; a panic is a bug.
use chamfer_index::shard::{IndexParams, Shard, ShardDoc};
use chamfer_index::tokens::TokenMatrix;
use chamfer_index::IndexError;
use prost::Message;

use crate::config::Limits;
use crate::core::input::{self, DocInput, TokenInput};
use crate::core::MAX_DIMENSION;
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
    let shard_docs = valid
        .iter()
        .map(|d| {
            Ok(ShardDoc {
                id: &d.id,
                tokens: TokenMatrix::new(&d.tokens, dim, "document")?,
                payload: &d.metadata,
            })
        })
        .collect::<Result<Vec<_>, IndexError>>()
        .unwrap_or_else(|e| panic!("validated tokens rejected by the engine: {e}"));
    let shard = Shard::build_in_memory(&params, &shard_docs)
        .unwrap_or_else(|e| panic!("validated documents made an unreadable shard: {e}"));
    for (i, d) in valid.iter().enumerate() {
        assert_eq!(shard.id(i), d.id);
        assert_eq!(shard.tokens(i).len(), d.tokens.len());
    }
    Ok(valid.len())
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

    fn replay(target: &str, run: Target, seeds: &[(&str, Vec<u8>)]) {
        // The checked-in corpus is the seeds (regenerate with the ignored test below).
        let mut files: Vec<PathBuf> = std::fs::read_dir(corpus(target))
            .unwrap_or_else(|e| panic!("fuzz/corpus/{target}: {e}"))
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        assert_eq!(files.len(), seeds.len(), "{target}: {files:?}");
        for f in files {
            let data = std::fs::read(&f).unwrap();
            let name = f.file_name().unwrap().to_string_lossy().into_owned();
            let r = run(&data);
            if name.starts_with("valid") {
                assert!(r.is_ok(), "{name}: {r:?}");
            } else if name.starts_with("out_of_range") {
                assert_eq!(r.unwrap_err().status().code, "out_of_range", "{name}");
            } else {
                assert!(r.is_err(), "{name}");
            }
        }
    }

    fn mutate(run: Target, seeds: &[(&str, Vec<u8>)]) {
        let (mut ok, mut rejected) = (0, 0);
        for (i, (_, seed)) in seeds.iter().enumerate() {
            for m in chamfer_index::fuzzing::mutations(seed, 600, 0xf00d + i as u64) {
                match run(&m) {
                    Ok(_) => ok += 1,
                    Err(_) => rejected += 1,
                }
            }
        }
        assert!(ok > 0 && rejected > 0, "ok {ok}, rejected {rejected}");
    }

    #[test]
    fn grpc_upsert_corpus_and_mutations() {
        let seeds = grpc_seeds();
        replay("grpc_upsert", grpc_upsert, &seeds);
        mutate(grpc_upsert, &seeds);
    }

    #[test]
    fn rest_upsert_corpus_and_mutations() {
        let seeds = rest_seeds();
        replay("rest_upsert", rest_upsert, &seeds);
        mutate(rest_upsert, &seeds);
    }

    /// Writes the seed corpus: `cargo test -p chamfer-server --lib fuzzing -- --ignored`.
    #[test]
    #[ignore]
    fn write_seed_corpus() {
        for (target, seeds) in [("grpc_upsert", grpc_seeds()), ("rest_upsert", rest_seeds())] {
            let dir = corpus(target);
            std::fs::create_dir_all(&dir).unwrap();
            for (name, bytes) in seeds {
                std::fs::write(dir.join(name), bytes).unwrap();
            }
        }
    }
}
