//! The data set folder writer.
use super::*;

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
        self.write_to(&LocalDir::new(dir))
    }

    /// [`write`](Self::write) through the storage seam: every file of the folder into `store`, each one
    /// atomically (a file of the same name is replaced).
    pub fn write_to(&self, store: &dyn Storage) -> Result<()> {
        let rows = self.doc_tokens.len() / self.dim.max(1);
        let mut w = F16RowWriter::create(store, "doc_tokens.npy", rows, self.dim)?;
        w.write_rows(self.doc_tokens)?;
        w.finish()?;
        self.write_doc_index(store)?;
        self.write_queries_and_labels(store)
    }

    /// `doc_offsets.npy` and `doc_ids.txt` (`doc_tokens` is not used: a caller streams it).
    pub(crate) fn write_doc_index(&self, store: &dyn Storage) -> Result<()> {
        write_index(store, "doc", self.doc_ids, self.doc_offsets)
    }

    /// The query files, ground truth and qrels (when there are queries).
    pub(crate) fn write_queries_and_labels(&self, store: &dyn Storage) -> Result<()> {
        if self.query_ids.is_empty() {
            return Ok(());
        }
        let rows = self.query_tokens.len() / self.dim.max(1);
        let mut w = F16RowWriter::create(store, "query_tokens.npy", rows, self.dim)?;
        w.write_rows(self.query_tokens)?;
        w.finish()?;
        write_index(store, "query", self.query_ids, self.query_offsets)?;
        if let Some((ids, scores, k)) = self.gt {
            let nq = ids.len() / k.max(1);
            let b: Vec<u8> = ids.iter().flat_map(|x| x.to_le_bytes()).collect();
            put_npy(store, "gt_chamfer_ids.npy", "<i4", &[nq, k], &b)?;
            let b: Vec<u8> = scores.iter().flat_map(|x| x.to_le_bytes()).collect();
            put_npy(store, "gt_chamfer_scores.npy", "<f4", &[nq, k], &b)?;
        }
        if !self.qrels.is_empty() {
            let s: String = self
                .qrels
                .iter()
                .map(|(q, d)| format!("{q}\t{d}\t1\n"))
                .collect();
            store.put("qrels.tsv", s.as_bytes(), PutMode::Overwrite)?;
        }
        Ok(())
    }
}

/// `<prefix>_offsets.npy` (int64) and `<prefix>_ids.txt` (one id a line).
pub(super) fn write_index(
    store: &dyn Storage,
    prefix: &str,
    ids: &[String],
    offsets: &[usize],
) -> Result<()> {
    let b: Vec<u8> = offsets
        .iter()
        .flat_map(|x| (*x as i64).to_le_bytes())
        .collect();
    put_npy(
        store,
        &format!("{prefix}_offsets.npy"),
        "<i8",
        &[offsets.len()],
        &b,
    )?;
    let mut text = String::with_capacity(ids.iter().map(|s| s.len() + 1).sum());
    for id in ids {
        text.push_str(id);
        text.push('\n');
    }
    let name = format!("{prefix}_ids.txt");
    Ok(store.put(&name, text.as_bytes(), PutMode::Overwrite)?)
}
