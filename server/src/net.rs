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
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{ready, Context, Poll, Waker};
use std::time::{Duration, Instant};

use axum::http;
use bytes::{Buf, Bytes};
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::config::{Settings, REQUEST_MEMORY_FACTOR};
use crate::error::ServiceError;
use crate::metrics::Proto;

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
        self.table
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
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
        let waiting = std::mem::take(
            &mut *self
                .accept_wakers
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
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
            let mut w = self
                .accept_wakers
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
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

/// What a connection is waiting for, when it waits on its client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Wait {
    /// No request in flight.
    Idle,
    /// Every request in flight waits for its body, or the client does not take the answer.
    Stalled,
}

/// One open connection's state, shared by its socket ([`Conn`]), its requests and the table.
#[derive(Debug)]
pub struct ConnState {
    id: u64,
    proto: Proto,
    peer: SocketAddr,
    epoch: Instant,
    /// Last time bytes were read.
    last_read: AtomicU64,
    /// Since when no request has been in flight (0 while one is).
    idle_since: AtomicU64,
    /// HTTP/1: the first byte of a request head not yet complete (0: none).
    head_since: AtomicU64,
    /// Since when a write has been waiting for the client to take bytes (0: none).
    write_blocked_since: AtomicU64,
    in_flight: AtomicU32,
    /// Requests whose body the server waits for.
    stalled: AtomicU32,
    seen_bytes: AtomicBool,
    http2: AtomicBool,
    killed: AtomicBool,
    read_waker: Mutex<Option<Waker>>,
    write_waker: Mutex<Option<Waker>>,
}

impl ConnState {
    fn new(id: u64, proto: Proto, peer: SocketAddr, epoch: Instant, now: u64) -> ConnState {
        ConnState {
            id,
            proto,
            peer,
            epoch,
            last_read: AtomicU64::new(now),
            idle_since: AtomicU64::new(now),
            head_since: AtomicU64::new(0),
            write_blocked_since: AtomicU64::new(0),
            in_flight: AtomicU32::new(0),
            stalled: AtomicU32::new(0),
            seen_bytes: AtomicBool::new(false),
            http2: AtomicBool::new(proto == Proto::Grpc),
            killed: AtomicBool::new(false),
            read_waker: Mutex::new(None),
            write_waker: Mutex::new(None),
        }
    }

    fn now(&self) -> u64 {
        now_since(self.epoch)
    }

    /// True once the server closed it.
    pub fn is_closed(&self) -> bool {
        self.killed.load(Ordering::Acquire)
    }

    fn waiting_since(&self) -> Option<(u64, Wait)> {
        let in_flight = self.in_flight.load(Ordering::Acquire);
        let last_read = self.last_read.load(Ordering::Relaxed);
        let blocked = self.write_blocked_since.load(Ordering::Relaxed);
        if in_flight == 0 {
            Some((
                self.idle_since.load(Ordering::Relaxed).max(last_read),
                Wait::Idle,
            ))
        } else if blocked != 0 {
            Some((blocked, Wait::Stalled))
        } else if self.stalled.load(Ordering::Acquire) >= in_flight {
            Some((last_read, Wait::Stalled))
        } else {
            None
        }
    }

    fn on_read(&self, bytes: &[u8]) {
        let now = self.now();
        self.last_read.store(now, Ordering::Relaxed);
        if !self.seen_bytes.swap(true, Ordering::Relaxed) {
            let n = bytes.len().min(H2_PREFACE.len());
            if bytes[..n] == H2_PREFACE[..n] {
                self.http2.store(true, Ordering::Relaxed);
            }
        }
        if self.in_flight.load(Ordering::Acquire) == 0 {
            let _ = self
                .head_since
                .compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed);
        }
    }

    fn park(slot: &Mutex<Option<Waker>>, waker: &Waker) {
        let mut w = slot
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match &*w {
            Some(old) if old.will_wake(waker) => {}
            Some(_) | None => *w = Some(waker.clone()),
        }
    }

    fn wake(&self) {
        for slot in [&self.read_waker, &self.write_waker] {
            let w = slot
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take();
            if let Some(w) = w {
                w.wake();
            }
        }
    }

    fn request_started(&self) {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.head_since.store(0, Ordering::Relaxed);
        self.idle_since.store(0, Ordering::Relaxed);
    }

    fn request_finished(&self) {
        if self.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.idle_since.store(self.now(), Ordering::Relaxed);
        }
    }
}

/// The connection a request came in on (in its extensions: tonic puts it there through
/// `Connected::connect_info`, axum as `ConnectInfo<ConnInfo>`).
#[derive(Clone, Debug)]
pub struct ConnInfo(pub Arc<ConnState>);

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, NetListener>>
    for ConnInfo
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, NetListener>) -> Self {
        ConnInfo(stream.io().state.clone())
    }
}

/// An accepted connection: the socket, recording progress, closable from outside (then reads see end of
/// file and writes fail).
#[derive(Debug)]
pub struct Conn {
    io: TcpStream,
    state: Arc<ConnState>,
    net: Arc<Net>,
}

impl Conn {
    /// Its shared state.
    pub fn state(&self) -> &Arc<ConnState> {
        &self.state
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.net.remove(&self.state);
    }
}

fn closed() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "connection closed by the server",
    )
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.state.is_closed() {
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Pending => {
                ConnState::park(&this.state.read_waker, cx.waker());
                if this.state.is_closed() {
                    return Poll::Ready(Ok(()));
                }
                Poll::Pending
            }
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.state.on_read(&buf.filled()[before..]);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
        }
    }
}

impl Conn {
    fn written(&self, r: Poll<io::Result<usize>>, cx: &Context<'_>) -> Poll<io::Result<usize>> {
        match r {
            Poll::Pending => {
                let _ = self.state.write_blocked_since.compare_exchange(
                    0,
                    self.state.now(),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
                ConnState::park(&self.state.write_waker, cx.waker());
                if self.state.is_closed() {
                    return Poll::Ready(Err(closed()));
                }
                Poll::Pending
            }
            Poll::Ready(r) => {
                self.state.write_blocked_since.store(0, Ordering::Relaxed);
                Poll::Ready(r)
            }
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.state.is_closed() {
            return Poll::Ready(Err(closed()));
        }
        let r = Pin::new(&mut this.io).poll_write(cx, buf);
        this.written(r, cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.state.is_closed() {
            return Poll::Ready(Err(closed()));
        }
        let r = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.written(r, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.state.is_closed() {
            return Poll::Ready(Err(closed()));
        }
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        ConnInfo(self.state.clone())
    }
}

// ----- the listener -------------------------------------------------------------------------------------

/// A TCP listener whose connections go through the table: axum's `Listener`, and tonic's incoming stream.
#[derive(Debug)]
pub struct NetListener {
    listener: TcpListener,
    net: Arc<Net>,
    proto: Proto,
    backoff: Option<Pin<Box<tokio::time::Sleep>>>,
    last_warning: Option<Instant>,
}

impl NetListener {
    /// Connections of `listener` (protocol `proto`) admitted to `net`.
    pub fn new(listener: TcpListener, net: Arc<Net>, proto: Proto) -> NetListener {
        NetListener {
            listener,
            net,
            proto,
            backoff: None,
            last_warning: None,
        }
    }

    fn poll_conn(&mut self, cx: &mut Context<'_>) -> Poll<Conn> {
        loop {
            if let Some(b) = &mut self.backoff {
                ready!(b.as_mut().poll(cx));
                self.backoff = None;
            }
            if !self.net.poll_room(cx) {
                return Poll::Pending;
            }
            match ready!(self.listener.poll_accept(cx)) {
                Ok((io, peer)) => {
                    // TCP_NODELAY: without it, Nagle's algorithm holds back the small trailing frames of an
                    // answer until the client's delayed ACK (~40 ms on Linux).
                    let _ = io.set_nodelay(true);
                    match self.net.admit(self.proto, peer) {
                        Some(state) => {
                            return Poll::Ready(Conn {
                                io,
                                state,
                                net: self.net.clone(),
                            })
                        }
                        None => self.net.refuse(io, self.proto),
                    }
                }
                // The peer gave up before the accept: nothing to do.
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::ConnectionAborted
                            | io::ErrorKind::ConnectionReset
                            | io::ErrorKind::ConnectionRefused
                    ) => {}
                Err(e) => {
                    if self
                        .last_warning
                        .is_none_or(|t| t.elapsed() > Duration::from_secs(10))
                    {
                        tracing::warn!(error = %e, "accept failed (out of file descriptors?): closing the \
                            longest-waiting connection; raise the descriptor limit or lower \
                            limits.max_connections");
                        self.last_warning = Some(Instant::now());
                    }
                    self.net.accept_error(self.proto);
                    self.backoff = Some(Box::pin(tokio::time::sleep(ACCEPT_BACKOFF)));
                }
            }
        }
    }
}

impl axum::serve::Listener for NetListener {
    type Io = Conn;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Conn, SocketAddr) {
        let conn = std::future::poll_fn(|cx| self.poll_conn(cx)).await;
        let peer = conn.state.peer;
        (conn, peer)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

impl tokio_stream::Stream for NetListener {
    type Item = Result<Conn, Infallible>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().poll_conn(cx).map(|c| Some(Ok(c)))
    }
}

// ----- requests -----------------------------------------------------------------------------------------

/// How one protocol builds bodies and refusals.
pub trait Wire: Send + Sync + 'static {
    /// The protocol's body type.
    type Body: HttpBody<Data = Bytes, Error: Into<BoxError>> + Send + Unpin + 'static;
    /// For the counters.
    const PROTO: Proto;
    /// Whether a body refused before it was read is read (and dropped) before the answer: HTTP/1 clients
    /// that are still sending take an early answer and a closed connection for a broken pipe, and never
    /// see the 429. (HTTP/2 ends the stream instead.)
    const DRAIN_REFUSED: bool;
    /// `body` as the protocol's body type.
    fn wrap<B>(body: B) -> Self::Body
    where
        B: HttpBody<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>;
    /// The answer to a request refused with `e` before its body was read.
    fn refuse(e: ServiceError) -> http::Response<Self::Body>;
}

/// REST (axum).
#[derive(Debug)]
pub struct RestWire;

impl Wire for RestWire {
    type Body = axum::body::Body;
    const PROTO: Proto = Proto::Rest;
    const DRAIN_REFUSED: bool = true;

    fn wrap<B>(body: B) -> axum::body::Body
    where
        B: HttpBody<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        axum::body::Body::new(body)
    }

    fn refuse(e: ServiceError) -> http::Response<axum::body::Body> {
        axum::response::IntoResponse::into_response(e)
    }
}

/// gRPC (tonic).
#[derive(Debug)]
pub struct GrpcWire;

impl Wire for GrpcWire {
    type Body = tonic::body::Body;
    const PROTO: Proto = Proto::Grpc;
    const DRAIN_REFUSED: bool = false;

    fn wrap<B>(body: B) -> tonic::body::Body
    where
        B: HttpBody<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        tonic::body::Body::new(body)
    }

    fn refuse(e: ServiceError) -> http::Response<tonic::body::Body> {
        tonic::Status::from(e).into_http()
    }
}

/// The tower layer of [`Track`].
pub struct TrackLayer<W> {
    net: Arc<Net>,
    _wire: PhantomData<fn() -> W>,
}

impl<W> TrackLayer<W> {
    /// Requests tracked in `net`.
    pub fn new(net: Arc<Net>) -> Self {
        TrackLayer {
            net,
            _wire: PhantomData,
        }
    }
}

impl<W> Clone for TrackLayer<W> {
    fn clone(&self) -> Self {
        TrackLayer::new(self.net.clone())
    }
}

impl<S, W> tower::Layer<S> for TrackLayer<W> {
    type Service = Track<S, W>;

    fn layer(&self, inner: S) -> Track<S, W> {
        Track {
            inner,
            net: self.net.clone(),
            _wire: PhantomData,
        }
    }
}

/// Tracks each request (in flight on its connection, body admitted against the budget and timed); see the
/// module documentation.
pub struct Track<S, W> {
    inner: S,
    net: Arc<Net>,
    _wire: PhantomData<fn() -> W>,
}

impl<S: Clone, W> Clone for Track<S, W> {
    fn clone(&self) -> Self {
        Track {
            inner: self.inner.clone(),
            net: self.net.clone(),
            _wire: PhantomData,
        }
    }
}

/// The declared `Content-Length`, if any and readable.
fn content_length(h: &http::HeaderMap) -> Option<usize> {
    h.get(http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

impl<S, W, RB> tower::Service<http::Request<W::Body>> for Track<S, W>
where
    W: Wire,
    S: tower::Service<http::Request<W::Body>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    RB: HttpBody<Data = Bytes> + Send + 'static,
    RB::Error: Into<BoxError>,
{
    type Response = http::Response<W::Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<W::Body>) -> Self::Future {
        let net = &self.net;
        let ext = req.extensions();
        let conn = ext.get::<ConnInfo>().cloned().or_else(|| {
            ext.get::<axum::extract::ConnectInfo<ConnInfo>>()
                .map(|c| c.0.clone())
        });
        let in_flight = conn
            .as_ref()
            .map(|c| InFlight::start(net.clone(), c.0.clone(), W::PROTO));
        let reservation = Arc::new(Reservation::new(net));
        let has_body = !req.body().is_end_stream();
        let declared = content_length(req.headers()).filter(|&n| n <= net.config.max_request_bytes);
        let mut prepaid = false;
        if let Some(n) = declared.filter(|&n| has_body && n > 0) {
            if !reservation.try_reserve(n) {
                net.counters(W::PROTO)
                    .memory_refused
                    .fetch_add(1, Ordering::Relaxed);
                let refusal = W::refuse(net.overloaded(n.saturating_mul(REQUEST_MEMORY_FACTOR)));
                drop(reservation);
                // A client that waits for `100 Continue` sends nothing more: answer at once.
                let expects = req.headers().contains_key(http::header::EXPECT);
                if !W::DRAIN_REFUSED || expects {
                    return Box::pin(std::future::ready(Ok(refusal)));
                }
                let (wait, body) = (net.config.body_timeout, req.into_body());
                return Box::pin(async move {
                    discard(body, n, wait).await;
                    drop(in_flight);
                    Ok(refusal)
                });
            }
            prepaid = true;
        }
        let req = if has_body {
            let net = net.clone();
            let reservation = reservation.clone();
            req.map(|inner| {
                W::wrap(RequestBody {
                    inner,
                    stall: Stall {
                        conn: conn.map(|c| c.0),
                        on: false,
                    },
                    net,
                    proto: W::PROTO,
                    reservation,
                    prepaid,
                    timer: None,
                    done: false,
                })
            })
        } else {
            req
        };
        let fut = self.inner.call(req);
        Box::pin(async move {
            let resp = fut.await?;
            let guard = Guard {
                _in_flight: in_flight,
                _reservation: reservation,
            };
            Ok(resp.map(|inner| {
                W::wrap(ResponseBody {
                    inner,
                    guard: Some(guard),
                })
            }))
        })
    }
}

/// Reads and drops up to `limit` bytes of `body`, each frame within `wait` (memory: one frame at a time).
async fn discard<B: HttpBody + Unpin>(mut body: B, limit: usize, wait: Duration) {
    let mut read = 0;
    while read <= limit {
        let next = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx));
        match tokio::time::timeout(wait, next).await {
            Ok(Some(Ok(frame))) => read += frame.data_ref().map_or(0, |d| d.remaining()),
            Ok(Some(Err(_)) | None) | Err(_) => return,
        }
    }
}

/// A request in flight on a connection (from the request to the end of its answer).
struct InFlight {
    net: Arc<Net>,
    conn: Arc<ConnState>,
    proto: Proto,
}

impl InFlight {
    fn start(net: Arc<Net>, conn: Arc<ConnState>, proto: Proto) -> InFlight {
        conn.request_started();
        net.counters(proto)
            .in_flight
            .fetch_add(1, Ordering::Relaxed);
        InFlight { net, conn, proto }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.conn.request_finished();
        self.net
            .counters(self.proto)
            .in_flight
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// The bytes of the budget one request holds (released when both its body and its answer are done):
/// [`REQUEST_MEMORY_FACTOR`] per body byte, at most that many times `max_request_bytes`.
struct Reservation {
    net: Arc<Net>,
    held: AtomicUsize,
    cap: usize,
}

impl Reservation {
    fn new(net: &Arc<Net>) -> Reservation {
        Reservation {
            net: net.clone(),
            held: AtomicUsize::new(0),
            cap: net
                .config
                .max_request_bytes
                .saturating_mul(REQUEST_MEMORY_FACTOR),
        }
    }

    /// Reserves for `n` more body bytes, holding at most `cap` in all (a long stream does not grow without
    /// bound); false when the budget cannot.
    fn try_reserve(&self, n: usize) -> bool {
        let want = n
            .saturating_mul(REQUEST_MEMORY_FACTOR)
            .min(self.cap.saturating_sub(self.held.load(Ordering::Acquire)));
        if want == 0 {
            return true;
        }
        if self.net.try_reserve(want) {
            self.held.fetch_add(want, Ordering::AcqRel);
            true
        } else {
            false
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.net.release(*self.held.get_mut());
    }
}

/// What an answer holds until it is sent.
struct Guard {
    _in_flight: Option<InFlight>,
    _reservation: Arc<Reservation>,
}

/// A request body's "the server waits for the client" mark on its connection.
struct Stall {
    conn: Option<Arc<ConnState>>,
    on: bool,
}

impl Stall {
    fn set(&mut self, on: bool) {
        if self.on == on {
            return;
        }
        self.on = on;
        if let Some(c) = &self.conn {
            if on {
                c.stalled.fetch_add(1, Ordering::AcqRel);
            } else {
                c.stalled.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }
}

impl Drop for Stall {
    fn drop(&mut self) {
        self.set(false);
    }
}

/// Why a request body failed here: the client stopped sending it, or the budget is full. Its source is the
/// `tonic::Status` for gRPC (tonic finds it in the chain); REST takes [`BodyError::service_error`].
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct BodyError {
    kind: BodyErrorKind,
    message: String,
    #[source]
    status: tonic::Status,
}

#[derive(Clone, Debug)]
enum BodyErrorKind {
    Timeout(String),
    Overloaded { reason: String, retry_after_ms: u64 },
}

impl BodyError {
    fn new(kind: BodyErrorKind) -> BodyError {
        let e = Self::error(&kind);
        BodyError {
            message: e.to_string(),
            kind,
            status: e.into(),
        }
    }

    fn error(kind: &BodyErrorKind) -> ServiceError {
        match kind {
            BodyErrorKind::Timeout(m) => ServiceError::RequestTimeout(m.clone()),
            BodyErrorKind::Overloaded {
                reason,
                retry_after_ms,
            } => ServiceError::Overloaded {
                reason: reason.clone(),
                retry_after_ms: *retry_after_ms,
            },
        }
    }

    /// The error to answer with.
    pub fn service_error(&self) -> ServiceError {
        Self::error(&self.kind)
    }

    /// The [`BodyError`] in `err`'s source chain, as the error to answer with.
    pub fn find(err: &(dyn std::error::Error + 'static)) -> Option<ServiceError> {
        let mut e = Some(err);
        while let Some(cur) = e {
            if let Some(b) = cur.downcast_ref::<BodyError>() {
                return Some(b.service_error());
            }
            e = cur.source();
        }
        None
    }
}

pin_project_lite::pin_project! {
    /// A request body: admitted frame by frame against the budget (unless its length was reserved up
    /// front) and timed while the server waits for it.
    struct RequestBody<B> {
        #[pin]
        inner: B,
        stall: Stall,
        net: Arc<Net>,
        proto: Proto,
        reservation: Arc<Reservation>,
        prepaid: bool,
        timer: Option<Pin<Box<tokio::time::Sleep>>>,
        done: bool,
    }
}

impl<B> HttpBody for RequestBody<B>
where
    B: HttpBody<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        if *this.done {
            return Poll::Ready(None);
        }
        match this.inner.poll_frame(cx) {
            Poll::Pending => {
                this.stall.set(true);
                let net = this.net.clone();
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(net.config.body_timeout)));
                if timer.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                *this.done = true;
                this.stall.set(false);
                net.counters(*this.proto)
                    .timed_out_body
                    .fetch_add(1, Ordering::Relaxed);
                let waited = ms(net.config.body_timeout);
                Poll::Ready(Some(Err(Box::new(BodyError::new(BodyErrorKind::Timeout(
                    format!(
                        "the client sent nothing of the request body for {waited} ms \
                         (body_read_timeout_ms)"
                    ),
                ))))))
            }
            Poll::Ready(r) => {
                this.stall.set(false);
                *this.timer = None;
                match r {
                    None => {
                        *this.done = true;
                        Poll::Ready(None)
                    }
                    Some(Err(e)) => {
                        *this.done = true;
                        Poll::Ready(Some(Err(e.into())))
                    }
                    Some(Ok(frame)) => {
                        let n = frame.data_ref().map_or(0, Bytes::len);
                        if !*this.prepaid && n > 0 && !this.reservation.try_reserve(n) {
                            *this.done = true;
                            this.net
                                .counters(*this.proto)
                                .memory_refused
                                .fetch_add(1, Ordering::Relaxed);
                            return Poll::Ready(Some(Err(Box::new(BodyError::new(
                                BodyErrorKind::Overloaded {
                                    reason: this
                                        .net
                                        .overloaded_reason(n.saturating_mul(REQUEST_MEMORY_FACTOR)),
                                    retry_after_ms: MEMORY_RETRY_AFTER_MS,
                                },
                            )))));
                        }
                        Poll::Ready(Some(Ok(frame)))
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

pin_project_lite::pin_project! {
    /// An answer's body, holding its request's [`Guard`] until it ends (or is dropped).
    struct ResponseBody<B> {
        #[pin]
        inner: B,
        guard: Option<Guard>,
    }
}

impl<B> HttpBody for ResponseBody<B>
where
    B: HttpBody<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        let r = ready!(this.inner.poll_frame(cx));
        if r.is_none() {
            *this.guard = None;
        }
        Poll::Ready(r.map(|f| f.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(max_connections: usize) -> NetConfig {
        NetConfig {
            max_connections,
            request_memory_bytes: 1000,
            max_request_bytes: 400,
            header_timeout: Duration::from_millis(200),
            body_timeout: Duration::from_millis(200),
            idle_timeout: Duration::from_millis(400),
        }
    }

    fn peer() -> SocketAddr {
        "127.0.0.1:1".parse().unwrap()
    }

    #[test]
    fn the_automatic_cap_leaves_room_for_the_servers_files() {
        assert_eq!(auto_max_connections(Some(1024)), 768);
        assert_eq!(auto_max_connections(Some(65_536)), 57_344);
        assert_eq!(auto_max_connections(Some(100)), 16);
        assert_eq!(auto_max_connections(Some(u64::MAX)), 65_536);
        assert_eq!(auto_max_connections(None), 1024);
        let limit = descriptor_limit();
        if std::path::Path::new("/proc/self/limits").exists() {
            assert!(limit.is_some_and(|n| n > 0), "{limit:?}");
        }
    }

    #[test]
    fn at_the_cap_the_longest_waiting_connection_is_evicted_or_the_new_one_refused() {
        let net = Net::new(config(2));
        let a = net.admit(Proto::Rest, peer()).unwrap();
        let b = net.admit(Proto::Grpc, peer()).unwrap();
        // Both just arrived: nothing has waited long enough to be evicted.
        assert!(net.admit(Proto::Rest, peer()).is_none());
        assert_eq!(net.stats().rest.refused, 1);
        // `a` has a request in flight with a body arriving; `b` idles past the grace: `b` goes.
        a.request_started();
        std::thread::sleep(EVICT_IDLE_AFTER + Duration::from_millis(20));
        let c = net.admit(Proto::Rest, peer()).unwrap();
        assert!(b.is_closed() && !a.is_closed() && !c.is_closed());
        let s = net.stats();
        assert_eq!(
            (s.grpc.evicted, s.rest.accepted, s.grpc.accepted),
            (1, 2, 1)
        );
        // `b` stays in the table (its socket is still open) but not against the cap.
        assert_eq!(s.rest.active + s.grpc.active, 3);
        net.remove(&b);
        assert_eq!(net.lock().killed, 0);
        assert_eq!(net.stats().grpc.active, 0);
    }

    #[test]
    fn the_sweeper_closes_idle_and_half_sent_heads() {
        let net = Net::new(config(8));
        let idle = net.admit(Proto::Grpc, peer()).unwrap();
        let head = net.admit(Proto::Rest, peer()).unwrap();
        let busy = net.admit(Proto::Rest, peer()).unwrap();
        head.on_read(b"POST /v1/x HTTP/1.1\r\nHost");
        busy.on_read(b"GET / HTTP/1.1\r\n\r\n");
        busy.request_started();
        std::thread::sleep(Duration::from_millis(250));
        net.sweep_once();
        assert!(head.is_closed() && !idle.is_closed() && !busy.is_closed());
        std::thread::sleep(Duration::from_millis(200));
        net.sweep_once();
        assert!(idle.is_closed() && !busy.is_closed());
        let s = net.stats();
        assert_eq!((s.rest.timed_out_header, s.grpc.timed_out_idle), (1, 1));
    }

    #[test]
    fn reservations_are_capped_per_request_and_released() {
        let net = Net::new(NetConfig {
            request_memory_bytes: 4000,
            ..config(8)
        });
        let r = || Reservation::new(&net);
        let (a, b, c) = (r(), r(), r());
        // 4 bytes per body byte, at most 4 x max_request_bytes (1600) per request.
        assert!(a.try_reserve(300) && a.try_reserve(300));
        assert_eq!(a.held.load(Ordering::Relaxed), 1600);
        assert!(b.try_reserve(400));
        assert!(!c.try_reserve(300)); // 3200 + 1200 > 4000
        assert!(c.try_reserve(200));
        assert_eq!(net.stats().memory_in_use, 4000);
        drop((a, b));
        assert_eq!(net.stats().memory_in_use, 800);
        drop(c);
        assert_eq!(net.stats().memory_in_use, 0);
    }
}
