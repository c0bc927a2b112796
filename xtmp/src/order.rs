//! The client's transport order: which transports [`crate::XTMPClient`] tries, in which
//! order, each with its own timeout — for example hybrid, then TCP, then WebSocket, so a
//! client behind a firewall that only lets web traffic through still gets a session.
//!
//! [`crate::ClientOptions::transport_order`] lists [`TransportStep`]s. An empty list means
//! "TCP to the address given to `connect`, within `connect_timeout`" (the behaviour before
//! transports could be chosen). Each step must connect *and* complete the XTMP handshake
//! within its timeout; on failure the next step is tried, except after an explicit refusal
//! by the server (a plain `Error` frame such as `UNAUTHORIZED`, `RATE_LIMITED` or
//! `SERVER_BUSY`: the server was reached, and another path to it would be refused too).
//! Reconnections walk the order from the start again, so a client returns to its
//! preferred transport once that works again. [`crate::XTMPClient::transport`] tells which
//! transport the current session runs on.

use std::net::SocketAddr;
use std::time::Duration;

use crate::error::ClientError;
use crate::manager::ConnectionType;
use crate::ws::WebSocketTarget;

/// Where a step connects.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TransportTarget {
    /// The address passed to [`crate::XTMPClient::connect`].
    ConnectAddress,
    /// Another socket address.
    Address(SocketAddr),
    /// A WebSocket endpoint (`ws://` or `wss://`).
    WebSocket(WebSocketTarget),
}

/// One entry of the transport order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransportStep {
    /// The transport.
    pub connection_type: ConnectionType,
    /// Where it connects.
    pub target: TransportTarget,
    /// Connect plus XTMP handshake must finish within this long (`None`: the client's
    /// `connect_timeout`).
    pub timeout: Option<Duration>,
}

impl TransportStep {
    /// TCP to the address given to `connect`.
    pub fn tcp() -> Self {
        Self {
            connection_type: ConnectionType::TcpReliable,
            target: TransportTarget::ConnectAddress,
            timeout: None,
        }
    }

    /// TCP to `address`.
    pub fn tcp_to(address: SocketAddr) -> Self {
        Self {
            target: TransportTarget::Address(address),
            ..Self::tcp()
        }
    }

    /// `UdpFast` to the server's UDP listener at `address` (`PROTOCOL.md` §9).
    pub fn udp_to(address: SocketAddr) -> Self {
        Self {
            connection_type: ConnectionType::UdpFast,
            target: TransportTarget::Address(address),
            timeout: None,
        }
    }

    /// `TcpUdpHybrid`: TCP to the address given to `connect`, then a UDP path to the
    /// port the server grants (or `ClientOptions::udp_address`).
    pub fn hybrid() -> Self {
        Self {
            connection_type: ConnectionType::TcpUdpHybrid,
            target: TransportTarget::ConnectAddress,
            timeout: None,
        }
    }

    /// WebSocket to `target` (a [`crate::ws::WsUrl`] converts into a target that checks
    /// `wss://` certificates against the system roots).
    pub fn websocket(target: impl Into<WebSocketTarget>) -> Self {
        Self {
            connection_type: ConnectionType::WebSocketFallback,
            target: TransportTarget::WebSocket(target.into()),
            timeout: None,
        }
    }

    /// The same step with its own timeout.
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// The endpoint in words (`127.0.0.1:8080`, `ws://host:8082/xtmp`).
    pub(crate) fn endpoint(&self, connect_address: SocketAddr) -> String {
        match &self.target {
            TransportTarget::ConnectAddress => connect_address.to_string(),
            TransportTarget::Address(a) => a.to_string(),
            TransportTarget::WebSocket(w) => w.url.to_string(),
        }
    }
}

/// The transport a client's current session runs on.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TransportInfo {
    /// The transport.
    pub connection_type: ConnectionType,
    /// Its endpoint (`127.0.0.1:8080`, `ws://host:8082/xtmp`).
    pub endpoint: String,
    /// Steps of the order that failed before this one, with why.
    pub skipped: Vec<SkippedStep>,
}

/// A step of the transport order that failed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SkippedStep {
    /// The transport.
    pub connection_type: ConnectionType,
    /// Its endpoint.
    pub endpoint: String,
    /// The error, in words.
    pub error: String,
}

/// Whether the order goes on to the next step after `e`.
pub(crate) fn falls_through(e: &ClientError) -> bool {
    !matches!(e, ClientError::Refused { .. } | ClientError::Closed)
}

/// Parses a transport name as used on the command line: `tcp`, `ws` (or `websocket`),
/// `udp`, `hybrid`, or a [`ConnectionType`] name (case-insensitive).
///
/// # Errors
/// An unknown name.
pub fn parse_transport_name(s: &str) -> Result<ConnectionType, String> {
    let t = s.trim();
    let all = [
        ConnectionType::TcpReliable,
        ConnectionType::UdpFast,
        ConnectionType::TcpUdpHybrid,
        ConnectionType::WebSocketFallback,
    ];
    if let Some(c) = all.iter().find(|c| c.name().eq_ignore_ascii_case(t)) {
        return Ok(*c);
    }
    match t.to_ascii_lowercase().as_str() {
        "tcp" => Ok(ConnectionType::TcpReliable),
        "udp" => Ok(ConnectionType::UdpFast),
        "hybrid" => Ok(ConnectionType::TcpUdpHybrid),
        "ws" | "wss" | "websocket" => Ok(ConnectionType::WebSocketFallback),
        _ => Err(format!(
            "unknown transport {s:?}; expected tcp, udp, hybrid or ws"
        )),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn names() {
        assert_eq!(
            parse_transport_name("ws"),
            Ok(ConnectionType::WebSocketFallback)
        );
        assert_eq!(parse_transport_name("TCP"), Ok(ConnectionType::TcpReliable));
        assert_eq!(
            parse_transport_name("websocketfallback"),
            Ok(ConnectionType::WebSocketFallback)
        );
        assert_eq!(
            parse_transport_name("hybrid"),
            Ok(ConnectionType::TcpUdpHybrid)
        );
        assert!(parse_transport_name("quic").is_err());
    }

    #[test]
    fn refusals_stop_the_order() {
        assert!(!falls_through(&ClientError::Refused {
            code: xtmp_proto::ErrorCode::UNAUTHORIZED,
            reason: String::new()
        }));
        assert!(falls_through(&ClientError::ConnectTimeout(
            "127.0.0.1:1".parse().unwrap()
        )));
    }
}
