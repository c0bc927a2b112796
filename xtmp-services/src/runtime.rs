//! Wiring into the tokio runtime's router (`xtmp::XTMPMessageRouter`).
//!
//! [`register_all`] registers a handler for every application message type:
//!
//! * Request types (`Wallet*`, `Bundle*`, `Registry*`, `QLOCKRequest`, `TLSLSRequest`) run
//!   [`Services::handle`] with the request context's session id and client key, and answer
//!   with the JSON response (`QLOCKResponse` / `TLSLSResponse` / `Response`, chosen by the
//!   router) or an `Error` with the application code and reason. Requests of at most
//!   [`INLINE_MAX_PAYLOAD`] bytes of the hot types avoid a thread hand-off:
//!   `WalletAuth`, `WalletBalance` and `BundleStatus` (no store write) run on the worker
//!   thread, `WalletTransaction` and `BundleSubmit` run their checks there and await the
//!   store's durable commit ([`Services::handle_async`]). Everything else, and larger
//!   payloads, run on the blocking pool (they may wait for a durable commit).
//! * `LiveUpdates`, `EventStream` and `MetricsStream` are subscriptions: the response is a
//!   [`SubscribeResponse`], then `STREAMING` pushes follow on the subscribe request's
//!   stream id until the session ends. Live updates and events are
//!   [`Notification`]s (a `{"kind":"lagged","missed":n}` push
//!   says the subscriber fell behind and lost `n`); metrics pushes are
//!   `{"index", "unix_ms", "services": MetricsSnapshot, "server": ServerStatus}`.
//! * Session-bound state is released when the session ends: the first time a session
//!   authenticates a wallet or takes a lock, a watcher waits for the session to close
//!   (through a push stream that never carries messages) and then calls
//!   [`Services::session_closed`]. A background task calls [`Services::tick`] every second.
//!
//! The wall clock is read here, in the runtime layer, and passed to the domain logic.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::broadcast::error::RecvError;
use xtmp::{
    HandlerError, Overflow, Reply, Request, RequestContext, RouteOptions, XTMPMessageRouter,
};
use xtmp_proto::MessageType;

use crate::error::{codes, AppError};
use crate::events::{KindFilter, LiveFilter, Notification};
use crate::services::{lock, parse_or_default, Caller, Services, SessionId};
use crate::types::{
    EventStreamRequest, LiveUpdatesRequest, MetricsStreamRequest, SubscribeResponse,
};

/// The request-response types [`register_all`] answers.
pub const REQUEST_TYPES: &[MessageType] = &[
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

/// Queue capacity of a `LiveUpdates` / `EventStream` push stream.
pub const EVENT_STREAM_CAPACITY: usize = 256;
/// Queue capacity of a `MetricsStream` push stream (drop-oldest).
pub const METRICS_STREAM_CAPACITY: usize = 16;

/// The current time in milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn handler_error(e: &AppError) -> HandlerError {
    HandlerError::new(e.code(), e.reason())
}

fn caller_of(ctx: &RequestContext) -> Caller {
    Caller {
        session: SessionId(ctx.session_id),
        client_key: ctx.client_key,
    }
}

fn to_body<T: Serialize>(v: &T) -> Result<Vec<u8>, HandlerError> {
    serde_json::to_vec(v)
        .map_err(|_| HandlerError::new(codes::INTERNAL, "cannot encode the response"))
}

/// State shared by the handlers of one [`register_all`].
struct Glue {
    services: Arc<Services>,
    watched: Mutex<HashSet<u64>>,
    ticker: AtomicBool,
}

impl Glue {
    /// Starts the once-a-second `tick` task (on the first request, inside the runtime).
    fn ensure_ticker(self: &Arc<Self>, ctx: &RequestContext) {
        if self.ticker.swap(true, Ordering::AcqRel) {
            return;
        }
        let weak: Weak<Services> = Arc::downgrade(&self.services);
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(1));
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = every.tick() => {}
                    _ = ctx.shutting_down() => return,
                }
                let Some(svc) = weak.upgrade() else { return };
                let now = now_ms();
                // tick() takes in-memory locks only; cheap enough for the async thread.
                svc.tick(now);
            }
        });
    }

    /// Makes sure `session_closed` runs when this request's session ends.
    fn watch_session(self: &Arc<Self>, ctx: &RequestContext) {
        let id = ctx.session_id;
        if !lock(&self.watched).insert(id) {
            return;
        }
        // A push stream that never carries a message: its `closed()` completes when the
        // session ends.
        let sink = match ctx.push_sink_with(ctx.message_type, Overflow::DropOldest, 1) {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(session = id, error = %e, "cannot watch the session; its state expires instead");
                lock(&self.watched).remove(&id);
                return;
            }
        };
        let glue = self.clone();
        tokio::spawn(async move {
            sink.closed().await;
            lock(&glue.watched).remove(&id);
            let svc = glue.services.clone();
            let _ =
                tokio::task::spawn_blocking(move || svc.session_closed(SessionId(id), now_ms()))
                    .await;
        });
    }
}

/// Largest request payload handled on the runtime's worker thread (below): bounds the
/// JSON parsing and the signature verifications done there (a one-transfer bundle or a
/// wallet-auth answer is about 6.8 KB, a 2-transfer bundle 13.6 KB).
pub const INLINE_MAX_PAYLOAD: usize = 16 * 1024;

/// Where a request runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Placement {
    /// On the worker thread: no store write, at most a couple of signature verifications
    /// (~50 µs each), no waiting.
    Inline,
    /// Checks on the worker thread, then the durable commit is awaited (not blocked on).
    AwaitCommit,
    /// On the blocking pool: the operation may wait for a commit, or is large.
    Blocking,
}

impl Placement {
    fn of(t: MessageType, payload_len: usize) -> Self {
        if payload_len > INLINE_MAX_PAYLOAD {
            return Placement::Blocking;
        }
        match t {
            MessageType::WalletAuth | MessageType::WalletBalance | MessageType::BundleStatus => {
                Placement::Inline
            }
            MessageType::WalletTransaction | MessageType::BundleSubmit => Placement::AwaitCommit,
            _ => Placement::Blocking,
        }
    }
}

async fn handle_request(
    glue: Arc<Glue>,
    ctx: RequestContext,
    req: Request,
) -> Result<Reply, HandlerError> {
    glue.ensure_ticker(&ctx);
    let caller = caller_of(&ctx);
    let svc = glue.services.clone();
    let t = req.message_type;
    let now = now_ms();
    let out = match Placement::of(t, req.payload.len()) {
        Placement::Inline => svc.handle(&caller, t, &req.payload, now),
        Placement::AwaitCommit => svc.handle_async(&caller, t, &req.payload, now).await,
        Placement::Blocking => {
            tokio::task::spawn_blocking(move || svc.handle(&caller, t, &req.payload, now))
                .await
                .map_err(|_| HandlerError::new(codes::INTERNAL, "internal error"))?
        }
    };
    match out {
        Ok(body) => {
            // Session-bound state was (maybe) created: free it when the session ends.
            if (t == MessageType::WalletAuth
                && glue.services.session_wallet(caller.session).is_some())
                || t == MessageType::QLOCKRequest
            {
                glue.watch_session(&ctx);
            }
            Ok(Reply::Response(body))
        }
        Err(e) => Err(handler_error(&e)),
    }
}

#[derive(Serialize)]
struct Lagged {
    kind: &'static str,
    missed: u64,
}

/// Forwards bus notifications passing `filter` to the request's push stream until the
/// session ends.
fn forward_events(
    glue: &Arc<Glue>,
    ctx: &RequestContext,
    req: &Request,
    filter: impl Fn(&Notification) -> bool + Send + 'static,
) -> Result<Reply, HandlerError> {
    let sink = ctx
        .push_sink()
        .map_err(|e| HandlerError::new(codes::LIMIT_REACHED, e.to_string()))?;
    // Subscribe before answering, so nothing published after the answer is missed.
    let mut rx = glue.services.subscribe();
    tokio::spawn(async move {
        loop {
            let next = tokio::select! {
                n = rx.recv() => n,
                _ = sink.closed() => return,
            };
            let pushed = match next {
                Ok(n) if filter(&n) => sink.push_json(&n).await,
                Ok(_) => continue,
                Err(RecvError::Lagged(missed)) => {
                    sink.push_json(&Lagged {
                        kind: "lagged",
                        missed,
                    })
                    .await
                }
                Err(RecvError::Closed) => return,
            };
            if pushed.is_err() {
                return;
            }
        }
    });
    let resp = SubscribeResponse {
        subscribed: req.message_type.to_string(),
        stream_id: req.sequence_number,
    };
    Ok(Reply::Response(to_body(&resp)?))
}

#[derive(Serialize)]
struct MetricsPush {
    index: u64,
    unix_ms: u64,
    services: crate::services::MetricsSnapshot,
    #[serde(skip_serializing_if = "Option::is_none")]
    server: Option<xtmp::ServerStatus>,
}

fn metrics_stream(
    glue: &Arc<Glue>,
    ctx: &RequestContext,
    req: &Request,
) -> Result<Reply, HandlerError> {
    let params: MetricsStreamRequest =
        parse_or_default(&req.payload).map_err(|e| handler_error(&e))?;
    let interval = Duration::from_millis(params.interval_ms.unwrap_or(1000).clamp(100, 3_600_000));
    let sink = ctx
        .push_sink()
        .map_err(|e| HandlerError::new(codes::LIMIT_REACHED, e.to_string()))?;
    let svc = glue.services.clone();
    let ctx2 = ctx.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(interval);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut index = 0u64;
        loop {
            tokio::select! {
                _ = every.tick() => {}
                _ = sink.closed() => return,
                _ = ctx2.shutting_down() => return,
            }
            let s = svc.clone();
            let Ok(Ok(services)) = tokio::task::spawn_blocking(move || s.metrics()).await else {
                continue;
            };
            let push = MetricsPush {
                index,
                unix_ms: now_ms(),
                services,
                server: ctx2.server_status(),
            };
            if sink.push_json(&push).await.is_err() {
                return;
            }
            index = index.saturating_add(1);
        }
    });
    let resp = SubscribeResponse {
        subscribed: req.message_type.to_string(),
        stream_id: req.sequence_number,
    };
    Ok(Reply::Response(to_body(&resp)?))
}

/// Registers handlers for every application message type on `router` (see the module
/// docs), replacing any registered before.
pub fn register_all(router: &mut XTMPMessageRouter, services: Arc<Services>) {
    let glue = Arc::new(Glue {
        services,
        watched: Mutex::new(HashSet::new()),
        ticker: AtomicBool::new(false),
    });
    for &t in REQUEST_TYPES {
        let g = glue.clone();
        router.register(t, move |ctx, req| handle_request(g.clone(), ctx, req));
    }
    let g = glue.clone();
    router.register_with(
        MessageType::LiveUpdates,
        RouteOptions::stream(Overflow::Backpressure, EVENT_STREAM_CAPACITY),
        move |ctx, req| {
            let g = g.clone();
            async move {
                g.ensure_ticker(&ctx);
                let params: LiveUpdatesRequest =
                    crate::parse(&req.payload).map_err(|e| handler_error(&e))?;
                let filter = LiveFilter::from_request(&params).map_err(|e| handler_error(&e))?;
                forward_events(&g, &ctx, &req, move |n| filter.matches(&n.event))
            }
        },
    );
    let g = glue.clone();
    router.register_with(
        MessageType::EventStream,
        RouteOptions::stream(Overflow::Backpressure, EVENT_STREAM_CAPACITY),
        move |ctx, req| {
            let g = g.clone();
            async move {
                g.ensure_ticker(&ctx);
                let params: EventStreamRequest =
                    parse_or_default(&req.payload).map_err(|e| handler_error(&e))?;
                let filter = KindFilter::from_request(&params).map_err(|e| handler_error(&e))?;
                forward_events(&g, &ctx, &req, move |n| filter.matches(&n.event))
            }
        },
    );
    let g = glue;
    router.register_with(
        MessageType::MetricsStream,
        RouteOptions::stream(Overflow::DropOldest, METRICS_STREAM_CAPACITY),
        move |ctx, req| {
            let g = g.clone();
            async move {
                g.ensure_ticker(&ctx);
                metrics_stream(&g, &ctx, &req)
            }
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placement_keeps_big_or_blocking_work_off_the_workers() {
        use MessageType as T;
        let small = 7_000;
        for t in [T::WalletAuth, T::WalletBalance, T::BundleStatus] {
            assert_eq!(Placement::of(t, small), Placement::Inline, "{t}");
        }
        for t in [T::WalletTransaction, T::BundleSubmit] {
            assert_eq!(Placement::of(t, small), Placement::AwaitCommit, "{t}");
        }
        for &t in REQUEST_TYPES {
            assert_eq!(
                Placement::of(t, INLINE_MAX_PAYLOAD + 1),
                Placement::Blocking,
                "{t}"
            );
        }
        for t in [
            T::WalletRegister,
            T::BundleConfirm,
            T::BundleSync,
            T::RegistryQuery,
            T::RegistryUpdate,
            T::RegistryStamp,
            T::QLOCKRequest,
            T::TLSLSRequest,
        ] {
            assert_eq!(Placement::of(t, 10), Placement::Blocking, "{t}");
        }
    }
}
