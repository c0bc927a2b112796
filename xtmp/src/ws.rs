//! The WebSocket transport (`ConnectionType::WebSocketFallback`): XTMP over RFC 6455, so a
//! session can cross proxies and firewalls that only let web traffic through (`wss://` on
//! port 443 looks like any HTTPS WebSocket).
//!
//! Mapping (normative text in `docs/PROTOCOL.md` §9.2):
//!
//! * the HTTP upgrade goes to a configured path (default `/xtmp`) and negotiates the
//!   subprotocol [`SUBPROTOCOL`] (`xtmp.v1`) through `Sec-WebSocket-Protocol`;
//! * **one XTMP frame per binary WebSocket message**, in both directions: a receiver
//!   checks that the 96-byte header's `payload_length` accounts for exactly the message;
//! * text messages are refused (close code 1003), a binary message that is not exactly one
//!   frame ends the connection with 1002, a message larger than `96 + max_payload` with 1009.
//!
//! Both sides adapt the message stream into an ordered byte stream ([`WsStream`]: an
//! `AsyncRead + AsyncWrite`), so the whole TCP connection logic of the runtime — handshake,
//! limits, router, timers — runs unchanged on top of it
//! ([`crate::ServerHandle::serve_stream`], and the client's transport order).
//!
//! The server side ([`WebSocketListenerOptions`], enabled through
//! [`crate::ServerOptions::websocket`]) reads and checks the upgrade request itself (size
//! limit, method, path, `Upgrade` header, subprotocol, `max_connections`) and answers
//! failures with a plain HTTP status (400, 404, 405, 426, 431, 503) before handing the
//! connection to tokio-tungstenite. The TLS handshake and the upgrade together must finish
//! within the server's `handshake_timeout`, and at most `max_pending_upgrades` run at once;
//! after the upgrade the connection counts against `max_connections` and the per-IP
//! handshake rate limit exactly like a TCP connection.

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::{Arc, OnceLock};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use futures_core::Stream;
use futures_util::Sink;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::rustls;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderValue, Request, Response};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;
use tracing::{debug, info, warn};
use xtmp_proto::HEADER_LEN;

use crate::error::{ClientError, XTMPRuntimeError};
use crate::manager::ConnectionType;
use crate::metrics::{ListenerInfo, ServerCounters};
use crate::server::ServerHandle;

/// The certificate and key types of [`WsServerTls`] and [`WsTlsTrust`].
pub use rustls_pki_types;

/// The WebSocket subprotocol name of XTMP version 1 (`Sec-WebSocket-Protocol`).
pub const SUBPROTOCOL: &str = "xtmp.v1";
/// Default request path of the WebSocket endpoint.
pub const DEFAULT_PATH: &str = "/xtmp";
/// Default limit of the HTTP upgrade request head (request line and headers).
pub const DEFAULT_MAX_UPGRADE_HEAD: usize = 8 * 1024;
/// Default number of connections that may be in TLS handshake or HTTP upgrade at once.
pub const DEFAULT_MAX_PENDING_UPGRADES: usize = 256;

/// Close code for a binary message that is not exactly one XTMP frame (RFC 6455 1002,
/// protocol error).
pub const CLOSE_NOT_ONE_FRAME: u16 = 1002;
/// Close code for a text message (RFC 6455 1003, unsupported data).
pub const CLOSE_TEXT_MESSAGE: u16 = 1003;
/// Close code for a message larger than `96 + max_payload` (RFC 6455 1009, message too big).
pub const CLOSE_TOO_BIG: u16 = 1009;

/// Socket read buffer of tungstenite per connection (its default of 128 KiB is allocated
/// eagerly; 10 000 connections would hold 1.3 GB).
const READ_BUFFER: usize = 32 * 1024;
/// Frames are collected up to this many bytes before a socket write (we flush per batch).
const WRITE_BUFFER: usize = 64 * 1024;
/// How long an HTTP error answer may take to write.
const HTTP_ERROR_WRITE: Duration = Duration::from_secs(1);

// ------------------------------------------------------------------------------------
// URLs
// ------------------------------------------------------------------------------------

/// A `ws://` or `wss://` URL: `ws[s]://host[:port][/path][?query]`. The host is a DNS name,
/// an IPv4 address or a bracketed IPv6 address; the port defaults to 80 / 443 and the path
/// to `/`. User info and fragments are refused.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct WsUrl {
    tls: bool,
    host: String,
    port: u16,
    /// Path and query, starting with `/`.
    path: String,
}

/// Why a WebSocket URL was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid WebSocket URL {url:?}: {reason}")]
pub struct WsUrlError {
    url: String,
    reason: &'static str,
}

impl WsUrl {
    /// Whether the URL is `wss://` (TLS).
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// The host (IPv6 without brackets).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port (explicit, or 80 / 443).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Path and query (starts with `/`).
    pub fn path(&self) -> &str {
        &self.path
    }

    fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl std::fmt::Display for WsUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.tls { "wss" } else { "ws" };
        write!(f, "{scheme}://{}{}", self.authority(), self.path)
    }
}

impl FromStr for WsUrl {
    type Err = WsUrlError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |reason| WsUrlError {
            url: s.chars().take(200).collect(),
            reason,
        };
        if s.len() > 2048 {
            return Err(bad("longer than 2048 bytes"));
        }
        if s.bytes().any(|b| b <= b' ' || b == 0x7f || b >= 0x80) {
            return Err(bad("contains whitespace, control or non-ASCII characters"));
        }
        let (tls, rest) = if let Some(r) = strip_prefix_ci(s, "wss://") {
            (true, r)
        } else if let Some(r) = strip_prefix_ci(s, "ws://") {
            (false, r)
        } else {
            return Err(bad("the scheme must be ws:// or wss://"));
        };
        if rest.contains('#') {
            return Err(bad("fragments are not allowed"));
        }
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let path = if path.starts_with('?') {
            format!("/{path}")
        } else {
            path.to_string()
        };
        if authority.contains('@') {
            return Err(bad("user information is not allowed"));
        }
        let default_port = if tls { 443 } else { 80 };
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let Some((h, after)) = v6.split_once(']') else {
                return Err(bad("unterminated IPv6 address"));
            };
            if h.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(bad("invalid IPv6 address"));
            }
            let port = match after {
                "" => default_port,
                p => match p.strip_prefix(':').and_then(|p| p.parse::<u16>().ok()) {
                    Some(p) => p,
                    None => return Err(bad("invalid port")),
                },
            };
            (h.to_string(), port)
        } else {
            let (h, port) = match authority.rsplit_once(':') {
                Some((h, p)) => match p.parse::<u16>() {
                    Ok(p) => (h, p),
                    Err(_) => return Err(bad("invalid port")),
                },
                None => (authority, default_port),
            };
            if h.contains(':') {
                return Err(bad("IPv6 addresses must be in brackets"));
            }
            (h.to_ascii_lowercase(), port)
        };
        if host.is_empty() {
            return Err(bad("missing host"));
        }
        if port == 0 {
            return Err(bad("port 0"));
        }
        Ok(Self {
            tls,
            host,
            port,
            path,
        })
    }
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

// ------------------------------------------------------------------------------------
// Server options
// ------------------------------------------------------------------------------------

/// TLS for the WebSocket listener (`wss://`): a certificate chain and its private key.
#[derive(Clone)]
pub struct WsServerTls {
    config: Arc<rustls::ServerConfig>,
}

impl std::fmt::Debug for WsServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsServerTls").finish_non_exhaustive()
    }
}

impl WsServerTls {
    /// From PEM files: `cert_file` holds the certificate chain (leaf first), `key_file` the
    /// private key (PKCS#8, PKCS#1 or SEC1).
    ///
    /// # Errors
    /// [`XTMPRuntimeError::Config`] naming the file and the problem.
    pub fn from_pem_files(cert_file: &Path, key_file: &Path) -> Result<Self, XTMPRuntimeError> {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_file)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|e| {
                XTMPRuntimeError::Config(format!(
                    "WebSocket TLS certificate file {}: {e}",
                    cert_file.display()
                ))
            })?;
        if certs.is_empty() {
            return Err(XTMPRuntimeError::Config(format!(
                "WebSocket TLS certificate file {}: no CERTIFICATE block",
                cert_file.display()
            )));
        }
        let key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| {
            XTMPRuntimeError::Config(format!(
                "WebSocket TLS key file {}: {e}",
                key_file.display()
            ))
        })?;
        Self::from_der(certs, key)
    }

    /// From DER: the certificate chain (leaf first) and the private key.
    ///
    /// # Errors
    /// [`XTMPRuntimeError::Config`] when rustls refuses the pair (e.g. the key does not
    /// match the certificate).
    pub fn from_der(
        cert_chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Self, XTMPRuntimeError> {
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| XTMPRuntimeError::Config(format!("WebSocket TLS: {e}")))?
            .with_no_client_auth()
            .with_single_cert(cert_chain, key)
            .map_err(|e| XTMPRuntimeError::Config(format!("WebSocket TLS certificate: {e}")))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            config: Arc::new(config),
        })
    }

    /// From a complete rustls server configuration.
    pub fn from_rustls_config(config: Arc<rustls::ServerConfig>) -> Self {
        Self { config }
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The WebSocket listener of a server (see [`crate::ServerOptions::websocket`]).
#[derive(Debug, Clone)]
pub struct WebSocketListenerOptions {
    /// Listen address (port 0 picks a free port; [`crate::ServerHandle::websocket_addr`]
    /// tells which).
    pub bind_address: SocketAddr,
    /// The upgrade request's path (default `/xtmp`; the query string is ignored).
    pub path: String,
    /// `Some` serves `wss://` (TLS) instead of `ws://`.
    pub tls: Option<WsServerTls>,
    /// Largest upgrade request head in bytes (default 8 KiB; larger heads get 431).
    pub max_upgrade_head: usize,
    /// Connections in TLS handshake or HTTP upgrade at once (default 256); more are
    /// closed at once and counted as refused.
    pub max_pending_upgrades: usize,
}

impl WebSocketListenerOptions {
    /// A plain `ws://` listener on `bind_address` at [`DEFAULT_PATH`].
    pub fn new(bind_address: SocketAddr) -> Self {
        Self {
            bind_address,
            path: DEFAULT_PATH.to_string(),
            tls: None,
            max_upgrade_head: DEFAULT_MAX_UPGRADE_HEAD,
            max_pending_upgrades: DEFAULT_MAX_PENDING_UPGRADES,
        }
    }

    /// Checks the options.
    ///
    /// # Errors
    /// [`XTMPRuntimeError::Config`] naming the offending option.
    pub fn validate(&self) -> Result<(), XTMPRuntimeError> {
        let bad = |m: String| Err(XTMPRuntimeError::Config(m));
        if let Err(m) = validate_path(&self.path) {
            return bad(format!("websocket path {:?}: {m}", self.path));
        }
        if !(1024..=1024 * 1024).contains(&self.max_upgrade_head) {
            return bad("websocket max_upgrade_head must be between 1 KiB and 1 MiB".into());
        }
        if self.max_pending_upgrades == 0 {
            return bad("websocket max_pending_upgrades must be at least 1".into());
        }
        Ok(())
    }
}

/// Checks a WebSocket endpoint path: starts with `/`, at most 1024 bytes, and only the
/// characters RFC 3986 allows in a path (letters, digits, `-._~!$&'()*+,;=:@/%`; so no
/// spaces, quotes, query or fragment).
///
/// # Errors
/// What is wrong, in words.
pub fn validate_path(path: &str) -> Result<(), &'static str> {
    if !path.starts_with('/') {
        return Err("must start with /");
    }
    if path.len() > 1024 {
        return Err("longer than 1024 bytes");
    }
    let allowed = |b: u8| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/%".contains(&b);
    if !path.bytes().all(allowed) {
        return Err(
            "may only hold letters, digits and -._~!$&'()*+,;=:@/% (no spaces, quotes, ? or #)",
        );
    }
    Ok(())
}

// ------------------------------------------------------------------------------------
// Client TLS trust
// ------------------------------------------------------------------------------------

/// How a client checks the certificate of a `wss://` server.
///
/// XTMP authenticates the server itself (the client pins the server's static X-Wing key,
/// and the handshake fails against any other key), so TLS here hides the traffic as web
/// traffic rather than being the authentication; still, by default the certificate is
/// checked like a browser would.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum WsTlsTrust {
    /// The operating system's root certificates (default).
    #[default]
    SystemRoots,
    /// Only these certificates (DER) as trust anchors: a private CA, or a self-signed
    /// server certificate itself.
    Certificates(Vec<CertificateDer<'static>>),
    /// Accept any certificate (the TLS handshake signature is still checked). Safe for
    /// the XTMP session — the pinned server key still authenticates the server — but an
    /// interceptor can read the WebSocket framing and the XTMP headers.
    DangerousAcceptAnyCertificate,
}

impl WsTlsTrust {
    /// Trust anchors from a PEM file (every `CERTIFICATE` block).
    ///
    /// # Errors
    /// The file cannot be read, or holds no certificate.
    pub fn from_pem_file(path: &Path) -> io::Result<Self> {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
        if certs.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "no CERTIFICATE block in the file",
            ));
        }
        Ok(Self::Certificates(certs))
    }
}

fn system_roots() -> Result<Arc<rustls::RootCertStore>, String> {
    static ROOTS: OnceLock<Result<Arc<rustls::RootCertStore>, String>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            let mut roots = rustls::RootCertStore::empty();
            let (added, _ignored) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                let why = found
                    .errors
                    .first()
                    .map_or_else(String::new, |e| format!(": {e}"));
                return Err(format!("no system root certificates found{why}"));
            }
            Ok(Arc::new(roots))
        })
        .clone()
}

fn client_tls_config(trust: &WsTlsTrust) -> Result<Arc<rustls::ClientConfig>, String> {
    let provider = provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let mut config = match trust {
        WsTlsTrust::SystemRoots => builder
            .with_root_certificates(system_roots()?)
            .with_no_client_auth(),
        WsTlsTrust::Certificates(certs) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in certs {
                roots
                    .add(c.clone())
                    .map_err(|e| format!("trusted certificate: {e}"))?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        WsTlsTrust::DangerousAcceptAnyCertificate => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
            .with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Accepts any certificate but still checks the handshake signatures with it.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

// ------------------------------------------------------------------------------------
// The byte-stream adapter
// ------------------------------------------------------------------------------------

/// Any byte stream a WebSocket can run on (TCP, TLS over TCP, an in-memory pipe).
pub trait RawStream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> RawStream for T {}

/// A boxed [`RawStream`].
pub type BoxedRawStream = Box<dyn RawStream>;

fn ws_config(max_frame: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_write_buffer_size(WRITE_BUFFER + max_frame + 1024)
        .max_message_size(Some(max_frame))
        .max_frame_size(Some(max_frame))
}

/// Whether `msg` is exactly one XTMP frame by its header's length field (the header
/// itself is validated by the deframer afterwards).
fn check_one_frame(msg: &[u8]) -> Result<(), &'static str> {
    let Some(len) = msg.get(24..28) else {
        return Err("binary message shorter than an XTMP header");
    };
    let payload = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
    if HEADER_LEN.checked_add(payload) != Some(msg.len()) {
        return Err("a binary message must carry exactly one XTMP frame");
    }
    Ok(())
}

/// An established WebSocket as an ordered byte stream of XTMP frames.
///
/// Reading yields the bytes of each binary message in turn, after checking that the
/// message is exactly one frame; writing cuts the written bytes at frame boundaries (from
/// each header's `payload_length`) and sends every frame as one binary message. Writes
/// are buffered until [`AsyncWriteExt::flush`]. Shutting down sends a close frame
/// (1000, or the code of the violation that ended the stream).
pub struct WsStream<S> {
    ws: WebSocketStream<S>,
    max_frame: usize,
    /// Unread rest of the current message.
    rmsg: Bytes,
    read_done: bool,
    /// Bytes of the frame being written.
    wpending: BytesMut,
    /// Its total length, once its header is complete.
    wframe_len: Option<usize>,
    /// A complete frame waiting for the sink.
    wready: Option<Bytes>,
    close_sent: bool,
}

impl<S> std::fmt::Debug for WsStream<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsStream")
            .field("max_frame", &self.max_frame)
            .field("read_done", &self.read_done)
            .field("close_sent", &self.close_sent)
            .finish_non_exhaustive()
    }
}

fn ws_io_error(e: WsError) -> io::Error {
    match e {
        WsError::Io(e) => e,
        WsError::ConnectionClosed | WsError::AlreadyClosed => io::ErrorKind::BrokenPipe.into(),
        other => io::Error::other(other.to_string()),
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> WsStream<S> {
    /// Wraps an established WebSocket; `max_frame` is the largest frame (message) accepted
    /// or sent: 96 + the maximum payload.
    pub fn new(ws: WebSocketStream<S>, max_frame: usize) -> Self {
        Self {
            ws,
            max_frame,
            rmsg: Bytes::new(),
            read_done: false,
            wpending: BytesMut::new(),
            wframe_len: None,
            wready: None,
            close_sent: false,
        }
    }

    /// Queues a close frame (best effort: whatever cannot be written now goes out with the
    /// next flush or shutdown) and ends reading with an error.
    fn fail(&mut self, cx: &mut Context<'_>, code: u16, reason: &'static str) -> io::Error {
        debug!(code, reason, "closing the WebSocket");
        self.read_done = true;
        if !self.close_sent {
            self.close_sent = true;
            let frame = CloseFrame {
                code: CloseCode::from(code),
                reason: reason.into(),
            };
            let _ = Pin::new(&mut self.ws).start_send(Message::Close(Some(frame)));
            let _ = Pin::new(&mut self.ws).poll_flush(cx);
        }
        io::Error::new(io::ErrorKind::InvalidData, reason)
    }

    fn poll_send_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.wready.is_some() {
            ready!(Pin::new(&mut self.ws).poll_ready(cx)).map_err(ws_io_error)?;
            if let Some(frame) = self.wready.take() {
                Pin::new(&mut self.ws)
                    .start_send(Message::Binary(frame))
                    .map_err(ws_io_error)?;
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if !this.rmsg.is_empty() {
                let n = this.rmsg.len().min(buf.remaining());
                buf.put_slice(&this.rmsg[..n]);
                this.rmsg.advance(n);
                return Poll::Ready(Ok(()));
            }
            if this.read_done {
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut this.ws).poll_next(cx)) {
                None => this.read_done = true,
                Some(Ok(Message::Binary(b))) => match check_one_frame(&b) {
                    Ok(()) => this.rmsg = b,
                    Err(reason) => {
                        return Poll::Ready(Err(this.fail(cx, CLOSE_NOT_ONE_FRAME, reason)))
                    }
                },
                Some(Ok(Message::Text(_))) => {
                    return Poll::Ready(Err(this.fail(
                        cx,
                        CLOSE_TEXT_MESSAGE,
                        "XTMP travels in binary messages only",
                    )))
                }
                // The peer's close: tungstenite answers it; this is the end of the stream.
                Some(Ok(Message::Close(_))) => {
                    this.close_sent = true;
                    this.read_done = true;
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Err(WsError::Capacity(_))) => {
                    return Poll::Ready(Err(this.fail(
                        cx,
                        CLOSE_TOO_BIG,
                        "message larger than the XTMP frame limit",
                    )))
                }
                Some(Err(WsError::ConnectionClosed | WsError::AlreadyClosed)) => {
                    this.read_done = true;
                }
                Some(Err(WsError::Io(e))) => {
                    this.read_done = true;
                    return Poll::Ready(Err(e));
                }
                Some(Err(e)) => {
                    // Protocol violations (bad masking, reserved bits, invalid UTF-8, ...):
                    // tungstenite has ended the WebSocket already.
                    debug!(error = %e, "WebSocket protocol error");
                    this.read_done = true;
                    this.close_sent = true;
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        e.to_string(),
                    )));
                }
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.close_sent {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        ready!(this.poll_send_ready(cx))?;
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        // Take bytes up to the end of the current header, or of the current frame.
        let want = match this.wframe_len {
            None => HEADER_LEN - this.wpending.len(),
            Some(total) => total - this.wpending.len(),
        };
        let n = want.min(buf.len());
        this.wpending.extend_from_slice(&buf[..n]);
        if this.wframe_len.is_none() && this.wpending.len() == HEADER_LEN {
            let l = &this.wpending[24..28];
            let payload = u32::from_be_bytes([l[0], l[1], l[2], l[3]]) as usize;
            let total = HEADER_LEN.saturating_add(payload);
            if total > this.max_frame {
                this.wpending.clear();
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "frame larger than the WebSocket message limit",
                )));
            }
            this.wpending.reserve(payload);
            this.wframe_len = Some(total);
        }
        if this.wframe_len == Some(this.wpending.len()) {
            this.wframe_len = None;
            this.wready = Some(this.wpending.split().freeze());
            // Hand it to the sink now if it has room; otherwise the next write or flush does.
            if let Poll::Ready(Err(e)) = this.poll_send_ready(cx) {
                return Poll::Ready(Err(e));
            }
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        ready!(this.poll_send_ready(cx))?;
        Pin::new(&mut this.ws).poll_flush(cx).map_err(ws_io_error)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if !this.close_sent {
            ready!(this.poll_send_ready(cx))?;
            this.close_sent = true;
            let frame = CloseFrame {
                code: CloseCode::Normal,
                reason: "".into(),
            };
            let _ = Pin::new(&mut this.ws).start_send(Message::Close(Some(frame)));
        }
        match ready!(Pin::new(&mut this.ws).poll_close(cx)) {
            Ok(()) | Err(WsError::ConnectionClosed | WsError::AlreadyClosed) => Poll::Ready(Ok(())),
            Err(e) => Poll::Ready(Err(ws_io_error(e))),
        }
    }
}

/// Replays bytes already read (the upgrade request head) before the rest of the stream.
pub struct Prefixed<S> {
    prefix: Bytes,
    inner: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

// ------------------------------------------------------------------------------------
// Server: listener, upgrade
// ------------------------------------------------------------------------------------

/// A bound WebSocket listener, not yet accepting.
pub(crate) struct BoundListener {
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    opts: WebSocketListenerOptions,
    local_addr: SocketAddr,
}

impl BoundListener {
    pub(crate) async fn bind(opts: &WebSocketListenerOptions) -> Result<Self, XTMPRuntimeError> {
        opts.validate()?;
        let listener = crate::transport::listen_tcp(opts.bind_address).map_err(|source| {
            XTMPRuntimeError::Bind {
                address: opts.bind_address,
                source,
            }
        })?;
        let local_addr = listener.local_addr()?;
        Ok(Self {
            listener,
            tls: opts
                .tls
                .as_ref()
                .map(|t| TlsAcceptor::from(t.config.clone())),
            opts: opts.clone(),
            local_addr,
        })
    }

    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// `websocket` / `websocket-tls` with the URL clients use.
    pub(crate) fn info(&self) -> ListenerInfo {
        let scheme = if self.tls.is_some() { "wss" } else { "ws" };
        ListenerInfo {
            kind: if self.tls.is_some() {
                "websocket-tls".into()
            } else {
                "websocket".into()
            },
            address: format!("{scheme}://{}{}", self.local_addr, self.opts.path),
        }
    }
}

struct UpgradeCfg {
    path: String,
    max_head: usize,
    max_frame: usize,
}

/// Accepts connections until shutdown; each upgrade runs in its own tracked task.
pub(crate) async fn accept_loop(handle: ServerHandle, bound: BoundListener) {
    let shared = handle.shared.clone();
    let pending = Arc::new(Semaphore::new(bound.opts.max_pending_upgrades));
    let cfg = Arc::new(UpgradeCfg {
        path: bound.opts.path.clone(),
        max_head: bound.opts.max_upgrade_head,
        max_frame: HEADER_LEN.saturating_add(shared.opts.max_payload as usize),
    });
    info!(url = %bound.info().address, "XTMP WebSocket listener ready");
    loop {
        let accepted = tokio::select! {
            r = bound.listener.accept() => r,
            _ = shared.shutdown.cancelled() => break,
        };
        match accepted {
            Ok((tcp, peer)) => {
                let _ = tcp.set_nodelay(true);
                let Ok(permit) = pending.clone().try_acquire_owned() else {
                    ServerCounters::add(&shared.counters.connections_refused, 1);
                    debug!(%peer, "WebSocket connection refused: too many upgrades in progress");
                    continue;
                };
                let h = handle.clone();
                let tls = bound.tls.clone();
                let cfg = cfg.clone();
                shared.tracker.spawn(async move {
                    let _permit = permit;
                    upgrade(h, tcp, peer, tls, cfg).await;
                });
            }
            Err(e) => {
                warn!(error = %e, "WebSocket accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    debug!("WebSocket accept loop stopped");
}

async fn upgrade(
    handle: ServerHandle,
    tcp: TcpStream,
    peer: SocketAddr,
    tls: Option<TlsAcceptor>,
    cfg: Arc<UpgradeCfg>,
) {
    let shared = handle.shared.clone();
    let work = async {
        let io: BoxedRawStream = match tls {
            Some(acceptor) => match acceptor.accept(tcp).await {
                Ok(s) => Box::new(s),
                Err(e) => {
                    debug!(%peer, error = %e, "WebSocket TLS handshake failed");
                    return None;
                }
            },
            None => Box::new(tcp),
        };
        server_upgrade(&handle, io, peer, &cfg).await
    };
    let ws = tokio::select! {
        r = tokio::time::timeout(shared.opts.handshake_timeout, work) => match r {
            Ok(Some(ws)) => ws,
            Ok(None) => return,
            Err(_) => {
                debug!(%peer, "WebSocket upgrade timed out");
                return;
            }
        },
        _ = shared.shutdown.cancelled() => return,
    };
    handle.serve_stream(
        WsStream::new(ws, cfg.max_frame),
        peer,
        ConnectionType::WebSocketFallback,
    );
}

/// An HTTP answer to a refused upgrade.
fn http_error(status: u16, reason: &str, body: &str, extra_headers: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n{extra_headers}\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// The checks of the upgrade request the server makes itself.
#[derive(Debug, PartialEq, Eq)]
enum HeadCheck {
    /// Go on; `true` if the client offered the XTMP subprotocol.
    Upgrade(bool),
    Refuse(u16, &'static str, &'static str, &'static str),
}

fn check_head(head: &[u8], path: &str) -> HeadCheck {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Err(httparse::Error::TooManyHeaders) => {
            return HeadCheck::Refuse(
                431,
                "Request Header Fields Too Large",
                "too many header fields\n",
                "",
            )
        }
        _ => return HeadCheck::Refuse(400, "Bad Request", "malformed HTTP request\n", ""),
    }
    if req.method != Some("GET") {
        return HeadCheck::Refuse(
            405,
            "Method Not Allowed",
            "only GET upgrades to the XTMP WebSocket\n",
            "Allow: GET\r\n",
        );
    }
    let req_path = req.path.unwrap_or("");
    let req_path = req_path.split_once('?').map_or(req_path, |(p, _)| p);
    if req_path != path {
        return HeadCheck::Refuse(
            404,
            "Not Found",
            "no XTMP WebSocket endpoint at this path\n",
            "",
        );
    }
    let has_token = |name: &str, token: &str| {
        req.headers.iter().any(|h| {
            h.name.eq_ignore_ascii_case(name)
                && std::str::from_utf8(h.value)
                    .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    if !has_token("upgrade", "websocket") {
        return HeadCheck::Refuse(
            426,
            "Upgrade Required",
            "this is an XTMP WebSocket endpoint (subprotocol xtmp.v1): connect with a WebSocket client\n",
            "Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n",
        );
    }
    let protocols_offered = req
        .headers
        .iter()
        .any(|h| h.name.eq_ignore_ascii_case("sec-websocket-protocol"));
    let ours = req.headers.iter().any(|h| {
        h.name.eq_ignore_ascii_case("sec-websocket-protocol")
            && std::str::from_utf8(h.value)
                .is_ok_and(|v| v.split(',').any(|t| t.trim() == SUBPROTOCOL))
    });
    if protocols_offered && !ours {
        return HeadCheck::Refuse(
            400,
            "Bad Request",
            "unsupported WebSocket subprotocol: this endpoint speaks xtmp.v1\n",
            "",
        );
    }
    HeadCheck::Upgrade(ours)
}

/// Answers with an HTTP error, then reads and discards what the client still sends (up
/// to a bound) so that closing does not reset the connection before the answer is read.
async fn refuse_http(io: &mut BoxedRawStream, status: u16, reason: &str, body: &str, extra: &str) {
    let _ = tokio::time::timeout(HTTP_ERROR_WRITE, async {
        let _ = io.write_all(&http_error(status, reason, body, extra)).await;
        let _ = io.shutdown().await;
        let mut scratch = [0u8; 4096];
        let mut total = 0usize;
        while total < 64 * 1024 {
            match io.read(&mut scratch).await {
                Ok(n) if n > 0 => total += n,
                _ => break,
            }
        }
    })
    .await;
}

/// Reads the request head (bounded), checks it, and completes the upgrade.
async fn server_upgrade(
    handle: &ServerHandle,
    mut io: BoxedRawStream,
    peer: SocketAddr,
    cfg: &UpgradeCfg,
) -> Option<WebSocketStream<Prefixed<BoxedRawStream>>> {
    let shared = &handle.shared;
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let room = cfg.max_head - head.len();
        if room == 0 {
            debug!(%peer, "WebSocket upgrade request head too large");
            refuse_http(
                &mut io,
                431,
                "Request Header Fields Too Large",
                "upgrade request head too large\n",
                "",
            )
            .await;
            return None;
        }
        let want = room.min(chunk.len());
        let n = match io.read(&mut chunk[..want]).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => n,
        };
        let from = head.len().saturating_sub(3);
        head.extend_from_slice(&chunk[..n]);
        if head[from..].windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    let offered = match check_head(&head, &cfg.path) {
        HeadCheck::Upgrade(offered) => offered,
        HeadCheck::Refuse(status, reason, body, extra) => {
            debug!(%peer, status, "WebSocket upgrade refused");
            refuse_http(&mut io, status, reason, body, extra).await;
            return None;
        }
    };
    let busy = ServerCounters::get(&shared.counters.connections_active)
        >= shared.opts.max_connections as u64;
    if busy || shared.shutdown.is_cancelled() {
        ServerCounters::add(&shared.counters.connections_refused, 1);
        refuse_http(
            &mut io,
            503,
            "Service Unavailable",
            if busy {
                "server is at max_connections\n"
            } else {
                "server is shutting down\n"
            },
            "Retry-After: 1\r\n",
        )
        .await;
        return None;
    }
    let stream = Prefixed {
        prefix: Bytes::from(head),
        inner: io,
    };
    // The error type is tungstenite's (an HTTP response); it is never used here.
    #[allow(clippy::result_large_err)]
    let callback = move |_req: &Request<()>, mut resp: Response<()>| {
        if offered {
            resp.headers_mut().insert(
                "Sec-WebSocket-Protocol",
                HeaderValue::from_static(SUBPROTOCOL),
            );
        }
        Ok(resp)
    };
    match tokio_tungstenite::accept_hdr_async_with_config(
        stream,
        callback,
        Some(ws_config(cfg.max_frame)),
    )
    .await
    {
        Ok(ws) => Some(ws),
        Err(e) => {
            debug!(%peer, error = %e, "WebSocket upgrade failed");
            None
        }
    }
}

impl ServerHandle {
    /// The bound address of the WebSocket listener, if the server has one.
    pub fn websocket_addr(&self) -> Option<SocketAddr> {
        self.shared.websocket_addr
    }

    /// The URL clients use for the WebSocket listener (`ws://` or `wss://`, with the
    /// bound address and the path), if the server has one.
    pub fn websocket_url(&self) -> Option<String> {
        self.shared
            .listeners
            .iter()
            .find(|l| l.kind.starts_with("websocket"))
            .map(|l| l.address.clone())
    }
}

// ------------------------------------------------------------------------------------
// Client
// ------------------------------------------------------------------------------------

/// Where and how a client reaches a WebSocket endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebSocketTarget {
    /// The endpoint.
    pub url: WsUrl,
    /// How a `wss://` server certificate is checked.
    pub tls_trust: WsTlsTrust,
}

impl From<WsUrl> for WebSocketTarget {
    fn from(url: WsUrl) -> Self {
        Self {
            url,
            tls_trust: WsTlsTrust::default(),
        }
    }
}

async fn connect_tcp(addr: SocketAddr, local: Option<SocketAddr>) -> io::Result<TcpStream> {
    match local {
        None => TcpStream::connect(addr).await,
        Some(local) => {
            let sock = if local.is_ipv4() {
                TcpSocket::new_v4()?
            } else {
                TcpSocket::new_v6()?
            };
            sock.bind(local)?;
            sock.connect(addr).await
        }
    }
}

fn describe_client_error(e: &WsError) -> String {
    match e {
        WsError::Http(resp) => {
            let body = resp
                .body()
                .as_deref()
                .map(|b| {
                    String::from_utf8_lossy(&b[..b.len().min(200)])
                        .trim()
                        .to_string()
                })
                .unwrap_or_default();
            if body.is_empty() {
                format!("the server answered HTTP {}", resp.status())
            } else {
                format!("the server answered HTTP {}: {body}", resp.status())
            }
        }
        other => other.to_string(),
    }
}

/// Connects, runs TLS for `wss://`, and upgrades with the `xtmp.v1` subprotocol.
/// Returns the stream and the server's socket address.
pub(crate) async fn connect(
    target: &WebSocketTarget,
    local_address: Option<SocketAddr>,
    max_payload: u32,
) -> Result<(WsStream<BoxedRawStream>, SocketAddr), ClientError> {
    let url = &target.url;
    let fail = |reason: String| ClientError::WebSocket {
        url: url.to_string(),
        reason,
    };
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((url.host.as_str(), url.port))
        .await
        .map_err(|e| fail(format!("cannot resolve {}: {e}", url.host)))?
        .collect();
    let mut last_err = None;
    let mut tcp = None;
    for a in addrs {
        match connect_tcp(a, local_address).await {
            Ok(s) => {
                tcp = Some((s, a));
                break;
            }
            Err(e) => last_err = Some(format!("cannot connect to {a}: {e}")),
        }
    }
    let Some((tcp, peer)) = tcp else {
        return Err(fail(
            last_err.unwrap_or_else(|| format!("{} resolved to no address", url.host)),
        ));
    };
    let _ = tcp.set_nodelay(true);
    let io: BoxedRawStream = if url.tls {
        let config = client_tls_config(&target.tls_trust).map_err(|e| fail(format!("TLS: {e}")))?;
        let name = ServerName::try_from(url.host.clone())
            .map_err(|e| fail(format!("TLS server name: {e}")))?;
        let tls = TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|e| fail(format!("TLS handshake: {e}")))?;
        Box::new(tls)
    } else {
        Box::new(tcp)
    };
    let mut request = url
        .to_string()
        .into_client_request()
        .map_err(|e| fail(e.to_string()))?;
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static(SUBPROTOCOL),
    );
    let max_frame = HEADER_LEN.saturating_add(max_payload as usize);
    let (ws, _response) =
        tokio_tungstenite::client_async_with_config(request, io, Some(ws_config(max_frame)))
            .await
            .map_err(|e| fail(describe_client_error(&e)))?;
    // tungstenite has checked that the server selected the one subprotocol we offered.
    Ok((WsStream::new(ws, max_frame), peer))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tokio_tungstenite::tungstenite::protocol::Role;

    #[test]
    fn urls() {
        let u: WsUrl = "ws://127.0.0.1:8082/xtmp".parse().unwrap();
        assert_eq!(
            (u.is_tls(), u.host(), u.port(), u.path()),
            (false, "127.0.0.1", 8082, "/xtmp")
        );
        assert_eq!(u.to_string(), "ws://127.0.0.1:8082/xtmp");
        let u: WsUrl = "WSS://Example.COM".parse().unwrap();
        assert_eq!(u.to_string(), "wss://example.com:443/");
        let u: WsUrl = "wss://[::1]:9/a/b?x=1".parse().unwrap();
        assert_eq!((u.host(), u.port(), u.path()), ("::1", 9, "/a/b?x=1"));
        assert_eq!(u.to_string(), "wss://[::1]:9/a/b?x=1");
        let u: WsUrl = "ws://h?q".parse().unwrap();
        assert_eq!(u.path(), "/?q");
        for bad in [
            "http://x/",
            "ws://",
            "ws://:80/",
            "ws://u@h/",
            "ws://h:0/",
            "ws://h:99999/",
            "ws://h/#f",
            "ws://::1/",
            "ws://[::1/",
            "ws://[zz]:1/",
            "ws://h /",
            "ws://hé/",
            "w",
        ] {
            assert!(bad.parse::<WsUrl>().is_err(), "{bad}");
        }
    }

    #[test]
    fn paths() {
        assert!(validate_path("/xtmp").is_ok());
        assert!(validate_path("/v1/x-tmp_%20~").is_ok());
        for bad in [
            "xtmp", "/a b", "/a?b", "/a#b", "/é", "", "/\"q", "/a\\b", "/<x>",
        ] {
            assert!(validate_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn one_frame_per_message() {
        let f = crate::plain_error_frame(xtmp_proto::ErrorCode::SERVER_BUSY, "busy");
        assert!(check_one_frame(&f).is_ok());
        assert!(check_one_frame(&f[..95]).is_err());
        assert!(check_one_frame(&f[..f.len() - 1]).is_err());
        let mut two = f.clone();
        two.extend_from_slice(&f);
        assert!(check_one_frame(&two).is_err());
        assert!(check_one_frame(&[]).is_err());
        let mut huge = f.clone();
        huge[24..28].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(check_one_frame(&huge).is_err());
    }

    #[test]
    fn upgrade_heads() {
        let ok = b"GET /xtmp?x=1 HTTP/1.1\r\nHost: a\r\nUpgrade: WebSocket\r\nConnection: Upgrade\r\nSec-WebSocket-Protocol: chat, xtmp.v1\r\n\r\n";
        assert_eq!(check_head(ok, "/xtmp"), HeadCheck::Upgrade(true));
        let no_proto = b"GET /xtmp HTTP/1.1\r\nUpgrade: websocket\r\n\r\n";
        assert_eq!(check_head(no_proto, "/xtmp"), HeadCheck::Upgrade(false));
        let code = |h: &[u8]| match check_head(h, "/xtmp") {
            HeadCheck::Refuse(c, ..) => c,
            HeadCheck::Upgrade(_) => 101,
        };
        assert_eq!(
            code(b"GET /other HTTP/1.1\r\nUpgrade: websocket\r\n\r\n"),
            404
        );
        assert_eq!(
            code(b"POST /xtmp HTTP/1.1\r\nUpgrade: websocket\r\n\r\n"),
            405
        );
        assert_eq!(code(b"GET /xtmp HTTP/1.1\r\nHost: a\r\n\r\n"), 426);
        assert_eq!(
            code(
                b"GET /xtmp HTTP/1.1\r\nUpgrade: websocket\r\nSec-WebSocket-Protocol: chat\r\n\r\n"
            ),
            400
        );
        assert_eq!(code(b"\x16\x03\x01garbage\r\n\r\n"), 400);
        let mut many = b"GET /xtmp HTTP/1.1\r\n".to_vec();
        for i in 0..100 {
            many.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(code(&many), 431);
    }

    /// The adapter over an in-memory pipe: frames written in arbitrary chunks arrive as one
    /// message each; violations end the stream with the documented close codes.
    #[tokio::test]
    async fn adapter_maps_frames_to_messages() {
        use futures_util::{SinkExt, StreamExt};
        let f = crate::plain_error_frame(xtmp_proto::ErrorCode::SERVER_BUSY, "busy");
        let (a, b) = tokio::io::duplex(1 << 16);
        let max = HEADER_LEN + 4096;
        let server = WebSocketStream::from_raw_socket(a, Role::Server, Some(ws_config(max))).await;
        let mut raw_client =
            WebSocketStream::from_raw_socket(b, Role::Client, Some(ws_config(max))).await;
        let mut s = WsStream::new(server, max);

        // Writes: two frames in 7-byte chunks, then a flush -> two binary messages.
        let mut two = f.clone();
        two.extend_from_slice(&f);
        for c in two.chunks(7) {
            s.write_all(c).await.unwrap();
        }
        s.flush().await.unwrap();
        for _ in 0..2 {
            match raw_client.next().await.unwrap().unwrap() {
                Message::Binary(m) => assert_eq!(&m[..], &f[..]),
                other => panic!("{other:?}"),
            }
        }
        // Reads: a message is delivered as bytes.
        raw_client
            .send(Message::Binary(f.clone().into()))
            .await
            .unwrap();
        let mut got = vec![0u8; f.len()];
        s.read_exact(&mut got).await.unwrap();
        assert_eq!(got, f);
        // Pings are answered and skipped.
        raw_client
            .send(Message::Ping(Bytes::from_static(b"p")))
            .await
            .unwrap();
        raw_client
            .send(Message::Binary(f.clone().into()))
            .await
            .unwrap();
        s.read_exact(&mut got).await.unwrap();
        assert_eq!(got, f);
        // Two frames in one message: refused with 1002.
        raw_client
            .send(Message::Binary(two.clone().into()))
            .await
            .unwrap();
        let mut buf = [0u8; 16];
        assert!(s.read(&mut buf).await.is_err());
        let close = loop {
            match raw_client.next().await.unwrap().unwrap() {
                Message::Close(c) => break c.unwrap(),
                Message::Pong(_) => {}
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(u16::from(close.code), CLOSE_NOT_ONE_FRAME);
    }

    #[tokio::test]
    async fn adapter_refuses_text_and_oversize() {
        use futures_util::{SinkExt, StreamExt};
        let max = HEADER_LEN + 4096;
        for (msg, code) in [
            (Message::text("hello"), CLOSE_TEXT_MESSAGE),
            (Message::Binary(vec![0u8; max + 1].into()), CLOSE_TOO_BIG),
        ] {
            let (a, b) = tokio::io::duplex(1 << 16);
            let server =
                WebSocketStream::from_raw_socket(a, Role::Server, Some(ws_config(max))).await;
            let mut raw_client =
                WebSocketStream::from_raw_socket(b, Role::Client, Some(WebSocketConfig::default()))
                    .await;
            let mut s = WsStream::new(server, max);
            raw_client.send(msg).await.unwrap();
            let mut buf = [0u8; 16];
            assert!(s.read(&mut buf).await.is_err());
            match raw_client.next().await.unwrap().unwrap() {
                Message::Close(Some(c)) => assert_eq!(u16::from(c.code), code),
                other => panic!("{other:?}"),
            }
            // A write after the close fails instead of hanging.
            assert!(s.write_all(&[0u8; 4]).await.is_err());
        }
    }

    #[tokio::test]
    async fn adapter_refuses_oversize_writes_and_closes_normally() {
        use futures_util::StreamExt;
        let max = HEADER_LEN + 100;
        let (a, b) = tokio::io::duplex(1 << 16);
        let server = WebSocketStream::from_raw_socket(a, Role::Server, Some(ws_config(max))).await;
        let mut raw_client =
            WebSocketStream::from_raw_socket(b, Role::Client, Some(ws_config(1 << 20))).await;
        let mut s = WsStream::new(server, max);
        let mut f = crate::plain_error_frame(xtmp_proto::ErrorCode::SERVER_BUSY, "busy");
        f[24..28].copy_from_slice(&200u32.to_be_bytes());
        assert!(s.write_all(&f[..HEADER_LEN]).await.is_err());
        s.shutdown().await.unwrap();
        match raw_client.next().await.unwrap().unwrap() {
            Message::Close(Some(c)) => assert_eq!(c.code, CloseCode::Normal),
            other => panic!("{other:?}"),
        }
    }
}
