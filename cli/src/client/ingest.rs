//! `chamfer ingest`: a data set folder or JSON Lines, read a batch at a time, uploaded over gRPC or REST.
use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use chamfer_client::ingest::{
    DocumentSource, IngestEvent, IngestOptions, IngestReport, IngestTarget, Progress, SourceError,
};
use chamfer_client::{pb, Document, Vectors};
use chamfer_data::dataset::{folder_name, DocStream, DocTexts};
use clap::{Args, ValueEnum};
use serde_json::{json, Value};

use crate::params::peak_rss_bytes;

use super::{runtime, Conn};

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dtype {
    /// A float16 data set's values as they are (f16); otherwise f16 when every value of a document is exactly
    /// an f16 (no loss), else f32.
    Auto,
    F32,
    F16,
}

/// `chamfer ingest`.
#[derive(Args, Debug)]
pub(crate) struct IngestCmd {
    #[command(flatten)]
    conn: Conn,
    /// Collection (default: the data set folder's name, or the JSONL file's stem). Created when absent.
    #[arg(long)]
    collection: Option<String>,
    /// A data set folder (doc_ids.txt, doc_tokens.npy, doc_offsets.npy, optional docs.jsonl for the text), read
    /// a batch at a time: memory stays bounded whatever its size.
    #[arg(long, conflicts_with = "jsonl", required_unless_present = "jsonl")]
    data: Option<PathBuf>,
    /// A JSON Lines file: one `{"id": "...", "vectors": [[...], ...], "metadata": {...}}` per line (checked
    /// whole first, then read a batch at a time).
    #[arg(long)]
    jsonl: Option<PathBuf>,
    /// Documents per batch (one durable write each).
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Batches uploaded at once, to keep the server's cores busy (1: one at a time, in file order). A JSON Lines
    /// file that repeats an id is always sent one batch at a time, so that its last copy wins.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    pipeline: u16,
    /// Wire encoding of the vectors.
    #[arg(long, value_enum, default_value_t = Dtype::Auto)]
    dtype: Dtype,
    /// Upload every document, even those whose id is already stored (by default a re-run skips them, so an
    /// interrupted ingest resumes where it stopped).
    #[arg(long)]
    force: bool,
    /// Fail instead of creating the collection when it is absent.
    #[arg(long)]
    no_create: bool,
    /// Flush and compact at the end (one shard: the fastest searches).
    #[arg(long)]
    compact: bool,
}

/// Documents to upload, read a batch at a time whatever the input's size: only ids and positions stay in
/// memory. A data set folder's tokens come from `doc_tokens.npy` through a [`DocStream`] (a float16 file's
/// values sent as they are), their texts from `docs.jsonl` through [`DocTexts`]; a JSON Lines file is checked
/// and indexed by line once, and each batch's lines are read and parsed again when the batch is sent.
pub(crate) enum Source {
    Dataset(DatasetDocs),
    Jsonl(JsonlDocs),
}

/// A data set folder's documents.
pub(crate) struct DatasetDocs {
    docs: DocStream,
    texts: Option<DocTexts>,
}

/// A JSON Lines file's documents: their ids and where their lines are.
pub(crate) struct JsonlDocs {
    path: PathBuf,
    file: std::fs::File,
    dim: usize,
    ids: Vec<String>,
    /// True when no id repeats (then batches may be written in any order).
    unique: bool,
    /// Byte offset, length and line number of each document's line.
    lines: Vec<(u64, u32, u32)>,
}

/// One parsed line of a JSON Lines file.
struct JsonDoc {
    id: String,
    data: Vec<f32>,
    metadata: Option<Value>,
}

/// Longest text kept in a document's metadata (the rest is cut at a character boundary).
const MAX_TEXT_BYTES: usize = 2000;

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// `data` (row-major, dimension `dim`) in the wire encoding `dtype`.
fn encode(data: &[f32], dim: usize, dtype: Dtype) -> Vectors {
    match dtype {
        Dtype::Auto => Vectors::lossless(data, dim),
        Dtype::F32 => Vectors::f32(data, dim),
        Dtype::F16 => Vectors::f16(data, dim),
    }
}

impl Source {
    /// Opens the documents of the data set folder `dir`: ids, offsets and the token file's header are read and
    /// checked (and `docs.jsonl` indexed); no token is read yet.
    pub(crate) fn open_dataset(dir: &Path) -> anyhow::Result<Source> {
        let docs = DocStream::open(dir)?;
        let texts = DocTexts::open(dir, docs.ids())?;
        Ok(Source::Dataset(DatasetDocs { docs, texts }))
    }

    /// Checks every line of a JSON Lines file and keeps its ids and line positions (the ids must be known up
    /// front for resuming), not its vectors.
    pub(crate) fn read_jsonl(path: &Path) -> anyhow::Result<Source> {
        Ok(Source::Jsonl(JsonlDocs::open(path)?))
    }

    pub(crate) fn len(&self) -> usize {
        match self {
            Source::Dataset(d) => d.docs.len(),
            Source::Jsonl(j) => j.ids.len(),
        }
    }
    pub(crate) fn dim(&self) -> usize {
        match self {
            Source::Dataset(d) => d.docs.dim(),
            Source::Jsonl(j) => j.dim,
        }
    }
    pub(crate) fn id(&self, i: usize) -> &str {
        match self {
            Source::Dataset(d) => d.docs.id(i),
            Source::Jsonl(j) => &j.ids[i],
        }
    }
    /// True when no id repeats (a data set folder's ids are checked unique when it opens).
    fn unique_ids(&self) -> bool {
        match self {
            Source::Dataset(_) => true,
            Source::Jsonl(j) => j.unique,
        }
    }

    /// Documents `rows` (ascending) in the wire encoding `dtype`, read now.
    fn documents(&self, rows: &[usize], dtype: Dtype) -> anyhow::Result<Vec<Document>> {
        match self {
            Source::Dataset(d) => d.documents(rows, dtype),
            Source::Jsonl(j) => j.documents(rows, dtype),
        }
    }
}

impl DatasetDocs {
    /// One read per run of consecutive rows (a whole batch unless some of it is already stored). A float16
    /// token file's values go out as they are (`auto` or `f16`): f16 stays f16 from the file to the server.
    fn documents(&self, rows: &[usize], dtype: Dtype) -> anyhow::Result<Vec<Document>> {
        let (s, dim) = (&self.docs, self.docs.dim());
        let as_stored = s.is_f16() && dtype != Dtype::F32;
        let (mut halves, mut floats) = (Vec::new(), Vec::new());
        let mut out = Vec::with_capacity(rows.len());
        for run in rows.chunk_by(|a, b| *b == a + 1) {
            let range = run[0]..run[run.len() - 1] + 1;
            if as_stored {
                halves.clear();
                s.read_range_f16(range, &mut halves)?;
            } else {
                floats.clear();
                s.read_range(range, &mut floats)?;
            }
            let mut at = 0;
            for &i in run {
                let n = s.doc_len(i) * dim;
                let v = if as_stored {
                    Vectors::f16_bits(bytemuck::cast_slice(&halves[at..at + n]), dim)
                } else {
                    encode(&floats[at..at + n], dim, dtype)
                };
                at += n;
                let doc = Document::from_vectors(s.id(i), v);
                let text = match &self.texts {
                    Some(t) => t.text(i)?,
                    None => None,
                };
                out.push(match text {
                    Some(t) => doc.with_metadata(json!({"text": truncate(&t, MAX_TEXT_BYTES)})),
                    None => doc,
                });
            }
        }
        Ok(out)
    }
}

/// Parses line `n` of the JSON Lines file `path`; `dim` is the dimension of the lines before it (0: none yet).
fn parse_jsonl_line(line: &[u8], path: &Path, n: u32, dim: &mut usize) -> anyhow::Result<JsonDoc> {
    let at = || format!("{}:{n}", path.display());
    let v: Value = serde_json::from_slice(line).with_context(at)?;
    let id = match &v["id"] {
        Value::String(s) => s.clone(),
        Value::Number(x) => x.to_string(),
        _ => bail!("{}: \"id\" must be a string or a number", at()),
    };
    let rows = v
        .get("vectors")
        .or_else(|| v.get("tokens"))
        .and_then(Value::as_array)
        .with_context(|| format!("{}: \"vectors\" must be an array of arrays", at()))?;
    let mut data = Vec::new();
    for r in rows {
        let r = r
            .as_array()
            .with_context(|| format!("{}: each vector must be an array", at()))?;
        if *dim == 0 {
            *dim = r.len();
        }
        if r.len() != *dim || *dim == 0 {
            bail!("{}: vector of {} values, expected {dim}", at(), r.len());
        }
        for x in r {
            data.push(
                x.as_f64()
                    .with_context(|| format!("{}: {x} is not a number", at()))?
                    as f32,
            );
        }
    }
    let metadata = match v.get("metadata") {
        None | Some(Value::Null) => None,
        Some(m @ Value::Object(_)) => Some(m.clone()),
        Some(_) => bail!("{}: \"metadata\" must be an object", at()),
    };
    Ok(JsonDoc { id, data, metadata })
}

impl JsonlDocs {
    fn open(path: &Path) -> anyhow::Result<JsonlDocs> {
        let cannot = || format!("cannot read {}", path.display());
        let f = std::fs::File::open(path).with_context(cannot)?;
        let file = f.try_clone().with_context(cannot)?;
        let mut r = BufReader::with_capacity(1 << 20, f);
        let (mut line, mut at, mut n) = (Vec::new(), 0u64, 0u32);
        let (mut dim, mut ids, mut lines) = (0, Vec::new(), Vec::new());
        loop {
            line.clear();
            let len = r.read_until(b'\n', &mut line).with_context(cannot)?;
            if len == 0 {
                break;
            }
            let here = at;
            at += len as u64;
            n += 1;
            if line.trim_ascii().is_empty() {
                continue;
            }
            let doc = parse_jsonl_line(&line, path, n, &mut dim)?;
            let len = u32::try_from(len)
                .with_context(|| format!("{}:{n}: line longer than 4 GiB", path.display()))?;
            ids.push(doc.id);
            lines.push((here, len, n));
        }
        if ids.is_empty() {
            bail!("{}: no documents", path.display());
        }
        let unique = {
            let mut seen = HashSet::with_capacity(ids.len());
            ids.iter().all(|id| seen.insert(id.as_str()))
        };
        Ok(JsonlDocs {
            path: path.to_path_buf(),
            file,
            dim,
            ids,
            unique,
            lines,
        })
    }

    fn documents(&self, rows: &[usize], dtype: Dtype) -> anyhow::Result<Vec<Document>> {
        let mut buf = Vec::new();
        rows.iter()
            .map(|&i| {
                let (at, len, n) = self.lines[i];
                buf.resize(len as usize, 0);
                self.file
                    .read_exact_at(&mut buf, at)
                    .with_context(|| format!("cannot read {}", self.path.display()))?;
                let mut dim = self.dim;
                let d = parse_jsonl_line(&buf, &self.path, n, &mut dim)?;
                if d.id != self.ids[i] {
                    bail!(
                        "{}:{n}: the file changed during the ingest",
                        self.path.display()
                    );
                }
                let doc = Document::from_vectors(d.id, encode(&d.data, dim, dtype));
                Ok(match d.metadata {
                    Some(m) => doc.with_metadata(m),
                    None => doc,
                })
            })
            .collect()
    }
}

/// Documents of a [`Source`] in a chosen wire encoding: what the shared ingest (`chamfer_client::ingest`) reads,
/// a batch at a time.
struct Encoded<'a> {
    src: &'a Source,
    dtype: Dtype,
}

impl DocumentSource for Encoded<'_> {
    fn len(&self) -> usize {
        self.src.len()
    }
    fn dim(&self) -> usize {
        self.src.dim()
    }
    fn id(&self, i: usize) -> &str {
        self.src.id(i)
    }
    fn documents(&self, rows: &[usize]) -> Result<Vec<Document>, SourceError> {
        Ok(self.src.documents(rows, self.dtype)?)
    }
}

/// How to ingest.
#[derive(Debug, Clone, Copy)]
pub(crate) struct IngestOpts {
    /// Documents per batch (one durable write each).
    pub batch: usize,
    /// Batches uploaded at once (1 when the source repeats an id).
    pub pipeline: usize,
    pub dtype: Dtype,
    /// Upload ids that are already stored too.
    pub force: bool,
    /// Create the collection when it is absent.
    pub create: bool,
    /// Show a progress bar.
    pub progress: bool,
}

impl Default for IngestOpts {
    fn default() -> Self {
        IngestOpts {
            batch: 64,
            pipeline: 1,
            dtype: Dtype::Auto,
            force: false,
            create: true,
            progress: true,
        }
    }
}

/// Uploads `src` into `collection` over either protocol with the shared ingest of `chamfer-client` (batches
/// read from the source one at a time, resume by id, retry when the server pushes back), drawing its progress
/// callback as a progress bar.
pub(crate) async fn ingest<T: IngestTarget>(
    target: &T,
    collection: &str,
    src: &Source,
    opts: IngestOpts,
) -> anyhow::Result<IngestReport> {
    let pb = if opts.progress {
        crate::params::bar(src.len() as u64, "ingest")
    } else {
        indicatif::ProgressBar::hidden()
    };
    let bar = pb.clone();
    let progress: Progress = Arc::new(move |e: &IngestEvent| match e {
        IngestEvent::Batch { done, .. } => bar.set_position(*done),
        IngestEvent::Retry { wait, error } => {
            bar.suspend(|| eprintln!("the server pushed back; retrying in {wait:?}: {error}"))
        }
    });
    let options = IngestOptions {
        batch: opts.batch,
        pipeline: if src.unique_ids() { opts.pipeline } else { 1 },
        force: opts.force,
        create: opts.create,
        progress: Some(progress),
        ..IngestOptions::default()
    };
    let src = Encoded {
        src,
        dtype: opts.dtype,
    };
    let r = chamfer_client::ingest::ingest(target, collection, &src, &options).await;
    pb.finish_and_clear();
    Ok(r?)
}

/// An ingest's figures as JSON (`ingest_docs_per_s` as `chamfer soak` reports it: documents the server wrote
/// per second of the ingest), with the wire encoding the vectors took.
pub(crate) fn ingest_json(r: &IngestReport, dim: usize) -> Value {
    let values = r.tokens * dim as u64;
    let wire_dtype = match r.bytes {
        _ if values == 0 => Value::Null,
        b if b == 2 * values => json!("f16"),
        b if b == 4 * values => json!("f32"),
        _ => json!("mixed"),
    };
    json!({
        "uploaded": r.uploaded,
        "skipped": r.skipped,
        "ingest_seconds": r.seconds,
        "ingest_docs_per_s": r.uploaded as f64 / r.seconds.max(1e-9),
        "tokens": r.tokens,
        "vector_bytes": r.bytes,
        "wire_dtype": wire_dtype,
        "retries": r.retries,
        "max_docs_held": r.max_docs_held,
    })
}

impl IngestCmd {
    pub(crate) fn run(self) -> anyhow::Result<()> {
        let (src, default_name) = match (&self.data, &self.jsonl) {
            (Some(dir), _) => (Source::open_dataset(dir)?, folder_name(dir)),
            (None, Some(file)) => (
                Source::read_jsonl(file)?,
                file.file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "documents".into()),
            ),
            (None, None) => bail!("give --data DIR or --jsonl FILE"),
        };
        let name = self.collection.clone().unwrap_or(default_name);
        runtime()?.block_on(async {
            let client = self.conn.connect().await?;
            let opts = IngestOpts {
                batch: self.batch,
                pipeline: self.pipeline.into(),
                dtype: self.dtype,
                force: self.force,
                create: !self.no_create,
                progress: true,
            };
            let r = ingest(&client, &name, &src, opts).await?;
            let s = r.seconds.max(1e-9);
            println!(
                "ingested {} documents into {name} ({} already stored, skipped) in {:.2} s: {:.0} docs/s, {:.0} tokens/s, {:.1} MB/s",
                r.uploaded,
                r.skipped,
                r.seconds,
                r.uploaded as f64 / s,
                r.tokens as f64 / s,
                r.bytes as f64 / s / 1e6
            );
            if self.compact {
                client.flush(&name).await?;
                let info = client.compact(&name).await?;
                println!("compacted: {}", stats_line(&info));
            } else {
                println!("{}", stats_line(&client.describe_collection(&name).await?));
            }
            let mut report = ingest_json(&r, src.dim());
            report["collection"] = json!(name);
            report["documents"] = json!(src.len());
            report["batch"] = json!(self.batch);
            report["pipeline"] = json!(if src.unique_ids() { self.pipeline } else { 1 });
            report["client_peak_rss_bytes"] = json!(peak_rss_bytes());
            println!("{report}");
            Ok(())
        })
    }
}

pub(super) fn stats_line(i: &pb::CollectionInfo) -> String {
    let s = i.stats.unwrap_or_default();
    format!(
        "{}: {} documents, {} shards, {} in the memtable, {} tombstones, WAL {} bytes",
        i.name, s.documents, s.shards, s.memtable_documents, s.tombstones, s.wal_bytes
    )
}

#[cfg(test)]
mod tests {
    use chamfer_data::dataset::Dataset;

    use super::*;

    #[test]
    fn truncates_at_char_boundaries() {
        assert_eq!(truncate("héllo", 2), "h");
        assert_eq!(truncate("abc", 10), "abc");
    }

    fn demo() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/demo")
    }

    /// The packed wire bytes of `v` and its dtype.
    fn wire(v: &Vectors) -> (i32, Vec<u8>) {
        let t = v.clone().into_proto();
        (t.dtype, t.data)
    }

    #[test]
    fn a_float16_data_set_goes_out_as_its_own_f16_values_with_its_texts() {
        let src = Source::open_dataset(&demo()).unwrap();
        // The reference reads the whole folder, its own way (f16 converted to f32 exactly).
        let ds = Dataset::open(&demo()).unwrap();
        let Source::Dataset(d) = &src else {
            panic!("a data set folder is a streamed data set source")
        };
        assert!(d.docs.is_f16() && d.texts.is_some());
        assert_eq!((src.len(), src.dim()), (ds.n_docs(), ds.dim()));
        // Runs with gaps (stored documents left out) and a lone last row.
        let rows = [0, 1, 2, 5, 6, 9, 10, 11, ds.n_docs() - 1];
        for dtype in [Dtype::Auto, Dtype::F16] {
            let docs = src.documents(&rows, dtype).unwrap();
            assert_eq!(docs.len(), rows.len());
            for (doc, &i) in docs.iter().zip(&rows) {
                assert_eq!(doc.id, ds.doc_id(i));
                let want: Vec<u8> = ds
                    .doc_tokens(i)
                    .iter()
                    .flat_map(|&x| half::f16::from_f32(x).to_bits().to_le_bytes())
                    .collect();
                assert_eq!(wire(&doc.vectors), (pb::Dtype::F16 as i32, want), "doc {i}");
                let text = doc.metadata.as_ref().map(|m| m["text"].as_str().unwrap());
                assert_eq!(text, ds.doc_text(i).map(|t| truncate(t, MAX_TEXT_BYTES)));
            }
        }
        // Asked for f32, it converts (exactly).
        let docs = src.documents(&[3], Dtype::F32).unwrap();
        assert_eq!(docs[0].vectors.to_f32().unwrap(), ds.doc_tokens(3));
        assert_eq!(wire(&docs[0].vectors).0, pb::Dtype::F32 as i32);
    }

    /// A data set folder of `docs` (each a list of rows of dimension 2) stored as `descr`, without texts.
    fn write_set(dir: &Path, descr: &str, docs: &[&[f32]]) {
        use chamfer_data::dataset::write_npy;
        let tokens: Vec<f32> = docs.concat();
        let bytes: Vec<u8> = match descr {
            "<f4" => tokens.iter().flat_map(|x| x.to_le_bytes()).collect(),
            _ => tokens
                .iter()
                .flat_map(|&x| half::f16::from_f32(x).to_bits().to_le_bytes())
                .collect(),
        };
        write_npy(
            &dir.join("doc_tokens.npy"),
            descr,
            &[tokens.len() / 2, 2],
            &bytes,
        )
        .unwrap();
        let mut offsets = vec![0i64];
        for d in docs {
            offsets.push(offsets.last().unwrap() + d.len() as i64 / 2);
        }
        let b: Vec<u8> = offsets.iter().flat_map(|x| x.to_le_bytes()).collect();
        write_npy(&dir.join("doc_offsets.npy"), "<i8", &[offsets.len()], &b).unwrap();
        let ids: String = (0..docs.len()).map(|i| format!("d{i}\n")).collect();
        std::fs::write(dir.join("doc_ids.txt"), ids).unwrap();
    }

    #[test]
    fn a_float32_data_set_goes_out_as_f32_unless_lossless_in_f16() {
        let tmp = tempfile::tempdir().unwrap();
        let (exact, inexact): (&[f32], &[f32]) = (&[0.5, -1.0, 2.0, 0.25], &[0.1, 0.2]);
        write_set(tmp.path(), "<f4", &[exact, inexact]);
        let src = Source::open_dataset(tmp.path()).unwrap();
        let docs = src.documents(&[0, 1], Dtype::Auto).unwrap();
        assert_eq!(wire(&docs[0].vectors).0, pb::Dtype::F16 as i32);
        assert_eq!(wire(&docs[1].vectors).0, pb::Dtype::F32 as i32);
        assert_eq!(docs[1].vectors.to_f32().unwrap(), inexact);
        assert!(docs.iter().all(|d| d.metadata.is_none()));
        let docs = src.documents(&[1], Dtype::F32).unwrap();
        assert_eq!(docs[0].vectors.to_f32().unwrap(), inexact);
    }

    #[test]
    fn a_damaged_token_is_an_error_naming_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        write_set(tmp.path(), "<f2", &[&[1.0, 2.0], &[f32::INFINITY, 0.0]]);
        let src = Source::open_dataset(tmp.path()).unwrap();
        assert_eq!(src.documents(&[0], Dtype::Auto).unwrap().len(), 1);
        let e = src.documents(&[0, 1], Dtype::Auto).unwrap_err().to_string();
        assert!(
            e.contains("doc_tokens.npy") && e.contains("non-finite"),
            "{e}"
        );
    }

    #[test]
    fn jsonl_is_checked_whole_then_read_by_line() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("docs.jsonl");
        std::fs::write(
            &path,
            "{\"id\": \"a\", \"vectors\": [[1, 2], [3, 4]], \"metadata\": {\"n\": 1}}\n\n  \r\n\
             {\"id\": 7, \"tokens\": [[0.1, 0.2]]}\r\n{\"id\": \"c\", \"vectors\": [[5, 6]]}",
        )
        .unwrap();
        let src = Source::read_jsonl(&path).unwrap();
        assert_eq!((src.len(), src.dim()), (3, 2));
        assert_eq!((src.id(0), src.id(1), src.id(2)), ("a", "7", "c"));
        let docs = src.documents(&[0, 2], Dtype::Auto).unwrap();
        assert_eq!(docs[0].vectors.to_f32().unwrap(), [1.0, 2.0, 3.0, 4.0]);
        assert_eq!(docs[0].metadata, Some(json!({"n": 1})));
        assert_eq!(
            (docs[1].id.as_str(), docs[1].metadata.is_none()),
            ("c", true)
        );
        let docs = src.documents(&[1], Dtype::F32).unwrap();
        assert_eq!(docs[0].vectors.to_f32().unwrap(), [0.1f32, 0.2]);

        // A bad line is found before anything is sent, with its line number.
        std::fs::write(
            &path,
            "{\"id\": \"a\", \"vectors\": [[1, 2]]}\n{\"id\": \"b\", \"vectors\": [[1, 2, 3]]}\n",
        )
        .unwrap();
        let e = Source::read_jsonl(&path).err().unwrap().to_string();
        assert!(
            e.contains("docs.jsonl:2") && e.contains("expected 2"),
            "{e}"
        );
        std::fs::write(&path, "\n").unwrap();
        let e = Source::read_jsonl(&path).err().unwrap().to_string();
        assert!(e.contains("no documents"), "{e}");
    }
}
