//! The served OpenAPI document against the real server. Every operation the document lists is called (its
//! successes and typical errors); each answer's status must be one the document lists for that operation, and
//! its JSON body must match the documented schema (types, required fields, no undocumented fields, `$ref`,
//! `oneOf`, enums, array bounds). Every route the router serves (the table in `chamfer_server::rest`) must be
//! in the document, and every operation of the document must be exercised here.
use std::collections::BTreeSet;

use chamfer_tests::fixtures::start_server;
use chamfer_tests::http::Http;
use serde_json::{json, Value};

const KEY: &str = "openapi-test-key-0123456789";

/// Checks `v` against `schema` (resolving `$ref`s in `doc`); the error names the JSON path.
fn check(doc: &Value, schema: &Value, v: &Value, at: &str) -> Result<(), String> {
    if let Some(r) = schema["$ref"].as_str() {
        let name = r
            .strip_prefix("#/components/schemas/")
            .ok_or(format!("{at}: ref {r}"))?;
        let target = &doc["components"]["schemas"][name];
        if target.is_null() {
            return Err(format!("{at}: unknown schema {name}"));
        }
        return check(doc, target, v, at);
    }
    if let Some(all) = schema["allOf"].as_array() {
        for s in all {
            check(doc, s, v, at)?;
        }
    }
    for key in ["oneOf", "anyOf"] {
        if let Some(any) = schema[key].as_array() {
            let errs: Vec<String> = any
                .iter()
                .filter_map(|s| check(doc, s, v, at).err())
                .collect();
            if errs.len() == any.len() {
                return Err(format!("{at}: matches no {key} alternative: {errs:?}"));
            }
        }
    }
    if let Some(en) = schema["enum"].as_array() {
        if !en.contains(v) {
            return Err(format!("{at}: {v} is not one of {en:?}"));
        }
    }
    let types: Vec<&str> = match &schema["type"] {
        Value::String(t) => vec![t.as_str()],
        Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
        _ => vec![],
    };
    if !types.is_empty() {
        let ok = types.iter().any(|t| match *t {
            "object" => v.is_object(),
            "array" => v.is_array(),
            "string" => v.is_string(),
            "integer" => v.is_i64() || v.is_u64(),
            "number" => v.is_number(),
            "boolean" => v.is_boolean(),
            "null" => v.is_null(),
            _ => false,
        });
        if !ok {
            return Err(format!("{at}: {v} is not of type {types:?}"));
        }
    }
    if let Some(min) = schema["minimum"].as_f64() {
        if v.as_f64().is_some_and(|x| x < min) {
            return Err(format!("{at}: {v} < minimum {min}"));
        }
    }
    if let Value::Object(obj) = v {
        for r in schema["required"].as_array().into_iter().flatten() {
            let r = r.as_str().unwrap();
            if !obj.contains_key(r) {
                return Err(format!("{at}: required field {r:?} missing in {v}"));
            }
        }
        if let Some(props) = schema["properties"].as_object() {
            for (k, val) in obj {
                match props.get(k) {
                    Some(s) => check(doc, s, val, &format!("{at}.{k}"))?,
                    None if schema["additionalProperties"].is_null() => {
                        return Err(format!("{at}: field {k:?} is not documented"))
                    }
                    None => {}
                }
            }
        }
    }
    if let Value::Array(items) = v {
        if let Some(n) = schema["minItems"].as_u64() {
            if (items.len() as u64) < n {
                return Err(format!("{at}: fewer than {n} items"));
            }
        }
        if let Some(n) = schema["maxItems"].as_u64() {
            if (items.len() as u64) > n {
                return Err(format!("{at}: more than {n} items"));
            }
        }
        if schema["items"].is_object() {
            for (i, item) in items.iter().enumerate() {
                check(doc, &schema["items"], item, &format!("{at}[{i}]"))?;
            }
        }
    }
    Ok(())
}

/// One call: method, the documented path template, the concrete path, a body, the expected status.
struct Case {
    method: &'static str,
    template: &'static str,
    path: String,
    body: Option<Value>,
    want: u16,
}

fn case(
    method: &'static str,
    template: &'static str,
    path: &str,
    body: Option<Value>,
    want: u16,
) -> Case {
    Case {
        method,
        template,
        path: path.into(),
        body,
        want,
    }
}

/// 4-dimensional rows.
fn rows(n: usize, seed: f32) -> Value {
    json!((0..n)
        .map(|i| (0..4)
            .map(|j| ((i * 4 + j) as f32 * 0.37 + seed).sin())
            .collect::<Vec<f32>>())
        .collect::<Vec<_>>())
}

#[tokio::test]
async fn the_served_openapi_matches_every_route() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path(), |s| s.api_key = Some(KEY.into())).await;
    let addr = server.addrs().http;
    let h = Http::new(addr, Some(KEY));
    let (st, doc) = h.call("GET", "/openapi.json", None).await;
    assert_eq!(st, 200);
    assert_eq!(doc["openapi"], "3.1.0");

    let c = "/v1/collections/c";
    let packed = json!({"dtype": "f32", "shape": [1, 4], "data": "AAAAPwAAAL8AAIA+AAAAAA=="});
    let cases = vec![
        case("GET", "/healthz", "/healthz", None, 200),
        case("GET", "/readyz", "/readyz", None, 200),
        case("GET", "/metrics", "/metrics", None, 200),
        case("GET", "/openapi.json", "/openapi.json", None, 200),
        case("GET", "/docs", "/docs", None, 200),
        case(
            "POST",
            "/v1/collections",
            "/v1/collections",
            Some(
                json!({"name": "c", "dimension": 4, "fde": {"num_repetitions": 2, "projection_dimension": 4},
                        "hnsw": {"m": 8, "storage": "f32"}, "codebook_size": 8}),
            ),
            201,
        ),
        case(
            "POST",
            "/v1/collections",
            "/v1/collections",
            Some(json!({"name": "c", "dimension": 4})),
            409,
        ),
        case(
            "POST",
            "/v1/collections",
            "/v1/collections",
            Some(json!({"name": "bad name", "dimension": 4})),
            400,
        ),
        case(
            "POST",
            "/v1/collections",
            "/v1/collections",
            Some(json!({"name": "x", "dimension": 4, "fde": {"nope": 1}})),
            400,
        ),
        case("GET", "/v1/collections", "/v1/collections", None, 200),
        case("GET", "/v1/collections/{name}", c, None, 200),
        case(
            "GET",
            "/v1/collections/{name}",
            "/v1/collections/nope",
            None,
            404,
        ),
        case(
            "POST",
            "/v1/collections/{name}/documents",
            &format!("{c}/documents"),
            Some(json!({"documents": [
                {"id": "a", "tokens": rows(3, 0.1), "metadata": {"lang": "en"}},
                {"id": "b", "tokens": packed},
                {"id": "d", "tokens": rows(2, 0.7)}]})),
            200,
        ),
        case(
            "POST",
            "/v1/collections/{name}/documents",
            &format!("{c}/documents"),
            Some(json!({"documents": [{"id": "e", "tokens": [[1.0, 2.0]]}]})),
            400,
        ),
        case(
            "POST",
            "/v1/collections/{name}/documents",
            "/v1/collections/nope/documents",
            Some(json!({"documents": [{"id": "e", "tokens": rows(1, 0.0)}]})),
            404,
        ),
        case(
            "POST",
            "/v1/collections/{name}/documents/get",
            &format!("{c}/documents/get"),
            Some(json!({"ids": ["a", "zz"], "with_tokens": true})),
            200,
        ),
        case(
            "POST",
            "/v1/collections/{name}/documents/get",
            &format!("{c}/documents/get"),
            Some(json!({"ids": ["a", "b"], "with_tokens": true, "packed": true})),
            200,
        ),
        case(
            "POST",
            "/v1/collections/{name}/documents/get",
            &format!("{c}/documents/get"),
            Some(json!({"ids": []})),
            400,
        ),
        case(
            "GET",
            "/v1/collections/{name}/documents/{id}",
            &format!("{c}/documents/a"),
            None,
            200,
        ),
        case(
            "GET",
            "/v1/collections/{name}/documents/{id}",
            &format!("{c}/documents/a?packed=true"),
            None,
            200,
        ),
        case(
            "GET",
            "/v1/collections/{name}/documents/{id}",
            &format!("{c}/documents/zz"),
            None,
            404,
        ),
        case(
            "POST",
            "/v1/collections/{name}/search",
            &format!("{c}/search"),
            Some(json!({"query": rows(2, 0.2), "k": 2, "with_metadata": true,
                        "filter": {"must": [{"key": "lang", "equals": "en"}]}})),
            200,
        ),
        case(
            "POST",
            "/v1/collections/{name}/search",
            &format!("{c}/search"),
            Some(json!({"query": packed, "k": 3})),
            200,
        ),
        case(
            "POST",
            "/v1/collections/{name}/search",
            &format!("{c}/search"),
            Some(json!({"query": rows(1, 0.0), "k": 0})),
            400,
        ),
        case(
            "POST",
            "/v1/collections/{name}/search",
            &format!("{c}/search"),
            Some(json!({"query": rows(1, 0.0), "k": 1, "nprobe": 0})),
            400,
        ),
        case(
            "POST",
            "/v1/collections/{name}/search",
            &format!("{c}/search"),
            Some(json!({"query": rows(1, 0.0), "k": 1, "nprobe": 4})),
            200,
        ),
        case(
            "POST",
            "/v1/collections/{name}/search/batch",
            &format!("{c}/search/batch"),
            Some(
                json!({"searches": [{"query": rows(1, 0.3), "k": 1}, {"query": rows(2, 0.5), "k": 2, "with_metadata": true}]}),
            ),
            200,
        ),
        case(
            "POST",
            "/v1/collections/{name}/rerank",
            &format!("{c}/rerank"),
            Some(
                json!({"query": rows(2, 0.2), "ids": ["a", "zz", "d"], "k": 5, "with_metadata": true}),
            ),
            200,
        ),
        case(
            "POST",
            "/v1/collections/{name}/rerank",
            &format!("{c}/rerank"),
            Some(json!({"query": rows(2, 0.2), "ids": []})),
            400,
        ),
        case(
            "POST",
            "/v1/rerank",
            "/v1/rerank",
            Some(
                json!({"query": packed, "documents": [{"id": "x", "tokens": rows(2, 0.4)}, {"id": "y", "tokens": packed}], "k": 1}),
            ),
            200,
        ),
        case(
            "POST",
            "/v1/rerank",
            "/v1/rerank",
            Some(
                json!({"query": rows(1, 0.0), "documents": [{"id": "x", "tokens": [[1.0, 2.0]]}]}),
            ),
            400,
        ),
        case(
            "POST",
            "/v1/rerank/batch",
            "/v1/rerank/batch",
            Some(
                json!({"requests": [{"query": rows(1, 0.3), "documents": [{"id": "x", "tokens": rows(2, 0.1)}]}]}),
            ),
            200,
        ),
        case(
            "POST",
            "/v1/collections/{name}/flush",
            &format!("{c}/flush"),
            None,
            200,
        ),
        case(
            "POST",
            "/v1/collections/{name}/compact",
            &format!("{c}/compact"),
            None,
            200,
        ),
        case(
            "POST",
            "/v1/collections/{name}/flush",
            "/v1/collections/nope/flush",
            None,
            404,
        ),
        case(
            "POST",
            "/v1/collections/{name}/documents/delete",
            &format!("{c}/documents/delete"),
            Some(json!({"ids": ["b"]})),
            200,
        ),
        case(
            "DELETE",
            "/v1/collections/{name}/documents/{id}",
            &format!("{c}/documents/d"),
            None,
            200,
        ),
        case("DELETE", "/v1/collections/{name}", c, None, 200),
        case("DELETE", "/v1/collections/{name}", c, None, 404),
    ];
    let mut covered = BTreeSet::new();
    for k in &cases {
        let what = format!("{} {}", k.method, k.path);
        let op = &doc["paths"][k.template][k.method.to_lowercase()];
        assert!(
            op.is_object(),
            "{what}: {} {} is not in the document",
            k.method,
            k.template
        );
        covered.insert((k.template.to_string(), k.method.to_lowercase()));
        let bytes = k
            .body
            .as_ref()
            .map(|b| serde_json::to_vec(b).unwrap())
            .unwrap_or_default();
        let (status, head, body) = h
            .raw_with_head(
                k.method,
                &k.path,
                &bytes,
                k.body.as_ref().map(|_| "application/json"),
            )
            .await;
        assert_eq!(status, k.want, "{what}: {}", String::from_utf8_lossy(&body));
        let resp = &op["responses"][status.to_string()];
        assert!(
            resp.is_object(),
            "{what}: status {status} is not documented: {}",
            op["responses"]
        );
        let content = &resp["content"];
        let head = head.to_ascii_lowercase();
        if let Some(schema) = content.get("application/json").map(|c| &c["schema"]) {
            assert!(
                head.contains("content-type: application/json"),
                "{what}: {head}"
            );
            let v: Value =
                serde_json::from_slice(&body).unwrap_or_else(|e| panic!("{what}: not JSON: {e}"));
            if let Err(e) = check(&doc, schema, &v, "body") {
                panic!("{what} ({status}): {e}\n{v}");
            }
        } else if let Some(ct) = content.as_object().and_then(|m| m.keys().next()) {
            assert!(
                head.contains(&format!("content-type: {ct}")),
                "{what}: {ct} vs {head}"
            );
        }
    }
    // Without the key: 401, documented on every keyed operation; the open ones answer.
    let anon = Http::new(addr, None);
    for (path, method) in doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(p, item)| {
            item.as_object()
                .unwrap()
                .keys()
                .map(move |m| (p.clone(), m.clone()))
        })
    {
        let op = &doc["paths"][&path][&method];
        let concrete = path.replace("{name}", "c").replace("{id}", "a");
        let (status, _) = anon.call(&method.to_uppercase(), &concrete, None).await;
        assert!(
            op["responses"][status.to_string()].is_object(),
            "{method} {path} without a key: {status} is not documented"
        );
        assert!(
            covered.contains(&(path.clone(), method.clone())),
            "{method} {path} is documented but not exercised by this test"
        );
    }
    // Every route of the router (crate::rest's table) is in the document.
    for (path, methods) in [
        ("/healthz", &["get"][..]),
        ("/readyz", &["get"]),
        ("/metrics", &["get"]),
        ("/openapi.json", &["get"]),
        ("/docs", &["get"]),
        ("/v1/collections", &["get", "post"]),
        ("/v1/collections/{name}", &["get", "delete"]),
        ("/v1/collections/{name}/flush", &["post"]),
        ("/v1/collections/{name}/compact", &["post"]),
        ("/v1/collections/{name}/documents", &["post"]),
        ("/v1/collections/{name}/documents/get", &["post"]),
        ("/v1/collections/{name}/documents/delete", &["post"]),
        ("/v1/collections/{name}/documents/{id}", &["get", "delete"]),
        ("/v1/collections/{name}/search", &["post"]),
        ("/v1/collections/{name}/search/batch", &["post"]),
    ] {
        for m in methods {
            assert!(
                doc["paths"][path][m].is_object(),
                "{m} {path} missing from the document"
            );
        }
    }
    // A path that is not a route is not found (so the table above is the whole router).
    let (st, v) = h.call("GET", "/v1/nothing", None).await;
    assert_eq!((st, v["code"].as_str()), (404, Some("not_found")));
    server.shutdown().await.unwrap();
}
