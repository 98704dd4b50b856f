//! Opening a shard: the reader and verifier of the format (magic, version, metadata CRC, every section's bounds,
//! alignment and CRC32, then the structure every accessor relies on).
use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::writer::{self, read_u64s};
use super::{
    dir_and_base, Bytes, Meta, Shard, ALIGN, END_MAGIC, FOOTER, FORMAT_VERSION, MAGIC,
    READ_VERSIONS,
};
use crate::codebook::Codebook;
use crate::hnsw::CandidateIndex;
use crate::kernels;
use crate::sys::mmap::ReadOnlyMap;
use crate::{IndexError, Result};

impl Shard {
    /// Verifies shard bytes held in memory (no graph is loaded: graph files live beside a shard file).
    pub(crate) fn from_memory(bytes: &[u8]) -> Result<Shard> {
        let len = bytes.len();
        let mut words = vec![0u64; len.div_ceil(8)];
        bytemuck::cast_slice_mut::<u64, u8>(&mut words)[..len].copy_from_slice(bytes);
        Shard::from_owned_words(words, len, None)
    }

    /// Verifies an in-memory shard image held in words (no copy). An empty codebook section stands for `given`:
    /// an in-memory build under a collection's codebook hands over its `Arc`, since serialising and re-parsing
    /// tens of megabytes of centroids per small batch would cost more than coding the batch.
    pub(super) fn from_owned_words(
        words: Vec<u64>,
        len: usize,
        given: Option<&Arc<Codebook>>,
    ) -> Result<Shard> {
        if len > words.len() * 8 {
            return Err(IndexError::corrupt(
                "<memory>",
                "shard image shorter than its length".to_string(),
            ));
        }
        Shard::from_bytes_given(None, Bytes::Owned(words, len), false, given)
    }

    /// The shard's bytes (the file, or its in-memory twin).
    pub(crate) fn raw_bytes(&self) -> &[u8] {
        self.bytes.as_slice()
    }

    /// Opens and verifies a shard file (and loads its graph, if it has one).
    pub fn open(path: &Path) -> Result<Shard> {
        Shard::open_with(path, false)
    }

    /// [`open`](Self::open) without reading the token section: every other section, the metadata and the
    /// structure are verified as usual, but the token section's checksum (most of a shard's bytes) is left to
    /// [`verify_deferred`](Self::verify_deferred), so that opening a large index costs milliseconds, not a read
    /// of every byte. The caller must run that check (a server does it in the background) and treat a failure as
    /// damage. The tokens are only read by the exact re-rank and `get`; until verified, a flipped bit there could
    /// change a score, never an access (all offsets come from verified sections).
    pub fn open_deferred(path: &Path) -> Result<Shard> {
        Shard::open_with(path, true)
    }

    /// Checks what [`open_deferred`](Self::open_deferred) left unchecked (nothing for shards opened otherwise):
    /// a mismatch is [`IndexError::Corrupt`] naming the file and section.
    pub fn verify_deferred(&self) -> Result<()> {
        let Some(crc) = self.deferred_crc else {
            return Ok(());
        };
        let outcome = self.deferred_outcome.get_or_init(|| {
            if crc32fast::hash(&self.bytes.as_slice()[self.tokens.clone()]) == crc {
                Ok(())
            } else {
                Err("section tokens checksum mismatch".to_string())
            }
        });
        outcome.clone().map_err(|reason| {
            let name = self
                .path
                .clone()
                .unwrap_or_else(|| PathBuf::from("<memory>"));
            IndexError::corrupt(&name, reason)
        })
    }

    /// True while [`verify_deferred`](Self::verify_deferred) has a check to run that has not run yet (only
    /// after [`open_deferred`](Self::open_deferred)). The outcome is kept: later calls answer at once.
    pub fn verification_pending(&self) -> bool {
        self.deferred_crc.is_some() && self.deferred_outcome.get().is_none()
    }

    fn open_with(path: &Path, defer: bool) -> Result<Shard> {
        let file = File::open(path).map_err(|e| IndexError::io(path, e))?;
        let map = ReadOnlyMap::new(&file).map_err(|e| IndexError::io(path, e))?;
        if !defer {
            map.will_need();
        }
        let mut shard = Shard::from_bytes(Some(path.to_path_buf()), Bytes::Mapped(map), defer)?;
        if let Some(files) = &shard.meta.graph {
            let (dir, base) = dir_and_base(path);
            let p = &shard.meta.params;
            let pdim = p.prefix_dim(p.hnsw.prefix_repetitions);
            shard.graph = Some(CandidateIndex::load(
                dir,
                &base,
                files,
                p.hnsw.storage,
                pdim,
            )?);
        }
        Ok(shard)
    }

    fn from_bytes(path: Option<PathBuf>, bytes: Bytes, defer_tokens: bool) -> Result<Shard> {
        Shard::from_bytes_given(path, bytes, defer_tokens, None)
    }

    /// Parses and verifies shard bytes; an empty codebook section stands for `given` when there is one.
    fn from_bytes_given(
        path: Option<PathBuf>,
        bytes: Bytes,
        defer_tokens: bool,
        given: Option<&Arc<Codebook>>,
    ) -> Result<Shard> {
        let name = path.clone().unwrap_or_else(|| PathBuf::from("<memory>"));
        let bad = |r: String| IndexError::corrupt(&name, r);
        let b = bytes.as_slice();
        if b.len() < 64 + FOOTER {
            return Err(bad(format!("{} bytes is too short for a shard", b.len())));
        }
        if &b[..8] != MAGIC {
            return Err(bad("not a chamfer shard (bad magic)".into()));
        }
        let version = u32::from_le_bytes([b[8], b[9], b[10], b[11]]);
        if !READ_VERSIONS.contains(&version) {
            return Err(IndexError::UnsupportedVersion {
                path: name,
                found: version,
                supported: FORMAT_VERSION,
            });
        }
        let foot = &b[b.len() - FOOTER..];
        if &foot[16..24] != END_MAGIC {
            return Err(bad("missing end marker (truncated file?)".into()));
        }
        let meta_len = u64::from_le_bytes(foot[..8].try_into().unwrap_or([0; 8])) as usize;
        let meta_crc = u32::from_le_bytes(foot[8..12].try_into().unwrap_or([0; 4]));
        let meta_end = b.len() - FOOTER;
        if meta_len > meta_end - 64 {
            return Err(bad("metadata length out of bounds".into()));
        }
        let json = &b[meta_end - meta_len..meta_end];
        if crc32fast::hash(json) != meta_crc {
            return Err(bad("metadata checksum mismatch".into()));
        }
        let meta: Meta = serde_json::from_slice(json).map_err(|e| bad(format!("metadata: {e}")))?;
        meta.params
            .validate()
            .map_err(|e| bad(format!("stored parameters: {e}")))?;
        let body_end = (meta_end - meta_len) as u64;
        let names: &[&str] = if version == 1 {
            &[
                "tokens",
                "panel_start",
                "n_tokens",
                "fde",
                "centroids",
                "codes",
                "id_start",
                "id_bytes",
                "payload_start",
                "payload_bytes",
            ]
        } else {
            &[
                "tokens",
                "panel_start",
                "n_tokens",
                "fde",
                "codebook",
                "codes",
                "ivf_start",
                "ivf_docs",
                "id_start",
                "id_bytes",
                "payload_start",
                "payload_bytes",
            ]
        };
        let mut ranges = Vec::new();
        let mut deferred_crc = None;
        for &want in names {
            let s = meta
                .sections
                .iter()
                .find(|s| s.name == want)
                .ok_or_else(|| bad(format!("section {want} missing")))?;
            let end = s
                .offset
                .checked_add(s.len)
                .filter(|&e| e <= body_end && s.offset >= 64);
            let end = end.ok_or_else(|| bad(format!("section {want} out of bounds")))?;
            if !(s.offset as usize).is_multiple_of(ALIGN) {
                return Err(bad(format!("section {want} misaligned")));
            }
            let r = s.offset as usize..end as usize;
            if defer_tokens && want == "tokens" {
                deferred_crc = Some(s.crc32);
            } else if crc32fast::hash(&b[r.clone()]) != s.crc32 {
                return Err(bad(format!("section {want} checksum mismatch")));
            }
            ranges.push(r);
        }
        if version == 1 {
            // No inverted file: empty ranges at the end of the codes section.
            let at = ranges[5].end;
            ranges.insert(6, at..at);
            ranges.insert(7, at..at);
        }
        let [tokens, panel_start, n_tokens, fde, book_bytes, codes, ivf_start, ivf_docs, id_start, id_bytes, payload_start, payload_bytes]: [Range<usize>; 12] =
            ranges.try_into().map_err(|_| bad("section table".into()))?;
        let dim = meta.params.fde.dimension;
        if codes.len() % 2 != 0 {
            return Err(bad("codes section has an odd size".into()));
        }
        let codebook = if book_bytes.is_empty() {
            match given {
                Some(g) if g.dim() != dim => {
                    return Err(bad(format!(
                        "the given codebook is {}-dimensional, the shard {dim}",
                        g.dim()
                    )))
                }
                g => g.cloned(),
            }
        } else if version == 1 {
            let cvals: Vec<f32> = b[book_bytes.clone()]
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            if !(book_bytes.len() % 4 == 0 && cvals.len().is_multiple_of(dim)) {
                return Err(bad("codebook sections have the wrong size".into()));
            }
            Some(Arc::new(Codebook::from_centroids(dim, cvals)))
        } else {
            Some(Arc::new(
                Codebook::from_bytes(&b[book_bytes.clone()], dim).map_err(bad)?,
            ))
        };
        // Sized by the section actually present (bounded by the file), never by the stored document count;
        // check_structure then cross-checks the two.
        let mut token_start = Vec::with_capacity(n_tokens.len() / 4 + 1);
        token_start.push(0usize);
        for c in b[n_tokens.clone()].chunks_exact(4) {
            let last = *token_start.last().unwrap_or(&0);
            token_start
                .push(last.saturating_add(u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as usize));
        }
        let shard = Shard {
            path,
            meta,
            tokens,
            panel_start,
            n_tokens,
            fde,
            codes,
            codebook,
            ivf_start,
            ivf_docs,
            token_start,
            id_start,
            id_bytes,
            payload_start,
            payload_bytes,
            graph: None,
            scan: std::sync::OnceLock::new(),
            bytes,
            deferred_crc,
            deferred_outcome: std::sync::OnceLock::new(),
            key: std::sync::OnceLock::new(),
        };
        shard.check_structure().map_err(bad)?;
        Ok(shard)
    }

    /// Cross-checks sizes and offsets so that every accessor below is in bounds.
    fn check_structure(&self) -> std::result::Result<(), String> {
        let n = self.meta.n_docs;
        let dim = self.meta.params.fde.dimension;
        // Version 1 stores the full FDE; version 2 what the plans read (writer::stored_fde_repetitions), or
        // none (a tokens-only shard, a merged shard).
        let p = &self.meta.params;
        let stored = writer::stored_fde_repetitions(p, self.codebook.is_some(), n);
        if self.meta.fde_dim != p.fde.output_dim()
            && self.meta.fde_dim != p.prefix_dim(stored)
            && self.meta.fde_dim != 0
        {
            return Err("FDE dimension disagrees with the FDE configuration".into());
        }
        let b = self.bytes.as_slice();
        // Every stored count is checked against the section sizes (bounded by the file) with checked
        // arithmetic before anything is sized by it.
        let len_ok = |r: &Range<usize>, want: Option<usize>| Some(r.len()) == want;
        let starts_len = n.checked_add(1).and_then(|v| v.checked_mul(8));
        if !len_ok(&self.panel_start, starts_len)
            || !len_ok(&self.n_tokens, n.checked_mul(4))
            || !len_ok(
                &self.fde,
                n.checked_mul(self.meta.fde_dim)
                    .and_then(|v| v.checked_mul(2)),
            )
            || !len_ok(&self.id_start, starts_len)
            || !len_ok(&self.payload_start, starts_len)
        {
            return Err("section sizes disagree with the document count".into());
        }
        if self.token_start.len() != n + 1
            || self.token_start.last().map(|&t| t as u64) != Some(self.meta.total_tokens)
        {
            return Err("token counts disagree with the stored total".into());
        }
        let starts: Vec<u64> = read_u64s(&b[self.panel_start.clone()]).collect();
        let counts: Vec<u32> = b[self.n_tokens.clone()]
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        for i in 0..n {
            let want = kernels::packed_len(counts[i] as usize, dim) as u64;
            if counts[i] == 0 || starts[i + 1].checked_sub(starts[i]) != Some(want) {
                return Err(format!(
                    "token panel offsets of document {i} are inconsistent"
                ));
            }
        }
        if let Some(book) = &self.codebook {
            let total = *self.token_start.last().unwrap_or(&0);
            if self.codes.len() != total * 2 {
                return Err("codes section size disagrees with the token count".into());
            }
            let k = book.len();
            if b[self.codes.clone()]
                .chunks_exact(2)
                .any(|c| u16::from_le_bytes([c[0], c[1]]) as usize >= k)
            {
                return Err("a token code is out of the codebook's range".into());
            }
            self.check_ivf(k)?;
        } else if !self.codes.is_empty() || !self.ivf_docs.is_empty() {
            return Err("codes without a codebook".into());
        }
        if starts.first() != Some(&0)
            || starts.last().and_then(|&s| s.checked_mul(2)) != Some(self.tokens.len() as u64)
        {
            return Err("token section size disagrees with the panel offsets".into());
        }
        for (st, by) in [
            (&self.id_start, &self.id_bytes),
            (&self.payload_start, &self.payload_bytes),
        ] {
            let s: Vec<u64> = read_u64s(&b[st.clone()]).collect();
            if s.first() != Some(&0)
                || s.windows(2).any(|w| w[1] < w[0])
                || s.last() != Some(&(by.len() as u64))
            {
                return Err("id or payload offsets are inconsistent".into());
            }
        }
        for i in 0..n {
            if std::str::from_utf8(self.id_raw(i)).is_err() {
                return Err(format!("id of document {i} is not UTF-8"));
            }
        }
        Ok(())
    }

    /// The inverted file of a version 2 shard: K+1 monotone starts ending at the number of postings, every list
    /// strictly ascending and below the document count. Version 1 shards have none.
    fn check_ivf(&self, k: usize) -> std::result::Result<(), String> {
        if self.ivf_start.is_empty() && self.ivf_docs.is_empty() {
            return Ok(());
        }
        let b = self.bytes.as_slice();
        if Some(self.ivf_start.len()) != k.checked_add(1).and_then(|v| v.checked_mul(8))
            || !self.ivf_docs.len().is_multiple_of(4)
        {
            return Err("inverted file sections have the wrong size".into());
        }
        let starts: Vec<u64> = read_u64s(&b[self.ivf_start.clone()]).collect();
        let total = (self.ivf_docs.len() / 4) as u64;
        if starts.first() != Some(&0)
            || starts.last() != Some(&total)
            || starts.windows(2).any(|w| w[1] < w[0])
        {
            return Err("inverted file offsets are inconsistent".into());
        }
        let docs: &[u32] = bytemuck::cast_slice(&b[self.ivf_docs.clone()]);
        let n = self.meta.n_docs as u64;
        for w in starts.windows(2) {
            let list = &docs[w[0] as usize..w[1] as usize];
            if list.windows(2).any(|p| p[1] <= p[0])
                || list.last().is_some_and(|&d| u64::from(d) >= n)
            {
                return Err("an inverted list is out of order or names a missing document".into());
            }
        }
        Ok(())
    }
}
