//! The service core: the ONE implementation of every operation, called by both the gRPC and the REST adapter.
//!
//! It owns the collection registry, the CPU pool and the limits. Each public method validates its input once
//! (see [`input`]), runs CPU work on the pool, and returns protocol-neutral results or a [`ServiceError`]. The
//! adapters only translate wire types to and from these.
//!
//! `types.rs` holds the operations' results, `upsert.rs` the write pipeline (the collection encodes the log
//! records: this module does not touch the log).
//!
//! On disk: `<data_dir>/LOCK` (an advisory lock: one server per data directory) and
//! `<data_dir>/collections/<name>/` (see [`manifest`]).
pub mod collection;
pub mod filter;
pub mod input;
pub mod manifest;
pub mod pool;
pub mod rerank;
pub mod storage_error;
mod types;
mod upsert;
pub mod wal;

#[cfg(test)]
mod dtype_tests;
#[cfg(test)]
mod fault_tests;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use chamfer_index::fsutil;
use chamfer_index::tokens::TokenMatrix;

use crate::config::{Limits, Settings};
use crate::error::ServiceError;
use collection::{Collection, Snapshot, Stats, Tuning};
use input::{CollectionParamsInput, SearchInput, ValidSearch};
use manifest::{CollectionConfig, Layout, MANIFEST_VERSION};
use pool::{CancelToken, CpuPool, PoolStats, Ticket};
pub use types::{CollectionInfo, DeleteOutcome, DocOut, GetOutcome, Health, HitOut, UpsertOutcome};

/// Largest token dimension a collection may have.
pub const MAX_DIMENSION: usize = 65_536;

/// A collection directory as the registry knows it.
#[derive(Clone)]
enum Slot {
    /// Being opened at start-up (its log replayed); requests answer 503 until it is ready.
    Opening,
    Ready(Arc<Collection>),
    /// Damaged (or not a collection): the reason names the file. Nothing in its directory is touched.
    Unavailable(String),
}

struct Inner {
    limits: Limits,
    tuning: Tuning,
    root: PathBuf,
    /// The registry (parking_lot: taken on async workers, never held across I/O or an await).
    collections: RwLock<BTreeMap<String, Slot>>,
    /// Serialises create and drop (a dropped collection's directory is gone before a new one of the same name
    /// can be made). A tokio lock: held across blocking file work run on the blocking pool, never on a worker.
    lifecycle: tokio::sync::Mutex<()>,
    pool: CpuPool,
    /// Collections still to open at start-up (0 when loaded).
    opening: AtomicUsize,
    request_timeout: Duration,
    closed: AtomicBool,
    _lock: File,
}

/// The service core (cheap to clone: an `Arc`).
#[derive(Clone)]
pub struct Core {
    inner: Arc<Inner>,
}

impl Core {
    /// Opens (or creates) the data directory and every collection in it, replaying their logs. Blocking: call
    /// it from `spawn_blocking` in async code. Same as [`Core::new`] then [`Core::load`].
    pub fn open(settings: &Settings) -> Result<Core, ServiceError> {
        let core = Core::new(settings)?;
        core.load();
        Ok(core)
    }

    /// Takes the data directory (its lock, the CPU pool) and lists its collections as opening, without
    /// opening them yet: the listeners can answer (not ready, with the reason) while [`Core::load`] runs.
    pub fn new(settings: &Settings) -> Result<Core, ServiceError> {
        let tuning = Tuning::new(
            settings.flush_threshold_docs,
            settings.compaction_max_shards,
        );
        Core::new_tuned(settings, tuning)
    }

    /// [`Core::new`] with explicit background-work thresholds (tests use a tiny memtable cap).
    pub(crate) fn new_tuned(settings: &Settings, tuning: Tuning) -> Result<Core, ServiceError> {
        let root = settings.data_dir.join("collections");
        std::fs::create_dir_all(&root).map_err(|e| ServiceError::io(&root, e))?;
        let lock_path = settings.data_dir.join("LOCK");
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| ServiceError::io(&lock_path, e))?;
        lock.try_lock().map_err(|e| {
            ServiceError::Unavailable(format!(
                "data directory {} is in use by another chamfer server ({e})",
                settings.data_dir.display()
            ))
        })?;
        let pool = CpuPool::new(settings.cpu_threads())?;
        let mut collections = BTreeMap::new();
        for entry in std::fs::read_dir(&root).map_err(|e| ServiceError::io(&root, e))? {
            let entry = entry.map_err(|e| ServiceError::io(&root, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(rest) = name
                .strip_prefix(".creating-")
                .or(name.strip_prefix(".dropped-"))
            {
                // An interrupted create (never acknowledged) or drop (already acknowledged as gone).
                tracing::info!(dir = %name, collection = rest, "removing an interrupted create or drop");
                let _ = std::fs::remove_dir_all(entry.path());
                continue;
            }
            if !entry.path().is_dir() {
                tracing::warn!(entry = %name, "ignoring a stray file in the collections directory");
                continue;
            }
            if input::validate_collection_name(&name).is_err() {
                tracing::warn!(entry = %name, "ignoring a directory whose name is not a collection name");
                continue;
            }
            collections.insert(name, Slot::Opening);
        }
        let opening = collections.len();
        Ok(Core {
            inner: Arc::new(Inner {
                limits: settings.limits.clone(),
                tuning,
                root,
                collections: RwLock::new(collections),
                lifecycle: tokio::sync::Mutex::new(()),
                pool,
                opening: AtomicUsize::new(opening),
                request_timeout: settings.request_timeout(),
                closed: AtomicBool::new(false),
                _lock: lock,
            }),
        })
    }

    /// Opens every collection listed by [`Core::new`], one at a time. A damaged one is marked unavailable with
    /// its reason (logged at ERROR); the others open regardless. Blocking.
    pub fn load(&self) {
        let names: Vec<String> = self
            .registry()
            .iter()
            .filter(|(_, s)| matches!(s, Slot::Opening))
            .map(|(n, _)| n.clone())
            .collect();
        for name in names {
            let dir = self.inner.root.join(&name);
            let tuning = self.inner.tuning;
            let slot = if self.inner.closed.load(Ordering::SeqCst) {
                Slot::Unavailable("the server is shutting down".into())
            } else {
                match self
                    .inner
                    .pool
                    .install(|| Collection::open(Layout { dir }, tuning))
                {
                    Ok(c) => Slot::Ready(c),
                    Err(e) => {
                        tracing::error!(collection = %name, error = %e,
                            "collection is damaged and stays unavailable; nothing in its directory was changed");
                        Slot::Unavailable(self.public_reason(&e.to_string()))
                    }
                }
            };
            self.registry_mut().insert(name, slot);
            self.inner.opening.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Readiness and what stands in its way.
    pub fn health(&self) -> Health {
        let reg = self.registry();
        let mut h = Health::default();
        for (name, slot) in reg.iter() {
            match slot {
                Slot::Opening => {}
                Slot::Ready(c) => {
                    if let Some(reason) = c.damaged() {
                        h.unavailable
                            .push((name.clone(), self.public_reason(&reason)));
                    }
                    if let Some(e) = c.storage_full() {
                        h.storage_full.push((name.clone(), e));
                    }
                }
                Slot::Unavailable(reason) => h.unavailable.push((name.clone(), reason.clone())),
            }
        }
        let opening = self.inner.opening.load(Ordering::SeqCst);
        h.reason = if self.inner.closed.load(Ordering::SeqCst) {
            Some("the server is shutting down".into())
        } else if opening > 0 {
            Some(format!(
                "starting: {opening} of {} collections still opening (replaying their logs)",
                reg.len()
            ))
        } else if let Some((name, e)) = h.storage_full.first() {
            Some(format!(
                "out of disk space: writes to collection {name:?} fail ({e})"
            ))
        } else {
            None
        };
        h.ready = h.reason.is_none();
        h
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.inner.limits
    }

    /// The CPU pool's counters.
    pub fn pool_stats(&self) -> PoolStats {
        self.inner.pool.stats()
    }

    /// A request's claim on the CPU pool: its deadline is `request_timeout_ms` from now, or `client` when that
    /// is earlier.
    fn ticket(&self, client: Option<Instant>) -> Ticket {
        let (now, timeout) = (Instant::now(), self.inner.request_timeout);
        let deadline = match client {
            Some(c) if c < now + timeout => (c, c.saturating_duration_since(now)),
            Some(_) | None => (now + timeout, timeout),
        };
        self.inner
            .pool
            .ticket_for(CancelToken::with_budget(Some(deadline)))
    }

    /// False once shutdown started.
    pub fn is_ready(&self) -> bool {
        !self.inner.closed.load(Ordering::SeqCst)
    }

    fn registry(&self) -> RwLockReadGuard<'_, BTreeMap<String, Slot>> {
        self.inner.collections.read()
    }

    fn registry_mut(&self) -> RwLockWriteGuard<'_, BTreeMap<String, Slot>> {
        self.inner.collections.write()
    }

    fn collection(&self, name: &str) -> Result<Arc<Collection>, ServiceError> {
        if !self.is_ready() {
            return Err(ServiceError::Unavailable(
                "the server is shutting down".into(),
            ));
        }
        match self.registry().get(name) {
            Some(Slot::Ready(c)) => match c.damaged() {
                None => Ok(c.clone()),
                Some(reason) => Err(ServiceError::CollectionUnavailable {
                    name: name.to_string(),
                    reason: self.public_reason(&reason),
                }),
            },
            Some(Slot::Opening) => Err(ServiceError::CollectionUnavailable {
                name: name.to_string(),
                reason: "still opening (replaying its log); retry shortly".into(),
            }),
            Some(Slot::Unavailable(reason)) => Err(ServiceError::CollectionUnavailable {
                name: name.to_string(),
                reason: reason.clone(),
            }),
            None => Err(ServiceError::CollectionNotFound(name.to_string())),
        }
    }

    fn info(c: &Collection) -> CollectionInfo {
        CollectionInfo {
            name: c.config.name.clone(),
            dimension: c.config.dimension,
            params: c.config.params.clone(),
            stats: c.stats(),
        }
    }

    // ----- collections ------------------------------------------------------------------------------------

    /// Creates a collection.
    pub async fn create_collection(
        &self,
        name: String,
        dimension: usize,
        overrides: CollectionParamsInput,
    ) -> Result<CollectionInfo, ServiceError> {
        if !self.is_ready() {
            return Err(ServiceError::Unavailable(
                "the server is shutting down".into(),
            ));
        }
        input::validate_collection_name(&name)?;
        if dimension == 0 || dimension > MAX_DIMENSION {
            return Err(ServiceError::InvalidArgument(format!(
                "dimension must be in 1..={MAX_DIMENSION}, got {dimension}"
            )));
        }
        let params = overrides.resolve(dimension)?;
        let _lifecycle = self.inner.lifecycle.lock().await;
        if self.registry().contains_key(&name) {
            return Err(ServiceError::CollectionExists(name));
        }
        let core = self.clone();
        blocking(move || {
            let config = CollectionConfig {
                format_version: MANIFEST_VERSION,
                name: name.clone(),
                dimension,
                params,
            };
            let c = Collection::create(&core.inner.root, config, core.inner.tuning)?;
            let info = Core::info(&c);
            core.registry_mut().insert(name, Slot::Ready(c));
            tracing::info!(collection = %info.name, dimension, "created collection");
            Ok(info)
        })
        .await
    }

    /// Every collection that serves, by name (see [`Core::health`] for the others).
    pub fn list_collections(&self) -> Vec<CollectionInfo> {
        self.ready_collections()
            .iter()
            .map(|(_, c)| Core::info(c))
            .collect()
    }

    /// A damage report as clients see it: paths relative to the data directory.
    fn public_reason(&self, reason: &str) -> String {
        let root = format!("{}", self.inner.root.display());
        reason.replace(&root, "collections")
    }

    fn ready_collections(&self) -> Vec<(String, Arc<Collection>)> {
        self.registry()
            .iter()
            .filter_map(|(n, s)| match s {
                Slot::Ready(c) => Some((n.clone(), c.clone())),
                Slot::Opening | Slot::Unavailable(_) => None,
            })
            .collect()
    }

    /// One collection.
    pub fn describe(&self, name: &str) -> Result<CollectionInfo, ServiceError> {
        let c = self.collection(name)?;
        Ok(Core::info(&c))
    }

    /// Deletes a collection and its files (a damaged one too: that is the operator's explicit choice).
    pub async fn drop_collection(&self, name: &str) -> Result<(), ServiceError> {
        if !self.is_ready() {
            return Err(ServiceError::Unavailable(
                "the server is shutting down".into(),
            ));
        }
        let _lifecycle = self.inner.lifecycle.lock().await;
        let slot = self
            .registry()
            .get(name)
            .cloned()
            .ok_or_else(|| ServiceError::CollectionNotFound(name.to_string()))?;
        let c = match slot {
            Slot::Opening => {
                return Err(ServiceError::CollectionUnavailable {
                    name: name.to_string(),
                    reason: "still opening; drop it once it is open".into(),
                })
            }
            Slot::Ready(c) => Some(c),
            Slot::Unavailable(_) => None,
        };
        self.registry_mut().remove(name);
        let root = self.inner.root.clone();
        let name = name.to_string();
        blocking(move || {
            // Every thread of this instance is done with its directory once close returns.
            if let Some(c) = &c {
                c.close();
            }
            let dir = root.join(&name);
            // Rename first: a crash mid-delete leaves a dot-directory that start-up removes, never a half
            // collection.
            let trash = root.join(format!(".dropped-{name}"));
            let _ = std::fs::remove_dir_all(&trash);
            std::fs::rename(&dir, &trash).map_err(|e| ServiceError::io(&dir, e))?;
            fsutil::sync_dir(&root);
            std::fs::remove_dir_all(&trash).map_err(|e| ServiceError::io(&trash, e))?;
            tracing::info!(collection = %name, "dropped collection");
            Ok(())
        })
        .await
    }

    /// Flushes the memtable into a shard now.
    pub async fn flush(&self, name: &str) -> Result<CollectionInfo, ServiceError> {
        let c = self.collection(name)?;
        blocking(move || {
            c.flush()?;
            Ok(Core::info(&c))
        })
        .await
    }

    /// Merges the shards now.
    pub async fn compact(&self, name: &str) -> Result<CollectionInfo, ServiceError> {
        let c = self.collection(name)?;
        blocking(move || {
            c.compact()?;
            Ok(Core::info(&c))
        })
        .await
    }

    // ----- documents --------------------------------------------------------------------------------------

    /// Fetches documents by id.
    pub async fn get(
        &self,
        name: &str,
        ids: Vec<String>,
        with_tokens: bool,
    ) -> Result<GetOutcome, ServiceError> {
        self.get_until(name, ids, with_tokens, None).await
    }

    /// [`Core::get`] with a client deadline.
    pub async fn get_until(
        &self,
        name: &str,
        ids: Vec<String>,
        with_tokens: bool,
        deadline: Option<Instant>,
    ) -> Result<GetOutcome, ServiceError> {
        let c = self.collection(name)?;
        input::validate_ids(&ids, &self.inner.limits)?;
        let ticket = self.ticket(deadline);
        let found = c.get(&ids)?;
        self.inner
            .pool
            .run(&ticket, move |_| {
                let mut out = GetOutcome::default();
                for (id, f) in ids.into_iter().zip(found) {
                    match f {
                        Some(r) => {
                            let payload = r.shard.payload(r.doc);
                            out.documents.push(DocOut {
                                id,
                                n_tokens: r.shard.n_tokens(r.doc),
                                tokens: with_tokens.then(|| r.shard.tokens(r.doc)),
                                metadata: (!payload.is_empty())
                                    .then(|| String::from_utf8_lossy(payload).into_owned()),
                            });
                        }
                        None => out.missing.push(id),
                    }
                }
                Ok(out)
            })
            .await
    }

    // ----- search -----------------------------------------------------------------------------------------

    /// One search over a consistent snapshot.
    pub async fn search(
        &self,
        name: &str,
        search: SearchInput,
    ) -> Result<Vec<HitOut>, ServiceError> {
        self.search_until(name, search, None).await
    }

    /// [`Core::search`] with a client deadline (the server's `request_timeout_ms` applies anyway): past it the
    /// search stops inside the engine and the request answers `DeadlineExceeded`.
    pub async fn search_until(
        &self,
        name: &str,
        search: SearchInput,
        deadline: Option<Instant>,
    ) -> Result<Vec<HitOut>, ServiceError> {
        let c = self.collection(name)?;
        let (dim, limits) = (c.config.dimension, self.inner.limits.clone());
        input::check_search_budget(std::slice::from_ref(&search), &limits)?;
        let ticket = self.ticket(deadline);
        let snap = c.snapshot();
        self.inner
            .pool
            .run(&ticket, move |tok| {
                let v = input::validate_search(&search, dim, &limits)?;
                run_search(&snap, &v, dim, tok)
            })
            .await
    }

    /// Several searches over one snapshot.
    pub async fn search_batch(
        &self,
        name: &str,
        searches: Vec<SearchInput>,
    ) -> Result<Vec<Vec<HitOut>>, ServiceError> {
        self.search_batch_until(name, searches, None).await
    }

    /// [`Core::search_batch`] with a client deadline. The queries are validated first (one task), then each runs
    /// as its own pool task of this request, so other requests' tasks take turns with them; past the deadline
    /// the queries not started are skipped and the running ones stop.
    pub async fn search_batch_until(
        &self,
        name: &str,
        searches: Vec<SearchInput>,
        deadline: Option<Instant>,
    ) -> Result<Vec<Vec<HitOut>>, ServiceError> {
        let c = self.collection(name)?;
        let limits = self.inner.limits.clone();
        input::check_batch("searches", searches.len(), &limits)?;
        input::check_search_budget(&searches, &limits)?;
        let dim = c.config.dimension;
        let ticket = self.ticket(deadline);
        let snap = c.snapshot();
        let valid = self
            .inner
            .pool
            .run(&ticket, move |tok| {
                searches
                    .iter()
                    .map(|s| {
                        if tok.is_cancelled() {
                            return Err(tok.exceeded());
                        }
                        input::validate_search(s, dim, &limits)
                    })
                    .collect::<Result<Vec<_>, _>>()
            })
            .await?;
        let valid = Arc::new(valid);
        let tasks: Vec<_> = (0..valid.len())
            .map(|i| {
                let (valid, snap) = (valid.clone(), snap.clone());
                move |tok: &CancelToken| run_search(&snap, &valid[i], dim, tok)
            })
            .collect();
        self.inner.pool.run_all(&ticket, tasks).await
    }

    // ----- operations -------------------------------------------------------------------------------------

    /// Statistics of every collection (for metrics).
    pub fn stats(&self) -> Vec<(String, Stats)> {
        self.ready_collections()
            .into_iter()
            .map(|(n, c)| (n, c.stats()))
            .collect()
    }

    /// First step of shutdown: readiness turns false, new requests answer 503, and running flushes and
    /// compactions (background or requested) are abandoned at their next check; writes in flight still
    /// complete. Cheap; call [`Core::shutdown`] once requests have drained.
    pub fn begin_shutdown(&self) {
        self.inner.closed.store(true, Ordering::SeqCst);
        for (_, c) in self.ready_collections() {
            c.cancel_background();
        }
    }

    /// Stops accepting work and closes every collection (their logs are synced). Blocking.
    pub fn shutdown(&self) {
        self.inner.closed.store(true, Ordering::SeqCst);
        for (_, c) in self.ready_collections() {
            c.close();
        }
    }

    /// The data directory's collections folder.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }
}

/// Runs blocking work (file I/O, joins) off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ServiceError> + Send + 'static,
) -> Result<T, ServiceError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ServiceError::Internal(format!("a blocking task failed: {e}")))?
}

/// Runs a validated search on a snapshot: tombstones and the filter are applied inside the engine's candidate
/// search.
fn run_search(
    snap: &Snapshot,
    v: &ValidSearch,
    dim: usize,
    tok: &CancelToken,
) -> Result<Vec<HitOut>, ServiceError> {
    let Some(searcher) = &snap.searcher else {
        return Ok(Vec::new());
    };
    let query = TokenMatrix::new(&v.query, dim, "query")?;
    let needs_meta = v.filter.as_ref().is_some_and(|f| f.needs_metadata());
    let metas: Vec<&[Option<serde_json::Value>]> = if needs_meta {
        snap.segs.iter().map(|s| s.meta.get(&s.shard)).collect()
    } else {
        Vec::new()
    };
    let pass = |si: usize, d: usize| -> bool {
        let seg = &snap.segs[si];
        if seg.deleted.get(d) {
            return false;
        }
        match &v.filter {
            None => true,
            Some(f) => f.matches(
                seg.shard.id(d),
                if needs_meta {
                    metas[si][d].as_ref()
                } else {
                    None
                },
            ),
        }
    };
    let filter: Option<&(dyn Fn(usize, usize) -> bool + Sync)> =
        if snap.any_deleted || v.filter.is_some() {
            Some(&pass)
        } else {
            None
        };
    let hits = searcher.search_with(query, &v.params, filter, &|| tok.is_cancelled())?;
    Ok(hits
        .into_iter()
        .map(|h| {
            let shard = &snap.segs[h.shard].shard;
            let payload = shard.payload(h.doc);
            HitOut {
                id: shard.id(h.doc).to_string(),
                score: h.score,
                metadata: (v.with_metadata && !payload.is_empty())
                    .then(|| String::from_utf8_lossy(payload).into_owned()),
            }
        })
        .collect())
}
