//! The `chamfer` command as a user runs it (one integration binary for the server crate).
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn chamfer() -> Command {
    Command::new(env!("CARGO_BIN_EXE_chamfer"))
}

fn demo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .join("data/demo")
}

fn run_with_stdin(args: &[&str], stdin: &str) -> Output {
    let mut child = chamfer()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The command may reject its flags and exit before reading stdin: a broken pipe here is not a failure.
    let _ = child.stdin.take().unwrap().write_all(stdin.as_bytes());
    child.wait_with_output().unwrap()
}

fn floats(out: &Output) -> Vec<f64> {
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The JSON report on the last stdout line of a command that must have succeeded.
fn last_json(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.lines().last().unwrap()).unwrap()
}

#[test]
fn fde_command_reproduces_golden_vectors() {
    // Spec golden vector: d=3, R=1, k_sim=2, seed=42, identity; points e1, e2, e3, -e1, -e2, -e3.
    let pts = r#"{"vectors": [[1,0,0],[0,1,0],[0,0,1],[-1,0,0],[0,-1,0],[0,0,-1]]}"#;
    let out = run_with_stdin(
        &[
            "fde",
            "--query",
            "--dimension",
            "3",
            "--repetitions",
            "1",
            "--simhash-projections",
            "2",
            "--seed",
            "42",
        ],
        pts,
    );
    assert_eq!(
        floats(&out),
        vec![-1.0, 0.0, -1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0, -1.0, 0.0]
    );
    // Spec golden vector: doc + final projection.
    let doc = r#"{"vectors": [[0.5,-0.2,0.1,0.9],[-0.3,0.8,0.4,-0.1],[0.2,0.2,-0.7,0.3]]}"#;
    let args = [
        "fde",
        "--document",
        "--dimension",
        "4",
        "--repetitions",
        "2",
        "--simhash-projections",
        "3",
        "--seed",
        "7",
        "--projection-dimension",
        "2",
        "--fill-empty-partitions",
        "--final-projection-dimension",
        "8",
    ];
    let got = floats(&run_with_stdin(&args, doc));
    let want = [-0.6, -0.7, 0.9, -2.65, 0.5, 1.6, 2.3, -1.2];
    assert_eq!(got.len(), 8);
    for (g, w) in got.iter().zip(want) {
        assert!((g - w).abs() <= 1e-5 * w.abs().max(1.0), "{got:?}");
    }
}

#[test]
fn fde_command_rejects_bad_input_with_a_message() {
    let base = [
        "fde",
        "--query",
        "--dimension",
        "3",
        "--repetitions",
        "1",
        "--simhash-projections",
        "2",
    ];
    for (input, needle) in [
        (r#"{"vectors": []}"#, "empty"),
        (r#"{"vectors": [[1,2]]}"#, "dimension"),
        (r#"{"vectors": [[1,2,1e39]]}"#, ""),
        ("not json", "JSON"),
    ] {
        let out = run_with_stdin(&base, input);
        assert!(!out.status.success(), "accepted {input}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("error") && err.contains(needle),
            "{input}: {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }
    let out = run_with_stdin(
        &[
            "fde",
            "--query",
            "--dimension",
            "3",
            "--simhash-projections",
            "40",
        ],
        r#"{"vectors": [[1,2,3]]}"#,
    );
    assert!(!out.status.success());
}

#[test]
fn index_search_and_bench_on_the_demo_set() {
    let dir = tempfile::tempdir().unwrap();
    let idx = dir.path().join("idx");
    let out = chamfer()
        .args(["index", "--data"])
        .arg(demo())
        .arg("--out")
        .arg(&idx)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The first demo query's exact best document comes first.
    let ds = chamfer_data::dataset::Dataset::open(&demo()).unwrap();
    let top = ds.doc_id(ds.gt_ids(0).unwrap()[0] as usize).to_string();
    let out = chamfer()
        .args(["search", "--json", "--index"])
        .arg(&idx)
        .arg("--data")
        .arg(demo())
        .args(["--query-id", ds.query_id(0), "--k", "3"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let first: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().next().unwrap()).unwrap();
    assert_eq!(first["id"], top.as_str());
    assert!(!first["text"].as_str().unwrap().is_empty());
    let out = chamfer()
        .args(["search", "--index"])
        .arg(&idx)
        .arg("--data")
        .arg(demo())
        .args(["--query-id", "no-such-query"])
        .output()
        .unwrap();
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("no-such-query")
    );

    let out = chamfer()
        .args(["bench", "--runs", "1", "--data"])
        .arg(demo())
        .output()
        .unwrap();
    let report = last_json(&out);
    for key in [
        "n_docs",
        "n_queries",
        "build_s",
        "index_bytes",
        "recall_at_10",
        "ndcg_at_10",
        "qps",
        "p50_ms",
        "p99_ms",
        "exact_qps",
        "exact_recall_at_10",
        "speedup_vs_exact",
        "plan",
        "params",
    ] {
        assert!(
            report.get(key).is_some(),
            "bench report lacks {key}: {report}"
        );
    }
    assert_eq!(report["n_docs"], 300);
    assert!(report["recall_at_10"].as_f64().unwrap() >= 0.99);
    assert_eq!(report["exact_recall_at_10"].as_f64().unwrap(), 1.0);
}

#[test]
fn gen_writes_a_consistent_data_set() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("syn");
    let out = chamfer()
        .args([
            "gen",
            "--docs",
            "120",
            "--queries",
            "6",
            "--seed",
            "3",
            "--like",
        ])
        .arg(demo())
        .arg("--out")
        .arg(&out_dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ds = chamfer_data::dataset::Dataset::open(&out_dir).unwrap();
    assert_eq!((ds.n_docs(), ds.n_queries(), ds.dim()), (120, 6, 128));
    assert_eq!(ds.gt_ids(0).unwrap().len(), 100);
    // The ground truth is really the exact top list: scores descend.
    for j in 0..6 {
        let s = ds.gt_scores(j).unwrap();
        assert!(s.windows(2).all(|w| w[0] >= w[1]));
    }
    let out = chamfer()
        .args(["gen", "--docs", "0", "--out", "/tmp/x", "--like"])
        .arg(demo())
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[test]
fn gen_max_doc_tokens_truncates_documents() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("syn");
    let gen = |max: &str| {
        chamfer()
            .args(["gen", "--docs", "60", "--queries", "3", "--seed", "5"])
            .args(["--max-doc-tokens", max, "--like"])
            .arg(demo())
            .arg("--out")
            .arg(&out_dir)
            .output()
            .unwrap()
    };
    let out = gen("40");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ds = chamfer_data::dataset::Dataset::open(&out_dir).unwrap();
    assert_eq!((ds.n_docs(), ds.n_queries()), (60, 3));
    let lens: Vec<usize> = (0..60).map(|i| ds.doc_len(i)).collect();
    assert!(lens.iter().all(|&n| n <= 40), "{lens:?}");
    assert!(lens.contains(&40), "{lens:?}");
    assert_eq!(ds.gt_ids(0).unwrap().len(), 60);
    let readme = std::fs::read_to_string(out_dir.join("README.md")).unwrap();
    assert!(readme.contains("--max-doc-tokens 40"), "{readme}");
    let out = gen("0");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("max_doc_tokens") && err.contains("must be > 0"),
        "{err}"
    );
}

#[test]
fn soak_on_the_demo_set_loses_nothing() {
    // Its own server on free ports, small flushes and compactions so that background work runs during the
    // ingest, then a kill -9 and a restart; the report is the last stdout line.
    let dir = tempfile::tempdir().unwrap();
    let out = chamfer()
        .args(["soak", "--data"])
        .arg(demo())
        .arg("--dir")
        .arg(dir.path().join("data"))
        .arg("--server-log")
        .arg(dir.path().join("server.log"))
        .args(["--batch", "16", "--pipeline", "4", "--queries", "20"])
        .args([
            "--idle-passes",
            "1",
            "--settle-timeout",
            "60",
            "--ready-timeout",
            "60",
            // kill -9 the moment the ingest ends: flushes and tiered merges are in flight then.
            "--kill-after-ingest",
        ])
        .env("CHAMFER_FLUSH_THRESHOLD_DOCS", "50")
        .env("CHAMFER_COMPACTION_MAX_SHARDS", "2")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let r: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    for key in [
        "docs",
        "ingest_seconds",
        "ingest_docs_per_s",
        "retries",
        "errors",
        "search_qps_during_ingest",
        "p50_ms_during_ingest",
        "p99_ms_during_ingest",
        "p50_ms_idle",
        "p99_ms_idle",
        "p99_ratio",
        "recall_at_10",
        "recall_at_10_after_restart",
        "restart_to_ready_s",
        "documents_after_restart",
        "lost_documents",
        "flushed_bytes",
        "compacted_bytes",
        "write_amplification",
        "server_rss_anon_bytes",
        "machine",
    ] {
        assert!(r.get(key).is_some(), "soak report lacks {key}: {r}");
    }
    assert_eq!(r["docs"], 300, "{r}");
    assert_eq!(r["errors"], 0, "{r}");
    assert_eq!(r["lost_documents"], 0, "{r}");
    assert_eq!(r["documents_after_restart"], r["docs"], "{r}");
    assert_eq!(r["kill_after_ingest"]["lost_documents"], 0, "{r}");
    assert_eq!(r["kill_after_ingest"]["documents"], r["docs"], "{r}");
    assert_eq!(r["settled"], true, "{r}");
    // The demo set reaches 1.0 (measured); the floor leaves room for an engine change, not for a broken run.
    assert!(r["recall_at_10"].as_f64().unwrap() >= 0.9, "{r}");
    assert!(
        r["recall_at_10_after_restart"].as_f64().unwrap() >= 0.9,
        "{r}"
    );
    assert!(r["searches_during_ingest"].as_u64().unwrap() > 0, "{r}");

    // A prefix of the corpus: no recall (the ground truth is for the whole corpus), still nothing lost; a batch
    // over the server's limit is refused before anything starts.
    let out = chamfer()
        .args([
            "soak",
            "--docs",
            "100",
            "--queries",
            "5",
            "--idle-passes",
            "1",
            "--data",
        ])
        .arg(demo())
        .arg("--dir")
        .arg(dir.path().join("prefix"))
        .arg("--server-log")
        .arg(dir.path().join("server.log"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let r: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(r["docs"], 100, "{r}");
    assert_eq!(r["documents_after_restart"], 100, "{r}");
    assert_eq!(r["lost_documents"], 0, "{r}");
    assert!(r["recall_at_10"].is_null(), "{r}");
    assert!(r["recall_at_10_after_restart"].is_null(), "{r}");

    let out = chamfer()
        .args(["soak", "--batch", "5000", "--data"])
        .arg(demo())
        .arg("--dir")
        .arg(dir.path().join("other"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--batch"));
    assert!(!dir.path().join("other").exists());
}

#[test]
fn fde_recall_reports_recall_that_grows_with_candidates() {
    // The demo set has 300 documents: 300 candidates hold every exact top 10.
    let out = chamfer()
        .args([
            "fde-recall",
            "--queries",
            "20",
            "--candidates",
            "5,50,300",
            "--prefixes",
            "2,20",
            "--data",
        ])
        .arg(demo())
        .output()
        .unwrap();
    let report = last_json(&out);
    let rows = report["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 6, "{report}");
    let recall = |p: u64, c: u64| {
        rows.iter()
            .find(|r| r["prefix_repetitions"] == p && r["candidates"] == c)
            .unwrap()["recall_at_10"]
            .as_f64()
            .unwrap()
    };
    for p in [2, 20] {
        assert!(recall(p, 5) <= recall(p, 50) && recall(p, 50) <= recall(p, 300));
        assert_eq!(recall(p, 300), 1.0, "every document is a candidate");
        assert!(recall(p, 5) < 1.0, "5 candidates cannot hold a top 10");
    }
    assert!(
        recall(20, 50) >= recall(2, 50) - 0.05,
        "the full FDE is not worse than a 2-repetition prefix"
    );

    // Bad sizes are refused with a message, before any work.
    for bad in [
        ["--prefixes", "21"],
        ["--candidates", "0"],
        ["--queries", "0"],
        ["--queries", "1000000"],
        // 20 prefixes x 2 x 100000 candidates for each demo query: too many kept candidates.
        [
            "--queries",
            "50 --candidates 100000 --prefixes 1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20",
        ],
    ] {
        let out = chamfer()
            .arg("fde-recall")
            .arg(bad[0])
            .args(bad[1].split(' '))
            .arg("--data")
            .arg(demo())
            .output()
            .unwrap();
        assert!(!out.status.success());
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(bad[0]),
            "{bad:?}"
        );
    }
}

#[test]
fn max_kernel_caps_the_kernels_with_the_same_results() {
    let run = |level: &str| {
        let out = chamfer()
            .args([
                "--max-kernel",
                level,
                "bench",
                "--runs",
                "1",
                "--exact-queries",
                "5",
                "--data",
            ])
            .arg(demo())
            .output()
            .unwrap();
        last_json(&out)
    };
    let portable = run("portable");
    assert_eq!(portable["kernel"], "Portable");
    let best = run("avx512");
    assert_ne!(run("avx2")["kernel"], "Avx512");
    // The recall of every level is the demo set's floor; the levels differ only in rounding.
    for r in [&portable, &best] {
        assert!(r["recall_at_10"].as_f64().unwrap() >= 0.99, "{r}");
    }
}

/// `chamfer ingest --data` and `chamfer load --ingest` against a server in this process: the documents are read
/// from the folder a batch at a time (at most pipeline + 3 batches held, as the ingest reports) and arrive as the
/// file's own f16 values (the wire took 2 bytes a value; what the server stores is bit for bit the file); the
/// texts come along; a re-run reads nothing; both report the ingest rate and their own peak RSS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_and_load_stream_the_data_set_as_f16_in_bounded_memory() {
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
    let grpc = server.addrs().grpc.to_string();
    let run = |args: Vec<String>| {
        tokio::task::spawn_blocking(move || {
            chamfer()
                .args(args)
                .env_remove("CHAMFER_API_KEY")
                .env_remove("CHAMFER_ADDR")
                .output()
                .unwrap()
        })
    };
    let ds = chamfer_data::dataset::Dataset::open(&demo()).unwrap();
    let (n, dim) = (ds.n_docs() as u64, ds.dim() as u64);
    const BATCH: u64 = 16;
    let ingest: Vec<String> = [
        "ingest",
        "--addr",
        &format!("http://{grpc}"),
        "--collection",
        "streamed",
        "--batch",
        &BATCH.to_string(),
        "--data",
        demo().to_str().unwrap(),
    ]
    .map(String::from)
    .to_vec();
    let r = last_json(&run(ingest.clone()).await.unwrap());
    assert_eq!(
        (r["uploaded"].as_u64(), r["skipped"].as_u64()),
        (Some(n), Some(0)),
        "{r}"
    );
    assert_eq!(
        (r["documents"].as_u64(), r["batch"].as_u64()),
        (Some(n), Some(BATCH)),
        "{r}"
    );
    assert_eq!(r["tokens"].as_u64(), Some(ds.n_doc_tokens() as u64), "{r}");
    assert_eq!(
        r["vector_bytes"].as_u64(),
        Some(2 * dim * ds.n_doc_tokens() as u64),
        "{r}"
    );
    assert_eq!(r["wire_dtype"], "f16", "{r}");
    // `--pipeline 4` (the default) batches being uploaded, two waiting, one being read.
    assert_eq!(r["pipeline"], 4, "{r}");
    let held = r["max_docs_held"].as_u64().unwrap();
    assert!((1..=(4 + 3) * BATCH).contains(&held) && held < n, "{r}");
    assert!(r["ingest_docs_per_s"].as_f64().unwrap() > 0.0, "{r}");
    assert!(r["ingest_seconds"].as_f64().unwrap() > 0.0, "{r}");
    if cfg!(target_os = "linux") {
        assert!(r["client_peak_rss_bytes"].as_u64().unwrap() > 0, "{r}");
    }

    // What the server holds is the file, bit for bit, with the text as metadata.
    let client = chamfer_client::Client::connect(format!("http://{grpc}"))
        .await
        .unwrap();
    let rows: Vec<usize> = (0..ds.n_docs()).collect();
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    for chunk in rows.chunks(50) {
        let ids: Vec<&str> = chunk.iter().map(|&i| ds.doc_id(i)).collect();
        let (docs, missing) = client.get("streamed", ids, true).await.unwrap();
        assert!(missing.is_empty(), "{missing:?}");
        assert_eq!(docs.len(), chunk.len());
        for &i in chunk {
            let d = docs.iter().find(|d| d.id == ds.doc_id(i)).unwrap();
            let got = d.vectors.as_ref().unwrap().to_f32().unwrap();
            assert_eq!(bits(&got), bits(ds.doc_tokens(i)), "document {i}");
            let text = d.metadata.as_ref().and_then(|m| m["text"].as_str());
            let want = ds.doc_text(i).map(|t| &t[..t.len().min(2000)]);
            assert_eq!(text, want, "document {i}");
        }
    }

    // A re-run finds everything stored and reads no document.
    let r = last_json(&run(ingest).await.unwrap());
    assert_eq!(
        (r["uploaded"].as_u64(), r["skipped"].as_u64()),
        (Some(0), Some(n)),
        "{r}"
    );
    assert_eq!(r["max_docs_held"], 0, "{r}");

    // `chamfer load --ingest` streams the same way and reports the same figures beside its own.
    let load: Vec<String> = [
        "load",
        "--grpc",
        &grpc,
        "--collection",
        "loaded",
        "--ingest",
        "--duration",
        "0.5",
        "--data",
        demo().to_str().unwrap(),
    ]
    .map(String::from)
    .to_vec();
    let r = last_json(&run(load).await.unwrap());
    assert_eq!(r["errors"], 0, "{r}");
    assert_eq!(r["ingest"]["uploaded"].as_u64(), Some(n), "{r}");
    assert_eq!(r["ingest"]["wire_dtype"], "f16", "{r}");
    // One batch of 64 being uploaded (load keeps the file's order), two waiting, one being read.
    let held = r["ingest"]["max_docs_held"].as_u64().unwrap();
    assert!((1..=(1 + 3) * 64).contains(&held) && held < n, "{r}");
    assert!(r["ingest_docs_per_s"].as_f64().unwrap() > 0.0, "{r}");
    assert_eq!(
        r["ingest_docs_per_s"], r["ingest"]["ingest_docs_per_s"],
        "{r}"
    );
    if cfg!(target_os = "linux") {
        assert!(r["client_peak_rss_bytes"].as_u64().unwrap() > 0, "{r}");
    }
    assert!(r["recall_at_10"].as_f64().unwrap() >= 0.9, "{r}");
    server.shutdown().await.unwrap();
}
