//! One client-facing schema. The REST DTOs (their OpenAPI) and the proto are the only definitions of a knob:
//!
//! * the OpenAPI document lists exactly the search knobs and collection parameters of [`KNOBS`] and [`PARAMS`],
//!   the collection parameters' `default`s are the engine's, and every default a description or a proto comment
//!   quotes is the engine constant's value (a changed constant fails here until the proto says the same);
//! * every knob and parameter is set through REST, gRPC (the generated stubs) and the Rust client, and read back:
//!   collection parameters from the collection's description, search knobs from the search's echo.
//!
//! The CLI's door is tested in `cli/tests/knobs.rs`, the Python client's in `client/python/tests/test_knobs.py`;
//! both check their knob lists against the same OpenAPI document.
use std::collections::BTreeSet;

use chamfer_client::{pb, Client, Query, Vectors};
use chamfer_index::search as s;
use chamfer_index::shard::{IndexParams, DEFAULT_CODEBOOK_SIZE, MAX_CODEBOOK_SIZE};
use chamfer_tests::fixtures::start_server;
use chamfer_tests::http::Http;
use serde_json::{json, Value};

/// A value other than the default for every numeric collection parameter: (REST section or none, name, value);
/// the others ([`create_body`]) are `projection_type` `identity`, `fill_empty_partitions` true and `storage`
/// `f32`. Read back, `final_projection_dimension` 0 ("none", the only value an index accepts) is `null`.
const PARAMS: &[(Option<&str>, &str, i64)] = &[
    (Some("fde"), "num_repetitions", 6),
    (Some("fde"), "num_simhash_projections", 3),
    (Some("fde"), "seed", 7),
    (Some("fde"), "projection_dimension", 8),
    (Some("fde"), "final_projection_dimension", 0),
    (Some("hnsw"), "prefix_repetitions", 3),
    (Some("hnsw"), "m", 12),
    (Some("hnsw"), "ef_construction", 50),
    (Some("hnsw"), "min_docs", 10),
    (None, "codebook_size", 64),
];

/// A value for every numeric search knob.
const KNOBS: &[(&str, u32)] = &[
    ("nprobe", 7),
    ("ef", 40),
    ("candidates", 30),
    ("rerank", 20),
    ("prefix_repetitions", 3),
];

/// The boolean search knobs.
const FLAGS: &[&str] = &["exact", "with_metadata"];

fn create_body() -> Value {
    let mut body = json!({"name": "knobs", "dimension": 4, "fde": {}, "hnsw": {}});
    for (section, name, v) in PARAMS {
        match section {
            Some(sec) => body[sec][name] = json!(v),
            None => body[name] = json!(v),
        }
    }
    body["fde"]["projection_type"] = json!("identity");
    body["fde"]["fill_empty_partitions"] = json!(true);
    body["hnsw"]["storage"] = json!("f32");
    body
}

/// What a description of the collection created from [`create_body`] must say.
fn check_params(info: &Value, door: &str) {
    for (section, name, v) in PARAMS {
        let got = match section {
            Some(sec) => &info[sec][name],
            None => &info[name],
        };
        let want = if *name == "final_projection_dimension" {
            Value::Null
        } else {
            json!(v)
        };
        assert_eq!(got, &want, "{door}: {name} in {info}");
    }
    assert_eq!(info["fde"]["projection_type"], "identity", "{door}");
    assert_eq!(info["fde"]["fill_empty_partitions"], true, "{door}");
    assert_eq!(info["hnsw"]["storage"], "f32", "{door}");
}

/// A gRPC description in REST's shape (names and values), for [`check_params`].
fn info_json(i: &pb::CollectionInfo) -> Value {
    let (f, h) = (i.fde.unwrap(), i.hnsw.unwrap());
    json!({
        "fde": {
            "num_repetitions": f.num_repetitions, "num_simhash_projections": f.num_simhash_projections,
            "seed": f.seed, "projection_dimension": f.projection_dimension,
            "final_projection_dimension": f.final_projection_dimension.filter(|&d| d > 0),
            "fill_empty_partitions": f.fill_empty_partitions,
            "projection_type": match pb::ProjectionType::try_from(f.projection_type) {
                Ok(pb::ProjectionType::AmsSketch) => "ams_sketch",
                Ok(pb::ProjectionType::Identity) => "identity",
                _ => "?",
            },
        },
        "hnsw": {
            "prefix_repetitions": h.prefix_repetitions, "m": h.m, "ef_construction": h.ef_construction,
            "min_docs": h.min_docs,
            "storage": match pb::VectorStorage::try_from(h.storage) {
                Ok(pb::VectorStorage::F32) => "f32",
                Ok(pb::VectorStorage::F16) => "f16",
                _ => "?",
            },
        },
        "codebook_size": i.codebook_size,
    })
}

fn create_request(name: &str) -> pb::CreateCollectionRequest {
    let p = |n: &str| {
        PARAMS
            .iter()
            .find(|(_, name, _)| *name == n)
            .map(|(_, _, v)| *v)
            .unwrap()
    };
    let u = |n: &str| Some(p(n) as u32);
    pb::CreateCollectionRequest {
        name: name.into(),
        dimension: 4,
        fde: Some(pb::FdeParams {
            num_repetitions: u("num_repetitions"),
            num_simhash_projections: u("num_simhash_projections"),
            seed: Some(p("seed") as u64),
            projection_type: pb::ProjectionType::Identity as i32,
            projection_dimension: u("projection_dimension"),
            fill_empty_partitions: Some(true),
            final_projection_dimension: u("final_projection_dimension"),
        }),
        hnsw: Some(pb::HnswParams {
            prefix_repetitions: u("prefix_repetitions"),
            m: u("m"),
            ef_construction: u("ef_construction"),
            storage: pb::VectorStorage::F32 as i32,
            min_docs: u("min_docs"),
        }),
        codebook_size: u("codebook_size"),
    }
}

fn rows(n: usize, seed: f32) -> Vec<Vec<f32>> {
    (0..n)
        .map(|i| {
            (0..4)
                .map(|j| ((i * 4 + j) as f32 * 0.37 + seed).sin())
                .collect()
        })
        .collect()
}

/// The echo every door must read back for the knobs of [`KNOBS`] (exact off, metadata on) and `k`.
fn want_echo(k: u32) -> Value {
    let mut v = json!({"k": k, "exact": false, "with_metadata": true});
    for (name, value) in KNOBS {
        v[name] = json!(value);
    }
    v
}

/// A proto echo in REST's shape.
fn echo_json(k: &pb::SearchKnobs) -> Value {
    json!({
        "k": k.k, "nprobe": k.nprobe, "ef": k.ef, "candidates": k.candidates, "rerank": k.rerank,
        "prefix_repetitions": k.prefix_repetitions, "exact": k.exact, "with_metadata": k.with_metadata,
    })
}

fn knob(name: &str) -> Option<u32> {
    KNOBS.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
}

#[test]
fn the_schema_lists_exactly_these_knobs_with_the_engines_defaults() {
    let doc = serde_json::to_value(chamfer_server::rest::openapi_document()).unwrap();
    let schemas = &doc["components"]["schemas"];
    let props = |schema: &str| -> BTreeSet<String> {
        schemas[schema]["properties"]
            .as_object()
            .unwrap_or_else(|| panic!("no schema {schema}"))
            .keys()
            .cloned()
            .collect()
    };
    let mut knobs: BTreeSet<String> = props("Search");
    for fixed in ["query", "k", "filter"] {
        assert!(knobs.remove(fixed));
    }
    let ours: BTreeSet<String> = KNOBS
        .iter()
        .map(|(n, _)| n.to_string())
        .chain(FLAGS.iter().map(|n| n.to_string()))
        .collect();
    assert_eq!(knobs, ours, "the Search schema's knobs");
    let mut echo = props("SearchKnobs");
    assert!(echo.remove("k"));
    assert_eq!(echo, ours, "the search echo");

    let mut params: BTreeSet<String> = props("FdeParamsIn");
    params.extend(props("HnswParamsIn"));
    params.extend(props("CreateCollection"));
    for fixed in ["name", "dimension", "fde", "hnsw"] {
        assert!(params.remove(fixed));
    }
    let ours: BTreeSet<String> = PARAMS
        .iter()
        .map(|(_, n, _)| n.to_string())
        .chain(
            ["projection_type", "fill_empty_partitions", "storage"]
                .iter()
                .map(|s| s.to_string()),
        )
        .collect();
    assert_eq!(params, ours, "the collection parameters");

    // Every collection parameter's `default` is the engine's.
    let p = IndexParams::new(4);
    let (f, h) = (&p.fde, &p.hnsw);
    let default = |schema: &str, name: &str| &schemas[schema]["properties"][name]["default"];
    for (name, want) in [
        ("num_repetitions", json!(f.num_repetitions)),
        ("num_simhash_projections", json!(f.num_simhash_projections)),
        ("seed", json!(f.seed)),
        ("projection_dimension", json!(f.projection_dimension)),
        ("fill_empty_partitions", json!(f.fill_empty_partitions)),
        ("projection_type", json!("ams_sketch")),
        ("final_projection_dimension", json!(0)),
    ] {
        assert_eq!(default("FdeParamsIn", name), &want, "fde {name}");
    }
    for (name, want) in [
        ("prefix_repetitions", json!(h.prefix_repetitions)),
        ("m", json!(h.m)),
        ("ef_construction", json!(h.ef_construction)),
        ("min_docs", json!(h.min_docs)),
        ("storage", json!("f16")),
    ] {
        assert_eq!(default("HnswParamsIn", name), &want, "hnsw {name}");
    }
    assert_eq!(
        default("CreateCollection", "codebook_size"),
        &json!(DEFAULT_CODEBOOK_SIZE)
    );

    // The defaults the descriptions quote are the constants' values, in the OpenAPI and in the proto alike.
    let quoted = [
        (
            "rerank",
            format!(
                "(default: {} on shards searched by their inverted file, else 2% of the collection within {}-{}; \
                 at least `k`)",
                s::DEFAULT_IVF_RERANK,
                s::DEFAULT_RERANK_MIN,
                s::DEFAULT_RERANK_MAX
            ),
        ),
        (
            "candidates",
            format!(
                "from the graph (default: {} x `rerank`) or from the inverted file, re-scored by centroid \
                 interaction (default: {} x `rerank`)",
                s::DEFAULT_CANDIDATE_FACTOR,
                s::DEFAULT_IVF_CANDIDATE_FACTOR
            ),
        ),
        (
            "nprobe",
            format!(
                "1-{} (default: the codebook size / {}, within {}-{})",
                s::MAX_NPROBE,
                s::NPROBE_SHARE,
                s::DEFAULT_NPROBE_MIN,
                s::DEFAULT_NPROBE_MAX
            ),
        ),
        ("ef", format!("1-{} (default and minimum: `candidates`)", s::MAX_K)),
    ];
    let words = |t: &str| t.split_whitespace().collect::<Vec<_>>().join(" ");
    let proto = include_str!("../../proto/proto/chamfer/v1/chamfer.proto");
    let proto_comments = words(
        &proto
            .lines()
            .map(|l| l.trim().trim_start_matches("//"))
            .collect::<Vec<_>>()
            .join(" "),
    );
    for (knob, text) in &quoted {
        let description = schemas["Search"]["properties"][knob]["description"]
            .as_str()
            .unwrap_or_else(|| panic!("{knob} has no description"));
        assert!(
            words(description).contains(&words(text)),
            "OpenAPI {knob}: {description:?} does not say {text:?}"
        );
        assert!(
            proto_comments.contains(&words(text)),
            "the proto's {knob} comment does not say {text:?}"
        );
    }
    let codebook = format!("Unset: the engine's default ({DEFAULT_CODEBOOK_SIZE})");
    assert!(
        proto_comments.contains(&codebook),
        "the proto's codebook_size comment does not say {codebook:?}"
    );
    let codebook = schemas["CreateCollection"]["properties"]["codebook_size"]["description"]
        .as_str()
        .unwrap();
    assert!(
        codebook.contains(&format!("0-{MAX_CODEBOOK_SIZE}")),
        "{codebook}"
    );
    // No placeholder is left unfilled, and no description quotes a default of its own (`default` holds it).
    let text = doc.to_string();
    assert!(
        !text.contains("{MAX_") && !text.contains("{DEFAULT_"),
        "a placeholder is left"
    );
    for schema in ["FdeParamsIn", "HnswParamsIn", "CreateCollection", "Search"] {
        for (name, p) in schemas[schema]["properties"].as_object().unwrap() {
            let d = p["description"].as_str().unwrap_or_default();
            assert!(!d.contains("Default "), "{schema}.{name}: {d:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_door_sets_and_reads_back_every_knob() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path(), |_| {}).await;
    let h = Http::new(server.addrs().http, None);

    // REST.
    let (st, info) = h
        .call("POST", "/v1/collections", Some(&create_body()))
        .await;
    assert_eq!(st, 201, "{info}");
    check_params(&info, "REST create");
    check_params(
        &h.ok("GET", "/v1/collections/knobs", None).await,
        "REST describe",
    );
    let docs: Vec<Value> = (0..40)
        .map(|i| json!({"id": format!("d{i}"), "tokens": rows(3, i as f32), "metadata": {"i": i}}))
        .collect();
    h.ok(
        "POST",
        "/v1/collections/knobs/documents",
        Some(&json!({ "documents": docs })),
    )
    .await;
    let mut body = json!({"query": rows(2, 0.5), "k": 5, "with_metadata": true});
    for (name, v) in KNOBS {
        body[name] = json!(v);
    }
    let r = h
        .ok("POST", "/v1/collections/knobs/search", Some(&body))
        .await;
    assert_eq!(r["knobs"], want_echo(5), "REST search");
    assert_eq!(r["hits"].as_array().unwrap().len(), 5);
    let r = h
        .ok(
            "POST",
            "/v1/collections/knobs/search/batch",
            Some(&json!({"searches": [body, {"query": rows(1, 0.1), "k": 2, "exact": true}]})),
        )
        .await;
    assert_eq!(r["results"][0]["knobs"], want_echo(5), "REST batch");
    assert_eq!(
        r["results"][1]["knobs"],
        json!({"k": 2, "exact": true, "with_metadata": false, "nprobe": null, "ef": null, "candidates": null,
               "rerank": null, "prefix_repetitions": null}),
        "REST batch, defaults"
    );

    // gRPC: the generated stubs.
    let client = Client::connect(format!("http://{}", server.addrs().grpc))
        .await
        .unwrap();
    let (mut collections, _, mut search) = client.raw();
    let info = collections
        .create(create_request("knobs_grpc"))
        .await
        .unwrap()
        .into_inner();
    check_params(&info_json(&info), "gRPC create");
    let described = collections
        .describe(pb::DescribeCollectionRequest {
            name: "knobs_grpc".into(),
        })
        .await
        .unwrap()
        .into_inner();
    check_params(&info_json(&described), "gRPC describe");
    let query = Vectors::from_rows(&rows(2, 0.5)).unwrap().into_proto();
    let r = search
        .search(pb::SearchRequest {
            collection: "knobs".into(),
            query: Some(query.clone()),
            k: 5,
            ef: knob("ef"),
            candidates: knob("candidates"),
            rerank: knob("rerank"),
            prefix_repetitions: knob("prefix_repetitions"),
            nprobe: knob("nprobe"),
            exact: false,
            filter: None,
            with_metadata: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(echo_json(&r.knobs.unwrap()), want_echo(5), "gRPC search");
    assert_eq!(r.hits.len(), 5);

    // The Rust client: one builder method per knob.
    let q = Query::from_vectors(Vectors::from_rows(&rows(2, 0.5)).unwrap())
        .k(5)
        .nprobe(knob("nprobe").unwrap())
        .ef(knob("ef").unwrap())
        .candidates(knob("candidates").unwrap())
        .rerank(knob("rerank").unwrap())
        .prefix_repetitions(knob("prefix_repetitions").unwrap())
        .exact(false)
        .with_metadata();
    let r = client.search_with_knobs("knobs", q).await.unwrap();
    assert_eq!(
        echo_json(r.knobs.as_ref().unwrap()),
        want_echo(5),
        "Rust client"
    );
    assert!(r.hits.iter().all(|h| h.metadata.is_some()));
    let echoed = Query::from_vectors(Vectors::from_rows(&rows(1, 0.1)).unwrap())
        .knobs(r.knobs.unwrap())
        .exact(true);
    let r = client.search_with_knobs("knobs", echoed).await.unwrap();
    let mut want = want_echo(5);
    want["exact"] = json!(true);
    assert_eq!(echo_json(&r.knobs.unwrap()), want, "Rust client, exact");
    let info = client
        .create_collection_with(create_request("knobs_rust"))
        .await
        .unwrap();
    check_params(&info_json(&info), "Rust client create");
    server.shutdown().await.unwrap();
}
