//! The CLI's door of the one client-facing schema: `chamfer query` has a flag for every search knob and
//! `chamfer collections create` one for every collection parameter of the OpenAPI document (the same names, `_`
//! as `-`), and each reaches the server: collection parameters read back by `collections describe`, search knobs
//! by the search's echo (`query --format json`). REST, gRPC and the Rust client: `tests/tests/knobs.rs`.
use std::process::{Command, Output};

use serde_json::{json, Value};

fn chamfer() -> Command {
    Command::new(env!("CARGO_BIN_EXE_chamfer"))
}

fn ok(out: Output) -> Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

fn help(args: &[&str]) -> String {
    let out = chamfer().args(args).arg("--help").output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

/// The property names of an OpenAPI schema.
fn props(doc: &Value, schema: &str) -> Vec<String> {
    doc["components"]["schemas"][schema]["properties"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect()
}

#[test]
fn every_knob_and_parameter_of_the_schema_has_a_flag() {
    let doc = serde_json::to_value(chamfer_server::rest::openapi_document()).unwrap();
    let query = help(&["query"]);
    for knob in props(&doc, "Search") {
        // `with_metadata`: `chamfer query` always shows metadata; the query itself is --vectors or --data.
        if ["query", "filter", "with_metadata"].contains(&knob.as_str()) {
            continue;
        }
        let flag = format!("--{}", knob.replace('_', "-"));
        assert!(query.contains(&flag), "chamfer query has no {flag}");
    }
    assert!(query.contains("--filter"));
    let create = help(&["collections", "create"]);
    let mut params = props(&doc, "FdeParamsIn");
    params.extend(props(&doc, "HnswParamsIn"));
    params.extend(props(&doc, "CreateCollection"));
    for p in params {
        if ["name", "fde", "hnsw"].contains(&p.as_str()) {
            continue;
        }
        let flag = format!("--{}", p.replace('_', "-"));
        assert!(
            create.contains(&flag),
            "chamfer collections create has no {flag}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_knob_and_parameter_reaches_the_server() {
    use chamfer_server::config::Settings;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let flags = [
        ("data_dir", data.to_str().unwrap()),
        ("http_addr", "127.0.0.1:0"),
        ("grpc_addr", "127.0.0.1:0"),
    ];
    let settings = Settings::load(None, Vec::<(String, String)>::new(), flags).unwrap();
    let server = chamfer_server::serve::start(settings).await.unwrap();
    let addr = format!("http://{}", server.addrs().grpc);
    let run = |args: Vec<String>| {
        let addr = addr.clone();
        tokio::task::spawn_blocking(move || {
            chamfer()
                .args(&args[..1])
                .args(["--addr", &addr])
                .args(&args[1..])
                .env_remove("CHAMFER_API_KEY")
                .env_remove("CHAMFER_ADDR")
                .output()
                .unwrap()
        })
    };
    let args = |s: &str| s.split_whitespace().map(String::from).collect::<Vec<_>>();
    let info = ok(run(args(
        "collections create knobs --dimension 4 --num-repetitions 6 --num-simhash-projections 3 --seed 7 \
         --projection-type identity --projection-dimension 8 --fill-empty-partitions true \
         --final-projection-dimension 0 --prefix-repetitions 3 --m 12 --ef-construction 50 --storage f32 \
         --min-docs 10 --codebook-size 64",
    ))
    .await
    .unwrap());
    let want = json!({
        "num_repetitions": 6, "num_simhash_projections": 3, "seed": 7, "projection_type": "identity",
        "projection_dimension": 8, "fill_empty_partitions": true, "final_projection_dimension": 0,
    });
    assert_eq!(info["fde"], want, "{info}");
    let want = json!({"prefix_repetitions": 3, "m": 12, "ef_construction": 50, "storage": "f32", "min_docs": 10});
    assert_eq!(info["hnsw"], want, "{info}");
    assert_eq!(info["codebook_size"], 64, "{info}");
    let described = ok(run(args("collections describe knobs")).await.unwrap());
    assert_eq!(described, info);

    // A few documents, then a search with every knob.
    let docs: Vec<_> = (0..40)
        .map(|i| {
            let data: Vec<f32> = (0..12)
                .map(|j| ((i * 12 + j) as f32 * 0.37).sin())
                .collect();
            chamfer_client::Document::new(format!("d{i}"), &data, 4)
        })
        .collect();
    let client = chamfer_client::Client::connect(addr.clone()).await.unwrap();
    client.upsert("knobs", docs).await.unwrap();
    let vectors = dir.path().join("q.json");
    std::fs::write(&vectors, "[[0.1, 0.2, 0.3, 0.4], [0.5, -0.1, 0.0, 0.2]]").unwrap();
    let vectors = vectors.to_str().unwrap();
    let r = ok(run(args(&format!(
        "query --collection knobs --vectors {vectors} --k 5 --nprobe 7 --ef 40 --candidates 30 --rerank 20 \
         --prefix-repetitions 3 --format json"
    )))
    .await
    .unwrap());
    // (`--format json` leaves out unset knobs and false flags.)
    let want = json!({"k": 5, "nprobe": 7, "ef": 40, "candidates": 30, "rerank": 20, "prefix_repetitions": 3,
                      "with_metadata": true});
    assert_eq!(r["knobs"], want, "{r}");
    assert_eq!(r["hits"].as_array().unwrap().len(), 5);
    let r = ok(run(args(&format!(
        "query --collection knobs --vectors {vectors} --k 3 --exact --format json"
    )))
    .await
    .unwrap());
    assert_eq!(
        r["knobs"],
        json!({"k": 3, "exact": true, "with_metadata": true}),
        "{r}"
    );
    // The emitted request bodies carry the knobs too.
    let body = ok(run(args(&format!(
        "query --collection knobs --vectors {vectors} --k 5 --nprobe 7 --emit-rest-body"
    )))
    .await
    .unwrap());
    assert_eq!(
        (body["k"].clone(), body["nprobe"].clone()),
        (json!(5), json!(7))
    );
    server.shutdown().await.unwrap();
}
