//! The data set folder format (see `data/demo/README.md` and the manpages README): token matrices as `.npy`
//! (float16 or float32, `[rows, dim]`), `int64` offsets, one id per line, optional exact-Chamfer ground truth,
//! qrels and texts. [`Dataset::open`] validates everything it reads and names the file and the problem.
use std::collections::HashMap;
use std::fs;
use std::io::{BufReader, Seek};
use std::path::{Path, PathBuf};

use half::f16;

use chamfer_index::fsutil::write_atomic;

use crate::{DataError, Result};

/// A numeric array read from a `.npy` file, converted to the type the caller needs.
#[derive(Debug)]
pub struct NpyArray<T> {
    /// The array's shape from the header (e.g. `[rows, dim]`).
    pub shape: Vec<usize>,
    /// The elements in C (row-major) order; their count is the product of `shape`.
    pub data: Vec<T>,
}

fn ds_err(path: &Path, reason: impl Into<String>) -> DataError {
    DataError::dataset(path, reason)
}

/// An open `.npy` file whose header is read and checked against the file's length (little-endian, C order):
/// its elements are then streamed, each converted once into the caller's type, so a multi-GB token file is
/// never held twice in memory.
struct NpyStream {
    descr: String,
    shape: Vec<usize>,
    file: npyz::NpyFile<BufReader<fs::File>>,
}

impl NpyStream {
    fn open(path: &Path) -> Result<NpyStream> {
        let f = fs::File::open(path).map_err(|e| DataError::io(path, e))?;
        let file_len = f.metadata().map_err(|e| DataError::io(path, e))?.len();
        let mut r = BufReader::new(f);
        let header = npyz::NpyHeader::from_reader(&mut r)
            .map_err(|e| ds_err(path, format!("not a readable .npy file: {e}")))?;
        let data_start = r.stream_position().map_err(|e| DataError::io(path, e))?;
        let file = npyz::NpyFile::with_header(header, r);
        if file.order() == npyz::Order::Fortran {
            return Err(ds_err(
                path,
                "Fortran-order arrays are not supported (save with C order)",
            ));
        }
        let descr = match file.dtype() {
            npyz::DType::Plain(t) => t.to_string(),
            d => return Err(ds_err(path, format!("unsupported dtype {}", d.descr()))),
        };
        let width: u64 = match descr.as_str() {
            "<f2" => 2,
            "<f4" | "<i4" => 4,
            "<i8" | "<f8" => 8,
            "|u1" | "|i1" => 1,
            d => {
                return Err(ds_err(
                    path,
                    format!("unsupported dtype {d:?} (little-endian f2/f4/f8/i4/i8 expected)"),
                ))
            }
        };
        let shape: Vec<usize> = file
            .shape()
            .iter()
            .map(|&d| usize::try_from(d))
            .collect::<std::result::Result<_, _>>()
            .map_err(|_| ds_err(path, "shape does not fit in memory"))?;
        let need = file
            .shape()
            .iter()
            .try_fold(width, |acc, &d| acc.checked_mul(d));
        let have = file_len.saturating_sub(data_start);
        if need != Some(have) {
            return Err(ds_err(
                path,
                format!(
                    "data holds {have} bytes, shape {shape:?} of {descr} needs {}",
                    need.map_or("more than 2^64".into(), |n| n.to_string())
                ),
            ));
        }
        Ok(NpyStream { descr, shape, file })
    }

    /// Streams every element as `T` (the dtype is checked by `npyz`) converted by `conv` into `out`.
    fn collect<T: npyz::Deserialize, U>(
        self,
        path: &Path,
        conv: impl Fn(T) -> U,
    ) -> Result<Vec<U>> {
        let n = self.file.len() as usize;
        let mut out = Vec::with_capacity(n);
        let data = self
            .file
            .data::<T>()
            .map_err(|e| ds_err(path, e.to_string()))?;
        for v in data {
            out.push(conv(v.map_err(|e| DataError::io(path, e))?));
        }
        Ok(out)
    }
}

/// Reads a float array (f2, f4 or f8) as f32.
pub fn read_npy_f32(path: &Path) -> Result<NpyArray<f32>> {
    let s = NpyStream::open(path)?;
    let shape = s.shape.clone();
    let data = match s.descr.as_str() {
        "<f2" => s.collect(path, |x: f16| x.to_f32())?,
        "<f4" => s.collect(path, |x: f32| x)?,
        "<f8" => s.collect(path, |x: f64| x as f32)?,
        d => {
            return Err(ds_err(
                path,
                format!("expected a float array, found dtype {d:?}"),
            ))
        }
    };
    Ok(NpyArray { shape, data })
}

/// Reads an integer array (i4 or i8) as i64.
pub fn read_npy_i64(path: &Path) -> Result<NpyArray<i64>> {
    let s = NpyStream::open(path)?;
    let shape = s.shape.clone();
    let data = match s.descr.as_str() {
        "<i4" => s.collect(path, |x: i32| i64::from(x))?,
        "<i8" => s.collect(path, |x: i64| x)?,
        d => {
            return Err(ds_err(
                path,
                format!("expected an integer array, found dtype {d:?}"),
            ))
        }
    };
    Ok(NpyArray { shape, data })
}

/// Writes a `.npy` (version 1.0) file with dtype `descr` ("<f2", "<f4", "<i4", "<i8") from raw little-endian bytes.
pub fn write_npy(path: &Path, descr: &str, shape: &[usize], data: &[u8]) -> Result<()> {
    let shape_s = match shape {
        [n] => format!("({n},)"),
        s => format!(
            "({})",
            s.iter()
                .map(|v| v.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut header =
        format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape_s}, }}");
    let total = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - total % 64) % 64));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + data.len());
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    Ok(write_atomic(path, &out)?)
}

/// One side (documents or queries) of a data set: concatenated tokens, offsets and ids.
#[derive(Debug, Default)]
struct Items {
    tokens: Vec<f32>,
    offsets: Vec<usize>,
    ids: Vec<String>,
}

impl Items {
    fn load(dir: &Path, prefix: &str, dim: Option<usize>) -> Result<Items> {
        let tok_path = dir.join(format!("{prefix}_tokens.npy"));
        let off_path = dir.join(format!("{prefix}_offsets.npy"));
        let ids_path = dir.join(format!("{prefix}_ids.txt"));
        let toks = read_npy_f32(&tok_path)?;
        let [rows, d] = toks.shape[..] else {
            return Err(ds_err(
                &tok_path,
                format!(
                    "expected a 2-d [rows, dim] array, got shape {:?}",
                    toks.shape
                ),
            ));
        };
        if d == 0 {
            return Err(ds_err(&tok_path, "token dimension is 0"));
        }
        if let Some(want) = dim.filter(|&w| w != d) {
            return Err(ds_err(
                &tok_path,
                format!("token dimension {d} differs from the documents' {want}"),
            ));
        }
        if let Some(p) = toks.data.iter().position(|v| !v.is_finite()) {
            return Err(ds_err(
                &tok_path,
                format!("non-finite value at row {}, column {}", p / d, p % d),
            ));
        }
        let offs = read_npy_i64(&off_path)?;
        if offs.shape.len() != 1 || offs.data.len() < 2 {
            return Err(ds_err(
                &off_path,
                format!(
                    "expected a 1-d array of at least 2 offsets, got shape {:?}",
                    offs.shape
                ),
            ));
        }
        if offs.data[0] != 0 || *offs.data.last().unwrap_or(&0) != rows as i64 {
            return Err(ds_err(
                &off_path,
                format!("offsets must start at 0 and end at {rows} (the token rows)"),
            ));
        }
        if let Some(i) = offs.data.windows(2).position(|w| w[1] <= w[0]) {
            return Err(ds_err(
                &off_path,
                format!("item {i} has no tokens (offsets must increase strictly)"),
            ));
        }
        let text = fs::read_to_string(&ids_path).map_err(|e| DataError::io(&ids_path, e))?;
        let ids: Vec<String> = text
            .lines()
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .collect();
        if ids.len() != offs.data.len() - 1 {
            return Err(ds_err(
                &ids_path,
                format!("{} ids for {} items", ids.len(), offs.data.len() - 1),
            ));
        }
        let mut seen = std::collections::HashSet::new();
        if let Some(dup) = ids.iter().find(|id| !seen.insert(id.as_str())) {
            return Err(ds_err(&ids_path, format!("duplicate id {dup:?}")));
        }
        Ok(Items {
            tokens: toks.data,
            offsets: offs.data.iter().map(|&o| o as usize).collect(),
            ids,
        })
    }

    fn tokens(&self, i: usize, dim: usize) -> &[f32] {
        &self.tokens[self.offsets[i] * dim..self.offsets[i + 1] * dim]
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
        if !dir.is_dir() {
            return Err(ds_err(dir, "not a directory"));
        }
        let docs = Items::load(dir, "doc", None)?;
        let dim = docs.tokens.len() / docs.offsets.last().copied().unwrap_or(1).max(1);
        let queries = if dir.join("query_tokens.npy").exists() {
            Items::load(dir, "query", Some(dim))?
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
        let doc_texts = if texts_path.exists() {
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
        self.path
            .canonicalize()
            .unwrap_or_else(|_| self.path.clone())
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "dataset".into())
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
    /// Total document token vectors.
    pub fn n_doc_tokens(&self) -> usize {
        self.docs.tokens.len() / self.dim
    }
    /// External id of document `i` (panics if `i >= n_docs()`).
    pub fn doc_id(&self, i: usize) -> &str {
        &self.docs.ids[i]
    }
    /// Document `i`'s tokens, row-major.
    pub fn doc_tokens(&self, i: usize) -> &[f32] {
        self.docs.tokens(i, self.dim)
    }
    /// Every document token, row-major, documents one after another.
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

/// Writes a data set folder (the inverse of [`Dataset::open`]): tokens as float16.
pub struct DatasetWriter<'a> {
    /// Token dimension.
    pub dim: usize,
    /// One external id per document.
    pub doc_ids: &'a [String],
    /// Every document token, row-major (`dim` values each), documents one after another.
    pub doc_tokens: &'a [f32],
    /// Token row offsets (n_docs + 1, from 0): document `i` is rows `doc_offsets[i]..doc_offsets[i + 1]`.
    pub doc_offsets: &'a [usize],
    /// One external id per query (may be empty).
    pub query_ids: &'a [String],
    /// Every query token, row-major (`dim` values each), queries one after another.
    pub query_tokens: &'a [f32],
    /// Token row offsets (n_queries + 1, from 0): query `j` is rows `query_offsets[j]..query_offsets[j + 1]`.
    pub query_offsets: &'a [usize],
    /// Row-major [n_queries, k] ground truth (ids, scores).
    pub gt: Option<(&'a [i32], &'a [f32], usize)>,
    /// (query id, doc id) relevance pairs.
    pub qrels: &'a [(String, String)],
}

impl DatasetWriter<'_> {
    /// Writes every file into `dir` (created if needed).
    pub fn write(&self, dir: &Path) -> Result<()> {
        fs::create_dir_all(dir).map_err(|e| DataError::io(dir, e))?;
        let f16s = |v: &[f32]| -> Vec<u8> {
            v.iter()
                .flat_map(|x| f16::from_f32(*x).to_le_bytes())
                .collect()
        };
        let i64s =
            |v: &[usize]| -> Vec<u8> { v.iter().flat_map(|x| (*x as i64).to_le_bytes()).collect() };
        for (p, ids, toks, offs) in [
            ("doc", self.doc_ids, self.doc_tokens, self.doc_offsets),
            (
                "query",
                self.query_ids,
                self.query_tokens,
                self.query_offsets,
            ),
        ] {
            write_npy(
                &dir.join(format!("{p}_tokens.npy")),
                "<f2",
                &[toks.len() / self.dim, self.dim],
                &f16s(toks),
            )?;
            write_npy(
                &dir.join(format!("{p}_offsets.npy")),
                "<i8",
                &[offs.len()],
                &i64s(offs),
            )?;
            write_atomic(
                &dir.join(format!("{p}_ids.txt")),
                (ids.join("\n") + "\n").as_bytes(),
            )?;
        }
        if let Some((ids, scores, k)) = self.gt {
            let nq = ids.len() / k.max(1);
            let b: Vec<u8> = ids.iter().flat_map(|x| x.to_le_bytes()).collect();
            write_npy(&dir.join("gt_chamfer_ids.npy"), "<i4", &[nq, k], &b)?;
            let b: Vec<u8> = scores.iter().flat_map(|x| x.to_le_bytes()).collect();
            write_npy(&dir.join("gt_chamfer_scores.npy"), "<f4", &[nq, k], &b)?;
        }
        if !self.qrels.is_empty() {
            let s: String = self
                .qrels
                .iter()
                .map(|(q, d)| format!("{q}\t{d}\t1\n"))
                .collect();
            write_atomic(&dir.join("qrels.tsv"), s.as_bytes())?;
        }
        Ok(())
    }
}
