//! Ingests a data set folder (default: the bundled demo set `data/demo`) with a streaming bulk upsert, then
//! answers its first queries and compares them with the folder's exact ground truth.
//!
//! ```text
//! chamfer serve &        # in another terminal
//! cargo run -p chamfer-client --example search -- http://127.0.0.1:50051 data/demo
//! ```
//!
//! Reading the folder uses `chamfer_data::dataset` (a dev-dependency of the examples only; the client itself
//! does not depend on the engine). The documents are read from disk as the upload stream is polled, a batch at a
//! time, so a folder of any size fits; only its ids, queries and ground truth are held.
use std::ops::Range;
use std::path::PathBuf;

use chamfer_client::{Client, Document, Error, Query, Vectors};
use chamfer_data::dataset::{Dataset, DocStream, DocTexts};
use serde_json::json;
use tokio_stream::StreamExt;

/// Documents `rows` of the folder, each with its text as metadata.
fn read_batch(
    docs: &DocStream,
    texts: Option<&DocTexts>,
    rows: Range<usize>,
) -> chamfer_data::Result<Vec<Document>> {
    let (mut tokens, dim) = (Vec::new(), docs.dim());
    docs.read_range(rows.clone(), &mut tokens)?;
    let mut at = 0;
    rows.map(|i| {
        let n = docs.doc_len(i) * dim;
        let v = Vectors::lossless(&tokens[at..at + n], dim);
        at += n;
        let text = match texts {
            Some(t) => t.text(i)?,
            None => None,
        };
        Ok(Document::from_vectors(docs.id(i), v)
            .with_metadata(json!({"text": text.unwrap_or_default()})))
    })
    .collect()
}

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
    // Queries, ground truth and ids; the documents stay on disk until they are sent.
    let ds = Dataset::open_for_queries(&dir)?;
    let name = "example_search";
    let client = Client::connect(addr).await?;

    match client.create_collection(name, ds.dim() as u32).await {
        Ok(_) => {
            // 64 documents per message, read when the stream asks for them; each message is durable when the
            // server reads it. A read error ends the stream (the batches before it stay written).
            let docs = DocStream::open(&dir)?;
            let texts = DocTexts::open(&dir, docs.ids())?;
            let n = docs.len();
            let batches = tokio_stream::iter((0..n).step_by(64)).map_while(move |start| {
                match read_batch(&docs, texts.as_ref(), start..(start + 64).min(n)) {
                    Ok(b) => Some(b),
                    Err(e) => {
                        eprintln!("stopping the upload: {e}");
                        None
                    }
                }
            });
            let r = client.bulk_upsert(name, batches).await?;
            println!("uploaded {} documents of {n}", r.upserted);
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
