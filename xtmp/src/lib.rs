//! # xtmp — the tokio runtime of XTMP
//!
//! XTMP is a post-quantum message transport. The protocol itself (wire format, hybrid
//! X-Wing handshake, record protection, key rotation, replay protection) lives in the
//! sans-IO crate [`xtmp_proto`]; this crate drives it over real sockets:
//!
//! * [`XTMPServer`] / [`ServerHandle`] — accept loop and per-connection tasks: handshake
//!   with a timeout, a per-IP handshake rate limit and a cookie (`Retry`) under load;
//!   `max_connections` (one more is refused with a plain `Error` `SERVER_BUSY`);
//!   idle timeout, stalled-peer read timeout, heartbeats, key rotation on the core's
//!   schedule, and graceful shutdown (drain in-flight handlers, `Disconnect`).
//! * [`XTMPMessageRouter`] — async handlers per [`MessageType`], typed JSON helpers,
//!   `Ack` for `REQUIRES_ACK`, `Error` replies for unknown types and handler errors,
//!   server-push streams ([`PushSink`]) with a per-type [`Overflow`] policy.
//! * [`XTMPClient`] — `request` / `send` / `subscribe` over one multiplexed connection,
//!   reconnection with backoff and resubscription, explicit errors for anything not
//!   delivered; [`XTMPConnectionPool`] reuses clients per peer.
//! * [`ws`] — the WebSocket transport (`WebSocketFallback`, `ws://` and `wss://`): one
//!   XTMP frame per binary message, enabled on a server with
//!   [`ServerOptions::websocket`] and reached by a client through its transport order
//!   ([`order`], [`ClientOptions::transport_order`], [`XTMPClient::transport`]).
//! * [`udp`] — the datagram transport: `UdpFast` sessions (handshake behind a stateless
//!   cookie, in fragments; coalesced datagrams sent with GSO and read with recvmmsg/GRO;
//!   `RELIABLE` messages retransmitted until acknowledged, delivered once; roaming) and
//!   `TcpUdpHybrid` sessions (a UDP path attached to a TCP session, a per-message-type
//!   [`HybridPolicy`], switching to TCP and back on probe loss). Enabled on a server with
//!   [`ServerOptions::udp_bind_address`]; a client picks it with
//!   [`TransportStep::udp_to`] or [`TransportStep::hybrid`].
//! * [`XTMPConnectionManager`], [`XTMPSession`], [`XTMPKeyManager`] — the seed's
//!   components, holding the live sessions; [`ServerStatus`] and [`SessionMetrics`] are
//!   the serializable snapshots the CLI's admin endpoint serves.
//!
//! ## Wire conventions added by the runtime (`PROTOCOL.md`)
//! A reply to request `N` has type `response_type_for(request_type)` and payload
//! `N (u64 BE) ‖ body`; an error reply is an `Error` whose `request_seq` is `N`; an
//! acknowledgement is `Ack(N)`; a server push has the `STREAMING` flag, the subscribed
//! type and payload `N ‖ body` where `N` is the subscribe request's sequence number.
//! Errors before a session exists are plain frames (encryption `None`, session 0).
//!
//! ## Example: a server and a client on loopback
//!
//! ```
//! use std::sync::Arc;
//! use xtmp::{ClientOptions, Reply, ServerOptions, XTMPClient, XTMPMessageRouter, XTMPServer};
//! use xtmp_proto::MessageType;
//! use xtmp_proto::xtmp_crypto::xwing::XWingSecretKey;
//!
//! # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let key = Arc::new(XWingSecretKey::generate()?);
//! let mut opts = ServerOptions::new(key.clone());
//! opts.bind_address = "127.0.0.1:0".parse()?;
//!
//! let mut router = XTMPMessageRouter::new();
//! router.register(MessageType::WalletBalance, |_ctx, req| async move {
//!     Ok(Reply::Response([b"balance of ".as_slice(), &req.payload].concat()))
//! });
//! let server = XTMPServer::bind(opts, router).await?;
//!
//! let client = XTMPClient::connect(server.local_addr(), ClientOptions::new(key.public_key().clone())).await?;
//! let resp = client.request(MessageType::WalletBalance, b"alice".to_vec()).await?;
//! assert_eq!(resp.body, b"balance of alice");
//!
//! // A type without a handler is answered with an Error, and the session goes on.
//! let err = client.request(MessageType::RegistryQuery, b"x".to_vec()).await.unwrap_err();
//! assert_eq!(err.code(), Some(xtmp_proto::ErrorCode::UNKNOWN_MESSAGE_TYPE));
//!
//! client.close().await;
//! server.shutdown().await;
//! # Ok(())
//! # }
//! ```
#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod client;
pub mod error;
mod join;
pub mod manager;
pub mod metrics;
pub mod order;
pub mod pool;
pub mod rng;
pub mod router;
pub mod server;
pub mod transport;
pub mod udp;
mod udp_server;
pub mod ws;

pub use client::{
    connect, ClientOptions, ClientStats, PushedMessage, ReconnectPolicy, Response, Subscription,
    XTMPClient,
};
pub use error::{ClientError, XTMPRuntimeError};
pub use manager::{
    ConnectionType, SessionCounters, XTMPConnectionManager, XTMPEncryptionEngine, XTMPKeyManager,
    XTMPSession,
};
pub use metrics::{ListenerInfo, ServerStatus, SessionMetrics, UdpStatus, XTMPQualityMetrics};
pub use order::{TransportInfo, TransportStep, TransportTarget};
pub use pool::XTMPConnectionPool;
pub use rng::OsRng;
pub use router::{
    builtin_router, HandlerError, Overflow, PushError, PushOutcome, PushSink, Reply, Request,
    RequestContext, RouteOptions, XTMPMessageRouter,
};
pub use server::{ServerHandle, ServerOptions, XTMPServer};
pub use transport::{parse_plain_error, plain_error_frame, StreamTransport};
pub use udp::{DatagramOptions, DatagramPathMetrics, HybridPolicy};
pub use ws::{WebSocketListenerOptions, WebSocketTarget, WsServerTls, WsTlsTrust, WsUrl};
pub use xtmp_proto::{EncryptionType, ErrorCode, MessageType, XTMPFlags};
