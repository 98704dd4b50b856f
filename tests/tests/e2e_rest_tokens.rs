//! End-to-end packed tokens over REST (`{"dtype", "shape", "data"}`, f16 and f32) against JSON rows (the real
//! server on 127.0.0.1; `chamfer_tests::e2e`).
use chamfer_tests::e2e::*;
use chamfer_tests::fixtures::{demo_dataset, start_server};
use chamfer_tests::http::Http;
use serde_json::{json, Value};

/// Standard base64 of f32 values, little-endian.
fn b64_f32(v: &[f32]) -> String {
    use base64::Engine as _;
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Standard base64 of f16 values, little-endian.
fn b64_f16(v: &[f32]) -> String {
    use base64::Engine as _;
    let bytes: Vec<u8> = v
        .iter()
        .flat_map(|x| half::f16::from_f32(*x).to_bits().to_le_bytes())
        .collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The tokens of `data` in one of the three REST forms.
fn tokens_as(form: &str, data: &[f32], dim: usize) -> Value {
    let shape = json!([data.len() / dim, dim]);
    match form {
        "rows" => json!(rows(data, dim)),
        "f32" => json!({"dtype": "f32", "shape": shape, "data": b64_f32(data)}),
        "f16" => json!({"dtype": "f16", "shape": shape, "data": b64_f16(data)}),
        other => panic!("{other}"),
    }
}

/// Packed tokens over REST (`{"dtype", "shape", "data"}`, f16 and f32) are the same documents and queries as
/// JSON rows: three collections ingested in the three forms answer every query form identically (the demo
/// tokens are f16 values, so nothing is rounded); packed read-back returns the stored f16 values; bad packed
/// values fail with the array form's codes, and a bad document's error names it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_packed_tokens_equal_rows() {
    use base64::Engine as _;
    let ds = demo_dataset();
    let dim = ds.dim();
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path(), |s| s.limits.max_tokens_per_doc = 200).await;
    let h = Http::new(server.addrs().http, None);
    let n = 60;
    let forms = ["rows", "f32", "f16"];
    for form in forms {
        h.ok(
            "POST",
            "/v1/collections",
            Some(&json!({"name": form, "dimension": dim})),
        )
        .await;
        for c in (0..n).collect::<Vec<_>>().chunks(20) {
            let docs: Vec<Value> = c
                .iter()
                .map(|&i| json!({"id": ds.doc_id(i), "tokens": tokens_as(form, ds.doc_tokens(i), dim)}))
                .collect();
            let v = h
                .ok(
                    "POST",
                    &format!("/v1/collections/{form}/documents"),
                    Some(&json!({ "documents": docs })),
                )
                .await;
            assert_eq!(v["upserted"].as_u64().unwrap() as usize, c.len());
        }
    }
    for q in 0..5 {
        let query = |form| json!({"query": tokens_as(form, ds.query_tokens(q), dim), "k": 10});
        let want = rest_hits(&h, "rows", query("rows")).await;
        assert_eq!(want.len(), 10);
        for coll in forms {
            for qf in forms {
                let got = rest_hits(&h, coll, query(qf)).await;
                assert_same(
                    &want,
                    &got,
                    &format!("query {q}: {qf} query on the {coll} collection"),
                );
            }
            // The batch route takes packed queries too.
            let batch = h
                .ok(
                    "POST",
                    &format!("/v1/collections/{coll}/search/batch"),
                    Some(&json!({"searches": [query("f16"), query("f32")]})),
                )
                .await;
            for r in batch["results"].as_array().unwrap() {
                assert_eq!(r["hits"][0]["id"].as_str().unwrap(), want[0].0);
            }
        }
    }
    // Read-back: packed is the stored f16 values, rows the same values as numbers.
    let id = ds.doc_id(3);
    let path_id = id.replace('#', "%23");
    let stored = ds.doc_tokens(3);
    let check_packed = |t: &Value| {
        assert_eq!(t["dtype"], "f16");
        assert_eq!(t["shape"], json!([stored.len() / dim, dim]));
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(t["data"].as_str().unwrap())
            .unwrap();
        assert_eq!(t["data"].as_str().unwrap(), b64_f16(stored));
        assert_eq!(bytes.len(), stored.len() * 2);
    };
    for coll in forms {
        let got = h
            .ok(
                "POST",
                &format!("/v1/collections/{coll}/documents/get"),
                Some(&json!({"ids": [id], "with_tokens": true, "packed": true})),
            )
            .await;
        check_packed(&got["documents"][0]["tokens"]);
        let one = h
            .ok(
                "GET",
                &format!("/v1/collections/{coll}/documents/{path_id}?packed=true"),
                None,
            )
            .await;
        check_packed(&one["tokens"]);
        let plain = h
            .ok(
                "GET",
                &format!("/v1/collections/{coll}/documents/{path_id}"),
                None,
            )
            .await;
        // JSON numbers are f32 printed shortest: compare as f32 (a Value holds f64).
        let got: Vec<Vec<f32>> = serde_json::from_value(plain["tokens"].clone()).unwrap();
        assert_eq!(got, rows(stored, dim));
    }
    // Errors: the array form's codes, with the document named.
    let hr = &h;
    let upsert = |tokens: Value| async move {
        hr.call(
            "POST",
            "/v1/collections/f32/documents",
            Some(&json!({"documents": [{"id": "bad-doc", "tokens": tokens}]})),
        )
        .await
    };
    let one_row = vec![0.5f32; dim];
    let cases: Vec<(Value, u16, &str, &str)> = vec![
        (
            json!({"dtype": "f32", "shape": [1, dim], "data": "not base64!"}),
            400,
            "malformed",
            "base64",
        ),
        (
            json!({"dtype": "f32", "shape": [1, dim], "data": b64_f32(&one_row[1..])}),
            400,
            "malformed",
            "bytes",
        ),
        (
            json!({"dtype": "f16", "shape": [2, dim], "data": b64_f16(&one_row)}),
            400,
            "malformed",
            "bytes",
        ),
        (
            json!({"dtype": "f32", "shape": [dim], "data": b64_f32(&one_row)}),
            400,
            "malformed",
            "shape",
        ),
        (
            json!({"dtype": "f32", "shape": [1, dim, 1], "data": b64_f32(&one_row)}),
            400,
            "malformed",
            "shape",
        ),
        (
            json!({"dtype": "f32", "shape": [2, dim / 2], "data": b64_f32(&one_row)}),
            400,
            "dimension_mismatch",
            "dimension",
        ),
        (
            json!({"dtype": "f32", "shape": [0, dim], "data": ""}),
            400,
            "empty",
            "no token",
        ),
        (
            json!({"dtype": "f32", "shape": [201, dim], "data": ""}),
            413,
            "too_many_tokens",
            "too many",
        ),
        (
            json!({"dtype": "f32", "shape": [1, dim], "data": b64_f32(&[vec![1e5f32], vec![0.0; dim - 1]].concat())}),
            400,
            "out_of_range",
            "65504",
        ),
        (
            json!({"dtype": "f32", "shape": [1, dim], "data": b64_f32(&[vec![f32::NAN], vec![0.0; dim - 1]].concat())}),
            400,
            "non_finite",
            "non-finite",
        ),
        (
            json!({"dtype": "f64", "shape": [1, dim], "data": ""}),
            400,
            "malformed",
            "f64",
        ),
        (
            json!([one_row.clone(), vec![0.5f32; dim - 1]]),
            400,
            "dimension_mismatch",
            "token 1 has 127 values, expected 128",
        ),
    ];
    for (tokens, status, code, needle) in cases {
        let (st, v) = upsert(tokens.clone()).await;
        assert_eq!(
            (st, v["code"].as_str()),
            (status, Some(code)),
            "{tokens}: {v}"
        );
        let msg = v["message"].as_str().unwrap();
        assert!(msg.contains(needle), "{tokens}: {msg}");
        // (An unknown dtype fails to parse at all: the message names the JSON position instead.)
        if needle != "f64" {
            assert!(msg.contains("document \"bad-doc\""), "{tokens}: {msg}");
        }
    }
    // The exact message of the example.
    let (_, v) = upsert(json!([
        one_row.clone(),
        one_row.clone(),
        one_row.clone(),
        vec![0.0f32; dim - 1]
    ]))
    .await;
    assert_eq!(
        v["message"],
        format!(
            "document \"bad-doc\": token 3 has {} values, expected {dim}",
            dim - 1
        )
    );
    // Queries: the same checks.
    let (st, v) = h
        .call(
            "POST",
            "/v1/collections/f32/search",
            Some(&json!({"query": {"dtype": "f16", "shape": [1, dim], "data": "%%%"}, "k": 1})),
        )
        .await;
    assert_eq!((st, v["code"].as_str()), (400, Some("malformed")), "{v}");
    let (st, v) = h
        .call(
            "POST",
            "/v1/collections/f32/search",
            Some(&json!({"query": {"dtype": "f16", "shape": [1, dim + 1], "data": b64_f16(&vec![0.5; dim + 1])}, "k": 1})),
        )
        .await;
    assert_eq!(
        (st, v["code"].as_str()),
        (400, Some("dimension_mismatch")),
        "{v}"
    );
    server.shutdown().await.unwrap();
}
