//! The ingest of `chamfer soak`: the data set streamed in over gRPC, `--pipeline` upserts in flight, every
//! acknowledged document recorded by its row (a bit per document, so a 1M-document run holds 125 KB, not its
//! ids), and by default a SIGKILL of the server in the middle of it (`--kill-at`): the server is restarted on the
//! same ports, every acknowledged id is looked up, and the upserts that were in flight at the kill (their outcome
//! unknown) are sent again (an upsert by id is idempotent).
use std::collections::HashMap;
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use chamfer_client::ingest::{retrying, IngestOptions};
use chamfer_client::{Client, Document, Vectors};
use chamfer_data::dataset::DocStream;
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use super::server::{connect, log_tail, start_server, Clients, ServerProc};
use super::{MAX_ATTEMPTS, MAX_FAILURES_IN_A_ROW};
use crate::params::bar;

/// The documents (rows of the data set) the server acknowledged.
#[derive(Debug)]
pub(super) struct Acked {
    bits: Vec<u64>,
    count: u64,
}

impl Acked {
    fn new(n_docs: usize) -> Acked {
        Acked {
            bits: vec![0; n_docs.div_ceil(64)],
            count: 0,
        }
    }

    fn mark(&mut self, rows: Range<usize>) {
        for i in rows {
            let (w, b) = (i / 64, 1u64 << (i % 64));
            if self.bits[w] & b == 0 {
                self.bits[w] |= b;
                self.count += 1;
            }
        }
    }

    /// How many.
    pub(super) fn count(&self) -> u64 {
        self.count
    }

    fn rows(&self) -> impl Iterator<Item = usize> + '_ {
        self.bits.iter().enumerate().flat_map(|(w, &word)| {
            (0..64)
                .filter(move |b| word & (1 << b) != 0)
                .map(move |b| w * 64 + b)
        })
    }
}

/// Every acknowledged id the server does not have, each looked up by id (`get` without tokens, `chunk` ids a
/// request): the check of a kill, which a count could pass while an acknowledged document is missing (a
/// re-sent or extra document making up for it).
pub(super) async fn missing_ids(
    client: &Client,
    collection: &str,
    stream: &DocStream,
    acked: &Acked,
    chunk: usize,
) -> anyhow::Result<Vec<String>> {
    let mut missing = Vec::new();
    let mut ids: Vec<String> = Vec::with_capacity(chunk);
    let mut rows = acked.rows().peekable();
    while rows.peek().is_some() {
        ids.clear();
        ids.extend(rows.by_ref().take(chunk).map(|i| stream.id(i).to_owned()));
        let (_, miss) = client
            .get(collection, ids.iter().cloned(), false)
            .await
            .context("looking up the acknowledged ids")?;
        missing.extend(miss);
    }
    Ok(missing)
}

/// What the ingest did.
#[derive(Debug)]
pub(super) struct IngestOutcome {
    /// The documents the server acknowledged.
    pub(super) acked: Acked,
    /// Upserts sent again after push-back.
    pub(super) retries: u64,
    /// Upserts that failed otherwise.
    pub(super) errors: u64,
    /// Documents in those.
    pub(super) failed_docs: u64,
    /// First failure, as text.
    pub(super) first_error: Option<String>,
    pub(super) seconds: f64,
    /// The mid-ingest kill's report (`null` without one).
    pub(super) kill: Value,
    /// Acknowledged ids missing after the mid-ingest kill.
    pub(super) missing_after_kill: u64,
}

/// Reads documents `0..n_docs` of `stream` in batches of at most `batch` documents and `byte_cap` bytes of f16
/// vectors (a single larger document goes alone) and sends them, with their rows, to `tx`; stops early when the
/// receiver is gone.
fn read_batches(
    stream: &DocStream,
    n_docs: usize,
    batch: usize,
    byte_cap: usize,
    tx: &mpsc::Sender<(Range<usize>, Vec<Document>)>,
) -> anyhow::Result<()> {
    let dim = stream.dim();
    let mut buf = Vec::new();
    let mut start = 0;
    while start < n_docs {
        let (mut end, mut bytes) = (start, 0);
        while end < n_docs && end - start < batch {
            let b = stream.doc_len(end) * dim * 2 + stream.id(end).len();
            if end > start && bytes + b > byte_cap {
                break;
            }
            bytes += b;
            end += 1;
        }
        buf.clear();
        stream.read_range(start..end, &mut buf)?;
        let mut docs = Vec::with_capacity(end - start);
        let mut at = 0;
        for i in start..end {
            let len = stream.doc_len(i) * dim;
            docs.push(Document::from_vectors(
                stream.id(i),
                Vectors::f16(&buf[at..at + len], dim),
            ));
            at += len;
        }
        if tx.blocking_send((start..end, docs)).is_err() {
            break; // the uploader stopped; it reports why
        }
        start = end;
    }
    Ok(())
}

/// Everything the ingest needs besides the data.
pub(super) struct IngestRun<'a> {
    pub(super) collection: &'a str,
    pub(super) n_docs: usize,
    pub(super) batch: usize,
    pub(super) pipeline: usize,
    /// Bytes of f16 vectors per upsert, at most.
    pub(super) byte_cap: usize,
    /// Ids per lookup when acknowledged ids are checked (the server's `max_batch`).
    pub(super) lookup_chunk: usize,
    /// Kill the server once this many documents are acknowledged (`None`: no mid-ingest kill).
    pub(super) kill_at: Option<u64>,
    pub(super) dir: &'a Path,
    pub(super) log: &'a Path,
    pub(super) ready_timeout: Duration,
    pub(super) api_key: Option<String>,
    pub(super) admin_timeout: Duration,
    /// The search worker's client (`None` while the server is down).
    pub(super) searcher: &'a watch::Sender<Option<Client>>,
}

/// One upsert's outcome: its rows, the push-back retries and the result.
type Sent = (Range<usize>, u64, chamfer_client::Result<u64>);

impl IngestRun<'_> {
    /// Streams documents `0..n_docs` into the collection (see the module documentation of `soak` for the retry
    /// and failure rules); `server` and `clients` are replaced when the server is killed and restarted.
    pub(super) async fn run(
        &self,
        stream: Arc<DocStream>,
        server: &mut ServerProc,
        clients: &mut Clients,
    ) -> anyhow::Result<IngestOutcome> {
        let (tx, mut rx) = mpsc::channel(self.pipeline);
        let (n_docs, batch, byte_cap) = (self.n_docs, self.batch, self.byte_cap);
        let reader_stream = stream.clone();
        let reader = tokio::task::spawn_blocking(move || {
            read_batches(&reader_stream, n_docs, batch, byte_cap, &tx)
        });
        let pb = bar(n_docs as u64, "ingest");
        let mut out = IngestOutcome {
            acked: Acked::new(n_docs),
            retries: 0,
            errors: 0,
            failed_docs: 0,
            first_error: None,
            seconds: 0.0,
            kill: Value::Null,
            missing_after_kill: 0,
        };
        let mut set: JoinSet<Sent> = JoinSet::new();
        // The documents of each upsert in flight, to send again when a kill leaves its outcome unknown.
        let mut in_flight: HashMap<tokio::task::Id, (Range<usize>, Arc<Vec<Document>>)> =
            HashMap::new();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut input_done = false;
        let mut failures_in_a_row = 0;
        let t0 = Instant::now();
        loop {
            while !input_done && set.len() < self.pipeline {
                let Some((rows, docs)) = rx.recv().await else {
                    input_done = true;
                    break;
                };
                self.spawn(
                    &mut set,
                    &mut in_flight,
                    &clients.grpc,
                    rows,
                    Arc::new(docs),
                );
            }
            if set.is_empty() {
                break;
            }
            tokio::select! {
                Some(joined) = set.join_next_with_id() => {
                    let (id, (rows, retries, r)) = joined.context("an upsert task panicked")?;
                    in_flight.remove(&id);
                    let n = rows.len() as u64;
                    out.retries += retries;
                    match r {
                        Ok(_) => {
                            out.acked.mark(rows);
                            failures_in_a_row = 0;
                        }
                        Err(e) => {
                            out.errors += 1;
                            out.failed_docs += n;
                            failures_in_a_row += 1;
                            pb.suspend(|| eprintln!("an upsert of {n} documents failed: {e}"));
                            out.first_error.get_or_insert_with(|| e.to_string());
                            if failures_in_a_row >= MAX_FAILURES_IN_A_ROW {
                                set.abort_all();
                                pb.abandon();
                                bail!("{MAX_FAILURES_IN_A_ROW} upserts in a row failed; the last: {e}");
                            }
                        }
                    }
                    pb.inc(n);
                    if out.retries > 0 {
                        pb.set_message(format!("ingest ({} retries)", out.retries));
                    }
                    if out.kill.is_null() && self.kill_at.is_some_and(|k| out.acked.count() >= k) {
                        pb.suspend(|| {
                            eprintln!("killing the server (SIGKILL) mid-ingest, {} upserts in flight", set.len())
                        });
                        self.kill_and_restart(&mut set, &mut in_flight, &mut out, &stream, server, clients)
                            .await?;
                    }
                }
                _ = tick.tick() => {
                    if let Some(status) = server.exited() {
                        set.abort_all();
                        pb.abandon();
                        bail!("the server exited during the ingest ({status}): {}", log_tail(self.log, 0));
                    }
                }
            }
        }
        out.seconds = t0.elapsed().as_secs_f64();
        pb.finish_and_clear();
        reader
            .await
            .context("the data set reader panicked")?
            .context("reading the data set")?;
        Ok(out)
    }

    fn spawn(
        &self,
        set: &mut JoinSet<Sent>,
        in_flight: &mut HashMap<tokio::task::Id, (Range<usize>, Arc<Vec<Document>>)>,
        client: &Client,
        rows: Range<usize>,
        docs: Arc<Vec<Document>>,
    ) {
        let opts = IngestOptions {
            max_attempts: MAX_ATTEMPTS,
            ..IngestOptions::default()
        };
        let (client, collection) = (client.clone(), self.collection.to_string());
        let (task_rows, task_docs) = (rows.clone(), docs.clone());
        let handle = set.spawn(async move {
            let mut retries = 0;
            let r = retrying(&opts, &mut retries, || {
                client.upsert(collection.as_str(), task_docs.as_ref().clone())
            })
            .await
            .map(|r| r.upserted);
            (task_rows, retries, r)
        });
        in_flight.insert(handle.id(), (rows, docs));
    }

    /// SIGKILL with upserts in flight; restart on the same ports; check every id acknowledged so far; send the
    /// upserts whose outcome the kill left unknown again.
    async fn kill_and_restart(
        &self,
        set: &mut JoinSet<Sent>,
        in_flight: &mut HashMap<tokio::task::Id, (Range<usize>, Arc<Vec<Document>>)>,
        out: &mut IngestOutcome,
        stream: &DocStream,
        server: &mut ServerProc,
        clients: &mut Clients,
    ) -> anyhow::Result<()> {
        self.searcher.send_replace(None);
        let acked_before = out.acked.count();
        server.kill();
        // The upserts in flight: those answered before the kill count; the others are sent again.
        set.abort_all();
        while let Some(joined) = set.join_next_with_id().await {
            if let Ok((id, (rows, _, Ok(_)))) = joined {
                in_flight.remove(&id);
                out.acked.mark(rows);
            }
        }
        let resend: Vec<_> = in_flight.drain().map(|(_, v)| v).collect();
        let unknown_docs: usize = resend.iter().map(|(r, _)| r.len()).sum();
        let ports = (server.http, server.grpc);
        let (restarted, ready_s) =
            start_server(self.dir, self.log, self.ready_timeout, Some(ports)).await?;
        *server = restarted;
        *clients = connect(server, self.api_key.clone(), self.admin_timeout).await?;
        let missing = missing_ids(
            &clients.grpc,
            self.collection,
            stream,
            &out.acked,
            self.lookup_chunk,
        )
        .await?;
        eprintln!(
            "ready again in {ready_s:.2} s: {} acknowledged ids checked, {} missing; sending {} upserts again",
            out.acked.count(),
            missing.len(),
            resend.len()
        );
        out.missing_after_kill = missing.len() as u64;
        out.kill = json!({
            "acknowledged_at_kill": acked_before,
            "acknowledged_checked": out.acked.count(),
            "in_flight_documents": unknown_docs,
            "restart_to_ready_s": ready_s,
            "lost_documents": missing.len(),
            "first_lost": missing.first(),
        });
        self.searcher.send_replace(Some(clients.grpc.clone()));
        for (rows, docs) in resend {
            self.spawn(set, in_flight, &clients.grpc, rows, docs);
        }
        Ok(())
    }
}
