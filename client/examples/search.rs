//! Ingests a data set folder (default: the bundled demo set `data/demo`) with a streaming bulk upsert, then
//! answers its first queries and compares them with the folder's exact ground truth.
//!
//! ```text
//! chamfer serve &        # in another terminal
//! cargo run -p chamfer-client --example search -- http://127.0.0.1:50051 data/demo
//! ```
//!
//! Reading the folder uses `chamfer_data::dataset` (a dev-dependency of the examples only; the client itself
//! does not depend on the engine).
use std::path::PathBuf;

use chamfer_client::{Client, Document, Error, Query, Vectors};
use chamfer_data::dataset::Dataset;
use serde_json::json;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr = args
        .next()
        .unwrap_or_else(|| "http://127.0.0.1:50051".into());
    let dir = args
        .next()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../data/demo"));
    let ds = Dataset::open(&dir)?;
    let name = "example_search";
    let client = Client::connect(addr).await?;

    match client.create_collection(name, ds.dim() as u32).await {
        Ok(_) => {
            // 64 documents per message, streamed; each message is durable when the server reads it.
            let batches: Vec<Vec<Document>> = (0..ds.n_docs())
                .collect::<Vec<_>>()
                .chunks(64)
                .map(|c| {
                    c.iter()
                        .map(|&i| {
                            Document::from_vectors(
                                ds.doc_id(i),
                                Vectors::lossless(ds.doc_tokens(i), ds.dim()),
                            )
                            .with_metadata(json!({"text": ds.doc_text(i).unwrap_or("")}))
                        })
                        .collect()
                })
                .collect();
            let r = client
                .bulk_upsert(name, tokio_stream::iter(batches))
                .await?;
            println!("uploaded {} documents", r.upserted);
        }
        Err(Error::AlreadyExists(_)) => println!("collection {name} exists: searching it"),
        Err(e) => return Err(e.into()),
    }

    for j in 0..ds.n_queries().min(3) {
        let q = Query::from_vectors(Vectors::lossless(ds.query_tokens(j), ds.dim()))
            .k(3)
            .with_metadata();
        let hits = client.search(name, q).await?;
        let truth = ds
            .gt_ids(j)
            .map(|g| ds.doc_id(g[0] as usize))
            .unwrap_or("?");
        println!("query {} (exact top 1: {truth})", ds.query_id(j));
        for (r, h) in hits.iter().enumerate() {
            let text = h
                .metadata
                .as_ref()
                .and_then(|m| m["text"].as_str())
                .unwrap_or("");
            let short: String = text.chars().take(70).collect();
            println!("  {}. {:<28} {:>8.4}  {short}", r + 1, h.id, h.score);
        }
    }
    Ok(())
}
