//! [`Settings::load`]: the layers (file, environment, flags) read through [`SETTINGS`], each value checked on
//! its own so that every problem of every layer is reported together, then merged in order by one `figment`.
use std::path::Path;

use figment::providers::{Format, Json, Serialized, Toml};
use figment::value::{Dict, Value};
use figment::Figment;

use super::table::{setting, SETTINGS};
use super::{ConfigError, Settings};

impl Settings {
    /// Defaults, overridden by `file` (TOML, or JSON when it ends in `.json`), then by the variables of
    /// [`SETTINGS`] among `env`, then by `flags` (pairs of a file key, e.g. `limits.max_k`, and the flag's text);
    /// then validated. Every problem (unreadable file, unknown key, unparsable value, out-of-range limit) is
    /// reported at once. Unknown keys in a file are errors (a typo must not silently fall back to a default);
    /// unknown `CHAMFER_*` variables are ignored, since other tools (log filters, the load generator) share the
    /// prefix.
    pub fn load<'a>(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        flags: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Settings, ConfigError> {
        let mut problems = Vec::new();
        let mut merged = Figment::from(Serialized::defaults(Settings::default()));
        let mut set = |key: &str, value: Value| {
            merged = std::mem::take(&mut merged).merge(Serialized::default(key, value));
        };
        if let Some(path) = file {
            match file_values(path) {
                Ok(values) => {
                    for (key, value) in values {
                        match setting(&key).map(|s| s.check(&value)) {
                            Some(Ok(v)) => set(&key, v),
                            Some(Err(why)) => problems
                                .push(format!("config file {}: {key}: {why}", path.display())),
                            None => problems.push(format!(
                                "config file {}: unknown key `{key}`",
                                path.display()
                            )),
                        }
                    }
                }
                Err(p) => problems.push(p),
            }
        }
        let env: std::collections::BTreeMap<String, String> = env.into_iter().collect();
        for s in SETTINGS {
            if let Some(text) = env.get(s.env) {
                match s.parse(text) {
                    Ok(v) => set(s.key, v),
                    Err(why) => problems.push(format!("environment: {}={why}", s.env)),
                }
            }
        }
        for (key, text) in flags {
            match setting(key).map(|s| (s, s.parse(text))) {
                Some((s, Ok(v))) => set(s.key, v),
                Some((s, Err(why))) => {
                    let flag = s.flag.unwrap_or(s.key);
                    problems.push(format!("flags: --{flag} {why}"))
                }
                None => problems.push(format!("flags: unknown setting `{key}`")),
            }
        }
        let s = match merged.extract::<Settings>() {
            Ok(s) => s,
            // Every value was checked above: this is only reached by a bug, reported like any problem.
            Err(e) => {
                problems.extend(e.into_iter().map(|e| e.to_string()));
                return Err(ConfigError { problems });
            }
        };
        // An empty key is NOT "off": `CHAMFER_API_KEY=` (a variable set but blank, e.g. by a template that
        // lost its secret) is refused by `problems()`, like a key of spaces, rather than silently opening every
        // endpoint. To run without a key, leave it unset.
        problems.extend(s.problems());
        if problems.is_empty() {
            Ok(s)
        } else {
            Err(ConfigError { problems })
        }
    }
}

/// The config file, read by figment's TOML (or, for `.json`, JSON) provider, as (dotted key, value) pairs.
fn file_values(path: &Path) -> Result<Vec<(String, Value)>, String> {
    if let Err(e) = std::fs::metadata(path) {
        return Err(format!("cannot read config file {}: {e}", path.display()));
    }
    let is_json = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("json"));
    let provider = if is_json {
        Figment::from(Json::file_exact(path))
    } else {
        Figment::from(Toml::file_exact(path))
    };
    let dict: Dict = provider
        .extract()
        .map_err(|e| format!("config file {}: {e}", path.display()))?;
    let mut out = Vec::new();
    flatten("", dict, &mut out);
    Ok(out)
}

/// The leaves of `dict` under `prefix`, with their dotted keys. A table is a leaf only where a setting's key
/// ends (so that `data_dir = {}` is a wrong value, not an unknown key).
fn flatten(prefix: &str, dict: Dict, out: &mut Vec<(String, Value)>) {
    for (k, v) in dict {
        let key = if prefix.is_empty() {
            k
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            Value::Dict(_, inner) if setting(&key).is_none() => flatten(&key, inner, out),
            v => out.push((key, v)),
        }
    }
}
