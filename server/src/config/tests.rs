//! The settings' tests: layering, every problem at once, bounds, and the one-definition pins (every field has
//! one entry in `SETTINGS`; README's table is generated from it).
use std::path::PathBuf;

use super::*;

const NO_FLAGS: [(&str, &str); 0] = [];

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn defaults_are_valid() {
    let s = Settings::load(None, env(&[]), NO_FLAGS).unwrap();
    assert_eq!(s, Settings::default());
}

#[test]
fn layers_override_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.toml");
    std::fs::write(
        &file,
        "data_dir = \"/from-file\"\nhttp_addr = \"127.0.0.1:1\"\n[limits]\nmax_k = 7\n",
    )
    .unwrap();
    let flags = [("http_addr", "127.0.0.1:3")];
    let s = Settings::load(
        Some(&file),
        env(&[
            ("CHAMFER_HTTP_ADDR", "127.0.0.1:2"),
            ("CHAMFER_MAX_BATCH", "9"),
            ("OTHER", "x"),
        ]),
        flags,
    )
    .unwrap();
    assert_eq!(s.data_dir, PathBuf::from("/from-file"));
    assert_eq!(s.http_addr.port(), 3);
    assert_eq!((s.limits.max_k, s.limits.max_batch), (7, 9));
}

#[test]
fn json_files_work_too() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.json");
    std::fs::write(
        &file,
        r#"{"grpc_addr": "127.0.0.1:9", "limits": {"max_batch": 3}}"#,
    )
    .unwrap();
    let s = Settings::load(Some(&file), env(&[]), NO_FLAGS).unwrap();
    assert_eq!((s.grpc_addr.port(), s.limits.max_batch), (9, 3));
}

#[test]
fn reports_every_problem_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.toml");
    std::fs::write(&file, "bogus_key = 1\n").unwrap();
    let err = Settings::load(
        Some(&file),
        env(&[
            ("CHAMFER_MAX_K", "lots"),
            ("CHAMFER_GRPC_ADDR", "nowhere"),
            ("CHAMFER_MAX_BATCH", "0"),
        ]),
        [("api_key", "short")],
    )
    .unwrap_err();
    let text = err.to_string();
    for needle in [
        "bogus_key",
        "CHAMFER_MAX_K",
        "nowhere",
        "max_batch",
        "api_key",
    ] {
        assert!(text.contains(needle), "{needle} missing from {text}");
    }
    assert_eq!(err.problems.len(), 5, "{text}");
}

#[test]
fn deadline_and_work_budget_settings() {
    let s = Settings::load(
        None,
        env(&[
            ("CHAMFER_REQUEST_TIMEOUT_MS", "250"),
            ("CHAMFER_MAX_BATCH_QUERY_TOKENS", "4096"),
        ]),
        NO_FLAGS,
    )
    .unwrap();
    assert_eq!(s.request_timeout(), std::time::Duration::from_millis(250));
    assert_eq!(s.limits.max_batch_query_tokens, 4096);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.toml");
    std::fs::write(
        &file,
        "request_timeout_ms = 0\n[limits]\nmax_batch_query_tokens = 10\n",
    )
    .unwrap();
    let err = Settings::load(Some(&file), env(&[]), NO_FLAGS).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("request_timeout_ms"), "{text}");
    assert!(text.contains("max_batch_query_tokens"), "{text}");
    assert_eq!(err.problems.len(), 2, "{text}");
}

/// Issue 21 item 5: an empty key (environment, file or flags) is refused with its own message, never read
/// as "no key"; unset, the server runs without one.
#[test]
fn an_empty_api_key_is_refused_not_read_as_off() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.toml");
    std::fs::write(&file, "api_key = \"\"\n").unwrap();
    let keyed = dir.path().join("k.toml");
    std::fs::write(&keyed, "api_key = \"k3y-k3y-k3y\"\n").unwrap();
    let cases = [
        (None, env(&[("CHAMFER_API_KEY", "")]), NO_FLAGS.to_vec()),
        (Some(file.as_path()), env(&[]), NO_FLAGS.to_vec()),
        (None, env(&[]), vec![("api_key", "")]),
        // An empty variable over a file's key is refused too (it used to turn the key off).
        (
            Some(keyed.as_path()),
            env(&[("CHAMFER_API_KEY", "")]),
            NO_FLAGS.to_vec(),
        ),
    ];
    for (file, env, flags) in cases {
        let err = Settings::load(file, env, flags).unwrap_err();
        assert_eq!(err.problems.len(), 1, "{err}");
        assert!(err.problems[0].contains("api_key is empty"), "{err}");
    }
    let s = Settings {
        api_key: Some(String::new()),
        ..Settings::default()
    };
    assert!(s
        .validate()
        .unwrap_err()
        .to_string()
        .contains("api_key is empty"));
    // Whitespace is refused as before, and no key at all is fine.
    let err =
        Settings::load(None, env(&[("CHAMFER_API_KEY", "          ")]), NO_FLAGS).unwrap_err();
    assert!(err.to_string().contains("printable ASCII"), "{err}");
    let s = Settings::load(None, env(&[]), NO_FLAGS).unwrap();
    assert_eq!(s.api_key, None);
    let s = Settings::load(None, env(&[("CHAMFER_API_KEY", "k3y-k3y-k3y")]), NO_FLAGS).unwrap();
    assert_eq!(s.api_key.as_deref(), Some("k3y-k3y-k3y"));
}

#[test]
fn connection_and_memory_settings_load_and_are_bounded() {
    let s = Settings::load(
        None,
        env(&[
            ("CHAMFER_MAX_CONNECTIONS", "64"),
            ("CHAMFER_REQUEST_MEMORY_BYTES", "268435456"),
            ("CHAMFER_HEADER_READ_TIMEOUT_MS", "1500"),
            ("CHAMFER_BODY_READ_TIMEOUT_MS", "2500"),
            ("CHAMFER_IDLE_TIMEOUT_MS", "3500"),
        ]),
        NO_FLAGS,
    )
    .unwrap();
    assert_eq!(s.limits.max_connections, 64);
    assert_eq!(s.limits.request_memory_bytes, 256 << 20);
    assert_eq!(
        (
            s.header_read_timeout_ms,
            s.body_read_timeout_ms,
            s.idle_timeout_ms
        ),
        (1500, 2500, 3500)
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.toml");
    std::fs::write(
        &file,
        "header_read_timeout_ms = 0\nbody_read_timeout_ms = 99\nidle_timeout_ms = 3600001\n\
         [limits]\nmax_connections = 1000001\nmax_request_bytes = 4096\nrequest_memory_bytes = 16383\n",
    )
    .unwrap();
    let err = Settings::load(Some(&file), env(&[]), NO_FLAGS).unwrap_err();
    let text = err.to_string();
    for needle in [
        "header_read_timeout_ms",
        "body_read_timeout_ms",
        "idle_timeout_ms",
        "limits.max_connections",
        "limits.request_memory_bytes (16383) must be at least 4 x limits.max_request_bytes (16384)",
    ] {
        assert!(text.contains(needle), "{needle} missing from {text}");
    }
    assert_eq!(err.problems.len(), 5, "{text}");
}

/// Every field of `Settings` (and of `Limits`) has exactly one entry in `SETTINGS`, and every entry is a field:
/// a setting added to the struct without its key, variable and doc (or the reverse) fails here.
#[test]
fn every_field_has_one_entry_in_the_table() {
    let defaults =
        figment::Figment::from(figment::providers::Serialized::defaults(Settings::default()));
    let dict = defaults.extract::<figment::value::Dict>().unwrap();
    let mut fields = Vec::new();
    for (k, v) in dict {
        match v {
            figment::value::Value::Dict(_, inner) => {
                fields.extend(inner.into_keys().map(|i| format!("{k}.{i}")))
            }
            _ => fields.push(k),
        }
    }
    fields.push("api_key".into()); // not serialized (a secret), so not in the defaults' dictionary
    let mut keys: Vec<String> = SETTINGS.iter().map(|s| s.key.to_owned()).collect();
    fields.sort();
    keys.sort();
    assert_eq!(fields, keys);
    // The names follow one rule, so a reader can guess any of them from the file key.
    for s in SETTINGS {
        let leaf = s.key.rsplit('.').next().unwrap();
        assert_eq!(
            s.env,
            format!("CHAMFER_{}", leaf.to_uppercase()),
            "{}",
            s.key
        );
        if let Some(flag) = s.flag {
            assert_eq!(flag, leaf.replace('_', "-"), "{}", s.key);
        }
    }
    // The flags the CLI had before the table keep working.
    for flag in ["data-dir", "http-addr", "grpc-addr", "search-threads"] {
        assert!(SETTINGS.iter().any(|s| s.flag == Some(flag)), "--{flag}");
    }
}

/// Each setting can be set through each of its doors (file key, variable, flag) and reads back.
#[test]
fn every_setting_loads_from_file_env_and_flag() {
    let dir = tempfile::tempdir().unwrap();
    for s in SETTINGS {
        let text = match s.kind {
            Kind::Uint => match s.key {
                "compaction_max_shards" => "3",
                "limits.request_memory_bytes" => "1073741825",
                "limits.max_request_bytes" => "65536",
                "limits.max_batch_query_tokens" => "1000",
                k if k.ends_with("_ms") => "1234",
                _ => "77",
            },
            Kind::Addr => "127.0.0.1:7",
            Kind::Path => "/tmp/elsewhere",
            Kind::Text => "k3y-k3y-k3y",
        };
        let (table, leaf) = s.key.rsplit_once('.').unwrap_or(("", s.key));
        let value = if s.kind == Kind::Uint {
            text.to_owned()
        } else {
            format!("{text:?}")
        };
        let toml = if table.is_empty() {
            format!("{leaf} = {value}\n")
        } else {
            format!("[{table}]\n{leaf} = {value}\n")
        };
        let file = dir.path().join("c.toml");
        std::fs::write(&file, toml).unwrap();
        let via_file = Settings::load(Some(&file), env(&[]), NO_FLAGS).unwrap();
        let via_env = Settings::load(None, env(&[(s.env, text)]), NO_FLAGS).unwrap();
        let via_flag = Settings::load(None, env(&[]), [(s.key, text)]).unwrap();
        assert_ne!(via_file, Settings::default(), "{}", s.key);
        assert_eq!(via_file, via_env, "{}", s.key);
        assert_eq!(via_file, via_flag, "{}", s.key);
    }
}

/// README's configuration table is the one `markdown_table` generates from `SETTINGS` and the defaults.
#[test]
fn readme_config_table_is_generated_from_the_settings() {
    let readme = include_str!("../../../README.md");
    let table = markdown_table();
    assert!(
        readme.contains(&table),
        "README.md's configuration table is out of date; replace it with:\n\n{table}"
    );
}
