//! Token matrices: the one validation every document and query goes through before it reaches a kernel.
use half::f16;

use crate::{IndexError, Result};

/// Largest magnitude a token coordinate may have: shards store tokens as f16, whose largest finite value is
/// 65504 (every larger f32 would become infinity). Queries are held to the same range: their values multiply
/// stored f16 values in the exact scores and are summed into query FDEs, and a query far outside the range of
/// the documents it is compared with would only produce infinite scores.
pub const MAX_TOKEN_VALUE: f32 = 65504.0;

/// A borrowed `n x dim` row-major matrix of token vectors (one row per token), already validated.
#[derive(Clone, Copy, Debug)]
pub struct TokenMatrix<'a> {
    data: &'a [f32],
    dim: usize,
}

impl<'a> TokenMatrix<'a> {
    /// Validates `data` as `n x dim` token vectors: `dim > 0`, `data.len()` a non-zero multiple of `dim`,
    /// every value finite ([`IndexError::NonFinite`]) and at most [`MAX_TOKEN_VALUE`] in magnitude
    /// ([`IndexError::ValueOutOfRange`]). `what` names the object in the error ("document", "query").
    pub fn new(data: &'a [f32], dim: usize, what: &'static str) -> Result<Self> {
        check_shape(data.len(), dim, what)?;
        // A branch-free check of whole chunks (vectorised; `abs() <= limit` is false for NaN and infinities), and
        // the search for the offending value only when one fails.
        let all_fine = data.chunks(256).all(|c| {
            c.iter()
                .fold(true, |ok, v| ok & (v.abs() <= MAX_TOKEN_VALUE))
        });
        if all_fine {
            return Ok(TokenMatrix { data, dim });
        }
        if let Some(pos) = data
            .iter()
            .position(|v| !v.is_finite() || v.abs() > MAX_TOKEN_VALUE)
        {
            let (token, coord, value) = (pos / dim, pos % dim, data[pos]);
            return Err(if value.is_finite() {
                IndexError::ValueOutOfRange {
                    token,
                    coord,
                    value,
                    limit: MAX_TOKEN_VALUE,
                }
            } else {
                IndexError::NonFinite { token, coord }
            });
        }
        Ok(TokenMatrix { data, dim })
    }

    /// Validates a list of rows (as JSON gives them): every row must have `dim` values.
    pub fn from_rows(
        rows: &[Vec<f32>],
        dim: usize,
        what: &'static str,
        buf: &'a mut Vec<f32>,
    ) -> Result<Self> {
        buf.clear();
        for row in rows {
            if row.len() != dim {
                return Err(IndexError::DimensionMismatch {
                    expected: dim,
                    got: row.len(),
                });
            }
            buf.extend_from_slice(row);
        }
        TokenMatrix::new(buf, dim, what)
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.data.len() / self.dim
    }
    /// Always false: a validated matrix has at least one token.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
    /// Token dimension.
    pub fn dim(&self) -> usize {
        self.dim
    }
    /// The row-major values.
    pub fn as_slice(&self) -> &'a [f32] {
        self.data
    }
    /// Token `i`.
    pub fn row(&self, i: usize) -> &'a [f32] {
        &self.data[i * self.dim..(i + 1) * self.dim]
    }
    /// Iterates over the tokens.
    pub fn rows(&self) -> std::slice::ChunksExact<'a, f32> {
        self.data.chunks_exact(self.dim)
    }
}

/// Element type of token values: the width a client sent them in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dtype {
    /// 4-byte floats.
    F32,
    /// 2-byte half floats (the stored precision).
    F16,
}

impl Dtype {
    /// Bytes per value.
    pub fn size(self) -> usize {
        match self {
            Dtype::F32 => 4,
            Dtype::F16 => 2,
        }
    }
}

/// Token values in the width they arrived in.
#[derive(Clone, Debug, PartialEq)]
pub enum TokenValues {
    /// f32 values (JSON rows, packed f32).
    F32(Vec<f32>),
    /// f16 values, as the client's bits (packed f16): never widened to be stored or logged.
    F16(Vec<f16>),
}

/// An owned, validated `n x dim` row-major token matrix that carries its dtype: a document on the write path.
/// f16 tokens stay f16 from the wire to the log and the shard; only code that needs f32 (the codebook's
/// assignment, FDE encoding) widens them, a piece at a time, with [`Tokens::extend_f32`].
#[derive(Clone, Debug, PartialEq)]
pub struct Tokens {
    values: TokenValues,
    dim: usize,
}

impl Tokens {
    /// Validates f32 values as [`TokenMatrix::new`] does.
    pub fn from_f32(values: Vec<f32>, dim: usize, what: &'static str) -> Result<Self> {
        TokenMatrix::new(&values, dim, what)?;
        Ok(Tokens {
            values: TokenValues::F32(values),
            dim,
        })
    }

    /// Validates f16 values: the same shape rules, and every value finite (an f16's finite range is the stored
    /// range, so no other bound applies).
    pub fn from_f16(values: Vec<f16>, dim: usize, what: &'static str) -> Result<Self> {
        check_f16_rows(&values, dim, what)?;
        Ok(Tokens {
            values: TokenValues::F16(values),
            dim,
        })
    }

    /// The width the values are held in.
    pub fn dtype(&self) -> Dtype {
        match self.values {
            TokenValues::F32(_) => Dtype::F32,
            TokenValues::F16(_) => Dtype::F16,
        }
    }

    /// The values.
    pub fn values(&self) -> &TokenValues {
        &self.values
    }

    /// The values, taken out.
    pub fn into_values(self) -> TokenValues {
        self.values
    }

    /// Number of values (`len() * dim()`).
    pub fn n_values(&self) -> usize {
        match &self.values {
            TokenValues::F32(v) => v.len(),
            TokenValues::F16(v) => v.len(),
        }
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.n_values() / self.dim
    }

    /// Always false: a validated matrix has at least one token.
    pub fn is_empty(&self) -> bool {
        self.n_values() == 0
    }

    /// Token dimension.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The engine's f32 view, when the values are f32 (no copy, no second validation).
    pub fn as_f32(&self) -> Option<TokenMatrix<'_>> {
        match &self.values {
            TokenValues::F32(v) => Some(TokenMatrix {
                data: v,
                dim: self.dim,
            }),
            TokenValues::F16(_) => None,
        }
    }

    /// The f16 values, when they are f16.
    pub fn as_f16(&self) -> Option<&[f16]> {
        match &self.values {
            TokenValues::F16(v) => Some(v),
            TokenValues::F32(_) => None,
        }
    }

    /// Appends the values to `out` as f32 (exact for both widths); returns how many f16 values were widened
    /// (0 for f32 tokens). The one place a document's f16 tokens become f32.
    pub fn extend_f32(&self, out: &mut Vec<f32>) -> usize {
        use half::slice::HalfFloatSliceExt;
        match &self.values {
            TokenValues::F32(v) => {
                out.extend_from_slice(v);
                0
            }
            TokenValues::F16(v) => {
                let at = out.len();
                out.resize(at + v.len(), 0.0);
                v.convert_to_f32_slice(&mut out[at..]);
                v.len()
            }
        }
    }
}

/// The shape every token matrix must have, whatever its precision: `dim > 0` and a non-zero multiple of `dim`
/// values (`len` of them).
fn check_shape(len: usize, dim: usize, what: &'static str) -> Result<()> {
    if dim == 0 {
        return Err(IndexError::InvalidConfig(
            "token dimension must be > 0".into(),
        ));
    }
    if len == 0 {
        return Err(IndexError::Empty { what });
    }
    if !len.is_multiple_of(dim) {
        return Err(IndexError::DimensionMismatch {
            expected: dim,
            got: len % dim,
        });
    }
    Ok(())
}

/// [`TokenMatrix::new`]'s checks for row-major f16 tokens (a replayed log record): the same shape, and every value
/// finite (an f16's finite range is the stored range, so no other bound applies). Returns the number of tokens.
pub fn check_f16_rows(data: &[f16], dim: usize, what: &'static str) -> Result<usize> {
    check_shape(data.len(), dim, what)?;
    // Infinities and NaNs are the values whose exponent bits are all set (a branch-free, vectorised check).
    const EXP: u16 = 0x7c00;
    let all_finite = data
        .chunks(256)
        .all(|c| c.iter().fold(true, |ok, v| ok & (v.to_bits() & EXP != EXP)));
    if !all_finite {
        if let Some(pos) = data.iter().position(|v| v.to_bits() & EXP == EXP) {
            return Err(IndexError::NonFinite {
                token: pos / dim,
                coord: pos % dim,
            });
        }
    }
    Ok(data.len() / dim)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_bad_matrices() {
        assert!(matches!(
            TokenMatrix::new(&[], 4, "query"),
            Err(IndexError::Empty { what: "query" })
        ));
        assert!(matches!(
            TokenMatrix::new(&[1.0; 7], 4, "document"),
            Err(IndexError::DimensionMismatch {
                expected: 4,
                got: 3
            })
        ));
        assert!(matches!(
            TokenMatrix::new(&[1.0, 2.0, f32::NAN, 0.0], 2, "document"),
            Err(IndexError::NonFinite { token: 1, coord: 0 })
        ));
        assert!(matches!(
            TokenMatrix::new(&[1.0], 0, "query"),
            Err(IndexError::InvalidConfig(_))
        ));
        // Finite values beyond f16's range: out of range, not non-finite; the limit itself is accepted.
        for big in [65504.5f32, -1e5, 3.4e38, f32::MAX] {
            match TokenMatrix::new(&[0.0, 1.0, 2.0, big], 2, "document") {
                Err(IndexError::ValueOutOfRange {
                    token: 1,
                    coord: 1,
                    value,
                    limit,
                }) => assert_eq!((value, limit), (big, MAX_TOKEN_VALUE)),
                other => panic!("{big}: {other:?}"),
            }
        }
        TokenMatrix::new(&[MAX_TOKEN_VALUE, -MAX_TOKEN_VALUE], 2, "query").unwrap();
        assert!(matches!(
            TokenMatrix::new(&[f32::INFINITY, 1e9], 2, "query"),
            Err(IndexError::NonFinite { token: 0, coord: 0 })
        ));
        let m = TokenMatrix::new(&[1.0, 2.0, 3.0, 4.0], 2, "query").unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(m.row(1), &[3.0, 4.0]);
    }

    #[test]
    fn tokens_carry_their_dtype() {
        let halves: Vec<f16> = [0.5f32, -1.0, 2.0, 65504.0]
            .iter()
            .map(|&v| f16::from_f32(v))
            .collect();
        let t = Tokens::from_f16(halves.clone(), 2, "document").unwrap();
        assert_eq!((t.dtype(), t.len(), t.dim()), (Dtype::F16, 2, 2));
        assert_eq!(t.as_f16(), Some(&halves[..]));
        assert!(t.as_f32().is_none());
        let mut out = vec![7.0];
        assert_eq!(t.extend_f32(&mut out), 4);
        assert_eq!(out, [7.0, 0.5, -1.0, 2.0, 65504.0]);
        let f = Tokens::from_f32(vec![0.5, -1.0, 2.0, 65504.0], 2, "document").unwrap();
        assert_eq!(f.dtype(), Dtype::F32);
        assert_eq!(f.as_f32().unwrap().row(1), &[2.0, 65504.0]);
        let mut out = Vec::new();
        assert_eq!(f.extend_f32(&mut out), 0);
        assert_eq!(out, [0.5, -1.0, 2.0, 65504.0]);
        // The same rules for both widths.
        assert!(matches!(
            Tokens::from_f16(vec![f16::ONE, f16::INFINITY], 2, "document"),
            Err(IndexError::NonFinite { token: 0, coord: 1 })
        ));
        assert!(matches!(
            Tokens::from_f16(vec![f16::ONE; 3], 2, "document"),
            Err(IndexError::DimensionMismatch { .. })
        ));
        assert!(matches!(
            Tokens::from_f32(vec![1e5, 0.0], 2, "document"),
            Err(IndexError::ValueOutOfRange { .. })
        ));
        assert!(matches!(
            Tokens::from_f16(vec![], 2, "document"),
            Err(IndexError::Empty { .. })
        ));
    }
}
