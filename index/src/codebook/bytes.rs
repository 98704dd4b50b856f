//! The codebook's on-disk form (see the module documentation).
use super::*;

impl Codebook {
    /// The codebook's on-disk form (see the module documentation).
    pub fn to_bytes(&self) -> Vec<u8> {
        let (kc, cc, st): (usize, &[f32], &[u32]) = match &self.coarse {
            Some(c) => (c.centroids.len() / self.dim, &c.centroids, &c.start),
            None => (0, &[], &[]),
        };
        let mut out = Vec::with_capacity(16 + 4 * (self.centroids.len() + cc.len() + st.len()));
        for v in [self.len() as u32, kc as u32, self.dim as u32] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&self.train_error.unwrap_or(f32::NAN).to_le_bytes());
        for v in self.centroids.iter().chain(cc) {
            out.extend_from_slice(&v.to_le_bytes());
        }
        for v in st {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out
    }

    /// Parses [`to_bytes`](Self::to_bytes) output for tokens of `dim` values; every size is checked against
    /// the bytes present before anything is allocated, every value must be finite and the coarse ranges must
    /// cover the fine centroids in order. The error says what is wrong.
    pub fn from_bytes(bytes: &[u8], dim: usize) -> Result<Codebook, String> {
        // Header words: K, Kc, dim, training error.
        const H: usize = 4;
        let word = |i: usize| -> Option<u32> {
            let b = bytes.get(i * 4..i * 4 + 4)?;
            Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        };
        let (Some(k), Some(kc), Some(d)) = (word(0), word(1), word(2)) else {
            return Err("codebook header is truncated".into());
        };
        let (k, kc, d) = (k as usize, kc as usize, d as usize);
        if d != dim {
            return Err(format!("codebook is {d}-dimensional, the index {dim}"));
        }
        if k == 0 || k > MAX_CENTROIDS || kc > k {
            return Err(format!("codebook sizes out of range (K {k}, coarse {kc})"));
        }
        let starts = if kc > 0 { kc + 1 } else { 0 };
        let want = H + (k + kc) * dim + starts;
        if bytes.len() != want * 4 {
            return Err(format!(
                "codebook holds {} bytes, its header needs {}",
                bytes.len(),
                want * 4
            ));
        }
        let floats = |from: usize, n: usize| -> Vec<f32> {
            bytes[from * 4..(from + n) * 4]
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect()
        };
        let train_error = f32::from_bits(word(3).unwrap_or(u32::MAX));
        let train_error = match train_error {
            e if e.is_nan() => None,
            e if e.is_finite() && e >= 0.0 => Some(e),
            e => return Err(format!("codebook training error {e} is out of range")),
        };
        let centroids = floats(H, k * dim);
        let coarse_c = floats(H + k * dim, kc * dim);
        if centroids.iter().chain(&coarse_c).any(|v| !v.is_finite()) {
            return Err("codebook holds a non-finite value".into());
        }
        if kc == 0 {
            return Ok(Codebook {
                train_error,
                ..Codebook::from_centroids(dim, centroids)
            });
        }
        let start: Vec<u32> = (0..starts)
            .map(|i| word(H + (k + kc) * dim + i).unwrap_or(u32::MAX))
            .collect();
        if start[0] != 0 || start[kc] as usize != k || start.windows(2).any(|w| w[1] < w[0]) {
            return Err("codebook coarse ranges are inconsistent".into());
        }
        Ok(Codebook {
            train_error,
            ..Codebook::with_coarse(
                dim,
                centroids,
                Coarse {
                    centroids: coarse_c,
                    start,
                },
            )
        })
    }
}
