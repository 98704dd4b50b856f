//! The write pipeline of the core: an upsert is validated once ([`input::validate_docs`]), coded with the
//! collection's codebook in small pool tasks, built into its memory segment with its log record (the collection
//! encodes it), then handed to the collection's sequencer; a delete goes straight to the collection.
use std::sync::Arc;
use std::time::Instant;

use crate::error::ServiceError;

use super::input::{self, DocInput};
use super::pool::CancelToken;
use super::{Core, DeleteOutcome, UpsertOutcome};

/// Documents per coding task of an upsert: about 4096 tokens at 64 per document, one block of the two-level
/// assignment, a few tens of milliseconds of one core. f16 documents are widened to f32 one such chunk at a time.
pub(crate) const CODE_CHUNK_DOCS: usize = 64;

impl Core {
    /// Inserts or replaces a batch; returns once it is durable and visible.
    pub async fn upsert(
        &self,
        name: &str,
        docs: Vec<DocInput>,
    ) -> Result<UpsertOutcome, ServiceError> {
        self.upsert_until(name, docs, None).await
    }

    /// [`Core::upsert`] with a client deadline. The deadline covers only the CPU part (validation, encoding);
    /// once the batch is handed to the log it is never abandoned, whatever the time.
    pub async fn upsert_until(
        &self,
        name: &str,
        docs: Vec<DocInput>,
        deadline: Option<Instant>,
    ) -> Result<UpsertOutcome, ServiceError> {
        let c = self.collection(name)?;
        let memtable = c.stats().memtable_documents;
        if memtable >= self.inner.tuning.max_memtable_docs as u64 {
            // Wakes the maintenance thread without taking any lock (this runs on an async worker).
            c.nudge();
            return Err(ServiceError::Overloaded {
                reason: format!(
                    "{memtable} documents are waiting to be flushed (the limit is {})",
                    self.inner.tuning.max_memtable_docs
                ),
                retry_after_ms: 1000,
            });
        }
        let ticket = self.ticket(deadline);
        let (dim, limits) = (c.config.dimension, self.inner.limits.clone());
        let valid = self
            .inner
            .pool
            .run(&ticket, move |_| {
                input::validate_docs(&docs, dim, &limits).map(Arc::new)
            })
            .await?;
        // Coding is most of an upsert's CPU: it runs as small tasks of this request, so that searches and other
        // requests take turns with it in the pool instead of waiting for the whole batch.
        let book = c.codebook();
        let codes = match &book {
            Some(book) => {
                let tasks = (0..valid.len())
                    .step_by(CODE_CHUNK_DOCS)
                    .map(|first| {
                        let (valid, book, c) = (valid.clone(), book.clone(), c.clone());
                        move |_: &CancelToken| {
                            let chunk = &valid[first..(first + CODE_CHUNK_DOCS).min(valid.len())];
                            Ok(c.code_documents(&book, chunk))
                        }
                    })
                    .collect();
                Some(self.inner.pool.run_all(&ticket, tasks).await?.concat())
            }
            None => None,
        };
        let coll = c.clone();
        let prepared = self
            .inner
            .pool
            .run(&ticket, move |tok| {
                if tok.is_cancelled() {
                    return Err(tok.exceeded());
                }
                coll.prepare_upsert(&valid, book.as_ref(), codes.as_deref())
            })
            .await?;
        drop(ticket);
        let ack = c.upsert(prepared).await?;
        Ok(UpsertOutcome {
            upserted: ack.affected as u64,
            sequence: ack.seq,
        })
    }

    /// Deletes documents by id (unknown ids are ignored); returns once durable.
    pub async fn delete(
        &self,
        name: &str,
        ids: Vec<String>,
    ) -> Result<DeleteOutcome, ServiceError> {
        let c = self.collection(name)?;
        input::validate_ids(&ids, &self.inner.limits)?;
        let ack = c.delete(ids).await?;
        Ok(DeleteOutcome {
            deleted: ack.affected as u64,
            sequence: ack.seq,
        })
    }
}
