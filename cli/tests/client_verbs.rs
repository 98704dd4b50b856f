//! The client, the CLI's client verbs (`ingest`, `query`, `collections`, `healthcheck`, `demo`) and the load
//! generator against the real server, run as this package's binary (`CARGO_BIN_EXE_chamfer`, always built
//! before these tests). Data: the bundled demo set. Shared helpers: `chamfer_tests::e2e`.
use chamfer_index::search::SearchParams;
use chamfer_index::shard::Coding;
use chamfer_tests::e2e::*;
use chamfer_tests::fixtures::{demo_dataset, demo_dir, start_server};
use serde_json::{json, Value};

/// The `chamfer` binary of this package: cargo builds it before these tests, so they never skip.
fn bin() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_BIN_EXE_chamfer"))
}

/// `chamfer ingest` (data set folder and JSON Lines) uploads through the CLI; the Rust client's searches then
/// equal the engine's in-process answers; a re-run skips everything; `chamfer query` prints the same ranking.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_ingest_then_client_search_equals_the_engine() {
    let bin = bin();
    let ds = demo_dataset();
    let n = ds.n_docs();
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path(), |_| {}).await;
    let addr = format!("http://{}", server.addrs().grpc);
    let demo = demo_dir();
    let demo = demo.to_str().unwrap();
    const BATCH: usize = 50;
    let args = [
        "ingest",
        "--addr",
        &addr,
        "--collection",
        "cli",
        "--data",
        demo,
        "--batch",
        "50",
    ];
    let (ok, out, err) = run_chamfer(&bin, &args).await;
    assert!(ok, "chamfer ingest failed: {out}\n{err}");
    assert!(
        out.contains(&format!(
            "ingested {n} documents into cli (0 already stored"
        )),
        "{out}"
    );

    let client = chamfer_client::Client::connect(addr.clone()).await.unwrap();
    let info = client.describe_collection("cli").await.unwrap();
    assert_eq!(info.stats.unwrap().documents as usize, n);
    let queries: Vec<usize> = (0..ds.n_queries()).step_by(3).collect();
    // Every acknowledged batch is one tokens-only memtable segment (no flush yet): mirror the CLI's batches.
    let want = engine_results(
        n,
        BATCH,
        Coding::TokensOnly,
        &SearchParams::new(10),
        &queries,
    );
    for (qi, &q) in queries.iter().enumerate() {
        let query = chamfer_client::Query::from_vectors(chamfer_client::Vectors::lossless(
            ds.query_tokens(q),
            ds.dim(),
        ))
        .k(10)
        .with_metadata();
        let hits = client.search("cli", query).await.unwrap();
        let got: Vec<(String, f32)> = hits.iter().map(|h| (h.id.clone(), h.score)).collect();
        assert_same(&got, &want[qi], &format!("query {q}: client vs engine"));
        // The CLI stored each document's text as metadata.
        let top = doc_row(&hits[0].id);
        assert_eq!(
            hits[0].metadata.as_ref().unwrap()["text"].as_str(),
            ds.doc_text(top).map(|t| &t[..t.len().min(2000)])
        );
    }

    // `chamfer query` prints the same ranking, and the ground truth when asked by data set query.
    let qid = ds.query_id(queries[1]).to_string();
    let (ok, out, err) = run_chamfer(
        &bin,
        &[
            "query",
            "--addr",
            &addr,
            "--collection",
            "cli",
            "--data",
            demo,
            "--query-id",
            &qid,
            "--format",
            "json",
        ],
    )
    .await;
    assert!(ok, "chamfer query failed: {err}");
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    let ids: Vec<&str> = v["hits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["id"].as_str().unwrap())
        .collect();
    let want_ids: Vec<&str> = want[1].iter().map(|h| h.0.as_str()).collect();
    assert_eq!(ids, want_ids);
    let gt0 = ds.doc_id(ds.gt_ids(queries[1]).unwrap()[0] as usize);
    assert_eq!(v["ground_truth"][0], gt0);

    // A re-run is cheap: everything is already stored, nothing is uploaded.
    let (ok, out, err) = run_chamfer(&bin, &args).await;
    assert!(ok, "{err}");
    assert!(
        out.contains(&format!(
            "ingested 0 documents into cli ({n} already stored"
        )),
        "{out}"
    );

    // JSON Lines with metadata, then a filtered search through the CLI.
    let jsonl = dir.path().join("docs.jsonl");
    let lines: Vec<String> = (0..3)
        .map(|i| {
            json!({"id": ds.doc_id(i), "vectors": rows(ds.doc_tokens(i), ds.dim()), "metadata": {"n": i, "tag": if i == 1 { "one" } else { "other" }}})
                .to_string()
        })
        .collect();
    std::fs::write(&jsonl, lines.join("\n")).unwrap();
    let (ok, out, err) = run_chamfer(
        &bin,
        &[
            "ingest",
            "--addr",
            &addr,
            "--jsonl",
            jsonl.to_str().unwrap(),
        ],
    )
    .await;
    assert!(ok, "{out}\n{err}");
    let (docs, missing) = client
        .get("docs", [ds.doc_id(0), ds.doc_id(2)], false)
        .await
        .unwrap();
    assert!(missing.is_empty());
    assert_eq!(docs[1].metadata.as_ref().unwrap()["n"], 2);
    let vecs = dir.path().join("q.json");
    std::fs::write(&vecs, json!(rows(ds.doc_tokens(0), ds.dim())).to_string()).unwrap();
    let (ok, out, err) = run_chamfer(
        &bin,
        &[
            "query",
            "--addr",
            &addr,
            "--collection",
            "docs",
            "--vectors",
            vecs.to_str().unwrap(),
            "--filter",
            "tag=one",
            "--format",
            "ids",
        ],
    )
    .await;
    assert!(ok, "{err}");
    assert_eq!(out.trim(), ds.doc_id(1));

    // Collections verbs.
    let (ok, out, _) = run_chamfer(&bin, &["collections", "--addr", &addr, "list"]).await;
    assert!(ok && out.contains("cli") && out.contains("docs"), "{out}");
    let (ok, _, _) = run_chamfer(&bin, &["collections", "--addr", &addr, "drop", "docs"]).await;
    assert!(ok);
    let (ok, _, err) =
        run_chamfer(&bin, &["collections", "--addr", &addr, "describe", "docs"]).await;
    assert!(!ok && err.contains("not found"), "{err}");
    server.shutdown().await.unwrap();
}

/// `chamfer load --ingest` over gRPC, then over REST: no errors, every answer consistent, and recall@10 equal
/// to the in-process engine's over the same (flushed and compacted: one shard) documents.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_load_reports_the_in_process_recall() {
    let bin = bin();
    let ds = demo_dataset();
    let all: Vec<usize> = (0..ds.n_queries()).collect();
    let want = engine_results(
        ds.n_docs(),
        ds.n_docs(),
        Coding::Train,
        &SearchParams::new(10),
        &all,
    );
    let recall: f64 = all
        .iter()
        .map(|&q| {
            let rows: Vec<usize> = want[q].iter().map(|h| doc_row(&h.0)).collect();
            chamfer_data::eval::recall_at_k(&rows, ds.gt_ids(q).unwrap(), 10)
        })
        .sum::<f64>()
        / all.len() as f64;
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path(), |_| {}).await;
    let demo = demo_dir();
    let grpc_addr = server.addrs().grpc.to_string();
    let http_addr = server.addrs().http.to_string();
    for (proto, addr, ingest) in [("--grpc", &grpc_addr, true), ("--http", &http_addr, false)] {
        let mut args = vec![
            "load",
            proto,
            addr,
            "--data",
            demo.to_str().unwrap(),
            "--collection",
            "load",
            "--concurrency",
            "2",
            "--duration",
            "1.5",
        ];
        if ingest {
            args.push("--ingest");
        }
        let (ok, out, err) = run_chamfer(&bin, &args).await;
        assert!(ok, "chamfer load {proto} failed: {err}");
        let last = out.lines().last().unwrap();
        let v: Value = serde_json::from_str(last).unwrap();
        assert_eq!(v["errors"], 0, "{proto}: {v}\n{err}");
        assert_eq!(v["inconsistent"], 0, "{proto}: {v}");
        assert!(v["requests"].as_u64().unwrap() > 0, "{v}");
        let got = v["recall_at_10"].as_f64().unwrap();
        assert!(
            (got - recall).abs() < 1e-9,
            "{proto}: recall {got} over the network, {recall} in process"
        );
        for key in ["qps", "p50_ms", "p99_ms"] {
            assert!(v[key].as_f64().unwrap() > 0.0, "{key}: {v}");
        }
    }
    // Only loopback targets.
    let (ok, _, err) = run_chamfer(
        &bin,
        &[
            "load",
            "--grpc",
            "10.0.0.1:50051",
            "--data",
            demo.to_str().unwrap(),
            "--duration",
            "1",
        ],
    )
    .await;
    assert!(!ok && err.contains("loopback"), "{err}");
    server.shutdown().await.unwrap();
}

/// `chamfer healthcheck`: exit 0 iff the URL answers 2xx in time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_healthcheck_exit_codes() {
    let bin = bin();
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path(), |s| s.api_key = Some("k3y-k3y-k3y".into())).await;
    let http = server.addrs().http;
    let closed = free_port();
    for (url, want) in [
        (format!("http://{http}/readyz"), true),
        (format!("http://{http}/healthz"), true),
        (format!("http://{http}/nope"), false), // 401 (API key) / 404
        (format!("http://{http}/v1/collections"), false), // 401: the key is required
        (format!("http://127.0.0.1:{closed}/readyz"), false), // refused
    ] {
        let (ok, out, err) =
            run_chamfer(&bin, &["healthcheck", "--http", &url, "--timeout", "2"]).await;
        assert_eq!(ok, want, "{url}: {out} {err}");
    }
    server.shutdown().await.unwrap();
}

/// `chamfer demo --once`: loads the demo set into a fresh data dir, answers a query (top hit = ground truth),
/// prints how to query it; a second run finds the collection and does not load it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_demo_once_loads_and_answers() {
    let bin = bin();
    let ds = demo_dataset();
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let demo = demo_dir();
    let args = [
        "demo",
        "--once",
        "--data",
        demo.to_str().unwrap(),
        "--data-dir",
        data_dir.to_str().unwrap(),
        "--http-addr",
        "127.0.0.1:0",
        "--grpc-addr",
        "127.0.0.1:0",
    ];
    let (ok, out, err) = run_chamfer(&bin, &args).await;
    assert!(ok, "chamfer demo failed: {out}\n{err}");
    assert!(
        out.contains(&format!("loaded {} documents", ds.n_docs())),
        "{out}"
    );
    let gt0 = ds.doc_id(ds.gt_ids(0).unwrap()[0] as usize);
    assert!(
        out.contains(&format!("  1. {gt0} ")),
        "top hit is not {gt0}: {out}"
    );
    for needle in ["curl -s", "grpcurl -plaintext", "chamfer query"] {
        assert!(out.contains(needle), "{needle}: {out}");
    }
    let (ok, out, err) = run_chamfer(&bin, &args).await;
    assert!(ok, "{err}");
    assert!(
        out.contains(&format!(
            "collection demo is there ({} documents)",
            ds.n_docs()
        )),
        "{out}"
    );
}

// ----- packed tokens over REST ----------------------------------------------------------------------------
