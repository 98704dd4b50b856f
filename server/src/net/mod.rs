//! Connections and request admission, shared by both listeners (REST on axum, gRPC on tonic): what keeps slow
//! or many clients from holding the server's descriptors and memory (issue 21, items 3 and 4).
//!
//! * [`Net`]: one connection table for both listeners, with a cap (`limits.max_connections`; 0 = the soft
//!   descriptor limit less a reserve for the server's own files), one server-wide memory budget for the
//!   requests in flight (`limits.request_memory_bytes`, [`REQUEST_MEMORY_FACTOR`] bytes per body byte) and
//!   the counters `/metrics` shows.
//! * [`NetListener`]: accepts TCP connections, admits them to the table and hands them out as [`Conn`]s: to
//!   axum through its `Listener` trait, to tonic as an incoming stream. At the cap, a new connection evicts
//!   the connection that has waited on its client the longest (no request in flight for
//!   [`EVICT_IDLE_AFTER`], or every request's body stalled, or an answer not taken, for
//!   [`EVICT_STALLED_AFTER`]); when none is waiting it is refused: a raw HTTP/1.1 503 `unavailable` with
//!   `Retry-After` on the REST listener, a plain close on the gRPC one. While more than [`CLOSING_SLACK`]
//!   evicted connections wait for hyper to drop them, the listeners stop accepting (new connections wait in
//!   the kernel's backlog), so a flood cannot run the process out of descriptors; an accept error (out of
//!   descriptors all the same) evicts the longest-waiting connection and backs off 50 ms.
//! * [`Conn`]: the accepted socket, recording read and write progress. [`Net::sweep`] (a task) closes what
//!   waits on its client too long: a request head (HTTP/1) not finished `header_read_timeout_ms` after its
//!   first byte, a connection with no request in flight for `idle_timeout_ms`, an answer the client has not
//!   taken for `body_read_timeout_ms`. Closing is a flag and a wake-up: reads then see end-of-file and writes
//!   fail, so hyper drops the connection (a hard close, also on HTTP/2).
//! * [`TrackLayer`]: a tower layer on both routers. It counts each connection's requests in flight (from
//!   the request to the end of its answer), admits the body against the budget (a `Content-Length` before
//!   the body is read, 429 / RESOURCE_EXHAUSTED `overloaded` when it does not fit (REST reads and drops the
//!   body first, one frame at a time, unless the client waits for `100 Continue`, so that an HTTP/1 client
//!   still sending sees the answer rather than a broken pipe); other bodies as
//!   their frames arrive, failing the body with the same error; at most `REQUEST_MEMORY_FACTOR x
//!   max_request_bytes` held by one request, released with its answer) and times the body: while the server waits for the client's next
//!   frame for `body_read_timeout_ms` the body fails with 408 / DEADLINE_EXCEEDED `request_timeout` (the
//!   timer runs only while the server polls the body, so back-pressure from a busy server does not count).
//!
//! HTTP/2 connections (gRPC) also get keep-alive pings (30 s, 10 s to answer) from tonic. Times are
//! milliseconds since the table's creation, in atomics (0: not set).
use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll, Waker};
use std::time::{Duration, Instant};

use axum::http;
use bytes::{Buf, Bytes};
use http_body::{Body as HttpBody, Frame, SizeHint};
use parking_lot::{Mutex, MutexGuard};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::config::{Settings, REQUEST_MEMORY_FACTOR};
use crate::error::ServiceError;
use crate::metrics::Proto;

mod conn;
#[cfg(test)]
mod tests;
mod track;

pub use conn::*;
pub use track::*;

/// A boxed error, as hyper, axum and tonic take them.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A connection with no request in flight is evictable once it has sent nothing for this long (so that a
/// client that just connected has time to send its request).
pub const EVICT_IDLE_AFTER: Duration = Duration::from_millis(250);

/// A connection whose requests all wait for their bodies (or whose answer the client does not take) is
/// evictable once nothing arrived for this long.
pub const EVICT_STALLED_AFTER: Duration = Duration::from_secs(1);

/// The retry hint of a request refused by the memory budget.
pub const MEMORY_RETRY_AFTER_MS: u64 = 1000;

/// At most this many refusals (raw 503 answers) are written at once; past it a refused connection is closed.
const MAX_REFUSING: usize = 64;

/// Connections closed by the server whose sockets are not released yet, beyond the cap: past it the
/// listeners stop accepting (new connections wait in the kernel's backlog) until one is released, so that
/// a flood that evicts faster than hyper drops the evicted connections cannot run out of descriptors.
/// Descriptors in use stay under `max_connections + CLOSING_SLACK + MAX_REFUSING` plus the server's files.
const CLOSING_SLACK: usize = 32;

/// Back-off after an accept error (out of descriptors).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Descriptors kept for the server's own files when the cap comes from the descriptor limit: this, or an
/// eighth of the limit if larger.
const FD_RESERVE: u64 = 256;

/// The cap when the descriptor limit cannot be read.
const DEFAULT_MAX_CONNECTIONS: usize = 1024;

/// The HTTP/2 connection preface's start (a REST client speaking HTTP/2 has no header timeout: its control
/// frames arrive between requests).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0";

/// Why a connection was closed by the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// A request head (HTTP/1) not finished within `header_read_timeout_ms` of its first byte.
    Header,
    /// No request in flight for `idle_timeout_ms`.
    Idle,
    /// The client did not take the answer's bytes for `body_read_timeout_ms`.
    Write,
    /// Evicted for a new connection at the cap.
    Evicted,
}

/// The connection settings, taken from [`Settings`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetConfig {
    /// The cap on open connections (both listeners), resolved (never 0).
    pub max_connections: usize,
    /// `limits.request_memory_bytes`.
    pub request_memory_bytes: usize,
    /// `limits.max_request_bytes`: the most one request reserves.
    pub max_request_bytes: usize,
    /// `header_read_timeout_ms`.
    pub header_timeout: Duration,
    /// `body_read_timeout_ms`.
    pub body_timeout: Duration,
    /// `idle_timeout_ms`.
    pub idle_timeout: Duration,
}

impl NetConfig {
    /// The configuration `settings` ask for (an automatic cap resolved from the descriptor limit).
    pub fn from_settings(settings: &Settings) -> NetConfig {
        let l = &settings.limits;
        NetConfig {
            max_connections: if l.max_connections > 0 {
                l.max_connections
            } else {
                auto_max_connections(descriptor_limit())
            },
            request_memory_bytes: l.request_memory_bytes,
            max_request_bytes: l.max_request_bytes,
            header_timeout: Duration::from_millis(settings.header_read_timeout_ms),
            body_timeout: Duration::from_millis(settings.body_read_timeout_ms),
            idle_timeout: Duration::from_millis(settings.idle_timeout_ms),
        }
    }
}

/// The soft limit on open descriptors (`RLIMIT_NOFILE`), from `/proc/self/limits`; None where unknown or
/// unlimited.
pub fn descriptor_limit() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// The automatic cap for a soft descriptor limit: the limit less max(256, limit / 8) (the server's own
/// files: logs, shards being written, listeners), within 16..=65536; 1024 when the limit is unknown.
pub fn auto_max_connections(limit: Option<u64>) -> usize {
    match limit {
        None => DEFAULT_MAX_CONNECTIONS,
        Some(n) => n.saturating_sub(FD_RESERVE.max(n / 8)).clamp(16, 65_536) as usize,
    }
}

/// The counters of one listener.
#[derive(Debug, Default)]
struct Counters {
    accepted: AtomicU64,
    refused: AtomicU64,
    evicted: AtomicU64,
    timed_out_header: AtomicU64,
    timed_out_body: AtomicU64,
    timed_out_idle: AtomicU64,
    timed_out_write: AtomicU64,
    accept_errors: AtomicU64,
    memory_refused: AtomicU64,
    in_flight: AtomicU64,
}

/// One listener's counts at a scrape.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ListenerStats {
    /// Connections open now (closing ones included until their socket is closed).
    pub active: u64,
    /// Connections accepted since start.
    pub accepted: u64,
    /// Connections refused at the cap (none could be evicted).
    pub refused: u64,
    /// Connections closed to make room for a new one.
    pub evicted: u64,
    /// Connections closed because a request head was not finished in time.
    pub timed_out_header: u64,
    /// Requests failed because their body stopped arriving.
    pub timed_out_body: u64,
    /// Connections closed after `idle_timeout_ms` without a request.
    pub timed_out_idle: u64,
    /// Connections closed because the client did not take an answer.
    pub timed_out_write: u64,
    /// Failed accepts (out of descriptors, ...).
    pub accept_errors: u64,
    /// Requests refused by the memory budget (429 / RESOURCE_EXHAUSTED).
    pub memory_refused: u64,
    /// Requests in flight now.
    pub in_flight: u64,
}

/// The table's counts at a scrape.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetStats {
    /// The cap on open connections.
    pub max_connections: u64,
    /// REST listener.
    pub rest: ListenerStats,
    /// gRPC listener.
    pub grpc: ListenerStats,
    /// Request body bytes reserved now.
    pub memory_in_use: u64,
    /// The budget.
    pub memory_limit: u64,
}

#[derive(Debug, Default)]
struct Table {
    conns: HashMap<u64, Arc<ConnState>>,
    /// Entries closed by the server whose socket is not dropped yet (not counted against the cap).
    killed: usize,
}

/// The connection table, the request memory budget and their counters (one per server, shared by both
/// listeners).
#[derive(Debug)]
pub struct Net {
    config: NetConfig,
    epoch: Instant,
    table: Mutex<Table>,
    next_id: AtomicU64,
    memory: AtomicUsize,
    refusing: AtomicUsize,
    /// The listeners waiting for a socket to be released (see [`CLOSING_SLACK`]).
    accept_wakers: Mutex<Vec<Waker>>,
    rest: Counters,
    grpc: Counters,
}

impl Net {
    /// A table with `config`.
    pub fn new(config: NetConfig) -> Arc<Net> {
        Arc::new(Net {
            config,
            epoch: Instant::now(),
            table: Mutex::new(Table::default()),
            next_id: AtomicU64::new(1),
            memory: AtomicUsize::new(0),
            refusing: AtomicUsize::new(0),
            accept_wakers: Mutex::new(Vec::new()),
            rest: Counters::default(),
            grpc: Counters::default(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &NetConfig {
        &self.config
    }

    fn now(&self) -> u64 {
        now_since(self.epoch)
    }

    fn counters(&self, proto: Proto) -> &Counters {
        match proto {
            Proto::Rest => &self.rest,
            Proto::Grpc => &self.grpc,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        // The table's invariants hold between statements; a panic elsewhere cannot leave it half-changed.
        self.table.lock()
    }

    /// The counts now.
    pub fn stats(&self) -> NetStats {
        let (mut rest_active, mut grpc_active) = (0, 0);
        for c in self.lock().conns.values() {
            match c.proto {
                Proto::Rest => rest_active += 1,
                Proto::Grpc => grpc_active += 1,
            }
        }
        let listener = |c: &Counters, active| {
            let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
            ListenerStats {
                active,
                accepted: g(&c.accepted),
                refused: g(&c.refused),
                evicted: g(&c.evicted),
                timed_out_header: g(&c.timed_out_header),
                timed_out_body: g(&c.timed_out_body),
                timed_out_idle: g(&c.timed_out_idle),
                timed_out_write: g(&c.timed_out_write),
                accept_errors: g(&c.accept_errors),
                memory_refused: g(&c.memory_refused),
                in_flight: g(&c.in_flight),
            }
        };
        NetStats {
            max_connections: self.config.max_connections as u64,
            rest: listener(&self.rest, rest_active),
            grpc: listener(&self.grpc, grpc_active),
            memory_in_use: self.memory.load(Ordering::Relaxed) as u64,
            memory_limit: self.config.request_memory_bytes as u64,
        }
    }

    // ----- the table ----------------------------------------------------------------------------------

    /// Admits a new connection, evicting a waiting one at the cap; None when it must be refused.
    fn admit(&self, proto: Proto, peer: SocketAddr) -> Option<Arc<ConnState>> {
        let now = self.now();
        let mut t = self.lock();
        let mut woken = None;
        if t.conns.len() - t.killed >= self.config.max_connections {
            match self.victim(&t, now, true) {
                Some(v) => {
                    self.kill_locked(&mut t, &v, CloseReason::Evicted);
                    woken = Some(v);
                }
                None => {
                    drop(t);
                    self.counters(proto).refused.fetch_add(1, Ordering::Relaxed);
                    return None;
                }
            }
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let state = Arc::new(ConnState::new(id, proto, peer, self.epoch, now));
        t.conns.insert(id, state.clone());
        drop(t);
        if let Some(v) = woken {
            v.wake();
        }
        self.counters(proto)
            .accepted
            .fetch_add(1, Ordering::Relaxed);
        Some(state)
    }

    /// The connection that has waited on its client the longest (with `grace`: at least
    /// [`EVICT_IDLE_AFTER`] / [`EVICT_STALLED_AFTER`]).
    fn victim(&self, t: &Table, now: u64, grace: bool) -> Option<Arc<ConnState>> {
        let idle_grace = if grace { ms(EVICT_IDLE_AFTER) } else { 0 };
        let stall_grace = if grace { ms(EVICT_STALLED_AFTER) } else { 0 };
        t.conns
            .values()
            .filter(|c| !c.killed.load(Ordering::Relaxed))
            .filter_map(|c| {
                let (since, grace) = c.waiting_since()?;
                let g = if grace == Wait::Idle {
                    idle_grace
                } else {
                    stall_grace
                };
                (now.saturating_sub(since) >= g).then_some((since, c))
            })
            .min_by_key(|(since, c)| (*since, c.id))
            .map(|(_, c)| c.clone())
    }

    /// Marks `c` closed (the caller wakes it once the lock is released); false if it already was.
    fn kill_locked(&self, t: &mut Table, c: &ConnState, reason: CloseReason) -> bool {
        if c.killed.swap(true, Ordering::AcqRel) || !t.conns.contains_key(&c.id) {
            return false;
        }
        t.killed += 1;
        let n = self.counters(c.proto);
        match reason {
            CloseReason::Header => &n.timed_out_header,
            CloseReason::Idle => &n.timed_out_idle,
            CloseReason::Write => &n.timed_out_write,
            CloseReason::Evicted => &n.evicted,
        }
        .fetch_add(1, Ordering::Relaxed);
        tracing::debug!(peer = %c.peer, ?reason, "closing connection");
        true
    }

    fn remove(&self, c: &ConnState) {
        let mut t = self.lock();
        if t.conns.remove(&c.id).is_some() && c.killed.load(Ordering::Acquire) {
            t.killed -= 1;
        }
        drop(t);
        let waiting = std::mem::take(&mut *self.accept_wakers.lock());
        for w in waiting {
            w.wake();
        }
    }

    /// True when a new socket may be accepted: the open sockets (closing ones included) are below the cap
    /// plus [`CLOSING_SLACK`]. Otherwise the caller is woken when one is released.
    fn poll_room(&self, cx: &Context<'_>) -> bool {
        let full = || self.lock().conns.len() >= self.config.max_connections + CLOSING_SLACK;
        if !full() {
            return true;
        }
        {
            let mut w = self.accept_wakers.lock();
            if !w.iter().any(|o| o.will_wake(cx.waker())) {
                w.push(cx.waker().clone());
            }
        }
        // Released in between: go on (the registered waker only causes a spurious poll).
        !full()
    }

    /// What to close now, and why.
    fn verdict(&self, c: &ConnState, now: u64) -> Option<CloseReason> {
        let age = |since: u64| (since != 0).then(|| now.saturating_sub(since));
        if age(c.write_blocked_since.load(Ordering::Relaxed))
            .is_some_and(|a| a >= ms(self.config.body_timeout))
        {
            return Some(CloseReason::Write);
        }
        if c.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        if !c.http2.load(Ordering::Relaxed)
            && age(c.head_since.load(Ordering::Relaxed))
                .is_some_and(|a| a >= ms(self.config.header_timeout))
        {
            return Some(CloseReason::Header);
        }
        if age(c.idle_since.load(Ordering::Relaxed))
            .is_some_and(|a| a >= ms(self.config.idle_timeout))
        {
            return Some(CloseReason::Idle);
        }
        None
    }

    /// Closes every connection past a timeout (one pass).
    pub fn sweep_once(&self) {
        let now = self.now();
        let mut t = self.lock();
        let doomed: Vec<(Arc<ConnState>, CloseReason)> = t
            .conns
            .values()
            .filter(|c| !c.killed.load(Ordering::Relaxed))
            .filter_map(|c| Some((c.clone(), self.verdict(c, now)?)))
            .collect();
        let mut woken = Vec::with_capacity(doomed.len());
        for (c, reason) in doomed {
            if self.kill_locked(&mut t, &c, reason) {
                woken.push(c);
            }
        }
        drop(t);
        for c in woken {
            c.wake();
        }
    }

    /// Runs [`Net::sweep_once`] a few times per shortest timeout until `stop` turns true.
    pub async fn sweep(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let c = &self.config;
        let tick = (c.header_timeout.min(c.body_timeout).min(c.idle_timeout) / 8)
            .clamp(Duration::from_millis(10), Duration::from_millis(500));
        let mut every = tokio::time::interval(tick);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = every.tick() => self.sweep_once(),
                _ = stop.wait_for(|v| *v) => return,
            }
        }
    }

    /// After an accept error (out of descriptors, most likely): close the connection that has waited on its
    /// client the longest, whatever its wait.
    fn accept_error(&self, proto: Proto) {
        self.counters(proto)
            .accept_errors
            .fetch_add(1, Ordering::Relaxed);
        let now = self.now();
        let mut t = self.lock();
        let Some(v) = self.victim(&t, now, false) else {
            return;
        };
        let killed = self.kill_locked(&mut t, &v, CloseReason::Evicted);
        drop(t);
        if killed {
            v.wake();
        }
    }

    /// Answers a refused connection: a raw 503 on the REST listener (a bounded number at once, each within
    /// two seconds), a close on gRPC.
    fn refuse(self: &Arc<Self>, stream: TcpStream, proto: Proto) {
        if proto == Proto::Grpc || self.refusing.fetch_add(1, Ordering::AcqRel) >= MAX_REFUSING {
            if proto == Proto::Rest {
                self.refusing.fetch_sub(1, Ordering::AcqRel);
            }
            return;
        }
        let net = self.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(
                Duration::from_secs(2),
                write_refusal(stream, net.config.max_connections),
            )
            .await;
            net.refusing.fetch_sub(1, Ordering::AcqRel);
        });
    }

    // ----- the memory budget --------------------------------------------------------------------------

    fn try_reserve(&self, n: usize) -> bool {
        let limit = self.config.request_memory_bytes;
        self.memory
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(n).filter(|&u| u <= limit)
            })
            .is_ok()
    }

    fn release(&self, n: usize) {
        self.memory.fetch_sub(n, Ordering::AcqRel);
    }

    /// Why a request needing `need` more bytes does not fit the budget.
    fn overloaded_reason(&self, need: usize) -> String {
        format!(
            "the server's request memory budget is full ({} of {} bytes reserved by requests being \
             received or processed, {REQUEST_MEMORY_FACTOR} per body byte; this request needs {need} more)",
            self.memory.load(Ordering::Relaxed),
            self.config.request_memory_bytes
        )
    }

    /// The error of a request the budget cannot hold (`need` more bytes).
    fn overloaded(&self, need: usize) -> ServiceError {
        ServiceError::Overloaded {
            reason: self.overloaded_reason(need),
            retry_after_ms: MEMORY_RETRY_AFTER_MS,
        }
    }
}

fn ms(d: Duration) -> u64 {
    d.as_millis().min(u128::from(u64::MAX)) as u64
}

/// Milliseconds since `epoch`, plus one (0 means "not set").
fn now_since(epoch: Instant) -> u64 {
    ms(epoch.elapsed()) + 1
}

/// Writes the refusal of a connection at the cap (HTTP/1.1 503, JSON error body, `Retry-After: 1`): after
/// the request head (or half a second without one), since an HTTP client takes an answer that arrives before
/// its request for a broken connection; then reads what else the client sent (up to 64 KiB) so that closing
/// does not reset the connection before the client read the answer.
async fn write_refusal(mut stream: TcpStream, cap: usize) -> io::Result<()> {
    let mut head = [0u8; 8192];
    let mut got = 0;
    let _ = tokio::time::timeout(Duration::from_millis(500), async {
        while got < head.len() {
            match stream.read(&mut head[got..]).await? {
                0 => break,
                n => got += n,
            }
            if head[..got].windows(4).any(|w| w == b"\r\n\r\n") {
                break;
            }
        }
        Ok::<_, io::Error>(())
    })
    .await;
    let e = ServiceError::Unavailable(format!(
        "too many connections: the server holds its maximum of {cap}; retry after the Retry-After seconds"
    ));
    let body = serde_json::to_string(&crate::api::ErrorBody {
        code: e.status().code,
        message: e.public_message(),
    })
    .unwrap_or_default();
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(answer.as_bytes()).await?;
    stream.shutdown().await?;
    let mut buf = [0u8; 4096];
    let mut read = 0;
    while read < 64 << 10 {
        match stream.read(&mut buf).await? {
            0 => break,
            n => read += n,
        }
    }
    Ok(())
}

// ----- connections --------------------------------------------------------------------------------------
