//! Helpers shared by the integration tests: fixed keys, a server on an ephemeral loopback
//! port with short timeouts, and a raw client that speaks the protocol frame by frame
//! (through `xtmp-proto` directly) for the bad-input tests.
#![allow(dead_code, clippy::unwrap_used, missing_docs)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use xtmp::{
    ClientOptions, ReconnectPolicy, ServerHandle, ServerOptions, XTMPClient, XTMPMessageRouter,
    XTMPServer,
};
use xtmp_proto::control::ErrorPayload;
use xtmp_proto::xtmp_crypto::xwing::{XWingPublicKey, XWingSecretKey};
use xtmp_proto::{
    deframe, ClientConfig, ClientHandshake, ClientOutcome, Header, MessageType, Received, Session,
    XTMPFlags,
};

pub fn server_key() -> Arc<XWingSecretKey> {
    Arc::new(XWingSecretKey::from_seed(&[42; 32]))
}

/// Options with short timeouts suitable for tests.
pub fn server_options() -> ServerOptions {
    let mut o = ServerOptions::new(server_key());
    o.bind_address = "127.0.0.1:0".parse().unwrap();
    o.handshake_timeout = Duration::from_secs(5);
    o.read_timeout = Duration::from_secs(5);
    o.drain_timeout = Duration::from_secs(2);
    o.handshakes_per_second_per_ip = 0;
    o
}

pub async fn start(
    router: XTMPMessageRouter,
    tweak: impl FnOnce(&mut ServerOptions),
) -> ServerHandle {
    let mut o = server_options();
    tweak(&mut o);
    XTMPServer::bind(o, router).await.unwrap()
}

pub fn client_options() -> ClientOptions {
    let mut o = ClientOptions::new(server_key().public_key().clone());
    o.connect_timeout = Duration::from_secs(10);
    o.request_timeout = Duration::from_secs(10);
    o.reconnect = ReconnectPolicy {
        enabled: true,
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(200),
        max_attempts: Some(50),
    };
    o
}

pub async fn client(server: &ServerHandle) -> XTMPClient {
    XTMPClient::connect(server.local_addr(), client_options())
        .await
        .unwrap()
}

/// Polls `f` until it is true (bounded: 10 s).
pub async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..1000 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for: {what}");
}

/// What a raw read produced.
#[derive(Debug)]
pub enum RawEvent {
    Frame(Vec<u8>),
    Eof,
    Timeout,
}

/// A protocol client driven frame by frame.
pub struct RawClient {
    pub stream: TcpStream,
    pub session: Option<Box<Session>>,
    buf: Vec<u8>,
}

pub struct Rng;
impl xtmp_proto::SecureRandom for Rng {
    fn fill(&mut self, d: &mut [u8]) {
        xtmp::OsRng.fill(d)
    }
}

impl RawClient {
    pub async fn tcp(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        Self {
            stream,
            session: None,
            buf: Vec::new(),
        }
    }

    /// TCP connect plus a full handshake.
    pub async fn connect(addr: SocketAddr, key: &XWingPublicKey) -> Self {
        let mut c = Self::tcp(addr).await;
        let now_ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
        let (mut hs, m1) =
            ClientHandshake::start(ClientConfig::new(key.clone()), now_ns, &mut Rng).unwrap();
        c.send_raw(&m1).await;
        loop {
            let RawEvent::Frame(f) = c.read_frame(Duration::from_secs(10)).await else {
                panic!("no handshake answer");
            };
            match hs.handle(std::time::Instant::now(), &f).unwrap() {
                ClientOutcome::Retry(f) => c.send_raw(&f).await,
                ClientOutcome::Established(s) => {
                    c.session = Some(s);
                    return c;
                }
            }
        }
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    pub fn seal(&mut self, t: MessageType, flags: XTMPFlags, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        self.session
            .as_mut()
            .unwrap()
            .seal(t, flags, payload, &mut out)
            .unwrap();
        out
    }

    pub async fn read_frame(&mut self, timeout: Duration) -> RawEvent {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Ok(Some(n)) = deframe::frame_len(&self.buf, 64 << 20) {
                let rest = self.buf.split_off(n);
                return RawEvent::Frame(std::mem::replace(&mut self.buf, rest));
            }
            let mut chunk = vec![0u8; 64 * 1024];
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Err(_) => return RawEvent::Timeout,
                Ok(Ok(0)) | Ok(Err(_)) => return RawEvent::Eof,
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Reads and opens frames until an application message (or a Disconnect) arrives.
    /// Returns `(header, payload)`; Disconnect is returned as a `Disconnect` header with
    /// the encoded payload.
    pub async fn recv_message(&mut self, timeout: Duration) -> Option<(Header, Vec<u8>)> {
        loop {
            let RawEvent::Frame(mut f) = self.read_frame(timeout).await else {
                return None;
            };
            let s = self.session.as_mut().unwrap();
            let h = Header::parse(&f, u32::MAX).unwrap();
            match s.open(std::time::Instant::now(), &mut f, &mut Rng) {
                Ok(Received::Message { header, payload }) => {
                    return Some((header, payload.into_owned()))
                }
                Ok(Received::Disconnect(d)) => {
                    let p = xtmp_proto::control::DisconnectPayload {
                        code: d.code,
                        reason: d.reason,
                    }
                    .encode();
                    return Some((h, p));
                }
                Ok(_) => {
                    // answer pings so the server sees us alive
                    let mut out = Vec::new();
                    while let Some(x) = s.poll_transmit() {
                        out.extend_from_slice(&x);
                    }
                    if !out.is_empty() {
                        self.send_raw(&out).await;
                    }
                }
                Err(e) => panic!("cannot open frame from server: {e}"),
            }
        }
    }

    /// Reads until the connection closes; returns the plain or sealed Error payloads seen
    /// and whether a Disconnect arrived.
    pub async fn errors_until_close(&mut self, timeout: Duration) -> (Vec<ErrorPayload>, bool) {
        let mut errors = Vec::new();
        let mut disconnected = false;
        loop {
            match self.read_frame(timeout).await {
                RawEvent::Frame(mut f) => {
                    if let Some(e) = xtmp::parse_plain_error(&f) {
                        errors.push(e);
                        continue;
                    }
                    if let Some(s) = self.session.as_mut() {
                        match s.open(std::time::Instant::now(), &mut f, &mut Rng) {
                            Ok(Received::Message { header, payload })
                                if header.message_type == MessageType::Error =>
                            {
                                errors.push(ErrorPayload::decode(&payload).unwrap())
                            }
                            Ok(Received::Disconnect(_)) => disconnected = true,
                            _ => {}
                        }
                    }
                }
                RawEvent::Eof => return (errors, disconnected),
                RawEvent::Timeout => panic!("server did not close the connection"),
            }
        }
    }
}

/// A TCP forwarder whose connections can be cut (to simulate a network failure).
pub struct Proxy {
    pub addr: SocketAddr,
    conns: Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub async fn start(target: SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let conns: Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let c2 = conns.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let h = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                c2.lock().unwrap().push(h.abort_handle());
            }
        });
        Self {
            addr,
            conns,
            accept,
        }
    }

    /// Cuts every current connection (both sides see the sockets close).
    pub fn cut(&self) {
        for h in self.conns.lock().unwrap().drain(..) {
            h.abort();
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}
