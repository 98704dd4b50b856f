//! `chamfer query`: one search with every knob, printed as a table, JSON or ids (or the request body only).
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use base64::Engine as _;
use chamfer_client::{pb, Filter, Query, Vectors};
use chamfer_data::dataset::Dataset;
use clap::{Args, ValueEnum};
use serde_json::{json, Value};

use super::knobs::{add_knobs, knobs_json, KnobArgs};
use super::{runtime, Conn};

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    /// Ranked hits with a metadata excerpt.
    Table,
    /// One JSON object.
    Json,
    /// Hit ids, one per line.
    Ids,
}

/// `chamfer query`.
#[derive(Args, Debug)]
pub(crate) struct QueryCmd {
    #[command(flatten)]
    conn: Conn,
    /// Collection (default: the data set folder's name with --data).
    #[arg(long)]
    collection: Option<String>,
    /// Data set folder holding the query.
    #[arg(long, requires = "query_id", conflicts_with = "vectors")]
    data: Option<PathBuf>,
    /// Query id (a line of query_ids.txt) or row number in --data.
    #[arg(long)]
    query_id: Option<String>,
    /// A JSON file with the query's token vectors: `[[...], ...]` or `{"vectors": [[...], ...]}`.
    #[arg(long, required_unless_present = "data")]
    vectors: Option<PathBuf>,
    /// Results.
    #[arg(long, default_value_t = 10)]
    k: u32,
    /// Metadata condition KEY=VALUE (dots descend into objects). Repeating a key means "any of"; different keys
    /// must all hold. A number or true/false matches both the JSON value and its string form.
    #[arg(long = "filter", value_name = "KEY=VALUE")]
    filters: Vec<String>,
    /// Only these ids (comma-separated).
    #[arg(long, value_delimiter = ',')]
    ids: Vec<String>,
    #[command(flatten)]
    knobs: KnobArgs,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
    /// Print the REST request body (`POST /v1/collections/NAME/search`) for this query and exit without
    /// contacting the server (for curl: `-d @file`).
    #[arg(long)]
    emit_rest_body: bool,
    /// Print the gRPC request as JSON (for `grpcurl -d @`) and exit without contacting the server.
    #[arg(long)]
    emit_grpc_body: bool,
}

/// Parses `KEY=VALUE` conditions into a filter (see `--filter`).
pub(crate) fn parse_filters(filters: &[String], ids: &[String]) -> anyhow::Result<Filter> {
    let mut by_key: Vec<(String, Vec<Value>)> = Vec::new();
    for f in filters {
        let Some((k, v)) = f.split_once('=') else {
            bail!("--filter {f:?}: expected KEY=VALUE");
        };
        let values: Vec<Value> = match serde_json::from_str::<Value>(v) {
            Ok(n @ Value::Number(_)) => vec![n, Value::String(v.into())],
            Ok(b @ Value::Bool(_)) => vec![b, Value::String(v.into())],
            Ok(s @ Value::String(_)) => vec![s],
            _ => vec![Value::String(v.into())],
        };
        match by_key.iter_mut().find(|(key, _)| key == k) {
            Some((_, vs)) => vs.extend(values),
            None => by_key.push((k.to_string(), values)),
        }
    }
    let mut filter = Filter::new();
    for (k, vs) in by_key {
        filter = filter.any_of(k, vs);
    }
    Ok(filter.ids(ids.iter().cloned()))
}

fn read_vectors_file(path: &Path) -> anyhow::Result<Vec<Vec<f32>>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let v: Value = serde_json::from_str(&text).with_context(|| format!("{}", path.display()))?;
    let rows = match &v {
        Value::Array(_) => &v,
        Value::Object(o) => o
            .get("vectors")
            .or_else(|| o.get("query"))
            .or_else(|| o.get("tokens"))
            .with_context(|| format!("{}: no \"vectors\" field", path.display()))?,
        _ => bail!("{}: expected an array of vectors", path.display()),
    };
    serde_json::from_value(rows.clone())
        .with_context(|| format!("{}: vectors must be arrays of numbers", path.display()))
}

/// The REST search body for `rows` (as `chamfer query --emit-rest-body` prints it).
pub(crate) fn rest_body(rows: &[Vec<f32>], k: u32, with_metadata: bool) -> Value {
    json!({"query": rows, "k": k, "with_metadata": with_metadata})
}

/// The grpcurl JSON of a `chamfer.v1.Search/Search` request for `rows` (f32 bytes, base64).
pub(crate) fn grpc_body(collection: &str, rows: &[Vec<f32>], k: u32) -> Value {
    let dim = rows.first().map_or(0, Vec::len);
    let t = chamfer_proto::tokens::pack_f32(&rows.concat(), dim.max(1));
    json!({
        "collection": collection, "k": k, "with_metadata": true,
        "query": {"dtype": "DTYPE_F32", "n_tokens": t.n_tokens, "dim": t.dim, "data": base64::engine::general_purpose::STANDARD.encode(&t.data)},
    })
}

impl QueryCmd {
    pub(crate) fn run(self) -> anyhow::Result<()> {
        // The query, its ground truth and the documents' ids: never the document tokens.
        let ds = self
            .data
            .as_deref()
            .map(Dataset::open_for_queries)
            .transpose()?;
        let (rows, qrow): (Vec<Vec<f32>>, Option<usize>) = match (&ds, &self.vectors) {
            (Some(ds), _) => {
                let id = self.query_id.as_deref().unwrap_or_default();
                let j = ds
                    .query_index(id)
                    .or_else(|| id.parse::<usize>().ok().filter(|&j| j < ds.n_queries()))
                    .with_context(|| format!("no query {id:?} in {}", ds.path().display()))?;
                (
                    ds.query_tokens(j)
                        .chunks(ds.dim())
                        .map(<[f32]>::to_vec)
                        .collect(),
                    Some(j),
                )
            }
            (None, Some(f)) => (read_vectors_file(f)?, None),
            (None, None) => bail!("give --data DIR --query-id ID, or --vectors FILE"),
        };
        let collection = match (&self.collection, &ds) {
            (Some(c), _) => c.clone(),
            (None, Some(ds)) => ds.name(),
            (None, None) => bail!("--collection is required with --vectors"),
        };
        let filter = parse_filters(&self.filters, &self.ids)?;
        let knobs = self.knobs.knobs(self.k, true);
        if self.emit_rest_body || self.emit_grpc_body {
            let mut body = if self.emit_rest_body {
                rest_body(&rows, self.k, true)
            } else {
                grpc_body(&collection, &rows, self.k)
            };
            add_knobs(&mut body, &knobs);
            if !filter.is_empty() {
                let f = filter.into_proto();
                let must: Vec<Value> = f
                    .must
                    .iter()
                    .map(|c| {
                        json!({"key": c.key, "any_of": c.any_of.iter().map(value_json).collect::<Vec<_>>()})
                    })
                    .collect();
                body["filter"] = json!({"must": must, "ids": f.ids});
            }
            println!("{body}");
            return Ok(());
        }
        let q = Query::from_vectors(match &ds {
            Some(ds) => Vectors::lossless(&rows.concat(), ds.dim()),
            None => Vectors::from_rows(&rows)?,
        })
        .knobs(knobs)
        .filter(filter);
        let t0 = Instant::now();
        let answer = runtime()?.block_on(async {
            let client = self.conn.connect().await?;
            anyhow::Ok(client.search_with_knobs(&collection, q).await?)
        })?;
        let hits = answer.hits;
        let ms = t0.elapsed().as_secs_f64() * 1e3;
        let truth: Option<Vec<String>> = match (&ds, qrow) {
            (Some(ds), Some(j)) => ds.gt_ids(j).map(|g| {
                g.iter()
                    .take(self.k as usize)
                    .map(|&r| ds.doc_id(r as usize).to_string())
                    .collect()
            }),
            _ => None,
        };
        match self.format {
            Format::Ids => {
                let ids: String = hits.iter().map(|h| format!("{}\n", h.id)).collect();
                // `| head -n 1` closes the pipe early: that is not an error.
                let mut out = std::io::stdout().lock();
                match std::io::Write::write_all(&mut out, ids.as_bytes()) {
                    Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => return Err(e.into()),
                    _ => {}
                }
            }
            Format::Json => {
                let hits: Vec<Value> = hits
                    .iter()
                    .map(|h| json!({"id": h.id, "score": h.score, "metadata": h.metadata}))
                    .collect();
                let mut out = json!({"collection": collection, "hits": hits, "ms": ms});
                if let Some(k) = &answer.knobs {
                    out["knobs"] = knobs_json(k);
                }
                if let Some(t) = &truth {
                    out["ground_truth"] = json!(t);
                }
                println!("{out}");
            }
            Format::Table => {
                println!(
                    "{} hits from {collection} in {ms:.1} ms (query of {} tokens)",
                    hits.len(),
                    rows.len()
                );
                for (r, h) in hits.iter().enumerate() {
                    let meta = h.metadata.as_ref().map_or(String::new(), |m| {
                        let s = match m.get("text").and_then(Value::as_str) {
                            Some(t) => t.to_string(),
                            None => m.to_string(),
                        };
                        let s: String = s.chars().take(80).collect();
                        s.replace('\n', " ")
                    });
                    println!("{:>3}. {:<32} {:>9.4}  {meta}", r + 1, h.id, h.score);
                }
                if let Some(t) = &truth {
                    let got: HashSet<&str> = hits.iter().map(|h| h.id.as_str()).collect();
                    let found = t.iter().filter(|id| got.contains(id.as_str())).count();
                    println!(
                        "exact top {} (ground truth): {}  (recall {:.2})",
                        t.len(),
                        t.join(" "),
                        found as f64 / t.len().max(1) as f64
                    );
                }
            }
        }
        Ok(())
    }
}

fn value_json(v: &pb::Value) -> Value {
    use pb::value::Kind;
    match &v.kind {
        Some(Kind::StringValue(s)) => json!(s),
        Some(Kind::IntValue(i)) => json!(i),
        Some(Kind::DoubleValue(d)) => json!(d),
        Some(Kind::BoolValue(b)) => json!(b),
        None => Value::Null,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_parse_into_conditions() {
        let f = parse_filters(
            &["section=1".into(), "section=8".into(), "lang=en".into()],
            &["a".into()],
        )
        .unwrap()
        .into_proto();
        assert_eq!(f.must.len(), 2);
        assert_eq!(f.must[0].any_of.len(), 4); // 1, "1", 8, "8"
        assert_eq!(f.ids, vec!["a".to_string()]);
        assert!(parse_filters(&["nokey".into()], &[]).is_err());
    }
}
