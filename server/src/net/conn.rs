//! Accepted connections: their state in the table (progress, requests in flight, close flag), the socket
//! wrapper that records progress ([`Conn`]) and the listener that admits them ([`NetListener`]).
use super::*;

/// What a connection is waiting for, when it waits on its client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Wait {
    /// No request in flight.
    Idle,
    /// Every request in flight waits for its body, or the client does not take the answer.
    Stalled,
}

/// One open connection's state, shared by its socket ([`Conn`]), its requests and the table.
#[derive(Debug)]
pub struct ConnState {
    pub(super) id: u64,
    pub(super) proto: Proto,
    pub(super) peer: SocketAddr,
    pub(super) epoch: Instant,
    /// Last time bytes were read.
    pub(super) last_read: AtomicU64,
    /// Since when no request has been in flight (0 while one is).
    pub(super) idle_since: AtomicU64,
    /// HTTP/1: the first byte of a request head not yet complete (0: none).
    pub(super) head_since: AtomicU64,
    /// Since when a write has been waiting for the client to take bytes (0: none).
    pub(super) write_blocked_since: AtomicU64,
    pub(super) in_flight: AtomicU32,
    /// Requests whose body the server waits for.
    pub(super) stalled: AtomicU32,
    pub(super) seen_bytes: AtomicBool,
    pub(super) http2: AtomicBool,
    pub(super) killed: AtomicBool,
    pub(super) read_waker: Mutex<Option<Waker>>,
    pub(super) write_waker: Mutex<Option<Waker>>,
}

impl ConnState {
    pub(super) fn new(
        id: u64,
        proto: Proto,
        peer: SocketAddr,
        epoch: Instant,
        now: u64,
    ) -> ConnState {
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

    pub(super) fn now(&self) -> u64 {
        now_since(self.epoch)
    }

    /// True once the server closed it.
    pub fn is_closed(&self) -> bool {
        self.killed.load(Ordering::Acquire)
    }

    pub(super) fn waiting_since(&self) -> Option<(u64, Wait)> {
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

    pub(super) fn on_read(&self, bytes: &[u8]) {
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

    pub(super) fn park(slot: &Mutex<Option<Waker>>, waker: &Waker) {
        let mut w = slot.lock();
        match &*w {
            Some(old) if old.will_wake(waker) => {}
            Some(_) | None => *w = Some(waker.clone()),
        }
    }

    pub(super) fn wake(&self) {
        for slot in [&self.read_waker, &self.write_waker] {
            let w = slot.lock().take();
            if let Some(w) = w {
                w.wake();
            }
        }
    }

    pub(super) fn request_started(&self) {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.head_since.store(0, Ordering::Relaxed);
        self.idle_since.store(0, Ordering::Relaxed);
    }

    pub(super) fn request_finished(&self) {
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
    pub(super) io: TcpStream,
    pub(super) state: Arc<ConnState>,
    pub(super) net: Arc<Net>,
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

pub(super) fn closed() -> io::Error {
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
    pub(super) fn written(
        &self,
        r: Poll<io::Result<usize>>,
        cx: &Context<'_>,
    ) -> Poll<io::Result<usize>> {
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
    pub(super) listener: TcpListener,
    pub(super) net: Arc<Net>,
    pub(super) proto: Proto,
    pub(super) backoff: Option<Pin<Box<tokio::time::Sleep>>>,
    pub(super) last_warning: Option<Instant>,
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

    pub(super) fn poll_conn(&mut self, cx: &mut Context<'_>) -> Poll<Conn> {
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
