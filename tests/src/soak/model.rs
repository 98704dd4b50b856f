//! The model of acknowledged state: for every id ever written, its last acknowledged state (a document
//! version, or absent after an acknowledged delete) plus the states of writes whose outcome is unknown (in
//! flight when the server died). Verification compares what the server returns with the model.
use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;

use serde_json::Value;

use super::rng::Rng;

/// One version of a document: its exact tokens (row-major, f16-representable f32) and metadata.
#[derive(Debug, PartialEq)]
pub struct Version {
    pub tokens: Vec<f32>,
    pub metadata: Value,
}

impl Version {
    pub fn n_tokens(&self, dim: usize) -> usize {
        self.tokens.len() / dim
    }
}

/// The state of an id: a version or absent.
pub type State = Option<Arc<Version>>;

/// What the model knows about one id.
#[derive(Debug, Default)]
pub struct Entry {
    /// The last acknowledged state (`None`: never acknowledged, or deleted).
    pub acked: State,
    /// True when the last acknowledged write was a delete.
    pub deleted: bool,
    /// States written after `acked` whose outcome is unknown; any of them may be what the server has.
    pub unknown: Vec<State>,
}

impl Entry {
    /// Whether `observed` is an allowed state.
    pub fn allows(&self, observed: Option<&Version>) -> bool {
        let same = |s: &State| match (s, observed) {
            (None, None) => true,
            (Some(a), Some(b)) => **a == *b,
            _ => false,
        };
        same(&self.acked) || self.unknown.iter().any(same)
    }
}

/// Where the tokens come from.
pub enum TokenSource {
    /// Random multiples of 1/256 in [-4, 4] (exact in f16), 1..=`max_tokens` rows.
    Synthetic { dim: usize, max_tokens: usize },
    /// Rows of the documents of a data set folder, rounded to f16.
    Dataset {
        dim: usize,
        /// Per document, its tokens (already f16-exact).
        docs: Vec<Vec<f32>>,
        max_tokens: usize,
    },
}

impl TokenSource {
    pub fn dim(&self) -> usize {
        match self {
            TokenSource::Synthetic { dim, .. } | TokenSource::Dataset { dim, .. } => *dim,
        }
    }

    /// Fresh tokens for a new version.
    pub fn tokens(&self, rng: &mut Rng) -> Vec<f32> {
        match self {
            TokenSource::Synthetic { dim, max_tokens } => {
                let n = rng.range(1, *max_tokens as u64) as usize;
                (0..n * dim)
                    .map(|_| (rng.range(0, 2048) as f32 - 1024.0) / 256.0)
                    .collect()
            }
            TokenSource::Dataset {
                dim,
                docs,
                max_tokens,
            } => {
                let d = rng.pick(docs);
                let rows = d.len() / dim;
                let n = rng.range(1, rows.min(*max_tokens) as u64) as usize;
                let start = rng.below((rows - n) as u64 + 1) as usize;
                d[start * dim..(start + n) * dim].to_vec()
            }
        }
    }
}

/// A fresh version: tokens from `src`, metadata naming its writer and a counter.
pub fn new_version(src: &TokenSource, rng: &mut Rng, writer: usize, serial: u64) -> Version {
    let tags = ["red", "green", "blue"];
    let metadata = if rng.chance(0.1) {
        serde_json::json!({})
    } else {
        serde_json::json!({"writer": writer, "serial": serial, "tag": rng.pick(&tags), "n": rng.below(1000)})
    };
    Version {
        tokens: src.tokens(rng),
        metadata,
    }
}

/// Appends `{"id": .., "tokens": [[..]], "metadata": ..}` to `out`.
pub fn doc_json(out: &mut String, id: &str, v: &Version, dim: usize) {
    let _ = write!(out, "{{\"id\":{},\"tokens\":[", Value::from(id));
    for (r, row) in v.tokens.chunks(dim).enumerate() {
        if r > 0 {
            out.push(',');
        }
        out.push('[');
        for (i, x) in row.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            // Display of f32 prints the shortest decimal that reads back as the same f32.
            let _ = write!(out, "{x}");
        }
        out.push(']');
    }
    let _ = write!(out, "],\"metadata\":{}}}", v.metadata);
}

/// Parses one document of a `documents/get` answer (with tokens).
pub fn parse_doc(d: &Value) -> Option<(String, Version)> {
    let id = d.get("id")?.as_str()?.to_string();
    let mut tokens = Vec::new();
    for row in d.get("tokens")?.as_array()? {
        for x in row.as_array()? {
            tokens.push(x.as_f64()? as f32);
        }
    }
    let metadata = d.get("metadata").cloned().unwrap_or(Value::Null);
    Some((id, Version { tokens, metadata }))
}

/// The model: every id ever written, with its entry.
#[derive(Default)]
pub struct Model {
    pub entries: HashMap<String, Entry>,
    /// Ids in creation order (for random picks).
    pub ids: Vec<String>,
}

impl Model {
    pub fn entry(&mut self, id: &str) -> &mut Entry {
        if !self.entries.contains_key(id) {
            self.ids.push(id.to_string());
        }
        self.entries.entry(id.to_string()).or_default()
    }

    /// An acknowledged upsert.
    pub fn ack_upsert(&mut self, id: &str, v: Arc<Version>) {
        let e = self.entry(id);
        e.acked = Some(v);
        e.deleted = false;
        e.unknown.clear();
    }

    /// An acknowledged delete.
    pub fn ack_delete(&mut self, id: &str) {
        let e = self.entry(id);
        e.acked = None;
        e.deleted = true;
        e.unknown.clear();
    }

    /// A write whose outcome is unknown.
    pub fn unknown(&mut self, id: &str, s: State) {
        self.entry(id).unknown.push(s);
    }

    /// Ids with an acknowledged live version.
    pub fn live(&self) -> usize {
        self.entries.values().filter(|e| e.acked.is_some()).count()
    }

    /// Ids whose last acknowledged write was a delete.
    pub fn deleted(&self) -> usize {
        self.entries.values().filter(|e| e.deleted).count()
    }
}

/// Chamfer (MaxSim) similarity of query rows `q` to document rows `d`, in f64.
pub fn chamfer(q: &[f32], d: &[f32], dim: usize) -> f64 {
    q.chunks(dim)
        .map(|qr| {
            d.chunks(dim)
                .map(|dr| {
                    qr.iter()
                        .zip(dr)
                        .map(|(a, b)| *a as f64 * *b as f64)
                        .sum::<f64>()
                })
                .fold(f64::NEG_INFINITY, f64::max)
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(x: f32) -> Arc<Version> {
        Arc::new(Version {
            tokens: vec![x, 0.5],
            metadata: serde_json::json!({"a": 1}),
        })
    }

    #[test]
    fn allowed_states_are_the_acknowledged_one_and_the_unknown_ones() {
        let mut m = Model::default();
        m.ack_upsert("a", v(1.0));
        m.unknown("a", Some(v(2.0)));
        m.unknown("a", None);
        let e = &m.entries["a"];
        assert!(e.allows(Some(&v(1.0))) && e.allows(Some(&v(2.0))) && e.allows(None));
        assert!(!e.allows(Some(&v(3.0))));
        m.ack_delete("b");
        assert!(m.entries["b"].allows(None) && !m.entries["b"].allows(Some(&v(1.0))));
        assert_eq!((m.live(), m.deleted(), m.ids.len()), (1, 1, 2));
    }

    #[test]
    fn synthetic_tokens_are_exact_in_f16_and_survive_json() {
        let src = TokenSource::Synthetic {
            dim: 8,
            max_tokens: 5,
        };
        let mut rng = Rng::new(1);
        for _ in 0..50 {
            let ver = new_version(&src, &mut rng, 0, 0);
            assert!(ver.tokens.len().is_multiple_of(8) && !ver.tokens.is_empty());
            for x in &ver.tokens {
                assert_eq!(half::f16::from_f32(*x).to_f32().to_bits(), x.to_bits());
            }
            let mut s = String::new();
            doc_json(&mut s, "id\"1", &ver, 8);
            let (id, back) = parse_doc(&serde_json::from_str(&s).unwrap()).unwrap();
            assert_eq!((id.as_str(), &back), ("id\"1", &ver));
        }
    }

    #[test]
    fn chamfer_is_the_sum_of_best_dot_products() {
        let q = [1.0, 0.0, 0.0, 1.0];
        let d = [2.0, 0.0, 0.0, 3.0, 1.0, 1.0];
        assert_eq!(chamfer(&q, &d, 2), 2.0 + 3.0);
    }
}
