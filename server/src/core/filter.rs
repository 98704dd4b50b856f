//! Metadata filters: equality / membership on metadata fields plus an id allow-list.
//!
//! A compiled [`Filter`] is evaluated inside the engine's candidate search (the `filter` callback of
//! `Searcher::search`), together with the tombstone check, so that k results come back whenever k live documents
//! pass it: a post-filter would return fewer. Metadata is parsed once per segment and cached (see
//! `collection::MetaCache`), not once per visited graph node.
use std::collections::HashSet;

use serde::Deserialize;
use serde_json::Value;

use crate::error::ServiceError;

/// A filter as a client sent it (the REST JSON shape; gRPC converts its messages into it).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterInput {
    /// Every condition must hold.
    #[serde(default)]
    pub must: Vec<ConditionInput>,
    /// When not empty, only these ids pass.
    #[serde(default)]
    pub ids: Vec<String>,
}

/// `key` (dots descend into objects) equals `equals`, or one of `any_of`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConditionInput {
    /// Metadata field name; dots descend into nested objects.
    pub key: String,
    /// The field equals one of these values.
    #[serde(default)]
    pub any_of: Vec<Value>,
    /// The field equals this value.
    #[serde(default)]
    pub equals: Option<Value>,
}

/// A validated filter.
#[derive(Clone, Debug)]
pub struct Filter {
    conditions: Vec<Condition>,
    ids: Option<HashSet<String>>,
}

#[derive(Clone, Debug)]
struct Condition {
    path: Vec<String>,
    values: Vec<Value>,
}

impl Filter {
    /// Validates `input`; `None` when it restricts nothing.
    pub fn compile(input: &FilterInput) -> Result<Option<Filter>, ServiceError> {
        let mut conditions = Vec::with_capacity(input.must.len());
        for c in &input.must {
            if c.key.is_empty() || c.key.split('.').any(str::is_empty) {
                return Err(ServiceError::InvalidArgument(format!(
                    "filter key {:?} is empty or has an empty part",
                    c.key
                )));
            }
            let mut values = c.any_of.clone();
            values.extend(c.equals.clone());
            if values.is_empty() {
                return Err(ServiceError::InvalidArgument(format!(
                    "filter on {:?} has no value (set equals or any_of)",
                    c.key
                )));
            }
            if let Some(bad) = values
                .iter()
                .find(|v| !matches!(v, Value::String(_) | Value::Number(_) | Value::Bool(_)))
            {
                return Err(ServiceError::InvalidArgument(format!(
                    "filter on {:?}: values must be strings, numbers or booleans, got {}",
                    c.key,
                    super::input::json_kind(bad)
                )));
            }
            conditions.push(Condition {
                path: c.key.split('.').map(String::from).collect(),
                values,
            });
        }
        let ids =
            (!input.ids.is_empty()).then(|| input.ids.iter().cloned().collect::<HashSet<_>>());
        if conditions.is_empty() && ids.is_none() {
            return Ok(None);
        }
        Ok(Some(Filter { conditions, ids }))
    }

    /// True when the filter has metadata conditions (so metadata must be parsed).
    pub fn needs_metadata(&self) -> bool {
        !self.conditions.is_empty()
    }

    /// Does the document with this id and (parsed) metadata pass?
    pub fn matches(&self, id: &str, metadata: Option<&Value>) -> bool {
        if let Some(ids) = &self.ids {
            if !ids.contains(id) {
                return false;
            }
        }
        self.conditions.iter().all(|c| {
            let Some(mut v) = metadata else { return false };
            for part in &c.path {
                match v.get(part) {
                    Some(next) => v = next,
                    None => return false,
                }
            }
            match v {
                Value::Array(items) => items
                    .iter()
                    .any(|item| c.values.iter().any(|w| scalar_eq(item, w))),
                one => c.values.iter().any(|w| scalar_eq(one, w)),
            }
        })
    }
}

/// JSON scalar equality with numbers compared by value (1 == 1.0), integers exactly.
fn scalar_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_i64(), y.as_i64()) {
            (Some(i), Some(j)) => i == j,
            _ => match (x.as_u64(), y.as_u64()) {
                (Some(i), Some(j)) => i == j,
                _ => x.as_f64() == y.as_f64(),
            },
        },
        (Value::String(x), Value::String(y)) => x == y,
        (Value::Bool(x), Value::Bool(y)) => x == y,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn filter(v: Value) -> Filter {
        Filter::compile(&serde_json::from_value(v).unwrap())
            .unwrap()
            .unwrap()
    }

    #[test]
    fn equality_membership_paths_arrays_and_ids() {
        let meta = json!({"section": "1", "n": 3, "tags": ["a", "b"], "page": {"name": "cp"}});
        assert!(
            filter(json!({"must": [{"key": "section", "equals": "1"}]})).matches("x", Some(&meta))
        );
        assert!(
            !filter(json!({"must": [{"key": "section", "equals": 1}]})).matches("x", Some(&meta))
        );
        assert!(
            filter(json!({"must": [{"key": "n", "any_of": [2, 3.0]}]})).matches("x", Some(&meta))
        );
        assert!(
            filter(json!({"must": [{"key": "tags", "any_of": ["b"]}]})).matches("x", Some(&meta))
        );
        assert!(
            filter(json!({"must": [{"key": "page.name", "equals": "cp"}]}))
                .matches("x", Some(&meta))
        );
        assert!(
            !filter(json!({"must": [{"key": "missing", "equals": "cp"}]}))
                .matches("x", Some(&meta))
        );
        assert!(!filter(json!({"must": [{"key": "section", "equals": "1"}]})).matches("x", None));
        let ids = filter(json!({"ids": ["x", "y"]}));
        assert!(ids.matches("y", None) && !ids.matches("z", Some(&meta)));
    }

    #[test]
    fn empty_filters_are_none_and_bad_ones_errors() {
        assert!(Filter::compile(&FilterInput::default()).unwrap().is_none());
        for bad in [
            json!({"must": [{"key": ""}]}),
            json!({"must": [{"key": "a"}]}),
            json!({"must": [{"key": "a", "equals": [1]}]}),
        ] {
            assert!(Filter::compile(&serde_json::from_value(bad).unwrap()).is_err());
        }
    }
}
