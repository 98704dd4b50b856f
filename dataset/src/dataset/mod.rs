//! The data set folder format (see `data/demo/README.md` and the manpages README): token matrices as `.npy`
//! (float16 or float32, `[rows, dim]`), `int64` offsets, one id per line, optional exact-Chamfer ground truth,
//! qrels and texts. [`Dataset::open`] validates everything it reads and names the file and the problem.
//!
//! A data set too large for memory is read in two parts: [`Dataset::open_without_doc_tokens`] (ids, offsets,
//! queries, ground truth, qrels; no document token) and a [`DocStream`], which reads documents' tokens from
//! `doc_tokens.npy` on demand with positioned reads (as f32, or as the file's own float16 values); a client
//! that sends documents also reads their texts by row ([`DocTexts`]) and opens the rest with
//! [`Dataset::open_for_queries`].
//!
//! Files: `npy` (the `.npy` reader and the streamed float16 writer), `writer` ([`DatasetWriter`]), `stream`
//! ([`DocStream`], [`DocTexts`]).
use std::collections::HashMap;
use std::fs;
use std::io::{BufRead, BufReader, Seek, Write};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use half::f16;
use half::slice::HalfFloatSliceExt;

use chamfer_index::storage::{FileWriter, LocalDir, PutMode, Storage};

use crate::{DataError, Result};

mod npy;
mod stream;
mod writer;

pub(crate) use npy::F16RowWriter;
use npy::*;
pub use npy::{read_npy_f32, read_npy_i64, write_npy, NpyArray};
pub use stream::{DocStream, DocTexts};
pub use writer::DatasetWriter;

fn ds_err(path: &Path, reason: impl Into<String>) -> DataError {
    DataError::dataset(path, reason)
}

/// One side (documents or queries) of a data set: concatenated tokens, offsets and ids.
#[derive(Debug, Default)]
struct Items {
    /// Every token, row-major; empty when the tokens were not loaded (a valid side has at least one token).
    tokens: Vec<f32>,
    dim: usize,
    offsets: Vec<usize>,
    ids: Vec<String>,
}

/// One side's token file (header checked, data not read yet), offsets and ids, validated against each other.
struct ItemsMeta {
    tok_path: PathBuf,
    tokens: NpyStream,
    dim: usize,
    offsets: Vec<usize>,
    ids: Vec<String>,
}

impl ItemsMeta {
    /// `<prefix>_tokens.npy`, `<prefix>_offsets.npy` and `<prefix>_ids.txt` in `dir`.
    fn open(dir: &Path, prefix: &str, dim: Option<usize>) -> Result<ItemsMeta> {
        ItemsMeta::open_files(
            &dir.join(format!("{prefix}_tokens.npy")),
            &dir.join(format!("{prefix}_offsets.npy")),
            &dir.join(format!("{prefix}_ids.txt")),
            dim,
        )
    }

    /// Everything [`Dataset::open`] checks except the token values: a 2-d float token matrix of dimension `dim`
    /// (when given), offsets from 0 to its row count, increasing strictly, one unique id per item.
    fn open_files(
        tok_path: &Path,
        off_path: &Path,
        ids_path: &Path,
        dim: Option<usize>,
    ) -> Result<ItemsMeta> {
        let toks = NpyStream::open(tok_path)?;
        toks.float_width(tok_path)?;
        let [rows, d] = toks.shape[..] else {
            return Err(ds_err(
                tok_path,
                format!(
                    "expected a 2-d [rows, dim] array, got shape {:?}",
                    toks.shape
                ),
            ));
        };
        if d == 0 {
            return Err(ds_err(tok_path, "token dimension is 0"));
        }
        if let Some(want) = dim.filter(|&w| w != d) {
            return Err(ds_err(
                tok_path,
                format!("token dimension {d} differs from the documents' {want}"),
            ));
        }
        let offs = read_npy_i64(off_path)?;
        if offs.shape.len() != 1 || offs.data.len() < 2 {
            return Err(ds_err(
                off_path,
                format!(
                    "expected a 1-d array of at least 2 offsets, got shape {:?}",
                    offs.shape
                ),
            ));
        }
        if offs.data[0] != 0 || *offs.data.last().unwrap_or(&0) != rows as i64 {
            return Err(ds_err(
                off_path,
                format!("offsets must start at 0 and end at {rows} (the token rows)"),
            ));
        }
        if let Some(i) = offs.data.windows(2).position(|w| w[1] <= w[0]) {
            return Err(ds_err(
                off_path,
                format!("item {i} has no tokens (offsets must increase strictly)"),
            ));
        }
        let text = fs::read_to_string(ids_path).map_err(|e| DataError::io(ids_path, e))?;
        let ids: Vec<String> = text
            .lines()
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .collect();
        if ids.len() != offs.data.len() - 1 {
            return Err(ds_err(
                ids_path,
                format!("{} ids for {} items", ids.len(), offs.data.len() - 1),
            ));
        }
        let mut seen = std::collections::HashSet::new();
        if let Some(dup) = ids.iter().find(|id| !seen.insert(id.as_str())) {
            return Err(ds_err(ids_path, format!("duplicate id {dup:?}")));
        }
        Ok(ItemsMeta {
            tok_path: tok_path.to_path_buf(),
            tokens: toks,
            dim: d,
            offsets: offs.data.iter().map(|&o| o as usize).collect(),
            ids,
        })
    }

    /// Reads every token (checked finite).
    fn load(self) -> Result<Items> {
        let tokens = self.tokens.into_f32(&self.tok_path)?;
        check_finite(&self.tok_path, &tokens, 0, self.dim)?;
        Ok(Items {
            tokens,
            dim: self.dim,
            offsets: self.offsets,
            ids: self.ids,
        })
    }

    /// Offsets and ids only.
    fn without_tokens(self) -> Items {
        Items {
            tokens: Vec::new(),
            dim: self.dim,
            offsets: self.offsets,
            ids: self.ids,
        }
    }
}

/// An error naming the first non-finite value of `values` (token rows from `first_row`, `dim` columns).
fn check_finite(path: &Path, values: &[f32], first_row: usize, dim: usize) -> Result<()> {
    non_finite_at(
        path,
        values.iter().position(|v| !v.is_finite()),
        first_row,
        dim,
    )
}

/// An error naming the non-finite value at position `p` (when there is one) of token rows from `first_row`.
fn non_finite_at(path: &Path, p: Option<usize>, first_row: usize, dim: usize) -> Result<()> {
    match p {
        Some(p) => Err(ds_err(
            path,
            format!(
                "non-finite value at row {}, column {}",
                first_row + p / dim,
                p % dim
            ),
        )),
        None => Ok(()),
    }
}

impl Items {
    /// Item `i`'s tokens; empty when the tokens were not loaded.
    fn tokens(&self, i: usize, dim: usize) -> &[f32] {
        self.tokens
            .get(self.offsets[i] * dim..self.offsets[i + 1] * dim)
            .unwrap_or(&[])
    }
}

/// A data set folder, loaded and validated.
#[derive(Debug)]
pub struct Dataset {
    path: PathBuf,
    dim: usize,
    docs: Items,
    queries: Items,
    gt_ids: Option<(Vec<i32>, usize)>,
    gt_scores: Option<Vec<f32>>,
    qrels: Option<HashMap<String, HashMap<String, f32>>>,
    doc_texts: Option<Vec<String>>,
}

impl Dataset {
    /// Opens `dir`. Documents are required; queries, ground truth, qrels and `docs.jsonl` are optional (queries
    /// must come with their ids and offsets; ground truth needs queries).
    pub fn open(dir: &Path) -> Result<Dataset> {
        Dataset::open_with(dir, true, true)
    }

    /// Opens `dir` like [`Dataset::open`] (same checks, same errors) but without reading the document tokens:
    /// for data sets larger than memory, whose documents are then read through a [`DocStream`].
    /// `doc_tokens.npy`'s header is still checked against the offsets; its values are not read (so not checked
    /// finite). [`Dataset::doc_tokens`] and [`Dataset::all_doc_tokens`] then return empty slices,
    /// [`Dataset::has_doc_tokens`] is false; everything else (ids, [`Dataset::n_doc_tokens`], queries, ground
    /// truth, qrels, texts) is as with [`Dataset::open`].
    pub fn open_without_doc_tokens(dir: &Path) -> Result<Dataset> {
        Dataset::open_with(dir, true, false)
    }

    /// Opens `dir` like [`Dataset::open_without_doc_tokens`] and also without `docs.jsonl`'s texts
    /// ([`Dataset::doc_text`] is then always `None`; [`DocTexts`] reads them by row on demand): what a client that
    /// sends the queries and checks the answers against the ground truth needs, whatever the corpus's size
    /// (document ids and offsets, queries, ground truth, qrels).
    pub fn open_for_queries(dir: &Path) -> Result<Dataset> {
        Dataset::open_with(dir, false, false)
    }

    fn open_with(dir: &Path, texts: bool, doc_tokens: bool) -> Result<Dataset> {
        if !dir.is_dir() {
            return Err(ds_err(dir, "not a directory"));
        }
        let docs = ItemsMeta::open(dir, "doc", None)?;
        let docs = if doc_tokens {
            docs.load()?
        } else {
            docs.without_tokens()
        };
        let dim = docs.dim;
        let queries = if dir.join("query_tokens.npy").exists() {
            ItemsMeta::open(dir, "query", Some(dim))?.load()?
        } else {
            Items::default()
        };
        let nq = queries.ids.len();
        let gt_path = dir.join("gt_chamfer_ids.npy");
        let gt_ids = if gt_path.exists() && nq > 0 {
            let a = read_npy_i64(&gt_path)?;
            let [rows, width] = a.shape[..] else {
                return Err(ds_err(&gt_path, "expected [queries, k]"));
            };
            if rows != nq {
                return Err(ds_err(&gt_path, format!("{rows} rows for {nq} queries")));
            }
            let n = docs.ids.len() as i64;
            if let Some(v) = a.data.iter().find(|&&v| v < 0 || v >= n) {
                return Err(ds_err(
                    &gt_path,
                    format!("document row {v} out of range 0..{n}"),
                ));
            }
            Some((
                a.data.iter().map(|&v| v as i32).collect::<Vec<i32>>(),
                width,
            ))
        } else {
            None
        };
        let sc_path = dir.join("gt_chamfer_scores.npy");
        let gt_scores = match &gt_ids {
            Some((ids, _)) if sc_path.exists() => {
                let a = read_npy_f32(&sc_path)?;
                if a.data.len() != ids.len() {
                    return Err(ds_err(&sc_path, "shape differs from gt_chamfer_ids.npy"));
                }
                Some(a.data)
            }
            _ => None,
        };
        let qrels_path = dir.join("qrels.tsv");
        let qrels = if qrels_path.exists() {
            let text =
                fs::read_to_string(&qrels_path).map_err(|e| DataError::io(&qrels_path, e))?;
            let mut m: HashMap<String, HashMap<String, f32>> = HashMap::new();
            for (ln, line) in text
                .lines()
                .enumerate()
                .filter(|(_, l)| !l.trim().is_empty())
            {
                let f: Vec<&str> = line.split('\t').collect();
                let grade = f.get(2).map(|g| g.trim().parse::<f32>());
                match (f.len(), grade) {
                    (3, Some(Ok(g))) => {
                        m.entry(f[0].to_string())
                            .or_default()
                            .insert(f[1].to_string(), g);
                    }
                    _ => {
                        return Err(ds_err(
                            &qrels_path,
                            format!("line {}: expected query_id<TAB>doc_id<TAB>grade", ln + 1),
                        ))
                    }
                }
            }
            Some(m)
        } else {
            None
        };
        let texts_path = dir.join("docs.jsonl");
        let doc_texts = if texts && texts_path.exists() {
            let text =
                fs::read_to_string(&texts_path).map_err(|e| DataError::io(&texts_path, e))?;
            let mut by_id: HashMap<String, String> = HashMap::new();
            for (ln, line) in text
                .lines()
                .enumerate()
                .filter(|(_, l)| !l.trim().is_empty())
            {
                let v: serde_json::Value = serde_json::from_str(line)
                    .map_err(|e| ds_err(&texts_path, format!("line {}: {e}", ln + 1)))?;
                if let (Some(id), Some(t)) = (
                    v.get("id").and_then(|x| x.as_str()),
                    v.get("text").and_then(|x| x.as_str()),
                ) {
                    by_id.insert(id.to_string(), t.to_string());
                }
            }
            Some(
                docs.ids
                    .iter()
                    .map(|id| by_id.remove(id).unwrap_or_default())
                    .collect(),
            )
        } else {
            None
        };
        Ok(Dataset {
            path: dir.to_path_buf(),
            dim,
            docs,
            queries,
            gt_ids,
            gt_scores,
            qrels,
            doc_texts,
        })
    }

    /// The folder it was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }
    /// The folder's name (the default collection name).
    pub fn name(&self) -> String {
        folder_name(&self.path)
    }
    /// Token dimension.
    pub fn dim(&self) -> usize {
        self.dim
    }
    /// Number of documents.
    pub fn n_docs(&self) -> usize {
        self.docs.ids.len()
    }
    /// Number of queries (0 when the folder has none).
    pub fn n_queries(&self) -> usize {
        self.queries.ids.len()
    }
    /// Total document token vectors (from the offsets: also without the document tokens in memory).
    pub fn n_doc_tokens(&self) -> usize {
        self.docs.offsets.last().copied().unwrap_or(0)
    }
    /// Token count of document `i` (panics if `i >= n_docs()`).
    pub fn doc_len(&self, i: usize) -> usize {
        self.docs.offsets[i + 1] - self.docs.offsets[i]
    }
    /// False when opened by [`Dataset::open_without_doc_tokens`] (the document tokens are not in memory).
    pub fn has_doc_tokens(&self) -> bool {
        !self.docs.tokens.is_empty()
    }
    /// External id of document `i` (panics if `i >= n_docs()`).
    pub fn doc_id(&self, i: usize) -> &str {
        &self.docs.ids[i]
    }
    /// Document `i`'s tokens, row-major (panics if `i >= n_docs()`); empty when the data set was opened by
    /// [`Dataset::open_without_doc_tokens`] (read them with a [`DocStream`]).
    pub fn doc_tokens(&self, i: usize) -> &[f32] {
        self.docs.tokens(i, self.dim)
    }
    /// Every document token, row-major, documents one after another; empty when the data set was opened by
    /// [`Dataset::open_without_doc_tokens`].
    pub fn all_doc_tokens(&self) -> &[f32] {
        &self.docs.tokens
    }
    /// External id of query `j` (panics if `j >= n_queries()`).
    pub fn query_id(&self, j: usize) -> &str {
        &self.queries.ids[j]
    }
    /// Row of query `id`.
    pub fn query_index(&self, id: &str) -> Option<usize> {
        self.queries.ids.iter().position(|q| q == id)
    }
    /// Query `j`'s tokens, row-major.
    pub fn query_tokens(&self, j: usize) -> &[f32] {
        self.queries.tokens(j, self.dim)
    }
    /// Ground-truth document rows of query `j`, best first.
    pub fn gt_ids(&self, j: usize) -> Option<&[i32]> {
        self.gt_ids.as_ref().map(|(v, w)| &v[j * w..(j + 1) * w])
    }
    /// Ground-truth scores of query `j`.
    pub fn gt_scores(&self, j: usize) -> Option<&[f32]> {
        let w = self.gt_ids.as_ref()?.1;
        self.gt_scores.as_ref().map(|v| &v[j * w..(j + 1) * w])
    }
    /// Relevance labels of query `j` (doc id -> grade), when the folder has qrels.
    pub fn qrels(&self, j: usize) -> Option<&HashMap<String, f32>> {
        static EMPTY: std::sync::OnceLock<HashMap<String, f32>> = std::sync::OnceLock::new();
        self.qrels.as_ref().map(|m| {
            m.get(self.query_id(j))
                .unwrap_or_else(|| EMPTY.get_or_init(HashMap::new))
        })
    }
    /// True when qrels.tsv exists.
    pub fn has_qrels(&self) -> bool {
        self.qrels.is_some()
    }
    /// Text of document `i` from docs.jsonl.
    pub fn doc_text(&self, i: usize) -> Option<&str> {
        self.doc_texts
            .as_ref()
            .map(|t| t[i].as_str())
            .filter(|t| !t.is_empty())
    }
}

/// The name of the data set folder `dir` (its last component, after resolving `.` and links; "dataset" when it
/// has none): the default collection name of the client tools.
pub fn folder_name(dir: &Path) -> String {
    dir.canonicalize()
        .unwrap_or_else(|_| dir.to_path_buf())
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "dataset".into())
}
