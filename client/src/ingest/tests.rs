//! The ingest loop against an in-memory target: resume, retry, pipelining, memory bound, errors.
use std::sync::Mutex;

use super::*;
use crate::Vectors;

/// An in-memory target that pushes back on chosen calls and records what it was sent.
#[derive(Default)]
struct Fake {
    dim: Mutex<Option<usize>>,
    stored: Mutex<Vec<String>>,
    batches: Mutex<Vec<Vec<String>>>,
    /// Upsert calls that answer "overloaded" (by call number, from 0).
    overloaded: Vec<usize>,
    calls: Mutex<usize>,
}

impl IngestTarget for Fake {
    async fn dimension(&self, _: &str) -> Result<Option<usize>> {
        Ok(*self.dim.lock().unwrap())
    }
    async fn create(&self, _: &str, dimension: usize) -> Result<()> {
        *self.dim.lock().unwrap() = Some(dimension);
        Ok(())
    }
    async fn missing(&self, _: &str, ids: Vec<String>) -> Result<Vec<String>> {
        let s = self.stored.lock().unwrap();
        Ok(ids.into_iter().filter(|i| !s.contains(i)).collect())
    }
    async fn upsert(&self, _: &str, docs: Vec<Document>) -> Result<u64> {
        let n = {
            let mut c = self.calls.lock().unwrap();
            *c += 1;
            *c - 1
        };
        if self.overloaded.contains(&n) {
            return Err(Error::Overloaded {
                message: "flushing is behind".into(),
                retry_after: Some(Duration::from_millis(1)),
            });
        }
        let ids: Vec<String> = docs.iter().map(|d| d.id.clone()).collect();
        self.stored.lock().unwrap().extend(ids.iter().cloned());
        self.batches.lock().unwrap().push(ids);
        Ok(docs.len() as u64)
    }
}

struct Src(usize);

impl DocumentSource for Src {
    fn len(&self) -> usize {
        self.0
    }
    fn dim(&self) -> usize {
        2
    }
    fn id(&self, i: usize) -> &str {
        ["a", "b", "c", "d", "e", "f", "g"][i]
    }
    fn documents(&self, rows: &[usize]) -> std::result::Result<Vec<Document>, SourceError> {
        Ok(rows
            .iter()
            .map(|&i| Document::from_vectors(self.id(i), Vectors::f32(&[i as f32, 1.0], 2)))
            .collect())
    }
}

/// A large source that generates its documents when asked, records every request and counts the
/// documents it gave out that the target has not stored yet; fails at row `fail_at`.
struct Counting {
    n: usize,
    ids: Vec<String>,
    requests: Mutex<Vec<Vec<usize>>>,
    given: AtomicU64,
    fail_at: Option<usize>,
}

impl Counting {
    fn new(n: usize) -> Counting {
        Counting {
            n,
            ids: (0..n).map(|i| format!("d{i}")).collect(),
            requests: Mutex::default(),
            given: AtomicU64::new(0),
            fail_at: None,
        }
    }
}

impl DocumentSource for Counting {
    fn len(&self) -> usize {
        self.n
    }
    fn dim(&self) -> usize {
        2
    }
    fn id(&self, i: usize) -> &str {
        &self.ids[i]
    }
    fn documents(&self, rows: &[usize]) -> std::result::Result<Vec<Document>, SourceError> {
        self.requests.lock().unwrap().push(rows.to_vec());
        if let Some(f) = self.fail_at.filter(|f| rows.contains(f)) {
            return Err(format!("row {f} is damaged").into());
        }
        self.given.fetch_add(rows.len() as u64, Ordering::Relaxed);
        Ok(rows
            .iter()
            .map(|&i| Document::from_vectors(self.id(i), Vectors::f32(&[i as f32, 1.0], 2)))
            .collect())
    }
}

/// A target that takes its time over each upsert (so the source could run far ahead if the ingest let it)
/// and records, at each upsert, how many documents the source had given out beyond those stored.
struct Slow<'a> {
    inner: Fake,
    src: &'a Counting,
    stored: AtomicU64,
    ahead: Mutex<Vec<u64>>,
    /// Upserts running now, and at most.
    running: AtomicU64,
    max_running: AtomicU64,
}

impl IngestTarget for Slow<'_> {
    async fn dimension(&self, c: &str) -> Result<Option<usize>> {
        self.inner.dimension(c).await
    }
    async fn create(&self, c: &str, dimension: usize) -> Result<()> {
        self.inner.create(c, dimension).await
    }
    async fn missing(&self, c: &str, ids: Vec<String>) -> Result<Vec<String>> {
        self.inner.missing(c, ids).await
    }
    async fn upsert(&self, c: &str, docs: Vec<Document>) -> Result<u64> {
        let now = self.running.fetch_add(1, Ordering::Relaxed) + 1;
        self.max_running.fetch_max(now, Ordering::Relaxed);
        let given = self.src.given.load(Ordering::Relaxed);
        let stored = self.stored.load(Ordering::Relaxed);
        self.ahead.lock().unwrap().push(given - stored);
        tokio::time::sleep(Duration::from_millis(2)).await;
        let n = self.inner.upsert(c, docs).await?;
        self.stored.fetch_add(n, Ordering::Relaxed);
        self.running.fetch_sub(1, Ordering::Relaxed);
        Ok(n)
    }
}

#[tokio::test]
async fn reads_the_source_a_batch_at_a_time_with_bounded_memory() {
    for pipeline in [1, 3] {
        read_a_batch_at_a_time(pipeline).await;
    }
}

async fn read_a_batch_at_a_time(pipeline: usize) {
    const N: usize = 2000;
    const BATCH: usize = 16;
    let src = Counting::new(N);
    // Every tenth document is already stored: the source is asked for the others only.
    let t = Slow {
        inner: Fake::default(),
        src: &src,
        stored: AtomicU64::new(0),
        ahead: Mutex::default(),
        running: AtomicU64::new(0),
        max_running: AtomicU64::new(0),
    };
    t.inner
        .stored
        .lock()
        .unwrap()
        .extend((0..N).step_by(10).map(|i| format!("d{i}")));
    let mut o = opts(BATCH);
    o.pipeline = pipeline;
    let r = ingest(&t, "c", &src, &o).await.unwrap();
    assert_eq!(
        (r.uploaded, r.skipped),
        ((N - N / 10) as u64, (N / 10) as u64)
    );
    assert_eq!(o.max_docs_held(), (pipeline + 3) * BATCH);
    let bound = o.max_docs_held() as u64;
    assert!(
        r.max_docs_held > 0 && r.max_docs_held <= bound,
        "{} documents held at once, bound {bound}",
        r.max_docs_held
    );
    // The uploads in flight were `pipeline` at most (and reached it: the source is fast, the target slow).
    assert_eq!(t.max_running.load(Ordering::Relaxed), pipeline as u64);
    // What the target saw agrees: the source never ran more than the bound ahead of the stored documents.
    let ahead = t.ahead.lock().unwrap();
    assert_eq!(ahead.len(), N.div_ceil(BATCH));
    assert!(ahead.iter().all(|&a| a <= bound), "{ahead:?}");
    // One request per batch, ascending rows within one batch, the stored rows left out, every row once.
    let requests = src.requests.lock().unwrap();
    assert_eq!(requests.len(), N.div_ceil(BATCH));
    let mut all = Vec::new();
    for rows in requests.iter() {
        assert!(rows.windows(2).all(|w| w[0] < w[1]), "{rows:?}");
        assert_eq!(rows[0] / BATCH, rows[rows.len() - 1] / BATCH, "{rows:?}");
        all.extend_from_slice(rows);
    }
    let want: Vec<usize> = (0..N).filter(|i| i % 10 != 0).collect();
    assert_eq!(all, want);
}

#[tokio::test]
async fn a_source_error_stops_the_ingest_after_the_batches_before_it() {
    let mut src = Counting::new(100);
    src.fail_at = Some(45);
    let t = Fake::default();
    let e = ingest(&t, "c", &src, &opts(10)).await.unwrap_err();
    assert!(
        matches!(
            &e,
            IngestError::Source {
                start: 40,
                end: 50,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("row 45 is damaged"), "{e}");
    // The batches before it were uploaded (a re-run resumes from there).
    assert_eq!(t.batches.lock().unwrap().len(), 4);
}

fn opts(batch: usize) -> IngestOptions {
    IngestOptions {
        batch,
        ..IngestOptions::default()
    }
}

#[tokio::test]
async fn uploads_in_batches_and_resumes_by_id() {
    let t = Fake::default();
    t.stored
        .lock()
        .unwrap()
        .extend(["b".to_string(), "zz".to_string()]);
    *t.dim.lock().unwrap() = Some(2);
    let events = Arc::new(Mutex::new(Vec::new()));
    let ev = events.clone();
    let mut o = opts(3);
    o.progress = Some(Arc::new(move |e: &IngestEvent| {
        ev.lock().unwrap().push(e.clone())
    }));
    let r = ingest(&t, "c", &Src(7), &o).await.unwrap();
    assert_eq!((r.uploaded, r.skipped, r.tokens), (6, 1, 6));
    assert_eq!(
        *t.batches.lock().unwrap(),
        vec![vec!["a", "c"], vec!["d", "e", "f"], vec!["g"]]
    );
    let last = events.lock().unwrap().last().cloned().unwrap();
    assert!(
        matches!(
            last,
            IngestEvent::Batch {
                done: 7,
                total: 7,
                uploaded: 6,
                skipped: 1
            }
        ),
        "{last:?}"
    );
    // A complete re-run uploads nothing; force uploads everything.
    let r = ingest(&t, "c", &Src(7), &opts(3)).await.unwrap();
    assert_eq!((r.uploaded, r.skipped), (0, 7));
    let mut o = opts(4);
    o.force = true;
    let r = ingest(&t, "c", &Src(7), &o).await.unwrap();
    assert_eq!((r.uploaded, r.skipped), (7, 0));
}

#[tokio::test]
async fn retries_backpressure_then_gives_up() {
    let t = Fake {
        overloaded: vec![0, 1],
        ..Fake::default()
    };
    let r = ingest(&t, "c", &Src(4), &opts(2)).await.unwrap();
    assert_eq!((r.uploaded, r.retries), (4, 2));
    assert_eq!(t.batches.lock().unwrap().len(), 2);

    let t = Fake {
        overloaded: (0..10).collect(),
        ..Fake::default()
    };
    let mut o = opts(2);
    o.max_attempts = 3;
    let e = ingest(&t, "c", &Src(4), &o).await.unwrap_err();
    assert!(
        matches!(
            &e,
            IngestError::Call {
                source: Error::Overloaded { .. },
                ..
            }
        ),
        "{e:?}"
    );
    assert!(t.batches.lock().unwrap().is_empty());
}

#[tokio::test]
async fn checks_the_collection_first() {
    let t = Fake::default();
    *t.dim.lock().unwrap() = Some(3);
    let e = ingest(&t, "c", &Src(1), &opts(1)).await.unwrap_err();
    assert!(
        matches!(
            e,
            IngestError::Dimension {
                stored: 3,
                data: 2,
                ..
            }
        ),
        "{e}"
    );
    let t = Fake::default();
    let mut o = opts(1);
    o.create = false;
    let e = ingest(&t, "c", &Src(1), &o).await.unwrap_err();
    assert!(matches!(e, IngestError::NoCollection(_)), "{e}");
}
