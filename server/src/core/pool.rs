//! The CPU pool: a dedicated rayon pool for FDE encoding, search and decoding, bridged to async callers, with
//! fair scheduling between requests and per-request deadlines.
//!
//! Tokio's workers must stay free to accept connections and move bytes; a Chamfer re-rank or a batch encode
//! takes milliseconds of pure CPU, so it runs here and the handler awaits the result. A panic in a task becomes
//! an `Internal` error for that request instead of taking a worker (or the process) down.
//!
//! **Fairness.** Every request holds a [`Ticket`]; its tasks wait in that request's own queue, and the workers
//! take one task from each waiting request in turn (round robin, [`RoundRobin`]). A batch search is one task
//! per query, so a one-query search sent beside a 100-query batch starts after at most one task of every
//! other waiting request, instead of after the whole batch. Each submitted task also hands rayon one "pump"
//! job; a pump runs whichever task the round robin names next, so rayon's own ordering does not matter and
//! nested rayon calls inside a task (e.g. parallel shard building) still use this pool.
//!
//! **Deadlines.** A ticket carries a [`CancelToken`]: cancelled when its deadline passes, when its request is
//! dropped (the client went away), or when a sibling task failed. A queued task whose token is cancelled is
//! not started (counted in [`PoolStats::skipped`]); a running search asks the token between stages (see
//! `Searcher::search_with`). The awaiting side answers `DEADLINE_EXCEEDED` at the deadline without waiting for
//! the task.
use std::collections::{HashMap, VecDeque};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chamfer_index::IndexError;
use tokio::sync::{mpsc, oneshot};

use crate::error::ServiceError;

/// Why a request's work stops early. Cheap to ask (an atomic load and, with a deadline, a clock read).
#[derive(Debug)]
pub struct CancelToken {
    deadline: Option<Instant>,
    /// The deadline's length, for messages.
    budget: Option<Duration>,
    cancelled: AtomicBool,
}

impl CancelToken {
    /// A token that is cancelled at `deadline` (never, when None) or by [`CancelToken::cancel`].
    pub fn new(deadline: Option<Instant>) -> CancelToken {
        CancelToken::with_budget(deadline.map(|d| (d, d.saturating_duration_since(Instant::now()))))
    }

    /// [`CancelToken::new`] with the deadline's length as the caller counted it (for messages).
    pub fn with_budget(deadline: Option<(Instant, Duration)>) -> CancelToken {
        CancelToken {
            deadline: deadline.map(|d| d.0),
            budget: deadline.map(|d| d.1),
            cancelled: AtomicBool::new(false),
        }
    }

    /// True once the work should stop.
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed) || self.deadline.is_some_and(|d| Instant::now() >= d)
    }

    /// Stops the work (idempotent).
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::Relaxed);
    }

    /// The deadline, if any.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// The error a request that ran out of time answers.
    pub fn exceeded(&self) -> ServiceError {
        ServiceError::DeadlineExceeded(match self.budget {
            Some(b) => format!(
                "the request did not finish within its {} ms deadline; its remaining work was stopped",
                b.as_micros().div_ceil(1000)
            ),
            None => "the request was stopped before it finished".into(),
        })
    }
}

/// One request's claim on the pool: its queue identity and its cancel token. Dropping it cancels whatever
/// work of the request has not started yet (e.g. when the client disconnects and the handler is dropped).
pub struct Ticket {
    id: u64,
    token: Arc<CancelToken>,
}

impl Ticket {
    /// The request's token.
    pub fn token(&self) -> &Arc<CancelToken> {
        &self.token
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

/// Counters of the pool (for tests and metrics).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Tasks handed to the pool.
    pub submitted: u64,
    /// Tasks that ran.
    pub executed: u64,
    /// Tasks dropped unstarted because their request was cancelled (deadline passed, client gone, sibling
    /// failed).
    pub skipped: u64,
    /// Tasks waiting now.
    pub queued: u64,
}

/// Per-request FIFO queues served round robin: [`RoundRobin::pop`] takes the head of the request at the front
/// of the ring and, when that request has more, moves it to the back. A request enters the ring when its
/// queue becomes non-empty. Pure data: the scheduling order is unit-tested without threads.
#[derive(Debug)]
pub struct RoundRobin<T> {
    ring: VecDeque<u64>,
    queues: HashMap<u64, VecDeque<T>>,
    len: usize,
}

impl<T> Default for RoundRobin<T> {
    fn default() -> Self {
        RoundRobin {
            ring: VecDeque::new(),
            queues: HashMap::new(),
            len: 0,
        }
    }
}

impl<T> RoundRobin<T> {
    /// Queues `item` for request `req`.
    pub fn push(&mut self, req: u64, item: T) {
        let q = self.queues.entry(req).or_default();
        if q.is_empty() {
            self.ring.push_back(req);
        }
        q.push_back(item);
        self.len += 1;
    }

    /// The next item in fair order, with its request.
    pub fn pop(&mut self) -> Option<(u64, T)> {
        while let Some(req) = self.ring.pop_front() {
            let Some(q) = self.queues.get_mut(&req) else {
                continue;
            };
            let Some(item) = q.pop_front() else {
                self.queues.remove(&req);
                continue;
            };
            if q.is_empty() {
                self.queues.remove(&req);
            } else {
                self.ring.push_back(req);
            }
            self.len -= 1;
            return Some((req, item));
        }
        None
    }

    /// Items waiting.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// A queued task: called with `true` to run, `false` when its request was cancelled before it started.
type Job = Box<dyn FnOnce(bool) + Send>;

struct Entry {
    token: Arc<CancelToken>,
    job: Job,
}

#[derive(Default)]
struct Shared {
    queue: Mutex<RoundRobin<Entry>>,
    submitted: AtomicU64,
    executed: AtomicU64,
    skipped: AtomicU64,
}

impl Shared {
    /// Runs (or skips) the next task in fair order. The lock is held only to pop.
    fn pump(&self) {
        let next = self.queue.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let Some((_, entry)) = next else {
            return;
        };
        if entry.token.is_cancelled() {
            self.skipped.fetch_add(1, Ordering::Relaxed);
            (entry.job)(false);
        } else {
            self.executed.fetch_add(1, Ordering::Relaxed);
            (entry.job)(true);
        }
    }
}

/// A named rayon pool behind a fair, deadline-aware queue.
pub struct CpuPool {
    pool: rayon::ThreadPool,
    shared: Arc<Shared>,
    next_id: AtomicU64,
}

impl CpuPool {
    /// Starts `threads` threads named `chamfer-cpu-N`.
    pub fn new(threads: usize) -> Result<CpuPool, ServiceError> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads.max(1))
            .thread_name(|i| format!("chamfer-cpu-{i}"))
            .build()
            .map_err(|e| ServiceError::Internal(format!("cannot start the CPU pool: {e}")))?;
        Ok(CpuPool {
            pool,
            shared: Arc::default(),
            next_id: AtomicU64::new(1),
        })
    }

    /// A new request's ticket, cancelled at `deadline`.
    pub fn ticket(&self, deadline: Option<Instant>) -> Ticket {
        self.ticket_for(CancelToken::new(deadline))
    }

    /// A new request's ticket with its own token.
    pub fn ticket_for(&self, token: CancelToken) -> Ticket {
        Ticket {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            token: Arc::new(token),
        }
    }

    /// The counters.
    pub fn stats(&self) -> PoolStats {
        let s = &self.shared;
        PoolStats {
            submitted: s.submitted.load(Ordering::Relaxed),
            executed: s.executed.load(Ordering::Relaxed),
            skipped: s.skipped.load(Ordering::Relaxed),
            queued: s.queue.lock().unwrap_or_else(|e| e.into_inner()).len() as u64,
        }
    }

    fn submit(&self, ticket: &Ticket, job: Job) {
        let entry = Entry {
            token: ticket.token.clone(),
            job,
        };
        self.shared
            .queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(ticket.id, entry);
        self.shared.submitted.fetch_add(1, Ordering::Relaxed);
        let shared = self.shared.clone();
        self.pool.spawn(move || shared.pump());
    }

    /// Runs `f` on the pool as one task of `ticket`'s request and awaits its result; answers
    /// `DeadlineExceeded` at the ticket's deadline (the task is then skipped if it has not started, and a
    /// running search stops at its next check of the token `f` receives).
    pub async fn run<T: Send + 'static>(
        &self,
        ticket: &Ticket,
        f: impl FnOnce(&CancelToken) -> Result<T, ServiceError> + Send + 'static,
    ) -> Result<T, ServiceError> {
        let (tx, rx) = oneshot::channel();
        let token = ticket.token.clone();
        self.submit(
            ticket,
            Box::new(move |go| {
                let _ = tx.send(run_job(go, &token, f));
            }),
        );
        let r = until(ticket.token.deadline(), rx).await;
        match r {
            None => {
                ticket.token.cancel();
                Err(ticket.token.exceeded())
            }
            Some(r) => r.map_err(|_| ServiceError::Internal("a CPU task was dropped".into()))?,
        }
    }

    /// Runs every task of `tasks` on the pool as separate tasks of `ticket`'s request (so other requests'
    /// tasks interleave with them) and returns their results in order. The first failure cancels the tasks
    /// that have not started and is the answer; so is `DeadlineExceeded` at the ticket's deadline.
    pub async fn run_all<T, F>(
        &self,
        ticket: &Ticket,
        tasks: Vec<F>,
    ) -> Result<Vec<T>, ServiceError>
    where
        T: Send + 'static,
        F: FnOnce(&CancelToken) -> Result<T, ServiceError> + Send + 'static,
    {
        let n = tasks.len();
        let (tx, mut rx) = mpsc::unbounded_channel();
        for (i, f) in tasks.into_iter().enumerate() {
            let (tx, token) = (tx.clone(), ticket.token.clone());
            self.submit(
                ticket,
                Box::new(move |go| {
                    let _ = tx.send((i, run_job(go, &token, f)));
                }),
            );
        }
        drop(tx);
        let token = &ticket.token;
        let collect = async {
            let mut out: Vec<Option<T>> = (0..n).map(|_| None).collect();
            for _ in 0..n {
                let Some((i, r)) = rx.recv().await else {
                    return Err(ServiceError::Internal("a CPU task was dropped".into()));
                };
                match r {
                    Ok(v) => out[i] = Some(v),
                    Err(e) => {
                        token.cancel();
                        return Err(e);
                    }
                }
            }
            out.into_iter()
                .map(|v| {
                    v.ok_or_else(|| ServiceError::Internal("a CPU task did not answer".into()))
                })
                .collect()
        };
        match until(token.deadline(), collect).await {
            None => {
                token.cancel();
                Err(token.exceeded())
            }
            Some(r) => r,
        }
    }

    /// Runs `f` inside the pool (so nested rayon calls use it) on the current thread.
    pub fn install<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        self.pool.install(f)
    }
}

/// Awaits `fut` until `deadline`: None when the deadline came first.
async fn until<F: std::future::Future>(deadline: Option<Instant>, fut: F) -> Option<F::Output> {
    match deadline {
        Some(d) => tokio::time::timeout_at(d.into(), fut).await.ok(),
        None => Some(fut.await),
    }
}

/// Runs one task body: skipped (`go` false) or cancelled mid-way answers the deadline error, a panic answers
/// `Internal`.
fn run_job<T>(
    go: bool,
    token: &CancelToken,
    f: impl FnOnce(&CancelToken) -> Result<T, ServiceError>,
) -> Result<T, ServiceError> {
    if !go {
        return Err(token.exceeded());
    }
    let r = catch_unwind(AssertUnwindSafe(|| f(token))).unwrap_or_else(|p| {
        Err(ServiceError::Internal(format!(
            "a CPU task panicked: {}",
            panic_message(&p)
        )))
    });
    match r {
        Err(ServiceError::Index(IndexError::Cancelled(_))) => Err(token.exceeded()),
        other => other,
    }
}

fn panic_message(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc as std_mpsc;

    #[test]
    fn round_robin_takes_one_task_per_request_in_turn() {
        let mut rr = RoundRobin::default();
        for i in 0..5 {
            rr.push(1, format!("a{i}"));
        }
        rr.push(2, "b0".to_string());
        assert_eq!(rr.pop().unwrap().1, "a0");
        // A request arriving while the ring turns joins at the back.
        rr.push(3, "c0".to_string());
        rr.push(3, "c1".to_string());
        let order: Vec<String> = std::iter::from_fn(|| rr.pop().map(|(_, s)| s)).collect();
        assert_eq!(order, ["b0", "a1", "c0", "a2", "c1", "a3", "a4"]);
        assert!(rr.is_empty());
        // A request whose queue emptied re-enters at the back.
        rr.push(1, "a5".into());
        rr.push(2, "b1".into());
        rr.push(1, "a6".into());
        let order: Vec<String> = std::iter::from_fn(|| rr.pop().map(|(_, s)| s)).collect();
        assert_eq!(order, ["a5", "b1", "a6"]);
        assert_eq!(rr.len(), 0);
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    }

    /// With one thread: a 20-task batch is running (its first task is held at a gate) when a single task
    /// arrives; the single task runs after at most one more batch task, long before the batch ends.
    #[test]
    fn a_single_task_overtakes_a_queued_batch() {
        let pool = Arc::new(CpuPool::new(1).unwrap());
        let order = Arc::new(Mutex::new(Vec::<String>::new()));
        let (started_tx, started_rx) = std_mpsc::channel::<()>();
        let (gate_tx, gate_rx) = std_mpsc::channel::<()>();
        let gate_rx = Arc::new(Mutex::new(gate_rx));
        let rt = rt();
        rt.block_on(async {
            let batch_ticket = pool.ticket(None);
            let tasks: Vec<_> = (0..20)
                .map(|i| {
                    let (order, started, gate) =
                        (order.clone(), started_tx.clone(), gate_rx.clone());
                    move |_: &CancelToken| {
                        if i == 0 {
                            started.send(()).unwrap();
                            gate.lock().unwrap().recv().unwrap();
                        }
                        order.lock().unwrap().push(format!("batch{i}"));
                        Ok(i)
                    }
                })
                .collect();
            let p = pool.clone();
            let batch = tokio::spawn(async move { p.run_all(&batch_ticket, tasks).await });
            tokio::task::spawn_blocking(move || started_rx.recv().unwrap())
                .await
                .unwrap();
            let (p, o) = (pool.clone(), order.clone());
            let single = tokio::spawn(async move {
                let single_ticket = p.ticket(None);
                p.run(&single_ticket, move |_| {
                    o.lock().unwrap().push("single".into());
                    Ok(())
                })
                .await
            });
            // Open the gate only once the single task is queued behind the batch.
            while pool.stats().submitted < 21 {
                tokio::task::yield_now().await;
            }
            gate_tx.send(()).unwrap();
            single.await.unwrap().unwrap();
            let got = batch.await.unwrap().unwrap();
            assert_eq!(got, (0..20).collect::<Vec<_>>());
        });
        let order = order.lock().unwrap().clone();
        let pos = order.iter().position(|s| s == "single").unwrap();
        assert!(pos <= 2, "the single task ran at position {pos}: {order:?}");
        assert_eq!(order.len(), 21);
        let s = pool.stats();
        assert_eq!(
            (s.submitted, s.executed, s.skipped, s.queued),
            (21, 21, 0, 0)
        );
    }

    #[test]
    fn a_passed_deadline_skips_queued_tasks_and_answers_deadline_exceeded() {
        let pool = CpuPool::new(1).unwrap();
        let rt = rt();
        rt.block_on(async {
            let ticket = pool.ticket(Some(Instant::now()));
            let tasks: Vec<_> = (0..5)
                .map(|_| |_: &CancelToken| -> Result<(), ServiceError> { panic!("must not run") })
                .collect();
            let e = pool.run_all(&ticket, tasks).await.unwrap_err();
            assert!(matches!(e, ServiceError::DeadlineExceeded(_)), "{e}");
            let e = pool
                .run(&ticket, |_| -> Result<(), ServiceError> {
                    panic!("must not run")
                })
                .await
                .unwrap_err();
            assert!(matches!(e, ServiceError::DeadlineExceeded(_)), "{e}");
        });
        // The pumps drain the queue whether or not anyone waits.
        let mut s = pool.stats();
        while s.queued > 0 || s.executed + s.skipped < s.submitted {
            std::thread::yield_now();
            s = pool.stats();
        }
        assert_eq!((s.submitted, s.executed, s.skipped), (6, 0, 6));
    }

    #[test]
    fn a_cancelled_search_and_a_panic_map_to_their_errors() {
        let pool = CpuPool::new(2).unwrap();
        let rt = rt();
        rt.block_on(async {
            let t = pool.ticket(None);
            let e = pool
                .run(&t, |_| -> Result<(), ServiceError> { panic!("boom") })
                .await
                .unwrap_err();
            assert!(
                matches!(&e, ServiceError::Internal(m) if m.contains("boom")),
                "{e}"
            );
            // A task that observed its token and stopped answers the deadline error.
            let e = pool
                .run(&t, |tok| -> Result<(), ServiceError> {
                    tok.cancel();
                    Err(IndexError::Cancelled("stopped").into())
                })
                .await
                .unwrap_err();
            assert!(matches!(e, ServiceError::DeadlineExceeded(_)), "{e}");
            // A failing task cancels its siblings and is the answer.
            let t = pool.ticket(None);
            type Task = Box<dyn FnOnce(&CancelToken) -> Result<u32, ServiceError> + Send>;
            let tasks: Vec<Task> = vec![
                Box::new(|_| Ok(1)),
                Box::new(|_| Err(ServiceError::InvalidArgument("bad".into()))),
            ];
            let e = pool.run_all(&t, tasks).await.unwrap_err();
            assert!(matches!(e, ServiceError::InvalidArgument(_)), "{e}");
            assert!(t.token().is_cancelled());
        });
    }

    #[test]
    fn dropping_a_ticket_cancels_its_work() {
        let pool = CpuPool::new(1).unwrap();
        let t = pool.ticket(None);
        let token = t.token().clone();
        assert!(!token.is_cancelled());
        drop(t);
        assert!(token.is_cancelled());
    }
}
