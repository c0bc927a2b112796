//! The admin HTTP endpoint served by `xtmp server start`, and the small client that
//! `xtmp server status` / `metrics` use to query it.
//!
//! A deliberately small HTTP/1.1 server: `GET` and `HEAD` only, one request per
//! connection (`Connection: close`), request head at most [`MAX_HEAD`] bytes, a read
//! deadline, and a cap on concurrent connections (excess connections get `503`). Bad
//! requests get `400`/`401`/`404`/`405`/`431` answers; nothing a client sends can make it
//! panic.
//!
//! | path | answer |
//! |---|---|
//! | `GET /metrics` | Prometheus text exposition format 0.0.4 |
//! | `GET /status` | `ServerStatus` as JSON |
//! | `GET /sessions` | every `SessionMetrics` as a JSON array |
//! | `GET /sessions/{id}` | one `SessionMetrics` (id in decimal or hex), `404` if unknown |
//! | `GET /healthz` | `ok` |
//!
//! When a token is configured every path requires `Authorization: Bearer <token>`.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

/// Largest request head (request line and headers) accepted.
pub const MAX_HEAD: usize = 8 * 1024;
/// Most headers accepted in one request.
pub const MAX_HEADERS: usize = 64;
/// Largest response body the client accepts.
pub const MAX_RESPONSE: usize = 64 * 1024 * 1024;

/// What the admin endpoint serves. Implemented over the running server's handle.
pub trait AdminSource: Send + Sync + 'static {
    /// `ServerStatus` as JSON.
    fn status_json(&self) -> String;
    /// All sessions as a JSON array.
    fn sessions_json(&self) -> String;
    /// One session as JSON, `None` if unknown.
    fn session_json(&self, id: u64) -> Option<String>;
    /// The Prometheus exposition.
    fn prometheus(&self) -> String;
}

/// Admin endpoint settings.
#[derive(Clone)]
pub struct AdminOptions {
    /// Required bearer token, if any.
    pub token: Option<String>,
    /// Most connections served at once.
    pub max_connections: usize,
    /// Deadline for reading the request head and for writing the answer.
    pub io_timeout: Duration,
}

impl std::fmt::Debug for AdminOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminOptions")
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("max_connections", &self.max_connections)
            .field("io_timeout", &self.io_timeout)
            .finish()
    }
}

impl Default for AdminOptions {
    fn default() -> Self {
        Self {
            token: None,
            max_connections: 32,
            io_timeout: Duration::from_secs(5),
        }
    }
}

/// An HTTP answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// `Content-Type`.
    pub content_type: &'static str,
    /// Extra headers.
    pub headers: Vec<(&'static str, String)>,
    /// Body.
    pub body: String,
}

const JSON: &str = "application/json";
const TEXT: &str = "text/plain; charset=utf-8";
/// Content type of the Prometheus text format.
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

impl Response {
    fn new(status: u16, content_type: &'static str, body: String) -> Self {
        Self {
            status,
            content_type,
            headers: Vec::new(),
            body,
        }
    }

    fn error(status: u16, msg: &str) -> Self {
        let body = serde_json::json!({ "error": msg }).to_string() + "\n";
        Self::new(status, JSON, body)
    }

    fn reason(&self) -> &'static str {
        match self.status {
            200 => "OK",
            400 => "Bad Request",
            401 => "Unauthorized",
            404 => "Not Found",
            405 => "Method Not Allowed",
            408 => "Request Timeout",
            431 => "Request Header Fields Too Large",
            503 => "Service Unavailable",
            505 => "HTTP Version Not Supported",
            _ => "Error",
        }
    }

    /// Serializes the answer (`head_only` for `HEAD`).
    pub fn to_bytes(&self, head_only: bool) -> Vec<u8> {
        let mut s = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\nCache-Control: no-store\r\n",
            self.status,
            self.reason(),
            self.content_type,
            self.body.len()
        );
        for (k, v) in &self.headers {
            s.push_str(k);
            s.push_str(": ");
            s.push_str(v);
            s.push_str("\r\n");
        }
        s.push_str("\r\n");
        let mut b = s.into_bytes();
        if !head_only {
            b.extend_from_slice(self.body.as_bytes());
        }
        b
    }
}

/// Parses a session id as typed by a person: `0x`-prefixed or exactly 16 hex digits
/// (the `session_id_hex` form) is hexadecimal; other all-digit strings are decimal; any
/// other string containing hex letters is hexadecimal.
///
/// # Errors
/// Not a number, or larger than 64 bits.
pub fn parse_session_id(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let bad = || format!("{s:?} is not a session id (decimal, or hex such as 0x2a)");
    if let Some(h) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        return u64::from_str_radix(h, 16).map_err(|_| bad());
    }
    if t.is_empty() || !t.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(bad());
    }
    if t.len() == 16 || !t.chars().all(|c| c.is_ascii_digit()) {
        return u64::from_str_radix(t, 16).map_err(|_| bad());
    }
    t.parse::<u64>().map_err(|_| bad())
}

/// A parsed request head.
#[derive(Debug)]
struct Request<'a> {
    method: &'a str,
    path: &'a str,
    authorization: Option<&'a str>,
}

fn parse_head(head: &str) -> Result<Request<'_>, Response> {
    let mut lines = head.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let request_line = lines.next().unwrap_or("");
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Response::error(400, "malformed request line"));
    };
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(Response::error(400, "malformed method"));
    }
    if !matches!(version, "HTTP/1.1" | "HTTP/1.0") {
        return Err(Response::error(
            505,
            "only HTTP/1.0 and HTTP/1.1 are supported",
        ));
    }
    if !target.starts_with('/') {
        return Err(Response::error(400, "the request target must be a path"));
    }
    let path = target.split(['?', '#']).next().unwrap_or(target);
    let mut authorization = None;
    let mut count = 0;
    for line in lines {
        if line.is_empty() {
            break;
        }
        count += 1;
        if count > MAX_HEADERS {
            return Err(Response::error(431, "too many headers"));
        }
        let Some((name, value)) = line.split_once(':') else {
            return Err(Response::error(400, "malformed header line"));
        };
        if name.is_empty() || name.contains(' ') || name.contains('\t') {
            return Err(Response::error(400, "malformed header name"));
        }
        if name.eq_ignore_ascii_case("authorization") {
            if authorization.is_some() {
                return Err(Response::error(400, "duplicate Authorization header"));
            }
            authorization = Some(value.trim());
        }
    }
    Ok(Request {
        method,
        path,
        authorization,
    })
}

fn authorized(req: &Request<'_>, token: Option<&str>) -> bool {
    let Some(token) = token else { return true };
    let Some(auth) = req.authorization else {
        return false;
    };
    let mut it = auth.splitn(2, ' ');
    let (Some(scheme), Some(given)) = (it.next(), it.next()) else {
        return false;
    };
    scheme.eq_ignore_ascii_case("bearer")
        && xtmp_crypto::ct_eq(given.trim().as_bytes(), token.as_bytes())
}

/// Answers one request head. Pure: no I/O, so every branch is unit-tested.
/// Returns the answer and whether it is for `HEAD`.
pub fn handle(head: &[u8], source: &dyn AdminSource, token: Option<&str>) -> (Response, bool) {
    let Ok(text) = std::str::from_utf8(head) else {
        return (Response::error(400, "the request head is not UTF-8"), false);
    };
    let req = match parse_head(text) {
        Ok(r) => r,
        Err(resp) => return (resp, false),
    };
    let head_only = req.method == "HEAD";
    if !matches!(req.method, "GET" | "HEAD") {
        let mut r = Response::error(405, "only GET and HEAD are allowed");
        r.headers.push(("Allow", "GET, HEAD".into()));
        return (r, false);
    }
    if !authorized(&req, token) {
        let mut r = Response::error(401, "a valid `Authorization: Bearer <token>` is required");
        r.headers
            .push(("WWW-Authenticate", "Bearer realm=\"xtmp-admin\"".into()));
        return (r, head_only);
    }
    let resp = match req.path {
        "/metrics" => Response::new(200, PROMETHEUS_CONTENT_TYPE, source.prometheus()),
        "/status" => Response::new(200, JSON, source.status_json() + "\n"),
        "/sessions" | "/sessions/" => Response::new(200, JSON, source.sessions_json() + "\n"),
        "/healthz" => Response::new(200, TEXT, "ok\n".into()),
        "/" => Response::new(
            200,
            TEXT,
            "xtmp admin endpoint\n  GET /metrics        Prometheus metrics\n  GET /status         server status (JSON)\n  GET /sessions       all sessions (JSON)\n  GET /sessions/{id}  one session (JSON)\n  GET /healthz        liveness\n".into(),
        ),
        p => match p.strip_prefix("/sessions/") {
            Some(id) => match parse_session_id(id) {
                Ok(id) => match source.session_json(id) {
                    Some(j) => Response::new(200, JSON, j + "\n"),
                    None => Response::error(404, &format!("no session {id} (0x{id:016x})")),
                },
                Err(e) => Response::error(400, &e),
            },
            None => Response::error(404, "no such path; try /metrics, /status or /sessions"),
        },
    };
    (resp, head_only)
}

/// Position just after the blank line that ends the head, if buffered.
fn head_end(buf: &[u8]) -> Option<usize> {
    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
        return Some(i + 4);
    }
    buf.windows(2).position(|w| w == b"\n\n").map(|i| i + 2)
}

async fn serve_connection(
    mut stream: TcpStream,
    source: Arc<dyn AdminSource>,
    opts: Arc<AdminOptions>,
) {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + opts.io_timeout;
    let answer = loop {
        let read = tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await;
        match read {
            Err(_) => {
                break Some((
                    Response::error(408, "request head not received in time"),
                    false,
                ))
            }
            Ok(Err(_)) | Ok(Ok(0)) => break None,
            Ok(Ok(n)) => {
                buf.extend_from_slice(&chunk[..n]);
                if let Some(end) = head_end(&buf) {
                    break Some(handle(&buf[..end], source.as_ref(), opts.token.as_deref()));
                }
                if buf.len() > MAX_HEAD {
                    break Some((
                        Response::error(431, "request head larger than 8 KiB"),
                        false,
                    ));
                }
            }
        }
    };
    if let Some((resp, head_only)) = answer {
        let bytes = resp.to_bytes(head_only);
        let _ = tokio::time::timeout(opts.io_timeout, async {
            stream.write_all(&bytes).await?;
            stream.shutdown().await
        })
        .await;
    }
}

/// Serves the admin endpoint on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    source: Arc<dyn AdminSource>,
    opts: AdminOptions,
    shutdown: impl Future<Output = ()>,
) {
    let limit = Arc::new(Semaphore::new(opts.max_connections.max(1)));
    let opts = Arc::new(opts);
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            a = listener.accept() => a,
        };
        let (mut stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "admin endpoint: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        match limit.clone().try_acquire_owned() {
            Ok(permit) => {
                let source = source.clone();
                let opts = opts.clone();
                tokio::spawn(async move {
                    serve_connection(stream, source, opts).await;
                    drop(permit);
                });
            }
            Err(_) => {
                tracing::debug!(%peer, "admin endpoint: connection limit reached");
                let bytes = Response::error(503, "too many admin connections").to_bytes(false);
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(&bytes))
                        .await;
                });
            }
        }
    }
}

/// `GET path` against an admin endpoint; returns the status code and body.
///
/// # Errors
/// Connection failure, timeout, or a malformed or oversized answer.
pub async fn get(
    address: SocketAddr,
    path: &str,
    token: Option<&str>,
    timeout: Duration,
) -> Result<(u16, String)> {
    let fut = async {
        let mut s = TcpStream::connect(address)
            .await
            .with_context(|| format!("cannot connect to the admin endpoint at {address} (is the server running? see `admin_address` in its configuration)"))?;
        let mut req = format!(
            "GET {path} HTTP/1.1\r\nHost: {address}\r\nUser-Agent: xtmp-cli\r\nAccept: */*\r\nConnection: close\r\n"
        );
        if let Some(t) = token {
            req.push_str(&format!("Authorization: Bearer {t}\r\n"));
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes()).await?;
        let mut buf = Vec::new();
        let mut limited = (&mut s).take(MAX_RESPONSE as u64 + 1);
        limited.read_to_end(&mut buf).await?;
        if buf.len() > MAX_RESPONSE {
            bail!("the admin endpoint's answer is larger than {MAX_RESPONSE} bytes");
        }
        parse_response(&buf)
    };
    tokio::time::timeout(timeout, fut).await.map_err(|_| {
        anyhow::anyhow!("the admin endpoint at {address} did not answer within {timeout:?}")
    })?
}

fn parse_response(buf: &[u8]) -> Result<(u16, String)> {
    let end = head_end(buf).context("malformed HTTP answer (no end of head)")?;
    let head = std::str::from_utf8(&buf[..end]).context("malformed HTTP answer head")?;
    let status_line = head.lines().next().unwrap_or("");
    let mut parts = status_line.split(' ');
    let (Some(version), Some(code)) = (parts.next(), parts.next()) else {
        bail!("malformed HTTP status line {status_line:?}");
    };
    if !version.starts_with("HTTP/1.") {
        bail!("not an HTTP/1 answer: {status_line:?}");
    }
    let code: u16 = code
        .parse()
        .with_context(|| format!("malformed HTTP status line {status_line:?}"))?;
    let mut body = &buf[end..];
    for line in head.lines().skip(1) {
        if let Some((k, v)) = line.split_once(':') {
            if k.trim().eq_ignore_ascii_case("content-length") {
                if let Ok(n) = v.trim().parse::<usize>() {
                    body = &body[..n.min(body.len())];
                }
            }
        }
    }
    Ok((code, String::from_utf8_lossy(body).into_owned()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    struct Fake;
    impl AdminSource for Fake {
        fn status_json(&self) -> String {
            "{\"uptime_secs\":1.0}".into()
        }
        fn sessions_json(&self) -> String {
            "[]".into()
        }
        fn session_json(&self, id: u64) -> Option<String> {
            (id == 42).then(|| "{\"session_id\":42}".into())
        }
        fn prometheus(&self) -> String {
            "# HELP x y\n# TYPE x gauge\nx 1\n".into()
        }
    }

    fn status(head: &str, token: Option<&str>) -> u16 {
        handle(head.as_bytes(), &Fake, token).0.status
    }

    #[test]
    fn routes() {
        assert_eq!(status("GET /status HTTP/1.1\r\n\r\n", None), 200);
        assert_eq!(
            status("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", None),
            200
        );
        assert_eq!(status("GET /sessions HTTP/1.0\r\n\r\n", None), 200);
        assert_eq!(status("GET /sessions/42 HTTP/1.1\r\n\r\n", None), 200);
        assert_eq!(status("GET /sessions/0x2a HTTP/1.1\r\n\r\n", None), 200);
        assert_eq!(
            status("GET /sessions/000000000000002a HTTP/1.1\r\n\r\n", None),
            200
        );
        assert_eq!(status("GET /sessions/43 HTTP/1.1\r\n\r\n", None), 404);
        assert_eq!(status("GET /sessions/zz HTTP/1.1\r\n\r\n", None), 400);
        assert_eq!(status("GET /status?x=1 HTTP/1.1\r\n\r\n", None), 200);
        assert_eq!(status("GET /nope HTTP/1.1\r\n\r\n", None), 404);
        assert_eq!(status("POST /status HTTP/1.1\r\n\r\n", None), 405);
        assert_eq!(status("DELETE /sessions/42 HTTP/1.1\r\n\r\n", None), 405);
        let (r, head) = handle(b"HEAD /status HTTP/1.1\r\n\r\n", &Fake, None);
        assert!(head);
        let b = String::from_utf8(r.to_bytes(true)).unwrap();
        assert!(b.ends_with("\r\n\r\n"));
        assert!(b.contains("Content-Length: 20"));
    }

    #[test]
    fn malformed_requests() {
        for h in [
            "",
            "\r\n\r\n",
            "GET\r\n\r\n",
            "GET /status\r\n\r\n",
            "GET /status HTTP/1.1 extra\r\n\r\n",
            "get /status HTTP/1.1\r\n\r\n",
            "GET status HTTP/1.1\r\n\r\n",
            "GET /status HTTP/1.1\r\nno colon\r\n\r\n",
            "GET /status HTTP/1.1\r\nBad Name: x\r\n\r\n",
        ] {
            assert_eq!(status(h, None), 400, "{h:?}");
        }
        assert_eq!(status("GET /status HTTP/2.0\r\n\r\n", None), 505);
        assert_eq!(
            handle(b"GET /\xff HTTP/1.1\r\n\r\n", &Fake, None).0.status,
            400
        );
        let many = format!("GET / HTTP/1.1\r\n{}\r\n", "A: b\r\n".repeat(100));
        assert_eq!(status(&many, None), 431);
    }

    #[test]
    fn bearer_token() {
        let t = Some("0123456789abcdef");
        assert_eq!(status("GET /status HTTP/1.1\r\n\r\n", t), 401);
        assert_eq!(
            status(
                "GET /status HTTP/1.1\r\nAuthorization: Bearer nope\r\n\r\n",
                t
            ),
            401
        );
        assert_eq!(
            status(
                "GET /status HTTP/1.1\r\nAuthorization: Basic 0123456789abcdef\r\n\r\n",
                t
            ),
            401
        );
        assert_eq!(
            status(
                "GET /status HTTP/1.1\r\nauthorization: bearer 0123456789abcdef\r\n\r\n",
                t
            ),
            200
        );
        assert_eq!(
            status("GET /status HTTP/1.1\r\nAuthorization: Bearer 0123456789abcdef\r\nAuthorization: Bearer 0123456789abcdef\r\n\r\n", t),
            400
        );
    }

    #[test]
    fn session_ids() {
        assert_eq!(parse_session_id("42"), Ok(42));
        assert_eq!(parse_session_id("0x2A"), Ok(42));
        assert_eq!(parse_session_id("2a"), Ok(42));
        assert_eq!(parse_session_id("000000000000002a"), Ok(42));
        assert_eq!(parse_session_id("0000000000000042"), Ok(0x42));
        assert_eq!(parse_session_id("18446744073709551615"), Ok(u64::MAX));
        assert!(parse_session_id("18446744073709551616").is_err());
        assert!(parse_session_id("").is_err());
        assert!(parse_session_id("-1").is_err());
        assert!(parse_session_id("0x").is_err());
        assert!(parse_session_id("12345678901234567890abc").is_err());
    }

    #[test]
    fn response_parsing() {
        let (c, b) =
            parse_response(b"HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\nhi").unwrap();
        assert_eq!((c, b.as_str()), (404, "hi"));
        assert!(parse_response(b"garbage").is_err());
        assert!(parse_response(b"SSH-2.0\r\n\r\n").is_err());
    }

    #[tokio::test]
    async fn end_to_end_with_limits() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let opts = AdminOptions {
            token: None,
            max_connections: 4,
            io_timeout: Duration::from_millis(300),
        };
        let task = tokio::spawn(serve(l, Arc::new(Fake), opts, async {
            let _ = rx.await;
        }));
        let (c, body) = get(addr, "/status", None, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(c, 200);
        assert!(body.contains("uptime_secs"));
        // An oversized head gets 431.
        let mut s = TcpStream::connect(addr).await.unwrap();
        let big = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(10_000));
        let _ = s.write_all(big.as_bytes()).await;
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out).await;
        assert!(String::from_utf8_lossy(&out).starts_with("HTTP/1.1 431"));
        // A stalled client gets 408 after the deadline.
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET / HT").await.unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out).await;
        assert!(String::from_utf8_lossy(&out).starts_with("HTTP/1.1 408"));
        let _ = tx.send(());
        task.await.unwrap();
    }
}
