//! Documents read on demand: [`DocStream`] (tokens by positioned reads) and [`DocTexts`] (texts by row).
use super::*;

/// Values [`DocStream::read_range`] reads and converts at a time from an f16 file.
pub(super) const READ_CHUNK: usize = 1 << 20;

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
