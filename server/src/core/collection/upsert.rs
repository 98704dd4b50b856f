//! The collection's write path: an upsert's token codes, its memory segment and its log record, then the two
//! writes (upsert, delete) handed to the sequencer. The log record is encoded here, not by the service layer.
//!
//! Tokens keep the width the client sent them in ([`Tokens`]): an f16 batch is logged and laid out in its
//! memory segment from the client's f16 values. Only code that needs f32 widens them: the codebook's assignment
//! (a chunk of documents at a time, into a buffer each pool thread reuses) and, as a fallback, a segment that
//! stores FDEs (a collection without a codebook, a batch of at least `hnsw.min_docs` documents) or a batch that
//! mixes widths. [`Widening`] counts every widened value.
use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use chamfer_index::codebook::Codebook;
use chamfer_index::shard::{HalfDoc, Shard, ShardDoc};
use chamfer_index::tokens::TokenMatrix;
use chamfer_index::IndexError;
use tokio::sync::oneshot;

use crate::core::input::ValidDoc;
use crate::core::wal;
use crate::error::ServiceError;

use super::sequencer::Cmd;
use super::{closing, Collection, WriteAck, WriteOp};

/// Buffers of the codebook's assignment larger than this (bytes) are not kept between chunks.
const KEEP_BUFFER_BYTES: usize = 16 << 20;

thread_local! {
    /// The f32 values of one coding chunk, reused by the chunks a pool thread codes.
    static CODE_BUF: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Counts of f16 token values the write path widened to f32 (see the module documentation).
#[derive(Debug, Default)]
pub struct Widening {
    values: AtomicU64,
    largest: AtomicU64,
}

impl Widening {
    fn record(&self, widened: usize, at_once: usize) {
        if widened > 0 {
            self.values.fetch_add(widened as u64, Ordering::Relaxed);
            self.largest.fetch_max(at_once as u64, Ordering::Relaxed);
        }
    }

    /// f16 values widened to f32, over the collection's life.
    pub fn values(&self) -> u64 {
        self.values.load(Ordering::Relaxed)
    }

    /// The most values held widened at once (one coding chunk, or one fallback segment).
    pub fn largest(&self) -> u64 {
        self.largest.load(Ordering::Relaxed)
    }
}

/// An upsert ready for the log: its memory segment and its record.
pub struct PreparedUpsert {
    shard: Arc<Shard>,
    kind: u8,
    body: Vec<u8>,
}

impl PreparedUpsert {
    /// The record's kind and body (what the log will hold).
    pub fn record(&self) -> (u8, &[u8]) {
        (self.kind, &self.body)
    }

    /// The memory segment.
    pub fn shard(&self) -> &Shard {
        &self.shard
    }
}

impl Collection {
    /// The f16 values this collection's write path widened.
    pub fn widening(&self) -> &Widening {
        &self.widening
    }

    /// Token codes of `docs` under `book`, one vector per document (the chunk's tokens assigned in one call; CPU
    /// work). Empty vectors when the dimensions disagree (the segment build then refuses them as not fitting).
    pub fn code_documents(&self, book: &Codebook, docs: &[ValidDoc]) -> Vec<Vec<u16>> {
        let dim = self.config.dimension;
        if book.dim() != dim || dim == 0 {
            return vec![Vec::new(); docs.len()];
        }
        let codes = CODE_BUF.with(|buf| {
            let mut buf = buf.borrow_mut();
            buf.clear();
            let widened: usize = docs.iter().map(|d| d.tokens.extend_f32(&mut buf)).sum();
            self.widening.record(widened, buf.len());
            let codes = book.assign_sequential(&buf);
            buf.clear();
            if buf.capacity() * 4 > KEEP_BUFFER_BYTES {
                *buf = Vec::new();
            }
            codes
        });
        let mut at = 0;
        docs.iter()
            .map(|d| {
                let n = d.tokens.len();
                let mine = codes.get(at..at + n).unwrap_or_default().to_vec();
                at += n;
                mine
            })
            .collect()
    }

    /// Builds an upsert's memory segment and encodes its log record (CPU work: run it off the async workers).
    /// `book` is the codebook from [`Collection::codebook`] and `codes` the documents' codes under it
    /// ([`Collection::code_documents`]).
    pub fn prepare_upsert(
        &self,
        docs: &[ValidDoc],
        book: Option<&Arc<Codebook>>,
        codes: Option<&[Vec<u16>]>,
    ) -> Result<PreparedUpsert, ServiceError> {
        let shard = self.build_upsert_segment(docs, book, codes)?;
        let (kind, body) = wal::encode_upsert_tokens(
            docs.iter()
                .map(|d| (d.id.as_str(), &d.tokens, &d.metadata[..])),
        );
        Ok(PreparedUpsert {
            shard: Arc::new(shard),
            kind,
            body,
        })
    }

    /// The memory segment of an upsert: from the f16 values as they are when every document is f16 and the
    /// segment stores no FDE; else from f32 values (f16 documents widened, counted).
    fn build_upsert_segment(
        &self,
        docs: &[ValidDoc],
        book: Option<&Arc<Codebook>>,
        codes: Option<&[Vec<u16>]>,
    ) -> Result<Shard, IndexError> {
        let params = &self.config.params;
        let dim = self.config.dimension;
        let halves: Option<Vec<HalfDoc<'_>>> = docs
            .iter()
            .map(|d| {
                Some(HalfDoc {
                    id: &d.id,
                    dim,
                    tokens: d.tokens.as_f16()?,
                    payload: &d.metadata,
                })
            })
            .collect();
        // Segments of a coded collection store no FDE below the graph threshold (see `Coding::Given`).
        let no_fde = params.codebook_size != 0 && docs.len() < params.hnsw.min_docs.max(1);
        if let (Some(halves), true) = (&halves, no_fde) {
            match (book, codes) {
                (None, _) => return Shard::build_in_memory_tokens_f16(params, halves),
                (Some(book), Some(codes)) => {
                    let codes: Vec<&[u16]> = codes.iter().map(Vec::as_slice).collect();
                    return Shard::build_in_memory_f16_coded(params, halves, book, &codes);
                }
                (Some(_), None) => {}
            }
        }
        let mut wide: Vec<Option<Vec<f32>>> = Vec::with_capacity(docs.len());
        let mut widened = 0;
        for d in docs {
            wide.push(d.tokens.as_f16().map(|_| {
                let mut v = Vec::with_capacity(d.tokens.n_values());
                widened += d.tokens.extend_f32(&mut v);
                v
            }));
        }
        self.widening.record(widened, widened);
        let shard_docs = docs
            .iter()
            .zip(&wide)
            .map(|(d, w)| {
                let tokens = match (w, d.tokens.as_f32()) {
                    (Some(w), _) => TokenMatrix::new(w, dim, "document")?,
                    (None, Some(t)) => t,
                    (None, None) => unreachable!("tokens are f32 or f16"),
                };
                Ok(ShardDoc {
                    id: &d.id,
                    tokens,
                    payload: &d.metadata,
                })
            })
            .collect::<Result<Vec<_>, IndexError>>()?;
        let known: Option<Vec<Option<&[u16]>>> =
            codes.map(|codes| codes.iter().map(|c| Some(c.as_slice())).collect());
        self.build_memory_shard_coded(&shard_docs, book, known.as_deref())
    }

    /// Logs a prepared upsert and waits until it is durable and visible.
    pub async fn upsert(&self, prepared: PreparedUpsert) -> Result<WriteAck, ServiceError> {
        let PreparedUpsert { shard, kind, body } = prepared;
        self.write(WriteOp::Upsert { shard }, kind, body).await
    }

    /// Deletes documents by id (unknown ids are ignored); returns once durable and applied.
    pub async fn delete(&self, ids: Vec<String>) -> Result<WriteAck, ServiceError> {
        let body = wal::encode_delete(&ids);
        self.write(WriteOp::Delete { ids }, wal::KIND_DELETE, body)
            .await
    }

    /// Appends a write (its record already encoded) to the log and waits until it is durable and applied.
    pub(crate) async fn write(
        &self,
        op: WriteOp,
        kind: u8,
        body: Vec<u8>,
    ) -> Result<WriteAck, ServiceError> {
        let (reply, rx) = oneshot::channel();
        self.send(Cmd::Write {
            op,
            kind,
            body,
            reply,
        })?;
        rx.await.map_err(|_| closing())?
    }
}
