//! The writer threads of one kill cycle and the state they share.
use super::*;

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// State shared by the writer threads of one kill cycle.
pub(super) struct Shared {
    pub(super) model: Arc<Mutex<Model>>,
    /// Ids with a request in flight (or an unknown outcome): one writer at a time per id, so that the order
    /// of acknowledgements is the order the server applied them.
    pub(super) busy: Mutex<HashSet<String>>,
    pub(super) next_id: Arc<AtomicU64>,
    pub(super) killing: AtomicBool,
    pub(super) anomalies: Mutex<Vec<String>>,
    pub(super) acked_docs: AtomicU64,
    pub(super) acked_requests: AtomicU64,
    pub(super) unknown_docs: AtomicU64,
}

/// One writer thread: upserts of new and old ids, deletes, until the kill.
pub(super) fn writer(
    w: usize,
    port: u16,
    mut rng: Rng,
    sh: Arc<Shared>,
    src: Arc<TokenSource>,
    max_ids: usize,
) {
    let dim = src.dim();
    for op in 0..MAX_OPS_PER_WRITER {
        if sh.killing.load(Ordering::SeqCst) {
            return;
        }
        let is_delete = rng.chance(0.2);
        let n = if is_delete {
            rng.range(1, 3)
        } else {
            rng.range(1, 4)
        };
        let mut ids = Vec::new();
        {
            let model = lock(&sh.model);
            let mut busy = lock(&sh.busy);
            for _ in 0..n {
                let known = model.ids.len();
                let new = !is_delete && (known < 20 || (known < max_ids && rng.chance(0.5)));
                if new {
                    let id = format!("d{}", sh.next_id.fetch_add(1, Ordering::SeqCst));
                    busy.insert(id.clone());
                    ids.push(id);
                    continue;
                }
                for _ in 0..4 {
                    if known == 0 {
                        break;
                    }
                    let id = model.ids[rng.below(known as u64) as usize].clone();
                    if !busy.contains(&id) {
                        busy.insert(id.clone());
                        ids.push(id);
                        break;
                    }
                }
            }
        }
        if ids.is_empty() {
            continue;
        }
        let (path, body, states): (&str, String, Vec<State>) = if is_delete {
            let body = json!({ "ids": ids }).to_string();
            (
                "/v1/collections/c/documents/delete",
                body,
                vec![None; ids.len()],
            )
        } else {
            let mut body = String::from("{\"documents\":[");
            let mut states = Vec::new();
            for (i, id) in ids.iter().enumerate() {
                let v = Arc::new(model::new_version(&src, &mut rng, w, op as u64));
                if i > 0 {
                    body.push(',');
                }
                model::doc_json(&mut body, id, &v, dim);
                states.push(Some(v));
            }
            body.push_str("]}");
            ("/v1/collections/c/documents", body, states)
        };
        let r = http::request(port, "POST", path, Some(body.as_bytes()), REQUEST_TIMEOUT);
        match r {
            Ok(r) if r.status == 200 => {
                let mut model = lock(&sh.model);
                for (id, s) in ids.iter().zip(states) {
                    match s {
                        Some(v) => model.ack_upsert(id, v),
                        None => model.ack_delete(id),
                    }
                }
                drop(model);
                sh.acked_docs.fetch_add(ids.len() as u64, Ordering::SeqCst);
                sh.acked_requests.fetch_add(1, Ordering::SeqCst);
                let mut busy = lock(&sh.busy);
                for id in &ids {
                    busy.remove(id);
                }
            }
            Ok(r) if r.status == 429 => {
                // Overloaded: refused before the log, so not applied; back off and go on.
                let mut busy = lock(&sh.busy);
                for id in &ids {
                    busy.remove(id);
                }
                drop(busy);
                std::thread::sleep(Duration::from_millis(20));
            }
            other => {
                let killing = sh.killing.load(Ordering::SeqCst);
                let mut model = lock(&sh.model);
                for (id, s) in ids.iter().zip(states) {
                    model.unknown(id, s);
                }
                drop(model);
                sh.unknown_docs
                    .fetch_add(ids.len() as u64, Ordering::SeqCst);
                if !killing {
                    let what = match other {
                        Ok(r) => format!("HTTP {} {}", r.status, r.text(200)),
                        Err(e) => e.to_string(),
                    };
                    lock(&sh.anomalies).push(format!(
                        "writer {w}: a write to {path} failed before the kill: {what}"
                    ));
                }
                // The ids stay busy: nothing else touches them until the next verification resolves them.
                return;
            }
        }
    }
}
