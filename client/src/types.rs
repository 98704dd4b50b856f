//! Request and result types: documents, queries, filters, hits.
use chamfer_proto::tokens::{pack_f16_bits, pack_f32};
use chamfer_proto::v1 as pb;
use serde_json::Value;

use crate::Error;

/// A matrix of token vectors (`n_tokens x dim`, row-major), packed for the wire.
#[derive(Clone, Debug, PartialEq)]
pub struct Vectors(pub(crate) pb::Tokens);

impl Vectors {
    /// Packs `data` (row-major, `data.len()` a multiple of `dim`) as little-endian f32.
    ///
    /// # Panics
    /// If `dim == 0` or `data.len()` is not a multiple of `dim`.
    pub fn f32(data: &[f32], dim: usize) -> Vectors {
        Vectors(pack_f32(data, dim))
    }

    /// Packs `data` as f16 (half the bytes; values are rounded to the nearest f16).
    ///
    /// # Panics
    /// If `dim == 0` or `data.len()` is not a multiple of `dim`.
    pub fn f16(data: &[f32], dim: usize) -> Vectors {
        let bits: Vec<u16> = data
            .iter()
            .map(|v| half::f16::from_f32(*v).to_bits())
            .collect();
        Vectors(pack_f16_bits(&bits, dim))
    }

    /// Packs f16 values given as their bit patterns (row-major, e.g. `half::f16::to_bits` of a float16 file's
    /// values) as they are: no conversion, no rounding, two bytes a value.
    ///
    /// # Panics
    /// If `dim == 0` or `bits.len()` is not a multiple of `dim`.
    pub fn f16_bits(bits: &[u16], dim: usize) -> Vectors {
        Vectors(pack_f16_bits(bits, dim))
    }

    /// f16 when every value is exactly representable in f16 (e.g. embeddings stored as float16), else f32:
    /// the smallest encoding that loses nothing.
    pub fn lossless(data: &[f32], dim: usize) -> Vectors {
        let exact = data
            .iter()
            .all(|v| half::f16::from_f32(*v).to_f32().to_bits() == v.to_bits());
        if exact {
            Vectors::f16(data, dim)
        } else {
            Vectors::f32(data, dim)
        }
    }

    /// Rows of equal length (each a token vector).
    pub fn from_rows(rows: &[Vec<f32>]) -> Result<Vectors, Error> {
        let dim = rows.first().map_or(0, Vec::len);
        if dim == 0 {
            return Err(Error::InvalidInput(
                "no token vectors (or empty ones)".into(),
            ));
        }
        if let Some(i) = rows.iter().position(|r| r.len() != dim) {
            return Err(Error::InvalidInput(format!(
                "token vector {i} has {} values, the first has {dim}",
                rows[i].len()
            )));
        }
        Ok(Vectors::f32(&rows.concat(), dim))
    }

    /// Wraps an already packed message.
    pub fn from_proto(t: pb::Tokens) -> Vectors {
        Vectors(t)
    }

    /// The packed message.
    pub fn into_proto(self) -> pb::Tokens {
        self.0
    }

    /// Bytes of the packed values (what travels over gRPC).
    pub fn byte_len(&self) -> usize {
        self.0.data.len()
    }

    /// Number of token vectors.
    pub fn n_tokens(&self) -> usize {
        self.0.n_tokens as usize
    }

    /// Dimension of each vector.
    pub fn dim(&self) -> usize {
        self.0.dim as usize
    }

    /// Unpacks to f32 values, row-major (`None` if the bytes do not match the shape or the dtype is unknown).
    pub fn to_f32(&self) -> Option<Vec<f32>> {
        let t = &self.0;
        let n = t.n_tokens as usize * t.dim as usize;
        match pb::Dtype::try_from(t.dtype).ok()? {
            pb::Dtype::F32 if t.data.len() == n * 4 => Some(
                t.data
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect(),
            ),
            pb::Dtype::F16 if t.data.len() == n * 2 => Some(
                t.data
                    .chunks_exact(2)
                    .map(|b| half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32())
                    .collect(),
            ),
            _ => None,
        }
    }
}

/// A document to upsert: external id, token vectors, optional JSON-object metadata.
#[derive(Clone, Debug, PartialEq)]
pub struct Document {
    /// External document id (unique within the collection; upserting it again replaces the document).
    pub id: String,
    /// The token vectors (one row per token, of the collection's dimension).
    pub vectors: Vectors,
    /// A JSON object, or `None`.
    pub metadata: Option<Value>,
}

impl Document {
    /// A document whose `data` (row-major, dimension `dim`) travels as f32.
    pub fn new(id: impl Into<String>, data: &[f32], dim: usize) -> Document {
        Document::from_vectors(id, Vectors::f32(data, dim))
    }

    /// A document with already packed vectors (e.g. [`Vectors::f16`] or [`Vectors::lossless`]).
    pub fn from_vectors(id: impl Into<String>, vectors: Vectors) -> Document {
        Document {
            id: id.into(),
            vectors,
            metadata: None,
        }
    }

    /// Sets the metadata (a JSON object; filters match its fields).
    pub fn with_metadata(mut self, metadata: Value) -> Document {
        self.metadata = Some(metadata);
        self
    }

    /// The wire message. Metadata is sent as it is (the server validates it: it must be a JSON object).
    pub fn into_proto(self) -> pb::Document {
        let metadata_json = match self.metadata {
            None | Some(Value::Null) => String::new(),
            Some(v) => v.to_string(),
        };
        pb::Document {
            id: self.id,
            tokens: Some(self.vectors.0),
            metadata_json,
        }
    }
}

/// A document as the server returned it (from `get`).
#[derive(Clone, Debug, PartialEq)]
pub struct StoredDocument {
    /// External document id.
    pub id: String,
    /// Present when asked for (`with_tokens`).
    pub vectors: Option<Vectors>,
    /// The stored JSON metadata, or `None` when the document has none.
    pub metadata: Option<Value>,
}

impl StoredDocument {
    pub(crate) fn from_proto(d: pb::Document) -> StoredDocument {
        StoredDocument {
            id: d.id,
            vectors: d.tokens.map(Vectors),
            metadata: parse_metadata(&d.metadata_json),
        }
    }
}

pub(crate) fn parse_metadata(s: &str) -> Option<Value> {
    if s.is_empty() {
        None
    } else {
        serde_json::from_str(s).ok()
    }
}

/// A metadata filter, applied during candidate search (k results come back whenever k documents pass):
/// every condition must hold and, if ids are given, the id must be among them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Filter(pub(crate) pb::Filter);

impl Filter {
    /// An empty filter: every document passes.
    pub fn new() -> Filter {
        Filter::default()
    }

    /// Field `key` (dots descend into objects) equals `value`.
    pub fn eq(self, key: impl Into<String>, value: impl Into<Value>) -> Filter {
        self.any_of(key, [value])
    }

    /// Field `key` equals one of `values`.
    pub fn any_of<V: Into<Value>>(
        mut self,
        key: impl Into<String>,
        values: impl IntoIterator<Item = V>,
    ) -> Filter {
        let any_of = values
            .into_iter()
            .map(|v| pb::Value {
                kind: scalar(v.into()),
            })
            .collect();
        self.0.must.push(pb::FieldCondition {
            key: key.into(),
            any_of,
            equals: None,
        });
        self
    }

    /// Only these ids pass.
    pub fn ids<S: Into<String>>(mut self, ids: impl IntoIterator<Item = S>) -> Filter {
        self.0.ids.extend(ids.into_iter().map(Into::into));
        self
    }

    /// True when it restricts nothing.
    pub fn is_empty(&self) -> bool {
        self.0.must.is_empty() && self.0.ids.is_empty()
    }

    /// The wire message.
    pub fn into_proto(self) -> pb::Filter {
        self.0
    }
}

/// A JSON scalar as a filter value (arrays, objects and null become an unset value, which the server rejects).
fn scalar(v: Value) -> Option<pb::value::Kind> {
    use pb::value::Kind;
    match v {
        Value::String(s) => Some(Kind::StringValue(s)),
        Value::Bool(b) => Some(Kind::BoolValue(b)),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Some(Kind::IntValue(i)),
            None => n.as_f64().map(Kind::DoubleValue),
        },
        _ => None,
    }
}

/// A search: the query's token vectors, `k`, knobs, filter. Unset knobs take the server's defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct Query(pub(crate) pb::SearchRequest);

impl Query {
    /// A query whose `data` (row-major, dimension `dim`) travels as f32; k = 10.
    pub fn new(data: &[f32], dim: usize) -> Query {
        Query::from_vectors(Vectors::f32(data, dim))
    }

    /// A query with already packed vectors; k = 10.
    pub fn from_vectors(vectors: Vectors) -> Query {
        Query(pb::SearchRequest {
            query: Some(vectors.0),
            k: 10,
            ..Default::default()
        })
    }

    /// Results wanted.
    pub fn k(mut self, k: u32) -> Query {
        self.0.k = k;
        self
    }
    /// HNSW beam width.
    pub fn ef(mut self, ef: u32) -> Query {
        self.0.ef = Some(ef);
        self
    }
    /// Candidates taken from the first stage (the graph, or the inverted file).
    pub fn candidates(mut self, n: u32) -> Query {
        self.0.candidates = Some(n);
        self
    }
    /// Candidates re-ranked with exact Chamfer.
    pub fn rerank(mut self, n: u32) -> Query {
        self.0.rerank = Some(n);
        self
    }
    /// Centroids probed per query token by the inverted-file plan (the default plan's main recall knob).
    pub fn nprobe(mut self, n: u32) -> Query {
        self.0.nprobe = Some(n);
        self
    }
    /// Matryoshka prefix (FDE repetitions) for candidate search.
    pub fn prefix_repetitions(mut self, r: u32) -> Query {
        self.0.prefix_repetitions = Some(r);
        self
    }
    /// Exhaustive exact Chamfer over every document (slow, exact).
    pub fn exact(mut self, exact: bool) -> Query {
        self.0.exact = exact;
        self
    }
    /// Every knob at once, from a [`pb::SearchKnobs`] (e.g. a previous search's echo): `k`, the optional knobs
    /// (unset ones stay unset: the server's defaults), `exact` and `with_metadata`.
    pub fn knobs(mut self, k: pb::SearchKnobs) -> Query {
        let r = &mut self.0;
        r.k = k.k;
        r.ef = k.ef;
        r.candidates = k.candidates;
        r.rerank = k.rerank;
        r.prefix_repetitions = k.prefix_repetitions;
        r.nprobe = k.nprobe;
        r.exact = k.exact;
        r.with_metadata = k.with_metadata;
        self
    }
    /// Only documents passing `filter`.
    pub fn filter(mut self, filter: Filter) -> Query {
        self.0.filter = (!filter.is_empty()).then_some(filter.0);
        self
    }
    /// Return each hit's metadata.
    pub fn with_metadata(mut self) -> Query {
        self.0.with_metadata = true;
        self
    }

    /// The wire message (its `collection` is filled in by the client).
    pub fn into_proto(self) -> pb::SearchRequest {
        self.0
    }
}

/// One search result.
#[derive(Clone, Debug, PartialEq)]
pub struct Hit {
    /// The document's external id.
    pub id: String,
    /// Chamfer score: sum over query tokens of the best dot product with the document's tokens.
    pub score: f32,
    /// Set when the query asked for it ([`Query::with_metadata`]) and the document has metadata.
    pub metadata: Option<Value>,
}

impl Hit {
    pub(crate) fn from_proto(h: pb::ScoredDocument) -> Hit {
        Hit {
            metadata: parse_metadata(&h.metadata_json),
            id: h.id,
            score: h.score,
        }
    }
}

/// A search's answer: the hits, best first, and the knobs the server says it ran with.
#[derive(Clone, Debug, PartialEq)]
pub struct SearchResult {
    /// Best first.
    pub hits: Vec<Hit>,
    /// The knobs as the server received them (unset: the engine's default); `None` from a server that does not
    /// echo them.
    pub knobs: Option<pb::SearchKnobs>,
}

impl SearchResult {
    pub(crate) fn from_proto(r: pb::SearchResponse) -> SearchResult {
        SearchResult {
            hits: r.hits.into_iter().map(Hit::from_proto).collect(),
            knobs: r.knobs,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectors_round_trip_and_pick_the_lossless_encoding() {
        let exact = [0.5f32, -1.0, 0.25, 2.0];
        let v = Vectors::lossless(&exact, 2);
        assert_eq!(v.0.dtype, pb::Dtype::F16 as i32);
        assert_eq!(v.to_f32().unwrap(), exact);
        let inexact = [0.1f32, 0.2];
        let v = Vectors::lossless(&inexact, 2);
        assert_eq!(v.0.dtype, pb::Dtype::F32 as i32);
        assert_eq!(v.to_f32().unwrap(), inexact);
        let bits: Vec<u16> = exact
            .iter()
            .map(|v| half::f16::from_f32(*v).to_bits())
            .collect();
        assert_eq!(Vectors::f16_bits(&bits, 2), Vectors::f16(&exact, 2));
        assert!(Vectors::from_rows(&[vec![1.0, 2.0], vec![3.0]]).is_err());
        assert_eq!(
            Vectors::from_rows(&[vec![1.0, 2.0], vec![3.0, 4.0]])
                .unwrap()
                .n_tokens(),
            2
        );
    }

    #[test]
    fn filters_and_metadata_become_wire_messages() {
        let f = Filter::new()
            .eq("section", "1")
            .any_of("n", [1, 2])
            .ids(["a"]);
        assert_eq!(f.0.must.len(), 2);
        assert_eq!(
            f.0.must[1].any_of[0].kind,
            Some(pb::value::Kind::IntValue(1))
        );
        let q = Query::new(&[1.0, 0.0], 2).k(3).filter(Filter::new());
        assert!(q.0.filter.is_none());
        let ok = Document::new("x", &[1.0], 1)
            .with_metadata(serde_json::json!({"a": 1}))
            .into_proto();
        assert_eq!(ok.metadata_json, r#"{"a":1}"#);
    }
}
