//! The FDE configuration: the reference's `FixedDimensionalEncodingConfig`, minus the encoding type (which is
//! the choice between [`FdeEncoder::encode_query`](super::FdeEncoder::encode_query) and
//! [`encode_document`](super::FdeEncoder::encode_document)), plus validation.
use crate::{IndexError, Result};

/// Upper bound on any float buffer a configuration implies, in `f32`s: 2^28 floats = 1 GiB. Kept for
/// compatibility; the per-field maxima below are much tighter and are what [`FdeConfig::validate`] enforces.
pub const MAX_FLOATS: usize = 1 << 28;

/// Largest token dimension d. The server's own limit is the same; 65536 covers every embedding model in use.
pub const MAX_TOKEN_DIMENSION: usize = 1 << 16;

/// Largest number of repetitions R (the paper's settings use at most 40; the default is 20). The encoder keeps
/// one partition index per token and repetition, so this also bounds that scratch (4 bytes x tokens x R).
pub const MAX_REPETITIONS: usize = 256;

/// Largest k_sim: 2^18 partitions per repetition, which with one repetition and d_proj = 1 is the largest FDE
/// allowed. (The FDE-size limit below usually binds first.)
pub const MAX_SIMHASH_PROJECTIONS: u32 = 18;

/// Largest AMS projection dimension d_proj (the default is 16).
pub const MAX_PROJECTION_DIMENSION: usize = 4096;

/// Largest FDE, before and after the final projection, in values: 2^18 = 262144, 25x the default 10240
/// (R x 2^k_sim x block dimension = 20 x 32 x 16). One document's FDE is then at most 512 KiB stored (f16) and
/// 1 MiB while it is encoded (f32), so every per-document buffer the encoder and the shard writer size from the
/// configuration stays bounded whatever a client asks for.
pub const MAX_FDE_DIMENSION: usize = 1 << 18;

/// Largest final projection dimension (the same bound as the FDE itself).
pub const MAX_FINAL_PROJECTION_DIMENSION: usize = MAX_FDE_DIMENSION;

/// Largest random matrices, in entries: d x R x max(1, k_sim). The SimHash matrices have d x R x k_sim entries,
/// each stored broadcast to 8 lanes (at most 256 MiB); the AMS projections d x R (at most 32 MiB). The default
/// (128 x 20 x 5) is 12800 entries; d = 65536 with the default R and k_sim is 6.5M.
pub const MAX_SIMHASH_ENTRIES: usize = 1 << 23;

/// The inner projection applied to each token before it is added to its partition's block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProjectionType {
    /// No projection: blocks have the token dimension (`DEFAULT_IDENTITY`).
    Identity,
    /// The reference's sparse, unscaled AMS sketch to `projection_dimension` (`AMS_SKETCH`).
    AmsSketch,
}

/// How a block aggregates its tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EncodingType {
    /// Plain sums, empty blocks stay zero: queries (`DEFAULT_SUM`).
    Sum,
    /// Centroids, optionally filling empty blocks: documents (`AVERAGE`).
    Average,
}

/// An FDE configuration. It is part of an index: queries must be encoded with the configuration (and seed) the
/// documents were encoded with.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FdeConfig {
    /// Token dimension d.
    pub dimension: usize,
    /// Repetitions R (independent estimates, summed by the inner product).
    pub num_repetitions: usize,
    /// SimHash hyperplanes k_sim per repetition, `0..=30`: 2^k_sim partitions.
    pub num_simhash_projections: u32,
    /// Repetition r draws its matrices from `std::mt19937((seed + r) mod 2^32)` (the reference's seed arithmetic
    /// ends in a `uint32_t`), the final Count-Sketch from `std::mt19937(seed mod 2^32)`.
    pub seed: u64,
    /// Inner projection.
    pub projection_type: ProjectionType,
    /// d_proj, used only with [`ProjectionType::AmsSketch`] (must then be > 0); ignored with `Identity`.
    pub projection_dimension: usize,
    /// Documents only: fill each empty partition with the token nearest to it in SimHash (Hamming) distance.
    pub fill_empty_partitions: bool,
    /// Count-Sketch the whole FDE to this many dimensions (this mixes repetitions: no Matryoshka prefixes).
    pub final_projection_dimension: Option<usize>,
}

impl FdeConfig {
    /// The paper's best offline setting for tokens of `dimension`: (R, k_sim, d_proj) = (20, 5, 16), AMS sketch,
    /// seed 1, no filling, no final projection: 10240 output dimensions.
    pub fn paper_default(dimension: usize) -> Self {
        FdeConfig {
            dimension,
            num_repetitions: 20,
            num_simhash_projections: 5,
            seed: 1,
            projection_type: ProjectionType::AmsSketch,
            projection_dimension: 16,
            fill_empty_partitions: false,
            final_projection_dimension: None,
        }
    }

    /// Checks every field and every implied buffer size; each failure is an [`IndexError::InvalidConfig`] that
    /// names the field.
    pub fn validate(&self) -> Result<()> {
        let fail = |msg: String| Err(IndexError::InvalidConfig(format!("FDE: {msg}")));
        let range = |field: &str, value: usize, min: usize, max: usize| {
            if value < min || value > max {
                fail(format!("{field} must be in {min}..={max}, got {value}"))
            } else {
                Ok(())
            }
        };
        range("dimension", self.dimension, 1, MAX_TOKEN_DIMENSION)?;
        range("num_repetitions", self.num_repetitions, 1, MAX_REPETITIONS)?;
        range(
            "num_simhash_projections",
            self.num_simhash_projections as usize,
            0,
            MAX_SIMHASH_PROJECTIONS as usize,
        )?;
        if self.projection_type == ProjectionType::AmsSketch {
            range(
                "projection_dimension (with the ams_sketch projection)",
                self.projection_dimension,
                1,
                MAX_PROJECTION_DIMENSION,
            )?;
        }
        if let Some(v) = self.final_projection_dimension {
            range(
                "final_projection_dimension (when set)",
                v,
                1,
                MAX_FINAL_PROJECTION_DIMENSION,
            )?;
        }
        // Every factor is bounded above, so these products cannot overflow a u64; checked anyway.
        let k = self.num_simhash_projections as usize;
        let full = self
            .num_repetitions
            .checked_mul(1 << k)
            .and_then(|v| v.checked_mul(self.block_dim()));
        match full {
            Some(s) if s <= MAX_FDE_DIMENSION => {}
            _ => {
                return fail(format!(
                    "the FDE dimension num_repetitions x 2^num_simhash_projections x {} = {} x {} x {} = {} \
                     exceeds the limit {MAX_FDE_DIMENSION}",
                    match self.projection_type {
                        ProjectionType::AmsSketch => "projection_dimension",
                        ProjectionType::Identity => "dimension",
                    },
                    self.num_repetitions,
                    1usize << k,
                    self.block_dim(),
                    full.map_or_else(|| "more than 2^64".to_string(), |s| s.to_string()),
                ))
            }
        }
        let entries = self
            .dimension
            .checked_mul(self.num_repetitions)
            .and_then(|v| v.checked_mul(k.max(1)));
        match entries {
            Some(s) if s <= MAX_SIMHASH_ENTRIES => Ok(()),
            _ => fail(format!(
                "the random matrices dimension x num_repetitions x max(1, num_simhash_projections) = \
                 {} x {} x {} exceed the limit of {MAX_SIMHASH_ENTRIES} entries",
                self.dimension,
                self.num_repetitions,
                k.max(1)
            )),
        }
    }

    /// B = 2^k_sim partitions per repetition (saturating for an invalid k_sim).
    pub fn num_partitions(&self) -> usize {
        1usize
            .checked_shl(self.num_simhash_projections)
            .unwrap_or(usize::MAX)
    }

    /// Width of one partition's block: d_proj with the AMS sketch, the token dimension with identity.
    pub fn block_dim(&self) -> usize {
        match self.projection_type {
            ProjectionType::Identity => self.dimension,
            ProjectionType::AmsSketch => self.projection_dimension,
        }
    }

    /// Length of one repetition: partitions x block width (saturating; exact for a valid configuration).
    pub fn repetition_dim(&self) -> usize {
        self.num_partitions().saturating_mul(self.block_dim())
    }

    /// Length of the FDE before the final projection (saturating; exact for a valid configuration).
    pub(crate) fn full_dim(&self) -> usize {
        self.num_repetitions.saturating_mul(self.repetition_dim())
    }

    /// Length of the encoder's output: the final projection dimension if set, else R x repetition length.
    pub fn output_dim(&self) -> usize {
        self.final_projection_dimension
            .unwrap_or_else(|| self.full_dim())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paper_default_sizes() {
        let c = FdeConfig::paper_default(128);
        c.validate().unwrap();
        assert_eq!(
            (
                c.num_partitions(),
                c.block_dim(),
                c.repetition_dim(),
                c.output_dim()
            ),
            (32, 16, 512, 10240)
        );
        let c = FdeConfig {
            projection_type: ProjectionType::Identity,
            final_projection_dimension: Some(7),
            ..c
        };
        assert_eq!(
            (c.block_dim(), c.repetition_dim(), c.output_dim()),
            (128, 4096, 7)
        );
    }

    #[test]
    fn serde_round_trip_uses_snake_case() {
        let c = FdeConfig::paper_default(128);
        let json = serde_json::to_string(&c).unwrap();
        assert!(
            json.contains("\"projection_type\":\"ams_sketch\""),
            "{json}"
        );
        assert_eq!(serde_json::from_str::<FdeConfig>(&json).unwrap(), c);
        assert_eq!(
            serde_json::to_string(&EncodingType::Average).unwrap(),
            "\"average\""
        );
    }

    #[test]
    fn invalid_configs_are_rejected_with_invalid_config() {
        let ok = FdeConfig::paper_default(128);
        let bad = [
            FdeConfig {
                dimension: 0,
                ..ok.clone()
            },
            FdeConfig {
                num_repetitions: 0,
                ..ok.clone()
            },
            FdeConfig {
                num_simhash_projections: 31,
                ..ok.clone()
            },
            FdeConfig {
                num_simhash_projections: 200,
                ..ok.clone()
            },
            FdeConfig {
                projection_dimension: 0,
                ..ok.clone()
            },
            FdeConfig {
                final_projection_dimension: Some(0),
                ..ok.clone()
            },
            FdeConfig {
                final_projection_dimension: Some(MAX_FLOATS + 1),
                ..ok.clone()
            },
            FdeConfig {
                num_simhash_projections: 30,
                ..ok.clone()
            },
            FdeConfig {
                num_repetitions: usize::MAX,
                ..ok.clone()
            },
            FdeConfig {
                projection_dimension: usize::MAX,
                ..ok.clone()
            },
            FdeConfig {
                dimension: 1 << 30,
                ..ok.clone()
            },
            FdeConfig {
                dimension: 1 << 18,
                ..ok.clone()
            },
        ];
        for c in bad {
            match c.validate() {
                Err(IndexError::InvalidConfig(msg)) => assert!(msg.starts_with("FDE: "), "{msg}"),
                other => panic!("{c:?} gave {other:?}"),
            }
            // The size accessors never panic, even on invalid configurations.
            let _ = (c.num_partitions(), c.repetition_dim(), c.output_dim());
        }
        // The configuration (8192 x 2^5 x 1024 = 2^28 values per document) is refused, naming the field.
        let fat = FdeConfig {
            dimension: 4,
            num_repetitions: 8192,
            num_simhash_projections: 5,
            projection_dimension: 1024,
            ..ok.clone()
        };
        let msg = fat.validate().unwrap_err().to_string();
        assert!(
            msg.contains("num_repetitions")
                && msg.contains("8192")
                && msg.contains(&MAX_REPETITIONS.to_string()),
            "{msg}"
        );
        let fat = FdeConfig {
            num_repetitions: MAX_REPETITIONS,
            ..fat
        };
        let msg = fat.validate().unwrap_err().to_string();
        assert!(
            msg.contains("FDE dimension") && msg.contains(&MAX_FDE_DIMENSION.to_string()),
            "{msg}"
        );
        // Every maximum itself is accepted where it does not multiply past another limit.
        for c in [
            FdeConfig {
                num_repetitions: MAX_REPETITIONS,
                num_simhash_projections: 3,
                projection_dimension: 32,
                ..ok.clone()
            },
            FdeConfig {
                num_repetitions: 1,
                num_simhash_projections: MAX_SIMHASH_PROJECTIONS,
                projection_dimension: 1,
                ..ok.clone()
            },
            FdeConfig {
                num_repetitions: 1,
                num_simhash_projections: 0,
                projection_dimension: MAX_PROJECTION_DIMENSION,
                final_projection_dimension: Some(MAX_FINAL_PROJECTION_DIMENSION),
                ..ok.clone()
            },
            FdeConfig {
                dimension: MAX_TOKEN_DIMENSION,
                ..ok.clone()
            },
        ] {
            c.validate().unwrap_or_else(|e| panic!("{c:?}: {e}"));
            assert!(c.output_dim() <= MAX_FDE_DIMENSION);
        }
        for c in [
            FdeConfig {
                num_simhash_projections: MAX_SIMHASH_PROJECTIONS + 1,
                num_repetitions: 1,
                projection_dimension: 1,
                ..ok.clone()
            },
            FdeConfig {
                projection_dimension: MAX_PROJECTION_DIMENSION + 1,
                num_simhash_projections: 0,
                num_repetitions: 1,
                ..ok.clone()
            },
            FdeConfig {
                dimension: MAX_TOKEN_DIMENSION + 1,
                ..ok.clone()
            },
            FdeConfig {
                final_projection_dimension: Some(MAX_FINAL_PROJECTION_DIMENSION + 1),
                ..ok.clone()
            },
        ] {
            assert!(
                matches!(c.validate(), Err(IndexError::InvalidConfig(_))),
                "{c:?}"
            );
        }
        // The projection dimension is ignored without the AMS sketch.
        FdeConfig {
            projection_type: ProjectionType::Identity,
            projection_dimension: 0,
            ..ok.clone()
        }
        .validate()
        .unwrap();
        FdeConfig {
            num_simhash_projections: 0,
            ..ok
        }
        .validate()
        .unwrap();
    }
}
