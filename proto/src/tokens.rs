//! Packing token matrices into [`Tokens`] messages: little-endian f32 or f16, row-major, plus the shape.
//!
//! Only the packing side lives here (clients need it, and it cannot fail). Unpacking a request is validation
//! (length against the shape, dtype, finite values): the server does it once, in its service core.
use crate::v1::{Dtype, Tokens};

/// Packs `data` (`n_tokens x dim`, row-major) as little-endian f32.
///
/// # Panics
/// If `dim == 0` or `data.len()` is not a multiple of `dim` (a programming error on the caller's side).
pub fn pack_f32(data: &[f32], dim: usize) -> Tokens {
    assert!(
        dim > 0 && data.len().is_multiple_of(dim),
        "data length {} is not a multiple of dim {dim}",
        data.len()
    );
    let mut bytes = Vec::with_capacity(data.len() * 4);
    for v in data {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    Tokens {
        dtype: Dtype::F32 as i32,
        n_tokens: (data.len() / dim) as u32,
        dim: dim as u32,
        data: bytes,
    }
}

/// Packs f16 bit patterns (`n_tokens x dim`, row-major, e.g. `half::f16::to_bits`) as little-endian f16.
///
/// # Panics
/// If `dim == 0` or `bits.len()` is not a multiple of `dim`.
pub fn pack_f16_bits(bits: &[u16], dim: usize) -> Tokens {
    assert!(
        dim > 0 && bits.len().is_multiple_of(dim),
        "data length {} is not a multiple of dim {dim}",
        bits.len()
    );
    let mut bytes = Vec::with_capacity(bits.len() * 2);
    for v in bits {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    Tokens {
        dtype: Dtype::F16 as i32,
        n_tokens: (bits.len() / dim) as u32,
        dim: dim as u32,
        data: bytes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packs_little_endian_with_shape() {
        let t = pack_f32(&[1.0, -2.0, 0.5, 4.0], 2);
        assert_eq!((t.n_tokens, t.dim, t.dtype), (2, 2, Dtype::F32 as i32));
        assert_eq!(&t.data[..4], &1.0f32.to_le_bytes());
        let h = pack_f16_bits(&[0x3c00, 0xc000], 1);
        assert_eq!(
            (h.n_tokens, h.dim, h.data.as_slice()),
            (2, 1, &[0x00, 0x3c, 0x00, 0xc0][..])
        );
    }
}
