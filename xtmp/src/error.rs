//! Errors of the runtime (server side and configuration) and of the client.

use std::net::SocketAddr;

use xtmp_proto::{ErrorCode, MessageType, XTMPError};

use crate::manager::ConnectionType;

/// Errors of the server runtime and its configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum XTMPRuntimeError {
    // ---- caller's fault ----
    /// An option is invalid; the message names it.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A handler was registered for a message type the runtime owns.
    #[error("message type {0:?} is reserved and cannot have a handler")]
    ReservedMessageType(MessageType),

    // ---- I/O ----
    /// The listener could not be bound.
    #[error("cannot bind {address}: {source}")]
    Bind {
        /// The address asked for.
        address: SocketAddr,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// Another I/O failure.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),

    // ---- protocol ----
    /// The protocol core refused something.
    #[error("protocol error: {0}")]
    Protocol(#[from] XTMPError),
}

/// Errors reported by [`crate::XTMPClient`]. Every request, acknowledged send and
/// subscription either succeeds or ends in one of these: nothing is dropped silently.
///
/// `Clone`, because one connection failure is reported to every waiter.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    // ---- connection establishment ----
    /// TCP connect (or the whole handshake) did not finish within `connect_timeout`.
    #[error("connect to {0} timed out")]
    ConnectTimeout(SocketAddr),
    /// TCP connect failed.
    #[error("cannot connect to {address}: {reason}")]
    Connect {
        /// The server address.
        address: SocketAddr,
        /// The operating system's error text.
        reason: String,
    },
    /// The local side of the handshake failed (wrong server key, malformed answer, ...).
    #[error("handshake failed: {0}")]
    Handshake(XTMPError),
    /// The WebSocket transport could not be set up: name resolution, TCP connect, TLS,
    /// or the HTTP upgrade failed (the server's HTTP status is in the reason).
    #[error("WebSocket {url}: {reason}")]
    WebSocket {
        /// The `ws://` / `wss://` URL.
        url: String,
        /// What failed.
        reason: String,
    },
    /// A transport of the transport order is not available in this build or for this
    /// target.
    #[error("transport {0} is not available")]
    UnsupportedTransport(ConnectionType),
    /// Every step of the transport order failed; each step's error, in order.
    #[error("no transport worked: {}", .0.iter().map(|(t, e)| format!("{t}: {e}")).collect::<Vec<_>>().join("; "))]
    AllTransportsFailed(Vec<(ConnectionType, ClientError)>),
    /// The server refused the connection with a plain `Error` frame before a session
    /// existed (`SERVER_BUSY`, `RATE_LIMITED`, `HANDSHAKE_FAILED`, `UNAUTHORIZED`, ...).
    #[error("server refused the connection: {code:?} ({reason})")]
    Refused {
        /// The server's error code.
        code: ErrorCode,
        /// The server's short reason.
        reason: String,
    },

    // ---- per request ----
    /// The server answered this request with an `Error` message.
    #[error("server error {code:?}: {reason}")]
    Remote {
        /// The server's error code (`UNKNOWN_MESSAGE_TYPE`, `HANDLER_ERROR`, ...).
        code: ErrorCode,
        /// The server's short reason.
        reason: String,
    },
    /// No answer within `request_timeout` (the request may or may not have been processed).
    #[error("request timed out")]
    Timeout,
    /// The connection was lost. With `sent: false` the message never left this process
    /// and can be retried safely; with `sent: true` it was written and its fate is unknown.
    #[error("connection lost (message {})", if *.sent { "sent, outcome unknown" } else { "not sent" })]
    ConnectionLost {
        /// Whether the message had been written to the connection.
        sent: bool,
    },
    /// The server closed the session with `Disconnect`.
    #[error("server disconnected: {code:?} ({reason})")]
    Disconnected {
        /// The code from the `Disconnect` message.
        code: ErrorCode,
        /// Its reason.
        reason: String,
    },
    /// The server sent something this client cannot accept.
    #[error("protocol error: {0}")]
    Protocol(XTMPError),
    /// The message does not fit one datagram of a `UdpFast` session (the wire code
    /// `MESSAGE_TOO_LARGE`): send it over TCP, or raise the datagram budget.
    #[error("message of {len} bytes is too large for a datagram (at most {max} bytes on this UDP session)")]
    MessageTooLarge {
        /// Payload length.
        len: usize,
        /// Largest payload of a `RELIABLE` message on the session.
        max: usize,
    },
    /// A `RELIABLE` message on a datagram path was retransmitted until its deadline
    /// without being acknowledged (the server may or may not have received it).
    #[error("message not acknowledged before its deadline (retransmitted over UDP)")]
    Unacknowledged,
    /// The payload exceeds the session's maximum.
    #[error("payload of {len} bytes exceeds the maximum of {max}")]
    PayloadTooLarge {
        /// Payload length.
        len: usize,
        /// The limit.
        max: u32,
    },
    /// A typed helper could not encode the request or decode the response.
    #[error("JSON error: {0}")]
    Json(String),
    /// The client was closed (explicitly, or after reconnection gave up).
    #[error("client closed")]
    Closed,
    /// Reconnection gave up after the configured number of attempts.
    #[error("reconnection failed after {attempts} attempts: {last}")]
    ReconnectFailed {
        /// Attempts made.
        attempts: u32,
        /// The last attempt's error.
        last: Box<ClientError>,
    },
}

impl ClientError {
    /// The wire error code, for errors the server reported.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Refused { code, .. }
            | ClientError::Remote { code, .. }
            | ClientError::Disconnected { code, .. } => Some(*code),
            ClientError::MessageTooLarge { .. } => Some(ErrorCode::MESSAGE_TOO_LARGE),
            _ => None,
        }
    }
}
