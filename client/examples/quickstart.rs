//! The crate documentation's first example: create a collection, upsert two documents, search with a filter.
//!
//! ```text
//! chamfer serve &        # or: chamfer demo
//! cargo run -p chamfer-client --example quickstart -- http://127.0.0.1:50051
//! ```
use chamfer_client::{Client, Document, Error, Filter, Query};
use serde_json::json;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "http://127.0.0.1:50051".into());
    let client = Client::connect(addr).await?;
    match client.create_collection("quickstart", 4).await {
        Ok(_) | Err(Error::AlreadyExists(_)) => {}
        Err(e) => return Err(e.into()),
    }
    client
        .upsert(
            "quickstart",
            vec![
                // Two token vectors of dimension 4, row-major.
                Document::new("a", &[1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0], 4)
                    .with_metadata(json!({"lang": "en"})),
                Document::new("b", &[0.0, 0.0, 1.0, 0.0], 4).with_metadata(json!({"lang": "de"})),
            ],
        )
        .await?;
    let query = Query::new(&[1.0, 0.0, 0.0, 0.0], 4)
        .k(5)
        .filter(Filter::new().eq("lang", "en"))
        .with_metadata();
    for h in client.search("quickstart", query).await? {
        println!(
            "{}\t{:.4}\t{}",
            h.id,
            h.score,
            h.metadata.unwrap_or_default()
        );
    }
    Ok(())
}
