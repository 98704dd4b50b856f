//! Token vectors in REST bodies: an array of arrays of numbers, or a packed object
//! `{"dtype": "f16" | "f32", "shape": [n_tokens, dim], "data": "<base64>"}` (standard base64 with padding of the
//! little-endian values, row-major). Both become the core's [`TokenInput`]; every rule (dimension, token count,
//! byte length, finite, f16 range) is the core's, so both forms fail with the same codes.
use std::fmt;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde::de::{self, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use utoipa::ToSchema;

use crate::core::input::{Dtype, TokenInput};
use crate::error::ServiceError;

/// Token vectors: one array of `dimension` numbers per token, or the packed form.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
#[serde(untagged)]
#[schema(examples(
    json!([[0.12, -0.5, 0.33, 0.9], [0.0, 0.25, -0.75, 0.1]]),
    json!({"dtype": "f32", "shape": [1, 4], "data": "AAAAPwAAAL8AAIA+AAAAAA=="}),
    json!({"dtype": "f16", "shape": [2, 2], "data": "ADgAuAA0AAA="})
))]
pub enum Tokens {
    /// One array of `dimension` numbers per token.
    Rows(Vec<Vec<f32>>),
    /// Packed little-endian values with their shape.
    Packed(PackedTokens),
}

/// Packed token vectors.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"dtype": "f16", "shape": [2, 2], "data": "ADgAuAA0AAA="}))]
pub struct PackedTokens {
    /// Element type of `data`.
    pub dtype: PackedDtype,
    /// `[n_tokens, dim]`.
    #[schema(min_items = 2, max_items = 2)]
    pub shape: Vec<usize>,
    /// Standard base64 (RFC 4648, with padding) of the `n_tokens * dim` little-endian values, row-major.
    pub data: String,
}

/// Element type of packed token vectors.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PackedDtype {
    /// Half precision: 2 bytes per value.
    F16,
    /// Single precision: 4 bytes per value.
    F32,
}

impl<'de> Deserialize<'de> for Tokens {
    /// An array is the rows form, an object the packed form (no buffering of the values, unlike an untagged
    /// enum, and an error message that says which form was expected).
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Tokens;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(
                    "token vectors: an array of arrays of numbers, or {\"dtype\", \"shape\", \"data\"}",
                )
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Tokens, A::Error> {
                Vec::<Vec<f32>>::deserialize(de::value::SeqAccessDeserializer::new(seq))
                    .map(Tokens::Rows)
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Tokens, A::Error> {
                PackedTokens::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(Tokens::Packed)
            }
        }
        d.deserialize_any(V)
    }
}

impl Tokens {
    /// The core's input. Only the packed form can fail here (shape not `[n, dim]`, data not base64); sizes and
    /// values are the core's to check. The decoded bytes are at most 3/4 of the base64 text, which the request
    /// body limit already bounds.
    pub fn into_input(self) -> Result<TokenInput, ServiceError> {
        match self {
            Tokens::Rows(rows) => Ok(TokenInput::Rows(rows)),
            Tokens::Packed(p) => {
                let [n_tokens, dim] = p.shape[..] else {
                    return Err(ServiceError::Malformed(format!(
                        "packed tokens: shape must be [n_tokens, dim], got {} numbers",
                        p.shape.len()
                    )));
                };
                let bytes = STANDARD.decode(p.data.as_bytes()).map_err(|e| {
                    ServiceError::Malformed(format!(
                        "packed tokens: data is not standard base64: {e}"
                    ))
                })?;
                Ok(TokenInput::Packed {
                    dtype: Some(match p.dtype {
                        PackedDtype::F16 => Dtype::F16,
                        PackedDtype::F32 => Dtype::F32,
                    }),
                    n_tokens,
                    dim,
                    bytes,
                })
            }
        }
    }

    /// Stored token values (row-major, `n_tokens` rows) as rows, or packed as f16 (the stored precision, so
    /// nothing is lost).
    pub fn from_stored(values: &[f32], n_tokens: usize, packed: bool) -> Tokens {
        let dim = values.len() / n_tokens.max(1);
        if packed {
            let bytes: Vec<u8> = values
                .iter()
                .flat_map(|v| half::f16::from_f32(*v).to_bits().to_le_bytes())
                .collect();
            Tokens::Packed(PackedTokens {
                dtype: PackedDtype::F16,
                shape: vec![n_tokens, dim],
                data: STANDARD.encode(bytes),
            })
        } else {
            Tokens::Rows(values.chunks(dim.max(1)).map(<[f32]>::to_vec).collect())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_forms_parse_and_packed_round_trips() {
        let rows: Tokens = serde_json::from_str("[[1.0, 2.0], [3.0, 4.5]]").unwrap();
        assert_eq!(rows, Tokens::Rows(vec![vec![1.0, 2.0], vec![3.0, 4.5]]));
        let packed = Tokens::from_stored(&[1.0, 2.0, 3.0, 4.5], 2, true);
        let json = serde_json::to_string(&packed).unwrap();
        assert!(
            json.starts_with(r#"{"dtype":"f16","shape":[2,2],"data":""#),
            "{json}"
        );
        let back: Tokens = serde_json::from_str(&json).unwrap();
        let TokenInput::Packed {
            dtype,
            n_tokens,
            dim,
            bytes,
        } = back.into_input().unwrap()
        else {
            panic!("not packed")
        };
        assert_eq!(
            (dtype, n_tokens, dim, bytes.len()),
            (Some(Dtype::F16), 2, 2, 8)
        );
        // The schema's examples are valid packed values.
        let ex: Tokens = serde_json::from_str(
            r#"{"dtype": "f32", "shape": [1, 4], "data": "AAAAPwAAAL8AAIA+AAAAAA=="}"#,
        )
        .unwrap();
        assert!(
            matches!(ex.into_input().unwrap(), TokenInput::Packed { bytes, .. } if bytes.len() == 16)
        );
    }

    #[test]
    fn bad_packed_values_are_malformed() {
        let code = |j: &str| {
            let t: Tokens = serde_json::from_str(j).unwrap();
            t.into_input().unwrap_err().status().code
        };
        assert_eq!(
            code(r#"{"dtype":"f32","shape":[1],"data":""}"#),
            "malformed"
        );
        assert_eq!(
            code(r#"{"dtype":"f32","shape":[1,1],"data":"!!!!"}"#),
            "malformed"
        );
        assert!(
            serde_json::from_str::<Tokens>(r#"{"dtype":"f64","shape":[1,1],"data":""}"#).is_err()
        );
        assert!(serde_json::from_str::<Tokens>(r#""abc""#).is_err());
        assert!(
            serde_json::from_str::<Tokens>(r#"{"dtype":"f32","shape":[1,1],"data":"","x":1}"#)
                .is_err()
        );
    }
}
