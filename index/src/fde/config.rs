//! The FDE configuration: the reference's `FixedDimensionalEncodingConfig`, minus the encoding type (which is
//! the choice between [`FdeEncoder::encode_query`](super::FdeEncoder::encode_query) and
//! [`encode_document`](super::FdeEncoder::encode_document)), plus validation.
use crate::{IndexError, Result};

/// Upper bound on the FDE a configuration implies (before and after the final projection), in `f32`s: 2^28
/// floats = 1 GiB. The SimHash matrices (dimension x R x k_sim entries) are limited to `MAX_FLOATS / 16`.
pub const MAX_FLOATS: usize = 1 << 28;

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
        if self.dimension == 0 {
            return fail("dimension must be > 0".into());
        }
        if self.num_repetitions == 0 {
            return fail("num_repetitions must be > 0".into());
        }
        if self.num_simhash_projections > 30 {
            return fail(format!(
                "num_simhash_projections must be at most 30 (2^k_sim partitions), got {}",
                self.num_simhash_projections
            ));
        }
        if self.projection_type == ProjectionType::AmsSketch && self.projection_dimension == 0 {
            return fail("projection_dimension must be > 0 with the ams_sketch projection".into());
        }
        if self.final_projection_dimension == Some(0) {
            return fail("final_projection_dimension must be > 0 when set".into());
        }
        let too_big = |what: &str, size: Option<usize>| match size {
            Some(s) if s <= MAX_FLOATS => Ok(()),
            _ => fail(format!("{what} would exceed {MAX_FLOATS} floats")),
        };
        let k = self.num_simhash_projections as usize;
        too_big(
            "the FDE (num_repetitions x 2^num_simhash_projections x block dimension)",
            self.num_repetitions
                .checked_mul(1 << k)
                .and_then(|v| v.checked_mul(self.block_dim())),
        )?;
        too_big(
            "final_projection_dimension",
            Some(self.final_projection_dimension.unwrap_or(0)),
        )?;
        // The encoder stores each SimHash entry broadcast to 8 lanes.
        match self.dimension.checked_mul(self.num_repetitions).and_then(|v| v.checked_mul(k.max(1))) {
            Some(s) if s <= MAX_FLOATS / 16 => Ok(()),
            _ => fail(format!(
                "the SimHash matrices (dimension x num_repetitions x num_simhash_projections) would exceed {} entries",
                MAX_FLOATS / 16
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
