//! `chamfer demo`: the server on a local data directory with the bundled demo data set loaded, one real query
//! answered, and the commands to ask more (curl, grpcurl, the CLI).
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use chamfer_client::{Query, Vectors};
use chamfer_data::dataset::Dataset;
use chamfer_server::config::Settings;
use clap::Args;

use super::client::{grpc_body, ingest, rest_body, IngestOpts, Source};

#[derive(Args, Debug)]
pub(crate) struct DemoCmd {
    /// The demo data set folder (default: data/demo of the source tree, found from the current directory or
    /// next to the binary).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Collection to load it into.
    #[arg(long, default_value = "demo")]
    collection: String,
    #[command(flatten)]
    server: super::serve::ServerArgs,
    /// Exit after answering the query (instead of serving until Ctrl-C).
    #[arg(long)]
    once: bool,
}

/// Where the bundled demo set is: `./data/demo`, then up from the binary (`target/<profile>/chamfer` sits two
/// levels below the source tree), then the source tree this binary was built from.
fn find_demo() -> Option<PathBuf> {
    let mut candidates = vec![PathBuf::from("data/demo")];
    if let Ok(exe) = std::env::current_exe() {
        for dir in exe.ancestors().skip(1).take(4) {
            candidates.push(dir.join("data/demo"));
            candidates.push(dir.join("demo"));
        }
    }
    candidates.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/demo"));
    candidates
        .into_iter()
        .find(|p| p.join("doc_ids.txt").is_file())
}

/// The address a local client should dial for a listener bound to `a` (0.0.0.0 -> 127.0.0.1).
fn dialable(a: SocketAddr) -> SocketAddr {
    if a.ip().is_unspecified() {
        SocketAddr::from(([127, 0, 0, 1], a.port()))
    } else {
        a
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,tower_http=off"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

impl DemoCmd {
    pub(crate) fn run(self) -> anyhow::Result<()> {
        init_tracing();
        let settings = self.server.settings()?;
        let dir = match &self.data {
            Some(d) => d.clone(),
            None => find_demo().context(
                "cannot find the demo data set (data/demo): run from the source tree or pass --data DIR",
            )?,
        };
        // Queries and ids in memory; the documents are read a batch at a time when they are loaded.
        let ds = Dataset::open_for_queries(&dir)?;
        let docs = Source::open_dataset(&dir)?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        rt.block_on(self.serve(settings, ds, docs, dir))
    }

    async fn serve(
        self,
        settings: Settings,
        ds: Dataset,
        src: Source,
        dir: PathBuf,
    ) -> anyhow::Result<()> {
        let data_dir = settings.data_dir.clone();
        let server = chamfer_server::serve::start(settings).await?;
        let addrs = server.addrs();
        let (http, grpc) = (dialable(addrs.http), dialable(addrs.grpc));
        let result = async {
            let client = chamfer_client::Client::connect(format!("http://{grpc}")).await?;
            let name = self.collection.as_str();
            match client.collection(name).await? {
                Some(info) => println!(
                    "collection {name} is there ({} documents) in {}",
                    info.stats.unwrap_or_default().documents,
                    data_dir.display()
                ),
                None => {
                    let r = ingest(&client, name, &src, IngestOpts::default()).await?;
                    println!(
                        "loaded {} documents of {} into collection {name} in {:.2} s ({:.0} docs/s); data dir {}",
                        r.uploaded,
                        dir.display(),
                        r.seconds,
                        r.uploaded as f64 / r.seconds.max(1e-9),
                        data_dir.display()
                    );
                }
            }
            let j = 0;
            let rows: Vec<Vec<f32>> = ds
                .query_tokens(j)
                .chunks(ds.dim())
                .map(<[f32]>::to_vec)
                .collect();
            let q = Query::from_vectors(Vectors::lossless(ds.query_tokens(j), ds.dim()))
                .k(5)
                .with_metadata();
            let t0 = std::time::Instant::now();
            let hits = client.search(name, q).await?;
            let ms = t0.elapsed().as_secs_f64() * 1e3;
            let text = |m: &Option<serde_json::Value>| {
                m.as_ref()
                    .and_then(|m| m["text"].as_str())
                    .map(|t| t.chars().take(70).collect::<String>().replace('\n', " "))
                    .unwrap_or_default()
            };
            println!(
                "\nquery {:?} ({} token vectors), top 5 in {ms:.1} ms:",
                ds.query_id(j),
                rows.len()
            );
            for (r, h) in hits.iter().enumerate() {
                println!("  {}. {:<26} {:>8.4}  {}", r + 1, h.id, h.score, text(&h.metadata));
            }
            if let Some(g) = ds.gt_ids(j) {
                println!("  exact Chamfer top 1 (ground truth): {}", ds.doc_id(g[0] as usize));
            }

            // Request bodies for curl and grpcurl, written next to each other in the temp directory.
            let tmp = std::env::temp_dir();
            let rest_file = tmp.join("chamfer-demo-query.json");
            let grpc_file = tmp.join("chamfer-demo-query.grpc.json");
            std::fs::write(&rest_file, rest_body(&rows, 5, true).to_string())?;
            std::fs::write(&grpc_file, grpc_body(name, &rows, 5).to_string())?;
            println!(
                r#"
chamfer is serving: REST on http://{http}, gRPC on {grpc} (data in {dd}).

REST (curl):
  curl -s http://{http}/v1/collections
  curl -s -H 'Content-Type: application/json' -d @{rest} http://{http}/v1/collections/{name}/search
  curl -s http://{http}/v1/collections/{name}/documents/{first_id}

gRPC (grpcurl, with server reflection):
  grpcurl -plaintext {grpc} list
  grpcurl -plaintext -d '{{"name": "{name}"}}' {grpc} chamfer.v1.Collections/Describe
  grpcurl -plaintext -d @ {grpc} chamfer.v1.Search/Search < {grpcf}

CLI:
  chamfer query --addr http://{grpc} --collection {name} --data {dir} --query-id '{qid}' --k 5
  chamfer collections --addr http://{grpc} list"#,
                dd = data_dir.display(),
                rest = rest_file.display(),
                grpcf = grpc_file.display(),
                first_id = urlencode(ds.doc_id(0)),
                dir = dir.display(),
                qid = ds.query_id(j),
            );
            anyhow::Ok(())
        }
        .await;
        if let Err(e) = result {
            let _ = server.shutdown().await;
            return Err(e);
        }
        if self.once {
            return Ok(server.shutdown().await?);
        }
        println!("\nPress Ctrl-C to stop.");
        Ok(server
            .wait(chamfer_server::serve::shutdown_signal())
            .await?)
    }
}

/// Percent-encodes a path segment (ids such as `cp.1#2` hold characters that are special in URLs).
fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
