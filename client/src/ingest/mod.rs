//! Bulk ingest, one implementation for both protocols: batching, resume by id, retry with backoff when the
//! server pushes back, pipelined batches, a progress callback.
//!
//! **Resume rule.** Unless `force`, each batch's ids are looked up first and the ones the collection already
//! holds are skipped: a re-run after an interruption uploads only what is missing, a complete re-run uploads
//! nothing, and documents the collection holds besides the source's do not matter. (Upserts are idempotent by id,
//! so resuming never duplicates a document; a skipped document is not compared with the source: `force` uploads
//! every document again.)
//!
//! **Retry rule.** A call the server answers with backpressure ([`Error::is_backpressure`]: RESOURCE_EXHAUSTED
//! `overloaded` / HTTP 429, UNAVAILABLE / HTTP 503) is sent again after the server's hint (gRPC metadata
//! `retry-after-ms`, HTTP `Retry-After`) or, without one, after a backoff of 1 s doubling to 8 s; at most
//! [`IngestOptions::max_attempts`] attempts in a row. Any other error ends the ingest (re-run to resume).
//!
//! **Pipelining.** Looking up and reading the next batches overlaps the uploads (at most two batches wait).
//! Every acknowledged batch is one durable write. By default uploads go one at a time, in source order, so a
//! later document with the same id always wins; [`IngestOptions::pipeline`] keeps more in flight (the server's
//! cores busy), for sources whose ids do not repeat.
//!
//! **Memory.** Documents are asked of the source a batch at a time ([`DocumentSource::documents`]) and at most
//! `pipeline + 3` batches of them are held at once (one being read, two waiting, `pipeline` being uploaded:
//! [`IngestOptions::max_docs_held`]), so a source that reads its documents when asked (e.g. from a file) keeps
//! the client's memory bounded whatever the corpus's size; [`IngestReport::max_docs_held`] says how many were
//! held.
use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use crate::{Document, Error, Result};

/// Where documents go: the few calls an ingest makes, over gRPC ([`Client`](crate::Client)) or REST ([`RestClient`](crate::RestClient)).
pub trait IngestTarget: Sync {
    /// The collection's token dimension, or `None` when it does not exist.
    fn dimension(&self, collection: &str) -> impl Future<Output = Result<Option<usize>>> + Send;
    /// Creates the collection with the server's default parameters (an existing one is not an error).
    fn create(&self, collection: &str, dimension: usize)
        -> impl Future<Output = Result<()>> + Send;
    /// The ids among `ids` that the collection does not hold.
    fn missing(
        &self,
        collection: &str,
        ids: Vec<String>,
    ) -> impl Future<Output = Result<Vec<String>>> + Send;
    /// Upserts one batch durably; the number of documents written.
    fn upsert(
        &self,
        collection: &str,
        docs: Vec<Document>,
    ) -> impl Future<Output = Result<u64>> + Send;
}

/// Why a source could not give documents (an I/O error, a malformed record, ...).
pub type SourceError = Box<dyn std::error::Error + Send + Sync>;

/// Where documents come from: a numbered list of ids (in memory: resuming compares them) whose documents are
/// asked for a batch at a time.
pub trait DocumentSource: Sync {
    /// How many documents.
    fn len(&self) -> usize;
    /// True when there are none.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Their token dimension.
    fn dim(&self) -> usize;
    /// Document `i`'s id (ids are what resuming compares).
    fn id(&self, i: usize) -> &str;
    /// Documents `rows`, encoded for the wire, in that order: `rows` ascend within one batch (consecutive
    /// documents, at most [`IngestOptions::batch`]; the ones already stored are left out). The ingest calls it
    /// once per batch, on the task that drives it, and holds the result until the batch is acknowledged: a
    /// source that reads here (rather than ahead) keeps memory bounded. An error ends the ingest
    /// ([`IngestError::Source`]).
    fn documents(&self, rows: &[usize]) -> std::result::Result<Vec<Document>, SourceError>;
}

/// What the progress callback hears.
#[derive(Debug, Clone)]
pub enum IngestEvent {
    /// A batch is done (uploaded and acknowledged, or skipped): `done` of `total` source documents.
    Batch {
        /// Source documents handled so far (uploaded or skipped).
        done: u64,
        /// Source documents in all.
        total: u64,
        /// Documents the server has written so far (running total).
        uploaded: u64,
        /// Documents skipped so far because their id was already stored (running total).
        skipped: u64,
    },
    /// The server pushed back; the call is sent again after `wait`.
    Retry {
        /// Delay before the call is sent again (the server's hint or the backoff; at most 60 s).
        wait: Duration,
        /// The error the server pushed back with, as text.
        error: String,
    },
}

/// A progress callback.
pub type Progress = Arc<dyn Fn(&IngestEvent) + Send + Sync>;

/// How to ingest.
#[derive(Clone)]
pub struct IngestOptions {
    /// Documents per batch (one durable write each).
    pub batch: usize,
    /// Batches uploaded at once (at least 1). With 1 they go in source order, so a later document with the same
    /// id always wins; with more the server's cores stay busy, and a source whose ids repeat may end with an
    /// earlier copy (a data set folder's ids are unique).
    pub pipeline: usize,
    /// Upload every document, even those whose id is stored.
    pub force: bool,
    /// Create the collection when it is absent.
    pub create: bool,
    /// Most attempts of one call while the server pushes back.
    pub max_attempts: u32,
    /// Called after every batch and before every retry.
    pub progress: Option<Progress>,
}

impl Default for IngestOptions {
    fn default() -> Self {
        IngestOptions {
            batch: 64,
            pipeline: 1,
            force: false,
            create: true,
            max_attempts: 60,
            progress: None,
        }
    }
}

impl IngestOptions {
    /// The most documents an ingest with these options holds at once, whatever the source's size: `pipeline`
    /// batches being uploaded, two waiting, one being read.
    pub fn max_docs_held(&self) -> usize {
        (self.pipeline.max(1) + 3) * self.batch.max(1)
    }
}

impl std::fmt::Debug for IngestOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IngestOptions")
            .field("batch", &self.batch)
            .field("pipeline", &self.pipeline)
            .field("force", &self.force)
            .field("create", &self.create)
            .field("max_attempts", &self.max_attempts)
            .field("progress", &self.progress.is_some())
            .finish()
    }
}

/// What an ingest did.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct IngestReport {
    /// Documents the server wrote.
    pub uploaded: u64,
    /// Documents skipped because their id was stored.
    pub skipped: u64,
    /// Token vectors uploaded.
    pub tokens: u64,
    /// Bytes of packed vectors uploaded (the gRPC encoding; REST sends them as JSON numbers).
    pub bytes: u64,
    /// Calls sent again after backpressure.
    pub retries: u64,
    /// Wall-clock duration of the whole ingest, in seconds.
    pub seconds: f64,
    /// Most documents held at once: read from the source and not yet acknowledged (at most
    /// [`IngestOptions::max_docs_held`], whatever the source's size).
    pub max_docs_held: u64,
}

/// Why an ingest stopped.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The collection exists with another dimension.
    #[error("collection {collection} has dimension {stored}, the data {data}")]
    Dimension {
        /// The collection's name.
        collection: String,
        /// The collection's token dimension.
        stored: usize,
        /// The data's token dimension.
        data: usize,
    },
    /// The collection is absent and creating it was not allowed.
    #[error("collection {0} does not exist (and creating it was not allowed)")]
    NoCollection(String),
    /// The source could not give a batch's documents; what was acknowledged before stays written.
    #[error("reading documents {start}..{end} failed: {source}")]
    Source {
        /// The batch's first document (row in the source).
        start: usize,
        /// One past its last.
        end: usize,
        /// The source's error.
        #[source]
        source: SourceError,
    },
    /// A call failed (after its retries); what was acknowledged before stays written.
    #[error("{step} failed (re-run to resume): {source}")]
    Call {
        /// What the ingest was doing (e.g. "upserting a batch").
        step: &'static str,
        /// The call's error.
        #[source]
        source: Error,
    },
}

fn step(step: &'static str) -> impl FnOnce(Error) -> IngestError {
    move |source| IngestError::Call { step, source }
}

/// Sends `call` until it succeeds, fails with something other than backpressure, or `opts.max_attempts` is used
/// up (the retry rule of the module documentation), adding the calls sent again to `retries` and telling
/// `opts.progress` about each wait. Public for callers that send their own requests with the same rule (e.g.
/// `chamfer soak`, which keeps several upserts in flight).
pub async fn retrying<T, F, Fut>(opts: &IngestOptions, retries: &mut u64, mut call: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let mut backoff = Duration::from_secs(1);
    let mut attempt = 1;
    loop {
        match call().await {
            Err(e) if e.is_backpressure() && attempt < opts.max_attempts => {
                // A hint is honoured, within reason (a broken server must not stall the client for hours).
                let wait = e
                    .retry_after()
                    .unwrap_or(backoff)
                    .min(Duration::from_secs(60));
                if let Some(p) = &opts.progress {
                    p(&IngestEvent::Retry {
                        wait,
                        error: e.to_string(),
                    });
                }
                tokio::time::sleep(wait).await;
                backoff = (backoff * 2).min(Duration::from_secs(8));
                attempt += 1;
                *retries += 1;
            }
            r => return r,
        }
    }
}

/// One batch ready to upload: its size in the source and the documents to send.
struct Batch {
    rows: usize,
    docs: Vec<Document>,
}

/// An upload in flight; it ends with the batch's size in the source, its documents, the calls sent again and
/// the documents written.
type Upload<'a> = Pin<Box<dyn Future<Output = (usize, usize, u64, Result<u64>)> + Send + 'a>>;

/// Waits for the first of `uploads` to end and takes it out (the others go on).
async fn first_done<T>(uploads: &mut Vec<Pin<Box<dyn Future<Output = T> + Send + '_>>>) -> T {
    std::future::poll_fn(|cx| {
        for i in 0..uploads.len() {
            if let Poll::Ready(out) = uploads[i].as_mut().poll(cx) {
                drop(uploads.swap_remove(i));
                return Poll::Ready(out);
            }
        }
        Poll::Pending
    })
    .await
}

/// Uploads `src` into `collection` (created when absent and `opts.create`), resuming by id (see the module
/// documentation for the rules).
pub async fn ingest<T: IngestTarget, S: DocumentSource>(
    target: &T,
    collection: &str,
    src: &S,
    opts: &IngestOptions,
) -> std::result::Result<IngestReport, IngestError> {
    let t0 = Instant::now();
    let mut retries = 0;
    let stored = retrying(opts, &mut retries, || target.dimension(collection))
        .await
        .map_err(step("describing the collection"))?;
    match stored {
        Some(d) if d != src.dim() => {
            return Err(IngestError::Dimension {
                collection: collection.into(),
                stored: d,
                data: src.dim(),
            })
        }
        Some(_) => {}
        None if opts.create => {
            retrying(opts, &mut retries, || target.create(collection, src.dim()))
                .await
                .map_err(step("creating the collection"))?
        }
        None => return Err(IngestError::NoCollection(collection.into())),
    }

    // Two batches wait in the channel, one is being read, `pipeline` are uploaded: `max_docs_held`.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Batch>(2);
    let batch = opts.batch.max(1);
    let pipeline = opts.pipeline.max(1);
    let total = src.len() as u64;
    // Documents read from the source and not yet acknowledged, now and at most.
    let (held, max_held) = (AtomicU64::new(0), AtomicU64::new(0));
    // Producer: look up each batch's stored ids, read the rest from the source.
    let produce = async {
        let mut retries = 0;
        let mut skipped = 0u64;
        for start in (0..src.len()).step_by(batch) {
            let rows: Vec<usize> = (start..(start + batch).min(src.len())).collect();
            let todo: Vec<usize> = if opts.force {
                rows.clone()
            } else {
                let ids: Vec<String> = rows.iter().map(|&i| src.id(i).to_string()).collect();
                let missing: HashSet<String> = retrying(opts, &mut retries, || {
                    target.missing(collection, ids.clone())
                })
                .await
                .map_err(step("looking up stored ids"))?
                .into_iter()
                .collect();
                rows.iter()
                    .copied()
                    .filter(|&i| missing.contains(src.id(i)))
                    .collect()
            };
            skipped += (rows.len() - todo.len()) as u64;
            let end = start + rows.len();
            let docs = if todo.is_empty() {
                Vec::new()
            } else {
                src.documents(&todo)
                    .map_err(|source| IngestError::Source { start, end, source })?
            };
            if docs.len() != todo.len() {
                return Err(IngestError::Source {
                    start,
                    end,
                    source: format!(
                        "the source gave {} documents for {} rows",
                        docs.len(),
                        todo.len()
                    )
                    .into(),
                });
            }
            let now = held.fetch_add(docs.len() as u64, Ordering::Relaxed) + docs.len() as u64;
            max_held.fetch_max(now, Ordering::Relaxed);
            if tx
                .send(Batch {
                    rows: rows.len(),
                    docs,
                })
                .await
                .is_err()
            {
                break; // the uploader stopped; its error is reported
            }
        }
        drop(tx);
        Ok::<_, IngestError>((skipped, retries))
    };
    // Uploader: `pipeline` batches in flight (one: in source order), each retried on its own.
    let upload = async {
        let mut r = IngestReport::default();
        let (mut done, mut skipped) = (0u64, 0u64);
        let mut inflight: Vec<Upload<'_>> = Vec::new();
        let mut input_done = false;
        loop {
            let finished = if !input_done && inflight.len() < pipeline {
                tokio::select! {
                    b = rx.recv() => {
                        match b {
                            Some(b) => {
                                for d in &b.docs {
                                    r.tokens += d.vectors.n_tokens() as u64;
                                    r.bytes += d.vectors.byte_len() as u64;
                                }
                                inflight.push(Box::pin(async move {
                                    let mut retries = 0;
                                    let uploaded = if b.docs.is_empty() {
                                        Ok(0)
                                    } else {
                                        retrying(opts, &mut retries, || {
                                            target.upsert(collection, b.docs.clone())
                                        })
                                        .await
                                    };
                                    (b.rows, b.docs.len(), retries, uploaded)
                                }));
                            }
                            None => input_done = true,
                        }
                        None
                    }
                    f = first_done(&mut inflight), if !inflight.is_empty() => Some(f),
                }
            } else if !inflight.is_empty() {
                Some(first_done(&mut inflight).await)
            } else {
                break;
            };
            let Some((rows, docs, retries, uploaded)) = finished else {
                continue;
            };
            r.retries += retries;
            r.uploaded += uploaded.map_err(step("upserting a batch"))?;
            held.fetch_sub(docs as u64, Ordering::Relaxed);
            skipped += (rows - docs) as u64;
            done += rows as u64;
            if let Some(p) = &opts.progress {
                p(&IngestEvent::Batch {
                    done,
                    total,
                    uploaded: r.uploaded,
                    skipped,
                });
            }
        }
        Ok::<_, IngestError>(r)
    };
    let (produced, uploaded) = tokio::join!(produce, upload);
    // The uploader's error first: when it stops, the producer only notices.
    let mut r = uploaded?;
    let (skipped, lookup_retries) = produced?;
    r.skipped = skipped;
    r.retries += retries + lookup_retries;
    r.seconds = t0.elapsed().as_secs_f64();
    r.max_docs_held = max_held.load(Ordering::Relaxed);
    Ok(r)
}

mod targets;

#[cfg(test)]
mod tests;
