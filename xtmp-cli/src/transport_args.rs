//! How the client commands reach a server: `--server ADDR|URL`, `--transport LIST`,
//! `--ws-url`, `--step-timeout`, and the `wss://` trust options. They become the client's
//! transport order ([`xtmp::order`]).

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use anyhow::{bail, Context, Result};
use xtmp::{ClientOptions, ConnectionType, TransportStep, WebSocketTarget, WsTlsTrust, WsUrl};

use crate::cli::ClientConn;

/// `--server`: a socket address (TCP and the datagram transports) or a `ws://` / `wss://`
/// URL (WebSocket).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerArg {
    /// `127.0.0.1:8080`.
    Address(SocketAddr),
    /// `ws://127.0.0.1:8082/xtmp`.
    WebSocket(WsUrl),
}

impl FromStr for ServerArg {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let lower = t.get(..6).unwrap_or(t).to_ascii_lowercase();
        if lower.starts_with("ws://") || lower.starts_with("wss://") {
            return t
                .parse::<WsUrl>()
                .map(ServerArg::WebSocket)
                .map_err(|e| e.to_string());
        }
        t.parse::<SocketAddr>()
            .map(ServerArg::Address)
            .map_err(|_| {
                format!("{s:?} is neither an address (127.0.0.1:8080) nor a ws:// or wss:// URL")
            })
    }
}

impl fmt::Display for ServerArg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServerArg::Address(a) => write!(f, "{a}"),
            ServerArg::WebSocket(u) => write!(f, "{u}"),
        }
    }
}

/// Parses one `--transport` entry (`tcp`, `ws`, `udp`, `hybrid`).
///
/// # Errors
/// An unknown name.
pub fn parse_transport_arg(s: &str) -> Result<ConnectionType, String> {
    xtmp::order::parse_transport_name(s)
}

/// The WebSocket endpoint of the command: `--ws-url`, else a URL given as `--server`.
fn ws_url(conn: &ClientConn) -> Option<WsUrl> {
    match (&conn.ws_url, &conn.server) {
        (Some(u), _) => Some(u.clone()),
        (None, ServerArg::WebSocket(u)) => Some(u.clone()),
        (None, ServerArg::Address(_)) => None,
    }
}

/// Fills `opts.transport_order` from the command line and returns the address to pass to
/// `XTMPClient::connect`.
///
/// # Errors
/// A transport without the endpoint it needs, an unreadable `--ws-ca-file`, or a host
/// that does not resolve.
pub async fn apply(conn: &ClientConn, opts: &mut ClientOptions) -> Result<SocketAddr> {
    let transports = if conn.transport.is_empty() {
        vec![match conn.server {
            ServerArg::Address(_) => ConnectionType::TcpReliable,
            ServerArg::WebSocket(_) => ConnectionType::WebSocketFallback,
        }]
    } else {
        conn.transport.clone()
    };
    let trust = if let Some(p) = &conn.ws_ca_file {
        WsTlsTrust::from_pem_file(p).with_context(|| format!("--ws-ca-file {}", p.display()))?
    } else if conn.ws_dangerous_accept_any_certificate {
        WsTlsTrust::DangerousAcceptAnyCertificate
    } else {
        WsTlsTrust::SystemRoots
    };
    let step_timeout = conn.step_timeout.unwrap_or(conn.timeout);
    let mut order = Vec::new();
    for t in transports {
        let step = match t {
            ConnectionType::WebSocketFallback => {
                let Some(url) = ws_url(conn) else {
                    bail!("--transport ws needs a ws:// or wss:// URL: give it as --server or --ws-url");
                };
                TransportStep::websocket(WebSocketTarget {
                    url,
                    tls_trust: trust.clone(),
                })
            }
            other => {
                if let ServerArg::WebSocket(_) = conn.server {
                    bail!(
                        "--transport {} needs --server ADDR (an address, not a URL); give the WebSocket endpoint with --ws-url",
                        transport_short_name(other)
                    );
                }
                match (other, conn.udp_server) {
                    (ConnectionType::UdpFast, Some(u)) => TransportStep::udp_to(u),
                    _ => TransportStep {
                        connection_type: other,
                        ..TransportStep::tcp()
                    },
                }
            }
        };
        order.push(step.with_timeout(step_timeout));
    }
    opts.transport_order = order;
    opts.udp_address = conn.udp_server;
    match &conn.server {
        ServerArg::Address(a) => Ok(*a),
        ServerArg::WebSocket(u) => tokio::net::lookup_host((u.host(), u.port()))
            .await
            .with_context(|| format!("cannot resolve {}", u.host()))?
            .next()
            .with_context(|| format!("{} resolves to no address", u.host())),
    }
}

/// The command-line name of a transport.
pub fn transport_short_name(t: ConnectionType) -> &'static str {
    match t {
        ConnectionType::TcpReliable => "tcp",
        ConnectionType::UdpFast => "udp",
        ConnectionType::TcpUdpHybrid => "hybrid",
        ConnectionType::WebSocketFallback => "ws",
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn server_args() {
        assert_eq!(
            "127.0.0.1:8080".parse::<ServerArg>(),
            Ok(ServerArg::Address("127.0.0.1:8080".parse().unwrap()))
        );
        let ws: ServerArg = "WS://127.0.0.1:8082/xtmp".parse().unwrap();
        assert_eq!(ws.to_string(), "ws://127.0.0.1:8082/xtmp");
        assert!(matches!(
            "wss://example.com/x".parse::<ServerArg>(),
            Ok(ServerArg::WebSocket(_))
        ));
        assert!("localhost".parse::<ServerArg>().is_err());
        assert!("ws://".parse::<ServerArg>().is_err());
        assert!("http://x/".parse::<ServerArg>().is_err());
    }

    /// The `[xtmp_server]` WebSocket keys: defaults, relative TLS paths, the listener
    /// options built from them, and a round trip through `config defaults`.
    #[test]
    fn websocket_config_keys() {
        use crate::config::XtmpConfig;
        use std::path::Path;
        let (d, _) = XtmpConfig::from_toml("", None, Path::new("/etc/xtmp")).unwrap();
        assert_eq!(d.xtmp_server.ws_bind_address, None);
        assert_eq!(d.xtmp_server.ws_path, "/xtmp");
        assert!(crate::server::websocket_options(&d).unwrap().is_none());
        let (c, _) = XtmpConfig::from_toml(
            "[xtmp_server]\nws_bind_address = \"0.0.0.0:443\"\nws_path = \"/v1/x\"\nws_tls_cert_file = \"tls/cert.pem\"\nws_tls_key_file = \"/k.pem\"\n",
            None,
            Path::new("/etc/xtmp"),
        )
        .unwrap();
        let s = &c.xtmp_server;
        assert_eq!(s.ws_bind_address, Some("0.0.0.0:443".parse().unwrap()));
        assert_eq!(s.ws_path, "/v1/x");
        assert_eq!(
            s.ws_tls_cert_file.as_deref(),
            Some(Path::new("/etc/xtmp/tls/cert.pem"))
        );
        assert_eq!(s.ws_tls_key_file.as_deref(), Some(Path::new("/k.pem")));
        // The files do not exist: starting would fail, naming the keys.
        let e = crate::server::websocket_options(&c).unwrap_err();
        assert!(format!("{e:#}").contains("ws_tls_cert_file"), "{e:#}");
        let (plain, _) = XtmpConfig::from_toml(
            "[xtmp_server]\nws_bind_address = \"127.0.0.1:8082\"\n",
            None,
            Path::new(""),
        )
        .unwrap();
        let w = crate::server::websocket_options(&plain).unwrap().unwrap();
        assert_eq!(w.bind_address.to_string(), "127.0.0.1:8082");
        assert_eq!(w.path, "/xtmp");
        assert!(w.tls.is_none());
        // The printed effective configuration parses back to the same.
        let (again, _) = XtmpConfig::from_toml(&c.to_toml(), None, Path::new("/")).unwrap();
        assert_eq!(again.xtmp_server.ws_bind_address, s.ws_bind_address);
        assert_eq!(again.xtmp_server.ws_tls_cert_file, s.ws_tls_cert_file);
    }

    #[test]
    fn client_flags_parse() {
        use clap::Parser;
        let c = crate::cli::Cli::try_parse_from([
            "xtmp",
            "client",
            "ping",
            "--server",
            "127.0.0.1:8080",
            "--server-key",
            "k.pub",
            "--transport",
            "tcp,ws",
            "--ws-url",
            "wss://example.com/xtmp",
            "--step-timeout",
            "2s",
        ]);
        assert!(c.is_ok(), "{:?}", c.err());
        assert!(crate::cli::Cli::try_parse_from([
            "xtmp",
            "client",
            "ping",
            "--server",
            "ws://h/x",
            "--server-key",
            "k",
            "--transport",
            "quic",
        ])
        .is_err());
        assert!(crate::cli::Cli::try_parse_from([
            "xtmp",
            "client",
            "ping",
            "--server",
            "ws://h/x",
            "--server-key",
            "k",
            "--ws-ca-file",
            "ca.pem",
            "--ws-dangerous-accept-any-certificate",
        ])
        .is_err());
    }
}
