//! The message router: async handlers registered per [`MessageType`], typed JSON helpers,
//! and server-push streams ([`PushSink`]).
//!
//! # Correlation (normative, `PROTOCOL.md`)
//! * A reply to a request with sequence number `N` has type
//!   [`control::response_type_for`](xtmp_proto::control::response_type_for) of the
//!   request type and payload `N (u64 BE) ‖ body`.
//! * An error reply is an `Error` message whose `ErrorPayload.request_seq` is `N`.
//! * With `REQUIRES_ACK`, an `Ack` with payload `encode_ack(N)` is sent once the handler
//!   returned successfully (before the response, if any).
//! * A server-push message has the `STREAMING` flag, the type of the subscribe request,
//!   and payload `N (u64 BE) ‖ body` where `N` is the subscribe request's sequence number
//!   (the stream id).

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use xtmp_proto::{ErrorCode, MessageType, XTMPFlags};

use crate::error::XTMPRuntimeError;
use crate::manager::ConnectionType;
use crate::metrics::{ServerCounters, ServerStatus};

/// A message delivered to a handler.
#[derive(Debug, Clone)]
pub struct Request {
    /// Its type.
    pub message_type: MessageType,
    /// Its flags as received (`ENCRYPTED`, `REQUIRES_ACK`, `PRIORITY`, ...).
    pub flags: XTMPFlags,
    /// Its sequence number (what the reply is correlated to).
    pub sequence_number: u64,
    /// The plaintext payload (already decompressed).
    pub payload: Vec<u8>,
}

/// What a handler returns on success.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// Send this body as the correlated response.
    Response(Vec<u8>),
    /// A one-way message: no response (an `Ack` is still sent if it was requested).
    None,
}

/// A handler's failure, sent to the peer as an `Error` message with this code and reason.
/// The session goes on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code:?}: {reason}")]
pub struct HandlerError {
    /// The wire code.
    pub code: ErrorCode,
    /// A short reason for the peer (never secrets or internal details).
    pub reason: String,
}

impl HandlerError {
    /// An error with an explicit code.
    pub fn new(code: ErrorCode, reason: impl Into<String>) -> Self {
        Self {
            code,
            reason: reason.into(),
        }
    }
    /// `HANDLER_ERROR`: the application could not process the request.
    pub fn failed(reason: impl Into<String>) -> Self {
        Self::new(ErrorCode::HANDLER_ERROR, reason)
    }
    /// A payload the handler cannot parse (reported as `BAD_REQUEST`).
    pub fn bad_request(reason: impl Into<String>) -> Self {
        Self::new(ErrorCode::BAD_REQUEST, reason)
    }
    /// `NOT_PERMITTED`: this session may not send this message.
    pub fn not_permitted(reason: impl Into<String>) -> Self {
        Self::new(ErrorCode::NOT_PERMITTED, reason)
    }
    /// `UNAUTHORIZED`: the session lacks the identity the request needs.
    pub fn unauthorized(reason: impl Into<String>) -> Self {
        Self::new(ErrorCode::UNAUTHORIZED, reason)
    }
}

/// What happens when a push stream's queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Overflow {
    /// `push` waits for room: nothing is ever dropped (reliable operations).
    #[default]
    Backpressure,
    /// The oldest queued message of the stream is dropped and counted (metrics, events).
    DropOldest,
}

/// Per-route settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteOptions {
    /// Only sessions authenticated with a client key (`pqIK`) may send this type;
    /// others get `UNAUTHORIZED`.
    pub require_client_key: bool,
    /// Overflow policy of streams opened with [`RequestContext::push_sink`].
    pub overflow: Overflow,
    /// Queue capacity (messages) of those streams.
    pub stream_capacity: usize,
}

impl Default for RouteOptions {
    fn default() -> Self {
        Self {
            require_client_key: false,
            overflow: Overflow::Backpressure,
            stream_capacity: 64,
        }
    }
}

impl RouteOptions {
    /// Options for a push stream with the given policy and capacity.
    pub fn stream(overflow: Overflow, stream_capacity: usize) -> Self {
        Self {
            overflow,
            stream_capacity,
            ..Self::default()
        }
    }
}

type Handler = Arc<
    dyn Fn(RequestContext, Request) -> BoxFuture<'static, Result<Reply, HandlerError>>
        + Send
        + Sync,
>;

/// A registered handler and its options.
#[derive(Clone)]
pub struct Route {
    handler: Handler,
    /// The route's options.
    pub options: RouteOptions,
}

impl std::fmt::Debug for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Route")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl Route {
    /// Runs the handler.
    pub fn call(
        &self,
        ctx: RequestContext,
        req: Request,
    ) -> BoxFuture<'static, Result<Reply, HandlerError>> {
        (self.handler)(ctx, req)
    }
}

/// The seed's message router: one async handler per [`MessageType`].
///
/// Types without a handler are answered with `UNKNOWN_MESSAGE_TYPE`. Control types
/// (`0x01..=0x08`), `Response`, `QLOCKResponse`, `TLSLSResponse` and `Error` are owned by
/// the runtime and cannot be registered.
///
/// How handlers run: on a stream connection (TCP, WebSocket) a handler's future is first
/// polled on the connection's own task, so a handler that finishes without waiting (an
/// echo, a lookup, a quick check) is answered with no task hand-off at all; one that waits
/// continues in a task of its own. Either way at most `max_inflight_per_connection`
/// handlers run at once per connection, and replies keep their queues and `PRIORITY`.
/// Long CPU-bound work belongs in `tokio::task::spawn_blocking`: done before the first
/// `.await` it would hold up that connection's reads and writes (as it would hold up a
/// runtime worker anyway).
#[derive(Clone, Default)]
pub struct XTMPMessageRouter {
    routes: HashMap<MessageType, Route>,
}

impl std::fmt::Debug for XTMPMessageRouter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut types: Vec<_> = self.routes.keys().copied().collect();
        types.sort();
        f.debug_struct("XTMPMessageRouter")
            .field("types", &types)
            .finish()
    }
}

/// Whether the runtime owns `t` (no handler may be registered for it).
pub fn is_reserved(t: MessageType) -> bool {
    t.is_control()
        || matches!(
            t,
            MessageType::Response
                | MessageType::QLOCKResponse
                | MessageType::TLSLSResponse
                | MessageType::Error
        )
}

impl XTMPMessageRouter {
    /// An empty router.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `handler` for `message_type` with default [`RouteOptions`], replacing any
    /// previous handler.
    ///
    /// # Panics
    /// If `message_type` is reserved (see [`is_reserved`]); use
    /// [`XTMPMessageRouter::try_register`] to get an error instead.
    pub fn register<F, Fut>(&mut self, message_type: MessageType, handler: F) -> &mut Self
    where
        F: Fn(RequestContext, Request) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Reply, HandlerError>> + Send + 'static,
    {
        self.register_with(message_type, RouteOptions::default(), handler)
    }

    /// Like [`XTMPMessageRouter::register`] with explicit options.
    ///
    /// # Panics
    /// If `message_type` is reserved.
    pub fn register_with<F, Fut>(
        &mut self,
        message_type: MessageType,
        options: RouteOptions,
        handler: F,
    ) -> &mut Self
    where
        F: Fn(RequestContext, Request) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Reply, HandlerError>> + Send + 'static,
    {
        if let Err(e) = self.try_register(message_type, options, handler) {
            // Programmer error at setup time, never caused by network input.
            panic!("{e}");
        }
        self
    }

    /// Registers a handler, refusing reserved types.
    ///
    /// # Errors
    /// [`XTMPRuntimeError::ReservedMessageType`].
    pub fn try_register<F, Fut>(
        &mut self,
        message_type: MessageType,
        options: RouteOptions,
        handler: F,
    ) -> Result<(), XTMPRuntimeError>
    where
        F: Fn(RequestContext, Request) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Reply, HandlerError>> + Send + 'static,
    {
        if is_reserved(message_type) {
            return Err(XTMPRuntimeError::ReservedMessageType(message_type));
        }
        let handler: Handler = Arc::new(move |ctx, req| handler(ctx, req).boxed());
        self.routes.insert(message_type, Route { handler, options });
        Ok(())
    }

    /// Registers a typed handler: the payload is decoded from JSON into `Req` (a decode
    /// failure is answered with `BAD_REQUEST`), and the `Resp` is encoded as the
    /// response body.
    ///
    /// # Panics
    /// If `message_type` is reserved.
    pub fn register_json<Req, Resp, F, Fut>(
        &mut self,
        message_type: MessageType,
        handler: F,
    ) -> &mut Self
    where
        Req: DeserializeOwned + Send + 'static,
        Resp: Serialize + Send + 'static,
        F: Fn(RequestContext, Req) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Resp, HandlerError>> + Send + 'static,
    {
        let handler = Arc::new(handler);
        self.register(message_type, move |ctx, req: Request| {
            let handler = handler.clone();
            async move {
                let parsed: Req = serde_json::from_slice(&req.payload)
                    .map_err(|e| HandlerError::bad_request(format!("invalid JSON payload: {e}")))?;
                let resp = handler(ctx, parsed).await?;
                let body = serde_json::to_vec(&resp)
                    .map_err(|e| HandlerError::failed(format!("cannot encode response: {e}")))?;
                Ok(Reply::Response(body))
            }
        })
    }

    /// Removes the handler for `message_type`.
    pub fn unregister(&mut self, message_type: MessageType) -> bool {
        self.routes.remove(&message_type).is_some()
    }

    /// The route for `message_type`.
    pub fn route(&self, message_type: MessageType) -> Option<&Route> {
        self.routes.get(&message_type)
    }

    /// Whether a handler is registered.
    pub fn handles(&self, message_type: MessageType) -> bool {
        self.routes.contains_key(&message_type)
    }

    /// The registered types, in numeric order.
    pub fn message_types(&self) -> Vec<MessageType> {
        let mut v: Vec<_> = self.routes.keys().copied().collect();
        v.sort();
        v
    }
}

// ------------------------------------------------------------------------------------
// Request context and push streams
// ------------------------------------------------------------------------------------

/// Why a push failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PushError {
    /// The session is gone (or shutting down): stop pushing.
    #[error("the session is closed")]
    Closed,
    /// [`PushSink::try_push`] on a full backpressure stream.
    #[error("the stream queue is full")]
    Full,
    /// The session has reached its limit of open streams.
    #[error("too many open streams on this session")]
    TooManyStreams,
    /// Streams are not available here (e.g. a context built outside a connection).
    #[error("streams are not available in this context")]
    Unavailable,
    /// The message exceeds the session's maximum payload.
    #[error("the message exceeds the maximum payload")]
    TooLarge,
    /// The stream is full and has not started yet, and the push came from inside the
    /// request's handler: a stream's messages flow only after the reply to its subscribe
    /// request, so the handler cannot wait for room before returning. Push from a task
    /// the handler spawns (its pushes wait for the start) or use a drop-oldest stream.
    #[error("the stream has not started yet (push from a task spawned by the handler)")]
    NotStarted,
}

/// Whether a push went straight in or displaced an older message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushOutcome {
    /// Queued.
    Queued,
    /// Queued after dropping the oldest queued message (drop-oldest policy).
    DroppedOldest,
}

#[derive(Debug, Default)]
pub(crate) struct StreamInner {
    pub(crate) queue: VecDeque<Vec<u8>>,
}

/// One server-push stream's bounded queue (shared by the [`PushSink`] and the writer).
#[derive(Debug)]
pub(crate) struct StreamQueue {
    pub(crate) stream_id: u64,
    pub(crate) message_type: MessageType,
    pub(crate) priority: bool,
    capacity: usize,
    overflow: Overflow,
    pub(crate) inner: Mutex<StreamInner>,
    /// Set once the reply to the subscribe request has been sealed (or the handler
    /// returned without one): pushes never overtake the subscribe response.
    pub(crate) released: std::sync::atomic::AtomicBool,
    /// Signalled by the writer when it took messages (room for backpressured pushers).
    pub(crate) space: Notify,
    pub(crate) dropped: AtomicU64,
}

impl StreamQueue {
    pub(crate) fn is_released(&self) -> bool {
        self.released.load(Ordering::Acquire)
    }

    pub(crate) fn is_empty(&self) -> bool {
        lock(&self.inner).queue.is_empty()
    }

    /// Moves queued messages to `out` (called by the writer): at least one if any is
    /// queued, then more while fewer than `max_items` are taken and their bodies plus
    /// `overhead` each stay within `max_bytes`. One lock and one wake-up of
    /// backpressured pushers for the whole batch. Returns how many were taken.
    pub(crate) fn pop_batch(
        &self,
        out: &mut Vec<Vec<u8>>,
        max_items: usize,
        max_bytes: usize,
        overhead: usize,
    ) -> usize {
        if !self.is_released() {
            return 0;
        }
        let mut inner = lock(&self.inner);
        let mut taken = 0;
        let mut bytes = 0usize;
        while taken < max_items {
            let Some(front) = inner.queue.front() else {
                break;
            };
            let cost = front.len().saturating_add(overhead);
            if taken > 0 && bytes.saturating_add(cost) > max_bytes {
                break;
            }
            bytes = bytes.saturating_add(cost);
            if let Some(m) = inner.queue.pop_front() {
                out.push(m);
            }
            taken += 1;
        }
        drop(inner);
        if taken > 0 {
            self.space.notify_waiters();
        }
        taken
    }
}

/// The open streams of one connection.
#[derive(Debug, Clone)]
pub(crate) struct StreamRegistry {
    pub(crate) streams: Arc<Mutex<Vec<Arc<StreamQueue>>>>,
    pub(crate) wake: Arc<Notify>,
    pub(crate) closed: CancellationToken,
    pub(crate) max_streams: usize,
    pub(crate) max_body: usize,
    pub(crate) counters: Arc<ServerCounters>,
    pub(crate) session_dropped: Arc<AtomicU64>,
}

impl StreamRegistry {
    /// Lets the streams of request `stream_id` flow (its reply has been sealed).
    pub(crate) fn release(&self, stream_id: u64) {
        let streams = lock(&self.streams);
        let mut any = false;
        for s in streams.iter().filter(|s| s.stream_id == stream_id) {
            s.released.store(true, Ordering::Release);
            // Pushers waiting for the start (see `PushSink::push`).
            s.space.notify_waiters();
            any = true;
        }
        drop(streams);
        if any {
            self.wake.notify_one();
        }
    }

    /// The open streams, after dropping those no sink holds any more and that are empty.
    pub(crate) fn snapshot(&self) -> Vec<Arc<StreamQueue>> {
        let mut streams = lock(&self.streams);
        streams.retain(|s| Arc::strong_count(s) > 1 || !s.is_empty());
        streams.clone()
    }

    fn open(
        self: &Arc<Self>,
        stream_id: u64,
        message_type: MessageType,
        overflow: Overflow,
        capacity: usize,
        priority: bool,
    ) -> Result<PushSink, PushError> {
        if self.closed.is_cancelled() {
            return Err(PushError::Closed);
        }
        let mut streams = lock(&self.streams);
        if let Some(existing) = streams
            .iter()
            .find(|s| s.stream_id == stream_id && s.message_type == message_type)
        {
            return Ok(PushSink {
                queue: existing.clone(),
                registry: self.clone(),
            });
        }
        if streams.len() >= self.max_streams {
            return Err(PushError::TooManyStreams);
        }
        let q = Arc::new(StreamQueue {
            stream_id,
            message_type,
            priority,
            capacity: capacity.max(1),
            overflow,
            inner: Mutex::new(StreamInner::default()),
            released: std::sync::atomic::AtomicBool::new(false),
            space: Notify::new(),
            dropped: AtomicU64::new(0),
        });
        streams.push(q.clone());
        Ok(PushSink {
            queue: q,
            registry: self.clone(),
        })
    }
}

thread_local! {
    /// Set while a request handler's future is being polled (see [`HandlerScope`]).
    static IN_HANDLER: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Marks the polls of a request handler's future: a push from inside a handler into a
/// full stream that has not started yet cannot wait (the stream starts only once that
/// handler has returned) and fails with [`PushError::NotStarted`]; a push from anywhere
/// else (a task the handler spawned) waits for the stream to start instead.
pub(crate) struct HandlerScope<F>(pub(crate) F);

impl<F: Future + Unpin> Future for HandlerScope<F> {
    type Output = F::Output;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<F::Output> {
        struct Restore(bool);
        impl Drop for Restore {
            fn drop(&mut self) {
                IN_HANDLER.with(|h| h.set(self.0));
            }
        }
        let _restore = Restore(IN_HANDLER.with(|h| h.replace(true)));
        std::pin::Pin::new(&mut self.0).poll(cx)
    }
}

/// Sends `STREAMING` messages to one session (server push), through a bounded queue
/// with the route's [`Overflow`] policy. The stream's messages start flowing once the
/// reply to the subscribe request has been sent, so a subscriber always sees the response
/// first; push from a task the handler spawns. Cloning gives another handle on the same stream.
/// The stream ends when the session ends: [`PushSink::push`] then returns
/// [`PushError::Closed`], and [`PushSink::closed`] completes.
#[derive(Debug, Clone)]
pub struct PushSink {
    queue: Arc<StreamQueue>,
    registry: Arc<StreamRegistry>,
}

impl PushSink {
    /// The stream id (the subscribe request's sequence number).
    pub fn stream_id(&self) -> u64 {
        self.queue.stream_id
    }

    /// The message type pushed.
    pub fn message_type(&self) -> MessageType {
        self.queue.message_type
    }

    /// Messages dropped from this stream by the drop-oldest policy.
    pub fn dropped(&self) -> u64 {
        self.queue.dropped.load(Ordering::Relaxed)
    }

    /// Whether the session is gone.
    pub fn is_closed(&self) -> bool {
        self.registry.closed.is_cancelled()
    }

    /// Completes when the session is gone.
    pub async fn closed(&self) {
        self.registry.closed.cancelled().await
    }

    /// Queues `body` without waiting.
    ///
    /// # Errors
    /// [`PushError::Closed`], or [`PushError::Full`] on a full backpressure stream.
    pub fn try_push(&self, body: Vec<u8>) -> Result<PushOutcome, PushError> {
        match self.push_inner(body) {
            Ok(o) => Ok(o),
            Err((_, e)) => Err(e),
        }
    }

    fn push_inner(&self, body: Vec<u8>) -> Result<PushOutcome, (Vec<u8>, PushError)> {
        if self.registry.closed.is_cancelled() {
            return Err((body, PushError::Closed));
        }
        if body.len() > self.registry.max_body {
            return Err((body, PushError::TooLarge));
        }
        let q = &self.queue;
        let mut inner = lock(&q.inner);
        // The writer only sleeps once every queue it serves is empty (it keeps going while
        // a queue it has started on holds messages), so only the first message into an
        // empty queue needs to wake it; a release wakes it separately.
        let was_empty = inner.queue.is_empty();
        let outcome = if inner.queue.len() < q.capacity {
            PushOutcome::Queued
        } else {
            match q.overflow {
                Overflow::Backpressure => return Err((body, PushError::Full)),
                Overflow::DropOldest => {
                    inner.queue.pop_front();
                    q.dropped.fetch_add(1, Ordering::Relaxed);
                    self.registry
                        .session_dropped
                        .fetch_add(1, Ordering::Relaxed);
                    ServerCounters::add(&self.registry.counters.stream_dropped, 1);
                    PushOutcome::DroppedOldest
                }
            }
        };
        inner.queue.push_back(body);
        drop(inner);
        if was_empty {
            self.registry.wake.notify_one();
        }
        Ok(outcome)
    }

    /// Queues `body`, waiting for room on a backpressure stream (never drops); on a
    /// drop-oldest stream it never waits. Called from a task the handler spawned, it also
    /// waits for the stream to start (once the reply to the subscribe request is sent);
    /// called inside the handler itself, a full stream that has not started yet is
    /// [`PushError::NotStarted`].
    ///
    /// # Errors
    /// [`PushError::Closed`] once the session is gone.
    pub async fn push(&self, body: Vec<u8>) -> Result<PushOutcome, PushError> {
        let mut body = body;
        loop {
            let notified = self.queue.space.notified();
            tokio::pin!(notified);
            // Register interest before checking, so a pop between the check and the
            // await is not missed.
            notified.as_mut().enable();
            match self.push_inner(body) {
                Ok(o) => return Ok(o),
                Err((_, PushError::Full))
                    if !self.queue.is_released() && IN_HANDLER.with(|h| h.get()) =>
                {
                    return Err(PushError::NotStarted)
                }
                // Full (or full and not started: it starts once the reply is sent, and the
                // writer then makes room).
                Err((b, PushError::Full)) => body = b,
                Err((_, e)) => return Err(e),
            }
            tokio::select! {
                _ = &mut notified => {}
                _ = self.registry.closed.cancelled() => return Err(PushError::Closed),
            }
        }
    }

    /// Serializes `value` as JSON and pushes it.
    ///
    /// # Errors
    /// As [`PushSink::push`]; a value that cannot be serialized is reported as
    /// [`PushError::Unavailable`].
    pub async fn push_json<T: Serialize>(&self, value: &T) -> Result<PushOutcome, PushError> {
        let body = serde_json::to_vec(value).map_err(|_| PushError::Unavailable)?;
        self.push(body).await
    }
}

/// What a handler knows about the request's session.
#[derive(Clone)]
pub struct RequestContext {
    /// The session id.
    pub session_id: u64,
    /// The peer's address.
    pub peer_address: SocketAddr,
    /// The transport.
    pub connection_type: ConnectionType,
    /// The client's static key fingerprint (`pqIK` sessions).
    pub client_key: Option<[u8; 32]>,
    /// The request's sequence number (the stream id of a subscription).
    pub request_seq: u64,
    /// The request's type.
    pub message_type: MessageType,
    pub(crate) route: RouteOptions,
    /// Shared with the connection (an `Arc`: cloning the context for each request
    /// must not touch the cancellation tokens' locks).
    pub(crate) streams: Option<Arc<StreamRegistry>>,
    pub(crate) shutdown: Arc<CancellationToken>,
    pub(crate) status: Option<Arc<dyn Fn() -> ServerStatus + Send + Sync>>,
}

impl std::fmt::Debug for RequestContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestContext")
            .field("session_id", &format_args!("{:016x}", self.session_id))
            .field("peer_address", &self.peer_address)
            .field("connection_type", &self.connection_type)
            .field("request_seq", &self.request_seq)
            .field("message_type", &self.message_type)
            .finish_non_exhaustive()
    }
}

impl RequestContext {
    /// A context not attached to any connection (for unit-testing handlers): pushes
    /// fail with [`PushError::Unavailable`].
    pub fn detached(message_type: MessageType, peer_address: SocketAddr) -> Self {
        Self {
            session_id: 0,
            peer_address,
            connection_type: ConnectionType::TcpReliable,
            client_key: None,
            request_seq: 0,
            message_type,
            route: RouteOptions::default(),
            streams: None,
            shutdown: Arc::new(CancellationToken::new()),
            status: None,
        }
    }

    /// Opens (or reopens) the push stream of this request: type = the request's type,
    /// stream id = its sequence number, overflow policy and capacity from the route.
    ///
    /// # Errors
    /// [`PushError::Closed`], [`PushError::TooManyStreams`] or [`PushError::Unavailable`].
    pub fn push_sink(&self) -> Result<PushSink, PushError> {
        self.push_sink_with(
            self.message_type,
            self.route.overflow,
            self.route.stream_capacity,
        )
    }

    /// Opens a push stream with an explicit type, policy and capacity (stream id = this
    /// request's sequence number).
    ///
    /// # Errors
    /// As [`RequestContext::push_sink`].
    pub fn push_sink_with(
        &self,
        message_type: MessageType,
        overflow: Overflow,
        capacity: usize,
    ) -> Result<PushSink, PushError> {
        let reg = self.streams.as_ref().ok_or(PushError::Unavailable)?;
        reg.open(self.request_seq, message_type, overflow, capacity, false)
    }

    /// Like [`RequestContext::push_sink_with`], but the stream's messages carry
    /// `PRIORITY` and overtake queued normal messages.
    ///
    /// # Errors
    /// As [`RequestContext::push_sink`].
    pub fn priority_push_sink(
        &self,
        overflow: Overflow,
        capacity: usize,
    ) -> Result<PushSink, PushError> {
        let reg = self.streams.as_ref().ok_or(PushError::Unavailable)?;
        reg.open(
            self.request_seq,
            self.message_type,
            overflow,
            capacity,
            true,
        )
    }

    /// Whether the server is shutting down (long handlers should wrap up).
    pub fn is_shutting_down(&self) -> bool {
        self.shutdown.is_cancelled()
    }

    /// Completes when the server starts shutting down.
    pub async fn shutting_down(&self) {
        self.shutdown.cancelled().await
    }

    /// The server's status, when the context belongs to a server connection.
    pub fn server_status(&self) -> Option<ServerStatus> {
        self.status.as_ref().map(|f| f())
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves plain data behind; keep serving.
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

// ------------------------------------------------------------------------------------
// Built-in router
// ------------------------------------------------------------------------------------

#[derive(serde::Deserialize, Default)]
struct StreamParams {
    count: Option<u64>,
    interval_ms: Option<u64>,
}

const BUILTIN_ECHO: &[MessageType] = &[
    MessageType::WalletRegister,
    MessageType::WalletAuth,
    MessageType::WalletBalance,
    MessageType::WalletTransaction,
    MessageType::BundleSubmit,
    MessageType::BundleStatus,
    MessageType::BundleConfirm,
    MessageType::BundleSync,
    MessageType::RegistryQuery,
    MessageType::RegistryUpdate,
    MessageType::RegistryStamp,
    MessageType::QLOCKRequest,
    MessageType::TLSLSRequest,
];

fn parse_stream_params(
    payload: &[u8],
    default_count: Option<u64>,
) -> Result<(Option<u64>, Duration), HandlerError> {
    let p: StreamParams = if payload.iter().all(|b| b.is_ascii_whitespace()) {
        StreamParams::default()
    } else {
        serde_json::from_slice(payload)
            .map_err(|e| HandlerError::bad_request(format!("invalid JSON payload: {e}")))?
    };
    let interval = Duration::from_millis(p.interval_ms.unwrap_or(1000).clamp(1, 3_600_000));
    Ok((p.count.or(default_count), interval))
}

async fn stream_ticks(
    ctx: RequestContext,
    req: Request,
    default_count: Option<u64>,
    metrics: bool,
) -> Result<Reply, HandlerError> {
    let (count, interval) = parse_stream_params(&req.payload, default_count)?;
    let sink = ctx
        .push_sink()
        .map_err(|e| HandlerError::new(ErrorCode::OVERLOADED, e.to_string()))?;
    let name = req.message_type.to_string();
    let session_hex = format!("{:016x}", ctx.session_id);
    let ctx2 = ctx.clone();
    tokio::spawn(async move {
        let mut index = 0u64;
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while count.is_none_or(|c| index < c) {
            tokio::select! {
                _ = tick.tick() => {}
                _ = sink.closed() => return,
                _ = ctx2.shutting_down() => return,
            }
            let unix_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0);
            let body = if metrics {
                serde_json::json!({ "index": index, "unix_ms": unix_ms, "status": ctx2.server_status() })
            } else {
                serde_json::json!({ "event": "tick", "stream": name, "index": index, "unix_ms": unix_ms, "session": session_hex })
            };
            if sink.push_json(&body).await.is_err() {
                return;
            }
            index += 1;
        }
    });
    let body = serde_json::json!({
        "subscribed": req.message_type.to_string(),
        "stream_id": req.sequence_number,
        "count": count,
        "interval_ms": interval.as_millis() as u64,
    });
    Ok(Reply::Response(body.to_string().into_bytes()))
}

/// The router `xtmp server start` uses when no application is plugged in:
///
/// * Every request type of the seed's families (`Wallet*`, `Bundle*`, `Registry*`,
///   `QLOCKRequest`, `TLSLSRequest`) is **echoed**: the response body is the request payload
///   (`QLOCKRequest` → `QLOCKResponse`, `TLSLSRequest` → `TLSLSResponse`, others → `Response`).
/// * `EventStream` and `LiveUpdates` are **subscriptions** with backpressure: the request
///   payload is optional JSON `{"count": n, "interval_ms": m}` (defaults: 10 events, 1000 ms);
///   the response is `{"subscribed": ..., "stream_id": ..., "count": ..., "interval_ms": ...}`
///   and each push is `{"event":"tick","stream":...,"index":i,"unix_ms":...,"session":...}`.
/// * `MetricsStream` is a subscription with drop-oldest overflow (capacity 16) that pushes
///   `{"index":i,"unix_ms":...,"status":<ServerStatus>}` every `interval_ms` (default 1000)
///   until the session ends (or `count` pushes).
/// * Anything else (e.g. `Unknown`, unassigned codes) gets `UNKNOWN_MESSAGE_TYPE`; reserved
///   types sent by a client get `NOT_PERMITTED`.
pub fn builtin_router() -> XTMPMessageRouter {
    let mut r = XTMPMessageRouter::new();
    for &t in BUILTIN_ECHO {
        r.register(t, |_ctx, req: Request| async move {
            Ok(Reply::Response(req.payload))
        });
    }
    for t in [MessageType::EventStream, MessageType::LiveUpdates] {
        r.register_with(
            t,
            RouteOptions::stream(Overflow::Backpressure, 64),
            |ctx, req| stream_ticks(ctx, req, Some(10), false),
        );
    }
    r.register_with(
        MessageType::MetricsStream,
        RouteOptions::stream(Overflow::DropOldest, 16),
        |ctx, req| stream_ticks(ctx, req, None, true),
    );
    r
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn reserved_types_are_refused() {
        let mut r = XTMPMessageRouter::new();
        for t in [
            MessageType::Heartbeat,
            MessageType::Response,
            MessageType::Error,
            MessageType::Ack,
        ] {
            assert!(r
                .try_register(t, RouteOptions::default(), |_c, _r| async {
                    Ok(Reply::None)
                })
                .is_err());
        }
        assert!(r
            .try_register(
                MessageType::WalletAuth,
                RouteOptions::default(),
                |_c, _r| async { Ok(Reply::None) }
            )
            .is_ok());
        assert_eq!(r.message_types(), vec![MessageType::WalletAuth]);
    }

    #[tokio::test]
    async fn json_helper_and_detached_context() {
        #[derive(serde::Deserialize)]
        struct In {
            a: u32,
        }
        #[derive(serde::Serialize)]
        struct Out {
            b: u32,
        }
        let mut r = XTMPMessageRouter::new();
        r.register_json(MessageType::WalletBalance, |_ctx, i: In| async move {
            Ok(Out { b: i.a + 1 })
        });
        let route = r.route(MessageType::WalletBalance).unwrap().clone();
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let ctx = RequestContext::detached(MessageType::WalletBalance, addr);
        let mk = |p: &[u8]| Request {
            message_type: MessageType::WalletBalance,
            flags: XTMPFlags::empty(),
            sequence_number: 1,
            payload: p.to_vec(),
        };
        let ok = route.call(ctx.clone(), mk(br#"{"a":41}"#)).await.unwrap();
        assert_eq!(ok, Reply::Response(br#"{"b":42}"#.to_vec()));
        let err = route.call(ctx.clone(), mk(b"nope")).await.unwrap_err();
        assert_eq!(err.code, ErrorCode::BAD_REQUEST);
        assert_eq!(ctx.push_sink().unwrap_err(), PushError::Unavailable);
    }
}
