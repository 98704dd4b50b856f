//! Record bodies: the upsert and delete operations a record carries, encoded and decoded.
use chamfer_index::tokens::{TokenValues, Tokens};

use super::format::{KIND_DELETE, KIND_UPSERT, KIND_UPSERT_F16};

/// One document of an upsert record.
#[derive(Clone, Debug, PartialEq)]
pub struct WalDoc {
    /// External document id.
    pub id: String,
    /// Token dimension.
    pub dim: usize,
    /// Token values, row-major (`n_tokens * dim`), in the width the record stored.
    pub tokens: WalTokens,
    /// Compact JSON metadata, or empty for none.
    pub metadata: Vec<u8>,
}

/// A document's token values as its record stored them: f16 records stay f16, so that replay lays them out
/// without a round trip through f32 (every f16 is exactly an f32, so nothing depends on the width).
#[derive(Clone, Debug, PartialEq)]
pub enum WalTokens {
    /// From an f32 record ([`KIND_UPSERT`]).
    F32(Vec<f32>),
    /// From an f16 record ([`KIND_UPSERT_F16`]).
    F16(Vec<half::f16>),
}

impl WalTokens {
    /// The values as f32 (exact for both widths).
    pub fn to_f32(&self) -> std::borrow::Cow<'_, [f32]> {
        use half::slice::HalfFloatSliceExt;
        match self {
            WalTokens::F32(v) => std::borrow::Cow::Borrowed(v),
            WalTokens::F16(v) => std::borrow::Cow::Owned(v.to_f32_vec()),
        }
    }
}

/// A decoded record body.
#[derive(Clone, Debug, PartialEq)]
pub enum WalOp {
    /// Documents inserted or replaced.
    Upsert(Vec<WalDoc>),
    /// Ids deleted.
    Delete(Vec<String>),
}

/// Encodes an upsert body from borrowed f32 documents `(id, dim, tokens, metadata)`, tokens as f32
/// ([`KIND_UPSERT`]): records as builds before version 3 wrote them (tests and tools).
pub fn encode_upsert<'a>(
    docs: impl ExactSizeIterator<Item = (&'a str, usize, &'a [f32], &'a [u8])>,
) -> Vec<u8> {
    encode_upsert_as(
        docs.map(|(id, dim, t, m)| (id, dim, t.len(), t, m)),
        4,
        |tokens: &[f32], out| {
            put_f32(tokens, out);
            true
        },
    )
    .unwrap_or_default()
}

/// Encodes an upsert body of documents `(id, tokens, metadata)` whose tokens carry their dtype, as compactly
/// as is lossless: f16 ([`KIND_UPSERT_F16`]) when every value of the batch is an f16 (f16 documents are copied
/// as the client's bits, never widened; f32 ones are narrowed when every value is exactly an f16), else f32
/// ([`KIND_UPSERT`]). Returns the record kind and the body.
pub fn encode_upsert_tokens<'a>(
    docs: impl ExactSizeIterator<Item = (&'a str, &'a Tokens, &'a [u8])> + Clone,
) -> (u8, Vec<u8>) {
    use half::slice::HalfFloatSliceExt;
    let (mut halves, mut back) = (Vec::new(), Vec::new());
    // One pass converts and checks: the first f32 value that is not exactly an f16 abandons it for f32.
    let f16_body = encode_upsert_as(
        docs.clone()
            .map(|(id, t, m)| (id, t.dim(), t.n_values(), t, m)),
        2,
        |tokens: &Tokens, out| match tokens.values() {
            TokenValues::F16(v) => {
                for h in v {
                    out.extend_from_slice(&h.to_bits().to_le_bytes());
                }
                true
            }
            TokenValues::F32(v) => {
                halves.clear();
                halves.resize(v.len(), half::f16::ZERO);
                halves.convert_from_f32_slice(v);
                back.clear();
                back.resize(v.len(), 0f32);
                halves.convert_to_f32_slice(&mut back);
                if back.iter().zip(v).any(|(a, b)| a.to_bits() != b.to_bits()) {
                    return false;
                }
                for h in &halves {
                    out.extend_from_slice(&h.to_bits().to_le_bytes());
                }
                true
            }
        },
    );
    if let Some(body) = f16_body {
        return (KIND_UPSERT_F16, body);
    }
    // Some value is not an f16: the whole batch is logged as f32 (f16 documents of it widened one at a time).
    let mut wide = Vec::new();
    let body = encode_upsert_as(
        docs.map(|(id, t, m)| (id, t.dim(), t.n_values(), t, m)),
        4,
        |tokens: &Tokens, out| {
            match tokens.values() {
                TokenValues::F32(v) => put_f32(v, out),
                TokenValues::F16(_) => {
                    wide.clear();
                    tokens.extend_f32(&mut wide);
                    put_f32(&wide, out);
                }
            }
            true
        },
    );
    (KIND_UPSERT, body.unwrap_or_default())
}

fn put_f32(values: &[f32], out: &mut Vec<u8>) {
    for v in values {
        out.extend_from_slice(&v.to_le_bytes());
    }
}

/// The upsert layout of documents `(id, dim, n_values, tokens, metadata)` with `put` writing each document's
/// tokens (`width` bytes per value); None as soon as `put` refuses a document.
pub(super) fn encode_upsert_as<'a, T>(
    docs: impl ExactSizeIterator<Item = (&'a str, usize, usize, T, &'a [u8])>,
    width: usize,
    mut put: impl FnMut(T, &mut Vec<u8>) -> bool,
) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    out.extend_from_slice(&(docs.len() as u32).to_le_bytes());
    for (id, dim, n_values, tokens, meta) in docs {
        put_bytes(&mut out, id.as_bytes());
        out.extend_from_slice(&(dim as u32).to_le_bytes());
        out.extend_from_slice(&((n_values / dim.max(1)) as u32).to_le_bytes());
        out.reserve(n_values * width + meta.len() + 4);
        if !put(tokens, &mut out) {
            return None;
        }
        put_bytes(&mut out, meta);
    }
    Some(out)
}

/// Encodes a delete body.
pub fn encode_delete(ids: &[String]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(ids.len() as u32).to_le_bytes());
    for id in ids {
        put_bytes(&mut out, id.as_bytes());
    }
    out
}

pub(super) fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

/// Why a record body (whose CRC matched) does not decode: corruption, reported with the file and offset.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// The body ends before a declared field.
    #[error("record body is truncated")]
    Truncated,
    /// A document's token count times its dimension overflows.
    #[error("token count times dimension overflows")]
    Overflow,
    /// An id that is not valid UTF-8.
    #[error("id is not UTF-8")]
    NotUtf8,
    /// A kind other than upsert, delete or seal.
    #[error("unknown record kind {0}")]
    UnknownKind(u8),
    /// Bytes left over after the body decoded.
    #[error("{0} trailing bytes in a record")]
    Trailing(usize),
}

/// Decodes a record body (whose CRC already matched: a failure here is corruption).
pub fn decode(kind: u8, body: &[u8]) -> Result<WalOp, RecordError> {
    let mut r = Cursor { b: body, pos: 0 };
    let n = r.u32()? as usize;
    let op = match kind {
        KIND_UPSERT | KIND_UPSERT_F16 => {
            let width = if kind == KIND_UPSERT { 4 } else { 2 };
            let mut docs = Vec::with_capacity(n.min(body.len() / 16 + 1));
            for _ in 0..n {
                let id = r.string()?;
                let dim = r.u32()? as usize;
                let n_tokens = r.u32()? as usize;
                let raw = r.take(
                    n_tokens
                        .checked_mul(dim)
                        .and_then(|v| v.checked_mul(width))
                        .ok_or(RecordError::Overflow)?,
                )?;
                let tokens = if width == 4 {
                    WalTokens::F32(
                        raw.chunks_exact(4)
                            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                            .collect(),
                    )
                } else {
                    WalTokens::F16(
                        raw.chunks_exact(2)
                            .map(|c| half::f16::from_bits(u16::from_le_bytes([c[0], c[1]])))
                            .collect(),
                    )
                };
                let len = r.u32()? as usize;
                let metadata = r.take(len)?.to_vec();
                docs.push(WalDoc {
                    id,
                    dim,
                    tokens,
                    metadata,
                });
            }
            WalOp::Upsert(docs)
        }
        KIND_DELETE => {
            let mut ids = Vec::with_capacity(n.min(body.len() / 4 + 1));
            for _ in 0..n {
                ids.push(r.string()?);
            }
            WalOp::Delete(ids)
        }
        other => return Err(RecordError::UnknownKind(other)),
    };
    if r.pos != body.len() {
        return Err(RecordError::Trailing(body.len() - r.pos));
    }
    Ok(op)
}

pub(super) struct Cursor<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], RecordError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.b.len())
            .ok_or(RecordError::Truncated)?;
        let s = &self.b[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u32(&mut self) -> Result<u32, RecordError> {
        let s = self.take(4)?;
        Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    }
    fn string(&mut self) -> Result<String, RecordError> {
        let n = self.u32()? as usize;
        String::from_utf8(self.take(n)?.to_vec()).map_err(|_| RecordError::NotUtf8)
    }
}
