//! The tower layer on both routers ([`TrackLayer`]): requests in flight per connection, request bodies
//! admitted against the server-wide memory budget and timed while the server waits for them.
use super::*;

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
    pub(super) net: Arc<Net>,
    pub(super) _wire: PhantomData<fn() -> W>,
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
    pub(super) inner: S,
    pub(super) net: Arc<Net>,
    pub(super) _wire: PhantomData<fn() -> W>,
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
pub(super) fn content_length(h: &http::HeaderMap) -> Option<usize> {
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
pub(super) struct InFlight {
    pub(super) net: Arc<Net>,
    pub(super) conn: Arc<ConnState>,
    pub(super) proto: Proto,
}

impl InFlight {
    pub(super) fn start(net: Arc<Net>, conn: Arc<ConnState>, proto: Proto) -> InFlight {
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
pub(super) struct Reservation {
    pub(super) net: Arc<Net>,
    pub(super) held: AtomicUsize,
    pub(super) cap: usize,
}

impl Reservation {
    pub(super) fn new(net: &Arc<Net>) -> Reservation {
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
    pub(super) fn try_reserve(&self, n: usize) -> bool {
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
pub(super) struct Guard {
    pub(super) _in_flight: Option<InFlight>,
    pub(super) _reservation: Arc<Reservation>,
}

/// A request body's "the server waits for the client" mark on its connection.
pub(super) struct Stall {
    pub(super) conn: Option<Arc<ConnState>>,
    pub(super) on: bool,
}

impl Stall {
    pub(super) fn set(&mut self, on: bool) {
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
    pub(super) kind: BodyErrorKind,
    pub(super) message: String,
    #[source]
    pub(super) status: tonic::Status,
}

#[derive(Clone, Debug)]
pub(super) enum BodyErrorKind {
    Timeout(String),
    Overloaded { reason: String, retry_after_ms: u64 },
}

impl BodyError {
    pub(super) fn new(kind: BodyErrorKind) -> BodyError {
        let e = Self::error(&kind);
        BodyError {
            message: e.to_string(),
            kind,
            status: e.into(),
        }
    }

    pub(super) fn error(kind: &BodyErrorKind) -> ServiceError {
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
