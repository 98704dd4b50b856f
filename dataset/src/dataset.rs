//! The data set folder format (see `data/demo/README.md` and the manpages README): token matrices as `.npy`
//! (float16 or float32, `[rows, dim]`), `int64` offsets, one id per line, optional exact-Chamfer ground truth,
//! qrels and texts. [`Dataset::open`] validates everything it reads and names the file and the problem.
//!
//! A data set too large for memory is read in two parts: [`Dataset::open_without_doc_tokens`] (ids, offsets,
//! queries, ground truth, qrels; no document token) and a [`DocStream`], which reads documents' tokens from
//! `doc_tokens.npy` on demand with positioned reads (as f32, or as the file's own float16 values); a client
//! that sends documents also reads their texts by row ([`DocTexts`]) and opens the rest with
//! [`Dataset::open_for_queries`].
use std::collections::HashMap;
use std::fs;
use std::io::{BufRead, BufReader, BufWriter, Seek, Write};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use half::f16;
use half::slice::HalfFloatSliceExt;

use chamfer_index::fsutil::{sync_dir, temp_path, write_atomic};

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
    /// Byte offset of the first element (the header's length).
    data_start: u64,
    /// The same open file, for positioned reads ([`DocStream`]).
    raw: fs::File,
    file: npyz::NpyFile<BufReader<fs::File>>,
}

impl NpyStream {
    fn open(path: &Path) -> Result<NpyStream> {
        let f = fs::File::open(path).map_err(|e| DataError::io(path, e))?;
        let file_len = f.metadata().map_err(|e| DataError::io(path, e))?.len();
        let raw = f.try_clone().map_err(|e| DataError::io(path, e))?;
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
        Ok(NpyStream {
            descr,
            shape,
            data_start,
            raw,
            file,
        })
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

    /// Bytes per element of a float array (f2, f4 or f8); an error naming the dtype otherwise.
    fn float_width(&self, path: &Path) -> Result<usize> {
        match self.descr.as_str() {
            "<f2" => Ok(2),
            "<f4" => Ok(4),
            "<f8" => Ok(8),
            d => Err(ds_err(
                path,
                format!("expected a float array, found dtype {d:?}"),
            )),
        }
    }

    /// Streams every element of a float array (f2, f4 or f8) as f32.
    fn into_f32(self, path: &Path) -> Result<Vec<f32>> {
        match self.float_width(path)? {
            2 => self.collect(path, |x: f16| x.to_f32()),
            4 => self.collect(path, |x: f32| x),
            _ => self.collect(path, |x: f64| x as f32),
        }
    }
}

/// Reads a float array (f2, f4 or f8) as f32.
pub fn read_npy_f32(path: &Path) -> Result<NpyArray<f32>> {
    let s = NpyStream::open(path)?;
    let shape = s.shape.clone();
    let data = s.into_f32(path)?;
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

/// The `.npy` version 1.0 header (magic, length, dict padded to a multiple of 64 bytes) of a C-order array.
fn npy_header(descr: &str, shape: &[usize]) -> Vec<u8> {
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
    let mut out = Vec::with_capacity(10 + header.len());
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out
}

/// Writes a `.npy` (version 1.0) file with dtype `descr` ("<f2", "<f4", "<i4", "<i8") from raw little-endian bytes.
pub fn write_npy(path: &Path, descr: &str, shape: &[usize], data: &[u8]) -> Result<()> {
    let mut out = npy_header(descr, shape);
    out.extend_from_slice(data);
    Ok(write_atomic(path, &out)?)
}

/// Streams a float16 `[rows, dim]` token matrix into a `.npy` file without holding it: the header (with the
/// final shape, so `rows` must be known up front) goes first, then the rows as they come, into `<name>.tmp`;
/// [`F16RowWriter::finish`] checks the row count and fsyncs, and [`WrittenFile::commit`] renames it into place.
pub(crate) struct F16RowWriter {
    path: PathBuf,
    tmp: PathBuf,
    out: BufWriter<fs::File>,
    dim: usize,
    rows_left: usize,
    buf: Vec<f16>,
}

impl F16RowWriter {
    /// Creates `<path>.tmp` (truncating a stale one) and writes the header of a `[rows, dim]` f2 array.
    pub(crate) fn create(path: &Path, rows: usize, dim: usize) -> Result<F16RowWriter> {
        let tmp = temp_path(path);
        let f = fs::File::create(&tmp).map_err(|e| DataError::io(&tmp, e))?;
        let mut out = BufWriter::with_capacity(1 << 22, f);
        out.write_all(&npy_header("<f2", &[rows, dim]))
            .map_err(|e| DataError::io(&tmp, e))?;
        Ok(F16RowWriter {
            path: path.to_path_buf(),
            tmp,
            out,
            dim,
            rows_left: rows,
            buf: Vec::new(),
        })
    }

    /// Appends the row-major rows `tokens` (a multiple of `dim` values), rounded to float16.
    pub(crate) fn write_rows(&mut self, tokens: &[f32]) -> Result<()> {
        let rows = tokens.len() / self.dim.max(1);
        if rows * self.dim != tokens.len() || rows > self.rows_left {
            return Err(ds_err(
                &self.tmp,
                format!(
                    "{} values do not make whole rows of {} within the {} rows left",
                    tokens.len(),
                    self.dim,
                    self.rows_left
                ),
            ));
        }
        for part in tokens.chunks(1 << 16) {
            self.buf.clear();
            self.buf.resize(part.len(), f16::ZERO);
            self.buf.convert_from_f32_slice(part);
            if cfg!(target_endian = "big") {
                self.buf
                    .iter_mut()
                    .for_each(|x| *x = f16::from_bits(x.to_bits().to_le()));
            }
            self.out
                .write_all(bytemuck::cast_slice(&self.buf))
                .map_err(|e| DataError::io(&self.tmp, e))?;
        }
        self.rows_left -= rows;
        Ok(())
    }

    /// Checks that every row announced by the header was written, flushes and fsyncs the temporary file.
    pub(crate) fn finish(self) -> Result<WrittenFile> {
        if self.rows_left != 0 {
            return Err(ds_err(
                &self.tmp,
                format!(
                    "{} rows announced by the header were not written",
                    self.rows_left
                ),
            ));
        }
        let f = self
            .out
            .into_inner()
            .map_err(|e| DataError::io(&self.tmp, e.into_error()))?;
        f.sync_all().map_err(|e| DataError::io(&self.tmp, e))?;
        Ok(WrittenFile {
            path: self.path,
            tmp: self.tmp,
        })
    }
}

/// A complete, fsynced temporary file waiting to be renamed over its target.
pub(crate) struct WrittenFile {
    path: PathBuf,
    tmp: PathBuf,
}

impl WrittenFile {
    /// The temporary file (readable before [`WrittenFile::commit`]).
    pub(crate) fn tmp_path(&self) -> &Path {
        &self.tmp
    }

    /// Renames the temporary file over the target and fsyncs the directory.
    pub(crate) fn commit(self) -> Result<()> {
        fs::rename(&self.tmp, &self.path).map_err(|e| DataError::io(&self.path, e))?;
        if let Some(dir) = self.path.parent() {
            sync_dir(dir);
        }
        Ok(())
    }
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
    /// Writes every file into `dir` (created if needed). Query files (and ground truth) are written only when
    /// there are queries: a data set without queries has none of them.
    pub fn write(&self, dir: &Path) -> Result<()> {
        fs::create_dir_all(dir).map_err(|e| DataError::io(dir, e))?;
        let path = dir.join("doc_tokens.npy");
        let mut w = F16RowWriter::create(&path, self.doc_tokens.len() / self.dim, self.dim)?;
        w.write_rows(self.doc_tokens)?;
        w.finish()?.commit()?;
        self.write_doc_index(dir)?;
        self.write_queries_and_labels(dir)
    }

    /// `doc_offsets.npy` and `doc_ids.txt` (`doc_tokens` is not used: a caller streams it).
    pub(crate) fn write_doc_index(&self, dir: &Path) -> Result<()> {
        write_index(dir, "doc", self.doc_ids, self.doc_offsets)
    }

    /// The query files, ground truth and qrels (when there are queries).
    pub(crate) fn write_queries_and_labels(&self, dir: &Path) -> Result<()> {
        if self.query_ids.is_empty() {
            return Ok(());
        }
        let mut w = F16RowWriter::create(
            &dir.join("query_tokens.npy"),
            self.query_tokens.len() / self.dim,
            self.dim,
        )?;
        w.write_rows(self.query_tokens)?;
        w.finish()?.commit()?;
        write_index(dir, "query", self.query_ids, self.query_offsets)?;
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

/// `<prefix>_offsets.npy` (int64) and `<prefix>_ids.txt` (one id a line).
fn write_index(dir: &Path, prefix: &str, ids: &[String], offsets: &[usize]) -> Result<()> {
    let b: Vec<u8> = offsets
        .iter()
        .flat_map(|x| (*x as i64).to_le_bytes())
        .collect();
    write_npy(
        &dir.join(format!("{prefix}_offsets.npy")),
        "<i8",
        &[offsets.len()],
        &b,
    )?;
    let mut text = String::with_capacity(ids.iter().map(|s| s.len() + 1).sum());
    for id in ids {
        text.push_str(id);
        text.push('\n');
    }
    Ok(write_atomic(
        &dir.join(format!("{prefix}_ids.txt")),
        text.as_bytes(),
    )?)
}

/// Values [`DocStream::read_range`] reads and converts at a time from an f16 file.
const READ_CHUNK: usize = 1 << 20;

/// The documents of a data set folder, read from `doc_tokens.npy` on demand: ids and offsets in memory, token
/// rows fetched with positioned reads (`pread`, no mmap), so a data set far larger than memory can be scanned
/// in bounded batches. Opening checks the same as [`Dataset::open`] does for the documents (dtype f2, f4 or f8,
/// a 2-d shape whose rows match the offsets, one unique id per document); token values are checked finite as
/// they are read. Reads take `&self` and may run from several threads at once.
#[derive(Debug)]
pub struct DocStream {
    path: PathBuf,
    file: fs::File,
    data_start: u64,
    width: usize,
    dim: usize,
    offsets: Vec<usize>,
    ids: Vec<String>,
}

impl DocStream {
    /// Opens the documents of the data set folder `dir` (`doc_tokens.npy`, `doc_offsets.npy`, `doc_ids.txt`).
    pub fn open(dir: &Path) -> Result<DocStream> {
        if !dir.is_dir() {
            return Err(ds_err(dir, "not a directory"));
        }
        DocStream::from_meta(ItemsMeta::open(dir, "doc", None)?)
    }

    /// Opens a token file with offsets and ids given by their paths (e.g. a token file not yet renamed into
    /// its folder).
    pub(crate) fn open_files(tokens: &Path, offsets: &Path, ids: &Path) -> Result<DocStream> {
        DocStream::from_meta(ItemsMeta::open_files(tokens, offsets, ids, None)?)
    }

    fn from_meta(m: ItemsMeta) -> Result<DocStream> {
        let width = m.tokens.float_width(&m.tok_path)?;
        Ok(DocStream {
            path: m.tok_path,
            file: m.tokens.raw,
            data_start: m.tokens.data_start,
            width,
            dim: m.dim,
            offsets: m.offsets,
            ids: m.ids,
        })
    }

    /// Number of documents.
    pub fn len(&self) -> usize {
        self.ids.len()
    }
    /// True when there is no document (never, for a valid folder).
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
    /// Token dimension.
    pub fn dim(&self) -> usize {
        self.dim
    }
    /// Total document token vectors.
    pub fn n_tokens(&self) -> usize {
        self.offsets.last().copied().unwrap_or(0)
    }
    /// External id of document `i` (panics if `i >= len()`).
    pub fn id(&self, i: usize) -> &str {
        &self.ids[i]
    }
    /// Token count of document `i` (panics if `i >= len()`).
    pub fn doc_len(&self, i: usize) -> usize {
        self.offsets[i + 1] - self.offsets[i]
    }
    /// Every document's external id, in row order.
    pub fn ids(&self) -> &[String] {
        &self.ids
    }
    /// True when `doc_tokens.npy` stores float16 values: [`DocStream::read_range_f16`] then reads them as
    /// they are, with no conversion.
    pub fn is_f16(&self) -> bool {
        self.width == 2
    }

    /// The first token row of documents `docs`, their value count and the file offset of their first value;
    /// an error when the range is reversed or not within the documents.
    fn span(&self, docs: &Range<usize>) -> Result<(usize, usize, u64)> {
        if docs.start > docs.end || docs.end > self.len() {
            return Err(DataError::param(
                "docs",
                format!(
                    "range {}..{} is not within the {} documents of {}",
                    docs.start,
                    docs.end,
                    self.len(),
                    self.path.display()
                ),
            ));
        }
        let (a, b) = (self.offsets[docs.start], self.offsets[docs.end]);
        let at = self.data_start + (a * self.dim * self.width) as u64;
        Ok((a, (b - a) * self.dim, at))
    }

    /// Appends the tokens of documents `docs` (one after another, row-major) to `out` as the float16 values the
    /// file stores, with one read and no conversion (a client sending f16 sends the file's own bits). Only for
    /// a float16 token file ([`DocStream::is_f16`]); otherwise, and on the errors of [`DocStream::read_range`]
    /// (a bad range, an I/O error, a non-finite value), an error, and `out` is left as it was.
    pub fn read_range_f16(&self, docs: Range<usize>, out: &mut Vec<f16>) -> Result<()> {
        if !self.is_f16() {
            return Err(ds_err(
                &self.path,
                format!(
                    "holds {}-bit floats, not float16 (read it with read_range)",
                    self.width * 8
                ),
            ));
        }
        let (a, n, at) = self.span(&docs)?;
        let start = out.len();
        out.resize(start + n, f16::ZERO);
        let read = self
            .read_at(bytemuck::cast_slice_mut(&mut out[start..]), at)
            .map(|()| {
                if cfg!(target_endian = "big") {
                    out[start..]
                        .iter_mut()
                        .for_each(|x| *x = f16::from_bits(u16::from_le(x.to_bits())));
                }
            });
        let checked = read.and_then(|()| {
            let p = out[start..].iter().position(|v| !v.is_finite());
            non_finite_at(&self.path, p, a, self.dim)
        });
        if checked.is_err() {
            out.truncate(start);
        }
        checked
    }

    /// Appends document `i`'s tokens to `out` as row-major f32 (`doc_len(i) * dim()` values).
    pub fn read_doc(&self, i: usize, out: &mut Vec<f32>) -> Result<()> {
        self.read_range(i..i + 1, out)
    }

    /// Appends the tokens of documents `docs` (one after another, row-major f32) to `out` with one read. An
    /// out-of-range or reversed range, an I/O error (e.g. a file truncated since it was opened) or a non-finite
    /// value is an error, and `out` is then left as it was.
    pub fn read_range(&self, docs: Range<usize>, out: &mut Vec<f32>) -> Result<()> {
        let (a, n, at) = self.span(&docs)?;
        let start = out.len();
        out.resize(start + n, 0.0);
        let read = match self.width {
            // Through a small buffer, a chunk at a time: a shard's worth of f16 would be gigabytes of fresh
            // pages to fault in and zero for one copy (a quarter of an index build's time, measured).
            2 => {
                let mut buf = vec![f16::ZERO; n.min(READ_CHUNK)];
                out[start..]
                    .chunks_mut(READ_CHUNK)
                    .enumerate()
                    .try_for_each(|(i, dst)| {
                        let buf = &mut buf[..dst.len()];
                        let at = at + (i * READ_CHUNK * 2) as u64;
                        self.read_at(bytemuck::cast_slice_mut(buf), at).map(|()| {
                            if cfg!(target_endian = "big") {
                                buf.iter_mut()
                                    .for_each(|x| *x = f16::from_bits(u16::from_le(x.to_bits())));
                            }
                            buf.convert_to_f32_slice(dst);
                        })
                    })
            }
            4 => self
                .read_at(bytemuck::cast_slice_mut(&mut out[start..]), at)
                .map(|()| {
                    if cfg!(target_endian = "big") {
                        out[start..]
                            .iter_mut()
                            .for_each(|x| *x = f32::from_bits(u32::from_le(x.to_bits())));
                    }
                }),
            _ => {
                let mut buf = vec![0f64; n];
                self.read_at(bytemuck::cast_slice_mut(&mut buf), at)
                    .map(|()| {
                        for (o, x) in out[start..].iter_mut().zip(&buf) {
                            *o = f64::from_bits(u64::from_le(x.to_bits())) as f32;
                        }
                    })
            }
        };
        let checked = read.and_then(|()| check_finite(&self.path, &out[start..], a, self.dim));
        if checked.is_err() {
            out.truncate(start);
        }
        checked
    }

    fn read_at(&self, buf: &mut [u8], at: u64) -> Result<()> {
        self.file
            .read_exact_at(buf, at)
            .map_err(|e| DataError::io(&self.path, e))
    }
}

/// The texts of a data set folder's `docs.jsonl`, read by document row on demand: opening scans the file once
/// and keeps where each document's line is (12 bytes a document, not its text), so that a client can attach
/// the texts to documents a batch at a time whatever the corpus's size. The rule is [`Dataset::doc_text`]'s: a
/// line `{"id": ..., "text": ...}` with both strings gives the text of the document with that id (a later line
/// for the same id wins); other lines, and ids that name no document, are ignored; an empty text is no text.
#[derive(Debug)]
pub struct DocTexts {
    path: PathBuf,
    file: fs::File,
    /// Byte offset of each document's line.
    start: Vec<u64>,
    /// Its length in bytes; 0 when the document has no line.
    len: Vec<u32>,
}

impl DocTexts {
    /// Indexes `dir/docs.jsonl` for the documents `ids` (in row order, e.g. [`DocStream::ids`]); `None` when the
    /// folder has no `docs.jsonl`. A line that is not JSON is an error naming it (as [`Dataset::open`]).
    pub fn open(dir: &Path, ids: &[String]) -> Result<Option<DocTexts>> {
        let path = dir.join("docs.jsonl");
        if !path.exists() {
            return Ok(None);
        }
        let f = fs::File::open(&path).map_err(|e| DataError::io(&path, e))?;
        let file = f.try_clone().map_err(|e| DataError::io(&path, e))?;
        let mut r = BufReader::with_capacity(1 << 20, f);
        let mut start = vec![0u64; ids.len()];
        let mut len = vec![0u32; ids.len()];
        // Lines usually come in document order: the id map is only built at the first line that does not.
        let mut by_id: Option<HashMap<&str, usize>> = None;
        let (mut line, mut at, mut ln, mut next) = (Vec::new(), 0u64, 0usize, 0usize);
        loop {
            line.clear();
            let n = r
                .read_until(b'\n', &mut line)
                .map_err(|e| DataError::io(&path, e))?;
            if n == 0 {
                break;
            }
            let here = at;
            at += n as u64;
            ln += 1;
            if line.trim_ascii().is_empty() {
                continue;
            }
            let v: serde_json::Value = serde_json::from_slice(&line)
                .map_err(|e| ds_err(&path, format!("line {ln}: {e}")))?;
            let (Some(id), Some(_)) = (
                v.get("id").and_then(|x| x.as_str()),
                v.get("text").and_then(|x| x.as_str()),
            ) else {
                continue;
            };
            let row = if ids.get(next).is_some_and(|x| x == id) {
                Some(next)
            } else {
                by_id
                    .get_or_insert_with(|| {
                        ids.iter()
                            .enumerate()
                            .map(|(i, s)| (s.as_str(), i))
                            .collect()
                    })
                    .get(id)
                    .copied()
            };
            let Some(row) = row else {
                continue;
            };
            next = row + 1;
            start[row] = here;
            len[row] = u32::try_from(n)
                .map_err(|_| ds_err(&path, format!("line {ln} is longer than 4 GiB")))?;
        }
        Ok(Some(DocTexts {
            path,
            file,
            start,
            len,
        }))
    }

    /// The text of document `i` (panics if `i` is not a row of the ids it was opened with), read from the file;
    /// `None` when it has none. An I/O error, or a line that no longer parses (the file changed since it was
    /// indexed), is an error.
    pub fn text(&self, i: usize) -> Result<Option<String>> {
        let n = self.len[i] as usize;
        if n == 0 {
            return Ok(None);
        }
        let mut buf = vec![0u8; n];
        self.file
            .read_exact_at(&mut buf, self.start[i])
            .map_err(|e| DataError::io(&self.path, e))?;
        let v: serde_json::Value = serde_json::from_slice(&buf).map_err(|e| {
            ds_err(
                &self.path,
                format!("the line of document {i} changed since the file was indexed: {e}"),
            )
        })?;
        Ok(v.get("text")
            .and_then(|t| t.as_str())
            .filter(|t| !t.is_empty())
            .map(str::to_owned))
    }
}
